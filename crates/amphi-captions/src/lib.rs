//! Live captions, sans-IO: 48 kHz speaker PCM in (resampled to 16 kHz, cut
//! into phrases by voice activity), text out from an offline Whisper model
//! (CTranslate2's faster-whisper-tiny.en weights run on candle, CPU).

pub mod ct2;
pub mod mel;
pub mod resample;
pub mod tokens;
pub mod vad;
pub mod wer;
pub mod whisper;

pub use vad::{Phrase, Segmenter};
pub use whisper::Transcriber;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model's files are not there (the node runs without captions).
    #[error("captions model missing: {0}")]
    Missing(String),
    /// The files are there but not a model this crate runs.
    #[error("captions model unusable: {0}")]
    Model(String),
}
