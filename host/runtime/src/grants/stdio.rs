//! `stdio`: guest stdout and stderr. They always go to a bounded in-memory
//! buffer, never to the host's own streams. With the grant their lines are
//! kept in the call's log; without it they are discarded (stderr is still
//! quoted in trap reports, so a panic message is not lost).

use wasmtime::component::Linker;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::p2::bindings::cli;

use crate::state::{CallState, LogLevel, LogSink};

pub(super) fn link(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    cli::stdin::add_to_linker::<_, WasiCli>(linker, CallState::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(linker, CallState::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(linker, CallState::cli)?;
    Ok(())
}

/// Move captured output into the call's log, one entry per line.
pub(crate) fn collect(output: &[u8], level: LogLevel, log: &mut LogSink) {
    for line in String::from_utf8_lossy(output).lines() {
        if !line.is_empty() {
            log.push(level, line.to_owned());
        }
    }
}
