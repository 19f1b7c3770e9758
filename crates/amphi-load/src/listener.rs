//! One simulated listener: connect, request, then read and measure until
//! the end of the run.

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::tone::{Heard, Probe};

/// What one listener saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// HTTP status (0: could not connect or no answer).
    pub status: u16,
    /// Connect start → first audio byte, µs.
    pub first_byte_us: Option<u64>,
    /// Seconds of audio received during the measured window.
    pub audio_secs: f64,
    /// Longest time between two units in the window, ms.
    pub max_gap_ms: u64,
    /// Gaps over 300 ms in the window.
    pub stalls: u64,
    /// WebSocket messages whose first sequence was not the one expected.
    pub seq_gaps: u64,
    /// Sampled capture → receive latencies, µs.
    pub latencies_us: Vec<u64>,
    /// Why it ended early, if it did.
    pub error: Option<String>,
    /// What a probing listener decoded (`live.opus` only).
    #[serde(default)]
    pub heard: Option<Heard>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Most latency samples kept per listener.
const LATENCY_SAMPLES: usize = 64;

/// Joins the space as `load-<n>` and returns the listener token, or the
/// HTTP status that refused it (0 if the server did not answer).
pub async fn join(server: SocketAddr, space: &str, n: usize) -> Result<String, u16> {
    let body = format!("{{\"name\":\"load-{n}\"}}");
    let req = format!(
        "POST /api/v1/spaces/{space}/join HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|_| 0u16)?;
    s.write_all(req.as_bytes()).await.map_err(|_| 0u16)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|_| 0u16)?;
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        return Err(status);
    }
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| 0u16)?;
    v["token"].as_str().map(str::to_owned).ok_or(0)
}

/// A TLS client for `https`/`wss` listeners.
#[derive(Clone)]
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls_pki_types::ServerName<'static>,
}

/// Runs one listener until `end_at`, measuring from `measure_from`; over
/// TLS if `tls` is given (the handshake counts in the time to first byte);
/// decoding what it hears with `probe` if given.
#[allow(clippy::too_many_arguments)]
pub async fn listen(
    server: SocketAddr,
    src: IpAddr,
    path: &str,
    ws: bool,
    end_at: Instant,
    measure_from: Instant,
    tls: Option<Tls>,
    probe: Option<Probe>,
) -> Outcome {
    let mut o = Outcome::default();
    let t0 = Instant::now();
    let sock = match if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    } {
        Ok(s) => s,
        Err(e) => {
            o.error = Some(format!("socket: {e}"));
            return o;
        }
    };
    if server.ip().is_loopback() && src.is_ipv4() == server.is_ipv4() {
        let _ = sock.bind(SocketAddr::new(src, 0));
    }
    let connect = tokio::time::timeout_at(end_at.into(), sock.connect(server)).await;
    let stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            o.error = Some(format!("connect: {e}"));
            return o;
        }
        Err(_) => {
            o.error = Some("connect timed out".into());
            return o;
        }
    };
    match tls {
        None => {
            read_stream(
                stream,
                server,
                path,
                (ws, probe),
                end_at,
                measure_from,
                t0,
                o,
            )
            .await
        }
        Some(tls) => {
            let hs = tokio::time::timeout_at(
                end_at.into(),
                tls.connector.connect(tls.name.clone(), stream),
            )
            .await;
            match hs {
                Ok(Ok(s)) => {
                    read_stream(s, server, path, (ws, probe), end_at, measure_from, t0, o).await
                }
                Ok(Err(e)) => {
                    o.error = Some(format!("tls: {e}"));
                    o
                }
                Err(_) => {
                    o.error = Some("tls handshake timed out".into());
                    o
                }
            }
        }
    }
}

