//! The host's mode: the operator's read-only switch, `mode.json` in the
//! data directory. The pipeline's admission step (step 2) asks it for the
//! current mode; each host records every switch it sees in the audit log,
//! once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_audit::{AuditLog, Event};
use serde::{Deserialize, Serialize};

use crate::error::{CallError, CallResult, Error, Result};
use crate::ledger::Ledger;

/// The mode file inside the data directory.
pub const MODE_FILE: &str = "mode.json";

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The operator's switch (`mode.json` in the data directory): read-only
/// refuses every tool that is not `read`. A file, so an operator can flip it
/// while a host runs; each host records every switch it sees in the audit
/// log, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mode {
    /// Refuse everything but `read` tools.
    pub read_only: bool,
    /// Unique id of this switch.
    pub id: String,
    /// Who switched.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Write `mode` to `data_dir` atomically.
///
/// # Errors
/// [`Error::Io`].
pub fn write_mode(data_dir: &Path, mode: &Mode) -> Result<()> {
    let path = data_dir.join(MODE_FILE);
    let tmp = data_dir.join(format!("{MODE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(mode).map_err(|e| Error::Config {
        message: format!("cannot encode the mode: {e}"),
    })?;
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(&path, e))
}

/// Watches the mode file; cheap enough for every call (one `stat`). A
/// switch it sees is pending until recorded in the audit log.
#[derive(Debug)]
pub(crate) struct ModeWatch {
    /// The mode file; `None` for a host without a data directory.
    path: Option<PathBuf>,
    seen: Mutex<Option<(SystemTime, u64, Option<Mode>)>>,
    /// Set by [`ModeWatch::set`] for hosts without a data directory.
    memory: Mutex<Option<Mode>>,
    /// A mode switch seen but not yet recorded.
    pending: Mutex<Option<Mode>>,
}

impl ModeWatch {
    pub(crate) fn new(data_dir: Option<&Path>) -> ModeWatch {
        ModeWatch {
            path: data_dir.map(|d| d.join(MODE_FILE)),
            seen: Mutex::new(None),
            memory: Mutex::new(None),
            pending: Mutex::new(None),
        }
    }

    /// Switch to read-only mode or back, recording the switch in the audit
    /// log (see [`Host::set_mode`](crate::Host::set_mode)).
    pub(crate) async fn set(
        &self,
        data_dir: Option<&Path>,
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
        match data_dir {
            Some(dir) => write_mode(dir, &mode)?,
            None => {
                if let Ok(mut m) = self.memory.lock() {
                    *m = Some(mode.clone());
                }
                record_mode(ledger, audit, &mode).await?;
            }
        }
        // Observe (and record) it now rather than at the next call.
        self.mode()?;
        let _ = self.record_pending(ledger, audit).await;
        Ok(mode)
    }

    /// The current mode (`None`: normal, never switched); a change since
    /// last asked becomes pending, to be recorded.
    pub(crate) fn mode(&self) -> CallResult<Option<Mode>> {
        let (mode, changed) = self.current()?;
        if changed
            && let Some(m) = &mode
            && let Ok(mut pending) = self.pending.lock()
        {
            *pending = Some(m.clone());
        }
        Ok(mode)
    }

    /// Record the pending switch, if any, in the audit log.
    pub(crate) async fn record_pending(&self, ledger: &Ledger, audit: &AuditLog) -> CallResult<()> {
        let pending = self.pending.lock().ok().and_then(|mut p| p.take());
        if let Some(mode) = pending {
            record_mode(ledger, audit, &mode).await?;
        }
        Ok(())
    }

    /// The current mode, and whether it changed since last asked.
    fn current(&self) -> CallResult<(Option<Mode>, bool)> {
        let Some(path) = &self.path else {
            let memory = self.memory.lock().map(|m| m.clone()).unwrap_or_default();
            return Ok((memory, false));
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => Some((meta.modified().unwrap_or(UNIX_EPOCH), meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Cannot tell the mode: fail closed.
            Err(e) => return Err(CallError::io(path, e)),
        };
        let mut seen = self.seen.lock().map_err(|_| CallError::Config {
            message: "mode watcher poisoned".into(),
        })?;
        match (&*seen, meta) {
            (Some((t, len, mode)), Some((t2, len2))) if *t == t2 && *len == len2 => {
                Ok((mode.clone(), false))
            }
            (None, None) => Ok((None, false)),
            (_, None) => {
                *seen = None;
                Ok((None, true))
            }
            (_, Some((t, len))) => {
                let text = std::fs::read_to_string(path).map_err(|e| CallError::io(path, e))?;
                let mode: Mode = serde_json::from_str(&text).map_err(|e| CallError::Config {
                    message: format!("{} is not a valid mode file: {e}", path.display()),
                })?;
                *seen = Some((t, len, Some(mode.clone())));
                Ok((Some(mode), true))
            }
        }
    }
}

/// Record `mode` in the audit log unless this host's ledger says it was.
async fn record_mode(ledger: &Ledger, audit: &AuditLog, mode: &Mode) -> CallResult<()> {
    let recorded = ledger.meta("mode_recorded")?;
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
    crate::audit::append(audit, entry, airlock_audit::Durability::Flushed)
        .await
        .map_err(CallError::AuditUnavailable)?;
    Ok(ledger.set_meta("mode_recorded", &mode.id)?)
}
