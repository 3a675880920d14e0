//! Per-call store state: WASI context, resource limiter and log sink.

use std::time::Instant;

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::airlock::plugin::log as wit_log;
use crate::grants::{self, EffectiveGrant, HttpHooks};
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
        if message.len() > limits::MAX_LOG_LINE_BYTES {
            let mut cut = limits::MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("…[truncated]");
        }
        if self.bytes + message.len() > self.max_bytes {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine { level, message });
    }
}

/// Memory and table limits for one instance. Records which limit was hit so a
/// resulting trap can be reported as a memory-limit failure.
#[derive(Debug)]
pub(crate) struct CallLimiter {
    memory_bytes: usize,
    table_elements: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_bytes && maximum.is_none_or(|m| desired <= m);
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.table_elements && maximum.is_none_or(|m| desired <= m);
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
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    /// The call's workspace, when granted (none while listing tools).
    pub(crate) workspace: Option<grants::WorkspaceScope>,
    /// When the call must be over: the epoch deadline and the bound on
    /// every wait a host function does for the guest.
    pub(crate) deadline: Instant,
    http: WasiHttpCtx,
    pub(crate) http_hooks: HttpHooks,
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
    ) -> wasmtime::Result<Store<CallState>> {
        let stdout = MemoryOutputPipe::new(limits::MAX_STDERR_BYTES);
        let stderr = MemoryOutputPipe::new(limits::MAX_STDERR_BYTES);
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        grants::configure(&mut builder, grant)?;
        let wasi = builder.build();
        let deadline = Instant::now() + limits.timeout();
        let state = CallState {
            wasi,
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(limits::MAX_RESOURCES);
                table
            },
            limiter: CallLimiter {
                memory_bytes: limits.memory_bytes(),
                table_elements: limits::MAX_TABLE_ELEMENTS,
                hit: false,
            },
            log: LogSink::new(limits::DEFAULT_MAX_LOG_BYTES, grant.log_max_lines()),
            stdout,
            stderr,
            workspace,
            deadline,
            http: WasiHttpCtx::new(),
            http_hooks: HttpHooks::new(grant.http.as_ref(), deadline),
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

impl wit_log::Host for CallState {
    fn log(&mut self, level: wit_log::Level, message: String) {
        let level = match level {
            wit_log::Level::Trace => LogLevel::Trace,
            wit_log::Level::Debug => LogLevel::Debug,
            wit_log::Level::Info => LogLevel::Info,
            wit_log::Level::Warn => LogLevel::Warn,
            wit_log::Level::Error => LogLevel::Error,
        };
        self.log.push(level, message);
    }
}

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

    #[test]
    fn truncation_respects_utf8_boundaries() {
        let mut sink = LogSink::new(100_000, 1_000);
        sink.push(LogLevel::Warn, "é".repeat(limits::MAX_LOG_LINE_BYTES));
        assert!(sink.lines[0].message.starts_with('é'));
    }
}
