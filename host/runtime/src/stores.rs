//! Where a host keeps its state: opening the stores of the backend its
//! [`StoreConfig`] names, and the audit log over them.
//!
//! | backend | audit chain | ledger, workspace | rate limits | mode |
//! | --- | --- | --- | --- | --- |
//! | sled, data directory | `audit/db` | `ledger/`, `workspace/` | host memory | `mode.json` |
//! | sled, no data directory | temporary | memory | host memory | memory |
//! | PostgreSQL | one chain per host (its origin) | shared | shared | shared |
//!
//! The signing and redaction keys are the host's own, in `<data dir>/audit`
//! whatever the backend.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_audit::{AuditConfig, AuditLog, DB_DIR};
use airlock_store::{MemoryBuckets, Stores};
use airlock_store_sled::{
    FileMode, FilePlugins, SledAudit, SledAuditOptions, SledLedger, SledWorkspace,
};

use crate::error::{Error, Result, Store, StoreError};
use crate::host::AUDIT_DIR;
use crate::ledger::LEDGER_DIR;
use crate::workspace::{WORKSPACE_DIR, Workspace};

/// Which backend holds a host's state.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum StoreConfig {
    /// sled databases in the data directory (temporary ones without it):
    /// one host, no server. The default.
    #[default]
    Sled,
    /// One PostgreSQL database shared by any number of hosts. Needs a data
    /// directory for the host's own keys.
    #[cfg(feature = "postgres")]
    Postgres(airlock_store_postgres::PostgresConfig),
    /// Stores an embedder opened itself. Needs a data directory for the
    /// host's own keys.
    Custom(Stores),
}

impl StoreConfig {
    /// The backend's name, as in `[store] backend`.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreConfig::Sled => "sled",
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(_) => "postgres",
            StoreConfig::Custom(_) => "custom",
        }
    }
}

/// Create `dir` owner-only if it is missing, then refuse it unless only
/// the data directory's owner (or root) can write into it.
fn private_dir(dir: &Path, data_dir: &Path) -> Result<()> {
    airlock_store::file::create_private_dir(dir).map_err(|e| Error::io(dir, e))?;
    check_state_dir(dir, data_dir)
}

/// Refuse the data directory `data_dir`, or a directory of the host's
/// state in it that exists (`audit`, its `keys`, `ledger`, `workspace`,
/// `installed` with its `versions`, `rollouts` and `artifacts`), when a
/// user other than the data directory's owner (or root) owns it or can
/// write into it: whoever can rename or replace the files in it can swap
/// the audit log, its keys, the ledger's stored results, the mode or the
/// installed versions for their own, and the log's tamper-evidence would
/// then vouch for what they wrote. Directories the host creates are
/// owner-only; this catches one made by hand or by a script (as
/// PostgreSQL refuses a data directory others can reach). Readable by
/// others is allowed (a backup group, an auditor's account reading the
/// log: the data directory's owner is the host's user, whoever runs the
/// command); the ancestors are the operator's to keep. Symbolic links are
/// followed: a directory is judged by what it points to.
///
/// Every command that reads or writes a data directory checks it first:
/// `serve` before it looks for a running server's socket, the operator's
/// commands before they trust its keys, mode or installed versions. One
/// that does not exist yet is made owner-only by whatever makes it.
///
/// # Errors
/// [`Error::Config`] naming the directory and what to do; [`Error::Io`]
/// when one cannot be read.
pub fn check_state_dirs(data_dir: &Path) -> Result<()> {
    let audit = data_dir.join(AUDIT_DIR);
    let installed = data_dir.join(airlock_store_sled::INSTALLED_DIR);
    let dirs = [
        data_dir.to_owned(),
        audit.join(airlock_audit::KEYS_DIR),
        audit,
        data_dir.join(LEDGER_DIR),
        data_dir.join(WORKSPACE_DIR),
        installed.join("versions"),
        installed.join("rollouts"),
        installed.join("artifacts"),
        installed,
    ];
    for dir in &dirs {
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dir, e)),
            Ok(_) => check_state_dir(dir, data_dir)?,
        }
    }
    Ok(())
}

