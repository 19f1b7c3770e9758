//! Frames → parts → segments. Each part is one `moof`+`mdat` fragment built
//! once; a segment is the concatenation of its parts, also built once, and
//! every listener, the playlist and the recorder share those same `Bytes`.
//!
//! Boundaries follow frame sequence numbers, not frame counts: a part never
//! spans more than `part_frames` sequence numbers and a segment never more
//! than `part_frames × segment_parts`, so lost frames cannot stretch a part
//! past the targets the playlist announces, and decode times (`seq × 960`)
//! stay exact whatever is missing.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::time::Duration;

use amphi_core::Frame;
use amphi_core::frame::FRAME_US;
use bytes::{Bytes, BytesMut};

use crate::fmp4::{FRAME_DURATION, fragment};
use crate::{PART_FRAMES, SEGMENT_PARTS};

/// How frames are cut and how much is kept for serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterConfig {
    /// Frames per part (20 = 400 ms, the LL-HLS part target).
    pub part_frames: u32,
    /// Parts per segment (4 → 2 s segments).
    pub segment_parts: u32,
    /// Complete segments kept for serving, at least 3 (RFC 8216bis wants a
    /// live playlist of three target durations).
    pub window_segments: usize,
    /// Keep every segment (DVR, replay) instead of a window.
    pub keep_all: bool,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        SegmenterConfig {
            part_frames: PART_FRAMES as u32,
            segment_parts: SEGMENT_PARTS as u32,
            window_segments: 6,
            keep_all: false,
        }
    }
}

/// The default cut with a window of `n` segments: lets a caller that only
/// cares about memory write `Segmenter::new(n)`.
impl From<usize> for SegmenterConfig {
    fn from(window_segments: usize) -> Self {
        SegmenterConfig {
            window_segments,
            ..SegmenterConfig::default()
        }
    }
}

impl SegmenterConfig {
    /// Frames (sequence numbers) a segment may span.
    pub fn segment_frames(&self) -> u64 {
        u64::from(self.part_frames) * u64::from(self.segment_parts)
    }
}

/// Parts past the one `EXT-X-PRELOAD-HINT` names that a request may still
/// be held for ([`Segmenter::lookup_part`]): the hinted part and the one
/// right after it. Anything further ahead is not worth holding.
pub const PRELOAD_PARTS_AHEAD: u64 = 1;

/// How far the media timeline may drift from the frames' capture stamps
/// before the program date is re-anchored on a frame's own stamp. Stamps
/// wobble by the jitter buffer's depth (tens of ms) from frame to frame, so
/// dating each segment by its first frame's stamp alone made consecutive
/// dates differ by ±20 ms from the `EXTINF` between them; a date carried
/// along the timeline does not. Only a stalled mixer (it skips ticks after
/// 200 ms behind) moves the two apart for good; past half a second of that
/// the date jumps back to the stamps.
pub const PDT_REANCHOR_US: u64 = 500_000;

/// What a request for `part-{msn}-{part}.m4s` should get
/// ([`Segmenter::lookup_part`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartLookup {
    /// Published: serve these bytes.
    Found(Bytes),
    /// Not published yet, but it is the part the preload hint names (or the
    /// one after it): hold the request until the segmenter moves, then look
    /// again.
    Pending,
    /// Evicted, passed over (a restart closed its segment early), never
    /// going to exist, or too far ahead of the live edge: answer 404 now.
    NotFound,
}

/// What a pushed frame completed, with the bytes to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HlsEvent {
    /// Part `part` of segment `msn` exists (`part-{msn}-{part}.m4s`).
    PartReady { msn: u64, part: u32, bytes: Bytes },
    /// Segment `msn` is complete (`seg-{msn}.m4s`); its bytes are its parts.
    SegmentReady {
        msn: u64,
        bytes: Bytes,
        duration: Duration,
    },
}

