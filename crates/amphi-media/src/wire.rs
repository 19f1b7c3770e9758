//! The `live.ws` message format (docs/live-ws.md) and the WebSocket framing
//! the fan-out writes as-is to every listener.

use amphi_core::Frame;
use amphi_core::frame::{FRAME_US, History};
use bytes::{BufMut, Bytes, BytesMut};

/// Format version of a message.
pub const VERSION: u8 = 1;
/// Most frames one message carries (`n` is one byte).
pub const MAX_FRAMES: usize = 255;
const HEADER: usize = 19;

/// Why bytes are not a `live.ws` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the 19-byte header.
    #[error("message of {0} bytes is shorter than the header")]
    Short(usize),
    /// A version other than [`VERSION`].
    #[error("unknown version {0}")]
    Version(u8),
    /// `n` is zero.
    #[error("message with no frames")]
    NoFrames,
    /// Frame `index` (or its length) runs past the end.
    #[error("frame {index} is truncated")]
    Truncated {
        /// Index of the frame in the message.
        index: usize,
    },
    /// Bytes after the last frame.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Encodes consecutive frames as one message payload. The caller passes
/// 1..=[`MAX_FRAMES`] frames (as [`WsBatcher`] does); frames beyond the
/// 255th are left out rather than corrupting `n`.
pub fn encode_message(frames: &[Frame]) -> Bytes {
    debug_assert!(
        !frames.is_empty(),
        "a live.ws message carries 1..=255 frames"
    );
    let mut b = BytesMut::with_capacity(message_len(frames));
    put_message(&mut b, frames);
    b.freeze()
}

/// Payload length of the message [`encode_message`] makes of `frames`.
fn message_len(frames: &[Frame]) -> usize {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    HEADER
        + frames
            .iter()
            .map(|f| 2 + f.opus.len().min(usize::from(u16::MAX)))
            .sum::<usize>()
}

fn put_message(b: &mut BytesMut, frames: &[Frame]) {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    b.put_u8(VERSION);
    b.put_u8(frames.len() as u8);
    b.put_u64(frames.first().map_or(0, |f| f.seq));
    b.put_u64(frames.first().map_or(0, |f| f.captured_at_us));
    b.put_u8(frames.last().map_or(0, |f| f.program_level));
    for f in frames {
        let len = f.opus.len().min(usize::from(u16::MAX));
        b.put_u16(len as u16);
        b.put_slice(&f.opus[..len]);
    }
}

/// The message for `frames` inside its WebSocket frame, built in one
/// buffer: what the fan-out writes to every listener.
pub fn ws_message(frames: &[Frame]) -> Bytes {
    let len = message_len(frames);
    let mut b = BytesMut::with_capacity(10 + len);
    put_ws_header(&mut b, 0x82, len);
    put_message(&mut b, frames);
    b.freeze()
}

fn put_ws_header(b: &mut BytesMut, first: u8, len: usize) {
    b.put_u8(first);
    match len {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
}

/// A complete unmasked server-to-client binary WebSocket frame.
pub fn ws_binary_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    put_ws_header(&mut b, 0x82, payload.len());
    b.put_slice(payload);
    b.freeze()
}

/// A complete server-to-client WebSocket close frame with `code` and a
/// short `reason` (at most 123 bytes are sent).
pub fn ws_close_frame(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut b = BytesMut::with_capacity(4 + reason.len());
    b.put_u8(0x88);
    b.put_u8((2 + reason.len()) as u8);
    b.put_u16(code);
    b.put_slice(reason);
    b.freeze()
}

/// Close code sent to `live.ws` listeners when the space ends: do not
/// reconnect.
pub const CLOSE_SPACE_ENDED: u16 = 4000;

/// Close code sent to `live.ws` listeners of a node that lost the cluster
/// and stopped mixing their space (it fenced itself): the space goes on on
/// another node; reconnect (to another node, with `from_seq`).
pub const CLOSE_GO_ELSEWHERE: u16 = 4001;

/// A decoded message, borrowing the Opus packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub first_seq: u64,
    pub captured_at_us: u64,
    pub level: u8,
    pub frames: Vec<&'a [u8]>,
}

