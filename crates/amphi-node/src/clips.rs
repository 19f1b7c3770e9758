//! Clips: any participant of a live space cuts the last 30 s of the
//! program (`POST /api/v1/spaces/{id}/clips`) from the history ring the
//! program already keeps, so a clip costs no extra work on the media path:
//! the frames are copied out under the ring's lock and cut off the async
//! runtime into an Ogg Opus file and an HLS VOD (the recorder's cutter),
//! stored in the recordings storage (local or S3) beside a small JSON
//! description. `GET /c/{clip}` is its share page (player, the space's
//! title, the transcript when captions made one) with OpenGraph and
//! Twitter tags, so a shared link unfurls.
//!
//! Keys in the recordings storage: `clips/<clip>/clip.json`,
//! `clips/<clip>/clip.opus`, `clips/<clip>/hls/init.mp4`,
//! `clips/<clip>/hls/seg-N.m4s`, `clips/<clip>/hls/clip.m3u8`.
//!
//! A clip is public like a shared link: whoever has its id can play it,
//! even if the space was private (its participants chose to share it).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use amphi_core::frame::FRAME_US;
use amphi_core::{ClipId, Frame, ParticipantId, SpaceId};
use amphi_hls::{Resource, content_type_for};

use crate::app::App;
use crate::auth::Token;
use crate::embed::html_escape;
use crate::error::ApiError;
use crate::replay::StoredRead;
use crate::timefmt::{now_ms, rfc3339};
use crate::web::Framing;
use crate::webhooks::EventKind;

/// A clip is the last this many frames of the program (30 s).
pub const CLIP_FRAMES: usize = 1500;

/// One line of a clip's transcript: who said what, in program time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClipCue {
    pub participant_id: ParticipantId,
    pub name: String,
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What the node says of a clip, stored as `clip.json` beside its audio so
/// any node reading the same storage can show its page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipInfo {
    pub id: ClipId,
    pub space_id: SpaceId,
    pub title: String,
    pub host: String,
    pub by: ParticipantId,
    pub by_name: String,
    pub created_at_ms: i64,
    /// The clip's first and last frames, in program time (`seq × 20 ms`).
    pub start_ms: u64,
    pub end_ms: u64,
    pub duration_ms: u64,
    /// Empty when the space had no captions.
    #[serde(default)]
    pub transcript: Vec<ClipCue>,
}

/// The cues the space's captions said between `start_ms` and `end_ms`
/// (program time, as the frames' sequence numbers): the clip's transcript.
/// Without captions there is none, and the clip's page shows no transcript.
pub fn transcript_of(app: &App, space: SpaceId, start_ms: u64, end_ms: u64) -> Vec<ClipCue> {
    app.captions
        .cues_between(space, start_ms, end_ms)
        .into_iter()
        .map(|c| ClipCue {
            participant_id: c.participant_id,
            name: c.name,
            text: c.text,
            start_ms: c.start_ms,
            end_ms: c.end_ms,
        })
        .collect()
}

/// The clip routes.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/spaces/{id}/clips", post(create))
        .route("/c/{clip}", get(page))
        .route("/c/{clip}/audio.opus", get(audio))
        .route("/c/{clip}/hls/clip.m3u8", get(playlist))
        .route("/c/{clip}/hls/{name}", get(media))
}

fn key(clip: ClipId, name: &str) -> String {
    format!("clips/{clip}/{name}")
}

/// Where a clip is served.
fn clip_view(info: &ClipInfo) -> serde_json::Value {
    let id = info.id;
    json!({
        "id": id,
        "space_id": info.space_id,
        "page": format!("/c/{id}"),
        "audio": format!("/c/{id}/audio.opus"),
        "hls": format!("/c/{id}/hls/clip.m3u8"),
        "duration_ms": info.duration_ms,
        "start_ms": info.start_ms,
        "created_at": rfc3339(info.created_at_ms),
    })
}

