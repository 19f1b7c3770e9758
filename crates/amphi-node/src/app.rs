//! The node's shared state: the spaces it owns and the thin shell that runs
//! the room core's commands, persists them and tells the media plane.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use amphi_core::room::{Actor, Command, Outcome, Space, SpaceOptions, SpaceState};
use amphi_core::token::{Claims, TokenKey};
use amphi_core::{ParticipantId, SpaceId};
use amphi_egress::Egress;
use amphi_store::Store;
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::media::{LiveMedia, MediaPlane};
use crate::metrics::Metrics;
use crate::timefmt::{now_ms, now_s, rfc3339};
use crate::webhooks::{EventKind, Webhooks};

/// Lifetime of a participant token by default (`--token-ttl`), counted
/// from the later of now and the space's scheduled start.
pub const TOKEN_TTL_S: u64 = 7 * 24 * 3600;

/// Reads of the recordings storage (clips, replays, transcripts) in flight
/// at once; tokio's blocking pool has 512 threads, which the SQLite store
/// and the webhooks' queue share.
pub const STORAGE_READS: usize = 64;

/// What a space needs besides its rules: presence, reactions, media.
pub struct SpaceCell {
    pub id: SpaceId,
    pub inner: Mutex<SpaceInner>,
    /// Serialises commands so persisted snapshots are written in order.
    pub write_lock: tokio::sync::Mutex<()>,
    /// Set when anything an events client shows changed.
    pub dirty: AtomicBool,
    /// The latest events update, rebuilt at most 4 times a second.
    pub updates: tokio::sync::watch::Sender<Arc<Update>>,
    /// Ingest gates: whether each publishing participant is audible now.
    pub gates: Mutex<HashMap<ParticipantId, Arc<AtomicBool>>>,
    /// Noise suppression of each publishing participant (the room's
    /// [`amphi_core::Space::suppresses_noise`]), read by the mixer.
    pub denoise: Mutex<HashMap<ParticipantId, Arc<AtomicBool>>>,
    /// Media outputs while live.
    pub live: RwLock<Option<Arc<LiveMedia>>>,
    /// Listener count last shown to events clients (all nodes).
    pub listener_count: AtomicU64,
    /// Listeners of this space on the cluster's other nodes (their reports).
    pub remote_listeners: AtomicU64,
    /// The recording has been cut into its replay outputs.
    pub replay_ready: AtomicBool,
    /// Some node mixes this space now (in a cluster, false while a live
    /// space has lost its origin and no node has taken it over).
    pub on_air: AtomicBool,
    /// Where this space's events are told (webhooks).
    pub hooks: Option<Arc<Webhooks>>,
    /// Analytics, aggregated here and flushed every 10 s.
    pub stats: Mutex<crate::stats::SpaceStats>,
    /// Caption cues, as events messages (`{"type":"caption",…}`).
    pub captions: tokio::sync::broadcast::Sender<Arc<str>>,
}

/// Room state guarded together.
pub struct SpaceInner {
    pub space: Space,
    pub reactions: amphi_core::reactions::Reactions,
    /// Participants with an open events channel (the audience a
    /// moderator sees and invites), so a present listener can be brought
    /// on stage by name.
    pub presence: crate::audience::Audience,
    /// The network each participant who acted or followed the events
    /// joined from (their token's `net`), so a ban can hold it; at most
    /// [`MAX_NETS`] remembered.
    pub nets: HashMap<ParticipantId, String>,
}

/// Participants whose network a space remembers for bans.
pub const MAX_NETS: usize = 100_000;

impl SpaceInner {
    /// Remembers the network `claims` joined from, if they joined
    /// anonymously (a ban of an identity follows the identity, and holds no
    /// address others may share).
    pub fn note_net(&mut self, claims: &Claims) {
        if let Some(net) = &claims.net
            && claims.idsub.is_none()
            && (self.nets.len() < MAX_NETS || self.nets.contains_key(&claims.pid))
        {
            self.nets.insert(claims.pid, net.clone());
        }
    }
}

/// The key of `net` in a [`crate::admission::KeyedLimiter`].
pub fn net_key(net: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    net.hash(&mut h);
    h.finish()
}

/// The network an address is banned by: the address itself for IPv4, its
/// `/64` for IPv6 (one host's share of a network).
pub fn network_of(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}/32"),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{v4}/32"),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// Updates whose reactions a client that fell behind still gets (4 s).
const REACTION_LOG: usize = 16;

/// One update's changes of the hand queue: raised (with the name) or
/// lowered and accepted (`None`).
pub type HandChanges = Arc<[(ParticipantId, Option<String>)]>;

