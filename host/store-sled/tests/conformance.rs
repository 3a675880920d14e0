//! The storage seam's conformance suite against the sled backend.
//!
//! sled is held by one process, so a "peer" is another handle on the same
//! open database — the races run between threads of one host.

use std::sync::Arc;

use airlock_store::Stores;
use airlock_store_sled::{FileMode, SledLedger, SledWorkspace};

fn fresh() -> Stores {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let db = sled::Config::new()
        .path(dir.join("db"))
        .open()
        .expect("open sled");
    let memory = Stores::memory();
    Stores {
        description: format!("sled at {}", dir.display()),
        ledger: Arc::new(SledLedger::new(&dir, db.clone()).expect("ledger")),
        workspace: Arc::new(SledWorkspace::new(&dir, db).expect("workspace")),
        mode: Arc::new(FileMode::new(&dir)),
        ..memory
    }
}

fn peer(stores: &Stores) -> Stores {
    stores.clone()
}

airlock_store::conformance_tests!(fresh, peer);
