//! One node: wires the store, the room core, the media plane, the fan-out
//! and the HTTP front door into one process. `Node::load(config)?.run()`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use parking_lot::{Mutex, RwLock};

use amphi_core::token::TokenKey;
use amphi_core::{ParticipantId, SpaceId};
use amphi_egress::{Egress, EgressConfig};
use amphi_store::Store;

use crate::admission::{Admission, KeyedLimiter};
use crate::app::App;
use crate::cluster::nats::Nats;
use crate::cluster::{Lone, Membership};
use crate::error::ApiError;
use crate::media::{MediaConfig, MediaPlane};
use crate::metrics::Metrics;

/// A node's settings: the options of `amphi serve`. Every flag has an
/// `AMPHI_*` environment twin.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP address (API, web app, listener streams).
    #[arg(long, env = "AMPHI_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// UDP address for WebRTC (WHIP). Default: the HTTP address, on UDP.
    #[arg(long, env = "AMPHI_RTC")]
    pub rtc: Option<SocketAddr>,
    /// IP to advertise in ICE candidates when the RTC address is 0.0.0.0 or
    /// behind NAT.
    #[arg(long, env = "AMPHI_ADVERTISE_IP")]
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Directory for the database, secrets and recordings.
    #[arg(long, env = "AMPHI_DATA_DIR", default_value = "./amphi-data")]
    pub data_dir: PathBuf,
    /// Listener streams this node accepts; beyond it, 503 with Retry-After.
    #[arg(long, env = "AMPHI_MAX_LISTENERS", default_value_t = 15_000)]
    pub max_listeners: u64,
    /// Listener streams one space accepts on this node.
    #[arg(long, env = "AMPHI_MAX_LISTENERS_PER_SPACE", default_value_t = u64::MAX)]
    pub max_listeners_per_space: u64,
    /// New listener streams admitted per second (token bucket rate).
    #[arg(long, env = "AMPHI_JOIN_RATE", default_value_t = 20_000.0)]
    pub join_rate: f64,
    /// Burst of the listener admission bucket.
    #[arg(long, env = "AMPHI_JOIN_BURST", default_value_t = 20_000.0)]
    pub join_burst: f64,
    /// Program bitrate in bit/s (16000..=128000).
    #[arg(long, env = "AMPHI_BITRATE", default_value_t = 32_000)]
    pub bitrate: i32,
    /// While one speaker is heard, their Opus packets are the program as
    /// they came (no decode, no encode); nobody heard costs a shared
    /// silence frame. `false`: every frame is mixed and encoded.
    #[arg(long, env = "AMPHI_PASS_THROUGH", default_value_t = true, action = clap::ArgAction::Set)]
    pub pass_through: bool,
    /// Duration of one Ogg page on `live.opus`, in ms (multiple of 20).
    /// Longer pages mean fewer writes per listener and more latency.
    #[arg(long, env = "AMPHI_OGG_PAGE_MS", default_value_t = 100)]
    pub ogg_page_ms: u32,
    /// Program history a new `live.opus` listener receives at once, in ms
    /// (whole Ogg pages, at most 30000). Players that buffer before they
    /// start (Chromium's `<audio>` waits for 32 KB, about 7 s at
    /// 32 kbit/s) start at once, and then play this far behind live: the
    /// burst is the latency cost. 0 sends one page. A request can ask for
    /// less with `live.opus?burst_ms=N`. `live.ws` is unaffected.
    #[arg(long, env = "AMPHI_OGG_BURST_MS", default_value_t = 8000)]
    pub ogg_burst_ms: u32,
    /// Duration of one `live.ws` message, in ms (multiple of 20).
    #[arg(long, env = "AMPHI_WS_BATCH_MS", default_value_t = 100)]
    pub ws_batch_ms: u32,
    /// Kernel send buffer per listener socket, in bytes (the kernel doubles
    /// it). It bounds kernel memory per listener and how long a stuck
    /// listener is buffered before it skips ahead.
    #[arg(long, env = "AMPHI_LISTENER_SNDBUF", default_value_t = 16 * 1024)]
    pub listener_sndbuf: usize,
    /// A listener that cannot take a byte for this long is closed (ms).
    #[arg(long, env = "AMPHI_LISTENER_STALL_MS", default_value_t = 5000)]
    pub listener_stall_ms: u64,
    /// Open connections one source address may hold (listener streams are
    /// counted only until they are handed to the fan-out).
    #[arg(long, env = "AMPHI_MAX_CONNS_PER_IP", default_value_t = 5000)]
    pub max_conns_per_ip: u32,
    /// Room commands (hand, stage, mute, …) one participant may send per
    /// second (burst: twice that).
    #[arg(long, env = "AMPHI_COMMAND_RATE", default_value_t = 10.0)]
    pub command_rate: f64,
    /// Fan-out worker threads (default: one per core).
    #[arg(long, env = "AMPHI_FANOUT_WORKERS")]
    pub fanout_workers: Option<usize>,
    /// Where recordings are written (default `<data-dir>/recordings`). In a
    /// cluster, a directory every node shares lets the node that takes
    /// over a space continue its recording.
    #[arg(long, env = "AMPHI_RECORDINGS_DIR")]
    pub recordings_dir: Option<PathBuf>,
    /// Keep recordings in S3-compatible object storage instead of a
    /// directory: s3://bucket/prefix (region, endpoint and credentials from
    /// the AWS_* environment variables, e.g. AWS_ENDPOINT_URL,
    /// AWS_ALLOW_HTTP=true for a local server). Shared by every node of a
    /// cluster.
    #[arg(long, env = "AMPHI_RECORDINGS_URL")]
    pub recordings_url: Option<String>,
    /// Join a cluster through these NATS servers (one URL or a comma list,
    /// e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222: the node reconnects
    /// to any of them). Without it the node stands alone: SQLite and local
    /// files, no other service.
    #[arg(long, env = "AMPHI_NATS")]
    pub nats: Option<String>,
    /// This node's name in the cluster (default: generated once and kept in
    /// the data dir).
    #[arg(long, env = "AMPHI_NODE_ID")]
    pub node_id: Option<String>,
    /// The URL other nodes and clients reach this node's HTTP at (default:
    /// http://<--http>).
    #[arg(long, env = "AMPHI_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds an edge keeps receiving a space's frames after its last
    /// listener left (a quick return needs no new subscription).
    #[arg(long, env = "AMPHI_EDGE_LINGER", default_value_t = 15)]
    pub edge_linger: u64,
    /// Replicas of the JetStream buckets the node creates (spaces, leases,
    /// replays, config): 3 on a NATS cluster of three or more servers; a
    /// single server that refuses them gets 1.
    #[arg(long, env = "AMPHI_NATS_REPLICAS", default_value_t = 3)]
    pub nats_replicas: usize,
    /// Seconds a live space whose origin died waits on its new origin for
    /// a speaker to come back before it ends by itself.
    #[arg(long, env = "AMPHI_ORPHAN_GRACE", default_value_t = 60)]
    pub orphan_grace: u64,
    /// Shared key of identity tokens from the operator's own app (HS256);
    /// a ban then follows the identity.
    #[arg(long, env = "AMPHI_IDENTITY_KEY", hide_env_values = true)]
    pub identity_key: Option<String>,
    /// Lifetime of participant tokens, in seconds, counted from the later
    /// of now and the space's scheduled start (so a host's token still
    /// works when a far-off space starts); `POST .../token` re-issues one.
    #[arg(long, env = "AMPHI_TOKEN_TTL", default_value_t = crate::app::TOKEN_TTL_S)]
    pub token_ttl: u64,
    /// Joins and raised hands one network (an IPv4 address, an IPv6 /64)
    /// may send per second, over all spaces (burst: three times that).
    #[arg(long, env = "AMPHI_JOIN_RATE_PER_IP", default_value_t = 10.0)]
    pub join_rate_per_ip: f64,
    /// Hands one space takes per second, from everyone (burst: five times
    /// that); its queue holds at most 500.
    #[arg(long, env = "AMPHI_HAND_RATE_PER_SPACE", default_value_t = 20.0)]
    pub hand_rate_per_space: f64,
    /// WHIP offers one network (IPv4 address, IPv6 /64) may make per
    /// second (burst: 2.5 times that); a participant may make 2.
    #[arg(long, env = "AMPHI_OFFER_RATE_PER_IP", default_value_t = crate::admission::OfferLimits::PER_NETWORK)]
    pub offer_rate_per_ip: f64,
    /// WHIP offers the node takes per second, from everyone (503 beyond).
    #[arg(long, env = "AMPHI_OFFER_RATE", default_value_t = crate::admission::OfferLimits::PER_NODE)]
    pub offer_rate: f64,
    /// Requests that read the recordings storage (clips and their pages,
    /// replays, recordings, transcripts) or a page of a space's caption
    /// cues one network (IPv4 address, IPv6 /64) may make per second (burst: three times that; 429 beyond).
    /// Behind a CDN or a proxy that fetches for everyone, raise it.
    #[arg(long, env = "AMPHI_READ_RATE_PER_IP", default_value_t = 100.0)]
    pub read_rate_per_ip: f64,
    /// WebRTC sessions (speakers' publications) the node holds at once
    /// (503 beyond); each costs a DTLS/SRTP state and its jitter buffer.
    #[arg(long, env = "AMPHI_MAX_RTC_SESSIONS", default_value_t = 500)]
    pub max_rtc_sessions: usize,
    /// Minutes of a live space the LL-HLS playlist keeps for seeking back
    /// (its DVR window; about 240 KB a minute of a talking space, in
    /// memory). Many long-lived spaces on one node want it shorter; the
    /// replay after the end comes from the recording, not from this.
    #[arg(long, env = "AMPHI_HLS_DVR_MINUTES", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub hls_dvr_minutes: u32,
    /// Live captions: the directory of the offline speech model
    /// (`scripts/fetch-captions-model DIR`: faster-whisper tiny.en). Spaces
    /// created with `"captions": true` (or turned on by their host) get
    /// each speaker's words as `caption` events, a WebVTT rendition and a
    /// transcript beside the replay. Without it captions are unavailable
    /// (the space API says why) and the node runs as before.
    #[arg(long, env = "AMPHI_CAPTIONS_MODEL")]
    pub captions_model: Option<PathBuf>,
    /// Caption worker threads, each with its own model (~150 MB): phrases
    /// queue to them (4 per worker; the oldest is dropped, counted, when
    /// full).
    #[arg(long, env = "AMPHI_CAPTIONS_WORKERS", default_value_t = 1)]
    pub captions_workers: usize,
    /// HTTPS (and wss) on the --http address with this PEM certificate
    /// chain (leaf first); a changed file is picked up within 2 s without
    /// dropping connected listeners. Needs --tls-key.
    #[arg(
        long,
        env = "AMPHI_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "acme_domain"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "AMPHI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS on, a plain-HTTP address (e.g. 0.0.0.0:80) that answers
    /// 308 to https, except ACME HTTP-01 challenges, /healthz and /readyz.
    #[arg(long, env = "AMPHI_HTTP_REDIRECT")]
    pub http_redirect: Option<SocketAddr>,
    /// TLS handshakes started per second (bursts of as many); beyond it a
    /// new connection is closed before the handshake costs anything.
    #[arg(long, env = "AMPHI_TLS_HANDSHAKE_RATE", default_value_t = 4000.0)]
    pub tls_handshake_rate: f64,
    /// How many nice steps (0–19) below the rest of the node the threads
    /// TLS handshakes run on (their own, half the cores) are: above 0 a
    /// join storm's handshakes yield the CPU to the fan-out and the mixer.
    /// 0: the same priority as the rest.
    #[arg(long, env = "AMPHI_TLS_HANDSHAKE_NICE", default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub tls_handshake_nice: i32,
    /// Get the HTTPS certificate for this domain name automatically (ACME,
    /// e.g. Let's Encrypt) and renew it; repeatable (the environment twin
    /// takes a comma-separated list). Turns HTTPS on without --tls-cert.
    /// The CA validates on port 443 (TLS-ALPN-01) or, with --http-redirect,
    /// on port 80 (HTTP-01). Keys and certificate: <data-dir>/acme/.
    #[arg(long = "acme-domain", env = "AMPHI_ACME_DOMAIN", value_delimiter = ',')]
    pub acme_domain: Vec<String>,
    /// The ACME directory URL.
    #[arg(long, env = "AMPHI_ACME_DIRECTORY", default_value = crate::acme::LETS_ENCRYPT)]
    pub acme_directory: String,
    /// Contact address given to the ACME CA (expiry notices).
    #[arg(long, env = "AMPHI_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// Trust the CA certificates in this PEM file for the ACME directory's
    /// own HTTPS instead of the system's (a private or test ACME server).
    #[arg(long, env = "AMPHI_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// Testing only: renew the ACME certificate once it is this many
    /// seconds old (normally: when a third of its lifetime is left).
    #[arg(long, env = "AMPHI_ACME_RENEW_AFTER", hide = true)]
    pub acme_renew_after: Option<u64>,
    /// A TURN server offered to WHIP publishers behind NATs and firewalls
    /// (repeatable; e.g. turn:turn.example.org:3478?transport=udp and
    /// turns:turn.example.org:5349?transport=tcp), as Link headers with
    /// time-limited credentials. Needs --turn-secret.
    #[arg(
        long,
        env = "AMPHI_TURN_URL",
        value_delimiter = ',',
        requires = "turn_secret"
    )]
    pub turn_url: Vec<String>,
    /// ICE-TCP on the --http port: WHIP answers also offer a passive TCP
    /// candidate, so a speaker whose network blocks UDP still publishes
    /// with no TURN server (the front door tells ICE-TCP from HTTP and TLS
    /// by the first bytes). On by default; --ice-tcp false turns it off.
    #[arg(long, env = "AMPHI_ICE_TCP", default_value_t = true, action = clap::ArgAction::Set)]
    pub ice_tcp: bool,
    /// The secret shared with the TURN servers (coturn: use-auth-secret,
    /// static-auth-secret).
    #[arg(long, env = "AMPHI_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Seconds a TURN credential stays valid.
    #[arg(long, env = "AMPHI_TURN_TTL", default_value_t = 12 * 3600)]
    pub turn_ttl: u64,
    /// Wait before the first retry of a failed webhook delivery, in ms;
    /// each further retry waits twice as long (at most an hour), for 24 h.
    #[arg(long, env = "AMPHI_WEBHOOK_RETRY_BASE_MS", default_value_t = 5000)]
    pub webhook_retry_base_ms: u64,
    /// Deliver webhooks to private, loopback and link-local addresses too
    /// (10/8, 172.16/12, 192.168/16, 127/8, 169.254/16, 100.64/10, fc00::/7,
    /// fe80::/10, ::1, …): a self-hosted receiver beside the node. Off, an
    /// endpoint whose URL names or resolves only to such an address is
    /// refused (400 at registration, a failed attempt at delivery).
    #[arg(long, env = "AMPHI_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private: bool,
    /// Require `Authorization: Bearer <this>` on /metrics (401 otherwise).
    /// Default: /metrics is open.
    #[arg(long, env = "AMPHI_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Serve /metrics (plain HTTP) on this address instead of the --http
    /// one, e.g. 127.0.0.1:9100 or a private interface; the --http
    /// listener then has no /metrics.
    #[arg(long, env = "AMPHI_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Whether the node serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() || !self.acme_domain.is_empty()
    }
}

