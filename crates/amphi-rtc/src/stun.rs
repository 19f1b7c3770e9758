//! Just enough STUN (RFC 8489) to route a datagram to its session: is it a
//! STUN message, and which local ICE ufrag does its USERNAME name.
//!
//! str0m parses and authenticates the message afterwards; this only reads
//! the header and walks the attributes, bounds-checked, never panicking and
//! never allocating.

/// The magic cookie of every RFC 5389+ STUN message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Size of the STUN header.
const HEADER: usize = 20;
/// The USERNAME attribute.
const ATTR_USERNAME: u16 = 0x0006;
/// Longest USERNAME (RFC 8489 §14.3: < 509 bytes).
const MAX_USERNAME: usize = 513;

/// What the first bytes of a datagram say it is (RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A well-formed STUN message; `ufrag` is the local (receiver's) ICE
    /// ufrag from its USERNAME, when it has one.
    Stun { ufrag: Option<&'a str> },
    /// Not STUN: DTLS, SRTP/SRTCP, or garbage (str0m tells them apart).
    Other,
}

/// Classifies one datagram (or one RFC 4571 frame).
pub fn classify(b: &[u8]) -> Kind<'_> {
    match stun_ufrag(b) {
        Some(ufrag) => Kind::Stun { ufrag },
        None => Kind::Other,
    }
}

/// `Some(ufrag)` if `b` is a STUN message (`ufrag` from USERNAME, if any),
/// `None` if it is not STUN.
fn stun_ufrag(b: &[u8]) -> Option<Option<&str>> {
    if b.len() < HEADER || b[0] & 0xC0 != 0 || b[4..8] != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len % 4 != 0 || HEADER + len > b.len() {
        return None;
    }
    let mut attrs = &b[HEADER..HEADER + len];
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + alen)?;
        if kind == ATTR_USERNAME {
            if alen > MAX_USERNAME {
                return Some(None);
            }
            let name = std::str::from_utf8(value).ok();
            // ICE: USERNAME is "receiver-ufrag:sender-ufrag" (RFC 8445
            // §7.2.2); the receiver is us.
            return Some(name.and_then(|n| n.split_once(':')).map(|(local, _)| local));
        }
        let padded = alen.div_ceil(4) * 4;
        attrs = attrs.get(4 + padded..)?;
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A binding request with the given USERNAME and a dummy
    /// PRIORITY attribute before it.
    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attrs = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn reads_the_local_ufrag() {
        let m = binding(b"srv1:cli2");
        assert_eq!(
            classify(&m),
            Kind::Stun {
                ufrag: Some("srv1")
            }
        );
        let m = binding(b"abcdefgh12345678:x");
        assert_eq!(
            classify(&m),
            Kind::Stun {
                ufrag: Some("abcdefgh12345678")
            }
        );
    }

    #[test]
    fn stun_without_an_ice_username() {
        assert_eq!(classify(&binding(b"nocolon")), Kind::Stun { ufrag: None });
        assert_eq!(
            classify(&binding(&[0xff, b':'])),
            Kind::Stun { ufrag: None }
        );
        let mut indication = vec![0x00, 0x11, 0, 0];
        indication.extend_from_slice(&MAGIC_COOKIE);
        indication.extend_from_slice(&[0; 12]);
        assert_eq!(classify(&indication), Kind::Stun { ufrag: None });
    }

    #[test]
    fn not_stun() {
        assert_eq!(classify(&[]), Kind::Other);
        // DTLS record, RTP header.
        assert_eq!(
            classify(&[
                22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            Kind::Other
        );
        assert_eq!(classify(&[0x80; 40]), Kind::Other);
        // Wrong cookie.
        let mut m = binding(b"a:b");
        m[4] = 0;
        assert_eq!(classify(&m), Kind::Other);
        // Length past the end.
        let mut m = binding(b"a:b");
        m[3] = m[3].wrapping_add(4);
        assert_eq!(classify(&m), Kind::Other);
        // An attribute running past the message.
        let mut m = binding(b"a:b");
        let at = HEADER + 8 + 2;
        m[at] = 0x7f;
        assert_eq!(classify(&m), Kind::Other);
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = classify(&b);
        }

        #[test]
        fn never_panics_on_stun_shaped_input(
            attrs in proptest::collection::vec(any::<u8>(), 0..300),
            len in any::<u16>(),
        ) {
            let mut m = vec![0x00, 0x01];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&MAGIC_COOKIE);
            m.extend_from_slice(&[0; 12]);
            m.extend_from_slice(&attrs);
            let _ = classify(&m);
        }

        #[test]
        fn finds_any_ufrag(local in "[a-zA-Z0-9+/]{4,32}", remote in "[a-zA-Z0-9+/]{4,32}") {
            let m = binding(format!("{local}:{remote}").as_bytes());
            prop_assert_eq!(classify(&m), Kind::Stun { ufrag: Some(local.as_str()) });
        }
    }
}
