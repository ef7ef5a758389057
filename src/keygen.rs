//! `spipes keygen`: a fresh key file from the operating system's random
//! source.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::Zeroizing;

/// Bytes in a generated key: 256 bits, as spiped's documentation asks.
pub const KEY_BYTES: usize = 32;

/// Writes `KEY_BYTES` random bytes to `path` with mode 0600. Without
/// `force` an existing file is an error and is left as it was.
pub fn write_key(path: &Path, force: bool) -> io::Result<()> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    getrandom::fill(&mut key[..]).map_err(io::Error::other)?;

    // create_new refuses an existing file atomically; with force, the
    // file is truncated, and its mode is set again below since an existing
    // file keeps the mode it had.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    if force {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&key[..])?;
    file.sync_all()
}
