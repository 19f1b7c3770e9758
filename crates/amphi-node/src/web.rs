//! The web app, embedded in the binary: `/`, `/s/{id}` and `/assets/*`.
//!
//! Every response carries a Content-Security-Policy that allows only the
//! app's own scripts, styles and connections (no inline script, no `eval`),
//! and forbids framing (`frame-ancestors 'none'` and `X-Frame-Options:
//! DENY`), so the host's buttons cannot be clickjacked. The one page meant
//! to be framed, the embeddable player (`/embed/{id}`), is served with
//! [`Framing::Anyone`].

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use include_dir::{Dir, include_dir};

use crate::error::ApiError;

static WEB: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../web");

/// Routes of the web app.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("index.html", Framing::Deny) }))
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>| async move { file(&path, Framing::Deny) }),
        )
}

/// Who may put a page in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No one: every page with controls (the lobby, a space's page).
    Deny,
    /// Any site: only the embeddable player (`/embed/{id}`), which has no
    /// moderation controls to clickjack.
    Anyone,
}

/// The policy of every page, with its `frame-ancestors`: the app's own
/// origin only. `connect-src 'self'` covers the same-origin `ws:`/`wss:` of
/// the events channel and `live.ws`; `media-src 'self'` the `<audio>` of
/// the outputs and replays.
macro_rules! csp {
    ($ancestors:literal) => {
        concat!(
            "default-src 'self'; script-src 'self'; style-src 'self'; ",
            "img-src 'self' data:; media-src 'self'; connect-src 'self'; font-src 'self'; ",
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors ",
            $ancestors
        )
    };
}

/// The security headers of a page framed as `framing` allows.
pub fn security_headers(framing: Framing) -> HeaderMap {
    let mut h = HeaderMap::new();
    let csp = match framing {
        Framing::Deny => {
            // And for browsers that predate `frame-ancestors`:
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            csp!("'none'")
        }
        Framing::Anyone => csp!("*"),
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Tokens ride in `?token=` where a header cannot be set: never send them
    // to another origin in a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h
}

/// An embedded web asset's bytes.
pub fn asset(path: &str) -> Option<&'static [u8]> {
    WEB.get_file(path).map(|f| f.contents())
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "webmanifest") => "application/json",
        _ => "application/octet-stream",
    }
}

fn file(path: &str, framing: Framing) -> Response {
    if path.contains("..") {
        return ApiError::not_found("no such file").into_response();
    }
    match WEB.get_file(path) {
        Some(f) => (
            StatusCode::OK,
            security_headers(framing),
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            f.contents(),
        )
            .into_response(),
        None => ApiError::not_found("no such file").into_response(),
    }
}
