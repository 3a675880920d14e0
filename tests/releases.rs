//! Installed versions, rollouts and rollbacks against the real `text`
//! plugin: versions side by side, a sticky canary split, rollback in one
//! step, upgrades that widen the grant waiting for an approver, and the
//! refusals of each release action.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

use airlock_host::audit_log::{Event, Filter};
use airlock_host::store::{ApprovalKind, ApprovalState, Rollout};
use airlock_host::{
    ApprovalPolicy, Approver, CallRequest, Error, Host, HostConfig, Package, Policy,
    ReadinessCheck, ReadinessConfig, ReleaseError, RolloutRequest, Verdict,
};
use airlock_tests::{PLUGINS_DIR, edit_materialized, sha256_hex};
use serde_json::json;

const ALICE: &str = "alice-secret-token";

fn config(data: &Path) -> HostConfig {
    HostConfig::default().data_dir(data).policy(Policy {
        approvals: ApprovalPolicy {
            approvers: vec![Approver {
                name: "alice".into(),
                token_sha256: sha256_hex(ALICE.as_bytes()),
                operator: false,
            }],
            ..ApprovalPolicy::default()
        },
        ..Policy::default()
    })
}

/// A copy of the built example plugin `plugin` as `version`, its manifest
/// edited by `edit`.
fn example_version(
    plugin: &str,
    version: &str,
    edit: impl Fn(String) -> String,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(PLUGINS_DIR).join(plugin);
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let manifest = dir.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replacen(
        "version = \"0.1.0\"",
        &format!("version = \"{version}\""),
        1,
    );
    std::fs::write(&manifest, edit(text)).unwrap();
    dir
}

/// The `text` plugin as `version`, edited by `edit`.
fn text_version(version: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    example_version("text", version, edit)
}

async fn install(host: &Host, dir: &Path) {
    let package = Package::from_dir(dir).unwrap();
    host.install(&package, "ops").await.unwrap();
}

/// The host's records of `event`, oldest first (at most 100).
fn recorded(host: &Host, event: Event) -> Vec<airlock_host::audit_log::Record> {
    host.audit()
        .query(
            &Filter {
                event: Some(event),
                ..Filter::default()
            },
            100,
        )
        .unwrap()
}

async fn version_for(host: &Host, principal: &str) -> String {
    host.call(
        CallRequest::new("text/slugify", json!({"text": "Hi there"}).to_string())
            .principal(principal),
    )
    .await
    .unwrap()
    .plugin_version
}

/// An error with its causes, as the CLI prints it.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn release_error(error: Error) -> ReleaseError {
    match error {
        Error::Release(e) => e,
        other => panic!("expected a release refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_install_side_by_side_and_a_canary_splits_callers_stickily() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let one = text_version("1.0.0", |m| m);
    let two = text_version("2.0.0", |m| m);
    install(&host, one.path()).await;
    install(&host, two.path()).await;
    // Installing the same files again changes nothing.
    let again = host
        .install(&Package::from_dir(one.path()).unwrap(), "ops")
        .await
        .unwrap();
    assert!(!again.new);
    let versions: Vec<String> = host
        .installed(Some("text"))
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, ["1.0.0", "2.0.0"]);

    // Installed is not serving: no rollout, no plugins-directory plugin.
    let unserved = host
        .call(CallRequest::new(
            "text/slugify",
            json!({"text": "x"}).to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(unserved.kind(), "unknown_plugin");

    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("text", "2.0.0", 10, "ops"))
        .await
        .unwrap();

    let mut on_canary = Vec::new();
    for i in 0..1000 {
        let principal = format!("agent-{i}");
        if version_for(&host, &principal).await == "2.0.0" {
            on_canary.push(principal);
        }
    }
    // Binomial(1000, 0.1): mean 100, standard deviation 9.5; five of them
    // either side.
    assert!(
        (53..=147).contains(&on_canary.len()),
        "{} of 1000 callers on a 10% canary",
        on_canary.len()
    );
    // Sticky: the same callers again, the same side.
    for principal in on_canary.iter().take(50) {
        assert_eq!(version_for(&host, principal).await, "2.0.0");
    }
    // Raising the share keeps everyone already on the canary.
    host.set_rollout(&RolloutRequest::new("text", "2.0.0", 50, "ops"))
        .await
        .unwrap();
    for principal in &on_canary {
        assert_eq!(version_for(&host, principal).await, "2.0.0", "{principal}");
    }

    let status = host.rollout_status("text").unwrap();
    let canary = status.versions.iter().find(|v| v.role == "canary").unwrap();
    let serving = status
        .versions
        .iter()
        .find(|v| v.role == "serving")
        .unwrap();
    assert_eq!(canary.version, "2.0.0");
    assert!(canary.calls >= on_canary.len() as u64);
    assert!(serving.calls > 0);
    assert_eq!(canary.errors, 0);

    // Rollback: one step, everyone back on 1.0.0, recorded.
    host.rollback("text", "oncall", Some("canary looks wrong"))
        .await
        .unwrap();
    for principal in on_canary.iter().take(50) {
        assert_eq!(version_for(&host, principal).await, "1.0.0");
    }
    let changes = host
        .audit()
        .query(
            &Filter {
                event: Some(Event::RolloutChanged),
                ..Filter::default()
            },
            100,
        )
        .unwrap();
    let decisions: Vec<_> = changes
        .iter()
        .map(|r| r.entry.decision.clone().unwrap())
        .collect();
    assert_eq!(decisions, ["activate", "canary", "canary", "rollback"]);
    let installs = host
        .audit()
        .query(
            &Filter {
                event: Some(Event::PluginInstalled),
                ..Filter::default()
            },
            100,
        )
        .unwrap();
    assert_eq!(installs.len(), 2, "one record per new version");

    // Nothing left to roll back to: the canary is gone and 1.0.0 had no
    // predecessor.
    let nothing = release_error(host.rollback("text", "oncall", None).await.unwrap_err());
    assert_eq!(nothing.kind(), "nothing_to_roll_back");
}

#[tokio::test]
async fn promote_then_rollback_returns_to_the_previous_version() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let one = text_version("1.0.0", |m| m);
    let two = text_version("1.0.1", |m| m);
    install(&host, one.path()).await;
    install(&host, two.path()).await;
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    let promote = release_error(host.promote("text", "ops", None).await.unwrap_err());
    assert_eq!(promote.kind(), "no_canary");
    host.set_rollout(&RolloutRequest::new("text", "1.0.1", 5, "ops"))
        .await
        .unwrap();
    let promoted = host.promote("text", "ops", None).await.unwrap();
    assert_eq!(promoted.serving, "1.0.1");
    assert_eq!(promoted.previous.as_deref(), Some("1.0.0"));
    assert_eq!(version_for(&host, "anyone").await, "1.0.1");
    host.rollback("text", "oncall", None).await.unwrap();
    assert_eq!(version_for(&host, "anyone").await, "1.0.0");
}

/// A rollback made against the change its maker saw: a second click (or a
/// page left open while someone else rolled back) went one step further
/// and served a version older than anyone meant.
#[tokio::test]
async fn a_rollback_made_against_a_change_seen_before_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let versions = [
        text_version("1.0.0", |m| m),
        text_version("2.0.0", |m| m),
        text_version("3.0.0", |m| m),
    ];
    for dir in &versions {
        install(&host, dir.path()).await;
    }
    for (version, percent) in [("1.0.0", 100), ("2.0.0", 100), ("3.0.0", 50)] {
        host.set_rollout(&RolloutRequest::new("text", version, percent, "ops"))
            .await
            .unwrap();
    }
    let seen = host.rollouts().unwrap()[0].change.id.clone();
    let stopped = host
        .rollback_if_unchanged("text", "oncall", None, &seen)
        .await
        .unwrap();
    assert_eq!(
        (stopped.serving.as_str(), stopped.canary.is_none()),
        ("2.0.0", true)
    );
    let again = release_error(
        host.rollback_if_unchanged("text", "oncall", None, &seen)
            .await
            .unwrap_err(),
    );
    assert_eq!(again.kind(), "rollout_conflict");
    assert_eq!(
        host.rollouts().unwrap()[0].serving,
        "2.0.0",
        "nothing changed"
    );
    // Against what is there now, it goes on.
    let now = host.rollouts().unwrap()[0].change.id.clone();
    host.rollback_if_unchanged("text", "oncall", None, &now)
        .await
        .unwrap();
    assert_eq!(host.rollouts().unwrap()[0].serving, "1.0.0");
}

