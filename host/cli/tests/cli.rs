//! The real `airlock` binary against the real example plugins.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output, Stdio};

use airlock_tests::{LOUD_LIST, MISBEHAVE, PLUGINS_DIR, PROBE, install, read, sha256_hex};
use serde_json::Value;

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// The binary under test: this build's, or `AIRLOCK_TEST_BIN` (a copy
/// taken while a build directory is shared with other checkouts).
fn airlock() -> std::ffi::OsString {
    std::env::var_os("AIRLOCK_TEST_BIN").unwrap_or_else(|| AIRLOCK.into())
}

struct Env {
    data: tempfile::TempDir,
    cache: std::path::PathBuf,
}

impl Env {
    /// A fresh data directory with an empty compiled-component cache.
    fn fresh() -> Env {
        let data = tempfile::tempdir().unwrap();
        let cache = data.path().join("cache");
        Env { data, cache }
    }

    /// A fresh data directory (audit log, workspace) with a compiled-component
    /// cache shared by the tests that do not look at the cache, so each
    /// component is compiled once per test run.
    fn new() -> Env {
        static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let cache = CACHE
            .get_or_init(|| tempfile::tempdir().unwrap())
            .path()
            .to_owned();
        Env {
            data: tempfile::tempdir().unwrap(),
            cache,
        }
    }

    fn cmd(&self, plugins: &Path) -> Command {
        let mut cmd = Command::new(airlock());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--plugins-dir")
            .arg(plugins)
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--cache-dir")
            .arg(&self.cache);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(Path::new(PLUGINS_DIR))
            .args(args)
            .output()
            .unwrap()
    }

