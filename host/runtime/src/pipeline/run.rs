//! The call pipeline: the one path by which any tool runs.
//!
//! Steps (see `DESIGN.md`, "The call pipeline"); steps not yet implemented
//! are marked as such and added by later changes in the same place:
//! 1. resolve `plugin/tool` to a loaded plugin and an exposed tool;
//! 2. admit (host mode, rate limits) — *not yet*;
//! 3. validate arguments: size cap, JSON, object, input schema (every
//!    failing path reported) — all *before* the guest runs;
//! 4. idempotency — *not yet*;
//! 5. approval gate — *not yet*;
//! 6. intent record in the audit log (flushed to disk first for tools that
//!    are not read-only; no record, no call);
//! 7. instantiate a fresh instance from the pre-linked component, under fuel,
//!    an epoch deadline and memory/table limits;
//! 8. call the tool, capturing its log lines (bounded);
//! 9. validate the output: size cap, JSON, output schema if declared;
//! 10. outcome record (refusals at steps 1–3 get one refusal record);
//! 11. return.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::engine::{PoolNeeds, SharedEngine};

use crate::bindings::PluginPre;
use crate::bindings::exports::airlock::plugin::tools::{CallContext, ToolDescriptor, ToolError};
use crate::error::{Error, Result, ToolErrorKind, TrapKind};
use crate::grants::EffectiveGrant;
use crate::limits::Limits;
use crate::plugin::{Plugin, Tool};
use crate::schema;
use crate::state::{CallState, LogLine};

/// Extra wall time past a call's deadline before the host abandons it even
/// when the guest is blocked in a host call (where epochs cannot interrupt).
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// A request to run one tool.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// `plugin/tool`.
    pub tool: String,
    /// The arguments: a JSON object, as text.
    pub arguments: String,
    /// Who the call runs for (1–256 bytes, no control characters).
    pub principal: String,
    /// Correlation id from the caller (1–128 bytes of visible ASCII);
    /// generated when absent.
    pub trace_id: Option<String>,
    /// The caller's session: workspace keys are scoped to it (1–128 bytes,
    /// no control characters). Without one, keys are shared by all calls of
    /// the plugin that give none.
    pub session: Option<String>,
    /// Idempotency key (1–256 bytes): a repeat with the same key replays the
    /// first call's outcome instead of running again.
    pub idempotency_key: Option<String>,
    /// Resume a call that waited for approval: the approval's id. The call
    /// must carry exactly the approved arguments, principal and key.
    pub approval_id: Option<String>,
    /// The caller's reason, shown to the approver.
    pub reason: Option<String>,
    /// Wait this long for an approval decision instead of returning
    /// [`Error::ApprovalPending`](crate::Error::ApprovalPending) at once.
    pub wait_for_approval: Option<Duration>,
    /// Cancelling this token stops the call: a wait for approval or for an
    /// instance slot ends, a running guest's instance is dropped, and the
    /// call ends with [`Error::Cancelled`](crate::Error::Cancelled) — on
    /// the record like any other outcome.
    pub cancel: Option<CancellationToken>,
}

impl CallRequest {
    /// A request for `tool` (`plugin/tool`) with JSON `arguments`, run as the
    /// `local` principal.
    pub fn new(tool: impl Into<String>, arguments: impl Into<String>) -> CallRequest {
        CallRequest {
            tool: tool.into(),
            arguments: arguments.into(),
            principal: "local".to_owned(),
            trace_id: None,
            session: None,
            idempotency_key: None,
            approval_id: None,
            reason: None,
            wait_for_approval: None,
            cancel: None,
        }
    }

