//! Airlock's embedded storage backend: the traits of `airlock-store` over
//! sled databases in the host's data directory, and the mode as a file
//! beside them. One process holds a database at a time (another one waits
//! for its lock, then is told it is
//! [`Locked`](airlock_store::ErrorKind::Locked)); no server to run.
//!
//! The layouts are the ones earlier versions wrote, so existing data
//! directories open as they are.

#![deny(missing_docs)]

mod audit;
mod ledger;
mod mode;
pub mod open;
mod plugins;
mod workspace;

pub use audit::{SledAudit, SledAuditOptions};
pub use ledger::SledLedger;
pub use mode::{FileMode, MODE_FILE};
pub use plugins::{FilePlugins, INSTALLED_DIR};
pub use workspace::{LAYOUT as WORKSPACE_LAYOUT, SledWorkspace};
