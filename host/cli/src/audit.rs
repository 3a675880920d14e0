//! `airlock audit`: read, export and verify the call record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_host::AUDIT_DIR;
use airlock_host::audit_log::{
    AuditLog, ChainRecord, ChainVerification, Checkpoint, Event, Filter, KEYS_DIR, KeyRing,
    KeySource as ChainKeySource, PUBLIC_KEY_FILE, Record, check_origin, parse_public_key,
    read_export_chains, verify_export, verify_export_chains,
};
use airlock_mcp::control::{
    AuditQuery, MAX_PAGE, MAX_QUERY, Verdict, VerifyAnswer, export_headers,
};
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
        /// Its sequence number in this host's chain, or `ORIGIN:SEQ` for
        /// another host's chain in a shared store.
        #[arg(value_name = "[ORIGIN:]SEQ")]
        seq: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole log (checkpoints and records) to a JSON-lines file
    /// that `audit verify --export` checks offline; every host's chain
    /// when the store holds several.
    Export {
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace the file if it exists (never one in the data directory).
        #[arg(long)]
        force: bool,
    },
    /// Check the hash chain and signed checkpoints of every chain in the
    /// store; name the first bad record of each.
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
    /// Approval id: its request and decision, and the calls made under it.
    #[arg(long)]
    approval_id: Option<String>,
    /// Outcome: ok, an error kind (tool_error, fuel_exhausted, ...) or unknown.
    #[arg(long)]
    outcome: Option<String>,
    /// The tool's risk class when the call was recorded.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(airlock_host::Risk::ALL.map(airlock_host::Risk::as_str)))]
    risk: Option<String>,
    /// Event, as records name it.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Event::ALL.map(Event::as_str)))]
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
    /// Verify this export file (either version) offline instead of the
    /// live log; needs --pubkey or --keys.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// The public key to trust: 64 hex digits or a file holding them (the
    /// host writes `signing.pub` in its audit directory), for this host's
    /// chain (or an export's only one); `ORIGIN=KEY` for another host's.
    /// Never taken from the export itself. Repeatable.
    #[arg(long, value_name = "[ORIGIN=]KEY")]
    pubkey: Vec<String>,
    /// A directory of origins' public keys, `<origin>.pub` (like the
    /// `keys/` of a host's audit directory), for an export's chains.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
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

/// The configured store's audit log, read-only, opened here (with sled,
/// waiting up to `wait_ms` for another process to release it).
fn open_local(settings: &Settings, wait_ms: u64) -> anyhow::Result<AuditLog> {
    let config = crate::host_config(settings, crate::Calls::Recorded);
    Ok(airlock_host::open_audit_read_only(
        &config,
        Duration::from_millis(wait_ms),
    )?)
}

/// Whether the configured store is the data directory's sled store (one
/// process at a time; reached through a running server).
fn is_sled(settings: &Settings) -> bool {
    matches!(settings.store.store, airlock_host::StoreConfig::Sled)
}

/// The log: opened here, or read through the server that holds it.
pub(crate) enum Log {
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
    pub(crate) async fn open(settings: &Settings) -> Result<Log, Failure> {
        Ok(
            match open_or_reach(settings, |wait| open_local(settings, wait)).await? {
                Source::Local(log) => Log::Local(log),
                Source::Server(control) => Log::Server(control),
            },
        )
    }

    /// The store's origins when it holds chains of other hosts than this
    /// one (a shared store); `None` when only this host's chain is there,
    /// printed as it always was.
    pub(crate) fn chains(&self) -> Result<Option<Vec<String>>, Failure> {
        match self {
            Log::Local(log) => {
                let origins = log.origins()?;
                if origins.iter().all(|o| o == log.origin()) {
                    Ok(None)
                } else {
                    Ok(Some(origins))
                }
            }
            // A server holds the data directory's sled store: one chain.
            Log::Server(_) => Ok(None),
        }
    }

