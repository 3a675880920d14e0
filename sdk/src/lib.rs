//! Write [Airlock](https://github.com/airlock-dev/airlock) tools in Rust.
//!
//! A tool is a plain function from a deserializable argument type to a
//! serializable result. The SDK derives each tool's JSON Schema from its types
//! (the host validates every call against it *before* your code runs),
//! handles the JSON in between, maps your errors to the plugin ABI's
//! `tool-error`, and gives you a bounded [`log`].
//!
//! Build the crate as a `cdylib` for `wasm32-wasip2`; the result is a
//! component implementing the `airlock:plugin/plugin` world. Describe it in a
//! `plugin.toml` manifest next to the `.wasm` file.
//!
//! # Example
//!
//! ```
//! // `schemars` in scope lets `#[derive(JsonSchema)]` work without a direct
//! // dependency on it.
//! use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
//! use serde::{Deserialize, Serialize};
//!
//! /// Arguments of `shout`.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct ShoutArgs {
//!     /// The text to shout.
//!     text: String,
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Shouted {
//!     text: String,
//! }
//!
//! fn shout(args: ShoutArgs, _ctx: &Context) -> Result<Shouted, ToolError> {
//!     if args.text.is_empty() {
//!         return Err(ToolError::invalid_input("nothing to shout"));
//!     }
//!     airlock_sdk::log::info("shouting");
//!     Ok(Shouted { text: args.text.to_uppercase() + "!" })
//! }
//!
//! plugin! {
//!     "shout" => shout: "Upper-case the text and add an exclamation mark.",
//! }
//!
//! # fn main() {
//! # let ctx = Context::default();
//! # assert_eq!(shout(ShoutArgs { text: "hi".into() }, &ctx).unwrap().text, "HI!");
//! # }
//! ```
//!
//! Tips:
//! - `#[serde(deny_unknown_fields)]` on argument types makes the schema say
//!   `additionalProperties: false`, so callers get a precise error for typos.
//! - Doc comments on fields become schema descriptions the agent sees.
//! - `?` works on any `std::error::Error`: it becomes
//!   [`ToolError::Failed`] with the error's message. Return
//!   [`ToolError::invalid_input`] or [`ToolError::denied`] yourself when
//!   that is what happened.
//! - Tool functions are plain functions: unit-test them natively with
//!   `cargo test` ([`Context::default()`] for the context; [`log`] writes to
//!   stderr off WebAssembly). [`plugin!`] also adds a test that checks the
//!   tool names and schemas as the host will when it loads the plugin —
//!   all but the schemas' `pattern`s, which only the host compiles (with
//!   the `regex` crate: no look-around or back-references), and its bounds
//!   on a schema's width and number of patterns: those show when the
//!   plugin loads (`airlock plugins list`, `airlock inspect`).

#![deny(missing_docs)]

use std::fmt;

mod finite;

pub use schemars::{self, JsonSchema};
pub use serde;
pub use serde_json;

#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    // The crate's own copy of the repository's `wit/` (a test keeps the
    // two equal), so the crate builds wherever it is copied or vendored.
    wit_bindgen::generate!({
        path: "wit",
        world: "airlock:plugin/plugin",
        pub_export_macro: true,
        export_macro_name: "__export_airlock_plugin",
        default_bindings_module: "airlock_sdk::bindings",
    });
}

use bindings::exports::airlock::plugin::tools as wit;

/// Who is calling, as the host tells the tool. Authorisation has already
/// happened in the host; this is for logging and scoping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Unique id of this call.
    pub call_id: String,
    /// Correlation id of the agent step that caused the call.
    pub trace_id: String,
    /// Identity the call runs for.
    pub principal: String,
}

/// Why a tool did not produce a result.
///
/// Any `std::error::Error` converts into [`ToolError::Failed`], so `?` works
/// in tool functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The arguments match the schema but still cannot be used; say what to
    /// change.
    InvalidInput(String),
    /// The tool tried and failed.
    Failed(String),
    /// The tool refuses to do this.
    Denied(String),
}

impl ToolError {
    /// An [`ToolError::InvalidInput`] error.
    pub fn invalid_input(message: impl fmt::Display) -> ToolError {
        ToolError::InvalidInput(message.to_string())
    }

    /// A [`ToolError::Failed`] error.
    pub fn failed(message: impl fmt::Display) -> ToolError {
        ToolError::Failed(message.to_string())
    }

    /// A [`ToolError::Denied`] error.
    pub fn denied(message: impl fmt::Display) -> ToolError {
        ToolError::Denied(message.to_string())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            ToolError::Failed(m) => write!(f, "failed: {m}"),
            ToolError::Denied(m) => write!(f, "denied: {m}"),
        }
    }
}

impl<E: std::error::Error> From<E> for ToolError {
    fn from(error: E) -> ToolError {
        ToolError::Failed(error.to_string())
    }
}

impl From<ToolError> for wit::ToolError {
    fn from(error: ToolError) -> wit::ToolError {
        match error {
            ToolError::InvalidInput(m) => wit::ToolError::InvalidInput(m),
            ToolError::Failed(m) => wit::ToolError::Failed(m),
            ToolError::Denied(m) => wit::ToolError::Denied(m),
        }
    }
}

/// Logging to the host. The host keeps a bounded number of bytes per call
/// and drops (and counts) lines past that. Logging returns no error, but a
/// message larger than the data one host call may pass (1 MiB, or twice the
/// plugin's `max_output_kb` when larger) traps: the call fails with
/// `host_data_limit`.
///
/// On targets other than WebAssembly (unit tests of tool functions), lines go
/// to stderr.
pub mod log {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::airlock::plugin::log::{Level, log};

    macro_rules! level_fn {
        ($(#[$doc:meta] $name:ident => $level:ident),* $(,)?) => {$(
            #[$doc]
            pub fn $name(message: impl AsRef<str>) {
                #[cfg(target_arch = "wasm32")]
                log(Level::$level, message.as_ref());
                #[cfg(not(target_arch = "wasm32"))]
                eprintln!("[{}] {}", stringify!($name), message.as_ref());
            }
        )*};
    }

    level_fn! {
        /// Log at trace level.
        trace => Trace,
        /// Log at debug level.
        debug => Debug,
        /// Log at info level.
        info => Info,
        /// Log at warn level.
        warn => Warn,
        /// Log at error level.
        error => Error,
    }
}