/// How often the certificate files are checked for a renewal (two stat
/// calls).
const CERT_POLL: Duration = Duration::from_secs(2);

/// A loaded node: its state restored, its sockets bound, its threads
/// running; [`Node::run`] serves until SIGINT/SIGTERM.
pub struct Node {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    router: Router,
    listener: tokio::net::TcpListener,
    tls: Option<Tls>,
    redirect: Option<tokio::net::TcpListener>,
    /// With `--metrics-addr`: its listener and the /metrics route.
    metrics: Option<(tokio::net::TcpListener, Router)>,
    /// With TLS: the runtime the handshakes run on.
    handshakes: Option<tokio::runtime::Runtime>,
}

/// HTTPS: the certificate and the front door's TLS.
struct Tls {
    certs: Arc<amphi_tls::Certs>,
    front: Arc<crate::front::FrontTls>,
    /// With `--acme-domain`: the ACME client's settings and the validity of
    /// the certificate found in the data dir, if any.
    acme: Option<(crate::acme::AcmeConfig, Option<crate::acme::Validity>)>,
}

impl Node {
    /// Opens the store, joins the cluster if asked, starts the media plane
    /// and the fan-out, restores the spaces and binds the HTTP address.
    pub fn load(config: Config) -> anyhow::Result<Node> {
        raise_nofile_limit();
        // One crypto provider (aws-lc-rs) for every rustls user, including
        // those that take the process default (NATS, S3).
        amphi_tls::install_provider();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("amphi-http")
            .build()?;
        let rate = config.tls_handshake_rate.max(1.0);
        let handshakes = if config.tls() {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            Some(crate::front::handshake_runtime(
                cores.div_ceil(2),
                config.tls_handshake_nice,
            )?)
        } else {
            None
        };
        let front_tls = |server| {
            let front = crate::front::FrontTls::new(server, rate, rate);
            Arc::new(match &handshakes {
                Some(rt) => front.with_handshakes(rt.handle().clone()),
                None => front,
            })
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let certs = Arc::new(
                    amphi_tls::Certs::from_pem_files(cert, key)
                        .context("loading the TLS certificate")?,
                );
                let server = amphi_tls::server_config(certs.clone()).context("configuring TLS")?;
                let front = front_tls(server);
                Some(Tls {
                    certs,
                    front,
                    acme: None,
                })
            }
            _ if !config.acme_domain.is_empty() => {
                let acme = crate::acme::AcmeConfig::new(
                    &config.acme_domain,
                    config.acme_directory.clone(),
                    config.acme_email.clone(),
                    config.acme_ca_root.clone(),
                    &config.data_dir,
                    config.http_redirect.is_some(),
                    config.acme_renew_after.map(Duration::from_secs),
                )?;
                let certs = Arc::new(amphi_tls::Certs::empty());
                let stored = acme.load_stored().map(|(key, validity)| {
                    certs.set(key);
                    eprintln!(
                        "amphi: ACME: using the stored certificate in {}",
                        acme.dir.display()
                    );
                    validity
                });
                let server = amphi_tls::server_config(certs.clone()).context("configuring TLS")?;
                let front = front_tls(server);
                Some(Tls {
                    certs,
                    front,
                    acme: Some((acme, stored)),
                })
            }
            _ => None,
        };
        let redirect = match config.http_redirect {
            Some(addr) if tls.is_some() => Some(rt.block_on(async { bind_http(addr) })?),
            Some(_) => anyhow::bail!(
                "--http-redirect needs TLS (--tls-cert and --tls-key, or --acme-domain)"
            ),
            None => None,
        };
        let (app, router, listener, metrics) = rt.block_on(load(config))?;
        if let Some((acme, None)) = tls.as_ref().and_then(|t| t.acme.as_ref()) {
            *app.cert_pending.write() = Some(format!(
                "no TLS certificate yet: the ACME order for {} is pending",
                acme.domains.join(", ")
            ));
        }
        Ok(Node {
            rt,
            app,
            router,
            listener,
            tls,
            redirect,
            metrics,
            handshakes,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGINT/SIGTERM, then stops the media plane (keeping the
    /// open recording segment).
    pub fn run(self) -> anyhow::Result<()> {
        let Node {
            rt,
            app,
            router,
            listener,
            tls,
            redirect,
            metrics,
            handshakes,
        } = self;
        // A file size limit (RLIMIT_FSIZE) or a file that cannot grow is a
        // write error the store answers with 507, not a signal that kills
        // every room the node serves.
        // SAFETY: setting a signal's disposition to SIG_IGN has no handler
        // to race with.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        rt.block_on(async move {
            if let Some((l, r)) = metrics {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, r).await {
                        tracing::warn!(error = %e, "the --metrics-addr listener stopped");
                    }
                });
            }
            if let Some(r) = redirect {
                let port = listener.local_addr().map_or(443, |a| a.port());
                tokio::spawn(crate::redirect::serve(r, app.clone(), port));
            }
            let front = tls.map(|t| {
                if let Some((acme, stored)) = t.acme {
                    tokio::spawn(crate::acme::run(acme, t.certs.clone(), app.clone(), stored));
                    return t.front;
                }
                let certs = t.certs.clone();
                tokio::spawn(async move {
                    let mut iv = tokio::time::interval(CERT_POLL);
                    loop {
                        iv.tick().await;
                        match certs.reload_if_changed() {
                            Ok(true) => eprintln!("amphi: TLS certificate reloaded"),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded"),
                        }
                    }
                });
                t.front
            });
            let ticker = app.clone();
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(Duration::from_millis(250));
                loop {
                    iv.tick().await;
                    ticker.tick_updates();
                }
            });
            tokio::select! {
                _ = crate::front::serve(listener, app.clone(), router, front) => {}
                _ = shutdown_signal() => eprintln!("amphi: shutting down"),
            }
            app.media.shutdown();
        });
        if let Some(hs) = handshakes {
            hs.shutdown_background();
        }
        Ok(())
    }
}

