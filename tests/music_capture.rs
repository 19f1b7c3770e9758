//! The web app's microphone in a music space, in real headless Chromium:
//! the page asks for no echo cancellation, noise suppression or automatic
//! gain control and for 2 channels (the live track's settings say so), and
//! a stereo source (a fake microphone playing 440 Hz left, 1 kHz right)
//! reaches `live.opus` with both channels distinct (Chromium encodes
//! stereo because the WHIP answer asks for it). In a speech space the same
//! page keeps the browser's voice processing on. And the web player plays
//! what it hears back: a music space in stereo (440 Hz left only, 1 kHz
//! right only), a speech space's mono program the same in both ears.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn e2e_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e");
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is required: run scripts/test"
    );
    dir
}

fn space(s: &Server, music: bool) -> (String, String) {
    let (id, host, _) = live_space_with(s, serde_json::json!({"title": "Capture", "music": music}));
    (id, host)
}

/// Starts the page's microphone; returns the script (still publishing for
/// `hold` s) whose first output line is the track's settings.
fn browser_mic(s: &Server, id: &str, token: &str, wav: &Path, hold: u32) -> std::process::Child {
    Command::new("node")
        .arg("music_capture.mjs")
        .current_dir(e2e_dir())
        .env("ORIGIN", s.url(""))
        .env("SPACE", id)
        .env("TOKEN", token)
        .env("WAV", wav)
        .env("HOLD", hold.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node")
}

fn settings(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("the script");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no settings from Chromium: {text}"))
}

fn stereo(url: &str, seconds: f32) -> (Vec<f32>, Vec<f32>) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i", url, "-t"])
        .arg(seconds.to_string())
        .args(["-f", "f32le", "-ac", "2", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    let s: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (
        s.iter().step_by(2).copied().collect(),
        s.iter().skip(1).step_by(2).copied().collect(),
    )
}

#[test]
fn a_music_space_page_captures_stereo_without_voice_processing() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("lr.wav");
    let ok = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "2", "-b", "16"])
        .arg(&wav)
        .args(["synth", "60", "sine", "440", "sine", "1000", "gain", "-6"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "sox is required: run scripts/test");
    let s = Server::start(&[]);

    let (speech, speech_host) = space(&s, false);
    let st = settings(browser_mic(&s, &speech, &speech_host, &wav, 0));
    eprintln!("speech space: {st}");
    assert_eq!(st["echoCancellation"], true, "{st}");
    assert_eq!(st["autoGainControl"], true, "{st}");
    assert_eq!(st["noiseSuppression"], true, "{st}");

    let (id, host) = space(&s, true);
    let child = browser_mic(&s, &id, &host, &wav, 15);
    let before = metric(&s, "amphi_ingest_packets_total");
    wait_for(30, "the browser's audio", || {
        metric(&s, "amphi_ingest_packets_total") >= before + 150.0
    });
    let (l, r) = stereo(&near_live(&s.url(&format!("/spaces/{id}/live.opus"))), 4.0);
    let st = settings(child);
    eprintln!("music space: {st}");
    assert_eq!(st["echoCancellation"], false, "{st}");
    assert_eq!(st["autoGainControl"], false, "{st}");
    assert_eq!(st["noiseSuppression"], false, "{st}");
    assert_eq!(st["channelCount"], 2, "{st}");
    let (l, r) = (&l[48_000..], &r[48_000..]);
    let (l440, r1k) = (tone_share(l, 440.0), tone_share(r, 1000.0));
    let (l1k, r440) = (tone_share(l, 1000.0), tone_share(r, 440.0));
    eprintln!(
        "live.opus from Chromium: left 440 Hz {l440:.2} (1 kHz {l1k:.2}), right 1 kHz {r1k:.2} (440 Hz {r440:.2})"
    );
    assert!(l440 > 0.8 && l1k < 0.1, "left {l440} {l1k}");
    assert!(r1k > 0.8 && r440 < 0.1, "right {r1k} {r440}");
}

/// What a listener's page plays, per channel: the levels (dB) of 440 Hz
/// and 1 kHz in the left and the right channel after the web player, and
/// the player's channel count.
fn browser_ears(s: &Server, id: &str) -> serde_json::Value {
    let out = Command::new("node")
        .arg("stereo_listen.mjs")
        .current_dir(e2e_dir())
        .env("ORIGIN", s.url(""))
        .env("SPACE", id)
        .env("FREQS", "440,1000")
        .stderr(Stdio::inherit())
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stereo_listen.mjs failed: {text}");
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no levels from Chromium: {text}"))
}

fn db(v: &serde_json::Value, side: &str, k: usize) -> f64 {
    // -Infinity (silence) comes back from JSON.stringify as null.
    v[side][k].as_f64().unwrap_or(f64::NEG_INFINITY)
}

#[test]
fn the_web_player_plays_a_music_space_in_stereo_and_a_speech_space_in_both_ears() {
    let s = Server::start(&[]);

    // Music: 440 Hz left, 1 kHz right (aiortc, stereo Opus as the answer asks).
    let (id, host) = space(&s, true);
    let _src = publish_tone_with(
        &s,
        &id,
        &host,
        440,
        40,
        &["--right-freq", "1000", "--honor-fmtp"],
    );
    wait_for_audio(&s, 100.0);
    let v = browser_ears(&s, &id);
    eprintln!("music space, web player: {v}");
    assert_eq!(v["channels"], 2, "{v}");
    let (l440, l1k) = (db(&v, "left", 0), db(&v, "left", 1));
    let (r440, r1k) = (db(&v, "right", 0), db(&v, "right", 1));
    assert!(l440 > -40.0 && r1k > -40.0, "tones not heard: {v}");
    assert!(l1k < l440 - 40.0, "1 kHz leaks into the left: {v}");
    assert!(r440 < r1k - 40.0, "440 Hz leaks into the right: {v}");

    // Speech (mono program): the same tone in both ears, 1 channel player.
    let (id, host) = space(&s, false);
    let before = metric(&s, "amphi_ingest_packets_total");
    let _src = publish_tone(&s, &id, &host, 440, 40);
    wait_for_audio(&s, before + 100.0);
    let v = browser_ears(&s, &id);
    eprintln!("speech space, web player: {v}");
    assert_eq!(v["channels"], 1, "{v}");
    let (l440, r440) = (db(&v, "left", 0), db(&v, "right", 0));
    assert!(l440 > -40.0, "{v}");
    assert!((l440 - r440).abs() < 1.0, "not the same in both ears: {v}");
}
