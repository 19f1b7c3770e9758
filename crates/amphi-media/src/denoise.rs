//! Noise suppression for one speaker: RNNoise (`nnnoiseless`, pure Rust,
//! its weights compiled in) on the decoded 48 kHz audio before the mix.
//! RNNoise works on 10 ms frames (480 samples), two per 20 ms packet.
//!
//! A packet whose length is a multiple of 10 ms (every packet a browser,
//! OBS or GStreamer sends: 10, 20, 40, 60 ms) is filtered in place with no
//! delay beyond RNNoise's own; shorter packets (2.5 or 5 ms) are carried
//! through a 10 ms ring, at 10 ms more delay, until the ring is empty again.

use nnnoiseless::DenoiseState;

/// RNNoise's frame: 10 ms at 48 kHz.
pub const DENOISE_FRAME: usize = DenoiseState::FRAME_SIZE;

/// RNNoise reads and writes 16-bit sample values as floats.
const SCALE: f32 = 32_768.0;

/// The noise suppressor of one speaker.
pub struct Denoiser {
    state: Box<DenoiseState<'static>>,
    input: [f32; DENOISE_FRAME],
    output: [f32; DENOISE_FRAME],
    /// Samples in the ring (`input`), for packets shorter than 10 ms.
    fill: usize,
    /// The ring is in use (its output holds delayed samples).
    ringing: bool,
    /// Voice probability RNNoise gave the last frame (0..1).
    vad: f32,
}

impl std::fmt::Debug for Denoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denoiser")
            .field("fill", &self.fill)
            .finish()
    }
}

impl Default for Denoiser {
    fn default() -> Self {
        Self::new()
    }
}

impl Denoiser {
    /// A suppressor with RNNoise's built-in model.
    pub fn new() -> Self {
        Denoiser {
            state: DenoiseState::new(),
            input: [0.0; DENOISE_FRAME],
            output: [0.0; DENOISE_FRAME],
            fill: 0,
            ringing: false,
            vad: 0.0,
        }
    }

    /// RNNoise's voice probability for the last frame filtered.
    pub fn voice_probability(&self) -> f32 {
        self.vad
    }

    /// Forgets everything heard (a mute, a reset).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Filters `pcm` (floats in -1..1) in place.
    pub fn process(&mut self, pcm: &mut [f32]) {
        if self.fill == 0 && pcm.len().is_multiple_of(DENOISE_FRAME) {
            self.ringing = false;
            for chunk in pcm.chunks_exact_mut(DENOISE_FRAME) {
                for (i, x) in self.input.iter_mut().zip(chunk.iter()) {
                    *i = clean(*x) * SCALE;
                }
                self.vad = self.state.process_frame(&mut self.output, &self.input);
                for (o, y) in chunk.iter_mut().zip(self.output.iter()) {
                    *o = *y / SCALE;
                }
            }
            return;
        }
        // Through the ring: each sample comes out one frame later (the
        // first frame's worth is silence, not the last frame again).
        if !self.ringing {
            self.output = [0.0; DENOISE_FRAME];
            self.ringing = true;
        }
        for x in pcm.iter_mut() {
            let y = self.output[self.fill] / SCALE;
            self.input[self.fill] = clean(*x) * SCALE;
            *x = y;
            self.fill += 1;
            if self.fill == DENOISE_FRAME {
                self.vad = self.state.process_frame(&mut self.output, &self.input);
                self.fill = 0;
            }
        }
    }
}

/// A sample RNNoise can take: finite, within full scale.
fn clean(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms_db(x: &[f32]) -> f32 {
        let e: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        10.0 * e.max(1e-20).log10()
    }

    /// White noise from a small LCG (deterministic).
    fn noise(n: usize, amp: f32, seed: &mut u32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                amp * ((*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn noise_alone_is_lowered_and_odd_packet_sizes_still_flow() {
        let mut seed = 7;
        // Hiss (white noise low-passed): RNNoise leaves what lies above
        // its last band (20 kHz) alone, and white noise puts a sixth of
        // its energy there; a codec removes it before this filter runs.
        let mut y = 0.0f32;
        let input: Vec<f32> = noise(48_000 * 3, 0.4, &mut seed)
            .into_iter()
            .map(|x| {
                y = 0.9 * y + 0.1 * x;
                y
            })
            .collect();
        let mut d = Denoiser::new();
        let mut out = input.clone();
        // 20 ms packets, then 2.5 ms ones (through the ring), then 20 ms.
        let (a, rest) = out.split_at_mut(48_000);
        for p in a.chunks_mut(960) {
            d.process(p);
        }
        let (b, c) = rest.split_at_mut(48_000);
        for p in b.chunks_mut(120) {
            d.process(p);
        }
        for p in c.chunks_mut(960) {
            d.process(p);
        }
        // After the first half second (RNNoise's own fade-in).
        let before = rms_db(&input[24_000..]);
        let after = rms_db(&out[24_000..]);
        assert!(
            before - after >= 10.0,
            "noise {before:.1} dB → {after:.1} dB: lowered only {:.1} dB",
            before - after
        );
        assert!(out.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn broken_samples_do_not_poison_it() {
        let mut d = Denoiser::new();
        let mut p = [f32::NAN; 960];
        d.process(&mut p);
        let mut p = [f32::INFINITY; 960];
        d.process(&mut p);
        assert!(p.iter().all(|x| x.is_finite()));
    }
}
