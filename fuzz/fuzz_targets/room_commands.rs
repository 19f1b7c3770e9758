#![no_main]
//! Any sequence of API commands from any participants: the room's
//! invariants hold after each, and refused commands change nothing.
use amphi_core::room::{Actor, Command, Space, SpaceOptions};
use amphi_core::{ParticipantId, SpaceId};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Start,
    End,
    RaiseHand,
    LowerHand,
    Bring(u8, bool),
    ToAudience(u8),
    Appoint(u8),
    Dismiss(u8),
    Mute(u8),
    Unmute(u8),
    Remove(u8, bool),
}

fn pid(n: u8) -> ParticipantId {
    ParticipantId(u64::from(n % 8))
}

fuzz_target!(|input: (u8, Vec<(u8, Op)>)| {
    let (stage, ops) = input;
    let opts = SpaceOptions { title: "t".into(), scheduled_for_ms: None, max_stage: stage % 50 + 1, record: true, public: true };
    let Ok(mut s) = Space::new(SpaceId(1), pid(0), "Host", opts, 0) else { return };
    for (who, op) in ops {
        let cmd = match op {
            Op::Start => Command::Start,
            Op::End => Command::End,
            Op::RaiseHand => Command::RaiseHand,
            Op::LowerHand => Command::LowerHand,
            Op::Bring(t, named) => Command::BringOnStage { target: pid(t), name: named.then(|| "N".to_owned()) },
            Op::ToAudience(t) => Command::MoveToAudience { target: pid(t) },
            Op::Appoint(t) => Command::AppointCohost { target: pid(t) },
            Op::Dismiss(t) => Command::DismissCohost { target: pid(t) },
            Op::Mute(t) => Command::Mute { target: pid(t) },
            Op::Unmute(t) => Command::Unmute { target: pid(t) },
            Op::Remove(t, ban) => Command::Remove { target: pid(t), ban },
        };
        let before = s.clone();
        if s.apply(Actor { id: pid(who), name: "x" }, cmd, 1).is_err() {
            assert_eq!(before, s, "a refused command changed the space");
        }
        if let Err(e) = s.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
});
