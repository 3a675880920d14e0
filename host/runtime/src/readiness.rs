//! Readiness: the pre-launch checklist as checks per plugin and tool
//! ([`Host::readiness`](crate::Host::readiness)).
//!
//! Each [`ReadinessCheck`] looks at what serves a plugin, the operator's
//! policy, the alert rules and the audit log, and says what is missing,
//! why, and how to fix it. The operator chooses which checks are required
//! ([`ReadinessConfig::required`]); a required check that fails makes the
//! plugin not ready, any other is a warning.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alerts::{AlertConfig, AlertMetric};
use crate::manifest::Risk;
use crate::plugin::{Plugin, Tool};

/// One check of the readiness list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReadinessCheck {
    /// The plugin's manifest sets its fuel, timeout and memory (under the
    /// ceilings, which loading checks) rather than taking the defaults.
    Limits,
    /// Every `external` and `irreversible` tool has a rate limit (manifest
    /// or policy).
    RateLimit,
    /// Every `irreversible` tool needs an approval.
    Approval,
    /// Every side-effecting tool (not `read`) requires an idempotency key.
    Idempotency,
    /// Argument fields that look sensitive (password, token, secret, …)
    /// are redacted before the audit log.
    Redaction,
    /// The plugin ships evaluation cases (`cases.jsonl`) and every one
    /// passes ([`Host::evaluate`](crate::Host::evaluate)).
    EvalCases,
    /// There is a version to roll back to (a rollout with a previous
    /// version or a canary).
    RollbackTarget,
    /// The audit log is durable (a data directory, not a temporary store)
    /// with a checkpoint signed in the last 24 hours.
    AuditDurable,
    /// Alert rules watch the plugin's error rate and latency.
    AlertRules,
    /// An approver is configured.
    Approver,
    /// The host can switch to read-only (the mode store answers).
    ReadOnlyTakeover,
    /// The plugin's calls are routed: its rollout record, if it has one,
    /// can be read, and the version it serves and its canary, if one runs,
    /// load. Always required, whatever the configuration says: a plugin
    /// whose calls fail is not ready.
    Routing,
}

impl ReadinessCheck {
    /// Every check, in the order reports list them.
    pub const ALL: [ReadinessCheck; 12] = [
        ReadinessCheck::Limits,
        ReadinessCheck::RateLimit,
        ReadinessCheck::Approval,
        ReadinessCheck::Idempotency,
        ReadinessCheck::Redaction,
        ReadinessCheck::EvalCases,
        ReadinessCheck::RollbackTarget,
        ReadinessCheck::AuditDurable,
        ReadinessCheck::AlertRules,
        ReadinessCheck::Approver,
        ReadinessCheck::ReadOnlyTakeover,
        ReadinessCheck::Routing,
    ];

    /// The name in configurations and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadinessCheck::Limits => "limits",
            ReadinessCheck::RateLimit => "rate_limit",
            ReadinessCheck::Approval => "approval",
            ReadinessCheck::Idempotency => "idempotency",
            ReadinessCheck::Redaction => "redaction",
            ReadinessCheck::EvalCases => "eval_cases",
            ReadinessCheck::RollbackTarget => "rollback_target",
            ReadinessCheck::AuditDurable => "audit_durable",
            ReadinessCheck::AlertRules => "alert_rules",
            ReadinessCheck::Approver => "approver",
            ReadinessCheck::ReadOnlyTakeover => "read_only_takeover",
            ReadinessCheck::Routing => "routing",
        }
    }
}

/// `[readiness]`: which checks are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ReadinessConfig {
    /// Checks whose failure makes a plugin not ready; the others warn.
    /// Default: `limits`, `rate_limit`, `approval`, `idempotency`,
    /// `redaction`.
    pub required: Vec<ReadinessCheck>,
}

impl Default for ReadinessConfig {
    fn default() -> ReadinessConfig {
        ReadinessConfig {
            required: vec![
                ReadinessCheck::Limits,
                ReadinessCheck::RateLimit,
                ReadinessCheck::Approval,
                ReadinessCheck::Idempotency,
                ReadinessCheck::Redaction,
            ],
        }
    }
}

impl ReadinessConfig {
    /// Require exactly `checks`.
    pub fn requiring(checks: impl IntoIterator<Item = ReadinessCheck>) -> ReadinessConfig {
        ReadinessConfig {
            required: checks.into_iter().collect(),
        }
    }
}

