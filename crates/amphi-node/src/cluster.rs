//! The cluster shell (`amphi serve --nats URL`): moves the sans-IO messages
//! of `amphi-cluster` over a real NATS connection.
//!
//! - **State**: the owner of a space writes its rules state to the
//!   JetStream key-value bucket `amphi_spaces` after every change (compare-
//!   and-set on the key's revision); every node watches the bucket, so any
//!   node reads any space live and its events clients see every change.
//! - **Ownership**: one node owns a space (lease in `amphi_leases`, renewed
//!   every 2 s). Mutating API calls on another node are forwarded to the
//!   owner over request/reply and run through the owner's own router, so
//!   the rules, persistence and ingest gates act where the space lives. A
//!   node that finds a lease expired takes it over (compare-and-set) and,
//!   for a live space, becomes its origin, continuing the frame numbering.
//! - **Media**: the origin publishes each program frame once on
//!   `amphi.space.<id>.frames`. A node with listeners for a space it does not
//!   originate (an edge) subscribes when its first listener arrives, asks
//!   the origin for the last 30 s, and cuts its own outputs from the frames:
//!   no per-listener traffic crosses nodes. It unsubscribes when its last
//!   listener has been gone for [`EDGE_LINGER`].
//! - **Counts**: every node publishes its listeners and reactions per space
//!   about once a second; the audience is the sum.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use amphi_cluster::{
    CONFIG_BUCKET, COUNTS_SUBJECT, CountsReport, ForwardReply, ForwardRequest, LEASES_BUCKET,
    Lease, LeaseDecision, REPLAYS_BUCKET, SPACES_BUCKET, SpaceCounts, lease,
};
use amphi_core::room::{Space, SpaceState};
use amphi_core::{Frame, SpaceId};
use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::app::{App, SpaceCell};
use crate::error::ApiError;
use crate::media::LiveMedia;
use crate::metrics::{counter, gauge};
use crate::timefmt::now_ms;

/// NATS unreachable for this long, a node stops serving other nodes'
/// spaces: its copy of their state may be stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// A node's count report older than this no longer counts.
const COUNTS_FRESH: Duration = Duration::from_secs(3);
/// How long a forwarded call waits for the owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an edge waits for the origin's history.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames queued between the mixer and the bus publisher (2 s of 50 spaces).
pub const BUS_QUEUE: usize = 5000;

/// Marks a request forwarded by another node (a request extension, which
/// no client can set): it is served here, never forwarded again.
#[derive(Clone, Copy)]
struct Forwarded;

/// Counters of the cluster shell.
#[derive(Default)]
struct ClusterStats {
    frames_published: AtomicU64,
    frames_received: AtomicU64,
    frames_bad: AtomicU64,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    state_writes: AtomicU64,
    state_conflicts: AtomicU64,
    state_applied: AtomicU64,
    takeovers: AtomicU64,
    leases_lost: AtomicU64,
    edges_started: AtomicU64,
    edges_stopped: AtomicU64,
}

/// An edge's feed of one space.
struct Edge {
    live: Arc<LiveMedia>,
    task: tokio::task::JoinHandle<()>,
    /// Last time the edge had a listener (or an HLS request).
    last_used: Mutex<Instant>,
}

/// This node's membership of the cluster.
pub struct Cluster {
    pub node: String,
    pub http: String,
    client: async_nats::Client,
    spaces_kv: kv::Store,
    leases_kv: kv::Store,
    replays_kv: kv::Store,
    /// Where each published replay lives (from the replays bucket).
    replays: Mutex<HashMap<SpaceId, String>>,
    /// Spaces this node ended and recorded, whose replay is being cut.
    pending_replays: Mutex<HashSet<SpaceId>>,
    /// Revision of each space's state key as last written or applied here.
    revisions: Mutex<HashMap<SpaceId, u64>>,
    /// Spaces this node owns: lease revision to renew at.
    owned: Mutex<HashMap<SpaceId, u64>>,
    /// Other nodes' latest reports.
    remote: Mutex<HashMap<String, (Instant, CountsReport)>>,
    /// Reactions sent on this node since the last report.
    reactions: Mutex<HashMap<SpaceId, BTreeMap<String, u64>>>,
    edges: Mutex<HashMap<SpaceId, Arc<Edge>>>,
    /// Serialises an edge's start, so concurrent first listeners share one.
    edge_start: Mutex<HashMap<SpaceId, Arc<tokio::sync::Mutex<()>>>>,
    connected: AtomicBool,
    /// Since when NATS has been unreachable (`None`: connected).
    disconnected_since: Mutex<Option<Instant>>,
    /// How long an edge keeps a feed nobody listens to.
    edge_linger: Duration,
    started: Instant,
    app: OnceLock<Weak<App>>,
    stats: ClusterStats,
}

async fn bucket(js: &jetstream::Context, name: &str, history: i64) -> anyhow::Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    // The bucket's stream, made by hand rather than with
    // `create_key_value`, which first reads account fields that servers
    // before 2.10 (Debian's 2.9) do not send. Same settings as a KV bucket.
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another node may have created it at the same moment.
        tracing::debug!(bucket = name, error = %e, "creating a bucket");
    }
    js.get_key_value(name)
        .await
        .map_err(|e| anyhow::anyhow!("could not open the key-value bucket {name}: {e}"))
}

