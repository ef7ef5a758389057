//! Property tests of the protocol layer, with proptest:
//!
//! - sealing then opening gives back the stream, however the plaintext
//!   is cut into `seal` calls and however the sealed bytes are cut into
//!   reads;
//! - any single flipped bit in any packet of a sealed stream is refused,
//!   and the packets before it still open;
//! - the handshake over a byte-at-a-time stream (`tokio::io::duplex(1)`)
//!   gives interoperating keys for every forward-secrecy pairing that
//!   must succeed, and refuses the two that must not.
//!
//! Run in release mode (`cargo test --release --test properties`): the
//! handshake cases do 2048-bit exponentiations.

use std::sync::Arc;

use proptest::prelude::*;
use spipes::protocol::{
    ForwardSecrecy, HandshakeError, Key, MAX_PAYLOAD, Opener, PACKET_LEN,
    PacketError, Sealer, SessionKeys, client_handshake, server_handshake_start,
};

/// Encryption and MAC keys for the packet properties.
fn packet_keys() -> impl Strategy<Value = ([u8; 32], [u8; 32])> {
    (any::<[u8; 32]>(), any::<[u8; 32]>())
}

/// Cuts `data` at the given fractions (each in 0..=1 of the length,
/// sorted), so that pieces may be empty, short, or span many packets.
fn cut<'a>(data: &'a [u8], fractions: &[f64]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = fractions
        .iter()
        .map(|f| ((data.len() as f64) * f) as usize)
        .map(|p| p.min(data.len()))
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut at = 0;
    for p in points {
        pieces.push(&data[at..p]);
        at = p;
    }
    pieces.push(&data[at..]);
    pieces
}

/// A receiver that is fed sealed bytes in arbitrary pieces and opens
/// each packet once all of it has arrived, as the relay does.
struct Receiver {
    opener: Opener,
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl Receiver {
    fn new(enc: &[u8; 32], mac: &[u8; 32]) -> Receiver {
        Receiver {
            opener: Opener::new(enc, mac),
            pending: Vec::new(),
            out: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), PacketError> {
        self.pending.extend_from_slice(bytes);
        let whole = self.pending.len() - self.pending.len() % PACKET_LEN;
        for packet in self.pending[..whole].chunks_exact(PACKET_LEN) {
            let packet = packet.try_into().expect("whole packets");
            self.opener.open(packet, &mut self.out)?;
        }
        self.pending.drain(..whole);
        Ok(())
    }
}

/// The packets one `seal` call of `len` bytes makes.
fn packets_for(len: usize) -> usize {
    len.div_ceil(MAX_PAYLOAD)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any cutting of the plaintext into `seal` calls, and any cutting
    /// of the sealed bytes into reads, gives back the plaintext.
    #[test]
    fn seal_then_open_round_trips(
        (enc, mac) in packet_keys(),
        data in proptest::collection::vec(any::<u8>(), 0..20_000),
        seal_cuts in proptest::collection::vec(0.0f64..=1.0, 0..12),
        read_cuts in proptest::collection::vec(0.0f64..=1.0, 0..24),
    ) {
        let mut sealer = Sealer::new(&enc, &mac);
        let mut sealed = Vec::new();
        let mut packets = 0;
        for piece in cut(&data, &seal_cuts) {
            sealer.seal(piece, &mut sealed);
            packets += packets_for(piece.len());
        }
        prop_assert_eq!(sealed.len(), packets * PACKET_LEN);

        let mut receiver = Receiver::new(&enc, &mac);
        for piece in cut(&sealed, &read_cuts) {
            prop_assert_eq!(receiver.feed(piece), Ok(()));
        }
        prop_assert!(receiver.pending.is_empty());
        prop_assert_eq!(receiver.out, data);
    }

    /// A single flipped bit anywhere in a sealed stream is refused at
    /// its packet, and every packet before it still opens.
    #[test]
    fn any_flipped_bit_is_refused(
        (enc, mac) in packet_keys(),
        data in proptest::collection::vec(any::<u8>(), 1..6_000),
        bit_fraction in 0.0f64..1.0,
    ) {
        let mut sealer = Sealer::new(&enc, &mac);
        let mut sealed = Vec::new();
        sealer.seal(&data, &mut sealed);

        let bits = sealed.len() * 8;
        let bit = ((bits as f64 * bit_fraction) as usize).min(bits - 1);
        sealed[bit / 8] ^= 1 << (bit % 8);
        let bad_packet = bit / 8 / PACKET_LEN;

        let mut opener = Opener::new(&enc, &mac);
        let mut out = Vec::new();
        for (i, packet) in sealed.chunks_exact(PACKET_LEN).enumerate() {
            let packet = packet.try_into().expect("whole packets");
            let before = out.len();
            let result = opener.open(packet, &mut out);
            if i < bad_packet {
                prop_assert_eq!(result, Ok(()));
            } else {
                prop_assert_eq!(result, Err(PacketError::BadMac));
                prop_assert_eq!(out.len(), before, "nothing appended");
                break;
            }
        }
        prop_assert_eq!(&out[..], &data[..bad_packet * MAX_PAYLOAD]);
    }
}

/// A forward-secrecy mode from an index.
fn mode(i: u8) -> ForwardSecrecy {
    match i % 3 {
        0 => ForwardSecrecy::On,
        1 => ForwardSecrecy::Off,
        _ => ForwardSecrecy::Required,
    }
}

/// Whether a client in mode `c` and a server in mode `s` must agree:
/// all pairings but "required" against "off".
fn must_succeed(c: ForwardSecrecy, s: ForwardSecrecy) -> bool {
    use ForwardSecrecy::{Off, Required};
    !matches!((c, s), (Required, Off) | (Off, Required))
}

/// Seals `message` with `from` and opens it with `to`, one packet at a
/// time.
fn one_way(
    from: &mut SessionKeys,
    to: &mut SessionKeys,
    message: &[u8],
) -> Result<Vec<u8>, PacketError> {
    let mut sealed = Vec::new();
    from.sealer.seal(message, &mut sealed);
    let mut out = Vec::new();
    for packet in sealed.chunks_exact(PACKET_LEN) {
        let packet = packet.try_into().expect("whole packets");
        to.opener.open(packet, &mut out)?;
    }
    Ok(out)
}

/// The outcome of one handshake between two tasks over `duplex(1)`.
struct Outcome {
    client: Result<SessionKeys, HandshakeError>,
    server: Result<(usize, SessionKeys), HandshakeError>,
}

/// Runs the client (with `client_key`) and the server (with
/// `server_keys`) against each other over a one-byte duplex pipe.
fn handshake(
    client_key: Arc<Key>,
    server_keys: Vec<Arc<Key>>,
    client_fs: ForwardSecrecy,
    server_fs: ForwardSecrecy,
) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async move {
        let (mut c, mut s) = tokio::io::duplex(1);
        let client = async move {
            let r = client_handshake(&mut c, &client_key, client_fs).await;
            // Dropping the stream lets a waiting server see the end.
            drop(c);
            r
        };
        let server = async move {
            let r = async {
                let proven =
                    server_handshake_start(&mut s, &server_keys, server_fs)
                        .await?;
                let index = proven.key_index();
                Ok((index, proven.finish(&mut s).await?))
            }
            .await;
            drop(s);
            r
        };
        let (client, server) = tokio::join!(client, server);
        Outcome { client, server }
    })
}

