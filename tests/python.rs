//! The Python example plugin (`plugins/csv-stats`, a componentize-py
//! component built by `scripts/build-guests`) through the host: schema
//! validation, calls, tool errors, unexpected exceptions, fuel and memory
//! limits, and the workspace.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::OnceLock;

use airlock_host::{CallError, CallRequest, Host, HostConfig, ToolErrorKind, TrapKind};
use airlock_tests::{PYTHON_PLUGINS_DIR, PluginDir, install, read};
use serde_json::{Value, json};

const TOOLS: &str = "[[tools]]\nname = \"summarize\"\nrisk = \"read\"\n\n[[tools]]\nname = \"save\"\nrisk = \"write\"\n";

const TABLE: &str = "city,population\nOslo,709000\nBergen,291000\n";

/// The component, read once.
fn component() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| read(&format!("{PYTHON_PLUGINS_DIR}/csv-stats/csv_stats.wasm")))
}

/// One compiled-component cache for the tests here: an interpreter is a
/// large component, compiled once per run.
fn cache() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// csv-stats with `capabilities` and `limits` (TOML table bodies).
fn csv_stats(capabilities: &str, limits: &str) -> PluginDir {
    install(
        "csv-stats",
        component(),
        &format!("[capabilities]\n{capabilities}\n\n[limits]\n{limits}\n\n{TOOLS}"),
    )
}

async fn host(plugin: &PluginDir, data: &std::path::Path) -> Host {
    let host = Host::new(HostConfig::default().cache_dir(cache()).data_dir(data)).unwrap();
    host.load_plugin(plugin.path()).await.unwrap();
    host
}

async fn call(host: &Host, tool: &str, args: Value) -> Result<Value, CallError> {
    let request = CallRequest::new(format!("csv-stats/{tool}"), args.to_string());
    host.call(request).await.map(|r| r.output)
}

fn tool_error(result: Result<Value, CallError>) -> (ToolErrorKind, String) {
    match result {
        Err(CallError::Tool { kind, message, .. }) => (kind, message),
        other => panic!("expected a tool error, got {other:?}"),
    }
}

const LIMITS: &str = "fuel = 1_000_000_000\nmemory_mb = 128";
/// What the example's manifest grants (its component imports both).
const GRANTS: &str = "log = true\nworkspace = \"read-write\"";

#[tokio::test]
async fn python_tools_are_called_through_the_pipeline() {
    let data = tempfile::tempdir().unwrap();
    let plugin = csv_stats(GRANTS, LIMITS);
    let host = host(&plugin, data.path()).await;
    let out = call(&host, "summarize", json!({"csv": TABLE}))
        .await
        .unwrap();
    assert_eq!(out["rows"], 2);
    assert_eq!(out["columns"][1]["kind"], "number");
    assert_eq!(out["columns"][1]["mean"], 500000.0);
    assert_eq!(out["columns"][0]["distinct"], 2);

    // Schemas derived from the type hints: the host refuses before the
    // guest runs.
    for bad in [
        json!({"csv": TABLE, "delimeter": ";"}),
        json!({"csv": 42}),
        json!({"csv": TABLE, "columns": "city"}),
    ] {
        let err = call(&host, "summarize", bad.clone()).await.unwrap_err();
        assert_eq!(err.kind(), "arguments_invalid", "{bad}: {err}");
    }
    // The tool's own refusals keep their kind.
    let (kind, message) = tool_error(call(&host, "summarize", json!({})).await);
    assert_eq!(kind, ToolErrorKind::InvalidInput);
    assert!(message.contains("either `csv` or `saved`"), "{message}");
}

#[tokio::test]
async fn an_unexpected_python_exception_is_a_failed_tool_error_without_a_traceback() {
    let data = tempfile::tempdir().unwrap();
    let plugin = csv_stats(GRANTS, LIMITS);
    let host = host(&plugin, data.path()).await;
    // The csv module raises its own error on a cell over its field size
    // limit: the plugin does not catch it.
    let cell = "x".repeat(200_000);
    let (kind, message) = tool_error(
        call(
            &host,
            "summarize",
            json!({"csv": format!("a,b\n1,{cell}\n")}),
        )
        .await,
    );
    assert!(
        message.contains("field larger than field limit"),
        "{message}"
    );
    assert_eq!(kind, ToolErrorKind::Failed);
    assert!(message.starts_with("unexpected "), "{message}");
    assert!(!message.contains("Traceback"), "{message}");
    assert!(!message.contains(".py"), "{message}");
}