/// One coalesced events update, shared by every client of the space.
#[derive(Debug, Default)]
pub struct Update {
    /// `"space":…,"talking":…`, serialised once per update and spliced
    /// into every client's message next to its own `you` and reactions.
    /// The space's `hands_raised` is left out: updates carry the hands
    /// that changed (see [`Update::hands_since`]).
    pub shared: String,
    /// The same with the whole `hands_raised` queue, for a client's
    /// snapshot (or one too far behind for the changes).
    pub full: String,
    pub ended: bool,
    /// Number of this update.
    pub number: u64,
    /// The reactions of the recent updates that had some, by update
    /// number: a client that skipped updates (it sends at most 4 a second)
    /// sums those it has not reported, so no reaction is lost.
    pub reactions: Arc<[(u64, BTreeMap<String, u32>)]>,
    /// The raised hands now, oldest first (the next update diffs it).
    pub hands: Arc<[(ParticipantId, String)]>,
    /// The hands raised (with the name) and lowered or accepted (`None`)
    /// of the recent updates that changed the queue, by update number.
    pub hands_log: Arc<[(u64, HandChanges)]>,
    /// Changes of updates up to this number are no longer in the log.
    pub hands_floor: u64,
}

impl Update {
    /// The reactions of the updates after `after`, summed.
    pub fn reactions_since(&self, after: u64) -> BTreeMap<&str, u64> {
        let mut sum = BTreeMap::new();
        for (_, counts) in self.reactions.iter().filter(|(g, _)| *g > after) {
            for (emoji, n) in counts {
                *sum.entry(emoji.as_str()).or_insert(0) += u64::from(*n);
            }
        }
        sum
    }

    /// The hand queue's changes since update `after`, as the events
    /// message's `hands`: `{"added": [{"participant_id", "name"}],
    /// "removed": [participant_id]}` (apply `removed`, then append
    /// `added`); `None` if `after` is too old for the log (send `full`).
    pub fn hands_since(&self, after: u64) -> Option<Value> {
        if after < self.hands_floor {
            return None;
        }
        let mut last: BTreeMap<ParticipantId, Option<&str>> = BTreeMap::new();
        let mut order = Vec::new();
        for (_, changes) in self.hands_log.iter().filter(|(n, _)| *n > after) {
            for (pid, name) in changes.iter() {
                if last.insert(*pid, name.as_deref()).is_none() {
                    order.push(*pid);
                }
            }
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for pid in order {
            match last.get(&pid).copied().flatten() {
                Some(name) => added.push(json!({"participant_id": pid, "name": name})),
                None => removed.push(json!(pid)),
            }
        }
        Some(json!({"added": added, "removed": removed}))
    }
}

/// The queue's changes from `before` to `now`: lowered or accepted hands
/// (`None`), then raised ones in queue order. (A hand lowered and raised
/// again within one update's 250 ms is no change: a client keeps it in
/// its old place until its next snapshot.)
fn hand_changes(
    before: &[(ParticipantId, String)],
    now: &[(ParticipantId, String)],
) -> Vec<(ParticipantId, Option<String>)> {
    let was: HashMap<ParticipantId, usize> = before
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (*p, i))
        .collect();
    let is: HashMap<ParticipantId, usize> =
        now.iter().enumerate().map(|(i, (p, _))| (*p, i)).collect();
    let mut out: Vec<(ParticipantId, Option<String>)> = before
        .iter()
        .filter(|(p, _)| !is.contains_key(p))
        .map(|(p, _)| (*p, None))
        .collect();
    // Those still raised keep their relative order; the new ones come after
    // the last of them (the queue is ordered by when hands went up).
    for (p, name) in now {
        if !was.contains_key(p) {
            out.push((*p, Some(name.clone())));
        }
    }
    out
}

impl SpaceCell {
    fn new(space: Space, hooks: Option<Arc<Webhooks>>) -> Arc<Self> {
        let (tx, _) = tokio::sync::watch::channel(Arc::new(Update::default()));
        let cell = Arc::new(SpaceCell {
            id: space.id,
            inner: Mutex::new(SpaceInner {
                space,
                reactions: Default::default(),
                presence: Default::default(),
                nets: HashMap::new(),
            }),
            write_lock: tokio::sync::Mutex::new(()),
            dirty: AtomicBool::new(true),
            updates: tx,
            captions: tokio::sync::broadcast::channel(64).0,
            gates: Mutex::new(HashMap::new()),
            denoise: Mutex::new(HashMap::new()),
            live: RwLock::new(None),
            listener_count: AtomicU64::new(0),
            remote_listeners: AtomicU64::new(0),
            replay_ready: AtomicBool::new(false),
            on_air: AtomicBool::new(true),
            hooks,
            stats: Default::default(),
        });
        cell.refresh_update();
        cell
    }

