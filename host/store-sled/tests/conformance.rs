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

/// Records stored one per key by earlier versions (`r`‖seq, `c`‖seq,
/// `o`‖call id in the tree `audit`) are read as they are; new records go
/// into a segment after them, behind a fence that an earlier version reads
/// as a head record without a hash (and so refuses the log).
#[test]
fn a_log_of_records_stored_alone_reads_and_goes_on_in_segments() {
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
    let writes: Vec<_> = [(3, "three"), (4, "four"), (5, "five")]
        .into_iter()
        .map(|(seq, text)| AuditWrite {
            seq,
            bytes: text.as_bytes().to_vec(),
            marker: if seq == 3 {
                Marker::Close("call-2".into())
            } else {
                Marker::None
            },
        })
        .collect();
    store.write("local", &writes).unwrap();
    let expected: Vec<(u64, Vec<u8>)> = [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
        (5, "five"),
    ]
    .into_iter()
    .map(|(seq, text)| (seq, text.as_bytes().to_vec()))
    .collect();
    assert_eq!(store.records("local", 1, 10).unwrap(), expected);
    assert_eq!(store.records("local", 2, 2).unwrap(), expected[1..3]);
    assert_eq!(store.records("local", 4, 10).unwrap(), expected[3..]);
    assert_eq!(
        store.record("local", 4).unwrap().as_deref(),
        Some(&b"four"[..])
    );
    assert_eq!(
        store.record("local", 1).unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(store.record("local", 6).unwrap(), None);
    assert_eq!(
        store.record("local", u64::MAX).unwrap(),
        None,
        "the fence is no record"
    );
    assert_eq!(store.head("local").unwrap(), Some((5, b"five".to_vec())));
    store.flush().unwrap();
    drop(store);

    let db =
        airlock_store_sled::open::open(&sled::Config::new().path(&path), options.lock_wait, "db")
            .unwrap();
    let tree = db.open_tree("audit").unwrap();
    assert!(
        tree.get(b"ocall-2").unwrap().is_none(),
        "the marker is cleared"
    );
    assert!(
        tree.get(raw_key(b'r', 3)).unwrap().is_none(),
        "not stored alone"
    );
    let segment = tree.get(raw_key(b's', 3)).unwrap().unwrap();
    assert_eq!(
        segment.as_ref(),
        b"\x01\x00\x00\x00\x05three\x00\x00\x00\x04four\x00\x00\x00\x04five",
        "format byte, then each record's length (u32 big-endian) and bytes"
    );
    // What an earlier version takes for the head: the fence, which has no
    // hash to go on from.
    let (k, v) = tree.scan_prefix(b"r").next_back().unwrap().unwrap();
    assert_eq!(k.as_ref(), raw_key(b'r', u64::MAX));
    let fence: serde_json::Value = serde_json::from_slice(&v).unwrap();
    assert!(fence.get("hash").is_none(), "{fence}");
    drop(tree);
    drop(db);

    // And it opens again where it was.
    let store = SledAudit::open(&path, "local", &options).unwrap();
    assert_eq!(store.head("local").unwrap(), Some((5, b"five".to_vec())));
    assert_eq!(store.origins().unwrap(), ["local"]);
}

/// A fresh log holds segments only (and the fence once written to).
#[test]
fn a_new_log_writes_segments_and_opens_at_their_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let options = SledAuditOptions::default();
    let big = vec![b'x'; airlock_store_sled::SEGMENT_BYTES];
    {
        let store = SledAudit::open(&path, "local", &options).unwrap();
        assert!(
            store.origins().unwrap().is_empty(),
            "the fence is no record"
        );
        let writes: Vec<_> = (1..=40)
            .map(|seq| AuditWrite {
                seq,
                bytes: if seq == 20 {
                    big.clone()
                } else {
                    format!("{{\"seq\":{seq}}}").into_bytes()
                },
                marker: Marker::None,
            })
            .collect();
        store.write("local", &writes[..25]).unwrap();
        store.write("local", &writes[25..]).unwrap();
        let all = store.records("local", 1, 100).unwrap();
        assert_eq!(all.len(), 40);
        assert!(
            all.iter()
                .zip(&writes)
                .all(|((s, b), w)| *s == w.seq && *b == w.bytes)
        );
        // Pages that start inside a segment.
        for from in 1..=40u64 {
            let page = store.records("local", from, 3).unwrap();
            let seqs: Vec<u64> = page.iter().map(|(s, _)| *s).collect();
            let want: Vec<u64> = (from..=40).take(3).collect();
            assert_eq!(seqs, want, "page from {from}");
            assert_eq!(
                store.record("local", from).unwrap().unwrap(),
                writes[from as usize - 1].bytes
            );
        }
        store.flush().unwrap();
    }
    let store = SledAudit::open(&path, "local", &options).unwrap();
    assert_eq!(store.head("local").unwrap().map(|(s, _)| s), Some(40));
    let err = store
        .write(
            "local",
            &[AuditWrite {
                seq: 40,
                bytes: b"again".to_vec(),
                marker: Marker::None,
            }],
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
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

/// A damaged idempotency entry (a key or body that does not decode) is
/// named by recovery and the sweep and left in place; it stops neither,
/// and a call with its key fails rather than runs.
#[test]
fn a_garbled_idempotency_entry_is_reported_and_left_in_place() {
    use airlock_store::{Claim, KeyRef, Ledger};
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .open()
        .unwrap();
    let ledger = Ledger::new(Arc::new(SledLedger::new(dir.path(), db.clone()).unwrap()));
    let day = std::time::Duration::from_secs(86_400);
    let fine = KeyRef::new("agent", "p", "t", "fine");
    ledger.claim(&fine, "d", ("c1", "h"), 0, day).unwrap();
    let garbled = KeyRef::new("agent", "p", "t", "garbled");
    let tree = db.open_tree("idempotency").unwrap();
    tree.insert(garbled.encode(), &b"{\"created_ms\": 0, \"sta"[..])
        .unwrap();
    tree.insert(&b"\xff not a key"[..], &b"{}"[..]).unwrap();

    let recovery = ledger.recover("h").unwrap();
    assert_eq!(recovery.changed, vec![fine.clone()]);
    assert_eq!(recovery.unreadable.len(), 2, "{recovery:?}");
    assert!(
        recovery
            .unreadable
            .iter()
            .any(|e| e.contains("\"garbled\" of p/t")),
        "{recovery:?}"
    );
    let report = ledger.sweep(2 * 86_400_000, day, day).unwrap();
    assert_eq!(report.keys_removed, 1, "{report:?}");
    assert_eq!(report.unreadable.len(), 2, "{report:?}");
    let err = ledger
        .claim(&garbled, "d", ("c2", "h"), 2 * 86_400_000, day)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(
        ledger
            .claim(&fine, "d", ("c3", "h"), 2 * 86_400_000, day)
            .unwrap(),
        Claim::Claimed
    );
}

/// Names and values sled holds as bytes are read as the UTF-8 they were
/// written as or refused as corrupt: a lossy decoding named another
/// plugin, key, call or meta value than the one stored. A rollout whose
/// version cannot grow is refused rather than swapped in place (which
/// would let a second writer holding that version swap too).
#[test]
fn damaged_names_and_a_rollout_version_at_its_end_are_corrupt() {
    use airlock_store::{
        KeyOwner, LedgerStore, PluginStore, Rollout, RolloutAction, RolloutChange, WorkspaceStore,
    };
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .open()
        .unwrap();

    let ledger = SledLedger::new(dir.path(), db.clone()).unwrap();
    ledger.set_meta("policy", "fine").unwrap();
    assert_eq!(ledger.meta("policy").unwrap().as_deref(), Some("fine"));
    db.open_tree("meta")
        .unwrap()
        .insert(b"policy", &b"fi\xffne"[..])
        .unwrap();
    let err = ledger.meta("policy").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("meta `policy`"), "{err}");

    let workspace = SledWorkspace::new(dir.path(), db.clone()).unwrap();
    let tree = db.open_tree("workspace").unwrap();
    let mut key = b"knotes\0".to_vec();
    key.extend_from_slice(KeyOwner::Plugin.encode().as_bytes());
    key.push(0);
    key.extend_from_slice(b"\xc3\x28");
    tree.insert(key, &b"1"[..]).unwrap();
    let err = workspace
        .list_keys("notes", &KeyOwner::Plugin, "", None, 10)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    tree.insert(&b"u\xffnotes"[..], &[0u8; 16][..]).unwrap();
    let err = workspace.plugins().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");

    let plugins = FilePlugins::new(dir.path());
    let rollout = Rollout {
        plugin: "text".into(),
        serving: "1.0.0".into(),
        canary: None,
        previous: None,
        change: RolloutChange {
            id: "c".into(),
            action: RolloutAction::Activate,
            by: "ops".into(),
            reason: None,
            at_ms: 1,
            approval_id: None,
        },
    };
    assert!(plugins.insert_rollout(&rollout).unwrap());
    let path = dir
        .path()
        .join(airlock_store_sled::INSTALLED_DIR)
        .join("rollouts/text.json");
    let mut stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    stored["version"] = serde_json::json!(u64::MAX);
    std::fs::write(&path, serde_json::to_vec(&stored).unwrap()).unwrap();
    let seen = plugins.rollout("text").unwrap().unwrap();
    let err = plugins.replace_rollout(seen.version, &rollout).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("maximum"), "{err}");
    // Nothing was written.
    assert_eq!(
        plugins.rollout("text").unwrap().unwrap().version,
        seen.version
    );
}

