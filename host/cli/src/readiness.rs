//! `airlock readiness [PLUGIN]`: the pre-launch checklist, per plugin and
//! tool; exits non-zero when a required check fails (`[readiness]
//! required` in the configuration chooses them).

use clap::Args;

use airlock_host::LoadFailure;

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
    // A plugin that did not load is not ready: left out of the checks, a
    // stale pin or an untrusted signature passed the launch gate.
    let unloaded: Vec<&LoadFailure> = report
        .failed
        .iter()
        .filter(|f| {
            args.plugin
                .as_deref()
                .is_none_or(|p| f.dir.file_name().is_some_and(|n| n == p))
        })
        .collect();
    let reports = if args.plugin.is_some() && !unloaded.is_empty() {
        Ok(Vec::new())
    } else {
        host.readiness(args.plugin.as_deref(), &settings.readiness)
            .await
    };
    close_host(&host).await;
    let reports = reports?;
    let nothing = reports.is_empty() && unloaded.is_empty();
    let ready = !nothing && unloaded.is_empty() && reports.iter().all(|r| r.ready);
    if args.json {
        let failed: Vec<_> = unloaded
            .iter()
            .map(|f| serde_json::json!({"dir": f.dir.display().to_string(), "error": f.error.to_json()}))
            .collect();
        print_json(&serde_json::json!({"ready": ready, "plugins": reports, "not_loaded": failed}));
    } else {
        if nothing {
            outln!("NOT READY: no plugin serves, so nothing was checked");
        }
        for failure in &unloaded {
            outln!(
                "{}: NOT READY: did not load: {}",
                escape(&failure.dir.display().to_string()),
                escape(&failure.error.to_string())
            );
        }
        for report in &reports {
            let version = if report.version.is_empty() {
                "(version unknown)"
            } else {
                report.version.as_str()
            };
            outln!(
                "{} {}: {}",
                escape(&report.plugin),
                escape(version),
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
