//! One space inside the program: where its frames come from, and its
//! cutters.

use std::collections::HashMap;

use amphi_core::ParticipantId;
use amphi_media::Mixer;

use crate::cutters::Cutters;
use crate::output::Session;

/// A speaker of a mixed space: their open sessions, and whether each wants
/// return audio.
#[derive(Debug, Default)]
pub(crate) struct Speaker {
    pub sessions: Vec<(Session, bool)>,
    pub audible: bool,
}

/// A space this node originates: its speakers are mixed here (or, while
/// one voice is heard, passed through by the mixer: the cutters see the
/// same frames either way).
#[derive(Debug)]
pub(crate) struct Mixed {
    pub mixer: Mixer,
    pub speakers: HashMap<ParticipantId, Speaker>,
    pub record: bool,
}

/// Where a space's frames come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Mixed on this node every tick (boxed: a mixer holds its frames'
    /// buffers inline).
    Mixed(Box<Mixed>),
    /// Mixed on another node; its frames arrive with
    /// [`Program::remote_frame`](crate::Program::remote_frame).
    Edge,
}

/// One space: its source and its cutters.
#[derive(Debug)]
pub(crate) struct SpaceProgram {
    pub source: Source,
    pub cutters: Cutters,
}