    pub(crate) async fn query(&self, query: &AuditQuery) -> Result<Vec<Record>, Failure> {
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
        AuditCommand::Show { seq, json } => show(settings, &seq, json).await,
        AuditCommand::Export { out, force } => {
            crate::outfile::check(settings, &out, force)?;
            export(settings, &out).await
        }
        AuditCommand::Verify(args) => verify(settings, &args).await,
    }
}

/// Every chain's head: origin → its last record's seq.
fn heads(log: &AuditLog) -> Result<BTreeMap<String, u64>, Failure> {
    let mut heads = BTreeMap::new();
    for origin in log.origins()? {
        let head = log
            .store()
            .head(&origin)
            .map_err(|e| airlock_host::audit_log::Error::from_store(log.path(), &e))?
            .map_or(0, |(seq, _)| seq);
        heads.insert(origin, head);
    }
    Ok(heads)
}

/// Refuse a count of records past what a query returns ([`MAX_QUERY`]),
/// or under `least`, before anything is opened.
fn check_count(flag: &str, count: usize, least: usize) -> Result<(), Failure> {
    if (least..=MAX_QUERY).contains(&count) {
        return Ok(());
    }
    Err(Failure::usage(anyhow::anyhow!(
        "{flag} must be {least} to {MAX_QUERY} (`airlock audit export` writes the whole log)"
    )))
}

async fn tail(settings: &Settings, lines: usize, follow: bool, json: bool) -> Result<u8, Failure> {
    check_count("--lines", lines, 0)?;
    let log = Log::open(settings).await?;
    if let Log::Local(shared) = &log
        && !is_sled(settings)
    {
        return tail_shared(shared, lines, follow, json).await;
    }
    let mut last = {
        let newest = AuditQuery {
            limit: lines,
            ..AuditQuery::default()
        };
        // None asked for: nothing to ask (a server refuses a query of 0).
        if lines > 0 {
            for record in &log.query(&newest).await? {
                print_record(None, record, json);
            }
        }
        log.head().await?
    };
    drop(log);
    if !follow {
        return Ok(exit::OK);
    }
    // The database admits one process at a time: open it briefly on each
    // poll so hosts can keep appending in between; while a server holds
    // it, ask the server.
    let mut told_busy = false;
    let mut server: Option<Control> = None;
    // Until a record cannot be shown: whoever read the output is gone.
    while !crate::stdout::closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(control) = &server {
            match records_after(control, last).await {
                Ok(records) => {
                    for record in records {
                        last = record.seq;
                        print_record(None, &record, json);
                    }
                    continue;
                }
                // The server stopped: back to the database.
                Err(_) => server = None,
            }
        }
        match open_local(settings, 0) {
            Ok(log) => {
                told_busy = false;
                for record in log.records(last + 1) {
                    let record = record?;
                    last = record.seq;
                    print_record(None, &record, json);
                }
            }
            Err(e)
                if matches!(
                    e.downcast_ref::<airlock_host::Error>(),
                    Some(airlock_host::Error::Audit(
                        airlock_host::audit_log::Error::Locked { .. }
                    ))
                ) =>
            {
                server = Control::find(settings).await;
                if server.is_none() && !told_busy {
                    eprintln!(
                        "note: the audit log is held by a running airlock process; waiting for it"
                    );
                    told_busy = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(exit::OK)
}

/// `tail` over a shared store: every chain, merged by time; each record
/// names its origin when there is more than this host's chain.
async fn tail_shared(
    log: &AuditLog,
    lines: usize,
    follow: bool,
    json: bool,
) -> Result<u8, Failure> {
    let mut after = heads(log)?;
    let many = |log: &AuditLog| -> Result<bool, Failure> {
        Ok(log.origins()?.iter().any(|o| o != log.origin()))
    };
    let show_origin = many(log)?;
    for ChainRecord { origin, record } in log.query_all(&Filter::default(), lines)? {
        let seen = after.entry(origin.clone()).or_default();
        *seen = (*seen).max(record.seq);
        print_record(show_origin.then_some(&origin), &record, json);
    }
    if !follow {
        return Ok(exit::OK);
    }
    // No lock: the store stays open, and new chains join as they appear.
    while !crate::stdout::closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let show_origin = many(log)?;
        let fresh: Vec<ChainRecord> = log.records_all(&after)?.collect::<Result<_, _>>()?;
        for ChainRecord { origin, record } in fresh {
            after.insert(origin.clone(), record.seq);
            print_record(show_origin.then_some(&origin), &record, json);
        }
    }
    Ok(exit::OK)
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
    check_count("--limit", args.limit, 1)?;
    let event = match &args.event {
        None => None,
        Some(name) => Some(
            serde_json::from_value::<Event>(json!(name))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "unknown event {name:?}: expected one of {}",
                        Event::ALL.map(Event::as_str).join(", ")
                    )
                })
                .map_err(Failure::usage)?,
        ),
    };
    if let Some(outcome) = &args.outcome
        && outcome != "ok"
        && outcome != airlock_host::audit_log::OUTCOME_UNKNOWN
        && !airlock_host::CALL_ERROR_KINDS.contains(&outcome.as_str())
    {
        return Err(Failure::usage(anyhow::anyhow!(
            "unknown outcome {outcome:?}: expected ok, unknown or an error kind ({})",
            airlock_host::CALL_ERROR_KINDS.join(", ")
        )));
    }
    let query = AuditQuery {
        plugin: args.plugin.clone(),
        tool: args.tool.clone(),
        principal: args.principal.clone(),
        trace_id: args.trace_id.clone(),
        call_id: args.call_id.clone(),
        approval_id: args.approval_id.clone(),
        outcome: args.outcome.clone(),
        risk: args.risk.clone(),
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
    if let (Log::Local(shared), Some(_)) = (&log, log.chains()?) {
        for ChainRecord { origin, record } in shared.query_all(&query.filter(), query.limit)? {
            print_record(Some(&origin), &record, args.json);
        }
        return Ok(exit::OK);
    }
    for record in log.query(&query).await? {
        print_record(None, &record, args.json);
    }
    Ok(exit::OK)
}

