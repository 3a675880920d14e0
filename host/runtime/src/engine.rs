//! The shared WebAssembly engine and its epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine};

use crate::error::{Error, Result};

/// How often the ticker advances the engine's epoch. Deadlines are checked,
/// and long-running guests yield to other tasks, once per tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Build the engine every plugin of a host shares.
pub(crate) fn new_engine() -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Fuel bounds the instructions a call may execute; epochs bound its wall
    // time and let long calls yield to the async executor.
    config.consume_fuel(true);
    config.epoch_interruption(true);
    Engine::new(&config).map_err(|e| Error::Engine {
        message: format!("cannot configure the WebAssembly engine: {e:#}"),
    })
}

/// A background thread that advances an engine's epoch every [`EPOCH_TICK`].
/// One per engine; stops when dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("airlock-epoch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::Engine {
                message: format!("cannot start the epoch ticker thread: {e}"),
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // The thread wakes within one tick; a panic in it has nothing to
            // report here.
            let _ = thread.join();
        }
    }
}
