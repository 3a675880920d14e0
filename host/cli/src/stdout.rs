//! Standard output, whose reader may go away.
//!
//! `println!` panics when a write fails, and Rust ignores `SIGPIPE`, so
//! `airlock audit query --json | head -1` ended with a panic (exit 101) as
//! soon as `head` had its line. Resetting `SIGPIPE` needs `unsafe`, which
//! the workspace forbids. Instead every line goes through [`line`]: the
//! first failed write closes standard output for the rest of the run (a
//! command still finishes its work, so nothing it stores is cut short),
//! [`closed`] tells a command that would print forever to stop, and
//! [`finish`] turns a failure other than a closed pipe into an error.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// Print `args` and a newline, unless standard output is closed.
pub(crate) fn line(args: fmt::Arguments<'_>) {
    write(args, true);
}

/// Print `args`, unless standard output is closed.
pub(crate) fn text(args: fmt::Arguments<'_>) {
    write(args, false);
}

/// Print `bytes` as they are (a stored value), unless standard output is
/// closed.
pub(crate) fn bytes(bytes: &[u8]) {
    if closed() {
        return;
    }
    let written = io::stdout().lock().write_all(bytes);
    remember(written);
}

fn write(args: fmt::Arguments<'_>, newline: bool) {
    if closed() {
        return;
    }
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    remember(written);
}

/// After a failed write, standard output stays closed, and the first
/// failure is kept for [`finish`].
fn remember(written: io::Result<()>) {
    if let Err(e) = written {
        CLOSED.store(true, Ordering::Relaxed);
        let mut failure = FAILURE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failure.get_or_insert(e);
    }
}

/// Whether a write to standard output failed: its reader is gone.
pub(crate) fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// After the command: flush, and say why output stopped when it was not
/// because its reader went away (a full disk, say), which is an error.
pub(crate) fn finish() -> Option<io::Error> {
    if !closed()
        && let Err(e) = io::stdout().lock().flush()
    {
        CLOSED.store(true, Ordering::Relaxed);
        return (e.kind() != io::ErrorKind::BrokenPipe).then_some(e);
    }
    let failure = FAILURE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    failure.filter(|e| e.kind() != io::ErrorKind::BrokenPipe)
}

/// `println!` through [`line`].
macro_rules! outln {
    () => {
        $crate::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}

/// `print!` through [`text`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::text(format_args!($($arg)*))
    };
}
