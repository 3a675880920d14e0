//! [`FileMode`]: the host mode as a file in the data directory.
//!
//! A file, so `airlock mode` can flip it while a host runs. Reading it
//! costs one `stat` per call (the contents are read again only when the
//! file's time or size changed) — on Linux not even that: an inotify watch
//! on the data directory says whether anything in it changed since the
//! last read, and while nothing did, the mode read last still holds. The
//! kernel queues the event when the file is replaced, before `airlock mode`
//! returns, so the next call sees the switch either way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_store::{ErrorKind, Mode, ModeStore, Result, StoreError};

/// Largest mode file read (one is a few hundred bytes).
const MAX_MODE_FILE_BYTES: u64 = 64 * 1024;

/// The mode file inside the data directory.
pub const MODE_FILE: &str = "mode.json";

/// What says a file changed without reading it: its time and size, and on
/// Unix its inode and change time too (a rewrite of the same size within
/// one tick of the modification time, or a file renamed over it, still
/// shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: SystemTime,
    len: u64,
    inode: u64,
    changed_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (inode, changed_ns) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.ino(),
                i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            )
        };
        #[cfg(not(unix))]
        let (inode, changed_ns) = (0, 0);
        Stamp {
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
            len: meta.len(),
            inode,
            changed_ns,
        }
    }
}

/// The mode in `<data dir>/mode.json`.
#[derive(Debug)]
pub struct FileMode {
    dir: PathBuf,
    path: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The file's stamp when last read, and what it said; `None` inside
    /// when there was no file.
    last: Option<Option<(Stamp, Mode)>>,
    /// Changes in the data directory since `last` was read (Linux).
    watch: watch::Watch,
}

impl FileMode {
    /// The mode file of data directory `dir`.
    pub fn new(dir: &Path) -> FileMode {
        FileMode {
            dir: dir.to_owned(),
            path: dir.join(MODE_FILE),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn io(&self, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::unavailable(format!("mode file {}", path.display()), e)
    }

    /// Read the file (or find it absent), reusing what was read last when
    /// its time and size are unchanged.
    fn read(&self, seen: &mut Seen) -> Result<Option<Mode>> {
        // Not followed: the watch sees the data directory only, so a link
        // to a file elsewhere would change unseen (and a FIFO would block
        // every call's read). Either is refused, and the caller fails
        // closed.
        let stat = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_file() => Stamp::of(&meta),
            Ok(_) => {
                seen.last = None;
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{} is not a regular file (a link, a pipe or a directory): it cannot be the mode file",
                        self.path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                seen.last = Some(None);
                return Ok(None);
            }
            // Cannot tell the mode: the caller fails closed.
            Err(e) => {
                seen.last = None;
                return Err(self.io(&self.path, e));
            }
        };
        if let Some(Some((stamp, mode))) = &seen.last
            && *stamp == stat
        {
            return Ok(Some(mode.clone()));
        }
        seen.last = None;
        // A mode file is a few hundred bytes; one grown past this is not one.
        let text = airlock_store::file::read_text_capped(&self.path, MAX_MODE_FILE_BYTES).map_err(
            |e| match e.kind() {
                // Too large, or not text: a file that is no mode file, as
                // one that is not JSON.
                std::io::ErrorKind::InvalidData => StoreError::with_source(
                    ErrorKind::Corrupt,
                    format!("{} is not a valid mode file", self.path.display()),
                    e,
                ),
                _ => self.io(&self.path, e),
            },
        )?;
        let mode: Mode = serde_json::from_str(&text).map_err(|e| {
            StoreError::with_source(
                ErrorKind::Corrupt,
                format!("{} is not a valid mode file", self.path.display()),
                e,
            )
        })?;
        seen.last = Some(Some((stat, mode.clone())));
        Ok(Some(mode))
    }
}

impl ModeStore for FileMode {
    fn get(&self) -> Result<Option<Mode>> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = &mut *seen;
        if let Some(last) = &seen.last
            && seen.watch.quiet()
        {
            return Ok(last.as_ref().map(|(_, mode)| mode.clone()));
        }
        // Watch first, then read: a change after the read is an event.
        seen.watch.arm(&self.dir);
        seen.watch.drain();
        // Without a watch (`quiet` is then never true) this runs at every
        // read: the file's time and size say whether it changed.
        self.read(seen)
    }