/// `SEQ` or `ORIGIN:SEQ`.
fn parse_record_ref(text: &str) -> Result<(Option<String>, u64), Failure> {
    let bad = || {
        Failure::usage(anyhow::anyhow!(
            "invalid record {text:?}: a sequence number (17) or ORIGIN:SEQ (host-a:17)"
        ))
    };
    let (origin, seq) = match text.rsplit_once(':') {
        Some((origin, seq)) => {
            check_origin(origin).map_err(|e| Failure::usage(e.into()))?;
            (Some(origin.to_owned()), seq)
        }
        None => (None, text),
    };
    Ok((origin, seq.parse().map_err(|_| bad())?))
}

async fn show(settings: &Settings, text: &str, json: bool) -> Result<u8, Failure> {
    let (origin, seq) = parse_record_ref(text)?;
    let own = &settings.store.origin;
    let log = Log::open(settings).await?;
    let (label, record) = match (&origin, &log) {
        (Some(origin), Log::Local(shared)) if origin != shared.origin() => {
            let store = shared.store();
            let failed = |e: airlock_host::store::StoreError| {
                airlock_host::audit_log::Error::from_store(shared.path(), &e)
            };
            let found = store.record(origin, seq).map_err(failed)?;
            let Some(bytes) = found else {
                let head = store.head(origin).map_err(failed)?.map(|(seq, _)| seq);
                return Err(Failure::usage(match head {
                    Some(head) => anyhow::anyhow!(
                        "no record {origin}:{seq}: the chain of {origin} holds records 1 to {head}"
                    ),
                    None => anyhow::anyhow!(
                        "no chain of origin {origin:?} in the store (origins: {})",
                        shared.origins()?.join(", ")
                    ),
                }));
            };
            let record: Record = serde_json::from_slice(&bytes)
                .with_context(|| format!("record {origin}:{seq} in the store is not a record"))?;
            (format!("{origin}:{seq}"), record)
        }
        (Some(origin), Log::Server(_)) if origin != own => {
            return Err(Failure::usage(anyhow::anyhow!(
                "no chain of origin {origin:?} here: the data directory's sled store holds this host's chain only ({own})"
            )));
        }
        _ => {
            let (Some(record), _) = log.get(seq).await? else {
                let head = log.head().await?;
                return Err(Failure::usage(anyhow::anyhow!(
                    "no record {seq}: the log holds records 1 to {head}"
                )));
            };
            (seq.to_string(), record)
        }
    };
    let value = serde_json::to_value(&record).context("cannot serialize the record")?;
    if json {
        print_json(&value);
        return Ok(exit::OK);
    }
    if let Some(map) = value.as_object() {
        outln!("record {label} at {}", format_time(record.time_ms));
        for (key, item) in map {
            if key == "time_ms" || key == "seq" {
                continue;
            }
            // Guest and caller text (reasons, logs, arguments, principal,
            // trace id) is escaped: it must not drive the terminal.
            let key = escape(key);
            match item {
                serde_json::Value::String(s) => outln!("  {key:<18} {}", escape(s)),
                other => outln!("  {key:<18} {}", escape(&other.to_string())),
            }
        }
    }
    Ok(exit::OK)
}

