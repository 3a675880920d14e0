//! The hostile suite: attacks from inside a plugin and as a caller, each
//! named after the attack, each done the way an attacker would do it (the
//! guest performs the whole escape through its grants; the harness only
//! sets the stage and looks at the result).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use airlock_host::{CallError, CallRequest, Host, HostConfig, Policy};
use airlock_tests::{PROBE, PluginDir, install, read};
use serde_json::{Value, json};

const PROBE_TOOLS: &[&str] = &["read-file", "write-file", "list-dir", "swap-for-symlink"];

fn tools(names: &[&str]) -> String {
    names
        .iter()
        .map(|t| format!("\n[[tools]]\nname = \"{t}\"\nrisk = \"read\"\n"))
        .collect()
}

/// The probe, named `name`, with `files` as its `capabilities.files` value.
fn probe(name: &str, files: &str) -> PluginDir {
    install(
        name,
        &read(PROBE),
        &format!(
            "[capabilities]\nclocks = true\nrandom = true\nfiles = {files}\n{}",
            tools(PROBE_TOOLS)
        ),
    )
}

fn files_root(root: &std::path::Path) -> Policy {
    Policy {
        files_root: Some(root.to_owned()),
        ..Policy::default()
    }
}

async fn call(host: &Host, tool: &str, args: Value) -> Result<Value, CallError> {
    host.call(CallRequest::new(tool, args.to_string()))
        .await
        .map(|r| r.output)
}

// ------------------------------------------------------- files escapes

/// Two hosts share a files root (one operator, two processes). On host A
/// the victim is granted `shared/inner` read-only; on host B the attacker
/// is granted `shared` read-write. The attacker's guest moves `inner` aside
/// and puts a symbolic link to `/etc` in its place, with WASI `rename-at`
/// and `symlink-at`. The victim's grant was checked when it loaded and must
/// keep reaching the directory that was checked — not `/etc`.
#[tokio::test]
async fn symlink_swap_of_another_plugins_grant_does_not_move_it() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("shared/inner")).unwrap();
    std::fs::write(root.path().join("shared/inner/marker.txt"), "checked dir").unwrap();

    let victim = probe(
        "victim",
        r#"[{ host = "shared/inner", guest = "/data", access = "read-only" }]"#,
    );
    let host_a = Host::new(HostConfig::default().policy(files_root(root.path()))).unwrap();
    host_a.load_plugin(victim.path()).await.unwrap();
    let before = call(
        &host_a,
        "victim/read-file",
        json!({"path": "/data/marker.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(before["text"], "checked dir");

    let attacker = probe(
        "attacker",
        r#"[{ host = "shared", guest = "/shared", access = "read-write" }]"#,
    );
    let host_b = Host::new(HostConfig::default().policy(files_root(root.path()))).unwrap();
    host_b.load_plugin(attacker.path()).await.unwrap();
    let swapped = call(
        &host_b,
        "attacker/swap-for-symlink",
        json!({"preopen": "/shared", "name": "inner",
               "target": "../../../../../../../../../../../../etc"}),
    )
    .await
    .unwrap();
    assert!(
        swapped["text"].as_str().unwrap().contains("linked"),
        "{swapped}"
    );
    // The attack did happen on disk: the path now leads to /etc.
    assert!(root.path().join("shared/inner/passwd").exists());

    // The victim still sees the directory it was granted.
    let after = call(
        &host_a,
        "victim/read-file",
        json!({"path": "/data/marker.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(after["text"], "checked dir");
    let passwd = call(&host_a, "victim/read-file", json!({"path": "/data/passwd"})).await;
    assert!(
        matches!(passwd, Err(CallError::Tool { .. })),
        "the victim reached /etc through the swapped path: {passwd:?}"
    );

    // And a host loading the victim now refuses the swapped path.
    let host_c = Host::new(HostConfig::default().policy(files_root(root.path()))).unwrap();
    let err = host_c.load_plugin(victim.path()).await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
}

/// One host: a plugin holding `shared` read-write while another holds
/// `shared/inner` could do the same swap; the second grant is refused.
#[tokio::test]
async fn grant_overlapping_another_plugins_writable_grant_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("shared/inner")).unwrap();
    let host = Host::new(HostConfig::default().policy(files_root(root.path()))).unwrap();
    let attacker = probe(
        "attacker",
        r#"[{ host = "shared", guest = "/shared", access = "read-write" }]"#,
    );
    host.load_plugin(attacker.path()).await.unwrap();
    let victim = probe(
        "victim",
        r#"[{ host = "shared/inner", guest = "/data", access = "read-only" }]"#,
    );
    let err = host.load_plugin(victim.path()).await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("plugin `attacker`"), "{err}");
}

/// A plugin granted write access to a directory holding its own plugin
/// directory could rewrite its manifest (its component's digest still
/// matches) and be reloaded with a wider grant. Such a grant never loads.
#[tokio::test]
async fn grant_over_own_plugin_directory_cannot_rewrite_the_manifest() {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let dir = probe(
        "selfwrite",
        r#"[{ host = "plugins", guest = "/plugins", access = "read-write" }]"#,
    );
    let installed = plugins.join("selfwrite");
    std::fs::create_dir(&installed).unwrap();
    for file in ["plugin.toml", "component.wasm"] {
        std::fs::copy(dir.path().join(file), installed.join(file)).unwrap();
    }
    let host = Host::new(HostConfig::default().policy(files_root(root.path()))).unwrap();
    let report = host.load_plugins_dir(&plugins).await.unwrap();
    assert!(report.loaded.is_empty(), "{:?}", report.loaded);
    let err = &report.failed[0].error;
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("plugin directory"), "{err}");
    // Nothing ran: the manifest is as installed.
    assert_eq!(
        std::fs::read(installed.join("plugin.toml")).unwrap(),
        std::fs::read(dir.path().join("plugin.toml")).unwrap()
    );
}

/// A grant reaching the host's data directory would let a plugin edit the
/// audit log, the ledger or the mode file.
#[tokio::test]
async fn grant_over_the_data_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("state")).unwrap();
    let dir = probe(
        "datawrite",
        r#"[{ host = "state", guest = "/state", access = "read-only" }]"#,
    );
    let host = Host::new(
        HostConfig::default()
            .policy(files_root(root.path()))
            .data_dir(root.path().join("state/airlock")),
    )
    .unwrap();
    let err = host.load_plugin(dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("store"), "{err}");
}

