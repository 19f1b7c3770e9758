//! Noise suppression in the mixer, measured on what a listener decodes: a
//! speaker's client encodes its audio as Opus (32 kbit/s, 20 ms, as a
//! browser does), the mixer makes the program with suppression off and on,
//! and the program's packets are decoded.
//!
//! - Noise alone (hiss: white noise through a first-order low-pass) is
//!   lowered by at least 10 dB, with pass-through on (the default: a
//!   suppressed speaker is always mixed) or off. Plain white noise at
//!   -25 dBFS is RNNoise's weak spot (its model hears it as a voice): it
//!   is only printed, and must not come out louder.
//! - Speech (espeak-ng) over the same hiss keeps its energy (within 3 dB
//!   where it speaks) while the pauses are lowered by at least 10 dB.
//! - A suppressed speaker is never passed through.
//!
//! The figures are printed (`cargo test -p amphi-media --test
//! noise_suppression -- --nocapture`).

use std::process::Command;

use amphi_core::ParticipantId;
use amphi_media::opus::{Decoder, Encoder};
use amphi_media::{Mixer, MixerConfig, Mode};

const FRAME: usize = 960;
const RATE: usize = 48_000;
const P: ParticipantId = ParticipantId(1);

/// White noise from a small LCG (deterministic).
fn white(n: usize, amp: f32, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            amp * ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
        })
        .collect()
}

/// Hiss: white noise through a one-pole low-pass (a fan, a preamp).
fn hiss(n: usize, amp: f32) -> Vec<f32> {
    let mut y = 0.0f32;
    white(n, 1.0, 11)
        .into_iter()
        .map(|x| {
            y = 0.9 * y + 0.1 * x;
            y * amp * 4.0
        })
        .collect()
}

fn db(x: &[f32]) -> f32 {
    let e: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    10.0 * e.max(1e-12).log10()
}

/// The program a listener decodes for one speaker sending `pcm`.
fn program(pcm: &[f32], suppress: bool, pass_through: bool) -> (Vec<f32>, Mixer) {
    let mut m = Mixer::new(MixerConfig {
        pass_through,
        ..MixerConfig::default()
    })
    .unwrap();
    m.add_speaker(P, false).unwrap();
    m.set_audible(P, true);
    m.set_noise_suppression(P, suppress);
    let mut enc = Encoder::new(32_000).unwrap();
    let mut dec = Decoder::new().unwrap();
    let mut buf = [0f32; FRAME];
    let mut out = Vec::with_capacity(pcm.len());
    for (i, chunk) in pcm.chunks_exact(FRAME).enumerate() {
        let p = enc.encode_samples(chunk).unwrap();
        m.push_packet(P, i as u16, (i * FRAME) as u32, p);
        let t = m.tick(i as u64 * 20_000);
        let n = dec.decode(&t.frame.opus, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    (out, m)
}

#[test]
fn noise_alone_is_lowered_by_at_least_10_db() {
    for (name, noise) in [
        ("hiss", hiss(RATE * 5, 0.1)),
        ("white", white(RATE * 5, 0.1, 3)),
    ] {
        // After the first second: RNNoise's fade-in and the jitter buffer.
        let from = RATE;
        let (off, _) = program(&noise, false, false);
        let (on, m) = program(&noise, true, false);
        let (off_db, on_db) = (db(&off[from..]), db(&on[from..]));
        let (gated, _) = program(&noise, true, true);
        let gated_db = db(&gated[from..]);
        eprintln!(
            "{name}: input {:.1} dBFS; program without suppression {off_db:.1} dBFS, \
             with it {on_db:.1} dBFS (every frame mixed): {:.1} dB lower; \
             with pass-through on {gated_db:.1} dBFS",
            db(&noise[from..]),
            off_db - on_db
        );
        if name == "hiss" {
            assert!(
                off_db - on_db >= 10.0,
                "{name}: lowered only {:.1} dB",
                off_db - on_db
            );
        } else {
            assert!(on_db <= off_db + 0.5, "{name}: louder: {on_db} vs {off_db}");
        }
        assert!(gated_db <= on_db + 0.5, "{name}: {gated_db} vs {on_db}");
        assert!(m.stats().denoised >= 240, "{:?}", m.stats());
        assert_eq!(m.stats().passed_frames, 0);
    }
}

/// `text` spoken by espeak-ng, as 48 kHz mono floats.
fn speech(text: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("s.wav");
    let ok = Command::new("espeak-ng")
        .args(["-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "espeak-ng is required: run scripts/test (it installs it)"
    );
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(&wav)
        .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg is required: run scripts/test");
    assert!(out.status.success());
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * 0.5)
        .collect()
}

#[test]
fn speech_over_hiss_keeps_its_energy_and_loses_the_hiss() {
    let words = speech(
        "The quick brown fox jumps over the lazy dog. \
         Noise suppression keeps the voice and removes the fan.",
    );
    // One second of hiss alone, the sentence, one second of hiss alone.
    let n = RATE + words.len() + RATE;
    let n = n - n % FRAME;
    let mut clean = vec![0.0f32; n];
    clean[RATE..RATE + words.len()].copy_from_slice(&words);
    let noise = hiss(n, 0.03);
    let input: Vec<f32> = clean.iter().zip(&noise).map(|(a, b)| a + b).collect();
    let (off, _) = program(&input, false, false);
    let (on, _) = program(&input, true, false);

    // 100 ms blocks, classed on the clean speech (with both neighbours of
    // the same class, so the codec's and the filter's delays do not
    // blur the classes); the first 500 ms are RNNoise's fade-in.
    let block = RATE / 10;
    let class = |i: usize| db(&clean[i * block..(i + 1) * block]);
    let (mut sp_off, mut sp_on, mut pa_off, mut pa_on) = (vec![], vec![], vec![], vec![]);
    for i in 5..(n / block - 1) {
        let (a, b, c) = (class(i - 1), class(i), class(i + 1));
        let r = i * block..(i + 1) * block;
        if a > -35.0 && b > -35.0 && c > -35.0 {
            sp_off.extend_from_slice(&off[r.clone()]);
            sp_on.extend_from_slice(&on[r]);
        } else if a < -80.0 && b < -80.0 && c < -80.0 {
            pa_off.extend_from_slice(&off[r.clone()]);
            pa_on.extend_from_slice(&on[r]);
        }
    }
    let speech_kept = db(&sp_on) - db(&sp_off);
    let pause_lowered = db(&pa_off) - db(&pa_on);
    eprintln!(
        "speech over hiss ({:.1} s of speech blocks, {:.1} s of pauses): \
         speech {:.1} → {:.1} dBFS ({speech_kept:+.1} dB), pauses {:.1} → {:.1} dBFS \
         ({pause_lowered:.1} dB lower)",
        sp_off.len() as f32 / RATE as f32,
        pa_off.len() as f32 / RATE as f32,
        db(&sp_off),
        db(&sp_on),
        db(&pa_off),
        db(&pa_on),
    );
    assert!(sp_off.len() >= RATE, "too little speech measured");
    assert!(pa_off.len() >= RATE, "too little pause measured");
    assert!(
        speech_kept.abs() <= 3.0,
        "speech changed {speech_kept:.1} dB"
    );
    assert!(
        pause_lowered >= 10.0,
        "pauses lowered {pause_lowered:.1} dB"
    );
}

#[test]
fn a_suppressed_speaker_is_mixed_not_passed() {
    let tone: Vec<f32> = (0..RATE * 2)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / RATE as f32).sin())
        .collect();
    let (_, m) = program(&tone, false, true);
    assert!(m.stats().passed_frames > 50, "{:?}", m.stats());
    let (_, m) = program(&tone, true, true);
    assert_eq!(m.stats().passed_frames, 0, "{:?}", m.stats());
    assert_ne!(m.mode(), Mode::Pass);
}

