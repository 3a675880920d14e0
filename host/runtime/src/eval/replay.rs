//! Replay: re-run recorded `read` calls of a plugin against another of its
//! versions and compare the outputs.
//!
//! Only calls whose complete arguments the log kept can be replayed: calls
//! to tools the operator named in `audit.replayable`, whose intent record
//! (`call_started`, or the `call_finished` that carries it when the call
//! was recorded once) carries `args_redacted`. Every other recorded call is
//! skipped and counted, by reason: its copy was changed by redaction, cut
//! at the size cap, or not kept for replay at all; or it never finished.

use std::collections::HashMap;

use airlock_audit::{Event, Record};
use serde::Serialize;
use serde_json::Value;

use super::cases::{Mismatch, bounded_value, difference};
use super::{ScratchRun, micros, scratch_workspace};
use crate::error::Result;
use crate::host::Host;
use crate::plugin::Plugin;

/// The recorded calls to replay, chosen from audit records
/// ([`ReplayPlan::from_records`]), and those skipped.
#[derive(Debug, Clone, Default)]
pub struct ReplayPlan {
    calls: Vec<RecordedCall>,
    /// Recorded calls that cannot be replayed, by reason.
    pub skipped: ReplaySkips,
}

/// Recorded `read` calls that cannot be replayed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySkips {
    /// Redaction changed the argument copy, or the result's (whose digest
    /// is then keyed under the recording host's key: the new output
    /// cannot be compared with it).
    pub redacted: usize,
    /// The argument copy was cut at its size cap.
    pub cut: usize,
    /// No replayable copy was kept (the tool is not in
    /// `audit.replayable`, or the record is older than the setting).
    pub no_copy: usize,
    /// The call has no outcome record (still running, or the host stopped).
    pub unfinished: usize,
    /// The tool is not `read` in the version replayed against (it was when
    /// recorded): it is not run, since it may now have effects, and it
    /// would get real callers' arguments.
    pub not_read: usize,
    /// The recorded outcome was the host's, not the tool's (cancelled,
    /// the pool or the plugin busy, a store unavailable, the mode switched
    /// while it waited): it says nothing a replay could agree or disagree
    /// with.
    pub host_outcome: usize,
    /// The chain holds more than one intent or more than one outcome
    /// record for the call's id (a damaged or crafted log): which one the
    /// call was is unclear, so it is not compared with either.
    pub ambiguous: usize,
}

/// Recorded outcomes that are the host's doing, not the tool's
/// ([`ReplaySkips::host_outcome`]).
const HOST_OUTCOMES: &[&str] = &[
    "cancelled",
    "host_busy",
    "plugin_busy",
    "principal_busy",
    "audit_unavailable",
    "store_unavailable",
    "ledger_unavailable",
    "workspace",
    "io",
    "engine",
    "config",
    "read_only_mode",
    "tool_paused",
    "rate_limited",
];

/// A recorded call to replay.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// The chain it is in (`None`: the log's own).
    pub origin: Option<String>,
    /// Its intent record's sequence number.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub time_ms: u64,
    /// The call's id.
    pub call_id: String,
    /// The tool's name in its plugin.
    pub tool: String,
    /// Who the call ran for.
    pub principal: String,
    /// Its complete, unredacted arguments.
    pub arguments: Value,
    /// What it gave.
    pub recorded: RecordedOutcome,
}

/// What a recorded call gave.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RecordedOutcome {
    /// It succeeded.
    Ok {
        /// SHA-256 of its canonical output.
        digest: Option<String>,
        /// Its (redacted) output, when the copy is complete.
        copy: Option<Value>,
    },
    /// It failed with this error kind.
    Failed {
        /// The kind.
        kind: String,
    },
}

impl RecordedOutcome {
    fn name(&self) -> &str {
        match self {
            RecordedOutcome::Ok { .. } => "ok",
            RecordedOutcome::Failed { kind } => kind,
        }
    }
}

