//! The operator's alert rules (`[alerts]` in the host configuration) and
//! their checks. Every check names the key it refuses
//! (`alerts.rules[2].threshold`), so a malformed rule is a configuration
//! error the operator can find.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Longest alert rule or webhook name, in bytes.
const MAX_NAME_BYTES: usize = 64;
/// Longest window a rule may look back over: the host keeps every call of
/// the window in memory.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// `[alerts]`: rules evaluated over the calls the host runs, what each
/// does when it fires, and the webhooks they post to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AlertConfig {
    /// The rules (`[[alerts.rules]]`).
    pub rules: Vec<AlertRule>,
    /// Webhooks rules post to (`[[alerts.webhooks]]`).
    pub webhooks: Vec<Webhook>,
    /// Automatic takeovers (pause, read-only, rollback) one host makes per
    /// hour at most; beyond it a takeover is recorded as `suppressed` and
    /// not made, so a rule cannot take a fleet down by itself.
    pub max_takeovers_per_hour: u32,
}

impl Default for AlertConfig {
    fn default() -> AlertConfig {
        AlertConfig {
            rules: Vec::new(),
            webhooks: Vec::new(),
            max_takeovers_per_hour: 3,
        }
    }
}

/// One alert rule (`[[alerts.rules]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AlertRule {
    /// Unique name, recorded with each alert (`[A-Za-z0-9._-]`, 1–64).
    pub name: String,
    /// What it measures.
    pub metric: AlertMetric,
    /// Which tools' calls it watches, each on its own: `*` (every tool,
    /// the default), `plugin/*` or `plugin/tool`. Host-wide metrics
    /// (approvals, audit failures) ignore it.
    #[serde(default = "every_tool")]
    pub tools: String,
    /// How far back the value looks (`"1m"`, `"30s"`).
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Fires when the value is at or above this.
    pub threshold: f64,
    /// Resolves when the value is below this (default: `threshold`). A
    /// lower value keeps a rule near its threshold from flapping.
    #[serde(default)]
    pub clear: Option<f64>,
    /// How long the value must stay over the threshold before the alert
    /// fires, and under `clear` before it resolves (default 0: at once).
    #[serde(rename = "for", default, deserialize_with = "duration")]
    pub for_duration: Duration,
    /// Calls the window must hold before a per-call value counts (error
    /// rate, latency, fuel): one failed call of one is not a 100 % error
    /// rate. Default 5.
    #[serde(default = "default_min_calls")]
    pub min_calls: u64,
    /// Webhooks (by name) to post the alert to when it fires and resolves.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// What the host does by itself when the alert fires.
    #[serde(default)]
    pub takeover: Option<TakeoverAction>,
}

fn every_tool() -> String {
    "*".to_owned()
}

fn default_min_calls() -> u64 {
    5
}

/// What an alert rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertMetric {
    /// Share of finished calls (refusals aside) that failed: a tool
    /// error, a trap, a host failure. 0 to 1.
    ErrorRate,
    /// 99th percentile of finished calls' wall time, in milliseconds.
    LatencyP99Ms,
    /// Calls refused before they ran (any refusal kind), per minute.
    RefusalsPerMinute,
    /// Calls denied (the tool answered `denied`, or an approver rejected
    /// it), per minute.
    DenialsPerMinute,
    /// Mean fuel of the window's successful calls over the mean of the
    /// calls before it (the tool's norm): 3 means three times the norm.
    FuelRatio,
    /// Approvals pending on the host (host-wide).
    ApprovalsPending,
    /// Age of the oldest pending approval, in seconds (host-wide).
    ApprovalAgeS,
    /// Calls that failed because the audit log or a store could not
    /// record or answer, in the window (host-wide).
    AuditFailures,
}

