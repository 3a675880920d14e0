//! Airlock's performance benchmark: the whole call pipeline next to raw
//! wasmtime doing the same work, throughput under concurrency, cold and
//! cached plugin loads, and memory.
//!
//! ```sh
//! scripts/bench            # full run; rewrites the figures in docs/performance.md
//! cargo bench -p airlock-tests --bench pipeline      # full run, printed only
//! cargo test -p airlock-tests --bench pipeline       # smoke run (CI): every
//!                                                    # figure, few iterations
//! ```
//!
//! The trivial tool is the `misbehave` test guest's `echo` (returns its
//! arguments, `{"n":1}`), the same component and arguments for every figure:
//!
//! - **raw wasmtime**: what an embedder writing against wasmtime directly
//!   would do per call: a new `Store` with a fresh WASI context, instantiate
//!   the component from an `InstancePre`, call the typed `call` export. Engine
//!   with wasmtime's default configuration plus the pooling allocator (no
//!   fuel, no epochs, no limits, no audit).
//! - **raw wasmtime under the sandbox's limits**: the same with fuel
//!   metering, epoch interruption, a memory limiter and pooled stacks
//!   zeroed, as every Airlock call runs: the pipeline's own work is what
//!   separates this from the pipeline.
//! - **Airlock pipeline**: `Host::call`: tool lookup, mode, rate limits and
//!   approval checks, argument parsing and schema validation, idempotency,
//!   the audit intent record, a fresh limited instance (fuel, epoch deadline,
//!   memory limiter) from the plugin's `InstancePre` and a pooled slot, the
//!   call, output checks and the audit outcome record. "Batched": the tool is
//!   `read`, its records go to disk with the next group commit; "flushed":
//!   the same tool declared `write`, whose intent and outcome records are
//!   each fsynced before the call goes on.
//!
//! Nothing here asserts on timings; the smoke run checks that every figure
//! can be produced.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark: a panic is the report

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_host::{
    AlertConfig, AlertMetric, AlertRule, CacheStatus, CallRequest, Host, HostConfig,
    TelemetryConfig,
};
use airlock_tests::{MISBEHAVE, PLUGINS_DIR, read, sha256_hex};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod raw {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "airlock:plugin/plugin",
        exports: { default: async },
    });
}

const ARGS: &str = r#"{"n":1}"#;
const CONCURRENCY: [usize; 4] = [1, 2, 8, 64];

/// How much work each figure gets.
#[derive(Clone, Copy)]
struct Effort {
    calls: usize,
    throughput_for: Duration,
    load_rounds: usize,
}

impl Effort {
    fn from_args() -> Effort {
        // `cargo bench` passes `--bench`; `cargo test` runs the binary bare.
        if std::env::args().any(|a| a == "--bench") {
            Effort {
                calls: 5_000,
                throughput_for: Duration::from_secs(3),
                load_rounds: 5,
            }
        } else {
            Effort {
                calls: 30,
                throughput_for: Duration::from_millis(100),
                load_rounds: 1,
            }
        }
    }

    fn smoke(&self) -> bool {
        self.load_rounds == 1
    }
}

// ---------------------------------------------------------------- figures

