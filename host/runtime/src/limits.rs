//! Per-call limits and where each value came from.

use std::time::Duration;

use serde::Serialize;

use crate::grants::LimitCeilings;
use crate::manifest::DeclaredLimits;

/// Largest result the host parses, checks and records in place on the
/// call's async worker; a larger one is handled with the worker's other
/// tasks handed over first (see `off_the_worker`).
pub(crate) const IN_PLACE_RESULT_BYTES: usize = 256 * 1024;

/// Default fuel per call: enough for real text and JSON work, small enough
/// that a runaway loop stops within a second or two.
pub(crate) const DEFAULT_FUEL: u64 = 1_000_000_000;
/// Default wall-clock deadline per call.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default maximum linear memory per instance.
pub(crate) const DEFAULT_MEMORY_MB: u64 = 64;
/// Default maximum size of a call's result.
pub(crate) const DEFAULT_MAX_OUTPUT_KB: u64 = 1024;
/// Built-in ceiling on a manifest's `timeout_ms` when the operator sets
/// none (`[policy.limits] timeout_ms` raises or lowers it).
pub(crate) const CEILING_TIMEOUT_MS: u64 = 60_000;
/// Built-in ceiling on `memory_mb`; also the instance pool's slot size
/// unless the operator sets a ceiling.
pub(crate) const CEILING_MEMORY_MB: u64 = 1024;
/// Built-in ceiling on `max_output_kb`.
pub(crate) const CEILING_MAX_OUTPUT_KB: u64 = 16 * 1024;
/// Built-in ceiling on `max_concurrency`.
pub(crate) const CEILING_MAX_CONCURRENCY: u64 = 256;
/// Built-in ceiling on `workspace_keys`.
pub(crate) const CEILING_WORKSPACE_KEYS: u64 = 1_000_000;
/// Built-in ceiling on `workspace_mb`.
pub(crate) const CEILING_WORKSPACE_MB: u64 = 1024;
/// Built-in ceiling on `workspace_blobs` where `[policy.limits]` sets none.
pub(crate) const CEILING_WORKSPACE_BLOBS: u64 = 1_000_000;
/// Log bytes kept per call; lines past it are dropped and counted.
pub(crate) const DEFAULT_MAX_LOG_BYTES: usize = 64 * 1024;
/// Log lines kept per call (policy `log_max_lines`), whatever their size:
/// lines past it, empty ones included, are dropped and counted. Guest
/// stdout/stderr lines count too (the host's notes are apart).
pub(crate) const DEFAULT_MAX_LOG_LINES: u64 = 1_000;
/// Levels of arrays and objects a call's arguments or a tool's result may
/// nest (JSON is parsed to 127 at most; an idempotency entry stores a
/// result a few levels below its top, and must read back).
pub(crate) const MAX_JSON_DEPTH: usize = 64;
/// Default KiB one call may write through its read-write `files` grants
/// (policy `files_max_write_kb`).
pub(crate) const DEFAULT_FILES_MAX_WRITE_KB: u64 = 64 * 1024;
/// Default files, directories and links one call may create through its
/// read-write `files` grants (policy `files_max_created`).
pub(crate) const DEFAULT_FILES_MAX_CREATED: u64 = 1_000;
/// Bytes kept per log line.
pub(crate) const MAX_LOG_LINE_BYTES: usize = 4 * 1024;
/// Bytes of guest stderr kept per call (panic messages land here).
pub(crate) const MAX_STDERR_BYTES: usize = 16 * 1024;
/// Minimum payload one guest-to-host transfer may carry
/// (`Store::set_hostcall_fuel`); raised to twice the output limit so that
/// results just over the limit are reported as too large rather than trapping.
pub(crate) const HOSTCALL_FUEL: usize = 1024 * 1024;
/// Default cap on concurrent instances of one plugin.
pub(crate) const DEFAULT_MAX_CONCURRENCY: u64 = 16;
/// Workspace keys per plugin when the manifest is silent.
pub(crate) const DEFAULT_WORKSPACE_KEYS: u64 = 10_000;
/// Workspace space per plugin, in MiB, when the manifest is silent.
pub(crate) const DEFAULT_WORKSPACE_MB: u64 = 64;
/// Workspace blobs per plugin when the manifest is silent (bytes alone would
/// let a plugin store millions of tiny blobs).
pub(crate) const DEFAULT_WORKSPACE_BLOBS: u64 = 1_000;
/// Host-side resources (open files, streams, ...) one call may hold at once,
/// and component-model handles per store. Each open file is a host file
/// descriptor, so this also bounds what one call can take from the
/// process's descriptor limit.
pub(crate) const MAX_RESOURCES: usize = 256;
/// Table elements per instance.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Default cap on outgoing HTTP requests one call may make (`http`
/// capability); further requests get `connection-limit-reached`.
pub(crate) const DEFAULT_HTTP_MAX_REQUESTS: u64 = 16;
/// Default cap on one HTTP response body, in KiB; reading past it gets
/// `HTTP-response-body-size`. Bodies are streamed to the guest, never
/// buffered whole by the host.
pub(crate) const DEFAULT_HTTP_MAX_RESPONSE_KB: u64 = 1024;
/// Default cap on one HTTP request body, in KiB: a declared
/// `content-length` over it is refused before anything is sent, and a
/// body streamed without one is cut off past it
/// (`HTTP-request-body-size`). What a plugin can send its granted origins
/// in one request is bounded, not only by the call's deadline.
pub(crate) const DEFAULT_HTTP_MAX_REQUEST_KB: u64 = 1024;
/// Default time allowed to resolve, connect and finish the TLS handshake for
/// one request. Always cut short by the call's deadline.
pub(crate) const DEFAULT_HTTP_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default wait for a response to start, and between two chunks of its
/// body. Always cut short by the call's deadline.
pub(crate) const DEFAULT_HTTP_FIRST_BYTE_TIMEOUT_MS: u64 = 10_000;
/// Default cap on blocking DNS lookups in flight at once, over every
/// plugin (policy `http_max_dns_lookups`); requests past it wait within
/// their connect timeout, then get `DNS-timeout`.
pub(crate) const DEFAULT_HTTP_MAX_DNS_LOOKUPS: u64 = 8;
/// Most resolved addresses one request tries to connect to.
pub(crate) const HTTP_MAX_ADDRESSES: usize = 8;
/// Read buffer per HTTP connection; also the largest response head accepted.
pub(crate) const HTTP_MAX_BUFFER_BYTES: usize = 64 * 1024;

