//! The front door: one accept loop for every HTTP client. It reads the
//! request line (on readiness, within the head's one deadline) at the start
//! of every request of a connection ([`crate::conn::FrontIo`]): listener
//! streams go to [`crate::listen`] (raw, handed to a fan-out worker),
//! everything else to hyper and the axum router.
//!
//! With HTTPS on, the first byte tells a TLS ClientHello from plain HTTP
//! (answered 400); what does not need the request is decided before the
//! costly handshake: the per-address cap, the handshake rate and the number
//! of handshakes in flight. The request line is then read through TLS and
//! sent the same two ways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, TcpStream};

use crate::admission::KeyedLimiter;
use crate::app::App;
use crate::conn::{BODY_TIMEOUT, FrontIo, HEAD_TIMEOUT, ListenerConn, serve_http};
use crate::listen;

/// The answer to plain HTTP on the HTTPS port.
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 80\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"bad_request\",\"message\":\"this port speaks HTTPS, not HTTP\"}}\n";

/// TLS handshakes in flight at once; more are closed before any work.
const MAX_HANDSHAKES: usize = 1024;
/// Time a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTPS on the front door.
pub struct FrontTls {
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    in_flight: tokio::sync::Semaphore,
    rate: KeyedLimiter,
    /// Where handshakes run: a runtime of their own whose threads run at a
    /// lower priority than the fan-out workers, so a join storm's
    /// signatures wait for pages, not the other way round. `None`: on the
    /// front door's runtime.
    handshakes: Option<tokio::runtime::Handle>,
}

impl FrontTls {
    /// HTTPS with `config`, starting at most `rate` handshakes a second
    /// (bursts of `burst`).
    pub fn new(config: Arc<tokio_rustls::rustls::ServerConfig>, rate: f64, burst: f64) -> Self {
        FrontTls {
            config,
            in_flight: tokio::sync::Semaphore::new(MAX_HANDSHAKES),
            rate: KeyedLimiter::new(rate, burst),
            handshakes: None,
        }
    }

    /// Runs the handshakes on `runtime` (see [`handshake_runtime`]).
    pub fn with_handshakes(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.handshakes = Some(runtime);
        self
    }
}

/// The runtime TLS handshakes run on: `threads` threads `nice` steps below
/// the process's priority (0 = the same; the nice value is capped at 19).
/// The fan-out workers and the media thread keep the process's priority,
/// so when the cores are short a handshake waits, not a page.
pub fn handshake_runtime(threads: usize, nice: i32) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .thread_name("amphi-tls-hs")
        .on_thread_start(move || {
            if nice > 0 {
                lower_priority(nice);
            }
        })
        .build()
}

/// Lowers the calling thread's priority by `steps` (Linux: the nice value
/// is per thread). An unprivileged process may always lower it.
fn lower_priority(steps: i32) {
    // SAFETY: gettid has no arguments; getpriority and setpriority take
    // plain integers and read or change only this thread's nice value.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if libc::setpriority(libc::PRIO_PROCESS, tid, (now + steps).clamp(-20, 19)) != 0 {
            tracing::warn!("could not lower the TLS handshake threads' priority");
        }
    }
}

/// The answer to a source address over its connection limit.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 5\r\nContent-Length: 89\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from your address\"}}\n";

/// Accepts connections until the listener fails for good.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    tls: Option<Arc<FrontTls>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let app = app.clone();
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move { connection(stream, app, router, tls).await });
    }
}

async fn connection(stream: TcpStream, app: Arc<App>, router: Router, tls: Option<Arc<FrontTls>>) {
    // Connections per source address are bounded (generously: NATs and load
    // tests share addresses). The guard counts this connection until it is
    // closed or handed to a fan-out worker.
    let Some(_guard) = stream
        .peer_addr()
        .ok()
        .and_then(|p| app.per_ip.enter(p.ip()))
    else {
        app.metrics.refused_per_ip.inc();
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, TOO_MANY).await;
        return;
    };
    let deadline = Instant::now() + HEAD_TIMEOUT;
    if app.media.ice_tcp() {
        match ice_tcp_preface(&stream, deadline).await {
            Some(true) => {
                // A speaker's ICE-TCP connection (RFC 4571): to the engine.
                let peer = stream.peer_addr();
                if let (Ok(peer), Ok(std)) = (peer, stream.into_std()) {
                    app.media.adopt_tcp(std, peer);
                }
                return;
            }
            Some(false) => {}
            None => return,
        }
    }
    if let Some(tls) = tls {
        return tls_connection(stream, app, router, tls, deadline).await;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let peer = stream.peer_addr().ok();
    http(stream, fd, peer, app, router, deadline).await;
}

