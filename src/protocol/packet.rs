//! Data packets: 1060 bytes each, AES-256-CTR then HMAC-SHA256.
//!
//! A packet carrying `M` (1 to 1024 bytes) as packet number `n` is
//! `ct || HMAC-SHA256(H, ct || u64(n))`, where `ct` is `M`, zero padding
//! to 1024 bytes and `u32(len(M))`, encrypted with AES-256-CTR under the
//! counter block `u64(n) || u64(block index)`.
//!
//! Each direction expands its AES key and keys its MAC once; a packet
//! only resets the CTR counter block and starts from the keyed MAC state.
//! Packets are sealed and opened two at a time where there are two, so
//! that their MACs share the CPU (see `super::mac`).

use aes::Aes256Enc;
use ctr::CtrCore;
use ctr::cipher::array::Array;
use ctr::cipher::{InnerIvInit, Iv, KeyInit, SetIvState, StreamCipherCore};
use ctr::flavors::Ctr64BE;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::mac::PacketMac;

/// Bytes of one packet on the wire.
pub const PACKET_LEN: usize = 1060;
/// The largest plaintext one packet carries.
pub const MAX_PAYLOAD: usize = 1024;

/// Bytes of the encrypted part: payload, padding and the length field.
pub(crate) const PADDED_LEN: usize = MAX_PAYLOAD + 4;

/// Why an incoming packet was refused. Any of these ends the connection.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The MAC did not match: a wrong key, a corrupted or forged packet.
    #[error("packet authentication failed")]
    BadMac,
    /// The MAC matched but the length field exceeds 1024.
    #[error("packet length field out of range")]
    BadLength,
}

/// AES-256 in CTR mode with a 64-bit big-endian block counter in the last
/// 8 bytes of the counter block: the packet number fills the first 8.
type Ctr = CtrCore<Aes256Enc, Ctr64BE>;

/// The keyed state of one direction: the expanded AES key inside a CTR
/// instance, the keyed MAC, and the number of the next packet.
struct DirectionKeys {
    ctr: Ctr,
    mac: PacketMac,
    next: u64,
}

impl DirectionKeys {
    /// Expands the AES key and keys the MAC, once per direction.
    fn new(enc_key: &[u8; 32], mac_key: &[u8; 32]) -> DirectionKeys {
        let cipher = <Aes256Enc as KeyInit>::new(enc_key.into());
        let ctr = Ctr::inner_iv_init(cipher, &Iv::<Ctr>::default());
        let mac = PacketMac::new(mac_key);
        DirectionKeys { ctr, mac, next: 0 }
    }

    /// The number for the packet being processed now; advances the
    /// counter.
    fn take_number(&mut self) -> u64 {
        let n = self.next;
        self.next = n
            .checked_add(1)
            .expect("2^64 packets of 1060 bytes cannot be sent");
        n
    }

    /// Applies the CTR keystream of packet `n` to `buf` in place: this
    /// both encrypts and decrypts. `buf` is the 1028 bytes of a packet
    /// followed by 12 spare bytes, so that all 65 blocks go through the
    /// cipher in one call (one round-key set-up per packet, not two).
    fn apply_keystream(&mut self, buf: &mut [u8], n: u64) {
        debug_assert_eq!(buf.len(), BLOCKS_LEN);
        // Counter block u64(n) || u64(0); Ctr64BE counts in the last 8.
        let mut iv = Iv::<Ctr>::default();
        iv[..8].copy_from_slice(&n.to_be_bytes());
        self.ctr.set_iv(&iv);

        let (blocks, tail) = Array::slice_as_chunks_mut(buf);
        debug_assert!(tail.is_empty());
        self.ctr.apply_keystream_blocks(blocks);
    }
}

/// The 1028 encrypted bytes rounded up to whole AES blocks: 65 blocks.
const BLOCKS_LEN: usize = PADDED_LEN.div_ceil(16) * 16;

/// Seals plaintext into packets for one direction of one connection.
pub struct Sealer {
    keys: DirectionKeys,
}

impl Sealer {
    /// Creates a sealer from the direction's encryption and MAC keys,
    /// numbering packets from 0.
    pub fn new(enc_key: &[u8; 32], mac_key: &[u8; 32]) -> Sealer {
        Sealer {
            keys: DirectionKeys::new(enc_key, mac_key),
        }
    }

