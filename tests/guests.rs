//! Adversarial guests: every fixture in tests/guests has a test here
//! (`foreach_guest!` fails to compile otherwise), and every failure is
//! asserted by its kind.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use airlock_host::{
    CallError, CallRequest, ErrorClass, Host, HostConfig, LoadError, ToolErrorKind, TrapKind,
};
use airlock_tests::{
    BAD_SCHEMA, DUP_TOOLS, LOUD_LIST, MISBEHAVE, PluginDir, WRONG_WORLD, install, read,
};
use serde_json::{Value, json};

/// Fixtures tested in another suite (capabilities.rs, http.rs).
mod probe {}
mod http_client {}

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
airlock_tests::foreach_guest!(assert_test_exists);

const MISBEHAVE_TOOLS: &[&str] = &[
    "recurse",
    "nest",
    "log-loop",
    "now",
    "echo",
    "fail",
    "reject",
    "deny",
    "panic",
    "spin",
    "grow",
    "grow-table",
    "big-output",
    "log-flood",
    "lie",
];

fn misbehave_plugin(limits: &str) -> PluginDir {
    let mut manifest = format!("[capabilities]\nlog = true\n\n[limits]\n{limits}\n");
    for tool in MISBEHAVE_TOOLS {
        manifest.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"read\"\n"
        ));
    }
    install("misbehave", &read(MISBEHAVE), &manifest)
}

async fn host_with(dir: &PluginDir) -> Host {
    let host = Host::new(HostConfig::default()).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    host
}

async fn call(
    host: &Host,
    tool: &str,
    args: Value,
) -> Result<airlock_host::CallResponse, CallError> {
    host.call(CallRequest::new(
        format!("misbehave/{tool}"),
        args.to_string(),
    ))
    .await
}

fn trap_kind(err: &CallError) -> TrapKind {
    match err {
        CallError::Trap { kind, .. } => *kind,
        other => panic!("expected a trap, got {other}"),
    }
}

#[tokio::test]
async fn misbehave() {
    let dir = misbehave_plugin(
        "fuel = 50_000_000\ntimeout_ms = 1_000\nmemory_mb = 32\nmax_output_kb = 64",
    );
    let host = host_with(&dir).await;

    let echo = call(&host, "echo", json!({"a": 1, "b": [true]}))
        .await
        .unwrap();
    assert_eq!(echo.output, json!({"a": 1, "b": [true]}));

    for (tool, kind) in [
        ("fail", ToolErrorKind::Failed),
        ("reject", ToolErrorKind::InvalidInput),
        ("deny", ToolErrorKind::Denied),
    ] {
        let err = call(&host, tool, json!({})).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Tool { kind: k, .. } if *k == kind),
            "{tool}: {err}"
        );
        assert_eq!(err.class(), ErrorClass::ToolError);
    }

    let err = call(&host, "panic", json!({})).await.unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::GuestTrap);
    assert!(
        err.to_string().contains("deliberate panic in the guest"),
        "stderr is captured: {err}"
    );

    // The undeclared tool is not callable even though the component has it.
    assert!(matches!(
        call(&host, "hidden", json!({})).await.unwrap_err(),
        CallError::UnknownTool { .. }
    ));

    // Output over the manifest's 64 KiB limit; under it is fine.
    call(&host, "big-output", json!({"bytes": 1000}))
        .await
        .unwrap();
    let err = call(&host, "big-output", json!({"bytes": 100_000}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::OutputTooLarge { limit: 65536, .. }),
        "{err}"
    );

    let err = call(&host, "lie", json!({})).await.unwrap_err();
    assert!(matches!(err, CallError::OutputInvalid { .. }), "{err}");

    // Logs are kept up to the per-call budget, the rest counted as dropped.
    let flood = call(&host, "log-flood", json!({"lines": 200, "size": 1000}))
        .await
        .unwrap();
    let kept: usize = flood.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 64 * 1024, "{kept}");
    assert!(flood.logs_dropped > 0);
}

#[tokio::test]
async fn fuel_exhaustion_stops_an_endless_loop() {
    let dir = misbehave_plugin("fuel = 10_000_000\ntimeout_ms = 60_000");
    let host = host_with(&dir).await;
    let err = call(&host, "spin", json!({})).await.unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::FuelExhausted, "{err}");
    assert_eq!(err.kind(), "fuel_exhausted");
    assert_eq!(err.class(), ErrorClass::Trap);
}

