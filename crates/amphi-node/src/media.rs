//! The media plane's shell: one thread runs the program of every space this
//! node serves ([`amphi_program::Program`], a sans-IO state machine) and
//! carries what it decides: units to the fan-out, frames to the recorder
//! and the cluster bus, return audio to the WebRTC engine, talking levels
//! to the control plane. The HTTP side only reads the outputs it publishes.
//!
//! Per 20 ms tick and per space the program mixes each audible speaker's
//! next packet, encodes the program once into a [`Frame`], and cuts it
//! once into the 30 s history, the Ogg pages, the WebSocket messages and
//! the LL-HLS parts; the fan-out sends those units to every listener. An
//! edge's frames from the cluster bus are cut by the same program on the
//! same thread. Ingest and mixing run on their own threads, apart from the
//! HTTP runtime and the fan-out workers, so a join storm cannot delay the
//! program.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use parking_lot::Mutex;

use amphi_core::frame::History;
use amphi_core::{Frame, ParticipantId, SpaceId, SpeakerLevel};
use amphi_egress::{Egress, Output};
use amphi_hls::playlist::Segmenter;
use amphi_media::{MixerConfig, OggPager};
use amphi_program::{
    CutConfig, Event, Output as ProgramOutput, Packet, Program, ProgramConfig, Session, StartSpace,
    Stores, UnitKind, ogg_serial,
};
use amphi_rtc::{RtcConfig, RtcEngine, RtcError, RtcEvent, RtcHandle, SessionId, SessionRequest};

use crate::metrics::{Scrape, counter};
use crate::record::{Recorder, last_recorded};

/// Called once a space's recording is cut into its replay.
pub type ReplayReady = crate::record::Done;

/// WHIP sessions one participant may hold at once.
pub const MAX_SESSIONS_PER_SPEAKER: usize = amphi_program::MAX_SESSIONS_PER_SPEAKER;

/// Frames kept for resumes and catch-up: 30 s.
pub const HISTORY_FRAMES: usize = 1500;

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub rtc_bind: SocketAddr,
    pub advertise_ip: Option<IpAddr>,
    pub bitrate: i32,
    /// Lone voices passed through, silence free (see `Config`).
    pub pass_through: bool,
    pub ogg_frames_per_page: usize,
    pub ws_frames_per_message: usize,
    pub egress: Arc<Egress>,
    /// Where recordings go (shared storage lets a new origin continue one).
    pub recordings: Arc<dyn amphi_storage::Storage>,
    /// The cluster's frame bus: every program frame of a space this node
    /// originates, encoded once, for the edges (`None` on a lone node).
    pub bus: Option<tokio::sync::mpsc::Sender<(SpaceId, Bytes)>>,
    /// ICE-TCP on the node's HTTP port (the front door hands the
    /// connections over): a passive TCP candidate in every answer, for
    /// speakers whose UDP is blocked.
    pub ice_tcp_port: Option<u16>,
    /// WebRTC sessions (speakers' publications) the node holds at most.
    pub max_rtc_sessions: usize,
    /// Complete LL-HLS segments a live space keeps (its DVR window).
    pub hls_dvr_segments: usize,
    /// Live captions: captioned speakers' packets are tapped for it before
    /// the mix (a `try_send`, never a wait).
    pub captions: Arc<crate::captions::Captions>,
}

impl MediaConfig {
    fn cut(&self) -> CutConfig {
        CutConfig {
            ogg_frames_per_page: self.ogg_frames_per_page,
            ws_frames_per_message: self.ws_frames_per_message,
        }
    }
}

/// The LL-HLS DVR window in complete segments for `minutes` of a live
/// space (2 s segments, about 8 KB each at 32 kbit/s: the default two hours
/// is 3600 segments, 30 MB per talking space at most), at least the three
/// a live playlist needs.
pub fn hls_dvr_segments(minutes: u32) -> usize {
    let frames_per_segment = amphi_hls::PART_FRAMES * amphi_hls::SEGMENT_PARTS;
    let frames_per_minute = 60_000_000 / amphi_core::frame::FRAME_US;
    ((u64::from(minutes) * frames_per_minute / frames_per_segment) as usize).max(3)
}

