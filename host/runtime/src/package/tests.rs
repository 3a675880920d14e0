//! Packages: reading, writing, hostile archives, signatures.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write as _;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use super::*;

/// Bytes that pass the component header check (not a real component: a
/// package never compiles it).
fn component_bytes(tag: &str) -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const MANIFEST: &str = r#"# The text plugin, packaged.
[plugin]
name = "text"
version = "0.1.0"
component = "text.wasm"   # beside this file

[capabilities]
log = true

[[tools]]
name = "stats"
risk = "read"
"#;

/// A source plugin directory: manifest without a pin, component, cases.
fn source_dir(root: &Path) -> PathBuf {
    let dir = root.join("text");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(MANIFEST_FILE), MANIFEST).unwrap();
    fs::write(dir.join("text.wasm"), component_bytes("v1")).unwrap();
    fs::write(dir.join(CASES_FILE), "{\"tool\": \"stats\"}\n").unwrap();
    dir
}

/// A plugin directory whose manifest pins its component.
fn pinned_dir(root: &Path) -> PathBuf {
    let dir = source_dir(root);
    let pinned = MANIFEST.replace(
        "component = \"text.wasm\"",
        &format!(
            "component = \"text.wasm\"\nsha256 = \"{}\"",
            digest(&component_bytes("v1"))
        ),
    );
    fs::write(dir.join(MANIFEST_FILE), pinned).unwrap();
    dir
}

fn key_file(root: &Path, name: &str) -> (PathBuf, PublicKey) {
    let path = root.join(name);
    let public = generate_signing_key(&path).unwrap();
    (path, public)
}

fn trusting(name: &str, key: PublicKey, require: bool) -> Policy {
    Policy {
        trusted_keys: [(name.to_owned(), key.into())].into(),
        require_signature: require,
        ..Policy::default()
    }
}

#[test]
fn a_plugin_directory_reads_and_writes_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = pinned_dir(root.path());
    let package = Package::open(&dir).unwrap();
    assert_eq!(package.name(), "text");
    assert_eq!(package.version(), "0.1.0");
    assert_eq!(package.component_name(), "text.wasm");
    assert_eq!(package.component(), component_bytes("v1"));
    assert_eq!(package.component_digest(), digest(&component_bytes("v1")));
    assert_eq!(
        package.manifest_digest(),
        digest(&fs::read(dir.join(MANIFEST_FILE)).unwrap())
    );
    assert_eq!(package.cases(), Some("{\"tool\": \"stats\"}\n"));
    assert!(package.signature().is_none());

    let copy = root.path().join("copy");
    package.write_dir(&copy).unwrap();
    let again = Package::from_dir(&copy).unwrap();
    assert_eq!(again.manifest_text(), package.manifest_text());
    assert_eq!(again.component(), package.component());
    assert_eq!(again.cases(), package.cases());
    // Never over an existing directory, and nothing temporary left behind.
    let err = package.write_dir(&copy).unwrap_err();
    assert_eq!(err.kind(), "package_invalid", "{err}");
    let left: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.iter().all(|n| !n.contains("partial")), "{left:?}");
}

#[test]
fn a_failed_write_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    // The parent is a file: nothing can be created under it.
    let blocker = root.path().join("blocker");
    fs::write(&blocker, "x").unwrap();
    let err = package.write_dir(&blocker.join("plugin")).unwrap_err();
    assert_eq!(err.kind(), "io", "{err}");
    let err = package
        .write_archive(&blocker.join("plugin.tar.gz"))
        .unwrap_err();
    assert_eq!(err.kind(), "io", "{err}");
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 2); // text/, blocker
}

