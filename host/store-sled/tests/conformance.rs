//! The storage conformance suite against the sled backend.
//!
//! Rate-limit buckets live in the host's memory with sled (one process
//! holds the data directory). A sled store holds the chain of one origin,
//! so the check that two origins keep separate chains runs against the
//! refusal below instead.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use airlock_store::{AuditStore, AuditWrite, ErrorKind, Marker, Stores};
use airlock_store_sled::{
    FileMode, FilePlugins, SledAudit, SledAuditOptions, SledLedger, SledWorkspace,
};

fn fresh() -> Stores {
    let dir = tempfile::tempdir().unwrap().keep();
    let db = sled::Config::new().path(dir.join("db")).open().unwrap();
    Stores {
        description: format!("sled at {}", dir.display()),
        audit: Arc::new(
            SledAudit::open(&dir.join("audit"), "h", &SledAuditOptions::default()).unwrap(),
        ),
        ledger: Arc::new(SledLedger::new(&dir, db.clone()).unwrap()),
        workspace: Arc::new(SledWorkspace::new(&dir, db).unwrap()),
        mode: Arc::new(FileMode::new(&dir)),
        plugins: Arc::new(FilePlugins::new(&dir)),
        ..Stores::memory()
    }
}

/// sled admits one process: another "host" is another handle in it.
fn peer(stores: &Stores) -> Stores {
    stores.clone()
}

airlock_store::conformance_tests!(single_origin: fresh, peer);

fn write(seq: u64) -> AuditWrite {
    AuditWrite {
        seq,
        bytes: format!("{{\"seq\":{seq}}}").into_bytes(),
        marker: Marker::None,
    }
}

#[test]
fn a_sled_store_holds_its_own_origin_only() {
    let store = SledAudit::temporary("host-a").unwrap();
    assert!(store.origins().unwrap().is_empty(), "no records, no origin");
    store.write("host-a", &[write(1)]).unwrap();
    let err = store.write("host-b", &[write(1)]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("\"host-a\" only"), "{err}");
    assert_eq!(
        store.put_checkpoint("host-b", 1, b"x").unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(store.origins().unwrap(), ["host-a"]);
    assert_eq!(store.head("host-b").unwrap(), None);
    assert!(store.records("host-b", 1, 10).unwrap().is_empty());
    assert_eq!(store.head("host-a").unwrap().map(|h| h.0), Some(1));
}

fn raw_key(prefix: u8, seq: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The keys Airlock has always written (`r`‖seq, `c`‖seq, `o`‖call id in
/// the tree `audit`) are what the store reads and writes.
#[test]
fn the_layout_is_the_one_airlock_always_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = sled::Config::new().path(&path).open().unwrap();
        let tree = db.open_tree("audit").unwrap();
        tree.insert(raw_key(b'r', 1), &b"one"[..]).unwrap();
        tree.insert(raw_key(b'r', 2), &b"two"[..]).unwrap();
        tree.insert(raw_key(b'c', 2), &b"cp"[..]).unwrap();
        tree.insert(b"ocall-2", &2u64.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let options = SledAuditOptions::default();
    let store = SledAudit::open(&path, "local", &options).unwrap();
    assert_eq!(store.head("local").unwrap(), Some((2, b"two".to_vec())));
    assert_eq!(store.checkpoints("local").unwrap(), [(2, b"cp".to_vec())]);
    assert_eq!(store.open_calls("local").unwrap(), [("call-2".into(), 2)]);
    store
        .write(
            "local",
            &[AuditWrite {
                seq: 3,
                bytes: b"three".to_vec(),
                marker: Marker::Close("call-2".into()),
            }],
        )
        .unwrap();
    store.flush().unwrap();
    drop(store);
    let db =
        airlock_store_sled::open::open(&sled::Config::new().path(&path), options.lock_wait, "db")
            .unwrap();
    let tree = db.open_tree("audit").unwrap();
    assert_eq!(tree.get(raw_key(b'r', 3)).unwrap().unwrap(), b"three");
    assert!(
        tree.get(b"ocall-2").unwrap().is_none(),
        "the marker is cleared"
    );
}

/// A store in layout 1 (keys scoped by caller-named sessions) is refused,
/// not read with other isolation.
#[test]
fn a_workspace_in_the_old_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let tree = db.open_tree("workspace").unwrap();
    tree.insert(b"kp\0\0k", b"v".to_vec()).unwrap();
    let err = SledWorkspace::new(dir.path(), db).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible);
    assert!(err.to_string().contains("layout 1"), "{err}");
}

/// Two handles on one data directory (two processes: `airlock rollout`
/// beside `airlock serve`) share versions and rollouts, one change winning.
#[test]
fn two_handles_on_one_data_directory_share_versions_and_rollouts() {
    use airlock_store::{
        Changed, Installed, Releases, Rollout, RolloutAction, RolloutChange, VersionFiles,
    };
    let dir = tempfile::tempdir().unwrap();
    let a = Releases::new(Arc::new(FilePlugins::new(dir.path())));
    let b = Releases::new(Arc::new(FilePlugins::new(dir.path())));
    let files = VersionFiles {
        manifest: b"m",
        component: b"c",
        component_file: "c.wasm",
        cases: None,
        signature: None,
    };
    assert!(matches!(
        a.install("text", "1.0.0", files, None, "ops", 1).unwrap(),
        Installed::New(_)
    ));
    assert!(matches!(
        b.install("text", "1.0.0", files, None, "ops", 2).unwrap(),
        Installed::Already(_)
    ));
    let rollout = |by: &str| Rollout {
        plugin: "text".into(),
        serving: "1.0.0".into(),
        canary: None,
        previous: None,
        change: RolloutChange {
            id: by.into(),
            action: RolloutAction::Activate,
            by: by.into(),
            reason: None,
            at_ms: 1,
            approval_id: None,
        },
    };
    assert!(matches!(
        a.change(None, rollout("a")).unwrap(),
        Changed::Done(_)
    ));
    let seen = b.rollout("text").unwrap().unwrap();
    assert!(matches!(
        b.change(Some(&seen), rollout("b")).unwrap(),
        Changed::Done(_)
    ));
    assert!(
        matches!(a.change(Some(&seen), rollout("a2")).unwrap(), Changed::Lost(Some(ref r)) if r.change.by == "b")
    );
    // Hostile names never become paths.
    assert!(a.version("../etc", "1").unwrap().is_none());
    assert!(b.store().version("text", "../../x").is_err());
}
