//! Paused tools and plugins: calls to them are refused with `tool_paused`
//! (pipeline step 2) until a human resumes them.
//!
//! Where the pauses live: one ledger meta value ([`PAUSES_META`], a JSON
//! map from `plugin` or `plugin/tool` to the pause), so every host sharing
//! the ledger — sled for one host, PostgreSQL for many — sees the same
//! pauses, through the seam every backend already implements and tests
//! (`meta`/`set_meta`, in the conformance suite). A new trait would buy
//! compare-and-swap, but pauses are rare, human-scale writes: a pause or
//! resume reads the map, changes one entry, writes it and reads it back,
//! retrying when another host's write replaced it in between.
//!
//! Each host reads the map again at most every [`PAUSE_REFRESH`], so a
//! pause reaches every host within that time (at once on the host that
//! made it). When the ledger cannot say, calls are refused: fail closed,
//! like the host mode.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{CallError, CallResult, Store, StoreError};
use crate::ledger::Ledger;

/// The ledger meta value holding the pauses.
pub(crate) const PAUSES_META: &str = "takeover/paused";
/// How often a host reads the pauses again.
pub const PAUSE_REFRESH: Duration = Duration::from_secs(1);
/// Longest pause target, in bytes.
const MAX_TARGET_BYTES: usize = 257;
/// Attempts at a pause or resume racing other hosts' writes.
const WRITE_ATTEMPTS: usize = 100;

/// A paused tool (`plugin/tool`) or plugin (`plugin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Pause {
    /// `plugin` or `plugin/tool`.
    pub target: String,
    /// Who paused it: `alert:RULE` for an alert's takeover, else the
    /// operator.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

type Table = BTreeMap<String, Pause>;

/// This host's view of the pauses.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    cached: Mutex<Option<(Instant, Arc<Table>)>>,
}

/// Check a pause target: `plugin` or `plugin/tool`, each part 1–128
/// characters of `[A-Za-z0-9._-]`.
pub(crate) fn check_target(target: &str) -> Result<(), String> {
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    let ok = target.len() <= MAX_TARGET_BYTES
        && match target.split_once('/') {
            Some((plugin, tool)) => part(plugin) && part(tool),
            None => part(target),
        };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid pause target {:?}: PLUGIN or PLUGIN/TOOL, each 1-128 characters of A-Z a-z 0-9 . _ -",
            airlock_audit::text::prefix(target, 80)
        ))
    }
}

fn read(ledger: &Ledger) -> Result<Table, StoreError> {
    read_text(ledger).map(|(table, _)| table)
}

/// The table and the stored text it was read from (`None`: none stored).
fn read_text(ledger: &Ledger) -> Result<(Table, Option<String>), StoreError> {
    let Some(text) = ledger
        .meta(PAUSES_META)
        .map_err(|e| StoreError::new(Store::Ledger, e))?
    else {
        return Ok((Table::new(), None));
    };
    let table = serde_json::from_str(&text).map_err(|e| {
        StoreError::new(
            Store::Ledger,
            airlock_store::StoreError::corrupt(format!(
                "the paused tools ({PAUSES_META}) are not readable: {e}"
            )),
        )
    })?;
    Ok((table, Some(text)))
}

