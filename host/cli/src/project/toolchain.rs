//! Building a project's component: Rust with cargo for `wasm32-wasip2`,
//! Python with componentize-py.
//!
//! Rust: rustup's `wasm32-wasip2` target where it is installed; otherwise
//! the recipe `scripts/guest-cargo` uses on machines where rustup cannot
//! download targets (Debian's rustc-web with `-Zbuild-std`, WASI libc from
//! `wasi-libc`, the linker from the rustup toolchain); otherwise an error
//! saying what to install.
//!
//! Python: the vendored SDK's `python3 -m airlock_sdk componentize`: its
//! check first (natively), so a tool the SDK refuses gets a one-line error
//! naming the function and parameter; then componentize-py builds the
//! component against a world holding only the imports the manifest grants
//! (`log`, `workspace`), with its WASI imports stubbed: an interpreter's
//! runtime imports sockets, clocks and entropy that no plugin may have.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// The module a Python project's tools live in.
pub(super) const PYTHON_MODULE_FILE: &str = "app.py";
/// The componentize-py release the Python SDK is tested with.
pub(super) const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// Overrides the `componentize-py` found on `PATH`.
const COMPONENTIZE_PY_ENV: &str = "AIRLOCK_COMPONENTIZE_PY";
/// Overrides the `python3` found on `PATH`.
const PYTHON_ENV: &str = "AIRLOCK_PYTHON";
const TARGET: &str = "wasm32-wasip2";

/// Where `name` is on `PATH`, if it is.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Run `command`; its stdout, or an error with its stderr.
fn run(mut command: Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("{what} failed ({}):\n{}", output.status, stderr.trim_end());
    }
    Ok(output.stdout)
}

fn no_rust_toolchain() -> anyhow::Error {
    anyhow::anyhow!(
        "no {TARGET} toolchain: install the target with `rustup target add {TARGET}` \
         (on machines where rustup cannot download targets: \
         `apt-get install rustc-web cargo-web rust-web-src wasi-libc` beside rustup)"
    )
}

/// How to run cargo for the wasm target.
enum RustToolchain {
    /// rustup's `wasm32-wasip2` target.
    Rustup,
    /// The Debian recipe; the directory holding `wasm-component-ld`.
    BuildStd { linker_dir: PathBuf },
}

fn rust_toolchain() -> anyhow::Result<RustToolchain> {
    if on_path("cargo").is_none() || on_path("rustc").is_none() {
        return Err(no_rust_toolchain());
    }
    if on_path("rustup").is_some() {
        let mut list = Command::new("rustup");
        list.args(["target", "list", "--installed"]);
        if let Ok(out) = run(list, "rustup")
            && String::from_utf8_lossy(&out)
                .lines()
                .any(|l| l.trim() == TARGET)
        {
            return Ok(RustToolchain::Rustup);
        }
    }
    let debian = Path::new("/usr/bin/rustc").is_file()
        && Path::new("/usr/bin/cargo").is_file()
        && Path::new("/usr/lib/rustlib/src/rust/library/std").is_dir()
        && Path::new("/usr/lib/wasm32-wasi/libc.a").is_file();
    if !debian {
        return Err(no_rust_toolchain());
    }
    let mut sysroot = Command::new("rustc");
    sysroot.args(["--print", "sysroot"]);
    let sysroot = String::from_utf8_lossy(&run(sysroot, "rustc").map_err(|_| no_rust_toolchain())?)
        .trim()
        .to_owned();
    let mut version = Command::new("rustc");
    version.arg("-vV");
    let version = String::from_utf8_lossy(&run(version, "rustc").map_err(|_| no_rust_toolchain())?)
        .into_owned();
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or_else(no_rust_toolchain)?;
    let linker_dir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin");
    if !linker_dir.join("wasm-component-ld").is_file() || !linker_dir.join("rust-lld").is_file() {
        return Err(no_rust_toolchain());
    }
    Ok(RustToolchain::BuildStd { linker_dir })
}

