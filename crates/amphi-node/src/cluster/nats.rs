//! The cluster shell (`amphi serve --nats URL`): the [`Membership`] of a
//! node in a cluster. It moves the sans-IO messages of `amphi-cluster` over
//! a real NATS connection and carries out the decisions of its state
//! machines ([`Ownership`], [`Edges`], [`Partition`], [`Audience`]).
//!
//! - **State**: the owner of a space writes its rules state to the
//!   JetStream key-value bucket `amphi_spaces` after every change (compare-
//!   and-set on the key's revision); every node watches the bucket, so any
//!   node reads any space live and its events clients see every change.
//! - **Ownership**: one node owns a space (lease in `amphi_leases`, renewed
//!   every 1 s; expired once its key has not changed for 3 s, as each node
//!   measures on its own clock while watching the bucket). Mutating API
//!   calls on another node are forwarded to the owner over request/reply
//!   and run through the owner's own router, so the rules, persistence and
//!   ingest gates act where the space lives. Every node claims the live
//!   spaces whose lease expired (compare-and-set: one wins), and the winner
//!   becomes the origin, continuing the frame numbering.
//! - **Media**: the origin publishes each program frame once on
//!   `amphi.space.<id>.frames`. A node with listeners for a space it does not
//!   originate (an edge) subscribes once its first listener is admitted,
//!   asks the origin for the last 30 s, and cuts its own outputs from the
//!   frames: no per-listener traffic crosses nodes. It unsubscribes when its
//!   last listener has been gone for the edge linger.
//! - **Counts**: every node publishes its listeners and reactions per space
//!   about once a second; the audience is the sum.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use amphi_cluster::{
    Audience, CONFIG_BUCKET, COUNTS_SUBJECT, Claim, CountsReport, EdgeAction, Edges, ForwardReply,
    ForwardRequest, LEASES_BUCKET, Orphans, Ownership, Partition, REPLAYS_BUCKET, SPACES_BUCKET,
    lease,
};
use amphi_core::room::Space;
use amphi_core::{Frame, SpaceId};
use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::{CLIENT_HEADER, Forwarded, Host, Membership, Owner};
use crate::error::ApiError;
use crate::metrics::{counter, gauge};
use crate::timefmt::mono_ms;

mod hooks;
mod leases;
mod presence;

/// How long a forwarded call waits for the owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// A call is not forwarded to a node whose count reports (one a second)
/// have not been heard for this long: it is cut off or gone, and the
/// caller gets a 503 at once rather than after [`FORWARD_TIMEOUT`] (a
/// speaker's client checking its session then reconnects as soon as
/// another node has taken the space over).
const FORWARD_UNHEARD_MS: i64 = 2_500;
/// How often the client pings its NATS server.
const NATS_PING: Duration = Duration::from_secs(1);
/// How long an edge waits for the origin's history.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames queued between the mixer and the bus publisher (2 s of 50 spaces).
const BUS_QUEUE: usize = 5000;
/// Largest API call body forwarded (the owner's router has its own limit).
const MAX_FORWARD_BODY: usize = amphi_cluster::forward::MAX_BODY;

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
    fences: AtomicU64,
    leaderless: AtomicU64,
    vouched: AtomicU64,
    probes_failed: AtomicU64,
    edges_started: AtomicU64,
    edges_stopped: AtomicU64,
    orphans_ended: AtomicU64,
}

/// A running edge feed: the task reading the bus.
struct Feed {
    task: tokio::task::AbortHandle,
}