async fn export(settings: &Settings, out: &Path) -> Result<u8, Failure> {
    let log = Log::open(settings).await?;
    if let (Log::Local(shared), Some(_)) = (&log, log.chains()?) {
        let chains = shared
            .export_all(out)
            .with_context(|| format!("cannot export to {}", out.display()))?;
        outln!(
            "exported {} chains (export version 2) to {}",
            chains.len(),
            out.display()
        );
        for chain in &chains {
            outln!(
                "  {}: {} records, public key {}",
                chain.origin,
                chain.records,
                chain
                    .public_key
                    .as_deref()
                    .unwrap_or("none (no checkpoint yet)")
            );
        }
        outln!(
            "verify with: airlock audit verify --export {} --keys {}",
            out.display(),
            audit_dir(settings).join(KEYS_DIR).display()
        );
        return Ok(exit::OK);
    }
    let (records, checkpoints, public_key) = log.export(out).await?;
    outln!(
        "exported {records} records and {checkpoints} checkpoints to {}",
        out.display()
    );
    outln!("public key: {public_key}");
    outln!(
        "verify with: airlock audit verify --export {} --pubkey {}",
        out.display(),
        audit_dir(settings).join(PUBLIC_KEY_FILE).display()
    );
    Ok(exit::OK)
}

/// `--pubkey` values: keys for named origins, and the one for "this
/// chain" (the host's own, or an export's only one).
#[derive(Default)]
struct GivenKeys {
    unnamed: Option<[u8; 32]>,
    named: BTreeMap<String, [u8; 32]>,
}

