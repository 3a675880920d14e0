//! Every capability against a real component: one test where it is granted
//! and works, and tests where it is not granted or its bounds are tested —
//! asserting the kind of failure and that nothing happened outside the grant.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use airlock_host::{
    CallError, CallRequest, Capability, ErrorClass, Host, HostConfig, LoadError, Policy,
};
use airlock_tests::{MISBEHAVE, PROBE, PluginDir, install, read};
use serde_json::{Value, json};

const PROBE_TOOLS: &[&str] = &[
    "read-file",
    "write-file",
    "list-dir",
    "env",
    "env-names",
    "elapsed",
    "random",
    "print",
    "open-many",
    "fill",
];

fn tools(names: &[&str]) -> String {
    names
        .iter()
        .map(|t| format!("\n[[tools]]\nname = \"{t}\"\nrisk = \"read\"\n"))
        .collect()
}

/// The probe with `capabilities` (TOML body of the table) and a `data/`
/// directory holding `hello.txt`, plus `secret.txt` beside it (outside).
fn probe(capabilities: &str) -> PluginDir {
    let dir = install(
        "probe",
        &read(PROBE),
        &format!(
            "[capabilities]\nclocks = true\nrandom = true\n{capabilities}\n{}",
            tools(PROBE_TOOLS)
        ),
    );
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/hello.txt"), "hello from data").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP SECRET").unwrap();
    dir
}

async fn load(dir: &PluginDir, policy: Policy) -> Result<Host, LoadError> {
    let host = Host::new(HostConfig::default().policy(policy)).unwrap();
    host.load_plugin(dir.path()).await?;
    Ok(host)
}

async fn call(host: &Host, tool: &str, args: Value) -> Result<Value, CallError> {
    host.call(CallRequest::new(tool, args.to_string()))
        .await
        .map(|r| r.output)
}

fn failed(result: Result<Value, CallError>) -> String {
    match result {
        Err(CallError::Tool { message, .. }) => message,
        other => panic!("expected a tool error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- files

#[tokio::test]
async fn files_read_only_grant_allows_reading_inside() {
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-only\" }]");
    let host = load(&dir, Policy::default()).await.unwrap();
    let out = call(&host, "probe/read-file", json!({"path": "/data/hello.txt"}))
        .await
        .unwrap();
    assert_eq!(out["text"], "hello from data");
    let out = call(&host, "probe/list-dir", json!({"path": "/data"}))
        .await
        .unwrap();
    assert_eq!(out["entries"], json!(["hello.txt"]));
}

#[tokio::test]
async fn files_read_only_grant_refuses_writes() {
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-only\" }]");
    let host = load(&dir, Policy::default()).await.unwrap();
    failed(
        call(
            &host,
            "probe/write-file",
            json!({"path": "/data/new.txt", "content": "x"}),
        )
        .await,
    );
    failed(
        call(
            &host,
            "probe/write-file",
            json!({"path": "/data/hello.txt", "content": "overwritten"}),
        )
        .await,
    );
    assert!(!dir.path().join("data/new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/hello.txt")).unwrap(),
        "hello from data"
    );
}