/// Refuse `dir` (the data directory `data_dir` or one in it) when a user
/// other than the data directory's owner or root owns it, or its group or
/// every user can write into it (see [`check_state_dirs`]).
#[cfg(unix)]
fn check_state_dir(dir: &Path, data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let owner = if dir == data_dir {
        meta.uid()
    } else {
        std::fs::metadata(data_dir)
            .map_err(|e| Error::io(data_dir, e))?
            .uid()
    };
    let mode = meta.mode() & 0o7777;
    let problem = if meta.uid() != owner && meta.uid() != 0 {
        format!(
            "it belongs to user {}, not to the data directory's owner (user {owner})",
            meta.uid()
        )
    } else if mode & 0o022 != 0 {
        format!("other users can write to it (mode {mode:04o})")
    } else {
        return Ok(());
    };
    Err(Error::Config {
        message: format!(
            "refusing {} as a directory of the host's state: {problem} — whoever can replace its files can replace the audit log and its keys; `chown` it to the user that runs the host and `chmod go-w` it",
            dir.display()
        ),
    })
}

#[cfg(not(unix))]
fn check_state_dir(_dir: &Path, _data_dir: &Path) -> Result<()> {
    Ok(())
}

fn backend_error(e: airlock_store::StoreError) -> Error {
    Error::Store(StoreError::new(Store::Backend, e))
}

/// Open the stores `config` names and the audit log of `origin` over them.
pub(crate) fn open(
    config: &StoreConfig,
    data_dir: Option<&Path>,
    origin: &str,
    audit: &AuditConfig,
) -> Result<(Stores, AuditLog)> {
    let lock_wait = Duration::from_millis(audit.lock_wait_ms);
    let shared = |stores: Stores| -> Result<(Stores, AuditLog)> {
        let Some(dir) = data_dir else {
            return Err(Error::Config {
                message: format!(
                    "a host on the {} store needs a data directory: its audit signing and redaction keys are its own",
                    config.backend()
                ),
            });
        };
        // The keys are kept here whatever the backend.
        private_dir(dir, dir)?;
        check_state_dirs(dir)?;
        private_dir(&dir.join(AUDIT_DIR), dir)?;
        // Before anything reads or recovers the chain: a second process on
        // this origin would mark the first's calls unknown and fork its
        // chain.
        stores
            .audit
            .claim_origin(origin, lock_wait)
            .map_err(backend_error)?;
        let log = AuditLog::with_store(
            stores.audit.clone(),
            origin,
            dir.join(AUDIT_DIR),
            audit.clone(),
        )?;
        Ok((stores, log))
    };
    match (config, data_dir) {
        (StoreConfig::Sled, Some(dir)) => {
            let audit_dir = dir.join(AUDIT_DIR);
            let ledger_dir = dir.join(LEDGER_DIR);
            let workspace_dir = dir.join(WORKSPACE_DIR);
            // Every one of them before anything is opened or read.
            private_dir(dir, dir)?;
            check_state_dirs(dir)?;
            for d in [&audit_dir, &ledger_dir, &workspace_dir] {
                private_dir(d, dir)?;
            }
            let chain = Arc::new(
                SledAudit::open(
                    &audit_dir.join(DB_DIR),
                    origin,
                    &SledAuditOptions {
                        flush_every_ms: Some(audit.group_commit_ms.max(1)),
                        lock_wait,
                    },
                )
                .map_err(|e| Error::Audit(airlock_audit::Error::from_store(&audit_dir, &e)))?,
            );
            let log = AuditLog::with_store(chain.clone(), origin, &audit_dir, audit.clone())?;
            let ledger_db = airlock_store_sled::open::open(
                &sled::Config::new()
                    .path(&ledger_dir)
                    .cache_capacity(airlock_store_sled::CACHE_BYTES),
                lock_wait,
                &format!("the ledger at {}", ledger_dir.display()),
            )
            .map_err(|e| StoreError::new(Store::Ledger, e))?;
            let workspace_db = airlock_store_sled::open::open(
                &sled::Config::new()
                    .path(&workspace_dir)
                    .cache_capacity(airlock_store_sled::CACHE_BYTES)
                    .flush_every_ms(Some(200)),
                lock_wait,
                &format!("the workspace at {}", workspace_dir.display()),
            )
            .map_err(|e| StoreError::new(Store::Workspace, e))?;
            let stores = Stores {
                description: format!("sled at {}", dir.display()),
                audit: chain,
                ledger: Arc::new(
                    SledLedger::new(&ledger_dir, ledger_db)
                        .map_err(|e| StoreError::new(Store::Ledger, e))?,
                ),
                workspace: Arc::new(
                    SledWorkspace::new(&workspace_dir, workspace_db)
                        .map_err(|e| StoreError::new(Store::Workspace, e))?,
                ),
                limits: Arc::new(MemoryBuckets::default()),
                mode: Arc::new(FileMode::new(dir)),
                plugins: Arc::new(FilePlugins::new(dir)),
            };
            Ok((stores, log))
        }
        (StoreConfig::Sled, None) => {
            let log = AuditLog::temporary(audit.clone())?;
            Ok((Stores::memory(), log))
        }
        #[cfg(feature = "postgres")]
        (StoreConfig::Postgres(postgres), _) => {
            shared(airlock_store_postgres::open(postgres).map_err(backend_error)?)
        }
        (StoreConfig::Custom(stores), _) => shared(stores.clone()),
    }
}