fn raise_nofile_limit() {
    // A listener is a socket: allow as many as the hard limit permits.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The metrics listener of `--metrics-addr`, with its router.
type MetricsListener = Option<(tokio::net::TcpListener, Router)>;

async fn load(
    args: Config,
) -> anyhow::Result<(Arc<App>, Router, tokio::net::TcpListener, MetricsListener)> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = Store::open(&args.data_dir).context("opening the database")?;
    let mut token_key_bytes = store.secret("token_key", rand::random)?;
    let members: Arc<dyn Membership> = match &args.nats {
        None => Arc::new(Lone),
        Some(url) => {
            let node = match &args.node_id {
                Some(n) => n.clone(),
                None => match store.setting("node_id")? {
                    Some(n) => n,
                    None => {
                        let n = format!("n{:08x}", rand::random::<u32>());
                        store.set_setting("node_id", &n)?;
                        n
                    }
                },
            };
            if node.is_empty()
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                anyhow::bail!("--node-id must be letters, digits, - or _");
            }
            let http = args.public_url.clone().unwrap_or_else(|| {
                let scheme = if args.tls() { "https" } else { "http" };
                format!("{scheme}://{}", args.http)
            });
            let settings = crate::cluster::nats::Settings {
                node: node.clone(),
                http,
                edge_linger: Duration::from_secs(args.edge_linger),
                replicas: args.nats_replicas.clamp(1, 5),
                orphan_grace: Duration::from_secs(args.orphan_grace),
            };
            let nats = Nats::connect(url, settings)
                .await
                .with_context(|| format!("joining the cluster at {url}"))?;
            eprintln!("amphi: node {node} joined the cluster at {url}");
            nats
        }
    };
    // Every node signs and checks tokens with the same key.
    let shared = members.shared_secret("token_key", &token_key_bytes).await?;
    token_key_bytes = shared
        .try_into()
        .map_err(|_| anyhow::anyhow!("the shared token key is not 32 bytes"))?;
    let token_key = TokenKey::from_bytes(token_key_bytes);
    let admin_token = match std::env::var("AMPHI_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let (local, fresh) = match store.setting("admin_token")? {
                Some(t) => (t, false),
                None => {
                    let t: String = (0..32)
                        .map(|_| format!("{:x}", rand::random::<u8>() % 16))
                        .collect();
                    store.set_setting("admin_token", &t)?;
                    (t, true)
                }
            };
            // One admin token for every member: the first one's.
            let shared = members
                .shared_secret("admin_token", local.as_bytes())
                .await?;
            let t = String::from_utf8(shared)
                .map_err(|_| anyhow::anyhow!("the shared admin token is not UTF-8"))?;
            if t != local {
                store.set_setting("admin_token", &t)?;
                eprintln!("admin token: {t} (the cluster's, kept in NATS)");
            } else {
                let how = if fresh { "generated; " } else { "" };
                eprintln!(
                    "admin token: {t} ({how}stored in {})",
                    args.data_dir.display()
                );
            }
            t
        }
    };
    let ogg_page_ms = (args.ogg_page_ms / 20).clamp(1, 50) * 20;
    let ogg_burst_pages = (args.ogg_burst_ms.min(30_000) / ogg_page_ms).max(1) as usize;
    let egress = Arc::new(Egress::start(EgressConfig {
        workers: args
            .fanout_workers
            .unwrap_or_else(|| EgressConfig::default().workers),
        stall_timeout: Duration::from_millis(args.listener_stall_ms),
        sndbuf: Some(args.listener_sndbuf),
        // Every output keeps the Ogg burst (and the margin) in its ring.
        ring: EgressConfig::default()
            .ring
            .max(ogg_burst_pages + amphi_egress::BURST_MARGIN),
    })?);
    let rtc_addr = args.rtc.unwrap_or(args.http);
    let recordings_dir = args
        .recordings_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("recordings"));
    let recordings = amphi_storage::open(args.recordings_url.as_deref(), &recordings_dir)
        .context("opening the recordings storage")?;
    eprintln!("amphi: recordings in {}", recordings.describe());
    let app_slot: Arc<std::sync::OnceLock<std::sync::Weak<App>>> = Default::default();
    let captions = start_captions(
        args.captions_model.as_deref(),
        args.captions_workers,
        recordings.clone(),
        app_slot.clone(),
    );
    let media = MediaPlane::start(MediaConfig {
        rtc_bind: rtc_addr,
        advertise_ip: args.advertise_ip,
        bitrate: args.bitrate,
        pass_through: args.pass_through,
        ogg_frames_per_page: (args.ogg_page_ms / 20).clamp(1, 50) as usize,
        ws_frames_per_message: (args.ws_batch_ms / 20).clamp(1, 50) as usize,
        egress: egress.clone(),
        recordings,
        bus: members.frame_sink(),
        ice_tcp_port: args.ice_tcp.then(|| args.http.port()),
        max_rtc_sessions: args.max_rtc_sessions.max(1),
        hls_dvr_segments: crate::media::hls_dvr_segments(args.hls_dvr_minutes),
        captions: captions.clone(),
    })
    .context("starting the media plane")?;
    let store = Arc::new(Mutex::new(store));
    let webhooks = crate::webhooks::Webhooks::new(
        store.clone(),
        tokio::runtime::Handle::current(),
        Duration::from_millis(args.webhook_retry_base_ms),
        args.webhook_allow_private,
    )
    .context("starting the webhooks")?;
    tokio::spawn(webhooks.clone().run());
    let app = Arc::new(App {
        store,
        token_key,
        admin_token,
        spaces: RwLock::new(Default::default()),
        metrics: Metrics::default(),
        egress,
        media,
        admission: Admission::new(
            args.max_listeners,
            args.max_listeners_per_space,
            args.join_rate,
            args.join_burst,
        ),
        ogg_burst_pages,
        ogg_page_ms,
        reaction_limiter: KeyedLimiter::new(5.0, 10.0),
        clip_limits: Default::default(),
        reminder_limiter: KeyedLimiter::new(
            1.0 / crate::admission::REMINDER_REFILL_S,
            crate::admission::REMINDERS_PER_NETWORK,
        ),
        read_limiter: KeyedLimiter::new(args.read_rate_per_ip, args.read_rate_per_ip * 3.0),
        storage_reads: tokio::sync::Semaphore::new(crate::app::STORAGE_READS),
        join_limiter: KeyedLimiter::new(args.join_rate, args.join_burst),
        per_ip: Arc::new(crate::admission::PerIp::new(args.max_conns_per_ip)),
        command_limiter: KeyedLimiter::new(args.command_rate, args.command_rate * 2.0),
        identity_key: args
            .identity_key
            .as_deref()
            .map(|k| TokenKey::derive(k.as_bytes())),
        token_ttl_s: args.token_ttl.max(1),
        net_limiter: KeyedLimiter::new(args.join_rate_per_ip, args.join_rate_per_ip * 3.0),
        hand_limiter: KeyedLimiter::new(args.hand_rate_per_space, args.hand_rate_per_space * 5.0),
        offer_limits: crate::admission::OfferLimits::with_rates(
            args.offer_rate_per_ip,
            args.offer_rate,
        ),
        started: Instant::now(),
        acme_http01: RwLock::new(Default::default()),
        cert_pending: RwLock::new(None),
        turn: turn_config(&args)?,
        members: members.clone(),
        webhooks,
        captions,
    });
    let _ = app_slot.set(Arc::downgrade(&app));
    app.load().context("loading spaces")?;
    crate::stats_api::restore(&app);
    tokio::spawn(crate::stats_api::run(app.clone()));

    let endpoint = crate::scrape::MetricsEndpoint::new(&app, args.metrics_token.clone());
    let (router, metrics) = match args.metrics_addr {
        None => (router(app.clone(), Some(endpoint)), None),
        Some(addr) => {
            let l = bind_http(addr).context("binding --metrics-addr")?;
            eprintln!("amphi: /metrics on http://{}", l.local_addr()?);
            (
                router(app.clone(), None),
                Some((l, crate::scrape::router(endpoint))),
            )
        }
    };
    members.start(app.clone(), router.clone());
    let listener = bind_http(args.http)?;
    eprintln!(
        "amphi listening on {}://{} (WebRTC on udp/{}), data in {}",
        if args.tls() { "https" } else { "http" },
        listener.local_addr()?,
        app.media.rtc_addr(),
        args.data_dir.display()
    );

    Ok((app, router, listener, metrics))
}

