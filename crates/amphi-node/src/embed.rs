//! What a shared link turns into: the space page with OpenGraph and
//! Twitter card tags (`/s/{id}`), the embeddable player (`/embed/{id}`,
//! the one page any site may frame), its oEmbed answer (`/oembed`) and a
//! calendar file for a space (`/s/{id}/calendar.ics`). Every user string
//! (title, host name) is escaped for where it lands: HTML text and
//! attributes, JSON, iCalendar text.

use crate::web::{Framing, security_headers};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use amphi_core::SpaceId;
use amphi_core::room::SpaceState;

use crate::app::{App, SpaceCell};
use crate::error::ApiError;
use crate::timefmt::now_ms;

/// Size of the player in an iframe.
const EMBED_W: u32 = 480;
const EMBED_H: u32 = 180;

/// The link-preview routes.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/s/{id}", get(space_page))
        .route("/s/{id}/calendar.ics", get(calendar))
        .route("/s/{id}/card.png", get(card_png))
        .route("/embed/{id}", get(embed_page))
        .route("/oembed", get(oembed))
}

/// `s` escaped for HTML text and double-quoted attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` escaped as iCalendar TEXT (RFC 5545 §3.3.11).
fn ics_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `http(s)://host` of the request, for absolute URLs in cards.
pub(crate) fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// What a card says about a space.
struct Card {
    id: SpaceId,
    title: String,
    host: String,
    state: SpaceState,
    description: String,
}

fn card(cell: &SpaceCell) -> Card {
    let inner = cell.inner.lock();
    let s = &inner.space;
    let host = s
        .member(s.host)
        .map_or_else(|| "the host".to_owned(), |m| m.name.clone());
    let description = match s.state {
        SpaceState::Live => format!(
            "Live now · {} listening · hosted by {host}",
            cell.listeners()
        ),
        SpaceState::Scheduled => match s.scheduled_for_ms.and_then(crate::timefmt::rfc3339) {
            Some(t) => format!("Scheduled for {t} · hosted by {host}"),
            None => format!("Scheduled · hosted by {host}"),
        },
        SpaceState::Ended if s.record => format!("Ended · replay available · hosted by {host}"),
        SpaceState::Ended => format!("Ended · hosted by {host}"),
    };
    Card {
        id: s.id,
        title: s.title.clone(),
        host,
        state: s.state,
        description,
    }
}

fn cell_of(app: &App, id: &str) -> Result<Arc<SpaceCell>, ApiError> {
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    app.space(id)
}

