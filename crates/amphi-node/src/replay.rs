//! HLS (live and replay) and the recording download.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use amphi_core::SpaceId;
use amphi_core::room::{Listener, SpaceState};
use amphi_core::token::MediaClaims;
use amphi_hls::playlist::{Ready, parse_blocking_query, parse_media_name, wants_skip};
use amphi_hls::{PartLookup, Resource, cache_control, content_type_for, fmp4};

use crate::app::{App, SpaceCell};
use crate::error::ApiError;
use crate::media::LiveMedia;
use crate::timefmt::now_s;

/// Longest a blocking playlist request waits for its part.
const BLOCK_LIMIT: Duration = Duration::from_secs(3);

/// Longest a request for the part named by `EXT-X-PRELOAD-HINT` (or the one
/// after it) is held before it gets a 404. Parts come every 400 ms, so only
/// a stalled program ever reaches it; it also bounds what a flood of such
/// requests can hold: each is one future parked on the space's
/// `hls_tick`, gone after this long.
const PRELOAD_LIMIT: Duration = Duration::from_secs(3);

/// A replay recorded on another member is there: redirect.
pub async fn replay_elsewhere(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    let id = path
        .strip_prefix("/spaces/")
        .and_then(|r| r.split('/').next())
        .and_then(|s| s.parse::<SpaceId>().ok());
    if let Some(cell) = id.and_then(|id| app.space(id).ok()) {
        let (state, record) = {
            let inner = cell.inner.lock();
            (inner.space.state, inner.space.record)
        };
        let is_replay = path.ends_with("/recording.opus") || path.contains("/hls/replay");
        if is_replay
            && state == SpaceState::Ended
            && record
            && let Some(base) = app.members.replay_at(cell.id)
            && !replay_stored(&app, cell.id).await
            && let Ok(v) = HeaderValue::from_str(&format!("{base}{path_and_query}"))
        {
            let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
            res.headers_mut().insert(header::LOCATION, v);
            return res;
        }
    }
    next.run(req).await
}

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/spaces/{id}/hls/live.m3u8", get(live_playlist))
        .route("/spaces/{id}/hls/init.mp4", get(init))
        .route("/spaces/{id}/hls/replay.m3u8", get(replay_playlist))
        .route("/spaces/{id}/hls/replay/{name}", get(replay_media))
        .route("/spaces/{id}/hls/{name}", get(live_media))
        .route("/spaces/{id}/recording.opus", get(recording))
        .route("/spaces/{id}/hls/master.m3u8", get(master_playlist))
        .route("/spaces/{id}/hls/captions.m3u8", get(subtitle_playlist))
        .route("/spaces/{id}/hls/captions/{name}", get(subtitle_segment))
        .route("/spaces/{id}/transcript.vtt", get(transcript_vtt))
        .route("/spaces/{id}/transcript.json", get(transcript_json))
        .route("/api/v1/spaces/{id}/captions", get(live_captions))
}

/// Admission of a request that reads the recordings storage (a clip, a
/// replay, a recording, a transcript) or a page of a space's cues: one
/// from its network's bucket (`--read-rate-per-ip`), refused 429 +
/// `Retry-After` beyond, before any read. A flood of such GETs (of existing ids or made-up ones, each a
/// read on the blocking pool, a request to S3) from one address is shed
/// here at the cost of a hash lookup.
pub(crate) struct StoredRead;

impl FromRequestParts<Arc<App>> for StoredRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(StoredRead);
        };
        let net = crate::app::net_key(&crate::app::network_of(peer.ip()));
        app.read_limiter
            .try_take(net)
            .map_err(ApiError::rate_limited)?;
        Ok(StoredRead)
    }
}

/// What every route here is asked with: the space (and the object's name,
/// for `{name}` routes) from the path, the raw query (`?token=`, `?t=`,
/// the HLS and range parameters) and the headers (`Authorization`,
/// `Range`).
struct Ask {
    app: Arc<App>,
    id: String,
    /// The `{name}` path segment; empty on routes without one.
    name: String,
    q: Option<String>,
    headers: HeaderMap,
}

