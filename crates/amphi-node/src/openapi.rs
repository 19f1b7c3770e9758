//! The OpenAPI document, generated from the route table below. The same
//! table is checked against the live router by the API tests, so a route
//! cannot be documented without existing, nor exist without documentation.

use serde_json::{Map, Value, json};

/// One documented operation.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// `admin`, `participant`, or `none`.
    pub auth: &'static str,
    /// Name of the request body schema, if any.
    pub body: Option<&'static str>,
    pub status: u16,
}

macro_rules! ep {
    ($m:literal, $p:literal, $auth:literal, $body:expr, $status:literal, $s:literal) => {
        Endpoint {
            method: $m,
            path: $p,
            summary: $s,
            auth: $auth,
            body: $body,
            status: $status,
        }
    };
}

/// Every operation of the v1 API.
pub const ENDPOINTS: &[Endpoint] = &[
    ep!(
        "post",
        "/api/v1/spaces",
        "admin",
        Some("CreateSpace"),
        201,
        "Create a space; returns it and the host's token"
    ),
    ep!(
        "get",
        "/api/v1/spaces",
        "none",
        None,
        200,
        "List public spaces, optionally ?state=live|scheduled|ended"
    ),
    ep!(
        "get",
        "/api/v1/spaces/{id}",
        "none",
        None,
        200,
        "A space's state, stage, audience size and hands"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/start",
        "participant",
        None,
        200,
        "Go live (host or co-host)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/end",
        "participant",
        None,
        200,
        "End the space (host)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/join",
        "none",
        Some("Join"),
        200,
        "Join as a listener; returns a token and the stream URLs"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/hand",
        "participant",
        None,
        200,
        "Raise your hand"
    ),
    ep!(
        "delete",
        "/api/v1/spaces/{id}/hand",
        "participant",
        None,
        200,
        "Lower your hand"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/stage/{pid}",
        "participant",
        None,
        200,
        "Bring a participant on stage (host, co-host)"
    ),
    ep!(
        "delete",
        "/api/v1/spaces/{id}/stage/{pid}",
        "participant",
        None,
        200,
        "Move to the audience (host, co-host, self)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/cohosts/{pid}",
        "participant",
        None,
        200,
        "Appoint a co-host (host)"
    ),
    ep!(
        "delete",
        "/api/v1/spaces/{id}/cohosts/{pid}",
        "participant",
        None,
        200,
        "Dismiss a co-host (host)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/participants/{pid}/mute",
        "participant",
        None,
        200,
        "Mute (host, co-host, self)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/participants/{pid}/unmute",
        "participant",
        None,
        200,
        "Unmute (self only)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/participants/{pid}/remove",
        "participant",
        Some("Remove"),
        200,
        "Remove, optionally ban (host, co-host)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/reactions",
        "participant",
        Some("React"),
        202,
        "React with an emoji (rate limited, aggregated)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/participants/{pid}/noise_suppression",
        "participant",
        Some("NoiseSuppression"),
        200,
        "Noise suppression on or off for a speaker (host, co-host, or the speaker)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/clips",
        "participant",
        None,
        201,
        "Clip the last 30 s of the live program (any participant; rate limited per participant and per space): {clip: {id, page, audio, hls}}"
    ),
    ep!(
        "get",
        "/c/{clip}",
        "none",
        None,
        200,
        "A clip's share page (player, title, transcript, OpenGraph tags)"
    ),
    ep!(
        "get",
        "/c/{clip}/audio.opus",
        "none",
        None,
        200,
        "A clip as one Ogg Opus file"
    ),
    ep!(
        "get",
        "/c/{clip}/hls/clip.m3u8",
        "none",
        None,
        200,
        "A clip as an HLS VOD (fMP4)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/token",
        "participant",
        None,
        200,
        "A fresh token: the bearer's own, or the host's with the admin token"
    ),
    ep!(
        "get",
        "/api/v1/spaces/{id}/events",
        "participant",
        None,
        101,
        "WebSocket: snapshot, then coalesced updates"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/whip",
        "participant",
        None,
        201,
        "WHIP: publish audio (stage members); body application/sdp"
    ),
    ep!(
        "get",
        "/spaces/{id}/live.opus",
        "none",
        None,
        200,
        "Ogg/Opus live stream (Icecast-style)"
    ),
    ep!(
        "get",
        "/spaces/{id}/live.ws",
        "none",
        None,
        101,
        "WebSocket program frames; ?from_seq= resumes"
    ),
    ep!(
        "get",
        "/api/v1/spaces/{id}/audience",
        "participant",
        None,
        200,
        "Host/co-host: present named participants across the cluster, newest of the last 500 first, ?limit=&before=, with the total"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/invitations/{pid}",
        "participant",
        None,
        201,
        "Host/co-host: invite a participant present on any node to the stage (60 s to answer)"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/invitations/{pid}/accept",
        "participant",
        None,
        200,
        "The invited: accept, going on stage"
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/invitations/{pid}/decline",
        "participant",
        None,
        200,
        "The invited: decline (nothing changes)"
    ),
    ep!(
        "get",
        "/api/v1/spaces/{id}/stats",
        "participant",
        None,
        200,
        "Analytics (admin, host, co-host), cluster-wide: peak, joins, unique, listening time, series, reactions, replay and clip plays"
    ),
    ep!(
        "post",
        "/api/v1/webhooks",
        "admin",
        Some("CreateWebhook"),
        201,
        "Add a webhook endpoint (for every node of a cluster); returns its secret"
    ),
    ep!(
        "get",
        "/api/v1/webhooks",
        "admin",
        None,
        200,
        "List webhook endpoints"
    ),
    ep!(
        "get",
        "/api/v1/webhooks/{hook}",
        "admin",
        None,
        200,
        "One webhook endpoint"
    ),
    ep!(
        "delete",
        "/api/v1/webhooks/{hook}",
        "admin",
        None,
        204,
        "Delete a webhook endpoint and its log"
    ),
    ep!(
        "get",
        "/api/v1/webhooks/{hook}/deliveries",
        "admin",
        None,
        200,
        "The endpoint's delivery log, newest first, ?limit=&before="
    ),
    ep!(
        "post",
        "/api/v1/spaces/{id}/reminders",
        "participant",
        Some("Remind"),
        201,
        "Remind me: a space.reminder webhook when this scheduled space starts"
    ),
    ep!(
        "delete",
        "/api/v1/spaces/{id}/reminders",
        "participant",
        None,
        204,
        "Cancel my reminder"
    ),
    ep!(
        "get",
        "/oembed",
        "none",
        None,
        200,
        "oEmbed (JSON) for a /s/{id} or /embed/{id} URL: ?url="
    ),
    ep!(
        "patch",
        "/api/v1/spaces/{id}",
        "participant",
        Some("SpaceSettings"),
        200,
        "Change the space's settings (host): captions on or off"
    ),
    ep!(
        "get",
        "/api/v1/spaces/{id}/captions",
        "none",
        None,
        200,
        "The caption cues so far, ?from_ms=&to_ms= (program time), at most ?limit= (1-500) a page; next_from_ms asks for the next"
    ),
    ep!("get", "/metrics", "none", None, 200, "Prometheus metrics"),
    ep!("get", "/healthz", "none", None, 200, "Liveness"),
    ep!("get", "/readyz", "none", None, 200, "Readiness"),
];

