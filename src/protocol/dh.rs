//! Diffie-Hellman in the 2048-bit MODP group of RFC 3526 (group 14).
//!
//! Each side raises the generator 2 to a secret exponent and sends the
//! result `y`; each then raises the peer's `y` to its own exponent. As
//! spiped does, the exponent is `2^258` plus a random 256-bit value.
//!
//! All arithmetic on secrets is constant time: crypto-bigint's
//! `FixedMontyForm::pow_amm_bounded_exp` with a fixed, public bound of
//! 259 exponent bits.

use std::sync::LazyLock;

use crypto_bigint::Choice;
use crypto_bigint::ctutils::CtAssign;
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U320, U2048, Uint};
use zeroize::{Zeroize, Zeroizing};

/// Bytes of a Diffie-Hellman value on the wire (`y`, `y_SC`): 2048 bits.
pub const Y_LEN: usize = 256;

/// Bytes of a private value: the random part of the exponent.
pub const PRIVATE_LEN: usize = 32;

/// The value `y = 1` as 256 bytes: what a side with forward secrecy off
/// sends, and the `y_SC` it uses.
pub const Y_ONE: [u8; Y_LEN] = {
    let mut y = [0u8; Y_LEN];
    y[Y_LEN - 1] = 1;
    y
};

/// The group 14 prime of RFC 3526, section 3:
/// `p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 )`.
const PRIME_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// The prime as an odd 2048-bit integer.
const PRIME: Odd<U2048> = Odd::<U2048>::from_be_hex(PRIME_HEX);

/// Montgomery parameters for the prime, computed once per process.
static PARAMS: LazyLock<FixedMontyParams<{ U2048::LIMBS }>> =
    LazyLock::new(|| FixedMontyParams::new(PRIME));

/// Bits of the exponent `2^258 + private value`: a public bound, so the
/// exponentiation's running time does not depend on the private value.
const EXPONENT_BITS: u32 = 259;

/// A side's secret Diffie-Hellman value. Wiped when dropped; its `Debug`
/// output never shows the bytes.
pub struct PrivateValue {
    bytes: Zeroizing<[u8; PRIVATE_LEN]>,
}

impl PrivateValue {
    /// Draws a fresh private value from the operating system's random
    /// number generator, as each handshake with forward secrecy needs.
    pub fn generate() -> Result<PrivateValue, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; PRIVATE_LEN]);
        getrandom::fill(&mut *bytes)?;
        Ok(PrivateValue { bytes })
    }

    /// Uses the given 32 bytes as the private value. For known-answer
    /// tests: a real handshake uses [`PrivateValue::generate`].
    pub fn from_bytes(bytes: &[u8; PRIVATE_LEN]) -> PrivateValue {
        PrivateValue {
            bytes: Zeroizing::new(*bytes),
        }
    }

    /// The public value `y = 2^x mod p` as 256 big-endian bytes, which
    /// this side sends to its peer.
    ///
    /// The base is fixed, so this multiplies precomputed powers of 2, one
    /// per 4-bit digit of the private value, instead of exponentiating:
    /// 64 multiplications instead of about 330.
    pub fn public_value(&self) -> [u8; Y_LEN] {
        let table = &*GENERATOR_POWERS;
        let mut acc =
            FixedMontyForm::from_montgomery(table.two_to_2_258, &PARAMS);

        for (i, row) in table.rows.iter().enumerate() {
            // Digit i of the private value, least significant first. The
            // position i is public; the digit is secret.
            let byte = self.bytes[PRIVATE_LEN - 1 - i / 2];
            let digit = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };

            // Constant time: every entry of the row is read, and ctutils'
            // Choice::from_u8_eq and ct_assign (crypto-bigint's selection
            // primitives) pick one without a branch or an index that
            // depends on the digit; crypto-bigint's Montgomery
            // multiplication then takes the same steps for every value.
            // The entries are bare 2048-bit integers, so the scan reads
            // 256 bytes per entry rather than a whole FixedMontyForm with
            // its copy of the parameters (over 1 KiB).
            let mut entry = row[0];
            for (j, candidate) in row.iter().enumerate().skip(1) {
                let hit = Choice::from_u8_eq(digit, j as u8);
                entry.ct_assign(candidate, hit);
            }
            let mut factor = FixedMontyForm::from_montgomery(entry, &PARAMS);
            wipe(&mut entry);
            acc = acc.mul(&factor);
            wipe(factor.as_montgomery_mut());
        }

        let mut y = [0u8; Y_LEN];
        encode(&mut acc, &mut y);
        y
    }

    /// The shared value `y_SC = peer_y^x mod p` as 256 big-endian bytes.
    ///
    /// The caller should first check [`is_below_prime`]; a larger value
    /// is reduced modulo `p`. A peer's `y = 1` gives `y_SC = 1`.
    pub fn shared_value(&self, peer_y: &[u8; Y_LEN]) -> Zeroizing<[u8; Y_LEN]> {
        let peer = U2048::from_be_slice(peer_y);
        let base = FixedMontyForm::new(&peer, &PARAMS);
        let mut shared = Zeroizing::new([0u8; Y_LEN]);
        self.raise(&base, &mut shared[..]);
        shared
    }

    /// Writes `base^(2^258 + x) mod p` to `out`, wiping every temporary
    /// that holds the secret exponent or the result.
    fn raise(&self, base: &FixedMontyForm<{ U2048::LIMBS }>, out: &mut [u8]) {
        let mut short = self.exponent();
        let mut exponent = short.resize::<{ U2048::LIMBS }>();
        wipe(&mut short);

        // Constant time: crypto-bigint's pow_amm_bounded_exp runs the same
        // steps for every exponent below 2^EXPONENT_BITS. Its "almost"
        // Montgomery multiplications skip the final subtraction until the
        // end: 3 to 5% faster than pow_bounded_exp here (thread CPU time,
        // 15 alternating rounds of 20).
        let mut power = base.pow_amm_bounded_exp(&exponent, EXPONENT_BITS);
        wipe(&mut exponent);

        encode(&mut power, out);
    }

    /// The exponent `2^258 + x` as a 320-bit integer.
    fn exponent(&self) -> U320 {
        // 40 big-endian bytes: bit 258 is bit 2 of byte 7, and the private
        // value fills bytes 8..40.
        let mut bytes = Zeroizing::new([0u8; U320::BYTES]);
        bytes[7] = 0x04;
        bytes[8..].copy_from_slice(&*self.bytes);
        U320::from_be_slice(&*bytes)
    }
}

