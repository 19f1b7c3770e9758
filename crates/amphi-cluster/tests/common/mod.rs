//! A small simulation of the cluster's control plane: a key-value bucket
//! with compare-and-set on revisions (as NATS JetStream KV), nodes driving
//! their [`Ownership`] against it, and a clock that only moves when the
//! test says so. No sockets, no sleeps.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use amphi_cluster::{Claim, Lease, LeaseWrite, Ownership, OwnershipEvent, WriteResult};
use amphi_core::SpaceId;

/// Simulated time: milliseconds for the leases' decisions, an `Instant`
/// for the others; both advance together. Each node may read it with its
/// own offset (clocks that disagree on the time but tick at one rate).
pub struct Clock {
    base: Instant,
    pub ms: i64,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
            ms: 1_000_000,
        }
    }

    pub fn advance(&mut self, ms: i64) {
        self.ms += ms;
    }

    pub fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.ms as u64)
    }
}

/// The leases bucket: one value and revision per key, revisions global to
/// the bucket, writes compare-and-set.
#[derive(Default)]
pub struct Kv {
    entries: HashMap<SpaceId, (Lease, u64)>,
    last_revision: u64,
}

impl Kv {
    pub fn read(&self, space: SpaceId) -> Option<(Lease, u64)> {
        self.entries.get(&space).cloned()
    }

    pub fn apply(&mut self, w: &LeaseWrite) -> WriteResult {
        let current = self.entries.get(&w.space).map(|(_, r)| *r);
        if current != w.revision {
            return WriteResult::Conflict;
        }
        self.last_revision += 1;
        self.entries
            .insert(w.space, (w.value.clone(), self.last_revision));
        WriteResult::Written(self.last_revision)
    }
}

/// One node: its ownership state, whether it reaches the bucket, and the
/// events it has acted on.
pub struct Node {
    pub own: Ownership,
    pub reachable: bool,
    pub events: Vec<OwnershipEvent>,
    /// The last program frame this node mixed, reported in its renewals.
    pub seq: u64,
    /// What this node's clock reads more than the shared one.
    pub offset: i64,
    /// Until when (this node's clock) its bus probes were reported.
    probed_to: Option<i64>,
}

impl Node {
    pub fn new(name: &str) -> Self {
        Node {
            own: Ownership::new(name, format!("http://{name}")),
            reachable: true,
            events: Vec::new(),
            seq: 0,
            offset: 0,
            probed_to: None,
        }
    }

    /// A node whose clock reads `offset` ms more than the others'.
    pub fn with_offset(name: &str, offset: i64) -> Self {
        Node {
            offset,
            ..Node::new(name)
        }
    }

    /// This node's clock at shared time `ms`.
    pub fn at(&self, ms: i64) -> i64 {
        ms.saturating_add(self.offset)
    }

    /// The shell's probe loop up to `now` (this node's clock): asked every
    /// `PROBE_MS`, a probe when due, answered at once if the node reaches
    /// the bucket, failed otherwise.
    fn probe_to(&mut self, now: i64) {
        use amphi_cluster::lease::PROBE_MS;
        let mut next = self.probed_to.map_or(now, |t| t + PROBE_MS);
        while next <= now {
            if self.own.probe_due(next) {
                self.own.probed(next, self.reachable, next);
            }
            self.probed_to = Some(next);
            next += PROBE_MS;
        }
    }

    /// This node's watch of the bucket delivers the key of `space`.
    pub fn watch(&mut self, kv: &Kv, space: SpaceId, ms: i64) {
        let now = self.at(ms);
        self.probe_to(now);
        let current = kv.read(space);
        self.own
            .seen(space, current.as_ref().map(|(l, r)| (l, *r)), now);
    }

    fn drain(&mut self) {
        while let Some(e) = self.own.poll_event() {
            self.events.push(e);
        }
    }

    /// What the shell does for a call about `space`: read, claim, write,
    /// up to three rounds. `None`: the bucket did not answer.
    pub fn ensure_owner(&mut self, kv: &mut Kv, space: SpaceId, ms: i64) -> Option<Claim> {
        let now_ms = self.at(ms);
        self.probe_to(now_ms);
        if !self.reachable {
            return None;
        }
        let mut last = None;
        for _ in 0..3 {
            let current = kv.read(space);
            let claim = self
                .own
                .claim(space, current.as_ref().map(|(l, r)| (l, *r)), now_ms);
            let claim = match claim {
                Claim::Write(w) => {
                    let result = kv.apply(&w);
                    self.own
                        .written(w.id, result, now_ms)
                        .expect("a claim's write")
                }
                other => other,
            };
            self.drain();
            if claim != Claim::Retry {
                return Some(claim);
            }
            last = Some(claim);
        }
        last
    }

    /// The renewal tick: every held lease is written again (or fails, if
    /// the node is cut off).
    pub fn renew(&mut self, kv: &mut Kv, ms: i64) {
        let now_ms = self.at(ms);
        self.probe_to(now_ms);
        let seq = self.seq;
        for w in self.own.renewals(now_ms, |_| seq) {
            let result = if self.reachable {
                kv.apply(&w)
            } else {
                WriteResult::Failed
            };
            self.own.written(w.id, result, now_ms);
        }
        self.drain();
    }
}
