//! `airlock serve`: every installed tool over MCP, on stdio or HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_host::Host;
use airlock_mcp::control::ControlConfig;
use airlock_mcp::http::HttpConfig;
use airlock_mcp::{McpServer, ServeOptions};
use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::{Calls, Failure, exit, host_config};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Serve Streamable HTTP (at /mcp) instead of stdio, on ADDR (default
    /// from serve.http_addr: 127.0.0.1:7410). Needs [[serve.tokens]] or
    /// [serve.oauth].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
    http: Option<String>,
    /// Allow listening on a non-loopback address (--http or
    /// --approvals-http; also serve.allow_remote).
    #[arg(long)]
    allow_remote: bool,
    /// A reverse proxy on this machine forwards clients to the listener:
    /// trust nothing for being loopback (Host, Origin, /metrics peer) and
    /// set the console cookie Secure. Needs serve.allowed_hosts; also
    /// serve.behind_proxy.
    #[arg(long)]
    behind_proxy: bool,
    /// With stdio: also serve the approvers' endpoints (/approvals) over
    /// HTTP on ADDR, so approvers can decide while the server runs.
    #[arg(long, value_name = "ADDR", conflicts_with = "http")]
    approvals_http: Option<SocketAddr>,
    /// Principal stdio calls run as (default: `principal` from the config;
    /// not with --http, where each caller's token names its principal).
    #[arg(long)]
    principal: Option<String>,
}

impl ServeArgs {
    pub(crate) fn principal(&self) -> Option<String> {
        self.principal.clone()
    }
}

