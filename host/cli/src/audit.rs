//! `airlock audit`: read, export and verify the call record.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_host::AUDIT_DIR;
use airlock_host::audit_log::{
    AuditLog, Checkpoint, Event, PUBLIC_KEY_FILE, Record, parse_public_key, read_export,
    verify_export,
};
use airlock_mcp::control::{AuditQuery, MAX_PAGE, Verdict, VerifyAnswer, export_headers};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use crate::config::Settings;
use crate::control::{Control, Source, open_or_reach};
use crate::terminal::escape;
use crate::{Failure, exit, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// The newest records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing records as they are appended.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Records matching every given filter, oldest first.
    Query(QueryArgs),
    /// One record in full.
    Show {
        /// Its sequence number.
        seq: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole log (checkpoints and records) to a JSON-lines file
    /// that `audit verify --export` checks offline.
    Export {
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check the hash chain and signed checkpoints; name the first bad record.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// Plugin name.
    #[arg(long)]
    plugin: Option<String>,
    /// Tool name (without the plugin).
    #[arg(long)]
    tool: Option<String>,
    /// Principal.
    #[arg(long)]
    principal: Option<String>,
    /// Trace id.
    #[arg(long)]
    trace_id: Option<String>,
    /// Call id.
    #[arg(long)]
    call_id: Option<String>,
    /// Outcome: ok, an error kind (tool_error, fuel_exhausted, ...) or unknown.
    #[arg(long)]
    outcome: Option<String>,
    /// Event: call_refused, call_started or call_finished.
    #[arg(long)]
    event: Option<String>,
    /// At or after: RFC 3339 (2026-11-23T10:00:00Z) or an age (15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before: RFC 3339 or an age.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Verify this export file offline instead of the live log.
    #[arg(long, value_name = "FILE", requires = "pubkey")]
    export: Option<PathBuf>,
    /// The public key to trust: 64 hex digits or a file holding them (the
    /// host writes `signing.pub` in its audit directory). Never taken from
    /// the export itself.
    #[arg(long, value_name = "KEY")]
    pubkey: Option<String>,
    /// Also hold the log to the checkpoints in this earlier export (kept
    /// away from the host): catches history rewritten with its checkpoints.
    #[arg(long, value_name = "FILE")]
    trusted: Vec<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn audit_dir(settings: &Settings) -> PathBuf {
    settings.data_dir.join(AUDIT_DIR)
}

/// The log: opened here, or read through the server that holds it.
enum Log {
    Local(AuditLog),
    Server(Control),
}

#[derive(Deserialize)]
struct Records {
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct Head {
    head: u64,
}

#[derive(Deserialize)]
struct OneRecord {
    record: Option<Record>,
    head: u64,
}

impl Log {
    async fn open(settings: &Settings) -> Result<Log, Failure> {
        let dir = audit_dir(settings);
        let open = |wait| Ok(AuditLog::open_read_only_waiting(&dir, wait)?);
        Ok(match open_or_reach(settings, open).await? {
            Source::Local(log) => Log::Local(log),
            Source::Server(control) => Log::Server(control),
        })
    }

    async fn query(&self, query: &AuditQuery) -> Result<Vec<Record>, Failure> {
        match self {
            Log::Local(log) => Ok(log.query(&query.filter(), query.limit)?),
            Log::Server(control) => Ok(control
                .json::<Records>("POST", "/v1/audit/query", Some(json!(query)))
                .await?
                .records),
        }
    }

    async fn head(&self) -> Result<u64, Failure> {
        match self {
            Log::Local(log) => Ok(log.head()?.0),
            Log::Server(control) => Ok(control
                .json::<Head>("GET", "/v1/audit/head", None)
                .await?
                .head),
        }
    }

    /// Record `seq`, and the newest record's number.
    async fn get(&self, seq: u64) -> Result<(Option<Record>, u64), Failure> {
        match self {
            Log::Local(log) => Ok((log.get(seq)?, log.head()?.0)),
            Log::Server(control) => {
                let one: OneRecord = control
                    .json("GET", &format!("/v1/audit/records/{seq}"), None)
                    .await?;
                Ok((one.record, one.head))
            }
        }
    }

    /// The log's directory, its key and the verdict.
    async fn verify(&self, trusted: &[Checkpoint]) -> Result<(String, [u8; 32], Verdict), Failure> {
        match self {
            Log::Local(log) => Ok((
                log.path().display().to_string(),
                *log.public_key().as_bytes(),
                Verdict::from(&log.verify(trusted)?),
            )),
            Log::Server(control) => {
                let answer: VerifyAnswer = control
                    .json_slow(
                        "POST",
                        "/v1/audit/verify",
                        Some(json!({"trusted": trusted})),
                    )
                    .await?;
                let key = parse_public_key(&answer.public_key)
                    .map_err(|e| anyhow::anyhow!("the server's public key: {e}"))?;
                Ok((answer.log, *key.as_bytes(), answer.verdict))
            }
        }
    }

    /// Write the export to `out`: records, checkpoints, public key.
    async fn export(&self, out: &Path) -> Result<(u64, usize, String), Failure> {
        match self {
            Log::Local(log) => {
                let summary = log
                    .export(out)
                    .with_context(|| format!("cannot export to {}", out.display()))?;
                Ok((summary.records, summary.checkpoints, summary.public_key))
            }
            Log::Server(control) => {
                let headers = control.download("/v1/audit/export", out).await?;
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                Ok((
                    header(export_headers::RECORDS).parse().unwrap_or(0),
                    header(export_headers::CHECKPOINTS).parse().unwrap_or(0),
                    header(export_headers::PUBLIC_KEY),
                ))
            }
        }
    }
}

pub(crate) async fn run(settings: &Settings, command: AuditCommand) -> Result<u8, Failure> {
    match command {
        AuditCommand::Tail {
            lines,
            follow,
            json,
        } => tail(settings, lines, follow, json).await,
        AuditCommand::Query(args) => query(settings, &args).await,
        AuditCommand::Show { seq, json } => show(settings, seq, json).await,
        AuditCommand::Export { out } => export(settings, &out).await,
        AuditCommand::Verify(args) => verify(settings, &args).await,
    }
}

async fn tail(settings: &Settings, lines: usize, follow: bool, json: bool) -> Result<u8, Failure> {
    let mut last = {
        let log = Log::open(settings).await?;
        let newest = AuditQuery {
            limit: lines,
            ..AuditQuery::default()
        };
        for record in &log.query(&newest).await? {
            print_record(record, json);
        }
        log.head().await?
    };
    if !follow {
        return Ok(exit::OK);
    }
    // The database admits one process at a time: open it briefly on each
    // poll so hosts can keep appending in between; while a server holds
    // it, ask the server.
    let mut told_busy = false;
    let mut server: Option<Control> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(control) = &server {
            match records_after(control, last).await {
                Ok(records) => {
                    for record in records {
                        last = record.seq;
                        print_record(&record, json);
                    }
                    continue;
                }
                // The server stopped: back to the database.
                Err(_) => server = None,
            }
        }
        match AuditLog::open_read_only_waiting(audit_dir(settings), 0) {
            Ok(log) => {
                told_busy = false;
                for record in log.records(last + 1) {
                    let record = record?;
                    last = record.seq;
                    print_record(&record, json);
                }
            }
            Err(airlock_host::audit_log::Error::Locked { .. }) => {
                server = Control::find(settings).await;
                if server.is_none() && !told_busy {
                    eprintln!(
                        "note: the audit log is held by a running airlock process; waiting for it"
                    );
                    told_busy = true;
                }
            }
            Err(e) => return Err(anyhow::Error::from(e).into()),
        }
    }
}

/// Every record after `last`, page by page.
async fn records_after(control: &Control, mut last: u64) -> Result<Vec<Record>, Failure> {
    let mut all = Vec::new();
    loop {
        let page: Records = control
            .json(
                "GET",
                &format!("/v1/audit/after/{last}?limit={MAX_PAGE}"),
                None,
            )
            .await?;
        let full = page.records.len() >= MAX_PAGE;
        if let Some(newest) = page.records.last() {
            last = newest.seq;
        }
        all.extend(page.records);
        if !full {
            return Ok(all);
        }
    }
}

async fn query(settings: &Settings, args: &QueryArgs) -> Result<u8, Failure> {
    let event = match &args.event {
        None => None,
        Some(name) => Some(
            serde_json::from_value::<Event>(json!(name))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "unknown event {name:?}: expected call_refused, call_started or call_finished"
                    )
                })
                .map_err(Failure::usage)?,
        ),
    };
    let query = AuditQuery {
        plugin: args.plugin.clone(),
        tool: args.tool.clone(),
        principal: args.principal.clone(),
        trace_id: args.trace_id.clone(),
        call_id: args.call_id.clone(),
        outcome: args.outcome.clone(),
        event,
        since_ms: args
            .since
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(Failure::usage)?,
        until_ms: args
            .until
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(Failure::usage)?,
        limit: args.limit,
    };
    let log = Log::open(settings).await?;
    for record in log.query(&query).await? {
        print_record(&record, args.json);
    }
    Ok(exit::OK)
}

