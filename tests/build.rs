//! Builds the example plugins and the test guests (wasm32-wasip2 components)
//! with `scripts/build-guests`, the same script the README and the demo use,
//! and generates path constants and the `foreach_guest!` macro.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned();
    // Every source file, not the directories: cargo scans a watched
    // directory whole, and these hold build output (`plugins/target`,
    // `tests/guests/target` from linting and testing the guest workspaces
    // for the host, Python's `__pycache__`) that changes on every run.
    for watched in ["plugins", "sdk", "wit", "tests/guests", "scripts"] {
        watch(&root.join(watched));
    }
    println!("cargo::rerun-if-env-changed=AIRLOCK_SKIP_GUEST_BUILD");

    let out = root.join("target/airlock");
    if std::env::var_os("AIRLOCK_SKIP_GUEST_BUILD").is_none() {
        let status = Command::new("bash")
            .arg(root.join("scripts/build-guests"))
            .current_dir(&root)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(_) => fail(
                "building the guest components failed (see above); if the wasm32-wasip2 toolchain is missing, run scripts/setup-guest-toolchain",
            ),
            Err(e) => fail(&format!("cannot run scripts/build-guests: {e}")),
        }
    }

    let guests_dir = out.join("test-guests");
    let mut guests: Vec<String> = std::fs::read_dir(&guests_dir)
        .unwrap_or_else(|e| {
            fail(&format!(
                "no test guests in {} ({e}); run scripts/build-guests",
                guests_dir.display()
            ))
        })
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".wasm").map(str::to_owned)
        })
        .collect();
    guests.sort();

    let mut code = String::new();
    line(
        &mut code,
        "/// Directory of the built example plugins (one subdirectory each).",
    );
    line(
        &mut code,
        format!(
            "pub const PLUGINS_DIR: &str = {:?};",
            path_str(&out.join("plugins"))
        ),
    );
    line(
        &mut code,
        "/// Directory of the built example releases (`plugins/releases`): another version of an example plugin each.",
    );
    line(
        &mut code,
        format!(
            "pub const RELEASES_DIR: &str = {:?};",
            path_str(&out.join("releases"))
        ),
    );
    line(
        &mut code,
        "/// Directory of the built Python example plugins (`plugins/*/app.py`), one subdirectory each.",
    );
    line(
        &mut code,
        format!(
            "pub const PYTHON_PLUGINS_DIR: &str = {:?};",
            path_str(&out.join("python-plugins"))
        ),
    );
    for guest in &guests {
        let ident = guest.replace('-', "_").to_uppercase();
        line(
            &mut code,
            format!("/// The `{guest}` test guest component."),
        );
        line(
            &mut code,
            format!(
                "pub const {ident}: &str = {:?};",
                path_str(&guests_dir.join(format!("{guest}.wasm")))
            ),
        );
    }
    line(
        &mut code,
        "/// Invoke `$mac!(guest_name)` for every test guest, so a guest without a test fails to compile.",
    );
    line(
        &mut code,
        "#[macro_export]\nmacro_rules! foreach_guest {\n    ($mac:ident) => {",
    );
    for guest in &guests {
        line(
            &mut code,
            format!("        $mac!({});", guest.replace('-', "_")),
        );
    }
    line(&mut code, "    };\n}");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("guests.rs");
    std::fs::write(&dest, code)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", dest.display())));
}

fn line(code: &mut String, text: impl AsRef<str>) {
    code.push_str(text.as_ref());
    code.push('\n');
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| fail("repository path is not UTF-8"))
        .to_owned()
}

fn fail(message: &str) -> ! {
    eprintln!("airlock-tests: {message}");
    std::process::exit(1);
}

/// Asks cargo to rerun this script when anything under `dir` changes but
/// build output and hidden files. A directory with none of those beneath it
/// is watched whole (so a file added to it counts); above them, each file
/// and each such directory is watched on its own.
fn watch(dir: &Path) {
    let mut lines = Vec::new();
    if watch_under(dir, &mut lines) {
        lines = vec![dir.to_owned()];
    }
    for path in lines {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// Collects what to watch under `dir` into `lines`; `true` when nothing
/// under it is skipped (then `dir` itself can be watched instead).
fn watch_under(dir: &Path, lines: &mut Vec<PathBuf>) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Gone or unreadable: watched as a path (its creation reruns).
        return true;
    };
    let mut clean = true;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "__pycache__" {
            clean = false;
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let mut below = Vec::new();
            if watch_under(&path, &mut below) {
                lines.push(path);
            } else {
                clean = false;
                lines.extend(below);
            }
        } else {
            lines.push(path);
        }
    }
    clean
}
