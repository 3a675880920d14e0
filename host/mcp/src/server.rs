//! [`McpServer`]: the shared state, the rmcp handler, the plugin reloader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use airlock_host::{CallRequest, Host, MANIFEST_FILE};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, RequestMetaObject, ServerCapabilities, ServerConfig,
    SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::catalog::Catalog;
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
}

#[derive(Debug)]
struct Seen {
    fingerprint: Fingerprint,
    /// The plugin loaded from it, if it loaded.
    plugin: Option<String>,
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
    /// Plugins unloaded (removed or changed on disk).
    pub unloaded: Vec<String>,
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
    /// whose files changed (size or modification time). A directory that
    /// fails to load is retried once its files change. When the served
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
        // Gone or changed: unload.
        let stale: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|(path, seen)| present.get(*path) != Some(&seen.fingerprint))
            .map(|(path, _)| path.clone())
            .collect();
        for path in stale {
            if let Some(seen) = state.dirs.remove(&path)
                && let Some(name) = seen.plugin
                && host.unload_plugin(&name).is_some()
            {
                tracing::info!(plugin = %name, dir = %path.display(), "plugin unloaded");
                report.unloaded.push(name);
            }
        }
        // New (or changed): load.
        for (path, fingerprint) in present {
            if state.dirs.contains_key(&path) {
                continue;
            }
            let plugin = match host.load_plugin(&path).await {
                Ok(plugin) => {
                    tracing::info!(plugin = %plugin.name(), dir = %path.display(), "plugin loaded");
                    report.loaded.push(plugin.name().to_owned());
                    Some(plugin.name().to_owned())
                }
                Err(error) => {
                    tracing::warn!(dir = %path.display(), error = %error, "plugin not loaded");
                    report.failed.push((path.clone(), error.to_string()));
                    None
                }
            };
            state.dirs.insert(
                path,
                Seen {
                    fingerprint,
                    plugin,
                },
            );
        }
        // Installed versions: what the rollouts serve now.
        let rollouts_changed = self.prepare_rollouts().await;
        // Nothing loaded or unloaded (the usual tick): the catalog stands.
        if rollouts_changed || !report.loaded.is_empty() || !report.unloaded.is_empty() {
            report.tools_changed = self.refresh_catalog();
        }
        Ok(report)
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
        }
    }

    /// Serve MCP over this process's stdin and stdout until the client
    /// closes the stream. Calls run as `principal`. Nothing else may write
    /// to stdout meanwhile (logs go to stderr).
    ///
    /// # Errors
    /// [`Error::Transport`] if the session cannot start or ends abnormally.
    pub async fn serve_stdio(&self, principal: &str) -> Result<()> {
        let running = self
            .handler(Some(principal.to_owned()))
            .serve(rmcp::transport::stdio())
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
        if path.join(MANIFEST_FILE).is_file() {
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
#[derive(Debug, Default)]
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

impl ServerHandler for AirlockHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Airlock serves sandboxed WebAssembly tools. The tool `plugin/tool` is named \
             `plugin__tool`. Every call is validated, limited and audited by the host; a call \
             that needs a human approval returns `approval_pending` with an approval id.",
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
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{name}`"),
                Some(json!({"kind": "unknown_tool"})),
            ));
        };
        let principal = self.principal(&context)?;
        let meta = CallMeta::parse(&context.meta, request.meta.as_ref())?;
        // Per principal first: a principal at its limit never takes one of
        // the slots every principal shares.
        let Some(_principal_slot) = PrincipalSlot::acquire(&self.shared, &principal) else {
            let error = airlock_host::CallError::PrincipalBusy {
                principal,
                limit: self.shared.options.max_calls_per_principal,
            };
            tracing::debug!(tool = %name, kind = error.kind(), "call refused");
            return Ok(outcome::tool_result(name, entry, Err(error)).into());
        };
        let Ok(_slot) = Arc::clone(&self.shared.calls).try_acquire_owned() else {
            return Ok(outcome::refusal(
                "server_busy",
                &format!(
                    "the server is running its limit of {} calls at once; try again later",
                    self.shared.options.max_concurrent_calls
                ),
            )
            .into());
        };
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default()).to_string();
        let mut call = CallRequest::new(entry.tool.id(), arguments)
            .principal(principal)
            .cancel_on(context.ct.clone());
        call.approval_id = meta.approval_id;
        call.idempotency_key = meta.idempotency_key;
        call.reason = meta.reason;
        call.session = meta.session;
        call.trace_id = meta.trace_id;
        call.traceparent = meta.traceparent;
        call.wait_for_approval = self.shared.options.approval_wait;
        let result = self.shared.host.call(call).await;
        if let Err(error) = &result {
            tracing::debug!(tool = %name, kind = error.kind(), "call failed");
        }
        Ok(outcome::tool_result(name, entry, result).into())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Sessions that began with `initialize` (protocol versions before
        // 2026-07-28) get list changes as plain notifications.
        let mut changes = self.shared.changes.subscribe();
        let peer = context.peer;
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
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
