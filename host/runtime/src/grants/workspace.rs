//! `workspace`: the plugin's key-value state and blobs through
//! `airlock:plugin/workspace`, scoped to the plugin and, for keys, to the
//! owner the host derives from the manifest's `workspace_scope` and the
//! call's principal (see [`crate::workspace`]), bounded by quotas,
//! read-only unless granted `read-write`. Linked only when granted.

use wasmtime::component::{HasSelf, Linker};

use super::EffectiveGrant;
use crate::bindings::airlock::plugin::workspace as wit;
use crate::state::CallState;
use crate::workspace::{KeyOwner, Quota, Workspace, WorkspaceError};

pub(super) fn link(linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
    if grant.workspace.is_some() {
        wit::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    }
    Ok(())
}

/// One call's view of the workspace.
#[derive(Debug)]
pub(crate) struct WorkspaceScope {
    pub(crate) store: Workspace,
    pub(crate) plugin: String,
    pub(crate) owner: KeyOwner,
    pub(crate) writable: bool,
    pub(crate) quota: Quota,
    /// Whether the call wrote anything (flushed before its result returns).
    pub(crate) dirty: bool,
}

impl From<WorkspaceError> for wit::WorkspaceError {
    fn from(e: WorkspaceError) -> wit::WorkspaceError {
        match e {
            WorkspaceError::ReadOnly => wit::WorkspaceError::ReadOnly,
            WorkspaceError::QuotaExceeded(m) => wit::WorkspaceError::QuotaExceeded(m),
            WorkspaceError::Invalid(m) => wit::WorkspaceError::Invalid(m),
            // The guest learns that the store failed, not where it lives
            // or why (the host logs that).
            WorkspaceError::Unavailable(e) => {
                tracing::error!(error = %e.chain(), "workspace store failed");
                wit::WorkspaceError::Unavailable(format!(
                    "the workspace store is unavailable ({})",
                    e.kind()
                ))
            }
        }
    }
}

type WitResult<T> = Result<T, wit::WorkspaceError>;

impl CallState {
    fn scope(&mut self) -> Result<&mut WorkspaceScope, WorkspaceError> {
        // Only while listing tools at load time is there no call scope.
        self.workspace.as_mut().ok_or_else(|| {
            WorkspaceError::Unavailable(airlock_store::StoreError::new(
                airlock_store::ErrorKind::Unavailable,
                "the workspace is not available while listing tools",
            ))
        })
    }

    fn writable_scope(&mut self) -> Result<&mut WorkspaceScope, WorkspaceError> {
        let scope = self.scope()?;
        if !scope.writable {
            return Err(WorkspaceError::ReadOnly);
        }
        scope.dirty = true;
        Ok(scope)
    }
}

impl wit::Host for CallState {
    fn get(&mut self, key: String) -> WitResult<Option<Vec<u8>>> {
        let s = self.scope()?;
        Ok(s.store.get(&s.plugin, &s.owner, &key)?)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> WitResult<()> {
        let s = self.writable_scope()?;
        Ok(s.store.set(&s.plugin, &s.owner, &key, &value, s.quota)?)
    }

    fn delete(&mut self, key: String) -> WitResult<bool> {
        let s = self.writable_scope()?;
        Ok(s.store.delete(&s.plugin, &s.owner, &key)?)
    }

    fn list_keys(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> WitResult<Vec<String>> {
        let s = self.scope()?;
        Ok(s.store
            .list_keys(&s.plugin, &s.owner, &prefix, start_after.as_deref(), limit)?)
    }

    fn put_blob(&mut self, data: Vec<u8>) -> WitResult<String> {
        let s = self.writable_scope()?;
        Ok(s.store.put_blob(&s.plugin, &data, s.quota)?)
    }

    fn get_blob(&mut self, reference: String) -> WitResult<Option<Vec<u8>>> {
        let s = self.scope()?;
        Ok(s.store.get_blob(&s.plugin, &reference)?)
    }
}
