//! The node's metrics, exposed through one `prometheus_client` registry.
//!
//! Counters are atomics bumped on the paths that own them (no lock, no
//! allocation per event); gauges that describe state (spaces by state,
//! listeners per output) are read when `/metrics` is scraped. Each part of
//! the node reads its own atomics into a [`Scrape`] from a collector the
//! registry calls at scrape time; `prometheus_client` writes the text (the
//! Prometheus text format 0.0.4: names, escaping, types), so no part of
//! amphi writes exposition text by hand.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub use prometheus_client::registry::Registry;

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

/// One route's and status's request durations: per-bucket counts (not
/// cumulative; the encoder sums them), the count and the sum.
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The node's own counters (the other parts keep theirs).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Route template → status → durations. A route's key is allocated
    /// once, the first time it is seen.
    requests: Mutex<BTreeMap<String, BTreeMap<u16, Histogram>>>,
    pub spaces_created: Counter,
    pub joins: Counter,
    pub clips: Counter,
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
        let statuses = match map.get_mut(route) {
            Some(s) => s,
            None => map.entry(route.to_owned()).or_default(),
        };
        let h = statuses.entry(status).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Reads the request histograms and the counters.
    pub fn collect(&self, out: &mut Scrape<'_>) {
        let rows: Vec<(String, u16, Histogram)> = self
            .requests
            .lock()
            .iter()
            .flat_map(|(route, s)| s.iter().map(|(st, h)| (route.clone(), *st, h.clone())))
            .collect();
        out.histogram_family(
            "amphi_http_request_duration_seconds",
            "HTTP requests by route and status.",
            rows.iter().map(|(route, status, h)| {
                (
                    [
                        ("route", Cow::Borrowed(route.as_str())),
                        ("status", Cow::Owned(status.to_string())),
                    ],
                    h.sum,
                    h.count,
                    BUCKETS.iter().copied().zip(h.counts),
                )
            }),
        );
        for (name, help, c) in [
            (
                "amphi_spaces_created_total",
                "Spaces created.",
                &self.spaces_created,
            ),
            ("amphi_joins_total", "Joins (tokens minted).", &self.joins),
            ("amphi_clips_total", "Clips cut and stored.", &self.clips),
            (
                "amphi_commands_total",
                "Room commands applied.",
                &self.commands,
            ),
            (
                "amphi_storage_errors_total",
                "Failed writes to the database.",
                &self.storage_errors,
            ),
            (
                "amphi_tls_handshakes_total",
                "TLS handshakes completed.",
                &self.tls_handshakes,
            ),
            (
                "amphi_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (garbage, a peer that stalls).",
                &self.tls_handshake_failures,
            ),
            (
                "amphi_tls_refused_total",
                "Connections closed before a TLS handshake (handshake rate or concurrency over its limit).",
                &self.tls_refused,
            ),
            (
                "amphi_tls_plaintext_refused_total",
                "Plain-HTTP requests to the HTTPS port (answered 400).",
                &self.tls_plaintext_refused,
            ),
            (
                "amphi_listen_requests_total",
                "Requests for a listener stream.",
                &self.listen_requests,
            ),
            (
                "amphi_listeners_refused_total",
                "Listener requests refused by admission (503).",
                &self.listeners_refused,
            ),
            (
                "amphi_refused_per_ip_total",
                "Connections refused because their address already had --max-conns-per-ip open.",
                &self.refused_per_ip,
            ),
        ] {
            out.counter(name, help, c.get());
        }
        out.gauge(
            "amphi_events_clients",
            "Open events WebSockets.",
            self.events_clients.get(),
        );
    }
}

/// What a collector writes its metrics into at scrape time: the
/// registry's encoder, with the first error kept (a failed write to the
/// response buffer) and everything after it skipped.
pub struct Scrape<'a> {
    enc: DescriptorEncoder<'a>,
    res: fmt::Result,
}

impl std::fmt::Debug for Scrape<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl<'a> Scrape<'a> {
    pub fn new(enc: DescriptorEncoder<'a>) -> Self {
        Scrape { enc, res: Ok(()) }
    }

    /// The first error met, if any.
    pub fn finish(self) -> fmt::Result {
        self.res
    }

    /// One metric family: `write` gets the family's encoder. A counter's
    /// name is given whole (`…_total`, as it appears in the output); the
    /// encoder adds that suffix itself, so it is taken off here.
    fn family(
        &mut self,
        name: &str,
        help: &str,
        ty: MetricType,
        write: impl FnOnce(&mut MetricEncoder<'_>) -> fmt::Result,
    ) {
        if self.res.is_err() {
            return;
        }
        let base = match ty {
            MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        self.res = self
            .enc
            .encode_descriptor(base, help, None, ty)
            .and_then(|mut m| write(&mut m));
    }

    /// One unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, help, MetricType::Counter, |m| {
            m.encode_counter::<NoLabelSet, _, u64>(&v, None)
        });
    }

    /// One unlabelled gauge.
    pub fn gauge<V: EncodeGaugeValue>(&mut self, name: &str, help: &str, v: V) {
        self.family(name, help, MetricType::Gauge, |m| m.encode_gauge(&v));
    }

    /// A labelled counter family (help and type even with no row).
    pub fn counter_family<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) {
        self.family(name, help, MetricType::Counter, |m| {
            for (labels, v) in rows {
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
            Ok(())
        });
    }

    /// A labelled gauge family (help and type even with no row).
    pub fn gauge_family<L: EncodeLabelSet, V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(name, help, MetricType::Gauge, |m| {
            for (labels, v) in rows {
                m.encode_family(&labels)?.encode_gauge(&v)?;
            }
            Ok(())
        });
    }

    /// A labelled histogram family: per row its labels, sum, count and
    /// (upper bound, count in that bucket alone) pairs.
    pub fn histogram_family<L: EncodeLabelSet, B: IntoIterator<Item = (f64, u64)>>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, f64, u64, B)>,
    ) {
        self.family(name, help, MetricType::Histogram, |m| {
            let mut buckets = Vec::with_capacity(BUCKETS.len());
            for (labels, sum, count, b) in rows {
                buckets.clear();
                buckets.extend(b);
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
            Ok(())
        });
    }
}

