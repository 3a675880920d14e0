//! The alert evaluator: the calls of each rule's window, the value each
//! rule measures, and the state machine that turns values into alerts
//! firing and resolving. Pure: time is an argument, so the tests drive it.
//!
//! Each rule and target (a tool, or the host for host-wide metrics) moves
//! through `Ok → Pending → Firing → Clearing → Ok`: the value must stay at
//! or over the threshold for the rule's `for` duration to fire, and under
//! its `clear` value as long to resolve. A value that crosses back and
//! forth faster than that never fires, nor resolves, again and again.

use std::collections::{BTreeMap, VecDeque};

use super::rules::{AlertConfig, AlertMetric, AlertRule};

/// Calls kept per tool at most, whatever the windows: memory stays bounded
/// under any call rate (values then cover the newest calls only; a rule
/// whose threshold needs more is refused at load).
pub(crate) const MAX_CALLS_PER_TOOL: usize = 10_000;
/// Tools tracked at most: tool names come from callers. Past it, a tool
/// with no call in any window (and no alert under way) makes room.
const MAX_TOOLS: usize = 1024;
/// Calls before a window kept for a tool's fuel norm.
pub(crate) const NORM_CALLS: usize = 1000;
/// The target of a host-wide rule.
pub(crate) const HOST_TARGET: &str = "*";

/// The target of the calls of `tool` (`plugin/tool`) that ran `version`
/// of its plugin: each version is evaluated on its own, so a canary's
/// failures are not diluted by the serving version's calls (nor the
/// serving version's blamed on the canary), and an alert names the
/// version that fails. A call refused before its version was known is
/// the tool's, with none. (Neither names nor versions hold an `@`.)
pub(crate) fn target(tool: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("{tool}@{version}"),
        None => tool.to_owned(),
    }
}

/// The `plugin/tool` of a target, and the version when it names one.
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('@') {
        Some((tool, version)) => (tool, Some(version)),
        None => (target, None),
    }
}

/// What one finished call tells the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran and succeeded.
    Ok,
    /// It ran (or was admitted) and failed.
    Failed,
    /// Refused before it ran.
    Refused,
    /// Denied: the tool said `denied`, or an approver rejected it.
    Denied,
    /// The audit log or a store could not record or answer.
    StoreFailed,
    /// Its caller cancelled it while the tool ran: not the tool's failure
    /// (a caller cancelling its own calls could otherwise trip a takeover
    /// for everyone), but its time counts toward latency (a tool hanging
    /// past its callers' patience must still show).
    Cancelled,
}

/// One finished call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    pub(crate) at_ms: u64,
    pub(crate) outcome: Outcome,
    pub(crate) duration_ms: u64,
    pub(crate) fuel: u64,
}

/// Host-wide figures read when rules are checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HostFigures {
    pub(crate) approvals_pending: u64,
    pub(crate) oldest_approval_age_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Ok,
    Pending { since_ms: u64 },
    Firing { since_ms: u64 },
    Clearing { since_ms: u64, fired_ms: u64 },
}

/// An alert that fired or resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transition {
    /// Index of the rule in the configuration.
    pub(crate) rule: usize,
    /// `plugin/tool@version` ([`target`]), `plugin/tool`, or
    /// [`HOST_TARGET`].
    pub(crate) target: String,
    pub(crate) fired: bool,
    /// The value that decided (`None`: no data left in the window).
    pub(crate) value: Option<f64>,
    pub(crate) at_ms: u64,
}

/// Running counts of a tool's calls, since it was first seen: a window's
/// are the difference of two (a sum over the window without reading it).
/// They wrap: a difference is right while the window holds fewer than
/// 2^32 calls and 2^64 fuel. [`MAX_CALLS_PER_TOOL`] calls cannot reach
/// either: a call burns fuel at about 10^9 a second of its deadline, so
/// 10,000 calls of an hour each would still be under 10^17.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Calls that ran: not cancelled (refused calls are kept apart).
    ran: u32,
    /// Of those, failed (the tool's failure or a store's).
    failed: u32,
    denied: u32,
    /// Successful calls, and their fuel.
    ok: u32,
    ok_fuel: u64,
}

impl Totals {
    fn add(&mut self, call: &Observation) {
        if !matches!(call.outcome, Outcome::Cancelled | Outcome::Refused) {
            self.ran = self.ran.wrapping_add(1);
        }
        match call.outcome {
            Outcome::Failed | Outcome::StoreFailed => self.failed = self.failed.wrapping_add(1),
            Outcome::Denied => self.denied = self.denied.wrapping_add(1),
            Outcome::Ok => {
                self.ok = self.ok.wrapping_add(1);
                self.ok_fuel = self.ok_fuel.wrapping_add(call.fuel);
            }
            Outcome::Refused | Outcome::Cancelled => {}
        }
    }

    /// The counts between `earlier` and these.
    fn since(self, earlier: Totals) -> Totals {
        Totals {
            ran: self.ran.wrapping_sub(earlier.ran),
            failed: self.failed.wrapping_sub(earlier.failed),
            denied: self.denied.wrapping_sub(earlier.denied),
            ok: self.ok.wrapping_sub(earlier.ok),
            ok_fuel: self.ok_fuel.wrapping_sub(earlier.ok_fuel),
        }
    }
}

/// One kept call, with the tool's totals before it.
#[derive(Debug, Clone, Copy)]
struct Kept {
    call: Observation,
    before: Totals,
}

/// The durations of the calls in one latency rule's window, as a sorted
/// multiset: calls are added as they finish and taken out as the window
/// moves past them, so its p99 is read from the top without sorting the
/// window on every call.
#[derive(Debug, Default)]
struct Durations {
    /// The number of the oldest call in it (see [`ToolCalls::first`]).
    from: u64,
    counts: BTreeMap<u64, u32>,
    len: usize,
}

impl Durations {
    fn insert(&mut self, duration_ms: u64) {
        *self.counts.entry(duration_ms).or_default() += 1;
        self.len += 1;
    }

    fn remove(&mut self, duration_ms: u64) {
        if let Some(count) = self.counts.get_mut(&duration_ms) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&duration_ms);
            }
            self.len -= 1;
        }
    }

    /// The nearest-rank 99th percentile: the smallest duration at or
    /// above 99 % of them.
    fn p99(&self) -> Option<u64> {
        let rank = (self.len * 99).div_ceil(100).max(1);
        // The rank-th from the bottom is the (len - rank + 1)-th from the
        // top: within the top 1 %, a few values to walk.
        let mut from_top = self.len.checked_sub(rank)? + 1;
        for (duration, count) in self.counts.iter().rev() {
            let count = *count as usize;
            if from_top <= count {
                return Some(*duration);
            }
            from_top -= count;
        }
        None
    }
}

