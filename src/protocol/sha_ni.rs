//! Two SHA-256 compressions at once with the x86 SHA extensions.
//!
//! One stream of SHA-256 on SHA-NI is bound by the latency of
//! `sha256rnds2`: each round pair waits for the one before it, so the
//! SHA unit idles between them. Two independent streams issued
//! alternately fill those gaps. On the 2-vCPU AMD EPYC of BENCHMARKS.md,
//! two packets' MACs took about 0.57 times as long this way as one after
//! the other, and criterion's seal and open of 64 KiB got 1.39 and 1.35
//! times faster. The
//! `sha2` crate, used everywhere else, has no multi-stream entry point,
//! which is why this module exists.
//!
//! Soundness: every function here that uses SIMD is compiled with
//! `#[target_feature]`, and the only way in is [`compress_pair`], which
//! runs them only after [`available`] has seen those features on this
//! CPU. The remaining `unsafe` blocks are unaligned 16-byte loads and
//! stores inside fixed-size arrays, each with its bounds argued where it
//! stands. Only the four functions that hold an `unsafe` block allow it.
//! The tests compare every result with `sha2`.

use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128,
    _mm_set_epi32, _mm_set_epi64x, _mm_sha256msg1_epu32, _mm_sha256msg2_epu32,
    _mm_sha256rnds2_epu32, _mm_shuffle_epi8, _mm_shuffle_epi32,
    _mm_storeu_si128,
};

/// SHA-256's round constants.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Whether this CPU has every feature the functions below are compiled
/// for. The standard library caches the answer, so asking is cheap.
pub fn available() -> bool {
    is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("sse2")
        && is_x86_feature_detected!("ssse3")
        && is_x86_feature_detected!("sse4.1")
}

/// Compresses `blocks_a` into `state_a` and `blocks_b` into `state_b`,
/// exactly as `sha2::block_api::compress256` would one after the other;
/// on a CPU without SHA-NI it is just that.
///
/// Panics if the block counts differ: a bug, never input.
#[allow(unsafe_code)]
pub fn compress_pair(
    state_a: &mut [u32; 8],
    state_b: &mut [u32; 8],
    blocks_a: &[[u8; 64]],
    blocks_b: &[[u8; 64]],
) {
    assert_eq!(blocks_a.len(), blocks_b.len(), "block counts differ");
    if !available() {
        sha2::block_api::compress256(state_a, blocks_a);
        sha2::block_api::compress256(state_b, blocks_b);
        return;
    }

    // SAFETY: the features `pair` is compiled with were detected on this
    // CPU just above.
    unsafe { pair(state_a, state_b, blocks_a, blocks_b) }
}

/// The body of [`compress_pair`].
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn pair(
    state_a: &mut [u32; 8],
    state_b: &mut [u32; 8],
    blocks_a: &[[u8; 64]],
    blocks_b: &[[u8; 64]],
) {
    let mut a = load_state(state_a);
    let mut b = load_state(state_b);
    for (block_a, block_b) in blocks_a.iter().zip(blocks_b) {
        block_pair(&mut a, &mut b, block_a, block_b);
    }
    store_state(state_a, a);
    store_state(state_b, b);
}

/// A state in the register layout `sha256rnds2` wants: (ABEF, CDGH).
type State = (__m128i, __m128i);

/// Round constants `4r .. 4r + 4` as one vector.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn k(r: usize) -> __m128i {
    _mm_set_epi32(
        K[4 * r + 3] as i32,
        K[4 * r + 2] as i32,
        K[4 * r + 1] as i32,
        K[4 * r] as i32,
    )
}

/// Loads A..H and rearranges them into (ABEF, CDGH).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
#[allow(unsafe_code)]
fn load_state(state: &[u32; 8]) -> State {
    let p: *const __m128i = state.as_ptr().cast();
    // SAFETY: `state` is 32 bytes; the two unaligned 16-byte loads at
    // offsets 0 and 16 read only inside it, and loadu needs no alignment.
    let (dcba, hgfe) =
        unsafe { (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1))) };
    let cdab = _mm_shuffle_epi32(dcba, 0xB1);
    let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    (
        _mm_alignr_epi8(cdab, efgh, 8),
        _mm_blend_epi16(efgh, cdab, 0xF0),
    )
}

/// The inverse of [`load_state`].
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
#[allow(unsafe_code)]
fn store_state(state: &mut [u32; 8], (abef, cdgh): State) {
    let feba = _mm_shuffle_epi32(abef, 0x1B);
    let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
    let hgef = _mm_alignr_epi8(dchg, feba, 8);
    let p: *mut __m128i = state.as_mut_ptr().cast();
    // SAFETY: `state` is an exclusive borrow of 32 bytes; the two
    // unaligned 16-byte stores at offsets 0 and 16 write only inside it.
    unsafe {
        _mm_storeu_si128(p, dcba);
        _mm_storeu_si128(p.add(1), hgef);
    }
}

