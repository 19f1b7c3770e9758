//! Stock headless Chromium publishes over ICE-TCP alone.
//!
//! The test serves a page and a WHIP-like endpoint over plain HTTP on
//! loopback, in front of a real `RtcEngine` with a TCP listener. The page
//! takes Chromium's fake microphone, offers, and keeps only the passive TCP
//! candidate of the answer, so the only path Chromium has to the engine is
//! ICE-TCP (as for a browser whose UDP is blocked). Chromium's Opus must
//! come out of the engine as audio. No loopback flag is given to Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use amphi_rtc::{IceTcp, RtcConfig, RtcEngine, RtcEvent, RtcHandle, SessionRequest};

const CHROMIUM: &str = "/usr/bin/chromium";

const PAGE: &str = r#"<!doctype html><meta charset=utf-8><title>ice-tcp</title><script>
const log = (m) => fetch("/log", {method: "POST", body: String(m)});
(async () => {
  try {
    const mic = await navigator.mediaDevices.getUserMedia({audio: true});
    const pc = new RTCPeerConnection();
    pc.addTransceiver(mic.getAudioTracks()[0], {direction: "sendonly"});
    pc.oniceconnectionstatechange = () => log("ice " + pc.iceConnectionState);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === "complete") return r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
      setTimeout(r, 2000);
    });
    const res = await fetch("/whip", {method: "POST", headers: {"content-type": "application/sdp"}, body: pc.localDescription.sdp});
    const answer = await res.text();
    const strip = location.search.includes("tcponly");
    const tcpOnly = answer.split("\r\n")
      .filter((l) => !(strip && l.startsWith("a=candidate:") && !/ tcp /i.test(l)))
      .join("\r\n");
    log("answer candidates: " + tcpOnly.split("\r\n").filter((l) => l.startsWith("a=candidate:")).join(" | "));
    await pc.setRemoteDescription({type: "answer", sdp: tcpOnly});
  } catch (e) { log("error " + e); }
})();
</script>"#;

/// Runs a future to completion on this thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 exchange: the page, the WHIP offer, the page's log lines.
fn serve(mut s: TcpStream, rtc: &RtcHandle, log: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    let (status, ctype, out) = if first.starts_with("GET / ") || first.starts_with("GET /?") {
        ("200 OK", "text/html", PAGE.to_owned())
    } else if first.starts_with("POST /whip ") {
        let res = block_on(rtc.create_session(SessionRequest {
            space: SpaceId(1),
            participant: ParticipantId(1),
            offer_sdp: body,
            audible: Arc::new(AtomicBool::new(true)),
            music: false,
        }));
        match res {
            Ok(info) => ("201 Created", "application/sdp", info.answer_sdp),
            Err(e) => ("400 Bad Request", "text/plain", e.to_string()),
        }
    } else if first.starts_with("POST /log ") {
        log.lock().expect("log").push(body);
        ("204 No Content", "text/plain", String::new())
    } else {
        ("404 Not Found", "text/plain", String::new())
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
        out.len()
    );
}

struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves the page and the offer endpoint on `bind`; returns its port.
fn http_server(bind: &str, rtc: RtcHandle, log: Arc<Mutex<Vec<String>>>) -> u16 {
    let http = TcpListener::bind(bind).expect("http");
    let port = http.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        // A thread per connection: Chromium opens spare connections that
        // may never send a request.
        for s in http.incoming().flatten() {
            let (rtc, log) = (rtc.clone(), log.clone());
            std::thread::spawn(move || serve(s, &rtc, &log));
        }
    });
    port
}

/// Starts headless Chromium on `url` (inside network namespace `netns`,
/// if given) with a fake microphone.
fn chromium(url: &str, netns: Option<&str>, extra: &[String]) -> (Browser, std::path::PathBuf) {
    let profile = std::env::temp_dir().join(format!(
        "amphi-ice-tcp-{}-{}",
        std::process::id(),
        netns.unwrap_or("host")
    ));
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, CHROMIUM]);
            c
        }
        None => Command::new(CHROMIUM),
    };
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ])
    .args(extra)
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = cmd.spawn().expect("chromium (scripts/test installs it)");
    (Browser(child), profile)
}

/// Waits for 100 Opus packets from the engine (30 s at most).
fn wait_for_audio(events: &crossbeam_channel::Receiver<RtcEvent>, log: &Mutex<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut audio = 0;
    let mut connected = false;
    while audio < 100 {
        assert!(
            Instant::now() < deadline,
            "connected {connected}, {audio} packets; page log: {:?}",
            log.lock().expect("log")
        );
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(RtcEvent::Connected { .. }) => connected = true,
            Ok(RtcEvent::Audio { .. }) => audio += 1,
            Ok(RtcEvent::Closed { reason, .. }) => panic!("closed: {reason}"),
            Err(_) => {}
        }
    }
    assert!(connected);
}