/// Something a check found missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReadinessFinding {
    /// The check.
    pub check: ReadinessCheck,
    /// The plugin.
    pub plugin: String,
    /// The version of it the finding is about: the serving version's, or
    /// the canary's (whose reason also says `canary VERSION:`).
    pub version: String,
    /// The tool, for a check about one.
    pub tool: Option<String>,
    /// What is missing.
    pub reason: String,
    /// How to fix it.
    pub fix: String,
}

/// One plugin's readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReadinessReport {
    /// The plugin.
    pub plugin: String,
    /// Its serving version, or its canary when that is what does not load
    /// (a `routing` finding); empty when not known (its rollout record
    /// cannot be read).
    pub version: String,
    /// No required check failed.
    pub ready: bool,
    /// Required checks that failed.
    pub missing_required: Vec<ReadinessFinding>,
    /// Other checks that failed.
    pub warnings: Vec<ReadinessFinding>,
    /// Checks that passed.
    pub passed: Vec<ReadinessCheck>,
}

/// Add the report of `version`, the canary of `report`'s plugin, to it:
/// each of its findings the serving version does not share, its reason
/// naming the canary; a check passes only when it passes on both, and the
/// plugin is ready only when both are.
pub(crate) fn add_canary(report: &mut ReadinessReport, canary: ReadinessReport, version: &str) {
    let add = |to: &mut Vec<ReadinessFinding>, findings: Vec<ReadinessFinding>| {
        for finding in findings {
            let shared = to.iter().any(|f| {
                f.check == finding.check && f.tool == finding.tool && f.reason == finding.reason
            });
            if !shared {
                to.push(ReadinessFinding {
                    reason: format!("canary {version}: {}", finding.reason),
                    ..finding
                });
            }
        }
    };
    add(&mut report.missing_required, canary.missing_required);
    add(&mut report.warnings, canary.warnings);
    report.passed.retain(|check| canary.passed.contains(check));
    report.ready &= canary.ready;
}

/// What the checks look at besides the plugin.
pub(crate) struct Context<'a> {
    pub(crate) policy: &'a crate::grants::Policy,
    pub(crate) alerts: &'a AlertConfig,
    pub(crate) required: &'a [ReadinessCheck],
    /// A rollout has something to roll back to.
    pub(crate) rollback_target: bool,
    /// The audit log is kept in a data directory.
    pub(crate) durable: bool,
    /// When the newest checkpoint was signed, ms since the Unix epoch.
    pub(crate) last_checkpoint_ms: Option<u64>,
    /// The mode store answers.
    pub(crate) mode_available: bool,
    pub(crate) now_ms: u64,
    /// What the plugin's evaluation cases gave.
    pub(crate) eval: Eval,
}

/// What a plugin's evaluation cases gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Eval {
    /// No `cases.jsonl`.
    Missing,
    /// The cases file cannot be read or run: why.
    Unusable(String),
    /// Run: cases that failed, of how many.
    Ran { failed: usize, total: usize },
}

/// Field names that usually hold secrets or personal data.
const SENSITIVE: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
    "ssn",
    "card_number",
];

/// How recent the newest checkpoint must be.
const CHECKPOINT_AGE: Duration = Duration::from_secs(24 * 3600);

