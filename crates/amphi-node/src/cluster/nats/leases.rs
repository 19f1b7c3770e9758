//! Ownership in the cluster shell: the leases bucket read, written and
//! watched for [`Ownership`](amphi_cluster::Ownership); what follows a
//! change (become the origin, abandon); the live spaces whose owner died,
//! claimed by this node with no one asking; the spaces taken over with no
//! speaker back, ended after the grace; and the dead origin's unstored
//! frames, gathered from the other nodes and recorded.
//!
//! A renewal refused with "no responders" means no server holds the
//! leases' stream for this node: its leader died (JetStream is electing
//! another) or this node's server is cut off from it. The shell tells the
//! two apart by asking the other nodes on its roster to vouch for it
//! (plain messages on [`VOUCH_SUBJECT`], which need no JetStream leader):
//! all answered, the refusal is [`WriteResult::Vouched`]; not, it is
//! [`WriteResult::Failed`]. A node that hears no other asks instead for
//! the account's JetStream info, which only the meta leader answers, so
//! only a server on the majority side: answered, the refusal is
//! [`WriteResult::Leaderless`]. Every node also probes the stream's leader
//! (a get only that leader answers) when the ownership machine says one is
//! due, and reports the answer to it: it takes nothing over while those
//! probes fail, nor for [`lease::TTL_MS`] after one failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amphi_cluster::{
    Claim, LEASES_BUCKET, Lease, LeaseWrite, OwnershipEvent, VOUCH_SUBJECT, WriteResult, lease,
};
use amphi_core::SpaceId;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;

use super::Nats;
use crate::cluster::Host;
use crate::error::ApiError;
use crate::timefmt::{mono_ms, now_ms};

impl Nats {
    pub(super) async fn read_lease(&self, id: SpaceId) -> Result<Option<(Lease, u64)>, ApiError> {
        match self.leases_kv.entry(amphi_cluster::space_key(id)).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(Lease::decode(&e.value).map(|l| (l, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(space = %id, error = %e, "could not read a lease");
                Err(ApiError::cluster_unavailable(
                    "the cluster's state store is unavailable; try again",
                    2,
                ))
            }
        }
    }

    /// Performs a lease write the ownership machine asked for.
    pub(super) async fn write_lease(&self, w: &LeaseWrite) -> WriteResult {
        let key = amphi_cluster::space_key(w.space);
        // The wall clock, for people reading the bucket; no node reads it.
        let stamped = Lease {
            at_ms: now_ms(),
            ..w.value.clone()
        };
        let value = Bytes::from(stamped.encode());
        match w.revision {
            Some(rev) => match self.leases_kv.update(&key, value, rev).await {
                Ok(rev) => WriteResult::Written(rev),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    WriteResult::Conflict
                }
                Err(e) if no_responders(&e) => self.leaderless(w.space).await,
                Err(e) => {
                    tracing::warn!(space = %w.space, error = %e, "could not write a lease");
                    WriteResult::Failed
                }
            },
            None => match self.leases_kv.create(&key, value).await {
                Ok(rev) => WriteResult::Written(rev),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => WriteResult::Conflict,
                Err(e) => {
                    tracing::warn!(space = %w.space, error = %e, "could not create a lease");
                    WriteResult::Failed
                }
            },
        }
    }

    /// A lease write found no server holding the leases' stream. If every
    /// other node on this node's roster vouches for it, none of them will
    /// take its leases over for a while ([`amphi_cluster::Ownership::vouch`]);
    /// with nobody on the roster, if this node's server reaches the
    /// JetStream meta leader (the account info is answered), the stream
    /// has no leader and nobody can write a lease. If not, this node may
    /// be the one cut off.
    async fn leaderless(&self, space: SpaceId) -> WriteResult {
        let refused = mono_ms();
        if !self.ownership.lock().roster(refused).is_empty() {
            return if self.vouched(refused).await {
                self.stats.vouched.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(space = %space, "a lease write was refused: the leases' stream has no leader here, and every other node vouched for this one; the lease stays valid");
                WriteResult::Vouched
            } else {
                tracing::debug!(space = %space, "a lease write was refused and not every other node vouched for this one: it may be cut off");
                WriteResult::Failed
            };
        }
        let proof = tokio::time::timeout(
            Duration::from_millis(lease::PROBE_TIMEOUT_MS as u64),
            self.client.request("$JS.API.INFO", Bytes::new()),
        )
        .await;
        if matches!(proof, Ok(Ok(m)) if answered(&m.payload, "limits")) {
            self.stats.leaderless.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(space = %space, "a lease write was refused: the leases' stream has no leader (JetStream is electing one); the lease stays valid");
            WriteResult::Leaderless
        } else {
            tracing::debug!(space = %space, "a lease write was refused and JetStream's meta leader did not answer: this node may be cut off");
            WriteResult::Failed
        }
    }

