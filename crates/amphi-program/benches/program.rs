//! The whole per-tick work of one space through the state machine: mixing,
//! cutting into the history, Ogg, `live.ws` and LL-HLS, and draining the
//! outputs; and an edge's cut of one remote frame. Compare with
//! `cargo bench -p amphi-media --bench program` (the mixer and the pagers
//! alone). Run with `cargo bench -p amphi-program --bench program`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use amphi_media::Encoder;
use amphi_program::{Output, Packet, Program, ProgramConfig, Session, StartSpace, Stores};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

const SPACE: SpaceId = SpaceId(1);

fn tone(freq: f32, k: usize) -> [f32; 960] {
    std::array::from_fn(|i| {
        0.4 * (2.0 * std::f32::consts::PI * freq * (k * 960 + i) as f32 / 48_000.0).sin()
    })
}

fn drain(p: &mut Program) -> usize {
    let mut n = 0;
    while !matches!(p.poll_output(), Output::Timeout(_)) {
        n += 1;
    }
    n
}

fn program_tick(c: &mut Criterion) {
    for (name, speakers, pass_through) in [
        ("1 speaker, always mixed", 1usize, false),
        ("4 speakers", 4, true),
        ("1 speaker, passed through", 1, true),
        ("nobody heard", 0, true),
    ] {
        let t0 = Instant::now();
        let mut cfg = ProgramConfig::default();
        cfg.mixer.pass_through = pass_through;
        let mut p = Program::new(cfg, t0);
        p.start_space(StartSpace {
            space: SPACE,
            first_seq: 0,
            record: true,
            stores: Stores::new(1500, 3600),
        })
        .unwrap();
        let packets: Vec<Vec<Bytes>> = (0..speakers)
            .map(|s| {
                let mut e = Encoder::new(32_000).unwrap();
                let pid = ParticipantId(s as u64);
                p.add_session(SPACE, pid, Session(s as u64), false).unwrap();
                p.set_audible(SPACE, pid, true);
                (0..200)
                    .map(|k| e.encode(&tone(300.0 + 100.0 * s as f32, k)).unwrap())
                    .collect()
            })
            .collect();
        let mut k = 0usize;
        c.bench_function(&format!("program tick, 1 space, {name}"), |b| {
            b.iter(|| {
                k += 1;
                let now = t0 + Duration::from_millis(20) * k as u32;
                for (s, ps) in packets.iter().enumerate() {
                    p.handle_packet(Packet {
                        space: SPACE,
                        participant: ParticipantId(s as u64),
                        rtp_seq: k as u16,
                        rtp_ts: (k * 960) as u32,
                        payload: ps[k % 200].clone(),
                        received: now,
                    });
                }
                p.handle_timeout(now, k as u64 * 20_000);
                black_box(drain(&mut p));
            })
        });
        eprintln!("{name}: {:?}", p.stats());
    }
}

fn edge_cut(c: &mut Criterion) {
    // Frames as an origin made them.
    let t0 = Instant::now();
    let mut origin = Program::new(ProgramConfig::default(), t0);
    origin
        .start_space(StartSpace {
            space: SPACE,
            first_seq: 0,
            record: false,
            stores: Stores::new(10, 3),
        })
        .unwrap();
    let mut frames = Vec::new();
    for k in 1..=200u32 {
        origin.handle_timeout(t0 + Duration::from_millis(20) * k, u64::from(k) * 20_000);
        loop {
            match origin.poll_output() {
                Output::Timeout(_) => break,
                Output::Frame { frame, .. } => frames.push(frame),
                _ => {}
            }
        }
    }
    let mut edge = Program::new(ProgramConfig::default(), t0);
    edge.start_edge(SPACE, Stores::new(1500, 3600));
    let mut seq = 0u64;
    c.bench_function("edge: one remote frame cut", |b| {
        b.iter(|| {
            let mut f = frames[(seq % 200) as usize].clone();
            f.seq = seq;
            seq += 1;
            edge.remote_frame(SPACE, f);
            black_box(drain(&mut edge));
        })
    });
}

criterion_group!(benches, program_tick, edge_cut);
criterion_main!(benches);
