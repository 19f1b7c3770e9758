//! Webhook endpoints across the cluster: an endpoint created or deleted on
//! any node is written to the key-value bucket `amphi_webhooks` (key: the
//! endpoint's id), and every node mirrors the bucket into its own store.
//! An event is queued and delivered by the node that raised it (the
//! space's owner, mostly), to every endpoint of the cluster; an event
//! raised twice (on two nodes, around a takeover) has the same id, so a
//! receiver drops the duplicate (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use amphi_store::Endpoint;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Nats, bucket};

/// The bucket of the cluster's webhook endpoints.
pub const HOOKS_BUCKET: &str = "amphi_webhooks";

fn encode(e: &Endpoint) -> Bytes {
    json!({
        "id": e.id,
        "url": e.url,
        "secret": e.secret,
        "events": e.events,
        "created_at_ms": e.created_at_ms,
    })
    .to_string()
    .into()
}

fn decode(b: &[u8]) -> Option<Endpoint> {
    let v: Value = serde_json::from_slice(b).ok()?;
    Some(Endpoint {
        id: v["id"].as_str()?.to_owned(),
        url: v["url"].as_str()?.to_owned(),
        secret: v["secret"].as_str()?.to_owned(),
        events: v["events"]
            .as_array()?
            .iter()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect(),
        created_at_ms: v["created_at_ms"].as_i64()?,
    })
}

impl Nats {
    async fn hooks_kv(&self) -> Option<kv::Store> {
        let js = jetstream::new(self.client.clone());
        match bucket(&js, HOOKS_BUCKET, 1, self.replicas).await {
            Ok(kv) => Some(kv),
            Err(e) => {
                tracing::warn!(error = %e, "could not open the webhooks bucket");
                None
            }
        }
    }

    /// Follows the webhooks bucket from its start (again after an error),
    /// mirroring each endpoint into this node's store.
    pub(super) async fn watch_hooks(self: Arc<Self>) {
        let mut from = 0u64;
        loop {
            if let Some(kv) = self.hooks_kv().await {
                let watch = if from == 0 {
                    // Every key's current value first, then each change (`watch_all`
                    // delivers only changes: a node started after a space or an
                    // endpoint was written would not know it until it changed).
                    kv.watch_with_history(">").await
                } else {
                    kv.watch_all_from_revision(from + 1).await
                };
                match watch {
                    Ok(mut w) => {
                        while let Some(entry) = w.next().await {
                            let Ok(e) = entry else { break };
                            from = from.max(e.revision);
                            let Some(host) = self.host() else { continue };
                            match e.operation {
                                kv::Operation::Put => {
                                    if let Some(ep) = decode(&e.value) {
                                        host.adopt_endpoint(e.key.clone(), Some(ep));
                                    }
                                }
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    host.adopt_endpoint(e.key.clone(), None);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not watch the webhooks bucket"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Writes (or deletes) an endpoint for every node.
    pub(super) fn share_endpoint_with_all(self: &Arc<Self>, id: &str, e: Option<&Endpoint>) {
        let me = self.clone();
        let id = id.to_owned();
        let value = e.map(encode);
        tokio::spawn(async move {
            let Some(kv) = me.hooks_kv().await else {
                return;
            };
            let done = match value {
                Some(v) => kv.put(&id, v).await.map(|_| ()).map_err(|e| e.to_string()),
                None => kv.delete(&id).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = done {
                tracing::warn!(endpoint = %id, error = %e, "could not share a webhook endpoint");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_roundtrip() {
        let e = Endpoint {
            id: "ep_1".into(),
            url: "http://127.0.0.1:9/x".into(),
            secret: "whsec_AAAA".into(),
            events: vec!["space.started".into()],
            created_at_ms: 5,
        };
        assert_eq!(decode(&encode(&e)), Some(e));
        assert_eq!(decode(b"{}"), None);
    }
}