/// A plugin store whose next rollout swap loses (as when another host's
/// change came first), once armed; and which cannot read the rollout
/// records of the plugins in `unreadable` (nor list the rollouts while
/// any is), as a store failing for its own sake.
#[derive(Debug)]
struct LosesNextSwap {
    inner: std::sync::Arc<dyn airlock_host::store::PluginStore>,
    armed: std::sync::atomic::AtomicBool,
    /// The next swap is made, and its answer lost (`false`).
    answer_lost: std::sync::atomic::AtomicBool,
    unreadable: std::sync::Mutex<Vec<&'static str>>,
}

impl LosesNextSwap {
    fn new(inner: std::sync::Arc<dyn airlock_host::store::PluginStore>) -> LosesNextSwap {
        LosesNextSwap {
            inner,
            armed: std::sync::atomic::AtomicBool::new(false),
            answer_lost: std::sync::atomic::AtomicBool::new(false),
            unreadable: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn fails(&self, plugin: Option<&str>) -> airlock_host::store::Result<()> {
        let unreadable = self.unreadable.lock().unwrap();
        let failing = match plugin {
            Some(plugin) => unreadable.contains(&plugin),
            None => !unreadable.is_empty(),
        };
        if failing {
            return Err(airlock_host::store::StoreError::new(
                airlock_host::store::ErrorKind::Unavailable,
                "the store cannot be reached",
            ));
        }
        Ok(())
    }
}

impl airlock_host::store::PluginStore for LosesNextSwap {
    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> airlock_host::store::Result<()> {
        self.inner.put_artifact(digest, bytes)
    }
    fn artifact(&self, digest: &str) -> airlock_host::store::Result<Option<Vec<u8>>> {
        self.inner.artifact(digest)
    }
    fn insert_version(
        &self,
        version: &airlock_host::store::InstalledVersion,
    ) -> airlock_host::store::Result<bool> {
        self.inner.insert_version(version)
    }
    fn version(
        &self,
        plugin: &str,
        version: &str,
    ) -> airlock_host::store::Result<Option<airlock_host::store::InstalledVersion>> {
        self.inner.version(plugin, version)
    }
    fn versions(
        &self,
        plugin: Option<&str>,
    ) -> airlock_host::store::Result<Vec<airlock_host::store::InstalledVersion>> {
        self.inner.versions(plugin)
    }
    fn version_names(
        &self,
        plugin: Option<&str>,
    ) -> airlock_host::store::Result<Vec<(String, String)>> {
        self.inner.version_names(plugin)
    }
    fn rollout(
        &self,
        plugin: &str,
    ) -> airlock_host::store::Result<Option<airlock_host::store::Versioned<Rollout>>> {
        self.fails(Some(plugin))?;
        self.inner.rollout(plugin)
    }
    fn insert_rollout(&self, rollout: &Rollout) -> airlock_host::store::Result<bool> {
        self.inner.insert_rollout(rollout)
    }
    fn replace_rollout(
        &self,
        current: airlock_host::store::Version,
        next: &Rollout,
    ) -> airlock_host::store::Result<bool> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let made = self.inner.replace_rollout(current, next)?;
        if self
            .answer_lost
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(false);
        }
        Ok(made)
    }
    fn rollouts(
        &self,
    ) -> airlock_host::store::Result<Vec<airlock_host::store::Versioned<Rollout>>> {
        self.fails(None)?;
        self.inner.rollouts()
    }
    fn rollout_names(&self) -> airlock_host::store::Result<Vec<String>> {
        self.inner.rollout_names()
    }
}

/// `text` 1.0.0 serving and 2.0.0 (a longer timeout) installed; the
/// operator's canary of 2.0.0 asked for an approval, which alice gave:
/// its id.
async fn approved_wider_upgrade(host: &Host) -> String {
    let one = text_version("1.0.0", |m| m);
    let wider = text_version("2.0.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 4_000", 1)
    });
    for dir in [&one, &wider] {
        install(host, dir.path()).await;
    }
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    let ReleaseError::ApprovalRequired { approval_id, .. } = release_error(
        host.set_rollout(&RolloutRequest::new("text", "2.0.0", 10, "ops"))
            .await
            .unwrap_err(),
    ) else {
        panic!("expected an approval request");
    };
    host.decide(&approval_id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    approval_id
}

/// An upgrade that lowers a tool's risk widens what it may do unasked:
/// every gate keyed on risk (the policy's approvals, read-only mode) lets
/// it through. It waits for an approver like any wider grant (it went
/// live at once: an `irreversible` tool relabelled `read`).
#[tokio::test]
async fn an_upgrade_that_lowers_a_tools_risk_waits_for_an_approver() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let one = text_version("1.0.0", |m| {
        m.replacen("risk = \"read\"", "risk = \"irreversible\"", 1)
    });
    let relabelled = text_version("2.0.0", |m| m);
    for dir in [&one, &relabelled] {
        install(&host, dir.path()).await;
    }
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    let waiting = release_error(
        host.set_rollout(&RolloutRequest::new("text", "2.0.0", 100, "ops"))
            .await
            .unwrap_err(),
    );
    let ReleaseError::ApprovalRequired { widens, .. } = &waiting else {
        panic!("expected an approval request, got {waiting:?}");
    };
    assert!(widens.iter().any(|w| w.contains("risk")), "{widens:?}");
    assert_eq!(version_for(&host, "agent-1").await, "1.0.0");
}

/// An upgrade approval is used up only by a change that happened: one
/// whose rollout lost its race is approved again, and the operator's
/// retry goes through with it. (It stayed consumed, naming a rollout that
/// never happened, and the retry needed a new decision.)
#[tokio::test]
async fn an_upgrade_approval_whose_rollout_lost_its_race_is_approved_again() {
    use airlock_host::StoreConfig;
    let data = tempfile::tempdir().unwrap();
    let mut stores = airlock_host::store::Stores::memory();
    let losing = std::sync::Arc::new(LosesNextSwap::new(stores.plugins.clone()));
    stores.plugins = losing.clone();
    let host = Host::new(config(data.path()).store(StoreConfig::Custom(stores))).unwrap();
    let approval_id = approved_wider_upgrade(&host).await;
    let with_it = RolloutRequest::new("text", "2.0.0", 10, "ops").approval(&approval_id);
    losing
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let lost = release_error(host.set_rollout(&with_it).await.unwrap_err());
    assert_eq!(lost.kind(), "rollout_conflict");
    let approval = host.approval(&approval_id).unwrap().unwrap();
    assert_eq!(approval.state, ApprovalState::Approved);
    assert_eq!(approval.consumed_by_call, None);
    let done = host.set_rollout(&with_it).await.unwrap();
    assert_eq!(
        done.change.approval_id.as_deref(),
        Some(approval_id.as_str())
    );
    assert_eq!(
        host.approval(&approval_id).unwrap().unwrap().state,
        ApprovalState::Consumed
    );
}

/// A change the store made but whose answer said "lost" (a backend that
/// retried it, an answer lost) is made: reported done and recorded as
/// itself, not as lost, and an upgrade approval it used stays used.
#[tokio::test]
async fn a_change_stored_though_its_answer_said_lost_is_done() {
    use airlock_host::StoreConfig;
    let data = tempfile::tempdir().unwrap();
    let mut stores = airlock_host::store::Stores::memory();
    let losing = std::sync::Arc::new(LosesNextSwap::new(stores.plugins.clone()));
    stores.plugins = losing.clone();
    let host = Host::new(config(data.path()).store(StoreConfig::Custom(stores))).unwrap();
    let approval_id = approved_wider_upgrade(&host).await;
    losing
        .answer_lost
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let with_it = RolloutRequest::new("text", "2.0.0", 10, "ops").approval(&approval_id);
    let done = host.set_rollout(&with_it).await.unwrap();
    assert_eq!(done.canary.as_ref().unwrap().version, "2.0.0");
    assert_eq!(
        host.approval(&approval_id).unwrap().unwrap().state,
        ApprovalState::Consumed
    );
    let records = host
        .audit()
        .query(
            &Filter {
                event: Some(Event::RolloutChanged),
                ..Default::default()
            },
            10,
        )
        .unwrap();
    let last = &records.last().unwrap().entry;
    assert_eq!(last.decision.as_deref(), Some("canary"), "{last:?}");
}