/// An installed version is held to the same rule as a plugin of the
/// plugins directory: a package granting itself the data directory is
/// refused at install, and a version installed where its grant reached
/// nothing protected is refused where it would (before, both loaded, and
/// every call had the audit log's keys and the ledger in reach).
#[tokio::test]
async fn an_installed_version_cannot_grant_itself_the_data_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("state")).unwrap();
    std::fs::create_dir_all(root.path().join("elsewhere/state")).unwrap();
    let data = root.path().join("state/airlock");
    let dir = probe(
        "datawrite",
        r#"[{ host = "state", guest = "/state", access = "read-write" }]"#,
    );
    let package = airlock_host::Package::from_dir(dir.path()).unwrap();
    let host = Host::new(
        HostConfig::default()
            .policy(files_root(root.path()))
            .data_dir(&data),
    )
    .unwrap();
    let err = host.install(&package, "ops").await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("store"), "{err}");
    assert!(host.installed(None).unwrap().is_empty());
    drop(host);

    // Installed by a host whose files root made the grant harmless...
    let host = Host::new(
        HostConfig::default()
            .policy(files_root(&root.path().join("elsewhere")))
            .data_dir(&data),
    )
    .unwrap();
    host.install(&package, "ops").await.unwrap();
    host.plugin_version("datawrite", "0.1.0").await.unwrap();
    host.audit().close().unwrap();
    drop(host);
    // ...served by one where the same grant is the data directory.
    let host = Host::new(
        HostConfig::default()
            .policy(files_root(root.path()))
            .data_dir(&data),
    )
    .unwrap();
    let err = host.plugin_version("datawrite", "0.1.0").await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("store"), "{err}");
}

/// Installed versions of two plugins are held to the rule between
/// plugins too: one may not be served with a writable directory another
/// served version holds (before, a version was checked against the
/// plugins directory's plugins only, so two installed plugins could share
/// a directory the other wrote to).
#[tokio::test]
async fn served_versions_of_two_plugins_cannot_share_a_writable_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("files/shared")).unwrap();
    let data = root.path().join("data");
    let grant = r#"[{ host = "shared", guest = "/shared", access = "read-write" }]"#;
    let one = airlock_host::Package::from_dir(probe("one", grant).path()).unwrap();
    let two = airlock_host::Package::from_dir(probe("two", grant).path()).unwrap();
    let new_host = || {
        Host::new(
            HostConfig::default()
                .policy(files_root(&root.path().join("files")))
                .data_dir(&data),
        )
        .unwrap()
    };
    // Installed while `one` is served: refused, naming it.
    let host = new_host();
    host.install(&one, "ops").await.unwrap();
    host.plugin_version("one", "0.1.0").await.unwrap();
    let err = host.install(&two, "ops").await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("`one`"), "{err}");
    host.audit().close().unwrap();
    drop(host);
    // Installed where `one` was not loaded: then refused where it is.
    let host = new_host();
    host.install(&two, "ops").await.unwrap();
    host.audit().close().unwrap();
    drop(host);
    let host = new_host();
    host.plugin_version("one", "0.1.0").await.unwrap();
    let err = host.plugin_version("two", "0.1.0").await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("`one`"), "{err}");
    // Nor may a plugin of the plugins directory take it.
    let three = probe("three", grant);
    let err = host.load_plugin(three.path()).await.unwrap_err();
    assert!(err.to_string().contains("`one`"), "{err}");
}

