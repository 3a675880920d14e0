//! [`Host`]: the embedding API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use airlock_audit::{AuditConfig, AuditLog, Event};

use crate::alerts::{
    Action, AlertConfig, AlertStatus, Alerts, Pause, Pauses, TakeoverAction, alert_entry,
    check_target, record,
};
use crate::approvals::{Approvals, Verdict};
use crate::cache::CompiledCache;
use crate::engine::{EpochTicker, InstanceAllocation, SharedEngine};
use crate::error::{CallError, Error, LoadError, LoadResult, Result};
use crate::grants::Policy;
use crate::ledger::{Approval, ApprovalState, Ledger, SweepReport};
use crate::manifest::MANIFEST_FILE;
use crate::mode::{Mode, ModeWatch};
use crate::pipeline::{CallRequest, CallResponse, Pipeline};
use crate::plugin::{self, Plugin, Tool};
use crate::ratelimit::Limiter;
use crate::releases::{InstallReport, ReleaseParts, RolloutRequest, RolloutStatus, Served};
use crate::stores::StoreConfig;
use crate::telemetry::{ScrapeGauges, Telemetry, TelemetryConfig};
use crate::workspace::Workspace;
use serde::Serialize;

/// The audit log's directory inside the data directory.
pub const AUDIT_DIR: &str = "audit";

/// Default cap on the size of a call's arguments.
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 1024 * 1024;

/// Largest [`HostConfig::max_argument_bytes`]: a held call's arguments
/// are kept whole in its audit record and approval, and an audit export's
/// line is read back under a cap.
pub const MAX_ARGUMENT_BYTES_CEILING: usize = 64 * 1024 * 1024;

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
    /// Where the host keeps its state: with the sled store, the audit log
    /// in `audit/`, the ledger in `ledger/`, the workspace in `workspace/`,
    /// the mode in `mode.json`; with a shared store, the host's own keys
    /// (`audit/`). `None` keeps everything in temporary databases, removed
    /// with the host (sled only).
    pub data_dir: Option<PathBuf>,
    /// Which backend holds the host's state (sled by default).
    pub store: StoreConfig,
    /// This host's name among the hosts sharing a store: its audit chain,
    /// and the owner of its calls' idempotency claims. Unique per host and
    /// stable across its restarts; 1–64 characters of `[A-Za-z0-9._-]`.
    pub origin: String,
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
    /// Zero a pooled fiber stack before another call uses it (on by
    /// default). The stack a guest runs on — its compiled frames and the
    /// host functions it calls — is reused by later calls of any plugin;
    /// compiled code never reads a stack slot it has not written, so
    /// zeroing is defense in depth against a compiler bug that would,
    /// leaking one call's data into another. Its cost is wasmtime's: the
    /// stack's first 64 KiB are cleared with `memset` and the rest handed
    /// back to the kernel (`madvise`), which, with calls on several cores,
    /// interrupts the other cores to flush their TLBs (see
    /// `docs/performance.md`). Only the pool's stacks are concerned: an
    /// instance allocated on demand gets a fresh stack.
    pub zero_stacks: bool,
    /// Alert rules over the calls this host runs, and what they do
    /// (`[alerts]`).
    pub alerts: AlertConfig,
    /// Metrics and span export ([`Host::metrics`], [`Host::telemetry`]).
    pub telemetry: TelemetryConfig,
    /// The directories plugins are loaded from
    /// ([`Host::load_plugins_dir`]): no `files` grant may contain one, and
    /// no read-write grant may be a directory in one, by path or through a
    /// mount, nor hold one (what a plugin wrote there would load as a
    /// plugin at the next start) —
    /// from the start, before any plugin of them is loaded, empty ones
    /// included. A plugin's own directory and the one it is loaded from
    /// are protected once it loads whether or not listed here.
    pub plugins_dirs: Vec<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            cache_dir: None,
            max_argument_bytes: DEFAULT_MAX_ARGUMENT_BYTES,
            policy: Policy::default(),
            data_dir: None,
            store: StoreConfig::default(),
            origin: airlock_audit::DEFAULT_ORIGIN.to_owned(),
            audit: AuditConfig::default(),
            max_instances: crate::engine::DEFAULT_MAX_INSTANCES,
            max_instances_per_plugin: None,
            zero_stacks: true,
            alerts: AlertConfig::default(),
            telemetry: TelemetryConfig::default(),
            plugins_dirs: Vec::new(),
        }
    }
}

impl HostConfig {
    /// Plugins are loaded from `dir` (see
    /// [`plugins_dirs`](Self::plugins_dirs)); may be given more than once.
    pub fn plugins_dir(mut self, dir: impl Into<PathBuf>) -> HostConfig {
        self.plugins_dirs.push(dir.into());
        self
    }

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

    /// Keep the host's state in `store`.
    pub fn store(mut self, store: StoreConfig) -> HostConfig {
        self.store = store;
        self
    }

