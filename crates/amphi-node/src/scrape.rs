//! `GET /metrics`: the node's one `prometheus_client` registry, its parts
//! read at scrape time, behind an optional bearer token, on the main
//! listener or on a listener of its own (`--metrics-addr`).
//!
//! A metric labelled by space never names a private space: the listener
//! and speaker counts of every non-public space are summed under
//! `space="private"` (and `participant="private"`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amphi_core::{SpaceId, SpaceState};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::error::ApiError;
use crate::metrics::{self, Part, Registry, Scrape};

/// The label value standing for every non-public space.
pub const PRIVATE: &str = "private";

/// What `/metrics` serves, and to whom.
#[derive(Debug)]
pub struct MetricsEndpoint {
    registry: Registry,
    /// With `--metrics-token`: the bearer token a scrape must present.
    token: Option<String>,
}

impl MetricsEndpoint {
    /// The registry of `app`'s metrics: one collector per part of the
    /// node, each reading its atomics when scraped.
    pub fn new(app: &Arc<App>, token: Option<String>) -> Arc<Self> {
        let mut registry = Registry::default();
        registry.register_collector(Part::new(app, |a, out| a.metrics.collect(out)));
        registry.register_collector(Part::new(app, spaces));
        registry.register_collector(Part::new(app, egress));
        registry.register_collector(Part::new(app, |a, out| a.media.collect(out)));
        registry.register_collector(Part::new(app, |a, out| a.captions.collect(out)));
        registry.register_collector(Part::new(app, speakers));
        registry.register_collector(Part::new(app, webhooks));
        registry.register_collector(Part::new(app, |a, out| a.members.render_metrics(out)));
        registry.register_collector(Part::new(app, |a, out| {
            out.gauge(
                "amphi_uptime_seconds",
                "Seconds since start.",
                a.started.elapsed().as_secs_f64(),
            );
        }));
        Arc::new(MetricsEndpoint {
            registry,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// Whether a request with these headers may read the metrics.
    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .any(|t| bool::from(t.trim().as_bytes().ct_eq(token.as_bytes())))
    }
}

/// The `/metrics` route alone (merged into the main router, or served on
/// `--metrics-addr`).
pub fn router<S: Clone + Send + Sync + 'static>(endpoint: Arc<MetricsEndpoint>) -> Router<S> {
    Router::new().route("/metrics", get(serve).with_state(endpoint))
}

async fn serve(State(ep): State<Arc<MetricsEndpoint>>, headers: HeaderMap) -> Response {
    if !ep.allows(&headers) {
        let mut res =
            ApiError::unauthorized("/metrics needs Authorization: Bearer <--metrics-token>")
                .into_response();
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"metrics\""),
        );
        return res;
    }
    match metrics::render(&ep.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be written",
        )
        .into_response(),
    }
}

/// Spaces by state, participants by role, listeners by space and output.
fn spaces(app: &App, out: &mut Scrape<'_>) {
    let cells: Vec<_> = app.spaces.read().values().cloned().collect();
    let mut by_state = [0u64; 3];
    let mut roles = [0u64; 3];
    // (space label, output) → listeners; the private ones summed.
    let mut listeners: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for c in &cells {
        let inner = c.inner.lock();
        let s = &inner.space;
        by_state[s.state as usize] += 1;
        if s.state == SpaceState::Live {
            for m in s.stage() {
                roles[m.role as usize] += 1;
            }
        }
        let label = space_label(c.id, s.public);
        drop(inner);
        if let Some(live) = c.live.read().as_ref() {
            *listeners.entry((label.clone(), "ogg")).or_default() += live.ogg.listeners();
            *listeners.entry((label, "ws")).or_default() += live.ws.listeners();
        }
    }
    out.gauge_family(
        "amphi_spaces",
        "Spaces by state.",
        [
            ([("state", "scheduled")], by_state[0]),
            ([("state", "live")], by_state[1]),
            ([("state", "ended")], by_state[2]),
        ],
    );
    let total_listeners: u64 = listeners.values().sum();
    out.gauge_family(
        "amphi_participants",
        "Participants in live spaces by role (listeners: stream connections on this node).",
        [
            ([("role", "host")], roles[0]),
            ([("role", "cohost")], roles[1]),
            ([("role", "speaker")], roles[2]),
            ([("role", "listener")], total_listeners),
        ],
    );
    out.gauge_family(
        "amphi_listeners",
        "Listener streams by space and output.",
        listeners
            .iter()
            .map(|((space, output), n)| ([("space", space.as_str()), ("output", output)], *n)),
    );
}

