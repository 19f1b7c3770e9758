#![no_main]
//! The cluster's control messages: count reports (`amphi.counts`), lease
//! values read from the `amphi_leases` bucket and history requests, then
//! the lease rules every node applies to what it read.
//! Properties: the whole input is fed to each decoder; a decoded report or
//! lease re-encodes to JSON that decodes to the same value, and a history
//! request decodes exactly from 8 bytes, which it re-encodes to. The same
//! bytes, read with `arbitrary`, give a lease (or none), its revision and
//! reads of it by several nodes, each with the age it measured for the
//! key's revision on its own clock (`i64` extremes included); for those and
//! for any lease decoded above: at most one node name sees `Mine`, only the
//! lease's own node and never for an ended lease; `Owner` only for a lease
//! younger than the TTL and not its own; `TakeOver` only for one at least
//! that old, carrying that age; the writer's `at_ms` never changes a
//! decision; revisions are passed through; `next_seq` is past `seq` plus
//! the frames of the measured outage (saturating), never below `seq`,
//! never decreasing with the age.
use std::collections::BTreeSet;

use amphi_cluster::lease::TTL_MS;
use amphi_cluster::{
    CountsReport, Lease, LeaseDecision, decode_history_request, encode_history_request,
};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Lease values bigger than this are refused by `Lease::decode`.
const MAX_LEASE: usize = 4096;
/// Duration of one program frame, in ms.
const FRAME_MS: i128 = 20;

/// A node name: a few fixed ones so that readers and owner meet often.
#[derive(Debug, Arbitrary)]
enum Who {
    Named(u8),
    Other(String),
    /// The lease's own node.
    Owner,
}

/// A clock reading or an age, with the edges a plain `i64` rarely hits.
#[derive(Debug, Arbitrary)]
enum When {
    At(i64),
    Min,
    Max,
    Zero,
    /// Around the TTL.
    NearExpiry(i8),
}

#[derive(Debug, Arbitrary)]
struct Read {
    who: Who,
    when: When,
}

/// A `u64` with its edges.
#[derive(Debug, Arbitrary)]
enum Seq {
    Any(u64),
    Max,
    Zero,
}

#[derive(Debug, Arbitrary)]
struct Scenario {
    /// No key in the bucket.
    absent: bool,
    node: Who,
    http: String,
    seq: Seq,
    at_ms: When,
    ended: bool,
    revision: u64,
    reads: Vec<Read>,
}

const NAMES: [&str; 4] = ["a", "b", "node-1", ""];

