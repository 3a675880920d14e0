//! The host runtime against real components: the example plugins, and every
//! kind of bad manifest, component and call input.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use airlock_host::{CacheStatus, CallError, CallRequest, ErrorClass, Host, HostConfig, LoadError};
use airlock_tests::{PLUGINS_DIR, PluginDir, install, install_raw, read, sha256_hex};
use serde_json::{Value, json};

/// A compiled-component cache shared by the tests that are not about the
/// cache, so each component is compiled once per test run.
fn shared_cache() -> &'static std::path::Path {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn host() -> (Host, ()) {
    let host = Host::new(HostConfig::default().cache_dir(shared_cache())).unwrap();
    (host, ())
}

async fn examples() -> (Host, ()) {
    let (host, cache) = host();
    let report = host.load_plugins_dir(PLUGINS_DIR).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    (host, cache)
}

async fn call(host: &Host, tool: &str, args: Value) -> Result<Value, CallError> {
    host.call(CallRequest::new(tool, args.to_string()))
        .await
        .map(|r| r.output)
}

fn text_component() -> Vec<u8> {
    read(&format!("{PLUGINS_DIR}/text/text.wasm"))
}

const TEXT_TOOLS: &str = "[capabilities]\nlog = true\n\n[[tools]]\nname = \"stats\"\nrisk = \"read\"\n\n[[tools]]\nname = \"slugify\"\nrisk = \"read\"\n";

// ---------------------------------------------------------------- examples

#[tokio::test]
async fn example_plugins_load_with_their_tools_and_schemas() {
    let (host, _cache) = examples().await;
    let names = host.plugin_names();
    assert_eq!(
        names,
        ["billing", "fetch", "files", "json", "notes", "text"]
    );
    for tool in host.tools() {
        let id = tool.id();
        let expected = airlock_tests::EXAMPLE_TOOLS
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, risk)| *risk);
        assert_eq!(Some(tool.risk().as_str()), expected, "{id}");
        assert_eq!(tool.input_schema()["type"], "object", "{}", tool.id());
        assert!(!tool.description().is_empty(), "{}", tool.id());
    }
    let ids: Vec<String> = host.tools().iter().map(|t| t.id().to_owned()).collect();
    for &(expected, _) in airlock_tests::EXAMPLE_TOOLS {
        assert!(
            ids.iter().any(|id| id == expected),
            "{expected} missing from {ids:?}"
        );
    }
}

#[tokio::test]
async fn text_tools_return_real_results() {
    let (host, _cache) = examples().await;
    let stats = call(&host, "text/stats", json!({"text": "one two three\nfour"}))
        .await
        .unwrap();
    assert_eq!(stats["words"], 4);
    assert_eq!(stats["lines"], 2);
    let slug = call(&host, "text/slugify", json!({"text": "Héllo, Wörld!"}))
        .await
        .unwrap();
    assert_eq!(slug["slug"], "hello-world");
    let found = call(
        &host,
        "text/regex-extract",
        json!({"pattern": r"\d+", "text": "a1 b22 c333"}),
    )
    .await
    .unwrap();
    assert_eq!(found["matches"], json!(["1", "22", "333"]), "{found}");
    // `2.0` is an integer to the host's schema check, as to JSON Schema:
    // the SDK reads it as one too, not as a type error.
    let found = call(
        &host,
        "text/regex-extract",
        json!({"pattern": r"\d+", "text": "a1 b22 c333", "max_matches": 2.0}),
    )
    .await
    .unwrap();
    assert_eq!(found["matches"], json!(["1", "22"]), "{found}");
}

#[tokio::test]
async fn json_tools_return_real_results() {
    let (host, _cache) = examples().await;
    let q = call(
        &host,
        "json/query",
        json!({"document": {"a": [10, {"b": "x"}]}, "pointer": "/a/1/b"}),
    )
    .await
    .unwrap();
    assert_eq!(q["value"], "x", "{q}");
    assert_eq!(q["found"], true, "{q}");
    let missing = call(
        &host,
        "json/query",
        json!({"document": {"a": 1}, "pointer": "/nope"}),
    )
    .await
    .unwrap();
    assert_eq!(missing["found"], false, "{missing}");
    let merged = call(
        &host,
        "json/merge-patch",
        json!({"target": {"a": 1, "b": {"c": 2, "d": 3}}, "patch": {"a": null, "b": {"c": 5}, "e": [1]}}),
    )
    .await
    .unwrap();
    assert_eq!(
        merged["result"],
        json!({"b": {"c": 5, "d": 3}, "e": [1]}),
        "{merged}"
    );
}

#[tokio::test]
async fn files_tools_read_only_their_granted_directory() {
    let (host, _cache) = examples().await;
    let listing = call(&host, "files/list", json!({"recursive": true}))
        .await
        .unwrap();
    let paths: Vec<_> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/docs/guides/limits.md"), "{paths:?}");
    let read = call(
        &host,
        "files/read",
        json!({"path": "guides/limits.md", "max_bytes": 8}),
    )
    .await
    .unwrap();
    assert_eq!(read["text"], "# Limits");
    assert_eq!(read["truncated"], true);
    let found = call(&host, "files/search", json!({"query": "APPROVAL"}))
        .await
        .unwrap();
    assert!(
        found["matches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["path"] == "/docs/guides/approvals.md"),
        "{found}"
    );
    for escape in ["../plugin.toml", "/docs/../plugin.toml", "/etc/passwd"] {
        let err = call(&host, "files/read", json!({"path": escape}))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Tool { .. }), "{escape}: {err}");
    }
}

