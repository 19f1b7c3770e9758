#![no_main]
//! Bearer tokens from requests, checked with a fixed key. A random string
//! almost never carries a valid HMAC, so half the inputs are signed here
//! first: the fuzzer then reaches the claims' JSON and the expiry check
//! (what a holder of an operator identity key could send).
//! Properties: a token verified once verifies again after re-signing its
//! claims, to the same claims; an expired or unsigned one never verifies.
use amphi_core::token::{Claims, IdentityClaims, TokenKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: [u8; 32] = [9; 32];
const NOW: u64 = 1_700_000_000;

/// `header.payload.signature` over any header and payload bytes.
fn signed(header: &[u8], payload: &[u8]) -> String {
    let mut t = URL_SAFE_NO_PAD.encode(header);
    t.push('.');
    t.push_str(&URL_SAFE_NO_PAD.encode(payload));
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(&KEY).expect("any key length");
    mac.update(t.as_bytes());
    t.push('.');
    t.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    t
}

fuzz_target!(|data: &[u8]| {
    let key = TokenKey::from_bytes(KEY);
    let token = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            // Claims JSON signed with the key; the header too when the
            // input has a NUL separating the two.
            match rest.iter().position(|b| *b == 0) {
                Some(i) => signed(&rest[..i], &rest[i + 1..]),
                None => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
            }
        }
        Some((_, rest)) => match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        },
        None => return,
    };
    if let Ok(c) = key.verify::<Claims>(&token, NOW) {
        assert!(c.exp > NOW);
        let again = key.verify::<Claims>(&key.sign(&c), NOW);
        assert_eq!(again.as_ref(), Ok(&c), "re-signed claims do not verify");
        assert!(
            key.verify::<Claims>(&token, c.exp).is_err(),
            "an expired token verified"
        );
        assert!(
            TokenKey::from_bytes([8; 32])
                .verify::<Claims>(&token, NOW)
                .is_err()
        );
    }
    if let Ok(c) = key.verify::<IdentityClaims>(&token, NOW) {
        let again = key.verify::<IdentityClaims>(&key.sign(&c), NOW);
        assert_eq!(again.as_ref(), Ok(&c), "re-signed identity does not verify");
    }
});
