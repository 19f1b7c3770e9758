//! amphi-rtc