/// This node's membership of a cluster over NATS.
pub struct Nats {
    node: String,
    http: String,
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
    ownership: Mutex<Ownership>,
    audience: Mutex<Audience>,
    /// The other nodes' presence (bounded).
    presence: Mutex<amphi_cluster::presence::Presence>,
    /// Reactions sent on this node since the last report.
    reactions: Mutex<HashMap<SpaceId, BTreeMap<String, u64>>>,
    edges: Mutex<Edges>,
    feeds: Mutex<HashMap<SpaceId, Feed>>,
    /// Serialises an edge's start, so concurrent first listeners share one.
    edge_start: Mutex<HashMap<SpaceId, Arc<tokio::sync::Mutex<()>>>>,
    partition: Arc<Mutex<Partition>>,
    bus: mpsc::Sender<(SpaceId, Bytes)>,
    bus_rx: Mutex<Option<mpsc::Receiver<(SpaceId, Bytes)>>>,
    host: OnceLock<Weak<dyn Host>>,
    stats: Arc<ClusterStats>,
    replicas: usize,
    /// Spaces taken over from a dead origin, waiting for a speaker.
    orphans: Mutex<Orphans>,
    /// The latest ask to vouch for this node: when it was sent, and
    /// whether every node on the roster answered (one ask at a time).
    vouching: tokio::sync::Mutex<Option<(i64, bool)>>,
    /// A pass of [`Nats::take_over_orphans`] is running.
    claiming: AtomicBool,
}

/// How a node joins the cluster.
pub struct Settings {
    /// This node's id.
    pub node: String,
    /// This node's base URL for the others (WHIP redirects, replays).
    pub http: String,
    /// How long an edge keeps a feed after its last listener left.
    pub edge_linger: Duration,
    /// Replicas of the buckets this node creates (1 if the server refuses).
    pub replicas: usize,
    /// How long a space taken over from a dead origin waits for a speaker.
    pub orphan_grace: Duration,
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
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
        num_replicas: replicas,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config.clone()).await {
        // Another node may have created it at the same moment; a single
        // server refuses replicas.
        tracing::debug!(bucket = name, error = %e, "creating a bucket");
        if replicas > 1 && js.get_key_value(name).await.is_err() {
            let single = jetstream::stream::Config {
                num_replicas: 1,
                ..config
            };
            if let Err(e) = js.create_stream(single).await {
                tracing::debug!(bucket = name, error = %e, "creating a bucket, one replica");
            } else {
                tracing::warn!(
                    bucket = name,
                    replicas,
                    "NATS refused the replicas (a single server?): the bucket has one"
                );
            }
        }
    }
    js.get_key_value(name)
        .await
        .map_err(|e| anyhow::anyhow!("could not open the key-value bucket {name}: {e}"))
}

