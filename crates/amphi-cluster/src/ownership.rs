//! One node's side of the ownership leases, as a state machine: which
//! spaces it owns, the compare-and-set writes that win, renew and release
//! them, and what follows (start mixing with the sequence continued, stop
//! acting as the owner). The shell reads the lease key, hands it to
//! [`Ownership::claim`], performs the [`LeaseWrite`] it gets, reports the
//! result with [`Ownership::written`], and drains [`Ownership::poll_event`].
//! Time is an input (`now_ms`: this node's own monotonic clock, in ms from
//! any origin; no two nodes' clocks are ever compared).
//!
//! Safety comes from two rules together: a takeover is a compare-and-set at
//! the revision the taker read, so two writers never both win; and an owner
//! counts its lease valid only for [`FENCE_MS`] (< [`TTL_MS`]) after it *sent* the write it
//! last saw succeed, while every other node counts [`TTL_MS`] from when it
//! first *saw* that revision, necessarily later ([`Sightings`]), so the old
//! owner stops acting as such before anyone may take the space over
//! ([`Ownership::owns`]).
//!
//! An owner cut off from NATS does not wait to learn that it lost a space:
//! [`Ownership::fence`], called every [`FENCE_CHECK_MS`], drops every lease
//! whose last acknowledged renewal was *sent* [`FENCE_MS`] ago or more, and
//! the shell stops mixing, recording and ingesting those spaces
//! ([`OwnershipEvent::Fenced`]). That is at least [`FENCE_MARGIN_MS`]
//! before any other node may take them over, so two origins never overlap.
//!
//! A leases stream with no leader is not a cut-off owner. When the NATS
//! server leading the stream dies, JetStream takes seconds to elect
//! another; no lease can be written anywhere meanwhile. The shell reports
//! a renewal refused that way, by a server that still reaches the
//! JetStream meta leader (so is on the majority side), as
//! [`WriteResult::Leaderless`]; once such refusals have lasted
//! [`LEADERLESS_SPAN_MS`] the owner counts its lease valid for
//! [`FENCE_MS`] from the last refused renewal's sending, and retries every
//! [`FENCE_CHECK_MS`] so it renews first when a leader is back. Every node
//! probes the stream's leader every [`PROBE_MS`] ([`Ownership::probed`]);
//! a failed probe restarts every lease age it measures, and it takes a
//! lease over only while its probes succeed, so no one can take a lease
//! over sooner than [`LEADERLESS_MARGIN_MS`] after its owner, kept valid
//! by refusals, fenced itself.
//!
//! When the server that died also led the JetStream meta group, nobody
//! answers the meta leader's request either until the meta group has
//! elected another (seconds), so that proof is not to be had. The owner
//! then asks the other nodes instead, over the bus's plain messaging
//! (which works throughout): every node on its roster (heard from within
//! [`ROSTER_MS`]) restarts the age of each lease of the asker it measures,
//! then answers ([`Ownership::vouch`]). If all of them answered before the
//! lease lapsed, none can take a lease of the owner over within
//! [`TTL_MS`] of its answer, which came after the renewal was sent: the
//! renewal is [`WriteResult::Vouched`] and the lease valid from its
//! sending. A node cut off from the others hears no answer and fences as
//! before; one that hears nobody at all is vouched for by nobody.
//!
//! [`FENCE_CHECK_MS`]: crate::lease::FENCE_CHECK_MS
//! [`LEADERLESS_SPAN_MS`]: crate::lease::LEADERLESS_SPAN_MS
//! [`LEADERLESS_MARGIN_MS`]: crate::lease::LEADERLESS_MARGIN_MS
//! [`PROBE_MS`]: crate::lease::PROBE_MS
//! [`FENCE_MARGIN_MS`]: crate::lease::FENCE_MARGIN_MS
//! [`ROSTER_MS`]: crate::lease::ROSTER_MS

use std::collections::{HashMap, HashSet, VecDeque};

use amphi_core::SpaceId;

use crate::lease::{
    FENCE_MS, LEADERLESS_SPAN_MS, Lease, LeaseDecision, PROBE_GAP_MS, PROBE_MS, PROBE_SLOW_GAP_MS,
    PROBE_SLOW_MS, PROBE_STALE_MS, ROSTER_MAX, ROSTER_MS, Sightings, TTL_MS,
};

/// A compare-and-set on a space's lease key, to perform and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    /// Identifies the write in [`Ownership::written`].
    pub id: u64,
    pub space: SpaceId,
    pub value: Lease,
    /// Update at this revision; `None`: create the key (it must not exist).
    pub revision: Option<u64>,
}

/// How a [`LeaseWrite`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Written; the key's new revision.
    Written(u64),
    /// The revision moved (or the key exists): another writer won.
    Conflict,
    /// No answer (NATS unreachable, timeout): the write may or may not
    /// have happened.
    Failed,
    /// Refused because the leases' stream has no leader, and this node's
    /// NATS server then answered a request only a server on the majority
    /// side can answer (the JetStream meta leader's): nobody can write a
    /// lease now. The write did not happen.
    Leaderless,
    /// Refused because the leases' stream has no leader while the meta
    /// leader did not answer either (it may be the server that died, and
    /// the meta group is electing another), but every node on this node's
    /// roster ([`Ownership::roster`]) answered an ask sent after the
    /// write, having first restarted the age of every lease of this node
    /// it measures ([`Ownership::vouch`]): none of them can take a lease
    /// of this node over within [`TTL_MS`] of its answer. The write did
    /// not happen.
    Vouched,
}

/// What a node should do with a call about a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the space and its lease is valid: act here.
    Mine,
    /// Another node owns it: forward there.
    Owner(Lease),
    /// The space ended; nothing to own.
    Ended(Lease),
    /// Perform this write, then report it with [`Ownership::written`].
    Write(LeaseWrite),
    /// Read the lease again (a write lost a race or went unanswered).
    Retry,
}

/// What changed in this node's ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipEvent {
    /// This node owns `space` now. A live space starts being mixed here,
    /// its frames numbered from `first_seq` (past the previous origin's).
    Acquired {
        space: SpaceId,
        first_seq: u64,
        /// The node it was taken over from (`None`: acquired fresh, or
        /// this node's own lease from before a restart).
        from: Option<String>,
    },
    /// Another node took `space` over: stop acting as its owner.
    Lost { space: SpaceId },
    /// This node can no longer prove its lease of `space` (no renewal
    /// acknowledged for [`FENCE_MS`]): stop acting as its owner now,
    /// before anyone may take it over; its local listeners should go
    /// elsewhere.
    Fenced { space: SpaceId },
}

#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    /// When the write of the lease value last written successfully was
    /// sent (this node's clock).
    at_ms: i64,
    /// A renewal is in flight.
    renewing: bool,
    /// The last renewal was not acknowledged: retry at every fencing
    /// check, not only every [`crate::lease::RENEW_MS`].
    retry: bool,
    /// When the first of an unbroken run of renewals refused for want of
    /// a stream leader was sent.
    leaderless_since: Option<i64>,
}

#[derive(Debug, Clone)]
enum Attempt {
    /// Create, take over or resume: becomes [`Held`] if written.
    Acquire {
        space: SpaceId,
        at_ms: i64,
        /// The lease taken over and how long its key had not changed.
        previous: Option<(Lease, i64)>,
    },
    Renew {
        space: SpaceId,
        at_ms: i64,
    },
    Release {
        space: SpaceId,
        ended: Lease,
    },
}

