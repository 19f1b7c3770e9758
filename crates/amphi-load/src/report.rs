//! Aggregation of listener outcomes and the report: one JSON line and a
//! human table.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::LoadArgs;
use crate::listener::Outcome;

/// Server CPU and memory over the measured window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServerUsage {
    pub cpu_secs: f64,
    pub wall_secs: f64,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
}

/// Everything measured, mergeable across processes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub by_status: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub first_byte_us: Vec<u64>,
    pub audio_secs: Vec<f64>,
    pub max_gap_ms: Vec<u64>,
    pub stalls: u64,
    pub seq_gaps: u64,
    pub latencies_us: Vec<u64>,
    pub measured_secs: f64,
    pub server: Option<ServerUsage>,
}

impl Stats {
    /// Adds one listener.
    pub fn add(&mut self, o: Outcome) {
        *self.by_status.entry(o.status).or_default() += 1;
        if let Some(e) = o.error {
            let key: String = e.split(':').next().unwrap_or("").to_owned();
            *self.errors.entry(key).or_default() += 1;
        }
        let admitted = (200..300).contains(&o.status) || o.status == 101;
        if admitted {
            if let Some(t) = o.first_byte_us {
                self.first_byte_us.push(t);
            }
            self.audio_secs.push(o.audio_secs);
            self.max_gap_ms.push(o.max_gap_ms);
        }
        self.stalls += o.stalls;
        self.seq_gaps += o.seq_gaps;
        self.latencies_us.extend(o.latencies_us);
    }

    /// Merges a child's stats.
    pub fn merge(&mut self, o: Stats) {
        for (k, v) in o.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.first_byte_us.extend(o.first_byte_us);
        self.audio_secs.extend(o.audio_secs);
        self.max_gap_ms.extend(o.max_gap_ms);
        self.stalls += o.stalls;
        self.seq_gaps += o.seq_gaps;
        self.latencies_us.extend(o.latencies_us);
        self.measured_secs = self.measured_secs.max(o.measured_secs);
    }
}

pub(crate) fn pct<T: Copy + Ord + Default>(v: &mut [T], p: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The summary printed at the end of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub listeners: usize,
    pub output: crate::Output,
    pub admitted: u64,
    pub refused: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub first_byte_ms_p50: f64,
    pub first_byte_ms_p99: f64,
    pub first_byte_ms_max: f64,
    pub realtime_ratio_p50: f64,
    pub below_90pct_realtime: u64,
    pub max_gap_ms_p99: u64,
    pub max_gap_ms_max: u64,
    pub stalls_over_300ms: u64,
    pub ws_seq_gaps: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub measured_secs: f64,
    pub server_cpu_us_per_listener_sec: Option<f64>,
    pub server_cpu_cores: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub server_rss_delta_bytes_per_listener: Option<f64>,
}

impl Report {
    pub fn from_stats(args: &LoadArgs, s: &Stats) -> Report {
        let mut s = s.clone();
        let admitted: u64 = s
            .by_status
            .iter()
            .filter(|(k, _)| (200..300).contains(*k) || **k == 101)
            .map(|(_, v)| v)
            .sum();
        let refused = s
            .by_status
            .iter()
            .filter(|(k, _)| !((200..300).contains(*k) || **k == 101))
            .map(|(k, v)| (*k, *v))
            .collect();
        let window = s.measured_secs.max(1e-9);
        let mut ratios: Vec<u64> = s
            .audio_secs
            .iter()
            .map(|a| (a / window * 1000.0) as u64)
            .collect();
        let below = ratios.iter().filter(|r| **r < 900).count() as u64;
        let listener_secs = admitted as f64 * window;
        let server = s.server.clone();
        Report {
            listeners: args.listeners,
            output: args.output,
            admitted,
            refused,
            errors: s.errors.clone(),
            first_byte_ms_p50: pct(&mut s.first_byte_us, 0.5) as f64 / 1000.0,
            first_byte_ms_p99: pct(&mut s.first_byte_us, 0.99) as f64 / 1000.0,
            first_byte_ms_max: pct(&mut s.first_byte_us, 1.0) as f64 / 1000.0,
            realtime_ratio_p50: pct(&mut ratios, 0.5) as f64 / 1000.0,
            below_90pct_realtime: below,
            max_gap_ms_p99: pct(&mut s.max_gap_ms, 0.99),
            max_gap_ms_max: pct(&mut s.max_gap_ms, 1.0),
            stalls_over_300ms: s.stalls,
            ws_seq_gaps: s.seq_gaps,
            latency_ms_p50: pct(&mut s.latencies_us, 0.5) as f64 / 1000.0,
            latency_ms_p99: pct(&mut s.latencies_us, 0.99) as f64 / 1000.0,
            measured_secs: s.measured_secs,
            server_cpu_us_per_listener_sec: server
                .as_ref()
                .filter(|_| listener_secs > 0.0)
                .map(|u| u.cpu_secs * 1e6 / listener_secs),
            server_cpu_cores: server.as_ref().map(|u| u.cpu_secs / u.wall_secs.max(1e-9)),
            server_rss_mb: server.as_ref().map(|u| u.rss_end_kb as f64 / 1024.0),
            server_rss_delta_bytes_per_listener: server
                .as_ref()
                .filter(|_| admitted > 0)
                .map(|u| (u.rss_end_kb as f64 - u.rss_start_kb as f64) * 1024.0 / admitted as f64),
        }
    }

