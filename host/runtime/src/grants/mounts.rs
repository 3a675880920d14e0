//! Where a directory lies in its filesystem, from the mount table: what
//! tells two paths naming one directory through different mounts apart
//! from two directories.
//!
//! A bind mount shows a directory (or a whole filesystem) at a second path:
//! `mount --bind /var/lib/airlock /srv/shared` makes `/srv/shared/audit`
//! the data directory's audit log, though no path comparison says so.
//! Canonicalising resolves symbolic links, not mounts. The `files` grant
//! checks therefore compare paths *and* places: a path's place is its
//! filesystem (the device in `/proc/self/mountinfo`) and its path from that
//! filesystem's root (the mount's root within it, then the rest of the
//! path below the mount point). Two paths whose places are the same
//! directory, or one inside the other on the same filesystem, overlap
//! whatever their paths say.
//!
//! The table is read when a plugin loads, as its grants are checked: a
//! mount made afterwards is not seen (a granted directory is opened at
//! load and stays what was checked; a new mount over a protected path is
//! the operator's doing).

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    id: u64,
    parent: u64,
    /// `major:minor` of the filesystem.
    device: String,
    /// The directory of the filesystem mounted here (`/` for a whole
    /// filesystem, the source directory for a bind mount).
    root: PathBuf,
    /// Where it is mounted.
    point: PathBuf,
}

/// A directory by filesystem and path within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    device: String,
    path: PathBuf,
}

impl Place {
    /// Whether `self` is `inner` or contains it.
    fn contains(&self, inner: &Place) -> bool {
        self.device == inner.device && inner.path.starts_with(&self.path)
    }
}

/// The mount table, as the process sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    mounts: Vec<Mount>,
}

impl Layout {
    /// The process's mount table (`/proc/self/mountinfo`).
    ///
    /// # Errors
    /// Why it could not be read or parsed.
    pub(crate) fn read() -> Result<Layout, String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("the mount table (/proc/self/mountinfo) cannot be read: {e}"))?;
        Layout::parse(&text)
    }

    /// Parse a mount table in `/proc/PID/mountinfo`'s format.
    ///
    /// # Errors
    /// The first line that is not a mount, quoted.
    pub(crate) fn parse(text: &str) -> Result<Layout, String> {
        let mut mounts = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let bad = || {
                let shown: String = line.chars().take(120).collect();
                format!("the mount table has a line that is not a mount: {shown:?}")
            };
            let mut fields = line.split(' ');
            let mut next = || fields.next().ok_or_else(bad);
            let id = next()?.parse().map_err(|_| bad())?;
            let parent = next()?.parse().map_err(|_| bad())?;
            let device = next()?.to_owned();
            let root = unescape(next()?);
            let point = unescape(next()?);
            if !device.contains(':') || !root.is_absolute() || !point.is_absolute() {
                return Err(bad());
            }
            mounts.push(Mount {
                id,
                parent,
                device,
                root,
                point,
            });
        }
        if mounts.is_empty() {
            return Err("the mount table is empty".to_owned());
        }
        Ok(Layout { mounts })
    }

    /// The place of `path` (absolute, symbolic links resolved): the mount
    /// that shows it — the deepest mount point above it, and of mounts
    /// stacked on one point the topmost — and the path within that
    /// mount's filesystem. `None` when no mount holds it (a path outside
    /// the process's root).
    pub(crate) fn place(&self, path: &Path) -> Option<Place> {
        let deepest = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.point))
            .map(|m| m.point.components().count())
            .max()?;
        let stacked: Vec<&Mount> = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.point) && m.point.components().count() == deepest)
            .collect();
        // The topmost: mounted on the others (none of them is mounted on
        // it); of several such (not seen in a real table), the last listed.
        let top = stacked
            .iter()
            .rev()
            .find(|m| !stacked.iter().any(|o| o.parent == m.id))?;
        let rest = path.strip_prefix(&top.point).ok()?;
        Some(Place {
            device: top.device.clone(),
            path: top.root.join(rest),
        })
    }

    /// Whether `outer` is `inner` or contains it: by path, or by place
    /// (through a mount that shows one directory at two paths).
    pub(crate) fn contains(&self, outer: &Path, inner: &Path) -> bool {
        inner.starts_with(outer)
            || matches!(
                (self.place(outer), self.place(inner)),
                (Some(o), Some(i)) if o.contains(&i)
            )
    }

    /// Whether `a` and `b` share any directory (one contains the other, or
    /// they are the same).
    pub(crate) fn overlaps(&self, a: &Path, b: &Path) -> bool {
        self.contains(a, b) || self.contains(b, a)
    }

    /// Whether `a` and `b` are one directory, by path or by place.
    pub(crate) fn same(&self, a: &Path, b: &Path) -> bool {
        a == b
            || matches!(
                (self.place(a), self.place(b)),
                (Some(pa), Some(pb)) if pa == pb
            )
    }
}

