//! Program frames on the bus. The origin encodes each frame once and
//! publishes it; every edge decodes it once and cuts its own outputs, so a
//! frame crosses the network once per edge, whatever the audience.
//!
//! A frame record: `seq` u64 BE, `captured_at_us` u64 BE, `program_level`
//! u8, speaker count u8, per speaker (`participant` u64 BE, `level` u8), Opus
//! length u16 BE, Opus bytes. A frame message is version `1` then one
//! record; a history reply is version `1`, a record count u16 BE, then the
//! records.

use std::sync::Arc;

use amphi_core::{Frame, ParticipantId, SpeakerLevel};
use bytes::{BufMut, Bytes, BytesMut};

use crate::WireError;
use crate::reader::Reader;

const VERSION: u8 = 1;
/// Frames one history reply carries at most (30 s of program).
pub const MAX_HISTORY_FRAMES: usize = 1500;

fn record_len(f: &Frame) -> usize {
    8 + 8 + 1 + 1 + 9 * f.speakers.len().min(255) + 2 + f.opus.len().min(usize::from(u16::MAX))
}

fn put_record(b: &mut BytesMut, f: &Frame) {
    b.put_u64(f.seq);
    b.put_u64(f.captured_at_us);
    b.put_u8(f.program_level);
    let speakers = &f.speakers[..f.speakers.len().min(255)];
    b.put_u8(speakers.len() as u8);
    for s in speakers {
        b.put_u64(s.participant.0);
        b.put_u8(s.level);
    }
    let len = f.opus.len().min(usize::from(u16::MAX));
    b.put_u16(len as u16);
    b.put_slice(&f.opus[..len]);
}

fn record(r: &mut Reader) -> Result<Frame, WireError> {
    let seq = r.uint(8, "seq")?;
    let captured_at_us = r.uint(8, "captured_at")?;
    let program_level = r.uint(1, "program_level")? as u8;
    let n = r.uint(1, "speakers")?;
    let mut speakers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let participant = ParticipantId(r.uint(8, "speaker")?);
        let level = r.uint(1, "speaker level")? as u8;
        speakers.push(SpeakerLevel { participant, level });
    }
    let len = r.uint(2, "opus length")? as usize;
    let opus = r.take(len, "opus")?;
    Ok(Frame {
        seq,
        captured_at_us,
        opus,
        program_level,
        speakers: Arc::from(speakers),
    })
}

/// The bus message of one frame.
pub fn encode_frame(f: &Frame) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + record_len(f));
    b.put_u8(VERSION);
    put_record(&mut b, f);
    b.freeze()
}

/// Decodes a frame message; the Opus bytes share the message's buffer.
pub fn decode_frame(b: &Bytes) -> Result<Frame, WireError> {
    let mut r = Reader::new(b);
    r.version(VERSION)?;
    let f = record(&mut r)?;
    r.end()?;
    Ok(f)
}

/// A history reply: at most [`MAX_HISTORY_FRAMES`] frames (the first ones).
pub fn encode_frames<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Bytes {
    let frames: Vec<&Frame> = frames.into_iter().take(MAX_HISTORY_FRAMES).collect();
    let len: usize = frames.iter().map(|f| record_len(f)).sum();
    let mut b = BytesMut::with_capacity(3 + len);
    b.put_u8(VERSION);
    b.put_u16(frames.len() as u16);
    for f in frames {
        put_record(&mut b, f);
    }
    b.freeze()
}

/// Decodes a history reply.
pub fn decode_frames(b: &Bytes) -> Result<Vec<Frame>, WireError> {
    let mut r = Reader::new(b);
    r.version(VERSION)?;
    let n = r.uint(2, "count")? as usize;
    if n > MAX_HISTORY_FRAMES {
        return Err(WireError::TooLong("count"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(record(&mut r)?);
    }
    r.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(seq: u64, speakers: Vec<(u64, u8)>, opus: Vec<u8>) -> Frame {
        Frame {
            seq,
            captured_at_us: seq.wrapping_mul(20_000),
            opus: Bytes::from(opus),
            program_level: (seq % 128) as u8,
            speakers: speakers
                .into_iter()
                .map(|(p, level)| SpeakerLevel {
                    participant: ParticipantId(p),
                    level,
                })
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn layout_is_the_documented_one() {
        let b = encode_frame(&frame(2, vec![(9, 5)], vec![0xaa]));
        let mut want = vec![
            1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0x9c, 0x40, 2, 1,
        ];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 5, 0, 1, 0xaa]);
        assert_eq!(&b[..], &want[..]);
    }

    #[test]
    fn bad_messages_are_errors() {
        let good = encode_frame(&frame(1, vec![], vec![1, 2, 3]));
        assert_eq!(decode_frame(&Bytes::new()), Err(WireError::Short(0)));
        let mut v = good.to_vec();
        v[0] = 9;
        assert_eq!(decode_frame(&Bytes::from(v)), Err(WireError::Version(9)));
        let cut = good.slice(..good.len() - 1);
        assert_eq!(decode_frame(&cut), Err(WireError::Truncated("opus")));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            decode_frame(&Bytes::from(long)),
            Err(WireError::Trailing(1))
        );
        let mut many = vec![1u8, 0xff, 0xff];
        many.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode_frames(&Bytes::from(many)),
            Err(WireError::TooLong("count"))
        );
    }

    proptest! {
        #[test]
        fn frames_roundtrip(
            seq in any::<u64>(),
            speakers in proptest::collection::vec((any::<u64>(), 0u8..128), 0..20),
            opus in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let f = frame(seq, speakers, opus);
            let mut want = f.clone();
            want.opus = want.opus.slice(..want.opus.len().min(usize::from(u16::MAX)));
            prop_assert_eq!(decode_frame(&encode_frame(&f)).unwrap(), want);
        }

        #[test]
        fn histories_roundtrip(n in 0usize..40, opus_len in 0usize..200) {
            let frames: Vec<Frame> = (0..n as u64)
                .map(|s| frame(s, vec![(s, 3)], vec![s as u8; opus_len]))
                .collect();
            prop_assert_eq!(decode_frames(&encode_frames(&frames)).unwrap(), frames);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let b = Bytes::from(b);
            let _ = decode_frame(&b);
            let _ = decode_frames(&b);
        }
    }
}
