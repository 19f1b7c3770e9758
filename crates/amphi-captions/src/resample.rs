//! 48 kHz → 16 kHz: a windowed-sinc low-pass (cut at 7 kHz) keeping every
//! third sample. State carries across calls, so packets join seamlessly.

const TAPS: usize = 48;

#[derive(Debug, Clone)]
pub struct Downsample3 {
    coeffs: [f32; TAPS],
    history: [f32; TAPS],
    at: usize,
    phase: usize,
}

impl Default for Downsample3 {
    fn default() -> Self {
        let mut coeffs = [0f32; TAPS];
        let cutoff = 7_000.0 / 48_000.0;
        let mid = (TAPS - 1) as f64 / 2.0;
        let mut sum = 0.0;
        for (i, c) in coeffs.iter_mut().enumerate() {
            let x = i as f64 - mid;
            let sinc = if x == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let window =
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos();
            *c = (sinc * window) as f32;
            sum += sinc * window;
        }
        for c in &mut coeffs {
            *c /= sum as f32;
        }
        Self {
            coeffs,
            history: [0.0; TAPS],
            at: 0,
            phase: 0,
        }
    }
}

impl Downsample3 {
    /// Appends the 16 kHz samples of `input` (48 kHz mono) to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        for &x in input {
            self.history[self.at] = x;
            self.at = (self.at + 1) % TAPS;
            self.phase += 1;
            if self.phase == 3 {
                self.phase = 0;
                let mut acc = 0f32;
                for (k, c) in self.coeffs.iter().enumerate() {
                    acc += c * self.history[(self.at + k) % TAPS];
                }
                out.push(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn speech_band_passes_and_what_would_alias_is_cut() {
        let tone = |f: f32| -> Vec<f32> {
            (0..48_000)
                .map(|i| (2.0 * std::f32::consts::PI * f * i as f32 / 48_000.0).sin())
                .collect()
        };
        let mut out = Vec::new();
        Downsample3::default().push(&tone(1_000.0), &mut out);
        assert_eq!(out.len(), 16_000);
        assert!(
            (rms(&out[100..]) - 0.707).abs() < 0.02,
            "{}",
            rms(&out[100..])
        );
        out.clear();
        Downsample3::default().push(&tone(12_000.0), &mut out);
        assert!(rms(&out[100..]) < 0.02, "{}", rms(&out[100..]));
    }
}