/// Sends the request and reads the stream, measuring.
#[allow(clippy::too_many_arguments)]
async fn read_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    server: SocketAddr,
    path: &str,
    (ws, probe): (bool, Option<Probe>),
    end_at: Instant,
    measure_from: Instant,
    t0: Instant,
    mut o: Outcome,
) -> Outcome {
    let req = if ws {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: YW1waGktbG9hZC1rZXk=\r\n\r\n"
        )
    } else {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUser-Agent: amphi-load\r\nConnection: close\r\n\r\n"
        )
    };
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        o.error = Some(format!("write: {e}"));
        return o;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut head_done = false;
    let mut parser = Parser::new(ws);
    parser.probe = probe;
    let mut last_unit: Option<Instant> = None;
    loop {
        let n = match tokio::time::timeout_at(end_at.into(), stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                if o.error.is_none() && head_done && o.status < 300 {
                    o.error = Some("server closed the stream".into());
                }
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                o.error = Some(format!("read: {e}"));
                break;
            }
        };
        let now = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                if pending.len() > 16 * 1024 {
                    o.error = Some("response head too large".into());
                    break;
                }
                continue;
            };
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            o.status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pending.drain(..end + 4);
            head_done = true;
            if !(200..300).contains(&o.status) && o.status != 101 {
                break;
            }
        }
        if o.first_byte_us.is_none() && !pending.is_empty() {
            o.first_byte_us = Some(t0.elapsed().as_micros() as u64);
        }
        let in_window = now >= measure_from;
        let units = parser.feed(&mut pending, in_window, &mut o);
        if units > 0 && in_window {
            if let Some(prev) = last_unit {
                let gap = now.duration_since(prev).as_millis() as u64;
                o.max_gap_ms = o.max_gap_ms.max(gap);
                if gap > 300 {
                    o.stalls += 1;
                }
            }
            last_unit = Some(now);
        } else if units > 0 && last_unit.is_none() && now >= measure_from {
            last_unit = Some(now);
        }
    }
    o.heard = parser.probe.map(|p| p.heard);
    o
}

/// Splits the byte stream into units (Ogg pages, WebSocket messages) and
/// counts the audio in them.
struct Parser {
    ws: bool,
    next_seq: Option<u64>,
    in_window_msgs: u64,
    /// Decodes the Ogg stream's packets, if set.
    probe: Option<Probe>,
}

impl Parser {
    fn new(ws: bool) -> Self {
        Parser {
            ws,
            next_seq: None,
            in_window_msgs: 0,
            probe: None,
        }
    }

    /// Consumes complete units from `buf`; returns how many.
    fn feed(&mut self, buf: &mut Vec<u8>, in_window: bool, o: &mut Outcome) -> usize {
        let mut at = 0;
        let mut units = 0;
        loop {
            let rest = &buf[at..];
            let used = if self.ws {
                self.ws_unit(rest, in_window, o)
            } else {
                ogg_unit(rest, in_window, o, self.probe.as_mut())
            };
            match used {
                Some(n) => {
                    at += n;
                    units += 1;
                }
                None => break,
            }
        }
        buf.drain(..at);
        units
    }

