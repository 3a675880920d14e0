//! The shared WebAssembly engine: its instance allocator, the host-wide gate
//! on concurrent instances, and its epoch ticker.
//!
//! One [`SharedEngine`] per host; every plugin is compiled for it and every
//! call instantiates on it. Nothing per call re-creates anything expensive:
//! the engine, the compiled components, the linkers and the pre-linked
//! `InstancePre`s are all made once, at start or at load.
//!
//! Instances come from wasmtime's **pooling allocator** when its address
//! space can be reserved: slots for instances, linear memories, tables and
//! fiber stacks are mapped once, and instantiating takes a slot and maps the
//! component's memory image copy-on-write instead of `mmap`-ing and copying
//! afresh (`memory_init_cow`). The pool is sized from the host's
//! configuration: [`HostConfig::max_instances`](crate::HostConfig) component
//! instances, memories up to the policy's memory ceiling. When the pool
//! cannot be reserved (a tight `ulimit -v`, a 32-bit or sandboxed host), the
//! engine falls back to on-demand allocation and logs why; behaviour is the
//! same, only slower.
//!
//! A pool has a fixed number of slots, so the engine also holds a gate:
//! every call takes its component's share of instances, memories and tables
//! before instantiating and gives it back when done. A call that finds the
//! pool full waits (up to its deadline) rather than failing inside wasmtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{Error, Result};

/// How often the ticker advances the engine's epoch. Deadlines are checked,
/// and long-running guests yield to other tasks, once per tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Default number of component instances the pool holds: 16 plugins each at
/// the default `max_concurrency` of 16.
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

/// Most linear memories one component may define (also the per-call store
/// limit, `CallLimiter::memories`).
pub(crate) const MAX_MEMORIES_PER_COMPONENT: u32 = 16;
/// Most tables one component may define (`CallLimiter::tables`).
pub(crate) const MAX_TABLES_PER_COMPONENT: u32 = 64;
/// Most core instances one component may create (`CallLimiter::instances`).
pub(crate) const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;

/// Memory slots reserved per component instance in the pool, on average.
/// Components built by the Rust `wasm32-wasip2` toolchain define one or two
/// (the program's and the WASI adapter's); a call of a component defining
/// more takes more of the pool (see [`PoolNeeds`]).
const MEMORIES_PER_INSTANCE: u32 = 2;
/// Table slots reserved per component instance, on average.
const TABLES_PER_INSTANCE: u32 = 4;
/// Largest linear memory of a 32-bit WebAssembly memory: the pool's slot size
/// when the policy sets no memory ceiling.
const MAX_WASM32_MEMORY: u64 = 4 << 30;
/// Linear memory kept mapped (and reset in place) when an instance's slot is
/// returned to the pool, instead of being handed back to the kernel and
/// faulted in again by the next call.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// Fiber stack reset in place (with `memset`) when a pooled stack is reused;
/// the rest of the stack, rarely touched, is returned to the kernel.
const STACK_KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// How the engine allocates instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum InstanceAllocation {
    /// wasmtime's pooling allocator: slots reserved once, memories mapped
    /// copy-on-write from each component's image.
    Pooling {
        /// Component instances the pool holds (calls beyond wait).
        instances: u32,
        /// Linear memory slots.
        memories: u32,
        /// Table slots.
        tables: u32,
        /// Largest linear memory a slot holds, in bytes.
        max_memory_bytes: u64,
        /// A pooled fiber stack is zeroed before another call uses it
        /// ([`HostConfig::zero_stacks`](crate::HostConfig::zero_stacks)).
        zero_stacks: bool,
    },
    /// Each instance maps its own memory and stack.
    OnDemand {
        /// Why the pool is not used.
        reason: String,
    },
}

impl std::fmt::Display for InstanceAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceAllocation::Pooling {
                instances,
                memories,
                tables,
                max_memory_bytes,
                zero_stacks,
            } => write!(
                f,
                "pooling: {instances} instances, {memories} memories of up to {} MiB, {tables} tables, stacks {}",
                max_memory_bytes >> 20,
                if *zero_stacks {
                    "zeroed between calls"
                } else {
                    "not zeroed between calls"
                }
            ),
            InstanceAllocation::OnDemand { reason } => write!(f, "on demand ({reason})"),
        }
    }
}

