//! Whatever the commands, packets, remote frames and clock do, and in any
//! order: no panic, frames of a space are numbered without a gap and only
//! come from spaces mixed here, units only from spaces started and not
//! closed, one `Closed` per space that stops, and nothing left queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amphi_core::{Frame, ParticipantId, SpaceId};
use amphi_media::Encoder;
use amphi_program::{Event, Output, Packet, Program, ProgramConfig, Session, StartSpace, Stores};
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Start(u8, u64),
    Edge(u8),
    Stop(u8),
    Abandon(u8),
    Session(u8, u8, u8, bool),
    Closed(u8),
    Audible(u8, u8, bool),
    Tone(u8, u8, u16),
    Garbage(u8, u8, Vec<u8>),
    Remote(u8, u64),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..3, 0u64..1000).prop_map(|(s, q)| Op::Start(s, q)),
        1 => (0u8..3).prop_map(Op::Edge),
        1 => (0u8..3).prop_map(Op::Stop),
        1 => (0u8..3).prop_map(Op::Abandon),
        2 => (0u8..3, 0u8..3, 0u8..6, any::<bool>()).prop_map(|(s, p, n, r)| Op::Session(s, p, n, r)),
        1 => (0u8..6).prop_map(Op::Closed),
        2 => (0u8..3, 0u8..3, any::<bool>()).prop_map(|(s, p, a)| Op::Audible(s, p, a)),
        4 => (0u8..3, 0u8..3, 0u16..60).prop_map(|(s, p, q)| Op::Tone(s, p, q)),
        1 => (0u8..3, 0u8..3, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(s, p, b)| Op::Garbage(s, p, b)),
        2 => (0u8..3, 0u64..2000).prop_map(|(s, q)| Op::Remote(s, q)),
        4 => (0u16..300).prop_map(Op::Advance),
    ]
}

#[derive(Default)]
struct Model {
    /// Spaces started and not closed: mixed (true) or relayed.
    live: HashMap<SpaceId, bool>,
    last_frame: HashMap<SpaceId, u64>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_interleaving_keeps_the_program_sound(ops in proptest::collection::vec(op(), 0..80)) {
        let tone = Encoder::new(32_000).unwrap().encode(&[0.25; 960]).unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Program::new(ProgramConfig::default(), t0);
        let mut m = Model::default();
        let mut closes = 0u64;
        let mut stops = 0u64;
        for op in ops {
            match op {
                Op::Start(s, q) => {
                    let space = SpaceId(s.into());
                    p.start_space(StartSpace { space, first_seq: q, record: s == 1, stores: Stores::new(50, 3) }).unwrap();
                    m.live.insert(space, true);
                    m.last_frame.remove(&space);
                }
                Op::Edge(s) => {
                    let space = SpaceId(s.into());
                    let was = p.is_mixing(space) || p.is_edge(space);
                    p.start_edge(space, Stores::new(50, 3));
                    if !was {
                        m.live.insert(space, false);
                    }
                }
                Op::Stop(s) | Op::Abandon(s) => {
                    let space = SpaceId(s.into());
                    if m.live.contains_key(&space) {
                        stops += 1;
                    }
                    if matches!(op, Op::Stop(_)) { p.stop_space(space) } else { p.abandon_space(space) }
                }
                Op::Session(s, pid, n, r) => {
                    let _ = p.add_session(SpaceId(s.into()), ParticipantId(pid.into()), Session(n.into()), r);
                }
                Op::Closed(n) => p.session_closed(Session(n.into())),
                Op::Audible(s, pid, a) => p.set_audible(SpaceId(s.into()), ParticipantId(pid.into()), a),
                Op::Tone(s, pid, q) => p.handle_packet(Packet {
                    space: SpaceId(s.into()),
                    participant: ParticipantId(pid.into()),
                    rtp_seq: q,
                    rtp_ts: u32::from(q) * 960,
                    payload: tone.clone(),
                    received: now,
                }),
                Op::Garbage(s, pid, b) => p.handle_packet(Packet {
                    space: SpaceId(s.into()),
                    participant: ParticipantId(pid.into()),
                    rtp_seq: 0,
                    rtp_ts: 0,
                    payload: Bytes::from(b),
                    received: now,
                }),
                Op::Remote(s, q) => p.remote_frame(SpaceId(s.into()), Frame {
                    seq: q,
                    captured_at_us: q * 20_000,
                    opus: tone.clone(),
                    program_level: 3,
                    speakers: Arc::from(Vec::new()),
                }),
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms.into());
                    p.handle_timeout(now, 1_000_000 + (now - t0).as_micros() as u64);
                }
            }
            loop {
                match p.poll_output() {
                    Output::Timeout(t) => {
                        prop_assert!(t > now, "a deadline in the past");
                        break;
                    }
                    Output::Frame { space, frame, record } => {
                        prop_assert_eq!(m.live.get(&space), Some(&true), "a frame of a space not mixed here");
                        prop_assert_eq!(record, space == SpaceId(1));
                        if let Some(last) = m.last_frame.insert(space, frame.seq) {
                            prop_assert_eq!(frame.seq, last + 1, "a gap in the numbering");
                        }
                    }
                    Output::Unit { space, .. } => {
                        prop_assert!(m.live.contains_key(&space), "a unit of a closed space");
                    }
                    Output::Event(Event::Closed { space, .. }) => {
                        prop_assert!(m.live.remove(&space).is_some(), "closed twice");
                        closes += 1;
                    }
                    Output::Event(Event::Talking { space, .. }) => {
                        prop_assert!(m.live.contains_key(&space));
                    }
                    Output::MixMinus { .. } | Output::CloseSession(_) => {}
                }
            }
        }
        prop_assert_eq!(closes, stops);
    }
}