#[derive(Debug, Default)]
struct ToolCalls {
    /// Calls that ran (or were admitted), newest last, in the order of
    /// their `at_ms` (a call finishing a moment before the one observed
    /// ahead of it is counted at that one's time).
    calls: VecDeque<Kept>,
    /// The number of `calls[0]`: calls are numbered as they come.
    first: u64,
    /// The totals after the newest call.
    totals: Totals,
    /// When calls were refused, apart: a caller's cheap refusals (bad
    /// arguments, past a rate limit) would otherwise push the calls that
    /// ran out of the bounded list, and an error-rate alert resolve, or
    /// never fire, for want of them.
    refused: VecDeque<u64>,
    /// Fuel of successful calls before the longest window: the norm.
    norm: VecDeque<u64>,
    norm_fuel: u128,
    /// The durations in each latency rule's window, by rule index: made
    /// when the rule first reads this tool.
    durations: BTreeMap<usize, Durations>,
}

impl ToolCalls {
    /// Keep a call that ran.
    fn push(&mut self, mut call: Observation) {
        if let Some(last) = self.calls.back() {
            call.at_ms = call.at_ms.max(last.call.at_ms);
        }
        self.calls.push_back(Kept {
            call,
            before: self.totals,
        });
        self.totals.add(&call);
        for durations in self.durations.values_mut() {
            durations.insert(call.duration_ms);
        }
    }

    /// Let the oldest kept call go: its fuel joins the norm if it
    /// succeeded.
    fn pop(&mut self) -> Option<Observation> {
        let oldest = self.calls.pop_front()?.call;
        for durations in self.durations.values_mut() {
            if durations.from == self.first {
                durations.remove(oldest.duration_ms);
                durations.from += 1;
            }
        }
        self.first += 1;
        if oldest.outcome == Outcome::Ok {
            self.norm.push_back(oldest.fuel);
            self.norm_fuel += u128::from(oldest.fuel);
            if self.norm.len() > NORM_CALLS
                && let Some(fuel) = self.norm.pop_front()
            {
                self.norm_fuel -= u128::from(fuel);
            }
        }
        Some(oldest)
    }

    /// The index of the first kept call at or after `since`.
    fn window_start(&self, since: u64) -> usize {
        self.calls.partition_point(|k| k.call.at_ms < since)
    }

    /// The totals of the calls at or after `since`.
    fn window(&self, since: u64) -> Totals {
        match self.calls.get(self.window_start(since)) {
            Some(first) => self.totals.since(first.before),
            None => Totals::default(),
        }
    }

    /// The durations of rule `rule`'s window (from `since`), moved on to
    /// it.
    fn durations(&mut self, rule: usize, since: u64) -> &Durations {
        let start = self.window_start(since);
        let first = self.first;
        let calls = &self.calls;
        let durations = self.durations.entry(rule).or_insert_with(|| {
            // First read: the window as it is, once.
            let mut durations = Durations {
                from: first + start as u64,
                ..Durations::default()
            };
            for kept in calls.range(start..) {
                durations.insert(kept.call.duration_ms);
            }
            durations
        });
        let until = first + start as u64;
        while durations.from < until {
            let index = usize::try_from(durations.from - first).unwrap_or(usize::MAX);
            if let Some(kept) = calls.get(index) {
                durations.remove(kept.call.duration_ms);
            }
            durations.from += 1;
        }
        // Read at an earlier moment than before (a call's time is taken
        // before the evaluator's lock, a tick's after it): the calls
        // between come back in, still kept (`from` is never below
        // `first`).
        while durations.from > until {
            durations.from -= 1;
            let index = usize::try_from(durations.from - first).unwrap_or(usize::MAX);
            if let Some(kept) = calls.get(index) {
                durations.insert(kept.call.duration_ms);
            }
        }
        durations
    }
}

/// The timestamps from `since` on, of a list kept in order.
fn count_since(times: &VecDeque<u64>, since: u64) -> usize {
    times.len() - times.partition_point(|at| *at < since)
}

/// Append `at` to a list kept in order (a moment earlier than the newest
/// counts at its time).
fn push_time(times: &mut VecDeque<u64>, at: u64) {
    let at = times.back().map_or(at, |last| at.max(*last));
    times.push_back(at);
}

/// What an evaluator keeps at most.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Calls per tool, and host-wide failures.
    calls: usize,
    tools: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            calls: MAX_CALLS_PER_TOOL,
            tools: MAX_TOOLS,
        }
    }
}