impl Message<'_> {
    /// Capture time of frame `k` of this message (saturating: the fields
    /// come off the network and may hold anything).
    pub fn captured_at(&self, k: usize) -> u64 {
        self.captured_at_us
            .saturating_add((k as u64).saturating_mul(FRAME_US))
    }
}

/// Decodes a message payload (without its WebSocket header), checking
/// every bound: any bytes give a message or an error, never a panic.
pub fn decode_message(b: &[u8]) -> Result<Message<'_>, WireError> {
    if b.len() < HEADER {
        return Err(WireError::Short(b.len()));
    }
    if b[0] != VERSION {
        return Err(WireError::Version(b[0]));
    }
    let n = usize::from(b[1]);
    if n == 0 {
        return Err(WireError::NoFrames);
    }
    let first_seq = u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
    let captured_at_us =
        u64::from_be_bytes([b[10], b[11], b[12], b[13], b[14], b[15], b[16], b[17]]);
    let mut frames = Vec::with_capacity(n);
    let mut at = HEADER;
    for index in 0..n {
        let Some(&[hi, lo]) = b.get(at..at + 2) else {
            return Err(WireError::Truncated { index });
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        at += 2;
        frames.push(b.get(at..at + len).ok_or(WireError::Truncated { index })?);
        at += len;
    }
    if at != b.len() {
        return Err(WireError::Trailing(b.len() - at));
    }
    Ok(Message {
        first_seq,
        captured_at_us,
        level: b[18],
        frames,
    })
}

/// Cuts program frames into `live.ws` messages, ready-framed.
#[derive(Debug)]
pub struct WsBatcher {
    per_message: usize,
    pending: Vec<Frame>,
}

impl WsBatcher {
    /// One message per `per_message` frames.
    pub fn new(per_message: usize) -> Self {
        let per_message = per_message.clamp(1, 255);
        WsBatcher {
            per_message,
            pending: Vec::with_capacity(per_message),
        }
    }

    /// Adds a frame; returns a WebSocket frame when a message is complete.
    pub fn push(&mut self, frame: &Frame) -> Option<Bytes> {
        self.pending.push(frame.clone());
        if self.pending.len() < self.per_message {
            return None;
        }
        let msg = ws_message(&self.pending);
        self.pending.clear();
        Some(msg)
    }

