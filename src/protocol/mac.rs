//! The packet MAC: HMAC-SHA256 of a packet's 1028 encrypted bytes and its
//! 8-byte number, one packet at a time or two at once.
//!
//! HMAC is written out here over `sha2`'s compression function rather
//! than taken from the `hmac` crate for two reasons. Its message always
//! has the same length, so the padding blocks are laid out once per
//! packet with no buffering; and two packets can share the CPU's SHA
//! units (see `super::sha_ni`). Both are checked against `hmac` in the
//! tests, and the `hmac` crate still does every other MAC in spipes.

use sha2::block_api::compress256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a packet that the MAC covers, before its number: the
/// encrypted payload, padding and length field.
const CT_LEN: usize = super::packet::PADDED_LEN;

/// Bytes of ciphertext in the 16 whole blocks of the inner hash; the
/// other 4 go into the last block with the packet number.
const BODY_LEN: usize = 1024;

/// The bytes the inner hash absorbs: the key block, the ciphertext and
/// the packet number.
const INNER_LEN: u64 = 64 + CT_LEN as u64 + 8;

/// The bytes the outer hash absorbs: the key block and the inner digest.
const OUTER_LEN: u64 = 64 + 32;

/// SHA-256's initial state.
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c,
    0x1f83d9ab, 0x5be0cd19,
];

/// One direction's MAC key, kept as the two hash states after the
/// key's inner and outer pad blocks: a packet starts from these instead
/// of hashing the pads again. They are as secret as the key itself, and
/// wiped on drop, as are a MAC's inner state and outer block once the
/// MAC is made.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PacketMac {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl PacketMac {
    /// Keys the MAC with a 32-byte key, as HMAC does: the key, zero
    /// padded to a block, XORed with 0x36 (inner) and 0x5c (outer).
    pub fn new(key: &[u8; 32]) -> PacketMac {
        let mut pads = [[0x36u8; 64], [0x5cu8; 64]];
        for (i, k) in key.iter().enumerate() {
            pads[0][i] ^= k;
            pads[1][i] ^= k;
        }

        let mut mac = PacketMac {
            inner: H0,
            outer: H0,
        };
        compress256(&mut mac.inner, &pads[..1]);
        compress256(&mut mac.outer, &pads[1..]);
        pads.zeroize();
        mac
    }

    /// The MAC of packet `n` with encrypted bytes `ct`.
    pub fn tag(&self, ct: &[u8; CT_LEN], n: u64) -> [u8; 32] {
        let mut inner = self.inner;
        compress256(&mut inner, body(ct));
        compress256(&mut inner, &[inner_tail(ct, n)]);

        let mut outer = self.outer;
        let mut block = [outer_block(&inner)];
        compress256(&mut outer, &block);
        inner.zeroize();
        block.zeroize();
        digest(&outer)
    }

    /// The MACs of two packets, `a` and `b`: the same as two calls to
    /// [`PacketMac::tag`], and where the CPU has SHA-NI about 1.7 times
    /// faster than those two calls (BENCHMARKS.md).
    pub fn tag_pair(
        &self,
        a: (&[u8; CT_LEN], u64),
        b: (&[u8; CT_LEN], u64),
    ) -> ([u8; 32], [u8; 32]) {
        let (mut inner_a, mut inner_b) = (self.inner, self.inner);
        compress_pair(&mut inner_a, &mut inner_b, body(a.0), body(b.0));
        compress_pair(
            &mut inner_a,
            &mut inner_b,
            &[inner_tail(a.0, a.1)],
            &[inner_tail(b.0, b.1)],
        );

        let (mut outer_a, mut outer_b) = (self.outer, self.outer);
        let mut blocks = [outer_block(&inner_a), outer_block(&inner_b)];
        let (block_a, block_b) = blocks.split_at(1);
        compress_pair(&mut outer_a, &mut outer_b, block_a, block_b);
        inner_a.zeroize();
        inner_b.zeroize();
        blocks.zeroize();
        (digest(&outer_a), digest(&outer_b))
    }
}

#[cfg(target_arch = "x86_64")]
use super::sha_ni::compress_pair;

/// Off x86_64 there are no SHA extensions to share: one after the other.
#[cfg(not(target_arch = "x86_64"))]
fn compress_pair(
    a: &mut [u32; 8],
    b: &mut [u32; 8],
    blocks_a: &[[u8; 64]],
    blocks_b: &[[u8; 64]],
) {
    compress256(a, blocks_a);
    compress256(b, blocks_b);
}

/// The first 1024 encrypted bytes as 16 blocks.
fn body(ct: &[u8; CT_LEN]) -> &[[u8; 64]] {
    let (blocks, rest) = ct[..BODY_LEN].as_chunks::<64>();
    debug_assert!(rest.is_empty());
    blocks
}

/// The inner hash's last block: the last 4 encrypted bytes, the packet
/// number, then SHA-256 padding for [`INNER_LEN`] bytes.
fn inner_tail(ct: &[u8; CT_LEN], n: u64) -> [u8; 64] {
    let mut block = [0u8; 64];
    block[..4].copy_from_slice(&ct[BODY_LEN..]);
    block[4..12].copy_from_slice(&n.to_be_bytes());
    block[12] = 0x80;
    block[56..].copy_from_slice(&(INNER_LEN * 8).to_be_bytes());
    block
}

/// The outer hash's only block after the pad: the inner digest, then
/// SHA-256 padding for [`OUTER_LEN`] bytes.
fn outer_block(inner: &[u32; 8]) -> [u8; 64] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(&digest(inner));
    block[32] = 0x80;
    block[56..].copy_from_slice(&(OUTER_LEN * 8).to_be_bytes());
    block
}

/// A state as the big-endian digest bytes.
fn digest(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Hmac;
    use hmac::digest::{FixedOutput, KeyInit, Update};
    use sha2::Sha256;

    /// A small deterministic generator.
    fn fill(seed: &mut u64, out: &mut [u8]) {
        for b in out {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *b = *seed as u8;
        }
    }

    /// The `hmac` crate's answer: the oracle.
    fn oracle(key: &[u8; 32], ct: &[u8; CT_LEN], n: u64) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(ct);
        mac.update(&n.to_be_bytes());
        mac.finalize_fixed().into()
    }

    #[test]
    fn tag_and_tag_pair_equal_hmac() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for round in 0..300u64 {
            let mut key = [0u8; 32];
            let (mut a, mut b) = ([0u8; CT_LEN], [0u8; CT_LEN]);
            fill(&mut seed, &mut key);
            fill(&mut seed, &mut a);
            fill(&mut seed, &mut b);
            let (na, nb) = (round.wrapping_mul(0x1_0000_0001), !round);

            let mac = PacketMac::new(&key);
            let (want_a, want_b) = (oracle(&key, &a, na), oracle(&key, &b, nb));
            assert_eq!(mac.tag(&a, na), want_a);
            assert_eq!(mac.tag_pair((&a, na), (&b, nb)), (want_a, want_b));
        }
    }

    #[test]
    fn tag_pair_keeps_the_order_of_its_packets() {
        let mac = PacketMac::new(&[7; 32]);
        let (a, b) = ([1u8; CT_LEN], [2u8; CT_LEN]);
        let (ta, tb) = mac.tag_pair((&a, 5), (&b, 6));
        assert_eq!((tb, ta), mac.tag_pair((&b, 6), (&a, 5)));
        assert_ne!(ta, tb);
    }
}
