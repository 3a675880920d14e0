//! `peer-bench`: the MCP-level benchmark behind `scripts/bench-peer`. The
//! same trivial tool (echo) served over stdio by `airlock serve` and by the
//! peer WebAssembly MCP server hyper-mcp, driven by this one MCP client
//! (rmcp's, independent of both servers' code and cheap per call, so the
//! servers' costs show).
//!
//! Per server process: spawn it, initialize, list the tools, warm up, then
//! (a) calls one after the other, (b) 8 calls in flight (8 tasks on the one
//! client session) for a fixed time, and the server's resident memory
//! (`VmRSS` after the warm-up, `VmHWM` just before it is shut down). The
//! order is Airlock, peer, peer, Airlock, so drift of the machine touches
//! both. Every response is checked: the echo must come back equal, else
//! the run fails. Prints markdown.
//!
//! ```text
//! peer-bench --airlock BIN --component WASM --hyper-mcp BIN --plugin WASM
//!            [--commit REV] [--smoke]
//! ```
//!
//! - `--airlock`: the `airlock` binary (release build);
//! - `--component`: the `misbehave` test guest, installed as plugin `bench`
//!   with one tool, `echo`, declared `read`;
//! - `--hyper-mcp`: the `hyper-mcp` binary;
//! - `--plugin`: the echo plugin for hyper-mcp (`tests/peer/echo-extism`),
//!   loaded as plugin `bench`.
//!
//! Each server gets a fresh directory of its own (Airlock: plugins and data
//! dir; hyper-mcp: its config and log directory) and defaults otherwise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_tests::sha256_hex;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Calls in flight in the concurrent cell.
const IN_FLIGHT: usize = 8;

/// How long a server gets to exit once its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How much work each cell gets.
#[derive(Clone, Copy)]
struct Effort {
    warm_up: usize,
    sequential: usize,
    concurrent_for: Duration,
    smoke: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Airlock,
    Peer,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Airlock => "Airlock",
            Server::Peer => "hyper-mcp",
        }
    }

    /// The tool's name as the server lists it.
    fn tool(self) -> &'static str {
        match self {
            // Plugin `bench`, tool `echo`, joined by Airlock's separator.
            Server::Airlock => "bench__echo",
            // hyper-mcp joins the plugin's name and the tool's with `-`.
            Server::Peer => "bench-echo",
        }
    }
}

struct Args {
    airlock: PathBuf,
    component: PathBuf,
    hyper_mcp: PathBuf,
    plugin: PathBuf,
    commit: Option<String>,
    smoke: bool,
}

const USAGE: &str = "usage: peer-bench --airlock BIN --component WASM --hyper-mcp BIN --plugin WASM [--commit REV] [--smoke]";

fn parse_args() -> Result<Args, Error> {
    let mut airlock = None;
    let mut component = None;
    let mut hyper_mcp = None;
    let mut plugin = None;
    let mut commit = None;
    let mut smoke = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--smoke" => {
                smoke = true;
                continue;
            }
            "--airlock" => &mut airlock,
            "--component" => &mut component,
            "--hyper-mcp" => &mut hyper_mcp,
            "--plugin" => &mut plugin,
            "--commit" => &mut commit,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        };
        let value = args
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        *slot = Some(value);
    }
    let need = |value: Option<String>, name: &str| -> Result<PathBuf, Error> {
        value
            .map(PathBuf::from)
            .ok_or_else(|| format!("{name} is required\n{USAGE}").into())
    };
    Ok(Args {
        airlock: need(airlock, "--airlock")?,
        component: need(component, "--component")?,
        hyper_mcp: need(hyper_mcp, "--hyper-mcp")?,
        plugin: need(plugin, "--plugin")?,
        commit,
        smoke,
    })
}

// ------------------------------------------------------------- figures

