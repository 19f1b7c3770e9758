//! A small simulation harness: the program on a fake clock, speakers that
//! encode a tone with the real Opus encoder, and a network that delays,
//! reorders and loses their packets. No sleeps: time jumps from one event
//! to the next.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use amphi_core::{Frame, ParticipantId, SpaceId};
use amphi_media::ogg::PacketReader;
use amphi_media::opus::FRAME;
use amphi_media::{Decoder, Encoder, decode_message};
use amphi_program::{
    Event, Output, Packet, Program, ProgramConfig, Session, StartSpace, Stores, UnitKind,
};
use bytes::Bytes;

/// Wall clock at the start of every simulation (µs since the epoch).
pub const WALL0: u64 = 1_700_000_000_000_000;
pub const SPACE: SpaceId = SpaceId(0x5ace);
pub const A: ParticipantId = ParticipantId(0xa);
pub const B: ParticipantId = ParticipantId(0xb);

/// A speaker's path to the node: a fixed delay plus a deterministic
/// pseudo-random jitter, and loss.
#[derive(Debug, Clone)]
pub struct Link {
    pub delay: Duration,
    /// Extra delay drawn uniformly from 0..jitter.
    pub jitter: Duration,
    /// Share of packets lost, 0..1.
    pub loss: f64,
    /// Packets sent while `now` is in here are lost (an outage).
    pub outage: Option<(Duration, Duration)>,
    rng: u64,
}

