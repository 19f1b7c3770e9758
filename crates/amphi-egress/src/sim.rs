//! One speaker, 10,000 simulated listeners, one slow: the program's Ogg
//! pages go through the real per-listener slot bookkeeping on a fake clock
//! (no socket, no thread, no sleep). Peers are writers that take what a
//! script allows per 20 ms.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use amphi_media::analysis::tone_ratio;
use amphi_media::ogg::{PacketReader, PageReader};
use amphi_media::{Decoder, Encoder};
use amphi_program::{
    Output, Packet, Program, ProgramConfig, Session, StartSpace, Stores, UnitKind,
};
use bytes::Bytes;

use crate::slot::{Service, Slot, Tally, Units};

const LISTENERS: usize = 10_000;
const SPACE: SpaceId = SpaceId(7);
const SPEAKER: ParticipantId = ParticipantId(1);

/// A listener's socket: unlimited (`budget: None`) or taking at most
/// `budget` bytes per tick. It records what it was given as (pointer,
/// length) pairs, which proves every listener got the very same shared
/// bytes, or (for a few) the bytes themselves.
struct Peer {
    budget: Option<usize>,
    left: usize,
    writes: Vec<(usize, usize)>,
    keep: Option<Vec<u8>>,
}

impl Peer {
    fn new(budget: Option<usize>, keep: bool) -> Self {
        Peer {
            budget,
            left: budget.unwrap_or(0),
            writes: Vec::new(),
            keep: keep.then(Vec::new),
        }
    }
}

