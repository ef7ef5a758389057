//! The handshake: nonces, MACed Diffie-Hellman values, derived keys.
//!
//! Client and server each send a 32-byte nonce and read the peer's. From
//! the key and both nonces they derive `dk1`, which MACs the DH values
//! they then exchange; from the key, the nonces and the DH result they
//! derive `dk2`, the four keys of the two packet streams.
//!
//! The Diffie-Hellman exponentiations run inline on the calling task:
//! each costs a few milliseconds of CPU time.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hmac::Hmac;
use hmac::digest::{FixedOutput, KeyInit, Update};
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::dh::{self, PrivateValue, Y_LEN, Y_ONE};
use super::{ForwardSecrecy, Key, Opener, Sealer};

/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Bytes of a MAC in the handshake: HMAC-SHA256.
pub const MAC_LEN: usize = 32;

/// Bytes of a MACed DH value on the wire: `y || HMAC(dhmac, y)`.
pub const DH_MESSAGE_LEN: usize = Y_LEN + MAC_LEN;

/// Why a handshake failed. The variants say who is to blame.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing the encrypted socket failed. The cause is in
    /// the message rather than in `source()`, so that it is printed once.
    #[error("i/o: {0}")]
    Io(std::io::Error),
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

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> HandshakeError {
        io_error(e)
    }
}

/// Maps an I/O error, turning an early end of stream into
/// [`HandshakeError::Eof`].
fn io_error(e: io::Error) -> HandshakeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        HandshakeError::Eof
    } else {
        HandshakeError::Io(e)
    }
}

/// The keys of an established connection: one sealer for what this side
/// sends, one opener for what it receives.
pub struct SessionKeys {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
}

/// `dk1 = PBKDF2-HMAC-SHA256(K, nonce_C || nonce_S, 1, 64)`, split in
/// two: the keys that MAC the client's and the server's DH values.
/// Public for known-answer tests; wiped when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Dk1 {
    keys: [[u8; 32]; 2],
}

impl Dk1 {
    /// The first 32 bytes, `dhmac_C`: MACs the client's `y_C`.
    pub fn dhmac_c(&self) -> &[u8; 32] {
        &self.keys[0]
    }

    /// The last 32 bytes, `dhmac_S`: MACs the server's `y_S`.
    pub fn dhmac_s(&self) -> &[u8; 32] {
        &self.keys[1]
    }
}

/// `dk2 = PBKDF2-HMAC-SHA256(K, nonce_C || nonce_S || y_SC, 1, 128)`,
/// split into the four packet keys `E_C, H_C, E_S, H_S`. Public for
/// known-answer tests; wiped when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Dk2 {
    keys: [[u8; 32]; 4],
}

impl Dk2 {
    /// All 128 bytes, in wire order.
    pub fn as_bytes(&self) -> &[u8] {
        self.keys.as_flattened()
    }

    /// `E_C`: encrypts client-to-server packets.
    pub fn e_c(&self) -> &[u8; 32] {
        &self.keys[0]
    }

    /// `H_C`: MACs client-to-server packets.
    pub fn h_c(&self) -> &[u8; 32] {
        &self.keys[1]
    }

    /// `E_S`: encrypts server-to-client packets.
    pub fn e_s(&self) -> &[u8; 32] {
        &self.keys[2]
    }

    /// `H_S`: MACs server-to-client packets.
    pub fn h_s(&self) -> &[u8; 32] {
        &self.keys[3]
    }

    /// The client's session keys: it seals with `E_C`/`H_C`.
    fn client_keys(&self) -> SessionKeys {
        SessionKeys {
            sealer: Sealer::new(self.e_c(), self.h_c()),
            opener: Opener::new(self.e_s(), self.h_s()),
        }
    }

    /// The server's session keys: it seals with `E_S`/`H_S`.
    fn server_keys(&self) -> SessionKeys {
        SessionKeys {
            sealer: Sealer::new(self.e_s(), self.h_s()),
            opener: Opener::new(self.e_c(), self.h_c()),
        }
    }
}

