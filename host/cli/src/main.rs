//! `airlock`: list, inspect and call sandboxed WebAssembly tools.

// First: its `outln!` and `out!` are used by every module below.
#[macro_use]
mod stdout;
mod alerts;
mod approvals;
mod audit;
mod config;
mod control;
mod demo;
mod eval;
mod inspect;
mod outfile;
mod package;
mod project;
mod readiness;
mod releases;
mod remote;
mod serve;
mod terminal;
mod workspace;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_host::{CallRequest, Error, ErrorClass, Host, HostConfig, LoadReport};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::config::{Overrides, Settings};

/// Exit codes. Documented in the README; scripts rely on them.
pub(crate) mod exit {
    /// Success.
    pub(crate) const OK: u8 = 0;
    /// Host failure: bad configuration, a plugin that does not load, I/O.
    pub(crate) const HOST: u8 = 1;
    /// Usage error: bad flags or arguments to airlock itself.
    pub(crate) const USAGE: u8 = 2;
    /// The call was refused before the tool ran (unknown tool, invalid
    /// arguments, ...).
    pub(crate) const REFUSED: u8 = 3;
    /// The tool ran and reported an error.
    pub(crate) const TOOL_ERROR: u8 = 4;
    /// The tool crashed or hit a limit (fuel, deadline, memory, output).
    pub(crate) const TRAP: u8 = 5;
    /// The plugin asks for, or imports, a capability it may not have.
    pub(crate) const CAPABILITY_DENIED: u8 = 6;
    /// `audit verify` found a bad record.
    pub(crate) const VERIFY_FAILED: u8 = 7;
    /// The call waits for a human approval (it has not run).
    pub(crate) const PENDING: u8 = 8;
    /// A plugin's signature is missing where required, invalid, or by an
    /// untrusted key.
    pub(crate) const UNTRUSTED: u8 = 9;
    /// `eval`: a case failed; `replay`: a replayed call gave another
    /// outcome than the recorded one.
    pub(crate) const EVAL_FAILED: u8 = 10;
    /// `readiness`: a required check failed.
    pub(crate) const NOT_READY: u8 = 11;
}

/// Airlock: a sandboxed host for AI-agent tools compiled to WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Host configuration file (TOML). Without it the built-in defaults apply.
    #[arg(long, global = true, env = "AIRLOCK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of installed plugins (one subdirectory per plugin).
    #[arg(long, global = true, env = "AIRLOCK_PLUGINS_DIR", value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// Directory for host state (audit log, compiled-component cache).
    #[arg(long, global = true, env = "AIRLOCK_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Directory for compiled components (default: <data-dir>/cache).
    #[arg(long, global = true, env = "AIRLOCK_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Installed plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Write a plugin (Rust or Python) outside this repository: `new`
    /// creates a project, `build` compiles it and stamps its digest,
    /// `check` loads it the way a host does.
    #[command(subcommand)]
    Plugin(project::PluginCommand),
    /// Tools of the installed plugins.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Call a tool: `airlock call text/slugify --args '{"text":"Hi there"}'`.
    Call(CallArgs),
    /// Security review of one plugin: imports and exports against declared
    /// and effective grants, tools, limits with their sources.
    Inspect(InspectArgs),
    /// Walk through the call pipeline on the installed example plugins.
    Demo,
    /// The audit log: every call, refusal and outcome, hash-chained and
    /// signed.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// What plugins keep in their workspace (keys and blobs).
    #[command(subcommand)]
    Workspace(workspace::WorkspaceCommand),
    /// Approval requests: list, show, approve, reject.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Read-only mode (human takeover): refuse every tool that is not `read`.
    #[command(subcommand)]
    Mode(approvals::ModeCommand),
    /// Run a plugin's scenario cases (`cases.jsonl`) in the sandbox with a
    /// scratch workspace: pass/fail with diffs, fuel and latency; with
    /// --baseline, next to another version.
    Eval(eval::EvalArgs),
    /// Re-run recorded `read` calls of a plugin (those whose complete
    /// arguments were kept: `audit.replayable`) against a version or a
    /// plugin directory, and compare the outputs.
    Replay(eval::ReplayArgs),
    /// Alerts firing and resolved, and paused tools; `pause` and `resume`
    /// a tool or plugin (human takeover, recorded).
    Alerts(alerts::AlertsArgs),
    /// The pre-launch checklist per plugin and tool: limits, rate limits,
    /// approvals, idempotency, redaction, eval cases, rollback target,
    /// durable audit, alert rules, approver, read-only takeover. Exits 11
    /// when a required check fails.
    Readiness(readiness::ReadinessArgs),
    /// Serve every installed tool over MCP: stdio by default, Streamable
    /// HTTP with --http. Plugins added or removed while serving are picked
    /// up.
    Serve(serve::ServeArgs),
    /// Send a share of a plugin's callers to an installed version
    /// (`airlock rollout PLUGIN VERSION --percent N`): a sticky canary, or
    /// at 100 the serving version; `status` compares the versions,
    /// `promote` makes the canary serve.
    Rollout(releases::RolloutArgs),
    /// Send all of a plugin's traffic back in one step: stop its canary,
    /// or serve the previous version again.
    Rollback(releases::RollbackArgs),
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List installed plugins, including those that fail to load.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Install a plugin version (a directory or an archive) into the
    /// host's plugin store: checked as a load checks it, content-addressed,
    /// immutable, side by side with other versions. It serves nothing until
    /// `airlock rollout` sends traffic to it.
    Install(releases::InstallArgs),
    #[command(flatten)]
    Package(package::PackageCommand),
}