    /// Appends to `out` the packets that carry `plaintext`, cut into pieces
    /// of at most 1024 bytes. An empty `plaintext` appends nothing.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        // Grow `out` once for all the packets.
        let packets = plaintext.len().div_ceil(MAX_PAYLOAD);
        out.reserve(packets * PACKET_LEN);

        // Two packets at a time, then the odd one out.
        let mut chunks = plaintext.chunks(MAX_PAYLOAD);
        while let Some(first) = chunks.next() {
            let start = out.len();
            let a = self.encrypt_chunk(first, out);
            let Some(second) = chunks.next() else {
                let tag = self.keys.mac.tag(ciphertext(out, start), a);
                out[start + PADDED_LEN..].copy_from_slice(&tag);
                break;
            };
            let b = self.encrypt_chunk(second, out);

            let (tag_a, tag_b) = self.keys.mac.tag_pair(
                (ciphertext(out, start), a),
                (ciphertext(out, start + PACKET_LEN), b),
            );
            out[start + PADDED_LEN..][..32].copy_from_slice(&tag_a);
            out[start + PACKET_LEN + PADDED_LEN..].copy_from_slice(&tag_b);
        }
    }

    /// Appends one packet carrying `chunk` (at most 1024 bytes), encrypted
    /// as the next packet number, which it returns. The last 32 bytes,
    /// where the MAC goes, are left for the caller to fill.
    fn encrypt_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> u64 {
        // Lay out the padded plaintext straight into `out`.
        let start = out.len();
        let len = u32::try_from(chunk.len()).expect("a chunk is <= 1024");
        out.extend_from_slice(chunk);
        out.resize(start + MAX_PAYLOAD, 0);
        out.extend_from_slice(&len.to_be_bytes());

        // Room for the MAC, then encrypt.
        out.resize(start + PACKET_LEN, 0);
        self.encrypt_at(start, out)
    }

    /// Encrypts the 1028 bytes at `out[start..]`, which are followed by
    /// the packet's 32 bytes of MAC room, as the next packet number.
    fn encrypt_at(&mut self, start: usize, out: &mut [u8]) -> u64 {
        // The cipher's last block runs 12 bytes into the MAC's room,
        // which the MAC then overwrites.
        let n = self.keys.take_number();
        self.keys
            .apply_keystream(&mut out[start..start + BLOCKS_LEN], n);
        n
    }
}

/// The 1028 encrypted bytes of the packet that starts at `out[start]`.
fn ciphertext(out: &[u8], start: usize) -> &[u8; PADDED_LEN] {
    out[start..start + PADDED_LEN]
        .try_into()
        .expect("a packet holds 1028 encrypted bytes")
}

/// Opens packets from one direction of one connection.
pub struct Opener {
    keys: DirectionKeys,
}

impl Opener {
    /// Creates an opener from the direction's encryption and MAC keys.
    pub fn new(enc_key: &[u8; 32], mac_key: &[u8; 32]) -> Opener {
        Opener {
            keys: DirectionKeys::new(enc_key, mac_key),
        }
    }

