//! Playlists naming what the [`Segmenter`] cut: the LL-HLS media playlist
//! for live (RFC 8216bis, version 9: parts, preload hint, blocking reload,
//! delta updates) and the VOD playlist for replay; plus the parsers for the
//! request side (`_HLS_msn`/`_HLS_part`, `_HLS_skip`, media names), which
//! never panic.
//!
//! URIs are relative (`init.mp4`, `seg-{msn}.m4s`, `part-{msn}-{part}.m4s`)
//! so the server, a CDN or a directory on disk can map them.

use std::fmt::Write;
use std::str::FromStr;

use bytes::Bytes;

use crate::HlsError;
pub use crate::segmenter::{
    HlsEvent, PRELOAD_PARTS_AHEAD, PartLookup, Segment, Segmenter, SegmenterConfig,
};
use crate::segmenter::{Open, Part};

/// Whether a blocking playlist request (`_HLS_msn`/`_HLS_part`) can be
/// answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The playlist already holds what was asked for: answer now.
    Now,
    /// Not yet: hold the request until the segmenter moves.
    Wait,
    /// Further ahead of the live edge than RFC 8216bis allows (two segments,
    /// or the Advance Part Limit): answer 400 at once.
    TooFar,
}

/// `1500` ms → `1.5`: the shortest exact decimal, for attributes.
fn secs(ms: u64) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A span of frames as `EXTINF`/`DURATION` seconds with millisecond
/// precision (frames are 20 ms, so this is exact).
fn span_secs(span: u64) -> String {
    let ms = span.saturating_mul(20);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

impl Segmenter {
    fn part_ms(&self) -> u64 {
        u64::from(self.cfg.part_frames) * 20
    }

    fn target_duration(&self) -> u64 {
        (self.cfg.segment_frames() * 20).div_ceil(1000).max(1)
    }

    /// Whether a request for the playlist with `_HLS_msn=msn` (and
    /// `_HLS_part=part`) can be answered now, must wait, or is too far
    /// ahead of the live edge to ever be worth waiting for.
    pub fn blocking_reload_ready(&self, msn: u64, part: Option<u32>) -> Ready {
        if self.ended {
            return Ready::Now;
        }
        let (edge_msn, edge_parts) = self.edge();
        // The last complete segment is `edge_msn - 1`; the spec allows two
        // beyond it.
        if msn > edge_msn.saturating_add(1) {
            return Ready::TooFar;
        }
        let Some(p) = part else {
            return if msn < edge_msn {
                Ready::Now
            } else {
                Ready::Wait
            };
        };
        if msn < edge_msn || (msn == edge_msn && p < edge_parts) {
            return Ready::Now;
        }
        // Advance Part Limit: 3 / PART-TARGET parts when the target is under
        // a second, else 3.
        let limit = if self.part_ms() < 1000 {
            i128::from(3000_u64.div_ceil(self.part_ms()))
        } else {
            3
        };
        let per = i128::from(self.cfg.segment_parts);
        let asked = i128::from(msn) * per + i128::from(p);
        let last = i128::from(edge_msn) * per + i128::from(edge_parts) - 1;
        if asked - last > limit {
            Ready::TooFar
        } else {
            Ready::Wait
        }
    }

    /// Short name of [`Segmenter::blocking_reload_ready`].
    pub fn ready(&self, msn: u64, part: Option<u32>) -> Ready {
        self.blocking_reload_ready(msn, part)
    }

    fn first_listed_msn(&self) -> u64 {
        self.segments
            .front()
            .map_or_else(|| self.edge().0, |s| s.msn)
    }

    fn header(&self, o: &mut String) {
        let _ = write!(
            o,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{}\n",
            self.target_duration()
        );
    }

    fn sequence_lines(&self, o: &mut String) {
        let _ = writeln!(o, "#EXT-X-MEDIA-SEQUENCE:{}", self.first_listed_msn());
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(
                o,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
    }

    fn part_lines(&self, o: &mut String, msn: u64, parts: &[Part]) {
        for (i, p) in parts.iter().enumerate() {
            let _ = writeln!(
                o,
                "#EXT-X-PART:DURATION={},URI=\"{}part-{msn}-{i}.m4s\",INDEPENDENT=YES",
                span_secs(p.span),
                self.prefix
            );
        }
    }

    fn segment_lines(&self, o: &mut String, s: &Segment, with_parts: bool) {
        if s.discontinuity {
            o.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(s.captured_at_us));
        if with_parts {
            self.part_lines(o, s.msn, &s.parts);
        }
        let _ = writeln!(
            o,
            "#EXTINF:{},\n{}seg-{}.m4s",
            span_secs(s.span),
            self.prefix,
            s.msn
        );
    }

    fn open_lines(&self, o: &mut String, c: &Open) {
        if c.parts.is_empty() {
            return;
        }
        if c.discontinuity {
            o.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(c.captured_at_us));
        self.part_lines(o, c.msn, &c.parts);
    }

    /// Seconds of the newest segments a delta playlist always lists: six
    /// target durations, the minimum RFC 8216bis allows.
    fn skip_until_ms(&self) -> u64 {
        6 * self.target_duration() * 1000
    }

    /// The LL-HLS media playlist: the window of segments, the parts of the
    /// last three target durations and of the segment in progress, and a
    /// preload hint for the next part (or `EXT-X-ENDLIST` once finished).
    /// Rendered once per new part and shared.
    pub fn live_playlist(&self) -> Bytes {
        self.live_cache[0]
            .get_or_init(|| Bytes::from(self.render_live(false)))
            .clone()
    }

    /// The delta update asked for with `_HLS_skip=YES` (see [`wants_skip`],
    /// RFC 8216bis §6.2.5.1): the live playlist with the segments further
    /// than `CAN-SKIP-UNTIL` from its end replaced by one `EXT-X-SKIP` line,
    /// so a long DVR window does not cost every player its whole size on
    /// every part. Everything else (sequence numbers, parts, preload hint)
    /// is the full playlist's, line for line. Once the stream is finished
    /// (`EXT-X-ENDLIST`) the directive is ignored and this is the full
    /// playlist.
    pub fn live_playlist_delta(&self) -> Bytes {
        if self.ended {
            return self.live_playlist();
        }
        self.live_cache[1]
            .get_or_init(|| Bytes::from(self.render_live(true)))
            .clone()
    }

    /// How many of the oldest segments a delta update replaces: those that
    /// end further than the Skip Boundary (`CAN-SKIP-UNTIL`) from the end of
    /// the playlist, which is the end of the newest part. A segment that
    /// ends exactly at the boundary stays. A client may only ask for a delta
    /// when its copy is no older than half the boundary (RFC 8216bis
    /// §6.3.7), so its copy holds every skipped segment.
    fn delta_skipped(&self) -> usize {
        let open_ms = self.open.as_ref().map_or(0, |c| {
            c.parts
                .iter()
                .map(|p| p.span)
                .sum::<u64>()
                .saturating_mul(20)
        });
        // Newest first: media after the end of each segment.
        let mut after_ms = open_ms;
        let mut keep = 0;
        for s in self.segments.iter().rev() {
            if after_ms > self.skip_until_ms() {
                break;
            }
            after_ms = after_ms.saturating_add(s.span.saturating_mul(20));
            keep += 1;
        }
        self.segments.len() - keep
    }

    fn render_live(&self, delta: bool) -> String {
        let mut o = String::with_capacity(256 + self.segments.len() * 200);
        self.header(&mut o);
        let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={}", secs(self.part_ms()));
        let _ = writeln!(
            o,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={}",
            secs(3 * self.part_ms()),
            secs(self.skip_until_ms())
        );
        self.sequence_lines(&mut o);
        o.push_str("#EXT-X-MAP:URI=\"init.mp4\"\n");
        let skipped = if delta && !self.ended {
            self.delta_skipped()
        } else {
            0
        };
        // After the header and the sequence numbers, which a delta keeps
        // unchanged (SKIPPED-SEGMENTS leaves EXT-X-DISCONTINUITY-SEQUENCE
        // alone), so hls.js finds them before the skip.
        if skipped > 0 {
            let _ = writeln!(o, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
        // Parts older than three target durations from the edge are dropped.
        let seg_ms = self.cfg.segment_frames() * 20;
        let with_parts = usize::try_from((3 * self.target_duration() * 1000).div_ceil(seg_ms))
            .unwrap_or(usize::MAX);
        let n = self.segments.len();
        for (i, s) in self.segments.iter().enumerate().skip(skipped) {
            self.segment_lines(&mut o, s, i + with_parts >= n);
        }
        if let Some(c) = &self.open {
            self.open_lines(&mut o, c);
        }
        if self.ended {
            o.push_str("#EXT-X-ENDLIST\n");
        } else {
            let (msn, part) = self.edge();
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}part-{msn}-{part}.m4s\"",
                self.prefix
            );
        }
        o
    }

    /// The VOD playlist of every kept segment (all of them with
    /// `keep_all`), without parts.
    pub fn vod_playlist(&self) -> String {
        let mut o = String::with_capacity(256 + self.segments.len() * 100);
        self.header(&mut o);
        o.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
        self.sequence_lines(&mut o);
        o.push_str("#EXT-X-MAP:URI=\"init.mp4\"\n");
        for s in &self.segments {
            self.segment_lines(&mut o, s, false);
        }
        o.push_str("#EXT-X-ENDLIST\n");
        o
    }
}

/// A non-empty run of ASCII digits as a number (no sign, no spaces).
fn digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `_HLS_msn` and `_HLS_part` from a playlist request's query string
/// (other parameters, such as `token`, are ignored). `_HLS_part` without
/// `_HLS_msn`, a repeated key or a value that is not a number is a 400.
pub fn parse_blocking_query(query: &str) -> Result<(Option<u64>, Option<u32>), HlsError> {
    let (mut msn, mut part) = (None, None);
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "_HLS_msn" => {
                let v = digits(v).ok_or(HlsError::Query("_HLS_msn must be an integer"))?;
                if msn.replace(v).is_some() {
                    return Err(HlsError::Query("_HLS_msn is repeated"));
                }
            }
            "_HLS_part" => {
                let v = digits(v).ok_or(HlsError::Query("_HLS_part must be an integer"))?;
                if part.replace(v).is_some() {
                    return Err(HlsError::Query("_HLS_part is repeated"));
                }
            }
            _ => {}
        }
    }
    if part.is_some() && msn.is_none() {
        return Err(HlsError::Query("_HLS_part needs _HLS_msn"));
    }
    Ok((msn, part))
}

