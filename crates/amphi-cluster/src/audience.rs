//! The other nodes' count reports, summed: each space's listeners on the
//! rest of the cluster, and whether some other node mixes it. Reports older
//! than [`COUNTS_FRESH`] no longer count (their node is gone).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use amphi_core::SpaceId;

use crate::CountsReport;

/// A node's count report older than this no longer counts.
pub const COUNTS_FRESH: Duration = Duration::from_secs(3);

/// The latest report of every other node.
#[derive(Debug)]
pub struct Audience {
    me: String,
    started: Instant,
    reports: HashMap<String, (Instant, CountsReport)>,
}

/// The sum of the fresh reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Listeners on the other nodes, per space.
    pub remote: HashMap<SpaceId, u64>,
    /// Spaces some other node mixes.
    pub mixed_elsewhere: HashSet<SpaceId>,
    /// Long enough since start for every live node to have reported: until
    /// then, a space nobody reports mixing is not yet known to be off air.
    pub settled: bool,
}

impl Tally {
    /// Whether a live space is on air: mixed here or on a node that said so
    /// (and, before the reports settle, assumed so).
    pub fn on_air(&self, space: SpaceId, mixed_here: bool) -> bool {
        !self.settled || mixed_here || self.mixed_elsewhere.contains(&space)
    }
}

impl Audience {
    /// The audience as seen by node `me`, started at `now`.
    pub fn new(me: impl Into<String>, now: Instant) -> Self {
        Audience {
            me: me.into(),
            started: now,
            reports: HashMap::new(),
        }
    }

    /// Takes another node's report (this node's own are ignored).
    pub fn take(&mut self, report: CountsReport, now: Instant) {
        if report.node != self.me {
            self.reports.insert(report.node.clone(), (now, report));
        }
    }

    /// Sums the reports still fresh at `now`, forgetting the others.
    pub fn tally(&mut self, now: Instant) -> Tally {
        self.reports
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < COUNTS_FRESH);
        let mut t = Tally {
            settled: now.saturating_duration_since(self.started) > COUNTS_FRESH,
            ..Tally::default()
        };
        for (_, r) in self.reports.values() {
            for s in &r.spaces {
                *t.remote.entry(s.space).or_insert(0) += s.listeners;
                if s.mixing {
                    t.mixed_elsewhere.insert(s.space);
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpaceCounts;

    fn report(node: &str, listeners: u64, mixing: bool) -> CountsReport {
        CountsReport {
            node: node.into(),
            spaces: vec![SpaceCounts {
                space: SpaceId(1),
                listeners,
                reactions: vec![],
                mixing,
            }],
        }
    }

    #[test]
    fn fresh_reports_sum_and_stale_ones_drop_out() {
        let t0 = Instant::now();
        let mut a = Audience::new("a", t0);
        let s = SpaceId(1);
        assert!(a.tally(t0).on_air(s, false), "unsettled: assumed on air");
        a.take(report("b", 10, true), t0);
        a.take(report("c", 5, false), t0 + Duration::from_secs(2));
        a.take(report("a", 1000, false), t0);
        let t = a.tally(t0 + Duration::from_secs(4));
        assert!(t.settled);
        assert_eq!(t.remote.get(&s), Some(&5), "b's report went stale");
        assert!(!t.on_air(s, false), "nobody mixes it any more");
        assert!(t.on_air(s, true));
    }
}
