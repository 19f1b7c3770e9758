//! The ingest against real str0m client peers, in process, on simulated
//! time: no socket, no sleep. Every datagram goes straight from one side's
//! `poll_output` to the other's input; the clock jumps to the next timer.

use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Input, Rtc};

use super::{HostAddrs, Ingest, IngestConfig, Output, Transport};
use crate::{RtcEvent, RtcStats, SessionId, SessionRequest};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 4000);

/// A fixed set of "this host's" addresses.
struct Fixed(Vec<IpAddr>);

impl HostAddrs for Fixed {
    fn is_own(&mut self, ip: IpAddr, _now: Instant) -> bool {
        self.0.contains(&ip)
    }
}

/// A publishing peer: a real str0m `Rtc` making the WHIP offer.
struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    mid: Mid,
    session: SessionId,
    audible: Arc<AtomicBool>,
    participant: ParticipantId,
    timeout: Instant,
    rtp_ts: u64,
    /// Return-audio packets this client received.
    heard: usize,
    /// Their RTP timestamps.
    heard_at: Vec<u64>,
}

struct Sim {
    now: Instant,
    ingest: Ingest,
    clients: Vec<Client>,
    events: Vec<RtcEvent>,
    /// The transport of every datagram the ingest sent.
    transports: Vec<Transport>,
}

const SERVER_TCP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 4001);

fn config(udp: SocketAddr, loopback: bool) -> IngestConfig {
    IngestConfig {
        udp,
        tcp: Some(SERVER_TCP),
        loopback,
        connect_timeout: Duration::from_secs(30),
        max_sessions: 16,
        speaker_max_bitrate: 32_000,
    }
}

impl Sim {
    fn new(cfg: IngestConfig, own: Vec<IpAddr>) -> Sim {
        Sim {
            now: Instant::now(),
            ingest: Ingest::with_host_addrs(
                cfg,
                Arc::new(RtcStats::default()),
                Box::new(Fixed(own)),
            ),
            clients: Vec::new(),
            events: Vec::new(),
            transports: Vec::new(),
        }
    }

    fn stats(&self) -> &RtcStats {
        self.ingest.stats()
    }

    /// A client at `addr` offers; the ingest answers; returns its index.
    fn connect_client(&mut self, addr: SocketAddr, audible: bool) -> usize {
        let candidate = Candidate::host(addr, "udp").expect("candidate");
        self.connect_client_with(candidate, audible)
    }

    /// A client offering only an active ICE-TCP candidate at `addr`.
    fn connect_tcp_client(&mut self, addr: SocketAddr) -> usize {
        let candidate = Candidate::builder()
            .tcp()
            .host(addr)
            .tcptype(TcpType::Active)
            .build()
            .expect("candidate");
        self.connect_client_with(candidate, true)
    }

    fn connect_client_with(&mut self, candidate: Candidate, audible: bool) -> usize {
        let addr = candidate.addr();
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_opus(true, false)
            .build(self.now);
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        let participant = ParticipantId(rand::random());
        let audible = Arc::new(AtomicBool::new(audible));
        let info = self
            .ingest
            .create(
                self.now,
                SessionRequest {
                    space: SpaceId(7),
                    participant,
                    offer_sdp: offer.to_sdp_string(),
                    audible: audible.clone(),
                    music: false,
                },
            )
            .expect("session");
        assert!(!info.answer_sdp.contains("trickle"), "{}", info.answer_sdp);
        // Mono 20 ms packets at the program's bitrate: they can pass.
        assert!(
            info.answer_sdp.contains("stereo=0")
                && info.answer_sdp.contains("maxaveragebitrate=32000")
                && info.answer_sdp.contains("a=ptime:20"),
            "{}",
            info.answer_sdp
        );
        let answer = SdpAnswer::from_sdp_string(&info.answer_sdp).expect("answer");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("accept");
        self.clients.push(Client {
            rtc,
            addr,
            mid,
            session: info.id,
            audible,
            participant,
            timeout: self.now,
            rtp_ts: 0,
            heard: 0,
            heard_at: Vec::new(),
        });
        self.clients.len() - 1
    }

