//! What a node asks of "the others", behind one trait: [`Membership`].
//!
//! A lone node ([`Lone`]) owns every space, forwards nothing, and counts
//! only its own listeners. A node in a cluster ([`nats::Nats`], `--nats
//! URL`) asks NATS: who owns a space (leases), the owner's answer to a
//! forwarded call, the state the owners write, the frames of the spaces
//! mixed elsewhere, the other nodes' counts. The node's handlers call the
//! trait and never ask which of the two they have.
//!
//! The dependency runs one way: this module knows nothing of the handlers
//! or the media plane. What a membership needs from the node (adopt a
//! state written elsewhere, start or stop mixing a space it won or lost,
//! cut an edge's outputs from frames, ...) is the [`Host`] trait, which the
//! node implements above this module.

pub mod nats;

use std::sync::Arc;

use amphi_cluster::presence::{Present, SpacePresence};
use amphi_cluster::{SpaceCounts, Tally};
use amphi_core::room::Space;
use amphi_core::{Frame, ParticipantId, SpaceId};
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::ApiError;

/// Who runs a space's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node: run them here.
    Here,
    /// Another node (its id): forward them there.
    Elsewhere(String),
}

/// What the node asks of the others.
pub trait Membership: Send + Sync + 'static {
    /// Starts following the others, once the node can serve (`router`
    /// runs the calls other nodes forward here). Live spaces are resumed
    /// here: on the node that owns them.
    fn start(self: Arc<Self>, host: Arc<dyn Host>, router: Router);

    /// A secret every member shares: the first member's `local` wins.
    fn shared_secret<'a>(
        &'a self,
        name: &'a str,
        local: &'a [u8],
    ) -> BoxFuture<'a, anyhow::Result<Vec<u8>>>;

    /// Who owns `space` now; this node takes it if nobody does (or its
    /// owner is gone).
    fn owner(&self, space: SpaceId) -> BoxFuture<'_, Result<Owner, ApiError>>;

    /// Runs `req` on node `owner` and answers with its response.
    fn forward(&self, owner: String, req: Request) -> BoxFuture<'_, Response>;

    /// Publishes a space's state after a change made here, its owner.
    fn write_state<'a>(&'a self, space: &'a Space) -> BoxFuture<'a, Result<(), ApiError>>;

    /// The space ended here at frame `last_seq` (`recorded`: its replay is
    /// being cut here).
    fn release(&self, space: SpaceId, last_seq: u64, recorded: bool) -> BoxFuture<'_, ()>;

    /// Where the frames of the spaces mixed here go for the others
    /// (`None`: nobody else listens).
    fn frame_sink(&self) -> Option<tokio::sync::mpsc::Sender<(SpaceId, Bytes)>>;

    /// A listener of `space` has been admitted here (or a request for its
    /// HLS is served): make sure the space's outputs exist on this node.
    fn attach(&self, space: SpaceId) -> BoxFuture<'_, ()>;

    /// A reaction sent on this node, for the others' audiences.
    fn note_reaction(&self, space: SpaceId, emoji: &str);

    /// Where a replay cut on another node lives (its base URL).
    fn replay_at(&self, space: SpaceId) -> Option<String>;

    /// Whether another member may have recorded `space` (so a node with
    /// none of its frames must not cut its replay).
    fn recorded_elsewhere(&self, space: SpaceId) -> bool;

    /// Refuses to serve a space (`None`: the list of spaces) whose copy
    /// here may be stale.
    fn check_fresh(&self, space: Option<SpaceId>) -> Result<(), ApiError>;

    /// Whether this node fenced itself out of `space` (it owned it, lost
    /// the cluster, and does not know who owns it now): its listeners are
    /// sent elsewhere and it takes no new ones.
    fn fenced(&self, _space: SpaceId) -> bool {
        false
    }

    /// Whether the node can reach the others.
    fn ready(&self) -> Result<(), ApiError>;

    /// Counters, read at scrape time.
    fn render_metrics(&self, out: &mut crate::metrics::Scrape<'_>);

    /// Participants present in `space` on the other nodes: the newest
    /// `cap` arrivals (newest first) and the total.
    fn remote_presence(&self, _space: SpaceId, _cap: usize) -> (Vec<Present>, u64) {
        (Vec::new(), 0)
    }

    /// The name `pid` is present under on another node (if among the
    /// newest kept).
    fn remote_name(&self, _space: SpaceId, _pid: ParticipantId) -> Option<String> {
        None
    }

    /// Joins of `space` the other nodes answered, per node (cumulative).
    fn remote_joins(&self, _space: SpaceId) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Replay plays of `space` the other nodes served, per node
    /// (cumulative).
    fn remote_plays(&self, _space: SpaceId) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// The other nodes' unique-participant estimates of `space` (opaque
    /// HyperLogLog registers, merged by crate::stats).
    fn remote_uniques(&self, _space: SpaceId) -> Vec<String> {
        Vec::new()
    }

    /// Tells the other nodes that `pid` is invited to the stage of
    /// `space` (`Some((by, by_name, expires_ms))`), or no longer is.
    fn share_invitation(
        &self,
        _space: SpaceId,
        _pid: ParticipantId,
        _invite: Option<(ParticipantId, &str, i64)>,
    ) {
    }

    /// Tells every node of a webhook endpoint created here (`Some`) or
    /// deleted here (`None`), so events raised anywhere reach it.
    fn share_endpoint(self: Arc<Self>, _id: &str, _endpoint: Option<&amphi_store::Endpoint>) {}
}

