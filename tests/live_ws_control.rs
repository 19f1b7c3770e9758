//! `live.ws` speaks WebSocket both ways against the real server: pings are
//! answered with their payload, a close is echoed at once and the socket
//! closed, data from a listener is closed with 1008, a `from_seq` ahead of
//! the newest frame is refused before the upgrade; and a third-party
//! client (Python's `websockets`, its own keepalive) listens over ten
//! keepalive periods without a drop and closes cleanly. When the space
//! ends, each listener gets exactly one Close (4000): the Close it sends
//! back is never echoed (a second Close fails the socket in Chromium).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, end_space, live_space};

/// A raw WebSocket client: the handshake, masked frames out, frames in.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(port: u16, path: &str) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .expect("write");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut r = Raw { s, buf: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(5);
        let end = loop {
            if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(Instant::now() < deadline, "no response head");
            r.fill();
        };
        let head = String::from_utf8_lossy(&r.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        r.buf.drain(..end);
        r
    }

    /// Reads more; false on EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(_) => true,
        }
    }

    fn send(&mut self, b0: u8, payload: &[u8]) {
        let key = [0x5a, 0x17, 0xe3, 0x02];
        let mut f = vec![b0, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&f).expect("send");
    }

    /// The next frame that is not a program message, as (first byte,
    /// payload); `None` on EOF or after `secs`.
    fn next_control(&mut self, secs: f64) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if self.buf.len() >= 2 {
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    n if n < 126 => (n as usize, 2),
                    n => panic!("unexpected length byte {n}"),
                };
                if self.buf.len() >= hdr + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    if b0 == 0x82 {
                        continue;
                    }
                    return Some((b0, payload));
                }
            }
            if Instant::now() > deadline || !self.fill() {
                return None;
            }
        }
    }

    /// Whether the server closes the socket within `secs`.
    fn eof_within(&mut self, secs: f64) -> bool {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < deadline {
            if !self.fill() {
                return true;
            }
            self.buf.clear();
        }
        false
    }
}

#[test]
fn pings_are_answered_closes_echoed_data_refused_from_seq_ahead_refused() {
    let s = Server::start(&[]);
    let (id, _host, _) = live_space(&s, "Control frames");
    let path = format!("/spaces/{id}/live.ws");
    std::thread::sleep(Duration::from_millis(500));

    // Ping: a Pong with the same payload, while program messages flow.
    let mut c = Raw::connect(s.port, &path);
    for i in 0..3u8 {
        let payload = [b'k', b'a', i, 0xff, 0x00];
        c.send(0x89, &payload);
        let got = c.next_control(2.0).expect("no pong");
        assert_eq!(got, (0x8a, payload.to_vec()));
    }
    // Close 1000: echoed within a second, then the socket closes.
    let t0 = Instant::now();
    c.send(0x88, &1000u16.to_be_bytes());
    assert_eq!(c.next_control(1.0), Some((0x88, vec![0x03, 0xe8])));
    assert!(c.eof_within(1.0), "socket left open after the close");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

    // A data frame from a listener: closed with 1008.
    let mut c = Raw::connect(s.port, &path);
    c.send(0x81, b"hello");
    let (b0, p) = c.next_control(2.0).expect("no close");
    assert_eq!((b0, u16::from_be_bytes([p[0], p[1]])), (0x88, 1008));
    assert!(c.eof_within(1.0));

    // from_seq ahead of the newest frame: 400 instead of the upgrade.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    write!(
        c,
        "GET {path}?from_seq=999999999 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("write");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut res = String::new();
    let _ = c.read_to_string(&mut res);
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(res.contains("\"code\":\"from_seq_ahead\""), "{res}");
    // The next frame to come (newest + 1) is fine.
    let mut ok = common::WsReader::connect(s.port, &format!("{path}?from_seq=0"), None);
    let (first, _) = ok.next();
    assert_eq!(first, 0, "resume from the start of a fresh space");
}