impl Cluster {
    /// Connects to NATS (retrying until it answers) and opens the buckets.
    pub async fn connect(
        url: &str,
        node: String,
        http: String,
        edge_linger: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("amphi {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .request_timeout(Some(FORWARD_TIMEOUT))
            .event_callback(move |ev| {
                let flag = flag.clone();
                async move {
                    match ev {
                        async_nats::Event::Connected => flag.store(true, Ordering::Release),
                        async_nats::Event::Disconnected => flag.store(false, Ordering::Release),
                        _ => {}
                    }
                    tracing::info!(event = %ev, "nats");
                }
            })
            .connect(url)
            .await?;
        let js = jetstream::new(client.clone());
        let spaces_kv =
            tokio::time::timeout(Duration::from_secs(30), bucket(&js, SPACES_BUCKET, 1))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "NATS JetStream at {url} did not answer in 30 s (is it started with -js?)"
                    )
                })??;
        let leases_kv = bucket(&js, LEASES_BUCKET, 1).await?;
        let replays_kv = bucket(&js, REPLAYS_BUCKET, 1).await?;
        let cluster = Arc::new(Cluster {
            node,
            http,
            client,
            spaces_kv,
            leases_kv,
            replays_kv,
            replays: Mutex::new(HashMap::new()),
            pending_replays: Mutex::new(HashSet::new()),
            revisions: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            reactions: Mutex::new(HashMap::new()),
            edges: Mutex::new(HashMap::new()),
            edge_start: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(true),
            disconnected_since: Mutex::new(None),
            edge_linger,
            started: Instant::now(),
            app: OnceLock::new(),
            stats: ClusterStats::default(),
        });
        // The event callback's flag is the truth from here on.
        let c = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(c) = c.upgrade() else { return };
                let up = connected.load(Ordering::Acquire);
                c.connected.store(up, Ordering::Release);
                let mut since = c.disconnected_since.lock();
                match (up, *since) {
                    (true, Some(_)) => *since = None,
                    (false, None) => *since = Some(Instant::now()),
                    _ => {}
                }
            }
        });
        Ok(cluster)
    }

    /// A secret every node shares: the first node's `local` wins.
    pub async fn shared_secret(&self, name: &str, local: &[u8]) -> anyhow::Result<Vec<u8>> {
        let js = jetstream::new(self.client.clone());
        let config = bucket(&js, CONFIG_BUCKET, 1).await?;
        match config.create(name, Bytes::copy_from_slice(local)).await {
            Ok(_) => Ok(local.to_vec()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => config
                .get(name)
                .await?
                .map(|b| b.to_vec())
                .ok_or_else(|| anyhow::anyhow!("shared secret {name} vanished")),
            Err(e) => Err(e.into()),
        }
    }

    fn app(&self) -> Option<Arc<App>> {
        self.app.get().and_then(Weak::upgrade)
    }

    /// Starts the background work: state watch, leases, counts, the frame
    /// bus, history and forwarded calls.
    pub fn start(
        self: &Arc<Self>,
        app: &Arc<App>,
        router: Router,
        bus: mpsc::Receiver<(SpaceId, Bytes)>,
    ) {
        let _ = self.app.set(Arc::downgrade(app));
        tokio::spawn(self.clone().watch_spaces());
        tokio::spawn(self.clone().watch_replays());
        tokio::spawn(self.clone().publish_frames(bus));
        tokio::spawn(self.clone().serve_history());
        tokio::spawn(self.clone().serve_forwarded(router));
        tokio::spawn(self.clone().counts());
        tokio::spawn(self.clone().housekeeping());
        // Replays this node cut (or is cutting) before a restart.
        for c in app.spaces.read().values() {
            let s = &c.inner.lock().space;
            if s.state == SpaceState::Ended
                && s.record
                && crate::record::last_recorded(app.media.recorder.storage().as_ref(), c.id)
                    .is_some()
            {
                self.pending_replays.lock().insert(c.id);
            }
        }
        // Live spaces this node originated before a restart: if the lease
        // is still ours, carry on mixing them.
        let live: Vec<Arc<SpaceCell>> = app
            .spaces
            .read()
            .values()
            .filter(|c| c.inner.lock().space.state == SpaceState::Live)
            .cloned()
            .collect();
        let me = self.clone();
        tokio::spawn(async move {
            for cell in live {
                if let Ok(LeaseDecision::Mine { .. }) = me.ensure_owner(cell.id).await {
                    tracing::info!(space = %cell.id, "resuming a space this node originates");
                }
            }
        });
    }

    // ---- state -------------------------------------------------------

    /// Writes a space's state (the owner, after a change).
    pub async fn write_space(&self, space: &Space) -> Result<(), ApiError> {
        let key = amphi_cluster::space_key(space.id);
        let body = Bytes::from(serde_json::to_vec(space).unwrap_or_default());
        let known = self.revisions.lock().get(&space.id).copied();
        let res = match known {
            Some(rev) => self.spaces_kv.update(&key, body, rev).await.map_err(|e| {
                matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision)
                    .then_some(())
                    .ok_or(e.to_string())
            }),
            None => self.spaces_kv.create(&key, body).await.map_err(|e| {
                (e.kind() == kv::CreateErrorKind::AlreadyExists)
                    .then_some(())
                    .ok_or(e.to_string())
            }),
        };
        match res {
            Ok(rev) => {
                self.stats.state_writes.fetch_add(1, Ordering::Relaxed);
                let mut revs = self.revisions.lock();
                let e = revs.entry(space.id).or_insert(0);
                *e = (*e).max(rev);
                Ok(())
            }
            Err(Ok(())) => {
                self.stats.state_conflicts.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::conflict(
                    "the space changed on another node at the same time; try again",
                ))
            }
            Err(Err(e)) => {
                tracing::error!(space = %space.id, error = %e, "could not write the space's state to NATS");
                Err(ApiError::cluster_unavailable(
                    "the cluster's state store is unavailable; try again",
                    2,
                ))
            }
        }
    }

    /// Follows a bucket from its start, resuming after NATS restarts from
    /// the last revision seen.
    async fn follow(&self, kv: &kv::Store, what: &str, mut apply: impl FnMut(&Self, &kv::Entry)) {
        let mut from = 0u64;
        loop {
            let watch = if from == 0 {
                kv.watch_all().await
            } else {
                kv.watch_all_from_revision(from + 1).await
            };
            match watch {
                Ok(mut w) => {
                    while let Some(entry) = w.next().await {
                        match entry {
                            Ok(e) => {
                                from = from.max(e.revision);
                                if e.operation == kv::Operation::Put {
                                    apply(self, &e);
                                }
                            }
                            Err(err) => {
                                tracing::warn!(bucket = what, error = %err, "watch error");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(bucket = what, error = %e, "could not watch a bucket"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Follows the spaces bucket and brings every local copy up to date.
    async fn watch_spaces(self: Arc<Self>) {
        let kv = self.spaces_kv.clone();
        self.follow(&kv, SPACES_BUCKET, |c, e| {
            c.apply_entry(&e.key, &e.value, e.revision)
        })
        .await;
    }

    /// Follows the replays bucket: a replay cut on any node is offered by
    /// every node's view of the space (and redirected to).
    async fn watch_replays(self: Arc<Self>) {
        let kv = self.replays_kv.clone();
        self.follow(&kv, REPLAYS_BUCKET, |c, e| {
            let Ok(id) = e.key.parse::<SpaceId>() else {
                return;
            };
            let Ok(http) = String::from_utf8(e.value.to_vec()) else {
                return;
            };
            c.replays.lock().insert(id, http);
            if let Some(cell) = c.app().and_then(|a| a.space(id).ok()) {
                cell.replay_is_ready();
            }
        })
        .await;
    }

    /// Publishes the replays this node finished cutting.
    async fn publish_replays(&self) {
        let Some(app) = self.app() else { return };
        let pending: Vec<SpaceId> = self.pending_replays.lock().iter().copied().collect();
        for id in pending {
            let ready = app
                .space(id)
                .is_ok_and(|c| c.replay_ready.load(Ordering::Acquire));
            if !ready {
                continue;
            }
            let key = amphi_cluster::space_key(id);
            match self
                .replays_kv
                .put(&key, Bytes::from(self.http.clone()))
                .await
            {
                Ok(_) => {
                    self.pending_replays.lock().remove(&id);
                }
                Err(e) => tracing::warn!(space = %id, error = %e, "could not publish a replay"),
            }
        }
    }

    fn apply_entry(&self, key: &str, value: &[u8], revision: u64) {
        let Some(app) = self.app() else { return };
        let Ok(id) = key.parse::<SpaceId>() else {
            return;
        };
        let space: Space = match serde_json::from_slice(value) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(space = %id, error = %e, "ignoring a malformed space state");
                return;
            }
        };
        {
            let mut revs = self.revisions.lock();
            let known = revs.entry(id).or_insert(0);
            if *known >= revision {
                return;
            }
            *known = revision;
        }
        self.stats.state_applied.fetch_add(1, Ordering::Relaxed);
        let ended = space.state == SpaceState::Ended;
        let cell = app.adopt_space(space);
        cell.sync_gates();
        if self.replays.lock().contains_key(&id) {
            cell.replay_is_ready();
        }
        if ended {
            self.stop_edge(id, true);
        }
    }

    // ---- ownership ----------------------------------------------------

    async fn read_lease(&self, id: SpaceId) -> Result<Option<(Lease, u64)>, ApiError> {
        match self.leases_kv.entry(amphi_cluster::space_key(id)).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(Lease::decode(&e.value).map(|l| (l, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(space = %id, error = %e, "could not read a lease");
                Err(ApiError::cluster_unavailable(
                    "the cluster's state store is unavailable; try again",
                    2,
                ))
            }
        }
    }

    fn my_lease(&self, seq: u64, ended: bool) -> Lease {
        Lease {
            node: self.node.clone(),
            http: self.http.clone(),
            seq,
            at_ms: now_ms(),
            ended,
        }
    }

    /// Makes sure someone owns `id`, taking it over if its owner is gone.
    /// Returns `Mine` when this node owns it now, `Owner` when another does.
    pub async fn ensure_owner(&self, id: SpaceId) -> Result<LeaseDecision, ApiError> {
        for _ in 0..3 {
            let current = self.read_lease(id).await?;
            let decision =
                Lease::decide(current.as_ref().map(|(l, r)| (l, *r)), &self.node, now_ms());
            let key = amphi_cluster::space_key(id);
            let (res, previous) = match &decision {
                LeaseDecision::Owner(_) | LeaseDecision::Ended(_) => return Ok(decision),
                LeaseDecision::Mine { revision } => {
                    if self.owned.lock().contains_key(&id) {
                        return Ok(decision);
                    }
                    // Ours from before a restart: renew it and resume.
                    let prev = current.map(|(l, _)| l);
                    let seq = prev.as_ref().map_or(0, |l| l.seq);
                    (
                        self.leases_kv
                            .update(&key, self.my_lease(seq, false).encode().into(), *revision)
                            .await
                            .ok(),
                        prev,
                    )
                }
                LeaseDecision::Acquire => (
                    self.leases_kv
                        .create(&key, self.my_lease(0, false).encode().into())
                        .await
                        .ok(),
                    None,
                ),
                LeaseDecision::TakeOver { revision, previous } => (
                    self.leases_kv
                        .update(
                            &key,
                            self.my_lease(previous.seq, false).encode().into(),
                            *revision,
                        )
                        .await
                        .ok(),
                    Some(previous.clone()),
                ),
            };
            let Some(rev) = res else {
                // Another node won the race (or NATS hiccuped): read again.
                continue;
            };
            self.owned.lock().insert(id, rev);
            if previous.as_ref().is_some_and(|p| p.node != self.node) {
                self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(space = %id, from = ?previous.as_ref().map(|p| &p.node), "took over a space whose owner stopped renewing");
            }
            self.become_origin(id, previous.as_ref());
            return Ok(LeaseDecision::Mine { revision: rev });
        }
        Err(ApiError::cluster_unavailable(
            "the space's ownership is changing; try again",
            1,
        ))
    }

    /// This node owns `id` now: if the space is live and not mixed here,
    /// start mixing it, keeping the outputs it served as an edge.
    fn become_origin(&self, id: SpaceId, previous: Option<&Lease>) {
        let Some(app) = self.app() else { return };
        let Ok(cell) = app.space(id) else { return };
        if cell.inner.lock().space.state != SpaceState::Live || app.media.is_mixing(id) {
            return;
        }
        let edge = self.edges.lock().remove(&id);
        let live = edge.map(|e| {
            e.task.abort();
            e.live.clone()
        });
        let min_seq = previous.map_or(0, |p| p.next_seq(now_ms()));
        cell.start_media(&app.media, live, min_seq);
    }

    /// Called by the owner when a space ends: the lease stays, marked
    /// ended, so other nodes know where its recording was made.
    pub async fn release(&self, id: SpaceId, last_seq: u64, recorded: bool) {
        if recorded {
            self.pending_replays.lock().insert(id);
        }
        let Some(rev) = self.owned.lock().remove(&id) else {
            return;
        };
        let key = amphi_cluster::space_key(id);
        let _ = self
            .leases_kv
            .update(&key, self.my_lease(last_seq, true).encode().into(), rev)
            .await;
    }

    /// Where a space's replay lives, if another node cut it.
    pub fn replay_at(&self, id: SpaceId) -> Option<String> {
        self.replays
            .lock()
            .get(&id)
            .filter(|http| **http != self.http)
            .cloned()
    }

    /// Renews this node's leases; a lease another node took is given up.
    async fn renew(&self) {
        let Some(app) = self.app() else { return };
        let owned: Vec<(SpaceId, u64)> = self.owned.lock().iter().map(|(k, v)| (*k, *v)).collect();
        for (id, rev) in owned {
            let seq = app
                .spaces
                .read()
                .get(&id)
                .and_then(|c| {
                    c.live
                        .read()
                        .as_ref()
                        .and_then(|l| l.history.lock().last_seq())
                })
                .unwrap_or(0);
            let key = amphi_cluster::space_key(id);
            match self
                .leases_kv
                .update(&key, self.my_lease(seq, false).encode().into(), rev)
                .await
            {
                Ok(rev) => {
                    if let Some(r) = self.owned.lock().get_mut(&id) {
                        *r = rev;
                    }
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Someone took the space while we could not renew (a
                    // partition): stop acting as its owner.
                    self.owned.lock().remove(&id);
                    self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(space = %id, "lost the lease of a space to another node; no longer its origin");
                    if let Ok(cell) = app.space(id) {
                        cell.abandon_media(&app.media);
                    }
                }
                Err(e) => tracing::warn!(space = %id, error = %e, "could not renew a lease"),
            }
        }
    }

    // ---- forwarding -----------------------------------------------------

    /// Sends an API call to `node` and returns its answer.
    async fn forward(&self, node: &str, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, crate::admission::MAX_BODY).await else {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            )
            .into_response();
        };
        let headers = ["authorization", "content-type", "accept"]
            .iter()
            .filter_map(|n| {
                let v = parts.headers.get(*n)?.to_str().ok()?;
                Some(((*n).to_owned(), v.to_owned()))
            })
            .collect();
        let msg = ForwardRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            headers,
            body,
        };
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let subject = amphi_cluster::node_http_subject(node);
        let reply =
            match tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(subject, msg.encode()))
                .await
            {
                Ok(Ok(m)) => ForwardReply::decode(&m.payload).ok(),
                _ => None,
            };
        let Some(reply) = reply else {
            self.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
            return ApiError::cluster_unavailable(
                "the node that owns this space did not answer; try again",
                2,
            )
            .into_response();
        };
        let mut res = Response::new(Body::from(reply.body));
        *res.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
        for (n, v) in reply.headers {
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::try_from(n),
                HeaderValue::from_str(&v),
            ) {
                res.headers_mut().insert(n, v);
            }
        }
        res
    }

    /// Runs calls forwarded by other nodes through this node's router.
    async fn serve_forwarded(self: Arc<Self>, router: Router) {
        let subject = amphi_cluster::node_http_subject(&self.node);
        let mut sub = match self.client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not subscribe to forwarded calls");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let router = router.clone();
            let client = self.client.clone();
            tokio::spawn(async move {
                let reply = match ForwardRequest::decode(&msg.payload) {
                    Ok(req) => run_forwarded(router, req).await,
                    Err(e) => ForwardReply {
                        status: 400,
                        headers: vec![("content-type".into(), "application/json".into())],
                        body: Bytes::from(
                            ApiError::bad_request(format!("malformed forwarded call: {e}")).body(),
                        ),
                    },
                };
                let _ = client.publish(reply_to, reply.encode()).await;
            });
        }
    }

    // ---- media ----------------------------------------------------------

    /// Publishes the frames this node originates.
    async fn publish_frames(self: Arc<Self>, mut bus: mpsc::Receiver<(SpaceId, Bytes)>) {
        let mut subjects: HashMap<SpaceId, async_nats::Subject> = HashMap::new();
        while let Some((space, bytes)) = bus.recv().await {
            let subject = subjects
                .entry(space)
                .or_insert_with(|| amphi_cluster::frames_subject(space).into())
                .clone();
            if self.client.publish(subject, bytes).await.is_ok() {
                self.stats.frames_published.fetch_add(1, Ordering::Relaxed);
            }
            if subjects.len() > 10_000 {
                subjects.clear();
            }
        }
    }

    /// Answers edges' history requests for the spaces mixed here.
    async fn serve_history(self: Arc<Self>) {
        let mut sub = match self.client.subscribe("amphi.space.*.history").await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not subscribe to history requests");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let (Some(reply), Some(app)) = (msg.reply.clone(), self.app()) else {
                continue;
            };
            let Some(id) = msg
                .subject
                .split('.')
                .nth(2)
                .and_then(|s| s.parse::<SpaceId>().ok())
            else {
                continue;
            };
            if !app.media.is_mixing(id) {
                continue;
            }
            let Ok(from) = amphi_cluster::decode_history_request(&msg.payload) else {
                continue;
            };
            let Ok(cell) = app.space(id) else { continue };
            let live = cell.live.read().clone();
            let Some(live) = live else { continue };
            let body = {
                let h = live.history.lock();
                amphi_cluster::encode_frames(h.since(from))
            };
            let _ = self.client.publish(reply, body).await;
        }
    }

    /// The outputs of a live space on this node: the origin's, or an edge
    /// fed from the bus (started now if this is its first listener).
    pub async fn live_media(&self, cell: &Arc<SpaceCell>) -> Option<Arc<LiveMedia>> {
        if let Some(live) = cell.live.read().clone() {
            if let Some(e) = self.edges.lock().get(&cell.id) {
                *e.last_used.lock() = Instant::now();
            }
            return Some(live);
        }
        if cell.inner.lock().space.state != SpaceState::Live {
            return None;
        }
        let app = self.app()?;
        // One start per space at a time (a slow origin delays only its own
        // space's first listeners).
        let gate = self.edge_start.lock().entry(cell.id).or_default().clone();
        let _serial = gate.lock().await;
        if let Some(live) = cell.live.read().clone() {
            return Some(live);
        }
        let live = app.media.new_live_media(cell.id);
        let mut cutters = app.media.cutters(cell.id);
        // Subscribe first, then fetch the history: nothing falls between.
        let mut sub = match self
            .client
            .subscribe(amphi_cluster::frames_subject(cell.id))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(space = %cell.id, error = %e, "could not subscribe to a space's frames");
                return None;
            }
        };
        let mut last: Option<u64> = None;
        let history = tokio::time::timeout(
            HISTORY_TIMEOUT,
            self.client.request(
                amphi_cluster::history_subject(cell.id),
                Bytes::copy_from_slice(&amphi_cluster::encode_history_request(0)),
            ),
        )
        .await;
        match history {
            Ok(Ok(m)) => match amphi_cluster::decode_frames(&m.payload) {
                Ok(frames) => {
                    for f in &frames {
                        cutters.cut(&live, app.media.egress(), f);
                        last = Some(f.seq);
                    }
                }
                Err(e) => tracing::warn!(space = %cell.id, error = %e, "malformed history reply"),
            },
            _ => {
                tracing::info!(space = %cell.id, "no history from the origin; starting from the live edge")
            }
        }
        let feed_live = live.clone();
        let egress = app.media.egress().clone();
        let weak_app = Arc::downgrade(&app);
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(app) = weak_app.upgrade() else {
                    return;
                };
                let cluster = app.cluster.as_ref();
                let frame: Frame = match amphi_cluster::decode_frame(&msg.payload) {
                    Ok(f) => f,
                    Err(_) => {
                        if let Some(c) = cluster {
                            c.stats.frames_bad.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                };
                if let Some(c) = cluster {
                    c.stats.frames_received.fetch_add(1, Ordering::Relaxed);
                }
                if last.is_some_and(|l| frame.seq <= l) {
                    continue;
                }
                last = Some(frame.seq);
                cutters.cut(&feed_live, &egress, &frame);
            }
        });
        self.edges.lock().insert(
            cell.id,
            Arc::new(Edge {
                live: live.clone(),
                task,
                last_used: Mutex::new(Instant::now()),
            }),
        );
        *cell.live.write() = Some(live.clone());
        self.stats.edges_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(space = %cell.id, "edge: subscribed to the space's frames");
        Some(live)
    }

    /// Stops an edge feed: at the space's end (`ended`: listeners get the
    /// end of the stream), or when nobody listens any more.
    fn stop_edge(&self, id: SpaceId, ended: bool) {
        let Some(edge) = self.edges.lock().remove(&id) else {
            return;
        };
        self.edge_start.lock().remove(&id);
        let Some(app) = self.app() else { return };
        self.stats.edges_stopped.fetch_add(1, Ordering::Relaxed);
        let task = edge.task.abort_handle();
        let egress = app.media.egress().clone();
        let cell = app.space(id).ok();
        tokio::spawn(async move {
            if ended {
                // The last frames may still be on the way.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            task.abort();
            if let Some(cell) = &cell {
                let mut live = cell.live.write();
                if live.as_ref().is_some_and(|l| Arc::ptr_eq(l, &edge.live)) {
                    *live = None;
                }
            }
            let mut cutters = app.media.cutters(id);
            if ended {
                cutters.finish(&edge.live, &egress);
            } else {
                egress.close_output(&edge.live.ogg);
                egress.close_output(&edge.live.ws);
            }
        });
    }

    // ---- counts and housekeeping ---------------------------------------

    /// Notes a reaction sent on this node, for the next report.
    pub fn note_reaction(&self, id: SpaceId, emoji: &str) {
        *self
            .reactions
            .lock()
            .entry(id)
            .or_default()
            .entry(emoji.to_owned())
            .or_insert(0) += 1;
    }

    async fn counts(self: Arc<Self>) {
        let mut sub = self.client.subscribe(COUNTS_SUBJECT).await.ok();
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = iv.tick() => self.report().await,
                msg = async {
                    match sub.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(msg) = msg else {
                        sub = self.client.subscribe(COUNTS_SUBJECT).await.ok();
                        continue;
                    };
                    if let Some(r) = CountsReport::decode(&msg.payload)
                        && r.node != self.node
                    {
                        self.take_report(r);
                    }
                }
            }
        }
    }

    async fn report(&self) {
        let Some(app) = self.app() else { return };
        let mut reactions = std::mem::take(&mut *self.reactions.lock());
        let cells: Vec<Arc<SpaceCell>> = app.spaces.read().values().cloned().collect();
        let spaces: Vec<SpaceCounts> = cells
            .iter()
            .filter_map(|c| {
                let listeners = c.local_listeners();
                let r = reactions.remove(&c.id).unwrap_or_default();
                let mixing = app.media.is_mixing(c.id);
                (listeners > 0 || !r.is_empty() || mixing).then(|| SpaceCounts {
                    space: c.id,
                    listeners,
                    reactions: r.into_iter().collect(),
                    mixing,
                })
            })
            .collect();
        let report = CountsReport {
            node: self.node.clone(),
            spaces,
        };
        let _ = self
            .client
            .publish(COUNTS_SUBJECT, report.encode().into())
            .await;
        // Recount every space's remote audience from fresh reports, and
        // whether some node still mixes it.
        let mut remote: HashMap<SpaceId, u64> = HashMap::new();
        let mut mixed_elsewhere: HashSet<SpaceId> = HashSet::new();
        {
            let mut reports = self.remote.lock();
            reports.retain(|_, (at, _)| at.elapsed() < COUNTS_FRESH);
            for (_, r) in reports.values() {
                for s in &r.spaces {
                    *remote.entry(s.space).or_insert(0) += s.listeners;
                    if s.mixing {
                        mixed_elsewhere.insert(s.space);
                    }
                }
            }
        }
        // Right after start, the others' reports have not arrived yet.
        let settled = self.started.elapsed() > COUNTS_FRESH;
        for c in &cells {
            c.remote_listeners
                .store(remote.get(&c.id).copied().unwrap_or(0), Ordering::Relaxed);
            let on_air = !settled || app.media.is_mixing(c.id) || mixed_elsewhere.contains(&c.id);
            if c.on_air.swap(on_air, Ordering::AcqRel) != on_air {
                c.dirty.store(true, Ordering::Release);
                if !on_air && c.inner.lock().space.state == SpaceState::Live {
                    tracing::warn!(space = %c.id, "no node mixes this live space (its origin is gone)");
                }
            }
        }
    }

    fn take_report(&self, r: CountsReport) {
        if let Some(app) = self.app() {
            for s in &r.spaces {
                if s.reactions.is_empty() {
                    continue;
                }
                let Ok(cell) = app.space(s.space) else {
                    continue;
                };
                let mut inner = cell.inner.lock();
                for (emoji, n) in &s.reactions {
                    for _ in 0..(*n).min(1000) {
                        let _ = inner.reactions.add(emoji);
                    }
                }
            }
        }
        self.remote
            .lock()
            .insert(r.node.clone(), (Instant::now(), r));
    }

    async fn housekeeping(self: Arc<Self>) {
        let mut iv = tokio::time::interval(Duration::from_millis(lease::RENEW_MS as u64));
        loop {
            iv.tick().await;
            self.renew().await;
            self.publish_replays().await;
            // Edges nobody listens to any more.
            let idle: Vec<SpaceId> = self
                .edges
                .lock()
                .iter()
                .filter(|(_, e)| {
                    if e.live.listeners() > 0 {
                        *e.last_used.lock() = Instant::now();
                    }
                    e.last_used.lock().elapsed() > self.edge_linger
                })
                .map(|(id, _)| *id)
                .collect();
            for id in idle {
                tracing::info!(space = %id, "edge: no listeners; unsubscribing");
                self.stop_edge(id, false);
            }
        }
    }

    /// Whether NATS is reachable now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Refuses to serve a space mixed elsewhere (or the list of spaces,
    /// `None`) once this node has been cut off from NATS for
    /// [`STALE_AFTER`]: what it holds may no longer be true.
    pub fn check_fresh(&self, app: &App, space: Option<SpaceId>) -> Result<(), ApiError> {
        let cut_off = self
            .disconnected_since
            .lock()
            .is_some_and(|t| t.elapsed() > STALE_AFTER);
        if cut_off && !space.is_some_and(|id| app.media.is_mixing(id)) {
            return Err(ApiError::cluster_unavailable(
                "this node has lost the cluster; its copy of the space may be stale: try another node",
                2,
            ));
        }
        Ok(())
    }

    /// Cluster counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let n = self.client.statistics();
        gauge(
            out,
            "amphi_nats_connected",
            "1 while this node is connected to NATS.",
            f64::from(u8::from(self.connected())),
        );
        counter(
            out,
            "amphi_nats_in_bytes_total",
            "Payload bytes received from NATS.",
            n.in_bytes.load(Ordering::Relaxed),
        );
        counter(
            out,
            "amphi_nats_out_bytes_total",
            "Payload bytes sent to NATS.",
            n.out_bytes.load(Ordering::Relaxed),
        );
        counter(
            out,
            "amphi_nats_connects_total",
            "Connections to NATS made (first and reconnects).",
            n.connects.load(Ordering::Relaxed),
        );
        counter(
            out,
            "amphi_bus_frames_published_total",
            "Program frames published for edges.",
            l(&s.frames_published),
        );
        counter(
            out,
            "amphi_bus_frames_received_total",
            "Program frames received as an edge.",
            l(&s.frames_received),
        );
        counter(
            out,
            "amphi_bus_frames_malformed_total",
            "Bus messages that did not decode.",
            l(&s.frames_bad),
        );
        counter(
            out,
            "amphi_forwarded_calls_total",
            "API calls forwarded to a space's owner.",
            l(&s.forwarded),
        );
        counter(
            out,
            "amphi_forward_failures_total",
            "Forwarded calls the owner did not answer.",
            l(&s.forward_failures),
        );
        counter(
            out,
            "amphi_state_writes_total",
            "Space states written to the cluster.",
            l(&s.state_writes),
        );
        counter(
            out,
            "amphi_state_conflicts_total",
            "State writes refused (another writer).",
            l(&s.state_conflicts),
        );
        counter(
            out,
            "amphi_state_applied_total",
            "Space states applied from the cluster.",
            l(&s.state_applied),
        );
        counter(
            out,
            "amphi_takeovers_total",
            "Spaces taken over from a node that stopped renewing.",
            l(&s.takeovers),
        );
        counter(
            out,
            "amphi_leases_lost_total",
            "Leases another node took from this one.",
            l(&s.leases_lost),
        );
        counter(
            out,
            "amphi_edges_started_total",
            "Edge feeds started.",
            l(&s.edges_started),
        );
        counter(
            out,
            "amphi_edges_stopped_total",
            "Edge feeds stopped.",
            l(&s.edges_stopped),
        );
        gauge(
            out,
            "amphi_edges",
            "Spaces this node serves as an edge now.",
            self.edges.lock().len() as f64,
        );
        gauge(
            out,
            "amphi_owned_spaces",
            "Spaces this node owns now.",
            self.owned.lock().len() as f64,
        );
    }
}

