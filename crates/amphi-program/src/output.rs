//! What the program hands back to its shell.

use std::sync::Arc;
use std::time::Instant;

use amphi_core::{Frame, SpaceId, SpeakerLevel};
use bytes::Bytes;

/// A speaker's ingest session, as the shell numbers it (the WebRTC
/// engine's session id). The program only routes return audio and closes
/// with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session(pub u64);

/// Which listener output a unit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// An Ogg page of `live.opus`.
    Ogg,
    /// A framed `live.ws` WebSocket message (a close frame at the end).
    Ws,
    /// LL-HLS part `part` of segment `msn`, already in the space's
    /// segmenter store.
    HlsPart { msn: u64, part: u32 },
    /// LL-HLS segment `msn` is complete (its bytes are its parts).
    HlsSegment { msn: u64 },
}

/// Something the control plane may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Who was heard in a frame, and how loud (each frame with a speaker).
    Talking {
        space: SpaceId,
        levels: Arc<[SpeakerLevel]>,
    },
    /// The space's outputs are complete: the units before this event are
    /// its last ones, and the shell can close them. `ended`: the space
    /// ended (listeners got the end of the stream); otherwise it goes on
    /// elsewhere (its listeners reconnect). `record`: a recording of it
    /// was being made here.
    Closed {
        space: SpaceId,
        ended: bool,
        record: bool,
        last_seq: Option<u64>,
    },
}

/// One thing for the shell to carry out; drain them with
/// [`Program::poll_output`](crate::Program::poll_output) until
/// [`Output::Timeout`].
#[derive(Debug, Clone)]
pub enum Output {
    /// A program frame this node mixed: for the recorder (when `record`)
    /// and for the cluster's edges. (Edge frames are not repeated here.)
    Frame {
        space: SpaceId,
        frame: Frame,
        record: bool,
    },
    /// The next unit of one of a space's listener outputs, built once for
    /// every listener. `last_frame`: sequence number of the last frame in
    /// it.
    Unit {
        space: SpaceId,
        kind: UnitKind,
        bytes: Bytes,
        last_frame: u64,
    },
    /// Return audio (everyone but the speaker) for one of their sessions,
    /// for program frame `seq`: the frames skipped since the previous one
    /// (silence, sent only every 400 ms) move its RTP timestamp on.
    MixMinus {
        session: Session,
        opus: Bytes,
        seq: u64,
    },
    /// Close this ingest session: a newer one of the same speaker replaced
    /// it, or its space is not mixed here.
    CloseSession(Session),
    /// Something for the control plane.
    Event(Event),
    /// Nothing more to do before this instant unless an input arrives:
    /// call [`Program::handle_timeout`](crate::Program::handle_timeout)
    /// then.
    Timeout(Instant),
}
