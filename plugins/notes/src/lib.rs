//! The `notes` plugin: notes kept in the workspace between calls, and
//! archives of them as content-addressed blobs.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars, workspace};
use serde::{Deserialize, Serialize};

/// Key prefix of notes.
const PREFIX: &str = "note/";
/// Longest note body, in bytes.
const MAX_BODY: usize = 64 * 1024;
/// Most notes one archive holds.
const MAX_ARCHIVE: usize = 1000;

/// A stored note.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Note {
    /// Its title (unique, case-insensitively, per session).
    pub title: String,
    /// Its text.
    pub body: String,
    /// Tags for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The workspace key of a title: `note/` and the title lowercased, with
/// runs of anything but letters and digits turned into `-`.
fn key_of(title: &str) -> Result<String, ToolError> {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        return Err(ToolError::invalid_input(
            "a title needs at least one letter or digit",
        ));
    }
    Ok(format!("{PREFIX}{slug}"))
}

/// Arguments of `add`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddArgs {
    /// Title; a note with the same title is replaced.
    #[schemars(length(min = 1, max = 200))]
    pub title: String,
    /// Text, at most 64 KiB.
    pub body: String,
    /// Tags.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub tags: Vec<String>,
}

/// Result of `add`.
#[derive(Serialize, JsonSchema)]
pub struct Added {
    /// The workspace key it is stored under.
    pub key: String,
    /// Whether it replaced an existing note.
    pub replaced: bool,
}

pub fn add(args: AddArgs, _: &Context) -> Result<Added, ToolError> {
    if args.body.len() > MAX_BODY {
        return Err(ToolError::invalid_input(format!(
            "the body is {} bytes; at most {MAX_BODY}",
            args.body.len()
        )));
    }
    let key = key_of(&args.title)?;
    let replaced = workspace::get(&key)?.is_some();
    let note = Note {
        title: args.title,
        body: args.body,
        tags: args.tags,
    };
    workspace::set_json(&key, &note)?;
    Ok(Added { key, replaced })
}

/// Arguments naming one note.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TitleArgs {
    /// The note's title.
    #[schemars(length(min = 1, max = 200))]
    pub title: String,
}

pub fn get(args: TitleArgs, _: &Context) -> Result<Note, ToolError> {
    let key = key_of(&args.title)?;
    workspace::get_json(&key)?
        .ok_or_else(|| ToolError::invalid_input(format!("no note titled {:?}", args.title)))
}

/// Arguments of `list`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only notes with this tag.
    #[serde(default)]
    pub tag: Option<String>,
}

/// One listed note.
#[derive(Serialize, JsonSchema)]
pub struct Listed {
    /// Title.
    pub title: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// Every note, in key order (at most `MAX_ARCHIVE`).
fn all_notes() -> Result<Vec<Note>, ToolError> {
    let mut notes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let keys = workspace::list_keys(PREFIX, after.as_deref(), 200)?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        for key in keys {
            if let Some(note) = workspace::get_json::<Note>(&key)? {
                notes.push(note);
            }
            if notes.len() >= MAX_ARCHIVE {
                return Ok(notes);
            }
        }
        after = Some(last);
    }
    Ok(notes)
}

pub fn list(args: ListArgs, _: &Context) -> Result<Vec<Listed>, ToolError> {
    Ok(all_notes()?
        .into_iter()
        .filter(|n| args.tag.as_ref().is_none_or(|t| n.tags.contains(t)))
        .map(|n| Listed {
            title: n.title,
            tags: n.tags,
        })
        .collect())
}

/// Result of `delete`.
#[derive(Serialize, JsonSchema)]
pub struct Deleted {
    /// Whether a note was removed.
    pub deleted: bool,
}

pub fn delete(args: TitleArgs, _: &Context) -> Result<Deleted, ToolError> {
    let key = key_of(&args.title)?;
    Ok(Deleted {
        deleted: workspace::delete(&key)?,
    })
}

/// Arguments of `archive`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveArgs {}

/// Result of `archive`.
#[derive(Serialize, JsonSchema)]
pub struct Archived {
    /// The archive's content-addressed ref (`sha256:…`).
    pub r#ref: String,
    /// Notes in it.
    pub notes: usize,
}

pub fn archive(_: ArchiveArgs, _: &Context) -> Result<Archived, ToolError> {
    let notes = all_notes()?;
    let bytes = airlock_sdk::serde_json::to_vec(&notes)
        .map_err(|e| ToolError::failed(format!("cannot encode the archive: {e}")))?;
    let r#ref = workspace::put_blob(bytes)?;
    Ok(Archived {
        r#ref,
        notes: notes.len(),
    })
}

/// Arguments of `read-archive`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefArgs {
    /// The ref `archive` returned.
    pub r#ref: String,
}

pub fn read_archive(args: RefArgs, _: &Context) -> Result<Vec<Note>, ToolError> {
    let bytes = workspace::get_blob(&args.r#ref)?
        .ok_or_else(|| ToolError::invalid_input(format!("no archive {}", args.r#ref)))?;
    airlock_sdk::serde_json::from_slice(&bytes)
        .map_err(|e| ToolError::failed(format!("archive {} is not readable: {e}", args.r#ref)))
}

plugin! {
    "add" => add: "Add a note (replacing one with the same title). Notes persist between calls.",
    "get" => get: "Get a note by title.",
    "list" => list: "List notes' titles and tags, optionally only those with a tag.",
    "delete" => delete: "Delete a note by title.",
    "archive" => archive: "Store all notes as one immutable archive and return its ref.",
    "read-archive" => read_archive: "Read the notes in an archive by its ref.",
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::default()
    }

    #[test]
    fn notes_round_trip_through_the_workspace() {
        let added = add(
            AddArgs {
                title: "Shopping List!".into(),
                body: "milk".into(),
                tags: vec!["home".into()],
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(added.key, "note/shopping-list");
        let note = get(
            TitleArgs {
                title: "shopping list".into(),
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(note.body, "milk");
        let listed = list(
            ListArgs {
                tag: Some("home".into()),
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(listed.len(), 1);
        let archived = archive(ArchiveArgs {}, &ctx()).unwrap();
        let back = read_archive(
            RefArgs {
                r#ref: archived.r#ref,
            },
            &ctx(),
        )
        .unwrap();
        assert_eq!(back, vec![note]);
        assert!(key_of("!!!").is_err());
    }
}
