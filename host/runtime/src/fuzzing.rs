//! Entry points for the fuzz targets in `fuzz/`, behind the `fuzzing`
//! feature. Not part of the API: they reach crate-private steps of the
//! pipeline without a compiled component.

use serde_json::Value;

use crate::error::CallError;
use crate::plugin::Tool;

/// Compile `input_schema` as the loader compiles a guest's declared input
/// schema, then validate `arguments` against it as a call's step 5 does.
///
/// # Errors
/// The outer error is the loader's refusal of the schema; the inner result
/// is the pipeline's answer to the arguments.
pub fn validate_arguments(
    input_schema: &str,
    arguments: &str,
    max_bytes: usize,
) -> Result<Result<Value, CallError>, String> {
    let tool = Tool::with_input_schema(input_schema)?;
    Ok(crate::pipeline::validate_arguments(
        &tool, arguments, max_bytes,
    ))
}
