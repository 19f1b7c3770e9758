//! The audience and invitations to the stage (docs/toolkit.md):
//! `GET /api/v1/spaces/{id}/audience`, `POST .../invitations/{pid}` and the
//! invited person's `/accept` or `/decline`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use amphi_core::room::Command;
use amphi_core::token::Claims;
use amphi_core::{ParticipantId, SpaceId};

use crate::app::{App, SpaceCell};
use crate::audience::{INVITATION_TTL_MS, Invitation, VIEW_CAP};
use crate::auth::Token;
use crate::error::ApiError;
use crate::timefmt::{now_ms, rfc3339};

/// The audience and invitation routes.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/spaces/{id}/audience", get(audience))
        .route("/api/v1/spaces/{id}/invitations/{pid}", post(invite))
        .route("/api/v1/spaces/{id}/invitations/{pid}/accept", post(accept))
        .route(
            "/api/v1/spaces/{id}/invitations/{pid}/decline",
            post(decline),
        )
}

fn ids(
    app: &App,
    id: &str,
    pid: Option<&str>,
) -> Result<(Arc<SpaceCell>, Option<ParticipantId>), ApiError> {
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let pid = match pid {
        None => None,
        Some(p) => Some(
            p.parse()
                .map_err(|_| ApiError::not_found("no such participant"))?,
        ),
    };
    Ok((cell, pid))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

async fn audience(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    t: Token,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let (cell, _) = ids(&app, &id, None)?;
    let claims = app.verify(cell.id, &t.0)?;
    let limit = q.limit.unwrap_or(100).clamp(1, VIEW_CAP);
    let before = q.before.unwrap_or(u64::MAX);
    let now = now_ms();
    // The other nodes' newest (bounded), read before this space's lock.
    let (remote, remote_total) = app.members.remote_presence(cell.id, VIEW_CAP);
    let inner = cell.inner.lock();
    let role = inner.space.may_follow_events(claims.pid)?;
    if !role.moderates() {
        return Err(ApiError::forbidden(
            "only the host or a co-host can see the audience",
        ));
    }
    // The newest VIEW_CAP across the cluster, newest first; then the page.
    let mut all: Vec<(u64, ParticipantId, &str)> = inner
        .presence
        .page(None, VIEW_CAP)
        .into_iter()
        .map(|s| (s.seq, s.pid, s.name))
        .collect();
    all.extend(remote.iter().map(|p| (p.seq, p.pid, p.name.as_str())));
    all.sort_unstable_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    // Someone connected to two nodes is listed once (their newest).
    let mut seen = std::collections::HashSet::with_capacity(all.len());
    all.retain(|e| seen.insert(e.1));
    all.truncate(VIEW_CAP);
    let page: Vec<_> = all
        .into_iter()
        .filter(|e| e.0 < before)
        .take(limit)
        .collect();
    let next = (page.len() == limit)
        .then(|| page.last().map(|e| e.0))
        .flatten();
    let people: Vec<Value> = page
        .iter()
        .map(|&(_, pid, name)| {
            let role = inner.space.role_of(pid).map_or("removed", |r| r.as_str());
            json!({
                "participant_id": pid,
                "name": name,
                "role": role,
                "invited": inner.presence.invitation(pid, now).is_some(),
            })
        })
        .collect();
    Ok(Json(json!({
        "total": (inner.presence.total() as u64).saturating_add(remote_total),
        "listener_count": cell.listeners(),
        "cap": VIEW_CAP,
        "audience": people,
        "next_before": next,
    })))
}

async fn invite(
    State(app): State<Arc<App>>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Response, ApiError> {
    let (cell, target) = ids(&app, &id, Some(&p))?;
    let target = target.ok_or_else(|| ApiError::not_found("no such participant"))?;
    let claims = app.verify(cell.id, &t.0)?;
    if !app.command_limiter.check(claims.pid.0) {
        return Err(ApiError::rate_limited(1));
    }
    let now = now_ms();
    let expires_ms = now + INVITATION_TTL_MS;
    {
        let mut inner = cell.inner.lock();
        inner.space.may_invite(claims.pid, target)?;
        let by_name = inner
            .space
            .member(claims.pid)
            .map_or(claims.name.clone(), |m| m.name.clone());
        let inv = Invitation {
            by: claims.pid,
            by_name,
            expires_ms,
        };
        let here = inner.presence.name(target).is_some();
        if !here && app.members.remote_name(cell.id, target).is_none() {
            return Err(ApiError::not_found(
                "that participant is not present (no events connection in the cluster)",
            ));
        }
        let by = (inv.by, inv.by_name.clone());
        if !inner.presence.invite_anyway(target, inv, now) {
            return Err(ApiError::rate_limited(5));
        }
        // Shared with every node: the invited person sees it wherever
        // their events connection is.
        app.members
            .share_invitation(cell.id, target, Some((by.0, &by.1, expires_ms)));
    }
    cell.dirty.store(true, Ordering::Release);
    Ok((
        StatusCode::CREATED,
        Json(json!({"invitation": {"participant_id": target, "expires_at": rfc3339(expires_ms)}})),
    )
        .into_response())
}

/// The invited person's answer, with their own token: takes their
/// invitation (if one waits) and tells the other nodes it is answered.
fn answer(
    app: &App,
    id: &str,
    p: &str,
    t: &Token,
) -> Result<(Arc<SpaceCell>, ParticipantId, Option<Invitation>), ApiError> {
    let (cell, target) = ids(app, id, Some(p))?;
    let target = target.ok_or_else(|| ApiError::not_found("no such participant"))?;
    let claims = app.verify(cell.id, &t.0)?;
    if claims.pid != target {
        return Err(ApiError::forbidden("only the invited person can answer"));
    }
    let inv = cell.inner.lock().presence.answer(target, now_ms());
    app.members.share_invitation(cell.id, target, None);
    cell.dirty.store(true, Ordering::Release);
    Ok((cell, target, inv))
}

async fn accept(
    State(app): State<Arc<App>>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let (cell, target, inv) = answer(&app, &id, &p, &t)?;
    let inv =
        inv.ok_or_else(|| ApiError::not_found("no invitation waits (it may have expired)"))?;
    // Brought on stage by the one who invited, as they are now: an
    // inviter who lost their role since cannot bring anyone.
    let inviter = Claims {
        space: cell.id,
        pid: inv.by,
        name: inv.by_name,
        exp: 0,
        idsub: None,
        net: None,
    };
    app.command(
        &cell,
        &inviter,
        Command::BringOnStage { target, name: None },
    )
    .await?;
    Ok(Json(cell.view()))
}

async fn decline(
    State(app): State<Arc<App>>,
    Path((id, p)): Path<(String, String)>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let (_, _, inv) = answer(&app, &id, &p, &t)?;
    Ok(Json(json!({"declined": inv.is_some()})))
}
