//! What noise suppression costs per speaker: RNNoise on one 20 ms frame
//! (two 10 ms frames), and a mixer tick of one speaker with and without
//! it. Run with `cargo bench -p amphi-media --bench denoise`.

use std::hint::black_box;

use amphi_core::ParticipantId;
use amphi_media::opus::Encoder;
use amphi_media::{Denoiser, Mixer, MixerConfig};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

/// Speech-like test audio: a tone with a little hiss.
fn frame(k: usize) -> [f32; 960] {
    let mut f = [0f32; 960];
    let mut s = k as u32;
    for (i, x) in f.iter_mut().enumerate() {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.02;
        *x = 0.3 * (2.0 * std::f32::consts::PI * 220.0 * (k * 960 + i) as f32 / 48_000.0).sin()
            + noise;
    }
    f
}

fn denoise(c: &mut Criterion) {
    let frames: Vec<[f32; 960]> = (0..100).map(frame).collect();
    let mut d = Denoiser::new();
    let mut k = 0;
    c.bench_function("rnnoise, one 20 ms frame", |b| {
        b.iter(|| {
            let mut f = frames[k % 100];
            k += 1;
            d.process(&mut f);
            black_box(f);
        })
    });

    for suppress in [false, true] {
        let mut m = Mixer::new(MixerConfig {
            pass_through: false,
            ..MixerConfig::default()
        })
        .unwrap();
        let p = ParticipantId(1);
        m.add_speaker(p, false).unwrap();
        m.set_audible(p, true);
        m.set_noise_suppression(p, suppress);
        let mut enc = Encoder::new(32_000).unwrap();
        let packets: Vec<Bytes> = frames.iter().map(|f| enc.encode(f).unwrap()).collect();
        let mut k = 0usize;
        let name = if suppress { "suppressed" } else { "plain" };
        c.bench_function(&format!("mixer tick, 1 speaker mixed, {name}"), |b| {
            b.iter(|| {
                m.push_packet(p, k as u16, (k * 960) as u32, packets[k % 100].clone());
                k += 1;
                black_box(m.tick(0));
            })
        });
    }
}

criterion_group!(benches, denoise);
criterion_main!(benches);
