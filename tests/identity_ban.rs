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