/// One node's leases.
#[derive(Debug)]
pub struct Ownership {
    me: String,
    http: String,
    held: HashMap<SpaceId, Held>,
    writes: HashMap<u64, Attempt>,
    next_write: u64,
    events: VecDeque<OwnershipEvent>,
    sightings: Sightings,
    /// Spaces this node fenced itself out of and has not seen a newer
    /// owner of (nor won again).
    fenced: HashSet<SpaceId>,
    /// The bus probes (see [`Ownership::probed`]).
    probes: Probes,
    /// The other nodes heard from, and when last (this node's clock).
    roster: HashMap<String, i64>,
}

/// What this node's probes of the leases' stream leader showed.
#[derive(Debug, Default, Clone, Copy)]
struct Probes {
    /// When the latest probe was started ([`Ownership::probe_due`]).
    started: Option<i64>,
    /// When the latest probe reported was sent.
    last_sent: Option<i64>,
    /// When the latest successful probe was answered.
    last_ok: Option<i64>,
    /// When a probe last failed (or came too late after the one before).
    last_trouble: Option<i64>,
}

impl Probes {
    /// Whether probes go every [`PROBE_MS`] at `at_ms` (one failed less
    /// than [`TTL_MS`] ago) rather than every [`PROBE_SLOW_MS`].
    fn fast(&self, at_ms: i64) -> bool {
        self.last_trouble
            .is_some_and(|t| at_ms.saturating_sub(t) < TTL_MS)
    }
}

impl Ownership {
    /// The leases of node `me`, whose HTTP API is at `http`.
    pub fn new(me: impl Into<String>, http: impl Into<String>) -> Self {
        Ownership {
            me: me.into(),
            http: http.into(),
            held: HashMap::new(),
            writes: HashMap::new(),
            next_write: 1,
            events: VecDeque::new(),
            sightings: Sightings::default(),
            fenced: HashSet::new(),
            probes: Probes::default(),
            roster: HashMap::new(),
        }
    }

    /// Node `node` was heard from at `now_ms` (its periodic report, or its
    /// answer to an ask): it is on the roster for [`ROSTER_MS`].
    pub fn heard(&mut self, node: &str, now_ms: i64) {
        if node == self.me {
            return;
        }
        if let Some(at) = self.roster.get_mut(node) {
            *at = (*at).max(now_ms);
        } else if self.roster.len() < ROSTER_MAX {
            self.roster.insert(node.to_owned(), now_ms);
        }
        self.roster
            .retain(|_, at| now_ms.saturating_sub(*at) < ROSTER_MS);
    }

    /// How long before `now_ms` node `node` was last heard from (`None`:
    /// never, or not for [`ROSTER_MS`]).
    pub fn unheard_for(&self, node: &str, now_ms: i64) -> Option<i64> {
        self.roster
            .get(node)
            .map(|at| now_ms.saturating_sub(*at))
            .filter(|d| *d < ROSTER_MS)
    }

