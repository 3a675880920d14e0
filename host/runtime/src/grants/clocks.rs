//! `clocks`: real time. Without the grant the wall clock (which every Rust
//! program imports) reads the Unix epoch, and the monotonic clock is not
//! linked at all, so a plugin cannot measure time (or time side channels).

use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::p2::bindings::clocks;
use wasmtime_wasi::{HostWallClock, WasiCtxBuilder};

use super::EffectiveGrant;
use crate::state::CallState;

pub(super) fn link(linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(linker, CallState::clocks)?;
    if grant.clocks {
        clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(linker, CallState::clocks)?;
    }
    Ok(())
}

pub(super) fn configure(builder: &mut WasiCtxBuilder, grant: &EffectiveGrant) {
    if !grant.clocks {
        builder.wall_clock(FrozenClock);
    }
}

/// A wall clock stopped at the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}
