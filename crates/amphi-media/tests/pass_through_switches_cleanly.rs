//! A listener's decoded program across 100 switches between pass-through
//! and mixing has no click: compared with the same input always mixed,
//! the largest sample-to-sample jump (second difference) near a switch and
//! the loudness around it stay within stated bounds.

use amphi_core::ParticipantId;
use amphi_media::analysis::{rms, tone_amplitude};
use amphi_media::opus::FRAME;
use amphi_media::{Decoder, Encoder, Mixer, MixerConfig, Mode};
use bytes::Bytes;

const A: ParticipantId = ParticipantId(1);
const B: ParticipantId = ParticipantId(2);
/// B talks for this many ticks, then is silent as long.
const HALF: u64 = 25;
const SWITCHES: usize = 100;

fn tone(freq: f32, amp: f32, k: u64) -> [f32; FRAME] {
    std::array::from_fn(|i| {
        let n = k as f32 * FRAME as f32 + i as f32;
        amp * (2.0 * std::f32::consts::PI * freq * n / 48_000.0).sin()
    })
}

/// The same two speakers (A a steady 440 Hz tone, B a 660 Hz tone every
/// other `HALF` ticks and silence between) through one mixer; returns the
/// decoded program and each tick's mode.
fn run(pass_through: bool, ticks: u64) -> (Vec<f32>, Vec<Mode>, amphi_media::MixerStats) {
    let mut m = Mixer::new(MixerConfig {
        pass_through,
        ..MixerConfig::default()
    })
    .unwrap();
    m.add_speaker(A, false).unwrap();
    m.add_speaker(B, false).unwrap();
    m.set_audible(A, true);
    m.set_audible(B, true);
    let (mut ea, mut eb) = (Encoder::new(32_000).unwrap(), Encoder::new(32_000).unwrap());
    let mut dec = Decoder::new().unwrap();
    let mut out = Vec::new();
    let mut modes = Vec::new();
    let mut buf = [0f32; FRAME];
    for k in 0..ticks {
        let pa: Bytes = ea.encode(&tone(440.0, 0.3, k)).unwrap();
        let b_on = (k / HALF) % 2 == 1;
        let pb = eb
            .encode(&if b_on {
                tone(660.0, 0.3, k)
            } else {
                [0.0; FRAME]
            })
            .unwrap();
        m.push_packet(A, k as u16, (k * 960) as u32, pa);
        m.push_packet(B, k as u16, (k * 960) as u32, pb);
        let t = m.tick(k * 20_000);
        assert_eq!(t.frame.seq, k);
        let n = dec.decode(&t.frame.opus, &mut buf).unwrap();
        assert_eq!(n, FRAME, "every frame is 20 ms");
        out.extend_from_slice(&buf);
        modes.push(t.mode);
    }
    (out, modes, m.stats())
}

fn second_difference_max(x: &[f32]) -> f32 {
    x.windows(3)
        .map(|w| (w[2] - 2.0 * w[1] + w[0]).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_hundred_switches_sound_like_the_mix() {
    let ticks = (SWITCHES as u64 / 2 + 1) * 2 * HALF;
    let (pass, modes, st) = run(true, ticks);
    let (mixed, ref_modes, ref_st) = run(false, ticks);
    assert!(ref_modes.iter().all(|m| *m == Mode::Mix));
    assert_eq!(ref_st.passed_frames, 0);
    // Where the mode changed between two ticks (Silence only at the start).
    let switches: Vec<usize> = (1..modes.len())
        .filter(|&k| modes[k] != modes[k - 1] && modes[k - 1] != Mode::Silence)
        .collect();
    assert!(
        switches.len() >= SWITCHES,
        "{} switches: {st:?}",
        switches.len()
    );
    // A passes through whenever B has been silent for the hangover (and
    // the jitter buffer's depth): a mix only while B talks.
    let periods = ticks / (2 * HALF);
    let hangover = u64::from(amphi_media::mixer::HANGOVER_TICKS);
    assert!(
        st.passed_frames >= periods * (HALF - hangover - 4),
        "A alone passes through: {st:?}"
    );
    assert!(st.switches >= SWITCHES as u64 / 2, "{st:?}");

    // Around each switch (±10 ms), the largest jump between samples, and
    // the loudness of A's tone in 5 ms blocks, against the mixed program.
    let whole_ref = second_difference_max(&mixed[FRAME * 10..]);
    let mut worst_step = 0f32;
    let mut worst_into_mix = 0f32;
    let mut worst_ref_step = 0f32;
    let mut worst_db = 0f32;
    for &k in &switches {
        let at = k * FRAME;
        let (from, to) = (at - 480, at + 480);
        let step = second_difference_max(&pass[from..to]);
        worst_step = worst_step.max(step);
        if modes[k] == Mode::Mix {
            worst_into_mix = worst_into_mix.max(step);
        }
        worst_ref_step = worst_ref_step.max(second_difference_max(&mixed[from..to]));
        for block in (from..to).step_by(240) {
            let (p, r) = (&pass[block..block + 240], &mixed[block..block + 240]);
            let db = 20.0 * (rms(p).max(1e-4) / rms(r).max(1e-4)).log10();
            worst_db = worst_db.max(db.abs());
        }
    }
    eprintln!(
        "switches {}, max second difference near a switch {worst_step:.4} \
         (into a mix {worst_into_mix:.4}) \
         (always mixed: {worst_ref_step:.4} there, {whole_ref:.4} anywhere), \
         worst 5 ms loudness deviation {worst_db:.2} dB; {st:?}",
        switches.len()
    );
    // The stated bounds: no jump near a switch beyond 1.5 times the
    // largest the always-mixed program makes anywhere, nor above 0.05
    // (-26 dBFS) absolute, and the loudness within 3 dB of the mix.
    assert!(worst_step <= 1.5 * whole_ref, "{worst_step} vs {whole_ref}");
    assert!(worst_step <= 0.05, "{worst_step}");
    assert!(worst_db <= 3.0, "{worst_db} dB");
    // And A's tone is there all along.
    for block in pass[FRAME * 10..].chunks(FRAME * 5) {
        let a = tone_amplitude(block, 440.0, 48_000);
        assert!(a > 0.2, "A's tone dropped to {a}");
    }
}
