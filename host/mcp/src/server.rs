//! [`McpServer`]: the shared state, the rmcp handler, the plugin reloader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use airlock_host::store::ApprovalState;
use airlock_host::{CallError, CallRequest, Host};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, CreateTaskResult,
    GetTaskParams, GetTaskResult, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, RequestMetaObject, ServerCapabilities, ServerConfig,
    SubscriptionFilter, UpdateTaskParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::task_manager::{TaskExit, TaskManager, TaskOptions};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogEntry};
use crate::error::{Error, Result};
use crate::outcome;

/// `_meta` keys a `tools/call` request may carry, each a string.
pub mod meta_keys {
    /// Resume a call an approver has approved.
    pub const APPROVAL_ID: &str = "airlock/approval_id";
    /// Idempotency key: a repeat replays the first outcome.
    pub const IDEMPOTENCY_KEY: &str = "airlock/idempotency_key";
    /// Why the call is made, shown to approvers.
    pub const REASON: &str = "airlock/reason";
    /// Workspace session the call's keys are scoped to.
    pub const SESSION: &str = "airlock/session";
    /// Correlation id.
    pub const TRACE_ID: &str = "airlock/trace_id";
    /// W3C Trace Context of the caller's span (as OpenTelemetry's MCP
    /// conventions carry it): the call's spans are its children and its
    /// trace id is the call's.
    pub const TRACEPARENT: &str = "traceparent";
}

/// Default cap on tool calls running at once, over every client.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 32;
/// Default cap on tool calls one principal runs at once.
pub const DEFAULT_MAX_CALLS_PER_PRINCIPAL: usize = 8;

/// How the server runs calls, whatever the transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Tool calls running at once over all clients; a call past the cap
    /// is refused at once (`server_busy`) rather than queued.
    pub max_concurrent_calls: usize,
    /// Tool calls one principal runs at once; one more is refused at once
    /// (`principal_busy`), so one caller cannot take every slot of
    /// `max_concurrent_calls` from the others.
    pub max_calls_per_principal: usize,
    /// Wait this long for an approver's decision before answering
    /// `approval_pending` (`None`: answer at once).
    pub approval_wait: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            max_calls_per_principal: DEFAULT_MAX_CALLS_PER_PRINCIPAL,
            approval_wait: None,
        }
    }
}

impl ServeOptions {
    /// Allow `calls` tool calls at once.
    pub fn max_concurrent_calls(mut self, calls: usize) -> ServeOptions {
        self.max_concurrent_calls = calls;
        self
    }

    /// Allow each principal `calls` tool calls at once.
    pub fn max_calls_per_principal(mut self, calls: usize) -> ServeOptions {
        self.max_calls_per_principal = calls;
        self
    }

    /// Wait up to `wait` for approvals.
    pub fn approval_wait(mut self, wait: Option<Duration>) -> ServeOptions {
        self.approval_wait = wait;
        self
    }
}

/// Serves a [`Host`]'s tools over MCP. Cheap to clone: clones share the
/// host, the tool catalog and the change notifications.
#[derive(Debug, Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
}

struct Shared {
    host: Arc<Host>,
    options: ServeOptions,
    catalog: RwLock<Arc<Catalog>>,
    /// Bumped whenever the served tools change.
    changes: watch::Sender<u64>,
    calls: Arc<Semaphore>,
    /// Calls running per principal (only principals with one running).
    principal_calls: std::sync::Mutex<HashMap<String, usize>>,
    reload: Mutex<ReloadState>,
    /// The rollouts could not be read at the last look (warned once).
    rollouts_failing: AtomicBool,
    /// Catalog warnings logged already, by plugin version (component and
    /// manifest digest), tool and message: each is logged once per loaded
    /// version, however often the catalog is rebuilt.
    warned: std::sync::Mutex<HashSet<String>>,
    /// Calls waiting for an approver as tasks (the MCP Tasks extension).
    tasks: TaskManager,
    /// Each task's principal (only it may see or cancel the task), and
    /// when the task manager has surely forgotten the task.
    task_owners: std::sync::Mutex<HashMap<String, TaskOwner>>,
    /// The task waiting on each approval: a call resent with the
    /// approval's id while it waits gets that task back rather than a new
    /// one (taken after `task_owners`, never before).
    approval_tasks: std::sync::Mutex<HashMap<String, String>>,
    /// Calls of clients without tasks waiting for an approver
    /// (`approval_wait`), holding no call slot: [`MAX_APPROVAL_WAITERS`].
    approval_waiters: Arc<Semaphore>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("host", &self.host)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the reloader knows about each plugin directory.
#[derive(Debug, Default)]
struct ReloadState {
    dirs: BTreeMap<PathBuf, Seen>,
    /// The directory was looked at once: later changes are recorded.
    scanned: bool,
    /// Directories tried again at every look after a failure that may
    /// pass, with the error last logged (logged again only when it
    /// changes).
    retrying: BTreeMap<PathBuf, String>,
}

#[derive(Debug)]
struct Seen {
    fingerprint: Fingerprint,
    /// The plugin loaded from it, if it loaded.
    plugin: Option<String>,
}

/// A load refused because another directory's plugin has its name.
fn is_duplicate(
    loaded: &std::result::Result<Arc<airlock_host::Plugin>, airlock_host::LoadError>,
) -> bool {
    matches!(loaded, Err(airlock_host::LoadError::DuplicatePlugin { .. }))
}

/// Names, sizes, modification times and inodes of the files in a plugin
/// directory (its manifest and component, and anything beside them): a
/// stat of each, compared before anything is read or reloaded. The inode
/// catches a file replaced by a rename that kept its size and time.
type Fingerprint = Vec<(String, u64, Option<SystemTime>, u64)>;

/// What one [`McpServer::reload`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Plugins loaded.
    pub loaded: Vec<String>,
    /// Plugins unloaded: their directory is gone, or its changed files
    /// do not load or cannot be recorded (listed in `failed` too), or
    /// hold another plugin now (listed in `loaded`).
    pub unloaded: Vec<String>,
    /// Plugins whose changed files loaded and replaced the version
    /// serving, with no moment in between when the plugin was missing.
    pub reloaded: Vec<String>,
    /// Directories that did not load, with the error.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether the served tool list changed (and clients were told).
    pub tools_changed: bool,
}

impl McpServer {
    /// Serve `host`'s tools. Plugins already loaded are served; add more
    /// with [`McpServer::reload`].
    pub fn new(host: Arc<Host>, options: ServeOptions) -> McpServer {
        let catalog = Catalog::build(&host.tools());
        let (changes, _) = watch::channel(0);
        let server = McpServer {
            shared: Arc::new(Shared {
                calls: Arc::new(Semaphore::new(options.max_concurrent_calls)),
                principal_calls: std::sync::Mutex::new(HashMap::new()),
                host,
                options,
                catalog: RwLock::new(Arc::new(catalog)),
                changes,
                reload: Mutex::new(ReloadState::default()),
                rollouts_failing: AtomicBool::new(false),
                warned: std::sync::Mutex::new(HashSet::new()),
                tasks: TaskManager::new(),
                task_owners: std::sync::Mutex::new(HashMap::new()),
                approval_tasks: std::sync::Mutex::new(HashMap::new()),
                approval_waiters: Arc::new(Semaphore::new(MAX_APPROVAL_WAITERS)),
            }),
        };
        server.log_warnings(&server.catalog());
        server
    }

    /// Log the catalog's warnings not yet logged for the plugin versions
    /// now loaded.
    fn log_warnings(&self, catalog: &Catalog) {
        if catalog.warnings().is_empty() {
            return;
        }
        let mut warned = self
            .shared
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for warning in catalog.warnings() {
            let version = self
                .shared
                .host
                .plugin(&warning.plugin)
                .map(|p| format!("{}/{}", p.digest(), p.manifest_digest()))
                .unwrap_or_default();
            let key = format!("{version}\0{}\0{}", warning.tool, warning.message);
            if warned.contains(&key) {
                continue;
            }
            if warned.len() >= MAX_WARNED {
                warned.clear();
            }
            warned.insert(key);
            tracing::warn!(tool = %warning.tool, "{}", warning.message);
        }
    }

    /// The host.
    pub fn host(&self) -> &Arc<Host> {
        &self.shared.host
    }

