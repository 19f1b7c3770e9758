//! Admission in front of everything: the node-wide listener cap and join
//! bucket, per-key token buckets (joins, reactions, commands) and the
//! per-address connection count. Refusing costs microseconds and never
//! touches the media plane.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Node-wide admission: a listener cap and a token-bucket join rate.
#[derive(Debug)]
pub struct Admission {
    pub max_listeners: u64,
    pub max_per_space: u64,
    bucket: KeyedLimiter,
}

impl Admission {
    pub fn new(max_listeners: u64, max_per_space: u64, rate: f64, burst: f64) -> Self {
        Admission {
            max_listeners,
            max_per_space,
            bucket: KeyedLimiter::new(rate, burst),
        }
    }

    /// Takes one join from the node-wide bucket.
    pub fn take(&self) -> bool {
        self.bucket.check(0)
    }
}

/// A per-key token bucket (reactions, hands): small, bounded map.
#[derive(Debug)]
pub struct KeyedLimiter {
    map: Mutex<HashMap<u64, (f64, Instant)>>,
    rate: f64,
    burst: f64,
}

impl KeyedLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        KeyedLimiter {
            map: Mutex::new(HashMap::new()),
            rate,
            burst,
        }
    }

    /// Whether `key` may act now.
    pub fn check(&self, key: u64) -> bool {
        let mut map = self.map.lock();
        let now = Instant::now();
        if map.len() > 100_000 {
            // Forget idle keys rather than grow without bound.
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let e = map.entry(key).or_insert((self.burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * self.rate).min(self.burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one for `key`, or says in how many seconds (at least 1) one
    /// will be there: a 429's `Retry-After`.
    pub fn try_take(&self, key: u64) -> Result<(), u32> {
        if self.check(key) {
            return Ok(());
        }
        let tokens = self.map.lock().get(&key).map_or(0.0, |e| e.0);
        let secs = ((1.0 - tokens) / self.rate.max(1e-9)).ceil();
        Err(secs.clamp(1.0, 3600.0) as u32)
    }
}

/// How often clips may be cut (`POST .../clips`): per network, per
/// participant and per space, each a token bucket. The network's comes
/// first: one address joining as many people cannot use up the space's
/// clips for everyone else.
#[derive(Debug)]
pub struct ClipLimits {
    pub network: KeyedLimiter,
    pub participant: KeyedLimiter,
    pub space: KeyedLimiter,
}

impl Default for ClipLimits {
    /// Three clips at once then one per 30 s per network (IPv4 address,
    /// IPv6 /64); two at once then one per 30 s per participant; six at
    /// once then one per 5 s per space.
    fn default() -> Self {
        ClipLimits {
            network: KeyedLimiter::new(1.0 / 30.0, 3.0),
            participant: KeyedLimiter::new(1.0 / 30.0, 2.0),
            space: KeyedLimiter::new(1.0 / 5.0, 6.0),
        }
    }
}

/// "Remind me" requests one network (IPv4 address, IPv6 /64) may make for
/// one space: [`REMINDERS_PER_NETWORK`] at once, then one per
/// [`REMINDER_REFILL_S`]. A space keeps at most 10,000 reminders; without
/// this, one address joining as 10,000 people (at the join rate, in 17
/// minutes) would fill them and nobody else could ask.
pub const REMINDERS_PER_NETWORK: f64 = 10.0;
/// Seconds until a network may ask for one more reminder of a space.
pub const REMINDER_REFILL_S: f64 = 600.0;

/// The key of a (space, network) pair in a [`KeyedLimiter`].
pub fn pair_key(a: u64, b: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (a, b).hash(&mut h);
    h.finish()
}

/// WHIP offers per participant, per network and per node: each offer the
/// engine takes costs a session's setup on the RTC thread, so a flood is
/// refused here, before it reaches the thread every speaker shares.
#[derive(Debug)]
pub struct OfferLimits {
    participant: KeyedLimiter,
    network: KeyedLimiter,
    node: KeyedLimiter,
}

/// Which [`OfferLimits`] bucket refused an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferRefusal {
    /// The participant or their network sends too fast (429).
    TooFast,
    /// The node takes no more offers this second (503).
    NodeBusy,
}

impl OfferLimits {
    /// Offers a participant may make per second (burst [`Self::BURST`] ×).
    pub const PER_PARTICIPANT: f64 = 2.0;
    /// Offers a network (IPv4 address, IPv6 /64) may make per second.
    pub const PER_NETWORK: f64 = 10.0;
    /// Offers the node takes per second.
    pub const PER_NODE: f64 = 50.0;
    /// Each bucket holds this many seconds of its rate.
    pub const BURST: f64 = 2.5;

    pub fn new() -> Self {
        Self::with_rates(Self::PER_NETWORK, Self::PER_NODE)
    }

    /// Limits with `per_network` and `per_node` offers a second
    /// (`--offer-rate-per-ip`, `--offer-rate`); a participant's stays
    /// [`Self::PER_PARTICIPANT`].
    pub fn with_rates(per_network: f64, per_node: f64) -> Self {
        let bucket = |rate: f64| KeyedLimiter::new(rate, rate * Self::BURST);
        OfferLimits {
            participant: bucket(Self::PER_PARTICIPANT),
            network: bucket(per_network),
            node: bucket(per_node),
        }
    }

    /// Takes one offer from `network` (its limiter key): asked first, before
    /// the token is even verified, so a flood is refused at the least cost.
    pub fn check_network(&self, network: Option<u64>) -> Result<(), OfferRefusal> {
        if network.is_none_or(|n| self.network.check(n)) {
            Ok(())
        } else {
            Err(OfferRefusal::TooFast)
        }
    }

    /// Takes one offer of `participant` (a verified stage member), then one
    /// of the node's.
    pub fn check_participant(&self, participant: u64) -> Result<(), OfferRefusal> {
        if !self.participant.check(participant) {
            return Err(OfferRefusal::TooFast);
        }
        if !self.node.check(0) {
            return Err(OfferRefusal::NodeBusy);
        }
        Ok(())
    }
}

impl Default for OfferLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// Open connections per source address.
#[derive(Debug)]
pub struct PerIp {
    max: u32,
    counts: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
}

/// Holds one connection's place in [`PerIp`].
pub struct IpGuard {
    owner: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    pub fn new(max: u32) -> Self {
        PerIp {
            max,
            counts: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts a connection from `ip`, or `None` if it is over the limit.
    pub fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpGuard> {
        let mut c = self.counts.lock();
        let n = c.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut c = self.owner.counts.lock();
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_releases() {
        let p = Arc::new(PerIp::new(2));
        let ip: std::net::IpAddr = "127.0.0.9".parse().unwrap();
        let a = p.enter(ip).unwrap();
        let _b = p.enter(ip).unwrap();
        assert!(p.enter(ip).is_none());
        assert!(p.enter("127.0.0.10".parse().unwrap()).is_some());
        drop(a);
        assert!(p.enter(ip).is_some());
    }

    #[test]
    fn offers_are_limited_per_participant_network_and_node() {
        let limits = OfferLimits::new();
        let l = &limits;
        struct Both<'a>(&'a OfferLimits);
        impl Both<'_> {
            fn check(&self, p: u64, n: Option<u64>) -> Result<(), OfferRefusal> {
                self.0.check_network(n)?;
                self.0.check_participant(p)
            }
        }
        let l = Both(l);
        // A participant's burst (5), then refused; another is not.
        for _ in 0..5 {
            assert_eq!(l.check(1, Some(9)), Ok(()));
        }
        assert_eq!(l.check(1, Some(9)), Err(OfferRefusal::TooFast));
        // The network's burst (25, one of it spent on the refused sixth)
        // covers several participants.
        let mut ok = 5;
        for p in 2..40 {
            if l.check(p, Some(9)).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 24);
        // The node's burst (125) over many networks.
        let mut node = 24;
        for p in 100..400 {
            if l.check(p, Some(p)).is_ok() {
                node += 1;
            }
        }
        assert_eq!(node, 125);
        assert_eq!(l.check(999, Some(999)), Err(OfferRefusal::NodeBusy));
    }

    #[test]
    fn token_bucket_limits_rate() {
        let a = Admission::new(10, 10, 0.0, 3.0);
        assert!(a.take() && a.take() && a.take());
        assert!(!a.take());
        let k = KeyedLimiter::new(0.0, 2.0);
        assert!(k.check(1) && k.check(1) && !k.check(1));
        assert!(k.check(2));
    }
}
