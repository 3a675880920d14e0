//! File timestamps for a plugin without `clocks`.
//!
//! Without the `clocks` grant the wall clock reads the Unix epoch and the
//! monotonic clock is not linked, so a plugin can neither read the time
//! nor time anything. A `files` grant gave both back: `stat` of a file the
//! plugin has just written (or touched) carries the time of that write to
//! the nanosecond, and two of them measure what ran in between. So for
//! such a plugin `descriptor.stat` and `descriptor.stat-at` shadow
//! wasmtime-wasi's and report no timestamps (`none`, which WASI allows
//! where a file system keeps none); type, size and link count are the
//! file's. Writing timestamps (`set-times`) is left alone: it tells the
//! plugin nothing.

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::filesystem::types::{DescriptorStat, HostDescriptor, PathFlags};

use super::files_quota::{Out, TYPES, settle};
use crate::state::CallState;

/// `stat` without its timestamps.
fn timeless(stat: DescriptorStat) -> DescriptorStat {
    DescriptorStat {
        data_access_timestamp: None,
        data_modification_timestamp: None,
        status_change_timestamp: None,
        ..stat
    }
}

/// Shadow wasmtime-wasi's `stat` and `stat-at` with ones that report no
/// timestamps (for a plugin with a `files` grant and no `clocks`).
pub(super) fn link(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = shadow(linker);
    linker.allow_shadowing(false);
    linked
}

fn shadow(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    let mut types = linker.instance(TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.stat",
        |mut store: StoreContextMut<'_, CallState>,
         (fd,): (Resource<Descriptor>,)|
         -> Out<'_, DescriptorStat> {
            Box::new(async move {
                let mut view = store.data_mut().filesystem();
                let result = HostDescriptor::stat(&mut view, fd).await.map(timeless);
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.stat-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, path_flags, path): (Resource<Descriptor>, PathFlags, String)|
         -> Out<'_, DescriptorStat> {
            Box::new(async move {
                let mut view = store.data_mut().filesystem();
                let result = HostDescriptor::stat_at(&mut view, fd, path_flags, path)
                    .await
                    .map(timeless);
                Ok((settle(&mut view, result)?,))
            })
        },
    )?;
    Ok(())
}
