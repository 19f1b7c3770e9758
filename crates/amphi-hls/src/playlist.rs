//! The segmenter (frames → parts and segments) and the playlists that name
//! them: LL-HLS for live (RFC 8216bis: parts, preload hint, blocking
//! reload) and VOD for replay.

use std::collections::VecDeque;
use std::fmt::Write;

use amphi_core::Frame;
use bytes::{Bytes, BytesMut};

use crate::fmp4::fragment;
use crate::{HlsError, PART_FRAMES, SEGMENT_FRAMES};

/// A complete segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub msn: u64,
    pub first_seq: u64,
    pub frames: u64,
    pub captured_at_us: u64,
    /// A frame gap (a restart) precedes this segment.
    pub discontinuity: bool,
    pub parts: Vec<Bytes>,
    pub bytes: Bytes,
}

#[derive(Debug)]
struct Current {
    msn: u64,
    first_seq: u64,
    captured_at_us: u64,
    discontinuity: bool,
    frames: Vec<Frame>,
    parts: Vec<Bytes>,
    part_frames: usize,
}

/// What a pushed frame completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HlsEvent {
    Part { msn: u64, part: u64 },
    Segment { msn: u64 },
}

/// Whether a blocking playlist request can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Now,
    Wait,
    /// More than two segments ahead of the live edge: a 400 per the spec.
    TooFar,
}

/// Cuts frames into parts and segments and renders playlists.
#[derive(Debug)]
pub struct Segmenter {
    segments: VecDeque<Segment>,
    max_segments: usize,
    current: Option<Current>,
    next_msn: u64,
    last_seq: Option<u64>,
    fragment_seq: u32,
    ended: bool,
    prefix: String,
}

impl Segmenter {
    /// Keeps at most `max_segments` complete segments (the DVR window).
    pub fn new(max_segments: usize) -> Self {
        Segmenter {
            segments: VecDeque::new(),
            max_segments: max_segments.max(3),
            current: None,
            next_msn: 0,
            last_seq: None,
            fragment_seq: 1,
            ended: false,
            prefix: String::new(),
        }
    }

    /// Prefixes every media URI in the playlists (e.g. `replay/`).
    pub fn with_uri_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// Adds a frame.
    pub fn push(&mut self, frame: &Frame) -> Vec<HlsEvent> {
        let mut events = Vec::new();
        let gap = self.last_seq.is_some_and(|l| frame.seq != l + 1);
        self.last_seq = Some(frame.seq);
        if gap && let Some(ev) = self.close_segment() {
            events.extend(ev);
        }
        let cur = self.current.get_or_insert_with(|| {
            let msn = self.next_msn;
            self.next_msn += 1;
            Current {
                msn,
                first_seq: frame.seq,
                captured_at_us: frame.captured_at_us,
                discontinuity: gap,
                frames: Vec::with_capacity(SEGMENT_FRAMES as usize),
                parts: Vec::new(),
                part_frames: 0,
            }
        });
        cur.frames.push(frame.clone());
        if (cur.frames.len() - cur.part_frames) as u64 >= PART_FRAMES {
            let part = fragment(self.fragment_seq, &cur.frames[cur.part_frames..]);
            self.fragment_seq = self.fragment_seq.wrapping_add(1);
            cur.part_frames = cur.frames.len();
            cur.parts.push(part);
            events.push(HlsEvent::Part {
                msn: cur.msn,
                part: cur.parts.len() as u64 - 1,
            });
        }
        if cur.frames.len() as u64 >= SEGMENT_FRAMES
            && let Some(ev) = self.close_segment()
        {
            events.extend(ev);
        }
        events
    }

    /// Closes the segment in progress, cutting a last short part.
    fn close_segment(&mut self) -> Option<Vec<HlsEvent>> {
        let mut cur = self.current.take()?;
        let mut events = Vec::new();
        if cur.part_frames < cur.frames.len() {
            cur.parts
                .push(fragment(self.fragment_seq, &cur.frames[cur.part_frames..]));
            self.fragment_seq = self.fragment_seq.wrapping_add(1);
            events.push(HlsEvent::Part {
                msn: cur.msn,
                part: cur.parts.len() as u64 - 1,
            });
        }
        let mut bytes = BytesMut::with_capacity(cur.parts.iter().map(Bytes::len).sum());
        for p in &cur.parts {
            bytes.extend_from_slice(p);
        }
        events.push(HlsEvent::Segment { msn: cur.msn });
        self.segments.push_back(Segment {
            msn: cur.msn,
            first_seq: cur.first_seq,
            frames: cur.frames.len() as u64,
            captured_at_us: cur.captured_at_us,
            discontinuity: cur.discontinuity,
            parts: cur.parts,
            bytes: bytes.freeze(),
        });
        while self.segments.len() > self.max_segments {
            self.segments.pop_front();
        }
        Some(events)
    }

