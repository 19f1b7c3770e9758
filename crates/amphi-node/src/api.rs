//! The REST API of SPEC §4: thin handlers over [`App::command`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use amphi_core::room::{Command, SpaceOptions, SpaceState, validate_name};
use amphi_core::token::{Claims, IdentityClaims, secrets_equal};
use amphi_core::{ParticipantId, SpaceId};

use crate::app::{App, listen_urls};
use crate::auth::Token;
use crate::body::ApiJson;
use crate::error::ApiError;
use crate::timefmt::{now_s, parse_rfc3339};

type AppState = Arc<App>;

/// The API routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/spaces", post(create).get(list))
        .route(
            "/api/v1/spaces/{id}",
            get(show).patch(crate::captions_api::patch),
        )
        .route("/api/v1/spaces/{id}/start", post(start))
        .route("/api/v1/spaces/{id}/end", post(end))
        .route("/api/v1/spaces/{id}/join", post(join))
        .route(
            "/api/v1/spaces/{id}/hand",
            post(raise_hand).delete(lower_hand),
        )
        .route(
            "/api/v1/spaces/{id}/stage/{pid}",
            post(stage_add).delete(stage_remove),
        )
        .route(
            "/api/v1/spaces/{id}/cohosts/{pid}",
            post(cohost_add).delete(cohost_remove),
        )
        .route("/api/v1/spaces/{id}/participants/{pid}/mute", post(mute))
        .route(
            "/api/v1/spaces/{id}/participants/{pid}/unmute",
            post(unmute),
        )
        .route(
            "/api/v1/spaces/{id}/participants/{pid}/remove",
            post(remove),
        )
        .route(
            "/api/v1/spaces/{id}/participants/{pid}/noise_suppression",
            post(noise_suppression),
        )
        .route("/api/v1/spaces/{id}/reactions", post(react))
        .route("/api/v1/spaces/{id}/token", post(reissue))
        .route("/api/v1/openapi.json", get(openapi))
}

fn space_id(s: &str) -> Result<SpaceId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("no such space"))
}

fn pid(s: &str) -> Result<ParticipantId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found("no such participant"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    title: String,
    #[serde(default)]
    scheduled_for: Option<String>,
    #[serde(default)]
    max_stage: Option<u8>,
    #[serde(default)]
    record: Option<bool>,
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    host_name: Option<String>,
    /// Joins need an operator identity token, so a ban follows the person.
    #[serde(default)]
    require_identity: bool,
    /// Every speaker's audio through noise suppression.
    #[serde(default)]
    noise_suppression: bool,
    /// Music mode: stereo program, music bitrate, no speech processing.
    #[serde(default)]
    music: bool,
    /// Live captions of every speaker (the host may turn them off later).
    #[serde(default)]
    captions: bool,
}

async fn create(
    State(app): State<AppState>,
    token: Option<Token>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let Some(Token(token)) = token else {
        return Err(ApiError::unauthorized("the admin token is required"));
    };
    if !secrets_equal(token.as_bytes(), app.admin_token.as_bytes()) {
        return Err(ApiError::unauthorized("invalid admin token"));
    }
    let scheduled_for_ms = match body.scheduled_for.as_deref() {
        None => None,
        Some(s) => Some(
            parse_rfc3339(s)
                .ok_or_else(|| ApiError::bad_request("scheduled_for must be an RFC 3339 time"))?,
        ),
    };
    let opts = SpaceOptions {
        title: body.title,
        scheduled_for_ms,
        max_stage: body
            .max_stage
            .unwrap_or(amphi_core::room::DEFAULT_MAX_STAGE),
        record: body.record.unwrap_or(true),
        public: body.public.unwrap_or(true),
    };
    if body.require_identity && app.identity_key.is_none() {
        return Err(ApiError::bad_request(
            "require_identity needs a server with --identity-key",
        ));
    }
    let host_name = body.host_name.unwrap_or_else(|| "Host".to_owned());
    let extras = crate::app::CreateExtras {
        require_identity: body.require_identity,
        noise_suppression: body.noise_suppression,
        music: body.music,
        captions: body.captions,
    };
    let (cell, host) = app.create(opts, &host_name, extras).await?;
    let token = app.mint(
        cell.id,
        host,
        validate_name(&host_name)?,
        None,
        scheduled_for_ms,
        None,
    );
    let body = json!({"space": crate::captions_api::view(&app, &cell), "host": {"participant_id": host, "token": token}});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let want = match q.state.as_deref() {
        None => None,
        Some("live") => Some(SpaceState::Live),
        Some("scheduled") => Some(SpaceState::Scheduled),
        Some("ended") => Some(SpaceState::Ended),
        Some(_) => {
            return Err(ApiError::bad_request(
                "state must be live, scheduled or ended",
            ));
        }
    };
    let cells: Vec<_> = app.spaces.read().values().cloned().collect();
    let mut spaces: Vec<(i64, Value)> = cells
        .iter()
        .filter_map(|c| {
            let inner = c.inner.lock();
            let s = &inner.space;
            let keep = s.public && want.is_none_or(|w| w == s.state);
            keep.then(|| {
                (
                    s.created_at_ms,
                    crate::app::space_view(
                        s,
                        c.listeners(),
                        c.replay_ready.load(std::sync::atomic::Ordering::Acquire),
                        c.on_air.load(std::sync::atomic::Ordering::Acquire),
                    ),
                )
            })
        })
        .collect();
    spaces.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    spaces.truncate(500);
    Ok(Json(
        json!({"spaces": spaces.into_iter().map(|(_, v)| v).collect::<Vec<_>>()}),
    ))
}

