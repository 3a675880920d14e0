//! The connection pool, the runtime it lives on, and what PostgreSQL's
//! errors mean to the seam.
//!
//! The seam's traits are synchronous; tokio-postgres is not. The backend
//! owns a small multi-threaded tokio runtime: a trait method spawns its
//! work there and waits on a std channel. It never calls `block_on`, so it
//! works from plain threads and from inside any other tokio runtime
//! (current-thread or multi-threaded) alike — there it blocks that thread
//! for the operation's time, as the synchronous contract says.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_store::{ErrorKind, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use crate::config::{PostgresConfig, Tls};

/// What every operation shares: the pool and what to say in messages.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) description: String,
    pool_size: usize,
    pool_wait_ms: u64,
    connect_timeout_ms: u64,
}

/// The runtime and the pool; dropping it stops the runtime's threads.
pub(crate) struct Db {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pub(crate) shared: Arc<Shared>,
    /// How long one operation may take, all waits included: the pool's
    /// wait, a connection, and a few statements.
    op_timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("description", &self.shared.description)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Allowed from inside another runtime, unlike a plain drop; the
        // pool's connections close with their tasks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Db {
    /// A runtime and a pool for `config`; connects nothing yet.
    pub(crate) fn new(config: &PostgresConfig) -> Result<Db, StoreError> {
        let (pg_config, tls) = config.client_config()?;
        let description = config.describe(&pg_config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("airlock-postgres")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::with_source(
                    ErrorKind::Unavailable,
                    "cannot start the PostgreSQL store's threads",
                    e,
                )
            })?;
        let manager_config = ManagerConfig {
            // A connection whose socket closed is dropped at check-out; a
            // server that went away unnoticed fails one operation, whose
            // connection is then discarded.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Tls::Disable => Manager::from_config(pg_config, tokio_postgres::NoTls, manager_config),
            Tls::Require(rustls) => Manager::from_config(
                pg_config,
                tokio_postgres_rustls::MakeRustlsConnect::new((*rustls).clone()),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.pool_wait()))
            .create_timeout(Some(config.connect_timeout()))
            .recycle_timeout(Some(config.connect_timeout()))
            .build()
            .map_err(|e| {
                StoreError::with_source(
                    ErrorKind::Config,
                    "cannot set up the PostgreSQL connection pool",
                    e,
                )
            })?;
        // Waiting for a connection, then opening one, then up to a handful
        // of statements each bounded by the server's statement_timeout
        // (plus a margin for the network).
        let op_timeout = config.pool_wait()
            + config.connect_timeout()
            + config.statement_timeout() * 2
            + Duration::from_secs(2);
        Ok(Db {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            shared: Arc::new(Shared {
                pool,
                description,
                pool_size: config.pool_size,
                pool_wait_ms: config.pool_wait_ms,
                connect_timeout_ms: config.connect_timeout_ms,
            }),
            op_timeout,
        })
    }

    /// Run `work` on the backend's runtime and wait for it, at most the
    /// operation timeout.
    pub(crate) fn run<T, F>(&self, work: impl FnOnce(Op) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let aborted = Arc::new(AtomicBool::new(false));
        let future = work(Op {
            shared: self.shared.clone(),
            aborted: aborted.clone(),
        });
        let op_timeout = self.op_timeout;
        let description = self.shared.description.clone();
        self.handle.spawn(async move {
            let mut future = Box::pin(future);
            let outcome = tokio::time::timeout(op_timeout, &mut future).await;
            if outcome.is_err() {
                // Cut off mid-statement: its connection may be inside a
                // transaction or owe answers; it must not go back to the
                // pool (see `Conn`).
                aborted.store(true, Ordering::Relaxed);
            }
            drop(future);
            let result = match outcome {
                Ok(result) => result,
                Err(_) => Err(StoreError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{description} did not answer within {} ms",
                        op_timeout.as_millis()
                    ),
                )),
            };
            // The caller waits for this; it is gone only if it panicked.
            let _ = tx.send(result);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::new(
                ErrorKind::Unavailable,
                format!("the operation on {} was dropped", self.shared.description),
            ))
        })
    }
}

/// How many times a transaction that lost a serialization race or a
/// deadlock is tried.
pub(crate) const ATTEMPTS: u32 = 8;

