//! Release actions (install, rollout, promote, rollback, status) as one
//! request type, run the same way by `airlock` on the data directory and by
//! a running server for it over the control socket (`POST /v1/releases`).

use std::path::PathBuf;

use airlock_host::store::Sticky;
use airlock_host::{Host, Package, RolloutRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One release action.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReleaseRequest {
    /// Install the plugin directory or archive at `path` (read by the
    /// server, which runs as the same user).
    Install {
        /// A plugin directory or a `.tar.gz` archive.
        path: PathBuf,
        /// Who installs.
        by: String,
    },
    /// Installed versions, of one plugin or all, and their rollouts.
    Installed {
        /// Only this plugin.
        plugin: Option<String>,
    },
    /// Send a share of a plugin's callers to a version.
    Rollout {
        /// The plugin.
        plugin: String,
        /// The installed version.
        version: String,
        /// 0–100.
        percent: u32,
        /// What keeps a caller on one side.
        #[serde(default)]
        sticky: Sticky,
        /// Who.
        by: String,
        /// Why.
        reason: Option<String>,
        /// An approver's approval for a wider version.
        approval_id: Option<String>,
    },
    /// The canary becomes the serving version.
    Promote {
        /// The plugin.
        plugin: String,
        /// Who.
        by: String,
        /// Why.
        reason: Option<String>,
    },
    /// All traffic back.
    Rollback {
        /// The plugin.
        plugin: String,
        /// Who.
        by: String,
        /// Why.
        reason: Option<String>,
    },
    /// How the rollout's versions do.
    Status {
        /// The plugin.
        plugin: String,
    },
}

/// Run `request` on `host`; the answer as JSON.
///
/// # Errors
/// What the host's release methods refuse ([`airlock_host::Error`]).
pub async fn run(host: &Host, request: ReleaseRequest) -> Result<Value, airlock_host::Error> {
    match request {
        ReleaseRequest::Install { path, by } => {
            let package = Package::open(&path)?;
            let report = host.install(&package, &by).await?;
            Ok(json!({ "installed": report.version, "new": report.new }))
        }
        ReleaseRequest::Installed { plugin } => {
            // One unreadable record is named, not the whole answer lost.
            let installed = host.installed_listing(plugin.as_deref())?;
            let listing = host.rollout_listing()?;
            let asked = |name: &String| plugin.as_ref().is_none_or(|p| p == name);
            let rollouts: Vec<_> = listing
                .rollouts
                .into_iter()
                .filter(|r| asked(&r.plugin))
                .collect();
            let unreadable: Vec<_> = listing
                .unreadable
                .into_iter()
                .filter(|u| asked(&u.plugin))
                .collect();
            Ok(json!({
                "versions": installed.versions,
                "unreadable_versions": installed.unreadable,
                "versions_partial": installed.partial,
                "rollouts": rollouts,
                "unreadable": unreadable,
                "partial": listing.partial,
            }))
        }
        ReleaseRequest::Rollout {
            plugin,
            version,
            percent,
            sticky,
            by,
            reason,
            approval_id,
        } => {
            let mut request = RolloutRequest::new(plugin, version, percent, by).sticky(sticky);
            if let Some(reason) = reason {
                request = request.reason(reason);
            }
            if let Some(id) = approval_id {
                request = request.approval(id);
            }
            let rollout = host.set_rollout(&request).await?;
            Ok(json!({ "rollout": rollout }))
        }
        ReleaseRequest::Promote { plugin, by, reason } => {
            let rollout = host.promote(&plugin, &by, reason.as_deref()).await?;
            Ok(json!({ "rollout": rollout }))
        }
        ReleaseRequest::Rollback { plugin, by, reason } => {
            let rollout = host.rollback(&plugin, &by, reason.as_deref()).await?;
            Ok(json!({ "rollout": rollout }))
        }
        ReleaseRequest::Status { plugin } => {
            let status = host.rollout_status(&plugin)?;
            Ok(json!({ "status": status }))
        }
    }
}