    pub fn print(&self, json_only: bool) {
        if let Ok(j) = serde_json::to_string(self) {
            println!("{j}");
        }
        if json_only {
            return;
        }
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "listeners            {} ({:?})",
            self.listeners, self.output
        );
        println!(
            "admitted / refused   {} / {:?}",
            self.admitted, self.refused
        );
        if !self.errors.is_empty() {
            println!("errors               {:?}", self.errors);
        }
        println!(
            "first byte p50/p99/max  {:.1} / {:.1} / {:.1} ms",
            self.first_byte_ms_p50, self.first_byte_ms_p99, self.first_byte_ms_max
        );
        println!(
            "real-time ratio p50  {:.3}   below 90%: {}",
            self.realtime_ratio_p50, self.below_90pct_realtime
        );
        println!(
            "max gap p99/max      {} / {} ms   stalls >300 ms: {}",
            self.max_gap_ms_p99, self.max_gap_ms_max, self.stalls_over_300ms
        );
        println!("ws sequence gaps     {}", self.ws_seq_gaps);
        println!(
            "latency p50/p99      {:.1} / {:.1} ms",
            self.latency_ms_p50, self.latency_ms_p99
        );
        println!(
            "server CPU           {} µs per listener-second, {} cores",
            opt(self.server_cpu_us_per_listener_sec),
            opt(self.server_cpu_cores)
        );
        println!(
            "server RSS           {} MB, {} bytes per listener",
            opt(self.server_rss_mb),
            opt(self.server_rss_delta_bytes_per_listener)
        );
    }
}

/// Samples a process's CPU time and RSS from /proc.
pub struct CpuSampler {
    pids: Vec<u32>,
    start: Option<(f64, Instant, u64)>,
}

/// CPU seconds of all of `pids` (each must exist).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| proc_cpu_secs(*p)).sum()
}

fn rss_of(pids: &[u32]) -> u64 {
    pids.iter().map(|p| proc_rss_kb(*p)).sum()
}

fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

fn proc_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

impl CpuSampler {
    /// Takes the first sample now, of the server process and any others
    /// that serve with it (a proxy's workers).
    pub fn start(pids: Vec<u32>) -> CpuSampler {
        let start = cpu_of(&pids).map(|c| (c, Instant::now(), rss_of(&pids)));
        CpuSampler { pids, start }
    }

    /// The resident memory of the processes now, KB.
    pub fn rss_kb(&self) -> u64 {
        rss_of(&self.pids)
    }

    /// Usage since the first sample.
    pub fn finish(self) -> ServerUsage {
        let Some((c0, t0, rss0)) = self.start else {
            return ServerUsage::default();
        };
        ServerUsage {
            cpu_secs: cpu_of(&self.pids).unwrap_or(c0) - c0,
            wall_secs: t0.elapsed().as_secs_f64(),
            rss_start_kb: rss0,
            rss_end_kb: rss_of(&self.pids),
        }
    }
}
