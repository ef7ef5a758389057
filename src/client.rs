//! `spipes connect`: the `spipe` equivalent, with standard input and
//! output as the plaintext end.

use std::path::Path;

use crate::protocol::ForwardSecrecy;

/// Dials `target`, runs the client handshake with the key in `key`, then
/// relays standard input to the target and the target to standard output
/// until both directions end.
///
/// Not cancel-safe: it owns the process's standard streams.
pub async fn connect(
    target: &str,
    key: &Path,
    fs: ForwardSecrecy,
    timeout: f64,
) -> anyhow::Result<()> {
    let _ = (target, key, fs, timeout);
    anyhow::bail!("spipes connect is not written yet")
}
