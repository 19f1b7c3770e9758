//! Per-speaker jitter buffer, ordered by RTP sequence number.
//!
//! Packets are held until the target depth is queued, then released one per
//! pull in sequence order; a hole becomes [`Pop::Missing`] (the mixer
//! conceals it). Late and duplicate packets are dropped and counted, and the
//! buffer is bounded: a flood or a huge sequence jump resets it instead of
//! growing.
//!
//! The depth adapts, driven only by the pulls (no clock): a packet that
//! arrives after its slot was concealed means the network jitters more than
//! the buffer absorbs, so the target grows by one frame (one concealed frame
//! is inserted to make room). After [`ADAPT_WINDOW`] pulls without a late
//! packet the target shrinks by one frame, and if the queue never dropped
//! below the target during that window one packet is skipped to take the
//! latency back.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Sequence distance beyond which a packet is taken as a new stream (the
/// sender restarted, or a forged number): the buffer resets.
const MAX_JUMP: u64 = 1000;
/// Consecutive misses on an empty queue after which the speaker is taken to
/// have paused: the buffer prefills again at the next packet.
const IDLE_AFTER: u32 = 10;
/// Pulls over which the depth is reconsidered (5 s of 20 ms packets).
pub const ADAPT_WINDOW: u32 = 250;

/// Settings of a jitter buffer; depths are in 20 ms frames so they mean the
/// same latency whatever packet duration the speaker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Depth the buffer starts with (2 = 40 ms).
    pub target_frames: usize,
    /// Smallest depth adaptation may reach.
    pub min_frames: usize,
    /// Largest depth adaptation may reach.
    pub max_frames: usize,
    /// Packets held at most; more means the sender is far ahead: the
    /// buffer drops the oldest down to the target.
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            target_frames: 2,
            min_frames: 1,
            max_frames: 8,
            capacity: 16,
        }
    }
}

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pop {
    /// The next packet in order.
    Packet(Bytes),
    /// No packet to play for this slot: it was lost (later ones are here or
    /// just were), or the buffer is deepening. The caller conceals it.
    Missing,
    /// Nothing to play: not started, prefilling, or the speaker paused.
    Empty,
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for playout.
    Queued,
    /// Its slot was already concealed: dropped (and the depth grows).
    Late,
    /// Already queued or already played: dropped.
    Duplicate,
    /// Far from the stream so far: the buffer was reset and restarts with
    /// this packet.
    Reset,
    /// The queue was over capacity: the oldest packets were dropped.
    Overflow,
}

/// Counters of one buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets dropped because their slot had already been concealed.
    pub late: u64,
    /// Packets dropped as duplicates.
    pub duplicate: u64,
    /// Slots concealed because their packet had not arrived.
    pub missing: u64,
    /// Resets (huge sequence jumps, mutes).
    pub resets: u64,
    /// Packets dropped on overflow or to shrink the depth.
    pub dropped: u64,
    /// Concealed frames inserted to deepen the buffer.
    pub stretched: u64,
}

/// A jitter buffer for one RTP stream.
#[derive(Debug)]
pub struct Jitter {
    cfg: JitterConfig,
    target_frames: usize,
    /// Samples per packet, learnt from RTP timestamps (960 until known).
    packet_samples: u32,
    packets: BTreeMap<u64, (u32, Bytes)>,
    /// Extended (wrap-free) sequence of the next packet to release.
    next: Option<u64>,
    /// Highest extended sequence seen (to unwrap 16-bit numbers), with its
    /// RTP timestamp.
    highest: Option<(u64, u32)>,
    /// Bit `i` set: slot `next - 1 - i` was concealed (tells late from
    /// duplicate).
    concealed: u64,
    playing: bool,
    misses: u32,
    /// Frames still to insert to reach a grown target.
    stretch: usize,
    window_pops: u32,
    window_late: bool,
    window_min_queue: usize,
    stats: JitterStats,
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new(JitterConfig::default())
    }
}

