//! Tampering with a real sled database and with exports: verification must
//! fail at the right record, for the right reason.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use airlock_audit::{
    AuditConfig, AuditLog, Checkpoint, DB_DIR, Durability, Entry, Error, Event, OUTCOME_UNKNOWN,
    Problem, VerifyFailure, chain_hash, read_export, verify_export,
};
use serde_json::Value;

fn entry(i: u64) -> Entry {
    let mut e = Entry::new(if i % 2 == 1 {
        Event::CallStarted
    } else {
        Event::CallFinished
    });
    e.call_id = Some(format!("call-{}", i.div_ceil(2)));
    e.tool = Some("text/stats".into());
    e.principal = Some("agent".into());
    if i.is_multiple_of(2) {
        e.outcome = Some("ok".into());
    }
    e
}

/// A closed log of `n` records in `dir`, with checkpoints every `every`.
fn log_with(dir: &Path, n: u64, every: u64) {
    let config = AuditConfig {
        checkpoint_every: every,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(dir, config).unwrap();
    for i in 1..=n {
        log.append(entry(i), Durability::Batched).unwrap();
    }
    log.close().unwrap();
}

fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'r';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Store every record one per `r` key, as versions before segments did
/// (which verification reads as well): the edits below work on single
/// records. Segments themselves are edited by the `segment_` tests.
fn unpack_segments(tree: &sled::Tree) {
    let segments: Vec<_> = tree.scan_prefix(b"s").map(Result::unwrap).collect();
    assert!(
        !segments.is_empty(),
        "a log of this version stores segments"
    );
    for (key, value) in segments {
        for (seq, bytes) in segment_records(&key, &value) {
            tree.insert(record_key(seq), bytes).unwrap();
        }
        tree.remove(key).unwrap();
    }
}

/// A segment's records: its format byte (1), then each record's length
/// (u32 big-endian) and bytes, seqs from the key's on.
fn segment_records(key: &[u8], value: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut seq = u64::from_be_bytes(key[1..9].try_into().unwrap());
    assert_eq!(value[0], 1, "segment format");
    let mut rest = &value[1..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push((seq, rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
        seq += 1;
    }
    out
}

/// Edit the closed database directly, as an attacker with file access
/// would, every record stored alone.
fn tamper(dir: &Path, edit: impl FnOnce(&sled::Tree)) {
    tamper_segments(dir, |tree| {
        unpack_segments(tree);
        edit(tree);
    });
}

/// Edit the closed database directly, as it is.
fn tamper_segments(dir: &Path, edit: impl FnOnce(&sled::Tree)) {
    // sled releases its file lock when its background flusher has exited,
    // which may be a moment after the log is closed: wait for it, as the
    // log's own `open` does.
    let config = sled::Config::new().path(dir.join(DB_DIR));
    let db = airlock_audit::sled_open::open_waiting(&config, std::time::Duration::from_secs(10))
        .expect("open the closed log's database");
    let tree = db.open_tree("audit").unwrap();
    edit(&tree);
    db.flush().unwrap();
}

fn verify_dir(dir: &Path, trusted: &[Checkpoint]) -> Result<u64, VerifyFailure> {
    let log = AuditLog::open_read_only(dir).unwrap();
    log.verify(trusted).unwrap().map(|r| r.records)
}

fn rewrite(tree: &sled::Tree, seq: u64, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = tree.get(record_key(seq)).unwrap().unwrap();
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    f(v.as_object_mut().unwrap());
    tree.insert(record_key(seq), serde_json::to_vec(&v).unwrap())
        .unwrap();
}

#[test]
fn an_untouched_log_verifies_and_reopens_where_it_left_off() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    let report = log.verify(&[]).unwrap().unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.last_checkpoint, Some(10), "close signs the head");
    assert_eq!(report.unsigned_tail, 0);
    let next = log.append(entry(11), Durability::Flushed).unwrap();
    assert_eq!(next.seq, 11);
    assert_eq!(next.prev_hash, log.get(10).unwrap().unwrap().hash);
}

/// A log written before segments (every record under its own `r` key)
/// opens, goes on in segments, and verifies, export included, as one
/// chain across the two layouts.
#[test]
fn a_log_from_before_segments_goes_on_in_segments_as_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |_| {});
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    for i in 11..=30 {
        log.append_seq(&entry(i), Durability::Batched).unwrap();
    }
    log.close().unwrap();
    drop(log);
    tamper_segments(dir.path(), |t| {
        assert_eq!(
            t.scan_prefix(b"r").count(),
            11,
            "10 records alone and the fence"
        );
        let packed: usize = t
            .scan_prefix(b"s")
            .map(|item| {
                let (key, value) = item.unwrap();
                segment_records(&key, &value).len()
            })
            .sum();
        assert_eq!(packed, 20);
    });
    let log = AuditLog::open_read_only(dir.path()).unwrap();
    let report = log.verify(&[]).unwrap().unwrap();
    assert_eq!(report.records, 30);
    let seqs: Vec<u64> = log.records(1).map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    assert_eq!(
        log.get(11).unwrap().unwrap().prev_hash,
        log.get(10).unwrap().unwrap().hash
    );
    let export = dir.path().join("export.jsonl");
    assert_eq!(log.export(&export).unwrap().records, 30);
    let key = log.public_key();
    assert_eq!(
        verify_export(&export, &key, &[]).unwrap().unwrap().records,
        30
    );
}