impl Nats {
    /// Connects to NATS (retrying until it answers) and opens the buckets.
    /// `http` is this node's base URL for the others (WHIP redirects,
    /// replays).
    pub async fn connect(url: &str, settings: Settings) -> anyhow::Result<Arc<Self>> {
        let Settings {
            node,
            http,
            edge_linger,
            replicas,
            orphan_grace,
        } = settings;
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let partition = Arc::new(Mutex::new(Partition::new()));
        let link = partition.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("amphi {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .request_timeout(Some(FORWARD_TIMEOUT))
            // A link that drops packets silently (a partition, not a
            // reset) is noticed after three unanswered pings.
            .ping_interval(NATS_PING)
            .event_callback(move |ev| {
                let link = link.clone();
                async move {
                    match ev {
                        async_nats::Event::Connected => link.lock().connected(),
                        async_nats::Event::Disconnected => link.lock().disconnected(Instant::now()),
                        _ => {}
                    }
                    tracing::info!(event = %ev, "nats");
                }
            })
            .connect(servers)
            .await?;
        let js = jetstream::new(client.clone());
        let spaces_kv = tokio::time::timeout(
            Duration::from_secs(30),
            bucket(&js, SPACES_BUCKET, 1, replicas),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "NATS JetStream at {url} did not answer in 30 s (is it started with -js?)"
            )
        })??;
        let leases_kv = bucket(&js, LEASES_BUCKET, 1, replicas).await?;
        let replays_kv = bucket(&js, REPLAYS_BUCKET, 1, replicas).await?;
        let (bus, bus_rx) = mpsc::channel(BUS_QUEUE);
        Ok(Arc::new(Nats {
            ownership: Mutex::new(Ownership::new(node.clone(), http.clone())),
            audience: Mutex::new(Audience::new(node.clone(), Instant::now())),
            presence: Mutex::new(amphi_cluster::presence::Presence::new(node.clone())),
            node,
            http,
            client,
            spaces_kv,
            leases_kv,
            replays_kv,
            replays: Mutex::new(HashMap::new()),
            pending_replays: Mutex::new(HashSet::new()),
            revisions: Mutex::new(HashMap::new()),
            reactions: Mutex::new(HashMap::new()),
            edges: Mutex::new(Edges::new(edge_linger)),
            feeds: Mutex::new(HashMap::new()),
            edge_start: Mutex::new(HashMap::new()),
            partition,
            bus,
            bus_rx: Mutex::new(Some(bus_rx)),
            host: OnceLock::new(),
            stats: Arc::default(),
            replicas,
            orphans: Mutex::new(Orphans::new(orphan_grace)),
            vouching: tokio::sync::Mutex::new(None),
            claiming: AtomicBool::new(false),
        }))
    }

    fn host(&self) -> Option<Arc<dyn Host>> {
        self.host.get().and_then(Weak::upgrade)
    }

    // ---- state -------------------------------------------------------

    async fn write_space(&self, space: &Space) -> Result<(), ApiError> {
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
                // Every key's current value first, then each change (`watch_all`
                // delivers only changes: a node started after a space or an
                // endpoint was written would not know it until it changed).
                kv.watch_with_history(">").await
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
            if let Some(host) = c.host() {
                host.replay_published(id);
            }
        })
        .await;
    }

    /// Publishes the replays this node finished cutting.
    async fn publish_replays(&self) {
        let Some(host) = self.host() else { return };
        let pending: Vec<SpaceId> = self.pending_replays.lock().iter().copied().collect();
        for id in pending {
            if !host.replay_cut(id) {
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
        let Some(host) = self.host() else { return };
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
        let ended = space.state == amphi_core::room::SpaceState::Ended;
        host.adopt(space);
        if self.replays.lock().contains_key(&id) {
            host.replay_published(id);
        }
        if ended && let Some(action) = self.edges.lock().ended(id) {
            self.carry_out(action);
        }
    }

    // ---- forwarding -----------------------------------------------------

    async fn forward_to(&self, node: &str, req: Request) -> Response {
        if self.unheard(node) {
            self.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
            return ApiError::cluster_unavailable(
                "the node that owns this space has not been heard from lately; try again",
                1,
            )
            .into_response();
        }
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_FORWARD_BODY).await else {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            )
            .into_response();
        };
        let mut headers: Vec<(String, String)> = ["authorization", "content-type", "accept"]
            .iter()
            .filter_map(|n| {
                let v = parts.headers.get(*n)?.to_str().ok()?;
                Some(((*n).to_owned(), v.to_owned()))
            })
            .collect();
        if let Some(ConnectInfo(client)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            headers.push((CLIENT_HEADER.to_owned(), client.to_string()));
        }
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
        let asked =
            tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(subject, msg.encode()));
        // Given up as soon as the owner goes unheard meanwhile (cut off
        // during the call), not only after the timeout.
        let reply = tokio::select! {
            r = asked => match r {
                Ok(Ok(m)) => ForwardReply::decode(&m.payload).ok(),
                _ => None,
            },
            () = self.until_unheard(node) => None,
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

    /// Returns once `node` has not been heard from for
    /// [`FORWARD_UNHEARD_MS`] (checked every 100 ms); never if it has not
    /// been heard at all.
    async fn until_unheard(&self, node: &str) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.unheard(node) {
                return;
            }
        }
    }

    /// Whether `node`'s count reports have not been heard for
    /// [`FORWARD_UNHEARD_MS`] (`false` if it was never heard).
    fn unheard(&self, node: &str) -> bool {
        self.ownership
            .lock()
            .unheard_for(node, mono_ms())
            .is_some_and(|ms| ms >= FORWARD_UNHEARD_MS)
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
        self.serve_frame_requests("amphi.space.*.history", |host, id, from| {
            host.history(id, from)
        })
        .await;
    }

    /// Answers the requests on `subject` (`amphi.space.*.<what>`, a
    /// first frame in the payload) with `answer`'s body for the space the
    /// subject names (`None`: this node has nothing to say).
    pub(super) async fn serve_frame_requests(
        &self,
        subject: &'static str,
        answer: impl Fn(&dyn Host, SpaceId, u64) -> Option<Bytes>,
    ) {
        let mut sub = match self.client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(subject, error = %e, "could not subscribe to frame requests");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let (Some(reply), Some(host)) = (msg.reply.clone(), self.host()) else {
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
            let Ok(from) = amphi_cluster::decode_history_request(&msg.payload) else {
                continue;
            };
            let Some(body) = answer(host.as_ref(), id, from) else {
                continue;
            };
            let _ = self.client.publish(reply, body).await;
        }
    }

    /// Starts this node's feed of a space mixed elsewhere, after a listener
    /// of it was admitted: subscribe first, then fetch the history, so
    /// nothing falls between.
    async fn attach_edge(&self, id: SpaceId) {
        let Some(host) = self.host() else { return };
        if !host.is_live(id) || host.is_mixing(id) || self.fenced(id) {
            return;
        }
        // One start per space at a time (a slow origin delays only its own
        // space's first listeners).
        let gate = self.edge_start.lock().entry(id).or_default().clone();
        let _serial = gate.lock().await;
        let action = self.edges.lock().admitted(id, Instant::now());
        if action != Some(EdgeAction::Subscribe(id)) {
            return;
        }
        let mut sub = match self
            .client
            .subscribe(amphi_cluster::frames_subject(id))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(space = %id, error = %e, "could not subscribe to a space's frames");
                self.edges.lock().subscribe_failed(id);
                return;
            }
        };
        // Mixed here since the check above (a takeover): not an edge.
        if host.is_mixing(id) {
            self.edges.lock().became_origin(id);
            return;
        }
        if !host.open_edge(id) {
            self.edges.lock().subscribe_failed(id);
            return;
        }
        let mut last: Option<u64> = None;
        let history = tokio::time::timeout(
            HISTORY_TIMEOUT,
            self.client.request(
                amphi_cluster::history_subject(id),
                Bytes::copy_from_slice(&amphi_cluster::encode_history_request(0)),
            ),
        )
        .await;
        match history {
            Ok(Ok(m)) => match amphi_cluster::decode_frames(&m.payload) {
                Ok(frames) => {
                    last = frames.last().map(|f| f.seq);
                    host.edge_frames(id, frames);
                    // The first listeners' bursts and resumes read what
                    // the history made: wait until it is cut.
                    host.sync_media().await;
                }
                Err(e) => tracing::warn!(space = %id, error = %e, "malformed history reply"),
            },
            _ => {
                tracing::info!(space = %id, "no history from the origin; starting from the live edge")
            }
        }
        // This node may have become the origin meanwhile (a takeover): its
        // mixer feeds the outputs now, the bus must not as well.
        if host.is_mixing(id) {
            self.edges.lock().became_origin(id);
            return;
        }
        let feed_host = self.host.get().cloned();
        let stats = self.stats.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let frame: Frame = match amphi_cluster::decode_frame(&msg.payload) {
                    Ok(f) => f,
                    Err(_) => {
                        stats.frames_bad.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                stats.frames_received.fetch_add(1, Ordering::Relaxed);
                if last.is_some_and(|l| frame.seq <= l) {
                    continue;
                }
                last = Some(frame.seq);
                match feed_host.as_ref().and_then(Weak::upgrade) {
                    Some(h) => h.edge_frames(id, vec![frame]),
                    None => return,
                }
            }
        });
        self.feeds.lock().insert(
            id,
            Feed {
                task: task.abort_handle(),
            },
        );
        // The linger may have run out while the feed was starting: the
        // machine counts it again (a running feed is always an edge).
        self.edges.lock().admitted(id, Instant::now());
        self.stats.edges_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(space = %id, "edge: subscribed to the space's frames");
    }

    /// Carries out an edge decision to unsubscribe.
    fn carry_out(&self, action: EdgeAction) {
        let EdgeAction::Unsubscribe { space, ended } = action else {
            return;
        };
        self.edge_start.lock().remove(&space);
        let Some(feed) = self.feeds.lock().remove(&space) else {
            return;
        };
        self.stats.edges_stopped.fetch_add(1, Ordering::Relaxed);
        let host = self.host.get().cloned();
        tokio::spawn(async move {
            if ended {
                // The last frames may still be on the way.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            feed.task.abort();
            if let Some(host) = host.as_ref().and_then(Weak::upgrade) {
                host.close_edge(space, ended);
            }
        });
    }

    // ---- counts and housekeeping ---------------------------------------

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
                        self.ownership.lock().heard(&r.node, mono_ms());
                        self.take_report(r);
                    }
                }
            }
        }
    }

    async fn report(&self) {
        let Some(host) = self.host() else { return };
        let mut reactions = std::mem::take(&mut *self.reactions.lock());
        let mut spaces = host.counts();
        for s in &mut spaces {
            if let Some(r) = reactions.remove(&s.space) {
                s.reactions = r.into_iter().collect();
            }
        }
        // Reactions of spaces with no listener here and not mixed here.
        spaces.extend(
            reactions
                .into_iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(space, r)| amphi_cluster::SpaceCounts {
                    space,
                    listeners: 0,
                    reactions: r.into_iter().collect(),
                    mixing: false,
                }),
        );
        let report = CountsReport {
            node: self.node.clone(),
            spaces,
        };
        let _ = self
            .client
            .publish(COUNTS_SUBJECT, report.encode().into())
            .await;
        let tally = self.audience.lock().tally(Instant::now());
        host.set_audience(&tally);
    }

    fn take_report(&self, r: CountsReport) {
        if let Some(host) = self.host() {
            for s in &r.spaces {
                if !s.reactions.is_empty() {
                    host.add_reactions(s.space, &s.reactions);
                }
            }
        }
        self.audience.lock().take(r, Instant::now());
    }

    /// Applies the fencing rule every [`lease::FENCE_CHECK_MS`], apart from
    /// the renewals (a renewal NATS does not answer can hold those for
    /// seconds): a lease whose last acknowledged write was sent
    /// [`lease::FENCE_MS`] ago stops this node acting as the space's origin.
    async fn fencing(self: Arc<Self>) {
        let mut iv = tokio::time::interval(Duration::from_millis(lease::FENCE_CHECK_MS as u64));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            let fenced = self.ownership.lock().fence(mono_ms());
            if fenced > 0 {
                self.act_on_ownership();
            }
            // Renewals that were not acknowledged are retried now, so an
            // owner whose stream had no leader renews first when one is
            // back.
            let me = self.clone();
            tokio::spawn(async move { me.renew(true).await });
            // A dead origin's spaces are claimed as soon as their lease
            // expires here, not on the next 1 s housekeeping (one pass at
            // a time).
            if !self.claiming.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                tokio::spawn(async move {
                    me.take_over_orphans().await;
                    me.claiming.store(false, Ordering::Release);
                });
            }
        }
    }

    async fn housekeeping(self: Arc<Self>) {
        let mut iv = tokio::time::interval(Duration::from_millis(lease::RENEW_MS as u64));
        loop {
            iv.tick().await;
            self.renew(false).await;
            self.end_orphans().await;
            self.publish_replays().await;
            let Some(host) = self.host() else { continue };
            let idle = self
                .edges
                .lock()
                .tick(Instant::now(), |id| host.local_listeners(id));
            for action in idle {
                if let EdgeAction::Unsubscribe { space, .. } = action {
                    tracing::info!(space = %space, "edge: no listeners; unsubscribing");
                }
                self.carry_out(action);
            }
        }
    }
}

