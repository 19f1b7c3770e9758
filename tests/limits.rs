//! Each limit refuses with a clear status and costs the others nothing:
//! connections per address, room commands and reactions per participant,
//! WHIP sessions per participant.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, call, join, live_space, wait_for};
use serde_json::json;

#[test]
fn connections_per_address_are_bounded() {
    let s = Server::start(&["--max-conns-per-ip", "20"]);
    // Twenty connections, each held open after one answered request: an
    // answer proves the server has counted the connection.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut extra = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = extra.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains("too many connections"));
    // Releasing the held connections frees the address.
    drop(held);
    wait_for(2, "the address to be let in again", || {
        call("GET", &s.url("/healthz"), None, None).status == 200
    });
}

#[test]
fn commands_and_reactions_are_rate_limited_per_participant() {
    let s = Server::start(&["--command-rate", "2"]);
    let (id, host, _) = live_space(&s, "Limits");
    let (_, lee) = join(&s, &id, "Lee");
    let hand = s.url(&format!("/api/v1/spaces/{id}/hand"));
    let statuses: Vec<u16> = (0..10)
        .map(|i| {
            call(
                if i % 2 == 0 { "POST" } else { "DELETE" },
                &hand,
                Some(&lee),
                None,
            )
            .status
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Another participant is not affected.
    let host_pid = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).body["stage"]
        [0]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/participants/{host_pid}/mute")),
            Some(&host),
            None
        )
        .status,
        200
    );

    let react = s.url(&format!("/api/v1/spaces/{id}/reactions"));
    let statuses: Vec<u16> = (0..30)
        .map(|_| call("POST", &react, Some(&host), Some(json!({"emoji": "🔥"}))).status)
        .collect();
    assert!(statuses.iter().take(5).all(|s| *s == 202), "{statuses:?}");
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited > 0, "{statuses:?}");
    let r = call("POST", &react, Some(&host), Some(json!({"emoji": "🔥"})));
    if r.status == 429 {
        assert!(r.headers.contains_key("retry-after"));
        assert_eq!(r.body["error"]["code"], "rate_limited");
    }
}

#[test]
fn a_third_whip_session_replaces_the_oldest() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Sessions");
    let mut peers: Vec<common::Peer> = (0..3)
        .map(|_| common::publish_tone(&s, &id, &host, 440, 20))
        .collect();
    common::wait_for(20, "the third session to replace the first", || {
        let m = call("GET", &s.url("/metrics"), None, None)
            .body
            .as_str()
            .unwrap_or("")
            .to_owned();
        m.lines()
            .any(|l| l.starts_with("amphi_whip_sessions_replaced_total ") && !l.ends_with(" 0"))
    });
    // The replaced session closes: two stay open for one participant.
    wait_for(2, "the replaced session to close", || {
        common::metric(&s, "amphi_rtc_sessions") <= 2.0
    });
    for p in &mut peers {
        p.kill();
    }
}

/// 300 listeners arriving at once on a space capped at 50: exactly 50 are
/// admitted, however the admissions interleave.
#[test]
fn the_per_space_cap_holds_under_a_storm() {
    let s = Server::start(&["--max-listeners-per-space", "50"]);
    let (id, _, _) = live_space(&s, "capped");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(300));
    let threads: Vec<_> = (0..300)
        .map(|_| {
            let (port, id, barrier) = (s.port, id.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                barrier.wait();
                write!(c, "GET /spaces/{id}/live.opus HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut head = [0u8; 12];
                c.read_exact(&mut head).unwrap();
                let admitted = &head[9..12] == b"200";
                (admitted, c)
            })
        })
        .collect();
    let results: Vec<(bool, TcpStream)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = results.iter().filter(|(a, _)| *a).count();
    assert_eq!(admitted, 50, "{admitted} admitted for 50 places");
}
