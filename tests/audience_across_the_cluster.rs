//! The audience across a cluster: three amphi nodes on three routed
//! `nats-server`s, 5,000 named participants holding events connections
//! spread over them. Any node shows the same bounded view (the newest 500
//! across the cluster, the exact total), a node holding few of them keeps
//! at most 500 entries per other node (its memory does not follow the
//! audience), an invitation made on the owner reaches a listener connected
//! to another node, who accepts there and is on stage; the analytics sum
//! every node's joins and listeners. The nodes' CPU per join is measured.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{Message, connect};

/// Named participants in all.
const N: usize = 5000;
/// Of which on node A (the owner); the rest split between B and C.
const ON_A: usize = 50;
/// Stream listeners per node (for the analytics' peak).
const STREAMS_PER_NODE: usize = 100;

/// CPU time (user + system) a process used, in µs.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // Clock ticks are 100 Hz on Linux.
    ticks * 10_000
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Joins as `name` over a raw HTTP/1.1 call; returns the token.
async fn join_raw(port: u16, space: &str, name: &str) -> String {
    let body = format!("{{\"name\":\"{name}\"}}");
    let req = format!(
        "POST /api/v1/spaces/{space}/join HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "join refused: {text}");
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(json).expect("json");
    v["token"].as_str().expect("token").to_owned()
}

/// Opens an events connection: a bare upgrade (a light client whose
/// every later byte is read and dropped).
async fn open_events(port: u16, space: &str, token: &str) -> TcpStream {
    let req = format!(
        "GET /api/v1/spaces/{space}/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    s
}

/// Holds a connection, reading and dropping what comes, until aborted.
async fn drain(mut s: TcpStream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn audience(s: &Server, id: &str, tok: &str, q: &str) -> Value {
    let r = call(
        "GET",
        &s.url(&format!("/api/v1/spaces/{id}/audience{q}")),
        Some(tok),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn stats(s: &Server, id: &str) -> Value {
    let r = call(
        "GET",
        &s.url(&format!("/api/v1/spaces/{id}/stats")),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn metric_of(s: &Server, name: &str) -> f64 {
    metric(s, name)
}

/// Raises this process's open-files limit to its hard limit (5,000
/// connections held here; the default soft limit may be 1,024).
fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn five_thousand_named_listeners_across_three_nodes_are_one_bounded_audience() {
    raise_nofile();
    let nats = NatsCluster::start();
    let lift = [
        "--join-rate-per-ip",
        "100000",
        "--max-conns-per-ip",
        "50000",
        // The webhook receiver is on loopback.
        "--webhook-allow-private",
    ];
    let a = node_with(&nats.urls_from(0), "a", &lift, &[]);
    let b = node_with(&nats.urls_from(1), "b", &lift, &[]);
    let c = node_with(&nats.urls_from(2), "c", &lift, &[]);
    let (id, host, _) = live_space(&a, "Across the cluster");
    for s in [&b, &c] {
        wait_for(20, "the space is live on every node", || {
            call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).body["state"] == "live"
        });
    }
    let nodes = [&a, &b, &c];
    let pids: Vec<u32> = nodes.iter().map(|s| s.child.id()).collect();
    let rss0: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // Idle CPU of the three nodes (their 1 s and 500 ms loops), to subtract.
    let idle_secs = 4.0;
    let c0: u64 = pids.iter().map(|p| cpu_us(*p)).sum();
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_us_per_s = (pids.iter().map(|p| cpu_us(*p)).sum::<u64>() - c0) as f64 / idle_secs;

    // 5,000 joins with a name, each holding an events connection: 50 on
    // A, the rest alternating between B and C.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ports: Vec<u16> = (0..N)
        .map(|i| match i {
            i if i < ON_A => a.port,
            i if i % 2 == 0 => b.port,
            _ => c.port,
        })
        .collect();
    let space = Arc::new(id.clone());
    // At most 64 joins and upgrades in flight.
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut held = Vec::with_capacity(N);
    // When each participant's upgrade was answered (their arrival, as the
    // client saw it), by index.
    let mut arrived: Vec<(Instant, usize)> = Vec::with_capacity(N);
    // Opens participants `range`; returns (seconds, nodes' CPU µs).
    let mut open = |range: std::ops::Range<usize>| {
        let t0 = Instant::now();
        let cpu0: u64 = pids.iter().map(|p| cpu_us(*p)).sum();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(N);
        let n = range.len();
        for i in range {
            let port = ports[i];
            let space = space.clone();
            let ready = ready_tx.clone();
            let limit = limit.clone();
            held.push(rt.spawn(async move {
                let permit = limit.acquire_owned().await.expect("semaphore");
                let token = join_raw(port, &space, &format!("Listener {i}")).await;
                let conn = open_events(port, &space, &token).await;
                drop(permit);
                let _ = ready.send((Instant::now(), i)).await;
                drain(conn).await;
            }));
        }
        drop(ready_tx);
        rt.block_on(async {
            for _ in 0..n {
                let at = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
                    .await
                    .expect("the events connections within 2 minutes")
                    .expect("a listener task failed");
                arrived.push(at);
            }
        });
        let cpu = pids.iter().map(|p| cpu_us(*p)).sum::<u64>() - cpu0;
        (t0.elapsed().as_secs_f64(), cpu as f64)
    };
    // Half, then the other half: A's view is already at its cap at half
    // (B and C hold ~1,225 each), so A's memory must not grow after.
    let (secs1, cpu1) = open(0..N / 2);
    wait_for(20, "A counts the first half", || {
        audience(&a, &id, &host, "")["total"].as_u64() == Some(N as u64 / 2)
    });
    std::thread::sleep(Duration::from_secs(1));
    let rss_half = rss_kib(pids[0]);
    let kept_half = metric_of(&a, "amphi_presence_remote_entries");
    let (secs2, cpu2) = open(N / 2..N);
    let (secs, cpu_us_total) = (secs1 + secs2, cpu1 + cpu2);
    let per_join = (cpu_us_total - idle_us_per_s * secs) / N as f64;
    println!(
        "{N} joins + events connections over 3 nodes in {secs:.1} s: nodes' CPU {:.0} ms \
         ({per_join:.0} µs per join, idle {:.0} µs/s subtracted)",
        cpu_us_total / 1000.0,
        idle_us_per_s
    );

    // Every node shows the same total, soon (batches every 500 ms).
    for s in nodes {
        wait_for(20, "every node counts the 5,000", || {
            audience(s, &id, &host, "")["total"].as_u64() == Some(N as u64)
        });
    }
    // The view is bounded: 500 entries across the cluster, newest first,
    // paged; the newest are the last arrivals, whichever node holds them.
    let v = audience(&b, &id, &host, "?limit=500");
    let people = v["audience"].as_array().expect("audience");
    assert_eq!(v["cap"], 500);
    assert_eq!(people.len(), 500);
    assert!(
        v["next_before"].is_null()
            || audience(&b, &id, &host, &format!("?before={}", v["next_before"]))["audience"]
                .as_array()
                .is_some_and(|p| p.is_empty())
    );
    let names: std::collections::HashSet<&str> =
        people.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names.len(), 500, "no duplicates");
    // They are the 500 that arrived last, whichever node holds them (the
    // client's clock against the nodes': a few may swap at the edge).
    arrived.sort();
    let last: std::collections::HashSet<String> = arrived[N - 500..]
        .iter()
        .map(|(_, i)| format!("Listener {i}"))
        .collect();
    let both = names.iter().filter(|n| last.contains(**n)).count();
    println!("the view: {both} of its 500 are the last 500 to arrive");
    assert!(
        both >= 475,
        "the view is not the newest arrivals: only {both} of 500 are the last 500"
    );
    // Every node shows the same 500.
    for s in [&a, &c] {
        let theirs = audience(s, &id, &host, "?limit=500");
        let set: std::collections::HashSet<&str> = theirs["audience"]
            .as_array()
            .expect("audience")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(set, names, "node {} shows another view", s.port);
    }
    // A holds 50 itself and at most 500 of each other node's, at half as
    // at the end; its memory did not follow the second 2,500.
    let kept = metric_of(&a, "amphi_presence_remote_entries");
    assert!(kept <= 1000.0, "A keeps {kept} remote entries");
    assert!(kept >= 900.0, "A keeps only {kept} remote entries");
    assert_eq!(kept, kept_half, "A's view grew after its cap");
    std::thread::sleep(Duration::from_secs(1));
    let rss_full = rss_kib(pids[0]);
    println!(
        "A's RSS: {rss_half} KiB with 2,500 present, {rss_full} KiB with 5,000 \
         ({} KiB); remote entries kept {kept_half} → {kept}",
        rss_full as i64 - rss_half as i64
    );
    assert!(
        (rss_full as i64 - rss_half as i64) < 3072,
        "A's memory grew from {rss_half} to {rss_full} KiB past its cap"
    );

    // Memory: B and C hold ~2,475 connections each; A holds 50 and the
    // bounded view of the others.
    let rss1: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let grew: Vec<i64> = rss0
        .iter()
        .zip(&rss1)
        .map(|(x, y)| *y as i64 - *x as i64)
        .collect();
    println!(
        "RSS growth (KiB) with 5,000 present: a {} b {} c {}",
        grew[0], grew[1], grew[2]
    );
    assert!(
        grew[0] < 8 * 1024 && grew[0] * 3 < grew[1].min(grew[2]),
        "A's memory grew {} KiB with an audience it mostly does not hold (B {}, C {})",
        grew[0],
        grew[1],
        grew[2]
    );

    // An invitation made on the owner (A) reaches a listener connected
    // to C, who accepts through C and is on stage.
    let (pid, tok) = join(&c, &id, "Invited on C");
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/spaces/{id}/events?token={tok}",
        c.port
    );
    let (mut ws, _) = connect(url.as_str()).expect("events upgrade");
    if let MaybeTlsStream::Plain(t) = ws.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let _ = ws.read().expect("snapshot");
    wait_for(15, "A sees the invitee present on C", || {
        audience(&a, &id, &host, "?limit=5")["audience"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["participant_id"] == pid.as_str()))
    });
    let r = call(
        "POST",
        &a.url(&format!("/api/v1/spaces/{id}/invitations/{pid}")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "the invitation never reached C");
        if let Message::Text(t) = ws.read().expect("read") {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["you"]["invitation"]["by"]["name"].is_string() {
                break;
            }
        }
    }
    let r = call(
        "POST",
        &c.url(&format!("/api/v1/spaces/{id}/invitations/{pid}/accept")),
        Some(&tok),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let on_stage = |s: &Server| {
        call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).body["stage"]
            .as_array()
            .is_some_and(|st| st.iter().any(|m| m["participant_id"] == pid.as_str()))
    };
    wait_for(15, "the invitee is on stage, seen from every node", || {
        nodes.iter().all(|s| on_stage(s))
    });

    // Stream listeners on each node (100 each): the analytics' peak is
    // their sum, on every node; joins are every node's joins summed.
    let mut loads: Vec<_> = nodes
        .iter()
        .map(|s| {
            Command::new(env!("CARGO_BIN_EXE_amphi"))
                .args(["load", "--server", &format!("127.0.0.1:{}", s.port)])
                .args(["--space", &id, "-n", &STREAMS_PER_NODE.to_string()])
                .args(["--ramp", "1", "--duration", "25"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("amphi load")
        })
        .collect();
    let streams = (3 * STREAMS_PER_NODE) as u64;
    wait_for(
        20,
        "A counts the stream listeners of the three nodes",
        || {
            call("GET", &a.url(&format!("/api/v1/spaces/{id}")), None, None).body["listener_count"]
                .as_u64()
                >= Some(streams)
        },
    );
    // Over a full 10 s point.
    std::thread::sleep(Duration::from_secs(12));
    for s in nodes {
        let st = stats(s, &id);
        println!(
            "stats on {}: peak {} joins {} unique {}",
            s.port, st["peak_listeners"], st["joins"], st["unique_participants"]
        );
        let peak = st["peak_listeners"].as_u64().unwrap_or(0);
        assert!(
            (streams..=streams + 3).contains(&peak),
            "peak {peak} on {}, want {streams}",
            s.port
        );
        let points = st["listeners_over_time"]["points"]
            .as_array()
            .expect("series");
        assert!(
            points.iter().any(|p| p.as_u64() >= Some(streams)),
            "no 10 s point at the peak: {points:?}"
        );
        // 5,000 + the invitee, answered on three nodes.
        assert_eq!(
            st["joins"].as_u64(),
            Some(N as u64 + 1),
            "joins on {}",
            s.port
        );
        // The three nodes' HyperLogLogs merged (≈2.3 % standard error;
        // 4,891-5,303 seen).
        let unique = st["unique_participants"].as_u64().unwrap_or(0) as f64;
        assert!(
            (unique - 5001.0).abs() / 5001.0 < 0.10,
            "unique {unique} on {}",
            s.port
        );
    }
    for l in &mut loads {
        let _ = l.kill();
        let _ = l.wait();
    }
    for h in held {
        h.abort();
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    // Leaving: every node's total comes back down.
    for s in nodes {
        wait_for(15, "the audience empties", || {
            audience(s, &id, &host, "")["total"].as_u64() <= Some(1)
        });
    }

    // A webhook endpoint created on B applies to events raised on A (the
    // owner): the space's end, called through C, is delivered once.
    let (receiver, got) = receiver();
    let r = call(
        "POST",
        &b.url("/api/v1/webhooks"),
        Some(ADMIN),
        Some(
            serde_json::json!({"url": format!("http://127.0.0.1:{receiver}/hook"), "events": ["space.ended"]}),
        ),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let hook = r.body["webhook"]["id"].as_str().expect("id").to_owned();
    for s in nodes {
        wait_for(15, "every node has the endpoint", || {
            call(
                "GET",
                &s.url(&format!("/api/v1/webhooks/{hook}")),
                Some(ADMIN),
                None,
            )
            .status
                == 200
        });
    }
    let r = call(
        "POST",
        &c.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_for(20, "space.ended reaches the receiver", || {
        !got.lock().unwrap().is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered more than once: {got:?}");
    assert!(got[0].contains("space.ended"), "{got:?}");
    // Replay plays: the recording fetched through each node is counted by
    // the node that serves it, and summed on every node.
    wait_for(30, "the replay is published", || {
        !call("GET", &c.url(&format!("/api/v1/spaces/{id}")), None, None).body["replay"].is_null()
    });
    for s in nodes {
        let r = reqwest::blocking::get(s.url(&format!("/spaces/{id}/recording.opus")))
            .expect("get the replay");
        assert!(
            r.status().is_success(),
            "replay through {}: {}",
            s.port,
            r.status()
        );
    }
    for s in nodes {
        wait_for(30, "every node counts the three plays", || {
            stats(s, &id)["replay_plays"].as_u64() == Some(3)
        });
    }
    // Deleted on A: gone everywhere.
    let r = call(
        "DELETE",
        &a.url(&format!("/api/v1/webhooks/{hook}")),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 204, "{:?}", r.body);
    for s in nodes {
        wait_for(15, "every node dropped the endpoint", || {
            call(
                "GET",
                &s.url(&format!("/api/v1/webhooks/{hook}")),
                Some(ADMIN),
                None,
            )
            .status
                == 404
        });
    }
}

/// A webhook receiver on loopback: answers 204 to every request and keeps
/// each request's `webhook-id` and body.
fn receiver() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().expect("clone"));
            let mut len = 0;
            let mut id = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("webhook-id:") {
                    id = v.trim().to_owned();
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push(format!("{id} {}", String::from_utf8_lossy(&body)));
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}
