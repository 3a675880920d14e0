//! `airlock plugins pack | keygen | sign | diff` and signature policy, on
//! the real binary and a real example plugin.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlock_tests::PLUGINS_DIR;
use serde_json::Value;

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// The binary under test: this build's, or `AIRLOCK_TEST_BIN`.
fn airlock() -> std::ffi::OsString {
    std::env::var_os("AIRLOCK_TEST_BIN").unwrap_or_else(|| AIRLOCK.into())
}

/// A scratch directory with a plugins directory, a data directory and an
/// optional configuration file.
struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            root: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(env.plugins()).unwrap();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn plugins(&self) -> PathBuf {
        self.path("plugins")
    }

    fn config(&self, text: &str) {
        fs::write(self.path("airlock.toml"), text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(airlock());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(self.root.path())
            .arg("--plugins-dir")
            .arg(self.plugins())
            .arg("--data-dir")
            .arg(self.path("data"));
        if self.path("airlock.toml").exists() {
            cmd.arg("--config").arg(self.path("airlock.toml"));
        }
        cmd.args(args).output().unwrap()
    }

    /// Run, expecting success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `text` example plugin as its author has it: the source manifest
/// (no sha256) and the built component.
fn text_source(into: &Path) -> PathBuf {
    let dir = into.join("text-src");
    fs::create_dir_all(&dir).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/text/plugin.toml");
    fs::copy(source, dir.join("plugin.toml")).unwrap();
    fs::copy(
        Path::new(PLUGINS_DIR).join("text/text.wasm"),
        dir.join("text.wasm"),
    )
    .unwrap();
    dir
}

/// A copy of the built (stamped) `text` plugin directory.
fn text_copy(to: &Path) -> PathBuf {
    fs::create_dir_all(to).unwrap();
    for file in ["plugin.toml", "text.wasm"] {
        fs::copy(
            Path::new(PLUGINS_DIR).join("text").join(file),
            to.join(file),
        )
        .unwrap();
    }
    to.to_owned()
}

fn keygen(env: &Env, name: &str) -> String {
    let out = env.ok(&["plugins", "keygen", "--out", name]);
    let key = out.trim().to_owned();
    assert!(key.starts_with("ed25519:"), "{out}");
    key
}

/// `plugins list --json`: the kind each failed plugin failed with, and
/// the loaded plugins.
fn listing(env: &Env) -> (Vec<String>, Vec<String>) {
    let out = env.run(&["plugins", "list", "--json"]);
    let value = json(&out);
    let loaded = value["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let failed = value["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"]["kind"].as_str().unwrap().to_owned())
        .collect();
    (loaded, failed)
}

#[test]
fn pack_sign_and_load_with_require_signature() {
    let env = Env::new();
    let source = text_source(env.root.path());
    env.ok(&[
        "plugins",
        "pack",
        source.to_str().unwrap(),
        "-o",
        "text.tar.gz",
    ]);
    let alice = keygen(&env, "alice.key");
    let bob = keygen(&env, "bob.key");
    env.config(&format!(
        "[policy]\nrequire_signature = true\ntrusted_keys = {{ alice = \"{alice}\" }}\n"
    ));

    // Sign the archive, then put it in the plugins directory as a plugin.
    let out = env.ok(&["plugins", "sign", "text.tar.gz", "--key", "alice.key"]);
    assert!(out.contains(&alice), "{out}");
    let package = airlock_host::Package::from_archive(&env.path("text.tar.gz")).unwrap();
    assert_eq!(package.signature().unwrap().key().to_string(), alice);
    package.write_dir(&env.plugins().join("text")).unwrap();
    assert_eq!(listing(&env), (vec!["text".to_owned()], vec![]));
    let out = env.run(&["inspect", "text", "--json"]);
    let report = json(&out);
    assert_eq!(report["signer"]["name"], "alice", "{report}");
    assert_eq!(report["signer"]["trusted"], true, "{report}");
    let text = env.ok(&["inspect", "text"]);
    assert!(
        text.contains(&format!("signature alice ({alice})")),
        "{text}"
    );
    let out = env.ok(&[
        "call",
        "text/slugify",
        "--args",
        r#"{"text": "Signed, Sealed"}"#,
    ]);
    assert!(out.contains("signed-sealed"), "{out}");

    // Unsigned: refused, by its own kind and exit code.
    fs::remove_file(env.plugins().join("text/plugin.sig")).unwrap();
    assert_eq!(listing(&env).1, ["plugin_unsigned"]);
    let out = env.run(&["call", "text/slugify", "--args", "{}", "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert_eq!(json(&out)["error"]["kind"], "plugin_unsigned");

    // Signed by a key the operator does not trust.
    env.ok(&["plugins", "sign", "plugins/text", "--key", "bob.key"]);
    assert_eq!(listing(&env).1, ["signer_untrusted"]);
    let out = env.run(&["call", "text/slugify", "--args", "{}"]);
    assert_eq!(out.status.code(), Some(9));
    assert!(stderr(&out).contains(&bob), "{}", stderr(&out));

    // Signed by alice, then the manifest edited: the signature no longer
    // holds, required or not.
    env.ok(&["plugins", "sign", "plugins/text", "--key", "alice.key"]);
    assert_eq!(listing(&env).0, ["text"]);
    let manifest = env.plugins().join("text/plugin.toml");
    let edited = fs::read_to_string(&manifest)
        .unwrap()
        .replace("fuel = 2_000_000_000", "fuel = 3_000_000_000");
    fs::write(&manifest, edited).unwrap();
    assert_eq!(listing(&env).1, ["signature_invalid"]);
    env.config(&format!(
        "[policy]\ntrusted_keys = {{ alice = \"{alice}\" }}\n"
    ));
    assert_eq!(listing(&env).1, ["signature_invalid"]);

    // A garbled signature file is refused even when none is required.
    fs::write(env.plugins().join("text/plugin.sig"), "key = 1\n").unwrap();
    assert_eq!(listing(&env).1, ["signature_invalid"]);
}

#[test]
fn an_untrusted_signer_is_shown_when_signatures_are_not_required() {
    let env = Env::new();
    let dir = text_copy(&env.plugins().join("text"));
    let bob = keygen(&env, "bob.key");
    env.ok(&["plugins", "sign", dir.to_str().unwrap(), "--key", "bob.key"]);
    assert_eq!(listing(&env), (vec!["text".to_owned()], vec![]));
    let report = json(&env.run(&["inspect", "text", "--json"]));
    assert_eq!(report["signer"]["trusted"], false, "{report}");
    assert_eq!(report["signer"]["key"], bob.as_str(), "{report}");
    let findings = report["findings"].to_string();
    assert!(
        findings.contains("not among the operator's trusted_keys"),
        "{findings}"
    );
}

/// A key trusted for `billing` only cannot vouch for `text`: refused at
/// install when signatures are required (nothing installed), and the
/// same key scoped to `text` too installs it.
#[test]
fn a_scoped_key_cannot_install_another_plugin() {
    let env = Env::new();
    let source = text_source(env.root.path());
    env.ok(&[
        "plugins",
        "pack",
        source.to_str().unwrap(),
        "-o",
        "text.tar.gz",
    ]);
    let team = keygen(&env, "team.key");
    env.ok(&["plugins", "sign", "text.tar.gz", "--key", "team.key"]);
    let scoped = |plugins: &str| {
        env.config(&format!(
            "[policy]\nrequire_signature = true\n[policy.trusted_keys]\nbilling-team = {{ key = \"{team}\", plugins = [{plugins}] }}\n"
        ));
    };
    scoped("\"billing\"");
    let out = env.run(&["plugins", "install", "text.tar.gz"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("trusts (as `billing-team`) only for `billing`"),
        "{}",
        stderr(&out)
    );
    // Not required: inspect names the scope, not "not trusted at all".
    env.config(&format!(
        "[policy.trusted_keys]\nbilling-team = {{ key = \"{team}\", plugins = [\"billing\"] }}\n"
    ));
    airlock_host::Package::from_archive(&env.path("text.tar.gz"))
        .unwrap()
        .write_dir(&env.plugins().join("text"))
        .unwrap();
    let report = json(&env.run(&["inspect", "text", "--json"]));
    assert_eq!(report["signer"]["trusted"], false, "{report}");
    assert!(
        report["findings"]
            .to_string()
            .contains("only for `billing`"),
        "{report}"
    );
    // Scoped to `text` too: installed now, so nothing was before.
    scoped("\"billing\", \"text\"");
    let out = env.ok(&["plugins", "install", "text.tar.gz"]);
    assert!(out.starts_with("installed text"), "{out}");
    assert!(out.contains("signed by billing-team"), "{out}");
}

/// `cases.jsonl` decides readiness and evaluation: a signed plugin whose
/// cases were edited, removed or added after signing is refused, signed
/// or not required.
#[test]
fn cases_changed_after_signing_break_the_signature() {
    let env = Env::new();
    let source = text_source(env.root.path());
    let cases = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/text/cases.jsonl"),
    )
    .unwrap();
    fs::write(source.join("cases.jsonl"), &cases).unwrap();
    env.ok(&[
        "plugins",
        "pack",
        source.to_str().unwrap(),
        "-o",
        "text.tar.gz",
    ]);
    let alice = keygen(&env, "alice.key");
    env.ok(&["plugins", "sign", "text.tar.gz", "--key", "alice.key"]);
    env.config(&format!(
        "[policy]\ntrusted_keys = {{ alice = \"{alice}\" }}\n"
    ));
    let dir = env.plugins().join("text");
    airlock_host::Package::from_archive(&env.path("text.tar.gz"))
        .unwrap()
        .write_dir(&dir)
        .unwrap();
    assert!(
        fs::read_to_string(dir.join("plugin.sig"))
            .unwrap()
            .contains("format = 2"),
    );
    assert_eq!(listing(&env), (vec!["text".to_owned()], vec![]));

    let first_line_only = cases.lines().next().unwrap().to_owned() + "\n";
    fs::write(dir.join("cases.jsonl"), &first_line_only).unwrap();
    assert_eq!(listing(&env).1, ["signature_invalid"]);
    fs::remove_file(dir.join("cases.jsonl")).unwrap();
    assert_eq!(listing(&env).1, ["signature_invalid"]);
    fs::write(dir.join("cases.jsonl"), &cases).unwrap();
    assert_eq!(listing(&env), (vec!["text".to_owned()], vec![]));
}

#[test]
fn keygen_never_overwrites_a_key() {
    let env = Env::new();
    keygen(&env, "k.key");
    let before = fs::read(env.path("k.key")).unwrap();
    let out = env.run(&["plugins", "keygen", "--out", "k.key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("never overwritten"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(env.path("k.key")).unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(env.path("k.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn bad_trusted_keys_are_configuration_errors() {
    let env = Env::new();
    for (config, expected) in [
        (
            "[policy]\ntrusted_keys = { alice = \"AAAA\" }\n",
            "write `ed25519:`",
        ),
        (
            "[policy]\ntrusted_keys = { alice = \"ed25519:AAAA\" }\n",
            "3 bytes where an Ed25519 key has 32",
        ),
        ("[policy]\ntrusted_keys = { alice = 7 }\n", "invalid type"),
        (
            "[policy]\nrequire_signature = true\n",
            "trusted_keys is empty",
        ),
    ] {
        env.config(config);
        let out = env.run(&["plugins", "list"]);
        assert_eq!(out.status.code(), Some(1), "{config}");
        assert!(
            stderr(&out).contains(expected),
            "{config}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn diff_json_compares_two_versions() {
    let env = Env::new();
    let old = text_copy(&env.path("text-0.1.0"));
    let new = text_copy(&env.path("text-0.2.0"));
    let manifest = fs::read_to_string(new.join("plugin.toml")).unwrap();
    // A wider grant, a raised limit, a riskier tool, a tool gone.
    let edited = manifest
        .replace("version = \"0.1.0\"", "version = \"0.2.0\"")
        .replace("log = true", "log = true\nclocks = true")
        .replace("timeout_ms = 2_000", "timeout_ms = 5_000")
        .replace(
            "name = \"stats\"\nrisk = \"read\"",
            "name = \"stats\"\nrisk = \"write\"",
        )
        .replace("[[tools]]\nname = \"case\"\nrisk = \"read\"\n", "");
    assert_ne!(edited, manifest);
    fs::write(new.join("plugin.toml"), edited).unwrap();

    let out = env.run(&[
        "plugins",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let diff = json(&out);
    assert_eq!(diff["plugin"], "text");
    assert_eq!(diff["from_version"], "0.1.0");
    assert_eq!(diff["to_version"], "0.2.0");
    assert_eq!(diff["widens"], true, "{diff}");
    let changes = diff["changes"].as_array().unwrap();
    let find = |area: &str, subject: &str| {
        changes
            .iter()
            .find(|c| c["area"] == area && c["subject"] == subject)
            .unwrap_or_else(|| panic!("no {area} {subject} in {diff}"))
            .clone()
    };
    let clocks = find("capability", "capabilities.clocks");
    assert_eq!(clocks["kind"], "added");
    assert_eq!(clocks["widens"], true);
    let timeout = find("limit", "timeout_ms");
    assert_eq!(
        (
            timeout["kind"].as_str(),
            timeout["from"].as_str(),
            timeout["to"].as_str()
        ),
        (Some("raised"), Some("2000"), Some("5000"))
    );
    assert_eq!(timeout["widens"], true);
    let risk = find("risk", "stats");
    assert_eq!(
        (risk["from"].as_str(), risk["to"].as_str()),
        (Some("read"), Some("write"))
    );
    assert_eq!(risk["widens"], true);
    let gone = find("tool", "case");
    assert_eq!(gone["kind"], "removed");
    assert_eq!(gone["widens"], false);

    // Backwards, the same changes narrow — except the tool that comes back
    // and the risk, lowered: a tool with a lower risk leaves the gates
    // keyed on it (the policy's approvals, read-only mode), so either
    // change of a risk widens.
    let back = json(&env.run(&[
        "plugins",
        "diff",
        new.to_str().unwrap(),
        old.to_str().unwrap(),
        "--json",
    ]));
    let widening: Vec<_> = back["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["widens"] == true)
        .map(|c| format!("{} {}", c["area"], c["subject"]))
        .collect();
    assert_eq!(
        widening,
        ["\"tool\" \"case\"", "\"risk\" \"stats\""],
        "{back}"
    );

    // An archive compares like its directory; the text form says it widens.
    env.ok(&["plugins", "pack", new.to_str().unwrap(), "-o", "new.tar.gz"]);
    let text = env.ok(&["plugins", "diff", old.to_str().unwrap(), "new.tar.gz"]);
    assert!(text.starts_with("text 0.1.0 -> 0.2.0"), "{text}");
    assert!(text.contains("widens: yes"), "{text}");
    assert!(
        text.contains("+ risk stats raised: read -> write"),
        "{text}"
    );

    // The same plugin twice: nothing to approve.
    let same = json(&env.run(&[
        "plugins",
        "diff",
        old.to_str().unwrap(),
        old.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(same["widens"], false);
    assert_eq!(same["changes"], serde_json::json!([]));
}

/// The diff quotes what an author wrote (a redaction pointer here): a
/// terminal sequence in it erased the real "widens: yes" and printed
/// "widens: no" over it on the reviewer's screen. Shown escaped now.
#[test]
fn a_diff_shows_an_authors_terminal_sequences_as_text() {
    let env = Env::new();
    let old = text_copy(&env.path("text-0.1.0"));
    let new = text_copy(&env.path("text-0.2.0"));
    let manifest = fs::read_to_string(new.join("plugin.toml")).unwrap();
    let edited = manifest.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1).replacen(
        "name = \"slugify\"\nrisk = \"read\"",
        "name = \"slugify\"\nrisk = \"read\"\nredact = [\"/x\\u001b[1A\\u001b[2K\\rwidens: no\"]",
        1,
    );
    assert_ne!(edited, manifest);
    fs::write(new.join("plugin.toml"), edited).unwrap();
    // Backwards, the pointer is removed: quoted in the text form.
    let text = env.ok(&[
        "plugins",
        "diff",
        new.to_str().unwrap(),
        old.to_str().unwrap(),
    ]);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("\\u{1b}[1A"), "{text}");
    assert!(text.contains("widens: yes"), "{text}");
}

#[test]
fn hostile_archives_are_refused_by_the_cli() {
    let env = Env::new();
    let old = text_copy(&env.path("text"));
    fs::write(env.path("junk.tar.gz"), b"not an archive").unwrap();
    let out = env.run(&["plugins", "diff", old.to_str().unwrap(), "junk.tar.gz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a readable .tar.gz"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["plugins", "diff", old.to_str().unwrap(), "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no plugin `nowhere`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_archive_is_inspected_as_an_install_would_unpack_it() {
    let env = Env::new();
    let text = text_copy(&env.path("text"));
    env.ok(&[
        "plugins",
        "pack",
        text.to_str().unwrap(),
        "-o",
        "text.tar.gz",
    ]);
    let report = env.ok(&["inspect", "text.tar.gz"]);
    assert!(report.contains("plugin text"), "{report}");
    // The scratch copy it inspected is gone: the report names the archive.
    assert!(
        report.contains("manifest text.tar.gz:plugin.toml"),
        "{report}"
    );
    let out = env.run(&["inspect", "text.tar.gz", "--json"]);
    assert_eq!(json(&out)["plugin"], "text");
    // A plugin's name means the plugin, though a file of that name sits in
    // the working directory (`./NAME` is the file).
    text_copy(&env.plugins().join("text"));
    fs::copy(env.path("text.tar.gz"), env.path("named")).unwrap();
    fs::rename(env.plugins().join("text"), env.plugins().join("named")).unwrap();
    let report = env.ok(&["inspect", "named"]);
    assert!(report.contains("plugins/named/plugin.toml"), "{report}");
    let report = env.ok(&["inspect", "./named"]);
    assert!(report.contains("manifest ./named:plugin.toml"), "{report}");

    // An archive with a link in it is refused, as an install refuses it,
    // before anything is inspected; so is one that is not an archive.
    let hostile = env.path("hostile");
    fs::create_dir(&hostile).unwrap();
    fs::copy(text.join("plugin.toml"), hostile.join("plugin.toml")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", hostile.join("text.wasm")).unwrap();
    let tar = Command::new("tar")
        .current_dir(&hostile)
        .args(["-czf", "../hostile.tar.gz", "plugin.toml", "text.wasm"])
        .status()
        .unwrap();
    assert!(tar.success());
    let out = env.run(&["inspect", "hostile.tar.gz"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("link"), "{}", stderr(&out));
    fs::write(env.path("junk.tar.gz"), b"not an archive").unwrap();
    let out = env.run(&["inspect", "junk.tar.gz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a readable .tar.gz"),
        "{}",
        stderr(&out)
    );
}