async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(crate::captions_api::view(
        &app,
        &*app.space(space_id(&id)?)?,
    )))
}

/// Verifies the token against the space in the path.
fn actor(app: &App, id: SpaceId, token: &Token) -> Result<Claims, ApiError> {
    app.verify(id, &token.0)
}

async fn run(
    app: &App,
    id: &str,
    token: &Token,
    cmd: impl FnOnce(&Claims) -> Command,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(id)?;
    let cell = app.space(id)?;
    let claims = actor(app, id, token)?;
    let cmd = cmd(&claims);
    app.command(&cell, &claims, cmd).await?;
    Ok(Json(cell.view()))
}

async fn start(
    State(app): State<AppState>,
    Path(id): Path<String>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    run(&app, &id, &t, |_| Command::Start).await
}

async fn end(
    State(app): State<AppState>,
    Path(id): Path<String>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    run(&app, &id, &t, |_| Command::End).await
}

async fn raise_hand(
    State(app): State<AppState>,
    Path(id): Path<String>,
    t: Token,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Json<Value>, ApiError> {
    let space = space_id(&id)?;
    // A flood of hands is refused before it costs a command: per network
    // (with the joins) and per space; the queue itself is capped.
    if !app.hand_limiter.check(space.0) || !admit_net(&app, peer.as_ref()) {
        return Err(ApiError::rate_limited(1));
    }
    run(&app, &id, &t, |_| Command::RaiseHand).await
}

/// Takes one join-or-hand from the bucket of the peer's network.
fn admit_net(app: &App, peer: Option<&Extension<ConnectInfo<SocketAddr>>>) -> bool {
    peer.is_none_or(|Extension(ConnectInfo(a))| {
        app.net_limiter
            .check(crate::app::net_key(&crate::app::network_of(a.ip())))
    })
}

async fn lower_hand(
    State(app): State<AppState>,
    Path(id): Path<String>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    run(&app, &id, &t, |_| Command::LowerHand).await
}

async fn stage_add(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::BringOnStage {
        target,
        name: None,
    })
    .await
}

async fn stage_remove(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::MoveToAudience { target }).await
}

async fn cohost_add(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::AppointCohost { target }).await
}

async fn cohost_remove(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::DismissCohost { target }).await
}

async fn mute(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::Mute { target }).await
}

