//! Connection-level hardening (issue 14): slow and stuck clients are bounded
//! by deadlines, buffers and shared bytes, at a scale that shows the bound.
//! Each test measures the node process itself (`/proc/PID`): its RSS, its
//! CPU time, and the kernel's TCP memory.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, Server, call, end_space, join, live_space, metric, publish_tone, wait_for};

/// The node's resident memory, KiB.
fn rss_kib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The node's CPU time so far (user + system), seconds.
fn cpu_seconds(s: &Server) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.child.id())).unwrap();
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ: 100 on every Linux this runs on.
    ticks as f64 / 100.0
}

/// The kernel's TCP buffer memory, KiB (every socket on the machine).
fn tcp_mem_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = s.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next().unwrap().parse::<u64>().unwrap() * 4;
        }
    }
    0
}

/// Probes `/healthz` every 100 ms until `stop`; returns (worst latency ms,
/// failures).
fn health_probe(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (mut worst, mut failed) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
            {
                Ok(r) if r.status().is_success() => {}
                _ => failed += 1,
            }
            worst = worst.max(t.elapsed().as_millis() as u64);
            std::thread::sleep(Duration::from_millis(100));
        }
        (worst, failed)
    })
}

/// Whether the server closed `c` (EOF or reset); data it sends is read and
/// dropped.
fn closed(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Opens `n` connections, each sending `first(i)` at once, then one more
/// byte of `trickle` every `every`; returns the longest any of them lived
/// (from its connect to its close), or panics if some are still open after
/// `give_up`.
fn trickle(
    port: u16,
    n: usize,
    first: impl Fn(usize) -> Vec<u8>,
    every: Duration,
    give_up: Duration,
) -> Duration {
    let mut open: Vec<(TcpStream, Instant)> = (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(&first(i)).unwrap();
            c.set_nonblocking(true).unwrap();
            (c, Instant::now())
        })
        .collect();
    let start = Instant::now();
    let mut next_byte = Instant::now() + every;
    let mut longest = Duration::ZERO;
    while !open.is_empty() {
        assert!(
            start.elapsed() < give_up,
            "{} of {n} connections still open after {give_up:?}",
            open.len()
        );
        let send = Instant::now() >= next_byte;
        if send {
            next_byte += every;
        }
        open.retain_mut(|(c, at)| {
            let gone = (send && c.write(b"a").is_err()) || closed(c);
            if gone {
                longest = longest.max(at.elapsed());
            }
            !gone
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    longest
}

/// Finding 1: a request head has one deadline from accept, however slowly
/// it trickles in, on the listener path and on the API path alike, and
/// `/healthz` answers throughout.
#[test]
fn slowloris_heads_are_closed_at_one_deadline() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "Slowloris");
    let stop = Arc::new(AtomicBool::new(false));
    let probe = health_probe(s.port, stop.clone());
    let longest = trickle(
        s.port,
        1500,
        |i| {
            let path = if i % 2 == 0 {
                format!("/spaces/{id}/live.opus")
            } else {
                "/api/v1/spaces".to_owned()
            };
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ").into_bytes()
        },
        Duration::from_secs(3),
        Duration::from_secs(30),
    );
    stop.store(true, Ordering::Relaxed);
    let (worst, failed) = probe.join().unwrap();
    eprintln!(
        "slowloris: 1500 heads trickled 1 byte/3 s; longest lived {:.1} s; /healthz worst {worst} ms, {failed} failed",
        longest.as_secs_f64()
    );
    assert!(
        longest < Duration::from_secs(14),
        "a trickled head lived {longest:?} (deadline 10 s from accept)"
    );
    assert_eq!(failed, 0, "/healthz failed during the attack");
    assert!(worst < 2000, "/healthz took {worst} ms during the attack");
}

/// Trickles `n` `POST /join` bodies, a byte every `every`; returns how long
/// the longest lived and the node's peak RSS growth per connection (KiB).
fn trickle_bodies(s: &Server, id: &str, n: usize, every: Duration) -> (Duration, f64) {
    let before = rss_kib(s);
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), s.child.id());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(v) = st
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(v, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let longest = trickle(
        s.port,
        n,
        |_| {
            format!(
                "POST /api/v1/spaces/{id}/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{\"name\":\""
            )
            .into_bytes()
        },
        every,
        Duration::from_secs(30),
    );
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let per = (peak.load(Ordering::Relaxed).saturating_sub(before)) as f64 / n as f64;
    (longest, per)
}

