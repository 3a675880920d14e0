//! The workspace against a real plugin (`notes`) and the real store: scoping,
//! persistence, read-only grants, quotas, bad refs and sessions, and grants.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use airlock_host::{
    CallError, CallRequest, Capability, Host, HostConfig, LoadError, Policy, ToolErrorKind,
};
use airlock_tests::{PLUGINS_DIR, PluginDir, install, read};
use serde_json::{Value, json};

const TOOLS: &str = "[[tools]]\nname = \"add\"\nrisk = \"write\"\n\n[[tools]]\nname = \"get\"\nrisk = \"read\"\n\n[[tools]]\nname = \"list\"\nrisk = \"read\"\n\n[[tools]]\nname = \"archive\"\nrisk = \"write\"\n\n[[tools]]\nname = \"read-archive\"\nrisk = \"read\"\n";

/// The notes plugin with `capabilities` and `limits` (TOML table bodies).
fn notes(capabilities: &str, limits: &str) -> PluginDir {
    install(
        "notes",
        &read(&format!("{PLUGINS_DIR}/notes/notes.wasm")),
        &format!("[capabilities]\n{capabilities}\n\n[limits]\n{limits}\n\n{TOOLS}"),
    )
}

async fn host_with(config: HostConfig, plugin: &PluginDir) -> Result<Host, LoadError> {
    let host = Host::new(config).unwrap();
    host.load_plugin(plugin.path()).await?;
    Ok(host)
}

async fn call(
    host: &Host,
    tool: &str,
    args: Value,
    session: Option<&str>,
) -> Result<Value, CallError> {
    let mut request = CallRequest::new(format!("notes/{tool}"), args.to_string());
    if let Some(s) = session {
        request = request.session(s);
    }
    host.call(request).await.map(|r| r.output)
}

fn tool_failure(result: Result<Value, CallError>) -> String {
    match result {
        Err(CallError::Tool {
            kind: ToolErrorKind::Failed,
            message,
            ..
        }) => message,
        other => panic!("expected a failed tool error, got {other:?}"),
    }
}

fn note(title: &str, body: &str) -> Value {
    json!({"title": title, "body": body})
}

#[tokio::test]
async fn notes_persist_across_hosts_and_stay_in_their_session() {
    let data = tempfile::tempdir().unwrap();
    let plugin = notes("workspace = \"read-write\"", "");
    {
        let host = host_with(HostConfig::default().data_dir(data.path()), &plugin)
            .await
            .unwrap();
        call(&host, "add", note("Plan", "ship it"), Some("alice"))
            .await
            .unwrap();
        call(&host, "add", note("Shared", "no session"), None)
            .await
            .unwrap();
    }
    let host = host_with(HostConfig::default().data_dir(data.path()), &plugin)
        .await
        .unwrap();
    let got = call(&host, "get", json!({"title": "plan"}), Some("alice"))
        .await
        .unwrap();
    assert_eq!(got["body"], "ship it");
    // Another session, and calls without one, do not see alice's notes.
    for session in [Some("bob"), None] {
        let err = call(&host, "get", json!({"title": "plan"}), session)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CallError::Tool {
                    kind: ToolErrorKind::InvalidInput,
                    ..
                }
            ),
            "{err}"
        );
    }
    let listed = call(&host, "list", json!({}), None).await.unwrap();
    assert_eq!(listed, json!([{"title": "Shared", "tags": []}]));
    let usage = host.workspace().usage("notes").unwrap();
    assert_eq!(usage.keys, 2);
}