/// What one instance of a component takes from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolNeeds {
    memories: u32,
    tables: u32,
}

impl PoolNeeds {
    /// The needs of `component`, as far as wasmtime can tell statically
    /// (the most a component may have when it cannot).
    pub(crate) fn of(component: &wasmtime::component::Component) -> PoolNeeds {
        match component.resources_required() {
            Some(r) => PoolNeeds {
                memories: r.num_memories.min(MAX_MEMORIES_PER_COMPONENT),
                tables: r.num_tables.min(MAX_TABLES_PER_COMPONENT),
            },
            None => PoolNeeds {
                memories: MAX_MEMORIES_PER_COMPONENT,
                tables: MAX_TABLES_PER_COMPONENT,
            },
        }
    }
}

/// The pool's capacity, as semaphores callers take permits from.
#[derive(Debug)]
struct PoolGate {
    instances: Arc<Semaphore>,
    memories: Arc<Semaphore>,
    tables: Arc<Semaphore>,
}

/// A call's share of the pool, returned on drop.
#[derive(Debug)]
pub(crate) struct PoolPermit {
    _permits: Option<[OwnedSemaphorePermit; 3]>,
}

/// The engine every plugin of a host shares, and how it allocates.
#[derive(Debug)]
pub(crate) struct SharedEngine {
    engine: Engine,
    allocation: InstanceAllocation,
    gate: Option<PoolGate>,
    /// Instances one plugin may hold in the pool at once.
    per_plugin: u32,
    /// Per plugin name, `per_plugin` permits that every loaded version of
    /// it takes from ([`share_gate`](Self::share_gate)).
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Stores alive now: the epoch ticker runs only while there are some.
    epoch_demand: Arc<EpochDemand>,
}

impl std::ops::Deref for SharedEngine {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl SharedEngine {
    /// Build the engine: pooled with room for `max_instances` instances and
    /// memories of up to `memory_ceiling_mb` (the policy's ceiling, if any),
    /// or on demand when `max_instances` is 0 or the pool cannot be
    /// reserved; pooled stacks zeroed between calls when `zero_stacks`.
    ///
    /// # Errors
    /// [`Error::Engine`] when even the on-demand engine cannot be built.
    pub(crate) fn new(
        max_instances: u32,
        per_plugin: Option<u32>,
        memory_ceiling_mb: Option<u64>,
        zero_stacks: bool,
    ) -> Result<SharedEngine> {
        let per_plugin = per_plugin
            .unwrap_or_else(|| default_per_plugin(max_instances))
            .clamp(1, max_instances.max(1));
        let reason = if max_instances == 0 {
            "disabled by the host configuration (max_instances = 0)".to_owned()
        } else {
            let pool = PoolSize::new(max_instances, memory_ceiling_mb);
            match Engine::new(&pool.config(zero_stacks)) {
                Ok(engine) => {
                    tracing::debug!(
                        instances = pool.instances,
                        memories = pool.memories,
                        tables = pool.tables,
                        "instance pool reserved"
                    );
                    return Ok(SharedEngine {
                        engine,
                        allocation: InstanceAllocation::Pooling {
                            instances: pool.instances,
                            memories: pool.memories,
                            tables: pool.tables,
                            max_memory_bytes: pool.max_memory_bytes,
                            zero_stacks,
                        },
                        gate: Some(PoolGate {
                            instances: Arc::new(Semaphore::new(permits(pool.instances))),
                            memories: Arc::new(Semaphore::new(permits(pool.memories))),
                            tables: Arc::new(Semaphore::new(permits(pool.tables))),
                        }),
                        per_plugin,
                        shares: Mutex::default(),
                        epoch_demand: Arc::default(),
                    });
                }
                Err(e) => {
                    let reason = format!("cannot reserve the instance pool: {e:#}");
                    tracing::warn!(
                        "{reason}; falling back to on-demand instance allocation (slower instantiation)"
                    );
                    reason
                }
            }
        };
        let engine = Engine::new(&base_config()).map_err(|e| Error::Engine {
            message: format!("cannot configure the WebAssembly engine: {e:#}"),
        })?;
        Ok(SharedEngine {
            engine,
            allocation: InstanceAllocation::OnDemand { reason },
            gate: None,
            per_plugin,
            shares: Mutex::default(),
            epoch_demand: Arc::default(),
        })
    }

