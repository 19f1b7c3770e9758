//! A raised-hand flood is bounded: joins and hands per network are rate
//! limited, a space takes a bounded hand rate and queues at most 500 hands,
//! and events updates carry the hands that changed, not the queue, so their
//! size does not grow with it.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Server, call, live_space};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, connect};

type Ws = tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
>;

fn client(from: IpAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Joins from `from`, then raises the hand: the two statuses.
fn join_and_hand(s: &Server, id: &str, from: IpAddr) -> (u16, u16) {
    let c = client(from);
    let r = c
        .post(s.url(&format!("/api/v1/spaces/{id}/join")))
        .json(&json!({"name": format!("Flood {from}")}))
        .send()
        .unwrap();
    let joined = r.status().as_u16();
    if joined != 200 {
        return (joined, 0);
    }
    let token = r.json::<Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let hand = c
        .post(s.url(&format!("/api/v1/spaces/{id}/hand")))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16();
    (joined, hand)
}

fn events(s: &Server, id: &str, token: &str) -> Ws {
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/spaces/{id}/events?token={token}",
        s.port
    );
    let (ws, _) = connect(url.as_str()).expect("events upgrade");
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
    }
    ws
}

/// The text messages read until none comes for 1.5 s.
fn drain(ws: &mut Ws) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = ws.read() {
        if let Message::Text(t) = m {
            out.push(t.to_string());
        }
    }
    out
}

fn pids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|h| h["participant_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn one_network_cannot_flood_joins_and_hands() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "Flood");
    let from: IpAddr = "127.0.0.7".parse().unwrap();
    let t0 = Instant::now();
    let mut hands = 0;
    let mut refused = 0;
    for _ in 0..150 {
        match join_and_hand(&s, &id, from) {
            (200, 200) => hands += 1,
            (429, _) | (_, 429) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // 10 joins-or-hands a second, burst 30: two per raised hand.
    let bound = ((30.0 + 10.0 * secs) / 2.0).ceil() as usize + 1;
    eprintln!("one network: {hands} hands and {refused} refusals in {secs:.1} s (bound {bound})");
    assert!(
        hands <= bound,
        "{hands} hands from one network in {secs:.1} s"
    );
    assert!(refused > 0);
    // Another network is not affected.
    assert_eq!(
        join_and_hand(&s, &id, "127.0.0.8".parse().unwrap()),
        (200, 200)
    );
}

#[test]
fn the_hand_queue_is_capped_and_updates_carry_changes() {
    let s = Server::start(&["--hand-rate-per-space", "100000"]);
    let (id, host, _) = live_space(&s, "Queue");
    let mut ws = events(&s, &id, &host);
    let snapshot: Value = serde_json::from_str(&drain(&mut ws)[0]).unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    let mut accepted = 0;
    let mut full = 0;
    for i in 0..520u32 {
        let from = IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8]);
        match join_and_hand(&s, &id, from) {
            (200, 200) => accepted += 1,
            (200, 409) => full += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((accepted, full), (500, 20), "the queue is capped at 500");
    let view = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None);
    let queue = pids(&view.body["hands_raised"]);
    assert_eq!(queue.len(), 500);

    // The host's events: updates never carry the queue; applying their
    // changes to the snapshot gives the queue.
    let msgs = drain(&mut ws);
    let mut list: Vec<String> = pids(&snapshot["space"]["hands_raised"]);
    let mut largest = 0;
    for m in &msgs {
        largest = largest.max(m.len());
        let v: Value = serde_json::from_str(m).unwrap();
        if v["type"] != "update" {
            continue;
        }
        assert!(
            v["space"].get("hands_raised").is_none(),
            "an update carried the queue"
        );
        let gone: BTreeSet<String> = v["hands"]["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        list.retain(|p| !gone.contains(p));
        for p in pids(&v["hands"]["added"]) {
            if !list.contains(&p) {
                list.push(p);
            }
        }
    }
    assert_eq!(list, queue, "the changes do not add up to the queue");
    assert!(largest < 8 * 1024, "an update of {largest} bytes");
    eprintln!(
        "500 hands: {} updates, the largest {} bytes; the view {} bytes",
        msgs.len(),
        largest,
        view.body.to_string().len()
    );
    let mut late = events(&s, &id, &host);
    let snap = drain(&mut late);
    let snap: Value = serde_json::from_str(&snap[0]).unwrap();
    assert_eq!(
        pids(&snap["space"]["hands_raised"]),
        queue,
        "a new client's snapshot"
    );
}

#[test]
fn a_space_takes_a_bounded_hand_rate() {
    let s = Server::start(&["--hand-rate-per-space", "2"]);
    let (id, _, _) = live_space(&s, "Slow hands");
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..25u8 {
        match join_and_hand(&s, &id, IpAddr::from([127, 2, 0, i + 1])) {
            (200, 200) => ok += 1,
            (200, 429) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Burst 10, then 2 a second.
    assert!(ok <= 16, "{ok} hands");
    assert!(limited >= 9, "{limited} refused");
}