/// An export is signed before it is written: one whose checkpoint lines
/// were taken out (after which a rewrite that re-hashes the chain passes
/// every link and hash) is refused, not reported "ok, 0 checkpoints".
#[test]
fn an_export_without_its_checkpoints_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    for i in 1..=5 {
        log.append(entry(i), Durability::Batched).unwrap();
    }
    let export = dir.path().join("export.jsonl");
    log.export(&export).unwrap();
    let key = log.public_key();
    assert_eq!(
        verify_export(&export, &key, &[]).unwrap().unwrap().records,
        5
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let stripped: String = text
        .lines()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(stripped, text, "the export had checkpoint lines");
    std::fs::write(&export, stripped).unwrap();
    let failure = verify_export(&export, &key, &[]).unwrap().unwrap_err();
    assert_eq!(failure.problem, Problem::Unsigned { records: 5 });
}

#[test]
fn a_changed_value_fails_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        rewrite(t, 6, |m| {
            m.insert("principal".into(), "someone-else".into());
        })
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 6);
    assert_eq!(failure.problem, Problem::HashMismatch);
}

#[test]
fn a_host_refuses_to_extend_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    // Records after the last checkpoint are what a host would sign next.
    let config = AuditConfig {
        checkpoint_every: 1000,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(dir.path(), config).unwrap();
    for i in 11..=14 {
        log.append(entry(i), Durability::Batched).unwrap();
    }
    log.flush().unwrap();
    drop(log);
    tamper(dir.path(), |t| {
        rewrite(t, 12, |m| {
            m.insert("outcome".into(), "tool_error".into());
        });
        // Remove the shutdown checkpoint that covers the change.
        let mut k = [0u8; 9];
        k[0] = b'c';
        k[1..].copy_from_slice(&14u64.to_be_bytes());
        t.remove(k).unwrap();
    });
    // Refused, and refused again: the refusal signed nothing (it signed
    // the changed head on its way out, which the next start then took as
    // vouched for, and extended).
    for _ in 0..2 {
        let err = AuditLog::open(dir.path(), AuditConfig::default()).unwrap_err();
        match err {
            Error::Tampered { failure, .. } => {
                assert_eq!((failure.seq, failure.problem), (12, Problem::HashMismatch));
            }
            other => panic!("expected Tampered, got {other}"),
        }
    }
}