    /// Delivers everything either side has to send, until both are quiet.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            while let Some(out) = self.ingest.poll_output() {
                moved = true;
                match out {
                    Output::Transmit(t) => {
                        self.transports.push(t.transport);
                        let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination)
                        else {
                            continue;
                        };
                        let input = Input::Receive(
                            self.now,
                            Receive {
                                proto: match t.transport {
                                    Transport::Udp => Protocol::Udp,
                                    Transport::Tcp => Protocol::Tcp,
                                },
                                source: t.source,
                                destination: t.destination,
                                contents: t.contents.as_slice().try_into().expect("datagram"),
                            },
                        );
                        c.rtc.handle_input(input).expect("client input");
                    }
                    Output::Event(ev) => self.events.push(ev),
                }
            }
            for c in &mut self.clients {
                loop {
                    match c.rtc.poll_output().expect("client output") {
                        str0m::Output::Timeout(t) => {
                            c.timeout = t;
                            break;
                        }
                        str0m::Output::Transmit(t) => {
                            moved = true;
                            let transport = match t.proto {
                                Protocol::Udp => Transport::Udp,
                                _ => Transport::Tcp,
                            };
                            self.ingest.handle_datagram(
                                self.now,
                                transport,
                                t.source,
                                t.destination,
                                &t.contents,
                            );
                        }
                        str0m::Output::Event(str0m::Event::MediaData(d)) => {
                            c.heard += 1;
                            c.heard_at.push(d.time.numer());
                        }
                        str0m::Output::Event(_) => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs the simulation up to `until`, jumping from timer to timer.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.exchange();
            let mut next = until;
            if let Some(t) = self.ingest.poll_timeout() {
                next = next.min(t);
            }
            for c in &self.clients {
                next = next.min(c.timeout);
            }
            // A timer due now still moves the clock, as a real loop's
            // shortest wait does.
            self.now = next.max(self.now + Duration::from_millis(1)).min(until);
            self.ingest.handle_timeout(self.now);
            for c in &mut self.clients {
                if c.timeout <= self.now {
                    c.rtc
                        .handle_input(Input::Timeout(self.now))
                        .expect("client timeout");
                }
            }
            if self.now >= until {
                self.exchange();
                return;
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs until every client is connected (at most 5 simulated s).
    fn run_until_connected(&mut self) {
        let limit = self.now + Duration::from_secs(5);
        while !self.clients.iter().all(|c| c.rtc.is_connected()) || !self.all_reported() {
            assert!(self.now < limit, "not connected within 5 s");
            self.run_for(Duration::from_millis(10));
        }
    }

    fn all_reported(&self) -> bool {
        self.clients.iter().all(|c| {
            self.events
                .iter()
                .any(|e| matches!(e, RtcEvent::Connected { id, .. } if *id == c.session))
        })
    }

    /// Each client sends `n` 20 ms Opus frames whose first byte is its
    /// index, 20 simulated ms apart.
    fn speak(&mut self, n: usize) {
        for _ in 0..n {
            let now = self.now;
            for (i, c) in self.clients.iter_mut().enumerate() {
                let w = c.rtc.writer(c.mid).expect("writer");
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .map(|p| p.pt())
                    .expect("opus pt");
                let ts = MediaTime::new(c.rtp_ts, Frequency::FORTY_EIGHT_KHZ);
                c.rtp_ts += 960;
                w.write(pt, now, ts, vec![i as u8, 0xfc, 0xff, 0xfe])
                    .expect("write");
            }
            self.run_for(Duration::from_millis(20));
        }
    }

    fn audio_of(&self, id: SessionId) -> Vec<(u8, ParticipantId)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                RtcEvent::Audio {
                    id: i,
                    payload,
                    participant,
                    ..
                } if *i == id => Some((payload[0], *participant)),
                _ => None,
            })
            .collect()
    }
}