impl Membership for Nats {
    fn start(self: Arc<Self>, host: Arc<dyn Host>, router: Router) {
        let _ = self.host.set(Arc::downgrade(&host));
        let Some(bus) = self.bus_rx.lock().take() else {
            return;
        };
        tokio::spawn(self.clone().watch_spaces());
        tokio::spawn(self.clone().watch_replays());
        tokio::spawn(self.clone().watch_leases());
        tokio::spawn(self.clone().publish_frames(bus));
        tokio::spawn(self.clone().serve_history());
        tokio::spawn(self.clone().serve_backfill());
        tokio::spawn(self.clone().serve_forwarded(router));
        tokio::spawn(self.clone().counts());
        tokio::spawn(self.clone().presence_loop());
        tokio::spawn(self.clone().watch_hooks());
        tokio::spawn(self.clone().housekeeping());
        tokio::spawn(self.clone().fencing());
        tokio::spawn(self.clone().probe_leases());
        tokio::spawn(self.clone().serve_vouch());
        // Replays this node cut (or is cutting) before a restart.
        self.pending_replays.lock().extend(host.recorded_here());
        // Live spaces this node originated before a restart: if the lease
        // is still ours, carry on mixing them.
        let live = host.live_spaces();
        let me = self.clone();
        tokio::spawn(async move {
            for id in live {
                if let Ok(Claim::Mine) = me.ensure_owner(id).await {
                    tracing::info!(space = %id, "this node owns a live space it knew");
                }
            }
        });
    }

