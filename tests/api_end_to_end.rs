//! The whole control API over real HTTP against a real `amphi serve`,
//! including a kill -9 and restart with the space live and its stage intact.

mod common;

use common::{ADMIN, Server, call, join};
use serde_json::json;

fn stage_names(body: &serde_json::Value) -> Vec<(String, String, bool)> {
    body["stage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
                m["muted"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn whole_api_journey_survives_kill_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(tmp.path(), &[]);
    let u = |p: &str| s.url(p);

    // Create: without and with a wrong admin token, then properly.
    let r = call(
        "POST",
        &u("/api/v1/spaces"),
        None,
        Some(json!({"title": "Town hall"})),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    let r = call(
        "POST",
        &u("/api/v1/spaces"),
        Some("nope"),
        Some(json!({"title": "Town hall"})),
    );
    assert_eq!(r.status, 401);
    let r = call(
        "POST",
        &u("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "Town hall", "max_stage": 99})),
    );
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = call(
        "POST",
        &u("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "Town hall", "host_name": "Hana"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["space"]["id"].as_str().unwrap().to_owned();
    let host = r.body["host"]["token"].as_str().unwrap().to_owned();
    let host_pid = r.body["host"]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.body["space"]["state"], "scheduled");
    let sp = |p: &str| u(&format!("/api/v1/spaces/{id}{p}"));

    // Listener joins and tries host actions.
    let (lis_pid, lis) = join(&s, &id, "Lee");
    assert_eq!(call("POST", &sp("/start"), Some(&lis), None).status, 403);
    assert_eq!(call("POST", &sp("/end"), Some(&lis), None).status, 403);
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/participants/{host_pid}/mute")),
            Some(&lis),
            None
        )
        .status,
        403
    );
    assert_eq!(
        call("POST", &sp(&format!("/stage/{lis_pid}")), Some(&lis), None).status,
        403
    );

    // Host starts; listener raises a hand; host brings them on stage.
    let r = call("POST", &sp("/start"), Some(&host), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "live");
    let r = call("POST", &sp("/hand"), Some(&lis), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["hands_raised"][0]["name"], "Lee");
    let r = call("POST", &sp(&format!("/stage/{lis_pid}")), Some(&host), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        stage_names(&r.body),
        vec![
            ("Hana".into(), "host".into(), false),
            ("Lee".into(), "speaker".into(), false)
        ]
    );
    assert_eq!(r.body["hands_raised"].as_array().unwrap().len(), 0);

    // Mute by host; host cannot unmute; self can.
    let mute = sp(&format!("/participants/{lis_pid}/mute"));
    let unmute = sp(&format!("/participants/{lis_pid}/unmute"));
    assert_eq!(call("POST", &mute, Some(&host), None).status, 200);
    let r = call("POST", &unmute, Some(&host), None);
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["code"], "forbidden");
    let r = call("POST", &unmute, Some(&lis), None);
    assert_eq!(r.status, 200);
    assert!(!stage_names(&r.body)[1].2);

    // Co-host rules: appoint Lee; a co-host cannot appoint or end; max 2.
    let (p2, t2) = join(&s, &id, "Max");
    let (p3, _t3) = join(&s, &id, "Ola");
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/cohosts/{lis_pid}")),
            Some(&lis),
            None
        )
        .status,
        403
    );
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/cohosts/{lis_pid}")),
            Some(&host),
            None
        )
        .status,
        200
    );
    assert_eq!(
        call("POST", &sp(&format!("/cohosts/{p2}")), Some(&lis), None).status,
        403
    );
    assert_eq!(call("POST", &sp("/end"), Some(&lis), None).status, 403);
    // Max raised a hand; the co-host brings them up and mutes them.
    assert_eq!(call("POST", &sp("/hand"), Some(&t2), None).status, 200);
    assert_eq!(
        call("POST", &sp(&format!("/stage/{p2}")), Some(&lis), None).status,
        200
    );
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/participants/{p2}/mute")),
            Some(&lis),
            None
        )
        .status,
        200
    );
    // Ola never raised a hand nor connected: unknown to the space.
    assert_eq!(
        call("POST", &sp(&format!("/stage/{p3}")), Some(&host), None).status,
        404
    );
    // A co-host cannot remove the host.
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/participants/{host_pid}/remove")),
            Some(&lis),
            Some(json!({"ban": true}))
        )
        .status,
        403
    );

    // Remove with ban: every right is gone at once.
    let r = call(
        "POST",
        &sp(&format!("/participants/{p2}/remove")),
        Some(&host),
        Some(json!({"ban": true})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(call("POST", &sp("/hand"), Some(&t2), None).status, 403);
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/participants/{p2}/unmute")),
            Some(&t2),
            None
        )
        .status,
        403
    );
    assert_eq!(
        call(
            "POST",
            &sp("/reactions"),
            Some(&t2),
            Some(json!({"emoji": "👏"}))
        )
        .status,
        403
    );
    let r = call(
        "POST",
        &sp("/join"),
        Some(&t2),
        Some(json!({"name": "Max again"})),
    );
    assert_eq!(r.status, 403, "a banned participant rejoined: {:?}", r.body);

    // Reactions from a participant in good standing.
    assert_eq!(
        call(
            "POST",
            &sp("/reactions"),
            Some(&lis),
            Some(json!({"emoji": "👏"}))
        )
        .status,
        202
    );
    assert_eq!(
        call(
            "POST",
            &sp("/reactions"),
            Some(&lis),
            Some(json!({"emoji": "hello"}))
        )
        .status,
        400
    );

    // Restart with kill -9: the space is live with its stage intact.
    let before = call("GET", &sp(""), None, None).body;
    s.kill();
    let s = Server::start_in(tmp.path(), &[]);
    let sp = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let after = call("GET", &sp(""), None, None);
    assert_eq!(after.status, 200);
    assert_eq!(after.body["state"], "live");
    assert_eq!(stage_names(&after.body), stage_names(&before));
    assert_eq!(
        stage_names(&after.body)[1],
        ("Lee".into(), "cohost".into(), false)
    );
    // Tokens minted before the restart still work, and the ban holds.
    assert_eq!(
        call(
            "POST",
            &sp(&format!("/participants/{lis_pid}/mute")),
            Some(&lis),
            None
        )
        .status,
        200
    );
    assert_eq!(call("POST", &sp("/hand"), Some(&t2), None).status, 403);

    // End; start after end is refused.
    let r = call("POST", &sp("/end"), Some(&host), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "ended");
    let r = call("POST", &sp("/start"), Some(&host), None);
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "conflict");
    let list = call("GET", &s.url("/api/v1/spaces?state=ended"), None, None);
    assert!(
        list.body["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
    );
}