#[tokio::test]
async fn the_deadline_stops_an_endless_loop() {
    let dir = misbehave_plugin("fuel = 1_000_000_000_000_000\ntimeout_ms = 200");
    let host = host_with(&dir).await;
    let err = call(&host, "spin", json!({})).await.unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::DeadlineExceeded, "{err}");
}

#[tokio::test]
async fn the_memory_limit_stops_a_memory_hog() {
    let dir = misbehave_plugin("memory_mb = 16");
    let host = host_with(&dir).await;
    call(&host, "grow", json!({"mb": 2})).await.unwrap();
    let err = call(&host, "grow", json!({"mb": 64})).await.unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::MemoryLimit, "{err}");
}

#[tokio::test]
async fn the_table_limit_stops_a_table_growth_bomb() {
    let dir = misbehave_plugin("");
    let host = host_with(&dir).await;
    // Growth within the limit (100,000 elements per table) is fine...
    call(&host, "grow-table", json!({"elements": 20_000}))
        .await
        .unwrap();
    // ...past it, the limiter refuses, the guest aborts, and the call ends
    // as a memory limit, not as an anonymous trap.
    let err = call(&host, "grow-table", json!({"elements": 4_000_000}))
        .await
        .unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::MemoryLimit, "{err}");
    call(&host, "echo", json!({})).await.unwrap();
}

#[tokio::test]
async fn results_over_a_mebibyte_are_measured_against_the_output_limit() {
    // Regression: hostcall fuel (1 MiB) also bounds returned results, so a
    // 1.5 MiB result used to trap instead of being checked against the limit.
    let dir = misbehave_plugin("max_output_kb = 2048");
    let host = host_with(&dir).await;
    let ok = call(&host, "big-output", json!({"bytes": 1_500_000}))
        .await
        .unwrap();
    assert_eq!(ok.output["data"].as_str().unwrap().len(), 1_500_000);
    let err = call(&host, "big-output", json!({"bytes": 3_000_000}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::OutputTooLarge {
                limit: 2_097_152,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn deep_recursion_overflows_the_guest_stack_not_the_host() {
    let dir = misbehave_plugin("");
    let host = host_with(&dir).await;
    call(&host, "recurse", json!({"depth": 100})).await.unwrap();
    let err = call(&host, "recurse", json!({"depth": 100_000_000}))
        .await
        .unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::GuestTrap, "{err}");
}

#[tokio::test]
async fn guest_log_flood_of_empty_lines_is_bounded() {
    // Empty lines cost no log bytes, so only a bound on their count keeps
    // them from growing the host (millions of them took gigabytes).
    let dir = misbehave_plugin("timeout_ms = 30_000");
    let host = host_with(&dir).await;
    let flood = call(&host, "log-flood", json!({"lines": 200_000, "size": 0}))
        .await
        .unwrap();
    // The default bound: 1,000 lines.
    assert_eq!(flood.logs.len(), 1_000);
    assert_eq!(flood.logs_dropped, 199_000);

    // The operator's `log_max_lines` sets the bound.
    let policy = airlock_host::Policy {
        log_max_lines: Some(10),
        ..airlock_host::Policy::default()
    };
    let host = Host::new(HostConfig::default().policy(policy)).unwrap();
    host.load_plugin(dir.path()).await.unwrap();
    let flood = call(&host, "log-flood", json!({"lines": 5_000, "size": 0}))
        .await
        .unwrap();
    assert_eq!(flood.logs.len(), 10);
    assert_eq!(flood.logs_dropped, 4_990);
}

#[tokio::test]
async fn a_guest_looping_on_host_calls_is_stopped_and_its_log_stays_bounded() {
    let dir = misbehave_plugin("fuel = 20_000_000\ntimeout_ms = 10_000");
    let host = host_with(&dir).await;
    let err = call(&host, "log-loop", json!({})).await.unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::FuelExhausted, "{err}");

    let dir = misbehave_plugin("fuel = 1_000_000_000_000_000\ntimeout_ms = 300");
    let host = host_with(&dir).await;
    let err = call(&host, "log-loop", json!({})).await.unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::DeadlineExceeded, "{err}");
}

/// Every runaway kind, all at once on one host, while well-behaved calls
/// keep succeeding.
#[tokio::test]
async fn misbehaving_calls_do_not_stop_concurrent_good_ones() {
    let dir = misbehave_plugin("fuel = 1_000_000_000_000\ntimeout_ms = 1_500\nmemory_mb = 32");
    let host = std::sync::Arc::new(host_with(&dir).await);
    let bad: Vec<_> = [
        ("spin", json!({})),
        ("log-loop", json!({})),
        ("grow", json!({"mb": 512})),
        ("grow-table", json!({"elements": 4_000_000})),
        ("recurse", json!({"depth": 100_000_000})),
        ("panic", json!({})),
        ("big-output", json!({"bytes": 40_000_000})),
    ]
    .into_iter()
    .map(|(tool, args)| {
        let host = host.clone();
        tokio::spawn(async move { (tool, call(&host, tool, args).await) })
    })
    .collect();
    for i in 0..20 {
        let ok = call(&host, "echo", json!({"i": i})).await.unwrap();
        assert_eq!(ok.output["i"], i);
    }
    for task in bad {
        let (tool, result) = task.await.unwrap();
        let err = result.unwrap_err();
        let expected = match tool {
            "spin" | "log-loop" => "deadline_exceeded",
            "grow" | "grow-table" => "memory_limit",
            "big-output" => "memory_limit",
            _ => "guest_trap",
        };
        assert_eq!(err.kind(), expected, "{tool}: {err}");
    }
}

#[tokio::test]
async fn one_gigantic_host_call_hits_the_host_data_limit() {
    // Host-call data is capped at twice the output limit (here 2 MiB).
    let dir = misbehave_plugin("max_output_kb = 1024");
    let host = host_with(&dir).await;
    let err = call(&host, "log-flood", json!({"lines": 1, "size": 3_000_000}))
        .await
        .unwrap_err();
    assert_eq!(trap_kind(&err), TrapKind::HostDataLimit, "{err}");
    assert_eq!(err.kind(), "host_data_limit");
    call(&host, "echo", json!({})).await.unwrap();
}

#[tokio::test]
async fn a_trap_does_not_poison_later_calls() {
    let dir = misbehave_plugin("");
    let host = host_with(&dir).await;
    call(&host, "panic", json!({})).await.unwrap_err();
    let ok = call(&host, "echo", json!({"still": "alive"}))
        .await
        .unwrap();
    assert_eq!(ok.output["still"], "alive");
}

#[tokio::test]
async fn wrong_world() {
    let dir = install("other", &read(WRONG_WORLD), "[[tools]]\nname = \"run\"\n");
    let host = Host::new(HostConfig::default()).unwrap();
    let err = host.load_plugin(dir.path()).await.unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("airlock:plugin/tools"), "{err}");
}

