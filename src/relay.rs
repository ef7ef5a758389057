//! The data path of an established connection: two directions, one that
//! seals plaintext into packets and one that opens packets into plaintext.
//!
//! Each direction ends on its own: a clean end of stream shuts down the
//! write half of the other socket, and the other direction keeps going, so
//! half-close works. An error in either direction ends both, since the
//! protocol cannot resynchronise. Reads and writes move up to 512 packets
//! per system call (a burst starts at 64 and doubles while the socket
//! keeps the buffer full), and buffers exist only while data flows.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::protocol::{
    MAX_PAYLOAD, Opener, PACKET_LEN, PacketError, Sealer, SessionKeys,
};

/// Packets' worth read per system call once data flows: the first full
/// read after a pause uses this many.
const FIRST_PACKETS: usize = 64;
/// The most packets' worth one read takes. Each read that fills its
/// buffer doubles the buffer up to this, so a bulk transfer settles at
/// 512 KiB of plaintext (530 KiB of packets) per system call, while a
/// direction that drains its socket frees both buffers. Measured with
/// `cargo bench --bench compare -- throughput` (2 cores), one connection:
/// 2.25x spiped with fixed 64-packet reads, 2.80 to 2.87x with reads
/// growing to 512, 2.77 to 2.88x with a fixed 512.
const MAX_PACKETS: usize = 512;

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
    pub fn run<'a>(
        self,
        sealed: Counters<'a>,
        opened: Counters<'a>,
        limits: Limits,
    ) -> impl Future<Output = Result<(), RelayError>> + 'a {
        // Everything a direction owns goes into its own future, on the
        // heap, before any async block exists: a value an async block
        // captures keeps its slot there even once moved on, so capturing
        // the sockets and keys here would store them twice for the whole
        // life of the connection.
        let (plain_r, plain_w) = self.plain.into_split();
        let (wire_r, wire_w) = self.wire.into_split();
        let activity = Arc::new(Activity::new());
        let seal = Box::pin(seal_loop(
            plain_r,
            wire_w,
            self.keys.sealer,
            self.preamble,
            sealed,
            activity.clone(),
        ));
        let open = Box::pin(open_loop(
            wire_r,
            plain_w,
            self.keys.opener,
            opened,
            activity.clone(),
        ));

        async move {
            // try_join, not select: a clean end of one direction must
            // leave the other running, which is what half-close means.
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
    activity: Arc<Activity>,
) -> Result<(), RelayError> {
    let mut wire = Vec::new();
    if !preamble.is_empty() {
        sealer.seal(&preamble, &mut wire);
        to.write_all(&wire).await?;
    }

    let mut plain = Vec::new();
    let first = FIRST_PACKETS * MAX_PAYLOAD;
    loop {
        let n =
            match read_ready(&mut from, &mut plain, first, &mut wire).await? {
                Some(n) => n,
                None => {
                    to.shutdown().await?;
                    activity.end_one();
                    return Ok(());
                }
            };

        wire.clear();
        wire.reserve_exact(n.div_ceil(MAX_PAYLOAD) * PACKET_LEN);
        sealer.seal(&plain[..n], &mut wire);
        to.write_all(&wire).await?;
        add(counters, n);
        activity.touch();
        grow_if_filled(&mut plain, n, first, MAX_PACKETS * MAX_PAYLOAD);
    }
}

/// Packets in, plaintext out; a clean end of stream at a packet boundary
/// shuts down writing, anywhere else it is a cut stream.
async fn open_loop(
    mut from: ReadHalf,
    mut to: WriteHalf,
    mut opener: Opener,
    counters: Counters<'_>,
    activity: Arc<Activity>,
) -> Result<(), RelayError> {
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    let mut filled = 0;
    let first = FIRST_PACKETS * PACKET_LEN;
    loop {
        let got = if filled == 0 {
            read_ready(&mut from, &mut wire, first, &mut plain).await?
        } else {
            // A partial packet is waiting: the rest may need the room.
            if wire.len() < first {
                wire.resize(first, 0);
            }
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
        opener
            .open_all(&wire[..whole], &mut plain)
            .map_err(RelayError::Packet)?;
        let read = filled;
        wire.copy_within(whole..filled, 0);
        filled -= whole;

        to.write_all(&plain).await?;
        add(counters, plain.len());
        grow_if_filled(&mut wire, read, first, MAX_PACKETS * PACKET_LEN);
    }
}

/// Bytes of the first read after a pause: enough for a few packets, on
/// the stack, so that a short message costs an allocation of its own
/// size instead of `size` zeroed bytes that are freed again right after.
const SMALL: usize = 4 * PACKET_LEN;

/// Reads into `buf` from its start. While `buf` is shorter than `size`
/// (idle, or carrying short messages), a read goes through a small stack
/// buffer and `buf` holds just what came; a read that fills it switches
/// `buf` to `size` bytes. When the socket has nothing more, frees `buf`
/// and the direction's other buffer `spare` before waiting. `None` at end
/// of stream.
///
/// Reads through `poll_read`, which takes a short read as proof that the
/// socket is drained (epoll), so a message costs one read system call
/// rather than a read and a second one that fails with EAGAIN.
async fn read_ready(
    from: &mut ReadHalf,
    buf: &mut Vec<u8>,
    size: usize,
    spare: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    std::future::poll_fn(|cx| poll_read_ready(cx, from, buf, size, spare)).await
}

/// One poll of [`read_ready`]. The stack buffer lives only for the poll,
/// never in the connection's future.
fn poll_read_ready(
    cx: &mut Context<'_>,
    from: &mut ReadHalf,
    buf: &mut Vec<u8>,
    size: usize,
    spare: &mut Vec<u8>,
) -> Poll<io::Result<Option<usize>>> {
    if buf.len() >= size {
        let mut rb = ReadBuf::new(&mut buf[..]);
        return match Pin::new(&mut *from).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                Poll::Ready(Ok((n != 0).then_some(n)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                *buf = Vec::new();
                *spare = Vec::new();
                Poll::Pending
            }
        };
    }

    let mut small = [MaybeUninit::<u8>::uninit(); SMALL];
    let mut rb = ReadBuf::uninit(&mut small);
    match Pin::new(&mut *from).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => {
            *buf = Vec::new();
            *spare = Vec::new();
            return Poll::Pending;
        }
    }
    let got = rb.filled();
    let n = got.len();
    if n == 0 {
        return Poll::Ready(Ok(None));
    }
    buf.clear();
    if n < SMALL {
        buf.extend_from_slice(got);
        return Poll::Ready(Ok(Some(n)));
    }

    // A full small buffer: more is probably waiting.
    buf.reserve_exact(size);
    buf.extend_from_slice(got);
    buf.resize(size, 0);
    let mut rb = ReadBuf::new(&mut buf[n..]);
    match Pin::new(&mut *from).poll_read(cx, &mut rb) {
        // An end of stream right here is seen by the next read.
        Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(n + rb.filled().len()))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Ready(Ok(Some(n))),
    }
}

/// Doubles a read buffer, up to `max` bytes, when reading left `filled`
/// bytes in it and that is all of it, at least `first`: the socket had
/// that much waiting, so the next read can take more in one system call.
/// Short messages, read into a buffer of their own size, never grow it.
fn grow_if_filled(buf: &mut Vec<u8>, filled: usize, first: usize, max: usize) {
    if filled == buf.len() && filled >= first {
        let len = (2 * filled).min(max);
        buf.resize(len, 0);
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
