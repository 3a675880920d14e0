//! The log over the storage seam: data written before the seam, the
//! in-memory store, and many origins' chains in one store.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use airlock_audit::{
    AuditConfig, AuditLog, Durability, Entry, Event, KEYS_DIR, KeyRing, KeySource, OUTCOME_UNKNOWN,
    Problem, read_export_chains, verify_export_chains,
};
use airlock_store::{AuditStore, AuditWrite, MemoryStore, Result as StoreResult};

fn entry(i: u64) -> Entry {
    let mut e = Entry::new(if i % 2 == 1 {
        Event::CallStarted
    } else {
        Event::CallFinished
    });
    e.call_id = Some(format!("call-{}", i.div_ceil(2)));
    e.tool = Some("text/stats".into());
    if i.is_multiple_of(2) {
        e.outcome = Some("ok".into());
    }
    e
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), &target).unwrap();
        }
    }
}

/// A copy of an audit directory written by Airlock 0.1 before the storage
/// seam (`tests/fixtures/audit-0.1`: ten records of five calls, then one
/// call left in flight; checkpoints at 4, 8 and 11).
fn old_audit_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-0.1");
    copy_dir(&fixture, dir.path());
    #[cfg(unix)]
    for key in ["signing.key", "redaction.key"] {
        use std::os::unix::fs::PermissionsExt;
        // git keeps no modes; the host refuses keys others can read.
        std::fs::set_permissions(dir.path().join(key), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    dir
}

#[test]
fn a_log_written_before_the_seam_opens_verifies_and_continues() {
    let dir = old_audit_dir();
    // Read-only first: exactly what was written.
    let log = AuditLog::open_read_only(dir.path()).unwrap();
    let report = log.verify(&[]).unwrap().unwrap();
    assert_eq!(report.records, 11);
    assert_eq!(report.last_checkpoint, Some(11));
    assert_eq!(
        log.checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect::<Vec<_>>(),
        [4, 8, 11]
    );
    drop(log);
    // A host opening it recovers the call left in flight and goes on.
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    let recovered = log.get(12).unwrap().unwrap();
    assert_eq!(recovered.entry.call_id.as_deref(), Some("call-in-flight"));
    assert_eq!(recovered.entry.outcome.as_deref(), Some(OUTCOME_UNKNOWN));
    let next = log.append(entry(13), Durability::Flushed).unwrap();
    assert_eq!(next.seq, 13);
    assert_eq!(next.prev_hash, recovered.hash);
    let all = log.verify_all(&[]).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].origin, "local");
    assert_eq!(all[0].key_source, KeySource::Own);
    assert_eq!(all[0].result.as_ref().unwrap().records, 13);
    log.close().unwrap();
}

#[test]
fn the_log_works_over_the_memory_store() {
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let log =
        AuditLog::with_store(store.clone(), "host-a", dir.path(), AuditConfig::default()).unwrap();
    for i in 1..=5 {
        log.append(entry(i), Durability::Batched).unwrap();
    }
    log.flush().unwrap();
    assert_eq!(log.verify(&[]).unwrap().unwrap().records, 5);
    assert!(dir.path().join(KEYS_DIR).join("host-a.pub").is_file());
    drop(log);
    // Reopened over the same store: call-3 was left in flight.
    let log =
        AuditLog::with_store(store.clone(), "host-a", dir.path(), AuditConfig::default()).unwrap();
    let recovered = log.get(6).unwrap().unwrap();
    assert_eq!(recovered.entry.call_id.as_deref(), Some("call-3"));
    assert_eq!(recovered.entry.outcome.as_deref(), Some(OUTCOME_UNKNOWN));
    assert!(store.open_calls("host-a").unwrap().is_empty());
    let report = log.verify(&[]).unwrap().unwrap();
    assert_eq!(report.records, 6);
    assert_eq!(report.unsigned_tail, 0);
}