// ------------------------------------------------- isolation by identity

fn notes_plugin(scope: &str) -> PluginDir {
    install(
        "notes",
        &read(&format!("{}/notes/notes.wasm", airlock_tests::PLUGINS_DIR)),
        &format!(
            "[capabilities]\nworkspace = \"read-write\"\n{scope}\n\n\
             [[tools]]\nname = \"add\"\nrisk = \"write\"\n\n\
             [[tools]]\nname = \"get\"\nrisk = \"read\"\n\n\
             [[tools]]\nname = \"list\"\nrisk = \"read\"\n"
        ),
    )
}

async fn notes_call(
    host: &Host,
    tool: &str,
    principal: &str,
    session: Option<&str>,
    args: Value,
) -> Result<Value, CallError> {
    let mut request =
        CallRequest::new(format!("notes/{tool}"), args.to_string()).principal(principal);
    if let Some(s) = session {
        request = request.session(s);
    }
    host.call(request).await.map(|r| r.output)
}

/// Mallory names alice's session: she must neither read alice's notes nor
/// overwrite them.
#[tokio::test]
async fn another_principal_naming_the_same_session_cannot_read_or_overwrite() {
    let plugin = notes_plugin("");
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    let secret = json!({"title": "plan", "body": "alice's secret"});
    notes_call(&host, "add", "alice", Some("s1"), secret)
        .await
        .unwrap();
    let read = notes_call(
        &host,
        "get",
        "mallory",
        Some("s1"),
        json!({"title": "plan"}),
    )
    .await;
    assert!(matches!(read, Err(CallError::Tool { .. })), "{read:?}");
    let forged = json!({"title": "plan", "body": "overwritten by mallory"});
    notes_call(&host, "add", "mallory", Some("s1"), forged)
        .await
        .unwrap();
    let alice = notes_call(&host, "get", "alice", Some("s1"), json!({"title": "plan"}))
        .await
        .unwrap();
    assert_eq!(alice["body"], "alice's secret");
}

/// Calls that give no session used to share one namespace across every
/// principal.
#[tokio::test]
async fn calls_without_a_session_do_not_share_keys_across_principals() {
    let plugin = notes_plugin("");
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    notes_call(
        &host,
        "add",
        "alice",
        None,
        json!({"title": "a", "body": "x"}),
    )
    .await
    .unwrap();
    let listed = notes_call(&host, "list", "bob", None, json!({}))
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    let own = notes_call(&host, "list", "alice", None, json!({}))
        .await
        .unwrap();
    assert_eq!(own.as_array().unwrap().len(), 1);
}

/// Plugin-wide state exists only when the manifest asks for it, and then
/// it is shared on purpose.
#[tokio::test]
async fn plugin_wide_keys_are_shared_only_when_the_manifest_asks() {
    let plugin = notes_plugin("workspace_scope = \"plugin\"");
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    notes_call(
        &host,
        "add",
        "alice",
        Some("s1"),
        json!({"title": "a", "body": "x"}),
    )
    .await
    .unwrap();
    let seen = notes_call(&host, "get", "bob", None, json!({"title": "a"}))
        .await
        .unwrap();
    assert_eq!(seen["body"], "x");
    let principal = notes_plugin("workspace_scope = \"principal\"");
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(principal.path()).await.unwrap();
    notes_call(
        &host,
        "add",
        "alice",
        Some("s1"),
        json!({"title": "a", "body": "x"}),
    )
    .await
    .unwrap();
    // Same principal, any session: seen. Another principal: not.
    notes_call(&host, "get", "alice", Some("s2"), json!({"title": "a"}))
        .await
        .unwrap();
    let other = notes_call(&host, "get", "bob", Some("s1"), json!({"title": "a"})).await;
    assert!(matches!(other, Err(CallError::Tool { .. })), "{other:?}");
}

// ----------------------------------------------------- unknown outcomes

