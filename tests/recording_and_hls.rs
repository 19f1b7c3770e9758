//! Recording while live, instant replay, LL-HLS read by ffmpeg, and a
//! kill -9 in the middle that loses at most the segment in progress.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, call, end_space, live_space, publish_tone, seconds_of_tone, wait_for};

fn ffprobe_duration(url: &str) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .expect("ffprobe is required: run scripts/test");
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a duration")
}

fn decode(url: &str, extra: &[&str]) -> Vec<f32> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin"])
        .args(extra)
        .args(["-i", url, "-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg is required: run scripts/test");
    assert!(
        out.status.success(),
        "ffmpeg {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn a_recorded_tone_is_replayed_at_once_with_range_and_hls() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Recorded");
    let mut speaker = publish_tone(&s, &id, &host, 440, 10);

    // While live: LL-HLS plays in ffmpeg and carries the tone. The
    // segments that count are those cut once the speaker is heard.
    let segments = || {
        let r = call(
            "GET",
            &s.url(&format!("/spaces/{id}/hls/live.m3u8")),
            None,
            None,
        );
        r.body.as_str().unwrap_or("").matches("#EXTINF").count()
    };
    common::wait_for_audio(&s, 1.0);
    let before = segments();
    wait_for(15, "a few HLS segments of speech", || {
        segments() >= before + 3
    });
    let live = call(
        "GET",
        &s.url(&format!("/spaces/{id}/hls/live.m3u8")),
        None,
        None,
    );
    let text = live.body.as_str().unwrap().to_owned();
    assert!(
        text.contains("#EXT-X-PART:") && text.contains("#EXT-X-PRELOAD-HINT"),
        "{text}"
    );
    assert!(
        live.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=1")
    );
    let pcm = decode(
        &s.url(&format!("/spaces/{id}/hls/live.m3u8")),
        &["-live_start_index", "-2", "-t", "3"],
    );
    assert!(
        seconds_of_tone(&pcm, 440.0) > 1.0,
        "no tone in the live HLS: {} s of {}",
        seconds_of_tone(&pcm, 440.0),
        pcm.len() as f64 / 48_000.0
    );
    // Blocking reload: asking for the next part waits for it.
    let t0 = Instant::now();
    let next = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-"))
        .unwrap();
    let (msn, part) = next.trim_end_matches(".m4s\"").split_once('-').unwrap();
    let r = call(
        "GET",
        &s.url(&format!(
            "/spaces/{id}/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={part}"
        )),
        None,
        None,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .as_str()
            .unwrap()
            .contains(&format!("part-{msn}-{part}.m4s"))
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let r = call(
        "GET",
        &s.url(&format!("/spaces/{id}/hls/live.m3u8?_HLS_msn=99999")),
        None,
        None,
    );
    assert_eq!(r.status, 400);

    // The recording is not published while live.
    assert_eq!(
        call(
            "GET",
            &s.url(&format!("/spaces/{id}/recording.opus")),
            None,
            None
        )
        .status,
        409
    );

    // Speak for 10 s, then end.
    wait_for(20, "the speaker to finish its 10 s", || {
        speaker.0.try_wait().unwrap().is_some()
    });
    speaker.kill();
    end_space(&s, &id, &host);
    let ended = Instant::now();
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(2, "the recording within 2 s of the end", || {
        call("GET", &rec, None, None).status == 200
    });
    eprintln!("recording available {:?} after the end", ended.elapsed());

    let pcm = decode(&rec, &[]);
    let tone = seconds_of_tone(&pcm, 440.0);
    assert!(
        (tone - 10.0).abs() <= 1.0,
        "the recording holds {tone} s of the 10 s tone"
    );
    let total = ffprobe_duration(&rec);
    assert!(
        total >= tone && total < tone + 8.0,
        "recording duration {total}"
    );

    // Range requests.
    let client = reqwest::blocking::Client::new();
    let r = client
        .get(&rec)
        .header("Range", "bytes=0-99")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(
        r.headers()["content-range"]
            .to_str()
            .unwrap()
            .starts_with("bytes 0-99/")
    );
    assert_eq!(r.bytes().unwrap().len(), 100);
    assert_eq!(
        client
            .get(&rec)
            .header("Range", "bytes=abc")
            .send()
            .unwrap()
            .status(),
        416
    );
    assert_eq!(
        client
            .get(&rec)
            .header("Range", "bytes=999999999-")
            .send()
            .unwrap()
            .status(),
        416
    );

    // The HLS VOD has the same duration.
    let vod = s.url(&format!("/spaces/{id}/hls/replay.m3u8"));
    let vod_duration = ffprobe_duration(&vod);
    assert!(
        (vod_duration - total).abs() < 0.5,
        "vod {vod_duration} vs ogg {total}"
    );
    assert!(seconds_of_tone(&decode(&vod, &[]), 440.0) > 8.5);
    // Audio-only fMP4 is `audio/mp4` (RFC 4337), the playlist an HLS one.
    let content_type = |path: &str| {
        let r = client
            .get(s.url(&format!("/spaces/{id}/hls/{path}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.headers()["content-type"].to_str().unwrap().to_owned()
    };
    assert_eq!(content_type("replay.m3u8"), "application/vnd.apple.mpegurl");
    assert_eq!(content_type("init.mp4"), "audio/mp4");
    assert_eq!(content_type("replay/seg-0.m4s"), "audio/mp4");

    // Unknown spaces get 404.
    assert_eq!(
        call(
            "GET",
            &s.url("/spaces/0000000000000000/recording.opus"),
            None,
            None
        )
        .status,
        404
    );
}

#[test]
fn kill_9_mid_space_keeps_what_was_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(tmp.path(), &[]);
    let (id, host, _) = live_space(&s, "Crash");
    let mut speaker = publish_tone(&s, &id, &host, 440, 30);
    // 1 s of speech, then 8 s more.
    common::wait_for_audio(&s, 450.0);
    s.kill();
    speaker.kill();
    let s = Server::start_in(tmp.path(), &[]);
    let tone = common::end_and_measure_recording(&s, &id, &host, 440.0);
    assert!(
        tone >= 6.0,
        "only {tone} s of the 8 s before the crash were kept"
    );
}