fn schemas() -> Value {
    json!({
        "CreateSpace": {"type": "object", "required": ["title"], "properties": {
            "title": {"type": "string", "maxLength": 200},
            "scheduled_for": {"type": "string", "format": "date-time"},
            "max_stage": {"type": "integer", "minimum": 1, "maximum": 50},
            "record": {"type": "boolean"}, "public": {"type": "boolean"},
            "host_name": {"type": "string", "maxLength": 64},
            "require_identity": {"type": "boolean", "description": "joins need an identity token; a ban follows the identity"},
            "noise_suppression": {"type": "boolean", "description": "every speaker's audio through noise suppression (RNNoise, on the server)"},
            "music": {"type": "boolean", "description": "music mode: stereo program up to 128 kbit/s, no speech processing"},
            "captions": {"type": "boolean", "description": "live captions of every speaker (needs a node with --captions-model)"}}},
        "SpaceSettings": {"type": "object", "properties": {
            "captions": {"type": "boolean", "description": "live captions on or off"}}},
        "NoiseSuppression": {"type": "object", "required": ["on"], "properties": {"on": {"type": "boolean"}}},
        "Join": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "identity": {"type": "string", "description": "identity token from the operator's app"}}},
        "Remove": {"type": "object", "properties": {"ban": {"type": "boolean"},
            "hold_address": {"type": "boolean", "description": "with ban, in a space without identities: also refuse joins from the participant's network (default true)"}}},
        "CreateWebhook": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048},
            "events": {"type": "array", "items": {"type": "string", "enum": [
                "space.started", "space.ended", "recording.ready", "clip.created", "participant.removed", "space.reminder"]}}}},
        "Remind": {"type": "object", "properties": {"contact": {"type": "string", "maxLength": 256}}},
        "React": {"type": "object", "required": ["emoji"], "properties": {"emoji": {"type": "string", "maxLength": 16}}},
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}}}},
    })
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let mut op = json!({
            "summary": e.summary,
            "responses": {
                e.status.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if let Some(body) = e.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        match e.auth {
            "admin" => op["security"] = json!([{"admin": []}]),
            "participant" => op["security"] = json!([{"participant": []}]),
            _ => {}
        }
        let params: Vec<Value> = [("id", "^[0-9a-f]{16}$"), ("pid", "^[0-9a-f]{16}$"), ("hook", "^ep_[0-9a-f]{16}$"), ("clip", "^[0-9a-f]{16}$")]
            .iter()
            .filter(|(p, _)| e.path.contains(&format!("{{{p}}}")))
            .map(|(p, pat)| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string", "pattern": pat}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let entry = paths.entry(e.path.to_owned()).or_insert_with(|| json!({}));
        entry[e.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "amphi", "version": env!("CARGO_PKG_VERSION"), "description": "Live audio rooms: see docs/api.md"},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer"},
                "participant": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}