    /// Name this host `origin` among the hosts sharing its store.
    pub fn origin(mut self, origin: impl Into<String>) -> HostConfig {
        self.origin = origin.into();
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

    /// Zero pooled fiber stacks between calls, or not (see
    /// [`HostConfig::zero_stacks`](#structfield.zero_stacks)).
    pub fn zero_stacks(mut self, on: bool) -> HostConfig {
        self.zero_stacks = on;
        self
    }

    /// Evaluate `alerts` over this host's calls.
    pub fn alerts(mut self, alerts: AlertConfig) -> HostConfig {
        self.alerts = alerts;
        self
    }

    /// Measure and trace calls as `telemetry` says.
    pub fn telemetry(mut self, telemetry: TelemetryConfig) -> HostConfig {
        self.telemetry = telemetry;
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
    pub error: LoadError,
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
    engine: SharedEngine,
    cache: Option<CompiledCache>,
    plugins: PluginTable,
    config: HostConfig,
    audit: AuditLog,
    workspace: Workspace,
    /// The order of each workspace key's operations across calls.
    workspace_order: crate::grants::KeyOrder,
    ledger: Ledger,
    /// What the store is, for messages.
    store_description: String,
    mode: ModeWatch,
    limiter: Limiter,
    /// Installed versions and rollouts, as this host serves them.
    served: Served,
    /// When the ledger was last swept, ms since the Unix epoch.
    last_sweep_ms: AtomicU64,
    /// Held while a call counts its principal's pending approvals and
    /// stores its own request (see [`Approvals::requesting`]).
    approval_requests: tokio::sync::Mutex<()>,
    /// Alert rules, their state and their webhooks.
    alerts: Alerts,
    /// Paused tools and plugins (kept in the ledger).
    pauses: Pauses,
    telemetry: Telemetry,
    /// Cancelled when the audit log begins to close: calls holding their
    /// intent write it then (see `CallRecord::started`).
    audit_closing: tokio_util::sync::CancellationToken,
    /// The last version of each plugins-directory plugin unloaded while no
    /// other of its name is loaded (for at most [`REMEMBERED_PLUGINS`]
    /// names): what a later version of that name is compared with when
    /// [`Host::reload_plugin`] records it.
    last_served: std::sync::Mutex<BTreeMap<String, Arc<Plugin>>>,
    /// Plugin directories whose last load failed, by the name their
    /// manifest gives (until a plugin of that name loads): a first rollout
    /// of that name is refused rather than compared with nothing.
    failed_dirs: std::sync::Mutex<BTreeMap<String, PathBuf>>,
    _ticker: EpochTicker,
}

/// Unloaded plugin names whose last version a host remembers
/// ([`Host::reload_plugin`] compares a new version with it; each holds the
/// version's compiled code); past it, the alphabetically first is
/// forgotten.
pub(crate) const REMEMBERED_PLUGINS: usize = 64;

/// The plugin the manifest in `dir` names: `None` when there is no
/// manifest there, or not a regular file (never waited on: a FIFO is not
/// opened for reading); `Some(None)` when it cannot be read as a manifest
/// (too large, not UTF-8, not valid).
fn manifest_name(dir: &Path) -> Option<Option<String>> {
    let path = dir.join(MANIFEST_FILE);
    let cap = crate::package::MAX_MANIFEST_BYTES;
    let bytes = crate::package::read_at_most(&path, cap).ok()?;
    Some(
        std::str::from_utf8(&bytes)
            .ok()
            .filter(|_| bytes.len() as u64 <= cap)
            .and_then(|text| crate::manifest::Manifest::parse(text, &path).ok())
            .map(|manifest| manifest.plugin.name),
    )
}

/// Loaded plugins by name. Locked only to look up, insert or remove an
/// entry, never across an `.await`. Cloned, it is the same table (the
/// served versions check their grants against it).
#[derive(Default, Clone)]
pub(crate) struct PluginTable(Arc<RwLock<BTreeMap<String, Arc<Plugin>>>>);

impl PluginTable {
    /// The loaded plugin `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.read().get(name).cloned()
    }

    /// The map for reading. The lock is never held across an `.await` and
    /// no code holding it can panic, so a poisoned lock still holds a
    /// consistent map and is used as is.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<Plugin>>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<Plugin>>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `path`, an entry of a plugins directory, is a plugin to load:
/// a directory holding a `plugin.toml` whose name does not start with a
/// dot. Hidden ones are skipped: `airlock plugin build` writes a package
/// beside its directory as `.NAME.….partial` before swapping it in, and
/// a build cut short leaves one; loaded, it would be an old or half-swapped
/// copy served under the plugin's name.
pub fn is_plugin_dir(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."));
    !hidden && path.join(MANIFEST_FILE).is_file()
}

/// `p` absolute with its symbolic links resolved, as a grant's host path
/// is: where `p` does not exist (yet), its nearest existing ancestor is
/// resolved and the rest appended, `..` taken lexically.
fn absolute(p: &Path) -> PathBuf {
    use std::path::Component;
    if let Ok(resolved) = p.canonicalize() {
        return resolved;
    }
    let Ok(abs) = std::path::absolute(p) else {
        return p.to_owned();
    };
    for ancestor in abs.ancestors().skip(1) {
        let Ok(mut resolved) = ancestor.canonicalize() else {
            continue;
        };
        let rest = abs.strip_prefix(ancestor).unwrap_or(Path::new(""));
        for part in rest.components() {
            match part {
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => resolved.push(name),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return resolved;
    }
    abs
}

/// What no `files` grant may reach by the host's configuration, absolute.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reserved {
    /// The host's own directories (data, cache).
    stores: Vec<PathBuf>,
    /// The configured plugins directories.
    plugins_dirs: Vec<PathBuf>,
}

impl Reserved {
    fn of(config: &HostConfig) -> Reserved {
        Reserved {
            stores: [&config.data_dir, &config.cache_dir]
                .into_iter()
                .flatten()
                .map(|d| absolute(d))
                .collect(),
            plugins_dirs: config.plugins_dirs.iter().map(|d| absolute(d)).collect(),
        }
    }
}

/// The mount table, read only where a files grant is to be checked (the
/// plugin's, or a loaded plugin's against the plugin's directory).
fn files_layout<'a>(
    plugin: &Plugin,
    loaded: impl Iterator<Item = &'a Plugin>,
) -> LoadResult<crate::grants::Layout> {
    let own = !plugin.grant().files.is_empty();
    // A loaded plugin of the same name is not checked against (it is the
    // plugin's other version), so its grants need no table either.
    if !own
        && loaded
            .filter(|p| p.name() != plugin.name())
            .all(|p| p.grant().files.is_empty())
    {
        return Ok(crate::grants::Layout::default());
    }
    crate::grants::Layout::read().map_err(|e| {
        let why = if own {
            e
        } else {
            format!("{e} (its directory is checked against the files grants of the plugins loaded)")
        };
        LoadError::CapabilityDenied {
            plugin: plugin.name().to_owned(),
            capability: "capabilities.files".to_owned(),
            reason: crate::grants::mount_table_unread(&why),
        }
    })
}

/// Refuse a plugin whose `files` grants reach what the host protects
/// (plugin directories and where plugins are loaded from, configured or
/// of a loaded plugin, the data directory, the cache) or overlap another
/// plugin's grants, and a plugin whose directory lies inside a loaded
/// plugin's grant. See `grants/files.rs` for the rule. A loaded plugin of
/// the same name (the directory's plugin, for a served version of it) is
/// not another.
pub(crate) fn check_files_grants<'a>(
    plugin: &Plugin,
    reserved: &Reserved,
    loaded: impl Iterator<Item = &'a Plugin> + Clone,
) -> LoadResult<()> {
    let stores = &reserved.stores;
    let layout = files_layout(plugin, loaded.clone())?;
    let mut plugin_dirs = reserved.plugins_dirs.clone();
    let mut loaded_from = reserved.plugins_dirs.clone();
    let dirs: Vec<&Path> = loaded.clone().map(Plugin::dir).collect();
    for dir in dirs.into_iter().chain(std::iter::once(plugin.dir())) {
        let dir = absolute(dir);
        if let Some(parent) = dir.parent() {
            plugin_dirs.push(parent.to_owned());
            loaded_from.push(parent.to_owned());
        }
        plugin_dirs.push(dir);
    }
    crate::grants::check_files_overlaps(
        plugin.name(),
        &plugin.grant().files,
        crate::grants::ProtectedPaths {
            stores,
            plugin_dirs: &plugin_dirs,
            loaded_from: &loaded_from,
            layout: &layout,
        },
        loaded
            .clone()
            .filter(|p| p.name() != plugin.name())
            .flat_map(|p| p.grant().files.iter().map(move |f| (p.name(), f))),
    )?;
    // A loaded plugin's grant may not contain the new plugin's files, nor
    // be or hold, by path or through a mount, a directory in the directory
    // it is loaded from (the rule above,
    // from the other side: that directory held no loaded plugin when the
    // grant was checked).
    let dir = absolute(plugin.dir());
    for other in loaded.filter(|p| p.name() != plugin.name()) {
        for files in &other.grant().files {
            if files.access == crate::manifest::FileAccess::ReadWrite
                && let Some(loaded_in) = dir.parent()
                && layout.writes_an_entry_of(&files.host, loaded_in)
            {
                return Err(LoadError::CapabilityDenied {
                    plugin: plugin.name().to_owned(),
                    capability: "capabilities.files".to_owned(),
                    reason: format!(
                        "plugin `{}` may write {}, beside the plugin directory {}{}: where plugins are loaded from, what it writes would load as a plugin",
                        other.name(),
                        files.host.display(),
                        dir.display(),
                        crate::grants::in_through_a_mount(&files.host, loaded_in)
                    ),
                });
            }
            if layout.contains(&files.host, &dir) {
                return Err(LoadError::CapabilityDenied {
                    plugin: plugin.name().to_owned(),
                    capability: "capabilities.files".to_owned(),
                    reason: format!(
                        "the plugin directory {} lies inside {}, granted to plugin `{}`{}",
                        dir.display(),
                        files.host.display(),
                        other.name(),
                        crate::grants::into_through_a_mount(&files.host, &dir)
                    ),
                });
            }
        }
    }
    Ok(())
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
    /// Who signed it, when it is signed.
    pub signer: Option<crate::package::Signer>,
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
            signer: self.signer().cloned(),
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
    /// [`Error::Config`] if the policy is invalid or `max_argument_bytes`
    /// is 0 or above [`MAX_ARGUMENT_BYTES_CEILING`]; [`Error::Engine`] if the
    /// WebAssembly engine cannot be set up; [`Error::Audit`] if the audit
    /// log cannot be opened (in use by another process, unwritable, bad
    /// keys, or failing verification of its unsigned tail).
    pub fn new(mut config: HostConfig) -> Result<Host> {
        config.policy.validate()?;
        if !(1..=MAX_ARGUMENT_BYTES_CEILING).contains(&config.max_argument_bytes) {
            return Err(Error::Config {
                message: format!(
                    "max_argument_bytes must be between 1 and {MAX_ARGUMENT_BYTES_CEILING}"
                ),
            });
        }
        config.alerts = std::mem::take(&mut config.alerts)
            .resolve()
            .map_err(|message| Error::Config { message })?;
        let telemetry = Telemetry::new(config.telemetry.clone())
            .map_err(|message| Error::Config { message })?;
        let (stores, audit) = crate::stores::open(
            &config.store,
            config.data_dir.as_deref(),
            &config.origin,
            &config.audit,
        )?;
        let limiter = Limiter::new(&config.policy.rate_limits, stores.limits.clone())
            .map_err(|message| Error::Config { message })?;
        let ledger = Ledger::new(stores.ledger.clone());
        // This host's calls of before cannot be running: their keys'
        // outcomes are unknown, never run again.
        let recovery = ledger.recover(&config.origin)?;
        for key in &recovery.changed {
            tracing::warn!(plugin = %key.plugin, tool = %key.tool, "idempotency key in flight at last shutdown: outcome unknown");
        }
        for entry in &recovery.unreadable {
            tracing::error!(%entry, "unreadable idempotency entry left in place: calls with its key fail");
        }
        let workspace = Workspace::new(stores.workspace.clone());
        let mode = ModeWatch::new(stores.mode.clone(), &config.origin);
        let plugins = PluginTable::default();
        let served = Served::new(
            airlock_store::Releases::new(stores.plugins.clone()),
            config.data_dir.as_deref(),
            Reserved::of(&config),
            plugins.clone(),
        )?;
        // No plugin may ask for more, so no pool slot needs to hold more.
        let memory_ceiling_mb = Some(
            config
                .policy
                .limits
                .memory_mb
                .unwrap_or(crate::limits::CEILING_MEMORY_MB),
        );
        match config.max_instances_per_plugin {
            Some(0) => {
                return Err(Error::Config {
                    message: "max_instances_per_plugin must be at least 1".to_owned(),
                });
            }
            // A share of no pool bounds nothing: said, not ignored.
            Some(_) if config.max_instances == 0 => {
                return Err(Error::Config {
                    message: "max_instances_per_plugin is a share of the instance pool, and max_instances = 0 makes none (instances are allocated on demand); set max_instances, or leave max_instances_per_plugin out"
                        .to_owned(),
                });
            }
            Some(share) if share > config.max_instances => {
                return Err(Error::Config {
                    message: format!(
                        "max_instances_per_plugin = {share} is more than the pool's max_instances = {}: one plugin can hold at most the whole pool",
                        config.max_instances
                    ),
                });
            }
            _ => {}
        }
        let engine = SharedEngine::new(
            config.max_instances,
            config.max_instances_per_plugin,
            memory_ceiling_mb,
            config.zero_stacks,
        )?;
        tracing::debug!(allocation = %engine.allocation(), "engine ready");
        let cache = config
            .cache_dir
            .clone()
            .map(|dir| CompiledCache::new(dir, &engine));
        let ticker = EpochTicker::start(&engine)?;
        let alerts = Alerts::new(config.alerts.clone(), audit.clone(), &config.origin);
        let audit_closing = tokio_util::sync::CancellationToken::new();
        audit.on_closing({
            let closing = audit_closing.clone();
            move || closing.cancel()
        });
        Ok(Host {
            alerts,
            pauses: Pauses::default(),
            engine,
            cache,
            plugins,
            config,
            audit,
            workspace,
            workspace_order: crate::grants::KeyOrder::new(),
            ledger,
            store_description: stores.description,
            mode,
            last_sweep_ms: AtomicU64::new(0),
            approval_requests: tokio::sync::Mutex::new(()),
            limiter,
            served,
            telemetry,
            audit_closing,
            last_served: std::sync::Mutex::default(),
            failed_dirs: std::sync::Mutex::default(),
            _ticker: ticker,
        })
    }

    /// Load the plugin in `dir`, checked as [`Host::load_plugin`] checks
    /// it (manifest, digest, signature, grant, limits, tools), without
    /// adding it to the host: to look at it, or compare it with another
    /// version ([`PluginDiff`](crate::PluginDiff)).
    ///
    /// # Errors
    /// As [`Host::load_plugin`], except that a plugin of a name already
    /// loaded is not an error.
    pub async fn open_plugin(&self, dir: impl AsRef<Path>) -> LoadResult<Plugin> {
        plugin::load(
            &self.engine,
            self.cache.as_ref(),
            &self.config.policy,
            dir.as_ref(),
        )
        .await
    }

    /// Load the plugin in `dir` (a directory holding `plugin.toml` and the
    /// component it names).
    ///
    /// # Errors
    /// Every manifest error ([`LoadError::ManifestSyntax`],
    /// [`LoadError::ManifestInvalid`], [`LoadError::ManifestRejected`]);
    /// [`LoadError::ComponentMissing`]; [`LoadError::DigestMismatch`] when the
    /// component is not the one the manifest pins;
    /// [`LoadError::InvalidComponent`] for a file that is not a component;
    /// [`LoadError::WrongWorld`] for a component that does not target
    /// `airlock:plugin/plugin`; [`LoadError::InvalidToolList`] and
    /// [`LoadError::ToolNotExported`] when its tools do not match the manifest;
    /// [`LoadError::DuplicatePlugin`] when a plugin of that name is loaded;
    /// [`LoadError::CapabilityDenied`] when the manifest asks for a capability
    /// the policy forbids (or an `http` origin outside the policy's
    /// `http_allow`); [`LoadError::CapabilityNotGranted`] when the
    /// component imports an interface it is not granted;
    /// [`LoadError::LimitAboveCeiling`] when a limit exceeds the policy;
    /// [`LoadError::Unsigned`], [`LoadError::SignatureInvalid`] or
    /// [`LoadError::UntrustedSigner`] when its `plugin.sig` does not meet the
    /// policy's `trusted_keys` / `require_signature` (checked before the
    /// component is compiled).
    ///
    /// # Security
    /// The component's code runs once here (to list its tools) under the same
    /// limits as a call.
    pub async fn load_plugin(&self, dir: impl AsRef<Path>) -> LoadResult<Arc<Plugin>> {
        let dir = dir.as_ref();
        let loaded = plugin::load(&self.engine, self.cache.as_ref(), &self.config.policy, dir)
            .await
            .and_then(|plugin| {
                let mut plugins = self.plugins.write();
                self.admit(&mut plugins, plugin, dir)
            });
        self.note_load(dir, None, &loaded);
        loaded
    }

    /// Remember a plugins-directory load that failed, by the name its
    /// manifest gives and the name of the plugin it replaced, until a
    /// plugin of that name loads.
    fn note_load(&self, dir: &Path, replaces: Option<&str>, loaded: &LoadResult<Arc<Plugin>>) {
        // Read before the lock is taken.
        let names: Vec<String> = match loaded {
            Ok(_) => Vec::new(),
            Err(_) => manifest_name(dir)
                .flatten()
                .into_iter()
                .chain(replaces.map(str::to_owned))
                .collect(),
        };
        let mut failed = self
            .failed_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match loaded {
            Ok(plugin) => {
                failed.remove(plugin.name());
            }
            Err(_) => {
                for name in names {
                    failed.insert(name, dir.to_owned());
                }
            }
        }
    }

    /// The directory of plugin `name` whose load failed, while none of
    /// that name is loaded and the directory still holds a manifest that
    /// names it (or that cannot be read as one).
    fn failed_dir(&self, name: &str) -> Option<PathBuf> {
        if self.plugins.get(name).is_some() {
            return None;
        }
        let dir = self
            .failed_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()?;
        match manifest_name(&dir)? {
            Some(named) => (named == name).then_some(dir),
            None => Some(dir),
        }
    }

    /// Put `plugin`, loaded from `dir`, into the table: unless a plugin of
    /// its name is there, or its `files` grants reach another's or the
    /// host's own.
    fn admit(
        &self,
        plugins: &mut BTreeMap<String, Arc<Plugin>>,
        plugin: Plugin,
        dir: &Path,
    ) -> LoadResult<Arc<Plugin>> {
        self.check_admission(plugins, &plugin, dir, None)?;
        let plugin = Arc::new(plugin);
        plugins.insert(plugin.name().to_owned(), Arc::clone(&plugin));
        self.last_served().remove(plugin.name());
        Ok(plugin)
    }

    /// Whether [`admit`](Self::admit) would take `plugin` into `plugins`
    /// once `replacing` (a loaded plugin's name) is out of it.
    fn check_admission(
        &self,
        plugins: &BTreeMap<String, Arc<Plugin>>,
        plugin: &Plugin,
        dir: &Path,
        replacing: Option<&str>,
    ) -> LoadResult<()> {
        let others = || {
            plugins
                .iter()
                .filter(move |(name, _)| Some(name.as_str()) != replacing)
                .map(|(_, p)| p)
        };
        // Installed versions loaded here hold grants too (read under the
        // table's lock, the order `Served` takes them in too).
        let served = self.served.all_loaded();
        if let Some(existing) = plugins
            .get(plugin.name())
            .filter(|_| Some(plugin.name()) != replacing)
        {
            return Err(LoadError::DuplicatePlugin {
                name: plugin.name().to_owned(),
                first: existing.dir().to_owned(),
                second: dir.to_owned(),
            });
        }
        check_files_grants(
            plugin,
            self.served.reserved(),
            others().chain(&served).map(|p| &**p),
        )
    }

    fn last_served(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Plugin>>> {
        self.last_served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take the plugin `name` out of `plugins`, remembering it as the last
    /// version of its name that served.
    fn take_out(
        &self,
        plugins: &mut BTreeMap<String, Arc<Plugin>>,
        name: &str,
    ) -> Option<Arc<Plugin>> {
        let plugin = plugins.remove(name)?;
        let mut last = self.last_served();
        if !last.contains_key(name) && last.len() >= REMEMBERED_PLUGINS {
            last.pop_first();
        }
        last.insert(name.to_owned(), Arc::clone(&plugin));
        Some(plugin)
    }

    /// Bring a plugins directory's plugin in line with its files while
    /// serving, on the record: load the plugin now in `dir` in place of
    /// the loaded plugin `replaces` (its files changed), or as a plugin
    /// added (`None`). The new version is loaded and checked as
    /// [`Host::load_plugin`] checks it while `replaces` goes on serving
    /// (a compile can take seconds), then recorded in the audit log
    /// ([`Event::PluginChanged`]: the versions, and what the new one may
    /// do that the version of its name that served last could not), then
    /// takes its place in one step: no call finds the plugin missing
    /// meanwhile, and no version serves before it is on the record. Calls
    /// already running finish on the version they started on.
    ///
    /// When the new version does not load, `replaces` is unloaded all the
    /// same (and that recorded): the files it was loaded from are not on
    /// disk any more, and a host does not go on serving code or grants its
    /// operator replaced.
    ///
    /// # Errors
    /// As [`Host::load_plugin`] (the new version may name another plugin,
    /// which must not be loaded already); [`LoadError::AuditUnavailable`]
    /// when the audit log cannot record the change: the new version is
    /// not served, nor is `replaces`.
    pub async fn reload_plugin(
        &self,
        replaces: Option<&str>,
        dir: impl AsRef<Path>,
    ) -> LoadResult<Arc<Plugin>> {
        let dir = dir.as_ref();
        let loaded = self.reload_plugin_now(replaces, dir).await;
        self.note_load(dir, replaces, &loaded);
        loaded
    }

    async fn reload_plugin_now(
        &self,
        replaces: Option<&str>,
        dir: &Path,
    ) -> LoadResult<Arc<Plugin>> {
        let loaded =
            plugin::load(&self.engine, self.cache.as_ref(), &self.config.policy, dir).await;
        let old = replaces.and_then(|name| self.plugins.get(name));
        let checked = loaded.and_then(|new| {
            let plugins = self.plugins.read();
            self.check_admission(&plugins, &new, dir, replaces)
                .map(|()| new)
        });
        // On the record first: a version not on it does not serve.
        let mut recorded = Ok(());
        for entry in self.change_entries(old.as_deref(), checked.as_ref(), dir) {
            recorded =
                crate::audit::append(&self.audit, &entry, airlock_audit::Durability::Flushed)
                    .await
                    .map(drop);
            if recorded.is_err() {
                break;
            }
        }
        let (error, name, version) = {
            let mut plugins = self.plugins.write();
            if let Some(name) = replaces {
                self.take_out(&mut plugins, name);
            }
            match (checked, recorded) {
                (Ok(new), Ok(())) => {
                    let (name, version) = (new.name().to_owned(), new.version().to_owned());
                    match self.admit(&mut plugins, new, dir) {
                        Ok(plugin) => return Ok(plugin),
                        Err(error) => (error, name, version),
                    }
                }
                (Ok(_), Err(e)) => return Err(LoadError::AuditUnavailable(e)),
                (Err(error), recorded) => {
                    if let Err(e) = recorded {
                        tracing::error!(dir = %dir.display(), error = %e, "the audit log cannot record that a changed plugin was unloaded");
                    }
                    return Err(error);
                }
            }
        };
        // Something took its place since the check (only a caller loading
        // plugins beside the reload could): the record says it was loaded,
        // another says not.
        let mut entry = airlock_audit::Entry::new(Event::PluginChanged);
        entry.plugin = Some(name);
        entry.plugin_version = Some(version);
        entry.decision = Some("unloaded".to_owned());
        entry.reason = Some(format!(
            "the change recorded before this one was not made: {}",
            crate::error::chain(&error)
        ));
        if let Err(e) =
            crate::audit::append(&self.audit, &entry, airlock_audit::Durability::Flushed).await
        {
            tracing::error!(dir = %dir.display(), error = %e, "a recorded plugin change was not made, and that cannot be recorded");
        }
        Err(error)
    }

    /// The records of a change [`reload_plugin`](Self::reload_plugin)
    /// makes: `old` (loaded) replaced by `new` (or by nothing, when it did
    /// not load).
    fn change_entries(
        &self,
        old: Option<&Plugin>,
        new: std::result::Result<&Plugin, &LoadError>,
        dir: &Path,
    ) -> Vec<airlock_audit::Entry> {
        let entry = |plugin: &Plugin, decision: &str, reason: String| {
            let mut entry = airlock_audit::Entry::new(Event::PluginChanged);
            entry.plugin = Some(plugin.name().to_owned());
            entry.plugin_version = Some(plugin.version().to_owned());
            entry.component_digest = Some(plugin.digest().to_owned());
            entry.manifest_digest = Some(plugin.manifest_digest().to_owned());
            entry.decision = Some(decision.to_owned());
            entry.reason = Some(reason);
            entry
        };
        let dir = dir.display();
        let compared = |earlier: &Plugin, new: &Plugin| {
            let widens = crate::releases::widenings(earlier, new);
            format!(
                "{} {} (component {}, manifest {}); {}",
                earlier.name(),
                earlier.version(),
                earlier.digest(),
                earlier.manifest_digest(),
                if widens.is_empty() {
                    "no wider".to_owned()
                } else {
                    format!("widens: {}", widens.join("; "))
                }
            )
        };
        let mut entries = Vec::new();
        match (old, new) {
            (Some(old), Ok(new)) if old.name() == new.name() => {
                entries.push(entry(
                    new,
                    "reloaded",
                    format!("files in {dir} changed: replaces {}", compared(old, new)),
                ));
            }
            (old, Ok(new)) => {
                if let Some(old) = old {
                    entries.push(entry(
                        old,
                        "unloaded",
                        format!(
                            "files in {dir} changed: they hold plugin `{}` now",
                            new.name()
                        ),
                    ));
                }
                let earlier = self.last_served().get(new.name()).cloned();
                entries.push(entry(
                    new,
                    "loaded",
                    match earlier {
                        Some(earlier) => format!(
                            "added in {dir}; the version of its name that served last: {}",
                            compared(&earlier, new)
                        ),
                        None => format!(
                            "added in {dir}; no earlier version of its name is remembered here"
                        ),
                    },
                ));
            }
            (Some(old), Err(error)) => entries.push(entry(
                old,
                "unloaded",
                format!(
                    "files in {dir} changed and do not load: {}",
                    crate::error::chain(error)
                ),
            )),
            (None, Err(_)) => {}
        }
        entries
    }

    /// Unload the plugins directory's plugin `name`, whose directory `dir`
    /// is gone, on the record ([`Event::PluginChanged`], `unloaded`).
    /// Returns the plugin, or `None` when none of that name is loaded.
    ///
    /// # Errors
    /// [`LoadError::AuditUnavailable`] when the audit log cannot record
    /// it: the plugin is unloaded all the same.
    pub async fn unload_plugin_recorded(
        &self,
        name: &str,
        dir: impl AsRef<Path>,
    ) -> LoadResult<Option<Arc<Plugin>>> {
        let Some(old) = self.unload_plugin(name) else {
            return Ok(None);
        };
        let mut entry = airlock_audit::Entry::new(Event::PluginChanged);
        entry.plugin = Some(old.name().to_owned());
        entry.plugin_version = Some(old.version().to_owned());
        entry.component_digest = Some(old.digest().to_owned());
        entry.manifest_digest = Some(old.manifest_digest().to_owned());
        entry.decision = Some("unloaded".to_owned());
        entry.reason = Some(format!("its directory {} is gone", dir.as_ref().display()));
        crate::audit::append(&self.audit, &entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(LoadError::AuditUnavailable)?;
        Ok(Some(old))
    }

    /// Unload the plugin `name`: new calls to its tools fail with
    /// [`CallError::UnknownPlugin`]; calls already running finish normally.
    /// Returns the plugin, or `None` when none of that name is loaded.
    pub fn unload_plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.take_out(&mut self.plugins.write(), name)
    }

    /// Log a warning when plugins are loaded from `dir` and it is not in
    /// [`HostConfig::plugins_dirs`]: until a plugin of it loads, a `files`
    /// grant of another plugin may reach it.
    pub fn warn_unless_configured(&self, dir: &Path) {
        let resolved = absolute(dir);
        if !self.served.reserved().plugins_dirs.contains(&resolved) {
            tracing::warn!(dir = %dir.display(), "plugins directory not in HostConfig::plugins_dirs: until a plugin of it loads, a files grant may reach it");
        }
    }

    /// Load every plugin in `dir`: each subdirectory holding a `plugin.toml`
    /// ([`is_plugin_dir`]: hidden ones are not).
    /// A plugin that fails to load is reported in
    /// [`LoadReport::failed`] and does not stop the others. `dir` belongs
    /// in [`HostConfig::plugins_dirs`] (a warning is logged when it is
    /// not): then no `files` grant can reach it even while it holds no
    /// plugin.
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` cannot be read.
    pub async fn load_plugins_dir(&self, dir: impl AsRef<Path>) -> LoadResult<LoadReport> {
        let dir = dir.as_ref();
        self.warn_unless_configured(dir);
        let entries = std::fs::read_dir(dir).map_err(|e| LoadError::io(dir, e))?;
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LoadError::io(dir, e))?;
            let path = entry.path();
            if is_plugin_dir(&path) {
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

    pub(crate) fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    pub(crate) fn cache(&self) -> Option<&CompiledCache> {
        self.cache.as_ref()
    }

    /// The loaded plugins, by name (a snapshot).
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins.read().values().cloned().collect()
    }

    /// Names of the loaded plugins, sorted.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins.read().keys().cloned().collect()
    }

    /// The loaded plugin `name`.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.read().get(name).cloned()
    }

    /// Every exposed tool of what serves each plugin, by plugin then tool
    /// name (a snapshot): the serving version of a plugin with a rollout
    /// (once loaded, see [`prepare_rollouts`](Self::prepare_rollouts)),
    /// else the plugin loaded from the plugins directory.
    pub fn tools(&self) -> Vec<Arc<Tool>> {
        // A plugin whose rollout cannot be read serves nothing (its calls
        // are refused); rollouts that cannot be read at all (the store is
        // down): what they served when last read.
        let rollouts: Vec<(String, String)> = match self.served.routes() {
            Ok(routes) => routes
                .rollouts
                .iter()
                .map(|(name, rollout)| (name.clone(), rollout.serving.clone()))
                .chain(
                    routes
                        .unreadable
                        .keys()
                        .map(|name| (name.clone(), String::new())),
                )
                .collect(),
            Err(_) => self.served.last_serving(),
        };
        let mut serving: BTreeMap<String, Arc<Plugin>> = self.plugins.read().clone();
        for (name, version) in &rollouts {
            match self.served.loaded(name, version) {
                Some(plugin) => {
                    serving.insert(name.clone(), plugin);
                }
                None => {
                    serving.remove(name);
                }
            }
        }
        serving
            .values()
            .flat_map(|plugin| plugin.tools_arc())
            .collect()
    }

    /// Load every installed version a rollout sends traffic to (so no call
    /// waits for its compile) and say whether what serves some plugin
    /// changed since the last time — the tool list may have. `airlock
    /// serve` runs it with each look at the plugins directory.
    ///
    /// # Errors
    /// [`Error::Store`] when the rollouts cannot be read.
    pub async fn prepare_rollouts(&self) -> Result<bool> {
        Ok(self
            .served
            .prepare(&self.engine, self.cache.as_ref(), &self.config.policy)
            .await?)
    }

    /// Run one tool call through the pipeline.
    ///
    /// # Errors
    /// Refusals, before the guest runs: [`CallError::InvalidIdentifier`] and
    /// [`CallError::InvalidSession`] (checked first, before anything is
    /// recorded), [`CallError::BadToolReference`],
    /// [`CallError::UnknownPlugin`], [`CallError::UnknownTool`],
    /// [`CallError::ArgumentsTooLarge`], [`CallError::ArgumentsNotJson`],
    /// [`CallError::ArgumentsNotObject`], [`CallError::ArgumentsInvalid`] (every
    /// failing path). After it runs: [`CallError::Tool`] when the guest returns a
    /// tool error; [`CallError::Trap`] when it crashes or hits a limit (fuel,
    /// deadline, memory); [`CallError::OutputTooLarge`] and
    /// [`CallError::OutputInvalid`] for results over the limit, not JSON or
    /// failing the output schema. [`CallError::Cancelled`] when the request's
    /// cancellation token ([`CallRequest::cancel_on`]) fires first.
    ///
    /// # Security
    /// Every call gets a fresh instance: no state leaks between calls through
    /// guest memory.
    pub async fn call(&self, mut request: CallRequest) -> Result<CallResponse, CallError> {
        let first = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let call_id = crate::pipeline::new_call_id();
            // Without a trace id of the caller's, the first attempt's call
            // id is the trace id (of every attempt, when it is retried).
            let trace_id = request.trace_id.clone().unwrap_or_else(|| call_id.clone());
            // Exempt from tokio's cooperative budget: an attempt is a
            // bounded piece of work (its deadline), and a budget yield in
            // the middle of it — at a semaphore or the deadline's timer —
            // sends it behind every other runnable task while it holds
            // its pool slot: with 64 callers on two workers that was most
            // of the p99 (5 ms against 0.9 ms without). It still yields
            // where it really waits, and a running guest at every epoch
            // tick (10 ms).
            let (result, version) =
                tokio::task::coop::unconstrained(self.pipeline().call(&request, call_id)).await;
            // The attempt, done, counts against the caller's budget: a
            // task calling in a loop, its calls finishing at their first
            // poll (a refusal, a quick guest), gives up its worker every
            // so often instead of holding it — and every task behind it,
            // a guest that yielded at an epoch tick among them. Nothing
            // is held here (no pool slot, no key).
            tokio::task::coop::consume_budget().await;
            // Alert rules: each finished call, reported once, from here.
            if self.alerts.enabled() {
                // A call that failed before its tool was resolved counts
                // against the tool as asked only when its plugin serves
                // here: made-up names of a known shape would take the
                // evaluator's slots and reach takeovers (pauses of tools
                // that do not exist).
                let known = || {
                    request
                        .tool
                        .split_once('/')
                        .is_some_and(|(plugin, _)| self.served.knows(plugin))
                };
                let actions = self.alerts.observe(
                    &request.tool,
                    version.as_deref(),
                    &result,
                    started.elapsed(),
                    known,
                );
                let actions = self.alerts.with_unfinished(actions);
                // Boxed, and only when there is something to do: most
                // calls fire nothing, and the acting future inline would
                // be bytes every call's future carries.
                if !actions.is_empty() {
                    Box::pin(self.act(actions)).await;
                }
            }
            // Retries: only transient host-side failures, only where running
            // again cannot repeat an effect, within the tool's policy.
            let Err(error) = &result else {
                return result;
            };
            let Some(wait) = self
                .retry_wait(&request, error, attempt, first.elapsed())
                .await
            else {
                return result;
            };
            tracing::info!(tool = %request.tool, attempt, kind = error.kind(), "retrying a call after a transient failure");
            // Every attempt is a call on the record; one trace id links them
            // (a caller's traceparent does already).
            if request.traceparent.is_none() {
                request.trace_id = Some(trace_id);
            }
            let cancelled = crate::pipeline::run::unless_cancelled(
                request.cancel.as_ref(),
                tokio::time::sleep(wait),
            )
            .await;
            if cancelled.is_none() {
                return result;
            }
            attempt += 1;
        }
    }

    /// How long to wait before attempt `attempt + 1` of `request`, which
    /// failed with `error` after `elapsed` in all; `None`: no retry.
    async fn retry_wait(
        &self,
        request: &CallRequest,
        error: &CallError,
        attempt: u32,
        elapsed: std::time::Duration,
    ) -> Option<std::time::Duration> {
        let transient = match error {
            CallError::HostBusy { .. } | CallError::PluginBusy { .. } => true,
            CallError::Store(e) => e.kind() == "store_unavailable",
            _ => false,
        };
        if !transient {
            return None;
        }
        let (_, tool) = self.pipeline().resolve(request).await.ok()?;
        let policy = self
            .config
            .policy
            .retry_of(tool.plugin(), tool.name(), tool.retry())?;
        retry_wait(
            policy,
            tool.risk(),
            request.idempotency_key.is_some(),
            attempt,
            elapsed,
        )
    }

    /// The parts of the host the pipeline uses.
    fn pipeline(&self) -> Pipeline<'_> {
        Pipeline {
            engine: &self.engine,
            config: &self.config,
            plugins: &self.plugins,
            audit: &self.audit,
            ledger: &self.ledger,
            workspace: &self.workspace,
            workspace_order: &self.workspace_order,
            mode: &self.mode,
            limiter: &self.limiter,
            served: &self.served,
            cache: self.cache.as_ref(),
            origin: &self.config.origin,
            approvals: self.approvals_parts(),
            pauses: &self.pauses,
            telemetry: &self.telemetry,
            audit_closing: &self.audit_closing,
        }
    }

    /// The parts of the host release actions use.
    fn release_parts(&self, plugin: &str) -> ReleaseParts<'_> {
        ReleaseParts {
            served: &self.served,
            engine: &self.engine,
            cache: self.cache.as_ref(),
            policy: &self.config.policy,
            audit: &self.audit,
            ledger: &self.ledger,
            dev_plugin: self.plugins.get(plugin),
            dev_unloaded: self.failed_dir(plugin),
        }
    }

