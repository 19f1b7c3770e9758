//! The RTC thread: the thin socket loop around the sans-IO [`Ingest`].
//!
//! It owns the sockets (one UDP socket; with ICE-TCP, its listener or the
//! connections another server adopted to it), waits on them with `poll(2)`, hands
//! datagrams, RFC 4571 frames, commands and the time to the ingest, sends
//! its transmits and forwards its events. Every decision (routing, the
//! gate, timeouts) is the ingest's; this file only moves bytes.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::batch::{self, RecvBatch};
use crate::framing::{self, Deframer};
use crate::ingest::{Ingest, IngestConfig, Output, Transport};
use crate::{Cmd, IceTcp, RtcConfig, RtcError, RtcEvent, RtcHandle, RtcStats, channel};

/// Longest the thread waits in `poll` before looking at commands again.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// Shortest wait, so a timer due now cannot spin the loop.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Datagrams read per wake-up before the loop looks at timers again.
const UDP_BATCH: usize = 64;
/// Commands taken per turn of the loop, so a burst of them never keeps
/// the socket waiting.
const COMMAND_BATCH: usize = 256;
/// Sessions created per turn of the loop: creating one (a DTLS identity,
/// SDP) costs far more than a datagram, so a flood of offers is spread over
/// turns that each drain the socket first.
const CREATE_BATCH: usize = 2;
/// Receive buffer asked of the kernel for the RTC socket: room for ~0.5 s
/// of every speaker's packets if the thread is held up (set with
/// SO_RCVBUFFORCE where allowed, else capped by `net.core.rmem_max`).
const UDP_RCVBUF: libc::c_int = 4 << 20;
/// An ICE-TCP connection that brings nothing for this long is closed
/// (a live peer's consent checks come every few seconds).
const TCP_IDLE: Duration = Duration::from_secs(20);
/// An ICE-TCP connection must bring a frame that reaches a session (a
/// STUN check naming one) within this, or it is closed.
const TCP_FIRST_FRAME: Duration = Duration::from_secs(10);
/// Events (mostly audio packets) queued for the media thread.
const EVENT_QUEUE: usize = 32 * 1024;
/// Bytes queued for one ICE-TCP peer before packets are dropped (real-time
/// audio is better dropped than late).
const TCP_OUT_MAX: usize = 64 * 1024;