impl GivenKeys {
    fn parse(args: &[String]) -> Result<GivenKeys, Failure> {
        let mut keys = GivenKeys::default();
        for arg in args {
            let named = arg
                .split_once('=')
                .filter(|(origin, _)| check_origin(origin).is_ok() && !Path::new(arg).is_file());
            let (origin, text) = match named {
                Some((origin, text)) => (Some(origin), text),
                None => (None, arg.as_str()),
            };
            let key = *parse_public_key(text)
                .map_err(|e| Failure::usage(e.into()))?
                .as_bytes();
            match origin {
                Some(origin) => {
                    keys.named.insert(origin.to_owned(), key);
                }
                None if keys.unnamed.is_some() => {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "--pubkey given twice without an origin: name the others' (--pubkey ORIGIN=KEY)"
                    )));
                }
                None => keys.unnamed = Some(key),
            }
        }
        Ok(keys)
    }

    /// The key for `origin`, when `origin` is "this chain" for an unnamed one.
    fn for_origin(&self, origin: &str, this: bool) -> Option<[u8; 32]> {
        self.named
            .get(origin)
            .copied()
            .or(if this { self.unnamed } else { None })
    }

    /// A key ring of these keys (the unnamed one for `this`), and the
    /// key files in `dir`.
    fn ring(&self, this: Option<&str>, dir: Option<&Path>) -> Result<KeyRing, Failure> {
        let mut ring = KeyRing::new();
        if let Some(dir) = dir {
            ring = ring.with_dir(dir);
        }
        let verifying = |key: &[u8; 32]| {
            parse_public_key(&hex::encode(key)).map_err(|e| Failure::from(anyhow::Error::from(e)))
        };
        for (origin, key) in &self.named {
            ring.insert(origin.clone(), verifying(key)?);
        }
        if let (Some(key), Some(this)) = (&self.unnamed, this) {
            ring.insert(this.to_owned(), verifying(key)?);
        }
        Ok(ring)
    }
}

/// The checkpoints of every `--trusted` export (either version), by origin.
fn trusted_checkpoints(files: &[PathBuf]) -> Result<Vec<(String, Vec<Checkpoint>)>, Failure> {
    let mut out = Vec::new();
    for file in files {
        let chains = read_export_chains(file)
            .with_context(|| format!("cannot read trusted checkpoints from {}", file.display()))
            .map_err(Failure::usage)?;
        for chain in chains {
            out.push((chain.origin, chain.checkpoints));
        }
    }
    Ok(out)
}

/// An export's version, from its header line.
fn export_version(file: &Path) -> Result<u64, Failure> {
    let opened = std::fs::File::open(file)
        .with_context(|| format!("cannot read {}", file.display()))
        .map_err(Failure::usage)?;
    let mut first = String::new();
    // The header is a short line; a file that never ends one is not read
    // whole.
    airlock_host::store::file::read_line_capped(
        &mut std::io::BufReader::new(opened),
        &mut first,
        1024 * 1024,
    )
    .with_context(|| format!("cannot read {}", file.display()))
    .map_err(Failure::usage)?;
    let header: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
    // A file that is no export is refused, naming its line, by the reader.
    Ok(header
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

async fn verify(settings: &Settings, args: &VerifyArgs) -> Result<u8, Failure> {
    let given = GivenKeys::parse(&args.pubkey)?;
    let trusted_files = trusted_checkpoints(&args.trusted)?;
    if let Some(file) = &args.export {
        return verify_offline(file, &given, args, &trusted_files);
    }
    if args.keys.is_some() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--keys is for --export: a live store's keys are read from {}",
            audit_dir(settings).join(KEYS_DIR).display()
        )));
    }
    let own = settings.store.origin.clone();
    let log = Log::open(settings).await?;
    if let (Log::Local(shared), Some(_)) = (&log, log.chains()?) {
        let mut trusted: BTreeMap<String, Vec<Checkpoint>> = BTreeMap::new();
        for (origin, checkpoints) in trusted_files {
            trusted.entry(origin).or_default().extend(checkpoints);
        }
        let ring = given.ring(Some(shared.origin()), Some(&shared.path().join(KEYS_DIR)))?;
        let chains = shared.verify_all_with(&ring, &trusted)?;
        let what = format!("the {} store", settings.store.store.backend());
        return Ok(report_chains(
            &what,
            shared.origin(),
            shared.path(),
            &chains,
            args.json,
        ));
    }
    // This host's chain alone: the trusted checkpoints of its origin (or
    // of an export's only chain, whatever it calls itself).
    let single = trusted_files.len() == 1;
    let trusted: Vec<Checkpoint> = trusted_files
        .into_iter()
        .filter(|(origin, _)| single || *origin == own)
        .flat_map(|(_, checkpoints)| checkpoints)
        .collect();
    let (path, live_key, verdict) = log.verify(&trusted).await?;
    let source = match given.for_origin(&own, true) {
        Some(key) => {
            if key != live_key {
                return Err(Failure::from(anyhow::anyhow!(
                    "the live log is signed with key {}, not the one given",
                    hex::encode(live_key)
                )));
            }
            KeySource::Given(live_key)
        }
        None => KeySource::BesideTheLog(live_key, Path::new(&path).join(PUBLIC_KEY_FILE)),
    };
    report(&path, &source, &verdict, args.json);
    Ok(verdict_code(&verdict))
}