    /// The nodes heard from within [`ROSTER_MS`] of `now_ms`: those that
    /// must all answer an ask for a [`WriteResult::Vouched`].
    pub fn roster(&self, now_ms: i64) -> Vec<String> {
        let mut out: Vec<String> = self
            .roster
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) < ROSTER_MS)
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    /// Whether `answered` (the nodes that answered an ask) covers the
    /// whole roster at `now_ms`. An empty roster vouches for nothing: a
    /// node that hears no other cannot tell a dead meta leader from being
    /// cut off.
    pub fn vouched_by<'a>(&self, answered: impl IntoIterator<Item = &'a str>, now_ms: i64) -> bool {
        let roster = self.roster(now_ms);
        let answered: HashSet<&str> = answered.into_iter().collect();
        !roster.is_empty() && roster.iter().all(|n| answered.contains(n.as_str()))
    }

    /// Node `asker`, whose lease renewals are refused for want of a
    /// stream leader, asks this node to vouch for it at `now_ms`: every
    /// age of a lease naming `asker` starts again from now, so this node
    /// takes none of them over within [`TTL_MS`]. Answer the ask only
    /// after this.
    pub fn vouch(&mut self, asker: &str, now_ms: i64) {
        if asker != self.me {
            self.sightings.restart_of(asker, now_ms);
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.me
    }

    /// Whether this node owns `space` with a lease valid at `now_ms`
    /// (renewed and acknowledged less than [`FENCE_MS`] ago).
    pub fn owns(&self, space: SpaceId, now_ms: i64) -> bool {
        self.held
            .get(&space)
            .is_some_and(|h| now_ms.saturating_sub(h.at_ms) < FENCE_MS)
    }

    /// Applies the fencing rule at `now_ms`: every held lease whose last
    /// acknowledged write was sent [`FENCE_MS`] ago or more is dropped,
    /// with an [`OwnershipEvent::Fenced`] to act on. Returns how many.
    pub fn fence(&mut self, now_ms: i64) -> usize {
        let due: Vec<SpaceId> = self
            .held
            .iter()
            .filter(|(_, h)| now_ms.saturating_sub(h.at_ms) >= FENCE_MS)
            .map(|(s, _)| *s)
            .collect();
        for space in &due {
            self.held.remove(space);
            self.fenced.insert(*space);
            self.events
                .push_back(OwnershipEvent::Fenced { space: *space });
        }
        due.len()
    }

    /// Spaces this node fenced itself out of now.
    pub fn fenced(&self) -> usize {
        self.fenced.len()
    }

    /// Whether this node fenced itself out of `space` and has not yet
    /// seen who owns it now (nor won it again): its copy may be stale and
    /// its listeners belong elsewhere.
    pub fn is_fenced(&self, space: SpaceId) -> bool {
        self.fenced.contains(&space)
    }

    /// Whether this node holds `space`'s lease, valid or not (it has not
    /// learnt that another node took it).
    pub fn holds(&self, space: SpaceId) -> bool {
        self.held.contains_key(&space)
    }

    /// Spaces held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The lease value this node writes; `at_ms` (the wall clock, for
    /// people) is stamped by the shell.
    fn lease(&self, seq: u64, ended: bool) -> Lease {
        Lease {
            node: self.me.clone(),
            http: self.http.clone(),
            seq,
            at_ms: 0,
            ended,
        }
    }

    /// The key of `space` was seen at `revision` holding `lease` (by a
    /// watch or a read) at `now_ms`; `None`: deleted.
    pub fn seen(&mut self, space: SpaceId, current: Option<(&Lease, u64)>, now_ms: i64) {
        match current {
            Some((l, revision)) => {
                self.sightings.see(space, revision, l, now_ms);
                if l.node != self.me || l.ended {
                    self.fenced.remove(&space);
                }
            }
            None => self.sightings.forget(space),
        }
    }

    /// Whether the shell should send a probe of the leases' stream leader
    /// at `now_ms` (it asks every [`PROBE_MS`]): every [`PROBE_SLOW_MS`],
    /// or every [`PROBE_MS`] for [`TTL_MS`] after a failure. `true` counts
    /// the probe as started.
    pub fn probe_due(&mut self, now_ms: i64) -> bool {
        let period = if self.probes.fast(now_ms) {
            PROBE_MS
        } else {
            PROBE_SLOW_MS
        };
        let due = self
            .probes
            .started
            .is_none_or(|s| now_ms.saturating_sub(s) >= period);
        if due {
            self.probes.started = Some(now_ms);
        }
        due
    }

    /// A probe of the leases' stream leader sent at `sent_ms` was answered
    /// (`ok`: by the leader) or failed (no leader, no answer) at `now_ms`.
    /// A failure, or a probe sent longer after the one before than the
    /// probing period allows ([`PROBE_GAP_MS`], [`PROBE_SLOW_GAP_MS`]),
    /// restarts every lease age this node measures: a renewal may have
    /// been refused for the same reason.
    pub fn probed(&mut self, sent_ms: i64, ok: bool, now_ms: i64) {
        let limit = if self.probes.fast(sent_ms) {
            PROBE_GAP_MS
        } else {
            PROBE_SLOW_GAP_MS
        };
        let gap = self
            .probes
            .last_sent
            .is_some_and(|last| sent_ms.saturating_sub(last) > limit);
        self.probes.last_sent = Some(self.probes.last_sent.map_or(sent_ms, |l| l.max(sent_ms)));
        if !ok || gap {
            self.sightings.restart(now_ms);
            self.probes.last_trouble = Some(now_ms);
        }
        if ok {
            self.probes.last_ok = Some(now_ms);
        }
    }

    /// Whether this node may take a lease over at `now_ms`: a probe of
    /// the leases' stream leader succeeded within [`PROBE_STALE_MS`].
    pub fn bus_healthy(&self, now_ms: i64) -> bool {
        self.probes
            .last_ok
            .is_some_and(|ok| now_ms.saturating_sub(ok) < PROBE_STALE_MS)
    }

    /// Spaces whose owner stopped renewing: their key has not changed for
    /// [`TTL_MS`] as this node saw it, and its bus probes succeed. The shell claims the live ones, so a
    /// dead origin's spaces move with no one asking. A lease naming this
    /// node that it does not hold (it fenced itself, and nobody else took
    /// the space while it was cut off) counts too: it wins it back.
    pub fn expired(&self, now_ms: i64) -> Vec<SpaceId> {
        if !self.bus_healthy(now_ms) {
            return Vec::new();
        }
        let mut out: Vec<SpaceId> = self.sightings.expired(&self.me, now_ms).collect();
        out.extend(
            self.sightings
                .expired_of(&self.me, now_ms)
                .filter(|id| !self.held.contains_key(id)),
        );
        out
    }

    fn write(
        &mut self,
        attempt: Attempt,
        space: SpaceId,
        value: Lease,
        revision: Option<u64>,
    ) -> LeaseWrite {
        let id = self.next_write;
        self.next_write += 1;
        self.writes.insert(id, attempt);
        LeaseWrite {
            id,
            space,
            value,
            revision,
        }
    }

    /// Decides about `space` given its lease key as just read (`None`: no
    /// key) at `revision`.
    pub fn claim(&mut self, space: SpaceId, current: Option<(&Lease, u64)>, now_ms: i64) -> Claim {
        let current = current.map(|(l, revision)| {
            let age = self.sightings.see(space, revision, l, now_ms);
            (l, revision, age)
        });
        match Lease::decide(current, &self.me) {
            LeaseDecision::Ended(l) => {
                self.drop_held(space);
                self.fenced.remove(&space);
                Claim::Ended(l)
            }
            LeaseDecision::Owner(l) => {
                // We thought it ours: it was taken while we could not renew.
                self.drop_held(space);
                self.fenced.remove(&space);
                Claim::Owner(l)
            }
            LeaseDecision::Mine { revision } => {
                let held = self.held.get(&space).copied();
                match held {
                    Some(h) if h.revision == revision && self.owns(space, now_ms) => Claim::Mine,
                    _ => {
                        // Ours from before a restart, or expired while we
                        // could not renew: win it again before acting.
                        let previous = current.map(|(l, _, age)| (l.clone(), age));
                        let seq = previous.as_ref().map_or(0, |(l, _)| l.seq);
                        let attempt = Attempt::Acquire {
                            space,
                            at_ms: now_ms,
                            previous: if held.is_some() { None } else { previous },
                        };
                        Claim::Write(self.write(
                            attempt,
                            space,
                            self.lease(seq, false),
                            Some(revision),
                        ))
                    }
                }
            }
            LeaseDecision::Acquire => {
                let attempt = Attempt::Acquire {
                    space,
                    at_ms: now_ms,
                    previous: None,
                };
                Claim::Write(self.write(attempt, space, self.lease(0, false), None))
            }
            LeaseDecision::TakeOver { .. } if !self.bus_healthy(now_ms) => Claim::Retry,
            LeaseDecision::TakeOver {
                revision,
                previous,
                age_ms,
            } => {
                let seq = previous.seq;
                let attempt = Attempt::Acquire {
                    space,
                    at_ms: now_ms,
                    previous: Some((previous, age_ms)),
                };
                Claim::Write(self.write(attempt, space, self.lease(seq, false), Some(revision)))
            }
        }
    }

    fn drop_held(&mut self, space: SpaceId) {
        if self.held.remove(&space).is_some() {
            self.events.push_back(OwnershipEvent::Lost { space });
        }
    }

    /// The result of a write this machine asked for. For a write from
    /// [`Ownership::claim`] the answer is [`Claim::Mine`] or
    /// [`Claim::Retry`]; for renewals and releases it is `None`.
    pub fn written(&mut self, id: u64, result: WriteResult, now_ms: i64) -> Option<Claim> {
        let attempt = self.writes.remove(&id)?;
        if let WriteResult::Written(revision) = result {
            let space = match &attempt {
                Attempt::Acquire { space, .. } | Attempt::Renew { space, .. } => Some(*space),
                Attempt::Release { space, ended } => {
                    self.sightings.see(*space, revision, ended, now_ms);
                    None
                }
            };
            if let Some(space) = space {
                let mine = self.lease(0, false);
                self.sightings.see(space, revision, &mine, now_ms);
            }
        }
        match attempt {
            Attempt::Acquire {
                space,
                at_ms,
                previous,
            } => {
                let WriteResult::Written(revision) = result else {
                    return Some(Claim::Retry);
                };
                let fresh = !self.held.contains_key(&space);
                self.fenced.remove(&space);
                self.held.insert(
                    space,
                    Held {
                        revision,
                        at_ms,
                        renewing: false,
                        retry: false,
                        leaderless_since: None,
                    },
                );
                if fresh {
                    // The outage as this node measured it: the key's age
                    // when read, plus the time the write took.
                    let first_seq = previous.as_ref().map_or(0, |(p, age)| {
                        p.next_seq(age.saturating_add(now_ms.saturating_sub(at_ms)))
                    });
                    let from = previous
                        .filter(|(p, _)| p.node != self.me)
                        .map(|(p, _)| p.node);
                    self.events.push_back(OwnershipEvent::Acquired {
                        space,
                        first_seq,
                        from,
                    });
                }
                Some(Claim::Mine)
            }
            Attempt::Renew { space, at_ms } => {
                // The key as last seen names this node at a newer revision
                // than the one it renews at: one of its own earlier writes
                // landed unanswered (a timeout, a dying stream leader).
                let landed = self
                    .sightings
                    .get(space)
                    .filter(|s| s.lease.node == self.me && !s.lease.ended)
                    .map(|s| s.revision);
                let h = self.held.get_mut(&space)?;
                h.renewing = false;
                match result {
                    WriteResult::Written(revision) => {
                        h.revision = revision;
                        h.at_ms = h.at_ms.max(at_ms);
                        h.retry = false;
                        h.leaderless_since = None;
                    }
                    // Adopted, valid still from the last acknowledged
                    // write (the landed one was sent later): renewed at
                    // once at the new revision.
                    WriteResult::Conflict if landed.is_some_and(|r| r > h.revision) => {
                        h.revision = landed.unwrap_or(h.revision);
                        h.retry = true;
                        h.leaderless_since = None;
                    }
                    WriteResult::Conflict => self.drop_held(space),
                    // Try again at once; the lease expires on its own if
                    // NATS stays away.
                    WriteResult::Failed => {
                        h.retry = true;
                        h.leaderless_since = None;
                    }
                    // Nobody can write a lease: once that has lasted long
                    // enough for every other node to have seen it too,
                    // the lease stays valid from this renewal's sending.
                    WriteResult::Leaderless => {
                        h.retry = true;
                        let since = *h.leaderless_since.get_or_insert(at_ms);
                        if at_ms.saturating_sub(since) >= LEADERLESS_SPAN_MS {
                            h.at_ms = h.at_ms.max(at_ms);
                        }
                    }
                    // Every node that could take the lease over restarted
                    // its age after this renewal was sent, answering
                    // before the lease lapsed (so before any of them could
                    // have taken it: they count TTL_MS > FENCE_MS): valid
                    // from this renewal's sending.
                    WriteResult::Vouched => {
                        h.retry = true;
                        if now_ms.saturating_sub(h.at_ms) < FENCE_MS {
                            h.at_ms = h.at_ms.max(at_ms);
                        }
                    }
                }
                None
            }
            Attempt::Release { .. } => None,
        }
    }

    /// The renewals due at `now_ms`: one per held space with none in
    /// flight, carrying the space's last program frame (`last_seq`).
    /// Called every [`crate::lease::RENEW_MS`].
    pub fn renewals(&mut self, now_ms: i64, last_seq: impl Fn(SpaceId) -> u64) -> Vec<LeaseWrite> {
        self.renew_where(now_ms, last_seq, |_| true)
    }

    /// The renewals to retry at `now_ms`: one per held space whose last
    /// renewal was not acknowledged and none is in flight. Called every
    /// [`crate::lease::FENCE_CHECK_MS`], so an owner whose renewals were
    /// refused for want of a stream leader renews first when one is back.
    pub fn retries(&mut self, now_ms: i64, last_seq: impl Fn(SpaceId) -> u64) -> Vec<LeaseWrite> {
        self.renew_where(now_ms, last_seq, |h| h.retry)
    }

    fn renew_where(
        &mut self,
        now_ms: i64,
        last_seq: impl Fn(SpaceId) -> u64,
        which: impl Fn(&Held) -> bool,
    ) -> Vec<LeaseWrite> {
        let due: Vec<(SpaceId, u64)> = self
            .held
            .iter_mut()
            .filter(|(_, h)| !h.renewing && which(h))
            .map(|(s, h)| {
                h.renewing = true;
                (*s, h.revision)
            })
            .collect();
        due.into_iter()
            .map(|(space, revision)| {
                let value = self.lease(last_seq(space), false);
                self.write(
                    Attempt::Renew {
                        space,
                        at_ms: now_ms,
                    },
                    space,
                    value,
                    Some(revision),
                )
            })
            .collect()
    }

    /// The space ended here: its lease is kept, marked ended at
    /// `last_seq`, so other nodes know where it was recorded. `None` if
    /// this node did not hold it.
    pub fn release(&mut self, space: SpaceId, last_seq: u64) -> Option<LeaseWrite> {
        let h = self.held.remove(&space)?;
        let value = self.lease(last_seq, true);
        let attempt = Attempt::Release {
            space,
            ended: value.clone(),
        };
        Some(self.write(attempt, space, value, Some(h.revision)))
    }

    /// The next change to act on.
    pub fn poll_event(&mut self) -> Option<OwnershipEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{RENEW_MS, TTL_MS};

    const S: SpaceId = SpaceId(7);

    fn won(o: &mut Ownership, c: Claim, rev: u64, now: i64) {
        let Claim::Write(w) = c else {
            panic!("expected a write, got {c:?}")
        };
        assert_eq!(
            o.written(w.id, WriteResult::Written(rev), now),
            Some(Claim::Mine)
        );
    }

    #[test]
    fn acquiring_a_new_space_starts_at_zero() {
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 1_000);
        let Claim::Write(w) = &c else { panic!() };
        assert_eq!(w.revision, None);
        assert_eq!(w.value.node, "a");
        won(&mut a, c, 1, 1_000);
        assert_eq!(
            a.poll_event(),
            Some(OwnershipEvent::Acquired {
                space: S,
                first_seq: 0,
                from: None
            })
        );
        assert!(a.owns(S, 1_000 + FENCE_MS - 1));
        assert!(!a.owns(S, 1_000 + FENCE_MS));
    }

    #[test]
    fn a_restarted_owner_resumes_its_own_lease() {
        let mut a = Ownership::new("a", "http://a");
        let old = Lease {
            node: "a".into(),
            http: "http://a".into(),
            seq: 500,
            at_ms: 10_000,
            ended: false,
        };
        let c = a.claim(S, Some((&old, 4)), 11_000);
        let Claim::Write(w) = &c else { panic!() };
        assert_eq!((w.revision, w.value.seq), (Some(4), 500));
        won(&mut a, c, 5, 11_000);
        // First sight of the key: its age here starts now, whatever the
        // `at_ms` the old process wrote.
        assert_eq!(
            a.poll_event(),
            Some(OwnershipEvent::Acquired {
                space: S,
                first_seq: 501,
                from: None
            })
        );
        let now = 11_000 + RENEW_MS;
        let lease = Lease {
            at_ms: 11_000,
            ..old
        };
        assert_eq!(a.claim(S, Some((&lease, 5)), now), Claim::Mine);
    }

    #[test]
    fn a_failed_renewal_keeps_the_space_a_conflict_loses_it() {
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 1, 0);
        a.poll_event();
        let r = a.renewals(RENEW_MS, |_| 9);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].value.seq, 9);
        // No second renewal while one is in flight.
        assert!(a.renewals(RENEW_MS + 1, |_| 9).is_empty());
        assert_eq!(a.written(r[0].id, WriteResult::Failed, RENEW_MS), None);
        assert!(a.holds(S));
        let r = a.renewals(2 * RENEW_MS, |_| 9);
        a.written(r[0].id, WriteResult::Conflict, 2 * RENEW_MS);
        assert!(!a.holds(S));
        assert_eq!(a.poll_event(), Some(OwnershipEvent::Lost { space: S }));
    }

    #[test]
    fn a_renewal_that_landed_unanswered_is_adopted_not_lost() {
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 1, 0);
        a.poll_event();
        // The renewal at 1 s times out, but it landed: revision 2.
        let r = a.renewals(RENEW_MS, |_| 5);
        a.written(r[0].id, WriteResult::Failed, RENEW_MS + 800);
        // The retry at revision 1 conflicts; the key, read again, names
        // this node at revision 2.
        let r = a.retries(RENEW_MS + 900, |_| 5);
        assert_eq!(r[0].revision, Some(1));
        let mine = a.lease(5, false);
        a.seen(S, Some((&mine, 2)), RENEW_MS + 905);
        a.written(r[0].id, WriteResult::Conflict, RENEW_MS + 905);
        assert!(a.holds(S), "kept");
        assert_eq!(a.poll_event(), None);
        // Valid still from the last acknowledged write only.
        assert!(!a.owns(S, FENCE_MS));
        let r = a.retries(RENEW_MS + 1_000, |_| 5);
        assert_eq!(r[0].revision, Some(2));
        a.written(r[0].id, WriteResult::Written(3), RENEW_MS + 1_005);
        assert!(a.owns(S, RENEW_MS + 1_000 + FENCE_MS - 1));
        // Another node's lease at a newer revision: lost at once.
        let b = Lease {
            node: "b".into(),
            ..mine
        };
        let r = a.renewals(3 * RENEW_MS, |_| 5);
        a.seen(S, Some((&b, 4)), 3 * RENEW_MS + 5);
        a.written(r[0].id, WriteResult::Conflict, 3 * RENEW_MS + 5);
        assert!(!a.holds(S));
        assert_eq!(a.poll_event(), Some(OwnershipEvent::Lost { space: S }));
    }

    #[test]
    fn releasing_marks_the_lease_ended() {
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 3, 0);
        let w = a.release(S, 77).expect("held");
        assert_eq!(
            (w.revision, w.value.seq, w.value.ended),
            (Some(3), 77, true)
        );
        assert!(!a.holds(S));
        assert_eq!(a.release(S, 77), None);
    }

    #[test]
    fn an_owner_that_cannot_renew_fences_itself_before_the_ttl() {
        use crate::lease::{FENCE_CHECK_MS, FENCE_MARGIN_MS};
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 1, 0);
        a.poll_event();
        // A renewal sent at 1 s and acknowledged: valid from its sending.
        let r = a.renewals(RENEW_MS, |_| 1);
        a.written(r[0].id, WriteResult::Written(2), RENEW_MS + 300);
        assert_eq!(a.fence(RENEW_MS + FENCE_MS - 1), 0);
        assert!(a.owns(S, RENEW_MS + FENCE_MS - 1));
        // The next renewal never comes back: fenced FENCE_MS after the
        // last acknowledged one was sent.
        let r = a.renewals(2 * RENEW_MS, |_| 2);
        assert_eq!(a.fence(RENEW_MS + FENCE_MS), 1);
        assert_eq!(a.poll_event(), Some(OwnershipEvent::Fenced { space: S }));
        assert!(!a.holds(S) && a.is_fenced(S) && !a.owns(S, RENEW_MS + FENCE_MS));
        assert_eq!(a.fence(RENEW_MS + FENCE_MS + 1), 0, "fenced once");
        // Its late answer changes nothing.
        assert_eq!(a.written(r[0].id, WriteResult::Written(3), 10_000), None);
        assert!(!a.holds(S));
        // Another node's lease, seen after the heal: not fenced any more,
        // and the calls go there.
        let b = Lease {
            node: "b".into(),
            http: "http://b".into(),
            seq: 9,
            at_ms: 0,
            ended: false,
        };
        assert_eq!(a.claim(S, Some((&b, 4)), 40_000), Claim::Owner(b));
        assert!(!a.is_fenced(S));
        assert_eq!(a.poll_event(), None, "nothing more to stop");
        const {
            assert!(FENCE_MARGIN_MS >= 500 && FENCE_MS + FENCE_CHECK_MS + FENCE_MARGIN_MS == TTL_MS)
        };
    }

    #[test]
    fn a_fenced_owner_nobody_replaced_wins_its_space_back() {
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 1, 0);
        a.poll_event();
        a.fence(FENCE_MS);
        assert_eq!(a.poll_event(), Some(OwnershipEvent::Fenced { space: S }));
        // Nobody took it while NATS was away: once its own lease is seen
        // expired (and its bus answers) it is claimed again (a
        // compare-and-set like any other).
        assert!(a.expired(TTL_MS).is_empty(), "no probe answered yet");
        a.probed(TTL_MS - 50, true, TTL_MS - 40);
        assert!(a.expired(TTL_MS - 1).is_empty());
        assert_eq!(a.expired(TTL_MS), [S]);
        let mine = a.lease(0, false);
        let c = a.claim(S, Some((&mine, 1)), TTL_MS);
        let Claim::Write(w) = &c else { panic!("{c:?}") };
        assert_eq!(w.revision, Some(1));
        won(&mut a, c, 2, TTL_MS);
        assert!(a.holds(S) && !a.is_fenced(S));
        assert!(matches!(
            a.poll_event(),
            Some(OwnershipEvent::Acquired { from: None, .. })
        ));
    }

    #[test]
    fn renewals_refused_for_want_of_a_leader_keep_the_lease_once_they_last() {
        use crate::lease::{FENCE_CHECK_MS, LEADERLESS_SPAN_MS};
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 1, 0);
        a.poll_event();
        // The renewal at 1 s is refused: no stream leader. Retried at
        // every fencing check from then on.
        let r = a.renewals(RENEW_MS, |_| 1);
        a.written(r[0].id, WriteResult::Leaderless, RENEW_MS + 5);
        let mut t = RENEW_MS + 50;
        while t < 9_000 {
            let r = a.retries(t, |_| 1);
            assert_eq!(r.len(), 1, "a retry at {t}");
            a.written(r[0].id, WriteResult::Leaderless, t + 5);
            assert_eq!(a.fence(t + 10), 0, "fenced at {t}");
            t += FENCE_CHECK_MS;
        }
        // Valid from the last refused renewal once refusals spanned the
        // probes' period, not from the first one.
        assert!(a.owns(S, t - FENCE_CHECK_MS + FENCE_MS - 1));
        assert!(!a.owns(S, t - FENCE_CHECK_MS + FENCE_MS));
        // A leader is back: the retry is written and the retries stop.
        let r = a.retries(t, |_| 1);
        a.written(r[0].id, WriteResult::Written(2), t + 5);
        assert!(a.retries(t + FENCE_CHECK_MS, |_| 1).is_empty());
        assert_eq!(a.poll_event(), None);

        // A single refusal extends nothing; an unanswered write breaks the
        // run: cut off, the owner fences as before.
        let mut b = Ownership::new("b", "http://b");
        let c = b.claim(S, None, 0);
        won(&mut b, c, 1, 0);
        let r = b.renewals(RENEW_MS, |_| 1);
        b.written(r[0].id, WriteResult::Leaderless, RENEW_MS);
        let r = b.retries(RENEW_MS + LEADERLESS_SPAN_MS - 1, |_| 1);
        b.written(r[0].id, WriteResult::Failed, RENEW_MS + LEADERLESS_SPAN_MS);
        let r = b.retries(RENEW_MS + LEADERLESS_SPAN_MS + 1, |_| 1);
        b.written(
            r[0].id,
            WriteResult::Leaderless,
            RENEW_MS + LEADERLESS_SPAN_MS + 1,
        );
        assert_eq!(b.fence(FENCE_MS), 1, "valid only from its first write");
    }

    #[test]
    fn renewals_the_other_nodes_vouch_for_keep_the_lease_from_the_first() {
        use crate::lease::{FENCE_CHECK_MS, ROSTER_MS};
        let mut a = Ownership::new("a", "http://a");
        let c = a.claim(S, None, 0);
        won(&mut a, c, 1, 0);
        a.poll_event();
        // Nobody heard: nobody vouches, whoever answered.
        assert!(!a.vouched_by(["b"], 0));
        a.heard("b", 0);
        a.heard("c", 500);
        a.heard("a", 500);
        assert_eq!(a.roster(600), ["b", "c"]);
        assert!(!a.vouched_by(["b"], 600), "c did not answer");
        assert!(a.vouched_by(["c", "b", "x"], 600));
        // Vouched renewals count from their sending at once (no span to
        // wait out), retried at every fencing check.
        let r = a.renewals(RENEW_MS, |_| 1);
        a.written(r[0].id, WriteResult::Vouched, RENEW_MS + 450);
        let mut t = RENEW_MS + FENCE_CHECK_MS;
        while t < 8_000 {
            let r = a.retries(t, |_| 1);
            assert_eq!(r.len(), 1, "a retry at {t}");
            a.written(r[0].id, WriteResult::Vouched, t + 450);
            assert_eq!(a.fence(t + 450), 0, "fenced at {t}");
            t += FENCE_CHECK_MS;
        }
        assert!(a.owns(S, t - FENCE_CHECK_MS + FENCE_MS - 1));
        // An answer that comes after the lease lapsed extends nothing: a
        // node may have taken it over before it heard the ask.
        let r = a.retries(t, |_| 1);
        let sent = t;
        let lapsed = t - FENCE_CHECK_MS + FENCE_MS;
        a.written(r[0].id, WriteResult::Vouched, lapsed);
        assert!(!a.owns(S, lapsed));
        assert_eq!(a.fence(lapsed), 1);
        assert!(sent < lapsed);
        // The roster forgets a node unheard for ROSTER_MS.
        assert_eq!(a.roster(500 + ROSTER_MS - 1), ["c"]);
        assert!(a.roster(500 + ROSTER_MS).is_empty());
    }

    #[test]
    fn vouching_restarts_the_ages_of_the_askers_leases_only() {
        let mut b = Ownership::new("b", "http://b");
        let of = |node: &str| Lease {
            node: node.into(),
            http: format!("http://{node}"),
            seq: 1,
            at_ms: 0,
            ended: false,
        };
        let (s2, s3) = (SpaceId(8), SpaceId(9));
        b.seen(S, Some((&of("a"), 3)), 0);
        b.seen(s2, Some((&of("a"), 4)), 0);
        b.seen(s3, Some((&of("c"), 5)), 0);
        // Healthy probes throughout.
        let probe_until = |b: &mut Ownership, from: i64, to: i64| {
            for t in (from..=to).step_by(500) {
                b.probed(t, true, t);
            }
        };
        probe_until(&mut b, 0, 2_000);
        b.vouch("a", 2_000);
        b.vouch("b", 2_000);
        probe_until(&mut b, 2_500, TTL_MS);
        assert_eq!(b.expired(TTL_MS), [s3], "c's lease expired, a's did not");
        probe_until(&mut b, TTL_MS + 500, 2_000 + TTL_MS);
        let mut late = b.expired(2_000 + TTL_MS);
        late.sort_by_key(|s| s.0);
        assert_eq!(late, [S, s2, s3]);
    }

    #[test]
    fn a_node_whose_bus_fails_takes_nothing_over() {
        use crate::lease::{PROBE_MS, PROBE_SLOW_MS, PROBE_STALE_MS, PROBE_TIMEOUT_MS};
        let mut b = Ownership::new("b", "http://b");
        let a = Lease {
            node: "a".into(),
            http: "http://a".into(),
            seq: 9,
            at_ms: 0,
            ended: false,
        };
        b.seen(S, Some((&a, 4)), 0);
        // Healthy: a probe every PROBE_SLOW_MS, and the lease expires at
        // TTL_MS.
        let mut t = 0;
        while t <= TTL_MS {
            assert!(b.probe_due(t), "a probe at {t}");
            assert!(!b.probe_due(t + PROBE_MS));
            b.probed(t, true, t + 5);
            t += PROBE_SLOW_MS;
        }
        assert_eq!(b.expired(TTL_MS), [S]);
        // No answer lately: nothing is taken over, not even when asked.
        let late = t - PROBE_SLOW_MS + 5 + PROBE_STALE_MS;
        assert!(b.expired(late).is_empty());
        assert_eq!(b.claim(S, Some((&a, 4)), late), Claim::Retry);
        // A failed probe restarts the lease's age, and probes go every
        // PROBE_MS for TTL_MS.
        assert!(b.probe_due(late));
        let failed = late + PROBE_TIMEOUT_MS;
        b.probed(late, false, failed);
        let mut t = failed;
        while t < failed + TTL_MS {
            assert!(b.probe_due(t), "a fast probe at {t}");
            b.probed(t, true, t + 5);
            assert!(b.expired(t + 5).is_empty(), "expired at {t}");
            t += PROBE_MS;
        }
        assert!(b.probe_due(t));
        b.probed(t, true, t + 5);
        assert_eq!(b.expired(t + 5), [S]);
        assert!(!b.probe_due(t + PROBE_MS), "slow again");
        // Fast probes too far apart count as a failure.
        t += PROBE_SLOW_MS;
        assert!(b.probe_due(t));
        b.probed(t, false, t + PROBE_TIMEOUT_MS);
        t += PROBE_TIMEOUT_MS;
        b.probed(t, true, t + 5);
        t += 3 * PROBE_MS;
        b.probed(t, true, t + 5);
        let restarted = t + 5;
        t += PROBE_MS;
        while t + 5 < restarted + TTL_MS {
            b.probed(t, true, t + 5);
            assert!(b.expired(t + 5).is_empty(), "expired at {t}");
            t += PROBE_MS;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(160))]
        /// The leases' stream loses its leader for `leaderless_for` ms
        /// (JetStream electing another): the owner's renewals are refused
        /// (503; the other node vouching for it, or with no other node on
        /// its roster, its server reaching the meta leader), the other node's
        /// probes fail and its takeover writes are refused (or, two NATS
        /// servers parted, only the owner lost the leader). Without a second
        /// fault the owner never fences and the other never takes over;
        /// with the owner cut off `cut_after` ms after the leader is back
        /// (a second fault), the other takes over, never while the owner
        /// still holds the lease.
        #[test]
        fn a_leaderless_stream_keeps_its_owner_and_never_doubles_it(
            lost_at in 0i64..400,
            leaderless_for in proptest::prop_oneof![0i64..200, 0i64..2_000],
            latency in 0i64..8,
            watch_delay in 0i64..16,
            b_phase in 0i64..(RENEW_MS / STEP),
            probe_phase in 0i64..(crate::lease::PROBE_MS / STEP),
            cut_after in proptest::option::of(proptest::prop_oneof![0i64..30, 0i64..300]),
            mode in 0u8..3,
        ) {
            use crate::lease::{FENCE_CHECK_MS, PROBE_MS, PROBE_TIMEOUT_MS};
            let (lost_at, leaderless_for, latency, watch_delay, b_phase, probe_phase) = (
                1_000 + lost_at * STEP, leaderless_for * STEP, latency * STEP,
                watch_delay * STEP, b_phase * STEP, probe_phase * STEP,
            );
            let back_at = lost_at + leaderless_for;
            let leader = |t: i64| t < lost_at || t >= back_at;
            // Mode 0: a hears no other node (an empty roster), so its
            // server's reaching the meta leader is the proof; 1: a asks b
            // to vouch; 2: the same, but only a's server has lost the
            // stream's leader (a partition between two NATS servers): b
            // probes it, and could write.
            let b_leader = |t: i64| mode == 2 || leader(t);
            // The second fault: a cut off, after the leader is back (in
            // mode 2, after a lost the leader: while b vouches for it).
            let cut_from = if mode == 2 { lost_at } else { back_at };
            let cut = |t: i64| cut_after.is_some_and(|c| t >= cut_from + c * STEP);
            let mut a = Ownership::new("a", "http://a");
            let mut b = Ownership::new("b", "http://b");
            if mode > 0 {
                a.heard("b", 0);
            }
            // When b gets a's asks to vouch for it (meta leader down too).
            let mut b_asks: Vec<i64> = vec![];
            let (mut rev, mut lease) = (0u64, None::<Lease>);
            let land = |rev: &mut u64, lease: &mut Option<Lease>, w: &LeaseWrite| {
                let ok = match w.revision {
                    None => lease.is_none(),
                    Some(r) => r == *rev,
                };
                if !ok {
                    return WriteResult::Conflict;
                }
                *rev += 1;
                *lease = Some(w.value.clone());
                WriteResult::Written(*rev)
            };
            let c = a.claim(S, None, 0);
            let Claim::Write(w) = c else { panic!() };
            let r = land(&mut rev, &mut lease, &w);
            a.written(w.id, r, 0);
            a.poll_event();
            // (answer at, write, result) of a's writes; (at, rev, lease)
            // b will see; (answer at, sent, ok) of b's probes.
            let mut a_writes: Vec<(i64, LeaseWrite, WriteResult)> = vec![];
            let mut b_sees: Vec<(i64, u64, Lease)> = vec![(watch_delay, rev, lease.clone().unwrap())];
            let mut probes: Vec<(i64, i64, bool)> = vec![];
            let (mut fenced_at, mut taken_at) = (None, None);
            for t in (STEP..back_at + 12_000).step_by(STEP as usize) {
                // a renews every RENEW_MS, retries at every fencing check.
                let mut sent = vec![];
                if t % RENEW_MS == 0 {
                    sent.extend(a.renewals(t, |_| 0));
                }
                if t % FENCE_CHECK_MS == 0 {
                    sent.extend(a.retries(t, |_| 0));
                }
                for w in sent {
                    let at = t + latency;
                    let (answer, result) = if cut(t) || cut(at) {
                        (t + 1_000, WriteResult::Failed)
                    } else if !leader(at) && mode > 0 {
                        // a asks b, who vouches and answers.
                        let ask = at + 2 * latency;
                        if cut(ask) || cut(ask + 2 * latency) {
                            (ask + PROBE_TIMEOUT_MS, WriteResult::Failed)
                        } else {
                            b_asks.push(ask + latency);
                            (ask + 2 * latency, WriteResult::Vouched)
                        }
                    } else if !leader(at) {
                        (at + latency, WriteResult::Leaderless)
                    } else {
                        let r = land(&mut rev, &mut lease, &w);
                        if let WriteResult::Written(rv) = r {
                            b_sees.push((at + watch_delay, rv, w.value.clone()));
                        }
                        (at + latency, r)
                    };
                    a_writes.push((answer, w, result));
                }
                let due: Vec<_> = a_writes.iter().filter(|p| p.0 == t).cloned().collect();
                a_writes.retain(|p| p.0 != t);
                for (_, w, r) in due {
                    a.written(w.id, r, t);
                }
                if t % FENCE_CHECK_MS == 0 && a.fence(t) > 0 {
                    fenced_at.get_or_insert(t);
                }
                while a.poll_event().is_some() {}
                if mode > 0 && t % RENEW_MS == 0 && !cut(t) {
                    a.heard("b", t);
                }
                let asked = b_asks.iter().filter(|at| **at == t).count();
                b_asks.retain(|at| *at != t);
                for _ in 0..asked {
                    b.vouch("a", t);
                }
                // b probes the stream's leader every PROBE_MS.
                if t % PROBE_MS == probe_phase && b.probe_due(t) {
                    let ok = b_leader(t + latency);
                    let answer = if ok { t + 2 * latency } else { t + PROBE_TIMEOUT_MS };
                    probes.push((answer.max(t + STEP), t, ok));
                }
                let due: Vec<_> = probes.iter().filter(|p| p.0 == t).copied().collect();
                probes.retain(|p| p.0 != t);
                for (_, sent, ok) in due {
                    b.probed(sent, ok, t);
                }
                let seen: Vec<_> = b_sees.iter().filter(|s| s.0 <= t).cloned().collect();
                b_sees.retain(|s| s.0 > t);
                for (_, rv, l) in seen {
                    b.seen(S, Some((&l, rv)), t);
                }
                // b is eager: it tries a takeover at every step the lease
                // looks expired to it (a call about the space can come
                // at any moment).
                if !b.holds(S) && b.expired(t).contains(&S) {
                    let current = lease.clone().map(|l| (l, rev));
                    if let Claim::Write(w) = b.claim(S, current.as_ref().map(|(l, r)| (l, *r)), t) {
                        let r = if b_leader(t) { land(&mut rev, &mut lease, &w) } else { WriteResult::Failed };
                        if b.written(w.id, r, t) == Some(Claim::Mine) {
                            taken_at.get_or_insert(t);
                        }
                    }
                }
                if b.holds(S) && t % RENEW_MS == b_phase {
                    for w in b.renewals(t, |_| 0) {
                        let r = land(&mut rev, &mut lease, &w);
                        b.written(w.id, r, t);
                    }
                }
                proptest::prop_assert!(!(a.holds(S) && b.holds(S)), "two owners at t = {}", t);
            }
            if cut_after.is_none() {
                proptest::prop_assert_eq!(fenced_at, None, "the owner fenced itself");
                proptest::prop_assert_eq!(taken_at, None, "taken over");
                proptest::prop_assert!(a.holds(S));
            } else {
                let (f, tk) = (fenced_at.expect("a fenced"), taken_at.expect("b took over"));
                proptest::prop_assert!(tk > f, "taken at {} before the fence at {}", tk, f);
            }
        }
    }

    /// A simulated cluster of two nodes and a key-value store, 1 ms steps:
    /// `a` owns the space; at `cut_at` its link drops for `cut_for` ms
    /// (nothing it sends arrives, nothing reaches it); `b` sees each
    /// revision `watch_delay` ms after it lands and tries a takeover
    /// whenever the lease looks expired to it. The clocks of the two
    /// nodes have unrelated origins.
    struct Sim {
        a: Ownership,
        b: Ownership,
        off_a: i64,
        off_b: i64,
        /// The store: current revision and value.
        rev: u64,
        lease: Option<Lease>,
        /// Writes of `a` in flight.
        a_writes: Vec<Pending>,
        /// Revisions `b` will see: (at, revision, value).
        b_sees: Vec<(i64, u64, Lease)>,
        /// Revisions `a` will see after the heal.
        a_sees: Vec<(i64, u64, Lease)>,
        fenced_at: Option<i64>,
        taken_at: Option<i64>,
    }

    /// The simulation's time step, ms.
    const STEP: i64 = 5;

    /// A write of `a` in flight: it lands on the store at `land`, and its
    /// result reaches `a` at `answer`.
    #[derive(Clone)]
    struct Pending {
        land: i64,
        answer: i64,
        result: Option<WriteResult>,
        w: LeaseWrite,
    }

    impl Sim {
        fn land(&mut self, t: i64, w: &LeaseWrite, watch_delay: i64) -> WriteResult {
            let ok = match w.revision {
                None => self.lease.is_none(),
                Some(r) => r == self.rev,
            };
            if !ok {
                return WriteResult::Conflict;
            }
            self.rev += 1;
            self.lease = Some(w.value.clone());
            self.b_sees
                .push((t + watch_delay, self.rev, w.value.clone()));
            self.a_sees
                .push((t + watch_delay, self.rev, w.value.clone()));
            WriteResult::Written(self.rev)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the latencies, the moment of the cut and the clocks'
        /// origins: never two nodes acting as the owner at once, the
        /// owner fences itself at least FENCE_MARGIN_MS before the other
        /// takes over, and after the heal the fenced node follows the new
        /// owner.
        #[test]
        fn a_partitioned_owner_never_overlaps_its_successor(
            cut_at in 300i64..1_200,
            cut_for in 800i64..3_000,
            latency in 0i64..40,
            watch_delay in 0i64..80,
            b_phase in 0i64..(RENEW_MS / STEP),
            off_a in -1_000_000i64..1_000_000,
            off_b in -1_000_000i64..1_000_000,
        ) {
            use crate::lease::{FENCE_CHECK_MS, FENCE_MARGIN_MS};
            // Every moment is a multiple of STEP ms.
            let (cut_at, cut_for, latency, watch_delay, b_phase) =
                (cut_at * STEP, cut_for * STEP, latency * STEP, watch_delay * STEP, b_phase * STEP);
            let heal_at = cut_at + cut_for;
            let cut = |t: i64| t >= cut_at && t < heal_at;
            let mut sim = Sim {
                a: Ownership::new("a", "http://a"),
                b: Ownership::new("b", "http://b"),
                off_a, off_b, rev: 0, lease: None,
                a_writes: vec![], b_sees: vec![], a_sees: vec![],
                fenced_at: None, taken_at: None,
            };
            // a acquires the space at t = 0.
            let c = sim.a.claim(S, None, off_a);
            let Claim::Write(w) = c else { panic!() };
            let r = sim.land(0, &w, watch_delay);
            sim.a.written(w.id, r, off_a);
            sim.a.poll_event();
            for t in (STEP..heal_at + 8_000).step_by(STEP as usize) {
                let (na, nb) = (t + sim.off_a, t + sim.off_b);
                // a: renew every RENEW_MS, fence every FENCE_CHECK_MS.
                if t % RENEW_MS == 0 {
                    for w in sim.a.renewals(na, |_| 0) {
                        sim.a_writes.push(Pending { land: t + latency, answer: t + 2 * latency, result: None, w });
                    }
                }
                for i in 0..sim.a_writes.len() {
                    if sim.a_writes[i].land == t {
                        // Sent or landing during the cut: lost.
                        let w = sim.a_writes[i].w.clone();
                        let result = if cut(t - latency) || cut(t) {
                            WriteResult::Failed
                        } else {
                            sim.land(t, &w, watch_delay)
                        };
                        let p = &mut sim.a_writes[i];
                        p.result = Some(result);
                        if cut(p.answer) {
                            // The answer is lost: a timeout, later.
                            p.result = Some(WriteResult::Failed);
                            p.answer += 5_000;
                        }
                    }
                }
                let answered: Vec<Pending> = sim.a_writes.iter().filter(|p| p.answer == t).cloned().collect();
                sim.a_writes.retain(|p| p.answer != t);
                for p in answered {
                    let result = p.result.unwrap_or(WriteResult::Failed);
                    sim.a.written(p.w.id, result, na);
                }
                if t % FENCE_CHECK_MS == 0 && sim.a.fence(na) > 0 {
                    sim.fenced_at.get_or_insert(t);
                }
                while let Some(e) = sim.a.poll_event() {
                    if let OwnershipEvent::Acquired { .. } = e {
                        proptest::prop_assert!(false, "a won the space back while b held it");
                    }
                }
                // What a sees, once healed.
                let seen: Vec<_> = sim.a_sees.iter().filter(|(at, ..)| *at <= t && !cut(t)).cloned().collect();
                sim.a_sees.retain(|(at, ..)| *at > t || cut(t));
                for (_, rev, l) in seen {
                    sim.a.seen(S, Some((&l, rev)), na);
                }
                // b: sees revisions, tries takeovers once a second.
                let seen: Vec<_> = sim.b_sees.iter().filter(|(at, ..)| *at <= t).cloned().collect();
                sim.b_sees.retain(|(at, ..)| *at > t);
                for (_, rev, l) in seen {
                    sim.b.seen(S, Some((&l, rev)), nb);
                }
                if t % crate::lease::PROBE_MS == 0 {
                    sim.b.probed(nb, true, nb);
                }
                if t % RENEW_MS == b_phase && !sim.b.holds(S) && sim.b.expired(nb).contains(&S) {
                    let current = sim.lease.clone().map(|l| (l, sim.rev));
                    let c = sim.b.claim(S, current.as_ref().map(|(l, r)| (l, *r)), nb);
                    if let Claim::Write(w) = c {
                        let r = sim.land(t, &w, watch_delay);
                        if sim.b.written(w.id, r, nb) == Some(Claim::Mine) {
                            sim.taken_at.get_or_insert(t);
                        }
                    }
                }
                if sim.b.holds(S) {
                    for w in sim.b.renewals(nb, |_| 0) {
                        let r = sim.land(t, &w, watch_delay);
                        sim.b.written(w.id, r, nb);
                    }
                }
                proptest::prop_assert!(
                    !(sim.a.holds(S) && sim.b.holds(S)),
                    "two owners at t = {}", t
                );
            }
            let fenced = sim.fenced_at.expect("a fenced itself");
            let taken = sim.taken_at.expect("b took the space over");
            proptest::prop_assert!(
                taken - fenced >= FENCE_MARGIN_MS,
                "b took over {} ms after a fenced", taken - fenced
            );
            proptest::prop_assert!(fenced < cut_at + FENCE_MS + FENCE_CHECK_MS);
            // Healed: a follows b and is no longer fenced.
            proptest::prop_assert!(!sim.a.is_fenced(S));
            proptest::prop_assert!(!sim.a.holds(S));
            let current = sim.lease.clone().expect("a lease");
            proptest::prop_assert_eq!(current.node.as_str(), "b");
            let c = sim.a.claim(S, Some((&current, sim.rev)), (heal_at + 8_000) + off_a);
            proptest::prop_assert_eq!(c, Claim::Owner(current));
        }
    }
}
