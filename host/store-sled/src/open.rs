//! Opening a sled database that another process may hold.
//!
//! sled takes an exclusive file lock on its database; a short-lived
//! `airlock` command (or a host that is just closing, whose flusher thread
//! still holds the lock for a moment) releases it soon. Every store of the
//! host (the audit log, the workspace, the ledger) opens through here.

use std::time::{Duration, Instant};

use airlock_store::{ErrorKind, StoreError};

/// Why [`open_waiting`] did not open the database.
#[derive(Debug)]
pub enum OpenError {
    /// Another process kept it locked for the whole wait.
    Locked,
    /// Any other failure.
    Failed(sled::Error),
}

/// Open the database `config` describes, retrying every 20 ms while another
/// process holds its lock, for up to `wait`.
///
/// # Errors
/// [`OpenError::Locked`] when the lock is still held after `wait`;
/// [`OpenError::Failed`] for any other error, at once.
pub fn open_waiting(config: &sled::Config, wait: Duration) -> Result<sled::Db, OpenError> {
    let deadline = Instant::now() + wait;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_locked(&e) => {
                if Instant::now() >= deadline {
                    return Err(OpenError::Locked);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(OpenError::Failed(e)),
        }
    }
}

/// [`open_waiting`] with the seam's error: [`ErrorKind::Locked`] when
/// another process kept the database for the whole wait,
/// [`ErrorKind::Corrupt`] when sled finds its files damaged (said in
/// words, with what to do: sled's own message names no file),
/// [`ErrorKind::Unavailable`] for any other failure. `what` names the
/// database in the message (`audit log at /var/lib/airlock/audit/db`).
///
/// # Errors
/// As above.
pub fn open(config: &sled::Config, wait: Duration, what: &str) -> Result<sled::Db, StoreError> {
    open_waiting(config, wait).map_err(|e| open_error(e, what))
}

/// The seam's error for a database `what` that did not open.
fn open_error(error: OpenError, what: &str) -> StoreError {
    match error {
        OpenError::Locked => StoreError::new(
            ErrorKind::Locked,
            format!("{what} is in use by another airlock process"),
        ),
        OpenError::Failed(sled::Error::Corruption { .. }) => StoreError::new(
            ErrorKind::Corrupt,
            format!(
                "{what} is damaged: sled cannot read its files; restore its directory from a backup, or move it aside to keep it for inspection and start afresh"
            ),
        ),
        // sled opens its files read-write, even to read: say so, since a
        // reader (an auditor verifying the log) may expect read access to
        // be enough.
        OpenError::Failed(sled::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            StoreError::unavailable(
                format!(
                    "cannot open {what}: the database is opened read-write, even to read it (run as its owner, or verify an `airlock audit export` of it instead)"
                ),
                e,
            )
        }
        OpenError::Failed(e) => StoreError::unavailable(format!("cannot open {what}"), e),
    }
}

fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
        || e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's own word for damaged files ("Read corrupted data at file
    /// offset None backtrace ()") named neither the database nor what to
    /// do.
    #[test]
    fn a_damaged_database_is_reported_corrupt_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let config = sled::Config::new().path(&path);
        {
            let db = open_waiting(&config, Duration::ZERO).expect("first open");
            for i in 0u32..2000 {
                db.insert(i.to_be_bytes(), vec![7u8; 100]).expect("insert");
            }
            db.flush().expect("flush");
        }
        // A snapshot whose checksum does not hold: what a disk error, or
        // a copy cut short, leaves.
        std::fs::write(path.join("snap.0000000000000FFF"), [0x5a; 130]).expect("write");
        let err = open(&config, Duration::ZERO, "the test database").expect_err("damaged");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(
            err.to_string().contains("the test database is damaged"),
            "{err}"
        );
    }

    /// A database its reader may not write cannot be opened (sled opens
    /// read-write); the error says so rather than "permission denied"
    /// alone. (Tests run as root here, so the mapping is tested directly.)
    #[test]
    fn a_database_that_cannot_be_written_says_it_is_opened_read_write() {
        for kind in [
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let err = open_error(
                OpenError::Failed(sled::Error::Io(std::io::Error::from(kind))),
                "the audit log at x",
            );
            assert_eq!(err.kind(), ErrorKind::Unavailable);
            assert!(
                err.to_string()
                    .contains("opened read-write, even to read it"),
                "{err}"
            );
        }
        let other = open_error(
            OpenError::Failed(sled::Error::Io(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            ))),
            "the audit log at x",
        );
        assert!(!other.to_string().contains("read-write"), "{other}");
    }

    #[test]
    fn a_held_database_is_reported_locked_after_the_wait_and_opens_once_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = sled::Config::new().path(dir.path().join("db"));
        let held = open_waiting(&config, Duration::ZERO).expect("first open");
        assert!(matches!(
            open_waiting(&config, Duration::from_millis(60)),
            Err(OpenError::Locked)
        ));
        let err =
            open(&config, Duration::from_millis(60), "the test database").expect_err("still held");
        assert_eq!(err.kind(), ErrorKind::Locked);
        assert!(err.to_string().contains("in use"), "{err}");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        open_waiting(&config, Duration::from_secs(10)).expect("opens once released");
        release.join().expect("join");
    }
}