/// What a membership needs from the node.
pub trait Host: Send + Sync + 'static {
    /// Whether the node knows `space`.
    fn has_space(&self, space: SpaceId) -> bool;
    /// Whether `space` is live.
    fn is_live(&self, space: SpaceId) -> bool;
    /// Whether this node mixes `space` (it is its origin).
    fn is_mixing(&self, space: SpaceId) -> bool;
    /// The live spaces the node knows.
    fn live_spaces(&self) -> Vec<SpaceId>;
    /// Ended spaces whose recording holds frames written by this node.
    fn recorded_here(&self) -> Vec<SpaceId>;
    /// Takes in a space's state written by its owner on another node.
    fn adopt(&self, space: Space);
    /// The replay of `space` is published (on some node).
    fn replay_published(&self, space: SpaceId);
    /// Whether the replay of `space` has been cut here.
    fn replay_cut(&self, space: SpaceId) -> bool;
    /// The last program frame of a space mixed here.
    fn last_seq(&self, space: SpaceId) -> Option<u64>;
    /// The encoded frames of a space mixed here, from `from` on.
    fn history(&self, space: SpaceId, from: u64) -> Option<Bytes>;
    /// This node owns `space` now: if it is live, mix it here, numbering
    /// frames from at least `first_seq` and keeping the outputs it served
    /// as an edge.
    fn become_origin(&self, space: SpaceId, first_seq: u64);
    /// Another node owns `space` now: stop mixing it here.
    fn abandon(&self, space: SpaceId);
    /// This node can no longer prove it owns `space` (cut off from the
    /// cluster): stop mixing and recording it, drop its WHIP sessions and
    /// tell its local listeners to go elsewhere; keep what its HLS holds.
    fn fence(&self, space: SpaceId);
    /// The last frame of `space` the recordings storage holds, as seen
    /// from this node (blocking: it reads storage).
    fn recorded_upto(&self, space: SpaceId) -> Option<u64>;
    /// The frames of `space` this node holds in its recent history (as
    /// its origin or an edge), from `from` on.
    fn recent_frames(&self, space: SpaceId, from: u64) -> Vec<Frame>;
    /// Records `frames` of `space` that its dead origin had not stored
    /// (blocking: it writes storage); nothing if the space is not recorded.
    fn backfill(&self, space: SpaceId, frames: Vec<Frame>);
    /// Whether a speaker of `space` publishes to this node, its origin,
    /// now: a WHIP session here is connected and not closed.
    fn speakers_back(&self, space: SpaceId) -> bool;
    /// Ends `space` as its host would (its origin died and no speaker came
    /// back): listeners get the end, the replay is cut from what storage
    /// holds.
    fn end_orphan(&self, space: SpaceId) -> BoxFuture<'_, ()>;
    /// Fresh outputs for `space`, cut on the media thread from the frames
    /// handed to [`Host::edge_frames`] (it is served as an edge from now
    /// on); false if the space is not live.
    fn open_edge(&self, space: SpaceId) -> bool;
    /// Frames of an edge's space, oldest first (never blocks).
    fn edge_frames(&self, space: SpaceId, frames: Vec<Frame>);
    /// Resolves once the media thread has cut what it was handed before
    /// (at most 1 s), so first listeners find the history.
    fn sync_media(&self) -> BoxFuture<'_, ()>;
    /// The edge feed stops: `ended`, the space ended (listeners get the
    /// end of the stream after the frames already handed over); otherwise
    /// nobody listens and the outputs close. Nothing happens to outputs
    /// the node mixes itself now.
    fn close_edge(&self, space: SpaceId, ended: bool);
    /// Listeners of `space` on this node now.
    fn local_listeners(&self, space: SpaceId) -> u64;
    /// This node's listeners and whether it mixes, per space worth
    /// reporting (reactions left empty).
    fn counts(&self) -> Vec<SpaceCounts>;
    /// The other nodes' listeners of every space, and which spaces some
    /// other node mixes (every space the node knows takes its line, so a
    /// count drops to zero when the last remote listener leaves).
    fn set_audience(&self, tally: &Tally);
    /// Reactions sent on other nodes.
    fn add_reactions(&self, space: SpaceId, reactions: &[(String, u64)]);
    /// This node's presence per space for the others: what changed since
    /// the last call, or (`full`) the newest of every space with someone
    /// present. Also each space's joins answered here.
    fn presence(&self, full: bool) -> Vec<SpacePresence>;
    /// `pid` was invited to the stage of `space` on its owner (`Some((by,
    /// by_name, expires_ms))`), or the invitation was answered (`None`).
    fn set_invitation(
        &self,
        space: SpaceId,
        pid: ParticipantId,
        invite: Option<(ParticipantId, String, i64)>,
    );
    /// A webhook endpoint configured on some node (`None`: deleted):
    /// mirrored into this node's store.
    fn adopt_endpoint(&self, id: String, endpoint: Option<amphi_store::Endpoint>);
}