impl AlertMetric {
    /// The name used in the configuration and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::ErrorRate => "error_rate",
            AlertMetric::LatencyP99Ms => "latency_p99_ms",
            AlertMetric::RefusalsPerMinute => "refusals_per_minute",
            AlertMetric::DenialsPerMinute => "denials_per_minute",
            AlertMetric::FuelRatio => "fuel_ratio",
            AlertMetric::ApprovalsPending => "approvals_pending",
            AlertMetric::ApprovalAgeS => "approval_age_s",
            AlertMetric::AuditFailures => "audit_failures",
        }
    }

    /// Whether the metric is one value for the whole host rather than one
    /// per tool.
    pub fn is_host_wide(self) -> bool {
        match self {
            AlertMetric::ApprovalsPending
            | AlertMetric::ApprovalAgeS
            | AlertMetric::AuditFailures => true,
            AlertMetric::ErrorRate
            | AlertMetric::LatencyP99Ms
            | AlertMetric::RefusalsPerMinute
            | AlertMetric::DenialsPerMinute
            | AlertMetric::FuelRatio => false,
        }
    }
}

/// What a host does by itself when an alert fires. Each is rate-limited
/// (`max_takeovers_per_hour`), recorded, and undone only by a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TakeoverAction {
    /// Pause the tool the alert is about: its calls are refused with
    /// `tool_paused` on every host sharing the store.
    PauseTool,
    /// Pause every tool of the alert's plugin.
    PausePlugin,
    /// Switch the host (every host sharing the store) to read-only.
    ReadOnly,
    /// Roll the alert's plugin back: stop its canary, or serve the
    /// previous version.
    Rollback,
}

impl TakeoverAction {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverAction::PauseTool => "pause_tool",
            TakeoverAction::PausePlugin => "pause_plugin",
            TakeoverAction::ReadOnly => "read_only",
            TakeoverAction::Rollback => "rollback",
        }
    }
}

/// A webhook alerts are posted to (`[[alerts.webhooks]]`): JSON, signed
/// per the Standard Webhooks specification (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature`), retried with backoff, never
/// on a call's path.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Webhook {
    /// Name rules refer to it by.
    pub name: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// The signing secret (prefer `secret_env`: a file is easier to leak):
    /// a Standard Webhooks secret (`whsec_` and base64 of the key, as a
    /// receiver's library generates it), or any other text of at least 16
    /// bytes, whose bytes are then the key.
    #[serde(default)]
    pub secret: Option<String>,
    /// Name of the environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Attempts per alert before it is recorded undelivered (default 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Time one attempt may take, connecting included (default `"5s"`).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Wait before the first retry, doubled for each next one up to 30 s
    /// (default `"500ms"`).
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub backoff: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            // Its origin only: chat services' webhook URLs carry their
            // secret in the path (and a query may too), and a debug
            // print of the configuration reaches logs.
            .field("url", &redacted_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("secret_env", &self.secret_env)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// Warn, once a process for each webhook, that its secret is used as
/// its own bytes. Standard Webhooks libraries base64-decode a secret
/// given without the prefix: the same text configured there verifies
/// nothing, or (if it happens to be base64) under another key.
fn warn_raw_secret(key: &str, webhook: &str) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(webhook.to_owned());
    if first {
        tracing::warn!(
            webhook,
            "{key}: the secret has no `whsec_` prefix, so its text itself is the key: give receivers `whsec_` and the base64 of that text (or verify with their library's from-bytes constructor)"
        );
    }
}

/// `url` with any path and query replaced by `/…` and any credentials
/// (`user:password@`) by `…@`: what may be printed of a URL that can
/// carry a secret.
pub(crate) fn redacted_url(url: &str) -> String {
    // A scheme is letters, digits, `+`, `-`, `.` after a letter: a `://`
    // further on (in a query) makes none.
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            (scheme, rest)
        }
        _ => ("", url),
    };
    let end = rest
        .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c.is_control())
        .unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    let origin = match authority.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        // An `@` past the authority may end credentials whose password
        // holds a `/`, `?` or `#` (a URL refused, and this its error):
        // nothing of it is shown.
        None if after.contains('@') => "…".to_owned(),
        None => authority.to_owned(),
    };
    let tail = if after.trim_start_matches('/').is_empty() || origin == "…" {
        ""
    } else {
        "/…"
    };
    if scheme.is_empty() {
        format!("{origin}{tail}")
    } else {
        format!("{scheme}://{origin}{tail}")
    }
}

