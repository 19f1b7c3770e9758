//! The events WebSocket: a snapshot first, coalesced updates after, the
//! audience as a number, and a removed participant told and disconnected.

mod common;

use std::time::{Duration, Instant};

use common::{Server, call, join, live_space};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, connect};

fn next_json(
    ws: &mut tokio_tungstenite::tungstenite::WebSocket<
        tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
    >,
) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("json"),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

#[test]
fn snapshot_then_coalesced_updates_then_removal() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Events");
    let (pid, tok) = join(&s, &id, "Lee");
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/spaces/{id}/events?token={tok}",
        s.port
    );
    let (mut ws, _) = connect(url.as_str()).expect("events upgrade");
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let snap = next_json(&mut ws);
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["you"]["role"], "listener");
    assert!(snap["space"]["listener_count"].is_u64());

    // Lee is present, so the host can bring them up without a raised hand.
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/stage/{pid}")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let up = next_json(&mut ws);
    assert_eq!(up["type"], "update");
    assert_eq!(up["you"]["role"], "speaker");
    assert_eq!(up["you"]["on_stage"], true);

    // 30 reactions in a burst arrive as at most a few aggregated updates.
    let (_, other) = join(&s, &id, "Other");
    let t0 = Instant::now();
    for _ in 0..8 {
        let r = call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/reactions")),
            Some(&other),
            Some(json!({"emoji": "🎉"})),
        );
        assert!(r.status == 202 || r.status == 429);
    }
    let mut total = 0;
    let mut messages = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        let m = next_json(&mut ws);
        messages += 1;
        total += m["reactions"]["🎉"].as_u64().unwrap_or(0);
        if total >= 5 {
            break;
        }
    }
    assert!(total >= 5, "reactions were not delivered: {total}");
    assert!(
        messages <= 7,
        "updates were not coalesced: {messages} messages"
    );

    // Removal: the client is told and the socket closes.
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/participants/{pid}/remove")),
        Some(&host),
        Some(json!({"ban": true})),
    );
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < deadline, "no removed message");
        let m = next_json(&mut ws);
        if m["type"] == "removed" {
            assert_eq!(m["banned"], true);
            break;
        }
    }
    // Reconnecting with the banned token is refused.
    assert!(connect(url.as_str()).is_err());
}