#[test]
fn bad_input_gets_clear_json_errors() {
    let s = Server::start(&[]);
    let (id, host, _) = common::live_space(&s, "Bad input");
    let sp = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let client = reqwest::blocking::Client::new();

    // Malformed JSON, wrong types, wrong content type, oversized body.
    let r = client
        .post(s.url("/api/v1/spaces"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"title\":")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": 42})),
    );
    assert_eq!(r.status, 400);
    let r = client
        .post(s.url("/api/v1/spaces"))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    let big = format!("{{\"title\": \"{}\"}}", "x".repeat(200_000));
    let r = client
        .post(s.url("/api/v1/spaces"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "too_large");
    // A declared body over the cap is refused before it is read: no
    // `100 Continue` invites the client to send 100 MB for nothing.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            c,
            "POST /api/v1/spaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100000000\r\n\r\n"
        )
        .unwrap();
        let mut got = vec![0u8; 512];
        let n = c.read(&mut got).unwrap_or(0);
        let head = String::from_utf8_lossy(&got[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
        assert!(head.contains("too_large"), "{head}");
    }

    // Unknown spaces and participants.
    assert_eq!(
        call("GET", &s.url("/api/v1/spaces/0000000000000000"), None, None).status,
        404
    );
    assert_eq!(
        call("GET", &s.url("/api/v1/spaces/not-an-id"), None, None).status,
        404
    );
    assert_eq!(
        call("POST", &sp("/stage/zzzz"), Some(&host), None).status,
        404
    );
    assert_eq!(call("GET", &s.url("/nope"), None, None).status, 404);

    // Tokens: missing, garbage, forged, alg none, another space's.
    assert_eq!(call("POST", &sp("/hand"), None, None).status, 401);
    assert_eq!(
        call("POST", &sp("/hand"), Some("garbage"), None).status,
        401
    );
    let mut parts: Vec<String> = host.split('.').map(str::to_owned).collect();
    parts[2] = "AAAA".into();
    assert_eq!(
        call("POST", &sp("/end"), Some(&parts.join(".")), None).status,
        401
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), parts[1]);
    let r = call("POST", &sp("/end"), Some(&none), None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "invalid_token");
    let (other, _, _) = common::live_space(&s, "Other");
    assert_eq!(
        call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{other}/end")),
            Some(&host),
            None
        )
        .status,
        401
    );

    // Wrong state and bad query.
    assert_eq!(call("POST", &sp("/start"), Some(&host), None).status, 409);
    assert_eq!(
        call("GET", &s.url("/api/v1/spaces?state=nonsense"), None, None).status,
        400
    );
    let r = call("POST", &sp("/join"), None, Some(json!({"name": ""})));
    assert_eq!(r.status, 400);

    // The server is still fine.
    assert_eq!(call("GET", &s.url("/healthz"), None, None).status, 200);
    let m = call("GET", &s.url("/metrics"), None, None);
    let text = m.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(
            "amphi_http_request_duration_seconds_count{route=\"/api/v1/spaces\",status=\"413\"}"
        ),
        "{text}"
    );
    assert!(text.contains("amphi_spaces{state=\"live\"} 2"));
}

#[test]
fn openapi_documents_every_route() {
    let s = Server::start(&[]);
    let doc = call("GET", &s.url("/api/v1/openapi.json"), None, None);
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().unwrap();
    assert!(paths.len() >= 15);
    // Every documented operation is routed: it never answers "no such route".
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "0000000000000000")
                .replace("{pid}", "0000000000000001");
            let r = call(&method.to_uppercase(), &s.url(&concrete), None, None);
            assert_ne!(
                r.body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(r.status, 405, "{method} {path}");
        }
    }
}