async fn show(settings: &Settings, seq: u64, json: bool) -> Result<u8, Failure> {
    let log = Log::open(settings).await?;
    let (Some(record), _) = log.get(seq).await? else {
        let head = log.head().await?;
        return Err(Failure::usage(anyhow::anyhow!(
            "no record {seq}: the log holds records 1 to {head}"
        )));
    };
    if json {
        print_json(&serde_json::to_value(&record).context("cannot serialize the record")?);
        return Ok(exit::OK);
    }
    let value = serde_json::to_value(&record).context("cannot serialize the record")?;
    if let Some(map) = value.as_object() {
        println!("record {seq} at {}", format_time(record.time_ms));
        for (key, item) in map {
            if key == "time_ms" || key == "seq" {
                continue;
            }
            // Guest and caller text (reasons, logs, arguments, principal,
            // trace id) is escaped: it must not drive the terminal.
            let key = escape(key);
            match item {
                serde_json::Value::String(s) => println!("  {key:<18} {}", escape(s)),
                other => println!("  {key:<18} {}", escape(&other.to_string())),
            }
        }
    }
    Ok(exit::OK)
}

async fn export(settings: &Settings, out: &Path) -> Result<u8, Failure> {
    let log = Log::open(settings).await?;
    let (records, checkpoints, public_key) = log.export(out).await?;
    println!(
        "exported {records} records and {checkpoints} checkpoints to {}",
        out.display()
    );
    println!("public key: {public_key}");
    println!(
        "verify with: airlock audit verify --export {} --pubkey {}",
        out.display(),
        audit_dir(settings).join(PUBLIC_KEY_FILE).display()
    );
    Ok(exit::OK)
}