/// Where a limit's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// Declared in the plugin's manifest.
    Manifest,
    /// The host's default, because the manifest is silent.
    Default,
    /// The operator's policy: a ceiling lower than the host default, or an
    /// operator-set HTTP limit.
    Policy,
}

/// One resolved limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// Value in the limit's unit.
    pub value: u64,
    /// Where it came from.
    pub source: LimitSource,
}

impl Limit {
    /// The operator's `value` where set, else `default`.
    fn policy_or_default(value: Option<u64>, default: u64) -> Limit {
        match value {
            Some(value) => Limit {
                value,
                source: LimitSource::Policy,
            },
            None => Limit {
                value: default,
                source: LimitSource::Default,
            },
        }
    }
}

/// The limits a plugin's calls run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Fuel per call.
    pub fuel: Limit,
    /// Deadline per call, in milliseconds.
    pub timeout_ms: Limit,
    /// Linear memory per instance, in MiB.
    pub memory_mb: Limit,
    /// Result size, in KiB.
    pub max_output_kb: Limit,
    /// Concurrent instances of the plugin.
    pub max_concurrency: Limit,
    /// Workspace keys.
    pub workspace_keys: Limit,
    /// Workspace space, in MiB.
    pub workspace_mb: Limit,
    /// Workspace blobs.
    pub workspace_blobs: Limit,
}