/// History rewritten and re-hashed, its checkpoints removed: refused at
/// every start, never signed over.
#[test]
fn a_host_refusing_a_rewritten_history_signs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    // Records past the last checkpoint (8), with no shutdown checkpoint.
    let config = AuditConfig {
        checkpoint_every: 1000,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(dir.path(), config).unwrap();
    for i in 11..=14 {
        log.append(entry(i), Durability::Batched).unwrap();
    }
    log.flush().unwrap();
    drop(log);
    rewrite_history(dir.path());
    let checkpoints = |dir: &Path| {
        let mut seqs = Vec::new();
        tamper_segments(dir, |t| {
            seqs = t
                .scan_prefix([b'c'])
                .keys()
                .map(|k| u64::from_be_bytes(k.unwrap()[1..9].try_into().unwrap()))
                .collect();
        });
        seqs
    };
    let before = checkpoints(dir.path());
    for _ in 0..2 {
        let err = AuditLog::open(dir.path(), AuditConfig::default()).unwrap_err();
        assert!(matches!(err, Error::Tampered { .. }), "{err}");
    }
    assert_eq!(checkpoints(dir.path()), before);
}

/// A hash re-spelled in capitals (and the next record's link with it)
/// decoded to the same value and verified: the stored bytes were not the
/// ones written, and the host's own start-up check disagreed.
#[test]
fn a_hash_spelled_in_capitals_fails_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        rewrite(t, 6, |m| {
            let upper = m["hash"].as_str().unwrap().to_uppercase();
            m.insert("hash".into(), upper.into());
        });
        rewrite(t, 7, |m| {
            let upper = m["prev_hash"].as_str().unwrap().to_uppercase();
            m.insert("prev_hash".into(), upper.into());
        });
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 6);
    assert!(
        matches!(&failure.problem, Problem::Unreadable { reason } if reason.contains("lowercase")),
        "{failure}"
    );
}

/// A segment stored far past the chain's head (a stray key in a tampered
/// store) made a query that matched nothing walk down from it a page at
/// a time: 2^55 pages.
#[test]
fn a_stray_segment_far_past_the_head_does_not_hang_a_query() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper_segments(dir.path(), |t| {
        let (_, value, _) = segment_of(t, 10);
        let mut key = vec![b's'];
        key.extend_from_slice(&(1u64 << 63).to_be_bytes());
        t.insert(key, value).unwrap();
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let log = AuditLog::open_read_only(&path).unwrap();
        let filter = airlock_audit::Filter {
            plugin: Some("no-such-plugin".into()),
            ..airlock_audit::Filter::default()
        };
        let _ = tx.send(log.query(&filter, 10).map(|r| r.len()));
    });
    // A liveness bound, not a timing: the query reads a few pages.
    let found = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the query did not finish");
    assert_eq!(found.unwrap(), 0);
    // And `verify` names the stray segment.
    assert!(verify_dir(dir.path(), &[]).is_err());
}

#[test]
fn a_flipped_byte_fails_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        let mut bytes = t.get(record_key(3)).unwrap().unwrap().to_vec();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        t.insert(record_key(3), bytes).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 3);
    assert!(
        matches!(
            failure.problem,
            Problem::HashMismatch
                | Problem::Unreadable { .. }
                | Problem::BrokenLink
                | Problem::NotCanonical { .. }
        ),
        "{failure}"
    );
}

/// The segment holding `seq`: its key, value, and where `seq`'s bytes
/// start in it.
fn segment_of(tree: &sled::Tree, seq: u64) -> (sled::IVec, Vec<u8>, usize) {
    for item in tree.scan_prefix(b"s") {
        let (key, value) = item.unwrap();
        let mut at = 1;
        for (s, bytes) in segment_records(&key, &value) {
            if s == seq {
                return (key, value.to_vec(), at + 4);
            }
            at += 4 + bytes.len();
        }
    }
    panic!("no segment holds record {seq}");
}