/// A block as four big-endian message vectors W0..W15.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
#[allow(unsafe_code)]
fn load_block(block: &[u8; 64]) -> [__m128i; 4] {
    let swap = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
    let p: *const __m128i = block.as_ptr().cast();
    // SAFETY: `block` is exactly 64 bytes; the unaligned 16-byte loads at
    // offsets 0, 16, 32 and 48 read only inside it.
    let w = unsafe {
        [
            _mm_loadu_si128(p),
            _mm_loadu_si128(p.add(1)),
            _mm_loadu_si128(p.add(2)),
            _mm_loadu_si128(p.add(3)),
        ]
    };
    [
        _mm_shuffle_epi8(w[0], swap),
        _mm_shuffle_epi8(w[1], swap),
        _mm_shuffle_epi8(w[2], swap),
        _mm_shuffle_epi8(w[3], swap),
    ]
}

/// The next four message words, W[i+16..i+20], from the previous 16.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
    let t1 = _mm_sha256msg1_epu32(w0, w1);
    let t2 = _mm_alignr_epi8(w3, w2, 4);
    _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), w3)
}

/// Four rounds of each stream, their `sha256rnds2` chains interleaved.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn rounds(r: usize, a: &mut State, b: &mut State, wa: __m128i, wb: __m128i) {
    let kr = k(r);
    let ta = _mm_add_epi32(wa, kr);
    let tb = _mm_add_epi32(wb, kr);
    a.1 = _mm_sha256rnds2_epu32(a.1, a.0, ta);
    b.1 = _mm_sha256rnds2_epu32(b.1, b.0, tb);
    a.0 = _mm_sha256rnds2_epu32(a.0, a.1, _mm_shuffle_epi32(ta, 0x0E));
    b.0 = _mm_sha256rnds2_epu32(b.0, b.1, _mm_shuffle_epi32(tb, 0x0E));
}

/// One 64-round block of each stream.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn block_pair(a: &mut State, b: &mut State, ba: &[u8; 64], bb: &[u8; 64]) {
    let [mut a0, mut a1, mut a2, mut a3] = load_block(ba);
    let [mut b0, mut b1, mut b2, mut b3] = load_block(bb);
    let (start_a, start_b) = (*a, *b);

    // Rounds 0-15 use the block's own words.
    rounds(0, a, b, a0, b0);
    rounds(1, a, b, a1, b1);
    rounds(2, a, b, a2, b2);
    rounds(3, a, b, a3, b3);

    // Rounds 16-63: each step replaces the oldest words with new ones.
    for g in [4, 8, 12] {
        a0 = schedule(a0, a1, a2, a3);
        b0 = schedule(b0, b1, b2, b3);
        rounds(g, a, b, a0, b0);
        a1 = schedule(a1, a2, a3, a0);
        b1 = schedule(b1, b2, b3, b0);
        rounds(g + 1, a, b, a1, b1);
        a2 = schedule(a2, a3, a0, a1);
        b2 = schedule(b2, b3, b0, b1);
        rounds(g + 2, a, b, a2, b2);
        a3 = schedule(a3, a0, a1, a2);
        b3 = schedule(b3, b0, b1, b2);
        rounds(g + 3, a, b, a3, b3);
    }

    // Davies-Meyer: add the block's starting state.
    a.0 = _mm_add_epi32(a.0, start_a.0);
    a.1 = _mm_add_epi32(a.1, start_a.1);
    b.0 = _mm_add_epi32(b.0, start_b.0);
    b.1 = _mm_add_epi32(b.1, start_b.1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::block_api::compress256;

    /// A small deterministic generator.
    fn fill(seed: &mut u64, out: &mut [u8]) {
        for b in out {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *b = *seed as u8;
        }
    }

    #[test]
    fn pair_equals_sha2_one_after_the_other() {
        let mut seed = 0x0123_4567_89AB_CDEF;
        for blocks in 0..20 {
            let mut bytes = vec![0u8; 2 * 64 * blocks + 64];
            fill(&mut seed, &mut bytes);
            let (init, data) = bytes.split_at(64);
            let words: Vec<u32> = init
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let start_a: [u32; 8] = words[..8].try_into().expect("8");
            let start_b: [u32; 8] = words[8..].try_into().expect("8");
            let (all, _) = data.as_chunks::<64>();
            let (ba, bb) = all.split_at(blocks);

            let (mut a, mut b) = (start_a, start_b);
            compress_pair(&mut a, &mut b, ba, bb);

            let (mut want_a, mut want_b) = (start_a, start_b);
            compress256(&mut want_a, ba);
            compress256(&mut want_b, bb);
            assert_eq!((a, b), (want_a, want_b), "{blocks} blocks");
        }
    }
}
