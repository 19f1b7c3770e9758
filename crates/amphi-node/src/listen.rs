//! Listener streams (`live.opus`, `live.ws`): admission, the handshake, and
//! the hand-off of the socket to a fan-out worker.
//!
//! These requests never reach the HTTP framework: the front door peeks at
//! the request line and sends them here, where the head is parsed with
//! `httparse`, admission is decided from atomics, and the socket — with its
//! response head, stream headers and burst as one pending buffer — goes to
//! [`amphi_egress`]. A refusal is a small fixed response written at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use amphi_core::SpaceId;
use amphi_core::room::{Listener, RoomError};
use amphi_egress::{NewListener, Protocol};

use crate::app::App;
use crate::conn::ListenerConn;
use crate::error::ApiError;
use crate::media::LiveMedia;

/// Largest request head a listener may send.
const MAX_HEAD: usize = 8192;

/// Which listener output a request line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ogg,
    Ws,
}

/// Classifies the start of a request. `None`: not enough bytes yet.
pub fn classify(head: &[u8]) -> Option<Option<Kind>> {
    let rest = if let Some(r) = head.strip_prefix(b"GET ") {
        r
    } else if let Some(r) = head.strip_prefix(b"HEAD ") {
        r
    } else if head.len() < 5 && (b"GET ".starts_with(head) || b"HEAD ".starts_with(head)) {
        return None;
    } else {
        return Some(None);
    };
    // An absolute-form target (`http://host/spaces/…`, as proxies send):
    // the path starts after the authority.
    let rest = match strip_authority(rest) {
        Some(r) => r,
        None if rest.len() > 200 => return Some(None),
        None => return None,
    };
    let end = rest.iter().position(|b| *b == b' ' || *b == b'?');
    let Some(end) = end else {
        return if rest.len() > 200 { Some(None) } else { None };
    };
    let path = &rest[..end];
    if !path.starts_with(b"/spaces/") {
        return Some(None);
    }
    if path.ends_with(b"/live.opus") {
        Some(Some(Kind::Ogg))
    } else if path.ends_with(b"/live.ws") {
        Some(Some(Kind::Ws))
    } else {
        Some(None)
    }
}

/// `rest` without a leading `http://authority` or `https://authority`
/// (unchanged if it has none); `None` if the authority is not complete yet.
fn strip_authority(rest: &[u8]) -> Option<&[u8]> {
    let lower = |n: usize| rest[..n.min(rest.len())].to_ascii_lowercase();
    let scheme = if lower(7) == b"http://" {
        7
    } else if lower(8) == b"https://" {
        8
    } else if b"https://".starts_with(&lower(8)) || b"http://".starts_with(&lower(7)) {
        // Could still become a scheme.
        return if rest.contains(&b' ') {
            Some(rest)
        } else {
            None
        };
    } else {
        return Some(rest);
    };
    let after = &rest[scheme..];
    match after.iter().position(|b| matches!(b, b'/' | b' ' | b'?')) {
        Some(i) if after[i] == b'/' => Some(&after[i..]),
        Some(_) => Some(b"/ "),
        None => None,
    }
}

/// What the request head said.
struct Head {
    method_head: bool,
    http10: bool,
    space: Option<SpaceId>,
    kind: Kind,
    token: Option<String>,
    from_seq: Option<u64>,
    /// `live.opus?burst_ms=N`: a shorter connect burst than the node's.
    burst_ms: Option<u32>,
    ws_key: Option<String>,
    ws_ok: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = req.parse(buf).map_err(|_| "malformed request")? else {
        return Ok(None);
    };
    let path = req.path.unwrap_or("/");
    let path = std::str::from_utf8(strip_authority(path.as_bytes()).unwrap_or(b"/")).unwrap_or("/");
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let kind = match classify(format!("GET {path} ").as_bytes()) {
        Some(Some(k)) => k,
        _ => return Err("not a listener path"),
    };
    let mut segs = path.trim_start_matches('/').split('/');
    let space = match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some("spaces"), Some(id), Some(_), None) => id.parse().ok(),
        _ => None,
    };
    let mut token = None;
    let mut from_seq = None;
    let mut burst_ms = None;
    for kv in query.split('&') {
        if let Some(v) = kv.strip_prefix("token=") {
            token = Some(v.to_owned());
        } else if let Some(v) = kv.strip_prefix("from_seq=") {
            from_seq = Some(
                v.parse()
                    .map_err(|_| "from_seq must be a non-negative integer")?,
            );
        } else if let Some(v) = kv.strip_prefix("burst_ms=") {
            burst_ms = Some(
                v.parse()
                    .map_err(|_| "burst_ms must be a non-negative integer")?,
            );
        }
    }
    let mut ws_key = None;
    let mut upgrade = false;
    let mut version_ok = false;
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("authorization") {
            if let Some(t) = v.strip_prefix("Bearer ") {
                token = Some(t.trim().to_owned());
            }
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = Some(v.to_owned());
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = v.eq_ignore_ascii_case("websocket");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            version_ok = v == "13";
        }
    }
    Ok(Some(Head {
        method_head: req.method == Some("HEAD"),
        http10: req.version == Some(0),
        space,
        kind,
        token,
        from_seq,
        burst_ms,
        ws_ok: upgrade && version_ok && ws_key.is_some(),
        ws_key,
    }))
}