/// Derives [`Dk1`] from the key and both nonces (handshake step 2).
/// Deterministic; public for known-answer tests.
pub fn derive_dk1(
    key: &Key,
    nonce_c: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
) -> Dk1 {
    // The nonces are public; the output goes straight into `Dk1`.
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(nonce_c);
    salt[NONCE_LEN..].copy_from_slice(nonce_s);

    let mut dk1 = Dk1 { keys: [[0; 32]; 2] };
    let out = dk1.keys.as_flattened_mut();
    pbkdf2::pbkdf2_hmac::<Sha256>(key.as_bytes(), &salt, 1, out);
    dk1
}

/// Derives [`Dk2`] from the key, both nonces and the shared DH value
/// `y_SC` (handshake step 6). Deterministic; public for known-answer
/// tests.
pub fn derive_dk2(
    key: &Key,
    nonce_c: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
    y_sc: &[u8; Y_LEN],
) -> Dk2 {
    // The salt holds the secret y_SC, so it is wiped too.
    let mut salt = Zeroizing::new([0u8; 2 * NONCE_LEN + Y_LEN]);
    salt[..NONCE_LEN].copy_from_slice(nonce_c);
    salt[NONCE_LEN..2 * NONCE_LEN].copy_from_slice(nonce_s);
    salt[2 * NONCE_LEN..].copy_from_slice(y_sc);

    let mut dk2 = Dk2 { keys: [[0; 32]; 4] };
    let out = dk2.keys.as_flattened_mut();
    pbkdf2::pbkdf2_hmac::<Sha256>(key.as_bytes(), &*salt, 1, out);
    dk2
}

/// `HMAC-SHA256(dhmac, y)`: the MAC sent after a DH value. Public for
/// known-answer tests.
pub fn dh_value_mac(dhmac: &[u8; 32], y: &[u8; Y_LEN]) -> [u8; MAC_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(dhmac)
        .expect("HMAC accepts keys of any length");
    mac.update(y);
    mac.finalize_fixed().into()
}

/// This side's DH contribution: its private value (none with forward
/// secrecy off) and the `y` it sends.
struct LocalDh {
    private: Option<PrivateValue>,
    y: [u8; Y_LEN],
}

impl LocalDh {
    /// Picks a private value and computes `y`, or uses `y = 1` when
    /// forward secrecy is off.
    fn new(fs: ForwardSecrecy) -> Result<LocalDh, HandshakeError> {
        if fs == ForwardSecrecy::Off {
            return Ok(LocalDh {
                private: None,
                y: Y_ONE,
            });
        }

        let pair = super::ephemeral::take().map_err(io::Error::other)?;
        Ok(LocalDh {
            private: Some(pair.private),
            y: pair.y,
        })
    }

    /// `y_SC`: the peer's `y` raised to our private value, or 1 when
    /// forward secrecy is off.
    fn shared(&self, peer_y: &[u8; Y_LEN]) -> Zeroizing<[u8; Y_LEN]> {
        match &self.private {
            Some(private) => private.shared_value(peer_y),
            None => Zeroizing::new(Y_ONE),
        }
    }
}

/// The 288 bytes `y || HMAC(dhmac, y)`.
fn dh_message(dhmac: &[u8; 32], y: &[u8; Y_LEN]) -> [u8; DH_MESSAGE_LEN] {
    let mut msg = [0u8; DH_MESSAGE_LEN];
    msg[..Y_LEN].copy_from_slice(y);
    msg[Y_LEN..].copy_from_slice(&dh_value_mac(dhmac, y));
    msg
}

/// Splits a received DH message into `y` and its MAC.
fn split_dh_message(msg: &[u8; DH_MESSAGE_LEN]) -> ([u8; Y_LEN], &[u8]) {
    let (y, mac) = msg.split_at(Y_LEN);
    let y = y
        .try_into()
        .expect("a DH message starts with 256 bytes of y");
    (y, mac)
}

/// Checks a peer's `y` once its MAC is known good: below the prime, and
/// not 1 if forward secrecy is required.
fn check_peer_value(
    y: &[u8; Y_LEN],
    fs: ForwardSecrecy,
) -> Result<(), HandshakeError> {
    if !dh::is_below_prime(y) {
        return Err(HandshakeError::BadValue);
    }
    if fs == ForwardSecrecy::Required && dh::is_one(y) {
        return Err(HandshakeError::ForwardSecrecyRefused);
    }
    Ok(())
}

