//! Who is present (holds an events connection) on the other nodes, merged
//! and bounded, and the invitations to the stage shared between nodes.
//!
//! Each node publishes on [`PRESENCE_SUBJECT`] a [`PresenceMsg::Batch`]
//! every 500 ms with the changes of its spaces' presence since the last
//! one (arrivals with their name, departures, and its total), and a full
//! batch (the newest [`PRESENCE_CAP`] per space and the totals) every few
//! seconds, which heals anything a lost delta left wrong. Every node keeps
//! the others' in a [`Presence`]: per other node and space at most
//! [`PRESENCE_CAP`] entries and a count, so its memory does not grow with
//! the audience beyond the cap. A node silent for [`PRESENCE_FRESH`] is
//! forgotten.
//!
//! The arrival order is each node's `seq`, a wall-clock time in
//! microseconds made unique per node, so the views of several nodes merge
//! by time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use serde::{Deserialize, Serialize};

/// The subject every node's presence batches and invitations go to.
pub const PRESENCE_SUBJECT: &str = "amphi.presence";
/// Entries kept (and sent) per node and space: the newest arrivals.
pub const PRESENCE_CAP: usize = 500;
/// A node not heard from for this long no longer counts.
pub const PRESENCE_FRESH: Duration = Duration::from_secs(12);
/// Messages bigger than this are refused.
pub const MAX_PRESENCE_MSG: usize = 8 << 20;
/// Spaces kept per other node.
const MAX_SPACES_PER_NODE: usize = 20_000;
/// Longest name kept.
const MAX_NAME: usize = 200;

/// One arrival: `pid` present under `name` since `seq` (µs, unique per
/// node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub pid: ParticipantId,
    pub name: String,
    pub seq: u64,
}

/// One space's line in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpacePresence {
    pub space: SpaceId,
    /// Participants present on the node now.
    pub total: u64,
    /// Arrivals (newest at most [`PRESENCE_CAP`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrived: Vec<Arrival>,
    /// Departures since the previous batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<ParticipantId>,
    /// Joins answered on the node since it started counting (cumulative).
    #[serde(default)]
    pub joins: u64,
    /// The node's estimate of its unique participants (opaque registers,
    /// in full batches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<String>,
    /// Replay plays served by the node (cumulative).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub plays: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What nodes tell each other about presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceMsg {
    /// Changes since the previous batch; `full`: the whole (bounded)
    /// presence of the node, replacing what was known of it.
    Batch {
        node: String,
        full: bool,
        spaces: Vec<SpacePresence>,
    },
    /// The space's owner invited `pid` to the stage.
    Invite {
        node: String,
        space: SpaceId,
        pid: ParticipantId,
        by: ParticipantId,
        by_name: String,
        expires_ms: i64,
    },
    /// `pid`'s invitation was answered (or withdrawn).
    Answered {
        node: String,
        space: SpaceId,
        pid: ParticipantId,
    },
}

impl PresenceMsg {
    /// The JSON of the message.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a message; `None` for anything malformed or oversized.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() > MAX_PRESENCE_MSG {
            return None;
        }
        serde_json::from_slice(b).ok()
    }

    /// The sending node.
    pub fn node(&self) -> &str {
        match self {
            PresenceMsg::Batch { node, .. }
            | PresenceMsg::Invite { node, .. }
            | PresenceMsg::Answered { node, .. } => node,
        }
    }
}

/// One entry of a merged view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub pid: ParticipantId,
    pub name: String,
    pub seq: u64,
}

#[derive(Debug, Default)]
struct SpaceView {
    total: u64,
    joins: u64,
    plays: u64,
    unique: Option<String>,
    by_seq: BTreeMap<(u64, ParticipantId), String>,
    by_pid: HashMap<ParticipantId, u64>,
}

impl SpaceView {
    fn remove(&mut self, pid: ParticipantId) {
        if let Some(seq) = self.by_pid.remove(&pid) {
            self.by_seq.remove(&(seq, pid));
        }
    }

    fn apply(&mut self, s: SpacePresence) {
        self.total = s.total;
        self.joins = self.joins.max(s.joins);
        self.plays = self.plays.max(s.plays);
        if s.unique.as_ref().is_some_and(|u| u.len() <= 8192) {
            self.unique = s.unique;
        }
        for pid in s.left {
            self.remove(pid);
        }
        for a in s.arrived.into_iter().take(PRESENCE_CAP) {
            self.remove(a.pid);
            let mut name = a.name;
            if name.len() > MAX_NAME {
                let mut end = MAX_NAME;
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                name.truncate(end);
            }
            self.by_pid.insert(a.pid, a.seq);
            self.by_seq.insert((a.seq, a.pid), name);
        }
        while self.by_seq.len() > PRESENCE_CAP {
            if let Some(((_, pid), _)) = self.by_seq.pop_first() {
                self.by_pid.remove(&pid);
            }
        }
    }
}