/// Whether a playlist request asks for a delta update (`_HLS_skip=YES`,
/// or `v2`, which also allows skipping date ranges; we have none).
pub fn wants_skip(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv == "_HLS_skip=YES" || kv == "_HLS_skip=v2")
}

/// `playlist` with `query` (e.g. `t=<key>`) added to every URI it names:
/// the media lines and the `URI="…"` attributes (map, parts, preload hint),
/// so a player that fetched a private playlist fetches its media with the
/// same key, and a CDN passes it through.
pub fn with_query(playlist: &str, query: &str) -> String {
    let mut out = String::with_capacity(playlist.len() + 64 * query.len());
    let add = |out: &mut String, uri: &str| {
        out.push_str(uri);
        out.push(if uri.contains('?') { '&' } else { '?' });
        out.push_str(query);
    };
    for line in playlist.lines() {
        if line.is_empty() {
            // Kept as the empty line it is.
        } else if !line.starts_with('#') {
            add(&mut out, line);
        } else {
            let mut rest = line;
            while let Some(at) = rest.find("URI=\"") {
                let (head, tail) = rest.split_at(at + 5);
                out.push_str(head);
                let Some(end) = tail.find('"') else {
                    rest = tail;
                    break;
                };
                add(&mut out, &tail[..end]);
                rest = &tail[end..];
            }
            out.push_str(rest);
        }
        out.push('\n');
    }
    out
}

