//! Whether this node is cut off from the cluster. A node that has not been
//! connected to NATS for [`STALE_AFTER`] stops serving its copies of the
//! spaces other nodes mix (their state may have moved on without it); the
//! spaces it mixes itself stay served, since it is their source.

use std::time::{Duration, Instant};

/// Cut off from NATS for this long, a node's copies of other nodes' spaces
/// count as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// This node's link to NATS, as last reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Partition {
    /// Since when NATS has been unreachable (`None`: connected).
    down_since: Option<Instant>,
}

impl Partition {
    /// A node that starts connected.
    pub fn new() -> Self {
        Partition::default()
    }

    /// NATS answers (connected or reconnected) at `now`.
    pub fn connected(&mut self) {
        self.down_since = None;
    }

    /// NATS became unreachable at `now` (a repeated report keeps the first
    /// moment).
    pub fn disconnected(&mut self, now: Instant) {
        self.down_since.get_or_insert(now);
    }

    /// Whether NATS is reachable.
    pub fn is_connected(&self) -> bool {
        self.down_since.is_none()
    }

    /// Whether the node has been cut off for [`STALE_AFTER`] at `now`.
    pub fn is_cut_off(&self, now: Instant) -> bool {
        self.down_since
            .is_some_and(|t| now.saturating_duration_since(t) > STALE_AFTER)
    }

    /// Whether this node may serve a space (`None`: the list of spaces) at
    /// `now`, given whether it mixes that space itself.
    pub fn may_serve(&self, mixed_here: bool, now: Instant) -> bool {
        mixed_here || !self.is_cut_off(now)
    }
}
