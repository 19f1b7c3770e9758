//! `amphi load` against a real node: it admits, measures real-time rate and
//! sequence gaps, and reports refusals by status.

mod common;

use std::process::Command;

use common::{Server, live_space};
use serde_json::Value;

fn load(s: &Server, id: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args([
            "load",
            "--server",
            &format!("127.0.0.1:{}", s.port),
            "--space",
            id,
            "--json",
        ])
        .args(["--duration", "3", "--warmup", "1"])
        .args(extra)
        .output()
        .expect("amphi load");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    serde_json::from_str(&line).expect("one JSON line")
}

#[test]
fn load_generator_measures_and_reports_refusals() {
    // 40 joins from one address at once: above the per-network join
    // bucket (burst 30), which this test is not about.
    let s = Server::start(&["--max-listeners", "60", "--join-rate-per-ip", "1000"]);
    let (id, _, _) = live_space(&s, "Load");
    let r = load(
        &s,
        &id,
        &[
            "-n",
            "40",
            "--output",
            "ws",
            "--join",
            "--pid",
            &s.child.id().to_string(),
        ],
    );
    assert_eq!(r["admitted"], 40, "{r}");
    assert_eq!(r["below_90pct_realtime"], 0, "{r}");
    assert_eq!(r["ws_seq_gaps"], 0, "{r}");
    assert!(r["latency_ms_p99"].as_f64().unwrap() < 1000.0, "{r}");
    assert!(r["server_cpu_cores"].as_f64().is_some(), "{r}");

    // The first run's listeners are gone once the fan-out notices.
    common::wait_for(5, "the first listeners to be released", || {
        common::metric(&s, "amphi_fanout_listeners") == 0.0
    });
    // Past --max-listeners the refusals are reported by status.
    let r = load(&s, &id, &["-n", "80", "--output", "ogg"]);
    assert_eq!(r["admitted"], 60, "{r}");
    assert_eq!(r["refused"]["503"], 20, "{r}");
}

/// `amphi load --speakers`: it makes its spaces, publishes into each with
/// real WebRTC (str0m) speakers and listens to each; every listener gets
/// the program in real time and it carries the space's tone.
#[test]
fn load_generator_brings_speakers_and_spaces() {
    let s = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["load", "--server", &format!("127.0.0.1:{}", s.port)])
        .args([
            "--speakers",
            "3",
            "--spaces",
            "3",
            "--listeners-per-space",
            "2",
        ])
        .args(["--talk", "continuous", "--duration", "10", "--warmup", "2"])
        .args(["--admin-token", common::ADMIN, "--json"])
        .args(["--pid", &s.child.id().to_string()])
        .output()
        .expect("amphi load");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let r: Value = serde_json::from_str(&line).expect("one JSON line");
    assert_eq!(r["spaces_live"], 3, "{r}");
    assert_eq!(r["speakers_connected"], 3, "{r}");
    assert_eq!(r["listeners_admitted"], 6, "{r}");
    assert_eq!(r["below_90pct_realtime"], 0, "{r}");
    assert_eq!(r["spaces_all_listeners_90pct"], 3, "{r}");
    // Each space's first listener decoded its own speaker's tone.
    assert_eq!(r["probed_spaces"], 3, "{r}");
    assert_eq!(r["probed_tone_ok"], 3, "{r}");
    for space in r["per_space"].as_array().expect("per_space") {
        let heard = &space["heard"];
        assert!(heard["tone_secs"].as_f64().unwrap() >= 4.0, "{space}");
    }
    assert!(r["server_cpu_pct_per_space"].as_f64().is_some(), "{r}");
    assert!(r["server_rss_kb_per_space"].as_f64().is_some(), "{r}");
    // The run's spaces are ended once it is over.
    let live = common::call("GET", &s.url("/api/v1/spaces?state=live"), None, None);
    assert_eq!(
        live.body["spaces"].as_array().map(Vec::len),
        Some(0),
        "{:?}",
        live.body
    );
}