struct Latency {
    n: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let n = samples.len().max(1);
        let total: Duration = samples.iter().sum();
        let at = |q: f64| {
            samples
                .get(((n as f64 * q) as usize).min(n - 1))
                .copied()
                .unwrap_or_default()
        };
        Latency {
            n: samples.len(),
            mean: total / u32::try_from(n).unwrap(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// CPU time of this process so far: every thread's, user and system (the
/// audit log's writer and sled's threads with the callers'), from the
/// kernel's per-process clock.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU time a call: `cpu` spent on `calls` calls.
fn per_call(cpu: Duration, calls: usize) -> Duration {
    cpu.checked_div(u32::try_from(calls.max(1)).unwrap_or(u32::MAX))
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: i64) -> String {
    format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Resident set size of this process, in bytes.
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[path = "../support/machine.rs"]
mod machine;
use machine::machine;

// ---------------------------------------------------------- raw wasmtime

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl raw::airlock::plugin::types::Host for RawState {}

impl raw::airlock::plugin::log::Host for RawState {
    fn log(&mut self, _level: raw::airlock::plugin::log::Level, _message: String) {}
}

struct Raw {
    engine: Engine,
    pre: raw::PluginPre<RawState>,
    pooled: bool,
    /// The sandbox's limits on: fuel, epoch interruption, a memory
    /// limiter, pooled stacks zeroed ([`Raw::limited`]).
    limited: bool,
}

impl Raw {
    /// The baseline: wasmtime's defaults and the host's pool tuning,
    /// nothing limited.
    fn new(component: &[u8]) -> Raw {
        Raw::build(component, false, None)
    }

    /// The same, under the limits every Airlock call runs under (engine.rs,
    /// state.rs): fuel metering, epoch interruption (a deadline that never
    /// comes: the checks compiled into the guest are what it costs), a
    /// memory limiter, and pooled stacks zeroed between calls. What is left
    /// between this and the pipeline is the pipeline's own work.
    fn limited(component: &[u8]) -> Raw {
        Raw::build(component, true, None)
    }

    /// [`Raw::build`], its compiled code kept in `cache` (the instruction
    /// counts: see [`compiled`]).
    fn cached(component: &[u8], limited: bool, cache: &Path) -> Raw {
        Raw::build(component, limited, Some(cache))
    }

    fn build(component: &[u8], limited: bool, cache: Option<&Path>) -> Raw {
        let mut config = Config::new();
        config.wasm_component_model(true);
        if limited {
            config.consume_fuel(true);
            config.epoch_interruption(true);
        }
        let mut pooled = config.clone();
        // The pool tuned as the host tunes its own (engine.rs): freed slots
        // keep memory and stack resident and are reset in place, so the
        // baseline is the fastest set-up, not wasmtime's defaults.
        let mut pool = PoolingAllocationConfig::default();
        pool.linear_memory_keep_resident(1 << 20)
            .table_keep_resident(1 << 20)
            .async_stack_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if limited {
            pooled.async_stack_zeroing(true);
        }
        let (engine, pooled) = match Engine::new(&pooled) {
            Ok(engine) => (engine, true),
            Err(_) => (Engine::new(&config).unwrap(), false),
        };
        let saved = cache.map(|dir| {
            dir.join(if limited {
                "raw-limited.cwasm"
            } else {
                "raw.cwasm"
            })
        });
        let component = compiled(&engine, component, saved.as_deref());
        let mut linker = Linker::<RawState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        raw::airlock::plugin::types::add_to_linker::<RawState, HasSelf<RawState>>(
            &mut linker,
            |s| s,
        )
        .unwrap();
        raw::airlock::plugin::log::add_to_linker::<RawState, HasSelf<RawState>>(&mut linker, |s| s)
            .unwrap();
        let pre = raw::PluginPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Raw {
            engine,
            pre,
            pooled,
            limited,
        }
    }

    /// How instances are allocated, and what is limited.
    fn describe(&self) -> String {
        let allocation = if self.pooled { "pooled" } else { "on demand" };
        if self.limited {
            format!("{allocation}; fuel, epochs, memory limiter, stacks zeroed")
        } else {
            allocation.to_owned()
        }
    }

    async fn call(&self) -> String {
        let mut store = Store::new(
            &self.engine,
            RawState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                limits: StoreLimitsBuilder::new().memory_size(64 << 20).build(),
            },
        );
        if self.limited {
            store.limiter(|s| &mut s.limits);
            store.set_fuel(1_000_000_000).unwrap();
            store.set_epoch_deadline(1 << 40);
        }
        let plugin = self.pre.instantiate_async(&mut store).await.unwrap();
        let context = raw::exports::airlock::plugin::tools::CallContext {
            call_id: "call".into(),
            trace_id: "trace".into(),
            principal: "bench".into(),
        };
        plugin
            .airlock_plugin_tools()
            .call_call(&mut store, "echo", ARGS, &context)
            .await
            .unwrap()
            .unwrap()
    }
}

/// `bytes` compiled for `engine`, or read back from `saved` where an
/// earlier run of the same binary compiled it. `scripts/bench-instructions`
/// compiles once natively, before its runs under valgrind, where compiling
/// takes minutes (and is not counted: it comes before the count starts).
/// Code that does not suit `engine` is compiled again.
fn compiled(engine: &Engine, bytes: &[u8], saved: Option<&Path>) -> Component {
    if let Some(path) = saved.filter(|path| path.exists()) {
        // SAFETY: `Component::serialize`'s output, written below by this
        // benchmark into its own scratch directory; wasmtime checks that it
        // was compiled for a compatible engine and refuses it otherwise.
        #[allow(unsafe_code)]
        if let Ok(component) = unsafe { Component::deserialize_file(engine, path) } {
            return component;
        }
    }
    let component = Component::new(engine, bytes).unwrap();
    if let Some(path) = saved {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, component.serialize().unwrap()).unwrap();
    }
    component
}

// ---------------------------------------------------------------- airlock

/// Install `component` under `name` in `plugins` with `echo` and `spin`
/// declared `risk`.
fn install(plugins: &Path, name: &str, component: &[u8], risk: &str) {
    install_with_timeout(plugins, name, component, risk, 1000);
}

/// [`install`] with a deadline of `timeout_ms` a call.
fn install_with_timeout(plugins: &Path, name: &str, component: &[u8], risk: &str, timeout_ms: u64) {
    let dir = plugins.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("component.wasm"), component).unwrap();
    let manifest = format!(
        "[plugin]\nname = \"{name}\"\nversion = \"0.1.0\"\ncomponent = \"component.wasm\"\n\
         sha256 = \"{}\"\n\n[capabilities]\nlog = true\n\n[limits]\nmax_concurrency = 64\n\
         timeout_ms = {timeout_ms}\nfuel = 1_000_000_000_000\n\n\
         [[tools]]\nname = \"echo\"\nrisk = \"{risk}\"\n\n[[tools]]\nname = \"spin\"\nrisk = \"read\"\n",
        sha256_hex(component)
    );
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
}

/// `component` with a custom section naming `variant`: a distinct component
/// (its own digest, compiled on its own) that behaves the same.
fn variant(component: &[u8], variant: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"airlock-bench-variant";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(variant.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Ten plugins in `dir`: the six examples and four variants of the test
/// guest (`guest-0` … `guest-3`).
fn ten_plugins(dir: &Path, misbehave: &[u8]) -> std::path::PathBuf {
    for entry in std::fs::read_dir(PLUGINS_DIR).unwrap() {
        let entry = entry.unwrap();
        copy_dir(&entry.path(), &dir.join(entry.file_name()));
    }
    for i in 0..4 {
        install(
            dir,
            &format!("guest-{i}"),
            &variant(misbehave, &i.to_string()),
            "read",
        );
    }
    dir.to_owned()
}

async fn sequential<F, Fut>(calls: usize, mut call: F) -> Latency
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..(calls / 10).max(5) {
        call().await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed());
    }
    Latency::of(samples)
}

/// Two kinds of call, one after the other `calls` times each (after a
/// warm-up), timed separately: drift in the machine's speed touches both
/// alike.
async fn interleaved<A, AFut, B, BFut>(calls: usize, mut a: A, mut b: B) -> (Latency, Latency)
where
    A: FnMut() -> AFut,
    AFut: Future<Output = ()>,
    B: FnMut() -> BFut,
    BFut: Future<Output = ()>,
{
    let mut a = || -> Pin<Box<dyn Future<Output = ()> + '_>> { Box::pin(a()) };
    let mut b = || -> Pin<Box<dyn Future<Output = ()> + '_>> { Box::pin(b()) };
    let [a, b] = interleaved_all(calls, [&mut a, &mut b]).await;
    (a, b)
}

/// A kind of call for [`interleaved_all`].
type Kind<'a> = &'a mut dyn FnMut() -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Several kinds of call in turn, `calls` times each (after a warm-up),
/// timed separately: drift in the machine's speed touches all alike.
async fn interleaved_all<const N: usize>(calls: usize, mut kinds: [Kind<'_>; N]) -> [Latency; N] {
    for _ in 0..(calls / 10).max(5) {
        for kind in &mut kinds {
            kind().await;
        }
    }
    let mut samples: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(calls));
    for _ in 0..calls {
        for (kind, samples) in kinds.iter_mut().zip(&mut samples) {
            let started = Instant::now();
            kind().await;
            samples.push(started.elapsed());
        }
    }
    samples.map(Latency::of)
}

/// `callers` tasks calling for `period`: calls per second and latency.
async fn throughput<F, Fut>(callers: usize, period: Duration, call: F) -> (f64, Latency)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (samples, elapsed, _) = throughput_slice(callers, period, Arc::new(call)).await;
    rate_of(samples, elapsed)
}

