//! The host mode: normal, or read-only (every tool that is not `read` is
//! refused). One switch for every host sharing a backend: each host reads
//! the mode at every call.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One switch of the mode.
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

/// Where the mode lives.
///
/// Contract: after `set` returns, every later `get` — from any host sharing
/// the backend — sees that switch (or a later one).
pub trait ModeStore: Send + Sync + fmt::Debug {
    /// The current mode (`None`: normal, never switched).
    ///
    /// # Errors
    /// When the mode cannot be read: callers fail closed.
    fn get(&self) -> Result<Option<Mode>>;
    /// Switch.
    fn set(&self, mode: &Mode) -> Result<()>;
    /// Whether a switch could be written now, without making one (a
    /// readiness check: a takeover that cannot switch the mode fails in
    /// the middle of an incident). The default says yes; a store that can
    /// tell otherwise checks.
    ///
    /// # Errors
    /// Why a switch would fail.
    fn check_writable(&self) -> Result<()> {
        Ok(())
    }
}
