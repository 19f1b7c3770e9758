//! A space's analytics, aggregated in memory and flushed to the store
//! every [`FLUSH_MS`]: a join or a listener writes nothing and costs no
//! other listener anything. Listeners are sampled (the node's count plus
//! the other nodes' reports) about once a second, so listening time is an
//! integral of those samples; the series keeps one point per
//! [`POINT_MS`] (the count at the last sample of the slot). Unique
//! participants are estimated with a HyperLogLog of 2^11 one-byte
//! registers (2 KB, standard error about 2.3 %; exact-ish below a few
//! hundred by linear counting).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::timefmt::rfc3339;

/// One point of the listeners series per this many ms.
pub const POINT_MS: i64 = 10_000;
/// How often changed analytics are written.
pub const FLUSH_MS: i64 = 10_000;
/// Points kept (one week at one per 10 s); later samples are not charted.
pub const MAX_POINTS: usize = 60_480;
/// A gap between samples longer than this (a restart, a stall) is not
/// counted as listening time.
const MAX_GAP_MS: i64 = 5_000;
/// Distinct reaction kinds counted (the rest are summed as "other").
const MAX_KINDS: usize = 32;
const HLL_BITS: u32 = 11;
const HLL_M: usize = 1 << HLL_BITS;

/// The analytics of one space.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpaceStats {
    pub peak: u64,
    pub peak_at_ms: Option<i64>,
    pub joins: u64,
    /// HyperLogLog registers, base64.
    unique: String,
    pub listening_ms: u64,
    pub series_start_ms: Option<i64>,
    pub series: Vec<u32>,
    pub reactions: BTreeMap<String, u64>,
    pub replay_plays: u64,
    /// Plays of the space's clips (their audio or HLS from the start).
    #[serde(default)]
    pub clip_plays: u64,
    /// Joins answered on the other nodes of a cluster, as each last said
    /// (cumulative per node; `joins` is this node's own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote_joins: BTreeMap<String, u64>,
    /// The other nodes' unique-participant registers, merged (base64).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    remote_unique: String,
    #[serde(skip)]
    remote_registers: Option<Vec<u8>>,
    /// Replay plays served by the other nodes, as each last said.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote_plays: BTreeMap<String, u64>,
    /// This node's plays last told to the others.
    #[serde(skip)]
    plays_told: u64,
    #[serde(skip)]
    last_sample_ms: Option<i64>,
    #[serde(skip)]
    registers: Option<Vec<u8>>,
    /// Changed since the last flush.
    #[serde(skip)]
    pub dirty: bool,
}

impl SpaceStats {
    /// Parses stored analytics; `None` if corrupt.
    pub fn from_json(s: &str) -> Option<SpaceStats> {
        let mut st: SpaceStats = serde_json::from_str(s).ok()?;
        st.registers = B64.decode(&st.unique).ok().filter(|r| r.len() == HLL_M);
        st.remote_registers = B64
            .decode(&st.remote_unique)
            .ok()
            .filter(|r| r.len() == HLL_M);
        Some(st)
    }