#[test]
fn an_invalid_origin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for origin in ["", "../x", "a/b", ".hidden", "-x", &"a".repeat(65)] {
        let err = AuditLog::with_store(
            Arc::new(MemoryStore::new()),
            origin,
            dir.path(),
            AuditConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid audit origin"), "{err}");
    }
}

/// A store whose record `seq` of `origin` reads back changed, as if edited
/// in the database.
#[derive(Debug)]
struct Tampered {
    inner: MemoryStore,
    edit: Mutex<Option<(String, u64)>>,
    /// The edit leaves the record unreadable (not JSON).
    garble: Mutex<bool>,
}

impl Tampered {
    fn changed(&self, origin: &str, seq: u64, bytes: Vec<u8>) -> Vec<u8> {
        let edit = self.edit.lock().unwrap();
        if edit.as_ref() == Some(&(origin.to_owned(), seq)) && *self.garble.lock().unwrap() {
            b"{garbled".to_vec()
        } else if edit.as_ref() == Some(&(origin.to_owned(), seq)) {
            String::from_utf8(bytes)
                .unwrap()
                .replace("text/stats", "text/steal")
                .into_bytes()
        } else {
            bytes
        }
    }
}

impl AuditStore for Tampered {
    fn head(&self, origin: &str) -> StoreResult<Option<(u64, Vec<u8>)>> {
        self.inner.head(origin)
    }
    fn write(&self, origin: &str, writes: &[AuditWrite]) -> StoreResult<()> {
        self.inner.write(origin, writes)
    }
    fn record(&self, origin: &str, seq: u64) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .inner
            .record(origin, seq)?
            .map(|b| self.changed(origin, seq, b)))
    }
    fn records(&self, origin: &str, from: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        Ok(self
            .inner
            .records(origin, from, limit)?
            .into_iter()
            .map(|(seq, b)| (seq, self.changed(origin, seq, b)))
            .collect())
    }
    fn put_checkpoint(&self, origin: &str, seq: u64, bytes: &[u8]) -> StoreResult<()> {
        self.inner.put_checkpoint(origin, seq, bytes)
    }
    fn checkpoints(&self, origin: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.inner.checkpoints(origin)
    }
    fn open_calls(&self, origin: &str) -> StoreResult<Vec<(String, u64)>> {
        self.inner.open_calls(origin)
    }
    fn clear_open_call(&self, origin: &str, call_id: &str) -> StoreResult<()> {
        self.inner.clear_open_call(origin, call_id)
    }
    fn origins(&self) -> StoreResult<Vec<String>> {
        self.inner.origins()
    }
    fn flush(&self) -> StoreResult<()> {
        self.inner.flush()
    }
}

