//! `airlock inspect`: the security reviewer's report.

use std::path::PathBuf;

use airlock_host::{Host, InspectReport, Package, Severity};

use crate::config::Settings;
use crate::terminal::escape;
use crate::{Calls, Failure, InspectArgs, host_config, print_json};

pub(crate) async fn run(settings: &Settings, args: InspectArgs) -> Result<u8, Failure> {
    let as_path = PathBuf::from(&args.plugin);
    // An archive is unpacked as an install unpacks it — every entry
    // checked (no links, no paths out, no bombs) — into a private scratch
    // directory: a reviewer handed one need not unpack it with a tool
    // that checks none of that.
    let mut scratch = None;
    let installed = settings.plugins_dir.join(&args.plugin);
    let dir = if as_path.join(airlock_host::MANIFEST_FILE).is_file() {
        as_path.clone()
    } else if !args.plugin.contains(['/', '\\'])
        && installed.join(airlock_host::MANIFEST_FILE).is_file()
    {
        // A plugin's name, though a file of that name sits here: the
        // plugin, as before archives were taken (`./NAME` is the file).
        installed
    } else if as_path.is_file() {
        let package = Package::from_archive(&as_path)?;
        let unpacked = tempfile::tempdir().map_err(|e| {
            anyhow::anyhow!("cannot make a scratch directory to unpack the archive into: {e}")
        })?;
        let dir = unpacked.path().join("plugin");
        if let Err(error) = package.write_dir(&dir) {
            let message = format!("{:#}", anyhow::Error::from(error));
            return Err(anyhow::anyhow!(in_archive(&message, &dir, &as_path)).into());
        }
        scratch = Some(unpacked);
        dir
    } else {
        installed
    };
    if !dir.join(airlock_host::MANIFEST_FILE).is_file() {
        return Err(anyhow::anyhow!(
            "no plugin `{}`: neither a plugin directory, a plugin archive, nor a plugin in {}",
            args.plugin,
            settings.plugins_dir.display()
        )
        .into());
    }
    let host = Host::new(host_config(settings, Calls::None)).map_err(anyhow::Error::from)?;
    let mut report = match host.inspect(&dir).await {
        Ok(report) => report,
        // The scratch copy is gone when this returns, and its path means
        // nothing to the reviewer: errors name the archive instead.
        Err(error) if scratch.is_some() => {
            let message = format!("{:#}", anyhow::Error::from(error));
            return Err(anyhow::anyhow!(in_archive(&message, &dir, &as_path)).into());
        }
        Err(error) => return Err(anyhow::Error::from(error).into()),
    };
    if scratch.is_some() {
        // The scratch copy is gone when this returns: name the archive.
        report.manifest = PathBuf::from(format!(
            "{}:{}",
            as_path.display(),
            airlock_host::MANIFEST_FILE
        ));
    }
    drop(scratch);
    if args.json {
        print_json(&serde_json::to_value(&report).map_err(anyhow::Error::from)?);
    } else {
        out!("{}", render(&report));
    }
    Ok(if report.has_errors() { 1 } else { 0 })
}