    /// Listener streams of this space on this node.
    pub fn local_listeners(&self) -> u64 {
        let live = self.live.read();
        live.as_ref().map_or(0, |l| l.listeners())
    }

    /// Listeners now: stream connections on this node plus the other
    /// nodes' latest counts.
    pub fn listeners(&self) -> u64 {
        self.local_listeners() + self.remote_listeners.load(Ordering::Relaxed)
    }

    /// The public JSON view of the space.
    pub fn view(&self) -> Value {
        let inner = self.inner.lock();
        space_view(
            &inner.space,
            self.listeners(),
            self.replay_ready.load(Ordering::Acquire),
            self.on_air.load(Ordering::Acquire),
        )
    }

    /// Marks the replay published; events clients learn it with the next
    /// update.
    pub fn replay_is_ready(&self) {
        self.replay_ready.store(true, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
    }

    /// The replay was cut on this node: published, and told to webhooks
    /// (`recording.ready`).
    pub fn replay_cut_here(&self) {
        self.replay_is_ready();
        if let Some(hooks) = &self.hooks {
            let id = self.id;
            let title = self.inner.lock().space.title.clone();
            hooks.emit(
                EventKind::RecordingReady,
                &id.to_string(),
                json!({
                    "space_id": id,
                    "title": title,
                    "replay": {"ogg": format!("/spaces/{id}/recording.opus"), "hls": format!("/spaces/{id}/hls/replay.m3u8")},
                }),
            );
        }
    }

    /// Tells webhooks about this space (`kind` once per space).
    pub fn tell(&self, kind: EventKind) {
        if let Some(hooks) = &self.hooks {
            hooks.emit(kind, &self.id.to_string(), json!({"space": self.view()}));
        }
    }

    /// Rebuilds the shared update for events clients.
    pub fn refresh_update(&self) {
        let previous = self.updates.borrow().clone();
        let (mut space, reactions, hands) = {
            let mut inner = self.inner.lock();
            let reactions = inner.reactions.take();
            if !reactions.is_empty() {
                self.stats
                    .lock()
                    .react(reactions.iter().map(|(k, n)| (k.as_str(), u64::from(*n))));
            }
            let ready = self.replay_ready.load(Ordering::Acquire);
            let on_air = self.on_air.load(Ordering::Acquire);
            let hands: Vec<(ParticipantId, String)> = inner
                .space
                .hands()
                .map(|m| (m.id, m.name.clone()))
                .collect();
            (
                space_view(&inner.space, self.listeners(), ready, on_air),
                reactions,
                hands,
            )
        };
        let talking: serde_json::Map<String, Value> = self
            .live
            .read()
            .as_ref()
            .map(|l| {
                l.talking
                    .lock()
                    .drain()
                    .map(|(pid, level)| (pid.to_string(), json!(level)))
                    .collect()
            })
            .unwrap_or_default();
        let talking = Value::Object(talking);
        let ended = space.get("state").and_then(Value::as_str) == Some(SpaceState::Ended.as_str());
        let full = format!("\"space\":{space},\"talking\":{talking}");
        if let Some(o) = space.as_object_mut() {
            o.remove("hands_raised");
        }
        let shared = format!("\"space\":{space},\"talking\":{talking}");
        let number = previous.number + 1;
        let log = if reactions.is_empty() {
            previous.reactions.clone()
        } else {
            let keep = previous.reactions.len().saturating_sub(REACTION_LOG - 1);
            previous.reactions[keep..]
                .iter()
                .cloned()
                .chain(std::iter::once((number, reactions)))
                .collect()
        };
        let changes = hand_changes(&previous.hands, &hands);
        let (hands_log, hands_floor) = if changes.is_empty() {
            (previous.hands_log.clone(), previous.hands_floor)
        } else {
            let keep = previous.hands_log.len().saturating_sub(REACTION_LOG - 1);
            let floor = previous.hands_log[..keep]
                .last()
                .map_or(previous.hands_floor, |(n, _)| *n);
            let log: Arc<[_]> = previous.hands_log[keep..]
                .iter()
                .cloned()
                .chain(std::iter::once((number, changes.into())))
                .collect();
            (log, floor)
        };
        self.updates.send_replace(Arc::new(Update {
            shared,
            full,
            ended,
            number,
            reactions: log,
            hands: hands.into(),
            hands_log,
            hands_floor,
        }));
    }

    /// Whether the media plane heard a speaker since the last update.
    pub fn is_talking(&self) -> bool {
        self.live
            .read()
            .as_ref()
            .is_some_and(|l| !l.talking.lock().is_empty())
    }

    /// Participants with an ingest gate (who may hold WHIP sessions).
    pub fn publishers(&self) -> Vec<ParticipantId> {
        self.gates.lock().keys().copied().collect()
    }

    /// Starts mixing this space on this node (see
    /// [`MediaPlane::start_space`]): its outputs become the cell's.
    pub fn start_media(
        self: &Arc<Self>,
        media: &MediaPlane,
        live: Option<Arc<LiveMedia>>,
        min_seq: u64,
    ) {
        let (record, music) = {
            let inner = self.inner.lock();
            (inner.space.record, inner.space.music)
        };
        let me = self.clone();
        let ready: crate::media::ReplayReady = Box::new(move || me.replay_cut_here());
        let live = media.start_space(self.id, record, music, ready, live, min_seq);
        self.sync_captions_tap(&live);
        *self.live.write() = Some(live);
    }

    /// Taps the speakers for captions while the space asks for them.
    pub fn sync_captions_tap(&self, live: &LiveMedia) {
        let on = self.inner.lock().space.captions;
        live.captions_on.store(on, Ordering::Release);
    }

    /// A caption cue for the events clients (they get it at once, beside
    /// the coalesced updates).
    pub fn caption(&self, cue: &crate::captions::Cue) {
        let msg = json!({"type": "caption", "caption": cue}).to_string();
        let _ = self.captions.send(msg.into());
    }

    /// Stops this space's media at its end: new listeners are refused from
    /// now on; the mixer closes the outputs after their last units.
    pub fn stop_media(&self, media: &MediaPlane) {
        media.stop_space(self.id, &self.publishers());
        self.live.write().take();
    }

    /// Stops mixing a space another node now owns (nothing is finished or
    /// cut: the space goes on elsewhere).
    pub fn abandon_media(&self, media: &MediaPlane) {
        if media.abandon_space(self.id, &self.publishers()) {
            self.live.write().take();
        }
    }

    /// Stops mixing a space this node fenced itself out of (see
    /// [`MediaPlane::fence_space`]); its outputs stay the cell's, for the
    /// HLS they hold.
    pub fn fence_media(&self, media: &MediaPlane) -> bool {
        media.fence_space(self.id, &self.publishers())
    }

    /// Brings every ingest gate in line with the rules, now.
    pub fn sync_gates(&self) {
        let inner = self.inner.lock();
        for (pid, gate) in self.gates.lock().iter() {
            gate.store(inner.space.is_audible(*pid), Ordering::Release);
        }
        for (pid, flag) in self.denoise.lock().iter() {
            flag.store(inner.space.suppresses_noise(*pid), Ordering::Release);
        }
    }

    /// Whether `pid`'s audio goes through noise suppression, as a flag the
    /// mixer reads every tick.
    pub fn denoise_flag(&self, pid: ParticipantId) -> Arc<AtomicBool> {
        let on = self.inner.lock().space.suppresses_noise(pid);
        let mut flags = self.denoise.lock();
        let flag = flags
            .entry(pid)
            .or_insert_with(|| Arc::new(AtomicBool::new(false)));
        flag.store(on, Ordering::Release);
        flag.clone()
    }

    /// The gate of `pid`'s ingest, created closed-or-open per the rules.
    pub fn gate(&self, pid: ParticipantId) -> Arc<AtomicBool> {
        let audible = self.inner.lock().space.is_audible(pid);
        let mut gates = self.gates.lock();
        let gate = gates
            .entry(pid)
            .or_insert_with(|| Arc::new(AtomicBool::new(false)));
        gate.store(audible, Ordering::Release);
        gate.clone()
    }
}

/// The JSON view of a space (docs/api.md `Space`).
pub fn space_view(s: &Space, listener_count: u64, replay_ready: bool, on_air: bool) -> Value {
    let id = s.id;
    let stage: Vec<Value> = s
        .stage()
        .map(|m| json!({"participant_id": m.id, "name": m.name, "role": m.role.as_str(), "muted": m.muted, "noise_suppression": s.suppresses_noise(m.id)}))
        .collect();
    let hands: Vec<Value> = s
        .hands()
        .map(|m| json!({"participant_id": m.id, "name": m.name}))
        .collect();
    let replay = (s.state == SpaceState::Ended && s.record && replay_ready).then(|| {
        json!({"ogg": format!("/spaces/{id}/recording.opus"), "hls": format!("/spaces/{id}/hls/replay.m3u8")})
    });
    json!({
        "id": id,
        "title": s.title,
        "state": s.state.as_str(),
        "max_stage": s.max_stage,
        "record": s.record,
        "public": s.public,
        "noise_suppression": s.noise_suppression,
        "music": s.music,
        "captions": s.captions,
        "scheduled_for": s.scheduled_for_ms.and_then(rfc3339),
        "created_at": rfc3339(s.created_at_ms),
        "started_at": s.started_at_ms.and_then(rfc3339),
        "ended_at": s.ended_at_ms.and_then(rfc3339),
        "stage": stage,
        "listener_count": listener_count,
        "on_air": s.state == SpaceState::Live && on_air,
        "hands_raised": hands,
        "listen": listen_urls(id),
        "replay": replay,
    })
}

/// Where to listen to a space.
pub fn listen_urls(id: SpaceId) -> Value {
    json!({
        "ogg": format!("/spaces/{id}/live.opus"),
        "ws": format!("/spaces/{id}/live.ws"),
        "hls": format!("/spaces/{id}/hls/live.m3u8"),
    })
}

/// What a new space asks for beyond [`SpaceOptions`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateExtras {
    /// Joins need an operator identity token.
    pub require_identity: bool,
    /// Every speaker's audio goes through noise suppression.
    pub noise_suppression: bool,
    /// Music mode: a stereo program at a music bitrate.
    pub music: bool,
    /// Live captions of each speaker.
    pub captions: bool,
}