    /// Install `package` as a version of its plugin in the host's store
    /// (shared by every host on it): checked exactly as a load checks it
    /// (digest pin, signature against the policy, component, tools,
    /// grants), stored content-addressed and immutable, recorded in the
    /// audit log. It serves nothing until a rollout sends traffic to it.
    /// Installing the same files again does nothing (`new` is `false`).
    ///
    /// # Errors
    /// Every [`LoadError`] of a load; [`Error::Store`] with kind `conflict`
    /// when that version is installed with other files;
    /// [`Error::AuditUnavailable`].
    pub async fn install(&self, package: &crate::Package, by: &str) -> Result<InstallReport> {
        self.release_parts(package.name())
            .install(package, by)
            .await
    }

    /// Installed versions (of `plugin` only, if given), by plugin, then
    /// install time.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn installed(&self, plugin: Option<&str>) -> Result<Vec<airlock_store::InstalledVersion>> {
        self.served.releases().versions(plugin).map_err(|e| {
            Error::Store(crate::error::StoreError::new(
                crate::error::Store::Plugins,
                e,
            ))
        })
    }

    /// Installed versions (of `plugin` only, if given), by plugin, then
    /// install time, and each version whose record cannot be read: a
    /// listing one damaged record does not blank, for the console, the
    /// control API and `airlock plugins list`.
    ///
    /// # Errors
    /// [`Error::Store`] when the store can list neither the versions nor
    /// their names, or read none of those records for its own failure.
    pub fn installed_listing(&self, plugin: Option<&str>) -> Result<crate::InstalledListing> {
        Ok(crate::releases::installed_listing(
            self.served.releases(),
            plugin,
        )?)
    }

    /// Every plugin's rollout, as this host serves them (read again at most
    /// every [`ROLLOUT_REFRESH`](crate::ROLLOUT_REFRESH)).
    ///
    /// # Errors
    /// [`Error::Store`], also when one plugin's rollout record cannot be
    /// read (naming it): [`rollout_listing`](Self::rollout_listing) lists
    /// the others instead.
    pub fn rollouts(&self) -> Result<Vec<airlock_store::Rollout>> {
        Ok(self.served.rollouts()?.values().cloned().collect())
    }

    /// Every plugin's rollout that can be read, as this host serves them,
    /// and each plugin whose record cannot (its calls refused): a listing
    /// one bad record does not blank, for the console and `airlock
    /// plugins list`.
    ///
    /// # Errors
    /// [`Error::Store`] when the store can list neither the rollouts nor
    /// the names of the plugins with one, or read none of those records
    /// for its own failure.
    pub fn rollout_listing(&self) -> Result<crate::RolloutListing> {
        Ok(self.served.rollout_listing()?)
    }

    /// Send a share of a plugin's callers (all of them at 100 %) to an
    /// installed version: a canary beside the serving version, sticky by
    /// principal (or session), or the new serving version. Every host
    /// sharing the store follows within [`ROLLOUT_REFRESH`](crate::ROLLOUT_REFRESH).
    /// A version asking for more than the one serving (see
    /// [`PluginDiff`](crate::PluginDiff)) first needs an approver's
    /// decision: the change is refused with
    /// [`ReleaseError::ApprovalRequired`] naming the approval, and asked
    /// again with it once approved. Recorded in the audit log, including a
    /// change that lost a race with another operator's.
    ///
    /// # Errors
    /// [`Error::Release`] saying why it was refused; [`Error::Load`] when
    /// the version does not load here; [`Error::Store`],
    /// [`Error::AuditUnavailable`].
    pub async fn set_rollout(&self, request: &RolloutRequest) -> Result<airlock_store::Rollout> {
        self.release_parts(&request.plugin)
            .set_rollout(request, &self.config.policy.approvals)
            .await
    }

    /// Make a plugin's canary its serving version (the serving one becomes
    /// what a rollback returns to).
    ///
    /// # Errors
    /// [`ReleaseError::NoCanary`]; as [`set_rollout`](Self::set_rollout).
    pub async fn promote(
        &self,
        plugin: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<airlock_store::Rollout> {
        self.release_parts(plugin).promote(plugin, by, reason).await
    }

    /// Send all of a plugin's traffic back in one step: stop its canary,
    /// or, without one, serve the previous version again. Needs no
    /// approval: the version returned to served before.
    ///
    /// # Errors
    /// [`ReleaseError::NothingToRollBack`]; as [`set_rollout`](Self::set_rollout).
    pub async fn rollback(
        &self,
        plugin: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<airlock_store::Rollout> {
        self.release_parts(plugin)
            .rollback(plugin, by, reason, false, None, None)
            .await
    }

    /// [`rollback`](Self::rollback), only if the rollout's last change is
    /// still `seen_change` (the [`RolloutChange`](airlock_store::RolloutChange)
    /// id the operator saw): a second click, or a page left open while
    /// someone else (or an alert) changed the rollout, does not roll back
    /// one step further.
    ///
    /// # Errors
    /// [`ReleaseError::Conflict`] when the rollout changed since; as
    /// [`rollback`](Self::rollback).
    pub async fn rollback_if_unchanged(
        &self,
        plugin: &str,
        by: &str,
        reason: Option<&str>,
        seen_change: &str,
    ) -> Result<airlock_store::Rollout> {
        self.release_parts(plugin)
            .rollback(plugin, by, reason, false, None, Some(seen_change))
            .await
    }

    /// A plugin's rollout and, per version receiving traffic, its calls,
    /// error rate, p50/p99 wall time and mean fuel since the canary started
    /// (from the audit log, every host's chain).
    ///
    /// # Errors
    /// [`ReleaseError::NothingServes`]; [`Error::Store`], [`Error::Audit`].
    pub fn rollout_status(&self, plugin: &str) -> Result<RolloutStatus> {
        self.release_parts(plugin).status(plugin)
    }

    /// Installed version `version` of `plugin`, loaded on this host (once;
    /// later calls share it).
    ///
    /// # Errors
    /// [`ReleaseError::NotInstalled`]; [`Error::Load`]; [`Error::Store`].
    pub async fn plugin_version(&self, plugin: &str, version: &str) -> Result<Arc<Plugin>> {
        self.served
            .load(
                &self.engine,
                self.cache.as_ref(),
                &self.config.policy,
                plugin,
                version,
            )
            .await
    }

    /// What serves `plugin` for callers outside any canary: its rollout's
    /// serving version, else the plugin loaded from the plugins directory.
    ///
    /// # Errors
    /// As [`plugin_version`](Self::plugin_version); [`Error::Store`] when
    /// the rollouts cannot be read, or `plugin`'s own record cannot
    /// (naming it; another plugin's does not matter).
    pub async fn serving(&self, plugin: &str) -> Result<Option<Arc<Plugin>>> {
        match self.served.rollout_of(plugin)? {
            Some(rollout) => Ok(Some(self.plugin_version(plugin, &rollout.serving).await?)),
            None => Ok(self.plugins.get(plugin)),
        }
    }

    /// The parts of the host approvals use.
    fn approvals_parts(&self) -> Approvals<'_> {
        Approvals {
            ledger: &self.ledger,
            audit: &self.audit,
            policy: &self.config.policy.approvals,
            last_sweep_ms: &self.last_sweep_ms,
            requesting: &self.approval_requests,
        }
    }

    /// Switch the host to read-only mode (refuse every tool that is not
    /// `read`) or back, recording the switch in the audit log. With a data
    /// directory the switch is the mode file, which other processes (and
    /// `airlock mode`) see too.
    ///
    /// # Errors
    /// [`Error::Io`] writing the mode file; [`Error::AuditUnavailable`].
    pub async fn set_mode(&self, read_only: bool, by: &str, reason: Option<&str>) -> Result<Mode> {
        self.mode
            .set(&self.ledger, &self.audit, read_only, by, reason)
            .await
    }

    /// The current mode (`None`: normal, never switched).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Config`] when the mode file is unreadable.
    pub fn mode(&self) -> Result<Option<Mode>> {
        Ok(self.mode.mode()?)
    }

    /// An approver's decision on approval `id`. The first decision wins;
    /// the approver must be configured, present their token, and not be the
    /// caller. An approval whose arguments no approver can see whole
    /// ([`unseen_arguments`](crate::unseen_arguments)) takes
    /// [`Verdict::ApproveUnseen`]. Recorded in the audit log.
    ///
    /// # Errors
    /// [`Error::DecisionRefused`] saying why; [`Error::UnseenArguments`];
    /// [`Error::Store`], [`Error::AuditUnavailable`].
    pub async fn decide(
        &self,
        id: &str,
        approver: &str,
        token: &str,
        verdict: Verdict,
        reason: Option<&str>,
    ) -> Result<Approval> {
        self.approvals_parts()
            .decide(id, approver, token, verdict, reason)
            .await
    }

    /// Approvals, newest first, optionally only those in `state`. Any that
    /// expire on the way are recorded in the audit log.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn approvals(&self, state: Option<ApprovalState>) -> Result<Vec<Approval>> {
        self.approvals_parts().list(state)
    }

    /// The approval `id` (recorded in the audit log if it expires on the
    /// way).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn approval(&self, id: &str) -> Result<Option<Approval>> {
        self.approvals_parts().get(id)
    }

    /// Expire overdue approvals (recording each) and forget what is past
    /// its retention: terminal approvals after `policy.approvals.retention_s`,
    /// finished idempotency entries after `idempotency_retention_s`. Runs by
    /// itself every `sweep_interval_s` while calls arrive.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn sweep_ledger(&self) -> Result<SweepReport> {
        self.approvals_parts().sweep()
    }

    /// What holds the host's state (`sled at /var/lib/airlock`,
    /// `postgres at db:5432/airlock`), for messages.
    pub fn store_description(&self) -> &str {
        &self.store_description
    }

    /// The workspace store plugins keep their state in.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// The audit log every call is recorded in.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The host's metrics and span export: to set the alerts gauge, or
    /// flush spans.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Every metric family in the Prometheus text format (what `/metrics`
    /// serves): the calls counted so far, and the host's state read now —
    /// approvals pending (expired ones are expired and recorded on the
    /// way), the instance pool and each plugin's call slots, the audit
    /// log's queue and last checkpoint.
    ///
    /// # Errors
    /// [`Error::Store`] when the approvals cannot be read.
    pub fn metrics(&self) -> Result<String> {
        let pending = self.approvals(Some(ApprovalState::Pending))?;
        let now = crate::mode::now_ms();
        let oldest = pending
            .iter()
            .map(|a| now.saturating_sub(a.created_ms))
            .max()
            .unwrap_or(0);
        let call_slots = self
            .plugins()
            .iter()
            .map(|p| {
                let free = u64::try_from(p.slots.available_permits()).unwrap_or(u64::MAX);
                (
                    p.name().to_owned(),
                    p.slots_limit.saturating_sub(free),
                    p.slots_limit,
                )
            })
            .collect();
        Ok(self.telemetry.encode(&ScrapeGauges {
            approvals_pending: pending.len(),
            oldest_pending_approval: std::time::Duration::from_millis(oldest),
            instances_in_use: self.engine.instances_in_use(),
            instances_max: self.engine.max_instances(),
            call_slots,
            audit: self.audit.health(),
        }))
    }

    // ----------------------------------------------------------- readiness

    /// The readiness of `plugin` (of every serving plugin without one):
    /// the pre-launch checklist, with `required` checks deciding whether
    /// each is ready and the others warning. Each finding says what is
    /// missing and how to fix it.
    ///
    /// # Errors
    /// [`CallError::UnknownPlugin`] (as [`Error::Call`]) when `plugin`
    /// serves nothing; [`Error::Store`] when the store cannot be used
    /// (any kind but `Corrupt`), [`Error::Audit`]. A plugin whose rollout
    /// record cannot be read, or whose serving version or canary does not
    /// load (its kept copy damaged included), is a report (not ready,
    /// check `routing`), not an error.
    pub async fn readiness(
        &self,
        plugin: Option<&str>,
        config: &crate::readiness::ReadinessConfig,
    ) -> Result<Vec<crate::readiness::ReadinessReport>> {
        // One plugin's unreadable rollout record makes that plugin not
        // ready (its calls are refused), not the host's whole report.
        let routes = self.served.routes()?;
        let names: Vec<String> = match plugin {
            Some(name) => vec![name.to_owned()],
            None => {
                let mut names = self.plugin_names();
                names.extend(routes.rollouts.keys().cloned());
                names.extend(routes.unreadable.keys().cloned());
                names.sort();
                names.dedup();
                names
            }
        };
        let durable =
            self.config.data_dir.is_some() || !matches!(self.config.store, StoreConfig::Sled);
        let last_checkpoint_ms = self.audit.last_checkpoint()?.map(|c| c.time_ms);
        // Read and, as a switch would be, written: a takeover that cannot
        // switch the mode fails in the middle of the incident.
        let mode_available = self.mode().is_ok() && self.mode.writable();
        let mut reports = Vec::new();
        for name in names {
            // What serves it, from the rollouts read above (read again,
            // a record gone bad since would fail the whole report).
            if let Some(why) = routes.unreadable.get(&name) {
                reports.push(crate::readiness::unroutable(
                    &name,
                    "",
                    format!(
                        "its rollout record cannot be read, so every call of it is refused: {why}"
                    ),
                    format!(
                        "restore the record (named above) from a backup, or delete it and roll out again: `airlock rollout {name} VERSION --percent 100`"
                    ),
                ));
                continue;
            }
            // The canary taking calls, once it is known to load.
            let mut canary_loaded = None;
            let serving = match routes.rollouts.get(&name) {
                Some(rollout) => match self.plugin_version(&name, &rollout.serving).await {
                    Ok(serving) => {
                        // A canary that does not load fails its share of
                        // the calls as surely.
                        let canary = rollout.canary.as_ref().filter(|c| c.percent > 0);
                        let loaded = match canary {
                            Some(c) => Some(self.plugin_version(&name, &c.version).await),
                            None => None,
                        };
                        if let (Some(canary), Some(loaded)) = (canary, loaded) {
                            match loaded {
                                Ok(plugin) => {
                                    canary_loaded = Some((canary.version.clone(), plugin))
                                }
                                Err(e) => {
                                    if is_the_hosts(&e) {
                                        return Err(e);
                                    }
                                    reports.push(crate::readiness::unroutable(
                                &name,
                                &canary.version,
                                format!(
                                    "its canary {} does not load here, so the {} % of callers routed to it fail: {}",
                                    canary.version,
                                    canary.percent,
                                    crate::error::chain(&e)
                                ),
                                format!(
                                    "fix what stops it loading, or stop the canary: `airlock rollback {name}`"
                                ),
                            ));
                                    continue;
                                }
                            }
                        }
                        serving
                    }
                    Err(e) if is_the_hosts(&e) => return Err(e),
                    Err(e) => {
                        // Rolling back serves the previous version only
                        // when no canary runs (it stops the canary first).
                        let fix = match (&rollout.canary, &rollout.previous) {
                            (None, Some(previous)) => format!(
                                "fix what stops it loading, or serve {previous} again: `airlock rollback {name}`"
                            ),
                            _ => format!(
                                "fix what stops it loading, or serve another version: `airlock rollout {name} VERSION --percent 100`"
                            ),
                        };
                        reports.push(crate::readiness::unroutable(
                            &name,
                            &rollout.serving,
                            format!(
                                "its serving version {} does not load here, so the calls routed to it fail: {}",
                                rollout.serving,
                                crate::error::chain(&e)
                            ),
                            fix,
                        ));
                        continue;
                    }
                },
                None => match self.plugins.get(&name) {
                    Some(serving) => serving,
                    None => return Err(Error::Call(CallError::UnknownPlugin { plugin: name })),
                },
            };
            let rollback_target = routes
                .rollouts
                .get(&name)
                .is_some_and(|r| r.previous.is_some() || r.canary.is_some());
            let context = |eval| crate::readiness::Context {
                policy: &self.config.policy,
                alerts: &self.config.alerts,
                required: &config.required,
                rollback_target,
                durable,
                last_checkpoint_ms,
                mode_available,
                now_ms: crate::mode::now_ms(),
                eval,
            };
            let mut report =
                crate::readiness::check(&serving, &context(self.readiness_eval(&serving).await));
            // A canary takes its share of the calls under its own manifest
            // and cases: checked too, its findings named, the plugin ready
            // only when both are.
            if let Some((version, canary)) = canary_loaded {
                let canary_report =
                    crate::readiness::check(&canary, &context(self.readiness_eval(&canary).await));
                crate::readiness::add_canary(&mut report, canary_report, &version);
            }
            reports.push(report);
        }
        Ok(reports)
    }

    /// `plugin`'s evaluation cases run, for readiness: as signed, if the
    /// plugin is (cases edited since it loaded could make any tool look
    /// ready).
    async fn readiness_eval(&self, plugin: &Plugin) -> crate::readiness::Eval {
        match plugin.cases() {
            Ok(None) => crate::readiness::Eval::Missing,
            Err(e) => crate::readiness::Eval::Unusable(crate::error::chain(&e)),
            Ok(Some(cases)) => match self.evaluate(plugin, &cases).await {
                Ok(report) => crate::readiness::Eval::Ran {
                    failed: report.failed,
                    total: report.cases.len(),
                },
                Err(e) => crate::readiness::Eval::Unusable(crate::error::chain(&e)),
            },
        }
    }

    // -------------------------------------------------------------- alerts

    /// Move the alert rules on as time passes — alerts resolve when calls
    /// stop, approval backlogs are read — and act on what fired or
    /// resolved. `airlock serve` runs it every second; an embedder with
    /// alert rules should too.
    ///
    /// # Errors
    /// [`Error::Store`] when the pending approvals cannot be read (every
    /// other rule has moved on all the same; those on approvals stay as
    /// they were).
    pub async fn check_alerts(&self) -> Result<Vec<AlertStatus>> {
        if !self.alerts.enabled() {
            return Ok(Vec::new());
        }
        let (figures, unread) = if self.alerts.needs_approval_figures() {
            match self.approvals(Some(ApprovalState::Pending)) {
                Ok(pending) => {
                    let now = crate::mode::now_ms();
                    let oldest = pending.iter().map(|a| a.created_ms).min().unwrap_or(now);
                    let figures = (
                        u64::try_from(pending.len()).unwrap_or(u64::MAX),
                        now.saturating_sub(oldest) / 1000,
                    );
                    (Some(figures), None)
                }
                Err(e) => (None, Some(e)),
            }
        } else {
            (Some((0, 0)), None)
        };
        let actions = self.alerts.tick(figures);
        let statuses = actions.iter().map(|a| a.status.clone()).collect();
        self.act(actions).await;
        match unread {
            Some(e) => Err(e),
            None => Ok(statuses),
        }
    }

    /// Before the host stops (and before its audit log closes): wait up
    /// to `grace` for alert webhooks queued or being retried to be
    /// delivered, then stop them and record each one left as
    /// `alert_undelivered`. Alerts raised after this are recorded
    /// undelivered at once. Without it, a process that exits drops them
    /// unrecorded.
    pub async fn close_alerts(&self, grace: std::time::Duration) {
        self.alerts.close(grace).await;
    }

    /// Alerts firing on this host now (newest first), then those resolved
    /// lately (newest first). The audit log keeps every one
    /// (`alert_fired`, `alert_resolved`).
    pub fn alerts(&self) -> Vec<AlertStatus> {
        self.alerts.list()
    }

    /// Paused tools and plugins, as every host sharing the ledger sees
    /// them.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn pauses(&self) -> Result<Vec<Pause>> {
        Ok(self.pauses.list(&self.ledger)?)
    }

    /// Check that `target` (as [`pause`](Self::pause) takes it) names what
    /// this host serves or keeps: a plugin loaded from its plugins
    /// directory or installed, and with a tool, a tool that plugin, or a
    /// version its rollout routes to, exposes.
    ///
    /// A pause holds on every host sharing the store, so `pause` itself
    /// takes any well-formed target (one may pause a tool before it is
    /// rolled out here); `airlock alerts pause`, the control socket and
    /// the console call this first unless forced, so that a mistyped
    /// target during an incident is refused instead of pausing nothing.
    /// Whatever it cannot tell (a routed version that does not load, the
    /// store unreadable) counts as known: a pause is never held up by what
    /// it may be meant to stop.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed target or one this host does not
    /// know, naming what it knows.
    pub async fn check_pause_target(&self, target: &str) -> Result<()> {
        check_target(target).map_err(|message| Error::Config { message })?;
        let (plugin, tool) = match target.split_once('/') {
            Some((plugin, tool)) => (plugin, Some(tool)),
            None => (target, None),
        };
        let mut versions: Vec<Arc<Plugin>> = self.plugins.get(plugin).into_iter().collect();
        // What this plugin's rollout serves; when that cannot be told (the
        // store, or its own record, unreadable) the pause holds as asked.
        // Another plugin's unreadable record does not matter.
        let Ok(rollout) = self.served.rollout_of(plugin) else {
            return Ok(());
        };
        if let Some(rollout) = rollout {
            for version in rollout.versions() {
                match self.plugin_version(plugin, version).await {
                    Ok(loaded) => versions.push(loaded),
                    Err(_) => return Ok(()),
                }
            }
        }
        // Its own versions only: one damaged record of another plugin must
        // not switch the check off for every target.
        // (A name no plugin can have has none: the store refuses to look.)
        let installed_here = if airlock_store::check_plugin_name(plugin).is_err() {
            false
        } else {
            match self.served.releases().version_names(Some(plugin)) {
                Ok(names) => !names.is_empty(),
                Err(_) => return Ok(()),
            }
        };
        let known = match tool {
            None => !versions.is_empty() || installed_here,
            Some(tool) => versions.iter().any(|p| p.tool(tool).is_some()),
        };
        if known {
            return Ok(());
        }
        let mut names: Vec<String> = self.plugin_names();
        // Named in the error as far as they can be listed.
        let listed = self.served.releases().version_names(None);
        let unlisted = listed.as_ref().err().map(|e| {
            format!(
                " (the installed versions cannot be listed: {})",
                crate::error::chain(e)
            )
        });
        names.extend(listed.unwrap_or_default().into_iter().map(|(p, _)| p));
        names.sort();
        names.dedup();
        let what = match tool {
            Some(_) if !versions.is_empty() => {
                let mut tools: Vec<&str> = versions
                    .iter()
                    .flat_map(|p| p.tools().map(Tool::name))
                    .collect();
                tools.sort_unstable();
                tools.dedup();
                format!(
                    "`{plugin}` has no such tool here (its tools: {})",
                    some(&tools)
                )
            }
            Some(_) if installed_here => format!(
                "`{plugin}` is installed but no version of it serves here, so its tools are not known"
            ),
            _ if names.is_empty() && unlisted.is_none() => "this host has no plugins".to_owned(),
            _ if names.is_empty() => format!(
                "no plugin here is named `{plugin}`{}",
                unlisted.unwrap_or_default()
            ),
            _ => format!(
                "no plugin here is named `{plugin}` (plugins: {}){}",
                some(&names),
                unlisted.unwrap_or_default()
            ),
        };
        Err(Error::Config {
            message: format!(
                "pause target {target:?} names nothing this host serves: {what}; to pause it on every host sharing the store all the same, force it"
            ),
        })
    }

    /// Pause `target` (`plugin/tool`, or `plugin` for every tool of it):
    /// its calls are refused with [`CallError::ToolPaused`] by every host
    /// sharing the ledger (within [`PAUSE_REFRESH`](crate::PAUSE_REFRESH))
    /// until [`resume`](Self::resume). Recorded (`takeover`). Pausing what
    /// is paused keeps the first pause.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed target; [`Error::Store`];
    /// [`Error::AuditUnavailable`].
    pub async fn pause(&self, target: &str, by: &str, reason: Option<&str>) -> Result<Pause> {
        check_target(target).map_err(|message| Error::Config { message })?;
        let pause = Pause {
            target: target.to_owned(),
            by: by.to_owned(),
            reason: reason.map(|r| crate::pipeline::gate::bounded(r, 1024)),
            at_ms: crate::mode::now_ms(),
        };
        if !self.pauses.pause(&self.ledger, &pause)? {
            let existing = self.pauses.list(&self.ledger)?;
            return Ok(existing
                .into_iter()
                .find(|p| p.target == target)
                .unwrap_or(pause));
        }
        let entry = takeover_entry(
            Event::Takeover,
            "pause",
            target,
            by,
            pause.reason.as_deref(),
        );
        crate::audit::append(&self.audit, &entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(Error::AuditUnavailable)?;
        Ok(pause)
    }

    /// Undo a pause of `target` (exactly as paused: `plugin/tool` or
    /// `plugin`), recorded (`takeover_undone`). `None` when it was not
    /// paused (nothing is recorded).
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed target; [`Error::Store`];
    /// [`Error::AuditUnavailable`].
    pub async fn resume(
        &self,
        target: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Option<Pause>> {
        check_target(target).map_err(|message| Error::Config { message })?;
        let Some(pause) = self.pauses.resume(&self.ledger, target)? else {
            return Ok(None);
        };
        let reason = reason.map(|r| crate::pipeline::gate::bounded(r, 1024));
        let entry = takeover_entry(
            Event::TakeoverUndone,
            "resume",
            target,
            by,
            reason.as_deref(),
        );
        crate::audit::append(&self.audit, &entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(Error::AuditUnavailable)?;
        Ok(Some(pause))
    }

    /// Act on alerts that fired or resolved: record each and make its
    /// takeover (their webhooks were queued as the evaluator made them).
    async fn act(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        // The `airlock_alerts_firing` gauge follows every change.
        self.telemetry.set_alerts_firing(self.alerts.firing_count());
        // Made on the calling task: a caller that goes away stops them
        // midway. What is left then is given back for the next call to
        // make (an alert fires once; its takeover would never be made).
        // An action stopped midway is made again whole: its record may be
        // written twice, and a pause or rollback made again is a no-op.
        struct Unfinished<'h> {
            alerts: &'h Alerts,
            left: std::collections::VecDeque<Action>,
        }
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                if !self.left.is_empty() {
                    self.alerts.give_back(self.left.drain(..));
                }
            }
        }
        let mut unfinished = Unfinished {
            alerts: &self.alerts,
            left: actions.into(),
        };
        while let Some(action) = unfinished.left.front() {
            let status = &action.status;
            record(&self.audit, alert_entry(action, status.takeover.as_deref())).await;
            if action.suppressed {
                let entry = takeover_entry(
                    Event::Takeover,
                    "suppressed",
                    &target_of(status),
                    &format!("alert:{}", status.rule),
                    Some(&format!(
                        "the limit of {} automatic takeovers per hour is reached",
                        self.config.alerts.max_takeovers_per_hour
                    )),
                );
                record(&self.audit, entry).await;
            }
            if let Some(takeover) = action.takeover {
                self.take_over(status, takeover).await;
            }
            unfinished.left.pop_front();
        }
    }

    /// Make an alert's takeover; recorded whether it worked or not.
    async fn take_over(&self, status: &AlertStatus, takeover: TakeoverAction) {
        let by = format!("{}{}", crate::releases::AUTOMATIC_BY, status.rule);
        let why = format!(
            "alert {}: {} {} against threshold {}",
            status.rule,
            status.metric,
            status
                .value
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}")),
            status.threshold
        );
        let plugin = status.plugin.clone().unwrap_or_default();
        let (decision, target, outcome) = match takeover {
            TakeoverAction::PauseTool | TakeoverAction::PausePlugin => {
                let target = match (takeover, &status.tool) {
                    (TakeoverAction::PauseTool, Some(tool)) => format!("{plugin}/{tool}"),
                    _ => plugin.clone(),
                };
                let pause = Pause {
                    target: target.clone(),
                    by: by.clone(),
                    reason: Some(why.clone()),
                    at_ms: crate::mode::now_ms(),
                };
                let outcome = self
                    .pauses
                    .pause(&self.ledger, &pause)
                    .map(|_| ())
                    .map_err(|e| crate::error::chain(&e));
                ("pause", target, outcome)
            }
            TakeoverAction::ReadOnly => {
                let outcome = self
                    .mode
                    .set(&self.ledger, &self.audit, true, &by, Some(&why))
                    .await
                    .map(|_| ())
                    .map_err(|e| crate::error::chain(&e));
                ("read_only", String::new(), outcome)
            }
            // Calls that failed before a version was known (the rollouts
            // unreadable, the store failing to load one) tripped it: a
            // rollback would be aimed at no version, and stop a canary
            // that may be the healthy one. Refused, on the record.
            TakeoverAction::Rollback if status.tool.is_some() && status.version.is_none() => {
                self.alerts.give_back_takeover(status.counted_ms);
                let refused = crate::ReleaseError::NotRollbackTarget {
                    plugin: plugin.clone(),
                    version: "(no version)".to_owned(),
                    why: "the calls that tripped the rule failed before a version was resolved, so no version is known to roll back".to_owned(),
                };
                ("rollback", plugin.clone(), Err(refused.to_string()))
            }
            TakeoverAction::Rollback => {
                let outcome = self
                    .release_parts(&plugin)
                    .rollback(
                        &plugin,
                        &by,
                        Some(&why),
                        true,
                        status.version.as_deref(),
                        None,
                    )
                    .await
                    .map(|_| ())
                    // Rolled back; its own record follows at the plugin's
                    // next change.
                    .or_else(|e| match e {
                        Error::ChangeUnrecorded { .. } => Ok(()),
                        e => Err(e),
                    })
                    .map_err(|e| {
                        if matches!(
                            e,
                            Error::Release(
                                crate::ReleaseError::AlreadyRolledBack { .. }
                                    | crate::ReleaseError::NotRollbackTarget { .. }
                            )
                        ) {
                            self.alerts.give_back_takeover(status.counted_ms);
                        }
                        crate::error::chain(&e)
                    });
                ("rollback", plugin.clone(), outcome)
            }
        };
        let reason = match &outcome {
            Ok(()) => why,
            Err(e) => {
                tracing::error!(rule = %status.rule, takeover = decision, error = %e, "alert takeover failed");
                format!("{why}; failed: {e}")
            }
        };
        record(
            &self.audit,
            takeover_entry(Event::Takeover, decision, &target, &by, Some(&reason)),
        )
        .await;
    }
}

