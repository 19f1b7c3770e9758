//! Clips: a participant cuts the last 30 s of a live space's program
//! (`POST /api/v1/spaces/{id}/clips`). A clip of a 440 Hz tone is 30 ± 1 s
//! of 440 Hz when ffmpeg decodes it (its Ogg file and its HLS VOD), on the
//! node's own disk and in S3 (moto on loopback); clips are rate-limited
//! per participant and per space (429 + Retry-After); the share page
//! `/c/{clip}` unfurls (OpenGraph/Twitter tags), its plays are counted, and
//! a signed `clip.created` webhook reaches the operator's receiver.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// Publishes 440 Hz and waits until more than 30 s of it reached the mixer.
fn a_space_with_31_s_of_tone(s: &Server) -> (String, String, Peer) {
    let (id, host, _) = live_space(s, "Clip <me> & share");
    let peer = publish_tone(s, &id, &host, 440, 60);
    wait_for(30, "the tone to reach the mixer", || {
        metric(s, "amphi_ingest_packets_total") >= 50.0
    });
    // 31 s of packets from now on: the 30 s history is full of tone.
    std::thread::sleep(std::time::Duration::from_secs(31));
    (id, host, peer)
}

fn clip(s: &Server, id: &str, token: &str) -> Resp {
    call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/clips")),
        Some(token),
        None,
    )
}

/// [`clip`] from another loopback address (`from`, e.g. 127.0.0.2): each
/// network has its own clip bucket.
fn clip_from(s: &Server, id: &str, token: &str, from: &str) -> u16 {
    reqwest::blocking::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .post(s.url(&format!("/api/v1/spaces/{id}/clips")))
        .bearer_auth(token)
        .send()
        .expect("clip")
        .status()
        .as_u16()
}

/// ffmpeg decodes `url` whole: (seconds decoded, seconds of 440 Hz).
fn measure(url: &str) -> (f64, f64) {
    let pcm = ffmpeg_decode(url, 3600.0);
    let secs = pcm.len() as f64 / 48_000.0;
    (secs, seconds_of_tone(&pcm, 440.0))
}

fn assert_a_30_s_tone(s: &Server, view: &serde_json::Value) {
    for (what, path) in [("ogg", &view["audio"]), ("hls", &view["hls"])] {
        let path = path.as_str().expect("a URL");
        let (secs, tone) = measure(&s.url(path));
        eprintln!("clip {what}: {secs:.2} s decoded, {tone:.1} s of 440 Hz");
        assert!((secs - 30.0).abs() <= 1.0, "{what}: {secs} s, not 30 ± 1");
        assert!(tone >= 29.0, "{what}: only {tone} s of 440 Hz in {secs} s");
    }
}

