//! A node cut off from NATS, on simulated time: it keeps serving what it
//! mixes itself, and stops serving its copies of other nodes' spaces once
//! it has been cut off for 5 s, until NATS answers again.

mod common;

use amphi_cluster::{Partition, STALE_AFTER};
use common::Clock;

#[test]
fn a_partitioned_node_stops_serving_stale_spaces_after_5s() {
    let mut clock = Clock::new();
    let mut p = Partition::new();
    assert!(p.is_connected());
    assert!(p.may_serve(false, clock.instant()));

    p.disconnected(clock.instant());
    let cut = clock.ms;
    // Reports of the same outage keep its first moment.
    clock.advance(1000);
    p.disconnected(clock.instant());
    let mut stale_at = None;
    for _ in 0..100 {
        clock.advance(100);
        assert!(
            p.may_serve(true, clock.instant()),
            "what it mixes stays served"
        );
        if !p.may_serve(false, clock.instant()) && stale_at.is_none() {
            stale_at = Some(clock.ms);
        }
    }
    let after = stale_at.expect("went stale") - cut;
    assert_eq!(
        after,
        STALE_AFTER.as_millis() as i64 + 100,
        "stale just past 5 s"
    );

    p.connected();
    assert!(
        p.may_serve(false, clock.instant()),
        "served again once back"
    );
    // A short blip never makes it stale.
    p.disconnected(clock.instant());
    clock.advance(4_900);
    assert!(p.may_serve(false, clock.instant()));
    p.connected();
    clock.advance(10_000);
    assert!(p.may_serve(false, clock.instant()));
}