fn client_addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
}

#[test]
fn a_client_connects_and_its_opus_comes_out_as_audio() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    sim.speak(50);
    let id = sim.clients[c].session;
    let audio = sim.audio_of(id);
    assert!(audio.len() >= 45, "only {} of 50 packets", audio.len());
    assert!(
        audio
            .iter()
            .all(|(b, p)| *b == 0 && *p == sim.clients[c].participant)
    );
    assert_eq!(sim.stats().garbage_datagrams.load(Ordering::Relaxed), 0);
    assert_eq!(sim.stats().dropped_inaudible.load(Ordering::Relaxed), 0);
    // RTP sequence numbers come out in order, one apart.
    let seqs: Vec<u16> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            RtcEvent::Audio { rtp_seq, .. } => Some(*rtp_seq),
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
    // Stale timer entries do not pile up.
    assert!(
        sim.ingest.timers.len() <= 16 + 64,
        "{}",
        sim.ingest.timers.len()
    );
}

#[test]
fn the_gate_drops_and_counts_an_inaudible_speakers_packets() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), false);
    sim.run_until_connected();
    sim.speak(50);
    let id = sim.clients[c].session;
    assert!(sim.audio_of(id).is_empty(), "an inaudible speaker came out");
    let dropped = sim.stats().dropped_inaudible.load(Ordering::Relaxed);
    assert!(dropped >= 45, "dropped {dropped}");
    assert_eq!(dropped, sim.stats().packets_in.load(Ordering::Relaxed));
    // Unmuted by the control plane: the same session is heard again.
    sim.clients[c].audible.store(true, Ordering::Release);
    sim.speak(20);
    assert!(sim.audio_of(id).len() >= 15);
    assert_eq!(
        sim.stats().dropped_inaudible.load(Ordering::Relaxed),
        dropped
    );
}

#[test]
fn two_sessions_at_once_each_get_their_own_packets() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let a = sim.connect_client(client_addr(2, 5000), true);
    // Same host, another port: only the 5-tuple tells them apart.
    let b = sim.connect_client(client_addr(2, 5001), true);
    sim.run_until_connected();
    sim.speak(30);
    let (ia, ib) = (sim.clients[a].session, sim.clients[b].session);
    assert_ne!(ia, ib);
    let (pa, pb) = (sim.audio_of(ia), sim.audio_of(ib));
    assert!(
        pa.len() >= 25 && pb.len() >= 25,
        "{} {}",
        pa.len(),
        pb.len()
    );
    assert!(
        pa.iter()
            .all(|(i, p)| *i == a as u8 && *p == sim.clients[a].participant)
    );
    assert!(
        pb.iter()
            .all(|(i, p)| *i == b as u8 && *p == sim.clients[b].participant)
    );
    assert_eq!(sim.stats().garbage_datagrams.load(Ordering::Relaxed), 0);
    assert_eq!(sim.ingest.by_ufrag.len(), 2);
    assert_eq!(sim.ingest.by_source.len(), 2);
}

/// A STUN binding request whose USERNAME is `user`.
fn binding_request(user: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&6u16.to_be_bytes());
    attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attrs.extend_from_slice(user.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut m = vec![0, 1];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&attrs);
    m
}

