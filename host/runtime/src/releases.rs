//! Installed plugin versions and their rollouts, as this host serves them.
//!
//! The versions and rollouts themselves live in the storage seam
//! ([`airlock_store::Releases`] over a `PluginStore`: files in the data
//! directory beside sled, tables shared by every host with PostgreSQL).
//! This module keeps what one host needs to serve them:
//!
//! - each installed version it serves, materialized once from the store's
//!   artifacts into `<data dir>/versions/<plugin>/<version>-<digest>/` and
//!   loaded like any plugin (digest pin, signature, grants, tool list);
//! - the rollouts, re-read at most every [`ROLLOUT_REFRESH`], so a change
//!   made on any host (or by `airlock rollout` beside a running server)
//!   reaches every host within that time;
//! - the rules an operator's change goes through: the version must be
//!   installed; a version asking for more than the one serving (its grant or
//!   a tool's risk, see [`PluginDiff`]) waits for an approver's decision
//!   (an approval of kind `plugin_upgrade`, the same approvers, the same
//!   separation of duties as calls); every change and every lost race is
//!   recorded in the audit log.
//!
//! Step 1 of the pipeline asks [`Served::version_for`] which version a call
//! gets: with a rollout, the serving version, or the canary for the share
//! of callers whose principal (or session) hashes into it
//! ([`airlock_store::canary_bucket`]); without one, the plugin loaded from
//! the plugins directory. A rollout record that cannot be read refuses the
//! calls of its plugin only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use airlock_audit::{AuditLog, Durability, Entry, Event, Filter};
use airlock_store::{
    Approval, ApprovalKind, ApprovalState, Canary, Changed, Installed, InstalledVersion, Releases,
    Rollout, RolloutAction, RolloutChange, Sticky, Transition, VersionFiles, Versioned,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::CompiledCache;
use crate::engine::SharedEngine;
use crate::error::{Error, ReleaseError, Result, Store, StoreError};
use crate::grants::Policy;
use crate::ledger::{ApprovalPolicy, Ledger};
use crate::manifest::MANIFEST_FILE;
use crate::mode::now_ms;
use crate::package::{self, CASES_FILE, Package, SIGNATURE_FILE};
use crate::plugin::{self, Plugin};

/// How long a host serves the rollouts it read before reading them again.
pub const ROLLOUT_REFRESH: Duration = Duration::from_secs(1);
/// The directory of materialized versions inside the data directory.
pub const VERSIONS_DIR: &str = "versions";

/// What [`Host::install`](crate::Host::install) did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The installed version.
    pub version: InstalledVersion,
    /// `false` when these very files were installed before.
    pub new: bool,
}

/// An operator's change of a plugin's rollout
/// ([`Host::set_rollout`](crate::Host::set_rollout)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolloutRequest {
    /// The plugin.
    pub plugin: String,
    /// The installed version to send traffic to.
    pub version: String,
    /// Its share of callers: 100 makes it the serving version; less makes
    /// it a canary beside the serving one.
    pub percent: u32,
    /// What keeps a caller on one side of a canary.
    pub sticky: Sticky,
    /// Who asks (recorded; an approval for a wider version is theirs).
    pub by: String,
    /// Why.
    pub reason: Option<String>,
    /// An approver's approval for a version wider than the serving one.
    pub approval_id: Option<String>,
}

impl RolloutRequest {
    /// Send `percent` of `plugin`'s callers to `version`, asked by `by`.
    pub fn new(
        plugin: impl Into<String>,
        version: impl Into<String>,
        percent: u32,
        by: impl Into<String>,
    ) -> RolloutRequest {
        RolloutRequest {
            plugin: plugin.into(),
            version: version.into(),
            percent,
            sticky: Sticky::Principal,
            by: by.into(),
            reason: None,
            approval_id: None,
        }
    }

    /// Keep callers on one side by `sticky`.
    pub fn sticky(mut self, sticky: Sticky) -> RolloutRequest {
        self.sticky = sticky;
        self
    }

    /// Say why.
    pub fn reason(mut self, reason: impl Into<String>) -> RolloutRequest {
        self.reason = Some(reason.into());
        self
    }

    /// Use approval `id` for a wider version.
    pub fn approval(mut self, id: impl Into<String>) -> RolloutRequest {
        self.approval_id = Some(id.into());
        self
    }
}

/// How one version did during a rollout
/// ([`Host::rollout_status`](crate::Host::rollout_status)).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct VersionStats {
    /// The version.
    pub version: String,
    /// Its role: `serving` or `canary`.
    pub role: String,
    /// Calls that finished.
    pub calls: u64,
    /// Of those, how many did not end `ok`.
    pub errors: u64,
    /// `errors / calls` (0 without calls).
    pub error_rate: f64,
    /// Median wall time, microseconds.
    pub p50_us: u64,
    /// 99th percentile wall time, microseconds.
    pub p99_us: u64,
    /// Mean fuel per call.
    pub mean_fuel: u64,
}

/// A plugin's rollout and how its versions did since it last changed.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The rollout.
    pub rollout: Rollout,
    /// Since when the figures count, ms since the Unix epoch.
    pub since_ms: u64,
    /// One entry per version receiving traffic.
    pub versions: Vec<VersionStats>,
    /// Whether the figures came from fewer records than exist (the newest
    /// records were read).
    pub truncated: bool,
}

/// Most outcome records `rollout status` reads.
const STATUS_RECORDS: usize = 200_000;

/// Rollouts by plugin, as read at once.
type RolloutTable = Arc<BTreeMap<String, Rollout>>;

/// The rollouts as routing reads them ([`Served::routes`]).
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Every rollout that reads, by plugin.
    pub(crate) rollouts: RolloutTable,
    /// Plugins whose rollout record cannot be read, with why: their calls
    /// are refused (where they should go is not known).
    pub(crate) unreadable: BTreeMap<String, String>,
    /// Why the rollouts could not be listed at once, when they were read
    /// record by record: `rollouts` holds those of the plugins the store
    /// named as having a record.
    pub(crate) partial: Option<String>,
}

impl Routes {
    /// Refuse `plugin` when its rollout record cannot be read.
    pub(crate) fn check_readable(&self, plugin: &str) -> std::result::Result<(), StoreError> {
        match self.unreadable.get(plugin) {
            Some(why) => Err(corrupt_rollout(format!(
                "the rollout of `{plugin}` cannot be read: {why}"
            ))),
            None => Ok(()),
        }
    }
}

/// Every rollout that can be read, and each plugin whose record cannot
/// ([`Host::rollout_listing`](crate::Host::rollout_listing)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RolloutListing {
    /// The rollouts read, by plugin name.
    pub rollouts: Vec<Rollout>,
    /// Plugins whose rollout record cannot be read: their calls are
    /// refused until it is restored or removed.
    pub unreadable: Vec<UnreadableRollout>,
    /// Why the store could not list the rollouts at once, when it could
    /// not: they were then read one by one, for every plugin the store
    /// names as having a rollout record.
    pub partial: Option<String>,
}

/// A plugin whose rollout record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UnreadableRollout {
    /// The plugin.
    pub plugin: String,
    /// Why (the record's store error, which names it).
    pub error: String,
}

/// Every installed version whose record can be read, and each whose
/// record cannot ([`Host::installed_listing`](crate::Host::installed_listing)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InstalledListing {
    /// The versions read, by plugin, then install time.
    pub versions: Vec<InstalledVersion>,
    /// Versions whose record cannot be read, by plugin and version.
    pub unreadable: Vec<UnreadableVersion>,
    /// Why the store could not list the versions at once, when it could
    /// not: they were then read one by one, for every version the store
    /// names.
    pub partial: Option<String>,
}

/// An installed version whose record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UnreadableVersion {
    /// The plugin.
    pub plugin: String,
    /// The version.
    pub version: String,
    /// Why (the record's store error, which names it).
    pub error: String,
}

/// Records read one by one, after the store failed to list them at once.
struct OneByOne<K, V> {
    /// Those that read as themselves.
    found: Vec<(K, V)>,
    /// Those that did not, with why.
    unreadable: Vec<(K, String)>,
}

