//! A plugin that misbehaves on request: errors, panics, endless loops,
//! memory hogging, table growth, oversized output and log floods.

// `table.grow` has no Rust intrinsic: inline WebAssembly (the guest
// toolchain builds std itself, with RUSTC_BOOTSTRAP). On other targets (the
// host-side lint build) the tool is a stub that reports refusal.
#![cfg_attr(target_arch = "wasm32", feature(asm_experimental_arch))]

use airlock_sdk::serde_json::{Map, Value};
use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};

/// No arguments.
#[derive(Deserialize, JsonSchema)]
pub struct Nothing {}

#[derive(Serialize, JsonSchema)]
pub struct Done {
    pub done: bool,
}

/// Any JSON object, returned unchanged.
#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Echo(pub Map<String, Value>);

pub fn echo(args: Echo, _: &Context) -> Result<Echo, ToolError> {
    Ok(args)
}

#[derive(Deserialize, JsonSchema)]
pub struct Say {
    /// Logged, written to stderr, and (with `fail`) the error message.
    pub text: String,
    /// Appended to `text`: a guest repeating a secret it was given.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub fail: bool,
}

/// Repeat `text` through every channel a guest has for free text.
pub fn say(args: Say, _: &Context) -> Result<Done, ToolError> {
    let line = match &args.password {
        Some(password) => format!("{} {password}", args.text),
        None => args.text,
    };
    airlock_sdk::log::warn(&line);
    eprintln!("{line}");
    if args.fail {
        return Err(ToolError::failed(line));
    }
    Ok(Done { done: true })
}

#[derive(Deserialize, JsonSchema)]
pub struct Leak {
    /// Made into a token the result hands back, and logged.
    pub seed: String,
}

#[derive(Serialize, JsonSchema)]
pub struct Leaked {
    pub token: String,
}

/// Return a token made from `seed` (so the caller's arguments hold no
/// secret) and log it: a guest leaking a secret of its own.
pub fn leak(args: Leak, _: &Context) -> Result<Leaked, ToolError> {
    let token = format!("minted-{}", args.seed.chars().rev().collect::<String>());
    airlock_sdk::log::info(format!("issued {token}"));
    Ok(Leaked { token })
}

pub fn fail(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    Err(ToolError::failed("deliberate failure"))
}

pub fn reject(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    Err(ToolError::invalid_input("deliberately rejected input"))
}

pub fn deny(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    Err(ToolError::denied("deliberately denied"))
}

pub fn panic(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    panic!("deliberate panic in the guest");
}

pub fn spin(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

#[derive(Deserialize, JsonSchema)]
pub struct Grow {
    /// MiB to allocate and touch.
    pub mb: u32,
}

/// Allocates in 1 MiB chunks, each written to, so the guest needs about
/// `mb` MiB of linear memory (no doubling of one big buffer) and an
/// allocation the host refuses aborts the instance (a trap).
pub fn grow(args: Grow, _: &Context) -> Result<Done, ToolError> {
    let chunks: Vec<Vec<u8>> = (0..args.mb).map(|_| vec![1u8; 1024 * 1024]).collect();
    Ok(Done {
        done: std::hint::black_box(chunks.len()) == args.mb as usize,
    })
}

#[derive(Deserialize, JsonSchema)]
pub struct GrowTable {
    /// Elements to add to the function table, 10,000 at a time.
    pub elements: u32,
}

/// Grow the module's function table by `delta` null elements; the previous
/// size, or -1 when the growth is refused.
#[cfg(target_arch = "wasm32")]
fn table_grow(delta: u32) -> i32 {
    let previous: i32;
    // SAFETY: `table.grow` only appends null references to the table; no
    // existing entry or memory is touched.
    unsafe {
        core::arch::asm!(
            ".tabletype __indirect_function_table, funcref",
            "ref.null_func",
            "local.get {delta}",
            "table.grow __indirect_function_table",
            "local.set {previous}",
            delta = in(local) delta,
            previous = lateout(local) previous,
        );
    }
    previous
}

#[cfg(not(target_arch = "wasm32"))]
fn table_grow(_delta: u32) -> i32 {
    -1
}

/// Grows the function table (linked with `--growable-table`, see
/// `build.rs`) step by step; a refused step aborts the instance, as a failed
/// allocation does.
pub fn grow_table(args: GrowTable, _: &Context) -> Result<Done, ToolError> {
    let mut grown = 0;
    while grown < args.elements {
        let step = (args.elements - grown).min(10_000);
        if table_grow(step) < 0 {
            panic!("table growth refused after {grown} elements");
        }
        grown += step;
    }
    Ok(Done { done: true })
}

#[derive(Deserialize, JsonSchema)]
pub struct Bytes {
    /// Length of the returned string.
    pub bytes: u32,
}

#[derive(Serialize, JsonSchema)]
pub struct Blob {
    pub data: String,
}

pub fn big_output(args: Bytes, _: &Context) -> Result<Blob, ToolError> {
    Ok(Blob {
        data: "x".repeat(args.bytes as usize),
    })
}

#[derive(Deserialize, JsonSchema)]
pub struct Flood {
    pub lines: u32,
    pub size: u32,
}

pub fn log_flood(args: Flood, _: &Context) -> Result<Done, ToolError> {
    let line = "z".repeat(args.size as usize);
    for _ in 0..args.lines {
        airlock_sdk::log::info(&line);
    }
    Ok(Done { done: true })
}

/// Declares `count: u32` in its schema but serializes a string.
#[derive(JsonSchema)]
pub struct Liar {
    pub count: u32,
}

impl Serialize for Liar {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("count", "not a number")?;
        map.end()
    }
}

