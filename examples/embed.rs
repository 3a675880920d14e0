//! Embed Airlock: load a plugin and call one of its tools.
//!
//! ```sh
//! scripts/build-guests
//! cargo run -p airlock-examples --example embed -- target/airlock/plugins/text
//! ```

use airlock_host::{CallRequest, Host, HostConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plugin_dir = std::env::args()
        .nth(1)
        .unwrap_or("target/airlock/plugins/text".into());
    let cache = std::env::temp_dir().join("airlock-embed-cache");

    let mut host = Host::new(HostConfig::default().cache_dir(cache))?;
    let plugin = host.load_plugin(&plugin_dir).await?;
    println!(
        "loaded {} {} ({:?})",
        plugin.name(),
        plugin.version(),
        plugin.cache_status()
    );

    let request = CallRequest::new(
        "text/slugify",
        r#"{"text": "Hello from an embedded host!"}"#,
    );
    match host.call(request).await {
        Ok(response) => println!("{} -> {}", response.tool, response.output),
        Err(error) => eprintln!("{} ({})", error, error.kind()),
    }
    Ok(())
}
