//! `random`: entropy. Without the grant `wasi:random/random` and
//! `wasi:random/insecure` are not linked, and the hash-table seed every Rust
//! program asks for (`wasi:random/insecure-seed`) is a fixed value.

use wasmtime::component::Linker;
use wasmtime_wasi::p2::bindings::random;
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{WasiCtxBuilder, WasiView as _};

use super::EffectiveGrant;
use crate::state::CallState;

/// Seed handed out instead of entropy when `random` is not granted.
const FIXED_SEED: u128 = 0x6169_726c_6f63_6b5f_7365_6564_5f76_3031;

pub(super) fn link(linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
    random::insecure_seed::add_to_linker::<_, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    if grant.random {
        random::random::add_to_linker::<_, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
        random::insecure::add_to_linker::<_, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    }
    Ok(())
}

pub(super) fn configure(builder: &mut WasiCtxBuilder, grant: &EffectiveGrant) {
    if !grant.random {
        builder.insecure_random_seed(FIXED_SEED);
    }
}
