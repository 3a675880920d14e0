//! `airlock eval` and `airlock replay`, the real binary against the real
//! example plugin `text` and its example release 0.2.0.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlock_tests::{PLUGINS_DIR, RELEASES_DIR};
use serde_json::Value;

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// The binary under test: this build's, or `AIRLOCK_TEST_BIN`.
fn airlock() -> std::ffi::OsString {
    std::env::var_os("AIRLOCK_TEST_BIN").unwrap_or_else(|| AIRLOCK.into())
}

fn text_v2() -> PathBuf {
    Path::new(RELEASES_DIR).join("text-0.2.0")
}

struct Env {
    data: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl Env {
    fn new() -> Env {
        Env {
            data: tempfile::tempdir().unwrap(),
            config: None,
        }
    }

    /// With a configuration file holding `text`.
    fn with_config(text: &str) -> Env {
        let mut env = Env::new();
        let path = env.data.path().join("airlock.toml");
        std::fs::write(&path, text).unwrap();
        env.config = Some(path);
        env
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(airlock());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--plugins-dir")
            .arg(PLUGINS_DIR)
            .arg("--data-dir")
            .arg(self.data.path());
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(args).output().unwrap()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(output),
            stderr(output)
        )
    })
}

#[test]
fn eval_passes_the_serving_version_and_catches_the_release_regression() {
    let env = Env::new();
    let ok = env.run(&["eval", "text"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("9 cases: 9 passed, 0 failed"),
        "{}",
        stdout(&ok)
    );
    // By version: the one in the plugins directory.
    let ok = env.run(&["eval", "text@0.1.0"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    let v2 = text_v2();
    let v1 = Path::new(PLUGINS_DIR).join("text");
    let side = env.run(&[
        "eval",
        v2.to_str().unwrap(),
        "--baseline",
        v1.to_str().unwrap(),
    ]);
    assert_eq!(side.status.code(), Some(10), "{}", stderr(&side));
    let text = stdout(&side);
    assert!(text.contains("baseline text 0.1.0"), "{text}");
    assert!(text.contains("candidate text 0.2.0"), "{text}");
    assert!(
        text.contains("FAIL slugify-folds-accents (line 2)"),
        "{text}"
    );
    assert!(
        text.contains(r#"output: at /slug: expected "creme-brulee-a-la-carte", got "cr-me"#),
        "{text}"
    );

    let side = env.run(&[
        "eval",
        v2.to_str().unwrap(),
        "--baseline",
        v1.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(side.status.code(), Some(10));
    let report = json(&side);
    assert_eq!(report["baseline"]["failed"], 0);
    assert_eq!(report["candidate"]["failed"], 1);
    assert_eq!(report["candidate"]["version"], "0.2.0");
    let failed = &report["candidate"]["cases"][1];
    assert_eq!(failed["passed"], false);
    assert_eq!(failed["failures"][0]["at"], "/slug");
    assert!(failed["fuel_used"].as_u64().unwrap() > 0);
    assert!(failed["wall_us"].is_u64());
}

#[test]
fn eval_takes_a_plugin_archive_and_its_shipped_cases() {
    let env = Env::new();
    // Not in the data directory: no command writes there.
    let outside = tempfile::tempdir().unwrap();
    let archive = outside.path().join("text-0.2.0.tar.gz");
    let out = env.run(&[
        "plugins",
        "pack",
        text_v2().to_str().unwrap(),
        "-o",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.run(&[
        "eval",
        archive.to_str().unwrap(),
        "--baseline",
        "text@0.1.0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["candidate"]["failed"], 1);
    assert_eq!(report["baseline"]["failed"], 0);
}

#[test]
fn an_installed_version_in_a_store_that_cannot_be_opened_is_an_error_not_missing() {
    // Nothing listens on port 1: the store is down, and that is what eval
    // says (exit 1), not that the version is not installed (exit 2).
    let env = Env::with_config(
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://airlock@127.0.0.1:1/airlock\"\nconnect_timeout_ms = 500\n",
    );
    let out = env.run(&["eval", "text@0.2.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the store cannot be opened: store unavailable: cannot connect to postgres at 127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("not installed"), "{}", stderr(&out));
}

#[test]
fn eval_refuses_bad_references_and_bad_cases_files_with_exit_2() {
    let env = Env::new();
    let out = env.run(&["eval", "text@0.2.0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "plugin `text` version 0.2.0 is not installed (`airlock plugins list`), and the plugins directory holds version 0.1.0"
        ),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["eval", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no plugin `nope`"),
        "{}",
        stderr(&out)
    );
    // A plugin that ships no cases, without --cases.
    let out = env.run(&["eval", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no cases.jsonl"),
        "{}",
        stderr(&out)
    );
    // A baseline of another plugin.
    let json_dir = Path::new(PLUGINS_DIR).join("json");
    let out = env.run(&["eval", "text", "--baseline", json_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--baseline is plugin `json`"),
        "{}",
        stderr(&out)
    );

    let bad: &[(&str, &str)] = &[
        (
            "{\"name\":\"a\",\"tool\":\"slugify\"}\n{\"name\":\"b\",\"tool\":\"slugify\",\"expected\":{}}\n",
            "line 2: unknown field `expected`",
        ),
        ("{\"name\":\"a\",\"tool\":\"slugify\"\n", "line 1: "),
        (
            "\n\n{\"name\":\"a\",\"tool\":\"slugify\",\"expect\":{\"error\":\"invalid_arguments\"}}\n",
            "line 3: case \"a\": expect.error \"invalid_arguments\" is not an error kind",
        ),
        ("", "no cases"),
    ];
    for (text, want) in bad {
        let file = env.data.path().join("cases.jsonl");
        std::fs::write(&file, text).unwrap();
        let out = env.run(&["eval", "text", "--cases", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{text}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn replay_reruns_recorded_reads_against_a_release_and_counts_the_skipped() {
    let env = Env::with_config("[audit]\nreplayable = [\"text/slugify\"]\n");
    for args in [
        r#"{"text":"Crème brûlée"}"#,
        r#"{"text":"Hello, World!"}"#,
        // Redacted by the operator-wide rules (a card number).
        r#"{"text":"card 4111 1111 1111 1111"}"#,
    ] {
        let out = env.run(&["call", "text/slugify", "--args", args]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    // Not replayable: no copy kept.
    let out = env.run(&["call", "text/stats", "--args", r#"{"text":"Hi"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let v2 = text_v2();
    let out = env.run(&[
        "replay",
        "--plugin",
        "text",
        "--against",
        v2.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["version"], "0.2.0");
    assert_eq!(report["replayed"], 2);
    assert_eq!(report["same"], 1);
    assert_eq!(report["different"], 1);
    assert_eq!(report["skipped"]["redacted"], 1);
    assert_eq!(report["skipped"]["no_copy"], 1);
    assert_eq!(report["skipped"]["cut"], 0);
    let different = &report["calls"][0];
    assert_eq!(different["same"], false);
    assert_eq!(different["diff"]["at"], "/slug");

    // Against the version that recorded them: the same.
    let out = env.run(&["replay", "--plugin", "text", "--against", "0.1.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("2 replayed: 2 same, 0 different, 0 errors; skipped: 1 redacted, 0 cut, 1 without a replayable copy"),
        "{text}"
    );
    // --limit: the newest call that can be replayed (not the first), and
    // the two newer that cannot, counted.
    let out = env.run(&[
        "replay",
        "--plugin",
        "text",
        "--against",
        "0.1.0",
        "--limit",
        "1",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["replayed"], 1);
    assert_eq!(report["calls"][0]["same"], true);
    assert_eq!(report["skipped"]["redacted"], 1);
    assert_eq!(report["skipped"]["no_copy"], 1);

    // Nothing to compare is not a pass: a gate on replay must not let a
    // version through on no evidence.
    let out = env.run(&[
        "replay",
        "--plugin",
        "text",
        "--against",
        "0.1.0",
        "--since",
        "2100-01-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert_eq!(json(&out)["replayed"], 0);
    assert!(
        stderr(&out).contains(
            "nothing was replayed: no recorded `read` call of `text` since 2100-01-01T00:00:00Z"
        ),
        "{}",
        stderr(&out)
    );

    // The records replay chooses from, by risk class.
    let out = env.run(&[
        "audit", "query", "--plugin", "text", "--risk", "read", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reads: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(reads.len() >= 4, "{reads:?}");
    assert!(reads.iter().all(|r| r["risk"] == "read"), "{reads:?}");
    let out = env.run(&[
        "audit", "query", "--plugin", "text", "--risk", "write", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let out = env.run(&["audit", "query", "--risk", "harmless"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("harmless"), "{}", stderr(&out));

    let out = env.run(&["replay", "--plugin", "text", "--against", "0.3.0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("version 0.3.0 is not installed"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&[
        "replay",
        "--plugin",
        "json",
        "--against",
        v2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--against is plugin `text`, not `json`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_replayable_setting_is_a_configuration_error() {
    let env = Env::with_config("[audit]\nreplayable = [\"slugify\"]\n");
    let out = env.run(&["eval", "text"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("audit.replayable"),
        "{}",
        stderr(&out)
    );
}
