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

pub use jitter::{Jitter, JitterConfig, JitterStats, Pop};
pub use mixer::{Mixer, MixerConfig, MixerStats, Mode, Tick};
pub use ogg::{OggError, OggPager, OwnedPage, Page, PageReader, parse_page};
pub use opus::{Decoder, Encoder, is_dtx, packet_samples, passable, voice_inactive};
pub use wire::{
    Message, WireError, WsBatcher, decode_message, encode_message, ws_binary_frame, ws_message,
};

/// Why a media operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// libopus refused (its error code, e.g. -4 for an invalid packet).
    #[error("opus error {0}")]
    Opus(i32),
    /// A bitrate outside 16–128 kbit/s.
    #[error("bitrate {0} is outside 16000..=128000")]
    Bitrate(i32),
    /// A packet longer than the buffer it was to be decoded into.
    #[error("packet of {needed} samples does not fit in {room}")]
    OutputTooSmall {
        /// Samples the packet carries.
        needed: usize,
        /// Samples the output could hold.
        room: usize,
    },
    /// Bytes that do not form a valid Ogg page.
    #[error(transparent)]
    Ogg(#[from] OggError),
    /// Bytes that do not form a valid `live.ws` message.
    #[error(transparent)]
    Wire(#[from] WireError),
}
