#![no_main]
//! Presence messages on the cluster bus (`amphi.presence`), as every node
//! decodes what the others send, then merges the batches into its bounded
//! view of the cluster's audience.
//! Properties: a message that decodes re-encodes to JSON that decodes to
//! the same message; whatever batches arrive (the input's message, then
//! the same bytes read with `arbitrary` as batches from a few nodes), the
//! merged view keeps at most `PRESENCE_CAP` entries per other node and
//! space, never lists this node's own batches, answers `newest` with at
//! most the cap asked for, newest first, and `total` is the sum of the
//! last totals the other nodes reported.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use amphi_cluster::presence::{Arrival, PRESENCE_CAP, Presence, PresenceMsg, SpacePresence};
use amphi_core::{ParticipantId, SpaceId};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

const ME: &str = "me";

#[derive(Debug, Arbitrary)]
struct AnyBatch {
    node: u8,
    full: bool,
    spaces: Vec<(u8, u16, Vec<(u16, u64)>, Vec<u16>)>,
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut view = Presence::new(ME);
    let mut totals: BTreeMap<(String, SpaceId), u64> = BTreeMap::new();
    let mut take = |view: &mut Presence, node: String, full: bool, spaces: Vec<SpacePresence>| {
        if node != ME {
            if full {
                totals.retain(|(n, _), _| *n != node);
            }
            for s in &spaces {
                totals.insert((node.clone(), s.space), s.total);
            }
        }
        view.take(&node, full, spaces, now);
    };
    if let Some(msg) = PresenceMsg::decode(data) {
        let again = PresenceMsg::decode(&msg.encode()).expect("a decoded message re-encodes");
        assert_eq!(again, msg);
        if let PresenceMsg::Batch { node, full, spaces } = msg {
            // Decoded input may repeat a space in one batch; the totals
            // model keeps the last, as a node would send only one.
            let mut seen = std::collections::BTreeSet::new();
            if spaces.iter().all(|s| seen.insert(s.space)) {
                take(&mut view, node, full, spaces);
            } else {
                view.take(&node, full, spaces, now);
                return;
            }
        }
    }
    let mut u = Unstructured::new(data);
    let batches: Vec<AnyBatch> = Vec::arbitrary(&mut u).unwrap_or_default();
    for b in batches.into_iter().take(64) {
        let node = if b.node % 4 == 0 { ME.to_owned() } else { format!("n{}", b.node % 4) };
        let mut seen = std::collections::BTreeSet::new();
        let spaces: Vec<SpacePresence> = b
            .spaces
            .into_iter()
            .take(8)
            .filter(|(space, ..)| seen.insert(*space % 4))
            .map(|(space, total, arrived, left)| SpacePresence {
                space: SpaceId(u64::from(space % 4)),
                total: u64::from(total),
                arrived: arrived
                    .into_iter()
                    .take(2 * PRESENCE_CAP)
                    .map(|(pid, seq)| Arrival {
                        pid: ParticipantId(u64::from(pid)),
                        name: format!("p{pid}"),
                        seq,
                    })
                    .collect(),
                left: left.into_iter().map(|p| ParticipantId(u64::from(p))).collect(),
                joins: 0,
                unique: None,
                plays: 0,
            })
            .collect();
        take(&mut view, node, b.full, spaces);
    }
    for space in (0..4).map(SpaceId) {
        let newest = view.newest(space, PRESENCE_CAP);
        assert!(newest.len() <= PRESENCE_CAP);
        let want: u64 = totals.iter().filter(|((_, s), _)| *s == space).map(|(_, t)| *t).sum();
        assert_eq!(view.total(space), want, "space {space:?}");
    }
    assert!(view.entries() <= 3 * 4 * PRESENCE_CAP, "{} entries", view.entries());
    view.expire(now + Duration::from_secs(60));
    assert_eq!(view.entries(), 0, "silent nodes are forgotten");
});
