//! Logs: to stderr through `tracing`, levels from `RUST_LOG`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber; `info` for herald and its request log,
/// `warn` elsewhere,
/// unless `RUST_LOG` says otherwise.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("herald=info,tower_http=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
