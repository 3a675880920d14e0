//! The control socket: the operator's commands (`airlock audit`,
//! `approvals`, `workspace`, `mode`) reach a running server that holds the
//! data directory's databases, instead of waiting for them.
//!
//! `airlock serve` binds `<data dir>/control.sock`, a Unix socket, and
//! serves HTTP/1.1 with JSON bodies on it, under `/v1`:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/audit/head` | `{"head": seq, "head_hash": hex}` |
//! | `POST /v1/audit/query` [`AuditQuery`] | `{"records": [...]}`, at most [`MAX_QUERY`] (a larger `limit` is refused) |
//! | `GET /v1/audit/records/{seq}` | `{"record": record or null, "head": seq}` |
//! | `GET /v1/audit/after/{seq}?limit=N` | `{"records": [...]}` after `seq`, at most [`MAX_PAGE`] |
//! | `POST /v1/audit/verify` `{"trusted": [checkpoint]}` | [`VerifyAnswer`] |
//! | `GET /v1/audit/export` | the export file's lines, streamed; counts in `x-airlock-*` headers |
//! | `GET /v1/approvals[?all=true]` | `{"approvals": [...]}` |
//! | `GET /v1/approvals/{id}` | `{"approval": ...}`, `404` |
//! | `POST /v1/approvals/{id}` [`DecideRequest`] | `{"approval": ...}`, `409` when refused |
//! | `GET /v1/workspace` | `{"plugins": [`[`PluginUsage`]`]}` |
//! | `GET /v1/workspace/{plugin}` | [`WorkspaceListing`] |
//! | `POST /v1/workspace/{plugin}/value` [`ValueRequest`] | the raw value, `404` |
//! | `GET /v1/workspace/{plugin}/export` | JSON lines, streamed |
//! | `GET /v1/mode` | `{"mode": mode or null}` |
//! | `POST /v1/mode` [`ModeRequest`] | `{"mode": ...}` (recorded in the audit log) |
//! | `POST /v1/releases` [`ReleaseRequest`](crate::releases::ReleaseRequest) | the action's answer; `409` with `{"error": message, "kind", "class", "approval_id"?}` when refused |
//! | `GET /v1/alerts` | `{"alerts": [`[`AlertStatus`](airlock_host::AlertStatus)`], "pauses": [`[`Pause`](airlock_host::Pause)`]}` |
//! | `POST /v1/alerts/pause` [`PauseRequest`] | `{"pause": ...}` (recorded); 400 for a target the host does not serve, unless `force` |
//! | `POST /v1/alerts/resume` [`PauseRequest`] | `{"resumed": pause or null}` (recorded) |
//!
//! Errors are `{"error": "..."}` with `400` (bad request), `404`, `409`
//! (decision refused) or `500`.
//!
//! # Security
//! The socket gives what the data directory gives (a decision still needs
//! the approver's name and token, as on the data directory), so it is
//! reachable by the server's user only:
//! - it is bound inside a fresh owner-only (`0700`) directory, set to
//!   `0600`, then renamed into place: at no moment can another user connect
//!   to it; the data directory is created `0700` when `serve` creates it;
//! - every connection's peer credentials (`SO_PEERCRED`) are checked: a
//!   peer of another uid (root included) is closed before a byte is read;
//! - requests have the HTTP listeners' bounds: header and body read
//!   timeouts, a body size cap, a connection cap.
//!
//! A socket file where nothing listens (a server that was killed) is
//! replaced; one where a server answers makes `serve` refuse to start
//! ([`Error::ServerRunning`]). The file is removed at shutdown.

use std::fs;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _,
    PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_host::Host;
