//! amphi-hls
