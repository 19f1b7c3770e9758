//! The recorder's frame-segment file: a run of program frames, written once
//! and fsynced when the segment closes. Every replay output (Ogg file, HLS
//! VOD) is cut from these, so a recording is exactly the frames that were
//! live.
//!
//! Layout: `AMFS`, version `1`, then records of `seq` u64 BE,
//! `captured_at_us` u64 BE, `len` u16 BE, `len` bytes of Opus.

use std::sync::Arc;

use amphi_core::Frame;
use bytes::{BufMut, Bytes, BytesMut};

use crate::HlsError;

const MAGIC: &[u8; 4] = b"AMFS";

/// Encodes frames into one file's bytes.
pub fn encode(frames: &[Frame]) -> Bytes {
    let body: usize = frames.iter().map(|f| 18 + f.opus.len()).sum();
    let mut b = BytesMut::with_capacity(5 + body);
    b.put_slice(MAGIC);
    b.put_u8(1);
    for f in frames {
        let len = f.opus.len().min(usize::from(u16::MAX));
        b.put_u64(f.seq);
        b.put_u64(f.captured_at_us);
        b.put_u16(len as u16);
        b.put_slice(&f.opus[..len]);
    }
    b.freeze()
}

/// Decodes a file. A truncated last record (a crash mid-write of a file
/// that was never renamed into place cannot reach here, but a damaged disk
/// can) ends the run: the frames before it are returned.
pub fn decode(data: &Bytes) -> Result<Vec<Frame>, HlsError> {
    if data.len() < 5 || &data[..4] != MAGIC {
        return Err(HlsError::Frames("missing magic"));
    }
    if data[4] != 1 {
        return Err(HlsError::Frames("unknown version"));
    }
    let mut out = Vec::new();
    let mut at = 5;
    let empty: Arc<[amphi_core::SpeakerLevel]> = Arc::from(Vec::new());
    while at + 18 <= data.len() {
        let seq = u64::from_be_bytes(
            data[at..at + 8]
                .try_into()
                .map_err(|_| HlsError::Frames("seq"))?,
        );
        let cap = u64::from_be_bytes(
            data[at + 8..at + 16]
                .try_into()
                .map_err(|_| HlsError::Frames("time"))?,
        );
        let len = usize::from(u16::from_be_bytes([data[at + 16], data[at + 17]]));
        at += 18;
        if at + len > data.len() {
            break;
        }
        out.push(Frame {
            seq,
            captured_at_us: cap,
            opus: data.slice(at..at + len),
            program_level: 0,
            speakers: empty.clone(),
        });
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(lens in proptest::collection::vec(0usize..300, 0..50)) {
            let frames: Vec<Frame> = lens.iter().enumerate().map(|(i, l)| Frame {
                seq: i as u64 * 3, captured_at_us: i as u64, opus: Bytes::from(vec![i as u8; *l]), program_level: 0, speakers: Arc::from(Vec::new()),
            }).collect();
            let back = decode(&encode(&frames)).unwrap();
            prop_assert_eq!(back.len(), frames.len());
            for (a, b) in back.iter().zip(&frames) {
                prop_assert_eq!((a.seq, a.captured_at_us, &a.opus), (b.seq, b.captured_at_us, &b.opus));
            }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut d = b"AMFS\x01".to_vec();
            d.extend(data);
            let _ = decode(&Bytes::from(d));
        }
    }
}
