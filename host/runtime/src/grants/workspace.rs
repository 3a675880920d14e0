//! `workspace`: the plugin's key-value state and blobs through
//! `airlock:plugin/workspace`, scoped to the plugin and, for keys, to the
//! owner the host derives from the manifest's `workspace_scope` and the
//! call's principal (see [`crate::workspace`]), bounded by quotas,
//! read-only unless granted `read-write`. Linked only when granted.

use wasmtime::component::{HasSelf, Linker};

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::bindings::airlock::plugin::workspace as wit;
use crate::error::LoadResult as Result;
use crate::manifest::{Capabilities, FileAccess};
use crate::state::CallState;
use crate::workspace::{KeyOwner, Quota, WorkspaceError};

/// The `workspace` capability (and its `workspace_scope` key).
pub(super) struct Workspace;

impl Factor for Workspace {
    fn manifest_key(&self) -> &'static str {
        "capabilities.workspace"
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.workspace = \"read-only\""
    }

    fn gated(&self) -> &'static [&'static str] {
        &["airlock:plugin/workspace"]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &[]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        caps.workspace.is_some()
    }

    fn check_policy(&self, _: &Policy) -> Result<()> {
        // Its quotas are limits (`policy.limits.workspace_*`), checked there.
        Ok(())
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.workspace = cx.caps.workspace;
        grant.workspace_scope = cx.caps.workspace_scope.unwrap_or_default();
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        grant.workspace.is_some()
    }

    fn write_capable(&self, grant: &EffectiveGrant) -> Option<&'static str> {
        (grant.workspace == Some(FileAccess::ReadWrite)).then_some("workspace read-write")
    }

    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        if grant.workspace.is_some() {
            wit::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
        }
        Ok(())
    }

    fn configure(&self, _: &mut CallSetup<'_>, _: &EffectiveGrant) -> wasmtime::Result<()> {
        // The call's [`WorkspaceScope`] is made by the pipeline, which holds
        // the host's store and knows the calling principal and read-only
        // mode, and handed to `CallState::new_store`.
        Ok(())
    }
}

/// One call's view of the workspace.
#[derive(Debug)]
pub(crate) struct WorkspaceScope {
    pub(crate) store: crate::workspace::Workspace,
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

/// Each operation runs off the async worker (`off_the_worker`): against a
/// PostgreSQL store it waits on the network, and a guest looping over
/// `get` would otherwise hold the worker that runs other calls for as long
/// as the store takes.
impl wit::Host for CallState {
    fn get(&mut self, key: String) -> WitResult<Option<Vec<u8>>> {
        let s = self.scope()?;
        Ok(crate::off_the_worker(|| s.store.get(&s.plugin, &s.owner, &key))?)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> WitResult<()> {
        let s = self.writable_scope()?;
        Ok(crate::off_the_worker(|| {
            s.store.set(&s.plugin, &s.owner, &key, &value, s.quota)
        })?)
    }

    fn delete(&mut self, key: String) -> WitResult<bool> {
        let s = self.writable_scope()?;
        Ok(crate::off_the_worker(|| s.store.delete(&s.plugin, &s.owner, &key))?)
    }

    fn list_keys(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> WitResult<Vec<String>> {
        let s = self.scope()?;
        Ok(crate::off_the_worker(|| {
            s.store
                .list_keys(&s.plugin, &s.owner, &prefix, start_after.as_deref(), limit)
        })?)
    }

    fn put_blob(&mut self, data: Vec<u8>) -> WitResult<String> {
        let s = self.writable_scope()?;
        Ok(crate::off_the_worker(|| s.store.put_blob(&s.plugin, &data, s.quota))?)
    }

    fn get_blob(&mut self, reference: String) -> WitResult<Option<Vec<u8>>> {
        let s = self.scope()?;
        Ok(crate::off_the_worker(|| s.store.get_blob(&s.plugin, &reference))?)
    }
}