/// Calls by tool, and each rule's state by target.
#[derive(Debug, Default)]
pub(crate) struct Evaluator {
    bounds: Bounds,
    tools: BTreeMap<String, ToolCalls>,
    /// Host-wide store and audit failures.
    failures: VecDeque<u64>,
    phases: BTreeMap<(usize, String), Phase>,
    /// The longest window of any rule, ms.
    horizon_ms: u64,
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Evaluator {
    pub(crate) fn new(config: &AlertConfig) -> Evaluator {
        Evaluator {
            horizon_ms: config
                .rules
                .iter()
                .map(|r| millis(r.window))
                .max()
                .unwrap_or(0),
            ..Evaluator::default()
        }
    }

    /// Record one finished call of `tool` and check the rules watching it.
    pub(crate) fn observe(
        &mut self,
        config: &AlertConfig,
        tool: &str,
        call: Observation,
    ) -> Vec<Transition> {
        if config.rules.is_empty() {
            return Vec::new();
        }
        if call.outcome == Outcome::StoreFailed {
            push_time(&mut self.failures, call.at_ms);
            if self.failures.len() > self.bounds.calls {
                self.failures.pop_front();
            }
        }
        // This tool's calls only: another's values are read at its own
        // calls and at ticks, each after trimming it.
        self.trim(call.at_ms, Some(tool));
        if self.tools.len() >= self.bounds.tools
            && !self.tools.contains_key(tool)
            && !self.forget_an_idle_tool(call.at_ms)
        {
            // Bounded: past the most tools, and none idle, a new name is
            // not tracked.
            return self.check(config, call.at_ms, None, Some(HOST_TARGET));
        }
        if !self.tools.contains_key(tool) {
            let seeded = self.norm_of_another_version(tool);
            self.tools.insert(tool.to_owned(), seeded);
        }
        let Some(calls) = self.tools.get_mut(tool) else {
            return Vec::new();
        };
        if call.outcome == Outcome::Refused {
            push_time(&mut calls.refused, call.at_ms);
            if calls.refused.len() > self.bounds.calls {
                calls.refused.pop_front();
            }
        } else {
            calls.push(call);
        }
        if calls.calls.len() > self.bounds.calls {
            // The oldest kept is older than every other: it joins the norm
            // as if its window had passed (a busy tool's norm would
            // otherwise never fill).
            calls.pop();
        }
        let mut transitions = self.check(config, call.at_ms, None, Some(tool));
        transitions.extend(self.check(config, call.at_ms, None, Some(HOST_TARGET)));
        transitions
    }

    /// Check every rule on every target, as time passes without calls
    /// (alerts resolve when calls stop) and for host-wide figures (`None`:
    /// unknown this time, their rules stay as they are).
    pub(crate) fn tick(
        &mut self,
        config: &AlertConfig,
        now_ms: u64,
        figures: Option<HostFigures>,
    ) -> Vec<Transition> {
        self.trim(now_ms, None);
        self.check(config, now_ms, figures, None)
    }

    /// Forget calls older than every window (keeping the fuel norm): of
    /// the tool `only`, or of every tool.
    fn trim(&mut self, now_ms: u64, only: Option<&str>) {
        let oldest = now_ms.saturating_sub(self.horizon_ms);
        let trim = |calls: &mut ToolCalls| {
            while calls.calls.front().is_some_and(|k| k.call.at_ms < oldest) {
                calls.pop();
            }
            while calls.refused.front().is_some_and(|at| *at < oldest) {
                calls.refused.pop_front();
            }
        };
        match only {
            Some(tool) => self.tools.get_mut(tool).into_iter().for_each(trim),
            None => self.tools.values_mut().for_each(trim),
        }
        while let Some(first) = self.failures.front()
            && *first < oldest
        {
            self.failures.pop_front();
        }
    }

    /// The calls of a version of a tool first seen: none, but the fuel
    /// norm of the version of the same tool that ran last (its newest
    /// successful calls, kept or let go), so `fuel_ratio` compares a new
    /// version with the one before it — a release that burns ten times
    /// the fuel is what the rule is for — until its own calls make its
    /// norm.
    fn norm_of_another_version(&self, target: &str) -> ToolCalls {
        let (tool, Some(_)) = split_target(target) else {
            return ToolCalls::default();
        };
        let latest = self
            .tools
            .iter()
            .filter(|(other, _)| {
                let (other_tool, version) = split_target(other);
                other_tool == tool && version.is_some()
            })
            .filter_map(|(_, calls)| Some((calls.calls.back()?.call.at_ms, calls)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, calls)| calls);
        let mut seeded = ToolCalls::default();
        if let Some(previous) = latest {
            let kept = previous
                .calls
                .iter()
                .filter(|k| k.call.outcome == Outcome::Ok)
                .map(|k| k.call.fuel);
            let fuels: Vec<u64> = previous.norm.iter().copied().chain(kept).collect();
            let newest = &fuels[fuels.len().saturating_sub(NORM_CALLS)..];
            seeded.norm = newest.iter().copied().collect();
            seeded.norm_fuel = newest.iter().map(|f| u128::from(*f)).sum();
        }
        seeded
    }

    /// Forget one tool that has no call in any window and no alert under
    /// way (its fuel norm with it); whether there was one.
    fn forget_an_idle_tool(&mut self, now_ms: u64) -> bool {
        self.trim(now_ms, None);
        let alerting: std::collections::BTreeSet<&str> = self
            .phases
            .iter()
            .filter(|(_, phase)| **phase != Phase::Ok)
            .map(|((_, target), _)| target.as_str())
            .collect();
        let Some(idle) = self
            .tools
            .iter()
            .find(|(tool, calls)| {
                calls.calls.is_empty()
                    && calls.refused.is_empty()
                    && !alerting.contains(tool.as_str())
            })
            .map(|(tool, _)| tool.clone())
        else {
            return false;
        };
        self.tools.remove(&idle);
        self.phases.retain(|(_, target), _| *target != idle);
        true
    }

    /// Check the rules on `only` (a tool or the host), or on every target.
    fn check(
        &mut self,
        config: &AlertConfig,
        now_ms: u64,
        figures: Option<HostFigures>,
        only: Option<&str>,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for (index, rule) in config.rules.iter().enumerate() {
            let targets: Vec<String> = match only {
                _ if rule.metric.is_host_wide() => {
                    if only.is_none_or(|o| o == HOST_TARGET) {
                        vec![HOST_TARGET.to_owned()]
                    } else {
                        Vec::new()
                    }
                }
                // One call's check: its own tool, not every tool's name.
                Some(only) => {
                    if only != HOST_TARGET
                        && rule.watches(split_target(only).0)
                        && self.tools.contains_key(only)
                    {
                        vec![only.to_owned()]
                    } else {
                        Vec::new()
                    }
                }
                None => self
                    .tools
                    .keys()
                    .filter(|t| rule.watches(split_target(t).0))
                    .cloned()
                    .collect(),
            };
            for target in targets {
                // Figures of the host are only known at a tick.
                let value = match (rule.metric, figures) {
                    (AlertMetric::ApprovalsPending | AlertMetric::ApprovalAgeS, None) => continue,
                    _ => self.value(index, rule, &target, now_ms, figures.unwrap_or_default()),
                };
                if let Some(t) = self.step(index, rule, target, value, now_ms) {
                    transitions.push(t);
                }
            }
        }
        transitions
    }

    /// The value `rule` (the `index`th) measures on `target` now
    /// (`None`: not enough calls). Read from running counts and sorted
    /// durations: no call's check reads the whole window.
    fn value(
        &mut self,
        index: usize,
        rule: &AlertRule,
        target: &str,
        now_ms: u64,
        figures: HostFigures,
    ) -> Option<f64> {
        let since = now_ms.saturating_sub(millis(rule.window));
        let per_minute = |count: u64| {
            // u64 → f64: counts are far below 2^52.
            #[allow(clippy::cast_precision_loss)]
            let count = count as f64;
            #[allow(clippy::cast_precision_loss)]
            let window_ms = millis(rule.window).max(1) as f64;
            Some(count * 60_000.0 / window_ms)
        };
        let least = rule.min_calls.max(1);
        #[allow(clippy::cast_precision_loss)]
        match rule.metric {
            AlertMetric::ApprovalsPending => Some(figures.approvals_pending as f64),
            AlertMetric::ApprovalAgeS => Some(figures.oldest_approval_age_s as f64),
            AlertMetric::AuditFailures => Some(count_since(&self.failures, since) as f64),
            metric => {
                let calls = self.tools.get_mut(target)?;
                match metric {
                    AlertMetric::RefusalsPerMinute => {
                        per_minute(count_since(&calls.refused, since) as u64)
                    }
                    AlertMetric::DenialsPerMinute => {
                        per_minute(u64::from(calls.window(since).denied))
                    }
                    AlertMetric::ErrorRate => {
                        let window = calls.window(since);
                        if u64::from(window.ran) < least {
                            return None;
                        }
                        Some(f64::from(window.failed) / f64::from(window.ran))
                    }
                    AlertMetric::LatencyP99Ms => {
                        let durations = calls.durations(index, since);
                        if (durations.len as u64) < least {
                            return None;
                        }
                        durations.p99().map(|d| d as f64)
                    }
                    AlertMetric::FuelRatio => {
                        let window = calls.window(since);
                        if u64::from(window.ok) < least || (calls.norm.len() as u64) < least {
                            return None;
                        }
                        let now = window.ok_fuel as f64 / f64::from(window.ok);
                        let norm = calls.norm_fuel as f64 / calls.norm.len() as f64;
                        Some(now / norm.max(1.0))
                    }
                    AlertMetric::ApprovalsPending
                    | AlertMetric::ApprovalAgeS
                    | AlertMetric::AuditFailures => None,
                }
            }
        }
    }

    /// Move one rule's state on one target; the transition, if it fired or
    /// resolved.
    fn step(
        &mut self,
        index: usize,
        rule: &AlertRule,
        target: String,
        value: Option<f64>,
        now_ms: u64,
    ) -> Option<Transition> {
        let over = value.is_some_and(|v| v >= rule.threshold);
        let under = value.is_none_or(|v| v < rule.clear_below());
        let hold = millis(rule.for_duration);
        let key = (index, target);
        let phase = self.phases.get(&key).copied().unwrap_or(Phase::Ok);
        let (next, fired) = match phase {
            Phase::Ok if over && hold == 0 => (Phase::Firing { since_ms: now_ms }, Some(true)),
            Phase::Ok if over => (Phase::Pending { since_ms: now_ms }, None),
            Phase::Ok => (Phase::Ok, None),
            Phase::Pending { .. } if !over => (Phase::Ok, None),
            Phase::Pending { since_ms } if now_ms.saturating_sub(since_ms) >= hold => {
                (Phase::Firing { since_ms: now_ms }, Some(true))
            }
            Phase::Pending { since_ms } => (Phase::Pending { since_ms }, None),
            Phase::Firing { .. } if under && hold == 0 => (Phase::Ok, Some(false)),
            Phase::Firing { since_ms } if under => (
                Phase::Clearing {
                    since_ms: now_ms,
                    fired_ms: since_ms,
                },
                None,
            ),
            Phase::Firing { since_ms } => (Phase::Firing { since_ms }, None),
            Phase::Clearing { fired_ms, .. } if !under => {
                (Phase::Firing { since_ms: fired_ms }, None)
            }
            Phase::Clearing { since_ms, .. } if now_ms.saturating_sub(since_ms) >= hold => {
                (Phase::Ok, Some(false))
            }
            Phase::Clearing { since_ms, fired_ms } => {
                (Phase::Clearing { since_ms, fired_ms }, None)
            }
        };
        let target = key.1.clone();
        if next == Phase::Ok {
            self.phases.remove(&key);
        } else {
            self.phases.insert(key, next);
        }
        fired.map(|fired| Transition {
            rule: index,
            target,
            fired,
            value,
            at_ms: now_ms,
        })
    }

    /// The alerts firing now: rule index, target, since when.
    #[cfg(test)]
    pub(crate) fn firing(&self) -> Vec<(usize, String, u64)> {
        self.phases
            .iter()
            .filter_map(|((rule, target), phase)| match phase {
                Phase::Firing { since_ms }
                | Phase::Clearing {
                    fired_ms: since_ms, ..
                } => Some((*rule, target.clone(), *since_ms)),
                Phase::Ok | Phase::Pending { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alerts::rules::AlertRule;

    fn config(rule: AlertRule) -> AlertConfig {
        AlertConfig {
            rules: vec![rule],
            ..AlertConfig::default()
        }
    }

    fn call(at_ms: u64, outcome: Outcome) -> Observation {
        Observation {
            at_ms,
            outcome,
            duration_ms: 10,
            fuel: 100,
        }
    }

    fn fired(ts: &[Transition]) -> Vec<bool> {
        ts.iter().map(|t| t.fired).collect()
    }

    /// Each version of a tool is evaluated on its own: a canary whose
    /// every call fails tripped no error-rate rule while the serving
    /// version's calls diluted it (3 failures in 23 calls), and an alert
    /// could not say which version failed.
    #[test]
    fn each_version_of_a_tool_is_evaluated_on_its_own() {
        let config = config(
            AlertRule::new(
                "errors",
                AlertMetric::ErrorRate,
                Duration::from_secs(60),
                0.5,
            )
            .min_calls(3),
        );
        let mut eval = Evaluator::new(&config);
        let serving = target("a/b", Some("1.0.0"));
        let canary = target("a/b", Some("2.0.0"));
        for i in 0..20 {
            assert!(
                eval.observe(&config, &serving, call(i, Outcome::Ok))
                    .is_empty()
            );
        }
        let mut all = Vec::new();
        for i in 20..23 {
            all.extend(eval.observe(&config, &canary, call(i, Outcome::Failed)));
        }
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].fired);
        assert_eq!(split_target(&all[0].target), ("a/b", Some("2.0.0")));
        assert_eq!(eval.firing().len(), 1, "the serving version is not firing");
    }

    /// A version first seen is measured against the fuel norm of the
    /// version of the same tool that ran before it: a release burning ten
    /// times the fuel is what `fuel_ratio` is for, and a version starting
    /// with no norm of its own could not trip it.
    #[test]
    fn a_new_version_is_measured_against_the_fuel_norm_of_the_one_before() {
        let config = config(
            AlertRule::new("fuel", AlertMetric::FuelRatio, Duration::from_secs(60), 3.0)
                .min_calls(10),
        );
        let mut eval = Evaluator::new(&config);
        for i in 0..50 {
            let t = eval.observe(&config, &target("a/b", Some("1")), call(i, Outcome::Ok));
            assert!(t.is_empty(), "{t:?}");
        }
        // Another tool's versions lend it nothing.
        let mut other = call(50, Outcome::Ok);
        other.fuel = 1000;
        for i in 50..70 {
            other.at_ms = i;
            assert!(
                eval.observe(&config, &target("a/c", Some("2")), other)
                    .is_empty()
            );
        }
        let mut all = Vec::new();
        for i in 70..80 {
            other.at_ms = i;
            all.extend(eval.observe(&config, &target("a/b", Some("2")), other));
        }
        assert_eq!(fired(&all), [true], "{all:?}");
        assert_eq!(all[0].target, "a/b@2");
        assert!(
            all[0].value.is_some_and(|v| (v - 10.0).abs() < 1e-9),
            "{all:?}"
        );
    }

    /// A busy tool holds more calls in its window than are kept: those
    /// let go (the oldest) make its fuel norm, so `fuel_ratio` still sees
    /// a spike. (Only calls past the window did: a busy tool never had a
    /// norm, and the rule never fired on it.)
    #[test]
    fn a_busy_tools_calls_over_the_bound_make_its_fuel_norm() {
        let config = config(
            AlertRule::new("fuel", AlertMetric::FuelRatio, Duration::from_secs(60), 3.0)
                .min_calls(10),
        );
        let mut eval = Evaluator::new(&config);
        eval.bounds.calls = 50;
        let mut all = Vec::new();
        for i in 0..100 {
            all.extend(eval.observe(&config, "a/b", call(i, Outcome::Ok)));
        }
        assert!(all.is_empty(), "{all:?}");
        let mut hungry = call(100, Outcome::Ok);
        hungry.fuel = 1000;
        for i in 100..150 {
            hungry.at_ms = i;
            all.extend(eval.observe(&config, "a/b", hungry));
        }
        assert_eq!(fired(&all), [true]);
    }

    /// Tool names come from callers, so at most so many are tracked; one
    /// with no call left in any window (and no alert under way) makes
    /// room for a new one. (Slots were never given back: once filled, a
    /// tool seen for the first time was never watched by any rule.)
    #[test]
    fn tools_gone_idle_make_room_for_new_ones() {
        let config = config(
            AlertRule::new(
                "errors",
                AlertMetric::ErrorRate,
                Duration::from_secs(10),
                0.5,
            )
            .min_calls(1),
        );
        let mut eval = Evaluator::new(&config);
        eval.bounds.tools = 3;
        // One alert under way keeps its tool; two others go idle.
        assert_eq!(
            fired(&eval.observe(&config, "a/firing", call(0, Outcome::Failed))),
            [true]
        );
        for name in ["a/x1", "a/x2"] {
            assert!(eval.observe(&config, name, call(0, Outcome::Ok)).is_empty());
        }
        // While they are in their window, a new name is not tracked.
        assert!(
            eval.observe(&config, "a/new", call(5, Outcome::Failed))
                .is_empty()
        );
        // Past it, the idle ones make room, the firing one stays.
        let t = eval.observe(&config, "a/new", call(20_000, Outcome::Failed));
        assert_eq!((fired(&t), t[0].target.as_str()), (vec![true], "a/new"));
        let t = eval.observe(&config, "a/newer", call(20_001, Outcome::Failed));
        assert_eq!((fired(&t), t[0].target.as_str()), (vec![true], "a/newer"));
        let firing: Vec<String> = eval.firing().into_iter().map(|(_, t, _)| t).collect();
        assert_eq!(firing, ["a/firing", "a/new", "a/newer"]);
        // Full again, none idle: not tracked.
        assert!(
            eval.observe(&config, "a/newest", call(20_002, Outcome::Failed))
                .is_empty()
        );
    }

    #[test]
    fn error_rate_fires_and_resolves() {
        let config = config(
            AlertRule::new(
                "errors",
                AlertMetric::ErrorRate,
                Duration::from_secs(10),
                0.5,
            )
            .min_calls(4),
        );
        let mut eval = Evaluator::new(&config);
        let mut all = Vec::new();
        for i in 0..3 {
            all.extend(eval.observe(&config, "a/b", call(i, Outcome::Failed)));
        }
        assert!(all.is_empty(), "fewer than min_calls: no value");
        let t = eval.observe(&config, "a/b", call(3, Outcome::Failed));
        assert_eq!(fired(&t), [true]);
        assert_eq!(t[0].target, "a/b");
        assert_eq!(t[0].value, Some(1.0));
        assert_eq!(eval.firing().len(), 1);
        // Another tool is its own target.
        assert!(
            eval.observe(&config, "a/c", call(4, Outcome::Ok))
                .is_empty()
        );
        // Successes dilute the failures, then the window empties.
        for i in 5..9 {
            eval.observe(&config, "a/b", call(i, Outcome::Ok));
        }
        let t = eval.observe(&config, "a/b", call(9, Outcome::Ok));
        assert_eq!(fired(&t), [false], "4 failures of 9 is under 0.5");
        assert!(eval.firing().is_empty());
    }

    /// Refusals are kept apart from the calls that ran: a caller sending
    /// cheap refused calls (bad arguments, past a rate limit) pushed a
    /// failing tool's calls out of the bounded list, and its error-rate
    /// alert resolved with the tool still failing.
    #[test]
    fn refusals_do_not_push_failing_calls_out_of_the_window() {
        let config = AlertConfig {
            rules: vec![
                AlertRule::new(
                    "errors",
                    AlertMetric::ErrorRate,
                    Duration::from_secs(60),
                    0.5,
                )
                .min_calls(10),
                AlertRule::new(
                    "refusals",
                    AlertMetric::RefusalsPerMinute,
                    Duration::from_secs(60),
                    1_000_000.0,
                ),
            ],
            ..AlertConfig::default()
        };
        let mut eval = Evaluator::new(&config);
        eval.bounds.calls = 100;
        let mut all = Vec::new();
        for i in 0..10 {
            all.extend(eval.observe(&config, "a/b", call(i, Outcome::Failed)));
        }
        assert_eq!(fired(&all), [true]);
        for i in 10..400 {
            let t = eval.observe(&config, "a/b", call(i, Outcome::Refused));
            assert!(t.is_empty(), "{t:?}");
        }
        let firing: Vec<(usize, String)> = eval
            .firing()
            .into_iter()
            .map(|(rule, target, _)| (rule, target))
            .collect();
        assert_eq!(firing, [(0, "a/b".to_owned())]);
        // The refusals are still counted (up to the bound): 100 in a
        // minute's window.
        assert_eq!(
            eval.value(1, &config.rules[1], "a/b", 400, HostFigures::default()),
            Some(100.0)
        );
    }

    /// Calls their callers cancelled while they ran are not failures, but
    /// their time is a latency: a tool hanging past its callers' patience
    /// (every call cancelled) still trips a latency rule, and a caller
    /// cancelling its own calls does not raise the error rate.
    #[test]
    fn cancelled_calls_count_for_latency_not_for_errors() {
        let config = AlertConfig {
            rules: vec![
                AlertRule::new(
                    "errors",
                    AlertMetric::ErrorRate,
                    Duration::from_secs(60),
                    0.5,
                )
                .min_calls(3),
                AlertRule::new(
                    "slow",
                    AlertMetric::LatencyP99Ms,
                    Duration::from_secs(60),
                    1000.0,
                )
                .min_calls(3),
            ],
            ..AlertConfig::default()
        };
        let mut eval = Evaluator::new(&config);
        let mut all = Vec::new();
        for i in 0..5 {
            let mut hung = call(i, Outcome::Cancelled);
            hung.duration_ms = 10_000;
            all.extend(eval.observe(&config, "a/b", hung));
        }
        let fired: Vec<usize> = all.iter().filter(|t| t.fired).map(|t| t.rule).collect();
        assert_eq!(fired, [1], "the latency rule only: {all:?}");
    }

    #[test]
    fn an_alert_resolves_when_its_window_empties() {
        let config = config(
            AlertRule::new(
                "errors",
                AlertMetric::ErrorRate,
                Duration::from_secs(1),
                0.5,
            )
            .min_calls(1),
        );
        let mut eval = Evaluator::new(&config);
        assert_eq!(
            fired(&eval.observe(&config, "a/b", call(0, Outcome::Failed))),
            [true]
        );
        assert!(
            eval.tick(&config, 500, Some(HostFigures::default()))
                .is_empty()
        );
        assert_eq!(
            fired(&eval.tick(&config, 1500, Some(HostFigures::default()))),
            [false]
        );
    }

    #[test]
    fn a_value_flapping_around_its_threshold_does_not_fire_repeatedly() {
        let config = config(
            AlertRule::new(
                "refusals",
                AlertMetric::ErrorRate,
                Duration::from_millis(400),
                0.5,
            )
            .min_calls(1)
            .for_duration(Duration::from_secs(2))
            .clear(0.2),
        );
        let mut eval = Evaluator::new(&config);
        let mut all = Vec::new();
        // Alternating failures and successes: the value swings between
        // over and under the threshold every 200 ms.
        for i in 0..50u64 {
            let outcome = if (i / 2) % 2 == 0 {
                Outcome::Failed
            } else {
                Outcome::Ok
            };
            all.extend(eval.observe(&config, "a/b", call(i * 100, outcome)));
        }
        assert!(all.is_empty(), "{all:?}");
        // Steadily over: fires once, after the for duration.
        let mut all = Vec::new();
        for i in 50..100u64 {
            all.extend(eval.observe(&config, "a/b", call(i * 100, Outcome::Failed)));
        }
        assert_eq!(fired(&all), [true]);
        // Dipping under the threshold but not under clear: stays firing.
        let mut all = Vec::new();
        for i in 100..150u64 {
            let outcome = if i % 3 == 0 {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            all.extend(eval.observe(&config, "a/b", call(i * 100, outcome)));
        }
        assert!(all.is_empty(), "{all:?}");
        // Under clear for the for duration: resolves once.
        let mut all = Vec::new();
        for i in 150..200u64 {
            all.extend(eval.observe(&config, "a/b", call(i * 100, Outcome::Ok)));
        }
        assert_eq!(fired(&all), [false]);
    }

    #[test]
    fn latency_refusals_denials_and_fuel_are_measured() {
        let window = Duration::from_secs(60);
        let mut slow = call(0, Outcome::Ok);
        slow.duration_ms = 900;
        let rule = AlertRule::new("slow", AlertMetric::LatencyP99Ms, window, 500.0).min_calls(1);
        let config1 = config(rule);
        let mut eval = Evaluator::new(&config1);
        assert_eq!(fired(&eval.observe(&config1, "a/b", slow)), [true]);

        for (metric, outcome) in [
            (AlertMetric::RefusalsPerMinute, Outcome::Refused),
            (AlertMetric::DenialsPerMinute, Outcome::Denied),
        ] {
            let config = config(AlertRule::new("r", metric, window, 3.0));
            let mut eval = Evaluator::new(&config);
            assert!(eval.observe(&config, "a/b", call(0, outcome)).is_empty());
            assert!(eval.observe(&config, "a/b", call(1, outcome)).is_empty());
            assert_eq!(
                fired(&eval.observe(&config, "a/b", call(2, outcome))),
                [true]
            );
        }

        let config = config(
            AlertRule::new(
                "fuel",
                AlertMetric::FuelRatio,
                Duration::from_millis(100),
                3.0,
            )
            .min_calls(2),
        );
        let mut eval = Evaluator::new(&config);
        for i in 0..5 {
            assert!(
                eval.observe(&config, "a/b", call(i, Outcome::Ok))
                    .is_empty()
            );
        }
        let mut hungry = call(1000, Outcome::Ok);
        hungry.fuel = 1000;
        assert!(
            eval.observe(&config, "a/b", hungry).is_empty(),
            "one call is under min_calls"
        );
        hungry.at_ms = 1001;
        let t = eval.observe(&config, "a/b", hungry);
        assert_eq!(fired(&t), [true]);
        assert_eq!(t[0].value, Some(10.0));
    }

    #[test]
    fn host_wide_figures_fire_at_ticks() {
        let window = Duration::from_secs(60);
        let config = AlertConfig {
            rules: vec![
                AlertRule::new("backlog", AlertMetric::ApprovalsPending, window, 10.0),
                AlertRule::new("old", AlertMetric::ApprovalAgeS, window, 600.0),
                AlertRule::new("audit", AlertMetric::AuditFailures, window, 2.0),
            ],
            ..AlertConfig::default()
        };
        let mut eval = Evaluator::new(&config);
        let figures = HostFigures {
            approvals_pending: 12,
            oldest_approval_age_s: 700,
        };
        let t = eval.tick(&config, 0, Some(figures));
        assert_eq!(t.iter().map(|t| t.rule).collect::<Vec<_>>(), [0, 1]);
        assert!(t.iter().all(|t| t.target == HOST_TARGET));
        assert!(
            eval.observe(&config, "a/b", call(1, Outcome::StoreFailed))
                .is_empty()
        );
        let t = eval.observe(&config, "a/c", call(2, Outcome::StoreFailed));
        assert_eq!((t[0].rule, t[0].fired), (2, true));
        let t = eval.tick(&config, 120_000, Some(HostFigures::default()));
        assert_eq!(fired(&t), [false, false, false]);
    }

    /// The value of `rule` at `now_ms` read the plain way — every call of
    /// the window looked at, durations sorted — as the evaluator did
    /// before it kept running counts: from the calls that ran (`ran`),
    /// the times of refused calls and of the host's failures, and the
    /// fuel norm.
    fn scan(
        rule: &AlertRule,
        ran: &[Observation],
        refused: &[u64],
        failures: &[u64],
        norm: &[u64],
        now_ms: u64,
    ) -> Option<f64> {
        let since = now_ms.saturating_sub(millis(rule.window));
        let least = rule.min_calls.max(1) as usize;
        let window: Vec<&Observation> = ran.iter().filter(|c| c.at_ms >= since).collect();
        let per_minute = |n: usize| Some(n as f64 * 60_000.0 / millis(rule.window).max(1) as f64);
        let since_count = |times: &[u64]| times.iter().filter(|at| **at >= since).count();
        match rule.metric {
            AlertMetric::AuditFailures => Some(since_count(failures) as f64),
            AlertMetric::RefusalsPerMinute => per_minute(since_count(refused)),
            AlertMetric::DenialsPerMinute => per_minute(
                window
                    .iter()
                    .filter(|c| c.outcome == Outcome::Denied)
                    .count(),
            ),
            AlertMetric::ErrorRate => {
                let ran: Vec<_> = window
                    .iter()
                    .filter(|c| c.outcome != Outcome::Cancelled)
                    .collect();
                let failed = ran
                    .iter()
                    .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::StoreFailed))
                    .count();
                (ran.len() >= least).then(|| failed as f64 / ran.len() as f64)
            }
            AlertMetric::LatencyP99Ms => {
                let mut times: Vec<u64> = window.iter().map(|c| c.duration_ms).collect();
                if times.len() < least {
                    return None;
                }
                times.sort_unstable();
                let rank = (times.len() * 99).div_ceil(100).max(1);
                Some(times[rank - 1] as f64)
            }
            AlertMetric::FuelRatio => {
                let ok: Vec<u64> = window
                    .iter()
                    .filter(|c| c.outcome == Outcome::Ok)
                    .map(|c| c.fuel)
                    .collect();
                if ok.len() < least || norm.len() < least {
                    return None;
                }
                let mean = |v: &[u64]| v.iter().map(|f| *f as f64).sum::<f64>() / v.len() as f64;
                Some(mean(&ok) / mean(norm).max(1.0))
            }
            _ => None,
        }
    }

    /// [`scan`] over every call observed (in order), with the norm as its
    /// meaning says: the successes older than every window when the
    /// newest call came, the last `NORM_CALLS` of them.
    fn plain_value(
        rule: &AlertRule,
        calls: &[Observation],
        horizon_ms: u64,
        now_ms: u64,
    ) -> Option<f64> {
        let ran: Vec<Observation> = calls
            .iter()
            .filter(|c| c.outcome != Outcome::Refused)
            .copied()
            .collect();
        let times = |outcome: Outcome| -> Vec<u64> {
            calls
                .iter()
                .filter(|c| c.outcome == outcome)
                .map(|c| c.at_ms)
                .collect()
        };
        let before = calls
            .last()
            .map_or(0, |c| c.at_ms)
            .saturating_sub(horizon_ms);
        let norm: Vec<u64> = calls
            .iter()
            .filter(|c| c.outcome == Outcome::Ok && c.at_ms < before)
            .map(|c| c.fuel)
            .collect();
        let norm = &norm[norm.len().saturating_sub(NORM_CALLS)..];
        scan(
            rule,
            &ran,
            &times(Outcome::Refused),
            &times(Outcome::StoreFailed),
            norm,
            now_ms,
        )
    }

    /// The running counts wrap around after 2^32 calls of a tool (2^64
    /// fuel) without changing a window's value.
    #[test]
    fn running_counts_wrap_without_changing_a_value() {
        let config = AlertConfig {
            rules: vec![
                AlertRule::new(
                    "errors",
                    AlertMetric::ErrorRate,
                    Duration::from_secs(60),
                    2.0,
                )
                .min_calls(1),
                AlertRule::new(
                    "fuel",
                    AlertMetric::FuelRatio,
                    Duration::from_secs(60),
                    1e18,
                )
                .min_calls(1),
            ],
            ..AlertConfig::default()
        };
        let mut eval = Evaluator::new(&config);
        let near_the_end = ToolCalls {
            totals: Totals {
                ran: u32::MAX - 2,
                failed: u32::MAX - 1,
                denied: 0,
                ok: u32::MAX,
                ok_fuel: u64::MAX - 10,
            },
            norm: VecDeque::from([100]),
            norm_fuel: 100,
            ..ToolCalls::default()
        };
        eval.tools.insert("a/b".to_owned(), near_the_end);
        let outcomes = [
            Outcome::Failed,
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Failed,
            Outcome::Ok,
        ];
        for (at, outcome) in (0..).zip(outcomes) {
            eval.observe(&config, "a/b", call(at, outcome));
        }
        let figures = HostFigures::default();
        assert_eq!(
            eval.value(0, &config.rules[0], "a/b", 10, figures),
            Some(0.4)
        );
        assert_eq!(
            eval.value(1, &config.rules[1], "a/b", 10, figures),
            Some(1.0)
        );
    }

    /// A rule for each (metric, window in ms), with a threshold no value
    /// reaches: only the values matter.
    fn values_only(rules: &[(AlertMetric, u64)], min_calls: u64) -> AlertConfig {
        AlertConfig {
            rules: rules
                .iter()
                .enumerate()
                .map(|(i, (metric, window))| {
                    AlertRule::new(
                        &format!("r{i}"),
                        *metric,
                        Duration::from_millis(*window),
                        1e18,
                    )
                    .min_calls(min_calls)
                })
                .collect(),
            ..AlertConfig::default()
        }
    }

    /// xorshift: `next(n)` is in `0..n`, the same sequence every run.
    fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut state = seed;
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        }
    }

