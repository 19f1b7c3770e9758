//! Live captions (`--captions-model DIR`): each captioned speaker's Opus
//! packets, tapped before the mix, are decoded, resampled to 16 kHz and
//! cut into phrases by voice activity on the captions tap thread; the
//! phrases queue (bounded: the oldest is dropped and counted when full) to
//! a pool of worker threads, each with its own Whisper model
//! (`amphi-captions`). Nothing here blocks the media thread: the tap is a
//! `try_send`, and a full tap queue drops the packet (counted).
//!
//! A cue found goes to the node's sink (the events channel) and into the
//! space's cue list, from which the transcript is written after the end
//! and clips ask for the cues of a time range.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;

use amphi_captions::resample::Downsample3;
use amphi_captions::vad::{Phrase, Segmenter, VadConfig};
use amphi_core::{ParticipantId, SpaceId};

use crate::metrics::{Scrape, counter, gauge};

/// Packets the tap thread may hold (about 10 s of one speaker).
const TAP_QUEUE: usize = 512;
/// Phrases waiting for a worker, per worker.
const JOBS_PER_WORKER: usize = 4;
/// Cues a space keeps (its transcript), at most.
const MAX_CUES: usize = 20_000;
/// Latencies kept for the p95 on `/metrics`.
const LATENCY_WINDOW: usize = 512;

/// One caption: who spoke, what, and when in program time (ms, the frame
/// clock: frame `seq` starts at `seq × 20`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cue {
    pub participant_id: ParticipantId,
    pub name: String,
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// Where cues go: the events channel of the space (the node sets it).
pub type CueSink = Arc<dyn Fn(SpaceId, &Cue) + Send + Sync>;
/// Names a speaker of a space (the node reads the room).
pub type Namer = Arc<dyn Fn(SpaceId, ParticipantId) -> String + Send + Sync>;
/// Called once the last phrase of an ended space is transcribed, with
/// every cue it had (the node writes the transcript).
pub type Finished = Arc<dyn Fn(SpaceId, Vec<Cue>) + Send + Sync>;

enum TapMsg {
    Packet {
        space: SpaceId,
        pid: ParticipantId,
        payload: Bytes,
        program_ms: u64,
    },
    End {
        space: SpaceId,
    },
}

enum Job {
    Phrase {
        space: SpaceId,
        pid: ParticipantId,
        start_ms: u64,
        end_ms: u64,
        samples: Vec<f32>,
        /// When the phrase's last voiced audio was heard (its end).
        spoken_at: Instant,
    },
    /// Every phrase of the space before this one is queued: write its
    /// transcript once they are done.
    Finish { space: SpaceId },
}

#[derive(Default)]
struct Stats {
    packets: AtomicU64,
    packets_dropped: AtomicU64,
    decode_errors: AtomicU64,
    phrases: AtomicU64,
    phrases_dropped: AtomicU64,
    cues: AtomicU64,
    /// Busy time of the workers (µs) and of the tap thread.
    infer_us: AtomicU64,
    tap_us: AtomicU64,
    latencies_ms: Mutex<std::collections::VecDeque<u64>>,
}

/// The captions service of a node.
pub struct Captions {
    /// `Err(why)`: captions are unavailable on this node.
    state: Result<Running, String>,
    stats: Arc<Stats>,
    cues: Arc<Mutex<HashMap<SpaceId, Vec<Cue>>>>,
}

impl std::fmt::Debug for Captions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captions")
            .field("unavailable", &self.unavailable_reason())
            .finish_non_exhaustive()
    }
}

struct Running {
    tap: Sender<TapMsg>,
}

impl Captions {
    /// A node without captions: `why` is told to the API's clients.
    pub fn unavailable(why: impl Into<String>) -> Self {
        Self {
            state: Err(why.into()),
            stats: Default::default(),
            cues: Default::default(),
        }
    }

