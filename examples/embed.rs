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
    // The audit log and workspace store; a real host keeps them somewhere
    // durable such as /var/lib/airlock.
    let data = tempfile_dir("airlock-embed-data")?;

    let mut config = HostConfig::default().cache_dir(cache).data_dir(&data);
    // Where plugins are loaded from: no plugin's `files` grant may reach it.
    if let Some(plugins) = std::path::Path::new(&plugin_dir).parent() {
        config = config.plugins_dir(plugins);
    }
    let host = Host::new(config)?;
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
    let (records, head) = host.audit().head()?;
    println!(
        "audit log: {records} records, head {}",
        head.unwrap_or_default()
    );
    Ok(())
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir(name: &str) -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
