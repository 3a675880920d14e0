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
//! path below the mount point), found as the kernel finds it — from the
//! root mount down, at each step the mount nearest above the path, of
//! mounts stacked on one point the topmost. A directory also reaches the
//! places of the mounts below it (a grant of `/srv` reaches
//! `/srv/shared`'s filesystem, whatever that is). Two paths overlap when
//! a place one reaches contains a place the other reaches, whatever their
//! paths say.
//!
//! The table is read when a plugin loads, as its grants are checked. A
//! mount made afterwards is not seen: the granted directory itself stays
//! what was checked (it was opened at load), but a mount made later below
//! it is reached through it — mounting is the operator's doing. Aliases
//! that are not mounts of the same filesystem are not recognised: a FUSE
//! filesystem over a directory (bindfs), an overlay's layers at their own
//! paths, an NFS export mounted back on its server.

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

/// The mount table, as the process sees it. The default, empty, places
/// nothing: paths are then compared as written (for a host with no
/// `files` grant to check).
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    mounts: Vec<Mount>,
}

impl Layout {
    /// The process's mount table (`/proc/self/mountinfo`).
    ///
    /// # Errors
    /// Why it could not be read, parsed, or used.
    pub(crate) fn read() -> Result<Layout, String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("the mount table (/proc/self/mountinfo) cannot be read: {e}"))?;
        Layout::parse(&text)
    }

    /// Parse a mount table in `/proc/PID/mountinfo`'s format.
    ///
    /// # Errors
    /// The first line that is not a mount, quoted; or a table without the
    /// process's root (a `chroot` into a directory that is not a mount
    /// point hides it), where no path could be placed.
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
            let root_field = next()?;
            let root = unescape(root_field);
            let point = unescape(next()?);
            if !device.contains(':') || !point.is_absolute() {
                return Err(bad());
            }
            if !root.is_absolute() {
                // A namespace file's mount (`net:[4026532…]` for a
                // network namespace kept by `ip netns` or a container
                // runtime): one file, which no path goes through.
                if root_field.ends_with(']') && root_field.contains(":[") {
                    continue;
                }
                return Err(bad());
            }
            if mounts.iter().any(|m: &Mount| m.id == id) {
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
        let layout = Layout { mounts };
        if layout.root().is_none() {
            return Err(
                "the mount table does not show the process's root filesystem (a chroot into a directory that is not a mount point?), so paths cannot be placed in it"
                    .to_owned(),
            );
        }
        Ok(layout)
    }

    /// The topmost of the mounts stacked on `mount`'s point, `mount`
    /// included.
    fn topmost<'a>(&'a self, mut mount: &'a Mount) -> &'a Mount {
        // Bounded: a table whose stack loops (not a real one) stops.
        for _ in 0..self.mounts.len() {
            match self
                .mounts
                .iter()
                .rev()
                .find(|m| m.parent == mount.id && m.point == mount.point && m.id != mount.id)
            {
                Some(above) => mount = above,
                None => break,
            }
        }
        mount
    }

    /// The process's root mount: the lowest of those on `/`. Path lookup
    /// starts there and does not cross a mount stacked on its starting
    /// point (a mount over `/` shows only to a process that then changes
    /// its root into it).
    fn root(&self) -> Option<&Mount> {
        let point = Path::new("/");
        self.mounts.iter().find(|m| {
            m.point == point
                && !self
                    .mounts
                    .iter()
                    .any(|p| p.id == m.parent && p.point == point && p.id != m.id)
        })
    }

    /// The mount that shows `path` (absolute, symbolic links resolved):
    /// from the root down, at each step the child mount whose point is
    /// nearest below the current one on the way to `path` (a mount made
    /// over a directory hides the mounts that were below it), of mounts
    /// stacked there the topmost.
    fn showing(&self, path: &Path) -> Option<&Mount> {
        let mut current = self.root()?;
        // Each step goes at least one component deeper.
        for _ in 0..self.mounts.len() {
            let next = self
                .mounts
                .iter()
                .filter(|m| {
                    m.parent == current.id
                        && m.point != current.point
                        && m.point.starts_with(&current.point)
                        && path.starts_with(&m.point)
                })
                .min_by_key(|m| m.point.components().count());
            match next {
                Some(child) => current = self.topmost(child),
                None => break,
            }
        }
        Some(current)
    }

    /// The place of `path`: the mount that shows it, and the path within
    /// that mount's filesystem. `None` when the table is empty (the
    /// default layout) or `path` is not absolute.
    pub(crate) fn place(&self, path: &Path) -> Option<Place> {
        let mount = self.showing(path)?;
        let rest = path.strip_prefix(&mount.point).ok()?;
        Some(Place {
            device: mount.device.clone(),
            path: mount.root.join(rest),
        })
    }

    /// The mounts showing something below `path` (not `path` itself), as
    /// their points: the mounts a directory's subtree holds.
    fn points_below<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = &'a Path> + 'a {
        self.mounts.iter().filter_map(move |m| {
            let below = m.point != path && m.point.starts_with(path);
            // Visible: what the point shows is this mount (or one stacked
            // on it), not a mount made over a directory above it.
            (below && self.showing(&m.point).is_some_and(|s| s.point == m.point))
                .then_some(m.point.as_path())
        })
    }

    /// Every place `path`'s subtree reaches: its own, and each mount's
    /// below it.
    fn reach(&self, path: &Path) -> Vec<Place> {
        self.place(path)
            .into_iter()
            .chain(self.points_below(path).filter_map(|p| self.place(p)))
            .collect()
    }

    /// Whether `outer` is `inner` or contains it: by path, or by place —
    /// `inner`'s place lies in a place `outer` reaches.
    pub(crate) fn contains(&self, outer: &Path, inner: &Path) -> bool {
        inner.starts_with(outer)
            || self
                .place(inner)
                .is_some_and(|i| self.reach(outer).iter().any(|o| o.contains(&i)))
    }

    /// Whether `a` and `b` share any directory: by path, or a place one
    /// reaches contains one the other reaches.
    pub(crate) fn overlaps(&self, a: &Path, b: &Path) -> bool {
        if a.starts_with(b) || b.starts_with(a) {
            return true;
        }
        let (ra, rb) = (self.reach(a), self.reach(b));
        ra.iter()
            .any(|pa| rb.iter().any(|pb| pa.contains(pb) || pb.contains(pa)))
    }

    /// Whether `a` and `b` are one directory, by path or by place.
    pub(crate) fn same(&self, a: &Path, b: &Path) -> bool {
        a == b
            || matches!(
                (self.place(a), self.place(b)),
                (Some(pa), Some(pb)) if pa == pb
            )
    }

    /// Whether directory `dir` can be, or fill, a directory in directory
    /// `parent`: by path (`dir` is in `parent`), or by place —
    /// `dir`, or a mount below it, is an entry of `parent`'s place; or a
    /// mount shows in `parent` an entry that `dir` reaches (is, or holds).
    pub(crate) fn writes_an_entry_of(&self, dir: &Path, parent: &Path) -> bool {
        if dir.parent().is_some_and(|p| self.same(p, parent)) {
            return true;
        }
        let Some(held) = self.place(parent) else {
            return false;
        };
        let reach = self.reach(dir);
        let entry_of_parent =
            |r: &Place| r.device == held.device && r.path.parent() == Some(held.path.as_path());
        if reach.iter().any(entry_of_parent) {
            return true;
        }
        self.mounts.iter().any(|m| {
            m.point.parent().is_some_and(|p| self.same(p, parent))
                && self
                    .place(&m.point)
                    .is_some_and(|shown| reach.iter().any(|r| r.contains(&shown)))
        })
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

    /// A table like a container's: the root filesystem; /data a second
    /// filesystem; /srv/alias a bind mount of /data/airlock and /mnt/sub
    /// one of /data/airlock/audit; /mnt/stack two mounts stacked; a mount
    /// point with a space; /srv/shelf/data, the data directory shown
    /// inside an ordinary directory; /opt/audit a tmpfs, then /opt a bind
    /// mount of /data/airlock over it (hiding it); /plugins/x a bind
    /// mount of /srv/g, a directory shown in a plugins directory.
    const TABLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:16 / /data rw,relatime - ext4 /dev/vdb rw
31 22 254:16 /airlock /srv/alias rw,relatime - ext4 /dev/vdb rw
32 22 254:16 /airlock/audit /mnt/sub rw,relatime - ext4 /dev/vdb rw
33 22 0:50 / /mnt/stack rw - tmpfs tmpfs rw
40 33 0:50 /y /mnt/stack/y rw - tmpfs tmpfs rw
34 33 254:16 /airlock /mnt/stack rw - ext4 /dev/vdb rw
35 22 254:0 /home/a\\040b /mnt/with\\040space rw - ext4 /dev/vda rw
36 22 254:16 /airlock /srv/shelf/data rw - ext4 /dev/vdb rw
37 22 0:60 / /opt/audit rw - tmpfs tmpfs rw
38 22 254:16 /airlock /opt rw - ext4 /dev/vdb rw
39 22 254:0 /srv/g /plugins/x rw - ext4 /dev/vda rw
41 22 0:4 net:[4026532480] /run/netns/one rw - nsfs nsfs rw
42 22 254:0 /plugins/y /srv/m rw - ext4 /dev/vda rw
";

    fn layout() -> Layout {
        Layout::parse(TABLE).unwrap()
    }

    fn place(device: &str, path: &str) -> Place {
        Place {
            device: device.into(),
            path: path.into(),
        }
    }

    #[test]
    fn a_path_is_placed_as_the_kernel_finds_it() {
        let l = layout();
        let at = |p: &str| l.place(Path::new(p)).unwrap();
        assert_eq!(at("/data/airlock/audit"), place("254:16", "/airlock/audit"));
        assert_eq!(at("/srv/alias/audit"), at("/data/airlock/audit"));
        assert_eq!(at("/mnt/sub"), at("/data/airlock/audit"));
        // The bind mount stacked on the tmpfs is what the path shows, and
        // the tmpfs's own mount below it is hidden.
        assert_eq!(at("/mnt/stack/x"), at("/data/airlock/x"));
        assert_eq!(at("/mnt/stack/y"), at("/data/airlock/y"));
        assert_eq!(at("/mnt/with space/c"), at("/home/a b/c"));
        // A mount made over a directory hides the mounts below it: /opt
        // shows the data directory, its audit log included.
        assert_eq!(at("/opt/audit"), at("/data/airlock/audit"));
        // Beside the mounts, the root filesystem.
        assert_eq!(at("/srv"), place("254:0", "/srv"));
        // A path that only begins like a mount point is not under it.
        assert_eq!(at("/database"), place("254:0", "/database"));
        // A mount stacked on `/` is not where lookups start.
        let over_root =
            Layout::parse(&format!("{TABLE}50 22 0:70 / / rw - tmpfs tmpfs rw\n")).unwrap();
        assert_eq!(
            over_root.place(Path::new("/srv")),
            Some(place("254:0", "/srv"))
        );
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
        assert!(l.contains(p("/opt/x"), p("/opt/x/y")));
        assert!(!l.overlaps(p("/usr/a"), p("/usr/b")));
    }

    #[test]
    fn a_directory_reaches_the_mounts_below_it() {
        let l = layout();
        let p = Path::new;
        // /srv/shelf holds a mount of the data directory: granting it
        // grants the data directory, from either side.
        assert!(l.contains(p("/srv/shelf"), p("/data/airlock/audit")));
        assert!(l.overlaps(p("/srv/shelf"), p("/data/airlock")));
        assert!(l.overlaps(p("/data/airlock/audit"), p("/srv")));
        // A hidden mount is not reached: /opt/audit's tmpfs is under the
        // data directory's mount at /opt.
        assert!(!l.reach(p("/opt")).iter().any(|r| r.device == "0:60"));
        // /srv/g is shown in /plugins as /plugins/x: writing it writes an
        // entry of the plugins directory, though its parent is /srv; so
        // does writing /srv, which holds it, or /srv/m, a mount of the
        // entry /plugins/y.
        assert!(l.writes_an_entry_of(p("/srv/g"), p("/plugins")));
        assert!(l.writes_an_entry_of(p("/srv"), p("/plugins")));
        assert!(l.writes_an_entry_of(p("/srv/m"), p("/plugins")));
        assert!(l.writes_an_entry_of(p("/plugins/z"), p("/plugins")));
        assert!(!l.writes_an_entry_of(p("/srv/h"), p("/plugins")));
        assert!(!l.writes_an_entry_of(p("/plugins/z/deeper"), p("/plugins")));
        // And the directory it is a mount of contains the plugins shown
        // there.
        assert!(l.contains(p("/srv/g"), p("/plugins/x/manifest-dir")));
    }

    #[test]
    fn a_table_that_is_not_one_or_hides_the_root_is_refused() {
        for bad in [
            "",
            "22 1 254:0 / / rw\nnot a mount line",
            "x 1 254:0 / / rw",
            "22 1 254:0 relative / rw",
            "22 1 nodevice / / rw",
            // A chroot into a directory that is not a mount point sees
            // only the mounts below its root.
            "30 22 254:16 / /data rw - ext4 /dev/vdb rw",
        ] {
            assert!(Layout::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(unescape("a\\134b\\0"), PathBuf::from("a\\b\\0"));
        // One id twice.
        assert!(Layout::parse("22 1 254:0 / / rw\n22 22 254:0 / /a rw").is_err());
        // A namespace file's mount is no directory, and not an error.
        let l = layout();
        assert!(!l.mounts.iter().any(|m| m.device == "0:4"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_table_reads_and_places_the_root() {
        let l = Layout::read().unwrap();
        assert!(l.place(Path::new("/")).is_some());
    }
}
