//! The audit log against real calls: every path leaves its records, secrets
//! never reach the disk, an unrecordable call does not run, and a host
//! killed mid-stream leaves a log that verifies.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use airlock_host::audit_log::{AuditLog, Event, OUTCOME_UNKNOWN, Record, verify_export};
use airlock_host::{AUDIT_DIR, CallError, CallRequest, Host, HostConfig};
use airlock_tests::{MISBEHAVE, PROBE, PluginDir, install, read};
use serde_json::{Value, json};

/// The misbehave guest with `tools` as `(name, risk, extra manifest lines)`.
fn misbehave(tools: &[(&str, &str, &str)]) -> PluginDir {
    // Fuel enough that `spin` runs into its deadline first.
    let mut manifest =
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 300\nfuel = 1_000_000_000_000\n"
            .to_owned();
    for (name, risk, extra) in tools {
        manifest.push_str(&format!(
            "\n[[tools]]\nname = \"{name}\"\nrisk = \"{risk}\"\n{extra}\n"
        ));
    }
    install("misbehave", &read(MISBEHAVE), &manifest)
}

async fn host_in(data: &Path, plugin: &PluginDir) -> Host {
    let host = Host::new(HostConfig::default().data_dir(data)).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    host
}

async fn call(host: &Host, tool: &str, args: &str) -> Result<Value, CallError> {
    host.call(
        CallRequest::new(tool, args)
            .principal("agent-7")
            .trace_id("trace-1"),
    )
    .await
    .map(|r| r.output)
}

fn records(host: &Host) -> Vec<Record> {
    host.audit().records(1).map(Result::unwrap).collect()
}