#[test]
fn archives_round_trip_and_are_reproducible() {
    let root = tempfile::tempdir().unwrap();
    let package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    let (a, b) = (root.path().join("a.tar.gz"), root.path().join("b.tar.gz"));
    package.write_archive(&a).unwrap();
    package.write_archive(&b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let read = Package::open(&a).unwrap();
    assert_eq!(read.manifest_digest(), package.manifest_digest());
    assert_eq!(read.component_digest(), package.component_digest());
    assert_eq!(read.cases(), package.cases());
    assert_eq!(read.source(), a);
}

#[test]
fn packing_stamps_the_digest_and_keeps_the_text() {
    let root = tempfile::tempdir().unwrap();
    let dir = source_dir(root.path());
    // No pin at all: the directory is not a package yet.
    let err = Package::from_dir(&dir).unwrap_err();
    assert_eq!(err.kind(), "manifest_invalid", "{err}");
    let package = Package::from_source_dir(&dir).unwrap();
    let text = package.manifest_text();
    assert!(
        text.contains(&format!("sha256 = \"{}\"", digest(&component_bytes("v1")))),
        "{text}"
    );
    assert!(text.starts_with("# The text plugin, packaged.\n"), "{text}");
    assert!(text.contains("component = \"text.wasm\"   # beside this file"));
    // A stale pin is replaced, not duplicated.
    let stale = MANIFEST.replace(
        "version = \"0.1.0\"",
        &format!("version = \"0.1.0\"\nsha256 = \"{}\"", "0".repeat(64)),
    );
    fs::write(dir.join(MANIFEST_FILE), stale).unwrap();
    let package = Package::from_source_dir(&dir).unwrap();
    assert_eq!(package.manifest_text().matches("sha256").count(), 1);
    assert_eq!(
        package.manifest().plugin.sha256,
        digest(&component_bytes("v1"))
    );
}

#[test]
fn a_build_is_stamped_like_a_pack_and_replaces_the_last_one() {
    let root = tempfile::tempdir().unwrap();
    // A project: manifest and cases, no component beside them (the build
    // wrote it elsewhere), a stray plugin.sig that is not part of a build.
    let project = source_dir(root.path());
    fs::remove_file(project.join("text.wasm")).unwrap();
    fs::write(project.join(SIGNATURE_FILE), "garbage").unwrap();
    let built = Package::from_build(&project, component_bytes("v1")).unwrap();
    assert_eq!(built.component_digest(), digest(&component_bytes("v1")));
    assert!(built.signature().is_none());
    assert_eq!(built.cases(), Some("{\"tool\": \"stats\"}\n"));
    // The same stamping as `plugins pack`.
    fs::write(project.join("text.wasm"), component_bytes("v1")).unwrap();
    fs::remove_file(project.join(SIGNATURE_FILE)).unwrap();
    let packed = Package::from_source_dir(&project).unwrap();
    assert_eq!(built.manifest_text(), packed.manifest_text());

    let out = root.path().join("out");
    built.replace_dir(&out).unwrap();
    assert_eq!(
        Package::from_dir(&out).unwrap().component(),
        component_bytes("v1")
    );
    let rebuilt = Package::from_build(&project, component_bytes("v2")).unwrap();
    rebuilt.replace_dir(&out).unwrap();
    assert_eq!(
        Package::from_dir(&out).unwrap().component(),
        component_bytes("v2")
    );
    let left: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with('.')), "{left:?}");

    // Never over something that is not a plugin directory.
    let other = root.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("notes.txt"), "keep me").unwrap();
    let err = rebuilt.replace_dir(&other).unwrap_err();
    assert_eq!(err.kind(), "package_invalid", "{err}");
    assert_eq!(
        fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep me"
    );

    // What a build produced must still be a component.
    let err = Package::from_build(&project, b"not wasm".to_vec()).unwrap_err();
    assert_eq!(err.kind(), "invalid_component", "{err}");
}

#[test]
fn a_component_that_does_not_match_its_pin_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = pinned_dir(root.path());
    fs::write(dir.join("text.wasm"), component_bytes("v2")).unwrap();
    let err = Package::from_dir(&dir).unwrap_err();
    assert_eq!(err.kind(), "digest_mismatch", "{err}");
    let archive = root.path().join("p.tar.gz");
    let manifest = fs::read(dir.join(MANIFEST_FILE)).unwrap();
    write_raw(
        &archive,
        &[
            raw(MANIFEST_FILE, EntryType::Regular, &manifest),
            raw("text.wasm", EntryType::Regular, &component_bytes("v2")),
        ],
    );
    let err = Package::from_archive(&archive).unwrap_err();
    assert_eq!(err.kind(), "digest_mismatch", "{err}");
}

