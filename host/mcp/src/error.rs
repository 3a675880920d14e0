//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong setting up or running the MCP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The serve configuration is invalid; the message names the key.
    #[error("invalid serve configuration: {message}")]
    Config {
        /// What is wrong, naming the key.
        message: String,
    },

    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Another `airlock serve` answers on the data directory's control
    /// socket: one server per data directory.
    #[error(
        "another airlock serve is running on this data directory (its control socket {} answers); stop it or use another data directory",
        socket.display()
    )]
    ServerRunning {
        /// The control socket.
        socket: PathBuf,
    },

    /// The control socket cannot be set up.
    #[error("control socket {}: {message}", path.display())]
    Control {
        /// The socket (or the directory it goes in).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The transport failed (stdio closed with an error, the HTTP server
    /// stopped).
    #[error("MCP transport failed: {message}")]
    Transport {
        /// What failed.
        message: String,
    },

    /// The host failed (for example the plugins directory is unreadable).
    #[error(transparent)]
    Host(#[from] airlock_host::Error),
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn config(message: impl Into<String>) -> Error {
    Error::Config {
        message: message.into(),
    }
}
