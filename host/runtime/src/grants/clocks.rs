//! `clocks`: real time. Without the grant the wall clock (which every Rust
//! program imports) reads the Unix epoch, and the monotonic clock is not
//! linked at all, so a plugin cannot measure time (or time side channels).

use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime_wasi::HostWallClock;
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::p2::bindings::clocks;

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::error::LoadResult as Result;
use crate::manifest::Capabilities;
use crate::state::CallState;

/// The `clocks` capability.
pub(super) struct Clocks;

impl Factor for Clocks {
    fn manifest_key(&self) -> &'static str {
        "capabilities.clocks"
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.clocks = true"
    }

    fn gated(&self) -> &'static [&'static str] {
        &["wasi:clocks/monotonic-clock"]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &["wasi:clocks/wall-clock"]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        caps.clocks
    }

    fn check_policy(&self, _: &Policy) -> Result<()> {
        Ok(())
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.clocks = cx.caps.clocks;
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        grant.clocks
    }

    fn write_capable(&self, _: &EffectiveGrant) -> Option<&'static str> {
        None
    }

    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        clocks::wall_clock::add_to_linker::<_, WasiClocks>(linker, CallState::clocks)?;
        if grant.clocks {
            clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(linker, CallState::clocks)?;
        }
        Ok(())
    }

    fn configure(&self, call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        if !grant.clocks {
            call.wasi.wall_clock(FrozenClock);
        }
        Ok(())
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
