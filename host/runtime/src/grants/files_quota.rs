//! What one call may write through its writable `files` grants.
//!
//! `wasi:filesystem` writes go straight to the host's disk, outside the
//! workspace and its quota: without a bound, one call of a plugin with a
//! read-write directory could fill the disk (a guest loop writing 64 MiB
//! buffers does gigabytes within a two-second deadline, each write a host
//! call the epoch deadline does not interrupt) or its inodes (a file a
//! host call). So every call gets a budget, from the operator's policy:
//! bytes written ([`DEFAULT_FILES_MAX_WRITE_KB`]) and entries created
//! ([`DEFAULT_FILES_MAX_CREATED`]). A write or creation past it fails with
//! the filesystem error `insufficient-space` (POSIX `ENOSPC`, what a full
//! disk gives, so guests handle it as they would that) and leaves one host
//! note on the call's record saying why; the guest may go on with
//! everything else.
//!
//! The budget is enforced in the host functions that write, which shadow
//! wasmtime-wasi's own for plugins holding a read-write grant and call
//! them once the budget allows: `descriptor.write`, `set-size` (growth
//! counts), `open-at` with `create`, `create-directory-at`, `link-at`,
//! `symlink-at`, and the output streams of `write-via-stream` and
//! `append-via-stream`, which are wrapped to count what goes through them.
//!
//! It is a bound per call, not a quota on the directory: the rate limits
//! and concurrency bound how many calls there are. A quota on what the
//! directory holds needs the file system's own (a separate mount, a
//! project quota), see `docs/security.md`.
//!
//! [`DEFAULT_FILES_MAX_WRITE_KB`]: crate::limits::DEFAULT_FILES_MAX_WRITE_KB
//! [`DEFAULT_FILES_MAX_CREATED`]: crate::limits::DEFAULT_FILES_MAX_CREATED

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView as _};
use wasmtime_wasi::p2::FsResult;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{DynOutputStream, OutputStream, StreamError, StreamResult};

use super::HttpNotes;
use crate::limits::FilesLimits;
use crate::state::CallState;

/// The interface whose writing functions are shadowed, named as
/// wasmtime-wasi defines it (a component importing any 0.2 version is
/// linked to it). wasmtime-wasi is pinned in the workspace's Cargo.toml
/// for this name: an upgrade that moves it must move this too.
pub(super) const TYPES: &str = "wasi:filesystem/types@0.2.12";

/// `ENOSPC`: what a stream write past the budget fails with, so that
/// `filesystem-error-code` reads it as `insufficient-space` (wasmtime-wasi
/// reads `EDQUOT` as a plain I/O error).
const ENOSPC: i32 = 28;

/// What a call has left of its [`FilesLimits`], shared by its write
/// functions and the output streams they hand out.
#[derive(Debug)]
pub(crate) struct FilesBudget {
    limits: FilesLimits,
    bytes_left: AtomicU64,
    created_left: AtomicU64,
    noted: AtomicBool,
    notes: HttpNotes,
}

impl FilesBudget {
    pub(crate) fn new(limits: FilesLimits, notes: HttpNotes) -> FilesBudget {
        FilesBudget {
            limits,
            bytes_left: AtomicU64::new(limits.max_write_bytes()),
            created_left: AtomicU64::new(limits.max_created.value),
            noted: AtomicBool::new(false),
            notes,
        }
    }

    /// Take `n` bytes; `false` (and a note, once) when fewer are left.
    fn take_bytes(&self, n: u64) -> bool {
        take(&self.bytes_left, n) || self.refuse()
    }

    fn refund_bytes(&self, n: u64) {
        self.bytes_left.fetch_add(n, Ordering::Relaxed);
    }

    /// Take one creation; `false` (and a note, once) when none is left.
    fn take_created(&self) -> bool {
        take(&self.created_left, 1) || self.refuse()
    }

    fn refund_created(&self) {
        self.created_left.fetch_add(1, Ordering::Relaxed);
    }

    fn refuse(&self) -> bool {
        if !self.noted.swap(true, Ordering::Relaxed) {
            let (max_write_bytes, max_created) =
                (self.limits.max_write_bytes(), self.limits.max_created.value);
            let text = format!(
                "files: the call's write budget ({max_write_bytes} bytes, {max_created} \
                 created entries: policy files_max_write_kb, files_max_created) is used up; \
                 further writes fail with `insufficient-space`"
            );
            if super::http::host_note(&self.notes, text.clone()) {
                tracing::warn!(target: "airlock::files", "{text}");
            }
        }
        false
    }
}