async fn run_forwarded(router: Router, req: ForwardRequest) -> ForwardReply {
    let mut builder = Request::builder()
        .method(req.method.as_str())
        .uri(req.path.as_str());
    for (n, v) in &req.headers {
        builder = builder.header(n.as_str(), v.as_str());
    }
    let Ok(mut http) = builder.body(Body::from(req.body)) else {
        return ForwardReply {
            status: 400,
            headers: vec![],
            body: Bytes::from_static(b"malformed forwarded call"),
        };
    };
    http.extensions_mut().insert(Forwarded);
    let res = match router.oneshot(http).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (parts, body) = res.into_parts();
    let body = axum::body::to_bytes(body, amphi_cluster::forward::MAX_BODY)
        .await
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| {
            matches!(
                n.as_str(),
                "content-type" | "location" | "retry-after" | "www-authenticate" | "cache-control"
            ) || n.as_str().starts_with("access-control-")
        })
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    ForwardReply {
        status: parts.status.as_u16(),
        headers,
        body,
    }
}

/// The space a mutating call acts on, if only its owner may run it.
fn owner_only(method: &axum::http::Method, path: &str) -> Option<SpaceId> {
    use axum::http::Method;
    if !matches!(
        *method,
        Method::POST | Method::DELETE | Method::PUT | Method::PATCH
    ) {
        return None;
    }
    let rest = path.strip_prefix("/api/v1/spaces/")?;
    let (id, action) = rest.split_once('/')?;
    let first = action.split('/').next().unwrap_or("");
    matches!(
        first,
        "start" | "end" | "hand" | "stage" | "cohosts" | "participants" | "whip"
    )
    .then(|| id.parse().ok())
    .flatten()
}

