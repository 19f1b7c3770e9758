//! The rules of one space: lifecycle, roles, the stage, hands, mutes,
//! removals and bans. A [`Space`] is mutated only through [`Space::apply`],
//! which checks the actor's role *now* and returns what changed. Every other
//! "may this participant do that?" (publish, use TURN, listen, follow the
//! events, react, join) is answered here too, beside it, so the handlers only ask.
//!
//! Only participants that matter are kept: the stage, raised hands, and the
//! removed and banned. A listener who only listens exists nowhere but in
//! their signed token, so a join costs no state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{ParticipantId, SpaceId};

/// Default stage size: host, two co-hosts and ten speakers.
pub const DEFAULT_MAX_STAGE: u8 = 13;
/// Largest stage a space may be configured with.
pub const MAX_STAGE_LIMIT: u8 = 50;
/// Co-hosts a host may appoint by default.
pub const DEFAULT_MAX_COHOSTS: u8 = 2;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most raised hands a space queues; beyond it a hand is refused (409)
/// until one is lowered or accepted.
pub const MAX_HANDS: usize = 500;
/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// Lifecycle of a space: `scheduled → live → ended`, never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceState {
    Scheduled,
    Live,
    Ended,
}

impl SpaceState {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SpaceState::Scheduled => "scheduled",
            SpaceState::Live => "live",
            SpaceState::Ended => "ended",
        }
    }
}

/// What a participant is, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Host,
    Cohost,
    Speaker,
    Listener,
}

impl Role {
    /// Whether this role stands on the stage.
    pub fn on_stage(self) -> bool {
        !matches!(self, Role::Listener)
    }

    /// Whether this role may moderate (host or co-host).
    pub fn moderates(self) -> bool {
        matches!(self, Role::Host | Role::Cohost)
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Cohost => "cohost",
            Role::Speaker => "speaker",
            Role::Listener => "listener",
        }
    }
}

/// A participant the space has to remember.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: ParticipantId,
    pub name: String,
    pub role: Role,
    pub muted: bool,
    /// When the hand went up (ms since the epoch), for queue order.
    pub hand_raised_at: Option<i64>,
    /// Noise suppression on this speaker's audio (set by a moderator or
    /// the speaker; see [`Space::suppresses_noise`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noise_suppression: bool,
}

/// Options for a new space, already validated by [`SpaceOptions::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceOptions {
    pub title: String,
    pub scheduled_for_ms: Option<i64>,
    pub max_stage: u8,
    pub record: bool,
    pub public: bool,
}

impl SpaceOptions {
    /// Checks the options a creator asked for.
    pub fn validate(&self) -> Result<(), RoomError> {
        let title = self.title.trim();
        if title.is_empty() {
            return Err(RoomError::BadInput("title must not be empty".into()));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(RoomError::BadInput(format!(
                "title is longer than {MAX_TITLE_CHARS} characters"
            )));
        }
        if self.max_stage == 0 || self.max_stage > MAX_STAGE_LIMIT {
            return Err(RoomError::BadInput(format!(
                "max_stage must be between 1 and {MAX_STAGE_LIMIT}"
            )));
        }
        Ok(())
    }
}

/// Checks a display name: 1 to 64 characters, no control characters.
pub fn validate_name(name: &str) -> Result<&str, RoomError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(RoomError::BadInput(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(RoomError::BadInput(
            "name must not contain control characters".into(),
        ));
    }
    Ok(name)
}

/// Who is acting: the identity from a verified token.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub id: ParticipantId,
    pub name: &'a str,
}

/// Everything a participant can ask a space to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start,
    End,
    RaiseHand,
    LowerHand,
    /// Bring `target` onto the stage; `name` is the target's display name if
    /// the caller knows it (a present listener who has not raised a hand).
    BringOnStage {
        target: ParticipantId,
        name: Option<String>,
    },
    MoveToAudience {
        target: ParticipantId,
    },
    AppointCohost {
        target: ParticipantId,
    },
    DismissCohost {
        target: ParticipantId,
    },
    Mute {
        target: ParticipantId,
    },
    Unmute {
        target: ParticipantId,
    },
    Remove {
        target: ParticipantId,
        ban: bool,
    },
    /// Noise suppression on (or off) for `target`'s audio.
    SetNoiseSuppression {
        target: ParticipantId,
        on: bool,
    },
    /// Live captions on or off (the host).
    SetCaptions {
        on: bool,
    },
}

/// What a command asks of whoever sends it, checked by [`Space::apply`]
/// before anything about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Anyone still in the space.
    Presence,
    /// The host or a co-host.
    Moderator(&'static str),
    /// The host.
    Host(&'static str),
    /// A moderator, or the target acting on themselves.
    ModeratorOrSelf(ParticipantId, &'static str),
    /// The target acting on themselves.
    OnlySelf(ParticipantId, &'static str),
}

impl Command {
    /// Who may send this command; the message is the refusal's.
    fn need(&self) -> Need {
        match self {
            Command::Start => Need::Moderator("only the host or a co-host can start the space"),
            Command::End => Need::Host("only the host can end the space"),
            Command::RaiseHand | Command::LowerHand | Command::MoveToAudience { .. } => {
                Need::Presence
            }
            Command::BringOnStage { .. } => {
                Need::Moderator("only the host or a co-host can bring people on stage")
            }
            Command::AppointCohost { .. } => Need::Host("only the host can appoint co-hosts"),
            Command::DismissCohost { .. } => Need::Host("only the host can dismiss co-hosts"),
            Command::Mute { target } => {
                Need::ModeratorOrSelf(*target, "only the host, a co-host or yourself can mute")
            }
            Command::Unmute { target } => {
                Need::OnlySelf(*target, "only the speaker can unmute themselves")
            }
            Command::Remove { .. } => {
                Need::Moderator("only the host or a co-host can remove participants")
            }
            Command::SetNoiseSuppression { target, .. } => Need::ModeratorOrSelf(
                *target,
                "only the host, a co-host or the speaker can set noise suppression",
            ),
            Command::SetCaptions { .. } => Need::Host("only the host can turn captions on or off"),
        }
    }
}

/// Someone asking to hear a space's program, as the shell knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// No token was presented.
    Anonymous,
    /// A token was presented and failed verification.
    Unverified,
    /// A verified participant.
    Participant(ParticipantId),
}

/// What an accepted command changed, for the shell to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// State changed; who is audible may have changed too.
    Changed,
    /// Nothing to do (e.g. muting someone already muted).
    Unchanged,
    /// `target` lost every right: close their streams and sessions.
    Removed { target: ParticipantId, banned: bool },
    /// The space went live.
    Started,
    /// The space ended: stop media, finish the recording.
    Ended,
}

/// Why a command was refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadInput(String),
    /// 403: the actor's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such participant here.
    #[error("{0}")]
    NotFound(String),
    /// 409: the space is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// 401: the asker must prove who they are first.
    #[error("{0}")]
    Unauthenticated(String),
}