impl Link {
    pub fn clean() -> Self {
        Link {
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            outage: None,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_rand(&mut self) -> f64 {
        // xorshift64*: reproducible, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A speaker's client: a sine tone, one 20 ms Opus packet per 20 ms.
pub struct Voice {
    pub space: SpaceId,
    pub pid: ParticipantId,
    pub freq: f32,
    pub amp: f32,
    pub link: Link,
    /// Sending at all (a client that stopped talking sends nothing).
    pub sending: bool,
    /// Every packet sent, in order.
    pub sent: Vec<Bytes>,
    enc: Encoder,
    sample: u64,
    seq: u16,
    next_send: Instant,
}

impl Voice {
    fn packet(&mut self) -> (u16, u32, Bytes) {
        let mut pcm = [0f32; FRAME];
        for (i, x) in pcm.iter_mut().enumerate() {
            let t = (self.sample + i as u64) as f32 / 48_000.0;
            *x = self.amp * (2.0 * std::f32::consts::PI * self.freq * t).sin();
        }
        let p = self.enc.encode(&pcm).expect("20 ms of PCM always encodes");
        self.sent.push(p.clone());
        let out = (self.seq, self.sample as u32, p);
        self.sample += FRAME as u64;
        self.seq = self.seq.wrapping_add(1);
        out
    }
}

/// The program and the world around it.
pub struct Sim {
    pub program: Program,
    pub start: Instant,
    pub now: Instant,
    pub voices: Vec<Voice>,
    /// Packets on the wire: (arrival, packet).
    in_flight: Vec<(Instant, Packet)>,
    deadline: Instant,
    /// Everything the program output (but timeouts), with when.
    pub log: Vec<(Instant, Output)>,
}

impl Sim {
    pub fn new(cfg: ProgramConfig) -> Self {
        let start = Instant::now();
        let mut sim = Sim {
            program: Program::new(cfg, start),
            start,
            now: start,
            voices: Vec::new(),
            in_flight: Vec::new(),
            deadline: start,
            log: Vec::new(),
        };
        sim.drain();
        sim
    }

    /// A program that mixes [`SPACE`].
    pub fn mixing() -> Self {
        let mut sim = Sim::new(ProgramConfig::default());
        sim.program
            .start_space(StartSpace {
                space: SPACE,
                first_seq: 0,
                record: false,
                stores: Stores::new(1500, 100),
            })
            .expect("a default mixer starts");
        sim
    }

    pub fn wall_us(&self) -> u64 {
        WALL0 + (self.now - self.start).as_micros() as u64
    }

    /// A speaker of `space` with one session (`Session(pid)`), not yet
    /// audible; they start sending at once.
    pub fn add_voice(&mut self, space: SpaceId, pid: ParticipantId, freq: f32, wants_return: bool) {
        self.program
            .add_session(space, pid, Session(pid.0), wants_return)
            .expect("a mixer place");
        self.voices.push(Voice {
            space,
            pid,
            freq,
            amp: 0.5,
            link: Link::clean(),
            sending: true,
            sent: Vec::new(),
            enc: Encoder::new(64_000).expect("a valid bitrate"),
            sample: 0,
            seq: 0,
            next_send: self.now,
        });
        self.drain();
    }

    pub fn voice(&mut self, pid: ParticipantId) -> &mut Voice {
        self.voices
            .iter_mut()
            .find(|v| v.pid == pid)
            .expect("a voice added before")
    }

    pub fn set_audible(&mut self, pid: ParticipantId, audible: bool) {
        let space = self.voice(pid).space;
        self.program.set_audible(space, pid, audible);
    }

    /// Takes what the program output so far into the log.
    pub fn drain(&mut self) {
        loop {
            match self.program.poll_output() {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return;
                }
                o => self.log.push((self.now, o)),
            }
        }
    }

    /// Runs the world for `d` of simulated time, event by event.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_send = self
                .voices
                .iter()
                .filter(|v| v.sending)
                .map(|v| v.next_send)
                .min();
            let next_arrival = self.in_flight.iter().map(|(t, _)| *t).min();
            let next = [Some(self.deadline), next_send, next_arrival]
                .into_iter()
                .flatten()
                .min()
                .expect("the program always has a deadline");
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            let now = self.now;
            let elapsed = now - self.start;
            for v in self.voices.iter_mut().filter(|v| v.sending) {
                while v.next_send <= now {
                    let (rtp_seq, rtp_ts, payload) = v.packet();
                    v.next_send += Duration::from_millis(20);
                    let lost = v.link.loss > 0.0 && v.link.next_rand() < v.link.loss;
                    let out = v
                        .link
                        .outage
                        .is_some_and(|(from, to)| elapsed >= from && elapsed < to);
                    if lost || out {
                        continue;
                    }
                    let extra = v.link.jitter.mul_f64(v.link.next_rand());
                    let arrival = now + v.link.delay + extra;
                    self.in_flight.push((
                        arrival,
                        Packet {
                            space: v.space,
                            participant: v.pid,
                            rtp_seq,
                            rtp_ts,
                            payload,
                            received: arrival,
                        },
                    ));
                }
            }
            let mut i = 0;
            while i < self.in_flight.len() {
                if self.in_flight[i].0 <= now {
                    let (_, p) = self.in_flight.swap_remove(i);
                    self.program.handle_packet(p);
                } else {
                    i += 1;
                }
            }
            if now >= self.deadline {
                let wall = self.wall_us();
                self.program.handle_timeout(now, wall);
            }
            self.drain();
        }
    }

    /// Jumps the clock without running anything in between (a stalled
    /// machine), then lets the program catch up.
    pub fn stall(&mut self, d: Duration) {
        self.now += d;
        for v in &mut self.voices {
            v.next_send = v.next_send.max(self.now);
        }
        let wall = self.wall_us();
        self.program.handle_timeout(self.now, wall);
        self.drain();
    }

    /// The program frames of `space` mixed so far, with when they came out.
    pub fn frames_at(&self, space: SpaceId) -> Vec<(Instant, Frame)> {
        self.log
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Frame {
                    space: s, frame, ..
                } if *s == space => Some((*t, frame.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn frames(&self, space: SpaceId) -> Vec<Frame> {
        self.frames_at(space).into_iter().map(|(_, f)| f).collect()
    }

    /// The units of one kind of `space`'s outputs, in order.
    pub fn units(&self, space: SpaceId, kind: fn(&UnitKind) -> bool) -> Vec<Bytes> {
        self.log
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Unit {
                    space: s,
                    kind: k,
                    bytes,
                    ..
                } if *s == space && kind(k) => Some(bytes.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn events(&self) -> Vec<Event> {
        self.log
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Return audio sent to `session`.
    pub fn mix_minus(&self, session: Session) -> Vec<Bytes> {
        self.log
            .iter()
            .filter_map(|(_, o)| match o {
                Output::MixMinus {
                    session: s, opus, ..
                } if *s == session => Some(opus.clone()),
                _ => None,
            })
            .collect()
    }
}

pub fn is_ogg(k: &UnitKind) -> bool {
    matches!(k, UnitKind::Ogg)
}

pub fn is_ws(k: &UnitKind) -> bool {
    matches!(k, UnitKind::Ws)
}

pub fn is_hls(k: &UnitKind) -> bool {
    matches!(k, UnitKind::HlsPart { .. } | UnitKind::HlsSegment { .. })
}

/// What a listener hears: the Opus packets decoded one after another.
pub fn decode(packets: impl IntoIterator<Item = Bytes>) -> Vec<f32> {
    let mut d = Decoder::new().expect("a decoder");
    let mut buf = [0f32; FRAME];
    let mut pcm = Vec::new();
    for p in packets {
        let n = d
            .decode(&p, &mut buf)
            .expect("the program's packets decode");
        pcm.extend_from_slice(&buf[..n]);
    }
    pcm
}

pub fn decode_frames(frames: &[Frame]) -> Vec<f32> {
    decode(frames.iter().map(|f| f.opus.clone()))
}

/// The Opus packets in a run of Ogg pages (after the stream's headers),
/// with their granule positions.
pub fn ogg_packets(pages: &[Bytes]) -> Vec<(Bytes, u64)> {
    let mut r = PacketReader::new();
    for p in pages {
        r.push(p);
    }
    std::iter::from_fn(|| r.next_packet()).collect()
}

/// The frames (seq, opus) carried by a run of `live.ws` WebSocket frames.
pub fn ws_frames(msgs: &[Bytes]) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    for m in msgs {
        let payload = match m[1] & 0x7f {
            126 => &m[4..],
            127 => &m[10..],
            _ => &m[2..],
        };
        if m[0] & 0x0f != 0x2 {
            continue;
        }
        let msg = decode_message(payload).expect("a valid live.ws message");
        for (k, opus) in msg.frames.iter().enumerate() {
            out.push((msg.first_seq + k as u64, Bytes::copy_from_slice(opus)));
        }
    }
    out
}

/// Sequence numbers go up by one.
pub fn gap_free(seqs: impl IntoIterator<Item = u64>) -> bool {
    let v: Vec<u64> = seqs.into_iter().collect();
    v.windows(2).all(|w| w[1] == w[0] + 1)
}

pub fn take<T>(v: VecDeque<T>) -> Vec<T> {
    v.into_iter().collect()
}
