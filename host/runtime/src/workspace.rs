//! The workspace store: plugin state (key-value) and artifacts (blobs) kept
//! between calls in sled, scoped per plugin and, for keys, per owner
//! ([`KeyOwner`]), bounded by quotas.
//!
//! # Security: isolation follows identity
//!
//! Whose keys a call reaches is decided by the host, from the manifest's
//! `capabilities.workspace_scope` ([`KeyScope`]) and the call's
//! *principal* (who the host authenticated the call as) — never from a
//! string the caller picks alone. A caller's session only narrows within its
//! own principal: two principals naming the same session reach different
//! keys, and calls without a session share a namespace only within one
//! principal. Plugin-wide keys exist only when the manifest asks for them.
//!
//! Layout (one sled tree, `workspace`):
//! - `k` ‖ plugin ‖ 0 ‖ owner ‖ 0 ‖ key → value, where owner is `*`
//!   (plugin-wide), `u` ‖ 0x1F ‖ principal, or `s` ‖ 0x1F ‖ principal ‖
//!   0x1F ‖ session (principals and sessions have no control characters,
//!   so the encoding is unambiguous);
//! - `b` ‖ plugin ‖ 0 ‖ SHA-256(data) → data;
//! - `u` ‖ plugin → usage (JSON: keys, blobs, bytes);
//! - `L` → the layout version ([`LAYOUT`]).
//!
//! Every write updates the value and the plugin's usage in one atomic batch,
//! under a lock, after checking the quota: usage can never drift from the
//! data, even across a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Store, StoreError, StoreResult as Result};

/// The workspace directory inside the data directory.
pub const WORKSPACE_DIR: &str = "workspace";
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value or blob, in bytes.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Most keys one `list-keys` returns.
pub const MAX_LIST: u32 = 1000;
/// Longest session key, in bytes.
pub const MAX_SESSION_BYTES: usize = 128;

const KV: u8 = b'k';
const BLOB: u8 = b'b';
const USAGE: u8 = b'u';
const LAYOUT_KEY: &[u8] = b"L";
const BLOB_REF_PREFIX: &str = "sha256:";
/// Separates principal and session inside an owner (a control character,
/// which neither may contain).
const OWNER_SEP: u8 = 0x1f;

/// The store's layout version. Layout 1 scoped keys by a session the caller
/// named alone; a store in that layout is refused rather than read with
/// other isolation.
pub const LAYOUT: &str = "2";

/// How a plugin's keys are scoped (`capabilities.workspace_scope`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyScope {
    /// One set of keys per principal and session (calls without a session
    /// use the principal's own default set). The default.
    #[default]
    Session,
    /// One set of keys per principal, whatever the session.
    Principal,
    /// One set of keys shared by every caller of the plugin: the manifest
    /// asks for it explicitly.
    Plugin,
}

impl KeyScope {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Session => "session",
            KeyScope::Principal => "principal",
            KeyScope::Plugin => "plugin",
        }
    }

    /// The owner of a call's keys under this scope.
    pub fn owner(self, principal: &str, session: Option<&str>) -> KeyOwner {
        match self {
            KeyScope::Plugin => KeyOwner::Plugin,
            KeyScope::Principal => KeyOwner::Principal(principal.to_owned()),
            KeyScope::Session => KeyOwner::Session {
                principal: principal.to_owned(),
                session: session.unwrap_or_default().to_owned(),
            },
        }
    }
}

/// Whose keys an operation reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum KeyOwner {
    /// Keys shared by every caller of the plugin.
    Plugin,
    /// One principal's keys.
    Principal(String),
    /// One principal's keys in one session (empty: calls without one).
    Session {
        /// The principal.
        principal: String,
        /// The session within it.
        session: String,
    },
}

impl KeyOwner {
    fn segment(&self) -> Vec<u8> {
        match self {
            KeyOwner::Plugin => vec![b'*'],
            KeyOwner::Principal(p) => {
                let mut v = vec![b'u', OWNER_SEP];
                v.extend_from_slice(p.as_bytes());
                v
            }
            KeyOwner::Session { principal, session } => {
                let mut v = vec![b's', OWNER_SEP];
                v.extend_from_slice(principal.as_bytes());
                v.push(OWNER_SEP);
                v.extend_from_slice(session.as_bytes());
                v
            }
        }
    }