use airlock_host::audit_log::{Checkpoint, Event, Filter, Record, VerifyFailure, VerifyReport};
use airlock_host::store::{
    ApprovalState, KeyOwner, KeyScope, Mode, Usage, Workspace, WorkspaceError,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::http::{
    Accept, BodyBound, ConnectionBounds, Guard, accept_failed, behind_checks, plain,
    serve_connections,
};

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Most records one `after` request returns; the client asks again.
pub const MAX_PAGE: usize = 1000;
/// Most records one audit query asks for ([`AuditQuery::limit`], `airlock
/// audit query --limit`): the answer is built whole in the server's
/// memory. More is an export (`/v1/audit/export`) or pages of `after`.
pub const MAX_QUERY: usize = 100_000;
/// Headers of an export's answer.
pub mod export_headers {
    /// Records written.
    pub const RECORDS: &str = "x-airlock-records";
    /// Checkpoints written.
    pub const CHECKPOINTS: &str = "x-airlock-checkpoints";
    /// The signer's public key, hex.
    pub const PUBLIC_KEY: &str = "x-airlock-public-key";
}

/// The longest path a Unix socket may be bound at (`sun_path` holds 108
/// bytes with the terminating NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// The control socket of `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Bounds on the control socket's connections and requests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ControlConfig {
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a connection has to deliver a request's head (and the idle
    /// bound between requests).
    pub header_read_timeout: Duration,
    /// Time a request has to deliver its body once its head is in.
    pub body_read_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            max_request_bytes: crate::http::DEFAULT_MAX_REQUEST_BYTES,
            max_connections: 64,
            header_read_timeout: crate::http::DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: crate::http::DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

fn control_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Control {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Before a server opens `data_dir`: create it owner-only (`0700`) when it
/// does not exist, warn when it is readable by others, and refuse when
/// another server answers on its control socket.
///
/// # Errors
/// [`Error::ServerRunning`]; [`Error::Control`] when the directory cannot
/// be created or the socket's path holds something other than a socket.
pub fn prepare(data_dir: &Path) -> Result<()> {
    match fs::metadata(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| {
                control_error(data_dir, format!("cannot create the data directory: {e}"))
            })?,
        Err(e) => {
            return Err(control_error(
                data_dir,
                format!("cannot read the data directory: {e}"),
            ));
        }
        // Made by an older version, or by hand: every command now makes
        // it owner-only, but one already there is left as it is. (One
        // other users can write into the host refuses to open.)
        Ok(meta) if meta.permissions().mode() & 0o044 != 0 => tracing::warn!(
            dir = %data_dir.display(),
            "the data directory is readable by other users: they can read the audit log's copies of arguments and results, the workspace and the ledger (chmod 700 it)"
        ),
        Ok(_) => {}
    }
    // Before its socket is looked at: in a directory others can write,
    // a socket another user planted would be taken for a running server.
    airlock_host::check_state_dirs(data_dir).map_err(|e| control_error(data_dir, e.to_string()))?;
    let socket = socket_path(data_dir);
    match fs::symlink_metadata(&socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(control_error(&socket, format!("cannot read: {e}"))),
        Ok(meta) if !meta.file_type().is_socket() => Err(control_error(
            &socket,
            "exists and is not a socket; remove it",
        )),
        Ok(_) => match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(_) => Err(Error::ServerRunning { socket }),
            // Nothing listens: a server that did not stop cleanly. Replaced
            // when this one binds.
            Err(_) => Ok(()),
        },
    }
}

/// A bound control socket, not yet serving.
#[derive(Debug)]
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    file: SocketFile,
    uid: u32,
}