/// Run the async block `$body` again while it fails with a serialization
/// failure or a deadlock (the database rolled it back; PostgreSQL under
/// READ COMMITTED reports deadlocks only, a serializable engine such as
/// CockroachDB also serialization failures). A macro, not a function
/// taking a closure: the block borrows the operation's inputs.
macro_rules! retrying {
    ($body:expr) => {{
        let mut attempt: u32 = 1;
        loop {
            match $body.await {
                Err(e) if attempt < $crate::db::ATTEMPTS && $crate::db::is_retryable(&e) => {
                    tracing::debug!(attempt, error = %e.chain(), "retrying a transaction");
                    let backoff = std::time::Duration::from_millis(2u64 << attempt.min(6));
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                result => break result,
            }
        }
    }};
}
pub(crate) use retrying;

/// One operation's view of the backend: the shared pool, and whether the
/// operation was cut off by its timeout.
#[derive(Debug)]
pub(crate) struct Op {
    shared: Arc<Shared>,
    aborted: Arc<AtomicBool>,
}

impl std::ops::Deref for Op {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Op {
    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<Conn, StoreError> {
        let object = self
            .shared
            .pool
            .get()
            .await
            .map_err(|e| self.shared.pool_error(e))?;
        Ok(Conn {
            object: Some(object),
            aborted: self.aborted.clone(),
        })
    }
}

/// A pooled connection that goes back to the pool when dropped — unless
/// its operation was cut off by the timeout: then it is closed, since it
/// may hold an open transaction or answers not yet read.
pub(crate) struct Conn {
    object: Option<deadpool_postgres::Object>,
    aborted: Arc<AtomicBool>,
}

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &deadpool_postgres::Object {
        self.object
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut deadpool_postgres::Object {
        self.object
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Conn {
    /// Take the connection out of the pool for good: it stays open, and
    /// its session (with any lock it holds) lasts, until the returned
    /// client is dropped.
    pub(crate) fn detach(mut self) -> deadpool_postgres::ClientWrapper {
        let object = self
            .object
            .take()
            .unwrap_or_else(|| unreachable!("taken only here and in drop"));
        deadpool_postgres::Object::take(object)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.aborted.load(Ordering::Relaxed)
            && let Some(object) = self.object.take()
        {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

impl Shared {
    fn pool_error(&self, e: PoolError) -> StoreError {
        use deadpool_postgres::TimeoutType;
        let desc = &self.description;
        match e {
            PoolError::Timeout(TimeoutType::Wait) => StoreError::new(
                ErrorKind::Unavailable,
                format!(
                    "store unavailable: all {} connections to {desc} are busy and none was free within pool_wait_ms ({} ms)",
                    self.pool_size, self.pool_wait_ms
                ),
            ),
            PoolError::Timeout(TimeoutType::Create) => StoreError::new(
                ErrorKind::Unavailable,
                format!(
                    "store unavailable: connecting to {desc} took longer than connect_timeout_ms ({} ms)",
                    self.connect_timeout_ms
                ),
            ),
            PoolError::Timeout(TimeoutType::Recycle) => StoreError::new(
                ErrorKind::Unavailable,
                format!("store unavailable: checking a connection to {desc} timed out"),
            ),
            PoolError::Backend(e) => connect_error(desc, e),
            other => StoreError::with_source(
                ErrorKind::Unavailable,
                format!("store unavailable: no connection to {desc}"),
                other,
            ),
        }
    }
}

/// A failure to connect: wrong credentials or a missing database are the
/// configuration's fault; anything else may pass.
fn connect_error(desc: &str, e: tokio_postgres::Error) -> StoreError {
    let context = match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD => {
            format!("cannot log in to {desc}: wrong password or no such user")
        }
        Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            format!("cannot log in to {desc}: the server refuses this user")
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            format!("cannot connect to {desc}: the database does not exist")
        }
        Some(_) => format!("cannot connect to {desc}"),
        // tokio-postgres says what failed only in its message: a TLS
        // handshake refused (no TLS on the server, a certificate that
        // does not verify) is the configuration's, not the network's.
        None if e.to_string().contains("TLS") => {
            return StoreError::with_source(
                ErrorKind::Config,
                format!("cannot connect to {desc} with TLS: check the store's tls and ca_file"),
                e,
            );
        }
        None => format!("store unavailable: cannot connect to {desc}"),
    };
    pg_error(context, e)
}

/// A PostgreSQL error, classified by its SQLSTATE: connection, timeout
/// and resource failures are [`ErrorKind::Unavailable`] (as is a failure
/// without a code: a socket error, a closed connection), credentials and
/// missing databases [`ErrorKind::Config`], a unique violation
/// [`ErrorKind::Conflict`], a missing table or column
/// [`ErrorKind::Incompatible`], bad data and damaged pages or indexes
/// [`ErrorKind::Corrupt`] (other internal errors of the server are
/// [`ErrorKind::Unavailable`]: nothing says the data is at fault).
pub(crate) fn pg_error(context: impl Into<String>, e: tokio_postgres::Error) -> StoreError {
    let kind = e.code().map_or(ErrorKind::Unavailable, classify);
    StoreError::with_source(kind, context, e)
}

fn classify(code: &SqlState) -> ErrorKind {
    let c = code.code();
    match c {
        "28P01" | "28000" | "3D000" | "42501" => ErrorKind::Config,
        "23505" => ErrorKind::Conflict,
        "42P01" | "42703" | "42883" => ErrorKind::Incompatible,
        // XX001 data_corrupted, XX002 index_corrupted.
        "XX001" | "XX002" => ErrorKind::Corrupt,
        _ if c.starts_with("22") || c.starts_with("23") => ErrorKind::Corrupt,
        // 08 connection, 40 rolled back, 53 resources, 57 timeout or
        // shutdown, and the rest: try again later.
        _ => ErrorKind::Unavailable,
    }
}

/// Whether `e` is a transaction the database rolled back on purpose
/// (serialization failure, deadlock): trying again may succeed.
pub(crate) fn is_retryable(e: &StoreError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
}

/// `e` with what was being done: `.map_err(ctx("reading approval"))`.
pub(crate) fn ctx(context: &str) -> impl FnOnce(tokio_postgres::Error) -> StoreError + '_ {
    move |e| pg_error(context, e)
}
