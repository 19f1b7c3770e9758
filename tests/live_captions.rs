//! Live captions end to end: espeak-ng speaks known sentences, aiortc
//! publishes them over WHIP into a live captioned space, and the cues
//! arrive on the events channel, attributed to the right speaker, with a
//! measured word error rate and latency; a muted speaker gets no caption;
//! after the end the transcript beside the replay matches the live cues
//! and ffmpeg reads its WebVTT; hls.js in Chromium shows the live WebVTT
//! subtitles rendition of the LL-HLS master playlist.
//!
//! Needs the model (`scripts/fetch-captions-model target/captions-model`,
//! run by scripts/test): without it the tests skip, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ADMIN, Server, call, join, live_space_with, whip_client};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, connect};

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AMPHI_TEST_CAPTIONS_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/captions-model"));
    if dir.join("model.bin").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no captions model in {} (scripts/fetch-captions-model fetches it)",
            dir.display()
        );
        None
    }
}

/// espeak-ng's voice as raw mono s16le 48 kHz in `path`; returns its length in s.
fn speak(text: &str, path: &Path) -> f64 {
    let st = Command::new("sh")
        .arg("-c")
        .arg("espeak-ng -v en-us -s 150 --stdout \"$0\" | sox -t wav - -t raw -r 48000 -e signed -b 16 -c 1 \"$1\"")
        .arg(text)
        .arg(path)
        .status()
        .expect("espeak-ng and sox (scripts/test installs them)");
    assert!(st.success(), "espeak-ng failed");
    std::fs::metadata(path).unwrap().len() as f64 / 96_000.0
}

