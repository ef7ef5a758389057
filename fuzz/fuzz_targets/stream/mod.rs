//! An in-memory stream for the handshake targets: reads come from a
//! script of bytes that the fuzz input drives, writes go into a sink.
//!
//! Reads and writes are cut into short, input-chosen pieces, and some
//! polls return `Pending` (after waking the task), so that the
//! handshake's partial-read and partial-write paths run too.
//!
//! A "smart" peer answers with a correctly MACed Diffie-Hellman value
//! computed from the nonce the code under test wrote, so that the
//! fuzzer reaches the checks after the MAC and the key derivation.
//!
//! Each handshake target uses one role of the peer only.
#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use spipes::protocol::dh::Y_LEN;
use spipes::protocol::handshake::{NONCE_LEN, derive_dk1, dh_value_mac};
use spipes::protocol::{ForwardSecrecy, Key};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One current-thread runtime for every input of a handshake target.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});

/// The forward-secrecy mode for two bits of the flags.
pub fn mode(bits: u8) -> ForwardSecrecy {
    match bits & 3 {
        1 => ForwardSecrecy::Off,
        2 => ForwardSecrecy::Required,
        _ => ForwardSecrecy::On,
    }
}

/// The key file contents every handshake target uses.
pub const KEY_FILES: [&[u8]; 3] =
    [b"fuzz key one\n", b"fuzz key two\n", b"fuzz key three\n"];

/// Which MAC key a smart peer uses for its DH value.
#[derive(Clone, Copy)]
pub enum PeerRole {
    /// The peer is a client: it MACs with `dhmac_C`.
    Client,
    /// The peer is a server: it MACs with `dhmac_S`.
    Server,
}

/// What the peer sends after its nonce.
pub enum Script {
    /// Everything comes straight from the input.
    Raw,
    /// A MACed DH value built from the code under test's nonce once it
    /// has been written.
    Smart {
        /// The peer's role, choosing the MAC key.
        role: PeerRole,
        /// The key the peer MACs with.
        key: Key,
        /// The peer's nonce (the first 32 bytes it sends).
        nonce: [u8; NONCE_LEN],
        /// The peer's DH value.
        y: Box<[u8; Y_LEN]>,
        /// XORed into the MAC's byte `flip.0`: `flip.1 == 0` keeps it.
        flip: (usize, u8),
        /// Sent after the DH message.
        trailer: Vec<u8>,
        /// Whether the DH message has been appended yet.
        done: bool,
    },
}

/// A small deterministic generator for the piece sizes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Polls waiting for bytes that never come end the stream after this
/// many tries, so a target cannot spin for ever.
const MAX_STALLS: u32 = 10_000;

/// The fuzzed peer.
pub struct FuzzStream {
    /// What the peer sends; grows when a smart peer answers.
    incoming: Vec<u8>,
    pos: usize,
    script: Script,
    rng: XorShift,
    /// Everything the code under test wrote.
    pub written: Vec<u8>,
    stalls: u32,
}

impl FuzzStream {
    /// A stream whose reads start with `incoming` and then follow
    /// `script`; `seed` picks the piece sizes and the `Pending` polls.
    pub fn new(incoming: Vec<u8>, script: Script, seed: u64) -> FuzzStream {
        FuzzStream {
            incoming,
            pos: 0,
            script,
            // xorshift must not start from zero.
            rng: XorShift(seed | 1),
            written: Vec::new(),
            stalls: 0,
        }
    }

    /// A piece size from 1 to `max`, small more often than large.
    fn piece(&mut self, max: usize) -> usize {
        let r = self.rng.next();
        let len = match r % 4 {
            0 => 1,
            1 => 1 + (r >> 8) as usize % 8,
            2 => 1 + (r >> 8) as usize % 300,
            _ => max,
        };
        len.clamp(1, max.max(1))
    }

    /// Whether this poll should return `Pending` once.
    fn stall_now(&mut self, cx: &mut Context<'_>) -> bool {
        if self.rng.next().is_multiple_of(8) {
            cx.waker().wake_by_ref();
            return true;
        }
        false
    }

    /// Appends a smart peer's DH message once the code under test has
    /// written its nonce. Returns false when it must wait for that.
    fn refill(&mut self) -> bool {
        let Script::Smart {
            role,
            key,
            nonce,
            y,
            flip,
            trailer,
            done,
        } = &mut self.script
        else {
            return true;
        };
        if *done {
            return true;
        }
        let Some(theirs) = self.written.get(..NONCE_LEN) else {
            return false;
        };
        let theirs: [u8; NONCE_LEN] = theirs.try_into().expect("32 bytes");
        let (nonce_c, nonce_s) = match role {
            PeerRole::Client => (*nonce, theirs),
            PeerRole::Server => (theirs, *nonce),
        };
        let dk1 = derive_dk1(key, &nonce_c, &nonce_s);
        let dhmac = match role {
            PeerRole::Client => dk1.dhmac_c(),
            PeerRole::Server => dk1.dhmac_s(),
        };
        let mut mac = dh_value_mac(dhmac, y);
        mac[flip.0 % mac.len()] ^= flip.1;
        self.incoming.extend_from_slice(&y[..]);
        self.incoming.extend_from_slice(&mac);
        self.incoming.append(trailer);
        *done = true;
        true
    }
}