/// The outputs of one live space, read by the HTTP side.
pub struct LiveMedia {
    pub ogg: Arc<Output>,
    pub ws: Arc<Output>,
    /// OpusHead and OpusTags pages, the start of every Ogg listener's stream.
    pub ogg_headers: Bytes,
    /// The recent frames (written by the program, read by resumes).
    pub history: Arc<Mutex<History>>,
    /// The LL-HLS segmenter: parts and segments cut once from the frames.
    pub hls: Arc<Mutex<Segmenter>>,
    /// Bumped whenever a part or segment is published (blocking reloads).
    pub hls_tick: tokio::sync::watch::Sender<u64>,
    /// Listeners admitted but not yet handed to the fan-out (so the
    /// per-space cap holds under a storm).
    pub admitting: AtomicU64,
    /// Loudest level of each speaker heard since the control plane last
    /// took them (its events updates show who is talking).
    pub talking: Mutex<HashMap<ParticipantId, u8>>,
    /// The node fenced itself out of the space: its listener streams were
    /// told to go elsewhere and closed; only its HLS is still served.
    pub fenced: AtomicBool,
    /// The space's speakers are tapped for live captions.
    pub captions_on: AtomicBool,
}

impl LiveMedia {
    /// Listener streams attached on this node.
    pub fn listeners(&self) -> u64 {
        self.ogg.listeners() + self.ws.listeners()
    }

    /// Whether these outputs were closed by a fence (see
    /// [`MediaPlane::fence_space`]): never reused.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Takes one of the space's `max` places for a listener being admitted,
    /// atomically with every other admission; the place is given back when
    /// the returned guard drops (by then the listener is counted by its
    /// output, or was refused).
    pub fn try_admit(self: &Arc<Self>, max: u64) -> Option<Admitting> {
        self.admitting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.listeners() + n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitting(self.clone()))
    }

    /// WebSocket frames carrying the history from `from` up to frame
    /// `upto` (the last frame of the newest published message), so the live
    /// messages that follow continue without a gap or an overlap.
    pub fn resume_ws(&self, from: u64, upto: u64) -> Vec<Bytes> {
        amphi_program::resume_ws(&self.history.lock(), from, upto)
    }

    /// The stores the program writes for these outputs.
    fn stores(&self) -> Stores {
        Stores {
            history: self.history.clone(),
            hls: self.hls.clone(),
        }
    }

    /// Hands one unit the program cut to its listeners.
    fn publish(&self, egress: &Egress, kind: UnitKind, bytes: Bytes, last_frame: u64) {
        match kind {
            UnitKind::Ogg => egress.publish(&self.ogg, bytes, last_frame),
            UnitKind::Ws => egress.publish(&self.ws, bytes, last_frame),
            // Already in the segmenter: wake the blocked playlist requests.
            UnitKind::HlsPart { .. } | UnitKind::HlsSegment { .. } => {
                self.hls_tick.send_modify(|t| *t += 1)
            }
        }
    }

    /// The outputs are complete: wake HLS requests for the end, close the
    /// listener streams (after the units already published).
    fn close(&self, egress: &Egress, ended: bool) {
        if ended {
            self.hls_tick.send_modify(|t| *t += 1);
        }
        egress.close_output(&self.ogg);
        egress.close_output(&self.ws);
    }
}

/// Folds a frame's speaker levels into the space's talking levels for the
/// next events update.
fn note_talking(live: &LiveMedia, levels: &[SpeakerLevel]) {
    let mut talking = live.talking.lock();
    for s in levels {
        let e = talking.entry(s.participant).or_insert(0);
        *e = (*e).max(s.level);
    }
}

/// A place taken with [`LiveMedia::try_admit`].
pub struct Admitting(Arc<LiveMedia>);