#[tokio::test]
async fn a_tool_error_from_the_guest_is_reported_as_such() {
    let (host, _cache) = examples().await;
    let err = call(
        &host,
        "text/regex-extract",
        json!({"pattern": "(unclosed", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Tool {
                kind: airlock_host::ToolErrorKind::InvalidInput,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::ToolError);
}

#[tokio::test]
async fn second_load_uses_the_compiled_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    first.load_plugins_dir(PLUGINS_DIR).await.unwrap();
    assert!(
        first
            .plugins()
            .iter()
            .all(|p| p.cache_status() == CacheStatus::Miss)
    );
    let second = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    second.load_plugins_dir(PLUGINS_DIR).await.unwrap();
    assert!(
        second
            .plugins()
            .iter()
            .all(|p| p.cache_status() == CacheStatus::Hit)
    );
    // And the cached code really runs.
    let slug = call(&second, "text/slugify", json!({"text": "Cached Code"}))
        .await
        .unwrap();
    assert_eq!(slug["slug"], "cached-code");
}

#[tokio::test]
async fn corrupt_cache_entries_are_rebuilt_not_trusted() {
    let cache = tempfile::tempdir().unwrap();
    let plugin = install("text", &text_component(), TEXT_TOOLS);
    let first = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    first.load_plugin(plugin.path()).await.unwrap();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let second = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    let loaded = second.load_plugin(plugin.path()).await.unwrap();
    assert_eq!(loaded.cache_status(), CacheStatus::Rebuilt);
    let slug = call(&second, "text/slugify", json!({"text": "Still Works"}))
        .await
        .unwrap();
    assert_eq!(slug["slug"], "still-works");
}

/// An intact entry copied under another component's name (both compiled
/// by this host, so each passes a checksum of its own bytes): the entry
/// was run as the other plugin's code, under its tools and grants. It is
/// now refused as written for another component, and rebuilt.
#[tokio::test]
async fn a_cache_entry_under_another_components_name_is_rebuilt_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let text = format!("{PLUGINS_DIR}/text");
    let json = format!("{PLUGINS_DIR}/json");
    let first = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    first.load_plugin(&text).await.unwrap();
    first.load_plugin(&json).await.unwrap();
    let entry_of = |component: &str| {
        let name = std::path::Path::new(component).file_name().unwrap();
        let digest = sha256_hex(&read(&format!("{component}/{}.wasm", name.display())));
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&digest)
            })
            .unwrap_or_else(|| panic!("no cache entry for {component}"))
    };
    std::fs::copy(entry_of(&text), entry_of(&json)).unwrap();
    let second = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    let loaded = second.load_plugin(&json).await.unwrap();
    assert_eq!(loaded.cache_status(), CacheStatus::Rebuilt);
    let keys = call(&second, "json/keys", json!({"document": {"b": 1, "a": 2}}))
        .await
        .unwrap();
    assert_eq!(keys["keys"], json!(["a", "b"]), "{keys}");
}

/// A cache directory other users can write to is not used: whoever can
/// write an entry there can run native code in the host.
#[cfg(unix)]
#[tokio::test]
async fn a_cache_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt as _;
    let cache = tempfile::tempdir().unwrap();
    let plugin = install("text", &text_component(), TEXT_TOOLS);
    let first = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    assert_eq!(
        first
            .load_plugin(plugin.path())
            .await
            .unwrap()
            .cache_status(),
        CacheStatus::Miss
    );
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let second = Host::new(HostConfig::default().cache_dir(cache.path())).unwrap();
    let loaded = second.load_plugin(plugin.path()).await.unwrap();
    assert_eq!(loaded.cache_status(), CacheStatus::Disabled);
    let slug = call(&second, "text/slugify", json!({"text": "Compiled Afresh"}))
        .await
        .unwrap();
    assert_eq!(slug["slug"], "compiled-afresh");
}