/// Serves one listener request on `stream` (plain or TLS), of which `buf`
/// was already read; its head must be complete by `deadline`.
pub async fn handle<S: ListenerConn>(
    mut stream: S,
    mut buf: BytesMut,
    deadline: Instant,
    app: Arc<App>,
) {
    app.metrics.listen_requests.inc();
    let head = loop {
        match parse_head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) if buf.len() < MAX_HEAD => {}
            Ok(None) => {
                let e = ApiError::new(
                    axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "header_too_large",
                    "request head too large",
                );
                return refuse(&mut stream, &e).await;
            }
            Err(msg) => return refuse(&mut stream, &ApiError::bad_request(msg)).await,
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    };
    if let Err(e) = app.members.check_fresh(head.space) {
        return refuse(&mut stream, &e).await;
    }
    if head.space.is_some_and(|id| app.members.fenced(id)) {
        let e = ApiError::cluster_unavailable(
            "this node lost the cluster and no longer carries this space: listen on another node",
            2,
        );
        return refuse(&mut stream, &e).await;
    }
    // Everything that can refuse the listener is decided first; only an
    // admitted listener may make this node an edge of a space mixed
    // elsewhere (its first one starts the feed of the space's frames).
    let admitted = match precheck(&app, &head) {
        Ok(a) => a,
        Err(e) => return refuse(&mut stream, &e).await,
    };
    app.members.attach(admitted.space).await;
    match admit(&app, &head, admitted) {
        Ok(listener) if listener.head_only => {
            app.egress.release();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.write_all(&listener.pending))
                    .await;
            let _ = stream.shutdown().await;
        }
        Ok(listener) => {
            let Some((std, tls, tls_in)) = stream.into_fanout().await else {
                app.egress.release();
                return;
            };
            let NewListenerFor {
                place,
                output,
                pending,
                next_unit,
                burst_to,
                tag,
                protocol,
                ..
            } = listener;
            let nl = NewListener {
                stream: std,
                pending,
                next_unit,
                burst_to,
                tag,
                protocol,
                tls,
                tls_in,
            };
            if let Err(e) = app.egress.add_reserved_listener(&output, nl) {
                tracing::warn!(error = %e, "could not hand a listener to the fan-out");
            }
            // Counted by its output now (or gone): the space's place returns.
            drop(place);
        }
        Err(e) => refuse(&mut stream, &e).await,
    }
}

struct NewListenerFor {
    /// The space's place, held until the output counts the listener.
    place: Option<crate::media::Admitting>,
    output: Arc<amphi_egress::Output>,
    pending: Bytes,
    next_unit: u64,
    /// The connect burst: units `next_unit..=burst_to` of the output's ring.
    burst_to: Option<u64>,
    tag: u64,
    protocol: Protocol,
    /// A HEAD request: send the response head and close.
    head_only: bool,
}

/// A listener that passed every check that does not need the space's
/// outputs, holding a node-wide place ([`Egress::try_reserve`]).
struct Prechecked {
    space: SpaceId,
    tag: u64,
}

fn at_capacity(app: &App, id: SpaceId) -> ApiError {
    app.metrics.listeners_refused.inc();
    let retry = 2 + rand::random::<u32>() % 9;
    ApiError::unavailable(
        format!(
            "this node is at capacity; retry later or listen over HLS at /spaces/{id}/hls/live.m3u8"
        ),
        retry,
    )
}