#[test]
fn a_flipped_byte_in_a_segment_fails_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper_segments(dir.path(), |t| {
        let (key, mut value, at) = segment_of(t, 6);
        value[at + 40] ^= 0x01;
        t.insert(key, value).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 6, "{failure}");
    assert!(
        matches!(
            failure.problem,
            Problem::HashMismatch | Problem::Unreadable { .. } | Problem::NotCanonical { .. }
        ),
        "{failure}"
    );
}

#[test]
fn a_segment_cut_short_is_corrupt_at_its_first_record_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    // How appends group into segments depends on the writer's timing: cut
    // the last segment, whichever records it holds, inside its first one.
    let mut first = 0;
    tamper_segments(dir.path(), |t| {
        let (key, _) = t.scan_prefix(b"s").last().unwrap().unwrap();
        first = u64::from_be_bytes(key[1..9].try_into().unwrap());
        let (key, mut value, at) = segment_of(t, first);
        value.truncate(at + 10);
        t.insert(key, value).unwrap();
    });
    // The rest of the segment is the last record there is: the log does
    // not open, and says which record.
    match AuditLog::open_read_only(dir.path()) {
        Err(Error::Corrupt { seq, reason, .. }) => {
            assert_eq!((seq, reason.as_str()), (first, "not JSON"))
        }
        other => panic!("expected Corrupt at {first}, got {other:?}"),
    }
}

#[test]
fn a_deleted_record_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        t.remove(record_key(5)).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 5);
    assert_eq!(failure.problem, Problem::Gap { found: 6 });
}

/// A copy of a record stored beside its segment (a key added over the
/// log) is a record stored twice, not a missing one.
#[test]
fn a_record_stored_twice_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper_segments(dir.path(), |t| {
        let (key, value, _) = segment_of(t, 5);
        let (_, bytes) = segment_records(&key, &value)
            .into_iter()
            .find(|(seq, _)| *seq == 5)
            .unwrap();
        t.insert(record_key(5), bytes).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 6, "{failure}");
    assert_eq!(failure.problem, Problem::Repeated { found: 5 });
    assert!(
        failure.to_string().contains("record 5 is stored again"),
        "{failure}"
    );
}

#[test]
fn swapped_records_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        let a = t.get(record_key(7)).unwrap().unwrap();
        let b = t.get(record_key(8)).unwrap().unwrap();
        t.insert(record_key(7), b).unwrap();
        t.insert(record_key(8), a).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 7);
    assert_eq!(failure.problem, Problem::Reordered { found: 8 });
}

#[test]
fn a_truncated_tail_after_a_checkpoint_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        for seq in 9..=10 {
            t.remove(record_key(seq)).unwrap();
        }
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 9);
    assert_eq!(
        failure.problem,
        Problem::Truncated {
            last: 8,
            checkpoint: 10
        }
    );
}

/// Change record 5 and re-hash everything after it, so the chain itself is
/// consistent again; remove the checkpoints that would betray it.
fn rewrite_history(dir: &Path) {
    tamper(dir, |t| {
        rewrite(t, 5, |m| {
            m.insert("outcome".into(), "ok".into());
            m.insert("principal".into(), "someone-else".into());
        });
        let mut prev = [0u8; 32];
        for seq in 1..=10u64 {
            let bytes = t.get(record_key(seq)).unwrap().unwrap();
            let mut v: Value = serde_json::from_slice(&bytes).unwrap();
            let m = v.as_object_mut().unwrap();
            m.remove("hash");
            m.insert("prev_hash".into(), hex::encode(prev).into());
            let hash = chain_hash(&prev, &v);
            v.as_object_mut()
                .unwrap()
                .insert("hash".into(), hex::encode(hash).into());
            t.insert(record_key(seq), serde_json::to_vec(&v).unwrap())
                .unwrap();
            prev = hash;
        }
        let checkpoints: Vec<_> = t.scan_prefix([b'c']).keys().map(|k| k.unwrap()).collect();
        for k in checkpoints {
            t.remove(k).unwrap();
        }
    });
}

