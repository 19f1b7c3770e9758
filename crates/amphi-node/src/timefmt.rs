//! RFC 3339 times on the wire; milliseconds since the epoch inside.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the UNIX epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Seconds since the UNIX epoch, now.
pub fn now_s() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
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
