//! Plugin archives: a flat `.tar.gz` of a package's files.
//!
//! Reading takes the archive entry by entry, and refuses, in this order for
//! each entry (each refusal an [`ArchiveRefusal`]):
//! 1. more entries than a package has files → `TooManyEntries`;
//! 2. a directory, a link (symbolic or hard), a device, a FIFO or any other
//!    entry that is not a regular file → `Directory`, `Link`,
//!    `SpecialFile`;
//! 3. a path that is absolute → `AbsolutePath`, has a `..` → `ParentPath`,
//!    has any directory → `NestedPath` (archives are flat: no entry can land
//!    anywhere but beside the manifest);
//! 4. a name twice → `DuplicateEntry`; a name that is none of a package's
//!    files → `UnknownEntry` (the component is checked against the
//!    manifest once both are read);
//! 5. a size above the cap of its file → `EntryTooLarge`, before any of
//!    its bytes are read;
//!
//! and across the archive, every decompressed byte (headers, padding and
//! extension records included) is counted: past the sum of the caps →
//! `TooLarge`, so neither a gzip bomb nor a giant extension header fills
//! memory. The stream is read to its end, so the gzip trailer's checksum is
//! checked (a corrupted archive is `ArchiveCorrupt`), and anything after
//! the archive's end but zeros (at most `MAX_ZERO_PADDING`) →
//! `TrailingData`. Nothing is
//! written anywhere while reading.

use std::cell::Cell;
use std::io::{BufRead, Read, Write};
use std::path::{Component, Path};
use std::rc::Rc;

use flate2::Compression;
use flate2::bufread::GzDecoder;
use flate2::write::GzEncoder;
use tar::EntryType;

use crate::error::{ArchiveRefusal, LoadError, LoadResult};

/// Bytes reserved for an entry before any arrive, at most: its header's
/// size is the archive's claim (up to the component's cap of hundreds of
/// MiB from a file of a hundred bytes), so memory grows with what is read.
const PREALLOCATE_AT_MOST: u64 = 64 * 1024;

/// Caps on what an archive may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// The manifest.
    pub(crate) manifest: u64,
    /// The component (the loader's cap).
    pub(crate) component: u64,
    /// `cases.jsonl`.
    pub(crate) cases: u64,
    /// `plugin.sig`.
    pub(crate) signature: u64,
    /// Entries in all.
    pub(crate) entries: usize,
}

impl Caps {
    /// Decompressed bytes in all: every file at its cap, plus room for
    /// headers and padding.
    fn total(&self) -> u64 {
        let files = self
            .manifest
            .saturating_add(self.component)
            .saturating_add(self.cases)
            .saturating_add(self.signature);
        // Per entry: a header and up to one block of padding; then the two
        // end blocks, and the gzip-level rounding tar reads ahead by.
        let overhead = (self.entries as u64 + 2) * 1024 + 10 * 1024;
        files.saturating_add(overhead)
    }
}

/// Which of a package's files an entry name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Manifest,
    Component,
    Cases,
    Signature,
}

/// The files of an archive, by name, in the order read.
pub(crate) type Files = Vec<(String, Slot, Vec<u8>)>;

/// Counts the bytes read through it; past `limit` it fails and says so.
struct Counted<R> {
    inner: R,
    read: u64,
    limit: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.limit {
            self.exceeded.set(true);
            return Err(std::io::Error::other("decompressed size limit reached"));
        }
        Ok(n)
    }
}

/// Zeros accepted after the archive's end blocks and after the gzip
/// stream, together: tar pads to its record size (10 KiB by default, a
/// blocking factor of 2048 pads up to 1 MiB).
const MAX_ZERO_PADDING: u64 = 1024 * 1024;

