//! Sans-IO HLS for amphi: CMAF/fMP4 with Opus, the LL-HLS live playlist
//! with parts and preload hints, VOD playlists, and the frame-segment file
//! format the recorder writes (from which every replay output is cut).
//!
//! Everything here is a pure function of program frames, so the live
//! segmenter, the recorder and a cluster edge produce identical bytes.

pub mod fmp4;
pub mod frames;
pub mod playlist;

/// Frames per part: 500 ms.
pub const PART_FRAMES: u64 = 25;
/// Parts per segment: 2 s segments.
pub const SEGMENT_PARTS: u64 = 4;
/// Frames per segment.
pub const SEGMENT_FRAMES: u64 = PART_FRAMES * SEGMENT_PARTS;

/// Why HLS bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlsError {
    #[error("invalid frame segment: {0}")]
    Frames(&'static str),
    #[error("invalid query: {0}")]
    Query(&'static str),
}

/// `Cache-Control` for each kind of HLS resource: media never changes once
/// published (CDNs may keep it for a year); live playlists change every
/// part; VOD playlists never change.
pub fn cache_control(kind: Resource) -> &'static str {
    match kind {
        Resource::Media => "public, max-age=31536000, immutable",
        Resource::LivePlaylist => "public, max-age=1",
        Resource::VodPlaylist => "public, max-age=31536000, immutable",
    }
}

/// Kinds of HLS resource, for [`cache_control`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Media,
    LivePlaylist,
    VodPlaylist,
}
