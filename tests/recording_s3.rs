//! Recordings in S3-compatible object storage (`--recordings-url`), against
//! a real S3 server on loopback (moto's, from PyPI; `scripts/test` installs
//! it): the frame segments and the replay are objects in the bucket, not
//! files on the node; the replay is read back from the bucket (whole, by
//! `Range`, as HLS); a killed node's uploaded segments survive; and a store
//! that fails never stops the live space.

mod common;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;

const BUCKET: &str = "amphi-test";

/// moto's S3 server, killed by PID on drop.
struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    /// Starts moto on a free loopback port and creates the bucket.
    fn start() -> S3 {
        let s3 = S3::start_on(free_port());
        s3.create_bucket();
        s3
    }

    /// Starts moto on `port` (empty: moto keeps its objects in memory).
    fn start_on(port: u16) -> S3 {
        let moto = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            moto,
            "moto (a local S3 server, `pip install 'moto[server]'`) is required: \
             run scripts/test, it installs scripts/requirements.txt"
        );
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server");
        let s3 = S3 { child, port };
        wait_for(30, "the S3 server (moto) to answer", || {
            reqwest::blocking::get(s3.url("/")).is_ok_and(|r| r.status().is_success())
        });
        s3
    }

    fn create_bucket(&self) {
        let r = reqwest::blocking::Client::new()
            .put(self.url(&format!("/{BUCKET}")))
            .send()
            .expect("create the bucket");
        assert!(r.status().is_success(), "create the bucket: {}", r.status());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The keys under `prefix` in the bucket (S3 ListObjectsV2, straight
    /// from the server, not through amphi).
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

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url("")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of the S3 server that can be shut, to play an
/// outage of the store without losing what moto holds: shutting it cuts
/// every connection and drops new ones at once.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    fn new(upstream: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (o, c) = (open.clone(), conns.clone());
        // The accept loop ends with the test process.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut cs = c.lock().unwrap();
                cs.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Gate { port, open, conns }
    }

    fn shut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn node(s3: &S3, data: &std::path::Path) -> Server {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(
        data,
        &["--recordings-url", &format!("s3://{BUCKET}/rec")],
        &env,
    )
}

/// Nothing of the recordings on the node's own disk.
fn nothing_on_disk(data: &std::path::Path) {
    let dir = data.join("recordings");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "recordings on the local disk: {files:?}");
}

fn ffprobe_duration(url: &str) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration"])
        .args(["-of", "csv=p=0", url])
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

#[test]
fn a_tone_recorded_to_s3_is_replayed_from_the_bucket() {
    let s3 = S3::start();
    let data = tempfile::tempdir().unwrap();
    let mut s = node(&s3, data.path());
    let (id, host, _) = live_space(&s, "s3");
    let mut speaker = publish_tone(&s, &id, &host, 440, 8);
    wait_for_audio(&s, 50.0);
    // Segments are uploaded as they close (every 2 s), while live.
    wait_for(10, "two frame segments in the bucket", || {
        s3.keys(&format!("rec/{id}/frames/")).len() >= 2
    });
    wait_for(20, "the speaker to finish its 8 s", || {
        speaker.0.try_wait().unwrap().is_some()
    });
    speaker.kill();

    end_space(&s, &id, &host);
    let ended = Instant::now();
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(2, "the replay within 2 s of the end", || {
        call("GET", &rec, None, None).status == 200
    });
    let ready = ended.elapsed();
    let tone = seconds_of_tone(&ffmpeg_listen(&rec, 3600.0), 440.0);
    println!("replay from S3 ready {ready:?} after the end; {tone:.1} s of the 8 s tone");
    assert!(
        (tone - 8.0).abs() <= 1.0,
        "the recording holds {tone} s of the 8 s tone"
    );

    // The objects are in the bucket, and nothing is on the node's disk.
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
    assert!(
        keys.iter().filter(|k| k.ends_with(".m4s")).count() >= 4,
        "{keys:?}"
    );
    nothing_on_disk(data.path());

    // Range requests are ranged reads of the object.
    let client = reqwest::blocking::Client::new();
    let whole = client.get(&rec).send().unwrap().bytes().unwrap();
    let r = client
        .get(&rec)
        .header("Range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 100-199/{}", whole.len())
    );
    assert_eq!(r.bytes().unwrap(), whole.slice(100..200));
    let r = client
        .get(&rec)
        .header("Range", "bytes=-50")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap(), whole.slice(whole.len() - 50..));
    for bad in ["bytes=999999999-", "bytes=abc"] {
        let r = client.get(&rec).header("Range", bad).send().unwrap();
        assert_eq!(r.status(), 416, "{bad}");
    }

    // The HLS VOD, from the bucket, plays in ffmpeg with the same audio.
    let total = ffprobe_duration(&rec);
    let vod = s.url(&format!("/spaces/{id}/hls/replay.m3u8"));
    let vod_duration = ffprobe_duration(&vod);
    assert!(
        (vod_duration - total).abs() < 0.5,
        "vod {vod_duration} s vs ogg {total} s"
    );
    let vod_tone = seconds_of_tone(&ffmpeg_listen(&vod, 3600.0), 440.0);
    assert!(vod_tone >= 7.0, "{vod_tone} s of the tone in the HLS VOD");

    // The recorder's metrics count the uploads.
    assert!(metric(&s, "amphi_recording_segments_total") >= 4.0);
    assert!(metric(&s, "amphi_recording_bytes_total") > 10_000.0);
    assert!(metric(&s, "amphi_recording_write_microseconds_total") > 0.0);
    assert_eq!(metric(&s, "amphi_recording_errors_total"), 0.0);
    assert_eq!(metric(&s, "amphi_recording_finalized_total"), 1.0);

    // A restarted node finds the replay in the bucket: served at once, not
    // cut again.
    s.kill();
    let s = node(&s3, data.path());
    let view = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    assert!(!view.body["replay"].is_null(), "{:?}", view.body);
    let again = reqwest::blocking::get(s.url(&format!("/spaces/{id}/recording.opus")))
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(again, whole);
    assert_eq!(metric(&s, "amphi_recording_finalized_total"), 0.0);
    nothing_on_disk(data.path());
}

