//! Files replaced whole or not at all.
//!
//! Every file the host writes for later (an export, a key, the mode, a
//! cached component, a package) is written to a new, uniquely named
//! temporary file beside it — created exclusively, so it never truncates
//! or removes a file someone else put there — synced, renamed over the
//! target and the directory synced. On any failure the temporary file is
//! removed and the target is as it was.
//!
//! ```
//! use std::io::Write;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("export.jsonl");
//! // A file named like a temporary one is nobody's to touch.
//! std::fs::write(dir.path().join("export.partial"), "theirs")?;
//! airlock_store::file::write(&path, |out| out.write_all(b"{}\n"))?;
//! assert_eq!(std::fs::read_to_string(&path)?, "{}\n");
//! assert_eq!(std::fs::read_to_string(dir.path().join("export.partial"))?, "theirs");
//! assert_eq!(std::fs::read_dir(dir.path())?.count(), 2);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fs::File;
use std::io::{self, BufRead, BufWriter};
use std::path::Path;

use tempfile::NamedTempFile;

/// A new temporary file in the directory of `path`, named after it
/// (`.NAME.XXXXXX.partial`) and created exclusively, with the permissions
/// of any new file (0666 less the umask); removed when dropped unless
/// [`persist`]ed.
///
/// # Errors
/// The directory cannot be written.
pub fn temporary_beside(path: &Path) -> io::Result<NamedTempFile> {
    temporary(path, 0o666)
}

/// [`temporary_beside`], readable and writable by its owner only (0600):
/// for secrets.
///
/// # Errors
/// The directory cannot be written.
pub fn private_temporary_beside(path: &Path) -> io::Result<NamedTempFile> {
    temporary(path, 0o600)
}

fn temporary(path: &Path, mode: u32) -> io::Result<NamedTempFile> {
    let prefix = match path.file_name() {
        Some(name) => format!(".{}.", name.to_string_lossy()),
        None => ".".to_owned(),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder.tempfile_in(parent(path))
}

/// Sync `tmp` and rename it over `path`, then sync the directory so the
/// rename survives a crash. `tmp` must come from [`temporary_beside`]
/// `path` (a rename does not cross file systems).
///
/// # Errors
/// Syncing or renaming fails; the temporary file is then removed.
pub fn persist(tmp: NamedTempFile, path: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(parent(path))
}

/// Like [`persist`], but never replaces a file already at `path`: fails
/// with [`io::ErrorKind::AlreadyExists`] instead.
///
/// # Errors
/// A file is at `path`, or syncing or linking fails; the temporary file
/// is then removed.
pub fn persist_new(tmp: NamedTempFile, path: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    sync_dir(parent(path))
}

/// Write `path` whole or not at all: `body` writes a buffered temporary
/// file beside it ([`temporary_beside`]), which is then [`persist`]ed.
/// `io_error` turns a failure of the file itself into the caller's error.
///
/// # Errors
/// Whatever `body` returns, or a failure to create, sync or rename the
/// file; `path` is then untouched and the temporary file removed.
pub fn write_with<E>(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_error: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    write_file(temporary_beside(path), path, body, io_error)
}

/// [`write_with`], the file readable and writable by its owner only
/// (0600): for what holds the host's private data (an audit export, a
/// workspace export), which another local user must not read whatever the
/// umask.
///
/// # Errors
/// As [`write_with`].
pub fn write_private_with<E>(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_error: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    write_file(private_temporary_beside(path), path, body, io_error)
}

fn write_file<E>(
    tmp: io::Result<NamedTempFile>,
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_error: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    let tmp = tmp.map_err(&io_error)?;
    let mut out = BufWriter::new(tmp.reopen().map_err(&io_error)?);
    body(&mut out)?;
    out.into_inner().map_err(|e| io_error(e.into_error()))?;
    persist(tmp, path).map_err(io_error)
}

/// [`write_with`] for a body whose errors are I/O errors.
///
/// # Errors
/// As [`write_with`].
pub fn write(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    write_with(path, body, |e| e)
}

/// The bytes of the file at `path` (links followed; a pipe or device read
/// like a file), if there are at most `cap` of them.
///
/// # Security
/// Files named by an operator's flag or kept in the data directory are
/// still read under a cap: a path linked to `/dev/zero`, or a file grown
/// by mistake, is refused instead of read until memory runs out.
///
/// # Errors
/// The file cannot be read, or holds more than `cap` bytes
/// (`InvalidData`, saying so).
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(File::open(path)?, cap.saturating_add(1)),
        &mut bytes,
    )?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than the limit of {cap} bytes"),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`], as UTF-8 text.
