//! `log`: structured logging through `airlock:plugin/log`, bounded per call
//! (see `state::LogSink`). Linked only when granted.

use wasmtime::component::{HasSelf, Linker};

use super::EffectiveGrant;
use crate::bindings;
use crate::state::CallState;

pub(super) fn link(linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
    // `types` defines only types, but the world imports it as an instance.
    bindings::airlock::plugin::types::add_to_linker::<CallState, HasSelf<CallState>>(
        linker,
        |s| s,
    )?;
    if grant.log {
        bindings::airlock::plugin::log::add_to_linker::<CallState, HasSelf<CallState>>(
            linker,
            |s| s,
        )?;
    }
    Ok(())
}
