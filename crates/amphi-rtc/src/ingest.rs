//! The sans-IO ingest: every speaker's str0m `Rtc`, routed in O(1).
//!
//! Like `quinn-proto`, this state machine touches no socket and reads no
//! clock: the caller hands it datagrams ([`Ingest::handle_datagram`]),
//! commands (create, close, send) and the time ([`Ingest::handle_timeout`]),
//! and drains what it wants done with [`Ingest::poll_output`] (datagrams
//! to send, [`RtcEvent`]s for the media plane) and
//! [`Ingest::poll_timeout`] (when to call again). `engine.rs` is the thin
//! thread around it.
//!
//! **Routing.** A STUN message names its session by the local ICE ufrag in
//! its USERNAME (every session's local credentials are made here, so the map
//! ufrag → session is exact). Everything else (DTLS, SRTP) is routed by its
//! source address, learned when the session answered a STUN check from
//! there (str0m answers only checks that pass MESSAGE-INTEGRITY). Neither
//! lookup scans the sessions; a datagram neither finds is garbage.
//!
//! **The gate.** A session whose `audible` flag is false has its audio
//! dropped (and counted) here, so a muted, removed or off-stage participant
//! reaches nobody.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use bytes::Bytes;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Rtc};

use crate::hostaddr::OwnAddrs;
use crate::stun::{self, Kind};
use crate::{RtcError, RtcEvent, RtcStats, SessionId, SessionInfo, SessionRequest, sdp};

/// Most remote addresses remembered per session (ICE may try a few).
const MAX_SOURCES: usize = 8;
/// Datagrams one session takes per second, from all its sources: a
/// speaker sends about 55 (audio, RTCP, consent checks); past this the
/// rest of the second is dropped before str0m sees it, so a flood aimed at
/// one session (its address spoofed, or a broken peer) costs the thread a
/// lookup per datagram, not a decryption.
pub const MAX_DATAGRAMS_PER_SESSION_S: u32 = 500;
/// Timer entries per session (live and stale) before the heap is rebuilt.
const MAX_TIMERS_PER_SESSION: usize = 16;

/// The transport a datagram came on or leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// One RFC 4571 frame of an ICE-TCP connection.
    Tcp,
}

impl Transport {
    fn proto(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        }
    }

    fn from_proto(p: Protocol) -> Transport {
        match p {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        }
    }
}

/// Settings of the ingest state machine.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The UDP host candidate every answer offers (the address peers send
    /// to, and the `destination` the shell passes for UDP datagrams).
    pub udp: SocketAddr,
    /// A passive ICE-TCP host candidate, if the shell listens for one.
    pub tcp: Option<SocketAddr>,
    /// The socket is bound to loopback: only this host's own addresses are
    /// answered (a stock browser on this host sends from its interface
    /// address to 127.0.0.1).
    pub loopback: bool,
    /// A session that does not connect within this is closed.
    pub connect_timeout: Duration,
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Average bitrate speakers are asked not to exceed, mono, 20 ms
    /// packets ([`sdp::with_opus_preferences`]).
    pub speaker_max_bitrate: u32,
}

/// Which source addresses are this host's own (the loopback rule).
pub trait HostAddrs: Send {
    /// Whether `ip` is one of this host's addresses at `now`.
    fn is_own(&mut self, ip: IpAddr, now: Instant) -> bool;
}

impl HostAddrs for OwnAddrs {
    fn is_own(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.contains(ip, now)
    }
}

/// A datagram (or RFC 4571 frame) to send.
#[derive(Debug)]
pub struct Transmit {
    pub transport: Transport,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// What the ingest wants done.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes.
    Transmit(Transmit),
    /// Tell the media plane.
    Event(RtcEvent),
}

struct Session {
    space: SpaceId,
    participant: ParticipantId,
    rtc: Rtc,
    audible: Arc<AtomicBool>,
    ufrag: String,
    /// Closed as "ice timeout" at this instant unless connected.
    deadline: Instant,
    connected: bool,
    /// Where return audio goes: the audio mid if the peer receives.
    send_mid: Option<Mid>,
    /// RTP timestamp of the last return audio frame sent, and its program
    /// frame number (`None`: none sent yet).
    return_ts: u64,
    return_seq: Option<u64>,
    /// str0m's next timeout, as registered in the timer heap.
    timeout: Option<Instant>,
    /// In the ready queue (has output to drain).
    queued: bool,
    /// Remote addresses routed to this session.
    sources: Vec<(Transport, SocketAddr)>,
    /// The start of the current one-second budget window and the
    /// datagrams taken in it.
    window: (Instant, u32),
}