/// Read the record of each of `keys` with `read`, keeping those that read
/// as themselves (`not_itself` says why one does not: a record naming
/// another) and naming the rest. A failure of the store's own kind
/// (unreachable, of another layout, permission denied: anything but a
/// damaged record) on every record is the store's and fails the whole; on
/// some records only (one file unreadable, say) it is theirs.
fn read_one_by_one<K, V>(
    keys: impl IntoIterator<Item = K>,
    mut read: impl FnMut(&K) -> std::result::Result<Option<V>, airlock_store::StoreError>,
    not_itself: impl Fn(&K, &V) -> Option<String>,
) -> std::result::Result<OneByOne<K, V>, airlock_store::StoreError> {
    let mut out = OneByOne {
        found: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut store_failure = None;
    let mut read_any = false;
    for key in keys {
        match read(&key) {
            Ok(Some(record)) => {
                read_any = true;
                match not_itself(&key, &record) {
                    None => out.found.push((key, record)),
                    Some(why) => out.unreadable.push((key, why)),
                }
            }
            Ok(None) => read_any = true,
            Err(e) => {
                // A damaged record was read: only the store's own kinds
                // are left in `store_failure` when nothing was.
                if e.kind() == airlock_store::ErrorKind::Corrupt {
                    read_any = true;
                }
                out.unreadable.push((key, crate::error::chain(&e)));
                store_failure.get_or_insert(e);
            }
        }
    }
    match store_failure {
        Some(e) if !read_any => Err(e),
        _ => Ok(out),
    }
}

/// The installed versions (of `plugin` only, if given) in `releases`, as
/// far as their records can be read: when the store cannot list them at
/// once (one damaged record fails that), each version it names is read on
/// its own.
///
/// # Errors
/// The store's, when it can list neither the versions nor their names, or,
/// reading them one by one, reads none for a failure of its own (anything
/// but a damaged record).
pub(crate) fn installed_listing(
    releases: &Releases,
    plugin: Option<&str>,
) -> std::result::Result<InstalledListing, StoreError> {
    // A name no plugin can have has no versions (the file store refuses
    // to look; the others find none).
    if plugin.is_some_and(|p| airlock_store::check_plugin_name(p).is_err()) {
        return Ok(InstalledListing::default());
    }
    let all = match releases.versions(plugin) {
        Ok(versions) => {
            return Ok(InstalledListing {
                versions,
                ..InstalledListing::default()
            });
        }
        Err(all) => all,
    };
    let Ok(names) = releases.version_names(plugin) else {
        return Err(StoreError::new(Store::Plugins, all));
    };
    let mut listing = InstalledListing {
        partial: Some(crate::error::chain(&all)),
        ..InstalledListing::default()
    };
    // A row of a name no version can have (edited in the database) would
    // read as none: named instead.
    let (names, impossible): (Vec<_>, Vec<_>) = names.into_iter().partition(|(plugin, version)| {
        airlock_store::check_plugin_name(plugin).is_ok()
            && airlock_store::check_version(version).is_ok()
    });
    let read = read_one_by_one(
        names,
        |(plugin, version)| releases.version(plugin, version),
        // Listed under its own names only: a record naming another version
        // would be listed twice, or as one that is not there.
        |(plugin, version), record: &InstalledVersion| {
            (record.plugin != *plugin || record.version != *version).then(|| {
                format!(
                    "the record names version {} of plugin `{}`",
                    record.version, record.plugin
                )
            })
        },
    )
    .map_err(|e| StoreError::new(Store::Plugins, e))?;
    listing.versions = read.found.into_iter().map(|(_, record)| record).collect();
    let impossible = impossible.into_iter().map(|name| {
        let why = "not a plugin name and version an installed version can have";
        (name, why.to_owned())
    });
    listing.unreadable = read
        .unreadable
        .into_iter()
        .chain(impossible)
        .map(|((plugin, version), error)| UnreadableVersion {
            plugin,
            version,
            error,
        })
        .collect();
    listing
        .unreadable
        .sort_by(|a, b| (&a.plugin, &a.version).cmp(&(&b.plugin, &b.version)));
    listing.versions.sort_by(|a, b| {
        (a.plugin.as_str(), a.installed_ms, a.version.as_str()).cmp(&(
            b.plugin.as_str(),
            b.installed_ms,
            b.version.as_str(),
        ))
    });
    Ok(listing)
}

/// What [`Served::prepare`] saw last: the serving version of each plugin,
/// and the versions that failed to load (warned about once).
#[derive(Debug, Default)]
struct Prepared {
    serving: BTreeMap<String, String>,
    failed: std::collections::BTreeSet<(String, String)>,
}

/// The parts of a host the release rules use, borrowed.
pub(crate) struct ReleaseParts<'h> {
    pub(crate) served: &'h Served,
    pub(crate) engine: &'h SharedEngine,
    pub(crate) cache: Option<&'h CompiledCache>,
    pub(crate) policy: &'h Policy,
    pub(crate) audit: &'h AuditLog,
    pub(crate) ledger: &'h Ledger,
    /// The plugin of this name loaded from the plugins directory, if any.
    pub(crate) dev_plugin: Option<Arc<Plugin>>,
    /// With none loaded: the plugins directory's directory of this name
    /// that failed to load, if one still names it.
    pub(crate) dev_unloaded: Option<PathBuf>,
}

/// How long a version that did not load is refused before it is tried
/// again ([`Served::load`]).
pub(crate) const LOAD_RETRY: Duration = Duration::from_secs(30);

/// Why a version did not load, kept for [`LOAD_RETRY`]: what it was
/// refused with, and, for a store's failure, which store and of what kind,
/// so that a refusal from the kept failure is the same error as the first
/// (a readiness report tells the host's store failing from one plugin's
/// damaged copy by the kind).
struct Failed {
    why: String,
    store: Option<(Store, airlock_store::ErrorKind)>,
}

impl Failed {
    fn new(e: &Error) -> Failed {
        match e {
            Error::Store(e) => Failed {
                why: e.source.chain(),
                store: Some((e.store, e.source.kind())),
            },
            e => Failed {
                why: crate::error::chain(e),
                store: None,
            },
        }
    }

    /// The refusal of a call routed to the version while it is kept.
    fn refusal(&self) -> Error {
        let message = format!(
            "{} (tried again {} s after it failed)",
            self.why,
            LOAD_RETRY.as_secs()
        );
        match self.store {
            Some((store, kind)) => Error::Store(StoreError::new(
                store,
                airlock_store::StoreError::new(kind, message),
            )),
            None => Error::Config { message },
        }
    }
}

