//! `--http-redirect`: the plain-HTTP port of a node that serves HTTPS. It
//! answers 308 to the same path on https, except `/healthz` (load
//! balancers probe over plain HTTP), `/readyz` (which says why a node
//! waiting for its first ACME certificate is not ready) and ACME HTTP-01
//! challenges.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::app::App;
use crate::conn::{BODY_TIMEOUT, FrontIo, HEAD_TIMEOUT, serve_http};

/// Serves the redirect port until the listener fails.
pub async fn serve(listener: TcpListener, app: Arc<App>, https_port: u16) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(redirect)
        .with_state((app.clone(), https_port));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let Some(guard) = stream
            .peer_addr()
            .ok()
            .and_then(|p| app.per_ip.enter(p.ip()))
        else {
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _guard = guard;
            // The front door's deadlines: one per head, one per body.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let peer = stream.peer_addr().ok();
            let deadline = std::time::Instant::now() + HEAD_TIMEOUT;
            let io = FrontIo::new(stream, fd, deadline, HEAD_TIMEOUT, None);
            serve_http(io, router, peer, HEAD_TIMEOUT, BODY_TIMEOUT).await;
        });
    }
}

async fn readyz(State((app, _)): State<(Arc<App>, u16)>) -> Response {
    match app.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(e) => e.into_response(),
    }
}

async fn redirect(State((app, port)): State<(Arc<App>, u16)>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        return match app.acme_http01.read().get(token) {
            Some(auth) => auth.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port)
        .filter(|h| !h.is_empty())
    else {
        return (StatusCode::BAD_REQUEST, "a Host header is required\n").into_response();
    };
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut res = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// `example.org:80` → `example.org`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("example.org:80"), "example.org");
        assert_eq!(host_without_port("example.org"), "example.org");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("10.0.0.1:8080"), "10.0.0.1");
    }
}
