//! The `files` plugin: list, read and search files in the directory the host
//! grants it (read-only, at `/docs`). Every result is bounded.

use std::path::{Path, PathBuf};

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};

/// Where the granted directory appears in the guest.
const ROOT: &str = "/docs";
/// Most entries `list` returns.
const MAX_ENTRIES: u32 = 1000;
/// Most bytes `read` returns in one call.
const MAX_READ_BYTES: u64 = 256 * 1024;
/// Largest file `search` looks into.
const MAX_SEARCH_FILE_BYTES: u64 = 1024 * 1024;
/// Most bytes `search` reads in one call.
const MAX_SEARCH_TOTAL_BYTES: u64 = 16 * 1024 * 1024;

/// Resolve a guest path; relative paths are relative to `/docs`.
fn resolve(path: Option<&str>) -> PathBuf {
    match path {
        None | Some("") => PathBuf::from(ROOT),
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(p) => Path::new(ROOT).join(p),
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ToolError {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            ToolError::invalid_input(format!("{} does not exist", path.display()))
        }
        std::io::ErrorKind::PermissionDenied => {
            ToolError::denied(format!("{}: access denied", path.display()))
        }
        _ => ToolError::failed(format!("{}: {e}", path.display())),
    }
}

/// Arguments of `list`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Directory to list (default `/docs`; relative paths are under `/docs`).
    #[serde(default)]
    pub path: Option<String>,
    /// Descend into subdirectories.
    #[serde(default)]
    pub recursive: bool,
    /// Return at most this many entries (default and maximum 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub max_entries: Option<u32>,
}

/// One directory entry.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Entry {
    /// Guest path.
    pub path: String,
    /// `file` or `dir`.
    pub kind: &'static str,
    /// Size in bytes (files).
    pub bytes: u64,
}

/// Result of `list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Listing {
    /// Entries, sorted by path.
    pub entries: Vec<Entry>,
    /// More entries exist than were returned.
    pub truncated: bool,
}

pub fn list(args: ListArgs, _: &Context) -> Result<Listing, ToolError> {
    let limit = args
        .max_entries
        .unwrap_or(MAX_ENTRIES)
        .clamp(1, MAX_ENTRIES) as usize;
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut pending = vec![resolve(args.path.as_deref())];
    while let Some(dir) = pending.pop() {
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| io_error(&dir, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| io_error(&dir, e))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            if entries.len() == limit {
                truncated = true;
                break;
            }
            let path = child.path();
            let meta = child.metadata().map_err(|e| io_error(&path, e))?;
            if meta.is_dir() && args.recursive {
                pending.push(path.clone());
            }
            entries.push(Entry {
                path: path.display().to_string(),
                kind: if meta.is_dir() { "dir" } else { "file" },
                bytes: if meta.is_dir() { 0 } else { meta.len() },
            });
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Listing { entries, truncated })
}

/// Arguments of `read`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// File to read (relative paths are under `/docs`).
    pub path: String,
    /// Start at this byte offset.
    #[serde(default)]
    pub offset: u64,
    /// Read at most this many bytes (default 65536, maximum 262144).
    #[serde(default)]
    #[schemars(range(min = 1, max = 262144))]
    pub max_bytes: Option<u64>,
}

/// Result of `read`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Content {
    /// The bytes read, as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// Size of the whole file.
    pub total_bytes: u64,
    /// More bytes follow the ones returned.
    pub truncated: bool,
}

pub fn read(args: ReadArgs, _: &Context) -> Result<Content, ToolError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = resolve(Some(&args.path));
    let mut file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
    let total_bytes = file.metadata().map_err(|e| io_error(&path, e))?.len();
    if args.offset > total_bytes {
        return Err(ToolError::invalid_input(format!(
            "offset {} is past the end of the file ({total_bytes} bytes)",
            args.offset
        )));
    }
    let max = args.max_bytes.unwrap_or(64 * 1024).clamp(1, MAX_READ_BYTES);
    file.seek(SeekFrom::Start(args.offset))
        .map_err(|e| io_error(&path, e))?;
    let mut buf = Vec::new();
    file.take(max)
        .read_to_end(&mut buf)
        .map_err(|e| io_error(&path, e))?;
    let truncated = args.offset + (buf.len() as u64) < total_bytes;
    Ok(Content {
        text: String::from_utf8_lossy(&buf).into_owned(),
        total_bytes,
        truncated,
    })
}

/// Arguments of `search`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Text to look for (case-insensitive).
    #[schemars(length(min = 1, max = 256))]
    pub query: String,
    /// Directory to search (default `/docs`), recursively.
    #[serde(default)]
    pub path: Option<String>,
    /// Return at most this many matching lines (default 100, maximum 500).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub max_matches: Option<u32>,
}

/// One matching line.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Match {
    /// Guest path of the file.
    pub path: String,
    /// 1-based line number.
    pub line: usize,
    /// The line (at most 300 bytes).
    pub text: String,
}

/// Result of `search`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Matches {
    /// Matching lines in path order.
    pub matches: Vec<Match>,
    /// Files looked into.
    pub files_searched: usize,
    /// The match or byte budget ran out before the search finished.
    pub truncated: bool,
}

pub fn search(args: SearchArgs, _: &Context) -> Result<Matches, ToolError> {
    if args.query.is_empty() || args.query.len() > 256 {
        return Err(ToolError::invalid_input("query must be 1 to 256 bytes"));
    }
    let needle = args.query.to_lowercase();
    let limit = args.max_matches.unwrap_or(100).clamp(1, 500) as usize;
    let listing = list(
        ListArgs {
            path: args.path,
            recursive: true,
            max_entries: Some(MAX_ENTRIES),
        },
        &Context::default(),
    )?;
    let mut matches = Vec::new();
    let mut files_searched = 0;
    let mut budget = MAX_SEARCH_TOTAL_BYTES;
    let mut truncated = listing.truncated;
    'files: for entry in listing.entries.iter().filter(|e| e.kind == "file") {
        if entry.bytes > MAX_SEARCH_FILE_BYTES {
            continue;
        }
        if entry.bytes > budget {
            truncated = true;
            break;
        }
        budget -= entry.bytes;
        let path = Path::new(&entry.path);
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        files_searched += 1;
        for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if line.to_lowercase().contains(&needle) {
                if matches.len() == limit {
                    truncated = true;
                    break 'files;
                }
                let mut text = line.to_owned();
                if text.len() > 300 {
                    let mut cut = 300;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                matches.push(Match {
                    path: entry.path.clone(),
                    line: i + 1,
                    text,
                });
            }
        }
    }
    Ok(Matches {
        matches,
        files_searched,
        truncated,
    })
}

plugin! {
    "list" => list: "List files under the document directory (/docs), optionally recursively.",
    "read" => read: "Read part of a file under /docs (at most 256 KiB per call).",
    "search" => search: "Find lines containing a text (case-insensitive) in the files under /docs.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_under_the_root() {
        assert_eq!(resolve(None), PathBuf::from("/docs"));
        assert_eq!(
            resolve(Some("guides/a.md")),
            PathBuf::from("/docs/guides/a.md")
        );
        assert_eq!(resolve(Some("/docs/x")), PathBuf::from("/docs/x"));
    }

    #[test]
    fn empty_queries_are_refused() {
        let args = SearchArgs {
            query: String::new(),
            path: None,
            max_matches: None,
        };
        assert!(matches!(
            search(args, &Context::default()),
            Err(ToolError::InvalidInput(_))
        ));
    }
}
