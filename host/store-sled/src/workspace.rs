//! [`SledWorkspace`]: plugin keys and blobs in sled.
//!
//! Layout 2 (one tree, `workspace`), unchanged, so existing stores open as
//! they are:
//! - `k` ‖ plugin ‖ 0 ‖ owner ‖ 0 ‖ key → value, owner as
//!   [`KeyOwner::encode`];
//! - `b` ‖ plugin ‖ 0 ‖ SHA-256(data) → data;
//! - `u` ‖ plugin → usage (JSON: keys, blobs, bytes);
//! - `L` → the layout version ([`LAYOUT`]).
//!
//! Every write updates the value and the plugin's usage in one atomic
//! batch, under this process's lock (sled is held by one process), after
//! checking the quota: usage never drifts from the data, even across a
//! crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use airlock_store::{
    ErrorKind, KeyEntry, KeyOwner, Quota, Result, StoreError, Usage, WorkspaceError, WorkspaceStore,
};

const KV: u8 = b'k';
const BLOB: u8 = b'b';
const USAGE: u8 = b'u';
const LAYOUT_KEY: &[u8] = b"L";

/// The store's layout version. Layout 1 scoped keys by a session the caller
/// named alone; a store in that layout is refused rather than read with
/// other isolation.
pub const LAYOUT: &str = "2";

/// The workspace in a sled database.
#[derive(Clone)]
pub struct SledWorkspace {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writes so quota checks and usage updates are exact.
    write: Mutex<()>,
}

impl std::fmt::Debug for SledWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledWorkspace")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SledWorkspace {
    /// The workspace in `db` (opened from `path`), checking its layout.
    ///
    /// # Errors
    /// `Incompatible` for a store in another layout; `Unavailable`.
    pub fn new(path: &Path, db: sled::Db) -> Result<SledWorkspace> {
        let failed = |e| StoreError::unavailable(format!("workspace at {}", path.display()), e);
        let tree = db.open_tree("workspace").map_err(failed)?;
        match tree.get(LAYOUT_KEY).map_err(failed)? {
            Some(v) if v.as_ref() == LAYOUT.as_bytes() => {}
            Some(v) => {
                return Err(StoreError::new(
                    ErrorKind::Incompatible,
                    format!(
                        "workspace at {}: layout {:?} is not this host's layout {LAYOUT}",
                        path.display(),
                        String::from_utf8_lossy(&v)
                    ),
                ));
            }
            None => {
                let written_before = tree.iter().next().transpose().map_err(failed)?.is_some();
                if written_before {
                    return Err(StoreError::new(
                        ErrorKind::Incompatible,
                        format!(
                            "workspace at {}: this store was written in layout 1, where keys were scoped by caller-named sessions across principals; its keys cannot be given owners safely — move the directory aside and start a new one",
                            path.display()
                        ),
                    ));
                }
                tree.insert(LAYOUT_KEY, LAYOUT.as_bytes()).map_err(failed)?;
            }
        }
        Ok(SledWorkspace {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db,
                tree,
                write: Mutex::new(()),
            }),
        })
    }

    fn failed(&self, e: sled::Error) -> StoreError {
        StoreError::unavailable(format!("workspace at {}", self.inner.path.display()), e)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // Holds no data: a panic while holding it leaves nothing half-done
        // (sled batches are atomic).
        self.inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_with_usage(
        &self,
        plugin: &str,
        change: impl FnOnce(&mut sled::Batch),
        usage: &Usage,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        change(&mut batch);
        let usage = serde_json::to_vec(usage).map_err(|e| {
            StoreError::with_source(ErrorKind::Corrupt, "cannot encode a usage record", e)
        })?;
        batch.insert(usage_key(plugin), usage);
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.failed(e))
    }
}

impl WorkspaceStore for SledWorkspace {
    fn get(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner
            .tree
            .get(kv_key(plugin, owner, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.failed(e))
    }

    fn set(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        let k = kv_key(plugin, owner, key);
        let _guard = self.lock();
        let usage = self.usage(plugin)?;
        let old = self.inner.tree.get(&k).map_err(|e| self.failed(e))?;
        let usage = usage.after_set(key, old.as_ref().map(|o| o.len()), value.len(), quota)?;
        self.write_with_usage(plugin, |b| b.insert(k, value), &usage)?;
        Ok(())
    }

    fn delete(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<bool> {
        let k = kv_key(plugin, owner, key);
        let _guard = self.lock();
        let Some(old) = self.inner.tree.get(&k).map_err(|e| self.failed(e))? else {
            return Ok(false);
        };
        let usage = self.usage(plugin)?.after_delete(key, old.len());
        self.write_with_usage(plugin, |b| b.remove(k), &usage)?;
        Ok(true)
    }

    fn list_keys(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let scope = kv_key(plugin, owner, "");
        let full_prefix = kv_key(plugin, owner, prefix);
        let from = match start_after {
            Some(after) if after >= prefix => {
                let mut from = kv_key(plugin, owner, after);
                from.push(0);
                from
            }
            _ => full_prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.inner.tree.range(from..) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(|e| self.failed(e))?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            out.push(crate::stored_str(
                || format!("workspace at {}: a key", self.inner.path.display()),
                &k[scope.len()..],
            )?);
        }
        Ok(out)
    }

    fn put_blob(
        &self,
        plugin: &str,
        hash: &[u8; 32],
        data: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        let k = blob_key(plugin, hash);
        let _guard = self.lock();
        if self
            .inner
            .tree
            .contains_key(&k)
            .map_err(|e| self.failed(e))?
        {
            return Ok(());
        }
        let usage = self.usage(plugin)?.after_blob(data.len(), quota)?;
        self.write_with_usage(plugin, |b| b.insert(k, data), &usage)?;
        Ok(())
    }

    fn get_blob(&self, plugin: &str, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.inner
            .tree
            .get(blob_key(plugin, hash))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.failed(e))
    }

    fn usage(&self, plugin: &str) -> Result<Usage> {
        match self
            .inner
            .tree
            .get(usage_key(plugin))
            .map_err(|e| self.failed(e))?
        {
            None => Ok(Usage::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::with_source(
                    ErrorKind::Corrupt,
                    format!(
                        "workspace at {}: usage record of `{plugin}` is corrupt",
                        self.inner.path.display()
                    ),
                    e,
                )
            }),
        }
    }

