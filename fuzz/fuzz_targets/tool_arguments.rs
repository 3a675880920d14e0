//! Argument validation (a call's step 5), with the guest's declared input
//! schema compiled as the loader compiles it: both come from untrusted
//! parties (the schema from plugin code, the arguments from a caller).
//!
//! Input: `schema NUL arguments`. Without a NUL byte the whole input is the
//! arguments, checked against the `billing/refund` schema.

#![no_main]

use airlock_host::fuzzing::validate_arguments;
use libfuzzer_sys::fuzz_target;

const REFUND_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","additionalProperties":false,"description":"Arguments of `refund`.","properties":{"account":{"description":"Account id.","maxLength":64,"minLength":1,"type":"string"},"amount_cents":{"description":"Amount in cents (1 to 100,000,000).","format":"uint64","maximum":100000000,"minimum":1,"type":"integer"},"card_last4":{"default":null,"description":"Last four digits of the card, for the customer's statement.","type":["string","null"]},"reason":{"description":"Why the refund is paid.","maxLength":500,"minLength":1,"type":"string"}},"required":["account","amount_cents","reason"],"title":"RefundArgs","type":"object"}"#;

/// The host's default argument cap is larger; a smaller one keeps inputs
/// on both sides of it reachable.
const MAX_ARGUMENT_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let (schema, arguments) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (REFUND_SCHEMA.as_bytes(), data),
    };
    let (Ok(schema), Ok(arguments)) = (std::str::from_utf8(schema), std::str::from_utf8(arguments))
    else {
        return;
    };
    let _ = validate_arguments(schema, arguments, MAX_ARGUMENT_BYTES);
});
