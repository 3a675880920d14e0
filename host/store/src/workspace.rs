//! The workspace: plugin state (key-value) and artifacts (blobs) kept
//! between calls, scoped per plugin and, for keys, per owner
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
//! [`Workspace`] checks every input once; a [`WorkspaceStore`] backend only
//! stores, and updates a plugin's [`Usage`] in the same atomic step as the
//! write it accounts for, after checking the [`Quota`]
//! ([`Usage::after_set`] and friends): usage never drifts from the data,
//! across a crash or concurrent writers on many hosts.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value or blob, in bytes.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Most keys one `list-keys` returns.
pub const MAX_LIST: u32 = 1000;
/// Longest session key, in bytes.
pub const MAX_SESSION_BYTES: usize = 128;
/// How a blob ref starts.
pub const BLOB_REF_PREFIX: &str = "sha256:";

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

/// Separates principal and session inside an encoded owner (a control
/// character, which neither may contain).
const OWNER_SEP: char = '\u{1f}';

/// Whose keys an operation reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
    /// An unambiguous text encoding for backends: `*`, `u␟principal` or
    /// `s␟principal␟session` (␟ is U+001F, which owners never contain).
    pub fn encode(&self) -> String {
        match self {
            KeyOwner::Plugin => "*".to_owned(),
            KeyOwner::Principal(p) => format!("u{OWNER_SEP}{p}"),
            KeyOwner::Session { principal, session } => {
                format!("s{OWNER_SEP}{principal}{OWNER_SEP}{session}")
            }
        }
    }

    /// The inverse of [`KeyOwner::encode`].
    pub fn decode(text: &str) -> Option<KeyOwner> {
        if text == "*" {
            return Some(KeyOwner::Plugin);
        }
        if let Some(p) = text.strip_prefix(&format!("u{OWNER_SEP}")) {
            return Some(KeyOwner::Principal(p.to_owned()));
        }
        let rest = text.strip_prefix(&format!("s{OWNER_SEP}"))?;
        let (principal, session) = rest.split_once(OWNER_SEP)?;
        Some(KeyOwner::Session {
            principal: principal.to_owned(),
            session: session.to_owned(),
        })
    }
}

impl fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
#[derive(Debug, thiserror::Error)]
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
    Unavailable(#[source] StoreError),
}

impl From<StoreError> for WorkspaceError {
    fn from(e: StoreError) -> WorkspaceError {
        WorkspaceError::Unavailable(e)
    }
}

/// What a plugin uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Keys stored (all owners).
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

impl Usage {
    /// The usage after setting `key` (whose old value had `old` bytes, if
    /// any) to `new` bytes, if `quota` allows it.
    ///
    /// # Errors
    /// [`WorkspaceError::QuotaExceeded`].
    pub fn after_set(
        self,
        key: &str,
        old: Option<usize>,
        new: usize,
        quota: Quota,
    ) -> Result<Usage, WorkspaceError> {
        let mut usage = self;
        let entry = (key.len() + new) as u64;
        match old {
            Some(old) => {
                usage.bytes = usage
                    .bytes
                    .saturating_sub((key.len() + old) as u64)
                    .saturating_add(entry);
            }
            None => {
                // Saturating: a stored count past any quota (a damaged
                // usage record) must refuse the write, not wrap to a
                // small number and pass.
                usage.keys = usage.keys.saturating_add(1);
                usage.bytes = usage.bytes.saturating_add(entry);
            }
        }
        if usage.keys > quota.max_keys {
            return Err(WorkspaceError::QuotaExceeded(format!(
                "{} keys is the plugin's limit (limits.workspace_keys)",
                quota.max_keys
            )));
        }
        usage.check_bytes(quota)?;
        Ok(usage)
    }

    /// The usage after deleting `key`, whose value had `old` bytes.
    pub fn after_delete(self, key: &str, old: usize) -> Usage {
        Usage {
            keys: self.keys.saturating_sub(1),
            bytes: self.bytes.saturating_sub((key.len() + old) as u64),
            ..self
        }
    }

    /// The usage after adding a new blob of `len` bytes, if `quota` allows.
    ///
    /// # Errors
    /// [`WorkspaceError::QuotaExceeded`].
    pub fn after_blob(self, len: usize, quota: Quota) -> Result<Usage, WorkspaceError> {
        let usage = Usage {
            blobs: self.blobs.saturating_add(1),
            bytes: self.bytes.saturating_add(len as u64),
            ..self
        };
        if usage.blobs > quota.max_blobs {
            return Err(WorkspaceError::QuotaExceeded(format!(
                "{} blobs is the plugin's limit (limits.workspace_blobs)",
                quota.max_blobs
            )));
        }
        usage.check_bytes(quota)?;
        Ok(usage)
    }