impl ReplayPlan {
    /// Choose, from `records` (each with the chain it is in), the newest
    /// `limit` calls of `read` tools of plugin `plugin` that can be
    /// replayed; the calls recorded since the oldest of them that cannot
    /// are counted as skipped, by why. The calls are in recorded order.
    pub fn from_records<'r>(
        records: impl IntoIterator<Item = (Option<&'r str>, &'r Record)>,
        plugin: &str,
        limit: usize,
    ) -> ReplayPlan {
        Self::chosen(records, plugin, limit, |_| true)
    }

    /// [`from_records`](Self::from_records) for a replay against
    /// `against`: a call of a tool that is no longer `read` there is
    /// skipped (`not_read`) as it is chosen, not taken for one of the
    /// `limit` calls and skipped when replayed (the newest calls all of
    /// such a tool replayed nothing while older ones could be).
    pub fn from_records_against<'r>(
        records: impl IntoIterator<Item = (Option<&'r str>, &'r Record)>,
        against: &Plugin,
        limit: usize,
    ) -> ReplayPlan {
        Self::chosen(records, against.name(), limit, |tool| {
            against
                .tool(tool)
                .is_none_or(|t| t.risk() == crate::manifest::Risk::Read)
        })
    }

    fn chosen<'r>(
        records: impl IntoIterator<Item = (Option<&'r str>, &'r Record)>,
        plugin: &str,
        limit: usize,
        still_read: impl Fn(&str) -> bool,
    ) -> ReplayPlan {
        let mut started = Vec::new();
        // Intents per call id, and its outcome record (`None`: more than
        // one).
        let mut intents: HashMap<(Option<&str>, &str), usize> = HashMap::new();
        let mut finished: HashMap<(Option<&str>, &str), Option<&Record>> = HashMap::new();
        for (origin, record) in records {
            let e = &record.entry;
            if e.plugin.as_deref() != Some(plugin) {
                continue;
            }
            let Some(call_id) = e.call_id.as_deref() else {
                continue;
            };
            match e.event {
                Event::CallStarted if e.risk.as_deref() == Some("read") => {
                    started.push((origin, record));
                    *intents.entry((origin, call_id)).or_default() += 1;
                }
                Event::CallFinished => {
                    // A call recorded once is its own intent.
                    if e.carries_intent() && e.risk.as_deref() == Some("read") {
                        started.push((origin, record));
                        *intents.entry((origin, call_id)).or_default() += 1;
                    }
                    finished
                        .entry((origin, call_id))
                        .and_modify(|seen| *seen = None)
                        .or_insert(Some(record));
                }
                _ => {}
            }
        }
        started.sort_by_key(|(origin, r)| (r.time_ms, *origin, r.seq));
        let mut plan = ReplayPlan::default();
        // Newest first, until `limit` calls can be replayed: the calls
        // that cannot are counted, not taken for one of them (a window of
        // newest calls that are all skipped replayed nothing while older
        // ones could be).
        for (origin, record) in started.into_iter().rev() {
            if plan.calls.len() == limit {
                break;
            }
            let e = &record.entry;
            let call_id = e.call_id.as_deref().unwrap_or_default();
            if intents.get(&(origin, call_id)).is_some_and(|n| *n > 1)
                || matches!(finished.get(&(origin, call_id)), Some(None))
            {
                plan.skipped.ambiguous += 1;
                continue;
            }
            match e.args_redacted {
                None => {
                    plan.skipped.no_copy += 1;
                    continue;
                }
                Some(true) => {
                    plan.skipped.redacted += 1;
                    continue;
                }
                Some(false) if e.args_truncated => {
                    plan.skipped.cut += 1;
                    continue;
                }
                Some(false) => {}
            }
            let Some(arguments) = e
                .args
                .as_deref()
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
            else {
                plan.skipped.no_copy += 1;
                continue;
            };
            let Some(Some(done)) = finished.get(&(origin, call_id)) else {
                plan.skipped.unfinished += 1;
                continue;
            };
            let d = &done.entry;
            // A result whose copy redaction changed has its digest keyed
            // under the recording host's key: nothing to compare with.
            if d.result_digest
                .as_deref()
                .is_some_and(|r| r.starts_with(airlock_audit::KEYED_DIGEST_PREFIX))
            {
                plan.skipped.redacted += 1;
                continue;
            }
            let recorded = match d.outcome.as_deref() {
                Some("ok") => RecordedOutcome::Ok {
                    digest: d.result_digest.clone(),
                    copy: d
                        .result
                        .as_deref()
                        .filter(|_| !d.result_truncated)
                        .and_then(|r| serde_json::from_str(r).ok()),
                },
                Some(kind) if HOST_OUTCOMES.contains(&kind) => {
                    plan.skipped.host_outcome += 1;
                    continue;
                }
                Some(kind) if kind != airlock_audit::OUTCOME_UNKNOWN => RecordedOutcome::Failed {
                    kind: kind.to_owned(),
                },
                _ => {
                    plan.skipped.unfinished += 1;
                    continue;
                }
            };
            let tool = e.tool.clone().unwrap_or_default();
            if !still_read(&tool) {
                plan.skipped.not_read += 1;
                continue;
            }
            plan.calls.push(RecordedCall {
                origin: origin.map(str::to_owned),
                seq: record.seq,
                time_ms: record.time_ms,
                call_id: call_id.to_owned(),
                tool,
                principal: e
                    .principal
                    .clone()
                    .unwrap_or_else(|| super::EVAL_PRINCIPAL.to_owned()),
                arguments,
                recorded,
            });
        }
        plan.calls.reverse();
        plan
    }

    /// The calls to replay, in recorded order.
    pub fn calls(&self) -> &[RecordedCall] {
        &self.calls
    }
}

