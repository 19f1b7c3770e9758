//! The few HTTP/1.1 calls the speaker mode makes (create and start a space,
//! join, raise a hand, stage, WHIP): one request per connection, plain
//! HTTP, answered with the status, the `Location` header and the body.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer.
#[derive(Debug, Clone, Default)]
pub struct Resp {
    /// 0: no answer.
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Resp {
    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A request with an optional bearer token and body; an answer within 10 s
/// or status 0.
pub async fn request(
    server: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Resp {
    let call = async {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {server}\r\nUser-Agent: amphi-load\r\nConnection: close\r\n"
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let (ct, bytes) = body.unwrap_or(("", &[]));
        if !ct.is_empty() {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
        let mut s = tokio::net::TcpStream::connect(server).await.ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        s.write_all(bytes).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        Some(parse_response(&raw))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Parses a whole close-delimited response (chunked bodies are joined).
pub fn parse_response(raw: &[u8]) -> Resp {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp::default();
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut location = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "location" {
            location = Some(v.to_owned());
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        location,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_location_and_body() {
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nlocation: /api/v1/spaces/a/whip/b\r\ncontent-length: 4\r\n\r\nv=0\n",
        );
        assert_eq!(r.status, 201);
        assert_eq!(r.location.as_deref(), Some("/api/v1/spaces/a/whip/b"));
        assert_eq!(r.body, "v=0\n");
    }

    #[test]
    fn joins_chunks() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        );
        assert_eq!(r.json()["a"], 1);
    }

    #[test]
    fn garbage_is_no_answer() {
        assert_eq!(parse_response(b"nonsense").status, 0);
        assert_eq!(parse_response(b"HTTP/1.1 abc\r\n\r\n").status, 0);
    }
}