impl Jitter {
    /// An empty buffer.
    pub fn new(cfg: JitterConfig) -> Self {
        let capacity = cfg.capacity.max(2);
        let max_frames = cfg.max_frames.clamp(1, capacity - 1);
        let min_frames = cfg.min_frames.clamp(1, max_frames);
        let cfg = JitterConfig {
            target_frames: cfg.target_frames.clamp(min_frames, max_frames),
            min_frames,
            max_frames,
            capacity,
        };
        Jitter {
            target_frames: cfg.target_frames,
            cfg,
            packet_samples: 960,
            packets: BTreeMap::new(),
            next: None,
            highest: None,
            concealed: 0,
            playing: false,
            misses: 0,
            stretch: 0,
            window_pops: 0,
            window_late: false,
            window_min_queue: usize::MAX,
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Current target depth in 20 ms frames.
    pub fn target_frames(&self) -> usize {
        self.target_frames
    }

    /// Packets queued now.
    pub fn queued(&self) -> usize {
        self.packets.len()
    }

    /// The target depth in packets of the duration the speaker sends.
    fn target_packets(&self) -> usize {
        let samples = self.target_frames * 960;
        samples.div_ceil(self.packet_samples as usize).max(1)
    }

    fn extend(&self, seq: u16) -> u64 {
        let Some((h, _)) = self.highest else {
            return u64::from(seq) + (1 << 16);
        };
        let base = h & !0xffff;
        [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
            .iter()
            .map(|b| b.wrapping_add(u64::from(seq)))
            .min_by_key(|c| c.abs_diff(h))
            .unwrap_or(h)
    }

    /// Adds a received packet with its RTP sequence number and timestamp.
    pub fn push(&mut self, seq: u16, ts: u32, payload: Bytes) -> Pushed {
        self.stats.received += 1;
        let mut outcome = Pushed::Queued;
        if let Some((h, _)) = self.highest
            && self.extend(seq).abs_diff(h) > MAX_JUMP
        {
            self.reset();
            outcome = Pushed::Reset;
        }
        let ext = self.extend(seq);
        if let Some(next) = self.next
            && ext < next
        {
            let back = next - 1 - ext;
            if back < 64 && self.concealed & (1 << back) != 0 {
                self.concealed &= !(1 << back);
                self.stats.late += 1;
                self.window_late = true;
                if self.target_frames < self.cfg.max_frames {
                    self.target_frames += 1;
                    self.stretch += 1;
                }
                return Pushed::Late;
            }
            self.stats.duplicate += 1;
            return Pushed::Duplicate;
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicate += 1;
            return Pushed::Duplicate;
        }
        match self.highest {
            Some((h, hts)) if ext > h => {
                // Learn the packet duration from consecutive timestamps;
                // ignore anything Opus could not carry (a DTX gap, a bad
                // sender).
                let per = ts.wrapping_sub(hts) / (ext - h) as u32;
                if ext - h <= 4 && (120..=5760).contains(&per) && per.is_multiple_of(120) {
                    self.packet_samples = per;
                }
                self.highest = Some((ext, ts));
            }
            Some(_) => {}
            None => self.highest = Some((ext, ts)),
        }
        self.packets.insert(ext, (ts, payload));
        if self.packets.len() > self.cfg.capacity {
            let keep = self.target_packets();
            while self.packets.len() > keep {
                self.packets.pop_first();
                self.stats.dropped += 1;
            }
            if self.playing {
                self.next = self.packets.keys().next().copied();
                self.concealed = 0;
            }
            outcome = Pushed::Overflow;
        }
        outcome
    }

    /// Takes the next packet (once per packet duration, normally every
    /// 20 ms tick).
    pub fn pop(&mut self) -> Pop {
        if !self.playing {
            if self.packets.len() < self.target_packets() {
                return Pop::Empty;
            }
            self.playing = true;
            self.next = self.packets.keys().next().copied();
            self.stretch = 0;
            self.reset_window();
        }
        let Some(next) = self.next else {
            return Pop::Empty;
        };
        if self.stretch > 0 {
            self.stretch -= 1;
            self.stats.stretched += 1;
            return Pop::Missing;
        }
        self.next = Some(next + 1);
        self.concealed <<= 1;
        let popped = self.packets.remove(&next);
        if popped.is_none() {
            self.misses += 1;
            if self.packets.is_empty() && self.misses >= IDLE_AFTER {
                // The speaker paused (or left): start over at the next packet.
                self.playing = false;
                self.next = None;
                self.misses = 0;
                self.concealed = 0;
                return Pop::Empty;
            }
            self.concealed |= 1;
            self.stats.missing += 1;
        } else {
            self.misses = 0;
        }
        self.adapt();
        match popped {
            Some((_, p)) => Pop::Packet(p),
            None => Pop::Missing,
        }
    }

    fn reset_window(&mut self) {
        self.window_pops = 0;
        self.window_late = false;
        self.window_min_queue = usize::MAX;
    }

    /// Shrinks the depth after a calm window (see the module docs).
    fn adapt(&mut self) {
        self.window_pops += 1;
        self.window_min_queue = self.window_min_queue.min(self.packets.len());
        if self.window_pops < ADAPT_WINDOW {
            return;
        }
        if !self.window_late {
            if self.target_frames > self.cfg.min_frames {
                self.target_frames -= 1;
            }
            if self.window_min_queue >= self.target_packets()
                && let Some(next) = self.next
                && self.packets.remove(&next).is_some()
            {
                self.next = Some(next + 1);
                self.concealed <<= 1;
                self.stats.dropped += 1;
            }
        }
        self.reset_window();
    }

    /// Drops everything buffered (muted, removed, new stream).
    pub fn reset(&mut self) {
        self.packets.clear();
        self.next = None;
        self.highest = None;
        self.playing = false;
        self.misses = 0;
        self.concealed = 0;
        self.stretch = 0;
        self.target_frames = self.cfg.target_frames;
        self.reset_window();
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

    fn push(j: &mut Jitter, seq: u16) -> Pushed {
        j.push(seq, u32::from(seq).wrapping_mul(960), b(seq as u8))
    }

    #[test]
    fn reorders_and_reports_loss() {
        let mut j = Jitter::default();
        push(&mut j, 11);
        assert_eq!(j.pop(), Pop::Empty, "prefilling to two frames");
        push(&mut j, 10);
        push(&mut j, 13);
        assert_eq!(j.pop(), Pop::Packet(b(10)));
        assert_eq!(j.pop(), Pop::Packet(b(11)));
        assert_eq!(j.pop(), Pop::Missing);
        assert_eq!(j.pop(), Pop::Packet(b(13)));
        assert_eq!(j.stats().missing, 1);
    }

    #[test]
    fn late_and_duplicate_packets_are_dropped_and_counted() {
        let mut j = Jitter::default();
        for s in [1, 2, 4] {
            push(&mut j, s);
        }
        assert_eq!(j.pop(), Pop::Packet(b(1)));
        assert_eq!(push(&mut j, 2), Pushed::Duplicate, "still queued");
        assert_eq!(j.pop(), Pop::Packet(b(2)));
        assert_eq!(push(&mut j, 2), Pushed::Duplicate, "already played");
        assert_eq!(j.pop(), Pop::Missing);
        assert_eq!(push(&mut j, 3), Pushed::Late, "its slot was concealed");
        assert_eq!(push(&mut j, 3), Pushed::Duplicate);
        let st = j.stats();
        assert_eq!((st.late, st.duplicate, st.received), (1, 3, 7));
    }

    #[test]
    fn wraps_around_sequence_numbers() {
        let mut j = Jitter::new(JitterConfig {
            target_frames: 1,
            ..JitterConfig::default()
        });
        for s in [65534u16, 65535, 0, 1] {
            push(&mut j, s);
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

    #[test]
    fn a_huge_jump_restarts_the_stream() {
        let mut j = Jitter::default();
        for s in 100..104 {
            push(&mut j, s);
        }
        assert_eq!(j.pop(), Pop::Packet(b(100)));
        assert_eq!(push(&mut j, 30_000), Pushed::Reset);
        assert_eq!(j.queued(), 1);
        assert_eq!(j.pop(), Pop::Empty, "prefilling the new stream");
        push(&mut j, 30_001);
        assert_eq!(j.pop(), Pop::Packet(b(30_000u16 as u8)));
        assert_eq!(j.stats().resets, 1);
    }

    #[test]
    fn a_pause_returns_to_empty_and_prefills_again() {
        let mut j = Jitter::default();
        push(&mut j, 1);
        push(&mut j, 2);
        assert!(matches!(j.pop(), Pop::Packet(_)));
        assert!(matches!(j.pop(), Pop::Packet(_)));
        let misses = (0..IDLE_AFTER).filter(|_| j.pop() == Pop::Missing).count();
        assert_eq!(misses as u32, IDLE_AFTER - 1);
        assert_eq!(j.pop(), Pop::Empty);
        push(&mut j, 50);
        assert_eq!(j.pop(), Pop::Empty);
    }

    #[test]
    fn learns_long_packets_from_timestamps() {
        // 40 ms packets: a 2-frame target is one packet.
        let mut j = Jitter::default();
        j.push(1, 0, b(1));
        j.push(2, 1920, b(2));
        assert_eq!(j.target_packets(), 1);
        assert_eq!(j.pop(), Pop::Packet(b(1)));
    }

    /// Packet `s` is sent at tick `s` and arrives `delay(s)` ticks later;
    /// each tick pushes what arrived, then pulls once.
    fn simulate(j: &mut Jitter, ticks: std::ops::Range<u32>, delay: impl Fn(u32) -> u32) {
        let mut in_flight: Vec<(u32, u32)> = Vec::new();
        for t in ticks {
            in_flight.push((t + delay(t), t));
            in_flight.retain(|&(at, s)| {
                if at <= t {
                    j.push(s as u16, s.wrapping_mul(960), b(s as u8));
                }
                at > t
            });
            let _ = j.pop();
        }
    }

    #[test]
    fn depth_grows_on_late_packets_and_shrinks_when_calm() {
        let mut j = Jitter::default();
        // Every tenth packet is 60 ms late: more than the 40 ms depth.
        simulate(&mut j, 0..200, |s| if s % 10 == 5 { 3 } else { 0 });
        let st = j.stats();
        assert!(st.late >= 1 && st.stretched >= 1, "{st:?}");
        let grown = j.target_frames();
        assert!(grown > 2, "depth {grown}");
        assert!(st.late <= 3, "adaptation stops the late packets: {st:?}");
        // Then a steady network: the depth and the latency come back down.
        simulate(&mut j, 200..1200, |_| 0);
        let calm = j.stats();
        assert_eq!((calm.late, calm.missing), (st.late, st.missing));
        assert!(j.target_frames() < grown, "depth {}", j.target_frames());
        assert!(calm.dropped >= 1, "{calm:?}");
        assert!(j.queued() <= 1, "latency kept: {} queued", j.queued());
    }

    proptest! {
        #[test]
        fn stays_bounded_and_never_panics(ops in proptest::collection::vec((any::<u16>(), any::<u32>(), any::<bool>()), 0..500)) {
            let mut j = Jitter::default();
            for (seq, ts, pull) in ops {
                if pull { let _ = j.pop(); } else { j.push(seq, ts, b(0)); }
                prop_assert!(j.packets.len() <= j.cfg.capacity);
                prop_assert!(j.target_frames() <= j.cfg.max_frames);
            }
        }

        #[test]
        fn in_order_after_any_shuffle_within_the_depth(n in 3usize..200, swaps in proptest::collection::vec(0usize..200, 0..50), start in any::<u16>()) {
            // Packets reordered by at most one position, pulled once each
            // after a push: everything plays in order, nothing missing.
            let mut order: Vec<u16> = (0..n as u16).map(|i| start.wrapping_add(i)).collect();
            for s in swaps {
                let i = s % (n - 1);
                if i % 2 == 0 { order.swap(i, i + 1); }
            }
            let mut j = Jitter::default();
            let mut played = Vec::new();
            for s in &order {
                j.push(*s, 0, Bytes::copy_from_slice(&s.to_be_bytes()));
                if let Pop::Packet(p) = j.pop() { played.push(u16::from_be_bytes([p[0], p[1]])); }
            }
            while j.queued() > 0 {
                if let Pop::Packet(p) = j.pop() { played.push(u16::from_be_bytes([p[0], p[1]])); }
            }
            let expect: Vec<u16> = (0..n as u16).map(|i| start.wrapping_add(i)).collect();
            prop_assert_eq!(played, expect);
            prop_assert_eq!(j.stats().missing, 0);
        }
    }
}
