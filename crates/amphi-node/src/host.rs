//! The node as its membership sees it: [`Host`] implemented over the
//! node's spaces and media plane, so the cluster shell can act on the node
//! without importing it (the dependency runs from here down to `cluster`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use amphi_cluster::presence::SpacePresence;
use amphi_cluster::{SpaceCounts, Tally};
use amphi_core::room::{Space, SpaceState};
use amphi_core::{Frame, ParticipantId, SpaceId};
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::app::{App, SpaceCell};
use crate::cluster::Host;

impl App {
    fn cells(&self) -> Vec<Arc<SpaceCell>> {
        self.spaces.read().values().cloned().collect()
    }

    fn state_of(&self, space: SpaceId) -> Option<SpaceState> {
        let cell = self.space(space).ok()?;
        Some(cell.inner.lock().space.state)
    }
}

impl Host for App {
    fn has_space(&self, space: SpaceId) -> bool {
        self.spaces.read().contains_key(&space)
    }

    fn is_live(&self, space: SpaceId) -> bool {
        self.state_of(space) == Some(SpaceState::Live)
    }

    fn is_mixing(&self, space: SpaceId) -> bool {
        self.media.is_mixing(space)
    }

    fn live_spaces(&self) -> Vec<SpaceId> {
        self.cells()
            .into_iter()
            .filter(|c| c.inner.lock().space.state == SpaceState::Live)
            .map(|c| c.id)
            .collect()
    }

    fn recorded_here(&self) -> Vec<SpaceId> {
        self.cells()
            .into_iter()
            .filter(|c| {
                let s = &c.inner.lock().space;
                s.state == SpaceState::Ended && s.record
            })
            .filter(|c| {
                crate::record::last_recorded(self.media.recorder.storage().as_ref(), c.id).is_some()
            })
            .map(|c| c.id)
            .collect()
    }

    fn adopt(&self, space: Space) {
        self.adopt_space(space).sync_gates();
    }

    fn replay_published(&self, space: SpaceId) {
        if let Ok(cell) = self.space(space) {
            cell.replay_is_ready();
        }
    }

    fn replay_cut(&self, space: SpaceId) -> bool {
        self.space(space)
            .is_ok_and(|c| c.replay_ready.load(Ordering::Acquire))
    }

    fn last_seq(&self, space: SpaceId) -> Option<u64> {
        let cell = self.space(space).ok()?;
        let live = cell.live.read().clone()?;
        live.history.lock().last_seq()
    }

    fn history(&self, space: SpaceId, from: u64) -> Option<Bytes> {
        if !self.media.is_mixing(space) {
            return None;
        }
        let cell = self.space(space).ok()?;
        let live = cell.live.read().clone()?;
        let h = live.history.lock();
        Some(amphi_cluster::encode_frames(h.since(from)))
    }

    fn become_origin(&self, space: SpaceId, first_seq: u64) {
        let Ok(cell) = self.space(space) else { return };
        if cell.inner.lock().space.state != SpaceState::Live || self.media.is_mixing(space) {
            return;
        }
        // The outputs this node served as an edge (if it was one) carry on,
        // fed by the mixer from now on; those a fence closed are not reused.
        let live = cell.live.read().clone().filter(|l| !l.is_fenced());
        cell.start_media(&self.media, live, first_seq);
    }

    fn abandon(&self, space: SpaceId) {
        if let Ok(cell) = self.space(space) {
            cell.abandon_media(&self.media);
        }
    }

    fn fence(&self, space: SpaceId) {
        if let Ok(cell) = self.space(space)
            && cell.fence_media(&self.media)
        {
            tracing::warn!(space = %space, "fenced: this node cannot prove its lease; stopped mixing the space");
        }
    }

    fn recorded_upto(&self, space: SpaceId) -> Option<u64> {
        crate::record::last_recorded(self.media.recorder.storage().as_ref(), space)
            .map(|(seq, _)| seq)
    }

    fn recent_frames(&self, space: SpaceId, from: u64) -> Vec<Frame> {
        let Ok(cell) = self.space(space) else {
            return Vec::new();
        };
        let Some(live) = cell.live.read().clone() else {
            return Vec::new();
        };
        let h = live.history.lock();
        h.since(from).filter(|f| f.seq >= from).cloned().collect()
    }

    fn backfill(&self, space: SpaceId, frames: Vec<Frame>) {
        let Ok(cell) = self.space(space) else { return };
        if !cell.inner.lock().space.record || frames.is_empty() {
            return;
        }
        let storage = self.media.recorder.storage();
        match crate::record::put_frames(storage.as_ref(), space, &frames) {
            Ok(()) => tracing::info!(
                space = %space,
                from = frames[0].seq,
                to = frames[frames.len() - 1].seq,
                "recorded the frames the dead origin had not stored, from the other nodes"
            ),
            Err(e) => tracing::error!(space = %space, error = %e, "could not record the backfill"),
        }
    }

    fn speakers_back(&self, space: SpaceId) -> bool {
        // A live session, not a gate (gates outlive their sessions).
        self.media.is_mixing(space) && self.media.publishing(space)
    }

