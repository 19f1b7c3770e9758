//! Recording continuity across an origin's death. The dead origin stored
//! its recording in segments; the one in progress when it died (and, with
//! storage that is not shared, everything it stored) is not where the new
//! origin records. Every node that served the space as an edge holds its
//! last 30 s of frames, so the new origin asks them all
//! (`amphi.space.<id>.backfill`, any node answers with what it holds from
//! a sequence number on) and records what they hold between the last frame
//! storage has and its own first frame.

use amphi_core::{Frame, SpaceId};

/// Subject of a space's backfill requests (answered by every node holding
/// some of its recent frames; the payload is a history request).
pub fn backfill_subject(space: SpaceId) -> String {
    format!("amphi.space.{space}.backfill")
}

/// The frames to record after a takeover: from the answers (and this
/// node's own history), those with `from <= seq < before`, each sequence
/// number once, in order.
pub fn merge(answers: impl IntoIterator<Item = Vec<Frame>>, from: u64, before: u64) -> Vec<Frame> {
    let mut out: Vec<Frame> = answers
        .into_iter()
        .flatten()
        .filter(|f| f.seq >= from && f.seq < before)
        .collect();
    out.sort_by_key(|f| f.seq);
    out.dedup_by_key(|f| f.seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn f(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_us: 0,
            opus: Bytes::from_static(b"x"),
            program_level: 0,
            speakers: Vec::new().into(),
        }
    }

    #[test]
    fn answers_are_merged_once_in_order_within_the_hole() {
        let a = vec![f(10), f(11), f(12), f(13)];
        let b = vec![f(12), f(13), f(14), f(15), f(400)];
        let seqs: Vec<u64> = merge([b, a, vec![]], 11, 300)
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(seqs, [11, 12, 13, 14, 15]);
        assert!(merge([vec![f(5)]], 6, 10).is_empty());
    }
}
