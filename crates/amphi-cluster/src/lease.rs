//! Ownership leases. Exactly one node owns a space at a time: it applies
//! the space's commands, and while the space is live it is the origin
//! (WHIP ingest, mixing, recording). The owner renews its lease every
//! [`RENEW_MS`]; a lease whose key has not changed for [`TTL_MS`] has
//! expired and any node may take it over with a compare-and-set on the
//! key's revision, so two nodes can never both win. The lease also carries
//! the origin's last program sequence number, so a new origin continues the
//! numbering and listeners resume across the change without a sequence
//! going backwards.
//!
//! No clock is compared across nodes. Every renewal is a new revision of
//! the key; each node measures, on its own monotonic clock, how long the
//! revision it reads has been the current one ([`Sightings`]), and a lease
//! has expired when that age reaches [`TTL_MS`]. The owner counts its own
//! lease valid for [`TTL_MS`] from the moment it *sent* the write, which is
//! before any other node can see the new revision, so it always stops
//! acting as the owner before anyone may take over. Clocks need only tick
//! at the same rate, not agree on the time. The `at_ms` a lease carries is
//! the writer's wall clock, for people reading the bucket; no decision
//! reads it.

use std::collections::HashMap;

use amphi_core::SpaceId;
use serde::{Deserialize, Serialize};

/// How often an owner renews its leases.
pub const RENEW_MS: i64 = 1_000;
/// A lease whose key has not changed for this long (as measured by the
/// node reading it) has expired.
pub const TTL_MS: i64 = 3_000;
/// An owner stops acting as the owner (fences itself: no mixing, no
/// recording, no WHIP sessions for the space) once this long has passed
/// since it *sent* the last renewal that was acknowledged, on its own
/// clock. Checked every [`FENCE_CHECK_MS`].
pub const FENCE_MS: i64 = 2_400;
/// How often the shell applies the fencing rule.
pub const FENCE_CHECK_MS: i64 = 100;
/// The least time between an owner fencing itself and the earliest
/// takeover by another node: a taker counts [`TTL_MS`] from when it first
/// *saw* the renewal's revision, which is after the owner sent it; the
/// owner has fenced by [`FENCE_MS`] + [`FENCE_CHECK_MS`] after sending.
/// This margin absorbs the time the fence takes to act (a command to the
/// media thread, sessions closed) and any drift between the two nodes'
/// monotonic clocks over 3 s.
pub const FENCE_MARGIN_MS: i64 = TTL_MS - FENCE_MS - FENCE_CHECK_MS;
const _: () = assert!(FENCE_MARGIN_MS >= 500, "the fencing margin is too thin");
const _: () = assert!(
    FENCE_MS > 2 * RENEW_MS,
    "a single missed renewal must not fence"
);
/// How often every node asks the leader of the leases' stream to answer
/// (a bus probe: only that leader answers, so an answer proves a leader is
/// there and reachable), while its probes succeed.
pub const PROBE_SLOW_MS: i64 = 800;
/// How often it probes for [`TTL_MS`] after a probe failed: the last
/// failure it sees during an outage is then at most [`PROBE_GAP_MS`]
/// before the outage ends.
pub const PROBE_MS: i64 = 100;
/// A probe unanswered for this long has failed.
pub const PROBE_TIMEOUT_MS: i64 = 400;
/// The most time between two probes' sending, probing every [`PROBE_MS`],
/// before the silence itself counts as a failure (a stalled probe loop
/// proves nothing).
pub const PROBE_GAP_MS: i64 = 2 * PROBE_MS;
/// The same probing every [`PROBE_SLOW_MS`].
pub const PROBE_SLOW_GAP_MS: i64 = PROBE_SLOW_MS + 2 * PROBE_MS;
/// A node takes a lease over only while its last successful probe was
/// answered less than this long ago.
pub const PROBE_STALE_MS: i64 = PROBE_SLOW_GAP_MS + PROBE_TIMEOUT_MS;
/// An owner whose renewals are refused because the leases' stream has no
/// leader (while its NATS server reaches the JetStream meta leader: it is
/// on the majority side) keeps its lease valid from such a refused renewal
/// only once the refusals have lasted this long: long enough that every
/// other node has sent a probe meanwhile, seen it fail and probes every
/// [`PROBE_MS`] since.
pub const LEADERLESS_SPAN_MS: i64 = PROBE_SLOW_GAP_MS;
/// The least time between an owner kept valid through a leaderless stream
/// fencing itself and the earliest takeover: the owner's last refused
/// renewal was sent at `w` and it is fenced by `w` + [`FENCE_MS`] +
/// [`FENCE_CHECK_MS`]; every taker had a probe fail that it sent no
/// earlier than `w` - [`PROBE_GAP_MS`], and counts [`TTL_MS`] from that
/// failure.
pub const LEADERLESS_MARGIN_MS: i64 = TTL_MS - PROBE_GAP_MS - FENCE_MS - FENCE_CHECK_MS;
const _: () = assert!(
    LEADERLESS_MARGIN_MS >= 250,
    "the leaderless margin is too thin"
);
const _: () = assert!(
    LEADERLESS_SPAN_MS >= PROBE_SLOW_GAP_MS,
    "a leaderless stream must be seen for longer than the probes' period"
);
const _: () = assert!(
    RENEW_MS + LEADERLESS_SPAN_MS + FENCE_CHECK_MS + 200 <= FENCE_MS,
    "an owner must learn the stream is leaderless before it fences"
);
/// A node stays on another's roster (the nodes that must all vouch for
/// it, [`crate::Ownership::vouch`]) this long after it was last heard
/// from. Long, so that a node cut off from the owner for a while still
/// counts: a node missing from the roster is never asked.
pub const ROSTER_MS: i64 = 60_000;
/// At most this many nodes on a roster.
pub const ROSTER_MAX: usize = 1_024;
/// Duration of one program frame.
const FRAME_MS: i64 = 20;

