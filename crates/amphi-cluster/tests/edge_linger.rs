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

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Admit,
        Leave,
        Tick,
        Advance(u64),
        End,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Admit),
            Just(Op::Leave),
            Just(Op::Tick),
            (0u64..20_000).prop_map(Op::Advance),
            Just(Op::End),
        ]
    }

    proptest! {
        /// Whatever listeners do: subscriptions and unsubscriptions
        /// alternate, a feed with listeners is never dropped for idling,
        /// and one is dropped only after a full linger with none.
        #[test]
        fn subscriptions_alternate_and_listened_feeds_stay(
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let linger = Duration::from_secs(5);
            let mut clock = Clock::new();
            let mut edges = Edges::new(linger);
            let mut subscribed = false;
            let mut listeners = 0u64;
            let mut last_listened = clock.ms;
            for op in ops {
                match op {
                    Op::Admit => {
                        listeners += 1;
                        last_listened = clock.ms;
                        match edges.admitted(S, clock.instant()) {
                            Some(EdgeAction::Subscribe(_)) => {
                                prop_assert!(!subscribed);
                                subscribed = true;
                            }
                            None => prop_assert!(subscribed),
                            other => prop_assert!(false, "{:?}", other),
                        }
                    }
                    Op::Leave => listeners = listeners.saturating_sub(1),
                    Op::Tick => {
                        let n = listeners;
                        if n > 0 {
                            last_listened = clock.ms;
                        }
                        for a in edges.tick(clock.instant(), |_| n) {
                            prop_assert_eq!(a, EdgeAction::Unsubscribe { space: S, ended: false });
                            prop_assert!(subscribed);
                            prop_assert_eq!(n, 0, "dropped a feed with listeners");
                            prop_assert!(
                                clock.ms - last_listened > linger.as_millis() as i64,
                                "dropped before the linger ran out"
                            );
                            subscribed = false;
                        }
                    }
                    Op::Advance(ms) => clock.advance(ms as i64),
                    Op::End => {
                        let a = edges.ended(S);
                        prop_assert_eq!(a.is_some(), subscribed);
                        subscribed = false;
                        listeners = 0;
                    }
                }
                prop_assert_eq!(edges.is_edge(S), subscribed);
            }
        }
    }
}