/// One cell: calls, wall time, each call's latency (sorted), and the CPU
/// time the server and this client spent meanwhile.
struct Cell {
    calls: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Cell {
    fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Cell {
        latencies.sort_unstable();
        Cell {
            calls: latencies.len(),
            elapsed,
            latencies,
            server_cpu: Duration::ZERO,
            client_cpu: Duration::ZERO,
        }
    }

    /// The cell with the CPU time spent from `before` to `after`
    /// (server, client).
    fn cpu(mut self, before: (Duration, Duration), after: (Duration, Duration)) -> Cell {
        self.server_cpu = after.0.saturating_sub(before.0);
        self.client_cpu = after.1.saturating_sub(before.1);
        self
    }

    /// CPU time per call: (server, client).
    fn cpu_per_call(&self) -> (Duration, Duration) {
        let calls = u32::try_from(self.calls.max(1)).unwrap_or(u32::MAX);
        (self.server_cpu / calls, self.client_cpu / calls)
    }

    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// One server process's run.
struct Pass {
    server: Server,
    number: usize,
    server_info: String,
    start: Duration,
    sequential: Cell,
    concurrent: Cell,
    rss_warm_kb: u64,
    rss_sequential_kb: u64,
    rss_end_kb: u64,
    hwm_kb: u64,
    exit: String,
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status").into())
}

/// CPU time (user and system, every thread, exited ones included) of
/// process `pid` ("self" for this one), from `/proc/PID/stat` (in ticks
/// of 10 ms: precise enough over cells of thousands of calls).
fn cpu_time(pid: &str) -> Result<Duration, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // After the command name (in parentheses, which may hold spaces) come
    // the fields from the third on: utime is the 14th, stime the 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        // USER_HZ is 100 on Linux.
        (Some(user), Some(system)) => Ok(Duration::from_millis((user + system) * 10)),
        _ => Err(format!("no utime/stime in /proc/{pid}/stat").into()),
    }
}

/// CPU time so far: (the server `pid`, this client).
fn cpu_times(pid: u32) -> Result<(Duration, Duration), Error> {
    Ok((cpu_time(&pid.to_string())?, cpu_time("self")?))
}

#[path = "machine.rs"]
mod machine;

/// The machine line, with the load average when the run starts.
fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{}; load average at the start {}",
        machine::machine(),
        load.join(" ")
    )
}

// ------------------------------------------------------------- servers

/// Airlock: the component installed as plugin `bench` (one tool, `echo`,
/// risk `read`, default limits; the guest imports `log`, so it is granted), `airlock serve` on stdio with a plugins
/// and a data directory of its own and the built-in configuration.
fn airlock_command(args: &Args, dir: &Path) -> Result<Command, Error> {
    let component = std::fs::read(&args.component)
        .map_err(|e| format!("cannot read {}: {e}", args.component.display()))?;
    let plugin = dir.join("plugins/bench");
    std::fs::create_dir_all(&plugin)?;
    std::fs::write(plugin.join("component.wasm"), &component)?;
    std::fs::write(
        plugin.join("plugin.toml"),
        format!(
            "[plugin]\nname = \"bench\"\nversion = \"0.1.0\"\ncomponent = \"component.wasm\"\n\
             sha256 = \"{}\"\n\n[capabilities]\nlog = true\n\n[[tools]]\nname = \"echo\"\nrisk = \"read\"\n",
            sha256_hex(&component)
        ),
    )?;
    let mut command = Command::new(&args.airlock);
    command
        .arg("serve")
        .arg("--plugins-dir")
        .arg(dir.join("plugins"))
        .arg("--data-dir")
        .arg(dir.join("data"));
    for name in [
        "AIRLOCK_CONFIG",
        "AIRLOCK_PLUGINS_DIR",
        "AIRLOCK_DATA_DIR",
        "AIRLOCK_CACHE_DIR",
    ] {
        command.env_remove(name);
    }
    Ok(command)
}

/// hyper-mcp: the echo plugin loaded from a file as plugin `bench`, no
/// runtime configuration (its defaults), its log and configuration
/// directories inside `dir`.
fn peer_command(args: &Args, dir: &Path) -> Result<Command, Error> {
    std::fs::create_dir_all(dir)?;
    // A copy in the temporary directory: a path with no characters a
    // file URL would have to escape.
    let plugin = dir.join("echo.wasm");
    std::fs::copy(&args.plugin, &plugin)
        .map_err(|e| format!("cannot copy {}: {e}", args.plugin.display()))?;
    let config = dir.join("config.json");
    let url = format!("file://{}", plugin.display());
    std::fs::write(
        &config,
        serde_json::to_string_pretty(&json!({ "plugins": { "bench": { "url": url } } }))?,
    )?;
    let mut command = Command::new(&args.hyper_mcp);
    command
        .arg("--config-file")
        .arg(&config)
        .env("HYPER_MCP_LOG_PATH", dir.join("logs"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HYPER_MCP_") && name != "HYPER_MCP_LOG_PATH" {
            command.env_remove(name);
        }
    }
    Ok(command)
}

