//! [`FilePlugins`]: installed plugin versions and rollouts as files in the
//! data directory.
//!
//! Files rather than a sled tree, so `airlock plugins install` and `airlock
//! rollout` work beside a running `airlock serve` that holds the sled
//! databases — as the mode file does. Layout under `<data dir>/installed/`:
//!
//! - `artifacts/<sha256>`: a file's bytes, written to a temporary name,
//!   synced, then renamed into place (a reader never sees half a file);
//! - `versions/<plugin>/<version>.json`: an [`InstalledVersion`], created by
//!   a hard link of a synced temporary file, which fails if the name is
//!   taken — so a version is recorded once, by one writer;
//! - `rollouts/<plugin>.json`: `{"version": n, "rollout": …}`, replaced
//!   (temporary file, rename) under an exclusive lock on `rollouts/.lock`
//!   after checking `n`: compare-and-swap between processes.
//!
//! Names and versions are checked ([`check_plugin_name`],
//! [`check_version`], [`check_digest`]) before they become file names.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use airlock_store::{
    ErrorKind, InstalledVersion, PluginStore, Result, Rollout, StoreError, Version, Versioned,
    check_digest, check_plugin_name, check_version,
};
use serde::{Deserialize, Serialize};

/// The directory inside the data directory.
pub const INSTALLED_DIR: &str = "installed";
/// Largest version or rollout file read.
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Largest artifact read: the host loads no component larger (512 MiB),
/// and a package's other files are smaller.
const MAX_ARTIFACT_BYTES: u64 = 512 << 20;

/// Installed versions and rollouts under `<data dir>/installed`.
#[derive(Debug)]
pub struct FilePlugins {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRollout {
    version: u64,
    rollout: Rollout,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::unavailable(format!("{}", path.display()), e)
}

fn config(message: String) -> StoreError {
    StoreError::new(ErrorKind::Config, message)
}

impl FilePlugins {
    /// The store of data directory `data_dir` (created on first write).
    pub fn new(data_dir: &Path) -> FilePlugins {
        FilePlugins {
            root: data_dir.join(INSTALLED_DIR),
        }
    }