#[tokio::test]
async fn a_read_only_grant_reads_but_refuses_writes() {
    let data = tempfile::tempdir().unwrap();
    let writer = notes("workspace = \"read-write\"", "");
    {
        let host = host_with(HostConfig::default().data_dir(data.path()), &writer)
            .await
            .unwrap();
        call(&host, "add", note("Kept", "x"), None).await.unwrap();
    }
    let reader = notes("workspace = \"read-only\"", "");
    let host = host_with(HostConfig::default().data_dir(data.path()), &reader)
        .await
        .unwrap();
    assert_eq!(
        call(&host, "get", json!({"title": "Kept"}), None)
            .await
            .unwrap()["body"],
        "x"
    );
    let message = tool_failure(call(&host, "add", note("New", "y"), None).await);
    assert!(message.contains("read-only"), "{message}");
    assert_eq!(host.workspace().usage("notes").unwrap().keys, 1);
}

#[tokio::test]
async fn quotas_refuse_the_write_that_would_exceed_them() {
    let plugin = notes("workspace = \"read-write\"", "workspace_keys = 2");
    let host = host_with(HostConfig::default(), &plugin).await.unwrap();
    call(&host, "add", note("One", "1"), None).await.unwrap();
    call(&host, "add", note("Two", "2"), None).await.unwrap();
    let message = tool_failure(call(&host, "add", note("Three", "3"), None).await);
    assert!(
        message.contains("quota exceeded") && message.contains("workspace_keys"),
        "{message}"
    );
    // Replacing an existing note is not a new key.
    call(&host, "add", note("One", "uno"), None).await.unwrap();

    let plugin = notes("workspace = \"read-write\"", "workspace_mb = 1");
    let host = host_with(HostConfig::default(), &plugin).await.unwrap();
    let body = "x".repeat(60 * 1024);
    let mut failure = None;
    for i in 0..40 {
        if let Err(e) = call(&host, "add", note(&format!("n{i}"), &body), None).await {
            failure = Some(e);
            break;
        }
    }
    let message = tool_failure(Err(failure.expect("the byte quota never refused")));
    assert!(message.contains("workspace_mb"), "{message}");
    assert!(host.workspace().usage("notes").unwrap().bytes <= 1024 * 1024);
}