/// Subtract `n` from `left` if it holds that much.
fn take(left: &AtomicU64, n: u64) -> bool {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |have| {
        have.checked_sub(n)
    })
    .is_ok()
}

/// Shadow wasmtime-wasi's writing functions of `wasi:filesystem/types`
/// with budgeted ones (for a plugin with a read-write grant).
pub(super) fn link(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = shadow(linker);
    linker.allow_shadowing(false);
    linked
}

/// A host function's result as the guest sees it: a filesystem error
/// becomes its code, anything else traps (as wasmtime-wasi's own do).
pub(super) fn settle<T>(
    view: &mut WasiFilesystemCtxView<'_>,
    result: FsResult<T>,
) -> wasmtime::Result<Result<T, ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => Ok(Err(types::Host::convert_error_code(view, error)?)),
    }
}

/// The call's budget, when it has one (a read-write grant, not narrowed
/// by read-only mode).
fn budget(store: &StoreContextMut<'_, CallState>) -> Option<Arc<FilesBudget>> {
    store.data().files_budget.clone()
}

/// Run `create` if the budget allows one more entry (given back if it
/// fails).
async fn creating<T>(
    budget: Option<&FilesBudget>,
    create: impl Future<Output = FsResult<T>>,
) -> FsResult<T> {
    if let Some(b) = budget
        && !b.take_created()
    {
        return Err(ErrorCode::InsufficientSpace.into());
    }
    let result = create.await;
    if let (Some(b), Err(_)) = (budget, &result) {
        b.refund_created();
    }
    result
}

pub(super) type Out<'a, T> =
    Box<dyn Future<Output = wasmtime::Result<(Result<T, ErrorCode>,)>> + Send + 'a>;

