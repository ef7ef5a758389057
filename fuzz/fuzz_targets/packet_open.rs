//! `Opener::open` on 1060-byte chunks of the input.
//!
//! The first byte chooses, per packet, whether the chunk goes in as it
//! is or with its MAC recomputed under the opener's key (so that the
//! decryption and the length check run on fuzzed ciphertext). Every
//! result must leave `out` consistent: a refused packet appends nothing
//! and does not advance the counter; an opened one appends at most 1024
//! bytes. `Opener::open_all`, which checks MACs two at a time, must give
//! the same plaintext and the same first error as opening one packet at a
//! time and stopping there. A last pass seals the input and opens it
//! again.

#![no_main]

use hmac::digest::{FixedOutput, KeyInit, Update};
use libfuzzer_sys::fuzz_target;
use spipes::protocol::{MAX_PAYLOAD, Opener, PACKET_LEN, PacketError, Sealer};

const ENC: [u8; 32] = [0x42; 32];
const MAC: [u8; 32] = [0x24; 32];

/// Bytes of the MACed part of a packet.
const CT_LEN: usize = PACKET_LEN - 32;

/// `HMAC-SHA256(MAC, ct || u64(n))`, as a valid packet carries.
fn tag(ct: &[u8], n: u64) -> [u8; 32] {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&MAC).expect("any length");
    mac.update(ct);
    mac.update(&n.to_be_bytes());
    mac.finalize_fixed().into()
}

fuzz_target!(|data: &[u8]| {
    let Some((&modes, rest)) = data.split_first() else {
        return;
    };

    let mut opener = Opener::new(&ENC, &MAC);
    let mut out = b"prefix".to_vec();
    // The packets as they went in, and the outcome of opening them one
    // at a time up to the first error.
    let mut wire = Vec::new();
    let mut first_error = None;
    let mut upto_error = Vec::new();
    // The number of the next packet the opener expects.
    let mut n = 0u64;
    for (i, chunk) in rest.chunks_exact(PACKET_LEN).enumerate() {
        let mut packet: [u8; PACKET_LEN] =
            chunk.try_into().expect("1060 bytes");
        let fix_mac = modes >> (i % 8) & 1 == 1;
        if fix_mac {
            let t = tag(&packet[..CT_LEN], n);
            packet[CT_LEN..].copy_from_slice(&t);
        }
        wire.extend_from_slice(&packet);
        let before = out.len();
        let result = opener.open(&packet, &mut out);
        if first_error.is_none() {
            match &result {
                Ok(()) => upto_error.extend_from_slice(&out[before..]),
                Err(e) => first_error = Some(*e),
            }
        }
        match result {
            Ok(()) => {
                assert!(out.len() - before <= MAX_PAYLOAD);
                assert_eq!(&out[..6], b"prefix");
                n += 1;
            }
            Err(PacketError::BadMac) => {
                assert!(!fix_mac, "a packet with a right MAC failed its MAC");
                assert_eq!(
                    out.len(),
                    before,
                    "a refused packet appended bytes"
                );
            }
            Err(PacketError::BadLength) => {
                assert!(fix_mac, "a forged packet passed the MAC");
                assert_eq!(
                    out.len(),
                    before,
                    "a refused packet appended bytes"
                );
            }
        }
    }

    // Two at a time: the same plaintext and the same first error.
    let mut all = Vec::new();
    let result = Opener::new(&ENC, &MAC).open_all(&wire, &mut all);
    assert_eq!(result.err(), first_error);
    assert_eq!(all, upto_error);

    // Sealing then opening gives back the input.
    let mut sealer = Sealer::new(&ENC, &MAC);
    let mut opener = Opener::new(&ENC, &MAC);
    let mut sealed = Vec::new();
    sealer.seal(rest, &mut sealed);
    assert_eq!(sealed.len(), rest.len().div_ceil(MAX_PAYLOAD) * PACKET_LEN);
    let mut opened = Vec::new();
    for packet in sealed.chunks(PACKET_LEN) {
        let packet = packet.try_into().expect("whole packets");
        opener
            .open(packet, &mut opened)
            .expect("a sealed packet opens");
    }
    assert_eq!(opened, rest);
    let mut opened = Vec::new();
    Opener::new(&ENC, &MAC)
        .open_all(&sealed, &mut opened)
        .expect("sealed packets open");
    assert_eq!(opened, rest);
});
