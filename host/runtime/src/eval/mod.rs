//! Evaluation: a plugin's scenario cases ([`Cases`], `cases.jsonl`) and
//! the replay of recorded calls ([`ReplayPlan`]), each run in the sandbox
//! against a scratch workspace ([`Host::evaluate`], [`Host::replay`]).
//!
//! # How a case runs, and why not through the pipeline
//!
//! Evaluation is an operator's action on a plugin, not a call an agent
//! made: it must not touch what the host's calls touch, and it must be
//! able to evaluate every tool, approval-required ones included. So a case
//! does not go through [`Host::call`]; it takes the pipeline's own steps
//! that concern the tool, and none of those that concern the host:
//!
//! | pipeline step | for a case |
//! | --- | --- |
//! | 1 resolve | the tool in the plugin given (any of its versions) |
//! | 2 admit (mode, rate limits) | skipped: nothing is spent of the host's budgets |
//! | 3 validate the arguments | as for a call (size cap, JSON object, input schema) |
//! | 4 idempotency | skipped: no key is claimed in the ledger |
//! | 5 approval gate | skipped: the operator runs the case, no agent |
//! | 6, 10 audit records | none: the host's audit log records calls |
//! | 7–9 instantiate, call, validate the output | as for a call: the plugin's fuel, deadline, memory, output cap and output schema |
//!
//! The call's workspace is a scratch one, in memory, made for the run and
//! dropped after it (shared by the run's cases in file order, so a case may
//! set up what a later one reads); never the host's. The plugin's other
//! grants are narrowed as in the host's read-only mode: its `files` are
//! read-only and its HTTP requests limited to GET, HEAD and OPTIONS, so a
//! case changes nothing outside its scratch workspace. (A GET to a granted
//! origin is still sent: cases of a tool that fetches see the real
//! service.)

mod cases;
mod replay;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::bindings::exports::airlock::plugin::tools::CallContext;
use crate::error::{CallError, Error, Result};
use crate::grants::{KeyOrder, WorkspaceScope};
use crate::host::Host;
use crate::manifest::FileAccess;
use crate::pipeline::run::{PreparedCall, run_tool};
use crate::plugin::Plugin;
use crate::workspace::Workspace;

pub use cases::{
    Case, Cases, CasesError, Expectation, MAX_CASE_LINE_BYTES, MAX_CASES, MAX_CASES_FILE_BYTES,
    Mismatch, PointerCheck, PointerTest, Schema,
};
pub use replay::{
    RecordedCall, RecordedOutcome, ReplayPlan, ReplayReport, ReplaySkips, ReplayedCall,
};

/// The principal a case runs as when it names none.
pub const EVAL_PRINCIPAL: &str = "eval";

/// What [`Host::evaluate`] found.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The plugin evaluated.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// Its component's SHA-256.
    pub digest: String,
    /// Each case, in file order.
    pub cases: Vec<CaseReport>,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Fuel of every case together.
    pub fuel_used: u64,
    /// Wall time of every case together, microseconds.
    pub wall_us: u64,
}

impl EvalReport {
    /// Whether every case passed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// The tool it called.
    pub tool: String,
    /// Its line in the cases file.
    pub line: usize,
    /// Whether every check held.
    pub passed: bool,
    /// `ok`, or the error kind the call ended with.
    pub outcome: String,
    /// The output, when the call succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error's message, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every check that failed.
    pub failures: Vec<Mismatch>,
    /// Fuel the call consumed (0 when the guest did not run).
    pub fuel_used: u64,
    /// Wall time of the guest call, microseconds.
    pub wall_us: u64,
}

