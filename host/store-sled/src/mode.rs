//! [`FileMode`]: the host mode as a file in the data directory.
//!
//! A file, so `airlock mode` can flip it while a host runs; reading it
//! costs one `stat` per call (the contents are read again only when the
//! file's time or size changed).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_store::{ErrorKind, Mode, ModeStore, Result, StoreError};

/// The mode file inside the data directory.
pub const MODE_FILE: &str = "mode.json";

/// The mode in `<data dir>/mode.json`.
#[derive(Debug)]
pub struct FileMode {
    dir: PathBuf,
    path: PathBuf,
    /// The file's time and size when last read, and what it said.
    seen: Mutex<Option<(SystemTime, u64, Mode)>>,
}

impl FileMode {
    /// The mode file of data directory `dir`.
    pub fn new(dir: &Path) -> FileMode {
        FileMode {
            dir: dir.to_owned(),
            path: dir.join(MODE_FILE),
            seen: Mutex::new(None),
        }
    }

    fn io(&self, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::unavailable(format!("mode file {}", path.display()), e)
    }
}

impl ModeStore for FileMode {
    fn get(&self) -> Result<Option<Mode>> {
        let stat = match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.modified().unwrap_or(UNIX_EPOCH), meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // Cannot tell the mode: the caller fails closed.
            Err(e) => return Err(self.io(&self.path, e)),
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((time, len, mode)) = &*seen
            && (*time, *len) == stat
        {
            return Ok(Some(mode.clone()));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.io(&self.path, e))?;
        let mode: Mode = serde_json::from_str(&text).map_err(|e| {
            StoreError::with_source(
                ErrorKind::Corrupt,
                format!("{} is not a valid mode file", self.path.display()),
                e,
            )
        })?;
        *seen = Some((stat.0, stat.1, mode.clone()));
        Ok(Some(mode))
    }

    fn set(&self, mode: &Mode) -> Result<()> {
        let tmp = self.dir.join(format!("{MODE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(mode).map_err(|e| {
            StoreError::with_source(ErrorKind::Corrupt, "cannot encode the mode", e)
        })?;
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        std::fs::write(&tmp, bytes).map_err(|e| self.io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(&self.path, e))
    }
}
