//! Reaching a running `airlock serve` through its control socket
//! (`<data dir>/control.sock`, see `airlock_mcp::control`) when it holds the
//! data directory's databases.
//!
//! How a command picks its source ([`open_or_reach`]):
//! - no control socket file: open the store as before (waiting up to
//!   `audit.lock_wait_ms` for another process);
//! - a socket file: open the store *without* waiting; when that fails (a
//!   server holds it), go through the socket;
//! - nothing answers on the socket (a server that was killed): open the
//!   store waiting as before, and if that fails too, say both.
//!
//! The server is trusted only when the kernel says it runs as this user
//! (`SO_PEERCRED`): a socket someone else put there gets nothing, not even
//! an approver's token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_mcp::control::SOCKET_FILE;
use anyhow::{Context as _, anyhow};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;

use crate::config::Settings;
use crate::remote::{collect, exchange};
use crate::{Failure, exit};

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a verification or an export may take.
const LONG_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Largest answer accepted (an export is streamed to its file instead).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A running server's control socket.
#[derive(Debug)]
pub(crate) struct Control {
    path: PathBuf,
}

/// Where a command reads from.
pub(crate) enum Source<T> {
    /// The store, opened here.
    Local(T),
    /// The running server that holds it.
    Server(Control),
}

/// The data directory's control socket.
pub(crate) fn socket_path(settings: &Settings) -> PathBuf {
    settings.data_dir.join(SOCKET_FILE)
}

/// Open a store with `open(lock_wait_ms)`, or reach the server that holds
/// it (module docs).
pub(crate) async fn open_or_reach<T>(
    settings: &Settings,
    open: impl Fn(u64) -> anyhow::Result<T>,
) -> Result<Source<T>, Failure> {
    let path = socket_path(settings);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(Source::Local(open(settings.audit.lock_wait_ms)?));
    }
    let held = match open(0) {
        Ok(store) => return Ok(Source::Local(store)),
        Err(error) => error,
    };
    match Control::reach(&path).await {
        Ok(control) => Ok(Source::Server(control)),
        // Something answers, but not this user's server: nothing to wait for.
        Err(untrusted) if untrusted.is::<Untrusted>() => {
            Err(anyhow!("{held:#}; and the control socket cannot be used: {untrusted:#}").into())
        }
        Err(unreachable) => match open(settings.audit.lock_wait_ms) {
            Ok(store) => Ok(Source::Local(store)),
            Err(_) => Err(anyhow!(
                "{held:#}; and no airlock serve answers on the control socket {} ({unreachable:#})",
                path.display()
            )
            .into()),
        },
    }
}

/// The socket is served by another user.
#[derive(Debug, thiserror::Error)]
#[error("{} is served by uid {server}, not by this user (uid {me}): refusing to use it", path.display())]
struct Untrusted {
    path: PathBuf,
    server: u32,
    me: u32,
}

/// This process's user, as the kernel reports it: the credentials of a
/// socket pair's other end are this process's own.
fn own_uid() -> anyhow::Result<u32> {
    let (one, _other) = UnixStream::pair().context("cannot create a socket pair")?;
    Ok(one
        .peer_cred()
        .context("cannot read this process's credentials")?
        .uid())
}

impl Control {
    /// The server answering on `path`, if it runs as this user.
    pub(crate) async fn reach(path: &Path) -> anyhow::Result<Control> {
        let control = Control {
            path: path.to_owned(),
        };
        drop(control.connect().await?);
        Ok(control)
    }

    /// The server on the data directory's socket, if one answers.
    pub(crate) async fn find(settings: &Settings) -> Option<Control> {
        let path = socket_path(settings);
        if std::fs::symlink_metadata(&path).is_err() {
            return None;
        }
        Control::reach(&path).await.ok()
    }

    async fn connect(&self) -> anyhow::Result<UnixStream> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(&self.path))
            .await
            .map_err(|_| anyhow!("connecting timed out"))?
            .with_context(|| format!("cannot connect to {}", self.path.display()))?;
        let server = stream
            .peer_cred()
            .context("cannot read the server's credentials")?
            .uid();
        let me = own_uid()?;
        if server != me {
            return Err(Untrusted {
                path: self.path.clone(),
                server,
                me,
            }
            .into());
        }
        Ok(stream)
    }

    /// One request; the response once its status is 200.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let socket = self.path.display().to_string();
        let exchange = async {
            let stream = self.connect().await?;
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "localhost");
            exchange(stream, request, body).await
        };
        let response = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                anyhow!(
                    "the server on {socket} did not answer within {} s",
                    timeout.as_secs()
                )
            })?
            .with_context(|| format!("cannot reach the server on {socket}"))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let bytes = collect(response, 64 << 10).await.unwrap_or_default();
        let answer = serde_json::from_slice::<Value>(&bytes).ok();
        let message = answer
            .as_ref()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
        // A refusal that says its class (release actions) keeps the exit
        // code it would have here.
        let class = answer
            .as_ref()
            .and_then(|v| v.get("class").cloned())
            .and_then(|c| serde_json::from_value::<airlock_host::ErrorClass>(c).ok());
        Err(match status {
            400 | 404 => Failure::usage(anyhow!(message)),
            409 => Failure {
                code: class.map_or(exit::REFUSED, crate::exit_code),
                error: anyhow!(message),
            },
            _ => anyhow!("the server on {socket} answered {status}: {message}").into(),
        })
    }

    /// A request whose answer is raw bytes.
    pub(crate) async fn bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Bytes, Failure> {
        let response = self.send(method, path, body, TIMEOUT).await?;
        Ok(collect(response, MAX_RESPONSE_BYTES).await?)
    }

    /// A request whose answer is JSON.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Failure> {
        self.json_within(method, path, body, TIMEOUT).await
    }

    /// [`json`](Self::json) for work that takes long (verification).
    pub(crate) async fn json_slow<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Failure> {
        self.json_within(method, path, body, LONG_TIMEOUT).await
    }

    async fn json_within<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<T, Failure> {
        let response = self.send(method, path, body, timeout).await?;
        let bytes = collect(response, MAX_RESPONSE_BYTES).await?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the server's answer to {path} is not what was asked for"))
            .map_err(Failure::from)
    }

    /// `GET path`, its body streamed into `out` (through a new temporary
    /// file beside it, renamed at the end, so a failed transfer leaves
    /// nothing and touches no other file); the answer's headers.
    pub(crate) async fn download(
        &self,
        path: &str,
        out: &Path,
    ) -> Result<hyper::HeaderMap, Failure> {
        let work = async {
            let response = self.send("GET", path, None, LONG_TIMEOUT).await?;
            let headers = response.headers().clone();
            let written = async {
                // Owner only: what is downloaded is an export of the
                // host's private data.
                let tmp = airlock_host::store::file::private_temporary_beside(out)?;
                let mut file = tokio::fs::File::from_std(tmp.reopen()?);
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        file.write_all(&data).await?;
                    }
                }
                file.flush().await?;
                drop(file);
                let out = out.to_owned();
                tokio::task::spawn_blocking(move || airlock_host::store::file::persist(tmp, &out))
                    .await??;
                anyhow::Ok(())
            }
            .await;
            if let Err(error) = written {
                return Err(Failure::from(
                    error.context(format!("cannot write {}", out.display())),
                ));
            }
            Ok(headers)
        };
        tokio::time::timeout(LONG_TIMEOUT, work)
            .await
            .map_err(|_| anyhow!("the transfer took over {} s", LONG_TIMEOUT.as_secs()))?
    }
}
