#![no_main]
//! Recording segments read back from disk (a damaged disk is hostile
//! input), then cut into the replay outputs the way the server finalises a
//! recording: one Ogg stream and the HLS VOD.
//! Properties: decoding keeps a prefix of the file (re-encoding the frames
//! gives the file's leading bytes), and cutting any frames never panics.
use amphi_hls::Segmenter;
use amphi_hls::frames::{decode, encode};
use amphi_media::OggPager;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let Ok(frames) = decode(&data) else { return };
    let again = encode(&frames);
    assert!(
        data.starts_with(&again),
        "decoded frames are not the file's prefix"
    );

    // The server keeps only frames whose seq grows, as here.
    let mut kept: Vec<_> = Vec::new();
    for f in frames {
        if kept
            .last()
            .is_none_or(|l: &amphi_core::Frame| f.seq > l.seq)
        {
            kept.push(f);
        }
    }
    let origin = kept.first().map_or(0, |f| f.seq);
    let mut pager = OggPager::with_origin(0x5eed, 50, origin);
    let mut ogg = pager.headers().to_vec();
    for f in &kept {
        if let Some(p) = pager.push(f) {
            ogg.extend_from_slice(&p);
        }
    }
    ogg.extend_from_slice(&pager.finish());
    let mut seg = Segmenter::new(usize::MAX).with_uri_prefix("replay/");
    for f in &kept {
        seg.push(f);
    }
    seg.finish();
    let playlist = seg.vod_playlist();
    assert!(playlist.starts_with("#EXTM3U"));
});