fn default_attempts() -> u32 {
    5
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_backoff() -> Duration {
    Duration::from_millis(500)
}

impl Webhook {
    /// A webhook posting to `url`, signed with `secret`, with the default
    /// attempts, timeout and backoff.
    pub fn new(name: &str, url: &str, secret: &str) -> Webhook {
        Webhook {
            name: name.to_owned(),
            url: url.to_owned(),
            secret: Some(secret.to_owned()),
            secret_env: None,
            max_attempts: default_attempts(),
            timeout: default_timeout(),
            backoff: default_backoff(),
        }
    }

    /// Retry after `backoff` instead of the default.
    pub fn backoff(mut self, backoff: Duration) -> Webhook {
        self.backoff = backoff;
        self
    }

    /// Give each attempt `timeout` instead of the default.
    pub fn timeout(mut self, timeout: Duration) -> Webhook {
        self.timeout = timeout;
        self
    }

    /// Try `attempts` times instead of the default.
    pub fn max_attempts(mut self, attempts: u32) -> Webhook {
        self.max_attempts = attempts;
        self
    }
}

impl AlertRule {
    /// A rule `name` firing when `metric` over `window` reaches
    /// `threshold`, watching every tool, with no `for` duration, the
    /// default `min_calls`, no webhook and no takeover.
    pub fn new(name: &str, metric: AlertMetric, window: Duration, threshold: f64) -> AlertRule {
        AlertRule {
            name: name.to_owned(),
            metric,
            tools: every_tool(),
            window,
            threshold,
            clear: None,
            for_duration: Duration::ZERO,
            min_calls: default_min_calls(),
            webhooks: Vec::new(),
            takeover: None,
        }
    }

    /// Watch `tools` (`*`, `plugin/*` or `plugin/tool`).
    pub fn tools(mut self, tools: &str) -> AlertRule {
        self.tools = tools.to_owned();
        self
    }

    /// Fire only after the value stays over the threshold for `duration`
    /// (and resolve only after it stays under `clear` as long).
    pub fn for_duration(mut self, duration: Duration) -> AlertRule {
        self.for_duration = duration;
        self
    }

    /// Resolve below `clear` rather than below the threshold.
    pub fn clear(mut self, clear: f64) -> AlertRule {
        self.clear = Some(clear);
        self
    }

    /// Count per-call values only once the window holds `calls` calls.
    pub fn min_calls(mut self, calls: u64) -> AlertRule {
        self.min_calls = calls;
        self
    }

    /// Post to the webhook `name` when firing and resolving.
    pub fn webhook(mut self, name: &str) -> AlertRule {
        self.webhooks.push(name.to_owned());
        self
    }

    /// Take `action` when firing.
    pub fn takeover(mut self, action: TakeoverAction) -> AlertRule {
        self.takeover = Some(action);
        self
    }

    /// The value under which the alert resolves.
    pub(crate) fn clear_below(&self) -> f64 {
        self.clear.unwrap_or(self.threshold)
    }

    /// Whether the rule watches `tool` (`plugin/tool`).
    pub(crate) fn watches(&self, tool: &str) -> bool {
        if self.tools == "*" {
            return true;
        }
        match self.tools.strip_suffix("/*") {
            Some(plugin) => tool.split_once('/').is_some_and(|(p, _)| p == plugin),
            None => self.tools == tool,
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl AlertConfig {
    /// Check the rules and webhooks, and read each webhook's secret from
    /// its environment variable (once: the result holds the secret).
    /// [`Host::new`](crate::Host::new) does it; a configuration loader may
    /// too, to report errors early.
    ///
    /// # Errors
    /// A message naming the key at fault (`alerts.rules[0].window must be
    /// …`).
    pub fn resolve(mut self) -> Result<AlertConfig, String> {
        let mut webhook_names = std::collections::BTreeSet::new();
        for (i, hook) in self.webhooks.iter_mut().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            if !valid_name(&hook.name) {
                return Err(format!(
                    "{key}.name {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -",
                    hook.name
                ));
            }
            if !webhook_names.insert(hook.name.clone()) {
                return Err(format!("{key}.name {:?} is used twice", hook.name));
            }
            super::webhook::Target::parse(&hook.url)
                .map_err(|why| format!("{key}.url {:?}: {why}", redacted_url(&hook.url)))?;
            let secret = match (&hook.secret, &hook.secret_env) {
                (Some(_), Some(_)) => {
                    return Err(format!("{key}: give secret or secret_env, not both"));
                }
                (None, None) => {
                    return Err(format!(
                        "{key}: a webhook needs secret_env (or secret) to sign its body"
                    ));
                }
                (Some(secret), None) => secret.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    format!("{key}.secret_env: the environment variable {var} is not set")
                })?,
            };
            let signing_key =
                super::webhook::signing_key(&secret).map_err(|why| format!("{key}: {why}"))?;
            if signing_key.len() < 16 {
                return Err(format!(
                    "{key}: the secret's key must be at least 16 bytes long"
                ));
            }
            let raw_secret = !secret.starts_with(super::webhook::SECRET_PREFIX);
            hook.secret = Some(secret);
            hook.secret_env = None;
            if !(1..=20).contains(&hook.max_attempts) {
                return Err(format!("{key}.max_attempts must be between 1 and 20"));
            }
            if hook.timeout.is_zero() || hook.timeout > Duration::from_secs(60) {
                return Err(format!("{key}.timeout must be over 0 and at most 60s"));
            }
            if hook.backoff > Duration::from_secs(60) {
                return Err(format!("{key}.backoff must be at most 60s"));
            }
            if raw_secret {
                warn_raw_secret(&key, &hook.name);
            }
        }
        let mut rule_names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("alerts.rules[{i}]");
            if !valid_name(&rule.name) {
                return Err(format!(
                    "{key}.name {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -",
                    rule.name
                ));
            }
            if !rule_names.insert(rule.name.clone()) {
                return Err(format!("{key}.name {:?} is used twice", rule.name));
            }
            check_tools(&rule.tools).map_err(|why| format!("{key}.tools: {why}"))?;
            if rule.window.is_zero() || rule.window > MAX_WINDOW {
                return Err(format!("{key}.window must be over 0 and at most 24h"));
            }
            if rule.for_duration > MAX_WINDOW {
                return Err(format!("{key}.for must be at most 24h"));
            }
            // A rule fires at `value >= threshold` and resolves below
            // `clear`: at 0 it fired on every tool seen, whatever happened,
            // and never resolved (and a takeover paused them all).
            if !rule.threshold.is_finite() || rule.threshold <= 0.0 {
                return Err(format!(
                    "{key}.threshold must be a finite number over 0 (the rule fires at or above it; \
                     for \"any error at all\" set a small share such as 0.0001)"
                ));
            }
            if rule.metric == AlertMetric::ErrorRate && rule.threshold > 1.0 {
                return Err(format!(
                    "{key}.threshold of an error_rate is a share, 0 to 1 (0.05 is 5 %)"
                ));
            }
            // The evaluator keeps the newest calls of a tool (and the
            // newest failures of the host) up to a bound: a count over it
            // could never be reached, and the rule never fire.
            let needed = match rule.metric {
                AlertMetric::RefusalsPerMinute | AlertMetric::DenialsPerMinute => {
                    Some(rule.threshold * rule.window.as_secs_f64() / 60.0)
                }
                AlertMetric::AuditFailures => Some(rule.threshold),
                _ => None,
            };
            #[allow(clippy::cast_precision_loss)]
            if let Some(needed) = needed
                && needed > super::window::MAX_CALLS_PER_TOOL as f64
            {
                return Err(format!(
                    "{key}: a threshold of {} {} over a window of {} needs {} calls counted, more than the {} the evaluator keeps per tool (and of the host's failures): the rule could never fire; lower the threshold or shorten the window",
                    rule.threshold,
                    rule.metric.as_str(),
                    humantime::format_duration(rule.window),
                    needed.ceil(),
                    super::window::MAX_CALLS_PER_TOOL
                ));
            }
            // The same for `min_calls`: a rule on calls that ran needs that
            // many kept, and `fuel_ratio` as many in the tool's fuel norm.
            let kept = match rule.metric {
                AlertMetric::FuelRatio => Some(super::window::NORM_CALLS),
                AlertMetric::ErrorRate | AlertMetric::LatencyP99Ms => {
                    Some(super::window::MAX_CALLS_PER_TOOL)
                }
                _ => None,
            };
            if let Some(kept) = kept
                && rule.min_calls > u64::try_from(kept).unwrap_or(u64::MAX)
            {
                return Err(format!(
                    "{key}.min_calls of {} is more than the {kept} calls the evaluator keeps for {}: the rule could never fire",
                    rule.min_calls,
                    rule.metric.as_str()
                ));
            }
            if let Some(clear) = rule.clear
                && (!clear.is_finite() || clear <= 0.0 || clear > rule.threshold)
            {
                return Err(format!(
                    "{key}.clear must be a finite number over 0 and at most the threshold \
                     (the alert resolves below it: at 0, never)"
                ));
            }
            for (j, hook) in rule.webhooks.iter().enumerate() {
                if !webhook_names.contains(hook) {
                    return Err(format!(
                        "{key}.webhooks[{j}]: no webhook named {hook:?} in alerts.webhooks"
                    ));
                }
            }
            match rule.takeover {
                Some(
                    action @ (TakeoverAction::PauseTool
                    | TakeoverAction::PausePlugin
                    | TakeoverAction::Rollback),
                ) if rule.metric.is_host_wide() => {
                    return Err(format!(
                        "{key}.takeover {} needs a metric about a tool, not the host-wide {}",
                        action.as_str(),
                        rule.metric.as_str()
                    ));
                }
                _ => {}
            }
        }
        Ok(self)
    }
}

