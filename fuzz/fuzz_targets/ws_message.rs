#![no_main]
//! `live.ws` messages as clients and cluster edges decode them.
//! Property: a message that decodes is re-encoded to the same bytes.
use std::sync::Arc;

use amphi_core::Frame;
use amphi_media::wire::{decode_message, encode_message};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = decode_message(data) else { return };
    assert!(!m.frames.is_empty() && m.frames.len() <= 255);
    let last = m.frames.len() - 1;
    // As the load generator does with every message it receives.
    let _ = m.captured_at(last);
    let frames: Vec<Frame> = m
        .frames
        .iter()
        .enumerate()
        .map(|(k, opus)| Frame {
            seq: m.first_seq.wrapping_add(k as u64),
            captured_at_us: m.captured_at_us.wrapping_add(k as u64 * 20_000),
            opus: Bytes::copy_from_slice(opus),
            program_level: if k == last { m.level } else { 0 },
            speakers: Arc::from(Vec::new()),
        })
        .collect();
    assert_eq!(
        &encode_message(&frames)[..],
        data,
        "decode/encode is not a roundtrip"
    );
});
