//! Ownership leases. Exactly one node owns a space at a time: it applies
//! the space's commands, and while the space is live it is the origin
//! (WHIP ingest, mixing, recording). The owner renews its lease every
//! [`RENEW_MS`]; a lease not renewed for [`TTL_MS`] has expired and any node
//! may take it over with a compare-and-set on the key's revision, so two
//! nodes can never both win. The lease also carries the origin's last
//! program sequence number, so a new origin continues the numbering and
//! listeners resume across the change without a sequence going backwards.
//!
//! Validity is judged on wall-clock time written by the owner: nodes need
//! clocks within a second or so of each other (NTP).

use serde::{Deserialize, Serialize};

/// How often an owner renews its leases.
pub const RENEW_MS: i64 = 2_000;
/// A lease not renewed for this long has expired.
pub const TTL_MS: i64 = 8_000;
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
    /// When the owner last renewed, ms since the UNIX epoch.
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
    /// `revision`, continuing from `previous`.
    TakeOver { revision: u64, previous: Lease },
    /// The space ended; nothing to own.
    Ended(Lease),
}

impl Lease {
    /// Whether the lease still holds at `now_ms`.
    pub fn is_valid(&self, now_ms: i64) -> bool {
        !self.ended && now_ms.saturating_sub(self.at_ms) < TTL_MS
    }

    /// The decision for `me` about a lease read at `revision` (`None`: no
    /// key).
    pub fn decide(current: Option<(&Lease, u64)>, me: &str, now_ms: i64) -> LeaseDecision {
        match current {
            None => LeaseDecision::Acquire,
            Some((l, _)) if l.ended => LeaseDecision::Ended(l.clone()),
            Some((l, revision)) if l.node == me => LeaseDecision::Mine { revision },
            Some((l, _)) if l.is_valid(now_ms) => LeaseDecision::Owner(l.clone()),
            Some((l, revision)) => LeaseDecision::TakeOver {
                revision,
                previous: l.clone(),
            },
        }
    }

    /// The first sequence number a new origin uses after `self`: past the
    /// last frame, plus the frames the outage lasted, so playback clocks
    /// derived from the sequence stay on wall time.
    pub fn next_seq(&self, now_ms: i64) -> u64 {
        let down = now_ms.saturating_sub(self.at_ms).max(0) / FRAME_MS;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease(node: &str, at_ms: i64) -> Lease {
        Lease {
            node: node.into(),
            http: format!("http://{node}"),
            seq: 100,
            at_ms,
            ended: false,
        }
    }

    #[test]
    fn decisions() {
        let a = lease("a", 1_000);
        assert_eq!(Lease::decide(None, "b", 0), LeaseDecision::Acquire);
        assert_eq!(
            Lease::decide(Some((&a, 3)), "a", 50_000),
            LeaseDecision::Mine { revision: 3 }
        );
        assert_eq!(
            Lease::decide(Some((&a, 3)), "b", 1_000 + TTL_MS - 1),
            LeaseDecision::Owner(a.clone())
        );
        assert_eq!(
            Lease::decide(Some((&a, 3)), "b", 1_000 + TTL_MS),
            LeaseDecision::TakeOver {
                revision: 3,
                previous: a.clone()
            }
        );
        let ended = Lease { ended: true, ..a };
        assert_eq!(
            Lease::decide(Some((&ended, 4)), "a", 0),
            LeaseDecision::Ended(ended.clone())
        );
    }

    #[test]
    fn a_new_origin_continues_the_numbering_on_wall_time() {
        let a = lease("a", 10_000);
        assert_eq!(a.next_seq(10_000), 101);
        assert_eq!(a.next_seq(20_000), 101 + 500);
        // A clock behind the old owner's never goes backwards.
        assert_eq!(a.next_seq(0), 101);
        let end = Lease { seq: u64::MAX, ..a };
        assert_eq!(end.next_seq(i64::MAX), u64::MAX);
    }

    #[test]
    fn malformed_values_are_absent() {
        assert_eq!(Lease::decode(b"not json"), None);
        assert_eq!(Lease::decode(&vec![b' '; 5000]), None);
        let a = lease("a", 5);
        assert_eq!(Lease::decode(&a.encode()), Some(a));
    }

    proptest! {
        /// However the reads and clocks interleave, at most one node sees
        /// itself as the valid owner of a lease, and an expired lease is
        /// never `Owner` for anyone.
        #[test]
        fn one_owner_at_a_time(
            owner in 0usize..3,
            at_ms in 0i64..100_000,
            now in proptest::collection::vec(0i64..200_000, 3),
        ) {
            let nodes = ["a", "b", "c"];
            let l = lease(nodes[owner], at_ms);
            let mut mine = 0;
            for (i, n) in nodes.iter().enumerate() {
                match Lease::decide(Some((&l, 1)), n, now[i]) {
                    LeaseDecision::Mine { .. } => mine += 1,
                    LeaseDecision::Owner(o) => prop_assert!(o.is_valid(now[i])),
                    LeaseDecision::TakeOver { previous, .. } => {
                        prop_assert!(!previous.is_valid(now[i]));
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert_eq!(mine, 1);
        }
    }
}