    fn parse(segment: &[u8]) -> Option<KeyOwner> {
        let text = std::str::from_utf8(segment).ok()?;
        if text == "*" {
            return Some(KeyOwner::Plugin);
        }
        let sep = char::from(OWNER_SEP);
        if let Some(p) = text.strip_prefix(&format!("u{sep}")) {
            return Some(KeyOwner::Principal(p.to_owned()));
        }
        let rest = text.strip_prefix(&format!("s{sep}"))?;
        let (principal, session) = rest.split_once(sep)?;
        Some(KeyOwner::Session {
            principal: principal.to_owned(),
            session: session.to_owned(),
        })
    }
}

impl std::fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOwner::Plugin => f.write_str("plugin-wide"),
            KeyOwner::Principal(p) => write!(f, "principal {p:?}"),
            KeyOwner::Session { principal, session } if session.is_empty() => {
                write!(f, "principal {principal:?}, no session")
            }
            KeyOwner::Session { principal, session } => {
                write!(f, "principal {principal:?}, session {session:?}")
            }
        }
    }
}

/// Why a workspace operation failed (the WIT `workspace-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceError {
    /// The grant is read-only.
    #[error("the workspace grant is read-only")]
    ReadOnly,
    /// A quota would be exceeded.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// Bad key, value, prefix or ref.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The store failed; nothing changed.
    #[error("workspace unavailable: {0}")]
    Unavailable(String),
}

/// What a plugin uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Keys stored (all sessions).
    pub keys: u64,
    /// Blobs stored.
    pub blobs: u64,
    /// Bytes of keys, values and blobs.
    pub bytes: u64,
}

/// A plugin's workspace quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most keys.
    pub max_keys: u64,
    /// Most bytes (keys, values and blobs).
    pub max_bytes: u64,
    /// Most blobs.
    pub max_blobs: u64,
}

/// One key as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyEntry {
    /// Whose key it is.
    pub owner: KeyOwner,
    /// The key.
    pub key: String,
    /// Size of its value in bytes.
    pub size: usize,
}

/// The sled-backed store shared by every plugin of a host.
#[derive(Clone)]
pub struct WorkspaceStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writes so quota checks and usage updates are exact.
    write: Mutex<()>,
}

impl std::fmt::Debug for WorkspaceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn store_error(path: &Path, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::new(Store::Workspace, path, e)
}

