//! The host's mode: the operator's read-only switch. Where it lives is the
//! store's choice (`mode.json` in the data directory with sled, a row
//! shared by every host with PostgreSQL); the pipeline's admission step
//! (step 2) asks for it at every call, and each host records every switch
//! it sees in the audit log, once.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_audit::{AuditLog, Event};
use airlock_store::ModeStore;

use crate::error::{CallError, CallResult, Error, Result, Store, StoreError};
use crate::ledger::Ledger;

pub(crate) use airlock_store::Mode;
pub use airlock_store_sled::MODE_FILE;

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Write `mode` to the mode file of `data_dir` atomically (what `airlock
/// mode` does without a running host).
///
/// # Errors
/// [`Error::Store`].
pub fn write_mode(data_dir: &Path, mode: &Mode) -> Result<()> {
    crate::stores::check_state_dirs(data_dir)?;
    airlock_store_sled::FileMode::new(data_dir)
        .set(mode)
        .map_err(|e| Error::Store(StoreError::new(Store::Mode, e)))
}

/// The mode as this host sees it: the store's, and which switch it has
/// seen last (a new one is pending until recorded).
#[derive(Debug)]
pub(crate) struct ModeWatch {
    store: Arc<dyn ModeStore>,
    /// The id of the switch last seen (`None`: none yet).
    seen: Mutex<Option<String>>,
    /// A switch seen but not yet recorded in the audit log.
    pending: Mutex<Option<Mode>>,
    /// The ledger meta value that says which switch this host recorded.
    recorded_key: String,
}

impl ModeWatch {
    /// The mode kept in `store`, as host `origin` sees it.
    pub(crate) fn new(store: Arc<dyn ModeStore>, origin: &str) -> ModeWatch {
        // The one-host name keeps the key it always had.
        let recorded_key = if origin == airlock_audit::DEFAULT_ORIGIN {
            "mode_recorded".to_owned()
        } else {
            format!("mode_recorded/{origin}")
        };
        ModeWatch {
            store,
            seen: Mutex::new(None),
            pending: Mutex::new(None),
            recorded_key,
        }
    }

    /// Switch to read-only mode or back, recording the switch in the audit
    /// log (see [`Host::set_mode`](crate::Host::set_mode)).
    pub(crate) async fn set(
        &self,
        ledger: &Ledger,
        audit: &AuditLog,
        read_only: bool,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Mode> {
        let mode = Mode {
            read_only,
            id: uuid::Uuid::now_v7().to_string(),
            by: by.to_owned(),
            reason: reason.map(str::to_owned),
            at_ms: now_ms(),
        };
        self.store
            .set(&mode)
            .map_err(|e| StoreError::new(Store::Mode, e))?;
        // Observe (and record) it now rather than at the next call.
        self.mode()?;
        self.record_pending(ledger, audit).await?;
        Ok(mode)
    }

    /// The current mode (`None`: normal, never switched); a switch not seen
    /// before becomes pending, to be recorded.
    ///
    /// # Errors
    /// When the store cannot say: the caller fails closed.
    pub(crate) fn mode(&self) -> CallResult<Option<Mode>> {
        let mode = self
            .store
            .get()
            .map_err(|e| StoreError::new(Store::Mode, e))?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let id = mode.as_ref().map(|m| m.id.clone());
        if *seen != id {
            *seen = id;
            if let Some(m) = &mode {
                *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.clone());
            }
        }
        Ok(mode)
    }

    /// Whether a switch could be written now (see
    /// [`ModeStore::check_writable`]).
    pub(crate) fn writable(&self) -> bool {
        self.store.check_writable().is_ok()
    }

    /// Record the pending switch, if any, in the audit log.
    pub(crate) async fn record_pending(&self, ledger: &Ledger, audit: &AuditLog) -> CallResult<()> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mode) = pending
            && let Err(e) = self.record(ledger, audit, &mode).await
        {
            // Not recorded: try again at the next call.
            *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(mode);
            return Err(e);
        }
        Ok(())
    }

    /// Record `mode` in the audit log unless this host recorded it already.
    async fn record(&self, ledger: &Ledger, audit: &AuditLog, mode: &Mode) -> CallResult<()> {
        let recorded = ledger.meta(&self.recorded_key)?;
        if recorded.as_deref() == Some(mode.id.as_str()) {
            return Ok(());
        }
        let mut entry = airlock_audit::Entry::new(Event::ModeChanged);
        entry.principal = Some(mode.by.clone());
        entry.decision = Some(
            if mode.read_only {
                "read_only"
            } else {
                "normal"
            }
            .to_owned(),
        );
        entry.reason = mode.reason.clone();
        crate::audit::append(audit, &entry, airlock_audit::Durability::Flushed)
            .await
            .map_err(CallError::AuditUnavailable)?;
        Ok(ledger.set_meta(&self.recorded_key, &mode.id)?)
    }
}
