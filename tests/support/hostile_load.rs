//! `hostile-load`: the whole hostile suite at once on one host — 16 hostile
//! calls in flight (floods, bombs, spins, escapes) for a number of rounds,
//! while a well-behaved caller keeps calling. Prints one JSON object: how
//! the good calls fared, the outcome kinds of the hostile ones, and the
//! process's peak resident memory (`VmHWM`). A separate process, so the
//! peak is this load's alone; `tests/hostile.rs` runs it and holds the
//! result to the bound stated in the README.
//!
//! `hostile-load [ROUNDS]` (default 3).

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_host::{CallRequest, Host, HostConfig, Policy};
use airlock_tests::{MISBEHAVE, PLUGINS_DIR, PROBE, install, read};
use serde_json::{Value, json};

const MISBEHAVE_TOOLS: &[&str] = &[
    "echo",
    "spin",
    "grow",
    "grow-table",
    "big-output",
    "log-flood",
    "log-loop",
    "recurse",
    "panic",
];

/// The 16 hostile calls: (tool, arguments).
fn attacks() -> Vec<(&'static str, Value)> {
    vec![
        (
            "misbehave/log-flood",
            json!({"lines": 50_000_000, "size": 0}),
        ),
        (
            "misbehave/log-flood",
            json!({"lines": 5_000_000, "size": 1}),
        ),
        (
            "misbehave/log-flood",
            json!({"lines": 100_000, "size": 4096}),
        ),
        ("misbehave/log-loop", json!({})),
        ("misbehave/grow", json!({"mb": 4096})),
        ("misbehave/grow", json!({"mb": 512})),
        ("misbehave/grow-table", json!({"elements": 50_000_000})),
        ("misbehave/big-output", json!({"bytes": 200_000_000})),
        ("misbehave/recurse", json!({"depth": 1_000_000_000})),
        ("misbehave/spin", json!({})),
        ("misbehave/spin", json!({})),
        ("misbehave/panic", json!({})),
        (
            "escaper/swap-for-symlink",
            json!({"preopen": "/shared", "name": "inner", "target": "../../../../../../../../etc"}),
        ),
        ("escaper/read-file", json!({"path": "/shared/inner/passwd"})),
        (
            "escaper/read-file",
            json!({"path": "/shared/../../../../etc/passwd"}),
        ),
        ("escaper/list-dir", json!({"path": "/"})),
    ]
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let work = tempfile::tempdir()?;
    let root = work.path().join("files");
    std::fs::create_dir_all(root.join("shared/inner"))?;

    let mut manifest = String::from(
        "[capabilities]\nlog = true\n\n[limits]\nfuel = 1_000_000_000_000\ntimeout_ms = 1_500\nmemory_mb = 32\n",
    );
    for tool in MISBEHAVE_TOOLS {
        manifest.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"read\"\n"
        ));
    }
    let misbehave = install("misbehave", &read(MISBEHAVE), &manifest);
    let mut manifest = String::from(
        "[capabilities]\nclocks = true\nrandom = true\nfiles = [{ host = \"shared\", guest = \"/shared\", access = \"read-write\" }]\n",
    );
    for tool in ["swap-for-symlink", "read-file", "list-dir"] {
        manifest.push_str(&format!(
            "\n[[tools]]\nname = \"{tool}\"\nrisk = \"read\"\n"
        ));
    }
    let escaper = install("escaper", &read(PROBE), &manifest);

    let host = Host::new(
        HostConfig::default()
            .data_dir(work.path().join("data"))
            .policy(Policy {
                files_root: Some(root.clone()),
                ..Policy::default()
            }),
    )?;
    host.load_plugin(misbehave.path()).await?;
    host.load_plugin(escaper.path()).await?;
    host.load_plugin(format!("{PLUGINS_DIR}/notes")).await?;
    let host = Arc::new(host);

    let hostile: Vec<_> = attacks()
        .into_iter()
        .map(|(tool, args)| {
            let host = Arc::clone(&host);
            tokio::spawn(async move {
                let mut kinds = Vec::new();
                for _ in 0..rounds {
                    let request = CallRequest::new(tool, args.to_string()).principal("mallory");
                    kinds.push(match host.call(request).await {
                        Ok(r) if tool.ends_with("read-file") => {
                            format!("READ {}", r.output)
                        }
                        Ok(_) => "ok".to_owned(),
                        Err(e) => e.kind().to_owned(),
                    });
                }
                (tool, kinds)
            })
        })
        .collect();

    let mut good_ok = 0u64;
    let mut good_failed = Vec::new();
    let mut n = 0u64;
    while !hostile.iter().all(|t| t.is_finished()) || n < 20 {
        n += 1;
        let echo = CallRequest::new("misbehave/echo", json!({"n": n}).to_string());
        let note = CallRequest::new(
            "notes/add",
            json!({"title": format!("t{}", n % 50), "body": "kept"}).to_string(),
        )
        .principal("alice")
        .session("s1");
        for request in [echo, note] {
            match host.call(request).await {
                Ok(_) => good_ok += 1,
                Err(e) => good_failed.push(format!("{}: {e}", e.kind())),
            }
        }
    }
    let mut outcomes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for task in hostile {
        let (tool, kinds) = task.await?;
        for kind in kinds {
            *outcomes
                .entry(tool.to_owned())
                .or_default()
                .entry(kind)
                .or_default() += 1;
        }
    }
    let etc_reached = std::fs::read_dir(&root)?.count();
    println!(
        "{}",
        json!({
            "rounds": rounds,
            "good_ok": good_ok,
            "good_failed": good_failed,
            "hostile": outcomes,
            "files_root_entries": etc_reached,
            "peak_rss_kb": peak_rss_kb(),
        })
    );
    Ok(())
}
