//! Sans-IO HLS for amphi: CMAF/fMP4 with Opus ([`fmp4`]), the segmenter
//! that cuts program frames into parts and segments ([`segmenter`]), the
//! LL-HLS live and VOD playlists with blocking reload ([`playlist`]), cache
//! policy, and the frame-segment file format the recorder writes
//! ([`frames`]), from which every replay output is cut.
//!
//! Everything here is a pure function of program frames (and `now` is never
//! needed: times come from the frames), so the live segmenter, the recorder
//! and a cluster edge produce identical bytes. Protocol notes:
//! `docs/ll-hls.md`.

pub mod fmp4;
pub mod frames;
pub mod playlist;
pub mod segmenter;

pub use playlist::{Ready, parse_blocking_query, parse_media_name};
pub use segmenter::{
    HlsEvent, PDT_REANCHOR_US, PRELOAD_PARTS_AHEAD, PartLookup, Segment, Segmenter, SegmenterConfig,
};

/// Frames per part: 400 ms.
pub const PART_FRAMES: u64 = 20;
/// Parts per segment: 2 s segments.
pub const SEGMENT_PARTS: u64 = 5;
/// Frames per segment.
pub const SEGMENT_FRAMES: u64 = PART_FRAMES * SEGMENT_PARTS;

/// Why HLS bytes or a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlsError {
    /// A recorder frame-segment file is damaged.
    #[error("invalid frame segment: {0}")]
    Frames(&'static str),
    /// A playlist request's query is malformed (answer 400).
    #[error("invalid query: {0}")]
    Query(&'static str),
}

/// Kinds of HLS resource, for [`cache_control_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `init.mp4`, parts and segments: never change once published.
    Media,
    /// The live playlist: changes every part.
    LivePlaylist,
    /// A replay playlist: final once written.
    VodPlaylist,
}

/// `Cache-Control` for each kind of HLS resource. Media is immutable, so a
/// CDN may keep it for a year and absorb the audience; the live playlist
/// changes every part (400 ms), so caches may hold it for at most a second
/// (blocking-reload URLs differ per part, so they cache well too); a VOD
/// playlist never changes.
pub fn cache_control_for(kind: Resource) -> &'static str {
    match kind {
        Resource::Media => "public, max-age=31536000, immutable",
        Resource::LivePlaylist => "public, max-age=1",
        Resource::VodPlaylist => "public, max-age=31536000, immutable",
    }
}

pub use cache_control_for as cache_control;

/// `Content-Type` for each kind of HLS resource. The fMP4 media holds one
/// audio track and nothing else, so it is `audio/mp4` (RFC 4337: `video/mp4`
/// is for files with video); playlists are `application/vnd.apple.mpegurl`
/// (RFC 8216 §4).
pub fn content_type_for(kind: Resource) -> &'static str {
    match kind {
        Resource::Media => "audio/mp4",
        Resource::LivePlaylist | Resource::VodPlaylist => "application/vnd.apple.mpegurl",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_only_media_is_audio_mp4_and_playlists_are_mpegurl() {
        assert_eq!(content_type_for(Resource::Media), "audio/mp4");
        for kind in [Resource::LivePlaylist, Resource::VodPlaylist] {
            assert_eq!(content_type_for(kind), "application/vnd.apple.mpegurl");
        }
    }

    #[test]
    fn media_is_immutable_and_live_playlists_are_short_lived() {
        assert!(cache_control_for(Resource::Media).contains("immutable"));
        assert!(cache_control_for(Resource::VodPlaylist).contains("max-age=31536000"));
        assert_eq!(
            cache_control_for(Resource::LivePlaylist),
            "public, max-age=1"
        );
        assert_eq!(
            cache_control(Resource::Media),
            cache_control_for(Resource::Media)
        );
    }
}