/// What one host keeps to serve installed versions.
pub(crate) struct Served {
    releases: Releases,
    /// Installed versions loaded here, by plugin and version.
    loaded: RwLock<BTreeMap<(String, String), Arc<Plugin>>>,
    /// The rollouts as last read, and when.
    rollouts: Mutex<Option<(Instant, Arc<Routes>)>>,
    /// One materialization and load at a time.
    loading: tokio::sync::Mutex<()>,
    /// Versions that did not load here, with when and why: calls routed
    /// to one are refused with that reason for [`LOAD_RETRY`] before it is
    /// tried again (each call tried it anew — a read, a hash, a compile
    /// and the guest's `list` under the load lock, before any rate limit).
    failed: Mutex<HashMap<(String, String), (Instant, Failed)>>,
    /// One rollout change at a time (`ReleaseParts::commit`).
    changing: tokio::sync::Mutex<()>,
    /// Where versions are materialized.
    dir: PathBuf,
    /// What the last [`Served::prepare`] saw.
    prepared: Mutex<Prepared>,
    /// Removes `dir` with the host when it is temporary.
    _temporary: Option<tempfile::TempDir>,
    /// The host's own directories and its configured plugins
    /// directories, which no version's `files` grant may reach, and its
    /// plugins directory's plugins, whose code and grants no version's may
    /// either (`crate::host::check_files_grants`).
    stores: crate::host::Reserved,
    directory: crate::host::PluginTable,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// `plugin` is a name a plugin can have ([`check_plugin_name`](airlock_store::check_plugin_name)).
fn check_name(plugin: &str) -> Result<()> {
    airlock_store::check_plugin_name(plugin)
        .map_err(|message| ReleaseError::InvalidPluginName { message }.into())
}

/// The store (or the copy of it served from disk) holds what it must
/// not: `message` says what.
fn corrupt(message: impl Into<String>) -> Error {
    store_error(airlock_store::StoreError::new(
        airlock_store::ErrorKind::Corrupt,
        message,
    ))
}

fn store_error(e: airlock_store::StoreError) -> Error {
    Error::Store(StoreError::new(Store::Plugins, e))
}

impl Served {
    /// Serve the versions kept in `releases`, materializing them under
    /// `data_dir/versions` (a temporary directory without one).
    pub(crate) fn new(
        releases: Releases,
        data_dir: Option<&Path>,
        stores: crate::host::Reserved,
        directory: crate::host::PluginTable,
    ) -> Result<Served> {
        let (dir, temporary) = match data_dir {
            Some(dir) => (dir.join(VERSIONS_DIR), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("airlock-versions-")
                    .tempdir()
                    .map_err(|e| Error::io(std::env::temp_dir(), e))?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        Ok(Served {
            releases,
            loaded: RwLock::default(),
            rollouts: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            failed: Mutex::default(),
            changing: tokio::sync::Mutex::new(()),
            dir,
            prepared: Mutex::default(),
            _temporary: temporary,
            stores,
            directory,
        })
    }

    /// What no `files` grant may reach by the host's configuration,
    /// resolved once when the host started: every load checks against the
    /// same paths.
    pub(crate) fn reserved(&self) -> &crate::host::Reserved {
        &self.stores
    }

    /// Refuse a version whose `files` grants reach the host's own
    /// directories, a plugin's code, or another plugin's grants — of the
    /// plugins directory or of a version served here — as a plugin of the
    /// plugins directory is refused.
    fn check_grants(&self, version: &Plugin) -> Result<()> {
        // Locks in the order every load takes them: the plugins
        // directory's table, then the versions loaded here.
        let directory = self.directory.read();
        let served = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        crate::host::check_files_grants(
            version,
            &self.stores,
            directory.values().chain(served.values()).map(|p| &**p),
        )?;
        Ok(())
    }

    /// Check `version`'s grants and keep it as loaded, under the same
    /// locks: a directory plugin or another version loading meanwhile is
    /// checked against it, or it against them.
    fn keep(&self, version: Plugin) -> Result<Arc<Plugin>> {
        let directory = self.directory.read();
        let mut served = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        crate::host::check_files_grants(
            &version,
            &self.stores,
            directory.values().chain(served.values()).map(|p| &**p),
        )?;
        let version = Arc::new(version);
        served.insert(
            (version.name().to_owned(), version.version().to_owned()),
            Arc::clone(&version),
        );
        Ok(version)
    }

    /// Whether a plugin of this name serves here: from the plugins
    /// directory, an installed version loaded here, or a rollout last read
    /// (no store read: a version that failed to load still counts).
    pub(crate) fn knows(&self, plugin: &str) -> bool {
        self.directory.read().contains_key(plugin)
            || self
                .loaded
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .any(|(name, _)| name == plugin)
            || self
                .rollouts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|(_, table)| {
                    table.rollouts.contains_key(plugin) || table.unreadable.contains_key(plugin)
                })
    }

    /// Every installed version loaded here, of every plugin.
    pub(crate) fn all_loaded(&self) -> Vec<Arc<Plugin>> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn releases(&self) -> &Releases {
        &self.releases
    }

    /// Every rollout that can be read, and the plugins whose record
    /// cannot, from [`routes`](Self::routes).
    ///
    /// # Errors
    /// The store's, when it can list neither the rollouts nor the names of
    /// the plugins with one, or read none of those records for its own
    /// failure.
    pub(crate) fn rollout_listing(&self) -> std::result::Result<RolloutListing, StoreError> {
        let routes = self.routes()?;
        Ok(RolloutListing {
            rollouts: routes.rollouts.values().cloned().collect(),
            unreadable: routes
                .unreadable
                .iter()
                .map(|(plugin, error)| UnreadableRollout {
                    plugin: plugin.clone(),
                    error: error.clone(),
                })
                .collect(),
            partial: routes.partial.clone(),
        })
    }

    /// Every rollout, read again when older than [`ROLLOUT_REFRESH`].
    ///
    /// # Errors
    /// The store's, or a corrupt record's (naming each plugin whose
    /// record cannot be read).
    pub(crate) fn rollouts(&self) -> std::result::Result<RolloutTable, StoreError> {
        let routes = self.routes()?;
        let Some(listing) = &routes.partial else {
            return Ok(Arc::clone(&routes.rollouts));
        };
        let mut which: Vec<String> = routes
            .unreadable
            .iter()
            .map(|(plugin, why)| format!("{plugin}: {why}"))
            .collect();
        if which.is_empty() {
            which.push(listing.clone());
        }
        Err(corrupt_rollout(format!(
            "rollout records that cannot be read: {}",
            which.join("; ")
        )))
    }

    /// The rollouts as routing uses them, read again when older than
    /// [`ROLLOUT_REFRESH`]: when some record cannot be read (edited on
    /// disk, a corrupt row), the others still route their plugins' calls
    /// and that plugin's are refused — one record does not stop every
    /// call of the host.
    ///
    /// # Errors
    /// The store's, when it can list neither the rollouts nor the names of
    /// the plugins with one (it is down, say), or, reading them one by
    /// one, reads none for a failure of its own (anything but a damaged
    /// record: unreachable, of another layout).
    pub(crate) fn routes(&self) -> std::result::Result<Arc<Routes>, StoreError> {
        let mut cached = self.rollouts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, routes)) = &*cached
            && at.elapsed() < ROLLOUT_REFRESH
        {
            return Ok(Arc::clone(routes));
        }
        let routes = match self.releases.rollouts() {
            Ok(all) => Routes {
                rollouts: Arc::new(
                    all.into_iter()
                        .map(|r| (r.value.plugin.clone(), r.value))
                        .collect(),
                ),
                ..Routes::default()
            },
            Err(all) => self.routes_one_by_one(all)?,
        };
        let unreadable_before: Vec<&String> = cached
            .as_ref()
            .map(|(_, r)| r.unreadable.keys().collect())
            .unwrap_or_default();
        let partial_before = cached.as_ref().is_some_and(|(_, r)| r.partial.is_some());
        if unreadable_before != routes.unreadable.keys().collect::<Vec<_>>() {
            for (plugin, why) in &routes.unreadable {
                tracing::warn!(plugin, error = %why, "its rollout record cannot be read: its calls are refused");
            }
        }
        if let Some(why) = &routes.partial
            && !partial_before
        {
            tracing::warn!(error = %why, "the rollouts cannot be listed: read one by one, for each plugin with a record");
        }
        let routes = Arc::new(routes);
        *cached = Some((Instant::now(), Arc::clone(&routes)));
        Ok(routes)
    }

    /// The rollouts read record by record, for every plugin with a
    /// record (named by the store without reading it), after listing them
    /// all failed with `all`.
    fn routes_one_by_one(
        &self,
        all: airlock_store::StoreError,
    ) -> std::result::Result<Routes, StoreError> {
        // Not from the installed versions: one version record that cannot
        // be read, or a stray file among them, would fail that listing too,
        // and every plugin's calls with it.
        let Ok(names) = self.releases.rollout_names() else {
            return Err(StoreError::new(Store::Plugins, all));
        };
        let mut routes = Routes {
            partial: Some(crate::error::chain(&all)),
            ..Routes::default()
        };
        // A name no call can have (a damaged row's) routes nothing.
        let names = names
            .into_iter()
            .filter(|n| airlock_store::check_plugin_name(n).is_ok());
        // A failure of the store's kind on some records is theirs: their
        // plugins' calls are refused, the others' routed.
        let read = read_one_by_one(
            names,
            |name| self.releases.rollout(name),
            |name, record| {
                (record.value.plugin != *name)
                    .then(|| format!("the record names plugin `{}`", record.value.plugin))
            },
        )
        .map_err(|e| StoreError::new(Store::Plugins, e))?;
        let rollouts: BTreeMap<_, _> = read
            .found
            .into_iter()
            .map(|(name, record)| (name, record.value))
            .collect();
        routes.unreadable = read.unreadable.into_iter().collect();
        routes.rollouts = Arc::new(rollouts);
        Ok(routes)
    }

    /// The version a call of `plugin` by `principal` (in `session`) is
    /// routed to by the rollout as stored now, not as last read (for a
    /// check made once in a long while: a store read).
    pub(crate) fn version_for_now(
        &self,
        plugin: &str,
        principal: &str,
        session: Option<&str>,
    ) -> std::result::Result<Option<String>, StoreError> {
        let rollout = self
            .releases
            .rollout(plugin)
            .map_err(|e| StoreError::new(Store::Plugins, e))?;
        match rollout {
            Some(r) if r.value.plugin != plugin => Err(StoreError::new(
                Store::Plugins,
                airlock_store::StoreError::new(
                    airlock_store::ErrorKind::Corrupt,
                    format!(
                        "the rollout record of {plugin} names plugin {}",
                        r.value.plugin
                    ),
                ),
            )),
            Some(r) => Ok(Some(r.value.version_for(principal, session).to_owned())),
            None => Ok(None),
        }
    }

    /// The version a call of `plugin` by `principal` (in `session`) is
    /// routed to: `None` when no rollout names the plugin. From
    /// [`routes`](Self::routes): a plugin whose rollout record cannot be
    /// read has its calls refused, the others are routed.
    pub(crate) fn version_for(
        &self,
        plugin: &str,
        principal: &str,
        session: Option<&str>,
    ) -> std::result::Result<Option<String>, StoreError> {
        let routes = self.routes()?;
        routes.check_readable(plugin)?;
        // Read record by record, the rollouts are those of every plugin
        // with a record when they were read: no other plugin has one, until
        // the next read.
        Ok(Self::route(&routes.rollouts, plugin, principal, session).map(str::to_owned))
    }

    /// The rollout of `plugin`, from [`routes`](Self::routes): `None`
    /// when no rollout names it.
    ///
    /// # Errors
    /// The store's; a corrupt record's when `plugin`'s own record cannot
    /// be read (another plugin's does not matter).
    pub(crate) fn rollout_of(
        &self,
        plugin: &str,
    ) -> std::result::Result<Option<Rollout>, StoreError> {
        let routes = self.routes()?;
        routes.check_readable(plugin)?;
        Ok(routes.rollouts.get(plugin).cloned())
    }

    /// What served each plugin with a rollout when
    /// [`prepare`](Self::prepare) last read them: plugin and version.
    pub(crate) fn last_serving(&self) -> Vec<(String, String)> {
        self.prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serving
            .iter()
            .map(|(plugin, version)| (plugin.clone(), version.clone()))
            .collect()
    }

