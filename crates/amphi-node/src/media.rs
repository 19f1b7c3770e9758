//! The media plane's shell: one thread owns every live space's mixer and
//! output cutters, fed by the WebRTC engine; the HTTP side only reads the
//! outputs it publishes.
//!
//! Per 20 ms tick and per space: each audible speaker's next packet is
//! decoded and mixed, the program is encoded once into a [`Frame`], the frame
//! goes into the 30 s history, the Ogg pager and the WebSocket batcher cut
//! their units from it once, and the fan-out sends those units to every
//! listener. Ingest and mixing run on their own threads, apart from the HTTP
//! runtime and the fan-out workers, so a join storm cannot delay the program.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;

use amphi_core::frame::History;
use amphi_core::{Frame, ParticipantId, SpaceId};
use amphi_egress::{Egress, Output};
use amphi_hls::playlist::Segmenter;
use amphi_media::{Mixer, MixerConfig, OggPager, WsBatcher};
use amphi_rtc::{RtcConfig, RtcEngine, RtcError, RtcEvent, RtcHandle, SessionId, SessionRequest};

use crate::metrics::counter;
use crate::record::{Recorder, last_recorded};

/// Called once a space's recording is cut into its replay.
pub type ReplayReady = crate::record::Done;

/// WHIP sessions one participant may hold at once.
pub const MAX_SESSIONS_PER_SPEAKER: usize = 2;

/// Frames kept for resumes and catch-up: 30 s.
pub const HISTORY_FRAMES: usize = 1500;
/// How far behind wall time the program's capture stamp is when nobody
/// speaks (with speakers it is their jitter buffers' measured depth), so
/// latency measured from `captured_at` includes the buffering.
const IDLE_JITTER_DEPTH_US: u64 = 40_000;

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub rtc_bind: SocketAddr,
    pub advertise_ip: Option<IpAddr>,
    pub bitrate: i32,
    pub ogg_frames_per_page: usize,
    pub ws_frames_per_message: usize,
    pub egress: Arc<Egress>,
    /// Where recordings go (shared storage lets a new origin continue one).
    pub recordings: Arc<dyn amphi_storage::Storage>,
    /// The cluster's frame bus: every program frame of a space this node
    /// originates, encoded once, for the edges (`None` on a lone node).
    pub bus: Option<tokio::sync::mpsc::Sender<(SpaceId, Bytes)>>,
}

/// Segments the live HLS keeps: the whole space, up to 2 hours, is the
/// DVR window (about 8 KB a segment at 32 kbit/s: 30 MB per space at most).
pub const HLS_DVR_SEGMENTS: usize = 3600;

/// The outputs of one live space, read by the HTTP side.
pub struct LiveMedia {
    pub ogg: Arc<Output>,
    pub ws: Arc<Output>,
    /// OpusHead and OpusTags pages, the start of every Ogg listener's stream.
    pub ogg_headers: Bytes,
    pub history: Mutex<History>,
    /// The LL-HLS segmenter: parts and segments cut once from the frames.
    pub hls: Mutex<Segmenter>,
    /// Bumped whenever a part or segment is published (blocking reloads).
    pub hls_tick: tokio::sync::watch::Sender<u64>,
    /// Listeners admitted but not yet handed to the fan-out (so the
    /// per-space cap holds under a storm).
    pub admitting: AtomicU64,
    /// Loudest level of each speaker heard since the control plane last
    /// took them (its events updates show who is talking).
    pub talking: Mutex<HashMap<ParticipantId, u8>>,
}

impl LiveMedia {
    /// Listener streams attached on this node.
    pub fn listeners(&self) -> u64 {
        self.ogg.listeners() + self.ws.listeners()
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
        let history = self.history.lock();
        let frames: Vec<Frame> = history
            .since(from)
            .take_while(|f| f.seq <= upto)
            .cloned()
            .collect();
        frames
            .chunks(255)
            .map(|c| amphi_media::wire::ws_binary_frame(&amphi_media::wire::encode_message(c)))
            .collect()
    }
}

/// Cuts a space's listener outputs from its frames, once per frame for
/// every listener: the history, the LL-HLS parts, the Ogg pages and the
/// WebSocket messages. The origin's mixer and an edge's bus feed both use
/// it, so an edge's outputs are the origin's, built locally.
pub struct Cutters {
    pager: OggPager,
    batcher: WsBatcher,
}

impl Cutters {
    pub fn new(space: SpaceId, ogg_frames_per_page: usize, ws_frames_per_message: usize) -> Self {
        Cutters {
            pager: OggPager::new(ogg_serial(space), ogg_frames_per_page),
            batcher: WsBatcher::new(ws_frames_per_message),
        }
    }

