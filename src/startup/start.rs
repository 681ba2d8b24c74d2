//! Why herald could not start: the one error type of the start-up boundary
//! (configuration, files, listeners, database, broker).
//!
//! Each variant keeps its cause as the error's `source`, so `main` prints
//! the whole chain on one line and an embedder can match on the kind.

use std::{error::Error as StdError, net::SocketAddr, path::PathBuf};

type Cause = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting, or a combination of settings, that cannot work.
    #[error("{0}")]
    Config(String),
    /// A file a setting names cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but does not hold what its setting needs.
    #[error("{}: {expected}", path.display())]
    Unusable {
        path: PathBuf,
        expected: String,
        #[source]
        source: Option<Cause>,
    },
    /// A listen address that does not parse or resolve.
    #[error("{flag}: cannot parse or resolve address '{addr}'")]
    Address { flag: &'static str, addr: String },
    /// A resolved address that cannot be listened on.
    #[error("{flag}: cannot listen on {addr}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The certificate and key do not make a TLS configuration.
    #[error("unusable certificate or key")]
    Tls(#[source] tokio_rustls::rustls::Error),
    /// The database cannot be opened or migrated.
    #[error("cannot open the database")]
    Database(#[source] sqlx::Error),
    /// The cross-node broker cannot be reached.
    #[error("cannot connect to {what}")]
    Broker {
        what: &'static str,
        #[source]
        source: Cause,
    },
    /// A thread of herald's own could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// gRPC reflection could not read herald's own descriptors.
    #[error("cannot build gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl StartError {
    pub fn config(reason: impl Into<String>) -> Self {
        Self::Config(reason.into())
    }

    pub fn read(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            source,
        }
    }

    /// The whole chain of causes, for a one-line report.
    pub fn chain(&self) -> String {
        let mut line = self.to_string();
        let mut cause = self.source();
        while let Some(next) = cause {
            // Some errors (sqlx's among them) print their source too.
            let text = next.to_string();
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = next.source();
        }
        line
    }
}
