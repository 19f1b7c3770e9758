//! The audience a host can see, and the invitations to the stage.
//!
//! Present means holding an events connection (a named participant; bare
//! stream listeners are only a count). Each present participant costs one
//! entry here, beside the connection task that already costs far more; the
//! view a moderator reads is bounded: the [`VIEW_CAP`] most recent
//! arrivals, a page at a time, and the total. A join writes nothing and
//! tells nobody: only opening the events channel enters this list, in O(log n).
//!
//! An invitation lasts [`INVITATION_TTL_MS`]; unanswered it simply expires
//! (nothing changes). At most [`MAX_INVITATIONS`] are pending per space.

use std::collections::{BTreeMap, HashMap};

use amphi_cluster::presence::{Arrival, PRESENCE_CAP};
use amphi_core::ParticipantId;

/// How many of the most recent arrivals the audience view shows.
pub const VIEW_CAP: usize = 500;
/// How long an invitation waits for an answer.
pub const INVITATION_TTL_MS: i64 = 60_000;
/// Pending invitations per space.
pub const MAX_INVITATIONS: usize = 64;

struct Present {
    name: String,
    conns: u32,
    /// Arrival time in µs, unique here: larger is more recent.
    seq: u64,
}

/// An invitation to the stage, waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub by: ParticipantId,
    pub by_name: String,
    pub expires_ms: i64,
}

/// One entry of the audience view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    pub pid: ParticipantId,
    pub name: &'a str,
    /// Cursor: pass as `before` for the next page.
    pub seq: u64,
}

/// Who is present in one space, and who is invited.
#[derive(Default)]
pub struct Audience {
    present: HashMap<ParticipantId, Present>,
    order: BTreeMap<u64, ParticipantId>,
    next: u64,
    invitations: HashMap<ParticipantId, Invitation>,
    /// Arrivals up to this seq have been told to the other nodes.
    published: u64,
    /// Departures of participants told to the other nodes, not yet told.
    left: Vec<ParticipantId>,
}

impl Audience {
    /// `pid` opened an events connection under `name` at `now_us` (wall
    /// clock, µs: the other nodes' arrivals merge with these by time).
    pub fn arrive(&mut self, pid: ParticipantId, name: &str, now_us: u64) {
        if let Some(p) = self.present.get_mut(&pid) {
            p.conns += 1;
            return;
        }
        self.next = (self.next + 1).max(now_us);
        self.order.insert(self.next, pid);
        self.present.insert(
            pid,
            Present {
                name: name.to_owned(),
                conns: 1,
                seq: self.next,
            },
        );
    }

    /// One of `pid`'s events connections closed.
    pub fn leave(&mut self, pid: ParticipantId) {
        let Some(p) = self.present.get_mut(&pid) else {
            return;
        };
        p.conns -= 1;
        if p.conns == 0 {
            let seq = p.seq;
            self.present.remove(&pid);
            self.order.remove(&seq);
            self.invitations.remove(&pid);
            if seq <= self.published {
                self.left.push(pid);
            }
        }
    }

    /// What changed since the last call, for the other nodes: the newest
    /// arrivals (at most [`PRESENCE_CAP`]) and the departures of those
    /// told before. `None` if nothing changed.
    pub fn delta(&mut self) -> Option<(Vec<Arrival>, Vec<ParticipantId>)> {
        let arrived = self.arrivals_after(self.published);
        self.published = self.next;
        let left = std::mem::take(&mut self.left);
        (!arrived.is_empty() || !left.is_empty()).then_some((arrived, left))
    }

    /// The newest [`PRESENCE_CAP`] arrivals, for a full batch (marks
    /// everything told).
    pub fn snapshot(&mut self) -> Vec<Arrival> {
        self.published = self.next;
        self.left.clear();
        self.arrivals_after(0)
    }

    fn arrivals_after(&self, seq: u64) -> Vec<Arrival> {
        self.order
            .range(seq + 1..)
            .rev()
            .take(PRESENCE_CAP)
            .filter_map(|(seq, pid)| {
                Some(Arrival {
                    pid: *pid,
                    name: self.present.get(pid)?.name.clone(),
                    seq: *seq,
                })
            })
            .collect()
    }

    /// The name `pid` is present under.
    pub fn name(&self, pid: ParticipantId) -> Option<&str> {
        self.present.get(&pid).map(|p| p.name.as_str())
    }

    /// Participants present now.
    pub fn total(&self) -> usize {
        self.present.len()
    }

