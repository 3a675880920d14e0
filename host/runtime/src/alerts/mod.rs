//! Alert rules that act.
//!
//! The operator's rules ([`AlertConfig`], `[alerts]`) are evaluated over
//! the calls the host runs: every finished call is reported once, from
//! [`Host::call`](crate::Host::call), to the evaluator (`window.rs`), and
//! [`Host::check_alerts`](crate::Host::check_alerts) moves time on (alerts
//! resolve when calls stop; approval figures are read). When an alert
//! fires or resolves, the host, in order:
//!
//! 1. records it in the audit log (`alert_fired`, `alert_resolved`);
//! 2. when firing, takes the rule's takeover, if any — pause the tool or
//!    its plugin (`pause.rs`: refused with `tool_paused` on every host
//!    sharing the ledger), switch to read-only, or roll the plugin back —
//!    unless this host made `max_takeovers_per_hour` already, and records
//!    it (`takeover`, decision `suppressed` when the limit stopped it);
//! 3. queues the alert for the rule's webhooks (`webhook.rs`: signed,
//!    retried, never waited for).
//!
//! A takeover is undone by a human only ([`Host::resume`](crate::Host::resume)
//! for a pause, [`Host::set_mode`](crate::Host::set_mode) for read-only, a
//! rollout for a rollback), recorded as `takeover_undone` (or as the mode
//! and rollout changes record themselves).

mod pause;
mod rules;
mod webhook;
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airlock_audit::{AuditLog, Durability, Entry, Event};
use bytes::Bytes;
use serde::Serialize;

use crate::error::{CallError, ErrorClass, ToolErrorKind};
use crate::pipeline::CallResponse;

pub use pause::{PAUSE_REFRESH, Pause};
pub(crate) use pause::{Pauses, check_target};
pub(crate) use rules::redacted_url;
pub use rules::{AlertConfig, AlertMetric, AlertRule, TakeoverAction, Webhook};
use window::{Evaluator, HOST_TARGET, HostFigures, Observation, Outcome, Transition};

/// Alerts kept in the recent history [`Host::alerts`](crate::Host::alerts)
/// lists.
const HISTORY: usize = 256;

/// An alert, firing or resolved, as [`Host::alerts`](crate::Host::alerts)
/// lists it and webhooks receive it (the body's JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AlertStatus {
    /// The rule's name.
    pub rule: String,
    /// What it measures.
    pub metric: &'static str,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// The plugin it is about (none for a host-wide rule).
    pub plugin: Option<String>,
    /// The tool it is about (none for a host-wide rule).
    pub tool: Option<String>,
    /// The version of the plugin whose calls it is about: each version of
    /// a tool is evaluated on its own, so a canary's alert names the
    /// canary. None for a host-wide rule, and for calls refused before
    /// their version was known.
    pub version: Option<String>,
    /// The value that fired or resolved it (`None`: no calls left in the
    /// window).
    pub value: Option<f64>,
    /// The rule's threshold.
    pub threshold: f64,
    /// When it fired, ms since the Unix epoch.
    pub fired_ms: u64,
    /// When it resolved, if it did.
    pub resolved_ms: Option<u64>,
    /// The takeover made when it fired (`pause_tool`, … or `suppressed`).
    pub takeover: Option<String>,
    /// The host (origin) that raised it.
    pub host: String,
    /// The monotonic time it fired at (`clock::steady_ms`): what its
    /// takeover was counted at against the hourly limit.
    #[serde(skip)]
    pub(crate) counted_ms: u64,
}

/// A host's alert rules, their state, and what they act through.
#[derive(Debug)]
pub(crate) struct Alerts {
    config: AlertConfig,
    webhooks: BTreeMap<String, Arc<Webhook>>,
    evaluator: Mutex<Evaluator>,
    outbox: webhook::Outbox,
    /// When this host's automatic takeovers of the last hour were made.
    takeovers: Mutex<VecDeque<u64>>,
    /// Alerts firing (by rule and target) and recently resolved.
    firing: Mutex<BTreeMap<(usize, String), AlertStatus>>,
    history: Mutex<VecDeque<AlertStatus>>,
    origin: String,
    /// Actions a call began but did not finish: its caller went away (the
    /// call's future dropped) while it recorded an alert or made a
    /// takeover. The alert will not fire again, so the next call to end
    /// makes them ([`Alerts::with_unfinished`]).
    unfinished: Mutex<Vec<Action>>,
    /// Whether `unfinished` holds any (read on every call without the lock).
    has_unfinished: std::sync::atomic::AtomicBool,
}