impl Limits {
    /// Resolve declared limits against the host defaults and the ceilings:
    /// the operator's, or the built-in `CEILING_*` where the operator sets
    /// none (`fuel` has no built-in ceiling: the deadline bounds it).
    /// Returns the first limit that asks for more than its ceiling as
    /// `Err((manifest key, asked, ceiling))`.
    ///
    /// # Security
    /// Without built-in ceilings a manifest could ask for any timeout,
    /// memory, output or concurrency when the operator had set no ceiling.
    pub fn resolve(
        declared: &DeclaredLimits,
        ceilings: &LimitCeilings,
    ) -> Result<Limits, (&'static str, u64, u64)> {
        let pick =
            |key: &'static str, value: Option<u64>, default: u64, ceiling: Option<u64>| match (
                value, ceiling,
            ) {
                (Some(asked), Some(ceiling)) if asked > ceiling => Err((key, asked, ceiling)),
                (Some(value), _) => Ok(Limit {
                    value,
                    source: LimitSource::Manifest,
                }),
                (None, Some(ceiling)) if ceiling < default => Ok(Limit {
                    value: ceiling,
                    source: LimitSource::Policy,
                }),
                (None, _) => Ok(Limit {
                    value: default,
                    source: LimitSource::Default,
                }),
            };
        let d = declared;
        let c = &LimitCeilings {
            fuel: ceilings.fuel,
            timeout_ms: ceilings.timeout_ms.or(Some(CEILING_TIMEOUT_MS)),
            memory_mb: ceilings.memory_mb.or(Some(CEILING_MEMORY_MB)),
            max_output_kb: ceilings.max_output_kb.or(Some(CEILING_MAX_OUTPUT_KB)),
            max_concurrency: ceilings.max_concurrency.or(Some(CEILING_MAX_CONCURRENCY)),
            workspace_keys: ceilings.workspace_keys.or(Some(CEILING_WORKSPACE_KEYS)),
            workspace_mb: ceilings.workspace_mb.or(Some(CEILING_WORKSPACE_MB)),
            workspace_blobs: ceilings.workspace_blobs.or(Some(CEILING_WORKSPACE_BLOBS)),
        };
        Ok(Limits {
            fuel: pick("limits.fuel", d.fuel, DEFAULT_FUEL, c.fuel)?,
            timeout_ms: pick(
                "limits.timeout_ms",
                d.timeout_ms,
                DEFAULT_TIMEOUT_MS,
                c.timeout_ms,
            )?,
            memory_mb: pick(
                "limits.memory_mb",
                d.memory_mb,
                DEFAULT_MEMORY_MB,
                c.memory_mb,
            )?,
            max_output_kb: pick(
                "limits.max_output_kb",
                d.max_output_kb,
                DEFAULT_MAX_OUTPUT_KB,
                c.max_output_kb,
            )?,
            max_concurrency: pick(
                "limits.max_concurrency",
                d.max_concurrency,
                DEFAULT_MAX_CONCURRENCY,
                c.max_concurrency,
            )?,
            workspace_keys: pick(
                "limits.workspace_keys",
                d.workspace_keys,
                DEFAULT_WORKSPACE_KEYS,
                c.workspace_keys,
            )?,
            workspace_mb: pick(
                "limits.workspace_mb",
                d.workspace_mb,
                DEFAULT_WORKSPACE_MB,
                c.workspace_mb,
            )?,
            workspace_blobs: pick(
                "limits.workspace_blobs",
                d.workspace_blobs,
                DEFAULT_WORKSPACE_BLOBS,
                c.workspace_blobs,
            )?,
        })
    }

    /// The deadline as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.value)
    }

    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.value.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// The workspace quota.
    pub fn workspace_quota(&self) -> crate::workspace::Quota {
        crate::workspace::Quota {
            max_keys: self.workspace_keys.value,
            max_bytes: self.workspace_mb.value.saturating_mul(1024 * 1024),
            max_blobs: self.workspace_blobs.value,
        }
    }

    /// Output limit in bytes.
    pub fn output_bytes(&self) -> usize {
        usize::try_from(self.max_output_kb.value.saturating_mul(1024)).unwrap_or(usize::MAX)
    }
}

