//! Three amphi nodes on a real `nats-server` (JetStream): any node serves
//! any space, control applies at the owner, the bus carries each frame once
//! per edge, and the cluster survives a dead edge and a NATS restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn view(s: &Server, id: &str) -> Value {
    call("GET", &s.url(&format!("/api/v1/spaces/{id}")), None, None).body
}

fn hears(s: &Server, id: &str, freq: f32) -> f32 {
    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{id}/live.opus")), 3.0);
    assert!(
        pcm.len() > 48_000 * 2,
        "only {} samples from {}",
        pcm.len(),
        s.port
    );
    tone_share(&pcm[48_000..], freq)
}

/// Reads `n` messages and checks they follow each other with no gap;
/// returns the next expected frame.
fn read_contiguous(r: &mut WsReader, mut next: Option<u64>, n: usize) -> u64 {
    for _ in 0..n {
        let (first, count) = r.next();
        if let Some(want) = next {
            assert_eq!(first, want, "a gap or an overlap in the sequence");
        }
        next = Some(first + count);
    }
    next.expect("read at least one message")
}

#[test]
fn a_space_on_one_node_is_heard_and_run_through_the_others() {
    let nats = Nats::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let c = node(&nats, "c");

    // Created and started on A.
    let (id, host, _) = live_space(&a, "cluster");
    // C reads it live.
    wait_for(5, "C sees the space live", || {
        view(&c, &id)["state"] == "live"
    });
    // The host publishes through C: the WHIP call is forwarded to A.
    let _peer = publish_tone(&c, &id, &host, 440, 30);
    wait_for_audio(&a, 100.0);

    // B and C each decode the tone (ffmpeg as the player).
    for s in [&b, &c] {
        let share = hears(s, &id, 440.0);
        assert!(share > 0.5, "440 Hz share {share} through port {}", s.port);
    }

    // A hand raised through C is seen on A; a stage change through B lands.
    let (pid, tok) = join(&c, &id, "Cleo");
    let r = call(
        "POST",
        &c.url(&format!("/api/v1/spaces/{id}/hand")),
        Some(&tok),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let hands = view(&a, &id)["hands_raised"].clone();
    assert!(
        hands
            .as_array()
            .is_some_and(|h| h.iter().any(|x| x["participant_id"] == pid.as_str())),
        "A's view has no raised hand right after the call returned: {hands}"
    );
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/stage/{pid}")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_for(5, "C sees Cleo on stage", || {
        view(&c, &id)["stage"]
            .as_array()
            .is_some_and(|s| s.iter().any(|m| m["participant_id"] == pid.as_str()))
    });
    // Bad input across nodes is still a clear error from the owner.
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/participants/{pid}/mute")),
        Some("not-a-token"),
        None,
    );
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_token");
    // A forwarded WHIP answer keeps its CORS headers (browsers on other
    // origins publish through any node).
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/whip")),
        Some(&host),
        Some(serde_json::json!({"not": "sdp"})),
    );
    assert_eq!(r.status, 415, "{:?}", r.body);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );

    // The audience is the sum of the nodes' counts.
    let mut r1 = WsReader::connect(b.port, &format!("/spaces/{id}/live.ws"), None);
    let mut r2 = WsReader::connect(c.port, &format!("/spaces/{id}/live.ws"), None);
    r1.next();
    r2.next();
    wait_for(5, "A counts the listeners of B and C", || {
        view(&a, &id)["listener_count"].as_u64() >= Some(2)
    });

    // Ending through B: the listeners of C get the end of the stream, and
    // the replay (recorded on A) is reachable through C.
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_for(5, "C sees the end", || view(&c, &id)["state"] == "ended");
    wait_for(8, "C offers the replay", || {
        view(&c, &id)["replay"]["ogg"].is_string()
    });
    let rec = c.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(5, "the replay through C", || {
        call("GET", &rec, None, None).status == 200
    });
    let secs = seconds_of_tone(&ffmpeg_listen(&rec, 3600.0), 440.0);
    assert!(secs > 2.0, "only {secs} s of the tone in the replay");
}

