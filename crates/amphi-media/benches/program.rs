//! The per-frame work done once per space (never per listener): one mixer
//! tick with speakers, cutting Ogg pages and `live.ws` messages. Run with
//! `cargo bench -p amphi-media --bench program`.

use std::hint::black_box;
use std::sync::Arc;

use amphi_core::{Frame, ParticipantId};
use amphi_media::opus::Encoder;
use amphi_media::{Mixer, MixerConfig, OggPager, WsBatcher};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

fn tone(freq: f32, k: usize) -> [f32; 960] {
    let mut f = [0f32; 960];
    for (i, s) in f.iter_mut().enumerate() {
        *s = 0.4 * (2.0 * std::f32::consts::PI * freq * (k * 960 + i) as f32 / 48_000.0).sin();
    }
    f
}

/// One mixer tick per iteration, each speaker pushing its next packet.
/// `pass_through: false` is the program as it was (every tick decoded,
/// mixed, encoded); with it, one voice passes through and nobody costs
/// only the silence frame.
fn mixer_tick(c: &mut Criterion) {
    for (name, speakers, pass_through) in [
        ("mixed, 1 speaker", 1usize, false),
        ("mixed, 4 speakers", 4, false),
        ("mixed (pass-through on), 4 speakers", 4, true),
        ("pass-through, 1 speaker", 1, true),
        ("silence, 1 speaker audible", 0, true),
    ] {
        let mut m = Mixer::new(MixerConfig {
            pass_through,
            ..MixerConfig::default()
        })
        .unwrap();
        let mut encs: Vec<Encoder> = (0..speakers)
            .map(|_| Encoder::new(32_000).unwrap())
            .collect();
        let packets: Vec<Vec<Bytes>> = encs
            .iter_mut()
            .enumerate()
            .map(|(s, e)| {
                (0..200)
                    .map(|k| e.encode(&tone(300.0 + 100.0 * s as f32, k)).unwrap())
                    .collect()
            })
            .collect();
        for s in 0..speakers.max(1) {
            m.add_speaker(ParticipantId(s as u64), false).unwrap();
            m.set_audible(ParticipantId(s as u64), true);
        }
        let mut k = 0usize;
        c.bench_function(&format!("mixer tick, {name}"), |b| {
            b.iter(|| {
                for (s, p) in packets.iter().enumerate() {
                    m.push_packet(
                        ParticipantId(s as u64),
                        k as u16,
                        (k * 960) as u32,
                        p[k % 200].clone(),
                    );
                }
                k += 1;
                black_box(m.tick(0));
            })
        });
        eprintln!("{name}: {:?}", m.stats());
    }
}

fn cutters(c: &mut Criterion) {
    let frame = |seq: u64| Frame {
        seq,
        captured_at_us: seq,
        opus: Bytes::from(vec![7u8; 80]),
        program_level: 0,
        speakers: Arc::from(Vec::new()),
    };
    let mut pager = OggPager::new(1, 5);
    let mut seq = 0;
    c.bench_function("ogg pager, per frame", |b| {
        b.iter(|| {
            seq += 1;
            black_box(pager.push(&frame(seq)));
        })
    });
    let mut batcher = WsBatcher::new(5);
    c.bench_function("live.ws batcher, per frame", |b| {
        b.iter(|| {
            seq += 1;
            black_box(batcher.push(&frame(seq)));
        })
    });
}

criterion_group!(benches, mixer_tick, cutters);
criterion_main!(benches);