fn shadow(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    let mut types = linker.instance(TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, buffer, offset): (Resource<Descriptor>, Vec<u8>, u64)|
         -> Out<'_, u64> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                let length = buffer.len() as u64;
                let asked =
                    match take_write(&mut view, budget.as_deref(), &fd, offset, length).await? {
                        Ok(asked) => asked,
                        Err(code) => return Ok((Err(code),)),
                    };
                let result = HostDescriptor::write(&mut view, fd, buffer, offset).await;
                if let Some(b) = &budget {
                    b.refund_bytes(match &result {
                        Ok(written) => length.saturating_sub(*written),
                        Err(_) => asked,
                    });
                }
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, size): (Resource<Descriptor>, u64)|
         -> Out<'_, ()> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                // Growth counts as written (a file system without sparse
                // files allocates it): a write of nothing at the new end.
                let growth = match take_write(&mut view, budget.as_deref(), &fd, size, 0).await? {
                    Ok(growth) => growth,
                    Err(code) => return Ok((Err(code),)),
                };
                let result = HostDescriptor::set_size(&mut view, fd, size).await;
                if let (Some(b), Err(_)) = (&budget, &result) {
                    b.refund_bytes(growth);
                }
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )|
         -> Out<'_, Resource<Descriptor>> {
            Box::new(async move {
                let budget = budget(&store).filter(|_| open_flags.contains(OpenFlags::CREATE));
                let mut view = store.data_mut().filesystem();
                // Opening a file that exists creates nothing: without
                // `exclusive`, open it without `create` first, and create
                // (charged) only if it is not there. (A check beside the
                // open would race another call renaming the file away.)
                if budget.is_some() && !open_flags.contains(OpenFlags::EXCLUSIVE) {
                    let existing = HostDescriptor::open_at(
                        &mut view,
                        Resource::new_borrow(fd.rep()),
                        path_flags,
                        path.clone(),
                        open_flags & !OpenFlags::CREATE,
                        flags,
                    )
                    .await;
                    match settle(&mut view, existing)? {
                        Err(ErrorCode::NoEntry) => {}
                        opened => return Ok((opened,)),
                    }
                }
                let open =
                    HostDescriptor::open_at(&mut view, fd, path_flags, path, open_flags, flags);
                let result = creating(budget.as_deref(), open).await;
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, path): (Resource<Descriptor>, String)|
         -> Out<'_, ()> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                let create = HostDescriptor::create_directory_at(&mut view, fd, path);
                let result = creating(budget.as_deref(), create).await;
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, old_flags, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )|
         -> Out<'_, ()> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                let link =
                    HostDescriptor::link_at(&mut view, fd, old_flags, old_path, new_fd, new_path);
                let result = creating(budget.as_deref(), link).await;
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, target, path): (Resource<Descriptor>, String, String)|
         -> Out<'_, ()> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                let link = HostDescriptor::symlink_at(&mut view, fd, target, path);
                let result = creating(budget.as_deref(), link).await;
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, offset): (Resource<Descriptor>, u64)|
         -> Out<'_, Resource<DynOutputStream>> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                // A stream starting past the end leaves a hole: charged
                // now, its bytes as they are written.
                let charged = match take_write(&mut view, budget.as_deref(), &fd, offset, 0).await?
                {
                    Ok(charged) => charged,
                    Err(code) => return Ok((Err(code),)),
                };
                let result = HostDescriptor::write_via_stream(&mut view, fd, offset);
                if let (Some(b), Err(_)) = (&budget, &result) {
                    b.refund_bytes(charged);
                }
                let result = metered(&mut view, result, budget);
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, CallState>,
         (fd,): (Resource<Descriptor>,)|
         -> Out<'_, Resource<DynOutputStream>> {
            Box::new(async move {
                let budget = budget(&store);
                let mut view = store.data_mut().filesystem();
                let result = HostDescriptor::append_via_stream(&mut view, fd);
                let result = metered(&mut view, result, budget);
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    Ok(())
}

/// Take a write of `bytes` at `offset` of `fd` from the budget, with the
/// hole it leaves when it starts past the end (as `set-size` growth
/// counts; `set-size` is a write of nothing at the new end): what was
/// taken, or the error to answer with.
async fn take_write(
    view: &mut WasiFilesystemCtxView<'_>,
    budget: Option<&FilesBudget>,
    fd: &Resource<Descriptor>,
    offset: u64,
    bytes: u64,
) -> wasmtime::Result<Result<u64, ErrorCode>> {
    let Some(budget) = budget else {
        return Ok(Ok(0));
    };
    let stat = HostDescriptor::stat(view, Resource::new_borrow(fd.rep())).await;
    let size = match settle(view, stat)? {
        Ok(stat) => stat.size,
        Err(code) => return Ok(Err(code)),
    };
    let asked = bytes.saturating_add(offset.saturating_sub(size));
    Ok(if budget.take_bytes(asked) {
        Ok(asked)
    } else {
        Err(ErrorCode::InsufficientSpace)
    })
}

/// Put the stream of `result` behind the call's budget.
fn metered(
    view: &mut WasiFilesystemCtxView<'_>,
    result: FsResult<Resource<DynOutputStream>>,
    budget: Option<Arc<FilesBudget>>,
) -> FsResult<Resource<DynOutputStream>> {
    let Some(budget) = budget else {
        return result;
    };
    let inner: DynOutputStream = view.table.delete(result?)?;
    let wrapped: DynOutputStream = Box::new(MeteredStream { inner, budget });
    Ok(view.table.push(wrapped)?)
}

/// A file's output stream that takes what it writes from the budget.
struct MeteredStream {
    inner: DynOutputStream,
    budget: Arc<FilesBudget>,
}

fn over_budget() -> StreamError {
    StreamError::LastOperationFailed(std::io::Error::from_raw_os_error(ENOSPC).into())
}

#[wasmtime_wasi::async_trait]
impl OutputStream for MeteredStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let n = bytes.len() as u64;
        if !self.budget.take_bytes(n) {
            return Err(over_budget());
        }
        self.inner
            .write(bytes)
            .inspect_err(|_| self.budget.refund_bytes(n))
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        let n = bytes.len() as u64;
        if !self.budget.take_bytes(n) {
            return Err(over_budget());
        }
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, n: usize) -> StreamResult<()> {
        if !self.budget.take_bytes(n as u64) {
            return Err(over_budget());
        }
        self.inner.write_zeroes(n)
    }

    async fn write_ready(&mut self) -> StreamResult<usize> {
        self.inner.write_ready().await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for MeteredStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}