/// How a command is carried out, beyond the room's rules.
#[derive(Debug, Clone, Copy)]
pub struct CommandOptions {
    /// A ban in a space without identities also holds the banned
    /// participant's network (default: yes).
    pub hold_network: bool,
}

impl Default for CommandOptions {
    fn default() -> Self {
        CommandOptions { hold_network: true }
    }
}

/// Everything a request handler can reach.
pub struct App {
    pub store: Arc<Mutex<Store>>,
    pub token_key: TokenKey,
    pub admin_token: String,
    pub spaces: RwLock<HashMap<SpaceId, Arc<SpaceCell>>>,
    pub metrics: Metrics,
    pub egress: Arc<Egress>,
    pub media: MediaPlane,
    pub admission: crate::admission::Admission,
    /// Ogg pages of history a new `live.opus` listener receives at once
    /// (`--ogg-burst-ms`).
    pub ogg_burst_pages: usize,
    /// Duration of one Ogg page, in ms (`--ogg-page-ms`).
    pub ogg_page_ms: u32,
    pub reaction_limiter: crate::admission::KeyedLimiter,
    pub join_limiter: crate::admission::KeyedLimiter,
    pub identity_key: Option<TokenKey>,
    /// Lifetime of participant tokens (`--token-ttl`).
    pub token_ttl_s: u64,
    /// Joins and hands per network (`--join-rate-per-ip`).
    pub net_limiter: crate::admission::KeyedLimiter,
    /// Hands per space (`--hand-rate-per-space`).
    pub hand_limiter: crate::admission::KeyedLimiter,
    /// WHIP offers per participant, network and node.
    pub offer_limits: crate::admission::OfferLimits,
    pub per_ip: Arc<crate::admission::PerIp>,
    pub command_limiter: crate::admission::KeyedLimiter,
    /// Clips per participant and per space.
    pub clip_limits: crate::admission::ClipLimits,
    /// "Remind me" per space and network.
    pub reminder_limiter: crate::admission::KeyedLimiter,
    /// Requests reading the recordings storage, per network
    /// (`--read-rate-per-ip`).
    pub read_limiter: crate::admission::KeyedLimiter,
    /// Reads of the recordings storage in flight at once
    /// ([`STORAGE_READS`]): the rest wait their turn, so readers never
    /// hold every thread of the blocking pool the store's writes need.
    pub storage_reads: tokio::sync::Semaphore,
    pub started: std::time::Instant,
    /// ACME HTTP-01 key authorizations by token, served on the redirect
    /// port while an order is pending.
    pub acme_http01: RwLock<HashMap<String, String>>,
    /// Why HTTPS cannot be served yet (an ACME node before its first
    /// certificate); `None` once a certificate is loaded.
    pub cert_pending: RwLock<Option<String>>,
    /// TURN servers offered to WHIP publishers (`--turn-url`).
    pub turn: Option<crate::turn::Turn>,
    /// What the node asks of the others (a lone node's answers itself).
    pub members: Arc<dyn crate::cluster::Membership>,
    /// Signed webhooks to the operator's systems.
    pub webhooks: Arc<Webhooks>,
    /// Live captions (or why they are unavailable on this node).
    pub captions: Arc<crate::captions::Captions>,
}