pub(crate) async fn run(settings: &Settings, args: ServeArgs) -> Result<u8, Failure> {
    let serve = &settings.serve;
    let http = match args.http.as_deref() {
        None => None,
        Some("") => Some(serve.http_addr),
        Some(addr) => Some(
            addr.parse::<SocketAddr>()
                .with_context(|| format!("--http {addr}: not an address like 127.0.0.1:7410"))
                .map_err(Failure::usage)?,
        ),
    };
    for (given, flag) in [
        (args.behind_proxy, "--behind-proxy"),
        (args.allow_remote, "--allow-remote"),
    ] {
        if given && http.is_none() && args.approvals_http.is_none() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{flag} is about an HTTP listener: give it with --http or --approvals-http"
            )));
        }
    }
    if args.principal.is_some() && http.is_some() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--principal names who stdio calls run as; over --http each caller is the principal its token or OAuth identity names (serve.tokens, serve.oauth)"
        )));
    }
    let http_config = http.map(|addr| {
        let mut config = HttpConfig::new(addr, serve.tokens.clone());
        config.allow_remote = serve.allow_remote || args.allow_remote;
        config.behind_proxy = serve.behind_proxy || args.behind_proxy;
        config.allowed_origins = serve.allowed_origins.clone();
        config.allowed_hosts = serve.allowed_hosts.clone();
        config.max_request_bytes = serve.max_request_bytes;
        config.max_connections = serve.max_connections;
        config.max_connections_per_peer = serve.max_connections_per_peer;
        config.header_read_timeout = Duration::from_millis(serve.header_read_timeout_ms);
        config.body_read_timeout = Duration::from_millis(serve.body_read_timeout_ms);
        config.write_timeout = Duration::from_millis(serve.write_timeout_ms);
        config.metrics_token_sha256 = serve.metrics_token_sha256.clone();
        config.oauth = serve.oauth.clone();
        config
    });
    if !settings.plugins_dir.is_dir() {
        return Err(anyhow::anyhow!(
            "plugins directory {} does not exist (set --plugins-dir, AIRLOCK_PLUGINS_DIR or plugins_dir in --config)",
            settings.plugins_dir.display()
        )
        .into());
    }
    // One server per data directory: refused at once when another answers
    // on the control socket (rather than after the wait for its databases).
    airlock_mcp::control::prepare(&settings.data_dir)?;
    let host = Arc::new(Host::new(host_config(settings, Calls::Recorded))?);
    // The host holds the databases now: the operator's commands reach them
    // through this server.
    let control = airlock_mcp::control::ControlSocket::bind(&settings.data_dir)?;
    let options = ServeOptions::default()
        .max_concurrent_calls(serve.max_concurrent_calls)
        .max_calls_per_principal(serve.max_calls_per_principal)
        .approval_wait(
            (serve.approval_wait_s > 0).then(|| Duration::from_secs(serve.approval_wait_s)),
        );
    let server = McpServer::new(host, options);
    let report = server
        .reload(&settings.plugins_dir)
        .await
        .context("cannot load the plugins directory")?;
    for (dir, error) in &report.failed {
        // The error quotes the plugin's manifest: escaped.
        eprintln!(
            "{}",
            crate::terminal::escape_lines(&format!(
                "warning: plugin in {} not loaded: {error}",
                dir.display()
            ))
        );
    }
    // Rollouts changed by any host (or `airlock rollout`) reach the tool
    // list within a second, whatever the plugins directory's watch.
    let _rollouts = server.watch_rollouts(airlock_host::ROLLOUT_REFRESH);
    // Alerts resolve when calls stop, and approval backlogs are read,
    // every second.
    let _alerts = server.watch_alerts(Duration::from_secs(1));
    let _watch = (serve.reload_interval_ms > 0).then(|| {
        server.watch_plugins_dir(
            settings.plugins_dir.clone(),
            Duration::from_millis(serve.reload_interval_ms),
        )
    });
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            stop_requested().await;
            shutdown.cancel();
        }
    });
    let tools = server.catalog().entries().count();
    eprintln!(
        "airlock: control socket for the operator's commands at {}",
        control.path().display()
    );
    let control = tokio::spawn({
        let host = Arc::clone(server.host());
        let config = control_config(serve);
        let shutdown = shutdown.clone();
        async move { airlock_mcp::control::serve(control, host, &config, shutdown).await }
    });
    match http_config {
        Some(config) => {
            let router = airlock_mcp::http::router(&server, &config, shutdown.clone())?;
            let listener = airlock_mcp::http::bind(config.addr).await?;
            let local = listener
                .local_addr()
                .context("cannot read the bound address")?;
            // Logs and this line go to stderr; tests read the port from it.
            eprintln!("airlock: serving {tools} tools over MCP at http://{local}/mcp");
            airlock_mcp::http::serve(listener, router, &config, shutdown.clone()).await?;
        }
        None => {
            let mut approvals = None;
            if let Some(addr) = args.approvals_http {
                let mut config = HttpConfig::new(addr, Vec::new());
                config.allow_remote = serve.allow_remote || args.allow_remote;
                config.behind_proxy = serve.behind_proxy || args.behind_proxy;
                config.allowed_origins = serve.allowed_origins.clone();
                config.allowed_hosts = serve.allowed_hosts.clone();
                config.max_connections = serve.max_connections;
                config.max_connections_per_peer = serve.max_connections_per_peer;
                config.header_read_timeout = Duration::from_millis(serve.header_read_timeout_ms);
                config.body_read_timeout = Duration::from_millis(serve.body_read_timeout_ms);
                config.write_timeout = Duration::from_millis(serve.write_timeout_ms);
                config.max_request_bytes = serve.max_request_bytes;
                let router = airlock_mcp::http::approvals_router(&server, &config)
                    .with_context(|| format!("--approvals-http {addr}"))?;
                let listener = airlock_mcp::http::bind(addr).await?;
                let local = listener
                    .local_addr()
                    .context("cannot read the bound address")?;
                eprintln!("airlock: approvals at http://{local}/approvals");
                let shutdown = shutdown.clone();
                approvals = Some(tokio::spawn(async move {
                    airlock_mcp::http::serve(listener, router, &config, shutdown).await
                }));
            }
            let principal = args.principal.as_deref().unwrap_or(&settings.principal);
            eprintln!("airlock: serving {tools} tools over MCP on stdio as `{principal}`");
            // stdout is the protocol stream: nothing else writes to it.
            // Asked to stop, the server still serves while the calls
            // running finish (their answers go out), then stops.
            tokio::select! {
                served = server.serve_stdio(principal) => served?,
                () = async {
                    shutdown.cancelled().await;
                    server.finish_calls(airlock_mcp::http::CALL_GRACE).await;
                } => {}
            }
            // An approver's request in progress finishes (within the
            // listener's grace) before alerts and the audit log close.
            if let Some(approvals) = approvals {
                shutdown.cancel();
                let _ = approvals.await;
            }
        }
    }
    // Stop the control socket (and remove its file) before the host closes.
    shutdown.cancel();
    let _ = control.await;
    // Alerts still queued or retrying get a grace period, then are
    // recorded undelivered: before the audit log closes.
    server.host().close_alerts(crate::ALERT_GRACE).await;
    // Off the runtime's workers: closing waits for calls still running
    // to write the intents they hold, and those calls need the workers.
    let host = Arc::clone(server.host());
    let _ = tokio::task::spawn_blocking(move || crate::close_audit(&host)).await;
    // Spans still queued go out now (bounded by the export timeout).
    let host = Arc::clone(server.host());
    let _ = tokio::task::spawn_blocking(move || host.telemetry().flush_spans()).await;
    Ok(exit::OK)
}

/// The control socket's bounds: the HTTP listeners'.
fn control_config(serve: &crate::config::ServeConfig) -> ControlConfig {
    let mut config = ControlConfig::default();
    config.max_request_bytes = serve.max_request_bytes;
    config.header_read_timeout = Duration::from_millis(serve.header_read_timeout_ms);
    config.body_read_timeout = Duration::from_millis(serve.body_read_timeout_ms);
    config
}

/// Wait for Ctrl-C or, on Unix, SIGTERM (what service managers send): the
/// server then stops taking calls and the host closes its databases (the
/// audit log flushes and signs a checkpoint).
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