#[test]
fn unknown_sources_and_ufrags_are_garbage() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let before = sim.stats().garbage_datagrams.load(Ordering::Relaxed);
    let stranger = client_addr(66, 6666);
    let now = sim.now;
    // STUN naming nobody's ufrag; a DTLS-looking record; an RTP-looking
    // packet; bytes that are nothing.
    sim.ingest.handle_datagram(
        now,
        Transport::Udp,
        stranger,
        SERVER,
        &binding_request("nosuchufrag:x"),
    );
    let mut dtls = vec![22, 254, 253];
    dtls.extend_from_slice(&[0; 30]);
    sim.ingest
        .handle_datagram(now, Transport::Udp, stranger, SERVER, &dtls);
    sim.ingest
        .handle_datagram(now, Transport::Udp, stranger, SERVER, &[0x80; 60]);
    sim.ingest
        .handle_datagram(now, Transport::Udp, stranger, SERVER, &[0xff; 3]);
    assert_eq!(
        sim.stats().garbage_datagrams.load(Ordering::Relaxed) - before,
        4
    );
    assert!(sim.ingest.poll_output().is_none(), "garbage got an answer");
    // The known client's traffic still flows.
    sim.speak(5);
    assert!(!sim.audio_of(sim.clients[0].session).is_empty());
}

#[test]
fn a_flood_at_one_session_is_cut_at_its_budget() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let (id, from) = (sim.clients[c].session, sim.clients[c].addr);
    // RTP-looking datagrams from the session's own source, all at once.
    let mut junk = vec![0u8; 100];
    junk[0] = 0x80;
    junk[1] = 111;
    let garbage = sim.stats().garbage_datagrams.load(Ordering::Relaxed);
    let taken = (0..5000)
        .filter(|_| {
            sim.ingest
                .handle_datagram(sim.now, Transport::Udp, from, SERVER, &junk)
        })
        .count() as u32;
    assert!(taken <= super::MAX_DATAGRAMS_PER_SESSION_S, "{taken} taken");
    assert!(
        sim.stats().garbage_datagrams.load(Ordering::Relaxed) - garbage
            >= u64::from(5000 - super::MAX_DATAGRAMS_PER_SESSION_S)
    );
    // The next second, the speaker is heard again.
    sim.run_for(Duration::from_millis(1100));
    assert_eq!(sim.ingest.len(), 1);
    sim.speak(5);
    assert!(!sim.audio_of(id).is_empty(), "the session lost its audio");
}

#[test]
fn a_session_that_never_completes_ice_is_reaped_at_the_connect_timeout() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    let id = sim.clients[c].session;
    // The client vanishes before its first check.
    sim.clients.clear();
    sim.run_for(Duration::from_secs(29));
    assert_eq!(
        sim.ingest.len(),
        1,
        "reaped before the timeout: {:?}",
        sim.events
    );
    sim.run_for(Duration::from_secs(2));
    assert!(sim.ingest.is_empty());
    assert!(sim.events.iter().any(|e| matches!(
        e,
        RtcEvent::Closed { id: i, reason: "ice timeout", .. } if *i == id
    )));
    assert_eq!(sim.stats().sessions_timed_out.load(Ordering::Relaxed), 1);
    assert_eq!(sim.stats().sessions.load(Ordering::Relaxed), 0);
    assert!(sim.ingest.by_ufrag.is_empty());
    assert_eq!(sim.ingest.poll_timeout(), None);
}

#[test]
fn a_closed_sessions_routes_are_forgotten() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let id = sim.clients[c].session;
    let owner = sim.clients[c].participant;
    // WHIP DELETE by someone else does nothing; by the owner closes.
    sim.ingest.close(id, Some(ParticipantId(owner.0 ^ 1)));
    assert_eq!(sim.ingest.len(), 1);
    sim.ingest.close(id, Some(owner));
    sim.exchange();
    assert!(sim.events.iter().any(|e| matches!(
        e,
        RtcEvent::Closed { id: i, reason: "closed", .. } if *i == id
    )));
    assert!(sim.ingest.by_source.is_empty() && sim.ingest.by_ufrag.is_empty());
    let before = sim.stats().garbage_datagrams.load(Ordering::Relaxed);
    sim.speak(3);
    assert!(sim.stats().garbage_datagrams.load(Ordering::Relaxed) > before);
}

