//! Pipeline steps 7–9: instantiate a fresh instance from the pre-linked
//! component under fuel, an epoch deadline and memory/table limits (after
//! waiting for a plugin slot and a pool slot); call the tool, capturing its
//! log lines (bounded); validate the output (size cap, JSON, output schema
//! if declared). Also the loader's one guest run, listing a component's
//! tools, under the same limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::engine::{PoolNeeds, SharedEngine};

use crate::bindings::PluginPre;
use crate::bindings::exports::airlock::plugin::tools::{CallContext, ToolDescriptor, ToolError};
use crate::error::{CallError, CallResult, LoadError, LoadResult, ToolErrorKind, TrapKind};
use crate::grants::EffectiveGrant;
use crate::limits::Limits;
use crate::plugin::{Plugin, Tool};
use crate::state::CallState;

use super::request::CallResponse;

/// Extra wall time past a call's deadline before the host abandons it even
/// when the guest is blocked in a host call (where epochs cannot interrupt).
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// What a call cost and left behind, whatever its outcome.
#[derive(Debug, Default)]
pub(crate) struct RunStats {
    pub(crate) fuel_used: u64,
    pub(crate) duration: Duration,
    /// What the host refused or hit on the guest's behalf (`wasi:http`),
    /// apart from the guest's own log.
    pub(crate) host_notes: Vec<String>,
    /// The guest's log lines (its stdio with that grant), when the call
    /// returned no response: a response carries them instead.
    pub(crate) logs: Vec<crate::LogLine>,
    /// Bytes of the result the guest returned (0 when it returned none).
    pub(crate) output_bytes: usize,
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

/// A semaphore's permit, waited for until `deadline` unless `cancel` fires
/// first: `None` when cancelled, `Some(None)` when the deadline passed (or
/// the semaphore was closed) before a permit came.
async fn wait_for_permit<P>(
    cancel: Option<&CancellationToken>,
    deadline: Instant,
    permit: impl Future<Output = Result<P, tokio::sync::AcquireError>>,
) -> Option<Option<P>> {
    let permit = tokio::time::timeout_at(deadline.into(), permit);
    unless_cancelled(cancel, permit)
        .await
        .map(|waited| waited.ok().and_then(Result::ok))
}

/// A validated call, ready to run.
pub(crate) struct PreparedCall<'a> {
    pub(crate) plugin: &'a Plugin,
    pub(crate) tool: &'a Tool,
    /// The validated arguments.
    pub(crate) arguments: &'a Value,
    pub(crate) context: CallContext,
    /// The workspace the call may use, if the plugin is granted one.
    pub(crate) workspace: Option<crate::grants::WorkspaceScope>,
    /// The host is in read-only mode: every write-capable grant is
    /// narrowed to reading.
    pub(crate) read_only: bool,
    pub(crate) cancel: Option<&'a CancellationToken>,
    /// Set once the guest may start (its slots held), for the call's
    /// idempotency key: a call dropped before then never ran.
    pub(crate) started: Option<&'a std::sync::atomic::AtomicBool>,
    /// The host's mode and pauses as they are now (`Ok(true)`: read-only
    /// mode, the tool a `read` one): asked again when the call was admitted
    /// long enough ago.
    pub(crate) recheck: &'a (dyn Fn() -> CallResult<bool> + Sync),
    /// When the call was admitted (its mode and pauses checked).
    pub(crate) admitted: Instant,
    /// The call runs under an approval: `recheck` is asked whenever it
    /// waited for its slots at all (an approval is for one version, and
    /// approved calls are few).
    pub(crate) approved: bool,
}

/// A call admitted at least this long before its guest may start (it
/// waited for its key's claim, an approval, its intent's flush, its slots)
/// is checked against the host's mode and pauses again first. Not every
/// call: with a shared store the mode is a database read, and a call that
/// runs within this of its admission is as one admitted just before the
/// switch.
const RECHECK_AFTER: Duration = Duration::from_millis(50);