/// Draws a fresh nonce from the operating system's generator.
fn fresh_nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(io::Error::other)?;
    Ok(nonce)
}

/// Sends `ours` and reads as many bytes from the peer at the same time,
/// so that two peers with tiny socket buffers never wait on each other:
/// the nonces, which both sides send at once.
async fn exchange<S, const N: usize>(
    stream: &mut S,
    ours: &[u8; N],
) -> Result<[u8; N], HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut theirs = [0u8; N];
    let mut progress = SendReceive::default();
    poll_fn(|cx| progress.poll(cx, stream, ours, &mut theirs))
        .await
        .map_err(io_error)?;
    Ok(theirs)
}

/// How far a simultaneous write-and-read has got.
#[derive(Default)]
struct SendReceive {
    written: usize,
    flushed: bool,
    read: usize,
}

impl SendReceive {
    /// Drives the write of `out` (then a flush) and the read into `inb`
    /// together; ready when both are done. Each loop ends because every
    /// pass either makes progress on a finite buffer or stops.
    fn poll<S>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        out: &[u8],
        inb: &mut [u8],
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // A peer that has gone makes both fail; its end of stream says
        // more than the write's broken pipe, so the read's error wins.
        let wrote = self.poll_write(cx, stream, out);
        if let Poll::Ready(Err(e)) = self.poll_read(cx, stream, inb) {
            return Poll::Ready(Err(e));
        }
        if let Poll::Ready(Err(e)) = wrote {
            return Poll::Ready(Err(e));
        }

        if self.flushed && self.read == inb.len() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Writes what is left of `out`, then flushes.
    fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        out: &[u8],
    ) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + Unpin,
    {
        while self.written < out.len() {
            let rest = &out[self.written..];
            match Pin::new(&mut *stream).poll_write(cx, rest)? {
                Poll::Ready(0) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(n) => self.written += n,
                Poll::Pending => return Poll::Pending,
            }
        }

        if !self.flushed {
            std::task::ready!(Pin::new(&mut *stream).poll_flush(cx))?;
            self.flushed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads into what is left of `inb`; an end of stream before it is
    /// full is an `UnexpectedEof` error.
    fn poll_read<S>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        inb: &mut [u8],
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
    {
        while self.read < inb.len() {
            let mut buf = ReadBuf::new(&mut inb[self.read..]);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.read += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes all of `bytes` and flushes.
async fn send<S>(stream: &mut S, bytes: &[u8]) -> Result<(), HandshakeError>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(bytes).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)
}

/// Reads one MACed DH message from the peer.
async fn receive_dh<S>(
    stream: &mut S,
) -> Result<[u8; DH_MESSAGE_LEN], HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut msg = [0u8; DH_MESSAGE_LEN];
    stream.read_exact(&mut msg).await.map_err(io_error)?;
    Ok(msg)
}

/// Runs the client side of the handshake over `stream`: both halves of
/// [`client_handshake_start`] and [`ProvenServer::finish`] at once.
///
/// A failure of the operating system's random generator is reported as
/// [`HandshakeError::Io`].
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
    Ok(client_handshake_start(stream, key, fs).await?.finish())
}