#[test]
fn a_recording_in_s3_is_the_tone_and_survives_a_kill() {
    let s3 = S3::start();
    let data = tempfile::tempdir().unwrap();
    let mut s = node(&s3, data.path());
    let (id, host, _) = live_space(&s, "s3");
    let mut peer = publish_tone(&s, &id, &host, 440, 60);
    // 1 s of speech, then 6 s more.
    wait_for_audio(&s, 350.0);
    // Segments are uploaded as they close (every 2 s).
    let segments = s3.keys(&format!("rec/{id}/frames/"));
    assert!(segments.len() >= 2, "segments in S3: {segments:?}");

    // kill -9 and restart: the recording goes on in the same objects.
    s.kill();
    peer.kill();
    let s = node(&s3, data.path());
    let _peer = publish_tone(&s, &id, &host, 440, 60);
    // 1 s of speech, then 3 s more.
    wait_for_audio(&s, 200.0);
    let secs = end_and_measure_recording(&s, &id, &host, 440.0);
    println!("replay from S3: {secs:.1} s of tone across a kill -9");
    // About 6 s before the kill (less the segment in progress) and 3 s
    // after the restart.
    assert!(secs > 5.0, "only {secs} s of the tone in the replay");
    let kept = s3.keys(&format!("rec/{id}/frames/"));
    for seg in &segments {
        assert!(kept.contains(seg), "{seg} lost: {kept:?}");
    }
    assert!(s3.keys(&format!("rec/{id}/complete")).len() == 1);
    nothing_on_disk(data.path());
}

#[test]
fn a_failing_s3_store_never_stops_the_live_space() {
    let mut s3 = S3::start();
    let port = s3.port;
    let data = tempfile::tempdir().unwrap();
    let s = node(&s3, data.path());
    let (id, host, _) = live_space(&s, "S3 down");
    // The store goes away before the first segment closes.
    s3.stop();
    let _speaker = publish_tone(&s, &id, &host, 440, 40);
    wait_for(20, "a failed segment upload", || {
        metric(&s, "amphi_recording_errors_total") >= 1.0
    });
    // The space is live and audible regardless.
    wait_for_audio(&s, 50.0);
    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{id}/live.opus")), 2.0);
    assert!(
        tone_share(&pcm, 440.0) > 0.5,
        "the live space suffered from the storage failure"
    );
    assert_eq!(metric(&s, "amphi_recording_dropped_frames_total"), 0.0);

    // The store comes back (empty: moto keeps nothing): recording resumes.
    let s3 = S3::start_on(port);
    s3.create_bucket();
    let before = metric(&s, "amphi_recording_segments_total");
    wait_for(15, "segments uploaded again", || {
        metric(&s, "amphi_recording_segments_total") >= before + 2.0
    });
    let tone = end_and_measure_recording(&s, &id, &host, 440.0);
    assert!(
        tone >= 3.0,
        "the recording kept {tone} s after the store came back"
    );
    assert_eq!(s3.keys(&format!("rec/{id}/complete")).len(), 1);
}