/// The socket's file, removed when dropped unless another has replaced it.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl ControlSocket {
    /// Bind `<data_dir>/control.sock`, owner-only, replacing a stale one.
    /// Call once the host holds the data directory's databases (and after
    /// [`prepare`]): then no other server can be using the socket.
    ///
    /// # Errors
    /// [`Error::Control`].
    pub fn bind(data_dir: &Path) -> Result<ControlSocket> {
        let path = socket_path(data_dir);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Short: a socket's path has room for 107 bytes, and the staged one
        // is the longer.
        let private = data_dir.join(format!(
            ".c{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let staged = private.join(SOCKET_FILE);
        let longest = staged.as_os_str().len();
        if longest > MAX_SOCKET_PATH_BYTES {
            let room = MAX_SOCKET_PATH_BYTES
                .saturating_sub(longest.saturating_sub(data_dir.as_os_str().len()));
            return Err(control_error(
                data_dir,
                format!(
                    "the data directory's path is too long for its control socket ({} bytes; a Unix socket's path has room for {MAX_SOCKET_PATH_BYTES}, so at most about {room} here): use a shorter --data-dir",
                    data_dir.as_os_str().len()
                ),
            ));
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(|e| control_error(&private, format!("cannot create: {e}")))?;
        let bound = (|| {
            let listener = tokio::net::UnixListener::bind(&staged)
                .map_err(|e| control_error(&staged, format!("cannot bind: {e}")))?;
            fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
                .map_err(|e| control_error(&staged, format!("cannot restrict: {e}")))?;
            // Atomic, and replaces a stale socket.
            fs::rename(&staged, &path)
                .map_err(|e| control_error(&path, format!("cannot move into place: {e}")))?;
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| control_error(&path, format!("cannot read: {e}")))?;
            Ok(ControlSocket {
                listener,
                // The file is ours: its owner is this process's user.
                uid: meta.uid(),
                file: SocketFile {
                    path: path.clone(),
                    id: (meta.dev(), meta.ino()),
                },
            })
        })();
        let _ = fs::remove_dir_all(&private);
        bound
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// Whether a peer may use the socket: the same user as the server, known
/// from the kernel (`SO_PEERCRED`), not from anything the peer says.
///
/// # Errors
/// Why not, for the log.
pub fn check_peer(peer_uid: Option<u32>, own_uid: u32) -> std::result::Result<(), String> {
    match peer_uid {
        Some(uid) if uid == own_uid => Ok(()),
        Some(uid) => Err(format!(
            "peer runs as uid {uid}, not as the server's user (uid {own_uid})"
        )),
        None => Err("the peer's credentials cannot be read".to_owned()),
    }
}

struct ControlListener {
    listener: tokio::net::UnixListener,
    uid: u32,
}

impl Accept for ControlListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&mut self) -> Option<(tokio::net::UnixStream, String)> {
        match self.listener.accept().await {
            Ok((stream, _)) => {
                let peer = stream.peer_cred().ok().map(|c| c.uid());
                match check_peer(peer, self.uid) {
                    Ok(()) => Some((stream, "control socket".to_owned())),
                    Err(reason) => {
                        tracing::warn!(%reason, "control socket connection refused");
                        None
                    }
                }
            }
            Err(error) => {
                accept_failed(&error).await;
                None
            }
        }
    }
}

/// Serve the control endpoints on `socket` until `shutdown`; the socket
/// file is removed at the end.
///
/// # Errors
/// None at present: a failed accept is logged and retried.
pub async fn serve(
    socket: ControlSocket,
    host: Arc<Host>,
    config: &ControlConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let ControlSocket {
        listener,
        file,
        uid,
    } = socket;
    let router = behind_checks(
        routes(host),
        Arc::new(Guard::loopback_only()),
        BodyBound::new(config.max_request_bytes, config.body_read_timeout),
    );
    serve_connections(
        ControlListener { listener, uid },
        router,
        ConnectionBounds {
            max_connections: config.max_connections,
            // Every peer of the control socket is this user.
            max_per_peer: None,
            header_read_timeout: config.header_read_timeout,
            write_timeout: crate::http::DEFAULT_WRITE_TIMEOUT,
        },
        shutdown,
    )
    .await;
    drop(file);
    Ok(())
}

fn routes(host: Arc<Host>) -> Router {
    Router::new()
        .route("/v1/audit/head", get(audit_head))
        .route("/v1/audit/query", post(audit_query))
        .route("/v1/audit/records/{seq}", get(audit_record))
        .route("/v1/audit/after/{seq}", get(audit_after))
        .route("/v1/audit/verify", post(audit_verify))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/approvals", get(approvals))
        .route("/v1/approvals/{id}", get(approval).post(decide))
        .route("/v1/workspace", get(workspace_plugins_route))
        .route("/v1/workspace/{plugin}", get(workspace_listing_route))
        .route("/v1/workspace/{plugin}/value", post(workspace_value_route))
        .route("/v1/workspace/{plugin}/export", get(workspace_export_route))
        .route("/v1/mode", get(mode).post(set_mode))
        .route("/v1/releases", post(release))
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/pause", post(pause))
        .route("/v1/alerts/resume", post(resume))
        .with_state(host)
}

// ------------------------------------------------------------ wire types

/// `airlock audit query`'s filters and limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Plugin name.
    pub plugin: Option<String>,
    /// Tool name.
    pub tool: Option<String>,
    /// Principal.
    pub principal: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Call id.
    pub call_id: Option<String>,
    /// Approval id. Left out of the request when not asked for, so a
    /// server that predates it still answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// The tool's risk class when recorded. Left out of the request when
    /// not asked for, so a server that predates it still answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// Event.
    pub event: Option<Event>,
    /// At or after, ms since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Before, ms since the Unix epoch.
    pub until_ms: Option<u64>,
    /// At most this many (the newest).
    pub limit: usize,
}