///
/// # Errors
/// As [`read_capped`]; `InvalidData` for text that is not UTF-8.
pub fn read_text_capped(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Read one line (up to and with its `\n`) from `reader` into `line`, as
/// [`BufRead::read_line`] does, if it is at most `cap` bytes: a line that
/// never ends is refused after `cap` bytes instead of read whole.
///
/// # Errors
/// Reading fails, the line is not UTF-8, or it is longer than `cap`
/// (`InvalidData`, saying so).
pub fn read_line_capped(
    reader: &mut impl BufRead,
    line: &mut String,
    cap: u64,
) -> io::Result<usize> {
    let read = io::Read::take(&mut *reader, cap.saturating_add(1)).read_line(line)?;
    if read as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line longer than the limit of {cap} bytes"),
        ));
    }
    Ok(read)
}

/// Create directory `dir` and any missing parents, each owner-only
/// (0700); directories that exist are left as they are.
///
/// # Security
/// A data directory holds the audit log with its redacted copies of
/// arguments and results, the workspace, the ledger's stored results and
/// the keys: other users of the machine must not read or replace any of
/// it, whatever the umask.
///
/// # Errors
/// A directory cannot be created.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Sync directory `dir`, so a rename or link into it is durable.
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_failed_body_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, "old").unwrap();
        let failed = write(&path, |out| {
            out.write_all(b"half")?;
            Err(io::Error::other("the body failed"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "the body failed");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_temporary_file_is_never_one_already_there() {
        let dir = tempfile::tempdir().unwrap();
        // The names the old writers used, each someone else's file now.
        for name in ["out.partial", "out.tmp", ".out.json.partial"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let path = dir.path().join("out.json");
        write(&path, |out| out.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        for name in ["out.partial", "out.tmp", ".out.json.partial"] {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(name)).unwrap(),
                name
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    #[test]
    fn a_target_named_like_a_temporary_file_is_written_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.partial");
        write(&path, |out| out.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn persist_new_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "theirs").unwrap();
        let mut tmp = temporary_beside(&path).unwrap();
        tmp.write_all(b"mine").unwrap();
        let error = persist_new(tmp, &path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_made_with_the_umask_and_secrets_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let path = dir.path().join("export");
        write(&path, |out| out.write_all(b"x")).unwrap();
        // Whatever the umask, never more than a plain new file, and the
        // owner can read and write it.
        assert_eq!(mode(&path) & 0o600, 0o600);
        assert_eq!(mode(&path) & 0o111, 0);
        let key = dir.path().join("key");
        persist_new(private_temporary_beside(&key).unwrap(), &key).unwrap();
        assert_eq!(mode(&key), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn private_directories_are_owner_only_and_existing_ones_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let nested = dir.path().join("data/audit");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let open = dir.path().join("shared");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o755);
    }

    #[test]
    fn reads_are_capped_whatever_the_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "12345").unwrap();
        assert_eq!(read_text_capped(&path, 5).unwrap(), "12345");
        let over = read_capped(&path, 4).unwrap_err();
        assert_eq!(over.kind(), io::ErrorKind::InvalidData);
        assert!(over.to_string().contains("limit of 4 bytes"), "{over}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let text = read_text_capped(&path, 5).unwrap_err();
        assert!(text.to_string().contains("not UTF-8"), "{text}");
        // A device that never ends is cut at the cap.
        #[cfg(unix)]
        {
            let endless = read_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
            assert_eq!(endless.kind(), io::ErrorKind::InvalidData);
            let mut reader = io::BufReader::new(File::open("/dev/zero").unwrap());
            let mut line = String::new();
            let endless = read_line_capped(&mut reader, &mut line, 1 << 20).unwrap_err();
            assert!(endless.to_string().contains("a line longer"), "{endless}");
        }
        let mut reader = io::Cursor::new("one\ntwo");
        let mut line = String::new();
        assert_eq!(read_line_capped(&mut reader, &mut line, 4).unwrap(), 4);
        assert_eq!(line, "one\n");
        line.clear();
        assert_eq!(read_line_capped(&mut reader, &mut line, 4).unwrap(), 3);
        assert_eq!(line, "two");
    }

    #[test]
    fn a_relative_path_in_the_current_directory_has_a_parent() {
        assert_eq!(parent(Path::new("out.json")), Path::new("."));
        assert_eq!(parent(Path::new("a/out.json")), Path::new("a"));
    }
}
