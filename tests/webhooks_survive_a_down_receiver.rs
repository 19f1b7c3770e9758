//! Signed webhooks against real local receivers (Python's `hmac` checks
//! every signature): one is down for 30 s, and amphi is killed and
//! restarted meanwhile, yet it gets every event (ids deduplicate the
//! at-least-once retries); one answers only after 8 s, yet a third
//! receiver and the API are not delayed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn receiver(port: u16, secret: &str, out: &Path, delay: f32) -> Peer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/webhook_receiver.py");
    let child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--secret", secret])
        .arg("--out")
        .arg(out)
        .args(["--delay", &delay.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3 webhook receiver");
    // Until it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "receiver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Peer(child)
}

/// What a receiver got: (id, type, verified, received at) per request.
fn received(out: &Path) -> Vec<(String, String, bool, f64)> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["id"].as_str().unwrap_or("").to_owned(),
                v["type"].as_str().unwrap_or("").to_owned(),
                v["verified"].as_bool().unwrap_or(false),
                v["received_at"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn types(out: &Path) -> BTreeSet<String> {
    received(out).into_iter().map(|r| r.1).collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn add_endpoint(s: &Server, url: &str, events: Option<&[&str]>) -> (String, String) {
    let body = match events {
        Some(e) => json!({"url": url, "events": e}),
        None => json!({"url": url}),
    };
    let r = call("POST", &s.url("/api/v1/webhooks"), Some(ADMIN), Some(body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let w = &r.body["webhook"];
    let secret = w["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    (w["id"].as_str().expect("id").to_owned(), secret)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[test]
fn webhooks_survive_a_down_receiver_and_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let outs: PathBuf = tmp.path().to_path_buf();
    let (down_out, slow_out, fast_out) = (
        outs.join("down.jsonl"),
        outs.join("slow.jsonl"),
        outs.join("fast.jsonl"),
    );
    let (p_down, p_slow, p_fast) = (free_port(), free_port(), free_port());
    // The receivers are on loopback: a self-hoster's setting.
    let flags = ["--webhook-retry-base-ms", "500", "--webhook-allow-private"];
    let mut s = Server::start_in(&data, &flags);

    // Admin only.
    let r = call("GET", &s.url("/api/v1/webhooks"), None, None);
    assert_eq!(r.status, 401);
    let r = call(
        "POST",
        &s.url("/api/v1/webhooks"),
        Some(ADMIN),
        Some(json!({"url": "ftp://x/"})),
    );
    assert_eq!(r.status, 400);
    let r = call(
        "POST",
        &s.url("/api/v1/webhooks"),
        Some(ADMIN),
        Some(json!({"url": "http://x/", "events": ["space.exploded"]})),
    );
    assert_eq!(r.status, 400);

    let (down_id, down_secret) = add_endpoint(&s, &format!("http://127.0.0.1:{p_down}/hook"), None);
    let (_, slow_secret) = add_endpoint(&s, &format!("http://127.0.0.1:{p_slow}/hook"), None);
    let (_, fast_secret) = add_endpoint(
        &s,
        &format!("http://127.0.0.1:{p_fast}/hook"),
        Some(&["space.started", "space.ended", "recording.ready"]),
    );
    let r = call("GET", &s.url("/api/v1/webhooks"), Some(ADMIN), None);
    assert_eq!(r.body["webhooks"].as_array().map(Vec::len), Some(3));

    let _slow = receiver(p_slow, &slow_secret, &slow_out, 8.0);
    let _fast = receiver(p_fast, &fast_secret, &fast_out, 0.0);

    let events_at = Instant::now();
    let started_at = unix_now();
    let (id, host, _) = live_space(&s, "hooks");
    let (pid, _) = join(&s, &id, "Mallory");
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/participants/{pid}/remove")),
        Some(&host),
        Some(json!({"ban": true})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The API answers at once while the slow receiver holds its attempts.
    let t = Instant::now();
    let r = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    end_space(&s, &id, &host);

    // The fast receiver has its three events within seconds although the
    // slow one has not answered its first attempt yet, and space.started
    // reached it within 2 s.
    let want_fast: BTreeSet<String> = ["space.started", "space.ended", "recording.ready"]
        .map(String::from)
        .into();
    wait_for("the fast receiver", Duration::from_secs(6), || {
        types(&fast_out) == want_fast
    });
    let fast = received(&fast_out);
    assert!(fast.iter().all(|r| r.2), "signature not verified: {fast:?}");
    let started = fast
        .iter()
        .find(|r| r.1 == "space.started")
        .expect("started");
    assert!(
        started.3 - started_at < 2.0,
        "space.started took {:.1} s",
        started.3 - started_at
    );
    assert!(
        received(&slow_out).is_empty(),
        "the slow receiver answered already"
    );

    // amphi dies (kill -9) while the down receiver is still down, and
    // comes back: its queue is in the store.
    std::thread::sleep(Duration::from_secs(3));
    s.kill();
    let s = Server::start_in(&data, &flags);
    let r = call(
        "GET",
        &s.url(&format!("/api/v1/webhooks/{down_id}/deliveries")),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 200);
    let log = r.body["deliveries"].as_array().expect("log").clone();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(
        log.iter().all(|d| d["state"] == "pending"
            && d["attempts"].as_u64() >= Some(1)
            && d["last_error"].is_string()),
        "{log:?}"
    );

    // Down for 30 s from the first event, then up.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(events_at.elapsed()));
    let _down = receiver(p_down, &down_secret, &down_out, 0.0);
    let up_at = Instant::now();
    let want_all: BTreeSet<String> = [
        "space.started",
        "participant.removed",
        "space.ended",
        "recording.ready",
    ]
    .map(String::from)
    .into();
    wait_for(
        "the receiver that was down",
        Duration::from_secs(50),
        || types(&down_out) == want_all,
    );
    let caught_up = up_at.elapsed();
    let down = received(&down_out);
    assert!(down.iter().all(|r| r.2), "signature not verified: {down:?}");
    let ids: BTreeMap<String, String> = down.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    assert_eq!(ids.len(), 4, "one id per event: {down:?}");

    // The slow receiver got all four too (8 s each, 4 at a time).
    wait_for("the slow receiver", Duration::from_secs(30), || {
        types(&slow_out) == want_all
    });
    assert!(received(&slow_out).iter().all(|r| r.2));
    // Same event, same id, whichever endpoint.
    let slow_ids: BTreeSet<String> = received(&slow_out).into_iter().map(|r| r.0).collect();
    assert_eq!(slow_ids, ids.keys().cloned().collect());

    let r = call(
        "GET",
        &s.url(&format!("/api/v1/webhooks/{down_id}/deliveries")),
        Some(ADMIN),
        None,
    );
    let log = r.body["deliveries"].as_array().expect("log").clone();
    assert!(
        log.iter()
            .all(|d| d["state"] == "delivered" && d["attempts"].as_u64() > Some(1)),
        "{log:?}"
    );
    eprintln!(
        "webhooks: down receiver caught up {:.1} s after it came back; attempts {:?}",
        caught_up.as_secs_f64(),
        log.iter()
            .map(|d| d["attempts"].clone())
            .collect::<Vec<_>>()
    );
    let r = call(
        "DELETE",
        &s.url(&format!("/api/v1/webhooks/{down_id}")),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 204);
}
