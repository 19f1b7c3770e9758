//! Measuring what was heard: tone detection for tests and the load
//! generator.

/// Goertzel power of `freq` in `samples` (|X(f)|²).
pub fn goertzel_power(samples: &[f32], freq: f32, rate: u32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / rate as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f32, 0f32);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Share of the energy at `freq`, 0 to 1, averaged over 100 ms blocks with
/// signal (10 Hz bins: tones at multiples of 10 Hz fall exactly on a bin).
pub fn tone_ratio(samples: &[f32], freq: f32, rate: u32) -> f32 {
    let block = (rate / 10) as usize;
    let mut sum = 0f32;
    let mut n = 0;
    for b in samples.chunks_exact(block) {
        let energy: f32 = b.iter().map(|x| x * x).sum();
        if energy < 1e-6 * block as f32 {
            continue;
        }
        let p = goertzel_power(b, freq, rate);
        sum += (2.0 * p / (block as f32 * energy)).min(1.0);
        n += 1;
    }
    if n == 0 { 0.0 } else { sum / n as f32 }
}

/// Amplitude (0..=1 for a full-scale sine) of the `freq` component of
/// `samples`, measured through a Hann window so that a loud tone nearby
/// does not leak into it: fit for short blocks such as one 20 ms frame,
/// where the tone rarely falls on an exact bin.
pub fn tone_amplitude(samples: &[f32], freq: f32, rate: u32) -> f32 {
    let n = samples.len();
    if n < 2 {
        return 0.0;
    }
    let w = 2.0 * std::f32::consts::PI * freq / rate as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f32, 0f32);
    let mut wsum = 0f32;
    for (i, x) in samples.iter().enumerate() {
        let hann = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (n - 1) as f32).cos();
        wsum += hann;
        let s0 = x * hann + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    2.0 * power.sqrt() / wsum
}

/// The candidate frequency with the most energy.
pub fn dominant_frequency(samples: &[f32], rate: u32, candidates: &[f32]) -> Option<f32> {
    candidates
        .iter()
        .copied()
        .map(|f| (f, goertzel_power(samples, f, rate)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(f, _)| f)
}

/// Root mean square.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|x| x * x).sum::<f32>() / samples.len() as f32).sqrt()
}

/// Largest absolute sample.
pub fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tone_and_its_share() {
        let s: Vec<f32> = (0..48_000)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * t).sin()
            })
            .collect();
        let a = tone_ratio(&s, 440.0, 48_000);
        let b = tone_ratio(&s, 1000.0, 48_000);
        assert!((a - 0.5).abs() < 0.05 && (b - 0.5).abs() < 0.05, "{a} {b}");
        assert!(tone_ratio(&s, 700.0, 48_000) < 0.01);
        assert_eq!(
            dominant_frequency(&s[..4800], 48_000, &[300.0, 440.0]),
            Some(440.0)
        );
        assert!(peak(&s) <= 1.0 && rms(&s) > 0.4);
        assert_eq!(tone_ratio(&[0.0; 9600], 440.0, 48_000), 0.0);
    }

    #[test]
    fn measures_a_tone_in_one_frame_despite_a_loud_neighbour() {
        let s: Vec<f32> = (0..960)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.8 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.01 * (2.0 * std::f32::consts::PI * 660.0 * t).sin()
            })
            .collect();
        let a = tone_amplitude(&s, 440.0, 48_000);
        let b = tone_amplitude(&s, 660.0, 48_000);
        assert!((a - 0.8).abs() < 0.08, "{a}");
        assert!((b - 0.01).abs() < 0.003, "{b}");
        assert!(tone_amplitude(&s[..1], 440.0, 48_000) == 0.0);
    }
}
