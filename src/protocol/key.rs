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
        use sha2::Digest;

        // Hash straight into the wiped buffer, so no copy of K is left.
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        let mut hasher = sha2::Sha256::new();
        hasher.update(contents);
        hasher.finalize_into((&mut *k).into());
        Key { k }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_sha256_of_the_whole_file() {
        // SHA256("") and SHA256("abc"), from FIPS 180-2.
        let empty = Key::from_file_contents(b"");
        assert_eq!(
            empty.as_bytes()[..8],
            [0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14]
        );
        let abc = Key::from_file_contents(b"abc");
        assert_eq!(
            abc.as_bytes()[24..],
            [0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad]
        );
    }

    #[test]
    fn trailing_newline_is_part_of_the_key() {
        let a = Key::from_file_contents(b"secret");
        let b = Key::from_file_contents(b"secret\n");
        assert_ne!(a, b);
        assert_eq!(a, Key::from_file_contents(b"secret"));
    }

    #[test]
    fn debug_is_redacted() {
        let k = Key::from_file_contents(b"secret");
        assert_eq!(format!("{k:?}"), "Key(<redacted>)");
    }
}