    /// Whether every node on the roster vouched for this node in an ask
    /// sent at or after `since` (this node's clock): one ask at a time,
    /// whose answer serves every refusal that came before it was sent.
    async fn vouched(&self, since: i64) -> bool {
        let mut latest = self.vouching.lock().await;
        if let Some((sent, ok)) = *latest
            && sent >= since
        {
            return ok;
        }
        let sent = mono_ms();
        let ok = self.ask_to_vouch(sent).await;
        *latest = Some((sent, ok));
        ok
    }

    /// Asks every node to vouch for this one, and waits up to
    /// [`lease::PROBE_TIMEOUT_MS`] for the whole roster to answer.
    async fn ask_to_vouch(&self, sent: i64) -> bool {
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return false;
        };
        if self
            .client
            .publish_with_reply(VOUCH_SUBJECT, inbox, Bytes::from(self.node.clone()))
            .await
            .is_err()
        {
            return false;
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(lease::PROBE_TIMEOUT_MS as u64);
        let mut who: Vec<String> = Vec::new();
        let roster = self.ownership.lock().roster(sent);
        while !roster.iter().all(|n| who.contains(n)) {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(m)) => {
                    if let Ok(node) = std::str::from_utf8(&m.payload)
                        && node.len() <= 256
                        && !who.iter().any(|w| w == node)
                    {
                        who.push(node.to_owned());
                    }
                }
                _ => break,
            }
        }
        let _ = answers.unsubscribe().await;
        let now = mono_ms();
        let mut ownership = self.ownership.lock();
        for n in &who {
            ownership.heard(n, now);
        }
        ownership.vouched_by(who.iter().map(String::as_str), now)
    }

    /// Answers other nodes' asks to vouch for them: first restarts the age
    /// of every lease of the asker this node measures, then answers.
    pub(super) async fn serve_vouch(self: Arc<Self>) {
        loop {
            let mut sub = match self.client.subscribe(VOUCH_SUBJECT).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "could not subscribe to asks to vouch");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(m) = sub.next().await {
                let (Some(reply), Ok(asker)) = (m.reply, std::str::from_utf8(&m.payload)) else {
                    continue;
                };
                if asker == self.node || asker.len() > 256 {
                    continue;
                }
                self.ownership.lock().vouch(asker, mono_ms());
                let _ = self
                    .client
                    .publish(reply, Bytes::from(self.node.clone()))
                    .await;
            }
        }
    }

    /// Probes the leader of the leases' stream when the ownership machine
    /// says one is due (it is asked every [`lease::PROBE_MS`]): a get of
    /// a key nobody writes, which only that leader answers ("no message
    /// found", a small answer). Each probe runs on its own, so a slow one
    /// never delays the next.
    pub(super) async fn probe_leases(self: Arc<Self>) {
        let subject = format!("$JS.API.STREAM.MSG.GET.KV_{LEASES_BUCKET}");
        let request = Bytes::from(format!(
            "{{\"last_by_subj\":\"$KV.{LEASES_BUCKET}.{PROBE_KEY}\"}}"
        ));
        let mut iv = tokio::time::interval(Duration::from_millis(lease::PROBE_MS as u64));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            let sent = mono_ms();
            if !self.ownership.lock().probe_due(sent) {
                continue;
            }
            let (me, subject, request) = (self.clone(), subject.clone(), request.clone());
            tokio::spawn(async move {
                let answer = tokio::time::timeout(
                    Duration::from_millis(lease::PROBE_TIMEOUT_MS as u64),
                    me.client.request(subject, request),
                )
                .await;
                let ok = matches!(answer, Ok(Ok(m)) if leader_answered(&m.payload));
                if !ok {
                    me.stats.probes_failed.fetch_add(1, Ordering::Relaxed);
                }
                me.ownership.lock().probed(sent, ok, mono_ms());
            });
        }
    }

    /// Makes sure someone owns `id`, taking it over if its owner is gone.
    pub(super) async fn ensure_owner(&self, id: SpaceId) -> Result<Claim, ApiError> {
        for _ in 0..3 {
            let current = self.read_lease(id).await?;
            let claim =
                self.ownership
                    .lock()
                    .claim(id, current.as_ref().map(|(l, r)| (l, *r)), mono_ms());
            let claim = match claim {
                Claim::Write(w) => {
                    let result = self.write_lease(&w).await;
                    self.ownership
                        .lock()
                        .written(w.id, result, mono_ms())
                        .unwrap_or(Claim::Retry)
                }
                other => other,
            };
            self.act_on_ownership();
            if claim != Claim::Retry {
                return Ok(claim);
            }
        }
        Err(ApiError::cluster_unavailable(
            "the space's ownership is changing; try again",
            1,
        ))
    }

    /// Carries out what the ownership machine decided.
    pub(super) fn act_on_ownership(&self) {
        loop {
            let event = self.ownership.lock().poll_event();
            let Some(event) = event else { return };
            let Some(host) = self.host() else { continue };
            match event {
                OwnershipEvent::Acquired {
                    space,
                    first_seq,
                    from,
                } => {
                    if let Some(from) = from {
                        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(space = %space, %from, "took over a space whose owner stopped renewing");
                        if host.is_live(space) {
                            self.orphans.lock().took_over(space, Instant::now());
                            tokio::spawn(backfill(
                                self.client.clone(),
                                host.clone(),
                                space,
                                first_seq,
                            ));
                        }
                    }
                    // An edge becoming the origin keeps its outputs: the
                    // bus feed stops, the mixer feeds them from now on.
                    if self.edges.lock().became_origin(space)
                        && let Some(feed) = self.feeds.lock().remove(&space)
                    {
                        feed.task.abort();
                    }
                    host.become_origin(space, first_seq);
                }
                OwnershipEvent::Fenced { space } => {
                    self.orphans.lock().forget(space);
                    self.stats.fences.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(space = %space, "fenced: no lease renewal acknowledged for {} ms; stopped acting as the space's origin", amphi_cluster::lease::FENCE_MS);
                    host.fence(space);
                }
                OwnershipEvent::Lost { space } => {
                    self.orphans.lock().forget(space);
                    self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(space = %space, "lost the lease of a space to another node; no longer its origin");
                    host.abandon(space);
                }
            }
        }
    }

    /// Renews this node's leases (`retry`: only those whose last renewal
    /// was not acknowledged); a lease another node took is given up.
    pub(super) async fn renew(&self, retry: bool) {
        let Some(host) = self.host() else { return };
        let last_seq = |id| host.last_seq(id).unwrap_or(0);
        let writes = if retry {
            self.ownership.lock().retries(mono_ms(), last_seq)
        } else {
            self.ownership.lock().renewals(mono_ms(), last_seq)
        };
        for w in writes {
            // A write the stream's dying leader swallowed is not waited
            // for: the renewal is retried at once.
            let result = tokio::time::timeout(RENEW_TIMEOUT, self.write_lease(&w))
                .await
                .unwrap_or(WriteResult::Failed);
            if result == WriteResult::Conflict {
                // The key moved: maybe by one of this node's own earlier
                // renewals that landed unanswered. The machine looks.
                if let Ok(current) = self.read_lease(w.space).await {
                    self.ownership.lock().seen(
                        w.space,
                        current.as_ref().map(|(l, r)| (l, *r)),
                        mono_ms(),
                    );
                }
            }
            self.ownership.lock().written(w.id, result, mono_ms());
        }
        self.act_on_ownership();
    }

    /// Claims the live spaces whose owner stopped renewing, so a dead
    /// origin's spaces move with no one asking: every node tries, the
    /// compare-and-set lets one win.
    pub(super) async fn take_over_orphans(&self) {
        let Some(host) = self.host() else { return };
        let expired = self.ownership.lock().expired(mono_ms());
        for id in expired {
            if !host.is_live(id) {
                continue;
            }
            match self.ensure_owner(id).await {
                Ok(Claim::Mine) => tracing::info!(space = %id, "took over a live space"),
                Ok(_) => {}
                Err(e) => tracing::debug!(space = %id, error = ?e, "could not take a space over"),
            }
        }
    }

    /// Ends the spaces taken over here whose speakers did not come back
    /// within the grace.
    pub(super) async fn end_orphans(&self) {
        let Some(host) = self.host() else { return };
        let due = self.orphans.lock().due(Instant::now(), |id| {
            !host.is_live(id) || host.speakers_back(id)
        });
        for id in due {
            self.stats.orphans_ended.fetch_add(1, Ordering::Relaxed);
            host.end_orphan(id).await;
        }
    }

    /// Follows the leases bucket: every revision is seen here as it lands,
    /// so a lease's age is measured on this node's clock from the moment
    /// its owner last renewed it.
    pub(super) async fn watch_leases(self: Arc<Self>) {
        let kv = self.leases_kv.clone();
        self.follow(&kv, LEASES_BUCKET, |c, e| {
            let Ok(id) = e.key.parse::<SpaceId>() else {
                return;
            };
            if let Some(l) = Lease::decode(&e.value) {
                c.ownership
                    .lock()
                    .seen(id, Some((&l, e.revision)), mono_ms());
            }
        })
        .await;
    }

    /// Answers a new origin's backfill requests with the recent frames
    /// this node holds (as an edge, or as a past origin).
    pub(super) async fn serve_backfill(self: Arc<Self>) {
        self.serve_frame_requests("amphi.space.*.backfill", |host, id, from| {
            let frames = host.recent_frames(id, from);
            (!frames.is_empty()).then(|| amphi_cluster::encode_frames(&frames))
        })
        .await;
    }
}