/// The captions service, its cues delivered to the space's events clients,
/// its speakers named from the room, and each ended space's transcript
/// written beside its replay (`transcript.vtt`, `transcript.json`).
fn start_captions(
    model: Option<&std::path::Path>,
    workers: usize,
    recordings: Arc<dyn amphi_storage::Storage>,
    app: Arc<std::sync::OnceLock<std::sync::Weak<App>>>,
) -> Arc<crate::captions::Captions> {
    use crate::captions::{Captions, Cue};
    let cell = {
        let app = app.clone();
        move |space: SpaceId| {
            let app = app.get()?.upgrade()?;
            app.spaces.read().get(&space).cloned()
        }
    };
    let sink_cell = cell.clone();
    let sink = Arc::new(move |space: SpaceId, cue: &Cue| {
        if let Some(cell) = sink_cell(space) {
            cell.caption(cue);
        }
    });
    let namer = Arc::new(move |space: SpaceId, pid: ParticipantId| {
        cell(space)
            .and_then(|c| c.inner.lock().space.member(pid).map(|m| m.name.clone()))
            .unwrap_or_default()
    });
    let finished = Arc::new(move |space: SpaceId, cues: Vec<Cue>| {
        let vtt = crate::captions::to_webvtt(&cues);
        let json = serde_json::json!({"space_id": space, "cues": cues}).to_string();
        for (name, data) in [("transcript.vtt", vtt), ("transcript.json", json)] {
            if let Err(e) = recordings.put(&crate::record::key(space, name), data.into()) {
                tracing::warn!(error = %e, %space, "could not store a transcript");
            }
        }
        if let Some(app) = app.get().and_then(|a| a.upgrade()) {
            app.captions.forget(space);
        }
    });
    Arc::new(Captions::start(model, workers, sink, namer, finished))
}