/// Calls/s and latency of `samples` taken over `elapsed`.
fn rate_of(samples: Vec<Duration>, elapsed: Duration) -> (f64, Latency) {
    let rate = samples.len() as f64 / elapsed.as_secs_f64();
    (rate, Latency::of(samples))
}

/// `callers` tasks calling `call` in a loop for `period`: each call's
/// latency, how long it took for all of them to finish, and the process's
/// CPU time meanwhile.
async fn throughput_slice<F, Fut>(
    callers: usize,
    period: Duration,
    call: Arc<F>,
) -> (Vec<Duration>, Duration, Duration)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let cpu = process_cpu();
    let until = started + period;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    call().await;
                    samples.push(t.elapsed());
                    // Between calls, back to the scheduler, as independent
                    // callers would be: a loop whose calls finish at their
                    // first poll never gives up its worker, and a call
                    // that yielded at an epoch tick waits behind it.
                    tokio::task::yield_now().await;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    (
        samples,
        started.elapsed(),
        process_cpu().saturating_sub(cpu),
    )
}

/// Slices a throughput comparison takes turns in.
const SLICES: u32 = 6;

/// One side of [`throughput_pair`]: who is called (`bench/echo`, the same
/// tool on either side).
#[derive(Clone)]
enum Side {
    /// The pipeline of a host, brought to rest after each slice (its audit
    /// log written out and flushed; its time counts as the side's, since
    /// its calls left that work behind).
    Host(Arc<Host>),
    /// Raw wasmtime (unlimited or under the limits).
    Raw(Arc<Raw>),
}

impl Side {
    async fn call(&self) {
        match self {
            Side::Host(host) => {
                host.call(CallRequest::new("bench/echo", ARGS))
                    .await
                    .unwrap();
            }
            Side::Raw(raw) => drop(raw.call().await),
        }
    }

    fn settle(&self) -> Option<&Arc<Host>> {
        match self {
            Side::Host(host) => Some(host),
            Side::Raw(_) => None,
        }
    }
}

/// The throughput of `a` and of `b`, `period` each, in alternating slices
/// (a, b, a, b, …): a change in the machine's speed during the run (a
/// shared machine's neighbours) touches both alike, so their ratio holds
/// better than that of two runs one after the other. After each slice a
/// host side is settled (its audit log's queue written and flushed) within
/// its own time, so its writer thread does not run in the other side's.
async fn throughput_pair(callers: usize, period: Duration, a: Side, b: Side) -> (Run, Run) {
    async fn slice<F, Fut>(
        callers: usize,
        period: Duration,
        call: &Arc<F>,
        settle: Option<&Arc<Host>>,
        samples: &mut Vec<Duration>,
        time: &mut Duration,
        cpu: &mut Duration,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (taken, took, used) = throughput_slice(callers, period, Arc::clone(call)).await;
        samples.extend(taken);
        *time += took;
        *cpu += used;
        if let Some(host) = settle {
            let started = Instant::now();
            let before = process_cpu();
            let host = Arc::clone(host);
            tokio::task::spawn_blocking(move || host.audit().flush().unwrap())
                .await
                .unwrap();
            *time += started.elapsed();
            *cpu += process_cpu().saturating_sub(before);
        }
    }
    let caller = |side: &Side| {
        let side = side.clone();
        Arc::new(move || {
            let side = side.clone();
            async move { side.call().await }
        })
    };
    let (a_call, b_call) = (caller(&a), caller(&b));
    let part = period / SLICES;
    let (mut a_samples, mut a_time, mut a_cpu) = (Vec::new(), Duration::ZERO, Duration::ZERO);
    let (mut b_samples, mut b_time, mut b_cpu) = (Vec::new(), Duration::ZERO, Duration::ZERO);
    for _ in 0..SLICES {
        slice(
            callers,
            part,
            &a_call,
            a.settle(),
            &mut a_samples,
            &mut a_time,
            &mut a_cpu,
        )
        .await;
        slice(
            callers,
            part,
            &b_call,
            b.settle(),
            &mut b_samples,
            &mut b_time,
            &mut b_cpu,
        )
        .await;
    }
    (
        Run::of(a_samples, a_time, a_cpu),
        Run::of(b_samples, b_time, b_cpu),
    )
}

/// One side's figures in [`throughput_pair`].
struct Run {
    /// Calls a second.
    rate: f64,
    latency: Latency,
    /// The process's CPU time a call (every thread: the audit log's writer
    /// and sled's with the callers'). With every core busy, calls/s is the
    /// cores over this, so two sides' CPU a call give the ratio of their
    /// calls/s without the share of the machine another load takes.
    cpu: Duration,
}