/// The checks before a listener may use (or make) the space's outputs on
/// this node: the space, the token, the request, the per-space cap as far
/// as it is known, the join bucket and the node's cap.
fn precheck(app: &App, head: &Head) -> Result<Prechecked, ApiError> {
    let id = head
        .space
        .ok_or_else(|| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let verified = head.token.as_ref().map(|t| app.verify(id, t));
    let who = match &verified {
        None => Listener::Anonymous,
        Some(Ok(c)) => Listener::Participant(c.pid),
        Some(Err(_)) => Listener::Unverified,
    };
    if let Err(refused) = cell.inner.lock().space.may_listen(who) {
        // A token that failed verification is refused with its own reason.
        return Err(match (refused, verified) {
            (RoomError::Unauthenticated(_), Some(Err(e))) => e,
            (refused, _) => refused.into(),
        });
    }
    let tag = match who {
        Listener::Participant(pid) => pid.0,
        Listener::Anonymous | Listener::Unverified => 0,
    };
    if head.kind == Kind::Ws && !head.ws_ok {
        return Err(ApiError::new(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "live.ws is a WebSocket: send Upgrade: websocket, Sec-WebSocket-Version: 13 and a key",
        ));
    }
    // The per-space cap is taken atomically below, once the outputs exist;
    // a space already full here is refused before anything else is spent.
    let full = match cell.live.read().as_ref() {
        Some(live) => {
            if let Some(e) = from_seq_ahead(head, live) {
                return Err(e);
            }
            live.listeners() + live.admitting.load(Ordering::Acquire) >= app.admission.max_per_space
        }
        None => app.admission.max_per_space == 0,
    };
    if full || !app.admission.take() || !app.egress.try_reserve(app.admission.max_listeners) {
        return Err(at_capacity(app, id));
    }
    Ok(Prechecked { space: id, tag })
}

/// A `live.ws` resume from a frame past the newest one is refused.
fn from_seq_ahead(head: &Head, live: &LiveMedia) -> Option<ApiError> {
    if head.kind == Kind::Ws
        && let Some(from) = head.from_seq
        && let Some(newest) = live.history.lock().last_seq()
        && from > newest.saturating_add(1)
    {
        return Some(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "from_seq_ahead",
            format!(
                "from_seq {from} is ahead of the newest frame, {newest}: resume with at most {}, or connect without from_seq",
                newest + 1
            ),
        ));
    }
    None
}

fn admit(app: &App, head: &Head, pre: Prechecked) -> Result<NewListenerFor, ApiError> {
    let Prechecked { space: id, tag } = pre;
    let live = app.space(id).ok().and_then(|cell| cell.live.read().clone());
    let Some(live) = live else {
        app.egress.release();
        return Err(ApiError::conflict("the space is not live"));
    };
    // Again: an edge's first listener only has the history now.
    if let Some(e) = from_seq_ahead(head, &live) {
        app.egress.release();
        return Err(e);
    }
    // The space's place is taken atomically: exactly
    // --max-listeners-per-space are admitted however many arrive at once
    // (a refused listener gives its places back).
    let place = live.try_admit(app.admission.max_per_space);
    if place.is_none() {
        app.egress.release();
        return Err(at_capacity(app, id));
    }
    match head.kind {
        Kind::Ogg => {
            let proto = if head.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
            let mut pending = BytesMut::with_capacity(4096);
            pending.extend_from_slice(format!(
                "{proto} 200 OK\r\nContent-Type: audio/ogg\r\nCache-Control: no-cache, no-store\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\nicy-name: amphi space {id}\r\n\r\n"
            ).as_bytes());
            if head.method_head {
                return Ok(NewListenerFor {
                    place,
                    output: live.ogg.clone(),
                    pending: pending.freeze(),
                    next_unit: 0,
                    burst_to: None,
                    tag,
                    protocol: Protocol::Http,
                    head_only: true,
                });
            }
            pending.extend_from_slice(&live.ogg_headers);
            // The burst: the newest pages of the output's ring, sent by the
            // fan-out from the shared pages (no copy per listener) as fast
            // as the socket takes them, so a player that buffers before it
            // starts (Chromium's <audio> reads 32 KB at a time) starts at
            // once — and plays that much behind live.
            let pages = head.burst_ms.map_or(app.ogg_burst_pages, |ms| {
                (ms / app.ogg_page_ms.max(1)).clamp(1, app.ogg_burst_pages as u32) as usize
            });
            let burst = live.ogg.burst_range(pages);
            let (next_unit, burst_to) = match burst {
                Some((first, last)) => (first, Some(last)),
                None => (live.ogg.next_seq(), None),
            };
            Ok(NewListenerFor {
                place,
                output: live.ogg.clone(),
                pending: pending.freeze(),
                next_unit,
                burst_to,
                tag,
                protocol: Protocol::Http,
                head_only: false,
            })
        }
        Kind::Ws => {
            let key = head.ws_key.as_deref().unwrap_or("");
            let mut sha = Sha1::new();
            sha.update(key.as_bytes());
            sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
            let mut pending = BytesMut::with_capacity(4096);
            pending.extend_from_slice(format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).as_bytes());
            let newest = live.ws.newest();
            let mut next_unit = newest
                .as_ref()
                .map_or_else(|| live.ws.next_seq(), |u| u.seq + 1);
            let mut burst_to = None;
            match (head.from_seq, &newest) {
                (Some(from), Some(unit)) => {
                    // The history's messages are in the output's ring: the
                    // fan-out sends them as a connect burst (shared, not
                    // copied); only the frames before the first whole one
                    // are built for this listener.
                    let upto = match live.ws.resume_point(from) {
                        Some((first, before)) if first <= unit.seq => {
                            next_unit = first;
                            burst_to = Some(unit.seq);
                            before
                        }
                        _ => unit.last_frame,
                    };
                    if from <= upto {
                        for msg in live.resume_ws(from, upto) {
                            pending.extend_from_slice(&msg);
                        }
                    }
                }
                (None, Some(unit)) => pending.extend_from_slice(&unit.bytes),
                _ => {}
            }
            Ok(NewListenerFor {
                place,
                output: live.ws.clone(),
                pending: pending.freeze(),
                next_unit,
                burst_to,
                tag,
                protocol: Protocol::WebSocket,
                head_only: false,
            })
        }
    }
}