    /// WebSocket frames carrying the history from `from_seq` to its newest
    /// frame, at most 255 frames each.
    pub fn resume(history: &History, from_seq: u64) -> Vec<Bytes> {
        let frames: Vec<Frame> = history.since(from_seq).cloned().collect();
        frames.chunks(255).map(ws_message).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame(seq: u64, len: usize) -> Frame {
        Frame {
            seq,
            captured_at_us: 1000 + seq * FRAME_US,
            opus: Bytes::from(vec![7; len]),
            program_level: 9,
            speakers: Arc::from(Vec::new()),
        }
    }

    fn strip_ws(b: &[u8]) -> &[u8] {
        match b[1] {
            126 => &b[4..],
            127 => &b[10..],
            _ => &b[2..],
        }
    }

    #[test]
    fn batches_and_resumes() {
        let mut w = WsBatcher::new(3);
        assert!(w.push(&frame(0, 50)).is_none());
        assert!(w.push(&frame(1, 50)).is_none());
        let m = w.push(&frame(2, 50)).unwrap();
        assert_eq!(m[0], 0x82);
        let msg = decode_message(strip_ws(&m)).unwrap();
        assert_eq!((msg.first_seq, msg.frames.len(), msg.level), (0, 3, 9));
        assert_eq!(msg.captured_at(2), 1000 + 2 * FRAME_US);
        let mut h = History::new(1500);
        for s in 0..600 {
            h.push(frame(s, 10));
        }
        let r = WsBatcher::resume(&h, 100);
        assert_eq!(r.len(), 2);
        let first = decode_message(strip_ws(&r[0])).unwrap();
        let second = decode_message(strip_ws(&r[1])).unwrap();
        assert_eq!((first.first_seq, first.frames.len()), (100, 255));
        assert_eq!((second.first_seq, second.frames.len()), (355, 245));

        // Older than the window: from the oldest kept; the gap shows.
        let mut small = History::new(100);
        for s in 0..600 {
            small.push(frame(s, 10));
        }
        let r = WsBatcher::resume(&small, 3);
        assert_eq!(r.len(), 1);
        let m = decode_message(strip_ws(&r[0])).unwrap();
        assert_eq!((m.first_seq, m.frames.len()), (500, 100));
        assert_eq!(m.captured_at_us, 1000 + 500 * FRAME_US);
        // Already up to date: nothing to resend.
        assert!(WsBatcher::resume(&small, 600).is_empty());
        assert!(WsBatcher::resume(&History::new(10), 0).is_empty());
    }

    #[test]
    fn websocket_header_uses_the_shortest_length_form() {
        for (len, header) in [
            (0usize, vec![0x82, 0]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65_535, vec![0x82, 126, 0xff, 0xff]),
            (65_536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let payload = vec![0xab; len];
            let f = ws_binary_frame(&payload);
            assert_eq!(&f[..header.len()], &header[..], "{len}");
            assert_eq!(&f[header.len()..], &payload[..]);
        }
        let c = ws_close_frame(CLOSE_SPACE_ENDED, "ended");
        assert_eq!(&c[..], b"\x88\x07\x0f\xa0ended");
    }

    #[test]
    fn message_layout_matches_the_document() {
        let mut f = frame(0x0102, 2);
        f.opus = Bytes::from_static(&[0xaa, 0xbb]);
        f.captured_at_us = 0x0a0b;
        let m = encode_message(&[f.clone(), frame(0x0103, 1)]);
        let mut expect = vec![
            1, 2, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0x0a, 0x0b, 9,
        ];
        expect.extend_from_slice(&[0, 2, 0xaa, 0xbb, 0, 1, 7]);
        assert_eq!(&m[..], &expect[..]);
    }

    /// Fuzz-found: a capture time near u64::MAX overflowed when frame k's
    /// time was computed.
    #[test]
    fn capture_times_saturate() {
        let bytes = [
            1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0,
            0, 0,
        ];
        let m = decode_message(&bytes).unwrap();
        assert_eq!(m.captured_at(0), u64::MAX);
        assert_eq!(m.captured_at(1), u64::MAX);
    }

    #[test]
    fn rejects_malformed_messages() {
        assert_eq!(decode_message(&[]), Err(WireError::Short(0)));
        let good = encode_message(&[frame(5, 4)]);
        assert_eq!(
            decode_message(&good[..good.len() - 1]),
            Err(WireError::Truncated { index: 0 })
        );
        assert_eq!(
            decode_message(&good[..HEADER + 1]),
            Err(WireError::Truncated { index: 0 })
        );
        let mut extra = good.to_vec();
        extra.push(0);
        assert_eq!(decode_message(&extra), Err(WireError::Trailing(1)));
        let mut v2 = good.to_vec();
        v2[0] = 2;
        assert_eq!(decode_message(&v2), Err(WireError::Version(2)));
        let mut none = good.to_vec();
        none[1] = 0;
        assert_eq!(decode_message(&none), Err(WireError::NoFrames));
        let mut more = good.to_vec();
        more[1] = 2;
        assert_eq!(
            decode_message(&more),
            Err(WireError::Truncated { index: 1 })
        );
    }

    proptest! {
        #[test]
        fn roundtrip(lens in proptest::collection::vec(0usize..400, 1..20), start in 0u64..1_000_000) {
            let frames: Vec<Frame> = lens.iter().enumerate().map(|(i, l)| frame(start + i as u64, *l)).collect();
            let payload = encode_message(&frames);
            let framed = ws_binary_frame(&payload);
            prop_assert_eq!(strip_ws(&framed), &payload[..]);
            prop_assert_eq!(&ws_message(&frames), &framed);
            let m = decode_message(&payload).unwrap();
            prop_assert_eq!(m.first_seq, start);
            prop_assert_eq!(m.frames.len(), frames.len());
            for (a, b) in m.frames.iter().zip(&frames) { prop_assert_eq!(*a, &b.opus[..]); }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_message(&data);
        }
    }
}