impl Run {
    fn of(samples: Vec<Duration>, elapsed: Duration, cpu: Duration) -> Run {
        let calls = samples.len();
        let (rate, latency) = rate_of(samples, elapsed);
        Run {
            rate,
            latency,
            cpu: per_call(cpu, calls),
        }
    }
}

fn host_config(data: &Path, cache: &Path) -> HostConfig {
    HostConfig::default().data_dir(data).cache_dir(cache)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--instructions") {
        instructions(&args[i + 1..]);
        return;
    }
    let effort = Effort::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(effort));
}

// ------------------------------------------------ instruction counts

/// Callgrind zeroes its counts when this is entered
/// (`--zero-before=*instructions_begin*`): what comes before it — start-up,
/// compiling, loading, warming up — is not counted.
#[inline(never)]
fn instructions_begin(calls: usize) -> usize {
    // Bodies unlike `instructions_end`'s: identical functions are merged
    // in a release build, and callgrind would then see one name.
    std::hint::black_box(calls).wrapping_add(0x0b)
}

/// Callgrind writes its counts when this is entered
/// (`--dump-before=*instructions_end*`): the measured calls, on every
/// thread (the audit writer's work among them), and nothing after.
#[inline(never)]
fn instructions_end(calls: usize) -> usize {
    std::hint::black_box(calls).wrapping_mul(0x0e)
}

/// `--instructions KIND CALLS CACHE_DIR`: one kind of call, `CALLS` times
/// one after the other between [`instructions_begin`] and
/// [`instructions_end`], for `scripts/bench --instructions` to run under
/// valgrind's callgrind. `KIND` is `raw` (raw wasmtime), `limited` (raw
/// wasmtime under the sandbox's limits, [`Raw::limited`]), `read` (the
/// pipeline, audit batched) or `write` (the pipeline, audit flushed).
/// `CACHE_DIR` keeps the compiled code (the host's, raw wasmtime's) from
/// one run to the next, so `CALLS` = 0 natively compiles for the runs under
/// valgrind. On
/// one thread (a current-thread runtime), so the count repeats.
fn instructions(args: &[String]) {
    let [kind, calls, cache] = args else {
        panic!("usage: pipeline --instructions raw|limited|read|write CALLS CACHE_DIR");
    };
    let calls: usize = calls.parse().expect("CALLS: a number");
    let cache = Path::new(cache);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let misbehave = read(MISBEHAVE);
        let work = tempfile::tempdir().unwrap();
        let warm_up = 20;
        match kind.as_str() {
            "raw" | "limited" => {
                let raw = Raw::cached(&misbehave, kind == "limited", cache);
                for _ in 0..warm_up {
                    assert_eq!(raw.call().await, ARGS);
                }
                instructions_begin(calls);
                for _ in 0..calls {
                    drop(raw.call().await);
                }
                instructions_end(calls);
                println!("Raw wasmtime instance allocation: {}.", raw.describe());
            }
            "read" | "write" => {
                let plugins = work.path().join("plugins");
                let (name, risk) = if kind == "read" {
                    ("bench", "read")
                } else {
                    ("flushed", "write")
                };
                // Valgrind runs the calls some fifty times slower, and a
                // busy machine slower still: a deadline that cannot bite.
                install_with_timeout(&plugins, name, &misbehave, risk, 60_000);
                let host = Host::new(host_config(&work.path().join("data"), cache)).unwrap();
                let report = host.load_plugins_dir(&plugins).await.unwrap();
                assert!(report.failed.is_empty(), "{:?}", report.failed);
                let tool = format!("{name}/echo");
                for _ in 0..warm_up {
                    host.call(CallRequest::new(&tool, ARGS)).await.unwrap();
                }
                host.audit().flush().unwrap();
                instructions_begin(calls);
                for _ in 0..calls {
                    host.call(CallRequest::new(&tool, ARGS)).await.unwrap();
                }
                // The records of the measured calls are written, on
                // whichever thread, before the count ends.
                host.audit().flush().unwrap();
                instructions_end(calls);
                println!(
                    "Airlock instance allocation: {}.",
                    host.instance_allocation()
                );
                host.audit().close().unwrap();
            }
            other => panic!("unknown kind {other:?}: raw, limited, read or write"),
        }
    });
}