    /// Forget the rollouts read, so the next call reads them (after a
    /// change made here).
    fn invalidate(&self) {
        *self.rollouts.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The loaded installed version, if loaded here.
    pub(crate) fn loaded(&self, plugin: &str, version: &str) -> Option<Arc<Plugin>> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(plugin.to_owned(), version.to_owned()))
            .cloned()
    }

    /// Load every version a rollout sends traffic to, so no call waits
    /// for a compile. `Ok(true)` when what serves some plugin changed since
    /// the last time (the tool list may have changed). A version that does
    /// not load is warned about once; calls routed to it are refused.
    pub(crate) async fn prepare(
        &self,
        engine: &SharedEngine,
        cache: Option<&CompiledCache>,
        policy: &Policy,
    ) -> std::result::Result<bool, StoreError> {
        let routes = self.routes()?;
        for rollout in routes.rollouts.values() {
            for version in rollout.versions() {
                if self.loaded(&rollout.plugin, version).is_some() {
                    continue;
                }
                if let Err(error) = self
                    .load(engine, cache, policy, &rollout.plugin, version)
                    .await
                {
                    let key = (rollout.plugin.clone(), version.to_owned());
                    let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
                    if prepared.failed.insert(key) {
                        tracing::warn!(plugin = %rollout.plugin, version, error = %crate::error::chain(&error), "installed version does not load: calls routed to it are refused");
                    }
                }
            }
        }
        // A plugin whose record cannot be read serves nothing (its calls
        // are refused).
        let serving: BTreeMap<String, String> = routes
            .rollouts
            .iter()
            .map(|(plugin, r)| (plugin.clone(), r.serving.clone()))
            .chain(
                routes
                    .unreadable
                    .keys()
                    .map(|plugin| (plugin.clone(), String::new())),
            )
            .collect();
        let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = prepared.serving != serving;
        prepared.serving = serving;
        Ok(changed)
    }

    /// Installed version `version` of `plugin`, loaded (materialized and
    /// loaded on first use).
    pub(crate) async fn load(
        &self,
        engine: &SharedEngine,
        cache: Option<&CompiledCache>,
        policy: &Policy,
        plugin: &str,
        version: &str,
    ) -> Result<Arc<Plugin>> {
        if let Some(loaded) = self.loaded(plugin, version) {
            return Ok(loaded);
        }
        let key = (plugin.to_owned(), version.to_owned());
        let recent_failure = || {
            let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            failed
                .get(&key)
                .filter(|(at, _)| at.elapsed() < LOAD_RETRY)
                .map(|(_, failure)| failure.refusal())
        };
        if let Some(refused) = recent_failure() {
            return Err(refused);
        }
        let _one = self.loading.lock().await;
        if let Some(loaded) = self.loaded(plugin, version) {
            return Ok(loaded);
        }
        // Callers queued behind a load that just failed.
        if let Some(refused) = recent_failure() {
            return Err(refused);
        }
        let loaded = self.load_now(engine, cache, policy, plugin, version).await;
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        match &loaded {
            Ok(_) => {
                failed.remove(&key);
            }
            // The store's own failure (unreachable, locked, of another
            // layout, misconfigured) is not the version's, and may be
            // mended by the next call: only a damaged record or copy
            // (`Corrupt`) and the version's own faults are kept.
            Err(Error::Store(e)) if e.source.kind() != airlock_store::ErrorKind::Corrupt => {}
            Err(e) => {
                failed.insert(key, (Instant::now(), Failed::new(e)));
            }
        }
        loaded
    }

    /// [`load`](Self::load)'s work, under its lock.
    async fn load_now(
        &self,
        engine: &SharedEngine,
        cache: Option<&CompiledCache>,
        policy: &Policy,
        plugin: &str,
        version: &str,
    ) -> Result<Arc<Plugin>> {
        let installed = self
            .releases
            .version(plugin, version)
            .map_err(store_error)?
            .ok_or_else(|| ReleaseError::NotInstalled {
                plugin: plugin.to_owned(),
                version: version.to_owned(),
            })?;
        if installed.plugin != plugin || installed.version != version {
            return Err(corrupt(format!(
                "the store's record for {plugin} {version} names {} {}",
                installed.plugin, installed.version
            )));
        }
        let dir = self.materialize(&installed)?;
        let loaded = plugin::load(engine, cache, policy, &dir).await?;
        // Checked again on what was loaded: the copy's manifest may have
        // changed since `materialize` checked it.
        if loaded.manifest_digest() != installed.manifest_digest {
            return Err(corrupt(format!(
                "{} of installed {} {} changed while it loaded (sha256 {}): remove {} and it is written again from the store",
                dir.join(MANIFEST_FILE).display(),
                installed.plugin,
                installed.version,
                loaded.manifest_digest(),
                dir.display()
            )));
        }
        if loaded.name() != installed.plugin || loaded.version() != installed.version {
            return Err(corrupt(format!(
                "installed {} {} holds a manifest of {} {}",
                installed.plugin,
                installed.version,
                loaded.name(),
                loaded.version()
            )));
        }
        self.keep(loaded)
    }

    /// Write the files of `installed` into its own directory (once: a
    /// directory already there is used once [`check_materialized`] finds
    /// it holds the installed files; loading then checks the component's
    /// pin, and the caller the manifest it loaded).
    fn materialize(&self, installed: &InstalledVersion) -> Result<PathBuf> {
        let short = installed.component_digest.get(..16).unwrap_or("");
        // Each becomes a path component under the releases directory: a
        // record that would name anything else (`..`, a separator) is
        // refused rather than written outside it.
        for (what, part) in [
            ("plugin", installed.plugin.as_str()),
            ("version", installed.version.as_str()),
            ("component digest", short),
        ] {
            if !is_path_component(part) {
                return Err(corrupt(format!(
                    "an installed version's {what} {part:?} cannot name a directory"
                )));
            }
        }
        let parent = self.dir.join(&installed.plugin);
        let dir = parent.join(format!("{}-{short}", installed.version));
        let manifest = dir.join(MANIFEST_FILE);
        match std::fs::metadata(&manifest) {
            Ok(_) => {
                check_materialized(&dir, installed)?;
                return Ok(dir);
            }
            // A copy is renamed into place whole: a directory without its
            // manifest was cut short by hand, and would not be replaced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&dir).is_ok() {
                    return Err(corrupt(format!(
                        "{} of installed {} {} holds no {MANIFEST_FILE}: remove it and it is written again from the store",
                        dir.display(),
                        installed.plugin,
                        installed.version
                    )));
                }
            }
            Err(e) => return Err(Error::io(&manifest, e)),
        }
        airlock_store::file::create_private_dir(&parent).map_err(|e| Error::io(&parent, e))?;
        let temp = tempfile::Builder::new()
            .prefix(".materializing-")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        write_version(&self.releases, installed, temp.path())?;
        let temp = temp.keep();
        match std::fs::rename(&temp, &dir) {
            Ok(()) => {
                airlock_store::file::sync_dir(&parent).map_err(|e| Error::io(&parent, e))?;
                Ok(dir)
            }
            // Another process materialized it first: use theirs, checked
            // as any copy found there is.
            Err(_) if dir.join(MANIFEST_FILE).is_file() => {
                let _ = std::fs::remove_dir_all(&temp);
                check_materialized(&dir, installed)?;
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&temp);
                Err(Error::io(&dir, e))
            }
        }
    }

    /// The version a call of `plugin` by `principal` (in `session`) gets:
    /// `None` when no rollout names the plugin (the plugins directory's
    /// plugin serves).
    pub(crate) fn route<'r>(
        rollouts: &'r BTreeMap<String, Rollout>,
        plugin: &str,
        principal: &str,
        session: Option<&str>,
    ) -> Option<&'r str> {
        rollouts
            .get(plugin)
            .map(|r| r.version_for(principal, session))
    }
}

/// How an alert's takeover names itself as the maker of a change
/// (`alert:<rule>`).
pub(crate) const AUTOMATIC_BY: &str = "alert:";

/// Longest `by` of an install or a rollout change.
pub const MAX_CHANGE_BY_BYTES: usize = 256;
/// Longest reason of a rollout change.
pub const MAX_CHANGE_REASON_BYTES: usize = 1024;

/// Refuses who and why of a lifecycle change over their bounds (or with
/// control characters in who), before anything is stored: every host reads
/// a rollout on every call's routing, and a record the store refuses to
/// read back (the file store caps one at 1 MiB) would stop them all.
fn check_change_text(by: &str, reason: Option<&str>) -> Result<()> {
    if by.len() > MAX_CHANGE_BY_BYTES || by.chars().any(char::is_control) {
        return Err(Error::Config {
            message: format!(
                "who makes a change is at most {MAX_CHANGE_BY_BYTES} bytes without control characters ({} given)",
                by.len()
            ),
        });
    }
    if let Some(reason) = reason
        && reason.len() > MAX_CHANGE_REASON_BYTES
    {
        return Err(Error::Config {
            message: format!(
                "a change's reason is at most {MAX_CHANGE_REASON_BYTES} bytes ({} given)",
                reason.len()
            ),
        });
    }
    Ok(())
}