fn verdict_code(verdict: &Verdict) -> u8 {
    match verdict {
        Verdict::Passed { .. } => exit::OK,
        Verdict::Failed { .. } => exit::VERIFY_FAILED,
    }
}

/// `audit verify --export FILE`: a version 1 file with its key given is
/// checked and printed as it always was; otherwise every chain of the
/// file against its key (`--pubkey ORIGIN=KEY`, `--keys DIR`, else the key
/// the file names, reported as unvouched).
fn verify_offline(
    file: &Path,
    given: &GivenKeys,
    args: &VerifyArgs,
    trusted_files: &[(String, Vec<Checkpoint>)],
) -> Result<u8, Failure> {
    if given.unnamed.is_none() && given.named.is_empty() && args.keys.is_none() {
        bail_usage(
            "--export needs --pubkey (or --keys DIR of <origin>.pub files): the key to trust is never taken from the file",
        )?;
    }
    let chains = read_export_chains(file).map_err(|e| Failure::usage(e.into()))?;
    // What the file lacks fails the check, not only what it holds wrong:
    // a chain whose key the reviewer brought must be there (removed, or
    // renamed to fall back to a key of the file's own, it passed), and a
    // file of no chain verifies nothing.
    let mut missing: Vec<String> = given
        .named
        .keys()
        .filter(|origin| !chains.iter().any(|c| &c.origin == *origin))
        .map(|origin| {
            format!("no chain of origin {origin} in the export, though its key was given (--pubkey {origin}=…): it was removed or renamed")
        })
        .collect();
    if chains.is_empty() {
        missing.push("the export holds no chain: nothing was verified".to_owned());
    }
    if !missing.is_empty() {
        if args.json {
            print_json(
                &json!({"ok": false, "log": file.display().to_string(), "problems": missing}),
            );
        } else {
            for problem in &missing {
                outln!("FAILED: {}", escape(problem));
            }
        }
        return Ok(exit::VERIFY_FAILED);
    }
    let only = match chains.as_slice() {
        [chain] => Some(chain.origin.clone()),
        _ => None,
    };
    if given.unnamed.is_some() && only.is_none() {
        bail_usage(
            "this export holds several chains: name each key's origin (--pubkey ORIGIN=KEY) or give --keys DIR",
        )?;
    }
    if export_version(file)? == 1
        && let Some(origin) = &only
        && let Some(key) = given.for_origin(origin, true)
    {
        let trusted: Vec<Checkpoint> = trusted_files
            .iter()
            .filter(|(o, _)| trusted_files.len() == 1 || o == origin)
            .flat_map(|(_, checkpoints)| checkpoints.iter().cloned())
            .collect();
        let verifying =
            parse_public_key(&hex::encode(key)).map_err(|e| Failure::usage(e.into()))?;
        let verdict = Verdict::from(&verify_export(file, &verifying, &trusted)?);
        report(
            &file.display().to_string(),
            &KeySource::Given(key),
            &verdict,
            args.json,
        );
        return Ok(verdict_code(&verdict));
    }
    let mut trusted: BTreeMap<String, Vec<Checkpoint>> = BTreeMap::new();
    for (origin, checkpoints) in trusted_files {
        trusted
            .entry(origin.clone())
            .or_default()
            .extend(checkpoints.iter().cloned());
    }
    let ring = given.ring(only.as_deref(), args.keys.as_deref())?;
    let results = verify_export_chains(file, &ring, &trusted)?;
    let what = file.display().to_string();
    Ok(report_chains(&what, "", Path::new(""), &results, args.json))
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
            KeySource::Given(_) => outln!("key: {} (given with --pubkey)", key.hex()),
            KeySource::BesideTheLog(_, path) => {
                outln!(
                    "key: {} (stored beside the log: {})",
                    key.hex(),
                    path.display()
                );
                outln!("warning: {BESIDE_THE_LOG_WARNING}");
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
            outln!("ok: {records} records, {checkpoints} checkpoints verified ({what})");
            if let Some(head) = head_hash {
                outln!("head: {head}");
            }
            if *unsigned_tail > 0 {
                outln!(
                    "note: the last {unsigned_tail} records are not covered by a checkpoint yet (signed every few seconds and at shutdown)"
                );
            }
        }
        (Verdict::Failed { seq, problem, .. }, false) => {
            outln!("FAILED at record {seq}: {problem}")
        }
    }
}