#[derive(Debug, Subcommand)]
enum ToolsCommand {
    /// List every exposed tool with its risk class (and, with --json, its
    /// input schema).
    List {
        /// Print JSON (including input and output schemas).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct CallArgs {
    /// The tool, as `plugin/tool`.
    #[arg(value_name = "PLUGIN/TOOL")]
    tool: String,
    /// Arguments as a JSON object.
    #[arg(long, value_name = "JSON", conflicts_with = "args_file")]
    args: Option<String>,
    /// Read the arguments from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    args_file: Option<PathBuf>,
    /// Principal to run the call as (default from configuration).
    #[arg(long)]
    principal: Option<String>,
    /// Trace id to correlate this call with (default: the call id).
    #[arg(long)]
    trace_id: Option<String>,
    /// Session to scope the plugin's workspace keys to.
    #[arg(long)]
    session: Option<String>,
    /// Idempotency key: a repeat with the same key replays the first outcome.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Resume a call that waited for approval.
    #[arg(long, value_name = "ID")]
    approval_id: Option<String>,
    /// Why you make the call (shown to approvers).
    #[arg(long)]
    reason: Option<String>,
    /// Wait up to this many seconds for an approval decision.
    #[arg(long, value_name = "SECONDS")]
    wait_approval: Option<u64>,
    /// Print a JSON object (result or error) instead of human output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// A plugin name in the plugins directory, a path to a plugin
    /// directory, or a plugin archive (`.tar.gz`, from `airlock plugins
    /// pack`: unpacked with every entry checked, as an install does).
    plugin: String,
    /// Print JSON instead of the human report.
    #[arg(long)]
    json: bool,
}

/// An error with the exit code it should produce.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn usage(error: anyhow::Error) -> Failure {
        Failure {
            code: exit::USAGE,
            error,
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            code: exit_code(error.class()),
            error: error.into(),
        }
    }
}

impl From<airlock_host::LoadError> for Failure {
    fn from(error: airlock_host::LoadError) -> Failure {
        Error::from(error).into()
    }
}

impl From<airlock_host::CallError> for Failure {
    fn from(error: airlock_host::CallError) -> Failure {
        Error::from(error).into()
    }
}

impl From<airlock_host::StoreError> for Failure {
    fn from(error: airlock_host::StoreError) -> Failure {
        Error::from(error).into()
    }
}