    /// How instances are allocated.
    pub(crate) fn allocation(&self) -> &InstanceAllocation {
        &self.allocation
    }

    /// Pool instances held by calls now (0 when allocating on demand).
    pub(crate) fn instances_in_use(&self) -> u32 {
        match &self.gate {
            Some(gate) => {
                let free = u32::try_from(gate.instances.available_permits()).unwrap_or(u32::MAX);
                self.max_instances().saturating_sub(free)
            }
            None => 0,
        }
    }

    /// The pool's instance count (0 when allocating on demand).
    pub(crate) fn max_instances(&self) -> u32 {
        match self.allocation {
            InstanceAllocation::Pooling { instances, .. } => instances,
            InstanceAllocation::OnDemand { .. } => 0,
        }
    }

    /// How many instances of a plugin needing `needs` may hold pool slots at
    /// once: its share of the pool's instances, and the same share of its
    /// memories and tables. `None` when allocating on demand.
    ///
    /// # Security
    /// Without a share, one plugin's slow calls could take every slot (or,
    /// with many memories or tables per instance, every memory or table
    /// slot) and starve every other plugin's calls into `host_busy`.
    pub(crate) fn plugin_share(&self, needs: PoolNeeds) -> Option<u32> {
        let InstanceAllocation::Pooling {
            instances,
            memories,
            tables,
            ..
        } = self.allocation
        else {
            return None;
        };
        Some(share_of(
            self.per_plugin,
            instances,
            memories,
            tables,
            needs,
        ))
    }

    /// The instances every loaded version of plugin `name` takes one of
    /// per call: its share of the pool, which a version's own slots
    /// (`max_concurrency`, its share) bound per version only — two versions
    /// of a rollout held twice the share, a whole pool at the default.
    /// `None` when allocating on demand.
    pub(crate) fn share_gate(&self, name: &str) -> Option<Arc<Semaphore>> {
        self.gate.as_ref()?;
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(shares.entry(name.to_owned()).or_insert_with(
            || Arc::new(Semaphore::new(permits(self.per_plugin))),
        )))
    }

    /// Instances one plugin may hold in the pool at once (every version of
    /// it together).
    pub(crate) fn per_plugin(&self) -> u32 {
        self.per_plugin
    }

    /// Take `needs` from the pool, waiting until `deadline` at most.
    /// `None` when the pool stayed full. Always succeeds at once on demand.
    pub(crate) async fn admit(&self, needs: PoolNeeds, deadline: Instant) -> Option<PoolPermit> {
        let Some(gate) = &self.gate else {
            return Some(PoolPermit { _permits: None });
        };
        let take = |semaphore: &Arc<Semaphore>, n: u32| {
            Arc::clone(semaphore).try_acquire_many_owned(n.max(1))
        };
        if let (Ok(i), Ok(m), Ok(t)) = (
            take(&gate.instances, 1),
            take(&gate.memories, needs.memories),
            take(&gate.tables, needs.tables),
        ) {
            return Some(PoolPermit {
                _permits: Some([i, m, t]),
            });
        }
        // Slow path: wait for each in a fixed order (no two callers can hold
        // parts of the pool while waiting for each other's).
        let wait = async {
            let i = Arc::clone(&gate.instances)
                .acquire_many_owned(1)
                .await
                .ok()?;
            let m = Arc::clone(&gate.memories)
                .acquire_many_owned(needs.memories.max(1))
                .await
                .ok()?;
            let t = Arc::clone(&gate.tables)
                .acquire_many_owned(needs.tables.max(1))
                .await
                .ok()?;
            Some(PoolPermit {
                _permits: Some([i, m, t]),
            })
        };
        tokio::time::timeout_at(deadline.into(), wait)
            .await
            .ok()
            .flatten()
    }
}

/// The default share of the pool one plugin may hold: half of it (at
/// least one instance).
pub(crate) fn default_per_plugin(max_instances: u32) -> u32 {
    (max_instances / 2).max(1)
}