/// Build the Rust project in `dir` for `wasm32-wasip2` (release); the
/// component's bytes.
pub(super) fn build_rust(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let toolchain = rust_toolchain()?;
    let mut command = match &toolchain {
        RustToolchain::Rustup => {
            let mut cargo = Command::new("cargo");
            cargo.arg("build");
            cargo
        }
        RustToolchain::BuildStd { linker_dir } => {
            let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .collect::<Vec<_>>();
            path.push(linker_dir.clone());
            let mut cargo = Command::new("/usr/bin/cargo");
            cargo
                .env("PATH", std::env::join_paths(path).context("PATH")?)
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTFLAGS", "-L /usr/lib/wasm32-wasi")
                .args(["build", "-Zbuild-std=std,panic_abort"]);
            cargo
        }
    };
    let manifest = dir.join("Cargo.toml");
    command
        .args(["--release", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        // cargo names what it built on stdout (its diagnostics, rendered,
        // still reach the author on stderr): the component is read from
        // there, never from a guessed path, which `build.target-dir` in a
        // `.cargo/config.toml` or `CARGO_TARGET_DIR` would make a stale
        // file's.
        .arg("--message-format=json-render-diagnostics")
        .current_dir(dir)
        .stdout(Stdio::piped());
    let mut child = command.spawn().context("cannot run cargo")?;
    let stdout = child.stdout.take().context("cargo's standard output")?;
    let built = built_components(BufReader::new(stdout), &manifest);
    let status = child.wait().context("cannot run cargo")?;
    if !status.success() {
        anyhow::bail!("cargo build for {TARGET} failed ({status})");
    }
    let wasm = match built?.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!(
            "cargo built no component for {} (is the crate a `cdylib`?)",
            manifest.display()
        ),
        many => anyhow::bail!(
            "cargo built {} components for {}, expected one: {}",
            many.len(),
            manifest.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))
}

/// The `.wasm` files cargo reports having built (or found fresh) for the
/// `cdylib` of the package whose manifest is `manifest`, from its JSON
/// messages. Reads the stream to its end, so cargo never blocks on a full
/// pipe.
fn built_components(stdout: impl BufRead, manifest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = std::fs::canonicalize(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut built = Vec::new();
    let mut unreadable = None;
    for message in cargo_metadata::Message::parse_stream(stdout) {
        match message {
            Ok(cargo_metadata::Message::CompilerArtifact(artifact))
                if artifact.target.is_cdylib()
                    && std::fs::canonicalize(&artifact.manifest_path)
                        .is_ok_and(|p| p == manifest) =>
            {
                built.extend(
                    artifact
                        .filenames
                        .into_iter()
                        .filter(|f| f.extension() == Some("wasm"))
                        .map(PathBuf::from),
                );
            }
            Ok(_) => {}
            Err(e) => unreadable = Some(e),
        }
    }
    match unreadable {
        Some(e) => Err(anyhow::Error::new(e).context("cannot read cargo's messages")),
        None => Ok(built),
    }
}

/// The Python interpreter to run the SDK's check with.
fn python() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(PYTHON_ENV) {
        return Ok(PathBuf::from(path));
    }
    on_path("python3").context("no python3 on PATH: install Python 3.11 or newer")
}

/// The componentize-py to build with.
fn componentize_py() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(COMPONENTIZE_PY_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            anyhow::bail!(
                "{COMPONENTIZE_PY_ENV} names {}, which is not a file: install componentize-py \
                 with `pip install {COMPONENTIZE_PY}` and point {COMPONENTIZE_PY_ENV} at it",
                path.display()
            );
        }
        return Ok(path);
    }
    on_path("componentize-py").with_context(|| {
        format!(
            "componentize-py is not installed: `pip install {COMPONENTIZE_PY}` (or point \
             {COMPONENTIZE_PY_ENV} at it)"
        )
    })
}

/// Build the Python project in `dir`; the component's bytes. The SDK's
/// own `componentize` command does the work (the one implementation
/// `scripts/build-guests` uses too): the SDK's check, the world cut down
/// to the manifest's grants, componentize-py with WASI stubbed.
pub(super) fn build_python(dir: &Path, component_name: &str) -> anyhow::Result<Vec<u8>> {
    let python = python()?;
    let componentize = componentize_py()?;
    let vendor = dir.join("vendor");
    if !vendor.join("airlock_sdk/__init__.py").is_file() {
        anyhow::bail!(
            "{} has no vendored SDK (vendor/airlock_sdk): create the project with \
             `airlock plugin new --lang python`",
            dir.display()
        );
    }
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let wit = scratch.path().join("wit");
    std::fs::create_dir(&wit).context("cannot write the build's WIT")?;
    std::fs::write(wit.join("plugin.wit"), super::templates::WIT)
        .context("cannot write the build's WIT")?;
    let out = scratch.path().join(component_name);
    let mut build = Command::new(&python);
    build
        .args(["-B", "-m", "airlock_sdk", "componentize", "--wit"])
        .arg(&wit)
        .arg("--out")
        .arg(&out)
        .arg("--componentize-py")
        .arg(&componentize)
        .arg(dir)
        .current_dir(dir)
        .env("PYTHONPATH", &vendor)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = build
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("{PYTHON_MODULE_FILE}: {}", stderr.trim_end());
    }
    std::fs::read(&out).with_context(|| format!("the Python build wrote no {}", out.display()))
}
