//! Rate limits: token buckets per tool, per plugin and per principal.
//!
//! A limit is written `N/unit` (`10/min`, `5/s`, `1000/hour`): a bucket of
//! `N` tokens refilled continuously at `N` per unit. A call takes one token
//! from every bucket that applies, or none (it is refused with the time until
//! the emptiest bucket has a token again). Buckets live in the host's memory:
//! a restart refills them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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
    /// `N/hour`, `N/day`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Rate, String> {
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
}

/// The operator's rate limits (`[policy.rate_limits]`).
///
/// Every limit that applies to a call must have a token for it to run: the
/// manifest's per-tool limit, the policy's per-tool and per-plugin limits
/// (shared by all callers) and the caller's own principal bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitPolicy {
    /// Each principal's own limit across all tools, unless `principals`
    /// names it.
    pub principal: Option<String>,
    /// Per named principal, replacing `principal` for it.
    pub principals: BTreeMap<String, String>,
    /// Per plugin name, across principals.
    pub plugins: BTreeMap<String, String>,
    /// Per `plugin/tool`, across principals (in addition to the manifest's).
    pub tools: BTreeMap<String, String>,
}

impl RateLimitPolicy {
    /// Check every rate parses.
    ///
    /// # Errors
    /// The first invalid rate, named by its key.
    pub fn validate(&self) -> Result<(), String> {
        Rates::new(self).map(|_| ())
    }
}

/// `name` as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// A [`RateLimitPolicy`] parsed once, when the host starts.
#[derive(Debug, Default)]
struct Rates {
    principal: Option<Rate>,
    principals: HashMap<String, Rate>,
    plugins: HashMap<String, Rate>,
    tools: HashMap<String, Rate>,
}

impl Rates {
    fn new(policy: &RateLimitPolicy) -> Result<Rates, String> {
        let one = |key: &str, rate: &str| {
            Rate::parse(rate).map_err(|e| format!("policy.rate_limits.{key}: {e}"))
        };
        let map = |section: &str, rates: &BTreeMap<String, String>| {
            rates
                .iter()
                .map(|(name, rate)| {
                    Ok((
                        name.clone(),
                        one(&format!("{section}.{}", toml_key(name)), rate)?,
                    ))
                })
                .collect::<Result<HashMap<_, _>, String>>()
        };
        Ok(Rates {
            principal: policy
                .principal
                .as_deref()
                .map(|rate| one("principal", rate))
                .transpose()?,
            principals: map("principals", &policy.principals)?,
            plugins: map("plugins", &policy.plugins)?,
            tools: map("tools", &policy.tools)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.principal.is_none()
            && self.principals.is_empty()
            && self.plugins.is_empty()
            && self.tools.is_empty()
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Every bucket of a host, with the policy's rates.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    rates: Rates,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// A limiter for `policy` (already validated).
    pub(crate) fn new(policy: &RateLimitPolicy) -> Result<Limiter, String> {
        Ok(Limiter {
            rates: Rates::new(policy)?,
            buckets: Mutex::default(),
        })
    }

    /// Admit one call of `tool` (with the manifest's `tool_rate`) of `plugin`
    /// by `principal`, or say which limit refused it and when to retry.
    pub(crate) fn admit(
        &self,
        plugin: &str,
        tool: &str,
        tool_rate: Option<Rate>,
        principal: &str,
    ) -> Result<(), (String, Duration)> {
        if tool_rate.is_none() && self.rates.is_empty() {
            return Ok(());
        }
        let rates = &self.rates;
        let limits: Vec<(String, Rate)> = [
            tool_rate.map(|r| (format!("tool {tool}"), r)),
            rates
                .tools
                .get(tool)
                .map(|&r| (format!("tool {tool} (policy)"), r)),
            rates
                .plugins
                .get(plugin)
                .map(|&r| (format!("plugin {plugin}"), r)),
            rates
                .principals
                .get(principal)
                .or(rates.principal.as_ref())
                .map(|&r| (format!("principal {principal}"), r)),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.take(&limits)
    }

    /// Take one token from each `(scope, rate)`, all or none. `Err(scope,
    /// wait)`: the first exhausted scope and how long until it refills.
    pub(crate) fn take(&self, limits: &[(String, Rate)]) -> Result<(), (String, Duration)> {
        if limits.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Err(("host".into(), Duration::from_secs(1)));
        };
        let mut refusal: Option<(String, Duration)> = None;
        for (scope, rate) in limits {
            let per_token = rate.per.as_secs_f64() / f64::from(rate.count);
            let bucket = buckets.entry(scope.clone()).or_insert(Bucket {
                tokens: f64::from(rate.count),
                updated: now,
            });
            let elapsed = now.duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed / per_token).min(f64::from(rate.count));
            bucket.updated = now;
            if bucket.tokens < 1.0 && refusal.is_none() {
                let wait = Duration::from_secs_f64((1.0 - bucket.tokens) * per_token);
                refusal = Some((scope.clone(), wait));
            }
        }
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        for (scope, _) in limits {
            if let Some(bucket) = buckets.get_mut(scope) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_are_named() {
        assert_eq!(
            Rate::parse("10/min").unwrap(),
            Rate {
                count: 10,
                per: Duration::from_secs(60)
            }
        );
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("ten/min").is_err());
        assert!(Rate::parse("10/fortnight").is_err());
        assert!(Rate::parse("10").is_err());
    }

    #[test]
    fn buckets_take_all_or_nothing_and_say_when_to_retry() {
        let limiter = Limiter::default();
        let two = Rate::parse("2/hour").unwrap();
        let five = Rate::parse("5/hour").unwrap();
        let both = vec![("tool".to_owned(), two), ("principal".to_owned(), five)];
        limiter.take(&both).unwrap();
        limiter.take(&both).unwrap();
        let (scope, wait) = limiter.take(&both).unwrap_err();
        assert_eq!(scope, "tool");
        assert!(wait > Duration::from_secs(60));
        // The refused call took nothing from the principal's bucket.
        let principal_only = vec![("principal".to_owned(), five)];
        for _ in 0..3 {
            limiter.take(&principal_only).unwrap();
        }
        assert!(limiter.take(&principal_only).is_err());
    }
}
