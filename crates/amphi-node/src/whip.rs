//! WHIP (RFC 9725) for speakers: an SDP offer in, an answer and a session
//! resource out; `DELETE` on the resource ends it. CORS so a browser on
//! another origin can publish.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes as BodyBytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};

use amphi_core::{ParticipantId, SpaceId};
use amphi_rtc::{RtcError, SessionId, SessionRequest};

use crate::admission::OfferRefusal;
use crate::app::App;
use crate::auth::Token;
use crate::error::ApiError;

/// The WHIP routes.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/api/v1/spaces/{id}/whip",
            post(whip_post).options(whip_options),
        )
        .route(
            "/api/v1/spaces/{id}/whip/{session}",
            delete(whip_delete).get(whip_status).options(whip_options),
        )
}

fn cors(res: &mut Response) {
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link"),
    );
}

fn with_cors(r: Result<Response, ApiError>) -> Response {
    let mut res = r.unwrap_or_else(IntoResponse::into_response);
    cors(&mut res);
    res
}

/// A CORS preflight, or a WHIP client asking for its ICE servers before it
/// makes its offer (the browser needs TURN servers before it gathers): with
/// a stage member's token the answer carries the TURN `Link`s.
async fn whip_options(
    State(app): State<Arc<App>>,
    Path(params): Path<Vec<(String, String)>>,
    token: Option<Token>,
) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let space = params
        .iter()
        .find(|(k, _)| k == "id")
        .and_then(|(_, v)| v.parse::<SpaceId>().ok());
    if let (Some(id), Some(token)) = (space, token)
        && let Ok(claims) = app.verify(id, &token.0)
        && let Ok(cell) = app.space(id)
        && cell.inner.lock().space.may_use_turn(claims.pid).is_ok()
    {
        add_ice_servers(&app, &mut res, claims.pid);
    }
    with_cors(Ok(res))
}

/// The TURN servers (if configured) as `Link` headers, with credentials
/// for `pid`.
fn add_ice_servers(app: &App, res: &mut Response, pid: ParticipantId) {
    let Some(turn) = &app.turn else { return };
    for link in turn.links(&pid.to_string(), crate::timefmt::now_s()) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            res.headers_mut().append(header::LINK, v);
        }
    }
}

async fn whip_post(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    token: Option<Token>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: BodyBytes,
) -> Response {
    let net =
        peer.map(|Extension(ConnectInfo(a))| crate::app::net_key(&crate::app::network_of(a.ip())));
    with_cors(whip_publish(app, id, headers, token, net, body).await)
}

async fn whip_publish(
    app: Arc<App>,
    id: String,
    headers: HeaderMap,
    token: Option<Token>,
    net: Option<u64>,
    body: BodyBytes,
) -> Result<Response, ApiError> {
    // A flood is refused before any work: its network's bucket first.
    if app.offer_limits.check_network(net).is_err() {
        return Err(ApiError::rate_limited(1));
    }
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let token = token.ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    let claims = app.verify(id, &token.0)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "WHIP offers are application/sdp",
        ));
    }
    cell.inner.lock().space.may_publish(claims.pid)?;
    match app.offer_limits.check_participant(claims.pid.0) {
        Ok(()) => {}
        // Counted with every answer, by route and status.
        Err(OfferRefusal::TooFast) => return Err(ApiError::rate_limited(1)),
        Err(OfferRefusal::NodeBusy) => {
            return Err(ApiError::unavailable(
                "the node takes no more WHIP offers this second",
                1,
            ));
        }
    }
    let offer = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the SDP offer is not UTF-8"))?;
    let gate = cell.gate(claims.pid);
    let music = cell.inner.lock().space.music;
    let info = app
        .media
        .create_session(SessionRequest {
            space: id,
            participant: claims.pid,
            offer_sdp: offer,
            audible: gate.clone(),
            music,
        })
        .await
        .map_err(|e| match e {
            RtcError::TooManySessions => ApiError::unavailable(e.to_string(), 5),
            other => ApiError::bad_request(other.to_string()),
        })?;
    app.media.add_session(
        id,
        claims.pid,
        info.id,
        gate,
        cell.denoise_flag(claims.pid),
        info.sends_return_audio,
    );
    let location = format!("/api/v1/spaces/{id}/whip/{}", info.id);
    let mut res = (StatusCode::CREATED, info.answer_sdp).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    add_ice_servers(&app, &mut res, claims.pid);
    Ok(res)
}

/// Whether a WHIP session is still publishing: 200 while the space is
/// mixed on this node (its owner: the call is forwarded there from any
/// node) and the token's participant published to it; 404 once it is gone
/// (the origin died and another node took the space over). A client that
/// gets 404, or 503 (the owner does not answer), POSTs its offer again to
/// the endpoint, with backoff, through any node (docs/api.md).
async fn whip_status(
    State(app): State<Arc<App>>,
    Path((id, _session)): Path<(String, String)>,
    token: Option<Token>,
) -> Response {
    let r = async {
        let id: SpaceId = id
            .parse()
            .map_err(|_| ApiError::not_found("no such space"))?;
        let cell = app.space(id)?;
        let token = token.ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
        let claims = app.verify(id, &token.0)?;
        if app.media.is_mixing(id) && cell.publishers().contains(&claims.pid) {
            Ok(StatusCode::OK.into_response())
        } else {
            Err(ApiError::not_found(
                "this WHIP session is gone: POST the offer again",
            ))
        }
    }
    .await;
    with_cors(r)
}

async fn whip_delete(
    State(app): State<Arc<App>>,
    Path((id, session)): Path<(String, String)>,
    token: Option<Token>,
) -> Response {
    let r = async {
        let id: SpaceId = id
            .parse()
            .map_err(|_| ApiError::not_found("no such space"))?;
        let token = token.ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
        let claims = app.verify(id, &token.0)?;
        let session: SessionId = session
            .parse()
            .map_err(|_| ApiError::not_found("no such session"))?;
        app.media.close_session_of(session, claims.pid);
        Ok(StatusCode::OK.into_response())
    }
    .await;
    with_cors(r)
}
