#![no_main]
//! Ogg pages from the network (players, the load generator, edges): the
//! page parser, and the page and packet readers fed in arbitrary chunks.
//! Property: what the readers return does not depend on how the stream
//! was cut into chunks, and nothing returned is larger than the input.
use amphi_media::ogg::{PacketReader, PageReader, parse_page};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    if let Ok((page, n)) = parse_page(stream) {
        assert!(n <= stream.len(), "page longer than its bytes");
        let body: usize = page.packets.iter().map(|p| p.len()).sum();
        assert!(body < n, "packets larger than the page");
    }

    // The first byte picks the chunk size, so splits land anywhere.
    let chunk = usize::from(cut) + 1;
    let pages = |chunk: usize| {
        let mut r = PageReader::new();
        let mut out = Vec::new();
        for c in stream.chunks(chunk) {
            r.push(c);
            while let Some(p) = r.next_page() {
                out.push(p);
            }
        }
        out
    };
    let whole = pages(stream.len().max(1));
    assert_eq!(whole, pages(chunk), "pages depend on chunking");

    let packets = |chunk: usize| {
        let mut r = PacketReader::new();
        let mut out = Vec::new();
        for c in stream.chunks(chunk) {
            r.push(c);
            while let Some(p) = r.next_packet() {
                assert!(p.0.len() <= stream.len(), "packet larger than the input");
                out.push(p);
            }
        }
        (out, r.dropped)
    };
    assert_eq!(
        packets(stream.len().max(1)),
        packets(chunk),
        "packets depend on chunking"
    );
});
