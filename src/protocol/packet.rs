//! Data packets: 1060 bytes each, AES-256-CTR then HMAC-SHA256.

/// Bytes of one packet on the wire.
pub const PACKET_LEN: usize = 1060;
/// The largest plaintext one packet carries.
pub const MAX_PAYLOAD: usize = 1024;

/// Why an incoming packet was refused. Any of these ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The MAC did not match: a wrong key, a corrupted or forged packet.
    #[error("packet authentication failed")]
    BadMac,
    /// The MAC matched but the length field exceeds 1024.
    #[error("packet length field out of range")]
    BadLength,
}

/// Seals plaintext into packets for one direction of one connection.
pub struct Sealer {}

impl Sealer {
    /// Creates a sealer from the direction's encryption and MAC keys,
    /// numbering packets from 0.
    pub fn new(enc_key: &[u8; 32], mac_key: &[u8; 32]) -> Sealer {
        let _ = (enc_key, mac_key);
        unimplemented!()
    }

    /// Appends to `out` the packets that carry `plaintext`, cut into pieces
    /// of at most 1024 bytes. An empty `plaintext` appends nothing.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        let _ = (plaintext, out);
        unimplemented!()
    }
}

/// Opens packets from one direction of one connection.
pub struct Opener {}

impl Opener {
    /// Creates an opener from the direction's encryption and MAC keys.
    pub fn new(enc_key: &[u8; 32], mac_key: &[u8; 32]) -> Opener {
        let _ = (enc_key, mac_key);
        unimplemented!()
    }

    /// Checks and decrypts one packet, appending its plaintext to `out`.
    pub fn open(
        &mut self,
        packet: &[u8; PACKET_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        let _ = (packet, out);
        unimplemented!()
    }
}