    /// Stop the call when `token` is cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> CallRequest {
        self.cancel = Some(token);
        self
    }

    /// Run as `principal`.
    pub fn principal(mut self, principal: impl Into<String>) -> CallRequest {
        self.principal = principal.into();
        self
    }

    /// Use idempotency `key`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> CallRequest {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Resume under approval `id`.
    pub fn approval_id(mut self, id: impl Into<String>) -> CallRequest {
        self.approval_id = Some(id.into());
        self
    }

    /// State why the call is made (shown to approvers).
    pub fn reason(mut self, reason: impl Into<String>) -> CallRequest {
        self.reason = Some(reason.into());
        self
    }

    /// Wait up to `timeout` for an approval decision.
    pub fn wait_for_approval(mut self, timeout: Duration) -> CallRequest {
        self.wait_for_approval = Some(timeout);
        self
    }

    /// Scope workspace keys to `session`.
    pub fn session(mut self, session: impl Into<String>) -> CallRequest {
        self.session = Some(session.into());
        self
    }

    /// Correlate with `trace_id`.
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> CallRequest {
        self.trace_id = Some(trace_id.into());
        self
    }
}

/// The result of a successful call.
#[derive(Debug, Clone, Serialize)]
pub struct CallResponse {
    /// Unique id of this call.
    pub call_id: String,
    /// Correlation id.
    pub trace_id: String,
    /// `plugin/tool`.
    pub tool: String,
    /// The tool's result.
    pub output: Value,
    /// Lines the guest logged (bounded).
    pub logs: Vec<LogLine>,
    /// Log lines dropped because the call's log budget was spent.
    pub logs_dropped: u64,
    /// Fuel the call consumed.
    pub fuel_used: u64,
    /// Wall time of the guest call, including instantiation.
    #[serde(serialize_with = "serialize_micros", rename = "duration_us")]
    pub duration: Duration,
    /// When this response is a replay of an earlier call with the same
    /// idempotency key: that call's id (the tool did not run again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<String>,
    /// The approval the call ran under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

fn serialize_micros<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Steps 3: validate the arguments before anything runs.
pub(crate) fn validate_arguments(tool: &Tool, arguments: &str, max_bytes: usize) -> Result<Value> {
    if arguments.len() > max_bytes {
        return Err(Error::ArgumentsTooLarge {
            size: arguments.len(),
            limit: max_bytes,
        });
    }
    let value: Value = serde_json::from_str(arguments).map_err(|e| Error::ArgumentsNotJson {
        message: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(Error::ArgumentsNotObject {
            found: schema::type_name(&value),
        });
    }
    let violations = schema::violations(&tool.input_validator, &value);
    if !violations.is_empty() {
        return Err(Error::ArgumentsInvalid {
            tool: tool.id(),
            violations,
        });
    }
    Ok(value)
}

/// What a call cost, whatever its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunStats {
    pub(crate) fuel_used: u64,
    pub(crate) duration: Duration,
}

/// `future`'s output, or `None` if `cancel` fires first (`future` is then
/// dropped).
pub(crate) async fn unless_cancelled<T>(
    cancel: Option<&CancellationToken>,
    future: impl Future<Output = T>,
) -> Option<T> {
    match cancel {
        Some(token) => tokio::select! {
            biased;
            () = token.cancelled() => None,
            output = future => Some(output),
        },
        None => Some(future.await),
    }
}

/// Steps 7–9 for a validated call. `read_only`: the host is in read-only
/// mode, and every write-capable grant is narrowed to reading.
#[expect(
    clippy::too_many_arguments,
    reason = "the call's parts; they become one prepared-call value when the pipeline is regrouped"
)]
pub(crate) async fn run_tool(
    engine: &SharedEngine,
    plugin: &Plugin,
    tool: &Tool,
    arguments: &Value,
    context: CallContext,
    workspace: Option<crate::grants::WorkspaceScope>,
    read_only: bool,
    cancel: Option<&CancellationToken>,
) -> (Result<CallResponse>, RunStats) {
    let mut stats = RunStats::default();
    let result = run_tool_inner(
        engine, plugin, tool, arguments, context, workspace, read_only, cancel, &mut stats,
    )
    .await;
    (result, stats)
}