    /// Up to `limit` of the [`VIEW_CAP`] most recent arrivals, newest
    /// first, older than the cursor `before` if given.
    pub fn page(&self, before: Option<u64>, limit: usize) -> Vec<Seen<'_>> {
        let floor = self
            .order
            .keys()
            .rev()
            .nth(VIEW_CAP - 1)
            .copied()
            .unwrap_or(0);
        let upper = before.unwrap_or(u64::MAX);
        self.order
            .range(floor..upper)
            .rev()
            .take(limit)
            .filter_map(|(seq, pid)| {
                let p = self.present.get(pid)?;
                Some(Seen {
                    pid: *pid,
                    name: &p.name,
                    seq: *seq,
                })
            })
            .collect()
    }

    /// Invites `pid` on behalf of `by`, present here or not (the caller
    /// checks presence in the cluster); replaces an earlier invitation of
    /// the same person. `false` if too many invitations wait.
    pub fn invite_anyway(&mut self, pid: ParticipantId, inv: Invitation, now_ms: i64) -> bool {
        self.invitations.retain(|_, i| i.expires_ms > now_ms);
        if self.invitations.len() >= MAX_INVITATIONS && !self.invitations.contains_key(&pid) {
            return false;
        }
        self.invitations.insert(pid, inv);
        true
    }

    /// `pid`'s invitation, if one waits and has not expired.
    pub fn invitation(&self, pid: ParticipantId, now_ms: i64) -> Option<&Invitation> {
        self.invitations.get(&pid).filter(|i| i.expires_ms > now_ms)
    }

    /// Drops `pid`'s invitation (answered on another node).
    pub fn drop_invitation(&mut self, pid: ParticipantId) {
        self.invitations.remove(&pid);
    }

    /// Takes `pid`'s invitation (an answer), if one waits and has not
    /// expired.
    pub fn answer(&mut self, pid: ParticipantId, now_ms: i64) -> Option<Invitation> {
        self.invitations
            .remove(&pid)
            .filter(|i| i.expires_ms > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    #[test]
    fn the_view_is_the_most_recent_arrivals_paged() {
        let mut a = Audience::default();
        for i in 0..2000 {
            a.arrive(p(i), &format!("n{i}"), i);
        }
        a.arrive(p(5), "again", 0);
        assert_eq!(a.total(), 2000);
        let first = a.page(None, 100);
        assert_eq!(first.len(), 100);
        assert_eq!(first[0].pid, p(1999));
        let mut seen = first.len();
        let mut cursor = first.last().map(|s| s.seq);
        loop {
            let page = a.page(cursor, 100);
            if page.is_empty() {
                break;
            }
            seen += page.len();
            cursor = page.last().map(|s| s.seq);
        }
        assert_eq!(seen, VIEW_CAP);
        a.leave(p(1999));
        assert_eq!(a.page(None, 1)[0].pid, p(1998));
        // Two connections: present until both close.
        a.leave(p(5));
        assert_eq!(a.name(p(5)), Some("n5"));
        a.leave(p(5));
        assert_eq!(a.name(p(5)), None);
        assert_eq!(a.total(), 1998);
    }

    #[test]
    fn deltas_tell_arrivals_and_departures_once() {
        let mut a = Audience::default();
        assert!(a.delta().is_none());
        for i in 0..1000 {
            a.arrive(p(i), &format!("n{i}"), 5_000);
        }
        let (arrived, left) = a.delta().unwrap();
        assert_eq!(arrived.len(), PRESENCE_CAP);
        assert_eq!(arrived[0].pid, p(999));
        assert!(left.is_empty());
        assert!(a.delta().is_none());
        // One leaves, one arrives and leaves between two batches (never
        // told: nothing to say), one rejoins.
        a.leave(p(3));
        a.arrive(p(2000), "brief", 6_000);
        a.leave(p(2000));
        a.leave(p(4));
        a.arrive(p(4), "n4", 7_000);
        let (arrived, left) = a.delta().unwrap();
        assert_eq!(left, vec![p(3), p(4)]);
        assert_eq!(arrived.len(), 1);
        assert_eq!(arrived[0].pid, p(4));
        assert!(arrived[0].seq >= 7_000);
        assert_eq!(a.snapshot().len(), PRESENCE_CAP);
    }

    #[test]
    fn invitations_expire_and_are_answered_once() {
        let mut a = Audience::default();
        let inv = Invitation {
            by: p(1),
            by_name: "Host".into(),
            expires_ms: 60_000,
        };
        a.arrive(p(2), "Two", 1);
        assert!(a.invite_anyway(p(2), inv.clone(), 0));
        assert!(a.invitation(p(2), 59_999).is_some());
        assert!(a.invitation(p(2), 60_000).is_none());
        assert_eq!(a.answer(p(2), 1), Some(inv.clone()));
        assert_eq!(a.answer(p(2), 1), None);
        assert!(a.invite_anyway(p(2), inv.clone(), 0));
        assert_eq!(a.answer(p(2), 60_001), None, "expired");
        assert!(a.invite_anyway(p(2), inv, 0));
        a.leave(p(2));
        assert!(a.invitation(p(2), 0).is_none());
    }
}