/// For reads of cluster state: `Some(Some(id))` for one space's view,
/// events or HLS, `Some(None)` for the list of spaces.
fn served_space(path: &str) -> Option<Option<SpaceId>> {
    if path == "/api/v1/spaces" {
        return Some(None);
    }
    let rest = path
        .strip_prefix("/api/v1/spaces/")
        .or_else(|| path.strip_prefix("/spaces/"))?;
    let id = rest.split('/').next()?.parse().ok()?;
    Some(Some(id))
}

/// Middleware: a call only a space's owner may run is forwarded there (or,
/// if the owner is gone, this node takes the space over and runs it).
pub async fn route_to_owner(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else {
        return next.run(req).await;
    };
    if req.extensions().get::<Forwarded>().is_some() {
        return next.run(req).await;
    }
    let Some(id) = owner_only(req.method(), req.uri().path()) else {
        if let Some(space) = served_space(req.uri().path())
            && let Err(e) = cluster.check_fresh(&app, space)
        {
            return e.into_response();
        }
        return next.run(req).await;
    };
    if app.space(id).is_err() {
        return next.run(req).await;
    }
    match cluster.ensure_owner(id).await {
        Ok(LeaseDecision::Owner(lease)) => cluster.forward(&lease.node, req).await,
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn only_owner_actions_are_routed() {
        let id = "0123456789abcdef";
        let p = |s: &str| format!("/api/v1/spaces/{id}/{s}");
        for a in [
            "start",
            "end",
            "hand",
            "stage/0000000000000001",
            "participants/0000000000000001/mute",
            "whip",
            "whip/abc",
        ] {
            assert!(owner_only(&Method::POST, &p(a)).is_some(), "{a}");
        }
        assert!(owner_only(&Method::DELETE, &p("hand")).is_some());
        for a in ["join", "reactions", "events"] {
            assert!(owner_only(&Method::POST, &p(a)).is_none(), "{a}");
        }
        assert!(owner_only(&Method::GET, &p("start")).is_none());
        assert!(owner_only(&Method::OPTIONS, &p("whip")).is_none());
        assert!(owner_only(&Method::POST, "/api/v1/spaces/nothex/start").is_none());
        assert!(owner_only(&Method::POST, "/api/v1/spaces").is_none());
    }

    #[test]
    fn reads_of_cluster_state_are_recognised() {
        let id: SpaceId = "0123456789abcdef".parse().unwrap();
        assert_eq!(served_space("/api/v1/spaces"), Some(None));
        assert_eq!(
            served_space("/api/v1/spaces/0123456789abcdef"),
            Some(Some(id))
        );
        assert_eq!(
            served_space("/spaces/0123456789abcdef/hls/live.m3u8"),
            Some(Some(id))
        );
        assert_eq!(served_space("/metrics"), None);
        assert_eq!(served_space("/spaces/xyz/live.opus"), None);
    }
}