impl ReleaseParts<'_> {
    /// Install `package` (see [`Host::install`](crate::Host::install)).
    pub(crate) async fn install(&self, package: &Package, by: &str) -> Result<InstallReport> {
        check_change_text(by, None)?;
        let signature = package.signature().map(|s| s.to_text());
        let files = VersionFiles {
            manifest: package.manifest_text().as_bytes(),
            component: package.component(),
            component_file: package.component_name(),
            cases: package.cases().map(str::as_bytes),
            signature: signature.as_deref().map(str::as_bytes),
        };
        // A version taken by other files, or a name the store refuses, is
        // refused before the package is compiled and its guest run.
        self.served
            .releases
            .check_install(package.name(), package.version(), files)
            .map_err(store_error)?;
        // Check exactly the bytes to be installed, from a private copy:
        // everything load checks (digest pin, signature, component, world,
        // tools, grants against the policy).
        let scratch = tempfile::Builder::new()
            .prefix("airlock-install-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let dir = scratch.path().join(package.name());
        package.write_dir(&dir)?;
        let checked = plugin::load(self.engine, self.cache, self.policy, &dir).await?;
        self.served.check_grants(&checked)?;
        let signer = checked.signer().map(ToString::to_string);
        let report = match self
            .served
            .releases
            .install(
                package.name(),
                package.version(),
                files,
                signer.as_deref(),
                by,
                now_ms(),
            )
            .map_err(store_error)?
        {
            Installed::New(version) => InstallReport { version, new: true },
            Installed::Already(version) => InstallReport {
                version,
                new: false,
            },
        };
        // Recorded once it is stored, and marked recorded after: a version
        // stored whose record failed (the audit log refused, the process
        // ended before its queued record was written) is recorded when it
        // is installed again, instead of never (at least once: a record
        // that was only late may then be there twice).
        let installed = &report.version;
        let marker = format!(
            "install_recorded/{}/{}",
            installed.plugin, installed.version
        );
        let recorded = if report.new {
            None
        } else {
            self.ledger.meta(&marker).map_err(ledger_error)?
        };
        if recorded.as_deref() != Some(installed.component_digest.as_str()) {
            let mut entry = Entry::new(Event::PluginInstalled);
            entry.principal = Some(installed.installed_by.clone());
            entry.plugin = Some(installed.plugin.clone());
            entry.plugin_version = Some(installed.version.clone());
            entry.component_digest = Some(installed.component_digest.clone());
            entry.manifest_digest = Some(installed.manifest_digest.clone());
            let signed = installed.signer.as_ref().map(|s| format!("signed by {s}"));
            entry.reason = if report.new {
                signed
            } else {
                Some(format!(
                    "installed at {} ms since the Unix epoch and recorded now, when {by} installed it again: no record of it was marked written{}",
                    installed.installed_ms,
                    signed.map(|s| format!("; {s}")).unwrap_or_default()
                ))
            };
            self.record(entry).await?;
            self.ledger
                .set_meta(&marker, &installed.component_digest)
                .map_err(ledger_error)?;
        }
        Ok(report)
    }

    async fn record(&self, entry: Entry) -> Result<()> {
        crate::audit::append(self.audit, &entry, Durability::Flushed)
            .await
            .map_err(Error::AuditUnavailable)?;
        Ok(())
    }

    async fn load(&self, plugin: &str, version: &str) -> Result<Arc<Plugin>> {
        self.served
            .load(self.engine, self.cache, self.policy, plugin, version)
            .await
    }

    /// The rollout of `plugin` as stored now.
    /// The rollout of `plugin`, if it has one; every release action reads
    /// it first, so a name no plugin can have is refused here, as the
    /// operator's mistake rather than the store's failure.
    fn current(&self, plugin: &str) -> Result<Option<Versioned<Rollout>>> {
        check_name(plugin)?;
        self.served.releases.rollout(plugin).map_err(store_error)
    }

    /// Change the rollout (see [`Host::set_rollout`](crate::Host::set_rollout)).
    pub(crate) async fn set_rollout(
        &self,
        request: &RolloutRequest,
        approvals: &ApprovalPolicy,
    ) -> Result<Rollout> {
        let plugin = request.plugin.as_str();
        check_name(plugin)?;
        check_change_text(&request.by, request.reason.as_deref())?;
        if request.percent > 100 {
            return Err(ReleaseError::BadPercent {
                percent: request.percent,
            }
            .into());
        }
        let target = self.load(plugin, &request.version).await?;
        let current = self.current(plugin)?;
        let now = now_ms();
        let next = match &current {
            None if request.percent < 100 => {
                return Err(ReleaseError::NothingServes {
                    plugin: plugin.to_owned(),
                }
                .into());
            }
            None => Rollout {
                plugin: plugin.to_owned(),
                serving: request.version.clone(),
                canary: None,
                previous: None,
                change: self.change_of(RolloutAction::Activate, request, now),
            },
            Some(current) => {
                let r = &current.value;
                if r.serving == request.version {
                    if r.canary.is_none() {
                        return Err(ReleaseError::AlreadyServing {
                            plugin: plugin.to_owned(),
                            version: request.version.clone(),
                        }
                        .into());
                    }
                    // Back to the serving version alone: a rollback.
                    Rollout {
                        canary: None,
                        change: self.change_of(RolloutAction::Rollback, request, now),
                        ..r.clone()
                    }
                } else if request.percent == 100 {
                    Rollout {
                        plugin: plugin.to_owned(),
                        serving: request.version.clone(),
                        canary: None,
                        previous: Some(r.serving.clone()),
                        change: self.change_of(RolloutAction::Activate, request, now),
                    }
                } else {
                    let since_ms = match &r.canary {
                        Some(c) if c.version == request.version => c.since_ms,
                        _ => now,
                    };
                    Rollout {
                        canary: Some(Canary {
                            version: request.version.clone(),
                            percent: u8::try_from(request.percent).unwrap_or(100),
                            sticky: request.sticky,
                            since_ms,
                        }),
                        change: self.change_of(RolloutAction::Canary, request, now),
                        ..r.clone()
                    }
                }
            }
        };
        // What serves now for everyone, to compare the new version with.
        let baseline = match (&current, &self.dev_plugin, &self.dev_unloaded) {
            (Some(c), _, _) => Some(self.load(plugin, &c.value.serving).await?),
            (None, Some(dev), _) => Some(Arc::clone(dev)),
            // What serves did not load: comparing with nothing would let a
            // wider version out unapproved.
            (None, None, Some(dir)) => {
                return Err(ReleaseError::BaselineNotLoaded {
                    plugin: plugin.to_owned(),
                    dir: dir.clone(),
                }
                .into());
            }
            (None, None, None) => None,
        };
        // A version already taking traffic as the canary was approved (or
        // needed no approval) when it started.
        let approved_before = current
            .as_ref()
            .and_then(|c| c.value.canary.as_ref())
            .is_some_and(|c| c.version == request.version);
        let mut next = next;
        // Compared whatever the digests: one component under a new
        // manifest may be granted more.
        if let Some(baseline) = &baseline
            && !approved_before
        {
            let widenings = widenings(baseline, &target);
            tracing::debug!(
                from = baseline.version(),
                to = target.version(),
                ?widenings,
                "upgrade compared"
            );
            if !widenings.is_empty() {
                let id = self
                    .upgrade_approval(request, baseline, &target, &widenings, approvals)
                    .await?;
                next.change.approval_id = Some(id);
            }
        }
        self.commit(current.as_ref(), next, &target).await
    }

    /// The change that consumed upgrade approval `id` did not happen
    /// (another change came first, or it failed before the rollout store
    /// was asked to make it): the approval is approved again, for the
    /// operator's retry, until it expires.
    fn give_back(&self, id: &str) {
        let back = self
            .ledger
            .transition(id, ApprovalState::Consumed, now_ms(), |a| {
                a.state = ApprovalState::Approved;
                a.consumed_by_call = None;
            });
        if !matches!(back, Ok(Transition::Done(_))) {
            tracing::warn!(approval = %id, "an upgrade approval whose rollout did not happen stays consumed");
        }
    }

    fn change_of(
        &self,
        action: RolloutAction,
        request: &RolloutRequest,
        now: u64,
    ) -> RolloutChange {
        RolloutChange {
            id: uuid::Uuid::now_v7().to_string(),
            action,
            by: request.by.clone(),
            reason: request.reason.clone(),
            at_ms: now,
            approval_id: None,
        }
    }

    /// Store `next` if the rollout is still `current`; record the change,
    /// or the lost race.
    async fn commit(
        &self,
        current: Option<&Versioned<Rollout>>,
        next: Rollout,
        concerns: &Plugin,
    ) -> Result<Rollout> {
        // One change at a time on this host, so that the marker below is
        // this host's own and never another change's in flight.
        let _changing = self.served.changing.lock().await;
        let marker = unrecorded_marker(self.audit.origin(), &next.plugin);
        // Until the store is asked, nothing has changed: an upgrade
        // approval this change consumed is given back when it fails. (A
        // store that fails the change itself may have made it — a commit
        // whose answer was lost — so the approval then stays consumed.)
        let prepared = async {
            self.record_if_unrecorded(current, &marker, &next.change.by)
                .await?;
            self.ledger
                .set_meta(&marker, &next.change.id)
                .map_err(ledger_error)
        }
        .await;
        if let Err(error) = prepared {
            if let Some(id) = &next.change.approval_id {
                self.give_back(id);
            }
            return Err(error);
        }
        let mut entry = Entry::new(Event::RolloutChanged);
        entry.principal = Some(next.change.by.clone());
        entry.plugin = Some(next.plugin.clone());
        entry.plugin_version = Some(concerns.version().to_owned());
        entry.component_digest = Some(concerns.digest().to_owned());
        entry.approval_id = next.change.approval_id.clone();
        let outcome = self
            .served
            .releases
            .change(current, next.clone())
            .map_err(store_error)?;
        self.served.invalidate();
        match outcome {
            Changed::Done(rollout) => {
                entry.decision = Some(rollout.change.action.as_str().to_owned());
                entry.reason = Some(describe(&rollout));
                // Made, whatever the log says: an error that read as "not
                // changed" would have the operator make it again (a
                // rollback one step further). The marker stays set, so
                // the plugin's next change records it.
                crate::audit::append(self.audit, &entry, Durability::Flushed)
                    .await
                    .map_err(|source| Error::ChangeUnrecorded {
                        plugin: rollout.plugin.clone(),
                        now: describe(&rollout),
                        source,
                    })?;
                // Made and recorded: a marker left set costs only a second
                // record of it at the next change, while an error here
                // would read as "not changed".
                if let Err(e) = self.ledger.set_meta(&marker, "") {
                    tracing::warn!(plugin = %rollout.plugin, error = %e, "a rollout change made and recorded could not be marked recorded: it is recorded again at the next change");
                }
                Ok(rollout)
            }
            Changed::Lost(now) => {
                // Another change is stored, not this one
                // (`Releases::change` says `Done` when the one stored is
                // this).
                if let Some(id) = &next.change.approval_id {
                    self.give_back(id);
                }
                entry.decision = Some("lost".to_owned());
                entry.reason = Some(match &now {
                    Some(r) => format!(
                        "another change came first (by {}); now {}",
                        r.change.by,
                        describe(r)
                    ),
                    None => "another change came first".to_owned(),
                });
                self.record(entry).await?;
                self.ledger.set_meta(&marker, "").map_err(ledger_error)?;
                Err(ReleaseError::Conflict {
                    plugin: next.plugin.clone(),
                    by: now.map(|r| r.change.by).unwrap_or_default(),
                }
                .into())
            }
        }
    }

    /// Record the current rollout's last change now if this host stored
    /// it and never recorded it: its record failed (the audit log refused,
    /// the process ended before its queued record was written). `marker`
    /// names the change this host was making, set before it is stored and
    /// cleared once it is recorded, so every change stored is recorded at
    /// least once (a record that was only late may be there twice). A
    /// change another host changed again before this host's next change is
    /// not recorded late: whether it was stored is not known here.
    async fn record_if_unrecorded(
        &self,
        current: Option<&Versioned<Rollout>>,
        marker: &str,
        now_by: &str,
    ) -> Result<()> {
        let Some(making) = self.ledger.meta(marker).map_err(ledger_error)? else {
            return Ok(());
        };
        let Some(rollout) = current
            .map(|c| &c.value)
            .filter(|r| !making.is_empty() && r.change.id == making)
        else {
            return Ok(());
        };
        let mut entry = Entry::new(Event::RolloutChanged);
        entry.principal = Some(rollout.change.by.clone());
        entry.plugin = Some(rollout.plugin.clone());
        entry.plugin_version = Some(
            rollout
                .canary
                .as_ref()
                .map_or(&rollout.serving, |c| &c.version)
                .clone(),
        );
        entry.approval_id = rollout.change.approval_id.clone();
        entry.decision = Some(rollout.change.action.as_str().to_owned());
        entry.reason = Some(format!(
            "{}; changed at {} ms since the Unix epoch and recorded now, when {now_by} changed the rollout again: no record of it was marked written",
            describe(rollout),
            rollout.change.at_ms
        ));
        self.record(entry).await?;
        self.ledger.set_meta(marker, "").map_err(ledger_error)
    }

    /// Use the approver's approval for an upgrade that widens, or ask for
    /// one. `Ok(id)`: approval `id` is consumed by this change.
    async fn upgrade_approval(
        &self,
        request: &RolloutRequest,
        baseline: &Plugin,
        target: &Plugin,
        widenings: &[String],
        policy: &ApprovalPolicy,
    ) -> Result<String> {
        let binding = serde_json::json!({
            "plugin": request.plugin,
            "from": { "version": baseline.version(), "component_digest": baseline.digest() },
            "to": { "version": target.version(), "component_digest": target.digest() },
            "widens": widenings,
        });
        let args = airlock_audit::canonical::to_string(&binding);
        let args_digest = hex::encode(Sha256::digest(args.as_bytes()));
        let refused = |id: &str, reason: String| -> Error {
            ReleaseError::ApprovalRefused {
                approval_id: id.to_owned(),
                reason,
            }
            .into()
        };
        if let Some(id) = &request.approval_id {
            let Some((approval, expired_now)) = self.ledger.approval(id, now_ms())? else {
                return Err(refused(id, "no such approval".to_owned()));
            };
            if expired_now {
                crate::approvals::record_expiries(self.audit, std::slice::from_ref(&approval));
            }
            if approval.kind != ApprovalKind::PluginUpgrade
                || approval.plugin != request.plugin
                || approval.args_digest != args_digest
            {
                return Err(refused(
                    id,
                    "it was given for another upgrade (plugin, versions or what widens)".to_owned(),
                ));
            }
            if approval.principal != request.by {
                return Err(refused(
                    id,
                    format!("it was asked by {}", approval.principal),
                ));
            }
            // After what the change must match: its terms are named only
            // to whoever it was given to.
            if let Some(terms) = crate::approvals::unknown_terms(&approval) {
                return Err(refused(id, terms));
            }
            if approval.state != ApprovalState::Approved {
                return Err(refused(id, format!("it is {}", approval.state.as_str())));
            }
            let consumed = self
                .ledger
                .transition(id, ApprovalState::Approved, now_ms(), |a| {
                    a.state = ApprovalState::Consumed;
                    a.consumed_by_call =
                        Some(format!("rollout of {} {}", request.plugin, request.version));
                })?;
            return match consumed {
                Transition::Done(_) => Ok(id.clone()),
                Transition::Already(a) => Err(refused(id, format!("it is {}", a.state.as_str()))),
                Transition::NotFound => Err(refused(id, "no such approval".to_owned())),
            };
        }
        if policy.approvers.is_empty() {
            return Err(ReleaseError::NoApprover {
                plugin: request.plugin.clone(),
                version: request.version.clone(),
                widens: widenings.to_vec(),
            }
            .into());
        }
        let created = now_ms();
        let approval = Approval {
            id: format!("apr-{}", uuid::Uuid::now_v7()),
            kind: ApprovalKind::PluginUpgrade,
            state: ApprovalState::Pending,
            plugin: request.plugin.clone(),
            component_digest: target.digest().to_owned(),
            plugin_version: Some(target.version().to_owned()),
            manifest_digest: Some(target.manifest_digest().to_owned()),
            tool: String::new(),
            risk: "plugin_upgrade".to_owned(),
            args_digest,
            args,
            args_truncated: false,
            args_redacted: Some(false),
            principal: request.by.clone(),
            session: None,
            idempotency_key: None,
            caller_reason: request.reason.clone(),
            call_id: format!("rollout of {} {}", request.plugin, request.version),
            created_ms: created,
            expires_ms: created.saturating_add(policy.expiry_s.saturating_mul(1000)),
            decided_by: None,
            decided_ms: None,
            decision_reason: None,
            consumed_by_call: None,
            unknown_fields: serde_json::Map::new(),
        };
        let mut entry = Entry::new(Event::ApprovalRequested);
        entry.principal = Some(request.by.clone());
        entry.plugin = Some(request.plugin.clone());
        entry.plugin_version = Some(target.version().to_owned());
        entry.component_digest = Some(target.digest().to_owned());
        entry.risk = Some("plugin_upgrade".to_owned());
        entry.decision = Some("approval_required".to_owned());
        entry.approval_id = Some(approval.id.clone());
        entry.args_digest = Some(approval.args_digest.clone());
        entry.args = Some(approval.args.clone());
        entry.reason = Some(format!("widens: {}", widenings.join("; ")));
        self.record(entry).await?;
        self.ledger.create_approval(&approval)?;
        Err(ReleaseError::ApprovalRequired {
            plugin: request.plugin.clone(),
            version: request.version.clone(),
            from: baseline.version().to_owned(),
            approval_id: approval.id,
            widens: widenings.to_vec(),
        }
        .into())
    }

    /// Make the canary the serving version.
    pub(crate) async fn promote(
        &self,
        plugin: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Rollout> {
        check_change_text(by, reason)?;
        let current = self.current(plugin)?;
        let Some(current) = current else {
            return Err(ReleaseError::NoCanary {
                plugin: plugin.to_owned(),
            }
            .into());
        };
        let Some(canary) = current.value.canary.clone() else {
            return Err(ReleaseError::NoCanary {
                plugin: plugin.to_owned(),
            }
            .into());
        };
        let target = self.load(plugin, &canary.version).await?;
        let next = Rollout {
            plugin: plugin.to_owned(),
            serving: canary.version.clone(),
            canary: None,
            previous: Some(current.value.serving.clone()),
            change: RolloutChange {
                id: uuid::Uuid::now_v7().to_string(),
                action: RolloutAction::Promote,
                by: by.to_owned(),
                reason: reason.map(str::to_owned),
                at_ms: now_ms(),
                approval_id: None,
            },
        };
        self.commit(Some(&current), next, &target).await
    }

    /// Send all traffic back: stop the canary, or, without one, serve the
    /// previous version again. No approval: the version returned to served
    /// before. `automatic` (an alert's takeover, `by` = `alert:<rule>`):
    /// refused when the last change is a rollback already (an alert's or an
    /// operator's): going further back is an operator's decision.
    /// `seen_change`: the id of the change the one rolling back saw, and
    /// the rollout must still be at (refused with `Conflict` when another
    /// change came since: a second click on a page, or one left open).
    /// `failing`: the version an alert's rollback is about (its calls
    /// tripped the rule); refused with `NotRollbackTarget` when rolling
    /// back would not take it out of service — it serves no call any
    /// more, or it is the serving version while a canary runs (stopping
    /// the canary, which is not failing, would undo nothing).
    pub(crate) async fn rollback(
        &self,
        plugin: &str,
        by: &str,
        reason: Option<&str>,
        automatic: bool,
        failing: Option<&str>,
        seen_change: Option<&str>,
    ) -> Result<Rollout> {
        check_change_text(by, reason)?;
        let Some(current) = self.current(plugin)? else {
            return Err(ReleaseError::NothingToRollBack {
                plugin: plugin.to_owned(),
            }
            .into());
        };
        let r = &current.value;
        if let Some(seen) = seen_change
            && r.change.id != seen
        {
            return Err(ReleaseError::Conflict {
                plugin: plugin.to_owned(),
                by: r.change.by.clone(),
            }
            .into());
        }
        // Decided on the rollout the change is made against: a host whose
        // read came before another's rollback loses the store's race
        // instead (`Conflict`).
        // Any rollback, not only an alert's: after an operator stopped the
        // canary, an alert still firing on the canary's calls would undo
        // the change before it too.
        if automatic && r.change.action == RolloutAction::Rollback {
            return Err(ReleaseError::AlreadyRolledBack {
                plugin: plugin.to_owned(),
                by: r.change.by.clone(),
            }
            .into());
        }
        if let Some(failing) = failing {
            let canary = r.canary.as_ref().map(|c| c.version.as_str());
            let why = if canary == Some(failing) {
                None
            } else if failing != r.serving {
                Some(format!("it serves no call now ({})", describe(r)))
            } else {
                canary.map(|canary| {
                    format!(
                        "it is the serving version, and a rollback would only stop the canary {canary}, which is not the version failing"
                    )
                })
            };
            if let Some(why) = why {
                return Err(ReleaseError::NotRollbackTarget {
                    plugin: plugin.to_owned(),
                    version: failing.to_owned(),
                    why,
                }
                .into());
            }
        }
        let (next, concerns) = if r.canary.is_some() {
            (
                Rollout {
                    canary: None,
                    ..r.clone()
                },
                r.serving.clone(),
            )
        } else if let Some(previous) = &r.previous {
            (
                Rollout {
                    serving: previous.clone(),
                    canary: None,
                    previous: None,
                    ..r.clone()
                },
                previous.clone(),
            )
        } else {
            return Err(ReleaseError::NothingToRollBack {
                plugin: plugin.to_owned(),
            }
            .into());
        };
        let next = Rollout {
            change: RolloutChange {
                id: uuid::Uuid::now_v7().to_string(),
                action: RolloutAction::Rollback,
                by: by.to_owned(),
                reason: reason.map(str::to_owned),
                at_ms: now_ms(),
                approval_id: None,
            },
            ..next
        };
        let target = self.load(plugin, &concerns).await?;
        self.commit(Some(&current), next, &target).await
    }

    /// How the rollout's versions did since it last changed its canary
    /// (or, without one, since its last change).
    pub(crate) fn status(&self, plugin: &str) -> Result<RolloutStatus> {
        let Some(current) = self.current(plugin)? else {
            return Err(ReleaseError::NothingServes {
                plugin: plugin.to_owned(),
            }
            .into());
        };
        let rollout = current.value;
        let since_ms = rollout
            .canary
            .as_ref()
            .map_or(rollout.change.at_ms, |c| c.since_ms);
        let filter = Filter {
            plugin: Some(plugin.to_owned()),
            event: Some(Event::CallFinished),
            since_ms: Some(since_ms),
            ..Filter::default()
        };
        let records = self.audit.query_all(&filter, STATUS_RECORDS)?;
        let truncated = records.len() >= STATUS_RECORDS;
        let mut by_version: BTreeMap<&str, (Vec<u64>, u64, u64)> = BTreeMap::new();
        for record in &records {
            let e = &record.record.entry;
            let Some(version) = e.plugin_version.as_deref() else {
                continue;
            };
            let slot = by_version.entry(version).or_default();
            slot.0.push(e.wall_us.unwrap_or(0));
            if e.outcome.as_deref() != Some("ok") {
                slot.1 += 1;
            }
            slot.2 = slot.2.saturating_add(e.fuel_used.unwrap_or(0));
        }
        let mut versions = Vec::new();
        let roles = std::iter::once((rollout.serving.as_str(), "serving")).chain(
            rollout
                .canary
                .as_ref()
                .map(|c| (c.version.as_str(), "canary")),
        );
        for (version, role) in roles {
            let (mut times, errors, fuel) = by_version.remove(version).unwrap_or_default();
            times.sort_unstable();
            let calls = times.len() as u64;
            let pick = |q: f64| -> u64 {
                if times.is_empty() {
                    0
                } else {
                    let i = ((times.len() as f64 - 1.0) * q).round() as usize;
                    times[i.min(times.len() - 1)]
                }
            };
            versions.push(VersionStats {
                version: version.to_owned(),
                role: role.to_owned(),
                calls,
                errors,
                error_rate: if calls == 0 {
                    0.0
                } else {
                    errors as f64 / calls as f64
                },
                p50_us: pick(0.5),
                p99_us: pick(0.99),
                mean_fuel: fuel.checked_div(calls).unwrap_or(0),
            });
        }
        Ok(RolloutStatus {
            rollout,
            since_ms,
            versions,
            truncated,
        })
    }
}

/// Write the files of installed version `installed` (read from
/// `releases`, each checked against its digest) into the existing, empty
/// directory `dir`: a plugin directory that loads as the version did when
/// it was installed.
///
/// # Errors
/// [`Error::Store`] when a file is missing or does not match its digest;
/// [`Error::Io`] writing.
pub fn write_version(releases: &Releases, installed: &InstalledVersion, dir: &Path) -> Result<()> {
    // A stored record names its component's file: a plain name, never a
    // path out of `dir`, whatever the store holds.
    airlock_store::check_file_name(&installed.component_file).map_err(|m| {
        corrupt(format!(
            "installed {} {} names its component {m}",
            installed.plugin, installed.version
        ))
    })?;
    let mut files = vec![
        (MANIFEST_FILE.to_owned(), &installed.manifest_digest),
        (
            installed.component_file.clone(),
            &installed.component_digest,
        ),
    ];
    if let Some(cases) = &installed.cases_digest {
        files.push((CASES_FILE.to_owned(), cases));
    }
    if let Some(signature) = &installed.signature_digest {
        files.push((SIGNATURE_FILE.to_owned(), signature));
    }
    for (name, digest) in files {
        let bytes = releases.artifact(digest).map_err(store_error)?;
        let path = dir.join(&name);
        // Synced: a directory renamed into place after a crash holds
        // whole files, not empty ones its manifest check would trip on.
        std::fs::File::create(&path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, &bytes)?;
                file.sync_all()
            })
            .map_err(|e| Error::io(&path, e))?;
    }
    airlock_store::file::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Check that the materialized directory `dir` still holds the files of
