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

#[derive(Deserialize, JsonSchema)]
pub struct SwapArg {
    /// Guest path of a preopened directory (e.g. `/shared`).
    pub preopen: String,
    /// A directory directly inside it.
    pub name: String,
    /// What the symbolic link put in its place points to.
    pub target: String,
}

/// The symlink-swap attack, done with raw WASI calls through a preopen:
/// move `name` aside (`rename-at`, or `remove-directory-at` when that
/// fails) and put a symbolic link to `target` in its place (`symlink-at`).
pub fn swap_for_symlink(args: SwapArg, _: &Context) -> Result<Text, ToolError> {
    #[cfg(target_arch = "wasm32")]
    {
        use wasi::filesystem::preopens::get_directories;
        let dirs = get_directories();
        let Some((dir, _)) = dirs.iter().find(|(_, path)| *path == args.preopen) else {
            return Err(ToolError::Failed(format!("no preopen {}", args.preopen)));
        };
        let moved = format!("{}.moved", args.name);
        let aside = match dir.rename_at(&args.name, dir, &moved) {
            Ok(()) => "renamed".to_owned(),
            Err(e) => match dir.remove_directory_at(&args.name) {
                Ok(()) => "removed".to_owned(),
                Err(e2) => {
                    return Err(ToolError::Failed(format!(
                        "rename-at: {e:?}; remove-directory-at: {e2:?}"
                    )));
                }
            },
        };
        dir.symlink_at(&args.target, &args.name)
            .map_err(|e| ToolError::Failed(format!("symlink-at: {e:?}")))?;
        Ok(Text {
            text: format!("{aside}; linked {} -> {}", args.name, args.target),
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = args;
        Err(ToolError::Failed("only in the sandbox".into()))
    }
}

#[derive(Deserialize, JsonSchema)]
pub struct FillArg {
    /// Guest path of a preopened directory (e.g. `/data`).
    pub preopen: String,
    /// How: `std` (`std::fs::write`: open-at and an output stream),
    /// `write` (`descriptor.write`), `set-size` (grow a new file),
    /// `mkdir` (`create-directory-at`), `sparse` (one byte `bytes` into
    /// a new file), `reopen` (one file opened with `create` `count` times).
    pub how: String,
    /// Entries to make.
    pub count: u32,
    /// Bytes each (not for `mkdir`).
    pub bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Filled {
    /// Entries made before the first failure.
    pub made: u32,
    /// That failure.
    pub error: Option<String>,
}

/// Make `count` entries of `bytes` each in a preopen, until one fails.
pub fn fill(args: FillArg, _: &Context) -> Result<Filled, ToolError> {
    #[cfg(target_arch = "wasm32")]
    {
        use wasi::filesystem::preopens::get_directories;
        use wasi::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
        let dirs = get_directories();
        let Some((dir, _)) = dirs.iter().find(|(_, path)| *path == args.preopen) else {
            return Err(ToolError::Failed(format!("no preopen {}", args.preopen)));
        };
        let buffer = match args.how.as_str() {
            "std" | "write" => vec![b'x'; usize::try_from(args.bytes).unwrap_or(usize::MAX)],
            _ => Vec::new(),
        };
        let create = |name: &str| {
            dir.open_at(
                PathFlags::empty(),
                name,
                OpenFlags::CREATE,
                DescriptorFlags::READ | DescriptorFlags::WRITE,
            )
        };
        for i in 0..args.count {
            let name = format!("{}-{i}", args.how);
            let made: Result<(), String> = match args.how.as_str() {
                "std" => std::fs::write(format!("{}/{name}", args.preopen), &buffer)
                    .map_err(|e| format!("{e} ({:?})", e.raw_os_error())),
                "write" => create(&name)
                    .and_then(|file| file.write(&buffer, 0).map(|_| ()))
                    .map_err(|e| format!("{e:?}")),
                "set-size" => create(&name)
                    .and_then(|file| file.set_size(args.bytes))
                    .map_err(|e| format!("{e:?}")),
                "mkdir" => dir.create_directory_at(&name).map_err(|e| format!("{e:?}")),
                // One byte `bytes` past the start of a new file.
                "sparse" => create(&name)
                    .and_then(|file| file.write(b"x", args.bytes).map(|_| ()))
                    .map_err(|e| format!("{e:?}")),
                // The same file opened with `create`, again and again.
                "reopen" => create("reopened").map(drop).map_err(|e| format!("{e:?}")),
                other => return Err(ToolError::InvalidInput(format!("how: {other}"))),
            };
            if let Err(error) = made {
                return Ok(Filled {
                    made: i,
                    error: Some(error),
                });
            }
        }
        Ok(Filled {
            made: args.count,
            error: None,
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = args;
        Err(ToolError::Failed("only in the sandbox".into()))
    }
}

plugin! {
    "fill" => fill: "Make files or directories in a preopen until one fails.",
    "swap-for-symlink" => swap_for_symlink: "Replace a directory inside a preopen by a symbolic link (rename-at or remove-directory-at, then symlink-at).",
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