    /// Loads the model once per worker (checking it first) and starts the
    /// tap thread and the workers. A missing or broken model is not an
    /// error of the node: captions are then unavailable, and say why.
    pub fn start(
        model: Option<&Path>,
        workers: usize,
        sink: CueSink,
        namer: Namer,
        finished: Finished,
    ) -> Self {
        let Some(dir) = model else {
            return Self::unavailable("this node has no speech model (--captions-model)");
        };
        let workers = workers.max(1);
        let mut models = Vec::with_capacity(workers);
        for _ in 0..workers {
            match amphi_captions::Transcriber::load(dir) {
                Ok(m) => models.push(m),
                Err(e) => {
                    tracing::warn!(error = %e, "live captions are unavailable");
                    return Self::unavailable(e.to_string());
                }
            }
        }
        let stats: Arc<Stats> = Default::default();
        let cues: Arc<Mutex<HashMap<SpaceId, Vec<Cue>>>> = Default::default();
        let (tap_tx, tap_rx) = crossbeam_channel::bounded(TAP_QUEUE);
        let (job_tx, job_rx) = crossbeam_channel::bounded(workers * JOBS_PER_WORKER);
        let pending: Arc<Mutex<HashMap<SpaceId, usize>>> = Default::default();
        let busy = Arc::new(AtomicUsize::new(0));
        for (i, model) in models.into_iter().enumerate() {
            let w = Worker {
                model,
                jobs: job_rx.clone(),
                sink: sink.clone(),
                namer: namer.clone(),
                finished: finished.clone(),
                stats: stats.clone(),
                cues: cues.clone(),
                pending: pending.clone(),
                busy: busy.clone(),
            };
            if let Err(e) = std::thread::Builder::new()
                .name(format!("amphi-captions-{i}"))
                .spawn(move || w.run())
            {
                return Self::unavailable(format!("no captions worker thread: {e}"));
            }
        }
        let tap = Tap {
            rx: tap_rx,
            jobs: job_tx,
            jobs_rx: job_rx,
            speakers: HashMap::new(),
            stats: stats.clone(),
            pending,
            out: Vec::new(),
            pcm: vec![0.0; amphi_media::opus::MAX_PACKET_SAMPLES],
            pcm16: Vec::with_capacity(2_000),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("amphi-captions-tap".into())
            .spawn(move || tap.run())
        {
            return Self::unavailable(format!("no captions tap thread: {e}"));
        }
        tracing::info!(model = %dir.display(), workers, "live captions ready");
        Self {
            state: Ok(Running { tap: tap_tx }),
            stats,
            cues,
        }
    }

    /// `None` when captions run here; otherwise why not.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.state.as_ref().err().map(String::as_str)
    }