impl AuditQuery {
    /// The audit log's filter.
    pub fn filter(&self) -> Filter {
        Filter {
            plugin: self.plugin.clone(),
            tool: self.tool.clone(),
            principal: self.principal.clone(),
            trace_id: self.trace_id.clone(),
            call_id: self.call_id.clone(),
            approval_id: self.approval_id.clone(),
            outcome: self.outcome.clone(),
            risk: self.risk.clone(),
            event: self.event,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
        }
    }
}

/// A verification's result, as the CLI prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every record and checkpoint holds.
    Passed {
        /// The report as JSON.
        report: Value,
        /// Records checked.
        records: u64,
        /// Checkpoints checked.
        checkpoints: usize,
        /// The last record's hash.
        head_hash: Option<String>,
        /// Records no checkpoint covers yet.
        unsigned_tail: u64,
    },
    /// The first bad record.
    Failed {
        /// The failure as JSON.
        failure: Value,
        /// Its sequence number.
        seq: u64,
        /// What is wrong, in words.
        problem: String,
    },
}

impl From<&std::result::Result<VerifyReport, VerifyFailure>> for Verdict {
    fn from(outcome: &std::result::Result<VerifyReport, VerifyFailure>) -> Verdict {
        match outcome {
            Ok(r) => Verdict::Passed {
                report: serde_json::to_value(r).unwrap_or(Value::Null),
                records: r.records,
                checkpoints: r.checkpoints,
                head_hash: r.head_hash.clone(),
                unsigned_tail: r.unsigned_tail,
            },
            Err(f) => Verdict::Failed {
                failure: serde_json::to_value(f).unwrap_or(Value::Null),
                seq: f.seq,
                problem: f.problem.to_string(),
            },
        }
    }
}

/// `POST /v1/audit/verify`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// The audit directory.
    pub log: String,
    /// The key checkpoints were checked against, hex.
    pub public_key: String,
    /// The result.
    pub verdict: Verdict,
}

/// `POST /v1/audit/verify`'s body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Checkpoints kept away from the host.
    #[serde(default)]
    pub trusted: Vec<Checkpoint>,
}

/// `POST /v1/approvals/{id}`'s body: the same as deciding on the data
/// directory asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// Approve (or reject).
    pub approve: bool,
    /// Approve although argument values cannot be shown whole
    /// ([`airlock_host::unseen_arguments`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unseen: bool,
    /// The approver's configured name.
    pub approver: String,
    /// The approver's token.
    pub token: String,
    /// Why (required to reject).
    pub reason: Option<String>,
}

/// `POST /v1/mode`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    /// Read-only (or normal).
    pub read_only: bool,
    /// Who.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
}

/// `POST /v1/workspace/{plugin}/value`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRequest {
    /// The key, or a blob ref (`sha256:…`).
    pub key: String,
    /// Whose key (none: plugin-wide).
    pub principal: Option<String>,
    /// The session within the principal.
    pub session: Option<String>,
}

impl ValueRequest {
    /// Whose key this names: plugin-wide without a principal; the
    /// principal's own with no session; else that session's.
    pub fn owner(&self) -> KeyOwner {
        match (&self.principal, &self.session) {
            (None, _) => KeyOwner::Plugin,
            (Some(p), None) => KeyOwner::Principal(p.clone()),
            (Some(p), Some(s)) => KeyScope::Session.owner(p, Some(s)),
        }
    }

    /// The value, read from `store`.
    ///
    /// # Errors
    /// A bad key or ref; a store failure.
    pub fn read(
        &self,
        store: &Workspace,
        plugin: &str,
    ) -> std::result::Result<Option<Vec<u8>>, WorkspaceError> {
        if self.key.starts_with("sha256:") {
            store.get_blob(plugin, &self.key)
        } else {
            store.get(plugin, &self.owner(), &self.key)
        }
    }

    /// What the error says when there is no such value.
    pub fn missing(&self, plugin: &str) -> String {
        format!("plugin `{plugin}` has no {:?} ({})", self.key, self.owner())
    }
}