#[tokio::test]
async fn blobs_round_trip_and_bad_refs_are_refused() {
    let plugin = notes("workspace = \"read-write\"", "");
    let host = host_with(HostConfig::default(), &plugin).await.unwrap();
    call(&host, "add", note("A", "alpha"), None).await.unwrap();
    let archived = call(&host, "archive", json!({}), None).await.unwrap();
    let reference = archived["ref"].as_str().unwrap().to_owned();
    assert!(reference.starts_with("sha256:"), "{reference}");
    let back = call(&host, "read-archive", json!({"ref": reference}), None)
        .await
        .unwrap();
    assert_eq!(back[0]["body"], "alpha");
    let message = tool_failure(
        call(
            &host,
            "read-archive",
            json!({"ref": "sha256:not-hex"}),
            None,
        )
        .await,
    );
    assert!(message.contains("blob ref"), "{message}");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let err = call(&host, "read-archive", json!({"ref": unknown}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Tool {
                kind: ToolErrorKind::InvalidInput,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_workspace_is_a_capability_like_any_other() {
    // Imported but not granted: the load fails, naming the key.
    let plugin = notes("", "");
    let err = host_with(HostConfig::default(), &plugin).await.unwrap_err();
    match &err {
        LoadError::CapabilityNotGranted {
            interface, hint, ..
        } => {
            assert!(
                interface.starts_with("airlock:plugin/workspace"),
                "{interface}"
            );
            assert!(hint.contains("capabilities.workspace"), "{hint}");
        }
        other => panic!("expected CapabilityNotGranted, got {other}"),
    }
    // Forbidden by the operator.
    let plugin = notes("workspace = \"read-write\"", "");
    let policy = Policy {
        forbid: [Capability::Workspace].into(),
        ..Policy::default()
    };
    let err = host_with(HostConfig::default().policy(policy), &plugin)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::CapabilityDenied { capability, .. } if capability == "capabilities.workspace"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_session_key_is_refused_before_the_call_runs() {
    let plugin = notes("workspace = \"read-write\"", "");
    let host = host_with(HostConfig::default(), &plugin).await.unwrap();
    for session in ["", "a\nb", &"s".repeat(200)] {
        let err = call(&host, "add", note("X", "y"), Some(session))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_session", "{session:?}: {err}");
    }
    assert_eq!(host.workspace().usage("notes").unwrap().keys, 0);
}

/// A workspace store that holds every `get`, or every `set` of a value
/// containing a marker, until the test lets it go: a PostgreSQL store under
/// a slow network, made certain.
#[derive(Debug)]
struct HeldStore {
    inner: std::sync::Arc<dyn airlock_host::store::WorkspaceStore>,
    gate: Gate,
    held: Held,
}

/// Which operations a [`HeldStore`] holds.
#[derive(Debug, Clone, Copy)]
enum Held {
    Gets,
    SetsContaining(&'static str),
}

/// How many `get`s reached the store, whether they may go on, and the
/// condition both are told by.
type Gate = std::sync::Arc<(std::sync::Mutex<(usize, bool)>, std::sync::Condvar)>;

impl HeldStore {
    fn wait(&self) {
        let (lock, changed) = &*self.gate;
        let mut state = lock.lock().unwrap();
        state.0 += 1;
        changed.notify_all();
        while !state.1 {
            state = changed.wait(state).unwrap();
        }
    }
}

impl airlock_host::store::WorkspaceStore for HeldStore {
    fn get(
        &self,
        plugin: &str,
        owner: &airlock_host::store::KeyOwner,
        key: &str,
    ) -> airlock_host::store::Result<Option<Vec<u8>>> {
        if matches!(self.held, Held::Gets) {
            self.wait();
        }
        self.inner.get(plugin, owner, key)
    }
    fn set(
        &self,
        plugin: &str,
        owner: &airlock_host::store::KeyOwner,
        key: &str,
        value: &[u8],
        quota: airlock_host::store::Quota,
    ) -> Result<(), airlock_host::store::WorkspaceError> {
        if let Held::SetsContaining(marker) = self.held
            && value.windows(marker.len()).any(|w| w == marker.as_bytes())
        {
            self.wait();
        }
        self.inner.set(plugin, owner, key, value, quota)
    }
    fn delete(
        &self,
        plugin: &str,
        owner: &airlock_host::store::KeyOwner,
        key: &str,
    ) -> airlock_host::store::Result<bool> {
        self.inner.delete(plugin, owner, key)
    }
    fn list_keys(
        &self,
        plugin: &str,
        owner: &airlock_host::store::KeyOwner,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> airlock_host::store::Result<Vec<String>> {
        self.inner
            .list_keys(plugin, owner, prefix, start_after, limit)
    }
    fn put_blob(
        &self,
        plugin: &str,
        hash: &[u8; 32],
        data: &[u8],
        quota: airlock_host::store::Quota,
    ) -> Result<(), airlock_host::store::WorkspaceError> {
        self.inner.put_blob(plugin, hash, data, quota)
    }
    fn get_blob(
        &self,
        plugin: &str,
        hash: &[u8; 32],
    ) -> airlock_host::store::Result<Option<Vec<u8>>> {
        self.inner.get_blob(plugin, hash)
    }
    fn usage(&self, plugin: &str) -> airlock_host::store::Result<airlock_host::store::Usage> {
        self.inner.usage(plugin)
    }
    fn plugins(&self) -> airlock_host::store::Result<Vec<(String, airlock_host::store::Usage)>> {
        self.inner.plugins()
    }
    fn entries(
        &self,
        plugin: &str,
    ) -> airlock_host::store::Result<Vec<airlock_host::store::KeyEntry>> {
        self.inner.entries(plugin)
    }
    fn blobs(&self, plugin: &str) -> airlock_host::store::Result<Vec<([u8; 32], usize)>> {
        self.inner.blobs(plugin)
    }
    fn flush(&self) -> airlock_host::store::Result<()> {
        self.inner.flush()
    }
}

/// A host whose workspace store holds every `get` at `gate` (see
/// [`HeldStore`]) until the test opens it, and `timeout_ms` for the notes
/// plugin's calls.
async fn host_held_at(gate: &Gate, timeout_ms: u64) -> (std::sync::Arc<Host>, tempfile::TempDir) {
    host_holding(gate, Held::Gets, &format!("timeout_ms = {timeout_ms}")).await
}

/// A host whose workspace store holds `held` operations at `gate`, with
/// `limits` for the notes plugin.
async fn host_holding(
    gate: &Gate,
    held: Held,
    limits: &str,
) -> (std::sync::Arc<Host>, tempfile::TempDir) {
    use std::sync::Arc;
    let memory = airlock_host::store::Stores::memory();
    let stores = airlock_host::store::Stores {
        workspace: Arc::new(HeldStore {
            inner: memory.workspace.clone(),
            gate: Arc::clone(gate),
            held,
        }),
        ..memory
    };
    let data = tempfile::tempdir().unwrap();
    let plugin = notes("workspace = \"read-write\"", limits);
    let host = host_with(
        HostConfig::default()
            .data_dir(data.path())
            .store(airlock_host::StoreConfig::Custom(stores)),
        &plugin,
    )
    .await
    .unwrap();
    (Arc::new(host), data)
}

/// Lets every `get` held at `gate` go on.
fn open_gate(gate: &Gate) {
    let (lock, changed) = &**gate;
    lock.lock().unwrap().1 = true;
    changed.notify_all();
}

/// Workspace host calls wait on the store off the async worker: with both
/// workers of a two-worker runtime inside guests waiting on a slow store,
/// another call still runs (a guest looping over `get` against a slow
/// PostgreSQL store held the worker, and with it every call queued there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_a_slow_workspace_store_do_not_hold_the_workers() {
    use std::sync::Arc;
    let gate: Gate = Arc::default();
    let (host, _data) = host_held_at(&gate, 30_000).await;
    host.load_plugin(format!("{PLUGINS_DIR}/text"))
        .await
        .unwrap();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let host = Arc::clone(&host);
            tokio::spawn(async move { call(&host, "get", json!({"title": "t"}), None).await })
        })
        .collect();
    // Both calls are inside the store, each on a worker.
    loop {
        if gate.0.lock().unwrap().0 >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let other = {
        let host = Arc::clone(&host);
        tokio::spawn(async move {
            host.call(CallRequest::new("text/slugify", r#"{"text":"Still Here"}"#))
                .await
                .map(|r| r.output)
        })
    };
    let answered = tokio::time::timeout(std::time::Duration::from_secs(20), other).await;
    open_gate(&gate);
    let answered = answered.expect("a call waited for the workers held by the store");
    assert_eq!(answered.unwrap().unwrap()["slug"], "still-here");
    // Released, they finish: there is no such note.
    for call in held {
        assert!(matches!(
            call.await.unwrap(),
            Err(CallError::Tool {
                kind: ToolErrorKind::InvalidInput,
                ..
            })
        ));
    }
}

/// A guest waiting in a workspace host call is abandoned at the call's
/// deadline: the call waited for the store's own timeout instead (for
/// PostgreSQL, the pool's wait, a connection and statements: seconds past
/// a deadline of one), since a blocking host call cannot be interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_the_workspace_store_ends_at_its_deadline() {
    use std::sync::Arc;
    let gate: Gate = Arc::default();
    let (host, _data) = host_held_at(&gate, 1_000).await;
    // On a task of its own, so that this one can give up on it.
    let calling = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { call(&host, "get", json!({"title": "t"}), None).await })
    };
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), calling).await;
    let entered = gate.0.lock().unwrap().0;
    open_gate(&gate);
    let err = ended
        .expect("the call waited for the store past its deadline")
        .unwrap()
        .unwrap_err();
    assert_eq!(entered, 1, "the guest was inside the store");
    let CallError::Trap { kind, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*kind, airlock_host::TrapKind::DeadlineExceeded, "{err}");
}

/// Opens its gate when dropped: a test that fails with an operation held
/// would otherwise hang (the runtime waits for its blocking threads).
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        open_gate(&self.0);
    }
}

