//! Spaces taken over from a dead origin, waiting for a speaker. The new
//! origin mixes silence until a speaker's client reconnects (through any
//! node: its WHIP call is forwarded here); if none does within the grace,
//! the space ends by itself, so its listeners are told and its replay is
//! cut, rather than staying live and silent for ever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use amphi_core::SpaceId;

/// The spaces this node took over and still waits on.
#[derive(Debug)]
pub struct Orphans {
    grace: Duration,
    waiting: HashMap<SpaceId, Instant>,
}

impl Orphans {
    /// Spaces end `grace` after their takeover if no speaker came back.
    pub fn new(grace: Duration) -> Self {
        Orphans {
            grace,
            waiting: HashMap::new(),
        }
    }

    /// This node took `space` over from a node that stopped renewing.
    pub fn took_over(&mut self, space: SpaceId, now: Instant) {
        self.waiting.insert(space, now);
    }

    /// `space` is no longer this node's to wait on (lost, or ended).
    pub fn forget(&mut self, space: SpaceId) {
        self.waiting.remove(&space);
    }

    /// Spaces waited on now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing is waited on.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The spaces to end at `now`: waited on for the grace with no speaker
    /// back (`speaker_back` says, per space). A space whose speaker came
    /// back is no longer waited on.
    pub fn due(&mut self, now: Instant, speaker_back: impl Fn(SpaceId) -> bool) -> Vec<SpaceId> {
        self.waiting.retain(|id, _| !speaker_back(*id));
        let grace = self.grace;
        let due: Vec<SpaceId> = self
            .waiting
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.waiting.remove(id);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_ends_after_the_grace_unless_a_speaker_comes_back() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut o = Orphans::new(Duration::from_secs(60));
        o.took_over(SpaceId(1), t0);
        o.took_over(SpaceId(2), t0);
        assert!(o.due(s(59), |_| false).is_empty());
        // Space 2's speaker reconnects: it is no longer waited on.
        assert!(o.due(s(30), |id| id == SpaceId(2)).is_empty());
        assert_eq!(o.len(), 1);
        assert_eq!(o.due(s(60), |_| false), vec![SpaceId(1)]);
        assert!(o.is_empty());
        assert!(o.due(s(600), |_| false).is_empty(), "ended once");
        o.took_over(SpaceId(3), s(0));
        o.forget(SpaceId(3));
        assert!(o.due(s(600), |_| false).is_empty());
    }
}