/// What [`Host::replay`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The plugin the calls were replayed against.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// Its component's SHA-256.
    pub digest: String,
    /// Calls replayed (`same` + `different`).
    pub replayed: usize,
    /// Replays whose outcome was the recorded one.
    pub same: usize,
    /// Replays whose outcome differed.
    pub different: usize,
    /// Replays that ended in an error (whether the recorded call did too
    /// or not).
    pub errors: usize,
    /// Recorded calls not replayed, by reason.
    pub skipped: ReplaySkips,
    /// Each replay, in recorded order.
    pub calls: Vec<ReplayedCall>,
}

/// One replayed call.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayedCall {
    /// The chain its record is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Its intent record's sequence number.
    pub seq: u64,
    /// The recorded call's id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// Whether the replay gave the recorded outcome.
    pub same: bool,
    /// `ok` or the error kind, recorded.
    pub recorded_outcome: String,
    /// `ok` or the error kind, replayed.
    pub outcome: String,
    /// The replay's error message, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the outcomes differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<Mismatch>,
    /// Fuel the replay consumed.
    pub fuel_used: u64,
    /// Wall time of the replay, microseconds.
    pub wall_us: u64,
}

/// Compare a replay with its record: `None` when the outcomes agree. What
/// differs is shown cut short when large, as a case's failure is: the
/// replayed side is the plugin's own output (up to its output cap, for
/// each of up to 10,000 calls), the recorded side a copy as large as the
/// call's arguments allowed.
fn compare(recorded: &RecordedOutcome, run: &ScratchRun) -> Option<Mismatch> {
    compare_whole(recorded, run).map(|mut diff| {
        diff.actual = bounded_value(std::mem::take(&mut diff.actual));
        diff.expected = bounded_value(std::mem::take(&mut diff.expected));
        diff
    })
}