/// One published part.
#[derive(Debug, Clone)]
pub struct Part {
    /// Sequence number of its first frame.
    pub first_seq: u64,
    /// Sequence numbers it covers (frames it holds plus any missing inside).
    pub span: u64,
    /// The `moof`+`mdat` fragment.
    pub bytes: Bytes,
}

impl Part {
    /// Media duration of the part.
    pub fn duration(&self) -> Duration {
        span_duration(self.span)
    }
}

/// A complete segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Media sequence number.
    pub msn: u64,
    /// Sequence number of its first frame.
    pub first_seq: u64,
    /// Frames it holds.
    pub frames: u64,
    /// Sequence numbers it covers, first to last frame inclusive.
    pub span: u64,
    /// Wall time of its first sample (`EXT-X-PROGRAM-DATE-TIME`): the
    /// capture time of the first frame after the last restart, advanced
    /// along the media timeline (20 ms per sequence number), so consecutive
    /// segments' dates differ by exactly the media between them (see
    /// [`PDT_REANCHOR_US`]).
    pub captured_at_us: u64,
    /// A restart precedes this segment (`EXT-X-DISCONTINUITY`).
    pub discontinuity: bool,
    pub parts: Vec<Part>,
    /// The concatenation of its parts.
    pub bytes: Bytes,
}

impl Segment {
    /// Media duration of the segment (`EXTINF`).
    pub fn duration(&self) -> Duration {
        span_duration(self.span)
    }
}

pub(crate) fn span_duration(span: u64) -> Duration {
    Duration::from_micros(span.saturating_mul(FRAME_US))
}

/// The segment being filled.
#[derive(Debug)]
pub(crate) struct Open {
    pub msn: u64,
    pub first_seq: u64,
    pub captured_at_us: u64,
    pub discontinuity: bool,
    pub frames: u64,
    pub parts: Vec<Part>,
    /// Frames of the part being filled.
    pub pending: Vec<Frame>,
}

/// Cuts the program into parts and segments and keeps the recent ones for
/// serving. Sans-IO: frames in, events out; playlists are rendered from it
/// (see [`crate::playlist`]).
#[derive(Debug)]
pub struct Segmenter {
    pub(crate) cfg: SegmenterConfig,
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) open: Option<Open>,
    pub(crate) next_msn: u64,
    last_seq: Option<u64>,
    fragment_seq: u32,
    gap_pending: bool,
    /// `(seq, µs)`: the program date of sequence number `seq`, from which
    /// every segment's date is counted along the timeline.
    date_anchor: Option<(u64, u64)>,
    /// Discontinuities that left the window: `EXT-X-DISCONTINUITY-SEQUENCE`.
    pub(crate) discontinuity_sequence: u64,
    pub(crate) ended: bool,
    pub(crate) prefix: String,
    /// The live playlist (full, delta) rendered once per change: every
    /// blocked request wakes on the same part and gets the same `Bytes`.
    pub(crate) live_cache: [OnceCell<bytes::Bytes>; 2],
}

impl Segmenter {
    /// A segmenter for `cfg` (or a window size, for the default cut).
    pub fn new(cfg: impl Into<SegmenterConfig>) -> Self {
        let mut cfg = cfg.into();
        cfg.part_frames = cfg.part_frames.max(1);
        cfg.segment_parts = cfg.segment_parts.max(1);
        cfg.window_segments = cfg.window_segments.max(3);
        Segmenter {
            cfg,
            segments: VecDeque::new(),
            open: None,
            next_msn: 0,
            last_seq: None,
            fragment_seq: 1,
            gap_pending: false,
            date_anchor: None,
            discontinuity_sequence: 0,
            ended: false,
            prefix: String::new(),
            live_cache: Default::default(),
        }
    }