/// What one transition needs done, in order.
#[derive(Debug)]
pub(crate) struct Action {
    pub(crate) status: AlertStatus,
    /// The takeover to make (already counted against the limit).
    pub(crate) takeover: Option<TakeoverAction>,
    pub(crate) suppressed: bool,
}

/// How one finished call counts for the rules; `None` for a call that
/// names no real tool (malformed, unknown), waits for approval, is a
/// replay of an earlier call's outcome (it did not run: counted, a caller
/// replaying one failure could raise a tool's error rate to a takeover,
/// or replaying a success hide its real errors), or that its caller
/// cancelled before it ran. One cancelled while it ran is
/// [`Outcome::Cancelled`]: not a failure, but its time counts.
fn outcome(result: &Result<CallResponse, CallError>) -> Option<Outcome> {
    let error = match result {
        Ok(response) if response.replayed_from.is_some() => return None,
        Ok(_) => return Some(Outcome::Ok),
        Err(error) => error,
    };
    Some(match error {
        CallError::ReplayedFailure { .. } => return None,
        CallError::InvalidIdentifier { .. }
        | CallError::InvalidSession { .. }
        | CallError::BadToolReference { .. }
        | CallError::UnknownPlugin { .. }
        | CallError::UnknownTool { .. }
        | CallError::ApprovalPending { .. }
        | CallError::Cancelled { ran: false, .. } => return None,
        CallError::Cancelled { ran: true, .. } => Outcome::Cancelled,
        CallError::AuditUnavailable(_) | CallError::Store(_) => Outcome::StoreFailed,
        CallError::Tool {
            kind: ToolErrorKind::Denied,
            ..
        } => Outcome::Denied,
        CallError::ApprovalRefused {
            why: crate::ApprovalRefusal::Rejected,
            ..
        } => Outcome::Denied,
        other => match other.class() {
            ErrorClass::Refused | ErrorClass::Pending => Outcome::Refused,
            _ => Outcome::Failed,
        },
    })
}