/// The value of a space's key in the leases bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The owning node's id.
    pub node: String,
    /// Base URL of the owner's HTTP API (WHIP redirects, replays).
    pub http: String,
    /// Last program frame the owner produced (0 before any).
    #[serde(default)]
    pub seq: u64,
    /// The writer's wall clock at the write, ms since the UNIX epoch:
    /// informative only, never compared with another node's clock.
    #[serde(default)]
    pub at_ms: i64,
    /// The space has ended: the lease is kept (it says where the recording
    /// was made) but nobody renews it and nobody needs to own the space.
    #[serde(default)]
    pub ended: bool,
}

/// What a node should do about a space, given the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// This node owns it: act here (and renew at `revision`).
    Mine { revision: u64 },
    /// Another node owns it: forward there.
    Owner(Lease),
    /// Nobody ever owned it: create the key.
    Acquire,
    /// The owner stopped renewing: take over with a compare-and-set at
    /// `revision`, continuing from `previous`, whose key has not changed
    /// for `age_ms`.
    TakeOver {
        revision: u64,
        previous: Lease,
        age_ms: i64,
    },
    /// The space ended; nothing to own.
    Ended(Lease),
}

impl Lease {
    /// The decision for `me` about a lease read at `revision` whose
    /// revision this node has seen unchanged for `age_ms` of its own clock
    /// (`None`: no key).
    pub fn decide(current: Option<(&Lease, u64, i64)>, me: &str) -> LeaseDecision {
        match current {
            None => LeaseDecision::Acquire,
            Some((l, _, _)) if l.ended => LeaseDecision::Ended(l.clone()),
            Some((l, revision, _)) if l.node == me => LeaseDecision::Mine { revision },
            Some((l, _, age_ms)) if age_ms < TTL_MS => LeaseDecision::Owner(l.clone()),
            Some((l, revision, age_ms)) => LeaseDecision::TakeOver {
                revision,
                previous: l.clone(),
                age_ms,
            },
        }
    }

    /// The first sequence number a new origin uses after `self`, whose
    /// key had not changed for `age_ms`: past the last frame, plus the
    /// frames the outage lasted as this node measured it, so playback
    /// clocks derived from the sequence stay close to real time.
    pub fn next_seq(&self, age_ms: i64) -> u64 {
        let down = age_ms.max(0) / FRAME_MS;
        self.seq.saturating_add(1).saturating_add(down as u64)
    }

