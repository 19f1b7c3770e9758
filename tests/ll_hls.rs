//! LL-HLS delivery directives against a real `amphi serve`: delta updates
//! (`_HLS_skip=YES`, RFC 8216bis §6.2.5.1) and requests for the part named
//! by `EXT-X-PRELOAD-HINT`, held until it is published (§6.2.6). A live
//! space cuts its program (silence when nobody speaks) into 400 ms parts
//! and 2 s segments, so no speaker is needed.

mod common;

use std::time::{Duration, Instant};

use common::{Server, live_space, wait_for};

/// Parts per segment of the server's cut.
const PARTS: u64 = 5;

struct Got {
    status: u16,
    cache_control: String,
    content_type: String,
    body: Vec<u8>,
    took: Duration,
}

fn get(url: &str) -> Got {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let t0 = Instant::now();
    let res = client.get(url).send().expect("request");
    let status = res.status().as_u16();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (cache_control, content_type) = (header("cache-control"), header("content-type"));
    let body = res.bytes().expect("body").to_vec();
    Got {
        status,
        cache_control,
        content_type,
        body,
        took: t0.elapsed(),
    }
}

fn text(g: &Got) -> String {
    String::from_utf8(g.body.clone()).expect("utf-8 playlist")
}

/// `(msn, part)` of the playlist's `EXT-X-PRELOAD-HINT`.
fn hint(pl: &str) -> (u64, u64) {
    let uri = pl
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-"))
        .unwrap_or_else(|| panic!("no preload hint in\n{pl}"));
    let (m, p) = uri
        .trim_end_matches(".m4s\"")
        .split_once('-')
        .expect("part-M-P");
    (m.parse().expect("msn"), p.parse().expect("part"))
}

fn count(pl: &str, prefix: &str) -> usize {
    pl.lines().filter(|l| l.starts_with(prefix)).count()
}

fn skipped(pl: &str) -> Option<usize> {
    pl.lines()
        .find_map(|l| l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS="))
        .map(|n| n.parse().expect("SKIPPED-SEGMENTS"))
}

/// `full` with its first `n` segments (their tags and URIs, after
/// `EXT-X-MAP`) replaced by `EXT-X-SKIP`: what §6.2.5.1 makes of it.
fn expected_delta(full: &str, n: usize) -> String {
    let lines: Vec<&str> = full.lines().collect();
    let map = lines
        .iter()
        .position(|l| l.starts_with("#EXT-X-MAP"))
        .expect("EXT-X-MAP");
    let last = (map..lines.len())
        .filter(|&i| !lines[i].starts_with('#'))
        .nth(n - 1)
        .expect("n segments");
    let skip = format!("#EXT-X-SKIP:SKIPPED-SEGMENTS={n}");
    let mut out: Vec<&str> = lines[..=map].to_vec();
    out.push(&skip);
    out.extend_from_slice(&lines[last + 1..]);
    out.join("\n") + "\n"
}

/// Samples in a `moof`+`mdat` part (its `trun` sample count).
fn samples(part: &[u8]) -> u32 {
    assert_eq!(&part[4..8], b"moof", "a part starts with its moof");
    let at = part
        .windows(4)
        .position(|w| w == b"trun")
        .expect("trun box");
    u32::from_be_bytes(part[at + 8..at + 12].try_into().expect("4 bytes"))
}

/// Milliseconds since the epoch of an `EXT-X-PROGRAM-DATE-TIME` value as
/// the server writes it (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn date_ms(v: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 { v[r].parse().expect("a date field") };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

/// `(program date ms, EXTINF ms)` of each complete segment of a playlist.
fn dated_segments(pl: &str) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut date = None;
    for l in pl.lines() {
        if let Some(v) = l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            date = Some(date_ms(v));
        } else if let Some(v) = l.strip_prefix("#EXTINF:") {
            let secs: f64 = v.trim_end_matches(',').parse().expect("EXTINF");
            out.push((
                date.take().expect("a date per segment"),
                (secs * 1000.0).round() as i64,
            ));
        }
    }
    out
}