/// S3 is shared storage for a cluster: when the origin of a live space
/// dies, the node that takes the space over continues the same recording
/// in the same bucket, and every node serves the replay from it.
#[test]
fn a_node_taking_over_a_space_continues_its_recording_in_s3() {
    let s3 = S3::start();
    let nats = Nats::start();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize, name: &str| {
        Server::start_with_env(
            dirs[i].path(),
            &[
                "--nats",
                &nats.url(),
                "--node-id",
                name,
                "--recordings-url",
                &format!("s3://{BUCKET}/rec"),
            ],
            &env,
        )
    };
    let mut a = start(0, "a");
    let b = start(1, "b");
    let c = start(2, "c");
    let (id, host, _) = live_space(&a, "takeover");
    let mut peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);
    let stored = metric(&a, "amphi_recording_segments_total");
    wait_for(10, "A's segments in the bucket", || {
        s3.keys(&format!("rec/{id}/frames/")).len() >= 2
    });
    // A's part of the replay: three segments stored since the speaker was
    // heard (the one open at the kill is lost).
    wait_for(10, "A's segments of speech in the bucket", || {
        metric(&a, "amphi_recording_segments_total") >= stored + 3.0
    });
    let from_a = s3.keys(&format!("rec/{id}/frames/"));
    a.kill();
    peer.kill();
    // Once A's lease expires, the speaker reconnecting through B makes B
    // the origin.
    nats.wait_lease_expired(&id, "a");
    wait_for(10, "a survivor to take the space over", || {
        nats.lease(&id).is_some_and(|l| l.node != "a")
    });
    let _peer = publish_tone(&b, &id, &host, 440, 60);
    let t_takeover = Instant::now();
    let origin = if nats.lease(&id).expect("lease").node == "b" {
        &b
    } else {
        &c
    };
    wait_for_audio(origin, 50.0);
    assert_eq!(
        metric(&b, "amphi_takeovers_total") + metric(&c, "amphi_takeovers_total"),
        1.0
    );
    // 4 s more of speech at the new origin.
    wait_for_audio(origin, 250.0);

    let after_takeover = t_takeover.elapsed().as_secs_f64();
    let secs = end_and_measure_recording(&b, &id, &host, 440.0);
    println!("replay from S3: {secs:.1} s of tone; {after_takeover:.1} s since B took over");
    assert!(
        secs > after_takeover + 2.0,
        "the replay has {secs:.1} s of tone, not more than B's {after_takeover:.1} s"
    );
    let frames = s3.keys(&format!("rec/{id}/frames/"));
    for seg in &from_a {
        assert!(frames.contains(seg), "A's {seg} lost: {frames:?}");
    }
    assert!(frames.len() > from_a.len(), "no segment of B: {frames:?}");
    // C never mixed the space: it serves the replay from the bucket
    // itself, not by a redirect.
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let rec = format!("/spaces/{id}/recording.opus");
    wait_for(5, "C to know the space ended", || {
        no_redirect
            .get(c.url(&rec))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    for d in &dirs {
        nothing_on_disk(d.path());
    }
}

/// The store is down when the space ends: the replay is "being finalised"
/// (503) meanwhile, and cut as soon as the store is back, with all of the
/// tone recorded before.
#[test]
fn a_store_down_at_the_end_delays_the_replay_and_loses_nothing() {
    let s3 = S3::start();
    let gate = Gate::new(s3.port);
    let data = tempfile::tempdir().unwrap();
    let mut env = s3.env();
    env[0].1 = format!("http://127.0.0.1:{}", gate.port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with_env(
        data.path(),
        &["--recordings-url", &format!("s3://{BUCKET}/rec")],
        &env,
    );
    let (id, host, _) = live_space(&s, "S3 down at the end");
    let mut speaker = publish_tone(&s, &id, &host, 440, 8);
    wait_for_audio(&s, 50.0);
    wait_for(20, "the speaker to finish its 8 s", || {
        speaker.0.try_wait().unwrap().is_some()
    });
    speaker.kill();
    // Every segment closed while the speaker spoke is stored (the last one
    // closes at the end).
    let closed = (metric(&s, "amphi_program_frames_total") / 100.0).floor();
    wait_for(5, "the closed segments in the bucket", || {
        metric(&s, "amphi_recording_segments_total") >= closed
    });
    gate.shut();
    end_space(&s, &id, &host);
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(15, "a failed replay cut", || {
        metric(&s, "amphi_recording_errors_total") >= 1.0
    });
    assert_eq!(call("GET", &rec, None, None).status, 503);
    assert_eq!(metric(&s, "amphi_recording_finalized_total"), 0.0);

    gate.reopen();
    let back = Instant::now();
    wait_for(30, "the replay once the store is back", || {
        call("GET", &rec, None, None).status == 200
    });
    let tone = seconds_of_tone(&ffmpeg_listen(&rec, 3600.0), 440.0);
    println!(
        "replay cut {:?} after the store came back; {tone:.1} s of the 8 s tone",
        back.elapsed()
    );
    assert!(
        (tone - 8.0).abs() <= 1.0,
        "the recording holds {tone} s of the 8 s tone"
    );
    assert_eq!(metric(&s, "amphi_recording_finalized_total"), 1.0);
}