/// The workspace of the store `config` names, without a host — what an
/// operator's `airlock workspace` reads. With sled, waits up to
/// `lock_wait` for another process to release it.
///
/// # Errors
/// [`Error::Store`] (of kind `Locked` when another process holds a sled
/// store), [`Error::Config`] for a shared store without a data directory.
pub fn open_workspace(config: &crate::HostConfig, lock_wait: Duration) -> Result<Workspace> {
    match (&config.store, &config.data_dir) {
        (StoreConfig::Sled, Some(data)) => {
            let dir = data.join(WORKSPACE_DIR);
            // Before sled, which would create it (and the data directory)
            // readable by everyone.
            private_dir(data, data)?;
            check_state_dirs(data)?;
            private_dir(&dir, data)?;
            let db = airlock_store_sled::open::open(
                &sled::Config::new()
                    .path(&dir)
                    .cache_capacity(airlock_store_sled::CACHE_BYTES),
                lock_wait,
                &format!("the workspace at {}", dir.display()),
            )
            .map_err(|e| StoreError::new(Store::Workspace, e))?;
            let store =
                SledWorkspace::new(&dir, db).map_err(|e| StoreError::new(Store::Workspace, e))?;
            Ok(Workspace::new(Arc::new(store)))
        }
        (StoreConfig::Sled, None) => Err(Error::Config {
            message: "a temporary store has no workspace to read".to_owned(),
        }),
        #[cfg(feature = "postgres")]
        (StoreConfig::Postgres(postgres), _) => Ok(Workspace::new(
            airlock_store_postgres::open(postgres)
                .map_err(backend_error)?
                .workspace,
        )),
        (StoreConfig::Custom(stores), _) => Ok(Workspace::new(stores.workspace.clone())),
    }
}

/// The mode of the store `config` names, without a host — what `airlock
/// mode` reads and switches when no server runs. Every host sharing the
/// store sees a switch at its next call and records it in its audit log.
///
/// # Errors
/// [`Error::Store`]; [`Error::Config`] for a temporary store.
pub fn open_mode(config: &crate::HostConfig) -> Result<Arc<dyn airlock_store::ModeStore>> {
    match (&config.store, &config.data_dir) {
        (StoreConfig::Sled, Some(dir)) => {
            check_state_dirs(dir)?;
            Ok(Arc::new(FileMode::new(dir)))
        }
        (StoreConfig::Sled, None) => Err(Error::Config {
            message: "a temporary store has no mode to switch".to_owned(),
        }),
        #[cfg(feature = "postgres")]
        (StoreConfig::Postgres(postgres), _) => Ok(airlock_store_postgres::open(postgres)
            .map_err(backend_error)?
            .mode),
        (StoreConfig::Custom(stores), _) => Ok(stores.mode.clone()),
    }
}

