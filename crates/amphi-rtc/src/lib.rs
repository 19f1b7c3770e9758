//! WHIP ingest on str0m: every speaker's WebRTC session on one UDP socket.
//!
//! Split like quinn: [`Ingest`] (`ingest.rs`) is the sans-IO state machine
//! around every session's str0m `Rtc`: it routes each datagram to its
//! session in O(1) (STUN by the local ICE ufrag, the rest by source
//! address), drives timeouts on the time it is given, and turns received
//! Opus into [`RtcEvent::Audio`]. [`RtcEngine`] (`engine.rs`) is the thin
//! thread that owns the UDP socket around it.
//! **The ingest gate lives in `Ingest`**: a session whose `audible` flag is
//! false has its audio dropped (and counted) before it leaves the RTC
//! thread, so a muted, removed or off-stage participant reaches nobody.

mod batch;
mod engine;
pub mod framing;
mod hostaddr;
pub mod ingest;
mod sdp;
pub mod stun;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

pub use engine::RtcEngine;
pub use ingest::Ingest;
pub use sdp::{OfferSummary, summarize_offer, without_trickle};

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct RtcConfig {
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// ICE-TCP (RFC 6544 passive host candidates, RFC 4571 framing), so a
    /// speaker whose UDP is blocked can still publish.
    pub ice_tcp: IceTcp,
    /// Address to advertise in candidates when `bind` is a wildcard.
    pub advertise_ip: Option<IpAddr>,
    /// A session that does not connect within this is closed.
    pub connect_timeout: Duration,
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Average bitrate speakers are asked not to exceed (the program's),
    /// with mono 20 ms packets, so their packets can be passed through.
    pub speaker_max_bitrate: u32,
}

/// A session that has not completed ICE and DTLS after this many seconds
/// is closed: a browser on a working path connects in 1–2 s, and an offer
/// flood's half-made sessions must not pile up for long.
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 8;

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ice_tcp: IceTcp::Off,
            advertise_ip: None,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_S),
            max_sessions: 500,
            speaker_max_bitrate: 32_000,
        }
    }
}

/// Where ICE-TCP connections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceTcp {
    /// UDP only: answers carry no TCP candidate.
    Off,
    /// The engine listens on this address itself (its own port).
    Listen(SocketAddr),
    /// Another server accepts the connections on this TCP port (the
    /// node's HTTP front door, which tells them apart by their first bytes
    /// with [`framing::is_ice_tcp_preface`]) and hands each over with
    /// [`RtcHandle::adopt_tcp`]. The candidate is the UDP address's IP with
    /// this port.
    Adopted { port: u16 },
}

/// Identifier of one WHIP session, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = RtcError;
    fn from_str(s: &str) -> Result<Self, RtcError> {
        if s.len() != 16 {
            return Err(RtcError::UnknownSession);
        }
        u64::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| RtcError::UnknownSession)
    }
}

/// A request to open a session from a WHIP offer.
#[derive(Debug)]
pub struct SessionRequest {
    pub space: SpaceId,
    pub participant: ParticipantId,
    pub offer_sdp: String,
    /// The ingest gate, set by the control plane from the room rules.
    pub audible: Arc<AtomicBool>,
    /// A music space: the answer asks for stereo at [`MUSIC_MAX_BITRATE`].
    pub music: bool,
}

/// The average bitrate a music space's sources are asked for (stereo).
pub const MUSIC_MAX_BITRATE: u32 = 128_000;

/// An opened session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: SessionId,
    pub answer_sdp: String,
    /// Whether the peer can receive audio (its audio m-line is sendrecv).
    pub sends_return_audio: bool,
}

/// What the engine tells the media plane.
#[derive(Debug, Clone)]
pub enum RtcEvent {
    /// ICE and DTLS are up.
    Connected {
        id: SessionId,
        space: SpaceId,
        participant: ParticipantId,
    },
    /// One Opus packet from an audible participant.
    Audio {
        id: SessionId,
        space: SpaceId,
        participant: ParticipantId,
        rtp_seq: u16,
        rtp_ts: u32,
        payload: Bytes,
        received_at: Instant,
    },
    /// The session is gone.
    Closed {
        id: SessionId,
        space: SpaceId,
        participant: ParticipantId,
        reason: &'static str,
    },
}

