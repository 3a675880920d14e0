//! `airlock plugins install`, `airlock rollout` and `airlock rollback`:
//! installed versions and which of them serve.
//!
//! Each action is an `airlock_mcp::releases::ReleaseRequest`, run by the
//! running server when one holds the data directory (over its control
//! socket: it records the action in its audit log at once), else by a host
//! opened here on the data directory and its store.

use std::path::PathBuf;

use airlock_host::store::Sticky;
use airlock_mcp::releases::{self, ReleaseRequest};
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::Settings;
use crate::control::Control;
use airlock_host::{Host, MANIFEST_FILE, Manifest};

use crate::{Calls, Failure, close_audit, exit, host_config, print_json};

/// `airlock plugins install`.
#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// A plugin directory or a `.tar.gz` archive (`airlock plugins pack`).
    path: PathBuf,
    /// Who installs (default: the configured principal).
    #[arg(long)]
    by: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `airlock rollout`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct RolloutArgs {
    #[command(subcommand)]
    command: Option<RolloutCommand>,
    /// The plugin.
    #[arg(required = true)]
    plugin: Option<String>,
    /// The installed version to send traffic to.
    #[arg(required = true)]
    version: Option<String>,
    /// Share of callers, 0-100: 100 makes it the serving version; less
    /// makes it a canary beside the serving one.
    #[arg(long, value_name = "N", required = true)]
    percent: Option<u32>,
    /// What keeps a caller on one side of the canary.
    #[arg(long, value_enum, default_value = "principal")]
    sticky: StickyArg,
    /// Approval an approver gave for a version wider than the serving one.
    #[arg(long, value_name = "ID")]
    approval: Option<String>,
    /// Refuse unless the version passes its own scenario cases
    /// (`airlock eval PLUGIN@VERSION`) first.
    #[arg(long)]
    require_eval: bool,
    #[command(flatten)]
    who: Who,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StickyArg {
    Principal,
    Session,
}

#[derive(Debug, Args)]
struct Who {
    /// Who makes the change (default: the configured principal).
    #[arg(long)]
    by: Option<String>,
    /// Why (recorded).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// The rollout of a plugin and, per version, calls, error rate, p50/p99
    /// and fuel since its canary started.
    Status {
        /// The plugin.
        plugin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the canary the serving version.
    Promote {
        /// The plugin.
        plugin: String,
        #[command(flatten)]
        who: Who,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `airlock rollback`.
#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// The plugin.
    plugin: String,
    #[command(flatten)]
    who: Who,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Run `request` through the running server, or on a host opened here.
pub(crate) async fn run(settings: &Settings, request: ReleaseRequest) -> Result<Value, Failure> {
    if let Some(control) = Control::find(settings).await {
        return control
            .json_slow::<Value>("POST", "/v1/releases", Some(json!(request)))
            .await;
    }
    let host = Host::new(host_config(settings, Calls::Recorded))?;
    // A first rollout compares the new version with the plugins
    // directory's plugin of that name, if any: load that one only (loading
    // every plugin would compile them all for nothing).
    if let ReleaseRequest::Rollout { plugin, .. } = &request
        && let Some(dir) = dev_plugin_dir(settings, plugin)
        && let Err(error) = host.load_plugin(&dir).await
    {
        // The error quotes the plugin's manifest: escaped.
        let said = format!("plugin in {} not loaded: {error}", dir.display());
        let said = crate::terminal::escape_lines(&said);
        // Without a rollout it is what serves: the host then refuses the
        // rollout (`baseline_not_loaded`) rather than compare with nothing.
        eprintln!("warning: {said}");
    }
    let answer = releases::run(&host, request).await;
    close_audit(&host);
    Ok(answer?)
}

/// The plugins directory's subdirectory whose manifest names `plugin`
/// (manifests are read, nothing is compiled).
fn dev_plugin_dir(settings: &Settings, plugin: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(&settings.plugins_dir).ok()?;
    entries.flatten().map(|e| e.path()).find(|dir| {
        let manifest = dir.join(MANIFEST_FILE);
        // A regular file only: opening a FIFO would wait for a writer.
        manifest.is_file() && Manifest::load(&manifest).is_ok_and(|m| m.plugin.name == plugin)
    })
}

fn by(settings: &Settings, who: Option<String>) -> String {
    who.unwrap_or_else(|| settings.principal.clone())
}

pub(crate) async fn install(settings: &Settings, args: InstallArgs) -> Result<u8, Failure> {
    let path = std::path::absolute(&args.path)
        .with_context(|| format!("cannot resolve {}", args.path.display()))?;
    let answer = run(
        settings,
        ReleaseRequest::Install {
            path,
            by: by(settings, args.by),
        },
    )
    .await?;
    if args.json {
        print_json(&answer);
    } else {
        let v = &answer["installed"];
        let what = format!(
            "{} {} (component sha256 {})",
            text(&v["plugin"]),
            text(&v["version"]),
            text(&v["component_digest"])
        );
        if answer["new"].as_bool() == Some(true) {
            outln!("installed {what}");
        } else {
            outln!("already installed: {what}");
        }
        if let Some(signer) = v["signer"].as_str() {
            outln!("  signed by {signer}");
        }
        outln!(
            "  it serves nothing yet: `airlock rollout {} {} --percent N`",
            text(&v["plugin"]),
            text(&v["version"])
        );
    }
    Ok(exit::OK)
}

fn text(v: &Value) -> String {
    crate::terminal::escape(v.as_str().unwrap_or("?")).into_owned()
}

pub(crate) async fn rollout(settings: &Settings, args: RolloutArgs) -> Result<u8, Failure> {
    let (request, json_out) = match args.command {
        Some(RolloutCommand::Status { plugin, json }) => {
            let answer = run(settings, ReleaseRequest::Status { plugin }).await?;
            if json {
                print_json(&answer);
            } else {
                print_status(&answer["status"]);
            }
            return Ok(exit::OK);
        }
        Some(RolloutCommand::Promote { plugin, who, json }) => (
            ReleaseRequest::Promote {
                plugin,
                by: by(settings, who.by),
                reason: who.reason,
            },
            json,
        ),
        None => {
            // clap requires these without a subcommand.
            let (Some(plugin), Some(version), Some(percent)) =
                (args.plugin, args.version, args.percent)
            else {
                return Err(Failure::usage(anyhow::anyhow!(
                    "usage: airlock rollout PLUGIN VERSION --percent N"
                )));
            };
            if args.require_eval {
                let report = crate::eval::require_passing(settings, &plugin, &version).await?;
                eprintln!("{plugin} {version} passes its {} cases", report.cases.len());
            }
            (
                ReleaseRequest::Rollout {
                    plugin,
                    version,
                    percent,
                    sticky: match args.sticky {
                        StickyArg::Principal => Sticky::Principal,
                        StickyArg::Session => Sticky::Session,
                    },
                    by: by(settings, args.who.by),
                    reason: args.who.reason,
                    approval_id: args.approval,
                },
                args.json,
            )
        }
    };
    let answer = run(settings, request).await?;
    print_rollout(&answer, json_out);
    Ok(exit::OK)
}

pub(crate) async fn rollback(settings: &Settings, args: RollbackArgs) -> Result<u8, Failure> {
    let answer = run(
        settings,
        ReleaseRequest::Rollback {
            plugin: args.plugin,
            by: by(settings, args.who.by),
            reason: args.who.reason,
        },
    )
    .await?;
    print_rollout(&answer, args.json);
    Ok(exit::OK)
}

fn print_rollout(answer: &Value, json_out: bool) {
    if json_out {
        print_json(answer);
        return;
    }
    let r = &answer["rollout"];
    outln!(
        "{}: {} (recorded in the audit log)",
        text(&r["plugin"]),
        describe(r)
    );
    if let Some(previous) = r["previous"].as_str() {
        outln!(
            "  `airlock rollback {}` returns to {}",
            text(&r["plugin"]),
            crate::terminal::escape(previous)
        );
    }
}

fn describe(r: &Value) -> String {
    let serving = text(&r["serving"]);
    match r.get("canary").filter(|c| !c.is_null()) {
        Some(c) => format!(
            "{serving} serves, canary {} takes {}% of callers (sticky by {})",
            text(&c["version"]),
            c["percent"],
            text(&c["sticky"])
        ),
        None => format!("{serving} serves every caller"),
    }
}

fn print_status(status: &Value) {
    let r = &status["rollout"];
    outln!("{}: {}", text(&r["plugin"]), describe(r));
    outln!(
        "{:<8} {:<16} {:>8} {:>8} {:>10} {:>10} {:>12}",
        "role",
        "version",
        "calls",
        "errors",
        "p50 ms",
        "p99 ms",
        "mean fuel"
    );
    for v in status["versions"].as_array().into_iter().flatten() {
        let ms = |us: &Value| us.as_u64().unwrap_or(0) as f64 / 1000.0;
        outln!(
            "{:<8} {:<16} {:>8} {:>7.1}% {:>10.2} {:>10.2} {:>12}",
            text(&v["role"]),
            text(&v["version"]),
            v["calls"].as_u64().unwrap_or(0),
            v["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            ms(&v["p50_us"]),
            ms(&v["p99_us"]),
            v["mean_fuel"].as_u64().unwrap_or(0)
        );
    }
    if status["truncated"].as_bool() == Some(true) {
        outln!("(from the newest records only)");
    }
}

/// Installed versions and rollouts, for `airlock plugins list`.
pub(crate) async fn installed(settings: &Settings) -> Result<Value, Failure> {
    run(settings, ReleaseRequest::Installed { plugin: None }).await
}
