//! Per-speaker jitter buffer, ordered by RTP sequence number.
//!
//! Packets are held until `depth` of them are queued, then released one per
//! pull in sequence order; a hole becomes [`Pop::Missing`] (the mixer
//! conceals it). Late and duplicate packets are dropped, and the buffer is
//! bounded: a flood or a huge sequence jump resets it instead of growing.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Packets held at most; more means the sender is far ahead: reset.
pub const CAPACITY: usize = 32;
/// Consecutive misses after which the speaker is taken to have paused.
const IDLE_AFTER: u32 = 10;

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pop {
    /// The next packet in order.
    Packet(Bytes),
    /// The next packet is missing but later ones are here (or just were).
    Missing,
    /// Nothing buffered: not started, or the speaker paused.
    Idle,
}

/// Counters of one buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub late: u64,
    pub duplicate: u64,
    pub missing: u64,
    pub resets: u64,
}

/// A jitter buffer for one RTP stream.
#[derive(Debug)]
pub struct Jitter {
    depth: usize,
    packets: BTreeMap<u64, Bytes>,
    /// Extended (wrap-free) sequence of the next packet to release.
    next: Option<u64>,
    /// Highest extended sequence seen, to unwrap 16-bit numbers.
    highest: Option<u64>,
    playing: bool,
    misses: u32,
    stats: JitterStats,
}

impl Jitter {
    /// A buffer that starts releasing once `depth` packets are queued.
    pub fn new(depth: usize) -> Self {
        Jitter {
            depth: depth.clamp(1, CAPACITY / 2),
            packets: BTreeMap::new(),
            next: None,
            highest: None,
            playing: false,
            misses: 0,
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    fn extend(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            return u64::from(seq) + (1 << 16);
        };
        let base = h & !0xffff;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        candidates
            .iter()
            .map(|b| b + u64::from(seq))
            .min_by_key(|c| c.abs_diff(h))
            .unwrap_or(h)
    }

    /// Adds a received packet.
    pub fn push(&mut self, seq: u16, payload: Bytes) {
        self.stats.received += 1;
        let ext = self.extend(seq);
        if let Some(h) = self.highest
            && ext.abs_diff(h) > 1000
        {
            self.reset();
        }
        let ext = self.extend(seq);
        if self.next.is_some_and(|n| ext < n) {
            self.stats.late += 1;
            return;
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicate += 1;
            return;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.packets.insert(ext, payload);
        if self.packets.len() > CAPACITY {
            // Far more than the target depth: drop the oldest to catch up.
            while self.packets.len() > self.depth {
                self.packets.pop_first();
            }
            self.next = self.packets.keys().next().copied();
        }
    }

    /// Takes the next packet (once per 20 ms tick).
    pub fn pop(&mut self) -> Pop {
        if !self.playing {
            if self.packets.len() < self.depth {
                return Pop::Idle;
            }
            self.playing = true;
            self.next = self.packets.keys().next().copied();
        }
        let Some(next) = self.next else {
            return Pop::Idle;
        };
        if let Some(p) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            self.misses = 0;
            return Pop::Packet(p);
        }
        self.misses += 1;
        if self.packets.is_empty() && self.misses >= IDLE_AFTER {
            // The speaker paused (or left): start over at the next packet.
            self.playing = false;
            self.next = None;
            self.misses = 0;
            return Pop::Idle;
        }
        self.stats.missing += 1;
        self.next = Some(next + 1);
        Pop::Missing
    }

    /// Drops everything buffered (muted, removed).
    pub fn reset(&mut self) {
        self.packets.clear();
        self.next = None;
        self.highest = None;
        self.playing = false;
        self.misses = 0;
        self.stats.resets += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn reorders_and_reports_loss() {
        let mut j = Jitter::new(2);
        j.push(11, b(11));
        assert_eq!(j.pop(), Pop::Idle);
        j.push(10, b(10));
        j.push(13, b(13));
        assert_eq!(j.pop(), Pop::Packet(b(10)));
        assert_eq!(j.pop(), Pop::Packet(b(11)));
        assert_eq!(j.pop(), Pop::Missing);
        assert_eq!(j.pop(), Pop::Packet(b(13)));
        j.push(11, b(11));
        assert_eq!(j.stats().late, 1);
    }

    #[test]
    fn wraps_around_sequence_numbers() {
        let mut j = Jitter::new(1);
        for s in [65534u16, 65535, 0, 1] {
            j.push(s, b(s as u8));
        }
        let got: Vec<Pop> = (0..4).map(|_| j.pop()).collect();
        assert_eq!(
            got,
            vec![
                Pop::Packet(b(254)),
                Pop::Packet(b(255)),
                Pop::Packet(b(0)),
                Pop::Packet(b(1))
            ]
        );
    }

    proptest! {
        #[test]
        fn stays_bounded_and_never_panics(ops in proptest::collection::vec((any::<u16>(), any::<bool>()), 0..500)) {
            let mut j = Jitter::new(2);
            for (seq, pull) in ops {
                if pull { let _ = j.pop(); } else { j.push(seq, b(0)); }
                prop_assert!(j.packets.len() <= CAPACITY);
            }
        }
    }
}
