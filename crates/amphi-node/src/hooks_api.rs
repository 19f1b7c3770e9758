//! `/api/v1/webhooks`: the admin's webhook endpoints, their secrets and
//! their delivery logs (docs/api.md, "Webhooks").

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use amphi_core::token::secrets_equal;
use amphi_store::Endpoint;

use crate::app::App;
use crate::auth::Token;
use crate::body::ApiJson;
use crate::error::ApiError;
use crate::timefmt::now_ms;
use crate::webhooks::{
    EventKind, PRIVATE_REFUSED, delivery_view, endpoint_view, is_public, new_secret, refused_target,
};

/// Endpoints one node keeps.
const MAX_ENDPOINTS: usize = 100;
/// Longest endpoint URL.
const MAX_URL: usize = 2048;

/// The webhook routes.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/webhooks", get(list).post(create))
        .route("/api/v1/webhooks/{hook}", get(show).delete(delete))
        .route("/api/v1/webhooks/{hook}/deliveries", get(deliveries))
        .route(
            "/api/v1/spaces/{id}/reminders",
            axum::routing::post(remind).delete(forget),
        )
}

fn admin(app: &App, token: Option<Token>) -> Result<(), ApiError> {
    let Some(Token(token)) = token else {
        return Err(ApiError::unauthorized("the admin token is required"));
    };
    if !secrets_equal(token.as_bytes(), app.admin_token.as_bytes()) {
        return Err(ApiError::unauthorized("invalid admin token"));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&mut amphi_store::Store) -> Result<T, amphi_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || f(&mut store.lock())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "webhook store");
            app.metrics.storage_errors.inc();
            Err(ApiError::internal(
                "could not read or write the webhooks; try again",
            ))
        }
        Err(_) => Err(ApiError::internal("the store task failed")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// Checks an endpoint's URL: absolute http(s), not too long, and (unless
/// `--webhook-allow-private`) not aimed at a private, loopback or
/// link-local address, by literal or by what its name resolves to now
/// (a name that does not resolve yet is taken: it is checked again at
/// every delivery).
async fn check_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let bad = || ApiError::bad_request("url must be an absolute http:// or https:// URL");
    if url.len() > MAX_URL {
        return Err(ApiError::bad_request(format!(
            "url is longer than {MAX_URL} bytes"
        )));
    }
    let uri: axum::http::Uri = url.parse().map_err(|_| bad())?;
    let (host, port) = match (uri.scheme_str(), uri.host()) {
        (Some(scheme @ ("http" | "https")), Some(h)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            uri.port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 }),
        ),
        _ => return Err(bad()),
    };
    if let Some(why) = refused_target(url, allow_private) {
        return Err(ApiError::bad_request(why));
    }
    if !allow_private && host.parse::<std::net::IpAddr>().is_err() {
        let found = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        if let Ok(Ok(addrs)) = found {
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty() && addrs.iter().all(|a| !is_public(a.ip())) {
                return Err(ApiError::bad_request(PRIVATE_REFUSED));
            }
        }
    }
    Ok(())
}

async fn create(
    State(app): State<Arc<App>>,
    token: Option<Token>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    admin(&app, token)?;
    check_url(&body.url, app.webhooks.allows_private()).await?;
    let mut events = Vec::new();
    for e in body.events.unwrap_or_default() {
        let kind = EventKind::parse(&e).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown event {e:?}; known: {}",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            ))
        })?;
        if !events.contains(&kind.as_str().to_owned()) {
            events.push(kind.as_str().to_owned());
        }
    }
    let id: [u8; 8] = rand::random();
    let endpoint = Endpoint {
        id: format!(
            "ep_{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        url: body.url,
        secret: new_secret(),
        events,
        created_at_ms: now_ms(),
    };
    let stored = endpoint.clone();
    let added = blocking(&app, move |s| {
        if s.endpoints()?.len() >= MAX_ENDPOINTS {
            return Ok(false);
        }
        s.add_endpoint(&stored)?;
        Ok(true)
    })
    .await?;
    if !added {
        return Err(ApiError::conflict(format!(
            "a node keeps at most {MAX_ENDPOINTS} webhook endpoints"
        )));
    }
    // In a cluster, every node delivers the events it raises to it too.
    app.members
        .clone()
        .share_endpoint(&endpoint.id, Some(&endpoint));
    Ok((
        StatusCode::CREATED,
        Json(json!({"webhook": endpoint_view(&endpoint)})),
    )
        .into_response())
}

