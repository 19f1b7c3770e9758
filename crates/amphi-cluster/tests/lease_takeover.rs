//! Ownership over a simulated key-value bucket and clock: a lease that
//! expires is taken over and the frame numbering continues; an owner that
//! keeps renewing is never taken over, whatever the other nodes' clocks
//! read; and whatever the interleaving of claims, renewals, write results,
//! time and clock offsets, two nodes never both hold a valid lease of the
//! same space.

mod common;

use amphi_cluster::lease::{RENEW_MS, TTL_MS};
use amphi_cluster::{Claim, LeaseWrite, OwnershipEvent, WriteResult};
use amphi_core::SpaceId;
use common::{Clock, Kv, Node};
use proptest::prelude::*;

const S: SpaceId = SpaceId(0x5ace);

#[test]
fn a_lease_expires_and_another_node_takes_over() {
    let mut clock = Clock::new();
    let mut kv = Kv::default();
    let mut a = Node::new("a");
    // B's clock is ten minutes ahead: it changes nothing.
    let mut b = Node::with_offset("b", 600_000);

    assert_eq!(a.ensure_owner(&mut kv, S, clock.ms), Some(Claim::Mine));
    assert_eq!(
        a.events,
        vec![OwnershipEvent::Acquired {
            space: S,
            first_seq: 0,
            from: None
        }]
    );
    // A mixes for 10 s (50 frames a second), renewing.
    for _ in 0..5 {
        clock.advance(RENEW_MS);
        a.seq += 100;
        a.renew(&mut kv, clock.ms);
        b.watch(&kv, S, clock.ms);
    }
    assert_eq!(a.seq, 500);
    let last_renewal = clock.ms;

    // A is cut off: its renewals fail. B is told A owns S until the lease
    // runs out, then takes it over.
    a.reachable = false;
    let mut took_over_at = None;
    for _ in 0..40 {
        clock.advance(250);
        a.renew(&mut kv, clock.ms);
        match b.ensure_owner(&mut kv, S, clock.ms) {
            Some(Claim::Owner(l)) => {
                assert_eq!(l.node, "a");
                assert!(clock.ms - last_renewal < TTL_MS);
                // A counts itself owner until it fences itself, before
                // the lease runs out for B.
                assert_eq!(
                    a.own.owns(S, a.at(clock.ms)),
                    clock.ms - last_renewal < amphi_cluster::lease::FENCE_MS,
                    "A counts itself owner until the fence"
                );
            }
            Some(Claim::Mine) => {
                took_over_at = Some(clock.ms);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let at = took_over_at.expect("B took the space over");
    assert!(
        at - last_renewal >= TTL_MS,
        "taken over before the lease ran out"
    );
    assert!(
        !a.own.owns(S, a.at(at)),
        "A stopped counting itself owner first"
    );
    let down_frames = ((at - last_renewal) / 20) as u64;
    assert_eq!(
        b.events,
        vec![OwnershipEvent::Acquired {
            space: S,
            first_seq: 501 + down_frames,
            from: Some("a".into())
        }],
        "the numbering goes on past A's last frame, by the outage B measured"
    );

    // A comes back: its next renewal loses, and it stops being the owner.
    a.reachable = true;
    clock.advance(RENEW_MS);
    a.renew(&mut kv, clock.ms);
    assert!(!a.own.holds(S));
    assert_eq!(a.events.last(), Some(&OwnershipEvent::Lost { space: S }));
    // Calls on A are now forwarded to B.
    match a.ensure_owner(&mut kv, S, clock.ms) {
        Some(Claim::Owner(l)) => assert_eq!(l.node, "b"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_renewing_owner_is_never_taken_over() {
    let mut clock = Clock::new();
    let mut kv = Kv::default();
    let mut a = Node::new("a");
    // B's clock is five minutes ahead, C's five minutes behind.
    let mut b = Node::with_offset("b", 300_000);
    let mut c = Node::with_offset("c", -300_000);
    assert_eq!(a.ensure_owner(&mut kv, S, clock.ms), Some(Claim::Mine));
    // Ten simulated minutes; B and C ask four times a second.
    let mut since_renewal = 0;
    for _ in 0..2400 {
        clock.advance(250);
        since_renewal += 250;
        if since_renewal >= RENEW_MS {
            since_renewal = 0;
            a.seq += 100;
            a.renew(&mut kv, clock.ms);
        }
        for n in [&mut b, &mut c] {
            match n.ensure_owner(&mut kv, S, clock.ms) {
                Some(Claim::Owner(l)) => assert_eq!(l.node, "a"),
                other => panic!("at {}: {other:?}", clock.ms),
            }
        }
        assert!(a.own.owns(S, clock.ms));
    }
    assert!(b.events.is_empty() && c.events.is_empty());
    assert_eq!(a.events.len(), 1, "acquired once, never lost");
}

#[derive(Debug, Clone)]
enum Op {
    /// Node reads the key and claims the space; its write (if any) is
    /// left in flight.
    Claim(usize),
    /// Node's renewal tick; writes left in flight.
    Renew(usize),
    /// The oldest in-flight write of a node reaches the bucket; `lost`:
    /// it is applied but its answer never arrives (reported as failed).
    Deliver {
        node: usize,
        lost: bool,
    },
    /// A node's in-flight write never reaches the bucket.
    Drop(usize),
    Advance(i64),
    /// A node's watch delivers the key as it is now.
    Watch(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3).prop_map(Op::Claim),
        (0usize..3).prop_map(Op::Renew),
        ((0usize..3), any::<bool>()).prop_map(|(node, lost)| Op::Deliver { node, lost }),
        (0usize..3).prop_map(Op::Drop),
        (0i64..6_000).prop_map(Op::Advance),
        (0usize..3).prop_map(Op::Watch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Never two owners: with writes delayed, reordered, lost and answered
    /// or not, at every moment at most one node holds a lease it counts
    /// valid.
    #[test]
    fn never_two_owners(
        ops in proptest::collection::vec(op(), 1..200),
        offsets in proptest::collection::vec(-1_000_000_000i64..1_000_000_000, 3),
    ) {
        let mut clock = Clock::new();
        let mut kv = Kv::default();
        let mut nodes = [
            Node::with_offset("a", offsets[0]),
            Node::with_offset("b", offsets[1]),
            Node::with_offset("c", offsets[2]),
        ];
        let mut flight: [Vec<LeaseWrite>; 3] = Default::default();
        for op in ops {
            match op {
                Op::Claim(i) => {
                    let current = kv.read(S);
                    let now = nodes[i].at(clock.ms);
                    if let Claim::Write(w) =
                        nodes[i].own.claim(S, current.as_ref().map(|(l, r)| (l, *r)), now)
                    {
                        flight[i].push(w);
                    }
                }
                Op::Renew(i) => {
                    let seq = nodes[i].seq;
                    let now = nodes[i].at(clock.ms);
                    flight[i].extend(nodes[i].own.renewals(now, |_| seq));
                }
                Op::Deliver { node, lost } => {
                    if !flight[node].is_empty() {
                        let w = flight[node].remove(0);
                        let mut result = kv.apply(&w);
                        if lost {
                            result = WriteResult::Failed;
                        }
                        let now = nodes[node].at(clock.ms);
                        nodes[node].own.written(w.id, result, now);
                    }
                }
                Op::Drop(i) => {
                    if !flight[i].is_empty() {
                        let w = flight[i].remove(0);
                        let now = nodes[i].at(clock.ms);
                        nodes[i].own.written(w.id, WriteResult::Failed, now);
                    }
                }
                Op::Advance(ms) => clock.advance(ms),
                Op::Watch(i) => nodes[i].watch(&kv, S, clock.ms),
            }
            for n in &mut nodes {
                n.seq += 1;
                while n.own.poll_event().is_some() {}
            }
            let owners = nodes.iter().filter(|n| n.own.owns(S, n.at(clock.ms))).count();
            prop_assert!(owners <= 1, "{} nodes own the space at {}", owners, clock.ms);
            // An owner's view agrees with the bucket: the key names it.
            for n in &nodes {
                if n.own.owns(S, n.at(clock.ms)) {
                    let (l, _) = kv.read(S).expect("an owned key exists");
                    prop_assert_eq!(l.node.as_str(), n.own.node());
                }
            }
        }
    }
}