    /// Takes one frame into every output.
    pub fn cut(&mut self, live: &LiveMedia, egress: &Egress, frame: &Frame) {
        if !frame.speakers.is_empty() {
            let mut talking = live.talking.lock();
            for s in frame.speakers.iter() {
                let e = talking.entry(s.participant).or_insert(0);
                *e = (*e).max(s.level);
            }
        }
        live.history.lock().push(frame.clone());
        if !live.hls.lock().push(frame).is_empty() {
            live.hls_tick.send_modify(|t| *t += 1);
        }
        if let Some(page) = self.pager.push(frame) {
            egress.publish(&live.ogg, page, frame.seq);
        }
        if let Some(msg) = self.batcher.push(frame) {
            egress.publish(&live.ws, msg, frame.seq);
        }
    }

    /// The end of the space: the last page, the HLS end, a close frame to
    /// every WebSocket listener (no reconnect), then the outputs close.
    pub fn finish(&mut self, live: &LiveMedia, egress: &Egress) {
        let last = live.history.lock().last_seq().unwrap_or(0);
        if let Some(page) = self.pager.flush() {
            egress.publish(&live.ogg, page, last);
        }
        live.hls.lock().finish();
        live.hls_tick.send_modify(|t| *t += 1);
        let bye =
            amphi_media::wire::ws_close_frame(amphi_media::wire::CLOSE_SPACE_ENDED, "space ended");
        egress.publish(&live.ws, bye, last);
        egress.close_output(&live.ogg);
        egress.close_output(&live.ws);
    }
}

fn ogg_serial(space: SpaceId) -> u32 {
    (space.0 as u32) ^ ((space.0 >> 32) as u32)
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
        first_seq: u64,
    },
    Stop {
        space: SpaceId,
    },
    Abandon {
        space: SpaceId,
    },
    AddSession {
        space: SpaceId,
        pid: ParticipantId,
        session: SessionId,
        gate: Arc<AtomicBool>,
        wants_return: bool,
    },
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
}

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
}

/// Per-speaker counters, refreshed by the mixer thread once a second.
type SpeakerStats = Mutex<Vec<(SpaceId, ParticipantId, amphi_media::jitter::JitterStats)>>;

