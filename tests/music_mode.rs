//! Music mode (`"music": true` at creation): the WHIP answer asks a
//! source for stereo at 128 kbit/s, and a stereo source with a different
//! tone on each side comes out of `live.opus` (and the LL-HLS init, and
//! the recording) as two channels, each with its own tone, when ffmpeg
//! decodes them. A speech space still asks for mono.

mod common;

use std::process::Command;

use common::*;

/// Decodes `seconds` of `url` with ffmpeg as 48 kHz stereo: (left, right).
fn decode_stereo(url: &str, seconds: f32) -> (Vec<f32>, Vec<f32>) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i", url, "-t"])
        .arg(seconds.to_string())
        .args(["-f", "f32le", "-ac", "2", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg is required: run scripts/test");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// Channels ffprobe reads in `url`'s first audio stream.
fn channels(url: &str) -> u32 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0"])
        .args(["-show_entries", "stream=channels", "-of", "csv=p=0", url])
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn create(s: &Server, music: bool) -> (String, String) {
    let (id, host, _) = live_space_with(s, serde_json::json!({"title": "Set", "music": music}));
    let r = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    assert_eq!(r.body["music"], music, "{:?}", r.body);
    (id, host)
}

/// The WHIP answer's Opus fmtp for a minimal offer.
fn answer_fmtp(s: &Server, id: &str, token: &str) -> String {
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n";
    let r = reqwest::blocking::Client::new()
        .post(s.url(&format!("/api/v1/spaces/{id}/whip")))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .expect("whip");
    assert_eq!(r.status().as_u16(), 201);
    let sdp = r.text().unwrap();
    sdp.lines()
        .find(|l| l.starts_with("a=fmtp:111"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_stereo_source_keeps_its_two_channels_in_a_music_space() {
    let s = Server::start(&[]);
    let (speech, speech_host) = create(&s, false);
    let fmtp = answer_fmtp(&s, &speech, &speech_host);
    assert!(fmtp.contains("stereo=0;sprop-stereo=0"), "{fmtp}");
    assert!(fmtp.contains("maxaveragebitrate=32000"), "{fmtp}");

    let (id, host) = create(&s, true);
    let fmtp = answer_fmtp(&s, &id, &host);
    assert!(fmtp.contains("stereo=1;sprop-stereo=1"), "{fmtp}");
    assert!(fmtp.contains("maxaveragebitrate=128000"), "{fmtp}");

    let _peer = publish_tone_with(
        &s,
        &id,
        &host,
        440,
        30,
        &["--right-freq", "1000", "--honor-fmtp"],
    );
    wait_for_audio(&s, 100.0);
    let live = s.url(&format!("/spaces/{id}/live.opus"));
    assert_eq!(channels(&near_live(&live)), 2, "OpusHead of live.opus");
    let (l, r) = decode_stereo(&near_live(&live), 4.0);
    let (l, r) = (&l[48_000..], &r[48_000..]);
    let (l440, l1k) = (tone_share(l, 440.0), tone_share(l, 1000.0));
    let (r440, r1k) = (tone_share(r, 440.0), tone_share(r, 1000.0));
    eprintln!(
        "live.opus: left 440 Hz {l440:.2} / 1 kHz {l1k:.2} of its energy; \
         right 440 Hz {r440:.2} / 1 kHz {r1k:.2}"
    );
    assert!(l440 > 0.8 && l1k < 0.1, "left: {l440} {l1k}");
    assert!(r1k > 0.8 && r440 < 0.1, "right: {r440} {r1k}");

    // The LL-HLS init segment says two channels too.
    let init = reqwest::blocking::get(s.url(&format!("/spaces/{id}/hls/init.mp4")))
        .unwrap()
        .bytes()
        .unwrap();
    let dops = init
        .windows(4)
        .position(|w| w == b"dOps")
        .expect("a dOps box");
    assert_eq!(init[dops + 5], 2, "dOps OutputChannelCount");

    // And the recording.
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200);
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(10, "the recording", || {
        call("GET", &rec, None, None).status == 200
    });
    assert_eq!(channels(&rec), 2);
    let (l, r) = decode_stereo(&rec, 3600.0);
    let mid = l.len() / 2;
    let (l, r) = (&l[mid - 48_000..mid], &r[mid - 48_000..mid]);
    assert!(tone_share(l, 440.0) > 0.8, "recording left");
    assert!(tone_share(r, 1000.0) > 0.8, "recording right");
}