    fn shared_secret<'a>(
        &'a self,
        name: &'a str,
        local: &'a [u8],
    ) -> BoxFuture<'a, anyhow::Result<Vec<u8>>> {
        Box::pin(async move {
            let js = jetstream::new(self.client.clone());
            let config = bucket(&js, CONFIG_BUCKET, 1, self.replicas).await?;
            match config.create(name, Bytes::copy_from_slice(local)).await {
                Ok(_) => Ok(local.to_vec()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => config
                    .get(name)
                    .await?
                    .map(|b| b.to_vec())
                    .ok_or_else(|| anyhow::anyhow!("shared secret {name} vanished")),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn owner(&self, space: SpaceId) -> BoxFuture<'_, Result<Owner, ApiError>> {
        Box::pin(async move {
            // A space nobody here knows is a 404 for the handler to give.
            if !self.host().is_some_and(|h| h.has_space(space)) {
                return Ok(Owner::Here);
            }
            match self.ensure_owner(space).await? {
                Claim::Owner(lease) => Ok(Owner::Elsewhere(lease.node)),
                _ => Ok(Owner::Here),
            }
        })
    }

    fn forward(&self, owner: String, req: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move { self.forward_to(&owner, req).await })
    }

    fn write_state<'a>(&'a self, space: &'a Space) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.write_space(space))
    }

    fn release(&self, space: SpaceId, last_seq: u64, recorded: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if recorded {
                self.pending_replays.lock().insert(space);
            }
            let write = self.ownership.lock().release(space, last_seq);
            if let Some(w) = write {
                let result = self.write_lease(&w).await;
                self.ownership.lock().written(w.id, result, mono_ms());
            }
        })
    }

    fn frame_sink(&self) -> Option<mpsc::Sender<(SpaceId, Bytes)>> {
        Some(self.bus.clone())
    }

    fn attach(&self, space: SpaceId) -> BoxFuture<'_, ()> {
        Box::pin(self.attach_edge(space))
    }

    fn note_reaction(&self, space: SpaceId, emoji: &str) {
        *self
            .reactions
            .lock()
            .entry(space)
            .or_default()
            .entry(emoji.to_owned())
            .or_insert(0) += 1;
    }

    fn replay_at(&self, space: SpaceId) -> Option<String> {
        self.replays
            .lock()
            .get(&space)
            .filter(|http| **http != self.http)
            .cloned()
    }

    fn recorded_elsewhere(&self, _space: SpaceId) -> bool {
        true
    }

    fn check_fresh(&self, space: Option<SpaceId>) -> Result<(), ApiError> {
        let mixed_here = space.is_some_and(|id| self.host().is_some_and(|h| h.is_mixing(id)));
        if self.partition.lock().may_serve(mixed_here, Instant::now()) {
            return Ok(());
        }
        Err(ApiError::cluster_unavailable(
            "this node has lost the cluster; its copy of the space may be stale: try another node",
            2,
        ))
    }

    fn fenced(&self, space: SpaceId) -> bool {
        self.ownership.lock().is_fenced(space)
    }

    fn ready(&self) -> Result<(), ApiError> {
        if self.partition.lock().is_connected() {
            Ok(())
        } else {
            Err(ApiError::cluster_unavailable(
                "this node lost its connection to NATS",
                1,
            ))
        }
    }

    fn remote_presence(
        &self,
        space: SpaceId,
        cap: usize,
    ) -> (Vec<amphi_cluster::presence::Present>, u64) {
        self.remote_presence_of(space, cap)
    }

    fn remote_name(&self, space: SpaceId, pid: amphi_core::ParticipantId) -> Option<String> {
        self.remote_name_of(space, pid)
    }

    fn remote_joins(&self, space: SpaceId) -> Vec<(String, u64)> {
        self.remote_joins_of(space)
    }

    fn remote_plays(&self, space: SpaceId) -> Vec<(String, u64)> {
        self.presence.lock().plays(space)
    }

    fn remote_uniques(&self, space: SpaceId) -> Vec<String> {
        self.presence.lock().uniques(space)
    }

    fn share_invitation(
        &self,
        space: SpaceId,
        pid: amphi_core::ParticipantId,
        invite: Option<(amphi_core::ParticipantId, &str, i64)>,
    ) {
        self.share_invitation_with_all(space, pid, invite);
    }

    fn share_endpoint(self: Arc<Self>, id: &str, endpoint: Option<&amphi_store::Endpoint>) {
        self.share_endpoint_with_all(id, endpoint);
    }

    fn render_metrics(&self, out: &mut crate::metrics::Scrape<'_>) {
        let s = &self.stats;
        gauge(
            out,
            "amphi_presence_remote_entries",
            "Other nodes' present participants kept here (bounded: 500 per node and space).",
            self.presence_entries() as f64,
        );
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let n = self.client.statistics();
        gauge(
            out,
            "amphi_nats_connected",
            "1 while this node is connected to NATS.",
            f64::from(u8::from(self.partition.lock().is_connected())),
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
            "amphi_fences_total",
            "Spaces this node stopped mixing because it could not prove its lease (cut off from NATS).",
            l(&s.fences),
        );
        counter(
            out,
            "amphi_lease_leaderless_total",
            "Lease writes refused because the leases' stream had no leader while JetStream's meta leader answered, on a node that hears no other (the lease stays valid).",
            l(&s.leaderless),
        );
        counter(
            out,
            "amphi_lease_vouched_total",
            "Lease writes refused because the leases' stream had no leader, with every other node vouching for this one (the lease stays valid).",
            l(&s.vouched),
        );
        counter(
            out,
            "amphi_lease_probes_failed_total",
            "Probes of the leases' stream leader that failed (no leader, or no answer): takeovers wait.",
            l(&s.probes_failed),
        );
        gauge(
            out,
            "amphi_fenced_spaces",
            "Spaces this node fenced itself out of and has not yet seen the new owner of.",
            self.ownership.lock().fenced() as f64,
        );
        if let Some(host) = self.host() {
            gauge(
                out,
                "amphi_origin_spaces",
                "Live spaces this node mixes now (it is their origin).",
                host.live_spaces()
                    .into_iter()
                    .filter(|id| host.is_mixing(*id))
                    .count() as f64,
            );
        }
        counter(
            out,
            "amphi_orphans_ended_total",
            "Spaces ended because their origin died and no speaker came back in the grace.",
            l(&s.orphans_ended),
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
            self.ownership.lock().held() as f64,
        );
    }
}

async fn run_forwarded(router: Router, req: ForwardRequest) -> ForwardReply {
    let mut builder = Request::builder()
        .method(req.method.as_str())
        .uri(req.path.as_str());
    let mut client = None;
    for (n, v) in &req.headers {
        if n.eq_ignore_ascii_case(CLIENT_HEADER) {
            client = v.parse::<SocketAddr>().ok();
            continue;
        }
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
    if let Some(client) = client {
        http.extensions_mut().insert(ConnectInfo(client));
    }
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