#[test]
fn on_loopback_only_this_hosts_own_addresses_are_answered() {
    let server = SocketAddr::from(([127, 0, 0, 1], 4000));
    let own = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    let mut sim = Sim::new(config(server, true), vec![own]);
    // A stock browser on this host: its interface address to 127.0.0.1.
    let c = sim.connect_client(SocketAddr::new(own, 5000), true);
    sim.run_until_connected();
    sim.speak(5);
    assert!(!sim.audio_of(sim.clients[c].session).is_empty());
    // A foreign host that knows the ufrag is still refused.
    let before = sim.stats().garbage_datagrams.load(Ordering::Relaxed);
    let mut other = Sim::new(config(server, true), vec![own]);
    other.connect_client(client_addr(9, 5000), true);
    other.run_for(Duration::from_secs(2));
    assert!(!other.clients[0].rtc.is_connected());
    assert!(other.stats().garbage_datagrams.load(Ordering::Relaxed) > 0);
    assert_eq!(
        sim.stats().garbage_datagrams.load(Ordering::Relaxed),
        before
    );
}

#[test]
fn return_audio_reaches_a_receiving_peer() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let id = sim.clients[c].session;
    for _ in 0..10 {
        let now = sim.now;
        sim.ingest.send_audio(now, id, &[0xfc, 0xff, 0xfe], 1);
        sim.run_for(Duration::from_millis(20));
    }
    assert_eq!(sim.stats().packets_out.load(Ordering::Relaxed), 10);
    assert!(sim.clients[c].heard >= 9, "heard {}", sim.clients[c].heard);
}

#[test]
fn frames_not_sent_move_the_return_timestamp_on() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let id = sim.clients[c].session;
    // Program frames 5, 6, then silence sent one frame in 20 (DTX): 26,
    // 46; then voice again from 47.
    for seq in [5, 6, 26, 46, 47, 48] {
        let now = sim.now;
        sim.ingest.send_audio(now, id, &[0xfc, 0xff, 0xfe], seq);
        sim.run_for(Duration::from_millis(20));
    }
    let at = &sim.clients[c].heard_at;
    assert_eq!(at.len(), 6, "{at:?}");
    let steps: Vec<u64> = at
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]) % (1 << 32))
        .collect();
    assert_eq!(steps, [960, 20 * 960, 20 * 960, 960, 960]);
}

#[test]
fn a_connected_peer_that_goes_silent_is_closed_as_disconnected() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let id = sim.clients[c].session;
    sim.clients.clear();
    sim.run_for(Duration::from_secs(20));
    assert!(sim.ingest.is_empty(), "{:?}", sim.events);
    assert!(sim.events.iter().any(|e| matches!(
        e,
        RtcEvent::Closed { id: i, reason: "disconnected", .. } if *i == id
    )));
    assert_eq!(sim.stats().sessions_timed_out.load(Ordering::Relaxed), 0);
}

#[test]
fn a_client_with_only_tcp_publishes_over_ice_tcp() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    // An active ICE-TCP candidate: port 9, the peer connects out.
    let c = sim.connect_tcp_client(client_addr(3, 9));
    sim.run_until_connected();
    sim.speak(20);
    assert!(sim.audio_of(sim.clients[c].session).len() >= 15);
    assert!(!sim.transports.is_empty());
    assert!(sim.transports.iter().all(|t| *t == Transport::Tcp));
    assert_eq!(sim.stats().garbage_datagrams.load(Ordering::Relaxed), 0);
}

