//! `spipes connect`: the `spipe` equivalent, with standard input and
//! output as the plaintext end.
//!
//! The process's standard streams are not sockets, so the data path is a
//! small one of its own rather than [`crate::relay::Relay`]: one thread
//! reads standard input and one writes standard output, each joined to
//! the async side by a bounded channel, so that neither a slow reader of
//! our output nor a silent writer of our input can block the other
//! direction. They are plain threads, not the runtime's blocking pool,
//! so that a read of standard input that never returns cannot hold up
//! the exit once the connection is over.

use std::io::{self, Read, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::address::Address;
use crate::net::{ReadHalf, Target, WriteHalf};
use crate::protocol::{
    ForwardSecrecy, HandshakeError, Key, MAX_PAYLOAD, Opener, PACKET_LEN,
    Sealer, client_handshake,
};

/// Plaintext read from standard input per system call: 64 packets' worth.
const STDIN_CHUNK: usize = 64 * MAX_PAYLOAD;

/// Packets read from the socket per system call, at most.
const WIRE_PACKETS: usize = 64;

/// Chunks buffered between a standard stream's thread and the socket.
const QUEUE: usize = 4;

/// Key files larger than this are refused: no real key is, and a wrong
/// path (a disk image, say) should not be read into memory.
const MAX_KEY_FILE: u64 = 1 << 20;

/// Dials `target`, runs the client handshake with the key in `key`, then
/// relays standard input to the target and the target to standard output
/// until both directions end.
///
/// Not cancel-safe: it owns the process's standard streams.
pub async fn connect(
    target: &str,
    key: &Path,
    fs: ForwardSecrecy,
    timeout: f64,
) -> anyhow::Result<()> {
    let address = Address::parse(target)
        .map_err(|e| anyhow!("invalid target {target}: {e}"))?;
    let limit = setup_limit(timeout)?;
    let key = read_key(key)?;

    // Dial plus handshake share one deadline, as in a pipe.
    let deadline = Instant::now() + limit;
    let dialled = Target::new(address, None);
    let dial = tokio::time::timeout_at(deadline, dialled.dial(None, true));
    let mut stream = match dial.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => bail!("cannot reach {target}: {e}"),
        Err(_) => bail!(
            "cannot reach {target}: no connection within {} s",
            limit.as_secs_f64()
        ),
    };
    let handshake = client_handshake(&mut stream, &key, fs);
    let keys = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(keys)) => keys,
        Ok(Err(e)) => {
            bail!("handshake with {target} failed: {}", explain(&e))
        }
        Err(_) => bail!(
            "handshake with {target} failed: not finished within {} s",
            limit.as_secs_f64()
        ),
    };
    drop(key);

    let (wire_r, wire_w) = stream.into_split();
    let upload = upload(wire_w, keys.sealer, spawn_stdin_reader());
    let download = download(wire_r, keys.opener, target);
    tokio::try_join!(upload, download)?;
    Ok(())
}

/// The `--timeout` value as a duration: more than 0 seconds, finite.
fn setup_limit(timeout: f64) -> anyhow::Result<Duration> {
    if timeout.is_nan() || timeout <= 0.0 {
        bail!("--timeout must be more than 0 seconds, not {timeout}");
    }
    Duration::try_from_secs_f64(timeout)
        .map_err(|_| anyhow!("--timeout {timeout} is too long"))
}

/// Reads the key file and derives `K`; the file's bytes are wiped once
/// hashed, and no message holds them.
fn read_key(path: &Path) -> anyhow::Result<Key> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read key file {shown}"))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot read key file {shown}"))?
        .len();
    if size > MAX_KEY_FILE {
        bail!(
            "key file {shown} is {size} bytes; a key file is normally 32 \
             bytes (spipes keygen)"
        );
    }

    // Room for the whole file up front, so that growing the buffer leaves
    // no copies of key bytes behind in freed memory. One byte more than
    // the limit lets a file that grew since the stat be noticed.
    let capacity = usize::try_from(size).unwrap_or(0) + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read key file {shown}"))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        bail!("key file {shown} is over {MAX_KEY_FILE} bytes");
    }
    if bytes.is_empty() {
        bail!("key file {shown} is empty");
    }
    Ok(Key::from_file_contents(&bytes))
}

