//! `env`: environment variables by name. The manifest names them; the values
//! come from the operator's policy. The guest sees exactly the declared names
//! that have an operator value — never the host's own environment.

use wasmtime_wasi::WasiCtxBuilder;

use super::{EffectiveGrant, Policy};

/// Split declared names into (name, value) pairs the operator provides and
/// names it does not.
pub(super) fn resolve(
    declared: &[String],
    policy: &Policy,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut granted = Vec::new();
    let mut missing = Vec::new();
    for name in declared {
        match policy.env.get(name) {
            Some(value) => granted.push((name.clone(), value.clone())),
            None => missing.push(name.clone()),
        }
    }
    (granted, missing)
}

pub(super) fn configure(builder: &mut WasiCtxBuilder, grant: &EffectiveGrant) {
    builder.envs(&grant.env);
}