#[test]
fn nats_traffic_is_flat_from_one_listener_to_thousands() {
    let nats = Nats::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let (id, host, _) = live_space(&a, "flat");
    let _peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);

    let rate = |secs: f64| {
        let t0 = Instant::now();
        let b0 = nats.out_bytes();
        std::thread::sleep(Duration::from_secs_f64(secs));
        (nats.out_bytes() - b0) as f64 / t0.elapsed().as_secs_f64()
    };
    let mut one = WsReader::connect(b.port, &format!("/spaces/{id}/live.ws"), None);
    one.next();
    let with_one = rate(4.0);

    let n = 2000;
    let mut load = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["load", "--server", &format!("127.0.0.1:{}", b.port)])
        .args([
            "--space",
            &id,
            "-n",
            &n.to_string(),
            "--ramp",
            "1",
            "--duration",
            "15",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("amphi load");
    wait_for(15, "the listeners on B", || {
        metric(&b, "amphi_fanout_listeners") >= n as f64
    });
    let with_many = rate(4.0);
    let _ = load.kill();
    let _ = load.wait();
    println!(
        "NATS egress: {with_one:.0} B/s with 1 listener on the edge, {with_many:.0} B/s with {}",
        n + 1
    );
    assert!(with_one > 3000.0, "the edge got no frames: {with_one} B/s");
    assert!(
        with_many < with_one * 1.3,
        "NATS egress grew with the audience: {with_one:.0} → {with_many:.0} B/s"
    );
}

#[test]
fn a_killed_edge_loses_nothing_and_its_listeners_resume_elsewhere() {
    let nats = Nats::start();
    let a = node(&nats, "a");
    let mut b = node(&nats, "b");
    let c = node(&nats, "c");
    let (id, host, _) = live_space(&a, "edge death");
    let _peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);

    let path = format!("/spaces/{id}/live.ws");
    let mut on_b = WsReader::connect(b.port, &path, None);
    let mut on_c = WsReader::connect(c.port, &path, None);
    let next_b = read_contiguous(&mut on_b, None, 10);
    let next_c = read_contiguous(&mut on_c, None, 5);

    b.kill();
    // C's listener carries on without a gap (3 s of messages).
    read_contiguous(&mut on_c, Some(next_c), 30);
    // B's listener resumes on C from the first frame it did not get.
    let mut resumed = WsReader::connect(c.port, &format!("{path}?from_seq={next_b}"), None);
    // Messages of 5 frames (the output's own, shared): 30 of them.
    let after = read_contiguous(&mut resumed, Some(next_b), 30);
    assert!(after > next_b + 100, "resumed only up to {after}");
}

#[test]
fn restarting_nats_keeps_the_audio_and_the_control() {
    let mut nats = Nats::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let (id, host, _) = live_space(&a, "nats restart");
    let _peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);
    let path = format!("/spaces/{id}/live.ws");
    let mut on_b = WsReader::connect(b.port, &path, None);
    let before = read_contiguous(&mut on_b, None, 5);

    nats.restart(Duration::from_secs(1));

    // Within seconds the edge's listener hears the program again, with no
    // operator action; the sequence only moves forward.
    let t0 = Instant::now();
    let mut last = before;
    let mut flowing = 0;
    while flowing < 20 {
        let (first, count) = on_b.next();
        assert!(
            first >= last,
            "the sequence went backwards: {first} < {last}"
        );
        last = first + count;
        flowing += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no audio after the restart"
        );
    }
    // And control works again through the edge.
    let (pid, tok) = join(&b, &id, "Ned");
    wait_for(15, "a hand raised through B after the restart", || {
        call(
            "POST",
            &b.url(&format!("/api/v1/spaces/{id}/hand")),
            Some(&tok),
            None,
        )
        .status
            == 200
    });
    // B's copy follows the owner's writes again (its watch resumed).
    for (s, who) in [(&a, "A"), (&b, "B")] {
        wait_for(5, &format!("{who} sees the hand"), || {
            view(s, &id)["hands_raised"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x["participant_id"] == pid.as_str()))
        });
    }
}

#[test]
fn when_the_origin_dies_another_node_takes_the_space_and_its_recording_goes_on() {
    let nats = Nats::start();
    let shared = tempfile::tempdir().expect("tempdir");
    let rec = shared.path().to_str().expect("utf-8 path");
    let start = |name: &str| {
        Server::start(&[
            "--nats",
            &nats.url(),
            "--node-id",
            name,
            "--recordings-dir",
            rec,
        ])
    };
    let mut a = start("a");
    let b = start("b");
    let c = start("c");
    let (id, host, _) = live_space(&a, "takeover");
    let mut peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);
    // A's part of the recording: three segments closed once the speaker is
    // heard (the one open at the kill is lost).
    let stored = metric(&a, "amphi_recording_segments_total");
    wait_for(10, "A to store three segments of speech", || {
        metric(&a, "amphi_recording_segments_total") >= stored + 3.0
    });
    let path = format!("/spaces/{id}/live.ws");
    let mut on_c = WsReader::connect(c.port, &path, None);
    let before = read_contiguous(&mut on_c, None, 25);

    assert_eq!(view(&c, &id)["on_air"], true);
    a.kill();
    peer.kill();
    // Once A's lease expires, a survivor takes the space over by itself;
    // the speaker reconnecting through B reaches the new origin, the
    // numbering goes on forward and C hears the tone again.
    let t_dead = Instant::now();
    nats.wait_lease_expired(&id, "a");
    wait_for(10, "a survivor to take the space over", || {
        nats.lease(&id).is_some_and(|l| l.node != "a")
    });
    println!(
        "taken over {:.1} s after the kill",
        t_dead.elapsed().as_secs_f64()
    );
    let _peer = publish_tone(&b, &id, &host, 440, 60);
    let t_takeover = Instant::now();
    let origin = if nats.lease(&id).expect("lease").node == "b" {
        &b
    } else {
        &c
    };
    wait_for_audio(origin, 50.0);
    assert_eq!(
        metric(&b, "amphi_takeovers_total") + metric(&c, "amphi_takeovers_total"),
        1.0
    );
    let mut again = WsReader::connect(c.port, &path, None);
    let (first, _) = again.next();
    assert!(
        first > before,
        "the sequence went back: {first} <= {before}"
    );
    let share = hears(&c, &id, 440.0);
    assert!(
        share > 0.5,
        "440 Hz share {share} through C after the takeover"
    );
    assert_eq!(view(&c, &id)["state"], "live");
    wait_for(5, "C to see the space on the air again", || {
        view(&c, &id)["on_air"] == true
    });

    // The recording (shared storage) holds both origins' parts.
    let after_takeover = t_takeover.elapsed().as_secs_f64();
    let secs = end_and_measure_recording(&c, &id, &host, 440.0);
    println!("replay: {secs:.1} s of tone; {after_takeover:.1} s since B took over");
    assert!(
        secs > after_takeover + 1.0,
        "the replay has {secs:.1} s of tone, not more than B's {after_takeover:.1} s"
    );
}