#[test]
fn components_must_sit_beside_the_manifest() {
    let root = tempfile::tempdir().unwrap();
    let dir = source_dir(root.path());
    fs::create_dir(dir.join("build")).unwrap();
    fs::rename(dir.join("text.wasm"), dir.join("build/text.wasm")).unwrap();
    fs::write(
        dir.join(MANIFEST_FILE),
        MANIFEST.replace("\"text.wasm\"", "\"build/text.wasm\""),
    )
    .unwrap();
    let err = Package::from_source_dir(&dir).unwrap_err();
    assert_eq!(err.kind(), "package_invalid", "{err}");
    assert!(err.to_string().contains("beside plugin.toml"), "{err}");
}

// ---- hostile archives ----------------------------------------------------

/// One entry of a hand-made archive: name bytes written straight into the
/// header, so `..` and absolute paths get through (tar's own builder
/// refuses them).
struct Raw {
    name: Vec<u8>,
    kind: EntryType,
    data: Vec<u8>,
    link: Option<&'static str>,
}

fn raw(name: &str, kind: EntryType, data: &[u8]) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind,
        data: data.to_vec(),
        link: None,
    }
}

fn write_raw(path: &Path, entries: &[Raw]) {
    let file = fs::File::create(path).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
    for entry in entries {
        let mut header = Header::new_gnu();
        {
            let name = &mut header.as_old_mut().name;
            name[..entry.name.len()].copy_from_slice(&entry.name);
        }
        header.set_entry_type(entry.kind);
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        if let Some(link) = entry.link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

/// The files of a good package, as archive entries.
fn good_entries(root: &Path) -> Vec<Raw> {
    let dir = pinned_dir(root);
    vec![
        raw(
            MANIFEST_FILE,
            EntryType::Regular,
            &fs::read(dir.join(MANIFEST_FILE)).unwrap(),
        ),
        raw("text.wasm", EntryType::Regular, &component_bytes("v1")),
    ]
}

fn refused(root: &Path, entries: &[Raw]) -> LoadError {
    refused_with(root, entries, &default_caps())
}

fn refused_with(root: &Path, entries: &[Raw], caps: &archive::Caps) -> LoadError {
    let path = root.join("hostile.tar.gz");
    write_raw(&path, entries);
    Package::from_archive_with(&path, caps).unwrap_err()
}

#[test]
fn hostile_archives_are_refused_each_with_its_own_kind() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let with = |extra: Raw| {
        let mut entries = good_entries(r);
        entries.insert(0, extra);
        entries
    };
    let mut symlink = raw("evil.wasm", EntryType::Symlink, b"");
    symlink.link = Some("/etc/passwd");
    let mut hardlink = raw("text.wasm", EntryType::Link, b"");
    hardlink.link = Some("plugin.toml");
    for (entries, kind) in [
        (
            with(raw("../plugin.toml", EntryType::Regular, b"x")),
            "archive_parent_path",
        ),
        (
            with(raw("a/../../x.wasm", EntryType::Regular, b"x")),
            "archive_parent_path",
        ),
        (
            with(raw("/etc/cron.d/x", EntryType::Regular, b"x")),
            "archive_absolute_path",
        ),
        (
            with(raw("sub/plugin.toml", EntryType::Regular, b"x")),
            "archive_nested_path",
        ),
        (
            with(raw("./plugin.toml", EntryType::Regular, b"x")),
            "archive_nested_path",
        ),
        (
            with(raw("data/", EntryType::Directory, b"")),
            "archive_directory",
        ),
        (with(symlink), "archive_link"),
        (with(hardlink), "archive_link"),
        (
            with(raw("tty.wasm", EntryType::Char, b"")),
            "archive_special_file",
        ),
        (
            with(raw("disk.wasm", EntryType::Block, b"")),
            "archive_special_file",
        ),
        (
            with(raw("pipe.wasm", EntryType::Fifo, b"")),
            "archive_special_file",
        ),
        (
            with(raw("plugin.toml", EntryType::Regular, b"x")),
            "archive_duplicate_entry",
        ),
        (
            with(raw("README.md", EntryType::Regular, b"x")),
            "archive_unknown_entry",
        ),
        (
            with(raw("other.wasm", EntryType::Regular, b"x")),
            "archive_unknown_entry",
        ),
        (
            with(raw(
                MANIFEST_FILE,
                EntryType::Regular,
                &vec![b'#'; MAX_MANIFEST_BYTES as usize + 1],
            )),
            "archive_entry_too_large",
        ),
        (
            with(raw(
                SIGNATURE_FILE,
                EntryType::Regular,
                &vec![b'#'; MAX_SIGNATURE_BYTES as usize + 1],
            )),
            "archive_entry_too_large",
        ),
        (
            vec![
                raw(MANIFEST_FILE, EntryType::Regular, b""),
                raw("a.wasm", EntryType::Regular, b""),
                raw(CASES_FILE, EntryType::Regular, b""),
                raw(SIGNATURE_FILE, EntryType::Regular, b""),
                raw("b.wasm", EntryType::Regular, b""),
            ],
            "archive_too_many_entries",
        ),
        (
            vec![raw("text.wasm", EntryType::Regular, &component_bytes("v1"))],
            "archive_missing_manifest",
        ),
        (vec![good_entries(r).remove(0)], "component_missing"),
    ] {
        let err = refused(r, &entries);
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.to_json()["kind"], kind);
        assert!(
            err.to_string().starts_with("plugin archive") || kind == "component_missing",
            "{err}"
        );
    }
}

