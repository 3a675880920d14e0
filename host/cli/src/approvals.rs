//! `airlock approvals` and `airlock mode`: the human side of the pipeline.

use airlock_host::Host;
use airlock_host::ledger::{Approval, ApprovalState};
use clap::Subcommand;
use serde_json::json;

use crate::config::Settings;
use crate::remote::Remote;
use crate::terminal::escape;
use crate::{Calls, Failure, exit, host_config, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Approval requests, newest first (default: pending ones).
    List {
        /// Every state, not just pending.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// One request in full: tool, redacted arguments, caller, reason, expiry.
    Show {
        /// The approval id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Approve a pending request (the caller then resumes it).
    Approve(Decision),
    /// Reject a pending request (a reason is required).
    Reject(Decision),
}

/// Where to decide: this machine's data directory, or a running server.
#[derive(Debug, clap::Args)]
pub(crate) struct Server {
    /// Use the approver endpoints of a running `airlock serve` at this URL
    /// (`http://127.0.0.1:7410`) instead of the data directory, which the
    /// server holds. Needs your approver token (AIRLOCK_APPROVER_TOKEN).
    #[arg(long, env = "AIRLOCK_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Your approver token, for --server (prefer AIRLOCK_APPROVER_TOKEN:
    /// command lines are visible to other users).
    #[arg(long = "token", env = "AIRLOCK_APPROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Server {
    fn remote(&self) -> Result<Option<Remote>, Failure> {
        match &self.server {
            None => Ok(None),
            Some(url) => Remote::new(url, self.token.as_deref().unwrap_or("")).map(Some),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct Decision {
    /// The approval id.
    id: String,
    /// Your approver name, as configured in `[[policy.approvals.approvers]]`
    /// (not with --server: the server knows you by your token).
    #[arg(
        long = "as",
        value_name = "APPROVER",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    approver: Option<String>,
    /// Use the approver endpoints of a running `airlock serve` at this URL
    /// instead of the data directory (see `airlock approvals list --help`).
    #[arg(long, env = "AIRLOCK_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Why (required to reject).
    #[arg(long)]
    reason: Option<String>,
    /// Your approver token (prefer the AIRLOCK_APPROVER_TOKEN environment
    /// variable: command lines are visible to other users).
    #[arg(long, env = "AIRLOCK_APPROVER_TOKEN", hide_env_values = true)]
    token: String,
}

fn open(settings: &Settings) -> anyhow::Result<Host> {
    Ok(Host::new(host_config(settings, Calls::Recorded))?)
}

/// One approval in full. Every field but the state and times is someone
/// else's text (the caller's reason and arguments, the plugin's names, a
/// server's answer): escaped, so it cannot move the cursor or forge lines.
fn print_approval(a: &Approval) {
    println!("{}  {}", escape(&a.id), a.state.as_str());
    println!(
        "  tool        {}/{} ({})",
        escape(&a.plugin),
        escape(&a.tool),
        escape(&a.risk)
    );
    println!("  asked by    {}", escape(&a.principal));
    if let Some(reason) = &a.caller_reason {
        println!("  because     {}", escape(reason));
    }
    println!("  arguments   {}", escape(&a.args));
    if a.args_truncated {
        println!("              {}", truncation_mark(a));
    }
    if let Some(key) = &a.idempotency_key {
        println!("  idem. key   {}", escape(key));
    }
    println!("  expires     {}", time(a.expires_ms));
    if let Some(by) = &a.decided_by {
        println!(
            "  decided     by {}{}",
            escape(by),
            a.decision_reason
                .as_deref()
                .map(|r| format!(": {}", escape(r)))
                .unwrap_or_default()
        );
    }
}

/// What an approver reads under arguments that were cut: they see a
/// prefix, and the approval covers the whole.
fn truncation_mark(a: &Approval) -> String {
    format!(
        "[arguments truncated at {} bytes — the approval binds the full arguments by digest sha256:{}]",
        a.args.len(),
        escape(&a.args_digest)
    )
}

/// At most `max` characters of `text`, escaped, with `…` where cut.
fn short(text: &str, max: usize) -> String {
    let escaped = escape(text);
    match escaped.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped.into_owned(),
    }
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub(crate) async fn run(settings: &Settings, command: ApprovalsCommand) -> Result<u8, Failure> {
    let remote = match &command {
        ApprovalsCommand::List { server, .. } | ApprovalsCommand::Show { server, .. } => {
            server.remote()?
        }
        ApprovalsCommand::Approve(d) | ApprovalsCommand::Reject(d) => match &d.server {
            Some(url) => Some(Remote::new(url, &d.token)?),
            None => None,
        },
    };
    if let Some(remote) = remote {
        return run_remote(&remote, command).await;
    }
    let host = open(settings)?;
    match command {
        ApprovalsCommand::List { all, json, .. } => {
            let list = host.approvals((!all).then_some(ApprovalState::Pending))?;
            print_list(&list, all, json);
        }
        ApprovalsCommand::Show { id, json, .. } => {
            let Some(a) = host.approval(&id)? else {
                return Err(Failure::usage(anyhow::anyhow!("no approval {id}")));
            };
            print_one(&a, json);
        }
        ApprovalsCommand::Approve(d) | ApprovalsCommand::Reject(d) if d.token.trim().is_empty() => {
            return Err(Failure::usage(anyhow::anyhow!(
                "approving needs your approver token in AIRLOCK_APPROVER_TOKEN"
            )));
        }
        ApprovalsCommand::Approve(ref d) | ApprovalsCommand::Reject(ref d) => {
            let approve = matches!(command, ApprovalsCommand::Approve(_));
            let approver = d.approver.as_deref().unwrap_or_default();
            let a = host
                .decide(&d.id, approver, &d.token, approve, d.reason.as_deref())
                .await?;
            print_approval(&a);
        }
    }
    Ok(exit::OK)
}

/// The same commands against a running server's approver endpoints.
async fn run_remote(remote: &Remote, command: ApprovalsCommand) -> Result<u8, Failure> {
    let parse = |value: serde_json::Value, field: &str| -> Result<serde_json::Value, Failure> {
        value
            .get(field)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the server's answer has no `{field}`").into())
    };
    let approval = |value: serde_json::Value| -> Result<Approval, Failure> {
        serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("the server's approval is not one: {e}").into())
    };
    match command {
        ApprovalsCommand::List { all, json, .. } => {
            let list: Vec<Approval> =
                serde_json::from_value(parse(remote.list(all).await?, "approvals")?).map_err(
                    |e| anyhow::anyhow!("the server's list is not one of approvals: {e}"),
                )?;
            print_list(&list, all, json);
        }
        ApprovalsCommand::Show { id, json, .. } => {
            let a = approval(parse(remote.show(&id).await?, "approval")?)?;
            print_one(&a, json);
        }
        ApprovalsCommand::Approve(ref d) | ApprovalsCommand::Reject(ref d) => {
            let approve = matches!(command, ApprovalsCommand::Approve(_));
            let answer = remote.decide(&d.id, approve, d.reason.as_deref()).await?;
            print_approval(&approval(parse(answer, "approval")?)?);
        }
    }
    Ok(exit::OK)
}

fn print_list(list: &[Approval], all: bool, json: bool) {
    if json {
        print_json(&json!({ "approvals": list }));
    } else if list.is_empty() {
        println!("no {}approval requests", if all { "" } else { "pending " });
    } else {
        for a in list {
            let reason = a
                .caller_reason
                .as_deref()
                .map(|r| format!("  because {}", short(r, 60)))
                .unwrap_or_default();
            println!(
                "{}  {:<9} {}/{}  by {}  expires {}{reason}",
                escape(&a.id),
                a.state.as_str(),
                escape(&a.plugin),
                escape(&a.tool),
                escape(&a.principal),
                time(a.expires_ms)
            );
        }
    }
}

fn print_one(a: &Approval, json: bool) {
    if json {
        print_json(&json!(a));
    } else {
        print_approval(a);
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModeCommand {
    /// Refuse every tool that is not `read` (human takeover).
    ReadOnly {
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        /// Who (recorded; default: the configured principal).
        #[arg(long)]
        by: Option<String>,
    },
    /// Serve every tool again.
    Normal {
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        /// Who (recorded; default: the configured principal).
        #[arg(long)]
        by: Option<String>,
    },
    /// Print the current mode.
    Show,
}

/// Switch by writing the mode file: a running host sees it at its next call
/// and records the switch in the audit log.
pub(crate) fn mode(settings: &Settings, command: ModeCommand) -> Result<u8, Failure> {
    let (read_only, reason, by) = match command {
        ModeCommand::Show => {
            let path = settings.data_dir.join(airlock_host::MODE_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => println!("{}", text.trim()),
                Err(_) => println!("normal (never switched)"),
            }
            return Ok(exit::OK);
        }
        ModeCommand::ReadOnly { reason, by } => (true, reason, by),
        ModeCommand::Normal { reason, by } => (false, reason, by),
    };
    let mode = airlock_host::Mode {
        read_only,
        id: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
        by: by.unwrap_or_else(|| settings.principal.clone()),
        reason,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
            .unwrap_or(0),
    };
    airlock_host::write_mode(&settings.data_dir, &mode)?;
    println!(
        "host mode: {} (recorded in the audit log by the next host to run a call)",
        if read_only { "read-only" } else { "normal" }
    );
    Ok(exit::OK)
}