    /// The tap: one packet of a captioned speaker, before the mix, at
    /// `program_ms` (the program's next frame). Never blocks: a full
    /// queue drops it, counted.
    pub fn packet(&self, space: SpaceId, pid: ParticipantId, payload: &Bytes, program_ms: u64) {
        let Ok(run) = &self.state else { return };
        self.stats.packets.fetch_add(1, Ordering::Relaxed);
        let msg = TapMsg::Packet {
            space,
            pid,
            payload: payload.clone(),
            program_ms,
        };
        if let Err(TrySendError::Full(_)) = run.tap.try_send(msg) {
            self.stats.packets_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The space ended (or stopped captioning for good here): its phrases
    /// in progress are closed and, once transcribed, its transcript goes to
    /// the `finished` callback.
    pub fn end(&self, space: SpaceId) {
        if let Ok(run) = &self.state {
            // Blocking is fine here: the control plane, not the mixer.
            let _ = run
                .tap
                .send_timeout(TapMsg::End { space }, Duration::from_secs(1));
        }
    }

    /// The cues of `space` that overlap `[from_ms, to_ms)` in program
    /// time, oldest first (clips show the transcript of their range).
    pub fn cues_between(&self, space: SpaceId, from_ms: u64, to_ms: u64) -> Vec<Cue> {
        self.cues
            .lock()
            .get(&space)
            .map(|cues| {
                cues.iter()
                    .filter(|c| c.end_ms > from_ms && c.start_ms < to_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// At most `limit` of the cues [`Captions::cues_between`] gives, and
    /// where the next page starts (see [`page_of`]).
    pub fn cues_page(
        &self,
        space: SpaceId,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> (Vec<Cue>, Option<u64>) {
        self.cues
            .lock()
            .get(&space)
            .map(|cues| page_of(cues, from_ms, to_ms, limit))
            .unwrap_or_default()
    }

    /// Forgets a space's cues (its transcript is written).
    pub fn forget(&self, space: SpaceId) {
        self.cues.lock().remove(&space);
    }

    pub fn collect(&self, out: &mut Scrape<'_>) {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "amphi_captions_packets_total",
            "Speaker packets tapped for captions (before the mix).",
            l(&s.packets),
        );
        counter(
            out,
            "amphi_captions_packets_dropped_total",
            "Tapped packets dropped: the captions tap's queue was full.",
            l(&s.packets_dropped),
        );
        counter(
            out,
            "amphi_captions_phrases_total",
            "Phrases cut by voice activity and queued for transcription.",
            l(&s.phrases),
        );
        counter(
            out,
            "amphi_captions_phrases_dropped_total",
            "Phrases dropped untranscribed (the oldest, when the workers' queue was full).",
            l(&s.phrases_dropped),
        );
        counter(
            out,
            "amphi_captions_cues_total",
            "Caption cues delivered.",
            l(&s.cues),
        );
        counter(
            out,
            "amphi_captions_decode_errors_total",
            "Tapped packets the Opus decoder refused.",
            l(&s.decode_errors),
        );
        gauge(
            out,
            "amphi_captions_cpu_seconds",
            "CPU time spent on captions (tap and workers, wall time while busy).",
            (l(&s.infer_us) + l(&s.tap_us)) as f64 / 1e6,
        );
        let mut lat: Vec<u64> = s.latencies_ms.lock().iter().copied().collect();
        lat.sort_unstable();
        let p95 = if lat.is_empty() {
            0.0
        } else {
            lat[(lat.len() * 95).div_ceil(100).saturating_sub(1)] as f64 / 1e3
        };
        gauge(
            out,
            "amphi_captions_latency_p95_seconds",
            "End of a phrase to its cue, 95th percentile of the recent cues.",
            p95,
        );
    }
}

/// One speaker being listened to on the tap thread.
struct Listening {
    decoder: amphi_media::opus::Decoder,
    down: Downsample3,
    vad: Segmenter,
    /// Program time at the segmenter's position 0.
    origin_ms: u64,
    /// Program time of the newest packet, and when it came.
    last_ms: u64,
    last_at: Instant,
}

impl Listening {
    fn position_ms(&self) -> u64 {
        self.origin_ms + self.vad.position() / 16
    }
}

struct Tap {
    rx: Receiver<TapMsg>,
    jobs: Sender<Job>,
    /// To drop the oldest job when the queue is full.
    jobs_rx: Receiver<Job>,
    speakers: HashMap<(SpaceId, ParticipantId), Listening>,
    stats: Arc<Stats>,
    pending: Arc<Mutex<HashMap<SpaceId, usize>>>,
    out: Vec<Phrase>,
    pcm: Vec<f32>,
    pcm16: Vec<f32>,
}

/// Quiet after the last packet that closes the phrase of a speaker who
/// stopped sending (muted, left, DTX).
const STALL: Duration = Duration::from_millis(300);

impl Tap {
    fn run(mut self) {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(msg) => {
                    let t = Instant::now();
                    self.handle(msg);
                    self.stats
                        .tap_us
                        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            self.stalled();
        }
    }

    fn handle(&mut self, msg: TapMsg) {
        match msg {
            TapMsg::Packet {
                space,
                pid,
                payload,
                program_ms,
            } => {
                let now = Instant::now();
                let l = match self.speakers.entry((space, pid)) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let Ok(decoder) = amphi_media::opus::Decoder::new() else {
                            return;
                        };
                        v.insert(Listening {
                            decoder,
                            down: Downsample3::default(),
                            vad: Segmenter::new(VadConfig::default()),
                            origin_ms: program_ms,
                            last_ms: program_ms,
                            last_at: now,
                        })
                    }
                };
                // A gap in the packets (loss, DTX, a mute lifted) is quiet.
                if program_ms > l.position_ms() + 120 {
                    let at = (program_ms - l.origin_ms) * 16;
                    l.vad.silence_until(at, &mut self.out);
                }
                l.last_ms = program_ms;
                l.last_at = now;
                match l.decoder.decode(&payload, &mut self.pcm) {
                    Ok(n) => {
                        self.pcm16.clear();
                        l.down.push(&self.pcm[..n], &mut self.pcm16);
                        l.vad.push(&self.pcm16, &mut self.out);
                    }
                    Err(_) => {
                        self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.queue(space, pid);
            }
            TapMsg::End { space } => {
                let keys: Vec<_> = self
                    .speakers
                    .keys()
                    .filter(|(s, _)| *s == space)
                    .copied()
                    .collect();
                for key in keys {
                    if let Some(mut l) = self.speakers.remove(&key) {
                        l.vad.flush(&mut self.out);
                        self.speakers.insert(key, l);
                        self.queue(key.0, key.1);
                        self.speakers.remove(&key);
                    }
                }
                // The end marker is never dropped for room: it waits.
                let _ = self
                    .jobs
                    .send_timeout(Job::Finish { space }, Duration::from_secs(5));
            }
        }
    }

    /// Speakers who stopped sending: their phrase ends with the quiet.
    fn stalled(&mut self) {
        let now = Instant::now();
        let keys: Vec<_> = self
            .speakers
            .iter()
            .filter(|(_, l)| now.duration_since(l.last_at) > STALL)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(l) = self.speakers.get_mut(&key) {
                let now_ms = l.last_ms + now.duration_since(l.last_at).as_millis() as u64;
                if now_ms > l.position_ms() {
                    l.vad
                        .silence_until((now_ms - l.origin_ms) * 16, &mut self.out);
                }
                // Long gone (left or muted for a while): forgotten.
                if now.duration_since(l.last_at) > Duration::from_secs(60) {
                    self.speakers.remove(&key);
                }
            }
            self.queue(key.0, key.1);
        }
    }

    /// Queues the phrases found for `(space, pid)`; with the queue full,
    /// the oldest waiting phrase is dropped (counted).
    fn queue(&mut self, space: SpaceId, pid: ParticipantId) {
        let now = Instant::now();
        let pos_ms = self
            .speakers
            .get(&(space, pid))
            .map(|l| (l.origin_ms, l.position_ms()));
        for p in self.out.drain(..) {
            let (origin, position) = pos_ms.unwrap_or((0, p.end / 16));
            let end_ms = origin + p.end / 16;
            // The phrase ended `position - end` ago (the quiet that closed it).
            let spoken_at = now
                .checked_sub(Duration::from_millis(position.saturating_sub(end_ms)))
                .unwrap_or(now);
            self.stats.phrases.fetch_add(1, Ordering::Relaxed);
            *self.pending.lock().entry(space).or_insert(0) += 1;
            let mut job = Job::Phrase {
                space,
                pid,
                start_ms: origin + p.start / 16,
                end_ms,
                samples: p.samples,
                spoken_at,
            };
            loop {
                match self.jobs.try_send(job) {
                    Ok(()) => break,
                    Err(TrySendError::Full(j)) => {
                        job = j;
                        match self.jobs_rx.try_recv() {
                            Ok(Job::Phrase { space, .. }) => {
                                self.stats.phrases_dropped.fetch_add(1, Ordering::Relaxed);
                                done_one(&self.pending, space);
                            }
                            // An end marker is put back (it must not be lost).
                            Ok(finish) => {
                                let _ = self.jobs.send_timeout(finish, Duration::from_secs(5));
                            }
                            Err(_) => {}
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        }
    }
}

fn done_one(pending: &Mutex<HashMap<SpaceId, usize>>, space: SpaceId) {
    let mut p = pending.lock();
    if let Some(n) = p.get_mut(&space) {
        *n = n.saturating_sub(1);
    }
}

struct Worker {
    model: amphi_captions::Transcriber,
    jobs: Receiver<Job>,
    sink: CueSink,
    namer: Namer,
    finished: Finished,
    stats: Arc<Stats>,
    cues: Arc<Mutex<HashMap<SpaceId, Vec<Cue>>>>,
    pending: Arc<Mutex<HashMap<SpaceId, usize>>>,
    busy: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self) {
        while let Ok(job) = self.jobs.recv() {
            match job {
                Job::Phrase {
                    space,
                    pid,
                    start_ms,
                    end_ms,
                    samples,
                    spoken_at,
                } => {
                    self.busy.fetch_add(1, Ordering::AcqRel);
                    let t = Instant::now();
                    let text = self.model.transcribe(&samples);
                    self.stats
                        .infer_us
                        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    match text {
                        Ok(text) if is_speech(&text) => {
                            let cue = Cue {
                                participant_id: pid,
                                name: (self.namer)(space, pid),
                                text,
                                start_ms,
                                end_ms,
                                is_final: true,
                            };
                            {
                                let mut cues = self.cues.lock();
                                let list = cues.entry(space).or_default();
                                if list.len() < MAX_CUES {
                                    list.push(cue.clone());
                                }
                            }
                            (self.sink)(space, &cue);
                            self.stats.cues.fetch_add(1, Ordering::Relaxed);
                            let mut lat = self.stats.latencies_ms.lock();
                            if lat.len() == LATENCY_WINDOW {
                                lat.pop_front();
                            }
                            lat.push_back(spoken_at.elapsed().as_millis() as u64);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "a phrase was not transcribed"),
                    }
                    done_one(&self.pending, space);
                    self.busy.fetch_sub(1, Ordering::AcqRel);
                }
                Job::Finish { space } => {
                    // The phrases queued before the end may still be with
                    // other workers: wait for them (bounded).
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while self.pending.lock().get(&space).copied().unwrap_or(0) > 0
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    self.pending.lock().remove(&space);
                    let mut cues = self.cues.lock().get(&space).cloned().unwrap_or_default();
                    cues.sort_by_key(|c| (c.start_ms, c.end_ms));
                    (self.finished)(space, cues);
                }
            }
        }
    }
}

/// Whisper's usual words for silence or noise are no caption.
fn is_speech(text: &str) -> bool {
    let t = text.trim();
    !(t.starts_with('[') || t.starts_with('(')) && t.chars().any(char::is_alphanumeric)
}

/// The cues of `cues` that overlap `[from_ms, to_ms)`, by start time, at
/// most `limit` of them (only those are copied), and, when some were left
/// out, the `from_ms` that asks for the rest: the start of the first one
/// left out. The next page repeats a cue of this one that is still going on
/// at that instant; it skips none.
pub fn page_of(cues: &[Cue], from_ms: u64, to_ms: u64, limit: usize) -> (Vec<Cue>, Option<u64>) {
    let mut hits: Vec<&Cue> = cues
        .iter()
        .filter(|c| c.end_ms > from_ms && c.start_ms < to_ms)
        .collect();
    hits.sort_by_key(|c| c.start_ms);
    let next = hits.get(limit).map(|c| c.start_ms);
    (hits.into_iter().take(limit).cloned().collect(), next)
}

/// `transcript.vtt`: the cues as WebVTT, the speaker as a voice span.
pub fn to_webvtt(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for (i, c) in cues.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n<v {}>{}\n\n",
            i + 1,
            vtt_time(c.start_ms),
            vtt_time(c.end_ms.max(c.start_ms + 1)),
            escape_vtt(&c.name),
            escape_vtt(&c.text)
        ));
    }
    out
}

/// `HH:MM:SS.mmm`.
pub fn vtt_time(ms: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A cue's text or a voice's name as WebVTT cue text: markup escaped and
/// every line break (LF, CR: either ends a WebVTT line, and a blank line
/// ends the cue) a space, so no text can close a cue or start another.
fn escape_vtt(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace("-->", "--&gt;")
        .replace(['\n', '\r'], " ")
}

/// The LL-HLS master playlist of a captioned space: the program (`live.m3u8`)
/// with a WebVTT subtitles rendition (`captions.m3u8`). `query` goes on
/// both URIs (a private space's media key).
pub fn master_playlist(query: Option<&str>) -> String {
    let q = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"Captions\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,FORCED=NO,URI=\"captions.m3u8{q}\"\n\
         #EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS=\"opus\",SUBTITLES=\"subs\"\n\
         live.m3u8{q}\n"
    )
}

/// Subtitle segments this close to the live edge are not listed yet: their
/// cues may still be on the way (a cue comes ~1.5 s after its phrase).
pub const SUBTITLE_HOLD_BACK_MS: u64 = 3_000;

/// The subtitles media playlist: one WebVTT segment per program segment
/// (same media sequence numbers, durations and discontinuities), so a
/// player aligns them; segments within [`SUBTITLE_HOLD_BACK_MS`] of the
/// edge wait until the stream ends (but the oldest one is always there).
pub fn subtitle_playlist(hls: &amphi_hls::playlist::Segmenter, query: Option<&str>) -> String {
    use std::fmt::Write;
    let q = query.map(|q| format!("?{q}")).unwrap_or_default();
    let ended = hls.is_finished();
    let segs: Vec<_> = hls.segments().collect();
    let edge_ms = segs.last().map_or(0, |s| (s.first_seq + s.span) * 20);
    let first = segs.first().map(|s| s.msn);
    // The oldest segment is always listed: hls.js stops with a fatal
    // `levelEmptyError` on a live playlist without segments (a player
    // that starts in the space's first seconds).
    let listed: Vec<_> = segs
        .into_iter()
        .filter(|s| {
            ended
                || Some(s.msn) == first
                || (s.first_seq + s.span) * 20 + SUBTITLE_HOLD_BACK_MS <= edge_ms
        })
        .collect();
    let target = listed
        .iter()
        .map(|s| (s.span * 20).div_ceil(1000))
        .max()
        .unwrap_or(2)
        .max(1);
    let mut o = format!("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{target}\n");
    let _ = writeln!(
        o,
        "#EXT-X-MEDIA-SEQUENCE:{}",
        listed.first().map_or(0, |s| s.msn)
    );
    for s in &listed {
        if s.discontinuity {
            o.push_str("#EXT-X-DISCONTINUITY\n");
        }
        // The audio segment's date: hls.js aligns a live subtitles
        // playlist to the program by PROGRAM-DATE-TIME.
        let pdt = i64::try_from(s.captured_at_us / 1000)
            .ok()
            .and_then(crate::timefmt::rfc3339);
        if let Some(pdt) = pdt {
            let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{pdt}");
        }
        let _ = writeln!(
            o,
            "#EXTINF:{:.3},\ncaptions/{}.vtt{q}",
            s.span as f64 * 0.02,
            s.msn
        );
    }
    if ended {
        o.push_str("#EXT-X-ENDLIST\n");
    }
    o
}

/// One WebVTT subtitle segment: the cues overlapping `[from_ms, to_ms)` of
/// program time, which is the fMP4 media time (`tfdt` = seq × 960 at
/// 48 kHz), hence the timestamp map at zero.
pub fn subtitle_segment(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n");
    for c in cues {
        out.push_str(&format!(
            "{} --> {}\n<v {}>{}\n\n",
            vtt_time(c.start_ms),
            vtt_time(c.end_ms.max(c.start_ms + 1)),
            escape_vtt(&c.name),
            escape_vtt(&c.text)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webvtt_has_times_voices_and_escapes() {
        let cues = [Cue {
            participant_id: ParticipantId(1),
            name: "Ann <host>".into(),
            text: "a --> b & c".into(),
            start_ms: 3_723_004,
            end_ms: 3_725_000,
            is_final: true,
        }];
        let v = to_webvtt(&cues);
        assert!(v.starts_with("WEBVTT\n\n1\n01:02:03.004 --> 01:02:05.000\n"));
        assert!(
            v.contains("<v Ann &lt;host&gt;>a --&gt; b &amp; c\n"),
            "{v}"
        );
        // No text ends its cue or starts another: one cue, three lines.
        let hostile = [Cue {
            text: "x\r\r00:00:00.000 --> 09:00:00.000\n\n<script>a</script></c></v>".into(),
            name: "Eve </v> -->".into(),
            ..cues[0].clone()
        }];
        let v = to_webvtt(&hostile);
        assert_eq!(v.matches("-->").count(), 1, "{v}");
        let body = v.strip_prefix("WEBVTT\n\n").unwrap();
        assert_eq!(body.trim_end().split(['\n', '\r']).count(), 3, "{v:?}");
        assert!(
            !v.contains('<') || v.matches('<').count() == 1,
            "only <v: {v}"
        );
    }

    #[test]
    fn the_subtitles_playlist_holds_back_but_is_never_empty_and_has_dates() {
        let frame = |seq: u64| amphi_core::Frame {
            seq,
            captured_at_us: 1_764_000_000_000_000 + seq * 20_000,
            opus: Bytes::from_static(&[0xf8, 1, 2]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        };
        let mut hls = amphi_hls::playlist::Segmenter::new(100);
        // One 2 s segment closed: within the hold-back, listed anyway
        // (hls.js stops on a live playlist without segments).
        for q in 0..110 {
            hls.push(&frame(q));
        }
        let pl = subtitle_playlist(&hls, Some("t=K"));
        assert!(
            pl.contains("#EXT-X-PROGRAM-DATE-TIME:2025-11-24T16:00:00Z\n#EXTINF:2.000,\ncaptions/0.vtt?t=K\n"),
            "{pl}"
        );
        // Six segments closed (edge at 12 s): the ones ending after 9 s
        // wait, each listed one carries its audio segment's date.
        for q in 110..610 {
            hls.push(&frame(q));
        }
        let pl = subtitle_playlist(&hls, None);
        assert!(
            pl.contains(
                "#EXT-X-PROGRAM-DATE-TIME:2025-11-24T16:00:06Z\n#EXTINF:2.000,\ncaptions/3.vtt\n"
            ),
            "{pl}"
        );
        assert!(
            !pl.contains("captions/4.vtt") && !pl.contains("ENDLIST"),
            "{pl}"
        );
    }

    #[test]
    fn noise_words_are_not_captions() {
        assert!(!is_speech(" [BLANK_AUDIO]"));
        assert!(!is_speech("(music)"));
        assert!(!is_speech(" ... "));
        assert!(is_speech("Hello."));
    }

    #[test]
    fn a_page_of_cues_is_bounded_and_the_next_page_skips_none() {
        // Two speakers, out of order as workers finish, overlapping.
        let cue = |pid: u64, start_ms: u64, end_ms: u64| Cue {
            participant_id: ParticipantId(pid),
            name: format!("p{pid}"),
            text: format!("{start_ms}"),
            start_ms,
            end_ms,
            is_final: true,
        };
        let mut cues: Vec<Cue> = (0..1000u64)
            .map(|i| cue(1, i * 100, i * 100 + 150))
            .collect();
        cues.extend(
            (0..1000u64)
                .rev()
                .map(|i| cue(2, i * 100 + 50, i * 100 + 90)),
        );
        let (first, next) = page_of(&cues, 0, u64::MAX, 500);
        assert_eq!(first.len(), 500);
        assert!(first.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
        let next = next.expect("more to come");
        // Paging through gives every cue at least once, each page bounded.
        let mut seen = std::collections::HashSet::new();
        let (mut from, mut pages) = (0, 0);
        loop {
            let (page, next) = page_of(&cues, from, u64::MAX, 500);
            assert!(page.len() <= 500);
            seen.extend(page.iter().map(|c| (c.participant_id, c.start_ms)));
            pages += 1;
            match next {
                Some(n) => {
                    assert!(n > from, "pages move forward");
                    from = n;
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 2000, "none skipped");
        assert!(pages <= 5, "{pages} pages");
        assert!(next > 0);
        // A range past the end is an empty page.
        assert_eq!(page_of(&cues, u64::MAX - 1, u64::MAX, 500), (vec![], None));
        assert_eq!(page_of(&cues, 200_000, 300_000, 500), (vec![], None));
    }

    #[test]
    fn without_a_model_captions_say_why_and_the_tap_is_inert() {
        let c = Captions::start(
            None,
            1,
            Arc::new(|_, _| {}),
            Arc::new(|_, _| String::new()),
            Arc::new(|_, _| {}),
        );
        assert!(c.unavailable_reason().unwrap().contains("--captions-model"));
        c.packet(SpaceId(1), ParticipantId(2), &Bytes::from_static(b"x"), 0);
        assert!(c.cues_between(SpaceId(1), 0, u64::MAX).is_empty());
        let c = Captions::start(
            Some(Path::new("/nonexistent")),
            1,
            Arc::new(|_, _| {}),
            Arc::new(|_, _| String::new()),
            Arc::new(|_, _| {}),
        );
        assert!(c.unavailable_reason().unwrap().contains("missing"));
    }

    #[test]
    fn subtitle_segments_carry_the_timestamp_map_and_the_master_names_them() {
        let v = subtitle_segment(&[Cue {
            participant_id: ParticipantId(1),
            name: "Ann".into(),
            text: "hello".into(),
            start_ms: 2_000,
            end_ms: 3_500,
            is_final: true,
        }]);
        assert!(v.starts_with("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n"));
        assert!(v.contains("00:00:02.000 --> 00:00:03.500\n<v Ann>hello\n"));
        let m = master_playlist(Some("t=abc"));
        assert!(m.contains("URI=\"captions.m3u8?t=abc\""), "{m}");
        assert!(m.ends_with("SUBTITLES=\"subs\"\nlive.m3u8?t=abc\n"), "{m}");
    }
}