/// The installed plugin versions and rollouts of the store `config` names,
/// without a host — what `airlock eval NAME@VERSION` reads. Files in the
/// data directory with sled (readable while a server runs), the shared
/// tables with PostgreSQL.
///
/// # Errors
/// [`Error::Store`]; [`Error::Config`] for a temporary store.
pub fn open_releases(config: &crate::HostConfig) -> Result<airlock_store::Releases> {
    let store: Arc<dyn airlock_store::PluginStore> = match (&config.store, &config.data_dir) {
        (StoreConfig::Sled, Some(dir)) => {
            check_state_dirs(dir)?;
            Arc::new(FilePlugins::new(dir))
        }
        (StoreConfig::Sled, None) => {
            return Err(Error::Config {
                message: "a temporary store has no installed versions".to_owned(),
            });
        }
        #[cfg(feature = "postgres")]
        (StoreConfig::Postgres(postgres), _) => {
            airlock_store_postgres::open(postgres)
                .map_err(backend_error)?
                .plugins
        }
        (StoreConfig::Custom(stores), _) => stores.plugins.clone(),
    };
    Ok(airlock_store::Releases::new(store))
}

/// The audit log of the store `config` names, without a host, for reading,
/// verifying and exporting only — what an operator's `airlock audit`
/// reads. It is the log as the host of `config.origin` sees it: its own
/// chain is checked against `<data dir>/audit/signing.pub`, other origins'
/// as [`AuditLog::verify_all`] says. A sled store holds this host's chain
/// alone; a shared store (PostgreSQL) every host's. With sled, waits up to
/// `lock_wait` for another process to release the database.
///
/// # Errors
/// [`Error::Audit`] ([`airlock_audit::Error::Locked`] when another process
/// holds a sled store; [`airlock_audit::Error::Store`] when nothing has
/// been recorded yet; [`airlock_audit::Error::Key`] without
/// `signing.pub`); [`Error::Store`] when a shared store cannot be opened;
/// [`Error::Config`] for a temporary store.
pub fn open_audit_read_only(config: &crate::HostConfig, lock_wait: Duration) -> Result<AuditLog> {
    let Some(dir) = &config.data_dir else {
        return Err(Error::Config {
            message: "a temporary store has no audit log to read".to_owned(),
        });
    };
    // Its keys are trusted whatever the backend.
    check_state_dirs(dir)?;
    let audit_dir = dir.join(AUDIT_DIR);
    let read_only = |store: Arc<dyn airlock_store::AuditStore>| {
        Ok(AuditLog::read_only(store, &config.origin, &audit_dir)?)
    };
    match &config.store {
        StoreConfig::Sled => {
            let db = audit_dir.join(DB_DIR);
            if !db.is_dir() {
                return Err(Error::Audit(airlock_audit::Error::Store {
                    path: audit_dir,
                    message: "no audit log here (nothing has been recorded yet)".to_owned(),
                }));
            }
            let store = SledAudit::open(
                &db,
                &config.origin,
                &SledAuditOptions {
                    flush_every_ms: None,
                    lock_wait,
                },
            )
            .map_err(|e| Error::Audit(airlock_audit::Error::from_store(&audit_dir, &e)))?;
            read_only(Arc::new(store))
        }
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(postgres) => read_only(
            airlock_store_postgres::open(postgres)
                .map_err(backend_error)?
                .audit,
        ),
        StoreConfig::Custom(stores) => read_only(stores.audit.clone()),
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::{StoreConfig, open};
    use crate::error::Error;

    fn opened(dir: &Path) -> Result<(), String> {
        open(
            &StoreConfig::Sled,
            Some(dir),
            "test",
            &airlock_audit::AuditConfig::default(),
        )
        .map(drop)
        .map_err(|e| match e {
            Error::Config { message } => message,
            other => panic!("not a configuration error: {other:?}"),
        })
    }

    fn refused_as(result: crate::Result<()>, dir: &Path) {
        match result {
            Err(Error::Config { message }) => {
                assert!(
                    message.contains(&format!("refusing {}", dir.display())),
                    "{message}"
                );
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Another user who can write into a directory of the host's state
    /// can swap the audit log and its keys for their own: such a
    /// directory is refused before anything is read from it, and
    /// nothing is created in it.
    #[test]
    fn a_state_directory_another_user_can_write_or_owns_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        for (mode, says) in [
            (0o777, "mode 0777"),
            (0o770, "mode 0770"),
            (0o1733, "mode 1733"),
        ] {
            set_mode(&data, mode);
            let message = opened(&data).unwrap_err();
            assert!(
                message.contains(&format!("refusing {}", data.display()))
                    && message.contains("other users can write to it")
                    && message.contains(says)
                    && message.contains("chmod go-w"),
                "{message}"
            );
            assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "created in");
        }
        // Readable by others is the operator's choice (a backup group).
        set_mode(&data, 0o755);
        opened(&data).unwrap();
        // A directory inside it, made writable by hand.
        let audit = data.join(crate::host::AUDIT_DIR);
        set_mode(&audit, 0o707);
        let message = opened(&data).unwrap_err();
        assert!(
            message.contains(&format!("refusing {}", audit.display())),
            "{message}"
        );
        set_mode(&audit, 0o700);
        opened(&data).unwrap();
        // Where the installed versions and rollouts are: every command
        // reading the data directory refuses it, not only the host.
        let rollouts = data.join("installed/rollouts");
        std::fs::create_dir_all(&rollouts).unwrap();
        set_mode(&rollouts, 0o777);
        let config = crate::HostConfig::default().data_dir(&data);
        let refused = |result: crate::Result<()>| refused_as(result, &rollouts);
        assert!(opened(&data).unwrap_err().contains("installed/rollouts"));
        refused(super::open_mode(&config).map(drop));
        refused(super::open_releases(&config).map(drop));
        refused(super::open_workspace(&config, std::time::Duration::ZERO).map(drop));
        refused(super::open_audit_read_only(&config, std::time::Duration::ZERO).map(drop));
        let mode = airlock_store::Mode {
            read_only: true,
            id: "m1".into(),
            by: "ops".into(),
            reason: None,
            at_ms: 0,
        };
        refused(crate::mode::write_mode(&data, &mode));
        set_mode(&rollouts, 0o700);
        let keys = audit.join(airlock_audit::KEYS_DIR);
        set_mode(&keys, 0o777);
        assert!(opened(&data).unwrap_err().contains("keys"));
        set_mode(&keys, 0o700);
        opened(&data).unwrap();
        // Another user's (only root can make one): inside the data
        // directory, refused; the data directory itself is the host's
        // user's, whoever reads it (root, an auditor's account).
        if rustix::process::geteuid().is_root() {
            let other = Some(rustix::process::Uid::from_raw(54_321));
            rustix::fs::chown(&audit, other, None).unwrap();
            let message = opened(&data).unwrap_err();
            assert!(
                message.contains("belongs to user 54321, not to the data directory's owner"),
                "{message}"
            );
            let config = crate::HostConfig::default().data_dir(&data);
            refused_as(
                super::open_audit_read_only(&config, std::time::Duration::ZERO).map(drop),
                &audit,
            );
            rustix::fs::chown(&data, other, None).unwrap();
            // Now the data directory's owner's, as is what root made in it.
            super::check_state_dirs(&data).unwrap();
        }
    }
}