/// `POST /api/v1/spaces/{id}/clips`: the last 30 s of the live program.
async fn create(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    t: Token,
) -> Result<Response, ApiError> {
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let claims = app.verify(id, &t.0)?;
    let (title, host) = {
        let inner = cell.inner.lock();
        let s = &inner.space;
        s.may_clip(claims.pid)?;
        let host = s
            .member(s.host)
            .map_or_else(|| "the host".to_owned(), |m| m.name.clone());
        (s.title.clone(), host)
    };
    // Per network and per participant first: one address's clicks (under
    // however many names) do not use up the space's.
    if let Some(Extension(ConnectInfo(peer))) = peer {
        let net = crate::app::net_key(&crate::app::network_of(peer.ip()));
        if let Err(wait) = app.clip_limits.network.try_take(net) {
            return Err(ApiError::rate_limited(wait));
        }
    }
    if let Err(wait) = app.clip_limits.participant.try_take(claims.pid.0) {
        return Err(ApiError::rate_limited(wait));
    }
    if let Err(wait) = app.clip_limits.space.try_take(id.0) {
        return Err(ApiError::rate_limited(wait));
    }
    let frames: Vec<Frame> = {
        let live = cell
            .live
            .read()
            .clone()
            .ok_or_else(|| ApiError::conflict("the space is not on air here yet"))?;
        let h = live.history.lock();
        h.last_n(CLIP_FRAMES).cloned().collect()
    };
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Err(ApiError::conflict("nothing has been heard yet"));
    };
    let start_ms = first.seq * FRAME_US / 1000;
    let end_ms = (last.seq + 1) * FRAME_US / 1000;
    let info = ClipInfo {
        id: ClipId(rand::random()),
        space_id: id,
        title,
        host,
        by: claims.pid,
        by_name: claims.name.clone(),
        created_at_ms: now_ms(),
        start_ms,
        end_ms,
        duration_ms: end_ms - start_ms,
        transcript: transcript_of(&app, id, start_ms, end_ms),
    };
    let storage = app.media.recorder.storage().clone();
    let stored = {
        let info = info.clone();
        tokio::task::spawn_blocking(move || store(storage.as_ref(), &info, &frames)).await
    };
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(space = %id, error = %e, "could not store a clip");
            return Err(ApiError::unavailable(
                "the recordings storage did not take the clip",
                2,
            ));
        }
        Err(_) => return Err(ApiError::internal("cutting the clip failed")),
    }
    app.metrics.clips.inc();
    let view = clip_view(&info);
    app.webhooks.emit(
        EventKind::ClipCreated,
        &info.id.to_string(),
        json!({"space_id": id, "clip": view, "by": info.by}),
    );
    Ok((StatusCode::CREATED, Json(json!({"clip": view}))).into_response())
}

/// Cuts `frames` and stores the clip's objects, its description last (a
/// clip without `clip.json` does not exist for the routes).
pub fn store(
    storage: &dyn amphi_storage::Storage,
    info: &ClipInfo,
    frames: &[Frame],
) -> anyhow::Result<()> {
    let serial = (info.id.0 as u32) ^ 0xc11b;
    let cut = crate::record::cut_frames(frames, serial, "")?;
    let mut objects = vec![
        (key(info.id, "clip.opus"), cut.ogg),
        (key(info.id, "hls/init.mp4"), cut.init),
        (key(info.id, "hls/clip.m3u8"), Bytes::from(cut.playlist)),
    ];
    objects.extend(
        cut.segments
            .into_iter()
            .map(|(msn, b)| (key(info.id, &format!("hls/seg-{msn}.m4s")), b)),
    );
    storage.put_many(objects)?;
    storage.put(
        &key(info.id, "clip.json"),
        Bytes::from(serde_json::to_vec(info)?),
    )?;
    Ok(())
}

/// Reads one object of a clip off the async runtime: a missing one is a
/// 404, a failing store a 503.
async fn object(app: &App, clip: ClipId, name: &str) -> Result<Bytes, ApiError> {
    crate::replay::read_stored(app, key(clip, name), "clip", |s, k| s.get(k)).await
}

fn clip_id(s: &str) -> Result<ClipId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("no such clip"))
}

