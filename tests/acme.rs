//! Automatic certificates against a real ACME server: Debian's `pebble`
//! (Let's Encrypt's test CA) on loopback, with a configuration of the
//! test's own. Pebble validates `localhost` (resolved by the system to
//! 127.0.0.1) on the node's ports: its TLS-ALPN-01 port is the node's
//! HTTPS port, its HTTP-01 port the node's `--http-redirect` port; the
//! other one points at a closed port, so a certificate proves which
//! challenge the node answered.
//!
//! Renewal is forced with the hidden `--acme-renew-after SECS` (testing
//! only: renew once the certificate is that old; pebble's certificates
//! last years).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// The TLS of pebble's own API (a CA of the test's and a leaf for
/// 127.0.0.1); the node trusts it through `--acme-ca-root`.
struct PebbleTls {
    dir: tempfile::TempDir,
}

impl PebbleTls {
    fn new() -> PebbleTls {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        PebbleTls { dir }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// A pebble process (killed by PID on drop).
struct Pebble {
    child: Child,
    port: u16,
    mgmt: u16,
    tls: PebbleTls,
}

impl Pebble {
    /// Pebble validating tls-alpn-01 on `tls_port` and http-01 on
    /// `http_port`.
    fn start(tls: PebbleTls, port: u16, tls_port: u16, http_port: u16) -> Pebble {
        let mgmt = free_port();
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": tls.dir.path().join("cert.pem"),
            "privateKey": tls.dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let path = tls.dir.path().join("pebble.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Deterministic runs: no nonces rejected on purpose.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (apt-get install pebble; scripts/test installs it)");
        let p = Pebble {
            child,
            port,
            mgmt,
            tls,
        };
        wait_for(20, "pebble", || {
            p.api()
                .get(format!("https://127.0.0.1:{}/dir", p.port))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        p
    }

    fn api(&self) -> reqwest::blocking::Client {
        let ca = std::fs::read(self.tls.ca_pem()).unwrap();
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root pebble issues under (fetched from its management API; a
    /// new one every pebble run).
    fn root(&self) -> CertificateDer<'static> {
        let pem = self
            .api()
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.bytes())
            .expect("pebble's root");
        CertificateDer::from_pem_slice(&pem).expect("a PEM root")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An amphi node with `--acme-domain localhost`.
struct AcmeNode {
    child: Child,
    port: u16,
}

impl AcmeNode {
    fn start(data: &Path, port: u16, directory: &str, ca: &Path, extra: &[&str]) -> AcmeNode {
        let child = Command::new(env!("CARGO_BIN_EXE_amphi"))
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args(["--acme-domain", "localhost", "--acme-directory", directory])
            .arg("--acme-ca-root")
            .arg(ca)
            .args(["--acme-email", "ops@example.org"])
            .args(extra)
            .env("AMPHI_ADMIN_TOKEN", ADMIN)
            .env("AMPHI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn amphi");
        AcmeNode { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

impl Drop for AcmeNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS connection trusting only `root`, for `localhost`.
fn tls_connect(
    root: &CertificateDer<'static>,
    port: u16,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let cfg = amphi_tls::client_config(std::slice::from_ref(root)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The leaf a new connection is shown, if the chain verifies up to `root`
/// for `localhost` (rustls's webpki verifier).
fn verified_leaf(root: &CertificateDer<'static>, port: u16) -> Option<Vec<u8>> {
    let s = tls_connect(root, port).ok()?;
    Some(s.conn.peer_certificates()?.first()?.to_vec())
}

fn https_client(root: &CertificateDer<'static>) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(root).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn api(c: &reqwest::blocking::Client, url: &str, token: &str, body: Option<Value>) -> Value {
    let mut req = c.post(url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().expect("https request");
    assert!(res.status().is_success(), "POST {url}: {}", res.status());
    res.json().unwrap_or(Value::Null)
}

/// What plain HTTP gets on the HTTPS port.
fn plain_answer(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new(); // not listening yet
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write: the node answers after the first byte.
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// A port nothing listens on (bound then released).
fn closed_port() -> u16 {
    free_port()
}

#[test]
fn a_node_gets_its_certificate_from_pebble_over_tls_alpn_and_renews_it_under_a_listener() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let pebble_port = free_port();
    let tls = PebbleTls::new();

    // The node starts before its CA can be reached: it runs, and says why
    // it has no certificate yet.
    let started = Instant::now();
    let node = AcmeNode::start(
        data.path(),
        port,
        &format!("https://127.0.0.1:{pebble_port}/dir"),
        &tls.ca_pem(),
        &["--acme-renew-after", "15"],
    );
    wait_for(20, "the node's port", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let answer = plain_answer(port, "/readyz");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("no_certificate"), "{answer}");
    assert!(answer.contains("localhost"), "{answer}");

    // Now the CA is up; HTTP-01 points nowhere, so only TLS-ALPN-01 on
    // the node's HTTPS port can pass.
    let pebble = Pebble::start(tls, pebble_port, port, closed_port());
    let root = pebble.root();
    wait_for(60, "a certificate issued by pebble", || {
        verified_leaf(&root, port).is_some()
    });
    eprintln!(
        "first certificate served {:?} after the node started",
        started.elapsed()
    );
    let first = verified_leaf(&root, port).unwrap();
    let web = https_client(&root);
    let ready = web.get(node.url("/readyz")).send().unwrap();
    assert_eq!(ready.status().as_u16(), 200, "/readyz once certified");

    // The account key and the certificate are kept in the data dir, 0600.
    use std::os::unix::fs::PermissionsExt;
    let acme = data.path().join("acme");
    let mut kept: Vec<String> = std::fs::read_dir(&acme)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert!(kept.iter().any(|f| f.starts_with("account-")), "{kept:?}");
    for f in ["cert.pem", "key.pem"] {
        assert!(kept.iter().any(|k| k == f), "{kept:?}");
    }
    for f in &kept {
        let mode = std::fs::metadata(acme.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A live space and a live.opus listener over TLS, connected before the
    // renewal.
    let r = api(
        &web,
        &node.url("/api/v1/spaces"),
        ADMIN,
        Some(json!({"title": "ACME"})),
    );
    let id = r["space"]["id"].as_str().unwrap().to_owned();
    let host = r["host"]["token"].as_str().unwrap().to_owned();
    api(
        &web,
        &node.url(&format!("/api/v1/spaces/{id}/start")),
        &host,
        None,
    );
    let mut listener = tls_connect(&root, port).unwrap();
    write!(
        listener,
        "GET /spaces/{id}/live.opus HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reading = stop.clone();
    let reader = std::thread::spawn(move || {
        // Reads until told to stop (after the renewal), tracking the
        // longest pause between reads.
        let start = Instant::now();
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let mut total = 0usize;
        let mut pages = 0usize;
        let mut tail: Vec<u8> = Vec::new();
        let mut head = Vec::new();
        let mut buf = [0u8; 16384];
        while !stop_reading.load(std::sync::atomic::Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(90)
        {
            match listener.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if head.len() < 16 {
                        head.extend_from_slice(&buf[..n.min(16)]);
                    }
                    total += n;
                    // Ogg pages, counted by their capture pattern (a
                    // pattern split across reads is caught by the tail).
                    tail.extend_from_slice(&buf[..n]);
                    pages += tail.windows(4).filter(|w| *w == b"OggS").count();
                    let keep = tail.len().min(3);
                    tail.drain(..tail.len() - keep);
                    if total > 4000 {
                        worst = worst.max(last.elapsed());
                    }
                    last = Instant::now();
                }
                Err(e) => panic!("the listener's stream broke: {e}"),
            }
        }
        (head, total, pages, worst, start.elapsed())
    });

    // The forced renewal (15 s after issue) swaps the certificate.
    wait_for(60, "the renewed certificate on new connections", || {
        verified_leaf(&root, port).is_some_and(|leaf| leaf != first)
    });
    let renewed = verified_leaf(&root, port).unwrap();
    assert_ne!(renewed, first);
    let stored = CertificateDer::pem_file_iter(acme.join("cert.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(stored.as_ref(), renewed.as_slice(), "the renewal is stored");

    // The listener keeps going after the swap.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (head, total, pages, worst, secs) = reader.join().unwrap();
    assert!(head.starts_with(b"HTTP/1.0 200"), "{head:?}");
    eprintln!(
        "listener across the renewal: {pages} Ogg pages, {total} bytes in {secs:?}, longest pause {worst:?}"
    );
    // 100 ms pages (the program is silence, no speaker): ten a second.
    assert!(
        pages as f64 > 8.0 * secs.as_secs_f64(),
        "{pages} pages in {secs:?}"
    );
    assert!(worst < Duration::from_millis(400), "pause {worst:?}");

    // Restarted with the CA gone and no forced renewal, the node serves
    // the stored certificate at once.
    drop(node);
    drop(pebble);
    let node = AcmeNode::start(
        data.path(),
        port,
        &format!("https://127.0.0.1:{pebble_port}/dir"),
        &PebbleTls::new().ca_pem(),
        &[],
    );
    wait_for(20, "the stored certificate after a restart", || {
        verified_leaf(&root, port).is_some()
    });
    assert_eq!(verified_leaf(&root, port).unwrap(), renewed);
    drop(node);
}

#[test]
fn with_a_redirect_port_the_node_answers_http_01() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let redirect = free_port();
    // TLS-ALPN-01 points nowhere: only HTTP-01 on the redirect port passes.
    let pebble = Pebble::start(PebbleTls::new(), free_port(), closed_port(), redirect);
    let root = pebble.root();
    let node = AcmeNode::start(
        data.path(),
        port,
        &pebble.directory(),
        &pebble.tls.ca_pem(),
        &["--http-redirect", &format!("127.0.0.1:{redirect}")],
    );
    wait_for(60, "a certificate issued by pebble over HTTP-01", || {
        verified_leaf(&root, port).is_some()
    });
    let web = https_client(&root);
    assert_eq!(
        web.get(node.url("/healthz"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // The redirect port's /readyz agrees, and the challenge is gone.
    let plain = reqwest::blocking::get(format!("http://127.0.0.1:{redirect}/readyz")).unwrap();
    assert_eq!(plain.status().as_u16(), 200);
    let gone = reqwest::blocking::get(format!(
        "http://127.0.0.1:{redirect}/.well-known/acme-challenge/anything"
    ))
    .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
}

#[test]
fn a_failing_challenge_is_reported_and_retried() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    // Pebble validates on ports where nothing listens: every order fails.
    let pebble = Pebble::start(PebbleTls::new(), free_port(), closed_port(), closed_port());
    let node = AcmeNode::start(
        data.path(),
        port,
        &pebble.directory(),
        &pebble.tls.ca_pem(),
        &[],
    );
    // The node runs, and says why it has no certificate: the CA's own
    // reason for the failed TLS-ALPN-01 validation.
    let mut answer = String::new();
    wait_for(30, "the failed order's reason in /readyz", || {
        answer = plain_answer(node.port, "/readyz");
        answer.contains("failed")
    });
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("tls-alpn-01"), "{answer}");
    assert!(answer.contains("retrying in 3s"), "{answer}");
    // Retried, with backoff.
    wait_for(20, "the second failure", || {
        plain_answer(node.port, "/readyz").contains("retrying in 6s")
    });
    // No certificate was stored, and no handshake succeeds.
    assert!(!data.path().join("acme/cert.pem").exists());
    assert!(verified_leaf(&pebble.root(), port).is_none());
}