    fn end_orphan(&self, space: SpaceId) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Ok(cell) = self.space(space) else { return };
            let host = {
                let inner = cell.inner.lock();
                if inner.space.state != SpaceState::Live {
                    return;
                }
                inner.space.host
            };
            let actor = amphi_core::token::Claims {
                space,
                pid: host,
                name: "host".into(),
                exp: u64::MAX,
                idsub: None,
                net: None,
            };
            match self
                .command(&cell, &actor, amphi_core::room::Command::End)
                .await
            {
                Ok(_) => {
                    tracing::warn!(space = %space, "ended a space whose origin died: no speaker came back")
                }
                Err(e) => {
                    tracing::error!(space = %space, error = ?e, "could not end an orphaned space")
                }
            }
        })
    }

    fn open_edge(&self, space: SpaceId) -> bool {
        let Ok(cell) = self.space(space) else {
            return false;
        };
        if cell.inner.lock().space.state != SpaceState::Live {
            return false;
        }
        let live = self.media.new_live_media(space);
        // Cut on the media thread, by the same program as a mixed space.
        self.media.start_edge(space, &live);
        *cell.live.write() = Some(live);
        true
    }

    fn edge_frames(&self, space: SpaceId, frames: Vec<Frame>) {
        self.media.remote_frames(space, frames);
    }

    fn sync_media(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.media.sync())
    }

    fn close_edge(&self, space: SpaceId, ended: bool) {
        let Ok(cell) = self.space(space) else { return };
        if self.media.is_mixing(space) {
            return;
        }
        let live = cell.live.write().take();
        if let Some(live) = live {
            // The media thread finishes (or just closes) the outputs after
            // the frames already queued to it.
            self.media.stop_edge(space, &live, ended);
        }
    }

    fn local_listeners(&self, space: SpaceId) -> u64 {
        self.space(space).map_or(0, |c| c.local_listeners())
    }

    fn counts(&self) -> Vec<SpaceCounts> {
        self.cells()
            .into_iter()
            .filter_map(|c| {
                let listeners = c.local_listeners();
                let mixing = self.media.is_mixing(c.id);
                (listeners > 0 || mixing).then(|| SpaceCounts {
                    space: c.id,
                    listeners,
                    reactions: Vec::new(),
                    mixing,
                })
            })
            .collect()
    }

    fn set_audience(&self, tally: &Tally) {
        for c in self.cells() {
            c.remote_listeners.store(
                tally.remote.get(&c.id).copied().unwrap_or(0),
                Ordering::Relaxed,
            );
            let on_air = tally.on_air(c.id, self.media.is_mixing(c.id));
            if c.on_air.swap(on_air, Ordering::AcqRel) != on_air {
                c.dirty.store(true, Ordering::Release);
                if !on_air && c.inner.lock().space.state == SpaceState::Live {
                    tracing::warn!(space = %c.id, "no node mixes this live space (its origin is gone)");
                }
            }
        }
    }

    fn add_reactions(&self, space: SpaceId, reactions: &[(String, u64)]) {
        let Ok(cell) = self.space(space) else { return };
        let mut inner = cell.inner.lock();
        for (emoji, n) in reactions {
            for _ in 0..(*n).min(1000) {
                let _ = inner.reactions.add(emoji);
            }
        }
    }

    fn presence(&self, full: bool) -> Vec<SpacePresence> {
        self.cells()
            .into_iter()
            .filter_map(|c| {
                let (joins, unique, plays, new_plays) = {
                    let mut st = c.stats.lock();
                    // Plays are told in full batches (ended spaces have
                    // no presence deltas).
                    let new_plays = full && st.plays_untold();
                    (
                        st.joins,
                        full.then(|| st.registers()).flatten(),
                        st.replay_plays,
                        new_plays,
                    )
                };
                let mut inner = c.inner.lock();
                let total = inner.presence.total() as u64;
                let (arrived, left) = if full {
                    let all = inner.presence.snapshot();
                    if total == 0
                        && !new_plays
                        && (joins == 0 || inner.space.state != SpaceState::Live)
                    {
                        return None;
                    }
                    (all, Vec::new())
                } else {
                    inner.presence.delta()?
                };
                Some(SpacePresence {
                    space: c.id,
                    total,
                    arrived,
                    left,
                    joins,
                    unique,
                    plays,
                })
            })
            .collect()
    }

    fn set_invitation(
        &self,
        space: SpaceId,
        pid: ParticipantId,
        invite: Option<(ParticipantId, String, i64)>,
    ) {
        let Ok(cell) = self.space(space) else { return };
        {
            let mut inner = cell.inner.lock();
            match invite {
                Some((by, by_name, expires_ms)) => {
                    let inv = crate::audience::Invitation {
                        by,
                        by_name,
                        expires_ms,
                    };
                    inner
                        .presence
                        .invite_anyway(pid, inv, crate::timefmt::now_ms());
                }
                None => inner.presence.drop_invitation(pid),
            }
        }
        cell.dirty.store(true, Ordering::Release);
    }

    fn adopt_endpoint(&self, id: String, endpoint: Option<amphi_store::Endpoint>) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let s = store.lock();
            let done = match endpoint {
                Some(e) => match s.endpoint(&e.id) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => s.add_endpoint(&e),
                    Err(e) => Err(e),
                },
                None => s.delete_endpoint(&id).map(|_| ()),
            };
            if let Err(e) = done {
                tracing::warn!(endpoint = %id, error = %e, "could not mirror a webhook endpoint");
            }
        });
    }
}
