//! What changes between two versions of a plugin, and whether the new one
//! asks for more than the old.
//!
//! [`PluginDiff::between`] compares two loaded plugins by what they are
//! *effectively* granted (manifest ∩ operator policy) and by what their
//! tools are under the policy (its risk overrides included):
//! capabilities, HTTP origins, files, env names, limits, tools, risk,
//! approval and idempotency requirements, rate limits, and input and output
//! schemas. A change *widens* when it gives the new version more than the
//! old had — those are what make activating it need an approver's decision:
//! - a capability, origin, file grant or env name added, or widened
//!   (read-only → read-write, a broader workspace scope, another host
//!   directory behind a guest path);
//! - a limit raised;
//! - a tool added, or its risk raised (read < write < external <
//!   irreversible);
//! - an approval or idempotency requirement dropped;
//! - a rate limit loosened or dropped.
//!
//! Schema changes do not widen a grant; each is classified
//! [`Compatibility::Breaking`], [`Compatibility::Compatible`] or, when the
//! shape changed in a way this comparison does not model,
//! [`Compatibility::MayBreak`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::grants::{Capability, EffectiveGrant};
use crate::manifest::{FileAccess, Risk};
use crate::plugin::{Plugin, Tool};

/// Where a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeArea {
    /// A capability (`log`, `workspace`, ...), as effectively granted.
    Capability,
    /// An HTTP origin.
    Http,
    /// A `files` grant, by guest path.
    Files,
    /// An environment variable name the guest sees.
    Env,
    /// A limit (`fuel`, `timeout_ms`, ...).
    Limit,
    /// A tool, added or removed.
    Tool,
    /// A tool's risk class.
    Risk,
    /// A tool's approval requirement.
    Approval,
    /// A tool's idempotency requirement.
    Idempotency,
    /// A tool's rate limit.
    RateLimit,
    /// A tool's input schema.
    InputSchema,
    /// A tool's output schema.
    OutputSchema,
    /// Who signed the version (its key).
    Signer,
    /// A JSON pointer a tool's arguments and results are redacted at.
    Redaction,
    /// A tool's retries of transient host failures.
    Retry,
    /// How long an approved call of a tool stays usable.
    ApprovalExpiry,
}

impl ChangeArea {
    fn as_str(self) -> &'static str {
        match self {
            ChangeArea::Capability => "capability",
            ChangeArea::Http => "http",
            ChangeArea::Files => "files",
            ChangeArea::Env => "env",
            ChangeArea::Limit => "limit",
            ChangeArea::Tool => "tool",
            ChangeArea::Risk => "risk",
            ChangeArea::Approval => "approval",
            ChangeArea::Idempotency => "idempotency",
            ChangeArea::RateLimit => "rate limit",
            ChangeArea::InputSchema => "input schema",
            ChangeArea::OutputSchema => "output schema",
            ChangeArea::Signer => "signer",
            ChangeArea::Redaction => "redaction",
            ChangeArea::Retry => "retry",
            ChangeArea::ApprovalExpiry => "approval expiry",
        }
    }
}

/// What happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeKind {
    /// It is new.
    Added,
    /// It is gone.
    Removed,
    /// It allows more (read-only → read-write, a broader scope).
    Widened,
    /// It allows less.
    Narrowed,
    /// A number went up (a limit, a risk class, a rate).
    Raised,
    /// A number went down.
    Lowered,
    /// It is different (a schema; another directory behind a guest path).
    Changed,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Widened => "widened",
            ChangeKind::Narrowed => "narrowed",
            ChangeKind::Raised => "raised",
            ChangeKind::Lowered => "lowered",
            ChangeKind::Changed => "changed",
        }
    }
}

/// Whether callers written against the old schema still work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// They do.
    Compatible,
    /// The shape changed in a way this comparison does not model: they
    /// may not.
    MayBreak,
    /// They do not (a new required argument, a narrowed type, a result
    /// property gone, ...).
    Breaking,
}

impl Compatibility {
    fn as_str(self) -> &'static str {
        match self {
            Compatibility::Compatible => "compatible",
            Compatibility::MayBreak => "changed, may break",
            Compatibility::Breaking => "breaking",
        }
    }
}