/// Instances one plugin may hold: `per_plugin` of the pool's `instances`,
/// fewer when its instances need more memories or tables than the same
/// fraction of those pools holds; never less than one.
fn share_of(per_plugin: u32, instances: u32, memories: u32, tables: u32, needs: PoolNeeds) -> u32 {
    let fraction =
        |total: u32| u64::from(total) * u64::from(per_plugin) / u64::from(instances.max(1));
    let by_memories = fraction(memories) / u64::from(needs.memories.max(1));
    let by_tables = fraction(tables) / u64::from(needs.tables.max(1));
    let share = u64::from(per_plugin).min(by_memories).min(by_tables).max(1);
    u32::try_from(share).unwrap_or(u32::MAX)
}

fn permits(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Settings every engine of the host has, pooled or not.
fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Fuel bounds the instructions a call may execute; epochs bound its wall
    // time and let long calls yield to the async executor.
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // Map each component's initial memory from an image, copy-on-write,
    // instead of copying its data segments on every instantiation.
    config.memory_init_cow(true);
    config
}

/// The pool's dimensions, derived from the host's configuration.
struct PoolSize {
    instances: u32,
    memories: u32,
    tables: u32,
    max_memory_bytes: u64,
}

impl PoolSize {
    fn new(max_instances: u32, memory_ceiling_mb: Option<u64>) -> PoolSize {
        let max_memory_bytes = memory_ceiling_mb
            .map_or(MAX_WASM32_MEMORY, |mb| mb.saturating_mul(1 << 20))
            .clamp(64 << 10, MAX_WASM32_MEMORY);
        PoolSize {
            instances: max_instances,
            // At least enough for one component at its maximum.
            memories: max_instances
                .saturating_mul(MEMORIES_PER_INSTANCE)
                .max(MAX_MEMORIES_PER_COMPONENT),
            tables: max_instances
                .saturating_mul(TABLES_PER_INSTANCE)
                .max(MAX_TABLES_PER_COMPONENT),
            max_memory_bytes,
        }
    }