    /// The tools served now.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(
            &self
                .shared
                .catalog
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Bring the host in line with the plugins directory `dir`: load plugin
    /// directories that are new, unload those that are gone, reload those
    /// whose files changed (size, modification time or inode) — the
    /// version loaded serves until the new one has loaded and replaces it
    /// ([`Host::reload_plugin`](airlock_host::Host::reload_plugin)); a
    /// change that does not load unloads the plugin. A directory that
    /// fails to load is retried once its files change, or once a plugin
    /// is unloaded or reloaded (it may have held the name or the files the
    /// directory was refused for). When the served
    /// tools change, every connected client gets
    /// `notifications/tools/list_changed`.
    ///
    /// # Errors
    /// [`Error::Host`] if `dir` cannot be read.
    pub async fn reload(&self, dir: &Path) -> Result<ReloadReport> {
        let mut state = self.shared.reload.lock().await;
        let host = &self.shared.host;
        let mut report = ReloadReport::default();
        let present = plugin_dirs(dir)?;
        state.retrying.retain(|path, _| present.contains_key(path));
        // After the first look, every change is on the audit log's record.
        let serving = state.scanned;
        state.scanned = true;
        if !serving {
            host.warn_unless_configured(dir);
        }
        // Gone: unload. Changed: replaced below, the version loaded
        // serving until the new one is ready.
        let stale: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|(path, seen)| present.get(*path) != Some(&seen.fingerprint))
            .map(|(path, _)| path.clone())
            .collect();
        // Unchanged directories that did not load at an earlier look.
        let refused_earlier: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|(path, seen)| seen.plugin.is_none() && !stale.contains(path))
            .map(|(path, _)| path.clone())
            .collect();
        let mut changed = Vec::new();
        // Directories whose plugin's name another holds now: tried again
        // once every other change is made (two directories may have
        // swapped names).
        let mut deferred = Vec::new();
        for path in stale {
            let Some(seen) = state.dirs.remove(&path) else {
                continue;
            };
            // One that never loaded is loaded below, as a new one.
            let Some(name) = seen.plugin else { continue };
            if present.contains_key(&path) {
                changed.push((path, name));
                continue;
            }
            match host.unload_plugin_recorded(&name, &path).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    tracing::info!(plugin = %name, dir = %path.display(), "plugin unloaded");
                    report.unloaded.push(name);
                }
                Err(error) => {
                    tracing::error!(plugin = %name, dir = %path.display(), error = %error, "plugin unloaded, unrecorded");
                    report.unloaded.push(name);
                }
            }
        }
        for (path, name) in changed {
            let was_loaded = host.plugin(&name).is_some();
            let result = host.reload_plugin(Some(&name), &path).await;
            match &result {
                Ok(plugin) if plugin.name() == name && was_loaded => {
                    tracing::info!(plugin = %name, dir = %path.display(), digest = %plugin.digest(), "plugin reloaded");
                    report.reloaded.push(name);
                }
                Ok(plugin) => {
                    if was_loaded {
                        report.unloaded.push(name);
                    }
                    tracing::info!(plugin = %plugin.name(), dir = %path.display(), "plugin loaded");
                    report.loaded.push(plugin.name().to_owned());
                }
                Err(_) if was_loaded => {
                    tracing::info!(plugin = %name, dir = %path.display(), "plugin unloaded: its changed files do not serve");
                    report.unloaded.push(name);
                }
                Err(_) => {}
            }
            if is_duplicate(&result) {
                deferred.push(path);
                continue;
            }
            self.note_load(&mut state, &mut report, path, &present, result);
        }
        // A plugin gone frees its name and its grants, a plugin reloaded
        // may hold other grants: a directory refused for either at an
        // earlier look (a duplicate name, files granted to both) may load
        // now, so each is tried again with the new.
        if !report.unloaded.is_empty() || !report.reloaded.is_empty() {
            for path in &refused_earlier {
                state.dirs.remove(path);
            }
        }
        // New (or not loaded before): load.
        let new: Vec<PathBuf> = present
            .keys()
            .filter(|path| !state.dirs.contains_key(*path) && !deferred.contains(*path))
            .cloned()
            .collect();
        for path in new {
            let loaded = self.load_new(&path, serving, &mut report).await;
            if is_duplicate(&loaded) {
                deferred.push(path);
                continue;
            }
            self.note_load(&mut state, &mut report, path, &present, loaded);
        }
        for path in deferred {
            let loaded = self.load_new(&path, serving, &mut report).await;
            self.note_load(&mut state, &mut report, path, &present, loaded);
        }
        // Installed versions: what the rollouts serve now.
        let rollouts_changed = self.prepare_rollouts().await;
        // Nothing loaded or unloaded (the usual tick): the catalog stands.
        if rollouts_changed
            || !report.loaded.is_empty()
            || !report.unloaded.is_empty()
            || !report.reloaded.is_empty()
        {
            report.tools_changed = self.refresh_catalog();
        }
        Ok(report)
    }

    /// Load the plugin directory `path`, not loaded before: on the audit
    /// log's record while `serving` (after the first look).
    async fn load_new(
        &self,
        path: &Path,
        serving: bool,
        report: &mut ReloadReport,
    ) -> std::result::Result<Arc<airlock_host::Plugin>, airlock_host::LoadError> {
        let host = &self.shared.host;
        let loaded = if serving {
            host.reload_plugin(None, path).await
        } else {
            host.load_plugin(path).await
        };
        if let Ok(plugin) = &loaded {
            tracing::info!(plugin = %plugin.name(), dir = %path.display(), "plugin loaded");
            report.loaded.push(plugin.name().to_owned());
        }
        loaded
    }

    /// Remember what loaded from `path` (its fingerprint, the plugin's
    /// name), or report why it did not. A failure that may pass by itself
    /// (the audit log unavailable, a file unreadable) is
    /// not remembered: the next look tries the directory again rather
    /// than waiting for its files to change.
    fn note_load(
        &self,
        state: &mut ReloadState,
        report: &mut ReloadReport,
        path: PathBuf,
        present: &BTreeMap<PathBuf, Fingerprint>,
        loaded: std::result::Result<Arc<airlock_host::Plugin>, airlock_host::LoadError>,
    ) {
        let plugin = match loaded {
            Ok(plugin) => Some(plugin.name().to_owned()),
            Err(error) => {
                let message = error.to_string();
                let passing = matches!(error.kind(), "audit_unavailable" | "io");
                if state.retrying.get(&path) == Some(&message) {
                    tracing::debug!(dir = %path.display(), error = %message, "plugin still not loaded");
                } else {
                    tracing::warn!(dir = %path.display(), error = %message, "plugin not loaded");
                }
                report.failed.push((path.clone(), error.to_string()));
                if passing {
                    state.retrying.insert(path, message);
                    return;
                }
                state.retrying.remove(&path);
                None
            }
        };
        state.retrying.remove(&path);
        let Some(fingerprint) = present.get(&path).cloned() else {
            return;
        };
        state.dirs.insert(
            path,
            Seen {
                fingerprint,
                plugin,
            },
        );
    }

    /// Load what the rollouts serve; `true` when that changed. A store
    /// that cannot be read is warned about once until it can again.
    async fn prepare_rollouts(&self) -> bool {
        match self.shared.host.prepare_rollouts().await {
            Ok(changed) => {
                self.shared.rollouts_failing.store(false, Ordering::Relaxed);
                changed
            }
            Err(error) => {
                if !self.shared.rollouts_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %error, "rollouts cannot be read: the versions serving stay as they were");
                }
                false
            }
        }
    }

    /// Follow the rollouts every `interval` (a change made on any host
    /// sharing the store, or by `airlock rollout`): load the versions they
    /// name and refresh the tool list when what serves changed. Runs until
    /// the returned task is aborted (or the server is dropped everywhere
    /// else).
    pub fn watch_rollouts(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let server = McpServer { shared };
                if server.prepare_rollouts().await {
                    server.refresh_catalog();
                }
            }
        })
    }

    /// Move the host's alert rules on every `interval`
    /// ([`Host::check_alerts`](airlock_host::Host::check_alerts)): alerts
    /// resolve when calls stop, approval backlogs are read. Off the call
    /// path; runs until the returned task is aborted (or the server is
    /// dropped everywhere else).
    pub fn watch_alerts(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                if let Err(error) = shared.host.check_alerts().await {
                    tracing::warn!(error = %error, "cannot check the alert rules");
                }
            }
        })
    }

    /// Call [`McpServer::reload`] every `interval` until the returned task
    /// is aborted (or the server is dropped everywhere else).
    pub fn watch_plugins_dir(
        &self,
        dir: PathBuf,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let server = McpServer { shared };
                if let Err(error) = server.reload(&dir).await {
                    tracing::warn!(dir = %dir.display(), error = %error, "cannot scan the plugins directory");
                }
            }
        })
    }

    /// Rebuild the catalog from the host; tell clients if it changed.
    fn refresh_catalog(&self) -> bool {
        let fresh = Catalog::build(&self.shared.host.tools());
        self.log_warnings(&fresh);
        let mut current = self
            .shared
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.same_tools(&fresh) {
            return false;
        }
        *current = Arc::new(fresh);
        drop(current);
        self.shared
            .changes
            .send_modify(|generation| *generation += 1);
        true
    }

    /// A handler for one MCP connection whose calls run as `principal`
    /// (stdio), or — with `None` — as the principal the HTTP layer
    /// authenticated for each request.
    pub(crate) fn handler(&self, principal: Option<String>) -> AirlockHandler {
        AirlockHandler {
            shared: Arc::clone(&self.shared),
            principal,
            bound: std::sync::OnceLock::new(),
            watcher: std::sync::OnceLock::new(),
        }
    }

    /// Stop taking calls (a new one is refused, `server_busy`) and wait
    /// until the calls running have finished, `grace` at most: what a
    /// server shutting down does before it closes its streams, so running
    /// calls are not stopped mid-run. Whether they all finished.
    pub async fn finish_calls(&self, grace: Duration) -> bool {
        let calls = &self.shared.calls;
        calls.close();
        let all = self.shared.options.max_concurrent_calls;
        tokio::time::timeout(grace, async {
            while calls.available_permits() < all {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Serve MCP over this process's stdin and stdout until the client
    /// closes the stream. Calls run as `principal`. Nothing else may write
    /// to stdout meanwhile (logs go to stderr).
    ///
    /// When both streams are pipes (how an MCP client starts a server),
    /// they are read and written on tokio's reactor, non-blocking, through
    /// descriptors of their own (`rmcp::transport::stdio_pipes`), instead
    /// of handing every read and every write to a blocking-pool thread and
    /// back: those thread switches were a quarter to 40 % of a trivial
    /// call's server CPU on a two-core machine (`docs/performance.md`,
    /// "Against a peer").
    /// Otherwise (a terminal, a file, a socket) the blocking standard
    /// streams serve.
    ///
    /// # Panics
    /// Outside a tokio runtime with its IO driver enabled (`enable_io`,
    /// `enable_all`), as tokio's own network types do.
    ///
    /// # Errors
    /// [`Error::Transport`] if the session cannot start or ends abnormally.
    pub async fn serve_stdio(&self, principal: &str) -> Result<()> {
        let running = self
            .handler(Some(principal.to_owned()))
            .serve(rmcp::transport::stdio_pipes())
            .await
            .map_err(|e| Error::Transport {
                message: e.to_string(),
            })?;
        running.waiting().await.map_err(|e| Error::Transport {
            message: e.to_string(),
        })?;
        Ok(())
    }
}

/// Plugin directories under `dir` with their fingerprints.
fn plugin_dirs(dir: &Path) -> Result<BTreeMap<PathBuf, Fingerprint>> {
    let io = |e| {
        Error::Host(airlock_host::Error::Io {
            path: dir.to_owned(),
            source: e,
        })
    };
    let mut dirs = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if airlock_host::is_plugin_dir(&path) {
            let fingerprint = fingerprint(&path);
            dirs.insert(path, fingerprint);
        }
    }
    Ok(dirs)
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().ok(),
                    inode(&meta),
                )
            })
        })
        .collect();
    files.sort();
    files
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Catalog warnings logged already, at most this many remembered (then
/// forgotten all at once: a warning may then be logged once more).
const MAX_WARNED: usize = 10_000;

/// One of a principal's call slots, given back on drop.
struct PrincipalSlot {
    shared: Arc<Shared>,
    principal: String,
}

impl PrincipalSlot {
    /// A slot for `principal`, unless it runs its limit of calls already.
    fn acquire(shared: &Arc<Shared>, principal: &str) -> Option<PrincipalSlot> {
        let mut running = shared
            .principal_calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = running.entry(principal.to_owned()).or_insert(0);
        if *count >= shared.options.max_calls_per_principal {
            return None;
        }
        *count += 1;
        Some(PrincipalSlot {
            shared: Arc::clone(shared),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut running = self
            .shared
            .principal_calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.principal);
            }
        }
    }
}