impl From<airlock_host::audit_log::Error> for Failure {
    fn from(error: airlock_host::audit_log::Error) -> Failure {
        Failure {
            code: exit::HOST,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure {
            code: exit::HOST,
            error,
        }
    }
}

impl From<airlock_mcp::Error> for Failure {
    fn from(error: airlock_mcp::Error) -> Failure {
        Failure {
            code: exit::HOST,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::HOST);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            // Errors quote what they were given (a manifest's component
            // path, a file name, an argument): escaped, so that text cannot
            // drive the terminal.
            eprintln!(
                "error: {}",
                terminal::escape_lines(&format!("{:#}", failure.error))
            );
            failure.code
        }
    };
    // A reader that went away is no failure; a disk that filled is.
    match stdout::finish() {
        Some(e) if code == exit::OK => {
            eprintln!("error: cannot write to standard output: {e}");
            ExitCode::from(exit::HOST)
        }
        _ => ExitCode::from(code),
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Logs go to stderr: stdout carries results only.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let principal = match &cli.command {
        Command::Call(args) => args.principal.clone(),
        Command::Serve(args) => args.principal(),
        _ => None,
    };
    let settings = Settings::load(Overrides {
        config: cli.global.config,
        plugins_dir: cli.global.plugins_dir,
        data_dir: cli.global.data_dir,
        cache_dir: cli.global.cache_dir,
        principal,
        store_url: std::env::var("AIRLOCK_STORE_URL")
            .ok()
            .filter(|url| !url.is_empty()),
    })?;
    match cli.command {
        Command::Plugins(PluginsCommand::List { json }) => plugins_list(&settings, json).await,
        Command::Plugins(PluginsCommand::Install(args)) => releases::install(&settings, args).await,
        Command::Rollout(args) => releases::rollout(&settings, args).await,
        Command::Rollback(args) => releases::rollback(&settings, args).await,
        Command::Plugins(PluginsCommand::Package(command)) => {
            package::run(&settings, command).await
        }
        Command::Plugin(command) => project::run(&settings, command).await,
        Command::Tools(ToolsCommand::List { json }) => tools_list(&settings, json).await,
        Command::Call(args) => call(&settings, args).await,
        Command::Inspect(args) => inspect::run(&settings, args).await,
        Command::Demo => demo::run(&settings).await,
        Command::Audit(command) => audit::run(&settings, command).await,
        Command::Workspace(command) => workspace::run(&settings, command).await,
        Command::Approvals(command) => approvals::run(&settings, command).await,
        Command::Mode(command) => approvals::mode(&settings, command).await,
        Command::Alerts(args) => alerts::run(&settings, args).await,
        Command::Readiness(args) => readiness::run(&settings, args).await,
        Command::Serve(args) => serve::run(&settings, args).await,
        Command::Eval(args) => eval::eval(&settings, args).await,
        Command::Replay(args) => eval::replay(&settings, args).await,
    }
}

/// Whether a host records its calls in the data directory's audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Calls {
    /// It makes calls: record them durably.
    Recorded,
    /// It only lists or inspects: a temporary log, so a running server's
    /// hold on the audit database does not get in the way.
    None,
}

/// A host with every plugin in the plugins directory loaded.
pub(crate) async fn load_host(
    settings: &Settings,
    calls: Calls,
) -> anyhow::Result<(Host, LoadReport)> {
    let host = Host::new(host_config(settings, calls))?;
    if !settings.plugins_dir.is_dir() {
        anyhow::bail!(
            "plugins directory {} does not exist (set --plugins-dir, AIRLOCK_PLUGINS_DIR or plugins_dir in --config)",
            settings.plugins_dir.display()
        );
    }
    let report = host
        .load_plugins_dir(&settings.plugins_dir)
        .await
        .with_context(|| {
            format!(
                "cannot load plugins from {}",
                settings.plugins_dir.display()
            )
        })?;
    Ok((host, report))
}