/// Steps 7–9 for a validated call: its result, and what it cost whatever
/// the result.
pub(crate) async fn run_tool(
    engine: &SharedEngine,
    call: PreparedCall<'_>,
) -> (CallResult<CallResponse>, RunStats) {
    let mut stats = RunStats::default();
    let mut notes = None;
    let mut result = run_tool_inner(engine, call, &mut stats, &mut notes).await;
    // Read once the store is dropped, which aborts the call's HTTP tasks
    // (`wasi:http` sends on a task of its own): a refusal noted by a task
    // still running when the guest returned or trapped is kept too. (A
    // task in the middle of a poll on another worker when it is aborted
    // may still note after this; that note reaches the operator's log
    // only.)
    if let Some(notes) = notes {
        stats.host_notes = crate::grants::take_http_notes(&notes);
        if let Ok(response) = &mut result {
            response.host_notes.clone_from(&stats.host_notes);
        }
    }
    (result, stats)
}

async fn run_tool_inner(
    engine: &SharedEngine,
    call: PreparedCall<'_>,
    stats: &mut RunStats,
    notes: &mut Option<crate::grants::HttpNotes>,
) -> CallResult<CallResponse> {
    let PreparedCall {
        plugin,
        tool,
        arguments,
        context,
        mut workspace,
        mut read_only,
        cancel,
        started: guest_may_start,
        recheck,
        admitted,
        approved,
    } = call;
    let limits = plugin.limits();
    let tool_id = tool.id();
    let started = Instant::now();
    let cancelled = |ran| CallError::Cancelled {
        tool: tool_id.to_owned(),
        ran,
    };
    let deadline = started + limits.timeout();
    let busy = |limit| CallError::PluginBusy {
        plugin: plugin.name().to_owned(),
        limit,
    };
    // Per-plugin concurrency cap (`max_concurrency`, or the plugin's share
    // of the instance pool when smaller): wait for a slot at most as long as
    // the call itself may run.
    let permit = wait_for_permit(cancel, deadline, Arc::clone(&plugin.slots).acquire_owned())
        .await
        .ok_or_else(|| cancelled(false))?
        .ok_or_else(|| busy(plugin.slots_limit))?;
    // With a workspace, each store operation the guest starts shares the
    // slot: one still on its thread when the call is abandoned holds it
    // until it ends, so a plugin's calls and their leftover operations
    // stay within `max_concurrency` together.
    let _permit = match &mut workspace {
        Some(scope) => {
            scope.slot = Some(Arc::new(permit));
            None
        }
        None => Some(permit),
    };
    // Its name's share of the pool, which every loaded version of it
    // (a rollout's two) takes from, until the same deadline.
    let _share = match &plugin.share {
        Some(share) => Some(
            wait_for_permit(cancel, deadline, Arc::clone(share).acquire_owned())
                .await
                .ok_or_else(|| cancelled(false))?
                .ok_or_else(|| busy(u64::from(engine.per_plugin())))?,
        ),
        None => None,
    };
    // A slot of the host's instance pool, until the same deadline.
    let pool = engine.admit(plugin.pool_needs, deadline);
    let _pool = unless_cancelled(cancel, pool)
        .await
        .ok_or_else(|| cancelled(false))?
        .ok_or_else(|| CallError::HostBusy {
            limit: engine.max_instances(),
        })?;
    // Admitted a while ago: a switch to read-only mode or a pause made
    // meanwhile refuses it now, before the guest starts (the call never
    // ran: its key is free again), or narrows its grants to reading; so
    // does a rollback for a call run under an approval.
    if (approved || admitted.elapsed() >= RECHECK_AFTER) && recheck()? && !read_only {
        read_only = true;
        if let Some(scope) = &mut workspace {
            scope.writable = false;
        }
    }
    if let Some(flag) = guest_may_start {
        flag.store(true, std::sync::atomic::Ordering::Release);
    }
    let mut store = new_store(engine, limits, plugin.grant(), workspace, read_only)
        .map_err(|message| CallError::Engine { message })?;
    *notes = Some(store.data().http_hooks.notes());
    // Re-serialising the validated value gives the guest canonical JSON
    // (no duplicate keys, no comments), exactly what was validated.
    // (`to_string` on the value, its `Display`, would write it through the
    // formatting machinery a piece at a time.)
    let arguments_text = serde_json::to_string(arguments).map_err(|e| CallError::Engine {
        message: format!("cannot encode the validated arguments: {e}"),
    })?;

    // The span names the call in host-side logs of its host functions (an
    // HTTP request refused, for example). Warn level, so it is there
    // whenever those warnings are.
    let span = tracing::warn_span!("call", tool = %tool_id, call_id = %context.call_id);
    // Cancellation drops the guest's future, and with it the only path
    // back into the instance: it never runs again (it yields to the
    // executor at every epoch tick, so this takes at most one tick).
    // Boxed: the guest's futures (wasmtime's instantiation and call, under
    // the deadline) are most of the call's state; inline, each future
    // around them would copy them whole as it is built and moved.
    let guest = Box::pin(tracing::Instrument::instrument(
        with_deadline(limits, async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance
                .airlock_plugin_tools()
                .call_call(&mut store, tool.name(), &arguments_text, &context)
                .await
        }),
        span,
    ));
    let outcome = unless_cancelled(cancel, guest).await;
    let duration = started.elapsed();
    let fuel_used = limits
        .fuel
        .value
        .saturating_sub(store.get_fuel().unwrap_or(0));
    // What the guest logged, kept whatever the outcome (the host's notes
    // are read by `run_tool`, after the store is gone).
    let state = store.data_mut();
    if plugin.grant().stdio {
        let (stdout, stderr) = (state.stdout.contents(), state.stderr.contents());
        crate::grants::collect_stdio(&stdout, crate::state::LogLevel::Info, &mut state.log);
        crate::grants::collect_stdio(&stderr, crate::state::LogLevel::Warn, &mut state.log);
    }
    let logs_dropped = state.log.dropped;
    *stats = RunStats {
        fuel_used,
        duration,
        host_notes: Vec::new(),
        logs: std::mem::take(&mut state.log.lines),
        output_bytes: 0,
    };
    // Whatever the outcome, what the guest wrote to its workspace is on disk
    // before the caller hears of it.
    if let Some(scope) = &store.data().workspace
        && scope.dirty
    {
        // On the blocking pool: an fsync must not stall the executor.
        let workspace = scope.store.clone();
        tokio::task::spawn_blocking(move || workspace.flush())
            .await
            .map_err(|e| {
                airlock_store::StoreError::unavailable("the workspace flush did not finish", e)
            })
            .and_then(|flushed| flushed)
            .map_err(|e| crate::error::StoreError::new(crate::error::Store::Workspace, e))?;
    }

    let Some(outcome) = outcome else {
        return Err(cancelled(true));
    };
    let returned = match outcome {
        Ok(returned) => returned,
        Err(error) => return Err(trap_error(tool_id, error, &store)),
    };
    let text = match returned {
        Ok(text) => text,
        Err(e) => {
            let (kind, message) = match e {
                ToolError::InvalidInput(m) => (ToolErrorKind::InvalidInput, m),
                ToolError::Failed(m) => (ToolErrorKind::Failed, m),
                ToolError::Denied(m) => (ToolErrorKind::Denied, m),
            };
            return Err(CallError::Tool {
                tool: tool_id.to_owned(),
                kind,
                message: bounded(message, 4096),
            });
        }
    };

    let limit = limits.output_bytes();
    if text.len() > limit {
        return Err(CallError::OutputTooLarge {
            tool: tool_id.to_owned(),
            size: text.len(),
            limit,
        });
    }
    stats.output_bytes = text.len();
    // A large result is parsed and checked with the worker's other tasks
    // handed over first: at tens of megabytes that is tens of
    // milliseconds.
    let output = if text.len() > crate::limits::IN_PLACE_RESULT_BYTES {
        crate::off_the_worker(|| parse_output(tool, tool_id, &text))?
    } else {
        parse_output(tool, tool_id, &text)?
    };

    // The guest's future, which borrowed the context, is gone.
    Ok(CallResponse {
        call_id: context.call_id,
        trace_id: context.trace_id,
        tool: tool_id.to_owned(),
        plugin_version: plugin.version().to_owned(),
        output,
        logs: std::mem::take(&mut stats.logs),
        logs_dropped,
        host_notes: Vec::new(),
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
) -> LoadResult<Vec<ToolDescriptor>> {
    let _pool = engine
        .admit(needs, Instant::now() + limits.timeout())
        .await
        .ok_or_else(|| LoadError::HostBusy {
            limit: engine.max_instances(),
        })?;
    // Listing tools never needs to write anything, nor any capability.
    let mut store = new_store(engine, limits, &grant.for_listing(), None, true)
        .map_err(|message| LoadError::Engine { message })?;
    let outcome = with_deadline(limits, async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.airlock_plugin_tools().call_list(&mut store).await
    })
    .await;
    outcome.map_err(|error| {
        let trap = trap_error(&format!("{plugin}/list"), error, &store);
        LoadError::InvalidToolList {
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
) -> Result<Store<CallState>, String> {
    let mut store = CallState::new_store(
        engine,
        limits,
        grant,
        workspace,
        read_only,
        engine.epoch_guard(),
    )
    .map_err(|e| format!("cannot create a store: {e:#}"))?;
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
fn trap_error(tool: &str, error: wasmtime::Error, store: &Store<CallState>) -> CallError {
    let state = store.data();
    let kind = trap_kind(&error, state.limiter.hit);
    let mut message = bounded(format!("{error:#}"), 4096);
    let stderr = state.stderr_text();
    if !stderr.is_empty() {
        message.push_str("; guest stderr: ");
        message.push_str(&bounded(stderr, 4096));
    }
    CallError::Trap {
        tool: tool.to_owned(),
        kind,
        message,
    }
}

/// What stopped a guest, from the error and whether its memory limiter
/// refused a growth.
fn trap_kind(error: &wasmtime::Error, memory_refused: bool) -> TrapKind {
    if error.downcast_ref::<HostDeadline>().is_some() {
        return TrapKind::DeadlineExceeded;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => TrapKind::FuelExhausted,
        Some(Trap::Interrupt) => TrapKind::DeadlineExceeded,
        // Before the memory limiter's flag: a guest refused memory once
        // could otherwise have every later trap, this one too, reported as
        // `memory_limit`. wasmtime's error type for this is private; its
        // message is not. The root cause's message only: the whole chain
        // holds the guest's backtrace, whose function names are the
        // guest's to choose.
        _ if error
            .root_cause()
            .to_string()
            .contains("allocated for hostcalls has been exhausted") =>
        {
            TrapKind::HostDataLimit
        }
        _ if memory_refused => TrapKind::MemoryLimit,
        _ => TrapKind::GuestTrap,
    }
}

fn bounded(mut s: String, max: usize) -> String {
    if airlock_audit::text::truncate(&mut s, max) {
        s.push_str(airlock_audit::text::TRUNCATED_MARK);
    }
    s
}

/// Step 9: the guest's result text as JSON, within the host's depth limit
/// and the tool's output schema.
fn parse_output(tool: &Tool, tool_id: &str, text: &str) -> CallResult<Value> {
    let output: Value = serde_json::from_str(text).map_err(|e| CallError::OutputInvalid {
        tool: tool_id.to_owned(),
        message: format!("not JSON: {e}"),
    })?;
    // Deeper results cannot be stored to read back (an idempotency entry
    // holds one a few levels down, and JSON is read to 127 levels).
    if crate::schema::deeper_than(&output, crate::limits::MAX_JSON_DEPTH) {
        return Err(CallError::OutputInvalid {
            tool: tool_id.to_owned(),
            message: format!(
                "nested deeper than {} levels of arrays and objects (the host's limit)",
                crate::limits::MAX_JSON_DEPTH
            ),
        });
    }
    if let Some(validator) = &tool.output_validator {
        let violations = validator.violations(&output);
        if !violations.is_empty() {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(CallError::OutputInvalid {
                tool: tool_id.to_owned(),
                message: format!("does not match the output schema: {}", list.join("; ")),
            });
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trap's kind comes from what stopped the guest, not from text the
    /// guest chose: its backtrace, in the error's chain, names its own
    /// functions, and a function named after wasmtime's message for the
    /// host-data limit had an ordinary trap reported as that limit.
    #[test]
    fn a_guests_function_names_do_not_choose_its_trap_kind() {
        let disguised = wasmtime::Error::new(Trap::UnreachableCodeReached).context(
            "error while executing at wasm backtrace:\n    0:  0x1234 - fuel allocated for hostcalls has been exhausted",
        );
        assert_eq!(trap_kind(&disguised, false), TrapKind::GuestTrap);
        assert_eq!(trap_kind(&disguised, true), TrapKind::MemoryLimit);
        let fuel = wasmtime::Error::new(Trap::OutOfFuel).context("wasm backtrace");
        assert_eq!(trap_kind(&fuel, true), TrapKind::FuelExhausted);
        let deadline = wasmtime::Error::new(HostDeadline);
        assert_eq!(trap_kind(&deadline, true), TrapKind::DeadlineExceeded);
        // wasmtime's own error for the limit is the root cause.
        let limit = wasmtime::Error::msg(
            "too much data is being copied between the host and the guest: \
             fuel allocated for hostcalls has been exhausted",
        )
        .context("wasm backtrace");
        assert_eq!(trap_kind(&limit, false), TrapKind::HostDataLimit);
    }
}
