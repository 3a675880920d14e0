//! The ledger: approvals and idempotency keys.
//!
//! The state machines and the records live in the storage seam
//! (`airlock_store::Ledger` over any `LedgerStore`: sled in the data
//! directory, PostgreSQL shared by hosts, memory); this module holds the
//! operator's rules for them ([`ApprovalPolicy`]) and imports, for the
//! crate, the seam's items it uses (the API names them as
//! `airlock_host::store::…`).

use serde::{Deserialize, Serialize};

pub(crate) use airlock_store::{
    Approval, ApprovalKind, ApprovalState, Claim, EXPIRY, IdempotencyState, KeyRef, Ledger,
    SweepReport, Transition,
};

/// The ledger's directory inside the data directory (sled).
pub const LEDGER_DIR: &str = "ledger";

/// The operator's rules for approvals and idempotency (`[policy.approvals]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalPolicy {
    /// Risk classes whose tools always need approval.
    pub require_for: Vec<crate::manifest::Risk>,
    /// Tools (`plugin/tool`) that always need approval.
    pub tools: Vec<String>,
    /// Who may decide. Without any, a call that needs approval is refused.
    pub approvers: Vec<Approver>,
    /// Seconds an approval request waits for a decision (tools may say
    /// otherwise).
    pub expiry_s: u64,
    /// Seconds an idempotency key's outcome is kept for replay.
    pub idempotency_retention_s: u64,
    /// Seconds an approved approval stays usable; unused, it then expires.
    pub approved_expiry_s: u64,
    /// Seconds a decided, expired or consumed approval is kept before the
    /// sweeper forgets it (the audit log keeps its history).
    pub retention_s: u64,
    /// Most approvals one principal may have pending at once; further calls
    /// needing approval are refused (`too_many_pending_approvals`).
    pub max_pending_per_principal: u64,
    /// Seconds between two sweeps of the ledger (expiry and retention).
    pub sweep_interval_s: u64,
}

impl Default for ApprovalPolicy {
    fn default() -> ApprovalPolicy {
        ApprovalPolicy {
            require_for: vec![crate::manifest::Risk::Irreversible],
            tools: Vec::new(),
            approvers: Vec::new(),
            expiry_s: 900,
            idempotency_retention_s: 24 * 3600,
            approved_expiry_s: 900,
            retention_s: 7 * 24 * 3600,
            max_pending_per_principal: 20,
            sweep_interval_s: 60,
        }
    }
}

/// One approver: a name and the SHA-256 (hex) of their secret token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// The approver's name, as recorded with each decision.
    pub name: String,
    /// SHA-256 of the approver's token, 64 hex digits.
    pub token_sha256: String,
    /// Whether they may also take over from the console: switch the host
    /// to read-only and back, pause and resume tools, roll a plugin back
    /// (default `false`: they approve and reject, and watch). The CLI's
    /// takeovers are the server's own user's, over the control socket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator: bool,
}

impl ApprovalPolicy {
    /// The approver `name` if `token` is theirs.
    pub fn authenticate(&self, name: &str, token: &str) -> Option<&Approver> {
        self.approvers.iter().find(|a| {
            a.name == name && airlock_audit::token::matches_sha256(token, &a.token_sha256)
        })
    }
}