/// The longest a renewal is waited for before it counts as failed and is
/// retried: well inside [`lease::FENCE_MS`].
const RENEW_TIMEOUT: Duration = Duration::from_millis(800);

/// Whether a key-value write found no server holding the stream ("no
/// responders").
fn no_responders(e: &kv::UpdateError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::context::PublishError>())
        .is_some_and(|p| {
            p.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound
        })
}

/// The key the probes ask for: never written.
const PROBE_KEY: &str = "probe";

/// Whether a probe's answer came from the stream's leader: the message, or
/// "no message found" (JetStream error 10037).
fn leader_answered(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .is_ok_and(|v| v.get("message").is_some() || v["error"]["err_code"].as_u64() == Some(10037))
}

/// Whether a JetStream API answer is a success carrying `field`.
fn answered(payload: &[u8], field: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .is_ok_and(|v| v.get("error").is_none() && v.get(field).is_some())
}

/// How long a new origin collects the other nodes' recent frames.
const BACKFILL_WAIT: Duration = Duration::from_millis(700);

/// After taking `space` over from a dead origin (this node's frames start
/// at `first_seq` or later): records the frames the dead origin had not
/// stored, from this node's own history and every other node's.
pub(super) async fn backfill(
    client: async_nats::Client,
    host: Arc<dyn Host>,
    space: SpaceId,
    first_seq: u64,
) {
    let h = host.clone();
    let Ok(stored) = tokio::task::spawn_blocking(move || h.recorded_upto(space)).await else {
        return;
    };
    let from = stored.map_or(0, |s| s.saturating_add(1));
    let mut answers = vec![host.recent_frames(space, from)];
    let inbox = client.new_inbox();
    if let Ok(mut sub) = client.subscribe(inbox.clone()).await {
        let request = Bytes::copy_from_slice(&amphi_cluster::encode_history_request(from));
        if client
            .publish_with_reply(
                amphi_cluster::backfill::backfill_subject(space),
                inbox,
                request,
            )
            .await
            .is_ok()
        {
            let deadline = tokio::time::Instant::now() + BACKFILL_WAIT;
            while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
                if let Ok(frames) = amphi_cluster::decode_frames(&msg.payload) {
                    answers.push(frames);
                }
            }
        }
    }
    let frames = amphi_cluster::backfill::merge(answers, from, first_seq);
    if frames.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || host.backfill(space, frames)).await;
}
