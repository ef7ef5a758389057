//! Log output: `tracing` to stderr, filtered by `--log-level` or
//! `RUST_LOG`, `info` by default.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `filter` (from `--log-level`) wins over
/// `RUST_LOG`.
pub fn init(filter: Option<&str>) -> Result<(), String> {
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f),
        None => EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new("info")),
    }
    .map_err(|e| format!("bad log filter: {e}"))?;

    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}