impl App {
    /// Whether the node can serve (`/readyz`), and if not, why.
    pub fn readiness(&self) -> Result<(), ApiError> {
        if let Some(why) = self.cert_pending.read().clone() {
            let mut e = ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_certificate",
                why,
            );
            e.retry_after = Some(5);
            Err(e)
        } else if let Err(e) = self.members.ready() {
            Err(e)
        } else if self.media.healthy() {
            Ok(())
        } else {
            Err(ApiError::unavailable("the media plane is not running", 1))
        }
    }

    /// Loads every stored space; live ones get their media back.
    pub fn load(&self) -> anyhow::Result<()> {
        let spaces = self.store.lock().load_spaces()?;
        // Which replays are stored, asked all at once (one request per space
        // on S3, 32 in flight) rather than one by one below.
        let recorded: Vec<SpaceId> = spaces
            .iter()
            .filter(|s| s.state == SpaceState::Ended && s.record)
            .map(|s| s.id)
            .collect();
        if let Err(e) = self.media.recorder.check_complete(&recorded) {
            tracing::warn!(error = %e, "could not list the stored replays");
        }
        for space in spaces {
            let (state, record) = (space.state, space.record);
            let cell = SpaceCell::new(space, Some(self.webhooks.clone()));
            self.spaces.write().insert(cell.id, cell.clone());
            match state {
                // Live spaces are resumed by the membership, on their
                // owner (`Membership::start`).
                SpaceState::Ended if record && self.media.recorder.is_complete(cell.id) => {
                    cell.replay_is_ready()
                }
                // Ended while the node died before its replay was cut: cut it
                // now (where its frames were recorded, if another member
                // may have recorded it).
                SpaceState::Ended
                    if record
                        && (!self.members.recorded_elsewhere(cell.id)
                            || crate::record::last_recorded(
                                self.media.recorder.storage().as_ref(),
                                cell.id,
                            )
                            .is_some()) =>
                {
                    let c = cell.clone();
                    self.media
                        .recorder
                        .end(cell.id, Box::new(move || c.replay_cut_here()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The space `id`, or 404.
    pub fn space(&self, id: SpaceId) -> Result<Arc<SpaceCell>, ApiError> {
        self.spaces
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such space"))
    }

    /// Mints a participant token, valid for the token lifetime from the
    /// later of now and `starts_ms` (a space's scheduled start), so a token
    /// given for a space scheduled weeks ahead still works when it starts.
    pub fn mint(
        &self,
        space: SpaceId,
        pid: ParticipantId,
        name: &str,
        idsub: Option<String>,
        starts_ms: Option<i64>,
        net: Option<String>,
    ) -> String {
        let starts_s = starts_ms.map_or(0, |ms| u64::try_from(ms / 1000).unwrap_or(0));
        self.token_key.sign(&Claims {
            space,
            pid,
            name: name.to_owned(),
            exp: now_s().max(starts_s) + self.token_ttl_s,
            idsub,
            net,
        })
    }

    /// Verifies a participant token for `space`.
    pub fn verify(&self, space: SpaceId, token: &str) -> Result<Claims, ApiError> {
        let claims: Claims = self.token_key.verify(token, now_s())?;
        if claims.space != space {
            return Err(amphi_core::token::TokenError::WrongSpace.into());
        }
        Ok(claims)
    }

    /// Creates a space with its host.
    pub async fn create(
        &self,
        opts: SpaceOptions,
        host_name: &str,
        extra: CreateExtras,
    ) -> Result<(Arc<SpaceCell>, ParticipantId), ApiError> {
        let id = SpaceId(rand::random());
        let host = ParticipantId(rand::random());
        let mut space = Space::new(id, host, host_name, opts, now_ms())?;
        space.require_identity = extra.require_identity;
        space.noise_suppression = extra.noise_suppression;
        space.music = extra.music;
        space.captions = extra.captions;
        self.persist(space.clone()).await?;
        let cell = SpaceCell::new(space, Some(self.webhooks.clone()));
        self.spaces.write().insert(id, cell.clone());
        self.metrics.spaces_created.inc();
        // The node where a space is created owns it first.
        self.members.owner(id).await?;
        Ok((cell, host))
    }

    /// Takes in a space's state written by its owner on another node.
    pub fn adopt_space(&self, space: Space) -> Arc<SpaceCell> {
        let existing = self.spaces.read().get(&space.id).cloned();
        let cell = match existing {
            Some(cell) => {
                cell.inner.lock().space = space.clone();
                cell.dirty.store(true, Ordering::Release);
                cell
            }
            None => {
                let cell = SpaceCell::new(space.clone(), Some(self.webhooks.clone()));
                self.spaces
                    .write()
                    .entry(space.id)
                    .or_insert_with(|| cell.clone())
                    .clone()
            }
        };
        // A local copy, so the node lists its spaces after a restart even
        // before NATS answers.
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.lock().save_space(&space, now_ms()) {
                tracing::warn!(error = %e, "could not keep a local copy of a space");
            }
        });
        cell
    }

    /// Saves `space` locally, then to the cluster. A local failure (a full
    /// or broken disk) is a 507: the caller must not make the change.
    async fn persist(&self, space: Space) -> Result<(), ApiError> {
        let store = self.store.clone();
        let local = space.clone();
        let res =
            tokio::task::spawn_blocking(move || store.lock().save_space(&local, now_ms())).await;
        match res {
            Ok(Ok(())) => self.members.write_state(&space).await,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not persist a space");
                self.metrics.storage_errors.inc();
                Err(ApiError::not_saved(
                    "the change could not be saved, so it was not made; try again",
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "persist task failed");
                Err(ApiError::not_saved(
                    "the change could not be saved, so it was not made; try again",
                ))
            }
        }
    }

    /// Runs one command against a space: rules, persistence, media, events.
    ///
    /// The command is applied to a copy of the space; the copy is saved and
    /// only then becomes the space, so a change the disk refused (507) was
    /// never in effect and memory and disk always agree. Commands of one
    /// space are serialised by its `write_lock`, so no other command can
    /// change the space between the copy and the swap.
    pub async fn command(
        &self,
        cell: &Arc<SpaceCell>,
        actor: &Claims,
        cmd: Command,
    ) -> Result<Outcome, ApiError> {
        self.command_with(cell, actor, cmd, CommandOptions::default())
            .await
    }

    /// [`Self::command`] with options.
    pub async fn command_with(
        &self,
        cell: &Arc<SpaceCell>,
        actor: &Claims,
        cmd: Command,
        opts: CommandOptions,
    ) -> Result<Outcome, ApiError> {
        if !self.command_limiter.check(actor.pid.0) {
            return Err(ApiError::rate_limited(1));
        }
        let _serial = cell.write_lock.lock().await;
        let (outcome, snapshot, removed_name) = {
            let mut inner = cell.inner.lock();
            inner.note_net(actor);
            let cmd = match cmd {
                Command::BringOnStage { target, name: None } => {
                    // Present here, or on another node of the cluster.
                    let name = inner
                        .presence
                        .name(target)
                        .map(str::to_owned)
                        .or_else(|| self.members.remote_name(cell.id, target));
                    Command::BringOnStage { target, name }
                }
                other => other,
            };
            let mut next = inner.space.clone();
            let outcome = next.apply(
                Actor {
                    id: actor.pid,
                    name: &actor.name,
                },
                cmd,
                now_ms(),
            )?;
            // In a space without identities, a ban also holds the network
            // the banned joined from (unless the moderator said not to).
            if let Outcome::Removed {
                target,
                banned: true,
            } = outcome
                && opts.hold_network
                && !next.require_identity
                && let Some(net) = inner.nets.get(&target)
            {
                next.hold_network(target, net);
            }
            let changed = inner.space != next;
            let removed_name = match outcome {
                Outcome::Removed { target, .. } => inner
                    .space
                    .member(target)
                    .map(|m| m.name.clone())
                    .or_else(|| inner.presence.name(target).map(str::to_owned)),
                _ => None,
            };
            (outcome, changed.then_some(next), removed_name)
        };
        if let Some(space) = snapshot {
            self.persist(space.clone()).await?;
            cell.inner.lock().space = space;
        }
        // Gates before we answer: a mute or removal is enforced at once.
        cell.sync_gates();
        match outcome {
            Outcome::Removed { target, banned } => {
                self.media.close_participant(cell.id, target);
                self.egress.close_tag(target.0);
                let name = removed_name.unwrap_or_default();
                self.webhooks.emit(
                    EventKind::ParticipantRemoved,
                    &format!("{}|{target}|{banned}", cell.id),
                    json!({"space_id": cell.id, "participant_id": target, "name": name, "banned": banned, "by": actor.pid}),
                );
            }
            Outcome::Started => {
                cell.start_media(&self.media, None, 0);
                cell.tell(EventKind::SpaceStarted);
                let title = cell.inner.lock().space.title.clone();
                self.webhooks.remind(cell.id, title);
            }
            Outcome::Ended => {
                let last = cell
                    .live
                    .read()
                    .as_ref()
                    .and_then(|l| l.history.lock().last_seq())
                    .unwrap_or(0);
                cell.stop_media(&self.media);
                let recorded = cell.inner.lock().space.record;
                self.members.release(cell.id, last, recorded).await;
                cell.tell(EventKind::SpaceEnded);
            }
            Outcome::Changed | Outcome::Unchanged => {
                if let Some(live) = cell.live.read().as_ref() {
                    cell.sync_captions_tap(live);
                }
            }
        }
        cell.dirty.store(true, Ordering::Release);
        self.metrics.commands.inc();
        Ok(outcome)
    }

    /// Rebuilds the events update of every space that changed.
    pub fn tick_updates(&self) {
        let cells: Vec<Arc<SpaceCell>> = self.spaces.read().values().cloned().collect();
        for cell in cells {
            let listeners = cell.listeners();
            let counted = cell.listener_count.swap(listeners, Ordering::Relaxed);
            let talking = cell.is_talking();
            let reactions = !cell.inner.lock().reactions.is_empty();
            if cell.dirty.swap(false, Ordering::AcqRel)
                || counted != listeners
                || talking
                || reactions
            {
                cell.refresh_update();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends at most 4 updates a second may skip some: the
    /// reactions of the skipped ones still reach it, once.
    #[test]
    fn reactions_of_skipped_updates_are_not_lost() {
        let opts = SpaceOptions {
            title: "t".into(),
            scheduled_for_ms: None,
            max_stage: 13,
            record: false,
            public: true,
        };
        let space = Space::new(SpaceId(1), ParticipantId(2), "Host", opts, 0).unwrap();
        let cell = SpaceCell::new(space, None);
        let joined = cell.updates.borrow().number;
        cell.inner.lock().reactions.add("👏").unwrap();
        cell.refresh_update();
        cell.inner.lock().reactions.add("👏").unwrap();
        cell.inner.lock().reactions.add("🔥").unwrap();
        cell.refresh_update();
        // An update with no reaction of its own comes last.
        cell.refresh_update();
        let update = cell.updates.borrow().clone();
        let sum = update.reactions_since(joined);
        assert_eq!(sum.get("👏"), Some(&2));
        assert_eq!(sum.get("🔥"), Some(&1));
        assert!(update.reactions_since(update.number).is_empty());
        assert!(!update.shared.contains("reactions"));
    }

    /// Updates carry the hands that changed, summed over the updates a
    /// client skipped; one too far behind gets the whole queue.
    #[test]
    fn updates_carry_hand_changes_not_the_queue() {
        let opts = SpaceOptions {
            title: "t".into(),
            scheduled_for_ms: None,
            max_stage: 13,
            record: false,
            public: true,
        };
        let space = Space::new(SpaceId(1), ParticipantId(2), "Host", opts, 0).unwrap();
        let cell = SpaceCell::new(space, None);
        let hand = |id: u64, up: bool| {
            let cmd = if up {
                Command::RaiseHand
            } else {
                Command::LowerHand
            };
            let actor = Actor {
                id: ParticipantId(id),
                name: "P",
            };
            cell.inner
                .lock()
                .space
                .apply(actor, cmd, id as i64)
                .unwrap();
        };
        let start = cell.updates.borrow().number;
        hand(10, true);
        hand(11, true);
        cell.refresh_update();
        let one = cell.updates.borrow().number;
        hand(10, false);
        hand(12, true);
        cell.refresh_update();
        let u = cell.updates.borrow().clone();
        assert!(!u.shared.contains("hands_raised"));
        assert!(u.full.contains("hands_raised"));
        // Up to date but for the last update: its own changes.
        assert_eq!(
            u.hands_since(one).unwrap(),
            json!({"added": [{"participant_id": ParticipantId(12), "name": "P"}], "removed": [ParticipantId(10)]})
        );
        // Skipped both: 10 came and went, 11 and 12 came.
        let both = u.hands_since(start).unwrap();
        assert_eq!(both["added"].as_array().unwrap().len(), 2);
        assert_eq!(both["removed"], json!([ParticipantId(10)]));
        // An update with no hand change leaves the log as it was.
        cell.refresh_update();
        let u = cell.updates.borrow().clone();
        assert_eq!(
            u.hands_since(u.number).unwrap(),
            json!({"added": [], "removed": []})
        );
        // Far behind the log: the whole queue instead.
        for i in 0..20 {
            hand(100 + i, true);
            cell.refresh_update();
        }
        let u = cell.updates.borrow().clone();
        assert!(u.hands_since(start).is_none());
        assert!(u.hands_since(u.number - 3).is_some());
    }
}