#[test]
fn when_the_space_ends_each_listener_gets_one_close_and_its_answer_is_not_echoed() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "One close");
    let path = format!("/spaces/{id}/live.ws");
    std::thread::sleep(Duration::from_millis(300));
    let clients: Vec<Raw> = (0..24).map(|_| Raw::connect(s.port, &path)).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut closes = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    match c.next_control(0.5) {
                        Some((0x88, p)) => {
                            // As a browser does: answer the server's Close
                            // with ours, at once.
                            if closes.is_empty() {
                                c.send(0x88, &p[..2.min(p.len())]);
                            }
                            closes.push(p);
                        }
                        Some(_) => {}
                        None if c.eof_within(0.01) => break,
                        None => {}
                    }
                }
                closes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    end_space(&s, &id, &host);
    for r in readers {
        let closes = r.join().expect("reader");
        assert_eq!(closes.len(), 1, "one Close per listener, got {closes:?}");
        let code = u16::from_be_bytes([closes[0][0], closes[0][1]]);
        assert_eq!(code, 4000, "the space-ended code");
    }
}

/// Seconds the keepalive client listens and its keepalive ping interval
/// (also its pong timeout): 40 s at 4 s, ten keepalive periods, each pong
/// due within 4 s. The library's defaults are a ping every 20 s, dropped
/// if unanswered within 20 s: the first proof listened 180 s at 20 s
/// (nine periods, `AMPHI_WS_KEEPALIVE_SECS=180 AMPHI_WS_PING_INTERVAL=20`
/// runs it). The shorter run has more keepalive pings and a five times
/// stricter deadline on each; no server timer on a `live.ws` connection
/// is longer than 10 s (the request head's), so 40 s outlives them all.
fn keepalive_run() -> (u64, u64) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        env("AMPHI_WS_KEEPALIVE_SECS", 40),
        env("AMPHI_WS_PING_INTERVAL", 4).max(1),
    )
}

#[test]
fn python_websockets_keepalive_over_ten_periods_then_closes_cleanly() {
    assert!(
        Command::new("python3")
            .args(["-c", "import websockets"])
            .status()
            .map(|st| st.success())
            .unwrap_or(false),
        "python3 with websockets is required: run scripts/test (it installs scripts/requirements.txt)"
    );
    let s = Server::start(&[]);
    let (id, _host, _) = live_space(&s, "Keepalive");
    let (secs, ping) = keepalive_run();
    // The client's own awaited pings, on top of the keepalive.
    let own_every = 3;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ws_keepalive.py");
    let out = Command::new("python3")
        .arg(script)
        .args([
            "--url",
            &format!("ws://127.0.0.1:{}/spaces/{id}/live.ws", s.port),
        ])
        .args(["--seconds", &secs.to_string()])
        .args(["--code", "4001"])
        .args(["--ping-interval", &ping.to_string()])
        .args(["--ping-timeout", &ping.to_string()])
        .args(["--own-ping-every", &own_every.to_string()])
        .output()
        .expect("run the websockets client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let r: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|_| panic!("no report: {stdout} {stderr}"));
    eprintln!("websockets client: {r}");
    assert!(r["error"].is_null(), "{r}");
    assert!(
        r["listened_s"].as_f64().unwrap_or(0.0) >= secs as f64,
        "{r}"
    );
    assert_eq!(r["gaps"], 0, "{r}");
    // 100 ms messages: at least 9 a second arrived throughout.
    assert!(r["messages"].as_u64().unwrap_or(0) >= secs * 9, "{r}");
    // Its own pings (beside the keepalive's) answered.
    let own = r["pongs"].as_u64().unwrap_or(0);
    assert!(own >= secs / own_every - 2, "{r}");
    assert_eq!(r["close_code_received"], 4001, "close code not echoed: {r}");
    assert!(r["close_s"].as_f64().unwrap_or(9.0) < 1.0, "{r}");
    // The server answered the keepalive's pings too: every pong is counted.
    let pongs = common::metric(&s, "amphi_fanout_pongs_total");
    assert!(
        pongs >= (own + secs / ping - 2) as f64,
        "pongs counted: {pongs} ({own} to the client's own pings)"
    );
}
