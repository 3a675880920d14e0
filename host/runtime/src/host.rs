//! [`Host`]: the embedding API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use airlock_audit::{AuditConfig, AuditLog};

use crate::audit::CallRecord;
use crate::bindings::exports::airlock::plugin::tools::CallContext;
use crate::cache::CompiledCache;
use crate::engine::{EpochTicker, InstanceAllocation, SharedEngine};
use crate::error::{Error, Result};
use crate::gate::ModeWatch;
use crate::grants::{Policy, WorkspaceScope};
use crate::identifiers;
use crate::ledger::{LEDGER_DIR, Ledger};
use crate::manifest::FileAccess;
use crate::manifest::MANIFEST_FILE;
use crate::pipeline::{self, CallRequest, CallResponse};
use crate::plugin::{self, Plugin, Tool};
use crate::workspace::{WORKSPACE_DIR, WorkspaceStore};
use serde::Serialize;

/// The audit log's directory inside the data directory.
pub const AUDIT_DIR: &str = "audit";

/// Default cap on the size of a call's arguments.
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 1024 * 1024;

/// How a [`Host`] is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// Directory for compiled components; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Largest arguments accepted for one call, in bytes.
    pub max_argument_bytes: usize,
    /// The operator's policy: forbidden capabilities, files root, env
    /// values, limit ceilings.
    pub policy: Policy,
    /// Where the host keeps its state: the audit log in `audit/`, the
    /// workspace store in `workspace/`. `None` keeps both in temporary
    /// databases, removed with the host.
    pub data_dir: Option<PathBuf>,
    /// How the audit log commits, checkpoints and redacts.
    pub audit: AuditConfig,
    /// Component instances the engine's pool holds, over all plugins (calls
    /// beyond it wait for a slot until their deadline, then get
    /// `host_busy`). 0 turns the pool off: each instance is allocated on
    /// demand.
    pub max_instances: u32,
    /// Pool instances one plugin may hold at once (its calls beyond it wait
    /// until their deadline, then get `plugin_busy`), so one plugin cannot
    /// starve the others. `None`: half of `max_instances` (at least 1).
    /// Its memories and tables are bounded to the same fraction of theirs.
    pub max_instances_per_plugin: Option<u32>,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            cache_dir: None,
            max_argument_bytes: DEFAULT_MAX_ARGUMENT_BYTES,
            policy: Policy::default(),
            data_dir: None,
            audit: AuditConfig::default(),
            max_instances: crate::engine::DEFAULT_MAX_INSTANCES,
            max_instances_per_plugin: None,
        }
    }
}

impl HostConfig {
    /// Cache compiled components in `dir`.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> HostConfig {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Apply the operator's `policy`.
    pub fn policy(mut self, policy: Policy) -> HostConfig {
        self.policy = policy;
        self
    }

    /// Keep the host's state (the audit log) in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> HostConfig {
        self.data_dir = Some(dir.into());
        self
    }

    /// Configure the audit log.
    pub fn audit(mut self, audit: AuditConfig) -> HostConfig {
        self.audit = audit;
        self
    }

    /// Size the instance pool for `instances` concurrent instances (0: no
    /// pool).
    pub fn max_instances(mut self, instances: u32) -> HostConfig {
        self.max_instances = instances;
        self
    }

    /// Let one plugin hold at most `instances` of the pool's instances.
    pub fn max_instances_per_plugin(mut self, instances: u32) -> HostConfig {
        self.max_instances_per_plugin = Some(instances);
        self
    }

    /// Accept arguments up to `bytes` long.
    pub fn max_argument_bytes(mut self, bytes: usize) -> HostConfig {
        self.max_argument_bytes = bytes;
        self
    }
}

/// A plugin directory that failed to load, from [`Host::load_plugins_dir`].
#[derive(Debug)]
pub struct LoadFailure {
    /// The plugin's directory.
    pub dir: PathBuf,
    /// Why it did not load.
    pub error: Error,
}

/// What [`Host::load_plugins_dir`] loaded.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Names of the plugins loaded.
    pub loaded: Vec<String>,
    /// Directories that hold a manifest but did not load.
    pub failed: Vec<LoadFailure>,
}

