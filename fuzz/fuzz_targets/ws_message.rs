#![no_main]
//! `live.ws` messages as clients and edges decode them.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = amphi_media::wire::decode_message(data) {
        assert!(!m.frames.is_empty());
        let _ = m.captured_at(m.frames.len() - 1);
    }
});