#[test]
fn the_answer_offers_a_passive_tcp_candidate_beside_udp() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .build(sim.now);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().expect("offer");
    let info = sim
        .ingest
        .create(
            sim.now,
            SessionRequest {
                space: SpaceId(1),
                participant: ParticipantId(1),
                offer_sdp: offer.to_sdp_string(),
                audible: Arc::new(AtomicBool::new(true)),
                music: false,
            },
        )
        .expect("session");
    let sdp = info.answer_sdp;
    assert!(sdp.contains(" 10.0.0.1 4000 typ host"), "{sdp}");
    assert!(sdp.contains(" tcp "), "{sdp}");
    assert!(
        sdp.contains(" 10.0.0.1 4001 typ host tcptype passive"),
        "{sdp}"
    );
    // The offer asks for transport-wide congestion control (as Chrome's
    // does); the answer declines it, so no feedback every 50 ms.
    let offered = offer.to_sdp_string();
    assert!(offered.contains("transport-wide-cc"), "{offered}");
    assert!(!sdp.contains("transport-wide-cc"), "{sdp}");
    assert!(sdp.contains("urn:ietf:params:rtp-hdrext:sdes:mid"), "{sdp}");
}

#[test]
fn a_publishing_peer_gets_no_congestion_feedback() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    sim.connect_client(client_addr(2, 5000), false);
    sim.run_until_connected();
    let before = sim.transports.len();
    sim.speak(100);
    // 2 s of audio in: a receiver report or two, not 40 TWCC feedbacks.
    let sent = sim.transports.len() - before;
    assert!(sent <= 6, "{sent} datagrams to a publishing peer in 2 s");
}

#[test]
fn a_check_that_fails_integrity_teaches_no_route() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    let c = sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let ufrag = sim
        .ingest
        .by_ufrag
        .iter()
        .find(|(_, id)| **id == sim.clients[c].session)
        .map(|(u, _)| u.clone())
        .expect("ufrag");
    // An attacker who learned the ufrag (not the password) checks from
    // elsewhere, then sends DTLS from there.
    let attacker = client_addr(66, 6666);
    let now = sim.now;
    let mut check = binding_request(&format!("{ufrag}:evil"));
    // A MESSAGE-INTEGRITY that cannot be right.
    let len = u16::from_be_bytes([check[2], check[3]]) + 24;
    check[2..4].copy_from_slice(&len.to_be_bytes());
    check.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    check.extend_from_slice(&[0xab; 20]);
    sim.ingest
        .handle_datagram(now, Transport::Udp, attacker, SERVER, &check);
    let mut answered = false;
    while let Some(out) = sim.ingest.poll_output() {
        if let Output::Transmit(t) = out {
            answered |= t.destination == attacker;
        }
    }
    assert!(!answered, "a check without the password was answered");
    assert!(
        !sim.ingest
            .by_source
            .contains_key(&(Transport::Udp, attacker))
    );
    let before = sim.stats().garbage_datagrams.load(Ordering::Relaxed);
    let mut dtls = vec![23, 254, 253];
    dtls.extend_from_slice(&[0; 40]);
    sim.ingest
        .handle_datagram(now, Transport::Udp, attacker, SERVER, &dtls);
    assert_eq!(
        sim.stats().garbage_datagrams.load(Ordering::Relaxed),
        before + 1
    );
    // The real peer is unaffected.
    sim.speak(5);
    assert!(!sim.audio_of(sim.clients[c].session).is_empty());
}

#[test]
fn stale_timers_are_compacted_away_and_live_ones_kept() {
    let mut sim = Sim::new(config(SERVER, false), vec![]);
    sim.connect_client(client_addr(2, 5000), true);
    sim.run_until_connected();
    let live = sim.ingest.poll_timeout().expect("a timer");
    let id = sim.clients[0].session;
    let far = sim.now + Duration::from_secs(3600);
    for i in 0..1000 {
        sim.ingest
            .timers
            .push(Reverse((far + Duration::from_millis(i), id)));
    }
    sim.ingest.compact_timers();
    assert_eq!(sim.ingest.timers.len(), 1);
    assert_eq!(sim.ingest.poll_timeout(), Some(live));
    sim.speak(5);
    assert!(!sim.audio_of(id).is_empty());
}