/// A handshake error with a hint where the cause is usually on our side.
fn explain(e: &HandshakeError) -> String {
    match e {
        HandshakeError::Eof => format!(
            "{e} (a wrong key, or the server requires forward secrecy and \
             it is off here)"
        ),
        _ => e.to_string(),
    }
}

/// Starts the thread that reads standard input in chunks; the channel
/// closes at end of input, after an `Err` for a read error.
fn spawn_stdin_reader() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut buf = vec![0u8; STDIN_CHUNK];
            let n = match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            buf.truncate(n);
            if tx.blocking_send(Ok(buf)).is_err() {
                // The connection is over; nobody wants more input.
                return;
            }
        }
    });
    rx
}

/// Starts the thread that writes chunks to standard output; it flushes
/// after each and reports, once the channel closes, whether every write
/// succeeded.
fn spawn_stdout_writer()
-> (mpsc::Sender<Vec<u8>>, oneshot::Receiver<io::Result<()>>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (done_tx, done_rx) = oneshot::channel();
    thread::spawn(move || {
        let mut stdout = io::stdout().lock();
        let mut result = Ok(());
        while let Some(chunk) = rx.blocking_recv() {
            if let Err(e) =
                stdout.write_all(&chunk).and_then(|()| stdout.flush())
            {
                result = Err(e);
                break;
            }
        }
        let _ = done_tx.send(result);
    });
    (tx, done_rx)
}

/// Standard input to sealed packets; at end of input, shuts down the
/// write half of the socket so the server sees end of stream and can
/// still answer.
async fn upload(
    mut wire: WriteHalf,
    mut sealer: Sealer,
    mut input: mpsc::Receiver<io::Result<Vec<u8>>>,
) -> anyhow::Result<()> {
    let mut packets = Vec::new();
    while let Some(chunk) = input.recv().await {
        let chunk = chunk.context("cannot read standard input")?;
        packets.clear();
        sealer.seal(&chunk, &mut packets);
        wire.write_all(&packets)
            .await
            .context("cannot send to the target")?;
    }
    wire.shutdown()
        .await
        .context("cannot end the stream to the target")
}

/// Packets from the server to standard output; ends at a clean end of
/// stream at a packet boundary, once standard output has taken it all.
/// What opened before an error is still written out.
async fn download(
    wire: ReadHalf,
    opener: Opener,
    target: &str,
) -> anyhow::Result<()> {
    let (output, written) = spawn_stdout_writer();
    let relayed = open_packets(wire, opener, target, &output).await;
    drop(output);
    let written = match written.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("cannot write standard output"),
        Err(_) => Err(anyhow!("the standard output thread ended early")),
    };
    relayed.and(written)
}

/// Reads and opens packets, handing the plaintext to `output`, until a
/// clean end of stream, an error, or the writer stopping (which it
/// reports itself).
async fn open_packets(
    mut wire: ReadHalf,
    mut opener: Opener,
    target: &str,
    output: &mpsc::Sender<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; WIRE_PACKETS * PACKET_LEN];
    let mut filled = 0;
    loop {
        let n = wire
            .read(&mut buf[filled..])
            .await
            .with_context(|| format!("cannot read from {target}"))?;
        if n == 0 {
            if filled != 0 {
                bail!(
                    "the stream from {target} ended in the middle of a \
                     packet: the reply may be cut short"
                );
            }
            return Ok(());
        }
        filled += n;

        // Open every whole packet; keep a partial one for the next read.
        let whole = filled - filled % PACKET_LEN;
        let mut plain = Vec::new();
        let failed = opener.open_all(&buf[..whole], &mut plain).err();
        buf.copy_within(whole..filled, 0);
        filled -= whole;

        let delivered = plain.is_empty() || output.send(plain).await.is_ok();
        if let Some(e) = failed {
            return Err(e).with_context(|| format!("bad packet from {target}"));
        }
        if !delivered {
            return Ok(());
        }
    }
}