/// One difference between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginChange {
    /// Where.
    pub area: ChangeArea,
    /// What: the capability's manifest key, the origin, the guest path, the
    /// env name, the limit, or the tool.
    pub subject: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The old value, when there was one to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The new value, when there is one to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Whether it gives the new version more than the old had.
    pub widens: bool,
    /// For schema changes: whether old callers still work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<Compatibility>,
    /// For schema changes: where in the schema, and what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl PluginChange {
    fn new(area: ChangeArea, subject: impl Into<String>, kind: ChangeKind, widens: bool) -> Self {
        PluginChange {
            area,
            subject: subject.into(),
            kind,
            from: None,
            to: None,
            widens,
            compatibility: None,
            detail: None,
        }
    }

    fn values(mut self, from: impl fmt::Display, to: impl fmt::Display) -> Self {
        self.from = Some(from.to_string());
        self.to = Some(to.to_string());
        self
    }
}

impl fmt::Display for PluginChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.area.as_str(),
            self.subject,
            self.kind.as_str()
        )?;
        match (&self.from, &self.to) {
            (Some(from), Some(to)) => write!(f, ": {from} -> {to}")?,
            (None, Some(to)) => write!(f, ": {to}")?,
            (Some(from), None) => write!(f, ": was {from}")?,
            (None, None) => {}
        }
        if let Some(compatibility) = self.compatibility {
            write!(f, " ({})", compatibility.as_str())?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// The differences between two versions of a plugin
/// ([`PluginDiff::between`]); `Display` renders it for people, `Serialize`
/// for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDiff {
    plugin: String,
    from_version: String,
    to_version: String,
    from_digest: String,
    to_digest: String,
    widens: bool,
    breaking: bool,
    changes: Vec<PluginChange>,
}

impl PluginDiff {
    /// Compare `old` with `new` (see the module documentation).
    pub fn between(old: &Plugin, new: &Plugin) -> PluginDiff {
        let mut changes = Vec::new();
        signer(old, new, &mut changes);
        grants(old, new, &mut changes);
        limits(old, new, &mut changes);
        tools(old, new, &mut changes);
        PluginDiff {
            plugin: new.name().to_owned(),
            from_version: old.version().to_owned(),
            to_version: new.version().to_owned(),
            from_digest: old.digest().to_owned(),
            to_digest: new.digest().to_owned(),
            widens: changes.iter().any(|c| c.widens),
            breaking: changes
                .iter()
                .any(|c| c.compatibility == Some(Compatibility::Breaking)),
            changes,
        }
    }

    /// The new version's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The old version.
    pub fn from_version(&self) -> &str {
        &self.from_version
    }

    /// The new version.
    pub fn to_version(&self) -> &str {
        &self.to_version
    }

    /// Every change, grants first, then limits, then tools.
    pub fn changes(&self) -> &[PluginChange] {
        &self.changes
    }

    /// The changes that give the new version more than the old had.
    pub fn widenings(&self) -> impl Iterator<Item = &PluginChange> {
        self.changes.iter().filter(|c| c.widens)
    }

    /// Whether the new version asks for more than the old: activating it
    /// needs an approver's decision.
    pub fn widens(&self) -> bool {
        self.widens
    }

    /// Whether a schema change breaks callers of the old version.
    pub fn breaking(&self) -> bool {
        self.breaking
    }

    /// Whether the two versions differ in anything compared.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for PluginDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} -> {} (sha256 {} -> {})",
            self.plugin,
            self.from_version,
            self.to_version,
            crate::audit_log::text::prefix(&self.from_digest, 12),
            crate::audit_log::text::prefix(&self.to_digest, 12),
        )?;
        if self.changes.is_empty() {
            return writeln!(f, "no changes in grants, limits or tools");
        }
        let widening = self.widenings().count();
        if widening > 0 {
            writeln!(
                f,
                "widens: yes ({widening} change{} give{} the new version more; activating it needs approval)",
                if widening == 1 { "" } else { "s" },
                if widening == 1 { "s" } else { "" }
            )?;
        } else {
            writeln!(f, "widens: no")?;
        }
        if self.breaking {
            writeln!(f, "breaking: yes (a schema change breaks existing callers)")?;
        }
        for change in &self.changes {
            let mark = if change.widens {
                "+"
            } else if change.compatibility == Some(Compatibility::Breaking) {
                "!"
            } else {
                " "
            };
            writeln!(f, "{mark} {change}")?;
        }
        Ok(())
    }
}

