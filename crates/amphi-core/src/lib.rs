//! The sans-IO heart of amphi: identifiers, the program's frame sequence,
//! the room rules of a space and signed tokens.
//!
//! Nothing here touches a socket, a thread or a clock: every function takes
//! its inputs (a command, a frame, `now`) and returns what happened.

pub mod frame;
pub mod id;
pub mod reactions;
pub mod room;
pub mod token;

pub use frame::{Frame, History, SpeakerLevel};
pub use id::{ClipId, ParticipantId, SpaceId};
pub use room::{
    Actor, Command, Listener, Member, Outcome, Role, RoomError, Space, SpaceOptions, SpaceState,
};
