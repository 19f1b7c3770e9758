//! The `room_commands` target: the state machine every API body ends in.
//! A space is created from any options, then any sequence of commands from any participants with any
//! display names. Properties, after every command: the space's invariants
//! hold, a refused command changed nothing, and an accepted one did what
//! its outcome says.
use amphi_core::room::{Actor, Command, Outcome, Space, SpaceOptions, SpaceState};
use amphi_core::{ParticipantId, SpaceId};
use arbitrary::Arbitrary;

/// A command as the API would build it from a path and a JSON body.
#[derive(Debug, Arbitrary)]
pub enum Op {
    /// `POST /start`.
    Start,
    /// `POST /end`.
    End,
    /// `POST /hand`.
    RaiseHand,
    /// `DELETE /hand`.
    LowerHand,
    /// `POST /stage/{pid}`, with the target's name if known.
    Bring(u8, Option<String>),
    /// `DELETE /stage/{pid}`.
    ToAudience(u8),
    /// `POST /cohosts/{pid}`.
    Appoint(u8),
    /// `DELETE /cohosts/{pid}`.
    Dismiss(u8),
    /// `POST /participants/{pid}/mute`.
    Mute(u8),
    /// `POST /participants/{pid}/unmute`.
    Unmute(u8),
    /// `POST /participants/{pid}/remove` with `{"ban"}`.
    Remove(u8, bool),
}

/// One request: who sends it, under which display name, and when.
#[derive(Debug, Arbitrary)]
pub struct Step {
    /// The sender (participants are few so that commands meet).
    pub who: u8,
    /// The sender's display name, as a token would carry it.
    pub name: String,
    /// Milliseconds since the previous command.
    pub after_ms: u16,
    /// What is asked.
    pub op: Op,
}

/// A create request, then the requests that follow it.
#[derive(Debug, Arbitrary)]
pub struct Input {
    /// `title` of the create body.
    pub title: String,
    /// The host's display name.
    pub host_name: String,
    /// `max_stage` of the create body (validated by the space).
    pub max_stage: u8,
    /// `record` of the create body.
    pub record: bool,
    /// `public` of the create body.
    pub public: bool,
    /// The commands, in order.
    pub steps: Vec<Step>,
}

/// Few participants, so that commands meet each other often.
fn pid(n: u8) -> ParticipantId {
    ParticipantId(u64::from(n % 8))
}

/// Creates the space and applies every step, checking the properties
/// (panics on a violation). Returns how many commands were accepted.
pub fn run(input: Input) -> usize {
    let opts = SpaceOptions {
        title: input.title,
        scheduled_for_ms: None,
        max_stage: input.max_stage,
        record: input.record,
        public: input.public,
    };
    let Ok(mut s) = Space::new(SpaceId(1), pid(0), &input.host_name, opts, 0) else {
        return 0;
    };
    if let Err(e) = s.check_invariants() {
        panic!("invariant broken at creation: {e}");
    }
    let mut now = 0i64;
    let mut accepted = 0;
    for step in input.steps {
        now += i64::from(step.after_ms);
        let cmd = match step.op {
            Op::Start => Command::Start,
            Op::End => Command::End,
            Op::RaiseHand => Command::RaiseHand,
            Op::LowerHand => Command::LowerHand,
            Op::Bring(t, name) => Command::BringOnStage {
                target: pid(t),
                name,
            },
            Op::ToAudience(t) => Command::MoveToAudience { target: pid(t) },
            Op::Appoint(t) => Command::AppointCohost { target: pid(t) },
            Op::Dismiss(t) => Command::DismissCohost { target: pid(t) },
            Op::Mute(t) => Command::Mute { target: pid(t) },
            Op::Unmute(t) => Command::Unmute { target: pid(t) },
            Op::Remove(t, ban) => Command::Remove {
                target: pid(t),
                ban,
            },
        };
        let actor = Actor {
            id: pid(step.who),
            name: &step.name,
        };
        let before = s.clone();
        let outcome = s.apply(actor, cmd, now);
        accepted += usize::from(outcome.is_ok());
        match outcome {
            Err(_) => assert_eq!(before, s, "a refused command changed the space"),
            Ok(Outcome::Unchanged) => {
                assert_eq!(before, s, "an unchanged outcome changed the space")
            }
            Ok(Outcome::Removed { target, banned }) => {
                assert!(
                    s.role_of(target).is_none(),
                    "a removed participant kept a role"
                );
                assert!(!s.is_audible(target), "a removed participant is audible");
                assert_eq!(s.is_banned(target), banned);
            }
            Ok(Outcome::Started) => assert_eq!(s.state, SpaceState::Live),
            Ok(Outcome::Ended) => assert_eq!(s.state, SpaceState::Ended),
            Ok(_) => {}
        }
        if let Err(e) = s.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
    accepted
}
