//! TLS 1.3 records sealed and opened outside rustls, from the traffic
//! secrets rustls hands over after the handshake (RFC 8446 §5.2–5.3).
//!
//! A record is `type(0x17) version(0x0303) length(u16)` followed by the
//! AEAD-sealed `content ‖ content_type`, with the nonce the IV XOR the
//! record number and the 5-byte header as additional data.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Bytes a record adds to its content: header, inner content type, tag.
pub const RECORD_OVERHEAD: usize = 5 + 1 + 16;
/// Largest ciphertext a peer may send in one record (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Alert,
    Handshake,
    ApplicationData,
}

impl ContentType {
    fn byte(self) -> u8 {
        match self {
            ContentType::Alert => 21,
            ContentType::Handshake => 22,
            ContentType::ApplicationData => 23,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            21 => Some(ContentType::Alert),
            22 => Some(ContentType::Handshake),
            23 => Some(ContentType::ApplicationData),
            _ => None,
        }
    }
}

/// Bytes `plain` takes once sealed (records of at most 16 KiB each).
pub fn sealed_len(plain: usize) -> usize {
    plain + records_for(plain) as usize * RECORD_OVERHEAD
}

fn records_for(plain: usize) -> u64 {
    plain.div_ceil(MAX_PLAINTEXT) as u64
}

fn key_and_iv(secrets: ConnectionTrafficSecrets) -> Result<(LessSafeKey, [u8; 12]), OpenError> {
    let (alg, key, iv) = match &secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (&aead::CHACHA20_POLY1305, key, iv)
        }
        _ => return Err(OpenError::UnsupportedSuite),
    };
    let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| OpenError::UnsupportedSuite)?;
    let iv: [u8; 12] = iv
        .as_ref()
        .try_into()
        .map_err(|_| OpenError::UnsupportedSuite)?;
    Ok((LessSafeKey::new(key), iv))
}

fn nonce(iv: &[u8; 12], seq: u64) -> Nonce {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(n)
}

/// Seals a connection's outgoing records. Small (a key schedule, an IV and
/// a record number) and deterministic: [`RecordSealer::seal_at`] gives the
/// same bytes for the same record number and content, so a partly written
/// unit can be sealed again instead of kept.
pub struct RecordSealer {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    /// From the transmit half of rustls's extracted secrets.
    pub fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, OpenError> {
        let (key, iv) = key_and_iv(secrets)?;
        Ok(RecordSealer { key, iv, seq })
    }

    /// Number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Seals `plain` into records numbered from `seq`, appended to `out`;
    /// returns how many records that took. Changes nothing in `self`.
    pub fn seal_at(&self, seq: u64, content: ContentType, plain: &[u8], out: &mut Vec<u8>) -> u64 {
        let mut n = 0;
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            let len = (chunk.len() + 1 + self.key.algorithm().tag_len()) as u16;
            let header = [23, 3, 3, (len >> 8) as u8, len as u8];
            out.extend_from_slice(&header);
            let start = out.len();
            out.extend_from_slice(chunk);
            out.push(content.byte());
            let tag = self
                .key
                .seal_in_place_separate_tag(
                    nonce(&self.iv, seq + n),
                    Aad::from(header),
                    &mut out[start..],
                )
                // aws-lc refuses only inputs over ~64 GiB: a chunk is ≤ 16 KiB.
                .expect("a record's content is within the AEAD's limit");
            out.extend_from_slice(tag.as_ref());
            n += 1;
        }
        n
    }

    /// Seals `plain` as the next records and counts them.
    pub fn seal(&mut self, content: ContentType, plain: &[u8], out: &mut Vec<u8>) {
        let n = self.seal_at(self.seq, content, plain, out);
        self.seq += n;
    }

    /// Records that many records as sent (after [`RecordSealer::seal_at`]).
    pub fn advance(&mut self, records: u64) {
        self.seq += records;
    }

    /// Records `plain` takes.
    pub fn records_for(plain: usize) -> u64 {
        records_for(plain)
    }
}

/// Why a received record could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("the negotiated cipher suite is not supported outside rustls")]
    UnsupportedSuite,
    #[error("malformed record header")]
    BadHeader,
    #[error("record too large")]
    TooLarge,
    #[error("record failed authentication")]
    BadRecord,
}

/// An opened record: its type and where its content is in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub content: ContentType,
    pub range: std::ops::Range<usize>,
}

/// Opens a connection's incoming records.
pub struct RecordOpener {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordOpener")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RecordOpener {
    /// From the receive half of rustls's extracted secrets.
    pub fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, OpenError> {
        let (key, iv) = key_and_iv(secrets)?;
        Ok(RecordOpener { key, iv, seq })
    }