/// The principal the HTTP layer authenticated, in the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal(pub(crate) String);

/// One MCP connection (stdio) or session (HTTP).
#[derive(Debug)]
pub(crate) struct AirlockHandler {
    shared: Arc<Shared>,
    /// Fixed principal (stdio); `None`: from each HTTP request.
    principal: Option<String>,
    /// The principal an HTTP session started with: later requests in the
    /// session must authenticate as the same principal.
    bound: std::sync::OnceLock<String>,
    /// The task sending this session's list-change notifications: one
    /// (however often the client says `initialized`), stopped with the
    /// session (when the SDK drops its handler).
    watcher: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for AirlockHandler {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.abort();
        }
    }
}

impl AirlockHandler {
    fn principal(&self, context: &RequestContext<RoleServer>) -> Result<String, ErrorData> {
        if let Some(principal) = &self.principal {
            return Ok(principal.clone());
        }
        let from_request = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .map(|p| p.0.clone())
            .ok_or_else(|| {
                ErrorData::internal_error("request without an authenticated principal", None)
            })?;
        let bound = self.bound.get_or_init(|| from_request.clone());
        if *bound != from_request {
            return Err(ErrorData::invalid_request(
                "this MCP session belongs to another principal",
                Some(json!({"kind": "session_principal_mismatch"})),
            ));
        }
        Ok(from_request)
    }
}

/// The `_meta` entries of a `tools/call` the pipeline uses.
#[derive(Debug, Default, Clone)]
struct CallMeta {
    approval_id: Option<String>,
    idempotency_key: Option<String>,
    reason: Option<String>,
    session: Option<String>,
    trace_id: Option<String>,
    traceparent: Option<String>,
}

impl CallMeta {
    /// From the request's `_meta` (rmcp moves it to the context; older
    /// paths may leave it on the parameters).
    fn parse(
        context: &RequestMetaObject,
        params: Option<&RequestMetaObject>,
    ) -> Result<CallMeta, ErrorData> {
        let get = |key: &str| -> Result<Option<String>, ErrorData> {
            let value = context
                .get(key)
                .or_else(|| params.and_then(|meta| meta.get(key)));
            match value {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ErrorData::invalid_params(
                    format!("_meta[\"{key}\"] must be a string"),
                    Some(json!({"kind": "invalid_meta"})),
                )),
            }
        };
        Ok(CallMeta {
            approval_id: get(meta_keys::APPROVAL_ID)?,
            idempotency_key: get(meta_keys::IDEMPOTENCY_KEY)?,
            reason: get(meta_keys::REASON)?,
            session: get(meta_keys::SESSION)?,
            trace_id: get(meta_keys::TRACE_ID)?,
            traceparent: get(meta_keys::TRACEPARENT)?,
        })
    }
}

/// Tasks remembered at most (pending approvals held as tasks, and
/// finished ones until the task manager forgets them); past it, a call
/// needing approval answers `approval_pending` as for a client without
/// tasks.
pub const MAX_APPROVAL_TASKS: usize = 10_000;

/// Most calls of clients without tasks waiting for an approver at once
/// (`serve.approval_wait_s`), all callers together: each holds a request
/// and polls the store, holding no call slot. Past it a call answers
/// `approval_pending` at once, as it does with no wait configured.
pub const MAX_APPROVAL_WAITERS: usize = 1_024;
/// How often a task re-reads its approval while an approver decides (one
/// store read per waiting task each time).
const TASK_APPROVAL_POLL: Duration = Duration::from_secs(1);
/// How long a finished task stays readable past its approval's expiry.
const TASK_GRACE: Duration = Duration::from_secs(600);

/// Who may see a task, and until when it is remembered.
#[derive(Debug, Clone)]
struct TaskOwner {
    principal: String,
    /// Past this (ms since the Unix epoch) the task manager has forgotten
    /// the task whatever it did: created, it runs at most its TTL, and a
    /// finished task is kept one TTL more.
    forgotten_ms: u64,
}

/// Everything needed to make a call again once its approval is decided.
#[derive(Debug, Clone)]
struct Resume {
    tool: String,
    arguments: String,
    principal: String,
    meta: CallMeta,
}