impl WorkspaceStore {
    /// Open (or create) the store in `dir`, waiting up to `lock_wait` for
    /// another process to release it.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be created or opened (including
    /// when another process keeps it open).
    pub fn open(dir: &Path, lock_wait: Duration) -> Result<WorkspaceStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| store_error(dir, format!("cannot create: {e}")))?;
        let config = sled::Config::new().path(dir).flush_every_ms(Some(200));
        let db =
            airlock_audit::sled_open::open_waiting(&config, lock_wait).map_err(|e| match e {
                airlock_audit::sled_open::OpenError::Locked => store_error(
                    dir,
                    "in use by another airlock process; stop it or use another data directory",
                ),
                airlock_audit::sled_open::OpenError::Failed(e) => store_error(dir, e),
            })?;
        WorkspaceStore::from_db(dir.to_owned(), db)
    }

    /// A store in a temporary database, removed when dropped.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be created.
    pub fn temporary() -> Result<WorkspaceStore> {
        let path = PathBuf::from("<temporary>");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|e| store_error(&path, e))?;
        WorkspaceStore::from_db(path, db)
    }

    fn from_db(path: PathBuf, db: sled::Db) -> Result<WorkspaceStore> {
        let tree = db
            .open_tree("workspace")
            .map_err(|e| store_error(&path, e))?;
        match tree.get(LAYOUT_KEY).map_err(|e| store_error(&path, e))? {
            Some(v) if v.as_ref() == LAYOUT.as_bytes() => {}
            Some(v) => {
                return Err(store_error(
                    &path,
                    format!(
                        "workspace layout {} is not this host's layout {LAYOUT}",
                        String::from_utf8_lossy(&v)
                    ),
                ));
            }
            None => {
                let written_before = tree
                    .iter()
                    .next()
                    .transpose()
                    .map_err(|e| store_error(&path, e))?
                    .is_some();
                if written_before {
                    return Err(store_error(
                        &path,
                        "this store was written in layout 1, where keys were scoped by caller-named sessions across principals; its keys cannot be given owners safely — move the directory aside and start a new one",
                    ));
                }
                tree.insert(LAYOUT_KEY, LAYOUT.as_bytes())
                    .map_err(|e| store_error(&path, e))?;
            }
        }
        Ok(WorkspaceStore {
            inner: Arc::new(Inner {
                path,
                db,
                tree,
                write: Mutex::new(()),
            }),
        })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> WorkspaceError {
        tracing::error!(path = %self.inner.path.display(), error = %e, "workspace store failed");
        WorkspaceError::Unavailable(e.to_string())
    }

    /// The value of `key` for `plugin` and `owner`.
    ///
    /// # Errors
    /// [`WorkspaceError::Invalid`] for a bad key; `Unavailable` on a store
    /// failure.
    pub fn get(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
    ) -> Result<Option<Vec<u8>>, WorkspaceError> {
        check_key(key)?;
        check_owner(owner)?;
        self.inner
            .tree
            .get(kv_key(plugin, owner, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.unavailable(e))
    }

    /// Store `value` under `key`.
    ///
    /// # Errors
    /// `Invalid` for a bad key or an oversized value, `QuotaExceeded`,
    /// `Unavailable`.
    pub fn set(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError> {
        check_key(key)?;
        check_owner(owner)?;
        check_size(value.len(), "value")?;
        let k = kv_key(plugin, owner, key);
        let _guard = self.lock()?;
        let mut usage = self.usage(plugin).map_err(|e| self.unavailable(e))?;
        let old = self.inner.tree.get(&k).map_err(|e| self.unavailable(e))?;
        let entry = (key.len() + value.len()) as u64;
        match &old {
            Some(old) => {
                usage.bytes = usage.bytes - (key.len() + old.len()) as u64 + entry;
            }
            None => {
                usage.keys += 1;
                usage.bytes += entry;
            }
        }
        if usage.keys > quota.max_keys {
            return Err(WorkspaceError::QuotaExceeded(format!(
                "{} keys is the plugin's limit (limits.workspace_keys)",
                quota.max_keys
            )));
        }
        check_bytes(&usage, quota)?;
        let mut batch = sled::Batch::default();
        batch.insert(k, value);
        batch.insert(usage_key(plugin), usage_bytes(&usage));
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.unavailable(e))
    }

    /// Remove `key`; whether it existed.
    ///
    /// # Errors
    /// `Invalid` for a bad key, `Unavailable`.
    pub fn delete(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
    ) -> Result<bool, WorkspaceError> {
        check_key(key)?;
        check_owner(owner)?;
        let k = kv_key(plugin, owner, key);
        let _guard = self.lock()?;
        let Some(old) = self.inner.tree.get(&k).map_err(|e| self.unavailable(e))? else {
            return Ok(false);
        };
        let mut usage = self.usage(plugin).map_err(|e| self.unavailable(e))?;
        usage.keys = usage.keys.saturating_sub(1);
        usage.bytes = usage.bytes.saturating_sub((key.len() + old.len()) as u64);
        let mut batch = sled::Batch::default();
        batch.remove(k);
        batch.insert(usage_key(plugin), usage_bytes(&usage));
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.unavailable(e))?;
        Ok(true)
    }

    /// Keys starting with `prefix`, after `start_after`, at most `limit`.
    ///
    /// # Errors
    /// `Invalid` for an over-long prefix, `Unavailable`.
    pub fn list_keys(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, WorkspaceError> {
        check_owner(owner)?;
        if prefix.len() > MAX_KEY_BYTES {
            return Err(WorkspaceError::Invalid(format!(
                "prefix longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        let scope = kv_key(plugin, owner, "");
        let full_prefix = kv_key(plugin, owner, prefix);
        let limit = limit.min(MAX_LIST) as usize;
        let mut out = Vec::new();
        let iter = match start_after {
            Some(after) => {
                let mut from = kv_key(plugin, owner, after);
                from.push(0);
                self.inner.tree.range(from..)
            }
            None => self.inner.tree.range(full_prefix.clone()..),
        };
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(|e| self.unavailable(e))?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            let key = String::from_utf8_lossy(&k[scope.len()..]).into_owned();
            out.push(key);
        }
        Ok(out)
    }

    /// Store `data` as a blob; its ref.
    ///
    /// # Errors
    /// `Invalid` when oversized, `QuotaExceeded`, `Unavailable`.
    pub fn put_blob(
        &self,
        plugin: &str,
        data: &[u8],
        quota: Quota,
    ) -> Result<String, WorkspaceError> {
        check_size(data.len(), "blob")?;
        let hash: [u8; 32] = Sha256::digest(data).into();
        let reference = format!("{BLOB_REF_PREFIX}{}", hex::encode(hash));
        let k = blob_key(plugin, &hash);
        let _guard = self.lock()?;
        if self
            .inner
            .tree
            .contains_key(&k)
            .map_err(|e| self.unavailable(e))?
        {
            return Ok(reference);
        }
        let mut usage = self.usage(plugin).map_err(|e| self.unavailable(e))?;
        usage.blobs += 1;
        usage.bytes += data.len() as u64;
        if usage.blobs > quota.max_blobs {
            return Err(WorkspaceError::QuotaExceeded(format!(
                "{} blobs is the plugin's limit (limits.workspace_blobs)",
                quota.max_blobs
            )));
        }
        check_bytes(&usage, quota)?;
        let mut batch = sled::Batch::default();
        batch.insert(k, data);
        batch.insert(usage_key(plugin), usage_bytes(&usage));
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.unavailable(e))?;
        Ok(reference)
    }

    /// The blob `reference` stored by `plugin`.
    ///
    /// # Errors
    /// `Invalid` for a malformed ref, `Unavailable`.
    pub fn get_blob(
        &self,
        plugin: &str,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, WorkspaceError> {
        let hash = parse_ref(reference)?;
        self.inner
            .tree
            .get(blob_key(plugin, &hash))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.unavailable(e))
    }

    /// What `plugin` uses.
    ///
    /// # Errors
    /// [`StoreError`] on a store failure or corrupt usage record.
    pub fn usage(&self, plugin: &str) -> Result<Usage> {
        match self
            .inner
            .tree
            .get(usage_key(plugin))
            .map_err(|e| store_error(&self.inner.path, e))?
        {
            None => Ok(Usage::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                store_error(
                    &self.inner.path,
                    format!("usage record of `{plugin}` is corrupt: {e}"),
                )
            }),
        }
    }

    /// Plugins with anything stored, and their usage.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn plugins(&self) -> Result<Vec<(String, Usage)>> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([USAGE]) {
            let (k, v) = item.map_err(|e| store_error(&self.inner.path, e))?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            let usage: Usage = serde_json::from_slice(&v).map_err(|e| {
                store_error(
                    &self.inner.path,
                    format!("usage record of `{name}` is corrupt: {e}"),
                )
            })?;
            if usage != Usage::default() {
                out.push((name, usage));
            }
        }
        Ok(out)
    }

    /// Every key of `plugin`, all owners, with its value.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn entries(&self, plugin: &str) -> Result<Vec<(KeyEntry, Vec<u8>)>> {
        let mut prefix = vec![KV];
        prefix.extend_from_slice(plugin.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(&prefix) {
            let (k, v) = item.map_err(|e| store_error(&self.inner.path, e))?;
            let rest = &k[prefix.len()..];
            let Some(split) = rest.iter().position(|&b| b == 0) else {
                continue;
            };
            let Some(owner) = KeyOwner::parse(&rest[..split]) else {
                continue;
            };
            let key = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
            out.push((
                KeyEntry {
                    owner,
                    key,
                    size: v.len(),
                },
                v.to_vec(),
            ));
        }
        Ok(out)
    }

    /// Every blob of `plugin`: ref and size.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn blobs(&self, plugin: &str) -> Result<Vec<(String, usize)>> {
        let mut prefix = vec![BLOB];
        prefix.extend_from_slice(plugin.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(&prefix) {
            let (k, v) = item.map_err(|e| store_error(&self.inner.path, e))?;
            out.push((
                format!("{BLOB_REF_PREFIX}{}", hex::encode(&k[prefix.len()..])),
                v.len(),
            ));
        }
        Ok(out)
    }

    /// Make every write so far durable.
    ///
    /// # Errors
    /// [`StoreError`] when the flush fails.
    pub async fn flush_async(&self) -> Result<()> {
        // On the blocking pool: an fsync must not stall the executor (and
        // sled's own flush_async can stall under many concurrent flushes).
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| Err(store_error(&self.inner.path, e)))
    }

    /// Make every write so far durable, blocking.
    ///
    /// # Errors
    /// [`StoreError`] when the flush fails.
    pub fn flush(&self) -> Result<()> {
        self.inner
            .db
            .flush()
            .map(drop)
            .map_err(|e| store_error(&self.inner.path, e))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, WorkspaceError> {
        self.inner
            .write
            .lock()
            .map_err(|_| WorkspaceError::Unavailable("a writer panicked".into()))
    }
}