    /// The length of the whole record at the start of `buf`, once its
    /// header is there (`None`: fewer than 5 bytes).
    pub fn record_len(buf: &[u8]) -> Result<Option<usize>, OpenError> {
        let Some(h) = buf.get(..5) else {
            return Ok(None);
        };
        if h[0] != 23 || h[1] != 3 {
            return Err(OpenError::BadHeader);
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if len > MAX_CIPHERTEXT {
            return Err(OpenError::TooLarge);
        }
        Ok(Some(5 + len))
    }

    /// Opens the one whole record `record` (header included) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, OpenError> {
        if Self::record_len(record)? != Some(record.len()) {
            return Err(OpenError::BadHeader);
        }
        let (header, body) = record.split_at_mut(5);
        let header: [u8; 5] = (&*header).try_into().map_err(|_| OpenError::BadHeader)?;
        let plain = self
            .key
            .open_in_place(nonce(&self.iv, self.seq), Aad::from(header), body)
            .map_err(|_| OpenError::BadRecord)?;
        self.seq += 1;
        // The real content type is the last non-zero byte (RFC 8446 §5.4).
        let end = plain
            .iter()
            .rposition(|b| *b != 0)
            .ok_or(OpenError::BadRecord)?;
        let content = ContentType::from_byte(plain[end]).ok_or(OpenError::BadRecord)?;
        Ok(Opened {
            content,
            range: 5..5 + end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;

    /// A client and a server handshaking in memory; returns the client
    /// and the server's extracted secrets.
    pub(crate) fn handshake() -> (rustls::ClientConnection, rustls::ExtractedSecrets) {
        let ck = rcgen::generate_simple_self_signed(vec!["amphi.test".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let certs = crate::Certs::from_der(vec![cert.clone()], key).unwrap();
        let server_cfg = crate::server_config(Arc::new(certs)).unwrap();
        let client_cfg = crate::client_config(&[cert]).unwrap();
        let mut client = rustls::ClientConnection::new(
            client_cfg,
            rustls_pki_types::ServerName::try_from("amphi.test").unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(server_cfg).unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).unwrap();
                server.process_new_packets().unwrap();
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                client.read_tls(&mut &buf[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if !server.is_handshaking() && !client.is_handshaking() && !server.wants_write() {
                break;
            }
        }
        assert!(!server.is_handshaking());
        // The request a listener sends first, read by rustls as usual.
        client
            .writer()
            .write_all(b"GET /x HTTP/1.1\r\n\r\n")
            .unwrap();
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        let mut req = [0u8; 64];
        let n = server.reader().read(&mut req).unwrap();
        assert_eq!(&req[..n], b"GET /x HTTP/1.1\r\n\r\n");
        let secrets = server.dangerous_extract_secrets().unwrap();
        (client, secrets)
    }

    fn client_reads(client: &mut rustls::ClientConnection, wire: &[u8]) -> Vec<u8> {
        let mut rd = wire;
        let mut out = Vec::new();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = client.reader().read(&mut chunk) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        }
        out
    }

    #[test]
    fn records_sealed_here_are_read_by_rustls() {
        let (mut client, secrets) = handshake();
        let mut sealer = RecordSealer::new(secrets.tx).unwrap();
        let mut wire = Vec::new();
        sealer.seal(
            ContentType::ApplicationData,
            b"HTTP/1.0 200 OK\r\n\r\n",
            &mut wire,
        );
        let page = vec![7u8; 40_000]; // three records
        let before = wire.len();
        sealer.seal(ContentType::ApplicationData, &page, &mut wire);
        assert_eq!(wire.len() - before, sealed_len(page.len()));
        let got = client_reads(&mut client, &wire);
        assert_eq!(&got[..19], b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(&got[19..], &page[..]);
    }

    #[test]
    fn sealing_again_at_the_same_number_gives_the_same_bytes() {
        let (mut client, secrets) = handshake();
        let sealer = RecordSealer::new(secrets.tx).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let s = sealer.seq();
        sealer.seal_at(s, ContentType::ApplicationData, b"page one", &mut a);
        sealer.seal_at(s, ContentType::ApplicationData, b"page one", &mut b);
        assert_eq!(a, b);
        // A socket that took 7 bytes, then the rest from a second sealing.
        let mut wire = a[..7].to_vec();
        let mut again = Vec::new();
        sealer.seal_at(s, ContentType::ApplicationData, b"page one", &mut again);
        wire.extend_from_slice(&again[7..]);
        assert_eq!(client_reads(&mut client, &wire), b"page one");
    }

    #[test]
    fn what_the_client_sends_is_opened_here() {
        let (mut client, secrets) = handshake();
        let mut opener = RecordOpener::new(secrets.rx).unwrap();
        client.writer().write_all(b"\x89\x80ping").unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let len = RecordOpener::record_len(&wire).unwrap().unwrap();
        assert_eq!(len, wire.len());
        let opened = opener.open(&mut wire).unwrap();
        assert_eq!(opened.content, ContentType::ApplicationData);
        assert_eq!(&wire[opened.range], b"\x89\x80ping");
        // Replayed or damaged: refused.
        let mut again = wire.clone();
        assert!(opener.open(&mut again).is_err());
    }

    #[test]
    fn a_close_notify_is_an_alert() {
        let (mut client, secrets) = handshake();
        let mut opener = RecordOpener::new(secrets.rx).unwrap();
        client.send_close_notify();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let opened = opener.open(&mut wire).unwrap();
        assert_eq!(opened.content, ContentType::Alert);
        assert_eq!(&wire[opened.range], &[1, 0]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_refused_cleanly(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let (_, secrets) = handshake();
            let mut opener = RecordOpener::new(secrets.rx).unwrap();
            if let Ok(Some(n)) = RecordOpener::record_len(&bytes)
                && n <= bytes.len()
            {
                let _ = opener.open(&mut bytes[..n]);
            }
        }
    }
}