pub(crate) fn host_config(settings: &Settings, calls: Calls) -> HostConfig {
    let mut config = HostConfig::default()
        .plugins_dir(&settings.plugins_dir)
        .cache_dir(&settings.cache_dir)
        .max_argument_bytes(settings.max_argument_bytes)
        .max_instances(settings.max_instances)
        .zero_stacks(settings.zero_stacks)
        .policy(settings.policy.clone())
        .audit(settings.audit.clone())
        .alerts(settings.alerts.clone())
        .telemetry(settings.telemetry.clone());
    if let Some(share) = settings.max_instances_per_plugin {
        config = config.max_instances_per_plugin(share);
    }
    match calls {
        Calls::Recorded => config
            .data_dir(&settings.data_dir)
            .store(settings.store.store.clone())
            .origin(settings.store.origin.clone()),
        Calls::None => config,
    }
}

fn warn_failures(report: &LoadReport) {
    for failure in &report.failed {
        // The error may carry the guest's own text (its stderr when it
        // trapped in `list`): escaped, as every guest text printed.
        eprintln!(
            "warning: plugin in {} not loaded: {}",
            terminal::escape(&failure.dir.display().to_string()),
            terminal::escape_lines(&failure.error.to_string())
        );
    }
}

/// The installed versions and which of them serve (a rollout's serving
/// version takes over from the plugins directory's plugin of that name).
async fn print_installed(settings: &Settings) {
    let answer = match releases::installed(settings).await {
        Ok(answer) => answer,
        Err(failure) => {
            eprintln!(
                "warning: installed versions cannot be read: {}",
                terminal::escape_lines(&format!("{:#}", failure.error))
            );
            return;
        }
    };
    for unreadable in answer["unreadable"].as_array().into_iter().flatten() {
        eprintln!(
            "warning: the rollout record of {} cannot be read, so its calls are refused: {}",
            terminal::escape(unreadable["plugin"].as_str().unwrap_or("?")),
            terminal::escape(unreadable["error"].as_str().unwrap_or("?"))
        );
    }
    if let Some(why) = answer["partial"].as_str() {
        eprintln!(
            "warning: the rollouts could not be listed at once ({}): read one by one, for each plugin with a record",
            terminal::escape(why)
        );
    }
    for unreadable in answer["unreadable_versions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        eprintln!(
            "warning: the record of {} {} cannot be read: {}",
            terminal::escape(unreadable["plugin"].as_str().unwrap_or("?")),
            terminal::escape(unreadable["version"].as_str().unwrap_or("?")),
            terminal::escape(unreadable["error"].as_str().unwrap_or("?"))
        );
    }
    if let Some(why) = answer["versions_partial"].as_str() {
        eprintln!(
            "warning: the installed versions could not be listed at once ({}): read one by one",
            terminal::escape(why)
        );
    }
    let versions = answer["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        return;
    }
    let rollouts = answer["rollouts"].as_array().cloned().unwrap_or_default();
    outln!();
    outln!("installed versions:");
    for v in &versions {
        let plugin = v["plugin"].as_str().unwrap_or("?");
        let version = v["version"].as_str().unwrap_or("?");
        let rollout = rollouts.iter().find(|r| r["plugin"] == v["plugin"]);
        let role = match rollout {
            Some(r) if r["serving"] == v["version"] => "serving".to_owned(),
            Some(r) if r["canary"]["version"] == v["version"] => {
                format!("canary {}%", r["canary"]["percent"])
            }
            Some(r) if r["previous"] == v["version"] => "previous".to_owned(),
            _ => "-".to_owned(),
        };
        // From the record as stored: shown only if it is a digest.
        let digest = v["component_digest"]
            .as_str()
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or("-");
        outln!(
            "{:<16} {:<10} sha256:{}  {:<12} {}",
            terminal::escape(plugin),
            terminal::escape(version),
            digest.get(..12).unwrap_or(digest),
            role,
            v["signer"]
                .as_str()
                .map(|s| format!("signed by {}", terminal::escape(s)))
                .unwrap_or_default()
        );
    }
}

