//! On-disk cache of compiled components.
//!
//! Compiling a component takes from tens of milliseconds to seconds; a host
//! start with a warm cache must not pay that again. Entries are keyed by the
//! component's SHA-256 *and* a fingerprint of the engine (wasmtime version,
//! compiler settings, target), so an engine upgrade or configuration change
//! never loads stale code.
//!
//! Entry format: `AIRLOCK-CWASM-1\n`, then the SHA-256 of the payload (32
//! bytes), then the payload produced by `Component::serialize`. The checksum
//! is verified before the payload is handed to wasmtime; an entry that is
//! truncated, corrupt or from another engine is deleted and rebuilt, never
//! trusted. Entries are written to a temporary file and renamed into place,
//! so a crash never leaves a half-written entry under a valid name.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8] = b"AIRLOCK-CWASM-1\n";

/// Whether a plugin's compiled code came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// Loaded from a verified cache entry; no compilation.
    Hit,
    /// Compiled now and written to the cache.
    Miss,
    /// Compiled now; a cache entry existed but was rejected (corrupt, or from
    /// an incompatible engine) and has been replaced.
    Rebuilt,
    /// Compiled now; the host has no cache directory (or it is unusable).
    Disabled,
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCache {
    dir: PathBuf,
    engine_fingerprint: String,
}

impl CompiledCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> CompiledCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompiledCache {
            dir,
            engine_fingerprint: format!("{:016x}", hasher.finish()),
        }
    }

    fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.engine_fingerprint))
    }

    /// Compile `bytes` (whose SHA-256 is `digest`), using the cache when it
    /// holds a valid entry.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheStatus)> {
        let path = self.entry_path(digest);
        let mut status = CacheStatus::Miss;
        match std::fs::read(&path) {
            Ok(entry) => match verified_payload(&entry) {
                Some(payload) => match deserialize(engine, payload) {
                    Ok(component) => {
                        tracing::debug!(path = %path.display(), "compiled-component cache hit");
                        return Ok((component, CacheStatus::Hit));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cache entry rejected by the engine; recompiling");
                        status = CacheStatus::Rebuilt;
                    }
                },
                None => {
                    tracing::warn!(path = %path.display(), "corrupt cache entry; recompiling");
                    status = CacheStatus::Rebuilt;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cache entry; recompiling");
                status = CacheStatus::Rebuilt;
            }
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(payload) => {
                if let Err(e) = write_entry(&self.dir, &path, &payload) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write compiled-component cache entry");
                    status = CacheStatus::Disabled;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialize compiled component");
                status = CacheStatus::Disabled;
            }
        }
        Ok((component, status))
    }
}

/// The payload of a cache entry whose header and checksum are intact.
fn verified_payload(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then_some(payload)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` requires bytes produced by
    // `Component::serialize` of a compatible engine and not modified since.
    // The payload was written by `write_entry` below from
    // `Component::serialize`, its SHA-256 was verified just now (so it is the
    // exact payload that was written), and wasmtime itself checks the
    // engine-compatibility header and rejects mismatches. The cache
    // directory belongs to the operator (trusted in our trust model); a
    // plugin has no way to write to it.
    unsafe { Component::deserialize(engine, payload) }
}

fn write_entry(dir: &Path, path: &Path, payload: &[u8]) -> std::io::Result<()> {
    // Owner-only: the cache's default place is the data directory, which
    // this may be the first to create.
    airlock_store::file::create_private_dir(dir)?;
    airlock_store::file::write(path, |out| {
        out.write_all(MAGIC)?;
        out.write_all(&Sha256::digest(payload))?;
        out.write_all(payload)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_payload_rejects_corruption() {
        let payload = b"compiled code".as_slice();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(payload));
        entry.extend_from_slice(payload);
        assert_eq!(verified_payload(&entry), Some(payload));

        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verified_payload(&flipped), None);
        assert_eq!(verified_payload(&entry[..entry.len() - 1]), None);
        assert_eq!(verified_payload(&entry[..10]), None);
        assert_eq!(verified_payload(b"garbage"), None);
    }
}
