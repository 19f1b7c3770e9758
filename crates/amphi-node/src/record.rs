//! The recorder: its own thread writes the program of every recorded space
//! as frame segments (2 s each), each stored durably as it closes (fsynced
//! and renamed into place, or one S3 PUT), so a killed server loses at most
//! the segment in progress. When a space ends, the segments are cut into
//! `recording.opus` and an HLS VOD; if the store fails then, the cut is
//! tried again until it succeeds.
//!
//! Keys in the recordings storage (`amphi-storage`: `<data>/recordings` or
//! S3): `<space>/frames/<first seq>.amfs`, then at the end
//! `<space>/recording.opus`, `<space>/hls/init.mp4`, `<space>/hls/seg-N.m4s`,
//! `<space>/hls/replay.m3u8` and the marker `<space>/complete`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amphi_core::{Frame, SpaceId};
use amphi_hls::playlist::Segmenter;
use amphi_hls::{SEGMENT_FRAMES, fmp4, frames};
use amphi_media::OggPager;
use amphi_media::opus::Encoder;
use amphi_storage::Storage;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::metrics::{Scrape, counter};

/// Counters of the recorder.
#[derive(Debug, Default)]
pub struct RecordStats {
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub write_us_total: AtomicU64,
    pub finalized: AtomicU64,
    pub dropped_frames: AtomicU64,
}

/// The longest gap between two recorded frames that is taken as time the
/// node was down (6 h of 20 ms frames) and filled with silence in
/// `recording.opus`; a larger jump can only come from a damaged segment,
/// whose frames are skipped rather than padded with hours of silence.
pub const MAX_GAP_FRAMES: u64 = 6 * 3600 * 50;

/// Called when a space's replay outputs are ready.
pub type Done = Box<dyn FnOnce() + Send>;

/// What the recorder is told besides frames (which have a bounded channel
/// of their own): unbounded, so that the mixer thread, which ends spaces,
/// never waits for a recorder that is behind.
enum Ctl {
    End(SpaceId, Done),
    Shutdown,
}

/// Handle to the recorder thread.
pub struct Recorder {
    tx: Sender<(SpaceId, Frame)>,
    ctl: Sender<Ctl>,
    storage: Arc<dyn Storage>,
    pub stats: Arc<RecordStats>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Spaces whose replay is known to be in the storage: a replay is never
    /// withdrawn, so each is checked there once, not on every request.
    complete: parking_lot::Mutex<std::collections::HashSet<SpaceId>>,
}

/// The key of a space's object `name` (`recording.opus`, `hls/seg-3.m4s`).
pub fn key(id: SpaceId, name: &str) -> String {
    format!("{id}/{name}")
}

/// The frame segments of a space, in order.
fn segment_keys(storage: &dyn Storage, id: SpaceId) -> std::io::Result<Vec<String>> {
    let mut keys = storage.list(&key(id, "frames/"))?;
    keys.retain(|k| k.ends_with(".amfs"));
    keys.sort();
    Ok(keys)
}

/// The last frame already recorded for a space: (seq, captured_at_us).
pub fn last_recorded(storage: &dyn Storage, id: SpaceId) -> Option<(u64, u64)> {
    let keys = segment_keys(storage, id).ok()?;
    let data = storage.get(keys.last()?).ok()??;
    let frames = frames::decode(&data).ok()?;
    frames.last().map(|f| (f.seq, f.captured_at_us))
}

/// Stores `frames` (consecutive or not, in order) as one segment of the
/// space's recording, named by its first frame like the recorder's own.
pub fn put_frames(storage: &dyn Storage, space: SpaceId, frames: &[Frame]) -> std::io::Result<()> {
    let Some(first) = frames.first() else {
        return Ok(());
    };
    let name = format!("frames/{:020}.amfs", first.seq);
    storage.put(&key(space, &name), frames::encode(frames))
}

