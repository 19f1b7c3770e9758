//! The front door: one accept loop for every HTTP client. It peeks at the
//! request line; listener streams go to [`crate::listen`] (raw, handed to a
//! fan-out worker), everything else to hyper and the axum router.
//!
//! With HTTPS on, the first byte tells a TLS ClientHello from plain HTTP
//! (answered 400); what does not need the request is decided before the
//! costly handshake: the per-address cap, the handshake rate and the number
//! of handshakes in flight. The request line is then read through TLS and
//! sent the same two ways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::BytesMut;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::admission::KeyedLimiter;
use crate::app::App;
use crate::conn::Prefixed;
use crate::listen::{self, Kind};

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
}

impl FrontTls {
    /// HTTPS with `config`, starting at most `rate` handshakes a second
    /// (bursts of `burst`).
    pub fn new(config: Arc<tokio_rustls::rustls::ServerConfig>, rate: f64, burst: f64) -> Self {
        FrontTls {
            config,
            in_flight: tokio::sync::Semaphore::new(MAX_HANDSHAKES),
            rate: KeyedLimiter::new(rate, burst),
        }
    }
}

/// The answer to a source address over its connection limit.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 5\r\nContent-Length: 89\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from your address\"}}\n";

/// Time a client has to send its request line and headers.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
        return tls_connection(stream, app, router, &tls, deadline).await;
    }
    let mut buf = [0u8; 256];
    let kind = loop {
        let n = match tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        if n == 0 {
            return;
        }
        match listen::classify(&buf[..n]) {
            Some(k) => break k,
            None if n < buf.len() => {
                // Only part of the request line is here: wait for more,
                // unless the peer already hung up (peeking cannot see EOF
                // behind unread bytes, so ask the kernel).
                if Instant::now() >= deadline || peer_hung_up(&stream) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None => break None,
        }
    };
    match kind {
        Some(Kind::Ogg | Kind::Ws) => listen::handle(stream, app).await,
        None => {
            let peer = stream.peer_addr().ok();
            serve_http(stream, router, peer).await
        }
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

/// Everything but listener streams: hyper and the axum router. Requests
/// carry the peer's address (`ConnectInfo`), for joins and bans.
async fn serve_http<S>(stream: S, router: Router, peer: Option<std::net::SocketAddr>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
        router,
        move |mut req: axum::http::Request<hyper::body::Incoming>| {
            if let Some(peer) = peer {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            req
        },
    ));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}

async fn tls_connection(
    mut stream: TcpStream,
    app: Arc<App>,
    router: Router,
    tls: &FrontTls,
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
    // The ClientHello is read first (no crypto yet): a peer that never
    // finishes it holds a small buffer until the deadline, not a place
    // among the handshakes in flight.
    let handshake_deadline = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
    let lazy = tokio_rustls::LazyConfigAcceptor::new(
        tokio_rustls::rustls::server::Acceptor::default(),
        stream,
    );
    let start = match tokio::time::timeout_at(handshake_deadline.into(), lazy).await {
        Ok(Ok(start)) => start,
        _ => {
            app.metrics.tls_handshake_failures.inc();
            return;
        }
    };
    // Admission before the costly part: a storm is shed here, before any
    // signature or key exchange.
    let permit = match tls.in_flight.try_acquire() {
        Ok(p) if tls.rate.check(0) => p,
        _ => {
            app.metrics.tls_refused.inc();
            return;
        }
    };
    let accepted = tokio::time::timeout_at(
        handshake_deadline.into(),
        start.into_stream(tls.config.clone()),
    )
    .await;
    drop(permit);
    let mut stream = match accepted {
        Ok(Ok(s)) => s,
        _ => {
            app.metrics.tls_handshake_failures.inc();
            return;
        }
    };
    app.metrics.tls_handshakes.inc();
    if stream.get_ref().1.alpn_protocol() == Some(amphi_tls::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was all of it.
        return;
    }
    // The request line, read through TLS (it cannot be peeked).
    let mut head = BytesMut::with_capacity(512);
    let kind = loop {
        match listen::classify(&head) {
            Some(k) => break k,
            None if head.len() >= 256 => break None,
            None => {}
        }
        match tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut head)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    };
    let peer = stream.get_ref().0.peer_addr().ok();
    let stream = Prefixed {
        prefix: head.freeze(),
        inner: stream,
    };
    match kind {
        Some(Kind::Ogg | Kind::Ws) => listen::handle(stream, app).await,
        None => serve_http(stream, router, peer).await,
    }
}

/// Whether the peer closed its side (POLLRDHUP), without reading.
fn peer_hung_up(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a socket we own, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