/// A node on its own: it owns every space, forwards nothing, and its
/// audience is its own listeners.
pub struct Lone;

impl Membership for Lone {
    fn start(self: Arc<Self>, host: Arc<dyn Host>, _router: Router) {
        for space in host.live_spaces() {
            host.become_origin(space, 0);
        }
    }

    fn shared_secret<'a>(
        &'a self,
        _name: &'a str,
        local: &'a [u8],
    ) -> BoxFuture<'a, anyhow::Result<Vec<u8>>> {
        Box::pin(async move { Ok(local.to_vec()) })
    }

    fn owner(&self, _space: SpaceId) -> BoxFuture<'_, Result<Owner, ApiError>> {
        Box::pin(async { Ok(Owner::Here) })
    }

    fn forward(&self, _owner: String, _req: Request) -> BoxFuture<'_, Response> {
        Box::pin(async {
            ApiError::cluster_unavailable("this node is not in a cluster", 1).into_response()
        })
    }

    fn write_state<'a>(&'a self, _space: &'a Space) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    fn release(&self, _space: SpaceId, _last_seq: u64, _recorded: bool) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn frame_sink(&self) -> Option<tokio::sync::mpsc::Sender<(SpaceId, Bytes)>> {
        None
    }

    fn attach(&self, _space: SpaceId) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn note_reaction(&self, _space: SpaceId, _emoji: &str) {}

    fn replay_at(&self, _space: SpaceId) -> Option<String> {
        None
    }

    fn recorded_elsewhere(&self, _space: SpaceId) -> bool {
        false
    }

    fn check_fresh(&self, _space: Option<SpaceId>) -> Result<(), ApiError> {
        Ok(())
    }

    fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn render_metrics(&self, _out: &mut crate::metrics::Scrape<'_>) {}
}

/// Marks a request forwarded by another node (a request extension, which
/// no client can set): it is served here, never forwarded again.
#[derive(Clone, Copy)]
pub(crate) struct Forwarded;

/// The header of a forwarded call (on the cluster's bus only, never read
/// from a client's HTTP) carrying the caller's address, so the owner's
/// per-network limits (hands, offers, reminders) and address bans see the
/// client, not a node that forwards for everyone.
pub(crate) const CLIENT_HEADER: &str = "x-amphi-client";