#[test]
fn rewritten_and_rehashed_history_fails_against_an_exported_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    let export = dir.path().join("export.jsonl");
    AuditLog::open(dir.path(), AuditConfig::default())
        .unwrap()
        .export(&export)
        .unwrap();
    let trusted = read_export(&export).unwrap().checkpoints;
    assert!(!trusted.is_empty());

    rewrite_history(dir.path());
    // The chain alone is consistent again...
    assert_eq!(verify_dir(dir.path(), &[]), Ok(10));
    // ...but the checkpoint that left the host says otherwise, at the first
    // checkpoint after the change.
    let failure = verify_dir(dir.path(), &trusted).unwrap_err();
    assert_eq!(failure.seq, 8);
    assert_eq!(
        failure.problem,
        Problem::CheckpointMismatch {
            last_good_checkpoint: Some(4)
        }
    );
}

#[test]
fn a_forged_checkpoint_fails_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        let mut k = [0u8; 9];
        k[0] = b'c';
        k[1..].copy_from_slice(&8u64.to_be_bytes());
        let bytes = t.get(k).unwrap().unwrap();
        let mut cp: Checkpoint = serde_json::from_slice(&bytes).unwrap();
        cp.time_ms += 1;
        t.insert(k, serde_json::to_vec(&cp).unwrap()).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 8);
    assert!(
        matches!(failure.problem, Problem::BadSignature { .. }),
        "{failure}"
    );
}

fn export_of(
    n: u64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    ed25519_dalek::VerifyingKey,
) {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), n, 4);
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    let path = dir.path().join("audit.jsonl");
    let summary = log.export(&path).unwrap();
    assert_eq!(summary.records, n);
    let key = log.public_key();
    (dir, path, key)
}

fn edit_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Index of record `seq`'s line in an export.
fn line_of(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with("{\"record\":") && l.contains(&format!("\"seq\":{seq},")))
        .unwrap()
}

#[test]
fn exports_verify_offline_and_name_the_first_bad_record() {
    let (_dir, path, key) = export_of(12);
    assert_eq!(
        verify_export(&path, &key, &[]).unwrap().unwrap().records,
        12
    );

    // A flipped byte inside record 4.
    let (_d, p, k) = export_of(12);
    edit_lines(&p, |lines| {
        let i = line_of(lines, 4);
        lines[i] = lines[i].replace("text/stats", "text/stbts");
    });
    let f = verify_export(&p, &k, &[]).unwrap().unwrap_err();
    assert_eq!((f.seq, f.problem), (4, Problem::HashMismatch));

    // A deleted record.
    let (_d, p, k) = export_of(12);
    edit_lines(&p, |lines| {
        let i = line_of(lines, 6);
        lines.remove(i);
    });
    let f = verify_export(&p, &k, &[]).unwrap().unwrap_err();
    assert_eq!((f.seq, f.problem), (6, Problem::Gap { found: 7 }));

    // Swapped records.
    let (_d, p, k) = export_of(12);
    edit_lines(&p, |lines| {
        let (a, b) = (line_of(lines, 2), line_of(lines, 3));
        lines.swap(a, b);
    });
    let f = verify_export(&p, &k, &[]).unwrap().unwrap_err();
    assert_eq!((f.seq, f.problem), (2, Problem::Reordered { found: 3 }));

    // A truncated tail: the export's own checkpoints cover the head.
    let (_d, p, k) = export_of(12);
    edit_lines(&p, |lines| {
        lines.truncate(lines.len() - 3);
    });
    let f = verify_export(&p, &k, &[]).unwrap().unwrap_err();
    assert_eq!(
        (f.seq, f.problem),
        (
            10,
            Problem::Truncated {
                last: 9,
                checkpoint: 12
            }
        )
    );

    // Verified against another key: the signatures do not hold.
    let (_d, p, _) = export_of(12);
    let other = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
    let f = verify_export(&p, &other, &[]).unwrap().unwrap_err();
    assert!(matches!(f.problem, Problem::BadSignature { .. }), "{f}");
}

