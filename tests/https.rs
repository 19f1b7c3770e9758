//! HTTPS in the binary: the API, WHIP, and every listener output over TLS
//! with no proxy (the fan-out seals each page per listener), a renewed
//! certificate picked up without dropping a listener, the redirect port,
//! and hostile TLS input refused, counted and harmless to listeners.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A test CA and a leaf for `localhost`/127.0.0.1 it signed.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "amphi test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .expect("CA");
        let ca_der = ca.der().clone();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Pki { dir, ca_der, ca };
        pki.issue("first");
        pki
    }

    /// Writes a new leaf to cert.pem/key.pem (`org` tells leaves apart).
    fn issue(&self, org: &str) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.ca).expect("leaf");
        // Written then renamed, as a certificate manager does.
        let tmp = self.dir.path().join("new.pem");
        std::fs::write(&tmp, leaf.pem()).unwrap();
        std::fs::rename(&tmp, self.cert()).unwrap();
        std::fs::write(&tmp, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, self.key()).unwrap();
        leaf.der().to_vec()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

struct TlsNode {
    child: Child,
    port: u16,
    redirect: u16,
    _data: tempfile::TempDir,
}

impl TlsNode {
    fn start(pki: &Pki) -> TlsNode {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let redirect = free_port();
        // AMPHI_TEST_BIN: another build under the same test (see common).
        let bin = std::env::var_os("AMPHI_TEST_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_amphi")), PathBuf::from);
        let child = Command::new(bin)
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--tls-cert")
            .arg(pki.cert())
            .arg("--tls-key")
            .arg(pki.key())
            .args(["--http-redirect", &format!("127.0.0.1:{redirect}")])
            .env("AMPHI_ADMIN_TOKEN", "admin-test-token")
            .env("AMPHI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn amphi");
        let node = TlsNode {
            child,
            port,
            redirect,
            _data: data,
        };
        wait_for(20, "the HTTPS node", || {
            client(pki)
                .get(node.url("/healthz"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        node
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(pki: &Pki) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_der(&pki.ca_der).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn api(pki: &Pki, method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Value {
    let mut req = client(pki).request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().expect("https request");
    assert!(
        res.status().is_success(),
        "{method} {url}: {}",
        res.status()
    );
    res.json().unwrap_or(Value::Null)
}

/// A live space over HTTPS: (id, host token).
fn live_space_tls(pki: &Pki, n: &TlsNode) -> (String, String) {
    let r = api(
        pki,
        "POST",
        &n.url("/api/v1/spaces"),
        Some("admin-test-token"),
        Some(json!({"title": "over TLS"})),
    );
    let id = r["space"]["id"].as_str().unwrap().to_owned();
    let host = r["host"]["token"].as_str().unwrap().to_owned();
    api(
        pki,
        "POST",
        &n.url(&format!("/api/v1/spaces/{id}/start")),
        Some(&host),
        None,
    );
    (id, host)
}

/// A TLS connection of our own (rustls, trusting the test CA).
fn tls_connect(pki: &Pki, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = amphi_tls::client_config(std::slice::from_ref(&pki.ca_der)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads a stream for `secs`; returns the bytes and the longest pause.
fn read_for(r: &mut impl Read, secs: f64) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    while start.elapsed().as_secs_f64() < secs {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
    (got, worst)
}

fn ffmpeg_https(pki: &Pki, url: &str, seconds: f32) -> Vec<f32> {
    let url = &common::near_live(url);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-tls_verify", "1", "-ca_file"])
        .arg(pki.ca_pem())
        .args(["-i", url, "-t", &seconds.to_string()])
        .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg over https failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A WHIP speaker (aiortc) publishing over HTTPS.
fn publish_tls(pki: &Pki, n: &TlsNode, id: &str, token: &str, freq: u32) -> Peer {
    let child = Command::new("python3")
        .arg(whip_client())
        .args(["--url", &n.url(&format!("/api/v1/spaces/{id}/whip"))])
        .args([
            "--token",
            token,
            "--freq",
            &freq.to_string(),
            "--seconds",
            "30",
        ])
        .arg("--loopback-only")
        .env("SSL_CERT_FILE", pki.ca_pem())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("whip client");
    Peer(child)
}

fn metric_tls(pki: &Pki, n: &TlsNode, name: &str) -> f64 {
    let text = client(pki)
        .get(n.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn https_carries_the_api_whip_and_every_listener_output() {
    let pki = Pki::new();
    let n = TlsNode::start(&pki);
    let (id, host) = live_space_tls(&pki, &n);
    let _speaker = publish_tls(&pki, &n, &id, &host, 440);
    wait_for(20, "the speaker's audio", || {
        metric_tls(&pki, &n, "amphi_ingest_packets_total") >= 50.0
    });

    // live.opus through ffmpeg's own TLS, verifying the certificate.
    // The program from now on, not a buffering player's 8 s burst.
    let pcm = ffmpeg_https(
        &pki,
        &n.url(&format!("/spaces/{id}/live.opus?burst_ms=300")),
        3.0,
    );
    assert!(pcm.len() > 48_000 * 2, "{} samples", pcm.len());
    let share = tone_share(&pcm[24_000..], 440.0);
    assert!(share > 0.5, "440 Hz share over https: {share}");

    // LL-HLS over https: ffmpeg reads the playlist, init, parts.
    let hls = ffmpeg_https(&pki, &n.url(&format!("/spaces/{id}/hls/live.m3u8")), 2.0);
    assert!(hls.len() > 48_000, "HLS over https: {} samples", hls.len());

    // wss: the WebSocket handshake and program messages over TLS.
    let mut ws = tls_connect(&pki, n.port);
    write!(
        ws,
        "GET /spaces/{id}/live.ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let (got, worst) = read_for(&mut ws, 2.0);
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(got.len() > 1000, "wss carried {} bytes in 2 s", got.len());
    assert!(worst < Duration::from_millis(400), "wss pause {worst:?}");
    // Its control frames are read through TLS: a ping gets its pong, a
    // close is echoed and the connection closed.
    let masked = |b0: u8, payload: &[u8]| {
        let key = [7u8, 1, 9, 3];
        let mut f = vec![b0, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    };
    let mut frames = got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..].to_vec();
    let mut next_control = |ws: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| loop {
        if frames.len() >= 2 {
            let (len, hdr) = match frames[1] & 0x7f {
                126 if frames.len() >= 4 => {
                    (usize::from(u16::from_be_bytes([frames[2], frames[3]])), 4)
                }
                n if n < 126 => (usize::from(n), 2),
                _ => (usize::MAX, 0),
            };
            if len != usize::MAX && frames.len() >= hdr + len {
                let f: Vec<u8> = frames.drain(..hdr + len).collect();
                if f[0] != 0x82 {
                    return Some((f[0], f[hdr..].to_vec()));
                }
                continue;
            }
        }
        let mut chunk = [0u8; 16384];
        match ws.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => frames.extend_from_slice(&chunk[..n]),
        }
    };
    ws.write_all(&masked(0x89, b"over tls")).unwrap();
    assert_eq!(next_control(&mut ws), Some((0x8a, b"over tls".to_vec())));
    let t0 = Instant::now();
    ws.write_all(&masked(0x88, &4002u16.to_be_bytes())).unwrap();
    assert_eq!(
        next_control(&mut ws),
        Some((0x88, 4002u16.to_be_bytes().to_vec()))
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

    // Plain HTTP on the HTTPS port: a clear 400, not a hang.
    let mut plain = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("speaks HTTPS"), "{answer}");

    // The redirect port: 308 to https, /healthz answered in plain.
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = r
        .get(format!("http://localhost:{}/s/{id}?x=1", n.redirect))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 308);
    assert_eq!(
        res.headers()["location"],
        format!("https://localhost:{}/s/{id}?x=1", n.port).as_str()
    );
    let res = r
        .get(format!("http://127.0.0.1:{}/healthz", n.redirect))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(metric_tls(&pki, &n, "amphi_tls_handshakes_total") >= 4.0);
}

#[test]
fn a_renewed_certificate_is_served_without_dropping_a_listener() {
    let pki = Pki::new();
    let n = TlsNode::start(&pki);
    let (id, _host) = live_space_tls(&pki, &n);
    let mut listener = tls_connect(&pki, n.port);
    write!(
        listener,
        "GET /spaces/{id}/live.opus HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let (first, _) = read_for(&mut listener, 1.0);
    assert!(first.starts_with(b"HTTP/1.0 200"), "{:?}", &first[..20]);
    let leaf_before = tls_connect_peer_leaf(&pki, n.port);

    let renewed = pki.issue("renewed");
    let start = Instant::now();
    wait_for(10, "the renewed certificate on new connections", || {
        tls_connect_peer_leaf(&pki, n.port) == renewed
    });
    assert_ne!(leaf_before, renewed);
    eprintln!("renewal picked up after {:?}", start.elapsed());

    // The listener connected before the renewal still gets its pages.
    let (more, worst) = read_for(&mut listener, 2.0);
    assert!(more.len() > 500, "{} bytes after the renewal", more.len());
    assert!(worst < Duration::from_millis(400), "pause {worst:?}");
}

/// The leaf certificate a new TLS connection is shown.
fn tls_connect_peer_leaf(pki: &Pki, port: u16) -> Vec<u8> {
    let mut s = tls_connect(pki, port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    s.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

#[test]
fn hostile_tls_input_is_refused_counted_and_hurts_no_listener() {
    let pki = Pki::new();
    let n = TlsNode::start(&pki);
    let (id, _host) = live_space_tls(&pki, &n);
    let reader = {
        let mut s = tls_connect(&pki, n.port);
        write!(
            s,
            "GET /spaces/{id}/live.opus HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        std::thread::spawn(move || read_for(&mut s, 9.0))
    };
    // 1,500 half-open connections: a TLS record header and nothing more.
    let mut held = Vec::new();
    for _ in 0..1500 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", n.port)) {
            let _ = c.write_all(&[0x16, 0x03, 0x01]);
            held.push(c);
        }
    }
    // Garbage that starts like a handshake, and a ClientHello cut short.
    for _ in 0..50 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", n.port)) {
            let _ = c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xff]);
        }
    }
    // The node stays responsive over TLS meanwhile.
    let t = Instant::now();
    assert_eq!(
        client(&pki)
            .get(n.url("/healthz"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let healthz = t.elapsed();
    let (bytes, worst) = reader.join().unwrap();
    assert!(
        healthz < Duration::from_secs(1),
        "/healthz took {healthz:?}"
    );
    assert!(bytes.len() > 2000, "the listener got {} bytes", bytes.len());
    assert!(
        worst < Duration::from_millis(300),
        "the listener's longest gap: {worst:?}"
    );
    // Each was refused before the handshake (1,024 in flight at most) or
    // timed out (5 s), and counted.
    wait_for(10, "the refused and failed handshakes counted", || {
        metric_tls(&pki, &n, "amphi_tls_handshake_failures_total")
            + metric_tls(&pki, &n, "amphi_tls_refused_total")
            >= 1550.0
    });
    drop(held);
}

/// Issue 14, finding 1, over TLS and on the redirect port: a request head
/// has one deadline from accept however slowly it trickles, after the
/// handshake as on plain HTTP.
#[test]
fn trickled_heads_over_tls_and_on_the_redirect_port_meet_one_deadline() {
    let pki = Pki::new();
    let n = TlsNode::start(&pki);
    let (id, _) = live_space_tls(&pki, &n);
    type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;
    let mut tls: Vec<(Tls, Instant)> = (0..100)
        .map(|i| {
            let mut c = tls_connect(&pki, n.port);
            let path = if i % 2 == 0 {
                format!("/spaces/{id}/live.opus")
            } else {
                "/api/v1/spaces".to_owned()
            };
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            c.flush().unwrap();
            c.sock.set_nonblocking(true).unwrap();
            (c, Instant::now())
        })
        .collect();
    let mut plain: Vec<(TcpStream, Instant)> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", n.redirect)).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            c.set_nonblocking(true).unwrap();
            (c, Instant::now())
        })
        .collect();
    let gone = |r: &mut dyn Read| {
        let mut b = [0u8; 1024];
        loop {
            match r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    };
    let start = Instant::now();
    let mut next = Instant::now() + Duration::from_secs(2);
    let mut longest = Duration::ZERO;
    while !tls.is_empty() || !plain.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} TLS and {} redirect-port heads still open after 30 s",
            tls.len(),
            plain.len()
        );
        let send = Instant::now() >= next;
        if send {
            next += Duration::from_secs(2);
        }
        tls.retain_mut(|(c, at)| {
            let closed = (send && (c.write_all(b"a").is_err() || c.flush().is_err())) || gone(c);
            if closed {
                longest = longest.max(at.elapsed());
            }
            !closed
        });
        plain.retain_mut(|(c, at)| {
            let closed = (send && c.write_all(b"a").is_err()) || gone(c);
            if closed {
                longest = longest.max(at.elapsed());
            }
            !closed
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "trickled heads (100 over TLS, 100 on the redirect port): longest lived {:.1} s",
        longest.as_secs_f64()
    );
    assert!(
        longest < Duration::from_secs(14),
        "a trickled head lived {longest:?}"
    );
}
