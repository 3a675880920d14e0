//! `airlock approvals` and `airlock mode`: the human side of the pipeline.

use airlock_host::store::{Approval, ApprovalKind, ApprovalState, Mode};
use airlock_host::{Host, Verdict};
use airlock_mcp::control::{DecideRequest, ModeRequest};
use clap::Subcommand;
use serde::Deserialize;
use serde_json::json;

use crate::config::Settings;
use crate::control::{Control, Source, open_or_reach};
use crate::remote::{Remote, encode};
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
    /// (`https://airlock.example.com`), e.g. from another machine (on the
    /// server's machine the commands reach it without a URL, through its
    /// control socket). Needs your approver token (AIRLOCK_APPROVER_TOKEN).
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
    /// Approve although some argument values cannot be shown (redacted
    /// before they were stored, or cut at the audit copy's size cap: see
    /// `airlock approvals show`). The tool receives them as the caller
    /// sent them; without this flag such an approval is refused.
    #[arg(long)]
    unseen: bool,
    /// Your approver token (prefer the AIRLOCK_APPROVER_TOKEN environment
    /// variable: command lines are visible to other users).
    #[arg(long, env = "AIRLOCK_APPROVER_TOKEN", hide_env_values = true)]
    token: String,
}

/// The ledger: a host on the data directory, or the server that holds it.
enum Ledger {
    Local(Box<Host>),
    Server(Control),
}

#[derive(Deserialize)]
struct ApprovalList {
    approvals: Vec<Approval>,
}

#[derive(Deserialize)]
struct OneApproval {
    approval: Approval,
}

impl Ledger {
    async fn open(settings: &Settings) -> Result<Ledger, Failure> {
        let open = |wait| {
            let mut audit = settings.audit.clone();
            audit.lock_wait_ms = wait;
            Ok(Host::new(
                host_config(settings, Calls::Recorded).audit(audit),
            )?)
        };
        Ok(match open_or_reach(settings, open).await? {
            Source::Local(host) => Ledger::Local(Box::new(host)),
            Source::Server(control) => Ledger::Server(control),
        })
    }

    async fn list(&self, all: bool) -> Result<Vec<Approval>, Failure> {
        match self {
            Ledger::Local(host) => Ok(host.approvals((!all).then_some(ApprovalState::Pending))?),
            Ledger::Server(control) => Ok(control
                .json::<ApprovalList>("GET", &format!("/v1/approvals?all={all}"), None)
                .await?
                .approvals),
        }
    }

    async fn show(&self, id: &str) -> Result<Approval, Failure> {
        let missing = || Failure::usage(anyhow::anyhow!("no approval {id}"));
        match self {
            Ledger::Local(host) => host.approval(id)?.ok_or_else(missing),
            Ledger::Server(control) => Ok(control
                .json::<OneApproval>("GET", &format!("/v1/approvals/{}", encode(id)), None)
                .await?
                .approval),
        }
    }

    async fn decide(&self, d: &Decision, approve: bool) -> Result<Approval, Failure> {
        let approver = d.approver.as_deref().unwrap_or_default();
        match self {
            Ledger::Local(host) => {
                let verdict = Verdict::from_answers(approve, d.unseen);
                match host
                    .decide(&d.id, approver, &d.token, verdict, d.reason.as_deref())
                    .await
                {
                    Err(error @ airlock_host::Error::UnseenArguments { .. }) => Err(Failure {
                        code: exit::REFUSED,
                        error: anyhow::anyhow!("{error} (add --unseen)"),
                    }),
                    decided => Ok(decided?),
                }
            }
            Ledger::Server(control) => {
                let request = DecideRequest {
                    approve,
                    unseen: d.unseen,
                    approver: approver.to_owned(),
                    token: d.token.clone(),
                    reason: d.reason.clone(),
                };
                Ok(control
                    .json::<OneApproval>(
                        "POST",
                        &format!("/v1/approvals/{}", encode(&d.id)),
                        Some(json!(request)),
                    )
                    .await?
                    .approval)
            }
        }
    }
}

