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

/// A workspace operation's blocking part, on tokio's blocking threads:
/// it does not hold the async worker that runs other calls (a guest
/// looping over `get` against a slow PostgreSQL store would, for as long
/// as the store takes), and the call waiting for it can be abandoned at
/// its deadline (the pipeline drops the call's future then; the operation
/// finishes on its thread, bounded by the store's own timeout, and its
/// answer is dropped). Inline where no tokio runtime is running.
async fn off_the_caller<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, WorkspaceError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(WorkspaceError::Unavailable(
            airlock_store::StoreError::new(
                airlock_store::ErrorKind::Unavailable,
                format!("the workspace operation did not finish: {e}"),
            ),
        ))
    })
}

impl WorkspaceScope {
    /// What an operation needs, owned (it runs on another thread).
    fn parts(&self) -> (crate::workspace::Workspace, String, KeyOwner, Quota) {
        (
            self.store.clone(),
            self.plugin.clone(),
            self.owner.clone(),
            self.quota,
        )
    }
}

/// Each operation runs on a blocking thread ([`off_the_caller`]).
impl wit::Host for CallState {
    async fn get(&mut self, key: String) -> WitResult<Option<Vec<u8>>> {
        let (store, plugin, owner, _) = self.scope()?.parts();
        Ok(off_the_caller(move || store.get(&plugin, &owner, &key)).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> WitResult<()> {
        let (store, plugin, owner, quota) = self.writable_scope()?.parts();
        Ok(off_the_caller(move || store.set(&plugin, &owner, &key, &value, quota)).await?)
    }

    async fn delete(&mut self, key: String) -> WitResult<bool> {
        let (store, plugin, owner, _) = self.writable_scope()?.parts();
        Ok(off_the_caller(move || store.delete(&plugin, &owner, &key)).await?)
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> WitResult<Vec<String>> {
        let (store, plugin, owner, _) = self.scope()?.parts();
        Ok(off_the_caller(move || {
            store.list_keys(&plugin, &owner, &prefix, start_after.as_deref(), limit)
        })
        .await?)
    }

    async fn put_blob(&mut self, data: Vec<u8>) -> WitResult<String> {
        let (store, plugin, _, quota) = self.writable_scope()?.parts();
        Ok(off_the_caller(move || store.put_blob(&plugin, &data, quota)).await?)
    }

    async fn get_blob(&mut self, reference: String) -> WitResult<Option<Vec<u8>>> {
        let (store, plugin, _, _) = self.scope()?.parts();
        Ok(off_the_caller(move || store.get_blob(&plugin, &reference)).await?)
    }
}