/// The plugin's workspace: key-value state and content-addressed blobs the
/// host keeps between calls (manifest: `capabilities.workspace =
/// "read-write"` or `"read-only"`).
///
/// Keys are scoped to the plugin and, by the manifest's
/// `capabilities.workspace_scope`, to the calling principal's session
/// (`"session"`, the default), to the principal (`"principal"`) or to no one
/// caller (`"plugin"`); blobs to the plugin. Writes count against the
/// plugin's quotas and are on disk before the call's result reaches the
/// caller. A component that uses
/// these functions without the grant does not load.
///
/// On targets other than WebAssembly (unit tests of tool functions) an
/// in-memory, per-thread store stands in for the host's, with the host's
/// limits (keys of 1 to 512 bytes, values and blobs of at most 512 KiB,
/// blob refs of `sha256:` and 64 hex digits): what the host refuses, a
/// test refuses too. Its blob refs are shaped like the host's but are not
/// SHA-256 digests.
///
/// ```no_run
/// use airlock_sdk::{ToolError, workspace};
///
/// fn remember(name: &str) -> Result<u64, ToolError> {
///     let count: u64 = workspace::get_json(name)?.unwrap_or(0) + 1;
///     workspace::set_json(name, &count)?;
///     Ok(count)
/// }
/// ```
pub mod workspace {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::ToolError;

    /// Why a workspace operation failed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum WorkspaceError {
        /// The plugin's grant is read-only.
        ReadOnly,
        /// A quota would be exceeded.
        QuotaExceeded(String),
        /// A key, value or ref is not acceptable.
        Invalid(String),
        /// The host's store failed; nothing changed.
        Unavailable(String),
    }

    impl std::fmt::Display for WorkspaceError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                WorkspaceError::ReadOnly => f.write_str("the workspace is read-only"),
                WorkspaceError::QuotaExceeded(m) => write!(f, "workspace quota exceeded: {m}"),
                WorkspaceError::Invalid(m) => write!(f, "invalid workspace request: {m}"),
                WorkspaceError::Unavailable(m) => write!(f, "workspace unavailable: {m}"),
            }
        }
    }

    impl std::error::Error for WorkspaceError {}

    #[cfg(target_arch = "wasm32")]
    mod imp {
        use super::WorkspaceError;
        use crate::bindings::airlock::plugin::workspace as wit;

        fn map(e: wit::WorkspaceError) -> WorkspaceError {
            match e {
                wit::WorkspaceError::ReadOnly => WorkspaceError::ReadOnly,
                wit::WorkspaceError::QuotaExceeded(m) => WorkspaceError::QuotaExceeded(m),
                wit::WorkspaceError::Invalid(m) => WorkspaceError::Invalid(m),
                wit::WorkspaceError::Unavailable(m) => WorkspaceError::Unavailable(m),
            }
        }

        pub(super) fn get(key: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
            wit::get(key).map_err(map)
        }
        pub(super) fn set(key: &str, value: &[u8]) -> Result<(), WorkspaceError> {
            wit::set(key, value).map_err(map)
        }
        pub(super) fn delete(key: &str) -> Result<bool, WorkspaceError> {
            wit::delete(key).map_err(map)
        }
        pub(super) fn list_keys(
            prefix: &str,
            start_after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<String>, WorkspaceError> {
            wit::list_keys(prefix, start_after, limit).map_err(map)
        }
        pub(super) fn put_blob(data: &[u8]) -> Result<String, WorkspaceError> {
            wit::put_blob(data).map_err(map)
        }
        pub(super) fn get_blob(reference: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
            wit::get_blob(reference).map_err(map)
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod imp {
        use std::cell::RefCell;
        use std::collections::BTreeMap;

        use super::WorkspaceError;

        thread_local! {
            static KEYS: RefCell<BTreeMap<String, Vec<u8>>> = RefCell::default();
            static BLOBS: RefCell<BTreeMap<String, Vec<u8>>> = RefCell::default();
        }

        /// The host's limits, so a test here fails where the host would.
        const MAX_KEY_BYTES: usize = 512;
        const MAX_VALUE_BYTES: usize = 512 * 1024;

        fn check_key(key: &str) -> Result<(), WorkspaceError> {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return Err(WorkspaceError::Invalid(format!(
                    "a key is 1 to {MAX_KEY_BYTES} bytes, this one is {}",
                    key.len()
                )));
            }
            Ok(())
        }

        fn check_size(len: usize, what: &str) -> Result<(), WorkspaceError> {
            if len > MAX_VALUE_BYTES {
                return Err(WorkspaceError::Invalid(format!(
                    "a {what} is at most {MAX_VALUE_BYTES} bytes, this one is {len}"
                )));
            }
            Ok(())
        }

        pub(super) fn get(key: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
            check_key(key)?;
            Ok(KEYS.with(|k| k.borrow().get(key).cloned()))
        }
        pub(super) fn set(key: &str, value: &[u8]) -> Result<(), WorkspaceError> {
            check_key(key)?;
            check_size(value.len(), "value")?;
            KEYS.with(|k| k.borrow_mut().insert(key.to_owned(), value.to_vec()));
            Ok(())
        }
        pub(super) fn delete(key: &str) -> Result<bool, WorkspaceError> {
            check_key(key)?;
            Ok(KEYS.with(|k| k.borrow_mut().remove(key).is_some()))
        }
        pub(super) fn list_keys(
            prefix: &str,
            start_after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<String>, WorkspaceError> {
            Ok(KEYS.with(|k| {
                k.borrow()
                    .keys()
                    .filter(|key| key.starts_with(prefix))
                    .filter(|key| start_after.is_none_or(|a| key.as_str() > a))
                    .take(limit.min(1000) as usize)
                    .cloned()
                    .collect()
            }))
        }
        pub(super) fn put_blob(data: &[u8]) -> Result<String, WorkspaceError> {
            check_size(data.len(), "blob")?;
            // Not the host's SHA-256 (the SDK carries no hash crate into
            // plugins), but content-addressed and shaped like one.
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            let reference = format!("sha256:{:064x}", h.finish());
            BLOBS.with(|b| b.borrow_mut().insert(reference.clone(), data.to_vec()));
            Ok(reference)
        }
        pub(super) fn get_blob(reference: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
            let digits = reference.strip_prefix("sha256:").unwrap_or_default();
            if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(WorkspaceError::Invalid(format!(
                    "a blob ref is `sha256:` and 64 hex digits, not {:?}",
                    reference.chars().take(80).collect::<String>()
                )));
            }
            let reference = reference.to_ascii_lowercase();
            Ok(BLOBS.with(|b| b.borrow().get(&reference).cloned()))
        }
    }

    /// The value stored under `key`.
    ///
    /// # Errors
    /// [`WorkspaceError`] from the host.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        imp::get(key)
    }

    /// Store `value` under `key` (at most 512 KiB).
    ///
    /// # Errors
    /// [`WorkspaceError`] from the host: read-only grant, quota, bad key.
    pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), WorkspaceError> {
        imp::set(key, value.as_ref())
    }

    /// Remove `key`; whether it existed.
    ///
    /// # Errors
    /// [`WorkspaceError`] from the host.
    pub fn delete(key: &str) -> Result<bool, WorkspaceError> {
        imp::delete(key)
    }

    /// Keys starting with `prefix` after `start_after`, at most `limit`
    /// (capped at 1000), in byte order.
    ///
    /// # Errors
    /// [`WorkspaceError`] from the host.
    pub fn list_keys(
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, WorkspaceError> {
        imp::list_keys(prefix, start_after, limit)
    }

    /// Store `data` as an immutable blob (at most 512 KiB); its ref
    /// (`sha256:<hex>`).
    ///
    /// # Errors
    /// [`WorkspaceError`] from the host.
    pub fn put_blob(data: impl AsRef<[u8]>) -> Result<String, WorkspaceError> {
        imp::put_blob(data.as_ref())
    }

    /// The blob with `reference`, if this plugin stored it.
    ///
    /// # Errors
    /// [`WorkspaceError`] from the host, `Invalid` for a malformed ref.
    pub fn get_blob(reference: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        imp::get_blob(reference)
    }

    /// The JSON value stored under `key`, deserialised.
    ///
    /// # Errors
    /// A failed tool error when the host refuses or the value is not a `T`.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, ToolError> {
        match get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ToolError::failed(format!("workspace key {key:?}: {e}"))),
        }
    }

    /// Store `value` as JSON under `key`.
    ///
    /// # Errors
    /// A failed tool error when the host refuses (read-only, quota, size),
    /// or when `value` holds a NaN or an infinite float (which JSON cannot
    /// hold: it would be stored as `null`).
    pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), ToolError> {
        // serde_json would write a NaN or an infinity as `null`.
        crate::finite::check(value)
            .map_err(|e| ToolError::failed(format!("cannot encode {key:?}: {e}")))?;
        let bytes = serde_json::to_vec(value)
            .map_err(|e| ToolError::failed(format!("cannot encode {key:?}: {e}")))?;
        Ok(set(key, bytes)?)
    }
}

