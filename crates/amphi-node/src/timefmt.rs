//! RFC 3339 times on the wire; milliseconds since the epoch inside.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::sync::OnceLock;
use std::time::Instant;

/// A test-only offset added to this node's wall clock
/// (`AMPHI_TEST_CLOCK_OFFSET_MS`), to show that a cluster does not need its
/// nodes' clocks to agree.
fn clock_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("AMPHI_TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Milliseconds since the UNIX epoch, now (by this node's wall clock).
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + clock_offset_ms()
}

/// Milliseconds on this process's monotonic clock (from an arbitrary
/// origin): for durations measured on this node only.
pub fn mono_ms() -> i64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// Seconds since the UNIX epoch, now.
pub fn now_s() -> u64 {
    (now_ms() / 1000).max(0) as u64
}

/// `ms` as an RFC 3339 string in UTC.
pub fn rfc3339(ms: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Parses an RFC 3339 string into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let ms = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
        assert_eq!(rfc3339(ms).unwrap(), "2026-11-22T16:00:00Z");
        assert!(parse_rfc3339("tomorrow").is_none());
    }
}
