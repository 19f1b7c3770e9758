//! The program of every space a node serves, as one sans-IO state machine.
//!
//! A [`Program`] takes packets from speakers, commands (a space starts,
//! stops or moves to another node; a speaker's session opens or closes; a
//! gate opens or closes), frames of spaces mixed elsewhere (an edge), and
//! `now`. Every 20 ms it mixes each space it originates into one
//! [`Frame`](amphi_core::Frame) and cuts that frame, once, into every
//! listener output: the frame history, Ogg pages, `live.ws` messages and
//! LL-HLS parts and segments. What it decided comes out of
//! [`Program::poll_output`], drained until it answers with the next
//! deadline, as str0m does:
//!
//! ```text
//!  packets ─┐                               ┌─► Frame (recorder, cluster bus)
//!  commands ┼─► Program ── tick every 20 ms ┼─► Unit (Ogg page, WS message, HLS part)
//!  remote   │   (mixers, jitter buffers,    ├─► MixMinus (back to a speaker)
//!  frames  ─┤    cutters, history)          ├─► CloseSession, Event
//!  now ─────┘                               └─► Timeout(next deadline)
//! ```
//!
//! No thread, channel, clock or socket lives here: the node's media thread
//! is a loop that feeds inputs and carries outputs, and the tests drive the
//! same machine on simulated time. The history and the HLS segmenter are
//! stores the HTTP side reads while the program writes them ([`Stores`]);
//! everything else is owned by the machine and bounded per space.

mod cutters;
mod output;
mod program;
mod space;

pub use cutters::{CutConfig, Cutters, Stores, ogg_serial, resume_ws};
pub use output::{Event, Output, Session, UnitKind};
pub use program::{
    IDLE_JITTER_DEPTH_US, MAX_SESSIONS_PER_SPEAKER, Packet, Program, ProgramConfig, ProgramStats,
    StartSpace, TICK,
};

/// Why the program could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgramError {
    /// The codec refused (a mixer or an encoder could not be made).
    #[error(transparent)]
    Media(#[from] amphi_media::MediaError),
}