impl std::fmt::Debug for PrivateValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateValue(<redacted>)")
    }
}

/// Whether a peer's `y` (256 big-endian bytes) is below the prime `p`,
/// as the handshake requires before using it.
pub fn is_below_prime(y: &[u8; Y_LEN]) -> bool {
    // `y` is public, but crypto-bigint's `Ord` for Uint is constant time
    // anyway.
    U2048::from_be_slice(y) < *PRIME.as_ref()
}

/// Whether `y` is the value 1, the mark of a peer with forward secrecy
/// off. `y` is public, so an ordinary comparison is fine.
pub fn is_one(y: &[u8; Y_LEN]) -> bool {
    *y == Y_ONE
}

/// Leaves Montgomery form and writes big-endian bytes to `out`, wiping
/// `value` and each intermediate copy.
fn encode(value: &mut FixedMontyForm<{ U2048::LIMBS }>, out: &mut [u8]) {
    let mut plain = value.retrieve();
    wipe(value.as_montgomery_mut());
    let mut encoded = plain.to_be_bytes();
    wipe(&mut plain);
    out.copy_from_slice(encoded.as_slice());
    encoded.as_mut_slice().zeroize();
}

/// Powers of the generator for [`PrivateValue::public_value`], in
/// Montgomery form for [`PARAMS`]: nothing here depends on a secret.
struct GeneratorPowers {
    /// `2^(2^258) mod p`: the fixed top bit of every exponent.
    two_to_2_258: U2048,
    /// `rows[i][j] = 2^(j * 16^i) mod p`, for the 64 hex digits of a
    /// private value.
    rows: Vec<[U2048; 16]>,
}

/// Built once per process, in about a thousand multiplications (a few
/// milliseconds); 256 KiB of bare integers.
static GENERATOR_POWERS: LazyLock<GeneratorPowers> = LazyLock::new(|| {
    let one = FixedMontyForm::one(&PARAMS);
    let mut base = FixedMontyForm::new(&U2048::from_u8(2), &PARAMS);
    let mut rows = Vec::with_capacity(PRIVATE_LEN * 2);
    for _ in 0..PRIVATE_LEN * 2 {
        let mut power = one;
        let mut row = [*one.as_montgomery(); 16];
        for entry in row.iter_mut().skip(1) {
            power = power.mul(&base);
            *entry = *power.as_montgomery();
        }
        rows.push(row);
        // The next row's base: this one to the 16th power.
        base = base.square_repeat_vartime(4);
    }
    // After 64 rows, base is 2^(16^64) = 2^(2^256); two more squarings.
    let two_to_2_258 = *base.square_repeat_vartime(2).as_montgomery();
    GeneratorPowers { two_to_2_258, rows }
});