    fn check_bytes(&self, quota: Quota) -> Result<(), WorkspaceError> {
        if self.bytes > quota.max_bytes {
            return Err(WorkspaceError::QuotaExceeded(format!(
                "{} bytes is the plugin's limit (limits.workspace_mb); this write needs {}",
                quota.max_bytes, self.bytes
            )));
        }
        Ok(())
    }
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

/// What a workspace backend stores. Inputs are checked by [`Workspace`]
/// before they reach it.
///
/// Contract (checked by the conformance suite): a write and the plugin's
/// usage change together or not at all, and a write that would exceed the
/// quota changes nothing — also when writers on several hosts race.
pub trait WorkspaceStore: Send + Sync + fmt::Debug {
    /// The value of `key`.
    fn get(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<Option<Vec<u8>>>;
    /// Set `key` to `value` within `quota` (see [`Usage::after_set`]).
    ///
    /// # Errors
    /// `QuotaExceeded` (nothing changed) or `Unavailable`.
    fn set(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError>;
    /// Remove `key`; whether it existed.
    fn delete(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Result<bool>;
    /// Keys of `owner` starting with `prefix`, in byte order, after
    /// `start_after`, at most `limit`.
    fn list_keys(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;
    /// Store `data`, whose SHA-256 is `hash`, unless stored already (see
    /// [`Usage::after_blob`]).
    ///
    /// # Errors
    /// `QuotaExceeded` (nothing changed) or `Unavailable`.
    fn put_blob(
        &self,
        plugin: &str,
        hash: &[u8; 32],
        data: &[u8],
        quota: Quota,
    ) -> Result<(), WorkspaceError>;
    /// The blob with SHA-256 `hash`.
    fn get_blob(&self, plugin: &str, hash: &[u8; 32]) -> Result<Option<Vec<u8>>>;
    /// What `plugin` uses.
    fn usage(&self, plugin: &str) -> Result<Usage>;
    /// Plugins with anything stored, and their usage, by name.
    fn plugins(&self) -> Result<Vec<(String, Usage)>>;
    /// Every key of `plugin`, all owners, with the size of its value —
    /// not the value: a plugin's keys may hold a gigabyte, and a listing
    /// or an export must not take it all into memory at once.
    fn entries(&self, plugin: &str) -> Result<Vec<KeyEntry>>;
    /// Every blob of `plugin`: its SHA-256 and size.
    fn blobs(&self, plugin: &str) -> Result<Vec<([u8; 32], usize)>>;
    /// Make every write so far durable (backends whose writes are durable
    /// when they return do nothing).
    fn flush(&self) -> Result<()>;
}

/// The workspace of a host: checks inputs, then asks the backend.
///
/// Cheap to clone: clones share the backend.
#[derive(Debug, Clone)]
pub struct Workspace {
    store: Arc<dyn WorkspaceStore>,
}

impl Workspace {
    /// The workspace kept in `store`.
    pub fn new(store: Arc<dyn WorkspaceStore>) -> Workspace {
        Workspace { store }
    }

    /// The backend.
    pub fn store(&self) -> &Arc<dyn WorkspaceStore> {
        &self.store
    }

    /// The value of `key` for `plugin` and `owner`.
    ///
    /// # Errors
    /// `Invalid` for a bad key; `Unavailable`.
    pub fn get(
        &self,
        plugin: &str,
        owner: &KeyOwner,
        key: &str,
    ) -> Result<Option<Vec<u8>>, WorkspaceError> {
        check_key(key)?;
        check_owner(owner)?;
        Ok(self.store.get(plugin, owner, key)?)
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
        self.store.set(plugin, owner, key, value, quota)
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
        Ok(self.store.delete(plugin, owner, key)?)
    }

    /// Keys starting with `prefix`, after `start_after`, at most `limit`
    /// (and at most [`MAX_LIST`]).
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
        if let Some(after) = start_after
            && after.len() > MAX_KEY_BYTES
        {
            return Err(WorkspaceError::Invalid(format!(
                "start-after longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        let limit = limit.min(MAX_LIST) as usize;
        Ok(self
            .store
            .list_keys(plugin, owner, prefix, start_after, limit)?)
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
        self.store.put_blob(plugin, &hash, data, quota)?;
        Ok(blob_ref(&hash))
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
        Ok(self.store.get_blob(plugin, &hash)?)
    }

    /// What `plugin` uses.
    ///
    /// # Errors
    /// The store's.
    pub fn usage(&self, plugin: &str) -> Result<Usage> {
        self.store.usage(plugin)
    }

    /// Plugins with anything stored, and their usage.
    ///
    /// # Errors
    /// The store's.
    pub fn plugins(&self) -> Result<Vec<(String, Usage)>> {
        self.store.plugins()
    }

    /// Every key of `plugin`, all owners, with its value's size (read a
    /// value with [`get`](Self::get)).
    ///
    /// # Errors
    /// The store's.
    pub fn entries(&self, plugin: &str) -> Result<Vec<KeyEntry>> {
        self.store.entries(plugin)
    }

    /// Every blob of `plugin`: ref and size.
    ///
    /// # Errors
    /// The store's.
    pub fn blobs(&self, plugin: &str) -> Result<Vec<(String, usize)>> {
        Ok(self
            .store
            .blobs(plugin)?
            .into_iter()
            .map(|(hash, size)| (blob_ref(&hash), size))
            .collect())
    }

    /// Make every write so far durable.
    ///
    /// # Errors
    /// The store's.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }
}

/// The ref of the blob with SHA-256 `hash`.
pub fn blob_ref(hash: &[u8; 32]) -> String {
    format!("{BLOB_REF_PREFIX}{}", hex::encode(hash))
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

fn parse_ref(reference: &str) -> Result<[u8; 32], WorkspaceError> {
    let invalid = || {
        WorkspaceError::Invalid(format!(
            "a blob ref is `sha256:` and 64 hex digits, not {:?}",
            // Cut on a character boundary: `get(..80)` inside a character
            // gave `None`, and then the whole ref (a megabyte) was quoted.
            &reference[..reference.floor_char_boundary(80)]
        ))
    };
    let hex_part = reference
        .strip_prefix(BLOB_REF_PREFIX)
        .ok_or_else(invalid)?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).map_err(|_| invalid())?;
    Ok(hash)
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

    /// A bad ref is quoted cut short, on a character boundary: cut inside
    /// a character, the whole ref (a megabyte) was quoted back.
    #[test]
    fn a_bad_blob_ref_is_quoted_at_most_80_bytes() {
        for reference in [
            format!("sha256:{}", "é".repeat(500_000)),
            format!("sha256:{}", "x".repeat(500_000)),
        ] {
            let Err(WorkspaceError::Invalid(message)) = parse_ref(&reference) else {
                panic!("accepted");
            };
            assert!(message.len() < 200, "{} bytes", message.len());
        }
    }

    fn store() -> Workspace {
        Workspace::new(Arc::new(crate::MemoryStore::new()))
    }

    /// A stored usage at the top of its range (a damaged record) wrapped
    /// to a small number on the next write in a release build, which then
    /// passed every quota; it must refuse instead, as PostgreSQL's does.
    #[test]
    fn usage_at_the_top_of_its_range_refuses_rather_than_wraps() {
        let full = Usage {
            keys: u64::MAX,
            blobs: u64::MAX,
            bytes: u64::MAX,
        };
        let quota = Quota {
            max_keys: u64::MAX,
            max_bytes: u64::MAX - 1,
            max_blobs: u64::MAX,
        };
        for result in [
            full.after_set("k", None, 10, quota),
            full.after_set("k", Some(1), 10, quota),
            full.after_blob(10, quota),
        ] {
            assert!(
                matches!(result, Err(WorkspaceError::QuotaExceeded(_))),
                "{result:?}"
            );
        }
    }

    fn session(principal: &str, session: &str) -> KeyOwner {
        KeyScope::Session.owner(principal, Some(session))
    }

    #[test]
    fn keys_are_scoped_by_plugin_and_owner() {
        let s = store();
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
    }

    #[test]
    fn a_principal_with_a_separator_cannot_forge_another_owner() {
        let s = store();
        let forged = KeyOwner::Session {
            principal: "alice\u{1f}s1".into(),
            session: String::new(),
        };
        assert!(matches!(
            s.set("a", &forged, "k", b"x", Q),
            Err(WorkspaceError::Invalid(_))
        ));
        // And the encoding tells every owner apart.
        for owner in [
            KeyOwner::Plugin,
            KeyOwner::Principal("alice".into()),
            session("alice", "s1"),
            session("alice", ""),
        ] {
            assert_eq!(KeyOwner::decode(&owner.encode()), Some(owner));
        }
    }

    #[test]
    fn oversized_values_and_bad_refs_are_invalid() {
        let s = store();
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            s.set("a", P, "k", &big, Q),
            Err(WorkspaceError::Invalid(_))
        ));
        assert!(matches!(
            s.put_blob("a", &big, Q),
            Err(WorkspaceError::Invalid(_))
        ));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            s.get("a", P, &long),
            Err(WorkspaceError::Invalid(_))
        ));
        assert!(matches!(
            s.list_keys("a", P, &long, None, 10),
            Err(WorkspaceError::Invalid(_))
        ));
        assert!(matches!(
            s.get_blob("a", "md5:00"),
            Err(WorkspaceError::Invalid(_))
        ));
    }
}
