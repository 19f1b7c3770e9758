//! Noise suppression on the server, end to end: a WHIP publisher (aiortc,
//! which the server cleans as it would OBS or GStreamer) sends hiss; a
//! space created with `"noise_suppression": true` plays it on `live.opus`
//! far quieter than a space without; and turning it on for one speaker
//! (`POST .../participants/{pid}/noise_suppression`, by the speaker or a
//! moderator, not a listener) lowers that speaker's hiss while live.

mod common;

use common::*;

fn db(x: &[f32]) -> f32 {
    let e: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    10.0 * e.max(1e-12).log10()
}

/// The level of 3 s of the space's program, as ffmpeg decodes it.
fn level(s: &Server, id: &str) -> f32 {
    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{id}/live.opus")), 3.5);
    db(&pcm[pcm.len().min(24_000)..])
}

fn space(s: &Server, noise_suppression: bool) -> (String, String, String) {
    let (id, host, pid) = live_space_with(
        s,
        serde_json::json!({"title": "Fan", "noise_suppression": noise_suppression}),
    );
    let r = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    assert_eq!(
        r.body["noise_suppression"], noise_suppression,
        "{:?}",
        r.body
    );
    (id, host, pid)
}

fn hiss(s: &Server, id: &str, token: &str) -> Peer {
    publish_tone_with(
        s,
        id,
        token,
        440,
        40,
        &["--amplitude", "0", "--hiss", "0.1", "--honor-fmtp"],
    )
}

#[test]
fn hiss_is_lowered_for_a_space_or_a_speaker_that_asks() {
    let s = Server::start(&[]);
    let (plain, plain_host, plain_pid) = space(&s, false);
    let (clean, clean_host, _) = space(&s, true);
    let _a = hiss(&s, &plain, &plain_host);
    let _b = hiss(&s, &clean, &clean_host);
    wait_for_audio(&s, 200.0);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (off, on) = (level(&s, &plain), level(&s, &clean));
    let bypassed = metric(&s, "amphi_denoise_bypassed_ticks_total");
    assert_eq!(
        bypassed, 0.0,
        "suppression was bypassed (the node over budget)"
    );
    eprintln!(
        "hiss on live.opus: {off:.1} dBFS without suppression, {on:.1} dBFS in the space that asks for it ({:.1} dB lower)",
        off - on
    );
    assert!(off > -45.0, "the hiss should be heard: {off}");
    assert!(off - on >= 10.0, "lowered only {:.1} dB", off - on);

    // One speaker's flag: a listener may not set it, the speaker may.
    let (_, listener) = join(&s, &plain, "Lis");
    let path = format!("/api/v1/spaces/{plain}/participants/{plain_pid}/noise_suppression");
    let body = serde_json::json!({"on": true});
    let r = call("POST", &s.url(&path), Some(&listener), Some(body.clone()));
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = call("POST", &s.url(&path), Some(&plain_host), Some(body));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["stage"][0]["noise_suppression"], true,
        "{:?}",
        r.body
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let later = level(&s, &plain);
    eprintln!(
        "after the speaker's own flag: {later:.1} dBFS ({:.1} dB lower)",
        off - later
    );
    assert!(off - later >= 10.0, "lowered only {:.1} dB", off - later);
}
