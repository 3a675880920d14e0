//! The manifest parser and validator: whatever the text, `Manifest::parse`
//! (TOML syntax, the manifest schema, origins, consistency checks) answers
//! with a manifest or an error, never a panic. A manifest it accepts goes
//! on to what the loader parses next: each tool's rate limit.

#![no_main]

use std::path::Path;

use airlock_host::Manifest;
use airlock_host::store::Rate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text, Path::new("plugin.toml")) else {
        return;
    };
    for tool in &manifest.tools {
        if let Some(rate) = &tool.rate_limit {
            let _ = Rate::parse(rate);
        }
    }
    let _ = manifest.component_path(Path::new("plugins/fuzz"));
});
