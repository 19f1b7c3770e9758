//! TURN for speakers behind NATs and firewalls: WHIP answers carry the
//! configured TURN servers as `Link: <turn:…>; rel="ice-server"` headers
//! (RFC 9725 §4.6) with time-limited credentials of the shared-secret TURN
//! REST scheme (coturn's `use-auth-secret`): the username is
//! `<expiry unix time>:<participant>`, the password the base64 HMAC-SHA1
//! of the username under the shared secret.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// TURN servers and the secret they share with this node.
#[derive(Debug, Clone)]
pub struct Turn {
    /// `turn:` / `turns:` URLs (e.g. `turn:turn.example.org:3478?transport=tcp`).
    pub urls: Vec<String>,
    pub secret: String,
    /// How long issued credentials stay valid.
    pub ttl_s: u64,
}

impl Turn {
    /// A username and password valid until `now_s + ttl` for `who`.
    pub fn credentials(&self, who: &str, now_s: u64) -> (String, String) {
        let username = format!("{}:{who}", now_s + self.ttl_s);
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha1>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        (username, password)
    }

    /// The `Link` header values for `who`.
    pub fn links(&self, who: &str, now_s: u64) -> Vec<String> {
        let (user, pass) = self.credentials(who, now_s);
        self.urls
            .iter()
            .map(|u| {
                format!(
                    "<{u}>; rel=\"ice-server\"; username=\"{user}\"; credential=\"{pass}\"; credential-type=\"password\""
                )
            })
            .collect()
    }
}

/// Whether `url` is a TURN URL this node can hand out.
pub fn valid_url(url: &str) -> bool {
    (url.starts_with("turn:") || url.starts_with("turns:"))
        && !url.contains(['<', '>', '"', ' ', '\r', '\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let t = Turn {
            urls: vec!["turn:turn.example.org:3478?transport=tcp".into()],
            secret: "north".into(),
            ttl_s: 3600,
        };
        let (u, p) = t.credentials("00ff", 1_000);
        assert_eq!(u, "4600:00ff");
        // base64(HMAC-SHA1("north", "4600:00ff")), computed independently
        // (python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(
        // hmac.new(b"north", b"4600:00ff", hashlib.sha1).digest()).decode())').
        assert_eq!(p, "juOZMBc0Xw9JvPEbHkHwVegCdRQ=");
        let links = t.links("00ff", 1_000);
        assert_eq!(
            links[0],
            "<turn:turn.example.org:3478?transport=tcp>; rel=\"ice-server\"; username=\"4600:00ff\"; credential=\"juOZMBc0Xw9JvPEbHkHwVegCdRQ=\"; credential-type=\"password\""
        );
    }

    #[test]
    fn only_turn_urls_are_accepted() {
        assert!(valid_url("turn:1.2.3.4:3478"));
        assert!(valid_url("turns:t.example.org:5349?transport=tcp"));
        assert!(!valid_url("http://x"));
        assert!(!valid_url("turn:x>; rel=evil"));
    }
}
