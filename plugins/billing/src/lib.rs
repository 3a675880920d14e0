//! The `billing` plugin: accounts with balances in the workspace, and
//! refunds to them.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars, workspace};
use serde::{Deserialize, Serialize};

/// Largest single refund, in cents.
const MAX_REFUND_CENTS: u64 = 100_000_000;
/// Refunds kept per account.
const MAX_REFUNDS: usize = 1000;

/// A refund that was paid.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Refund {
    /// The call that paid it.
    pub call_id: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Why.
    pub reason: String,
}

/// An account.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Account {
    /// Account id.
    pub account: String,
    /// Balance in cents.
    pub balance_cents: u64,
    /// Refunds paid to it, oldest first.
    pub refunds: Vec<Refund>,
}

fn key(account: &str) -> String {
    format!("account/{account}")
}

fn load(account: &str) -> Result<Account, ToolError> {
    workspace::get_json(&key(account))?
        .ok_or_else(|| ToolError::invalid_input(format!("no account {account:?}")))
}

/// Arguments of `open-account`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenArgs {
    /// Account id: letters, digits and `-`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub account: String,
    /// Opening balance in cents.
    #[serde(default)]
    pub balance_cents: u64,
}

pub fn open_account(args: OpenArgs, _: &Context) -> Result<Account, ToolError> {
    if workspace::get(&key(&args.account))?.is_some() {
        return Err(ToolError::invalid_input(format!(
            "account {:?} already exists",
            args.account
        )));
    }
    let account = Account {
        account: args.account,
        balance_cents: args.balance_cents,
        refunds: Vec::new(),
    };
    workspace::set_json(&key(&account.account), &account)?;
    Ok(account)
}

/// Arguments of `lookup`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupArgs {
    /// Account id.
    #[schemars(length(min = 1, max = 64))]
    pub account: String,
}

pub fn lookup(args: LookupArgs, _: &Context) -> Result<Account, ToolError> {
    load(&args.account)
}

/// Arguments of `refund`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundArgs {
    /// Account id.
    #[schemars(length(min = 1, max = 64))]
    pub account: String,
    /// Amount in cents (1 to 100,000,000).
    #[schemars(range(min = 1, max = 100_000_000))]
    pub amount_cents: u64,
    /// Why the refund is paid.
    #[schemars(length(min = 1, max = 500))]
    pub reason: String,
    /// Last four digits of the card, for the customer's statement.
    #[serde(default)]
    pub card_last4: Option<String>,
}

/// Result of `refund`.
#[derive(Serialize, JsonSchema)]
pub struct Refunded {
    /// Account id.
    pub account: String,
    /// The new balance in cents.
    pub balance_cents: u64,
    /// The call that paid it.
    pub call_id: String,
}

pub fn refund(args: RefundArgs, ctx: &Context) -> Result<Refunded, ToolError> {
    if args.amount_cents == 0 || args.amount_cents > MAX_REFUND_CENTS {
        return Err(ToolError::invalid_input("amount out of range"));
    }
    let mut account = load(&args.account)?;
    if account.refunds.len() >= MAX_REFUNDS {
        return Err(ToolError::denied(
            "this account has reached its refund limit",
        ));
    }
    account.balance_cents = account
        .balance_cents
        .checked_add(args.amount_cents)
        .ok_or_else(|| ToolError::denied("the balance would overflow"))?;
    account.refunds.push(Refund {
        call_id: ctx.call_id.clone(),
        amount_cents: args.amount_cents,
        reason: args.reason,
    });
    workspace::set_json(&key(&account.account), &account)?;
    Ok(Refunded {
        account: account.account,
        balance_cents: account.balance_cents,
        call_id: ctx.call_id.clone(),
    })
}

plugin! {
    "open-account" => open_account: "Open an account with an opening balance.",
    "lookup" => lookup: "Look up an account: balance and refunds paid.",
    "refund" => refund: "Refund an amount to an account. Irreversible: needs a human approval and an idempotency key.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refund_raises_the_balance_and_is_listed() {
        let ctx = Context::default();
        open_account(
            OpenArgs {
                account: "a-1".into(),
                balance_cents: 100,
            },
            &ctx,
        )
        .unwrap();
        let r = refund(
            RefundArgs {
                account: "a-1".into(),
                amount_cents: 250,
                reason: "late delivery".into(),
                card_last4: None,
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(r.balance_cents, 350);
        assert_eq!(
            lookup(
                LookupArgs {
                    account: "a-1".into()
                },
                &ctx
            )
            .unwrap()
            .refunds
            .len(),
            1
        );
        assert!(
            lookup(
                LookupArgs {
                    account: "nope".into()
                },
                &ctx
            )
            .is_err()
        );
    }
}