/// The `<meta>` tags of a card, for the page at `url`.
fn meta_tags(c: &Card, origin: &str, url: &str) -> String {
    let (t, d) = (html_escape(&c.title), html_escape(&c.description));
    let page = html_escape(&format!("{origin}/s/{}", c.id));
    let oembed = html_escape(&format!(
        "{origin}/oembed?format=json&url={}",
        percent_encode(&format!("{origin}/s/{}", c.id))
    ));
    format!(
        "<meta property=\"og:type\" content=\"website\">\n\
<meta property=\"og:site_name\" content=\"amphi\">\n\
<meta property=\"og:title\" content=\"{t}\">\n\
<meta property=\"og:description\" content=\"{d}\">\n\
<meta property=\"og:url\" content=\"{u}\">\n\
<meta name=\"description\" content=\"{d}\">\n\
<meta property=\"og:image\" content=\"{img}\">\n\
<meta property=\"og:image:type\" content=\"image/png\">\n\
<meta property=\"og:image:width\" content=\"{w}\">\n\
<meta property=\"og:image:height\" content=\"{h}\">\n\
<meta property=\"og:image:alt\" content=\"{t}\">\n\
<meta name=\"twitter:card\" content=\"summary_large_image\">\n\
<meta name=\"twitter:image\" content=\"{img}\">\n\
<meta name=\"twitter:title\" content=\"{t}\">\n\
<meta name=\"twitter:description\" content=\"{d}\">\n\
<meta name=\"amphi:state\" content=\"{s}\">\n\
<link rel=\"canonical\" href=\"{page}\">\n\
<link rel=\"alternate\" type=\"application/json+oembed\" href=\"{oembed}\" title=\"{t}\">\n",
        u = html_escape(url),
        s = c.state.as_str(),
        img = html_escape(&format!("{origin}/s/{}/card.png", c.id)),
        w = crate::card_image::WIDTH,
        h = crate::card_image::HEIGHT,
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) fn html(body: String, framing: Framing) -> Response {
    (
        security_headers(framing),
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The web app's space page, with the card's tags in its head.
async fn space_page(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let page = crate::web::asset("space.html").unwrap_or_default();
    let page = String::from_utf8_lossy(page);
    let Ok(cell) = cell_of(&app, &id) else {
        // The page itself says the space does not exist.
        return html(page.into_owned(), Framing::Deny);
    };
    let c = card(&cell);
    let o = origin(&headers);
    let tags = meta_tags(&c, &o, &format!("{o}/s/{}", c.id));
    let title = format!("<title>{} — amphi</title>", html_escape(&c.title));
    let page = page
        .replacen("<title>amphi — space</title>", &title, 1)
        .replacen("</head>", &format!("{tags}</head>"), 1);
    html(page, Framing::Deny)
}

/// The embeddable player: title, live badge, play, listener count, the
/// replay once ended (web/embed.js does the rest). The only page any site
/// may frame.
async fn embed_page(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cell = cell_of(&app, &id)?;
    let c = card(&cell);
    let o = origin(&headers);
    let tags = meta_tags(&c, &o, &format!("{o}/embed/{}", c.id));
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"color-scheme\" content=\"dark light\">\n<title>{t} — amphi</title>\n{tags}\
<link rel=\"icon\" href=\"data:,\">\n<link rel=\"stylesheet\" href=\"/assets/style.css\">\n\
<link rel=\"stylesheet\" href=\"/assets/embed.css\">\n</head>\n\
<body class=\"embed\" data-space=\"{id}\">\n<main class=\"player\">\n\
<p class=\"head\"><span id=\"state\" class=\"pill {s}\" data-testid=\"embed-state\">{state_text}</span> \
<span id=\"count\" data-testid=\"embed-count\"></span></p>\n\
<h1 id=\"title\" data-testid=\"embed-title\">{t}</h1>\n<p class=\"hint\">hosted by {h}</p>\n\
<p><button type=\"button\" id=\"play\" class=\"primary\" data-testid=\"embed-play\" hidden>▶ Listen live</button>\n\
<audio id=\"replay\" controls preload=\"none\" data-testid=\"embed-replay\" hidden></audio>\n\
<a id=\"open\" href=\"/s/{id}\" target=\"_blank\" rel=\"noopener\">Open in amphi</a></p>\n\
<audio id=\"live\" hidden></audio>\n</main>\n\
<script type=\"module\" src=\"/assets/embed.js\"></script>\n</body>\n</html>\n",
        t = html_escape(&c.title),
        h = html_escape(&c.host),
        id = c.id,
        s = c.state.as_str(),
        state_text = match c.state {
            SpaceState::Live => "● LIVE",
            SpaceState::Scheduled => "Scheduled",
            SpaceState::Ended => "Ended",
        },
    );
    // Framing is this page's purpose: any site may embed it.
    Ok(html(body, Framing::Anyone))
}

#[derive(Deserialize)]
struct OembedQuery {
    url: Option<String>,
    format: Option<String>,
    maxwidth: Option<u32>,
    maxheight: Option<u32>,
}

/// oEmbed (oembed.com): a `rich` answer whose html is the player's
/// iframe. `url` is a `/s/{id}` or `/embed/{id}` URL of this server.
async fn oembed(
    State(app): State<Arc<App>>,
    Query(q): Query<OembedQuery>,
) -> Result<Response, ApiError> {
    if q.format.as_deref().is_some_and(|f| f != "json") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_format",
            "only format=json is served",
        ));
    }
    let url = q
        .url
        .ok_or_else(|| ApiError::bad_request("url is required"))?;
    let (origin, path) =
        split_url(&url).ok_or_else(|| ApiError::not_found("not a URL of a space here"))?;
    let id = path
        .strip_prefix("/s/")
        .or_else(|| path.strip_prefix("/embed/"))
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| !rest.contains('/'))
        .ok_or_else(|| ApiError::not_found("not a URL of a space here"))?;
    let cell = cell_of(&app, id)?;
    let c = card(&cell);
    let width = q.maxwidth.map_or(EMBED_W, |w| w.clamp(200, EMBED_W));
    let height = q.maxheight.map_or(EMBED_H, |h| h.clamp(120, EMBED_H));
    let src = html_escape(&format!("{origin}/embed/{}", c.id));
    let iframe = format!(
        "<iframe src=\"{src}\" width=\"{width}\" height=\"{height}\" frameborder=\"0\" allow=\"autoplay\" title=\"{}\"></iframe>",
        html_escape(&c.title)
    );
    Ok(Json(json!({
        "version": "1.0",
        "type": "rich",
        "provider_name": "amphi",
        "provider_url": origin,
        "title": c.title,
        "author_name": c.host,
        "html": iframe,
        "width": width,
        "height": height,
        "cache_age": 60,
    }))
    .into_response())
}

/// `http(s)://host` and the path of `url`.
fn split_url(url: &str) -> Option<(String, String)> {
    let uri: axum::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https")?;
    let auth = uri.authority()?;
    Some((format!("{scheme}://{auth}"), uri.path().to_owned()))
}