#[test]
fn a_delta_update_skips_old_segments_and_keeps_the_live_edge() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "Delta");
    let live = s.url(&format!("/spaces/{id}/hls/live.m3u8"));
    // The Skip Boundary is 12 s (6 × the 2 s target duration): wait for
    // 16 s of segments so some lie beyond it.
    wait_for(40, "eight segments in the live playlist", || {
        let g = get(&live);
        g.status == 200 && count(&text(&g), "#EXTINF") >= 8
    });
    let now_got = get(&live);
    assert_eq!(now_got.content_type, "application/vnd.apple.mpegurl");
    let now = text(&now_got);
    assert!(now.contains(",CAN-SKIP-UNTIL=12\n"), "{now}");
    // Consecutive segments are dated exactly their EXTINF apart.
    let dated = dated_segments(&now);
    assert!(dated.len() >= 8, "{now}");
    for w in dated.windows(2) {
        assert_eq!(w[1].0 - w[0].0, w[0].1, "program dates\n{now}");
    }
    let init = get(&s.url(&format!("/spaces/{id}/hls/init.mp4")));
    assert_eq!(
        (init.status, init.content_type.as_str()),
        (200, "audio/mp4")
    );
    assert!(
        skipped(&now).is_none(),
        "a plain request gets the full playlist"
    );

    // Both released by the same part: the full playlist and its delta
    // update describe the same moment.
    let (m, p) = hint(&now);
    let blocking = format!("{live}?_HLS_msn={m}&_HLS_part={p}");
    let full = std::thread::spawn({
        let url = blocking.clone();
        move || get(&url)
    });
    let delta = get(&format!("{blocking}&_HLS_skip=YES"));
    let full = full.join().expect("full playlist thread");
    assert_eq!((full.status, delta.status), (200, 200));
    assert_eq!(delta.content_type, "application/vnd.apple.mpegurl");
    assert_eq!(delta.cache_control, full.cache_control);
    let (full, delta) = (text(&full), text(&delta));

    let n = skipped(&delta).unwrap_or_else(|| panic!("no EXT-X-SKIP in\n{delta}"));
    assert!(n >= 1);
    assert_eq!(
        delta,
        expected_delta(&full, n),
        "the delta is the full playlist with {n} segments skipped"
    );
    assert!(count(&delta, "#EXTINF") + n == count(&full, "#EXTINF"));
    assert!(count(&delta, "#EXTINF") < count(&full, "#EXTINF"));
    assert!(delta.len() < full.len());
    // The first segment after the skip is MEDIA-SEQUENCE + n.
    let media_seq: usize = delta
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .expect("EXT-X-MEDIA-SEQUENCE")
        .parse()
        .expect("a number");
    let first = delta
        .lines()
        .find(|l| !l.starts_with('#'))
        .expect("a segment");
    assert_eq!(first, format!("seg-{}.m4s", media_seq + n));
    // The live edge is all there: the parts, the one asked for, the hint.
    assert!(count(&delta, "#EXT-X-PART:") >= 12, "{delta}");
    assert!(delta.contains(&format!("\"part-{m}-{p}.m4s\"")));
    assert!(delta.contains("#EXT-X-PRELOAD-HINT:TYPE=PART"));

    // Without a blocking reload, and with other values of the directive.
    let plain = text(&get(&format!("{live}?_HLS_skip=YES")));
    assert!(skipped(&plain).is_some(), "{plain}");
    let no = text(&get(&format!("{live}?_HLS_skip=NO")));
    assert!(skipped(&no).is_none() && no.contains("\nseg-0.m4s\n"));
}

#[test]
fn the_preload_hinted_part_is_held_until_published() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "Preload");
    let base = s.url(&format!("/spaces/{id}/hls"));
    let live = format!("{base}/live.m3u8");
    wait_for(20, "a part in the live playlist", || {
        let g = get(&live);
        g.status == 200 && text(&g).contains("#EXT-X-PART:")
    });
    // Catch the moment a part is published: the new playlist hints the
    // next one, about one part (400 ms) away.
    let (m, p) = hint(&text(&get(&live)));
    let pl = get(&format!("{live}?_HLS_msn={m}&_HLS_part={p}"));
    assert_eq!(pl.status, 200);
    let (hm, hp) = hint(&text(&pl));
    let part_url = |msn: u64, part: u64| format!("{base}/part-{msn}-{part}.m4s");
    let after = |msn: u64, part: u64, k: u64| {
        let i = msn * PARTS + part + k;
        (i / PARTS, i % PARTS)
    };
    let (nm, np) = after(hm, hp, 1);

    // The hinted part twice and the one after it, all asked for before
    // they exist.
    let reqs: Vec<_> = [(hm, hp), (hm, hp), (nm, np)]
        .into_iter()
        .map(|(m, p)| {
            let url = part_url(m, p);
            std::thread::spawn(move || get(&url))
        })
        .collect();
    let got: Vec<Got> = reqs
        .into_iter()
        .map(|h| h.join().expect("part thread"))
        .collect();
    for g in &got {
        assert_eq!(g.status, 200, "{}", String::from_utf8_lossy(&g.body));
        assert_eq!(g.content_type, "audio/mp4");
        assert!(g.cache_control.contains("immutable"));
        assert_eq!(samples(&g.body), 20, "a whole 400 ms part");
    }
    eprintln!(
        "hinted part after {:?}, the next one after {:?}",
        got[0].took, got[2].took
    );
    // Held about one part duration (the request went out right after the
    // previous part), not answered at once and not held to the limit.
    assert!(
        got[0].took >= Duration::from_millis(200) && got[0].took < Duration::from_millis(1500),
        "the hinted part took {:?}",
        got[0].took
    );
    assert!(got[2].took > got[0].took + Duration::from_millis(200));
    assert!(got[2].took < Duration::from_millis(2500));
    assert_eq!(
        got[0].body, got[1].body,
        "every request gets the same bytes"
    );
    assert_ne!(got[0].body, got[2].body);
    // Now published: the same bytes, at once.
    let again = get(&part_url(hm, hp));
    assert_eq!(again.status, 200);
    assert_eq!(again.body, got[0].body);
    assert!(again.took < Duration::from_millis(300));

    // Further ahead than the part after the hint, a part index no segment
    // has, or a segment still in progress: 404 at once, never cached.
    let edge = hint(&text(&get(&live)));
    let (fm, fp) = after(edge.0, edge.1, 3);
    // A segment still in progress, with at least 0.8 s to go so that it
    // cannot complete during these requests (else the next one).
    let in_progress = if edge.1 + 2 < PARTS {
        edge.0
    } else {
        edge.0 + 1
    };
    for url in [
        part_url(fm, fp),
        part_url(edge.0 + 5, 0),
        part_url(edge.0, 7),
        part_url(0, 5),
        format!("{base}/seg-{in_progress}.m4s"),
        format!("{base}/seg-{}.m4s", edge.0 + 2),
    ] {
        let g = get(&url);
        assert_eq!(g.status, 404, "{url}");
        assert!(
            g.took < Duration::from_millis(300),
            "{url} took {:?}",
            g.took
        );
        assert_eq!(g.cache_control, "no-store", "{url}");
    }
}