proptest! {
    // Each case does up to four 2048-bit exponentiations.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Pairings that must succeed give keys that interoperate both ways;
    /// the server names the key the client used.
    #[test]
    fn handshake_over_one_byte_pipe_interoperates(
        c in 0u8..3,
        s in 0u8..3,
        key_files in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 1..64), 1..4),
        pick in any::<prop::sample::Index>(),
        up in proptest::collection::vec(any::<u8>(), 1..4_000),
        down in proptest::collection::vec(any::<u8>(), 1..4_000),
    ) {
        let (client_fs, server_fs) = (mode(c), mode(s));
        prop_assume!(must_succeed(client_fs, server_fs));
        let keys: Vec<Arc<Key>> = key_files
            .iter()
            .map(|f| Arc::new(Key::from_file_contents(f)))
            .collect();
        let index = pick.index(keys.len());
        // Equal key files make equal keys: the first match wins.
        let want_index = keys
            .iter()
            .position(|k| **k == *keys[index])
            .expect("the key is in the list");

        let outcome =
            handshake(keys[index].clone(), keys.clone(), client_fs, server_fs);
        let mut client = outcome.client.expect("client handshake");
        let (got_index, mut server) = outcome.server.expect("server handshake");
        prop_assert_eq!(got_index, want_index);

        prop_assert_eq!(one_way(&mut client, &mut server, &up), Ok(up.clone()));
        prop_assert_eq!(one_way(&mut server, &mut client, &down), Ok(down));
        // The streams stay in step: a second message opens too.
        prop_assert_eq!(one_way(&mut client, &mut server, &up), Ok(up));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// "required" against "off", either way round, is refused by the side
    /// that requires forward secrecy; a wrong key is refused by the
    /// server, with one key or several, before it sends anything that
    /// depends on a key.
    #[test]
    fn handshake_refusals(
        required_is_client in any::<bool>(),
        key_a in proptest::collection::vec(any::<u8>(), 1..64),
        key_b in proptest::collection::vec(any::<u8>(), 1..64),
        key_c in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let key = Arc::new(Key::from_file_contents(&key_a));
        let (client_fs, server_fs) = if required_is_client {
            (ForwardSecrecy::Required, ForwardSecrecy::Off)
        } else {
            (ForwardSecrecy::Off, ForwardSecrecy::Required)
        };
        let outcome =
            handshake(key.clone(), vec![key.clone()], client_fs, server_fs);
        if required_is_client {
            prop_assert!(matches!(
                outcome.client,
                Err(HandshakeError::ForwardSecrecyRefused)
            ));
        } else {
            prop_assert!(matches!(
                outcome.server,
                Err(HandshakeError::ForwardSecrecyRefused)
            ));
            // The server sent nothing more: the client sees the end.
            prop_assert!(matches!(outcome.client, Err(HandshakeError::Eof)));
        }

        prop_assume!(key_a != key_b && key_a != key_c);
        let other = Arc::new(Key::from_file_contents(&key_b));
        let outcome = handshake(
            key.clone(),
            vec![other.clone()],
            ForwardSecrecy::On,
            ForwardSecrecy::On,
        );
        prop_assert!(matches!(outcome.server, Err(HandshakeError::BadMac)));
        prop_assert!(matches!(outcome.client, Err(HandshakeError::Eof)));

        let third = Arc::new(Key::from_file_contents(&key_c));
        let outcome = handshake(
            key,
            vec![other, third],
            ForwardSecrecy::On,
            ForwardSecrecy::On,
        );
        prop_assert!(matches!(outcome.server, Err(HandshakeError::BadMac)));
        prop_assert!(matches!(outcome.client, Err(HandshakeError::Eof)));
    }
}