impl Drop for Admitting {
    fn drop(&mut self) {
        self.0.admitting.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Cmd {
    Start {
        space: SpaceId,
        replay_ready: ReplayReady,
        live: Arc<LiveMedia>,
        record: bool,
        music: bool,
        first_seq: u64,
    },
    Stop {
        space: SpaceId,
    },
    Abandon {
        space: SpaceId,
    },
    Fence {
        space: SpaceId,
    },
    AddSession {
        space: SpaceId,
        pid: ParticipantId,
        session: SessionId,
        gate: Arc<AtomicBool>,
        denoise: Arc<AtomicBool>,
        wants_return: bool,
    },
    StartEdge {
        space: SpaceId,
        live: Arc<LiveMedia>,
    },
    RemoteFrames {
        space: SpaceId,
        frames: Vec<Frame>,
    },
    StopEdge {
        space: SpaceId,
        live: Arc<LiveMedia>,
        ended: bool,
    },
    /// Answered once every command before it is done and its units are
    /// published.
    Sync(tokio::sync::oneshot::Sender<()>),
    Shutdown,
}

/// Counters of the mixing thread.
#[derive(Debug, Default)]
struct MediaStats {
    frames: AtomicU64,
    late_ticks: AtomicU64,
    packets: AtomicU64,
    packets_unrouted: AtomicU64,
    sessions_replaced: AtomicU64,
    bus_dropped: AtomicU64,
    remote_frames: AtomicU64,
    remote_dropped: AtomicU64,
    /// Remote frames not queued to the media thread (its queue was full).
    remote_queue_full: AtomicU64,
    /// Frames made by each mode: mixed, passed through, silence.
    mixed_frames: AtomicU64,
    passed_frames: AtomicU64,
    silent_frames: AtomicU64,
    /// Switches into mixing.
    switches: AtomicU64,
    /// Silent mix-minus frames not sent.
    mix_minus_dtx_skipped: AtomicU64,
    /// Ticks run with noise suppression bypassed (the node over budget).
    denoise_bypassed: AtomicU64,
}

/// Ticks (every space's) that take more CPU than this on average (a
/// moving average over about ten ticks: one slow tick is no trend) mean
/// the node is over its budget: noise suppression is bypassed for
/// [`DENOISE_REST`] so the program is never late for it. CPU time, not
/// wall time: a thread that waited for a core was not over budget.
const DENOISE_BUDGET_US: f64 = 12_000.0;
/// How long noise suppression stays bypassed after an over-budget tick.
const DENOISE_REST: Duration = Duration::from_secs(5);

/// Handle to the media plane.
pub struct MediaPlane {
    tx: Sender<Cmd>,
    rtc: RtcHandle,
    rtc_addr: SocketAddr,
    engine: Mutex<Option<RtcEngine>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    egress: Arc<Egress>,
    cfg: MediaConfig,
    stats: Arc<MediaStats>,
    alive: Arc<AtomicBool>,
    pub recorder: Arc<Recorder>,
    speaker_stats: Arc<SpeakerStats>,
    /// Spaces mixed on this node now.
    mixing: Mutex<std::collections::HashSet<SpaceId>>,
    /// WHIP sessions whose ICE and DTLS are up, and their space (kept by
    /// the media thread from the engine's events).
    publishing: Arc<Publishing>,
}

/// Connected WHIP sessions and their spaces.
type Publishing = Mutex<HashMap<SessionId, SpaceId>>;

/// Per-speaker counters, refreshed by the mixer thread once a second.
type SpeakerStats = Mutex<Vec<(SpaceId, ParticipantId, amphi_media::jitter::JitterStats)>>;

impl MediaPlane {
    /// Starts the WebRTC engine and the mixing thread.
    pub fn start(cfg: MediaConfig) -> anyhow::Result<Self> {
        let (engine, events) = RtcEngine::start(RtcConfig {
            bind: cfg.rtc_bind,
            advertise_ip: cfg.advertise_ip,
            ice_tcp: cfg.ice_tcp_port.map_or(amphi_rtc::IceTcp::Off, |port| {
                amphi_rtc::IceTcp::Adopted { port }
            }),
            speaker_max_bitrate: u32::try_from(cfg.bitrate).unwrap_or(32_000),
            max_sessions: cfg.max_rtc_sessions,
            ..RtcConfig::default()
        })?;
        let rtc = engine.handle();
        let rtc_addr = engine.local_addr();
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let stats = Arc::new(MediaStats::default());
        let alive = Arc::new(AtomicBool::new(true));
        let recorder = Arc::new(Recorder::start(cfg.recordings.clone())?);
        let speaker_stats: Arc<SpeakerStats> = Arc::new(Mutex::new(Vec::new()));
        let publishing: Arc<Publishing> = Arc::default();
        let program = Program::new(
            ProgramConfig {
                mixer: MixerConfig {
                    bitrate: cfg.bitrate,
                    pass_through: cfg.pass_through,
                    ..MixerConfig::default()
                },
                cut: cfg.cut(),
                max_sessions_per_speaker: MAX_SESSIONS_PER_SPEAKER,
            },
            Instant::now(),
        );
        let mixer = MixThread {
            speaker_stats: speaker_stats.clone(),
            recorder: recorder.clone(),
            rx,
            events,
            rtc: rtc.clone(),
            egress: cfg.egress.clone(),
            bus: cfg.bus.clone(),
            program,
            spaces: HashMap::new(),
            stats: stats.clone(),
            stats_at: 0,
            publishing: publishing.clone(),
            denoise_rest_until: None,
            tick_cpu_us: 0.0,
            captions: cfg.captions.clone(),
        };
        let alive2 = alive.clone();
        let thread = std::thread::Builder::new()
            .name("amphi-mixer".into())
            .spawn(move || {
                mixer.run();
                alive2.store(false, Ordering::Release);
            })?;
        Ok(MediaPlane {
            tx,
            rtc,
            rtc_addr,
            engine: Mutex::new(Some(engine)),
            thread: Mutex::new(Some(thread)),
            egress: cfg.egress.clone(),
            cfg,
            stats,
            alive,
            recorder,
            speaker_stats,
            mixing: Mutex::new(Default::default()),
            publishing,
        })
    }

    /// The UDP address WHIP peers reach.
    pub fn rtc_addr(&self) -> SocketAddr {
        self.rtc_addr
    }

    /// Whether the mixing thread runs.
    pub fn healthy(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Fresh, empty outputs for a live space (an origin's or an edge's).
    /// A music space's Ogg stream says 2 channels.
    pub fn new_live_media(&self, space: SpaceId, music: bool) -> Arc<LiveMedia> {
        let pager = OggPager::new(ogg_serial(space), self.cfg.ogg_frames_per_page)
            .with_channels(if music { 2 } else { 1 });
        let stores = Stores::new(HISTORY_FRAMES, self.cfg.hls_dvr_segments);
        Arc::new(LiveMedia {
            ogg: self.egress.new_output(),
            // The WebSocket output keeps the whole history's messages, so
            // a resume is sent from them (shared) as a connect burst.
            ws: self.egress.new_output_with_ring(
                HISTORY_FRAMES / self.cfg.ws_frames_per_message.max(1)
                    + amphi_egress::BURST_MARGIN
                    + 2,
            ),
            ogg_headers: pager.headers(),
            history: stores.history,
            hls: stores.hls,
            hls_tick: tokio::sync::watch::channel(0).0,
            admitting: AtomicU64::new(0),
            talking: Mutex::new(HashMap::new()),
            fenced: AtomicBool::new(false),
            captions_on: AtomicBool::new(false),
        })
    }

    /// Relays a space mixed on another node into `live`: the frames given
    /// to [`MediaPlane::remote_frames`] are cut on the media thread, as a
    /// mixed space's are. End it with [`MediaPlane::stop_edge`].
    pub fn start_edge(&self, space: SpaceId, live: &Arc<LiveMedia>) {
        let _ = self.tx.send(Cmd::StartEdge {
            space,
            live: live.clone(),
        });
    }

    /// Frames of a relayed space, oldest first, from the cluster bus or
    /// the origin's history. Never blocks: with the media thread's queue
    /// full they are dropped and counted (the outputs skip them, as lost
    /// bus messages).
    pub fn remote_frames(&self, space: SpaceId, frames: Vec<Frame>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Cmd::RemoteFrames { space, frames }) {
            self.stats.remote_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns once the media thread has done everything asked of it
    /// before (at most 1 s: a stalled media thread does not hold the
    /// caller).
    pub async fn sync(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Cmd::Sync(tx)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rx).await;
        }
    }

    /// Ends the relay of a space into `live` (nothing happens if the space
    /// is mixed here now, or relayed into other outputs): `ended`, the
    /// space ended and its listeners get the end of the stream, after the
    /// frames already queued; otherwise nobody listens any more and the
    /// outputs just close.
    pub fn stop_edge(&self, space: SpaceId, live: &Arc<LiveMedia>, ended: bool) {
        let _ = self.tx.send(Cmd::StopEdge {
            space,
            live: live.clone(),
            ended,
        });
    }

    /// Starts mixing a space here and returns its outputs: `live` if given
    /// (the outputs this node already served as an edge, so its listeners
    /// carry on), frames numbered from at least `min_seq` (where a previous
    /// origin stopped) and after any frame already in `live`. `replay_ready`
    /// is called once the recording is cut after the end.
    pub fn start_space(
        &self,
        space: SpaceId,
        record: bool,
        music: bool,
        replay_ready: ReplayReady,
        live: Option<Arc<LiveMedia>>,
        min_seq: u64,
    ) -> Arc<LiveMedia> {
        let live = live.unwrap_or_else(|| self.new_live_media(space, music));
        self.mixing.lock().insert(space);
        // A space that was live before a restart continues its program:
        // sequence numbers go on from the last recorded frame, skipping the
        // time the node was down, so the recording shows the gap.
        let resumed =
            last_recorded(self.recorder.storage().as_ref(), space).map_or(0, |(seq, at_us)| {
                let down_us = wall_us().saturating_sub(at_us);
                seq.saturating_add(1).saturating_add(down_us / 20_000)
            });
        let _ = self.tx.send(Cmd::Start {
            space,
            replay_ready,
            live: live.clone(),
            record,
            music,
            first_seq: resumed.max(min_seq),
        });
        live
    }

    /// Stops a space's media: its mixer, the sessions of `publishers`,
    /// its listeners (the mixer thread closes the outputs after their last
    /// units; the caller stops admitting new listeners).
    pub fn stop_space(&self, space: SpaceId, publishers: &[ParticipantId]) {
        self.mixing.lock().remove(&space);
        let _ = self.tx.send(Cmd::Stop { space });
        self.cfg.captions.end(space);
        for pid in publishers {
            self.rtc.close_participant(space, *pid);
        }
    }

    /// Whether a speaker publishes `space` to this node now: one of its
    /// WHIP sessions here has connected (ICE and DTLS up) and is not
    /// closed.
    pub fn publishing(&self, space: SpaceId) -> bool {
        self.publishing.lock().values().any(|s| *s == space)
    }

    /// Whether this node mixes `space` now (it is its origin).
    pub fn is_mixing(&self, space: SpaceId) -> bool {
        self.mixing.lock().contains(&space)
    }

    /// Stops mixing a space another node now owns: its sessions and
    /// listeners here are closed (they reconnect, and find the new origin),
    /// and nothing is finished or cut, since the space goes on elsewhere.
    /// Returns whether it was mixed here.
    pub fn abandon_space(&self, space: SpaceId, publishers: &[ParticipantId]) -> bool {
        if !self.mixing.lock().remove(&space) {
            return false;
        }
        let _ = self.tx.send(Cmd::Abandon { space });
        for pid in publishers {
            self.rtc.close_participant(space, *pid);
        }
        true
    }

    /// Stops mixing (and recording) a space this node can no longer prove
    /// it owns (it fenced itself, cut off from the cluster): its WHIP
    /// sessions are closed (the speakers' clients publish again through
    /// another node), its `live.ws` listeners get a close frame with code
    /// [`CLOSE_GO_ELSEWHERE`](amphi_media::wire::CLOSE_GO_ELSEWHERE) and its
    /// Ogg listeners are closed; its HLS is kept, as it stands. Returns
    /// whether it was mixed here.
    pub fn fence_space(&self, space: SpaceId, publishers: &[ParticipantId]) -> bool {
        if !self.mixing.lock().remove(&space) {
            return false;
        }
        let _ = self.tx.send(Cmd::Fence { space });
        for pid in publishers {
            self.rtc.close_participant(space, *pid);
        }
        true
    }

    /// Ends a participant's WHIP sessions (removal).
    pub fn close_participant(&self, space: SpaceId, pid: ParticipantId) {
        self.rtc.close_participant(space, pid);
    }

    /// Stops the mixing thread and the WebRTC engine.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        if let Some(e) = self.engine.lock().take() {
            e.shutdown();
        }
        self.recorder.shutdown();
    }
    /// Media counters, read at scrape time (the per-speaker ones are
    /// [`MediaPlane::speaker_stats`]: their labels name spaces).
    pub fn collect(&self, out: &mut Scrape<'_>) {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "amphi_program_frames_total",
            "Program frames produced (all spaces).",
            l(&s.frames),
        );
        out.counter_family(
            "amphi_program_ticks_total",
            "Program frames by how they were made: mix (decoded, mixed, encoded), pass (a lone voice's packet as it came), silence (the shared silence frame).",
            [
                ([("mode", "mix")], l(&s.mixed_frames)),
                ([("mode", "pass")], l(&s.passed_frames)),
                ([("mode", "silence")], l(&s.silent_frames)),
            ],
        );
        counter(
            out,
            "amphi_program_mix_switches_total",
            "Times a space's program went from pass-through or silence to mixing.",
            l(&s.switches),
        );
        counter(
            out,
            "amphi_mix_minus_dtx_skipped_total",
            "Silent mix-minus frames not sent to speakers (one in 20 is, as with Opus DTX).",
            l(&s.mix_minus_dtx_skipped),
        );
        counter(
            out,
            "amphi_denoise_bypassed_ticks_total",
            "Mixer ticks run with noise suppression bypassed (ticks averaged over 12 ms of CPU).",
            l(&s.denoise_bypassed),
        );
        counter(
            out,
            "amphi_mixer_late_ticks_total",
            "Mixer ticks that started more than 10 ms late.",
            l(&s.late_ticks),
        );
        counter(
            out,
            "amphi_ingest_packets_total",
            "Audio packets delivered to the mixer.",
            l(&s.packets),
        );
        counter(
            out,
            "amphi_ingest_unrouted_total",
            "Audio packets for no live space or speaker.",
            l(&s.packets_unrouted),
        );
        counter(
            out,
            "amphi_whip_sessions_replaced_total",
            "WHIP sessions closed because their participant opened a newer one.",
            l(&s.sessions_replaced),
        );
        counter(
            out,
            "amphi_bus_frames_dropped_total",
            "Program frames not handed to the cluster bus (its queue was full).",
            l(&s.bus_dropped),
        );
        counter(
            out,
            "amphi_edge_frames_cut_total",
            "Frames of spaces mixed on other nodes cut into this node's outputs.",
            l(&s.remote_frames),
        );
        counter(
            out,
            "amphi_edge_frames_dropped_total",
            "Frames of spaces mixed on other nodes dropped (stale, for no relayed space, or the media thread's queue was full).",
            l(&s.remote_dropped) + l(&s.remote_queue_full),
        );
        for (name, kind, help, v) in self.rtc.stats().rows() {
            if kind == "gauge" {
                out.gauge(name, help, v);
            } else {
                out.counter(name, help, v);
            }
        }
        self.recorder.collect(out);
    }

    /// Each speaker's jitter-buffer counters (packets received, missing,
    /// late), as of the mixer's last report.
    pub fn speaker_stats(&self) -> Vec<(SpaceId, ParticipantId, amphi_media::jitter::JitterStats)> {
        self.speaker_stats.lock().clone()
    }

    /// Opens a WHIP session from an offer (the RTC thread answers).
    pub async fn create_session(
        &self,
        req: SessionRequest,
    ) -> Result<amphi_rtc::SessionInfo, RtcError> {
        self.rtc.create_session(req).await
    }

    /// Hands a connected-or-connecting session to the space's mixer: its
    /// audio is mixed (while `gate` is open, through noise suppression
    /// while `denoise` is set) and, if it asked, it gets the mix-minus back.
    pub fn add_session(
        &self,
        space: SpaceId,
        pid: ParticipantId,
        session: SessionId,
        gate: Arc<AtomicBool>,
        denoise: Arc<AtomicBool>,
        wants_return: bool,
    ) {
        let _ = self.tx.send(Cmd::AddSession {
            space,
            pid,
            session,
            gate,
            denoise,
            wants_return,
        });
    }

    /// Hands an ICE-TCP connection (RFC 4571 framing, told apart by the
    /// front door) to the WebRTC engine.
    pub fn adopt_tcp(&self, stream: std::net::TcpStream, peer: SocketAddr) {
        self.rtc.adopt_tcp(stream, peer);
    }

    /// Whether ICE-TCP connections are taken on the HTTP port.
    pub fn ice_tcp(&self) -> bool {
        self.cfg.ice_tcp_port.is_some()
    }

    /// Closes `session` if `owner` holds it (a WHIP DELETE).
    pub fn close_session_of(&self, session: SessionId, owner: ParticipantId) {
        self.rtc.close_session_of(session, owner);
    }
}

