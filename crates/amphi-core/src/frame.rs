//! The program is a sequence of frames: one per 20 ms for the life of a
//! space. Every listener output and the recording are pure functions of it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::ParticipantId;

/// Samples per program frame: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: u32 = 960;
/// Duration of one program frame in microseconds.
pub const FRAME_US: u64 = 20_000;

/// Loudness of one speaker in one frame, 0 (silent) to 127 (full scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeakerLevel {
    pub participant: ParticipantId,
    pub level: u8,
}

/// One 20 ms frame of the mixed program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Monotonic, gap-free within a space: frame `n + 1` follows frame `n`.
    pub seq: u64,
    /// Wall-clock capture time of the frame's audio, microseconds since the
    /// UNIX epoch. Listeners subtract it from their own clock for latency.
    pub captured_at_us: u64,
    /// One Opus packet (mono, 48 kHz, 20 ms).
    pub opus: Bytes,
    /// Program level, 0..=127.
    pub program_level: u8,
    /// Levels of the audible speakers in this frame (shared, built once).
    pub speakers: Arc<[SpeakerLevel]>,
}

/// The recent frames of a space: a bounded ring that serves join bursts,
/// `?from_seq=` resumes and an edge's catch-up.
#[derive(Debug, Clone)]
pub struct History {
    frames: VecDeque<Frame>,
    capacity: usize,
}

impl History {
    /// A ring that keeps the last `capacity` frames (1,500 = 30 s).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            frames: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends a frame, evicting the oldest when full.
    pub fn push(&mut self, frame: Frame) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// Sequence number of the oldest frame kept.
    pub fn first_seq(&self) -> Option<u64> {
        self.frames.front().map(|f| f.seq)
    }

    /// Sequence number of the newest frame.
    pub fn last_seq(&self) -> Option<u64> {
        self.frames.back().map(|f| f.seq)
    }

    /// Number of frames kept.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames with `seq >= from`, oldest first. If `from` is older than the
    /// window, starts at the oldest frame kept; the caller can compare
    /// [`History::first_seq`] to tell the listener what was lost.
    pub fn since(&self, from: u64) -> impl Iterator<Item = &Frame> {
        let skip = match self.first_seq() {
            Some(first) if from > first => (from - first) as usize,
            _ => 0,
        };
        self.frames.iter().skip(skip)
    }

    /// The newest `n` frames, oldest first.
    pub fn last_n(&self, n: usize) -> impl Iterator<Item = &Frame> {
        self.frames.iter().skip(self.frames.len().saturating_sub(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_us: seq * FRAME_US,
            opus: Bytes::from_static(&[0xf8]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn history_is_bounded_and_resumes() {
        let mut h = History::new(3);
        for s in 10..15 {
            h.push(frame(s));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.first_seq(), Some(12));
        let seqs: Vec<u64> = h.since(13).map(|f| f.seq).collect();
        assert_eq!(seqs, vec![13, 14]);
        let seqs: Vec<u64> = h.since(0).map(|f| f.seq).collect();
        assert_eq!(seqs, vec![12, 13, 14]);
        assert_eq!(h.since(99).count(), 0);
        let seqs: Vec<u64> = h.last_n(2).map(|f| f.seq).collect();
        assert_eq!(seqs, vec![13, 14]);
    }
}