/// `installed`: its manifest (whose pin covers the component, checked when
/// it loads), its cases and its signature, each by its digest, and none
/// the version was installed without.
///
/// # Security
/// The directory is only a copy of what the store holds. Without this, an
/// edit there (a risk lowered, a grant widened, a signature removed) would
/// serve as edited while the store and the audit log name the installed
/// files. A copy that differs is refused rather than rewritten: whoever
/// edited it should see why, and a running host may still be serving from
/// it.
///
/// # Errors
/// [`Error::Store`] (corrupt) naming the file that differs; [`Error::Load`]
/// reading one.
fn check_materialized(dir: &Path, installed: &InstalledVersion) -> Result<()> {
    let files = [
        (
            MANIFEST_FILE,
            Some(&installed.manifest_digest),
            package::MAX_MANIFEST_BYTES,
        ),
        (
            CASES_FILE,
            installed.cases_digest.as_ref(),
            package::MAX_CASES_BYTES,
        ),
        (
            SIGNATURE_FILE,
            installed.signature_digest.as_ref(),
            package::MAX_SIGNATURE_BYTES,
        ),
    ];
    for (name, expected, cap) in files {
        let path = dir.join(name);
        let found = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&path, e)),
            Ok(_) => Some(hex::encode(Sha256::digest(package::read_capped(
                &path, cap,
            )?))),
        };
        if found.as_ref() == expected {
            continue;
        }
        let what = match (expected, &found) {
            (Some(_), Some(found)) => format!("differs from it (sha256 {found})"),
            (Some(_), None) => "is missing".to_owned(),
            (None, _) => "was not installed with it".to_owned(),
        };
        return Err(corrupt(format!(
            "{} of installed {} {} {what}: remove {} and it is written again from the store",
            path.display(),
            installed.plugin,
            installed.version,
            dir.display()
        )));
    }
    Ok(())
}