/// A call stopped at its deadline (or cancelled) may have done anything
/// before it stopped. Stored as a plain failure, a retry under the same key
/// replayed "failed" and invited a retry under a new key: a second
/// execution. Its outcome is unknown, and the key says so.
#[tokio::test]
async fn a_call_stopped_mid_run_is_stored_as_outcome_unknown_not_failure() {
    let mut manifest = String::from(
        "[capabilities]\nlog = true\n\n[limits]\nfuel = 100_000_000_000\ntimeout_ms = 300\n",
    );
    for tool in ["spin", "fail"] {
        manifest.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"write\"\n"
        ));
    }
    let dir = install("misbehave", &read(airlock_tests::MISBEHAVE), &manifest);
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    let first = host
        .call(CallRequest::new("misbehave/spin", "{}").idempotency_key("k-spin"))
        .await
        .unwrap_err();
    assert_eq!(first.kind(), "deadline_exceeded", "{first}");
    let retry = host
        .call(CallRequest::new("misbehave/spin", "{}").idempotency_key("k-spin"))
        .await
        .unwrap_err();
    assert_eq!(retry.kind(), "idempotency_outcome_unknown", "{retry}");

    // A tool that reports its own failure is a definite outcome, replayed.
    host.call(CallRequest::new("misbehave/fail", "{}").idempotency_key("k-fail"))
        .await
        .unwrap_err();
    let replay = host
        .call(CallRequest::new("misbehave/fail", "{}").idempotency_key("k-fail"))
        .await
        .unwrap_err();
    assert_eq!(replay.kind(), "replayed_failure", "{replay}");
}

// -------------------------------------------------------- read-only mode

/// A tool its author calls `read` keeps the plugin's write-capable grants.
/// In read-only mode (the human takeover) those grants are narrowed to
/// reading, whatever the tool's declared risk.
#[tokio::test]
async fn read_only_mode_stops_writes_of_a_tool_that_claims_to_read() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("work")).unwrap();
    let dir = probe(
        "liar",
        r#"[{ host = "work", guest = "/work", access = "read-write" }]"#,
    );
    let host = Host::new(HostConfig::default().policy(files_root(root.path()))).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    call(
        &host,
        "liar/write-file",
        json!({"path": "/work/a.txt", "content": "before"}),
    )
    .await
    .unwrap();
    host.set_mode(true, "operator", Some("incident"))
        .await
        .unwrap();
    let write = call(
        &host,
        "liar/write-file",
        json!({"path": "/work/a.txt", "content": "during"}),
    )
    .await;
    assert!(matches!(write, Err(CallError::Tool { .. })), "{write:?}");
    let read_back = call(&host, "liar/read-file", json!({"path": "/work/a.txt"}))
        .await
        .unwrap();
    assert_eq!(read_back["text"], "before");
    assert_eq!(
        std::fs::read_to_string(root.path().join("work/a.txt")).unwrap(),
        "before"
    );
    host.set_mode(false, "operator", None).await.unwrap();
    call(
        &host,
        "liar/write-file",
        json!({"path": "/work/a.txt", "content": "after"}),
    )
    .await
    .unwrap();
}

/// The operator can give a tool the risk class its author would not.
#[tokio::test]
async fn operator_risk_override_makes_a_lying_read_tool_refused_in_read_only_mode() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("work")).unwrap();
    let dir = probe(
        "liar",
        r#"[{ host = "work", guest = "/work", access = "read-write" }]"#,
    );
    let mut policy = files_root(root.path());
    policy
        .risk
        .insert("liar/write-file".into(), airlock_host::Risk::Write);
    let host = Host::new(HostConfig::default().policy(policy)).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    let tool = host.plugin("liar").unwrap();
    let tool = tool.tool("write-file").unwrap();
    assert_eq!(tool.risk(), airlock_host::Risk::Write);
    assert!(tool.risk_overridden());
    host.set_mode(true, "operator", None).await.unwrap();
    let err = call(
        &host,
        "liar/write-file",
        json!({"path": "/work/a.txt", "content": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "read_only_mode", "{err}");
}

// --------------------------------------------------- all of it at once

/// Peak resident memory of the whole hostile suite at once (16 hostile
/// calls in flight for three rounds, with well-behaved calls throughout),
/// as stated in the README: 16 instances at their 32 MiB memory limit plus
/// 256 MiB for the host. Not a timing: memory is what the bounds bound.
const HOSTILE_PEAK_RSS_MB: u64 = 768;

#[test]
fn the_whole_hostile_suite_at_once_leaves_good_calls_working_within_the_memory_bound() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostile-load"))
        .arg("3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hostile-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report:#}");
    assert_eq!(report["good_failed"], json!([]), "{report:#}");
    assert!(report["good_ok"].as_u64().unwrap() >= 40, "{report:#}");
    let hostile = report["hostile"].as_object().unwrap();
    assert_eq!(hostile.len(), 11, "{report:#}"); // distinct attack tools
    for (tool, kinds) in hostile {
        for kind in kinds.as_object().unwrap().keys() {
            assert!(
                !kind.starts_with("READ"),
                "{tool} read through an escape: {kind}"
            );
        }
    }
    let peak_mb = report["peak_rss_kb"].as_u64().unwrap() / 1024;
    assert!(peak_mb > 0);
    assert!(
        peak_mb <= HOSTILE_PEAK_RSS_MB,
        "peak resident memory {peak_mb} MiB is over the stated bound of {HOSTILE_PEAK_RSS_MB} MiB"
    );
}