/// Middleware: a call only a space's owner may run is forwarded there (or,
/// if the owner is gone, this node takes the space over and runs it); a
/// read of a space this node may hold a stale copy of is refused.
pub async fn route_to_owner(
    State(members): State<Arc<dyn Membership>>,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<Forwarded>().is_some() {
        return next.run(req).await;
    }
    let Some(id) = owner_only(req.method(), req.uri().path()) else {
        if let Some(space) = served_space(req.uri().path())
            && let Err(e) = members.check_fresh(space)
        {
            return e.into_response();
        }
        return next.run(req).await;
    };
    match members.owner(id).await {
        Ok(Owner::Elsewhere(node)) => members.forward(node, req).await,
        Ok(Owner::Here) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The space a mutating call acts on, if only its owner may run it.
fn owner_only(method: &axum::http::Method, path: &str) -> Option<SpaceId> {
    use axum::http::Method;
    let rest = path.strip_prefix("/api/v1/spaces/")?;
    let (id, action) = rest.split_once('/')?;
    let first = action.split('/').next().unwrap_or("");
    // A WHIP session's status is the owner's to tell.
    if *method == Method::GET {
        return (first == "whip" && action.len() > "whip/".len())
            .then(|| id.parse().ok())
            .flatten();
    }
    if !matches!(
        *method,
        Method::POST | Method::DELETE | Method::PUT | Method::PATCH
    ) {
        return None;
    }
    matches!(
        first,
        "start"
            | "end"
            | "hand"
            | "stage"
            | "cohosts"
            | "participants"
            | "whip"
            | "invitations"
            | "reminders"
    )
    .then(|| id.parse().ok())
    .flatten()
}

/// For reads of cluster state: `Some(Some(id))` for one space's view,
/// events or HLS, `Some(None)` for the list of spaces.
fn served_space(path: &str) -> Option<Option<SpaceId>> {
    if path == "/api/v1/spaces" {
        return Some(None);
    }
    let rest = path
        .strip_prefix("/api/v1/spaces/")
        .or_else(|| path.strip_prefix("/spaces/"))?;
    let id = rest.split('/').next()?.parse().ok()?;
    Some(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    /// A membership whose answers the test sets: the routing is decided
    /// by the trait alone.
    struct Fixed {
        owner: Owner,
        fresh: bool,
    }

    impl Membership for Fixed {
        fn start(self: Arc<Self>, _host: Arc<dyn Host>, _router: Router) {}
        fn shared_secret<'a>(
            &'a self,
            _name: &'a str,
            local: &'a [u8],
        ) -> BoxFuture<'a, anyhow::Result<Vec<u8>>> {
            Box::pin(async move { Ok(local.to_vec()) })
        }
        fn owner(&self, _space: SpaceId) -> BoxFuture<'_, Result<Owner, ApiError>> {
            let owner = self.owner.clone();
            Box::pin(async move { Ok(owner) })
        }
        fn forward(&self, owner: String, req: Request) -> BoxFuture<'_, Response> {
            Box::pin(
                async move { format!("forwarded {} to {owner}", req.uri().path()).into_response() },
            )
        }
        fn write_state<'a>(&'a self, _space: &'a Space) -> BoxFuture<'a, Result<(), ApiError>> {
            Box::pin(async { Ok(()) })
        }
        fn release(&self, _space: SpaceId, _last_seq: u64, _recorded: bool) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn frame_sink(&self) -> Option<tokio::sync::mpsc::Sender<(SpaceId, Bytes)>> {
            None
        }
        fn attach(&self, _space: SpaceId) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn note_reaction(&self, _space: SpaceId, _emoji: &str) {}
        fn replay_at(&self, _space: SpaceId) -> Option<String> {
            None
        }
        fn recorded_elsewhere(&self, _space: SpaceId) -> bool {
            true
        }
        fn check_fresh(&self, _space: Option<SpaceId>) -> Result<(), ApiError> {
            if self.fresh {
                Ok(())
            } else {
                Err(ApiError::cluster_unavailable("stale", 2))
            }
        }
        fn ready(&self) -> Result<(), ApiError> {
            Ok(())
        }
        fn render_metrics(&self, _out: &mut crate::metrics::Scrape<'_>) {}
    }

    async fn answer(members: Arc<dyn Membership>, method: Method, path: &str) -> (u16, String) {
        let router = Router::new()
            .route("/api/v1/spaces", get(|| async { "list here" }))
            .route("/api/v1/spaces/{id}", get(|| async { "view here" }))
            .route(
                "/api/v1/spaces/{id}/start",
                post(|| async { "started here" }),
            )
            .route("/api/v1/spaces/{id}/join", post(|| async { "joined here" }))
            .layer(axum::middleware::from_fn_with_state(
                members,
                route_to_owner,
            ));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = router.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const SPACE: &str = "/api/v1/spaces/0123456789abcdef";

    #[tokio::test]
    async fn owner_calls_run_where_the_membership_says() {
        let elsewhere: Arc<dyn Membership> = Arc::new(Fixed {
            owner: Owner::Elsewhere("b".into()),
            fresh: true,
        });
        let start = format!("{SPACE}/start");
        assert_eq!(
            answer(elsewhere.clone(), Method::POST, &start).await,
            (200, format!("forwarded {start} to b"))
        );
        // Joins and reads are served by any node.
        let join = format!("{SPACE}/join");
        assert_eq!(
            answer(elsewhere.clone(), Method::POST, &join).await.1,
            "joined here"
        );
        assert_eq!(answer(elsewhere, Method::GET, SPACE).await.1, "view here");
        // A lone node runs everything itself.
        let lone: Arc<dyn Membership> = Arc::new(Lone);
        assert_eq!(
            answer(lone.clone(), Method::POST, &start).await.1,
            "started here"
        );
        assert_eq!(
            answer(lone, Method::GET, "/api/v1/spaces").await.1,
            "list here"
        );
    }

    #[tokio::test]
    async fn a_stale_copy_is_not_served_but_owner_calls_still_route() {
        let stale: Arc<dyn Membership> = Arc::new(Fixed {
            owner: Owner::Here,
            fresh: false,
        });
        assert_eq!(answer(stale.clone(), Method::GET, SPACE).await.0, 503);
        assert_eq!(
            answer(stale.clone(), Method::GET, "/api/v1/spaces").await.0,
            503
        );
        let start = format!("{SPACE}/start");
        assert_eq!(answer(stale, Method::POST, &start).await.1, "started here");
    }

    #[test]
    fn only_owner_actions_are_routed() {
        let id = "0123456789abcdef";
        let p = |s: &str| format!("/api/v1/spaces/{id}/{s}");
        for a in [
            "start",
            "end",
            "hand",
            "stage/0000000000000001",
            "participants/0000000000000001/mute",
            "whip",
            "whip/abc",
        ] {
            assert!(owner_only(&Method::POST, &p(a)).is_some(), "{a}");
        }
        assert!(owner_only(&Method::DELETE, &p("hand")).is_some());
        for a in ["join", "reactions", "events"] {
            assert!(owner_only(&Method::POST, &p(a)).is_none(), "{a}");
        }
        assert!(owner_only(&Method::GET, &p("start")).is_none());
        assert!(owner_only(&Method::GET, &p("whip/abc")).is_some());
        assert!(owner_only(&Method::GET, &p("whip")).is_none());
        assert!(owner_only(&Method::OPTIONS, &p("whip")).is_none());
        assert!(owner_only(&Method::POST, "/api/v1/spaces/nothex/start").is_none());
        assert!(owner_only(&Method::POST, "/api/v1/spaces").is_none());
    }

    #[test]
    fn reads_of_cluster_state_are_recognised() {
        let id: SpaceId = "0123456789abcdef".parse().unwrap();
        assert_eq!(served_space("/api/v1/spaces"), Some(None));
        assert_eq!(
            served_space("/api/v1/spaces/0123456789abcdef"),
            Some(Some(id))
        );
        assert_eq!(
            served_space("/spaces/0123456789abcdef/hls/live.m3u8"),
            Some(Some(id))
        );
        assert_eq!(served_space("/metrics"), None);
        assert_eq!(served_space("/spaces/xyz/live.opus"), None);
    }
}
