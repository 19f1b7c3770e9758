//! The front door: one accept loop for every HTTP client. It peeks at the
//! request line; listener streams go to [`crate::listen`] (raw, handed to a
//! fan-out worker), everything else to hyper and the axum router.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::listen::{self, Kind};

/// The answer to a source address over its connection limit.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 5\r\nContent-Length: 89\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from your address\"}}\n";

/// Time a client has to send its request line and headers.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the listener fails for good.
pub async fn serve(listener: TcpListener, app: Arc<App>, router: Router) {
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
        tokio::spawn(async move { connection(stream, app, router).await });
    }
}

async fn connection(stream: TcpStream, app: Arc<App>, router: Router) {
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
            let svc = TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        }
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