    /// A temporary file in `dir` holding `bytes`, synced.
    fn temp_file(&self, dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
        airlock_store::file::create_private_dir(dir).map_err(|e| io(dir, e))?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io(&path, e));
        }
        Ok(path)
    }

    /// Whether `path` is a regular file holding exactly `bytes` (which the
    /// caller hashed to the file's name): compared a block at a time, so
    /// checking a large artifact holds no second copy of it.
    fn holds(path: &Path, bytes: &[u8]) -> bool {
        use std::io::Read as _;
        let same_size =
            fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() == bytes.len() as u64);
        let Some(mut file) = same_size
            .then(|| Self::open_nonblocking(path).ok())
            .flatten()
        else {
            return false;
        };
        if !file.metadata().is_ok_and(|meta| meta.is_file()) {
            return false;
        }
        let mut block = vec![0; 64 * 1024];
        let mut at = 0;
        loop {
            match file.read(&mut block) {
                Ok(0) => return at == bytes.len(),
                Ok(n) if bytes.get(at..at + n) == Some(&block[..n]) => at += n,
                Ok(_) => return false,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn read_small(path: &Path) -> Result<Option<Vec<u8>>> {
        Self::read_file(path, MAX_RECORD_BYTES, "any record")
    }

    /// The bytes of `path`, which must be a regular file of at most `cap`
    /// bytes (`than` names what it would be larger than): `None` when it
    /// does not exist. A pipe or device put there (or linked to) is refused
    /// before it is opened — opening a FIFO would block the reader, and
    /// with it every call waiting for the rollouts — and the read is capped
    /// however the file grows meanwhile.
    fn read_file(path: &Path, cap: u64, than: &str) -> Result<Option<Vec<u8>>> {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path, e)),
        };
        if !meta.is_file() {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                format!(
                    "{} is not a regular file (a directory, a pipe or a device)",
                    path.display()
                ),
            ));
        }
        let too_large = || {
            StoreError::new(
                ErrorKind::Corrupt,
                format!("{} is larger than {than}", path.display()),
            )
        };
        if meta.len() > cap {
            return Err(too_large());
        }
        match Self::read_regular(path, cap) {
            Ok(Some(bytes)) => Ok(Some(bytes)),
            Ok(None) => Err(StoreError::new(
                ErrorKind::Corrupt,
                format!(
                    "{} was replaced by something other than a regular file while it was read",
                    path.display()
                ),
            )),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) if e.kind() == IoKind::InvalidData => Err(too_large()),
            // The file's own mode (one left by another user's command):
            // this record cannot be read, not the store — its plugin's
            // finding, as a damaged record's is.
            Err(e) if e.kind() == IoKind::PermissionDenied => Err(StoreError::with_source(
                ErrorKind::Corrupt,
                format!(
                    "{} cannot be read by this user: give it back to the user the host runs as",
                    path.display()
                ),
                e,
            )),
            Err(e) => Err(io(path, e)),
        }
    }

    /// Open `path` for reading: on Linux without blocking (a FIFO opens at
    /// once) and without making a terminal the process's controlling one;
    /// elsewhere as `File::open` does.
    fn open_nonblocking(path: &Path) -> std::io::Result<File> {
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::OFlags;
            use std::os::unix::fs::OpenOptionsExt as _;
            let flags = i32::try_from((OFlags::NONBLOCK | OFlags::NOCTTY).bits()).unwrap_or(0);
            options.custom_flags(flags);
        }
        options.open(path)
    }

    /// Open `path` without blocking (on Linux) and read at most `cap`
    /// bytes of it: `None` when what was opened is not a regular file. The
    /// check before the open in [`read_file`](Self::read_file) can be
    /// raced (a FIFO renamed over the record between the two); opened
    /// non-blocking, a FIFO returns at once, and the open handle's own
    /// type is what decides.
    fn read_regular(path: &Path, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        let file = Self::open_nonblocking(path)?;
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > cap {
            return Err(std::io::Error::new(
                IoKind::InvalidData,
                format!("more than the limit of {cap} bytes"),
            ));
        }
        Ok(Some(bytes))
    }

    fn decode<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            StoreError::with_source(
                ErrorKind::Corrupt,
                format!("{} is not a valid record", path.display()),
                e,
            )
        })
    }

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(value)
            .map_err(|e| StoreError::with_source(ErrorKind::Corrupt, "cannot encode a record", e))
    }

    fn version_path(&self, plugin: &str, version: &str) -> Result<PathBuf> {
        check_plugin_name(plugin).map_err(config)?;
        check_version(version).map_err(config)?;
        Ok(self
            .root
            .join("versions")
            .join(plugin)
            .join(format!("{version}.json")))
    }

    /// The installed versions (of `plugin` only, if given) with a record
    /// file, `versions/<plugin>/<version>.json`, named by their paths:
    /// a stray file or directory of any other name is no version's. Not
    /// `strict`, a plugin's directory that cannot be read (another user's,
    /// say) is left out of a listing of every plugin, with a warning,
    /// rather than failing it: the strict listing's error names it.
    fn version_files(&self, plugin: Option<&str>, strict: bool) -> Result<Vec<(String, String)>> {
        let base = self.root.join("versions");
        let plugin_given = plugin;
        let plugins: Vec<String> = match plugin {
            Some(plugin) => {
                check_plugin_name(plugin).map_err(config)?;
                vec![plugin.to_owned()]
            }
            None => match fs::read_dir(&base) {
                Ok(entries) => {
                    let mut names = Vec::new();
                    for entry in entries {
                        let entry = entry.map_err(|e| io(&base, e))?;
                        let name = entry.file_name();
                        let Some(name) = name.to_str() else { continue };
                        if check_plugin_name(name).is_ok() && entry.path().is_dir() {
                            names.push(name.to_owned());
                        }
                    }
                    names
                }
                Err(e) if e.kind() == IoKind::NotFound => Vec::new(),
                Err(e) => return Err(io(&base, e)),
            },
        };
        let mut out = Vec::new();
        for plugin in plugins {
            let dir = base.join(&plugin);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == IoKind::NotFound => continue,
                Err(e) if !strict && plugin_given.is_none() => {
                    tracing::warn!(dir = %dir.display(), error = %e, "the installed versions of a plugin cannot be listed");
                    continue;
                }
                Err(e) => return Err(io(&dir, e)),
            };
            for entry in entries {
                let name = entry.map_err(|e| io(&dir, e))?.file_name();
                // Temporary files start with `.`, which no version does.
                let version = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .filter(|v| check_version(v).is_ok());
                if let Some(version) = version {
                    out.push((plugin.clone(), version.to_owned()));
                }
            }
        }
        Ok(out)
    }

    fn rollouts_dir(&self) -> PathBuf {
        self.root.join("rollouts")
    }

    fn rollout_path(&self, plugin: &str) -> Result<PathBuf> {
        check_plugin_name(plugin).map_err(config)?;
        Ok(self.rollouts_dir().join(format!("{plugin}.json")))
    }

    fn read_rollout(&self, path: &Path) -> Result<Option<Versioned<Rollout>>> {
        let Some(bytes) = Self::read_small(path)? else {
            return Ok(None);
        };
        let stored: StoredRollout = Self::decode(path, &bytes)?;
        // Named by its plugin: a record copied under another plugin's name
        // would route that plugin's calls by it.
        let named = path.file_stem().and_then(|stem| stem.to_str());
        if named != Some(stored.rollout.plugin.as_str()) {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                format!(
                    "{} holds the rollout of plugin `{}`",
                    path.display(),
                    stored.rollout.plugin
                ),
            ));
        }
        Ok(Some(Versioned {
            value: stored.rollout,
            version: Version(stored.version),
        }))
    }

    /// Run `f` holding the exclusive lock on the rollouts (between
    /// processes and threads).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let dir = self.rollouts_dir();
        airlock_store::file::create_private_dir(&dir).map_err(|e| io(&dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        lock.lock().map_err(|e| io(&lock_path, e))?;
        let result = f();
        // Closing the file releases the lock too; say so explicitly.
        let _ = lock.unlock();
        result
    }

    /// Write `rollout` at `version`, replacing the file.
    fn write_rollout(&self, path: &Path, version: u64, rollout: &Rollout) -> Result<()> {
        let bytes = Self::encode(&StoredRollout {
            version,
            rollout: rollout.clone(),
        })?;
        let tmp = self.temp_file(&self.rollouts_dir(), &bytes)?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(path, e)
        })?;
        sync_dir(&self.rollouts_dir())
    }
}