/// Routes for listener requests that reached the HTTP framework: the front
/// door classifies the start of every request of a connection, so only a
/// `live.opus` request pipelined behind another (sent before the previous
/// answer) gets here. The answer is a redirect to the same URL with
/// `Connection: close`: the client asks again on a new connection, which
/// the front door hands to the fan-out.
pub fn router() -> axum::Router<Arc<App>> {
    axum::Router::new().route(
        "/spaces/{id}/live.opus",
        axum::routing::get(again_on_a_new_connection),
    )
}

async fn again_on_a_new_connection(uri: axum::http::Uri) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let mut res = axum::response::Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, e: &ApiError) {
    let body = e.body();
    let retry = e
        .retry_after
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let res = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n{body}",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(res.as_bytes())).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines() {
        assert_eq!(
            classify(b"GET /spaces/0123456789abcdef/live.opus HTTP/1.1\r\n"),
            Some(Some(Kind::Ogg))
        );
        assert_eq!(
            classify(b"GET /spaces/0123456789abcdef/live.ws?from_seq=3 HTTP/1.1"),
            Some(Some(Kind::Ws))
        );
        assert_eq!(
            classify(b"HEAD /spaces/x/live.opus "),
            Some(Some(Kind::Ogg))
        );
        assert_eq!(classify(b"GET /api/v1/spaces HTTP/1.1"), Some(None));
        assert_eq!(classify(b"POST /spaces/x/live.opus "), Some(None));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /spaces/0123"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(
            classify(b"GET http://example.org/spaces/0123456789abcdef/live.opus HTTP/1.1"),
            Some(Some(Kind::Ogg))
        );
        assert_eq!(
            classify(b"GET HTTPS://example.org:8443/spaces/x/live.ws?from_seq=1 HTTP/1.1"),
            Some(Some(Kind::Ws))
        );
        assert_eq!(
            classify(b"GET http://example.org/api/v1/spaces HTTP/1.1"),
            Some(None)
        );
        assert_eq!(classify(b"GET http://exam"), None);
        assert_eq!(classify(b"GET htt"), None);
        assert_eq!(classify(b"GET http://example.org HTTP/1.1"), Some(None));
    }

    #[test]
    fn parses_heads_and_rejects_bad_ones() {
        let h = parse_head(b"GET /spaces/0123456789abcdef/live.ws?from_seq=42&token=abc HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.kind, Kind::Ws);
        assert_eq!(h.from_seq, Some(42));
        assert_eq!(h.token.as_deref(), Some("abc"));
        assert!(h.ws_ok);
        assert_eq!(h.space, Some(SpaceId(0x0123456789abcdef)));
        assert!(parse_head(b"GET /spaces/x/live.ws?from_seq=-1 HTTP/1.1\r\n\r\n").is_err());
        let h = parse_head(b"GET /spaces/0123456789abcdef/live.opus?burst_ms=500 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.burst_ms, Some(500));
        let h = parse_head(
            b"GET http://example.org/spaces/0123456789abcdef/live.opus HTTP/1.1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.kind, Kind::Ogg);
        assert_eq!(h.space, Some(SpaceId(0x0123456789abcdef)));
        assert!(parse_head(b"GET /spaces/x/live.opus?burst_ms=lots HTTP/1.1\r\n\r\n").is_err());
        assert!(
            parse_head(b"GET /spaces/x/live.opus HTTP/1.1\r\n")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_err());
    }
}
