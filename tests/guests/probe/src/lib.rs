//! Probes every capability: files, env, clocks, random, stdio. Each tool
//! reports what the guest could do, or the error it got, so tests can check
//! that exactly the grant is available.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
pub struct PathArg {
    pub path: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct WriteArg {
    pub path: String,
    pub content: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct NameArg {
    pub name: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct Nothing {}

#[derive(Deserialize, JsonSchema)]
pub struct TextArg {
    pub text: String,
}

#[derive(Serialize, JsonSchema)]
pub struct Text {
    pub text: String,
}

#[derive(Serialize, JsonSchema)]
pub struct Entries {
    pub entries: Vec<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct Value {
    pub value: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct Number {
    pub value: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Done {
    pub done: bool,
}

pub fn read_file(args: PathArg, _: &Context) -> Result<Text, ToolError> {
    Ok(Text {
        text: std::fs::read_to_string(&args.path)?,
    })
}

pub fn write_file(args: WriteArg, _: &Context) -> Result<Done, ToolError> {
    std::fs::write(&args.path, args.content)?;
    Ok(Done { done: true })
}

pub fn list_dir(args: PathArg, _: &Context) -> Result<Entries, ToolError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&args.path)? {
        entries.push(entry?.file_name().to_string_lossy().into_owned());
    }
    entries.sort();
    Ok(Entries { entries })
}

pub fn env(args: NameArg, _: &Context) -> Result<Value, ToolError> {
    Ok(Value {
        value: std::env::var(&args.name).ok(),
    })
}

pub fn env_names(_: Nothing, _: &Context) -> Result<Entries, ToolError> {
    Ok(Entries {
        entries: std::env::vars().map(|(k, _)| k).collect(),
    })
}

/// Uses the monotonic clock (`wasi:clocks/monotonic-clock`).
pub fn elapsed(_: Nothing, _: &Context) -> Result<Number, ToolError> {
    let start = std::time::Instant::now();
    Ok(Number {
        value: start.elapsed().as_nanos() as u64,
    })
}

/// Uses `wasi:random/random`.
pub fn random(_: Nothing, _: &Context) -> Result<Number, ToolError> {
    #[cfg(target_arch = "wasm32")]
    let value = wasi::random::random::get_random_u64();
    #[cfg(not(target_arch = "wasm32"))]
    let value = 4;
    Ok(Number { value })
}

#[derive(Deserialize, JsonSchema)]
pub struct OpenMany {
    pub path: String,
    pub n: u32,
}

/// Open `path` `n` times, holding every handle until the end.
pub fn open_many(args: OpenMany, _: &Context) -> Result<Number, ToolError> {
    let mut files = Vec::new();
    for _ in 0..args.n {
        files.push(std::fs::File::open(&args.path)?);
    }
    Ok(Number {
        value: files.len() as u64,
    })
}

pub fn print(args: TextArg, _: &Context) -> Result<Done, ToolError> {
    println!("out: {}", args.text);
    eprintln!("err: {}", args.text);
    Ok(Done { done: true })
}

plugin! {
    "read-file" => read_file: "Read a file.",
    "write-file" => write_file: "Write a file.",
    "list-dir" => list_dir: "List a directory.",
    "env" => env: "Read an environment variable.",
    "env-names" => env_names: "List visible environment variable names.",
    "elapsed" => elapsed: "Measure with the monotonic clock.",
    "random" => random: "Draw a random number.",
    "open-many" => open_many: "Hold `n` open handles to a file.",
    "print" => print: "Write to stdout and stderr.",
}
