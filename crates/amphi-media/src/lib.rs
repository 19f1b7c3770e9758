//! Sans-IO media for amphi: Opus coding, the per-speaker jitter buffer, the
//! mixer that makes the one program, and the cutters that turn program
//! frames into wire units (Ogg pages, `live.ws` messages).
//!
//! Nothing here owns a thread, a socket or a clock: the media thread calls
//! [`Mixer::tick`] every 20 ms with the time, and hands the results on.

pub mod analysis;
pub mod jitter;
pub mod mixer;
pub mod ogg;
pub mod opus;
pub mod wire;

pub use mixer::{Mixer, MixerConfig, MixerStats, Tick};
pub use ogg::{OggPager, PageReader};
pub use wire::WsBatcher;

/// Why a media operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// libopus refused (its error code).
    #[error("opus error {0}")]
    Opus(i32),
    /// A bitrate outside 16–128 kbit/s.
    #[error("bitrate {0} is outside 16000..=128000")]
    Bitrate(i32),
    /// Bytes that do not form a valid Ogg page.
    #[error("invalid ogg page: {0}")]
    Ogg(&'static str),
    /// Bytes that do not form a valid `live.ws` message.
    #[error("invalid live.ws message: {0}")]
    Wire(&'static str),
}