// ------------------------------------------------------------- calls

/// The arguments of call `n`: each call's echo differs.
fn arguments(n: u64) -> JsonObject {
    let mut arguments = JsonObject::new();
    arguments.insert("text".into(), json!("airlock peer bench"));
    arguments.insert("n".into(), json!(n));
    arguments
}

/// The echo must come back equal: as the JSON text of the one text block
/// and as `structuredContent`.
fn check(result: &CallToolResult, sent: &JsonObject) -> Result<(), String> {
    let expected = Value::Object(sent.clone());
    let shown = || {
        let text = serde_json::to_string(result).unwrap_or_default();
        text.chars().take(500).collect::<String>()
    };
    if result.is_error == Some(true) {
        return Err(format!("the tool failed: {}", shown()));
    }
    let [block] = result.content.as_slice() else {
        return Err(format!("not one content block: {}", shown()));
    };
    let text = block
        .as_text()
        .ok_or_else(|| format!("not a text block: {}", shown()))?;
    match serde_json::from_str::<Value>(&text.text) {
        Ok(value) if value == expected => {}
        _ => {
            return Err(format!(
                "the text is not the echo of {expected}: {}",
                shown()
            ));
        }
    }
    if result.structured_content.as_ref() != Some(&expected) {
        return Err(format!(
            "structuredContent is not the echo of {expected}: {}",
            shown()
        ));
    }
    Ok(())
}

/// One checked call; its latency.
async fn call(peer: &Peer<RoleClient>, server: Server, n: u64) -> Result<Duration, Error> {
    let sent = arguments(n);
    let params = CallToolRequestParams::new(server.tool()).with_arguments(sent.clone());
    let start = Instant::now();
    let result = peer
        .call_tool(params)
        .await
        .map_err(|e| format!("{}: call {n} failed: {e}", server.label()))?;
    let took = start.elapsed();
    check(&result, &sent).map_err(|e| format!("{}: call {n}: {e}", server.label()))?;
    Ok(took)
}

async fn sequential(
    peer: &Peer<RoleClient>,
    server: Server,
    first: u64,
    calls: usize,
) -> Result<Cell, Error> {
    let mut latencies = Vec::with_capacity(calls);
    let start = Instant::now();
    for i in 0..calls as u64 {
        latencies.push(call(peer, server, first + i).await?);
    }
    Ok(Cell::new(latencies, start.elapsed()))
}

/// `IN_FLIGHT` tasks on the one session, each calling in a loop until
/// `for_` has passed.
async fn concurrent(
    peer: &Peer<RoleClient>,
    server: Server,
    first: u64,
    for_: Duration,
) -> Result<Cell, Error> {
    let start = Instant::now();
    let deadline = start + for_;
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for task in 0..IN_FLIGHT as u64 {
        let peer = peer.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Disjoint argument numbers per task.
            let mut n = first + task * 100_000_000;
            while Instant::now() < deadline {
                latencies.push(call(&peer, server, n).await?);
                n += 1;
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Cell::new(latencies, start.elapsed()))
}

/// Close the server's stdin (by ending the session) and wait for it to
/// exit; kill it when it does not within [`EXIT_GRACE`].
async fn shut_down(child: &mut Child) -> String {
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) if status.success() => "exited 0".into(),
        Ok(Ok(status)) => format!("exited: {status}"),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            let killed = child.kill().await;
            format!(
                "did not exit within {} s of its stdin closing; killed ({killed:?})",
                EXIT_GRACE.as_secs()
            )
        }
    }
}