/// The engine: its thread and its socket address.
pub struct RtcEngine {
    handle: RtcHandle,
    local: SocketAddr,
    tcp_local: Option<SocketAddr>,
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
        socket.set_nonblocking(true)?;
        set_rcvbuf(&socket, UDP_RCVBUF);
        let local = socket.local_addr()?;
        let advertise = |local: SocketAddr| match cfg.advertise_ip {
            Some(ip) => SocketAddr::new(ip, local.port()),
            None if local.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], local.port())),
            None => local,
        };
        let advertised = advertise(local);
        let (listener, tcp_port) = match cfg.ice_tcp {
            IceTcp::Off => (None, None),
            IceTcp::Listen(addr) => {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                let port = l.local_addr()?.port();
                (Some(l), Some(port))
            }
            IceTcp::Adopted { port } => (None, Some(port)),
        };
        let tcp_local = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let tcp_advertised = match (tcp_local, tcp_port) {
            (Some(l), _) => Some(advertise(l)),
            (None, Some(port)) => Some(SocketAddr::new(advertised.ip(), port)),
            (None, None) => None,
        };
        let (tx, rx) = channel();
        // The media thread takes the events once per 20 ms tick: room for
        // several ticks of thousands of speakers' packets.
        let (ev_tx, ev_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
        let stats = Arc::new(RtcStats::default());
        let handle = RtcHandle {
            tx,
            stats: stats.clone(),
        };
        let ingest = Ingest::new(
            IngestConfig {
                udp: advertised,
                tcp: tcp_advertised,
                loopback: local.ip().is_loopback(),
                connect_timeout: cfg.connect_timeout,
                max_sessions: cfg.max_sessions,
                speaker_max_bitrate: cfg.speaker_max_bitrate,
            },
            stats,
        );
        let max_conns = cfg.max_sessions.saturating_mul(2).max(16);
        let mut thread = Thread {
            socket,
            advertised,
            tcp: tcp_advertised.map(|advertised| Tcp {
                listener,
                advertised,
                conns: HashMap::new(),
                max_conns,
            }),
            rx,
            deferred: VecDeque::new(),
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
                tcp_local,
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

    /// The bound ICE-TCP listener address, with [`IceTcp::Listen`].
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.tcp_local
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
    tcp: Option<Tcp>,
    rx: Receiver<Cmd>,
    /// Creates taken from `rx` beyond a turn's [`CREATE_BATCH`], in order.
    deferred: VecDeque<Cmd>,
    events: Sender<RtcEvent>,
    ingest: Ingest,
}

/// The ICE-TCP side: its listener (unless connections are adopted) and
/// its connections.
struct Tcp {
    listener: Option<TcpListener>,
    /// The TCP candidate address (the `destination` of every frame).
    advertised: SocketAddr,
    conns: HashMap<SocketAddr, Conn>,
    max_conns: usize,
}

/// One ICE-TCP connection.
struct Conn {
    stream: TcpStream,
    deframer: Deframer,
    /// Framed bytes not yet written.
    out: Vec<u8>,
    last_in: Instant,
    /// When it was taken; `None` once a frame reached a session.
    unrouted_since: Option<Instant>,
}

/// Asks for a receive buffer of `bytes` on `socket`: forced past
/// `net.core.rmem_max` if the process may (CAP_NET_ADMIN), else as much as
/// the limit allows. Best effort: the default still works.
fn set_rcvbuf(socket: &UdpSocket, bytes: libc::c_int) {
    let set = |opt: libc::c_int| {
        // SAFETY: a valid socket descriptor we own and a c_int option value
        // of the size given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 {
        set(libc::SO_RCVBUF);
    }
}

impl Thread {
    fn run(&mut self) {
        let mut batch = RecvBatch::default();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut peers: Vec<SocketAddr> = Vec::new();
        loop {
            // What arrived first: the socket, then the commands.
            self.read_udp(&mut batch);
            let mut creates = 0;
            while creates < CREATE_BATCH
                && let Some(cmd) = self.deferred.pop_front()
            {
                creates += 1;
                self.command(cmd);
            }
            for _ in 0..COMMAND_BATCH {
                let Ok(cmd) = self.rx.try_recv() else { break };
                match cmd {
                    Cmd::Shutdown => {
                        self.ingest.shutdown();
                        self.flush();
                        return;
                    }
                    Cmd::Create { .. } if creates >= CREATE_BATCH => self.deferred.push_back(cmd),
                    Cmd::Create { .. } => {
                        creates += 1;
                        self.command(cmd);
                    }
                    other => self.command(other),
                }
            }
            let now = Instant::now();
            self.ingest.handle_timeout(now);
            self.flush();
            self.reap_idle(now);
            let wait = self
                .ingest
                .poll_timeout()
                .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
                .clamp(MIN_WAIT, MAX_WAIT);
            let wait = if self.deferred.is_empty() {
                wait
            } else {
                MIN_WAIT
            };
            self.fill_pollfds(&mut fds, &mut peers);
            // SAFETY: `fds` is a valid, initialised array of pollfd of the
            // given length, alive for the call.
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis() as libc::c_int,
                )
            };
            if n <= 0 {
                continue;
            }
            if fds[0].revents != 0 {
                self.read_udp(&mut batch);
            }
            if let Some(tcp) = &self.tcp {
                let mut first_conn = 1;
                if tcp.listener.is_some() {
                    first_conn = 2;
                    if fds[1].revents != 0 {
                        self.accept();
                    }
                }
                for (fd, peer) in fds[first_conn..].iter().zip(&peers) {
                    if fd.revents & libc::POLLOUT != 0 {
                        self.write_tcp(*peer);
                    }
                    if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        self.read_tcp(*peer);
                    }
                }
            }
        }
    }

    fn fill_pollfds(&self, fds: &mut Vec<libc::pollfd>, peers: &mut Vec<SocketAddr>) {
        let pfd = |fd: i32, events: i16| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        fds.clear();
        peers.clear();
        fds.push(pfd(self.socket.as_raw_fd(), libc::POLLIN));
        if let Some(tcp) = &self.tcp {
            if let Some(l) = &tcp.listener {
                fds.push(pfd(l.as_raw_fd(), libc::POLLIN));
            }
            for (peer, c) in &tcp.conns {
                let mut ev = libc::POLLIN;
                if !c.out.is_empty() {
                    ev |= libc::POLLOUT;
                }
                fds.push(pfd(c.stream.as_raw_fd(), ev));
                peers.push(*peer);
            }
        }
    }

    /// Reads up to [`UDP_BATCH`] datagrams (the poll after it comes back
    /// at once if more are queued), [`batch::BATCH`] per system call.
    fn read_udp(&mut self, batch: &mut RecvBatch) {
        let mut read = 0;
        while read < UDP_BATCH {
            match batch.recv(self.socket.as_raw_fd()) {
                Ok(n) => {
                    read += n;
                    let now = Instant::now();
                    for i in 0..n {
                        if let Some((source, bytes)) = batch.get(i) {
                            self.ingest.handle_datagram(
                                now,
                                Transport::Udp,
                                source,
                                self.advertised,
                                bytes,
                            );
                        }
                    }
                    self.flush();
                    if n < batch::BATCH {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors (e.g. port unreachable after a peer left)
                    // surface here on Linux; they are not fatal.
                    tracing::debug!(error = %e, "udp recv");
                    read += 1;
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.tcp.as_ref().and_then(|t| t.listener.as_ref()) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.adopt(stream, peer),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Takes an ICE-TCP connection: accepted here or handed over.
    fn adopt(&mut self, stream: TcpStream, peer: SocketAddr) {
        let stats = self.ingest.stats();
        let Some(tcp) = &mut self.tcp else {
            stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if tcp.conns.len() >= tcp.max_conns
            || tcp.conns.contains_key(&peer)
            || stream.set_nonblocking(true).is_err()
        {
            stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = stream.set_nodelay(true);
        stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        tcp.conns.insert(
            peer,
            Conn {
                stream,
                deframer: Deframer::default(),
                out: Vec::new(),
                last_in: Instant::now(),
                unrouted_since: Some(Instant::now()),
            },
        );
    }

    /// Reads what a connection has, hands every whole frame to the ingest.
    fn read_tcp(&mut self, peer: SocketAddr) {
        let Some(tcp) = &mut self.tcp else { return };
        let destination = tcp.advertised;
        let Some(c) = tcp.conns.get_mut(&peer) else {
            return;
        };
        let mut close = false;
        loop {
            match c.stream.read(c.deframer.spare()) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => {
                    c.deframer.filled(n);
                    c.last_in = Instant::now();
                    loop {
                        match c.deframer.next_frame() {
                            Ok(Some(f)) => {
                                let routed = self.ingest.handle_datagram(
                                    Instant::now(),
                                    Transport::Tcp,
                                    peer,
                                    destination,
                                    f,
                                );
                                if routed {
                                    c.unrouted_since = None;
                                } else if c.unrouted_since.is_some() {
                                    // The first frames must be ICE: this
                                    // connection is not a peer's.
                                    close = true;
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {
                                self.ingest
                                    .stats()
                                    .garbage_datagrams
                                    .fetch_add(1, Ordering::Relaxed);
                                close = true;
                                break;
                            }
                        }
                    }
                    if close {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        if close {
            tcp.conns.remove(&peer);
        }
        self.flush();
    }

    /// Writes what is queued for a connection, as far as the socket takes.
    fn write_tcp(&mut self, peer: SocketAddr) {
        let Some(tcp) = &mut self.tcp else { return };
        let Some(c) = tcp.conns.get_mut(&peer) else {
            return;
        };
        let mut written = 0;
        let mut close = false;
        while written < c.out.len() {
            match c.stream.write(&c.out[written..]) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        c.out.drain(..written);
        if close {
            tcp.conns.remove(&peer);
        }
    }

    /// Closes ICE-TCP connections that brought nothing for a while, or no
    /// check of a session soon enough.
    fn reap_idle(&mut self, now: Instant) {
        if let Some(tcp) = &mut self.tcp {
            tcp.conns.retain(|_, c| {
                now.saturating_duration_since(c.last_in) < TCP_IDLE
                    && c.unrouted_since
                        .is_none_or(|t| now.saturating_duration_since(t) < TCP_FIRST_FRAME)
            });
        }
    }

    /// Does what the ingest asks: sends, forwards events.
    fn flush(&mut self) {
        while let Some(out) = self.ingest.poll_output() {
            match out {
                Output::Transmit(t) if t.transport == Transport::Udp => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Transmit(t) => {
                    let Some(tcp) = &mut self.tcp else { continue };
                    let Some(c) = tcp.conns.get_mut(&t.destination) else {
                        continue;
                    };
                    if c.out.len() + 2 + t.contents.len() <= TCP_OUT_MAX {
                        let was_empty = c.out.is_empty();
                        framing::frame(&mut c.out, &t.contents);
                        if was_empty {
                            self.write_tcp(t.destination);
                        }
                    }
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
            Cmd::Send { id, opus, seq } => self.ingest.send_audio(Instant::now(), id, &opus, seq),
            Cmd::AdoptTcp { stream, peer } => self.adopt(stream, peer),
            Cmd::Shutdown => {}
        }
        self.flush();
    }
}