/// One approval in full. Every field but the state and times is someone
/// else's text (the caller's reason and arguments, the plugin's names, a
/// server's answer): escaped, so it cannot move the cursor or forge lines.
fn print_approval(a: &Approval) {
    outln!("{}  {}", escape(&a.id), a.state.as_str());
    match a.kind {
        ApprovalKind::Call => outln!(
            "  tool        {}/{} ({}){}",
            escape(&a.plugin),
            escape(&a.tool),
            escape(&a.risk),
            a.plugin_version
                .as_deref()
                .map(|v| format!(", version {}", escape(v)))
                .unwrap_or_default()
        ),
        ApprovalKind::PluginUpgrade => outln!(
            "  upgrade     plugin {} to a version that asks for more (see arguments: widens)",
            escape(&a.plugin)
        ),
    }
    outln!("  asked by    {}", escape(&a.principal));
    if let Some(reason) = &a.caller_reason {
        outln!("  because     {}", escape(reason));
    }
    outln!("  arguments   {}", escape(&a.args));
    if a.args_truncated {
        outln!("              {}", truncation_mark(a));
    }
    if let Some(hidden) = airlock_host::unseen_arguments(a) {
        // The tool receives what is not shown: approving says so.
        outln!(
            "  unseen      {hidden}{}",
            if a.state == ApprovalState::Pending {
                "; approving it takes --unseen"
            } else {
                ""
            }
        );
    }
    if let Some(key) = &a.idempotency_key {
        outln!("  idem. key   {}", escape(key));
    }
    outln!("  expires     {}", time(a.expires_ms));
    if let Some(by) = &a.decided_by {
        outln!(
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
    airlock_host::clock::rfc3339_seconds(ms)
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
    if let ApprovalsCommand::Approve(d) | ApprovalsCommand::Reject(d) = &command
        && d.token.trim().is_empty()
    {
        return Err(Failure::usage(anyhow::anyhow!(
            "approving needs your approver token in AIRLOCK_APPROVER_TOKEN"
        )));
    }
    let ledger = Ledger::open(settings).await?;
    match command {
        ApprovalsCommand::List { all, json, .. } => {
            print_list(&ledger.list(all).await?, all, json);
        }
        ApprovalsCommand::Show { id, json, .. } => {
            print_one(&ledger.show(&id).await?, json);
        }
        ApprovalsCommand::Approve(ref d) | ApprovalsCommand::Reject(ref d) => {
            let approve = matches!(command, ApprovalsCommand::Approve(_));
            print_approval(&ledger.decide(d, approve).await?);
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
            let answer = remote
                .decide(&d.id, approve, d.unseen, d.reason.as_deref())
                .await?;
            print_approval(&approval(parse(answer, "approval")?)?);
        }
    }
    Ok(exit::OK)
}

fn print_list(list: &[Approval], all: bool, json: bool) {
    if json {
        print_json(&json!({ "approvals": list }));
    } else if list.is_empty() {
        outln!("no {}approval requests", if all { "" } else { "pending " });
    } else {
        for a in list {
            let reason = a
                .caller_reason
                .as_deref()
                .map(|r| format!("  because {}", short(r, 60)))
                .unwrap_or_default();
            let what = match a.kind {
                ApprovalKind::Call => format!("{}/{}", escape(&a.plugin), escape(&a.tool)),
                ApprovalKind::PluginUpgrade => format!("upgrade of {}", escape(&a.plugin)),
            };
            outln!(
                "{}  {:<9} {what}  by {}  expires {}{reason}",
                escape(&a.id),
                a.state.as_str(),
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

#[derive(Deserialize)]
struct ModeAnswer {
    mode: Option<Mode>,
}

/// Switch through the running server when one holds the data directory
/// (it records the switch in the audit log at once); else by writing the
/// mode file: a host sees it at its next call and records it then.
pub(crate) async fn mode(settings: &Settings, command: ModeCommand) -> Result<u8, Failure> {
    let server = Control::find(settings).await;
    let (read_only, reason, by) = match command {
        ModeCommand::Show => {
            let mode = match &server {
                Some(control) => {
                    control
                        .json::<ModeAnswer>("GET", "/v1/mode", None)
                        .await?
                        .mode
                }
                None => read_mode_file(settings)?,
            };
            print_mode(mode.as_ref());
            return Ok(exit::OK);
        }
        ModeCommand::ReadOnly { reason, by } => (true, reason, by),
        ModeCommand::Normal { reason, by } => (false, reason, by),
    };
    let by = by.unwrap_or_else(|| settings.principal.clone());
    let name = if read_only { "read-only" } else { "normal" };
    if let Some(control) = server {
        let request = ModeRequest {
            read_only,
            by,
            reason,
        };
        control
            .json::<ModeAnswer>("POST", "/v1/mode", Some(json!(request)))
            .await?;
        outln!("host mode: {name} (recorded in the audit log by the running server)");
        return Ok(exit::OK);
    }
    let mode = Mode {
        read_only,
        id: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
        by,
        reason,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
            .unwrap_or(0),
    };
    airlock_host::open_mode(&host_config(settings, Calls::Recorded))?
        .set(&mode)
        .map_err(|e| {
            // Said first: this is the takeover path, and the store's own
            // message speaks of reads.
            let mut failure = Failure::from(mode_error(e));
            failure.error = failure.error.context(format!(
                "the host mode was NOT switched to {name}: calls go on as before"
            ));
            failure
        })?;
    outln!("host mode: {name} (recorded in the audit log by the next host to run a call)");
    Ok(exit::OK)
}

fn read_mode_file(settings: &Settings) -> Result<Option<Mode>, Failure> {
    let store = airlock_host::open_mode(&host_config(settings, Calls::Recorded))?;
    Ok(store.get().map_err(mode_error)?)
}

fn mode_error(source: airlock_host::store::StoreError) -> airlock_host::Error {
    airlock_host::StoreError::new(airlock_host::Store::Mode, source).into()
}

fn print_mode(mode: Option<&Mode>) {
    match mode {
        Some(mode) => outln!(
            "{}",
            crate::terminal::json_text(
                serde_json::to_string_pretty(mode).unwrap_or_else(|_| format!("{mode:?}"))
            )
        ),
        None => outln!("normal (never switched)"),
    }
}