    /// The JSON value of the key.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a key's value; a malformed one is treated as absent.
    pub fn decode(b: &[u8]) -> Option<Lease> {
        if b.len() > 4096 {
            return None;
        }
        serde_json::from_slice(b).ok()
    }
}

/// When this node first saw each lease key at its current revision, on
/// its own monotonic clock: the age of a lease is measured here, never
/// read from the writer's clock.
#[derive(Debug, Default, Clone)]
pub struct Sightings {
    seen: HashMap<SpaceId, Sighting>,
}

/// One key as last seen.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub revision: u64,
    /// This node's clock when the revision was first seen.
    pub since_ms: i64,
    pub lease: Lease,
}

impl Sightings {
    /// The key of `space` is at `revision` with `lease` (read, watched or
    /// written at `now_ms`); returns how long it has been at that revision.
    /// An older revision than one already seen changes nothing (a late
    /// read) and counts as fresh.
    pub fn see(&mut self, space: SpaceId, revision: u64, lease: &Lease, now_ms: i64) -> i64 {
        match self.seen.get_mut(&space) {
            Some(s) if s.revision == revision => now_ms.saturating_sub(s.since_ms).max(0),
            Some(s) if s.revision > revision => 0,
            _ => {
                self.seen.insert(
                    space,
                    Sighting {
                        revision,
                        since_ms: now_ms,
                        lease: lease.clone(),
                    },
                );
                0
            }
        }
    }

    /// This node's bus access failed at `now_ms` (a probe of the leases'
    /// stream went unanswered, or was answered with no leader): every age
    /// starts again from now, as if each key had just been renewed, since
    /// a renewal may have been refused for the same reason.
    pub fn restart(&mut self, now_ms: i64) {
        for s in self.seen.values_mut() {
            s.since_ms = s.since_ms.max(now_ms);
        }
    }

    /// Every age of a lease naming `node` starts again from `now_ms`.
    pub fn restart_of(&mut self, node: &str, now_ms: i64) {
        for s in self.seen.values_mut().filter(|s| s.lease.node == node) {
            s.since_ms = s.since_ms.max(now_ms);
        }
    }

    /// The key of `space` was deleted or purged.
    pub fn forget(&mut self, space: SpaceId) {
        self.seen.remove(&space);
    }

    /// Spaces whose lease names another node than `me`, is not ended, and
    /// has not changed for [`TTL_MS`] at `now_ms`: their owner is gone.
    pub fn expired<'a>(&'a self, me: &'a str, now_ms: i64) -> impl Iterator<Item = SpaceId> + 'a {
        self.seen
            .iter()
            .filter(move |(_, s)| {
                !s.lease.ended && s.lease.node != me && now_ms.saturating_sub(s.since_ms) >= TTL_MS
            })
            .map(|(id, _)| *id)
    }

