//! A network partition of one amphi node, for real (issue 15): the node
//! `p` runs in a network namespace this test makes (a veth pair on a
//! private 10.78.<k>.0/24 it picks unused), three routed nats-servers
//! (JetStream R3) and two more nodes (`b`, `c`) run outside. The cut is an
//! nftables rule in the namespace that silently drops every packet
//! between `p` and the NATS servers (no reset: `p` learns nothing), so
//! clients still reach `p` over HTTP and can be told to go elsewhere;
//! the heal deletes the rule.
//!
//! Per trial: a space started on `p` (its origin), a speaker publishing
//! through `b` (aiortc, `--reconnect`; its session runs on `p`), a
//! `live.ws` listener and an events client on `p`; the cut; `p` fences
//! itself (close 4001 to its `live.ws` listener, `{"type":"moved"}` and
//! close 1013 to its events client, the speaker's session closed) and
//! another node takes the space over; the speaker's client republishes and
//! a listener on `b` hears it from the new origin;
//! a hand raised through `b` while `p` is away; the heal; `p`'s view
//! converges (state, hands) and a listener on `p` is served again. A
//! sampler reads every node's `amphi_origin_spaces` and
//! `amphi_owned_spaces` every 200 ms throughout: never more than one.
//!
//! Needs root (network namespaces, nftables): without it the test prints
//! SKIPPED and passes. `AMPHI_PARTITION_TRIALS` (default 1) and
//! `AMPHI_PARTITION_SECS` (default 30) set the trials and the cut's length
//! (`bench/cluster.sh partition 20`).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message, stream::MaybeTlsStream};

/// Runs `cmd` (a shell command line), returning whether it succeeded.
fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The namespace and veth pair, removed on drop.
struct Netns {
    name: String,
    veth: String,
    /// The host side's address and the namespace side's.
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    /// Makes the namespace, or says why it cannot.
    fn make() -> Result<Netns, String> {
        let id = std::process::id();
        let name = format!("amphi-pt-{id}");
        let veth = format!("apt{id}h");
        let peer = format!("apt{id}n");
        // Leftovers of a run killed outright.
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let ns = line.split_whitespace().next().unwrap_or("");
                if let Some(pid) = ns.strip_prefix("amphi-pt-")
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    sh(&format!("ip netns pids {ns} | xargs -r kill -9"));
                    sh(&format!("ip netns del {ns}"));
                }
            }
        }
        if !sh(&format!("ip netns add {name}")) {
            return Err(format!(
                "cannot create network namespaces here (needs root with CAP_NET_ADMIN/CAP_SYS_ADMIN and iproute2; uid {})",
                Command::new("id")
                    .arg("-u")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default()
            ));
        }
        let used = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let k = (20..250)
            .map(|k| (k + id as usize) % 230 + 20)
            .find(|k| !used.contains(&format!(" 10.78.{k}.")))
            .ok_or("no free 10.78.x.0/24")?;
        let ns = Netns {
            name,
            veth,
            host_ip: format!("10.78.{k}.1"),
            ns_ip: format!("10.78.{k}.2"),
        };
        let steps = [
            format!("ip link add {} type veth peer name {peer}", ns.veth),
            format!("ip link set {peer} netns {}", ns.name),
            format!("ip addr add {}/24 dev {}", ns.host_ip, ns.veth),
            format!("ip link set {} up", ns.veth),
            format!("ip -n {} addr add {}/24 dev {peer}", ns.name, ns.ns_ip),
            format!("ip -n {} link set {peer} up", ns.name),
            format!("ip -n {} link set lo up", ns.name),
            format!("ip netns exec {} nft add table inet amphipt", ns.name),
        ];
        for s in &steps {
            if !sh(s) {
                return Err(format!("could not set the namespace up: {s}"));
            }
        }
        Ok(ns)
    }

    /// Drops every packet between the namespace and `ports` (the NATS
    /// servers' client ports), both ways.
    fn cut(&self, ports: &[u16]) {
        let set = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let n = &self.name;
        assert!(sh(&format!(
            "ip netns exec {n} nft add chain inet amphipt out '{{ type filter hook output priority 0; }}' && \
             ip netns exec {n} nft add rule inet amphipt out tcp dport '{{ {set} }}' drop && \
             ip netns exec {n} nft add chain inet amphipt in '{{ type filter hook input priority 0; }}' && \
             ip netns exec {n} nft add rule inet amphipt in tcp sport '{{ {set} }}' drop"
        )));
    }

    fn heal(&self) {
        let n = &self.name;
        assert!(sh(&format!(
            "ip netns exec {n} nft delete chain inet amphipt out && ip netns exec {n} nft delete chain inet amphipt in"
        )));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh(&format!("ip netns pids {} | xargs -r kill -9", self.name));
        sh(&format!("ip netns del {}", self.name));
        sh(&format!("ip link del {}", self.veth));
    }
}

