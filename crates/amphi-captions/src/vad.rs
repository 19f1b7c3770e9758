//! Voice activity, by energy: 16 kHz samples in, phrases out. A phrase
//! starts at the first loud 20 ms frame (with 200 ms before it kept) and
//! ends after 500 ms of quiet, or at 15 s.

/// 20 ms at 16 kHz.
pub const FRAME: usize = 320;

#[derive(Debug, Clone, Copy)]
pub struct VadConfig {
    /// Frame RMS above this (dBFS) is voice.
    pub threshold_dbfs: f32,
    /// Quiet that ends a phrase.
    pub hangover_frames: usize,
    /// Longest phrase, in frames.
    pub max_frames: usize,
    /// Past this many frames a shorter quiet ends the phrase
    /// (`short_hangover_frames`): continuous speech is cut at its pauses
    /// into phrases of a few seconds, which are captioned sooner.
    pub soft_max_frames: usize,
    pub short_hangover_frames: usize,
    /// Phrases with fewer voiced frames are dropped (clicks, breaths).
    pub min_voiced_frames: usize,
    /// Frames kept before the first loud one.
    pub preroll_frames: usize,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            threshold_dbfs: -42.0,
            hangover_frames: 25,
            max_frames: 750,
            soft_max_frames: 250,
            short_hangover_frames: 8,
            min_voiced_frames: 8,
            preroll_frames: 10,
        }
    }
}

/// A stretch of speech: its samples and where it lies on the segmenter's
/// clock (16 kHz samples since the segmenter began).
#[derive(Debug, Clone, PartialEq)]
pub struct Phrase {
    pub start: u64,
    /// The end of the last voiced frame.
    pub end: u64,
    pub samples: Vec<f32>,
}

#[derive(Debug)]
pub struct Segmenter {
    cfg: VadConfig,
    /// Samples not yet a whole frame.
    pending: Vec<f32>,
    /// Frames since the start (the clock, in frames).
    frames: u64,
    /// The last frames while quiet (the pre-roll).
    preroll: std::collections::VecDeque<Vec<f32>>,
    current: Option<Current>,
}

#[derive(Debug)]
struct Current {
    start: u64,
    samples: Vec<f32>,
    last_voiced: u64,
    voiced: usize,
    quiet: usize,
}

impl Segmenter {
    pub fn new(cfg: VadConfig) -> Self {
        Self {
            cfg,
            pending: Vec::with_capacity(FRAME),
            frames: 0,
            preroll: Default::default(),
            current: None,
        }
    }

    /// Samples (16 kHz) heard so far.
    pub fn position(&self) -> u64 {
        self.frames * FRAME as u64 + self.pending.len() as u64
    }

