//! A hostile battery against a live space: malformed JSON and SDP, 20 MB
//! bodies, forged and `alg: none` tokens, 20,000 random UDP datagrams at the
//! WebRTC port and 1,500 half-open connections. Every answer is a 4xx, the
//! health check stays fast, and a listener already there hears no gap.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, Server, call, live_space, metric, publish_tone, wait_for, wait_for_audio};

/// Reads `live.opus` and records the longest wait between two reads.
fn gap_watcher(
    port: u16,
    id: &str,
    stop: Arc<AtomicBool>,
    max_gap_ms: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    let id = id.to_owned();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /spaces/{id}/live.opus HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 65536];
        let mut total = 0u64;
        // Skip the burst, then measure.
        let start = Instant::now();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
                let now = Instant::now();
                if now.duration_since(start) > Duration::from_secs(1) {
                    max_gap_ms.fetch_max(
                        now.duration_since(last).as_millis() as u64,
                        Ordering::Relaxed,
                    );
                }
                last = now;
            } else if last.elapsed() > Duration::from_secs(1) {
                max_gap_ms.fetch_max(last.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
        total
    })
}

fn raw(port: u16, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_battery_gets_only_4xx_and_hurts_no_listener() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Under attack");
    let _speaker = publish_tone(&s, &id, &host, 440, 40);
    wait_for_audio(&s, 100.0);
    let stop = Arc::new(AtomicBool::new(false));
    let max_gap = Arc::new(AtomicU64::new(0));
    let watcher = gap_watcher(s.port, &id, stop.clone(), max_gap.clone());

    // /healthz is probed throughout from another thread.
    let health_port = s.port;
    let health_stop = stop.clone();
    let health = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        while !health_stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let st = raw(
                health_port,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(st, 200, "healthz failed under attack");
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        worst
    });

    // 1,500 half-open connections: a partial request line, never finished.
    let mut half_open = Vec::new();
    for i in 0..1500 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", s.port)) {
            let _ = c.write_all(if i % 2 == 0 {
                b"GET /spa"
            } else {
                b"POST /api/v1/spaces HTTP/1.1\r\nContent-Length: 100\r\n"
            });
            half_open.push(c);
        }
    }

    // 20,000 random UDP datagrams at the WebRTC port.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u32 = 0x1234_5678;
    for i in 0..20_000u32 {
        let len = (i % 300 + 1) as usize;
        let d: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = udp.send_to(&d, ("127.0.0.1", s.port));
    }

    let mut statuses = Vec::new();
    let sp = |p: &str| format!("/api/v1/spaces/{id}{p}");
    // Malformed JSON and wrong types.
    for body in ["{", "[]", "{\"title\": 5}", "null", "\u{0}\u{1}"] {
        let req = format!(
            "POST /api/v1/spaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        statuses.push(raw(s.port, req.as_bytes()));
    }
    // 20 MB bodies, announced and streamed.
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000000\r\nConnection: close\r\n\r\n",
        sp("/join")
    );
    statuses.push(raw(s.port, req.as_bytes()));
    {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(
            c,
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            sp("/join")
        );
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..20 {
            if c.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .is_err()
                || c.write_all(&chunk).is_err()
                || c.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).unwrap_or(0);
        let st: u16 = String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(413);
        statuses.push(st);
    }
    // Malformed SDP and forged tokens.
    for (token, ct, body) in [
        (
            host.as_str(),
            "application/sdp",
            "v=0\r\nm=audio 9 RTP/AVP 0\r\n\u{7f}\u{7f}",
        ),
        (host.as_str(), "application/sdp", "\r\n\r\n\r\n"),
        (
            "eyJhbGciOiJub25lIn0.eyJzcGFjZSI6IjAifQ.",
            "application/sdp",
            "v=0",
        ),
        ("a.b.c", "application/sdp", "v=0"),
    ] {
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            sp("/whip"),
            body.len()
        );
        statuses.push(raw(s.port, req.as_bytes()));
    }
    for path in [
        sp("/end"),
        sp("/start"),
        sp("/participants/0000000000000001/remove"),
    ] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer forged.token.here\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        statuses.push(raw(s.port, req.as_bytes()));
    }
    statuses.push(raw(s.port, b"GET /spaces/zzzz/live.opus HTTP/1.1\r\n\r\n"));
    statuses.push(raw(
        s.port,
        b"GET /spaces/0000000000000000/live.ws?from_seq=-5 HTTP/1.1\r\n\r\n",
    ));
    statuses.push(raw(
        s.port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage TLS hello\r\n\r\n",
    ));

    // The listener keeps listening for 2 s of program after the attack.
    let frames = metric(&s, "amphi_program_frames_total");
    wait_for(5, "2 s of program after the attack", || {
        metric(&s, "amphi_program_frames_total") >= frames + 100.0
    });
    stop.store(true, Ordering::Relaxed);
    let worst_health = health.join().unwrap();
    let received = watcher.join().unwrap();
    drop(half_open);

    for st in &statuses {
        assert!(
            (400..500).contains(st) || *st == 0,
            "a hostile request got {st}: {statuses:?}"
        );
    }
    assert!(
        statuses.iter().filter(|s| **s == 0).count() <= 1,
        "requests went unanswered: {statuses:?}"
    );
    assert!(
        worst_health < Duration::from_secs(1),
        "healthz took {worst_health:?}"
    );
    let gap = max_gap.load(Ordering::Relaxed);
    assert!(gap < 300, "the listener heard a {gap} ms gap");
    assert!(
        received > 10_000,
        "the listener received only {received} bytes"
    );
    // The server still works.
    assert_eq!(
        call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).status,
        200
    );
}