fn compare_whole(recorded: &RecordedOutcome, run: &ScratchRun) -> Option<Mismatch> {
    let outcome_differs = |message: String| Mismatch {
        check: "outcome".to_owned(),
        at: String::new(),
        expected: Value::String(recorded.name().to_owned()),
        actual: Value::String(run.outcome()),
        message,
    };
    match (recorded, &run.result) {
        (RecordedOutcome::Ok { digest, copy }, Ok(output)) => {
            // The digest is of the output itself, before redaction: equal
            // digests are equal outputs whatever was redacted from the copy.
            let same = match (digest, copy) {
                (Some(digest), _) => *digest == crate::audit::canonical_digest(output),
                (None, Some(copy)) => copy == output,
                (None, None) => false,
            };
            if same {
                return None;
            }
            let by_copy = copy
                .as_ref()
                .and_then(|copy| difference("output", "", copy, output));
            Some(by_copy.unwrap_or_else(|| Mismatch {
                check: "output digest".to_owned(),
                at: String::new(),
                expected: digest.clone().map_or(Value::Null, Value::String),
                actual: Value::String(crate::audit::canonical_digest(output)),
                message: "the output differs from the recorded one (the record keeps its digest, not a complete or unredacted copy to compare)".to_owned(),
            }))
        }
        (RecordedOutcome::Ok { .. }, Err((kind, message))) => Some(outcome_differs(format!(
            "recorded ok, replayed {kind}: {message}"
        ))),
        (RecordedOutcome::Failed { kind }, Ok(_)) => {
            Some(outcome_differs(format!("recorded {kind}, replayed ok")))
        }
        (RecordedOutcome::Failed { kind }, Err((now, message))) => (kind != now)
            .then(|| outcome_differs(format!("recorded {kind}, replayed {now}: {message}"))),
    }
}