    /// A file made and removed beside the mode file: the data directory
    /// takes writes (not read-only, not another user's, not full of
    /// inodes). A missing data directory is made, as the first switch
    /// would.
    fn check_writable(&self) -> Result<()> {
        airlock_store::file::create_private_dir(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let probe = self
            .dir
            .join(format!(".mode-probe-{}-{nanos}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| self.io(&self.dir, e))?;
        std::fs::remove_file(&probe).map_err(|e| self.io(&probe, e))
    }

    fn set(&self, mode: &Mode) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(mode).map_err(|e| {
            StoreError::with_source(ErrorKind::Corrupt, "cannot encode the mode", e)
        })?;
        // The data directory itself, when the mode is the first thing in it.
        airlock_store::file::create_private_dir(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        airlock_store::file::write(&self.path, |out| out.write_all(&bytes))
            .map_err(|e| self.io(&self.path, e))
    }
}

/// Whether anything in the data directory changed since the last look: an
/// inotify watch on Linux, nothing elsewhere (every read then checks the
/// file).
#[cfg(target_os = "linux")]
mod watch {
    use std::mem::MaybeUninit;
    use std::path::Path;

    use rustix::fd::OwnedFd;
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    #[derive(Debug, Default)]
    pub(super) struct Watch {
        fd: Option<OwnedFd>,
        /// The directory is watched.
        pub(super) watching: bool,
        /// Setting up the watch failed (or it was lost): checking the
        /// file at every read from then on.
        failed: bool,
    }

    impl Watch {
        /// Watch `dir` (a failure other than a missing directory is not
        /// retried).
        pub(super) fn arm(&mut self, dir: &Path) {
            if self.watching || self.failed {
                return;
            }
            if self.fd.is_none() {
                match inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC) {
                    Ok(fd) => self.fd = Some(fd),
                    Err(e) => {
                        tracing::debug!(error = %e, "no inotify instance; the mode file is checked at every call");
                        self.failed = true;
                        return;
                    }
                }
            }
            let Some(fd) = &self.fd else { return };
            let armed = inotify::add_watch(
                fd,
                dir,
                WatchFlags::CREATE
                    | WatchFlags::DELETE
                    | WatchFlags::MODIFY
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::ATTRIB
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::MOVED_TO
                    | WatchFlags::DELETE_SELF
                    | WatchFlags::MOVE_SELF,
            );
            match armed {
                Ok(_) => self.watching = true,
                // No directory yet (the mode was never set): try again at
                // the next read.
                Err(Errno::NOENT) => {}
                Err(e) => {
                    tracing::debug!(error = %e, dir = %dir.display(), "no inotify watch on the data directory; the mode file is checked at every call");
                    self.failed = true;
                }
            }
        }

        /// No event since the last look (and the watch stands).
        pub(super) fn quiet(&mut self) -> bool {
            self.watching && !self.drain()
        }

        /// Read every queued event; whether there was any. A lost watch
        /// (the directory deleted or moved) or a read error ends watching.
        pub(super) fn drain(&mut self) -> bool {
            let Some(fd) = &self.fd else { return false };
            let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
            let mut reader = inotify::Reader::new(fd, &mut buf);
            let mut any = false;
            let mut lost = false;
            loop {
                match reader.next() {
                    Ok(event) => {
                        any = true;
                        if event.events().intersects(
                            ReadFlags::IGNORED
                                | ReadFlags::DELETE_SELF
                                | ReadFlags::MOVE_SELF
                                | ReadFlags::UNMOUNT,
                        ) {
                            lost = true;
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(_) => {
                        lost = true;
                        any = true;
                        break;
                    }
                }
            }
            if lost {
                self.fd = None;
                self.watching = false;
                self.failed = true;
            }
            any
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod watch {
    use std::path::Path;

    #[derive(Debug, Default)]
    pub(super) struct Watch;

    impl Watch {
        pub(super) fn arm(&mut self, _dir: &Path) {}

        pub(super) fn quiet(&mut self) -> bool {
            false
        }

        pub(super) fn drain(&mut self) -> bool {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(id: &str, read_only: bool) -> Mode {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "read_only": read_only,
            "by": "operator",
            "at_ms": 1,
        }))
        .unwrap()
    }

    /// Another process flipping the file — by replacing it, by writing it
    /// in place, by deleting it, by removing the directory — is seen by
    /// the very next read.
    #[test]
    fn every_change_by_another_writer_is_seen_at_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ours = FileMode::new(&data);
        let theirs = FileMode::new(&data);
        assert_eq!(ours.get().unwrap(), None, "no directory yet");
        theirs.set(&mode("a", true)).unwrap();
        assert_eq!(ours.get().unwrap().unwrap().id, "a");
        assert_eq!(ours.get().unwrap().unwrap().id, "a", "cached");
        #[cfg(target_os = "linux")]
        assert!(ours.seen.lock().unwrap().watch.watching, "the watch stands");
        theirs.set(&mode("b", false)).unwrap();
        assert_eq!(ours.get().unwrap().unwrap().id, "b");
        // Written in place, same size.
        let text = std::fs::read_to_string(data.join(MODE_FILE)).unwrap();
        std::fs::write(data.join(MODE_FILE), text.replace("\"b\"", "\"c\"")).unwrap();
        assert_eq!(ours.get().unwrap().unwrap().id, "c");
        std::fs::write(data.join(MODE_FILE), "not json").unwrap();
        assert!(ours.get().is_err(), "a broken file fails closed");
        std::fs::remove_file(data.join(MODE_FILE)).unwrap();
        assert_eq!(ours.get().unwrap(), None);
        theirs.set(&mode("d", true)).unwrap();
        assert_eq!(ours.get().unwrap().unwrap().id, "d");
        // The directory itself replaced: the watch is lost, reads check
        // the file from then on.
        std::fs::remove_dir_all(&data).unwrap();
        assert_eq!(ours.get().unwrap(), None);
        theirs.set(&mode("e", false)).unwrap();
        assert_eq!(ours.get().unwrap().unwrap().id, "e");
        theirs.set(&mode("f", true)).unwrap();
        assert_eq!(ours.get().unwrap().unwrap().id, "f");
        #[cfg(target_os = "linux")]
        assert!(
            !ours.seen.lock().unwrap().watch.watching,
            "the watch is lost"
        );
    }

    /// A link as the mode file (its target would change unseen by the
    /// watch on the data directory) or a pipe (its read would block every
    /// call) is refused: the mode is unknown and the caller fails closed.
    #[cfg(unix)]
    #[test]
    fn a_mode_file_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ours = FileMode::new(&data);
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, serde_json::to_vec(&mode("a", false)).unwrap()).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join(MODE_FILE)).unwrap();
        let error = ours.get().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Corrupt, "{error}");
        assert!(error.to_string().contains("not a regular file"), "{error}");
        std::fs::remove_file(data.join(MODE_FILE)).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(data.join(MODE_FILE))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(ours.get().is_err(), "a pipe fails closed, at once");
        std::fs::remove_file(data.join(MODE_FILE)).unwrap();
        assert_eq!(ours.get().unwrap(), None);
    }

    /// Readiness asks whether a switch could be written without making
    /// one: a data directory that takes no file (here: a file where the
    /// directory should be) says no, and nothing is left behind.
    #[test]
    fn whether_a_switch_could_be_written_is_told_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mode = FileMode::new(&data);
        mode.check_writable().unwrap();
        assert_eq!(mode.get().unwrap(), None, "no switch made");
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            0,
            "no probe left"
        );
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"a file").unwrap();
        let error = FileMode::new(&blocked).check_writable().unwrap_err();
        assert!(error.to_string().contains("blocked"), "{error}");
    }
}