/// A space as the shell sees it: where its units go, and its speakers'
/// gates (read before every tick and passed to the program).
struct ShellSpace {
    live: Arc<LiveMedia>,
    /// Called once the recording is cut, after the end.
    replay_ready: Option<ReplayReady>,
    gates: HashMap<ParticipantId, Arc<AtomicBool>>,
    /// Its speakers' noise suppression flags (read with the gates).
    denoise: HashMap<ParticipantId, Arc<AtomicBool>>,
}

/// The media thread: a loop that feeds the program its inputs (commands,
/// RTC events, the clock) and carries out its outputs.
struct MixThread {
    rx: Receiver<Cmd>,
    events: Receiver<RtcEvent>,
    rtc: RtcHandle,
    egress: Arc<Egress>,
    bus: Option<tokio::sync::mpsc::Sender<(SpaceId, Bytes)>>,
    program: Program,
    spaces: HashMap<SpaceId, ShellSpace>,
    stats: Arc<MediaStats>,
    recorder: Arc<Recorder>,
    speaker_stats: Arc<SpeakerStats>,
    /// Tick count at the last speaker-stats refresh.
    stats_at: u64,
    publishing: Arc<Publishing>,
    /// Noise suppression is bypassed until then (over budget).
    denoise_rest_until: Option<Instant>,
    /// Moving average of a tick's CPU time, µs.
    tick_cpu_us: f64,
    captions: Arc<crate::captions::Captions>,
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a
    // constant Linux supports for every thread.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl MixThread {
    /// Commands wake the thread at once; the RTC engine's events (one per
    /// speaker packet) do not: they wait in their queue and are taken all
    /// at once before each tick, the only time the program needs them, so
    /// a thousand speakers cost one wake-up per 20 ms and not one per
    /// packet (the queue holds several ticks of them; packets keep their
    /// arrival time for the jitter buffer).
    fn run(mut self) {
        loop {
            let deadline = self.carry();
            select! {
                recv(self.rx) -> cmd => match cmd {
                    Ok(Cmd::Shutdown) | Err(_) => break,
                    Ok(cmd) => self.command(cmd),
                },
                recv(crossbeam_channel::at(deadline)) -> _ => {
                    if !self.take_events() {
                        break;
                    }
                    let now = Instant::now();
                    let resting = self.denoise_rest_until.is_some_and(|t| now < t);
                    for (id, s) in &self.spaces {
                        for (pid, gate) in &s.gates {
                            self.program.set_audible(*id, *pid, gate.load(Ordering::Acquire));
                        }
                        for (pid, on) in &s.denoise {
                            let on = on.load(Ordering::Acquire) && !resting;
                            self.program.set_noise_suppression(*id, *pid, on);
                        }
                    }
                    if resting {
                        self.stats.denoise_bypassed.fetch_add(1, Ordering::Relaxed);
                    }
                    let cpu = thread_cpu();
                    self.program.handle_timeout(now, wall_us());
                    let took = thread_cpu().saturating_sub(cpu).as_secs_f64() * 1e6;
                    self.tick_cpu_us += (took - self.tick_cpu_us) * 0.1;
                    if self.tick_cpu_us > DENOISE_BUDGET_US {
                        // Over budget: suppression is what gives way.
                        self.denoise_rest_until = Some(Instant::now() + DENOISE_REST);
                    }
                    self.refresh_stats();
                }
            }
        }
    }

