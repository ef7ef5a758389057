//! `config::load_str` on arbitrary text, as the contents of a config
//! file at a fixed path in a temporary folder that holds one key file
//! (`key`), so that relative key paths resolve there.
//!
//! Nothing may panic; every error list must be non-empty; a config that
//! loads must be printable and name its path.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// A folder made once per process, with a key file in it.
static FOLDER: LazyLock<PathBuf> = LazyLock::new(|| {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir()
        .join(format!("spipes-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make the folder");
    let key = dir.join("key");
    std::fs::write(&key, [0x5a; 32]).expect("write the key file");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    dir
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = FOLDER.join("spipes.toml");
    match spipes::config::load_str(&path, text) {
        Ok((config, _warnings)) => {
            assert_eq!(config.path, path);
            let _ = format!("{config:?}");
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error with no message");
            let _ = e.to_string();
        }
    }
});