    /// Spaces whose lease names `me`, is not ended, and has not changed
    /// for [`TTL_MS`] at `now_ms` (nobody renewed it: not `me` either).
    pub fn expired_of<'a>(
        &'a self,
        me: &'a str,
        now_ms: i64,
    ) -> impl Iterator<Item = SpaceId> + 'a {
        self.seen
            .iter()
            .filter(move |(_, s)| {
                !s.lease.ended && s.lease.node == me && now_ms.saturating_sub(s.since_ms) >= TTL_MS
            })
            .map(|(id, _)| *id)
    }

    /// The lease of `space` as last seen.
    pub fn get(&self, space: SpaceId) -> Option<&Sighting> {
        self.seen.get(&space)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease(node: &str) -> Lease {
        Lease {
            node: node.into(),
            http: format!("http://{node}"),
            seq: 100,
            at_ms: 0,
            ended: false,
        }
    }

    #[test]
    fn decisions() {
        let a = lease("a");
        assert_eq!(Lease::decide(None, "b"), LeaseDecision::Acquire);
        assert_eq!(
            Lease::decide(Some((&a, 3, 50_000)), "a"),
            LeaseDecision::Mine { revision: 3 }
        );
        assert_eq!(
            Lease::decide(Some((&a, 3, TTL_MS - 1)), "b"),
            LeaseDecision::Owner(a.clone())
        );
        assert_eq!(
            Lease::decide(Some((&a, 3, TTL_MS)), "b"),
            LeaseDecision::TakeOver {
                revision: 3,
                previous: a.clone(),
                age_ms: TTL_MS
            }
        );
        let ended = Lease { ended: true, ..a };
        assert_eq!(
            Lease::decide(Some((&ended, 4, 0)), "a"),
            LeaseDecision::Ended(ended.clone())
        );
    }

    #[test]
    fn the_writers_clock_is_never_read() {
        // A lease written by a clock years off is judged the same way.
        for at_ms in [i64::MIN, -300_000, 0, 300_000, i64::MAX] {
            let l = Lease {
                at_ms,
                ..lease("a")
            };
            assert_eq!(
                Lease::decide(Some((&l, 3, 0)), "b"),
                LeaseDecision::Owner(l.clone())
            );
            assert_eq!(l.next_seq(1_000), 101 + 50);
        }
    }

    #[test]
    fn age_is_measured_from_the_first_sighting_of_a_revision() {
        let mut s = Sightings::default();
        let (a, id) = (lease("a"), SpaceId(1));
        assert_eq!(s.see(id, 5, &a, 10_000), 0);
        assert_eq!(s.see(id, 5, &a, 12_000), 2_000);
        assert_eq!(s.expired("b", 10_000 + TTL_MS - 1).count(), 0);
        assert_eq!(s.expired("b", 10_000 + TTL_MS).collect::<Vec<_>>(), [id]);
        assert_eq!(
            s.expired("a", 10_000 + TTL_MS).count(),
            0,
            "not mine to take"
        );
        // A renewal resets the age; a late read of an older one does not.
        assert_eq!(s.see(id, 6, &a, 13_000), 0);
        assert_eq!(s.see(id, 5, &a, 14_000), 0);
        assert_eq!(s.see(id, 6, &a, 14_000), 1_000);
        let ended = Lease { ended: true, ..a };
        s.see(id, 7, &ended, 15_000);
        assert_eq!(
            s.expired("b", 1_000_000).count(),
            0,
            "ended: nobody takes it"
        );
    }

    #[test]
    fn a_new_origin_continues_the_numbering() {
        let a = lease("a");
        assert_eq!(a.next_seq(0), 101);
        assert_eq!(a.next_seq(10_000), 101 + 500);
        assert_eq!(a.next_seq(-5), 101);
        let end = Lease { seq: u64::MAX, ..a };
        assert_eq!(end.next_seq(i64::MAX), u64::MAX);
    }

    #[test]
    fn malformed_values_are_absent() {
        assert_eq!(Lease::decode(b"not json"), None);
        assert_eq!(Lease::decode(&vec![b' '; 5000]), None);
        let a = lease("a");
        assert_eq!(Lease::decode(&a.encode()), Some(a));
        // Leases written before `at_ms` was informative still parse.
        assert!(Lease::decode(br#"{"node":"a","http":"h"}"#).is_some());
    }

    proptest! {
        /// Whatever the ages each node measured, at most one node sees
        /// itself as the owner of a lease, and a lease is taken over only
        /// once its age reached the TTL.
        #[test]
        fn one_owner_at_a_time(
            owner in 0usize..3,
            ages in proptest::collection::vec(0i64..200_000, 3),
        ) {
            let nodes = ["a", "b", "c"];
            let l = lease(nodes[owner]);
            let mut mine = 0;
            for (i, n) in nodes.iter().enumerate() {
                match Lease::decide(Some((&l, 1, ages[i])), n) {
                    LeaseDecision::Mine { .. } => mine += 1,
                    LeaseDecision::Owner(_) => prop_assert!(ages[i] < TTL_MS),
                    LeaseDecision::TakeOver { age_ms, .. } => prop_assert!(age_ms >= TTL_MS),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert_eq!(mine, 1);
        }
    }
}