#[test]
fn an_oversized_component_is_refused_before_it_is_read() {
    let root = tempfile::tempdir().unwrap();
    let caps = archive::Caps {
        component: 4,
        ..default_caps()
    };
    let err = refused_with(root.path(), &good_entries(root.path()), &caps);
    assert_eq!(err.kind(), "archive_entry_too_large", "{err}");
    assert!(err.to_string().contains("\"text.wasm\""), "{err}");
    assert_eq!(err.to_json()["entry"], "text.wasm");
    assert_eq!(err.class(), crate::ErrorClass::Host);
}

#[test]
fn a_decompression_bomb_stops_at_the_total_cap() {
    let root = tempfile::tempdir().unwrap();
    let caps = archive::Caps {
        manifest: 1024,
        component: 1024,
        cases: 1024,
        signature: 1024,
        entries: 4,
    };
    // A pax extension header is read whole by the tar reader before the
    // entry it describes: 1 MiB of zeros, compressing to almost nothing.
    let path = root.path().join("bomb.tar.gz");
    let file = fs::File::create(&path).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::best()));
    let padding = "0".repeat(1024 * 1024);
    builder
        .append_pax_extensions([("comment", padding.as_bytes())])
        .unwrap();
    for entry in good_entries(root.path()) {
        let mut header = Header::new_ustar();
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        builder
            .append_data(
                &mut header,
                String::from_utf8(entry.name).unwrap(),
                entry.data.as_slice(),
            )
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    assert!(fs::metadata(&path).unwrap().len() < 16 * 1024);
    let err = Package::from_archive_with(&path, &caps).unwrap_err();
    assert_eq!(err.kind(), "archive_too_large", "{err}");
    // The same archive is fine under the real caps.
    Package::from_archive(&path).unwrap();
}