    /// Ends the stream: the last segment closes and playlists get ENDLIST.
    pub fn finish(&mut self) {
        self.close_segment();
        self.ended = true;
    }

    /// Whether any segment or part exists yet.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.current.as_ref().is_none_or(|c| c.parts.is_empty())
    }

    /// Complete segments, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    /// A complete segment's bytes.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        let first = self.segments.front()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
            .map(|s| s.bytes.clone())
    }

    /// A part's bytes, of a complete segment or the one in progress.
    pub fn part(&self, msn: u64, part: u64) -> Option<Bytes> {
        let idx = usize::try_from(part).ok()?;
        if let Some(c) = &self.current
            && c.msn == msn
        {
            return c.parts.get(idx).cloned();
        }
        let first = self.segments.front()?.msn;
        let seg = self
            .segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)?;
        seg.parts.get(idx).cloned()
    }

    /// The live edge: (msn, parts published) of the segment in progress.
    fn edge(&self) -> (u64, u64) {
        match &self.current {
            Some(c) => (c.msn, c.parts.len() as u64),
            None => (self.next_msn, 0),
        }
    }

    /// Whether a `_HLS_msn`/`_HLS_part` request can be served now.
    pub fn ready(&self, msn: u64, part: Option<u64>) -> Ready {
        let (edge_msn, edge_parts) = self.edge();
        if msn > edge_msn + 2 {
            return Ready::TooFar;
        }
        let ok = match part {
            None => msn < edge_msn || self.ended,
            Some(p) => msn < edge_msn || (msn == edge_msn && p < edge_parts) || self.ended,
        };
        if ok { Ready::Now } else { Ready::Wait }
    }

    /// The LL-HLS media playlist.
    pub fn live_playlist(&self) -> String {
        let mut o = header(self.segments.front().map_or(self.edge().0, |s| s.msn));
        let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET=0.5");
        let _ = writeln!(
            o,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5"
        );
        let _ = writeln!(o, "#EXT-X-MAP:URI=\"init.mp4\"");
        let n = self.segments.len();
        for (i, s) in self.segments.iter().enumerate() {
            segment_lines(&mut o, s, i + 3 >= n, &self.prefix);
        }
        if let Some(c) = &self.current {
            if c.discontinuity {
                o.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(c.captured_at_us));
            for i in 0..c.parts.len() {
                let _ = writeln!(
                    o,
                    "#EXT-X-PART:DURATION=0.500,URI=\"{}part-{}-{i}.m4s\",INDEPENDENT=YES",
                    self.prefix, c.msn
                );
            }
        }
        if self.ended {
            o.push_str("#EXT-X-ENDLIST\n");
        } else {
            let (msn, parts) = self.edge();
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}part-{msn}-{parts}.m4s\"",
                self.prefix
            );
        }
        o
    }

    /// The VOD playlist of every kept segment.
    pub fn vod_playlist(&self) -> String {
        let mut o = header(self.segments.front().map_or(0, |s| s.msn));
        o.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"init.mp4\"\n");
        for s in &self.segments {
            segment_lines(&mut o, s, false, &self.prefix);
        }
        o.push_str("#EXT-X-ENDLIST\n");
        o
    }
}

fn header(first_msn: u64) -> String {
    let mut o = String::with_capacity(4096);
    let _ = write!(
        o,
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first_msn}\n"
    );
    o
}

fn segment_lines(o: &mut String, s: &Segment, with_parts: bool, prefix: &str) {
    if s.discontinuity {
        o.push_str("#EXT-X-DISCONTINUITY\n");
    }
    let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(s.captured_at_us));
    if with_parts {
        let mut left = s.frames;
        for i in 0..s.parts.len() {
            let n = left.min(PART_FRAMES);
            left -= n;
            let _ = writeln!(
                o,
                "#EXT-X-PART:DURATION={:.3},URI=\"{prefix}part-{}-{i}.m4s\",INDEPENDENT=YES",
                n as f64 * 0.02,
                s.msn
            );
        }
    }
    let _ = writeln!(
        o,
        "#EXTINF:{:.3},\n{prefix}seg-{}.m4s",
        s.frames as f64 * 0.02,
        s.msn
    );
}

/// Parses `_HLS_msn` and `_HLS_part` from a query string.
pub fn parse_blocking_query(query: &str) -> Result<(Option<u64>, Option<u64>), HlsError> {
    let (mut msn, mut part) = (None, None);
    for kv in query.split('&') {
        if let Some(v) = kv.strip_prefix("_HLS_msn=") {
            msn = Some(
                v.parse()
                    .map_err(|_| HlsError::Query("_HLS_msn must be an integer"))?,
            );
        } else if let Some(v) = kv.strip_prefix("_HLS_part=") {
            part = Some(
                v.parse()
                    .map_err(|_| HlsError::Query("_HLS_part must be an integer"))?,
            );
        }
    }
    if part.is_some() && msn.is_none() {
        return Err(HlsError::Query("_HLS_part needs _HLS_msn"));
    }
    Ok((msn, part))
}

