//! `call-stream DATA_DIR PLUGIN_DIR`: a host making an endless stream of
//! calls, for the crash test (`kill -9` mid-stream). Prints `done N` after
//! each completed call and `spinning` before each long one.

use std::io::Write as _;

use airlock_host::{CallRequest, Host, HostConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(data_dir), Some(plugin_dir)) = (args.next(), args.next()) else {
        return Err("usage: call-stream DATA_DIR PLUGIN_DIR".into());
    };
    let host = Host::new(HostConfig::default().data_dir(data_dir))?;
    host.load_plugin(&plugin_dir).await?;
    let mut stdout = std::io::stdout();
    for n in 1u64.. {
        if n % 5 == 0 {
            writeln!(stdout, "spinning")?;
            stdout.flush()?;
            let _ = host.call(CallRequest::new("misbehave/spin", "{}")).await;
        } else {
            host.call(CallRequest::new("misbehave/echo", format!("{{\"n\":{n}}}")))
                .await?;
            writeln!(stdout, "done {n}")?;
            stdout.flush()?;
        }
    }
    Ok(())
}