async fn run(effort: Effort) {
    let misbehave = read(MISBEHAVE);
    // Beside the build (`target/tmp`), not in `$TMPDIR`: a tmpfs there
    // would make every fsync free and the flushed figures meaningless.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let plugins = work.path().join("plugins");
    install(&plugins, "bench", &misbehave, "read");
    install(&plugins, "flushed", &misbehave, "write");
    let cache = work.path().join("cache");
    let data = work.path().join("data");

    // `-- --profile SECONDS [CALLERS] [--no-zero-stacks | --alerts |
    // --raw | --limited]`: only call `bench/echo` in a loop (CALLERS
    // tasks, 1 by default), for a profiler (`perf record -g --
    // target/release/deps/pipeline-… --bench --profile 10 2`) or
    // `/usr/bin/time`; `--no-zero-stacks` on a host with `zero_stacks =
    // false`, `--alerts` on a host with the alert rules readiness asks
    // for (every tool's error rate and p99 latency over 5 minutes),
    // `--raw` the raw wasmtime baseline, `--limited` the same under the
    // sandbox's limits.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let seconds: u64 = args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .expect("--profile SECONDS [CALLERS]");
        let callers: usize = args
            .get(i + 2)
            .filter(|a| !a.starts_with("--"))
            .map_or(1, |s| {
                s.parse()
                    .expect("--profile SECONDS [CALLERS]: CALLERS a number")
            });
        let zero_stacks = !args.iter().any(|a| a == "--no-zero-stacks");
        type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
        let raw = if args.iter().any(|a| a == "--raw") {
            Some(Raw::new(&misbehave))
        } else if args.iter().any(|a| a == "--limited") {
            Some(Raw::limited(&misbehave))
        } else {
            None
        };
        let call: Call = if let Some(raw) = raw {
            let raw = Arc::new(raw);
            Arc::new(move || {
                let raw = Arc::clone(&raw);
                Box::pin(async move {
                    raw.call().await;
                })
            })
        } else {
            let mut config = host_config(&data, &cache).zero_stacks(zero_stacks);
            if args.iter().any(|a| a == "--alerts") {
                let window = Duration::from_secs(300);
                let mut alerts = AlertConfig::default();
                alerts.rules = vec![
                    AlertRule::new("errors", AlertMetric::ErrorRate, window, 0.5),
                    AlertRule::new("slow", AlertMetric::LatencyP99Ms, window, 5000.0),
                ];
                config = config.alerts(alerts);
            }
            let host = Arc::new(Host::new(config).unwrap());
            host.load_plugins_dir(&plugins).await.unwrap();
            Arc::new(move || {
                let host = Arc::clone(&host);
                Box::pin(async move {
                    host.call(CallRequest::new("bench/echo", ARGS))
                        .await
                        .unwrap();
                })
            })
        };
        let cpu = process_cpu();
        let until = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let call = Arc::clone(&call);
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    while Instant::now() < until {
                        let start = Instant::now();
                        call().await;
                        took.push(start.elapsed());
                        tokio::task::yield_now().await;
                    }
                    took
                })
            })
            .collect();
        let mut took = Vec::new();
        for task in tasks {
            took.extend(task.await.unwrap());
        }
        let cpu = process_cpu().saturating_sub(cpu);
        let l = Latency::of(took);
        println!(
            "{} calls in {seconds} s with {callers} callers: p50 {}, p99 {}, CPU a call {} (every thread)",
            l.n,
            us(l.p50),
            us(l.p99),
            us(per_call(cpu, l.n))
        );
        return;
    }

    println!(
        "Machine: {}. Mode: {}.\n",
        machine(),
        if effort.smoke() {
            "smoke (few iterations; figures not meaningful)"
        } else {
            "full"
        }
    );

    // Memory first, while the process is fresh.
    let memory = memory(&effort, work.path(), &misbehave).await;

    // ------------------------------------------------ latency per call
    let raw = Arc::new(Raw::new(&misbehave));
    assert_eq!(raw.call().await, ARGS);
    let host = Arc::new(Host::new(host_config(&data, &cache)).unwrap());
    let report = host.load_plugins_dir(&plugins).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let output = host
        .call(CallRequest::new("bench/echo", ARGS))
        .await
        .unwrap()
        .output;
    assert_eq!(output.to_string(), ARGS);

    let limited = Raw::limited(&misbehave);
    assert_eq!(limited.call().await, ARGS);
    let [raw_latency, limited_latency, batched] = interleaved_all(
        effort.calls,
        [
            &mut || Box::pin(async { drop(raw.call().await) }),
            &mut || Box::pin(async { drop(limited.call().await) }),
            &mut || {
                Box::pin(async {
                    host.call(CallRequest::new("bench/echo", ARGS))
                        .await
                        .unwrap();
                })
            },
        ],
    )
    .await;
    let flushed = sequential(effort.calls.min(1000), || async {
        host.call(CallRequest::new("flushed/echo", ARGS))
            .await
            .unwrap();
    })
    .await;

    println!("### One call at a time\n");
    println!("| | calls | mean | p50 | p99 | × raw (mean) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, l: &Latency| {
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} |",
            l.n,
            us(l.mean),
            us(l.p50),
            us(l.p99),
            l.mean.as_secs_f64() / raw_latency.mean.as_secs_f64()
        );
    };
    row(
        &format!("raw wasmtime: instantiate + call ({})", raw.describe()),
        &raw_latency,
    );
    row(
        &format!(
            "raw wasmtime under the sandbox's limits ({})",
            limited.describe()
        ),
        &limited_latency,
    );
    row("Airlock pipeline, audit batched (`read`)", &batched);
    row(
        "Airlock pipeline, audit flushed per record (`write`)",
        &flushed,
    );
    println!(
        "\nPipeline (batched) / raw wasmtime: **{:.2}×** (mean), {:.2}× (p50). Pipeline / raw wasmtime under the same limits (what the pipeline adds to the sandbox): {:.2}× (mean), {:.2}× (p50). Instance allocation: {}.\n",
        batched.mean.as_secs_f64() / raw_latency.mean.as_secs_f64(),
        batched.p50.as_secs_f64() / raw_latency.p50.as_secs_f64(),
        batched.mean.as_secs_f64() / limited_latency.mean.as_secs_f64(),
        batched.p50.as_secs_f64() / limited_latency.p50.as_secs_f64(),
        host.instance_allocation()
    );

    // ------------------------------------------------ telemetry
    telemetry_cost(&effort, work.path(), &plugins, &cache).await;

    // ------------------------------------------------ throughput
    // CPU a call is the process's (every thread) over the side's calls:
    // with the cores busy, raw wasmtime's over Airlock's is the ratio of
    // their calls/s that the machine's other loads do not move.
    println!("### Throughput (audit batched)\n");
    println!(
        "| concurrent callers | Airlock calls/s | p50 | p99 | CPU a call | raw wasmtime calls/s | p50 | p99 | CPU a call | Airlock ÷ raw: calls/s, by CPU a call |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for callers in CONCURRENCY {
        let (airlock, raw_run) = throughput_pair(
            callers,
            effort.throughput_for,
            Side::Host(Arc::clone(&host)),
            Side::Raw(Arc::clone(&raw)),
        )
        .await;
        println!(
            "| {callers} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {:.2}×, {:.2}× |",
            airlock.rate,
            us(airlock.latency.p50),
            us(airlock.latency.p99),
            us(airlock.cpu),
            raw_run.rate,
            us(raw_run.latency.p50),
            us(raw_run.latency.p99),
            us(raw_run.cpu),
            airlock.rate / raw_run.rate,
            raw_run.cpu.as_secs_f64() / airlock.cpu.as_secs_f64().max(f64::MIN_POSITIVE),
        );
    }
    println!();

    // ------------------------------------------------ the same sandbox
    // The pipeline next to raw wasmtime under the same limits, in turn:
    // what the pipeline's own steps cost under concurrency, the sandbox
    // set apart.
    println!("### Throughput against raw wasmtime under the same limits (audit batched)\n");
    println!(
        "| concurrent callers | Airlock calls/s | p99 | CPU a call | raw wasmtime under the limits calls/s | p99 | CPU a call | Airlock ÷ it: calls/s, by CPU a call |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let limited = Arc::new(limited);
    for callers in [2, 8, 64] {
        let (airlock, limited_run) = throughput_pair(
            callers,
            effort.throughput_for,
            Side::Host(Arc::clone(&host)),
            Side::Raw(Arc::clone(&limited)),
        )
        .await;
        println!(
            "| {callers} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2}×, {:.2}× |",
            airlock.rate,
            us(airlock.latency.p99),
            us(airlock.cpu),
            limited_run.rate,
            us(limited_run.latency.p99),
            us(limited_run.cpu),
            airlock.rate / limited_run.rate,
            limited_run.cpu.as_secs_f64() / airlock.cpu.as_secs_f64().max(f64::MIN_POSITIVE),
        );
    }
    println!();
    drop(limited);

    // ------------------------------------------------ stack zeroing
    // The same calls on a host whose pooled stacks are not zeroed between
    // calls (`zero_stacks = false`), next to the default host and raw
    // wasmtime, in turn, so the cost of that defense is a measured figure.
    let unzeroed_data = work.path().join("data-unzeroed");
    let unzeroed =
        Arc::new(Host::new(host_config(&unzeroed_data, &cache).zero_stacks(false)).unwrap());
    unzeroed.load_plugins_dir(&plugins).await.unwrap();
    println!("### Pooled stacks zeroed or not (audit batched)\n");
    println!(
        "Instance allocation without zeroing: {}.\n",
        unzeroed.instance_allocation()
    );
    println!(
        "| concurrent callers | stacks zeroed (default) calls/s | p99 | CPU a call | not zeroed calls/s | p99 | CPU a call | raw wasmtime calls/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for callers in [2, 8] {
        let (zeroed, not) = throughput_pair(
            callers,
            effort.throughput_for,
            Side::Host(Arc::clone(&host)),
            Side::Host(Arc::clone(&unzeroed)),
        )
        .await;
        let r = Arc::clone(&raw);
        let (raw_rate, _) = throughput(callers, effort.throughput_for, move || {
            let r = Arc::clone(&r);
            async move { drop(r.call().await) }
        })
        .await;
        println!(
            "| {callers} | {:.0} ({:.2}× raw) | {} | {} | {:.0} ({:.2}× raw) | {} | {} | {raw_rate:.0} |",
            zeroed.rate,
            zeroed.rate / raw_rate,
            us(zeroed.latency.p99),
            us(zeroed.cpu),
            not.rate,
            not.rate / raw_rate,
            us(not.latency.p99),
            us(not.cpu),
        );
    }
    println!();
    drop(unzeroed);

    // Every call of the run is on the record.
    drop(host);
    let log = airlock_host::audit_log::AuditLog::open_read_only(data.join("audit")).unwrap();
    let verified = log.verify(&[]).unwrap().unwrap();
    println!(
        "\nAudit log after the run: {} records, chain verified.\n",
        verified.records
    );
    drop(log);

    // ------------------------------------------------ storage backends
    stores(&effort, work.path(), &plugins, &cache).await;

    // ------------------------------------------------ loads
    loads(&effort, work.path(), &misbehave).await;

    println!("### Memory (resident set)\n");
    println!("| | |\n|---|---:|");
    println!(
        "| per idle loaded plugin (10 plugins, cached) | {} |",
        mib(memory.per_plugin)
    );
    println!(
        "| per concurrent instance ({} `spin` calls in flight) | {} |",
        memory.instances,
        mib(memory.per_instance)
    );
    println!(
        "| process after loading 10 plugins | {} |",
        mib(memory.process)
    );
}

