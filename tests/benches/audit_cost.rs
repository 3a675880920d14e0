//! What the audit log costs: one append (group-committed and flushed) next
//! to one whole trivial call through the pipeline, on a real disk.
//!
//! `cargo bench -p airlock-tests --bench audit_cost` (add `-- --quick` for a
//! short smoke run). Prints mean, p50 and p99 per operation.

use std::time::{Duration, Instant};

use airlock_host::audit_log::{AuditConfig, AuditLog, Durability, Entry, Event};
use airlock_host::{CallRequest, Host, HostConfig};
use airlock_tests::{MISBEHAVE, install, read};

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    let mean = total / n as u32;
    let p = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "{name:<44} n={n:<6} mean={:>9.1}µs  p50={:>9.1}µs  p99={:>9.1}µs",
        mean.as_secs_f64() * 1e6,
        p(0.50).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
    );
}

fn entry(i: u64) -> Entry {
    let mut e = Entry::new(Event::CallStarted);
    e.call_id = Some(format!("01a2-{i:016x}"));
    e.trace_id = e.call_id.clone();
    e.principal = Some("bench".into());
    e.plugin = Some("misbehave".into());
    e.tool = Some("echo".into());
    e.risk = Some("read".into());
    e.args_digest = Some("0".repeat(64));
    e.args = Some(r#"{"n":1}"#.into());
    e
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (appends, calls) = if quick { (200, 50) } else { (5000, 2000) };
    // Beside the build (`target/tmp`), not in `$TMPDIR`: a tmpfs there
    // would make every fsync free.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");

    let log = AuditLog::open(dir.path().join("log"), AuditConfig::default()).expect("open");
    for (name, durability) in [
        ("audit append, group-committed", Durability::Batched),
        ("audit append, flushed (fsync)", Durability::Flushed),
    ] {
        let mut samples = Vec::with_capacity(appends);
        for i in 0..appends as u64 {
            let started = Instant::now();
            log.append(entry(i), durability).expect("append");
            samples.push(started.elapsed());
        }
        report(name, samples);
    }
    drop(log);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (name, risk) in [
        ("call misbehave/echo (read: batched audit)", "read"),
        ("call misbehave/echo (write: flushed audit)", "write"),
    ] {
        let plugin = install(
            "misbehave",
            &read(MISBEHAVE),
            &format!(
                "[capabilities]\nlog = true\n\n[[tools]]\nname = \"echo\"\nrisk = \"{risk}\"\n"
            ),
        );
        let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let samples = runtime.block_on(async {
            let host = Host::new(HostConfig::default().data_dir(data.path())).expect("host");
            host.load_plugin(plugin.path()).await.expect("load");
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let started = Instant::now();
                host.call(CallRequest::new("misbehave/echo", r#"{"n":1}"#))
                    .await
                    .expect("call");
                samples.push(started.elapsed());
            }
            samples
        });
        report(name, samples);
    }
}
