//! The `{{name}}` Airlock plugin.
//!
//! `airlock plugin build` compiles it to a WebAssembly component and stamps
//! its digest into the built manifest; `airlock plugin check` loads it the
//! way a host does. `cargo test` runs the tools natively.

use airlock_sdk::{Context, JsonSchema, ToolError, plugin, schemars};
use serde::{Deserialize, Serialize};

/// Arguments of `greet`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GreetArgs {
    /// Who to greet.
    name: String,
}

/// What `greet` returns.
#[derive(Serialize, JsonSchema)]
struct Greeting {
    /// The greeting.
    greeting: String,
}

fn greet(args: GreetArgs, _ctx: &Context) -> Result<Greeting, ToolError> {
    let name = args.name.trim();
    if name.is_empty() {
        return Err(ToolError::invalid_input("`name` is empty"));
    }
    airlock_sdk::log::info("greeting");
    Ok(Greeting {
        greeting: format!("Hello, {name}!"),
    })
}

plugin! {
    "greet" => greet: "Greet someone by name.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name() {
        let args = GreetArgs {
            name: " Ada ".into(),
        };
        let out = greet(args, &Context::default()).unwrap();
        assert_eq!(out.greeting, "Hello, Ada!");
    }

    #[test]
    fn refuses_an_empty_name() {
        let args = GreetArgs { name: " ".into() };
        assert!(matches!(
            greet(args, &Context::default()),
            Err(ToolError::InvalidInput(_))
        ));
    }
}