/// A record line of an export with `edit` applied to its stored bytes.
fn edited_export(seq: u64, edit: impl FnOnce(&str) -> String) -> VerifyFailure {
    let (_d, p, k) = export_of(12);
    edit_lines(&p, |lines| {
        let i = line_of(lines, seq);
        let stored = lines[i]
            .strip_prefix("{\"record\":")
            .and_then(|l| l.strip_suffix('}'))
            .unwrap();
        lines[i] = format!("{{\"record\":{}}}", edit(stored));
    });
    verify_export(&p, &k, &[]).unwrap().unwrap_err()
}

/// A JSON reader that keeps the first of two equal keys sees `forged`; one
/// that keeps the last sees the original, so a verifier that re-encodes
/// what it parsed finds the hash intact. The stored bytes are checked as
/// they are: either order is refused, naming the record.
#[test]
fn an_export_with_a_duplicated_key_is_caught() {
    for forged_first in [true, false] {
        let failure = edited_export(5, |stored| {
            let original = "\"principal\":\"agent\"";
            let forged = "\"principal\":\"someone-else\"";
            let both = if forged_first {
                format!("{forged},{original}")
            } else {
                format!("{original},{forged}")
            };
            assert!(stored.contains(original));
            stored.replacen(original, &both, 1)
        });
        assert_eq!(failure.seq, 5, "{failure}");
        match &failure.problem {
            Problem::NotCanonical { reason } => {
                assert!(
                    reason.contains("\"principal\" appears more than once"),
                    "{reason}"
                )
            }
            other => panic!("expected NotCanonical, got {other}"),
        }
        assert!(
            failure
                .to_string()
                .starts_with("record 5: stored bytes are not in canonical form")
        );
    }
}

#[test]
fn an_export_with_reordered_keys_or_whitespace_is_not_canonical() {
    // The same members, in another order: parses to the same record.
    let failure = edited_export(3, |stored| {
        let v: serde_json::Map<String, Value> = serde_json::from_str(stored).unwrap();
        let members: Vec<String> = v
            .iter()
            .rev()
            .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
            .collect();
        format!("{{{}}}", members.join(","))
    });
    assert_eq!(failure.seq, 3);
    assert!(
        matches!(&failure.problem, Problem::NotCanonical { reason } if reason.contains("order")),
        "{failure}"
    );
    // Whitespace after a colon.
    let failure = edited_export(7, |stored| stored.replacen("\"tool\":", "\"tool\": ", 1));
    assert_eq!(failure.seq, 7);
    assert!(
        matches!(&failure.problem, Problem::NotCanonical { reason } if reason.contains("whitespace")),
        "{failure}"
    );
}

#[test]
fn a_live_record_with_a_duplicated_key_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, 4);
    tamper(dir.path(), |t| {
        let bytes = t.get(record_key(6)).unwrap().unwrap().to_vec();
        let text = String::from_utf8(bytes).unwrap();
        let text = text.replacen(
            "\"principal\":",
            "\"principal\":\"forged\",\"principal\":",
            1,
        );
        t.insert(record_key(6), text.into_bytes()).unwrap();
    });
    let failure = verify_dir(dir.path(), &[]).unwrap_err();
    assert_eq!(failure.seq, 6);
    assert!(
        matches!(failure.problem, Problem::NotCanonical { .. }),
        "{failure}"
    );
}

#[test]
fn a_file_that_is_not_an_export_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, "{\"hello\":1}\n").unwrap();
    let err = verify_export(&path, &key, &[]).unwrap_err().to_string();
    assert!(err.contains("not an airlock audit export"), "{err}");
    let missing = verify_export(dir.path().join("nope"), &key, &[]).unwrap_err();
    assert!(matches!(missing, Error::File { .. }), "{missing}");
}