fn name(w: &Who, owner: &str) -> String {
    match w {
        Who::Named(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
        Who::Other(s) => s.clone(),
        Who::Owner => owner.to_owned(),
    }
}

fn clock(w: &When) -> i64 {
    match w {
        When::At(t) => *t,
        When::Min => i64::MIN,
        When::Max => i64::MAX,
        When::Zero => 0,
        When::NearExpiry(d) => TTL_MS.saturating_add(i64::from(*d)),
    }
}

/// `next_seq` as documented: past the last frame, plus one frame per 20 ms
/// of the measured age (none for a negative one), the sum saturating.
fn expected_next_seq(l: &Lease, age: i64) -> u64 {
    let down = i128::from(age.max(0)) / FRAME_MS;
    u64::try_from(i128::from(l.seq) + 1 + down).unwrap_or(u64::MAX)
}

/// Checks every decision and the lease's arithmetic at each read (a node
/// and the age it measured).
fn check_reads(lease: Option<&Lease>, revision: u64, reads: &[(String, i64)]) {
    let mut mine = BTreeSet::new();
    for (me, age) in reads {
        let age = *age;
        let d = Lease::decide(lease.map(|l| (l, revision, age)), me);
        let Some(l) = lease else {
            assert_eq!(d, LeaseDecision::Acquire, "no key must be acquired");
            continue;
        };
        match &d {
            LeaseDecision::Acquire => panic!("Acquire for an existing key: {l:?}"),
            LeaseDecision::Ended(e) => assert!(l.ended && e == l, "{d:?} for {l:?}"),
            LeaseDecision::Mine { revision: r } => {
                assert!(
                    !l.ended && &l.node == me && *r == revision,
                    "{d:?} for {me:?}, {l:?}"
                );
                mine.insert(me.clone());
            }
            LeaseDecision::Owner(o) => {
                assert!(
                    o == l && !l.ended && &l.node != me,
                    "{d:?} for {me:?}, {l:?}"
                );
                assert!(age < TTL_MS, "Owner of a lease {age} ms old: {o:?}");
            }
            LeaseDecision::TakeOver {
                revision: r,
                previous,
                age_ms,
            } => {
                assert!(previous == l && !l.ended && &l.node != me && *r == revision);
                assert!(
                    age >= TTL_MS && *age_ms == age,
                    "TakeOver of a lease {age} ms old: {l:?}"
                );
            }
        }
        // The writer's clock is never read: any `at_ms` decides the same.
        for at_ms in [i64::MIN, 0, i64::MAX] {
            let other = Lease { at_ms, ..l.clone() };
            let d2 = Lease::decide(Some((&other, revision, age)), me);
            let same = match (&d, &d2) {
                (LeaseDecision::Owner(_), LeaseDecision::Owner(_))
                | (LeaseDecision::Ended(_), LeaseDecision::Ended(_))
                | (LeaseDecision::TakeOver { .. }, LeaseDecision::TakeOver { .. }) => true,
                (a, b) => a == b,
            };
            assert!(same, "at_ms changed the decision: {d:?} vs {d2:?}");
        }

        let next = l.next_seq(age);
        assert!(
            next >= l.seq,
            "next_seq {next} below seq for {l:?} at age {age}"
        );
        assert!(next > l.seq || l.seq == u64::MAX);
        assert_eq!(
            next,
            expected_next_seq(l, age),
            "next_seq of {l:?} at age {age}"
        );
    }
    assert!(mine.len() <= 1, "several nodes see Mine: {mine:?}");
    if let (Some(l), Some(m)) = (lease, mine.first()) {
        assert_eq!(&l.node, m);
    }
    // Monotone in the age: an older sighting never gives a smaller
    // next_seq, nor an Owner where a younger one gave TakeOver.
    if let Some(l) = lease {
        let mut ages: Vec<i64> = reads.iter().map(|(_, t)| *t).collect();
        ages.extend([i64::MIN, -1, 0, TTL_MS - 1, TTL_MS, i64::MAX]);
        ages.sort_unstable();
        let taken = |age| {
            matches!(
                Lease::decide(Some((l, revision, age)), "\u{1}reader"),
                LeaseDecision::TakeOver { .. }
            )
        };
        for w in ages.windows(2) {
            assert!(l.next_seq(w[0]) <= l.next_seq(w[1]));
            assert!(!taken(w[0]) || taken(w[1]));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = CountsReport::decode(data) {
        let again = r.encode();
        assert!(!again.is_empty());
        assert_eq!(CountsReport::decode(&again).as_ref(), Some(&r));
        assert_eq!(r.encode(), again);
    }

    let decoded = Lease::decode(data);
    if let Some(l) = &decoded {
        assert!(data.len() <= MAX_LEASE);
        let again = l.encode();
        // Re-encoding may grow the value (defaulted fields are written), past
        // the limit only if the input was near it.
        if again.len() <= MAX_LEASE {
            assert_eq!(Lease::decode(&again).as_ref(), Some(l));
        }
        let ages = [i64::MIN, -1, 0, TTL_MS - 1, TTL_MS, i64::MAX];
        let reads: Vec<(String, i64)> = NAMES
            .iter()
            .map(|n| n.to_string())
            .chain([l.node.clone()])
            .flat_map(|n| ages.map(|t| (n.clone(), t)))
            .collect();
        check_reads(Some(l), u64::MAX, &reads);
    }

    match decode_history_request(data) {
        Ok(from) => {
            assert_eq!(data.len(), 8);
            assert_eq!(&encode_history_request(from)[..], data);
        }
        Err(_) => assert_ne!(data.len(), 8),
    }

    let Ok(s) = Scenario::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let node = name(&s.node, "");
    let at_ms = clock(&s.at_ms);
    let lease = Lease {
        node: node.clone(),
        http: s.http,
        seq: match s.seq {
            Seq::Any(n) => n,
            Seq::Max => u64::MAX,
            Seq::Zero => 0,
        },
        at_ms,
        ended: s.ended,
    };
    let encoded = lease.encode();
    if encoded.len() <= MAX_LEASE {
        assert_eq!(Lease::decode(&encoded).as_ref(), Some(&lease));
    }
    let reads: Vec<(String, i64)> = s
        .reads
        .iter()
        .map(|r| (name(&r.who, &node), clock(&r.when)))
        .collect();
    check_reads((!s.absent).then_some(&lease), s.revision, &reads);
});