    /// Feeds the program the events queued so far (not those arriving
    /// meanwhile, so a flood cannot hold the tick). `false`: the engine
    /// is gone.
    fn take_events(&mut self) -> bool {
        for _ in 0..=self.events.len() {
            match self.events.try_recv() {
                Ok(ev) => self.event(ev),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn refresh_stats(&mut self) {
        let p = self.program.stats();
        let s = &self.stats;
        s.frames.store(p.frames, Ordering::Relaxed);
        s.late_ticks.store(p.late_ticks, Ordering::Relaxed);
        s.packets.store(p.packets, Ordering::Relaxed);
        s.packets_unrouted
            .store(p.packets_unrouted, Ordering::Relaxed);
        s.sessions_replaced
            .store(p.sessions_replaced, Ordering::Relaxed);
        s.remote_frames.store(p.remote_frames, Ordering::Relaxed);
        s.remote_dropped.store(p.remote_dropped, Ordering::Relaxed);
        s.mixed_frames.store(p.mixed_frames, Ordering::Relaxed);
        s.passed_frames.store(p.passed_frames, Ordering::Relaxed);
        s.silent_frames.store(p.silent_frames, Ordering::Relaxed);
        s.switches.store(p.switches, Ordering::Relaxed);
        s.mix_minus_dtx_skipped
            .store(p.mix_minus_dtx_skipped, Ordering::Relaxed);
        if p.ticks >= self.stats_at + 50 {
            self.stats_at = p.ticks;
            *self.speaker_stats.lock() = self.program.speaker_stats();
        }
    }

    /// Carries out everything the program decided; returns its next
    /// deadline.
    fn carry(&mut self) -> Instant {
        loop {
            match self.program.poll_output() {
                ProgramOutput::Timeout(at) => return at,
                ProgramOutput::Frame {
                    space,
                    frame,
                    record,
                } => {
                    if let Some(bus) = &self.bus
                        && bus
                            .try_send((space, amphi_cluster::encode_frame(&frame)))
                            .is_err()
                    {
                        self.stats.bus_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    if record {
                        self.recorder.frame(space, frame);
                    }
                }
                ProgramOutput::Unit {
                    space,
                    kind,
                    bytes,
                    last_frame,
                } => {
                    if let Some(s) = self.spaces.get(&space) {
                        s.live.publish(&self.egress, kind, bytes, last_frame);
                    }
                }
                ProgramOutput::MixMinus { session, opus, seq } => {
                    self.rtc.send_audio(SessionId(session.0), opus, seq);
                }
                ProgramOutput::CloseSession(session) => {
                    self.rtc.close_session(SessionId(session.0));
                }
                ProgramOutput::Event(Event::Talking { space, levels }) => {
                    if let Some(s) = self.spaces.get(&space) {
                        note_talking(&s.live, &levels);
                    }
                }
                ProgramOutput::Event(Event::Closed {
                    space,
                    ended,
                    record,
                    ..
                }) => {
                    if let Some(s) = self.spaces.remove(&space) {
                        s.live.close(&self.egress, ended);
                        if ended
                            && record
                            && let Some(ready) = s.replay_ready
                        {
                            self.recorder.end(space, ready);
                        }
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start {
                space: id,
                replay_ready,
                live,
                record,
                music,
                first_seq,
            } => {
                let start = StartSpace {
                    space: id,
                    first_seq,
                    record,
                    stores: live.stores(),
                };
                match self.program.start_space(start) {
                    Ok(()) => {
                        self.program.set_music(id, music);
                        self.spaces.insert(
                            id,
                            ShellSpace {
                                live,
                                replay_ready: Some(replay_ready),
                                gates: HashMap::new(),
                                denoise: HashMap::new(),
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, space = %id, "could not create a mixer");
                    }
                }
            }
            Cmd::StartEdge { space: id, live } => {
                if self.program.is_mixing(id) {
                    return;
                }
                if self.program.is_edge(id) {
                    // An earlier relay whose stop is still on its way.
                    self.program.abandon_space(id);
                    self.carry();
                }
                self.program.start_edge(id, live.stores());
                self.spaces.insert(
                    id,
                    ShellSpace {
                        live,
                        replay_ready: None,
                        gates: HashMap::new(),
                        denoise: HashMap::new(),
                    },
                );
            }
            Cmd::RemoteFrames { space, frames } => {
                for frame in frames {
                    self.program.remote_frame(space, frame);
                }
            }
            Cmd::StopEdge { space, live, ended } => {
                let ours = self
                    .spaces
                    .get(&space)
                    .is_some_and(|s| Arc::ptr_eq(&s.live, &live));
                if ours && self.program.is_edge(space) {
                    if ended {
                        self.program.stop_space(space);
                    } else {
                        self.program.abandon_space(space);
                    }
                }
            }
            Cmd::Stop { space } => self.program.stop_space(space),
            Cmd::Abandon { space } => self.program.abandon_space(space),
            Cmd::Fence { space } => {
                if let Some(s) = self.spaces.get(&space) {
                    s.live.fenced.store(true, Ordering::Release);
                    let last = s.live.history.lock().last_seq().unwrap_or(0);
                    let bye = amphi_media::wire::ws_close_frame(
                        amphi_media::wire::CLOSE_GO_ELSEWHERE,
                        "this node lost the cluster: reconnect to another node",
                    );
                    s.live.publish(&self.egress, UnitKind::Ws, bye, last);
                }
                self.program.abandon_space(space);
            }
            Cmd::AddSession {
                space,
                pid,
                session,
                gate,
                denoise,
                wants_return,
            } => {
                if let Some(s) = self.spaces.get_mut(&space)
                    && self.program.is_mixing(space)
                {
                    s.gates.insert(pid, gate);
                    s.denoise.insert(pid, denoise);
                }
                if let Err(e) =
                    self.program
                        .add_session(space, pid, Session(session.0), wants_return)
                {
                    tracing::error!(error = %e, "could not add a speaker to the mixer");
                }
            }
            Cmd::Sync(done) => {
                self.carry();
                let _ = done.send(());
            }
            Cmd::Shutdown => {}
        }
    }

    /// The captions hook: a captioned space's speaker packet, before the
    /// mix, stamped with the program's time (its next frame, 20 ms each).
    fn tap_captions(&self, space: SpaceId, pid: ParticipantId, payload: &Bytes) {
        if let Some(s) = self.spaces.get(&space)
            && s.live.captions_on.load(Ordering::Relaxed)
        {
            let ms = self.program.next_seq(space).unwrap_or(0).saturating_mul(20);
            self.captions.packet(space, pid, payload, ms);
        }
    }

    fn event(&mut self, ev: RtcEvent) {
        match ev {
            RtcEvent::Audio {
                space,
                participant,
                rtp_seq,
                rtp_ts,
                payload,
                received_at,
                ..
            } => {
                self.tap_captions(space, participant, &payload);
                self.program.handle_packet(Packet {
                    space,
                    participant,
                    rtp_seq,
                    rtp_ts,
                    payload,
                    received: received_at,
                })
            }
            RtcEvent::Connected { id, space, .. } => {
                self.publishing.lock().insert(id, space);
            }
            RtcEvent::Closed { id, .. } => {
                self.publishing.lock().remove(&id);
                self.program.session_closed(Session(id.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hls_dvr_segments;

    #[test]
    fn the_dvr_window_is_counted_in_two_second_segments() {
        assert_eq!(hls_dvr_segments(120), 3600);
        assert_eq!(hls_dvr_segments(1), 30);
        assert_eq!(hls_dvr_segments(0), 3);
    }
}