/// Parses `seg-{msn}.m4s` → `(msn, None)` and `part-{msn}-{part}.m4s` →
/// `(msn, Some(part))`.
pub fn parse_media_name(name: &str) -> Option<(u64, Option<u32>)> {
    if let Some(n) = name
        .strip_prefix("seg-")
        .and_then(|n| n.strip_suffix(".m4s"))
    {
        return digits(n).map(|m| (m, None));
    }
    let n = name.strip_prefix("part-")?.strip_suffix(".m4s")?;
    let (m, p) = n.split_once('-')?;
    Some((digits(m)?, Some(digits(p)?)))
}

/// µs since the epoch as RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    let ms = (us / 1000) % 1000;
    // u64 µs are at most ~213 million days: i64 holds them.
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

    #[test]
    fn with_query_signs_every_uri() {
        let pl = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-PART:DURATION=0.400,URI=\"part-7-0.m4s\",INDEPENDENT=YES\n#EXTINF:2.0,\nseg-6.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"a.m4s?x=1\"\n";
        assert_eq!(
            with_query(pl, "t=K"),
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4?t=K\"\n#EXT-X-PART:DURATION=0.400,URI=\"part-7-0.m4s?t=K\",INDEPENDENT=YES\n#EXTINF:2.0,\nseg-6.m4s?t=K\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"a.m4s?x=1&t=K\"\n"
        );
        // An unterminated attribute is copied, not lost.
        assert_eq!(with_query("#X:URI=\"a", "t=K"), "#X:URI=\"a\n");
    }
    use amphi_core::Frame;
    use bytes::Bytes;
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

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn delta_updates_skip_old_segments_and_cache_until_the_next_part() {
        let mut s = Segmenter::new(100);
        for q in 0..1030 {
            s.push(&frame(q));
        }
        let full = s.live_playlist();
        assert_eq!(full.as_ptr(), s.live_playlist().as_ptr(), "rendered once");
        let delta = text(s.live_playlist_delta());
        // 10 segments of 2 s and 0.4 s open: keep the newest 6 (12 s).
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
        assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n"));
        assert!(!delta.contains("seg-3.m4s") && delta.contains("seg-4.m4s"));
        assert!(delta.len() < full.len());
        for q in 1030..1055 {
            s.push(&frame(q));
        }
        let next = s.live_playlist();
        assert_ne!(full.as_ptr(), next.as_ptr());
        assert!(text(next).contains("part-10-1.m4s"));
        assert!(!text(live(300).live_playlist_delta()).contains("EXT-X-SKIP"));
        assert!(wants_skip("token=a&_HLS_skip=YES"));
        assert!(!wants_skip("_HLS_skip=NO"));
    }

    /// `n` frames into a segmenter with a long (DVR) window.
    fn dvr(n: u64) -> Segmenter {
        let mut s = Segmenter::new(100);
        for q in 0..n {
            s.push(&frame(q));
        }
        s
    }

    /// `SKIPPED-SEGMENTS` of a playlist, 0 without `EXT-X-SKIP`.
    fn skipped_in(pl: &str) -> usize {
        pl.lines()
            .find_map(|l| l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS="))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// What RFC 8216bis §6.2.5.1 makes of `full` when `skipped` segments are
    /// skipped: the lines of those segments (every tag after `EXT-X-MAP` up
    /// to the last one's URI) become one `EXT-X-SKIP`, and every other line
    /// stays as it is.
    fn expected_delta(full: &str, skipped: usize) -> String {
        if skipped == 0 {
            return full.to_owned();
        }
        let lines: Vec<&str> = full.lines().collect();
        let map = lines
            .iter()
            .position(|l| l.starts_with("#EXT-X-MAP"))
            .unwrap();
        let last = (map..lines.len())
            .filter(|&i| !lines[i].starts_with('#'))
            .nth(skipped - 1)
            .unwrap();
        let skip = format!("#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        let mut out: Vec<&str> = lines[..=map].to_vec();
        out.push(&skip);
        out.extend_from_slice(&lines[last + 1..]);
        out.join("\n") + "\n"
    }

    /// Milliseconds of media after the end of each kept segment, up to the
    /// end of the newest part.
    fn after_each_segment(s: &Segmenter) -> Vec<u64> {
        let open: u64 = s
            .open
            .as_ref()
            .map_or(0, |c| c.parts.iter().map(|p| p.span * 20).sum());
        let spans: Vec<u64> = s.segments().map(|g| g.span * 20).collect();
        (0..spans.len())
            .map(|i| open + spans[i + 1..].iter().sum::<u64>())
            .collect()
    }

    #[test]
    fn delta_skips_segments_further_than_the_boundary_and_keeps_the_rest() {
        // Ten 2 s segments, no part after them: segment 3 ends exactly 12 s
        // before the end, so it stays; 0..=2 end further away.
        let mut s = dvr(1000);
        assert_eq!(s.edge(), (10, 0));
        let full = text(s.live_playlist());
        let delta = text(s.live_playlist_delta());
        assert_eq!(skipped_in(&delta), 3);
        assert!(delta.contains("#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n#EXT-X-PROGRAM-DATE-TIME:2025-11-24T16:00:06.000Z\n"));
        assert!(!delta.contains("seg-2.m4s") && delta.contains("seg-3.m4s"));
        assert_eq!(delta, expected_delta(&full, 3));
        // Same media sequence; the parts and the hint are all there.
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
        for l in full.lines().filter(|l| l.starts_with("#EXT-X-PART:")) {
            assert!(delta.contains(l), "{l} is missing from the delta");
        }
        assert!(delta.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-10-0.m4s\"\n"));
        // Half a second more: segment 3 is now 12.5 s from the end.
        for q in 1000..1025 {
            s.push(&frame(q));
        }
        let delta = text(s.live_playlist_delta());
        assert_eq!(skipped_in(&delta), 4);
        assert_eq!(delta, expected_delta(&text(s.live_playlist()), 4));
        // A window shorter than the boundary has nothing to skip.
        let short = dvr(650);
        assert_eq!(short.live_playlist_delta(), short.live_playlist());
    }

    #[test]
    fn a_finished_stream_ignores_skip() {
        let mut s = dvr(1030);
        assert_eq!(skipped_in(&text(s.live_playlist_delta())), 4);
        s.finish();
        let full = s.live_playlist();
        let delta = s.live_playlist_delta();
        assert_eq!(delta, full);
        assert_eq!(delta.as_ptr(), full.as_ptr(), "the same shared bytes");
        let delta = text(delta);
        assert!(!delta.contains("EXT-X-SKIP") && !delta.contains("PRELOAD-HINT"));
        assert!(delta.ends_with("#EXT-X-ENDLIST\n"));
    }

    fn live(n: u64) -> Segmenter {
        let mut s = Segmenter::new(SegmenterConfig::default());
        for q in 0..n {
            s.push(&frame(q));
        }
        s
    }

    #[test]
    fn live_playlist_has_the_ll_hls_tags() {
        let s = live(1030); // 10 segments, then parts 0 of msn 10
        let pl = text(s.live_playlist());
        let lines: Vec<&str> = pl.lines().collect();
        assert_eq!(
            &lines[..7],
            [
                "#EXTM3U",
                "#EXT-X-VERSION:9",
                "#EXT-X-TARGETDURATION:2",
                "#EXT-X-PART-INF:PART-TARGET=0.4",
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.2,CAN-SKIP-UNTIL=12",
                "#EXT-X-MEDIA-SEQUENCE:4",
                "#EXT-X-MAP:URI=\"init.mp4\"",
            ]
        );
        assert!(pl.contains(
            "#EXT-X-PROGRAM-DATE-TIME:2025-11-24T16:00:08.000Z\n#EXTINF:2.000,\nseg-4.m4s\n"
        ));
        assert!(pl.contains("#EXTINF:2.000,\nseg-9.m4s\n"));
        // Parts only for the last three segments and the open one.
        assert!(!pl.contains("part-6-"));
        assert!(pl.contains("#EXT-X-PART:DURATION=0.400,URI=\"part-7-0.m4s\",INDEPENDENT=YES\n"));
        assert!(pl.contains("part-10-0.m4s"));
        assert!(pl.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-10-1.m4s\"\n"));
        assert!(!pl.contains("ENDLIST"));
    }

    #[test]
    fn blocking_reload_follows_the_edge() {
        let s = live(230); // segments 0, 1 complete; msn 2 has part 0
        assert_eq!(s.blocking_reload_ready(1, None), Ready::Now);
        assert_eq!(s.blocking_reload_ready(2, None), Ready::Wait);
        assert_eq!(s.blocking_reload_ready(2, Some(0)), Ready::Now);
        assert_eq!(s.blocking_reload_ready(2, Some(1)), Ready::Wait);
        assert_eq!(s.blocking_reload_ready(3, Some(0)), Ready::Wait);
        assert_eq!(s.blocking_reload_ready(3, None), Ready::Wait);
        assert_eq!(s.blocking_reload_ready(4, None), Ready::TooFar);
        // Eight parts ahead (3 s / 0.4 s, rounded up) is the limit for
        // 0.4 s parts.
        assert_eq!(s.blocking_reload_ready(3, Some(3)), Ready::Wait);
        assert_eq!(s.blocking_reload_ready(3, Some(4)), Ready::TooFar);
        assert_eq!(
            s.blocking_reload_ready(u64::MAX, Some(u32::MAX)),
            Ready::TooFar
        );
        assert_eq!(s.ready(0, Some(9)), Ready::Now);
        let mut s = s;
        s.finish();
        assert_eq!(s.blocking_reload_ready(3, None), Ready::Now);
    }

    #[test]
    fn vod_playlist_lists_every_segment_without_parts() {
        let mut s = Segmenter::new(SegmenterConfig {
            keep_all: true,
            ..SegmenterConfig::default()
        })
        .with_uri_prefix("replay/");
        for q in (0..250).chain(5000..5100) {
            s.push(&frame(q));
        }
        s.finish();
        let vod = s.vod_playlist();
        assert!(vod.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(vod.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
        assert!(vod.contains("#EXTINF:1.000,\nreplay/seg-2.m4s\n"));
        assert!(vod.contains("#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2025-11-24T16:01:40.000Z\n#EXTINF:2.000,\nreplay/seg-3.m4s\n"));
        assert!(!vod.contains("EXT-X-PART"));
        assert!(vod.ends_with("#EXT-X-ENDLIST\n"));
        assert!(text(s.live_playlist()).ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn evicted_discontinuities_are_counted() {
        let mut s = Segmenter::new(3);
        for q in (0..100).chain(1000..1500) {
            s.push(&frame(q));
        }
        assert!(text(s.live_playlist()).contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"));
    }

    #[test]
    fn dates_and_numbers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_000_000_123_000), "2025-11-24T16:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(secs(500), "0.5");
        assert_eq!(secs(1500), "1.5");
        assert_eq!(secs(2000), "2");
        assert_eq!(secs(20), "0.02");
        assert_eq!(span_secs(25), "0.500");
    }

    #[test]
    fn names_and_queries() {
        assert_eq!(parse_media_name("seg-12.m4s"), Some((12, None)));
        assert_eq!(parse_media_name("part-12-3.m4s"), Some((12, Some(3))));
        assert_eq!(parse_media_name("part-12.m4s"), None);
        assert_eq!(parse_media_name("seg-+1.m4s"), None);
        assert_eq!(parse_media_name("part-1-99999999999.m4s"), None);
        assert_eq!(
            parse_blocking_query("_HLS_msn=4&_HLS_part=1").unwrap(),
            (Some(4), Some(1))
        );
        assert_eq!(
            parse_blocking_query("token=abc&_HLS_msn=4").unwrap(),
            (Some(4), None)
        );
        assert_eq!(parse_blocking_query("").unwrap(), (None, None));
        assert!(parse_blocking_query("_HLS_part=1").is_err());
        assert!(parse_blocking_query("_HLS_msn=x").is_err());
        assert!(parse_blocking_query("_HLS_msn=").is_err());
        assert!(parse_blocking_query("_HLS_msn=1&_HLS_msn=2").is_err());
        assert!(parse_blocking_query("_HLS_msn=99999999999999999999999").is_err());
    }

    /// Every media URI a playlist names (parts, segments, but not the
    /// preload hint, which names the future).
    fn listed_uris(pl: &str) -> Vec<String> {
        pl.lines()
            .filter(|l| !l.starts_with("#EXT-X-PRELOAD-HINT") && !l.starts_with("#EXT-X-MAP"))
            .filter_map(|l| {
                if let Some(rest) = l.split("URI=\"").nth(1) {
                    rest.split('"').next().map(str::to_owned)
                } else if !l.starts_with('#') && !l.is_empty() {
                    Some(l.to_owned())
                } else {
                    None
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn names_and_queries_never_panic_and_roundtrip(s in ".{0,60}", m in any::<u64>(), p in any::<u32>()) {
            let _ = parse_media_name(&s);
            let _ = parse_blocking_query(&s);
            prop_assert_eq!(parse_media_name(&format!("part-{m}-{p}.m4s")), Some((m, Some(p))));
            prop_assert_eq!(parse_media_name(&format!("seg-{m}.m4s")), Some((m, None)));
            prop_assert_eq!(parse_blocking_query(&format!("_HLS_part={p}&x=&_HLS_msn={m}")), Ok((Some(m), Some(p))));
        }

        #[test]
        fn every_listed_uri_resolves(
            n in 1u64..700,
            gaps in proptest::collection::vec((0u64..700, 1u64..300), 0..4),
            window in 3usize..8,
            finish in any::<bool>(),
        ) {
            let mut s = Segmenter::new(window);
            let mut seq = 0;
            for q in 0..n {
                seq += gaps.iter().filter(|g| g.0 == q).map(|g| g.1).sum::<u64>();
                s.push(&frame(seq));
                seq += 1;
                if q % 37 == 0 {
                    for pl in [text(s.live_playlist()), text(s.live_playlist_delta()), s.vod_playlist()] {
                        for uri in listed_uris(&pl) {
                            let (m, p) = parse_media_name(&uri).unwrap();
                            let found = match p { Some(p) => s.part(m, p).is_some(), None => s.segment(m).is_some() };
                            prop_assert!(found, "{} is listed but not served", uri);
                        }
                    }
                }
            }
            if finish { s.finish(); }
            let pl = text(s.live_playlist());
            prop_assert!(pl.starts_with("#EXTM3U\n"));
            let media_seq: u64 = pl.lines().find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")).unwrap().parse().unwrap();
            let segs: Vec<u64> = listed_uris(&pl).iter().filter_map(|u| parse_media_name(u)).filter(|x| x.1.is_none()).map(|x| x.0).collect();
            // Listed segments are consecutive from EXT-X-MEDIA-SEQUENCE.
            for (i, m) in segs.iter().enumerate() {
                prop_assert_eq!(*m, media_seq + i as u64);
            }
            for uri in listed_uris(&pl) {
                let (m, p) = parse_media_name(&uri).unwrap();
                let found = match p { Some(p) => s.part(m, p).is_some(), None => s.segment(m).is_some() };
                prop_assert!(found, "{} is listed but not served", uri);
            }
            // EXTINF never exceeds the target duration.
            for l in pl.lines().filter_map(|l| l.strip_prefix("#EXTINF:")) {
                let d: f64 = l.trim_end_matches(',').parse().unwrap();
                prop_assert!(d <= 2.0 && d > 0.0);
            }
            prop_assert_eq!(pl.contains("#EXT-X-PRELOAD-HINT"), !finish);
        }

        /// Whatever the window and the restarts, a delta update is the full
        /// playlist with exactly the segments that end further than the
        /// Skip Boundary from its end replaced by `EXT-X-SKIP`; it keeps
        /// every part and the hint, and the hinted part is worth waiting
        /// for while every listed one is there.
        #[test]
        fn deltas_skip_what_the_rfc_allows_and_nothing_else(
            n in 1u64..1500,
            gaps in proptest::collection::vec((0u64..1500, 1u64..300), 0..4),
            window in 3usize..20,
            finish in any::<bool>(),
        ) {
            let mut s = Segmenter::new(window);
            let mut seq = 0;
            let check = |s: &Segmenter| -> Result<(), TestCaseError> {
                let full = text(s.live_playlist());
                let delta = text(s.live_playlist_delta());
                let skipped = skipped_in(&delta);
                prop_assert_eq!(&delta, &expected_delta(&full, skipped));
                if s.is_finished() {
                    prop_assert_eq!(skipped, 0);
                } else {
                    let after = after_each_segment(s);
                    for (i, a) in after.iter().enumerate() {
                        prop_assert_eq!(i < skipped, *a > 12_000, "segment {} ends {} ms before the end", i, a);
                    }
                    let hint = full.lines().find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"")).unwrap();
                    let (m, p) = parse_media_name(hint.trim_end_matches('"')).unwrap();
                    prop_assert_eq!(s.lookup_part(m, p.unwrap()), crate::PartLookup::Pending);
                }
                for l in full.lines().filter(|l| l.starts_with("#EXT-X-PART:")) {
                    prop_assert!(delta.contains(l), "{} is missing from the delta", l);
                }
                for uri in listed_uris(&delta) {
                    let (m, p) = parse_media_name(&uri).unwrap();
                    if let Some(p) = p {
                        prop_assert!(matches!(s.lookup_part(m, p), crate::PartLookup::Found(_)));
                    }
                }
                Ok(())
            };
            for q in 0..n {
                seq += gaps.iter().filter(|g| g.0 == q).map(|g| g.1).sum::<u64>();
                s.push(&frame(seq));
                seq += 1;
                if q % 53 == 0 {
                    check(&s)?;
                }
            }
            check(&s)?;
            if finish {
                s.finish();
                check(&s)?;
            }
        }
    }
}