#[derive(Debug)]
struct NodeView {
    heard: Instant,
    spaces: HashMap<SpaceId, SpaceView>,
}

/// The other nodes' presence, as this node knows it.
#[derive(Debug)]
pub struct Presence {
    me: String,
    nodes: HashMap<String, NodeView>,
}

impl Presence {
    /// The presence as seen by node `me`.
    pub fn new(me: impl Into<String>) -> Self {
        Presence {
            me: me.into(),
            nodes: HashMap::new(),
        }
    }

    /// Takes another node's batch (this node's own are ignored).
    pub fn take(&mut self, node: &str, full: bool, spaces: Vec<SpacePresence>, now: Instant) {
        if node == self.me {
            return;
        }
        let view = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeView {
                heard: now,
                spaces: HashMap::new(),
            });
        view.heard = now;
        if full {
            // Joins and plays are cumulative: kept across a full batch.
            let kept: Vec<(SpaceId, u64, u64, Option<String>)> = view
                .spaces
                .iter_mut()
                .filter(|(_, v)| v.joins > 0 || v.plays > 0)
                .map(|(k, v)| (*k, v.joins, v.plays, v.unique.take()))
                .collect();
            view.spaces.clear();
            for (space, joins, plays, unique) in kept {
                let v = view.spaces.entry(space).or_default();
                v.joins = joins;
                v.plays = plays;
                v.unique = unique;
            }
        }
        for s in spaces {
            if !view.spaces.contains_key(&s.space) && view.spaces.len() >= MAX_SPACES_PER_NODE {
                continue;
            }
            view.spaces.entry(s.space).or_default().apply(s);
        }
    }

    /// Forgets the nodes not heard from since `now - PRESENCE_FRESH`.
    pub fn expire(&mut self, now: Instant) {
        self.nodes
            .retain(|_, v| now.saturating_duration_since(v.heard) < PRESENCE_FRESH);
    }

    fn spaces(&self, space: SpaceId) -> impl Iterator<Item = &SpaceView> {
        self.nodes
            .values()
            .filter_map(move |n| n.spaces.get(&space))
    }

    /// Participants present in `space` on the other nodes.
    pub fn total(&self, space: SpaceId) -> u64 {
        // Saturating: the counts come from other nodes' messages.
        self.spaces(space)
            .fold(0u64, |sum, s| sum.saturating_add(s.total))
    }

    /// Joins answered for `space` on the other nodes (as they last said).
    pub fn joins(&self, space: SpaceId) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .filter_map(|(n, v)| v.spaces.get(&space).map(|s| (n.clone(), s.joins)))
            .filter(|(_, j)| *j > 0)
            .collect()
    }

    /// Replay plays of `space` the other nodes served (as they last said).
    pub fn plays(&self, space: SpaceId) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .filter_map(|(n, v)| v.spaces.get(&space).map(|s| (n.clone(), s.plays)))
            .filter(|(_, p)| *p > 0)
            .collect()
    }

    /// The other nodes' unique-participant registers of `space`.
    pub fn uniques(&self, space: SpaceId) -> Vec<String> {
        self.spaces(space)
            .filter_map(|s| s.unique.clone())
            .collect()
    }

    /// The newest `cap` arrivals in `space` on the other nodes, newest
    /// first.
    pub fn newest(&self, space: SpaceId, cap: usize) -> Vec<Present> {
        let mut all: Vec<Present> = self
            .spaces(space)
            .flat_map(|s| {
                s.by_seq
                    .iter()
                    .rev()
                    .take(cap)
                    .map(|((seq, pid), name)| Present {
                        pid: *pid,
                        name: name.clone(),
                        seq: *seq,
                    })
            })
            .collect();
        all.sort_unstable_by_key(|p| std::cmp::Reverse((p.seq, p.pid)));
        all.truncate(cap);
        all
    }

    /// The name `pid` is present under on another node, if it is among
    /// the entries kept.
    pub fn name(&self, space: SpaceId, pid: ParticipantId) -> Option<String> {
        self.spaces(space).find_map(|s| {
            let seq = s.by_pid.get(&pid)?;
            s.by_seq.get(&(*seq, pid)).cloned()
        })
    }

    /// Entries kept in all (bounded by nodes × spaces × [`PRESENCE_CAP`]).
    pub fn entries(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|n| n.spaces.values())
            .map(|s| s.by_seq.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(n: u64, seq: u64) -> Arrival {
        Arrival {
            pid: ParticipantId(n),
            name: format!("n{n}"),
            seq,
        }
    }

    #[test]
    fn batches_merge_bounded_and_heal_with_a_full_one() {
        let t0 = Instant::now();
        let sp = SpaceId(9);
        let mut p = Presence::new("a");
        // Node b: 2,000 arrivals in four batches; only the newest 500 kept.
        for batch in 0..4u64 {
            let arrived = (batch * 500..(batch + 1) * 500)
                .map(|i| arrival(i, 1_000 + i))
                .collect();
            let s = SpacePresence {
                space: sp,
                total: (batch + 1) * 500,
                arrived,
                left: vec![],
                joins: (batch + 1) * 500,
                unique: None,
                plays: 0,
            };
            p.take("b", false, vec![s], t0);
        }
        assert_eq!(p.total(sp), 2000);
        assert_eq!(p.entries(), PRESENCE_CAP);
        assert_eq!(p.newest(sp, 1)[0].pid, ParticipantId(1999));
        assert_eq!(p.name(sp, ParticipantId(1999)).as_deref(), Some("n1999"));
        assert_eq!(p.name(sp, ParticipantId(3)), None, "older than the cap");
        // Node c: a few, interleaved by time with b's.
        p.take(
            "c",
            false,
            vec![SpacePresence {
                space: sp,
                total: 2,
                arrived: vec![arrival(50_000, 5_000), arrival(50_001, 10)],
                left: vec![],
                joins: 2,
                unique: None,
                plays: 0,
            }],
            t0,
        );
        assert_eq!(p.total(sp), 2002);
        let newest = p.newest(sp, 3);
        assert_eq!(newest[0].pid, ParticipantId(50_000));
        assert_eq!(newest[1].pid, ParticipantId(1999));
        // A departure, then a rejoin (new seq) in one batch.
        p.take(
            "b",
            false,
            vec![SpacePresence {
                space: sp,
                total: 1999,
                arrived: vec![arrival(1998, 6_000)],
                left: vec![ParticipantId(1999), ParticipantId(1998)],
                joins: 2001,
                unique: None,
                plays: 0,
            }],
            t0,
        );
        assert_eq!(p.newest(sp, 1)[0].pid, ParticipantId(1998));
        assert_eq!(p.name(sp, ParticipantId(1999)), None);
        let mut joins = p.joins(sp);
        joins.sort();
        assert_eq!(joins, vec![("b".into(), 2001), ("c".into(), 2)]);
        // A full batch replaces what was known of the node.
        p.take(
            "b",
            true,
            vec![SpacePresence {
                space: sp,
                total: 1,
                arrived: vec![arrival(7, 9_000)],
                left: vec![],
                joins: 0,
                unique: None,
                plays: 0,
            }],
            t0,
        );
        assert_eq!(p.total(sp), 3);
        assert_eq!(p.name(sp, ParticipantId(1998)), None);
        assert_eq!(p.joins(sp).iter().map(|j| j.1).sum::<u64>(), 2003);
        // Own batches are ignored; silent nodes are forgotten.
        p.take("a", true, vec![], t0);
        p.expire(t0 + PRESENCE_FRESH);
        assert_eq!(p.total(sp), 0);
        assert_eq!(p.entries(), 0);
    }

    #[test]
    fn messages_roundtrip_and_refuse_garbage() {
        let m = PresenceMsg::Invite {
            node: "a".into(),
            space: SpaceId(1),
            pid: ParticipantId(2),
            by: ParticipantId(3),
            by_name: "Host".into(),
            expires_ms: 60_000,
        };
        assert_eq!(PresenceMsg::decode(&m.encode()), Some(m));
        let b = PresenceMsg::Batch {
            node: "b".into(),
            full: true,
            spaces: vec![SpacePresence {
                space: SpaceId(1),
                total: 1,
                arrived: vec![arrival(1, 1)],
                left: vec![ParticipantId(4)],
                joins: 3,
                unique: Some("regs".into()),
                plays: 4,
            }],
        };
        assert_eq!(PresenceMsg::decode(&b.encode()), Some(b));
        assert_eq!(PresenceMsg::decode(b"{\"kind\":\"batch\"}"), None);
        assert_eq!(PresenceMsg::decode(b"\xff"), None);
    }
}
