//! `airlock readiness [PLUGIN]`: the pre-launch checklist, per plugin and
//! tool; exits non-zero when a required check fails (`[readiness]
//! required` in the configuration chooses them).

use clap::Args;

use crate::config::Settings;
use crate::terminal::escape;
use crate::{Calls, Failure, close_host, exit, load_host, print_json, warn_failures};

/// `airlock readiness`.
#[derive(Debug, Args)]
pub(crate) struct ReadinessArgs {
    /// The plugin (default: every serving plugin).
    plugin: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(settings: &Settings, args: ReadinessArgs) -> Result<u8, Failure> {
    let (host, report) = load_host(settings, Calls::Recorded).await?;
    warn_failures(&report);
    let reports = host
        .readiness(args.plugin.as_deref(), &settings.readiness)
        .await;
    close_host(&host).await;
    let reports = reports?;
    let ready = reports.iter().all(|r| r.ready);
    if args.json {
        print_json(&serde_json::json!({"ready": ready, "plugins": reports}));
    } else {
        for report in &reports {
            outln!(
                "{} {}: {}",
                escape(&report.plugin),
                escape(&report.version),
                if report.ready { "ready" } else { "NOT READY" }
            );
            for (label, findings) in [
                ("missing", &report.missing_required),
                ("warning", &report.warnings),
            ] {
                for f in findings {
                    let what = match &f.tool {
                        Some(tool) => format!("{}/{}", f.plugin, tool),
                        None => f.plugin.clone(),
                    };
                    outln!(
                        "  {label:<8} {:<18} {}: {}",
                        f.check.as_str(),
                        escape(&what),
                        escape(&f.reason)
                    );
                    outln!("  {:<8} {:<18} fix: {}", "", "", escape(&f.fix));
                }
            }
        }
    }
    Ok(if ready { exit::OK } else { exit::NOT_READY })
}
