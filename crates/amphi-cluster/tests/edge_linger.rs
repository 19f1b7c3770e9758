//! An edge's feed on simulated time: one subscription however many
//! listeners arrive, kept while anyone listens and for the linger after the
//! last one leaves, dropped after it; a listener back within the linger
//! keeps it; the space's end ends it at once.

mod common;

use std::time::Duration;

use amphi_cluster::{EdgeAction, Edges};
use amphi_core::SpaceId;
use common::Clock;

const S: SpaceId = SpaceId(0xed6e);

#[test]
fn an_edge_lingers_then_unsubscribes() {
    let mut clock = Clock::new();
    let mut edges = Edges::new(Duration::from_secs(30));
    let mut listeners = 0u64;

    // A thousand listeners arrive over ten seconds: one subscription.
    let mut subscribes = 0;
    for _ in 0..1000 {
        clock.advance(10);
        if let Some(a) = edges.admitted(S, clock.instant()) {
            assert_eq!(a, EdgeAction::Subscribe(S));
            subscribes += 1;
        }
        listeners += 1;
    }
    assert_eq!(subscribes, 1);
    // Two minutes of listening, ticks every second: the feed stays.
    for _ in 0..120 {
        clock.advance(1000);
        assert!(edges.tick(clock.instant(), |_| listeners).is_empty());
    }
    // Everyone leaves. The feed lingers 30 s, then goes.
    listeners = 0;
    let left = clock.ms;
    let gone_at = loop {
        clock.advance(1000);
        let out = edges.tick(clock.instant(), |_| listeners);
        if !out.is_empty() {
            assert_eq!(
                out,
                vec![EdgeAction::Unsubscribe {
                    space: S,
                    ended: false
                }]
            );
            break clock.ms;
        }
        assert!(clock.ms - left < 60_000, "the feed never went");
    };
    assert_eq!(
        gone_at - left,
        31_000,
        "gone at the first tick past the linger"
    );
    assert!(!edges.is_edge(S));
    // The next listener subscribes again.
    assert_eq!(
        edges.admitted(S, clock.instant()),
        Some(EdgeAction::Subscribe(S))
    );
}

#[test]
fn a_listener_back_within_the_linger_keeps_the_feed() {
    let mut clock = Clock::new();
    let mut edges = Edges::new(Duration::from_secs(30));
    edges.admitted(S, clock.instant());
    for _ in 0..29 {
        clock.advance(1000);
        assert!(edges.tick(clock.instant(), |_| 0).is_empty());
    }
    assert_eq!(edges.admitted(S, clock.instant()), None, "still subscribed");
    for _ in 0..30 {
        clock.advance(1000);
        assert!(edges.tick(clock.instant(), |_| 0).is_empty());
    }
    clock.advance(1000);
    assert_eq!(edges.tick(clock.instant(), |_| 0).len(), 1);
}

#[test]
fn the_end_of_the_space_ends_the_feed_at_once() {
    let clock = Clock::new();
    let mut edges = Edges::new(Duration::from_secs(30));
    edges.admitted(S, clock.instant());
    assert_eq!(
        edges.ended(S),
        Some(EdgeAction::Unsubscribe {
            space: S,
            ended: true
        })
    );
    assert!(edges.tick(clock.instant(), |_| 0).is_empty());
}
