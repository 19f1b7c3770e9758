//! `amphi load`: the load generator an operator points at their own node
//! before the big day. N listeners on `live.opus` and/or `live.ws`, as a
//! ramp or a storm, each measured: connect → first byte, real-time rate,
//! gaps, WebSocket sequence gaps and speaker → listener latency.
//!
//! Listeners connect from addresses spread over 127.0.0.x so ephemeral
//! ports never run out, and the run splits into processes when one process
//! may not hold enough sockets.
//!
//! With `--speakers N` the run brings its own spaces: it creates them,
//! publishes into each with real WebRTC (str0m) speakers sending a libopus
//! tone, continuously or in bursts, listens to each with
//! `--listeners-per-space` listeners, and reports per-space continuity and
//! the server's cost per live space (see `spaces`).

mod http;
mod listener;
mod report;
mod spaces;
mod speaker;
mod talk;
mod tone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

pub use listener::Outcome;
pub use report::Report;
pub use report::Stats;
pub use spaces::SpacesReport;
pub use talk::Talk;

/// Which output the listeners use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Ogg,
    Ws,
    /// Half and half.
    Mixed,
}

/// Options of `amphi load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: SocketAddr,
    /// Space to listen to (not with `--speakers`, which makes its own).
    #[arg(long, default_value = "")]
    pub space: String,
    /// Number of listeners.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub listeners: usize,
    /// Output to listen on.
    #[arg(long, value_enum, default_value_t = Output::Ogg)]
    pub output: Output,
    /// Seconds over which listeners arrive (0: all at once, a storm).
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// Seconds each run lasts after the last listener started.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds at the start of the steady phase not measured (warm-up).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Source addresses used: 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// A request path instead of `/spaces/{space}/live.opus` (e.g. for an
    /// Icecast mount: `/amphi.opus`).
    #[arg(long)]
    pub path: Option<String>,
    /// Each listener first joins (`POST /api/v1/spaces/{space}/join`) and
    /// listens with its own token, as the web app does.
    #[arg(long)]
    pub join: bool,
    /// Server process to sample CPU and RSS from (/proc), on this machine.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print only the JSON line.
    #[arg(long)]
    pub json: bool,
    /// Internal: run as a child of a split run, printing JSON stats.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Internal: index of the first listener of this child.
    #[arg(long, hide = true, default_value_t = 0)]
    pub offset: usize,
    /// Listen over TLS (https / wss), trusting the CA certificate(s) in
    /// this PEM file.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// More processes whose CPU and memory count as the server's (e.g. a
    /// TLS proxy's workers), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub extra_pids: Vec<u32>,
    /// The server name to verify over TLS.
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
    /// Publish too: create spaces and send N WebRTC (WHIP) speakers into
    /// them; `--listeners-per-space` listen to each on live.opus.
    #[arg(long, default_value_t = 0)]
    pub speakers: usize,
    /// Spaces the speakers are spread over (default: one per speaker).
    #[arg(long)]
    pub spaces: Option<usize>,
    /// How the speakers talk.
    #[arg(long, value_enum, default_value_t = Talk::Bursts)]
    pub talk: Talk,
    /// Listeners on each space's live.opus (with `--speakers`).
    #[arg(long, default_value_t = 0)]
    pub listeners_per_space: usize,
    /// The node's admin token, to create spaces (with `--speakers`).
    #[arg(long, env = "AMPHI_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The first listener of this many spaces decodes the program and
    /// checks it carries the space's tones.
    #[arg(long, default_value_t = 10)]
    pub probe_spaces: usize,
    /// Speakers offer sendonly (no mix-minus back), as OBS does; by default
    /// they take it back, as the web app does.
    #[arg(long)]
    pub speaker_sendonly: bool,
    /// Spaces are created with recording off (default: the node's default,
    /// recorded).
    #[arg(long)]
    pub no_record: bool,
    /// Spaces being set up (HTTP calls) at once.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
}

/// Sockets one process keeps for itself besides listeners.
const RESERVED_FDS: u64 = 64;

fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// Runs a load test and prints the report.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let limit = raise_nofile().saturating_sub(RESERVED_FDS) as usize;
    if args.speakers > 0 {
        return spaces::run(&args, limit);
    }
    if args.space.is_empty() {
        anyhow::bail!("give --space to listen to, or --speakers to make spaces");
    }
    if !args.child && args.listeners > limit {
        return run_split(args, limit.max(1));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stats = rt.block_on(run_here(&args))?;
    if args.child {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    let report = Report::from_stats(&args, &stats);
    report.print(args.json);
    Ok(())
}

/// Splits the listeners over child processes that each stay under the
/// descriptor limit, and merges their measurements.
fn run_split(args: LoadArgs, per_child: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut offset = 0;
    while offset < args.listeners {
        let n = per_child.min(args.listeners - offset);
        let share = args.ramp * n as f64 / args.listeners as f64;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("load")
            .args(["--server", &args.server.to_string(), "--space", &args.space])
            .args(["-n", &n.to_string(), "--ramp", &share.to_string()])
            .args([
                "--duration",
                &(args.duration + args.ramp - share).to_string(),
            ])
            .args([
                "--warmup",
                &args.warmup.to_string(),
                "--sources",
                &args.sources.to_string(),
            ])
            .args([
                "--output",
                match args.output {
                    Output::Ogg => "ogg",
                    Output::Ws => "ws",
                    Output::Mixed => "mixed",
                },
            ])
            .args(["--child", "--offset", &offset.to_string()])
            .args(if args.join { &["--join"][..] } else { &[][..] })
            .args(["--tls-name", &args.tls_name])
            .stdout(std::process::Stdio::piped());
        if let Some(p) = &args.path {
            cmd.args(["--path", p]);
        }
        if let Some(ca) = &args.tls_ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        children.push(cmd.spawn()?);
        offset += n;
    }
    // Children ramp and warm up first; sample the server after that.
    std::thread::sleep(Duration::from_secs_f64(args.ramp + args.warmup));
    let sampler = args
        .pid
        .map(|p| report::CpuSampler::start(server_pids(&args, p)));
    let mut merged = Stats::default();
    for c in children {
        let out = c.wait_with_output()?;
        let s: Stats = serde_json::from_slice(&out.stdout)?;
        merged.merge(s);
    }
    merged.server = sampler.map(|s| s.finish());
    Report::from_stats(&args, &merged).print(args.json);
    Ok(())
}

/// The server's process and those that count with it.
fn server_pids(args: &LoadArgs, pid: u32) -> Vec<u32> {
    std::iter::once(pid)
        .chain(args.extra_pids.iter().copied())
        .collect()
}

/// The TLS client of a `--tls-ca` run: (config, server name).
fn tls_client(args: &LoadArgs) -> anyhow::Result<Option<listener::Tls>> {
    use rustls_pki_types::pem::PemObject;
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let roots = rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
    let config = amphi_tls::client_config(&roots)?;
    let name = rustls_pki_types::ServerName::try_from(args.tls_name.clone())?;
    Ok(Some(listener::Tls {
        connector: tokio_rustls::TlsConnector::from(config),
        name,
    }))
}

async fn run_here(args: &LoadArgs) -> anyhow::Result<Stats> {
    let tls = tls_client(args)?;
    let path_for = |i: usize| -> (String, bool) {
        let ws = match args.output {
            Output::Ogg => false,
            Output::Ws => true,
            Output::Mixed => i % 2 == 1,
        };
        let p = match (&args.path, ws) {
            (Some(p), _) => p.clone(),
            (None, true) => format!("/spaces/{}/live.ws", args.space),
            (None, false) => format!("/spaces/{}/live.opus", args.space),
        };
        (p, ws)
    };
    let bar = if args.child || args.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(args.listeners as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} listeners")
        {
            b.set_style(style);
        }
        b.set_message("connecting");
        b
    };
    let bar = Arc::new(bar);
    let start = Instant::now();
    let end_at = start + Duration::from_secs_f64(args.ramp + args.duration);
    let measure_from = start + Duration::from_secs_f64(args.ramp + args.warmup);
    // The server is sampled over the measured window only (after the ramp
    // and the warm-up), so joins do not count as steady-state cost.
    let sampler = match (args.child, args.pid) {
        (false, Some(pid)) => {
            let pids = server_pids(args, pid);
            Some(tokio::spawn(async move {
                tokio::time::sleep_until(measure_from.into()).await;
                report::CpuSampler::start(pids)
            }))
        }
        _ => None,
    };
    let mut tasks = Vec::with_capacity(args.listeners);
    for i in 0..args.listeners {
        let at =
            start + Duration::from_secs_f64(args.ramp * i as f64 / args.listeners.max(1) as f64);
        let (path, ws) = path_for(args.offset + i);
        let src = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + ((args.offset + i) % usize::from(args.sources.max(1))) as u8,
        ));
        let server = args.server;
        let bar = bar.clone();
        let join = args.join;
        let space = args.space.clone();
        let args_offset = args.offset;
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let path = if join {
                match listener::join(server, &space, args_offset + i).await {
                    Ok(token) => format!("{path}?token={token}"),
                    Err(status) => {
                        bar.inc(1);
                        return listener::Outcome {
                            status,
                            error: Some("join refused".into()),
                            ..Default::default()
                        };
                    }
                }
            } else {
                path
            };
            let o = listener::listen(server, src, &path, ws, end_at, measure_from, tls, None).await;
            bar.inc(1);
            o
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        if let Ok(o) = t.await {
            stats.add(o);
        }
    }
    bar.finish_and_clear();
    stats.measured_secs = end_at.saturating_duration_since(measure_from).as_secs_f64();
    if let Some(s) = sampler
        && let Ok(s) = s.await
    {
        stats.server = Some(s.finish());
    }
    Ok(stats)
}
