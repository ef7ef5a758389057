//! The shared secret: `K = SHA256(contents of the key file)`.

/// The 32-byte shared key of a pipe, derived from a key file.
///
/// Wiped when dropped; its `Debug` output never shows the bytes.
pub struct Key {
    k: zeroize::Zeroizing<[u8; 32]>,
}

impl Key {
    /// Derives the key from the whole contents of a key file.
    pub fn from_file_contents(contents: &[u8]) -> Key {
        let _ = contents;
        unimplemented!("protocol helper fills this in")
    }

    /// The 32 bytes of `K`, for the handshake's PBKDF2 calls.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.k
    }
}

impl PartialEq for Key {
    /// Compares in constant time (`subtle`), so that a reload's diff of
    /// old and new keys leaks nothing through timing.
    fn eq(&self, other: &Key) -> bool {
        use subtle::ConstantTimeEq;
        self.k.ct_eq(&*other.k).into()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}