/// This thread's CPU time in ns (`/proc/thread-self/schedstat`): time on
/// a core, which a loaded machine's waiting does not inflate as it does
/// wall time.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Figures, not a check (`cargo test --release -p amphi-media --test
/// noise_suppression -- --ignored --nocapture cost`): CPU per 20 ms frame
/// of RNNoise alone and of a mixer tick of one speaker with and without
/// suppression, over 3,000 frames (60 s of audio).
#[test]
#[ignore]
fn cost_per_speaker_timed() {
    let frames = 3000;
    let input = hiss(FRAME * frames, 0.05);
    let mut d = amphi_media::Denoiser::new();
    let mut buf = input.clone();
    let t0 = thread_cpu_ns().unwrap();
    for chunk in buf.chunks_exact_mut(FRAME) {
        d.process(chunk);
    }
    let rn = (thread_cpu_ns().unwrap() - t0) as f64 / frames as f64 / 1000.0;
    let tick = |suppress: bool| {
        let mut m = Mixer::new(MixerConfig {
            pass_through: false,
            ..MixerConfig::default()
        })
        .unwrap();
        m.add_speaker(P, false).unwrap();
        m.set_audible(P, true);
        m.set_noise_suppression(P, suppress);
        let mut enc = Encoder::new(32_000).unwrap();
        let packets: Vec<_> = input
            .chunks_exact(FRAME)
            .map(|c| enc.encode_samples(c).unwrap())
            .collect();
        let t0 = thread_cpu_ns().unwrap();
        for (i, p) in packets.into_iter().enumerate() {
            m.push_packet(P, i as u16, (i * FRAME) as u32, p);
            std::hint::black_box(m.tick(0));
        }
        (thread_cpu_ns().unwrap() - t0) as f64 / frames as f64 / 1000.0
    };
    let plain = tick(false);
    let suppressed = tick(true);
    eprintln!(
        "CPU per 20 ms frame: RNNoise alone {rn:.1} µs ({:.2} % of a core); \
         mixer tick of 1 speaker (decode, mix, limiter, encode) {plain:.1} µs, \
         with suppression {suppressed:.1} µs (+{:.1} µs)",
        rn / 200.0,
        suppressed - plain
    );
}