/// A header claiming an entry of (nearly) any size is only read as far as
/// bytes arrive: reserving what it claims up front aborted the process
/// (an allocation of exabytes) before a byte was read.
#[test]
fn an_entry_claiming_a_huge_size_reserves_nothing_it_claims() {
    let root = tempfile::tempdir().unwrap();
    let caps = archive::Caps {
        component: 1 << 62,
        ..default_caps()
    };
    let path = root.path().join("claims.tar.gz");
    let file = fs::File::create(&path).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
    for entry in good_entries(root.path()) {
        let mut header = Header::new_gnu();
        let claim = if entry.name.ends_with(b".wasm") {
            1 << 62
        } else {
            entry.data.len() as u64
        };
        header.set_size(claim);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        header
            .set_path(String::from_utf8(entry.name).unwrap())
            .unwrap();
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    let err = Package::from_archive_with(&path, &caps).unwrap_err();
    assert_eq!(err.kind(), "archive_corrupt", "{err}");
}

#[test]
fn garbage_and_truncated_archives_are_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("x.tar.gz");
    fs::write(&path, b"this is not gzip at all").unwrap();
    let err = Package::from_archive(&path).unwrap_err();
    assert_eq!(err.kind(), "archive_corrupt", "{err}");
    write_raw(&path, &good_entries(root.path()));
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Package::from_archive(&path).unwrap_err();
    assert_eq!(err.kind(), "archive_corrupt", "{err}");
}

#[test]
fn a_bad_checksum_or_anything_after_the_archive_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("x.tar.gz");
    write_raw(&path, &good_entries(root.path()));
    let good = fs::read(&path).unwrap();
    Package::from_archive(&path).unwrap();
    // The gzip trailer's CRC-32 (its last eight bytes: CRC, then length),
    // which only a reader that reads to the end checks.
    let mut bad = good.clone();
    let crc = bad.len() - 8;
    bad[crc] ^= 0xff;
    fs::write(&path, &bad).unwrap();
    let err = Package::from_archive(&path).unwrap_err();
    assert_eq!(err.kind(), "archive_corrupt", "{err}");
    // A second gzip member, and bytes after the stream: `tar xzf` reads
    // the one, other tools the other; this reader checked neither.
    let mut member = GzEncoder::new(Vec::new(), Compression::fast());
    member.write_all(&[0x41; 2048]).unwrap();
    let member = member.finish().unwrap();
    for trailer in [member.as_slice(), b"hidden".as_slice()] {
        let mut appended = good.clone();
        appended.extend_from_slice(trailer);
        fs::write(&path, &appended).unwrap();
        let err = Package::from_archive(&path).unwrap_err();
        assert_eq!(err.kind(), "archive_trailing_data", "{err}");
        assert!(err.to_string().contains("data follows the end"), "{err}");
    }
    // Zeros after the stream, as a copy to block-padded media leaves them,
    // are accepted — up to a point.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 4096]);
    fs::write(&path, &padded).unwrap();
    Package::from_archive(&path).unwrap();
    padded.extend_from_slice(&vec![0; 2 * 1024 * 1024]);
    fs::write(&path, &padded).unwrap();
    let err = Package::from_archive(&path).unwrap_err();
    assert_eq!(err.kind(), "archive_trailing_data", "{err}");
    // Data inside the stream after tar's end blocks.
    let mut tar = tar::Builder::new(Vec::new());
    for entry in good_entries(root.path()) {
        let mut header = Header::new_gnu();
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        tar.append_data(
            &mut header,
            String::from_utf8(entry.name).unwrap(),
            entry.data.as_slice(),
        )
        .unwrap();
    }
    let mut stream = tar.into_inner().unwrap();
    stream.extend_from_slice(b"after the end");
    let mut gz = GzEncoder::new(fs::File::create(&path).unwrap(), Compression::fast());
    gz.write_all(&stream).unwrap();
    gz.finish().unwrap();
    let err = Package::from_archive(&path).unwrap_err();
    assert_eq!(err.kind(), "archive_trailing_data", "{err}");
    // Zero padding past the end blocks is what tar writes (a large
    // blocking factor writes much of it): accepted.
    stream.truncate(stream.len() - b"after the end".len());
    stream.extend_from_slice(&vec![0; 512 * 1024]);
    let mut gz = GzEncoder::new(fs::File::create(&path).unwrap(), Compression::fast());
    gz.write_all(&stream).unwrap();
    gz.finish().unwrap();
    Package::from_archive(&path).unwrap();
}