impl Pauses {
    /// The pauses, read again when the copy is older than
    /// [`PAUSE_REFRESH`].
    fn table(&self, ledger: &Ledger) -> Result<Arc<Table>, StoreError> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, table)) = cached.as_ref()
            && at.elapsed() < PAUSE_REFRESH
        {
            return Ok(Arc::clone(table));
        }
        let table = Arc::new(read(ledger)?);
        *cached = Some((Instant::now(), Arc::clone(&table)));
        Ok(table)
    }

    /// Step 2: refuse a call of `plugin/tool` when it or its plugin is
    /// paused.
    pub(crate) fn check(&self, ledger: &Ledger, plugin: &str, tool: &str) -> CallResult<()> {
        let table = self.table(ledger)?;
        if table.is_empty() {
            return Ok(());
        }
        let id = format!("{plugin}/{tool}");
        if let Some(pause) = table.get(&id).or_else(|| table.get(plugin)) {
            return Err(CallError::ToolPaused {
                tool: id,
                by: pause.by.clone(),
                reason: pause.reason.clone(),
            });
        }
        Ok(())
    }

    /// Every pause, fresh from the ledger.
    pub(crate) fn list(&self, ledger: &Ledger) -> Result<Vec<Pause>, StoreError> {
        let table = read(ledger)?;
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), Arc::new(table.clone())));
        Ok(table.into_values().collect())
    }

    /// Pause `pause.target`; `false` when it was paused already (the
    /// first pause stays).
    pub(crate) fn pause(&self, ledger: &Ledger, pause: &Pause) -> Result<bool, StoreError> {
        self.change(ledger, |table| {
            if table.contains_key(&pause.target) {
                return false;
            }
            table.insert(pause.target.clone(), pause.clone());
            true
        })
        .map(|(changed, _)| changed)
    }

    /// Resume `target`: the pause it had, if any.
    pub(crate) fn resume(
        &self,
        ledger: &Ledger,
        target: &str,
    ) -> Result<Option<Pause>, StoreError> {
        let mut removed = None;
        self.change(ledger, |table| {
            removed = table.remove(target);
            removed.is_some()
        })?;
        Ok(removed)
    }

    /// Read, change and swap the table in (only over the text read), again
    /// if another host changed it meanwhile. A plain write and a read-back
    /// lost pauses: two hosts each saw their own write before the other's
    /// replaced it.
    fn change(
        &self,
        ledger: &Ledger,
        mut edit: impl FnMut(&mut Table) -> bool,
    ) -> Result<(bool, Table), StoreError> {
        let meta_error = |e| StoreError::new(Store::Ledger, e);
        for _ in 0..WRITE_ATTEMPTS {
            let (mut table, before) = read_text(ledger)?;
            if !edit(&mut table) {
                return Ok((false, table));
            }
            let text = serde_json::to_string(&table).map_err(|e| {
                meta_error(airlock_store::StoreError::corrupt(format!(
                    "cannot encode the paused tools: {e}"
                )))
            })?;
            if ledger
                .swap_meta(PAUSES_META, before.as_deref(), &text)
                .map_err(meta_error)?
            {
                *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), Arc::new(table.clone())));
                return Ok((true, table));
            }
        }
        Err(meta_error(airlock_store::StoreError::new(
            airlock_store::ErrorKind::Conflict,
            "the paused tools kept changing under this write; try again",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(Arc::new(airlock_store::MemoryStore::new()))
    }

    fn pause(target: &str) -> Pause {
        Pause {
            target: target.to_owned(),
            by: "alert:errors".to_owned(),
            reason: Some("error rate".to_owned()),
            at_ms: 1,
        }
    }

    #[test]
    fn a_paused_tool_or_plugin_is_refused_until_resumed() {
        let ledger = ledger();
        let pauses = Pauses::default();
        assert!(pauses.check(&ledger, "a", "b").is_ok());
        assert!(pauses.pause(&ledger, &pause("a/b")).unwrap());
        assert!(!pauses.pause(&ledger, &pause("a/b")).unwrap(), "once");
        let refused = pauses.check(&ledger, "a", "b").unwrap_err();
        assert_eq!(refused.kind(), "tool_paused");
        assert!(pauses.check(&ledger, "a", "c").is_ok());
        assert!(pauses.pause(&ledger, &pause("a")).unwrap());
        assert_eq!(
            pauses.check(&ledger, "a", "c").unwrap_err().kind(),
            "tool_paused"
        );
        assert_eq!(pauses.list(&ledger).unwrap().len(), 2);
        assert!(pauses.resume(&ledger, "a").unwrap().is_some());
        assert!(pauses.resume(&ledger, "a").unwrap().is_none());
        assert!(pauses.resume(&ledger, "a/b").unwrap().is_some());
        assert!(pauses.check(&ledger, "a", "b").is_ok());
    }

    #[test]
    fn a_pause_made_by_another_host_is_seen_within_the_refresh() {
        let ledger = ledger();
        let (here, there) = (Pauses::default(), Pauses::default());
        assert!(there.check(&ledger, "a", "b").is_ok());
        here.pause(&ledger, &pause("a/b")).unwrap();
        std::thread::sleep(PAUSE_REFRESH + Duration::from_millis(50));
        assert_eq!(
            there.check(&ledger, "a", "b").unwrap_err().kind(),
            "tool_paused"
        );
    }

    #[test]
    fn an_unreadable_pause_table_refuses_calls() {
        let ledger = ledger();
        ledger.set_meta(PAUSES_META, "{not json").unwrap();
        let refused = Pauses::default().check(&ledger, "a", "b").unwrap_err();
        assert!(matches!(refused, CallError::Store(_)), "{refused:?}");
    }

    #[test]
    fn pause_targets_are_checked() {
        for good in ["a", "a/b", "text-1/slug_ify.v2"] {
            assert!(check_target(good).is_ok(), "{good}");
        }
        for bad in ["", "/", "a/", "/b", "a/b/c", "a b", "a\n", &"x".repeat(300)] {
            assert!(check_target(bad).is_err(), "{bad:?}");
        }
    }
}
