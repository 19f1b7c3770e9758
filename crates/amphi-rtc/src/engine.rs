//! The RTC thread: one UDP socket, every session's str0m `Rtc`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::{
    Cmd, RtcConfig, RtcError, RtcEvent, RtcHandle, RtcStats, SessionId, SessionInfo,
    SessionRequest, channel, sdp,
};

/// Longest the thread sleeps in `recv` before looking at commands again.
const MAX_WAIT: Duration = Duration::from_millis(5);

struct Session {
    id: SessionId,
    space: SpaceId,
    participant: ParticipantId,
    rtc: Rtc,
    audible: Arc<std::sync::atomic::AtomicBool>,
    created: Instant,
    connected: bool,
    /// Where to send return audio: the audio mid if it can send.
    send_mid: Option<Mid>,
    return_ts: u64,
    timeout: Instant,
    dead: Option<&'static str>,
}

/// The engine: its thread and its socket address.
pub struct RtcEngine {
    handle: RtcHandle,
    local: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RtcEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcEngine")
            .field("local", &self.local)
            .finish()
    }
}

impl RtcEngine {
    /// Binds the socket and starts the thread. Events arrive on the
    /// returned receiver.
    pub fn start(cfg: RtcConfig) -> Result<(RtcEngine, Receiver<RtcEvent>), RtcError> {
        let socket = UdpSocket::bind(cfg.bind)?;
        let local = socket.local_addr()?;
        let advertised = match cfg.advertise_ip {
            Some(ip) => SocketAddr::new(ip, local.port()),
            None if local.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], local.port())),
            None => local,
        };
        let (tx, rx) = channel();
        let (ev_tx, ev_rx) = crossbeam_channel::bounded(8192);
        let stats = Arc::new(RtcStats::default());
        let handle = RtcHandle {
            tx,
            stats: stats.clone(),
        };
        let provider = Arc::new(str0m::crypto::from_feature_flags());
        let mut thread = Thread {
            socket,
            local,
            advertised,
            cfg,
            rx,
            events: ev_tx,
            stats,
            sessions: Vec::new(),
            by_source: HashMap::new(),
            own: crate::hostaddr::OwnAddrs::default(),
            provider,
        };
        let join = std::thread::Builder::new()
            .name("amphi-rtc".into())
            .spawn(move || thread.run())?;
        Ok((
            RtcEngine {
                handle,
                local,
                thread: Some(join),
            },
            ev_rx,
        ))
    }

    /// A handle for the HTTP side and the mixer.
    pub fn handle(&self) -> RtcHandle {
        self.handle.clone()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Closes every session and stops the thread.
    pub fn shutdown(mut self) {
        let _ = self.handle.tx.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Thread {
    socket: UdpSocket,
    local: SocketAddr,
    advertised: SocketAddr,
    cfg: RtcConfig,
    rx: Receiver<Cmd>,
    events: Sender<RtcEvent>,
    stats: Arc<RtcStats>,
    sessions: Vec<Session>,
    /// Remote address → session, learned once a datagram was accepted.
    by_source: HashMap<SocketAddr, SessionId>,
    /// This host's interface addresses (sources accepted on loopback).
    own: crate::hostaddr::OwnAddrs,
    provider: Arc<str0m::config::CryptoProvider>,
}

impl Thread {
    fn run(&mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                if matches!(cmd, Cmd::Shutdown) {
                    for s in &mut self.sessions {
                        s.dead = Some("shutdown");
                    }
                    self.reap();
                    return;
                }
                self.command(cmd);
            }
            let now = Instant::now();
            let mut next = now + MAX_WAIT;
            for i in 0..self.sessions.len() {
                self.drive(i, now);
                next = next.min(self.sessions[i].timeout);
            }
            self.reap();
            let wait = next
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), MAX_WAIT);
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => self.datagram(&buf[..n], source),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // ICMP errors (e.g. port unreachable after a peer left)
                    // surface here on Linux; they are not fatal.
                    tracing::debug!(error = %e, "udp recv");
                }
            }
            let now = Instant::now();
            for i in 0..self.sessions.len() {
                if self.sessions[i].timeout <= now {
                    let s = &mut self.sessions[i];
                    if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                        s.dead = Some("rtc error");
                    }
                }
            }
        }
    }

    fn emit(&self, ev: RtcEvent) {
        if let Err(TrySendError::Full(_)) = self.events.try_send(ev) {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn datagram(&mut self, data: &[u8], source: SocketAddr) {
        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // Bound to loopback, only this host's own peers are answered. A
        // stock browser never gathers a loopback candidate: it sends from
        // its own interface address (e.g. 192.0.2.2) to 127.0.0.1, and the
        // kernel delivers that over `lo`. Such a source is this host, so it
        // is accepted; anything else cannot be answered from loopback.
        if self.local.ip().is_loopback()
            && !source.ip().is_loopback()
            && !self.own.contains(source.ip(), Instant::now())
        {
            self.stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(contents) = data.try_into() else {
            self.stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.advertised,
                contents,
            },
        );
        let idx = self
            .by_source
            .get(&source)
            .and_then(|id| self.sessions.iter().position(|s| s.id == *id))
            .filter(|i| self.sessions[*i].rtc.accepts(&input))
            .or_else(|| self.sessions.iter().position(|s| s.rtc.accepts(&input)));
        let Some(i) = idx else {
            self.stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let s = &mut self.sessions[i];
        self.by_source.insert(source, s.id);
        if s.rtc.handle_input(input).is_err() {
            s.dead = Some("rtc error");
        }
        self.drive(i, Instant::now());
    }

    /// Drains a session's outputs: transmits, events, the next timeout.
    fn drive(&mut self, i: usize, now: Instant) {
        loop {
            let s = &mut self.sessions[i];
            if s.dead.is_some() {
                return;
            }
            if !s.connected && now.duration_since(s.created) > self.cfg.connect_timeout {
                s.dead = Some("ice timeout");
                self.stats
                    .sessions_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            let out = match s.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    s.dead = Some("rtc error");
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    s.timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(ev) => self.event(i, ev),
            }
        }
    }

    fn event(&mut self, i: usize, ev: Event) {
        let s = &mut self.sessions[i];
        match ev {
            Event::Connected => {
                s.connected = true;
                let ev = RtcEvent::Connected {
                    id: s.id,
                    space: s.space,
                    participant: s.participant,
                };
                self.emit(ev);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                s.dead = Some("disconnected");
            }
            Event::MediaAdded(m)
                if m.kind == MediaKind::Audio
                    && matches!(m.direction, Direction::SendRecv | Direction::SendOnly) =>
            {
                s.send_mid = Some(m.mid);
            }
            Event::MediaData(d) => {
                self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                if !s.audible.load(Ordering::Acquire) {
                    self.stats.dropped_inaudible.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let ev = RtcEvent::Audio {
                    id: s.id,
                    space: s.space,
                    participant: s.participant,
                    rtp_seq: d.seq_range.start().as_u16(),
                    rtp_ts: d.time.numer() as u32,
                    payload: Bytes::copy_from_slice(&d.data),
                    received_at: d.network_time,
                };
                self.emit(ev);
            }
            _ => {}
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Create { req, reply } => {
                let _ = reply.send(self.create(req));
            }
            Cmd::Close { id, owner } => {
                for s in &mut self.sessions {
                    if s.id == id && owner.is_none_or(|o| o == s.participant) {
                        s.dead = Some("closed");
                    }
                }
                self.reap();
            }
            Cmd::CloseParticipant { space, participant } => {
                for s in &mut self.sessions {
                    if s.space == space && s.participant == participant {
                        s.dead = Some("removed");
                    }
                }
                self.reap();
            }
            Cmd::Send { id, opus } => {
                if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id && s.connected) {
                    let Some(mid) = s.send_mid else { return };
                    let ts = s.return_ts;
                    s.return_ts += 960;
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
                                Instant::now(),
                                MediaTime::new(ts, Frequency::FORTY_EIGHT_KHZ),
                                opus.to_vec(),
                            )
                            .is_ok()
                    {
                        self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Cmd::Shutdown => {}
        }
    }

    fn create(&mut self, req: SessionRequest) -> Result<SessionInfo, RtcError> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(RtcError::TooManySessions);
        }
        let summary = sdp::summarize_offer(&req.offer_sdp)?;
        let offer = SdpOffer::from_sdp_string(&req.offer_sdp)
            .map_err(|e| RtcError::BadSdp(e.to_string()))?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_crypto_provider(self.provider.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        let candidate =
            Candidate::host(self.advertised, "udp").map_err(|e| RtcError::Engine(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RtcError::BadSdp(e.to_string()))?;
        let id = SessionId(rand::random());
        self.sessions.push(Session {
            id,
            space: req.space,
            participant: req.participant,
            rtc,
            audible: req.audible,
            created: now,
            connected: false,
            send_mid: None,
            return_ts: rand::random::<u32>() as u64,
            timeout: now,
            dead: None,
        });
        self.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        Ok(SessionInfo {
            id,
            answer_sdp: answer.to_sdp_string(),
            sends_return_audio: summary.receives_audio,
        })
    }

    fn reap(&mut self) {
        let mut i = 0;
        while i < self.sessions.len() {
            if let Some(reason) = self.sessions[i].dead {
                let mut s = self.sessions.swap_remove(i);
                s.rtc.disconnect();
                self.by_source.retain(|_, id| *id != s.id);
                self.emit(RtcEvent::Closed {
                    id: s.id,
                    space: s.space,
                    participant: s.participant,
                    reason,
                });
            } else {
                i += 1;
            }
        }
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
    }
}
