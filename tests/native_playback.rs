//! `live.opus` in a player that buffers before it starts: real headless
//! Chromium's own `<audio>` element (scripts/e2e/audio_start.mjs) starts
//! within a second of `src` being set and keeps playing in real time,
//! thanks to the connect burst (`--ogg-burst-ms`); ffmpeg, a player that
//! does not wait, receives the burst at once too.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, live_space, publish_tone};

fn chromium_audio_start(url: &str) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e");
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is required: run scripts/test (or: cd scripts/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)"
    );
    let out = Command::new("node")
        .arg("audio_start.mjs")
        .current_dir(&dir)
        .env("URL", url)
        .env("WAIT", "10")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "no report from Chromium: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn chromium_audio_element_starts_within_a_second() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Native playback");
    // Real audio (32 kbit/s), and long enough for the burst's 8 s.
    let mut speaker = publish_tone(&s, &id, &host, 440, 300);
    common::wait_for_audio(&s, 1.0);
    std::thread::sleep(Duration::from_secs(9));
    let url = s.url(&format!("/spaces/{id}/live.opus"));
    let mut starts = Vec::new();
    for _ in 0..3 {
        let r = chromium_audio_start(&url);
        eprintln!("chromium <audio>: {r}");
        assert!(r["error"].is_null(), "{r}");
        let ms = r["started_ms"].as_f64().unwrap_or(f64::INFINITY);
        starts.push(ms);
        // Then it plays on in real time (no stall after the burst).
        let rate = r["rate"].as_f64().unwrap_or(0.0);
        assert!(rate > 0.9, "playback stalled after starting: {r}");
        // The latency cost docs/live-ws.md states: about the burst.
        let behind = r["behind_s"].as_f64().unwrap_or(f64::INFINITY);
        assert!(behind < 9.5, "plays {behind} s behind live: {r}");
    }
    assert!(
        starts.iter().all(|ms| *ms < 1000.0),
        "<audio> started after {starts:?} ms"
    );

    // ffmpeg gets the burst at once: 8 s of program in well under 8 s.
    let t0 = Instant::now();
    let pcm = common::ffmpeg_decode(&url, 6.0);
    assert!(pcm.len() >= 6 * 48_000 - 4800, "{} samples", pcm.len());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "6 s of program took {:?}: no burst",
        t0.elapsed()
    );
    speaker.kill();
}

#[test]
fn live_opus_on_a_kept_alive_connection_is_streamed_on_it() {
    let s = Server::start(&[]);
    let (id, _host, _) = live_space(&s, "Kept alive");
    // One client, one pooled connection: the page first, then the stream
    // (as a browser's <audio> in a page the node served), answered at once
    // without a redirect.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(1)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = client.get(s.url("/healthz")).send().expect("page");
    assert!(page.status().is_success());
    let _ = page.text();
    let mut r = client
        .get(s.url(&format!("/spaces/{id}/live.opus?x=1")))
        .send()
        .expect("stream");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "audio/ogg");
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut r, &mut head).expect("body");
    assert_eq!(&head, b"OggS");
}

#[test]
fn a_short_burst_is_configurable() {
    // --ogg-burst-ms 0: one page, the old low-latency behaviour.
    let s = Server::start(&["--ogg-burst-ms", "0"]);
    let (id, host, _) = live_space(&s, "Short burst");
    let mut speaker = publish_tone(&s, &id, &host, 440, 20);
    common::wait_for_audio(&s, 1.0);
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    let pcm = common::ffmpeg_decode(&s.url(&format!("/spaces/{id}/live.opus")), 2.0);
    assert!(pcm.len() >= 2 * 48_000 - 4800, "{} samples", pcm.len());
    assert!(
        t0.elapsed() > Duration::from_millis(1500),
        "2 s of program came in {:?}: a long burst was sent",
        t0.elapsed()
    );
    speaker.kill();
}

#[test]
fn a_request_can_ask_for_a_shorter_burst() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Per-request burst");
    let mut speaker = publish_tone(&s, &id, &host, 440, 20);
    common::wait_for_audio(&s, 1.0);
    std::thread::sleep(Duration::from_secs(4));
    // The whole default burst (8 s, but 4 s of program so far) at once...
    let url = s.url(&format!("/spaces/{id}/live.opus"));
    let t0 = Instant::now();
    let pcm = common::ffmpeg_decode(&url, 3.0);
    assert!(pcm.len() >= 3 * 48_000 - 4800);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // ...or 200 ms of it, for a player that wants to be near live.
    let t0 = Instant::now();
    let pcm = common::ffmpeg_decode(&format!("{url}?burst_ms=200"), 3.0);
    assert!(pcm.len() >= 3 * 48_000 - 4800);
    assert!(
        t0.elapsed() > Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    speaker.kill();
}