fn access(access: FileAccess) -> &'static str {
    match access {
        FileAccess::ReadOnly => "read-only",
        FileAccess::ReadWrite => "read-write",
    }
}

/// Added, removed or changed members of two sets.
fn set_changes(
    area: ChangeArea,
    old: &BTreeSet<String>,
    new: &BTreeSet<String>,
    out: &mut Vec<PluginChange>,
) {
    for added in new.difference(old) {
        out.push(PluginChange::new(area, added, ChangeKind::Added, true));
    }
    for removed in old.difference(new) {
        out.push(PluginChange::new(area, removed, ChangeKind::Removed, false));
    }
}

fn grants(old: &Plugin, new: &Plugin, out: &mut Vec<PluginChange>) {
    let (a, b) = (old.grant(), new.grant());
    // Presence of each capability; what each holds is compared below.
    for capability in Capability::ALL {
        let key = capability.manifest_key();
        match (a.has(capability), b.has(capability)) {
            (false, true) => out.push(PluginChange::new(
                ChangeArea::Capability,
                key,
                ChangeKind::Added,
                true,
            )),
            (true, false) => out.push(PluginChange::new(
                ChangeArea::Capability,
                key,
                ChangeKind::Removed,
                false,
            )),
            _ => {}
        }
    }
    workspace(a, b, out);
    let origins = |g: &EffectiveGrant| -> BTreeSet<String> {
        g.http
            .iter()
            .flat_map(|h| h.origins.iter().map(ToString::to_string))
            .collect()
    };
    set_changes(ChangeArea::Http, &origins(a), &origins(b), out);
    files(old, new, out);
    let env = |g: &EffectiveGrant| -> BTreeSet<String> {
        g.env.iter().map(|(name, _)| name.clone()).collect()
    };
    set_changes(ChangeArea::Env, &env(a), &env(b), out);
}

fn workspace(a: &EffectiveGrant, b: &EffectiveGrant, out: &mut Vec<PluginChange>) {
    if let (Some(from), Some(to)) = (a.workspace, b.workspace)
        && from != to
    {
        let widens = to == FileAccess::ReadWrite;
        let kind = ChangeKind::widened_if(widens);
        out.push(
            PluginChange::new(
                ChangeArea::Capability,
                "capabilities.workspace",
                kind,
                widens,
            )
            .values(access(from), access(to)),
        );
    }
    if a.workspace.is_some() && b.workspace.is_some() && a.workspace_scope != b.workspace_scope {
        // session < principal < plugin: how many callers share one set of
        // keys.
        let rank = |s: crate::workspace::KeyScope| match s {
            crate::workspace::KeyScope::Session => 0,
            crate::workspace::KeyScope::Principal => 1,
            crate::workspace::KeyScope::Plugin => 2,
        };
        let widens = rank(b.workspace_scope) > rank(a.workspace_scope);
        let kind = ChangeKind::widened_if(widens);
        out.push(
            PluginChange::new(
                ChangeArea::Capability,
                "capabilities.workspace_scope",
                kind,
                widens,
            )
            .values(a.workspace_scope.as_str(), b.workspace_scope.as_str()),
        );
    }
}

/// File grants by guest path: the access, and the host directory as the
/// manifest names it (each version's own directory is resolved inside its
/// own plugin directory, so resolved paths always differ).
fn files(old: &Plugin, new: &Plugin, out: &mut Vec<PluginChange>) {
    let by_guest = |p: &Plugin| -> BTreeMap<String, (String, FileAccess)> {
        p.grant()
            .files
            .iter()
            .map(|f| {
                let declared = p
                    .manifest()
                    .capabilities
                    .files
                    .iter()
                    .find(|d| d.guest == f.guest)
                    .map_or_else(|| f.host.display().to_string(), |d| d.host.clone());
                (f.guest.clone(), (declared, f.access))
            })
            .collect()
    };
    let (a, b) = (by_guest(old), by_guest(new));
    for (guest, (host, mode)) in &b {
        match a.get(guest) {
            None => out.push(
                PluginChange::new(ChangeArea::Files, guest, ChangeKind::Added, true)
                    .values("-", format!("{host} ({})", access(*mode))),
            ),
            Some((old_host, old_mode)) => {
                if old_host != host {
                    out.push(
                        PluginChange::new(ChangeArea::Files, guest, ChangeKind::Changed, true)
                            .values(old_host, host),
                    );
                }
                if old_mode != mode {
                    let widens = *mode == FileAccess::ReadWrite;
                    let kind = ChangeKind::widened_if(widens);
                    out.push(
                        PluginChange::new(ChangeArea::Files, guest, kind, widens)
                            .values(access(*old_mode), access(*mode)),
                    );
                }
            }
        }
    }
    for (guest, (host, mode)) in &a {
        if !b.contains_key(guest) {
            out.push(
                PluginChange::new(ChangeArea::Files, guest, ChangeKind::Removed, false)
                    .values(format!("{host} ({})", access(*mode)), "-"),
            );
        }
    }
}