/// What may be found under `installed/` besides the store's own files: a
/// stray file among the plugins' directories, a damaged artifact, a pipe
/// where a record should be. Each is reported or skipped; none blocks a
/// reader or hides the other plugins.
#[test]
fn stray_damaged_and_special_files_under_installed_are_survived() {
    use airlock_store::{Installed, Releases, Rollout, RolloutAction, RolloutChange, VersionFiles};
    let dir = tempfile::tempdir().unwrap();
    let releases = Releases::new(Arc::new(FilePlugins::new(dir.path())));
    let files = VersionFiles {
        manifest: b"manifest",
        component: b"component",
        component_file: "c.wasm",
        cases: None,
        signature: None,
    };
    let Installed::New(installed) = releases
        .install("text", "1.0.0", files, None, "ops", 1)
        .unwrap()
    else {
        panic!("installed before")
    };
    let root = dir.path().join(airlock_store_sled::INSTALLED_DIR);

    // A stray file beside the plugins' directories is no plugin's.
    std::fs::write(root.join("versions/README"), "notes").unwrap();
    std::fs::create_dir(root.join("versions/Not-A-Name")).unwrap();
    let listed: Vec<String> = releases
        .versions(None)
        .unwrap()
        .into_iter()
        .map(|v| v.plugin)
        .collect();
    assert_eq!(listed, ["text"]);
    // So is a file among a plugin's versions not named as a version is.
    std::fs::write(root.join("versions/text/notes.txt"), "notes").unwrap();
    std::fs::write(root.join("versions/text/-bad-.json"), "{}").unwrap();
    assert_eq!(releases.versions(Some("text")).unwrap().len(), 1);
    assert_eq!(
        releases.version_names(None).unwrap(),
        [("text".to_owned(), "1.0.0".to_owned())]
    );
    // A record copied under another version's name is refused, not served
    // as that version; the names still list it.
    let record = root.join("versions/text/1.0.0.json");
    std::fs::copy(&record, root.join("versions/text/9.0.0.json")).unwrap();
    let err = releases.version("text", "9.0.0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("holds version 1.0.0"), "{err}");
    assert!(releases.versions(None).is_err());
    assert_eq!(releases.version_names(Some("text")).unwrap().len(), 2);
    std::fs::remove_file(root.join("versions/text/9.0.0.json")).unwrap();

    // A damaged artifact is reported with its remedy, and installing the
    // package again writes it anew.
    let component = root.join("artifacts").join(&installed.component_digest);
    std::fs::write(&component, "damaged").unwrap();
    let err = releases.artifact(&installed.component_digest).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("install the package"), "{err}");
    assert!(matches!(
        releases
            .install("text", "1.0.0", files, None, "ops", 2)
            .unwrap(),
        Installed::Already(_)
    ));
    assert_eq!(
        releases.artifact(&installed.component_digest).unwrap(),
        b"component"
    );

    // A pipe where a record or an artifact should be is refused without
    // being opened (opening it would wait for a writer, forever).
    let rollout = Rollout {
        plugin: "text".into(),
        serving: "1.0.0".into(),
        canary: None,
        previous: None,
        change: RolloutChange {
            id: "c".into(),
            action: RolloutAction::Activate,
            by: "ops".into(),
            reason: None,
            at_ms: 1,
            approval_id: None,
        },
    };
    assert!(releases.store().insert_rollout(&rollout).unwrap());
    for fifo in [
        root.join("rollouts/json.json"),
        root.join("artifacts").join("0".repeat(64)),
    ] {
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
    }
    let err = releases.rollout("json").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = releases.store().artifact(&"0".repeat(64)).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // The listing fails on it; the names do not, so each record is read
    // on its own and the others' are served.
    assert!(releases.rollouts().is_err());
    assert_eq!(releases.rollout_names().unwrap(), ["json", "text"]);
    assert_eq!(releases.rollout("text").unwrap().unwrap().value, rollout);
}