/// The ingest state machine. See the module documentation.
pub struct Ingest {
    cfg: IngestConfig,
    stats: Arc<RtcStats>,
    provider: Arc<str0m::config::CryptoProvider>,
    host: Box<dyn HostAddrs>,
    sessions: HashMap<SessionId, Session>,
    by_ufrag: HashMap<String, SessionId>,
    by_source: HashMap<(Transport, SocketAddr), SessionId>,
    /// (instant, session): str0m timeouts and connect deadlines; stale
    /// entries are skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Sessions with output to drain, in order.
    ready: VecDeque<SessionId>,
    /// `Closed` events not yet polled.
    closed: VecDeque<RtcEvent>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl Ingest {
    /// A new ingest; the loopback rule asks this host's interfaces.
    pub fn new(cfg: IngestConfig, stats: Arc<RtcStats>) -> Ingest {
        Ingest::with_host_addrs(cfg, stats, Box::new(OwnAddrs::default()))
    }

    /// A new ingest with its own idea of this host's addresses (tests).
    pub fn with_host_addrs(
        cfg: IngestConfig,
        stats: Arc<RtcStats>,
        host: Box<dyn HostAddrs>,
    ) -> Ingest {
        Ingest {
            cfg,
            stats,
            provider: Arc::new(str0m::crypto::from_feature_flags()),
            host,
            sessions: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_source: HashMap::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            closed: VecDeque::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<RtcStats> {
        &self.stats
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// No session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Opens a session from a WHIP offer and returns the answer.
    pub fn create(&mut self, now: Instant, req: SessionRequest) -> Result<SessionInfo, RtcError> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(RtcError::TooManySessions);
        }
        let music = req.music;
        let summary = sdp::summarize_offer(&req.offer_sdp)?;
        let offer = SdpOffer::from_sdp_string(&req.offer_sdp)
            .map_err(|e| RtcError::BadSdp(e.to_string()))?;
        let creds = loop {
            let c = IceCreds::new();
            if !self.by_ufrag.contains_key(&c.ufrag) {
                break c;
            }
        };
        let ufrag = creds.ufrag.clone();
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds)
            .set_crypto_provider(self.provider.clone())
            .clear_codecs()
            .enable_opus(true, false)
            // No transport-wide congestion control: its feedback is a
            // packet from the node every 50 ms per session (a fifth of a
            // 1,000-speaker node's sends and syscalls) for a bandwidth
            // estimate nobody reads: the speakers' Opus has a fixed
            // bitrate, the return audio too. Offers that carry it get an
            // answer without it.
            .set_extension_map(return_extensions())
            .build(now);
        let udp =
            Candidate::host(self.cfg.udp, "udp").map_err(|e| RtcError::Engine(e.to_string()))?;
        rtc.add_local_candidate(udp);
        if let Some(tcp) = self.cfg.tcp {
            let c = Candidate::builder()
                .tcp()
                .host(tcp)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| RtcError::Engine(e.to_string()))?;
            rtc.add_local_candidate(c);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RtcError::BadSdp(e.to_string()))?;
        let id = loop {
            let id = SessionId(rand::random());
            if !self.sessions.contains_key(&id) {
                break id;
            }
        };
        let deadline = now + self.cfg.connect_timeout;
        self.timers.push(Reverse((deadline, id)));
        self.by_ufrag.insert(ufrag.clone(), id);
        self.sessions.insert(
            id,
            Session {
                space: req.space,
                participant: req.participant,
                rtc,
                audible: req.audible,
                ufrag,
                deadline,
                connected: false,
                send_mid: None,
                return_ts: u64::from(rand::random::<u32>()),
                return_seq: None,
                timeout: None,
                queued: false,
                sources: Vec::new(),
                window: (now, 0),
            },
        );
        self.mark_ready(id);
        self.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.count_sessions();
        Ok(SessionInfo {
            id,
            answer_sdp: if music {
                sdp::with_opus_preferences_for(
                    &sdp::without_trickle(&answer.to_sdp_string()),
                    crate::MUSIC_MAX_BITRATE,
                    true,
                )
            } else {
                sdp::with_opus_preferences(
                    &sdp::without_trickle(&answer.to_sdp_string()),
                    self.cfg.speaker_max_bitrate,
                )
            },
            sends_return_audio: summary.receives_audio,
        })
    }

    /// Ends a session (if `owner` is given, only if it is the owner's).
    pub fn close(&mut self, id: SessionId, owner: Option<ParticipantId>) {
        if self
            .sessions
            .get(&id)
            .is_some_and(|s| owner.is_none_or(|o| o == s.participant))
        {
            self.end(id, "closed");
        }
    }

