//! The workspace: plugin state (key-value) and artifacts (blobs) kept
//! between calls, scoped per plugin and, for keys, per owner
//! ([`KeyOwner`]), bounded by quotas.
//!
//! The checks and the records live in the storage seam
//! (`airlock_store::Workspace` over any `WorkspaceStore`: sled in the data
//! directory, PostgreSQL shared by hosts, memory); this module re-exports
//! what the host's API names.
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

pub use airlock_store::{
    KeyEntry, KeyOwner, KeyScope, MAX_KEY_BYTES, MAX_LIST, MAX_SESSION_BYTES, MAX_VALUE_BYTES,
    Quota, Usage, Workspace, WorkspaceError, check_session,
};

/// The workspace directory inside the data directory (sled).
pub const WORKSPACE_DIR: &str = "workspace";
