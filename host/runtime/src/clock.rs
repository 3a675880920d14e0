//! Times the host shows to people: approvals' expiries, records' times,
//! alerts. Stored times come from stores and configuration the host does
//! not write alone (a database row, an edited log, a policy value), so
//! writing one never fails.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Milliseconds since the Unix epoch that never go back: the wall clock
/// read once, at the first call, moved on by the monotonic clock since.
/// What spans are measured by (alert windows, `for` durations, the hourly
/// takeover limit): a wall clock stepped back (NTP, a resumed VM) froze
/// them until it caught up, one stepped forward emptied them at once. It
/// parts from the wall clock by whatever the wall clock is stepped after
/// the first call.
pub(crate) fn steady_ms() -> u64 {
    static START: OnceLock<Steady> = OnceLock::new();
    START.get_or_init(Steady::now).at(Instant::now())
}

/// The wall-clock time of `steady` (a [`steady_ms`] reading): now on the
/// wall clock, less the monotonic time since — what a person is shown,
/// right after a wall clock stepped or a machine suspended.
pub(crate) fn wall_of(steady: u64) -> u64 {
    crate::mode::now_ms().saturating_sub(steady_ms().saturating_sub(steady))
}

/// A wall-clock reading and the monotonic instant it was taken at.
struct Steady {
    wall_ms: u64,
    at: Instant,
}

impl Steady {
    fn now() -> Steady {
        Steady {
            wall_ms: crate::mode::now_ms(),
            at: Instant::now(),
        }
    }

    /// The wall-clock reading moved on by the monotonic time from its
    /// instant to `now` (none for an instant before it).
    fn at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.at);
        self.wall_ms
            .saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
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

    /// Spans are the monotonic clock's, whatever the wall clock does
    /// after the first reading.
    #[test]
    fn steady_time_moves_with_the_monotonic_clock_only() {
        let start = Instant::now();
        let steady = Steady {
            wall_ms: 1_000,
            at: start,
        };
        assert_eq!(steady.at(start), 1_000);
        assert_eq!(steady.at(start + Duration::from_millis(5_250)), 6_250);
        if let Some(before) = start.checked_sub(Duration::from_secs(1)) {
            assert_eq!(steady.at(before), 1_000, "went back");
        }
        let first = steady_ms();
        let wall = crate::mode::now_ms();
        assert!(first.abs_diff(wall) < 60_000, "{first} against {wall}");
        assert!(steady_ms() >= first);
        // Shown on the wall clock.
        let shown = wall_of(steady_ms());
        assert!(shown.abs_diff(crate::mode::now_ms()) < 60_000, "{shown}");
        assert!(wall_of(0) <= crate::mode::now_ms());
    }

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
