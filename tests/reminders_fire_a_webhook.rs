//! "Remind me": participants of a scheduled space ask for a reminder; when
//! it starts, each reminder is a signed `space.reminder` webhook (checked
//! by Python's `hmac`) carrying the contact they gave.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[test]
fn a_reminder_becomes_a_signed_webhook_at_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("got.jsonl");
    // The receiver is on loopback: a self-hoster's setting.
    let s = Server::start(&["--webhook-allow-private"]);
    let port = free_port();
    let r = call(
        "POST",
        &s.url("/api/v1/webhooks"),
        Some(ADMIN),
        Some(json!({"url": format!("http://127.0.0.1:{port}/"), "events": ["space.reminder"]})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = r.body["webhook"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let _rx = Peer(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/webhook_receiver.py"))
            .args(["--port", &port.to_string(), "--secret", &secret])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .spawn()
            .expect("receiver"),
    );

    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "Later", "scheduled_for": "2030-01-01T00:00:00Z"})),
    );
    let id = r.body["space"]["id"].as_str().expect("id").to_owned();
    let host = r.body["host"]["token"].as_str().expect("host").to_owned();
    let (ada, ada_tok) = join(&s, &id, "Ada");
    let (_, bob_tok) = join(&s, &id, "Bob");
    let url = s.url(&format!("/api/v1/spaces/{id}/reminders"));
    let r = call(
        "POST",
        &url,
        Some(&ada_tok),
        Some(json!({"contact": "ada@example.org"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(call("POST", &url, Some(&bob_tok), None).status, 201);
    assert_eq!(call("DELETE", &url, Some(&bob_tok), None).status, 204);
    assert_eq!(call("DELETE", &url, Some(&bob_tok), None).status, 404);
    assert_eq!(call("POST", &url, None, None).status, 401);

    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/start")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        call("POST", &url, Some(&bob_tok), None).status,
        409,
        "not scheduled any more"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let got: Vec<Value> = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !lines.is_empty() {
            break lines;
        }
        assert!(Instant::now() < deadline, "no reminder arrived");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(got.len(), 1, "Bob cancelled his: {got:?}");
    assert_eq!(got[0]["type"], "space.reminder");
    assert_eq!(got[0]["verified"], true);
    let data = &got[0]["data"];
    assert_eq!(data["contact"], "ada@example.org");
    assert_eq!(data["participant_id"], ada.as_str());
    assert_eq!(data["name"], "Ada");
    assert_eq!(data["page"], format!("/s/{id}"));
    let r = call("GET", &s.url("/api/v1/webhooks"), Some(ADMIN), None);
    let hook = r.body["webhooks"][0]["id"]
        .as_str()
        .expect("hook")
        .to_owned();
    let log = call(
        "GET",
        &s.url(&format!("/api/v1/webhooks/{hook}/deliveries")),
        Some(ADMIN),
        None,
    );
    assert_eq!(log.body["deliveries"][0]["state"], "delivered");
}