#[tokio::test]
async fn python_calls_run_out_of_fuel() {
    let data = tempfile::tempdir().unwrap();
    // Enough to load (the interpreter lists its tools) and for a small
    // table, not for 20,000 rows (about 600 million instructions).
    let plugin = csv_stats(GRANTS, "fuel = 50_000_000\nmemory_mb = 128");
    let host = host(&plugin, data.path()).await;
    call(&host, "summarize", json!({"csv": TABLE}))
        .await
        .unwrap();
    let rows: String = (0..20_000).map(|i| format!("{i},{}\n", i * 7)).collect();
    let err = call(&host, "summarize", json!({"csv": format!("a,b\n{rows}")}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Trap {
                kind: TrapKind::FuelExhausted,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn python_calls_hit_the_memory_limit() {
    let data = tempfile::tempdir().unwrap();
    let plugin = csv_stats(
        GRANTS,
        "fuel = 20_000_000_000\ntimeout_ms = 60_000\nmemory_mb = 24",
    );
    let host = host(&plugin, data.path()).await;
    call(&host, "summarize", json!({"csv": TABLE}))
        .await
        .unwrap();
    // A table that fits in the arguments (under 1 MiB) but not, parsed into
    // Python objects, in the plugin's 24 MiB: the interpreter's allocation
    // fails (a `MemoryError`, reported as `failed`) or the growth traps.
    let rows: String = (0..75_000).map(|i| format!("{i},x{i}\n")).collect();
    let err = call(&host, "summarize", json!({"csv": format!("a,b\n{rows}")}))
        .await
        .unwrap_err();
    match &err {
        CallError::Trap {
            kind: TrapKind::MemoryLimit,
            ..
        } => {}
        CallError::Tool {
            kind: ToolErrorKind::Failed,
            message,
            ..
        } => assert!(message.contains("MemoryError"), "{message}"),
        other => panic!("expected the memory limit, got {other:?}"),
    }
}

#[tokio::test]
async fn python_plugins_keep_tables_in_the_workspace() {
    let data = tempfile::tempdir().unwrap();
    let plugin = csv_stats(GRANTS, LIMITS);
    let host = host(&plugin, data.path()).await;
    let saved = call(&host, "save", json!({"name": "cities", "csv": TABLE}))
        .await
        .unwrap();
    assert_eq!(saved["rows"], 2);
    assert!(
        saved["ref"].as_str().unwrap().starts_with("sha256:"),
        "{saved}"
    );
    let out = call(&host, "summarize", json!({"saved": "cities"}))
        .await
        .unwrap();
    assert_eq!(out["rows"], 2);
    let (kind, message) = tool_error(call(&host, "summarize", json!({"saved": "towns"})).await);
    assert_eq!(kind, ToolErrorKind::InvalidInput, "{message}");

    // Read-only: the write is refused by the host, reported by the SDK.
    let data = tempfile::tempdir().unwrap();
    let plugin = csv_stats("log = true\nworkspace = \"read-only\"", LIMITS);
    let host = self::host(&plugin, data.path()).await;
    let (kind, message) =
        tool_error(call(&host, "save", json!({"name": "cities", "csv": TABLE})).await);
    assert_eq!(kind, ToolErrorKind::Failed);
    assert!(message.contains("read-only"), "{message}");
}

#[tokio::test]
async fn a_python_plugin_without_the_workspace_grant_does_not_import_it() {
    // Built with `workspace` granted, the component imports it: loading it
    // without the grant is refused, naming the manifest key.
    let plugin = csv_stats("log = true", LIMITS);
    let host = Host::new(HostConfig::default().cache_dir(cache())).unwrap();
    let loaded = host.load_plugin(plugin.path()).await;
    let err = loaded.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), "capability_not_granted", "{err}");
}
