//! Prometheus metrics in the text exposition format. Counters are atomics
//! bumped on the paths that own them; gauges that describe state (spaces by
//! state, listeners per output) are read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets in seconds.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), Histogram>>,
    pub spaces_created: Counter,
    pub joins: Counter,
    pub commands: Counter,
    pub storage_errors: Counter,
    pub events_clients: Gauge,
    pub listeners_refused: Counter,
    pub listen_requests: Counter,
    pub refused_per_ip: Counter,
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: Counter,
    pub tls_refused: Counter,
    pub tls_plaintext_refused: Counter,
}

impl Metrics {
    /// Records one HTTP request by route template and status.
    pub fn observe_request(&self, route: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut map = self.requests.lock();
        let h = map.entry((route.to_owned(), status)).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Renders the request histograms and the plain counters.
    pub fn render_into(&self, out: &mut String) {
        out.push_str(
            "# HELP amphi_http_request_duration_seconds HTTP requests by route and status.\n",
        );
        out.push_str("# TYPE amphi_http_request_duration_seconds histogram\n");
        for ((route, status), h) in self.requests.lock().iter() {
            let labels = format!("route=\"{}\",status=\"{status}\"", escape(route));
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "amphi_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "amphi_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "amphi_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "amphi_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        counter(
            out,
            "amphi_spaces_created_total",
            "Spaces created.",
            self.spaces_created.get(),
        );
        counter(
            out,
            "amphi_joins_total",
            "Joins (tokens minted).",
            self.joins.get(),
        );
        counter(
            out,
            "amphi_commands_total",
            "Room commands applied.",
            self.commands.get(),
        );
        counter(
            out,
            "amphi_storage_errors_total",
            "Failed writes to the database.",
            self.storage_errors.get(),
        );
        counter(
            out,
            "amphi_tls_handshakes_total",
            "TLS handshakes completed.",
            self.tls_handshakes.get(),
        );
        counter(
            out,
            "amphi_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out (garbage, a peer that stalls).",
            self.tls_handshake_failures.get(),
        );
        counter(
            out,
            "amphi_tls_refused_total",
            "Connections closed before a TLS handshake (handshake rate or concurrency over its limit).",
            self.tls_refused.get(),
        );
        counter(
            out,
            "amphi_tls_plaintext_refused_total",
            "Plain-HTTP requests to the HTTPS port (answered 400).",
            self.tls_plaintext_refused.get(),
        );
        counter(
            out,
            "amphi_listen_requests_total",
            "Requests for a listener stream.",
            self.listen_requests.get(),
        );
        counter(
            out,
            "amphi_listeners_refused_total",
            "Listener requests refused by admission (503).",
            self.listeners_refused.get(),
        );
        gauge(
            out,
            "amphi_events_clients",
            "Open events WebSockets.",
            self.events_clients.get() as f64,
        );
    }
}

/// Escapes a label value.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one counter with its help and type lines.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// Writes one unlabelled gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// Writes a labelled gauge family.
pub fn gauge_family(out: &mut String, name: &str, help: &str, rows: &[(String, f64)]) {
    family(out, name, help, "gauge", rows);
}

/// Writes a labelled counter family.
pub fn counter_family(out: &mut String, name: &str, help: &str, rows: &[(String, f64)]) {
    family(out, name, help, "counter", rows);
}

fn family(out: &mut String, name: &str, help: &str, kind: &str, rows: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}
