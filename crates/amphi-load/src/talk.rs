//! When a simulated speaker talks: continuously, in speech-like bursts
//! (2–6 s of talk, 1–4 s of pause), or in an 8 s cycle where the space's
//! two speakers overlap half the time. Sans-IO: the caller gives the time.

use clap::ValueEnum;

/// How the speakers talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Talk {
    /// Always.
    Continuous,
    /// 2–6 s of talk, 1–4 s of pause, each speaker on its own random draw.
    Bursts,
    /// An 8 s cycle: the space's first speaker talks 0–6 s, the second
    /// 2–8 s: both at once half the time, each alone a quarter.
    Overlap,
}

const TALK_MS: (u64, u64) = (2_000, 6_000);
const PAUSE_MS: (u64, u64) = (1_000, 4_000);
const CYCLE_MS: u64 = 8_000;

/// One speaker's pattern. Ask with non-decreasing times (ms since the
/// space's start, shared by its speakers).
#[derive(Debug, Clone)]
pub struct TalkPattern {
    talk: Talk,
    /// The speaker's index in its space.
    index: usize,
    rng: u64,
    talking: bool,
    /// End of the current burst or pause (bursts only).
    until_ms: u64,
}

impl TalkPattern {
    pub fn new(talk: Talk, seed: u64, index: usize) -> TalkPattern {
        let mut p = TalkPattern {
            talk,
            index,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            talking: false,
            until_ms: 0,
        };
        // Start anywhere in a talk or a pause, so spaces do not march in step.
        p.talking = p.next() & 1 == 0;
        let d = p.draw();
        p.until_ms = 1 + p.next() % d;
        p
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A length for the current state.
    fn draw(&mut self) -> u64 {
        let (lo, hi) = if self.talking { TALK_MS } else { PAUSE_MS };
        lo + self.next() % (hi - lo + 1)
    }

    /// Does the speaker talk at `ms`?
    pub fn talking(&mut self, ms: u64) -> bool {
        match self.talk {
            Talk::Continuous => true,
            Talk::Overlap => {
                let start = (self.index as u64 % 2) * (CYCLE_MS / 4);
                let t = ms % CYCLE_MS;
                t >= start && t < start + CYCLE_MS * 3 / 4
            }
            Talk::Bursts => {
                while ms >= self.until_ms {
                    self.talking = !self.talking;
                    let d = self.draw();
                    self.until_ms += d;
                }
                self.talking
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (talking, length ms) runs over `secs`, stepping 20 ms.
    fn runs(p: &mut TalkPattern, secs: u64) -> Vec<(bool, u64)> {
        let mut out: Vec<(bool, u64)> = Vec::new();
        for t in (0..secs * 1000).step_by(20) {
            let on = p.talking(t);
            match out.last_mut() {
                Some((s, n)) if *s == on => *n += 20,
                _ => out.push((on, 20)),
            }
        }
        out
    }

    #[test]
    fn bursts_last_two_to_six_seconds_and_pauses_one_to_four() {
        for seed in 0..20 {
            let mut p = TalkPattern::new(Talk::Bursts, seed, 0);
            let r = runs(&mut p, 300);
            // The first and last runs are cut by the window.
            for (on, ms) in &r[1..r.len() - 1] {
                let (lo, hi) = if *on { TALK_MS } else { PAUSE_MS };
                assert!((lo..=hi + 20).contains(ms), "seed {seed}: {on} for {ms} ms");
            }
            let talk: u64 = r.iter().filter(|(on, _)| *on).map(|(_, ms)| ms).sum();
            let share = talk as f64 / 300_000.0;
            assert!((0.45..0.75).contains(&share), "seed {seed}: talks {share}");
        }
    }

    #[test]
    fn speakers_start_at_different_points() {
        let starts: Vec<bool> = (0..16)
            .map(|s| TalkPattern::new(Talk::Bursts, s, 0).talking(0))
            .collect();
        assert!(starts.contains(&true) && starts.contains(&false));
    }

    #[test]
    fn overlap_is_half_the_time() {
        let mut a = TalkPattern::new(Talk::Overlap, 1, 0);
        let mut b = TalkPattern::new(Talk::Overlap, 2, 1);
        let (mut both, mut one, mut none) = (0, 0, 0);
        for t in (0..80_000).step_by(20) {
            match (a.talking(t), b.talking(t)) {
                (true, true) => both += 1,
                (false, false) => none += 1,
                _ => one += 1,
            }
        }
        assert_eq!((both, one, none), (2000, 2000, 0));
    }

    #[test]
    fn continuous_always_talks() {
        let mut p = TalkPattern::new(Talk::Continuous, 3, 0);
        assert!((0..10_000).step_by(20).all(|t| p.talking(t)));
    }
}
