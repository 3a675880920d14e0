//! `airlock plugin new | build | check` on the real binary, in temporary
//! directories outside the repository: bad input first, then the plugin
//! author's whole path for both languages.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// The binary under test: this build's, or `AIRLOCK_TEST_BIN`.
fn airlock() -> OsString {
    std::env::var_os("AIRLOCK_TEST_BIN").unwrap_or_else(|| AIRLOCK.into())
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The componentize-py `scripts/build-guests` installs (or
/// `AIRLOCK_COMPONENTIZE_PY`).
fn componentize_py() -> PathBuf {
    std::env::var_os("AIRLOCK_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target/python/venv/bin/componentize-py"))
}

/// Run airlock in `cwd` with `path` as PATH and a data directory in `cwd`'s
/// parent.
fn run_with_path(cwd: &Path, path: &OsString, args: &[&str]) -> Output {
    command(cwd, path).args(args).output().unwrap()
}

/// The command `run_with_path` runs, without its arguments.
fn command(cwd: &Path, path: &OsString) -> Command {
    let mut cmd = Command::new(airlock());
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .current_dir(cwd)
        .arg("--data-dir")
        .arg(cwd.parent().unwrap().join("data"));
    for name in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    // Rust projects share one target directory across runs (the standard
    // library and the SDK's dependencies are built once).
    cmd.env(
        "CARGO_TARGET_DIR",
        repository().join("target/plugin-projects"),
    );
    cmd.env("AIRLOCK_COMPONENTIZE_PY", componentize_py());
    cmd
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    run_with_path(cwd, &std::env::var_os("PATH").unwrap_or_default(), args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = run(cwd, args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{}\n{}",
        out.status,
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

/// A temporary directory outside the repository with a `work/` to run in.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    fs::create_dir(&work).unwrap();
    (root, work)
}

#[test]
fn plugin_new_refuses_an_invalid_name() {
    let (_root, work) = scratch();
    for bad in ["Demo", "1demo", "demo__tool", "demo/tool", "_x", "", "démo"] {
        let out = run(&work, &["plugin", "new", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid plugin name"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0, "nothing written");
}

#[test]
fn plugin_new_refuses_a_non_empty_directory() {
    let (_root, work) = scratch();
    let dir = work.join("demo-tool");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    let out = run(&work, &["plugin", "new", "demo-tool"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);
    // A file where the directory would go.
    fs::write(work.join("a-file"), "x").unwrap();
    let out = run(&work, &["plugin", "new", "demo-tool", "--dir", "a-file"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // An empty directory is fine.
    fs::create_dir(work.join("empty")).unwrap();
    ok(
        &work,
        &[
            "plugin",
            "new",
            "demo-tool",
            "--dir",
            "empty",
            "--lang",
            "python",
        ],
    );
    assert!(work.join("empty/plugin.toml").is_file());
    // `.` when it is empty: the working directory cannot be renamed over,
    // so the files are written into it.
    let here = work.join("here");
    fs::create_dir(&here).unwrap();
    let made = ok(
        &here,
        &[
            "plugin",
            "new",
            "demo-tool",
            "--dir",
            ".",
            "--lang",
            "python",
        ],
    );
    assert!(made.contains("created the Python plugin project"), "{made}");
    assert!(here.join("plugin.toml").is_file());
    assert!(here.join("vendor/airlock_sdk/__init__.py").is_file());
    // And not when it is not.
    let out = run(&here, &["plugin", "new", "other", "--dir", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    let partial: Vec<_> = fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn plugin_build_outside_a_project_is_a_usage_error() {
    let (_root, work) = scratch();
    let out = run(&work, &["plugin", "build"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a plugin project"),
        "{}",
        stderr(&out)
    );
    let out = run(&work, &["plugin", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn plugin_build_without_a_toolchain_says_what_to_install() {
    let (_root, work) = scratch();
    let empty = work.join("empty-path");
    fs::create_dir(&empty).unwrap();
    let path = OsString::from(&empty);

    ok(&work, &["plugin", "new", "rusty", "--dir", "rusty"]);
    let out = run_with_path(&work.join("rusty"), &path, &["plugin", "build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rustup target add wasm32-wasip2"),
        "{}",
        stderr(&out)
    );

    ok(
        &work,
        &[
            "plugin", "new", "snake", "--dir", "snake", "--lang", "python",
        ],
    );
    let mut cmd = Command::new(airlock());
    let out = cmd
        .env_clear()
        .env("PATH", &path)
        .current_dir(work.join("snake"))
        .arg("--data-dir")
        .arg(work.join("data"))
        .args(["plugin", "build"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("python3"), "{}", stderr(&out));
    let out = Command::new(airlock())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "AIRLOCK_COMPONENTIZE_PY",
            work.join("no-such-componentize-py"),
        )
        .current_dir(work.join("snake"))
        .arg("--data-dir")
        .arg(work.join("data"))
        .args(["plugin", "build"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pip install componentize-py==0.25.1"),
        "{}",
        stderr(&out)
    );
    assert!(!work.join("snake/target/airlock").exists());
}

#[test]
fn a_python_type_hint_without_a_schema_fails_the_build_naming_function_and_parameter() {
    let (_root, work) = scratch();
    ok(
        &work,
        &[
            "plugin", "new", "snake", "--dir", "snake", "--lang", "python",
        ],
    );
    let app = work.join("snake/app.py");
    let text = fs::read_to_string(&app).unwrap();
    fs::write(
        &app,
        text.replace(
            "def greet(name: Annotated[str, \"Who to greet.\"])",
            "def greet(name: Annotated[str, \"Who to greet.\"], when: set)",
        ),
    )
    .unwrap();
    let out = run(&work.join("snake"), &["plugin", "build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("function `greet`"), "{err}");
    assert!(err.contains("parameter `when`"), "{err}");
    assert!(err.contains("unsupported type hint `set`"), "{err}");
    assert!(!err.contains("Traceback"), "{err}");
}

/// The acceptance path: `plugin new demo-tool`, `build`, `check`, from a
/// directory outside the repository, then a call of the built plugin.
fn new_build_check(lang: &str) {
    let (root, work) = scratch();
    ok(&work, &["plugin", "new", "demo-tool", "--lang", lang]);
    let project = work.join("demo-tool");
    let built = if lang == "rust" {
        // The project's own `.cargo/config.toml` puts cargo's output
        // elsewhere (the shared directory, so the standard library is
        // built once), and a stale component lies where cargo would have
        // put it by default: the build takes what cargo says it built.
        let cargo_dir = project.join(".cargo");
        fs::create_dir(&cargo_dir).unwrap();
        let target = repository().join("target/plugin-projects");
        fs::write(
            cargo_dir.join("config.toml"),
            format!(
                "[build]\ntarget-dir = {}\n",
                toml::Value::String(target.to_str().unwrap().to_owned())
            ),
        )
        .unwrap();
        let stale = project.join("target/wasm32-wasip2/release");
        fs::create_dir_all(&stale).unwrap();
        fs::write(stale.join("demo_tool.wasm"), "stale: not this build's").unwrap();
        let out = command(&project, &std::env::var_os("PATH").unwrap_or_default())
            .env_remove("CARGO_TARGET_DIR")
            .args(["plugin", "build"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
        stdout(&out)
    } else {
        ok(&project, &["plugin", "build"])
    };
    assert!(built.contains("built demo-tool 0.1.0"), "{built}");
    let report = ok(&project, &["plugin", "check"]);
    assert!(
        report.contains("greet                read          exposed"),
        "{report}"
    );
    assert!(report.contains("findings: none"), "{report}");
    assert!(
        report.contains("ok: demo-tool 0.1.0 loads with 1 tool(s)"),
        "{report}"
    );

    // What was built is an installable plugin: call it.
    let plugins = root.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let installed = plugins.join("demo-tool");
    fs::create_dir(&installed).unwrap();
    for entry in fs::read_dir(project.join("target/airlock/demo-tool")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), installed.join(entry.file_name())).unwrap();
    }
    let plugins = plugins.to_str().unwrap();
    let out = ok(
        &work,
        &[
            "--plugins-dir",
            plugins,
            "call",
            "demo-tool/greet",
            "--args",
            r#"{"name":"Ada"}"#,
            "--json",
        ],
    );
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        value["output"],
        serde_json::json!({"greeting": "Hello, Ada!"}),
        "{out}"
    );
    let out = run(
        &work,
        &[
            "--plugins-dir",
            plugins,
            "call",
            "demo-tool/greet",
            "--args",
            r#"{"name":" "}"#,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert!(stdout(&out).contains("`name` is empty"), "{}", stdout(&out));
    // The cases travel with the build.
    let eval = ok(
        &work,
        &[
            "--plugins-dir",
            plugins,
            "eval",
            installed.to_str().unwrap(),
        ],
    );
    assert!(eval.contains("greet-ada"), "{eval}");
}

#[test]
fn a_rust_plugin_project_builds_and_checks_outside_the_repository() {
    new_build_check("rust");
}

#[test]
fn a_python_plugin_project_builds_and_checks_outside_the_repository() {
    new_build_check("python");
}