/// A ledger whose write of the rollout marker (made before the rollout
/// store is asked for the change) fails once when armed.
#[derive(Debug)]
struct MarkerFailsOnce {
    inner: std::sync::Arc<dyn airlock_host::store::LedgerStore>,
    armed: std::sync::atomic::AtomicBool,
}

impl airlock_host::store::LedgerStore for MarkerFailsOnce {
    fn insert_approval(
        &self,
        a: &airlock_host::store::Approval,
    ) -> airlock_host::store::Result<bool> {
        self.inner.insert_approval(a)
    }
    fn approval(
        &self,
        id: &str,
    ) -> airlock_host::store::Result<
        Option<airlock_host::store::Versioned<airlock_host::store::Approval>>,
    > {
        self.inner.approval(id)
    }
    fn replace_approval(
        &self,
        current: airlock_host::store::Version,
        next: &airlock_host::store::Approval,
    ) -> airlock_host::store::Result<bool> {
        self.inner.replace_approval(current, next)
    }
    fn remove_approval(
        &self,
        id: &str,
        current: airlock_host::store::Version,
    ) -> airlock_host::store::Result<bool> {
        self.inner.remove_approval(id, current)
    }
    fn approvals(
        &self,
        state: Option<ApprovalState>,
    ) -> airlock_host::store::Result<airlock_host::store::ApprovalListing> {
        self.inner.approvals(state)
    }
    fn key(
        &self,
        key: &airlock_host::store::KeyRef,
    ) -> airlock_host::store::Result<
        Option<airlock_host::store::Versioned<airlock_host::store::IdempotencyEntry>>,
    > {
        self.inner.key(key)
    }
    fn insert_key(
        &self,
        key: &airlock_host::store::KeyRef,
        entry: &airlock_host::store::IdempotencyEntry,
    ) -> airlock_host::store::Result<bool> {
        self.inner.insert_key(key, entry)
    }
    fn replace_key(
        &self,
        key: &airlock_host::store::KeyRef,
        current: airlock_host::store::Version,
        next: &airlock_host::store::IdempotencyEntry,
    ) -> airlock_host::store::Result<bool> {
        self.inner.replace_key(key, current, next)
    }
    fn remove_key(
        &self,
        key: &airlock_host::store::KeyRef,
        current: airlock_host::store::Version,
    ) -> airlock_host::store::Result<bool> {
        self.inner.remove_key(key, current)
    }
    fn keys(&self) -> airlock_host::store::Result<airlock_host::store::KeyListing> {
        self.inner.keys()
    }
    fn meta(&self, name: &str) -> airlock_host::store::Result<Option<String>> {
        self.inner.meta(name)
    }
    fn set_meta(&self, name: &str, value: &str) -> airlock_host::store::Result<()> {
        if name.starts_with("rollout_unrecorded/")
            && !value.is_empty()
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(airlock_host::store::StoreError::new(
                airlock_host::store::ErrorKind::Unavailable,
                "the ledger cannot be reached",
            ));
        }
        self.inner.set_meta(name, value)
    }
    fn swap_meta(
        &self,
        name: &str,
        current: Option<&str>,
        next: &str,
    ) -> airlock_host::store::Result<bool> {
        self.inner.swap_meta(name, current, next)
    }
}

/// A rollout that fails before the rollout store is asked to make it
/// (here: the ledger refuses the marker written first) has changed
/// nothing: the upgrade approval it would have used is approved again,
/// and the retry goes through with it. (It stayed consumed.)
#[tokio::test]
async fn an_upgrade_approval_whose_rollout_failed_before_the_store_is_approved_again() {
    use airlock_host::StoreConfig;
    let data = tempfile::tempdir().unwrap();
    let mut stores = airlock_host::store::Stores::memory();
    let ledger = std::sync::Arc::new(MarkerFailsOnce {
        inner: stores.ledger.clone(),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    stores.ledger = ledger.clone();
    let host = Host::new(config(data.path()).store(StoreConfig::Custom(stores))).unwrap();
    let approval_id = approved_wider_upgrade(&host).await;
    let with_it = RolloutRequest::new("text", "2.0.0", 10, "ops").approval(&approval_id);
    ledger
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = host.set_rollout(&with_it).await.unwrap_err();
    assert_eq!(failed.kind(), "ledger_unavailable", "{failed}");
    let approval = host.approval(&approval_id).unwrap().unwrap();
    assert_eq!(approval.state, ApprovalState::Approved);
    assert_eq!(approval.consumed_by_call, None);
    let rollouts = host.rollouts().unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].serving, "1.0.0");
    assert!(rollouts[0].canary.is_none(), "{rollouts:?}");
    let done = host.set_rollout(&with_it).await.unwrap();
    assert_eq!(
        done.change.approval_id.as_deref(),
        Some(approval_id.as_str())
    );
    assert_eq!(
        host.approval(&approval_id).unwrap().unwrap().state,
        ApprovalState::Consumed
    );
}

/// Rollouts read one by one (listing them failed): a record the store
/// cannot read for its own sake refuses its own plugin's calls while
/// another record reads; when none does, the store is down, and the
/// routing fails whole.
#[tokio::test]
async fn a_record_the_store_cannot_read_refuses_its_plugin_unless_none_reads() {
    use airlock_host::StoreConfig;
    let data = tempfile::tempdir().unwrap();
    let mut stores = airlock_host::store::Stores::memory();
    let faulty = std::sync::Arc::new(LosesNextSwap::new(stores.plugins.clone()));
    stores.plugins = faulty.clone();
    let host =
        || Host::new(config(data.path()).store(StoreConfig::Custom(stores.clone()))).unwrap();
    {
        let host = host();
        install(&host, text_version("1.0.0", |m| m).path()).await;
        install(&host, example_version("json", "1.0.0", |m| m).path()).await;
        for plugin in ["text", "json"] {
            host.set_rollout(&RolloutRequest::new(plugin, "1.0.0", 100, "ops"))
                .await
                .unwrap();
        }
    }
    let slugify = || CallRequest::new("text/slugify", json!({"text": "Hi"}).to_string());
    *faulty.unreadable.lock().unwrap() = vec!["json"];
    {
        let host = host();
        assert_eq!(host.call(slugify()).await.unwrap().output["slug"], "hi");
        let err = format_json(&host).await;
        assert_eq!(err.kind(), "store_unavailable", "{err}");
        let listing = host.rollout_listing().unwrap();
        assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
    }
    *faulty.unreadable.lock().unwrap() = vec!["json", "text"];
    let host = host();
    let err = host.call(slugify()).await.unwrap_err();
    assert_eq!(err.kind(), "store_unavailable", "{err}");
    assert!(host.rollout_listing().is_err());
}

