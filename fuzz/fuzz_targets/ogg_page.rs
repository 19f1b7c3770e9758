#![no_main]
//! Ogg pages from the network (players, the load generator, edges).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amphi_media::ogg::parse_page(data);
    let mut r = amphi_media::PageReader::new();
    for chunk in data.chunks(97) {
        r.push(chunk);
        while r.next_page().is_some() {}
    }
});