    fn plugins(&self) -> Result<Vec<(String, Usage)>> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([USAGE]) {
            let (k, _) = item.map_err(|e| self.failed(e))?;
            let name = crate::stored_str(
                || {
                    format!(
                        "workspace at {}: a plugin's name",
                        self.inner.path.display()
                    )
                },
                &k[1..],
            )?;
            let usage = self.usage(&name)?;
            if usage != Usage::default() {
                out.push((name, usage));
            }
        }
        Ok(out)
    }

    fn entries(&self, plugin: &str) -> Result<Vec<KeyEntry>> {
        let mut prefix = vec![KV];
        prefix.extend_from_slice(plugin.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(&prefix) {
            let (k, v) = item.map_err(|e| self.failed(e))?;
            // As PostgreSQL does: an entry that does not decode is an
            // error, never skipped or its key changed, so an export holds
            // every entry exactly or fails naming the plugin.
            let corrupt = |what: &str| {
                StoreError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "workspace at {}: a stored entry of `{plugin}` {what}",
                        self.inner.path.display()
                    ),
                )
            };
            let rest = &k[prefix.len()..];
            let Some(split) = rest.iter().position(|&b| b == 0) else {
                return Err(corrupt("has no owner"));
            };
            let Some(owner) = std::str::from_utf8(&rest[..split])
                .ok()
                .and_then(KeyOwner::decode)
            else {
                return Err(corrupt("has an owner that does not decode"));
            };
            let key = String::from_utf8(rest[split + 1..].to_vec())
                .map_err(|_| corrupt("has a key that is not UTF-8"))?;
            out.push(KeyEntry {
                owner,
                key,
                size: v.len(),
            });
        }
        Ok(out)
    }

    fn blobs(&self, plugin: &str) -> Result<Vec<([u8; 32], usize)>> {
        let mut prefix = vec![BLOB];
        prefix.extend_from_slice(plugin.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(&prefix) {
            let (k, v) = item.map_err(|e| self.failed(e))?;
            let Ok(hash) = <[u8; 32]>::try_from(&k[prefix.len()..]) else {
                continue;
            };
            out.push((hash, v.len()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        self.inner.db.flush().map(drop).map_err(|e| self.failed(e))
    }
}

fn kv_key(plugin: &str, owner: &KeyOwner, key: &str) -> Vec<u8> {
    let owner = owner.encode();
    let mut k = Vec::with_capacity(3 + plugin.len() + owner.len() + key.len());
    k.push(KV);
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn blob_key(plugin: &str, hash: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + plugin.len() + 32);
    k.push(BLOB);
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(hash);
    k
}

fn usage_key(plugin: &str) -> Vec<u8> {
    let mut k = vec![USAGE];
    k.extend_from_slice(plugin.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's listing skipped an entry whose owner did not decode and
    /// changed a key that was not UTF-8 (lossily), so `airlock workspace
    /// export` dropped or altered data without a word; PostgreSQL's
    /// refused. Both refuse now.
    #[test]
    fn an_entry_that_does_not_decode_fails_the_listing_not_the_data() {
        for bad in [
            {
                let mut k = vec![KV];
                k.extend_from_slice(b"notes\0no-such-owner\0key");
                k
            },
            {
                let mut k = kv_key("notes", &KeyOwner::Plugin, "");
                k.extend_from_slice(&[0xff, 0xfe]);
                k
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let workspace = SledWorkspace::new(dir.path(), db).unwrap();
            let tree = &workspace.inner.tree;
            tree.insert(kv_key("notes", &KeyOwner::Plugin, "fine"), b"1".as_slice())
                .unwrap();
            tree.insert(bad, b"2".as_slice()).unwrap();
            let err = workspace.entries("notes").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains("`notes`"), "{err}");
        }
    }
}