/// How a space is named in a label: its id if it is public, else
/// [`PRIVATE`].
fn space_label(id: SpaceId, public: bool) -> String {
    if public {
        id.to_string()
    } else {
        PRIVATE.to_owned()
    }
}

/// Each speaker's jitter-buffer counters; a private space's speakers are
/// summed under `space="private",participant="private"`.
fn speakers(app: &App, out: &mut Scrape<'_>) {
    let rows = app.media.speaker_stats();
    // The cells first, then each room's lock (never under the map's lock).
    let cells: Vec<_> = {
        let spaces = app.spaces.read();
        rows.iter()
            .filter_map(|(sp, _, _)| spaces.get(sp).cloned())
            .collect()
    };
    // A space no longer known here counts as private.
    let public: HashMap<SpaceId, bool> = cells
        .iter()
        .map(|c| (c.id, c.inner.lock().space.public))
        .collect();
    let mut by_label: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    for (sp, p, st) in &rows {
        let key = if public.get(sp).copied().unwrap_or(false) {
            (sp.to_string(), p.to_string())
        } else {
            (PRIVATE.to_owned(), PRIVATE.to_owned())
        };
        let e = by_label.entry(key).or_default();
        e[0] += st.received;
        e[1] += st.missing;
        e[2] += st.late;
    }
    for (name, help, pick) in [
        (
            "amphi_speaker_packets_total",
            "Packets received per speaker (at the mixer).",
            0,
        ),
        (
            "amphi_speaker_lost_total",
            "Packets missing per speaker (concealed).",
            1,
        ),
        (
            "amphi_speaker_late_total",
            "Packets arriving too late to play (jitter beyond the buffer).",
            2,
        ),
    ] {
        out.counter_family(
            name,
            help,
            by_label.iter().map(|((sp, p), v)| {
                (
                    [("space", sp.as_str()), ("participant", p.as_str())],
                    v[pick],
                )
            }),
        );
    }
}

/// The webhooks' counters.
fn webhooks(app: &App, out: &mut Scrape<'_>) {
    let h = &app.webhooks.stats;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, value) in [
        (
            "amphi_webhook_deliveries_queued_total",
            "Webhook deliveries queued (one per event and endpoint).",
            &h.queued,
        ),
        (
            "amphi_webhook_deliveries_total",
            "Webhook deliveries acknowledged (2xx).",
            &h.delivered,
        ),
        (
            "amphi_webhook_failed_attempts_total",
            "Webhook attempts that failed and will be retried.",
            &h.failed_attempts,
        ),
        (
            "amphi_webhook_given_up_total",
            "Webhook deliveries given up after the retry window.",
            &h.given_up,
        ),
    ] {
        out.counter(name, help, l(value));
    }
}

/// The fan-out's counters.
fn egress(app: &App, out: &mut Scrape<'_>) {
    let e = app.egress.stats();
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    out.gauge(
        "amphi_fanout_listeners",
        "Listeners held by the fan-out workers.",
        l(&e.listeners),
    );
    for (name, help, value) in [
        (
            "amphi_fanout_units_total",
            "Units (pages, messages) published.",
            &e.units_published,
        ),
        (
            "amphi_fanout_bytes_total",
            "Bytes written to listeners.",
            &e.bytes_written,
        ),
        (
            "amphi_fanout_writes_total",
            "Socket writes to listeners.",
            &e.writes,
        ),
        (
            "amphi_fanout_skipped_units_total",
            "Units slow listeners skipped.",
            &e.units_skipped,
        ),
        (
            "amphi_fanout_closed_slow_total",
            "Listeners closed for stalling.",
            &e.closed_slow,
        ),
        (
            "amphi_fanout_closed_total",
            "Listeners that went away.",
            &e.closed_gone,
        ),
        (
            "amphi_fanout_pongs_total",
            "Pongs sent to live.ws listeners.",
            &e.pongs,
        ),
        (
            "amphi_fanout_closed_ws_total",
            "live.ws listeners closed by a close handshake (theirs echoed, or ours for a protocol violation).",
            &e.closed_ws,
        ),
    ] {
        out.counter(name, help, l(value));
    }
}
