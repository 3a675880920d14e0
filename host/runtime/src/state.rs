//! Per-call store state: WASI context, resource limiter and log sink.

use std::time::Instant;

use airlock_audit::text;
use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::grants::{self, CallSetup, CapturedOutput, EffectiveGrant, HttpHooks};
use crate::limits::{self, Limits};

/// Severity of a guest log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging information.
    Debug,
    /// Normal progress.
    Info,
    /// Recovered problems.
    Warn,
    /// Failures.
    Error,
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

/// One line a guest logged during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// The message, truncated to a bounded length.
    pub message: String,
}

/// The log lines of one call, bounded in bytes and in count.
///
/// # Security
/// The count bound matters as much as the byte bound: an empty line costs
/// no bytes but a whole `LogLine` of memory, so a guest logging empty lines
/// in a loop would otherwise grow the host without limit.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogSink {
    pub(crate) lines: Vec<LogLine>,
    pub(crate) bytes: usize,
    pub(crate) dropped: u64,
    pub(crate) max_bytes: usize,
    pub(crate) max_lines: usize,
}

impl LogSink {
    pub(crate) fn new(max_bytes: usize, max_lines: usize) -> LogSink {
        LogSink {
            max_bytes,
            max_lines,
            ..LogSink::default()
        }
    }

    pub(crate) fn push(&mut self, level: LogLevel, mut message: String) {
        if self.lines.len() >= self.max_lines {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        if text::truncate(&mut message, limits::MAX_LOG_LINE_BYTES) {
            message.push_str(text::TRUNCATED_MARK);
        }
        if self.bytes + message.len() > self.max_bytes {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine { level, message });
    }
}

/// Memory and table limits for one instance, over all of its memories and
/// tables. Records which limit was hit so a resulting trap can be reported
/// as a memory-limit failure.
///
/// # Security
/// A component may define several memories (and tables): each growth is
/// charged against the instance's one budget, so sixteen memories do not
/// get sixteen times the limit. The store holds one component instance
/// per call, so the store's total is the instance's. A growth allowed here
/// that then fails stays charged: the budget errs towards refusing.
#[derive(Debug)]
pub(crate) struct CallLimiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Bytes of linear memory over every memory of the instance.
    memory_used: usize,
    /// Elements over every table of the instance.
    table_used: usize,
    pub(crate) hit: bool,
}

impl CallLimiter {
    pub(crate) fn new(memory_bytes: usize, table_elements: usize) -> CallLimiter {
        CallLimiter {
            memory_bytes,
            table_elements,
            memory_used: 0,
            table_used: 0,
            hit: false,
        }
    }
}

