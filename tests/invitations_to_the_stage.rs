//! The audience a host sees (present, named participants: the most recent
//! first, paged, with the total) and invitations: the invited person sees
//! the invitation on their events channel and accepts (on stage) or
//! declines (nothing changes); only moderators invite or see the list;
//! only the invited answers.

mod common;

use std::time::{Duration, Instant};

use common::{Server, call, join, live_space};
use serde_json::Value;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{Message, WebSocket, connect};

type Ws = WebSocket<MaybeTlsStream<std::net::TcpStream>>;

fn events(s: &Server, id: &str, tok: &str) -> Ws {
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/spaces/{id}/events?token={tok}",
        s.port
    );
    let (mut ws, _) = connect(url.as_str()).expect("events upgrade");
    if let MaybeTlsStream::Plain(t) = ws.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

/// The next message whose `you` satisfies `f`.
fn until(ws: &mut Ws, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no such update");
        if let Message::Text(t) = ws.read().expect("read") {
            let v: Value = serde_json::from_str(&t).expect("json");
            if f(&v["you"]) {
                return v;
            }
        }
    }
}

#[test]
fn host_sees_the_audience_and_invites_a_listener_who_never_raised_a_hand() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Invites");
    let mut present = Vec::new();
    for i in 0..30 {
        let (pid, tok) = join(&s, &id, &format!("Listener {i}"));
        let mut ws = events(&s, &id, &tok);
        until(&mut ws, |_| true);
        present.push((pid, tok, ws));
    }
    // A join without an events connection is not in the list.
    join(&s, &id, "Only listening");

    let aud = |q: &str, tok: &str| {
        call(
            "GET",
            &s.url(&format!("/api/v1/spaces/{id}/audience{q}")),
            Some(tok),
            None,
        )
    };
    let r = aud("?limit=20", &host);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["total"], 30);
    let first = r.body["audience"].as_array().expect("list").clone();
    assert_eq!(first.len(), 20);
    assert_eq!(first[0]["name"], "Listener 29", "newest first");
    let next = r.body["next_before"].as_u64().expect("cursor");
    let r = aud(&format!("?limit=20&before={next}"), &host);
    let second = r.body["audience"].as_array().expect("list").clone();
    assert_eq!(second.len(), 10);
    assert_eq!(second[9]["name"], "Listener 0");
    assert!(r.body["next_before"].is_null());
    // A listener may not see it.
    assert_eq!(aud("", &present[0].1).status, 403);

    // Invite Listener 3, who never raised a hand.
    let (pid3, tok3) = (present[3].0.clone(), present[3].1.clone());
    let inv = |pid: &str, tok: &str, what: &str| {
        call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/invitations/{pid}{what}")),
            Some(tok),
            None,
        )
    };
    assert_eq!(
        inv(&pid3, &present[4].1, "").status,
        403,
        "listeners do not invite"
    );
    let r = inv(&pid3, &host, "");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let seen = until(&mut present[3].2, |you| you["invitation"].is_object());
    assert_eq!(seen["you"]["invitation"]["by"]["name"], "Host");
    assert!(seen["you"]["invitation"]["expires_at"].is_string());
    // Only the invited person answers.
    assert_eq!(inv(&pid3, &host, "/accept").status, 403);
    assert_eq!(inv(&pid3, &present[4].1, "/accept").status, 403);
    let r = inv(&pid3, &tok3, "/accept");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let stage = r.body["stage"].as_array().expect("stage");
    assert!(stage.iter().any(|m| m["participant_id"] == pid3.as_str()
        && m["name"] == "Listener 3"
        && m["role"] == "speaker"));
    until(&mut present[3].2, |you| {
        you["on_stage"] == true && you["invitation"].is_null()
    });
    // Answered once.
    assert_eq!(inv(&pid3, &tok3, "/accept").status, 404);
    // On stage: cannot be invited again.
    assert_eq!(inv(&pid3, &host, "").status, 409);

    // A declined invitation changes nothing.
    let (pid5, tok5) = (present[5].0.clone(), present[5].1.clone());
    assert_eq!(inv(&pid5, &host, "").status, 201);
    until(&mut present[5].2, |you| you["invitation"].is_object());
    let before = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).body;
    let r = inv(&pid5, &tok5, "/decline");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["declined"], true);
    until(&mut present[5].2, |you| {
        you["invitation"].is_null() && you["role"] == "listener"
    });
    let after = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).body;
    assert_eq!(before["stage"], after["stage"]);
    assert_eq!(inv(&pid5, &tok5, "/accept").status, 404, "declined is gone");

    // Someone who left is no longer present and cannot be invited.
    let (pid7, _, ws7) = present.remove(7);
    drop(ws7);
    let deadline = Instant::now() + Duration::from_secs(5);
    while aud("", &host).body["total"] != 29 {
        assert!(Instant::now() < deadline, "the leaver is still counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(inv(&pid7, &host, "").status, 404);
}
