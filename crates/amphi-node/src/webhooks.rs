//! Signed webhooks (Standard Webhooks): what happened in the node, told to
//! the operator's systems.
//!
//! An event is written to the store for every endpoint that wants it
//! before anything is sent ([`Webhooks::emit`] only queues), so a restart
//! loses nothing. One dispatcher task sends what is due: each attempt is
//! its own task with a timeout, at most [`PER_ENDPOINT`] in flight per
//! endpoint and [`IN_FLIGHT`] in all, so a slow or dead receiver holds
//! only its own slots and never delays another endpoint, the API or the
//! media. A failed attempt is retried with exponential backoff (base
//! `--webhook-retry-base-ms`, doubling, capped at an hour, jittered) until
//! [`GIVE_UP_AFTER`] has passed since the event. The event's id is the
//! `webhook-id` of every attempt, so a receiver drops duplicates by it
//! (at-least-once delivery).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amphi_store::{Attempt, Delivery, Endpoint, Store};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;

use crate::timefmt::{now_ms, rfc3339};

/// Attempts in flight to one endpoint.
pub const PER_ENDPOINT: usize = 4;
/// Attempts in flight in all.
pub const IN_FLIGHT: usize = 64;
/// One attempt (connect, send, the response's head) may take this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A delivery not acknowledged this long after its event is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Finished deliveries are kept in the log this long.
const KEEP_LOG: Duration = Duration::from_secs(7 * 24 * 3600);

/// The events a node tells webhooks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SpaceStarted,
    SpaceEnded,
    RecordingReady,
    /// A clip was cut (`POST /api/v1/spaces/{id}/clips`); defined for the
    /// clips feature, raised where clips are made.
    ClipCreated,
    ParticipantRemoved,
    /// A scheduled space someone asked to be reminded of started: one per
    /// reminder, for the operator's system to notify that person.
    SpaceReminder,
}

impl EventKind {
    /// Every kind, for validating an endpoint's filter.
    pub const ALL: [EventKind; 6] = [
        EventKind::SpaceStarted,
        EventKind::SpaceEnded,
        EventKind::RecordingReady,
        EventKind::ClipCreated,
        EventKind::ParticipantRemoved,
        EventKind::SpaceReminder,
    ];

    /// The type on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SpaceStarted => "space.started",
            EventKind::SpaceEnded => "space.ended",
            EventKind::RecordingReady => "recording.ready",
            EventKind::ClipCreated => "clip.created",
            EventKind::ParticipantRemoved => "participant.removed",
            EventKind::SpaceReminder => "space.reminder",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A fresh endpoint secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", B64.encode(bytes))
}

/// The `webhook-signature` value of one attempt: `v1,` and the base64
/// HMAC-SHA256, keyed by the secret's decoded bytes, of
/// `"{id}.{timestamp}.{body}"`. `None` for a malformed secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = B64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The id of the event `kind` about `subject` (a space id, or a space and
/// a participant): the same event raised twice has the same id, so it is
/// delivered once.
pub fn event_id(kind: EventKind, subject: &str) -> String {
    let d = Sha256::digest(format!("{}|{subject}", kind.as_str()));
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// Whether `ip` is an address on the public internet: not loopback,
/// private (RFC 1918, unique local), link-local (the cloud metadata
/// service at 169.254.169.254 among them), shared (100.64/10),
/// unspecified, multicast or reserved. A webhook goes only to a public
/// address unless `--webhook-allow-private`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Why a webhook URL is refused by the address policy, if it is: its host
/// is an IP literal (or `localhost`) that is not public and private
/// targets are not allowed. Names are checked when they are resolved.
pub fn refused_target(url: &str, allow_private: bool) -> Option<&'static str> {
    if allow_private {
        return None;
    }
    let uri: axum::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local_name =
        host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost");
    let private_ip = host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip));
    (local_name || private_ip).then_some(PRIVATE_REFUSED)
}