fn turn_config(args: &Config) -> anyhow::Result<Option<crate::turn::Turn>> {
    let Some(secret) = &args.turn_secret else {
        return Ok(None);
    };
    if args.turn_url.is_empty() {
        anyhow::bail!("--turn-secret needs at least one --turn-url");
    }
    if let Some(bad) = args.turn_url.iter().find(|u| !crate::turn::valid_url(u)) {
        anyhow::bail!("--turn-url {bad:?} is not a turn: or turns: URL");
    }
    Ok(Some(crate::turn::Turn {
        urls: args.turn_url.clone(),
        secret: secret.clone(),
        ttl_s: args.turn_ttl.max(60),
    }))
}

fn bind_http(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    // As deep a backlog as the kernel allows (somaxconn caps it): a join
    // storm waits in the queue instead of being refused by the kernel.
    Ok(socket.listen(65_535)?)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The node's routes; `/metrics` among them unless it has its own
/// listener (`metrics` is `None` then).
fn router(app: Arc<App>, metrics: Option<Arc<crate::scrape::MetricsEndpoint>>) -> Router {
    let mut r = Router::new();
    if let Some(m) = metrics {
        r = r.merge(crate::scrape::router(m));
    }
    r.merge(crate::api::router())
        .merge(crate::hooks_api::router())
        .merge(crate::audience_api::router())
        .merge(crate::stats_api::router())
        .merge(crate::embed::router())
        .merge(crate::clips::router())
        .merge(crate::events::router())
        .merge(crate::whip::router())
        .merge(crate::replay::router())
        .merge(crate::web::router())
        .merge(crate::listen::router())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            app.members.clone(),
            crate::cluster::route_to_owner,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::replay::replay_elsewhere,
        ))
        .layer(axum::middleware::from_fn(
            crate::body::refuse_declared_oversize,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .layer(DefaultBodyLimit::max(crate::admission::MAX_BODY))
        .with_state(app)
}

async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // A clone of the matched path is a reference count, not a copy.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let res = next.run(req).await;
    app.metrics.observe_request(
        route.as_ref().map_or("unmatched", |p| p.as_str()),
        res.status().as_u16(),
        started.elapsed(),
    );
    res
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(e) => e.into_response(),
    }
}