#[test]
fn calls_left_in_flight_get_an_unknown_outcome_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        log.append(entry(1), Durability::Flushed).unwrap();
        log.append(entry(2), Durability::Flushed).unwrap();
        let mut started = entry(3);
        started.plugin = Some("billing".into());
        log.append(started, Durability::Flushed).unwrap();
        // The host dies here: no outcome for call-2.
    }
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    let last = log.get(4).unwrap().unwrap();
    assert_eq!(last.entry.event, Event::CallFinished);
    assert_eq!(last.entry.call_id.as_deref(), Some("call-2"));
    assert_eq!(last.entry.plugin.as_deref(), Some("billing"));
    assert_eq!(last.entry.outcome.as_deref(), Some(OUTCOME_UNKNOWN));
    assert_eq!(log.verify(&[]).unwrap().unwrap().records, 4);
    drop(log);
    // Recovery happens once.
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    assert_eq!(log.head().unwrap().0, 4);
}

#[test]
fn concurrent_appenders_leave_a_gap_free_chain_and_read_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        checkpoint_every: 97,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(dir.path(), config).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let log = log.clone();
            scope.spawn(move || {
                for i in 0..300u64 {
                    let durability = if i % 50 == 0 {
                        Durability::Flushed
                    } else {
                        Durability::Batched
                    };
                    let record = log.append(entry(t * 1000 + i), durability).unwrap();
                    // A record can be read back as soon as it is appended.
                    assert_eq!(log.get(record.seq).unwrap().unwrap(), record);
                }
            });
        }
    });
    assert_eq!(log.head().unwrap().0, 2400);
    let report = log.verify(&[]).unwrap().unwrap();
    assert_eq!(report.records, 2400);
    log.close().unwrap();
    drop(log);
    assert_eq!(verify_dir(dir.path(), &[]).unwrap(), 2400);
}

/// The in-flight marker of `call_id`, as the log keeps it.
fn marker_key(call_id: &str) -> Vec<u8> {
    let mut k = vec![b'o'];
    k.extend_from_slice(call_id.as_bytes());
    k
}

#[test]
fn a_crash_between_a_record_and_its_marker_leaves_no_false_unknown() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        for i in 1..=4 {
            log.append(entry(i), Durability::Flushed).unwrap();
        }
        log.append(entry(5), Durability::Flushed).unwrap();
        // call-3 is in flight when the host dies.
    }
    tamper(dir.path(), |tree| {
        // The crash came after call-1's outcome record but before its
        // marker was cleared...
        tree.insert(marker_key("call-1"), &1u64.to_be_bytes())
            .unwrap();
        // ...and, for call-9, after its marker but before its intent record.
        tree.insert(marker_key("call-9"), &6u64.to_be_bytes())
            .unwrap();
    });
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    // Only the call really in flight gets an outcome: `unknown`.
    assert_eq!(log.head().unwrap().0, 6);
    let last = log.get(6).unwrap().unwrap();
    assert_eq!(last.entry.call_id.as_deref(), Some("call-3"));
    assert_eq!(last.entry.outcome.as_deref(), Some(OUTCOME_UNKNOWN));
    assert_eq!(log.verify(&[]).unwrap().unwrap().records, 6);
    log.close().unwrap();
    drop(log);
    // Every marker is gone: the next start records nothing.
    let mut markers = 0;
    tamper(dir.path(), |tree| markers = tree.scan_prefix(b"o").count());
    assert_eq!(markers, 0);
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    assert_eq!(log.head().unwrap().0, 6);
}

#[test]
fn an_intent_flushed_alone_keeps_its_marker_until_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        // call-1: intent and outcome reach the store together.
        log.append(entry(1), Durability::Batched).unwrap();
        log.append(entry(2), Durability::Batched).unwrap();
        // call-2: its intent is flushed alone, before its outcome.
        log.append(entry(3), Durability::Flushed).unwrap();
        let mut markers = Vec::new();
        let store = log.store();
        for (call_id, seq) in store.open_calls(log.origin()).unwrap() {
            markers.push((call_id, seq));
        }
        assert_eq!(markers, vec![("call-2".to_owned(), 3)]);
        log.append(entry(4), Durability::Flushed).unwrap();
        assert!(store.open_calls(log.origin()).unwrap().is_empty());
        log.close().unwrap();
    }
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    assert_eq!(log.head().unwrap().0, 4, "nothing to recover");
}