async fn verify(settings: &Settings, args: &VerifyArgs) -> Result<u8, Failure> {
    let mut trusted: Vec<Checkpoint> = Vec::new();
    for file in &args.trusted {
        let export = read_export(file)
            .with_context(|| format!("cannot read trusted checkpoints from {}", file.display()))
            .map_err(Failure::usage)?;
        trusted.extend(export.checkpoints);
    }
    let (what, key, verdict) = match &args.export {
        Some(file) => {
            let Some(key) = &args.pubkey else {
                bail_usage(
                    "--export needs --pubkey: the key to trust is never taken from the file",
                )?
            };
            let key = parse_public_key(key).map_err(|e| Failure::usage(e.into()))?;
            (
                file.display().to_string(),
                KeySource::Given(*key.as_bytes()),
                Verdict::from(&verify_export(file, &key, &trusted)?),
            )
        }
        None => {
            let given = match &args.pubkey {
                Some(key) => Some(parse_public_key(key).map_err(|e| Failure::usage(e.into()))?),
                None => None,
            };
            let log = Log::open(settings).await?;
            let (path, live_key, verdict) = log.verify(&trusted).await?;
            let source = match given {
                Some(key) => {
                    if *key.as_bytes() != live_key {
                        return Err(Failure::from(anyhow::anyhow!(
                            "the live log is signed with key {}, not the one given",
                            hex::encode(live_key)
                        )));
                    }
                    KeySource::Given(live_key)
                }
                None => KeySource::BesideTheLog(live_key, Path::new(&path).join(PUBLIC_KEY_FILE)),
            };
            (path, source, verdict)
        }
    };
    report(&what, &key, &verdict, args.json);
    Ok(match verdict {
        Verdict::Passed { .. } => exit::OK,
        Verdict::Failed { .. } => exit::VERIFY_FAILED,
    })
}

fn bail_usage<T>(message: &str) -> Result<T, Failure> {
    Err(Failure::usage(anyhow::anyhow!("{message}")))
}