/// The error of a webhook aimed at a non-public address.
pub const PRIVATE_REFUSED: &str = "the webhook URL points at a private, loopback or link-local address; \
     the node delivers only to public addresses unless started with --webhook-allow-private";

/// The webhooks' DNS resolver: the system's, keeping only public addresses
/// (unless private ones are allowed), checked at every connection, so a
/// name re-pointed at 127.0.0.1 or 169.254.169.254 after registration
/// (DNS rebinding) reaches nothing.
#[derive(Clone)]
pub struct Resolver {
    inner: GaiResolver,
    allow_private: bool,
}

type Resolving =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Resolving {
        let resolving = self.inner.call(name);
        let allow = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving
                .await?
                .filter(|a| allow || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    PRIVATE_REFUSED,
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HookStats {
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub given_up: AtomicU64,
}

/// The node's webhooks: the queue in the store and the dispatcher.
pub struct Webhooks {
    store: Arc<Mutex<Store>>,
    rt: tokio::runtime::Handle,
    wake: tokio::sync::Notify,
    client: HttpClient,
    retry_base: Duration,
    /// `--webhook-allow-private`.
    allow_private: bool,
    /// Deliveries being attempted now, and how many per endpoint.
    busy: Mutex<(HashSet<i64>, HashMap<String, usize>)>,
    pub stats: HookStats,
}

impl Webhooks {
    /// The webhooks of a node whose store is `store`; spawn [`Webhooks::run`]
    /// on `rt` to send.
    pub fn new(
        store: Arc<Mutex<Store>>,
        rt: tokio::runtime::Handle,
        retry_base: Duration,
        allow_private: bool,
    ) -> anyhow::Result<Arc<Webhooks>> {
        let mut roots = rustls::RootCertStore::empty();
        // HTTPS endpoints are checked against the system's roots; with none
        // installed only http:// endpoints work.
        let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(Resolver {
            inner: GaiResolver::new(),
            allow_private,
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(PER_ENDPOINT)
            .build(connector);
        Ok(Arc::new(Webhooks {
            store,
            rt,
            wake: tokio::sync::Notify::new(),
            client,
            retry_base: retry_base.max(Duration::from_millis(10)),
            allow_private,
            busy: Mutex::new((HashSet::new(), HashMap::new())),
            stats: HookStats::default(),
        }))
    }

    /// Whether private targets are allowed (`--webhook-allow-private`).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Queues event `kind` about `subject` with `data` for every endpoint
    /// that wants it. Never blocks: the store write runs on the blocking
    /// pool, so it may be called from any thread (the recorder's too).
    pub fn emit(self: &Arc<Self>, kind: EventKind, subject: &str, data: Value) {
        let id = event_id(kind, subject);
        let now = now_ms();
        let body = json!({
            "type": kind.as_str(),
            "timestamp": rfc3339(now),
            "data": data,
        })
        .to_string();
        let me = self.clone();
        self.rt.spawn_blocking(move || {
            match me
                .store
                .lock()
                .enqueue_event(&id, kind.as_str(), &body, now)
            {
                Ok(n) => {
                    me.stats.queued.fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 {
                        me.wake.notify_one();
                    }
                }
                Err(e) => tracing::error!(error = %e, event = kind.as_str(), "could not queue a webhook event"),
            }
        });
    }

    /// Raises `space.reminder` for every reminder of `space` (it started).
    pub fn remind(self: &Arc<Self>, space: amphi_core::SpaceId, title: String) {
        let me = self.clone();
        self.rt.spawn_blocking(move || {
            let found = me.store.lock().reminders(&space.to_string());
            match found {
                Ok(list) => {
                    for (pid, name, contact) in list {
                        me.emit(
                            EventKind::SpaceReminder,
                            &format!("{space}|{pid}"),
                            json!({
                                "space_id": space,
                                "title": title,
                                "page": format!("/s/{space}"),
                                "participant_id": pid,
                                "name": name,
                                "contact": contact,
                            }),
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not read the reminders"),
            }
        });
    }

    /// Sends what is due, forever.
    pub async fn run(self: Arc<Self>) {
        let mut last_prune = 0i64;
        loop {
            let now = now_ms();
            let me = self.clone();
            let found =
                tokio::task::spawn_blocking(move || -> Result<_, amphi_store::StoreError> {
                    let store = me.store.lock();
                    if now - last_prune > 3_600_000 {
                        store.prune_deliveries(now - KEEP_LOG.as_millis() as i64)?;
                    }
                    let endpoints = store.endpoints()?;
                    let mut due = Vec::new();
                    for e in &endpoints {
                        due.extend(
                            store
                                .due_for(&e.id, now, PER_ENDPOINT)?
                                .into_iter()
                                .map(|d| (e.clone(), d)),
                        );
                    }
                    Ok((due, store.next_due()?))
                })
                .await;
            let next = match found {
                Ok(Ok((due, next))) => {
                    if now - last_prune > 3_600_000 {
                        last_prune = now;
                    }
                    for (endpoint, delivery) in due {
                        self.start(endpoint, delivery);
                    }
                    next
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not read the webhook queue");
                    None
                }
                Err(_) => None,
            };
            // Sleep until the next delivery is due (at most 1 s, so a
            // slot freed by a finished attempt is reused soon), or until
            // something is queued or finished.
            let wait = next.map_or(1000, |t| (t - now_ms()).clamp(20, 1000)) as u64;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }

    /// Starts one attempt unless that delivery is already in flight or its
    /// endpoint or the node has no slot free.
    fn start(self: &Arc<Self>, endpoint: Endpoint, delivery: Delivery) {
        {
            let mut busy = self.busy.lock();
            let (ids, per) = &mut *busy;
            let n = per.get(&endpoint.id).copied().unwrap_or(0);
            if ids.contains(&delivery.id) || n >= PER_ENDPOINT || ids.len() >= IN_FLIGHT {
                return;
            }
            ids.insert(delivery.id);
            per.insert(endpoint.id.clone(), n + 1);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let attempt = me.attempt(&endpoint, &delivery).await;
            let now = now_ms();
            match &attempt {
                Attempt::Delivered { .. } => me.stats.delivered.fetch_add(1, Ordering::Relaxed),
                Attempt::Retry { .. } => me.stats.failed_attempts.fetch_add(1, Ordering::Relaxed),
                Attempt::GaveUp { .. } => me.stats.given_up.fetch_add(1, Ordering::Relaxed),
            };
            let store = me.store.clone();
            let id = delivery.id;
            let saved =
                tokio::task::spawn_blocking(move || store.lock().record_attempt(id, &attempt, now))
                    .await;
            if !matches!(saved, Ok(Ok(()))) {
                tracing::error!(delivery = id, "could not record a webhook attempt");
            }
            // Only once the result is stored may the delivery be read as
            // due again.
            {
                let mut busy = me.busy.lock();
                let (ids, per) = &mut *busy;
                ids.remove(&id);
                if let Some(n) = per.get_mut(&endpoint.id) {
                    *n -= 1;
                    if *n == 0 {
                        per.remove(&endpoint.id);
                    }
                }
            }
            me.wake.notify_one();
        });
    }

    /// One attempt of `delivery`, and what to do next.
    async fn attempt(&self, endpoint: &Endpoint, delivery: &Delivery) -> Attempt {
        let ts = now_ms() / 1000;
        let refused = refused_target(&endpoint.url, self.allow_private);
        let result = match sign(&endpoint.secret, &delivery.event_id, ts, &delivery.body) {
            // An endpoint kept from before the policy, or shared by a node
            // that allows private targets: never sent to here.
            _ if refused.is_some() => Err((None, PRIVATE_REFUSED.to_owned())),
            None => Err((None, "the endpoint's secret is malformed".to_owned())),
            Some(signature) => {
                let req = axum::http::Request::post(&endpoint.url)
                    .header("content-type", "application/json")
                    .header("user-agent", "amphi-webhooks")
                    .header("webhook-id", &delivery.event_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(Full::new(Bytes::from(delivery.body.clone())));
                match req {
                    Err(e) => Err((None, format!("bad request: {e}"))),
                    Ok(req) => {
                        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(req)).await
                        {
                            Err(_) => Err((None, "timed out".to_owned())),
                            Ok(Err(e)) => Err((
                                None,
                                format!(
                                    "{e}: {:?}",
                                    std::error::Error::source(&e).map(|s| s.to_string())
                                ),
                            )),
                            Ok(Ok(res)) if res.status().is_success() => Ok(res.status().as_u16()),
                            Ok(Ok(res)) => {
                                let s = res.status().as_u16();
                                Err((Some(s), format!("HTTP {s}")))
                            }
                        }
                    }
                }
            }
        };
        match result {
            Ok(status) => Attempt::Delivered { status },
            Err((status, error)) => {
                let now = now_ms();
                let age = Duration::from_millis((now - delivery.created_at_ms).max(0) as u64);
                let wait = backoff(self.retry_base, delivery.attempts);
                if age + wait > GIVE_UP_AFTER {
                    Attempt::GaveUp { status, error }
                } else {
                    Attempt::Retry {
                        status,
                        error,
                        next_at_ms: now + wait.as_millis() as i64,
                    }
                }
            }
        }
    }
}

/// The wait after the `attempts`+1-th failure: `base · 2^attempts`, capped
/// at [`MAX_BACKOFF`], less up to 10 % at random (receivers coming back do
/// not see every retry at once).
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempts.min(20))
        .min(MAX_BACKOFF);
    let jitter = rand::random::<f64>() * 0.1;
    full.mul_f64(1.0 - jitter)
}

/// An endpoint as the API shows it.
pub fn endpoint_view(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "url": e.url,
        "secret": e.secret,
        "events": if e.events.is_empty() {
            EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>()
        } else {
            e.events.iter().map(String::as_str).collect()
        },
        "created_at": rfc3339(e.created_at_ms),
    })
}

/// A delivery as the log shows it.
pub fn delivery_view(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "type": d.event_type,
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "created_at": rfc3339(d.created_at_ms),
        "next_attempt_at": (d.state == amphi_store::DeliveryState::Pending).then(|| rfc3339(d.next_at_ms)).flatten(),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "done_at": d.done_at_ms.and_then(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("nope", "a", 1, "b"), None);
    }

    #[test]
    fn only_public_addresses_are_webhook_targets() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/",
            "https://169.254.169.254/latest/meta-data",
            "http://localhost:9/",
            "http://a.localhost/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert!(refused_target(url, false).is_some(), "{url}");
            assert!(refused_target(url, true).is_none(), "{url}");
        }
        assert!(refused_target("https://hooks.example.org/amphi", false).is_none());
        assert!(refused_target("http://8.8.8.8/", false).is_none());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(5);
        let b0 = backoff(base, 0);
        assert!(b0 <= base && b0 >= base.mul_f64(0.9));
        let b3 = backoff(base, 3);
        assert!(b3 <= base * 8 && b3 >= (base * 8).mul_f64(0.9));
        assert!(backoff(base, 40) <= MAX_BACKOFF);
    }

    #[test]
    fn event_ids_are_stable_per_subject() {
        assert_eq!(
            event_id(EventKind::SpaceEnded, "1"),
            event_id(EventKind::SpaceEnded, "1")
        );
        assert_ne!(
            event_id(EventKind::SpaceEnded, "1"),
            event_id(EventKind::SpaceStarted, "1")
        );
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