/// Waits until `n` operations have reached the store held at `gate`.
async fn entered(gate: &Gate, n: usize) {
    while gate.0.lock().unwrap().0 < n {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A call stopped while its `set` waits on a slow store (cancelled, or at
/// its deadline): the write finishes on its thread after the call ended,
/// and a later call's write of the same key used to land first and be
/// undone by it. The later write now waits for the abandoned one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_abandoned_with_its_call_does_not_undo_a_later_one() {
    use std::sync::Arc;
    let gate: Gate = Arc::default();
    let (host, _data) = host_holding(&gate, Held::SetsContaining("first"), "").await;
    let _open = OpenOnDrop(Arc::clone(&gate));
    let stop = tokio_util::sync::CancellationToken::new();
    let first = {
        let host = Arc::clone(&host);
        let request =
            CallRequest::new("notes/add", note("T", "first").to_string()).cancel_on(stop.clone());
        tokio::spawn(async move { host.call(request).await })
    };
    entered(&gate, 1).await;
    stop.cancel();
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    // The abandoned `set` is still on its thread, held by the store.
    let mut second = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { call(&host, "add", note("T", "second"), None).await })
    };
    // Before the fix the second call wrote at once and finished; now it
    // waits for the first write (which cannot end before the gate opens).
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut second).await;
    open_gate(&gate);
    assert!(
        early.is_err(),
        "a later write of the key went ahead of the abandoned one"
    );
    second.await.unwrap().unwrap();
    // The abandoned write landed first (the later one waited for it to
    // end): the later one stands.
    let got = call(&host, "get", json!({"title": "T"}), None)
        .await
        .unwrap();
    assert_eq!(got["body"], "second", "a later write was undone");
}