async fn run_pass(
    args: &Args,
    work: &Path,
    server: Server,
    number: usize,
    effort: Effort,
) -> Result<Pass, Error> {
    let dir = work.join(format!("{}-{number}", server.label()));
    let mut command = match server {
        Server::Airlock => airlock_command(args, &dir)?,
        Server::Peer => peer_command(args, &dir)?,
    };
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path)?;
    command
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    let result = drive(&mut command, server, number, effort).await;
    if result.is_err() {
        // What the server said: its stderr, and hyper-mcp's log file
        // (it logs there, not to stderr).
        let mut logs = vec![stderr_path];
        if let Ok(entries) = std::fs::read_dir(dir.join("logs")) {
            logs.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
        for path in logs {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            if !tail.is_empty() {
                eprintln!("--- {} (last lines) ---", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
    result
}

async fn drive(
    command: &mut Command,
    server: Server,
    number: usize,
    effort: Effort,
) -> Result<Pass, Error> {
    let label = server.label();
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("{label}: cannot start: {e}"))?;
    let pid = child
        .id()
        .ok_or_else(|| format!("{label}: exited at once"))?;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(format!("{label}: no stdio pipes").into());
    };
    let client =
        ().serve((stdout, stdin))
            .await
            .map_err(|e| format!("{label}: initialize failed: {e}"))?;
    let server_info = client
        .peer_info()
        .and_then(|info| {
            let server = info.server_info.as_ref()?;
            Some(format!("{} {}", server.name, server.version))
        })
        .unwrap_or_else(|| "unknown".into());
    let tools = client
        .list_all_tools()
        .await
        .map_err(|e| format!("{label}: tools/list failed: {e}"))?;
    if !tools.iter().any(|t| t.name == server.tool()) {
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        return Err(format!("{label}: no tool {} among {names:?}", server.tool()).into());
    }
    let start = start.elapsed();
    let peer = client.peer().clone();

    let mut n = 0;
    for _ in 0..effort.warm_up {
        call(&peer, server, n).await?;
        n += 1;
    }
    let rss_warm_kb = status_kb(pid, "VmRSS")?;
    let before = cpu_times(pid)?;
    let sequential = sequential(&peer, server, n, effort.sequential).await?;
    let between = cpu_times(pid)?;
    let sequential = sequential.cpu(before, between);
    let rss_sequential_kb = status_kb(pid, "VmRSS")?;
    n += effort.sequential as u64;
    let concurrent = concurrent(&peer, server, n, effort.concurrent_for).await?;
    let concurrent = concurrent.cpu(between, cpu_times(pid)?);
    let rss_end_kb = status_kb(pid, "VmRSS")?;
    let hwm_kb = status_kb(pid, "VmHWM")?;

    drop(peer);
    // Ends the session: the transport is dropped, the server's stdin closes.
    let quit = client.cancel().await;
    let mut exit = shut_down(&mut child).await;
    if let Err(e) = quit {
        exit.push_str(&format!("; the client's session task failed: {e}"));
    }
    Ok(Pass {
        server,
        number,
        server_info,
        start,
        sequential,
        concurrent,
        rss_warm_kb,
        rss_sequential_kb,
        rss_end_kb,
        hwm_kb,
        exit,
    })
}

// ------------------------------------------------------------- report

fn report(args: &Args, effort: Effort, machine: &str, passes: &[Pass]) -> String {
    let mut out = String::new();
    let airlock_info = passes
        .iter()
        .find(|p| p.server == Server::Airlock)
        .map_or("?", |p| p.server_info.as_str());
    let peer_info = passes
        .iter()
        .find(|p| p.server == Server::Peer)
        .map_or("?", |p| p.server_info.as_str());
    let _ = writeln!(
        out,
        "Servers: {airlock_info} (commit {}), {peer_info}. Client: rmcp, one session per server process.",
        args.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(
        out,
        "Machine: {machine}. Mode: {}.\n",
        if effort.smoke {
            "smoke (few calls; figures not meaningful)"
        } else {
            "full"
        }
    );
    let _ = writeln!(
        out,
        "| server | pass | mode | calls | calls/s | p50 | p99 | server CPU a call | client CPU a call | peak RSS |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for pass in passes {
        for (mode, cell) in [
            ("sequential".to_owned(), &pass.sequential),
            (format!("{IN_FLIGHT} in flight"), &pass.concurrent),
        ] {
            let (server_cpu, client_cpu) = cell.cpu_per_call();
            let _ = writeln!(
                out,
                "| {} | {} | {mode} | {} | {:.0} | {} | {} | {} | {} | {} |",
                pass.server.label(),
                pass.number,
                cell.calls,
                cell.per_second(),
                us(cell.percentile(50.0)),
                us(cell.percentile(99.0)),
                us(server_cpu),
                us(client_cpu),
                mib(pass.hwm_kb),
            );
        }
    }

    // Each server's passes together: calls/s over all its calls, p50/p99
    // of all its latencies.
    let pooled = |server: Server, concurrent_mode: bool| -> Cell {
        let mut latencies = Vec::new();
        let mut elapsed = Duration::ZERO;
        let mut cpu = (Duration::ZERO, Duration::ZERO);
        for pass in passes.iter().filter(|p| p.server == server) {
            let cell = if concurrent_mode {
                &pass.concurrent
            } else {
                &pass.sequential
            };
            latencies.extend_from_slice(&cell.latencies);
            elapsed += cell.elapsed;
            cpu.0 += cell.server_cpu;
            cpu.1 += cell.client_cpu;
        }
        Cell::new(latencies, elapsed).cpu((Duration::ZERO, Duration::ZERO), cpu)
    };
    let _ = writeln!(
        out,
        "\nBoth passes of each server together (calls/s over all their calls, percentiles of all their latencies):\n"
    );
    let _ = writeln!(
        out,
        "| mode | Airlock calls/s | hyper-mcp calls/s | Airlock ÷ hyper-mcp | Airlock p50 | hyper-mcp p50 | Airlock p99 | hyper-mcp p99 | Airlock CPU a call | hyper-mcp CPU a call |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (mode, concurrent_mode) in [
        ("sequential".to_owned(), false),
        (format!("{IN_FLIGHT} in flight"), true),
    ] {
        let a = pooled(Server::Airlock, concurrent_mode);
        let p = pooled(Server::Peer, concurrent_mode);
        let _ = writeln!(
            out,
            "| {mode} | {:.0} | {:.0} | {:.2}× | {} | {} | {} | {} | {} | {} |",
            a.per_second(),
            p.per_second(),
            a.per_second() / p.per_second().max(f64::MIN_POSITIVE),
            us(a.percentile(50.0)),
            us(p.percentile(50.0)),
            us(a.percentile(99.0)),
            us(p.percentile(99.0)),
            us(a.cpu_per_call().0),
            us(p.cpu_per_call().0),
        );
    }
    let _ = writeln!(out);
    for pass in passes {
        let _ = writeln!(
            out,
            "- {} pass {}: {} ready (spawn to tools listed) in {:.0} ms; resident {} after the warm-up, {} after the sequential calls, {} at the end, peak {}; {}.",
            pass.server.label(),
            pass.number,
            pass.server_info,
            pass.start.as_secs_f64() * 1e3,
            mib(pass.rss_warm_kb),
            mib(pass.rss_sequential_kb),
            mib(pass.rss_end_kb),
            mib(pass.hwm_kb),
            pass.exit
        );
    }
    out
}

async fn run() -> Result<(), Error> {
    let args = parse_args()?;
    let effort = if args.smoke {
        Effort {
            warm_up: 20,
            sequential: 100,
            concurrent_for: Duration::from_millis(300),
            smoke: true,
        }
    } else {
        Effort {
            warm_up: 500,
            sequential: 10_000,
            concurrent_for: Duration::from_secs(4),
            smoke: false,
        }
    };
    for path in [
        &args.airlock,
        &args.component,
        &args.hyper_mcp,
        &args.plugin,
    ] {
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()).into());
        }
    }
    let machine = machine();
    let work = tempfile::tempdir()?;
    let order = [
        (Server::Airlock, 1),
        (Server::Peer, 1),
        (Server::Peer, 2),
        (Server::Airlock, 2),
    ];
    let mut passes = Vec::with_capacity(order.len());
    for (server, number) in order {
        eprintln!("peer-bench: {} pass {number}…", server.label());
        passes.push(run_pass(&args, work.path(), server, number, effort).await?);
    }
    print!("{}", report(&args, effort, &machine, &passes));
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("peer-bench: {e}");
        std::process::exit(1);
    }
}