impl FromRequestParts<Arc<App>> for Ask {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let (mut id, mut name) = (String::new(), String::new());
        for (k, v) in params {
            match k.as_str() {
                "id" => id = v,
                "name" => name = v,
                _ => {}
            }
        }
        Ok(Ask {
            app: app.clone(),
            id,
            name,
            q: parts.uri.query().map(str::to_owned),
            // The handler is the request's last reader.
            headers: std::mem::take(&mut parts.headers),
        })
    }
}

impl Ask {
    /// The space, once the caller is allowed its `output`; with the query
    /// to sign a private space's playlist URIs with.
    fn space(&self, output: Output) -> Result<(Arc<SpaceCell>, Option<String>), ApiError> {
        let cell = cell(&self.app, &self.id)?;
        let sign = authorize(&self.app, &cell, &self.headers, self.q.as_deref(), output)?;
        Ok((cell, sign))
    }

    /// The prologue of every replay route: [`Ask::space`], and the replay
    /// published.
    async fn replay(&self, output: Output) -> Result<(Arc<SpaceCell>, Option<String>), ApiError> {
        let (cell, sign) = self.space(output)?;
        replay_ready(&self.app, &cell).await?;
        Ok((cell, sign))
    }

    /// A query parameter's value.
    fn param(&self, name: &str) -> Option<&str> {
        query_param(self.q.as_deref(), name)
    }
}

/// The value of `name` in a raw query.
fn query_param<'a>(q: Option<&'a str>, name: &str) -> Option<&'a str> {
    q?.split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The live HLS master playlist: the program and, for a captioned space,
/// its WebVTT subtitles rendition.
async fn master_playlist(ask: Ask) -> Result<Response, ApiError> {
    let (cell, query) = ask.space(Output::LivePlaylist)?;
    live_media_of(&cell)?;
    let captioned = ask.app.captions.unavailable_reason().is_none();
    let text = if cell.inner.lock().space.captions && captioned {
        crate::captions::master_playlist(query.as_deref())
    } else {
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        format!(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS=\"opus\"\nlive.m3u8{q}\n"
        )
    };
    Ok(playlist_response(text))
}

fn live_media_of(cell: &SpaceCell) -> Result<Arc<LiveMedia>, ApiError> {
    cell.live
        .read()
        .clone()
        .ok_or_else(|| ApiError::not_found("the space is not live on this node"))
}

fn playlist_response(text: String) -> Response {
    let mut res = (StatusCode::OK, text).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.apple.mpegurl"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The subtitles rendition's media playlist (see
/// [`crate::captions::subtitle_playlist`]).
async fn subtitle_playlist(ask: Ask) -> Result<Response, ApiError> {
    let (cell, query) = ask.space(Output::LivePlaylist)?;
    let live = live_media_of(&cell)?;
    let text = crate::captions::subtitle_playlist(&live.hls.lock(), query.as_deref());
    Ok(playlist_response(text))
}

/// One WebVTT segment (`{msn}.vtt`): the cues of that program segment.
async fn subtitle_segment(ask: Ask) -> Result<Response, ApiError> {
    let (cell, _) = ask.space(Output::Media)?;
    let msn: u64 = ask
        .name
        .strip_suffix(".vtt")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::not_found("no such subtitle segment"))?;
    let live = live_media_of(&cell)?;
    let range = live
        .hls
        .lock()
        .segments()
        .find(|s| s.msn == msn)
        .map(|s| (s.first_seq * 20, (s.first_seq + s.span) * 20))
        .ok_or_else(|| ApiError::not_found("no such subtitle segment"))?;
    let cues = ask.app.captions.cues_between(cell.id, range.0, range.1);
    let mut res = (StatusCode::OK, crate::captions::subtitle_segment(&cues)).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/vtt; charset=utf-8"),
    );
    Ok(res)
}

/// The transcript of an ended, captioned space, written beside its
/// replay once its last phrase was transcribed (whoever may hear the
/// replay may read it).
async fn transcript(
    ask: Ask,
    name: &'static str,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let (cell, _) = ask.space(Output::Replay)?;
    let (state, captions) = {
        let inner = cell.inner.lock();
        (inner.space.state, inner.space.captions)
    };
    if state != SpaceState::Ended {
        return Err(ApiError::conflict(
            "the space is still live; its transcript is written when it ends",
        ));
    }
    let data = match from_storage(&ask.app, cell.id, name, |s, k| s.get(k)).await {
        Err(e) if captions && e.status == StatusCode::NOT_FOUND => {
            return Err(ApiError::unavailable("the transcript is being written", 1));
        }
        other => other?,
    };
    let mut res = (StatusCode::OK, data).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(res)
}