    /// Prefixes every media URI in the playlists (e.g. `replay/`).
    pub fn with_uri_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self.live_cache = Default::default();
        self
    }

    /// The configuration in force (after clamping).
    pub fn config(&self) -> &SegmenterConfig {
        &self.cfg
    }

    /// The program restarted (a recording resumed, an origin came back): the
    /// segment in progress closes at the next frame and the following one
    /// carries `EXT-X-DISCONTINUITY`. A jump of a whole part or more in the
    /// sequence numbers is treated the same way without being told.
    pub fn mark_gap(&mut self) {
        if self.last_seq.is_some() {
            self.gap_pending = true;
        }
    }

    /// Adds the next program frame. Frames whose sequence number is not
    /// above the last one are dropped: decode times must only grow.
    pub fn push(&mut self, frame: &Frame) -> Vec<HlsEvent> {
        let events = self.cut(frame);
        if !events.is_empty() {
            self.live_cache = Default::default();
        }
        events
    }

    fn cut(&mut self, frame: &Frame) -> Vec<HlsEvent> {
        let mut events = Vec::new();
        if self.ended {
            return events;
        }
        if let Some(last) = self.last_seq {
            if frame.seq <= last {
                return events;
            }
            if frame.seq - last > u64::from(self.cfg.part_frames) {
                self.mark_gap();
            }
        }
        self.last_seq = Some(frame.seq);
        if std::mem::take(&mut self.gap_pending) {
            self.close_segment(&mut events);
            self.open_segment(frame, true);
        }
        // Close what the new frame falls beyond (only after missing frames).
        if let Some(open) = &self.open {
            if frame.seq >= open.first_seq.saturating_add(self.cfg.segment_frames()) {
                self.close_segment(&mut events);
            } else if open
                .pending
                .first()
                .is_some_and(|p| frame.seq >= p.seq.saturating_add(u64::from(self.cfg.part_frames)))
            {
                self.close_part(&mut events);
                if self.open_parts() >= self.cfg.segment_parts as usize {
                    self.close_segment(&mut events);
                }
            }
        }
        if self.open.is_none() {
            self.open_segment(frame, false);
        }
        let Some(open) = self.open.as_mut() else {
            return events;
        };
        open.pending.push(frame.clone());
        open.frames += 1;
        let part_first = open.pending.first().map_or(frame.seq, |f| f.seq);
        let seg_end = open.first_seq.saturating_add(self.cfg.segment_frames());
        // Close as soon as the last frame of a part arrives: the live edge
        // should not wait for the frame after it.
        let next = frame.seq.saturating_add(1);
        if next >= seg_end {
            self.close_segment(&mut events);
        } else if next >= part_first.saturating_add(u64::from(self.cfg.part_frames)) {
            self.close_part(&mut events);
            if self.open_parts() >= self.cfg.segment_parts as usize {
                self.close_segment(&mut events);
            }
        }
        events
    }

    fn open_parts(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.parts.len())
    }

    fn open_segment(&mut self, frame: &Frame, discontinuity: bool) {
        let msn = self.next_msn;
        self.next_msn += 1;
        let captured_at_us = self.program_date(frame, discontinuity);
        self.open = Some(Open {
            msn,
            first_seq: frame.seq,
            captured_at_us,
            discontinuity,
            frames: 0,
            parts: Vec::with_capacity(self.cfg.segment_parts as usize),
            pending: Vec::with_capacity(self.cfg.part_frames as usize),
        });
    }

    /// The program date of `frame`, the first of a segment: counted along the
    /// media timeline from the anchor, which is set at the first frame, at
    /// every restart, and when the count has drifted more than
    /// [`PDT_REANCHOR_US`] from the frame's own capture stamp.
    fn program_date(&mut self, frame: &Frame, restart: bool) -> u64 {
        let along = self.date_anchor.filter(|_| !restart).and_then(|(seq, us)| {
            let d = frame.seq.checked_sub(seq)?.checked_mul(FRAME_US)?;
            us.checked_add(d)
        });
        match along {
            Some(us) if us.abs_diff(frame.captured_at_us) <= PDT_REANCHOR_US => us,
            _ => {
                self.date_anchor = Some((frame.seq, frame.captured_at_us));
                frame.captured_at_us
            }
        }
    }

    /// Cuts the frames pending in the open segment into a part.
    fn close_part(&mut self, events: &mut Vec<HlsEvent>) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let (Some(first), Some(last)) = (open.pending.first(), open.pending.last()) else {
            return;
        };
        let (first_seq, span) = (first.seq, (last.seq - first.seq).saturating_add(1));
        let bytes = fragment(
            self.fragment_seq,
            first_seq.saturating_mul(u64::from(FRAME_DURATION)),
            &open.pending,
        );
        self.fragment_seq = self.fragment_seq.wrapping_add(1).max(1);
        open.pending.clear();
        events.push(HlsEvent::PartReady {
            msn: open.msn,
            part: u32::try_from(open.parts.len()).unwrap_or(u32::MAX),
            bytes: bytes.clone(),
        });
        open.parts.push(Part {
            first_seq,
            span,
            bytes,
        });
    }

    /// Closes the open segment (cutting a last, short part if needed).
    fn close_segment(&mut self, events: &mut Vec<HlsEvent>) {
        self.close_part(events);
        let Some(open) = self.open.take() else {
            return;
        };
        let Some(last) = open.parts.last() else {
            // Nothing was ever cut: the msn was never published, reuse it.
            self.next_msn = open.msn;
            return;
        };
        // (last.first_seq ≥ open.first_seq; no overflow at the end of u64.)
        let span = (last.first_seq - open.first_seq).saturating_add(last.span);
        let mut bytes = BytesMut::with_capacity(open.parts.iter().map(|p| p.bytes.len()).sum());
        for p in &open.parts {
            bytes.extend_from_slice(&p.bytes);
        }
        let seg = Segment {
            msn: open.msn,
            first_seq: open.first_seq,
            frames: open.frames,
            span,
            captured_at_us: open.captured_at_us,
            discontinuity: open.discontinuity,
            parts: open.parts,
            bytes: bytes.freeze(),
        };
        events.push(HlsEvent::SegmentReady {
            msn: seg.msn,
            bytes: seg.bytes.clone(),
            duration: seg.duration(),
        });
        self.segments.push_back(seg);
        if !self.cfg.keep_all {
            while self.segments.len() > self.cfg.window_segments {
                if let Some(old) = self.segments.pop_front()
                    && old.discontinuity
                {
                    self.discontinuity_sequence += 1;
                }
            }
        }
    }

    /// Ends the stream: the last segment closes and playlists get
    /// `EXT-X-ENDLIST`. Later frames are ignored.
    pub fn finish(&mut self) -> Vec<HlsEvent> {
        let mut events = Vec::new();
        self.close_segment(&mut events);
        self.ended = true;
        self.live_cache = Default::default();
        events
    }

    /// Whether the stream has been finished.
    pub fn is_finished(&self) -> bool {
        self.ended
    }

    /// Whether any segment or part exists yet.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.open.as_ref().is_none_or(|c| c.parts.is_empty())
    }

    /// Complete segments kept, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    fn kept(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
    }

    /// A complete segment's bytes, while it is in the window.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        self.kept(msn).map(|s| s.bytes.clone())
    }

    /// A part's bytes, of a kept segment or the one in progress.
    pub fn part(&self, msn: u64, part: u32) -> Option<Bytes> {
        let idx = usize::try_from(part).ok()?;
        if let Some(c) = &self.open
            && c.msn == msn
        {
            return c.parts.get(idx).map(|p| p.bytes.clone());
        }
        self.kept(msn)?.parts.get(idx).map(|p| p.bytes.clone())
    }

    /// Whether a request for part `part` of segment `msn` can be answered
    /// now, is for the part the playlist's `EXT-X-PRELOAD-HINT` names (or
    /// [`PRELOAD_PARTS_AHEAD`] after it) and should be held until it is
    /// published, or is a 404. Once the stream is finished nothing is
    /// pending any more.
    pub fn lookup_part(&self, msn: u64, part: u32) -> PartLookup {
        if let Some(bytes) = self.part(msn, part) {
            return PartLookup::Found(bytes);
        }
        if self.ended || part >= self.cfg.segment_parts {
            return PartLookup::NotFound;
        }
        // Count parts as if the segment in progress will get all of its
        // parts. If a restart closes it early, the next segment's parts
        // are nearer than counted: at worst a 404 instead of a hold.
        let per = u128::from(self.cfg.segment_parts);
        let (edge_msn, edge_part) = self.edge();
        let asked = u128::from(msn) * per + u128::from(part);
        let hint = u128::from(edge_msn) * per + u128::from(edge_part);
        match asked.checked_sub(hint) {
            Some(ahead) if ahead <= u128::from(PRELOAD_PARTS_AHEAD) => PartLookup::Pending,
            _ => PartLookup::NotFound,
        }
    }

    /// The live edge: the msn of the segment in progress (or next to start)
    /// and how many of its parts are published.
    pub fn edge(&self) -> (u64, u32) {
        match &self.open {
            Some(c) => (c.msn, u32::try_from(c.parts.len()).unwrap_or(u32::MAX)),
            None => (self.next_msn, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_us: 1_764_000_000_000_000u64.wrapping_add(seq.wrapping_mul(20_000)),
            opus: Bytes::from(vec![seq as u8; 3 + (seq % 5) as usize]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    fn tfdt(fragment: &[u8]) -> u64 {
        let at = fragment.windows(4).position(|w| w == b"tfdt").unwrap();
        u64::from_be_bytes(fragment[at + 8..at + 16].try_into().unwrap())
    }

    #[test]
    fn gap_free_frames_make_400ms_parts_and_2s_segments() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        let mut parts = Vec::new();
        let mut segs = Vec::new();
        for q in 0..230 {
            for e in s.push(&frame(q)) {
                match e {
                    HlsEvent::PartReady { msn, part, bytes } => parts.push((msn, part, bytes)),
                    HlsEvent::SegmentReady {
                        msn,
                        bytes,
                        duration,
                    } => segs.push((msn, bytes, duration)),
                }
            }
        }
        // Part 0 of segment 0 is ready the moment frame 19 arrives.
        assert_eq!(parts.len(), 11);
        assert_eq!(parts[0].0, 0);
        assert_eq!((parts[5].0, parts[5].1), (1, 0));
        assert_eq!((parts[10].0, parts[10].1), (2, 0));
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].2, Duration::from_secs(2));
        let concat: Vec<u8> = parts[5..10].iter().flat_map(|p| p.2.to_vec()).collect();
        assert_eq!(segs[1].1.to_vec(), concat);
        assert_eq!(tfdt(&parts[6].2), 120 * 960);
        assert_eq!(s.part(2, 0), Some(parts[10].2.clone()));
        assert_eq!(s.part(2, 1), None);
        assert_eq!(s.segment(1), Some(segs[1].1.clone()));
        assert_eq!(s.edge(), (2, 1));
    }

    /// Fuzz-found (recording_frames): a part ending at the last sequence
    /// number of u64 overflowed the segment's span.
    #[test]
    fn the_end_of_the_sequence_space_does_not_overflow() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        for seq in [0, u64::MAX - 30, u64::MAX - 1, u64::MAX] {
            s.push(&frame(seq));
        }
        s.finish();
        assert!(s.segments().all(|g| g.span >= 1));
    }

    #[test]
    fn missing_frames_keep_decode_times_and_bounded_spans() {
        let mut s = Segmenter::new(100);
        // Frames 20..=29 are lost: part 0 closes when frame 30 shows up.
        for q in (0..20).chain(30..60) {
            s.push(&frame(q));
        }
        let p1 = s.part(0, 1).unwrap();
        assert_eq!(tfdt(&p1), 30 * 960);
        let open = s.open.as_ref().unwrap();
        assert_eq!(open.parts[0].span, 20);
        assert!(!open.discontinuity);
    }

    #[test]
    fn a_restart_closes_the_segment_and_marks_a_discontinuity() {
        let mut s = Segmenter::new(3);
        for q in 0..50 {
            s.push(&frame(q));
        }
        s.mark_gap();
        for q in 50..450 {
            s.push(&frame(q));
        }
        // A jump of minutes needs no mark.
        for q in 100_000..100_100 {
            s.push(&frame(q));
        }
        let segs: Vec<&Segment> = s.segments().collect();
        assert_eq!(segs.len(), 3);
        assert!(segs[2].discontinuity);
        assert_eq!(segs[2].first_seq, 100_000);
        // Two discontinuities were emitted; the first left the window.
        assert_eq!(s.discontinuity_sequence, 1);
    }

    #[test]
    fn windows_evict_and_keep_all_keeps() {
        let mut live = Segmenter::new(SegmenterConfig {
            window_segments: 4,
            ..Default::default()
        });
        let mut all = Segmenter::new(SegmenterConfig {
            window_segments: 4,
            keep_all: true,
            ..Default::default()
        });
        for q in 0..1000 {
            live.push(&frame(q));
            all.push(&frame(q));
        }
        assert_eq!(live.segments().count(), 4);
        assert!(live.segment(5).is_none() && live.segment(6).is_some());
        assert_eq!(all.segments().count(), 10);
        assert!(all.part(0, 3).is_some());
    }

    #[test]
    fn finish_flushes_a_short_segment_and_stops() {
        let mut s = Segmenter::new(10);
        for q in 0..130 {
            s.push(&frame(q));
        }
        let ev = s.finish();
        assert!(
            matches!(ev.last(), Some(HlsEvent::SegmentReady { msn: 1, duration, .. }) if *duration == Duration::from_millis(600))
        );
        assert!(s.push(&frame(130)).is_empty());
    }

    #[test]
    fn requests_for_the_hinted_part_and_the_next_wait_others_are_404() {
        use PartLookup::{Found, NotFound, Pending};
        let found = |l: PartLookup| matches!(l, Found(_));
        // Nothing published yet: the hint is part-0-0.
        let mut s = Segmenter::new(100);
        assert_eq!(s.lookup_part(0, 0), Pending);
        assert_eq!(s.lookup_part(0, 1), Pending);
        assert_eq!(s.lookup_part(0, 2), NotFound);
        // Segments 0 and 1, part 0 of segment 2: the hint is part-2-1.
        for q in 0..230 {
            s.push(&frame(q));
        }
        assert_eq!(s.edge(), (2, 1));
        assert!(found(s.lookup_part(2, 0)) && found(s.lookup_part(1, 4)));
        assert_eq!(s.lookup_part(2, 0), Found(s.part(2, 0).unwrap()));
        assert_eq!(s.lookup_part(2, 1), Pending);
        assert_eq!(s.lookup_part(2, 2), Pending);
        assert_eq!(s.lookup_part(2, 3), NotFound);
        assert_eq!(s.lookup_part(3, 0), NotFound);
        // No such part index, ever.
        assert_eq!(s.lookup_part(2, 5), NotFound);
        assert_eq!(s.lookup_part(1, 5), NotFound);
        assert_eq!(s.lookup_part(u64::MAX, u32::MAX), NotFound);
        assert_eq!(s.lookup_part(u64::MAX, 0), NotFound);
        // Once published, the hinted part is found.
        for q in 230..250 {
            s.push(&frame(q));
        }
        assert!(found(s.lookup_part(2, 1)));
        // Hint on the last part of a segment: the next is part 0 of the
        // following segment.
        for q in 250..380 {
            s.push(&frame(q));
        }
        assert_eq!(s.edge(), (3, 4));
        assert_eq!(s.lookup_part(3, 4), Pending);
        assert_eq!(s.lookup_part(4, 0), Pending);
        assert_eq!(s.lookup_part(4, 1), NotFound);
        // A restart closes segment 3 with four parts: part-3-4 will never
        // exist, part-4-0 is the new hint.
        s.mark_gap();
        s.push(&frame(10_000));
        assert_eq!(s.edge(), (4, 0));
        assert_eq!(s.lookup_part(3, 4), NotFound);
        assert!(found(s.lookup_part(3, 3)));
        assert_eq!(s.lookup_part(4, 0), Pending);
        // The end cuts the frame in progress into a last, short part.
        s.finish();
        assert!(found(s.lookup_part(4, 0)));
        assert_eq!(s.lookup_part(4, 1), NotFound);
        assert_eq!(s.lookup_part(5, 0), NotFound);
        // Evicted parts are gone.
        let mut s = Segmenter::new(3);
        for q in 0..1000 {
            s.push(&frame(q));
        }
        assert_eq!(s.lookup_part(0, 0), NotFound);
        assert!(found(s.lookup_part(9, 4)));
        assert_eq!(s.lookup_part(10, 0), Pending);
    }

    /// A frame whose capture stamp wobbles by `jitter_us` around the timeline
    /// (as the jitter buffer's depth changes from tick to tick).
    fn stamped(seq: u64, jitter_us: i64) -> Frame {
        let mut f = frame(seq);
        f.captured_at_us = f.captured_at_us.saturating_add_signed(jitter_us);
        f
    }

    #[test]
    fn program_dates_follow_the_timeline_not_each_frames_wobbling_stamp() {
        let mut s = Segmenter::new(SegmenterConfig {
            keep_all: true,
            ..SegmenterConfig::default()
        });
        // The case: the stamps of successive segments' first frames
        // 2.020 s apart where the segment lasts 2.000 s.
        for q in 0..1000 {
            let wobble = [0, 20_000, -15_000, 35_000][(q / 100 % 4) as usize];
            s.push(&stamped(q, wobble));
        }
        let segs: Vec<&Segment> = s.segments().collect();
        assert_eq!(segs.len(), 10);
        assert_eq!(segs[0].captured_at_us, frame(0).captured_at_us);
        for w in segs.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert_eq!(
                Duration::from_micros(b.captured_at_us - a.captured_at_us),
                a.duration(),
                "segment {}",
                b.msn
            );
        }
    }

    #[test]
    fn a_restart_or_a_stalled_mixer_reanchors_the_program_date() {
        let mut s = Segmenter::new(SegmenterConfig {
            keep_all: true,
            ..SegmenterConfig::default()
        });
        for q in 0..200 {
            s.push(&frame(q));
        }
        // Ticks lost to a stall: the timeline is 1.5 s behind the stamps.
        for q in 200..400 {
            s.push(&stamped(q, 1_500_000));
        }
        // A restart: sequence numbers jump, the stamps with them but not
        // by the same amount.
        for q in 1000..1200 {
            s.push(&stamped(q, -300_000));
        }
        s.finish();
        let dates: Vec<(u64, bool)> = s
            .segments()
            .map(|g| (g.captured_at_us, g.discontinuity))
            .collect();
        assert_eq!(dates.len(), 6);
        assert_eq!(dates[1].0, frame(100).captured_at_us);
        assert_eq!(dates[2].0, stamped(200, 1_500_000).captured_at_us);
        assert_eq!(dates[3].0, stamped(300, 1_500_000).captured_at_us);
        assert_eq!(dates[4], (stamped(1000, -300_000).captured_at_us, true));
        assert_eq!(dates[5].0, stamped(1100, -300_000).captured_at_us);
    }

    proptest! {
        /// Whatever the stamps' wobble (within the re-anchoring bound) and
        /// whatever frames are lost inside segments, a segment's program
        /// date is the previous one's plus the media between their first
        /// frames, which is its `EXTINF` when no frame is missing between
        /// them.
        #[test]
        fn program_dates_advance_by_the_media_between_segments(
            wobble in proptest::collection::vec(-200_000i64..200_000, 1..900),
            lost in proptest::collection::vec(any::<bool>(), 900),
        ) {
            let mut s = Segmenter::new(SegmenterConfig { keep_all: true, ..SegmenterConfig::default() });
            for (q, w) in wobble.iter().enumerate() {
                let q = q as u64;
                // Keep the first and last frame of every segment, and every
                // tenth: a run of losses longer than a part (20 frames) is a
                // gap, which the segmenter marks as a discontinuity by design.
                if lost[q as usize] && !q.is_multiple_of(10) && q % 100 != 99 {
                    continue;
                }
                s.push(&stamped(q, *w));
            }
            s.finish();
            let segs: Vec<&Segment> = s.segments().collect();
            for w in segs.windows(2) {
                let (a, b) = (w[0], w[1]);
                prop_assert!(!b.discontinuity);
                prop_assert_eq!(b.first_seq, a.first_seq + a.span);
                prop_assert_eq!(Duration::from_micros(b.captured_at_us - a.captured_at_us), a.duration());
            }
        }

        /// Whatever frames arrive (gaps, duplicates, restarts), numbering is
        /// monotonic, parts/segments stay within their targets, segments are
        /// their parts, and durations account for every sequence number.
        #[test]
        fn numbering_and_durations_hold(
            steps in proptest::collection::vec((0u64..4, any::<bool>(), 0u8..40), 1..600),
            part_frames in 1u32..30,
            segment_parts in 1u32..6,
        ) {
            let cfg = SegmenterConfig { part_frames, segment_parts, window_segments: 3, keep_all: true };
            let mut s = Segmenter::new(cfg);
            let mut seq = 0u64;
            let mut pushed = 0u64;
            let mut gap_free = true;
            let mut last_part: Option<(u64, u32)> = None;
            let mut last_seg: Option<u64> = None;
            let mut seg_total = Duration::ZERO;
            let check = |ev: Vec<HlsEvent>, last_part: &mut Option<(u64, u32)>, last_seg: &mut Option<u64>, seg_total: &mut Duration| -> Result<(), TestCaseError> {
                for e in ev {
                    match e {
                        HlsEvent::PartReady { msn, part, .. } => {
                            if let Some((m, p)) = *last_part {
                                prop_assert!((msn == m && part == p + 1) || (msn == m + 1 && part == 0), "part {msn}/{part} after {m}/{p}");
                            }
                            prop_assert!(part < segment_parts);
                            *last_part = Some((msn, part));
                        }
                        HlsEvent::SegmentReady { msn, duration, .. } => {
                            prop_assert_eq!(Some(msn), last_part.map(|p| p.0));
                            prop_assert_eq!(msn, last_seg.map_or(0, |m| m + 1));
                            prop_assert!(duration <= span_duration(cfg.segment_frames()));
                            *last_seg = Some(msn);
                            *seg_total += duration;
                        }
                    }
                }
                Ok(())
            };
            for (skip, restart, dup) in steps {
                if restart { s.mark_gap(); }
                if dup == 0 && pushed > 0 {
                    // A duplicate is ignored.
                    prop_assert!(s.push(&frame(seq - 1)).is_empty());
                }
                let skip = match dup {
                    1 => skip * 40,
                    2 => skip,
                    _ => 0,
                };
                gap_free &= skip == 0;
                seq += skip;
                let ev = s.push(&frame(seq));
                check(ev, &mut last_part, &mut last_seg, &mut seg_total)?;
                seq += 1;
                pushed += 1;
            }
            let ev = s.finish();
            check(ev, &mut last_part, &mut last_seg, &mut seg_total)?;
            let frames: u64 = s.segments().map(|g| g.frames).sum();
            prop_assert_eq!(frames, pushed);
            if gap_free {
                prop_assert_eq!(seg_total, span_duration(pushed));
            }
            for g in s.segments() {
                let cat: Vec<u8> = g.parts.iter().flat_map(|p| p.bytes.to_vec()).collect();
                prop_assert_eq!(&g.bytes[..], &cat[..]);
                let part_sum: u64 = g.parts.iter().map(|p| p.span).sum();
                prop_assert!(part_sum <= g.span);
                prop_assert!(g.parts.iter().all(|p| p.span <= u64::from(part_frames)));
                for p in &g.parts {
                    prop_assert_eq!(tfdt(&p.bytes), p.first_seq * 960);
                }
            }
        }
    }
}