impl Alerts {
    /// `config` checked already ([`AlertConfig::resolve`]).
    pub(crate) fn new(config: AlertConfig, audit: AuditLog, origin: &str) -> Alerts {
        let webhooks = config
            .webhooks
            .iter()
            .map(|w| (w.name.clone(), Arc::new(w.clone())))
            .collect();
        Alerts {
            evaluator: Mutex::new(Evaluator::new(&config)),
            config,
            webhooks,
            outbox: webhook::Outbox::new(audit),
            takeovers: Mutex::new(VecDeque::new()),
            firing: Mutex::new(BTreeMap::new()),
            history: Mutex::new(VecDeque::new()),
            origin: origin.to_owned(),
            unfinished: Mutex::new(Vec::new()),
            has_unfinished: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a rule needs the pending approvals.
    pub(crate) fn needs_approval_figures(&self) -> bool {
        self.config.rules.iter().any(|r| {
            matches!(
                r.metric,
                AlertMetric::ApprovalsPending | AlertMetric::ApprovalAgeS
            )
        })
    }

    /// Whether any rule is configured.
    pub(crate) fn enabled(&self) -> bool {
        !self.config.rules.is_empty()
    }

    /// Report one finished call of `tool` (`plugin/tool` as asked) that
    /// resolved to `version` of its plugin (`None`: refused before it was
    /// resolved); what the alerts it moved need done.
    pub(crate) fn observe(
        &self,
        tool: &str,
        version: Option<&str>,
        result: &Result<CallResponse, CallError>,
        wall: Duration,
        known_plugin: impl FnOnce() -> bool,
    ) -> Vec<Action> {
        if !self.enabled() {
            return Vec::new();
        }
        let Some(outcome) = outcome(result) else {
            return Vec::new();
        };
        let (tool, version, fuel) = match result {
            Ok(response) => (
                response.tool.as_str(),
                Some(response.plugin_version.as_str()),
                response.fuel_used,
            ),
            // A call that failed before its tool was resolved (a store
            // error routing it) is counted against the tool as asked —
            // only when that could name a tool of a plugin that serves
            // here: a caller's made-up text neither takes the evaluator's
            // slots nor reaches a webhook or a takeover.
            Err(_) if is_tool_id(tool) && known_plugin() => (tool, version, 0),
            Err(_) => return Vec::new(),
        };
        let call = Observation {
            at_ms: crate::clock::steady_ms(),
            outcome,
            duration_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
            fuel,
        };
        // The actions are made while the evaluator is held, so two calls'
        // transitions of one alert (fired by one, resolved by the next)
        // reach the firing table in the evaluator's order: made after it,
        // a resolve could find nothing to resolve and the alert stay
        // listed as firing for good.
        let mut evaluator = self
            .evaluator
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let transitions = evaluator.observe(&self.config, &window::target(tool, version), call);
        self.actions(transitions)
    }

    /// Move time on; what the alerts it moved need done. `approvals`: the
    /// pending approvals and the oldest one's age in seconds, `None` when
    /// they could not be read (their rules stay as they are; the others
    /// still move).
    pub(crate) fn tick(&self, approvals: Option<(u64, u64)>) -> Vec<Action> {
        if !self.enabled() {
            return Vec::new();
        }
        // Actions made while the evaluator is held, as in `observe`.
        let mut evaluator = self
            .evaluator
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let transitions = evaluator.tick(
            &self.config,
            crate::clock::steady_ms(),
            approvals.map(|(approvals_pending, oldest_approval_age_s)| HostFigures {
                approvals_pending,
                oldest_approval_age_s,
            }),
        );
        self.actions(transitions)
    }

    /// The actions of `transitions`, their webhooks queued at once (called
    /// with the evaluator held, so a receiver gets one alert's firing and
    /// resolving in the order they happened; the audit records and
    /// takeovers follow on the calling task).
    fn actions(&self, transitions: Vec<Transition>) -> Vec<Action> {
        let actions: Vec<Action> = transitions
            .into_iter()
            .filter_map(|t| self.action(t))
            .collect();
        for action in &actions {
            self.notify(&action.status);
        }
        actions
    }

    fn action(&self, t: Transition) -> Option<Action> {
        let rule = self.config.rules.get(t.rule)?;
        let (tool_id, version) = window::split_target(&t.target);
        let version = version.map(str::to_owned);
        let (plugin, tool) = match tool_id.split_once('/') {
            _ if t.target == HOST_TARGET => (None, None),
            Some((p, tool)) => (Some(p.to_owned()), Some(tool.to_owned())),
            None => (Some(tool_id.to_owned()), None),
        };
        let mut firing = self.firing.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (t.rule, t.target.clone());
        if t.fired {
            let (takeover, suppressed) = match rule.takeover {
                Some(action) if self.may_take_over(t.at_ms) => (Some(action), false),
                Some(_) => (None, true),
                None => (None, false),
            };
            let status = AlertStatus {
                rule: rule.name.clone(),
                metric: rule.metric.as_str(),
                state: "firing",
                plugin,
                tool,
                version,
                value: t.value,
                threshold: rule.threshold,
                // Shown on the wall clock; counted on the steady one.
                fired_ms: crate::clock::wall_of(t.at_ms),
                resolved_ms: None,
                takeover: match (takeover, suppressed) {
                    (Some(action), _) => Some(action.as_str().to_owned()),
                    (None, true) => Some("suppressed".to_owned()),
                    (None, false) => None,
                },
                host: self.origin.clone(),
                counted_ms: t.at_ms,
            };
            firing.insert(key, status.clone());
            Some(Action {
                status,
                takeover,
                suppressed,
            })
        } else {
            let mut status = firing.remove(&key)?;
            status.state = "resolved";
            status.value = t.value;
            status.resolved_ms = Some(crate::clock::wall_of(t.at_ms));
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            history.push_front(status.clone());
            history.truncate(HISTORY);
            Some(Action {
                status,
                takeover: None,
                suppressed: false,
            })
        }
    }

    /// Give back the hourly limit's count of a takeover counted at
    /// `at_ms` that was not made because nothing was left to do (an
    /// automatic rollback already there): an alert flapping after its
    /// rollback would otherwise spend the limit every other rule shares.
    pub(crate) fn give_back_takeover(&self, at_ms: u64) {
        let mut made = self
            .takeovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = made.iter().rposition(|at| *at == at_ms) {
            made.remove(index);
        }
    }

    /// Count a takeover at `now_ms` against the hourly limit; `false`
    /// when the limit is reached.
    fn may_take_over(&self, now_ms: u64) -> bool {
        let mut made = self
            .takeovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let hour_ago = now_ms.saturating_sub(3_600_000);
        while made.front().is_some_and(|at| *at < hour_ago) {
            made.pop_front();
        }
        if made.len() >= usize::try_from(self.config.max_takeovers_per_hour).unwrap_or(usize::MAX) {
            return false;
        }
        made.push_back(now_ms);
        true
    }

    /// How many alerts fire now.
    /// `actions`, after the actions a call left unfinished (taken: this
    /// caller makes them now).
    pub(crate) fn with_unfinished(&self, actions: Vec<Action>) -> Vec<Action> {
        use std::sync::atomic::Ordering;
        if !self.has_unfinished.load(Ordering::Acquire) {
            return actions;
        }
        let mut unfinished = self
            .unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.has_unfinished.store(false, Ordering::Release);
        let mut all = std::mem::take(&mut *unfinished);
        all.extend(actions);
        all
    }

    /// Keep `actions`, which a call began and did not finish, for the
    /// next call to make.
    pub(crate) fn give_back(&self, actions: impl IntoIterator<Item = Action>) {
        use std::sync::atomic::Ordering;
        let mut unfinished = self
            .unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unfinished.extend(actions);
        if !unfinished.is_empty() {
            self.has_unfinished.store(true, Ordering::Release);
        }
    }

    pub(crate) fn firing_count(&self) -> u64 {
        let firing = self.firing.lock().unwrap_or_else(PoisonError::into_inner);
        u64::try_from(firing.len()).unwrap_or(u64::MAX)
    }

    /// Alerts firing now, then those resolved lately (newest first).
    pub(crate) fn list(&self) -> Vec<AlertStatus> {
        let mut all: Vec<AlertStatus> = self
            .firing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.fired_ms));
        all.extend(
            self.history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        all
    }

    /// The host stops: give the alerts queued or retrying `grace` to be
    /// delivered, then record those left as undelivered.
    pub(crate) async fn close(&self, grace: Duration) {
        self.outbox.close(grace).await;
    }

    /// Queue `status` for the webhooks of its rule (never waits).
    fn notify(&self, status: &AlertStatus) {
        let Some(rule) = self.config.rules.iter().find(|r| r.name == status.rule) else {
            return;
        };
        if rule.webhooks.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(status) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an alert");
                return;
            }
        };
        for name in &rule.webhooks {
            if let Some(hook) = self.webhooks.get(name) {
                self.outbox.send(webhook::Delivery {
                    webhook: Arc::clone(hook),
                    body: body.clone(),
                    rule: status.rule.clone(),
                    plugin: status.plugin.clone(),
                    tool: status.tool.clone(),
                    version: status.version.clone(),
                });
            }
        }
    }
}