/// A minimal OTLP/HTTP receiver on loopback: reads each request (head and
/// `Content-Length` body) and answers `200`, on keep-alive connections.
async fn otlp_sink() -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

async fn echo(host: &Host) {
    host.call(CallRequest::new("bench/echo", ARGS))
        .await
        .unwrap();
}

/// What metrics and span export cost a call: hosts alike but for their
/// telemetry, called in turn.
async fn telemetry_cost(effort: &Effort, work: &Path, plugins: &Path, cache: &Path) {
    let sink = otlp_sink().await;
    let host = |name: &str, telemetry: TelemetryConfig| {
        let data = work.join(name);
        let plugins = plugins.to_owned();
        let config = host_config(&data, cache).telemetry(telemetry);
        async move {
            let host = Host::new(config).unwrap();
            host.load_plugins_dir(&plugins).await.unwrap();
            host
        }
    };
    let off = host("telemetry-off", TelemetryConfig::default().metrics(false)).await;
    let metrics = host("telemetry-metrics", TelemetryConfig::default()).await;
    let traced = host(
        "telemetry-traced",
        TelemetryConfig::default().otlp_endpoint(&sink),
    )
    .await;
    let (off_1, with_metrics) = interleaved(effort.calls, || echo(&off), || echo(&metrics)).await;
    let (off_2, with_spans) = interleaved(effort.calls, || echo(&off), || echo(&traced)).await;
    println!("### Metrics and tracing, cost per call (audit batched)\n");
    println!("| | calls | mean | p50 | p99 | cost (mean) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, l: &Latency, base: &Latency| {
        let cost = l.mean.as_secs_f64() - base.mean.as_secs_f64();
        println!(
            "| {name} | {} | {} | {} | {} | {:+.1} µs ({:+.1} %) |",
            l.n,
            us(l.mean),
            us(l.p50),
            us(l.p99),
            cost * 1e6,
            100.0 * cost / base.mean.as_secs_f64()
        );
    };
    row("without metrics or spans", &off_1, &off_1);
    row("metrics (the default)", &with_metrics, &off_1);
    row("without metrics or spans (again)", &off_2, &off_2);
    row(
        "metrics + spans exported over OTLP/HTTP (loopback receiver)",
        &with_spans,
        &off_2,
    );
    println!();
    // The spans went out on the exporter's thread.
    let traced = Arc::new(traced);
    tokio::task::spawn_blocking(move || traced.telemetry().flush_spans())
        .await
        .unwrap();
}