/// Writes one counter (for the parts that take the free functions).
pub fn counter(out: &mut Scrape<'_>, name: &str, help: &str, v: u64) {
    out.counter(name, help, v);
}

/// Writes one unlabelled gauge.
pub fn gauge(out: &mut Scrape<'_>, name: &str, help: &str, v: f64) {
    out.gauge(name, help, v);
}

/// A collector reading one part of the node at scrape time: `read` gets
/// the part (if it is still alive) and the scrape.
pub struct Part<T: ?Sized + Send + Sync + 'static> {
    part: std::sync::Weak<T>,
    read: fn(&T, &mut Scrape<'_>),
}

impl<T: ?Sized + Send + Sync + 'static> Part<T> {
    pub fn new(part: &std::sync::Arc<T>, read: fn(&T, &mut Scrape<'_>)) -> Box<Self> {
        Box::new(Part {
            part: std::sync::Arc::downgrade(part),
            read,
        })
    }
}

impl<T: ?Sized + Send + Sync + 'static> std::fmt::Debug for Part<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").finish_non_exhaustive()
    }
}

impl<T: ?Sized + Send + Sync + 'static> Collector for Part<T> {
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        let Some(part) = self.part.upgrade() else {
            return Ok(());
        };
        let mut s = Scrape::new(enc);
        (self.read)(&part, &mut s);
        s.finish()
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn scrape(m: &Arc<Metrics>) -> String {
        let mut r = Registry::default();
        r.register_collector(Part::new(m, |m, out| m.collect(out)));
        r.register_collector(Part::new(m, |_, out| {
            out.gauge_family(
                "amphi_test",
                "A \\ help\nline.",
                [([("space", "a\"b\\c\nd")], 2u64)],
            );
            out.counter_family(
                "amphi_empty_total",
                "No rows.",
                Vec::<([(&str, &str); 1], u64)>::new(),
            );
        }));
        render(&r).unwrap()
    }

    #[test]
    fn names_types_and_values_are_written_as_before() {
        let m = Arc::new(Metrics::default());
        m.joins.inc();
        m.joins.inc();
        m.events_clients.inc();
        m.observe_request("/api/v1/spaces/{id}", 200, Duration::from_micros(700));
        m.observe_request("/api/v1/spaces/{id}", 200, Duration::from_secs(3));
        m.observe_request("unmatched", 404, Duration::from_micros(10));
        let text = scrape(&m);
        for line in [
            "# HELP amphi_joins_total Joins (tokens minted).",
            "# TYPE amphi_joins_total counter",
            "amphi_joins_total 2",
            "# TYPE amphi_refused_per_ip_total counter",
            "# TYPE amphi_events_clients gauge",
            "amphi_events_clients 1",
            "# TYPE amphi_http_request_duration_seconds histogram",
            // Cumulative buckets: 0.7 ms is above 0.5 ms, within 1 ms.
            "amphi_http_request_duration_seconds_bucket{route=\"/api/v1/spaces/{id}\",status=\"200\",le=\"0.0005\"} 0",
            "amphi_http_request_duration_seconds_bucket{route=\"/api/v1/spaces/{id}\",status=\"200\",le=\"0.001\"} 1",
            "amphi_http_request_duration_seconds_bucket{route=\"/api/v1/spaces/{id}\",status=\"200\",le=\"2.5\"} 1",
            "amphi_http_request_duration_seconds_bucket{route=\"/api/v1/spaces/{id}\",status=\"200\",le=\"+Inf\"} 2",
            "amphi_http_request_duration_seconds_count{route=\"/api/v1/spaces/{id}\",status=\"200\"} 2",
            "amphi_http_request_duration_seconds_bucket{route=\"unmatched\",status=\"404\",le=\"0.0005\"} 1",
            // Label values and help escaped.
            "# HELP amphi_test A \\\\ help\\nline.",
            "amphi_test{space=\"a\\\"b\\\\c\\nd\"} 2",
            // A family with no row still has its help and type.
            "# TYPE amphi_empty_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        // Each family once.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }

    #[test]
    fn a_gone_part_writes_nothing() {
        let m = Arc::new(Metrics::default());
        let mut r = Registry::default();
        r.register_collector(Part::new(&m, |m, out| m.collect(out)));
        drop(m);
        assert_eq!(render(&r).unwrap(), "");
    }
}