/// The audit entry of an alert firing or resolving.
pub(crate) fn alert_entry(action: &Action, takeover_note: Option<&str>) -> Entry {
    let status = &action.status;
    let mut entry = Entry::new(if status.state == "firing" {
        Event::AlertFired
    } else {
        Event::AlertResolved
    });
    entry.decision = Some(status.rule.clone());
    entry.plugin = status.plugin.clone();
    entry.plugin_version.clone_from(&status.version);
    entry.tool = status.tool.clone();
    entry.principal = Some(format!("alert:{}", status.rule));
    let value = status.value.map_or_else(
        || "no calls in the window".to_owned(),
        |v| format!("{v:.4}"),
    );
    let mut reason = format!(
        "{} {value} against threshold {}",
        status.metric, status.threshold
    );
    if let Some(note) = takeover_note {
        reason.push_str("; takeover: ");
        reason.push_str(note);
    }
    entry.reason = Some(reason);
    entry
}

/// Append `entry`, logging (not failing) when the log cannot take it: an
/// alert's actions go on without its record.
pub(crate) async fn record(audit: &AuditLog, entry: Entry) {
    let event = entry.event;
    if let Err(e) = crate::audit::append(audit, &entry, Durability::Flushed).await {
        tracing::error!(error = %e, %event, "cannot record an alert event");
    }
}
/// Whether `tool` has the shape of a `plugin/tool` id.
fn is_tool_id(tool: &str) -> bool {
    tool.split_once('/').is_some_and(|(plugin, name)| {
        airlock_names::is_valid_tool_name(plugin) && airlock_names::is_valid_tool_name(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay of an earlier call's outcome (same idempotency key) did
    /// not run, so the rules do not count it: a caller replaying one
    /// failure again and again raised a tool's error rate to a takeover,
    /// and one replaying a success hid the tool's real errors.
    #[test]
    fn replays_are_not_counted_as_calls() {
        let response = |replayed_from: Option<&str>| CallResponse {
            call_id: "c".into(),
            trace_id: "t".into(),
            tool: "text/slugify".into(),
            plugin_version: "1.0.0".into(),
            output: serde_json::Value::Null,
            logs: Vec::new(),
            logs_dropped: 0,
            host_notes: Vec::new(),
            fuel_used: 0,
            duration: Duration::ZERO,
            replayed_from: replayed_from.map(str::to_owned),
            approval_id: None,
        };
        assert_eq!(outcome(&Ok(response(None))), Some(Outcome::Ok));
        assert_eq!(outcome(&Ok(response(Some("first")))), None);
        let replayed_failure = CallError::ReplayedFailure {
            key: "k".into(),
            call_id: "first".into(),
            kind: "tool_error".into(),
            message: "failed".into(),
        };
        assert_eq!(outcome(&Err(replayed_failure)), None);
    }

    /// A call that failed before its tool was resolved counts against the
    /// tool as asked only when its plugin serves here: names of a known
    /// shape but made up took the evaluator's slots, fired alerts and
    /// paused tools that do not exist.
    #[test]
    fn failures_before_resolution_count_only_for_a_plugin_that_serves() {
        let rule = AlertRule::new(
            "errors",
            AlertMetric::ErrorRate,
            Duration::from_secs(60),
            0.5,
        )
        .min_calls(1);
        let config = AlertConfig {
            rules: vec![rule],
            ..AlertConfig::default()
        };
        let audit = AuditLog::temporary(airlock_audit::AuditConfig::default()).unwrap();
        let alerts = Alerts::new(config, audit, "test");
        let failed = || {
            Err(CallError::Config {
                message: "a rollout's version cannot be loaded".into(),
            })
        };
        let made_up = alerts.observe("billing/x1", None, &failed(), Duration::ZERO, || false);
        assert!(made_up.is_empty());
        assert_eq!(alerts.firing_count(), 0);
        let known = alerts.observe("billing/refund", None, &failed(), Duration::ZERO, || true);
        assert_eq!(known.len(), 1);
        assert_eq!(alerts.firing_count(), 1);
    }

    /// A call its caller cancelled is not the tool's failure: counted as
    /// one, a caller cancelling its own calls as they ran raised the error
    /// rate to a takeover that paused the tool for every caller.
    #[test]
    fn cancelled_calls_are_not_counted_as_failures() {
        let cancelled = |ran| {
            outcome(&Err(CallError::Cancelled {
                tool: "text/slugify".into(),
                ran,
            }))
        };
        assert_eq!(cancelled(false), None);
        // Not a failure, but its time is a latency (see the evaluator).
        assert_eq!(cancelled(true), Some(Outcome::Cancelled));
    }

    /// A call refused before its tool was resolved counts against the tool
    /// as asked only when that could be one: made-up text (a megabyte, a
    /// terminal escape) took the evaluator's tool slots and reached
    /// webhooks.
    #[test]
    fn only_what_could_name_a_tool_is_counted_against_one() {
        for id in ["text/slugify", "billing/open-account", "a_b/c-d"] {
            assert!(is_tool_id(id), "{id}");
        }
        let long = format!("text/{}", "x".repeat(1_000_000));
        for id in [
            "text",
            "text/",
            "/slugify",
            "a/b/c",
            "text/\u{1b}[2K",
            &long,
        ] {
            assert!(!is_tool_id(id), "{id:.40}");
        }
    }
}