async fn transcript_vtt(_: StoredRead, ask: Ask) -> Result<Response, ApiError> {
    transcript(ask, "transcript.vtt", "text/vtt; charset=utf-8").await
}

async fn transcript_json(_: StoredRead, ask: Ask) -> Result<Response, ApiError> {
    transcript(ask, "transcript.json", "application/json").await
}

/// Most cues one `GET .../captions` answers with (`?limit=`, 1 to this).
pub const CAPTIONS_PAGE: usize = 500;

/// The cues of a live space so far (`?from_ms=&to_ms=`, program time,
/// `?limit=`), for whoever may hear it: at most [`CAPTIONS_PAGE`] a
/// response, by start time, and `next_from_ms` when more remain. A value
/// that is not a whole number of ms (negative, overflowing, text) is a 400,
/// not silently the default.
async fn live_captions(_: StoredRead, ask: Ask) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let (cell, _) = ask.space(Output::LivePlaylist)?;
    let param = |name: &str, default: u64| match ask.param(name) {
        None | Some("") => Ok(default),
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be a whole number from 0 to {}",
                u64::MAX
            ))
        }),
    };
    let (from, to) = (param("from_ms", 0)?, param("to_ms", u64::MAX)?);
    let limit = param("limit", CAPTIONS_PAGE as u64)?;
    if limit == 0 || limit > CAPTIONS_PAGE as u64 {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {CAPTIONS_PAGE}"
        )));
    }
    if from > to {
        return Err(ApiError::bad_request("from_ms is after to_ms"));
    }
    let (cues, next) = ask
        .app
        .captions
        .cues_page(cell.id, from, to, limit as usize);
    Ok(axum::Json(
        serde_json::json!({ "cues": cues, "next_from_ms": next }),
    ))
}

fn cell(app: &App, id: &str) -> Result<Arc<SpaceCell>, ApiError> {
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    app.space(id)
}

/// Which output of a space a request is for, as far as who may hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The live HLS playlist: a participant's token.
    LivePlaylist,
    /// The replay playlist and the recording: a participant's token.
    Replay,
    /// A media object (init, part, segment, replay segment): a token or
    /// the space's media key `?t=` that the playlist put on its URI.
    Media,
}

/// Checks that a request may hear `cell`'s `output`. A public space is
/// open to anyone (`Ok(None)`); a private one needs a participant token
/// (`Authorization: Bearer` or `?token=`), or for media objects the space's
/// media key (`?t=`). For a private space the answer is the query to put
/// on the URIs of a playlist (`t=<the current media key>`).
fn authorize(
    app: &App,
    cell: &SpaceCell,
    headers: &HeaderMap,
    query: Option<&str>,
    output: Output,
) -> Result<Option<String>, ApiError> {
    if cell.inner.lock().space.public {
        return Ok(None);
    }
    let param = |name: &str| query_param(query, name);
    let now = now_s();
    let key = || {
        let claims = MediaClaims::current(cell.id, now);
        format!("t={}", app.token_key.sign(&claims))
    };
    if output == Output::Media
        && let Some(t) = param("t")
    {
        let claims: MediaClaims = app.token_key.verify(t, now)?;
        if claims.media != cell.id {
            return Err(amphi_core::token::TokenError::WrongSpace.into());
        }
        return Ok(Some(key()));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| param("token"));
    let who = match token {
        None => Listener::Anonymous,
        Some(t) => match app.verify(cell.id, t) {
            Ok(c) => Listener::Participant(c.pid),
            Err(e) => return Err(e),
        },
    };
    {
        let inner = cell.inner.lock();
        let s = &inner.space;
        match output {
            Output::Media if s.state == SpaceState::Ended => s.may_replay(who)?,
            Output::LivePlaylist | Output::Media => s.may_listen(who)?,
            Output::Replay => s.may_replay(who)?,
        }
    }
    Ok(Some(key()))
}

fn body(kind: Resource, data: impl Into<axum::body::Body>) -> Response {
    media_response(kind, content_type_for(kind), data)
}