/// Implementation details used by [`plugin!`]. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::{Context, JsonSchema, ToolError, wit};

    /// A registered tool with its types erased.
    pub trait ErasedTool {
        fn name(&self) -> &'static str;
        fn descriptor(&self) -> wit::ToolDescriptor;
        fn call(&self, arguments: &str, ctx: &Context) -> Result<String, ToolError>;
    }

    #[allow(missing_debug_implementations)]
    pub struct ToolFn<A, R> {
        name: &'static str,
        description: &'static str,
        func: fn(A, &Context) -> Result<R, ToolError>,
    }

    pub fn tool<A, R>(
        name: &'static str,
        description: &'static str,
        func: fn(A, &Context) -> Result<R, ToolError>,
    ) -> Box<dyn ErasedTool>
    where
        A: DeserializeOwned + JsonSchema + 'static,
        R: Serialize + JsonSchema + 'static,
    {
        Box::new(ToolFn {
            name,
            description,
            func,
        })
    }

    /// `T`'s JSON Schema (2020-12) with only the `format`s the standard
    /// defines: schemars marks integers `uint64`, `int32`… and floats
    /// `double`, which clients validating against the standard warn about.
    /// An integer format's range becomes `minimum`/`maximum` first
    /// ([`IntegerBounds`]), so a `u32` parameter still refuses 2^32 before
    /// the guest runs.
    pub fn standard_schema<T: JsonSchema>() -> schemars::Schema {
        schemars::generate::SchemaSettings::draft2020_12()
            .with_transform(IntegerBounds)
            .with_transform(schemars::transform::RestrictFormats::default())
            .into_generator()
            .into_root_schema_for::<T>()
    }

    /// Writes the range an integer `format` of schemars implies (`int32`,
    /// `uint32`, `int64`, `uint64`, `int`, `uint`) as `minimum` and
    /// `maximum`, keeping a bound the schema already has where it is
    /// tighter. `int`/`uint` are the guest's `isize`/`usize`. 128-bit
    /// integers are held to what the host's JSON keeps exactly (`i64::MIN`
    /// to `u64::MAX`: a larger one would reach the guest rounded to a
    /// float), and an `f32` to its finite range (a larger number became
    /// infinity, and `null` in a result).
    #[derive(Debug, Clone, Copy)]
    pub struct IntegerBounds;

    impl schemars::transform::Transform for IntegerBounds {
        fn transform(&mut self, schema: &mut schemars::Schema) {
            let range: Option<(serde_json::Number, serde_json::Number)> =
                match schema.get("format").and_then(|f| f.as_str()) {
                    Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
                    Some("uint32") => Some((0.into(), u32::MAX.into())),
                    Some("int64") => Some((i64::MIN.into(), i64::MAX.into())),
                    Some("uint64") => Some((0.into(), u64::MAX.into())),
                    Some("int") => Some(((isize::MIN as i64).into(), (isize::MAX as i64).into())),
                    Some("uint") => Some((0.into(), (usize::MAX as u64).into())),
                    Some("int128") => Some((i64::MIN.into(), u64::MAX.into())),
                    Some("uint128") => Some((0.into(), u64::MAX.into())),
                    Some("float") => serde_json::Number::from_f64(-f64::from(f32::MAX))
                        .zip(serde_json::Number::from_f64(f64::from(f32::MAX))),
                    _ => None,
                };
            if let (Some((min, max)), Some(object)) = (range, schema.as_object_mut()) {
                let tighter = |existing: Option<&serde_json::Value>,
                               bound: &serde_json::Number,
                               low: bool| {
                    match existing.and_then(|v| v.as_f64()) {
                        Some(v) => {
                            let b = bound.as_f64().unwrap_or(v);
                            if low { v >= b } else { v <= b }
                        }
                        None => false,
                    }
                };
                if !tighter(object.get("minimum"), &min, true) {
                    object.insert("minimum".to_owned(), min.into());
                }
                if !tighter(object.get("maximum"), &max, false) {
                    object.insert("maximum".to_owned(), max.into());
                }
            }
            schemars::transform::transform_subschemas(self, schema);
        }
    }

    impl<A, R> ErasedTool for ToolFn<A, R>
    where
        A: DeserializeOwned + JsonSchema,
        R: Serialize + JsonSchema,
    {
        fn name(&self) -> &'static str {
            self.name
        }

        fn descriptor(&self) -> wit::ToolDescriptor {
            wit::ToolDescriptor {
                name: self.name.to_owned(),
                description: self.description.to_owned(),
                input_schema: standard_schema::<A>().as_value().to_string(),
                output_schema: Some(standard_schema::<R>().as_value().to_string()),
            }
        }

        fn call(&self, arguments: &str, ctx: &Context) -> Result<String, ToolError> {
            let invalid = |e: serde_path_to_error::Error<serde_json::Error>| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    ToolError::invalid_input(inner)
                } else {
                    ToolError::invalid_input(format!("at {path}: {inner}"))
                }
            };
            let de = &mut serde_json::Deserializer::from_str(arguments);
            let args: A = match serde_path_to_error::deserialize(de) {
                Ok(args) => args,
                // The host's schema check counts a number with no fraction
                // (`2.0`, `1e2`) as an integer, as JSON Schema does; serde
                // does not. Where that is what failed, the number is read
                // again as the integer — only there, and only below 2^53,
                // where a float holds every integer exactly.
                Err(first) => match reread(arguments, first.path()) {
                    Some(args) => args,
                    None => return Err(invalid(first)),
                },
            };
            let result = (self.func)(args, ctx)?;
            // serde_json would write a NaN or an infinity as `null`. (The
            // result is serialised twice, so a `Serialize` that can run
            // only once — one taking an iterator out of a cell — cannot be
            // a result.)
            crate::finite::check(&result)
                .map_err(|e| ToolError::failed(format!("cannot serialize the result: {e}")))?;
            serde_json::to_string(&result)
                .map_err(|e| ToolError::failed(format!("cannot serialize the result: {e}")))
        }
    }

    /// `arguments` read as `A` with the whole numbers written as floats
    /// that serde refused, at `failed` and then at each next failure,
    /// taken as integers; `None` when a failure is anything else.
    fn reread<A: DeserializeOwned>(
        arguments: &str,
        failed: &serde_path_to_error::Path,
    ) -> Option<A> {
        /// Numbers rewritten at most (each a separate failure).
        const MAX_REWRITES: usize = 256;
        let mut value: serde_json::Value = serde_json::from_str(arguments).ok()?;
        if !integral_at(&mut value, failed) {
            return None;
        }
        for _ in 0..MAX_REWRITES {
            match serde_path_to_error::deserialize::<_, A>(&value) {
                Ok(args) => return Some(args),
                Err(e) => {
                    if !integral_at(&mut value, e.path()) {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Rewrite the number at `path` in `value` as an integer if it is a
    /// float with no fraction below 2^53 in magnitude; whether it was.
    fn integral_at(value: &mut serde_json::Value, path: &serde_path_to_error::Path) -> bool {
        use serde_path_to_error::Segment;
        let mut node = value;
        for segment in path.iter() {
            let next = match (segment, node) {
                (Segment::Seq { index }, serde_json::Value::Array(items)) => items.get_mut(*index),
                (Segment::Map { key }, serde_json::Value::Object(map))
                | (Segment::Enum { variant: key }, serde_json::Value::Object(map)) => {
                    map.get_mut(key.as_str())
                }
                _ => None,
            };
            let Some(next) = next else { return false };
            node = next;
        }
        // 2^53: every integer below it is exactly one float.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let serde_json::Value::Number(n) = node else {
            return false;
        };
        let Some(f) = n.as_f64().filter(|_| n.is_f64()) else {
            return false;
        };
        if f.fract() != 0.0 || f.abs() >= EXACT {
            return false;
        }
        // Whole and below 2^53: the conversion is exact.
        *node = serde_json::Value::from(f as i64);
        true
    }

    pub fn list(tools: &[Box<dyn ErasedTool>]) -> Vec<wit::ToolDescriptor> {
        tools.iter().map(|t| t.descriptor()).collect()
    }

    /// Whether `name` is a valid tool name (see the WIT `tool-descriptor`):
    /// the host's own rule.
    pub use airlock_names::is_valid_tool_name;

    /// Check the registrations the way the host checks them at load time:
    /// at most [`airlock_names::MAX_TOOLS`], valid and unique names, input
    /// schemas whose root is `"type": "object"`, and no schema over
    /// [`airlock_names::MAX_SCHEMA_BYTES`] or recursive; and, the SDK's own
    /// rule, a description that is not empty. Not
    /// checked here (the host refuses them when it loads the plugin): a
    /// `pattern` the `regex` crate cannot compile, and schemas wider or
    /// with more patterns than the host's bounds.
    /// [`plugin!`](crate::plugin) runs this as a unit
    /// test in every plugin crate, so a mistake fails `cargo test` instead of
    /// the host's load.
    pub fn validate(tools: &[Box<dyn ErasedTool>]) -> Result<(), String> {
        if tools.len() > airlock_names::MAX_TOOLS {
            return Err(format!(
                "{} tools registered, more than the host's limit of {}",
                tools.len(),
                airlock_names::MAX_TOOLS
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in list(tools) {
            if !is_valid_tool_name(&d.name) {
                return Err(format!(
                    "tool name `{}` is not lowercase ASCII letters, digits, `-` and `_` \
                     starting with a letter (at most 64 bytes, no `__`)",
                    d.name
                ));
            }
            if !seen.insert(d.name.clone()) {
                return Err(format!("tool `{}` is registered twice", d.name));
            }
            if d.description.trim().is_empty() {
                return Err(format!("tool `{}` has no description", d.name));
            }
            for (which, text) in [
                ("input", Some(&d.input_schema)),
                ("output", d.output_schema.as_ref()),
            ] {
                let Some(text) = text else { continue };
                if text.len() > airlock_names::MAX_SCHEMA_BYTES {
                    return Err(format!(
                        "tool `{}`: its {which} schema is {} bytes, more than the host's \
                         limit of {}",
                        d.name,
                        text.len(),
                        airlock_names::MAX_SCHEMA_BYTES
                    ));
                }
                let schema: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| format!("tool `{}`: {which} schema is not JSON: {e}", d.name))?;
                if let Some(e) = unresolved_ref(&schema, &schema) {
                    return Err(format!(
                        "tool `{}`: its {which} schema has {e}; the host refuses it: rename \
                         the type (`#[schemars(rename = \"...\")]`, letters, digits, `_`, `-`)",
                        d.name
                    ));
                }
                recursion(&schema).map_err(|e| {
                    format!(
                        "tool `{}`: its {which} type is recursive ({e}); the host refuses \
                         recursive schemas, so that checking a value's shape is bounded: \
                         give the type a fixed depth, or take that part as \
                         `serde_json::Value`",
                        d.name
                    )
                })?;
            }
            let schema: serde_json::Value = serde_json::from_str(&d.input_schema)
                .map_err(|e| format!("tool `{}`: input schema is not JSON: {e}", d.name))?;
            if schema.get("type").and_then(serde_json::Value::as_str) != Some("object") {
                return Err(format!(
                    "tool `{}`: its argument type must be a struct (or map): the input \
                     schema's root must be `\"type\": \"object\"`, not {}",
                    d.name,
                    schema
                        .get("type")
                        .map_or("untyped".to_owned(), ToString::to_string)
                ));
            }
        }
        Ok(())
    }

    /// A `$ref` in `node` the host cannot resolve in `root`: one that is
    /// percent-encoded (schemars encodes a type name with spaces or `<>`),
    /// or that points at nothing.
    fn unresolved_ref(root: &serde_json::Value, node: &serde_json::Value) -> Option<String> {
        match node {
            serde_json::Value::Object(members) => {
                if let Some(target) = members.get("$ref").and_then(serde_json::Value::as_str) {
                    let pointer = target.strip_prefix('#').unwrap_or(target);
                    if pointer.contains('%') {
                        return Some(format!("a percent-encoded `$ref`, {target:?}"));
                    }
                    if root.pointer(pointer).is_none() {
                        return Some(format!("a `$ref` that points at nothing, {target:?}"));
                    }
                }
                members.values().find_map(|v| unresolved_ref(root, v))
            }
            serde_json::Value::Array(items) => items.iter().find_map(|v| unresolved_ref(root, v)),
            _ => None,
        }
    }

    /// Where a `$ref` of `schema` leads back into a schema that contains
    /// it, as the host finds it when it loads the plugin (a type that holds
    /// itself, directly or through others).
    fn recursion(schema: &serde_json::Value) -> Result<(), String> {
        /// Schemas visited at most, following `$ref`s: a schema that
        /// reaches this many is far past what the host accepts.
        const MAX_VISITS: usize = 1_000_000;
        struct Walk<'a> {
            root: &'a serde_json::Value,
            /// The locations of the `$ref`s being followed.
            followed: Vec<Vec<String>>,
            visits: usize,
        }
        impl Walk<'_> {
            fn of(&mut self, node: &serde_json::Value, at: &mut Vec<String>) -> Result<(), String> {
                self.visits += 1;
                if self.visits > MAX_VISITS || self.followed.len() > 256 {
                    return Err("its `$ref`s lead too far to follow".to_owned());
                }
                match node {
                    serde_json::Value::Object(members) => {
                        if let Some(pointer) = members
                            .get("$ref")
                            .and_then(serde_json::Value::as_str)
                            .and_then(|r| r.strip_prefix('#'))
                        {
                            let target: Vec<String> = pointer
                                .split('/')
                                .skip(1)
                                .map(|part| part.replace("~1", "/").replace("~0", "~"))
                                .collect();
                            if self
                                .followed
                                .iter()
                                .chain(std::iter::once(&*at))
                                .any(|location| location.starts_with(&target))
                            {
                                return Err(format!(
                                    "`$ref: \"#{pointer}\"` at /{} leads back into a schema \
                                     that contains it",
                                    at.join("/")
                                ));
                            }
                            if let Some(next) = self.root.pointer(pointer) {
                                self.followed.push(at.clone());
                                let mut inside = target;
                                self.of(next, &mut inside)?;
                                self.followed.pop();
                            }
                        }
                        for (key, value) in members {
                            at.push(key.clone());
                            self.of(value, at)?;
                            at.pop();
                        }
                    }
                    serde_json::Value::Array(items) => {
                        for (i, value) in items.iter().enumerate() {
                            at.push(i.to_string());
                            self.of(value, at)?;
                            at.pop();
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
        }
        Walk {
            root: schema,
            followed: Vec::new(),
            visits: 0,
        }
        .of(schema, &mut Vec::new())
    }

    pub fn dispatch(
        tools: &[Box<dyn ErasedTool>],
        name: &str,
        arguments: &str,
        ctx: wit::CallContext,
    ) -> Result<String, wit::ToolError> {
        let ctx = Context {
            call_id: ctx.call_id,
            trace_id: ctx.trace_id,
            principal: ctx.principal,
        };
        match tools.iter().find(|t| t.name() == name) {
            Some(tool) => tool.call(arguments, &ctx).map_err(Into::into),
            None => Err(wit::ToolError::InvalidInput(format!(
                "this plugin has no tool named `{name}`"
            ))),
        }
    }
}

/// Declare the plugin's tools and export them as the component's `tools`
/// interface. Use it once per plugin crate:
///
/// ```ignore
/// plugin! {
///     "tool-name" => rust_function: "What the tool does, for the agent.",
/// }
/// ```
///
/// Each function has the shape `fn(Args, &Context) -> Result<Output, ToolError>`
/// where `Args: Deserialize + JsonSchema` (a struct: tools take a JSON object)
/// and `Output: Serialize + JsonSchema`.
///
/// What the generated `call` does:
/// - an unknown tool name returns [`ToolError::InvalidInput`];
/// - arguments that do not deserialize into `Args` return
///   [`ToolError::InvalidInput`] naming the failing field path
///   (`at items[2].name: invalid type: ...`);
/// - a result that does not serialize returns [`ToolError::Failed`].
///
/// The macro also adds a unit test, `airlock_plugin_tools_are_valid`, that
/// checks what the host checks when it loads the plugin: at most 256 tools,
/// tool names are lowercase `[a-z][a-z0-9_-]*` (at most 64 bytes, no `__`)
/// and unique, every input schema's root is `"type": "object"`, and no
/// schema is over 256 KiB or recursive (an argument or result type that
/// holds itself, directly or through others: the host refuses those, so
/// that checking a value is bounded). It also checks that descriptions are
/// not empty: the SDK's own rule (the host keeps an empty one; an agent
/// gets nothing to choose the tool by).
#[macro_export]
macro_rules! plugin {
    ($($name:literal => $func:path : $description:literal),+ $(,)?) => {
        fn __airlock_tools() -> ::std::vec::Vec<::std::boxed::Box<dyn $crate::__private::ErasedTool>> {
            ::std::vec![$($crate::__private::tool($name, $description, $func)),+]
        }

        #[allow(dead_code)]
        struct __AirlockPlugin;

        impl $crate::bindings::exports::airlock::plugin::tools::Guest for __AirlockPlugin {
            fn list() -> ::std::vec::Vec<$crate::bindings::exports::airlock::plugin::tools::ToolDescriptor> {
                $crate::__private::list(&__airlock_tools())
            }

            fn call(
                name: ::std::string::String,
                arguments: ::std::string::String,
                ctx: $crate::bindings::exports::airlock::plugin::tools::CallContext,
            ) -> ::std::result::Result<::std::string::String, $crate::bindings::exports::airlock::plugin::tools::ToolError> {
                $crate::__private::dispatch(&__airlock_tools(), &name, &arguments, ctx)
            }
        }

        // Component exports only exist on wasm32; on other targets (unit
        // tests of the tool functions) the crate builds without them.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_airlock_plugin!(__AirlockPlugin);

        /// Checks the tool registrations as the host will at load time.
        #[cfg(test)]
        #[test]
        fn airlock_plugin_tools_are_valid() {
            if let ::std::result::Result::Err(e) = $crate::__private::validate(&__airlock_tools()) {
                ::std::panic!("{}", e);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::__private::{ErasedTool, dispatch, list, tool, validate};
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Args {
        /// A number.
        n: u32,
        #[serde(default)]
        #[allow(dead_code)]
        label: Option<String>,
    }

    #[derive(Serialize, JsonSchema)]
    struct Out {
        double: u64,
    }

    fn double(args: Args, _: &Context) -> Result<Out, ToolError> {
        if args.n == 13 {
            return Err(ToolError::denied("unlucky"));
        }
        if args.n == 7 {
            "x".parse::<u8>()?;
        }
        Ok(Out {
            double: u64::from(args.n) * 2,
        })
    }

    fn ctx() -> wit::CallContext {
        wit::CallContext {
            call_id: "c".into(),
            trace_id: "t".into(),
            principal: "p".into(),
        }
    }

    #[test]
    fn schemas_are_derived_and_rooted_at_an_object() {
        let d = &list(&[tool("double", "Double it.", double)])[0];
        let input: serde_json::Value = serde_json::from_str(&d.input_schema).unwrap();
        assert_eq!(input["type"], "object");
        assert_eq!(input["required"], serde_json::json!(["n"]));
        assert_eq!(input["additionalProperties"], false);
        assert_eq!(input["properties"]["n"]["description"], "A number.");
        let output: serde_json::Value =
            serde_json::from_str(d.output_schema.as_ref().unwrap()).unwrap();
        assert_eq!(output["type"], "object");
    }

    #[test]
    fn schemas_carry_only_standard_formats() {
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Many {
            a: u8,
            b: u16,
            c: i64,
            d: usize,
            e: f64,
            when: Option<String>,
        }
        let d = &list(&[tool("double", "Double it.", double)])[0];
        let input: serde_json::Value = serde_json::from_str(&d.input_schema).unwrap();
        assert_eq!(
            input["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(input["properties"]["n"]["type"], "integer");
        assert_eq!(input["properties"]["n"]["minimum"], 0);
        assert!(input["properties"]["n"].get("format").is_none(), "{input}");
        let output: serde_json::Value =
            serde_json::from_str(d.output_schema.as_ref().unwrap()).unwrap();
        assert!(output["properties"]["double"].get("format").is_none());
        assert_eq!(output["properties"]["double"]["minimum"], 0);
        let many = __private::standard_schema::<Many>();
        let many = many.as_value();
        for field in ["a", "b", "c", "d", "e"] {
            assert!(many["properties"][field].get("format").is_none(), "{many}");
        }
        assert_eq!(many["properties"]["a"]["maximum"], 255);
        assert_eq!(many["properties"]["b"]["maximum"], 65535);
    }

    #[test]
    fn integer_formats_become_bounds_before_they_are_stripped() {
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Ints {
            a: u32,
            b: i32,
            c: i64,
            d: u64,
            e: usize,
            f: Option<u32>,
            g: Vec<i32>,
            #[schemars(range(min = 5, max = 10))]
            h: u32,
            i: u8,
            j: i128,
            k: u128,
            l: f32,
        }
        let schema = __private::standard_schema::<Ints>();
        let v = schema.as_value();
        let p = &v["properties"];
        assert_eq!(p["a"]["minimum"], 0);
        assert_eq!(p["a"]["maximum"], u32::MAX);
        assert_eq!(p["b"]["minimum"], i32::MIN);
        assert_eq!(p["b"]["maximum"], i32::MAX);
        assert_eq!(p["c"]["minimum"], i64::MIN);
        assert_eq!(p["c"]["maximum"], i64::MAX);
        assert_eq!(p["d"]["maximum"], u64::MAX);
        assert_eq!(p["e"]["maximum"], usize::MAX as u64);
        // Nested: an `Option` and an array's items.
        let f = serde_json::to_string(&p["f"]).unwrap();
        assert!(f.contains(&u32::MAX.to_string()), "{f}");
        assert_eq!(p["g"]["items"]["maximum"], i32::MAX);
        // A tighter bound the author wrote stays.
        assert_eq!(p["h"]["minimum"], 5);
        assert_eq!(p["h"]["maximum"], 10);
        assert_eq!(p["i"]["maximum"], 255);
        // What the host's JSON keeps exactly, and an f32's finite range.
        assert_eq!(p["j"]["minimum"], i64::MIN);
        assert_eq!(p["j"]["maximum"], u64::MAX);
        assert_eq!(p["k"]["minimum"], 0);
        assert_eq!(p["k"]["maximum"], u64::MAX);
        assert_eq!(p["l"]["maximum"], f64::from(f32::MAX));
        assert_eq!(p["l"]["minimum"], -f64::from(f32::MAX));
        // And no format is left anywhere.
        assert!(!v.to_string().contains("\"format\""), "{v}");
    }

    #[test]
    fn calls_dispatch_by_name_and_map_errors() {
        let tools = [tool("double", "Double it.", double)];
        assert_eq!(
            dispatch(&tools, "double", r#"{"n": 4}"#, ctx()).unwrap(),
            r#"{"double":8}"#
        );
        assert!(matches!(
            dispatch(&tools, "double", r#"{"n": 13}"#, ctx()),
            Err(wit::ToolError::Denied(_))
        ));
        assert!(matches!(
            dispatch(&tools, "double", r#"{"n": 7}"#, ctx()),
            Err(wit::ToolError::Failed(_))
        ));
        let Err(wit::ToolError::InvalidInput(m)) = dispatch(&tools, "triple", "{}", ctx()) else {
            panic!()
        };
        assert!(m.contains("triple"));
    }

    /// A result holding a NaN or an infinity fails the call, naming the
    /// field (serde_json alone writes `null`, which an optional field's
    /// schema accepts: the caller would read "no value").
    #[test]
    fn a_result_with_a_number_json_cannot_hold_fails_naming_it() {
        #[derive(Serialize, JsonSchema)]
        struct Mean {
            mean: Option<f64>,
        }
        fn mean(args: Args, _: &Context) -> Result<Mean, ToolError> {
            let values: Vec<f64> = Vec::new();
            let sum: f64 = values.iter().sum();
            Ok(Mean {
                mean: (args.n > 0).then(|| sum / values.len() as f64),
            })
        }
        let tools = [tool("mean", "The mean.", mean)];
        assert_eq!(
            dispatch(&tools, "mean", r#"{"n": 0}"#, ctx()).unwrap(),
            r#"{"mean":null}"#
        );
        let Err(wit::ToolError::Failed(m)) = dispatch(&tools, "mean", r#"{"n": 1}"#, ctx()) else {
            panic!("a NaN result passed")
        };
        assert!(m.contains("cannot serialize the result"), "{m}");
        assert!(m.contains(".mean is not finite"), "{m}");
    }

    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        // The host's schema check accepts `4.0` and `2e0` for an integer,
        // as JSON Schema does, and passes them on as written.
        let tools = [tool("double", "Double it.", double)];
        for args in [
            r#"{"n": 4.0}"#,
            r#"{"n": 4e0}"#,
            r#"{"n": 0.4e1, "label": "x"}"#,
        ] {
            assert_eq!(
                dispatch(&tools, "double", args, ctx()).unwrap(),
                r#"{"double":8}"#,
                "{args}"
            );
        }
        // A fraction, or a number no integer holds, is still refused, with
        // its path.
        for (args, says) in [
            (r#"{"n": 4.5}"#, "at n: invalid type: floating point `4.5`"),
            (
                r#"{"n": 1e30}"#,
                "at n: invalid type: floating point `1e+30`",
            ),
            (
                r#"{"n": -1.0}"#,
                "at n: invalid type: floating point `-1.0`",
            ),
            (
                r#"{"n": 9007199254740993.0}"#,
                "at n: invalid type: floating point",
            ),
        ] {
            let Err(wit::ToolError::InvalidInput(m)) = dispatch(&tools, "double", args, ctx())
            else {
                panic!("{args} was accepted");
            };
            assert!(m.starts_with(says), "{args}: {m}");
        }
        // A float field takes the integers the rewrite makes.
        #[derive(Deserialize, JsonSchema)]
        struct Real {
            x: f64,
            xs: Vec<f64>,
        }
        #[derive(Serialize, JsonSchema)]
        struct Sum {
            sum: f64,
        }
        let sum = |a: Real, _: &Context| -> Result<Sum, ToolError> {
            Ok(Sum {
                sum: a.x + a.xs.iter().sum::<f64>(),
            })
        };
        let tools = [tool("sum", "Sum.", sum)];
        assert_eq!(
            dispatch(&tools, "sum", r#"{"x": 1.5, "xs": [2.0, 3]}"#, ctx()).unwrap(),
            r#"{"sum":6.5}"#
        );
        // Only what failed is rewritten: a value kept as JSON keeps its
        // float, nested integers are found by their path.
        #[derive(Deserialize, JsonSchema)]
        struct Mixed {
            counts: Vec<u32>,
            raw: serde_json::Value,
        }
        #[derive(Serialize, JsonSchema)]
        struct Seen {
            total: u32,
            raw: String,
        }
        let seen = |m: Mixed, _: &Context| -> Result<Seen, ToolError> {
            Ok(Seen {
                total: m.counts.iter().sum(),
                raw: m.raw.to_string(),
            })
        };
        let tools = [tool("seen", "Seen.", seen)];
        assert_eq!(
            dispatch(
                &tools,
                "seen",
                r#"{"counts": [1, 2.0, 3e0], "raw": [1.0, 2]}"#,
                ctx()
            )
            .unwrap(),
            r#"{"total":6,"raw":"[1.0,2]"}"#
        );
    }

    #[test]
    fn bad_arguments_name_the_failing_path() {
        let tools = [tool("double", "Double it.", double)];
        let Err(wit::ToolError::InvalidInput(m)) =
            dispatch(&tools, "double", r#"{"n": "four"}"#, ctx())
        else {
            panic!()
        };
        assert!(m.starts_with("at n:"), "{m}");

        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Nested {
            items: Vec<Args>,
        }
        fn count(args: Nested, _: &Context) -> Result<Out, ToolError> {
            Ok(Out {
                double: args.items.len() as u64,
            })
        }
        let tools = [tool("count", "Count them.", count)];
        let Err(wit::ToolError::InvalidInput(m)) = dispatch(
            &tools,
            "count",
            r#"{"items": [{"n": 1}, {"n": -1}]}"#,
            ctx(),
        ) else {
            panic!()
        };
        assert!(m.starts_with("at items[1].n:"), "{m}");
        let Err(wit::ToolError::InvalidInput(m)) = dispatch(&tools, "count", "{}", ctx()) else {
            panic!()
        };
        assert!(m.contains("missing field `items`"), "{m}");
    }

    #[test]
    fn schemas_are_draft_2020_12() {
        let d = &list(&[tool("double", "Double it.", double)])[0];
        let input: serde_json::Value = serde_json::from_str(&d.input_schema).unwrap();
        assert_eq!(
            input["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }

    #[test]
    fn unserializable_results_fail() {
        struct Broken;
        impl Serialize for Broken {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        impl JsonSchema for Broken {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                "Broken".into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "object"})
            }
        }
        fn broken(_: Args, _: &Context) -> Result<Broken, ToolError> {
            Ok(Broken)
        }
        let tools = [tool("broken", "Breaks.", broken)];
        let Err(wit::ToolError::Failed(m)) = dispatch(&tools, "broken", r#"{"n": 1}"#, ctx())
        else {
            panic!()
        };
        assert!(m.contains("cannot serialize the result"), "{m}");
    }

    #[test]
    fn validation_catches_what_the_host_would_refuse() {
        fn text(args: String, _: &Context) -> Result<Out, ToolError> {
            Ok(Out {
                double: args.len() as u64,
            })
        }
        validate(&[
            tool("double", "Double it.", double),
            tool("double-2_x", "Double it.", double),
        ])
        .unwrap();
        let err = |tools: &[Box<dyn ErasedTool>]| validate(tools).unwrap_err();
        assert!(err(&[tool("text", "Text.", text)]).contains("\"type\": \"object\""));
        assert!(
            err(&[tool("d", "D.", double), tool("d", "D.", double)]).contains("registered twice")
        );
        assert!(err(&[tool("d", " ", double)]).contains("no description"));
        for bad in [
            "",
            "Double",
            "1x",
            "a__b",
            "a/b",
            "a b",
            "a".repeat(65).leak(),
        ] {
            assert!(
                err(&[tool(bad, "D.", double)]).contains("tool name"),
                "{bad}"
            );
        }
    }

    /// The host refuses a recursive schema at load (its checks of a value
    /// would be unbounded): a recursive type fails the plugin's own test
    /// instead, and a type used twice (a `$ref` that is no cycle) passes.
    #[test]
    fn validation_catches_recursive_types_and_passes_shared_ones() {
        #[derive(Deserialize, Serialize, JsonSchema)]
        struct Tree {
            children: Vec<Tree>,
        }
        #[derive(Deserialize, Serialize, JsonSchema)]
        struct Forest {
            trees: Vec<Tree>,
        }
        #[derive(Deserialize, Serialize, JsonSchema)]
        struct Ping {
            pong: Option<Box<Pong>>,
        }
        #[derive(Deserialize, Serialize, JsonSchema)]
        struct Pong {
            ping: Option<Ping>,
        }
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Point {
            x: i32,
        }
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Line {
            from: Point,
            to: Point,
        }
        fn tree(_: Tree, _: &Context) -> Result<Out, ToolError> {
            Ok(Out { double: 0 })
        }
        fn forest(_: Args, _: &Context) -> Result<Forest, ToolError> {
            Ok(Forest { trees: Vec::new() })
        }
        fn ping(_: Ping, _: &Context) -> Result<Out, ToolError> {
            Ok(Out { double: 0 })
        }
        fn line(_: Line, _: &Context) -> Result<Out, ToolError> {
            Ok(Out { double: 0 })
        }
        for (tools, which) in [
            (vec![tool("tree", "T.", tree)], "input"),
            (vec![tool("forest", "F.", forest)], "output"),
            (vec![tool("ping", "P.", ping)], "input"),
        ] {
            let err = validate(&tools).unwrap_err();
            assert!(
                err.contains(&format!("its {which} type is recursive")),
                "{err}"
            );
        }
        validate(&[tool("line", "L.", line)]).unwrap();
        // A type name schemars must percent-encode: the host cannot resolve
        // its `$ref`, so neither does the check.
        #[derive(Deserialize, JsonSchema)]
        #[schemars(rename = "Odd Name<T>")]
        #[allow(dead_code)]
        struct Odd {
            x: i32,
        }
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct HoldsOdd {
            a: Odd,
            b: Odd,
        }
        fn odd(_: HoldsOdd, _: &Context) -> Result<Out, ToolError> {
            Ok(Out { double: 0 })
        }
        let err = validate(&[tool("odd", "O.", odd)]).unwrap_err();
        assert!(err.contains("percent-encoded `$ref`"), "{err}");
        let many: Vec<_> = (0..=airlock_names::MAX_TOOLS)
            .map(|i| tool(format!("t{i}").leak(), "T.", double))
            .collect();
        assert!(validate(&many).unwrap_err().contains("tools registered"));
    }

    #[test]
    fn errors_convert_for_the_question_mark_operator() {
        fn parse(s: &str) -> Result<u8, ToolError> {
            Ok(s.parse::<u8>()?)
        }
        assert_eq!(
            parse("x"),
            Err(ToolError::Failed("invalid digit found in string".into()))
        );
        assert_eq!(
            ToolError::invalid_input("bad").to_string(),
            "invalid input: bad"
        );
        assert!(matches!(
            wit::ToolError::from(ToolError::denied("no")),
            wit::ToolError::Denied(m) if m == "no"
        ));
    }

    #[test]
    fn the_in_memory_workspace_refuses_what_the_host_refuses() {
        let invalid = |r: Result<(), workspace::WorkspaceError>| {
            assert!(
                matches!(r, Err(workspace::WorkspaceError::Invalid(_))),
                "{r:?}"
            );
        };
        let long = "k".repeat(513);
        invalid(workspace::set(&long, b"x"));
        invalid(workspace::get(&long).map(drop));
        invalid(workspace::delete("").map(drop));
        invalid(workspace::set("big", vec![0; 512 * 1024 + 1]));
        invalid(workspace::put_blob(vec![0; 512 * 1024 + 1]).map(drop));
        invalid(workspace::get_blob("junk").map(drop));
        invalid(workspace::get_blob(&format!("sha256:{}", "g".repeat(64))).map(drop));
        // At the limits, accepted; a ref of another case is the same blob.
        workspace::set(&"k".repeat(512), vec![0; 512 * 1024]).unwrap();
        let reference = workspace::put_blob(b"data").unwrap();
        let upper = format!(
            "sha256:{}",
            reference["sha256:".len()..].to_ascii_uppercase()
        );
        assert_eq!(
            workspace::get_blob(&upper).unwrap().as_deref(),
            Some(&b"data"[..])
        );
        assert_eq!(
            workspace::get_blob(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            None
        );
    }

    #[test]
    fn logging_works_off_wasm() {
        log::trace("t");
        log::debug(String::from("d"));
        log::info("i");
        log::warn("w");
        log::error("e");
    }

    /// The crate's `wit/` is a copy of the repository's `wit/` (the ABI's
    /// source of truth), kept so the crate builds outside the repository.
    /// In the repository the two must be equal, file for file; a copy of
    /// the crate elsewhere has no repository `wit/` to compare with.
    #[test]
    fn wit_is_the_repository_wit() {
        let crate_wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wit");
        let repository_wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        if !repository_wit.join("plugin.wit").is_file() {
            return;
        }
        let files = |dir: &std::path::Path| -> std::collections::BTreeMap<String, String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| {
                    let path = entry.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&path).unwrap())
                })
                .collect()
        };
        assert!(
            files(&crate_wit) == files(&repository_wit),
            "sdk/wit/ differs from wit/: copy wit/ into sdk/wit/ (cp wit/* sdk/wit/)"
        );
    }
}
