//! Per-call limits and where each value came from.

use std::time::Duration;

use serde::Serialize;

use crate::manifest::DeclaredLimits;

/// Default fuel per call: enough for real text and JSON work, small enough
/// that a runaway loop stops within a second or two.
pub const DEFAULT_FUEL: u64 = 1_000_000_000;
/// Default wall-clock deadline per call.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default maximum linear memory per instance.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Default maximum size of a call's result.
pub const DEFAULT_MAX_OUTPUT_KB: u64 = 1024;
/// Log bytes kept per call; lines past it are dropped and counted.
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 * 1024;
/// Bytes kept per log line.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;
/// Bytes of guest stderr kept per call (panic messages land here).
pub const MAX_STDERR_BYTES: usize = 16 * 1024;
/// Largest payload one guest-to-host call may transfer
/// (`Store::set_hostcall_fuel`).
pub const HOSTCALL_FUEL: usize = 1024 * 1024;
/// Table elements per instance.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Where a limit's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// Declared in the plugin's manifest.
    Manifest,
    /// The host's default, because the manifest is silent.
    Default,
}

/// One resolved limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// Value in the limit's unit.
    pub value: u64,
    /// Where it came from.
    pub source: LimitSource,
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
}

impl Limits {
    /// Resolve declared limits against the host defaults.
    pub fn resolve(declared: &DeclaredLimits) -> Limits {
        let pick = |value: Option<u64>, default: u64| match value {
            Some(value) => Limit {
                value,
                source: LimitSource::Manifest,
            },
            None => Limit {
                value: default,
                source: LimitSource::Default,
            },
        };
        Limits {
            fuel: pick(declared.fuel, DEFAULT_FUEL),
            timeout_ms: pick(declared.timeout_ms, DEFAULT_TIMEOUT_MS),
            memory_mb: pick(declared.memory_mb, DEFAULT_MEMORY_MB),
            max_output_kb: pick(declared.max_output_kb, DEFAULT_MAX_OUTPUT_KB),
        }
    }

    /// The deadline as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.value)
    }

    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.value.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// Output limit in bytes.
    pub fn output_bytes(&self) -> usize {
        usize::try_from(self.max_output_kb.value.saturating_mul(1024)).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_manifest_gets_defaults_and_says_so() {
        let l = Limits::resolve(&DeclaredLimits {
            fuel: Some(5),
            ..Default::default()
        });
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
}
