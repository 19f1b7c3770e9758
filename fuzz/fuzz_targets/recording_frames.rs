#![no_main]
//! Recording segments read back from disk (a damaged disk is hostile input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amphi_hls::frames::decode(&bytes::Bytes::copy_from_slice(data));
});
