//! The data path of an established connection: two directions, one that
//! seals plaintext into packets and one that opens packets into plaintext.
//!
//! Each direction ends on its own: a clean end of stream shuts down the
//! write half of the other socket, and the other direction keeps going, so
//! half-close works. An error in either direction ends both, since the
//! protocol cannot resynchronise. Reads and writes move up to 64 packets
//! per system call, and buffers exist only while data flows.

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::protocol::{
    MAX_PAYLOAD, Opener, PACKET_LEN, PacketError, Sealer, SessionKeys,
};

/// Plaintext read per system call: 64 packets' worth.
const CHUNK: usize = 64 * MAX_PAYLOAD;
/// Packets one chunk of plaintext makes.
const PACKETS_PER_CHUNK: usize = CHUNK / MAX_PAYLOAD;

/// What ended the data path before both directions finished cleanly.
#[derive(Debug)]
pub enum RelayError {
    /// A socket error: reset, broken pipe.
    Io(io::Error),
    /// A packet failed its MAC or length check.
    Packet(PacketError),
    /// The encrypted stream ended in the middle of a packet.
    Truncated,
    /// No byte moved either way for `idle_timeout`.
    Idle,
    /// One direction had ended and the other moved nothing for
    /// `half_close_timeout`.
    HalfClosed,
}

impl From<io::Error> for RelayError {
    fn from(e: io::Error) -> RelayError {
        RelayError::Io(e)
    }
}

/// The counters a direction adds its plaintext bytes to: the
/// connection's own and its pipe's.
pub type Counters<'a> = [&'a AtomicU64; 2];

/// Time limits on an established connection; `None` is no limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Close after this long with no byte either way.
    pub idle: Option<Duration>,
    /// Once one direction has ended, close after this long with no byte.
    pub half_close: Option<Duration>,
}

/// One established connection's two sockets and its keys.
pub struct Relay {
    /// The plaintext socket.
    pub plain: Stream,
    /// The encrypted socket.
    pub wire: Stream,
    /// The session keys.
    pub keys: SessionKeys,
    /// Plaintext to seal before anything read from `plain` (a PROXY
    /// protocol header), or empty.
    pub preamble: Vec<u8>,
}

impl Relay {
    /// Runs both directions until each has ended, or one fails, or a
    /// limit runs out.
    ///
    /// Cancel-safe in the sense that matters: dropping it closes both
    /// sockets.
    pub async fn run(
        self,
        sealed: Counters<'_>,
        opened: Counters<'_>,
        limits: Limits,
    ) -> Result<(), RelayError> {
        let (plain_r, plain_w) = self.plain.into_split();
        let (wire_r, wire_w) = self.wire.into_split();
        let activity = Activity::new();

        // try_join, not select: a clean end of one direction must leave
        // the other running, which is what half-close means.
        let seal = seal_loop(
            plain_r,
            wire_w,
            self.keys.sealer,
            self.preamble,
            sealed,
            &activity,
        );
        let open =
            open_loop(wire_r, plain_w, self.keys.opener, opened, &activity);
        let both = async { tokio::try_join!(seal, open).map(|_| ()) };
        if limits.idle.is_none() && limits.half_close.is_none() {
            return both.await;
        }
        tokio::select! {
            r = both => r,
            e = activity.watch(limits) => Err(e),
        }
    }
}

/// When bytes last moved, and how many directions have ended, shared by
/// the two directions and the watchdog.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte moved.
    last_ms: AtomicU64,
    /// Directions that have reached their end.
    ended: AtomicU8,
    /// Woken when a direction ends.
    ending: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            ended: AtomicU8::new(0),
            ending: Notify::new(),
        }
    }

    /// Notes that bytes moved now.
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Notes that a direction reached its end.
    fn end_one(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.touch();
        self.ending.notify_one();
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Returns the limit that ran out; never returns if none does.
    async fn watch(&self, limits: Limits) -> RelayError {
        loop {
            // The nearest deadline that applies now.
            let half = limits
                .half_close
                .filter(|_| self.ended.load(Ordering::Relaxed) > 0);
            let deadline = match (limits.idle, half) {
                (Some(i), Some(h)) if h < i => {
                    Some((h, RelayError::HalfClosed))
                }
                (Some(i), _) => Some((i, RelayError::Idle)),
                (None, Some(h)) => Some((h, RelayError::HalfClosed)),
                (None, None) => None,
            };

            let Some((limit, error)) = deadline else {
                // Only half_close is set, and both directions still run.
                self.ending.notified().await;
                continue;
            };
            let last = self.last();
            tokio::select! {
                _ = tokio::time::sleep_until(last + limit) => {
                    if self.last() == last {
                        return error;
                    }
                }
                // A direction ending may bring a shorter deadline.
                _ = self.ending.notified() => {}
            }
        }
    }
}

