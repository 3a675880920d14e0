//! A raw airlock:plugin component (no SDK) with a broken tool list.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "airlock:plugin/plugin",
});

use exports::airlock::plugin::tools::{CallContext, Guest, ToolDescriptor, ToolError};

struct Plugin;

fn tool(name: &str, input_schema: &str) -> ToolDescriptor {
    ToolDescriptor {
        name: name.to_owned(),
        description: "fixture".to_owned(),
        input_schema: input_schema.to_owned(),
        output_schema: None,
    }
}

impl Guest for Plugin {
    fn list() -> Vec<ToolDescriptor> {
        TOOLS()
    }

    fn call(_name: String, _arguments: String, _ctx: CallContext) -> Result<String, ToolError> {
        Ok("{}".to_owned())
    }
}

export!(Plugin);

/// `broken`'s schema is not JSON; `not-object`'s root is a string schema.
#[allow(non_snake_case)]
fn TOOLS() -> Vec<ToolDescriptor> {
    vec![
        tool("broken", "{not json"),
        tool("not-object", r#"{"type":"string"}"#),
    ]
}
