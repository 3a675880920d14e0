//! `stdio`: guest stdout and stderr. They always go to a bounded in-memory
//! buffer, never to the host's own streams. With the grant their lines are
//! kept in the call's log; without it they are discarded (stderr is still
//! quoted in trap reports, so a panic message is not lost).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime::component::Linker;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliView as _};
use wasmtime_wasi::p2::bindings::cli;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

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

/// A guest's stdout or stderr: its first `capacity` bytes kept, the rest
/// taken and dropped.
///
/// # Security
/// The buffer is bounded whatever the guest writes. wasmtime's own
/// `MemoryOutputPipe` refuses a write past its capacity, which a guest's
/// `println!` turns into a panic: a chatty plugin failed its call (it
/// trapped) instead of losing output past the bound, as the docs say.
/// Writing forever is bounded by the call's fuel and deadline, and each
/// write by the host-call data limit.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    capacity: usize,
    buffer: Arc<Mutex<BytesMut>>,
}

/// What one write may hand over (the guest writes in pieces of at most
/// this much; anything past the capacity is dropped all the same).
const WRITE_PERMIT: usize = 64 * 1024;

impl CapturedOutput {
    pub(crate) fn new(capacity: usize) -> CapturedOutput {
        CapturedOutput {
            capacity,
            buffer: Arc::new(Mutex::new(BytesMut::new())),
        }
    }

    /// What was kept.
    pub(crate) fn contents(&self) -> Bytes {
        self.lock().clone().freeze()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep what fits of `bytes`; all of it counts as written.
    fn keep(&self, bytes: &[u8]) -> usize {
        let mut buffer = self.lock();
        let room = self.capacity.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
        bytes.len()
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(self.keep(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
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