impl Resume {
    fn request(&self, approval_id: &str, cancel: CancellationToken) -> CallRequest {
        let mut call = CallRequest::new(self.tool.clone(), self.arguments.clone())
            .principal(self.principal.clone())
            .cancel_on(cancel);
        call.approval_id = Some(approval_id.to_owned());
        call.idempotency_key = self.meta.idempotency_key.clone();
        call.reason = self.meta.reason.clone();
        call.session = self.meta.session.clone();
        call.trace_id = self.meta.trace_id.clone();
        call.traceparent = self.meta.traceparent.clone();
        call
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A task's work: wait, holding no call slot, until an approver decides
/// approval `approval_id` (or it expires, or the client cancels the
/// task), then make the call — which the host runs only if the approval
/// is approved, bound to this very call, and unused — in the slots every
/// call takes.
async fn resume_after_decision(
    shared: Arc<Shared>,
    name: String,
    entry: CatalogEntry,
    resume: Resume,
    approval_id: String,
    cancel: CancellationToken,
) -> Result<CallToolResult, TaskExit> {
    decided(&shared, &approval_id, &cancel).await?;
    let result = match run_decided(&shared, &resume, &approval_id, &cancel).await {
        Ok(result) => result,
        Err(Unslotted::Cancelled) => return Err(TaskExit::Cancelled),
        Err(Unslotted::ShuttingDown) => {
            return Err(TaskExit::Error(ErrorData::internal_error(
                "the server is shutting down",
                None,
            )));
        }
    };
    // Stopped by the client's `tasks/cancel`: the task is `cancelled`, not
    // `completed` with an error (a call that finished first stays
    // `completed`, as the spec allows; the audit log has the call either
    // way).
    if cancel.is_cancelled() && matches!(&result, Err(CallError::Cancelled { .. })) {
        return Err(TaskExit::Cancelled);
    }
    if let Err(error) = &result {
        tracing::debug!(tool = %name, kind = error.kind(), "call resumed from a task failed");
    }
    Ok(outcome::tool_result(&name, &entry, result))
}

/// Waits until `cancel` fires or a poll interval passes.
async fn pause(cancel: &CancellationToken) -> Result<(), TaskExit> {
    tokio::select! {
        () = cancel.cancelled() => Err(TaskExit::Cancelled),
        () = tokio::time::sleep(TASK_APPROVAL_POLL) => Ok(()),
    }
}

/// Waits, holding nothing, until approval `approval_id` is no longer
/// pending (decided, expired, gone) or `cancel` fires.
async fn decided(
    shared: &Shared,
    approval_id: &str,
    cancel: &CancellationToken,
) -> Result<(), TaskExit> {
    loop {
        let host = Arc::clone(&shared.host);
        let id = approval_id.to_owned();
        // A store read may wait: off the executor. Anything but a pending,
        // unexpired approval ends the wait; the host then decides.
        let read = tokio::task::spawn_blocking(move || host.approval(&id)).await;
        let pending = matches!(
            &read,
            Ok(Ok(Some(a))) if a.state == ApprovalState::Pending && a.expires_ms > now_ms()
        );
        if !pending {
            return Ok(());
        }
        pause(cancel).await?;
    }
}

/// Why a decided call did not get its slots.
enum Unslotted {
    Cancelled,
    ShuttingDown,
}

/// The call of `resume` under approval `approval_id`, once it is decided:
/// in the slots every call takes, waited for (until `cancel`); the host's
/// answer as it is.
async fn run_decided(
    shared: &Arc<Shared>,
    resume: &Resume,
    approval_id: &str,
    cancel: &CancellationToken,
) -> Result<Result<airlock_host::CallResponse, CallError>, Unslotted> {
    let _principal_slot = loop {
        if let Some(slot) = PrincipalSlot::acquire(shared, &resume.principal) {
            break slot;
        }
        pause(cancel).await.map_err(|_| Unslotted::Cancelled)?;
    };
    let _slot = tokio::select! {
        () = cancel.cancelled() => return Err(Unslotted::Cancelled),
        permit = Arc::clone(&shared.calls).acquire_owned() => {
            permit.map_err(|_| Unslotted::ShuttingDown)?
        }
    };
    Ok(shared
        .host
        .call(resume.request(approval_id, cancel.clone()))
        .await)
}

/// What a task waiting on `approval_id` tells its client in `_meta`.
fn pending_meta(approval_id: &str, expires: &str) -> JsonObject {
    let mut meta = JsonObject::new();
    meta.insert(
        "airlock/approval".into(),
        json!({
            "status": "pending",
            "approval_id": approval_id,
            "waits_for": "a decision by one of the host's approvers",
            "expires_at": expires,
        }),
    );
    meta
}

impl AirlockHandler {
    /// The call that answered `approval_pending` as a task that completes
    /// once an approver decides; `None` when too many tasks are held, or
    /// the approval has a task already that is not this caller's or no
    /// longer waits (cancelled).
    fn approval_task(
        &self,
        name: &str,
        entry: &CatalogEntry,
        resume: Resume,
        approval_id: &str,
        expires: &str,
    ) -> Option<CreateTaskResult> {
        // Readable until its approval expires, and a while after: the
        // expiry the host answered with (to the second), not read again
        // from the store on this async worker.
        let expires_ms = humantime::parse_rfc3339(expires)
            .ok()
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let owner = resume.principal.clone();
        let mut owners = self
            .shared
            .task_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut by_approval = self
            .shared
            .approval_tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One task per approval while the task manager keeps it: resending
        // the call with the approval's id must not spawn a task (and a
        // store poll) each time — nor, after cancelling the task, make
        // another (cancel and resend filled the server's tasks). A call
        // whose approval has a task no longer working answers
        // `approval_pending` as for a client without tasks.
        if let Some(task_id) = by_approval.get(approval_id)
            && let Ok(kept) = self.shared.tasks.get_task(task_id)
        {
            let theirs = owners.get(task_id).is_some_and(|o| o.principal == owner);
            if !theirs || kept.task.status != rmcp::model::TaskStatus::Working {
                return None;
            }
            return Some(
                CreateTaskResult::new(kept.task)
                    .with_meta(pending_meta(approval_id, expires).into()),
            );
        }
        let now = now_ms();
        if owners.len() >= MAX_APPROVAL_TASKS {
            // By time alone, one pass: asking the task manager of each
            // task (a sweep of every task each) cost the square of the
            // cap, under these locks, at every call past it.
            owners.retain(|_, o| o.forgotten_ms > now);
            by_approval.retain(|_, id| owners.contains_key(id));
            if owners.len() >= MAX_APPROVAL_TASKS {
                return None;
            }
        }
        // Long enough that the task manager never stops the call itself:
        // the wait for a decision, the approved call's window to start,
        // its longest deadline, and a grace to read the result.
        let policy = &self.shared.host.config().policy;
        let ttl = expires_ms
            .saturating_sub(now)
            .saturating_add(policy.approvals.approved_expiry_s.saturating_mul(1000))
            .saturating_add(policy.limits.longest_timeout_ms())
            .saturating_add(u64::try_from(TASK_GRACE.as_millis()).unwrap_or(u64::MAX));
        let options = TaskOptions::new()
            .with_ttl_ms(ttl)
            .with_poll_interval_ms(1_000)
            .with_status_message(format!(
                "waiting for an approver to decide approval {approval_id} (expires {expires})"
            ));
        let (shared, name, entry, id) = (
            Arc::clone(&self.shared),
            name.to_owned(),
            entry.clone(),
            approval_id.to_owned(),
        );
        let task = self.shared.tasks.spawn(options, move |context| {
            Box::pin(async move {
                let cancel = CancellationToken::new();
                let watcher = {
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        context.cancelled().await;
                        cancel.cancel();
                    })
                };
                let result = resume_after_decision(shared, name, entry, resume, id, cancel).await;
                watcher.abort();
                result
            })
        });
        owners.insert(
            task.task_id.clone(),
            TaskOwner {
                principal: owner,
                forgotten_ms: now.saturating_add(ttl.saturating_mul(2)),
            },
        );
        by_approval.insert(approval_id.to_owned(), task.task_id.clone());
        drop((owners, by_approval));
        Some(CreateTaskResult::new(task).with_meta(pending_meta(approval_id, expires).into()))
    }

    /// Refuse a task that is not the requesting principal's exactly as one
    /// that does not exist.
    fn own_task(
        &self,
        task_id: &str,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let principal = self.principal(context)?;
        let owners = self
            .shared
            .task_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if owners
            .get(task_id)
            .is_some_and(|o| o.principal == principal)
        {
            return Ok(());
        }
        Err(ErrorData::invalid_params(
            format!(
                "unknown task `{}`",
                task_id.chars().take(64).collect::<String>()
            ),
            Some(json!({"kind": "unknown_task"})),
        ))
    }
}