/// Runs the client side up to the point where the server has proven that
/// it holds `key`: nonces exchanged, our MACed DH value sent, the
/// server's read and checked. What is left, [`ProvenServer::finish`], is
/// the exponentiation, which needs no more network traffic; a pipe can
/// take its `max_handshakes` permit for that step alone.
///
/// Our key pair is drawn here, before any permit: from the stock made
/// ahead on a blocking thread, or, when a burst has emptied the stock,
/// made inline (64 multiplications). The connections of an encrypt pipe
/// come from its own local clients and are bounded by `max_connections`.
///
/// A failure of the operating system's random generator is reported as
/// [`HandshakeError::Io`].
///
/// Not cancel-safe, as [`client_handshake`].
pub async fn client_handshake_start<'k, S>(
    stream: &mut S,
    key: &'k Key,
    fs: ForwardSecrecy,
) -> Result<ProvenServer<'k>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Steps 1 and 2: nonces, then dk1.
    let nonce_c = fresh_nonce()?;
    let nonce_s = exchange(stream, &nonce_c).await?;
    let dk1 = derive_dk1(key, &nonce_c, &nonce_s);

    // Step 3: send our MACed DH value.
    let local = LocalDh::new(fs)?;
    send(stream, &dh_message(dk1.dhmac_c(), &local.y)).await?;

    // Step 5: read and check the server's.
    let msg = receive_dh(stream).await?;
    let (y_s, mac) = split_dh_message(&msg);
    // Constant time: subtle's ct_eq on the 32-byte MACs.
    let want = dh_value_mac(dk1.dhmac_s(), &y_s);
    if !bool::from(want.ct_eq(mac)) {
        return Err(HandshakeError::BadMac);
    }
    check_peer_value(&y_s, fs)?;

    Ok(ProvenServer {
        key,
        nonce_c,
        nonce_s,
        y_s,
        local,
    })
}

/// A server whose DH value checked out under the client's key. Only
/// [`client_handshake_start`] makes one.
pub struct ProvenServer<'k> {
    key: &'k Key,
    nonce_c: [u8; NONCE_LEN],
    nonce_s: [u8; NONCE_LEN],
    y_s: [u8; Y_LEN],
    local: LocalDh,
}

impl ProvenServer<'_> {
    /// Computes the shared value and derives the session keys: the
    /// client's exponentiation, with no network traffic.
    pub fn finish(self) -> SessionKeys {
        // Step 6: the session keys; the client sends with E_C/H_C.
        let y_sc = self.local.shared(&self.y_s);
        let dk2 = derive_dk2(self.key, &self.nonce_c, &self.nonce_s, &y_sc);
        dk2.client_keys()
    }
}

/// Runs the server side up to the point where the client has proven that
/// it holds one of `keys`: nonces exchanged, the client's MACed DH value
/// read and checked. The server has sent nothing that depends on a key,
/// as in spiped: a peer without the key learns nothing it could test a
/// guessed key against, and costs no Diffie-Hellman work.
///
/// Every key is tried, in constant time, so timing does not tell which
/// key (if any) matched. An empty `keys` fails with `BadMac`. A failure
/// of the operating system's random generator is reported as
/// [`HandshakeError::Io`], here and in [`ProvenClient::finish`].
///
/// Not cancel-safe, as [`client_handshake`].
pub async fn server_handshake_start<S>(
    stream: &mut S,
    keys: &[Arc<Key>],
    fs: ForwardSecrecy,
) -> Result<ProvenClient, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Step 1: nonces.
    let nonce_s = fresh_nonce()?;
    let nonce_c = exchange(stream, &nonce_s).await?;

    // Step 4: the client's DH value must carry a MAC under one key.
    let msg = receive_dh(stream).await?;
    let (y_c, mac) = split_dh_message(&msg);
    let matched = match_key(keys, &nonce_c, &nonce_s, &y_c, mac);
    let Some((key_index, dhmac_s)) = matched else {
        return Err(HandshakeError::BadMac);
    };
    check_peer_value(&y_c, fs)?;

    Ok(ProvenClient {
        key: Arc::clone(&keys[key_index]),
        key_index,
        nonce_c,
        nonce_s,
        dhmac_s,
        y_c,
        fs,
    })
}

/// Finds the first key under which `mac` is the MAC of `y_c`, and returns
/// its index and `dhmac_S`.
///
/// Constant time in which key matched: every key's MAC is computed and
/// compared with subtle's ct_eq, and the index and `dhmac_S` are picked
/// with subtle's conditional_assign; no early exit.
fn match_key(
    keys: &[Arc<Key>],
    nonce_c: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
    y_c: &[u8; Y_LEN],
    mac: &[u8],
) -> Option<(usize, Zeroizing<[u8; 32]>)> {
    let mut found = Choice::from(0);
    let mut index = 0u64;
    let mut dhmac_s = Zeroizing::new([0u8; 32]);

    for (i, key) in keys.iter().enumerate() {
        let dk1 = derive_dk1(key, nonce_c, nonce_s);
        let hit = dh_value_mac(dk1.dhmac_c(), y_c).ct_eq(mac);

        // Take this key only if it is the first hit.
        let take = hit & !found;
        index.conditional_assign(&(i as u64), take);
        for (d, s) in dhmac_s.iter_mut().zip(dk1.dhmac_s().iter()) {
            d.conditional_assign(s, take);
        }
        found |= hit;
    }

    let index = usize::try_from(index).expect("index came from a usize");
    bool::from(found).then_some((index, dhmac_s))
}

