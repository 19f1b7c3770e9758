//! The cluster without IO: which NATS subjects and key-value keys amphi
//! uses, the bytes of the messages nodes exchange, and every decision a
//! node takes about the others, as state machines with time as an input:
//! who owns a space ([`Ownership`], over the [`Lease`] rules), when to be
//! an edge of a space ([`Edges`]), whether the node is cut off
//! ([`Partition`]), and the audience summed from the other nodes' reports
//! ([`Audience`]). The async shell (`cluster.rs` of `amphi-node`) moves
//! these over a real NATS connection; everything that parses bytes from the
//! network lives here, bounded and fuzzed.
//!
//! | subject / key                     | what                                        |
//! |-----------------------------------|---------------------------------------------|
//! | `amphi.space.<id>.frames`         | the origin's program frames, one per message |
//! | `amphi.space.<id>.history`        | request: frames since a seq, from the origin |
//! | `amphi.space.<id>.backfill`       | request: frames since a seq, from every node  |
//! | `amphi.node.<node>.http`          | request: an API call forwarded to the owner  |
//! | `amphi.counts`                    | each node's listeners and reactions, 1/s     |
//! | `amphi.presence`                  | each node's presence changes (2/s), invitations |
//! | KV `amphi_spaces` / `<id>`        | the space's rules state (JSON), owner-written |
//! | KV `amphi_leases` / `<id>`        | who owns the space, renewed every 1 s        |
//! | KV `amphi_replays` / `<id>`       | where a space's replay was cut, once ready   |
//! | KV `amphi_webhooks` / `<ep id>`   | webhook endpoints (node: cluster/nats/hooks) |
//! | KV `amphi_config` / `token_key`…  | secrets every node shares                    |

pub mod audience;
pub mod backfill;
pub mod edges;
pub mod forward;
pub mod frames;
pub mod lease;
pub mod orphans;
pub mod ownership;
pub mod partition;
pub mod presence;
mod reader;

use amphi_core::SpaceId;

pub use audience::{Audience, Tally};
pub use edges::{EdgeAction, Edges};
pub use forward::{ForwardReply, ForwardRequest};
pub use frames::{decode_frame, decode_frames, encode_frame, encode_frames};
pub use lease::{Lease, LeaseDecision, Sightings};
pub use orphans::Orphans;
pub use ownership::{Claim, LeaseWrite, Ownership, OwnershipEvent, WriteResult};
pub use partition::{Partition, STALE_AFTER};

/// Errors of the cluster's message codecs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message too short ({0} bytes)")]
    Short(usize),
    #[error("unknown message version {0}")]
    Version(u8),
    #[error("message truncated at {0}")]
    Truncated(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("field {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("field {0} is too long")]
    TooLong(&'static str),
}

/// Key-value bucket of the spaces' rules state.
pub const SPACES_BUCKET: &str = "amphi_spaces";
/// Key-value bucket of ownership leases.
pub const LEASES_BUCKET: &str = "amphi_leases";
/// Key-value bucket of published replays: space → the URL of the node
/// that cut it (written once, when the replay is ready).
pub const REPLAYS_BUCKET: &str = "amphi_replays";
/// Key-value bucket of shared secrets.
pub const CONFIG_BUCKET: &str = "amphi_config";
/// Subject of the per-node count reports.
pub const COUNTS_SUBJECT: &str = "amphi.counts";
/// Subject of an owner's asks to vouch for it ([`Ownership::vouch`]): the
/// payload is the asking node's id, each node answers with its own.
pub const VOUCH_SUBJECT: &str = "amphi.lease.vouch";

/// Subject of a space's program frames.
pub fn frames_subject(space: SpaceId) -> String {
    format!("amphi.space.{space}.frames")
}

/// Subject of a space's history requests (answered by the origin).
pub fn history_subject(space: SpaceId) -> String {
    format!("amphi.space.{space}.history")
}

/// Subject of the API calls forwarded to `node`.
pub fn node_http_subject(node: &str) -> String {
    format!("amphi.node.{node}.http")
}

/// The key of a space in the spaces and leases buckets.
pub fn space_key(space: SpaceId) -> String {
    space.to_string()
}

/// A history request: the frames from `from_seq` on.
pub fn encode_history_request(from_seq: u64) -> [u8; 8] {
    from_seq.to_be_bytes()
}

/// Decodes a history request.
pub fn decode_history_request(b: &[u8]) -> Result<u64, WireError> {
    let a: [u8; 8] = b.try_into().map_err(|_| WireError::Short(b.len()))?;
    Ok(u64::from_be_bytes(a))
}

/// One node's report, published on [`COUNTS_SUBJECT`] about once a second.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountsReport {
    /// The reporting node.
    pub node: String,
    /// Per space: listener streams on the node now, and the reactions its
    /// clients sent since the previous report.
    pub spaces: Vec<SpaceCounts>,
}

/// One space's line in a [`CountsReport`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpaceCounts {
    pub space: SpaceId,
    pub listeners: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<(String, u64)>,
    /// The reporting node mixes the space (it is its origin).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixing: bool,
}

/// Reports bigger than this are refused (about 20 000 spaces per node).
pub const MAX_COUNTS_REPORT: usize = 1 << 20;

impl CountsReport {
    /// The JSON of the report.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a report; `None` for anything malformed or oversized.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() > MAX_COUNTS_REPORT {
            return None;
        }
        serde_json::from_slice(b).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_per_space_and_per_node() {
        let id = SpaceId(0x0123_4567_89ab_cdef);
        assert_eq!(frames_subject(id), "amphi.space.0123456789abcdef.frames");
        assert_eq!(history_subject(id), "amphi.space.0123456789abcdef.history");
        assert_eq!(node_http_subject("n1"), "amphi.node.n1.http");
    }

    #[test]
    fn counts_reports_roundtrip_and_refuse_garbage() {
        let r = CountsReport {
            node: "a".into(),
            spaces: vec![SpaceCounts {
                space: SpaceId(7),
                listeners: 1200,
                reactions: vec![("👏".into(), 3)],
                mixing: true,
            }],
        };
        assert_eq!(CountsReport::decode(&r.encode()), Some(r));
        assert_eq!(CountsReport::decode(b"{\"node\":1}"), None);
        assert_eq!(CountsReport::decode(b"\xff"), None);
    }

    #[test]
    fn history_requests_are_eight_bytes() {
        assert_eq!(decode_history_request(&encode_history_request(42)), Ok(42));
        assert_eq!(decode_history_request(b"1234"), Err(WireError::Short(4)));
    }
}