#[test]
fn two_origins_in_one_store_verify_each_and_name_the_first_bad_record() {
    let store = Arc::new(Tampered {
        inner: MemoryStore::new(),
        edit: Mutex::new(None),
        garble: Mutex::new(false),
    });
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = AuditConfig {
        checkpoint_every: 3,
        ..AuditConfig::default()
    };
    let a = AuditLog::with_store(store.clone(), "host-a", dir_a.path(), config.clone()).unwrap();
    let b = AuditLog::with_store(store.clone(), "host-b", dir_b.path(), config).unwrap();
    for i in 1..=6 {
        a.append(entry(i), Durability::Batched).unwrap();
        b.append(entry(i), Durability::Batched).unwrap();
    }
    a.append(entry(7), Durability::Flushed).unwrap();
    b.checkpoint().unwrap();
    a.checkpoint().unwrap();
    assert_eq!(a.origins().unwrap(), ["host-a", "host-b"]);

    // Host A verifies both chains; B's key is not known to A yet, so B's
    // checkpoints are checked against the key they name.
    let all = a.verify_all(&[]).unwrap();
    let summary: Vec<_> = all
        .iter()
        .map(|v| {
            (
                v.origin.as_str(),
                v.key_source.clone(),
                v.result.as_ref().map(|r| r.records).ok(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("host-a", KeySource::Own, Some(7)),
            ("host-b", KeySource::Named, Some(6)),
        ]
    );
    // With B's public key copied into A's key directory it is a trusted one.
    let b_key = dir_b.path().join(KEYS_DIR).join("host-b.pub");
    let a_copy = dir_a.path().join(KEYS_DIR).join("host-b.pub");
    std::fs::copy(&b_key, &a_copy).unwrap();
    let all = a.verify_all(&[]).unwrap();
    assert_eq!(all[1].key_source, KeySource::File { path: a_copy });
    assert!(all[1].result.is_ok());
    // A key that is not B's fails B's checkpoints, and only B's.
    let mut ring = KeyRing::new();
    ring.insert("host-b", a.public_key());
    let all = a.verify_all_with(&ring, &BTreeMap::new()).unwrap();
    assert!(all[0].result.is_ok());
    let failure = all[1].result.as_ref().unwrap_err();
    assert!(
        matches!(failure.problem, Problem::BadSignature { .. }),
        "{failure}"
    );

    // Record 4 of B changed in the store: B fails there, A still verifies.
    *store.edit.lock().unwrap() = Some(("host-b".into(), 4));
    let all = a.verify_all(&[]).unwrap();
    assert!(all[0].result.is_ok(), "{:?}", all[0].result);
    let failure = all[1].result.as_ref().unwrap_err();
    assert_eq!((failure.seq, &failure.problem), (4, &Problem::HashMismatch));
    *store.edit.lock().unwrap() = None;

    // Reads merge both chains by time, each in its own order.
    let merged = a.query_all(&Default::default(), 100).unwrap();
    assert_eq!(merged.len(), 13);
    for pair in merged.windows(2) {
        let (x, y) = (&pair[0], &pair[1]);
        assert!(
            (x.record.time_ms, &x.origin, x.record.seq)
                < (y.record.time_ms, &y.origin, y.record.seq),
            "out of order: {x:?} then {y:?}"
        );
    }
    let last_two = a.query_all(&Default::default(), 2).unwrap();
    assert_eq!(last_two.as_slice(), &merged[11..]);
    // A chain with a record that does not parse fails a read of every
    // chain, and is named beside the others' records by one that reports.
    *store.edit.lock().unwrap() = Some(("host-b".into(), 4));
    *store.garble.lock().unwrap() = true;
    let err = a.query_all(&Default::default(), 100).unwrap_err();
    assert!(err.to_string().contains('4'), "{err}");
    let found = a.query_every_chain(&Default::default(), 100).unwrap();
    assert_eq!(found.unreadable.len(), 1, "{:?}", found.unreadable);
    assert_eq!(found.unreadable[0].0, "host-b");
    let of_a: Vec<_> = merged
        .iter()
        .filter(|r| r.origin == "host-a")
        .cloned()
        .collect();
    // A's records are all there (none of B's page that failed).
    assert_eq!(
        found
            .records
            .iter()
            .filter(|r| r.origin == "host-a")
            .cloned()
            .collect::<Vec<_>>(),
        of_a
    );
    *store.edit.lock().unwrap() = None;
    *store.garble.lock().unwrap() = false;
    let after: BTreeMap<String, u64> = [("host-a".to_owned(), 5), ("host-b".to_owned(), 6)].into();
    let tail: Vec<_> = a
        .records_all(&after)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.origin, r.record.seq)
        })
        .collect();
    assert_eq!(tail, [("host-a".to_owned(), 6), ("host-a".to_owned(), 7)]);
}