    fn config(&self, zero_stacks: bool) -> Config {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(self.instances)
            // Core instances cost no reserved space, only a count.
            .total_core_instances(
                self.instances
                    .saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT),
            )
            .total_memories(self.memories)
            .total_tables(self.tables)
            // One fiber stack per call in flight.
            .total_stacks(self.instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_memories_per_module(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_module(MAX_TABLES_PER_COMPONENT)
            .table_elements(crate::limits::MAX_TABLE_ELEMENTS)
            .max_memory_size(usize::try_from(self.max_memory_bytes).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .async_stack_keep_resident(STACK_KEEP_RESIDENT_BYTES)
            // Reset only the pages a call touched (Linux 6.7+; ignored
            // elsewhere).
            .pagemap_scan(Enabled::Auto);
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // A pooled stack is reused by other plugins' calls: zeroed first (by
        // default), it holds nothing of theirs, like a fresh on-demand stack
        // (HostConfig::zero_stacks says what it costs).
        config.async_stack_zeroing(zero_stacks);
        config
    }
}

/// How many stores are alive (the ticker's only customers), and a stop
/// flag; the ticker sleeps on `wake` while there are none.
#[derive(Debug, Default)]
pub(crate) struct EpochDemand {
    state: Mutex<DemandState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct DemandState {
    stores: usize,
    stop: bool,
    /// The ticker waits on `wake` (rather than sleeping out a tick): only
    /// then does a new store signal it. A signal is a system call; while
    /// the ticker sleeps between ticks it finds the store anyway.
    waiting: bool,
}

impl EpochDemand {
    fn lock(&self) -> std::sync::MutexGuard<'_, DemandState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by every store while it lives: epochs advance (and deadlines are
/// checked) only while one is held.
#[derive(Debug)]
pub(crate) struct EpochGuard(Arc<EpochDemand>);

impl Drop for EpochGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.stores = state.stores.saturating_sub(1);
    }
}

impl SharedEngine {
    /// A guard to hold while a store of this engine lives: wakes the epoch
    /// ticker.
    pub(crate) fn epoch_guard(&self) -> EpochGuard {
        let mut state = self.epoch_demand.lock();
        state.stores += 1;
        if state.waiting {
            state.waiting = false;
            self.epoch_demand.wake.notify_all();
        }
        drop(state);
        EpochGuard(Arc::clone(&self.epoch_demand))
    }
}

/// A background thread that advances an engine's epoch every [`EPOCH_TICK`]
/// while any store is alive, and sleeps otherwise (an idle host does not
/// wake a hundred times a second). A store's deadline counts from its
/// creation in wall-clock time, so a ticker that starts with it loses
/// nothing. One per engine; stops when dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    demand: Arc<EpochDemand>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &SharedEngine) -> Result<EpochTicker> {
        let demand = Arc::clone(&engine.epoch_demand);
        let weak = engine.weak();
        let shared = Arc::clone(&demand);
        let thread = std::thread::Builder::new()
            .name("airlock-epoch".to_owned())
            .spawn(move || {
                loop {
                    {
                        let mut state = shared.lock();
                        while state.stores == 0 && !state.stop {
                            state.waiting = true;
                            state = shared
                                .wake
                                .wait(state)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                        state.waiting = false;
                        if state.stop {
                            return;
                        }
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| Error::Engine {
                message: format!("cannot start the epoch ticker thread: {e}"),
            })?;
        Ok(EpochTicker {
            demand,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.demand.lock().stop = true;
        self.demand.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread wakes within one tick; a panic in it has nothing to
            // report here.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_sized_from_the_configuration() {
        let pool = PoolSize::new(256, Some(128));
        assert_eq!(pool.instances, 256);
        assert_eq!(pool.memories, 512);
        assert_eq!(pool.tables, 1024);
        assert_eq!(pool.max_memory_bytes, 128 << 20);
        // No ceiling: any 32-bit memory fits; a tiny pool still fits one
        // component at its maximum.
        let pool = PoolSize::new(1, None);
        assert_eq!(pool.max_memory_bytes, MAX_WASM32_MEMORY);
        assert_eq!(pool.memories, MAX_MEMORIES_PER_COMPONENT);
        assert_eq!(pool.tables, MAX_TABLES_PER_COMPONENT);
    }

    #[test]
    fn one_plugin_gets_a_share_of_the_pool() {
        let needs = |memories, tables| PoolNeeds { memories, tables };
        // Half the instances by default...
        assert_eq!(default_per_plugin(256), 128);
        assert_eq!(default_per_plugin(1), 1);
        let pool = PoolSize::new(256, None);
        let share = |per_plugin, n| share_of(per_plugin, 256, pool.memories, pool.tables, n);
        assert_eq!(share(128, needs(2, 4)), 128);
        // ...fewer when each instance takes more memories or tables than
        // an average one, so the same fraction of those pools is the bound.
        assert_eq!(share(128, needs(16, 4)), 16);
        assert_eq!(share(128, needs(2, 64)), 8);
        // Never zero.
        assert_eq!(share_of(1, 2, 16, 64, needs(16, 64)), 1);
    }

    #[test]
    fn zero_instances_means_on_demand() {
        let on_demand = SharedEngine::new(0, None, None, true).unwrap();
        let InstanceAllocation::OnDemand { reason } = on_demand.allocation() else {
            panic!("expected on-demand allocation");
        };
        assert!(reason.contains("max_instances = 0"), "{reason}");
        assert!(on_demand.gate.is_none());
    }

    #[test]
    fn pooled_stacks_are_zeroed_unless_turned_off() {
        for zero in [true, false] {
            let engine = SharedEngine::new(1, None, Some(64), zero).unwrap();
            let InstanceAllocation::Pooling { zero_stacks, .. } = engine.allocation() else {
                // No pool on this machine: nothing pooled to zero.
                return;
            };
            assert_eq!(*zero_stacks, zero);
            assert!(engine.allocation().to_string().contains(if zero {
                "stacks zeroed between calls"
            } else {
                "stacks not zeroed between calls"
            }));
            // wasmtime keeps count of the stack bytes it resets in place
            // only when it zeroes them.
            let metrics = engine.engine.pooling_allocator_metrics().unwrap();
            assert_eq!(metrics.unused_stack_bytes_resident().is_some(), zero);
        }
    }

    #[tokio::test]
    async fn a_full_pool_makes_callers_wait_until_their_deadline() {
        let engine = SharedEngine::new(1, None, Some(64), true).unwrap();
        if engine.gate.is_none() {
            return;
        }
        let needs = PoolNeeds {
            memories: 1,
            tables: 1,
        };
        let soon = || Instant::now() + Duration::from_millis(50);
        let first = engine.admit(needs, soon()).await;
        assert!(first.is_some());
        assert!(engine.admit(needs, soon()).await.is_none());
        drop(first);
        assert!(engine.admit(needs, soon()).await.is_some());
    }
}