async fn loads(effort: &Effort, work: &Path, misbehave: &[u8]) {
    let ten = ten_plugins(&work.join("ten"), misbehave);
    let one = work.join("one");
    install(&one, "bench", misbehave, "read");
    let size = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
            .map(|f| f.unwrap())
            .filter(|f| f.path().extension().is_some_and(|x| x == "wasm"))
            .map(|f| f.metadata().unwrap().len())
            .sum()
    };

    println!(
        "### Plugin loads (median of {} rounds)\n",
        effort.load_rounds
    );
    println!(
        "| | components | cold (compile + cache write) | cached: host start | cached: load | cached: start + load |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, dir, count) in [("1 plugin", &one, 1), ("10 plugins", &ten, 10)] {
        let mut cold = Vec::new();
        let mut start = Vec::new();
        let mut warm = Vec::new();
        for round in 0..effort.load_rounds {
            let cache = work.join(format!("cache-{name}-{round}"));
            let data = work.join(format!("data-{name}-{round}"));
            {
                let host = Host::new(host_config(&data, &cache)).unwrap();
                let t = Instant::now();
                let report = host.load_plugins_dir(dir).await.unwrap();
                cold.push(t.elapsed());
                assert_eq!(report.loaded.len(), count, "{:?}", report.failed);
            }
            let t = Instant::now();
            let host = Host::new(host_config(&data, &cache)).unwrap();
            start.push(t.elapsed());
            let t = Instant::now();
            let report = host.load_plugins_dir(dir).await.unwrap();
            warm.push(t.elapsed());
            assert_eq!(report.loaded.len(), count);
            assert!(
                host.plugins()
                    .iter()
                    .all(|p| p.cache_status() == CacheStatus::Hit)
            );
        }
        let median = |mut v: Vec<Duration>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (cold, start, warm) = (median(cold), median(start), median(warm));
        println!(
            "| {name} | {} KiB | {} | {} | {} | {} |",
            size(dir) / 1024,
            ms(cold),
            ms(start),
            ms(warm),
            ms(start + warm)
        );
    }
    println!();
}

struct Memory {
    per_plugin: i64,
    per_instance: i64,
    instances: usize,
    process: i64,
}

async fn memory(effort: &Effort, work: &Path, misbehave: &[u8]) -> Memory {
    let ten = ten_plugins(&work.join("memory-plugins"), misbehave);
    let cache = work.join("memory-cache");
    // Compile once into the cache, in a host of its own.
    {
        let host = Host::new(HostConfig::default().cache_dir(&cache)).unwrap();
        host.load_plugins_dir(&ten).await.unwrap();
    }
    let host = Arc::new(Host::new(host_config(&work.join("memory-data"), &cache)).unwrap());
    let before = rss();
    let report = host.load_plugins_dir(&ten).await.unwrap();
    assert_eq!(report.loaded.len(), 10, "{:?}", report.failed);
    let loaded = rss();
    // One call first, so the instance slot and the code are touched once.
    host.call(CallRequest::new("guest-0/echo", ARGS))
        .await
        .unwrap();
    let idle = rss();
    let instances = if effort.smoke() { 8 } else { 64 };
    let calls: Vec<_> = (0..instances)
        .map(|_| {
            let host = Arc::clone(&host);
            tokio::spawn(async move { host.call(CallRequest::new("guest-0/spin", "{}")).await })
        })
        .collect();
    let mut peak = idle;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss());
    }
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), "deadline_exceeded");
    }
    Memory {
        per_plugin: (loaded - before) / 10,
        per_instance: (peak - idle) / i64::try_from(instances).unwrap(),
        instances,
        process: loaded,
    }
}

// ------------------------------------------------------ storage backends

/// Concurrent callers for the storage figures.
const STORE_CALLERS: [usize; 3] = [1, 16, 64];

