//! The offline verifier on an export file: whatever the bytes, reading and
//! verifying an export answers with a report, a verification failure or an
//! error, never a panic.
//!
//! The key is the one the file's header names when that is 64 hex digits
//! (so mutated records of a real export still reach the chain and signature
//! checks), otherwise a fixed key. The export's own checkpoints are tried as
//! trusted anchors too.
//!
//! Each record also checks the canonical encoding the hashes cover: it
//! parses back to the same value, and encoding that again gives the same
//! bytes (one byte sequence per JSON value).

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use airlock_audit::{canonical, parse_public_key, read_export, verify_export};
use libfuzzer_sys::fuzz_target;

/// The verifier reads a path: one scratch file per fuzzing process.
static SCRATCH: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("airlock-fuzz-export-{}.jsonl", std::process::id()))
});

/// A valid Ed25519 public key, used when the header names none.
const FALLBACK_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fuzz_target!(|data: &[u8]| {
    if std::fs::write(&*SCRATCH, data).is_err() {
        return;
    }
    let Ok(export) = read_export(&*SCRATCH) else {
        return;
    };
    for text in &export.records {
        // Records are kept as the bytes stored; the verifier reports those
        // that are not JSON.
        let Ok(record) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        let record = &record;
        let bytes = canonical::to_vec(record);
        let back: serde_json::Value =
            serde_json::from_slice(&bytes).expect("the canonical encoding is JSON");
        assert_eq!(
            &back, record,
            "the canonical encoding parses back to the value"
        );
        assert_eq!(
            canonical::to_vec(&back),
            bytes,
            "the canonical encoding is stable"
        );
    }
    let named = export.public_key.trim();
    let key_text = if named.len() == 64 && named.bytes().all(|b| b.is_ascii_hexdigit()) {
        named
    } else {
        FALLBACK_KEY
    };
    let Ok(key) = parse_public_key(key_text) else {
        return;
    };
    let _ = verify_export(&*SCRATCH, &key, &[]);
    let _ = verify_export(&*SCRATCH, &key, &export.checkpoints);
});
