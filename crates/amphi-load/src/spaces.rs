//! `amphi load --speakers N`: the run makes its own spaces through the
//! HTTP API (create, start, stage the extra speakers), publishes into each
//! with real WebRTC speakers ([`crate::speaker`]) and listens to each with
//! `--listeners-per-space` listeners on `live.opus`; it reports every
//! space's continuity and the server's CPU and memory per live space.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::LoadArgs;
use crate::http;
use crate::listener::{self, Outcome};
use crate::report::{self, CpuSampler, ServerUsage};
use crate::speaker::{self, SpeakerOutcome, SpeakerPlan};
use crate::talk::{Talk, TalkPattern};
use crate::tone::{self, Heard, Probe, Tone};

/// How the run's speakers and listeners fall into spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub spaces: usize,
    pub speakers: usize,
    pub listeners_per_space: usize,
}

impl Layout {
    pub fn new(speakers: usize, spaces: Option<usize>, listeners_per_space: usize) -> Layout {
        let spaces = spaces.unwrap_or(speakers).clamp(1, speakers.max(1));
        Layout {
            spaces,
            speakers,
            listeners_per_space,
        }
    }

    /// Speakers in space `i` (spread evenly; the first ones get one more).
    pub fn speakers_in(&self, i: usize) -> usize {
        self.speakers / self.spaces + usize::from(i < self.speakers % self.spaces)
    }

    /// Sockets the run holds at once (besides a few for setup calls).
    pub fn sockets(&self) -> usize {
        self.speakers + self.spaces * self.listeners_per_space
    }
}

/// Counters of the node over the window (see [`delta`]).
type Counters = BTreeMap<String, f64>;

/// One space's run.
#[derive(Debug, Default)]
struct SpaceRun {
    id: String,
    setup_error: Option<String>,
    /// Its speakers and listeners were all started before the window.
    late: bool,
    speakers: Vec<SpeakerOutcome>,
    listeners: Vec<Outcome>,
}

/// One space in the report.
#[derive(Debug, Serialize)]
pub struct SpaceLine {
    pub id: String,
    pub speakers_connected: usize,
    pub listeners_admitted: usize,
    /// The lowest real-time rate among its listeners.
    pub realtime_ratio_min: f64,
    pub max_gap_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heard: Option<Heard>,
}

/// The summary of a `--speakers` run.
#[derive(Debug, Serialize)]
pub struct SpacesReport {
    pub spaces: usize,
    pub spaces_live: usize,
    pub spaces_late: usize,
    pub setup_errors: BTreeMap<String, u64>,
    pub talk: Talk,
    pub speakers: usize,
    pub speakers_connected: usize,
    pub whip_status: BTreeMap<u16, u64>,
    pub speaker_errors: BTreeMap<String, u64>,
    pub speaker_connect_ms_p50: u64,
    pub speaker_connect_ms_max: u64,
    pub speaker_packets_sent: u64,
    pub listeners: usize,
    pub listeners_admitted: u64,
    pub listeners_refused: BTreeMap<u16, u64>,
    pub listener_errors: BTreeMap<String, u64>,
    pub realtime_ratio_min: f64,
    pub realtime_ratio_p50: f64,
    pub below_90pct_realtime: u64,
    /// Spaces whose every listener got ≥ 90 % of real time.
    pub spaces_all_listeners_90pct: usize,
    pub max_gap_ms_p99: u64,
    pub max_gap_ms_max: u64,
    pub stalls_over_300ms: u64,
    /// Spaces whose first listener decoded the program.
    pub probed_spaces: usize,
    /// … and heard the space's tones in most of its signal.
    pub probed_tone_ok: usize,
    pub measured_secs: f64,
    pub server_cpu_cores: Option<f64>,
    /// Server CPU per live space, % of one core.
    pub server_cpu_pct_per_space: Option<f64>,
    /// Server CPU per live space per 20 ms tick, µs.
    pub server_cpu_us_per_space_tick: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// Server RSS grown since before the first space, per live space.
    pub server_rss_kb_per_space: Option<f64>,
    /// Program frames made over the window ÷ those real time asks of the
    /// live spaces (below 1: the node fell behind, e.g. starved of CPU).
    pub program_frames_ratio: Option<f64>,
    /// Server CPU per program frame made (one space, 20 ms): the per-space
    /// cost even when the node could not keep up.
    pub server_cpu_us_per_space_frame: Option<f64>,
    /// The program's and the ingest's counters over the window.
    pub server_counters: BTreeMap<String, f64>,
    pub per_space: Vec<SpaceLine>,
}

