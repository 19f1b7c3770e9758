//! Signed participant tokens: compact JWTs with HMAC-SHA256 (`HS256`).
//!
//! A token names a space, a participant and an expiry, so it is verified
//! with no database read. What the participant may do is *not* in the token:
//! that is read from the space's current state on every request, so a
//! removal takes effect at once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{ParticipantId, SpaceId};

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, to bound the work a forged one can cause.
pub const MAX_TOKEN_LEN: usize = 2048;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a participant token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The space the token is for.
    pub space: SpaceId,
    /// The participant.
    pub pid: ParticipantId,
    /// Display name chosen at join.
    pub name: String,
    /// Expiry, seconds since the UNIX epoch.
    pub exp: u64,
    /// Identity subject from the operator's own app, if the join carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idsub: Option<String>,
    /// The network the participant joined from (`a.b.c.d/32`, or the
    /// `/64` of an IPv6 address), so a ban in an anonymous space can hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
}

/// Claims of an identity token minted by the operator's own app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub sub: String,
    #[serde(default)]
    pub name: Option<String>,
    pub exp: u64,
}

/// A space's media key: what `?t=` carries on the URIs of a private
/// space's HLS playlists (live and replay), so a CDN can pass it through.
/// Every listener in the same window gets the same key (the claims hold
/// nothing but the space and the window's end), so a CDN caches one copy
/// of each part, not one per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaClaims {
    /// The space whose media the key opens.
    pub media: SpaceId,
    /// Expiry, seconds since the UNIX epoch.
    pub exp: u64,
}

/// A media key is issued per window of this many seconds and stays valid
/// until the end of the next one (5 to 10 minutes).
pub const MEDIA_WINDOW_S: u64 = 300;

impl MediaClaims {
    /// The key of `space` handed out at `now_s`.
    pub fn current(space: SpaceId, now_s: u64) -> Self {
        MediaClaims {
            media: space,
            exp: (now_s / MEDIA_WINDOW_S + 2) * MEDIA_WINDOW_S,
        }
    }
}

/// Why a token was refused. All map to 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not HS256")]
    UnsupportedAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is for another space")]
    WrongSpace,
}

/// A secret HMAC key.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenKey(bytes)
    }

    /// A key derived from an arbitrary secret (e.g. an operator's shared key).
    pub fn derive(secret: &[u8]) -> Self {
        use sha2::Digest;
        TokenKey(Sha256::digest(secret).into())
    }

    /// The key's bytes, to persist it.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// Signs any serialisable claims as a compact JWT.
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        // Claims are plain structs of strings and numbers: serialising them
        // cannot fail.
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        let mut out = URL_SAFE_NO_PAD.encode(HEADER);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let mut mac = self.mac();
        mac.update(out.as_bytes());
        let sig = mac.finalize().into_bytes();
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig));
        out
    }

    /// Verifies signature, algorithm and expiry, and returns the claims.
    pub fn verify<T: for<'de> Deserialize<'de> + HasExpiry>(
        &self,
        token: &str,
        now_s: u64,
    ) -> Result<T, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed)?;
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed)?;
        let claims: T = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.exp() <= now_s {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Claims that carry an expiry.
pub trait HasExpiry {
    /// Expiry, seconds since the UNIX epoch.
    fn exp(&self) -> u64;
}

impl HasExpiry for Claims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

impl HasExpiry for MediaClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

impl HasExpiry for IdentityClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

/// Compares two secrets in constant time (for the admin token).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> Claims {
        Claims {
            space: SpaceId(1),
            pid: ParticipantId(2),
            name: "Ada".into(),
            exp: 1000,
            idsub: None,
            net: None,
        }
    }

    #[test]
    fn roundtrip_and_expiry() {
        let key = TokenKey::from_bytes([7; 32]);
        let t = key.sign(&claims());
        assert_eq!(key.verify::<Claims>(&t, 999).unwrap(), claims());
        assert_eq!(key.verify::<Claims>(&t, 1000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let key = TokenKey::from_bytes([7; 32]);
        let other = TokenKey::from_bytes([8; 32]);
        let t = other.sign(&claims());
        assert_eq!(key.verify::<Claims>(&t, 0), Err(TokenError::BadSignature));

        // alg: none with an empty signature.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let t = format!("{none_header}.{payload}.");
        assert_eq!(
            key.verify::<Claims>(&t, 0),
            Err(TokenError::UnsupportedAlgorithm)
        );

        // A valid token whose payload was swapped.
        let good = key.sign(&claims());
        let mut forged = claims();
        forged.pid = ParticipantId(1);
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = &forged_payload;
        assert_eq!(
            key.verify::<Claims>(&parts.join("."), 0),
            Err(TokenError::BadSignature)
        );

        assert_eq!(key.verify::<Claims>("a.b", 0), Err(TokenError::Malformed));
        assert_eq!(
            key.verify::<Claims>(&"a".repeat(5000), 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }

    proptest! {
        #[test]
        fn verify_never_panics(s in ".{0,300}") {
            let key = TokenKey::from_bytes([1; 32]);
            let _ = key.verify::<Claims>(&s, 0);
        }

        #[test]
        fn flipping_any_byte_breaks_the_token(idx in 0usize..200, bit in 0u8..7) {
            let key = TokenKey::from_bytes([3; 32]);
            let t = key.sign(&claims());
            let mut bytes = t.into_bytes();
            let i = idx % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(bytes) {
                // Base64 has unused low bits in its last character, so a flip
                // there can decode to the same bytes: only then may it verify.
                if let Ok(c) = key.verify::<Claims>(&s, 0) {
                    prop_assert_eq!(c, claims());
                }
            }
        }
    }
}
