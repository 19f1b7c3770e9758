//! Speakers in over WHIP from an independent WebRTC stack (aiortc), one
//! mixed program out: what a speaker sends is what a listener decodes with
//! ffmpeg, and the server — not the client — decides who is heard.

mod common;

use common::{
    Server, call, ffmpeg_listen, join, live_space, metric, publish_tone, tone_share, wait_for,
    wait_for_audio,
};

/// Packets received at the mixer, one number per speaker.
fn speaker_packets(s: &Server) -> Vec<f64> {
    call("GET", &s.url("/metrics"), None, None)
        .body
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("amphi_speaker_packets_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn the_tone_a_speaker_sends_is_the_tone_a_listener_decodes() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Tone");
    let mut speaker = publish_tone(&s, &id, &host, 440, 60);
    wait_for_audio(&s, 50.0);

    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{id}/live.opus")), 3.0);
    assert!(
        pcm.len() >= 48_000 * 2,
        "ffmpeg decoded only {} samples",
        pcm.len()
    );
    let at440 = tone_share(&pcm, 440.0);
    let at880 = tone_share(&pcm, 880.0);
    assert!(at440 > 0.5, "440 Hz share {at440}");
    assert!(at880 < 0.05, "880 Hz share {at880}");
    // Per-speaker counters are exported.
    assert!(metric(&s, "amphi_speaker_packets_total") > 0.0);
    speaker.kill();
}

#[test]
fn muted_speaker_is_silent_and_two_speakers_mix_unclipped() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Two voices");
    let sp = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let (pid, tok) = join(&s, &id, "Second");
    assert_eq!(call("POST", &sp("/hand"), Some(&tok), None).status, 200);
    assert_eq!(
        call("POST", &sp(&format!("/stage/{pid}")), Some(&host), None).status,
        200
    );

    // Killed at the end: 60 s outlasts the test on a loaded machine.
    let mut a = publish_tone(&s, &id, &host, 440, 60);
    let mut b = publish_tone(&s, &id, &tok, 1000, 60);
    // Both voices reach the mixer, for long enough that the listener's
    // burst of history already holds the two.
    wait_for(20, "two speakers at the mixer", || {
        let per_speaker = speaker_packets(&s);
        per_speaker.len() == 2 && per_speaker.iter().all(|n| *n >= 100.0)
    });

    let url = s.url(&format!("/spaces/{id}/live.opus"));
    let both = ffmpeg_listen(&url, 2.5);
    let (s440, s1000) = (tone_share(&both, 440.0), tone_share(&both, 1000.0));
    assert!(
        s440 > 0.2 && s1000 > 0.2,
        "both tones expected: 440 {s440}, 1000 {s1000}"
    );
    let peak = both.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(peak < 1.0, "the mix clipped: peak {peak}");

    // The host mutes the second speaker: the server drops their audio.
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/participants/{pid}/mute")),
            Some(&host),
            None
        )
        .status,
        200
    );
    // Skip the listener burst (up to 0.5 s of history) before judging.
    let after = ffmpeg_listen(&url, 2.5);
    let tail = &after[after.len().min(48_000)..];
    let (m440, m1000) = (tone_share(tail, 440.0), tone_share(tail, 1000.0));
    assert!(m440 > 0.5, "host tone gone after muting the other: {m440}");
    assert!(
        m1000 < 0.02,
        "a muted speaker is heard: 1000 Hz share {m1000}"
    );
    assert!(
        metric(&s, "amphi_rtc_dropped_inaudible_total") > 0.0
            || metric(&s, "amphi_rtc_dropped_inaudible") > 0.0
    );
    a.kill();
    b.kill();
}

