//! W3C Trace Context: the `traceparent` header a caller hands a call
//! (`CallRequest::traceparent`, MCP `_meta["traceparent"]`).
//!
//! `version "-" trace-id "-" parent-id "-" trace-flags`, each lowercase
//! hex: `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. A trace
//! or parent id of all zeros is invalid; version `ff` is invalid; a later
//! version than `00` may carry more fields after the flags (kept compatible
//! as the spec asks: the first four are read, the rest ignored).

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) parent_id: [u8; 8],
    /// The caller's sampling decision (flag bit 0).
    pub(crate) sampled: bool,
}

/// Longest `traceparent` accepted, in bytes (version 00 is 55; later
/// versions may append fields).
pub(crate) const MAX_TRACEPARENT_BYTES: usize = 256;

impl TraceParent {
    /// Parse `text`.
    ///
    /// # Errors
    /// A message saying what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<TraceParent, String> {
        if text.len() > MAX_TRACEPARENT_BYTES {
            return Err(format!(
                "it is {} bytes; at most {MAX_TRACEPARENT_BYTES} are allowed",
                text.len()
            ));
        }
        let mut fields = text.split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(
                "expected version-traceid-parentid-flags (e.g. 00-<32 hex>-<16 hex>-01)".into(),
            );
        };
        let version: [u8; 1] = lower_hex(version, "version")?;
        if version[0] == 0xff {
            return Err("version ff is invalid".into());
        }
        if version[0] == 0 && fields.next().is_some() {
            return Err("version 00 has exactly four fields".into());
        }
        let trace_id: [u8; 16] = lower_hex(trace, "trace id")?;
        let parent_id: [u8; 8] = lower_hex(parent, "parent id")?;
        let flags: [u8; 1] = lower_hex(flags, "flags")?;
        if trace_id == [0; 16] {
            return Err("the trace id is all zeros".into());
        }
        if parent_id == [0; 8] {
            return Err("the parent id is all zeros".into());
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The trace id as 32 lowercase hex digits (what audit records hold).
    pub(crate) fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// `text` as exactly `N` bytes of lowercase hex.
fn lower_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("the {what} must be {} lowercase hex digits", 2 * N));
    }
    let mut out = [0; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| format!("the {what} is not hex"))?;
    Ok(out)
}

/// A W3C trace id for a call that came without one: `trace_id` when the
/// caller's correlation id already is one (32 lowercase hex digits, not
/// all zeros), otherwise the call id's 16 bytes (a UUID: its hex digits
/// without the hyphens), so a record's `trace_id` always leads to the
/// call's spans.
pub(crate) fn trace_id_for(trace_id: Option<&str>, call_id: &str) -> Option<[u8; 16]> {
    if let Some(given) = trace_id
        && let Ok(bytes) = lower_hex::<16>(given, "trace id")
        && bytes != [0; 16]
    {
        return Some(bytes);
    }
    uuid::Uuid::parse_str(call_id)
        .ok()
        .map(|u| *u.as_bytes())
        .filter(|b| *b != [0; 16])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_parses() {
        let parsed = TraceParent::parse(GOOD).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(parsed.parent_id), "00f067aa0ba902b7");
        assert!(parsed.sampled);
        let unsampled = TraceParent::parse(&GOOD.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = GOOD.replacen("00-", "01-", 1) + "-what-comes-next";
        assert!(TraceParent::parse(&later).is_ok());
        assert!(TraceParent::parse(&format!("{GOOD}-extra")).is_err());
    }

    #[test]
    fn every_malformed_traceparent_says_what_is_wrong() {
        let cases = [
            ("", "expected version-traceid-parentid-flags"),
            ("00-abc", "expected version-traceid-parentid-flags"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id must be 32 lowercase hex",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "trace id is all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "parent id is all zeros",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                "flags must be 2",
            ),
            (
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version must be 2",
            ),
        ];
        for (text, expected) in cases {
            let error = TraceParent::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let long = format!("01-{}", "a".repeat(300));
        assert!(TraceParent::parse(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_call_without_a_trace_gets_its_call_ids_bytes() {
        let call = "019a0000-0000-7000-8000-000000000001";
        assert_eq!(
            hex::encode(trace_id_for(None, call).unwrap()),
            "019a0000000070008000000000000001"
        );
        let given = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(hex::encode(trace_id_for(Some(given), call).unwrap()), given);
        // A correlation id that is not a W3C trace id does not become one.
        assert_eq!(
            hex::encode(trace_id_for(Some("order-17"), call).unwrap()),
            "019a0000000070008000000000000001"
        );
    }
}