#[test]
fn a_node_cut_off_from_nats_stops_serving_what_may_be_stale() {
    let mut nats = Nats::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let (id, _host, _) = live_space(&a, "partition");
    let space = format!("/api/v1/spaces/{id}");
    wait_for(5, "B sees the space", || view(&b, &id)["state"] == "live");
    let (_, tok) = join(&b, &id, "Pia");
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/spaces/{id}/events?token={tok}",
        b.port
    );
    let (mut events, _) = tokio_tungstenite::tungstenite::connect(url.as_str()).expect("events");
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(t) = events.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    assert!(events.read().expect("snapshot").is_text());

    nats.stop();
    wait_for(7, "B to stop serving its copy", || {
        call("GET", &b.url(&space), None, None).status == 503
    });
    // B only holds a copy: it refuses to serve it, and says why.
    let r = call("GET", &b.url(&space), None, None);
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("lost the cluster")
    );
    assert_eq!(
        call("GET", &b.url("/api/v1/spaces"), None, None).status,
        503
    );
    assert_eq!(call("GET", &b.url("/readyz"), None, None).status, 503);
    // A, the origin, cannot prove its lease either: it fenced itself (it
    // stopped mixing the space 2.4 s after its last acknowledged renewal)
    // and refuses its copy like B.
    assert_eq!(metric(&a, "amphi_fenced_spaces"), 1.0);
    assert_eq!(metric(&a, "amphi_origin_spaces"), 0.0);
    assert_eq!(call("GET", &a.url(&space), None, None).status, 503);
    // B's events client is told to go elsewhere (1013: try again later).
    let close = loop {
        match events.read() {
            Ok(tokio_tungstenite::tungstenite::Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("no close frame from B: {e}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1013));

    nats.start_again();
    wait_for(15, "B serves the space again", || {
        call("GET", &b.url(&space), None, None).status == 200
    });
    // Nobody could take the space over while NATS was down: A usually wins
    // its own lease back and mixes it again, but once NATS answers, B may
    // find the lease expired first and take it, which is as good. Either
    // way exactly one node mixes, and A is no longer fenced.
    wait_for(30, "one node, A or B, mixes the space again", || {
        metric(&a, "amphi_origin_spaces") + metric(&b, "amphi_origin_spaces") == 1.0
            && metric(&a, "amphi_fenced_spaces") == 0.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        metric(&a, "amphi_origin_spaces") + metric(&b, "amphi_origin_spaces"),
        1.0,
        "never two origins"
    );
}

#[test]
fn a_node_started_later_knows_the_spaces_and_webhooks_written_before_it() {
    let nats = Nats::start();
    let a = Server::start(&[
        "--nats",
        &nats.url(),
        "--node-id",
        "a",
        "--webhook-allow-private",
    ]);
    let (id, _host, _) = live_space(&a, "written before b");
    let r = call(
        "POST",
        &a.url("/api/v1/webhooks"),
        Some(ADMIN),
        Some(serde_json::json!({"url": "http://127.0.0.1:9/", "events": ["space.started"]})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Nothing changes after B starts: B must read what is there.
    let b = Server::start(&[
        "--nats",
        &nats.url(),
        "--node-id",
        "b",
        "--webhook-allow-private",
    ]);
    wait_for(5, "B knows the live space", || {
        view(&b, &id)["state"] == "live"
    });
    wait_for(5, "B knows the webhook endpoint", || {
        let r = call("GET", &b.url("/api/v1/webhooks"), Some(ADMIN), None);
        r.body["webhooks"].as_array().is_some_and(|h| h.len() == 1)
    });
    let mut r = WsReader::connect(b.port, &format!("/spaces/{id}/live.ws"), None);
    r.next();
}

#[test]
fn an_edge_unsubscribes_after_its_last_listener_leaves() {
    let nats = Nats::start();
    let a = node(&nats, "a");
    let b = Server::start(&[
        "--nats",
        &nats.url(),
        "--node-id",
        "b",
        "--edge-linger",
        "1",
    ]);
    let (id, host, _) = live_space(&a, "linger");
    let _peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);
    let in_rate = |secs: f64| {
        let b0 = metric(&b, "amphi_nats_in_bytes_total");
        std::thread::sleep(Duration::from_secs_f64(secs));
        (metric(&b, "amphi_nats_in_bytes_total") - b0) / secs
    };
    let idle = in_rate(2.0);
    let mut r = WsReader::connect(b.port, &format!("/spaces/{id}/live.ws"), None);
    r.next();
    assert_eq!(metric(&b, "amphi_edges"), 1.0);
    let feeding = in_rate(2.0);
    drop(r);
    wait_for(10, "the edge to unsubscribe", || {
        metric(&b, "amphi_edges") == 0.0
    });
    let after = in_rate(2.0);
    println!("B receives {idle:.0} B/s idle, {feeding:.0} B/s feeding, {after:.0} B/s after");
    assert!(feeding > 3000.0, "{feeding}");
    assert!(
        after < feeding / 4.0,
        "still {after:.0} B/s after the last listener left"
    );
    // A listener coming back starts a new feed, with the history.
    let mut again = WsReader::connect(b.port, &format!("/spaces/{id}/live.ws?from_seq=0"), None);
    let (first, _) = again.next();
    let (newest, _) = again.next();
    assert!(newest > first, "{first} {newest}");
}

#[test]
fn a_refused_listener_never_makes_an_edge_subscribe() {
    let nats = Nats::start();
    let a = node(&nats, "a");
    // One edge per reason to refuse: the node is full, the space is full
    // on this node, the join bucket is empty.
    let full = Server::start(&[
        "--nats",
        &nats.url(),
        "--node-id",
        "full",
        "--max-listeners",
        "0",
    ]);
    let space_full = Server::start(&[
        "--nats",
        &nats.url(),
        "--node-id",
        "spacefull",
        "--max-listeners-per-space",
        "0",
    ]);
    let no_tokens = Server::start(&[
        "--nats",
        &nats.url(),
        "--node-id",
        "notokens",
        "--join-rate",
        "0.001",
        "--join-burst",
        "0",
    ]);
    let (id, host, _) = live_space(&a, "refused");
    let _peer = publish_tone(&a, &id, &host, 440, 30);
    wait_for_audio(&a, 50.0);
    for edge in [&full, &space_full, &no_tokens] {
        wait_for(10, "the edge to know the live space", || {
            view(edge, &id)["state"] == "live"
        });
        // Refused for capacity, and (live.ws without an upgrade) for a
        // malformed request: neither subscribes.
        for (path, status) in [("live.opus", 503), ("live.ws", 426), ("live.opus", 503)] {
            let r = call(
                "GET",
                &edge.url(&format!("/spaces/{id}/{path}")),
                None,
                None,
            );
            assert_eq!(r.status, status, "{path} on {}: {:?}", edge.port, r.body);
        }
        assert_eq!(
            metric(edge, "amphi_edges_started_total"),
            0.0,
            "on {}",
            edge.port
        );
        assert_eq!(metric(edge, "amphi_edges"), 0.0);
        assert_eq!(metric(edge, "amphi_bus_frames_received_total"), 0.0);
    }
}

#[test]
fn nodes_whose_clocks_are_minutes_apart_share_spaces_without_a_takeover() {
    let nats = Nats::start();
    let five_min = (5 * 60 * 1000).to_string();
    let minus_five = format!("-{five_min}");
    let mut a = node(&nats, "a");
    // B's clock is 5 minutes ahead, C's 5 minutes behind.
    let b = node_with(
        &nats.url(),
        "b",
        &[],
        &[("AMPHI_TEST_CLOCK_OFFSET_MS", &five_min)],
    );
    let c = node_with(
        &nats.url(),
        "c",
        &[],
        &[("AMPHI_TEST_CLOCK_OFFSET_MS", &minus_five)],
    );
    // A space on A, published and controlled through B (ahead), heard on
    // C (behind); a space on C, controlled through B and A.
    let (id, host, _) = live_space(&a, "clocks");
    let (id_c, _, _) = live_space(&c, "clocks behind");
    wait_for(5, "B sees both spaces", || {
        view(&b, &id)["state"] == "live" && view(&b, &id_c)["state"] == "live"
    });
    let _peer = publish_tone(&b, &id, &host, 440, 40);
    wait_for_audio(&a, 100.0);
    let share = hears(&c, &id, 440.0);
    assert!(share > 0.5, "440 Hz share {share} on C");
    for _ in 0..5 {
        for (s, space) in [(&b, &id), (&b, &id_c), (&a, &id_c)] {
            let (_, tok) = join(s, space, "Tick");
            let r = call(
                "POST",
                &s.url(&format!("/api/v1/spaces/{space}/hand")),
                Some(&tok),
                None,
            );
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    // Nobody took anything over, nobody lost a lease: the owners are the
    // creators, whatever the clocks say.
    for s in [&a, &b, &c] {
        assert_eq!(metric(s, "amphi_takeovers_total"), 0.0, "on {}", s.port);
        assert_eq!(metric(s, "amphi_leases_lost_total"), 0.0, "on {}", s.port);
    }
    assert_eq!(nats.lease(&id).expect("lease").node, "a");
    assert_eq!(nats.lease(&id_c).expect("lease").node, "c");
    // A dies: its space moves only once its lease has stopped changing for
    // the TTL, measured by the survivors' own clocks.
    let (_, mut rev) = nats.lease_at(&id).expect("lease");
    let mut since = Instant::now();
    a.kill();
    let t_kill = Instant::now();
    let moved = loop {
        assert!(
            t_kill.elapsed() < Duration::from_secs(20),
            "nobody took A's space"
        );
        let (l, r) = nats.lease_at(&id).expect("lease");
        if l.node != "a" {
            break since.elapsed();
        }
        if r != rev {
            (rev, since) = (r, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ttl = Duration::from_millis(amphi_cluster::lease::TTL_MS as u64);
    println!(
        "A's space taken over {:.2} s after its lease last changed ({:.2} s after the kill)",
        moved.as_secs_f64(),
        t_kill.elapsed().as_secs_f64()
    );
    // The test sees the lease's last change late by up to one poll of the
    // bus (slow on a loaded machine), so a second of slack: a clock that was
    // trusted would have moved the space at once (5 minutes off).
    assert!(
        moved + Duration::from_millis(1000) >= ttl,
        "taken over early: {moved:?}"
    );
}

/// Which NATS server of three [`nats_server_dies`] kills.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    /// A server that leads the leases' stream, neither the origin's nor
    /// the JetStream meta leader.
    StreamLeader,
    /// The JetStream meta leader, made to lead the leases' stream too (no
    /// server can then prove it is on the majority side until the meta
    /// group elects another leader: the other nodes vouch for the origin),
    /// not the origin's.
    MetaAndStreamLeader,
    /// The origin's own server, made to lead the leases' stream (the
    /// origin reconnects to another server, its renewal in flight lost).
    OriginsServer,
}

#[test]
fn a_nats_server_of_three_dies_and_comes_back_without_losing_state_or_audio() {
    nats_server_dies(Victim::StreamLeader);
}

#[test]
fn the_jetstream_meta_leader_dies_leading_the_leases_without_a_gap() {
    nats_server_dies(Victim::MetaAndStreamLeader);
}

#[test]
fn the_origins_own_nats_server_dies_leading_the_leases_without_a_gap() {
    nats_server_dies(Victim::OriginsServer);
}

/// A NATS server of three killed during a live space, then restarted: no
/// fence, no takeover, a listener on a node that keeps its link waits
/// under 1 s for every message with no gap in the sequence, and no state
/// is lost.
fn nats_server_dies(kind: Victim) {
    let mut nats = NatsCluster::start();
    let a = node_with(&nats.urls_from(0), "a", &[], &[]);
    let b = node_with(&nats.urls_from(1), "b", &[], &[]);
    let c = node_with(&nats.urls_from(2), "c", &[], &[]);
    // The victim leads the leases' stream, so no lease can be written
    // until JetStream elects another leader (seconds). The listener's
    // node keeps its link: chosen now, before the space exists.
    let (on_a, meta) = (nats.server_of("a"), nats.meta_leader());
    let others = |i: &usize| {
        ["b", "c"]
            .iter()
            .filter(|n| nats.server_of(n) == Some(*i))
            .count()
    };
    let victim = match kind {
        Victim::StreamLeader => (0..3)
            .filter(|i| Some(*i) != on_a && Some(*i) != meta)
            .min_by_key(others)
            .expect("a victim"),
        Victim::MetaAndStreamLeader if meta.is_some() && meta != on_a => {
            meta.expect("a meta leader")
        }
        // The origin shares its server with the meta leader: that server,
        // the worst case (origin's link, meta and stream leader at once).
        Victim::MetaAndStreamLeader | Victim::OriginsServer => on_a.expect("a's server"),
    };
    let spare;
    let survivor = if nats.server_of("b") != Some(victim) {
        &b
    } else if nats.server_of("c") != Some(victim) {
        &c
    } else {
        // Both on the victim: a listener's node on the other servers.
        let urls = (0..3)
            .filter(|i| *i != victim)
            .map(|i| nats.url_of(i))
            .collect::<Vec<_>>()
            .join(",");
        spare = node_with(&urls, "d", &[], &[]);
        &spare
    };
    let (id, host, _) = live_space(&a, "nats cluster");
    let _peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);
    // The buckets are replicated on the three servers.
    wait_for(10, "three current replicas of the spaces bucket", || {
        nats.current_replicas("KV_amphi_spaces") == 3
    });
    // State written before the loss.
    let (pid, tok) = join(&b, &id, "Before");
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/hand")),
        Some(&tok),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);

    nats.lead_stream_on("KV_amphi_leases", victim);
    assert_eq!(nats.meta_leader(), meta, "the meta leader moved");
    // Stepping the stream's leader down may have refused a renewal or
    // failed a probe; what follows is measured from here.
    let kept = |s: &Server| {
        metric(s, "amphi_lease_leaderless_total") + metric(s, "amphi_lease_vouched_total")
    };
    let kept_before = kept(&a);
    println!(
        "{kind:?}: a on {on_a:?}, meta leader {meta:?}, killing s{victim} (leads KV_amphi_leases), listening on node :{}",
        survivor.port
    );
    let path = format!("/spaces/{id}/live.ws");
    let mut steady = WsReader::connect(survivor.port, &path, None);
    let mut next = read_contiguous(&mut steady, None, 5);
    let mut on_c = WsReader::connect(c.port, &path, None);
    let mut next_c = read_contiguous(&mut on_c, None, 5);

    steady
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    nats.kill(victim);
    let t_kill = Instant::now();
    // A listener whose node kept its link hears every frame, never
    // waiting over 1 s for the next message (12 s of listening): the
    // origin's renewals are refused while the stream has no leader, its
    // server still reaches the meta leader, so the lease stays valid; and
    // no other node takes the space over when a leader is back (their
    // probes of the stream's leader failed meanwhile).
    let mut worst = Duration::ZERO;
    let mut last = Instant::now();
    let mut jumps = 0;
    while t_kill.elapsed() < Duration::from_secs(12) {
        let (first, count) = steady.next();
        assert!(first >= next, "the sequence went back: {first} < {next}");
        jumps += usize::from(first != next);
        next = first + count;
        worst = worst.max(last.elapsed());
        last = Instant::now();
    }
    let refused = kept(&a) - kept_before;
    let fenced = metric(&a, "amphi_fences_total");
    println!(
        "longest wait between messages on the surviving link: {worst:?}; renewals refused for want of a leader, lease kept: {refused} (vouched for: {}); fenced: {fenced}",
        metric(&a, "amphi_lease_vouched_total")
    );
    assert_eq!(fenced, 0.0, "the origin fenced itself");
    assert!(
        refused > 0.0,
        "no renewal was refused for want of a leader: the kill tested nothing"
    );
    assert!(worst < Duration::from_secs(1), "a gap of {worst:?}");
    assert_eq!(jumps, 0, "a gap or an overlap in the sequence");
    // Control and state go on with two servers of three.
    let (pid2, tok2) = join(&a, &id, "During");
    wait_for(10, "a hand raised with one NATS server down", || {
        call(
            "POST",
            &c.url(&format!("/api/v1/spaces/{id}/hand")),
            Some(&tok2),
            None,
        )
        .status
            == 200
    });
    // Every other listener hears the program again, the sequence forward.
    let (first, _) = on_c.next();
    assert!(
        first >= next_c,
        "C's sequence went back: {first} < {next_c}"
    );
    next_c = read_contiguous(&mut on_c, None, 10);

    nats.start_again(victim);
    wait_for(20, "the restarted server to catch up", || {
        nats.current_replicas("KV_amphi_spaces") == 3
            && nats.current_replicas("KV_amphi_leases") == 3
    });
    // Nothing was lost: both hands, on every node; the origin never moved.
    for s in [&a, &b, &c] {
        wait_for(10, "every node sees both hands", || {
            view(s, &id)["hands_raised"].as_array().is_some_and(|h| {
                [&pid, &pid2]
                    .iter()
                    .all(|p| h.iter().any(|x| x["participant_id"] == p.as_str()))
            })
        });
        assert_eq!(metric(s, "amphi_takeovers_total"), 0.0, "on {}", s.port);
        assert_eq!(metric(s, "amphi_fences_total"), 0.0, "fenced on {}", s.port);
    }
    // The origin mixes it, alone.
    let owner = nats.lease_of(&id).expect("lease").node;
    assert_eq!(owner, "a");
    let origins: f64 = [&a, &b, &c]
        .iter()
        .map(|s| metric(s, "amphi_origin_spaces"))
        .sum();
    assert_eq!(origins, 1.0, "one origin (the lease names {owner})");
    read_contiguous(&mut steady, Some(next), 10);
    let (first, _) = on_c.next();
    assert!(first >= next_c, "C's sequence went back after the restart");
}

/// A WHIP offer whose only candidate nobody answers from: the session is
/// created and never connects.
const UNANSWERED_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";

/// A message of the program louder than this carries the speaker's tone
/// (silence is 0).
const LOUD: u8 = 20;

/// One origin death, healed by itself: a fresh space on `origin`, its
/// speaker publishing through `page` with `--reconnect` (the client POSTs
/// again when its WHIP resource is gone), a `live.ws` listener on `ear`
/// whose connection stays open. Kills the origin (-9) and returns the
/// seconds until the listener hears the tone again, from the new origin.
fn origin_death_trial(origin: &mut Server, page: &Server, ear: &Server) -> f64 {
    let (id, host, _) = live_space(origin, "heal");
    let _peer = publish_tone_with(page, &id, &host, 440, 120, &["--reconnect"]);
    let mut r = WsReader::connect(ear.port, &format!("/spaces/{id}/live.ws"), None);
    r.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let t = Instant::now();
    let mut expected = loop {
        let (first, n, level) = r.next_with_level();
        if level >= LOUD {
            break first + n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no tone before the kill"
        );
    };
    origin.kill();
    let t_kill = Instant::now();
    // The origin's last messages, then the new origin's: a jump in the
    // sequence (forward only) or silence, then the speaker again.
    let mut moved = false;
    loop {
        let (first, n, level) = r.next_with_level();
        assert!(
            first >= expected,
            "the sequence went back: {first} < {expected}"
        );
        moved |= first != expected || level < LOUD;
        expected = first + n;
        if moved && level >= LOUD {
            break;
        }
        assert!(
            t_kill.elapsed() < Duration::from_secs(30),
            "the listener never heard the speaker again"
        );
    }
    let healed = t_kill.elapsed().as_secs_f64();
    // The same connection goes on with the tone.
    for _ in 0..10 {
        let (first, n, _) = r.next_with_level();
        assert_eq!(first, expected, "a gap after the repair");
        expected = first + n;
    }
    let r = call(
        "POST",
        &page.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    healed
}

/// Kill -9 of the origin, on a cluster of three NATS servers, 2 trials
/// (`AMPHI_HEAL_TRIALS=20` for the figures of docs/SCALING.md; see
/// `bench/cluster.sh repair`).
#[test]
fn an_origins_death_heals_itself_and_listeners_ride_through() {
    let trials: usize = std::env::var("AMPHI_HEAL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let nats = NatsCluster::start();
    let page = node_with(&nats.urls_from(0), "page", &[], &[]);
    let ear = node_with(&nats.urls_from(1), "ear", &[], &[]);
    let mut times = Vec::new();
    for trial in 0..trials {
        let mut origin = node_with(
            &nats.urls_from(trial % 3),
            &format!("origin{trial}"),
            &[],
            &[],
        );
        let secs = origin_death_trial(&mut origin, &page, &ear);
        println!("trial {trial}: origin kill -9 → tone heard on another node in {secs:.2} s");
        times.push(secs);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let pct =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    println!(
        "origin kill → tone heard, {} trials: min {:.2} s, p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        sorted.len(),
        sorted[0],
        pct(0.5),
        pct(0.95),
        sorted[sorted.len() - 1]
    );
    // The lease last changed at most one renewal before the kill.
    use amphi_cluster::lease::{RENEW_MS, TTL_MS};
    let earliest = (TTL_MS - RENEW_MS) as f64 / 1000.0;
    for t in &times {
        assert!(*t >= earliest, "healed before the lease expired: {t}");
        assert!(*t < 10.0, "healed too slowly: {t}");
    }
    assert_eq!(
        metric(&page, "amphi_takeovers_total") + metric(&ear, "amphi_takeovers_total"),
        trials as f64
    );
}

#[test]
fn an_origins_death_with_no_speaker_back_ends_the_space_by_itself() {
    let nats = Nats::start();
    let shared = tempfile::tempdir().expect("tempdir");
    let rec = shared.path().to_str().expect("utf-8 path");
    let start = |name: &str| {
        node_with(
            &nats.url(),
            name,
            &["--orphan-grace", "3", "--recordings-dir", rec],
            &[],
        )
    };
    let mut a = start("a");
    let b = start("b");
    let c = start("c");
    let (id, host, _) = live_space(&a, "orphan");
    let mut peer = publish_tone(&a, &id, &host, 440, 60);
    wait_for_audio(&a, 50.0);
    let stored = metric(&a, "amphi_recording_segments_total");
    wait_for(10, "A to store two segments of speech", || {
        metric(&a, "amphi_recording_segments_total") >= stored + 2.0
    });
    let mut r = WsReader::connect(c.port, &format!("/spaces/{id}/live.ws"), None);
    r.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    r.next();
    a.kill();
    peer.kill();
    let t_kill = Instant::now();
    // Once the space has moved, the host offers WHIP through C to the new
    // origin, but no media ever connects: a session that never published
    // is not a speaker back.
    let offered = std::thread::scope(|scope| {
        let offer = scope.spawn(|| {
            wait_for(10, "the space to move", || {
                nats.lease(&id).is_some_and(|l| l.node != "a")
            });
            reqwest::blocking::Client::new()
                .post(c.url(&format!("/api/v1/spaces/{id}/whip")))
                .bearer_auth(&host)
                .header("content-type", "application/sdp")
                .body(UNANSWERED_OFFER)
                .send()
                .map(|r| r.status().as_u16())
        });
        // The lease expires (3 s), a survivor takes the space over, waits
        // 3 s for a speaker, then ends it: C's listener gets the end of
        // its stream.
        let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while t_kill.elapsed() < Duration::from_secs(20) {
                r.next();
            }
        }));
        (closed, offer.join().expect("offer thread"))
    });
    let (closed, offered) = offered;
    assert_eq!(offered.ok(), Some(201), "the WHIP offer through C");
    assert!(closed.is_err(), "the stream never ended");
    let ended_after = t_kill.elapsed().as_secs_f64();
    println!("the orphaned space ended {ended_after:.1} s after its origin died");
    assert!(ended_after < 15.0, "{ended_after}");
    for s in [&b, &c] {
        wait_for(5, "every node sees the end", || {
            view(s, &id)["state"] == "ended"
        });
    }
    assert_eq!(
        metric(&b, "amphi_orphans_ended_total") + metric(&c, "amphi_orphans_ended_total"),
        1.0
    );
    // The replay holds what A stored before it died.
    wait_for(10, "the replay", || {
        view(&b, &id)["replay"]["ogg"].is_string()
    });
    let rec = b.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(5, "the replay through B", || {
        call("GET", &rec, None, None).status == 200
    });
    let secs = seconds_of_tone(&ffmpeg_listen(&rec, 3600.0), 440.0);
    println!("replay: {secs:.1} s of tone");
    assert!(secs > 2.0, "only {secs:.1} s of the tone in the replay");
}

#[test]
fn a_dead_origins_unstored_frames_are_recorded_from_the_edges_without_shared_storage() {
    let nats = Nats::start();
    // Each node records to its own disk.
    let mut a = node(&nats, "a");
    let b = node(&nats, "b");
    let c = node(&nats, "c");
    let (id, host, _) = live_space(&a, "backfill");
    let path = format!("/spaces/{id}/live.ws");
    let mut on_b = WsReader::connect(b.port, &path, None);
    let mut on_c = WsReader::connect(c.port, &path, None);
    for r in [&mut on_b, &mut on_c] {
        r.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    let _peer = publish_tone_with(&b, &id, &host, 440, 120, &["--reconnect"]);
    // 6 s of the speaker through the edges, then A dies with all it stored.
    let t = Instant::now();
    while on_b.next_with_level().2 < LOUD {
        assert!(t.elapsed() < Duration::from_secs(30), "no tone");
    }
    let t_tone = Instant::now();
    while t_tone.elapsed() < Duration::from_secs(6) {
        on_b.next();
        on_c.next();
    }
    let before = t_tone.elapsed().as_secs_f64();
    a.kill();
    // The speaker comes back on the new origin, talks 4 s more.
    let t_kill = Instant::now();
    let mut moved = false;
    loop {
        let (_, _, level) = on_c.next_with_level();
        moved |= level < LOUD;
        if moved && level >= LOUD {
            break;
        }
        assert!(
            t_kill.elapsed() < Duration::from_secs(30),
            "no tone after the kill"
        );
    }
    let t_back = Instant::now();
    while t_back.elapsed() < Duration::from_secs(4) {
        on_c.next();
    }
    let after = t_back.elapsed().as_secs_f64();
    let r = call(
        "POST",
        &b.url(&format!("/api/v1/spaces/{id}/end")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_for(10, "the replay", || {
        view(&b, &id)["replay"]["ogg"].is_string()
    });
    let rec = b.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(5, "the replay through B", || {
        call("GET", &rec, None, None).status == 200
    });
    let secs = seconds_of_tone(&ffmpeg_listen(&rec, 3600.0), 440.0);
    println!(
        "replay: {secs:.1} s of tone; {before:.1} s spoken before the origin died (its disk is gone), {after:.1} s after"
    );
    assert!(
        secs > before + after - 1.0,
        "the replay lost what the dead origin had not stored elsewhere: {secs:.1} s of tone, {before:.1} + {after:.1} s spoken"
    );
}