#[expect(
    clippy::too_many_arguments,
    reason = "run_tool's arguments plus its stats out-parameter"
)]
async fn run_tool_inner(
    engine: &SharedEngine,
    plugin: &Plugin,
    tool: &Tool,
    arguments: &Value,
    context: CallContext,
    workspace: Option<crate::grants::WorkspaceScope>,
    read_only: bool,
    cancel: Option<&CancellationToken>,
    stats: &mut RunStats,
) -> Result<CallResponse> {
    let limits = plugin.limits();
    let tool_id = tool.id();
    let started = Instant::now();
    let cancelled = |ran| Error::Cancelled {
        tool: tool_id.clone(),
        ran,
    };
    // Per-plugin concurrency cap (`max_concurrency`, or the plugin's share
    // of the instance pool when smaller): wait for a slot at most as long as
    // the call itself may run.
    let slot = tokio::time::timeout(limits.timeout(), plugin.slots.acquire());
    let _permit = unless_cancelled(cancel, slot)
        .await
        .ok_or_else(|| cancelled(false))?
        .ok()
        .and_then(|permit| permit.ok())
        .ok_or_else(|| Error::PluginBusy {
            plugin: plugin.name().to_owned(),
            limit: plugin.slots_limit,
        })?;
    // A slot of the host's instance pool, until the same deadline.
    let pool = engine.admit(plugin.pool_needs, started + limits.timeout());
    let _pool = unless_cancelled(cancel, pool)
        .await
        .ok_or_else(|| cancelled(false))?
        .ok_or_else(|| Error::HostBusy {
            limit: engine.max_instances(),
        })?;
    let mut store = new_store(engine, limits, plugin.grant(), workspace, read_only)?;
    let call_id = context.call_id.clone();
    let trace_id = context.trace_id.clone();
    // Re-serialising the validated value gives the guest canonical JSON
    // (no duplicate keys, no comments), exactly what was validated.
    let arguments_text = arguments.to_string();

    // The span names the call in host-side logs of its host functions (an
    // HTTP request refused, for example). Warn level, so it is there
    // whenever those warnings are.
    let span = tracing::warn_span!("call", tool = %tool_id, call_id = %call_id);
    // Cancellation drops the guest's future, and with it the only path
    // back into the instance: it never runs again (it yields to the
    // executor at every epoch tick, so this takes at most one tick).
    let outcome = unless_cancelled(
        cancel,
        tracing::Instrument::instrument(
            with_deadline(limits, async {
                let instance = plugin.pre.instantiate_async(&mut store).await?;
                instance
                    .airlock_plugin_tools()
                    .call_call(&mut store, tool.name(), &arguments_text, &context)
                    .await
            }),
            span,
        ),
    )
    .await;
    let duration = started.elapsed();
    let fuel_used = limits
        .fuel
        .value
        .saturating_sub(store.get_fuel().unwrap_or(0));
    *stats = RunStats {
        fuel_used,
        duration,
    };
    // Whatever the outcome, what the guest wrote to its workspace is on disk
    // before the caller hears of it.
    if let Some(scope) = &store.data().workspace
        && scope.dirty
    {
        scope.store.flush_async().await?;
    }

    let Some(outcome) = outcome else {
        return Err(cancelled(true));
    };
    let returned = match outcome {
        Ok(returned) => returned,
        Err(error) => return Err(trap_error(&tool_id, error, &store)),
    };
    let text = match returned {
        Ok(text) => text,
        Err(e) => {
            let (kind, message) = match e {
                ToolError::InvalidInput(m) => (ToolErrorKind::InvalidInput, m),
                ToolError::Failed(m) => (ToolErrorKind::Failed, m),
                ToolError::Denied(m) => (ToolErrorKind::Denied, m),
            };
            return Err(Error::Tool {
                tool: tool_id,
                kind,
                message: bounded(message, 4096),
            });
        }
    };

    let limit = limits.output_bytes();
    if text.len() > limit {
        return Err(Error::OutputTooLarge {
            tool: tool_id,
            size: text.len(),
            limit,
        });
    }
    let output: Value = serde_json::from_str(&text).map_err(|e| Error::OutputInvalid {
        tool: tool_id.clone(),
        message: format!("not JSON: {e}"),
    })?;
    if let Some(validator) = &tool.output_validator {
        let violations = schema::violations(validator, &output);
        if !violations.is_empty() {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(Error::OutputInvalid {
                tool: tool_id,
                message: format!("does not match the output schema: {}", list.join("; ")),
            });
        }
    }

    let mut state = store.into_data();
    state.http_hooks.drain_into(&mut state.log);
    if plugin.grant().stdio {
        let (stdout, stderr) = (state.stdout.contents(), state.stderr.contents());
        crate::grants::collect_stdio(&stdout, crate::state::LogLevel::Info, &mut state.log);
        crate::grants::collect_stdio(&stderr, crate::state::LogLevel::Warn, &mut state.log);
    }
    Ok(CallResponse {
        call_id,
        trace_id,
        tool: tool_id,
        output,
        logs: state.log.lines,
        logs_dropped: state.log.dropped,
        fuel_used,
        duration,
        replayed_from: None,
        approval_id: None,
    })
}