#[tokio::test]
async fn every_call_leaves_its_records_row_by_row() {
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[
        ("echo", "read", ""),
        ("fail", "write", ""),
        ("panic", "read", ""),
        ("spin", "read", ""),
    ]);
    // A group-commit window no call here outlasts (`spin` runs into its
    // 300 ms deadline), so each `read` call's shape does not depend on
    // the machine's speed: one record. (A call longer than the window:
    // `a_read_call_longer_than_the_window_is_on_record_while_it_runs`.)
    let mut config = HostConfig::default().data_dir(data.path());
    config.audit.group_commit_ms = 60_000;
    let host = Host::new(config).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    let p = host.plugin("misbehave").unwrap();
    let (digest, manifest_digest) = (p.digest().to_owned(), p.manifest_digest().to_owned());

    call(&host, "misbehave/echo", r#"{"a":1}"#).await.unwrap();
    let e = call(&host, "misbehave/fail", "{}").await.unwrap_err();
    assert_eq!(e.kind(), "tool_error");
    let e = call(&host, "misbehave/panic", "{}").await.unwrap_err();
    assert_eq!(e.kind(), "guest_trap");
    let e = call(&host, "misbehave/spin", "{}").await.unwrap_err();
    assert_eq!(e.kind(), "deadline_exceeded");
    let e = call(&host, "misbehave/nope", "{}").await.unwrap_err();
    assert_eq!(e.kind(), "unknown_tool");
    let e = call(&host, "misbehave/echo", "[1]").await.unwrap_err();
    assert_eq!(e.kind(), "arguments_not_object");

    // A `read` call of a plugin that can only read, finished within the
    // group-commit window, is one record carrying its intent; a `write`
    // call's intent is written before it runs.
    let rows = records(&host);
    let expected: &[(Event, &str, Option<&str>)] = &[
        (Event::CallFinished, "echo", Some("ok")),
        (Event::CallStarted, "fail", None),
        (Event::CallFinished, "fail", Some("tool_error")),
        (Event::CallFinished, "panic", Some("guest_trap")),
        (Event::CallFinished, "spin", Some("deadline_exceeded")),
        (Event::CallRefused, "misbehave/nope", Some("unknown_tool")),
        (Event::CallRefused, "echo", Some("arguments_not_object")),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:#?}");
    for (i, (row, (event, tool, outcome))) in rows.iter().zip(expected).enumerate() {
        let e = &row.entry;
        assert_eq!(row.seq, i as u64 + 1);
        assert_eq!(e.event, *event, "row {}", row.seq);
        assert_eq!(e.tool.as_deref(), Some(*tool), "row {}", row.seq);
        assert_eq!(e.outcome.as_deref(), *outcome, "row {}", row.seq);
        assert_eq!(e.principal.as_deref(), Some("agent-7"));
        assert_eq!(e.trace_id.as_deref(), Some("trace-1"));
        assert!(
            e.call_id.is_some() && e.args_digest.is_some(),
            "row {}",
            row.seq
        );
        if *event != Event::CallRefused || *tool == "echo" {
            assert_eq!(e.plugin.as_deref(), Some("misbehave"));
            assert_eq!(e.component_digest.as_deref(), Some(digest.as_str()));
            assert_eq!(e.manifest_digest.as_deref(), Some(manifest_digest.as_str()));
            assert!(e.risk.is_some());
        }
        let after_intent = i > 0 && rows[i - 1].entry.event == Event::CallStarted;
        match event {
            Event::CallStarted => {
                assert_eq!(e.decision.as_deref(), Some("admitted"));
                assert!(e.args.is_some());
            }
            Event::CallFinished if after_intent => {
                assert!(e.fuel_used.is_some() && e.wall_us.is_some());
                // The outcome belongs to the intent before it, which has
                // the arguments.
                assert_eq!(e.call_id, rows[i - 1].entry.call_id);
                assert!(!e.carries_intent() && e.args.is_none(), "row {}", row.seq);
            }
            Event::CallFinished => {
                assert!(e.fuel_used.is_some() && e.wall_us.is_some());
                assert!(e.carries_intent(), "row {}", row.seq);
                assert_eq!(e.risk.as_deref(), Some("read"));
                assert!(e.args.is_some(), "row {}", row.seq);
            }
            Event::CallRefused => {
                assert_eq!(e.decision.as_deref(), Some("refused"));
                assert!(e.reason.is_some());
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(rows[0].entry.args.as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(rows[0].entry.result.as_deref(), Some(r#"{"a":1}"#));
    assert!(rows[0].entry.result_digest.is_some());
    assert_eq!(rows[2].entry.risk.as_deref(), Some("write"));
    assert_eq!(host.audit().verify(&[]).unwrap().unwrap().records, 7);
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_bytes(&path, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_appear_nowhere_in_the_database_or_exports() {
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[("echo", "write", "redact = [\"/account\"]")]);
    let host = host_in(data.path(), &plugin).await;
    let secrets = [
        "hunter2-Secret-Pass",
        "acct-991827-Secret",
        "4111 1111 1111 1111",
        "4111111111111111",
        "sk-live-Secret-Token",
    ];
    let args = json!({
        "password": secrets[0],
        "account": secrets[1],
        "memo": format!("pay with {}", secrets[2]),
        "nested": {"api_key": secrets[4]},
        "visible": "marker-visible-0042",
    });
    // The guest echoes its arguments: the result carries the secrets too.
    call(&host, "misbehave/echo", &args.to_string())
        .await
        .unwrap();
    // A refused call whose arguments hold a secret.
    let refused = json!({"password": secrets[0], "visible": "marker-visible-0042"});
    call(&host, "misbehave/missing", &refused.to_string())
        .await
        .unwrap_err();
    let export = data.path().join("export.jsonl");
    host.audit().export(&export).unwrap();
    let key = host.audit().public_key();
    drop(host);

    let mut files = Vec::new();
    all_bytes(&data.path().join(AUDIT_DIR), &mut files);
    files.push((
        export.display().to_string(),
        std::fs::read(&export).unwrap(),
    ));
    // The search works: the visible marker is there (so the store does not
    // hide text from grep)...
    assert!(
        files
            .iter()
            .any(|(_, b)| contains(b, "marker-visible-0042")),
        "marker missing: the grep proves nothing"
    );
    // ...and no secret is, in any file.
    for (name, bytes) in &files {
        for secret in secrets {
            assert!(!contains(bytes, secret), "{secret:?} found in {name}");
        }
    }
    assert!(verify_export(&export, &key, &[]).unwrap().is_ok());
}

/// A secret the guest makes itself — a token in its result, which the
/// key words redact — and then logs was stored in the log lines: only the
/// arguments' secrets were scrubbed from them.
#[tokio::test]
async fn a_secret_in_the_result_is_scrubbed_from_the_calls_log_lines() {
    let data = tempfile::tempdir().unwrap();
    let manifest = "[capabilities]\nlog = true\n\n[[tools]]\nname = \"leak\"\nrisk = \"read\"\n";
    let plugin = install("misbehave", &read(MISBEHAVE), manifest);
    let host = host_in(data.path(), &plugin).await;
    let out = call(
        &host,
        "misbehave/leak",
        &json!({"seed": "Secret-kk11"}).to_string(),
    )
    .await
    .unwrap();
    let token = out["token"].as_str().unwrap().to_owned();
    assert_eq!(token, "minted-11kk-terceS");
    let rows = records(&host);
    let finished = rows
        .iter()
        .find(|r| r.entry.event == Event::CallFinished)
        .expect("the call's record");
    let result = finished.entry.result.as_deref().unwrap();
    assert!(!result.contains(&token), "{result}");
    let logs = finished.entry.logs.as_deref().unwrap();
    assert!(logs.contains("issued [redacted:"), "{logs}");
    assert!(!logs.contains(&token), "{logs}");
}

/// Every shape of secret a caller or guest may hand over: plural keys with
/// arrays, header lists, URL query secrets, a short value at a declared
/// pointer, and the guest repeating secrets in its log lines, its stderr
/// and its error message. None reaches the database or an export, while a
/// visible marker in each free-text channel does (so the search works).
#[tokio::test]
async fn secrets_of_every_shape_and_channel_appear_nowhere_on_disk() {
    let data = tempfile::tempdir().unwrap();
    let manifest = "[capabilities]\nlog = true\nstdio = true\n\n\
        [[tools]]\nname = \"echo\"\nrisk = \"read\"\nredact = [\"/pin\"]\n\n\
        [[tools]]\nname = \"say\"\nrisk = \"read\"\n";
    let plugin = install("misbehave", &read(MISBEHAVE), manifest);
    let host = host_in(data.path(), &plugin).await;
    let secrets = [
        "plural-Secret-aa01",
        "plural-Secret-bb02",
        "hdr-Secret-cc03",
        "hdr-Secret-dd04",
        "url-Secret-ee05",
        "log-Secret-ff06",
        "log-Secret-gg07",
        "said-Secret-hh08",
        "fail-Secret-ii09",
    ];
    let args = json!({
        "api_keys": [secrets[0], secrets[1]],
        "headers": [
            {"name": "authorization", "value": format!("Bearer {}", secrets[2])},
            {"key": "X-Api-Key", "value": secrets[3]},
        ],
        "url": format!("https://api.example.com/v1/items?api_key={}&page=2", secrets[4]),
        "pin": "Q7",
        "visible": "marker-visible-0042",
    });
    call(&host, "misbehave/echo", &args.to_string())
        .await
        .unwrap();
    // The guest logs (and prints to stderr) a header line, a query secret
    // and the password it was given.
    let said = json!({
        "text": format!(
            "marker-log-0043 Authorization: Bearer {}\nGET /x?access_token={} sent",
            secrets[5], secrets[6]
        ),
        "password": secrets[7],
    });
    call(&host, "misbehave/say", &said.to_string())
        .await
        .unwrap();
    // And fails with the same kind of text.
    let failing = json!({
        "text": "marker-fail-0044 refused",
        "password": secrets[8],
        "fail": true,
    });
    let e = call(&host, "misbehave/say", &failing.to_string())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "tool_error");
    // The caller still gets the guest's own text.
    assert!(e.to_string().contains(secrets[8]), "{e}");

    let rows = records(&host);
    let finished: Vec<&Record> = rows
        .iter()
        .filter(|r| r.entry.event == Event::CallFinished)
        .collect();
    // The short secret at the declared pointer is a token, whatever its length.
    let intent = &rows[0].entry;
    assert!(
        intent
            .args
            .as_deref()
            .unwrap()
            .contains("\"pin\":\"[redacted:"),
        "{intent:?}"
    );
    // Log lines and stderr are stored, scrubbed; the error message too.
    let logs = finished[1].entry.logs.as_deref().unwrap();
    assert!(logs.contains("marker-log-0043"), "{logs}");
    assert!(logs.contains("\"level\":\"warn\""), "{logs}");
    let reason = finished[2].entry.reason.as_deref().unwrap();
    assert!(reason.contains("marker-fail-0044"), "{reason}");

    let export = data.path().join("export.jsonl");
    host.audit().export(&export).unwrap();
    let key = host.audit().public_key();
    drop(host);
    let mut files = Vec::new();
    all_bytes(&data.path().join(AUDIT_DIR), &mut files);
    files.push((
        export.display().to_string(),
        std::fs::read(&export).unwrap(),
    ));
    for marker in ["marker-visible-0042", "marker-log-0043", "marker-fail-0044"] {
        assert!(
            files.iter().any(|(_, b)| contains(b, marker)),
            "{marker} missing: the grep proves nothing"
        );
    }
    for (name, bytes) in &files {
        for secret in secrets {
            assert!(!contains(bytes, secret), "{secret:?} found in {name}");
        }
        assert!(
            !contains(bytes, "\\\"pin\\\":\\\"Q7"),
            "the short pin found in {name}"
        );
    }
    assert!(verify_export(&export, &key, &[]).unwrap().is_ok());
}

#[tokio::test]
async fn a_call_that_cannot_be_recorded_does_not_run() {
    let data = tempfile::tempdir().unwrap();
    let dir = install(
        "probe",
        &read(PROBE),
        "[capabilities]\nclocks = true\nrandom = true\nfiles = [{ host = \"data\", guest = \"/data\", access = \"read-write\" }]\n\n[[tools]]\nname = \"write-file\"\nrisk = \"write\"\n",
    );
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let host = Host::new(HostConfig::default().data_dir(data.path())).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    // The store stops taking records (as on a failed disk).
    host.audit().close().unwrap();
    let err = host
        .call(CallRequest::new(
            "probe/write-file",
            json!({"path": "/data/effect.txt", "content": "x"}).to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "audit_unavailable", "{err}");
    assert!(
        !dir.path().join("data/effect.txt").exists(),
        "the tool ran without a record"
    );
}

/// `misbehave` with a `read` `spin` that only cancellation ends (a minute's
/// deadline), on a host whose group-commit window is `window_ms`.
async fn spinning_host(data: &Path, window_ms: u64) -> (Host, PluginDir) {
    let plugin = install(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 60000\nfuel = 1_000_000_000_000_000\n\n[[tools]]\nname = \"spin\"\nrisk = \"read\"\n",
    );
    let mut config = HostConfig::default().data_dir(data);
    config.audit.group_commit_ms = window_ms;
    let host = Host::new(config).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    (host, plugin)
}

/// A call of `spin` on `host`, running in its own task until `token` (if
/// any) cancels it or the task is aborted.
fn spin(
    host: &std::sync::Arc<Host>,
    token: Option<&tokio_util::sync::CancellationToken>,
) -> tokio::task::JoinHandle<Result<airlock_host::CallResponse, CallError>> {
    let host = host.clone();
    let mut request = CallRequest::new("misbehave/spin", "{}");
    if let Some(token) = token {
        request = request.cancel_on(token.clone());
    }
    tokio::spawn(async move { host.call(request).await })
}

/// A `spin` call running on a fresh host in `data` with its intent held
/// (a window no test outlasts), checked to have nothing on record yet:
/// the host, the call and the plugin's directory (kept while the host
/// runs).
async fn running_held_spin(
    data: &Path,
    token: Option<&tokio_util::sync::CancellationToken>,
) -> (
    std::sync::Arc<Host>,
    tokio::task::JoinHandle<Result<airlock_host::CallResponse, CallError>>,
    PluginDir,
) {
    let (host, plugin) = spinning_host(data, 600_000).await;
    let host = std::sync::Arc::new(host);
    let call = spin(&host, token);
    // Running (its instance taken): admitted, with nothing on record.
    until("the call runs", || instances_in_use(&host).ends_with(" 1")).await;
    assert!(records(&host).is_empty());
    (host, call, plugin)
}

/// Wait (a minute at most) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn instances_in_use(host: &Host) -> String {
    let metrics = host.metrics().unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("airlock_instances_in_use "))
        .unwrap_or_default()
        .to_owned()
}

/// `audit.hold_read_intents = false`: every intent is written before its
/// call runs, `read` calls' too — two records a call.
#[tokio::test]
async fn holding_read_intents_can_be_turned_off() {
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[("echo", "read", "")]);
    let mut config = HostConfig::default().data_dir(data.path());
    config.audit.hold_read_intents = false;
    let host = Host::new(config).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    call(&host, "misbehave/echo", r#"{"a":1}"#).await.unwrap();
    let rows = records(&host);
    let events: Vec<_> = rows.iter().map(|r| r.entry.event).collect();
    assert_eq!(events, [Event::CallStarted, Event::CallFinished]);
    assert_eq!(rows[0].entry.args.as_deref(), Some(r#"{"a":1}"#));
    assert!(!rows[1].entry.carries_intent() && rows[1].entry.args.is_none());
}

/// A `read` call's intent is held only for the group-commit window: one
/// that runs longer is in the log while it runs, and its outcome follows.
#[tokio::test]
async fn a_read_call_longer_than_the_window_is_on_record_while_it_runs() {
    let data = tempfile::tempdir().unwrap();
    let (host, _plugin) = spinning_host(data.path(), 20).await;
    let host = std::sync::Arc::new(host);
    let token = tokio_util::sync::CancellationToken::new();
    let call = spin(&host, Some(&token));
    until("the running call's intent is recorded", || {
        records(&host)
            .iter()
            .any(|r| r.entry.event == Event::CallStarted)
    })
    .await;
    // Only the token ends it: it is still running.
    assert!(!call.is_finished());
    token.cancel();
    assert_eq!(call.await.unwrap().unwrap_err().kind(), "cancelled");
    let rows = records(&host);
    let events: Vec<_> = rows.iter().map(|r| r.entry.event).collect();
    assert_eq!(events, [Event::CallStarted, Event::CallFinished]);
    assert_eq!(rows[0].entry.call_id, rows[1].entry.call_id);
    assert!(!rows[1].entry.carries_intent());
    assert_eq!(rows[1].entry.outcome.as_deref(), Some("cancelled"));
}

/// A caller that drops a running call whose intent is held (a dropped
/// future: a client gone, a timeout around `Host::call`) leaves it on
/// record all the same: one record, its outcome `cancelled`.
#[tokio::test]
async fn a_held_call_dropped_by_its_caller_is_still_recorded() {
    let data = tempfile::tempdir().unwrap();
    let (host, call, _plugin) = running_held_spin(data.path(), None).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let rows = records(&host);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let e = &rows[0].entry;
    assert_eq!(e.event, Event::CallFinished);
    assert!(e.carries_intent());
    assert_eq!(e.outcome.as_deref(), Some("cancelled"));
    assert_eq!(e.tool.as_deref(), Some("spin"));
    assert!(e.args_digest.is_some() && e.args.is_some());
    // Its instance went back to the pool with the future.
    until("the instance is free", || {
        instances_in_use(&host).ends_with(" 0")
    })
    .await;
    assert_eq!(host.audit().verify(&[]).unwrap().unwrap().records, 1);
}

/// Closing the log while a call holds its intent: the call writes its
/// intent at once and `close` waits for it, so the log's last checkpoint
/// covers the call (and the next host gives it an `unknown` outcome if it
/// never finishes) — a shutdown does not make a running call vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_log_writes_the_intents_held_by_running_calls() {
    let data = tempfile::tempdir().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let (host, call, _plugin) = running_held_spin(data.path(), Some(&token)).await;
    let closing = host.clone();
    tokio::task::spawn_blocking(move || closing.audit().close().unwrap())
        .await
        .unwrap();
    let rows = records(&host);
    let events: Vec<_> = rows.iter().map(|r| r.entry.event).collect();
    assert_eq!(events, [Event::CallStarted], "{rows:#?}");
    assert_eq!(rows[0].entry.tool.as_deref(), Some("spin"));
    // A call that starts now is refused: the log takes no more records.
    let err = host
        .call(CallRequest::new("misbehave/spin", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "audit_unavailable", "{err}");
    token.cancel();
    assert_eq!(call.await.unwrap().unwrap_err().kind(), "cancelled");
}

/// A `read` call whose intent is held has no record until it finishes: if
/// the log refuses that record, the call's result does not reach the
/// caller. And a call the log would refuse is not run at all.
#[tokio::test]
async fn a_read_call_the_log_cannot_record_returns_no_result() {
    let data = tempfile::tempdir().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let (host, call, _plugin) = running_held_spin(data.path(), Some(&token)).await;
    // The log closes while the call cannot write what it holds: `close`
    // runs on this test's only runtime thread, the one the call needs, so
    // it waits out `HOLD_RELEASE_WAIT` and closes without the record (as
    // a stuck holder, or a failed disk, would leave it). Then the call
    // ends: it has no record, so no result either.
    host.audit().close().unwrap();
    token.cancel();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "audit_unavailable", "{err}");
    assert!(records(&host).is_empty());
    // The next call is not run: refused before its instance is taken.
    let err = host
        .call(CallRequest::new("misbehave/spin", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "audit_unavailable", "{err}");
    assert!(
        instances_in_use(&host).ends_with(" 0"),
        "{}",
        instances_in_use(&host)
    );
}

#[tokio::test]
async fn a_second_host_on_the_same_data_dir_is_refused_clearly() {
    let data = tempfile::tempdir().unwrap();
    let _first = Host::new(HostConfig::default().data_dir(data.path())).unwrap();
    let mut config = HostConfig::default().data_dir(data.path());
    config.audit.lock_wait_ms = 50;
    let err = Host::new(config).unwrap_err();
    assert_eq!(err.kind(), "audit");
    assert!(
        err.to_string()
            .contains("in use by another airlock process"),
        "{err}"
    );
}

#[test]
fn a_host_killed_mid_stream_leaves_a_log_that_verifies() {
    let data = tempfile::tempdir().unwrap();
    // echo is `write`: its records are flushed before and after it runs.
    let plugin = install(
        "misbehave",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 5000\nfuel = 1_000_000_000_000\n\n[[tools]]\nname = \"echo\"\nrisk = \"write\"\n\n[[tools]]\nname = \"spin\"\nrisk = \"write\"\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_call-stream"))
        .arg(data.path())
        .arg(plugin.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut done = 0;
    // Let it get going, then kill it while a call is in flight.
    loop {
        let line = lines.next().expect("call-stream ended early").unwrap();
        if line.starts_with("done") {
            done += 1;
        } else if line == "spinning" && done >= 8 {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let log = AuditLog::open(data.path().join(AUDIT_DIR), Default::default()).unwrap();
    let report = log.verify(&[]).unwrap().unwrap();
    let rows: Vec<Record> = log.records(1).map(Result::unwrap).collect();
    assert_eq!(rows.len() as u64, report.records, "no gap");
    // Every completed call has its ok outcome; the spin in flight is unknown.
    let ok = rows
        .iter()
        .filter(|r| {
            r.entry.event == Event::CallFinished && r.entry.outcome.as_deref() == Some("ok")
        })
        .count();
    assert!(ok >= done, "{ok} ok outcomes for {done} completed calls");
    let last = rows.last().unwrap();
    assert_eq!(last.entry.event, Event::CallFinished);
    assert_eq!(last.entry.tool.as_deref(), Some("spin"));
    assert_eq!(last.entry.outcome.as_deref(), Some(OUTCOME_UNKNOWN));
    let intent = rows
        .iter()
        .rev()
        .find(|r| r.entry.event == Event::CallStarted)
        .unwrap();
    assert_eq!(intent.entry.call_id, last.entry.call_id);
    // Each call has exactly one outcome.
    let started = rows
        .iter()
        .filter(|r| r.entry.event == Event::CallStarted)
        .count();
    let finished = rows
        .iter()
        .filter(|r| r.entry.event == Event::CallFinished)
        .count();
    assert_eq!(started, finished);
}

/// A call refused before its tool was resolved (a bad trace id) had its
/// arguments copied with the key words alone: the tool's own `redact`
/// pointers were not known yet. They are taken from the loaded plugin.
#[tokio::test]
async fn a_call_refused_before_it_is_resolved_keeps_its_tools_redaction() {
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[("echo", "read", "redact = [\"/account\"]")]);
    let host = host_in(data.path(), &plugin).await;
    let args = json!({"account": "acct-pointer-77", "note": "visible-note-78"}).to_string();
    let err = host
        .call(CallRequest::new("misbehave/echo", args).trace_id("not a trace id\n"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_trace_id", "{err}");
    let rows = records(&host);
    let stored = rows[0].entry.args.as_deref().unwrap();
    assert!(stored.contains("visible-note-78"), "{stored}");
    assert!(!stored.contains("acct-pointer-77"), "{stored}");
}

#[tokio::test]
async fn a_megabyte_trace_id_is_refused_before_it_is_recorded() {
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[("echo", "read", "")]);
    let host = host_in(data.path(), &plugin).await;
    let huge = "t".repeat(1 << 20);
    let err = host
        .call(CallRequest::new("misbehave/echo", "{}").trace_id(huge.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_trace_id", "{err}");
    assert_eq!(err.class(), airlock_host::ErrorClass::Refused);
    assert!(err.to_string().len() < 200, "{err}");

    // An invalid idempotency key and principal: the same, and neither is
    // recorded whole.
    let err = host
        .call(CallRequest::new("misbehave/echo", "{}").idempotency_key(huge.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_idempotency_key", "{err}");
    let err = host
        .call(CallRequest::new("misbehave/echo", "{}").principal(format!("\u{1b}[2K{huge}")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_principal", "{err}");

    let rows = records(&host);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for row in &rows {
        let e = &row.entry;
        assert_eq!(e.event, Event::CallRefused);
        assert!(e.outcome.as_deref().unwrap().starts_with("invalid_"));
        assert!(e.idempotency_key.is_none());
        let whole = serde_json::to_string(e).unwrap();
        assert!(whole.len() < 4096, "record of {} bytes", whole.len());
        assert!(!whole.contains('\u{1b}'));
    }
    let trace = rows[0].entry.trace_id.as_deref().unwrap();
    assert!(
        trace.len() <= 128 && trace.starts_with("[invalid, 1048576 bytes]"),
        "{trace}"
    );
    let principal = rows[2].entry.principal.as_deref().unwrap();
    assert!(
        principal.starts_with("[invalid, 1048580 bytes] \\u{1b}[2K"),
        "{principal}"
    );
}

/// Arguments over the host's limit are only digested, whichever step
/// refuses the call: never parsed, redacted or copied into its record
/// (refusals before the size check — unknown tool, paused tool, bad
/// identifiers — used to parse and redact whatever the transport let in).
#[tokio::test]
async fn oversized_arguments_are_only_digested_whichever_step_refuses() {
    use sha2::Digest;
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[("echo", "read", "")]);
    let host = Host::new(
        HostConfig::default()
            .data_dir(data.path())
            .max_argument_bytes(1000),
    )
    .unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    let large = json!({"token": "x".repeat(2000)}).to_string();
    let digest = hex::encode(sha2::Sha256::digest(large.as_bytes()));
    let small = json!({"note": "y"}).to_string();

    let kinds = [
        (call(&host, "misbehave/nope", &large).await, "unknown_tool"),
        (
            call(&host, "misbehave/echo", &large).await,
            "arguments_too_large",
        ),
        (
            host.call(CallRequest::new("misbehave/echo", large.clone()).principal("bad\nname"))
                .await
                .map(|r| r.output),
            "invalid_principal",
        ),
        (call(&host, "misbehave/nope", &small).await, "unknown_tool"),
    ];
    for (result, kind) in &kinds {
        assert_eq!(result.as_ref().unwrap_err().kind(), *kind);
    }
    let refused: Vec<Record> = records(&host)
        .into_iter()
        .filter(|r| r.entry.event == Event::CallRefused)
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    for record in &refused[..3] {
        assert_eq!(record.entry.args_digest.as_deref(), Some(digest.as_str()));
        assert_eq!(record.entry.args, None, "{record:?}");
    }
    // Within the limit, a refused call's arguments are copied as before.
    assert!(refused[3].entry.args.as_deref().unwrap().contains("\"y\""));
}

/// Beside a copy with a short secret replaced, a plain digest of the
/// whole arguments (or result) let anyone holding the record — an
/// export, say — try each PIN until one matched. Such a record's digests
/// are keyed under the redaction key; what approvals and idempotency keys
/// bind is still the arguments themselves.
#[tokio::test]
async fn the_digests_beside_a_redacted_copy_cannot_be_tried_offline() {
    let data = tempfile::tempdir().unwrap();
    let plugin = misbehave(&[("echo", "write", "idempotency = \"required\"")]);
    let host = host_in(data.path(), &plugin).await;
    let secret = json!({"password": "4821", "x": 1});
    let plain =
        |v: &Value| airlock_tests::sha256_hex(&airlock_host::audit_log::canonical::to_vec(v));
    let echo = |args: &Value, key: &str| {
        CallRequest::new("misbehave/echo", args.to_string())
            .principal("agent-7")
            .idempotency_key(key)
    };
    host.call(echo(&secret, "k1")).await.unwrap();
    // The key binds the arguments: the retry replays, other ones refuse.
    let again = host.call(echo(&secret, "k1")).await.unwrap();
    assert!(again.replayed_from.is_some(), "{again:?}");
    let other = host
        .call(echo(&json!({"password": "4822", "x": 1}), "k1"))
        .await
        .unwrap_err();
    assert_eq!(other.kind(), "idempotency_mismatch");
    let plainly = json!({"x": 2});
    host.call(echo(&plainly, "k2")).await.unwrap();

    let rows = records(&host);
    let started: Vec<_> = rows
        .iter()
        .filter(|r| r.entry.event == Event::CallStarted)
        .collect();
    let finished: Vec<_> = rows
        .iter()
        .filter(|r| r.entry.event == Event::CallFinished)
        .collect();
    assert_eq!((started.len(), finished.len()), (2, 2), "{rows:#?}");
    let (redacted, clear) = (&started[0].entry, &started[1].entry);
    assert!(redacted.args.as_deref().unwrap().contains("[redacted:"));
    let keyed = redacted.args_digest.as_deref().unwrap();
    assert!(keyed.starts_with("hmac-sha256:"), "{keyed}");
    // No PIN gives it.
    for pin in 0..10_000 {
        let guess = json!({"password": format!("{pin:04}"), "x": 1});
        assert_ne!(plain(&guess), keyed.trim_start_matches("hmac-sha256:"));
    }
    let result = finished[0].entry.result_digest.as_deref().unwrap();
    assert!(result.starts_with("hmac-sha256:"), "{result}");
    // Nothing redacted: the plain digest, as before.
    assert_eq!(clear.args_digest.as_deref(), Some(plain(&plainly).as_str()));
    assert_eq!(
        finished[1].entry.result_digest.as_deref(),
        Some(plain(&plainly).as_str())
    );
}
