//! On-disk cache of compiled components.
//!
//! Compiling a component takes from tens of milliseconds to seconds; a host
//! start with a warm cache must not pay that again. Entries are keyed by the
//! component's SHA-256 *and* a fingerprint of the engine (wasmtime version,
//! compiler settings, target), so an engine upgrade or configuration change
//! never loads stale code.
//!
//! Entry format: `AIRLOCK-CWASM-2\n`, then a SHA-256 (32 bytes) over the
//! component's digest, the engine fingerprint and the payload, then the
//! payload produced by `Component::serialize`. The checksum is verified
//! before the payload is handed to wasmtime; an entry that is truncated,
//! corrupt, from another engine or written for another component (an
//! entry copied under another's name) is rebuilt, never trusted. Entries
//! are written to a temporary file and renamed into place, so a crash
//! never leaves a half-written entry under a valid name.
//!
//! # Security: whose files are run
//! An entry is native code, run as it is (`Component::deserialize` trusts
//! its bytes): whoever can write the cache can run code in the host. So
//! on Unix the cache is used only when the directory belongs to this
//! process's user (or root) and no other user can write to it, and an
//! entry only when it is a regular file (not a link) that belongs to this
//! user and no other can write — checked on the opened file, which is
//! then read. A cache that fails the first check is not used at all (the
//! plugin is compiled, [`CacheStatus::Disabled`], and the reason logged);
//! an entry that fails the second is compiled afresh and replaced. The
//! checksum is not a signature: it stops a damaged or misplaced entry,
//! the ownership checks stop another user's.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8] = b"AIRLOCK-CWASM-2\n";
/// The first format's header: its checksum covered the code alone.
const OLD_MAGIC: &[u8] = b"AIRLOCK-CWASM-1\n";