/// Whether a request line asks for a listener stream.
fn is_listener(head: &[u8]) -> Option<bool> {
    listen::classify(head).map(|k| k.is_some())
}

/// A connection's HTTP, plain or through TLS: its first request line is
/// read (on readiness, by the head's one deadline) and classified; a
/// listener stream goes to [`listen`], anything else to hyper and the
/// router, which may still find a listener stream on a later request of
/// the connection (kept alive by a proxy or a browser).
async fn http<S>(
    stream: S,
    fd: std::os::fd::RawFd,
    peer: Option<std::net::SocketAddr>,
    app: Arc<App>,
    router: Router,
    deadline: Instant,
) where
    S: ListenerConn,
{
    let mut io = FrontIo::new(stream, fd, deadline, HEAD_TIMEOUT, Some(is_listener));
    let handed = match io.first().await {
        Ok(Some(true)) => io.into_parts(),
        Ok(Some(false)) => serve_http(io, router, peer, HEAD_TIMEOUT, BODY_TIMEOUT).await,
        Ok(None) | Err(_) => None,
    };
    if let Some((stream, head, deadline)) = handed {
        listen::handle(stream, head, deadline, app).await;
    }
}

/// Whether a connection is ICE-TCP (RFC 4571), decided on its first byte
/// alone: a frame starts with its 16-bit length and a STUN request is
/// short, so the first byte is 0, which no HTTP method and no TLS record
/// starts with. No polling for more bytes: the engine, which takes the
/// connection, closes one whose first frame reaches no session at once and
/// one that stays silent after 10 s, and holds at most twice its session
/// cap. `None`: the peer went away or sent nothing in time.
async fn ice_tcp_preface(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline.into(), stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == 0),
        _ => None,
    }
}

async fn tls_connection(
    mut stream: TcpStream,
    app: Arc<App>,
    router: Router,
    tls: Arc<FrontTls>,
    deadline: Instant,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline.into(), stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] != 0x16 {
        // Not a ClientHello: plain HTTP sent to the HTTPS port, or noise.
        app.metrics.tls_plaintext_refused.inc();
        // Before its first ACME certificate a node says so, to anyone.
        let pending = app.cert_pending.read().as_ref().map(|why| {
            let body = serde_json::json!({"error": {"code": "no_certificate", "message": why}})
                .to_string();
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        });
        let answer = pending.as_ref().map_or(PLAIN_ON_TLS, |p| p.as_bytes());
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncWriteExt::write_all(&mut stream, answer),
        )
        .await;
        return;
    }
    let handshake_deadline = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
    let hs = handshake(stream, app.clone(), tls.clone(), handshake_deadline);
    let stream = match &tls.handshakes {
        Some(rt) => rt.spawn(hs).await.ok().flatten(),
        None => hs.await,
    };
    let Some(stream) = stream else {
        return;
    };
    app.metrics.tls_handshakes.inc();
    if stream.get_ref().1.alpn_protocol() == Some(amphi_tls::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was all of it.
        return;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream.get_ref().0);
    let peer = stream.get_ref().0.peer_addr().ok();
    http(stream, fd, peer, app, router, deadline).await;
}

/// The TLS handshake of a connection that sent a ClientHello, admitted
/// first (handshakes in flight, the handshake rate); `None` when refused,
/// failed or timed out (each counted).
async fn handshake(
    stream: TcpStream,
    app: Arc<App>,
    tls: Arc<FrontTls>,
    deadline: Instant,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    // The ClientHello is read first (no crypto yet): a peer that never
    // finishes it holds a small buffer until the deadline, not a place
    // among the handshakes in flight.
    let lazy = tokio_rustls::LazyConfigAcceptor::new(
        tokio_rustls::rustls::server::Acceptor::default(),
        stream,
    );
    let start = match tokio::time::timeout_at(deadline.into(), lazy).await {
        Ok(Ok(start)) => start,
        _ => {
            app.metrics.tls_handshake_failures.inc();
            return None;
        }
    };
    // Admission before the costly part: a storm is shed here, before any
    // signature or key exchange.
    let permit = match tls.in_flight.try_acquire() {
        Ok(p) if tls.rate.check(0) => p,
        _ => {
            app.metrics.tls_refused.inc();
            return None;
        }
    };
    let accepted =
        tokio::time::timeout_at(deadline.into(), start.into_stream(tls.config.clone())).await;
    drop(permit);
    match accepted {
        Ok(Ok(s)) => Some(s),
        _ => {
            app.metrics.tls_handshake_failures.inc();
            None
        }
    }
}
