//! Whisper's mel filter bank (librosa's Slaney scale and normalisation),
//! computed rather than shipped: 80 bins over 201 FFT bins at 16 kHz.

/// Row-major `[n_mels][n_fft / 2 + 1]`, the layout candle's `pcm_to_mel` reads.
pub fn filters(sample_rate: f64, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|i| i as f64 * (sample_rate / 2.0) / (bins - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (f0, f1, f2) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (f2 - f0);
        for (k, f) in fft_freqs.iter().enumerate() {
            let lower = (f - f0) / (f1 - f0);
            let upper = (f2 - f) / (f2 - f1);
            out[m * bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    out
}

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(f: f64) -> f64 {
    if f >= MIN_LOG_HZ {
        MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / log_step()
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (m - MIN_LOG_MEL)).exp()
    } else {
        m * F_SP
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bank_matches_librosa_at_known_points() {
        let f = super::filters(16000.0, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)[0, 1] and [79, 199]
        assert!((f[1] - 0.024_862_594).abs() < 1e-5, "{}", f[1]);
        let last = f[79 * 201 + 199];
        assert!(last > 0.0 && last < 0.01, "{last}");
        // Each filter has some support.
        for m in 0..80 {
            assert!(
                f[m * 201..(m + 1) * 201].iter().any(|v| *v > 0.0),
                "bin {m}"
            );
        }
    }
}
