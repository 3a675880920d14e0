//! `env`: environment variables by name. The manifest names them; the values
//! come from the operator's policy. The guest sees exactly the declared names
//! that have an operator value — never the host's own environment.

use wasmtime::component::Linker;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::p2::bindings::cli;

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::error::LoadResult as Result;
use crate::manifest::Capabilities;
use crate::state::CallState;

/// The `env` capability.
pub(super) struct Env;

impl Factor for Env {
    fn manifest_key(&self) -> &'static str {
        "capabilities.env"
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.env = [\"NAME\"]"
    }

    fn gated(&self) -> &'static [&'static str] {
        &[]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &["wasi:cli/environment"]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        !caps.env.is_empty()
    }

    fn check_policy(&self, _: &Policy) -> Result<()> {
        Ok(())
    }

    /// Split declared names into (name, value) pairs the operator provides
    /// and names it does not.
    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        for name in &cx.caps.env {
            match cx.policy.env.get(name) {
                Some(value) => grant.env.push((name.clone(), value.clone())),
                None => grant.env_missing.push(name.clone()),
            }
        }
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        !grant.env.is_empty() || !grant.env_missing.is_empty()
    }

    fn write_capable(&self, _: &EffectiveGrant) -> Option<&'static str> {
        None
    }

    fn link(&self, linker: &mut Linker<CallState>, _: &EffectiveGrant) -> wasmtime::Result<()> {
        cli::environment::add_to_linker::<_, WasiCli>(linker, CallState::cli)
    }

    fn configure(&self, call: &mut CallSetup<'_>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        call.wasi.envs(&grant.env);
        Ok(())
    }
}