async fn info(app: &App, clip: ClipId) -> Result<ClipInfo, ApiError> {
    let b = object(app, clip, "clip.json").await?;
    serde_json::from_slice(&b).map_err(|_| ApiError::internal("a damaged clip description"))
}

/// A play of a clip, counted in its space's analytics (if the space is
/// known here).
fn count_play(app: &App, space: SpaceId) {
    if let Ok(cell) = app.space(space) {
        cell.stats.lock().clip_play();
    }
}

/// `m:ss` of a duration in ms.
fn mmss(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}

/// The share page: a player, the space's title, the transcript if any.
async fn page(
    _: StoredRead,
    State(app): State<Arc<App>>,
    Path(clip): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let clip = clip_id(&clip)?;
    let info = info(&app, clip).await?;
    Ok(crate::embed::html(
        render_page(&info, &crate::embed::origin(&headers)),
        Framing::Deny,
    ))
}

/// The share page's HTML for `info`, with absolute URLs on `origin`.
pub fn render_page(info: &ClipInfo, origin: &str) -> String {
    let t = html_escape(&info.title);
    let description = html_escape(&format!(
        "A {} clip from “{}” · hosted by {} · clipped by {}",
        mmss(info.duration_ms),
        info.title,
        info.host,
        info.by_name
    ));
    let id = info.id;
    let space = info.space_id;
    let url = html_escape(&format!("{origin}/c/{id}"));
    let audio = html_escape(&format!("{origin}/c/{id}/audio.opus"));
    let img = html_escape(&format!("{origin}/s/{space}/card.png"));
    let transcript = if info.transcript.is_empty() {
        String::new()
    } else {
        let lines: String = info
            .transcript
            .iter()
            .map(|c| {
                format!(
                    "<li><span class=\"when\">{}</span> <b>{}</b> {}</li>\n",
                    mmss(c.start_ms.saturating_sub(info.start_ms)),
                    html_escape(&c.name),
                    html_escape(&c.text)
                )
            })
            .collect();
        format!(
            "<section class=\"transcript\" data-testid=\"clip-transcript\">\n<h2>Transcript</h2>\n<ol>\n{lines}</ol>\n</section>\n"
        )
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"color-scheme\" content=\"dark light\">\n<title>Clip: {t} — amphi</title>\n\
<meta property=\"og:type\" content=\"music.song\">\n\
<meta property=\"og:site_name\" content=\"amphi\">\n\
<meta property=\"og:title\" content=\"Clip: {t}\">\n\
<meta property=\"og:description\" content=\"{description}\">\n\
<meta name=\"description\" content=\"{description}\">\n\
<meta property=\"og:url\" content=\"{url}\">\n\
<meta property=\"og:audio\" content=\"{audio}\">\n\
<meta property=\"og:audio:type\" content=\"audio/ogg\">\n\
<meta property=\"music:duration\" content=\"{secs}\">\n\
<meta property=\"og:image\" content=\"{img}\">\n\
<meta property=\"og:image:type\" content=\"image/png\">\n\
<meta property=\"og:image:width\" content=\"{w}\">\n\
<meta property=\"og:image:height\" content=\"{h}\">\n\
<meta property=\"og:image:alt\" content=\"{t}\">\n\
<meta name=\"twitter:card\" content=\"summary_large_image\">\n\
<meta name=\"twitter:image\" content=\"{img}\">\n\
<meta name=\"twitter:title\" content=\"Clip: {t}\">\n\
<meta name=\"twitter:description\" content=\"{description}\">\n\
<link rel=\"canonical\" href=\"{url}\">\n\
<link rel=\"icon\" href=\"data:,\">\n<link rel=\"stylesheet\" href=\"/assets/style.css\">\n</head>\n\
<body class=\"clip\" data-clip=\"{id}\">\n<main>\n\
<p class=\"hint\">A clip from</p>\n<h1 data-testid=\"clip-title\">{t}</h1>\n\
<p class=\"hint\">hosted by {host} · clipped by {by} · {dur}</p>\n\
<p><audio controls preload=\"metadata\" src=\"/c/{id}/audio.opus\" data-testid=\"clip-audio\"></audio></p>\n\
<p><a href=\"/s/{space}\">Open the space</a> · <a href=\"/c/{id}/audio.opus\" download>Download</a> · \
<a href=\"/c/{id}/hls/clip.m3u8\">HLS</a></p>\n{transcript}</main>\n</body>\n</html>\n",
        secs = info.duration_ms / 1000,
        w = crate::card_image::WIDTH,
        h = crate::card_image::HEIGHT,
        host = html_escape(&info.host),
        by = html_escape(&info.by_name),
        dur = mmss(info.duration_ms),
    )
}