    fn ws_unit(&mut self, b: &[u8], in_window: bool, o: &mut Outcome) -> Option<usize> {
        if b.len() < 2 {
            return None;
        }
        let (len, hdr) = match b[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
            127 => (
                u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        let payload = b.get(hdr..hdr + len)?;
        if b[0] & 0x0f == 2
            && let Ok(m) = amphi_media::wire::decode_message(payload)
        {
            if let Some(exp) = self.next_seq
                && m.first_seq != exp
            {
                o.seq_gaps += 1;
            }
            let n = m.frames.len() as u64;
            self.next_seq = Some(m.first_seq + n);
            if in_window {
                o.audio_secs += n as f64 * 0.02;
                self.in_window_msgs += 1;
                // Spread the samples over the window (every 8th message).
                if self.in_window_msgs.is_multiple_of(8) && o.latencies_us.len() < LATENCY_SAMPLES {
                    let captured = m.captured_at((m.frames.len()).saturating_sub(1));
                    o.latencies_us.push(now_us().saturating_sub(captured));
                }
            }
        }
        Some(hdr + len)
    }
}

/// One Ogg page: counts its completed packets as 20 ms each (and hands
/// them to the probe).
fn ogg_unit(
    b: &[u8],
    in_window: bool,
    o: &mut Outcome,
    probe: Option<&mut Probe>,
) -> Option<usize> {
    if b.len() < 27 {
        return None;
    }
    if &b[..4] != b"OggS" {
        // Resynchronise on the next capture pattern.
        return Some(
            b.windows(4)
                .skip(1)
                .position(|w| w == b"OggS")
                .map_or(b.len().saturating_sub(3), |p| p + 1)
                .max(1),
        );
    }
    let nsegs = usize::from(b[26]);
    let lacing = b.get(27..27 + nsegs)?;
    let body: usize = lacing.iter().map(|l| usize::from(*l)).sum();
    let total = 27 + nsegs + body;
    if b.len() < total {
        return None;
    }
    let granule = u64::from_le_bytes(b[6..14].try_into().ok()?);
    if in_window && granule != 0 {
        let packets = lacing.iter().filter(|l| **l < 255).count();
        o.audio_secs += packets as f64 * 0.02;
    }
    if let Some(probe) = probe
        && granule != 0
    {
        // Packets end at a lacing value under 255 (one spanning pages is
        // never an Opus frame of a program).
        let mut at = 27 + nsegs;
        let mut start = at;
        for l in lacing {
            at += usize::from(*l);
            if *l < 255 {
                probe.packet(&b[start..at], in_window);
                start = at;
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_core::Frame;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_us: 0,
            opus: bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            program_level: 0,
            speakers: std::sync::Arc::from(Vec::new()),
        }
    }

    #[test]
    fn ogg_pages_are_counted() {
        let mut pager = amphi_media::OggPager::new(1, 5);
        let mut bytes = pager.headers().to_vec();
        for s in 0..10u64 {
            if let Some(p) = pager.push(&frame(s)) {
                bytes.extend_from_slice(&p);
            }
        }
        let mut o = Outcome::default();
        let units = Parser::new(false).feed(&mut bytes, true, &mut o);
        assert_eq!(units, 4);
        assert!((o.audio_secs - 0.2).abs() < 1e-9);
        assert!(bytes.is_empty());
    }

    #[test]
    fn a_probe_decodes_the_pages_packets() {
        let tone = crate::tone::Tone::encode(600).unwrap();
        let mut pager = amphi_media::OggPager::new(1, 5);
        let mut bytes = pager.headers().to_vec();
        for s in 0..100u64 {
            let f = Frame {
                opus: bytes::Bytes::copy_from_slice(&tone.packet(s)),
                ..frame(s)
            };
            if let Some(p) = pager.push(&f) {
                bytes.extend_from_slice(&p);
            }
        }
        let mut o = Outcome::default();
        let mut parser = Parser::new(false);
        parser.probe = Some(Probe::new(vec![600]).unwrap());
        parser.feed(&mut bytes, true, &mut o);
        let heard = parser.probe.map(|p| p.heard).unwrap();
        assert!(heard.tone_secs >= 1.8, "{heard:?}");
        assert_eq!(heard.bad_packets, 0);
    }

    #[test]
    fn ws_sequence_gaps_are_counted() {
        let frames: Vec<Frame> = (0..9).map(frame).collect();
        let mut bytes = Vec::new();
        for chunk in [&frames[0..3], &frames[3..6]] {
            bytes.extend_from_slice(&amphi_media::wire::ws_binary_frame(
                &amphi_media::wire::encode_message(chunk),
            ));
        }
        // Skip frames 6..8 and send 8 alone: one gap.
        bytes.extend_from_slice(&amphi_media::wire::ws_binary_frame(
            &amphi_media::wire::encode_message(&frames[8..9]),
        ));
        let mut o = Outcome::default();
        let units = Parser::new(true).feed(&mut bytes, true, &mut o);
        assert_eq!((units, o.seq_gaps), (3, 1));
        assert!((o.audio_secs - 0.14).abs() < 1e-9);
    }
}