/// Why the engine refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RtcError {
    #[error("invalid SDP offer: {0}")]
    BadSdp(String),
    #[error("the offer has no Opus audio: amphi takes Opus at 48 kHz")]
    NoOpus,
    #[error("too many WebRTC sessions on this node")]
    TooManySessions,
    #[error("no such session")]
    UnknownSession,
    #[error("the WebRTC engine is shutting down")]
    ShuttingDown,
    #[error("WebRTC: {0}")]
    Engine(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of the engine.
#[derive(Debug, Default)]
pub struct RtcStats {
    pub sessions: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_timed_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_in: AtomicU64,
    pub dropped_inaudible: AtomicU64,
    pub garbage_datagrams: AtomicU64,
    pub events_dropped: AtomicU64,
    pub packets_out: AtomicU64,
    pub tcp_connections: AtomicU64,
}

impl RtcStats {
    /// The counters for `/metrics`: name, type (`"counter"` or
    /// `"gauge"`), help and value.
    pub fn rows(&self) -> [(&'static str, &'static str, &'static str, u64); 11] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "amphi_rtc_sessions",
                "gauge",
                "Open WHIP sessions.",
                l(&self.sessions),
            ),
            (
                "amphi_rtc_sessions_opened_total",
                "counter",
                "WHIP sessions opened.",
                l(&self.sessions_opened),
            ),
            (
                "amphi_rtc_sessions_timed_out_total",
                "counter",
                "Sessions that never connected.",
                l(&self.sessions_timed_out),
            ),
            (
                "amphi_rtc_datagrams_total",
                "counter",
                "UDP datagrams received.",
                l(&self.datagrams_in),
            ),
            (
                "amphi_rtc_bytes_total",
                "counter",
                "UDP bytes received.",
                l(&self.bytes_in),
            ),
            (
                "amphi_rtc_audio_packets_total",
                "counter",
                "Audio packets received from speakers.",
                l(&self.packets_in),
            ),
            (
                "amphi_rtc_dropped_inaudible_total",
                "counter",
                "Audio packets dropped at ingest: muted, removed or off stage.",
                l(&self.dropped_inaudible),
            ),
            (
                "amphi_rtc_garbage_datagrams_total",
                "counter",
                "Datagrams matching no session (dropped).",
                l(&self.garbage_datagrams),
            ),
            (
                "amphi_rtc_events_dropped_total",
                "counter",
                "Events dropped because the mixer was behind.",
                l(&self.events_dropped),
            ),
            (
                "amphi_rtc_packets_out_total",
                "counter",
                "Return-audio packets sent to speakers.",
                l(&self.packets_out),
            ),
            (
                "amphi_rtc_tcp_connections_total",
                "counter",
                "ICE-TCP connections accepted.",
                l(&self.tcp_connections),
            ),
        ]
    }
}

pub(crate) enum Cmd {
    Create {
        req: SessionRequest,
        reply: tokio::sync::oneshot::Sender<Result<SessionInfo, RtcError>>,
    },
    Close {
        id: SessionId,
        owner: Option<ParticipantId>,
    },
    CloseParticipant {
        space: SpaceId,
        participant: ParticipantId,
    },
    Send {
        id: SessionId,
        opus: Bytes,
        seq: u64,
    },
    AdoptTcp {
        stream: std::net::TcpStream,
        peer: SocketAddr,
    },
    Shutdown,
}

/// A cloneable handle to the engine.
#[derive(Clone)]
pub struct RtcHandle {
    tx: Sender<Cmd>,
    stats: Arc<RtcStats>,
}

impl fmt::Debug for RtcHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RtcHandle")
    }
}

impl RtcHandle {
    /// Validates an offer and opens a session; returns the answer.
    pub async fn create_session(&self, req: SessionRequest) -> Result<SessionInfo, RtcError> {
        // Cheap checks first, so a bad offer never reaches the RTC thread.
        sdp::summarize_offer(&req.offer_sdp)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .try_send(Cmd::Create { req, reply: tx })
            .map_err(|_| RtcError::TooManySessions)?;
        rx.await.map_err(|_| RtcError::ShuttingDown)?
    }

    /// Ends a session.
    pub fn close_session(&self, id: SessionId) {
        let _ = self.tx.send(Cmd::Close { id, owner: None });
    }

    /// Ends a session if it belongs to `owner` (WHIP DELETE).
    pub fn close_session_of(&self, id: SessionId, owner: ParticipantId) {
        let _ = self.tx.send(Cmd::Close {
            id,
            owner: Some(owner),
        });
    }

    /// Ends every session of a participant (removal, leaving the stage).
    pub fn close_participant(&self, space: SpaceId, participant: ParticipantId) {
        let _ = self.tx.send(Cmd::CloseParticipant { space, participant });
    }

    /// Sends one 20 ms Opus frame, program frame `seq`, to a session
    /// that receives audio (see [`Ingest::send_audio`]).
    pub fn send_audio(&self, id: SessionId, opus: Bytes, seq: u64) {
        let _ = self.tx.try_send(Cmd::Send { id, opus, seq });
    }

    /// Hands over an accepted ICE-TCP connection (with
    /// [`IceTcp::Adopted`]): the bytes already read from it are not lost
    /// only if the caller peeked them (`MSG_PEEK`) rather than read them.
    /// Refused (dropped, counted as garbage) without `IceTcp::Adopted`.
    pub fn adopt_tcp(&self, stream: std::net::TcpStream, peer: SocketAddr) {
        let _ = self.tx.try_send(Cmd::AdoptTcp { stream, peer });
    }

    /// The engine's counters.
    pub fn stats(&self) -> &RtcStats {
        &self.stats
    }
}

pub(crate) fn channel() -> (Sender<Cmd>, Receiver<Cmd>) {
    crossbeam_channel::bounded(4096)
}
