//! amphi-media
