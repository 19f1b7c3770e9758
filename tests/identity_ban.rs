//! With the operator's identity tokens, a ban follows the person: the same
//! identity cannot rejoin with a fresh token.

mod common;

use amphi_core::token::{IdentityClaims, TokenKey};
use common::{Server, call, live_space};
use serde_json::json;

#[test]
fn a_banned_identity_cannot_rejoin() {
    let s = Server::start(&["--identity-key", "operator-secret"]);
    let (id, host, _) = live_space(&s, "Identities");
    let key = TokenKey::derive(b"operator-secret");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let ident = key.sign(&IdentityClaims {
        sub: "user-42".into(),
        name: Some("Troll".into()),
        exp,
    });
    let join = |identity: &str| {
        call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/join")),
            None,
            Some(json!({"name": "Troll", "identity": identity})),
        )
    };

    let r = join(&ident);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let pid = r.body["participant_id"].as_str().unwrap().to_owned();
    let token = r.body["token"].as_str().unwrap().to_owned();
    // The same identity always maps to the same participant.
    assert_eq!(join(&ident).body["participant_id"], pid.as_str());

    assert_eq!(
        call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/hand")),
            Some(&token),
            None
        )
        .status,
        200
    );
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/participants/{pid}/remove")),
        Some(&host),
        Some(json!({"ban": true})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(join(&ident).status, 403, "a banned identity rejoined");

    // Forged identity tokens are refused; a stranger still joins.
    let forged = TokenKey::derive(b"wrong").sign(&IdentityClaims {
        sub: "user-42".into(),
        name: None,
        exp,
    });
    assert_eq!(join(&forged).status, 401);
    let other = key.sign(&IdentityClaims {
        sub: "user-7".into(),
        name: None,
        exp,
    });
    assert_eq!(join(&other).status, 200);
}

#[test]
fn identity_tokens_need_a_configured_key() {
    let s = Server::start(&[]);
    let (id, _, _) = live_space(&s, "No identities");
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/join")),
        None,
        Some(json!({"name": "A", "identity": "x.y.z"})),
    );
    assert_eq!(r.status, 400);
}

/// A POST from the loopback address `from` (127.0.0.0/8 is all ours).
fn post_from(
    from: &str,
    url: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let client = reqwest::blocking::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or_default())
}

/// In a space without identities a ban also holds the banned
/// participant's address for the space's life (a restart included): a
/// fresh join from it is refused, one from another address is not. A
/// moderator can ban without holding the address (a shared NAT).
#[test]
fn a_ban_in_an_anonymous_space_holds_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in(tmp.path(), &[]);
    let (id, host, _) = live_space(&s, "Anonymous");
    let join_from = |s: &Server, from: &str| {
        post_from(
            from,
            &s.url(&format!("/api/v1/spaces/{id}/join")),
            None,
            json!({"name": "Someone"}),
        )
    };
    let ban = |s: &Server, from: &str, hold: bool| {
        let (code, r) = join_from(s, from);
        assert_eq!(code, 200, "{r:?}");
        let (pid, token) = (
            r["participant_id"].as_str().unwrap(),
            r["token"].as_str().unwrap(),
        );
        let hand = s.url(&format!("/api/v1/spaces/{id}/hand"));
        assert_eq!(post_from(from, &hand, Some(token), json!({})).0, 200);
        let r = call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/participants/{pid}/remove")),
            Some(&host),
            Some(json!({"ban": true, "hold_address": hold})),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
    };
    ban(&s, "127.0.0.2", true);
    assert_eq!(
        join_from(&s, "127.0.0.2").0,
        403,
        "the banned address rejoined"
    );
    assert_eq!(join_from(&s, "127.0.0.3").0, 200);
    assert_eq!(join_from(&s, "127.0.0.1").0, 200);
    ban(&s, "127.0.0.4", false);
    assert_eq!(
        join_from(&s, "127.0.0.4").0,
        200,
        "an address not held was refused"
    );
    drop(s);
    let s = Server::start_in(tmp.path(), &[]);
    assert_eq!(
        join_from(&s, "127.0.0.2").0,
        403,
        "the hold was lost in a restart"
    );
    assert_eq!(join_from(&s, "127.0.0.3").0, 200);
}

/// A space that requires identities refuses anonymous joins, and its ban
/// follows the identity to every address and every token.
#[test]
fn an_identity_space_refuses_the_banned_identity_everywhere() {
    let s = Server::start(&["--identity-key", "operator-secret"]);
    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(common::ADMIN),
        Some(json!({"title": "Members", "require_identity": true})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["space"]["id"].as_str().unwrap().to_owned();
    let host = r.body["host"]["token"].as_str().unwrap().to_owned();
    let key = TokenKey::derive(b"operator-secret");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let ident = |sub: &str| {
        key.sign(&IdentityClaims {
            sub: sub.into(),
            name: None,
            exp,
        })
    };
    let url = s.url(&format!("/api/v1/spaces/{id}/join"));
    let (code, r) = post_from("127.0.0.5", &url, None, json!({"name": "Anon"}));
    assert_eq!(code, 401, "an anonymous join was let in: {r:?}");
    let (code, r) = post_from(
        "127.0.0.5",
        &url,
        None,
        json!({"name": "Troll", "identity": ident("u-1")}),
    );
    assert_eq!(code, 200, "{r:?}");
    let pid = r["participant_id"].as_str().unwrap();
    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/participants/{pid}/remove")),
        Some(&host),
        Some(json!({"ban": true})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    for from in ["127.0.0.5", "127.0.0.6", "127.0.0.1"] {
        let (code, _) = post_from(
            from,
            &url,
            None,
            json!({"name": "Troll", "identity": ident("u-1")}),
        );
        assert_eq!(code, 403, "the banned identity rejoined from {from}");
    }
    // The identity space holds people, not addresses.
    let (code, _) = post_from(
        "127.0.0.5",
        &url,
        None,
        json!({"name": "Friend", "identity": ident("u-2")}),
    );
    assert_eq!(code, 200);
    // Creating such a space needs the identity key.
    let plain = Server::start(&[]);
    let r = call(
        "POST",
        &plain.url("/api/v1/spaces"),
        Some(common::ADMIN),
        Some(json!({"title": "x", "require_identity": true})),
    );
    assert_eq!(r.status, 400);
}