pub fn lie(_: Nothing, _: &Context) -> Result<Liar, ToolError> {
    Ok(Liar { count: 0 })
}

#[derive(Deserialize, JsonSchema)]
pub struct Depth {
    pub depth: u64,
}

#[inline(never)]
fn descend(n: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(n % 256) as usize] = n as u8;
    if n == 0 {
        return std::hint::black_box(pad[0]) as u64;
    }
    descend(n - 1, std::hint::black_box(pad)) + 1
}

/// Return `depth` arrays nested in one another (`[[[]]]` for 3).
pub fn nest(args: Depth, _: &Context) -> Result<airlock_sdk::serde_json::Value, ToolError> {
    let mut value = airlock_sdk::serde_json::Value::Array(Vec::new());
    for _ in 1..args.depth {
        value = airlock_sdk::serde_json::Value::Array(vec![value]);
    }
    Ok(value)
}

/// Recurse `depth` levels with a 256-byte frame (overflows the stack when deep).
pub fn recurse(args: Depth, _: &Context) -> Result<Done, ToolError> {
    let mut pad = [0u8; 256];
    Ok(Done {
        done: descend(args.depth, &mut pad) > 0,
    })
}

/// Log forever: every iteration is a host call.
pub fn log_loop(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    let mut i: u64 = 0;
    loop {
        airlock_sdk::log::info(format!("line {i}"));
        i = i.wrapping_add(1);
    }
}

#[derive(Serialize, JsonSchema)]
pub struct Seconds {
    pub seconds: u64,
}

/// Reads the wall clock (baseline `wasi:clocks/wall-clock`).
pub fn now(_: Nothing, _: &Context) -> Result<Seconds, ToolError> {
    // Straight to wasi:clocks/wall-clock: std's SystemTime also pulls in
    // the monotonic clock, which this fixture must not import.
    #[cfg(target_arch = "wasm32")]
    let seconds = wasi::clocks::wall_clock::now().seconds;
    #[cfg(not(target_arch = "wasm32"))]
    let seconds = 0;
    Ok(Seconds { seconds })
}

#[derive(Deserialize, JsonSchema)]
pub struct FileTimesArg {
    /// Guest path of a preopened directory (e.g. `/data`).
    pub preopen: String,
    /// A file it holds (created when missing).
    pub name: String,
}

#[derive(Serialize, JsonSchema)]
pub struct FileTimes {
    /// The timestamps `stat-at` gives (access, modification, status
    /// change), in seconds; absent when it gives none.
    pub stat_at: Vec<Option<u64>>,
    /// The same of `stat` on an open descriptor of the file.
    pub stat: Vec<Option<u64>>,
}

/// Reads a file's timestamps (`descriptor.stat-at` and `descriptor.stat`):
/// a file written now says what time it is, clock or no clock.
pub fn file_times(args: FileTimesArg, _: &Context) -> Result<FileTimes, ToolError> {
    #[cfg(target_arch = "wasm32")]
    {
        use wasi::filesystem::preopens::get_directories;
        use wasi::filesystem::types::{DescriptorFlags, DescriptorStat, OpenFlags, PathFlags};
        let times = |s: DescriptorStat| {
            [
                s.data_access_timestamp,
                s.data_modification_timestamp,
                s.status_change_timestamp,
            ]
            .iter()
            .map(|t| t.map(|t| t.seconds))
            .collect::<Vec<_>>()
        };
        let failed = |what: &str, e: wasi::filesystem::types::ErrorCode| {
            ToolError::Failed(format!("{what}: {e:?}"))
        };
        let dirs = get_directories();
        let Some((dir, _)) = dirs.iter().find(|(_, path)| *path == args.preopen) else {
            return Err(ToolError::Failed(format!("no preopen {}", args.preopen)));
        };
        let file = dir
            .open_at(
                PathFlags::empty(),
                &args.name,
                OpenFlags::CREATE,
                DescriptorFlags::READ,
            )
            .map_err(|e| failed("open-at", e))?;
        let stat = file.stat().map_err(|e| failed("stat", e))?;
        let stat_at = dir
            .stat_at(PathFlags::empty(), &args.name)
            .map_err(|e| failed("stat-at", e))?;
        Ok(FileTimes {
            stat_at: times(stat_at),
            stat: times(stat),
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = args;
        Err(ToolError::Failed("only in the sandbox".into()))
    }
}

pub fn hidden(_: Nothing, _: &Context) -> Result<Done, ToolError> {
    Ok(Done { done: true })
}

plugin! {
    "echo" => echo: "Return the arguments.",
    "say" => say: "Log `text`, write it to stderr, and fail with it when `fail`.",
    "leak" => leak: "Return a token made from `seed`, and log it.",
    "fail" => fail: "Return a failed tool error.",
    "reject" => reject: "Return an invalid-input tool error.",
    "deny" => deny: "Return a denied tool error.",
    "panic" => panic: "Panic (traps the instance).",
    "spin" => spin: "Loop forever.",
    "grow" => grow: "Allocate and touch `mb` MiB.",
    "grow-table" => grow_table: "Grow the function table by `elements` elements.",
    "big-output" => big_output: "Return a string of `bytes` bytes.",
    "log-flood" => log_flood: "Log `lines` lines of `size` bytes.",
    "lie" => lie: "Return a result that does not match the declared output schema.",
    "recurse" => recurse: "Recurse `depth` levels.",
    "nest" => nest: "Return `depth` nested arrays.",
    "log-loop" => log_loop: "Call the log interface forever.",
    "now" => now: "Read the wall clock.",
    "file-times" => file_times: "Read a file's timestamps in a preopen.",
    "hidden" => hidden: "Exported but never declared in a manifest.",
}
