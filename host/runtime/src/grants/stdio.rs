//! `stdio`: guest stdout and stderr. They always go to a bounded in-memory
//! buffer, never to the host's own streams. With the grant their lines are
//! kept in the call's log; without it they are discarded (stderr is still
//! quoted in trap reports, so a panic message is not lost).

use wasmtime::component::Linker;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::p2::bindings::cli;

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::error::LoadResult as Result;
use crate::manifest::Capabilities;
use crate::state::{CallState, LogLevel, LogSink};

/// The `stdio` capability.
pub(super) struct Stdio;

impl Factor for Stdio {
    fn manifest_key(&self) -> &'static str {
        "capabilities.stdio"
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.stdio = true"
    }

    fn gated(&self) -> &'static [&'static str] {
        &[]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &["wasi:cli/stdout", "wasi:cli/stderr"]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        caps.stdio
    }

    fn check_policy(&self, _: &Policy) -> Result<()> {
        Ok(())
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.stdio = cx.caps.stdio;
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        grant.stdio
    }

    fn write_capable(&self, _: &EffectiveGrant) -> Option<&'static str> {
        None
    }

    fn link(&self, linker: &mut Linker<CallState>, _: &EffectiveGrant) -> wasmtime::Result<()> {
        cli::stdout::add_to_linker::<_, WasiCli>(linker, CallState::cli)?;
        cli::stderr::add_to_linker::<_, WasiCli>(linker, CallState::cli)?;
        Ok(())
    }

    fn configure(&self, _: &mut CallSetup<'_>, _: &EffectiveGrant) -> wasmtime::Result<()> {
        // `CallState::new_store` always pipes both streams into bounded
        // buffers; what the grant changes is whether `collect` keeps them.
        Ok(())
    }
}

/// Move captured output into the call's log, one entry per line.
pub(crate) fn collect(output: &[u8], level: LogLevel, log: &mut LogSink) {
    for line in String::from_utf8_lossy(output).lines() {
        if !line.is_empty() {
            log.push(level, line.to_owned());
        }
    }
}