async fn list(State(app): State<Arc<App>>, token: Option<Token>) -> Result<Json<Value>, ApiError> {
    admin(&app, token)?;
    let all = blocking(&app, |s| s.endpoints()).await?;
    Ok(Json(
        json!({"webhooks": all.iter().map(endpoint_view).collect::<Vec<_>>()}),
    ))
}

async fn show(
    State(app): State<Arc<App>>,
    token: Option<Token>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&app, token)?;
    let found = blocking(&app, move |s| s.endpoint(&id)).await?;
    let e = found.ok_or_else(|| ApiError::not_found("no such webhook"))?;
    Ok(Json(json!({"webhook": endpoint_view(&e)})))
}

async fn delete(
    State(app): State<Arc<App>>,
    token: Option<Token>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&app, token)?;
    let gone = id.clone();
    if blocking(&app, move |s| s.delete_endpoint(&id)).await? {
        app.members.clone().share_endpoint(&gone, None);
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("no such webhook"))
    }
}

#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
    before: Option<i64>,
}

async fn deliveries(
    State(app): State<Arc<App>>,
    token: Option<Token>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&app, token)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let found = blocking(&app, move |s| {
        Ok(match s.endpoint(&id)? {
            None => None,
            Some(_) => Some(s.deliveries(&id, q.before, limit)?),
        })
    })
    .await?;
    let log = found.ok_or_else(|| ApiError::not_found("no such webhook"))?;
    let next = (log.len() == limit)
        .then(|| log.last().map(|d| d.id))
        .flatten();
    Ok(Json(json!({
        "deliveries": log.iter().map(delivery_view).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

/// Reminders one space keeps.
const MAX_REMINDERS: usize = 10_000;
/// Longest contact string.
const MAX_CONTACT: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemindBody {
    /// How the operator's system reaches the person (an address, a user
    /// id): passed through, never used by amphi.
    #[serde(default)]
    contact: Option<String>,
}

/// "Remind me": a participant of a scheduled space asks for a
/// `space.reminder` webhook when it starts.
async fn remind(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    t: Token,
    ApiJson(body): ApiJson<RemindBody>,
) -> Result<Response, ApiError> {
    let id: amphi_core::SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let claims = app.verify(id, &t.0)?;
    let contact = body.contact.unwrap_or_default();
    if contact.len() > MAX_CONTACT || contact.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "contact must be at most {MAX_CONTACT} bytes, no control characters"
        )));
    }
    {
        let inner = cell.inner.lock();
        inner.space.may_follow_events(claims.pid)?;
        if inner.space.state != amphi_core::room::SpaceState::Scheduled {
            return Err(ApiError::conflict("reminders are for scheduled spaces"));
        }
    }
    // One network's share of the space's reminders (after the checks
    // above: a refused request spends none).
    if let Some(Extension(ConnectInfo(peer))) = peer {
        let net = crate::app::net_key(&crate::app::network_of(peer.ip()));
        app.reminder_limiter
            .try_take(crate::admission::pair_key(id.0, net))
            .map_err(ApiError::rate_limited)?;
    }
    let (space, pid, name) = (id.to_string(), claims.pid.to_string(), claims.name.clone());
    let kept = blocking(&app, move |s| {
        s.add_reminder(&space, &pid, &name, &contact, MAX_REMINDERS, now_ms())
    })
    .await?;
    if !kept {
        return Err(ApiError::conflict(format!(
            "this space already has {MAX_REMINDERS} reminders"
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"reminder": {"participant_id": claims.pid}})),
    )
        .into_response())
}

async fn forget(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    t: Token,
) -> Result<Response, ApiError> {
    let id: amphi_core::SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    app.space(id)?;
    let claims = app.verify(id, &t.0)?;
    let (space, pid) = (id.to_string(), claims.pid.to_string());
    if blocking(&app, move |s| s.delete_reminder(&space, &pid)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("no reminder"))
    }
}