/// What one scratch run of a tool gave.
pub(crate) struct ScratchRun {
    pub(crate) result: std::result::Result<Value, (&'static str, String)>,
    pub(crate) fuel_used: u64,
    pub(crate) duration: Duration,
}

impl ScratchRun {
    pub(crate) fn outcome(&self) -> String {
        match &self.result {
            Ok(_) => "ok".to_owned(),
            Err((kind, _)) => (*kind).to_owned(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Host {
    /// Run `cases` against `plugin` (loaded by this host: from the plugins
    /// directory or any installed version) in the sandbox, with a scratch
    /// workspace, and check what each gives. See the module docs of
    /// `eval` for what a case's run skips of the pipeline and why.
    ///
    /// # Errors
    /// [`Error::Config`] when `plugin` was loaded by another host (its
    /// compiled code belongs to that host's engine). A case that fails is
    /// not an error: it is in the report.
    ///
    /// # Security
    /// Nothing a case does reaches the host's workspace, ledger, rate-limit
    /// buckets or audit log; the plugin's limits apply as to any call, its
    /// file grants are read-only and its HTTP requests are GET, HEAD or
    /// OPTIONS only.
    pub async fn evaluate(&self, plugin: &Plugin, cases: &Cases) -> Result<EvalReport> {
        self.check_own(plugin)?;
        let workspace = scratch_workspace();
        let mut report = EvalReport {
            plugin: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            digest: plugin.digest().to_owned(),
            cases: Vec::with_capacity(cases.len()),
            passed: 0,
            failed: 0,
            fuel_used: 0,
            wall_us: 0,
        };
        let mut kept = KeptOutputs::default();
        for case in cases.iter() {
            let (named_plugin, tool) = case.tool_parts();
            let run = match named_plugin {
                Some(name) if name != plugin.name() => ScratchRun {
                    result: Err((
                        "unknown_plugin",
                        format!(
                            "the case names plugin `{name}`, but plugin `{}` is evaluated",
                            plugin.name()
                        ),
                    )),
                    fuel_used: 0,
                    duration: Duration::ZERO,
                },
                _ => {
                    self.run_scratch(
                        plugin,
                        tool,
                        &case.arguments,
                        case.principal.as_deref().unwrap_or(EVAL_PRINCIPAL),
                        case.session.as_deref(),
                        &workspace,
                    )
                    .await
                }
            };
            let failures = match &run.result {
                Ok(output) => case.expect.check_output(output),
                Err((kind, message)) => case.expect.check_error(kind, message),
            };
            let passed = failures.is_empty();
            if passed {
                report.passed += 1;
            } else {
                report.failed += 1;
            }
            report.fuel_used = report.fuel_used.saturating_add(run.fuel_used);
            report.wall_us = report.wall_us.saturating_add(micros(run.duration));
            let outcome = run.outcome();
            let (output, error) = match run.result {
                // Kept within the report's budget: a plugin may return
                // megabytes a case, a thousand cases a file.
                Ok(output) => (Some(kept.keep(output)), None),
                Err((_, message)) => (None, Some(message)),
            };
            report.cases.push(CaseReport {
                name: case.name.clone(),
                tool: case.tool.clone(),
                line: case.line,
                passed,
                outcome,
                output,
                error,
                failures,
                fuel_used: run.fuel_used,
                wall_us: micros(run.duration),
            });
        }
        Ok(report)
    }

    /// Refuse a plugin another host loaded: its code is compiled for that
    /// host's engine, and instantiating it with this one would panic.
    fn check_own(&self, plugin: &Plugin) -> Result<()> {
        if wasmtime::Engine::same(plugin.pre.engine(), self.engine()) {
            Ok(())
        } else {
            Err(Error::Config {
                message: format!(
                    "plugin `{}` was loaded by another host; load it into this one to evaluate it",
                    plugin.name()
                ),
            })
        }
    }

    /// Run `tool` of `plugin` once with `arguments`: argument validation,
    /// then steps 7–9 of the pipeline, with `scratch` as its workspace
    /// and the plugin's other grants narrowed to reading (module docs).
    pub(crate) async fn run_scratch(
        &self,
        plugin: &Plugin,
        tool: &str,
        arguments: &Value,
        principal: &str,
        session: Option<&str>,
        scratch: &Scratch,
    ) -> ScratchRun {
        let refused = |error: CallError| ScratchRun {
            result: Err((error.kind(), error.to_string())),
            fuel_used: 0,
            duration: Duration::ZERO,
        };
        let Some(tool) = plugin.tool(tool).cloned() else {
            return refused(CallError::UnknownTool {
                plugin: plugin.name().to_owned(),
                tool: tool.to_owned(),
            });
        };
        let arguments = match crate::pipeline::validate_arguments(
            &tool,
            &arguments.to_string(),
            self.config().max_argument_bytes,
        ) {
            Ok(arguments) => arguments,
            Err(error) => return refused(error),
        };
        let call_id = format!("eval-{}", uuid::Uuid::now_v7());
        let scope = plugin.grant().workspace.map(|access| {
            WorkspaceScope::new(
                scratch.workspace.clone(),
                scratch.order.clone(),
                plugin.name(),
                plugin.grant().workspace_scope.owner(principal, session),
                access == FileAccess::ReadWrite,
                plugin.limits().workspace_quota(),
            )
        });
        let (result, stats) = run_tool(
            self.engine(),
            PreparedCall {
                plugin,
                tool: &tool,
                arguments: &arguments,
                context: CallContext {
                    trace_id: call_id.clone(),
                    call_id,
                    principal: principal.to_owned(),
                },
                workspace: scope,
                // Files read-only, HTTP without side effects; the scratch
                // workspace above keeps its own access.
                read_only: true,
                cancel: None,
                started: None,
                // An evaluation is the host's mode's no matter: its
                // scratch stores are its own.
                recheck: &|| Ok(false),
                admitted: std::time::Instant::now(),
                approved: false,
            },
        )
        .await;
        ScratchRun {
            result: result
                .map(|response| response.output)
                .map_err(|error| (error.kind(), error.to_string())),
            fuel_used: stats.fuel_used,
            duration: stats.duration,
        }
    }
}

/// A workspace in memory, for one evaluation or replay run, and the order
/// of its keys' operations across the run's calls.
pub(crate) struct Scratch {
    workspace: Workspace,
    order: KeyOrder,
}

pub(crate) fn scratch_workspace() -> Scratch {
    Scratch {
        workspace: Workspace::new(Arc::new(airlock_store::MemoryStore::new())),
        order: KeyOrder::new(),
    }
}
/// Outputs an evaluation report keeps in all, bytes of JSON; past it a
/// case's output is described, not kept.
pub(crate) const MAX_REPORT_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// What a report's outputs have taken of [`MAX_REPORT_OUTPUT_BYTES`].
#[derive(Default)]
struct KeptOutputs {
    bytes: usize,
}

impl KeptOutputs {
    /// `output`, or a description of it once the budget is spent.
    fn keep(&mut self, output: Value) -> Value {
        let size = serde_json::to_vec(&output).map_or(usize::MAX, |v| v.len());
        if self.bytes.saturating_add(size) > MAX_REPORT_OUTPUT_BYTES {
            return Value::String(format!(
                "[{size} bytes of output, not kept: the report keeps {MAX_REPORT_OUTPUT_BYTES} bytes of outputs]"
            ));
        }
        self.bytes += size;
        output
    }
}
