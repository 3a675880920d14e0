//! Rate limits: token buckets per tool, per plugin and per principal.
//!
//! A limit is written `N/unit` (`10/min`, `5/s`, `1000/hour`): a bucket of
//! `N` tokens refilled continuously at `N` per unit. A call takes one token
//! from every bucket that applies, or none (it is refused with the time until
//! the emptiest bucket has a token again). Buckets live in the host's store
//! (`airlock_store::RateLimitStore`): in memory for one host on sled (a
//! restart refills them), in the database for hosts sharing PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use airlock_store::{RateLimitStore, StoreError};
use serde::{Deserialize, Serialize};

pub(crate) use airlock_store::Rate;

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

/// Every bucket of a host, with the policy's rates.
#[derive(Debug)]
pub(crate) struct Limiter {
    rates: Rates,
    buckets: Arc<dyn RateLimitStore>,
}

/// A call refused by a limit: which, and how long until it has a token.
pub(crate) type Refusal = (String, Duration);

impl Limiter {
    /// A limiter for `policy` (already validated) over `buckets`.
    pub(crate) fn new(
        policy: &RateLimitPolicy,
        buckets: Arc<dyn RateLimitStore>,
    ) -> Result<Limiter, String> {
        Ok(Limiter {
            rates: Rates::new(policy)?,
            buckets,
        })
    }

    /// Admit one call of `tool` (with the manifest's `tool_rate`) of `plugin`
    /// by `principal` at `now_ms`, or say which limit refused it and when to
    /// retry.
    ///
    /// # Errors
    /// The store's, when it cannot say (the caller fails closed).
    pub(crate) fn admit(
        &self,
        plugin: &str,
        tool: &str,
        tool_rate: Option<Rate>,
        principal: &str,
        now_ms: u64,
    ) -> Result<Option<Refusal>, StoreError> {
        if tool_rate.is_none() && self.rates.is_empty() {
            return Ok(None);
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
        if limits.is_empty() {
            return Ok(None);
        }
        self.buckets.take(&limits, now_ms)
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
    fn every_limit_that_applies_is_a_bucket_of_its_own() {
        let policy = RateLimitPolicy {
            principal: Some("3/hour".into()),
            plugins: BTreeMap::from([("billing".into(), "1/hour".into())]),
            ..RateLimitPolicy::default()
        };
        let limiter =
            Limiter::new(&policy, Arc::new(airlock_store::MemoryBuckets::default())).unwrap();
        let admit = |plugin, principal| {
            limiter
                .admit(plugin, "t", None, principal, 1_000)
                .unwrap()
                .map(|(scope, _)| scope)
        };
        assert_eq!(admit("billing", "a"), None);
        assert_eq!(admit("billing", "a").as_deref(), Some("plugin billing"));
        assert_eq!(admit("notes", "a"), None);
        assert_eq!(admit("notes", "a"), None);
        assert_eq!(admit("notes", "a").as_deref(), Some("principal a"));
        assert_eq!(admit("notes", "b"), None);
    }
}