/// Check `plugin` against the list.
pub(crate) fn check(plugin: &Plugin, context: &Context<'_>) -> ReadinessReport {
    let mut failed: Vec<ReadinessFinding> = Vec::new();
    let name = plugin.name().to_owned();
    // What `airlock eval` takes for exactly this version (a canary's
    // cases are not the serving version's).
    let reference = format!("{name}@{}", plugin.version());
    let finding = |check, tool: Option<&Tool>, reason: String, fix: String| ReadinessFinding {
        check,
        plugin: name.clone(),
        version: plugin.version().to_owned(),
        tool: tool.map(|t| t.name().to_owned()),
        reason,
        fix,
    };
    let tools: Vec<_> = plugin.tools().collect();

    // Limits.
    let limits = plugin.limits();
    let defaulted: Vec<&str> = [
        ("fuel", limits.fuel),
        ("timeout_ms", limits.timeout_ms),
        ("memory_mb", limits.memory_mb),
    ]
    .into_iter()
    .filter(|(_, l)| l.source == crate::limits::LimitSource::Default)
    .map(|(k, _)| k)
    .collect();
    if !defaulted.is_empty() {
        failed.push(finding(
            ReadinessCheck::Limits,
            None,
            format!(
                "the manifest takes the host's default for {}",
                defaulted.join(", ")
            ),
            format!(
                "set {} in the manifest's [limits] to what the plugin needs",
                defaulted.join(", ")
            ),
        ));
    }
    for tool in &tools {
        let risk = tool.risk();
        // Rate limits on external and irreversible tools.
        if matches!(risk, Risk::External | Risk::Irreversible)
            && tool.rate_limit().is_none()
            && !context.policy.rate_limits.tools.contains_key(tool.id())
            && !context
                .policy
                .rate_limits
                .plugins
                .contains_key(plugin.name())
        {
            failed.push(finding(
                ReadinessCheck::RateLimit,
                Some(tool),
                format!("an {} tool without a rate limit", risk.as_str()),
                format!(
                    "add rate_limit = \"10/min\" to the tool in the manifest, or policy.rate_limits.tools.\"{}\"",
                    tool.id()
                ),
            ));
        }
        // Approval on irreversible tools.
        let approvals = &context.policy.approvals;
        if risk == Risk::Irreversible
            && !tool.approval_required()
            && !approvals.require_for.contains(&Risk::Irreversible)
            && !approvals.tools.iter().any(|t| t == tool.id())
        {
            failed.push(finding(
                ReadinessCheck::Approval,
                Some(tool),
                "an irreversible tool that runs without a human approval".to_owned(),
                "add approval = \"required\" to the tool, or \"irreversible\" to policy.approvals.require_for".to_owned(),
            ));
        }
        // Idempotency on side-effecting tools.
        if risk != Risk::Read && !tool.idempotency_required() {
            failed.push(finding(
                ReadinessCheck::Idempotency,
                Some(tool),
                format!(
                    "{} {} tool callers may run twice by retrying",
                    if risk.as_str().starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    },
                    risk.as_str()
                ),
                "add idempotency = \"required\" to the tool in the manifest".to_owned(),
            ));
        }
        // Redaction of sensitive-looking fields.
        for field in sensitive_fields(tool.input_schema()) {
            if !redacted(tool.redact(), &field) {
                failed.push(finding(
                    ReadinessCheck::Redaction,
                    Some(tool),
                    format!(
                        "argument {field} looks sensitive and reaches the audit log as written"
                    ),
                    format!("add \"{field}\" to the tool's redact list in the manifest"),
                ));
            }
        }
    }
    let cases = crate::package::CASES_FILE;
    match &context.eval {
        Eval::Missing => failed.push(finding(
            ReadinessCheck::EvalCases,
            None,
            format!("no {cases} beside the manifest"),
            format!("write evaluation cases (one JSON object a line) to {cases}; `airlock eval` runs them"),
        )),
        Eval::Unusable(why) => failed.push(finding(
            ReadinessCheck::EvalCases,
            None,
            format!("{cases} cannot be run: {why}"),
            format!("fix {cases} (`airlock eval {reference}` says where)"),
        )),
        Eval::Ran { failed: 0, total } if *total > 0 => {}
        Eval::Ran { failed: bad, total } => failed.push(finding(
            ReadinessCheck::EvalCases,
            None,
            if *total == 0 {
                format!("{cases} holds no case")
            } else {
                format!("{bad} of {total} evaluation cases fail")
            },
            format!("run `airlock eval {reference}` and fix the plugin or its cases"),
        )),
    }
    if !context.rollback_target {
        failed.push(finding(
            ReadinessCheck::RollbackTarget,
            None,
            "no earlier version to roll back to".to_owned(),
            "install versions (`airlock plugins install`) and serve them through `airlock rollout`, so a rollback has a target".to_owned(),
        ));
    }
    if !context.durable {
        failed.push(finding(
            ReadinessCheck::AuditDurable,
            None,
            "the audit log is in a temporary store, lost with the host".to_owned(),
            "give the host a data directory (data_dir) or a shared store".to_owned(),
        ));
    } else if context.last_checkpoint_ms.is_none_or(|at| {
        context.now_ms.saturating_sub(at)
            > u64::try_from(CHECKPOINT_AGE.as_millis()).unwrap_or(u64::MAX)
    }) {
        failed.push(finding(
            ReadinessCheck::AuditDurable,
            None,
            "no audit checkpoint signed in the last 24 hours".to_owned(),
            "run `airlock audit checkpoint` (or export the log) regularly".to_owned(),
        ));
    }
    for (metric, what) in [
        (AlertMetric::ErrorRate, "error rate"),
        (AlertMetric::LatencyP99Ms, "latency"),
    ] {
        let watched = tools.iter().all(|tool| {
            context
                .alerts
                .rules
                .iter()
                .any(|r| r.metric == metric && r.watches(tool.id()))
        });
        if !watched {
            failed.push(finding(
                ReadinessCheck::AlertRules,
                None,
                format!("no alert rule watches the {what} of every tool"),
                format!(
                    "add an [[alerts.rules]] with metric = \"{}\" and tools = \"{}/*\"",
                    metric.as_str(),
                    plugin.name()
                ),
            ));
        }
    }
    if context.policy.approvals.approvers.is_empty() {
        failed.push(finding(
            ReadinessCheck::Approver,
            None,
            "no approver is configured: calls needing approval are refused".to_owned(),
            "add [[policy.approvals.approvers]] with a name and token_sha256".to_owned(),
        ));
    }
    if !context.mode_available {
        failed.push(finding(
            ReadinessCheck::ReadOnlyTakeover,
            None,
            "the host mode cannot be read or written, so read-only cannot be switched on"
                .to_owned(),
            "fix the mode store (mode.json in the data directory, or the shared store)".to_owned(),
        ));
    }

    let (missing_required, warnings): (Vec<_>, Vec<_>) = failed
        .into_iter()
        .partition(|f| context.required.contains(&f.check));
    let passed = ReadinessCheck::ALL
        .into_iter()
        .filter(|c| {
            !missing_required.iter().any(|f| f.check == *c)
                && !warnings.iter().any(|f| f.check == *c)
        })
        .collect();
    ReadinessReport {
        plugin: plugin.name().to_owned(),
        version: plugin.version().to_owned(),
        ready: missing_required.is_empty(),
        missing_required,
        warnings,
        passed,
    }
}