#[tokio::test]
async fn an_upgrade_that_widens_the_grant_waits_for_an_approver_and_one_that_does_not_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let one = text_version("1.0.0", |m| m);
    // Narrower: a shorter deadline.
    let narrower = text_version("1.1.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 1_500", 1)
    });
    // Wider: a longer deadline.
    let wider = text_version("2.0.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 4_000", 1)
    });
    for dir in [&one, &narrower, &wider] {
        install(&host, dir.path()).await;
    }
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("text", "1.1.0", 100, "ops"))
        .await
        .expect("a narrower version needs no approval");

    let waiting = release_error(
        host.set_rollout(&RolloutRequest::new("text", "2.0.0", 10, "ops"))
            .await
            .unwrap_err(),
    );
    let ReleaseError::ApprovalRequired {
        approval_id,
        widens,
        ..
    } = &waiting
    else {
        panic!("expected an approval request, got {waiting:?}");
    };
    assert!(
        widens.iter().any(|w| w.contains("timeout_ms")),
        "{widens:?}"
    );
    assert_eq!(waiting.kind(), "upgrade_approval_pending");
    // Nothing changed meanwhile.
    assert_eq!(version_for(&host, "agent-1").await, "1.1.0");
    let approval = host.approval(approval_id).unwrap().unwrap();
    assert_eq!(approval.kind, ApprovalKind::PluginUpgrade);
    assert_eq!(approval.state, ApprovalState::Pending);

    // Asking again with the approval while it is pending: refused.
    let pending = release_error(
        host.set_rollout(&RolloutRequest::new("text", "2.0.0", 10, "ops").approval(approval_id))
            .await
            .unwrap_err(),
    );
    assert_eq!(pending.kind(), "upgrade_approval_refused");
    host.decide(
        approval_id,
        "alice",
        ALICE,
        Verdict::Approve,
        Some("reviewed the diff"),
    )
    .await
    .unwrap();

    // Approved: the same change with the approval goes through, once.
    let done = host
        .set_rollout(&RolloutRequest::new("text", "2.0.0", 10, "ops").approval(approval_id))
        .await
        .unwrap();
    assert_eq!(
        done.change.approval_id.as_deref(),
        Some(approval_id.as_str())
    );
    assert_eq!(
        host.approval(approval_id).unwrap().unwrap().state,
        ApprovalState::Consumed
    );
    // Raising the canary's share of an approved version needs no new
    // approval.
    host.set_rollout(&RolloutRequest::new("text", "2.0.0", 30, "ops"))
        .await
        .unwrap();
    // The approval cannot be used for another upgrade (or again).
    let again = release_error(
        host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops").approval(approval_id))
            .await
            .unwrap_err(),
    );
    assert_eq!(again.kind(), "upgrade_approval_refused");
}

#[tokio::test]
async fn an_approved_plugin_upgrade_cannot_be_spent_on_a_call() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let one = example_version("billing", "1.0.0", |m| m);
    let wider = example_version("billing", "2.0.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 4_000", 1)
    });
    install(&host, one.path()).await;
    install(&host, wider.path()).await;
    host.set_rollout(&RolloutRequest::new("billing", "1.0.0", 100, "agent-1"))
        .await
        .unwrap();
    // The caller asked for the upgrade (as an operator would), so the
    // approval names them as its principal: the closest a forged resume
    // can get.
    let ReleaseError::ApprovalRequired { approval_id, .. } = release_error(
        host.set_rollout(&RolloutRequest::new("billing", "2.0.0", 100, "agent-1"))
            .await
            .unwrap_err(),
    ) else {
        panic!("expected an approval request");
    };
    host.decide(&approval_id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    host.call(CallRequest::new(
        "billing/open-account",
        json!({"account": "9182", "balance_cents": 0}).to_string(),
    ))
    .await
    .unwrap();
    let refused = host
        .call(
            CallRequest::new(
                "billing/refund",
                json!({"account": "9182", "amount_cents": 5, "reason": "x"}).to_string(),
            )
            .principal("agent-1")
            .idempotency_key("k-1")
            .approval_id(&approval_id),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "approval_mismatch", "{refused}");
    assert_eq!(
        host.approval(&approval_id).unwrap().unwrap().state,
        ApprovalState::Approved,
        "the upgrade approval stays unspent"
    );
}

#[tokio::test]
async fn release_actions_refuse_what_does_not_hold_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let one = text_version("1.0.0", |m| m);
    install(&host, one.path()).await;

    let kind = |e: Error| release_error(e).kind();
    assert_eq!(
        kind(
            host.set_rollout(&RolloutRequest::new("text", "9.9.9", 100, "ops"))
                .await
                .unwrap_err()
        ),
        "version_not_installed"
    );
    assert_eq!(
        kind(
            host.set_rollout(&RolloutRequest::new("text", "1.0.0", 101, "ops"))
                .await
                .unwrap_err()
        ),
        "invalid_rollout"
    );
    assert_eq!(
        kind(
            host.set_rollout(&RolloutRequest::new("text", "1.0.0", 10, "ops"))
                .await
                .unwrap_err()
        ),
        "nothing_serves"
    );
    assert_eq!(
        kind(host.rollback("text", "ops", None).await.unwrap_err()),
        "nothing_to_roll_back"
    );
    // Who and why are bounded before anything is stored: a rollout record
    // the store could not read back would stop every call's routing.
    let mut long = RolloutRequest::new("text", "1.0.0", 100, "ops");
    long.reason = Some("x".repeat(airlock_host::MAX_CHANGE_REASON_BYTES + 1));
    let refused = host.set_rollout(&long).await.unwrap_err();
    assert_eq!(refused.kind(), "config", "{refused}");
    assert!(refused.to_string().contains("reason"), "{refused}");
    let by = "o".repeat(airlock_host::MAX_CHANGE_BY_BYTES + 1);
    let refused = host
        .set_rollout(&RolloutRequest::new("text", "1.0.0", 100, by.as_str()))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "config", "{refused}");
    let huge = "y".repeat(2 * 1024 * 1024);
    assert_eq!(
        host.rollback("text", "ops", Some(&huge))
            .await
            .unwrap_err()
            .kind(),
        "config"
    );
    assert!(host.rollouts().unwrap().is_empty(), "nothing changed");

    // Another version under a taken number, with other files: refused, and
    // 1.0.0 stays what it was. Refused before anything of it is stored
    // (each attempt's files stayed in the store, unreferenced).
    let other = text_version("1.0.0", |m| {
        m.replacen("timeout_ms = 2_000", "timeout_ms = 1_000", 1)
    });
    let conflict = host
        .install(&Package::from_dir(other.path()).unwrap(), "ops")
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), "version_taken");
    let other_manifest = sha256_hex(&std::fs::read(other.path().join("plugin.toml")).unwrap());
    let artifacts = data.path().join("installed/artifacts");
    assert!(
        artifacts
            .join(sha256_hex(
                &std::fs::read(one.path().join("plugin.toml")).unwrap()
            ))
            .exists()
    );
    assert!(
        !artifacts.join(&other_manifest).exists(),
        "the refused version's manifest was stored"
    );
    let installed = host.installed(Some("text")).unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!(
        installed[0].manifest_digest,
        sha256_hex(&std::fs::read(one.path().join("plugin.toml")).unwrap())
    );

    // A package whose component does not match its pin never installs.
    let tampered = text_version("3.0.0", |m| m);
    std::fs::write(
        tampered.path().join("text.wasm"),
        b"\0asm\x0d\0\x01\0tampered",
    )
    .unwrap();
    assert!(Package::from_dir(tampered.path()).is_err());
    assert_eq!(host.installed(Some("text")).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_changing_one_rollout_at_once_from_two_hosts_each_get_an_answer_on_the_record() {
    use airlock_host::StoreConfig;
    use airlock_host::store::Stores;
    let stores = Stores::memory();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = |data: &Path, origin: &str| {
        Host::new(
            config(data)
                .store(StoreConfig::Custom(stores.clone()))
                .origin(origin),
        )
        .unwrap()
    };
    let a = std::sync::Arc::new(host(data_a.path(), "host-a"));
    let b = std::sync::Arc::new(host(data_b.path(), "host-b"));
    for version in ["1.0.0", "1.0.1"] {
        install(&a, text_version(version, |m| m).path()).await;
    }
    a.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    // Both hosts load the canary version first, so the changes below race
    // on the store, not on compiling.
    a.plugin_version("text", "1.0.1").await.unwrap();
    b.plugin_version("text", "1.0.1").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let host = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            host.set_rollout(&RolloutRequest::new(
                "text",
                "1.0.1",
                1 + i % 50,
                format!("op-{i}"),
            ))
            .await
        }));
    }
    let mut won = 0;
    let mut lost = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(error) => {
                assert_eq!(release_error(error).kind(), "rollout_conflict");
                lost += 1;
            }
        }
    }
    assert_eq!(won + lost, 40);
    // Every change and every lost race is on the record, in the chain of
    // the host that tried.
    let mut decisions = Vec::new();
    for host in [&a, &b] {
        for record in host
            .audit()
            .query(
                &Filter {
                    event: Some(Event::RolloutChanged),
                    ..Filter::default()
                },
                1000,
            )
            .unwrap()
        {
            decisions.push(record.entry.decision.unwrap());
        }
    }
    let count = |d: &str| decisions.iter().filter(|x| x.as_str() == d).count();
    assert_eq!(count("canary"), won, "{decisions:?}");
    assert_eq!(count("lost"), lost, "{decisions:?}");
    assert_eq!(count("activate"), 1);
}

