//! A host's token outlives the wait for a space scheduled beyond the token
//! lifetime: tokens count their lifetime from the scheduled start, and
//! `POST .../token` re-issues one (to its bearer, or the host's to the
//! admin). Here the lifetime is 2 s (`--token-ttl 2`) and the space starts
//! 4 s ahead, as a 7-day token would for a space 8 days ahead.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ADMIN, Server, call, join};
use serde_json::json;

fn rfc3339_in(secs: u64) -> String {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{at}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_far_scheduled_space_can_be_started_by_its_host() {
    let s = Server::start(&["--token-ttl", "2"]);
    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "Later", "scheduled_for": rfc3339_in(4)})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["space"]["id"].as_str().unwrap().to_owned();
    let host = r.body["host"]["token"].as_str().unwrap().to_owned();
    let url = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let (_, guest) = join(&s, &id, "Guest");
    // A guest's token can be refreshed while it is valid.
    let r = call("POST", &url("/token"), Some(&guest), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["role"], "listener");

    std::thread::sleep(Duration::from_millis(4500));
    // The scheduled time has come, past the 2 s lifetime: the host's token
    // still works.
    let r = call("POST", &url("/start"), Some(&host), None);
    assert_eq!(r.status, 200, "the host's token expired: {:?}", r.body);

    std::thread::sleep(Duration::from_millis(2500));
    // Now it has expired; the admin re-issues the host's, which ends the
    // space.
    let r = call("POST", &url("/end"), Some(&host), None);
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "token_expired");
    assert_eq!(call("POST", &url("/token"), Some(&host), None).status, 401);
    assert_eq!(call("POST", &url("/token"), Some("nope"), None).status, 401);
    let r = call("POST", &url("/token"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["role"], "host");
    let fresh = r.body["token"].as_str().unwrap();
    assert_eq!(call("POST", &url("/end"), Some(fresh), None).status, 200);
}