    /// Checks and decrypts one packet, appending its plaintext to `out`.
    ///
    /// On an error nothing is appended and the packet counter does not
    /// advance; the connection must be dropped all the same.
    pub fn open(
        &mut self,
        packet: &[u8; PACKET_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        let (ct, tag) = split(packet);
        let want = self.keys.mac.tag(ct, self.keys.next);
        self.check_and_decrypt(ct, tag, &want, out)
    }

    /// Checks and decrypts every whole packet in `packets`, in order,
    /// appending their plaintexts to `out`; bytes after the last whole
    /// packet are left alone. Two packets' MACs are computed at a time.
    ///
    /// Stops at the first bad packet, with the plaintext of the packets
    /// before it appended; the connection must be dropped. Reserves the
    /// room it needs in `out` itself.
    pub fn open_all(
        &mut self,
        packets: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        // Room for every payload, and for the last one's decryption:
        // callers need not reserve, and should not (a second reservation
        // on top of theirs could double the buffer).
        let count = packets.len() / PACKET_LEN;
        if count == 0 {
            return Ok(());
        }
        out.reserve_exact(count * MAX_PAYLOAD + (BLOCKS_LEN - MAX_PAYLOAD));

        let (pairs, rest) = packets.as_chunks::<{ 2 * PACKET_LEN }>();
        for pair in pairs {
            let (a, b) = pair.split_at(PACKET_LEN);
            let ((ct_a, tag_a), (ct_b, tag_b)) = (split(a), split(b));
            // B's number cannot overflow: opening A would fail first, at
            // the 2^64th packet, so wrapping_add needs no check of its own.
            let n = self.keys.next;
            let (want_a, want_b) =
                self.keys.mac.tag_pair((ct_a, n), (ct_b, n.wrapping_add(1)));
            self.check_and_decrypt(ct_a, tag_a, &want_a, out)?;
            self.check_and_decrypt(ct_b, tag_b, &want_b, out)?;
        }

        let (singles, _partial) = rest.as_chunks::<PACKET_LEN>();
        for packet in singles {
            self.open(packet, out)?;
        }
        Ok(())
    }

    /// Compares a packet's MAC with `want`, the MAC of packet number
    /// `self.next`, then decrypts it and appends its payload to `out`.
    fn check_and_decrypt(
        &mut self,
        ct: &[u8; PADDED_LEN],
        tag: &[u8],
        want: &[u8; 32],
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        // MAC first. Constant time: subtle's ct_eq on the 32-byte tags.
        if !bool::from(want.ct_eq(tag)) {
            return Err(PacketError::BadMac);
        }

        // Decrypt in place at the end of `out`, all 65 blocks in one
        // cipher call, then cut `out` back to the payload.
        let start = out.len();
        out.extend_from_slice(ct);
        out.resize(start + BLOCKS_LEN, 0);
        self.keys.apply_keystream(&mut out[start..], self.keys.next);
        let field: [u8; 4] = out[start + MAX_PAYLOAD..start + PADDED_LEN]
            .try_into()
            .expect("the plaintext ends in a 4-byte length field");
        let len = u32::from_be_bytes(field) as usize;

        // What lies past the payload (padding, the length field and 12
        // bytes of bare keystream) is wiped before it leaves `out`.
        let end = if len > MAX_PAYLOAD { 0 } else { len };
        out[start + end..].zeroize();
        out.truncate(start + end);
        if len > MAX_PAYLOAD {
            return Err(PacketError::BadLength);
        }
        self.keys.take_number();
        Ok(())
    }
}

/// A packet's encrypted bytes and its MAC.
fn split(packet: &[u8]) -> (&[u8; PADDED_LEN], &[u8]) {
    let (ct, tag) = packet.split_at(PADDED_LEN);
    let ct = ct.try_into().expect("a packet holds 1028 encrypted bytes");
    (ct, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENC: [u8; 32] = [0x11; 32];
    const MAC: [u8; 32] = [0x22; 32];

    /// A small deterministic generator for sizes and contents.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn as_packet(bytes: &[u8]) -> &[u8; PACKET_LEN] {
        bytes.try_into().expect("exactly one packet")
    }

    /// Opens `sealed` one packet per call, the way `open_all` does not.
    fn open_each(opener: &mut Opener, sealed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for packet in sealed.chunks(PACKET_LEN) {
            opener.open(as_packet(packet), &mut out).expect("opens");
        }
        out
    }

    #[test]
    fn round_trip_random_sizes() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut opener = Opener::new(&ENC, &MAC);
        let mut sizes: Vec<usize> = vec![0, 1, 1023, 1024, 1025, 2048, 5000];
        sizes.extend((0..100).map(|_| (rng.next() % 5001) as usize));

        for size in sizes {
            let msg = rng.bytes(size);
            let mut sealed = Vec::new();
            sealer.seal(&msg, &mut sealed);
            assert_eq!(sealed.len(), size.div_ceil(MAX_PAYLOAD) * PACKET_LEN);
            assert_eq!(open_each(&mut opener, &sealed), msg, "size {size}");
        }
    }

    #[test]
    fn seal_appends_after_existing_bytes() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut opener = Opener::new(&ENC, &MAC);
        let mut out = b"prefix".to_vec();
        sealer.seal(b"hello", &mut out);
        assert_eq!(&out[..6], b"prefix");