/// The limits on a plugin's outgoing HTTP requests (`http` capability). The
/// manifest cannot set them; the operator's policy can (`http_max_requests`,
/// `http_max_response_kb`, `http_max_request_kb`, `http_connect_timeout_ms`,
/// `http_first_byte_timeout_ms`), otherwise the defaults above apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HttpLimits {
    /// Requests per call.
    pub max_requests: Limit,
    /// Response body size, in KiB.
    pub max_response_kb: Limit,
    /// Request body size, in KiB.
    pub max_request_kb: Limit,
    /// Resolve + connect + TLS handshake, in milliseconds.
    pub connect_timeout_ms: Limit,
    /// Wait for the response head and between body chunks, in milliseconds.
    pub first_byte_timeout_ms: Limit,
}

impl HttpLimits {
    /// The operator's values where set, else the defaults.
    pub fn resolve(
        max_requests: Option<u64>,
        max_response_kb: Option<u64>,
        max_request_kb: Option<u64>,
        connect_timeout_ms: Option<u64>,
        first_byte_timeout_ms: Option<u64>,
    ) -> HttpLimits {
        let pick = Limit::policy_or_default;
        HttpLimits {
            max_requests: pick(max_requests, DEFAULT_HTTP_MAX_REQUESTS),
            max_response_kb: pick(max_response_kb, DEFAULT_HTTP_MAX_RESPONSE_KB),
            max_request_kb: pick(max_request_kb, DEFAULT_HTTP_MAX_REQUEST_KB),
            connect_timeout_ms: pick(connect_timeout_ms, DEFAULT_HTTP_CONNECT_TIMEOUT_MS),
            first_byte_timeout_ms: pick(first_byte_timeout_ms, DEFAULT_HTTP_FIRST_BYTE_TIMEOUT_MS),
        }
    }