impl Recorder {
    /// Starts the recorder writing to `storage`.
    pub fn start(storage: Arc<dyn Storage>) -> anyhow::Result<Self> {
        // Bounded: if the disk stalls for a long time, frames are dropped
        // (and counted) rather than piling up in memory or blocking mixing.
        let (tx, rx) = crossbeam_channel::bounded(50 * 60);
        let (ctl, ctl_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(RecordStats::default());
        let worker = Worker {
            storage: storage.clone(),
            rx,
            ctl: ctl_rx,
            stats: stats.clone(),
            open: HashMap::new(),
            retries: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("amphi-recorder".into())
            .spawn(move || worker.run())?;
        Ok(Recorder {
            tx,
            ctl,
            storage,
            stats,
            thread: parking_lot::Mutex::new(Some(thread)),
            complete: Default::default(),
        })
    }

    /// Where the recordings are.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Records one program frame (called by the mixer thread; never blocks).
    pub fn frame(&self, space: SpaceId, frame: Frame) {
        if self.tx.try_send((space, frame)).is_err() {
            self.stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The space ended: flush and cut the replay outputs, then call `done`
    /// (called by the mixer thread; never blocks).
    pub fn end(&self, space: SpaceId, done: Done) {
        let _ = self.ctl.send(Ctl::End(space, done));
    }

    /// Flushes what is open (without finalising) and stops.
    pub fn shutdown(&self) {
        let _ = self.ctl.send(Ctl::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Whether the replay of `space` is ready (blocking: call it off the
    /// async runtime when the storage is remote).
    pub fn is_complete(&self, space: SpaceId) -> bool {
        if self.complete.lock().contains(&space) {
            return true;
        }
        let stored = self
            .storage
            .exists(&key(space, "complete"))
            .unwrap_or(false);
        if stored {
            self.complete.lock().insert(space);
        }
        stored
    }

    /// Checks which of `spaces` have their replay in the storage, all at
    /// once (in parallel on S3), so that a restarted node's
    /// [`Recorder::is_complete`] for each of them asks nothing more.
    pub fn check_complete(&self, spaces: &[SpaceId]) -> std::io::Result<()> {
        let keys: Vec<String> = spaces.iter().map(|&s| key(s, "complete")).collect();
        let found = self.storage.exists_many(&keys)?;
        let mut known = self.complete.lock();
        known.extend(
            spaces
                .iter()
                .zip(found)
                .filter_map(|(&s, there)| there.then_some(s)),
        );
        Ok(())
    }

    /// Recorder counters, read at scrape time.
    pub fn collect(&self, out: &mut Scrape<'_>) {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "amphi_recording_segments_total",
            "Recording segments written and fsynced.",
            l(&s.segments),
        );
        counter(
            out,
            "amphi_recording_bytes_total",
            "Recording bytes written.",
            l(&s.bytes),
        );
        counter(
            out,
            "amphi_recording_errors_total",
            "Recording storage errors.",
            l(&s.errors),
        );
        counter(
            out,
            "amphi_recording_write_microseconds_total",
            "Time spent writing and syncing segments.",
            l(&s.write_us_total),
        );
        counter(
            out,
            "amphi_recording_finalized_total",
            "Recordings cut into replay outputs.",
            l(&s.finalized),
        );
        counter(
            out,
            "amphi_recording_dropped_frames_total",
            "Frames the recorder could not take (it was behind).",
            l(&s.dropped_frames),
        );
    }
}

struct Worker {
    storage: Arc<dyn Storage>,
    rx: Receiver<(SpaceId, Frame)>,
    ctl: Receiver<Ctl>,
    stats: Arc<RecordStats>,
    open: HashMap<SpaceId, Vec<Frame>>,
    /// Replays whose cut failed (the store was down): tried again later.
    retries: Vec<Retry>,
}

/// A replay cut to try again at `at`.
struct Retry {
    space: SpaceId,
    done: Done,
    at: Instant,
    attempt: u32,
    /// The space's last segment, if it could not be stored either.
    last: Vec<Frame>,
}

/// The wait before trying a failed replay cut again: 1 s, 2 s, 4 s, …, at
/// most a minute.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

impl Worker {
    fn run(mut self) {
        loop {
            let next_retry = self.retries.iter().map(|r| r.at).min();
            // Due retries first: frames of other spaces arrive every 20 ms
            // and must not starve them.
            if next_retry.is_some_and(|at| at <= Instant::now()) {
                self.retry_due();
                continue;
            }
            let wait = next_retry.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            crossbeam_channel::select! {
                recv(self.rx) -> m => match m {
                    Ok((space, frame)) => self.frame(space, frame),
                    Err(_) => return,
                },
                recv(self.ctl) -> m => {
                    // The frames sent before this message (by the same
                    // mixer thread) are all queued by now: take them first
                    // (only those: a recorder that is behind still ends).
                    for _ in 0..self.rx.len() {
                        match self.rx.try_recv() {
                            Ok((space, frame)) => self.frame(space, frame),
                            Err(_) => break,
                        }
                    }
                    match m {
                        Ok(Ctl::End(space, done)) => {
                            let last = self.open.remove(&space).unwrap_or_default();
                            self.cut(space, done, 0, last);
                        }
                        // Cuts still failing are left: a restarted node cuts
                        // every ended space's replay that is not complete.
                        Ok(Ctl::Shutdown) | Err(_) => {
                            let spaces: Vec<SpaceId> = self.open.keys().copied().collect();
                            for s in spaces {
                                self.flush(s);
                            }
                            return;
                        }
                    }
                },
                default(wait) => {}
            }
        }
    }

    fn frame(&mut self, space: SpaceId, frame: Frame) {
        let buf = self.open.entry(space).or_default();
        let gap = buf
            .last()
            .is_some_and(|l| l.seq.checked_add(1) != Some(frame.seq));
        if gap {
            self.flush(space);
        }
        let buf = self.open.entry(space).or_default();
        buf.push(frame);
        if buf.len() as u64 >= SEGMENT_FRAMES {
            self.flush(space);
        }
    }

    /// Cuts the replay of `space`; if the store fails, tries again later
    /// (a store that is down when a space ends delays its replay, and does
    /// not lose it until the node restarts).
    /// The segment still open at the end (`last`) is kept until it is
    /// stored too, so the replay loses nothing.
    fn cut(&mut self, space: SpaceId, done: Done, attempt: u32, mut last: Vec<Frame>) {
        let stored = match last.is_empty() {
            true => Ok(()),
            false => self.put_segment(space, &last),
        };
        if stored.is_ok() {
            last.clear();
        }
        match stored
            .map_err(anyhow::Error::from)
            .and_then(|()| finalize(self.storage.as_ref(), space))
        {
            Ok(()) => {
                self.stats.finalized.fetch_add(1, Ordering::Relaxed);
                done();
            }
            Err(e) => {
                let wait = retry_delay(attempt);
                tracing::error!(space = %space, error = %e, attempt, retry_in = ?wait, "could not cut the replay");
                if last.is_empty() {
                    // (A failed last segment was counted by put_segment.)
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                self.retries.push(Retry {
                    space,
                    done,
                    at: Instant::now() + wait,
                    attempt: attempt + 1,
                    last,
                });
            }
        }
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        let (due, later) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition::<Vec<_>, _>(|r| r.at <= now);
        self.retries = later;
        for r in due {
            self.cut(r.space, r.done, r.attempt, r.last);
        }
    }

    fn flush(&mut self, space: SpaceId) {
        let Some(buf) = self.open.get_mut(&space) else {
            return;
        };
        if buf.is_empty() {
            return;
        }
        let frames = std::mem::take(buf);
        // A full or failing store never stops the live space: the segment
        // is lost (a gap in the recording), counted and logged.
        if let Err(e) = self.put_segment(space, &frames) {
            tracing::error!(space = %space, error = %e, "recording segment lost");
        }
    }

    /// Stores one frame segment, counted in the metrics.
    fn put_segment(&self, space: SpaceId, frames: &[Frame]) -> std::io::Result<()> {
        let name = format!("frames/{:020}.amfs", frames[0].seq);
        let data = frames::encode(frames);
        let started = Instant::now();
        let res = self.storage.put(&key(space, &name), data.clone());
        self.stats
            .write_us_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match &res {
            Ok(()) => {
                self.stats.segments.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        res
    }
}

/// Every recorded frame of a space, in order.
pub fn recorded_frames(storage: &dyn Storage, space: SpaceId) -> std::io::Result<Vec<Frame>> {
    let mut out: Vec<Frame> = Vec::new();
    // All segments fetched at once: on object storage, one round trip per
    // 2 s segment in turn would make an hour's replay wait a minute.
    let keys = segment_keys(storage, space)?;
    let segments = storage.get_many(&keys)?;
    for (f, data) in keys.iter().zip(segments) {
        let Some(data) = data else {
            continue;
        };
        match frames::decode(&data) {
            Ok(frames) => {
                for fr in frames {
                    match out.last() {
                        Some(l) if fr.seq <= l.seq => {}
                        Some(l) if fr.seq - l.seq > MAX_GAP_FRAMES => tracing::warn!(
                            segment = %f,
                            from = l.seq,
                            to = fr.seq,
                            "skipping a frame past an impossible gap (damaged segment)"
                        ),
                        _ => out.push(fr),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(segment = %f, error = %e, "skipping a damaged recording segment")
            }
        }
    }
    Ok(out)
}

/// A run of program frames cut into the files a player reads: one Ogg
/// Opus file and an HLS VOD (fMP4 segments and their playlist).
pub struct Cut {
    pub ogg: Bytes,
    pub init: Bytes,
    /// `(msn, bytes)` of each segment, named `seg-<msn>.m4s` by the playlist.
    pub segments: Vec<(u64, Bytes)>,
    pub playlist: String,
}

/// Cuts `frames` (in order) into a [`Cut`]. The Ogg file is one
/// continuous stream: gaps (a restart) are filled with silence so its
/// duration is the wall-clock duration; in the HLS VOD a gap is a
/// discontinuity. The playlist names its segments `<uri_prefix>seg-N.m4s`.
pub fn cut_frames(frames: &[Frame], serial: u32, uri_prefix: &str) -> anyhow::Result<Cut> {
    let silence = Encoder::new(32_000)?.encode(&[0.0; 960])?;
    let origin = frames.first().map_or(0, |f| f.seq);
    // A music space's stereo packets make a stereo file (the TOC byte's
    // stereo flag); mono packets in it play in both channels.
    let channels = if frames
        .iter()
        .any(|f| f.opus.first().is_some_and(|t| t & 0x4 != 0))
    {
        2
    } else {
        1
    };
    let mut pager = OggPager::with_origin(serial, 50, origin).with_channels(channels);
    let mut ogg = pager.headers().to_vec();
    let mut next = origin;
    for f in frames {
        while next < f.seq {
            let filler = Frame {
                seq: next,
                opus: silence.clone(),
                ..f.clone()
            };
            if let Some(p) = pager.push(&filler) {
                ogg.extend_from_slice(&p);
            }
            next += 1;
        }
        if let Some(p) = pager.push(f) {
            ogg.extend_from_slice(&p);
        }
        next = f.seq.saturating_add(1);
    }
    ogg.extend_from_slice(&pager.finish());

    let mut seg = Segmenter::new(usize::MAX).with_uri_prefix(uri_prefix);
    for f in frames {
        seg.push(f);
    }
    seg.finish();
    Ok(Cut {
        ogg: Bytes::from(ogg),
        init: fmp4::init_segment_for(&fmp4::InitConfig {
            channels,
            ..Default::default()
        }),
        segments: seg.segments().map(|s| (s.msn, s.bytes.clone())).collect(),
        playlist: seg.vod_playlist(),
    })
}

/// Cuts `recording.opus` and the HLS VOD from the frame segments.
pub fn finalize(storage: &dyn Storage, space: SpaceId) -> anyhow::Result<()> {
    let frames = recorded_frames(storage, space)?;
    let serial = (space.0 as u32) ^ 0x5eed;
    let cut = cut_frames(&frames, serial, "replay/")?;
    let mut objects = vec![
        (key(space, "recording.opus"), cut.ogg),
        (key(space, "hls/init.mp4"), cut.init),
    ];
    objects.extend(
        cut.segments
            .into_iter()
            .map(|(msn, bytes)| (key(space, &format!("hls/seg-{msn}.m4s")), bytes)),
    );
    objects.push((key(space, "hls/replay.m3u8"), Bytes::from(cut.playlist)));
    storage.put_many(objects)?;
    // Last, once everything else is stored: the replay is published.
    storage.put(&key(space, "complete"), Bytes::new())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_media::ogg::PacketReader;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_us: seq.saturating_mul(20_000),
            opus: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    fn write_segment(storage: &dyn Storage, space: SpaceId, seqs: &[u64]) {
        let frames: Vec<Frame> = seqs.iter().copied().map(frame).collect();
        let name = format!("frames/{:020}.amfs", seqs[0]);
        storage
            .put(&key(space, &name), frames::encode(&frames))
            .unwrap();
    }

    /// A damaged segment whose sequence numbers jump to the end of u64
    /// (found by fuzzing the Ogg pager) neither panics nor pads the replay
    /// with years of silence: the good frames and a real outage's silence
    /// are kept, the impossible ones skipped.
    #[test]
    fn finalize_survives_damaged_sequence_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = amphi_storage::LocalDir::new(tmp.path()).unwrap();
        let space = SpaceId(7);
        write_segment(&storage, space, &(0..100).collect::<Vec<_>>());
        // A node down for 10 s: 500 frames of silence in the replay.
        write_segment(&storage, space, &(600..700).collect::<Vec<_>>());
        write_segment(&storage, space, &[700 + MAX_GAP_FRAMES + 1]);
        write_segment(&storage, space, &[u64::MAX - 1, u64::MAX]);
        finalize(&storage, space).unwrap();
        assert!(storage.exists(&key(space, "complete")).unwrap());

        let ogg = storage.get(&key(space, "recording.opus")).unwrap().unwrap();
        let mut r = PacketReader::new();
        r.push(&ogg);
        let mut packets = 0;
        let mut last_granule = 0;
        while let Some((_, granule)) = r.next_packet() {
            packets += 1;
            last_granule = last_granule.max(granule);
        }
        // OpusHead + OpusTags + 100 + 500 silence + 100.
        assert_eq!(packets, 2 + 700);
        assert_eq!(last_granule, 700 * 960);
    }

    /// A store whose writes wait until it is let go, or fail while it is
    /// `down`.
    struct Stuck {
        inner: amphi_storage::LocalDir,
        open: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
        down: std::sync::atomic::AtomicBool,
    }

    impl Storage for Stuck {
        fn put(&self, key: &str, data: Bytes) -> std::io::Result<()> {
            if self.down.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("the store is down"));
            }
            let (m, c) = &*self.open;
            let mut open = m.lock();
            while !*open {
                c.wait(&mut open);
            }
            self.inner.put(key, data)
        }
        fn get(&self, key: &str) -> std::io::Result<Option<Bytes>> {
            self.inner.get(key)
        }
        fn get_range(
            &self,
            key: &str,
            range: std::ops::Range<u64>,
        ) -> std::io::Result<Option<Bytes>> {
            self.inner.get_range(key, range)
        }
        fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
            self.inner.size(key)
        }
        fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
            self.inner.list(prefix)
        }
        fn exists(&self, key: &str) -> std::io::Result<bool> {
            self.inner.exists(key)
        }
        fn describe(&self) -> String {
            "stuck".into()
        }
    }

    /// A store that hangs never blocks the mixer: frames beyond the
    /// recorder's queue are dropped and counted, and ending a space returns
    /// at once; the replay is cut once the store moves again.
    #[test]
    fn a_hung_store_never_blocks_the_mixer() {
        let tmp = tempfile::tempdir().unwrap();
        let open = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let storage = Arc::new(Stuck {
            inner: amphi_storage::LocalDir::new(tmp.path()).unwrap(),
            open: open.clone(),
            down: Default::default(),
        });
        let rec = Recorder::start(storage.clone()).unwrap();
        let space = SpaceId(5);
        let t = Instant::now();
        for seq in 0..5000 {
            rec.frame(space, frame(seq));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        rec.end(space, Box::new(move || tx.send(()).unwrap()));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(rec.stats.dropped_frames.load(Ordering::Relaxed) > 0);

        *open.0.lock() = true;
        open.1.notify_all();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the replay once the store moves");
        assert!(storage.exists(&key(space, "complete")).unwrap());
        let kept = recorded_frames(storage.as_ref(), space).unwrap().len() as u64;
        let dropped = rec.stats.dropped_frames.load(Ordering::Relaxed);
        assert_eq!(kept + dropped, 5000);
        rec.shutdown();
    }

    /// A store that is down when a space ends: the cut, and the segment
    /// still open at the end, are tried again until it is back; the replay
    /// then has every frame.
    #[test]
    fn a_store_down_at_the_end_loses_not_even_the_last_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Arc::new(Stuck {
            inner: amphi_storage::LocalDir::new(tmp.path()).unwrap(),
            open: Arc::new((parking_lot::Mutex::new(true), parking_lot::Condvar::new())),
            down: Default::default(),
        });
        let rec = Recorder::start(storage.clone()).unwrap();
        let space = SpaceId(6);
        for seq in 0..150 {
            rec.frame(space, frame(seq));
        }
        // The first segment (100 frames) is stored; then the store goes.
        let t = Instant::now();
        while rec.stats.segments.load(Ordering::Relaxed) < 1 && t.elapsed().as_secs() < 5 {
            std::thread::sleep(Duration::from_millis(5));
        }
        storage.down.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        rec.end(space, Box::new(move || tx.send(()).unwrap()));
        assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err());
        assert!(!storage.exists(&key(space, "complete")).unwrap());
        assert!(rec.stats.errors.load(Ordering::Relaxed) >= 1);

        storage.down.store(false, Ordering::SeqCst);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the replay once the store is back");
        let frames = recorded_frames(storage.as_ref(), space).unwrap();
        assert_eq!(frames.len(), 150);
        assert_eq!(rec.stats.finalized.load(Ordering::Relaxed), 1);
        rec.shutdown();
    }

    #[test]
    fn failed_cuts_are_retried_sooner_then_every_minute() {
        let waits: Vec<u64> = (0..9).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    /// Figures, not a check (`cargo test -p amphi --bin amphi -- --ignored
    /// --nocapture finalize_an_hour`): cutting the replay of an hour-long
    /// space, from the local directory and from a real S3 server on
    /// loopback (moto, if installed).
    #[test]
    #[ignore]
    fn finalize_an_hour_timed() {
        let space = SpaceId(9);
        let fill = |storage: &dyn Storage| {
            let segs: Vec<(String, Bytes)> = (0..1800u64)
                .map(|i| {
                    let frames: Vec<Frame> = (i * 100..(i + 1) * 100)
                        .map(|seq| Frame {
                            opus: Bytes::from(vec![0xf8; 80]),
                            ..frame(seq)
                        })
                        .collect();
                    (
                        key(space, &format!("frames/{:020}.amfs", i * 100)),
                        frames::encode(&frames),
                    )
                })
                .collect();
            storage.put_many(segs).unwrap();
        };
        let time = |name: &str, storage: &dyn Storage| {
            fill(storage);
            let t = Instant::now();
            let n = recorded_frames(storage, space).unwrap().len();
            println!("{name}: {n} frames read back in {:?}", t.elapsed());
            let t = Instant::now();
            finalize(storage, space).unwrap();
            println!("{name}: an hour's replay cut in {:?}", t.elapsed());
            assert!(storage.exists(&key(space, "complete")).unwrap());
        };
        let tmp = tempfile::tempdir().unwrap();
        time("local", &amphi_storage::LocalDir::new(tmp.path()).unwrap());

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Ok(mut moto) = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return;
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::blocking::Client::new();
        let up = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            client
                .put(format!("{url}/timed"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        if up {
            let s3 = amphi_storage::ObjectStorage::from_url_with(
                "s3://timed/rec",
                amphi_storage::AmazonS3Builder::new()
                    .with_endpoint(&url)
                    .with_allow_http(true)
                    .with_access_key_id("test")
                    .with_secret_access_key("test")
                    .with_region("us-east-1"),
            )
            .unwrap();
            time("s3 (moto on loopback)", &s3);
        }
        let _ = moto.kill();
        let _ = moto.wait();
    }
}