async fn plugins_list(settings: &Settings, json: bool) -> Result<u8, Failure> {
    let (host, report) = load_host(settings, Calls::None).await?;
    if json {
        let loaded: Vec<_> = host.plugins().iter().map(|p| p.info()).collect();
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|f| json!({"dir": f.dir.display().to_string(), "error": {"kind": f.error.kind(), "message": f.error.to_string()}}))
            .collect();
        let installed = match releases::installed(settings).await {
            Ok(answer) => answer,
            Err(failure) => json!({"error": format!("{:#}", failure.error)}),
        };
        print_json(&json!({"plugins": loaded, "failed": failed, "installed": installed}));
    } else {
        if host.plugins().is_empty() && report.failed.is_empty() {
            outln!("no plugins in {}", settings.plugins_dir.display());
        }
        for plugin in host.plugins() {
            let tools: Vec<_> = plugin.tools().map(|t| t.name()).collect();
            outln!(
                "{:<16} {:<10} sha256:{}  cache:{:<8} tools: {}",
                plugin.name(),
                plugin.version(),
                &plugin.digest()[..12],
                format!("{:?}", plugin.cache_status()).to_lowercase(),
                tools.join(", ")
            );
        }
        for failure in &report.failed {
            outln!(
                "{:<16} FAILED     {}",
                terminal::escape(&failure.dir.display().to_string()),
                terminal::escape_lines(&failure.error.to_string())
            );
        }
        print_installed(settings).await;
    }
    Ok(if report.failed.is_empty() {
        exit::OK
    } else {
        exit::HOST
    })
}

async fn tools_list(settings: &Settings, json: bool) -> Result<u8, Failure> {
    let (host, report) = load_host(settings, Calls::None).await?;
    warn_failures(&report);
    if json {
        let tools: Vec<_> = host.tools().iter().map(|t| t.info()).collect();
        print_json(&json!({"tools": tools}));
    } else {
        for tool in host.tools() {
            outln!(
                "{:<28} {:<12} {}",
                tool.id(),
                tool.risk().as_str(),
                terminal::escape(tool.description())
            );
        }
    }
    Ok(exit::OK)
}