/// The node in the namespace.
struct Inside {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Inside {
    fn start(ns: &Netns, nats: &str) -> Inside {
        let data = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(
                std::env::var_os("AMPHI_TEST_BIN")
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_amphi").into()),
            )
            .arg("serve")
            .arg("--http")
            .arg(format!("{}:{port}", ns.ns_ip))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--nats", nats, "--node-id", "p", "--orphan-grace", "600"])
            .env("AMPHI_ADMIN_TOKEN", ADMIN)
            .env("AMPHI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn amphi in the namespace");
        let base = format!("http://{}:{port}", ns.ns_ip);
        wait_for(20, "the node in the namespace", || {
            get(&format!("{base}/healthz")).is_some_and(|(s, _)| s == 200)
        });
        Inside {
            child,
            base,
            _data: data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET that may fail: its status and body (`None`: no answer in 3 s).
fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?
        .get(url)
        .send()
        .ok()?;
    Some((r.status().as_u16(), r.text().unwrap_or_default()))
}

/// Sum of a metric's samples at `base`'s `/metrics` (`None`: no answer).
fn metric_at(base: &str, name: &str) -> Option<f64> {
    let (status, text) = get(&format!("{base}/metrics"))?;
    (status == 200).then(|| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

type Ws = tungstenite::WebSocket<MaybeTlsStream<std::net::TcpStream>>;

fn ws(url: &str) -> Ws {
    let (mut s, _) = tungstenite::connect(url).expect("websocket");
    if let MaybeTlsStream::Plain(t) = s.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    s
}

/// The first frame's sequence number of a `live.ws` message.
fn first_seq(m: &Message) -> Option<u64> {
    seq_level(m).map(|(s, _)| s)
}

/// The first frame's sequence number and the level of a `live.ws` message.
fn seq_level(m: &Message) -> Option<(u64, u8)> {
    match m {
        Message::Binary(b) => amphi_media::wire::decode_message(b)
            .ok()
            .map(|m| (m.first_seq, m.level)),
        _ => None,
    }
}

/// Reads `s` until a message after frame `after` carries the speaker's
/// tone (louder than silence); returns its first frame.
fn hear_speaker(s: &mut Ws, after: u64, within: Duration, what: &str) -> u64 {
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < within, "{what}: the speaker was not heard");
        if let Some((seq, level)) = seq_level(&s.read().expect(what))
            && seq > after
            && level >= 20
        {
            return seq;
        }
    }
}

/// Reads until the server closes; returns the close code and what came
/// before it (text messages).
fn until_close(s: &mut Ws) -> (Option<u16>, Vec<String>) {
    let mut texts = Vec::new();
    loop {
        match s.read() {
            Ok(Message::Close(f)) => return (f.map(|f| u16::from(f.code)), texts),
            Ok(Message::Text(t)) => texts.push(t.to_string()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e} (after {texts:?})"),
        }
    }
}

fn view(base: &str, id: &str) -> Option<Value> {
    let (status, body) = get(&format!("{base}/api/v1/spaces/{id}"))?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

fn hands(v: &Value) -> Vec<String> {
    v["hands_raised"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["participant_id"].as_str().map(str::to_owned))
        .collect()
}

/// What one trial measured.
struct Trial {
    fenced_after: f64,
    taken_after: f64,
    speaker_back_after: f64,
    converged_after: f64,
}

fn trial(p: &Inside, others: &[&Server], cut: impl Fn(), heal: impl Fn(), secs: u64) -> Trial {
    let b = others[0];
    // A space started on p: p owns and mixes it.
    let r = call(
        "POST",
        &p.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(serde_json::json!({"title": "partition"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["space"]["id"].as_str().expect("id").to_owned();
    let host = r.body["host"]["token"].as_str().expect("token").to_owned();
    let r = call(
        "POST",
        &p.url(&format!("/api/v1/spaces/{id}/start")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_for(10, "b sees the space live", || {
        view(&b.url(""), &id).is_some_and(|v| v["state"] == "live")
    });
    wait_for(5, "p mixes the space", || {
        metric_at(&p.base, "amphi_origin_spaces") == Some(1.0)
    });
    let (_, tok) = {
        let r = call(
            "POST",
            &p.url(&format!("/api/v1/spaces/{id}/join")),
            None,
            Some(serde_json::json!({"name": "Pia"})),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        (
            r.body["participant_id"].as_str().unwrap_or("").to_owned(),
            r.body["token"].as_str().unwrap_or("").to_owned(),
        )
    };
    // The speaker publishes through b (its WHIP call runs on p, the
    // owner), and republishes by itself once its session is gone.
    let mut speaker = Command::new("python3")
        .arg(whip_client())
        .args(["--url", &b.url(&format!("/api/v1/spaces/{id}/whip"))])
        .args(["--token", &host, "--freq", "440", "--seconds", "600"])
        .arg("--reconnect")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("whip client");
    let ws_p = format!("ws://{}/spaces/{id}/live.ws", &p.base["http://".len()..]);
    let mut listener = ws(&ws_p);
    let mut events = ws(&format!(
        "ws://{}/api/v1/spaces/{id}/events?token={tok}",
        &p.base["http://".len()..]
    ));
    assert!(events.read().expect("snapshot").is_text());
    let last = hear_speaker(
        &mut listener,
        0,
        Duration::from_secs(20),
        "p's listener before the cut",
    );

    cut();
    let t_cut = Instant::now();
    // p fences itself: its listener is told to go elsewhere.
    let (code, _) = until_close(&mut listener);
    let fenced_after = t_cut.elapsed().as_secs_f64();
    assert_eq!(code, Some(amphi_media::wire::CLOSE_GO_ELSEWHERE));
    let (code, texts) = until_close(&mut events);
    assert_eq!(code, Some(1013), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("\"moved\"")),
        "no moved message: {texts:?}"
    );
    // It takes no new listener of the space.
    let r = call(
        "GET",
        &p.url(&format!("/spaces/{id}/live.opus")),
        None,
        None,
    );
    assert_eq!(r.status, 503, "{:?}", r.body);
    // Another node takes the space over; a listener there hears it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let taken_after = loop {
        let origins: f64 = others
            .iter()
            .filter_map(|s| metric_at(&s.url(""), "amphi_origin_spaces"))
            .sum();
        if origins == 1.0 {
            break t_cut.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "nobody took the space over");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut edge = ws(&format!("ws://127.0.0.1:{}/spaces/{id}/live.ws", b.port));
    // The speaker's session on p is gone: its client republishes, through
    // b, to the new origin, and b's listener hears it.
    let seen = hear_speaker(
        &mut edge,
        last,
        Duration::from_secs(30),
        "b's listener after the takeover",
    );
    let speaker_back_after = t_cut.elapsed().as_secs_f64();
    // The state moves on while p is away: a hand raised through b.
    let (pid, tok_b) = join(b, &id, "Bo");
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/hand")),
        Some(&tok_b),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // p, cut off, cannot act for the space: a write through it fails.
    let r = call(
        "DELETE",
        &p.url(&format!("/api/v1/spaces/{id}/hand")),
        Some(&tok_b),
        None,
    );
    assert_eq!(r.status, 503, "{:?}", r.body);
    let left = Duration::from_secs(secs).saturating_sub(t_cut.elapsed());
    std::thread::sleep(left);

    heal();
    let t_heal = Instant::now();
    let truth = view(&b.url(""), &id).expect("b's view");
    assert_eq!(hands(&truth), [pid]);
    wait_for(60, "p's view converges", || {
        view(&p.base, &id).is_some_and(|v| {
            v["state"] == "live" && hands(&v) == hands(&truth) && v["stage"] == truth["stage"]
        }) && metric_at(&p.base, "amphi_fenced_spaces") == Some(0.0)
    });
    // Its listeners can come back: served as an edge now.
    let mut back = ws(&ws_p);
    let mut again = 0;
    while again <= seen {
        again = first_seq(&back.read().expect("p's listener, back")).unwrap_or(0);
    }
    let converged_after = t_heal.elapsed().as_secs_f64();
    assert_eq!(metric_at(&p.base, "amphi_origin_spaces"), Some(0.0));
    // The space ends through the node that owns it now (b forwards).
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let _ = speaker.kill();
    let _ = speaker.wait();
    Trial {
        fenced_after,
        taken_after,
        speaker_back_after,
        converged_after,
    }
}

#[test]
fn a_partitioned_origin_fences_itself_and_rejoins_as_an_edge() {
    let ns = match Netns::make() {
        Ok(ns) => ns,
        Err(why) => {
            println!("partition: SKIPPED: {why}");
            return;
        }
    };
    let trials: usize = std::env::var("AMPHI_PARTITION_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let secs: u64 = std::env::var("AMPHI_PARTITION_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let nats = NatsCluster::start_on(&ns.host_ip);
    let ports: Vec<u16> = nats.servers.iter().map(|s| s.1).collect();
    let p = Inside::start(&ns, &nats.urls_from(0));
    let b = node_with(&nats.urls_from(1), "b", &["--orphan-grace", "600"], &[]);
    let c = node_with(&nats.urls_from(2), "c", &["--orphan-grace", "600"], &[]);

    // Every node's view of the spaces it originates and owns, every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let doubles = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let bases = [p.base.clone(), b.url(""), c.url("")];
        let (stop, doubles, samples) = (stop.clone(), doubles.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let read = |name| bases.iter().filter_map(|u| metric_at(u, name)).sum::<f64>();
                let (origins, owned) = (read("amphi_origin_spaces"), read("amphi_owned_spaces"));
                samples.fetch_add(1, Ordering::Relaxed);
                if origins > 1.0 || owned > 1.0 {
                    doubles.fetch_add(1, Ordering::Relaxed);
                    println!("double ownership: {origins} origins, {owned} leases held");
                }
                std::thread::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()));
            }
        })
    };

    let mut results = Vec::new();
    for i in 0..trials {
        let t = trial(&p, &[&b, &c], || ns.cut(&ports), || ns.heal(), secs);
        println!(
            "trial {i}: cut {secs} s; p fenced after {:.2} s, space taken over after {:.2} s, speaker heard from the new origin after {:.2} s, converged {:.2} s after the heal",
            t.fenced_after, t.taken_after, t.speaker_back_after, t.converged_after
        );
        assert!(
            t.taken_after > t.fenced_after,
            "taken over before p fenced itself"
        );
        results.push(t);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let doubles = doubles.load(Ordering::Relaxed);
    let samples = samples.load(Ordering::Relaxed);
    let pct = |mut v: Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let conv: Vec<f64> = results.iter().map(|t| t.converged_after).collect();
    let fenced: Vec<f64> = results.iter().map(|t| t.fenced_after).collect();
    let taken: Vec<f64> = results.iter().map(|t| t.taken_after).collect();
    let back: Vec<f64> = results.iter().map(|t| t.speaker_back_after).collect();
    let margin = results
        .iter()
        .map(|t| t.taken_after - t.fenced_after)
        .fold(f64::INFINITY, f64::min);
    println!(
        "partition of one node, {trials} trials of {secs} s: double ownership in {doubles} of {samples} samples; fenced p50 {:.2} s max {:.2} s; taken over p50 {:.2} s max {:.2} s (at least {margin:.2} s after the fence); speaker heard from the new origin p50 {:.2} s p95 {:.2} s max {:.2} s; converged after the heal p50 {:.2} s p95 {:.2} s max {:.2} s",
        pct(fenced.clone(), 0.5),
        pct(fenced, 1.0),
        pct(taken.clone(), 0.5),
        pct(taken, 1.0),
        pct(back.clone(), 0.5),
        pct(back.clone(), 0.95),
        pct(back, 1.0),
        pct(conv.clone(), 0.5),
        pct(conv.clone(), 0.95),
        pct(conv, 1.0),
    );
    assert_eq!(doubles, 0, "two origins at once");
    assert!(samples > 10);
}
