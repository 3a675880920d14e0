//! `random`: entropy. Without the grant `wasi:random/random` and
//! `wasi:random/insecure` are not linked, and the hash-table seed every Rust
//! program asks for (`wasi:random/insecure-seed`) is a fixed value.

use wasmtime::component::Linker;
use wasmtime_wasi::WasiView as _;
use wasmtime_wasi::p2::bindings::random;
use wasmtime_wasi::random::WasiRandom;

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::error::LoadResult as Result;
use crate::manifest::Capabilities;
use crate::state::CallState;

/// Seed handed out instead of entropy when `random` is not granted.
const FIXED_SEED: u128 = 0x6169_726c_6f63_6b5f_7365_6564_5f76_3031;

/// The `random` capability.
pub(super) struct Random;

impl Factor for Random {
    fn manifest_key(&self) -> &'static str {
        "capabilities.random"
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.random = true"
    }

    fn gated(&self) -> &'static [&'static str] {
        &["wasi:random/random", "wasi:random/insecure"]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &["wasi:random/insecure-seed"]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        caps.random
    }

    fn check_policy(&self, _: &Policy) -> Result<()> {
        Ok(())
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.random = cx.caps.random;
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        grant.random
    }

    fn write_capable(&self, _: &EffectiveGrant) -> Option<&'static str> {
        None
    }

    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        random::insecure_seed::add_to_linker::<_, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
        if grant.random {
            random::random::add_to_linker::<_, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
            random::insecure::add_to_linker::<_, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
        }
        Ok(())
    }

    fn configure(&self, call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        if !grant.random {
            call.wasi.insecure_random_seed(FIXED_SEED);
        }
        Ok(())
    }
}