/// Overwrites an integer's limbs with zeros (crypto-bigint is built
/// without its `zeroize` feature, so wipe the words directly).
fn wipe<const LIMBS: usize>(x: &mut Uint<LIMBS>) {
    x.as_mut_words().zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_base_public_value_equals_exponentiation() {
        let two = FixedMontyForm::new(&U2048::from_u8(2), &PARAMS);
        let mut seeds = vec![[0u8; PRIVATE_LEN], [0xffu8; PRIVATE_LEN]];
        for _ in 0..8 {
            let mut seed = [0u8; PRIVATE_LEN];
            getrandom::fill(&mut seed).expect("random source");
            seeds.push(seed);
        }
        for seed in seeds {
            let private = PrivateValue::from_bytes(&seed);
            let mut want = [0u8; Y_LEN];
            private.raise(&two, &mut want);
            assert_eq!(private.public_value(), want);
        }
    }

    fn be(n: u64) -> [u8; Y_LEN] {
        let mut y = [0u8; Y_LEN];
        y[Y_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        y
    }

    #[test]
    fn prime_matches_rfc_3526_shape() {
        // The prime begins and ends with 64 one bits, and is 2048 bits.
        let p = PRIME.as_ref().to_be_bytes();
        assert_eq!(&p.as_slice()[..8], &[0xff; 8]);
        assert_eq!(&p.as_slice()[Y_LEN - 8..], &[0xff; 8]);
        assert_eq!(&p.as_slice()[8..12], &[0xc9, 0x0f, 0xda, 0xa2]);
    }

    #[test]
    fn exponent_is_two_to_258_plus_private() {
        let x = PrivateValue::from_bytes(&[0xab; PRIVATE_LEN]);
        let e = x.exponent().to_be_bytes();
        let mut want = [0u8; 40];
        want[7] = 0x04;
        want[8..].copy_from_slice(&[0xab; 32]);
        assert_eq!(e.as_slice(), &want);
    }

    #[test]
    fn both_sides_agree() {
        let a = PrivateValue::generate().expect("OS random generator");
        let b = PrivateValue::generate().expect("OS random generator");
        let ya = a.public_value();
        let yb = b.public_value();
        assert_ne!(ya, yb);
        assert!(is_below_prime(&ya) && is_below_prime(&yb));
        assert_eq!(*a.shared_value(&yb), *b.shared_value(&ya));
    }

    #[test]
    fn one_to_any_power_is_one() {
        let a = PrivateValue::from_bytes(&[7; PRIVATE_LEN]);
        assert_eq!(*a.shared_value(&Y_ONE), Y_ONE);
        assert!(is_one(&Y_ONE));
        assert!(!is_one(&be(2)));
    }

    #[test]
    fn bound_checks() {
        let p = PRIME.as_ref().to_be_bytes();
        let p: [u8; Y_LEN] = p.as_slice().try_into().expect("256 bytes");
        let mut p_minus_1 = p;
        p_minus_1[Y_LEN - 1] -= 1;
        assert!(!is_below_prime(&p));
        assert!(!is_below_prime(&[0xff; Y_LEN]));
        assert!(is_below_prime(&p_minus_1));
        assert!(is_below_prime(&be(0)));
    }

    #[test]
    fn small_exponent_cross_check() {
        // 2^(2^258 + 0) computed two ways: via the private value 0, and by
        // squaring 2 258 times with ordinary modular multiplication.
        let x = PrivateValue::from_bytes(&[0; PRIVATE_LEN]);
        let two = U2048::from_u8(2);
        let mut acc = FixedMontyForm::new(&two, &PARAMS);
        for _ in 0..258 {
            acc = acc.square();
        }
        let want = acc.retrieve().to_be_bytes();
        assert_eq!(&x.public_value()[..], want.as_slice());
    }

    #[test]
    fn debug_is_redacted() {
        let x = PrivateValue::from_bytes(&[0x5a; PRIVATE_LEN]);
        assert_eq!(format!("{x:?}"), "PrivateValue(<redacted>)");
    }
}