/// Ask a freshly loaded component for its tools, under the plugin's limits.
pub(crate) async fn list_tools(
    engine: &SharedEngine,
    pre: &PluginPre<CallState>,
    needs: PoolNeeds,
    limits: &Limits,
    plugin: &str,
    grant: &EffectiveGrant,
) -> Result<Vec<ToolDescriptor>> {
    let _pool = engine
        .admit(needs, Instant::now() + limits.timeout())
        .await
        .ok_or_else(|| Error::HostBusy {
            limit: engine.max_instances(),
        })?;
    // Listing tools never needs to write anything.
    let mut store = new_store(engine, limits, grant, None, true)?;
    let outcome = with_deadline(limits, async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.airlock_plugin_tools().call_list(&mut store).await
    })
    .await;
    outcome.map_err(|error| {
        let trap = trap_error(&format!("{plugin}/list"), error, &store);
        Error::InvalidToolList {
            plugin: plugin.to_owned(),
            reason: format!("listing its tools failed: {trap}"),
        }
    })
}

fn new_store(
    engine: &SharedEngine,
    limits: &Limits,
    grant: &EffectiveGrant,
    workspace: Option<crate::grants::WorkspaceScope>,
    read_only: bool,
) -> Result<Store<CallState>> {
    let mut store = CallState::new_store(
        engine,
        limits,
        grant,
        workspace,
        read_only,
        engine.epoch_guard(),
    )
    .map_err(|e| Error::Engine {
        message: format!("cannot create a store: {e:#}"),
    })?;
    // Check the deadline on every epoch tick; until it passes, yield to the
    // executor so one long call cannot starve others on the same thread.
    // The store's deadline also bounds host functions that wait (HTTP).
    let deadline = store.data().deadline;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok(store)
}

/// Marker error: the call was abandoned at the host-side deadline.
#[derive(Debug)]
struct HostDeadline;

impl std::fmt::Display for HostDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("call abandoned at its deadline")
    }
}

impl std::error::Error for HostDeadline {}

/// Run `future` with a host-side deadline slightly past the epoch deadline,
/// for guests blocked inside host calls.
async fn with_deadline<T>(
    limits: &Limits,
    future: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    match tokio::time::timeout(limits.timeout() + DEADLINE_GRACE, future).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(HostDeadline)),
    }
}

/// Classify an error from instantiating or calling a guest.
fn trap_error(tool: &str, error: wasmtime::Error, store: &Store<CallState>) -> Error {
    let state = store.data();
    let kind = if error.downcast_ref::<HostDeadline>().is_some() {
        TrapKind::DeadlineExceeded
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => TrapKind::FuelExhausted,
            Some(Trap::Interrupt) => TrapKind::DeadlineExceeded,
            _ if state.limiter.hit => TrapKind::MemoryLimit,
            // wasmtime's error type for this is private; its message is not.
            _ if format!("{error:#}").contains("allocated for hostcalls has been exhausted") => {
                TrapKind::HostDataLimit
            }
            _ => TrapKind::GuestTrap,
        }
    };
    let mut message = bounded(format!("{error:#}"), 4096);
    let stderr = state.stderr_text();
    if !stderr.is_empty() {
        message.push_str("; guest stderr: ");
        message.push_str(&bounded(stderr, 4096));
    }
    Error::Trap {
        tool: tool.to_owned(),
        kind,
        message,
    }
}

fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}