/// Check a caller-supplied session key.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_session(session: &str) -> std::result::Result<(), String> {
    if session.is_empty() || session.len() > MAX_SESSION_BYTES {
        return Err(format!("a session key is 1 to {MAX_SESSION_BYTES} bytes"));
    }
    if session.chars().any(char::is_control) {
        return Err("a session key has no control characters".into());
    }
    Ok(())
}

fn check_owner(owner: &KeyOwner) -> Result<(), WorkspaceError> {
    let parts: &[&str] = match owner {
        KeyOwner::Plugin => &[],
        KeyOwner::Principal(p) => &[p.as_str()],
        KeyOwner::Session { principal, session } => &[principal.as_str(), session.as_str()],
    };
    if parts.iter().any(|p| p.chars().any(char::is_control)) {
        return Err(WorkspaceError::Invalid(
            "principals and sessions have no control characters".into(),
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), WorkspaceError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(WorkspaceError::Invalid(format!(
            "a key is 1 to {MAX_KEY_BYTES} bytes, this one is {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_size(len: usize, what: &str) -> Result<(), WorkspaceError> {
    if len > MAX_VALUE_BYTES {
        return Err(WorkspaceError::Invalid(format!(
            "a {what} is at most {MAX_VALUE_BYTES} bytes, this one is {len}"
        )));
    }
    Ok(())
}

fn check_bytes(usage: &Usage, quota: Quota) -> Result<(), WorkspaceError> {
    if usage.bytes > quota.max_bytes {
        return Err(WorkspaceError::QuotaExceeded(format!(
            "{} bytes is the plugin's limit (limits.workspace_mb); this write needs {}",
            quota.max_bytes, usage.bytes
        )));
    }
    Ok(())
}

fn parse_ref(reference: &str) -> Result<[u8; 32], WorkspaceError> {
    let invalid = || {
        WorkspaceError::Invalid(format!(
            "a blob ref is `sha256:` and 64 hex digits, not {:?}",
            reference.get(..80).unwrap_or(reference)
        ))
    };
    let hex_part = reference
        .strip_prefix(BLOB_REF_PREFIX)
        .ok_or_else(invalid)?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).map_err(|_| invalid())?;
    Ok(hash)
}

fn kv_key(plugin: &str, owner: &KeyOwner, key: &str) -> Vec<u8> {
    let owner = owner.segment();
    let mut k = Vec::with_capacity(3 + plugin.len() + owner.len() + key.len());
    k.push(KV);
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(&owner);
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

fn usage_bytes(usage: &Usage) -> Vec<u8> {
    serde_json::to_vec(usage).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        max_keys: 3,
        max_bytes: 1000,
        max_blobs: 2,
    };
    const P: &KeyOwner = &KeyOwner::Plugin;

    fn session(principal: &str, session: &str) -> KeyOwner {
        KeyScope::Session.owner(principal, Some(session))
    }

    #[test]
    fn keys_are_scoped_by_plugin_and_owner() {
        let s = WorkspaceStore::temporary().unwrap();
        let alice_s1 = session("alice", "s1");
        s.set("a", P, "k", b"plugin a", Q).unwrap();
        s.set("a", &alice_s1, "k", b"session 1", Q).unwrap();
        assert_eq!(s.get("a", P, "k").unwrap().unwrap(), b"plugin a");
        assert_eq!(s.get("a", &alice_s1, "k").unwrap().unwrap(), b"session 1");
        assert_eq!(s.get("a", &session("alice", "s2"), "k").unwrap(), None);
        // Another principal naming the same session reaches other keys.
        assert_eq!(s.get("a", &session("mallory", "s1"), "k").unwrap(), None);
        let no_session = KeyScope::Session.owner("alice", None);
        assert_eq!(s.get("a", &no_session, "k").unwrap(), None);
        assert_eq!(
            s.get("a", &KeyOwner::Principal("alice".into()), "k")
                .unwrap(),
            None
        );
        assert_eq!(s.get("b", P, "k").unwrap(), None);
        assert_eq!(s.list_keys("a", P, "", None, 10).unwrap(), ["k"]);
        let entries = s.entries("a").unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().any(|(e, _)| e.owner == alice_s1));
        assert!(s.delete("a", P, "k").unwrap());
        assert!(!s.delete("a", P, "k").unwrap());
        assert_eq!(s.usage("a").unwrap().keys, 1);
    }

    #[test]
    fn a_principal_with_a_separator_cannot_forge_another_owner() {
        let s = WorkspaceStore::temporary().unwrap();
        let forged = KeyOwner::Session {
            principal: "alice\u{1f}s1".into(),
            session: String::new(),
        };
        assert!(matches!(
            s.set("a", &forged, "k", b"x", Q),
            Err(WorkspaceError::Invalid(_))
        ));
    }

    #[test]
    fn a_store_in_the_old_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("workspace").unwrap();
            tree.insert(b"kp\0\0k", b"v".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let err = WorkspaceStore::open(dir.path(), Duration::from_secs(5)).unwrap_err();
        assert!(err.source.to_string().contains("layout 1"), "{err}");
    }

    #[test]
    fn blob_count_is_bounded() {
        let s = WorkspaceStore::temporary().unwrap();
        s.put_blob("p", b"one", Q).unwrap();
        s.put_blob("p", b"two", Q).unwrap();
        assert!(matches!(
            s.put_blob("p", b"three", Q),
            Err(WorkspaceError::QuotaExceeded(m)) if m.contains("workspace_blobs")
        ));
        // An existing blob is not a new one.
        s.put_blob("p", b"one", Q).unwrap();
    }

    #[test]
    fn listing_pages_by_prefix() {
        let s = WorkspaceStore::temporary().unwrap();
        let q = Quota {
            max_keys: 100,
            max_bytes: 10_000,
            max_blobs: 10,
        };
        for k in ["n/1", "n/2", "n/3", "o/1"] {
            s.set("p", P, k, b"x", q).unwrap();
        }
        assert_eq!(s.list_keys("p", P, "n/", None, 2).unwrap(), ["n/1", "n/2"]);
        assert_eq!(s.list_keys("p", P, "n/", Some("n/2"), 2).unwrap(), ["n/3"]);
    }

    #[test]
    fn quotas_and_sizes_are_enforced_and_usage_stays_exact() {
        let s = WorkspaceStore::temporary().unwrap();
        for k in ["a", "b", "c"] {
            s.set("p", P, k, b"1234", Q).unwrap();
        }
        assert!(matches!(
            s.set("p", P, "d", b"x", Q),
            Err(WorkspaceError::QuotaExceeded(_))
        ));
        // Replacing a value does not add a key.
        s.set("p", P, "a", b"12345678", Q).unwrap();
        assert!(matches!(
            s.set("p", P, "a", &[0; 1001], Q),
            Err(WorkspaceError::QuotaExceeded(_))
        ));
        assert!(matches!(
            s.set("p", P, "a", &vec![0; MAX_VALUE_BYTES + 1], Q),
            Err(WorkspaceError::Invalid(_))
        ));
        assert!(matches!(
            s.set("p", P, "", b"x", Q),
            Err(WorkspaceError::Invalid(_))
        ));
        let u = s.usage("p").unwrap();
        assert_eq!(u.keys, 3);
        assert_eq!(u.bytes, 3 + 8 + 4 + 4);
    }

    #[test]
    fn blobs_are_content_addressed_and_scoped() {
        let s = WorkspaceStore::temporary().unwrap();
        let r1 = s.put_blob("p", b"artifact", Q).unwrap();
        let r2 = s.put_blob("p", b"artifact", Q).unwrap();
        assert_eq!(r1, r2);
        assert!(r1.starts_with("sha256:") && r1.len() == 71);
        assert_eq!(s.usage("p").unwrap().blobs, 1);
        assert_eq!(s.get_blob("p", &r1).unwrap().unwrap(), b"artifact");
        assert_eq!(s.get_blob("other", &r1).unwrap(), None);
        assert!(matches!(
            s.get_blob("p", "sha256:zz"),
            Err(WorkspaceError::Invalid(_))
        ));
        assert!(matches!(
            s.get_blob("p", "md5:00"),
            Err(WorkspaceError::Invalid(_))
        ));
    }
}
