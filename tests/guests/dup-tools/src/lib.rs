//! A raw `airlock:plugin` component (no SDK) whose tool list the host must
//! refuse at load: it exports the tool `twin` twice.

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

/// The same tool name twice.
fn tools() -> Vec<ToolDescriptor> {
    vec![
        tool("twin", r#"{"type":"object"}"#),
        tool("twin", r#"{"type":"object"}"#),
    ]
}