#[test]
fn a_clip_of_a_tone_is_thirty_seconds_of_it_and_clipping_is_rate_limited() {
    // The receiver is on loopback: a self-hoster's setting.
    let s = Server::start(&["--webhook-allow-private"]);
    // The operator's webhook receiver (it checks the signatures).
    let tmp = tempfile::tempdir().unwrap();
    let got = tmp.path().join("got.jsonl");
    let port = free_port();
    let r = call(
        "POST",
        &s.url("/api/v1/webhooks"),
        Some(ADMIN),
        Some(
            serde_json::json!({"url": format!("http://127.0.0.1:{port}/"), "events": ["clip.created"]}),
        ),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = r.body["webhook"]["secret"].as_str().unwrap().to_owned();
    let _receiver = Peer(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/webhook_receiver.py"))
            .args(["--port", &port.to_string(), "--secret", &secret])
            .arg("--out")
            .arg(&got)
            .stdout(Stdio::null())
            .spawn()
            .expect("the webhook receiver"),
    );
    let (id, host, _peer) = a_space_with_31_s_of_tone(&s);

    // A listener (any participant) clips.
    let (_, ann) = join(&s, &id, "Ann");
    let r = clip(&s, &id, &ann);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view = r.body["clip"].clone();
    let cid = view["id"].as_str().expect("clip id").to_owned();
    assert_eq!(view["page"], format!("/c/{cid}"));
    assert_eq!(view["audio"], format!("/c/{cid}/audio.opus"));
    assert_a_30_s_tone(&s, &view);
    wait_for(20, "the clip.created webhook", || {
        std::fs::read_to_string(&got).is_ok_and(|t| {
            t.lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                v["type"] == "clip.created" && v["verified"] == true && l.contains(&cid)
            })
        })
    });

    // The share page: player, title (escaped), tags for a link preview.
    let page = reqwest::blocking::Client::new()
        .get(s.url(&format!("/c/{cid}")))
        .header("host", "clips.example")
        .send()
        .expect("the page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().unwrap();
    for tag in [
        "<meta property=\"og:title\" content=\"Clip: Clip &lt;me&gt; &amp; share\">".to_owned(),
        format!("<meta property=\"og:url\" content=\"http://clips.example/c/{cid}\">"),
        format!("<meta property=\"og:audio\" content=\"http://clips.example/c/{cid}/audio.opus\">"),
        format!("<meta property=\"og:image\" content=\"http://clips.example/s/{id}/card.png\">"),
        "<meta name=\"twitter:card\" content=\"summary_large_image\">".to_owned(),
        format!("<audio controls preload=\"metadata\" src=\"/c/{cid}/audio.opus\""),
    ] {
        assert!(html.contains(&tag), "no {tag} in\n{html}");
    }
    assert!(
        !html.contains("clip-transcript"),
        "no captions, no transcript"
    );
    assert_eq!(
        call("GET", &s.url("/c/00000000000000ff"), None, None).status,
        404
    );

    // The two reads above (Ogg and HLS) were plays.
    let st = call(
        "GET",
        &s.url(&format!("/api/v1/spaces/{id}/stats")),
        Some(&host),
        None,
    );
    assert_eq!(st.status, 200, "{:?}", st.body);
    assert!(
        st.body["clip_plays"].as_u64().unwrap() >= 2,
        "{:?}",
        st.body
    );
    assert_eq!(metric(&s, "amphi_clips_total"), 1.0);

    // Per participant: two at once, then one per 30 s.
    assert_eq!(clip(&s, &id, &ann).status, 201);
    let r = clip(&s, &id, &ann);
    assert_eq!(r.status, 429, "{:?}", r.body);
    let retry: u32 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");

    // Per space: six at once, whoever asks (from their own addresses: an
    // address has three at once; tests/hostile_round3.rs).
    let (_, bob) = join(&s, &id, "Bob");
    let (_, cy) = join(&s, &id, "Cy");
    let (_, dee) = join(&s, &id, "Dee");
    for (t, from) in [
        (&bob, "127.0.0.2"),
        (&bob, "127.0.0.2"),
        (&cy, "127.0.0.3"),
        (&cy, "127.0.0.3"),
    ] {
        assert_eq!(clip_from(&s, &id, t, from), 201);
    }
    assert_eq!(
        clip_from(&s, &id, &dee, "127.0.0.4"),
        429,
        "the space's seventh clip"
    );

    // Not a participant: 401.
    assert_eq!(clip(&s, &id, "nonsense").status, 401);
}

const BUCKET: &str = "amphi-clips";

/// moto's S3 server on loopback, killed by PID on drop.
struct S3(Child, u16);

impl S3 {
    fn start() -> S3 {
        let moto = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(moto, "moto is required: run scripts/test");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server");
        let s3 = S3(child, port);
        wait_for(30, "moto to answer", || {
            reqwest::blocking::get(s3.url("/")).is_ok_and(|r| r.status().is_success())
        });
        let r = reqwest::blocking::Client::new()
            .put(s3.url(&format!("/{BUCKET}")))
            .send()
            .expect("create the bucket");
        assert!(r.status().is_success());
        s3
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.1)
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let body = reqwest::blocking::get(self.url(&format!(
            "/{BUCKET}?list-type=2&prefix={prefix}&max-keys=1000"
        )))
        .expect("list")
        .text()
        .expect("list body");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_clip_in_s3_is_served_from_the_bucket() {
    let s3 = S3::start();
    let data = tempfile::tempdir().unwrap();
    let endpoint = s3.url("");
    let s = Server::start_with_env(
        data.path(),
        &["--recordings-url", &format!("s3://{BUCKET}/rec")],
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let (id, host, _peer) = a_space_with_31_s_of_tone(&s);
    let r = clip(&s, &id, &host);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view = r.body["clip"].clone();
    let cid = view["id"].as_str().unwrap().to_owned();
    let keys = s3.keys(&format!("rec/clips/{cid}/"));
    for k in ["clip.json", "clip.opus", "hls/clip.m3u8", "hls/init.mp4"] {
        assert!(
            keys.contains(&format!("rec/clips/{cid}/{k}")),
            "{k} not in the bucket: {keys:?}"
        );
    }
    assert!(keys.iter().any(|k| k.ends_with(".m4s")), "{keys:?}");
    // Nothing of it on the node's disk.
    assert!(!data.path().join("recordings/clips").exists());
    assert_a_30_s_tone(&s, &view);
    assert_eq!(
        call("GET", &s.url(&format!("/c/{cid}")), None, None).status,
        200
    );
}