    /// Response body cap in bytes.
    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_kb.value.saturating_mul(1024)
    }

    /// Request body cap in bytes.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_kb.value.saturating_mul(1024)
    }

    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.value)
    }

    /// First-byte (and between-chunks) timeout.
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_manifest_gets_defaults_and_says_so() {
        let l = Limits::resolve(
            &DeclaredLimits {
                fuel: Some(5),
                ..Default::default()
            },
            &LimitCeilings::default(),
        )
        .unwrap();
        assert_eq!(
            l.fuel,
            Limit {
                value: 5,
                source: LimitSource::Manifest
            }
        );
        assert_eq!(
            l.timeout_ms,
            Limit {
                value: DEFAULT_TIMEOUT_MS,
                source: LimitSource::Default
            }
        );
        assert_eq!(l.memory_bytes(), 64 << 20);
    }

    #[test]
    fn ceilings_lower_defaults_and_refuse_bigger_asks() {
        let ceilings = LimitCeilings {
            timeout_ms: Some(100),
            fuel: Some(10),
            ..Default::default()
        };
        let l = Limits::resolve(
            &DeclaredLimits {
                fuel: Some(5),
                ..Default::default()
            },
            &ceilings,
        )
        .unwrap();
        assert_eq!(
            l.timeout_ms,
            Limit {
                value: 100,
                source: LimitSource::Policy
            }
        );
        assert_eq!(l.fuel.source, LimitSource::Manifest);
        let err = Limits::resolve(
            &DeclaredLimits {
                fuel: Some(11),
                ..Default::default()
            },
            &ceilings,
        )
        .unwrap_err();
        assert_eq!(err, ("limits.fuel", 11, 10));
    }

    #[test]
    fn silent_operators_still_get_ceilings_they_can_raise() {
        let asks = |declared: DeclaredLimits, ceilings: &LimitCeilings| {
            Limits::resolve(&declared, ceilings)
        };
        let none = LimitCeilings::default();
        for (declared, key, ceiling) in [
            (
                DeclaredLimits {
                    timeout_ms: Some(CEILING_TIMEOUT_MS + 1),
                    ..Default::default()
                },
                "limits.timeout_ms",
                CEILING_TIMEOUT_MS,
            ),
            (
                DeclaredLimits {
                    max_concurrency: Some(u64::MAX),
                    ..Default::default()
                },
                "limits.max_concurrency",
                CEILING_MAX_CONCURRENCY,
            ),
            (
                DeclaredLimits {
                    memory_mb: Some(CEILING_MEMORY_MB + 1),
                    ..Default::default()
                },
                "limits.memory_mb",
                CEILING_MEMORY_MB,
            ),
            (
                DeclaredLimits {
                    max_output_kb: Some(CEILING_MAX_OUTPUT_KB + 1),
                    ..Default::default()
                },
                "limits.max_output_kb",
                CEILING_MAX_OUTPUT_KB,
            ),
            (
                DeclaredLimits {
                    workspace_keys: Some(CEILING_WORKSPACE_KEYS + 1),
                    ..Default::default()
                },
                "limits.workspace_keys",
                CEILING_WORKSPACE_KEYS,
            ),
            (
                DeclaredLimits {
                    workspace_mb: Some(CEILING_WORKSPACE_MB + 1),
                    ..Default::default()
                },
                "limits.workspace_mb",
                CEILING_WORKSPACE_MB,
            ),
        ] {
            let (k, asked, c) = asks(declared, &none).unwrap_err();
            assert_eq!((k, c), (key, ceiling));
            assert!(asked > ceiling);
        }
        // At the ceiling is fine, and the operator can raise it.
        let at = DeclaredLimits {
            timeout_ms: Some(CEILING_TIMEOUT_MS),
            ..Default::default()
        };
        assert_eq!(
            asks(at, &none).unwrap().timeout_ms.value,
            CEILING_TIMEOUT_MS
        );
        let raised = LimitCeilings {
            max_concurrency: Some(10_000),
            ..Default::default()
        };
        let many = DeclaredLimits {
            max_concurrency: Some(10_000),
            ..Default::default()
        };
        assert_eq!(asks(many, &raised).unwrap().max_concurrency.value, 10_000);
        // Defaults stay defaults.
        let silent = asks(DeclaredLimits::default(), &none).unwrap();
        assert_eq!(silent.timeout_ms.source, LimitSource::Default);
        assert_eq!(silent.memory_mb.value, DEFAULT_MEMORY_MB);
    }
}

/// What one call may write through a plugin's read-write `files` grants.
/// The manifest cannot set them; the operator's policy can
/// (`files_max_write_kb`, `files_max_created`), otherwise the defaults
/// above apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FilesLimits {
    /// Bytes written per call (`set-size` growth included), in KiB.
    pub max_write_kb: Limit,
    /// Files, directories and links created per call.
    pub max_created: Limit,
}

impl FilesLimits {
    /// The operator's values where set, else the defaults.
    pub fn resolve(max_write_kb: Option<u64>, max_created: Option<u64>) -> FilesLimits {
        let pick = Limit::policy_or_default;
        FilesLimits {
            max_write_kb: pick(max_write_kb, DEFAULT_FILES_MAX_WRITE_KB),
            max_created: pick(max_created, DEFAULT_FILES_MAX_CREATED),
        }
    }

    /// Bytes one call may write.
    pub fn max_write_bytes(&self) -> u64 {
        self.max_write_kb.value.saturating_mul(1024)
    }
}