fn limits(old: &Plugin, new: &Plugin, out: &mut Vec<PluginChange>) {
    let (a, b) = (old.limits(), new.limits());
    for (name, from, to) in [
        ("fuel", a.fuel, b.fuel),
        ("timeout_ms", a.timeout_ms, b.timeout_ms),
        ("memory_mb", a.memory_mb, b.memory_mb),
        ("max_output_kb", a.max_output_kb, b.max_output_kb),
        ("max_concurrency", a.max_concurrency, b.max_concurrency),
        ("workspace_keys", a.workspace_keys, b.workspace_keys),
        ("workspace_mb", a.workspace_mb, b.workspace_mb),
        ("workspace_blobs", a.workspace_blobs, b.workspace_blobs),
    ] {
        if to.value > from.value {
            out.push(
                PluginChange::new(ChangeArea::Limit, name, ChangeKind::Raised, true)
                    .values(from.value, to.value),
            );
        } else if to.value < from.value {
            out.push(
                PluginChange::new(ChangeArea::Limit, name, ChangeKind::Lowered, false)
                    .values(from.value, to.value),
            );
        }
    }
}

impl ChangeKind {
    /// `Widened` when `widens`, else `Narrowed`.
    fn widened_if(widens: bool) -> ChangeKind {
        if widens {
            ChangeKind::Widened
        } else {
            ChangeKind::Narrowed
        }
    }
}

fn risk_rank(risk: Risk) -> u8 {
    match risk {
        Risk::Read => 0,
        Risk::Write => 1,
        Risk::External => 2,
        Risk::Irreversible => 3,
    }
}

fn tools(old: &Plugin, new: &Plugin, out: &mut Vec<PluginChange>) {
    for tool in new.tools() {
        match old.tool(tool.name()) {
            None => out.push(
                PluginChange::new(ChangeArea::Tool, tool.name(), ChangeKind::Added, true)
                    .values("-", tool.risk().as_str()),
            ),
            Some(before) => tool_changes(old, before, new, tool, out),
        }
    }
    for tool in old.tools() {
        if new.tool(tool.name()).is_none() {
            out.push(PluginChange::new(
                ChangeArea::Tool,
                tool.name(),
                ChangeKind::Removed,
                false,
            ));
        }
    }
}

/// Another key signing the new version widens: a trusted key is trusted
/// for any plugin name, so one vendor's key could otherwise ship another's
/// plugin under its name with no one deciding. Losing the signature
/// widens too; gaining one does not.
fn signer(old: &Plugin, new: &Plugin, out: &mut Vec<PluginChange>) {
    let key = |p: &Plugin| p.signer().map(|s| s.key().to_string());
    let shown = |p: &Plugin| match p.signer() {
        Some(s) => match s.name() {
            Some(name) => format!("{name} ({})", s.key()),
            None => s.key().to_string(),
        },
        None => "unsigned".to_owned(),
    };
    let kind = match (key(old), key(new)) {
        (Some(a), Some(b)) if a != b => ChangeKind::Changed,
        (Some(_), None) => ChangeKind::Removed,
        (None, Some(_)) => ChangeKind::Added,
        _ => return,
    };
    let widens = kind != ChangeKind::Added;
    out.push(
        PluginChange::new(ChangeArea::Signer, "plugin.sig", kind, widens)
            .values(shown(old), shown(new)),
    );
}

