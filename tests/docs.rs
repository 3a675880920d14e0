//! The guides name real things: every path they cite exists, and every
//! item they cite (`Host::call`, `claim_key()`, `TelemetryConfig::sample_all`)
//! is defined — in the files cited on the same line, or anywhere in the
//! code when the line cites none. A rename that leaves a guide behind fails
//! here. The guides are `README.md` and every `docs/*.md`.

use std::path::{Path, PathBuf};

/// What the guides cite that is not this project's: other projects' items
/// (wasmtime, rmcp, std, Python), HTTP headers and cookie attributes,
/// names from specifications and from `/proc`.
const NOT_OURS: &[&str] = &[
    "InstancePre",
    "PoolingAllocationConfig::decommit_batch_size",
    "rmcp::transport::stdio_pipes",
    "Vec::clone",
    "TypedDict",
    "Authorization",
    "Cookie",
    "Date",
    "Secure",
    "EdDSA",
    "InputRequiredResult",
    "VmHWM",
];

/// `README.md` and every `docs/*.md`.
fn guides(root: &Path) -> Vec<PathBuf> {
    let mut guides = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/ is readable");
    for entry in docs {
        let path = entry.expect("docs/ is readable").path();
        if path.extension().is_some_and(|e| e == "md") {
            guides.push(path);
        }
    }
    guides.sort();
    guides
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

/// Backticked spans of `line`.
fn spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Top-level directories of the repository: a span starting with one is a
/// path.
const TOP: &[&str] = &[
    "host/",
    "sdk/",
    "tests/",
    "plugins/",
    "docs/",
    "scripts/",
    "wit/",
    "examples/",
    "fuzz/",
    ".ci/",
];

fn is_path(span: &str) -> bool {
    TOP.iter().any(|top| span.starts_with(top))
        && !span.contains(' ')
        && !span.starts_with("http")
        && !span.contains("::")
        && span
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-*".contains(c))
}

/// `Host::call`, `claim_key()`, `airlock_store::Ledger`, `KeyClaim` — not
/// prose, commands, config keys or lowercase words.
fn item_name(span: &str) -> Option<&str> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if let Some(function) = span.strip_suffix("()")
        && !function.contains("::")
    {
        return ident(function).then_some(function);
    }
    let span = span.strip_suffix("()").unwrap_or(span);
    if span.contains("::") && span.split("::").all(ident) {
        return span.rsplit("::").next();
    }
    // A type, trait or variant: `Pipeline`, `LoadError` (not `GET`).
    let camel = span.starts_with(|c: char| c.is_ascii_uppercase())
        && span.chars().any(|c| c.is_ascii_lowercase());
    (camel && ident(span)).then_some(span)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn defines(source: &str, name: &str) -> bool {
    ["fn", "struct", "enum", "trait", "type", "const", "mod", "static"]
        .iter()
        .any(|kw| {
            source.match_indices(&format!("{kw} {name}")).any(|(i, m)| {
                source[i + m.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_')
            })
        })
        || source.contains(&format!("macro_rules! {name}"))
        // Re-exports under another name: `pub use airlock_audit as audit_log;`.
        || source.contains(&format!(" as {name};"))
        // Enum variants (`    Name,` / `    Name {` / `    Name(`) and
        // struct fields (`    pub name: bool,`).
        || source.lines().any(|l| {
            let l = l.trim_start();
            let l = ["pub ", "pub(crate) "]
                .iter()
                .find_map(|vis| l.strip_prefix(vis))
                .unwrap_or(l);
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([',', ' ', '(', '{', ':']))
        })
}

#[test]
fn the_guides_name_only_what_exists() {
    let root = root();
    let mut all = Vec::new();
    for dir in ["host", "sdk", "tests", "examples", "plugins"] {
        rust_files(&root.join(dir), &mut all);
    }
    let everything: String = all
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let mut missing = Vec::new();
    for path in guides(&root) {
        let guide = path.strip_prefix(&root).unwrap_or(&path).display();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{guide}: {e}"));
        let mut in_code = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code {
                continue;
            }
            let spans = spans(line);
            let paths: Vec<&str> = spans.iter().copied().filter(|s| is_path(s)).collect();
            for path in &paths {
                let clean = path.trim_end_matches('/');
                if clean.contains('*') {
                    continue;
                }
                if !root.join(clean).exists() {
                    missing.push(format!("{guide}:{}: path `{path}`", n + 1));
                }
            }
            for span in &spans {
                let Some(name) = item_name(span) else {
                    continue;
                };
                if NOT_OURS.contains(span) {
                    continue;
                }
                let found = if paths.iter().any(|p| p.ends_with(".rs")) {
                    paths.iter().filter(|p| p.ends_with(".rs")).any(|p| {
                        std::fs::read_to_string(root.join(p)).is_ok_and(|s| defines(&s, name))
                    })
                } else {
                    defines(&everything, name)
                };
                if !found {
                    missing.push(format!("{guide}:{}: item `{span}`", n + 1));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the guides name things that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checker_catches_a_stale_name() {
    let source = "pub fn call(&self) {}\npub struct Host;\nenum E {\n    Load(LoadError),\n}";
    assert!(defines(source, "call"));
    assert!(defines(source, "Host"));
    assert!(defines(source, "Load"));
    assert!(!defines(source, "cal"));
    assert!(!defines(source, "claim_key"));
    assert_eq!(item_name("Host::call"), Some("call"));
    assert_eq!(item_name("airlock_store::Ledger"), Some("Ledger"));
    assert_eq!(item_name("airlock serve --http"), None);
    assert_eq!(item_name("claim_key()"), Some("claim_key"));
    assert_eq!(item_name("KeyClaim"), Some("KeyClaim"));
    assert_eq!(item_name("GET"), None);
    assert_eq!(item_name("read"), None);
    assert!(defines("pub use airlock_audit as audit_log;", "audit_log"));
    assert!(defines(
        "struct T {\n    pub sample_all: bool,\n}",
        "sample_all"
    ));
    assert!(!defines(
        "struct T {\n    pub sample_all: bool,\n}",
        "sample"
    ));
    assert_eq!(item_name("TelemetryConfig::sample_all"), Some("sample_all"));
    assert!(is_path("host/runtime/src/pipeline.rs"));
    assert!(!is_path("N/unit"));
}