    /// Ends every session of a participant.
    pub fn close_participant(&mut self, space: SpaceId, participant: ParticipantId) {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.space == space && s.participant == participant)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end(id, "removed");
        }
    }

    /// Ends every session.
    pub fn shutdown(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end(id, "shutdown");
        }
    }

    /// Queues one 20 ms Opus frame of return audio, program frame `seq`,
    /// to a connected session whose peer receives audio. Its RTP
    /// timestamp is 960 (20 ms) per program frame past the last one sent,
    /// so frames not sent (silence: DTX) leave a gap in time, not in the
    /// RTP sequence, as a DTX sender's do.
    pub fn send_audio(&mut self, now: Instant, id: SessionId, opus: &[u8], seq: u64) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.connected {
            return;
        }
        let Some(mid) = s.send_mid else { return };
        let frames = match s.return_seq {
            None => 0,
            // At most a minute's worth of frames (a gap that long is a
            // restart of the numbering, not silence).
            Some(last) if seq > last => (seq - last).min(3_000),
            Some(_) => 1,
        };
        let ts = s.return_ts.wrapping_add(frames * 960);
        s.return_ts = ts;
        s.return_seq = Some(seq);
        let Some(writer) = s.rtc.writer(mid) else {
            return;
        };
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        if let Some(pt) = pt
            && writer
                .write(
                    pt,
                    now,
                    MediaTime::new(ts, Frequency::FORTY_EIGHT_KHZ),
                    opus.to_vec(),
                )
                .is_ok()
        {
            self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
            self.mark_ready(id);
        }
    }

    /// One datagram (or one RFC 4571 frame) from `source`, received on the
    /// local candidate address `destination`. Returns whether it reached a
    /// session (`false`: counted as garbage, or it ended its session).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // Bound to loopback, only this host's own peers are answered: a
        // stock browser never gathers a loopback candidate and sends from
        // its interface address to 127.0.0.1. Anything else cannot be
        // answered from loopback.
        if self.cfg.loopback && !source.ip().is_loopback() && !self.host.is_own(source.ip(), now) {
            self.garbage();
            return false;
        }
        let id = match stun::classify(bytes) {
            Kind::Stun { ufrag: Some(u) } => self.by_ufrag.get(u),
            Kind::Stun { ufrag: None } | Kind::Other => self.by_source.get(&(transport, source)),
        };
        let Some(&id) = id else {
            self.garbage();
            return false;
        };
        let Ok(contents) = bytes.try_into() else {
            self.garbage();
            return false;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            self.garbage();
            return false;
        };
        if now.saturating_duration_since(s.window.0) >= Duration::from_secs(1) {
            s.window = (now, 0);
        }
        if s.window.1 >= MAX_DATAGRAMS_PER_SESSION_S {
            self.garbage();
            return false;
        }
        s.window.1 += 1;
        let input = Input::Receive(
            now,
            Receive {
                proto: transport.proto(),
                source,
                destination,
                contents,
            },
        );
        if s.rtc.handle_input(input).is_err() {
            self.end(id, "rtc error");
            return false;
        }
        self.mark_ready(id);
        true
    }

    /// Advances time: str0m timers that are due, connect deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if !s.connected && now >= s.deadline {
                self.stats
                    .sessions_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                self.end(id, "ice timeout");
                continue;
            }
            if s.timeout.is_some_and(|st| st <= now) {
                s.timeout = None;
                if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                    self.end(id, "rtc error");
                    continue;
                }
                self.mark_ready(id);
            }
        }
    }

    /// When [`Ingest::handle_timeout`] is next due. Call after draining
    /// [`Ingest::poll_output`].
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            let live = self
                .sessions
                .get(&id)
                .is_some_and(|s| s.timeout == Some(t) || (!s.connected && s.deadline == t));
            if live {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// The next thing to do, or `None` when there is nothing until new
    /// input or [`Ingest::poll_timeout`].
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(ev) = self.closed.pop_front() {
                return Some(Output::Event(ev));
            }
            let id = *self.ready.front()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                self.ready.pop_front();
                continue;
            };
            let out = match s.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    self.unqueue_front();
                    self.end(id, "rtc error");
                    continue;
                }
            };
            match out {
                str0m::Output::Timeout(t) => {
                    if s.timeout != Some(t) {
                        s.timeout = Some(t);
                        self.timers.push(Reverse((t, id)));
                        if self.timers.len() > MAX_TIMERS_PER_SESSION * self.sessions.len() + 64 {
                            self.compact_timers();
                        }
                    }
                    self.unqueue_front();
                }
                str0m::Output::Transmit(t) => {
                    let transport = Transport::from_proto(t.proto);
                    self.learn(id, transport, t.destination);
                    return Some(Output::Transmit(Transmit {
                        transport,
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                str0m::Output::Event(ev) => {
                    if let Some(ev) = self.event(id, ev) {
                        return Some(Output::Event(ev));
                    }
                }
            }
        }
    }

    /// Rebuilds the timer heap from the live timers only: stale entries
    /// later than a session's current timeout would otherwise wait for
    /// their time to be dropped.
    fn compact_timers(&mut self) {
        self.timers.clear();
        for (id, s) in &self.sessions {
            if let Some(t) = s.timeout {
                self.timers.push(Reverse((t, *id)));
            }
            if !s.connected {
                self.timers.push(Reverse((s.deadline, *id)));
            }
        }
    }

    fn garbage(&self) {
        self.stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
    }

    fn count_sessions(&self) {
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
    }

    fn mark_ready(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id)
            && !s.queued
        {
            s.queued = true;
            self.ready.push_back(id);
        }
    }

    fn unqueue_front(&mut self) {
        if let Some(id) = self.ready.pop_front()
            && let Some(s) = self.sessions.get_mut(&id)
        {
            s.queued = false;
        }
    }

    /// Routes `(transport, addr)` to session `id`: it sent there, which
    /// str0m (ICE-lite) does only after a check from there passed.
    fn learn(&mut self, id: SessionId, transport: Transport, addr: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let key = (transport, addr);
        if s.sources.contains(&key) {
            return;
        }
        if s.sources.len() >= MAX_SOURCES {
            let old = s.sources.remove(0);
            if self.by_source.get(&old) == Some(&id) {
                self.by_source.remove(&old);
            }
        }
        s.sources.push(key);
        if let Some(prev) = self.by_source.insert(key, id)
            && prev != id
            && let Some(p) = self.sessions.get_mut(&prev)
        {
            p.sources.retain(|k| *k != key);
        }
    }

    /// Closes a session now; its `Closed` event comes out of
    /// [`Ingest::poll_output`].
    fn end(&mut self, id: SessionId, reason: &'static str) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        s.rtc.disconnect();
        self.by_ufrag.remove(&s.ufrag);
        for key in &s.sources {
            if self.by_source.get(key) == Some(&id) {
                self.by_source.remove(key);
            }
        }
        self.closed.push_back(RtcEvent::Closed {
            id,
            space: s.space,
            participant: s.participant,
            reason,
        });
        self.count_sessions();
    }

    /// Turns a str0m event into what the media plane needs, if anything.
    fn event(&mut self, id: SessionId, ev: Event) -> Option<RtcEvent> {
        let s = self.sessions.get_mut(&id)?;
        match ev {
            Event::Connected => {
                s.connected = true;
                Some(RtcEvent::Connected {
                    id,
                    space: s.space,
                    participant: s.participant,
                })
            }
            // Before the first connection, str0m's ICE-lite agent gives up
            // on the offer's candidate pairs that sent no check yet; a
            // check may still come from another address (peer-reflexive),
            // so only the connect deadline closes a session that never
            // connected.
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) if s.connected => {
                self.end(id, "disconnected");
                None
            }
            Event::MediaAdded(m)
                if m.kind == MediaKind::Audio
                    && matches!(m.direction, Direction::SendRecv | Direction::SendOnly) =>
            {
                s.send_mid = Some(m.mid);
                None
            }
            Event::MediaData(d) => {
                self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                if !s.audible.load(Ordering::Acquire) {
                    self.stats.dropped_inaudible.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Some(RtcEvent::Audio {
                    id,
                    space: s.space,
                    participant: s.participant,
                    rtp_seq: d.seq_range.start().as_u16(),
                    rtp_ts: d.time.numer() as u32,
                    payload: Bytes::from_owner(d.data),
                    received_at: d.network_time,
                })
            }
            _ => None,
        }
    }
}

/// The RTP header extensions a session answers with: Chrome's standard
/// audio ones (`ExtensionMap::standard`) but transport-wide sequence
/// numbers (see where it is used).
fn return_extensions() -> str0m::rtp::ExtensionMap {
    use str0m::rtp::{Extension, ExtensionMap};
    let mut exts = ExtensionMap::empty();
    exts.set(1, Extension::AudioLevel);
    exts.set(2, Extension::AbsoluteSendTime);
    exts.set(4, Extension::RtpMid);
    exts
}

#[cfg(test)]
mod tests;
