//! Recordings in S3-compatible object storage (`--recordings-url`), against
//! a real S3 server on loopback (moto's, from PyPI; `scripts/test` installs
//! it): the frame segments and the replay are objects in the bucket, not
//! files on the node, and a killed node's uploaded segments survive.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

/// moto's S3 server, killed by PID on drop.
struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    fn start() -> S3 {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (run scripts/test: it installs moto)");
        let s3 = S3 { child, port };
        wait_for(
            20,
            "the S3 server (is moto installed? scripts/test installs it)",
            || reqwest::blocking::get(s3.url("/")).is_ok_and(|r| r.status().is_success()),
        );
        let c = reqwest::blocking::Client::new();
        let r = c
            .put(s3.url("/amphi-test"))
            .send()
            .expect("create the bucket");
        assert!(r.status().is_success(), "{:?}", r.status());
        s3
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The keys under `prefix` in the bucket (S3 ListObjectsV2).
    fn keys(&self, prefix: &str) -> Vec<String> {
        let body = reqwest::blocking::get(self.url(&format!(
            "/amphi-test?list-type=2&prefix={prefix}&max-keys=1000"
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

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url("")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(s3: &S3, data: &std::path::Path) -> Server {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(data, &["--recordings-url", "s3://amphi-test/rec"], &env)
}

#[test]
fn a_recording_in_s3_is_the_tone_and_survives_a_kill() {
    let s3 = S3::start();
    let data = tempfile::tempdir().unwrap();
    let mut s = node(&s3, data.path());
    let (id, host, _) = live_space(&s, "s3");
    let mut peer = publish_tone(&s, &id, &host, 440, 60);
    wait_for_audio(&s, 50.0);
    std::thread::sleep(std::time::Duration::from_secs(6));
    // Segments are uploaded as they close (every 2 s).
    let segments = s3.keys(&format!("rec/{id}/frames/"));
    assert!(segments.len() >= 2, "segments in S3: {segments:?}");

    // kill -9 and restart: the recording goes on in the same objects.
    s.kill();
    peer.kill();
    let s = node(&s3, data.path());
    let _peer = publish_tone(&s, &id, &host, 440, 60);
    wait_for_audio(&s, 50.0);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let secs = end_and_measure_recording(&s, &id, &host, 440.0);
    println!("replay from S3: {secs:.1} s of tone across a kill -9");
    assert!(secs > 5.0, "only {secs} s of the tone in the replay");

    // The replay is made of objects in the bucket, and nothing on disk.
    let keys = s3.keys(&format!("rec/{id}/"));
    for want in [
        "recording.opus",
        "hls/init.mp4",
        "hls/replay.m3u8",
        "complete",
    ] {
        assert!(
            keys.contains(&format!("rec/{id}/{want}")),
            "{want} missing from S3: {keys:?}"
        );
    }
    assert!(!data.path().join("recordings").join(&id).exists());

    // Range requests and the HLS VOD read from S3.
    let r = reqwest::blocking::Client::new()
        .get(s.url(&format!("/spaces/{id}/recording.opus")))
        .header("Range", "bytes=0-99")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().unwrap().len(), 100);
    let playlist = call(
        "GET",
        &s.url(&format!("/spaces/{id}/hls/replay.m3u8")),
        None,
        None,
    );
    assert_eq!(playlist.status, 200);
    let text = playlist.body.as_str().unwrap_or_default().to_owned();
    let first = text
        .lines()
        .find(|l| l.ends_with(".m4s"))
        .expect("a segment in the VOD playlist");
    let seg = call(
        "GET",
        &s.url(&format!("/spaces/{id}/hls/{first}")),
        None,
        None,
    );
    assert_eq!(seg.status, 200, "{first}");
}