    /// An outcome drawn from `next`, `Ok` three times in eight.
    fn any_outcome(next: &mut impl FnMut(u64) -> u64) -> Outcome {
        [
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Failed,
            Outcome::Refused,
            Outcome::Denied,
            Outcome::StoreFailed,
            Outcome::Cancelled,
        ][next(8) as usize]
    }

    /// Asserts two values are the same (to a relative 1e-9) or both absent;
    /// true when both were there.
    fn assert_same_value(kept: Option<f64>, expected: Option<f64>, what: &str) -> bool {
        match (kept, expected) {
            (Some(k), Some(e)) => {
                assert!(
                    (k - e).abs() <= 1e-9 * e.abs().max(1.0),
                    "{what}: {k} against {e}"
                );
                true
            }
            _ => {
                assert_eq!(kept, expected, "{what}");
                false
            }
        }
    }

    /// The running counts and sorted durations give, call after call, the
    /// values reading the whole window gives: random outcomes, durations
    /// and fuel, calls close together and gaps past every window, several
    /// rules with different windows.
    #[test]
    fn running_counts_give_what_reading_the_window_gives() {
        let rules = [
            (AlertMetric::ErrorRate, 50),
            (AlertMetric::ErrorRate, 400),
            (AlertMetric::LatencyP99Ms, 120),
            (AlertMetric::LatencyP99Ms, 400),
            (AlertMetric::DenialsPerMinute, 200),
            (AlertMetric::RefusalsPerMinute, 90),
            (AlertMetric::FuelRatio, 100),
        ];
        let config = values_only(&rules, 3);
        let horizon = 400;
        let mut eval = Evaluator::new(&config);
        let mut seen = Vec::new();
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut at = 1_000;
        for _ in 0..3000 {
            at += match next(100) {
                0 => 500,
                1..=9 => 40,
                _ => next(4),
            };
            let call = Observation {
                at_ms: at,
                outcome: any_outcome(&mut next),
                duration_ms: next(50) + if next(10) == 0 { 1000 } else { 0 },
                fuel: 100 + next(1000),
            };
            seen.push(call);
            eval.observe(&config, "a/b", call);
            for (index, rule) in config.rules.iter().enumerate() {
                let kept = eval.value(index, rule, "a/b", at, HostFigures::default());
                let plain = plain_value(rule, &seen, horizon, at);
                assert_same_value(kept, plain, &format!("rule {index} at {at}"));
            }
        }
    }