/// The key checkpoints were verified against, and where it came from.
enum KeySource {
    /// `--pubkey`: a copy the reviewer brought.
    Given([u8; 32]),
    /// `signing.pub` beside the log: whoever could rewrite the log may have
    /// replaced it too.
    BesideTheLog([u8; 32], PathBuf),
}

impl KeySource {
    fn hex(&self) -> String {
        match self {
            KeySource::Given(key) | KeySource::BesideTheLog(key, _) => hex::encode(key),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            KeySource::Given(_) => json!({"public_key": self.hex(), "source": "pubkey"}),
            KeySource::BesideTheLog(_, path) => json!({
                "public_key": self.hex(),
                "source": "stored_beside_log",
                "path": path.display().to_string(),
                "warning": BESIDE_THE_LOG_WARNING,
            }),
        }
    }
}

const BESIDE_THE_LOG_WARNING: &str = "this key was read from beside the log: the check proves integrity only against someone who could not also replace that key file; verify with --pubkey and a copy of the key kept out of band";

fn report(what: &str, key: &KeySource, verdict: &Verdict, json: bool) {
    if !json {
        match key {
            KeySource::Given(_) => println!("key: {} (given with --pubkey)", key.hex()),
            KeySource::BesideTheLog(_, path) => {
                println!(
                    "key: {} (stored beside the log: {})",
                    key.hex(),
                    path.display()
                );
                println!("warning: {BESIDE_THE_LOG_WARNING}");
            }
        }
    }
    match (verdict, json) {
        (Verdict::Passed { report, .. }, true) => {
            print_json(&json!({"ok": true, "log": what, "key": key.json(), "report": report}))
        }
        (Verdict::Failed { failure, .. }, true) => {
            print_json(&json!({"ok": false, "log": what, "key": key.json(), "failure": failure}))
        }
        (
            Verdict::Passed {
                records,
                checkpoints,
                head_hash,
                unsigned_tail,
                ..
            },
            false,
        ) => {
            println!("ok: {records} records, {checkpoints} checkpoints verified ({what})");
            if let Some(head) = head_hash {
                println!("head: {head}");
            }
            if *unsigned_tail > 0 {
                println!(
                    "note: the last {unsigned_tail} records are not covered by a checkpoint yet (signed every few seconds and at shutdown)"
                );
            }
        }
        (Verdict::Failed { seq, problem, .. }, false) => {
            println!("FAILED at record {seq}: {problem}")
        }
    }
}

fn print_record(record: &Record, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(record).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    let e = &record.entry;
    // The tool reference of a refused call, the principal and the outcome
    // come from callers: escaped, like everything printed from a record.
    let tool = match (&e.plugin, &e.tool) {
        (Some(p), Some(t)) => format!("{}/{}", escape(p), escape(t)),
        (None, Some(t)) => escape(t).into_owned(),
        _ => "-".into(),
    };
    let mut line = format!(
        "{:>6}  {}  {:<13}  {:<24}  {:<10}",
        record.seq,
        format_time(record.time_ms),
        e.event.as_str(),
        tool,
        escape(e.principal.as_deref().unwrap_or("-")),
    );
    if let Some(outcome) = &e.outcome {
        line.push_str(&format!("  {}", escape(outcome)));
    }
    if let Some(fuel) = e.fuel_used {
        line.push_str(&format!("  fuel={fuel}"));
    }
    if let Some(us) = e.wall_us {
        line.push_str(&format!("  {:.1}ms", us as f64 / 1000.0));
    }
    if let Some(call) = &e.call_id {
        line.push_str(&format!("  call={}", escape(call)));
    }
    println!("{line}");
}

fn format_time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 (`2026-11-23T10:00:00Z`, date alone allowed) or an age before
/// now (`15m`, `2h`, `7d`).
fn parse_time(text: &str) -> anyhow::Result<u64> {
    let to_ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(to_ms(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{text}T00:00:00")) {
        return Ok(to_ms(t));
    }
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(to_ms(SystemTime::now() - age));
    }
    bail!(
        "invalid time {text:?}: use RFC 3339 (2026-11-23T10:00:00Z), a date, or an age (15m, 2h, 7d)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_dates_instants_or_ages() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        let an_hour_ago = parse_time("1h").unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - an_hour_ago >= 3_600_000);
        assert!(parse_time("yesterday-ish").is_err());
    }
}