/// `plugin/tool`, `plugin` or nothing: what an alert is about.
fn target_of(status: &AlertStatus) -> String {
    match (&status.plugin, &status.tool) {
        (Some(p), Some(t)) => format!("{p}/{t}"),
        (Some(p), None) => p.clone(),
        _ => String::new(),
    }
}

/// The audit entry of a takeover or its undoing, about `target`.
fn takeover_entry(
    event: Event,
    decision: &str,
    target: &str,
    by: &str,
    reason: Option<&str>,
) -> airlock_audit::Entry {
    let mut entry = airlock_audit::Entry::new(event);
    entry.decision = Some(decision.to_owned());
    entry.principal = Some(by.to_owned());
    match target.split_once('/') {
        Some((plugin, tool)) => {
            entry.plugin = Some(plugin.to_owned());
            entry.tool = Some(tool.to_owned());
        }
        None if !target.is_empty() => entry.plugin = Some(target.to_owned()),
        None => {}
    }
    entry.reason = reason.map(str::to_owned);
    entry
}

/// The wait before attempt `attempt + 1` under `policy`, for a tool of
/// `risk` (`keyed`: the call has an idempotency key), `elapsed` after the
/// first attempt began; `None` when the call may not, or need not, be run
/// again.
fn retry_wait(
    policy: crate::manifest::RetryPolicy,
    risk: crate::manifest::Risk,
    keyed: bool,
    attempt: u32,
    elapsed: std::time::Duration,
) -> Option<std::time::Duration> {
    // Running again cannot repeat an effect: a read, or a keyed call whose
    // key was released by the failure (never run).
    if risk != crate::manifest::Risk::Read && !keyed {
        return None;
    }
    if attempt >= policy.attempts {
        return None;
    }
    let wait = std::time::Duration::from_millis(
        policy
            .backoff_ms
            .saturating_mul(1u64 << (attempt - 1).min(16)),
    );
    (elapsed + wait <= std::time::Duration::from_millis(policy.budget_ms)).then_some(wait)
}

