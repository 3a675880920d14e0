//! Rate-limit buckets.
//!
//! A limit is written `N/unit` (`10/min`, `5/s`, `1000/hour`): a bucket of
//! `N` tokens refilled continuously at `N` per unit. A call takes one token
//! from every bucket that applies, or none. Where the buckets live is the
//! backend's choice ([`RateLimitStore`]): in the host's memory for one host
//! ([`MemoryBuckets`]), in a shared database for many — so every host of a
//! deployment draws from the same buckets.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Result;

/// A parsed `N/unit` rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per period (also the burst).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parse `N/s`, `N/sec`, `N/second`, `N/m`, `N/min`, `N/minute`, `N/h`,
    /// `N/hour`, `N/d`, `N/day`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> std::result::Result<Rate, String> {
        let bad = || format!("invalid rate {text:?}: write N/unit, e.g. 10/min, 5/s, 1000/hour");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate {text:?}: N must be at least 1"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }

    /// Milliseconds per token.
    pub fn ms_per_token(&self) -> f64 {
        self.per.as_secs_f64() * 1000.0 / f64::from(self.count)
    }
}

/// One bucket's state: tokens left at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens in it at `updated_ms`.
    pub tokens: f64,
    /// Ms since the Unix epoch.
    pub updated_ms: u64,
}

/// How far past a host's clock a bucket's stored time may be and still be
/// taken as another host's clock running ahead (see
/// [`Bucket::refilled`]): a day. Hosts whose clocks differ by less keep
/// the bucket's rate whole — the one behind refills nothing until its
/// clock passes the stored time — where taking their skew for damage
/// would have each repair refill the host ahead of it.
pub const MAX_CLOCK_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

impl Bucket {
    /// A full bucket of `rate` at `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.count),
            updated_ms: now_ms,
        }
    }

    /// The bucket refilled up to `now_ms` (a clock that went back refills
    /// nothing). A stored token count no bucket can have (not a number,
    /// infinite, negative: a row edited or damaged) counts as empty, so it
    /// refills from nothing rather than granting a burst or failing every
    /// call of its scope. So does a stored time more than
    /// [`MAX_CLOCK_AHEAD_MS`] past `now_ms` (a row edited; a clock set a
    /// day or more wrong): kept, it would stop the bucket refilling until
    /// this clock caught up — forever, for a time near `u64::MAX`.
    pub fn refilled(self, rate: Rate, now_ms: u64) -> Bucket {
        if self.updated_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Bucket {
                tokens: 0.0,
                updated_ms: now_ms,
            };
        }
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64;
        let tokens = if self.tokens.is_finite() && self.tokens >= 0.0 {
            self.tokens
        } else {
            0.0
        };
        Bucket {
            tokens: (tokens + elapsed / rate.ms_per_token()).min(f64::from(rate.count)),
            updated_ms: now_ms.max(self.updated_ms),
        }
    }

    /// How long until it holds a token (at most [`Duration::MAX`], never
    /// a panic, whatever the stored state).
    pub fn wait(&self, rate: Rate) -> Duration {
        let tokens = if self.tokens.is_nan() {
            0.0
        } else {
            self.tokens
        };
        Duration::try_from_secs_f64(((1.0 - tokens).max(0.0) * rate.ms_per_token()) / 1000.0)
            .unwrap_or(Duration::MAX)
    }
}

/// Where the buckets live.
///
/// Contract (checked by the conformance suite): [`RateLimitStore::take`]
/// takes one token from every bucket, or from none, atomically — across
/// every host sharing the backend.
pub trait RateLimitStore: Send + Sync + fmt::Debug {
    /// Take one token from each `(scope, rate)` bucket at `now_ms` (a
    /// bucket seen first starts full), all or none. `Ok(Some((scope,
    /// wait)))`: refused — the first exhausted scope and how long until it
    /// has a token again.
    fn take(&self, buckets: &[(String, Rate)], now_ms: u64) -> Result<Option<(String, Duration)>>;
}

/// Buckets in this process's memory: a restart refills them.
#[derive(Debug, Default)]
pub struct MemoryBuckets {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimitStore for MemoryBuckets {
    fn take(&self, limits: &[(String, Rate)], now_ms: u64) -> Result<Option<(String, Duration)>> {
        if limits.is_empty() {
            return Ok(None);
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut refusal: Option<(String, Duration)> = None;
        for (scope, rate) in limits {
            let bucket = buckets
                .get(scope)
                .copied()
                .unwrap_or_else(|| Bucket::full(*rate, now_ms))
                .refilled(*rate, now_ms);
            buckets.insert(scope.clone(), bucket);
            if bucket.tokens < 1.0 && refusal.is_none() {
                refusal = Some((scope.clone(), bucket.wait(*rate)));
            }
        }
        if refusal.is_some() {
            return Ok(refusal);
        }
        for (scope, _) in limits {
            if let Some(bucket) = buckets.get_mut(scope) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored bucket of `-inf` tokens (a row edited in the shared
    /// database) panicked in `Duration::from_secs_f64`, killing the task of
    /// every call in its scope; `NaN` refilled it to full.
    #[test]
    fn a_damaged_bucket_neither_panics_nor_grants_a_burst() {
        let rate = Rate::parse("10/s").unwrap();
        for tokens in [f64::NEG_INFINITY, f64::INFINITY, f64::NAN, -1e300, f64::MIN] {
            let bucket = Bucket {
                tokens,
                updated_ms: 1_000,
            };
            let refilled = bucket.refilled(rate, 1_000);
            assert_eq!(refilled.tokens, 0.0, "{tokens}");
            assert_eq!(refilled.wait(rate), Duration::from_millis(100), "{tokens}");
            // Even unrefilled, its wait is a duration.
            let _ = bucket.wait(rate);
        }
        let fine = Bucket {
            tokens: 3.5,
            updated_ms: 1_000,
        };
        assert_eq!(fine.refilled(rate, 1_100).tokens, 4.5);
    }

    /// A stored time far in the future (a row edited; a clock set a day
    /// wrong) kept the bucket from refilling until this host's clock
    /// reached it: at `i64::MAX`, never. A little ahead (hosts' clocks
    /// differ, by seconds or minutes) it is kept, and nothing is refilled
    /// until then: the rate holds across the hosts.
    #[test]
    fn a_bucket_time_far_ahead_is_damage_and_a_little_ahead_is_a_clock() {
        let rate = Rate::parse("10/s").unwrap();
        let now = 1_000_000;
        for updated_ms in [now + MAX_CLOCK_AHEAD_MS + 1, i64::MAX as u64, u64::MAX] {
            let bucket = Bucket {
                tokens: 5.0,
                updated_ms,
            };
            let refilled = bucket.refilled(rate, now);
            assert_eq!((refilled.tokens, refilled.updated_ms), (0.0, now));
            // And it refills from there.
            assert_eq!(refilled.refilled(rate, now + 200).tokens, 2.0);
        }
        for ahead_ms in [1_000, 90_000, MAX_CLOCK_AHEAD_MS] {
            let ahead = Bucket {
                tokens: 5.0,
                updated_ms: now + ahead_ms,
            };
            let refilled = ahead.refilled(rate, now);
            assert_eq!(
                (refilled.tokens, refilled.updated_ms),
                (5.0, now + ahead_ms)
            );
        }
    }
}