/// Parses `seg-{msn}.m4s` / `part-{msn}-{part}.m4s` names.
pub fn parse_media_name(name: &str) -> Option<(u64, Option<u64>)> {
    if let Some(n) = name
        .strip_prefix("seg-")
        .and_then(|n| n.strip_suffix(".m4s"))
    {
        return n.parse().ok().map(|m| (m, None));
    }
    let n = name.strip_prefix("part-")?.strip_suffix(".m4s")?;
    let (m, p) = n.split_once('-')?;
    Some((m.parse().ok()?, Some(p.parse().ok()?)))
}

/// µs since the epoch as RFC 3339 with milliseconds, UTC.
fn rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    let ms = (us / 1000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_us: 1_764_000_000_000_000 + seq * 20_000,
            opus: Bytes::from_static(&[0xf8, 1, 2]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn parts_segments_and_playlists() {
        let mut s = Segmenter::new(100);
        let mut events = Vec::new();
        for q in 0..230 {
            events.extend(s.push(&frame(q)));
        }
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, HlsEvent::Segment { .. }))
                .count(),
            2
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, HlsEvent::Part { .. }))
                .count(),
            9
        );
        let pl = s.live_playlist();
        assert!(pl.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"));
        assert!(pl.contains("seg-0.m4s") && pl.contains("seg-1.m4s"));
        assert!(pl.contains("part-2-0.m4s"));
        assert!(pl.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-2-1.m4s\""));
        assert!(s.part(2, 0).is_some() && s.part(2, 1).is_none());
        assert_eq!(s.ready(2, Some(0)), Ready::Now);
        assert_eq!(s.ready(2, Some(1)), Ready::Wait);
        assert_eq!(s.ready(9, None), Ready::TooFar);
        assert_eq!(
            s.segment(1).unwrap().len(),
            s.segments()
                .nth(1)
                .unwrap()
                .parts
                .iter()
                .map(Bytes::len)
                .sum::<usize>()
        );
        // A gap (restart) closes the segment and marks a discontinuity.
        s.push(&frame(500));
        s.finish();
        let vod = s.vod_playlist();
        assert!(vod.contains("#EXT-X-DISCONTINUITY"));
        assert!(vod.ends_with("#EXT-X-ENDLIST\n"));
        assert!(s.live_playlist().contains("#EXT-X-ENDLIST"));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_000_000_123_000), "2025-11-24T16:00:00.123Z");
    }

    #[test]
    fn names_and_queries() {
        assert_eq!(parse_media_name("seg-12.m4s"), Some((12, None)));
        assert_eq!(parse_media_name("part-12-3.m4s"), Some((12, Some(3))));
        assert_eq!(parse_media_name("part-12.m4s"), None);
        assert_eq!(
            parse_blocking_query("_HLS_msn=4&_HLS_part=1").unwrap(),
            (Some(4), Some(1))
        );
        assert!(parse_blocking_query("_HLS_part=1").is_err());
        assert!(parse_blocking_query("_HLS_msn=x").is_err());
    }

    proptest! {
        #[test]
        fn names_and_queries_never_panic_and_roundtrip(s in ".{0,60}", m in 0u64..1_000_000, p in 0u64..10) {
            let _ = parse_media_name(&s);
            let _ = parse_blocking_query(&s);
            prop_assert_eq!(parse_media_name(&format!("part-{m}-{p}.m4s")), Some((m, Some(p))));
            prop_assert_eq!(parse_media_name(&format!("seg-{m}.m4s")), Some((m, None)));
        }

        #[test]
        fn every_listed_uri_resolves(n in 1u64..400, gap_at in 0u64..400) {
            let mut s = Segmenter::new(1000);
            for q in 0..n {
                let seq = if q >= gap_at { q + 50 } else { q };
                s.push(&frame(seq));
            }
            let pl = s.live_playlist();
            let mut total_frames = 0;
            for line in pl.lines() {
                let uri = line.split("URI=\"").nth(1).map(|r| r.split('"').next().unwrap_or("")).or(if line.ends_with(".m4s") { Some(line) } else { None });
                if let Some(uri) = uri && !line.starts_with("#EXT-X-PRELOAD-HINT") && !line.starts_with("#EXT-X-MAP") {
                    let (m, p) = parse_media_name(uri).unwrap();
                    let found = match p { Some(p) => s.part(m, p).is_some(), None => s.segment(m).is_some() };
                    prop_assert!(found, "{} is listed but not served", uri);
                }
            }
            for seg in s.segments() { total_frames += seg.frames; }
            prop_assert!(total_frames <= n);
            let msns: Vec<u64> = s.segments().map(|x| x.msn).collect();
            prop_assert!(msns.windows(2).all(|w| w[1] == w[0] + 1));
        }
    }
}
