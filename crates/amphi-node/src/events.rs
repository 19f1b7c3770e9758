//! The events WebSocket: a snapshot, then coalesced updates (≤ 4/s).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use amphi_core::token::Claims;

use crate::app::{App, SpaceCell, Update};
use crate::auth::Token;
use crate::error::ApiError;

/// Minimum time between two updates to one client.
const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Largest message (and frame) a client may send: a frame that announces
/// more is refused on its header, before any of it is buffered.
const MAX_IN: usize = 4096;

/// A client that has not taken one message in this long has stopped
/// reading: it is closed (its kernel send buffer is small, see
/// [`crate::conn::UPGRADED_SNDBUF`], so this is what it holds meanwhile).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one message, or gives up on a client that stopped reading.
async fn send(socket: &mut WebSocket, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// The events channel's route.
pub fn router() -> Router<Arc<App>> {
    Router::new().route("/api/v1/spaces/{id}/events", get(events))
}

async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    token: Token,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let id = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let claims = app.verify(id, &token.0)?;
    cell.inner.lock().space.may_follow_events(claims.pid)?;
    // Small buffers: an idle client costs a few KiB, not the 128 KiB
    // read buffer tungstenite starts with.
    Ok(ws
        .max_message_size(MAX_IN)
        .max_frame_size(MAX_IN)
        .read_buffer_size(MAX_IN)
        .write_buffer_size(0)
        .on_upgrade(move |socket| client(app, cell, claims, socket)))
}

/// What ended a wait for the next update.
enum Wait {
    /// An update (`true`), or the client went away (`false`).
    Changed(bool),
    /// This node's copy of the space may be stale (cluster).
    Stale,
    /// A caption cue, sent at once (not coalesced).
    Caption(Arc<str>),
}

fn you(cell: &SpaceCell, claims: &Claims) -> Option<Value> {
    let inner = cell.inner.lock();
    let s = &inner.space;
    let role = s.may_follow_events(claims.pid).ok()?;
    let member = s.member(claims.pid);
    let invitation = inner
        .presence
        .invitation(claims.pid, crate::timefmt::now_ms())
        .map(|i| json!({"by": {"participant_id": i.by, "name": i.by_name}, "expires_at": crate::timefmt::rfc3339(i.expires_ms)}));
    Some(json!({
        "participant_id": claims.pid,
        "name": member.map_or(claims.name.as_str(), |m| m.name.as_str()),
        "role": role.as_str(),
        "on_stage": role.on_stage(),
        "muted": member.is_some_and(|m| m.muted),
        "hand_raised": member.is_some_and(|m| m.hand_raised_at.is_some()),
        "invitation": invitation,
    }))
}

/// One client's message: the shared part, its own `you`, and the
/// reactions and hand changes of the updates after `after`, the last one
/// it was sent (`None` for its snapshot: the whole hand queue).
fn message(kind: &str, update: &Update, you: Value, after: Option<u64>) -> String {
    let reactions = json!(update.reactions_since(after.unwrap_or(update.number)));
    match after.and_then(|a| update.hands_since(a)) {
        Some(hands) => format!(
            "{{\"type\":\"{kind}\",\"you\":{you},\"reactions\":{reactions},\"hands\":{hands},{}}}",
            update.shared
        ),
        None => format!(
            "{{\"type\":\"{kind}\",\"you\":{you},\"reactions\":{reactions},{}}}",
            update.full
        ),
    }
}

async fn client(app: Arc<App>, cell: Arc<SpaceCell>, claims: Claims, mut socket: WebSocket) {
    app.metrics.events_clients.inc();
    {
        let mut inner = cell.inner.lock();
        inner.note_net(&claims);
        inner.presence.arrive(
            claims.pid,
            &claims.name,
            (crate::timefmt::now_ms().max(0) as u64) * 1000,
        );
    }
    let mut rx = cell.updates.subscribe();
    let mut captions = cell.captions.subscribe();
    let mut first = true;
    // The snapshot carries no reactions: a client counts from when it came.
    let mut reported = rx.borrow().number;
    loop {
        let update = rx.borrow_and_update().clone();
        let Some(you) = you(&cell, &claims) else {
            let banned = cell.inner.lock().space.is_banned(claims.pid);
            send(
                &mut socket,
                Message::Text(
                    json!({"type": "removed", "banned": banned})
                        .to_string()
                        .into(),
                ),
            )
            .await;
            break;
        };
        let kind = if first { "snapshot" } else { "update" };
        let after = (!first).then_some(reported);
        first = false;
        if !send(
            &mut socket,
            Message::Text(message(kind, &update, you, after).into()),
        )
        .await
        {
            // Gone, or not reading: dropped without a goodbye that would
            // wait on it again.
            return gone(&app, &cell, &claims);
        }
        reported = update.number;
        if update.ended {
            send(
                &mut socket,
                Message::Text(json!({"type": "ended"}).to_string().into()),
            )
            .await;
            break;
        }
        // Wait for a change, reading (and discarding) what the client sends
        // so closes and pings are handled.
        let mut stale_check = tokio::time::interval(Duration::from_secs(1));
        let wait = loop {
            let changed = async {
                loop {
                    tokio::select! {
                        r = rx.changed() => return Wait::Changed(r.is_ok()),
                        c = captions.recv() => match c {
                            Ok(cue) => return Wait::Caption(cue),
                            // A client too slow for the cues skips some.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                return Wait::Changed(false)
                            }
                        },
                        m = socket.recv() => match m {
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Wait::Changed(false),
                            Some(Ok(_)) => {}
                        },
                        // In a cluster, a node cut off from NATS stops sending
                        // what may be stale: the client reconnects elsewhere.
                        _ = stale_check.tick() => {
                            if app.members.check_fresh(Some(cell.id)).is_err()
                                || app.members.fenced(cell.id)
                            {
                                return Wait::Stale;
                            }
                        }
                    }
                }
            };
            match changed.await {
                Wait::Caption(cue) => {
                    if !send(&mut socket, Message::Text(cue.to_string().into())).await {
                        return gone(&app, &cell, &claims);
                    }
                }
                other => break other,
            }
        };
        match wait {
            Wait::Caption(_) | Wait::Changed(true) => {}
            Wait::Changed(false) => break,
            Wait::Stale => {
                send(
                    &mut socket,
                    Message::Text(
                        json!({"type": "moved", "reason": "this node lost the cluster; reconnect to another node"})
                            .to_string()
                            .into(),
                    ),
                )
                .await;
                send(
                    &mut socket,
                    Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1013,
                        reason: "this node lost the cluster; reconnect".into(),
                    })),
                )
                .await;
                break;
            }
        }
        tokio::time::sleep(MIN_INTERVAL).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::Close(None))).await;
    gone(&app, &cell, &claims);
}

/// A client's presence and count, given back.
fn gone(app: &App, cell: &SpaceCell, claims: &Claims) {
    cell.inner.lock().presence.leave(claims.pid);
    app.metrics.events_clients.dec();
}