/// The first names of `names`, for a message: a host may keep hundreds.
fn some(names: &[impl AsRef<str>]) -> String {
    const SHOWN: usize = 20;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", and {} more", names.len() - SHOWN));
    }
    text
}

/// Whether loading a version failed for the host's sake — its store
/// unreachable, locked by another process or of another layout — rather
/// than for the version's own (its files or record damaged: `Corrupt`,
/// which one plugin's readiness reports).
pub(crate) fn is_the_hosts(e: &Error) -> bool {
    matches!(e, Error::Store(store) if store.source.kind() != airlock_store::ErrorKind::Corrupt)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{absolute, manifest_name, retry_wait};
    use crate::alerts::{Action, AlertStatus, TakeoverAction};

    #[test]
    fn a_path_not_there_yet_resolves_through_its_existing_ancestor() {
        // As a grant's host path is resolved: a configured directory not
        // created yet, under a symbolic link, must compare equal to it.
        let root = tempfile::tempdir().unwrap();
        let real = root.path().canonicalize().unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(absolute(&link.join("plugins")), real.join("plugins"));
        assert_eq!(
            absolute(&link.join("a/../b/./plugins")),
            real.join("b/plugins")
        );
        std::fs::create_dir(real.join("plugins")).unwrap();
        assert_eq!(absolute(&link.join("plugins")), real.join("plugins"));
    }

    /// Rule `errors` firing on `text/slugify` (no version known), its
    /// `takeover` to make.
    fn firing_on_slugify(takeover: TakeoverAction) -> Action {
        Action {
            status: AlertStatus {
                rule: "errors".into(),
                metric: "error_rate",
                state: "firing",
                plugin: Some("text".into()),
                tool: Some("slugify".into()),
                version: None,
                value: Some(1.0),
                threshold: 0.5,
                fired_ms: 0,
                resolved_ms: None,
                takeover: Some(takeover.as_str().into()),
                host: "test".into(),
                counted_ms: 0,
            },
            takeover: Some(takeover),
            suppressed: false,
        }
    }

    /// An alert fires once, and its takeover was made on the task of the
    /// call that tripped it: a caller that went away midway (its call's
    /// future dropped) left the tool unpaused for good. What it did not
    /// finish is made by the next call to end.
    #[tokio::test]
    async fn a_takeover_stopped_with_its_caller_is_made_by_the_next_call() {
        use crate::alerts::{AlertConfig, AlertMetric, AlertRule};
        let data = tempfile::tempdir().unwrap();
        let alerts = AlertConfig {
            rules: vec![AlertRule::new(
                "errors",
                AlertMetric::ErrorRate,
                Duration::from_secs(60),
                0.5,
            )],
            ..AlertConfig::default()
        };
        let host = super::Host::new(
            super::HostConfig::default()
                .data_dir(data.path())
                .alerts(alerts),
        )
        .unwrap();
        let action = firing_on_slugify(TakeoverAction::PauseTool);
        {
            // Polled once (it waits for the audit log), then dropped.
            let mut acting = std::pin::pin!(host.act(vec![action]));
            tokio::select! {
                biased;
                () = &mut acting => panic!("the action finished at its first poll"),
                () = std::future::ready(()) => {}
            }
        }
        assert!(host.pauses().unwrap().is_empty(), "the takeover was made");
        // Any call that ends, whatever its outcome (no plugin is loaded).
        let ended = host
            .call(crate::CallRequest::new("text/stats", r#"{"text":"a b"}"#))
            .await;
        assert!(ended.is_err());
        let pauses = host.pauses().unwrap();
        assert_eq!(pauses.len(), 1, "{pauses:?}");
        assert_eq!(pauses[0].target, "text/slugify");
    }

    /// An alert whose calls failed before any version was known (the
    /// rollouts unreadable) aimed its rollback at no version: it stopped
    /// whatever canary ran, perhaps the healthy one. Refused, recorded,
    /// and the hourly takeover count given back.
    #[tokio::test]
    async fn a_rollback_takeover_of_an_alert_with_no_version_is_refused() {
        use crate::alerts::{AlertConfig, AlertMetric, AlertRule};
        use airlock_audit::{Event, Filter};
        let data = tempfile::tempdir().unwrap();
        let alerts = AlertConfig {
            rules: vec![
                AlertRule::new(
                    "errors",
                    AlertMetric::ErrorRate,
                    Duration::from_secs(60),
                    0.5,
                )
                .takeover(TakeoverAction::Rollback),
            ],
            ..AlertConfig::default()
        };
        let host = super::Host::new(
            super::HostConfig::default()
                .data_dir(data.path())
                .alerts(alerts),
        )
        .unwrap();
        let action = firing_on_slugify(TakeoverAction::Rollback);
        host.act(vec![action]).await;
        let filter = Filter {
            event: Some(Event::Takeover),
            ..Filter::default()
        };
        let takeovers = host.audit().query(&filter, 10).unwrap();
        assert_eq!(takeovers.len(), 1, "{takeovers:?}");
        let reason = takeovers[0].entry.reason.as_deref().unwrap_or("");
        assert!(
            reason.contains("failed: text (no version) is failing")
                && reason.contains("no version is known"),
            "{reason}"
        );
    }

    /// What names a directory whose load failed: its manifest, read
    /// without waiting on a FIFO put in its place (every release action
    /// of the plugin reads it).
    #[test]
    fn a_failed_directorys_manifest_is_read_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(manifest_name(dir.path()), None);
        let manifest = dir.path().join(crate::manifest::MANIFEST_FILE);
        std::fs::write(&manifest, "not = [toml").unwrap();
        assert_eq!(manifest_name(dir.path()), Some(None));
        let text = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../plugins/text/plugin.toml"
        );
        // The source manifest, pinned as a build pins it.
        let pinned = std::fs::read_to_string(text).unwrap().replacen(
            "component = \"text.wasm\"",
            &format!("component = \"text.wasm\"\nsha256 = \"{}\"", "0".repeat(64)),
            1,
        );
        std::fs::write(&manifest, pinned).unwrap();
        assert_eq!(manifest_name(dir.path()), Some(Some("text".to_owned())));
        #[cfg(unix)]
        {
            std::fs::remove_file(&manifest).unwrap();
            let made = std::process::Command::new("mkfifo")
                .arg(&manifest)
                .status()
                .unwrap();
            assert!(made.success());
            let (done, finished) = std::sync::mpsc::channel();
            let path = dir.path().to_owned();
            std::thread::spawn(move || {
                let _ = done.send(manifest_name(&path));
            });
            assert_eq!(
                finished.recv_timeout(Duration::from_secs(10)),
                Ok(None),
                "a FIFO was waited on"
            );
        }
    }
    use crate::manifest::{RetryPolicy, Risk};

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 3,
        backoff_ms: 100,
        budget_ms: 1000,
    };

    #[test]
    fn retries_back_off_within_attempts_and_budget() {
        let zero = Duration::ZERO;
        assert_eq!(
            retry_wait(POLICY, Risk::Read, false, 1, zero),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            retry_wait(POLICY, Risk::Read, false, 2, zero),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            retry_wait(POLICY, Risk::Read, false, 3, zero),
            None,
            "attempts"
        );
        assert_eq!(
            retry_wait(POLICY, Risk::Read, false, 1, Duration::from_millis(950)),
            None,
            "budget"
        );
    }

    #[test]
    fn only_reads_and_keyed_calls_are_retried() {
        let zero = Duration::ZERO;
        for risk in [Risk::Write, Risk::External, Risk::Irreversible] {
            assert_eq!(retry_wait(POLICY, risk, false, 1, zero), None, "{risk:?}");
            assert!(
                retry_wait(POLICY, risk, true, 1, zero).is_some(),
                "{risk:?}"
            );
        }
    }
}