fn tool_changes(old: &Plugin, a: &Tool, new: &Plugin, b: &Tool, out: &mut Vec<PluginChange>) {
    let name = b.name();
    // A pointer no longer redacted sends what it held to the audit log,
    // the console and replays in clear.
    let (from, to): (BTreeSet<String>, BTreeSet<String>) = (
        a.redact().iter().cloned().collect(),
        b.redact().iter().cloned().collect(),
    );
    for removed in from.difference(&to) {
        out.push(
            PluginChange::new(ChangeArea::Redaction, name, ChangeKind::Removed, true)
                .values(removed.as_str(), "not redacted"),
        );
    }
    for added in to.difference(&from) {
        out.push(
            PluginChange::new(ChangeArea::Redaction, name, ChangeKind::Added, false)
                .values("not redacted", added.as_str()),
        );
    }
    // More attempts, or a longer budget, re-run the tool more.
    let retry = |r: Option<crate::manifest::RetryPolicy>| {
        r.map_or_else(
            || "none".to_owned(),
            |r| format!("{} attempts in {} ms", r.attempts, r.budget_ms),
        )
    };
    match (a.retry(), b.retry()) {
        (None, Some(_)) => out.push(
            PluginChange::new(ChangeArea::Retry, name, ChangeKind::Added, true)
                .values("none", retry(b.retry())),
        ),
        (Some(_), None) => out.push(
            PluginChange::new(ChangeArea::Retry, name, ChangeKind::Removed, false)
                .values(retry(a.retry()), "none"),
        ),
        (Some(f), Some(t)) if f != t => {
            let more = t.attempts > f.attempts || t.budget_ms > f.budget_ms;
            let kind = if more {
                ChangeKind::Raised
            } else {
                ChangeKind::Lowered
            };
            out.push(
                PluginChange::new(ChangeArea::Retry, name, kind, more)
                    .values(retry(a.retry()), retry(b.retry())),
            );
        }
        _ => {}
    }
    // An approval that stays usable longer; without a value of its own the
    // policy's applies, which may be longer than any the tool named.
    let expiry = |s: Option<u64>| s.map_or_else(|| "the policy's".to_owned(), |s| format!("{s} s"));
    let (from, to) = (a.approval_expiry_s(), b.approval_expiry_s());
    if from != to {
        let longer = match (from, to) {
            (Some(f), Some(t)) => t > f,
            _ => true,
        };
        let kind = if longer {
            ChangeKind::Raised
        } else {
            ChangeKind::Lowered
        };
        out.push(
            PluginChange::new(ChangeArea::ApprovalExpiry, name, kind, longer)
                .values(expiry(from), expiry(to)),
        );
    }
    if a.risk() != b.risk() {
        let kind = if risk_rank(b.risk()) > risk_rank(a.risk()) {
            ChangeKind::Raised
        } else {
            ChangeKind::Lowered
        };
        // Either way it widens: raised, the tool now does more than it
        // said; lowered, it slips out of every gate keyed on its risk — the
        // policy's approvals (`require_for`, irreversible by default),
        // read-only mode (a `read` tool runs there) — so an upgrade that
        // relabels `refund` as `read` would run refunds unapproved.
        out.push(
            PluginChange::new(ChangeArea::Risk, name, kind, true)
                .values(a.risk().as_str(), b.risk().as_str()),
        );
    }
    for (area, from, to) in [
        (
            ChangeArea::Approval,
            a.approval_required(),
            b.approval_required(),
        ),
        (
            ChangeArea::Idempotency,
            a.idempotency_required(),
            b.idempotency_required(),
        ),
    ] {
        match (from, to) {
            (true, false) => out.push(
                PluginChange::new(area, name, ChangeKind::Removed, true)
                    .values("required", "not required"),
            ),
            (false, true) => out.push(
                PluginChange::new(area, name, ChangeKind::Added, false)
                    .values("not required", "required"),
            ),
            _ => {}
        }
    }
    let declared = |p: &Plugin| {
        p.manifest()
            .tool(name)
            .and_then(|t| t.rate_limit.clone())
            .unwrap_or_else(|| "none".to_owned())
    };
    match (a.rate_limit(), b.rate_limit()) {
        (Some(_), None) => out.push(
            PluginChange::new(ChangeArea::RateLimit, name, ChangeKind::Removed, true)
                .values(declared(old), "none"),
        ),
        (None, Some(_)) => out.push(
            PluginChange::new(ChangeArea::RateLimit, name, ChangeKind::Added, false)
                .values("none", declared(new)),
        ),
        (Some(from), Some(to)) if from != to => {
            // Looser: tokens come faster, or the burst is bigger (the
            // bucket holds `count` tokens) — at any pace: `1000/day` after
            // `10/min` lets 1000 calls through at once where 10 went.
            let (f, t) = (from.ms_per_token(), to.ms_per_token());
            let looser = t < f || to.count > from.count;
            let kind = if looser {
                ChangeKind::Raised
            } else {
                ChangeKind::Lowered
            };
            out.push(
                PluginChange::new(ChangeArea::RateLimit, name, kind, looser)
                    .values(declared(old), declared(new)),
            );
        }
        _ => {}
    }
    let mut findings = Vec::new();
    compare_schema(
        Side::Input,
        a.input_schema(),
        b.input_schema(),
        String::new(),
        &mut findings,
    );
    push_schema(ChangeArea::InputSchema, name, findings, out);
    let mut findings = Vec::new();
    match (a.output_schema(), b.output_schema()) {
        (Some(from), Some(to)) => {
            compare_schema(Side::Output, from, to, String::new(), &mut findings);
        }
        (None, Some(_)) => findings.push(Finding::new(
            "",
            "an output schema is declared",
            Compatibility::Compatible,
        )),
        (Some(_), None) => findings.push(Finding::new(
            "",
            "the output schema is no longer declared",
            Compatibility::MayBreak,
        )),
        (None, None) => {}
    }
    push_schema(ChangeArea::OutputSchema, name, findings, out);
}

