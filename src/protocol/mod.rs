//! The spiped wire protocol: the shared key, the handshake and the packet
//! format, byte for byte as spiped 1.6 speaks them.
//!
//! Nothing here touches sockets beyond the handshake's reads and writes on a
//! stream it is given; the data path lives in [`crate::connection`].

pub mod dh;
pub mod ephemeral;
pub mod handshake;
pub mod key;
mod mac;
pub mod packet;
#[cfg(target_arch = "x86_64")]
mod sha_ni;

pub use handshake::{
    HandshakeError, ProvenClient, ProvenServer, SessionKeys, client_handshake,
    client_handshake_start, server_handshake_start,
};
pub use key::Key;
pub use packet::{MAX_PAYLOAD, Opener, PACKET_LEN, PacketError, Sealer};

/// How a side treats Diffie-Hellman forward secrecy (spiped `-f` / `-g`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardSecrecy {
    /// Do the full exchange (spiped's default).
    #[default]
    On,
    /// Send `y = 1` and skip all modular arithmetic (spiped `-f`).
    Off,
    /// Do the exchange, and refuse a peer that sent `y = 1` (spiped `-g`).
    Required,
}