/// The end of the voice in a raw s16le 48 kHz file (espeak-ng pads quiet).
fn voice_end(path: &Path) -> f64 {
    let b = std::fs::read(path).unwrap();
    let last = b
        .chunks_exact(2)
        .rposition(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() > 300)
        .unwrap_or(0);
    last as f64 / 48_000.0
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn publish_speech(
    s: &Server,
    id: &str,
    token: &str,
    file: &Path,
    epoch: f64,
    at: f64,
    seconds: f64,
) -> common::Peer {
    let child = Command::new("python3")
        .arg(whip_client())
        .args(["--url", &s.url(&format!("/api/v1/spaces/{id}/whip"))])
        .args(["--token", token])
        .args(["--seconds", &format!("{seconds:.1}")])
        .arg("--loopback-only")
        .arg("--honor-fmtp")
        .args(["--speech", file.to_str().unwrap()])
        .args(["--speech-at", &format!("{at:.3}")])
        .args(["--epoch", &format!("{epoch:.3}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn whip client");
    common::Peer(child)
}

type Ws = tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
>;

fn events(s: &Server, id: &str, token: &str) -> Ws {
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/spaces/{id}/events?token={token}",
        s.port
    );
    let (mut ws, _) = connect(url.as_str()).expect("events upgrade");
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_mut() {
        t.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    ws
}

/// Caption messages (with their arrival time) until `until`.
fn captions_until(ws: &mut Ws, until: Instant, out: &mut Vec<(f64, Value)>) {
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "caption" {
                    eprintln!("cue: {}", v["caption"]);
                    out.push((now_s(), v["caption"].clone()));
                }
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("events: {e}"),
        }
    }
}

fn get_text(url: &str) -> String {
    let r = reqwest::blocking::get(url).expect("GET");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.text().unwrap()
}

fn wer(reference: &str, text: &str) -> f64 {
    amphi_captions::wer::word_error_rate(reference, text)
}

const HOST_SAYS: &str = "Please send the quarterly report to the finance team before Friday.";
const GUEST_SAYS: &str = "Thank you all for joining this audio room today.";
const MUTED_SAYS: &str = "This sentence must never become a caption.";

#[test]
fn two_speakers_get_their_own_captions_a_muted_one_none_and_the_transcript_matches() {
    let Some(model) = model_dir() else { return };
    let s = Server::start(&["--captions-model", model.to_str().unwrap()]);
    let (id, host, host_pid) = live_space_with(
        &s,
        json!({"title": "Captions", "captions": true, "host_name": "Ada"}),
    );
    let r = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    assert_eq!(r.body["captions"], true);
    assert_eq!(r.body["captions_available"], true, "{:?}", r.body);
    let (guest_pid, guest) = join(&s, &id, "Grace");
    let mut ws = events(&s, &id, &guest);
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/stage/{guest_pid}")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);

    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.raw"),
        dir.path().join("b.raw"),
        dir.path().join("c.raw"),
    );
    speak(HOST_SAYS, &a);
    speak(GUEST_SAYS, &b);
    speak(MUTED_SAYS, &c);
    // Turns: the host at 2 s, the guest 2 s after the host's voice ends;
    // the guest, muted, speaks again 3 s after that.
    let host_at = 2.0;
    let host_end = host_at + voice_end(&a);
    let guest_at = host_end + 2.0;
    let guest_end = guest_at + voice_end(&b);
    let muted_at = guest_end + 3.0;
    let muted_end = muted_at + voice_end(&c);
    let total = muted_end + 3.0;
    let epoch = now_s() + 1.0;
    let _p1 = publish_speech(&s, &id, &host, &a, epoch, host_at, total);
    let mut p2 = publish_speech(&s, &id, &guest, &b, epoch, guest_at, total);

    let mut cues = Vec::new();
    let t0 = Instant::now();
    // Until the guest's turn has had its caption time.
    let wait = Duration::from_secs_f64((epoch + guest_end + 6.0 - now_s()).max(0.0));
    captions_until(&mut ws, t0 + wait, &mut cues);
    // The LL-HLS master playlist has the WebVTT rendition; its segments
    // (aligned with the program's) hold the cues, and ffmpeg reads them.
    let master = get_text(&s.url(&format!("/spaces/{id}/hls/master.m3u8")));
    assert!(
        master.contains("#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\"")
            && master.contains("SUBTITLES=\"subs\"\nlive.m3u8"),
        "{master}"
    );
    let subs = get_text(&s.url(&format!("/spaces/{id}/hls/captions.m3u8")));
    let program = get_text(&s.url(&format!("/spaces/{id}/hls/live.m3u8")));
    let vtt_segments: Vec<&str> = subs.lines().filter(|l| l.ends_with(".vtt")).collect();
    assert!(vtt_segments.len() >= 4, "{subs}");
    // The same media sequence as the program's.
    let first_msn = |p: &str| {
        p.lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
            .map(str::to_owned)
    };
    assert_eq!(first_msn(&subs), first_msn(&program));
    let with_host = vtt_segments
        .iter()
        .map(|u| s.url(&format!("/spaces/{id}/hls/{u}")))
        .find(|u| get_text(u).contains("quarterly report"))
        .expect("a subtitle segment with the host's words");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", &with_host, "-f", "srt", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("quarterly report"));

    // The host mutes the guest before their next sentence.
    let r = call(
        "POST",
        &s.url(&format!(
            "/api/v1/spaces/{id}/participants/{guest_pid}/mute"
        )),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let wait = Duration::from_secs_f64((epoch + muted_end + 5.0 - now_s()).max(0.0));
    captions_until(&mut ws, Instant::now() + wait, &mut cues);
    p2.kill();

    let of = |pid: &str| -> Vec<&(f64, Value)> {
        cues.iter()
            .filter(|(_, c)| c["participant_id"] == pid)
            .collect()
    };
    let text_of = |pid: &str| -> String {
        of(pid)
            .iter()
            .map(|(_, c)| c["text"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let host_text = text_of(&host_pid);
    let guest_text = text_of(&guest_pid);
    let host_wer = wer(HOST_SAYS, &host_text);
    let guest_wer = wer(GUEST_SAYS, &guest_text);
    eprintln!("host: {host_text:?} WER {:.1} %", host_wer * 100.0);
    eprintln!("guest: {guest_text:?} WER {:.1} %", guest_wer * 100.0);
    assert!(
        !of(&host_pid).is_empty(),
        "no caption of the host: {cues:?}"
    );
    assert!(
        !of(&guest_pid).is_empty(),
        "no caption of the guest: {cues:?}"
    );
    assert_eq!(of(&host_pid)[0].1["name"], "Ada");
    assert_eq!(of(&guest_pid)[0].1["name"], "Grace");
    assert!(of(&host_pid).iter().all(|(_, c)| c["final"] == true));
    assert!(host_wer < 0.15, "host WER {:.1} %", host_wer * 100.0);
    assert!(guest_wer < 0.15, "guest WER {:.1} %", guest_wer * 100.0);
    // The muted sentence never became a caption.
    assert!(
        wer(MUTED_SAYS, &guest_text) > 0.8,
        "the muted speaker was captioned: {guest_text:?}"
    );
    // Program time: the guest spoke after the host.
    let start = |pid: &str| of(pid)[0].1["start_ms"].as_u64().unwrap();
    assert!(start(&guest_pid) > start(&host_pid) + 3_000);
    // Latency, from the end of each voice (as scheduled) to its cue.
    let lat_host = of(&host_pid)[0].0 - (epoch + host_end);
    let lat_guest = of(&guest_pid)[0].0 - (epoch + guest_end);
    eprintln!("caption latency: host {lat_host:.2} s, guest {lat_guest:.2} s");
    assert!(
        lat_host < 3.0 && lat_guest < 3.0,
        "latency {lat_host:.2} / {lat_guest:.2} s"
    );
    eprintln!(
        "server p95 latency {:.2} s, captions CPU {:.2} s, phrases {}",
        common::metric(&s, "amphi_captions_latency_p95_seconds"),
        common::metric(&s, "amphi_captions_cpu_seconds"),
        common::metric(&s, "amphi_captions_phrases_total"),
    );

    // The live cues, by API.
    let live = call(
        "GET",
        &s.url(&format!("/api/v1/spaces/{id}/captions")),
        None,
        None,
    );
    assert_eq!(live.status, 200);
    assert_eq!(live.body["cues"].as_array().unwrap().len(), cues.len());

    // A clip of the last 30 s carries the cues said in it: its share page
    // shows the guest's words under her name.
    let clip = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/clips")),
        Some(&host),
        None,
    );
    assert_eq!(clip.status, 201, "{:?}", clip.body);
    let page = get_text(&s.url(clip.body["clip"]["page"].as_str().unwrap()));
    assert!(page.contains("clip-transcript"), "no transcript: {page}");
    assert!(
        page.contains("Grace"),
        "the guest is not in the clip's transcript"
    );
    let first_word = of(&guest_pid)[0].1["text"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| w.len() > 2 && w.chars().all(char::is_alphanumeric))
        .unwrap()
        .to_owned();
    assert!(
        page.contains(&first_word),
        "{first_word:?} not in the clip's page"
    );

    // After the end: the transcript beside the replay is the live cues.
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut transcript = None;
    common::wait_for(30, "the transcript", || {
        let r = call(
            "GET",
            &s.url(&format!("/spaces/{id}/transcript.json")),
            None,
            None,
        );
        if r.status == 200 {
            transcript = Some(r.body);
            true
        } else {
            false
        }
    });
    let transcript = transcript.unwrap();
    let stored: Vec<(String, String)> = transcript["cues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["participant_id"].as_str().unwrap().to_owned(),
                c["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut by_start: Vec<&Value> = cues.iter().map(|(_, c)| c).collect();
    by_start.sort_by_key(|c| c["start_ms"].as_u64());
    let live: Vec<(String, String)> = by_start
        .iter()
        .map(|c| {
            (
                c["participant_id"].as_str().unwrap().to_owned(),
                c["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(stored, live, "the transcript is the live cues");
    // ffmpeg reads the WebVTT transcript: as many subtitles as cues.
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            &s.url(&format!("/spaces/{id}/transcript.vtt")),
            "-f",
            "srt",
            "-",
        ])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srt = String::from_utf8_lossy(&out.stdout);
    assert_eq!(srt.matches(" --> ").count(), stored.len(), "{srt}");
    assert!(srt.contains("quarterly report"), "{srt}");
}

#[test]
fn without_a_model_the_space_says_why_captions_are_unavailable() {
    let s = Server::start(&[]);
    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "No model", "captions": true})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["space"]["captions"], true);
    assert_eq!(r.body["space"]["captions_available"], false);
    assert!(
        r.body["space"]["captions_unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("--captions-model")
    );
    // The host turns them off (and on); a listener may not.
    let id = r.body["space"]["id"].as_str().unwrap().to_owned();
    let host = r.body["host"]["token"].as_str().unwrap().to_owned();
    let r = call(
        "PATCH",
        &s.url(&format!("/api/v1/spaces/{id}")),
        Some(&host),
        Some(json!({"captions": false})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["captions"], false);
    let (_, listener) = join(&s, &id, "Lee");
    let r = call(
        "PATCH",
        &s.url(&format!("/api/v1/spaces/{id}")),
        Some(&listener),
        Some(json!({"captions": true})),
    );
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    assert_eq!(r.body["captions"], false);
}

fn chromium(
    phase: &str,
    base: &str,
    id: &str,
    token: &str,
    envs: &[(&str, &str)],
) -> std::process::Child {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e");
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is required: run scripts/test (or: cd scripts/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)"
    );
    Command::new("node")
        .arg("captions.mjs")
        .current_dir(&dir)
        .env("PHASE", phase)
        .env("BASE", base)
        .env("ID", id)
        .env("TOKEN", token)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run node")
}

fn report(child: std::process::Child) -> Value {
    let out = child.wait_with_output().expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no report from Chromium: {stdout}"))
}

#[test]
fn the_web_app_shows_live_captions_and_searches_the_transcript_of_the_replay() {
    let Some(model) = model_dir() else { return };
    let s = Server::start(&["--captions-model", model.to_str().unwrap()]);
    let (id, host, _) = live_space_with(
        &s,
        json!({"title": "Captions in the browser", "captions": true, "host_name": "Ada"}),
    );
    let (_, listener) = join(&s, &id, "Lee");
    let base = s.url("");
    let base = base.trim_end_matches('/');
    let page = chromium("live", base, &id, &listener, &[("EXPECT", "quarterly")]);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    speak(HOST_SAYS, &a);
    let epoch = now_s() + 1.0;
    let mut p = publish_speech(&s, &id, &host, &a, epoch, 5.0, 5.0 + voice_end(&a) + 4.0);
    let live = report(page);
    eprintln!("live page: {live}");
    assert!(
        live["caption"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Ada: ")
            && live["caption"]
                .as_str()
                .unwrap_or_default()
                .contains("quarterly report"),
        "{live}"
    );
    assert_eq!(live["hidden_after_toggle"], true, "{live}");
    assert_eq!(live["errors"], json!([]), "{live}");
    let _ = p.0.wait();
    p.kill();

    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cue = {
        let mut cue = Value::Null;
        common::wait_for(30, "the transcript", || {
            let r = call(
                "GET",
                &s.url(&format!("/spaces/{id}/transcript.json")),
                None,
                None,
            );
            cue = r.body["cues"][0].clone();
            r.status == 200
        });
        cue
    };
    let replay = report(chromium(
        "replay",
        base,
        &id,
        &listener,
        &[("SEARCH", "FINANCE")],
    ));
    eprintln!("replay page: {replay}");
    assert_eq!(replay["matches"], 1, "{replay}");
    assert!(
        replay["first"]
            .as_str()
            .unwrap_or_default()
            .contains("finance team"),
        "{replay}"
    );
    let at = replay["replay_time"].as_f64().unwrap_or(-1.0);
    let want = cue["start_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (at - want).abs() < 0.5,
        "seeked to {at} s, the cue starts at {want} s"
    );
    // Nothing on the ended page fails (a listener's page no longer asks
    // for the host's analytics).
    assert!(
        replay["http_errors"].as_array().unwrap().is_empty(),
        "{replay}"
    );
    assert!(replay["errors"].as_array().unwrap().is_empty(), "{replay}");
}

/// hls.js (scripts/e2e/node_modules, no CDN) in Chromium plays the live
/// master playlist of a captioned space, selects its subtitles rendition
/// and gets the spoken sentence as a cue in the `<audio>`'s text track.
#[test]
fn hls_js_in_chromium_reads_the_webvtt_captions_rendition() {
    let Some(model) = model_dir() else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e");
    assert!(
        dir.join("node_modules/hls.js/package.json").exists(),
        "hls.js is required: run scripts/test (or: cd scripts/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)"
    );
    let s = Server::start(&["--captions-model", model.to_str().unwrap()]);
    let (id, host, _) = live_space_with(
        &s,
        json!({"title": "Captions over HLS", "captions": true, "host_name": "Ada"}),
    );
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.raw");
    speak(HOST_SAYS, &a);
    let epoch = now_s() + 1.0;
    // The sentence from 16 s on, then quiet long enough for its segment to
    // leave the subtitle playlist's hold-back and reach the player.
    let mut p = publish_speech(&s, &id, &host, &a, epoch, 16.0, 16.0 + voice_end(&a) + 30.0);
    let base = s.url("");
    let base = base.trim_end_matches('/');
    let src = format!("{base}/spaces/{id}/hls/master.m3u8");
    let master = get_text(&src);
    assert!(
        master.contains("TYPE=SUBTITLES") && master.contains("SUBTITLES=\"subs\""),
        "{master}"
    );
    // A live playlist without a segment is a fatal `levelEmptyError` to
    // hls.js: the player starts once the first one is there.
    common::wait_for(15, "a first subtitle segment", || {
        get_text(&format!("{base}/spaces/{id}/hls/captions.m3u8")).contains(".vtt")
    });
    // The player starts 10 s behind the edge (LIVE_SYNC): the subtitles
    // playlist ends ~6 s behind it (hold-back), and hls.js loads subtitle
    // segments only from its playhead on, so the stream must be older than
    // that when it starts.
    let age = now_s() - epoch;
    std::thread::sleep(Duration::from_secs_f64((12.0 - age).max(0.0)));
    let out = Command::new("node")
        .arg("hls_captions.mjs")
        .current_dir(&dir)
        .env("BASE", base)
        .env("SRC", &src)
        .env("EXPECT", "quarterly")
        .env("TIMEOUT_MS", "45000")
        .output()
        .expect("run node");
    p.kill();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
            panic!(
                "no report from Chromium: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("hls.js: {r}");
    // The rendition as the master playlist names it.
    assert_eq!(
        r["hls_tracks"],
        json!([{"name": "Captions", "lang": "en", "default": true}]),
        "{r}"
    );
    let tracks = r["text_tracks"].as_array().expect("text tracks");
    let track = tracks
        .iter()
        .find(|t| t["kind"] == "subtitles" || t["kind"] == "captions")
        .unwrap_or_else(|| panic!("no subtitles text track on the <audio>: {r}"));
    assert_eq!(track["label"], "Captions", "{r}");
    assert_eq!(track["language"], "en", "{r}");
    assert_eq!(track["mode"], "showing", "{r}");
    assert_eq!(r["found"], true, "no cue with the sentence's words: {r}");
    let cue = track["cues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["text"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("quarterly")
        })
        .expect("the cue");
    let text = cue["text"].as_str().unwrap().to_lowercase();
    assert!(
        text.contains("finance") || text.contains("report"),
        "a second word of the sentence: {r}"
    );
    assert_eq!(r["fatal"], json!([]), "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");
}