/// The PostgreSQL server for the storage figures: `AIRLOCK_TEST_POSTGRES_URL`,
/// else the one `scripts/postgres start` runs (its URL in
/// target/postgres/url); why there is none otherwise.
fn postgres_url() -> Result<String, String> {
    if let Ok(url) = std::env::var("AIRLOCK_TEST_POSTGRES_URL")
        && !url.trim().is_empty()
    {
        return Ok(url.trim().to_owned());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/postgres/url");
    match std::fs::read_to_string(&path) {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => Err(
            "no PostgreSQL server: AIRLOCK_TEST_POSTGRES_URL is unset and target/postgres/url is missing (run `scripts/postgres start`)"
                .to_owned(),
        ),
    }
}

/// Run `sql` on `url`.
async fn admin(url: &str, sql: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at the configured URL: {e}"))?;
    let driver = tokio::spawn(connection);
    let done = client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"));
    drop(client);
    let _ = driver.await;
    done
}

/// Drops the databases earlier runs of this benchmark left behind (a run
/// that panicked between creating and dropping its own): those named
/// `airlock_bench_<pid>` whose process is gone here. Never forced: a run
/// going on at the same time (on another machine or in another PID
/// namespace sharing the server) holds connections to its database, and
/// the drop then fails and leaves it.
async fn drop_stale_bench_databases(url: &str) {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    let driver = tokio::spawn(connection);
    let names: Vec<String> = match client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'airlock\\_bench\\_%'",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
        Err(_) => Vec::new(),
    };
    drop(client);
    let _ = driver.await;
    for name in names {
        let Some(pid) = name
            .strip_prefix("airlock_bench_")
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match admin(url, &format!("DROP DATABASE IF EXISTS \"{name}\"")).await {
            Ok(()) => println!("note: dropped {name}, left by an earlier run"),
            Err(why) => println!("note: {name}, left by an earlier run, was not dropped: {why}"),
        }
    }
}

/// `url` naming database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let scheme = base.find("://").map_or(0, |i| i + 3);
    let end = base[scheme..].find('/').map_or(base.len(), |i| scheme + i);
    format!("{}/{name}{query}", &base[..end])
}

/// `hosts` hosts on one store, every one with the bench plugins.
async fn store_hosts(
    work: &Path,
    name: &str,
    plugins: &Path,
    cache: &Path,
    store: Option<&airlock_host::PostgresConfig>,
    hosts: usize,
) -> Vec<Arc<Host>> {
    let mut out = Vec::new();
    for i in 0..hosts {
        let data = work.join(format!("{name}-{i}"));
        let mut config = host_config(&data, cache);
        if let Some(postgres) = store {
            config = config
                .store(airlock_host::StoreConfig::Postgres(postgres.clone()))
                .origin(format!("bench-{i}"));
        }
        let host = Arc::new(Host::new(config).unwrap());
        let report = host.load_plugins_dir(plugins).await.unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        out.push(host);
    }
    out
}

/// Calls per second and latency of `tool` with `callers` concurrent
/// callers spread over `hosts` in turn.
async fn spread(
    hosts: &[Arc<Host>],
    tool: &'static str,
    callers: usize,
    period: Duration,
) -> (f64, Latency) {
    let hosts: Arc<Vec<Arc<Host>>> = Arc::new(hosts.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    throughput(callers, period, move || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = Arc::clone(&hosts[i % hosts.len()]);
        async move {
            host.call(CallRequest::new(tool, ARGS)).await.unwrap();
        }
    })
    .await
}

async fn store_rows(label: &str, hosts: &[Arc<Host>], effort: &Effort) {
    for (kind, tool) in [
        ("read (audit batched)", "bench/echo"),
        ("side-effecting (audit flushed)", "flushed/echo"),
    ] {
        // Warm up: connections opened, statements prepared.
        spread(hosts, tool, 4, Duration::from_millis(50)).await;
        for callers in STORE_CALLERS {
            let (rate, l) = spread(hosts, tool, callers, effort.throughput_for).await;
            println!(
                "| {label} | {} | {kind} | {callers} | {rate:.0} | {} | {} |",
                hosts.len(),
                us(l.p50),
                us(l.p99)
            );
        }
    }
}

async fn stores(effort: &Effort, work: &Path, plugins: &Path, cache: &Path) {
    println!("### Storage backends\n");
    println!(
        "Calls of `bench/echo` (read: audit batched) and `flushed/echo` (declared `write`: its intent and outcome records are each committed before the call goes on), callers spread over the hosts in turn. Two hosts are two `Host`s in this process on one database, each with its own pool, origin and chain. No rate limits, no idempotency keys.\n"
    );
    println!("| store | hosts | call | concurrent callers | calls/s | p50 | p99 |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    let sled = store_hosts(work, "store-sled", plugins, cache, None, 1).await;
    store_rows("sled", &sled, effort).await;
    drop(sled);
    let url = match postgres_url() {
        Ok(url) => url,
        Err(why) => {
            println!("\nPostgreSQL rows skipped: {why}.\n");
            return;
        }
    };
    drop_stale_bench_databases(&url).await;
    let name = format!("airlock_bench_{}", std::process::id());
    if let Err(why) = admin(&url, &format!("CREATE DATABASE \"{name}\"")).await {
        println!("\nPostgreSQL rows skipped: {why}.\n");
        return;
    }
    let mut postgres = airlock_host::PostgresConfig::new(with_database(&url, &name));
    postgres.pool_size = 16;
    for hosts in [1, 2] {
        let group = store_hosts(
            work,
            // Host 0 keeps its data directory (its keys) and origin.
            "store-pg",
            plugins,
            cache,
            Some(&postgres),
            hosts,
        )
        .await;
        store_rows("PostgreSQL (loopback)", &group, effort).await;
        if hosts == 2 {
            // Every call of the run is on the record, in its host's chain.
            let chains = group[0].audit().verify_all(&[]).unwrap();
            let summary: Vec<String> = chains
                .iter()
                .map(|c| match &c.result {
                    Ok(report) => format!("{}: {} records", c.origin, report.records),
                    Err(failure) => panic!(
                        "chain {} fails at {}: {}",
                        c.origin, failure.seq, failure.problem
                    ),
                })
                .collect();
            println!(
                "\nAudit chains on PostgreSQL after the run: {}; every chain verified. PostgreSQL pool: {} connections a host.\n",
                summary.join(", "),
                postgres.pool_size
            );
        }
    }
    if let Err(why) = admin(
        &url,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await
    {
        println!("note: the bench database {name} was not dropped: {why}");
    }
}
