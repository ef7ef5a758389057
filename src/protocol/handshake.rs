//! The handshake: nonces, MACed Diffie-Hellman values, derived keys.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{ForwardSecrecy, Key, Opener, Sealer};

/// Why a handshake failed. The variants say who is to blame.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing the encrypted socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before the handshake finished.
    #[error("peer closed the connection during the handshake")]
    Eof,
    /// The peer's DH value carried a wrong MAC: a wrong key, or not spiped.
    #[error("peer's handshake MAC is wrong (wrong key, or not a spiped peer)")]
    BadMac,
    /// The peer's DH value was not below the group's prime.
    #[error("peer's Diffie-Hellman value is out of range")]
    BadValue,
    /// `forward_secrecy = "required"` and the peer sent `y = 1`.
    #[error("peer has forward secrecy off, and it is required")]
    ForwardSecrecyRefused,
}

/// The keys of an established connection: one sealer for what this side
/// sends, one opener for what it receives.
pub struct SessionKeys {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
}

/// Runs the client side of the handshake over `stream`.
///
/// Not cancel-safe: a cancelled handshake leaves the stream mid-protocol,
/// so drop the stream with it.
pub async fn client_handshake<S>(
    stream: &mut S,
    key: &Key,
    fs: ForwardSecrecy,
) -> Result<SessionKeys, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = (stream, key, fs);
    unimplemented!()
}

/// Runs the server side up to the point where the client has proven that
/// it holds one of `keys`: nonces exchanged, the client's MACed DH value
/// read and checked. The server has sent nothing that depends on a key.
///
/// Not cancel-safe, as [`client_handshake`].
pub async fn server_handshake_start<S>(
    stream: &mut S,
    keys: &[std::sync::Arc<Key>],
    fs: ForwardSecrecy,
) -> Result<ProvenClient, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = (stream, keys, fs);
    unimplemented!()
}

/// A client whose DH value checked out under one of the server's keys.
/// Only [`server_handshake_start`] makes one, so the server cannot send
/// its own DH value before the check.
pub struct ProvenClient {}

impl ProvenClient {
    /// Which of the keys given to [`server_handshake_start`] matched.
    pub fn key_index(&self) -> usize {
        unimplemented!()
    }

    /// Sends the server's DH value and derives the session keys.
    ///
    /// Not cancel-safe, as [`client_handshake`].
    pub async fn finish<S>(
        self,
        stream: &mut S,
    ) -> Result<SessionKeys, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _ = stream;
        unimplemented!()
    }
}