#[test]
fn an_intent_stored_without_its_outcome_or_marker_gets_an_unknown_outcome() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
        for i in 1..=6 {
            log.append(entry(i), Durability::Batched).unwrap();
        }
        log.close().unwrap();
    }
    // A crash in the middle of the write that held call-3's intent and
    // outcome (records 5 and 6): the store kept a prefix, up to record 5,
    // and no marker for call-3 (written together, it got none).
    tamper(dir.path(), |tree| {
        assert_eq!(tree.scan_prefix(b"o").count(), 0);
        tree.remove(record_key(6)).unwrap();
        let checkpoints: Vec<_> = tree.scan_prefix(b"c").keys().collect();
        for key in checkpoints {
            let key = key.unwrap();
            if u64::from_be_bytes(key[1..9].try_into().unwrap()) >= 6 {
                tree.remove(key).unwrap();
            }
        }
    });
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    assert_eq!(log.head().unwrap().0, 6);
    let last = log.get(6).unwrap().unwrap();
    assert_eq!(last.entry.event, Event::CallFinished);
    assert_eq!(last.entry.call_id.as_deref(), Some("call-3"));
    assert_eq!(last.entry.outcome.as_deref(), Some(OUTCOME_UNKNOWN));
    assert!(
        last.entry
            .reason
            .as_deref()
            .unwrap()
            .contains("intent record 5"),
        "{:?}",
        last.entry.reason
    );
    assert_eq!(log.verify(&[]).unwrap().unwrap().records, 6);
    log.close().unwrap();
    drop(log);
    // Recovered once: the next start adds nothing.
    let log = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    assert_eq!(log.head().unwrap().0, 6);
}

#[test]
fn key_files_are_guarded() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 4, 100);
    // Lost signing key with checkpoints signed by it: refuse, do not replace.
    let key = dir.path().join(airlock_audit::SIGNING_KEY_FILE);
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = AuditLog::open(dir.path(), AuditConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Key { .. }), "{err}");
    assert!(err.to_string().contains("restore the file"), "{err}");
    // Corrupt key.
    std::fs::write(&key, "garbage\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = AuditLog::open(dir.path(), AuditConfig::default()).unwrap_err();
    assert!(err.to_string().contains("expected 64 hex digits"), "{err}");
    // Another valid key (the wrong backup restored): refused, and the
    // public key an auditor verifies with is left as it was (regression:
    // it was rewritten with the wrong key's before the refusal).
    let public = dir.path().join(airlock_audit::PUBLIC_KEY_FILE);
    let public_before = std::fs::read(&public).unwrap();
    let origin_key = dir.path().join(airlock_audit::KEYS_DIR);
    let origin_keys_before: Vec<_> = std::fs::read_dir(&origin_key)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    std::fs::write(&key, format!("{}\n", "7".repeat(64))).unwrap();
    let err = AuditLog::open(dir.path(), AuditConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Tampered { .. }), "{err}");
    assert_eq!(std::fs::read(&public).unwrap(), public_before);
    let origin_keys_after: Vec<_> = std::fs::read_dir(&origin_key)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(origin_keys_after, origin_keys_before);
    // Restored: opens and verifies.
    std::fs::write(&key, saved).unwrap();
    assert_eq!(verify_dir(dir.path(), &[]), Ok(4));
}

#[test]
fn a_second_opener_is_told_the_log_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = AuditLog::open(dir.path(), AuditConfig::default()).unwrap();
    let config = AuditConfig {
        lock_wait_ms: 100,
        ..AuditConfig::default()
    };
    let err = AuditLog::open(dir.path(), config).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[test]
fn an_unusable_directory_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = AuditLog::open(&file, AuditConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
}