impl Host {
    /// Replay the calls of `plan` against `plugin` (loaded by this host),
    /// each in the sandbox with a scratch workspace as a case runs
    /// ([`Host::evaluate`]), and compare each outcome with the recorded
    /// one: the output's digest, with a diff against the recorded copy when
    /// it is complete.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when `plugin` was loaded by
    /// another host.
    pub async fn replay(&self, plugin: &Plugin, plan: &ReplayPlan) -> Result<ReplayReport> {
        self.check_own(plugin)?;
        let workspace = scratch_workspace();
        let mut report = ReplayReport {
            plugin: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            digest: plugin.digest().to_owned(),
            replayed: 0,
            same: 0,
            different: 0,
            errors: 0,
            skipped: plan.skipped,
            calls: Vec::with_capacity(plan.calls.len()),
        };
        for call in &plan.calls {
            // Chosen because they were `read` when recorded; run only if
            // they still are in this version.
            if plugin
                .tool(&call.tool)
                .is_some_and(|tool| tool.risk() != crate::manifest::Risk::Read)
            {
                report.skipped.not_read += 1;
                continue;
            }
            let run = self
                .run_scratch(
                    plugin,
                    &call.tool,
                    &call.arguments,
                    &call.principal,
                    None,
                    &workspace,
                )
                .await;
            let diff = compare(&call.recorded, &run);
            report.replayed += 1;
            if diff.is_none() {
                report.same += 1;
            } else {
                report.different += 1;
            }
            if run.result.is_err() {
                report.errors += 1;
            }
            report.calls.push(ReplayedCall {
                origin: call.origin.clone(),
                seq: call.seq,
                call_id: call.call_id.clone(),
                tool: call.tool.clone(),
                same: diff.is_none(),
                recorded_outcome: call.recorded.name().to_owned(),
                outcome: run.outcome(),
                error: run.result.as_ref().err().map(|(_, m)| m.clone()),
                diff,
                fuel_used: run.fuel_used,
                wall_us: micros(run.duration),
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_audit::Entry;
    use serde_json::json;
    use std::time::Duration;

    fn record(seq: u64, event: Event, call: &str, f: impl FnOnce(&mut Entry)) -> Record {
        let mut entry = Entry::new(event);
        entry.plugin = Some("text".into());
        entry.tool = Some("slugify".into());
        entry.risk = Some("read".into());
        entry.call_id = Some(call.into());
        entry.principal = Some("alice".into());
        f(&mut entry);
        Record {
            seq,
            time_ms: 1000 + seq,
            entry,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn started(seq: u64, call: &str, redacted: Option<bool>, cut: bool) -> Record {
        record(seq, Event::CallStarted, call, |e| {
            e.args = Some(r#"{"text":"Hi"}"#.into());
            e.args_redacted = redacted;
            e.args_truncated = cut;
        })
    }

    fn finished(seq: u64, call: &str) -> Record {
        record(seq, Event::CallFinished, call, |e| {
            e.outcome = Some("ok".into());
            e.result = Some(r#"{"slug":"hi"}"#.into());
            e.result_digest = Some(crate::audit::canonical_digest(&json!({"slug": "hi"})));
        })
    }

    #[test]
    fn calls_are_sorted_into_replayable_and_skipped() {
        let records = vec![
            started(1, "a", Some(false), false),
            finished(2, "a"),
            started(3, "b", Some(true), false),
            finished(4, "b"),
            started(5, "c", Some(false), true),
            started(6, "d", None, false),
            started(7, "e", Some(false), false),
            // Another plugin's, and a write tool's: not considered.
            record(8, Event::CallStarted, "f", |e| {
                e.plugin = Some("json".into())
            }),
            record(9, Event::CallStarted, "g", |e| {
                e.risk = Some("write".into())
            }),
            // Ended by the host (the pool was full): nothing of the tool's
            // to compare; a tool's own error is.
            started(10, "h", Some(false), false),
            record(11, Event::CallFinished, "h", |e| {
                e.outcome = Some("host_busy".into())
            }),
            started(12, "i", Some(false), false),
            record(13, Event::CallFinished, "i", |e| {
                e.outcome = Some("tool_error".into())
            }),
        ];
        let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 100);
        assert_eq!(plan.calls().len(), 2);
        assert_eq!(
            plan.calls()[1].recorded,
            RecordedOutcome::Failed {
                kind: "tool_error".into()
            }
        );
        assert_eq!(plan.calls()[0].call_id, "a");
        assert_eq!(plan.calls()[0].arguments, json!({"text": "Hi"}));
        assert_eq!(
            plan.skipped,
            ReplaySkips {
                redacted: 1,
                cut: 1,
                no_copy: 1,
                unfinished: 1,
                not_read: 0,
                host_outcome: 1,
                ambiguous: 0,
            }
        );
        // The newest `limit` calls that can be replayed: those that cannot
        // are counted on the way, not taken for one of them.
        let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 1);
        assert_eq!(plan.calls().len(), 1);
        assert_eq!(plan.calls()[0].call_id, "i");
        assert_eq!(plan.skipped, ReplaySkips::default());
        let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 2);
        let replayed: Vec<_> = plan.calls().iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(replayed, ["a", "i"]);
        assert_eq!(
            plan.skipped,
            ReplaySkips {
                redacted: 1,
                cut: 1,
                no_copy: 1,
                unfinished: 1,
                host_outcome: 1,
                ..ReplaySkips::default()
            }
        );
    }

    /// The newest calls all without a copy (a tool not replayable called
    /// most): older calls that can be replayed are still found. (`limit`
    /// counted the newest intents whatever they were, and replayed
    /// nothing.)
    #[test]
    fn a_limit_counts_calls_that_can_be_replayed() {
        let mut records = vec![started(1, "old", Some(false), false), finished(2, "old")];
        for i in 0..50 {
            records.push(started(3 + 2 * i, &format!("n{i}"), None, false));
            records.push(finished(4 + 2 * i, &format!("n{i}")));
        }
        let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 10);
        let replayed: Vec<_> = plan.calls().iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(replayed, ["old"]);
        assert_eq!(plan.skipped.no_copy, 50);
    }

    #[test]
    fn a_call_recorded_once_is_its_own_intent() {
        let whole = |seq, call: &str, redacted| {
            let mut r = finished(seq, call);
            r.entry.decision = Some(Entry::ADMITTED.into());
            r.entry.args = Some(r#"{"text":"Hi"}"#.into());
            r.entry.args_redacted = redacted;
            r
        };
        let records = [
            whole(1, "a", Some(false)),
            whole(2, "b", Some(true)),
            // An outcome without the intent (the intent was written): its
            // call is only as replayable as that intent.
            finished(3, "c"),
            started(4, "d", Some(false), false),
            finished(5, "d"),
        ];
        let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 100);
        let replayed: Vec<_> = plan.calls().iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(replayed, ["a", "d"]);
        assert_eq!(plan.calls()[0].arguments, json!({"text": "Hi"}));
        assert_eq!(plan.skipped.redacted, 1);
        assert_eq!(plan.skipped.unfinished, 0);
    }

    /// Every host outcome named is a kind a call can end with (a typo
    /// would let that kind through as a false difference).
    #[test]
    fn host_outcomes_are_call_error_kinds() {
        for kind in HOST_OUTCOMES {
            assert!(crate::CALL_ERROR_KINDS.contains(kind), "{kind}");
        }
    }

    /// A crafted or damaged chain with two outcomes (or two intents) for
    /// one call id: neither is compared with.
    #[test]
    fn a_call_id_recorded_twice_is_not_replayed() {
        let fail = |seq, call: &str| {
            record(seq, Event::CallFinished, call, |e| {
                e.outcome = Some("tool_error".into())
            })
        };
        let records = [
            started(1, "a", Some(false), false),
            finished(2, "a"),
            fail(3, "a"),
            started(4, "b", Some(false), false),
            started(5, "b", Some(false), false),
            finished(6, "b"),
            started(7, "c", Some(false), false),
            finished(8, "c"),
        ];
        let plan = ReplayPlan::from_records(records.iter().map(|r| (None, r)), "text", 100);
        let replayed: Vec<_> = plan.calls().iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(replayed, ["c"]);
        // Each of `b`'s two intents is counted.
        assert_eq!(plan.skipped.ambiguous, 3);
        assert_eq!(plan.skipped.unfinished, 0);
        // The same id in another chain is another call.
        let records = [
            (Some("host-a"), started(1, "x", Some(false), false)),
            (Some("host-a"), finished(2, "x")),
            (Some("host-b"), started(1, "x", Some(false), false)),
            (Some("host-b"), finished(2, "x")),
        ];
        let plan = ReplayPlan::from_records(records.iter().map(|(o, r)| (*o, r)), "text", 10);
        assert_eq!(plan.calls().len(), 2);
        assert_eq!(plan.skipped.ambiguous, 0);
    }

    #[test]
    fn chains_are_paired_by_origin() {
        let (a, b) = (started(1, "x", Some(false), false), finished(2, "x"));
        let records = [(Some("host-a"), &a), (Some("host-b"), &b)];
        let plan = ReplayPlan::from_records(records, "text", 10);
        assert!(plan.calls().is_empty());
        assert_eq!(plan.skipped.unfinished, 1);
    }

    fn run(result: std::result::Result<Value, (&'static str, String)>) -> ScratchRun {
        ScratchRun {
            result,
            fuel_used: 1,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn outcomes_compare_by_digest_then_copy() {
        let out = json!({"slug": "hi"});
        let ok = RecordedOutcome::Ok {
            digest: Some(crate::audit::canonical_digest(&out)),
            copy: Some(json!({"slug": "[redacted]"})),
        };
        // Equal digests: the same, whatever the redacted copy says.
        assert_eq!(compare(&ok, &run(Ok(out))), None);
        let diff = compare(&ok, &run(Ok(json!({"slug": "h-i"})))).unwrap();
        assert_eq!(diff.at, "/slug");
        // A large difference is shown cut short, on both sides (a hostile
        // version's output is kept for every call replayed).
        let big = RecordedOutcome::Ok {
            digest: None,
            copy: Some(json!({"slug": "a".repeat(10_000)})),
        };
        let diff = compare(&big, &run(Ok(json!({"slug": "b".repeat(1 << 20)})))).unwrap();
        assert_eq!(diff.at, "/slug");
        for side in [&diff.expected, &diff.actual] {
            let shown = side.as_str().unwrap();
            assert!(shown.len() < 100 && shown.contains("not shown"), "{shown}");
        }
        let digest_only = RecordedOutcome::Ok {
            digest: Some("00".into()),
            copy: None,
        };
        assert_eq!(
            compare(&digest_only, &run(Ok(json!(1)))).unwrap().check,
            "output digest"
        );
        let failed = compare(&ok, &run(Err(("tool_error", "no".into())))).unwrap();
        assert_eq!(failed.check, "outcome");
        let recorded_error = RecordedOutcome::Failed {
            kind: "tool_error".into(),
        };
        assert_eq!(
            compare(&recorded_error, &run(Err(("tool_error", "no".into())))),
            None
        );
        assert!(compare(&recorded_error, &run(Ok(json!(1)))).is_some());
    }
}