#[test]
fn stock_chromium_publishes_over_ice_tcp_alone() {
    let (engine, events) = RtcEngine::start(RtcConfig {
        ice_tcp: IceTcp::Listen(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..RtcConfig::default()
    })
    .expect("engine");
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = http_server("127.0.0.1:0", engine.handle(), log.clone());
    let (browser, profile) = chromium(&format!("http://127.0.0.1:{port}/?tcponly"), None, &[]);
    wait_for_audio(&events, &log);
    let tcp = engine
        .handle()
        .stats()
        .tcp_connections
        .load(Ordering::Relaxed);
    assert!(tcp >= 1, "no ICE-TCP connection was accepted");
    let lines = log.lock().expect("log").clone();
    let candidates = lines
        .iter()
        .find(|l| l.starts_with("answer candidates:"))
        .expect("the page reported the answer");
    assert!(candidates.contains("tcptype passive"), "{candidates}");
    assert!(!candidates.contains(" udp "), "{candidates}");
    drop(browser);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(profile);
}

/// A network namespace joined to this one by a veth pair, removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    /// `10.79.N.1` here, `10.79.N.2` inside; `None` if namespaces cannot
    /// be made here (not root, no `ip`).
    fn new(n: u8) -> Option<Netns> {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("amphi-rtc-{pid}"),
            host_if: format!("art{}", pid % 100_000),
        };
        let ns_if = format!("arn{}", pid % 100_000);
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ip(&["netns", "add", &ns.name]) {
            return None;
        }
        let here = format!("10.79.{n}.1/24");
        let there = format!("10.79.{n}.2/24");
        let ok = ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]) && ip(&["link", "set", &ns_if, "netns", &ns.name])
            && ip(&["addr", "add", &here, "dev", &ns.host_if])
            && ip(&["link", "set", &ns.host_if, "up"])
            && ip(&["-n", &ns.name, "addr", "add", &there, "dev", &ns_if])
            && ip(&["-n", &ns.name, "link", "set", &ns_if, "up"])
            && ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }

    /// Every UDP packet leaving the namespace is dropped (policy routing:
    /// `ip rule ... ipproto udp blackhole`; no firewall tool needed).
    fn block_udp(&self) -> bool {
        Command::new("ip")
            .args([
                "-n",
                &self.name,
                "rule",
                "add",
                "ipproto",
                "udp",
                "blackhole",
            ])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Issue 13, proof 2 at the engine: a browser on another host (a network
/// namespace) whose UDP is dropped still publishes, with the answer as the
/// engine writes it (UDP and TCP candidates; only TCP can work).
#[test]
fn chromium_on_a_host_that_drops_udp_publishes_over_ice_tcp() {
    // A subnet of this process's own, so two runs at once do not collide.
    let n = (std::process::id() % 250) as u8;
    let Some(ns) = Netns::new(n) else {
        eprintln!("SKIPPED: cannot make a network namespace here (needs root and iproute2)");
        return;
    };
    assert!(ns.block_udp(), "ip rule ipproto udp blackhole");
    let (engine, events) = RtcEngine::start(RtcConfig {
        bind: format!("10.79.{n}.1:0").parse().unwrap(),
        ice_tcp: IceTcp::Listen(format!("10.79.{n}.1:0").parse().unwrap()),
        ..RtcConfig::default()
    })
    .expect("engine");
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = http_server(&format!("10.79.{n}.1:0"), engine.handle(), log.clone());
    let origin = format!("http://10.79.{n}.1:{port}");
    // getUserMedia needs a secure context; this test origin is declared one.
    let (browser, profile) = chromium(
        &format!("{origin}/"),
        Some(&ns.name),
        &[format!(
            "--unsafely-treat-insecure-origin-as-secure={origin}"
        )],
    );
    wait_for_audio(&events, &log);
    let handle = engine.handle();
    assert!(handle.stats().tcp_connections.load(Ordering::Relaxed) >= 1);
    let lines = log.lock().expect("log").clone();
    let candidates = lines
        .iter()
        .find(|l| l.starts_with("answer candidates:"))
        .expect("the page reported the answer");
    assert!(candidates.contains(" udp "), "{candidates}");
    assert!(candidates.contains("tcptype passive"), "{candidates}");
    drop(browser);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(profile);
}