/// A client whose DH value checked out under one of the server's keys.
/// Only [`server_handshake_start`] makes one, so the server cannot send
/// its own DH value before the check.
pub struct ProvenClient {
    key: Arc<Key>,
    key_index: usize,
    nonce_c: [u8; NONCE_LEN],
    nonce_s: [u8; NONCE_LEN],
    dhmac_s: Zeroizing<[u8; 32]>,
    y_c: [u8; Y_LEN],
    fs: ForwardSecrecy,
}

impl ProvenClient {
    /// Which of the keys given to [`server_handshake_start`] matched.
    pub fn key_index(&self) -> usize {
        self.key_index
    }

    /// Sends the server's DH value and derives the session keys.
    ///
    /// The 288-byte write goes to a socket that has carried only the
    /// 32-byte nonce so far, so it completes without waiting on the peer.
    ///
    /// Not cancel-safe, as [`client_handshake`].
    pub async fn finish<S>(
        self,
        stream: &mut S,
    ) -> Result<SessionKeys, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Step 4, second half: our MACed DH value.
        let local = LocalDh::new(self.fs)?;
        send(stream, &dh_message(&self.dhmac_s, &local.y)).await?;

        // Step 6: the session keys; the server sends with E_S/H_S.
        let y_sc = local.shared(&self.y_c);
        let dk2 = derive_dk2(&self.key, &self.nonce_c, &self.nonce_s, &y_sc);
        Ok(dk2.server_keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    use ForwardSecrecy::{Off, On, Required};

    /// A duplex buffer this small forces partial reads and writes.
    const BUF: usize = 7;

    fn key(byte: u8) -> Arc<Key> {
        Arc::new(Key::from_file_contents(&[byte; 32]))
    }

    type Outcome = (
        Result<SessionKeys, HandshakeError>,
        Result<(usize, SessionKeys), HandshakeError>,
    );

    /// Runs a client and a server against each other; each side drops its
    /// end of the stream when it is done, as a real pipe would.
    async fn run(
        client_key: Arc<Key>,
        client_fs: ForwardSecrecy,
        server_keys: Vec<Arc<Key>>,
        server_fs: ForwardSecrecy,
    ) -> Outcome {
        let (mut c, mut s) = tokio::io::duplex(BUF);
        let client = async move {
            client_handshake(&mut c, &client_key, client_fs).await
        };
        let server = async move {
            let proven =
                server_handshake_start(&mut s, &server_keys, server_fs).await?;
            let index = proven.key_index();
            Ok((index, proven.finish(&mut s).await?))
        };
        tokio::join!(client, server)
    }

    /// Seals `msg` on one side and opens it on the other.
    fn carry(from: &mut SessionKeys, to: &mut SessionKeys, msg: &[u8]) {
        let mut wire = Vec::new();
        from.sealer.seal(msg, &mut wire);
        let mut got = Vec::new();
        for packet in wire.chunks(super::super::PACKET_LEN) {
            let packet = packet.try_into().expect("whole packets");
            to.opener.open(packet, &mut got).expect("opens");
        }
        assert_eq!(got, msg);
    }

    async fn expect_success(
        client_fs: ForwardSecrecy,
        server_fs: ForwardSecrecy,
    ) {
        let (c, s) = run(key(1), client_fs, vec![key(1)], server_fs).await;
        let mut c = c.expect("client succeeds");
        let (index, mut s) = s.expect("server succeeds");
        assert_eq!(index, 0);
        carry(&mut c, &mut s, b"client to server");
        carry(&mut s, &mut c, &[0xa5; 3000]);
        carry(&mut c, &mut s, b"and back again");
    }

    #[tokio::test]
    async fn on_on() {
        expect_success(On, On).await;
    }

    #[tokio::test]
    async fn on_off() {
        expect_success(On, Off).await;
    }

    #[tokio::test]
    async fn off_on() {
        expect_success(Off, On).await;
    }

    #[tokio::test]
    async fn off_off() {
        expect_success(Off, Off).await;
    }

    #[tokio::test]
    async fn required_required() {
        expect_success(Required, Required).await;
    }

    #[tokio::test]
    async fn required_client_refuses_off_server() {
        let (c, s) = run(key(1), Required, vec![key(1)], Off).await;
        assert!(matches!(c, Err(HandshakeError::ForwardSecrecyRefused)));
        // The server finished its half before the client looked.
        assert!(s.is_ok());
    }

    #[tokio::test]
    async fn required_server_refuses_off_client() {
        let (c, s) = run(key(1), Off, vec![key(1)], Required).await;
        assert!(matches!(s, Err(HandshakeError::ForwardSecrecyRefused)));
        assert!(matches!(c, Err(HandshakeError::Eof)));
    }

    #[tokio::test]
    async fn wrong_key_is_bad_mac() {
        let (c, s) = run(key(1), On, vec![key(2)], On).await;
        assert!(matches!(s, Err(HandshakeError::BadMac)));
        assert!(matches!(c, Err(HandshakeError::Eof)));
    }

    #[tokio::test]
    async fn no_keys_is_bad_mac() {
        let (_, s) = run(key(1), On, vec![], On).await;
        assert!(matches!(s, Err(HandshakeError::BadMac)));
    }

    #[tokio::test]
    async fn second_key_matches() {
        let keys = vec![key(2), key(1), key(3)];
        let (c, s) = run(key(1), On, keys, On).await;
        let mut c = c.expect("client succeeds");
        let (index, mut s) = s.expect("server succeeds");
        assert_eq!(index, 1);
        carry(&mut c, &mut s, b"rotated");
        carry(&mut s, &mut c, b"ok");
    }

    #[tokio::test]
    async fn duplicate_keys_pick_the_first() {
        let keys = vec![key(2), key(1), key(1)];
        let (_, s) = run(key(1), On, keys, On).await;
        assert_eq!(s.expect("server succeeds").0, 1);
    }

    /// A hand-driven client: exchanges nonces with a server holding
    /// `keys`, sends `y` with either its correct MAC under key 1 or
    /// garbage, then reads to the end. Returns the server's result and
    /// every byte the server sent after its nonce.
    async fn fake_client_of(
        keys: Vec<Arc<Key>>,
        y: [u8; Y_LEN],
        good_mac: bool,
    ) -> (Result<ProvenClient, HandshakeError>, Vec<u8>) {
        let k = key(1);
        let (mut c, mut s) = tokio::io::duplex(BUF);
        let server =
            async move { server_handshake_start(&mut s, &keys, On).await };
        let client = async move {
            let nonce_c = [0x33; NONCE_LEN];
            let nonce_s = exchange(&mut c, &nonce_c).await?;
            let mut msg = [0x5c; DH_MESSAGE_LEN];
            msg[..Y_LEN].copy_from_slice(&y);
            if good_mac {
                let dk1 = derive_dk1(&k, &nonce_c, &nonce_s);
                msg = dh_message(dk1.dhmac_c(), &y);
            }
            send(&mut c, &msg).await?;
            let mut after_nonce = Vec::new();
            c.read_to_end(&mut after_nonce).await.map_err(io_error)?;
            Ok::<_, HandshakeError>(after_nonce)
        };
        let (server, client) = tokio::join!(server, client);
        let after_nonce = client.expect("fake client runs");
        (server, after_nonce)
    }

    /// [`fake_client_of`] against a server with the one key 1.
    async fn fake_client(
        y: [u8; Y_LEN],
        good_mac: bool,
    ) -> Result<ProvenClient, HandshakeError> {
        fake_client_of(vec![key(1)], y, good_mac).await.0
    }

    #[tokio::test]
    async fn garbage_is_bad_mac() {
        let r = fake_client([0x42; Y_LEN], false).await;
        assert!(matches!(r, Err(HandshakeError::BadMac)));
    }

    /// A peer without the key gets the server's nonce and nothing more,
    /// with one key or several.
    #[tokio::test]
    async fn server_sends_nothing_keyed_before_the_proof() {
        for keys in [vec![key(1)], vec![key(2), key(1)]] {
            let n = keys.len();
            let (r, after) = fake_client_of(keys, Y_ONE, false).await;
            assert!(matches!(r, Err(HandshakeError::BadMac)), "{n} keys");
            assert_eq!(after, Vec::<u8>::new(), "{n} keys");
        }
    }

    #[tokio::test]
    async fn y_at_or_above_prime_is_bad_value() {
        let p = crypto_bigint::U2048::from_be_hex(PRIME_HEX_FOR_TESTS);
        let p: [u8; Y_LEN] =
            p.to_be_bytes().as_slice().try_into().expect("256 bytes");
        for y in [p, [0xff; Y_LEN]] {
            let r = fake_client(y, true).await;
            assert!(matches!(r, Err(HandshakeError::BadValue)));
        }

        // Just below the prime passes the check.
        let mut below = p;
        below[Y_LEN - 1] -= 1;
        assert!(fake_client(below, true).await.is_ok());
    }

    /// RFC 3526 group 14, as in `dh`, written out again so the test does
    /// not trust the constant under test.
    const PRIME_HEX_FOR_TESTS: &str = concat!(
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

    /// Feeds `bytes` to the server and then closes the stream.
    async fn server_after(
        bytes: &[u8],
    ) -> Result<ProvenClient, HandshakeError> {
        let (mut c, mut s) = tokio::io::duplex(BUF);
        let server =
            async move { server_handshake_start(&mut s, &[key(1)], On).await };
        let client = async move {
            let mut sink = [0u8; NONCE_LEN];
            let mut progress = SendReceive::default();
            let r = poll_fn(|cx| progress.poll(cx, &mut c, bytes, &mut sink));
            r.await.expect("client side of the test stream");
            drop(c);
        };
        tokio::join!(server, client).0
    }

    #[tokio::test]
    async fn eof_mid_handshake_is_eof() {
        for len in [0, 5, NONCE_LEN, NONCE_LEN + 100] {
            let r = server_after(&vec![0x11; len]).await;
            assert!(matches!(r, Err(HandshakeError::Eof)), "len {len}");
        }
    }

    #[tokio::test]
    async fn client_sees_eof_when_server_vanishes() {
        let (mut c, s): (DuplexStream, DuplexStream) = tokio::io::duplex(BUF);
        let server = async move {
            // Take the nonce and the DH message, answer only a nonce.
            let mut s = s;
            let mut buf = [0u8; NONCE_LEN + DH_MESSAGE_LEN];
            let out = [0x77; NONCE_LEN];
            let mut progress = SendReceive::default();
            poll_fn(|cx| progress.poll(cx, &mut s, &out, &mut buf))
                .await
                .expect("fake server exchanges");
        };
        let k = key(1);
        let client = client_handshake(&mut c, &k, On);
        let (_, r) = tokio::join!(server, client);
        assert!(matches!(r, Err(HandshakeError::Eof)));
    }

    #[tokio::test]
    async fn client_rejects_bad_server_mac() {
        let (mut c, s) = tokio::io::duplex(BUF);
        let server = async move {
            let mut s = s;
            let mut buf = [0u8; NONCE_LEN + DH_MESSAGE_LEN];
            let out = [0x77; NONCE_LEN + DH_MESSAGE_LEN];
            let mut progress = SendReceive::default();
            poll_fn(|cx| progress.poll(cx, &mut s, &out, &mut buf))
                .await
                .expect("fake server exchanges");
        };
        let k = key(1);
        let client = client_handshake(&mut c, &k, On);
        let (_, r) = tokio::join!(server, client);
        assert!(matches!(r, Err(HandshakeError::BadMac)));
    }

    #[test]
    fn io_errors_map() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(io_error(eof), HandshakeError::Eof));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(io_error(reset), HandshakeError::Io(_)));
    }
}