async fn unmute(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::Unmute { target }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoiseBody {
    on: bool,
}

/// Noise suppression on or off for one speaker (host, co-host, or the
/// speaker themselves).
async fn noise_suppression(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
    ApiJson(body): ApiJson<NoiseBody>,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    run(&app, &id, &t, |_| Command::SetNoiseSuppression {
        target,
        on: body.on,
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    #[serde(default)]
    ban: bool,
    /// With `ban` in a space without identities: also refuse new joins
    /// from the network the participant joined from (default true; false
    /// for someone behind an address many share).
    #[serde(default)]
    hold_address: Option<bool>,
}

async fn remove(
    State(app): State<AppState>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
    ApiJson(body): ApiJson<RemoveBody>,
) -> Result<Json<Value>, ApiError> {
    let target = pid(&p)?;
    let id = space_id(&id)?;
    let cell = app.space(id)?;
    let claims = actor(&app, id, &t)?;
    let opts = crate::app::CommandOptions {
        hold_network: body.hold_address.unwrap_or(true),
    };
    let cmd = Command::Remove {
        target,
        ban: body.ban,
    };
    app.command_with(&cell, &claims, cmd, opts).await?;
    Ok(Json(cell.view()))
}

/// A fresh token: for the bearer of a still-valid participant token (the
/// same participant, name and identity, if not removed), or, with the admin
/// token, the host's (so a host whose token expired, e.g. for a space
/// scheduled beyond the token lifetime, can still start it).
async fn reissue(
    State(app): State<AppState>,
    Path(id): Path<String>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&id)?;
    let cell = app.space(id)?;
    let admin = secrets_equal(t.0.as_bytes(), app.admin_token.as_bytes());
    let (pid, name, idsub, net, role, starts) = {
        let inner = cell.inner.lock();
        let s = &inner.space;
        let (pid, name, idsub, net) = if admin {
            let host = s.member(s.host).map_or("Host", |m| m.name.as_str());
            (s.host, host.to_owned(), None, None)
        } else {
            let c = actor(&app, id, &t)?;
            (c.pid, c.name, c.idsub, c.net)
        };
        let role = s.may_follow_events(pid)?;
        (pid, name, idsub, net, role, s.scheduled_for_ms)
    };
    let token = app.mint(id, pid, &name, idsub, starts, net);
    Ok(Json(json!({
        "participant_id": pid,
        "token": token,
        "role": role.as_str(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactBody {
    emoji: String,
}

async fn react(
    State(app): State<AppState>,
    Path(id): Path<String>,
    t: Token,
    ApiJson(body): ApiJson<ReactBody>,
) -> Result<Response, ApiError> {
    let id = space_id(&id)?;
    let cell = app.space(id)?;
    let claims = actor(&app, id, &t)?;
    if !app.reaction_limiter.check(claims.pid.0) {
        return Err(ApiError::rate_limited(1));
    }
    {
        let mut inner = cell.inner.lock();
        inner.space.may_react(claims.pid)?;
        inner.reactions.add(&body.emoji)?;
    }
    app.members.note_reaction(id, &body.emoji);
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    name: String,
    /// An identity token from the operator's own app.
    #[serde(default)]
    identity: Option<String>,
}

async fn join(
    State(app): State<AppState>,
    Path(id): Path<String>,
    prior: Option<Token>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&id)?;
    let cell = app.space(id)?;
    if !app.join_limiter.check(0) || !admit_net(&app, peer.as_ref()) {
        return Err(ApiError::rate_limited(1));
    }
    let name = validate_name(&body.name)?.to_owned();
    // With an operator identity the participant id is derived from it, so a
    // ban follows the person, not the token.
    let (pid, idsub) = match (&body.identity, &app.identity_key) {
        (Some(tok), Some(key)) => {
            let claims: IdentityClaims = key.verify(tok, now_s())?;
            (identity_pid(id, &claims.sub), Some(claims.sub))
        }
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "this server does not accept identity tokens",
            ));
        }
        (None, _) => (ParticipantId(rand::random()), None),
    };
    // A banned participant cannot come back, with their old token or their
    // identity.
    let prior = prior
        .and_then(|Token(t)| app.verify(id, &t).ok())
        .map(|c| c.pid);
    let net = peer.map(|Extension(ConnectInfo(a))| crate::app::network_of(a.ip()));
    let (role, starts) = {
        let inner = cell.inner.lock();
        let s = &inner.space;
        let role = s.may_join_from(pid, prior, net.as_deref(), idsub.is_some())?;
        (role, s.scheduled_for_ms)
    };
    let token = app.mint(id, pid, &name, idsub, starts, net);
    app.metrics.joins.inc();
    cell.stats.lock().join(pid.0);
    Ok(Json(json!({
        "participant_id": pid,
        "token": token,
        "role": role.as_str(),
        "listen": listen_urls(id),
        "events": format!("/api/v1/spaces/{id}/events"),
    })))
}

fn identity_pid(space: SpaceId, sub: &str) -> ParticipantId {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(space.0.to_be_bytes());
    h.update(sub.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    ParticipantId(u64::from_be_bytes(b))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document().to_string(),
    )
        .into_response()
}