/// Installed versions are materialized under the host's releases
/// directory by the names in their store record: a record edited on disk
/// (or in the shared database) to name another plugin, or a path, is
/// refused as corrupt instead of written outside that directory.
#[tokio::test]
async fn a_version_record_that_names_a_path_is_refused_not_written_there() {
    let data = tempfile::tempdir().unwrap();
    {
        let host = Host::new(config(data.path())).unwrap();
        install(&host, text_version("1.0.0", |m| m).path()).await;
    }
    let records = [airlock_tests::find_file(
        data.path(),
        "versions/text/1.0.0.json",
    )];
    let original = std::fs::read_to_string(&records[0]).unwrap();
    for (field, value) in [
        ("plugin", "../../../escaped"),
        ("version", "../../escaped"),
        ("component_digest", "../../../../escaped-0123456789abcdef"),
    ] {
        let mut record: serde_json::Value = serde_json::from_str(&original).unwrap();
        assert!(record.get(field).is_some(), "{field} in {record}");
        record[field] = json!(value);
        std::fs::write(&records[0], record.to_string()).unwrap();
        let host = Host::new(config(data.path())).unwrap();
        let err = match host.plugin_version("text", "1.0.0").await {
            Ok(_) => panic!("{field} = {value:?} was loaded"),
            Err(e) => chain(&e),
        };
        // (The file store refuses a record naming another plugin or
        // version than its own path's; what is left, the host refuses.)
        assert!(
            err.contains("names")
                || err.contains("cannot name a directory")
                || err.contains("holds version"),
            "{field}: {err}"
        );
        drop(host);
        let mut escaped = Vec::new();
        let mut dirs = vec![data.path().parent().unwrap().to_owned()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("escaped"))
                {
                    escaped.push(path.clone());
                }
                if path.is_dir() && path.starts_with(data.path()) {
                    dirs.push(path);
                }
            }
        }
        assert!(escaped.is_empty(), "{field}: {escaped:?}");
    }
}

/// An installed version is served from a copy under the data directory's
/// `versions/`. An edit to that copy (a risk lowered, a signature added)
/// is refused by name instead of served while the store and the audit log
/// name the installed files; removing the copy writes it again.
#[tokio::test]
async fn an_edited_copy_of_an_installed_version_is_refused_not_served() {
    let data = tempfile::tempdir().unwrap();
    {
        let host = Host::new(config(data.path())).unwrap();
        install(&host, text_version("1.0.0", |m| m).path()).await;
        host.plugin_version("text", "1.0.0").await.unwrap();
    }
    let parent = data.path().join("versions/text");
    let copies: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("1.0.0-")
        })
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = copies[0].clone();
    let manifest = copy.join("plugin.toml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let load = || async {
        let host = Host::new(config(data.path())).unwrap();
        host.plugin_version("text", "1.0.0")
            .await
            .map(|p| p.manifest_digest().to_owned())
    };
    let refusal = |result: Result<String, Error>| match result {
        Ok(_) => panic!("an edited copy was served"),
        Err(Error::Store(e)) => chain(&e),
        Err(other) => panic!("expected a store refusal, got {other:?}"),
    };

    std::fs::write(
        &manifest,
        original.replacen("risk = \"read\"", "risk = \"write\"", 1),
    )
    .unwrap();
    let err = refusal(load().await);
    assert!(
        err.contains("plugin.toml") && err.contains("differs"),
        "{err}"
    );

    // A copy without its manifest is named as such, not an OS error from
    // writing a new copy over it.
    std::fs::remove_file(&manifest).unwrap();
    let err = refusal(load().await);
    assert!(err.contains("holds no plugin.toml"), "{err}");

    std::fs::write(&manifest, &original).unwrap();
    let installed = load().await.unwrap();
    std::fs::write(copy.join("plugin.sig"), "not installed").unwrap();
    let err = refusal(load().await);
    assert!(
        err.contains("plugin.sig") && err.contains("was not installed"),
        "{err}"
    );

    std::fs::remove_dir_all(&copy).unwrap();
    assert_eq!(load().await.unwrap(), installed);
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), original);
}

/// A pause target is checked against what the host serves: an installed
/// plugin by name; its tools once a version of it serves here; a name
/// nothing has, refused naming what the host knows.
#[tokio::test]
async fn a_pause_target_is_known_by_the_versions_that_serve_here() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    install(&host, text_version("1.0.0", |m| m).path()).await;
    let refusal = |result: Result<(), Error>| match result {
        Err(Error::Config { message }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    host.check_pause_target("text").await.unwrap();
    let err = refusal(host.check_pause_target("text/slugify").await);
    assert!(
        err.contains("is installed but no version of it serves here"),
        "{err}"
    );
    let err = refusal(host.check_pause_target("txet").await);
    assert!(
        err.contains("no plugin here is named `txet` (plugins: text)"),
        "{err}"
    );
    // A name no plugin can have (the store refuses to look it up) is
    // refused as unknown, not let through as "cannot tell".
    let err = refusal(host.check_pause_target("Text").await);
    assert!(err.contains("no plugin here is named `Text`"), "{err}");
    // One damaged version record of another plugin does not switch the
    // check off.
    let other = data.path().join("installed/versions/json");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("1.0.0.json"), "{").unwrap();
    let err = refusal(host.check_pause_target("txet").await);
    assert!(err.contains("no plugin here is named `txet`"), "{err}");
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.check_pause_target("text/slugify").await.unwrap();
    let err = refusal(host.check_pause_target("text/slugfy").await);
    assert!(
        err.contains("`text` has no such tool here (its tools: "),
        "{err}"
    );
}

/// A version stored whose install record was never written (the audit log
/// refused, or the process ended first) stayed unrecorded for good:
/// installing it again found it installed and recorded nothing. It is
/// recorded then — once: a third install records nothing more.
#[tokio::test]
async fn an_install_whose_record_failed_is_recorded_when_installed_again() {
    let data = tempfile::tempdir().unwrap();
    let one = text_version("1.0.0", |m| m);
    let package = Package::from_dir(one.path()).unwrap();
    let installs = |host: &Host| recorded(host, Event::PluginInstalled);
    {
        let host = Host::new(config(data.path())).unwrap();
        host.audit().close().unwrap();
        let err = host.install(&package, "ops").await.unwrap_err();
        assert!(chain(&err).contains("audit"), "{}", chain(&err));
    }
    let host = Host::new(config(data.path())).unwrap();
    assert!(installs(&host).is_empty());
    let again = host.install(&package, "ops-2").await.unwrap();
    assert!(!again.new, "the version was stored");
    let recorded = installs(&host);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let entry = &recorded[0].entry;
    assert_eq!(entry.plugin_version.as_deref(), Some("1.0.0"));
    assert_eq!(entry.principal.as_deref(), Some("ops"), "who installed it");
    assert!(
        entry.reason.as_deref().unwrap_or("").contains("ops-2"),
        "{entry:?}"
    );
    host.install(&package, "ops-3").await.unwrap();
    assert_eq!(installs(&host).len(), 1);
}

#[tokio::test]
async fn a_rollout_change_whose_record_failed_is_recorded_at_the_next_change() {
    let data = tempfile::tempdir().unwrap();
    let one = text_version("1.0.0", |m| m);
    let two = text_version("1.0.1", |m| m);
    let changes = |host: &Host| recorded(host, Event::RolloutChanged);
    {
        let host = Host::new(config(data.path())).unwrap();
        for dir in [&one, &two] {
            host.install(&Package::from_dir(dir.path()).unwrap(), "ops")
                .await
                .unwrap();
        }
        host.audit().close().unwrap();
        let err = host
            .set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
            .await
            .unwrap_err();
        // Made, and said so: an error that read as "nothing changed"
        // would have the operator make it again.
        assert_eq!(err.kind(), "change_unrecorded", "{}", chain(&err));
        let text = chain(&err);
        assert!(
            text.contains("rollout was changed (1.0.0 serves)")
                && text.contains("do not make the change again")
                && text.contains("audit"),
            "{text}"
        );
    }
    let host = Host::new(config(data.path())).unwrap();
    assert!(changes(&host).is_empty());
    assert_eq!(version_for(&host, "agent").await, "1.0.0", "it was stored");
    host.set_rollout(&RolloutRequest::new("text", "1.0.1", 10, "ops-2"))
        .await
        .unwrap();
    let recorded = changes(&host);
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    // The one whose record was lost, recorded before the change now.
    let late = &recorded[0].entry;
    assert_eq!(late.principal.as_deref(), Some("ops"), "who changed it");
    assert_eq!(late.plugin_version.as_deref(), Some("1.0.0"));
    let reason = late.reason.as_deref().unwrap_or("");
    assert!(reason.contains("1.0.0 serves"), "{reason}");
    assert!(reason.contains("ops-2"), "{reason}");
    assert_eq!(recorded[1].entry.principal.as_deref(), Some("ops-2"));
    // Recorded once: the next change records only itself.
    host.set_rollout(&RolloutRequest::new("text", "1.0.1", 50, "ops-3"))
        .await
        .unwrap();
    assert_eq!(changes(&host).len(), 3);
}