    /// The stored form.
    pub fn encode(&mut self) -> String {
        if let Some(r) = &self.registers {
            self.unique = B64.encode(r);
        }
        if let Some(r) = &self.remote_registers {
            self.remote_unique = B64.encode(r);
        }
        // Plain data: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Someone joined as `pid`.
    pub fn join(&mut self, pid: u64) {
        self.joins += 1;
        let h = Sha256::digest(pid.to_be_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        let x = u64::from_be_bytes(b);
        let idx = (x >> (64 - HLL_BITS)) as usize;
        let rank = ((x << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
        let r = self.registers.get_or_insert_with(|| vec![0; HLL_M]);
        if rank > r[idx] {
            r[idx] = rank;
        }
        self.dirty = true;
    }

    /// This node's registers (base64), for the other nodes.
    pub fn registers(&self) -> Option<String> {
        self.registers.as_ref().map(|r| B64.encode(r))
    }

    /// Merges other nodes' registers (each a [`SpaceStats::registers`]):
    /// the estimate becomes that of the union of the joins.
    pub fn merge_unique(&mut self, others: &[String]) {
        for o in others {
            let Some(theirs) = B64.decode(o).ok().filter(|r| r.len() == HLL_M) else {
                continue;
            };
            let mine = self.remote_registers.get_or_insert_with(|| vec![0; HLL_M]);
            for (m, t) in mine.iter_mut().zip(&theirs) {
                if *t > *m {
                    *m = *t;
                    self.dirty = true;
                }
            }
        }
    }

    /// Distinct participants who joined (estimate), on every node whose
    /// registers were merged.
    pub fn unique(&self) -> u64 {
        let merged: Vec<u8>;
        let r = match (&self.registers, &self.remote_registers) {
            (Some(a), Some(b)) => {
                merged = a.iter().zip(b).map(|(x, y)| *x.max(y)).collect();
                &merged
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return 0,
        };
        let m = HLL_M as f64;
        let sum: f64 = r.iter().map(|&v| 2f64.powi(-i32::from(v))).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let zeros = r.iter().filter(|&&v| v == 0).count();
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }

    /// `listeners` now (a live space), at `now_ms`.
    pub fn sample(&mut self, listeners: u64, now_ms: i64) {
        if let Some(last) = self.last_sample_ms {
            let dt = now_ms - last;
            if dt > 0 && dt <= MAX_GAP_MS {
                self.listening_ms += listeners * dt as u64;
            }
        }
        self.last_sample_ms = Some(now_ms);
        if listeners > self.peak || self.peak_at_ms.is_none() {
            self.peak = self.peak.max(listeners);
            self.peak_at_ms = Some(now_ms);
        }
        let start = *self.series_start_ms.get_or_insert(now_ms);
        let slot = ((now_ms - start).max(0) / POINT_MS) as usize;
        if slot < MAX_POINTS {
            let v = u32::try_from(listeners).unwrap_or(u32::MAX);
            // Slots with no sample (a restart) carry the count on.
            let fill = self.series.last().copied().unwrap_or(v);
            while self.series.len() < slot {
                self.series.push(fill);
            }
            if self.series.len() == slot {
                self.series.push(v);
            } else {
                self.series[slot] = v;
            }
        }
        self.dirty = true;
    }

    /// Reactions summed since the last call.
    pub fn react<'a>(&mut self, counts: impl IntoIterator<Item = (&'a str, u64)>) {
        for (kind, n) in counts {
            let key = if self.reactions.contains_key(kind) || self.reactions.len() < MAX_KINDS {
                kind
            } else {
                "other"
            };
            *self.reactions.entry(key.to_owned()).or_insert(0) += n;
            self.dirty = true;
        }
    }

    /// The other nodes' cumulative joins (a count only grows; at most 64
    /// nodes are kept).
    pub fn remote_joins(&mut self, per_node: Vec<(String, u64)>) {
        for (node, n) in per_node {
            if self.remote_joins.len() >= 64 && !self.remote_joins.contains_key(&node) {
                continue;
            }
            let e = self.remote_joins.entry(node).or_insert(0);
            if n > *e {
                *e = n;
                self.dirty = true;
            }
        }
    }

    /// The other nodes' cumulative replay plays (at most 64 nodes).
    pub fn remote_plays(&mut self, per_node: Vec<(String, u64)>) {
        for (node, n) in per_node {
            if self.remote_plays.len() >= 64 && !self.remote_plays.contains_key(&node) {
                continue;
            }
            let e = self.remote_plays.entry(node).or_insert(0);
            if n > *e {
                *e = n;
                self.dirty = true;
            }
        }
    }

    /// Whether this node's plays changed since the last call (to be told
    /// to the others).
    pub fn plays_untold(&mut self) -> bool {
        let changed = self.replay_plays != self.plays_told;
        self.plays_told = self.replay_plays;
        changed
    }

    /// Joins across the cluster.
    pub fn all_joins(&self) -> u64 {
        // Saturating: the other nodes' counts come from the bus.
        (self.remote_joins.values()).fold(self.joins, |a, n| a.saturating_add(*n))
    }

    /// The replay started playing once more.
    pub fn replay_play(&mut self) {
        self.replay_plays += 1;
        self.dirty = true;
    }

    /// One of the space's clips started playing.
    pub fn clip_play(&mut self) {
        self.clip_plays += 1;
        self.dirty = true;
    }

    /// The API's view.
    pub fn view(&self) -> Value {
        json!({
            "peak_listeners": self.peak,
            "peak_at": self.peak_at_ms.and_then(rfc3339),
            "joins": self.all_joins(),
            "unique_participants": self.unique(),
            "listening_seconds": self.listening_ms / 1000,
            "listeners_over_time": {
                "start": self.series_start_ms.and_then(rfc3339),
                "interval_s": POINT_MS / 1000,
                "points": self.series,
            },
            "reactions": self.reactions,
            "replay_plays": self
                .remote_plays
                .values()
                .fold(self.replay_plays, |a, n| a.saturating_add(*n)),
            "clip_plays": self.clip_plays,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_gives_its_peak_integral_and_series() {
        let mut s = SpaceStats::default();
        // 0 → 100 listeners over 100 s, then 100 for 100 s, sampled each s.
        for t in 0..=200i64 {
            s.sample(t.min(100) as u64, 1_000_000 + t * 1000);
        }
        assert_eq!(s.peak, 100);
        assert_eq!(s.peak_at_ms, Some(1_000_000 + 100_000));
        // ∫ = 100·100/2 + 100·100 = 15,000 listener-seconds (±1 %).
        let secs = s.listening_ms / 1000;
        assert!((14_850..=15_150).contains(&secs), "{secs}");
        assert_eq!(s.series.len(), 21);
        assert_eq!(s.series[5], 59);
        assert_eq!(s.series[20], 100);
        // A gap (a restart) is not listening time, and the series carries on.
        let before = s.listening_ms;
        s.sample(100, 1_000_000 + 260_000);
        assert_eq!(s.listening_ms, before);
        assert_eq!(s.series.len(), 27);
        let again = SpaceStats::from_json(&s.encode()).unwrap();
        assert_eq!(again.series, s.series);
        assert_eq!(again.peak, 100);
    }

    #[test]
    fn unique_participants_are_estimated_within_a_few_percent() {
        let mut s = SpaceStats::default();
        for pid in 0..20u64 {
            s.join(pid * 7919);
            s.join(pid * 7919);
        }
        assert_eq!(s.joins, 40);
        s.remote_joins(vec![("b".into(), 5), ("c".into(), 7)]);
        s.remote_joins(vec![("b".into(), 3)]);
        assert_eq!(s.all_joins(), 52, "a node's count only grows");
        assert_eq!(s.unique(), 20);
        for pid in 0..50_000u64 {
            s.join(pid.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        let u = s.unique() as f64;
        assert!((u - 50_000.0).abs() / 50_000.0 < 0.07, "{u}");
        let again = SpaceStats::from_json(&s.encode()).unwrap();
        assert_eq!(again.unique(), s.unique());
        // Another node's 30,000, 10,000 of them also joined here: the
        // union is 70,000.
        let mut other = SpaceStats::default();
        for pid in 40_000..70_000u64 {
            other.join(pid.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        s.merge_unique(&[other.registers().unwrap()]);
        let u = s.unique() as f64;
        assert!((u - 70_000.0).abs() / 70_000.0 < 0.07, "{u}");
        let again = SpaceStats::from_json(&s.encode()).unwrap();
        assert_eq!(again.unique(), s.unique());
    }

    #[test]
    fn reactions_by_kind_are_bounded() {
        let mut s = SpaceStats::default();
        s.react([("👏", 3), ("🔥", 1)]);
        s.react([("👏", 2)]);
        assert_eq!(s.reactions.get("👏"), Some(&5));
        let kinds: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        s.react(kinds.iter().map(|k| (k.as_str(), 1)));
        assert!(s.reactions.len() <= MAX_KINDS + 1);
        assert_eq!(s.reactions.values().sum::<u64>(), 106);
    }
}