/// Plaintext in, packets out; at end of stream, shuts down writing.
async fn seal_loop(
    mut from: ReadHalf,
    mut to: WriteHalf,
    mut sealer: Sealer,
    preamble: Vec<u8>,
    counters: Counters<'_>,
    activity: &Activity,
) -> Result<(), RelayError> {
    let mut wire = Vec::new();
    if !preamble.is_empty() {
        sealer.seal(&preamble, &mut wire);
        to.write_all(&wire).await?;
    }

    let mut plain = Vec::new();
    loop {
        let n =
            match read_ready(&mut from, &mut plain, CHUNK, &mut wire).await? {
                Some(n) => n,
                None => {
                    to.shutdown().await?;
                    activity.end_one();
                    return Ok(());
                }
            };

        wire.clear();
        wire.reserve_exact(PACKETS_PER_CHUNK * PACKET_LEN);
        sealer.seal(&plain[..n], &mut wire);
        to.write_all(&wire).await?;
        add(counters, n);
        activity.touch();
    }
}

/// Packets in, plaintext out; a clean end of stream at a packet boundary
/// shuts down writing, anywhere else it is a cut stream.
async fn open_loop(
    mut from: ReadHalf,
    mut to: WriteHalf,
    mut opener: Opener,
    counters: Counters<'_>,
    activity: &Activity,
) -> Result<(), RelayError> {
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    let mut filled = 0;
    loop {
        let got = if filled == 0 {
            let size = PACKETS_PER_CHUNK * PACKET_LEN;
            read_ready(&mut from, &mut wire, size, &mut plain).await?
        } else {
            read_more(&mut from, &mut wire, filled).await?
        };
        let Some(n) = got else {
            if filled != 0 {
                return Err(RelayError::Truncated);
            }
            to.shutdown().await?;
            activity.end_one();
            return Ok(());
        };
        filled += n;
        activity.touch();

        // Open every whole packet; keep a partial one for the next read.
        let whole = filled - filled % PACKET_LEN;
        plain.clear();
        plain.reserve_exact(whole / PACKET_LEN * MAX_PAYLOAD);
        for packet in wire[..whole].chunks_exact(PACKET_LEN) {
            let packet =
                packet.try_into().map_err(|_| RelayError::Truncated)?;
            opener
                .open(packet, &mut plain)
                .map_err(RelayError::Packet)?;
        }
        wire.copy_within(whole..filled, 0);
        filled -= whole;

        to.write_all(&plain).await?;
        add(counters, plain.len());
    }
}

/// Reads into `buf` from its start, allocating `size` bytes only once the
/// socket is readable; when it has nothing more, frees `buf` and the
/// direction's other buffer `spare` before waiting. `None` at end of
/// stream.
async fn read_ready(
    from: &mut ReadHalf,
    buf: &mut Vec<u8>,
    size: usize,
    spare: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    loop {
        if buf.is_empty() {
            from.readable().await?;
            buf.resize(size, 0);
        }
        match from.try_read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *buf = Vec::new();
                *spare = Vec::new();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads more after the first `filled` bytes of `buf`. `None` at end of
/// stream.
async fn read_more(
    from: &mut ReadHalf,
    buf: &mut [u8],
    filled: usize,
) -> io::Result<Option<usize>> {
    match from.read(&mut buf[filled..]).await? {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// Adds `n` bytes to a connection's and its pipe's counters.
fn add(counters: Counters<'_>, n: usize) {
    for c in counters {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}