/// JSON Pointers to the input schema's properties (two levels deep) whose
/// names look sensitive.
fn sensitive_fields(schema: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    let visit = |prefix: &str, schema: &serde_json::Value, found: &mut Vec<String>| {
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, _) in properties {
                let lower = name.to_ascii_lowercase();
                if SENSITIVE.iter().any(|s| lower.contains(s)) {
                    found.push(format!(
                        "{prefix}/{}",
                        name.replace('~', "~0").replace('/', "~1")
                    ));
                }
            }
        }
    };
    visit("", schema, &mut found);
    if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, nested) in properties {
            visit(
                &format!("/{}", name.replace('~', "~0").replace('/', "~1")),
                nested,
                &mut found,
            );
        }
    }
    found
}

/// Whether `pointer` is covered by one of `redact`'s pointers (equal, a
/// prefix of it, or matching with `*` segments).
fn redacted(redact: &[String], pointer: &str) -> bool {
    let parts: Vec<&str> = pointer.split('/').collect();
    redact.iter().any(|r| {
        let pattern: Vec<&str> = r.split('/').collect();
        pattern.len() <= parts.len() && pattern.iter().zip(&parts).all(|(p, s)| *p == "*" || p == s)
    })
}

/// The report of a plugin whose calls cannot be routed — its rollout
/// record cannot be read (`version` empty: not known), or its serving
/// `version` does not load here: not ready, whatever else holds, with
/// `reason` and `fix`. Its other checks are not run.
pub(crate) fn unroutable(
    plugin: &str,
    version: &str,
    reason: String,
    fix: String,
) -> ReadinessReport {
    ReadinessReport {
        plugin: plugin.to_owned(),
        version: version.to_owned(),
        ready: false,
        missing_required: vec![ReadinessFinding {
            check: ReadinessCheck::Routing,
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            tool: None,
            reason,
            fix,
        }],
        warnings: Vec::new(),
        passed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_fields_are_found_and_redaction_covers_them() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "api_key": {"type": "string"},
                "auth": {"type": "object", "properties": {"Password": {"type": "string"}}}
            }
        });
        assert_eq!(sensitive_fields(&schema), ["/api_key", "/auth/Password"]);
        assert!(redacted(&["/api_key".to_owned()], "/api_key"));
        assert!(redacted(&["/auth".to_owned()], "/auth/Password"));
        assert!(redacted(&["/*/Password".to_owned()], "/auth/Password"));
        assert!(!redacted(&["/text".to_owned()], "/api_key"));
        assert!(!redacted(&[], "/api_key"));
    }

    #[test]
    fn check_names_are_the_configuration_spelling() {
        for check in ReadinessCheck::ALL {
            let parsed: ReadinessCheck =
                serde_json::from_value(serde_json::json!(check.as_str())).unwrap();
            assert_eq!(parsed, check);
        }
    }
}