/// The notes plugin's call slots in use, from the host's metrics.
fn slots_in_use(host: &Host) -> u64 {
    let metrics = host.metrics().unwrap();
    metrics
        .lines()
        .find(|l| l.contains("call_slots_in_use") && l.contains("plugin=\"notes\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or_else(
            || panic!("no call_slots_in_use for notes in:\n{metrics}"),
            |v| v as u64,
        )
}

/// A workspace operation left on its thread by a call that was stopped
/// keeps the call's plugin slot until it ends: a plugin's calls and their
/// leftover operations stay within `max_concurrency` together (before,
/// each stopped call freed its slot at once, and a guest behind a slow
/// store could leave any number of operations running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_operation_left_by_a_stopped_call_keeps_its_slot() {
    use std::sync::Arc;
    let gate: Gate = Arc::default();
    let (host, _data) =
        host_holding(&gate, Held::SetsContaining("held"), "max_concurrency = 1").await;
    let _open = OpenOnDrop(Arc::clone(&gate));
    let stop = tokio_util::sync::CancellationToken::new();
    let first = {
        let host = Arc::clone(&host);
        let request =
            CallRequest::new("notes/add", note("A", "held").to_string()).cancel_on(stop.clone());
        tokio::spawn(async move { host.call(request).await })
    };
    entered(&gate, 1).await;
    stop.cancel();
    assert_eq!(first.await.unwrap().unwrap_err().kind(), "cancelled");
    assert_eq!(
        slots_in_use(&host),
        1,
        "the stopped call's operation holds its slot"
    );
    // Another call waits for the slot until the operation ends.
    let mut next = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { call(&host, "add", note("B", "free"), None).await })
    };
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut next)
            .await
            .is_err(),
        "a call ran beside the stopped call's operation past max_concurrency = 1"
    );
    open_gate(&gate);
    next.await.unwrap().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while slots_in_use(&host) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