#[test]
fn an_export_of_every_chain_verifies_offline_and_names_the_bad_one() {
    let store = Arc::new(MemoryStore::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = AuditLog::with_store(
        store.clone(),
        "host-a",
        dir_a.path(),
        AuditConfig::default(),
    )
    .unwrap();
    let b = AuditLog::with_store(
        store.clone(),
        "host-b",
        dir_b.path(),
        AuditConfig::default(),
    )
    .unwrap();
    for i in 1..=4 {
        a.append(entry(i), Durability::Batched).unwrap();
        b.append(entry(i), Durability::Batched).unwrap();
    }
    b.checkpoint().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("all.jsonl");
    let chains = a.export_all(&file).unwrap();
    assert_eq!(
        chains
            .iter()
            .map(|c| (c.origin.as_str(), c.records))
            .collect::<Vec<_>>(),
        [("host-a", 4), ("host-b", 4)]
    );
    let mut ring = KeyRing::new();
    ring.insert("host-a", a.public_key());
    ring.insert("host-b", b.public_key());
    let results = verify_export_chains(&file, &ring, &BTreeMap::new()).unwrap();
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r.key_source, KeySource::Given);
        assert_eq!(r.result.as_ref().unwrap().records, 4, "{}", r.origin);
    }
    // Change B's record 2 in the file.
    let text = std::fs::read_to_string(&file).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("{\"origin\":\"host-b\",\"record\":{") && l.contains("\"seq\":2,") {
                l.replace("text/stats", "text/steal")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();
    let results = verify_export_chains(&file, &ring, &BTreeMap::new()).unwrap();
    assert!(results[0].result.is_ok());
    let failure = results[1].result.as_ref().unwrap_err();
    assert_eq!((failure.seq, &failure.problem), (2, &Problem::HashMismatch));

    // A version 1 export (this log's chain alone) reads as one chain.
    let v1 = out.path().join("a.jsonl");
    a.export(&v1).unwrap();
    let chains = read_export_chains(&v1).unwrap();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].origin, "host-a");
    assert_eq!(chains[0].records.len(), 4);
    let results = verify_export_chains(&v1, &ring, &BTreeMap::new()).unwrap();
    assert!(results[0].result.is_ok());
}

#[test]
fn two_writers_of_one_origin_never_fork_its_chain() {
    let store = Arc::new(MemoryStore::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = AuditLog::with_store(
        store.clone(),
        "host-a",
        dir_a.path(),
        AuditConfig::default(),
    )
    .unwrap();
    let mode = |i: u64| {
        let mut e = Entry::new(Event::ModeChanged);
        e.decision = Some(format!("switch-{i}"));
        e
    };
    first.append(mode(1), Durability::Flushed).unwrap();
    // A second host wrongly configured with the same origin id (and, so
    // that it starts at all, a copy of the first one's keys).
    for key in [
        airlock_audit::SIGNING_KEY_FILE,
        airlock_audit::REDACTION_KEY_FILE,
    ] {
        std::fs::copy(dir_a.path().join(key), dir_b.path().join(key)).unwrap();
    }
    let second = AuditLog::with_store(
        store.clone(),
        "host-a",
        dir_b.path(),
        AuditConfig::default(),
    )
    .unwrap();
    first.append(mode(2), Durability::Flushed).unwrap();
    let err = second.append(mode(3), Durability::Flushed).unwrap_err();
    assert!(err.to_string().contains("another process appends"), "{err}");
    // Its record stays queued and is never stored over the first host's.
    let err = second.flush().unwrap_err();
    assert!(err.to_string().contains("another process appends"), "{err}");
    assert_eq!(first.verify(&[]).unwrap().unwrap().records, 2);
}

#[cfg(feature = "sled")]
#[test]
fn a_sled_store_refuses_a_second_origin() {
    let dir = tempfile::tempdir().unwrap();
    let store = airlock_store_sled::SledAudit::open(
        &dir.path().join("db"),
        "local",
        &airlock_store_sled::SledAuditOptions::default(),
    )
    .unwrap();
    let log =
        AuditLog::with_store(Arc::new(store), "other", dir.path(), AuditConfig::default()).unwrap();
    let err = log.append(entry(1), Durability::Flushed).unwrap_err();
    assert!(
        err.to_string().contains("holds the chain of origin"),
        "{err}"
    );
}
