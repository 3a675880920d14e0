//! `log`: structured logging through `airlock:plugin/log`, bounded per call
//! (see `state::LogSink`). Linked only when granted. The operator bounds the
//! lines kept per call (`log_max_lines`), for the guest's log and its stdio
//! alike (the host's own notes are kept apart: `RunStats::host_notes`).

use wasmtime::component::{HasSelf, Linker};

use super::{CallSetup, EffectiveGrant, Factor, Policy, Resolve};
use crate::bindings::airlock::plugin::log as wit;
use crate::error::LoadResult as Result;
use crate::manifest::Capabilities;
use crate::state::{CallState, LogLevel};

/// The `log` capability.
pub(super) struct Log;

impl Factor for Log {
    fn manifest_key(&self) -> &'static str {
        "capabilities.log"
    }

    fn grant_example(&self) -> &'static str {
        "capabilities.log = true"
    }

    fn gated(&self) -> &'static [&'static str] {
        &["airlock:plugin/log"]
    }

    fn shaped(&self) -> &'static [&'static str] {
        &[]
    }

    fn declared(&self, caps: &Capabilities) -> bool {
        caps.log
    }

    fn check_policy(&self, policy: &Policy) -> Result<()> {
        super::at_least_one(&[("log_max_lines", policy.log_max_lines)])
    }

    fn resolve(&self, cx: &Resolve<'_>, grant: &mut EffectiveGrant) -> Result<()> {
        grant.log = cx.caps.log;
        grant.log_max_lines = cx.policy.log_max_lines;
        Ok(())
    }

    fn granted(&self, grant: &EffectiveGrant) -> bool {
        grant.log
    }

    fn write_capable(&self, _: &EffectiveGrant) -> Option<&'static str> {
        None
    }

    fn link(&self, linker: &mut Linker<CallState>, grant: &EffectiveGrant) -> wasmtime::Result<()> {
        if grant.log {
            wit::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
        }
        Ok(())
    }

    fn configure(&self, _: &mut CallSetup<'_>, _: &EffectiveGrant) -> wasmtime::Result<()> {
        // The call's log sink exists whatever the grant (stdio uses it
        // too); `CallState::new_store` sizes it by
        // `grant.log_max_lines()`.
        Ok(())
    }
}

impl wit::Host for CallState {
    fn log(&mut self, level: wit::Level, message: String) {
        let level = match level {
            wit::Level::Trace => LogLevel::Trace,
            wit::Level::Debug => LogLevel::Debug,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Error => LogLevel::Error,
        };
        self.log.push(level, message);
    }
}