/// Make a rename or link in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

impl PluginStore for FilePlugins {
    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        check_digest(digest).map_err(config)?;
        let dir = self.root.join("artifacts");
        let path = dir.join(digest);
        // Already stored — unless what is stored is damaged (a bad restore,
        // a disk error): then it is replaced, or installing the package
        // again would leave every load of it failing its digest.
        if Self::holds(&path, bytes) {
            return Ok(());
        }
        let tmp = self.temp_file(&dir, bytes)?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(&path, e)
        })?;
        sync_dir(&dir)
    }

    fn artifact(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        check_digest(digest).map_err(config)?;
        let path = self.root.join("artifacts").join(digest);
        Self::read_file(&path, MAX_ARTIFACT_BYTES, "any artifact")
    }

    fn insert_version(&self, version: &InstalledVersion) -> Result<bool> {
        let path = self.version_path(&version.plugin, &version.version)?;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let tmp = self.temp_file(&dir, &Self::encode(version)?)?;
        // A hard link fails when the name is taken: one writer wins.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == IoKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn version(&self, plugin: &str, version: &str) -> Result<Option<InstalledVersion>> {
        let path = self.version_path(plugin, version)?;
        let Some(bytes) = Self::read_small(&path)? else {
            return Ok(None);
        };
        let record: InstalledVersion = Self::decode(&path, &bytes)?;
        // Named by its plugin and version: a record copied under another
        // name would be served as that version (its digest and grant).
        if record.plugin != plugin || record.version != version {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                format!(
                    "{} holds version {} of plugin `{}`",
                    path.display(),
                    record.version,
                    record.plugin
                ),
            ));
        }
        Ok(Some(record))
    }

    fn versions(&self, plugin: Option<&str>) -> Result<Vec<InstalledVersion>> {
        let mut out = Vec::new();
        for (plugin, version) in self.version_files(plugin, true)? {
            if let Some(record) = self.version(&plugin, &version)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn version_names(&self, plugin: Option<&str>) -> Result<Vec<(String, String)>> {
        self.version_files(plugin, false)
    }

    fn rollout(&self, plugin: &str) -> Result<Option<Versioned<Rollout>>> {
        let path = self.rollout_path(plugin)?;
        self.read_rollout(&path)
    }

    fn insert_rollout(&self, rollout: &Rollout) -> Result<bool> {
        let path = self.rollout_path(&rollout.plugin)?;
        self.locked(|| {
            if self.read_rollout(&path)?.is_some() {
                return Ok(false);
            }
            self.write_rollout(&path, 1, rollout)?;
            Ok(true)
        })
    }

    fn replace_rollout(&self, current: Version, next: &Rollout) -> Result<bool> {
        let path = self.rollout_path(&next.plugin)?;
        self.locked(|| match self.read_rollout(&path)? {
            Some(stored) if stored.version == current => {
                // A version that cannot grow would let a second writer
                // holding it swap too: refused, never wrapped or kept.
                let Some(version) = current.0.checked_add(1) else {
                    return Err(StoreError::new(
                        ErrorKind::Corrupt,
                        format!(
                            "rollout of `{}` at {}: its version is at the maximum",
                            next.plugin,
                            path.display()
                        ),
                    ));
                };
                self.write_rollout(&path, version, next)?;
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    fn rollouts(&self) -> Result<Vec<Versioned<Rollout>>> {
        // The records `rollout_names` finds (`<plugin>.json`): anything
        // else left there (a README.json, the lock file) is no record.
        let mut out = Vec::new();
        for plugin in self.rollout_names()? {
            if let Some(rollout) = self.rollout(&plugin)? {
                out.push(rollout);
            }
        }
        Ok(out)
    }

    fn rollout_names(&self) -> Result<Vec<String>> {
        let dir = self.rollouts_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(&dir, e))?;
            // `<plugin>.json` for a plugin name: the lock file, temporary
            // files and anything else left there name no plugin.
            let name = entry.file_name();
            if let Some(plugin) = name.to_str().and_then(|n| n.strip_suffix(".json"))
                && check_plugin_name(plugin).is_ok()
            {
                out.push(plugin.to_owned());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::FilePlugins;

    /// What the check before the open lets through (a FIFO renamed over a
    /// record after it) is refused by the open handle's type, without
    /// blocking: a FIFO with no writer would hold the reader forever.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_met_at_the_open_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("record.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(FilePlugins::read_regular(&fifo, 1024).map_err(|e| e.to_string()));
        });
        let read = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        assert_eq!(read, Ok(None));
        let file = dir.path().join("file.json");
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(
            FilePlugins::read_regular(&file, 1024).unwrap(),
            Some(b"{}".to_vec())
        );
        let err = FilePlugins::read_regular(&file, 1).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
