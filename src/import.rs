//! `spipes import`: turns spiped command lines into TOML pipes.

use std::path::PathBuf;

/// Reads spiped command lines from `files` (standard input when empty)
/// and returns the equivalent `[pipes.NAME]` tables.
pub fn from_files(files: &[PathBuf]) -> anyhow::Result<String> {
    let _ = files;
    anyhow::bail!("spipes import is not written yet")
}