/// A `read` tool of a plugin with a write grant, admitted before a switch
/// to read-only mode and still waiting for a pool slot when it came, runs
/// with its grant narrowed to reading, as a call admitted after the switch
/// would: the mode is checked again before its guest starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_call_queued_across_a_switch_to_read_only_runs_with_its_grant_narrowed() {
    let data = tempfile::tempdir().unwrap();
    let host = std::sync::Arc::new(
        Host::new(HostConfig::default().data_dir(data.path()).max_instances(1)).unwrap(),
    );
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-write\" }]");
    host.load_plugin(dir.path()).await.unwrap();
    let spinner = install(
        "spinner",
        &read(MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 20000\nfuel = 1_000_000_000_000_000\n\n\
         [[tools]]\nname = \"spin\"\nrisk = \"read\"\n",
    );
    host.load_plugin(spinner.path()).await.unwrap();

    // The spin holds the pool's one slot until cancelled; the write waits.
    let stop = tokio_util::sync::CancellationToken::new();
    let spin = tokio::spawn({
        let host = std::sync::Arc::clone(&host);
        let stop = stop.clone();
        async move {
            host.call(CallRequest::new("spinner/spin", r#"{"n":1}"#).cancel_on(stop))
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = tokio::spawn({
        let host = std::sync::Arc::clone(&host);
        async move {
            call(
                &host,
                "probe/write-file",
                json!({"path": "/data/new.txt", "content": "written"}),
            )
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!queued.is_finished(), "the call waits for the pool");
    host.set_mode(true, "ops-oncall", Some("incident"))
        .await
        .unwrap();
    stop.cancel();
    assert_eq!(spin.await.unwrap().unwrap_err().kind(), "cancelled");
    failed(queued.await.unwrap());
    assert!(!dir.path().join("data/new.txt").exists());

    // Back to normal: the same call writes.
    host.set_mode(false, "ops-oncall", None).await.unwrap();
    call(
        &host,
        "probe/write-file",
        json!({"path": "/data/new.txt", "content": "written"}),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/new.txt")).unwrap(),
        "written"
    );
}

#[tokio::test]
async fn files_read_write_grant_allows_writing_inside() {
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-write\" }]");
    let host = load(&dir, Policy::default()).await.unwrap();
    call(
        &host,
        "probe/write-file",
        json!({"path": "/data/new.txt", "content": "written"}),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/new.txt")).unwrap(),
        "written"
    );
}

/// A call writes through its read-write `files` grants at most its
/// budget (`files_max_write_kb`, `files_max_created`): bytes through a
/// stream (`std::fs::write`) or `descriptor.write`, growth by `set-size`,
/// created files and directories. Past it the write fails with
/// `insufficient-space`,
/// the call goes on, its record has one host note, and the next call has
/// a budget of its own.
#[tokio::test]
async fn files_writes_are_held_to_the_calls_budget() {
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-write\" }]");
    let policy = Policy {
        files_max_write_kb: Some(64),
        files_max_created: Some(5),
        ..Policy::default()
    };
    let host = load(&dir, policy).await.unwrap();
    let fill = |how: &str, count: u32, bytes: u64| {
        let args = json!({"preopen": "/data", "how": how, "count": count, "bytes": bytes});
        host.call(CallRequest::new("probe/fill", args.to_string()))
    };
    let used = || -> u64 {
        std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let before = used();

    // 20,000 bytes a file: three fit in 65,536, the fourth does not.
    let response = fill("std", 10, 20_000).await.unwrap();
    assert_eq!(response.output["made"], 3, "{:?}", response.output);
    let error = response.output["error"].as_str().unwrap();
    assert!(error.contains("No space left"), "{error}");
    assert_eq!(response.host_notes.len(), 1, "{:?}", response.host_notes);
    assert!(
        response.host_notes[0].starts_with("files: the call's write budget (65536 bytes, 5"),
        "{:?}",
        response.host_notes
    );
    // The fourth file has what fit of it (a stream writes in chunks).
    let first = used() - before;
    assert!((60_000..=65_536).contains(&first), "{first}");

    // Each call has its own budget; `descriptor.write`, `set-size` and
    // `create-directory-at` keep to it too. (`made` of `count`, then
    // refused.)
    let refused_after = async |how: &str, count: u32, bytes: u64, made: u32| {
        let response = fill(how, count, bytes).await.unwrap();
        assert_eq!(
            response.output["made"], made,
            "{how}: {:?}",
            response.output
        );
        let error = response.output["error"].as_str().unwrap_or_default();
        assert!(error.contains("insufficient-space"), "{how}: {error}");
    };
    refused_after("write", 3, 30_000, 2).await;
    assert_eq!(used() - before, first + 60_000);
    refused_after("set-size", 2, 1 << 30, 0).await;
    assert_eq!(used() - before, first + 60_000);
    refused_after("mkdir", 10, 0, 5).await;
    // A write far past the end counts its hole, as `set-size` does.
    refused_after("sparse", 1, 1 << 30, 0).await;
    // Opening an existing file with `create` creates nothing.
    let response = fill("reopen", 10, 0).await.unwrap();
    assert_eq!(response.output["made"], 10, "{:?}", response.output);
    assert!(dir.path().join("data/mkdir-4").is_dir());
    assert!(!dir.path().join("data/mkdir-5").exists());
    // Within the budget, nothing is noted.
    let response = fill("write", 1, 10).await.unwrap();
    assert_eq!(response.output["made"], 1, "{:?}", response.output);
    assert!(response.host_notes.is_empty(), "{:?}", response.host_notes);
}

#[tokio::test]
async fn files_path_escapes_are_refused() {
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-write\" }]");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("../secret.txt", dir.path().join("data/link")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("data/up")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("data/etc")).unwrap();
    }
    let host = load(&dir, Policy::default()).await.unwrap();
    for path in [
        "/data/../secret.txt",
        "/data/sub/../../secret.txt",
        "/secret.txt",
        "/etc/passwd",
        "secret.txt",
        "/data/link",
        "/data/link/",
        "/data/up/secret.txt",
        "/data/up/",
        "/data/etc/passwd",
    ] {
        let message = failed(call(&host, "probe/read-file", json!({"path": path})).await);
        assert!(
            !message.contains("TOP SECRET") && !message.contains("root:"),
            "{path}: {message}"
        );
    }
    for path in [
        "/data/../evil.txt",
        "/data/up/evil.txt",
        "/data/link",
        "/evil.txt",
    ] {
        failed(
            call(
                &host,
                "probe/write-file",
                json!({"path": path, "content": "pwned"}),
            )
            .await,
        );
    }
    assert!(!dir.path().join("evil.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.txt")).unwrap(),
        "TOP SECRET"
    );
}

#[tokio::test]
async fn files_are_invisible_without_a_grant() {
    let dir = probe("");
    let host = load(&dir, Policy::default()).await.unwrap();
    failed(call(&host, "probe/read-file", json!({"path": "/data/hello.txt"})).await);
    failed(call(&host, "probe/list-dir", json!({"path": "/"})).await);
}

#[tokio::test]
async fn files_host_paths_may_not_leave_the_plugin_directory() {
    for host_path in ["..", "data/../..", "/etc"] {
        let dir = probe(&format!(
            "files = [{{ host = \"{host_path}\", guest = \"/x\", access = \"read-only\" }}]"
        ));
        let err = load(&dir, Policy::default()).await.unwrap_err();
        assert!(
            matches!(err, LoadError::CapabilityDenied { .. }),
            "{host_path}: {err}"
        );
        assert_eq!(err.class(), ErrorClass::CapabilityDenied);
    }
}

#[tokio::test]
async fn files_resolve_inside_the_operator_files_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("shared")).unwrap();
    std::fs::write(
        root.path().join("shared/note.txt"),
        "from the operator's root",
    )
    .unwrap();
    let dir = probe("files = [{ host = \"shared\", guest = \"/shared\", access = \"read-only\" }]");
    let policy = Policy {
        files_root: Some(root.path().to_owned()),
        ..Policy::default()
    };
    let host = load(&dir, policy).await.unwrap();
    let out = call(
        &host,
        "probe/read-file",
        json!({"path": "/shared/note.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(out["text"], "from the operator's root");
}

/// A read-write grant that is a directory beside the plugins, in the
/// directory they are loaded from: a manifest and component a plugin wrote
/// there would load as a plugin at the next start. Refused whichever of
/// the two loads first.
#[tokio::test]
async fn a_writable_grant_beside_the_plugins_is_refused_whichever_loads_first() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    for sub in ["plugins/scratch", "elsewhere"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // A plugin directory at `at`: the probe, its capabilities `capabilities`.
    let place = |at: &std::path::Path, name: &str, capabilities: &str| {
        let made = install(
            name,
            &read(PROBE),
            &format!(
                "[capabilities]\nclocks = true\nrandom = true\n{capabilities}\n{}",
                tools(PROBE_TOOLS)
            ),
        );
        std::fs::create_dir_all(at).unwrap();
        for file in ["plugin.toml", "component.wasm"] {
            std::fs::copy(made.path().join(file), at.join(file)).unwrap();
        }
    };
    let writes_scratch = |access: &str| {
        format!(
            "files = [{{ host = \"plugins/scratch\", guest = \"/scratch\", access = \"{access}\" }}]"
        )
    };
    let policy = Policy {
        files_root: Some(root.clone()),
        ..Policy::default()
    };
    let host = || Host::new(HostConfig::default().policy(policy.clone())).unwrap();

    // Loaded from the plugins directory itself.
    place(&root.join("plugins/p"), "p", &writes_scratch("read-write"));
    let err = host()
        .load_plugin(root.join("plugins/p"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(
        err.to_string().contains("where plugins are loaded from"),
        "{err}"
    );
    // Read-only, it may.
    place(&root.join("plugins/r"), "r", &writes_scratch("read-only"));
    host().load_plugin(root.join("plugins/r")).await.unwrap();

    // Loaded from elsewhere first, while no plugin of that directory is
    // loaded: the plugin loaded from it next is refused.
    place(
        &root.join("elsewhere/q"),
        "q",
        &writes_scratch("read-write"),
    );
    place(&root.join("plugins/x"), "x", "");
    let both = host();
    both.load_plugin(root.join("elsewhere/q")).await.unwrap();
    let err = both.load_plugin(root.join("plugins/x")).await.unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    assert!(err.to_string().contains("plugin `q` may write"), "{err}");

    // A configured plugins directory is protected from the start, empty
    // or not: `q`, loaded from elsewhere, may not write a plugin into
    // `empty/` for the next start, nor read it.
    std::fs::create_dir_all(root.join("empty/new")).unwrap();
    let configured = || {
        Host::new(
            HostConfig::default()
                .policy(policy.clone())
                .plugins_dir(root.join("empty")),
        )
        .unwrap()
    };
    for (access, grant, says) in [
        ("read-write", "empty/new", "where plugins are loaded from"),
        ("read-only", "empty", "contains the plugin directory"),
    ] {
        place(
            &root.join("elsewhere/w"),
            "w",
            &format!("files = [{{ host = \"{grant}\", guest = \"/w\", access = \"{access}\" }}]"),
        );
        let err = configured()
            .load_plugin(root.join("elsewhere/w"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "capability_denied", "{err}");
        assert!(err.to_string().contains(says), "{err}");
        // Without the directory configured, nothing says it holds plugins.
        host().load_plugin(root.join("elsewhere/w")).await.unwrap();
    }
}

/// Set in the copy of this test binary that runs in a private mount
/// namespace.
const IN_MOUNT_NAMESPACE: &str = "AIRLOCK_TEST_IN_MOUNT_NAMESPACE";

/// A bind mount shows a directory at a second path, which no path
/// comparison relates to the first: a grant of the data directory's
/// alias is a grant of the data directory. The host places paths by the
/// mount table, and refuses such grants as it refuses the paths
/// themselves. The mounts are made in a private mount namespace (this test
/// again, in a child process under `unshare`), so none outlives the test.
#[test]
fn grants_reaching_protected_directories_through_bind_mounts_are_refused() {
    const NAME: &str = "grants_reaching_protected_directories_through_bind_mounts_are_refused";
    if std::env::var_os(IN_MOUNT_NAMESPACE).is_some() {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(bind_mount_aliases_in_this_namespace());
        return;
    }
    // As root, a mount namespace; otherwise one inside a user namespace.
    let ways: [&[&str]; 2] = [
        &["--mount", "--propagation", "private"],
        &[
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
        ],
    ];
    let Some(way) = ways.iter().find(|way| {
        std::process::Command::new("unshare")
            .args(**way)
            // What the test does: a bind mount (of a directory on itself).
            .args([
                "--",
                "sh",
                "-c",
                "d=$(mktemp -d) && mount --bind \"$d\" \"$d\" && umount \"$d\"; r=$?; rmdir \"$d\"; exit $r",
            ])
            .output()
            .is_ok_and(|out| out.status.success())
    }) else {
        // CI sets this: there the test must run.
        assert!(
            std::env::var_os("AIRLOCK_TEST_REQUIRE_NAMESPACES").is_none(),
            "`unshare` cannot make a mount namespace here (neither as root nor in a user namespace)"
        );
        eprintln!(
            "skipped: `unshare` cannot make a mount namespace here (neither as root nor in a user namespace)"
        );
        return;
    };
    let out = std::process::Command::new("unshare")
        .args(*way)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(IN_MOUNT_NAMESPACE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // It ran (a filter that matched nothing would pass too).
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
}

async fn bind_mount_aliases_in_this_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    for sub in [
        "data/inner",
        "plugins/scratch",
        "plugins/x",
        "plugins/y",
        "srv-m",
        "src/g",
        "unlisted/p",
        "unlisted/x",
        "other",
        "plain",
        "shelf/data",
        "alias-data",
        "alias-inner",
        "alias-plugins",
        "alias-other",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // Unmounted (last first) before the directory is removed, however the
    // test ends: removing would go through the mounts.
    struct Mounted(Vec<std::path::PathBuf>);
    impl Drop for Mounted {
        fn drop(&mut self) {
            for point in self.0.iter().rev() {
                let _ = std::process::Command::new("umount").arg(point).status();
            }
        }
    }
    let mut mounted = Mounted(Vec::new());
    let mut bind = |from: &str, to: &str| {
        let out = std::process::Command::new("mount")
            .arg("--bind")
            .arg(root.join(from))
            .arg(root.join(to))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        mounted.0.push(root.join(to));
    };
    bind("data", "alias-data");
    bind("data/inner", "alias-inner");
    bind("plugins", "alias-plugins");
    bind("other", "alias-other");
    // The data directory shown inside an ordinary directory.
    bind("data", "shelf/data");
    // `src/g` shown in the configured plugins directory, and in a
    // directory plugins are loaded from without it being configured; an
    // entry of the plugins directory shown elsewhere.
    bind("src/g", "plugins/x");
    bind("src/g", "unlisted/x");
    bind("plugins/y", "srv-m");

    let config = |plugins_dir: bool| {
        let config = HostConfig::default()
            .policy(Policy {
                files_root: Some(root.clone()),
                ..Policy::default()
            })
            .data_dir(root.join("data"));
        if plugins_dir {
            config.plugins_dir(root.join("plugins"))
        } else {
            config
        }
    };
    let host = || Host::new(config(true)).unwrap();
    let granting = |name: &str, grant: &str, access: &str| {
        install(
            name,
            &read(PROBE),
            &format!(
                "[capabilities]\nclocks = true\nrandom = true\nfiles = [{{ host = \"{grant}\", guest = \"/w\", access = \"{access}\" }}]\n{}",
                tools(PROBE_TOOLS)
            ),
        )
    };
    for (grant, access, says) in [
        ("alias-data", "read-only", "the host's own store"),
        ("alias-inner", "read-only", "the host's own store"),
        ("shelf", "read-only", "the host's own store"),
        (
            "alias-plugins",
            "read-only",
            "contains the plugin directory",
        ),
        (
            "alias-plugins/scratch",
            "read-write",
            "where plugins are loaded from",
        ),
        ("src/g", "read-write", "where plugins are loaded from"),
        ("src", "read-write", "where plugins are loaded from"),
        ("srv-m", "read-write", "where plugins are loaded from"),
    ] {
        let dir = granting("w", grant, access);
        let err = host().load_plugin(dir.path()).await.unwrap_err();
        assert_eq!(err.kind(), "capability_denied", "{grant}: {err}");
        let message = err.to_string();
        assert!(message.contains(says), "{grant}: {message}");
        assert!(message.contains("through a mount"), "{grant}: {message}");
    }
    // Two plugins' grants of one directory, one of them through an alias
    // and read-write.
    let both = host();
    both.load_plugin(granting("w", "other", "read-only").path())
        .await
        .unwrap();
    let second = granting("v", "alias-other", "read-write");
    let err = both.load_plugin(second.path()).await.unwrap_err();
    assert!(err.to_string().contains("granted to plugin `w`"), "{err}");
    drop(both);
    // The other side: a loaded plugin may write `src/g`, which a mount
    // shows in `unlisted/`; a plugin loaded from `unlisted/` next is
    // refused.
    let unconfigured = Host::new(config(false)).unwrap();
    unconfigured
        .load_plugin(granting("w", "src/g", "read-write").path())
        .await
        .unwrap();
    let made = install(
        "p",
        &read(PROBE),
        &format!(
            "[capabilities]\nclocks = true\nrandom = true\n{}",
            tools(PROBE_TOOLS)
        ),
    );
    for file in ["plugin.toml", "component.wasm"] {
        std::fs::copy(made.path().join(file), root.join("unlisted/p").join(file)).unwrap();
    }
    let err = unconfigured
        .load_plugin(root.join("unlisted/p"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "capability_denied", "{err}");
    let message = err.to_string();
    assert!(message.contains("plugin `w` may write"), "{message}");
    assert!(message.contains("through a mount"), "{message}");
    drop(unconfigured);
    // An alias of nothing protected is a directory like any other, and a
    // plain directory loads as before.
    for grant in ["alias-other", "plain"] {
        let h = host();
        h.load_plugin(granting("w", grant, "read-write").path())
            .await
            .unwrap();
        let out = call(
            &h,
            "w/write-file",
            json!({"path": "/w/note.txt", "content": "written"}),
        )
        .await
        .unwrap();
        assert_eq!(out["done"], true, "{out}");
    }
    assert!(root.join("other/note.txt").is_file());
    drop(mounted);
    tmp.close().unwrap();
}

#[tokio::test]
async fn policy_can_forbid_a_capability() {
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-only\" }]");
    let policy = Policy {
        forbid: [Capability::Files].into(),
        ..Policy::default()
    };
    let err = load(&dir, policy).await.unwrap_err();
    let LoadError::CapabilityDenied { capability, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(capability, "capabilities.files");
}

#[tokio::test]
async fn holding_too_many_handles_fails_cleanly_and_the_host_keeps_serving() {
    // Host-side resources per call are capped (limits::MAX_RESOURCES = 256);
    // the WASI filesystem layer refuses further open descriptors even
    // earlier (between 100 and 200). Either way the guest gets an error,
    // not the host.
    let dir = probe("files = [{ host = \"data\", guest = \"/data\", access = \"read-only\" }]");
    let host = load(&dir, Policy::default()).await.unwrap();
    let ok = call(
        &host,
        "probe/open-many",
        json!({"path": "/data/hello.txt", "n": 100}),
    )
    .await
    .unwrap();
    assert_eq!(ok["value"], 100);
    let message = failed(
        call(
            &host,
            "probe/open-many",
            json!({"path": "/data/hello.txt", "n": 300}),
        )
        .await,
    );
    assert!(
        message.contains("Out of memory"),
        "the guest sees ENOMEM: {message}"
    );
    call(&host, "probe/read-file", json!({"path": "/data/hello.txt"}))
        .await
        .unwrap();
}

// ---------------------------------------------------------------- env

#[tokio::test]
async fn env_exposes_declared_names_with_operator_values_only() {
    let dir = probe("env = [\"REGION\", \"UNSET\"]");
    let policy = Policy {
        env: BTreeMap::from([
            ("REGION".into(), "eu-west".into()),
            ("TOKEN".into(), "s3cr3t".into()),
        ]),
        ..Policy::default()
    };
    let host = load(&dir, policy).await.unwrap();
    assert_eq!(
        call(&host, "probe/env", json!({"name": "REGION"}))
            .await
            .unwrap()["value"],
        "eu-west"
    );
    // Declared but no operator value; configured but not declared; the
    // host's own environment.
    for name in ["UNSET", "TOKEN", "PATH", "HOME"] {
        assert_eq!(
            call(&host, "probe/env", json!({"name": name}))
                .await
                .unwrap()["value"],
            Value::Null,
            "{name}"
        );
    }
    assert_eq!(
        call(&host, "probe/env-names", json!({})).await.unwrap()["entries"],
        json!(["REGION"])
    );
}

#[tokio::test]
async fn env_is_empty_without_a_grant() {
    let dir = probe("");
    let policy = Policy {
        env: BTreeMap::from([("REGION".into(), "eu-west".into())]),
        ..Policy::default()
    };
    let host = load(&dir, policy).await.unwrap();
    assert_eq!(
        call(&host, "probe/env-names", json!({})).await.unwrap()["entries"],
        json!([])
    );
}

// ---------------------------------------------------------------- clocks, random

#[tokio::test]
async fn clocks_and_random_work_when_granted() {
    let host = load(&probe(""), Policy::default()).await.unwrap();
    call(&host, "probe/elapsed", json!({})).await.unwrap();
    let a = call(&host, "probe/random", json!({})).await.unwrap()["value"]
        .as_u64()
        .unwrap();
    let b = call(&host, "probe/random", json!({})).await.unwrap()["value"]
        .as_u64()
        .unwrap();
    assert_ne!(a, b, "two draws of 64 random bits should differ");
}

async fn probe_load_error(capabilities: &str) -> LoadError {
    let manifest = format!("[capabilities]\n{capabilities}\n{}", tools(PROBE_TOOLS));
    let dir = install("probe", &read(PROBE), &manifest);
    load(&dir, Policy::default()).await.unwrap_err()
}

#[tokio::test]
async fn importing_the_monotonic_clock_needs_the_clocks_grant() {
    let err = probe_load_error("random = true").await;
    let LoadError::CapabilityNotGranted {
        interface, hint, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(
        interface.starts_with("wasi:clocks/monotonic-clock"),
        "{interface}"
    );
    assert!(hint.contains("capabilities.clocks = true"), "{hint}");
    assert_eq!(err.kind(), "capability_not_granted");
}

#[tokio::test]
async fn importing_entropy_needs_the_random_grant() {
    let err = probe_load_error("clocks = true").await;
    let LoadError::CapabilityNotGranted {
        interface, hint, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(interface.starts_with("wasi:random/random"), "{interface}");
    assert!(hint.contains("capabilities.random = true"), "{hint}");
}

#[tokio::test]
async fn the_wall_clock_is_frozen_without_the_clocks_grant() {
    let manifest = |clocks: bool| {
        format!(
            "[capabilities]\nlog = true\nclocks = {clocks}\n{}",
            tools(&["now"])
        )
    };
    let frozen = load(
        &install("misbehave", &read(MISBEHAVE), &manifest(false)),
        Policy::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        call(&frozen, "misbehave/now", json!({})).await.unwrap()["seconds"],
        0
    );
    let real = load(
        &install("misbehave", &read(MISBEHAVE), &manifest(true)),
        Policy::default(),
    )
    .await
    .unwrap();
    let seconds = call(&real, "misbehave/now", json!({})).await.unwrap()["seconds"]
        .as_u64()
        .unwrap();
    assert!(seconds > 1_700_000_000, "{seconds}");
}

/// A file the plugin writes carries the time it was written: with a
/// `files` grant, `stat` was a wall clock (and two of them a stopwatch)
/// for a plugin without `clocks`. Without the grant it reports no
/// timestamps; with it, the file's.
#[tokio::test]
async fn file_timestamps_tell_no_time_without_the_clocks_grant() {
    let plugin = |clocks: bool| {
        let dir = install(
            "misbehave",
            &read(MISBEHAVE),
            &format!(
                "[capabilities]\nlog = true\nclocks = {clocks}\n\
                 files = [{{ host = \"data\", guest = \"/data\", access = \"read-write\" }}]\n{}",
                tools(&["file-times"])
            ),
        );
        std::fs::create_dir(dir.path().join("data")).unwrap();
        dir
    };
    let args = json!({"preopen": "/data", "name": "now.txt"});
    let frozen = plugin(false);
    let host = load(&frozen, Policy::default()).await.unwrap();
    let times = call(&host, "misbehave/file-times", args.clone())
        .await
        .unwrap();
    assert_eq!(times["stat"], json!([null, null, null]), "{times}");
    assert_eq!(times["stat_at"], json!([null, null, null]), "{times}");
    // The file is there, with its real times, for the host.
    assert!(frozen.path().join("data/now.txt").is_file());

    let real = plugin(true);
    let host = load(&real, Policy::default()).await.unwrap();
    let times = call(&host, "misbehave/file-times", args).await.unwrap();
    for stat in ["stat", "stat_at"] {
        let modified = times[stat][1].as_u64().unwrap_or_else(|| panic!("{times}"));
        assert!(modified > 1_700_000_000, "{times}");
    }
}

// ---------------------------------------------------------------- stdio, log

#[tokio::test]
async fn stdio_goes_to_the_call_log_only_when_granted() {
    let granted = load(&probe("stdio = true"), Policy::default())
        .await
        .unwrap();
    let response = granted
        .call(CallRequest::new("probe/print", r#"{"text":"hi"}"#))
        .await
        .unwrap();
    let lines: Vec<_> = response.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        lines.contains(&"out: hi") && lines.contains(&"err: hi"),
        "{lines:?}"
    );

    let silent = load(&probe(""), Policy::default()).await.unwrap();
    let response = silent
        .call(CallRequest::new("probe/print", r#"{"text":"hi"}"#))
        .await
        .unwrap();
    assert!(response.logs.is_empty(), "{:?}", response.logs);
}

/// Output past the 16 KiB kept of each stream is dropped, with or without
/// the grant: the call goes on (wasmtime's in-memory pipe refused the
/// write, and the guest's `println!` panicked: the call trapped).
#[tokio::test]
async fn output_past_what_is_kept_is_dropped_and_the_call_goes_on() {
    let text = "x".repeat(40 * 1024);
    let args = serde_json::json!({ "text": text }).to_string();
    for grant in ["stdio = true", ""] {
        let host = load(&probe(grant), Policy::default()).await.unwrap();
        let response = host
            .call(CallRequest::new("probe/print", args.clone()))
            .await
            .unwrap_or_else(|e| panic!("{grant:?}: {e}"));
        let kept: usize = response.logs.iter().map(|l| l.message.len()).sum();
        assert!(kept <= 2 * 16 * 1024, "{grant:?}: {kept} bytes kept");
        if grant.is_empty() {
            assert!(response.logs.is_empty(), "{:?}", response.logs.len());
        } else {
            // Each stream's one long line, kept (cut to a log line's size).
            for stream in ["out: xxxx", "err: xxxx"] {
                assert!(
                    response.logs.iter().any(|l| l.message.starts_with(stream)),
                    "{stream}"
                );
            }
        }
    }
}

#[tokio::test]
async fn importing_log_needs_the_log_grant() {
    let dir = install("misbehave", &read(MISBEHAVE), &tools(&["echo"]));
    let err = load(&dir, Policy::default()).await.unwrap_err();
    let LoadError::CapabilityNotGranted { interface, .. } = &err else {
        panic!("{err}")
    };
    assert!(interface.starts_with("airlock:plugin/log"), "{interface}");
}

// ---------------------------------------------------------------- limits and policy

#[tokio::test]
async fn limits_above_the_operator_ceiling_fail_to_load() {
    let dir = install(
        "misbehave",
        &read(MISBEHAVE),
        &format!(
            "[capabilities]\nlog = true\n\n[limits]\nmemory_mb = 512\n{}",
            tools(&["echo"])
        ),
    );
    let mut policy = Policy::default();
    policy.limits.memory_mb = Some(128);
    let err = load(&dir, policy).await.unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::LimitAboveCeiling {
                limit: "limits.memory_mb",
                asked: 512,
                ceiling: 128,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_concurrency_cap_queues_calls_and_others_keep_working() {
    let limits = "[limits]\nmax_concurrency = 1\ntimeout_ms = 1_000\nfuel = 1_000_000_000_000_000";
    let dir = install(
        "misbehave",
        &read(MISBEHAVE),
        &format!(
            "[capabilities]\nlog = true\n\n{limits}\n{}",
            tools(&["spin", "echo"])
        ),
    );
    let other = probe("");
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    host.load_plugin(other.path()).await.unwrap();
    let host = std::sync::Arc::new(host);

    let spinner = {
        let host = host.clone();
        tokio::spawn(async move { call(&host, "misbehave/spin", json!({})).await })
    };
    // While the only slot is busy, another plugin on the same host serves.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call(&host, "probe/env-names", json!({})).await.unwrap();
    // The second call of the capped plugin waits for the slot, and gets it
    // only after the spinner was stopped at its deadline.
    call(&host, "misbehave/echo", json!({"after": "spin"}))
        .await
        .unwrap();
    assert!(spinner.is_finished());
    let err = spinner.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "deadline_exceeded");
}

#[tokio::test]
async fn the_probe_loads_with_its_full_grant() {
    let host = load(&probe("stdio = true"), Policy::default())
        .await
        .unwrap();
    assert_eq!(host.tools().len(), PROBE_TOOLS.len());
}
