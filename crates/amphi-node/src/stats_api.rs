//! `GET /api/v1/spaces/{id}/stats` and the loop that samples listeners
//! and flushes each space's analytics (crate::stats) to the store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use amphi_core::SpaceId;
use amphi_core::room::SpaceState;
use amphi_core::token::secrets_equal;

use crate::app::App;
use crate::auth::Token;
use crate::error::ApiError;
use crate::stats::{FLUSH_MS, SpaceStats};
use crate::timefmt::now_ms;

/// The analytics route.
pub fn router() -> Router<Arc<App>> {
    Router::new().route("/api/v1/spaces/{id}/stats", get(stats))
}

async fn stats(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    t: Token,
) -> Result<Json<Value>, ApiError> {
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    // The admin, or the space's host or co-hosts.
    if !secrets_equal(t.0.as_bytes(), app.admin_token.as_bytes()) {
        let claims = app.verify(id, &t.0)?;
        let role = cell.inner.lock().space.may_follow_events(claims.pid)?;
        if !role.moderates() {
            return Err(ApiError::forbidden(
                "only the host, a co-host or the admin can read the analytics",
            ));
        }
    }
    let (state, title) = {
        let inner = cell.inner.lock();
        (inner.space.state, inner.space.title.clone())
    };
    let mut v = cell.stats.lock().view();
    if let Value::Object(m) = &mut v {
        m.insert("space_id".into(), Value::String(id.to_string()));
        m.insert("title".into(), Value::String(title));
        m.insert("state".into(), Value::String(state.as_str().into()));
        m.insert("listeners_now".into(), Value::from(cell.listeners()));
    }
    Ok(Json(v))
}

/// Loads the stored analytics into the spaces (at start).
pub fn restore(app: &App) {
    let stored = match app.store.lock().load_stats() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not load the analytics");
            return;
        }
    };
    for (id, body) in stored {
        let Ok(id) = id.parse::<SpaceId>() else {
            continue;
        };
        let Ok(cell) = app.space(id) else { continue };
        match SpaceStats::from_json(&body) {
            Some(s) => *cell.stats.lock() = s,
            None => tracing::warn!(space = %id, "stored analytics are corrupt; starting again"),
        }
    }
}

/// Samples every live space's listeners once a second; writes the
/// analytics that changed every 10 s, in one transaction-free pass off
/// the async threads.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = now_ms();
    loop {
        tick.tick().await;
        let now = now_ms();
        let cells: Vec<_> = app.spaces.read().values().cloned().collect();
        for c in &cells {
            // Replays are played after the end, on any node.
            let plays = app.members.remote_plays(c.id);
            if !plays.is_empty() {
                c.stats.lock().remote_plays(plays);
            }
            if c.inner.lock().space.state == SpaceState::Live {
                let n = c.listeners();
                let remote_joins = app.members.remote_joins(c.id);
                let remote_uniques = app.members.remote_uniques(c.id);
                let mut s = c.stats.lock();
                s.sample(n, now);
                s.remote_joins(remote_joins);
                s.merge_unique(&remote_uniques);
            }
        }
        if now - last_flush < FLUSH_MS {
            continue;
        }
        last_flush = now;
        let changed: Vec<(String, String)> = cells
            .iter()
            .filter_map(|c| {
                let mut s = c.stats.lock();
                if !s.dirty {
                    return None;
                }
                s.dirty = false;
                Some((c.id.to_string(), s.encode()))
            })
            .collect();
        if changed.is_empty() {
            continue;
        }
        let store = app.store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let store = store.lock();
            for (id, body) in &changed {
                store.save_stats(id, body, now)?;
            }
            Ok::<_, amphi_store::StoreError>(())
        })
        .await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!("could not write the analytics");
            app.metrics.storage_errors.inc();
        }
    }
}