/// `message` with the scratch directory `dir` an archive was unpacked into
/// named as the archive: `…/plugin/plugin.toml` as `ARCHIVE:plugin.toml`.
fn in_archive(message: &str, dir: &std::path::Path, archive: &std::path::Path) -> String {
    let dir = dir.display().to_string();
    let archive = archive.display().to_string();
    message
        .replace(&format!("{dir}/"), &format!("{archive}:"))
        .replace(&dir, &archive)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The human-readable report.
pub(crate) fn render(r: &InspectReport) -> String {
    let mut out = String::new();
    // Each line escaped: names, paths and findings quote what a plugin's
    // author wrote, which must not drive the reviewer's terminal.
    let mut line = |s: String| {
        out.push_str(&escape(&s));
        out.push('\n');
    };
    line(format!("plugin {} {}", r.plugin, r.version));
    line(format!("manifest {}", r.manifest.display()));
    line(format!("sha256 {}", r.sha256));
    line(match &r.signer {
        Some(signer) => format!("signature {signer}"),
        None => "signature none".to_owned(),
    });
    line(String::new());
    line("imports".to_owned());
    for i in &r.imports {
        let key = i.capability.map(|c| c.manifest_key()).unwrap_or("");
        line(
            format!("  {:<12} {:<44} {key}", i.status, i.interface)
                .trim_end()
                .to_owned(),
        );
    }
    line("exports".to_owned());
    for e in &r.exports {
        line(format!("  {e}"));
    }
    line(String::new());
    line(format!(
        "{:<24} {:<9} {:<8} {}",
        "capabilities", "declared", "granted", "imported"
    ));
    for c in &r.capabilities {
        line(format!(
            "  {:<22} {:<9} {:<8} {}",
            c.key,
            yes(c.declared),
            yes(c.granted),
            yes(c.imported)
        ));
    }
    if let Some(g) = &r.effective_grant {
        for (name, _) in &g.env {
            line(format!("  env {name} (value from operator policy)"));
        }
        for f in &g.files {
            line(format!(
                "  files {} -> {} ({:?})",
                f.guest,
                f.host.display(),
                f.access
            ));
        }
        if let Some(access) = g.workspace {
            line(format!(
                "  workspace {access:?}, keys scoped per {}",
                g.workspace_scope.as_str()
            ));
        }
        if let Some(http) = &g.http {
            for origin in &http.origins {
                line(format!("  http {origin}"));
            }
            for range in &http.allow_private {
                line(format!(
                    "  http may reach non-public {range} (operator policy)"
                ));
            }
            for origin in &http.private_origins {
                line(format!(
                    "  http {origin} may resolve to those addresses (operator policy)"
                ));
            }
        }
    }
    line(String::new());
    line("tools".to_owned());
    for t in &r.tools {
        let risk = t.risk.map(|r| r.as_str()).unwrap_or("-");
        let state = if t.hidden {
            "hidden (exported, not declared)"
        } else if t.exposed {
            "exposed"
        } else {
            "not exposed"
        };
        line(format!("  {:<20} {:<13} {state}", t.name, risk));
    }
    if let Some(l) = &r.limits {
        line(String::new());
        line("limits".to_owned());
        for (name, limit) in [
            ("fuel", l.fuel),
            ("timeout_ms", l.timeout_ms),
            ("memory_mb", l.memory_mb),
            ("max_output_kb", l.max_output_kb),
            ("max_concurrency", l.max_concurrency),
            ("workspace_keys", l.workspace_keys),
            ("workspace_mb", l.workspace_mb),
            ("workspace_blobs", l.workspace_blobs),
        ] {
            line(format!("  {:<16} {:>14}  {:?}", name, limit.value, limit.source).to_lowercase());
        }
    }
    if let Some(h) = r.effective_grant.as_ref().and_then(|g| g.http.as_ref()) {
        line(String::new());
        line("http limits (operator policy http_*)".to_owned());
        for (name, limit) in [
            ("max_requests", h.limits.max_requests),
            ("max_response_kb", h.limits.max_response_kb),
            ("max_request_kb", h.limits.max_request_kb),
            ("connect_timeout_ms", h.limits.connect_timeout_ms),
            ("first_byte_timeout_ms", h.limits.first_byte_timeout_ms),
        ] {
            line(format!("  {:<22} {:>8}  {:?}", name, limit.value, limit.source).to_lowercase());
        }
    }
    if let Some(f) = r.effective_grant.as_ref().and_then(|g| g.files_limits) {
        line(String::new());
        line("files write budget per call (operator policy files_*)".to_owned());
        for (name, limit) in [
            ("max_write_kb", f.max_write_kb),
            ("max_created", f.max_created),
        ] {
            line(format!("  {:<22} {:>8}  {:?}", name, limit.value, limit.source).to_lowercase());
        }
    }
    line(String::new());
    if r.findings.is_empty() {
        line("findings: none".to_owned());
    } else {
        line("findings".to_owned());
        for f in &r.findings {
            let tag = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            line(format!("  {tag}: {}", f.message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn an_error_about_the_scratch_copy_names_the_archive() {
        let dir = Path::new("/tmp/.tmpAbC123/plugin");
        let archive = Path::new("text.tar.gz");
        assert_eq!(
            super::in_archive(
                "cannot read /tmp/.tmpAbC123/plugin/data/seed.json: no such file (in /tmp/.tmpAbC123/plugin)",
                dir,
                archive
            ),
            "cannot read text.tar.gz:data/seed.json: no such file (in text.tar.gz)"
        );
        assert_eq!(super::in_archive("nothing", dir, archive), "nothing");
    }
}