fn push_schema(area: ChangeArea, tool: &str, findings: Vec<Finding>, out: &mut Vec<PluginChange>) {
    for finding in findings {
        let mut change = PluginChange::new(area, tool, ChangeKind::Changed, false);
        change.compatibility = Some(finding.compatibility);
        let at = if finding.path.is_empty() {
            "/"
        } else {
            &finding.path
        };
        change.detail = Some(format!("at {at}: {}", finding.what));
        out.push(change);
    }
}

/// Which schema: what callers send, or what they get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Input,
    Output,
}

/// One schema difference.
#[derive(Debug)]
struct Finding {
    /// JSON Pointer into the data (not the schema) where it applies.
    path: String,
    what: String,
    compatibility: Compatibility,
}

impl Finding {
    fn new(path: &str, what: impl Into<String>, compatibility: Compatibility) -> Finding {
        Finding {
            path: path.to_owned(),
            what: what.into(),
            compatibility,
        }
    }
}

/// Keywords compared by [`compare_schema`]; annotations are ignored;
/// anything else that differs is "changed, may break".
const MODELLED: &[&str] = &[
    "type",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
];
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "examples",
    "default",
    "$schema",
    "$comment",
    "deprecated",
];

fn types(schema: &Value) -> Option<BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(t) => Some([t.clone()].into()),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn strings(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join("|")
}

fn enum_values(schema: &Value) -> Option<Vec<Value>> {
    schema.get("enum")?.as_array().cloned()
}