/// An iCalendar file for a space: its scheduled (or actual) start, an
/// hour long, with the link.
async fn calendar(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cell = cell_of(&app, &id)?;
    let c = card(&cell);
    let (start, end) = {
        let inner = cell.inner.lock();
        let s = &inner.space;
        let start = s
            .scheduled_for_ms
            .or(s.started_at_ms)
            .unwrap_or(s.created_at_ms);
        (start, s.ended_at_ms.unwrap_or(start + 3_600_000))
    };
    let stamp = |ms: i64| {
        crate::timefmt::rfc3339(ms - ms.rem_euclid(1000))
            .map(|t| t.replace(['-', ':'], "").replace(".000", ""))
            .unwrap_or_default()
    };
    let link = format!("{}/s/{}", origin(&headers), c.id);
    let body = [
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".to_owned(),
        "PRODID:-//amphi//space//EN".to_owned(),
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{}@amphi", c.id),
        format!("DTSTAMP:{}", stamp(now_ms())),
        format!("DTSTART:{}", stamp(start)),
        format!("DTEND:{}", stamp(end)),
        format!("SUMMARY:{}", ics_escape(&c.title)),
        format!(
            "DESCRIPTION:{}",
            ics_escape(&format!("{} — {link}", c.description))
        ),
        format!("URL:{link}"),
        "END:VEVENT".to_owned(),
        "END:VCALENDAR".to_owned(),
        String::new(),
    ]
    .join("\r\n");
    Ok((
        [
            (header::CONTENT_TYPE, "text/calendar; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"space.ics\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Rendered cards by space, with what they show and when they were drawn:
/// a card is drawn again only when its text changed, and a live space's
/// changing detail (its listener count) at most every [`CARD_FRESH`].
/// Bounded: cleared past 256 spaces.
type CardCache = parking_lot::Mutex<
    std::collections::HashMap<SpaceId, (String, String, std::time::Instant, bytes::Bytes)>,
>;
static CARDS: std::sync::OnceLock<CardCache> = std::sync::OnceLock::new();
/// One card drawn at a time on the node (about 10 ms of a core in a
/// release build, 100+ in a debug one): a flood of card requests waits
/// here, one render each change, instead of drawing the same card once
/// per request on every core.
static DRAWING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
/// A card whose title, host and state are unchanged is served as drawn for
/// this long, whatever its detail (a live space's listener count, which
/// anyone moves by opening and closing a stream) says now.
const CARD_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// The cached card of `id`, if it shows `base` and either `detail` or was
/// drawn less than [`CARD_FRESH`] ago.
fn cached_card(cache: &CardCache, id: SpaceId, base: &str, detail: &str) -> Option<bytes::Bytes> {
    cache
        .lock()
        .get(&id)
        .filter(|(b, d, at, _)| b == base && (d == detail || at.elapsed() < CARD_FRESH))
        .map(|(_, _, _, png)| png.clone())
}

/// The card's image (1200 × 630 PNG), drawn on the node.
async fn card_png(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let cell = cell_of(&app, &id)?;
    let c = card(&cell);
    let detail = match c.state {
        SpaceState::Live => format!("{} listening", cell.listeners()),
        SpaceState::Scheduled => {
            let at = cell.inner.lock().space.scheduled_for_ms;
            match at.and_then(crate::timefmt::rfc3339) {
                Some(t) => format!("Scheduled for {}", t.replace('T', " ").replace('Z', " UTC")),
                None => "Scheduled".to_owned(),
            }
        }
        SpaceState::Ended => "Ended · replay available".to_owned(),
    };
    let base = format!("{}\u{0}{}\u{0}{}", c.title, c.host, c.state.as_str());
    let cache = CARDS.get_or_init(Default::default);
    let mut hit = cached_card(cache, c.id, &base, &detail);
    // Waiting for the one drawing slot, then asking the cache again: the
    // requests that waited on a render get its card.
    let _drawing = match hit {
        Some(_) => None,
        None => {
            let permit = DRAWING
                .acquire()
                .await
                .map_err(|_| ApiError::internal("could not draw the card"))?;
            hit = cached_card(cache, c.id, &base, &detail);
            Some(permit)
        }
    };
    let png = match hit {
        Some(b) => b,
        None => {
            let (title, host, state) = (c.title.clone(), c.host.clone(), c.state.as_str());
            let shown = detail.clone();
            let drawn = tokio::task::spawn_blocking(move || {
                crate::card_image::render(&crate::card_image::CardText {
                    title: &title,
                    host: &host,
                    state,
                    detail: &shown,
                })
            })
            .await;
            let png = match drawn {
                Ok(Ok(p)) => bytes::Bytes::from(p),
                _ => return Err(ApiError::internal("could not draw the card")),
            };
            let mut m = cache.lock();
            if m.len() >= 256 {
                m.clear();
            }
            m.insert(c.id, (base, detail, std::time::Instant::now(), png.clone()));
            png
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        png,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_strings_are_escaped() {
        assert_eq!(
            html_escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(ics_escape("a,b;c\\d\ne\r"), "a\\,b\\;c\\\\d\\ne");
        assert_eq!(
            split_url("https://ex.org:8443/s/abc?x=1"),
            Some(("https://ex.org:8443".into(), "/s/abc".into()))
        );
        assert_eq!(split_url("javascript:alert(1)"), None);
    }
}