/// A space's tones probe: heard mostly as its speakers' tones.
fn tone_ok(h: &Heard) -> bool {
    h.bad_packets == 0 && h.loud_secs >= 0.5 && h.tone_secs >= 0.5 * h.loud_secs
}

fn admitted(o: &Outcome) -> bool {
    (200..300).contains(&o.status)
}

/// Runs the spaces and prints the report.
pub fn run(args: &LoadArgs, fd_limit: usize) -> anyhow::Result<()> {
    let layout = Layout::new(args.speakers, args.spaces, args.listeners_per_space);
    if layout.sockets() > fd_limit {
        anyhow::bail!(
            "{} sockets needed, {} descriptors allowed: raise `ulimit -n` (or fewer spaces)",
            layout.sockets(),
            fd_limit
        );
    }
    let Some(admin) = args.admin_token.clone() else {
        anyhow::bail!("--speakers makes spaces: give --admin-token (or AMPHI_ADMIN_TOKEN)");
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (runs, server, rss_before) = rt.block_on(run_here(args, layout, admin))?;
    let report = summarize(args, layout, runs, server, rss_before);
    report.print(args.json);
    Ok(())
}

async fn run_here(
    args: &LoadArgs,
    layout: Layout,
    admin: String,
) -> anyhow::Result<(Vec<SpaceRun>, Option<(ServerUsage, Counters)>, u64)> {
    let freqs: Vec<u32> = (0..8).map(tone::freq_of).collect();
    let tones: Arc<Vec<Arc<Tone>>> = Arc::new(
        freqs
            .iter()
            .map(|f| Tone::encode(*f).map(Arc::new))
            .collect::<anyhow::Result<_>>()?,
    );
    let pids = args.pid.map(|p| {
        std::iter::once(p)
            .chain(args.extra_pids.iter().copied())
            .collect::<Vec<_>>()
    });
    let rss_before = pids
        .as_ref()
        .map_or(0, |p| CpuSampler::start(p.clone()).rss_kb());
    let start = Instant::now();
    let end_at = start + Duration::from_secs_f64(args.ramp + args.duration);
    let measure_from = start + Duration::from_secs_f64(args.ramp + args.warmup);
    let setups = Arc::new(Semaphore::new(args.setup_concurrency.max(1)));
    let admin = Arc::new(admin);
    let mut tasks = Vec::with_capacity(layout.spaces);
    for i in 0..layout.spaces {
        let at = start + Duration::from_secs_f64(args.ramp * i as f64 / layout.spaces as f64);
        let ctx = SpaceCtx {
            i,
            args: args.clone(),
            layout,
            admin: admin.clone(),
            tones: tones.clone(),
            setups: setups.clone(),
            measure_from,
            end_at,
        };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            run_space(ctx).await
        }));
    }
    let server_addr = args.server;
    let sampler = pids.map(|p| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let s = CpuSampler::start(p);
            let m0 = metrics(server_addr).await;
            tokio::time::sleep_until(end_at.into()).await;
            let usage = s.finish();
            let m1 = metrics(server_addr).await;
            (usage, delta(&m0, &m1))
        })
    });
    let mut runs = Vec::with_capacity(layout.spaces);
    for t in tasks {
        runs.push(t.await.unwrap_or_default());
    }
    let server = match sampler {
        Some(s) => s.await.ok(),
        None => None,
    };
    Ok((runs, server, rss_before))
}