/// A path field of mountinfo: the kernel writes space, tab, newline and
/// backslash as `\ooo` (octal).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = octal
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table like a container's: the root filesystem, /data a second
    /// filesystem, /srv/alias a bind mount of /data/airlock, /mnt/sub one
    /// of /data/airlock/audit, /mnt/stack two mounts stacked, and a mount
    /// point with a space.
    const TABLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:16 / /data rw,relatime - ext4 /dev/vdb rw
31 22 254:16 /airlock /srv/alias rw,relatime - ext4 /dev/vdb rw
32 22 254:16 /airlock/audit /mnt/sub rw,relatime - ext4 /dev/vdb rw
33 22 0:50 / /mnt/stack rw - tmpfs tmpfs rw
34 33 254:16 /airlock /mnt/stack rw - ext4 /dev/vdb rw
35 22 254:0 /home/a\\040b /mnt/with\\040space rw - ext4 /dev/vda rw
";

    fn layout() -> Layout {
        Layout::parse(TABLE).unwrap()
    }

    #[test]
    fn a_path_is_placed_by_its_deepest_topmost_mount() {
        let l = layout();
        let place = |p: &str| l.place(Path::new(p)).unwrap();
        assert_eq!(
            place("/data/airlock/audit"),
            Place {
                device: "254:16".into(),
                path: "/airlock/audit".into()
            }
        );
        assert_eq!(place("/srv/alias/audit"), place("/data/airlock/audit"));
        assert_eq!(place("/mnt/sub"), place("/data/airlock/audit"));
        // The bind mount stacked on the tmpfs is what the path shows.
        assert_eq!(place("/mnt/stack/x"), place("/data/airlock/x"));
        assert_eq!(place("/mnt/with space/c"), place("/home/a b/c"));
        // Beside the mounts, the root filesystem.
        assert_eq!(place("/srv").device, "254:0");
        // A path that only begins like a mount point is not under it.
        assert_eq!(place("/database").device, "254:0");
    }

    #[test]
    fn aliases_overlap_as_their_directories_do() {
        let l = layout();
        let p = Path::new;
        // The data directory's alias, and a subdirectory of it seen
        // through another mount.
        assert!(l.contains(p("/srv/alias"), p("/data/airlock/audit")));
        assert!(l.contains(p("/data/airlock"), p("/mnt/sub/x")));
        assert!(l.overlaps(p("/mnt/sub"), p("/srv/alias")));
        assert!(l.same(p("/mnt/sub"), p("/data/airlock/audit")));
        // Not the same directory, on the same filesystem.
        assert!(!l.overlaps(p("/srv/alias/a"), p("/data/airlock/b")));
        assert!(!l.same(p("/srv/alias"), p("/data")));
        // By path alone still.
        assert!(l.contains(p("/opt"), p("/opt/x")));
        assert!(!l.overlaps(p("/opt/a"), p("/opt/b")));
    }

    #[test]
    fn a_table_that_is_not_one_is_refused() {
        for bad in [
            "",
            "22 1 254:0 / / rw\nnot a mount line",
            "x 1 254:0 / / rw",
            "22 1 254:0 relative / rw",
            "22 1 nodevice / / rw",
        ] {
            assert!(Layout::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(unescape("a\\134b\\0"), PathBuf::from("a\\b\\0"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_table_reads_and_places_the_root() {
        let l = Layout::read().unwrap();
        assert!(l.place(Path::new("/")).is_some());
    }
}
