//! Presence in the cluster shell: this node's presence changes published
//! on `amphi.presence` every 500 ms (a full batch every 5 s), the other
//! nodes' merged into a bounded [`Presence`](amphi_cluster::presence::Presence),
//! and invitations made on a space's owner handed to every node (so the
//! invited person sees theirs on whichever node holds their events
//! connection).

use std::sync::Arc;
use std::time::{Duration, Instant};

use amphi_cluster::presence::{PRESENCE_SUBJECT, PresenceMsg, Present};
use amphi_core::{ParticipantId, SpaceId};
use futures_util::StreamExt;

use super::Nats;

/// How often changes are published.
const BATCH_EVERY: Duration = Duration::from_millis(500);
/// A full batch every this many batches (5 s).
const FULL_EVERY: u32 = 10;

impl Nats {
    pub(super) async fn presence_loop(self: Arc<Self>) {
        let mut sub = self.client.subscribe(PRESENCE_SUBJECT).await.ok();
        let mut iv = tokio::time::interval(BATCH_EVERY);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = iv.tick() => {
                    n = n.wrapping_add(1);
                    self.publish_presence(n % FULL_EVERY == 1).await;
                }
                msg = async {
                    match sub.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(msg) = msg else {
                        sub = self.client.subscribe(PRESENCE_SUBJECT).await.ok();
                        continue;
                    };
                    if let Some(m) = PresenceMsg::decode(&msg.payload)
                        && m.node() != self.node
                    {
                        self.take_presence(m);
                    }
                }
            }
        }
    }

    async fn publish_presence(&self, full: bool) {
        let Some(host) = self.host() else { return };
        self.presence.lock().expire(Instant::now());
        let spaces = host.presence(full);
        if spaces.is_empty() && !full {
            return;
        }
        let msg = PresenceMsg::Batch {
            node: self.node.clone(),
            full,
            spaces,
        };
        let _ = self
            .client
            .publish(PRESENCE_SUBJECT, msg.encode().into())
            .await;
    }

    fn take_presence(&self, m: PresenceMsg) {
        match m {
            PresenceMsg::Batch { node, full, spaces } => {
                self.presence
                    .lock()
                    .take(&node, full, spaces, Instant::now());
            }
            PresenceMsg::Invite {
                space,
                pid,
                by,
                by_name,
                expires_ms,
                ..
            } => {
                if let Some(host) = self.host() {
                    host.set_invitation(space, pid, Some((by, by_name, expires_ms)));
                }
            }
            PresenceMsg::Answered { space, pid, .. } => {
                if let Some(host) = self.host() {
                    host.set_invitation(space, pid, None);
                }
            }
        }
    }

    pub(super) fn remote_presence_of(&self, space: SpaceId, cap: usize) -> (Vec<Present>, u64) {
        let p = self.presence.lock();
        (p.newest(space, cap), p.total(space))
    }

    pub(super) fn remote_name_of(&self, space: SpaceId, pid: ParticipantId) -> Option<String> {
        self.presence.lock().name(space, pid)
    }

    pub(super) fn remote_joins_of(&self, space: SpaceId) -> Vec<(String, u64)> {
        self.presence.lock().joins(space)
    }

    pub(super) fn share_invitation_with_all(
        &self,
        space: SpaceId,
        pid: ParticipantId,
        invite: Option<(ParticipantId, &str, i64)>,
    ) {
        let node = self.node.clone();
        let msg = match invite {
            Some((by, by_name, expires_ms)) => PresenceMsg::Invite {
                node,
                space,
                pid,
                by,
                by_name: by_name.to_owned(),
                expires_ms,
            },
            None => PresenceMsg::Answered { node, space, pid },
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.publish(PRESENCE_SUBJECT, msg.encode().into()).await;
        });
    }

    pub(super) fn presence_entries(&self) -> usize {
        self.presence.lock().entries()
    }
}
