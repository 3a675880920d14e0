//! Airlock's embedded storage backend: sled databases under the data
//! directory, one host, no server.
//!
//! Implements the traits of `airlock-store` with the layouts earlier
//! versions wrote, so existing data directories open as they are.

#![deny(missing_docs)]

mod ledger;
mod mode;
mod workspace;

pub use ledger::SledLedger;
pub use mode::{FileMode, MODE_FILE};
pub use workspace::{LAYOUT as WORKSPACE_LAYOUT, SledWorkspace};
