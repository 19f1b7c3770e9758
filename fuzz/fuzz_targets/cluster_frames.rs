#![no_main]
//! Program frames on the cluster bus (`amphi.space.<id>.frames`) and
//! history replies, as every edge decodes what arrives from NATS.
//! Properties: the format is canonical — a message that decodes re-encodes
//! to exactly its bytes — and decoded Opus bytes are slices of the message
//! (no copy). The same bytes, read as frames with `arbitrary`, check the
//! encoders: any frames encode to messages that decode back to those
//! frames, cut only where the format bounds them (255 speakers, 65,535
//! Opus bytes, 1,500 frames per history reply).
use std::sync::Arc;

use amphi_cluster::frames::MAX_HISTORY_FRAMES;
use amphi_cluster::{decode_frame, decode_frames, encode_frame, encode_frames};
use amphi_core::{Frame, ParticipantId, SpeakerLevel};
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// A frame as an origin could hand it to the encoder.
#[derive(Debug, Arbitrary)]
struct AnyFrame {
    seq: u64,
    captured_at_us: u64,
    program_level: u8,
    speakers: Vec<(u64, u8)>,
    opus: Vec<u8>,
}

impl AnyFrame {
    fn frame(self) -> Frame {
        Frame {
            seq: self.seq,
            captured_at_us: self.captured_at_us,
            opus: Bytes::from(self.opus),
            program_level: self.program_level,
            speakers: self
                .speakers
                .into_iter()
                .map(|(p, level)| SpeakerLevel {
                    participant: ParticipantId(p),
                    level,
                })
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

/// What the decoder gives back for `f`: the format's bounds applied.
fn bounded(f: &Frame) -> Frame {
    let mut f = f.clone();
    f.speakers = Arc::from(&f.speakers[..f.speakers.len().min(255)]);
    f.opus = f.opus.slice(..f.opus.len().min(usize::from(u16::MAX)));
    f
}

/// Decoded Opus bytes point into the message they came from.
fn shares(msg: &Bytes, f: &Frame) {
    if f.opus.is_empty() {
        return;
    }
    let range = msg.as_ptr_range();
    let opus = f.opus.as_ptr_range();
    assert!(
        range.start <= opus.start && opus.end <= range.end,
        "decoded Opus bytes were copied out of the message"
    );
}

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);

    if let Ok(f) = decode_frame(&msg) {
        assert!(f.speakers.len() <= 255 && f.opus.len() <= usize::from(u16::MAX));
        shares(&msg, &f);
        assert_eq!(
            &encode_frame(&f)[..],
            data,
            "a decoded frame message does not re-encode to its bytes"
        );
    }

    if let Ok(frames) = decode_frames(&msg) {
        assert!(frames.len() <= MAX_HISTORY_FRAMES);
        for f in &frames {
            shares(&msg, f);
            // Each record of a history reply is also a valid frame message.
            assert_eq!(decode_frame(&encode_frame(f)).as_ref(), Ok(f));
        }
        assert_eq!(
            &encode_frames(&frames)[..],
            data,
            "a decoded history reply does not re-encode to its bytes"
        );
    }

    // The encoders, on any frames.
    let Ok(any) = Vec::<AnyFrame>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let frames: Vec<Frame> = any.into_iter().map(AnyFrame::frame).collect();
    for f in &frames {
        assert_eq!(
            decode_frame(&encode_frame(f)),
            Ok(bounded(f)),
            "an encoded frame does not decode back"
        );
    }
    let want: Vec<Frame> = frames
        .iter()
        .take(MAX_HISTORY_FRAMES)
        .map(bounded)
        .collect();
    assert_eq!(
        decode_frames(&encode_frames(&frames)),
        Ok(want),
        "an encoded history reply does not decode back"
    );
});