#[tokio::test]
async fn bad_schema() {
    for tool in ["broken", "not-object"] {
        let dir = install(
            "bad",
            &read(BAD_SCHEMA),
            &format!("[[tools]]\nname = \"{tool}\"\n"),
        );
        let host = Host::new(HostConfig::default()).unwrap();
        let err = host.load_plugin(dir.path()).await.unwrap_err();
        let LoadError::InvalidToolList { reason, .. } = &err else {
            panic!("{err}")
        };
        assert!(reason.contains(tool), "{reason}");
    }
}

#[tokio::test]
async fn dup_tools() {
    let dir = install("dup", &read(DUP_TOOLS), "[[tools]]\nname = \"twin\"\n");
    let host = Host::new(HostConfig::default()).unwrap();
    let err = host.load_plugin(dir.path()).await.unwrap_err();
    let LoadError::InvalidToolList { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("exported twice"), "{reason}");
}

/// A description with terminal control sequences loads as given (it is
/// the plugin's text; JSON and the console escape it): what prints it to a
/// terminal escapes it (`tools_list_shows_a_plugins_control_sequences_escaped`
/// in the CLI's tests).
#[tokio::test]
async fn loud_list() {
    let dir = install("loud", &read(LOUD_LIST), "[[tools]]\nname = \"shout\"\n");
    let host = Host::new(HostConfig::default()).unwrap();
    let plugin = host.load_plugin(dir.path()).await.unwrap();
    let description = plugin.tools().next().unwrap().description();
    assert!(
        description.contains("\u{1b}]0;owned\u{7}"),
        "{description:?}"
    );
}