/// The call's arguments: `--args`, `--args-file` (`-` for stdin) or `{}`.
/// A file or stdin is read up to `max_bytes` and no further: a larger
/// input (or an endless one, `/dev/zero`) is refused before it is held.
fn read_arguments(args: &CallArgs, max_bytes: usize) -> Result<String, Failure> {
    let read = |from: &mut dyn Read, what: &str| -> Result<String, Failure> {
        let mut bytes = Vec::new();
        let limit = u64::try_from(max_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        from.take(limit)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read arguments from {what}"))
            .map_err(Failure::usage)?;
        if bytes.len() > max_bytes {
            return Err(Failure::usage(anyhow::anyhow!(
                "the arguments from {what} are over max_argument_bytes ({max_bytes} bytes); nothing was called"
            )));
        }
        String::from_utf8(bytes)
            .map_err(|e| anyhow::anyhow!("the arguments from {what} are not UTF-8: {e}"))
            .map_err(Failure::usage)
    };
    match (&args.args, &args.args_file) {
        (Some(text), None) => Ok(text.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            read(&mut std::io::stdin().lock(), "stdin")
        }
        (None, Some(path)) => {
            let what = path.display().to_string();
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot read arguments file {what}"))
                .map_err(Failure::usage)?;
            read(&mut file, &what)
        }
        (None, None) => Ok("{}".to_owned()),
        (Some(_), Some(_)) => Err(Failure::usage(anyhow::anyhow!(
            "--args and --args-file are mutually exclusive"
        ))),
    }
}

/// How long a command that ends waits for its alert webhooks still
/// queued or being retried (then records them undelivered).
pub(crate) const ALERT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Before the process exits: alerts raised are delivered (or recorded
/// undelivered), then the audit log closes ([`close_audit`]), then the
/// spans still queued are exported (bounded by the exporter's timeout; left
/// to the exporter's drop, they went with the process, unless its batch
/// timer happened to fire first).
pub(crate) async fn close_host(host: &Host) {
    host.close_alerts(ALERT_GRACE).await;
    close_audit(host);
    // The exporter runs on a thread of its own: this waits for it without
    // needing the runtime.
    tokio::task::block_in_place(|| host.telemetry().flush_spans());
}

/// Before the process exits: put the audit log's queued records into the
/// store and sign a checkpoint over them. Left to the log's drop, that work
/// may run on its writer thread while the process ends under it.
pub(crate) fn close_audit(host: &Host) {
    if let Err(e) = host.audit().close() {
        eprintln!("warning: cannot close the audit log: {e}");
    }
}

async fn call(settings: &Settings, args: CallArgs) -> Result<u8, Failure> {
    let arguments = read_arguments(&args, settings.max_argument_bytes)?;
    let (host, report) = load_host(settings, Calls::Recorded).await?;
    warn_failures(&report);
    let mut request = CallRequest::new(&args.tool, arguments).principal(&settings.principal);
    if let Some(trace) = &args.trace_id {
        request = request.trace_id(trace);
    }
    if let Some(session) = &args.session {
        request = request.session(session);
    }
    if let Some(key) = &args.idempotency_key {
        request = request.idempotency_key(key);
    }
    if let Some(id) = &args.approval_id {
        request = request.approval_id(id);
    }
    if let Some(reason) = &args.reason {
        request = request.reason(reason);
    }
    if let Some(seconds) = args.wait_approval {
        request = request.wait_for_approval(std::time::Duration::from_secs(seconds));
    }
    // A call to a plugin that failed to load reports why it failed, not just
    // that it is unknown.
    let plugin_name = args.tool.split('/').next().unwrap_or_default();
    if host.plugin(plugin_name).is_none()
        && let Some(failure) = report
            .failed
            .iter()
            .find(|f| f.dir.file_name().is_some_and(|n| n == plugin_name))
    {
        let error = &failure.error;
        if args.json {
            print_json(&json!({"ok": false, "error": error.to_json()}));
        } else {
            eprintln!("error: {}", terminal::escape_lines(&with_causes(error)));
        }
        return Ok(exit_code(error.class()));
    }
    let result = host.call(request).await;
    close_host(&host).await;
    match result {
        Ok(response) => {
            if args.json {
                let mut value =
                    serde_json::to_value(&response).context("cannot serialize the response")?;
                value["ok"] = json!(true);
                print_json(&value);
            } else {
                // Guest text, all of it (log lines, host notes quoting a
                // guest's request, a tool's error): escaped, so a plugin
                // cannot forge a host line or rewrite the terminal.
                for line in &response.logs {
                    eprintln!("[{}] {}", line.level, terminal::escape(&line.message));
                }
                if response.logs_dropped > 0 {
                    eprintln!(
                        "[warn] {} log lines dropped (log budget spent)",
                        response.logs_dropped
                    );
                }
                for note in &response.host_notes {
                    eprintln!("[host] {}", terminal::escape(note));
                }
                print_json(&response.output);
            }
            Ok(exit::OK)
        }
        Err(error) => {
            if args.json {
                print_json(&json!({"ok": false, "error": error.to_json()}));
            } else {
                eprintln!("error: {}", terminal::escape(&with_causes(&error)));
                for v in error.violations() {
                    eprintln!("  - {}", terminal::escape(&v.to_string()));
                }
            }
            Ok(exit_code(error.class()))
        }
    }
}

pub(crate) fn exit_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Refused => exit::REFUSED,
        ErrorClass::ToolError => exit::TOOL_ERROR,
        ErrorClass::Trap => exit::TRAP,
        ErrorClass::CapabilityDenied => exit::CAPABILITY_DENIED,
        ErrorClass::Pending => exit::PENDING,
        ErrorClass::Host => exit::HOST,
        ErrorClass::Untrusted => exit::UNTRUSTED,
    }
}

/// `error` and its causes, as `{:#}` prints an `anyhow::Error`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn print_json(value: &serde_json::Value) {
    // `Value`'s Display cannot fail; pretty printing likewise. What a
    // plugin or a caller wrote is in it: escaped where serde_json leaves
    // characters a terminal acts on.
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    outln!("{}", terminal::json_text(text));
}