/// A hidden directory in a plugins directory is not a plugin: `airlock
/// plugin build` stages a package beside its directory as
/// `.NAME.….partial`, and a build cut short leaves one, which was loaded
/// (sorted first, an old copy won the plugin's name over the new one).
#[tokio::test]
async fn hidden_directories_in_a_plugins_directory_are_not_loaded() {
    fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let plugins = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(PLUGINS_DIR);
    copy_tree(&source.join("text"), &plugins.path().join("text"));
    copy_tree(
        &source.join("json"),
        &plugins.path().join(".text.old.42-7.partial"),
    );
    copy_tree(
        &source.join("json"),
        &plugins.path().join(".json.42-8.partial"),
    );
    assert!(airlock_host::is_plugin_dir(&plugins.path().join("text")));
    assert!(!airlock_host::is_plugin_dir(
        &plugins.path().join(".json.42-8.partial")
    ));
    let host = Host::new(HostConfig::default().cache_dir(shared_cache())).unwrap();
    let report = host.load_plugins_dir(plugins.path()).await.unwrap();
    assert_eq!(report.loaded, vec!["text".to_owned()]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

/// A plugin's share of the instance pool that bounds nothing is refused,
/// not ignored: with no pool (`max_instances = 0`) no share applied, and
/// one larger than the pool was quietly cut to it.
#[test]
fn a_pool_share_that_bounds_nothing_is_refused() {
    for (instances, share, expect) in [
        (0, 4, "max_instances = 0 makes none"),
        (8, 9, "more than the pool's max_instances = 8"),
        (8, 0, "at least 1"),
    ] {
        let err = Host::new(
            HostConfig::default()
                .max_instances(instances)
                .max_instances_per_plugin(share),
        )
        .err()
        .unwrap_or_else(|| panic!("{instances}/{share} was accepted"));
        assert!(
            err.to_string().contains(expect),
            "{instances}/{share}: {err}"
        );
    }
    Host::new(
        HostConfig::default()
            .max_instances(8)
            .max_instances_per_plugin(8),
    )
    .unwrap();
}

// ---------------------------------------------------------------- manifests

async fn load_err(dir: &PluginDir) -> LoadError {
    let (host, _cache) = host();
    host.load_plugin(dir.path()).await.unwrap_err()
}

#[tokio::test]
async fn manifest_not_toml() {
    let err = load_err(&install_raw(&text_component(), "[plugin\nname=")).await;
    assert!(matches!(err, LoadError::ManifestSyntax { .. }), "{err}");
}

/// A manifest is read under the size a package may hold: one linked to a
/// device that never ends is refused, not read until memory runs out.
#[tokio::test]
async fn a_manifest_linked_to_an_endless_device_is_refused_by_its_size() {
    let dir = install_raw(&text_component(), "");
    let manifest = dir.path().join("plugin.toml");
    std::fs::remove_file(&manifest).unwrap();
    std::fs::write(&manifest, vec![b'#'; 64 * 1024 + 1]).unwrap();
    let err = load_err(&dir).await;
    assert!(
        matches!(&err, LoadError::ManifestSyntax { message, .. } if message.contains("limit")),
        "{err}"
    );
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &manifest).unwrap();
    let err = load_err(&dir).await;
    assert!(
        matches!(&err, LoadError::ManifestSyntax { message, .. } if message.contains("not a regular file")),
        "{err}"
    );
}

/// A held call's arguments are kept whole in its record and approval, and
/// an export's line is read back under a cap: the argument cap has a
/// ceiling in the library too, and 0 is no cap.
#[test]
fn max_argument_bytes_past_its_ceiling_or_zero_is_a_config_error() {
    for bytes in [0, airlock_host::MAX_ARGUMENT_BYTES_CEILING + 1] {
        match Host::new(HostConfig::default().max_argument_bytes(bytes)) {
            Err(airlock_host::Error::Config { message }) => {
                assert!(message.contains("max_argument_bytes"), "{message}")
            }
            Err(other) => panic!("{bytes}: {other}"),
            Ok(_) => panic!("{bytes} accepted"),
        }
    }
    Host::new(HostConfig::default().max_argument_bytes(airlock_host::MAX_ARGUMENT_BYTES_CEILING))
        .unwrap();
}

#[tokio::test]
async fn manifest_unknown_field() {
    let err = load_err(&install(
        "text",
        &text_component(),
        &format!("[limits]\nteleport = true\n\n{TEXT_TOOLS}"),
    ))
    .await;
    assert!(matches!(err, LoadError::ManifestInvalid { .. }), "{err}");
    assert!(err.to_string().contains("teleport"), "{err}");
}

#[tokio::test]
async fn manifest_missing_field() {
    let component = text_component();
    let manifest = format!(
        "[plugin]\nname = \"text\"\ncomponent = \"component.wasm\"\nsha256 = \"{}\"\n\n{TEXT_TOOLS}",
        sha256_hex(&component)
    );
    let err = load_err(&install_raw(&component, &manifest)).await;
    assert!(matches!(err, LoadError::ManifestInvalid { .. }), "{err}");
    assert!(err.to_string().contains("version"), "{err}");
}

#[tokio::test]
async fn manifest_wrong_type() {
    let err = load_err(&install(
        "text",
        &text_component(),
        &format!("[limits]\nfuel = \"a lot\"\n\n{TEXT_TOOLS}"),
    ))
    .await;
    assert!(
        err.violations().iter().any(|v| v.path == "/limits/fuel"),
        "{err}"
    );
}

#[tokio::test]
async fn manifest_duplicate_tool_name() {
    let err = load_err(&install(
        "text",
        &text_component(),
        &format!("{TEXT_TOOLS}\n[[tools]]\nname = \"stats\"\n"),
    ))
    .await;
    assert!(matches!(err, LoadError::ManifestRejected { .. }), "{err}");
}

#[tokio::test]
async fn component_file_missing() {
    let dir = install("text", &text_component(), TEXT_TOOLS);
    std::fs::remove_file(dir.path().join("component.wasm")).unwrap();
    assert!(matches!(
        load_err(&dir).await,
        LoadError::ComponentMissing { .. }
    ));
}

#[tokio::test]
async fn digest_mismatch() {
    let component = text_component();
    let manifest = format!(
        "[plugin]\nname = \"text\"\nversion = \"0.1.0\"\ncomponent = \"component.wasm\"\nsha256 = \"{}\"\n\n{TEXT_TOOLS}",
        "ab".repeat(32)
    );
    let err = load_err(&install_raw(&component, &manifest)).await;
    let LoadError::DigestMismatch { actual, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(actual, &sha256_hex(&component));
}

// ---------------------------------------------------------------- components

#[tokio::test]
async fn component_not_wasm() {
    let err = load_err(&install("junk", b"#!/bin/sh\necho not wasm\n", TEXT_TOOLS)).await;
    let LoadError::InvalidComponent { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("not a WebAssembly binary"), "{reason}");
}

#[tokio::test]
async fn component_is_a_core_module() {
    // The smallest valid core module: magic + version 1.
    let err = load_err(&install("core", b"\0asm\x01\0\0\0", TEXT_TOOLS)).await;
    let LoadError::InvalidComponent { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("core WebAssembly module"), "{reason}");
}

#[tokio::test]
async fn component_truncated() {
    let component = text_component();
    let err = load_err(&install(
        "text",
        &component[..component.len() / 2],
        TEXT_TOOLS,
    ))
    .await;
    assert!(matches!(err, LoadError::InvalidComponent { .. }), "{err}");
}

#[tokio::test]
async fn declared_tool_not_exported() {
    let err = load_err(&install(
        "text",
        &text_component(),
        &format!("{TEXT_TOOLS}\n[[tools]]\nname = \"teleport\"\n"),
    ))
    .await;
    let LoadError::ToolNotExported { tool, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(tool, "teleport");
}

#[tokio::test]
async fn exported_but_undeclared_tools_are_not_exposed() {
    let (host, _cache) = host();
    let dir = install("text", &text_component(), TEXT_TOOLS);
    let plugin = host.load_plugin(dir.path()).await.unwrap();
    assert!(
        plugin
            .undeclared_tools()
            .iter()
            .any(|t| t == "regex-extract")
    );
    let err = call(
        &host,
        "text/regex-extract",
        json!({"pattern": "a", "text": "a"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CallError::UnknownTool { .. }), "{err}");
}

#[tokio::test]
async fn the_same_plugin_twice_is_refused() {
    let (host, _cache) = host();
    let a = install("text", &text_component(), TEXT_TOOLS);
    let b = install("text", &text_component(), TEXT_TOOLS);
    host.load_plugin(a.path()).await.unwrap();
    let err = host.load_plugin(b.path()).await.unwrap_err();
    assert!(matches!(err, LoadError::DuplicatePlugin { .. }), "{err}");
}

#[tokio::test]
async fn an_unloaded_plugin_refuses_new_calls_and_can_be_loaded_again() {
    let (host, _cache) = host();
    let dir = install("text", &text_component(), TEXT_TOOLS);
    host.load_plugin(dir.path()).await.unwrap();
    let held = host.plugin("text").unwrap();
    let unloaded = host.unload_plugin("text").unwrap();
    assert!(std::sync::Arc::ptr_eq(&held, &unloaded));
    assert!(host.unload_plugin("text").is_none());
    assert!(host.plugins().is_empty() && host.tools().is_empty());
    let err = call(&host, "text/slugify", json!({"text": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unknown_plugin", "{err}");
    host.load_plugin(dir.path()).await.unwrap();
    let slug = call(&host, "text/slugify", json!({"text": "Back Again"}))
        .await
        .unwrap();
    assert_eq!(slug["slug"], "back-again");
}

#[tokio::test]
async fn a_reload_the_audit_log_cannot_record_is_not_served() {
    let (host, _cache) = host();
    let dir = install("text", &text_component(), TEXT_TOOLS);
    let first = host.load_plugin(dir.path()).await.unwrap();
    let again = host.reload_plugin(Some("text"), dir.path()).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &again));
    assert!(std::sync::Arc::ptr_eq(
        &host.plugin("text").unwrap(),
        &again
    ));
    host.audit().close().unwrap();
    let err = host
        .reload_plugin(Some("text"), dir.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "audit_unavailable", "{err}");
    assert!(host.plugin("text").is_none(), "neither version serves");
}

#[tokio::test]
async fn one_broken_plugin_does_not_stop_the_others() {
    let root = tempfile::tempdir().unwrap();
    let good = install("text", &text_component(), TEXT_TOOLS);
    copy_dir(good.path(), &root.path().join("text"));
    std::fs::create_dir(root.path().join("broken")).unwrap();
    std::fs::write(root.path().join("broken/plugin.toml"), "nonsense").unwrap();
    let (host, _cache) = host();
    let report = host.load_plugins_dir(root.path()).await.unwrap();
    assert_eq!(report.loaded, ["text"]);
    assert_eq!(report.failed.len(), 1);
    assert!(matches!(
        report.failed[0].error,
        LoadError::ManifestSyntax { .. }
    ));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

// ---------------------------------------------------------------- calls

#[tokio::test]
async fn unknown_plugin_and_tool_and_bad_reference() {
    let (host, _cache) = examples().await;
    assert!(matches!(
        call(&host, "nope/stats", json!({})).await.unwrap_err(),
        CallError::UnknownPlugin { .. }
    ));
    assert!(matches!(
        call(&host, "text/nope", json!({})).await.unwrap_err(),
        CallError::UnknownTool { .. }
    ));
    assert!(matches!(
        call(&host, "stats", json!({})).await.unwrap_err(),
        CallError::BadToolReference { .. }
    ));
}

#[tokio::test]
async fn arguments_not_json() {
    let (host, _cache) = examples().await;
    let err = host
        .call(CallRequest::new("text/stats", "{text: 'x'}"))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::ArgumentsNotJson { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Refused);
}

#[tokio::test]
async fn arguments_not_an_object() {
    let (host, _cache) = examples().await;
    for (args, found) in [
        ("[1]", "an array"),
        ("\"x\"", "a string"),
        ("null", "null"),
        ("3", "a number"),
    ] {
        let err = host
            .call(CallRequest::new("text/stats", args))
            .await
            .unwrap_err();
        let CallError::ArgumentsNotObject { found: f } = &err else {
            panic!("{err}")
        };
        assert_eq!(*f, found);
    }
}

#[tokio::test]
async fn arguments_failing_the_schema_name_every_path() {
    let (host, _cache) = examples().await;
    let err = call(
        &host,
        "json/query",
        json!({"document": 1, "pointer": 5, "extra": true}),
    )
    .await
    .unwrap_err();
    let CallError::ArgumentsInvalid { violations, .. } = &err else {
        panic!("{err}")
    };
    let paths: Vec<_> = violations.iter().map(|v| v.path.as_str()).collect();
    assert!(paths.contains(&"/pointer"), "{violations:?}");
    assert!(
        violations.iter().any(|v| v.message.contains("extra")),
        "{violations:?}"
    );
    let err = call(&host, "text/stats", json!({})).await.unwrap_err();
    assert!(
        err.violations().iter().any(|v| v.message.contains("text")),
        "{err}"
    );
}

#[tokio::test]
async fn arguments_too_large() {
    let host = Host::new(
        HostConfig::default()
            .cache_dir(shared_cache())
            .max_argument_bytes(1000),
    )
    .unwrap();
    host.load_plugins_dir(PLUGINS_DIR).await.unwrap();
    let err = call(&host, "text/stats", json!({"text": "x".repeat(2000)}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::ArgumentsTooLarge { limit: 1000, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn each_call_gets_a_fresh_identity() {
    let (host, _cache) = examples().await;
    let a = host
        .call(CallRequest::new("text/stats", r#"{"text":"a"}"#))
        .await
        .unwrap();
    let b = host
        .call(CallRequest::new("text/stats", r#"{"text":"a"}"#).trace_id("trace-1"))
        .await
        .unwrap();
    assert_ne!(a.call_id, b.call_id);
    assert_eq!(a.trace_id, a.call_id);
    assert_eq!(b.trace_id, "trace-1");
    assert!(a.fuel_used > 0);
}

fn misbehave_named(name: &str, timeout_ms: u64) -> PluginDir {
    install(
        name,
        &read(airlock_tests::MISBEHAVE),
        &format!(
            "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = {timeout_ms}\nfuel = 1_000_000_000_000_000\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n\n[[tools]]\nname = \"spin\"\nrisk = \"read\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_makes_calls_wait_then_refuses_with_host_busy() {
    let host = std::sync::Arc::new(
        Host::new(
            HostConfig::default()
                .cache_dir(shared_cache())
                .max_instances(1),
        )
        .unwrap(),
    );
    // This machine (64-bit Linux) can reserve a pool; where it cannot, the
    // host falls back to on demand and has no host-wide cap to test.
    let airlock_host::InstanceAllocation::Pooling { instances, .. } = host.instance_allocation()
    else {
        panic!(
            "expected a pooled engine, got {}",
            host.instance_allocation()
        );
    };
    assert_eq!(*instances, 1);
    let slow = misbehave_named("slow", 3_000);
    let quick = misbehave_named("quick", 300);
    host.load_plugin(slow.path()).await.unwrap();
    host.load_plugin(quick.path()).await.unwrap();

    // `slow/spin` holds the only instance slot until its deadline...
    let spinning = tokio::spawn({
        let host = std::sync::Arc::clone(&host);
        async move { host.call(CallRequest::new("slow/spin", "{}")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ...so another plugin's call waits for one until its own deadline.
    let err = host
        .call(CallRequest::new("quick/echo", r#"{"a":1}"#))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "host_busy", "{err}");
    assert_eq!(err.class(), ErrorClass::Refused);
    assert_eq!(
        spinning.await.unwrap().unwrap_err().kind(),
        "deadline_exceeded"
    );
    // The slot is back: calls run again.
    let ok = host
        .call(CallRequest::new("quick/echo", r#"{"a":1}"#))
        .await
        .unwrap();
    assert_eq!(ok.output, json!({"a": 1}));
}

#[tokio::test]
async fn without_a_pool_instances_are_allocated_on_demand() {
    let host = Host::new(
        HostConfig::default()
            .cache_dir(shared_cache())
            .max_instances(0),
    )
    .unwrap();
    let airlock_host::InstanceAllocation::OnDemand { reason } = host.instance_allocation() else {
        panic!("expected on-demand allocation");
    };
    assert!(reason.contains("max_instances = 0"), "{reason}");
    let plugin = misbehave_named("misbehave", 1_000);
    host.load_plugin(plugin.path()).await.unwrap();
    let ok = host
        .call(CallRequest::new("misbehave/echo", r#"{"b":2}"#))
        .await
        .unwrap();
    assert_eq!(ok.output, json!({"b": 2}));
}

#[tokio::test]
async fn stacks_zeroed_or_not_calls_reuse_the_pool_and_say_which() {
    for zero in [true, false] {
        let host = Host::new(
            HostConfig::default()
                .cache_dir(shared_cache())
                .max_instances(1)
                .zero_stacks(zero),
        )
        .unwrap();
        let airlock_host::InstanceAllocation::Pooling { zero_stacks, .. } =
            host.instance_allocation()
        else {
            panic!(
                "expected a pooled engine, got {}",
                host.instance_allocation()
            );
        };
        assert_eq!(*zero_stacks, zero);
        let plugin = misbehave_named("misbehave", 1_000);
        host.load_plugin(plugin.path()).await.unwrap();
        // One slot: each call runs on the stack the one before it used.
        for i in 0..3 {
            let args = format!(r#"{{"i":{i},"zero":{zero}}}"#);
            let ok = host
                .call(CallRequest::new("misbehave/echo", &args))
                .await
                .unwrap();
            assert_eq!(ok.output, json!({"i": i, "zero": zero}));
        }
    }
}

// ---------------------------------------------------------------- versions

/// A copy of example plugin `name` (subdirectories too), its manifest
/// edited by `edit`.
fn version_of(
    root: &std::path::Path,
    name: &str,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let dir = root.join(format!("{name}-{}", root.read_dir().unwrap().count()));
    copy_tree(&std::path::Path::new(PLUGINS_DIR).join(name), &dir);
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let edited = edit(text.clone());
    std::fs::write(&manifest, edited).unwrap();
    dir
}

/// `(area, subject, kind, widens)` of every change.
fn summary(diff: &airlock_host::PluginDiff) -> Vec<(String, String, String, bool)> {
    let value = serde_json::to_value(diff).unwrap();
    value["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["area"].as_str().unwrap().to_owned(),
                c["subject"].as_str().unwrap().to_owned(),
                c["kind"].as_str().unwrap().to_owned(),
                c["widens"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn change(area: &str, subject: &str, kind: &str, widens: bool) -> (String, String, String, bool) {
    (area.into(), subject.into(), kind.into(), widens)
}

#[tokio::test]
async fn plugin_diff_finds_every_widening_of_the_effective_grant() {
    let root = tempfile::tempdir().unwrap();
    let policy = airlock_host::Policy {
        env: [("REGION".to_owned(), "eu".to_owned())].into(),
        ..Default::default()
    };
    let host = Host::new(
        HostConfig::default()
            .cache_dir(shared_cache())
            .policy(policy),
    )
    .unwrap();

    // billing: workspace read-only per session -> read-write for everyone;
    // refund loses its approval and idempotency requirements; lookup's rate
    // limit loosens; an env name appears.
    let old = version_of(root.path(), "billing", |m| {
        m.replace("workspace = \"read-write\"", "workspace = \"read-only\"")
            .replace(
                "workspace_scope = \"plugin\"",
                "workspace_scope = \"session\"",
            )
            .replace(
                "name = \"lookup\"\nrisk = \"read\"",
                "name = \"lookup\"\nrisk = \"read\"\nrate_limit = \"10/min\"",
            )
    });
    let new = version_of(root.path(), "billing", |m| {
        m.replace("version = \"0.1.0\"", "version = \"0.2.0\"")
            .replace(
                "workspace_scope = \"plugin\"",
                "workspace_scope = \"plugin\"\nenv = [\"REGION\"]",
            )
            .replace("approval = \"required\"\n", "")
            .replace("idempotency = \"required\"\n", "")
            .replace(
                "name = \"lookup\"\nrisk = \"read\"",
                "name = \"lookup\"\nrisk = \"read\"\nrate_limit = \"100/min\"\nretry = { attempts = 3 }",
            )
            .replace(
                "approval_expiry_s = 900\nredact = [\"/card_last4\"]",
                "approval_expiry_s = 3600",
            )
    });
    let (old, new) = (
        host.open_plugin(&old).await.unwrap(),
        host.open_plugin(&new).await.unwrap(),
    );
    let diff = airlock_host::PluginDiff::between(&old, &new);
    let changes = summary(&diff);
    for expected in [
        change("capability", "capabilities.env", "added", true),
        change("capability", "capabilities.workspace", "widened", true),
        change(
            "capability",
            "capabilities.workspace_scope",
            "widened",
            true,
        ),
        change("env", "REGION", "added", true),
        change("approval", "refund", "removed", true),
        change("idempotency", "refund", "removed", true),
        change("rate_limit", "lookup", "raised", true),
        // Missed once: a redaction dropped (secrets then recorded in
        // clear), retries added, an approval usable for longer.
        change("redaction", "refund", "removed", true),
        change("retry", "lookup", "added", true),
        change("approval_expiry", "refund", "raised", true),
    ] {
        assert!(
            changes.contains(&expected),
            "{expected:?} not in {changes:#?}"
        );
    }
    assert!(diff.widens());
    // Backwards, none of these widen.
    let back = airlock_host::PluginDiff::between(&new, &old);
    assert!(!back.widens(), "{back}");
    assert_eq!(back.changes().len(), diff.changes().len(), "{back}");

    // A slower pace with a bigger bucket: 1000 calls at once where 10
    // went. Missed once (only the pace was compared).
    let limited = |limit: &'static str, version: &'static str| {
        version_of(root.path(), "billing", move |m| {
            m.replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
                .replace(
                    "name = \"lookup\"\nrisk = \"read\"",
                    &format!("name = \"lookup\"\nrisk = \"read\"\nrate_limit = \"{limit}\""),
                )
        })
    };
    let (per_minute, per_day) = (
        host.open_plugin(&limited("10/min", "0.3.0")).await.unwrap(),
        host.open_plugin(&limited("1000/day", "0.4.0"))
            .await
            .unwrap(),
    );
    let burst = airlock_host::PluginDiff::between(&per_minute, &per_day);
    assert!(
        summary(&burst).contains(&change("rate_limit", "lookup", "raised", true)),
        "{burst}"
    );
    assert!(burst.widens(), "{burst}");

    // fetch: one more origin. files: read-only -> read-write, then another
    // directory behind the same guest path.
    for (name, edit, expected) in [
        (
            "fetch",
            (|m: String| {
                m.replace(
                    "http = [\"https://www.rfc-editor.org\"]",
                    "http = [\"https://www.rfc-editor.org\", \"https://api.example.com\"]",
                )
            }) as fn(String) -> String,
            change("http", "https://api.example.com", "added", true),
        ),
        (
            "files",
            |m: String| m.replace("access = \"read-only\"", "access = \"read-write\""),
            change("files", "/docs", "widened", true),
        ),
    ] {
        let old = host
            .open_plugin(version_of(root.path(), name, |m| m))
            .await
            .unwrap();
        let new = host
            .open_plugin(version_of(root.path(), name, edit))
            .await
            .unwrap();
        let diff = airlock_host::PluginDiff::between(&old, &new);
        assert_eq!(summary(&diff), [expected], "{diff}");
        assert!(diff.widens());
        assert!(diff.to_string().contains("widens: yes"), "{diff}");
    }

    // The same version twice: nothing, nothing to approve.
    let diff = airlock_host::PluginDiff::between(&old, &old);
    assert!(diff.is_empty() && !diff.widens(), "{diff}");
}

/// A trusted key is trusted for any plugin name: a version signed by
/// another key than the serving one's (or no longer signed) widens, so
/// one vendor's key cannot ship another's plugin with no one deciding.
#[tokio::test]
async fn plugin_diff_finds_a_change_of_signer() {
    let root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let alice = airlock_host::generate_signing_key(&keys.path().join("alice")).unwrap();
    let mallory = airlock_host::generate_signing_key(&keys.path().join("mallory")).unwrap();
    let host = Host::new(
        HostConfig::default()
            .cache_dir(shared_cache())
            .policy(airlock_host::Policy {
                trusted_keys: [
                    ("alice".to_owned(), alice.into()),
                    ("mallory".to_owned(), mallory.into()),
                ]
                .into(),
                ..Default::default()
            }),
    )
    .unwrap();
    let signed = |by: Option<&str>, version: &str| {
        let dir = version_of(root.path(), "text", |m| {
            m.replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
        });
        if let Some(by) = by {
            let mut package = airlock_host::Package::open(&dir).unwrap();
            package.sign(&keys.path().join(by)).unwrap();
            package.write_signature(&dir).unwrap();
        }
        dir
    };
    let by_alice = host
        .open_plugin(signed(Some("alice"), "1.0.0"))
        .await
        .unwrap();
    for (by, kind, widens) in [
        (Some("mallory"), "changed", true),
        (None, "removed", true),
        (Some("alice"), "", false),
    ] {
        let new = host.open_plugin(signed(by, "1.1.0")).await.unwrap();
        let diff = airlock_host::PluginDiff::between(&by_alice, &new);
        let signer: Vec<_> = summary(&diff)
            .into_iter()
            .filter(|c| c.0 == "signer")
            .collect();
        if widens {
            assert_eq!(
                signer,
                [change("signer", "plugin.sig", kind, true)],
                "{diff}"
            );
            assert!(diff.widens(), "{diff}");
        } else {
            assert!(signer.is_empty() && !diff.widens(), "{diff}");
        }
    }
    // Gaining a signature asks nothing.
    let unsigned = host.open_plugin(signed(None, "1.0.0")).await.unwrap();
    let diff = airlock_host::PluginDiff::between(&unsigned, &by_alice);
    assert!(!diff.widens(), "{diff}");
}

/// A task calling in a loop, every call finishing at its first poll (here
/// refusals: no guest runs, so no epoch tick can make one wait), still
/// lets the other tasks on its thread run: each call counts against the
/// caller's cooperative budget, exhausted within 128 calls. (A call runs
/// exempt from the budget, so a yield never happens in the middle of one
/// while it holds a pool slot.)
#[test]
fn a_task_calling_in_a_loop_does_not_hold_its_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (host, _cache) = examples().await;
        let other_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&other_ran);
        let other = tokio::spawn(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut calls = 0;
        while !other_ran.load(std::sync::atomic::Ordering::SeqCst) && calls < 300 {
            let refused = host
                .call(CallRequest::new("text/no-such-tool", "{}"))
                .await
                .unwrap_err();
            assert!(
                matches!(refused, CallError::UnknownTool { .. }),
                "{refused:?}"
            );
            calls += 1;
        }
        assert!(
            other_ran.load(std::sync::atomic::Ordering::SeqCst),
            "the other task never ran during {calls} calls"
        );
        assert!(calls <= 129, "the other task waited {calls} calls");
        other.await.unwrap();
    });
}

/// A signed plugin's cases decide its readiness, and readiness read them
/// from disk unchecked: cases edited after the plugin loaded (so that
/// every case passes) counted, though the signature covers them. They are
/// now held to the digest the signature covers.
#[tokio::test]
async fn cases_edited_after_a_signed_plugin_loaded_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let alice = airlock_host::generate_signing_key(&keys.path().join("alice")).unwrap();
    let host = Host::new(HostConfig::default().cache_dir(shared_cache()).policy(
        airlock_host::Policy {
            trusted_keys: [("alice".to_owned(), alice.into())].into(),
            ..Default::default()
        },
    ))
    .unwrap();
    let dir = version_of(root.path(), "text", |m| m);
    let mut package = airlock_host::Package::open(&dir).unwrap();
    package.sign(&keys.path().join("alice")).unwrap();
    package.write_signature(&dir).unwrap();
    host.load_plugin(&dir).await.unwrap();
    let plugin = host.serving("text").await.unwrap().unwrap();
    let signed = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    assert_eq!(
        plugin.cases().unwrap().unwrap().len(),
        signed.lines().count()
    );
    let eval_findings = || async {
        let report = host
            .readiness(Some("text"), &airlock_host::ReadinessConfig::default())
            .await
            .unwrap()
            .remove(0);
        report
            .missing_required
            .into_iter()
            .chain(report.warnings)
            .filter(|f| f.check == airlock_host::ReadinessCheck::EvalCases)
            .map(|f| f.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(eval_findings().await, Vec::<String>::new());

    // One case that passes, in place of the signed ones.
    let first = signed.lines().next().unwrap().to_owned() + "\n";
    std::fs::write(dir.join("cases.jsonl"), &first).unwrap();
    let err = plugin.cases().unwrap_err();
    assert_eq!(err.kind(), "cases_unsigned", "{err}");
    assert!(err.to_string().contains("changed since"), "{err}");
    let findings = eval_findings().await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].contains("not the signed one"), "{findings:?}");

    std::fs::remove_file(dir.join("cases.jsonl")).unwrap();
    let err = plugin.cases().unwrap_err();
    assert!(err.to_string().contains("is gone"), "{err}");
    // As signed again: as good as before.
    std::fs::write(dir.join("cases.jsonl"), &signed).unwrap();
    assert!(plugin.cases().unwrap().is_some());
    assert_eq!(eval_findings().await, Vec::<String>::new());
}

/// A plugin with one slot whose `echo` and `spin` change the world
/// (`write`: their intents are flushed before they run).
fn single_slot_writer() -> PluginDir {
    install(
        "single",
        &read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 3000\nfuel = 1_000_000_000_000_000\nmax_concurrency = 1\n\n[[tools]]\nname = \"echo\"\nrisk = \"write\"\n\n[[tools]]\nname = \"spin\"\nrisk = \"write\"\n",
    )
}

/// A call with an idempotency key whose caller gave up while it waited
/// for a slot never ran: its key is free for the retry (it stayed in
/// flight, `idempotency_in_use`, until the process restarted), and its
/// flushed intent gets an outcome, `cancelled` (it had none until a
/// restart read it as unknown). Given up once its guest ran, the key's
/// outcome is unknown — never free for a second execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_call_given_up_before_its_guest_ran_frees_its_key() {
    use std::time::Duration;
    let host =
        std::sync::Arc::new(Host::new(HostConfig::default().cache_dir(shared_cache())).unwrap());
    let plugin = single_slot_writer();
    host.load_plugin(plugin.path()).await.unwrap();
    // `spin` holds the plugin's one slot until its deadline.
    let spinning = tokio::spawn({
        let host = std::sync::Arc::clone(&host);
        async move { host.call(CallRequest::new("single/spin", "{}")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let echo = || CallRequest::new("single/echo", r#"{"a":1}"#).idempotency_key("k-wait");
    let gave_up = tokio::time::timeout(Duration::from_millis(300), host.call(echo())).await;
    assert!(
        gave_up.is_err(),
        "the call waited for the slot: {gave_up:?}"
    );
    assert_eq!(
        spinning.await.unwrap().unwrap_err().kind(),
        "deadline_exceeded"
    );
    // The retry runs: the first attempt never did.
    let retried = host.call(echo()).await.unwrap();
    assert_eq!(retried.output, json!({"a": 1}));
    // The attempt given up has its outcome on record.
    let filter = airlock_host::audit_log::Filter {
        plugin: Some("single".into()),
        tool: Some("echo".into()),
        outcome: Some("cancelled".into()),
        ..Default::default()
    };
    let records = host.audit().query(&filter, 10).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].entry.args.is_none(), "the intent carried them");

    // Given up while its guest runs: the outcome is unknown.
    let spin = || CallRequest::new("single/spin", "{}").idempotency_key("k-run");
    let gave_up = tokio::time::timeout(Duration::from_millis(300), host.call(spin())).await;
    assert!(gave_up.is_err());
    let again = host.call(spin()).await.unwrap_err();
    assert_eq!(again.kind(), "idempotency_outcome_unknown", "{again}");
}