/// A media object or playlist: its type, how long caches may keep a `kind`
/// of resource, readable cross-origin (web players on other sites).
pub(crate) fn media_response(
    kind: Resource,
    content_type: &'static str,
    data: impl Into<axum::body::Body>,
) -> Response {
    let mut res = (StatusCode::OK, data.into()).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control(kind)),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// An error of the live HLS resources: never cached (a 404 for a part that
/// is about to exist must not stick in a CDN), readable cross-origin (a
/// browser player sees the status, not a network error).
fn live_error(e: ApiError) -> Response {
    let mut res = e.into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

async fn live_playlist(ask: Ask) -> Response {
    live_playlist_inner(ask).await.unwrap_or_else(live_error)
}

/// The live playlist, after waiting for `_HLS_msn`/`_HLS_part` if asked;
/// the delta update if `_HLS_skip=YES` (or `v2`) asks for it.
async fn live_playlist_inner(ask: Ask) -> Result<Response, ApiError> {
    let (cell, sign) = ask.space(Output::LivePlaylist)?;
    ask.app.members.attach(cell.id).await;
    let live = cell
        .live
        .read()
        .clone()
        .ok_or_else(|| match cell.inner.lock().space.state {
            SpaceState::Ended => ApiError::conflict(format!(
                "the space has ended; the replay is at /spaces/{}/hls/replay.m3u8",
                cell.id
            )),
            _ => ApiError::conflict("the space is not live"),
        })?;
    let query = ask.q.as_deref().unwrap_or("");
    let (msn, part) =
        parse_blocking_query(query).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(msn) = msn {
        let mut rx = live.hls_tick.subscribe();
        let wait = async {
            loop {
                match live.hls.lock().ready(msn, part) {
                    Ready::Now => return Ok(()),
                    Ready::TooFar => {
                        return Err(ApiError::bad_request(
                            "_HLS_msn is more than two segments ahead of the live edge",
                        ));
                    }
                    Ready::Wait => {}
                }
                if rx.changed().await.is_err() {
                    return Ok(());
                }
            }
        };
        // Past the limit, answer with what there is (the client retries).
        if let Ok(r) = tokio::time::timeout(BLOCK_LIMIT, wait).await {
            r?;
        }
    }
    let text = {
        let hls = live.hls.lock();
        if wants_skip(query) {
            hls.live_playlist_delta()
        } else {
            hls.live_playlist()
        }
    };
    Ok(match sign {
        None => body(Resource::LivePlaylist, text),
        Some(q) => private(body(
            Resource::LivePlaylist,
            amphi_hls::playlist::with_query(&String::from_utf8_lossy(&text), &q),
        )),
    })
}

/// A private space's playlist names its viewer's key: shared caches must
/// not keep it past the key's window (the media objects stay cacheable:
/// their URIs carry the key).
fn private(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    res
}

async fn init(ask: Ask) -> Result<Response, ApiError> {
    let (cell, _) = ask.space(Output::Media)?;
    // A music space's program is stereo: its init says 2 channels.
    let channels = if cell.inner.lock().space.music { 2 } else { 1 };
    Ok(body(
        Resource::Media,
        fmp4::init_segment_for(&fmp4::InitConfig {
            channels,
            ..Default::default()
        }),
    ))
}

async fn live_media(ask: Ask) -> Response {
    live_media_inner(ask).await.unwrap_or_else(live_error)
}

/// A live part or segment. The part the preload hint names (or the one
/// after it) is held until it is published, at most [`PRELOAD_LIMIT`];
/// anything else that does not exist is a 404 at once.
async fn live_media_inner(ask: Ask) -> Result<Response, ApiError> {
    let (cell, _) = ask.space(Output::Media)?;
    let (msn, part) =
        parse_media_name(&ask.name).ok_or_else(|| ApiError::not_found("no such HLS resource"))?;
    ask.app.members.attach(cell.id).await;
    let live = cell
        .live
        .read()
        .clone()
        .ok_or_else(|| ApiError::not_found("the space is not live"))?;
    let data = match part {
        Some(p) => hinted_part(&live, msn, p).await,
        None => live.hls.lock().segment(msn),
    };
    let data = data.ok_or_else(|| ApiError::not_found("no such segment (yet, or any more)"))?;
    Ok(body(Resource::Media, data))
}

/// A part's bytes, waiting (at most [`PRELOAD_LIMIT`]) if it is the next
/// one to be published; `None` for a 404.
async fn hinted_part(live: &LiveMedia, msn: u64, part: u32) -> Option<Bytes> {
    // Subscribed before looking, so a part published in between wakes us.
    let mut rx = live.hls_tick.subscribe();
    let wait = async {
        loop {
            match live.hls.lock().lookup_part(msn, part) {
                PartLookup::Found(bytes) => return Some(bytes),
                PartLookup::NotFound => return None,
                PartLookup::Pending => {}
            }
            // An error means the sender is gone: nothing more will come.
            rx.changed().await.ok()?;
        }
    };
    tokio::time::timeout(PRELOAD_LIMIT, wait)
        .await
        .ok()
        .flatten()
}

/// Whether the replay of `id` is in this node's recordings storage.
async fn replay_stored(app: &Arc<App>, id: SpaceId) -> bool {
    let rec = app.media.recorder.clone();
    let Ok(_turn) = app.storage_reads.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || rec.is_complete(id))
        .await
        .unwrap_or(false)
}

