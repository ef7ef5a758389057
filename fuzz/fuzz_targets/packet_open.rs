//! `Opener::open` on 1060-byte chunks of the input, and `open_all` on a
//! sealed stream with fuzz-chosen damage.
//!
//! First pass: the first byte chooses, per packet, whether the chunk goes
//! in as it is or with its MAC recomputed under the opener's key (so that
//! the decryption and the length check run on fuzzed ciphertext). Every
//! result must leave `out` consistent: a refused packet appends nothing
//! and does not advance the counter; an opened one appends at most 1024
//! bytes.
//!
//! Second pass: the input is sealed, then each packet is left alone, has
//! a bit flipped, is given a length field over 1024 under a good MAC, or
//! is replaced by packet 0, as the input's bytes choose. `open_all`, which
//! checks MACs two at a time, must give the same plaintext and the same
//! first error as opening one packet at a time and stopping there; with
//! no damage it gives back the input.

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
        let before = out.len();
        match opener.open(&packet, &mut out) {
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

    damaged_stream(rest);
});

/// The second pass: seal `rest`, damage packets as its bytes choose, and
/// compare `open_all` with one packet at a time.
fn damaged_stream(rest: &[u8]) {
    let mut wire = Vec::new();
    Sealer::new(&ENC, &MAC).seal(rest, &mut wire);
    assert_eq!(wire.len(), rest.len().div_ceil(MAX_PAYLOAD) * PACKET_LEN);

    let first = wire
        .get(..PACKET_LEN)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let mut damaged = false;
    for (i, packet) in wire.chunks_exact_mut(PACKET_LEN).enumerate() {
        let pick = rest.get(i).copied().unwrap_or(0);
        let arg = rest.get(i + 1).copied().unwrap_or(0) as usize;
        match pick % 4 {
            1 => packet[(arg * 7 + i) % PACKET_LEN] ^= 1 << (arg % 8),
            2 => {
                // CTR is malleable: XOR the length field to 1025 or more,
                // then MAC the result as packet `i`.
                let len = rest.len().saturating_sub(i * MAX_PAYLOAD);
                let old = len.min(MAX_PAYLOAD) as u32;
                let new = 1025 + arg as u32;
                let delta = (old ^ new).to_be_bytes();
                for (b, d) in packet[MAX_PAYLOAD..CT_LEN].iter_mut().zip(delta)
                {
                    *b ^= d;
                }
                let t = tag(&packet[..CT_LEN], i as u64);
                packet[CT_LEN..].copy_from_slice(&t);
            }
            3 if i > 0 => packet.copy_from_slice(&first),
            _ => continue,
        }
        damaged = true;
    }

    // One at a time, up to the first error.
    let mut opener = Opener::new(&ENC, &MAC);
    let (mut each, mut first_error) = (Vec::new(), None);
    for packet in wire.chunks_exact(PACKET_LEN) {
        let packet = packet.try_into().expect("whole packets");
        if let Err(e) = opener.open(packet, &mut each) {
            first_error = Some(e);
            break;
        }
    }

    // Two at a time: the same plaintext and the same first error.
    let mut all = Vec::new();
    let result = Opener::new(&ENC, &MAC).open_all(&wire, &mut all);
    assert_eq!(result.err(), first_error);
    assert_eq!(all, each);
    if !damaged {
        assert_eq!(first_error, None, "an undamaged stream failed");
        assert_eq!(all, rest);
    }
}
