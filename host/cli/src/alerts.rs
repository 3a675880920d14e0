//! `airlock alerts`: alerts firing and resolved, paused tools, and the
//! human side of a takeover (`pause`, `resume`).
//!
//! Through the running server when one holds the data directory (its
//! control socket: owner-only), which knows the alerts it evaluates; else
//! on the data directory, where the audit log has every alert
//! (`alert_fired`, `alert_resolved`) and the ledger the pauses.

use airlock_host::Host;
use airlock_host::audit_log::Event;
use airlock_mcp::control::PauseRequest;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Settings;
use crate::control::Control;
use crate::terminal::escape;
use crate::{Calls, Failure, close_audit, exit, host_config, print_json};

/// `airlock alerts`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AlertsArgs {
    #[command(subcommand)]
    command: Option<AlertsCommand>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// Pause a tool (`PLUGIN/TOOL`) or every tool of a plugin (`PLUGIN`):
    /// its calls are refused with `tool_paused` on every host sharing the
    /// store until resumed.
    Pause(Target),
    /// Undo a pause (an alert's takeover or an operator's): the tool runs
    /// again.
    Resume(Target),
}

#[derive(Debug, Args)]
struct Target {
    /// `PLUGIN/TOOL` or `PLUGIN`, as paused.
    target: String,
    /// Who (recorded; default: the configured principal).
    #[arg(long)]
    by: Option<String>,
    /// Why (recorded).
    #[arg(long)]
    reason: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Pause a target that names no plugin or tool this host serves (it
    /// holds on every host sharing the store); without it such a target,
    /// mistyped perhaps, is refused.
    #[arg(long)]
    force: bool,
}

pub(crate) async fn run(settings: &Settings, args: AlertsArgs) -> Result<u8, Failure> {
    let server = Control::find(settings).await;
    match args.command {
        None => list(settings, server, args.json).await,
        Some(AlertsCommand::Pause(target)) => change(settings, server, target, true).await,
        Some(AlertsCommand::Resume(target)) => change(settings, server, target, false).await,
    }
}

fn local_host(settings: &Settings) -> Result<Host, Failure> {
    Ok(Host::new(host_config(settings, Calls::Recorded))?)
}

async fn change(
    settings: &Settings,
    server: Option<Control>,
    target: Target,
    pause: bool,
) -> Result<u8, Failure> {
    let request = PauseRequest {
        target: target.target,
        by: target.by.unwrap_or_else(|| settings.principal.clone()),
        reason: target.reason,
        force: target.force,
    };
    let answer: Value = match server {
        Some(control) => {
            let path = if pause {
                "/v1/alerts/pause"
            } else {
                "/v1/alerts/resume"
            };
            control.json("POST", path, Some(json!(request))).await?
        }
        None => {
            let host = local_host(settings)?;
            if pause && !request.force {
                // What this host would serve: its plugins directory too.
                let _ = host.load_plugins_dir(&settings.plugins_dir).await;
                if let Err(error) = host.check_pause_target(&request.target).await {
                    close_audit(&host);
                    return Err(match error {
                        airlock_host::Error::Config { .. } => {
                            Failure::usage(anyhow::Error::new(error))
                        }
                        other => other.into(),
                    });
                }
            }
            let reason = request.reason.as_deref();
            let answer = if pause {
                host.pause(&request.target, &request.by, reason)
                    .await
                    .map(|p| json!({"pause": p}))
            } else {
                host.resume(&request.target, &request.by, reason)
                    .await
                    .map(|p| json!({"resumed": p}))
            };
            close_audit(&host);
            answer?
        }
    };
    if target.json {
        print_json(&answer);
        return Ok(exit::OK);
    }
    let name = escape(&request.target).into_owned();
    if pause {
        let by = answer["pause"]["by"].as_str().unwrap_or("?");
        if by == request.by {
            outln!("paused {name} (recorded)");
        } else {
            outln!("{name} was paused already, by {}", escape(by));
        }
    } else if answer["resumed"].is_null() {
        outln!("{name} was not paused: nothing to resume");
    } else {
        outln!("resumed {name} (recorded)");
    }
    Ok(exit::OK)
}

async fn list(settings: &Settings, server: Option<Control>, json_out: bool) -> Result<u8, Failure> {
    let answer: Value = match server {
        Some(control) => control.json("GET", "/v1/alerts", None).await?,
        None => {
            let host = local_host(settings)?;
            let answer = from_the_record(&host);
            close_audit(&host);
            answer?
        }
    };
    if json_out {
        print_json(&answer);
        return Ok(exit::OK);
    }
    let alerts = answer["alerts"].as_array().cloned().unwrap_or_default();
    if alerts.is_empty() {
        outln!("no alerts");
    }
    for alert in &alerts {
        let mut target = match (alert["plugin"].as_str(), alert["tool"].as_str()) {
            (Some(p), Some(t)) => format!("{p}/{t}"),
            (Some(p), None) => p.to_owned(),
            _ => "(host)".to_owned(),
        };
        if let Some(version) = alert["version"].as_str() {
            target.push('@');
            target.push_str(version);
        }
        let since = alert["fired_ms"].as_u64().map(time).unwrap_or_default();
        let mut line = format!(
            "{:<9} {:<24} {:<28} fired {since}",
            text(&alert["state"]),
            text(&alert["rule"]),
            escape(&target)
        );
        if let Some(at) = alert["resolved_ms"].as_u64() {
            line.push_str(&format!(", resolved {}", time(at)));
        }
        if let Some(takeover) = alert["takeover"].as_str() {
            line.push_str(&format!("; takeover {}", escape(takeover)));
        }
        outln!("{line}");
    }
    let pauses = answer["pauses"].as_array().cloned().unwrap_or_default();
    for pause in &pauses {
        outln!(
            "paused    {:<53} by {} since {}{}",
            text(&pause["target"]),
            text(&pause["by"]),
            pause["at_ms"].as_u64().map(time).unwrap_or_default(),
            pause["reason"]
                .as_str()
                .map(|r| format!(" ({})", escape(r)))
                .unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

/// Alerts as the audit log has them (every host's chain this host reads),
/// firing ones first, then resolved, newest first; and the pauses.
fn from_the_record(host: &Host) -> Result<Value, Failure> {
    let mut alerts: Vec<Value> = Vec::new();
    for record in host.audit().records(0) {
        let record = record.map_err(airlock_host::Error::from)?;
        let entry = &record.entry;
        let (rule, plugin, tool) = (&entry.decision, &entry.plugin, &entry.tool);
        let version = &entry.plugin_version;
        match entry.event {
            Event::AlertFired => alerts.push(json!({
                "rule": rule,
                "state": "firing",
                "plugin": plugin,
                "tool": tool,
                "version": version,
                "fired_ms": record.time_ms,
                "resolved_ms": null,
                "reason": entry.reason,
            })),
            Event::AlertResolved => {
                if let Some(alert) = alerts.iter_mut().rev().find(|a| {
                    a["state"] == "firing"
                        && a["rule"] == json!(rule)
                        && a["plugin"] == json!(plugin)
                        && a["tool"] == json!(tool)
                        && a["version"] == json!(version)
                }) {
                    alert["state"] = json!("resolved");
                    alert["resolved_ms"] = json!(record.time_ms);
                }
            }
            _ => {}
        }
    }
    alerts.sort_by_key(|a| {
        (
            a["state"] != "firing",
            std::cmp::Reverse(a["fired_ms"].as_u64()),
        )
    });
    let pauses = host.pauses()?;
    Ok(json!({"alerts": alerts, "pauses": pauses}))
}

fn text(v: &Value) -> String {
    escape(v.as_str().unwrap_or("?")).into_owned()
}

fn time(ms: u64) -> String {
    airlock_host::clock::rfc3339_seconds(ms)
}