/// Checks that the replay of an ended, recorded space is published.
async fn replay_ready(app: &Arc<App>, cell: &SpaceCell) -> Result<(), ApiError> {
    let (state, record) = {
        let inner = cell.inner.lock();
        (inner.space.state, inner.space.record)
    };
    if state != SpaceState::Ended {
        return Err(ApiError::conflict(
            "the space is still live; its recording is published when it ends",
        ));
    }
    if !record {
        return Err(ApiError::not_found("this space was not recorded"));
    }
    if !replay_stored(app, cell.id).await {
        return Err(ApiError::unavailable("the recording is being finalised", 1));
    }
    Ok(())
}

/// One object of a space's replay from the recordings storage.
async fn replay_object(app: &Arc<App>, id: SpaceId, name: &str) -> Result<Bytes, ApiError> {
    from_storage(app, id, name, |s, key| s.get(key)).await
}

/// Runs one blocking read of a space's replay object `name` off the async
/// runtime: a missing object is a 404, a failing store a 503.
async fn from_storage<T: Send + 'static>(
    app: &Arc<App>,
    id: SpaceId,
    name: &str,
    read: impl FnOnce(&dyn amphi_storage::Storage, &str) -> std::io::Result<Option<T>> + Send + 'static,
) -> Result<T, ApiError> {
    read_stored(app, crate::record::key(id, name), "replay file", read).await
}

/// Runs one blocking read of the recordings storage's object `key` off the
/// async runtime: a missing object is a 404 ("no such `what`"), a failing
/// store a 503.
pub(crate) async fn read_stored<T: Send + 'static>(
    app: &App,
    key: String,
    what: &'static str,
    read: impl FnOnce(&dyn amphi_storage::Storage, &str) -> std::io::Result<Option<T>> + Send + 'static,
) -> Result<T, ApiError> {
    let storage = app.media.recorder.storage().clone();
    let k = key.clone();
    let Ok(_turn) = app.storage_reads.acquire().await else {
        return Err(ApiError::internal("the storage readers are closed"));
    };
    match tokio::task::spawn_blocking(move || read(storage.as_ref(), &k)).await {
        Ok(Ok(Some(b))) => Ok(b),
        Ok(Ok(None)) => Err(ApiError::not_found(format!("no such {what}"))),
        Ok(Err(e)) => {
            tracing::error!(%key, error = %e, "could not read a {what}");
            Err(ApiError::unavailable(
                "the recordings storage did not answer",
                2,
            ))
        }
        Err(_) => Err(ApiError::internal(format!("reading the {what} failed"))),
    }
}

async fn replay_playlist(_: StoredRead, ask: Ask) -> Result<Response, ApiError> {
    let (cell, sign) = ask.replay(Output::Replay).await?;
    let data = replay_object(&ask.app, cell.id, "hls/replay.m3u8").await?;
    cell.stats.lock().replay_play();
    Ok(match sign {
        None => body(Resource::VodPlaylist, data),
        Some(q) => private(body(
            Resource::VodPlaylist,
            amphi_hls::playlist::with_query(&String::from_utf8_lossy(&data), &q),
        )),
    })
}

