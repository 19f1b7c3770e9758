//! Shared helpers of the end-to-end tests: a real `amphi serve` process on
//! loopback, killed (by PID) when the handle drops.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

pub fn free_port() -> u16 {
    // Also check the UDP port is free: WebRTC binds the same number on UDP.
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().to_path_buf();
        let mut s = Server::start_in(&data, extra);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(data: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data, extra, &[])
    }

    /// [`Server::start_in`] with extra environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let port = free_port();
        // AMPHI_TEST_BIN runs another build under the same test (to show
        // a regression test fails before its fix).
        let bin = std::env::var_os("AMPHI_TEST_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_amphi")), PathBuf::from);
        let child = Command::new(bin)
            .arg("serve")
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("AMPHI_ADMIN_TOKEN", ADMIN)
            .env("AMPHI_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn amphi");
        let s = Server {
            child,
            port,
            data: data.to_path_buf(),
            _tmp: None,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(self.url("/healthz"))
                && r.status().is_success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("amphi did not become healthy on port {}", self.port);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// kill -9, keeping the data directory.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Resp {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut req = client.request(method.parse().expect("method"), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Resp {
        status,
        body,
        headers,
    }
}

/// The host ends the space (200 expected).
pub fn end_space(s: &Server, id: &str, host: &str) {
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/end")),
        Some(host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// Creates and starts a space; returns (space id, host token, host pid).
pub fn live_space(s: &Server, title: &str) -> (String, String, String) {
    live_space_with(s, serde_json::json!({ "title": title }))
}

/// Creates a space from `body` (the `POST /api/v1/spaces` JSON) and starts
/// it; returns (space id, host token, host pid).
pub fn live_space_with(s: &Server, body: Value) -> (String, String, String) {
    let r = call("POST", &s.url("/api/v1/spaces"), Some(ADMIN), Some(body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["space"]["id"].as_str().expect("id").to_owned();
    let host = r.body["host"]["token"].as_str().expect("token").to_owned();
    let host_pid = r.body["host"]["participant_id"]
        .as_str()
        .expect("pid")
        .to_owned();
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/start")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    (id, host, host_pid)
}

/// Joins a space; returns (pid, token).
pub fn join(s: &Server, id: &str, name: &str) -> (String, String) {
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/join")),
        None,
        Some(serde_json::json!({"name": name})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    (
        r.body["participant_id"].as_str().expect("pid").to_owned(),
        r.body["token"].as_str().expect("token").to_owned(),
    )
}

/// Path of the WHIP test publisher (aiortc).
pub fn whip_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whip_client.py")
}

/// A child process killed (by PID) and reaped when dropped.
pub struct Peer(pub Child);

impl Peer {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts publishing a sine of `freq` Hz over WHIP for `seconds`.
pub fn publish_tone(s: &Server, id: &str, token: &str, freq: u32, seconds: u32) -> Peer {
    publish_tone_with(s, id, token, freq, seconds, &[])
}

/// [`publish_tone`] with extra arguments for `scripts/whip_client.py`.
pub fn publish_tone_with(
    s: &Server,
    id: &str,
    token: &str,
    freq: u32,
    seconds: u32,
    extra: &[&str],
) -> Peer {
    assert!(
        Command::new("python3")
            .args(["-c", "import aiortc"])
            .status()
            .map(|st| st.success())
            .unwrap_or(false),
        "python3 with aiortc is required: run scripts/test (it installs scripts/requirements.txt)"
    );
    let child = Command::new("python3")
        .arg(whip_client())
        .args(["--url", &s.url(&format!("/api/v1/spaces/{id}/whip"))])
        .args(["--token", token])
        .args(["--freq", &freq.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .arg("--loopback-only")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn whip client");
    Peer(child)
}

/// `url` asking for a 300 ms connect burst if it is a `live.opus` URL: the
/// program from now on, as the audio tests judge what is said now (a
/// buffering player's burst, 8 s of history by default, would start
/// before the speaker the test heard; tests/native_playback.rs tests it).
pub fn near_live(url: &str) -> String {
    if !url.contains("/live.opus") || url.contains("burst_ms=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}burst_ms=300")
}

/// Decodes `seconds` of the Ogg stream with ffmpeg (a real player) into
/// mono 48 kHz float samples; `live.opus` is asked for a 300 ms burst
/// ([`near_live`]).
pub fn ffmpeg_listen(url: &str, seconds: f32) -> Vec<f32> {
    ffmpeg_decode(&near_live(url), seconds)
}

/// [`ffmpeg_listen`] with `url` as given.
pub fn ffmpeg_decode(url: &str, seconds: f32) -> Vec<f32> {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-nostdin",
            "-i",
            url,
            "-t",
            &seconds.to_string(),
            "-f",
            "f32le",
            "-ac",
            "1",
            "-ar",
            "48000",
            "-",
        ])
        .output()
        .expect("ffmpeg is required: run scripts/test (it installs it)");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Share of the signal's energy at `freq` (0..1), over the whole buffer.
pub fn tone_share(samples: &[f32], freq: f32) -> f32 {
    amphi_media::analysis::tone_ratio(samples, freq, 48_000)
}

/// Waits until `f` holds, or panics with `what` after `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// A minimal WebSocket reader for `live.ws`: the test controls the socket
/// (receive buffer, pauses) to play a slow or a reconnecting listener.
pub struct WsReader {
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl WsReader {
    pub fn connect(port: u16, path: &str, rcvbuf: Option<usize>) -> WsReader {
        use std::io::Write;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).expect("rcvbuf");
        }
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        sock.connect(&addr.into()).expect("connect");
        let mut stream: std::net::TcpStream = sock.into();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .expect("write");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut r = WsReader {
            stream,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            r.fill();
        };
        let head = String::from_utf8_lossy(&r.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        r.buf.drain(..head_end);
        r
    }

    fn fill(&mut self) -> usize {
        use std::io::Read;
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "server closed the WebSocket");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next message as (first_seq, frame count).
    pub fn next(&mut self) -> (u64, u64) {
        let (first, count, _) = self.next_with_level();
        (first, count)
    }

    /// The next message as (first_seq, frame count, program level).
    pub fn next_with_level(&mut self) -> (u64, u64, u8) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[0], 0x82, "expected a final binary frame");
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().expect("8")) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let msg = amphi_media::wire::decode_message(&self.buf[hdr..hdr + len])
                        .expect("valid live.ws message");
                    let out = (msg.first_seq, msg.frames.len() as u64, msg.level);
                    self.buf.drain(..hdr + len);
                    return out;
                }
            }
            self.fill();
        }
    }
}