// ---- signatures ------------------------------------------------------------

#[test]
fn a_signed_package_checks_against_the_policy() {
    let root = tempfile::tempdir().unwrap();
    let (alice_key, alice) = key_file(root.path(), "alice.key");
    let (_, bob) = key_file(root.path(), "bob.key");
    let mut package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    assert_eq!(package.sign(&alice_key).unwrap(), alice);

    // Through an archive and back, the signature still holds.
    let archive = root.path().join("signed.tar.gz");
    package.write_archive(&archive).unwrap();
    let package = Package::from_archive(&archive).unwrap();
    assert_eq!(package.signature().unwrap().key(), &alice);

    let signer = package
        .check_signature(&trusting("alice", alice, true))
        .unwrap()
        .unwrap();
    assert_eq!(signer.name(), Some("alice"));
    let err = package
        .check_signature(&trusting("bob", bob, true))
        .unwrap_err();
    assert_eq!(err.kind(), "signer_untrusted", "{err}");
    let signer = package
        .check_signature(&trusting("bob", bob, false))
        .unwrap()
        .unwrap();
    assert!(!signer.is_trusted());
}

#[test]
fn an_unsigned_package_is_refused_when_signatures_are_required() {
    let root = tempfile::tempdir().unwrap();
    let (_, alice) = key_file(root.path(), "alice.key");
    let package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    let err = package
        .check_signature(&trusting("alice", alice, true))
        .unwrap_err();
    assert_eq!(err.kind(), "plugin_unsigned", "{err}");
    assert_eq!(package.check_signature(&Policy::default()).unwrap(), None);
}

#[test]
fn a_tampered_manifest_breaks_the_signature() {
    let root = tempfile::tempdir().unwrap();
    let (alice_key, alice) = key_file(root.path(), "alice.key");
    let mut package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    package.sign(&alice_key).unwrap();
    let dir = root.path().join("signed");
    package.write_dir(&dir).unwrap();
    // One more capability, nothing else changed.
    let manifest = fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
    fs::write(
        dir.join(MANIFEST_FILE),
        manifest.replace("log = true", "log = true\nclocks = true"),
    )
    .unwrap();
    let tampered = Package::from_dir(&dir).unwrap();
    for policy in [trusting("alice", alice, true), Policy::default()] {
        let err = tampered.check_signature(&policy).unwrap_err();
        assert_eq!(err.kind(), "signature_invalid", "{err}");
    }
}

#[test]
fn a_tampered_component_with_a_restamped_manifest_breaks_the_signature() {
    let root = tempfile::tempdir().unwrap();
    let (alice_key, alice) = key_file(root.path(), "alice.key");
    let mut package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    package.sign(&alice_key).unwrap();
    let dir = root.path().join("signed");
    package.write_dir(&dir).unwrap();
    // Swap the component and re-pin it: the digests agree again, the
    // signature does not.
    fs::write(dir.join("text.wasm"), component_bytes("evil")).unwrap();
    let restamped = Package::from_source_dir(&dir).unwrap();
    assert_eq!(restamped.signature().unwrap().key(), &alice);
    let err = restamped
        .check_signature(&trusting("alice", alice, false))
        .unwrap_err();
    assert_eq!(err.kind(), "signature_invalid", "{err}");
}