    /// [`scan`] over what the evaluator keeps of `tool` (and of the host's
    /// failures).
    fn scanned_value(eval: &Evaluator, rule: &AlertRule, tool: &str, now_ms: u64) -> Option<f64> {
        let failures: Vec<u64> = eval.failures.iter().copied().collect();
        let Some(calls) = eval.tools.get(tool) else {
            // Only the host's failures are known of a tool not tracked.
            return (rule.metric == AlertMetric::AuditFailures)
                .then(|| scan(rule, &[], &[], &failures, &[], now_ms))
                .flatten();
        };
        let ran: Vec<Observation> = calls.calls.iter().map(|k| k.call).collect();
        let refused: Vec<u64> = calls.refused.iter().copied().collect();
        let norm: Vec<u64> = calls.norm.iter().copied().collect();
        scan(rule, &ran, &refused, &failures, &norm, now_ms)
    }

    /// Against a scan of the calls kept, under what the plain comparison
    /// above leaves out: several tools, a bound well under the calls of a
    /// window (calls let go while a latency rule tracks them), ticks, and
    /// the clock read a moment earlier than the last call's (a call's time
    /// is taken before the evaluator's lock, a tick's after it).
    #[test]
    fn running_counts_match_a_scan_under_bounds_ticks_and_clock_steps() {
        let rules = [
            (AlertMetric::ErrorRate, 300),
            (AlertMetric::LatencyP99Ms, 120),
            (AlertMetric::LatencyP99Ms, 500),
            (AlertMetric::DenialsPerMinute, 200),
            (AlertMetric::RefusalsPerMinute, 90),
            (AlertMetric::FuelRatio, 100),
            (AlertMetric::AuditFailures, 150),
        ];
        let config = values_only(&rules, 2);
        let mut eval = Evaluator::new(&config);
        // Under the calls of every window: calls are let go while the
        // latency rules track them.
        eval.bounds.calls = 12;
        let tools = ["a/b", "a/c", "d/e"];
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut clock = 1_000;
        let mut compared = 0;
        for _ in 0..4000 {
            clock += match next(100) {
                0 => 700,
                1..=9 => 30,
                _ => next(3),
            };
            // Now and then a moment earlier than the newest call.
            let now = clock - if next(8) == 0 { next(4) } else { 0 };
            if next(20) == 0 {
                eval.tick(&config, now, None);
            } else {
                let call = Observation {
                    at_ms: now,
                    outcome: any_outcome(&mut next),
                    duration_ms: next(40) + if next(12) == 0 { 900 } else { 0 },
                    fuel: 50 + next(500),
                };
                eval.observe(&config, tools[next(3) as usize], call);
            }
            for tool in tools {
                for (index, rule) in config.rules.iter().enumerate() {
                    let kept = eval.value(index, rule, tool, now, HostFigures::default());
                    let scanned = scanned_value(&eval, rule, tool, now);
                    if assert_same_value(kept, scanned, &format!("{tool} rule {index} at {now}")) {
                        compared += 1;
                    }
                }
            }
        }
        // Most comparisons had a value on both sides.
        assert!(compared > 4000 * 3 * rules.len() / 2, "{compared}");
    }
}