impl ServerHandler for AirlockHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Airlock serves sandboxed WebAssembly tools. The tool `plugin/tool` is named \
             `plugin__tool`. Every call is validated, limited and audited by the host; a call \
             that needs a human approval becomes a task (for clients of the tasks extension) \
             that completes once an approver decides, or else returns `approval_pending` with \
             an approval id.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let catalog = McpServer {
            shared: Arc::clone(&self.shared),
        }
        .catalog();
        Ok(ListToolsResult::with_all_items(catalog.definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let catalog = McpServer {
            shared: Arc::clone(&self.shared),
        }
        .catalog();
        let name = request.name.as_ref();
        let Some(entry) = catalog.get(name) else {
            // Named back cut short: a caller's megabyte of name is not
            // sent back whole.
            let shown = name.chars().take(64).collect::<String>();
            let cut = if shown.len() < name.len() { "…" } else { "" };
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{shown}`{cut}"),
                Some(json!({"kind": "unknown_tool"})),
            ));
        };
        let principal = self.principal(&context)?;
        let meta = CallMeta::parse(&context.meta, request.meta.as_ref())?;
        // Per principal first: a principal at its limit never takes one of
        // the slots every principal shares.
        let Some(principal_slot) = PrincipalSlot::acquire(&self.shared, &principal) else {
            let error = CallError::PrincipalBusy {
                principal,
                limit: self.shared.options.max_calls_per_principal,
            };
            tracing::debug!(tool = %name, kind = error.kind(), "call refused");
            return Ok(outcome::tool_result(name, entry, Err(error)).into());
        };
        let Ok(slot) = Arc::clone(&self.shared.calls).try_acquire_owned() else {
            let why = if self.shared.calls.is_closed() {
                "the server is shutting down; try again later (or another host)".to_owned()
            } else {
                format!(
                    "the server is running its limit of {} calls at once; try again later",
                    self.shared.options.max_concurrent_calls
                )
            };
            return Ok(outcome::refusal("server_busy", &why).into());
        };
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default()).to_string();
        // A client of the tasks extension gets a task instead of a call
        // that blocks or answers `approval_pending`.
        let tasks = context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        // Any other client waits for the decision up to
        // `serve.approval_wait_s`, if it is set — without its slots (see
        // below).
        let wait = if tasks {
            None
        } else {
            self.shared.options.approval_wait
        };
        let resume = (tasks || wait.is_some()).then(|| Resume {
            tool: entry.tool.id().to_owned(),
            arguments: arguments.clone(),
            principal: principal.clone(),
            meta: meta.clone(),
        });
        let mut call = CallRequest::new(entry.tool.id(), arguments)
            .principal(principal)
            .cancel_on(context.ct.clone());
        call.approval_id = meta.approval_id;
        call.idempotency_key = meta.idempotency_key;
        call.reason = meta.reason;
        call.session = meta.session;
        call.trace_id = meta.trace_id;
        call.traceparent = meta.traceparent;
        let result = self.shared.host.call(call).await;
        let (
            Some(resume),
            Err(CallError::ApprovalPending {
                approval_id,
                expires,
                ..
            }),
        ) = (resume, &result)
        else {
            if let Err(error) = &result {
                tracing::debug!(tool = %name, kind = error.kind(), "call failed");
            }
            return Ok(outcome::tool_result(name, entry, result).into());
        };
        if tasks {
            if let Some(task) = self.approval_task(name, entry, resume, approval_id, expires) {
                tracing::debug!(tool = %name, approval_id = %approval_id, task = %task.task.task_id, "call waits for an approver as a task");
                return Ok(task.into());
            }
        } else if let Some(wait) = wait
            && let Ok(_waiting) = Arc::clone(&self.shared.approval_waiters).try_acquire_owned()
        {
            // Waited for with no slot held, as a task's is: a few callers
            // each asking for approvals held every call slot of the
            // server, for as long as approvers took, and everyone else
            // was refused `server_busy`. Once decided, the call takes its
            // slots again like any other (waiting for them). Past
            // `MAX_APPROVAL_WAITERS` waiting at once, a call answers
            // `approval_pending` at once, as without a wait.
            drop((principal_slot, slot));
            let cancel = context.ct.clone();
            let cancelled = || CallError::Cancelled {
                tool: entry.tool.id().to_owned(),
                ran: false,
            };
            match tokio::time::timeout(wait, decided(&self.shared, approval_id, &cancel)).await {
                // Still pending: the caller hears so, as before.
                Err(_) => {}
                Ok(Err(_)) => {
                    return Ok(outcome::tool_result(name, entry, Err(cancelled())).into());
                }
                Ok(Ok(())) => {
                    let decided = run_decided(&self.shared, &resume, approval_id, &cancel).await;
                    let result = match decided {
                        // The host's answer as it is (a call cancelled
                        // while it ran says it ran).
                        Ok(result) => result,
                        Err(Unslotted::Cancelled) => Err(cancelled()),
                        Err(Unslotted::ShuttingDown) => {
                            return Ok(outcome::refusal(
                                "server_busy",
                                "the server is shutting down; try again later (or another host)",
                            )
                            .into());
                        }
                    };
                    if let Err(error) = &result {
                        tracing::debug!(tool = %name, kind = error.kind(), "call failed");
                    }
                    return Ok(outcome::tool_result(name, entry, result).into());
                }
            }
        }
        if let Err(error) = &result {
            tracing::debug!(tool = %name, kind = error.kind(), "call failed");
        }
        Ok(outcome::tool_result(name, entry, result).into())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.own_task(&request.task_id, &context)?;
        Ok(GetTaskResult::new(
            self.shared.tasks.get_task(&request.task_id)?,
        ))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // Airlock's tasks never ask the client for input: the decision is
        // an approver's. Responses are accepted and ignored, as the spec
        // says of keys that were not asked for.
        self.own_task(&request.task_id, &context)?;
        self.shared
            .tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // The task stops waiting; the approval stays for the approvers
        // (it expires unused if no call resumes it).
        self.own_task(&request.task_id, &context)?;
        self.shared.tasks.cancel_task(&request.task_id)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Sessions that began with `initialize` (protocol versions before
        // 2026-07-28) get list changes as plain notifications.
        // Once per session: a client repeating `initialized` gets no second
        // task (each held the session's peer until the catalog changed).
        if self.watcher.get().is_some() {
            return;
        }
        let mut changes = self.shared.changes.subscribe();
        let peer = context.peer;
        let task = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
        if let Err(task) = self.watcher.set(task.abort_handle()) {
            // Another `initialized` won the race.
            task.abort();
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let _ = requested;
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        // 2026-07-28 clients subscribe with `subscriptions/listen`.
        let mut changes = self.shared.changes.subscribe();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if context.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Approvals as MCP tasks, through the whole HTTP application with the
    //! real `billing` plugin: a client of the tasks extension gets a task
    //! that completes when an approver decides; other clients get
    //! `approval_pending` as before.

    use airlock_host::{ApprovalPolicy, Approver, HostConfig, Policy, Verdict};
    use airlock_tests::{PLUGINS_DIR, sha256_hex};
    use http_body_util::BodyExt as _;
    use hyper::service::Service as _;

    use super::*;
    use crate::http::{CallerToken, HttpConfig, MCP_PATH, default_addr, router};

    const ALICE: &str = "alice-secret-token";

    async fn billing_server() -> (McpServer, axum::Router) {
        let config = HostConfig::default().policy(Policy {
            approvals: ApprovalPolicy {
                approvers: vec![Approver {
                    name: "alice".into(),
                    token_sha256: sha256_hex(ALICE.as_bytes()),
                    operator: false,
                }],
                ..ApprovalPolicy::default()
            },
            ..Policy::default()
        });
        let host = Arc::new(Host::new(config).unwrap());
        host.load_plugin(format!("{PLUGINS_DIR}/billing"))
            .await
            .unwrap();
        host.call(CallRequest::new(
            "billing/open-account",
            json!({"account": "9182", "balance_cents": 0}).to_string(),
        ))
        .await
        .unwrap();
        let server = McpServer::new(host, ServeOptions::default());
        let tokens = ["agent-1", "agent-2"]
            .iter()
            .map(|p| CallerToken {
                principal: (*p).into(),
                token_sha256: sha256_hex(format!("{p}-secret").as_bytes()),
            })
            .collect();
        let http = HttpConfig::new(default_addr(), tokens);
        let router = router(&server, &http, CancellationToken::new()).unwrap();
        (server, router)
    }

    #[tokio::test]
    async fn the_approvals_api_approves_arguments_it_cannot_show_only_when_told() {
        let (server, router) = billing_server().await;
        // The card digits are redacted before the approval is stored: no
        // approver can see them, the tool would receive them.
        let held = server
            .host()
            .call(
                CallRequest::new(
                    "billing/refund",
                    json!({"account": "9182", "amount_cents": 2400, "reason": "lost",
                        "card_last4": "4242"})
                    .to_string(),
                )
                .principal("agent-1")
                .idempotency_key("unseen-1"),
            )
            .await;
        let id = match held {
            Err(CallError::ApprovalPending { approval_id, .. }) => approval_id,
            other => panic!("expected approval_pending, got {other:?}"),
        };
        let decide = |body: Value| {
            let router = router.clone();
            let id = id.clone();
            async move {
                let request = hyper::Request::post(format!("/approvals/{id}"))
                    .header("host", "127.0.0.1:7410")
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {ALICE}"))
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
                let service = hyper_util::service::TowerToHyperService::new(router);
                let response = service.call(request).await.unwrap();
                let status = response.status();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        let state = || server.host().approval(&id).unwrap().unwrap().state;
        let (status, body) = decide(json!({"decision": "approve", "reason": "ok"})).await;
        assert_eq!(status, hyper::StatusCode::CONFLICT, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(
            error.contains("values were redacted")
                && error.contains("\"unseen\": \"acknowledged\""),
            "{error}"
        );
        assert_eq!(state(), ApprovalState::Pending);
        // Only the one word acknowledges.
        for unseen in [json!("yes"), json!(true), json!(null)] {
            let (status, body) = decide(json!({"decision": "approve", "unseen": unseen})).await;
            assert_ne!(status, hyper::StatusCode::OK, "{body}");
            assert_eq!(state(), ApprovalState::Pending, "{unseen}");
        }
        let (status, body) =
            decide(json!({"decision": "approve", "reason": "ok", "unseen": "acknowledged"})).await;
        assert_eq!(status, hyper::StatusCode::OK, "{body}");
        assert_eq!(state(), ApprovalState::Approved);
    }

    /// One MCP session over the router.
    struct Session {
        router: axum::Router,
        principal: &'static str,
        id: Option<String>,
        next: u64,
    }

    impl Session {
        /// A caller with no session yet.
        fn unopened(router: &axum::Router, principal: &'static str) -> Session {
            Session {
                router: router.clone(),
                principal,
                id: None,
                next: 1,
            }
        }

        async fn open(router: &axum::Router, principal: &'static str, tasks: bool) -> Session {
            let mut session = Session::unopened(router, principal);
            let capabilities = if tasks {
                json!({"extensions": {rmcp::model::TASKS_EXTENSION_ID: {}}})
            } else {
                json!({})
            };
            let (id, answer) = session
                .post(
                    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": capabilities,
                    "clientInfo": {"name": "test", "version": "0"}}}),
                )
                .await;
            assert!(answer.get("result").is_some(), "{answer}");
            session.id = id;
            session
                .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await;
            session
        }

        /// POST `body`: the session id answered, and the JSON-RPC message
        /// (from a JSON or an SSE body; `null` for a notification).
        async fn post(&self, body: Value) -> (Option<String>, Value) {
            let response = self.call(hyper::Method::POST, body.to_string()).await;
            let id = response
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&bytes);
            let message = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .chain(std::iter::once(text.as_ref()))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|v| v.get("id").is_some())
                .unwrap_or(Value::Null);
            (id, message)
        }

        /// One request on the MCP path as this session's caller, with its
        /// session id once it has one.
        async fn call(
            &self,
            method: hyper::Method,
            body: String,
        ) -> hyper::Response<axum::body::Body> {
            let id = self
                .id
                .as_deref()
                .map(|id| hyper::header::HeaderValue::from_str(id).unwrap());
            self.call_with(method, body, id).await
        }

        /// [`call`](Self::call) with `session` as the session id header,
        /// whatever its bytes.
        async fn call_with(
            &self,
            method: hyper::Method,
            body: String,
            session: Option<hyper::header::HeaderValue>,
        ) -> hyper::Response<axum::body::Body> {
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(MCP_PATH)
                .header("host", "127.0.0.1:7410")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .header("authorization", format!("Bearer {}-secret", self.principal));
            if let Some(id) = session {
                request = request.header("mcp-session-id", id);
            }
            let service = hyper_util::service::TowerToHyperService::new(self.router.clone());
            service
                .call(request.body(axum::body::Body::from(body)).unwrap())
                .await
                .unwrap()
        }

        /// `method` on the MCP path with this session's id: the status and
        /// the body as text.
        async fn send(
            &self,
            method: hyper::Method,
            body: Option<&Value>,
        ) -> (hyper::StatusCode, String) {
            let body = body.map_or_else(String::new, ToString::to_string);
            let response = self.call(method, body).await;
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }

        async fn request(&mut self, method: &str, params: Value) -> Value {
            self.next += 1;
            let body =
                json!({"jsonrpc": "2.0", "id": self.next, "method": method, "params": params});
            self.post(body).await.1
        }
    }

    /// An `initialize` request opening a session.
    fn initialize_request() -> Value {
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}})
    }

    /// A caller cannot hold more than its share of MCP sessions (each
    /// holds a worker and buffers): past it `initialize` is refused until
    /// one is closed, and other callers are not affected.
    #[tokio::test]
    async fn a_caller_holds_a_bounded_number_of_sessions() {
        use crate::http::MAX_SESSIONS_PER_CALLER;
        let (_server, router) = billing_server().await;
        let mut held = Vec::new();
        for _ in 0..MAX_SESSIONS_PER_CALLER {
            held.push(Session::open(&router, "agent-1", false).await);
        }
        let initialize = initialize_request();
        let extra = Session::unopened(&router, "agent-1");
        let (status, body) = extra.send(hyper::Method::POST, Some(&initialize)).await;
        assert_eq!(status, hyper::StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(body.contains("close one"), "{body}");
        // Others still open sessions; sessions held still answer.
        Session::open(&router, "agent-2", false).await;
        let listed = held[0].request("tools/list", json!({})).await;
        assert!(listed["result"]["tools"].is_array(), "{listed}");
        // Closing one frees a place.
        let (status, _) = held[0].send(hyper::Method::DELETE, None).await;
        assert!(status.is_success(), "{status}");
        Session::open(&router, "agent-1", false).await;
        let (status, _) = extra.send(hyper::Method::POST, Some(&initialize)).await;
        assert_eq!(status, hyper::StatusCode::TOO_MANY_REQUESTS);
    }

    /// Concurrent `initialize` requests count while they are answered:
    /// together they cannot open more than a caller's share (before, each
    /// passed the check before any of them had opened a session).
    #[tokio::test]
    async fn concurrent_initializes_open_no_more_than_a_callers_share() {
        use crate::http::MAX_SESSIONS_PER_CALLER;
        let (_server, router) = billing_server().await;
        let initialize = initialize_request();
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..MAX_SESSIONS_PER_CALLER + 32 {
            let session = Session::unopened(&router, "agent-1");
            let initialize = initialize.clone();
            requests
                .spawn(async move { session.send(hyper::Method::POST, Some(&initialize)).await });
        }
        let (mut opened, mut refused) = (0, 0);
        while let Some(answer) = requests.join_next().await {
            let (status, body) = answer.unwrap();
            match status {
                hyper::StatusCode::OK => opened += 1,
                hyper::StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("{other}: {body}"),
            }
        }
        assert_eq!(opened, MAX_SESSIONS_PER_CALLER);
        assert_eq!(refused, 32);
        // Every place is taken, none is leaked by the refused or answered.
        let extra = Session::unopened(&router, "agent-1");
        let (status, _) = extra.send(hyper::Method::POST, Some(&initialize)).await;
        assert_eq!(status, hyper::StatusCode::TOO_MANY_REQUESTS);
        Session::open(&router, "agent-2", false).await;
    }

    /// A caller naming another caller's session id finds no session: it
    /// can neither close it nor post into it; its owner still can.
    #[tokio::test]
    async fn a_session_answers_only_its_opener() {
        let (_server, router) = billing_server().await;
        let mut owner = Session::open(&router, "agent-1", false).await;
        let mut intruder = Session::unopened(&router, "agent-2");
        intruder.id = owner.id.clone();
        let (status, body) = intruder.send(hyper::Method::DELETE, None).await;
        assert_eq!(status, hyper::StatusCode::NOT_FOUND, "{body}");
        let (status, _) = intruder.send(hyper::Method::GET, None).await;
        assert_eq!(status, hyper::StatusCode::NOT_FOUND);
        let (status, _) = intruder
            .send(
                hyper::Method::POST,
                Some(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})),
            )
            .await;
        assert_eq!(status, hyper::StatusCode::NOT_FOUND);
        let listed = owner.request("tools/list", json!({})).await;
        assert!(listed["result"]["tools"].is_array(), "{listed}");
        let (status, _) = owner.send(hyper::Method::DELETE, None).await;
        assert!(status.is_success(), "{status}");
    }

    /// A session id the SDK cannot read would be taken for none, opening a
    /// session outside the caller's count: it is refused before.
    #[tokio::test]
    async fn an_unreadable_session_id_opens_no_session() {
        let (_server, router) = billing_server().await;
        let initialize = initialize_request();
        let caller = Session::unopened(&router, "agent-1");
        for bytes in [&b"\xff"[..], b"a b", b"id\x80"] {
            let id = hyper::header::HeaderValue::from_bytes(bytes).unwrap();
            let response = caller
                .call_with(hyper::Method::POST, initialize.to_string(), Some(id))
                .await;
            assert_eq!(
                response.status(),
                hyper::StatusCode::BAD_REQUEST,
                "{bytes:?}"
            );
            assert!(response.headers().get("mcp-session-id").is_none());
        }
        // None was opened: the caller still has its whole share.
        for _ in 0..crate::http::MAX_SESSIONS_PER_CALLER {
            Session::open(&router, "agent-1", false).await;
        }
    }

    /// However often a client says `initialized`, its session has one
    /// task watching the catalog, stopped with the session.
    #[tokio::test]
    async fn repeated_initialized_notifications_start_one_watcher() {
        let (server, router) = billing_server().await;
        let receivers = || server.shared.changes.receiver_count();
        let base = receivers();
        let mut session = Session::open(&router, "agent-1", false).await;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        for _ in 0..50 {
            let (status, body) = session.send(hyper::Method::POST, Some(&initialized)).await;
            assert!(status.is_success(), "{status}: {body}");
        }
        // Notifications are handled in the session's task, in order: a
        // request answered after them was handled after them.
        let listed = session.request("tools/list", json!({})).await;
        assert!(listed["result"]["tools"].is_array(), "{listed}");
        assert_eq!(receivers(), base + 1, "one watcher for the session");
        let (status, _) = session.send(hyper::Method::DELETE, None).await;
        assert!(status.is_success(), "{status}");
        for _ in 0..250 {
            if receivers() == base {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(receivers(), base, "the watcher outlived its session");
    }

    fn refund(key: &str) -> Value {
        json!({"name": "billing__refund",
               "arguments": {"account": "9182", "amount_cents": 2400, "reason": "damaged"},
               "_meta": {"airlock/idempotency_key": key, "airlock/reason": "ticket #7"}})
    }

    /// Poll `tasks/get` until the task is terminal.
    async fn settled(session: &mut Session, task: &str) -> Value {
        for _ in 0..200 {
            let answer = session.request("tasks/get", json!({"taskId": task})).await;
            let result = &answer["result"];
            if matches!(
                result["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return result.clone();
            }
            assert_eq!(result["status"], "working", "{answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {task} did not settle");
    }

    /// An unknown tool's name is named back cut short: a caller's
    /// megabyte of name is not answered with a megabyte.
    #[tokio::test]
    async fn an_unknown_tools_name_is_named_back_cut_short() {
        let (_server, router) = billing_server().await;
        let mut agent = Session::open(&router, "agent-1", true).await;
        let name = "x".repeat(100_000);
        let answer = agent
            .request("tools/call", json!({"name": name, "arguments": {}}))
            .await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.len() < 200, "{}", message.len());
        assert!(message.starts_with("unknown tool `xxx"), "{message}");
        assert_eq!(answer["error"]["data"]["kind"], "unknown_tool");
    }

    #[tokio::test]
    async fn a_call_needing_approval_becomes_a_task_an_approver_completes() {
        let (server, router) = billing_server().await;
        let mut agent = Session::open(&router, "agent-1", true).await;
        let answer = agent.request("tools/call", refund("r-1")).await;
        let created = &answer["result"];
        assert_eq!(created["resultType"], "task", "{answer}");
        assert_eq!(created["status"], "working");
        let task = created["taskId"].as_str().unwrap().to_owned();
        let approval = created["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            created["statusMessage"]
                .as_str()
                .unwrap()
                .contains(&approval),
            "{created}"
        );
        // Readable until the approval expires and the grace after it: the
        // expiry the call answered with, to the second.
        let expires_ms = server
            .host()
            .approval(&approval)
            .unwrap()
            .unwrap()
            .expires_ms;
        let grace = u64::try_from(TASK_GRACE.as_millis()).unwrap();
        let ttl = created["ttlMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("{created}"));
        let policy = &server.host().config().policy;
        let wanted = expires_ms.saturating_sub(now_ms())
            + policy.approvals.approved_expiry_s * 1000
            + policy.limits.longest_timeout_ms()
            + grace;
        assert!(ttl.abs_diff(wanted) < 5_000, "ttl {ttl}, wanted {wanted}");
        // Working while no one decides; nothing ran.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = agent.request("tasks/get", json!({"taskId": task})).await;
        assert_eq!(now["result"]["status"], "working", "{now}");
        // Another principal cannot see or cancel it.
        let mut other = Session::open(&router, "agent-2", true).await;
        for method in ["tasks/get", "tasks/cancel"] {
            let refused = other.request(method, json!({"taskId": task})).await;
            assert_eq!(
                refused["error"]["data"]["kind"], "unknown_task",
                "{refused}"
            );
        }
        // The approver decides: the call runs, once, and the task holds its
        // result.
        server
            .host()
            .decide(&approval, "alice", ALICE, Verdict::Approve, Some("checked"))
            .await
            .unwrap();
        let done = settled(&mut agent, &task).await;
        assert_eq!(done["status"], "completed", "{done}");
        let result = &done["result"];
        assert_eq!(result["isError"], false, "{done}");
        assert_eq!(
            result["_meta"]["airlock/call"]["approval_id"],
            approval.as_str()
        );
        let state = server.host().approval(&approval).unwrap().unwrap().state;
        assert_eq!(state, ApprovalState::Consumed);
    }

    /// Cancelling a task and resending its call made a new task each
    /// time, while the cancelled ones were kept for their TTL: one caller
    /// cancelling and resending filled the server's tasks for everyone.
    /// An approval gets one task while it is kept; the resent call then
    /// answers `approval_pending` as for a client without tasks.
    #[tokio::test]
    async fn cancelling_a_task_and_resending_its_call_makes_no_new_task() {
        let (server, router) = billing_server().await;
        let mut agent = Session::open(&router, "agent-1", true).await;
        let answer = agent.request("tools/call", refund("r-cancel")).await;
        let first = answer["result"]["taskId"].as_str().unwrap().to_owned();
        let approval = answer["result"]["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let cancelled = agent
            .request("tasks/cancel", json!({"taskId": first}))
            .await;
        assert!(cancelled.get("error").is_none(), "{cancelled}");
        assert_eq!(settled(&mut agent, &first).await["status"], "cancelled");
        let mut again = refund("r-cancel");
        again["_meta"]["airlock/approval_id"] = json!(approval);
        for _ in 0..20 {
            let answer = agent.request("tools/call", again.clone()).await;
            assert!(answer["result"]["taskId"].is_null(), "{answer}");
            assert_eq!(answer["result"]["isError"], true, "{answer}");
            assert!(answer.to_string().contains("approval_pending"), "{answer}");
        }
        let held = server
            .shared
            .task_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        assert_eq!(held, 1);
        // The approval itself still waits for a decision.
        assert_eq!(
            server.host().approval(&approval).unwrap().unwrap().state,
            ApprovalState::Pending
        );
    }

    /// Resending a pending call with its approval's id, as a client that
    /// polls by calling again does, gets the task already waiting on that
    /// approval: no new task, no new poller, however often it is resent.
    #[tokio::test]
    async fn a_call_resent_with_its_approval_id_gets_the_waiting_task_back() {
        let (server, router) = billing_server().await;
        let mut agent = Session::open(&router, "agent-1", true).await;
        let answer = agent.request("tools/call", refund("r-again")).await;
        let first = answer["result"]["taskId"].as_str().unwrap().to_owned();
        let approval = answer["result"]["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut again = refund("r-again");
        again["_meta"]["airlock/approval_id"] = json!(approval);
        for _ in 0..50 {
            let answer = agent.request("tools/call", again.clone()).await;
            assert_eq!(answer["result"]["taskId"], first.as_str(), "{answer}");
            assert_eq!(
                answer["result"]["_meta"]["airlock/approval"]["approval_id"],
                approval.as_str()
            );
        }
        let held = server
            .shared
            .task_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        assert_eq!(held, 1);
        assert_eq!(server.shared.tasks.running_task_count(), 1);
        server
            .host()
            .decide(&approval, "alice", ALICE, Verdict::Approve, Some("checked"))
            .await
            .unwrap();
        let done = settled(&mut agent, &first).await;
        assert_eq!(done["status"], "completed", "{done}");
    }

    #[tokio::test]
    async fn a_rejected_or_cancelled_task_runs_nothing() {
        let (server, router) = billing_server().await;
        let mut agent = Session::open(&router, "agent-1", true).await;
        let created = agent.request("tools/call", refund("r-2")).await["result"].clone();
        let task = created["taskId"].as_str().unwrap().to_owned();
        let approval = created["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        server
            .host()
            .decide(&approval, "alice", ALICE, Verdict::Reject, Some("no"))
            .await
            .unwrap();
        let done = settled(&mut agent, &task).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"]["isError"], true);
        assert_eq!(
            done["result"]["_meta"]["airlock/error"]["kind"], "approval_rejected",
            "{done}"
        );
        // Cancelled by the client: the task ends, the approval stays for
        // the approvers and nothing runs.
        let created = agent.request("tools/call", refund("r-3")).await["result"].clone();
        let task = created["taskId"].as_str().unwrap().to_owned();
        let approval = created["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let ack = agent.request("tasks/cancel", json!({"taskId": task})).await;
        assert!(ack.get("result").is_some(), "{ack}");
        let done = settled(&mut agent, &task).await;
        assert_eq!(done["status"], "cancelled", "{done}");
        let state = server.host().approval(&approval).unwrap().unwrap().state;
        assert_eq!(state, ApprovalState::Pending);
    }

    /// A client cancelling a task while its approved call runs: the call
    /// stops, and the task ends `cancelled` (it ended `completed`, its
    /// result an error of kind `cancelled`).
    #[tokio::test]
    async fn a_task_cancelled_while_its_call_runs_ends_cancelled() {
        let config = HostConfig::default().policy(Policy {
            approvals: ApprovalPolicy {
                approvers: vec![Approver {
                    name: "alice".into(),
                    token_sha256: sha256_hex(ALICE.as_bytes()),
                    operator: false,
                }],
                ..ApprovalPolicy::default()
            },
            ..Policy::default()
        });
        let host = Arc::new(Host::new(config).unwrap());
        let plugin = airlock_tests::install(
            "slow",
            &airlock_tests::read(airlock_tests::MISBEHAVE),
            "[capabilities]\nlog = true\n\n[limits]\ntimeout_ms = 60000\nfuel = 1000000000000\n\n\
             [[tools]]\nname = \"spin\"\nrisk = \"irreversible\"\napproval = \"required\"\n",
        );
        host.load_plugin(plugin.path()).await.unwrap();
        let server = McpServer::new(Arc::clone(&host), ServeOptions::default());
        let tokens = vec![CallerToken {
            principal: "agent-1".into(),
            token_sha256: sha256_hex(b"agent-1-secret"),
        }];
        let http = HttpConfig::new(default_addr(), tokens);
        let router = router(&server, &http, CancellationToken::new()).unwrap();
        let mut agent = Session::open(&router, "agent-1", true).await;
        let created = agent
            .request("tools/call", json!({"name": "slow__spin", "arguments": {}}))
            .await["result"]
            .clone();
        let task = created["taskId"].as_str().unwrap().to_owned();
        let approval = created["_meta"]["airlock/approval"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
        host.decide(&approval, "alice", ALICE, Verdict::Approve, None)
            .await
            .unwrap();
        // The call runs once the task sees the decision.
        for _ in 0..200 {
            if host.approval(&approval).unwrap().unwrap().state == ApprovalState::Consumed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            host.approval(&approval).unwrap().unwrap().state,
            ApprovalState::Consumed
        );
        let ack = agent.request("tasks/cancel", json!({"taskId": task})).await;
        assert!(ack.get("result").is_some(), "{ack}");
        let done = settled(&mut agent, &task).await;
        assert_eq!(done["status"], "cancelled", "{done}");
    }

    #[tokio::test]
    async fn a_client_without_tasks_gets_approval_pending() {
        let (_server, router) = billing_server().await;
        let mut agent = Session::open(&router, "agent-1", false).await;
        let answer = agent.request("tools/call", refund("r-4")).await;
        let result = &answer["result"];
        assert_eq!(result["isError"], true, "{answer}");
        assert_eq!(result["_meta"]["airlock/error"]["kind"], "approval_pending");
        assert!(result.get("taskId").is_none());
        // And the tasks methods need the capability.
        let refused = agent.request("tasks/get", json!({"taskId": "x"})).await;
        assert!(refused.get("error").is_some(), "{refused}");
    }
}

#[cfg(test)]
mod reload_tests {
    //! The plugins directory followed while serving: a plugin whose files
    //! change is replaced with no moment in between when it is missing; a
    //! change that does not load unloads it.

    use std::path::Path;

    use airlock_host::{HostConfig, MANIFEST_FILE};
    use airlock_tests::PLUGINS_DIR;

    use super::*;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_plugin_serves_throughout_its_reload_and_a_change_that_does_not_load_unloads_it()
     {
        let root = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let plugins = root.path().join("plugins");
        let text = plugins.join("text");
        copy_dir(&Path::new(PLUGINS_DIR).join("text"), &text);
        let host = Arc::new(Host::new(HostConfig::default().cache_dir(cache.path())).unwrap());
        let server = McpServer::new(Arc::clone(&host), ServeOptions::default());
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.loaded, ["text"], "{report:?}");
        let first = host.plugin("text").unwrap();

        // A caller calling the plugin all along: every call is answered.
        let stop = Arc::new(AtomicBool::new(false));
        let caller = tokio::spawn({
            let host = Arc::clone(&host);
            let stop = Arc::clone(&stop);
            async move {
                let mut calls = 0_u32;
                while !stop.load(Ordering::Relaxed) {
                    host.call(CallRequest::new("text/slugify", r#"{"text":"A B"}"#))
                        .await
                        .map_err(|e| format!("call {calls}: {e}"))?;
                    calls += 1;
                    tokio::task::yield_now().await;
                }
                Ok::<u32, String>(calls)
            }
        });
        let manifest = text.join(MANIFEST_FILE);
        let original = std::fs::read_to_string(&manifest).unwrap();
        assert!(changes(&host).is_empty(), "the first look is not a change");
        for round in 0..5 {
            // A change that loads (the manifest's size differs each round,
            // whatever the file system's clock).
            let comment = "#".repeat(round + 1);
            std::fs::write(&manifest, format!("{original}\n{comment}\n")).unwrap();
            let report = server.reload(&plugins).await.unwrap();
            assert_eq!(report.reloaded, ["text"], "{report:?}");
            assert!(
                report.loaded.is_empty() && report.unloaded.is_empty() && report.failed.is_empty(),
                "{report:?}"
            );
        }
        // A change that gives the plugin more (a longer timeout).
        let wider = original.replacen("timeout_ms = 2_000", "timeout_ms = 3_000", 1);
        assert_ne!(wider, original);
        std::fs::write(&manifest, &wider).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.reloaded, ["text"], "{report:?}");
        stop.store(true, Ordering::Relaxed);
        let calls = caller.await.unwrap().unwrap();
        assert!(calls > 0);
        let now = host.plugin("text").unwrap();
        assert!(!Arc::ptr_eq(&first, &now), "the new version serves");
        assert_ne!(first.manifest_digest(), now.manifest_digest());

        // Each replacement is on the record, with what it widened.
        let reloads = changes(&host);
        assert_eq!(reloads.len(), 6, "{reloads:?}");
        for (i, record) in reloads.iter().enumerate() {
            let e = &record.entry;
            assert_eq!(e.decision.as_deref(), Some("reloaded"), "{e:?}");
            assert_eq!(e.plugin.as_deref(), Some("text"));
            let reason = e.reason.as_deref().unwrap();
            assert!(reason.contains("replaces text 0.1.0"), "{reason}");
            if i < 5 {
                assert!(reason.ends_with("no wider"), "{reason}");
            } else {
                assert!(
                    reason.contains("widens") && reason.contains("timeout"),
                    "{reason}"
                );
                assert_eq!(e.manifest_digest.as_deref(), Some(now.manifest_digest()));
            }
        }

        // A change that does not load: the plugin is not served any more
        // (not the old version: its files were replaced).
        std::fs::write(&manifest, "[plugin]\nname = ").unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.unloaded, ["text"], "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(
            report.reloaded.is_empty() && report.tools_changed,
            "{report:?}"
        );
        let err = host
            .call(CallRequest::new("text/slugify", r#"{"text":"A B"}"#))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "unknown_plugin", "{err}");
        let unloaded = changes(&host).pop().unwrap().entry;
        assert_eq!(
            unloaded.decision.as_deref(),
            Some("unloaded"),
            "{unloaded:?}"
        );
        assert_eq!(
            unloaded.manifest_digest.as_deref(),
            Some(now.manifest_digest())
        );
        assert!(
            unloaded.reason.as_deref().unwrap().contains("do not load"),
            "{unloaded:?}"
        );
        let slugify = crate::catalog::mcp_tool_name("text", "slugify");
        assert!(server.catalog().get(&slugify).is_none());

        // Loading again with more than before the break: compared with the
        // version that served last, so the widening is on the record.
        let widest = original.replacen("timeout_ms = 2_000", "timeout_ms = 5_000", 1);
        std::fs::write(&manifest, &widest).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.loaded, ["text"], "{report:?}");
        assert!(
            report.unloaded.is_empty() && report.failed.is_empty(),
            "{report:?}"
        );
        host.call(CallRequest::new("text/slugify", r#"{"text":"A B"}"#))
            .await
            .unwrap();
        assert!(server.catalog().get(&slugify).is_some());
        let loaded = changes(&host).pop().unwrap().entry;
        assert_eq!(loaded.decision.as_deref(), Some("loaded"), "{loaded:?}");
        let reason = loaded.reason.as_deref().unwrap();
        assert!(
            reason.contains(now.manifest_digest())
                && reason.contains("widens")
                && reason.contains("timeout"),
            "{reason}"
        );

        // Its directory removed, then back: both on the record.
        let aside = root.path().join("aside");
        std::fs::rename(&text, &aside).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.unloaded, ["text"], "{report:?}");
        let gone = changes(&host).pop().unwrap().entry;
        assert_eq!(gone.decision.as_deref(), Some("unloaded"), "{gone:?}");
        assert!(
            gone.reason.as_deref().unwrap().contains("is gone"),
            "{gone:?}"
        );
        std::fs::rename(&aside, &text).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.loaded, ["text"], "{report:?}");
        let back = changes(&host).pop().unwrap().entry;
        assert_eq!(back.decision.as_deref(), Some("loaded"), "{back:?}");
        assert!(
            back.reason.as_deref().unwrap().ends_with("no wider"),
            "{back:?}"
        );

        // Its files now name another plugin: one unloaded, another loaded.
        let renamed = widest.replacen("name = \"text\"", "name = \"prose\"", 1);
        assert_ne!(renamed, widest);
        std::fs::write(&manifest, &renamed).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.unloaded, ["text"], "{report:?}");
        assert_eq!(report.loaded, ["prose"], "{report:?}");
        assert!(report.reloaded.is_empty(), "{report:?}");
        let records = changes(&host);
        let [.., out, new] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!(
            (out.entry.decision.as_deref(), out.entry.plugin.as_deref()),
            (Some("unloaded"), Some("text"))
        );
        assert!(
            out.entry.reason.as_deref().unwrap().contains("`prose`"),
            "{out:?}"
        );
        assert_eq!(
            (new.entry.decision.as_deref(), new.entry.plugin.as_deref()),
            (Some("loaded"), Some("prose"))
        );
        assert!(host.plugin("text").is_none() && host.plugin("prose").is_some());
        assert_eq!(records.len(), 12);

        // Two directories swapping their plugins' names in one look: both
        // serve afterwards.
        let other = plugins.join("other");
        copy_dir(&text, &other);
        std::fs::write(other.join(MANIFEST_FILE), &widest).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        std::fs::write(&manifest, &widest).unwrap();
        std::fs::write(other.join(MANIFEST_FILE), format!("{renamed}\n")).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(host.plugin("text").unwrap().dir(), text.as_path());
        assert_eq!(host.plugin("prose").unwrap().dir(), other.as_path());
    }

    #[tokio::test]
    async fn a_directory_refused_for_its_plugins_name_loads_once_the_other_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let plugins = root.path().join("plugins");
        // Two copies of one plugin: `a` is looked at first and serves,
        // `b` is refused for the name.
        let (a, b) = (plugins.join("a"), plugins.join("b"));
        copy_dir(&Path::new(PLUGINS_DIR).join("text"), &a);
        copy_dir(&a, &b);
        let host = Arc::new(Host::new(HostConfig::default().cache_dir(cache.path())).unwrap());
        let server = McpServer::new(Arc::clone(&host), ServeOptions::default());
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.loaded, ["text"], "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(report.failed[0].0, b, "{report:?}");
        assert!(report.failed[0].1.contains("text"), "{report:?}");
        assert_eq!(host.plugin("text").unwrap().dir(), a.as_path());
        // Nothing changed: `b` is not tried again at every look.
        let report = server.reload(&plugins).await.unwrap();
        assert!(
            report.failed.is_empty() && report.loaded.is_empty(),
            "{report:?}"
        );

        // `a` removed, `b` untouched: in the same look the plugin is
        // unloaded from `a` and loaded from `b`.
        std::fs::remove_dir_all(&a).unwrap();
        let report = server.reload(&plugins).await.unwrap();
        assert_eq!(report.unloaded, ["text"], "{report:?}");
        assert_eq!(report.loaded, ["text"], "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(host.plugin("text").unwrap().dir(), b.as_path());
        host.call(CallRequest::new("text/slugify", r#"{"text":"A B"}"#))
            .await
            .unwrap();
        let records = changes(&host);
        let [.., out, back] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!(out.entry.decision.as_deref(), Some("unloaded"), "{out:?}");
        assert_eq!(back.entry.decision.as_deref(), Some("loaded"), "{back:?}");
    }

    /// The host's `plugin_changed` records, oldest first.
    fn changes(host: &Host) -> Vec<airlock_host::audit_log::Record> {
        host.audit()
            .query(
                &airlock_host::audit_log::Filter {
                    event: Some(airlock_host::audit_log::Event::PluginChanged),
                    ..Default::default()
                },
                100,
            )
            .unwrap()
    }
}
