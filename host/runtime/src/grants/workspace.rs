//! `workspace`: the plugin's key-value state and blobs through
//! `airlock:plugin/workspace`, scoped to the plugin and, for keys, to the
//! owner the host derives from the manifest's `workspace_scope` and the
//! call's principal (see [`crate::workspace`]), bounded by quotas,
//! read-only unless granted `read-write`. Linked only when granted.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, RwLock};
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
    /// The order of each key's operations across calls.
    pub(crate) order: KeyOrder,
    /// The call's slot of its plugin (`max_concurrency`), shared with each
    /// operation it starts: an operation still on its thread when the call
    /// is abandoned keeps the slot until it ends (set by the run once the
    /// slot is held).
    pub(crate) slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl WorkspaceScope {
    /// A call's view of `store`: `plugin`'s keys of `owner`, ordered by
    /// `order`.
    pub(crate) fn new(
        store: crate::workspace::Workspace,
        order: KeyOrder,
        plugin: &str,
        owner: KeyOwner,
        writable: bool,
        quota: Quota,
    ) -> WorkspaceScope {
        WorkspaceScope {
            store,
            plugin: plugin.to_owned(),
            owner,
            writable,
            quota,
            dirty: false,
            order,
            slot: None,
        }
    }
}

/// How many locks [`KeyOrder`] spreads keys over.
const KEY_ORDER_STRIPES: usize = 256;

/// Each workspace key's operations, in the order calls made them.
///
/// An operation runs on a blocking thread and outlives a call abandoned at
/// its deadline ([`off_the_caller`]): without an order, a `set` abandoned
/// behind a slow store could land after a later call's `set` of the same
/// key and undo it, a lost update nobody asked for. So an operation takes
/// its key's turn before it starts and gives it back when it ends on its
/// thread, not when its call stops waiting: a later write of the key waits
/// for the abandoned one (within its own deadline), and a later read sees
/// it. Reads share a turn; writes (`set`, `delete`) take it alone. Keys
/// share turns by a keyed hash over a fixed number of locks (a plugin
/// cannot pick keys that collide with another's), so the memory is fixed
/// whatever the keys. Listings and blobs (content-addressed: a blob is
/// stored whole or not at all) take no turn.
#[derive(Debug, Clone)]
pub(crate) struct KeyOrder(Arc<KeyOrderLocks>);

#[derive(Debug)]
struct KeyOrderLocks {
    hasher: std::hash::RandomState,
    stripes: Box<[Arc<RwLock<()>>]>,
}

impl KeyOrder {
    pub(crate) fn new() -> KeyOrder {
        KeyOrder(Arc::new(KeyOrderLocks {
            hasher: std::hash::RandomState::new(),
            stripes: (0..KEY_ORDER_STRIPES)
                .map(|_| Arc::new(RwLock::new(())))
                .collect(),
        }))
    }

    /// The lock `key` of `owner` in `plugin` takes its turns at.
    fn of(&self, plugin: &str, owner: &KeyOwner, key: &str) -> Arc<RwLock<()>> {
        use std::hash::BuildHasher;
        let hash = self.0.hasher.hash_one((plugin, owner, key));
        let stripe = usize::try_from(hash % KEY_ORDER_STRIPES as u64).unwrap_or(0);
        Arc::clone(&self.0.stripes[stripe])
    }
}

impl Default for KeyOrder {
    fn default() -> KeyOrder {
        KeyOrder::new()
    }
}

/// What an operation keeps until it ends on its thread: its key's turn
/// ([`KeyOrder`]) and its call's plugin slot.
struct Held {
    _turn: Option<Turn>,
    _slot: Option<Arc<OwnedSemaphorePermit>>,
}

/// Held for its drop, which gives the turn back.
enum Turn {
    Read {
        _guard: tokio::sync::OwnedRwLockReadGuard<()>,
    },
    Write {
        _guard: tokio::sync::OwnedRwLockWriteGuard<()>,
    },
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
    held: Held,
    work: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, WorkspaceError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(held);
        result
    })
    .await
    .unwrap_or_else(|e| {
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

    /// What an operation on `key` (none: a listing or a blob) holds until
    /// it ends, once it is its turn.
    async fn hold(&self, key: Option<(&str, Access)>) -> Held {
        let turn = match key {
            None => None,
            Some((key, access)) => {
                let lock = self.order.of(&self.plugin, &self.owner, key);
                Some(match access {
                    Access::Read => Turn::Read {
                        _guard: lock.read_owned().await,
                    },
                    Access::Write => Turn::Write {
                        _guard: lock.write_owned().await,
                    },
                })
            }
        };
        Held {
            _turn: turn,
            _slot: self.slot.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// Each operation runs on a blocking thread ([`off_the_caller`]), in its
/// key's order ([`KeyOrder`]).
impl wit::Host for CallState {
    async fn get(&mut self, key: String) -> WitResult<Option<Vec<u8>>> {
        let scope = self.scope()?;
        let held = scope.hold(Some((&key, Access::Read))).await;
        let (store, plugin, owner, _) = scope.parts();
        Ok(off_the_caller(held, move || store.get(&plugin, &owner, &key)).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> WitResult<()> {
        let scope = self.writable_scope()?;
        let held = scope.hold(Some((&key, Access::Write))).await;
        let (store, plugin, owner, quota) = scope.parts();
        Ok(off_the_caller(held, move || {
            store.set(&plugin, &owner, &key, &value, quota)
        })
        .await?)
    }

    async fn delete(&mut self, key: String) -> WitResult<bool> {
        let scope = self.writable_scope()?;
        let held = scope.hold(Some((&key, Access::Write))).await;
        let (store, plugin, owner, _) = scope.parts();
        Ok(off_the_caller(held, move || store.delete(&plugin, &owner, &key)).await?)
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> WitResult<Vec<String>> {
        let scope = self.scope()?;
        let held = scope.hold(None).await;
        let (store, plugin, owner, _) = scope.parts();
        Ok(off_the_caller(held, move || {
            store.list_keys(&plugin, &owner, &prefix, start_after.as_deref(), limit)
        })
        .await?)
    }

    async fn put_blob(&mut self, data: Vec<u8>) -> WitResult<String> {
        let scope = self.writable_scope()?;
        let held = scope.hold(None).await;
        let (store, plugin, _, quota) = scope.parts();
        Ok(off_the_caller(held, move || store.put_blob(&plugin, &data, quota)).await?)
    }

    async fn get_blob(&mut self, reference: String) -> WitResult<Option<Vec<u8>>> {
        let scope = self.scope()?;
        let held = scope.hold(None).await;
        let (store, plugin, _, _) = scope.parts();
        Ok(off_the_caller(held, move || store.get_blob(&plugin, &reference)).await?)
    }
}