    /// Feeds samples; a phrase that ended is appended to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<Phrase>) {
        for &s in samples {
            self.pending.push(s);
            if self.pending.len() == FRAME {
                let frame = std::mem::replace(&mut self.pending, Vec::with_capacity(FRAME));
                self.frame(frame, out);
            }
        }
    }

    /// Silence up to `position` (a gap in the packets: DTX, loss, a mute).
    pub fn silence_until(&mut self, position: u64, out: &mut Vec<Phrase>) {
        let gap = position.saturating_sub(self.position()).min(16_000 * 60);
        // At most one phrase end's worth of frames is needed to close a
        // phrase; the rest only moves the clock.
        let needed = ((self.cfg.hangover_frames + 1) * FRAME) as u64;
        let fill = gap.min(needed) as usize;
        self.push(&vec![0.0; fill], out);
        let rest = gap - fill as u64;
        if rest > 0 {
            let total = self.position() + rest;
            self.pending.clear();
            self.frames = total / FRAME as u64;
            self.pending.resize((total % FRAME as u64) as usize, 0.0);
            self.preroll.clear();
        }
    }

    /// Ends the phrase in progress, if any (the speaker left).
    pub fn flush(&mut self, out: &mut Vec<Phrase>) {
        if let Some(c) = self.current.take() {
            self.emit(c, out);
        }
    }

    fn frame(&mut self, frame: Vec<f32>, out: &mut Vec<Phrase>) {
        let energy = frame.iter().map(|v| v * v).sum::<f32>() / FRAME as f32;
        let dbfs = 10.0 * energy.max(1e-12).log10() + 3.0;
        let loud = dbfs > self.cfg.threshold_dbfs;
        let index = self.frames;
        self.frames += 1;
        match &mut self.current {
            None => {
                if loud {
                    let pre = self.preroll.len() as u64;
                    let mut samples = Vec::with_capacity(FRAME * 100);
                    for f in self.preroll.drain(..) {
                        samples.extend_from_slice(&f);
                    }
                    samples.extend_from_slice(&frame);
                    self.current = Some(Current {
                        start: (index - pre) * FRAME as u64,
                        samples,
                        last_voiced: index,
                        voiced: 1,
                        quiet: 0,
                    });
                } else {
                    if self.preroll.len() == self.cfg.preroll_frames {
                        self.preroll.pop_front();
                    }
                    if self.cfg.preroll_frames > 0 {
                        self.preroll.push_back(frame);
                    }
                }
            }
            Some(c) => {
                c.samples.extend_from_slice(&frame);
                if loud {
                    c.voiced += 1;
                    c.quiet = 0;
                    c.last_voiced = index;
                } else {
                    c.quiet += 1;
                }
                let frames = c.samples.len() / FRAME;
                let long = frames >= self.cfg.max_frames;
                let pause =
                    frames >= self.cfg.soft_max_frames && c.quiet >= self.cfg.short_hangover_frames;
                if (c.quiet >= self.cfg.hangover_frames || long || pause)
                    && let Some(c) = self.current.take()
                {
                    self.emit(c, out);
                }
            }
        }
    }

    fn emit(&self, mut c: Current, out: &mut Vec<Phrase>) {
        if c.voiced < self.cfg.min_voiced_frames {
            return;
        }
        let end = (c.last_voiced + 1) * FRAME as u64;
        // Keep 200 ms of the quiet after the last voiced frame.
        let keep = (end + 10 * FRAME as u64).saturating_sub(c.start) as usize;
        c.samples.truncate(keep);
        out.push(Phrase {
            start: c.start,
            end,
            samples: c.samples,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: usize) -> Vec<f32> {
        (0..ms * 16).map(|i| 0.3 * (i as f32 * 0.2).sin()).collect()
    }

    #[test]
    fn two_utterances_apart_make_two_phrases_with_their_times() {
        let mut s = Segmenter::new(VadConfig::default());
        let mut out = Vec::new();
        s.push(&vec![0.0; 16 * 1000], &mut out);
        s.push(&tone(800), &mut out);
        s.push(&vec![0.0; 16 * 1000], &mut out);
        s.push(&tone(400), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start, 16 * 800); // 200 ms pre-roll before 1 s
        assert_eq!(out[0].end, 16 * 1800);
        s.silence_until(16 * 10_000, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].start, 16 * 2600);
        assert_eq!(out[1].end, 16 * 3200);
        assert_eq!(s.position(), 16 * 10_000);
    }

    #[test]
    fn past_five_seconds_a_short_pause_ends_the_phrase() {
        let mut s = Segmenter::new(VadConfig::default());
        let mut out = Vec::new();
        s.push(&tone(3_000), &mut out);
        s.push(&vec![0.0; 16 * 200], &mut out);
        s.push(&tone(3_000), &mut out);
        assert!(out.is_empty(), "a 200 ms pause before 5 s goes on");
        s.push(&vec![0.0; 16 * 200], &mut out);
        assert_eq!(out.len(), 1, "a 200 ms pause after 5 s ends it");
        assert_eq!(out[0].end - out[0].start, 16 * 6_200);
    }

    #[test]
    fn a_phrase_is_cut_at_fifteen_seconds_and_clicks_are_dropped() {
        let mut s = Segmenter::new(VadConfig::default());
        let mut out = Vec::new();
        s.push(&tone(20_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end - out[0].start, 16 * 15_000);
        s.flush(&mut out);
        assert_eq!(out.len(), 2);
        s.push(&vec![0.0; 16 * 1000], &mut out);
        s.push(&tone(60), &mut out);
        s.silence_until(s.position() + 16_000, &mut out);
        assert_eq!(out.len(), 2, "a 60 ms click is no phrase");
    }
}
