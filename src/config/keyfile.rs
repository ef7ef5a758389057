//! Reading one key file and deriving its key.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Key, KeyFile};

/// Key files shorter than this draw a warning: `SHA256` of fewer
/// random bytes holds less than 256 bits of secret.
const MIN_LEN: usize = 32;

/// Most bytes reserved before reading a key file.
const PREALLOCATE_MAX: usize = 1 << 20;

/// Reads the key file at `path` (already resolved) and derives its
/// key; returns the key with warning texts, or an error text. No
/// message ever holds the file's bytes.
pub fn read(path: &Path) -> Result<(KeyFile, Vec<String>), String> {
    let shown = path.display();
    let cannot = |e: &dyn std::fmt::Display| {
        format!("cannot read key file {shown}: {e}")
    };
    // stat before open: opening a FIFO would block.
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    if meta.is_dir() {
        return Err(cannot(&"it is a folder"));
    }
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    let mut file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let meta = file.metadata().map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }

    // Room for the whole file up front, so that growing the buffer
    // leaves no copies of key bytes behind in freed memory (up to a
    // size no real key file reaches, so a wrong path cannot make
    // this allocate gigabytes).
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    let capacity = len.min(PREALLOCATE_MAX) + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.read_to_end(&mut bytes).map_err(|e| cannot(&e))?;
    if bytes.is_empty() {
        return Err(format!("key file {shown} is empty"));
    }

    let mut warnings = Vec::new();
    if bytes.len() < MIN_LEN {
        warnings.push(format!(
            "key file {shown} is only {} bytes; use at least {MIN_LEN} \
             random bytes (spipes keygen)",
            bytes.len()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        warnings.push(format!(
            "key file {shown} is readable by group or others (mode \
             {mode:04o}); chmod 600 it"
        ));
    }

    let key = Arc::new(Key::from_file_contents(&bytes));
    let key_file = KeyFile {
        path: path.to_path_buf(),
        key,
    };
    Ok((key_file, warnings))
}