fn names(schema: &Value, key: &str) -> BTreeSet<String> {
    match schema.get(key) {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn closed(schema: &Value) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
}

fn pointer(path: &str, segment: &str) -> String {
    format!("{path}/{}", segment.replace('~', "~0").replace('/', "~1"))
}

/// Compare two schemas at the data path `path`.
fn compare_schema(side: Side, old: &Value, new: &Value, path: String, out: &mut Vec<Finding>) {
    use Compatibility::{Breaking, Compatible, MayBreak};
    if old == new {
        return;
    }
    let (Some(a), Some(b)) = (old.as_object(), new.as_object()) else {
        out.push(Finding::new(&path, "the schema changed", MayBreak));
        return;
    };

    match (types(old), types(new)) {
        (Some(from), Some(to)) if from != to => {
            let (what, compatibility) = match side {
                Side::Input if to.is_superset(&from) => ("type widened", Compatible),
                Side::Input => ("type narrowed or changed", Breaking),
                Side::Output if to.is_subset(&from) => ("type narrowed", Compatible),
                Side::Output => ("type changed", Breaking),
            };
            out.push(Finding::new(
                &path,
                format!("{what}: {} -> {}", strings(&from), strings(&to)),
                compatibility,
            ));
        }
        (None, Some(to)) => out.push(Finding::new(
            &path,
            format!("type now constrained to {}", strings(&to)),
            if side == Side::Input {
                Breaking
            } else {
                Compatible
            },
        )),
        (Some(from), None) => out.push(Finding::new(
            &path,
            format!("type no longer constrained (was {})", strings(&from)),
            if side == Side::Input {
                Compatible
            } else {
                Breaking
            },
        )),
        _ => {}
    }

    match (enum_values(old), enum_values(new)) {
        (Some(from), Some(to)) if from != to => {
            let dropped = from.iter().any(|v| !to.contains(v));
            let added = to.iter().any(|v| !from.contains(v));
            let compatibility = match (side, dropped, added) {
                (Side::Input, true, _) => Breaking,
                (Side::Output, _, true) => MayBreak,
                _ => Compatible,
            };
            let what = match (dropped, added) {
                (true, false) => "enum narrowed",
                (false, true) => "enum widened",
                _ => "enum changed",
            };
            out.push(Finding::new(&path, what, compatibility));
        }
        (None, Some(_)) => out.push(Finding::new(
            &path,
            "now limited to an enum",
            if side == Side::Input {
                Breaking
            } else {
                Compatible
            },
        )),
        (Some(_), None) => out.push(Finding::new(
            &path,
            "no longer limited to an enum",
            if side == Side::Input {
                Compatible
            } else {
                MayBreak
            },
        )),
        _ => {}
    }

    let (old_props, new_props) = (names(old, "properties"), names(new, "properties"));
    let (old_required, new_required) = (names(old, "required"), names(new, "required"));
    match side {
        Side::Input => {
            for p in new_required.difference(&old_required) {
                let what = if old_props.contains(p) {
                    format!("property `{p}` is now required")
                } else {
                    format!("new required property `{p}`")
                };
                out.push(Finding::new(&pointer(&path, p), what, Breaking));
            }
            for p in old_required.difference(&new_required) {
                out.push(Finding::new(
                    &pointer(&path, p),
                    format!("property `{p}` is no longer required"),
                    Compatible,
                ));
            }
            for p in new_props.difference(&old_props) {
                if !new_required.contains(p) {
                    out.push(Finding::new(
                        &pointer(&path, p),
                        format!("new optional property `{p}`"),
                        Compatible,
                    ));
                }
            }
            for p in old_props.difference(&new_props) {
                let (what, compatibility) = if closed(new) {
                    ("removed, and additional properties are refused", Breaking)
                } else {
                    ("removed (now accepted as an additional property)", MayBreak)
                };
                out.push(Finding::new(
                    &pointer(&path, p),
                    format!("property `{p}` {what}"),
                    compatibility,
                ));
            }
            match (closed(old), closed(new)) {
                (false, true) => out.push(Finding::new(
                    &path,
                    "additional properties are no longer accepted",
                    Breaking,
                )),
                (true, false) => out.push(Finding::new(
                    &path,
                    "additional properties are now accepted",
                    Compatible,
                )),
                _ => {}
            }
        }
        Side::Output => {
            for p in old_props.difference(&new_props) {
                out.push(Finding::new(
                    &pointer(&path, p),
                    format!("property `{p}` removed"),
                    Breaking,
                ));
            }
            for p in new_props.difference(&old_props) {
                out.push(Finding::new(
                    &pointer(&path, p),
                    format!("new property `{p}`"),
                    Compatible,
                ));
            }
            for p in old_required.difference(&new_required) {
                if new_props.contains(p) {
                    out.push(Finding::new(
                        &pointer(&path, p),
                        format!("property `{p}` may now be absent"),
                        Breaking,
                    ));
                }
            }
            if closed(old) && !closed(new) {
                out.push(Finding::new(
                    &path,
                    "may now hold additional properties",
                    Compatible,
                ));
            }
        }
    }
    if let (Some(Value::Object(from)), Some(Value::Object(to))) =
        (a.get("properties"), b.get("properties"))
    {
        for (p, schema) in from {
            if let Some(next) = to.get(p) {
                compare_schema(side, schema, next, pointer(&path, p), out);
            }
        }
    }
    match (a.get("items"), b.get("items")) {
        (Some(from), Some(to)) => compare_schema(side, from, to, format!("{path}/*"), out),
        (None, None) => {}
        _ => out.push(Finding::new(
            &path,
            "the array item schema changed",
            MayBreak,
        )),
    }

    let other: BTreeSet<&str> = a
        .keys()
        .chain(b.keys())
        .map(String::as_str)
        .filter(|k| !MODELLED.contains(k) && !ANNOTATIONS.contains(k))
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    if !other.is_empty() {
        out.push(Finding::new(
            &path,
            format!(
                "{} changed",
                other.into_iter().collect::<Vec<_>>().join(", ")
            ),
            MayBreak,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn findings(side: Side, old: Value, new: Value) -> Vec<(String, Compatibility)> {
        let mut out = Vec::new();
        compare_schema(side, &old, &new, String::new(), &mut out);
        out.into_iter()
            .map(|f| (format!("{} {}", f.path, f.what), f.compatibility))
            .collect()
    }

    fn worst(found: &[(String, Compatibility)]) -> Option<Compatibility> {
        found.iter().map(|(_, c)| *c).max()
    }

    fn object(props: Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
    }

    #[test]
    fn input_changes_are_classified() {
        use Compatibility::*;
        let base = object(
            json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}, "n": {"type": "integer"}}),
            &["text"],
        );
        for (name, new, expected) in [
            (
                "new required property",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}, "n": {"type": "integer"}, "lang": {"type": "string"}}),
                    &["text", "lang"],
                ),
                Breaking,
            ),
            (
                "new optional property",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}, "n": {"type": "integer"}, "lang": {"type": "string"}}),
                    &["text"],
                ),
                Compatible,
            ),
            (
                "property removed while closed",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}}),
                    &["text"],
                ),
                Breaking,
            ),
            (
                "type narrowed",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}, "n": {"type": "string"}}),
                    &["text"],
                ),
                Breaking,
            ),
            (
                "type widened",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}, "n": {"type": ["integer", "string"]}}),
                    &["text"],
                ),
                Compatible,
            ),
            (
                "enum narrowed",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a"]}, "n": {"type": "integer"}}),
                    &["text"],
                ),
                Breaking,
            ),
            (
                "enum widened",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b", "c"]}, "n": {"type": "integer"}}),
                    &["text"],
                ),
                Compatible,
            ),
            (
                "required dropped",
                object(
                    json!({"text": {"type": "string"}, "mode": {"enum": ["a", "b"]}, "n": {"type": "integer"}}),
                    &[],
                ),
                Compatible,
            ),
            (
                "unknown keyword",
                object(
                    json!({"text": {"type": "string", "maxLength": 10}, "mode": {"enum": ["a", "b"]}, "n": {"type": "integer"}}),
                    &["text"],
                ),
                MayBreak,
            ),
        ] {
            let found = findings(Side::Input, base.clone(), new);
            assert_eq!(worst(&found), Some(expected), "{name}: {found:?}");
        }
        let described = json!({"type": "object", "description": "new words"});
        assert!(findings(Side::Input, json!({"type": "object"}), described).is_empty());
    }

    #[test]
    fn output_changes_are_classified() {
        use Compatibility::*;
        let base = json!({"type": "object", "properties": {"slug": {"type": "string"}, "n": {"type": "integer"}}, "required": ["slug"]});
        for (name, new, expected) in [
            (
                "property removed",
                json!({"type": "object", "properties": {"slug": {"type": "string"}}, "required": ["slug"]}),
                Breaking,
            ),
            (
                "type changed",
                json!({"type": "object", "properties": {"slug": {"type": "integer"}, "n": {"type": "integer"}}, "required": ["slug"]}),
                Breaking,
            ),
            (
                "property added",
                json!({"type": "object", "properties": {"slug": {"type": "string"}, "n": {"type": "integer"}, "m": {}}, "required": ["slug"]}),
                Compatible,
            ),
            (
                "no longer always there",
                json!({"type": "object", "properties": {"slug": {"type": "string"}, "n": {"type": "integer"}}}),
                Breaking,
            ),
        ] {
            let found = findings(Side::Output, base.clone(), new);
            assert_eq!(worst(&found), Some(expected), "{name}: {found:?}");
        }
    }

    #[test]
    fn nested_paths_are_json_pointers() {
        let old = json!({"type": "object", "properties": {"a/b": {"type": "object", "properties": {"c": {"type": "string"}}}}});
        let new = json!({"type": "object", "properties": {"a/b": {"type": "object", "properties": {"c": {"type": "number"}}}}});
        let found = findings(Side::Input, old, new);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].0.starts_with("/a~1b/c "), "{found:?}");
    }
}