/// Finding 11: a trickled request body has a deadline too, and what it
/// holds meanwhile is bounded: each trickled piece is copied out of the
/// read buffer it arrived in instead of pinning it.
#[test]
fn trickled_bodies_are_cut_at_their_deadline() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "Slow bodies");
    let (longest, per) = trickle_bodies(&s, &id, 500, Duration::from_secs(2));
    eprintln!(
        "slow bodies: 500 bodies trickled 1 byte/2 s; longest lived {:.1} s; peak {per:.1} KiB RSS per connection",
        longest.as_secs_f64()
    );
    assert!(
        longest < Duration::from_secs(14),
        "a trickled body lived {longest:?} (deadline 10 s from its head)"
    );
    let (longest, per) = trickle_bodies(&s, &id, 50, Duration::from_millis(50));
    eprintln!(
        "fast trickle: 50 bodies, 1 byte/50 ms; longest lived {:.1} s; peak {per:.1} KiB RSS per connection",
        longest.as_secs_f64()
    );
    assert!(
        longest < Duration::from_secs(14),
        "a trickled body lived {longest:?}"
    );
    assert!(per < 128.0, "a trickled body held {per:.1} KiB");
}

/// Finding 10: unfinished request lines wait on readiness: 2,000 of them
/// cost next to no CPU.
#[test]
fn unfinished_request_lines_cost_no_cpu() {
    let s = Server::start(&[]);
    let conns: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(b"GET /spa").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (Instant::now(), cpu_seconds(&s));
    std::thread::sleep(Duration::from_secs(4));
    let cores = (cpu_seconds(&s) - c0) / t0.elapsed().as_secs_f64();
    eprintln!("2000 unfinished request lines: {cores:.3} of a core");
    assert!(
        cores < 0.1,
        "2000 unfinished request lines cost {cores:.3} of a core"
    );
    drop(conns);
}