#[test]
fn whip_refuses_listeners_and_bad_offers() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Refusals");
    let whip = s.url(&format!("/api/v1/spaces/{id}/whip"));
    let (_, listener) = join(&s, &id, "Lee");
    let client = reqwest::blocking::Client::new();
    let post = |token: Option<&str>, ct: &str, body: &str| {
        let mut r = client
            .post(&whip)
            .header("content-type", ct)
            .body(body.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let res = r.send().unwrap();
        let status = res.status().as_u16();
        (status, res.text().unwrap_or_default())
    };
    assert_eq!(post(None, "application/sdp", "v=0").0, 401);
    assert_eq!(post(Some(&listener), "application/sdp", "v=0").0, 403);
    assert_eq!(post(Some(&host), "application/json", "{}").0, 415);
    let (st, body) = post(Some(&host), "application/sdp", "this is not SDP\r\n");
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("\"error\""));
    let pcmu_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n";
    let (st, body) = post(Some(&host), "application/sdp", pcmu_only);
    assert!(st == 400 || st == 406, "{st} {body}");
    assert!(body.to_lowercase().contains("opus"), "{body}");
    // CORS preflight for browsers on another origin.
    let r = client
        .request(reqwest::Method::OPTIONS, &whip)
        .send()
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");

    // Garbage UDP at the WebRTC port is dropped and counted; nothing breaks.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let junk: Vec<u8> = (0..(i % 200 + 1)).map(|j| (i * 31 + j * 7) as u8).collect();
        let _ = sock.send_to(&junk, ("127.0.0.1", s.port));
    }
    wait_for(5, "garbage datagrams counted", || {
        metric(&s, "amphi_rtc_garbage_datagrams_total") > 0.0
    });
    assert_eq!(call("GET", &s.url("/healthz"), None, None).status, 200);
}

#[test]
fn speakers_hear_each_other_but_not_themselves() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Return audio");
    let sp = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let (pid, tok) = join(&s, &id, "Second");
    assert_eq!(
        call("POST", &sp(&format!("/stage/{pid}")), Some(&host), None).status,
        404
    );
    assert_eq!(call("POST", &sp("/hand"), Some(&tok), None).status, 200);
    assert_eq!(
        call("POST", &sp(&format!("/stage/{pid}")), Some(&host), None).status,
        200
    );
    let out = s.data.join("host-return.s16");
    let out_arg = out.to_string_lossy().to_string();
    let mut a = common::publish_tone_with(&s, &id, &host, 440, 60, &["--return-out", &out_arg]);
    let mut b = publish_tone(&s, &id, &tok, 1000, 60);
    // Judge the return audio written once both speakers reach the mixer.
    wait_for(20, "two speakers at the mixer", || {
        speaker_packets(&s).len() == 2
    });
    let len = || std::fs::metadata(&out).map_or(0, |m| m.len() as usize);
    let from = len() & !1;
    wait_for(20, "return audio for the host", || {
        len() > from + 48_000 * 2 * 4
    });
    a.kill();
    b.kill();
    let bytes = std::fs::read(&out).unwrap().split_off(from);
    let pcm: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let tail = &pcm[pcm.len() / 3..];
    let (own, other) = (tone_share(tail, 440.0), tone_share(tail, 1000.0));
    assert!(
        other > 0.5,
        "the host does not hear the other speaker: {other}"
    );
    assert!(own < 0.05, "the host hears themselves: {own}");
}

#[test]
fn a_lone_speakers_silent_return_is_sent_one_frame_in_twenty() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Alone");
    let out = s.data.join("alone-return.s16");
    let out_arg = out.to_string_lossy().to_string();
    let _a = common::publish_tone_with(&s, &id, &host, 440, 60, &["--return-out", &out_arg]);
    wait_for(20, "the speaker at the mixer", || {
        speaker_packets(&s).len() == 1
    });
    wait_for(20, "a silent return skipped", || {
        metric(&s, "amphi_mix_minus_dtx_skipped_total") > 0.0
    });
    // Over 3 s alone: the program goes on at 50 frames a second, and the
    // speaker (who has nobody to hear) is sent one silent frame in 20.
    let (out0, skip0, frames0) = (
        metric(&s, "amphi_rtc_packets_out_total"),
        metric(&s, "amphi_mix_minus_dtx_skipped_total"),
        metric(&s, "amphi_program_frames_total"),
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let sent = metric(&s, "amphi_rtc_packets_out_total") - out0;
    let skipped = metric(&s, "amphi_mix_minus_dtx_skipped_total") - skip0;
    let frames = metric(&s, "amphi_program_frames_total") - frames0;
    println!("in 3 s: {frames} program frames, {sent} return packets sent, {skipped} skipped");
    assert!(frames >= 130.0, "{frames} program frames");
    assert!((4.0..=12.0).contains(&sent), "{sent} return packets in 3 s");
    assert!(skipped >= 120.0, "{skipped} skipped");
}
