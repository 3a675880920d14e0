//! Times the host shows to people: approvals' expiries, records' times,
//! alerts. Stored times come from stores and configuration the host does
//! not write alone (a database row, an edited log, a policy value), so
//! writing one never fails.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const LAST_MS: u64 = 253_402_300_799_999;

/// `ms` since the Unix epoch as an RFC 3339 time in UTC, to the second
/// (`2026-12-07T03:00:00Z`); a time past the year 9999, which RFC 3339
/// cannot write, as `after 9999-12-31T23:59:59Z`.
///
/// ```
/// assert_eq!(airlock_host::clock::rfc3339_seconds(0), "1970-01-01T00:00:00Z");
/// assert_eq!(airlock_host::clock::rfc3339_seconds(u64::MAX), "after 9999-12-31T23:59:59Z");
/// ```
pub fn rfc3339_seconds(ms: u64) -> String {
    written(ms, humantime::format_rfc3339_seconds)
}

/// The same to the millisecond (`2026-12-07T03:00:00.250Z`).
pub fn rfc3339_millis(ms: u64) -> String {
    written(ms, humantime::format_rfc3339_millis)
}

fn written(ms: u64, format: fn(SystemTime) -> humantime::Rfc3339Timestamp) -> String {
    const PAST: &str = "after 9999-12-31T23:59:59Z";
    if ms > LAST_MS {
        return PAST.to_owned();
    }
    let mut out = String::new();
    match write!(out, "{}", format(UNIX_EPOCH + Duration::from_millis(ms))) {
        Ok(()) => out,
        Err(_) => PAST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_is_written_and_none_past_9999_fails() {
        assert_eq!(rfc3339_seconds(1_796_611_960_046), "2026-12-07T02:52:40Z");
        assert_eq!(
            rfc3339_millis(1_796_611_960_046),
            "2026-12-07T02:52:40.046Z"
        );
        assert_eq!(rfc3339_seconds(LAST_MS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_millis(LAST_MS), "9999-12-31T23:59:59.999Z");
        for ms in [LAST_MS + 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(rfc3339_seconds(ms), "after 9999-12-31T23:59:59Z");
            assert_eq!(rfc3339_millis(ms), "after 9999-12-31T23:59:59Z");
        }
    }
}