/// The `misbehave` test guest as plugin `slow` version `version`: `echo`
/// and `spin` (until its 3 s deadline).
fn slow_version(version: &str) -> airlock_tests::PluginDir {
    let component = airlock_tests::read(airlock_tests::MISBEHAVE);
    airlock_tests::install_raw(
        &component,
        &format!(
            "[plugin]\nname = \"slow\"\nversion = \"{version}\"\ncomponent = \"component.wasm\"\nsha256 = \"{}\"\n\n[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 3000\nfuel = 1_000_000_000_000_000\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n\n[[tools]]\nname = \"spin\"\nrisk = \"read\"\n",
            sha256_hex(&component)
        ),
    )
}

/// Each loaded version of a plugin bounded its calls by the plugin's share
/// of the instance pool, so the two versions of a canary held twice it —
/// at the default share, the whole pool, and every other plugin's calls
/// got `host_busy`. The versions now share the one share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_and_its_stable_version_share_one_share_of_the_pool() {
    use std::sync::Arc;
    use std::time::Duration;
    let data = tempfile::tempdir().unwrap();
    // Four instances: a plugin's share is two.
    let host = Arc::new(Host::new(config(data.path()).max_instances(4)).unwrap());
    let (one, two) = (slow_version("1.0.0"), slow_version("2.0.0"));
    install(&host, one.path()).await;
    install(&host, two.path()).await;
    host.set_rollout(&RolloutRequest::new("slow", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("slow", "2.0.0", 50, "ops"))
        .await
        .unwrap();
    let quick = airlock_tests::install(
        "quick",
        &airlock_tests::read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 300\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n",
    );
    host.load_plugin(quick.path()).await.unwrap();
    // Two callers on each version.
    let mut by_version: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for i in 0..200 {
        let principal = format!("agent-{i}");
        let version = host
            .call(CallRequest::new("slow/echo", "{}").principal(&principal))
            .await
            .unwrap()
            .plugin_version;
        let callers = by_version.entry(version).or_default();
        if callers.len() < 2 {
            callers.push(principal);
        }
    }
    assert_eq!(by_version.len(), 2, "{by_version:?}");
    let spinning: Vec<_> = by_version
        .values()
        .flatten()
        .map(|principal| {
            let host = Arc::clone(&host);
            let call = CallRequest::new("slow/spin", "{}").principal(principal);
            tokio::spawn(async move { host.call(call).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two of the four spin (the share): the pool's two other slots serve
    // another plugin at once (its calls wait 300 ms at most).
    for _ in 0..2 {
        let out = host
            .call(CallRequest::new("quick/echo", r#"{"a":1}"#))
            .await
            .unwrap();
        assert_eq!(out.output, json!({"a": 1}));
    }
    // Two ran to their deadline; two waited for the share (and reached
    // their deadline as they got it, or gave up waiting).
    for call in spinning {
        let kind = call.await.unwrap().unwrap_err().kind();
        assert!(
            ["deadline_exceeded", "plugin_busy"].contains(&kind),
            "{kind}"
        );
    }
}

/// A version that does not load here was loaded again by every call
/// routed to it — a read, a hash, a compile and the guest's `list`, under
/// the one load lock and before any rate limit. Its failure is now kept
/// for a while: calls are refused with its reason at once.
#[tokio::test]
async fn a_version_that_did_not_load_is_refused_at_once_for_a_while() {
    let data = tempfile::tempdir().unwrap();
    {
        let host = Host::new(config(data.path())).unwrap();
        install(&host, text_version("1.0.0", |m| m).path()).await;
        host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
            .await
            .unwrap();
    }
    let (manifest, original) = edit_materialized(data.path(), "1.0.0");
    // Readiness: not ready, saying which version does not load and why —
    // not the whole report failing: on a host where no call tried the load
    // (the copy found damaged, a store error of its own) and on one where
    // a call did (the failure kept, with its kind).
    let lenient = ReadinessConfig::requiring(Vec::<ReadinessCheck>::new());
    let slugify = || CallRequest::new("text/slugify", json!({"text": "Hi there"}).to_string());
    let mut kept = None;
    for called in [false, true] {
        drop(kept.take());
        let host = Host::new(config(data.path())).unwrap();
        if called {
            let first = host.call(slugify()).await.unwrap_err();
            assert!(format!("{first:?}").contains("differs"), "{first:?}");
            // Refused from the kept failure, the same kind of error.
            let second = host.call(slugify()).await.unwrap_err();
            assert!(format!("{second:?}").contains("tried again"), "{second:?}");
            assert_eq!(second.kind(), first.kind(), "{second:?}");
        }
        let report = host.readiness(None, &lenient).await.unwrap();
        let text = report.iter().find(|r| r.plugin == "text").unwrap();
        assert!(!text.ready, "{report:?}");
        assert_eq!(text.version, "1.0.0");
        assert_eq!(text.missing_required[0].check, ReadinessCheck::Routing);
        assert!(
            text.missing_required[0]
                .reason
                .contains("1.0.0 does not load")
                && text.missing_required[0].reason.contains("differs"),
            "called {called}: {report:?}"
        );
        kept = Some(host);
    }
    let host = kept.unwrap();
    // Put right, it is still refused until the failure is old enough: the
    // call did not try the load again.
    std::fs::write(&manifest, &original).unwrap();
    let again = format!("{:?}", host.call(slugify()).await.unwrap_err());
    assert!(
        again.contains("differs") && again.contains("tried again 30 s"),
        "{again}"
    );
}

/// A canary that does not load fails its share of the calls: readiness
/// names it, with its share and how to stop it, though the serving
/// version loads.
#[tokio::test]
async fn readiness_names_a_canary_that_does_not_load() {
    let data = tempfile::tempdir().unwrap();
    {
        let host = Host::new(config(data.path())).unwrap();
        install(&host, text_version("1.0.0", |m| m).path()).await;
        install(&host, text_version("1.1.0", |m| m).path()).await;
        host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
            .await
            .unwrap();
        host.set_rollout(&RolloutRequest::new("text", "1.1.0", 0, "ops"))
            .await
            .unwrap();
    }
    let lenient = ReadinessConfig::requiring(Vec::<ReadinessCheck>::new());
    let routing_ready = |report: &[airlock_host::ReadinessReport]| {
        let text = report.iter().find(|r| r.plugin == "text").unwrap();
        text.version == "1.0.0"
            && text
                .missing_required
                .iter()
                .all(|f| f.check != ReadinessCheck::Routing)
    };
    // At 0 % no caller reaches the canary: that it would not load is no
    // finding of the plugin's routing.
    let (manifest, original) = edit_materialized(data.path(), "1.1.0");
    {
        let host = Host::new(config(data.path())).unwrap();
        let report = host.readiness(None, &lenient).await.unwrap();
        assert!(routing_ready(&report), "{report:?}");
    }
    std::fs::write(&manifest, &original).unwrap();
    {
        let host = Host::new(config(data.path())).unwrap();
        host.set_rollout(&RolloutRequest::new("text", "1.1.0", 50, "ops"))
            .await
            .unwrap();
    }
    edit_materialized(data.path(), "1.1.0");
    let host = Host::new(config(data.path())).unwrap();
    let report = host.readiness(None, &lenient).await.unwrap();
    let text = report.iter().find(|r| r.plugin == "text").unwrap();
    assert!(!text.ready, "{report:?}");
    assert_eq!(text.version, "1.1.0");
    let finding = &text.missing_required[0];
    assert_eq!(finding.check, ReadinessCheck::Routing);
    assert!(
        finding.reason.contains("canary 1.1.0 does not load")
            && finding.reason.contains("50 % of callers")
            && finding.reason.contains("differs"),
        "{report:?}"
    );
    assert!(finding.fix.contains("airlock rollback text"), "{report:?}");
    // The serving version loads: with the canary stopped, ready to route.
    host.rollback("text", "ops", None).await.unwrap();
    let report = host.readiness(None, &lenient).await.unwrap();
    assert!(routing_ready(&report), "{report:?}");
}

/// A `json/format` call that is refused: its error.
async fn format_json(host: &Host) -> airlock_host::CallError {
    host.call(CallRequest::new(
        "json/format",
        json!({"document": {"a": 1}}).to_string(),
    ))
    .await
    .unwrap_err()
}

/// A rollout record that cannot be read (edited on disk, half-restored
/// from a backup) stops the calls of its own plugin, which are refused
/// (where they should go is not known), not every call of the host.
#[tokio::test]
async fn an_unreadable_rollout_refuses_its_own_plugin_only() {
    let data = tempfile::tempdir().unwrap();
    {
        let host = Host::new(config(data.path())).unwrap();
        install(&host, text_version("1.0.0", |m| m).path()).await;
        install(&host, example_version("json", "1.0.0", |m| m).path()).await;
        for plugin in ["text", "json"] {
            host.set_rollout(&RolloutRequest::new(plugin, "1.0.0", 100, "ops"))
                .await
                .unwrap();
        }
    }
    let records = [airlock_tests::find_file(data.path(), "rollouts/json.json")];
    std::fs::write(&records[0], "{\"version\": 1, \"rollout\": ").unwrap();
    // A stray file among the installed versions, which the rollouts read
    // one by one once depended on listing.
    let installed = records[0].parent().unwrap().parent().unwrap();
    std::fs::write(installed.join("versions/README"), "notes").unwrap();

    let host = Host::new(config(data.path())).unwrap();
    let text = host
        .call(CallRequest::new(
            "text/slugify",
            json!({"text": "Still Served"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(text.plugin_version, "1.0.0");
    assert_eq!(text.output["slug"], "still-served");
    let err = format_json(&host).await;
    assert_eq!(err.kind(), "store_unavailable", "{err}");
    assert!(chain(&err).contains("json.json"), "{}", chain(&err));
    // The listing says what cannot be read, rather than a partial list;
    // the lenient listing has the others, and names it.
    let listing = chain(&host.rollouts().unwrap_err());
    assert!(listing.contains("json"), "{listing}");
    let listing = host.rollout_listing().unwrap();
    let listed: Vec<&str> = listing.rollouts.iter().map(|r| r.plugin.as_str()).collect();
    assert_eq!(listed, ["text"]);
    assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
    assert_eq!(listing.unreadable[0].plugin, "json");
    assert!(
        listing.unreadable[0].error.contains("json.json"),
        "{listing:?}"
    );
    // The store's listing failed on it: read one by one, said so.
    assert!(listing.partial.is_some(), "{listing:?}");
    // A pause's target is still checked against what serves, but for the
    // plugin whose record cannot be read (what serves it is not known).
    let typo = host.check_pause_target("text/slugfy").await.unwrap_err();
    assert!(typo.to_string().contains("no such tool"), "{typo}");
    host.check_pause_target("json/anything").await.unwrap();
    // What serves is listed: the readable rollout's tools, not the others.
    host.prepare_rollouts().await.unwrap();
    let tools: Vec<String> = host.tools().iter().map(|t| t.id().to_owned()).collect();
    assert!(tools.contains(&"text/slugify".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("json/")), "{tools:?}");
    // Readiness: that plugin is not ready, saying why; the others are
    // checked as ever (not the whole report failing for one record).
    let lenient = ReadinessConfig::requiring(Vec::<ReadinessCheck>::new());
    let reports = host.readiness(None, &lenient).await.unwrap();
    let of = |plugin: &str| reports.iter().find(|r| r.plugin == plugin).unwrap();
    assert!(!of("json").ready, "{reports:?}");
    assert_eq!(
        of("json").missing_required[0].check,
        ReadinessCheck::Routing
    );
    assert!(
        of("json").missing_required[0].reason.contains("json.json"),
        "{reports:?}"
    );
    assert!(of("text").ready, "{reports:?}");
    assert!(of("text").passed.contains(&ReadinessCheck::Routing));
    let alone = host.readiness(Some("json"), &lenient).await.unwrap();
    assert!(!alone[0].ready, "{alone:?}");
    let serving = chain(&host.serving("json").await.unwrap_err());
    assert!(serving.contains("json.json"), "{serving}");
    assert_eq!(
        host.serving("text").await.unwrap().unwrap().version(),
        "1.0.0"
    );
    // A name no plugin can have is no plugin, as without a rollout.
    let err = host
        .call(CallRequest::new("No Such/tool", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unknown_plugin", "{err}");

    // Without the record the plugin has no rollout: nothing serves it.
    drop(host);
    std::fs::remove_file(&records[0]).unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let err = format_json(&host).await;
    assert_eq!(err.kind(), "unknown_plugin", "{err}");
    assert_eq!(host.rollouts().unwrap().len(), 1);

    // Another plugin's record copied under its name: refused, not routed
    // by (a version of `text` is not one of `json`).
    drop(host);
    let text_record = records[0].with_file_name("text.json");
    std::fs::copy(&text_record, &records[0]).unwrap();
    let host = Host::new(config(data.path())).unwrap();
    let err = format_json(&host).await;
    assert_eq!(err.kind(), "store_unavailable", "{err}");
    assert!(chain(&err).contains("`text`"), "{}", chain(&err));
    version_for(&host, "alice").await;
}

/// A call waiting for its approver had resolved to a version; a rollback
/// made while the approver decided took that version out of service, yet
/// once approved the call ran it. It is refused as a mismatch now, the
/// approval left unused (it names the version rolled back); made again,
/// the call resolves to the version that serves and asks for its own.
#[tokio::test]
async fn a_call_waiting_for_approval_does_not_run_a_version_rolled_back_meanwhile() {
    let data = tempfile::tempdir().unwrap();
    let mut policy = config(data.path()).policy;
    policy.approvals.tools = vec!["text/slugify".into()];
    let host = std::sync::Arc::new(
        Host::new(HostConfig::default().data_dir(data.path()).policy(policy)).unwrap(),
    );
    install(&host, text_version("1.0.0", |m| m).path()).await;
    install(&host, text_version("1.0.1", |m| m).path()).await;
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("text", "1.0.1", 100, "ops"))
        .await
        .unwrap();
    let request = || {
        CallRequest::new("text/slugify", json!({"text": "Hi there"}).to_string())
            .principal("agent-1")
    };
    let waiting = {
        let host = std::sync::Arc::clone(&host);
        let call = request().wait_for_approval(std::time::Duration::from_secs(60));
        tokio::spawn(async move { host.call(call).await })
    };
    let id = loop {
        let pending = host.approvals(Some(ApprovalState::Pending)).unwrap();
        if let Some(approval) = pending.first() {
            break approval.id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    host.rollback("text", "oncall", None).await.unwrap();
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();
    let refused = waiting.await.unwrap().unwrap_err();
    assert_eq!(refused.kind(), "approval_mismatch", "{refused}");
    assert!(
        refused
            .to_string()
            .contains("text 1.0.1, which no longer serves")
            && refused.to_string().contains("1.0.0 serves it now"),
        "{refused}"
    );
    let approval = host.approval(&id).unwrap().unwrap();
    assert_eq!(approval.state, ApprovalState::Approved, "not spent");
    assert_eq!(approval.plugin_version.as_deref(), Some("1.0.1"));
    // Both versions run the same component: the approval is bound to the
    // manifest it was asked under, so it does not carry over to 1.0.0.
    let presented = host.call(request().approval_id(&id)).await.unwrap_err();
    assert_eq!(presented.kind(), "approval_mismatch", "{presented}");
    assert!(
        presented.to_string().contains("text 1.0.1, whose manifest"),
        "{presented}"
    );
    // Made again, the call asks for the serving version's approval.
    let again = host.call(request()).await.unwrap_err();
    assert_eq!(again.kind(), "approval_pending", "{again}");
    let pending = host.approvals(Some(ApprovalState::Pending)).unwrap();
    let asked = pending.iter().find(|a| a.id != id).unwrap();
    assert_eq!(asked.plugin_version.as_deref(), Some("1.0.0"));
    assert_ne!(asked.manifest_digest, approval.manifest_digest);
}

/// The check above ran when the approval was used, before the call waited
/// for its slots of the instance pool: a rollback made while it waited
/// still let it run the version taken out of service. Asked again once
/// the slots are held, it is refused before its guest starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_call_waiting_for_a_slot_does_not_run_a_version_rolled_back_meanwhile() {
    use std::sync::Arc;
    use std::time::Duration;
    let data = tempfile::tempdir().unwrap();
    let mut policy = config(data.path()).policy;
    policy.approvals.tools = vec!["text/slugify".into()];
    // One instance: a call spinning in it makes every other call wait.
    let host = Arc::new(
        Host::new(
            HostConfig::default()
                .data_dir(data.path())
                .policy(policy)
                .max_instances(1),
        )
        .unwrap(),
    );
    // Long deadlines: the approved call waits for the slot until its own.
    let slow = |m: String| m.replacen("timeout_ms = 2_000", "timeout_ms = 60_000", 1);
    install(&host, text_version("1.0.0", slow).path()).await;
    install(&host, text_version("1.0.1", slow).path()).await;
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    host.set_rollout(&RolloutRequest::new("text", "1.0.1", 100, "ops"))
        .await
        .unwrap();
    // The spinning call holds the slot until the test lets it go.
    let spinner = airlock_tests::install(
        "spinner",
        &airlock_tests::read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 60_000\nfuel = 1_000_000_000_000_000\n\n[[tools]]\nname = \"spin\"\nrisk = \"read\"\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n",
    );
    host.load_plugin(spinner.path()).await.unwrap();
    let probe = airlock_tests::install(
        "probe",
        &airlock_tests::read(airlock_tests::MISBEHAVE),
        "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 100\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n",
    );
    host.load_plugin(probe.path()).await.unwrap();
    let request = || {
        CallRequest::new("text/slugify", json!({"text": "Hi there"}).to_string())
            .principal("agent-1")
    };
    let pending = host.call(request()).await.unwrap_err();
    assert_eq!(pending.kind(), "approval_pending", "{pending}");
    let id = host.approvals(Some(ApprovalState::Pending)).unwrap()[0]
        .id
        .clone();
    host.decide(&id, "alice", ALICE, Verdict::Approve, None)
        .await
        .unwrap();

    let release = tokio_util::sync::CancellationToken::new();
    let spinning = tokio::spawn({
        let host = Arc::clone(&host);
        let call = CallRequest::new("spinner/spin", "{}").cancel_on(release.clone());
        async move { host.call(call).await }
    });
    // Until a call that waits 100 ms for a slot finds none: the spinning
    // call holds it.
    let by = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probed = host.call(CallRequest::new("probe/echo", "{}")).await;
        if probed.is_err_and(|e| e.kind() == "host_busy") {
            break;
        }
        assert!(
            std::time::Instant::now() < by,
            "the spinning call never held the slot"
        );
    }
    // The approved call uses its approval (checked against the rollout
    // then), and waits for the slot the spinning call holds.
    let approved = tokio::spawn({
        let host = Arc::clone(&host);
        let call = request().approval_id(&id);
        async move { host.call(call).await }
    });
    while host.approval(&id).unwrap().unwrap().state != ApprovalState::Consumed {
        assert!(
            std::time::Instant::now() < by,
            "the approval was never used"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!spinning.is_finished() && !approved.is_finished());
    host.rollback("text", "oncall", None).await.unwrap();
    release.cancel();

    let refused = approved.await.unwrap().unwrap_err();
    assert_eq!(refused.kind(), "approval_mismatch", "{refused}");
    assert!(
        refused
            .to_string()
            .contains("text 1.0.1, which no longer serves")
            && refused.to_string().contains("1.0.0 serves it now"),
        "{refused}"
    );
    assert_eq!(spinning.await.unwrap().unwrap_err().kind(), "cancelled");
    // On the record: finished as refused under its approval, and no
    // `slugify` call finished otherwise.
    let finished = recorded(&host, Event::CallFinished);
    let slugify: Vec<_> = finished
        .iter()
        .filter(|r| r.entry.tool.as_deref() == Some("slugify"))
        .collect();
    assert_eq!(slugify.len(), 1, "{slugify:?}");
    assert_eq!(slugify[0].entry.approval_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        slugify[0].entry.outcome.as_deref(),
        Some("approval_mismatch")
    );
}

/// A canary takes its share of the calls under its own manifest: one that
/// dropped its limits (or its cases, its rate limits…) was reported ready
/// because only the serving version was checked. Its findings are named
/// now, and the plugin is ready only when both versions are.
#[tokio::test]
async fn readiness_checks_the_canary_as_well_as_the_serving_version() {
    let data = tempfile::tempdir().unwrap();
    let host = Host::new(config(data.path())).unwrap();
    install(&host, text_version("1.0.0", |m| m).path()).await;
    let unlimited = text_version("1.1.0", |m| m.replacen("fuel = 2_000_000_000\n", "", 1));
    install(&host, unlimited.path()).await;
    host.set_rollout(&RolloutRequest::new("text", "1.0.0", 100, "ops"))
        .await
        .unwrap();
    let limits = ReadinessConfig::requiring(vec![ReadinessCheck::Limits]);
    let text = |report: Vec<airlock_host::ReadinessReport>| {
        report.into_iter().find(|r| r.plugin == "text").unwrap()
    };
    let before = text(host.readiness(Some("text"), &limits).await.unwrap());
    assert!(before.ready, "{before:?}");
    host.set_rollout(&RolloutRequest::new("text", "1.1.0", 10, "ops"))
        .await
        .unwrap();
    let report = text(host.readiness(Some("text"), &limits).await.unwrap());
    assert!(!report.ready, "{report:?}");
    let finding = &report.missing_required[0];
    assert_eq!(finding.check, ReadinessCheck::Limits);
    assert_eq!(finding.version, "1.1.0", "{report:?}");
    assert!(
        finding.reason.starts_with("canary 1.1.0: ") && finding.reason.contains("fuel"),
        "{report:?}"
    );
    assert!(
        !report.passed.contains(&ReadinessCheck::Limits),
        "{report:?}"
    );
    // The canary stopped: ready again.
    host.rollback("text", "ops", None).await.unwrap();
    assert!(text(host.readiness(Some("text"), &limits).await.unwrap()).ready);
}

/// An upgrade approval a newer host wrote terms into is not used here:
/// the upgrade is refused, naming them, to whoever it was given to, and
/// the approval stays for a host that knows them.
#[tokio::test]
async fn an_upgrade_approval_with_terms_this_host_does_not_know_is_not_used() {
    use airlock_host::StoreConfig;
    let data = tempfile::tempdir().unwrap();
    let stores = airlock_host::store::Stores::memory();
    let ledger = airlock_host::store::Ledger::new(stores.ledger.clone());
    let host = Host::new(config(data.path()).store(StoreConfig::Custom(stores))).unwrap();
    let approval_id = approved_wider_upgrade(&host).await;
    ledger
        .transition(&approval_id, ApprovalState::Approved, 0, |a| {
            a.unknown_fields
                .insert("only_after".into(), serde_json::json!("2027-01-01"));
        })
        .unwrap();
    let refused = release_error(
        host.set_rollout(&RolloutRequest::new("text", "2.0.0", 10, "ops").approval(&approval_id))
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.kind(), "upgrade_approval_refused");
    assert!(refused.to_string().contains("\"only_after\""), "{refused}");
    // Anyone else is told what the approval was not given for, not its terms.
    let other = release_error(
        host.set_rollout(
            &RolloutRequest::new("text", "2.0.0", 10, "mallory").approval(&approval_id),
        )
        .await
        .unwrap_err(),
    );
    assert!(!other.to_string().contains("only_after"), "{other}");
    let kept = host.approval(&approval_id).unwrap().unwrap();
    assert_eq!(kept.state, ApprovalState::Approved);
    assert!(kept.unknown_fields.contains_key("only_after"));
}
