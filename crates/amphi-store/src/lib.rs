//! amphi-store