    /// [`run`](Self::run) with a group-commit window of a minute: every
    /// `read` call of a plugin that can only read is done within it, so it
    /// is one audit record however slow the machine (the default 50 ms
    /// window would make the records' shape depend on the machine).
    fn run_held(&self, args: &[&str]) -> Output {
        let config = self.data.path().join("held.toml");
        std::fs::write(&config, "[audit]\ngroup_commit_ms = 60000\n").unwrap();
        self.cmd(Path::new(PLUGINS_DIR))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    }
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn tools_list_json_has_every_example_tool_with_its_schema() {
    let env = Env::new();
    let out = env.run(&["tools", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tools = json(&out)["tools"].as_array().unwrap().clone();
    let ids: Vec<_> = tools.iter().map(|t| t["id"].as_str().unwrap()).collect();
    for &(expected, _) in airlock_tests::EXAMPLE_TOOLS {
        assert!(ids.contains(&expected), "{expected} missing: {ids:?}");
    }
    for tool in &tools {
        assert_eq!(tool["input_schema"]["type"], "object", "{tool}");
        let id = tool["id"].as_str().unwrap();
        let expected = airlock_tests::EXAMPLE_TOOLS
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, risk)| *risk);
        assert_eq!(tool["risk"].as_str(), expected, "{id}");
    }
}

#[test]
fn tools_list_human_output() {
    let out = Env::new().run(&["tools", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("text/slugify") && l.contains("read")),
        "{text}"
    );
}

/// A plugin's tool description is its own text: control sequences in it
/// (clear the line, return, retitle the terminal, then a fake row) are
/// printed escaped, never obeyed.
#[test]
fn tools_list_shows_a_plugins_control_sequences_escaped() {
    let root = plugins_root(
        "loud",
        &read(LOUD_LIST),
        "[[tools]]\nname = \"shout\"\nrisk = \"read\"\n",
    );
    let out = Env::new()
        .cmd(root.path())
        .args(["tools", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(['\u{1b}', '\r', '\u{7}']), "{text:?}");
    let line = text.lines().find(|l| l.starts_with("loud/shout")).unwrap();
    assert!(line.contains("harmless\\u{1b}[2K"), "{line:?}");
}

#[test]
fn second_run_uses_the_compiled_cache() {
    let env = Env::fresh();
    let first = json(&env.run(&["plugins", "list", "--json"]));
    let second = json(&env.run(&["plugins", "list", "--json"]));
    for plugin in first["plugins"].as_array().unwrap() {
        assert_eq!(plugin["cache"], "miss", "{plugin}");
    }
    for plugin in second["plugins"].as_array().unwrap() {
        assert_eq!(plugin["cache"], "hit", "{plugin}");
    }
    // `tools list` on the same plugins directory loads compiled code from the
    // cache too, and says so in its log.
    let out = env.run(&["-v", "tools", "list"]);
    assert!(out.status.success());
    let log = stderr(&out);
    let loaded = log.matches("component ready").count();
    assert!(loaded >= 3, "{log}");
    assert_eq!(log.matches("cache=Hit").count(), loaded, "{log}");
    assert!(!log.contains("cache=Miss"), "{log}");
}

#[test]
fn call_returns_the_real_result() {
    let out = Env::new().run(&[
        "call",
        "text/slugify",
        "--args",
        r#"{"text":"Hello, CLI World"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["slug"], "hello-cli-world");
}

#[test]
fn call_json_reports_metadata() {
    let out = Env::new().run(&[
        "call",
        "json/query",
        "--json",
        "--args",
        r#"{"document":{"a":[1,2]},"pointer":"/a/1"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["output"]["value"], 2);
    assert!(v["call_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
}

#[test]
fn call_reads_args_from_a_file_and_stdin() {
    let env = Env::new();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"text":"From A File"}"#).unwrap();
    let out = env.run(&[
        "call",
        "text/slugify",
        "--args-file",
        file.path().to_str().unwrap(),
    ]);
    assert_eq!(json(&out)["slug"], "from-a-file", "{}", stderr(&out));

    let mut child = env
        .cmd(Path::new(PLUGINS_DIR))
        .args(["call", "text/slugify", "--args-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"text":"From Stdin"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(json(&out)["slug"], "from-stdin", "{}", stderr(&out));
}

#[test]
fn arguments_over_the_limit_are_refused_before_they_are_held() {
    let env = Env::new();
    let config = env.data.path().join("airlock.toml");
    std::fs::write(&config, "max_argument_bytes = 64\n").unwrap();
    let run = |args: &[&str], stdin: Stdio| {
        env.cmd(Path::new(PLUGINS_DIR))
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(stdin)
            .output()
            .unwrap()
    };
    // Exactly at the limit is a call.
    let file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(r#"{{"text":"{}"}}"#, "a".repeat(64 - 11));
    assert_eq!(text.len(), 64);
    std::fs::write(file.path(), &text).unwrap();
    let path = file.path().to_str().unwrap();
    let out = run(
        &["call", "text/slugify", "--args-file", path],
        Stdio::null(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // One byte over, from a file; an endless file; endless stdin: each
    // refused as a usage error naming the limit, having read no more than
    // it (an endless input would otherwise never end).
    std::fs::write(file.path(), format!("{text} ")).unwrap();
    let zero = std::fs::File::open("/dev/zero").unwrap();
    for (args, stdin) in [
        (
            vec!["call", "text/slugify", "--args-file", path],
            Stdio::null(),
        ),
        (
            vec!["call", "text/slugify", "--args-file", "/dev/zero"],
            Stdio::null(),
        ),
        (
            vec!["call", "text/slugify", "--args-file", "-"],
            Stdio::from(zero),
        ),
    ] {
        let out = run(&args, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("over max_argument_bytes (64 bytes); nothing was called"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Not UTF-8: named as such.
    std::fs::write(file.path(), b"{\"text\":\"\xff\"}").unwrap();
    let out = run(
        &["call", "text/slugify", "--args-file", path],
        Stdio::null(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("are not UTF-8"), "{}", stderr(&out));
}

#[test]
fn refused_calls_exit_3_and_name_every_failing_path() {
    let env = Env::new();
    let out = env.run(&[
        "call",
        "json/query",
        "--args",
        r#"{"document":1,"pointer":5,"bogus":1}"#,
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("/pointer") && err.contains("bogus"), "{err}");

    let out = env.run(&[
        "call",
        "json/query",
        "--json",
        "--args",
        r#"{"document":1,"pointer":5}"#,
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "arguments_invalid");
    assert_eq!(v["error"]["class"], "refused");
    assert_eq!(v["error"]["violations"][0]["path"], "/pointer");

    for (args, kind) in [
        (vec!["call", "text/nope", "--json"], "unknown_tool"),
        (vec!["call", "nope/x", "--json"], "unknown_plugin"),
        (
            vec!["call", "text/stats", "--json", "--args", "not json"],
            "arguments_not_json",
        ),
        (
            vec!["call", "text/stats", "--json", "--args", "[1,2]"],
            "arguments_not_object",
        ),
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert_eq!(json(&out)["error"]["kind"], kind, "{args:?}");
    }
}

#[test]
fn tool_errors_exit_4() {
    let out = Env::new().run(&[
        "call",
        "text/regex-extract",
        "--json",
        "--args",
        r#"{"pattern":"(","text":"x"}"#,
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(json(&out)["error"]["kind"], "tool_error");
}

#[test]
fn traps_exit_5() {
    let root = plugins_root(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"panic\"\nrisk = \"read\"\n",
    );
    let env = Env::new();
    let out = env
        .cmd(root.path())
        .args(["call", "misbehave/panic", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(json(&out)["error"]["kind"], "guest_trap");
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    for args in [
        vec![
            "call",
            "text/stats",
            "--args",
            "{}",
            "--args-file",
            "x.json",
        ],
        vec![
            "call",
            "text/stats",
            "--args-file",
            "/definitely/not/here.json",
        ],
        vec!["call"],
        vec!["frobnicate"],
        vec!["tools", "list", "--yaml"],
        // About a listener that is not there (stdio): said, not ignored.
        vec!["serve", "--behind-proxy"],
        vec!["serve", "--allow-remote"],
        // Over HTTP each caller's token names its principal.
        vec!["serve", "--http", "--principal", "ops"],
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn host_errors_exit_1() {
    let env = Env::new();
    let out = env
        .cmd(Path::new("/definitely/not/a/plugins/dir"))
        .args(["tools", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "plugin_dir = \"typo\"\n").unwrap();
    let out = env.run(&["--config", config.path().to_str().unwrap(), "tools", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown field `plugin_dir`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn broken_plugins_are_reported_but_do_not_hide_good_ones() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("broken")).unwrap();
    std::fs::write(
        root.path().join("broken/plugin.toml"),
        "[plugin]\nname = 3\n",
    )
    .unwrap();
    let text = root.path().join("text");
    std::fs::create_dir(&text).unwrap();
    for entry in std::fs::read_dir(Path::new(PLUGINS_DIR).join("text")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), text.join(entry.file_name())).unwrap();
    }
    let env = Env::new();
    let out = env
        .cmd(root.path())
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["plugins"][0]["name"], "text");
    assert_eq!(v["failed"][0]["error"]["kind"], "manifest_invalid");

    let out = env
        .cmd(root.path())
        .args(["call", "text/slugify", "--args", r#"{"text":"ok"}"#])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(stderr(&out).contains("not loaded"), "{}", stderr(&out));
}

/// The demo is the product's tour: its steps (not their timings, ids,
/// digests or paths) are snapshot-tested, and it passes again on the same
/// data directory.
#[test]
fn demo_runs_the_real_pipeline() {
    let env = Env::new();
    let out = env.run_held(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let text = text
        .replace(PLUGINS_DIR, "[PLUGINS]")
        .replace(&env.data.path().display().to_string(), "[DATA]");
    insta::with_settings!({filters => vec![
        (r"sha256:[0-9a-f]{16}…", "sha256:[DIGEST]…"),
        (r"compiled code: \w+", "compiled code: [CACHE]"),
        (r"\(\d+ µs, \d+ fuel\)", "([TIME] µs, [FUEL] fuel)"),
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[UUID]"),
        (r"(acct|refund)-[0-9a-f]{8}", "$1-[RUN]"),
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "[TIME]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"retry in \d+ ms", "retry in [MS] ms"),
        (r"\[redacted:[0-9a-f]+\]", "[redacted:[KEYED]]"),
        (r"\d+ signed checkpoints?", "[N] signed checkpoint(s)"),
        (r"ed25519:[A-Za-z0-9+/=]{44}", "ed25519:[KEY]"),
    ]}, {
        insta::assert_snapshot!("demo", text);
    });

    // Idempotent: a second run on the same data passes too.
    let again = env.run(&["demo"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{text}\n{}", stderr(&again));
    assert!(text.contains("All 33 steps behaved as expected."), "{text}");
}

#[test]
fn a_plugin_denied_a_capability_exits_6_naming_the_interface() {
    // misbehave imports airlock:plugin/log; this manifest does not grant it.
    let root = plugins_root(
        "misbehave",
        &read(MISBEHAVE),
        "[[tools]]\nname = \"echo\"\n",
    );
    let out = Env::new()
        .cmd(root.path())
        .args(["call", "misbehave/echo", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "capability_not_granted");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("airlock:plugin/log") && message.contains("capabilities.log"),
        "{message}"
    );
}

/// Install `component` with `manifest_rest` into a fresh plugins directory as
/// plugin `name`; returns the plugins directory.
fn plugins_root(name: &str, component: &[u8], manifest_rest: &str) -> tempfile::TempDir {
    let plugin = install(name, component, manifest_rest);
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(name);
    std::fs::create_dir(&dest).unwrap();
    for f in ["plugin.toml", "component.wasm"] {
        std::fs::copy(plugin.path().join(f), dest.join(f)).unwrap();
    }
    root
}

fn inspect_snapshot(plugins: &Path, plugin: &str) -> (Option<i32>, String) {
    let out = Env::new()
        .cmd(plugins)
        .args(["inspect", plugin])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    (
        out.status.code(),
        text.replace(&plugins.display().to_string(), "[PLUGINS]"),
    )
}

macro_rules! assert_report {
    ($name:expr, $report:expr) => {
        insta::with_settings!({filters => vec![
            (r"[0-9a-f]{64}", "[SHA256]"),
            (r"/[^ ]*/\.tmp[A-Za-z0-9]+", "[TMP]"),
        ]}, {
            insta::assert_snapshot!($name, $report);
        });
    };
}

#[test]
fn inspect_example_plugins() {
    for plugin in ["text", "json", "files", "fetch"] {
        let (code, report) = inspect_snapshot(Path::new(PLUGINS_DIR), plugin);
        assert_eq!(code, Some(0), "{report}");
        assert_report!(format!("inspect_{plugin}"), report);
    }
}

#[test]
fn inspect_flags_over_privilege_as_warnings() {
    let json_wasm = read(&format!("{PLUGINS_DIR}/json/json.wasm"));
    let tools = "[[tools]]\nname = \"query\"\nrisk = \"read\"\n";
    let root = plugins_root(
        "json",
        &json_wasm,
        &format!("[capabilities]\nlog = true\nenv = [\"API_TOKEN\"]\n\n{tools}"),
    );
    let (code, report) = inspect_snapshot(root.path(), "json");
    assert_eq!(code, Some(0), "warnings do not fail: {report}");
    assert!(
        report.contains("warning: `capabilities.log` is granted but the component never uses it"),
        "{report}"
    );
    assert!(
        report.contains("hidden (exported, not declared)"),
        "{report}"
    );
    assert_report!("inspect_over_privileged", report);
}

/// A read-write `files` grant shows the write budget each call gets.
#[test]
fn inspect_shows_the_write_budget_of_a_read_write_grant() {
    let wasm = read(&format!("{PLUGINS_DIR}/files/files.wasm"));
    let root = plugins_root(
        "files",
        &wasm,
        "[capabilities]\nfiles = [{ host = \"data\", guest = \"/docs\", access = \"read-write\" }]\n\n\
         [[tools]]\nname = \"list\"\nrisk = \"read\"\n",
    );
    std::fs::create_dir(root.path().join("files/data")).unwrap();
    let (code, report) = inspect_snapshot(root.path(), "files");
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("files write budget per call (operator policy files_*)"),
        "{report}"
    );
    assert!(
        report.contains("  max_write_kb              65536  default"),
        "{report}"
    );
    assert!(
        report.contains("  max_created                1000  default"),
        "{report}"
    );
}

#[test]
fn inspect_refuses_a_component_that_is_not_a_regular_file() {
    // `inspect` is run on plugins not yet trusted: a component that is a
    // device or a FIFO is refused as the loader refuses it, not read until
    // memory runs out or forever.
    let json_wasm = read(&format!("{PLUGINS_DIR}/json/json.wasm"));
    let tools = "[[tools]]\nname = \"query\"\nrisk = \"read\"\n";
    let root = plugins_root("json", &json_wasm, tools);
    let component = root.path().join("json").join("component.wasm");
    std::fs::remove_file(&component).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &component).unwrap();
    let out = Env::new()
        .cmd(root.path())
        .args(["inspect", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[test]
fn inspect_never_compiles_a_component_whose_digest_fails() {
    // A component that is not the one its manifest pins is untrusted
    // bytes: `inspect` lists its imports and exports from the binary, and
    // hands it to the compiler only when nothing stops it from loading.
    let json_wasm = read(&format!("{PLUGINS_DIR}/json/json.wasm"));
    let tools = "[[tools]]\nname = \"query\"\nrisk = \"read\"\n";
    let root = plugins_root("json", &json_wasm, tools);
    let compiled = |env: &Env| std::fs::read_dir(&env.cache).map_or(0, |entries| entries.count());
    // Control: as pinned, it is compiled (into the cache).
    let env = Env::fresh();
    let out = env
        .cmd(root.path())
        .args(["inspect", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        compiled(&env) > 0,
        "the cache is where compiled components go"
    );

    let manifest = root.path().join("json").join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let pinned = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_owned();
    std::fs::write(&manifest, text.replace(&pinned, &"0".repeat(64))).unwrap();
    let env = Env::fresh();
    let out = env
        .cmd(root.path())
        .args(["inspect", "json", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let findings = v["findings"].to_string();
    assert!(
        findings.contains("but the manifest pins 0000"),
        "{findings}"
    );
    // Still read from the binary: what it imports and exports.
    let names = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.get("interface").unwrap_or(i).as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        names("imports").iter().any(|i| i.starts_with("wasi:")),
        "{:?}",
        names("imports")
    );
    assert!(
        names("exports")
            .iter()
            .any(|e| e.starts_with("airlock:plugin/")),
        "{:?}",
        names("exports")
    );
    assert_eq!(compiled(&env), 0, "nothing compiled");

    // Bytes that are not a component are refused, not compiled.
    std::fs::write(
        root.path().join("json").join("component.wasm"),
        b"\0asm\x01\0\0\0",
    )
    .unwrap();
    let out = env
        .cmd(root.path())
        .args(["inspect", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a WebAssembly component"), "{stderr}");
    assert_eq!(compiled(&env), 0, "nothing compiled");
}

#[test]
fn an_error_quoting_a_manifest_is_shown_escaped() {
    // `inspect` is for plugins not yet trusted; its errors quote the
    // manifest (here the component's path), and reached the terminal raw:
    // a manifest could retitle the window or rewrite the lines above.
    let json_wasm = read(&format!("{PLUGINS_DIR}/json/json.wasm"));
    let tools = "[[tools]]\nname = \"query\"\nrisk = \"read\"\n";
    let root = plugins_root("json", &json_wasm, tools);
    let manifest = root.path().join("json").join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let forged = text.replace(
        "component = \"component.wasm\"",
        "component = \"\\u001b]0;pwned\\u0007\\u001b[2K\\rok.wasm\"",
    );
    assert_ne!(forged, text, "the manifest names its component: {text}");
    std::fs::write(&manifest, forged).unwrap();
    let out = Env::new()
        .cmd(root.path())
        .args(["inspect", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    assert!(
        stderr.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2K\\u{d}ok.wasm"),
        "{stderr}"
    );
}

#[test]
fn inspect_reports_imports_that_are_not_granted_and_exits_non_zero() {
    let tools = "[[tools]]\nname = \"env\"\n";
    let root = plugins_root("probe", &read(PROBE), tools);
    let (code, report) = inspect_snapshot(root.path(), "probe");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("error: imports wasi:clocks/monotonic-clock"),
        "{report}"
    );
    assert!(
        report.contains("error: imports wasi:random/random"),
        "{report}"
    );
    assert_report!("inspect_not_granted", report);

    let out = Env::new()
        .cmd(root.path())
        .args(["inspect", "probe", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let statuses: Vec<_> = v["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"not_granted") && statuses.contains(&"baseline"),
        "{statuses:?}"
    );
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "error")
    );
}

// ------------------------------------------------------------------- audit

#[test]
fn calls_are_audited_and_the_log_verifies_live_and_exported() {
    let env = Env::new();
    assert!(
        env.run_held(&["call", "text/slugify", "--args", r#"{"text":"A b"}"#])
            .status
            .success()
    );
    let refused = env.run(&["call", "text/nope", "--args", "{}"]);
    assert_eq!(refused.status.code(), Some(3));

    let tail = env.run(&["audit", "tail", "--json"]);
    assert!(tail.status.success(), "{}", stderr(&tail));
    let rows: Vec<Value> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<_> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    // The `read` call is one record, its outcome carrying its intent.
    assert_eq!(events, ["call_finished", "call_refused"]);
    assert_eq!(rows[0]["outcome"], "ok");
    assert_eq!(rows[0]["decision"], "admitted");
    assert_eq!(rows[1]["outcome"], "unknown_tool");

    let query = env.run(&["audit", "query", "--outcome", "unknown_tool", "--json"]);
    assert_eq!(String::from_utf8(query.stdout).unwrap().lines().count(), 1);
    let bad_time = env.run(&["audit", "query", "--since", "last tuesday"]);
    assert_eq!(bad_time.status.code(), Some(2));
    // A misspelt outcome is a usage error, not an empty answer; every kind
    // a call can end with is accepted.
    let misspelt = env.run(&["audit", "query", "--outcome", "unknown_tol"]);
    assert_eq!(misspelt.status.code(), Some(2));
    assert!(
        stderr(&misspelt)
            .contains("unknown outcome \"unknown_tol\": expected ok, unknown or an error kind"),
        "{}",
        stderr(&misspelt)
    );
    for outcome in ["ok", "unknown", "tool_paused", "ledger_unavailable"] {
        let query = env.run(&["audit", "query", "--outcome", outcome]);
        assert!(query.status.success(), "{outcome}: {}", stderr(&query));
    }
    // A count past what one query returns is a usage error, not the whole
    // log read into memory; none at all is one too.
    for limit in ["0", "100001", "18446744073709551615"] {
        let query = env.run(&["audit", "query", "--limit", limit]);
        assert_eq!(query.status.code(), Some(2), "{limit}");
        assert!(
            stderr(&query).contains("--limit must be 1 to 100000"),
            "{limit}: {}",
            stderr(&query)
        );
    }
    let tail = env.run(&["audit", "tail", "-n", "100001"]);
    assert_eq!(tail.status.code(), Some(2));
    assert!(
        stderr(&tail).contains("--lines must be 0 to 100000"),
        "{}",
        stderr(&tail)
    );
    let none = env.run(&["audit", "tail", "-n", "0"]);
    assert!(none.status.success(), "{}", stderr(&none));
    assert!(none.stdout.is_empty());

    let verify = env.run(&["audit", "verify", "--json"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert_eq!(json(&verify)["report"]["records"], 2);

    let outside = tempfile::tempdir().unwrap();
    let export = outside.path().join("export.jsonl");
    let export_arg = export.to_str().unwrap();
    // A file named as exports once named their temporary file is the
    // user's, and the export neither overwrites nor removes it.
    let theirs = outside.path().join("export.partial");
    std::fs::write(&theirs, "the user's").unwrap();
    assert!(
        env.run(&["audit", "export", "--out", export_arg])
            .status
            .success()
    );
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "the user's");
    let pubkey = env.data.path().join("audit/signing.pub");
    let pubkey_arg = pubkey.to_str().unwrap();
    let ok = env.run(&[
        "audit", "verify", "--export", export_arg, "--pubkey", pubkey_arg,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // What the file lacks fails too: a chain whose key the reviewer
    // brought (its origin renamed, or its lines removed, the file's own
    // key then checked it), and any chain at all. (Both passed.)
    let key_text = std::fs::read_to_string(&pubkey).unwrap();
    let elsewhere = format!("host-z={}", key_text.trim());
    let renamed = env.run(&[
        "audit", "verify", "--export", export_arg, "--pubkey", &elsewhere, "--json",
    ]);
    assert_eq!(renamed.status.code(), Some(7), "{}", stderr(&renamed));
    assert!(
        json(&renamed)["problems"][0]
            .as_str()
            .unwrap()
            .contains("no chain of origin host-z"),
        "{}",
        String::from_utf8_lossy(&renamed.stdout)
    );
    let empty = outside.path().join("empty.jsonl");
    std::fs::write(
        &empty,
        "{\"format\":\"airlock-audit-export\",\"version\":2,\"chains\":[]}\n",
    )
    .unwrap();
    let nothing = env.run(&[
        "audit",
        "verify",
        "--export",
        empty.to_str().unwrap(),
        "--pubkey",
        pubkey_arg,
    ]);
    assert_eq!(nothing.status.code(), Some(7), "{}", stderr(&nothing));
    assert!(
        String::from_utf8_lossy(&nothing.stdout).contains("holds no chain"),
        "{}",
        String::from_utf8_lossy(&nothing.stdout)
    );

    // Tamper with the export: record 2 now claims another principal.
    let text = std::fs::read_to_string(&export).unwrap();
    std::fs::write(
        &export,
        text.replacen("\"principal\":\"local\"", "\"principal\":\"root\"", 2),
    )
    .unwrap();
    let bad = env.run(&[
        "audit", "verify", "--export", export_arg, "--pubkey", pubkey_arg, "--json",
    ]);
    assert_eq!(bad.status.code(), Some(7), "{}", stderr(&bad));
    assert_eq!(json(&bad)["failure"]["seq"], 1);
    assert_eq!(json(&bad)["failure"]["problem"], "hash_mismatch");

    let missing_key = env.run(&["audit", "verify", "--export", export_arg]);
    assert_eq!(missing_key.status.code(), Some(2));
}

/// The data directory holds the audit log's redacted copies of arguments
/// and results, the workspace, the ledger and the keys: one any command
/// creates is owner-only, as `serve`'s always was, whatever the umask.
#[cfg(unix)]
#[test]
fn a_data_directory_any_command_creates_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let commands: [&[&str]; 3] = [
        &["call", "text/slugify", "--args", r#"{"text":"A b"}"#],
        &["mode", "read-only"],
        // The compiled-component cache's default place is the data
        // directory: the first command to create it may be a listing.
        &["plugins", "list"],
    ];
    for (n, args) in commands.into_iter().enumerate() {
        let data = env.data.path().join(format!("new-{n}/data"));
        let output = Command::new(airlock())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--plugins-dir")
            .arg(PLUGINS_DIR)
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert_eq!(mode(&data), 0o700, "{args:?}: {}", data.display());
        assert_eq!(mode(data.parent().unwrap()), 0o700, "{args:?}");
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{args:?}: {}", path.display());
            }
        }
    }
}

#[test]
fn workspace_commands_show_what_a_plugin_keeps() {
    let env = Env::new();
    let add = env.run(&[
        "call",
        "notes/add",
        "--session",
        "s1",
        "--args",
        r#"{"title":"T","body":"kept"}"#,
    ]);
    assert!(add.status.success(), "{}", stderr(&add));
    let ls = env.run(&["workspace", "ls", "notes", "--json"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    assert_eq!(json(&ls)["keys"][0]["key"], "note/t");
    assert_eq!(json(&ls)["keys"][0]["owner"]["scope"], "session");
    assert_eq!(json(&ls)["keys"][0]["owner"]["session"], "s1");
    let principal = json(&ls)["keys"][0]["owner"]["principal"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = env.run(&[
        "workspace",
        "get",
        "notes",
        "note/t",
        "--principal",
        &principal,
        "--session",
        "s1",
    ]);
    let value: Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(value["body"], "kept");
    let missing = env.run(&["workspace", "get", "notes", "note/t"]);
    assert_eq!(missing.status.code(), Some(2));
}

/// `--out` of every command that writes a file the user names: a file
/// that exists is replaced only with `--force`, and never one of the data
/// directory (a mistyped path replaced the audit log's signing key with an
/// export), however the path reaches it.
#[cfg(unix)]
#[test]
fn out_files_are_replaced_only_with_force_and_never_in_the_data_directory() {
    let env = Env::new();
    let add = env.run(&[
        "call",
        "notes/add",
        "--args",
        r#"{"title":"T","body":"kept"}"#,
    ]);
    assert!(add.status.success(), "{}", stderr(&add));
    let ls = env.run(&["workspace", "ls", "notes", "--json"]);
    let principal = json(&ls)["keys"][0]["owner"]["principal"]
        .as_str()
        .unwrap()
        .to_owned();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("out.jsonl");
    let out_arg = out.to_str().unwrap();
    let key = env.data.path().join("audit/signing.key");
    let original_key = std::fs::read(&key).unwrap();
    let link = elsewhere.path().join("link");
    std::os::unix::fs::symlink(env.data.path().join("audit"), &link).unwrap();
    let through_link = link.join("signing.key");
    let dotted = env.data.path().join("workspace/../audit/signing.key");
    let commands: [&[&str]; 3] = [
        &["audit", "export"],
        &["workspace", "export", "notes"],
        &[
            "workspace",
            "get",
            "notes",
            "note/t",
            "--principal",
            &principal,
            "--session",
            "",
        ],
    ];
    for command in commands {
        std::fs::write(&out, "mine").unwrap();
        let with = |out: &str, force: bool| {
            let mut args = command.to_vec();
            args.extend(["--out", out]);
            if force {
                args.push("--force");
            }
            env.run(&args)
        };
        let refused = with(out_arg, false);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{command:?}: {}",
            stderr(&refused)
        );
        assert!(
            stderr(&refused).contains("exists: pass --force"),
            "{}",
            stderr(&refused)
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
        let forced = with(out_arg, true);
        assert!(forced.status.success(), "{command:?}: {}", stderr(&forced));
        assert_ne!(std::fs::read_to_string(&out).unwrap(), "mine");
        // The host's private data, whatever the umask: its owner's only.
        // (It was 0666 less the umask: readable by every local user.)
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&out).unwrap().permissions()
            ) & 0o777,
            0o600,
            "{command:?}"
        );
        // A new file too: the host would read it as its own.
        let new_inside = env.data.path().join("mode.json");
        for path in [&key, &through_link, &dotted, &new_inside] {
            let refused = with(path.to_str().unwrap(), true);
            assert_eq!(
                refused.status.code(),
                Some(2),
                "{command:?} {}",
                path.display()
            );
            assert!(
                stderr(&refused).contains("is inside the data directory"),
                "{}",
                stderr(&refused)
            );
            assert_eq!(std::fs::read(&key).unwrap(), original_key);
        }
    }
}

#[test]
fn inspect_reports_http_imports_not_granted_and_origins_the_policy_refuses() {
    let fetch_wasm = read(&format!("{PLUGINS_DIR}/fetch/fetch.wasm"));
    let root = plugins_root(
        "fetch",
        &fetch_wasm,
        "[[tools]]\nname = \"get\"\nrisk = \"external\"\n",
    );
    let (code, report) = inspect_snapshot(root.path(), "fetch");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(
            "error: imports wasi:http/outgoing-handler@0.2.12 but is not granted it (set `capabilities.http = [\"https://api.example.com\"]`)"
        ),
        "{report}"
    );
    assert!(report.contains("not_granted  wasi:http/types"), "{report}");

    let config = tempfile::tempdir().unwrap();
    let config_file = config.path().join("airlock.toml");
    std::fs::write(
        &config_file,
        "[policy]\nhttp_allow = [\"https://api.example.com\"]\n",
    )
    .unwrap();
    let out = Env::new()
        .cmd(Path::new(PLUGINS_DIR))
        .arg("--config")
        .arg(&config_file)
        .args(["inspect", "fetch", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "error"
                && f["message"].as_str().unwrap().contains(
                    "origin `https://www.rfc-editor.org` is not in the operator's http_allow list"
                )),
        "{v}"
    );
    let http = v["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "capabilities.http")
        .unwrap();
    assert_eq!(http["declared"], true);
    assert_eq!(http["granted"], false);
}

#[test]
fn audit_verify_says_which_key_it_trusted() {
    let env = Env::new();
    assert!(
        env.run_held(&["call", "text/slugify", "--args", r#"{"text":"A b"}"#])
            .status
            .success()
    );
    let pubkey = env.data.path().join("audit/signing.pub");
    let key_hex = std::fs::read_to_string(&pubkey).unwrap().trim().to_owned();

    // No --pubkey: the key beside the log, named, with what that proves.
    let beside = env.run(&["audit", "verify"]);
    assert!(beside.status.success(), "{}", stderr(&beside));
    let out = String::from_utf8(beside.stdout).unwrap();
    assert!(
        out.contains(&format!("key: {key_hex} (stored beside the log: ")),
        "{out}"
    );
    assert!(
        out.contains("proves integrity only against someone who could not also replace that key"),
        "{out}"
    );
    assert!(out.contains("--pubkey"), "{out}");
    let beside_json = json(&env.run(&["audit", "verify", "--json"]));
    assert_eq!(beside_json["key"]["source"], "stored_beside_log");
    assert_eq!(beside_json["key"]["public_key"], key_hex.as_str());
    assert!(beside_json["key"]["warning"].is_string());

    // An out-of-band copy given with --pubkey: named as such, no warning.
    let copy = env.data.path().join("trusted.pub");
    std::fs::copy(&pubkey, &copy).unwrap();
    let given = env.run(&["audit", "verify", "--pubkey", copy.to_str().unwrap()]);
    assert!(given.status.success(), "{}", stderr(&given));
    let out = String::from_utf8(given.stdout).unwrap();
    assert!(
        out.contains(&format!("key: {key_hex} (given with --pubkey)")),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
}

#[test]
fn guest_text_with_terminal_escapes_is_shown_escaped_by_audit_commands() {
    let plugins = plugins_root(
        "misbehave",
        &read(MISBEHAVE),
        // `write`: intent and outcome, so the outcome is record 2.
        "[capabilities]\nlog = true\nstdio = true\n\n[[tools]]\nname = \"say\"\nrisk = \"write\"\n",
    );
    let env = Env::new();
    let attack = "irreversible\u{1b}[2K\rread";
    let args = serde_json::json!({"text": attack, "fail": true}).to_string();
    let failed = env
        .cmd(plugins.path())
        .args(["call", "misbehave/say", "--args", &args])
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(4), "{}", stderr(&failed));
    // `call` itself shows the guest's error, log lines and stderr escaped
    // (they reached the terminal raw: a plugin could forge a `[host]` line
    // or rewrite the screen).
    let said = serde_json::json!({"text": attack}).to_string();
    let succeeded = env
        .cmd(plugins.path())
        .args(["call", "misbehave/say", "--args", &said])
        .output()
        .unwrap();
    for output in [&failed, &succeeded] {
        let err = stderr(output);
        assert!(!err.contains('\u{1b}') && !err.contains('\r'), "{err:?}");
    }
    assert!(
        stderr(&failed).contains("\\u{1b}[2K"),
        "{}",
        stderr(&failed)
    );
    // A caller's tool reference with the same bytes, refused.
    let refused = env
        .cmd(plugins.path())
        .args(["call", "misbehave/\u{1b}[2K\rread", "--args", "{}"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));

    let escaped = "irreversible\\u{1b}[2K\\u{d}read";
    let show = env
        .cmd(plugins.path())
        .args(["audit", "show", "2"])
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", stderr(&show));
    let out = String::from_utf8(show.stdout).unwrap();
    assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
    assert!(out.contains(escaped), "the reason: {out}");
    // The guest's log line (and its stderr) in the outcome record: the
    // failed call keeps none, so look at the reason only; the escape of
    // the JSON-quoted copy of the arguments holds no raw control either.
    for command in [
        &["audit", "tail"][..],
        &["audit", "query", "--principal", "local"][..],
    ] {
        let listed = env.cmd(plugins.path()).args(command).output().unwrap();
        assert!(listed.status.success(), "{}", stderr(&listed));
        let out = String::from_utf8(listed.stdout).unwrap();
        assert!(
            !out.contains('\u{1b}') && !out.contains('\r'),
            "{command:?}: {out:?}"
        );
        assert!(
            out.contains("misbehave/\\u{1b}[2K\\u{d}read"),
            "{command:?}: {out}"
        );
    }
}

/// This machine's address on its outgoing interface (not loopback), if it
/// has one; no packet is sent.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn approver_token_is_never_sent_over_plain_http_to_another_address() {
    // A "server" listening on every interface, reached by a non-loopback
    // address: the token would travel in clear over the network.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let ip = non_loopback_ip().map_or_else(|| "192.0.2.10".to_owned(), |ip| ip.to_string());
    let env = Env::new();
    let url = format!("http://{ip}:{port}");
    for args in [
        vec!["approvals", "list", "--server", &url],
        vec!["approvals", "show", "apr-1", "--server", &url],
        vec![
            "approvals",
            "approve",
            "apr-1",
            "--reason",
            "ok",
            "--server",
            &url,
        ],
        vec![
            "approvals",
            "list",
            "--server",
            "http://approvals.example.com",
        ],
    ] {
        let out = env
            .cmd(Path::new(PLUGINS_DIR))
            .env("AIRLOCK_APPROVER_TOKEN", "approver-secret")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains("in clear") && message.contains("use https://"),
            "{args:?}: {message}"
        );
    }
    // Nothing ever connected.
    assert!(matches!(
        listener.accept(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    ));
}

#[test]
fn a_forged_reason_and_cut_arguments_cannot_mislead_the_approver() {
    // `echo` is irreversible here: every call waits for an approver.
    let root = plugins_root(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"echo\"\nrisk = \"irreversible\"\n",
    );
    let env = Env::new();
    let config = env.data.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[[policy.approvals.approvers]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n",
            sha256_hex(b"approver-secret")
        ),
    )
    .unwrap();
    let airlock = |args: &[&str]| {
        env.cmd(root.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    // The caller's reason erases the line and writes its own; the real
    // arguments hide past the audit copy's 4 KiB.
    let reason = "clock check\u{1b}[2K\r  arguments   {}\n  decided     by alice: fine";
    let padding = "x".repeat(5000);
    let args = format!(r#"{{"note": "{padding}", "then": "transfer everything"}}"#);
    let out = airlock(&[
        "call",
        "misbehave/echo",
        "--reason",
        reason,
        "--args",
        &args,
    ]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let list = airlock(&["approvals", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let show_id = String::from_utf8(list.stdout.clone()).unwrap();
    let id = show_id.split_whitespace().next().unwrap().to_owned();
    let show = airlock(&["approvals", "show", &id]);
    assert!(show.status.success(), "{}", stderr(&show));
    for out in [&list, &show] {
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        // Nothing a terminal would act on, and the forgery is visible.
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains(r"clock check\u{1b}[2K\u{d}  arguments   {}\u{a}  decided"),
            "{text}"
        );
        assert!(!text.contains("\n  decided     by alice"), "{text}");
    }
    let show = String::from_utf8(show.stdout).unwrap();
    let shown = json(&airlock(&["approvals", "show", &id, "--json"]));
    assert_eq!(shown["args_truncated"], true, "{shown}");
    assert_eq!(shown["caller_reason"], reason);
    let digest = shown["args_digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64);
    let mark = format!(
        "[arguments truncated at 4096 bytes — the approval binds the full arguments by digest sha256:{digest}]"
    );
    assert!(show.contains(&mark), "{show}");
    // What runs hides past the cut: approving it takes saying so.
    assert!(
        show.contains(
            "  unseen      the arguments were cut at the audit copy's size cap; approving it takes --unseen"
        ),
        "{show}"
    );
    let approve = |extra: &[&str]| {
        let mut args = vec![
            "approvals",
            "approve",
            &id,
            "--as",
            "alice",
            "--token",
            "approver-secret",
        ];
        args.extend_from_slice(extra);
        airlock(&args)
    };
    let refused = approve(&[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let told = stderr(&refused);
    assert!(
        told.contains("cut at the audit copy's size cap") && told.contains("(add --unseen)"),
        "{told}"
    );
    let still = json(&airlock(&["approvals", "show", &id, "--json"]));
    assert_eq!(still["state"], "pending", "{still}");
    let approved = approve(&["--unseen"]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert!(
        String::from_utf8_lossy(&approved.stdout).contains("approved"),
        "{}",
        String::from_utf8_lossy(&approved.stdout)
    );
}

#[test]
fn alerts_pause_and_resume_a_tool_on_the_data_directory() {
    let env = Env::new();
    let out = env.run(&[
        "alerts",
        "pause",
        "text/slugify",
        "--by",
        "ops-alice",
        "--reason",
        "investigating",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "paused text/slugify (recorded)\n"
    );
    let out = env.run(&[
        "call",
        "text/slugify",
        "--json",
        "--args",
        r#"{"text":"Hi"}"#,
    ]);
    assert_eq!(out.status.code(), Some(3), "refused: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "tool_paused");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ops-alice (investigating)"),
        "{v}"
    );
    // Other tools run.
    let out = env.run(&["call", "text/stats", "--args", r#"{"text":"Hi"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&env.run(&["alerts", "--json"]));
    assert_eq!(v["pauses"][0]["target"], "text/slugify");
    assert_eq!(v["pauses"][0]["by"], "ops-alice");
    assert_eq!(v["alerts"], serde_json::json!([]));
    let listed = String::from_utf8_lossy(&env.run(&["alerts"]).stdout).into_owned();
    assert!(listed.contains("paused    text/slugify"), "{listed}");

    let out = env.run(&["alerts", "resume", "text/slugify", "--reason", "fixed"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "resumed text/slugify (recorded)\n"
    );
    let out = env.run(&["alerts", "resume", "text/slugify"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "text/slugify was not paused: nothing to resume\n"
    );
    let out = env.run(&["call", "text/slugify", "--args", r#"{"text":"Hi"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Both on the record.
    let out = env.run(&["audit", "query", "--json"]);
    let records = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(records.contains("\"takeover\""), "{records}");
    assert!(records.contains("\"takeover_undone\""), "{records}");

    // A malformed target, and one naming nothing this host serves (a
    // typo during an incident would pause nothing), are usage errors, and
    // nothing is paused or recorded.
    let out = env.run(&["alerts", "pause", "a/b/c"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid pause target"),
        "{}",
        stderr(&out)
    );
    for (target, says) in [
        ("text/slugfy", "`text` has no such tool here (its tools: "),
        ("txet", "no plugin here is named `txet` (plugins: "),
        ("txet/slugify", "no plugin here is named `txet`"),
    ] {
        let out = env.run(&["alerts", "pause", target]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{target}: {}", stderr(&out));
    }
    assert_eq!(
        json(&env.run(&["alerts", "--json"]))["pauses"],
        serde_json::json!([])
    );
    // With --force it holds (for a tool other hosts serve, or will).
    let out = env.run(&["alerts", "pause", "txet/slugify", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        json(&env.run(&["alerts", "--json"]))["pauses"][0]["target"],
        "txet/slugify"
    );
}

#[test]
fn malformed_alert_rules_are_config_errors_naming_the_key() {
    let env = Env::new();
    let rule = "[[alerts.rules]]\nname = \"errors\"\nwindow = \"1m\"\n";
    for (rest, expected) in [
        (
            "metric = \"bogus\"\nthreshold = 1.0\n",
            "unknown variant `bogus`",
        ),
        (
            "metric = \"error_rate\"\nthreshold = 2.0\n",
            "alerts.rules[0].threshold",
        ),
        (
            "metric = \"error_rate\"\nthreshold = 0.5\nwebhooks = [\"ops\"]\n",
            "alerts.rules[0].webhooks[0]",
        ),
    ] {
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), format!("{rule}{rest}")).unwrap();
        let out = env.run(&["--config", config.path().to_str().unwrap(), "alerts"]);
        assert_eq!(out.status.code(), Some(1), "{rest}");
        assert!(stderr(&out).contains(expected), "{rest}: {}", stderr(&out));
    }
}

#[test]
fn readiness_exits_11_when_a_required_check_fails_and_the_operator_chooses_the_checks() {
    let env = Env::new();
    let out = env.run(&["readiness", "--json"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ready"], false);
    let plugins = v["plugins"].as_array().unwrap();
    assert!(plugins.len() >= 5, "{v}");
    let missing = plugins
        .iter()
        .flat_map(|p| p["missing_required"].as_array().unwrap())
        .next()
        .expect("some required check fails on the examples");
    assert!(missing["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(missing["fix"].as_str().is_some_and(|f| !f.is_empty()));
    let human = String::from_utf8_lossy(&env.run(&["readiness"]).stdout).into_owned();
    assert!(
        human.contains("NOT READY") && human.contains("fix: "),
        "{human}"
    );

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[readiness]\nrequired = []\n").unwrap();
    let lenient = ["--config", config.path().to_str().unwrap()];
    let out = env.run(&[&lenient[..], &["readiness", "text", "--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ready"], true);
    assert!(!v["plugins"][0]["warnings"].as_array().unwrap().is_empty());

    std::fs::write(config.path(), "[readiness]\nrequired = [\"bogus\"]\n").unwrap();
    let out = env.run(&[&lenient[..], &["readiness"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown variant `bogus`"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["readiness", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// A plugin that does not load is not ready, and a host with nothing to
/// serve is not either: a stale pin or an untrusted signature left the
/// plugin out of the checks, and `readiness` said ready (exit 0).
#[test]
fn readiness_counts_a_plugin_that_did_not_load_and_an_empty_host_as_not_ready() {
    let env = Env::new();
    let root = plugins_root(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"fail\"\nrisk = \"read\"\n",
    );
    let manifest = root.path().join("misbehave/plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n[bogus]\n")).unwrap();
    for args in [&["readiness"][..], &["readiness", "misbehave"][..]] {
        let out = env.cmd(root.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(11), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("misbehave: NOT READY: did not load"),
            "{args:?}: {text}"
        );
    }
    let out = env
        .cmd(root.path())
        .args(["readiness", "--json"])
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["ready"], false, "{v}");
    assert!(
        v["not_loaded"][0]["dir"]
            .as_str()
            .unwrap()
            .ends_with("misbehave"),
        "{v}"
    );
    let empty = tempfile::tempdir().unwrap();
    let out = env.cmd(empty.path()).arg("readiness").output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no plugin serves"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_alert_fired_by_a_call_is_listed_from_the_audit_log() {
    let env = Env::new();
    let root = plugins_root(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[[tools]]\nname = \"fail\"\nrisk = \"read\"\n",
    );
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[[alerts.rules]]\nname = \"fails\"\nmetric = \"error_rate\"\nwindow = \"1h\"\n\
         threshold = 0.5\nmin_calls = 1\ntakeover = \"pause_tool\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        env.cmd(root.path())
            .arg("--config")
            .arg(config.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["call", "misbehave/fail"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let v = json(&run(&["alerts", "--json"]));
    assert_eq!(v["alerts"][0]["rule"], "fails", "{v}");
    assert_eq!(v["alerts"][0]["state"], "firing");
    assert_eq!(v["alerts"][0]["plugin"], "misbehave");
    assert_eq!(v["alerts"][0]["tool"], "fail");
    assert_eq!(v["pauses"][0]["target"], "misbehave/fail");
    assert_eq!(v["pauses"][0]["by"], "alert:fails");
    let listed = String::from_utf8_lossy(&run(&["alerts"]).stdout).into_owned();
    assert!(listed.starts_with("firing    fails"), "{listed}");
    let out = run(&["call", "misbehave/fail", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "tool_paused");
}

#[test]
fn a_corrupt_mode_file_is_named_as_the_mode_and_a_switch_replaces_it() {
    let env = Env::new();
    let mode_file = env.data.path().join("mode.json");
    std::fs::write(&mode_file, "{bad").unwrap();
    let out = env.run(&["mode", "show"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the host mode store failed")
            && stderr(&out).contains("is not a valid mode file"),
        "{}",
        stderr(&out)
    );
    // Not the ledger's failure, as it once said.
    assert!(!stderr(&out).contains("ledger"), "{}", stderr(&out));
    // A call is refused for the same reason, not run.
    let out = env.run(&["call", "text/stats", "--args", r#"{"text":"a"}"#]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the host mode store failed"),
        "{}",
        stderr(&out)
    );
    // Switching writes a whole new file over it.
    let out = env.run(&["mode", "normal"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["mode", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Files an operator's flag names, or the data directory keeps, are read
/// under a cap: each linked to `/dev/zero` was read until memory ran out.
#[cfg(unix)]
#[test]
fn inputs_linked_to_an_endless_device_are_refused_not_read_whole() {
    let env = Env::new();
    let zero = "/dev/zero";
    let config = env
        .cmd(Path::new(PLUGINS_DIR))
        .args(["--config", zero, "tools", "list"])
        .output()
        .unwrap();
    assert_eq!(config.status.code(), Some(1), "{}", stderr(&config));
    assert!(
        stderr(&config).contains("more than the limit"),
        "{}",
        stderr(&config)
    );

    let call = env.run(&["call", "text/stats", "--args", r#"{"text":"a"}"#]);
    assert!(call.status.success(), "{}", stderr(&call));
    let key = "00".repeat(32);
    let export = env.run(&["audit", "verify", "--export", zero, "--pubkey", &key]);
    assert_ne!(export.status.code(), Some(0), "{}", stderr(&export));
    assert!(
        stderr(&export).contains("a line longer than"),
        "{}",
        stderr(&export)
    );
    let pubkey = env.run(&["audit", "verify", "--pubkey", zero]);
    assert_ne!(pubkey.status.code(), Some(0), "{}", stderr(&pubkey));
    assert!(
        stderr(&pubkey).contains("more than the limit"),
        "{}",
        stderr(&pubkey)
    );

    let mode_file = env.data.path().join("mode.json");
    std::os::unix::fs::symlink(zero, &mode_file).unwrap();
    let mode = env.run(&["mode", "show"]);
    assert_eq!(mode.status.code(), Some(1), "{}", stderr(&mode));
    // Refused before it is opened: a link is no mode file.
    assert!(
        stderr(&mode).contains("mode.json is not a regular file"),
        "{}",
        stderr(&mode)
    );
    let key_file = env.data.path().join("audit/signing.key");
    std::fs::remove_file(&key_file).unwrap();
    std::fs::remove_file(&mode_file).unwrap();
    std::os::unix::fs::symlink(zero, &key_file).unwrap();
    let call = env.run(&["call", "text/stats", "--args", r#"{"text":"a"}"#]);
    assert_ne!(call.status.code(), Some(0), "{}", stderr(&call));
    assert!(stderr(&call).contains("signing.key"), "{}", stderr(&call));
}

/// A reader that goes away (`airlock tools list | head -1`) ended the
/// command with a panic (exit 101): it now stops printing and exits as it
/// would have. A write that fails for another reason (a full disk) is an
/// error, not lost output.
#[cfg(unix)]
#[test]
fn output_to_a_closed_pipe_is_no_panic_and_to_a_full_disk_an_error() {
    let env = Env::new();
    let mut child = env
        .cmd(Path::new(PLUGINS_DIR))
        .args(["tools", "list", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    assert_eq!(closed.status.code(), Some(0), "{}", stderr(&closed));
    assert!(!stderr(&closed).contains("panicked"), "{}", stderr(&closed));

    let full = env
        .cmd(Path::new(PLUGINS_DIR))
        .args(["tools", "list", "--json"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(full.status.code(), Some(1), "{}", stderr(&full));
    assert!(
        stderr(&full).contains("cannot write to standard output")
            && !stderr(&full).contains("panicked"),
        "{}",
        stderr(&full)
    );
}

/// `airlock call` with an OTLP endpoint exports its call's spans before it
/// exits: they went with the process, left to the exporter's drop (unless
/// its batch timer happened to fire first). The receiver is a loopback
/// HTTP server that answers every request 200 and counts the posts to
/// `/v1/traces` with a body.
#[test]
fn a_one_shot_call_exports_its_spans_before_it_exits() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let posts = std::sync::Arc::clone(&posts);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let posts = std::sync::Arc::clone(&posts);
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let traces = line.starts_with("POST /v1/traces ");
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if traces && length > 0 {
                            posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        let _ = reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
    }
    let env = Env::new();
    let config = env.data.path().join("otlp.toml");
    std::fs::write(
        &config,
        format!("[telemetry]\notlp_endpoint = \"http://{addr}\"\n"),
    )
    .unwrap();
    let out = env
        .cmd(Path::new(PLUGINS_DIR))
        .arg("--config")
        .arg(&config)
        .args(["call", "text/slugify", "--args", r#"{"text":"a b"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        posts.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "no spans reached the receiver"
    );
}
