//! A raw `airlock:plugin` component (no SDK) whose tool list the host must
//! refuse at load: `broken` declares an input schema that is not JSON, and
//! `not-object` one whose root is `{"type":"string"}`.

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
        tools()
    }

    fn call(_name: String, _arguments: String, _ctx: CallContext) -> Result<String, ToolError> {
        Ok("{}".to_owned())
    }
}

export!(Plugin);

/// `broken`'s schema is not JSON; `not-object`'s root is a string schema.
fn tools() -> Vec<ToolDescriptor> {
    vec![
        tool("broken", "{not json"),
        tool("not-object", r#"{"type":"string"}"#),
    ]
}