/// A listener sends nothing (an HTTP player): reads find the socket empty.
impl std::io::Read for Peer {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(ErrorKind::WouldBlock.into())
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.budget {
            None => buf.len(),
            Some(_) => self.left.min(buf.len()),
        };
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        if self.budget.is_some() {
            self.left -= n;
        }
        self.writes.push((buf.as_ptr() as usize, n));
        if let Some(k) = &mut self.keep {
            k.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The worker's recent units of one output.
struct Ring {
    units: VecDeque<(u64, Bytes)>,
    cap: usize,
}

impl Units for Ring {
    fn oldest(&self) -> Option<u64> {
        self.units.front().map(|(s, _)| *s)
    }

    fn newest(&self) -> Option<u64> {
        self.units.back().map(|(s, _)| *s)
    }

    fn get(&self, seq: u64) -> Option<&Bytes> {
        let first = self.units.front()?.0;
        self.units
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)
            .map(|(_, b)| b)
    }
}

#[test]
fn one_speaker_ten_thousand_listeners_one_slow() {
    let t0 = Instant::now();
    let mut program = Program::new(ProgramConfig::default(), t0);
    program
        .start_space(StartSpace {
            space: SPACE,
            first_seq: 0,
            record: false,
            stores: Stores::new(1500, 10),
        })
        .unwrap();
    program
        .add_session(SPACE, SPEAKER, Session(1), false)
        .unwrap();
    program.set_audible(SPACE, SPEAKER, true);
    let mut enc = Encoder::new(32_000).unwrap();

    // Listener 0 keeps its bytes (to be heard), the last one is slow:
    // 40 bytes per 20 ms, half the stream's rate.
    let slow = LISTENERS - 1;
    let mut slots: Vec<Slot<Peer>> = (0..LISTENERS)
        .map(|i| {
            let budget = (i == slow).then_some(40);
            Slot::new(
                Peer::new(budget, i == 0 || i == slow),
                Bytes::new(),
                0,
                0,
                crate::Protocol::Http,
            )
        })
        .collect();
    let mut ring = Ring {
        units: VecDeque::new(),
        cap: 32,
    };
    let mut published: Vec<Bytes> = Vec::new();
    let stall = Duration::from_secs(5);
    let mut tally = Tally::default();
    // The worker's TLS sealing buffer (these listeners are plain TCP).
    let mut scratch = Vec::new();

    for k in 0..500u32 {
        let now = t0 + Duration::from_millis(20) * (k + 1);
        let pcm: [f32; 960] = std::array::from_fn(|i| {
            let t = (k as usize * 960 + i) as f32 / 48_000.0;
            0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
        });
        program.handle_packet(Packet {
            space: SPACE,
            participant: SPEAKER,
            rtp_seq: k as u16,
            rtp_ts: k * 960,
            payload: enc.encode(&pcm).unwrap(),
            received: now,
        });
        program.handle_timeout(now, 1_000_000 + u64::from(k) * 20_000);
        loop {
            match program.poll_output() {
                Output::Timeout(_) => break,
                Output::Unit {
                    kind: UnitKind::Ogg,
                    bytes,
                    ..
                } => {
                    if ring.units.len() == ring.cap {
                        ring.units.pop_front();
                    }
                    ring.units
                        .push_back((published.len() as u64, bytes.clone()));
                    published.push(bytes);
                }
                _ => {}
            }
        }
        // What a worker does on a unit: every listener, once.
        slots[slow].stream.left = 40;
        for slot in &mut slots {
            assert_eq!(
                slot.service(&ring, now, stall, &mut tally, &mut scratch),
                Service::Keep
            );
        }
    }

    assert_eq!(published.len(), 100, "one page per 100 ms for 10 s");
    // Every listener but the slow one got every page, whole, in order,
    // and the same shared bytes (pointer and length): built once.
    let expected: Vec<(usize, usize)> = published
        .iter()
        .map(|b| (b.as_ptr() as usize, b.len()))
        .collect();
    for (i, slot) in slots.iter().enumerate().filter(|(i, _)| *i != slow) {
        assert_eq!(
            slot.stream.writes, expected,
            "listener {i} missed or split a page"
        );
    }
    let all: u64 = published.iter().map(|b| b.len() as u64).sum();
    // The slow listener skipped ahead instead of queueing: it holds one
    // page at most (the one in flight) and received whole pages, in order.
    let got = slots[slow].stream.keep.as_ref().unwrap();
    assert!(got.len() <= 500 * 40, "slow: {} of {all}", got.len());
    assert!(
        tally.skipped > 10,
        "the slow listener never skipped: {}",
        tally.skipped
    );
    let cur = &slots[slow].cur;
    assert!(
        published
            .iter()
            .any(|p| p.as_ptr() == cur.as_ptr() && p.len() == cur.len()),
        "the slow listener's unit in flight is a shared page, not a copy"
    );
    let mut pages = PageReader::new();
    pages.push(got);
    let mut seqs = Vec::new();
    while let Some(p) = pages.next_page() {
        seqs.push(p.seq);
    }
    assert_eq!(pages.skipped, 0, "a torn page");
    assert!(
        seqs.len() > 20 && seqs.windows(2).all(|w| w[0] < w[1]),
        "{seqs:?}"
    );
    assert!(seqs.windows(2).any(|w| w[1] > w[0] + 1), "no skip seen");
    eprintln!(
        "{} pages ({all} bytes) to {LISTENERS} listeners; the slow one took {} whole pages ({} bytes), {} skipped",
        published.len(),
        seqs.len(),
        got.len(),
        tally.skipped
    );
    // Bytes written: 9,999 listeners × every page, plus the slow one's.
    assert_eq!(tally.bytes, all * (LISTENERS as u64 - 1) + got.len() as u64);

    // And what listener 0 heard is the speaker's tone.
    let mut reader = PacketReader::new();
    reader.push(slots[0].stream.keep.as_ref().unwrap());
    let mut dec = Decoder::new().unwrap();
    let mut buf = [0f32; 960];
    let mut pcm = Vec::new();
    while let Some((p, _)) = reader.next_packet() {
        let n = dec.decode(&p, &mut buf).unwrap();
        pcm.extend_from_slice(&buf[..n]);
    }
    assert_eq!(pcm.len(), 500 * 960);
    assert!(tone_ratio(&pcm[48_000..], 440.0, 48_000) > 0.9);
}