/// One plugin with stored data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginUsage {
    /// The plugin.
    pub plugin: String,
    /// What it uses.
    pub usage: Usage,
}

/// One key, as `airlock workspace ls PLUGIN` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Whose key it is, as JSON (`{"scope": ...}`).
    pub owner: Value,
    /// Whose key it is, in words.
    pub owner_text: String,
    /// The key.
    pub key: String,
    /// Size of its value in bytes.
    pub size: usize,
}

/// One blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobView {
    /// Its ref (`sha256:…`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its size in bytes.
    pub size: usize,
}

/// What one plugin keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceListing {
    /// The plugin.
    pub plugin: String,
    /// What it uses.
    pub usage: Usage,
    /// Its keys.
    pub keys: Vec<KeyView>,
    /// Its blobs.
    pub blobs: Vec<BlobView>,
}

// --------------------------------------- reads shared with the CLI's own

/// Plugins with stored data (what `GET /v1/workspace` answers).
///
/// # Errors
/// The store's.
pub fn workspace_plugins(store: &Workspace) -> airlock_host::Result<Vec<PluginUsage>> {
    Ok(store
        .plugins()?
        .into_iter()
        .map(|(plugin, usage)| PluginUsage { plugin, usage })
        .collect())
}

/// What `plugin` keeps (what `GET /v1/workspace/{plugin}` answers).
///
/// # Errors
/// The store's.
pub fn workspace_listing(
    store: &Workspace,
    plugin: &str,
) -> airlock_host::Result<WorkspaceListing> {
    let keys = store
        .entries(plugin)?
        .into_iter()
        .map(|e| KeyView {
            owner: serde_json::to_value(&e.owner).unwrap_or(Value::Null),
            owner_text: e.owner.to_string(),
            key: e.key,
            size: e.size,
        })
        .collect();
    let blobs = store
        .blobs(plugin)?
        .into_iter()
        .map(|(reference, size)| BlobView { reference, size })
        .collect();
    Ok(WorkspaceListing {
        plugin: plugin.to_owned(),
        usage: store.usage(plugin)?,
        keys,
        blobs,
    })
}

/// Everything `plugin` keeps as JSON lines: keys of every owner, then
/// blobs.
///
/// # Errors
/// What the store says, in words.
pub fn workspace_export(store: &Workspace, plugin: &str) -> std::result::Result<String, String> {
    let mut text = Vec::new();
    workspace_export_to(store, plugin, &mut text)?;
    String::from_utf8(text).map_err(|e| e.to_string())
}

/// [`workspace_export`] written to `out` line by line: a workspace may hold
/// a gigabyte, which is not built in memory first.
///
/// # Errors
/// What the store or `out` says, in words.
pub fn workspace_export_to(
    store: &Workspace,
    plugin: &str,
    out: &mut dyn std::io::Write,
) -> std::result::Result<(), String> {
    let mut line = |value: Value| {
        serde_json::to_writer(&mut *out, &value)
            .map_err(|e| e.to_string())
            .and_then(|()| out.write_all(b"\n").map_err(|e| e.to_string()))
    };
    // Values one at a time: the listing holds keys and sizes only. A key
    // deleted since it was listed is left out (as if listed later). Read
    // from the backend as stored, without the checks a plugin's key
    // passes: what is there is exported, as the listing shows it.
    for e in store.entries(plugin).map_err(|e| e.to_string())? {
        let Some(value) = store.store().get(plugin, &e.owner, &e.key).map_err(|err| {
            let key = airlock_host::audit_log::text::prefix(&e.key, 80);
            format!("reading key {key:?} of {}: {err}", e.owner)
        })?
        else {
            continue;
        };
        let mut entry = json!({"owner": e.owner, "key": e.key});
        match String::from_utf8(value) {
            Ok(s) => entry["value"] = json!(s),
            Err(e) => entry["value_hex"] = json!(hex::encode(e.into_bytes())),
        }
        line(entry)?;
    }
    for (reference, _) in store.blobs(plugin).map_err(|e| e.to_string())? {
        let data = store
            .get_blob(plugin, &reference)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        line(json!({"blob": reference, "data_hex": hex::encode(data)}))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- handlers

/// An error answer: its status and message.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        plain(self.0, &self.1)
    }
}

