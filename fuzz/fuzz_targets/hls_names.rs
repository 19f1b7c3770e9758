#![no_main]
//! HLS request paths and blocking-reload query strings.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = amphi_hls::playlist::parse_media_name(s);
    let _ = amphi_hls::playlist::parse_blocking_query(s);
});