/// Read the archive at `path` (see the module documentation).
pub(crate) fn read(path: &Path, caps: &Caps) -> LoadResult<Files> {
    let reject = |entry: Option<&str>, why: ArchiveRefusal| LoadError::ArchiveRejected {
        path: path.to_owned(),
        entry: entry.map(str::to_owned),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    if !meta.is_file() {
        return Err(LoadError::PackageInvalid {
            path: path.to_owned(),
            message: "not a plugin directory or a regular file".to_owned(),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let exceeded = Rc::new(Cell::new(false));
    let limit = caps.total();
    let counted = Counted {
        // The `bufread` decoder reads from this buffer and no buffer of its
        // own, so whatever follows the gzip stream is left in it to see.
        inner: GzDecoder::new(std::io::BufReader::new(file)),
        read: 0,
        limit,
        exceeded: Rc::clone(&exceeded),
    };
    let mut archive = tar::Archive::new(counted);
    // Either an io error of the decoder, or our own limit.
    let failed = |source: std::io::Error| {
        if exceeded.get() {
            reject(None, ArchiveRefusal::TooLarge { limit })
        } else {
            LoadError::ArchiveCorrupt {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut files: Files = Vec::new();
    let mut count = 0usize;
    for entry in archive.entries().map_err(failed)? {
        let mut entry = entry.map_err(failed)?;
        count += 1;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        if count > caps.entries {
            return Err(reject(
                Some(&name),
                ArchiveRefusal::TooManyEntries {
                    limit: caps.entries,
                },
            ));
        }
        let kind = entry.header().entry_type();
        let refusal = match kind {
            EntryType::Regular => None,
            EntryType::Directory => Some(ArchiveRefusal::Directory),
            EntryType::Symlink | EntryType::Link => Some(ArchiveRefusal::Link),
            _ => Some(ArchiveRefusal::SpecialFile),
        };
        if let Some(why) = refusal {
            return Err(reject(Some(&name), why));
        }
        check_flat(&raw).map_err(|why| reject(Some(&name), why))?;
        let Ok(name) = String::from_utf8(raw.into_owned()) else {
            return Err(reject(Some(&name), ArchiveRefusal::UnknownEntry));
        };
        if files.iter().any(|(seen, _, _)| *seen == name) {
            return Err(reject(Some(&name), ArchiveRefusal::DuplicateEntry));
        }
        let Some(slot) = slot(&name) else {
            return Err(reject(Some(&name), ArchiveRefusal::UnknownEntry));
        };
        if slot == Slot::Component && files.iter().any(|(_, s, _)| *s == Slot::Component) {
            // Only one entry can be the manifest's component.
            return Err(reject(Some(&name), ArchiveRefusal::UnknownEntry));
        }
        let cap = match slot {
            Slot::Manifest => caps.manifest,
            Slot::Component => caps.component,
            Slot::Cases => caps.cases,
            Slot::Signature => caps.signature,
        };
        let size = entry.header().size().map_err(failed)?;
        if size > cap {
            return Err(reject(
                Some(&name),
                ArchiveRefusal::EntryTooLarge { size, limit: cap },
            ));
        }
        // The header's size is only a claim: memory grows with the bytes
        // that arrive, not with what a few bytes of header announce.
        let mut bytes =
            Vec::with_capacity(usize::try_from(size.min(PREALLOCATE_AT_MOST)).unwrap_or(0));
        let read = (&mut entry)
            .take(cap.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(failed)?;
        if read as u64 > cap {
            return Err(reject(
                Some(&name),
                ArchiveRefusal::EntryTooLarge {
                    size: read as u64,
                    limit: cap,
                },
            ));
        }
        files.push((name, slot, bytes));
    }
    if !files.iter().any(|(_, s, _)| *s == Slot::Manifest) {
        return Err(reject(None, ArchiveRefusal::MissingManifest));
    }
    // The rest, read to its end: the gzip trailer's checksum and length
    // are checked only there, so a corrupted archive is refused rather
    // than unpacked; and past the end of the archive only zeros may follow
    // — tar's record padding in the stream, or zeros a copy padded the
    // file with — not data, nor another gzip member, that another tool
    // might unpack and this one would not have checked. Zeros are not
    // counted against the caps (a large blocking factor pads more than
    // the caps' slack) but stop at `MAX_ZERO_PADDING`.
    let mut rest = archive.into_inner();
    rest.limit = u64::MAX;
    let mut padding = 0u64;
    let mut zeros = |chunk: &[u8]| {
        padding = padding.saturating_add(chunk.len() as u64);
        chunk.iter().all(|&b| b == 0) && padding <= MAX_ZERO_PADDING
    };
    let mut chunk = [0u8; 8192];
    loop {
        let n = rest.read(&mut chunk).map_err(failed)?;
        if n == 0 {
            break;
        }
        if !zeros(&chunk[..n]) {
            return Err(reject(None, ArchiveRefusal::TrailingData));
        }
    }
    let mut file = rest.inner.into_inner();
    loop {
        let buffered = file.fill_buf().map_err(failed)?;
        if buffered.is_empty() {
            break;
        }
        if !zeros(buffered) {
            return Err(reject(None, ArchiveRefusal::TrailingData));
        }
        let n = buffered.len();
        file.consume(n);
    }
    Ok(files)
}

/// The slot a (flat) name fills: the fixed names, or the component — a
/// `*.wasm` (checked against the manifest once both are read); `None` for
/// anything else.
fn slot(name: &str) -> Option<Slot> {
    match name {
        crate::manifest::MANIFEST_FILE => Some(Slot::Manifest),
        super::CASES_FILE => Some(Slot::Cases),
        super::signature::SIGNATURE_FILE => Some(Slot::Signature),
        _ if name.ends_with(".wasm") && name.len() > ".wasm".len() => Some(Slot::Component),
        _ => None,
    }
}

/// A path that is one plain file name.
fn check_flat(raw: &[u8]) -> Result<(), ArchiveRefusal> {
    if raw.first() == Some(&b'/') || raw.first() == Some(&b'\\') {
        return Err(ArchiveRefusal::AbsolutePath);
    }
    let text = String::from_utf8_lossy(raw);
    let parts: Vec<&str> = text.split(['/', '\\']).collect();
    if parts.contains(&"..") {
        return Err(ArchiveRefusal::ParentPath);
    }
    let path = Path::new(text.as_ref());
    if path.is_absolute() || path.has_root() {
        return Err(ArchiveRefusal::AbsolutePath);
    }
    let plain = parts.len() == 1
        && matches!(path.components().next(), Some(Component::Normal(_)))
        && !raw.contains(&0);
    if !plain {
        return Err(ArchiveRefusal::NestedPath);
    }
    Ok(())
}

/// Write `files` (name, bytes), in order, as a flat `.tar.gz` to `out`:
/// ustar headers, mode 0644, owner 0, time 0, so the same files always make
/// the same archive.
pub(crate) fn write(out: impl Write, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        tar.append_data(&mut header, name, *bytes)?;
    }
    tar.into_inner()?.finish()?.flush()
}