impl AsyncRead for FuzzStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.stall_now(cx) {
            return Poll::Pending;
        }
        if this.pos == this.incoming.len() && !this.refill() {
            this.stalls += 1;
            if this.stalls > MAX_STALLS {
                // End of stream: the handshake sees an early EOF.
                return Poll::Ready(Ok(()));
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let left = this.incoming.len() - this.pos;
        let n = this.piece(left.min(buf.remaining()));
        let n = n.min(left);
        buf.put_slice(&this.incoming[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FuzzStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.stall_now(cx) {
            return Poll::Pending;
        }
        let n = this.piece(data.len()).min(data.len());
        this.written.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall_now(cx) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads input bytes in order; missing bytes read as zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzz input.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// The next byte, or 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let mut one = [0u8; 1];
        self.fill(&mut one);
        one[0]
    }

    /// Fills `out` from the input, zero-padding past the end.
    pub fn fill(&mut self, out: &mut [u8]) {
        let n = out.len().min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        out[n..].fill(0);
        self.data = &self.data[n..];
    }

    /// A fixed-size array from the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill(&mut out);
        out
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> Vec<u8> {
        let rest = self.data.to_vec();
        self.data = &[];
        rest
    }
}

/// The group 14 prime of RFC 3526, as in `spipes::protocol::dh`.
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

/// The prime as 256 big-endian bytes.
pub fn prime() -> [u8; Y_LEN] {
    let mut p = [0u8; Y_LEN];
    for (i, out) in p.iter_mut().enumerate() {
        let pair = &PRIME_HEX[2 * i..2 * i + 2];
        *out = u8::from_str_radix(pair, 16).expect("hex");
    }
    p
}

/// `x + delta` for a big-endian 256-byte `x` and `delta` of -1 or +1
/// (wrapping, which the values used here never do).
fn add_one(mut x: [u8; Y_LEN], up: bool) -> [u8; Y_LEN] {
    for b in x.iter_mut().rev() {
        let (v, carry) = if up {
            b.overflowing_add(1)
        } else {
            b.overflowing_sub(1)
        };
        *b = v;
        if !carry {
            break;
        }
    }
    x
}

/// The peer's DH value, chosen by the input: interesting edges of the
/// group, a real public value, or raw bytes.
pub enum PeerY {
    /// 256 bytes from the input: whatever they are.
    Raw([u8; Y_LEN]),
    /// A real `2^x mod p` whose private value the harness knows.
    Real(spipes::protocol::dh::PrivateValue),
    /// A fixed value: 0, 1, p - 1, p, p + 1, 2^2048 - 1.
    Edge([u8; Y_LEN]),
}

impl PeerY {
    /// Picks a value with one selector byte and, for the raw and real
    /// kinds, bytes from the input.
    pub fn pick(input: &mut Input<'_>) -> PeerY {
        let p = prime();
        let mut zero = [0u8; Y_LEN];
        match input.byte() % 8 {
            0 => PeerY::Raw(input.array()),
            1 => PeerY::Edge(spipes::protocol::dh::Y_ONE),
            2 => PeerY::Edge(zero),
            3 => PeerY::Edge(add_one(p, false)),
            4 => PeerY::Edge(p),
            5 => PeerY::Edge(add_one(p, true)),
            6 => {
                zero.fill(0xff);
                PeerY::Edge(zero)
            }
            _ => {
                let x: [u8; 32] = input.array();
                PeerY::Real(spipes::protocol::dh::PrivateValue::from_bytes(&x))
            }
        }
    }

    /// The 256 bytes sent.
    pub fn value(&self) -> [u8; Y_LEN] {
        match self {
            PeerY::Raw(y) | PeerY::Edge(y) => *y,
            PeerY::Real(private) => private.public_value(),
        }
    }

    /// `y_SC` as the peer sees it, given the value the code under test
    /// sent (`theirs`), when the harness can know it: a side with
    /// forward secrecy off uses 1; `1^x = 1`, `0^x = 0`.
    pub fn shared(
        &self,
        theirs: &[u8; Y_LEN],
        under_test_off: bool,
    ) -> Option<[u8; Y_LEN]> {
        let one = spipes::protocol::dh::Y_ONE;
        if under_test_off {
            return Some(one);
        }
        match self {
            PeerY::Real(private) => Some(*private.shared_value(theirs)),
            PeerY::Edge(y) if *y == one => Some(one),
            PeerY::Edge(y) if y.iter().all(|&b| b == 0) => Some(*y),
            _ => None,
        }
    }
}

/// Checks that two pairs of session keys interoperate: what one seals
/// the other opens, in both directions.
pub fn check_interop(
    a: &mut spipes::protocol::SessionKeys,
    b: &mut spipes::protocol::SessionKeys,
    message: &[u8],
) {
    let message = if message.is_empty() { b"x" } else { message };
    one_way(a, b, message);
    one_way(b, a, message);
}

/// Seals `message` with `from` and opens it with `to`.
fn one_way(
    from: &mut spipes::protocol::SessionKeys,
    to: &mut spipes::protocol::SessionKeys,
    message: &[u8],
) {
    use spipes::protocol::PACKET_LEN;
    let mut sealed = Vec::new();
    from.sealer.seal(message, &mut sealed);
    let mut opened = Vec::new();
    for packet in sealed.chunks(PACKET_LEN) {
        let packet = packet.try_into().expect("whole packets");
        to.opener
            .open(packet, &mut opened)
            .expect("a packet sealed by the peer opens");
    }
    assert_eq!(opened, message, "the opened stream equals the sealed one");
}