#[test]
fn a_garbled_signature_file_is_refused_on_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = pinned_dir(root.path());
    for garbage in [
        &b"key = 'ed25519:AAAA'\nsignature = 'AAAA'\n"[..],
        b"\xff\xfe",
        b"[[[",
    ] {
        fs::write(dir.join(SIGNATURE_FILE), garbage).unwrap();
        let err = Package::from_dir(&dir).unwrap_err();
        assert_eq!(err.kind(), "signature_invalid", "{err}");
    }
    // Too large, or not a file: read as loading reads it.
    fs::write(dir.join(SIGNATURE_FILE), vec![b'#'; 8192]).unwrap();
    let err = Package::from_dir(&dir).unwrap_err();
    assert_eq!(err.kind(), "signature_invalid", "{err}");
    fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    fs::create_dir(dir.join(SIGNATURE_FILE)).unwrap();
    let err = Package::from_dir(&dir).unwrap_err();
    assert_eq!(err.kind(), "signature_invalid", "{err}");
}

#[test]
fn signing_keys_are_never_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let (path, public) = key_file(root.path(), "k");
    let before = fs::read(&path).unwrap();
    let err = generate_signing_key(&path).unwrap_err();
    assert!(err.to_string().contains("never overwritten"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    let mut package = Package::from_dir(&pinned_dir(root.path())).unwrap();
    assert_eq!(package.sign(&path).unwrap(), public);
}

#[test]
fn trust_policy_is_checked() {
    let root = tempfile::tempdir().unwrap();
    let (_, alice) = key_file(root.path(), "alice.key");
    check_trust_policy(&trusting("alice", alice, true)).unwrap();
    let err = check_trust_policy(&Policy {
        require_signature: true,
        ..Policy::default()
    })
    .unwrap_err();
    assert!(err.contains("trusted_keys is empty"), "{err}");
    let err = Policy {
        require_signature: true,
        ..Policy::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.kind(), "config");
    // Bad entries are refused where the configuration is read.
    let err = toml::from_str::<Policy>("trusted_keys = { alice = \"AAAA\" }").unwrap_err();
    assert!(err.to_string().contains("ed25519:"), "{err}");
}

/// A link in an author's directory (`cases.jsonl -> ~/.aws/credentials`)
/// was read, packed and installed as the package's file; now a package's
/// manifest, cases and component are refused when they are links, as its
/// signature always was.
#[cfg(unix)]
#[test]
fn a_package_file_that_is_a_link_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("credentials");
    fs::write(&secret, "{\"tool\": \"stats\"}\n").unwrap();
    for name in [CASES_FILE, MANIFEST_FILE, "text.wasm"] {
        let dir = pinned_dir(&root.path().join(name));
        // The component a link points at is another's (its digest would be
        // stamped into the package by `from_source_dir`).
        let target = if name != CASES_FILE {
            let real = root.path().join(format!("{name}.real"));
            fs::copy(dir.join(name), &real).unwrap();
            real
        } else {
            secret.clone()
        };
        fs::remove_file(dir.join(name)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(name)).unwrap();
        for read in [Package::from_dir, Package::from_source_dir] {
            match read(&dir) {
                Err(LoadError::PackageInvalid { path, message }) => {
                    assert!(path.ends_with(name), "{}", path.display());
                    assert!(message.contains("symbolic link"), "{message}");
                }
                Err(other) => panic!("{name}: {other}"),
                Ok(_) => panic!("{name}: a link was read"),
            }
        }
    }
}

/// A plugin's file that is a FIFO (or a device) is refused at once:
/// opening a FIFO waited for a writer that never came, holding `airlock
/// readiness` (which reads an unsigned plugin's cases) forever.
#[cfg(unix)]
#[test]
fn a_plugin_file_that_is_a_fifo_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join(CASES_FILE);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (done, finished) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = done.send(read_at_most(&path, 1024).map(|_| ()));
    });
    // Generous: without the check, the read never returns.
    let read = finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the read of a FIFO returned");
    let error = read.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
    let cases = crate::eval::Cases::read_bytes(&fifo).unwrap_err();
    assert!(
        format!("{cases:?}").contains("not a regular file"),
        "{cases:?}"
    );
    // A regular file still reads, and a link to one.
    let file = dir.path().join("real");
    fs::write(&file, "abc").unwrap();
    assert_eq!(read_at_most(&file, 1024).unwrap(), b"abc");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert_eq!(read_at_most(&link, 1024).unwrap(), b"abc");
}