/// Charge growth from `current` to `desired` against `used` of `budget`;
/// `false` (and nothing charged) when it does not fit.
fn charge(used: &mut usize, budget: usize, current: usize, desired: usize) -> bool {
    let grown = used.saturating_add(desired.saturating_sub(current));
    if grown > budget {
        return false;
    }
    *used = grown;
    true
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called with `current == 0` when a memory is created, so initial
        // sizes are charged too.
        let allowed = maximum.is_none_or(|m| desired <= m)
            && charge(&mut self.memory_used, self.memory_bytes, current, desired);
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = maximum.is_none_or(|m| desired <= m)
            && charge(&mut self.table_used, self.table_elements, current, desired);
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Everything a store holds for one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: CallLimiter,
    pub(crate) log: LogSink,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
    /// The call's workspace, when granted (none while listing tools).
    pub(crate) workspace: Option<grants::WorkspaceScope>,
    /// When the call must be over: the epoch deadline and the bound on
    /// every wait a host function does for the guest.
    pub(crate) deadline: Instant,
    http: WasiHttpCtx,
    pub(crate) http_hooks: HttpHooks,
    /// What the call may still write through its `files` grants (none:
    /// no read-write grant, or read-only mode).
    pub(crate) files_budget: Option<std::sync::Arc<grants::FilesBudget>>,
    /// Keeps the epoch ticker running while this store lives.
    _epoch: crate::engine::EpochGuard,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl CallState {
    /// A store for one call of a plugin with `limits` and `grant`.
    ///
    /// # Security
    /// The WASI context holds exactly the grant: the granted environment
    /// variables and preopened directories, real clocks and entropy only when
    /// granted; never arguments or the host's stdio; network only as
    /// `wasi:http` requests to granted origins, when linked. Stdout and
    /// stderr go to bounded in-memory pipes. The call's deadline starts now.
    pub(crate) fn new_store(
        engine: &wasmtime::Engine,
        limits: &Limits,
        grant: &EffectiveGrant,
        workspace: Option<grants::WorkspaceScope>,
        read_only: bool,
        epoch: crate::engine::EpochGuard,
    ) -> wasmtime::Result<Store<CallState>> {
        let stdout = CapturedOutput::new(limits::MAX_STDERR_BYTES);
        let stderr = CapturedOutput::new(limits::MAX_STDERR_BYTES);
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        let deadline = Instant::now() + limits.timeout();
        let mut http_hooks = HttpHooks::new(None, deadline, read_only);
        let mut setup = CallSetup {
            wasi: &mut builder,
            http_hooks: &mut http_hooks,
            read_only,
            files_budget: None,
        };
        grants::configure(&mut setup, grant)?;
        let files_budget = setup.files_budget;
        let wasi = builder.build();
        let state = CallState {
            wasi,
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(limits::MAX_RESOURCES);
                table
            },
            limiter: CallLimiter::new(limits.memory_bytes(), limits::MAX_TABLE_ELEMENTS),
            log: LogSink::new(limits::DEFAULT_MAX_LOG_BYTES, grant.log_max_lines()),
            stdout,
            stderr,
            workspace,
            deadline,
            http: {
                let mut http = WasiHttpCtx::new();
                http.set_field_size_limit(grants::HTTP_FIELDS_BYTES);
                http
            },
            http_hooks,
            files_budget,
            _epoch: epoch,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(limits.fuel.value)?;
        store.set_max_component_handles(limits::MAX_RESOURCES);
        // Hostcall fuel also bounds the result a guest hands back, so it must
        // exceed the output limit for `OutputTooLarge` (not a trap) to report
        // an oversized result.
        store.set_hostcall_fuel(limits::HOSTCALL_FUEL.max(limits.output_bytes().saturating_mul(2)));
        Ok(store)
    }

    /// What the guest wrote to stdout/stderr, lossily decoded.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim_end()
            .to_owned()
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// `types` has no functions; the world imports it only for its type
/// definitions.
impl crate::bindings::airlock::plugin::types::Host for CallState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sink_is_bounded_and_counts_drops() {
        let mut sink = LogSink::new(10_000, 1_000);
        sink.push(LogLevel::Info, "x".repeat(limits::MAX_LOG_LINE_BYTES * 2));
        assert!(sink.lines[0].message.len() < limits::MAX_LOG_LINE_BYTES + 20);
        assert!(sink.lines[0].message.ends_with("[truncated]"));
        for _ in 0..10 {
            sink.push(LogLevel::Info, "y".repeat(2000));
        }
        assert!(sink.bytes <= 10_000);
        assert!(sink.dropped > 0);
    }

    #[test]
    fn empty_lines_are_bounded_by_count() {
        let mut sink = LogSink::new(10_000, 3);
        for _ in 0..1_000 {
            sink.push(LogLevel::Info, String::new());
        }
        assert_eq!(sink.lines.len(), 3);
        assert_eq!(sink.dropped, 997);
    }

    /// Two memories of one instance share its limit: each may stay under
    /// it while their sum may not.
    #[test]
    fn memory_is_limited_per_instance_not_per_memory() {
        const PAGE: usize = 64 << 10;
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(
            &engine,
            r#"(module
                (memory 1) (memory 1)
                (func (export "grow") (param i32 i32) (result i32)
                  (memory.grow 0 (local.get 0)) drop
                  (memory.grow 1 (local.get 1))))"#,
        )
        .unwrap();
        let mut store = Store::new(&engine, CallLimiter::new(64 * PAGE, 1_000));
        store.limiter(|l| l);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        assert_eq!(
            store.data().memory_used,
            2 * PAGE,
            "initial sizes are charged"
        );
        let grow = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, "grow")
            .unwrap();
        // 41 + 1 pages, then 41 + 41: each memory alone is under 64 pages,
        // the instance is not.
        assert_eq!(grow.call(&mut store, (40, 0)).unwrap(), 1);
        assert!(!store.data().hit);
        assert_eq!(grow.call(&mut store, (0, 40)).unwrap(), -1);
        assert!(store.data().hit);
        assert_eq!(store.data().memory_used, 42 * PAGE);
        // What is left still fits.
        assert_eq!(grow.call(&mut store, (0, 22)).unwrap(), 1);
        assert_eq!(store.data().memory_used, 64 * PAGE);
    }

    #[test]
    fn tables_are_limited_per_instance_not_per_table() {
        let mut limiter = CallLimiter::new(0, 100);
        assert!(limiter.table_growing(0, 60, None).unwrap());
        assert!(!limiter.table_growing(0, 60, None).unwrap());
        assert!(limiter.hit);
        assert!(limiter.table_growing(0, 40, Some(50)).unwrap());
        assert!(!limiter.table_growing(40, 41, None).unwrap());
        assert_eq!(limiter.table_used, 100);
    }

    #[test]
    fn truncation_respects_utf8_boundaries() {
        let mut sink = LogSink::new(100_000, 1_000);
        sink.push(LogLevel::Warn, "é".repeat(limits::MAX_LOG_LINE_BYTES));
        assert!(sink.lines[0].message.starts_with('é'));
    }
}
