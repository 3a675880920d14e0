//! The peer's side of `scripts/bench-peer`: a hyper-mcp plugin with one
//! tool, `echo`, that returns its arguments — the same work as the
//! `misbehave` test guest's `echo` on the Airlock side.
//!
//! hyper-mcp (0.8) calls a plugin's exports with JSON and reads JSON back
//! (its "v2" plugin interface):
//! - `list_tools`: input `{"context": …}`, output an MCP `ListToolsResult`;
//! - `call_tool`: input `{"request": <MCP CallToolRequestParams, the name
//!   without the plugin's prefix>, "context": …}`, output an MCP
//!   `CallToolResult`.
//!
//! The result has the shape Airlock gives an echo: the arguments as JSON
//! text in one text block, and the same object as `structuredContent`.

use extism_pdk::{FnResult, Json, plugin_fn};
use serde_json::{Value, json};

/// The one tool, as MCP lists it.
#[plugin_fn]
pub fn list_tools(Json(_input): Json<Value>) -> FnResult<Json<Value>> {
    Ok(Json(json!({
        "tools": [{
            "name": "echo",
            "description": "Return the arguments.",
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object"},
        }]
    })))
}

/// Run the tool the request names: `echo` returns its arguments; any other
/// name is a tool error.
#[plugin_fn]
pub fn call_tool(Json(input): Json<Value>) -> FnResult<Json<Value>> {
    let request = &input["request"];
    let result = match request["name"].as_str() {
        Some("echo") => {
            let arguments = match request.get("arguments") {
                Some(Value::Object(arguments)) => Value::Object(arguments.clone()),
                _ => json!({}),
            };
            json!({
                "content": [{"type": "text", "text": arguments.to_string()}],
                "structuredContent": arguments,
            })
        }
        other => json!({
            "content": [{"type": "text", "text": format!("unknown tool {other:?}")}],
            "isError": true,
        }),
    };
    Ok(Json(result))
}