#[tokio::test]
async fn one_plugin_cannot_hold_every_instance_slot_of_the_pool() {
    // A pool of two instances: each plugin may hold one. `hog`'s calls
    // spin for 4 s; `good`'s wait at most 1 s for a slot.
    let plugin = |name: &str, limits: &str| {
        install(
            name,
            &read(MISBEHAVE),
            &format!(
                "[capabilities]\nlog = true\n\n[limits]\n{limits}\n\n[[tools]]\nname = \"spin\"\nrisk = \"read\"\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n"
            ),
        )
    };
    let hog = plugin("hog", "fuel = 1_000_000_000_000_000\ntimeout_ms = 4_000");
    let good = plugin("good", "timeout_ms = 1_000");
    let host = Host::new(HostConfig::default().max_instances(2)).unwrap();
    if !matches!(
        host.instance_allocation(),
        airlock_host::InstanceAllocation::Pooling { .. }
    ) {
        eprintln!("no instance pool on this machine; nothing to share");
        return;
    }
    host.load_plugin(hog.path()).await.unwrap();
    host.load_plugin(good.path()).await.unwrap();
    let host = std::sync::Arc::new(host);
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let host = std::sync::Arc::clone(&host);
            tokio::spawn(async move { host.call(CallRequest::new("hog/spin", "{}")).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for i in 0..3 {
        let ok = host
            .call(CallRequest::new("good/echo", json!({"i": i}).to_string()))
            .await
            .unwrap();
        assert_eq!(ok.output["i"], i);
    }
    for task in hogs {
        let err = task.await.unwrap().unwrap_err();
        assert!(
            ["deadline_exceeded", "plugin_busy"].contains(&err.kind()),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_cancelled_call_stops_the_guest_and_frees_its_slot() {
    // One instance at a time and a long deadline: a guest left spinning
    // would hold the only slot for a minute and the next call would wait
    // that long, then fail with plugin_busy.
    let dir =
        misbehave_plugin("fuel = 1_000_000_000_000_000\ntimeout_ms = 60_000\nmax_concurrency = 1");
    let host = std::sync::Arc::new(host_with(&dir).await);
    let token = tokio_util::sync::CancellationToken::new();
    let spinning = tokio::spawn({
        let host = std::sync::Arc::clone(&host);
        let request = CallRequest::new("misbehave/spin", "{}").cancel_on(token.clone());
        async move { host.call(request).await }
    });
    // Let it get going, then cancel: whether the guest had started or not,
    // the call ends as cancelled.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel();
    let err = spinning.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    let echoed = call(&host, "echo", json!({"after": "cancel"}))
        .await
        .unwrap();
    assert_eq!(echoed.output["after"], "cancel");
    // A token cancelled before the call refuses it before the guest runs.
    let cancelled = tokio_util::sync::CancellationToken::new();
    cancelled.cancel();
    let err = host
        .call(CallRequest::new("misbehave/echo", "{}").cancel_on(cancelled))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Cancelled { ran: false, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Refused);
}

/// A result nested deeper than JSON is read back (127 levels) was stored
/// in its idempotency entry, which then could not be read: every call with
/// that key failed, the ledger's sweep stopped, and the host no longer
/// started (recovery reads every entry). Results, like arguments, are
/// held to 64 levels.
#[tokio::test]
async fn results_too_deep_to_read_back_are_refused_and_the_host_restarts() {
    let data = tempfile::tempdir().unwrap();
    let dir = misbehave_plugin("");
    let open = || Host::new(HostConfig::default().data_dir(data.path())).unwrap();
    let host = open();
    host.load_plugin(dir.path()).await.unwrap();
    let deep = |depth: u64| {
        CallRequest::new("misbehave/nest", json!({ "depth": depth }).to_string())
            .idempotency_key(format!("nest-{depth}"))
    };
    let ok = host.call(deep(64)).await.unwrap();
    assert!(ok.output.is_array());
    for depth in [65, 126] {
        let err = host.call(deep(depth)).await.unwrap_err();
        assert_eq!(err.kind(), "output_invalid", "{err}");
        assert!(err.to_string().contains("nested deeper than 64"), "{err}");
    }
    // Arguments too.
    let args = format!("{{\"a\":{}{}}}", "[".repeat(64), "]".repeat(64));
    let err = host
        .call(CallRequest::new("misbehave/echo", args))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "arguments_not_json", "{err}");
    host.audit().close().unwrap();
    drop(host);
    // The ledger reads back: the host starts, and each key replays.
    let host = open();
    host.load_plugin(dir.path()).await.unwrap();
    let again = host.call(deep(64)).await.unwrap();
    assert!(again.replayed_from.is_some());
    // A result refused after the tool ran leaves its key "outcome
    // unknown" (never run twice), read back like any other.
    let err = host.call(deep(126)).await.unwrap_err();
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
}