/// The clip as one Ogg Opus file (a play counted when read from the start).
async fn audio(
    _: StoredRead,
    State(app): State<Arc<App>>,
    Path(clip): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let clip = clip_id(&clip)?;
    let info = info(&app, clip).await?;
    let data = object(&app, clip, "clip.opus").await?;
    let from_start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::replay::parse_range)
        .is_none_or(|r| {
            matches!(
                r,
                crate::replay::ByteRange::From(0) | crate::replay::ByteRange::FromTo(0, _)
            )
        });
    if from_start {
        count_play(&app, info.space_id);
    }
    Ok(crate::replay::media_response(
        Resource::VodPlaylist,
        "audio/ogg",
        data,
    ))
}

/// The clip's HLS VOD playlist (a play counted).
async fn playlist(
    _: StoredRead,
    State(app): State<Arc<App>>,
    Path(clip): Path<String>,
) -> Result<Response, ApiError> {
    let clip = clip_id(&clip)?;
    let info = info(&app, clip).await?;
    let data = object(&app, clip, "hls/clip.m3u8").await?;
    count_play(&app, info.space_id);
    Ok(crate::replay::media_response(
        Resource::VodPlaylist,
        content_type_for(Resource::VodPlaylist),
        data,
    ))
}

/// The clip's init segment and media segments.
async fn media(
    _: StoredRead,
    State(app): State<Arc<App>>,
    Path((clip, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let clip = clip_id(&clip)?;
    let name = if name == "init.mp4" {
        name
    } else {
        let Some((msn, None)) = amphi_hls::playlist::parse_media_name(&name) else {
            return Err(ApiError::not_found("no such HLS resource"));
        };
        format!("seg-{msn}.m4s")
    };
    let data = object(&app, clip, &format!("hls/{name}")).await?;
    Ok(crate::replay::media_response(
        Resource::Media,
        content_type_for(Resource::Media),
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ClipInfo {
        ClipInfo {
            id: ClipId(0xabc),
            space_id: SpaceId(0xdef),
            title: "<b>Talk</b> & \"more\"".into(),
            host: "Ann".into(),
            by: ParticipantId(1),
            by_name: "Bob".into(),
            created_at_ms: 0,
            start_ms: 60_000,
            end_ms: 90_000,
            duration_ms: 30_000,
            transcript: Vec::new(),
        }
    }

    #[test]
    fn the_share_page_escapes_and_unfurls() {
        let p = render_page(&info(), "https://ex.org");
        assert!(p.contains("<meta property=\"og:title\" content=\"Clip: &lt;b&gt;Talk&lt;/b&gt; &amp; &quot;more&quot;\">"));
        assert!(p.contains("og:audio\" content=\"https://ex.org/c/0000000000000abc/audio.opus\""));
        assert!(p.contains("twitter:card\" content=\"summary_large_image\""));
        assert!(p.contains("https://ex.org/s/0000000000000def/card.png"));
        assert!(!p.contains("<b>Talk"));
        assert!(!p.contains("clip-transcript"), "no captions, no transcript");
    }

    #[test]
    fn a_transcript_is_shown_when_captions_made_one() {
        let mut i = info();
        i.transcript.push(ClipCue {
            participant_id: ParticipantId(2),
            name: "Cy".into(),
            text: "hello <world>".into(),
            start_ms: 65_000,
            end_ms: 66_000,
        });
        let p = render_page(&i, "http://localhost");
        assert!(p.contains("clip-transcript"));
        assert!(p.contains("<span class=\"when\">0:05</span> <b>Cy</b> hello &lt;world&gt;"));
    }
}
