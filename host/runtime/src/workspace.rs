//! The workspace: plugin state (key-value) and artifacts (blobs) kept
//! between calls, scoped per plugin and, for keys, per owner
//! ([`KeyOwner`]), bounded by quotas.
//!
//! The checks and the records live in the storage seam
//! (`airlock_store::Workspace` over any `WorkspaceStore`: sled in the data
//! directory, PostgreSQL shared by hosts, memory); this module imports,
//! for the crate, the seam's items it uses (the API names them as
//! `airlock_host::store::…`).
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

pub(crate) use airlock_store::{
    KeyOwner, KeyScope, Quota, Workspace, WorkspaceError, check_session,
};

/// The workspace directory inside the data directory (sled).
pub const WORKSPACE_DIR: &str = "workspace";