/// What a rollout serves, in words.
pub(crate) fn describe(rollout: &Rollout) -> String {
    match &rollout.canary {
        Some(c) => format!(
            "{} serves, {} takes {}% by {}",
            rollout.serving,
            c.version,
            c.percent,
            c.sticky.as_str()
        ),
        None => format!("{} serves", rollout.serving),
    }
}

/// What `to` may do that `from` may not: capabilities, origins, files, env
/// names, limits, tools, risks, dropped approval or idempotency
/// requirements. Empty: `to` is no wider.
pub(crate) fn widenings(from: &Plugin, to: &Plugin) -> Vec<String> {
    package::PluginDiff::between(from, to)
        .widenings()
        .map(ToString::to_string)
        .collect()
}

/// The ledger's meta name holding the id of the change to `plugin`'s
/// rollout that the host of audit origin `origin` is making and has not
/// recorded yet (empty: none).
fn unrecorded_marker(origin: &str, plugin: &str) -> String {
    format!("rollout_unrecorded/{origin}/{plugin}")
}

fn ledger_error(e: airlock_store::StoreError) -> Error {
    Error::Store(StoreError::new(Store::Ledger, e))
}

/// Whether `part` is one plain path component: not empty, not `.` or `..`,
/// and made only of letters, digits, `-`, `_`, `.` and `+`.
fn is_path_component(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// A rollout record that cannot be read, as the plugin store's failure.
fn corrupt_rollout(message: String) -> StoreError {
    StoreError::new(
        Store::Plugins,
        airlock_store::StoreError::new(airlock_store::ErrorKind::Corrupt, message),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use airlock_store::{
        ErrorKind, InstalledVersion, PluginStore, Releases, Result, Rollout, StoreError, Version,
        Versioned,
    };

    use super::installed_listing;

    /// A store of installed-version rows as a database could hold them
    /// after a bad edit: each row's key, and its record or the error
    /// reading it gives.
    /// A row: its key, and its record or the error reading it gives.
    type Row = (
        (&'static str, &'static str),
        std::result::Result<InstalledVersion, ErrorKind>,
    );

    #[derive(Debug)]
    struct Rows(Vec<Row>);

    fn record(plugin: &str, version: &str) -> InstalledVersion {
        InstalledVersion {
            plugin: plugin.into(),
            version: version.into(),
            manifest_digest: "0".repeat(64),
            component_digest: "1".repeat(64),
            component_file: "c.wasm".into(),
            cases_digest: None,
            signature_digest: None,
            signer: None,
            installed_by: "ops".into(),
            installed_ms: 1,
        }
    }

    impl PluginStore for Rows {
        fn put_artifact(&self, _: &str, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn artifact(&self, _: &str) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn insert_version(&self, _: &InstalledVersion) -> Result<bool> {
            Ok(false)
        }
        fn version(&self, plugin: &str, version: &str) -> Result<Option<InstalledVersion>> {
            match self.0.iter().find(|(key, _)| *key == (plugin, version)) {
                Some((_, Ok(record))) => Ok(Some(record.clone())),
                Some((_, Err(kind))) => {
                    Err(StoreError::new(*kind, format!("row {plugin} {version}")))
                }
                None => Ok(None),
            }
        }
        fn versions(&self, plugin: Option<&str>) -> Result<Vec<InstalledVersion>> {
            let mut out = Vec::new();
            for ((p, v), _) in &self.0 {
                if plugin.is_none_or(|wanted| wanted == *p) {
                    out.extend(self.version(p, v)?);
                }
            }
            Ok(out)
        }
        fn version_names(&self, plugin: Option<&str>) -> Result<Vec<(String, String)>> {
            Ok(self
                .0
                .iter()
                .filter(|((p, _), _)| plugin.is_none_or(|wanted| wanted == *p))
                .map(|((p, v), _)| ((*p).to_owned(), (*v).to_owned()))
                .collect())
        }
        fn rollout(&self, _: &str) -> Result<Option<Versioned<Rollout>>> {
            Ok(None)
        }
        fn insert_rollout(&self, _: &Rollout) -> Result<bool> {
            Ok(false)
        }
        fn replace_rollout(&self, _: Version, _: &Rollout) -> Result<bool> {
            Ok(false)
        }
        fn rollouts(&self) -> Result<Vec<Versioned<Rollout>>> {
            Ok(Vec::new())
        }
        fn rollout_names(&self) -> Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    fn releases(rows: Rows) -> Releases {
        Releases::new(Arc::new(rows))
    }

    /// Each row that cannot be listed as itself is named — damaged, naming
    /// another version, of a name no version can have — and the others
    /// listed.
    #[test]
    fn each_row_that_does_not_read_as_itself_is_named_and_the_rest_listed() {
        let rows = releases(Rows(vec![
            (("text", "1.0.0"), Ok(record("text", "1.0.0"))),
            (("text", "2.0.0"), Err(ErrorKind::Corrupt)),
            (("json", "1.0.0"), Ok(record("json", "9.9.9"))),
            (("Bad Name", "1.0.0"), Ok(record("Bad Name", "1.0.0"))),
        ]));
        let listing = installed_listing(&rows, None).unwrap();
        let listed: Vec<_> = listing.versions.iter().map(|v| &v.version).collect();
        assert_eq!(listed, ["1.0.0"]);
        assert_eq!(listing.versions[0].plugin, "text");
        let mut unreadable: Vec<_> = listing
            .unreadable
            .iter()
            .map(|u| (u.plugin.as_str(), u.version.as_str()))
            .collect();
        unreadable.sort_unstable();
        assert_eq!(
            unreadable,
            [("Bad Name", "1.0.0"), ("json", "1.0.0"), ("text", "2.0.0")]
        );
        let json = listing
            .unreadable
            .iter()
            .find(|u| u.plugin == "json")
            .unwrap();
        assert!(json.error.contains("9.9.9"), "{json:?}");
        assert!(listing.partial.is_some());
        // One plugin's listing is that plugin's rows only, and a name no
        // plugin can have lists nothing (not an error, nor a note).
        let text = installed_listing(&rows, Some("text")).unwrap();
        assert_eq!(text.versions.len(), 1);
        assert_eq!(text.unreadable.len(), 1);
        let none = installed_listing(&rows, Some("Bad Name")).unwrap();
        assert_eq!(none, super::InstalledListing::default());
    }

    /// The store's own failure on every row is the store's: the listing
    /// fails whole, rather than naming every version as unreadable.
    #[test]
    fn a_store_failing_on_every_row_fails_the_listing() {
        let rows = releases(Rows(vec![
            (("text", "1.0.0"), Err(ErrorKind::Unavailable)),
            (("json", "1.0.0"), Err(ErrorKind::Unavailable)),
        ]));
        let err = crate::error::chain(&installed_listing(&rows, None).unwrap_err());
        assert!(err.contains("row"), "{err}");
        // On some rows only, it is theirs.
        let rows = releases(Rows(vec![
            (("text", "1.0.0"), Err(ErrorKind::Unavailable)),
            (("json", "1.0.0"), Ok(record("json", "1.0.0"))),
        ]));
        let listing = installed_listing(&rows, None).unwrap();
        assert_eq!(listing.versions.len(), 1);
        assert_eq!(listing.unreadable.len(), 1);
    }
}