fn forbidden(msg: &str) -> RoomError {
    RoomError::Forbidden(msg.to_owned())
}

fn conflict(msg: &str) -> RoomError {
    RoomError::Conflict(msg.to_owned())
}

/// One space and the participants it must remember.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    pub id: SpaceId,
    pub title: String,
    pub state: SpaceState,
    pub max_stage: u8,
    pub max_cohosts: u8,
    pub record: bool,
    pub public: bool,
    pub scheduled_for_ms: Option<i64>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub host: ParticipantId,
    /// Joins need an identity token from the operator's app, so a ban
    /// follows the person (`"require_identity": true` at creation).
    #[serde(default)]
    pub require_identity: bool,
    /// Every speaker's audio goes through noise suppression
    /// (`"noise_suppression": true` at creation).
    #[serde(default)]
    pub noise_suppression: bool,
    /// Music mode (`"music": true` at creation): a stereo program at a
    /// music bitrate, no speech-tuned processing.
    #[serde(default)]
    pub music: bool,
    /// Live captions of each speaker (`"captions": true`; the host turns
    /// them on or off with [`Command::SetCaptions`]).
    #[serde(default)]
    pub captions: bool,
    members: BTreeMap<ParticipantId, Member>,
    removed: BTreeSet<ParticipantId>,
    banned: BTreeSet<ParticipantId>,
    /// Networks of banned participants (see [`Space::hold_network`]): no
    /// new join from them for the space's life.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    banned_nets: BTreeSet<String>,
}

impl Space {
    /// A new space in `scheduled`, with its host on stage.
    pub fn new(
        id: SpaceId,
        host: ParticipantId,
        host_name: &str,
        opts: SpaceOptions,
        now_ms: i64,
    ) -> Result<Self, RoomError> {
        opts.validate()?;
        let host_name = validate_name(host_name)?;
        let mut members = BTreeMap::new();
        members.insert(
            host,
            Member {
                id: host,
                name: host_name.to_owned(),
                role: Role::Host,
                muted: false,
                hand_raised_at: None,
                noise_suppression: false,
            },
        );
        Ok(Space {
            id,
            title: opts.title.trim().to_owned(),
            state: SpaceState::Scheduled,
            max_stage: opts.max_stage,
            max_cohosts: DEFAULT_MAX_COHOSTS,
            record: opts.record,
            public: opts.public,
            scheduled_for_ms: opts.scheduled_for_ms,
            created_at_ms: now_ms,
            started_at_ms: None,
            ended_at_ms: None,
            host,
            require_identity: false,
            noise_suppression: false,
            music: false,
            captions: false,
            members,
            removed: BTreeSet::new(),
            banned: BTreeSet::new(),
            banned_nets: BTreeSet::new(),
        })
    }

    /// The participant's role now, or `None` if removed or banned.
    pub fn role_of(&self, id: ParticipantId) -> Option<Role> {
        if self.removed.contains(&id) || self.banned.contains(&id) {
            return None;
        }
        Some(self.members.get(&id).map_or(Role::Listener, |m| m.role))
    }

    /// Whether `id` was banned.
    pub fn is_banned(&self, id: ParticipantId) -> bool {
        self.banned.contains(&id)
    }

    /// The remembered record of a participant.
    pub fn member(&self, id: ParticipantId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Everyone on stage, host first, then co-hosts, then speakers.
    pub fn stage(&self) -> impl Iterator<Item = &Member> {
        let mut v: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.role.on_stage())
            .collect();
        v.sort_by_key(|m| (m.role, m.id));
        v.into_iter()
    }

    /// Number of people on stage.
    pub fn stage_len(&self) -> usize {
        self.members.values().filter(|m| m.role.on_stage()).count()
    }

