#![no_main]
//! HLS request paths and blocking-reload query strings.
//! Property: a media name that parses names the same media when rebuilt
//! from its numbers.
use amphi_hls::playlist::{parse_blocking_query, parse_media_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((msn, part)) = parse_media_name(s) {
        let rebuilt = match part {
            None => format!("seg-{msn}.m4s"),
            Some(p) => format!("part-{msn}-{p}.m4s"),
        };
        assert_eq!(parse_media_name(&rebuilt), Some((msn, part)));
    }
    if let Ok((msn, part)) = parse_blocking_query(s) {
        assert!(
            part.is_none() || msn.is_some(),
            "_HLS_part accepted without _HLS_msn"
        );
    }
});