        let mut plain = b"kept".to_vec();
        opener
            .open(as_packet(&out[6..]), &mut plain)
            .expect("opens");
        assert_eq!(plain, b"kepthello");
    }

    #[test]
    fn empty_plaintext_appends_nothing() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut out = Vec::new();
        sealer.seal(&[], &mut out);
        assert!(out.is_empty());
        assert_eq!(sealer.keys.next, 0);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut opener = Opener::new(&ENC, &MAC);
        let mut sealed = Vec::new();
        sealer.seal(b"flip me", &mut sealed);

        let mut out = Vec::new();
        for bit in 0..PACKET_LEN * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let r = opener.open(as_packet(&bad), &mut out);
            assert_eq!(r, Err(PacketError::BadMac), "bit {bit}");
        }
        assert!(out.is_empty());

        // The failures did not advance the counter: the original opens.
        opener.open(as_packet(&sealed), &mut out).expect("opens");
        assert_eq!(out, b"flip me");
    }

    #[test]
    fn replay_and_reorder_fail() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut sealed = Vec::new();
        sealer.seal(b"zero", &mut sealed);
        sealer.seal(b"one", &mut sealed);
        let (p0, p1) = sealed.split_at(PACKET_LEN);
        let mut out = Vec::new();

        let mut opener = Opener::new(&ENC, &MAC);
        opener.open(as_packet(p0), &mut out).expect("opens");
        let replay = opener.open(as_packet(p0), &mut out);
        assert_eq!(replay, Err(PacketError::BadMac));

        let mut opener = Opener::new(&ENC, &MAC);
        let reorder = opener.open(as_packet(p1), &mut out);
        assert_eq!(reorder, Err(PacketError::BadMac));
    }

    #[test]
    fn wrong_keys_fail() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut sealed = Vec::new();
        sealer.seal(b"data", &mut sealed);
        let mut out = Vec::new();

        let mut opener = Opener::new(&ENC, &[0x23; 32]);
        let r = opener.open(as_packet(&sealed), &mut out);
        assert_eq!(r, Err(PacketError::BadMac));
    }

    /// Seals a hand-made 1028-byte padded block as the next packet.
    fn seal_raw(sealer: &mut Sealer, padded: &[u8; PADDED_LEN]) -> Vec<u8> {
        let mut out = padded.to_vec();
        out.resize(PACKET_LEN, 0);
        let n = sealer.encrypt_at(0, &mut out);
        let tag = sealer.keys.mac.tag(ciphertext(&out, 0), n);
        out[PADDED_LEN..].copy_from_slice(&tag);
        out
    }

    #[test]
    fn pairs_seal_and_open_as_single_packets_do() {
        let mut rng = XorShift(0x5EED);
        for packets in 1..=7 {
            let plain = rng.bytes(packets * MAX_PAYLOAD - 3);

            // Sealed all at once (in pairs) or one packet per call.
            let mut together = Vec::new();
            Sealer::new(&ENC, &MAC).seal(&plain, &mut together);
            let mut single = Sealer::new(&ENC, &MAC);
            let mut apart = Vec::new();
            for chunk in plain.chunks(MAX_PAYLOAD) {
                single.seal(chunk, &mut apart);
            }
            assert_eq!(together, apart, "{packets} packets");

            let mut out = Vec::new();
            let mut opener = Opener::new(&ENC, &MAC);
            opener.open_all(&together, &mut out).expect("opens");
            assert_eq!(out, plain, "{packets} packets");
        }
    }

    #[test]
    fn open_all_stops_at_a_bad_packet_of_a_pair() {
        let plain = vec![0x42; 3 * MAX_PAYLOAD];
        let mut sealed = Vec::new();
        Sealer::new(&ENC, &MAC).seal(&plain, &mut sealed);

        // Spoil the second packet: the first one's plaintext comes out.
        sealed[PACKET_LEN + 7] ^= 1;
        let mut out = Vec::new();
        let r = Opener::new(&ENC, &MAC).open_all(&sealed, &mut out);
        assert_eq!(r, Err(PacketError::BadMac));
        assert_eq!(out, vec![0x42; MAX_PAYLOAD]);
    }

    #[test]
    fn open_all_stops_at_a_bad_length_in_either_slot_of_a_pair() {
        for bad in 0..4 {
            // Four packets; packet `bad` says 1025 bytes under a good MAC.
            let mut sealer = Sealer::new(&ENC, &MAC);
            let mut sealed = Vec::new();
            for i in 0..4u8 {
                let mut padded = [i; PADDED_LEN];
                let len: u32 = if i == bad { 1025 } else { 3 };
                padded[MAX_PAYLOAD..].copy_from_slice(&len.to_be_bytes());
                sealed.extend(seal_raw(&mut sealer, &padded));
            }

            let mut out = Vec::new();
            let r = Opener::new(&ENC, &MAC).open_all(&sealed, &mut out);
            assert_eq!(r, Err(PacketError::BadLength), "bad packet {bad}");
            let want: Vec<u8> = (0..bad).flat_map(|i| [i; 3]).collect();
            assert_eq!(out, want, "bad packet {bad}");
        }
    }

    #[test]
    fn open_all_leaves_a_partial_packet_alone() {
        let mut sealed = Vec::new();
        Sealer::new(&ENC, &MAC).seal(b"whole", &mut sealed);
        sealed.extend_from_slice(&[0xEE; PACKET_LEN - 1]);
        let mut out = Vec::new();
        Opener::new(&ENC, &MAC)
            .open_all(&sealed, &mut out)
            .expect("the whole packet opens");
        assert_eq!(out, b"whole");
    }

    #[test]
    fn length_over_1024_with_valid_mac_is_rejected() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut opener = Opener::new(&ENC, &MAC);
        let mut out = b"x".to_vec();

        for len in [1025u32, 0xffff_ffff] {
            let mut padded = [0u8; PADDED_LEN];
            padded[MAX_PAYLOAD..].copy_from_slice(&len.to_be_bytes());
            let packet = seal_raw(&mut sealer, &padded);
            let r = opener.open(as_packet(&packet), &mut out);
            assert_eq!(r, Err(PacketError::BadLength));
            assert_eq!(out, b"x");
            // Keep the counters in step for the next round.
            opener.keys.take_number();
        }
    }

    #[test]
    fn length_zero_and_1024_are_accepted() {
        let mut sealer = Sealer::new(&ENC, &MAC);
        let mut opener = Opener::new(&ENC, &MAC);
        let mut out = Vec::new();

        let mut padded = [0u8; PADDED_LEN];
        let packet = seal_raw(&mut sealer, &padded);
        opener.open(as_packet(&packet), &mut out).expect("opens");
        assert!(out.is_empty());

        padded = [0x5a; PADDED_LEN];
        padded[MAX_PAYLOAD..].copy_from_slice(&1024u32.to_be_bytes());
        let packet = seal_raw(&mut sealer, &padded);
        opener.open(as_packet(&packet), &mut out).expect("opens");
        assert_eq!(out, vec![0x5a; 1024]);
    }

    #[test]
    fn ciphertext_layout_matches_spec() {
        // Encrypting zeros yields the raw keystream: block i of packet n
        // is AES(E, u64(n) || u64(i)).
        use aes::cipher::BlockCipherEncrypt;
        use ctr::cipher::Block;
        let mut sealer = Sealer::new(&ENC, &MAC);
        let zeros = [0u8; PADDED_LEN];
        seal_raw(&mut sealer, &zeros);
        let packet = seal_raw(&mut sealer, &zeros);

        let aes = <Aes256Enc as KeyInit>::new((&ENC).into());
        for i in [0u64, 1, 63, 64] {
            let mut block = Block::<Aes256Enc>::default();
            block[..8].copy_from_slice(&1u64.to_be_bytes());
            block[8..].copy_from_slice(&i.to_be_bytes());
            aes.encrypt_block(&mut block);
            let at = i as usize * 16;
            let end = (at + 16).min(PADDED_LEN);
            assert_eq!(&packet[at..end], &block[..end - at], "block {i}");
        }

        use hmac::Hmac;
        use hmac::digest::{FixedOutput, Update};
        use sha2::Sha256;
        let mut mac = Hmac::<Sha256>::new_from_slice(&MAC).expect("any");
        mac.update(&packet[..PADDED_LEN]);
        mac.update(&1u64.to_be_bytes());
        let tag: [u8; 32] = mac.finalize_fixed().into();
        assert_eq!(&packet[PADDED_LEN..], &tag);
    }
}