/// A host that loads plugins and runs their tools.
///
/// Every method takes `&self`: wrap the host in an `Arc` to share it between
/// tasks. Calls may run concurrently, and plugins may be loaded and unloaded
/// while calls are in flight — a call holds its plugin (an `Arc`) from
/// resolution to its outcome, so unloading never cuts a running call short.
pub struct Host {
    pub(crate) engine: SharedEngine,
    cache: Option<CompiledCache>,
    /// Loaded plugins by name. Locked only to look up, insert or remove an
    /// entry, never across an `.await`.
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    config: HostConfig,
    pub(crate) audit: AuditLog,
    workspace: WorkspaceStore,
    pub(crate) ledger: Ledger,
    pub(crate) mode: ModeWatch,
    pub(crate) limiter: crate::ratelimit::Limiter,
    /// A mode switch seen but not yet recorded.
    pub(crate) mode_pending: std::sync::Mutex<Option<crate::gate::Mode>>,
    /// When the ledger was last swept, ms since the Unix epoch.
    pub(crate) last_sweep_ms: std::sync::atomic::AtomicU64,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("plugins", &self.plugin_names())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Summary of a loaded plugin, as `airlock plugins list --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Description from the manifest.
    pub description: Option<String>,
    /// Directory it was loaded from.
    pub dir: PathBuf,
    /// Component SHA-256.
    pub sha256: String,
    /// Exposed tools.
    pub tools: Vec<String>,
    /// Exported but undeclared (hidden) tools.
    pub undeclared_tools: Vec<String>,
    /// Resolved limits.
    pub limits: crate::limits::Limits,
    /// Whether the compiled code came from the cache.
    pub cache: crate::cache::CacheStatus,
}

impl Plugin {
    /// A serializable summary.
    pub fn info(&self) -> PluginInfo {
        PluginInfo {
            name: self.name().to_owned(),
            version: self.version().to_owned(),
            description: self.manifest().plugin.description.clone(),
            dir: self.dir().to_owned(),
            sha256: self.digest().to_owned(),
            tools: self.tools().map(|t| t.name().to_owned()).collect(),
            undeclared_tools: self.undeclared_tools().to_vec(),
            limits: *self.limits(),
            cache: self.cache_status(),
        }
    }
}

impl Host {
    /// Create a host with no plugins.
    ///
    /// The audit log is opened in `data_dir/audit` (created with its keys on
    /// first use); calls in flight when a previous host stopped get their
    /// `unknown` outcome recorded.
    ///
    /// # Errors
    /// [`Error::Config`] if the policy is invalid; [`Error::Engine`] if the
    /// WebAssembly engine cannot be set up; [`Error::Audit`] if the audit
    /// log cannot be opened (in use by another process, unwritable, bad
    /// keys, or failing verification of its unsigned tail).
    pub fn new(config: HostConfig) -> Result<Host> {
        config.policy.validate()?;
        let limiter = crate::ratelimit::Limiter::new(&config.policy.rate_limits)
            .map_err(|message| Error::Config { message })?;
        let audit = match &config.data_dir {
            Some(dir) => AuditLog::open(dir.join(AUDIT_DIR), config.audit.clone())?,
            None => AuditLog::temporary(config.audit.clone())?,
        };
        let workspace = match &config.data_dir {
            Some(dir) => WorkspaceStore::open(
                &dir.join(WORKSPACE_DIR),
                std::time::Duration::from_millis(config.audit.lock_wait_ms),
            )?,
            None => WorkspaceStore::temporary()?,
        };
        let ledger = match &config.data_dir {
            Some(dir) => Ledger::open(
                &dir.join(LEDGER_DIR),
                std::time::Duration::from_millis(config.audit.lock_wait_ms),
            )?,
            None => Ledger::temporary()?,
        };
        let mode = ModeWatch::new(config.data_dir.as_deref());
        // No plugin may ask for more, so no pool slot needs to hold more.
        let memory_ceiling_mb = Some(
            config
                .policy
                .limits
                .memory_mb
                .unwrap_or(crate::limits::CEILING_MEMORY_MB),
        );
        if config.max_instances_per_plugin == Some(0) {
            return Err(Error::Config {
                message: "max_instances_per_plugin must be at least 1".to_owned(),
            });
        }
        let engine = SharedEngine::new(
            config.max_instances,
            config.max_instances_per_plugin,
            memory_ceiling_mb,
        )?;
        tracing::debug!(allocation = %engine.allocation(), "engine ready");
        let cache = config
            .cache_dir
            .clone()
            .map(|dir| CompiledCache::new(dir, &engine));
        let ticker = EpochTicker::start(&engine)?;
        Ok(Host {
            engine,
            cache,
            plugins: RwLock::new(BTreeMap::new()),
            config,
            audit,
            workspace,
            ledger,
            mode,
            mode_pending: std::sync::Mutex::new(None),
            last_sweep_ms: std::sync::atomic::AtomicU64::new(0),
            limiter,
            _ticker: ticker,
        })
    }

    /// Load the plugin in `dir` (a directory holding `plugin.toml` and the
    /// component it names).
    ///
    /// # Errors
    /// Every manifest error ([`Error::ManifestSyntax`],
    /// [`Error::ManifestInvalid`], [`Error::ManifestRejected`]);
    /// [`Error::ComponentMissing`]; [`Error::DigestMismatch`] when the
    /// component is not the one the manifest pins;
    /// [`Error::InvalidComponent`] for a file that is not a component;
    /// [`Error::WrongWorld`] for a component that does not target
    /// `airlock:plugin/plugin`; [`Error::InvalidToolList`] and
    /// [`Error::ToolNotExported`] when its tools do not match the manifest;
    /// [`Error::DuplicatePlugin`] when a plugin of that name is loaded;
    /// [`Error::CapabilityDenied`] when the manifest asks for a capability
    /// the policy forbids (or an `http` origin outside the policy's
    /// `http_allow`); [`Error::CapabilityNotGranted`] when the
    /// component imports an interface it is not granted;
    /// [`Error::LimitAboveCeiling`] when a limit exceeds the policy.
    ///
    /// # Security
    /// The component's code runs once here (to list its tools) under the same
    /// limits as a call.
    pub async fn load_plugin(&self, dir: impl AsRef<Path>) -> Result<Arc<Plugin>> {
        let dir = dir.as_ref();
        let plugin =
            plugin::load(&self.engine, self.cache.as_ref(), &self.config.policy, dir).await?;
        let name = plugin.name().to_owned();
        let mut plugins = self.plugins_mut();
        if let Some(existing) = plugins.get(&name) {
            return Err(Error::DuplicatePlugin {
                name,
                first: existing.dir().to_owned(),
                second: dir.to_owned(),
            });
        }
        self.check_files_grants(&plugin, &plugins)?;
        let plugin = Arc::new(plugin);
        plugins.insert(name, Arc::clone(&plugin));
        Ok(plugin)
    }

    /// Refuse a plugin whose `files` grants reach what the host protects
    /// (plugin directories and where plugins are loaded from, the data
    /// directory, the cache) or overlap another plugin's grants, and a
    /// plugin whose directory lies inside a loaded plugin's grant. See
    /// `grants/files.rs` for the rule.
    fn check_files_grants(
        &self,
        plugin: &Plugin,
        loaded: &BTreeMap<String, Arc<Plugin>>,
    ) -> Result<()> {
        let absolute = |p: &Path| {
            p.canonicalize()
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_owned())
        };
        let mut plugin_dirs = Vec::new();
        for dir in loaded
            .values()
            .map(|p| p.dir())
            .chain(std::iter::once(plugin.dir()))
        {
            let dir = absolute(dir);
            if let Some(parent) = dir.parent() {
                plugin_dirs.push(parent.to_owned());
            }
            plugin_dirs.push(dir);
        }
        let stores: Vec<PathBuf> = [&self.config.data_dir, &self.config.cache_dir]
            .into_iter()
            .flatten()
            .map(|d| absolute(d))
            .collect();
        crate::grants::check_files_overlaps(
            plugin.name(),
            &plugin.grant().files,
            crate::grants::ProtectedPaths {
                stores: &stores,
                plugin_dirs: &plugin_dirs,
            },
            loaded
                .values()
                .flat_map(|p| p.grant().files.iter().map(move |f| (p.name(), f))),
        )?;
        // A loaded plugin's grant may not contain the new plugin's files.
        let dir = absolute(plugin.dir());
        for other in loaded.values() {
            for files in &other.grant().files {
                if dir.starts_with(&files.host) {
                    return Err(Error::CapabilityDenied {
                        plugin: plugin.name().to_owned(),
                        capability: "capabilities.files".to_owned(),
                        reason: format!(
                            "the plugin directory {} lies inside {}, granted to plugin `{}`",
                            dir.display(),
                            files.host.display(),
                            other.name()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Unload the plugin `name`: new calls to its tools fail with
    /// [`Error::UnknownPlugin`]; calls already running finish normally.
    /// Returns the plugin, or `None` when none of that name is loaded.
    pub fn unload_plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins_mut().remove(name)
    }

    /// Load every plugin in `dir`: each subdirectory holding a `plugin.toml`.
    /// A plugin that fails to load is reported in
    /// [`LoadReport::failed`] and does not stop the others.
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` cannot be read.
    pub async fn load_plugins_dir(&self, dir: impl AsRef<Path>) -> Result<LoadReport> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            if path.join(MANIFEST_FILE).is_file() {
                dirs.push(path);
            }
        }
        dirs.sort();
        let mut report = LoadReport::default();
        for plugin_dir in dirs {
            match self.load_plugin(&plugin_dir).await {
                Ok(plugin) => report.loaded.push(plugin.name().to_owned()),
                Err(error) => {
                    tracing::warn!(dir = %plugin_dir.display(), error = %error, "plugin not loaded");
                    report.failed.push(LoadFailure {
                        dir: plugin_dir,
                        error,
                    });
                }
            }
        }
        Ok(report)
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// How the engine allocates instances: pooled, or on demand and why.
    pub fn instance_allocation(&self) -> &InstanceAllocation {
        self.engine.allocation()
    }

    pub(crate) fn cache(&self) -> Option<&CompiledCache> {
        self.cache.as_ref()
    }

    /// Compile (or load from the cache) the component `bytes`.
    pub(crate) fn compile(
        &self,
        digest: &str,
        bytes: &[u8],
        path: &Path,
    ) -> Result<wasmtime::component::Component> {
        let compiled = match &self.cache {
            Some(cache) => cache
                .load_or_compile(&self.engine, digest, bytes)
                .map(|(c, _)| c),
            None => wasmtime::component::Component::new(&self.engine, bytes),
        };
        compiled.map_err(|e| Error::InvalidComponent {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })
    }

    /// The loaded plugins, by name (a snapshot).
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins_ref().values().cloned().collect()
    }

    /// Names of the loaded plugins, sorted.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins_ref().keys().cloned().collect()
    }

    /// The loaded plugin `name`.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins_ref().get(name).cloned()
    }

    /// Every exposed tool of every plugin, by plugin then tool name (a
    /// snapshot).
    pub fn tools(&self) -> Vec<Arc<Tool>> {
        self.plugins_ref()
            .values()
            .flat_map(|plugin| plugin.tools_arc())
            .collect()
    }

    /// The plugin map for reading. The lock is never held across an
    /// `.await` and no code holding it can panic, so a poisoned lock still
    /// holds a consistent map and is used as is.
    fn plugins_ref(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<Plugin>>> {
        self.plugins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn plugins_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<Plugin>>> {
        self.plugins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run one tool call through the pipeline.
    ///
    /// # Errors
    /// Refusals, before the guest runs: [`Error::InvalidIdentifier`] and
    /// [`Error::InvalidSession`] (checked first, before anything is
    /// recorded), [`Error::BadToolReference`],
    /// [`Error::UnknownPlugin`], [`Error::UnknownTool`],
    /// [`Error::ArgumentsTooLarge`], [`Error::ArgumentsNotJson`],
    /// [`Error::ArgumentsNotObject`], [`Error::ArgumentsInvalid`] (every
    /// failing path). After it runs: [`Error::Tool`] when the guest returns a
    /// tool error; [`Error::Trap`] when it crashes or hits a limit (fuel,
    /// deadline, memory); [`Error::OutputTooLarge`] and
    /// [`Error::OutputInvalid`] for results over the limit, not JSON or
    /// failing the output schema. [`Error::Cancelled`] when the request's
    /// cancellation token ([`CallRequest::cancel_on`]) fires first.
    ///
    /// # Security
    /// Every call gets a fresh instance: no state leaks between calls through
    /// guest memory.
    pub async fn call(&self, request: CallRequest) -> Result<CallResponse> {
        self.sweep_if_due();
        let call_id = new_call_id();
        // 0. Identifiers, before any of them is recorded: a refusal's
        // record carries only bounded, escaped, marked forms.
        if let Err(error) = identifiers::check(&request) {
            let trace_id = request
                .trace_id
                .as_deref()
                .map_or_else(|| call_id.clone(), identifiers::trace_id_for_record);
            let mut record = CallRecord::new(
                &self.audit,
                &call_id,
                &trace_id,
                &identifiers::principal_for_record(&request.principal),
                &request.tool,
            );
            if request.arguments.len() <= self.config.max_argument_bytes {
                record.arguments(&request.arguments, None);
            }
            return Err(record.refused(error).await);
        }
        let trace_id = request.trace_id.clone().unwrap_or_else(|| call_id.clone());
        let mut record = CallRecord::new(
            &self.audit,
            &call_id,
            &trace_id,
            &request.principal,
            &request.tool,
        );
        // 1. Resolve.
        // The plugin is held (an `Arc`) until the call's outcome, even if it
        // is unloaded meanwhile.
        let (held_plugin, held_tool) = match self.resolve(&request.tool) {
            Ok(found) => found,
            Err(error) => {
                record.arguments(&request.arguments, None);
                return Err(record.refused(error).await);
            }
        };
        let (plugin, tool) = (&*held_plugin, &*held_tool);
        record.resolved(plugin, tool);
        record.idempotency_key(request.idempotency_key.as_deref());
        // 2. Admit: the host's mode.
        let read_only = match self.admit(plugin, tool, &request.principal).await {
            Ok(read_only) => read_only,
            Err(error) => {
                record.arguments(&request.arguments, None);
                return Err(record.refused(error).await);
            }
        };
        // 3. Validate arguments before anything runs.
        let arguments = match pipeline::validate_arguments(
            tool,
            &request.arguments,
            self.config.max_argument_bytes,
        ) {
            Ok(arguments) => arguments,
            Err(error) => {
                if !matches!(error, Error::ArgumentsTooLarge { .. }) {
                    record.arguments(&request.arguments, None);
                }
                return Err(record.refused(error).await);
            }
        };
        record.arguments(&request.arguments, Some(&arguments));
        // 4. Idempotency: claim the key, or replay the first outcome.
        match self
            .claim_key(&request, plugin, tool, &record, &call_id)
            .await
        {
            Ok(None) => {}
            Ok(Some(replay)) => return Ok(replay),
            Err(error) => return Err(record.refused(error).await),
        }
        // 5. Approval gate.
        let approval_id = match self
            .approval_gate(&request, plugin, tool, &record, &call_id)
            .await
        {
            Ok(id) => id,
            Err(error) => {
                self.release_key(&request, plugin, tool);
                return Err(record.refused(error).await);
            }
        };
        if let Some(id) = &approval_id {
            record.approval(id);
        }
        // 6. Intent record: no record, no call.
        if let Err(error) = record.started().await {
            self.release_key(&request, plugin, tool);
            return Err(error);
        }
        let context = CallContext {
            call_id,
            trace_id,
            principal: request.principal.clone(),
        };
        tracing::debug!(tool = %tool.id(), call_id = %context.call_id, "calling tool");
        // 7–9. Instantiate, call, validate the output.
        let workspace = plugin.grant().workspace.map(|access| WorkspaceScope {
            store: self.workspace.clone(),
            plugin: plugin.name().to_owned(),
            owner: plugin
                .grant()
                .workspace_scope
                .owner(&request.principal, request.session.as_deref()),
            // Read-only mode stops writes at the grant, whatever the tool's
            // declared risk.
            writable: access == FileAccess::ReadWrite && !read_only,
            quota: plugin.limits().workspace_quota(),
            dirty: false,
        });
        let (mut result, stats) = pipeline::run_tool(
            &self.engine,
            plugin,
            tool,
            &arguments,
            context,
            workspace,
            read_only,
            request.cancel.as_ref(),
        )
        .await;
        if let Ok(response) = &mut result {
            response.approval_id = approval_id;
        }
        // 10. Outcome record.
        record
            .finished(&result, stats.fuel_used, stats.duration)
            .await;
        // 11. Complete the idempotency entry.
        self.complete_key(&request, plugin, tool, &result);
        result
    }

    fn resolve(&self, reference: &str) -> Result<(Arc<Plugin>, Arc<Tool>)> {
        let (plugin_name, tool_name) =
            reference
                .split_once('/')
                .ok_or_else(|| Error::BadToolReference {
                    reference: reference.to_owned(),
                })?;
        let plugin = self
            .plugin(plugin_name)
            .ok_or_else(|| Error::UnknownPlugin {
                plugin: plugin_name.to_owned(),
            })?;
        let tool = plugin
            .tool(tool_name)
            .cloned()
            .ok_or_else(|| Error::UnknownTool {
                plugin: plugin_name.to_owned(),
                tool: tool_name.to_owned(),
            })?;
        Ok((plugin, tool))
    }

    /// The workspace store plugins keep their state in.
    pub fn workspace(&self) -> &WorkspaceStore {
        &self.workspace
    }

    /// The audit log every call is recorded in.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }
}

/// A unique, time-ordered call id (UUID v7).
fn new_call_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
