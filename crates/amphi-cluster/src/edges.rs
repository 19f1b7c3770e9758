//! When a node is an edge of a space: the decisions of subscribing to a
//! space's frames and unsubscribing, as a state machine with `now` as an
//! input. A node becomes an edge for a space it does not mix when a
//! listener of that space has been *admitted* (so a listener about to be
//! refused never makes the node subscribe), and stays one while it has
//! listeners, then for a linger after the last has gone, so a listener who
//! reconnects finds the feed and its history still there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use amphi_core::SpaceId;

/// What the shell should do about a space's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeAction {
    /// Subscribe to the space's frames and fetch its history.
    Subscribe(SpaceId),
    /// Unsubscribe. `ended`: the space ended, so the outputs are finished
    /// (listeners get the end of the stream) rather than just closed.
    Unsubscribe { space: SpaceId, ended: bool },
}

#[derive(Debug, Clone, Copy)]
struct Feed {
    last_used: Instant,
}

/// The spaces this node serves as an edge.
#[derive(Debug)]
pub struct Edges {
    linger: Duration,
    feeds: HashMap<SpaceId, Feed>,
}

impl Edges {
    /// Edges that keep a feed nobody listens to for `linger`.
    pub fn new(linger: Duration) -> Self {
        Edges {
            linger,
            feeds: HashMap::new(),
        }
    }

    /// A listener of `space` (mixed on another node) was admitted, or a
    /// request for its outputs is being served: subscribe if this node is
    /// not an edge for it yet.
    pub fn admitted(&mut self, space: SpaceId, now: Instant) -> Option<EdgeAction> {
        match self.feeds.get_mut(&space) {
            Some(f) => {
                f.last_used = f.last_used.max(now);
                None
            }
            None => {
                self.feeds.insert(space, Feed { last_used: now });
                Some(EdgeAction::Subscribe(space))
            }
        }
    }

    /// The subscription asked for could not be made: forget it, so the
    /// next listener tries again.
    pub fn subscribe_failed(&mut self, space: SpaceId) {
        self.feeds.remove(&space);
    }

    /// Whether this node is an edge for `space`.
    pub fn is_edge(&self, space: SpaceId) -> bool {
        self.feeds.contains_key(&space)
    }

    /// Spaces served as an edge now.
    pub fn len(&self) -> usize {
        self.feeds.len()
    }

    /// Whether this node is an edge for no space.
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// The feeds nobody has used for the linger, given how many listeners
    /// each space has on this node now. Called about once a second.
    pub fn tick(&mut self, now: Instant, listeners: impl Fn(SpaceId) -> u64) -> Vec<EdgeAction> {
        let mut out = Vec::new();
        self.feeds.retain(|space, f| {
            if listeners(*space) > 0 {
                f.last_used = f.last_used.max(now);
            }
            let idle = now.saturating_duration_since(f.last_used) > self.linger;
            if idle {
                out.push(EdgeAction::Unsubscribe {
                    space: *space,
                    ended: false,
                });
            }
            !idle
        });
        out
    }

    /// The space ended: its feed ends with it.
    pub fn ended(&mut self, space: SpaceId) -> Option<EdgeAction> {
        self.feeds
            .remove(&space)
            .map(|_| EdgeAction::Unsubscribe { space, ended: true })
    }

    /// This node became the space's origin: the feed stops (the outputs
    /// stay, now fed by the local mixer). Whether it was an edge.
    pub fn became_origin(&mut self, space: SpaceId) -> bool {
        self.feeds.remove(&space).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subscription_for_many_listeners() {
        let t0 = Instant::now();
        let mut e = Edges::new(Duration::from_secs(30));
        let s = SpaceId(1);
        assert_eq!(e.admitted(s, t0), Some(EdgeAction::Subscribe(s)));
        assert_eq!(e.admitted(s, t0), None);
        assert!(e.is_edge(s));
        assert_eq!(
            e.ended(s),
            Some(EdgeAction::Unsubscribe {
                space: s,
                ended: true
            })
        );
        assert_eq!(e.ended(s), None);
        assert_eq!(e.admitted(s, t0), Some(EdgeAction::Subscribe(s)));
        e.subscribe_failed(s);
        assert!(e.is_empty());
        assert_eq!(e.admitted(s, t0), Some(EdgeAction::Subscribe(s)));
        assert!(e.became_origin(s));
        assert!(!e.became_origin(s));
    }
}