async fn replay_media(_: StoredRead, ask: Ask) -> Result<Response, ApiError> {
    let (cell, _) = ask.replay(Output::Media).await?;
    let (msn, None) =
        parse_media_name(&ask.name).ok_or_else(|| ApiError::not_found("no such HLS resource"))?
    else {
        return Err(ApiError::not_found("replays have segments, not parts"));
    };
    let data = replay_object(&ask.app, cell.id, &format!("hls/seg-{msn}.m4s")).await?;
    Ok(body(Resource::Media, data))
}

/// Bytes of a recording read from the store at once while streaming it.
const CHUNK: u64 = 128 * 1024;

/// The bytes `start..end` of a replay object, read from the store one
/// [`CHUNK`] at a time as the body is polled. A failing read ends the body
/// with an error (the client sees a short response).
fn stream_range(app: &Arc<App>, id: SpaceId, name: &str, start: u64, end: u64) -> axum::body::Body {
    let app = app.clone();
    let key = Arc::<str>::from(crate::record::key(id, name));
    let chunks = futures_util::stream::unfold(start, move |pos| {
        let app = app.clone();
        let key = key.clone();
        async move {
            if pos >= end {
                return None;
            }
            let to = end.min(pos + CHUNK);
            let storage = app.media.recorder.storage().clone();
            let Ok(_turn) = app.storage_reads.acquire().await else {
                return Some((Err(std::io::Error::other("storage readers closed")), end));
            };
            let read = tokio::task::spawn_blocking(move || storage.get_range(&key, pos..to)).await;
            let chunk = match read {
                Ok(Ok(Some(b))) if !b.is_empty() => b,
                Ok(Ok(_)) => return Some((Err(std::io::Error::other("recording shrank")), end)),
                Ok(Err(e)) => return Some((Err(e), end)),
                Err(e) => return Some((Err(std::io::Error::other(e)), end)),
            };
            let next = pos + chunk.len() as u64;
            Some((Ok(chunk), next))
        }
    });
    axum::body::Body::from_stream(chunks)
}

/// A parsed `Range: bytes=…` header (one range).
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    From(u64),
    FromTo(u64, u64),
    Last(u64),
}

/// Parses a single-range `bytes=` header; `None` if malformed.
pub fn parse_range(v: &str) -> Option<ByteRange> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    match (a.trim(), b.trim()) {
        ("", n) => n.parse().ok().map(ByteRange::Last),
        (a, "") => a.parse().ok().map(ByteRange::From),
        (a, b) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
    }
}

fn range_not_satisfiable(len: u64) -> Response {
    let mut res = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "bad_range",
        "the Range header is malformed or outside the file",
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    res
}

async fn recording(_: StoredRead, ask: Ask) -> Result<Response, ApiError> {
    let (cell, _) = ask.replay(Output::Replay).await?;
    let (app, headers) = (&ask.app, &ask.headers);
    // A Range request reads only its bytes from the store (a ranged GET on
    // S3); its bounds are checked against the object's size first.
    let len = from_storage(app, cell.id, "recording.opus", |s, k| s.size(k)).await?;
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().ok().and_then(parse_range));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(None) => return Ok(range_not_satisfiable(len)),
        Some(Some(r)) => {
            let (s, e) = match r {
                ByteRange::From(s) => (s, len.saturating_sub(1)),
                ByteRange::FromTo(s, e) => (s, e.min(len.saturating_sub(1))),
                ByteRange::Last(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            };
            if len == 0 || s >= len || s > e {
                return Ok(range_not_satisfiable(len));
            }
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
    };
    // A play: a request for the recording's start.
    if start == 0 {
        cell.stats.lock().replay_play();
    }
    // Streamed from the store in bounded chunks, each read when hyper asks
    // for it (a slow client holds one chunk, not the file).
    let body = if len == 0 {
        axum::body::Body::empty()
    } else {
        stream_range(app, cell.id, "recording.opus", start, end + 1)
    };
    let mut res = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&(end + 1 - start).min(len).to_string()) {
        res.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control(Resource::VodPlaylist)),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::FromTo(0, 99)));
        assert_eq!(parse_range("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(parse_range("bytes=-500"), Some(ByteRange::Last(500)));
        assert_eq!(parse_range("bytes=5-1"), None);
        assert_eq!(parse_range("bytes=0-1,3-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=abc"), None);
    }
}