const UNVOUCHED_WARNING: &str = "no key was given or found for this chain: its checkpoints were checked against the key they name themselves, which proves integrity only against someone who could not rewrite the chain and its checkpoints together; put the host's key in keys/<origin>.pub (or give --pubkey ORIGIN=KEY) from a copy kept out of band";

/// Whether a chain's key is one someone vouched for.
fn vouched(source: &ChainKeySource) -> bool {
    matches!(
        source,
        ChainKeySource::Given | ChainKeySource::Own | ChainKeySource::File { .. }
    )
}

/// One chain's verification as JSON: `origin`, `ok`, `key` (`public_key`,
/// `source`, `vouched`, and `path` or `warning`), then `report` or
/// `failure`.
fn chain_json(chain: &ChainVerification, audit_dir: &Path) -> serde_json::Value {
    let mut key = serde_json::to_value(&chain.key_source).unwrap_or_else(|_| json!({}));
    if let Some(map) = key.as_object_mut() {
        map.insert("public_key".into(), json!(chain.public_key));
        map.insert("vouched".into(), json!(vouched(&chain.key_source)));
        match &chain.key_source {
            ChainKeySource::Own => {
                map.insert(
                    "path".into(),
                    json!(audit_dir.join(PUBLIC_KEY_FILE).display().to_string()),
                );
            }
            ChainKeySource::Named | ChainKeySource::None => {
                map.insert("warning".into(), json!(UNVOUCHED_WARNING));
            }
            ChainKeySource::Given | ChainKeySource::File { .. } => {}
        }
    }
    match &chain.result {
        Ok(report) => json!({"origin": chain.origin, "ok": true, "key": key, "report": report}),
        Err(failure) => {
            json!({"origin": chain.origin, "ok": false, "key": key, "failure": failure})
        }
    }
}