/// Largest entry read back: compiled code is a few times its component,
/// which the loader caps at 512 MiB.
const MAX_ENTRY_BYTES: u64 = 2 << 30;

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
        let dir = match open_dir(&self.dir) {
            Ok(dir) => dir,
            Err(reason) => {
                tracing::warn!(dir = %self.dir.display(), "compiled-component cache not used: {reason}");
                return Ok((Component::new(engine, bytes)?, CacheStatus::Disabled));
            }
        };
        let path = self.entry_path(digest);
        let mut status = CacheStatus::Miss;
        let read = match (&dir, path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => read_entry(dir, name),
            _ => Ok(None),
        };
        match read {
            Ok(None) => {}
            Ok(Some(entry)) if entry.starts_with(OLD_MAGIC) => {
                tracing::info!(path = %path.display(), "cache entry written by an older version; recompiling");
                status = CacheStatus::Rebuilt;
            }
            Ok(Some(entry)) => match verified_payload(&entry, digest, &self.engine_fingerprint) {
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
                    tracing::warn!(path = %path.display(), "corrupt cache entry, or one written for another component; recompiling");
                    status = CacheStatus::Rebuilt;
                }
            },
            Err(reason) => {
                tracing::warn!(path = %path.display(), "cache entry not used ({reason}); recompiling");
                status = CacheStatus::Rebuilt;
            }
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(payload) => {
                if let Err(e) = write_entry(
                    &self.dir,
                    &path,
                    &checksum(digest, &self.engine_fingerprint, &payload),
                    &payload,
                ) {
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

/// The cache directory `dir`, opened, if it may be trusted with code (no
/// other user owns it or can write to it: module docs); `Ok(None)` when
/// it is not there yet (made owner-only when the first entry is written).
/// Entries are opened through this handle, so the directory checked is
/// the one read.
///
/// # Errors
/// Why it may not be trusted.
#[cfg(unix)]
fn open_dir(dir: &Path) -> Result<Option<std::fs::File>, String> {
    let opened = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let handle = match opened {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::NOTDIR) => return Err("not a directory".to_owned()),
        Err(e) => return Err(format!("cannot open the directory: {e}")),
    };
    let meta = handle
        .metadata()
        .map_err(|e| format!("cannot read the directory: {e}"))?;
    // Root's own directory (`/var/cache/…`) is as safe as this user's.
    foreign(&meta, "the directory", true).map_or(Ok(Some(handle)), |reason| {
        Err(format!("{reason}; chmod 700 it, or choose another"))
    })
}

/// Why `what`, whose metadata is `meta`, is not this process's own to
/// trust with code: another user owns it (root allowed when `root_too`)
/// or can write to it.
#[cfg(unix)]
fn foreign(meta: &std::fs::Metadata, what: &str, root_too: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && !(root_too && meta.uid() == 0) {
        return Some(format!(
            "{what} belongs to user {}, not to this process's user {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "other users can write to {what} (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    None
}

#[cfg(not(unix))]
fn open_dir(_: &Path) -> Result<Option<std::fs::File>, String> {
    Err("who owns the directory cannot be checked on this system".to_owned())
}

/// The entry `name` in the opened cache directory `dir` (`None`: there is
/// none), read from the opened file once it is found to be a regular file
/// of this process's user that no other user can write (module docs), at
/// most [`MAX_ENTRY_BYTES`].
///
/// # Errors
/// Why the entry is not read.
#[cfg(unix)]
fn read_entry(dir: &std::fs::File, name: &str) -> Result<Option<Vec<u8>>, String> {
    // A link is not followed (it fails to open); a FIFO opens without
    // waiting for a writer, and is refused below.
    let opened = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let file = match opened {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err("it is a symbolic link".to_owned()),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read its metadata: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if let Some(reason) = foreign(&meta, "it", false) {
        return Err(reason);
    }
    let mut entry = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_ENTRY_BYTES.saturating_add(1)),
        &mut entry,
    )
    .map_err(|e| format!("cannot read it: {e}"))?;
    if entry.len() as u64 > MAX_ENTRY_BYTES {
        return Err(format!("larger than {MAX_ENTRY_BYTES} bytes"));
    }
    Ok(Some(entry))
}

#[cfg(not(unix))]
fn read_entry(_: &std::fs::File, _: &str) -> Result<Option<Vec<u8>>, String> {
    Ok(None)
}

/// What an entry's checksum covers: the component it was compiled from,
/// the engine it was compiled for and the compiled code.
fn checksum(digest: &str, fingerprint: &str, payload: &[u8]) -> [u8; 32] {
    let mut sum = Sha256::new();
    for part in [digest.as_bytes(), fingerprint.as_bytes()] {
        sum.update((part.len() as u64).to_le_bytes());
        sum.update(part);
    }
    sum.update(payload);
    sum.finalize().into()
}

/// The payload of a cache entry whose header and checksum are intact and
/// that was written for component `digest` and engine `fingerprint`.
fn verified_payload<'a>(entry: &'a [u8], digest: &str, fingerprint: &str) -> Option<&'a [u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (checksum(digest, fingerprint, payload).as_slice() == sum).then_some(payload)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` requires bytes produced by
    // `Component::serialize` of a compatible engine and not modified since.
    // The payload was read from a file of this process's user in a
    // directory no other user can write (`open_dir`, `read_entry`),
    // which only `write_entry` below writes, from `Component::serialize`;
    // its checksum was verified just now against the component and engine
    // it is loaded for (so it is the exact payload written for them), and
    // wasmtime itself checks the engine-compatibility header and rejects
    // mismatches. No `files` grant may reach the cache directory
    // (`check_files_grants`).
    unsafe { Component::deserialize(engine, payload) }
}

fn write_entry(dir: &Path, path: &Path, sum: &[u8; 32], payload: &[u8]) -> std::io::Result<()> {
    // Owner-only: the cache's default place is the data directory, which
    // this may be the first to create.
    airlock_store::file::create_private_dir(dir)?;
    airlock_store::file::write(path, |out| {
        out.write_all(MAGIC)?;
        out.write_all(sum)?;
        out.write_all(payload)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, fingerprint: &str, payload: &[u8]) -> Vec<u8> {
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&checksum(digest, fingerprint, payload));
        entry.extend_from_slice(payload);
        entry
    }

    #[test]
    fn verified_payload_rejects_corruption() {
        let payload = b"compiled code".as_slice();
        let entry = entry("d1", "f1", payload);
        assert_eq!(verified_payload(&entry, "d1", "f1"), Some(payload));

        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verified_payload(&flipped, "d1", "f1"), None);
        assert_eq!(
            verified_payload(&entry[..entry.len() - 1], "d1", "f1"),
            None
        );
        assert_eq!(verified_payload(&entry[..10], "d1", "f1"), None);
        assert_eq!(verified_payload(b"garbage", "d1", "f1"), None);
    }

    /// An intact entry copied under another component's (or engine's)
    /// name is not that component's code.
    #[test]
    fn an_entry_is_verified_for_its_own_component_and_engine() {
        let entry = entry("d1", "f1", b"compiled code");
        assert_eq!(verified_payload(&entry, "d2", "f1"), None);
        assert_eq!(verified_payload(&entry, "d1", "f2"), None);
        // The parts are delimited: moving a byte from one to the other
        // changes the sum.
        assert_eq!(verified_payload(&entry, "d1f", "1"), None);
    }

    #[cfg(unix)]
    #[test]
    fn only_this_users_own_files_in_its_own_directory_are_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let set_mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let untrusted = |path: &Path| open_dir(path).err();
        set_mode(dir.path(), 0o700);
        assert_eq!(untrusted(dir.path()), None);
        assert!(matches!(open_dir(&dir.path().join("not-yet")), Ok(None)));
        for mode in [0o770, 0o707, 0o1777] {
            set_mode(dir.path(), mode);
            let reason = untrusted(dir.path()).expect("a directory others can write");
            assert!(reason.contains("other users can write"), "{reason}");
        }
        set_mode(dir.path(), 0o755);
        let handle = open_dir(dir.path()).unwrap().unwrap();

        let path = dir.path().join("entry.cwasm");
        let read = |name: &str| read_entry(&handle, name);
        assert_eq!(read("entry.cwasm"), Ok(None));
        std::fs::write(&path, b"bytes").unwrap();
        set_mode(&path, 0o600);
        assert_eq!(read("entry.cwasm"), Ok(Some(b"bytes".to_vec())));
        set_mode(&path, 0o620);
        let reason = read("entry.cwasm").unwrap_err();
        assert!(reason.contains("other users can write"), "{reason}");
        set_mode(&path, 0o644);
        assert_eq!(read("entry.cwasm"), Ok(Some(b"bytes".to_vec())));
        // A link, even to a good entry, is not followed.
        std::os::unix::fs::symlink(&path, dir.path().join("link.cwasm")).unwrap();
        assert_eq!(read("link.cwasm"), Err("it is a symbolic link".to_owned()));
        // Nor is anything but a regular file read (a FIFO is not waited on).
        let fifo = dir.path().join("fifo.cwasm");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        assert_eq!(read("fifo.cwasm"), Err("not a regular file".to_owned()));
        assert_eq!(untrusted(&path), Some("not a directory".to_owned()));
        // The directory read is the one checked: renamed away and replaced
        // after it was opened, its own entries are still the ones read.
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        std::fs::create_dir(dir.path()).unwrap();
        std::fs::write(dir.path().join("entry.cwasm"), b"planted").unwrap();
        assert_eq!(read("entry.cwasm"), Ok(Some(b"bytes".to_vec())));
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::rename(&moved, dir.path()).unwrap();
        // Another user's entry, or directory (only root can make them).
        if rustix::process::geteuid().is_root() {
            let other = Some(rustix::process::Uid::from_raw(54_321));
            rustix::fs::chown(&path, other, None).unwrap();
            let reason = read("entry.cwasm").unwrap_err();
            assert!(reason.contains("belongs to user 54321"), "{reason}");
            let sub = dir.path().join("theirs");
            std::fs::create_dir(&sub).unwrap();
            set_mode(&sub, 0o700);
            rustix::fs::chown(&sub, other, None).unwrap();
            let reason = untrusted(&sub).expect("another user's directory");
            assert!(reason.contains("belongs to user 54321"), "{reason}");
        }
    }
}