    /// Raised hands, oldest first.
    pub fn hands(&self) -> impl Iterator<Item = &Member> {
        let mut v: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.hand_raised_at.is_some() && !m.role.on_stage())
            .collect();
        v.sort_by_key(|m| (m.hand_raised_at, m.id));
        v.into_iter()
    }

    /// Number of raised hands.
    pub fn hands_len(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.hand_raised_at.is_some() && !m.role.on_stage())
            .count()
    }

    /// Whether `id`'s audio goes through noise suppression: the space
    /// asks it of every speaker, or the speaker's own flag is on.
    pub fn suppresses_noise(&self, id: ParticipantId) -> bool {
        self.noise_suppression || self.members.get(&id).is_some_and(|m| m.noise_suppression)
    }

    /// Whether `id`'s audio may reach the program and the other speakers now.
    pub fn is_audible(&self, id: ParticipantId) -> bool {
        self.state == SpaceState::Live
            && self.role_of(id).is_some_and(Role::on_stage)
            && self.members.get(&id).is_some_and(|m| !m.muted)
    }

    /// Everyone whose audio may be heard now.
    pub fn audible(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.members
            .keys()
            .copied()
            .filter(|id| self.is_audible(*id))
    }

    /// Whether `id` may send audio now: on stage, not removed, and the
    /// space live. What they send is heard only while [`Self::is_audible`].
    pub fn may_publish(&self, id: ParticipantId) -> Result<(), RoomError> {
        if !self.present(id)?.on_stage() {
            return Err(forbidden("only stage members can publish audio"));
        }
        if self.state != SpaceState::Live {
            return Err(conflict("the space is not live"));
        }
        Ok(())
    }

    /// Whether `id` may be given TURN credentials: a stage member, not
    /// removed, in any state, so a speaker behind a firewall can gather
    /// relay candidates before the space goes live.
    pub fn may_use_turn(&self, id: ParticipantId) -> Result<(), RoomError> {
        if !self.present(id)?.on_stage() {
            return Err(forbidden("only stage members can publish audio"));
        }
        Ok(())
    }

    /// Whether `who` may hear the program now: the space is live, an
    /// anonymous listener only of a public space, a participant only while
    /// not removed. The state is told first, so a player with a stale token
    /// still learns that the space ended and where its replay is.
    pub fn may_listen(&self, who: Listener) -> Result<(), RoomError> {
        match self.state {
            SpaceState::Live => {}
            SpaceState::Scheduled => return Err(conflict("the space has not started yet")),
            SpaceState::Ended => {
                return Err(RoomError::Conflict(format!(
                    "the space has ended; the replay is at /spaces/{}/recording.opus",
                    self.id
                )));
            }
        }
        match who {
            Listener::Anonymous if self.public => Ok(()),
            Listener::Anonymous => Err(RoomError::Unauthenticated(
                "this space needs a token: join first".into(),
            )),
            Listener::Unverified => Err(RoomError::Unauthenticated(
                "the token is not valid for this space".into(),
            )),
            Listener::Participant(id) => self.present(id).map(|_| ()),
        }
    }

    /// Whether `who` may hear the recording of this space (once it is
    /// published): anyone if the space is public; otherwise a participant
    /// who was not removed.
    pub fn may_replay(&self, who: Listener) -> Result<(), RoomError> {
        match who {
            Listener::Anonymous if self.public => Ok(()),
            Listener::Anonymous => Err(RoomError::Unauthenticated(
                "this space needs a token: join first".into(),
            )),
            Listener::Unverified => Err(RoomError::Unauthenticated(
                "the token is not valid for this space".into(),
            )),
            Listener::Participant(id) => self.present(id).map(|_| ()),
        }
    }

    /// Whether `id` may follow the space's events (in any state, an ended
    /// space included), and with which role.
    pub fn may_follow_events(&self, id: ParticipantId) -> Result<Role, RoomError> {
        self.present(id)
    }

    /// Whether `id` may clip the last 30 s of the program: any participant
    /// not removed, while the space is live (the clip is cut from the live
    /// history).
    pub fn may_clip(&self, id: ParticipantId) -> Result<(), RoomError> {
        self.present(id)?;
        if self.state != SpaceState::Live {
            return Err(conflict("clips are cut from a live space"));
        }
        Ok(())
    }

    /// Whether `id` may send a reaction now: not removed, the space live.
    pub fn may_react(&self, id: ParticipantId) -> Result<(), RoomError> {
        self.present(id)?;
        if self.state != SpaceState::Live {
            return Err(conflict("reactions are for live spaces"));
        }
        Ok(())
    }

    /// Whether `id` may join (be given a token), and in the role they hold
    /// now (listener if the space does not remember them). `prior` is the
    /// participant of a token the joiner already holds: a ban follows the
    /// person across tokens. Removal without a ban does not refuse a join;
    /// a removed `id` still has no right in the space.
    pub fn may_join(
        &self,
        id: ParticipantId,
        prior: Option<ParticipantId>,
    ) -> Result<Role, RoomError> {
        if self.state == SpaceState::Ended {
            return Err(conflict("the space has ended"));
        }
        if prior.is_some_and(|p| self.is_banned(p)) || self.is_banned(id) {
            return Err(forbidden("you are banned from this space"));
        }
        Ok(self.role_of(id).unwrap_or(Role::Listener))
    }

    /// [`Self::may_join`] for a join from `net` (the joiner's address or
    /// prefix), `identified` if it carried a verified identity token: a
    /// space that requires identities refuses anonymous joins (401), and a
    /// network a ban holds is refused (403), except to a stage member
    /// coming back with their identity.
    pub fn may_join_from(
        &self,
        id: ParticipantId,
        prior: Option<ParticipantId>,
        net: Option<&str>,
        identified: bool,
    ) -> Result<Role, RoomError> {
        if self.require_identity && !identified && self.state != SpaceState::Ended {
            return Err(RoomError::Unauthenticated(
                "this space needs an identity token from the operator's app".into(),
            ));
        }
        let role = self.may_join(id, prior)?;
        if !role.on_stage() && net.is_some_and(|n| self.banned_nets.contains(n)) {
            return Err(forbidden("you are banned from this space"));
        }
        Ok(role)
    }

    /// Holds `net`, the network `target` joined from, for the space's life:
    /// no new join from it. Only for a banned participant; `false` if
    /// `target` is not banned.
    pub fn hold_network(&mut self, target: ParticipantId, net: &str) -> bool {
        if !self.banned.contains(&target) {
            return false;
        }
        self.banned_nets.insert(net.to_owned());
        true
    }

    /// Whether `actor` may invite `target` to the stage now: the actor
    /// moderates, the space is live, the target is still a participant, off
    /// the stage, and there is room on it. The invited person's answer
    /// brings them on stage as a [`Command::BringOnStage`] from `actor`,
    /// checked again then.
    pub fn may_invite(&self, actor: ParticipantId, target: ParticipantId) -> Result<(), RoomError> {
        self.require(
            actor,
            Need::Moderator("only the host or a co-host can invite people to the stage"),
        )?;
        if self.state != SpaceState::Live {
            return Err(conflict("the space is not live"));
        }
        if self.target_role(target)?.on_stage() {
            return Err(conflict("already on stage"));
        }
        if self.stage_len() >= usize::from(self.max_stage) {
            return Err(conflict("the stage is full"));
        }
        Ok(())
    }

    /// Applies `cmd` from `actor` at `now_ms`, checking the rules against
    /// the current state. On error nothing changed.
    pub fn apply(
        &mut self,
        actor: Actor<'_>,
        cmd: Command,
        now_ms: i64,
    ) -> Result<Outcome, RoomError> {
        let role = self.require(actor.id, cmd.need())?;
        match cmd {
            Command::Start => {
                if self.state != SpaceState::Scheduled {
                    return Err(conflict("the space is already live"));
                }
                self.state = SpaceState::Live;
                self.started_at_ms = Some(now_ms);
                Ok(Outcome::Started)
            }
            Command::SetCaptions { on } => {
                if self.captions == on {
                    return Ok(Outcome::Unchanged);
                }
                self.captions = on;
                Ok(Outcome::Changed)
            }
            Command::End => {
                self.state = SpaceState::Ended;
                self.ended_at_ms = Some(now_ms);
                Ok(Outcome::Ended)
            }
            Command::RaiseHand => {
                if role.on_stage() {
                    return Err(conflict("you are already on stage"));
                }
                let name = validate_name(actor.name)?.to_owned();
                let m = self.members.entry(actor.id).or_insert_with(|| Member {
                    id: actor.id,
                    name,
                    role: Role::Listener,
                    muted: false,
                    hand_raised_at: None,
                    noise_suppression: false,
                });
                if m.hand_raised_at.is_some() {
                    return Ok(Outcome::Unchanged);
                }
                m.hand_raised_at = Some(now_ms);
                // Counted with this hand up; refused (and undone) past the cap.
                if self.hands_len() > MAX_HANDS {
                    if let Some(m) = self.members.get_mut(&actor.id) {
                        m.hand_raised_at = None;
                        if m.role == Role::Listener {
                            self.members.remove(&actor.id);
                        }
                    }
                    return Err(conflict(
                        "too many hands are raised; try again when the queue is shorter",
                    ));
                }
                Ok(Outcome::Changed)
            }
            Command::LowerHand => match self.members.get(&actor.id) {
                Some(m) if m.hand_raised_at.is_some() => {
                    if m.role == Role::Listener {
                        self.members.remove(&actor.id);
                    } else if let Some(m) = self.members.get_mut(&actor.id) {
                        m.hand_raised_at = None;
                    }
                    Ok(Outcome::Changed)
                }
                _ => Ok(Outcome::Unchanged),
            },
            Command::BringOnStage { target, name } => {
                let target_role = self.target_role(target)?;
                if target_role.on_stage() {
                    return Err(conflict("already on stage"));
                }
                if self.stage_len() >= usize::from(self.max_stage) {
                    return Err(conflict("the stage is full"));
                }
                let known_name = self.members.get(&target).map(|m| m.name.clone());
                let name = match (known_name, name) {
                    (Some(n), _) => n,
                    (None, Some(n)) => validate_name(&n)?.to_owned(),
                    (None, None) => {
                        return Err(RoomError::NotFound(
                            "that participant is not in this space".into(),
                        ));
                    }
                };
                self.members.insert(
                    target,
                    Member {
                        id: target,
                        name,
                        role: Role::Speaker,
                        muted: false,
                        hand_raised_at: None,
                        noise_suppression: false,
                    },
                );
                Ok(Outcome::Changed)
            }
            Command::MoveToAudience { target } => {
                let target_role = self.target_role(target)?;
                if !target_role.on_stage() {
                    return Err(conflict("not on stage"));
                }
                if target_role == Role::Host {
                    return Err(forbidden("the host cannot leave the stage"));
                }
                let allowed = actor.id == target
                    || role == Role::Host
                    || (role == Role::Cohost && target_role == Role::Speaker);
                if !allowed {
                    return Err(forbidden("your role cannot move this participant"));
                }
                self.members.remove(&target);
                Ok(Outcome::Changed)
            }
            Command::AppointCohost { target } => {
                match self.target_role(target)? {
                    Role::Cohost => return Ok(Outcome::Unchanged),
                    Role::Speaker => {}
                    Role::Host => return Err(conflict("the host is already the host")),
                    Role::Listener => {
                        return Err(conflict("bring the participant on stage first"));
                    }
                }
                let cohosts = self
                    .members
                    .values()
                    .filter(|m| m.role == Role::Cohost)
                    .count();
                if cohosts >= usize::from(self.max_cohosts) {
                    return Err(conflict("this space already has the most co-hosts allowed"));
                }
                if let Some(m) = self.members.get_mut(&target) {
                    m.role = Role::Cohost;
                }
                Ok(Outcome::Changed)
            }
            Command::DismissCohost { target } => {
                if self.target_role(target)? != Role::Cohost {
                    return Err(conflict("not a co-host"));
                }
                if let Some(m) = self.members.get_mut(&target) {
                    m.role = Role::Speaker;
                }
                Ok(Outcome::Changed)
            }
            Command::Mute { target } => {
                if !self.target_role(target)?.on_stage() {
                    return Err(conflict("not on stage"));
                }
                match self.members.get_mut(&target) {
                    Some(m) if !m.muted => {
                        m.muted = true;
                        Ok(Outcome::Changed)
                    }
                    _ => Ok(Outcome::Unchanged),
                }
            }
            Command::SetNoiseSuppression { target, on } => {
                self.target_role(target)?;
                match self.members.get_mut(&target) {
                    Some(m) if m.noise_suppression != on => {
                        m.noise_suppression = on;
                        Ok(Outcome::Changed)
                    }
                    _ => Ok(Outcome::Unchanged),
                }
            }
            Command::Unmute { target } => {
                if !role.on_stage() {
                    return Err(conflict("not on stage"));
                }
                match self.members.get_mut(&target) {
                    Some(m) if m.muted => {
                        m.muted = false;
                        Ok(Outcome::Changed)
                    }
                    _ => Ok(Outcome::Unchanged),
                }
            }
            Command::Remove { target, ban } => {
                let target_role = self.target_role(target)?;
                if target_role == Role::Host {
                    return Err(forbidden("the host cannot be removed"));
                }
                if role == Role::Cohost && target_role == Role::Cohost {
                    return Err(forbidden("only the host can remove a co-host"));
                }
                self.members.remove(&target);
                self.removed.insert(target);
                if ban {
                    self.banned.insert(target);
                }
                Ok(Outcome::Removed {
                    target,
                    banned: ban,
                })
            }
        }
    }

    /// The actor's role if `need` allows them to act now: not removed, the
    /// space not ended, and the role (or being the target) the command asks.
    fn require(&self, actor: ParticipantId, need: Need) -> Result<Role, RoomError> {
        let role = self.present(actor)?;
        if self.state == SpaceState::Ended {
            return Err(conflict("the space has ended"));
        }
        let (allowed, refusal) = match need {
            Need::Presence => return Ok(role),
            Need::Moderator(m) => (role.moderates(), m),
            Need::Host(m) => (role == Role::Host, m),
            Need::ModeratorOrSelf(target, m) => (actor == target || role.moderates(), m),
            Need::OnlySelf(target, m) => (actor == target, m),
        };
        if allowed {
            Ok(role)
        } else {
            Err(forbidden(refusal))
        }
    }

    /// The participant's role, or 403 if they were removed: the first
    /// question of every permission.
    fn present(&self, id: ParticipantId) -> Result<Role, RoomError> {
        self.role_of(id)
            .ok_or_else(|| forbidden("you were removed from this space"))
    }

    /// The target's role, or 404 if they were removed (they are no longer
    /// a participant of this space).
    fn target_role(&self, target: ParticipantId) -> Result<Role, RoomError> {
        self.role_of(target).ok_or_else(|| {
            RoomError::NotFound("that participant is no longer in this space".into())
        })
    }

    /// Checks the invariants every reachable state keeps. Used by tests and
    /// after loading from storage.
    pub fn check_invariants(&self) -> Result<(), String> {
        let hosts = self
            .members
            .values()
            .filter(|m| m.role == Role::Host)
            .count();
        if hosts != 1 || self.members.get(&self.host).map(|m| m.role) != Some(Role::Host) {
            return Err(format!("expected exactly one host, found {hosts}"));
        }
        if self.stage_len() > usize::from(self.max_stage) {
            return Err(format!(
                "{} on a stage of {}",
                self.stage_len(),
                self.max_stage
            ));
        }
        let cohosts = self
            .members
            .values()
            .filter(|m| m.role == Role::Cohost)
            .count();
        if cohosts > usize::from(self.max_cohosts) {
            return Err(format!("{cohosts} co-hosts"));
        }
        if let Some(id) = self.members.keys().find(|id| self.removed.contains(id)) {
            return Err(format!("removed participant {id} is still a member"));
        }
        if !self.banned.is_subset(&self.removed) {
            return Err("a banned participant is not removed".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOST: ParticipantId = ParticipantId(1);

    fn space(max_stage: u8) -> Space {
        let opts = SpaceOptions {
            title: "Town hall".into(),
            scheduled_for_ms: None,
            max_stage,
            record: true,
            public: true,
        };
        Space::new(SpaceId(7), HOST, "Host", opts, 0).unwrap()
    }

    fn act(s: &mut Space, who: u64, cmd: Command) -> Result<Outcome, RoomError> {
        s.apply(
            Actor {
                id: ParticipantId(who),
                name: "someone",
            },
            cmd,
            1,
        )
    }

    fn p(id: u64) -> ParticipantId {
        ParticipantId(id)
    }

    #[test]
    fn only_moderators_invite_live_listeners_off_stage() {
        let mut s = space(2);
        assert!(matches!(
            s.may_invite(HOST, p(5)),
            Err(RoomError::Conflict(_))
        ));
        act(&mut s, 1, Command::Start).unwrap();
        s.may_invite(HOST, p(5)).unwrap();
        assert!(matches!(
            s.may_invite(p(6), p(5)),
            Err(RoomError::Forbidden(_))
        ));
        assert!(matches!(
            s.may_invite(HOST, HOST),
            Err(RoomError::Conflict(_))
        ));
        act(
            &mut s,
            1,
            Command::BringOnStage {
                target: p(6),
                name: Some("Six".into()),
            },
        )
        .unwrap();
        // The stage (2) is full now.
        assert!(matches!(
            s.may_invite(HOST, p(5)),
            Err(RoomError::Conflict(_))
        ));
        act(
            &mut s,
            1,
            Command::Remove {
                target: p(7),
                ban: false,
            },
        )
        .unwrap();
        assert!(matches!(
            s.may_invite(HOST, p(7)),
            Err(RoomError::Conflict(_)) | Err(RoomError::NotFound(_))
        ));
    }

    #[test]
    fn listener_cannot_moderate_and_host_brings_raised_hand_on_stage() {
        let mut s = space(13);
        act(&mut s, 1, Command::Start).unwrap();
        assert!(matches!(
            act(&mut s, 5, Command::Mute { target: HOST }),
            Err(RoomError::Forbidden(_))
        ));
        assert!(matches!(
            act(&mut s, 5, Command::End),
            Err(RoomError::Forbidden(_))
        ));
        act(&mut s, 5, Command::RaiseHand).unwrap();
        assert_eq!(s.hands().count(), 1);
        act(
            &mut s,
            1,
            Command::BringOnStage {
                target: p(5),
                name: None,
            },
        )
        .unwrap();
        assert_eq!(s.role_of(p(5)), Some(Role::Speaker));
        assert_eq!(s.hands().count(), 0);
        assert!(s.is_audible(p(5)));
    }

    #[test]
    fn mute_is_moderator_or_self_and_unmute_is_self_only() {
        let mut s = space(13);
        act(&mut s, 1, Command::Start).unwrap();
        act(
            &mut s,
            1,
            Command::BringOnStage {
                target: p(5),
                name: Some("Five".into()),
            },
        )
        .unwrap();
        act(&mut s, 1, Command::Mute { target: p(5) }).unwrap();
        assert!(!s.is_audible(p(5)));
        assert!(matches!(
            act(&mut s, 1, Command::Unmute { target: p(5) }),
            Err(RoomError::Forbidden(_))
        ));
        act(&mut s, 5, Command::Unmute { target: p(5) }).unwrap();
        assert!(s.is_audible(p(5)));
        act(&mut s, 5, Command::Mute { target: p(5) }).unwrap();
        assert!(!s.is_audible(p(5)));
    }

    #[test]
    fn noise_suppression_is_set_by_a_moderator_or_the_speaker() {
        let mut s = space(13);
        act(&mut s, 1, Command::Start).unwrap();
        act(
            &mut s,
            1,
            Command::BringOnStage {
                target: p(5),
                name: Some("Five".into()),
            },
        )
        .unwrap();
        let set = |target, on| Command::SetNoiseSuppression { target, on };
        assert!(!s.suppresses_noise(p(5)));
        // A listener cannot; the speaker can, and so can the host.
        assert!(matches!(
            act(&mut s, 6, set(p(5), true)),
            Err(RoomError::Forbidden(_))
        ));
        assert_eq!(act(&mut s, 5, set(p(5), true)), Ok(Outcome::Changed));
        assert!(s.suppresses_noise(p(5)));
        assert_eq!(act(&mut s, 5, set(p(5), true)), Ok(Outcome::Unchanged));
        assert_eq!(act(&mut s, 1, set(p(5), false)), Ok(Outcome::Changed));
        assert!(!s.suppresses_noise(p(5)));
        // Someone the space does not remember (a listener): nothing to set.
        assert_eq!(act(&mut s, 1, set(p(9), true)), Ok(Outcome::Unchanged));
        // A space that asks it of everyone.
        s.noise_suppression = true;
        assert!(s.suppresses_noise(p(5)) && s.suppresses_noise(HOST));
    }

    #[test]
    fn cohost_rules() {
        let mut s = space(13);
        for id in [2, 3, 4] {
            act(
                &mut s,
                1,
                Command::BringOnStage {
                    target: p(id),
                    name: Some(format!("P{id}")),
                },
            )
            .unwrap();
        }
        act(&mut s, 1, Command::AppointCohost { target: p(2) }).unwrap();
        act(&mut s, 1, Command::AppointCohost { target: p(3) }).unwrap();
        assert!(matches!(
            act(&mut s, 1, Command::AppointCohost { target: p(4) }),
            Err(RoomError::Conflict(_))
        ));
        // A co-host cannot appoint, cannot remove the host or another co-host.
        assert!(matches!(
            act(&mut s, 2, Command::AppointCohost { target: p(4) }),
            Err(RoomError::Forbidden(_))
        ));
        assert!(matches!(
            act(
                &mut s,
                2,
                Command::Remove {
                    target: HOST,
                    ban: false
                }
            ),
            Err(RoomError::Forbidden(_))
        ));
        assert!(matches!(
            act(
                &mut s,
                2,
                Command::Remove {
                    target: p(3),
                    ban: false
                }
            ),
            Err(RoomError::Forbidden(_))
        ));
        // A co-host can start, mute the host and move a speaker to the audience.
        act(&mut s, 2, Command::Start).unwrap();
        act(&mut s, 2, Command::Mute { target: HOST }).unwrap();
        act(&mut s, 2, Command::MoveToAudience { target: p(4) }).unwrap();
        assert_eq!(s.role_of(p(4)), Some(Role::Listener));
        // Only the host ends.
        assert!(matches!(
            act(&mut s, 2, Command::End),
            Err(RoomError::Forbidden(_))
        ));
    }

    #[test]
    fn removal_and_ban_take_every_right_at_once() {
        let mut s = space(13);
        act(&mut s, 1, Command::Start).unwrap();
        act(
            &mut s,
            1,
            Command::BringOnStage {
                target: p(5),
                name: Some("Five".into()),
            },
        )
        .unwrap();
        let out = act(
            &mut s,
            1,
            Command::Remove {
                target: p(5),
                ban: true,
            },
        )
        .unwrap();
        assert_eq!(
            out,
            Outcome::Removed {
                target: p(5),
                banned: true
            }
        );
        assert_eq!(s.role_of(p(5)), None);
        assert!(s.is_banned(p(5)));
        assert!(!s.is_audible(p(5)));
        assert!(matches!(
            act(&mut s, 5, Command::RaiseHand),
            Err(RoomError::Forbidden(_))
        ));
        assert!(matches!(
            act(&mut s, 5, Command::Unmute { target: p(5) }),
            Err(RoomError::Forbidden(_))
        ));
        assert!(matches!(
            act(
                &mut s,
                1,
                Command::BringOnStage {
                    target: p(5),
                    name: Some("x".into())
                }
            ),
            Err(RoomError::NotFound(_))
        ));
    }

    #[test]
    fn a_ban_holds_the_network_and_identity_spaces_refuse_anonymous_joins() {
        let mut s = space(13);
        act(&mut s, 1, Command::Start).unwrap();
        assert!(!s.hold_network(p(5), "10.0.0.5/32"), "not banned yet");
        act(&mut s, 5, Command::RaiseHand).unwrap();
        act(
            &mut s,
            1,
            Command::Remove {
                target: p(5),
                ban: true,
            },
        )
        .unwrap();
        assert!(s.hold_network(p(5), "10.0.0.5/32"));
        let from = |s: &Space, net| s.may_join_from(p(9), None, Some(net), false);
        assert!(matches!(
            from(&s, "10.0.0.5/32"),
            Err(RoomError::Forbidden(_))
        ));
        assert_eq!(from(&s, "10.0.0.6/32"), Ok(Role::Listener));
        // The host is never locked out by a network.
        assert_eq!(
            s.may_join_from(HOST, None, Some("10.0.0.5/32"), false),
            Ok(Role::Host)
        );
        s.require_identity = true;
        assert!(matches!(
            from(&s, "10.0.0.6/32"),
            Err(RoomError::Unauthenticated(_))
        ));
        assert_eq!(s.may_join_from(p(9), None, None, true), Ok(Role::Listener));
        // Kept across a save.
        let saved: Space = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(saved, s);
    }

    #[test]
    fn the_hand_queue_is_bounded() {
        let mut s = space(13);
        act(&mut s, 1, Command::Start).unwrap();
        for id in 0..MAX_HANDS as u64 {
            act(&mut s, 100 + id, Command::RaiseHand).unwrap();
        }
        let before = s.clone();
        assert!(matches!(
            act(&mut s, 99, Command::RaiseHand),
            Err(RoomError::Conflict(_))
        ));
        assert_eq!(s, before, "a refused hand changed the space");
        act(&mut s, 100, Command::LowerHand).unwrap();
        act(&mut s, 99, Command::RaiseHand).unwrap();
        assert_eq!(s.hands_len(), MAX_HANDS);
    }

    #[test]
    fn stage_is_bounded_and_lifecycle_is_one_way() {
        let mut s = space(2);
        act(
            &mut s,
            1,
            Command::BringOnStage {
                target: p(2),
                name: Some("Two".into()),
            },
        )
        .unwrap();
        assert!(matches!(
            act(
                &mut s,
                1,
                Command::BringOnStage {
                    target: p(3),
                    name: Some("Three".into())
                }
            ),
            Err(RoomError::Conflict(_))
        ));
        act(&mut s, 1, Command::Start).unwrap();
        assert!(matches!(
            act(&mut s, 1, Command::Start),
            Err(RoomError::Conflict(_))
        ));
        act(&mut s, 1, Command::End).unwrap();
        assert!(matches!(
            act(&mut s, 1, Command::Start),
            Err(RoomError::Conflict(_))
        ));
        assert_eq!(s.audible().count(), 0);
    }

    #[test]
    fn options_are_validated() {
        let mut opts = SpaceOptions {
            title: " ".into(),
            scheduled_for_ms: None,
            max_stage: 13,
            record: true,
            public: true,
        };
        assert!(opts.validate().is_err());
        opts.title = "ok".into();
        opts.max_stage = 51;
        assert!(opts.validate().is_err());
        opts.max_stage = 50;
        assert!(opts.validate().is_ok());
        assert!(validate_name("a\u{7}b").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    fn command() -> impl Strategy<Value = (u64, Command)> {
        let who = 1u64..8;
        let target = (1u64..8).prop_map(ParticipantId);
        let cmd = prop_oneof![
            Just(Command::Start),
            Just(Command::End),
            Just(Command::RaiseHand),
            Just(Command::LowerHand),
            (target.clone(), any::<bool>()).prop_map(|(t, named)| Command::BringOnStage {
                target: t,
                name: named.then(|| "Named".to_owned()),
            }),
            target
                .clone()
                .prop_map(|t| Command::MoveToAudience { target: t }),
            target
                .clone()
                .prop_map(|t| Command::AppointCohost { target: t }),
            target
                .clone()
                .prop_map(|t| Command::DismissCohost { target: t }),
            target.clone().prop_map(|t| Command::Mute { target: t }),
            target.clone().prop_map(|t| Command::Unmute { target: t }),
            (target, any::<bool>()).prop_map(|(t, ban)| Command::Remove { target: t, ban }),
        ];
        (who, cmd)
    }

    proptest! {
        #[test]
        fn invariants_hold_for_any_command_sequence(
            max_stage in 1u8..6,
            cmds in proptest::collection::vec(command(), 0..80),
        ) {
            let mut s = space(max_stage);
            let mut removed = BTreeSet::new();
            let mut ended: Option<Space> = None;
            for (who, cmd) in cmds {
                let before = s.clone();
                let res = act(&mut s, who, cmd);
                if res.is_err() {
                    prop_assert_eq!(&before, &s, "a refused command changed the space");
                }
                if let Ok(Outcome::Removed { target, .. }) = res {
                    removed.insert(target);
                }
                prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
                prop_assert_eq!(s.role_of(HOST), Some(Role::Host));
                for r in &removed {
                    prop_assert_eq!(s.role_of(*r), None, "a removed participant regained a right");
                    prop_assert!(!s.is_audible(*r));
                }
                if let Some(e) = &ended {
                    prop_assert_eq!(e, &s, "an ended space changed");
                }
                if s.state == SpaceState::Ended && ended.is_none() {
                    ended = Some(s.clone());
                }
                for id in s.audible() {
                    prop_assert!(s.role_of(id).is_some_and(Role::on_stage));
                    prop_assert!(!s.member(id).is_some_and(|m| m.muted));
                }
            }
        }
    }

    #[test]
    fn the_predicates_refuse_with_the_api_messages() {
        let mut s = space(13);
        s.public = false;
        let msg = |r: Result<(), RoomError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(s.may_listen(Listener::Participant(HOST))),
            "the space has not started yet"
        );
        assert_eq!(msg(s.may_publish(HOST)), "the space is not live");
        assert_eq!(msg(s.may_react(HOST)), "reactions are for live spaces");
        assert_eq!(
            msg(s.may_publish(p(5))),
            "only stage members can publish audio"
        );
        act(&mut s, 1, Command::Start).unwrap();
        assert!(matches!(
            s.may_listen(Listener::Anonymous),
            Err(RoomError::Unauthenticated(m)) if m == "this space needs a token: join first"
        ));
        assert!(matches!(
            s.may_listen(Listener::Unverified),
            Err(RoomError::Unauthenticated(_))
        ));
        s.public = true;
        s.may_listen(Listener::Anonymous).unwrap();
        act(&mut s, 5, Command::RaiseHand).unwrap();
        act(
            &mut s,
            1,
            Command::Remove {
                target: p(5),
                ban: true,
            },
        )
        .unwrap();
        for r in [
            s.may_publish(p(5)),
            s.may_react(p(5)),
            s.may_listen(Listener::Participant(p(5))),
            s.may_follow_events(p(5)).map(|_| ()),
        ] {
            assert_eq!(msg(r), "you were removed from this space");
        }
        assert_eq!(
            msg(s.may_join(p(5), None).map(|_| ())),
            "you are banned from this space"
        );
        assert_eq!(
            msg(s.may_join(p(6), Some(p(5))).map(|_| ())),
            "you are banned from this space"
        );
        assert_eq!(s.may_join(p(6), None), Ok(Role::Listener));
        assert_eq!(s.may_join(HOST, None), Ok(Role::Host));
        act(&mut s, 1, Command::End).unwrap();
        // The state comes first: even a stale token learns where the replay is.
        assert_eq!(
            msg(s.may_listen(Listener::Unverified)),
            "the space has ended; the replay is at /spaces/0000000000000007/recording.opus"
        );
        assert_eq!(
            msg(s.may_join(p(6), None).map(|_| ())),
            "the space has ended"
        );
        assert_eq!(s.may_follow_events(HOST), Ok(Role::Host));
    }

    proptest! {
        #[test]
        fn the_predicates_agree_with_apply_and_the_rules(
            max_stage in 1u8..6,
            public in any::<bool>(),
            cmds in proptest::collection::vec(command(), 0..60),
        ) {
            let mut s = space(max_stage);
            s.public = public;
            let mut banned = BTreeSet::new();
            for (who, cmd) in cmds {
                if let Ok(Outcome::Removed { target, banned: true }) = act(&mut s, who, cmd) {
                    banned.insert(target);
                }
                let live = s.state == SpaceState::Live;
                let open = s.state != SpaceState::Ended;
                prop_assert_eq!(s.may_listen(Listener::Anonymous).is_ok(), live && public);
                prop_assert!(s.may_listen(Listener::Unverified).is_err());
                prop_assert_eq!(s.may_replay(Listener::Anonymous).is_ok(), public);
                prop_assert!(s.may_replay(Listener::Unverified).is_err());
                for id in (1..9).map(p) {
                    let role = s.role_of(id);
                    // Publishing: on stage, not removed or banned, in a live space.
                    let publish = s.may_publish(id).is_ok();
                    prop_assert_eq!(publish, live && role.is_some_and(Role::on_stage));
                    // ... exactly when `apply` would let them unmute themselves, live.
                    let mut probe = s.clone();
                    let unmute = act(&mut probe, id.0, Command::Unmute { target: id });
                    prop_assert_eq!(publish, live && unmute.is_ok());
                    prop_assert!(!s.is_audible(id) || publish, "audible without the right to publish");
                    prop_assert_eq!(
                        s.may_use_turn(id).is_ok(),
                        role.is_some_and(Role::on_stage)
                    );
                    prop_assert!(!publish || s.may_use_turn(id).is_ok());
                    // Events: whoever `apply` does not refuse as removed.
                    let mut probe = s.clone();
                    let lower = act(&mut probe, id.0, Command::LowerHand);
                    prop_assert_eq!(s.may_follow_events(id).ok(), role);
                    prop_assert_eq!(
                        s.may_follow_events(id).is_err(),
                        matches!(lower, Err(RoomError::Forbidden(_)))
                    );
                    prop_assert_eq!(s.may_react(id).is_ok(), live && lower.is_ok());
                    prop_assert_eq!(
                        s.may_listen(Listener::Participant(id)).is_ok(),
                        live && role.is_some()
                    );
                    prop_assert_eq!(
                        s.may_replay(Listener::Participant(id)).is_ok(),
                        role.is_some()
                    );
                    // Joining: never banned, never an ended space, in the role held now.
                    let join = s.may_join(id, None);
                    prop_assert_eq!(join.is_ok(), open && !banned.contains(&id));
                    if let Ok(r) = join {
                        prop_assert_eq!(r, role.unwrap_or(Role::Listener));
                    }
                    prop_assert_eq!(
                        s.may_join(p(99), Some(id)).is_ok(),
                        open && !banned.contains(&id)
                    );
                }
            }
        }
    }
}