/// The node's `/metrics` samples (`name{labels}` → value).
async fn metrics(server: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let r = http::request(server, "GET", "/metrics", None, None).await;
    parse_metrics(&r.body)
}

fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Growth of the program's and the ingest's counters over the window.
fn delta(m0: &BTreeMap<String, f64>, m1: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    const KEPT: [&str; 3] = ["amphi_program_", "amphi_mixer_", "amphi_rtc_events_dropped"];
    m1.iter()
        .filter(|(k, _)| KEPT.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v - m0.get(k).copied().unwrap_or(0.0)))
        .collect()
}

struct SpaceCtx {
    i: usize,
    args: LoadArgs,
    layout: Layout,
    admin: Arc<String>,
    tones: Arc<Vec<Arc<Tone>>>,
    setups: Arc<Semaphore>,
    measure_from: Instant,
    end_at: Instant,
}

/// The space's id, its host's token and one token per speaker (the host
/// first).
async fn set_up(ctx: &SpaceCtx) -> Result<(String, String, Vec<String>), String> {
    let server = ctx.args.server;
    let body = if ctx.args.no_record {
        format!(r#"{{"title":"load {}","record":false}}"#, ctx.i)
    } else {
        format!(r#"{{"title":"load {}"}}"#, ctx.i)
    };
    let r = http::request(
        server,
        "POST",
        "/api/v1/spaces",
        Some(&ctx.admin),
        Some(("application/json", body.as_bytes())),
    )
    .await;
    if r.status != 201 {
        return Err(format!("create {}", r.status));
    }
    let v = r.json();
    let (Some(id), Some(host)) = (v["space"]["id"].as_str(), v["host"]["token"].as_str()) else {
        return Err("create: no id or token".into());
    };
    let (id, host) = (id.to_owned(), host.to_owned());
    let sp = |p: &str| format!("/api/v1/spaces/{id}{p}");
    let r = http::request(server, "POST", &sp("/start"), Some(&host), None).await;
    if r.status != 200 {
        return Err(format!("start {}", r.status));
    }
    let mut tokens = vec![host.clone()];
    for j in 1..ctx.layout.speakers_in(ctx.i) {
        let body = format!(r#"{{"name":"speaker {j}"}}"#);
        let r = http::request(
            server,
            "POST",
            &sp("/join"),
            None,
            Some(("application/json", body.as_bytes())),
        )
        .await;
        let v = r.json();
        let (Some(pid), Some(tok)) = (v["participant_id"].as_str(), v["token"].as_str()) else {
            return Err(format!("join {}", r.status));
        };
        let (pid, tok) = (pid.to_owned(), tok.to_owned());
        let r = http::request(server, "POST", &sp("/hand"), Some(&tok), None).await;
        if r.status != 200 {
            return Err(format!("hand {}", r.status));
        }
        let r = http::request(
            server,
            "POST",
            &sp(&format!("/stage/{pid}")),
            Some(&host),
            None,
        )
        .await;
        if r.status != 200 {
            return Err(format!("stage {}", r.status));
        }
        tokens.push(tok);
    }
    Ok((id, host, tokens))
}

async fn run_space(ctx: SpaceCtx) -> SpaceRun {
    let mut run = SpaceRun::default();
    let setup = {
        let _permit = ctx.setups.acquire().await;
        set_up(&ctx).await
    };
    let (id, host, tokens) = match setup {
        Ok(s) => s,
        Err(e) => {
            run.setup_error = Some(e);
            return run;
        }
    };
    run.id = id.clone();
    run.late = Instant::now() > ctx.measure_from;
    let epoch = Instant::now();
    let args = &ctx.args;
    let freqs: Vec<u32> = (0..tokens.len())
        .map(|j| tone::freq_of(ctx.i + j))
        .collect();
    let mut speakers = Vec::with_capacity(tokens.len());
    for (j, token) in tokens.into_iter().enumerate() {
        let plan = SpeakerPlan {
            server: args.server,
            space: id.clone(),
            token,
            tone: ctx.tones[(ctx.i + j) % ctx.tones.len()].clone(),
            talk: TalkPattern::new(args.talk, (ctx.i as u64) << 8 | j as u64, j),
            epoch,
            end_at: ctx.end_at,
            sendrecv: !args.speaker_sendonly,
        };
        speakers.push(tokio::spawn(speaker::speak(plan)));
    }
    let mut listeners = Vec::with_capacity(ctx.layout.listeners_per_space);
    for l in 0..ctx.layout.listeners_per_space {
        let n = ctx.i * ctx.layout.listeners_per_space + l;
        let src = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (n % usize::from(args.sources.max(1))) as u8,
        ));
        let probe = if l == 0 && ctx.i < args.probe_spaces {
            Probe::new(freqs.clone()).ok()
        } else {
            None
        };
        let path = format!("/spaces/{id}/live.opus");
        let (server, end_at, measure_from) = (args.server, ctx.end_at, ctx.measure_from);
        listeners.push(tokio::spawn(async move {
            listener::listen(server, src, &path, false, end_at, measure_from, None, probe).await
        }));
    }
    for s in speakers {
        run.speakers.push(s.await.unwrap_or_default());
    }
    for l in listeners {
        run.listeners.push(l.await.unwrap_or_default());
    }
    // The run's spaces end with it.
    let _ = http::request(
        args.server,
        "POST",
        &format!("/api/v1/spaces/{id}/end"),
        Some(&host),
        None,
    )
    .await;
    run
}

fn count<K: Ord>(m: &mut BTreeMap<K, u64>, k: K) {
    *m.entry(k).or_default() += 1;
}

fn error_key(e: &str) -> String {
    e.split(':').next().unwrap_or("").to_owned()
}

fn summarize(
    args: &LoadArgs,
    layout: Layout,
    runs: Vec<SpaceRun>,
    server: Option<(ServerUsage, Counters)>,
    rss_before_kb: u64,
) -> SpacesReport {
    let (server, counters) = match server {
        Some((u, c)) => (Some(u), c),
        None => (None, Counters::new()),
    };
    // Frames the program made over the window, all spaces: each one the
    // whole of a space's per-frame work (mix or pass, cut, fan out).
    let frames = counters
        .get("amphi_program_frames_total")
        .copied()
        .unwrap_or(0.0);
    let window = (args.duration - args.warmup).max(1e-9);
    let mut setup_errors = BTreeMap::new();
    let mut whip_status = BTreeMap::new();
    let mut speaker_errors = BTreeMap::new();
    let mut listeners_refused = BTreeMap::new();
    let mut listener_errors = BTreeMap::new();
    let mut connect_ms = Vec::new();
    let mut ratios_milli: Vec<u64> = Vec::new();
    let mut gaps = Vec::new();
    let (mut connected, mut sent, mut stalls, mut admitted_n) = (0, 0, 0, 0);
    let (mut probed, mut probed_ok, mut all_ok, mut live, mut late) = (0, 0, 0, 0, 0);
    let mut per_space = Vec::with_capacity(runs.len());
    for r in &runs {
        if let Some(e) = &r.setup_error {
            count(&mut setup_errors, e.clone());
            continue;
        }
        live += 1;
        late += usize::from(r.late);
        let mut line = SpaceLine {
            id: r.id.clone(),
            speakers_connected: 0,
            listeners_admitted: 0,
            realtime_ratio_min: f64::MAX,
            max_gap_ms: 0,
            heard: None,
        };
        for s in &r.speakers {
            count(&mut whip_status, s.whip_status);
            if let Some(e) = &s.error {
                count(&mut speaker_errors, error_key(e));
            }
            if s.connected {
                line.speakers_connected += 1;
            }
            connect_ms.extend(s.connect_ms);
            sent += s.packets_sent;
        }
        connected += line.speakers_connected;
        let mut space_ok = true;
        for o in &r.listeners {
            if let Some(e) = &o.error {
                count(&mut listener_errors, error_key(e));
            }
            if !admitted(o) {
                count(&mut listeners_refused, o.status);
                space_ok = false;
                continue;
            }
            admitted_n += 1;
            line.listeners_admitted += 1;
            let ratio = o.audio_secs / window;
            ratios_milli.push((ratio * 1000.0) as u64);
            space_ok &= ratio >= 0.9;
            line.realtime_ratio_min = line.realtime_ratio_min.min(ratio);
            line.max_gap_ms = line.max_gap_ms.max(o.max_gap_ms);
            gaps.push(o.max_gap_ms);
            stalls += o.stalls;
            if let Some(h) = &o.heard {
                probed += 1;
                probed_ok += usize::from(tone_ok(h));
                line.heard = Some(h.clone());
            }
        }
        all_ok += usize::from(space_ok);
        if line.realtime_ratio_min == f64::MAX {
            line.realtime_ratio_min = 0.0;
        }
        per_space.push(line);
    }
    let below = ratios_milli.iter().filter(|r| **r < 900).count() as u64;
    let ratio_min = ratios_milli.iter().min().copied().unwrap_or(0) as f64 / 1000.0;
    let per = |v: f64| (live > 0).then(|| v / live as f64);
    SpacesReport {
        spaces: layout.spaces,
        spaces_live: live,
        spaces_late: late,
        setup_errors,
        talk: args.talk,
        speakers: layout.speakers,
        speakers_connected: connected,
        whip_status,
        speaker_errors,
        speaker_connect_ms_p50: report::pct(&mut connect_ms, 0.5),
        speaker_connect_ms_max: report::pct(&mut connect_ms, 1.0),
        speaker_packets_sent: sent,
        listeners: layout.spaces * layout.listeners_per_space,
        listeners_admitted: admitted_n,
        listeners_refused,
        listener_errors,
        realtime_ratio_min: ratio_min,
        realtime_ratio_p50: report::pct(&mut ratios_milli, 0.5) as f64 / 1000.0,
        below_90pct_realtime: below,
        spaces_all_listeners_90pct: all_ok,
        max_gap_ms_p99: report::pct(&mut gaps, 0.99),
        max_gap_ms_max: report::pct(&mut gaps, 1.0),
        stalls_over_300ms: stalls,
        probed_spaces: probed,
        probed_tone_ok: probed_ok,
        measured_secs: window,
        server_cpu_cores: server.as_ref().map(|u| u.cpu_secs / u.wall_secs.max(1e-9)),
        server_cpu_pct_per_space: server
            .as_ref()
            .and_then(|u| per(100.0 * u.cpu_secs / u.wall_secs.max(1e-9))),
        server_cpu_us_per_space_tick: server
            .as_ref()
            .and_then(|u| per(u.cpu_secs * 1e6 / (u.wall_secs.max(1e-9) * 50.0))),
        server_rss_mb: server.as_ref().map(|u| u.rss_end_kb as f64 / 1024.0),
        server_rss_kb_per_space: server
            .as_ref()
            .and_then(|u| per(u.rss_end_kb.saturating_sub(rss_before_kb) as f64)),
        program_frames_ratio: server
            .as_ref()
            .filter(|_| frames > 0.0 && live > 0)
            .map(|u| frames / (live as f64 * u.wall_secs.max(1e-9) * 50.0)),
        server_cpu_us_per_space_frame: server
            .as_ref()
            .filter(|_| frames > 0.0)
            .map(|u| u.cpu_secs * 1e6 / frames),
        server_counters: counters,
        per_space,
    }
}

impl SpacesReport {
    pub fn print(&self, json_only: bool) {
        if let Ok(j) = serde_json::to_string(self) {
            println!("{j}");
        }
        if json_only {
            return;
        }
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "spaces               {} live of {} ({} late), setup errors {:?}",
            self.spaces_live, self.spaces, self.spaces_late, self.setup_errors
        );
        println!(
            "speakers ({:?})  {} of {} connected (ICE+DTLS), WHIP {:?}, errors {:?}, connect p50/max {} / {} ms",
            self.talk,
            self.speakers_connected,
            self.speakers,
            self.whip_status,
            self.speaker_errors,
            self.speaker_connect_ms_p50,
            self.speaker_connect_ms_max
        );
        println!(
            "listeners            {} admitted of {}, refused {:?}, errors {:?}",
            self.listeners_admitted, self.listeners, self.listeners_refused, self.listener_errors
        );
        println!(
            "real-time ratio      min {:.3} p50 {:.3}, below 90%: {}, spaces all ≥ 90%: {}",
            self.realtime_ratio_min,
            self.realtime_ratio_p50,
            self.below_90pct_realtime,
            self.spaces_all_listeners_90pct
        );
        println!(
            "max gap p99/max      {} / {} ms   stalls >300 ms: {}",
            self.max_gap_ms_p99, self.max_gap_ms_max, self.stalls_over_300ms
        );
        println!(
            "tones                {} of {} probed spaces heard their speakers",
            self.probed_tone_ok, self.probed_spaces
        );
        println!(
            "server CPU           {} cores, {} % of a core per space, {} µs per space per 20 ms",
            opt(self.server_cpu_cores),
            opt(self.server_cpu_pct_per_space),
            opt(self.server_cpu_us_per_space_tick)
        );
        println!(
            "program              {} of real time made, {} µs of server CPU per space-frame",
            opt(self.program_frames_ratio),
            opt(self.server_cpu_us_per_space_frame)
        );
        println!(
            "server RSS           {} MB, {} KB per live space",
            opt(self.server_rss_mb),
            opt(self.server_rss_kb_per_space)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speakers_spread_over_spaces() {
        let l = Layout::new(5, Some(2), 3);
        assert_eq!((l.speakers_in(0), l.speakers_in(1)), (3, 2));
        assert_eq!(l.sockets(), 5 + 6);
        // Never more spaces than speakers, never none.
        assert_eq!(Layout::new(3, Some(10), 0).spaces, 3);
        assert_eq!(Layout::new(4, None, 0).spaces, 4);
        assert_eq!(Layout::new(4, Some(0), 0).spaces, 1);
        let total: usize = (0..7)
            .map(|i| Layout::new(100, Some(7), 0).speakers_in(i))
            .sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn counters_grow_over_the_window() {
        let m0 =
            parse_metrics("# HELP x\namphi_program_frames_total 100\namphi_fanout_units_total 5\n");
        let m1 = parse_metrics(
            "amphi_program_frames_total 350\namphi_program_ticks_total{mode=\"pass\"} 7\namphi_fanout_units_total 9\nbad line\n",
        );
        let d = delta(&m0, &m1);
        assert_eq!(d.get("amphi_program_frames_total"), Some(&250.0));
        assert_eq!(
            d.get("amphi_program_ticks_total{mode=\"pass\"}"),
            Some(&7.0)
        );
        assert!(!d.contains_key("amphi_fanout_units_total"));
    }

    #[test]
    fn a_probe_is_ok_only_if_it_heard_the_tones() {
        let h = |loud, tone, bad| Heard {
            loud_secs: loud,
            tone_secs: tone,
            bad_packets: bad,
        };
        assert!(tone_ok(&h(6.0, 5.8, 0)));
        assert!(!tone_ok(&h(6.0, 1.0, 0)), "mostly another sound");
        assert!(!tone_ok(&h(0.0, 0.0, 0)), "silence");
        assert!(!tone_ok(&h(6.0, 6.0, 2)), "undecodable packets");
    }
}