/// Check a rule's `tools`: `*`, `plugin/*` or `plugin/tool`.
fn check_tools(tools: &str) -> Result<(), &'static str> {
    if tools == "*" {
        return Ok(());
    }
    let Some((plugin, tool)) = tools.split_once('/') else {
        return Err("must be *, plugin/* or plugin/tool");
    };
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if part(plugin) && (tool == "*" || part(tool)) {
        Ok(())
    } else {
        Err("must be *, plugin/* or plugin/tool")
    }
}

/// A duration written as humantime text: `"30s"`, `"5m"`, `"250ms"`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}): write it like \"30s\", \"5m\" or \"250ms\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlertConfig, String> {
        let config: AlertConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.resolve()
    }

    #[test]
    fn a_rule_is_read_with_its_defaults() {
        let config = parse(
            r#"
            [[rules]]
            name = "errors"
            metric = "error_rate"
            window = "1m"
            threshold = 0.05
            "#,
        )
        .unwrap();
        let rule = &config.rules[0];
        assert_eq!(rule.tools, "*");
        assert_eq!(rule.window, Duration::from_secs(60));
        assert_eq!(rule.for_duration, Duration::ZERO);
        assert_eq!(rule.min_calls, 5);
        assert_eq!(config.max_takeovers_per_hour, 3);
    }

    #[test]
    fn malformed_rules_are_refused_naming_the_key() {
        let base = "[[rules]]\nname = \"r\"\nwindow = \"1m\"\n";
        let cases = [
            (
                "metric = \"bogus\"\nthreshold = 1.0",
                "unknown variant `bogus`",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 2.0",
                "alerts.rules[0].threshold",
            ),
            (
                "metric = \"error_rate\"\nthreshold = -1.0",
                "alerts.rules[0].threshold",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\nclear = 0.9",
                "alerts.rules[0].clear",
            ),
            // At 0 a rule fires on every tool whatever happens and never
            // resolves.
            (
                "metric = \"error_rate\"\nthreshold = 0.0",
                "alerts.rules[0].threshold must be a finite number over 0",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\nclear = 0.0",
                "alerts.rules[0].clear must be a finite number over 0",
            ),
            // More calls than are kept: the rule could never fire.
            (
                "metric = \"fuel_ratio\"\nthreshold = 3.0\nmin_calls = 1001",
                "alerts.rules[0].min_calls",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\nmin_calls = 10001",
                "alerts.rules[0].min_calls",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\ntools = \"a/b/c\"",
                "alerts.rules[0].tools",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\nwebhooks = [\"ops\"]",
                "alerts.rules[0].webhooks[0]",
            ),
            (
                "metric = \"approvals_pending\"\nthreshold = 5.0\ntakeover = \"pause_tool\"",
                "alerts.rules[0].takeover",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\nspeed = 1",
                "unknown field `speed`",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\nfor = \"soon\"",
                "invalid duration \"soon\"",
            ),
            (
                "metric = \"error_rate\"\nthreshold = 0.5\ntakeover = \"explode\"",
                "unknown variant `explode`",
            ),
        ];
        for (rest, expected) in cases {
            let error = parse(&format!("{base}{rest}")).unwrap_err();
            assert!(error.contains(expected), "{rest}: {error}");
        }
        let zero_window = parse(
            "[[rules]]\nname = \"r\"\nwindow = \"0s\"\nmetric = \"error_rate\"\nthreshold = 0.5",
        )
        .unwrap_err();
        assert!(
            zero_window.contains("alerts.rules[0].window"),
            "{zero_window}"
        );
        let twice = parse(
            "[[rules]]\nname = \"r\"\nwindow = \"1s\"\nmetric = \"error_rate\"\nthreshold = 0.5\n\
             [[rules]]\nname = \"r\"\nwindow = \"1s\"\nmetric = \"error_rate\"\nthreshold = 0.5",
        )
        .unwrap_err();
        assert!(twice.contains("alerts.rules[1].name"), "{twice}");
        // A count the evaluator cannot hold (it keeps 10,000 calls a tool)
        // could never be reached: refused rather than never firing.
        let rule = |window: &str, metric: &str, threshold: &str| {
            parse(&format!(
                "[[rules]]\nname = \"r\"\nwindow = \"{window}\"\nmetric = \"{metric}\"\nthreshold = {threshold}"
            ))
        };
        for (window, metric, threshold) in [
            ("1h", "refusals_per_minute", "200.0"),
            ("24h", "denials_per_minute", "7.0"),
            ("1m", "audit_failures", "10001.0"),
        ] {
            let error = rule(window, metric, threshold).unwrap_err();
            assert!(error.contains("could never fire"), "{error}");
            assert!(error.contains("alerts.rules[0]"), "{error}");
        }
        rule("1h", "refusals_per_minute", "150.0").unwrap();
        rule("1m", "audit_failures", "10000.0").unwrap();
    }

    #[test]
    fn malformed_webhooks_are_refused_naming_the_key() {
        let cases = [
            (
                "name = \"ops\"\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"",
                "alerts.webhooks[0].url",
            ),
            (
                "name = \"ops\"\nurl = \"http://x\"",
                "alerts.webhooks[0]: a webhook needs",
            ),
            (
                "name = \"ops\"\nurl = \"http://x\"\nsecret = \"short\"",
                "at least 16 bytes",
            ),
            // A Standard Webhooks secret is the key's base64: it must
            // decode, and the key be long enough.
            (
                "name = \"ops\"\nurl = \"http://x\"\nsecret = \"whsec_not base64 at all!\"",
                "alerts.webhooks[0]: a secret starting whsec_ must be base64",
            ),
            (
                "name = \"ops\"\nurl = \"http://x\"\nsecret = \"whsec_MDEyMzQ1Njc4OQ==\"",
                "at least 16 bytes",
            ),
            (
                "name = \"ops\"\nurl = \"http://x\"\nsecret_env = \"AIRLOCK_TEST_SURELY_UNSET_VAR\"",
                "alerts.webhooks[0].secret_env",
            ),
            (
                "name = \"ops\"\nurl = \"http://x\"\nsecret = \"0123456789abcdef\"\nmax_attempts = 0",
                "alerts.webhooks[0].max_attempts",
            ),
        ];
        for (hook, expected) in cases {
            let error = parse(&format!("[[webhooks]]\n{hook}")).unwrap_err();
            assert!(error.contains(expected), "{hook}: {error}");
            // Nothing of the secret is quoted (base64's own error names
            // the byte it stopped at).
            assert!(
                !error.contains("symbol") && !error.contains("not base64 at all"),
                "{hook}: {error}"
            );
        }
        // 16 bytes encoded: accepted.
        parse("[[webhooks]]\nname = \"ops\"\nurl = \"http://x\"\nsecret = \"whsec_MDEyMzQ1Njc4OWFiY2RlZg==\"")
            .unwrap();
    }

    #[test]
    fn tool_patterns_match_as_written() {
        let rule = |tools| {
            AlertRule::new("r", AlertMetric::ErrorRate, Duration::from_secs(1), 0.5).tools(tools)
        };
        assert!(rule("*").watches("a/b"));
        assert!(rule("a/*").watches("a/b"));
        assert!(!rule("a/*").watches("ab/c"));
        assert!(rule("a/b").watches("a/b"));
        assert!(!rule("a/b").watches("a/bc"));
    }

    /// A webhook's debug print shows its origin, not its path or query:
    /// chat services put the webhook's secret there.
    #[test]
    fn a_webhooks_debug_print_hides_its_path_and_query() {
        let hook = Webhook::new(
            "chat",
            "https://hooks.example.com/services/T000/B000/XXXXSECRETXXXX?token=abc",
            "0123456789abcdef",
        );
        let printed = format!("{hook:?}");
        assert!(printed.contains("https://hooks.example.com/…"), "{printed}");
        for secret in ["XXXXSECRETXXXX", "token=abc", "0123456789abcdef"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert_eq!(redacted_url("http://127.0.0.1:9/"), "http://127.0.0.1:9");
        assert_eq!(
            redacted_url("https://alice:s3cret@hooks.example.com/x"),
            "https://…@hooks.example.com/…"
        );
        assert_eq!(
            redacted_url("htps://h.example/T0/SECRET"),
            "htps://h.example/…"
        );
        assert_eq!(
            redacted_url("https://alice:p/ss?#@hooks.example.com/x"),
            "https://…"
        );
        // An `@` in a path or query ends no credentials.
        for (url, shown) in [
            (
                "https://hooks.example.com/x?user=alice@example.com&token=s3cret",
                "https://…",
            ),
            (
                "http://collector:4318/v1/traces?api_key=ab@s3cret",
                "http://…",
            ),
            ("https://hooks.example.com/T0/abc@s3cretpart", "https://…"),
            (
                "hooks.example.com/T0/s3cret?u=https://x",
                "hooks.example.com/…",
            ),
            (
                "https://u@hooks.example.com/a",
                "https://…@hooks.example.com/…",
            ),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
        assert_eq!(
            redacted_url("http://collector:4318 s3cret"),
            "http://collector:4318/…"
        );
        // Refused, without quoting what the URL carries.
        for url in [
            "https://alice:s3cret@hooks.example.com/x",
            "htps://hooks.example.com/services/T0/B0/s3cret",
        ] {
            let mut config = AlertConfig::default();
            config
                .webhooks
                .push(Webhook::new("chat", url, "0123456789abcdef"));
            let err = config.resolve().unwrap_err();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("hooks.example.com"), "{err}");
        }
        assert_eq!(redacted_url("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }
}