/// Sum of the samples of a metric (all label sets) in `/metrics`.
pub fn metric(s: &Server, name: &str) -> f64 {
    let text = call("GET", &s.url("/metrics"), None, None)
        .body
        .as_str()
        .unwrap_or_default()
        .to_owned();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Seconds of `pcm` (100 ms blocks) where `freq` carries most of the energy.
pub fn seconds_of_tone(pcm: &[f32], freq: f32) -> f64 {
    pcm.chunks_exact(4800)
        .filter(|b| tone_share(b, freq) > 0.5)
        .count() as f64
        * 0.1
}

/// Waits until the mixer has received `n` audio packets.
pub fn wait_for_audio(s: &Server, n: f64) {
    wait_for(20, "audio packets at the mixer", || {
        metric(s, "amphi_ingest_packets_total") >= n
    });
}

/// Ends the space as its host and returns the seconds of `freq` in the
/// recording, which must be published within 3 s of the end.
pub fn end_and_measure_recording(s: &Server, id: &str, host: &str, freq: f32) -> f64 {
    end_space(s, id, host);
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(3, "the recording", || {
        call("GET", &rec, None, None).status == 200
    });
    seconds_of_tone(&ffmpeg_listen(&rec, 3600.0), freq)
}

/// A real `nats-server` with JetStream on loopback, killed (by PID) when
/// the handle drops. `restart` keeps its port and its store.
pub struct Nats {
    pub child: Child,
    pub port: u16,
    pub monitor: u16,
    pub store: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let store = tempfile::tempdir().expect("tempdir");
        let (port, monitor) = (free_port(), free_port());
        let n = Nats {
            child: Nats::spawn(port, monitor, store.path()),
            port,
            monitor,
            store,
        };
        n.wait_ready();
        n
    }

    fn spawn(port: u16, monitor: u16, store: &Path) -> Child {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nats-server is required: run scripts/test (it installs it)");
        Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .args(["-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server")
    }

    fn wait_ready(&self) {
        wait_for(10, "nats-server", || {
            reqwest::blocking::get(format!(
                "http://127.0.0.1:{}/healthz?js-enabled-only=true",
                self.monitor
            ))
            .is_ok_and(|r| r.status().is_success())
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// kill -9 and start again on the same port and store.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// kill -9 (see [`Nats::start_again`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped server again on the same port and store.
    pub fn start_again(&mut self) {
        self.child = Nats::spawn(self.port, self.monitor, self.store.path());
        self.wait_ready();
    }

    /// The lease on `space` in the cluster's key-value store, read with the
    /// plain NATS protocol (a JetStream "last message of a subject" get), so
    /// a test can wait for a dead owner's lease to expire instead of
    /// sleeping through its TTL.
    pub fn lease(&self, space: &str) -> Option<amphi_cluster::Lease> {
        self.lease_at(space).map(|(l, _)| l)
    }

    /// The lease on `space` and its revision.
    pub fn lease_at(&self, space: &str) -> Option<(amphi_cluster::Lease, u64)> {
        lease_on(self.port, space)
    }

    /// Waits until the lease on `space` has expired (its key has not
    /// changed for the TTL, as any node measures it), or been taken over
    /// by another node than `owner`.
    pub fn wait_lease_expired(&self, space: &str, owner: &str) {
        let ttl = Duration::from_millis(amphi_cluster::lease::TTL_MS as u64);
        let mut seen: Option<(u64, Instant)> = None;
        wait_for(15, "the dead owner's lease to expire", || {
            let Some((l, rev)) = self.lease_at(space) else {
                return false;
            };
            if l.node != owner {
                return true;
            }
            match seen {
                Some((r, since)) if r == rev => since.elapsed() >= ttl,
                _ => {
                    seen = Some((rev, Instant::now()));
                    false
                }
            }
        });
    }

    /// The server's total payload bytes sent to clients (`/varz`).
    pub fn out_bytes(&self) -> u64 {
        let v: Value = reqwest::blocking::get(format!("http://127.0.0.1:{}/varz", self.monitor))
            .expect("varz")
            .json()
            .expect("varz json");
        v["out_bytes"].as_u64().expect("out_bytes")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a cluster node `name` on `nats`.
pub fn node(nats: &Nats, name: &str) -> Server {
    Server::start(&["--nats", &nats.url(), "--node-id", name])
}

/// Starts a cluster node `name` on NATS at `urls` (one URL or a comma
/// list), with extra arguments and environment.
pub fn node_with(urls: &str, name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--nats", urls, "--node-id", name];
    args.extend_from_slice(extra);
    let mut s = Server::start_with_env(tmp.path(), &args, envs);
    s._tmp = Some(tmp);
    s
}

/// Three real `nats-server`s routed into one cluster on loopback, with
/// JetStream (buckets get three replicas). Each server can be killed and
/// started again on its ports and store.
pub struct NatsCluster {
    pub servers: Vec<(Option<Child>, u16, u16, tempfile::TempDir)>,
    pub routes: Vec<u16>,
    /// The address every server listens on (clients, monitoring, routes).
    pub ip: String,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        NatsCluster::start_on("127.0.0.1")
    }

    /// [`NatsCluster::start`] listening on `ip` (a test network's address,
    /// for nodes in a network namespace).
    pub fn start_on(ip: &str) -> NatsCluster {
        // A port picked free can be taken by another test before the
        // server binds it; that server then exits at once. Such a start is
        // thrown away and made again on fresh ports.
        for attempt in 1..=3 {
            let servers: Vec<_> = (0..3)
                .map(|_| {
                    (
                        None,
                        free_port(),
                        free_port(),
                        tempfile::tempdir().expect("tempdir"),
                    )
                })
                .collect();
            let routes = (0..3).map(|_| free_port()).collect();
            let mut c = NatsCluster {
                servers,
                routes,
                ip: ip.to_owned(),
            };
            for i in 0..3 {
                c.spawn(i);
            }
            if c.came_up(Duration::from_secs(60)) {
                return c;
            }
            eprintln!(
                "a NATS cluster did not come up (attempt {attempt} of 3); again on fresh ports"
            );
        }
        panic!("timed out waiting for nats-server in the cluster (3 attempts)");
    }

    /// Whether all three servers answer their health check and the
    /// JetStream meta group has a leader within `limit`; `false` at once
    /// if a server exited (its port was taken).
    fn came_up(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for s in &mut self.servers {
                if let Some(child) = s.0.as_mut()
                    && matches!(child.try_wait(), Ok(Some(_)))
                {
                    return false;
                }
            }
            let healthy = (0..3).all(|i| {
                reqwest::blocking::get(format!("http://{}:{}/healthz", self.ip, self.servers[i].2))
                    .is_ok_and(|r| r.status().is_success())
            });
            let led = healthy
                && reqwest::blocking::get(format!("http://{}:{}/jsz", self.ip, self.servers[0].2))
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .is_some_and(|v| v["meta_cluster"]["leader"].is_string());
            if led {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn spawn(&mut self, i: usize) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nats-server is required: run scripts/test (it installs it)");
        let routes: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("nats://{}:{}", self.ip, self.routes[j]))
            .collect();
        let (_, port, monitor, store) = &self.servers[i];
        let child = Command::new(bin)
            .args(["-a", &self.ip, "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .args(["-n", &format!("s{i}")])
            .args(["--cluster_name", "amphi"])
            .args([
                "--cluster",
                &format!("nats://{}:{}", self.ip, self.routes[i]),
            ])
            .args(["--routes", &routes.join(",")])
            .args(["-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.servers[i].0 = Some(child);
    }

    fn wait_ready(&self, i: usize) {
        let monitor = self.servers[i].2;
        wait_for(40, "nats-server in the cluster", || {
            reqwest::blocking::get(format!("http://{}:{monitor}/healthz", self.ip))
                .is_ok_and(|r| r.status().is_success())
        });
    }

    /// Server `i`'s client URL.
    pub fn url_of(&self, i: usize) -> String {
        format!("nats://{}:{}", self.ip, self.servers[i].1)
    }

    /// All three client URLs, as a comma list, server `first` first.
    pub fn urls_from(&self, first: usize) -> String {
        (0..3)
            .map(|k| self.url_of((first + k) % 3))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// kill -9 server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn start_again(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// The server leading stream `name` now, as the running servers report
    /// it.
    pub fn leader_of(&self, name: &str) -> Option<usize> {
        (0..3)
            .filter(|i| self.servers[*i].0.is_some())
            .find_map(|i| {
                let v = reqwest::blocking::get(format!(
                    "http://{}:{}/jsz?streams=true",
                    self.ip, self.servers[i].2
                ))
                .ok()?
                .json::<Value>()
                .ok()?;
                let leader: usize = v["account_details"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                    .find(|s| s["name"] == name)?["cluster"]["leader"]
                    .as_str()?
                    .strip_prefix('s')?
                    .parse()
                    .ok()?;
                (self.servers[leader].0.is_some()).then_some(leader)
            })
    }

    /// The server leading the JetStream meta group now.
    pub fn meta_leader(&self) -> Option<usize> {
        (0..3)
            .filter(|i| self.servers[*i].0.is_some())
            .find_map(|i| {
                reqwest::blocking::get(format!("http://{}:{}/jsz", self.ip, self.servers[i].2))
                    .ok()?
                    .json::<Value>()
                    .ok()?["meta_cluster"]["leader"]
                    .as_str()?
                    .strip_prefix('s')?
                    .parse()
                    .ok()
            })
    }

    /// Moves the leadership of stream `name` to server `to`: asks the
    /// leader to step down until `to` is elected (each step down elects
    /// one of the others).
    pub fn lead_stream_on(&self, name: &str, to: usize) {
        for _ in 0..20 {
            if self.leader_of(name) == Some(to) {
                return;
            }
            let port = self.servers[to].1;
            let v = nats_request(port, &format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"), "");
            assert!(v.get("error").is_none(), "step down: {v}");
            wait_for(10, "a new stream leader", || self.leader_of(name).is_some());
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{name} never came to be led by s{to}");
    }

    /// The replicas of stream `name` that are current (leader included),
    /// as its leader reports them (0 if no running server leads it).
    pub fn current_replicas(&self, name: &str) -> usize {
        for i in 0..3 {
            if self.servers[i].0.is_none() {
                continue;
            }
            let monitor = self.servers[i].2;
            let Some(v) = reqwest::blocking::get(format!(
                "http://{}:{monitor}/jsz?streams=true&raft=true",
                self.ip
            ))
            .ok()
            .and_then(|r| r.json::<Value>().ok()) else {
                continue;
            };
            for a in v["account_details"].as_array().into_iter().flatten() {
                for s in a["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == name && s["cluster"]["leader"] == format!("s{i}").as_str() {
                        let current = s["cluster"]["replicas"]
                            .as_array()
                            .map_or(0, |r| r.iter().filter(|r| r["current"] == true).count());
                        return 1 + current;
                    }
                }
            }
        }
        0
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

impl NatsCluster {
    /// The server amphi node `name` is connected to now.
    pub fn server_of(&self, name: &str) -> Option<usize> {
        (0..3).find(|i| {
            self.servers[*i].0.is_some()
                && reqwest::blocking::get(format!(
                    "http://{}:{}/connz?limit=1000",
                    self.ip, self.servers[*i].2
                ))
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| {
                    v["connections"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["name"] == format!("amphi {name}").as_str())
                })
        })
    }
}

/// The lease on `space` and its revision, read from the NATS server on
/// `port` with the plain protocol (a JetStream "last message of a subject"
/// get).
pub fn lease_on(port: u16, space: &str) -> Option<(amphi_cluster::Lease, u64)> {
    use base64::Engine;
    let bucket = amphi_cluster::LEASES_BUCKET;
    let req = format!("{{\"last_by_subj\":\"$KV.{bucket}.{space}\"}}");
    let v = nats_request(port, &format!("$JS.API.STREAM.MSG.GET.KV_{bucket}"), &req);
    // No such key: `{"error": ...}`.
    let data = v["message"]["data"].as_str()?;
    let value = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    let revision = v["message"]["seq"].as_u64().expect("seq");
    amphi_cluster::Lease::decode(&value).map(|l| (l, revision))
}

/// A request to the NATS server on `port` with the plain protocol; its
/// JSON answer (within 5 s).
pub fn nats_request(port: u16, subject: &str, req: &str) -> Value {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("nats");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    write!(
        w,
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.lease 1\r\nPUB {subject} _INBOX.lease {}\r\n{req}\r\n",
        req.len()
    )
    .expect("write to nats");
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).expect("read from nats") > 0,
            "nats closed"
        );
        if line.starts_with("PING") {
            w.write_all(b"PONG\r\n").expect("pong");
        }
        assert!(!line.starts_with("-ERR"), "nats: {line}");
        let Some(head) = line.strip_prefix("MSG ") else {
            continue;
        };
        let len: usize = head
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .expect("MSG length");
        let mut payload = vec![0; len + 2];
        r.read_exact(&mut payload).expect("MSG payload");
        return serde_json::from_slice(&payload[..len]).expect("JSON reply");
    }
}

impl NatsCluster {
    /// The lease on `space`, read from any running server.
    pub fn lease_of(&self, space: &str) -> Option<amphi_cluster::Lease> {
        let (_, port, _, _) = self.servers.iter().find(|s| s.0.is_some())?;
        lease_on(*port, space).map(|(l, _)| l)
    }
}
