//! The RTC thread: the thin socket loop around the sans-IO [`Ingest`].
//!
//! It owns the UDP socket, receives datagrams and commands, hands them and
//! the time to the ingest, sends its transmits and forwards its events.
//! Every decision (routing, the gate, timeouts) is the ingest's.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::ingest::{Ingest, IngestConfig, Output, Transport};
use crate::{Cmd, RtcConfig, RtcError, RtcEvent, RtcHandle, RtcStats, channel};

/// Longest the thread sleeps in `recv` before looking at commands again.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// Shortest wait, so a timer due now cannot spin the loop.
const MIN_WAIT: Duration = Duration::from_millis(1);

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
        let ingest = Ingest::new(
            IngestConfig {
                udp: advertised,
                tcp: None,
                loopback: local.ip().is_loopback(),
                connect_timeout: cfg.connect_timeout,
                max_sessions: cfg.max_sessions,
            },
            stats,
        );
        let mut thread = Thread {
            socket,
            advertised,
            rx,
            events: ev_tx,
            ingest,
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
    /// The UDP candidate address (the `destination` of every datagram).
    advertised: SocketAddr,
    rx: Receiver<Cmd>,
    events: Sender<RtcEvent>,
    ingest: Ingest,
}

impl Thread {
    fn run(&mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                if matches!(cmd, Cmd::Shutdown) {
                    self.ingest.shutdown();
                    self.flush();
                    return;
                }
                self.command(cmd);
            }
            let now = Instant::now();
            self.ingest.handle_timeout(now);
            self.flush();
            let wait = self
                .ingest
                .poll_timeout()
                .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
                .clamp(MIN_WAIT, MAX_WAIT);
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    self.ingest.handle_datagram(
                        Instant::now(),
                        Transport::Udp,
                        source,
                        self.advertised,
                        &buf[..n],
                    );
                    self.flush();
                }
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
        }
    }

    /// Does what the ingest asks: sends, forwards events.
    fn flush(&mut self) {
        while let Some(out) = self.ingest.poll_output() {
            match out {
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(ev) => self.emit(ev),
            }
        }
    }

    fn emit(&self, ev: RtcEvent) {
        if let Err(TrySendError::Full(_)) = self.events.try_send(ev) {
            self.ingest
                .stats()
                .events_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Create { req, reply } => {
                let _ = reply.send(self.ingest.create(Instant::now(), req));
            }
            Cmd::Close { id, owner } => self.ingest.close(id, owner),
            Cmd::CloseParticipant { space, participant } => {
                self.ingest.close_participant(space, participant)
            }
            Cmd::Send { id, opus } => self.ingest.send_audio(Instant::now(), id, &opus),
            Cmd::Shutdown => {}
        }
        self.flush();
    }
}