type Answer = std::result::Result<Response, Refusal>;

/// Run `work` (store reads and writes block) off the async threads.
async fn blocking(work: impl FnOnce() -> Answer + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(response)) => response,
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => internal(format!("the request failed: {e}")).into_response(),
    }
}

fn internal(error: impl std::fmt::Display) -> Refusal {
    Refusal(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

async fn audit_head(State(host): State<Arc<Host>>) -> Response {
    blocking(move || {
        let (seq, hash) = host.audit().head().map_err(internal)?;
        Ok(Json(json!({"head": seq, "head_hash": hash})).into_response())
    })
    .await
}

async fn audit_query(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    blocking(move || {
        let query: AuditQuery = parse(&body)?;
        // 0 answers nothing (an earlier `airlock audit tail -n 0` asks it).
        if query.limit > MAX_QUERY {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!(
                    "limit {} is out of range: at most {MAX_QUERY} records a query (an export has them all)",
                    query.limit
                ),
            ));
        }
        let records = host
            .audit()
            .query(&query.filter(), query.limit)
            .map_err(internal)?;
        Ok(Json(json!({"records": records})).into_response())
    })
    .await
}

async fn audit_record(State(host): State<Arc<Host>>, UrlPath(seq): UrlPath<u64>) -> Response {
    blocking(move || {
        let record = host.audit().get(seq).map_err(internal)?;
        let (head, _) = host.audit().head().map_err(internal)?;
        Ok(Json(json!({"record": record, "head": head})).into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<usize>,
}

async fn audit_after(
    State(host): State<Arc<Host>>,
    UrlPath(seq): UrlPath<u64>,
    Query(page): Query<Page>,
) -> Response {
    let limit = page.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    blocking(move || {
        let records = host
            .audit()
            .records(seq.saturating_add(1))
            .take(limit)
            .collect::<std::result::Result<Vec<Record>, _>>()
            .map_err(internal)?;
        Ok(Json(json!({"records": records})).into_response())
    })
    .await
}

async fn audit_verify(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    blocking(move || {
        let request: VerifyRequest = parse(&body)?;
        let log = host.audit();
        let outcome = log.verify(&request.trusted).map_err(internal)?;
        Ok(Json(VerifyAnswer {
            log: log.path().display().to_string(),
            public_key: hex::encode(log.public_key().as_bytes()),
            verdict: Verdict::from(&outcome),
        })
        .into_response())
    })
    .await
}

async fn audit_export(State(host): State<Arc<Host>>) -> Response {
    let exported = export_streamed(host, "export", |host, path| {
        host.audit().export(path).map_err(internal)
    });
    let (summary, mut response) = match exported.await {
        Ok(done) => done,
        Err(refusal) => return refusal.into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (export_headers::RECORDS, summary.records.to_string()),
        (export_headers::CHECKPOINTS, summary.checkpoints.to_string()),
        (export_headers::PUBLIC_KEY, summary.public_key),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// Run `export` on a blocking thread to write a file in the (owner-only)
/// data directory, then answer with that file streamed as JSON Lines: it is
/// opened, then unlinked, so nothing is left behind whatever happens to the
/// stream (or to the export), and it is never held in memory whatever its
/// size. `kind` names the file while it exists.
async fn export_streamed<T: Send + 'static>(
    host: Arc<Host>,
    kind: &'static str,
    export: impl FnOnce(&Host, &Path) -> std::result::Result<T, Refusal> + Send + 'static,
) -> std::result::Result<(T, Response), Refusal> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let exported = tokio::task::spawn_blocking(move || {
        let Some(dir) = host.config().data_dir.clone() else {
            return Err(internal("the server has no data directory"));
        };
        let path = dir.join(format!(
            ".control-{kind}-{}-{}.jsonl",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let opened = export(&host, &path)
            .and_then(|summary| Ok((summary, fs::File::open(&path).map_err(internal)?)));
        let _ = fs::remove_file(&path);
        opened
    })
    .await;
    let (summary, file) = match exported {
        Ok(done) => done?,
        Err(e) => return Err(internal(format!("the export failed: {e}"))),
    };
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    Ok((summary, response))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn approvals(State(host): State<Arc<Host>>, Query(query): Query<ListQuery>) -> Response {
    blocking(move || {
        let list = host
            .approvals((!query.all).then_some(ApprovalState::Pending))
            .map_err(internal)?;
        Ok(Json(json!({"approvals": list})).into_response())
    })
    .await
}

async fn approval(State(host): State<Arc<Host>>, UrlPath(id): UrlPath<String>) -> Response {
    blocking(move || match host.approval(&id).map_err(internal)? {
        Some(a) => Ok(Json(json!({"approval": a})).into_response()),
        None => Err(Refusal(StatusCode::NOT_FOUND, format!("no approval {id}"))),
    })
    .await
}

async fn decide(
    State(host): State<Arc<Host>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let request: DecideRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    match host
        .decide(
            &id,
            &request.approver,
            &request.token,
            // (`Verdict` here is an audit verification's.)
            airlock_host::Verdict::from_answers(request.approve, request.unseen),
            request.reason.as_deref(),
        )
        .await
    {
        Ok(approval) => Json(json!({"approval": approval})).into_response(),
        Err(error @ airlock_host::Error::UnseenArguments { .. }) => {
            plain(StatusCode::CONFLICT, &format!("{error} (add --unseen)"))
        }
        Err(error @ airlock_host::Error::DecisionRefused { .. }) => {
            plain(StatusCode::CONFLICT, &error.to_string())
        }
        Err(error) => internal(error).into_response(),
    }
}

async fn workspace_plugins_route(State(host): State<Arc<Host>>) -> Response {
    blocking(move || {
        let plugins = workspace_plugins(host.workspace()).map_err(internal)?;
        Ok(Json(json!({"plugins": plugins})).into_response())
    })
    .await
}

async fn workspace_listing_route(
    State(host): State<Arc<Host>>,
    UrlPath(plugin): UrlPath<String>,
) -> Response {
    blocking(move || {
        let listing = workspace_listing(host.workspace(), &plugin).map_err(internal)?;
        Ok(Json(listing).into_response())
    })
    .await
}

async fn workspace_value_route(
    State(host): State<Arc<Host>>,
    UrlPath(plugin): UrlPath<String>,
    body: Bytes,
) -> Response {
    blocking(move || {
        let request: ValueRequest = parse(&body)?;
        match request.read(host.workspace(), &plugin) {
            Ok(Some(value)) => {
                Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
            }
            Ok(None) => Err(Refusal(StatusCode::NOT_FOUND, request.missing(&plugin))),
            Err(error @ WorkspaceError::Unavailable(_)) => Err(internal(error)),
            Err(error) => Err(Refusal(StatusCode::BAD_REQUEST, error.to_string())),
        }
    })
    .await
}

/// Streamed from a file ([`export_streamed`]): built in memory, a large
/// workspace's export passed the client's cap on an answer (and its
/// time) — while the server held the store, so it could not be exported
/// at all.
async fn workspace_export_route(
    State(host): State<Arc<Host>>,
    UrlPath(plugin): UrlPath<String>,
) -> Response {
    let exported = export_streamed(host, "workspace", move |host, path| {
        let written = (|| {
            let mut file = std::io::BufWriter::new(
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| e.to_string())?,
            );
            workspace_export_to(host.workspace(), &plugin, &mut file)?;
            std::io::Write::flush(&mut file).map_err(|e| e.to_string())
        })();
        written.map_err(internal)
    });
    match exported.await {
        Ok(((), response)) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn mode(State(host): State<Arc<Host>>) -> Response {
    blocking(move || {
        let mode: Option<Mode> = host.mode().map_err(internal)?;
        Ok(Json(json!({"mode": mode})).into_response())
    })
    .await
}

async fn set_mode(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    let request: ModeRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    match host
        .set_mode(request.read_only, &request.by, request.reason.as_deref())
        .await
    {
        Ok(mode) => Json(json!({"mode": mode})).into_response(),
        Err(error) => internal(error).into_response(),
    }
}

/// `POST /v1/alerts/pause` and `/v1/alerts/resume`: what, by whom, why.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// `plugin/tool`, or `plugin` for every tool of it.
    pub target: String,
    /// Who (recorded).
    pub by: String,
    /// Why (recorded).
    #[serde(default)]
    pub reason: Option<String>,
    /// Pause even a target this host does not serve (see
    /// [`Host::check_pause_target`]); resuming ignores it. Sent only when
    /// set, so a request without it still reaches a server from before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

async fn alerts(State(host): State<Arc<Host>>) -> Response {
    blocking(move || {
        let pauses = host.pauses().map_err(internal)?;
        Ok(Json(json!({"alerts": host.alerts(), "pauses": pauses})).into_response())
    })
    .await
}

/// A host error as an answer: `400` for a malformed request (`config`),
/// `500` otherwise.
fn host_refusal(error: &airlock_host::Error) -> Refusal {
    match error {
        airlock_host::Error::Config { .. } => Refusal(StatusCode::BAD_REQUEST, error.to_string()),
        other => internal(other),
    }
}

async fn pause(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    let request: PauseRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if !request.force
        && let Err(error) = host.check_pause_target(&request.target).await
    {
        return host_refusal(&error).into_response();
    }
    match host
        .pause(&request.target, &request.by, request.reason.as_deref())
        .await
    {
        Ok(pause) => Json(json!({"pause": pause})).into_response(),
        Err(error) => host_refusal(&error).into_response(),
    }
}

async fn resume(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    let request: PauseRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    match host
        .resume(&request.target, &request.by, request.reason.as_deref())
        .await
    {
        Ok(resumed) => Json(json!({"resumed": resumed})).into_response(),
        Err(error) => host_refusal(&error).into_response(),
    }
}

async fn release(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    let request: crate::releases::ReleaseRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    match crate::releases::run(&host, request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => {
            let mut body = error.to_json();
            body["error"] = body["message"].clone();
            let status = match error.class() {
                airlock_host::ErrorClass::Host => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::CONFLICT,
            };
            (status, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_user_is_admitted() {
        assert!(check_peer(Some(1000), 1000).is_ok());
        let other = check_peer(Some(0), 1000).unwrap_err();
        assert!(other.contains("uid 0"), "{other}");
        assert!(check_peer(Some(1001), 1000).is_err());
        assert!(check_peer(None, 1000).is_err());
    }

    /// A data directory whose path leaves no room for the socket's is
    /// refused naming it and the room there is, not with an error about a
    /// staging path the operator never chose; one that leaves room binds.
    #[tokio::test]
    async fn a_data_directory_too_long_for_a_socket_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().as_os_str().len();
        // `/.c<pid>-<n>/control.sock` is at most 34 bytes here.
        let fits = dir
            .path()
            .join("d".repeat(MAX_SOCKET_PATH_BYTES - base - 35));
        prepare(&fits).unwrap();
        drop(ControlSocket::bind(&fits).unwrap());
        let long = dir
            .path()
            .join("d".repeat(MAX_SOCKET_PATH_BYTES - base - 14));
        prepare(&long).unwrap();
        let Err(refused) = ControlSocket::bind(&long) else {
            panic!("bound");
        };
        let message = refused.to_string();
        assert!(
            message.contains("too long for its control socket"),
            "{message}"
        );
        assert!(!message.contains("/control.sock"), "{message}");
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_replaces_a_stale_one_and_is_removed_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        prepare(&data).unwrap();
        let mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A stale socket: bound, then its listener gone.
        let stale = std::os::unix::net::UnixListener::bind(socket_path(&data)).unwrap();
        drop(stale);
        prepare(&data).unwrap();
        let socket = ControlSocket::bind(&data).unwrap();
        let meta = fs::symlink_metadata(socket.path()).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Nothing left of the staging directory.
        let names: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SOCKET_FILE)]);
        // A live one: a second server is refused.
        assert!(matches!(prepare(&data), Err(Error::ServerRunning { .. })));
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists());
        // Something else in its place is not taken for a socket.
        fs::write(&path, "x").unwrap();
        assert!(matches!(prepare(&data), Err(Error::Control { .. })));
    }

    /// In a data directory others can write, a socket another user
    /// planted is not taken for a running server: the directory is
    /// refused first, saying why.
    #[tokio::test]
    async fn a_data_directory_others_can_write_is_refused_before_its_socket_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        prepare(&data).unwrap();
        let _planted = std::os::unix::net::UnixListener::bind(socket_path(&data)).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
        match prepare(&data) {
            Err(Error::Control { message, .. }) => {
                assert!(message.contains("other users can write"), "{message}");
            }
            other => panic!("not refused for its permissions: {other:?}"),
        }
    }
}