/// Reads one HTTP response head (and a `Content-Length` body) from `c`.
fn response(c: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut body = buf[head_end..].to_vec();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    while body.len() < len {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

/// Reads until `needle` shows up (at most 5 s).
fn read_until(c: &mut TcpStream, mut got: Vec<u8>, needle: &[u8]) -> Vec<u8> {
    let mut chunk = [0u8; 16384];
    let t = Instant::now();
    while !got.windows(needle.len()).any(|w| w == needle) {
        assert!(t.elapsed() < Duration::from_secs(5), "no {needle:?} in 5 s");
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before {needle:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// Finding 9: a listener stream works as the 2nd (or 3rd) request of a
/// kept-alive connection, and with an absolute-form target.
#[test]
fn listener_streams_work_on_kept_alive_connections_and_absolute_targets() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Keep-alive");
    let _speaker = publish_tone(&s, &id, &host, 440, 20);
    common::wait_for_audio(&s, 50.0);

    // /healthz, an API call, then live.opus, on one connection.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");
    write!(c, "GET /api/v1/spaces/{id} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    write!(c, "GET /spaces/{id}/live.opus HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let got = read_until(&mut c, Vec::new(), b"\r\n\r\n");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("audio/ogg"), "{text}");
    read_until(&mut c, got, b"OggS");

    // live.ws as the 2nd request.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    response(&mut c);
    write!(
        c,
        "GET /spaces/{id}/live.ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let got = read_until(&mut c, Vec::new(), b"\r\n\r\n");
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Absolute-form targets, as a proxy sends them.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "GET http://127.0.0.1:{}/spaces/{id}/live.opus HTTP/1.1\r\nHost: x\r\n\r\n",
        s.port
    )
    .unwrap();
    let got = read_until(&mut c, Vec::new(), b"\r\n\r\n");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    read_until(&mut c, got, b"OggS");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    response(&mut c);
    write!(
        c,
        "GET http://example.org/spaces/{id}/live.opus HTTP/1.1\r\nHost: example.org\r\n\r\n"
    )
    .unwrap();
    let got = read_until(&mut c, Vec::new(), b"\r\n\r\n");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    read_until(&mut c, got, b"OggS");
}

/// Opens an events WebSocket (raw), returns the socket after the 101.
fn events_socket(port: u16, id: &str, token: &str, rcvbuf: Option<usize>) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    write!(
        c,
        "GET /api/v1/spaces/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Only the head: what follows stays in the socket.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "closed before the 101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c
}

/// Finding 3: a frame announcing more than the 4 KiB cap is refused on its
/// header: its payload is never buffered.
#[test]
fn oversized_events_frames_are_refused_on_their_header() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "Big frames");
    let (_, token) = join(&s, &id, "Frames");
    let before = rss_kib(&s);
    let n = 20;
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| events_socket(s.port, &id, &token, None))
        .collect();
    // A masked binary frame announcing 15 MB, then 2 MB of it.
    let mut header = vec![0x82u8, 0x80 | 127];
    header.extend_from_slice(&(15u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let payload = vec![0x55u8; 64 * 1024];
    let mut sent = vec![0usize; n];
    for (c, sent) in socks.iter_mut().zip(sent.iter_mut()) {
        c.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if c.write_all(&header).is_err() {
            continue;
        }
        for _ in 0..32 {
            match c.write(&payload) {
                Ok(k) => *sent += k,
                Err(_) => break,
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let grew = rss_kib(&s).saturating_sub(before);
    for c in &mut socks {
        c.set_nonblocking(true).unwrap();
    }
    let t = Instant::now();
    while !socks.iter_mut().all(closed) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "oversized frames not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let total: usize = sent.iter().sum();
    eprintln!(
        "{n} frames announcing 15 MB ({} KiB of payload written in all): RSS +{grew} KiB",
        total / 1024
    );
    assert!(
        grew < 8 * 1024,
        "RSS grew {grew} KiB for {n} oversized frames"
    );
}

/// Finding 4: events clients that never read are closed; the kernel's
/// send buffers and the node's memory for them stay bounded meanwhile.
#[test]
fn events_clients_that_never_read_are_closed() {
    let s = Server::start(&[
        "--command-rate",
        "1000",
        "--join-rate-per-ip",
        "100000",
        "--hand-rate-per-space",
        "100000",
    ]);
    let (id, _, _) = live_space(&s, &"A long title for a large state ".repeat(7)[..190]);
    // A large state: hands raised by participants with long names.
    let mut hands = 0;
    for i in 0..200 {
        let (_, t) = join(&s, &id, &format!("{i:03} {}", "x".repeat(58)));
        let r = call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/hand")),
            Some(&t),
            None,
        );
        hands += usize::from(r.status == 200);
    }
    let (_, token) = join(&s, &id, "Stuck");
    let (_, churner) = join(&s, &id, "Churn");
    let (rss0, tcp0) = (rss_kib(&s), tcp_mem_kib());
    let n = 1500;
    let socks: Vec<TcpStream> = (0..n)
        .map(|_| events_socket(s.port, &id, &token, Some(4096)))
        .collect();
    // Updates keep coming: a participant raises and lowers a hand.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, url, host) = (
            stop.clone(),
            s.url(&format!("/api/v1/spaces/{id}/hand")),
            churner,
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                call("POST", &url, Some(&host), None);
                std::thread::sleep(Duration::from_millis(150));
                call("DELETE", &url, Some(&host), None);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let t = Instant::now();
    let (mut peak_rss, mut peak_tcp) = (0u64, 0u64);
    let mut left = n as f64;
    while t.elapsed() < Duration::from_secs(40) {
        peak_rss = peak_rss.max(rss_kib(&s));
        peak_tcp = peak_tcp.max(tcp_mem_kib());
        left = metric(&s, "amphi_events_clients");
        if left == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let closed_after = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let update = call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None)
        .body
        .to_string()
        .len();
    eprintln!(
        "{n} events clients that never read ({hands} hands, state {update} B): closed after {:.1} s; peak RSS +{} KiB, peak kernel TCP memory +{} KiB ({:.1} KiB per client)",
        closed_after.as_secs_f64(),
        peak_rss.saturating_sub(rss0),
        peak_tcp.saturating_sub(tcp0),
        peak_tcp.saturating_sub(tcp0) as f64 / n as f64
    );
    assert_eq!(left, 0.0, "{left} non-reading events clients still open");
    assert!(
        peak_tcp.saturating_sub(tcp0) < 200 * 1024,
        "kernel TCP memory grew {} KiB",
        peak_tcp.saturating_sub(tcp0)
    );
    drop(socks);
}

/// Finding 6: recording downloads stream from storage in bounded chunks:
/// 100 slow GETs of a 20 MB recording (and Range requests) keep RSS flat.
#[test]
fn slow_recording_downloads_keep_memory_bounded() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Big recording");
    end_space(&s, &id, &host);
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(5, "the recording", || {
        call("GET", &rec, None, None).status == 200
    });
    // A 20 MB recording in place of the short one.
    let file = s.data.join("recordings").join(&id).join("recording.opus");
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&file, &big).unwrap();
    let before = rss_kib(&s);
    let n = 100;
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|i| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut c: TcpStream = sock.into();
            let range = if i % 2 == 0 {
                ""
            } else {
                "Range: bytes=1000000-\r\n"
            };
            write!(
                c,
                "GET /spaces/{id}/recording.opus HTTP/1.1\r\nHost: x\r\n{range}\r\n"
            )
            .unwrap();
            c
        })
        .collect();
    // Slow readers: 4 KiB each per 100 ms.
    let mut peak = 0;
    let mut got = vec![0usize; n];
    for _ in 0..30 {
        for (c, g) in conns.iter_mut().zip(got.iter_mut()) {
            c.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let mut b = [0u8; 4096];
            if let Ok(k) = c.read(&mut b) {
                *g += k;
            }
        }
        peak = peak.max(rss_kib(&s));
        std::thread::sleep(Duration::from_millis(100));
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "{n} slow GETs of a 20 MB recording (half with Range): RSS +{grew} KiB ({:.0} KiB each)",
        grew as f64 / n as f64
    );
    assert!(got.iter().all(|g| *g > 0), "a download did not start");
    assert!(
        grew < 64 * 1024,
        "RSS grew {grew} KiB for {n} slow downloads"
    );
    // And a whole download is the file, byte for byte; a range is its part.
    let whole = reqwest::blocking::get(&rec).unwrap().bytes().unwrap();
    assert!(whole[..] == big[..], "the download differs from the file");
    let part = reqwest::blocking::Client::new()
        .get(&rec)
        .header("Range", "bytes=5000000-5999999")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert!(part.bytes().unwrap()[..] == big[5_000_000..6_000_000]);
}

/// Finding 12 and the memory table: what one idle client of each kind
/// costs the node (RSS growth over 1,000 of them).
#[test]
fn idle_clients_cost_a_few_kib_each() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Memory");
    let _speaker = publish_tone(&s, &id, &host, 440, 40);
    common::wait_for_audio(&s, 50.0);
    // Some history for resumes (about 15 s).
    std::thread::sleep(Duration::from_secs(15));
    let (_, token) = join(&s, &id, "Idle");
    let n = 1000;
    let mut rows = Vec::new();
    let mut measure = |what: &str, open: &dyn Fn() -> TcpStream| -> f64 {
        std::thread::sleep(Duration::from_millis(500));
        let before = rss_kib(&s);
        let mut conns: Vec<TcpStream> = (0..n).map(|_| open()).collect();
        // Readers read a little of what they are sent, slowly (what is
        // still to be sent to them is what the node holds).
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            for c in &mut conns {
                c.set_nonblocking(true).unwrap();
                let _ = c.read(&mut [0u8; 512]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let per = rss_kib(&s).saturating_sub(before) as f64 / n as f64;
        rows.push(format!("{what}: {per:.1} KiB"));
        drop(conns);
        per
    };
    let port = s.port;
    let events = measure("events client", &|| events_socket(port, &id, &token, None));
    let ws_resume = measure("live.ws?from_seq=0", &|| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET /spaces/{id}/live.ws?from_seq=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        c
    });
    let ws = measure("live.ws", &|| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET /spaces/{id}/live.ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        c
    });
    let ogg = measure("live.opus", &|| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET /spaces/{id}/live.opus HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        c
    });
    let keep_alive = measure("idle keep-alive HTTP", &|| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        response(&mut c);
        c
    });
    let unfinished = measure("unfinished request line", &|| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET /spa").unwrap();
        c
    });
    eprintln!(
        "memory per idle client (RSS growth over {n}):\n  {}",
        rows.join("\n  ")
    );
    assert!(events < 16.0, "an idle events client costs {events:.1} KiB");
    assert!(
        ws_resume < 16.0,
        "a live.ws?from_seq=0 listener costs {ws_resume:.1} KiB"
    );
    for (what, v) in [
        ("live.ws", ws),
        ("live.opus", ogg),
        ("keep-alive", keep_alive),
        ("unfinished", unfinished),
    ] {
        assert!(v < 32.0, "an idle {what} client costs {v:.1} KiB");
    }
    let _ = ADMIN;
}
