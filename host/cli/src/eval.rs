//! `airlock eval` (a plugin's scenario cases) and `airlock replay`
//! (recorded `read` calls re-run against another version).
//!
//! Both run their calls in a scratch host: no data directory, a temporary
//! audit log, a workspace in memory (`Host::evaluate` and `Host::replay`
//! say what of the pipeline they skip and why). Neither holds the data
//! directory, so they work while `airlock serve` runs; `replay` reads the
//! audit log as `audit query` does (through the server's control socket
//! when it holds the log).

use std::path::{Path, PathBuf};

use airlock_host::audit_log::{ChainRecord, Event, Record};
use airlock_host::{CASES_FILE, Cases, EvalReport, Host, Plugin, ReplayPlan, ReplayReport, Risk};
use airlock_mcp::control::AuditQuery;
use anyhow::{Context as _, anyhow};
use clap::Args;

use crate::audit::{Log, parse_time};
use crate::config::Settings;
use crate::terminal::escape;
use crate::{Calls, Failure, exit, host_config, print_json};

/// Most intent (and outcome) records `replay` reads.
const MAX_REPLAY_RECORDS: usize = 10_000;

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The plugin: a name in the plugins directory (`text`), `NAME@VERSION`,
    /// a plugin directory or a plugin archive.
    #[arg(value_name = "PLUGIN[@VERSION]")]
    plugin: String,
    /// The cases file (default: the plugin's own `cases.jsonl`).
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Also run the cases against this plugin (a directory, an archive, a
    /// name or NAME@VERSION) and show both side by side. Without it,
    /// PLUGIN@VERSION is shown next to the version serving PLUGIN when that
    /// is another one.
    #[arg(long, value_name = "PLUGIN")]
    baseline: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The plugin whose recorded calls are replayed.
    #[arg(long)]
    plugin: String,
    /// What to replay them against: a version of the plugin, a plugin
    /// directory or a plugin archive.
    #[arg(long, value_name = "VERSION|DIR")]
    against: String,
    /// Only calls recorded at or after: RFC 3339 or an age (15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// At most this many calls: the newest that can be replayed (those
    /// newer that cannot are counted as skipped).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A host to evaluate in: nothing of the data directory (module docs).
/// Every version evaluated is opened in it (`Host::open_plugin`), so
/// versions of one plugin sit side by side.
fn scratch_host(settings: &Settings) -> Result<Host, Failure> {
    Ok(Host::new(host_config(settings, Calls::None))?)
}

/// The plugin `reference`, opened in `host`: a plugin directory, a plugin
/// archive (unpacked into `scratch`), a name in the plugins directory
/// (`crate::package::resolve_plugin_ref`), or `NAME@VERSION`.
///
/// `NAME@VERSION` is an installed version (read from the host's plugin
/// store), else the plugins directory's plugin when it has that version.
pub(crate) async fn resolve_plugin(
    host: &Host,
    settings: &Settings,
    reference: &str,
    scratch: &Path,
) -> Result<Plugin, Failure> {
    if let Some((name, version)) = reference.split_once('@')
        && !Path::new(reference).exists()
    {
        // An installed version first (the host's plugin store), then the
        // plugins directory's plugin of that version.
        if let Some(dir) = installed_version(settings, name, version, scratch)? {
            return crate::package::resolve_plugin_ref(
                host,
                settings,
                &dir.to_string_lossy(),
                scratch,
            )
            .await;
        }
        let plugin = crate::package::resolve_plugin_ref(host, settings, name, scratch).await?;
        if plugin.version() != version {
            return Err(Failure::usage(anyhow!(
                "plugin `{name}` version {version} is not installed (`airlock plugins list`), and the plugins directory holds version {} ({})",
                plugin.version(),
                plugin.dir().display()
            )));
        }
        return Ok(plugin);
    }
    crate::package::resolve_plugin_ref(host, settings, reference, scratch).await
}

/// The installed version `version` of `name`, written into a directory
/// under `scratch`; `None` when it is not installed (or there is no store
/// to ask).
fn installed_version(
    settings: &Settings,
    name: &str,
    version: &str,
    scratch: &Path,
) -> Result<Option<PathBuf>, Failure> {
    let config = host_config(settings, Calls::Recorded);
    if matches!(config.store, airlock_host::StoreConfig::Sled) && config.data_dir.is_none() {
        // A temporary store: nothing is installed in it.
        return Ok(None);
    }
    // Any other store that cannot be opened (a database down) is an
    // error, not "not installed".
    let releases = airlock_host::open_releases(&config)?;
    let Some(installed) = releases
        .version(name, version)
        .map_err(|e| airlock_host::StoreError::new(airlock_host::Store::Plugins, e))
        .map_err(airlock_host::Error::from)?
    else {
        return Ok(None);
    };
    let dir = scratch.join(format!("installed-{name}-{version}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    airlock_host::write_version(&releases, &installed, &dir)?;
    Ok(Some(dir))
}

/// What serves plugin `name` for callers outside any canary, opened in
/// `host`: its rollout's serving version, else the plugins directory's
/// `name`.
async fn serving_plugin(
    host: &Host,
    settings: &Settings,
    name: &str,
    scratch: &Path,
) -> Result<Option<Plugin>, Failure> {
    // A store that cannot be read is said, not taken for "no rollout":
    // the plugins directory's plugin would then be compared as if it
    // served.
    let releases = airlock_host::open_releases(&host_config(settings, Calls::Recorded))
        .context("cannot open the installed versions to find what serves the plugin (the baseline); pass --baseline")?;
    let serving = releases
        .rollout(name)
        .with_context(|| {
            format!("cannot read the rollout of `{name}` to find what serves it (the baseline); pass --baseline")
        })?
        .map(|rollout| rollout.value.serving);
    match serving {
        Some(version) => resolve_plugin(host, settings, &format!("{name}@{version}"), scratch)
            .await
            .map(Some),
        // Nothing serves it from the store, and no copy in the plugins
        // directory: nothing to compare with (an installed version before
        // its first rollout).
        None if !settings
            .plugins_dir
            .join(name)
            .join(airlock_host::MANIFEST_FILE)
            .is_file() =>
        {
            Ok(None)
        }
        None => resolve_plugin(host, settings, name, scratch)
            .await
            .map(Some),
    }
}

/// Run `name@version`'s shipped cases; `Ok` when every one passes (what
/// `airlock rollout --require-eval` asks before changing anything).
///
/// # Errors
/// A failure with exit code 10 naming the failing cases; a usage failure
/// when the version ships no cases.
pub(crate) async fn require_passing(
    settings: &Settings,
    name: &str,
    version: &str,
) -> Result<EvalReport, Failure> {
    let host = scratch_host(settings)?;
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let plugin = resolve_plugin(
        &host,
        settings,
        &format!("{name}@{version}"),
        scratch.path(),
    )
    .await?;
    // The version's own cases: `rollout` takes no `--cases`, and the
    // version's directory here is a scratch copy no message should name.
    let cases = match plugin.cases() {
        Ok(Some(cases)) => cases,
        Ok(None) => {
            return Err(Failure::usage(anyhow!(
                "--require-eval: {name} {version} ships no {CASES_FILE}, so there is nothing to require; install a version with cases, or roll out without --require-eval"
            )));
        }
        Err(e) => return Err(cases_failure(e, &plugin.dir().join(CASES_FILE))),
    };
    let report = host.evaluate(&plugin, &cases).await?;
    if report.all_passed() {
        return Ok(report);
    }
    let failing: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    Err(Failure {
        code: exit::EVAL_FAILED,
        error: anyhow!(
            "--require-eval: {name} {version} fails {} of its {} cases ({}); nothing was changed (`airlock eval {name}@{version}` shows why)",
            report.failed,
            report.cases.len(),
            failing.join(", ")
        ),
    })
}

/// The cases to run: `--cases`, else those of the first of `plugins` that
/// ships a `cases.jsonl` — read through [`Plugin::cases`], so a signed
/// plugin's cases are the ones its signature covers (edited since it
/// loaded: refused, not run).
fn load_cases(given: Option<&Path>, plugins: &[&Plugin]) -> Result<(PathBuf, Cases), Failure> {
    if let Some(path) = given {
        let cases = Cases::from_file(path).map_err(|e| {
            Failure::usage(anyhow::Error::from(e).context(format!("in {}", path.display())))
        })?;
        return Ok((path.to_owned(), cases));
    }
    for plugin in plugins {
        let path = plugin.dir().join(CASES_FILE);
        match plugin.cases() {
            Ok(Some(cases)) => return Ok((path, cases)),
            Ok(None) => {}
            Err(e) => return Err(cases_failure(e, &path)),
        }
    }
    Err(Failure::usage(anyhow!(
        "no cases: {} has no {CASES_FILE}; pass --cases FILE",
        plugins
            .first()
            .map_or_else(String::new, |p| p.dir().display().to_string())
    )))
}

/// A plugin's cases that cannot be used, as a failure: not the cases its
/// signature covers is a signature problem (exit 9; the error names the
/// file), anything else a usage error naming the file.
fn cases_failure(error: airlock_host::CasesError, path: &Path) -> Failure {
    match error {
        e @ airlock_host::CasesError::Unsigned { .. } => Failure {
            code: exit::UNTRUSTED,
            error: e.into(),
        },
        e => Failure::usage(anyhow::Error::from(e).context(format!("in {}", path.display()))),
    }
}

pub(crate) async fn eval(settings: &Settings, args: EvalArgs) -> Result<u8, Failure> {
    let host = scratch_host(settings)?;
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let candidate =
        resolve_plugin(&host, settings, &args.plugin, &scratch.path().join("a")).await?;
    let baseline = match &args.baseline {
        Some(reference) => {
            let plugin =
                resolve_plugin(&host, settings, reference, &scratch.path().join("b")).await?;
            if plugin.name() != candidate.name() {
                return Err(Failure::usage(anyhow!(
                    "--baseline is plugin `{}`, not `{}`",
                    plugin.name(),
                    candidate.name()
                )));
            }
            Some(plugin)
        }
        // NAME@VERSION: next to what serves NAME, when that is another
        // version.
        None => match args.plugin.split_once('@') {
            Some((name, _)) if !Path::new(&args.plugin).exists() => {
                serving_plugin(&host, settings, name, &scratch.path().join("b"))
                    .await?
                    .filter(|serving| serving.digest() != candidate.digest())
            }
            _ => None,
        },
    };
    let mut plugins = vec![&candidate];
    if let Some(plugin) = &baseline {
        plugins.push(plugin);
    }
    let (path, cases) = load_cases(args.cases.as_deref(), &plugins)?;
    let report = host.evaluate(&candidate, &cases).await?;
    let base_report = match &baseline {
        Some(plugin) => Some(host.evaluate(plugin, &cases).await?),
        None => None,
    };
    if args.json {
        let value = match &base_report {
            Some(base) => {
                // (As text: a path need not be UTF-8, which JSON requires.)
                let path = path.display().to_string();
                serde_json::json!({"cases_file": path, "candidate": report, "baseline": base})
            }
            None => {
                let mut value = serde_json::to_value(&report).context("cannot serialize")?;
                value["cases_file"] = serde_json::json!(path.display().to_string());
                value
            }
        };
        print_json(&value);
    } else {
        match &base_report {
            Some(base) => out!("{}", render_side_by_side(base, &report)),
            None => out!("{}", render(&report)),
        }
    }
    Ok(if report.all_passed() {
        exit::OK
    } else {
        exit::EVAL_FAILED
    })
}

fn label(report: &EvalReport) -> String {
    format!(
        "{} {} (sha256:{})",
        report.plugin,
        report.version,
        report.digest.get(..12).unwrap_or(&report.digest)
    )
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn totals(report: &EvalReport) -> String {
    format!(
        "{} cases: {} passed, {} failed; fuel {}, {}",
        report.cases.len(),
        report.passed,
        report.failed,
        report.fuel_used,
        ms(report.wall_us)
    )
}

/// One report, case by case, with the failures' diffs.
fn render(report: &EvalReport) -> String {
    let mut out = format!("{}\n", label(report));
    for case in &report.cases {
        out.push_str(&format!(
            "  {}  {:<32} {:<18} fuel {:>12}  {:>9}\n",
            if case.passed { "PASS" } else { "FAIL" },
            escape(&case.name),
            escape(&case.outcome.to_string()),
            case.fuel_used,
            ms(case.wall_us)
        ));
        for failure in &case.failures {
            out.push_str(&format!("        {}\n", escape(&failure.to_string())));
        }
    }
    out.push_str(&totals(report));
    out.push('\n');
    out
}

/// Two reports over the same cases, side by side, then the candidate's
/// failures.
fn render_side_by_side(base: &EvalReport, candidate: &EvalReport) -> String {
    let cell = |c: &airlock_host::CaseReport| {
        format!(
            "{} {:<18} fuel {:>11} {:>9}",
            if c.passed { "PASS" } else { "FAIL" },
            escape(&c.outcome.to_string()),
            c.fuel_used,
            ms(c.wall_us)
        )
    };
    let left = format!("baseline {}", label(base));
    let width = base
        .cases
        .iter()
        .map(|c| cell(c).len())
        .chain([left.len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:<32} {left:<width$}   candidate {}\n",
        "case",
        label(candidate)
    );
    for (b, c) in base.cases.iter().zip(&candidate.cases) {
        out.push_str(&format!(
            "{:<32} {:<width$}   {}\n",
            escape(&c.name),
            cell(b),
            cell(c)
        ));
    }
    out.push_str(&format!("baseline:  {}\n", totals(base)));
    out.push_str(&format!("candidate: {}\n", totals(candidate)));
    for case in candidate.cases.iter().filter(|c| !c.passed) {
        out.push_str(&format!(
            "FAIL {} (line {})\n",
            escape(&case.name),
            case.line
        ));
        for failure in &case.failures {
            out.push_str(&format!("  {}\n", escape(&failure.to_string())));
        }
    }
    out
}

// ------------------------------------------------------------------ replay

pub(crate) async fn replay(settings: &Settings, args: ReplayArgs) -> Result<u8, Failure> {
    if args.limit == 0 || args.limit > MAX_REPLAY_RECORDS {
        return Err(Failure::usage(anyhow!(
            "--limit must be 1 to {MAX_REPLAY_RECORDS}"
        )));
    }
    let since_ms = args
        .since
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(Failure::usage)?;
    let host = scratch_host(settings)?;
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    // A directory or an archive, or a version of the plugin.
    let reference = if Path::new(&args.against).exists() || args.against.contains(['/', '\\']) {
        args.against.clone()
    } else {
        format!("{}@{}", args.plugin, args.against)
    };
    let plugin = resolve_plugin(&host, settings, &reference, &scratch.path().join("a")).await?;
    if plugin.name() != args.plugin {
        return Err(Failure::usage(anyhow!(
            "--against is plugin `{}`, not `{}`",
            plugin.name(),
            args.plugin
        )));
    }
    let records = recorded_calls(settings, &args.plugin, since_ms).await?;
    let plan = ReplayPlan::from_records_against(
        records.iter().map(|(o, r)| (o.as_deref(), r)),
        &plugin,
        args.limit,
    );
    let report = host.replay(&plugin, &plan).await?;
    if args.json {
        print_json(&serde_json::to_value(&report).context("cannot serialize")?);
    } else {
        out!("{}", render_replay(&report));
    }
    if report.replayed == 0 {
        // Nothing compared is no evidence that the version behaves the
        // same: a gate on this command must not pass on it.
        eprintln!(
            "error: nothing was replayed: no recorded `read` call of `{}`{} with a complete, unredacted argument copy (the tools replayed are those in `audit.replayable`)",
            escape(&args.plugin),
            args.since
                .as_deref()
                .map(|s| format!(" since {}", escape(s)))
                .unwrap_or_default(),
        );
        return Ok(exit::EVAL_FAILED);
    }
    Ok(if report.different == 0 {
        exit::OK
    } else {
        exit::EVAL_FAILED
    })
}

/// The plugin's intent and outcome records of `read` tools, from every
/// chain: only they can be replayed, so the scan's bound is spent on them
/// (a plugin whose newest calls were writes still has its reads found).
async fn recorded_calls(
    settings: &Settings,
    plugin: &str,
    since_ms: Option<u64>,
) -> Result<Vec<(Option<String>, Record)>, Failure> {
    let log = Log::open(settings).await?;
    let mut out = Vec::new();
    for event in [Event::CallStarted, Event::CallFinished] {
        let query = AuditQuery {
            plugin: Some(plugin.to_owned()),
            event: Some(event),
            risk: Some(Risk::Read.as_str().to_owned()),
            since_ms,
            limit: MAX_REPLAY_RECORDS,
            ..AuditQuery::default()
        };
        if let (Log::Local(shared), Some(_)) = (&log, log.chains()?) {
            for ChainRecord { origin, record } in shared.query_all(&query.filter(), query.limit)? {
                out.push((Some(origin), record));
            }
        } else {
            out.extend(log.query(&query).await?.into_iter().map(|r| (None, r)));
        }
    }
    Ok(out)
}

fn render_replay(r: &ReplayReport) -> String {
    let mut out = format!(
        "replayed against {} {} (sha256:{})\n",
        r.plugin,
        r.version,
        r.digest.get(..12).unwrap_or(&r.digest)
    );
    for call in &r.calls {
        let at = match &call.origin {
            Some(origin) => format!("{origin}:{}", call.seq),
            None => call.seq.to_string(),
        };
        out.push_str(&format!(
            "  {:<9} #{:<8} {:<20} {} -> {:<14} fuel {:>11} {:>9}\n",
            if call.same { "SAME" } else { "DIFFERENT" },
            escape(&at),
            escape(&call.tool),
            escape(&call.recorded_outcome.to_string()),
            escape(&call.outcome.to_string()),
            call.fuel_used,
            ms(call.wall_us)
        ));
        if let Some(diff) = &call.diff {
            out.push_str(&format!("        {}\n", escape(&diff.to_string())));
        }
    }
    let s = &r.skipped;
    out.push_str(&format!(
        "{} replayed: {} same, {} different, {} errors; skipped: {} redacted, {} cut, {} without a replayable copy, {} unfinished, {} no longer read, {} ended by the host, {} recorded twice\n",
        r.replayed,
        r.same,
        r.different,
        r.errors,
        s.redacted,
        s.cut,
        s.no_copy,
        s.unfinished,
        s.not_read,
        s.host_outcome,
        s.ambiguous
    ));
    out
}

#[cfg(test)]
mod tests {
    use airlock_host::{CaseReport, EvalReport, Mismatch};

    use super::*;

    /// What a guest wrote (its error message, in a failure) and what a
    /// case file names are printed so they cannot drive the terminal: an
    /// ESC sequence and a carriage return could print a forged clean line
    /// over a failure.
    #[test]
    fn what_a_guest_or_a_case_file_wrote_cannot_drive_the_terminal() {
        let forged = "\x1b[1A\x1b[2K\r  PASS all 0 different";
        let case = CaseReport {
            name: format!("case{forged}"),
            tool: "text/slugify".to_owned(),
            line: 1,
            passed: false,
            outcome: "tool_error".to_owned(),
            output: None,
            error: Some(forged.to_owned()),
            failures: vec![Mismatch {
                check: "error".to_owned(),
                at: String::new(),
                expected: serde_json::Value::Null,
                actual: serde_json::Value::Null,
                message: forged.to_owned(),
            }],
            fuel_used: 1,
            wall_us: 1,
        };
        let report = EvalReport {
            plugin: "text".to_owned(),
            version: "1.0.0".to_owned(),
            digest: "0".repeat(64),
            cases: vec![case],
            passed: 0,
            failed: 1,
            fuel_used: 1,
            wall_us: 1,
        };
        for text in [render(&report), render_side_by_side(&report, &report)] {
            assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
            assert!(text.contains("\\u{1b}[1A"), "{text}");
        }
    }
}