/// Print the verification of every chain; the exit code.
fn report_chains(
    what: &str,
    own: &str,
    audit_dir: &Path,
    chains: &[ChainVerification],
    json: bool,
) -> u8 {
    let failed: Vec<&str> = chains
        .iter()
        .filter(|c| c.result.is_err())
        .map(|c| c.origin.as_str())
        .collect();
    let code = if failed.is_empty() {
        exit::OK
    } else {
        exit::VERIFY_FAILED
    };
    if json {
        let items: Vec<_> = chains.iter().map(|c| chain_json(c, audit_dir)).collect();
        print_json(&json!({"ok": failed.is_empty(), "log": what, "chains": items}));
        return code;
    }
    for chain in chains {
        let me = if chain.origin == own {
            " (this host)"
        } else {
            ""
        };
        match &chain.result {
            Ok(report) => outln!(
                "chain {}{me}: ok: {} records, {} checkpoints verified",
                chain.origin,
                report.records,
                report.checkpoints
            ),
            Err(failure) => outln!(
                "chain {}{me}: FAILED at record {}:{}: {}",
                chain.origin,
                chain.origin,
                failure.seq,
                failure.problem
            ),
        }
        let key = chain.public_key.as_deref().unwrap_or("none");
        match &chain.key_source {
            ChainKeySource::Given => outln!("  key: {key} (given with --pubkey)"),
            ChainKeySource::Own => outln!(
                "  key: {key} (this host's own: {})",
                audit_dir.join(PUBLIC_KEY_FILE).display()
            ),
            ChainKeySource::File { path } => outln!("  key: {key} ({})", path.display()),
            ChainKeySource::Named => {
                outln!("  key: {key} (UNVOUCHED: named by the chain's own checkpoints)")
            }
            ChainKeySource::None => {
                outln!("  key: none (UNVOUCHED: no checkpoints; links and hashes checked only)")
            }
        }
        if let Ok(report) = &chain.result {
            if let Some(head) = &report.head_hash {
                outln!("  head: {head}");
            }
            if report.unsigned_tail > 0 {
                outln!(
                    "  note: the last {} records are not covered by a checkpoint yet (signed every few seconds and at shutdown)",
                    report.unsigned_tail
                );
            }
        }
    }
    if chains.iter().any(|c| !vouched(&c.key_source)) {
        outln!("warning: {UNVOUCHED_WARNING}");
    }
    if failed.is_empty() {
        outln!("ok: {} chains verified ({what})", chains.len());
    } else {
        outln!(
            "FAILED: {} of {} chains ({}) in {what}",
            failed.len(),
            chains.len(),
            failed.join(", ")
        );
    }
    code
}

/// One record on a line; with `origin` (several chains), its origin too:
/// a JSON field, or `ORIGIN:SEQ` in place of the sequence number.
fn print_record(origin: Option<&String>, record: &Record, json: bool) {
    if json {
        let Some(origin) = origin else {
            outln!(
                "{}",
                crate::terminal::json_text(
                    serde_json::to_string(record).unwrap_or_else(|_| "{}".into())
                )
            );
            return;
        };
        let mut value = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
        if let Some(map) = value.as_object_mut() {
            map.insert("origin".into(), json!(origin));
        }
        outln!("{}", crate::terminal::json_text(value.to_string()));
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
    let seq = match origin {
        Some(origin) => format!("{origin}:{}", record.seq),
        None => record.seq.to_string(),
    };
    let mut line = format!(
        "{:>6}  {}  {:<13}  {:<24}  {:<10}",
        seq,
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
    outln!("{line}");
}

fn format_time(ms: u64) -> String {
    airlock_host::clock::rfc3339_millis(ms)
}

/// RFC 3339 (`2026-11-23T10:00:00Z`, date alone allowed) or an age before
/// now (`15m`, `2h`, `7d`).
pub(crate) fn parse_time(text: &str) -> anyhow::Result<u64> {
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
        // An age before the epoch (or past what the clock can hold) is
        // the epoch: every record is after it.
        return Ok(SystemTime::now().checked_sub(age).map_or(0, to_ms));
    }
    bail!(
        "invalid time {text:?}: use RFC 3339 (2026-11-23T10:00:00Z), a date, or an age (15m, 2h, 7d)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An age too large for the clock (humantime takes up to `u64::MAX`
    /// seconds) is the epoch, not a panic.
    #[test]
    fn an_age_past_the_epoch_is_the_epoch() {
        for age in ["300000000000y", "18446744073709551615s", "60y"] {
            assert_eq!(parse_time(age).unwrap(), 0, "{age}");
        }
        assert!(parse_time("15m").unwrap() > 0);
    }

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
