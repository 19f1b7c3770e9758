//! API calls forwarded to a space's owner over NATS request/reply. A node
//! that does not own a space sends the owner the method, path, the few
//! headers that matter and the body; the owner runs the call through its
//! own router (so the rules, persistence and ingest gates all act where
//! the space lives) and replies with the status, headers and body.
//!
//! Layout (all lengths big-endian): version `1`; request: method (u8 len),
//! path (u16 len), headers (u8 count, each name u8 len + value u16 len),
//! body (u32 len). Reply: version `1`, status u16, headers, body.

use bytes::{BufMut, Bytes, BytesMut};

use crate::WireError;
use crate::reader::Reader;

const VERSION: u8 = 1;
/// The largest forwarded body: the API's own body limit is smaller.
pub const MAX_BODY: usize = 1 << 20;
/// Headers one forwarded message carries at most.
pub const MAX_HEADERS: usize = 16;

/// A forwarded API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    pub method: String,
    /// Path and query, e.g. `/api/v1/spaces/…/hand`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The longest prefix of `s` of at most `max` bytes that is still UTF-8
/// (cut on a character boundary, so the decoder accepts it).
fn utf8_prefix(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

fn put_headers(b: &mut BytesMut, headers: &[(String, String)]) {
    let headers: Vec<_> = headers
        .iter()
        .filter(|(n, v)| n.len() <= 255 && v.len() <= usize::from(u16::MAX))
        .take(MAX_HEADERS)
        .collect();
    b.put_u8(headers.len() as u8);
    for (n, v) in headers {
        b.put_u8(n.len() as u8);
        b.put_slice(n.as_bytes());
        b.put_u16(v.len() as u16);
        b.put_slice(v.as_bytes());
    }
}

fn len(r: &mut Reader, width: usize, what: &'static str) -> Result<usize, WireError> {
    usize::try_from(r.uint(width, what)?).map_err(|_| WireError::TooLong(what))
}

fn string(r: &mut Reader, width: usize, what: &'static str) -> Result<String, WireError> {
    let n = len(r, width, what)?;
    let s = r.take(n, what)?;
    String::from_utf8(s.to_vec()).map_err(|_| WireError::Utf8(what))
}

fn headers(r: &mut Reader) -> Result<Vec<(String, String)>, WireError> {
    let n = len(r, 1, "header count")?;
    if n > MAX_HEADERS {
        return Err(WireError::TooLong("headers"));
    }
    (0..n)
        .map(|_| Ok((string(r, 1, "header name")?, string(r, 2, "header value")?)))
        .collect()
}

/// The body, which ends the message.
fn body(r: &mut Reader) -> Result<Bytes, WireError> {
    let n = len(r, 4, "body length")?;
    if n > MAX_BODY {
        return Err(WireError::TooLong("body"));
    }
    let body = r.take(n, "body")?;
    r.end()?;
    Ok(body)
}

impl ForwardRequest {
    /// The request's bytes (a body past [`MAX_BODY`] is cut: the API
    /// refuses such bodies before anything is forwarded; a method past 255
    /// bytes or a path past 65,535 is cut on a character boundary).
    pub fn encode(&self) -> Bytes {
        let method = utf8_prefix(&self.method, 255).as_bytes();
        let path = utf8_prefix(&self.path, usize::from(u16::MAX)).as_bytes();
        let body = &self.body[..self.body.len().min(MAX_BODY)];
        let mut b = BytesMut::with_capacity(16 + path.len() + body.len());
        b.put_u8(VERSION);
        b.put_u8(method.len() as u8);
        b.put_slice(method);
        b.put_u16(path.len() as u16);
        b.put_slice(path);
        put_headers(&mut b, &self.headers);
        b.put_u32(body.len() as u32);
        b.put_slice(body);
        b.freeze()
    }

    /// Parses a forwarded request; any bytes give a request or an error.
    pub fn decode(b: &Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        r.version(VERSION)?;
        let method = string(&mut r, 1, "method")?;
        let path = string(&mut r, 2, "path")?;
        let headers = headers(&mut r)?;
        let body = body(&mut r)?;
        Ok(ForwardRequest {
            method,
            path,
            headers,
            body,
        })
    }
}

impl ForwardReply {
    /// The reply's bytes.
    pub fn encode(&self) -> Bytes {
        let body = &self.body[..self.body.len().min(MAX_BODY)];
        let mut b = BytesMut::with_capacity(16 + body.len());
        b.put_u8(VERSION);
        b.put_u16(self.status);
        put_headers(&mut b, &self.headers);
        b.put_u32(body.len() as u32);
        b.put_slice(body);
        b.freeze()
    }

    /// Parses an owner's reply.
    pub fn decode(b: &Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        r.version(VERSION)?;
        let status = r.uint(2, "status")? as u16;
        let headers = headers(&mut r)?;
        let body = body(&mut r)?;
        Ok(ForwardReply {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_and_replies_roundtrip() {
        let req = ForwardRequest {
            method: "POST".into(),
            path: "/api/v1/spaces/0000000000000001/hand".into(),
            headers: vec![("authorization".into(), "Bearer x".into())],
            body: Bytes::from_static(b"{}"),
        };
        assert_eq!(ForwardRequest::decode(&req.encode()), Ok(req));
        let rep = ForwardReply {
            status: 409,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{\"error\":{}}"),
        };
        assert_eq!(ForwardReply::decode(&rep.encode()), Ok(rep));
    }

    #[test]
    fn hostile_lengths_are_refused() {
        // A body length of 4 GiB in a 12-byte message.
        let b = Bytes::from_static(&[1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(ForwardRequest::decode(&b), Err(WireError::TooLong("body")));
        let b = Bytes::from_static(&[1, 1, 0xff]);
        assert_eq!(ForwardRequest::decode(&b), Err(WireError::Utf8("method")));
        let b = Bytes::from_static(&[1, 0x01, 0x2c, 200]);
        assert_eq!(ForwardReply::decode(&b), Err(WireError::TooLong("headers")));
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        // 'é' is two bytes: 255 bytes would end inside the 128th.
        let req = ForwardRequest {
            method: "é".repeat(200),
            path: format!("//{}", "é".repeat(40_000)),
            headers: vec![],
            body: Bytes::new(),
        };
        let got = ForwardRequest::decode(&req.encode()).expect("an encoded request decodes");
        assert_eq!(got.method, "é".repeat(127));
        assert_eq!(got.path, format!("//{}", "é".repeat(32_766)));
    }

    proptest! {
        #[test]
        fn any_request_roundtrips(
            method in "[A-Z]{1,10}",
            path in "/[ -~]{0,300}",
            headers in proptest::collection::vec(("[a-z-]{1,20}", "[ -~]{0,100}"), 0..16),
            body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let req = ForwardRequest { method, path, headers, body: Bytes::from(body) };
            prop_assert_eq!(ForwardRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(b);
            let _ = ForwardRequest::decode(&b);
            let _ = ForwardReply::decode(&b);
        }
    }
}
