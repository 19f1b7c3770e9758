//! amphi-load