impl MediaPlane {
    /// Starts the WebRTC engine and the mixing thread.
    pub fn start(cfg: MediaConfig) -> anyhow::Result<Self> {
        let (engine, events) = RtcEngine::start(RtcConfig {
            bind: cfg.rtc_bind,
            advertise_ip: cfg.advertise_ip,
            ..RtcConfig::default()
        })?;
        let rtc = engine.handle();
        let rtc_addr = engine.local_addr();
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let stats = Arc::new(MediaStats::default());
        let alive = Arc::new(AtomicBool::new(true));
        let recorder = Arc::new(Recorder::start(cfg.recordings.clone())?);
        let speaker_stats: Arc<SpeakerStats> = Arc::new(Mutex::new(Vec::new()));
        let mixer = MixThread {
            speaker_stats: speaker_stats.clone(),
            ticks: 0,
            recorder: recorder.clone(),
            rx,
            events,
            rtc: rtc.clone(),
            egress: cfg.egress.clone(),
            cfg: cfg.clone(),
            spaces: HashMap::new(),
            sessions: HashMap::new(),
            stats: stats.clone(),
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
    pub fn new_live_media(&self, space: SpaceId) -> Arc<LiveMedia> {
        let pager = OggPager::new(ogg_serial(space), self.cfg.ogg_frames_per_page);
        Arc::new(LiveMedia {
            ogg: self.egress.new_output(),
            ws: self.egress.new_output(),
            ogg_headers: pager.headers(),
            history: Mutex::new(History::new(HISTORY_FRAMES)),
            hls: Mutex::new(Segmenter::new(HLS_DVR_SEGMENTS)),
            hls_tick: tokio::sync::watch::channel(0).0,
            admitting: AtomicU64::new(0),
            talking: Mutex::new(HashMap::new()),
        })
    }

    /// Output cutters configured like this node's.
    pub fn cutters(&self, space: SpaceId) -> Cutters {
        Cutters::new(
            space,
            self.cfg.ogg_frames_per_page,
            self.cfg.ws_frames_per_message,
        )
    }

    /// The fan-out the outputs publish to.
    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// Starts mixing a space here and returns its outputs: `live` if given
    /// (the outputs this node already served as an edge, so its listeners
    /// carry on), frames numbered from at least `min_seq` (where a previous
    /// origin stopped). `replay_ready` is called once the recording is cut
    /// after the end.
    pub fn start_space(
        &self,
        space: SpaceId,
        record: bool,
        replay_ready: ReplayReady,
        live: Option<Arc<LiveMedia>>,
        min_seq: u64,
    ) -> Arc<LiveMedia> {
        let live = live.unwrap_or_else(|| self.new_live_media(space));
        self.mixing.lock().insert(space);
        // A space that was live before a restart continues its program:
        // sequence numbers go on from the last recorded frame, skipping the
        // time the node was down, so the recording shows the gap.
        let resumed =
            last_recorded(self.recorder.storage().as_ref(), space).map_or(0, |(seq, at_us)| {
                let down_us = wall_us().saturating_sub(at_us);
                seq.saturating_add(1).saturating_add(down_us / 20_000)
            });
        let after_history = live
            .history
            .lock()
            .last_seq()
            .map_or(0, |s| s.saturating_add(1));
        let _ = self.tx.send(Cmd::Start {
            space,
            replay_ready,
            live: live.clone(),
            record,
            first_seq: resumed.max(min_seq).max(after_history),
        });
        live
    }

    /// Stops a space's media: its mixer, the sessions of `publishers`,
    /// its listeners (the mixer thread closes the outputs after their last
    /// units; the caller stops admitting new listeners).
    pub fn stop_space(&self, space: SpaceId, publishers: &[ParticipantId]) {
        self.mixing.lock().remove(&space);
        let _ = self.tx.send(Cmd::Stop { space });
        for pid in publishers {
            self.rtc.close_participant(space, *pid);
        }
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

    /// Media counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "amphi_program_frames_total",
            "Program frames produced (all spaces).",
            l(&s.frames),
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
        self.rtc.stats().render_prometheus(out);
        let rows = self.speaker_stats.lock().clone();
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
            let family: Vec<(String, f64)> = rows
                .iter()
                .map(|(sp, p, st)| {
                    let v = [st.received, st.missing, st.late][pick];
                    (format!("space=\"{sp}\",participant=\"{p}\""), v as f64)
                })
                .collect();
            crate::metrics::counter_family(out, name, help, &family);
        }
        self.recorder.render_metrics(out);
    }

    /// Opens a WHIP session from an offer (the RTC thread answers).
    pub async fn create_session(
        &self,
        req: SessionRequest,
    ) -> Result<amphi_rtc::SessionInfo, RtcError> {
        self.rtc.create_session(req).await
    }

    /// Hands a connected-or-connecting session to the space's mixer: its
    /// audio is mixed (while `gate` is open) and, if it asked, it gets the
    /// mix-minus back.
    pub fn add_session(
        &self,
        space: SpaceId,
        pid: ParticipantId,
        session: SessionId,
        gate: Arc<AtomicBool>,
        wants_return: bool,
    ) {
        let _ = self.tx.send(Cmd::AddSession {
            space,
            pid,
            session,
            gate,
            wants_return,
        });
    }

    /// Closes `session` if `owner` holds it (a WHIP DELETE).
    pub fn close_session_of(&self, session: SessionId, owner: ParticipantId) {
        self.rtc.close_session_of(session, owner);
    }
}

struct Speaker {
    gate: Arc<AtomicBool>,
    sessions: Vec<(SessionId, bool)>,
}

struct SpaceMix {
    space: SpaceId,
    replay_ready: Option<ReplayReady>,
    live: Arc<LiveMedia>,
    mixer: Mixer,
    cutters: Cutters,
    speakers: HashMap<ParticipantId, Speaker>,
    record: bool,
}

struct MixThread {
    rx: Receiver<Cmd>,
    events: Receiver<RtcEvent>,
    rtc: RtcHandle,
    egress: Arc<Egress>,
    cfg: MediaConfig,
    spaces: HashMap<SpaceId, SpaceMix>,
    sessions: HashMap<SessionId, (SpaceId, ParticipantId)>,
    stats: Arc<MediaStats>,
    recorder: Arc<Recorder>,
    speaker_stats: Arc<SpeakerStats>,
    ticks: u64,
}

const TICK: Duration = Duration::from_millis(20);

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl MixThread {
    fn run(mut self) {
        let mut deadline = Instant::now() + TICK;
        loop {
            let timeout = crossbeam_channel::at(deadline);
            select! {
                recv(self.rx) -> cmd => match cmd {
                    Ok(Cmd::Shutdown) | Err(_) => break,
                    Ok(cmd) => self.command(cmd),
                },
                recv(self.events) -> ev => match ev {
                    Ok(ev) => self.event(ev),
                    Err(_) => break,
                },
                recv(timeout) -> _ => {
                    let now = Instant::now();
                    if now.duration_since(deadline) > Duration::from_millis(10) {
                        self.stats.late_ticks.fetch_add(1, Ordering::Relaxed);
                    }
                    self.tick();
                    deadline += TICK;
                    if now.duration_since(deadline) > Duration::from_millis(200) {
                        // Far behind (a stalled machine): restart the clock
                        // rather than burst out frames to catch up.
                        deadline = now + TICK;
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start {
                space,
                replay_ready,
                live,
                record,
                first_seq,
            } => {
                let mut mixer = match Mixer::new(MixerConfig {
                    bitrate: self.cfg.bitrate,
                    ..MixerConfig::default()
                }) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(error = %e, %space, "could not create a mixer");
                        return;
                    }
                };
                mixer.set_next_seq(first_seq);
                let mix = SpaceMix {
                    record,
                    cutters: Cutters::new(
                        space,
                        self.cfg.ogg_frames_per_page,
                        self.cfg.ws_frames_per_message,
                    ),
                    space,
                    replay_ready: Some(replay_ready),
                    live,
                    mixer,
                    speakers: HashMap::new(),
                };
                self.spaces.insert(space, mix);
            }
            Cmd::Stop { space } => {
                if let Some(mut mix) = self.spaces.remove(&space) {
                    mix.cutters.finish(&mix.live, &self.egress);
                    if mix.record
                        && let Some(ready) = mix.replay_ready.take()
                    {
                        self.recorder.end(space, ready);
                    }
                }
                self.sessions.retain(|_, (s, _)| *s != space);
            }
            Cmd::Abandon { space } => {
                if let Some(mix) = self.spaces.remove(&space) {
                    self.egress.close_output(&mix.live.ogg);
                    self.egress.close_output(&mix.live.ws);
                }
                self.sessions.retain(|_, (s, _)| *s != space);
            }
            Cmd::AddSession {
                space,
                pid,
                session,
                gate,
                wants_return,
            } => {
                let Some(mix) = self.spaces.get_mut(&space) else {
                    self.rtc.close_session(session);
                    return;
                };
                let sp = mix.speakers.entry(pid).or_insert_with(|| Speaker {
                    gate,
                    sessions: Vec::new(),
                });
                // A participant keeps at most MAX_SESSIONS_PER_SPEAKER
                // sessions: a new one (a reconnect, a second tab) replaces
                // the oldest, so a client cannot pile up sessions.
                while sp.sessions.len() >= MAX_SESSIONS_PER_SPEAKER {
                    let (old, _) = sp.sessions.remove(0);
                    self.rtc.close_session(old);
                    self.stats.sessions_replaced.fetch_add(1, Ordering::Relaxed);
                }
                sp.sessions.push((session, wants_return));
                let wants = sp.sessions.iter().any(|(_, w)| *w);
                if let Err(e) = mix.mixer.add_speaker(pid, wants) {
                    tracing::error!(error = %e, "could not add a speaker to the mixer");
                }
                self.sessions.insert(session, (space, pid));
            }
            Cmd::Shutdown => {}
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
                ..
            } => match self.spaces.get_mut(&space) {
                Some(mix) if mix.speakers.contains_key(&participant) => {
                    self.stats.packets.fetch_add(1, Ordering::Relaxed);
                    mix.mixer.push_packet(participant, rtp_seq, rtp_ts, payload);
                }
                _ => {
                    self.stats.packets_unrouted.fetch_add(1, Ordering::Relaxed);
                }
            },
            RtcEvent::Closed { id, .. } => {
                if let Some((space, pid)) = self.sessions.remove(&id)
                    && let Some(mix) = self.spaces.get_mut(&space)
                    && let Some(sp) = mix.speakers.get_mut(&pid)
                {
                    sp.sessions.retain(|(s, _)| *s != id);
                    if sp.sessions.is_empty() {
                        mix.speakers.remove(&pid);
                        mix.mixer.remove_speaker(pid);
                    }
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(50) {
            let mut all = Vec::new();
            for (id, mix) in &self.spaces {
                all.extend(
                    mix.mixer
                        .speaker_stats()
                        .into_iter()
                        .map(|(p, st)| (*id, p, st)),
                );
            }
            *self.speaker_stats.lock() = all;
        }
        let now_us = wall_us();
        for mix in self.spaces.values_mut() {
            for (pid, sp) in &mix.speakers {
                mix.mixer.set_audible(*pid, sp.gate.load(Ordering::Acquire));
            }
            let depth = mix.mixer.buffered_us().unwrap_or(IDLE_JITTER_DEPTH_US);
            let tick = mix.mixer.tick(now_us.saturating_sub(depth));
            let frame = tick.frame;
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
            if let Some(bus) = &self.cfg.bus
                && bus
                    .try_send((mix.space, amphi_cluster::encode_frame(&frame)))
                    .is_err()
            {
                self.stats.bus_dropped.fetch_add(1, Ordering::Relaxed);
            }
            mix.cutters.cut(&mix.live, &self.egress, &frame);
            if mix.record {
                self.recorder.frame(mix.space, frame.clone());
            }
            for (pid, opus) in tick.mix_minus {
                if let Some(sp) = mix.speakers.get(&pid) {
                    for (session, wants) in &sp.sessions {
                        if *wants {
                            self.rtc.send_audio(*session, opus.clone());
                        }
                    }
                }
            }
        }
    }
}
