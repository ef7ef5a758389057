//! The one shared harness of the integration tests: temp-dir workspaces,
//! the `spipes` daemon and the real `spiped` as child processes with
//! readiness waits, backend servers on ephemeral ports, and stream hashing.
//!
//! Everything listens on loopback or on Unix sockets inside temp dirs, so
//! tests run in parallel without fixed ports or global locks. Every wait
//! is bounded; readiness comes from a signal (`READY=1` for spipes, the
//! listening socket in `/proc/net` for spiped), never from a sleep.
//!
//! Each test file includes this module with `mod common;` and uses only
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The longest a spawned daemon may take to report readiness.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest one read or write on a test socket may block; a hang fails
/// the test instead of blocking it forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a daemon may take to exit after being told to.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often bounded polling loops (process exit, listening sockets)
/// look again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A SHA-256 digest.
pub type Hash = [u8; 32];

// ---------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------

/// The folders searched for external binaries: `PATH`, then `/usr/sbin`
/// and `/usr/bin` (nginx lives in `/usr/sbin`, often not on a user's PATH).
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.push(PathBuf::from("/usr/bin"));
    dirs
}

/// Finds an executable file called `name` on `PATH`, in `/usr/sbin` or
/// in `/usr/bin`, without deciding what a missing one means.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    search_dirs().into_iter().map(|d| d.join(name)).find(|p| {
        fs::metadata(p)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Finds the external binary `name` (`spiped`, `spipe`, `nginx`), as
/// [`find_binary`] does.
///
/// When it is missing: with `SPIPES_REQUIRE_SPIPED=1` in the environment
/// this panics, so that CI fails rather than skips; otherwise it prints
/// `skipping: NAME not installed` and returns `None`, and the test should
/// return at once.
pub fn require_binary(name: &str) -> Option<PathBuf> {
    if let Some(path) = find_binary(name) {
        return Some(path);
    }
    if std::env::var_os("SPIPES_REQUIRE_SPIPED").is_some_and(|v| v == "1") {
        panic!(
            "{name} is not installed (searched PATH, /usr/sbin and \
             /usr/bin) and SPIPES_REQUIRE_SPIPED=1 forbids skipping: \
             install it (Debian: apt-get install {name})"
        );
    }
    eprintln!("skipping: {name} not installed");
    None
}

/// The `spipes` binary cargo built for these tests.
pub fn spipes_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spipes"))
}

/// A `Command` for the `spipes` binary, with `NOTIFY_SOCKET` and
/// `RUST_LOG` removed from its environment so that runs are reproducible.
pub fn spipes_command() -> Command {
    let mut cmd = Command::new(spipes_bin());
    cmd.env_remove("NOTIFY_SOCKET").env_remove("RUST_LOG");
    cmd
}

/// Runs `cmd` to completion with stdin closed and stdout and stderr
/// captured; panics if it runs longer than `timeout` (the process is then
/// killed).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));

    // Drain both pipes in threads so a chatty child cannot block.
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });

    let status = match wait_child(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {timeout:?}; killed it");
        }
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader panicked"),
        stderr: err.join().expect("stderr reader panicked"),
    }
}

/// Runs `cmd` with `input` on its standard input (closed once written)
/// and returns what it wrote and how it exited, as [`output_within`];
/// panics (naming it `what`) if it runs longer than `timeout`, after
/// killing it. A child that exits before reading all of `input` is fine.
pub fn output_with_stdin(
    cmd: &mut Command,
    input: Vec<u8>,
    timeout: Duration,
    what: &str,
) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let writer = thread::spawn(move || {
        // A child may exit before reading: a broken pipe is fine.
        let _ = stdin.write_all(&input);
    });
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_child(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} still ran after {timeout:?}");
    };
    writer.join().expect("stdin writer panicked");
    Output {
        status,
        stdout: out.join().expect("stdout reader panicked"),
        stderr: err.join().expect("stderr reader panicked"),
    }
}

/// Waits for `child` to exit, at most `timeout`; `None` if it still runs.
/// Polls, since std has no timed wait; the child is reaped here, so its
/// pid is never signalled after it could be reused.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("cannot wait for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A signal the harness can send to a daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop (listeners close, connections drain).
    Term,
    /// SIGINT: stop, as SIGTERM.
    Int,
    /// SIGHUP: reload the config.
    Hup,
    /// SIGKILL.
    Kill,
}

impl Signal {
    /// The name `kill -s` takes.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
        }
    }
}

/// Sends `signal` to process `pid` with `kill(1)`; panics if that fails.
/// Call it only for a child that has not been reaped yet.
pub fn send_signal(pid: u32, signal: Signal) {
    let status = Command::new("kill")
        .arg("-s")
        .arg(signal.name())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(status.success(), "kill -s {} {pid} failed", signal.name());
}

// ---------------------------------------------------------------------
// Ports, addresses and connections
// ---------------------------------------------------------------------

/// Ports handed out for a daemon to bind are taken from here, below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and up
/// by default). A port from `127.0.0.1:0` is itself ephemeral: once it is
/// released, an outgoing connection of a test running in parallel can
/// take it as its source port before the daemon binds it, and the daemon
/// then fails to start.
const PORT_BASE: u32 = 20_000;
/// How many ports from [`PORT_BASE`] up [`free_port`] may hand out.
const PORT_SPAN: u32 = 12_000;

/// The next candidate, as an offset from [`PORT_BASE`]; starts from the
/// process id so that test binaries run one after another begin in
/// different places.
fn next_port_offset() -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
    let _ = NEXT.compare_exchange(
        u64::MAX,
        u64::from(std::process::id()) * 97,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    u32::try_from(n % u64::from(PORT_SPAN)).expect("below PORT_SPAN")
}

/// A loopback port nobody listens on, for a daemon to bind next: the next
/// port from [`PORT_BASE`] on that `bind_check` can bind. Each call hands
/// out a different port, so parallel tests in one binary never share one.
fn free_port_where(bind_check: impl Fn(u16) -> bool) -> Option<u16> {
    for _ in 0..PORT_SPAN {
        let port = u16::try_from(PORT_BASE + next_port_offset())
            .expect("ports stay below 32000");
        if bind_check(port) {
            return Some(port);
        }
    }
    None
}

/// A free `127.0.0.1` port (see [`free_port_where`]).
pub fn free_port() -> u16 {
    free_port_where(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port in 20000..32000")
}

/// A free `[::1]` port, as [`free_port`]; `None` if IPv6 loopback is not
/// available here.
pub fn free_port_v6() -> Option<u16> {
    TcpListener::bind("[::1]:0").ok()?;
    free_port_where(|port| {
        TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, port)).is_ok()
    })
}

/// Where something listens or is dialled: a TCP address or a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address (loopback in these tests).
    Tcp(SocketAddr),
    /// A Unix stream socket at an absolute path.
    Unix(PathBuf),
}

impl Endpoint {
    /// A free `127.0.0.1` port (see [`free_port`]).
    pub fn free_tcp() -> Endpoint {
        Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// The form spipes' config takes: `127.0.0.1:port`, `[::1]:port`, or
    /// the path.
    pub fn config(&self) -> String {
        match self {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(path) => path_str(path).to_owned(),
        }
    }

    /// The form spiped's `-s` and `-t` take: `[127.0.0.1]:port`,
    /// `[::1]:port`, or the path.
    pub fn spiped(&self) -> String {
        match self {
            Endpoint::Tcp(addr) => format!("[{}]:{}", addr.ip(), addr.port()),
            Endpoint::Unix(path) => path_str(path).to_owned(),
        }
    }

    /// Connects, with [`IO_TIMEOUT`] on reads and writes.
    pub fn connect(&self) -> io::Result<Conn> {
        let conn = match self {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, IO_TIMEOUT)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Endpoint::Unix(path) => Conn::Unix(UnixStream::connect(path)?),
        };
        conn.set_timeouts(IO_TIMEOUT)?;
        Ok(conn)
    }

    /// Whether a socket is listening here now, read from `/proc/net`
    /// without connecting (a probe connection would reach the daemon and
    /// perhaps its target, and disturb connection counts).
    pub fn is_listening(&self) -> bool {
        match self {
            Endpoint::Tcp(addr) => tcp_listening(addr.port(), addr.is_ipv6()),
            Endpoint::Unix(path) => unix_listening(path),
        }
    }

    /// Waits, at most `timeout`, until [`Endpoint::is_listening`] equals
    /// `want`; `false` on timeout.
    pub fn wait_listening(&self, want: bool, timeout: Duration) -> bool {
        wait_until(timeout, || self.is_listening() == want)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.config())
    }
}

/// A path as UTF-8; every path the harness makes is.
fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Whether `/proc/net/tcp` (or `tcp6`) has a socket in LISTEN state on
/// `port`.
fn tcp_listening(port: u16, v6: bool) -> bool {
    let file = if v6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let table = fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    let suffix = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl, local_address, rem_address, st: 0A is LISTEN.
        fields.len() > 3 && fields[1].ends_with(&suffix) && fields[3] == "0A"
    })
}

/// Whether `/proc/net/unix` has a listening socket bound to `path`.
fn unix_listening(path: &Path) -> bool {
    let table = fs::read_to_string("/proc/net/unix")
        .unwrap_or_else(|e| panic!("cannot read /proc/net/unix: {e}"));
    let path = path_str(path);
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num, RefCount, Protocol, Flags (00010000: accepting), Type, St,
        // Inode, Path.
        fields.len() > 7 && fields[3] == "00010000" && fields[7] == path
    })
}

/// Polls `cond` until it holds, at most `timeout`; `false` on timeout.
/// For conditions that have no signal to wait on.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A connected stream, TCP or Unix, with blocking I/O.
#[derive(Debug)]
pub enum Conn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
}

impl Conn {
    /// Another handle on the same connection, to read and write from two
    /// threads.
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    /// Shuts down the write half (TCP FIN), keeping the read half open.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    /// Shuts down one or both halves.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        }
    }

    /// Sets the same timeout on reads and writes.
    pub fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    /// Sets the read timeout alone.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Conn::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

// ---------------------------------------------------------------------
// Random data and hashing
// ---------------------------------------------------------------------

/// `n` bytes from the operating system's random source.
pub fn os_random(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// A fast pseudo-random generator (SplitMix64) for bulk test data; seeded
/// from the OS so that every run sends different bytes. Not for keys.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    /// A generator with a random seed.
    pub fn new() -> Prng {
        let seed = os_random(8);
        Prng(u64::from_le_bytes(seed.try_into().expect("8 bytes")))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

impl Default for Prng {
    fn default() -> Prng {
        Prng::new()
    }
}

/// `n` pseudo-random bytes (see [`Prng`]).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    Prng::new().fill(&mut buf);
    buf
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// Lowercase hex, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes per read or write in the stream helpers.
const CHUNK: usize = 64 * 1024;

/// What one side of a stream saw: a byte count and the SHA-256 of the
/// bytes, plus the first [`Seen::HEAD`] bytes themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// How many bytes.
    pub len: u64,
    /// SHA-256 of all of them.
    pub hash: Hash,
    /// The first bytes, at most [`Seen::HEAD`] of them.
    pub head: Vec<u8>,
}

impl Seen {
    /// How many leading bytes are kept in `head`.
    pub const HEAD: usize = 4096;

    /// What `data` looks like as a [`Seen`].
    pub fn of(data: &[u8]) -> Seen {
        Seen {
            len: data.len() as u64,
            hash: sha256(data),
            head: data[..data.len().min(Seen::HEAD)].to_vec(),
        }
    }
}

/// Reads `r` to its end, hashing; `counter` (if any) is increased as
/// bytes arrive, so that another thread can watch progress.
pub fn read_hashed(
    r: &mut impl Read,
    counter: Option<&AtomicU64>,
) -> io::Result<Seen> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    let mut head = Vec::new();
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if head.len() < Seen::HEAD {
            let take = n.min(Seen::HEAD - head.len());
            head.extend_from_slice(&buf[..take]);
        }
        len += n as u64;
        if let Some(c) = counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(Seen {
        len,
        hash: hasher.finalize().into(),
        head,
    })
}

/// Writes `n` pseudo-random bytes to `w`, hashing them.
pub fn write_random(w: &mut impl Write, n: u64) -> io::Result<Seen> {
    let mut prng = Prng::new();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    let mut head = Vec::new();
    while left > 0 {
        let take = left.min(CHUNK as u64) as usize;
        prng.fill(&mut buf[..take]);
        w.write_all(&buf[..take])?;
        hasher.update(&buf[..take]);
        if head.len() < Seen::HEAD {
            let keep = take.min(Seen::HEAD - head.len());
            head.extend_from_slice(&buf[..keep]);
        }
        left -= take as u64;
    }
    w.flush()?;
    Ok(Seen {
        len: n,
        hash: hasher.finalize().into(),
        head,
    })
}

/// Writes all of `data` to `w` in chunks, hashing.
pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<Seen> {
    w.write_all(data)?;
    w.flush()?;
    Ok(Seen::of(data))
}

/// Both directions of one client connection.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// What the client sent.
    pub sent: Seen,
    /// What the client received.
    pub received: Seen,
}

/// Sends `n` pseudo-random bytes on `conn` while reading everything the
/// peer sends, then shuts down writing once all is sent, and returns when
/// the peer has closed its side. Sending and receiving run at once, so
/// neither side can block the other.
pub fn exchange(conn: Conn, n: u64) -> io::Result<Transfer> {
    exchange_with(conn, move |w| write_random(w, n))
}

/// As [`exchange`], sending exactly `data`.
pub fn exchange_data(conn: Conn, data: Vec<u8>) -> io::Result<Transfer> {
    exchange_with(conn, move |w| write_data(w, &data))
}

/// As [`exchange`], with `send` writing whatever it wants.
fn exchange_with(
    mut conn: Conn,
    send: impl FnOnce(&mut Conn) -> io::Result<Seen> + Send + 'static,
) -> io::Result<Transfer> {
    let mut writer = conn.try_clone()?;
    let sender = thread::spawn(move || {
        let sent = send(&mut writer)?;
        writer.shutdown_write()?;
        Ok::<Seen, io::Error>(sent)
    });
    let received = read_hashed(&mut conn, None);
    if received.is_err() {
        // Unblock the sender so that the join below cannot hang.
        let _ = conn.shutdown(Shutdown::Both);
    }
    let sent = sender.join().expect("sender thread panicked");
    Ok(Transfer {
        sent: sent?,
        received: received?,
    })
}

/// Sends `payload`, shuts down writing, then reads the whole reply: the
/// client half of a half-close exchange. Returns the reply bytes.
pub fn half_close(mut conn: Conn, payload: &[u8]) -> io::Result<Vec<u8>> {
    conn.write_all(payload)?;
    conn.flush()?;
    conn.shutdown_write()?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)?;
    Ok(reply)
}

/// How a connection ended when the peer was expected to close it.
#[derive(Debug)]
pub struct Closed {
    /// What arrived before the end.
    pub received: Vec<u8>,
    /// `None` for a clean end of stream, else the error (a reset).
    pub error: Option<io::Error>,
}

/// Reads until the peer closes or resets `conn`; panics if that does not
/// happen within `within` (the connection stayed open).
pub fn expect_closed(conn: &mut Conn, within: Duration) -> Closed {
    match wait_closed(conn, within) {
        Ok(closed) => closed,
        Err(received) => panic!(
            "the connection was not closed within {within:?} ({} bytes \
             received)",
            received.len()
        ),
    }
}

/// Reads until the peer closes or resets `conn`, at most `within`; if it
/// is still open then, `Err` with what arrived meanwhile.
pub fn wait_closed(
    conn: &mut Conn,
    within: Duration,
) -> Result<Closed, Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(received);
        }
        conn.set_read_timeout(left).expect("set read timeout");
        match conn.read(&mut buf) {
            Ok(0) => {
                return Ok(Closed {
                    received,
                    error: None,
                });
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(received);
            }
            Err(e) => {
                return Ok(Closed {
                    received,
                    error: Some(e),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------
// Workspace
// ---------------------------------------------------------------------

/// A temp dir for one test's keys, configs and Unix sockets; removed when
/// dropped. Its path is short, so socket paths inside it fit in
/// `sun_path`.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A fresh, empty workspace.
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix("spipes-")
            .tempdir()
            .expect("create a temp dir");
        Workspace { dir }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a key file `name` of 32 random bytes with mode 0600 and
    /// returns its path.
    pub fn write_key(&self, name: &str) -> PathBuf {
        let path = self.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.write_all(&os_random(32))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Writes (or replaces) file `name` with `contents`, returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Writes (or replaces) the config file `name`, returns its path.
    pub fn write_config(&self, name: &str, toml: &str) -> PathBuf {
        self.write_file(name, toml.as_bytes())
    }

    /// A Unix socket endpoint `name` inside the folder (nothing is
    /// created).
    pub fn unix(&self, name: &str) -> Endpoint {
        let path = self.join(name);
        assert!(
            path_str(&path).len() <= 100,
            "socket path {} is too long for sun_path",
            path.display()
        );
        Endpoint::Unix(path)
    }
}

impl Default for Workspace {
    fn default() -> Workspace {
        Workspace::new()
    }
}

/// `s` as a TOML basic string, quoted and escaped.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `[pipes.NAME]` table: `mode` is `"encrypt"` or `"decrypt"`, `key`
/// an absolute path, and each of `extra` a `(setting, raw TOML value)`
/// pair such as `("forward_secrecy", "\"off\"")`.
pub fn pipe_toml(
    name: &str,
    mode: &str,
    source: &Endpoint,
    target: &Endpoint,
    key: &Path,
    extra: &[(&str, &str)],
) -> String {
    let mut t = format!(
        "[pipes.{name}]\nmode = {}\nsource = {}\ntarget = {}\nkey = {}\n",
        toml_string(mode),
        toml_string(&source.config()),
        toml_string(&target.config()),
        toml_string(path_str(key)),
    );
    for (setting, value) in extra {
        t.push_str(&format!("{setting} = {value}\n"));
    }
    t
}

// ---------------------------------------------------------------------
// spipes
// ---------------------------------------------------------------------

/// A running `spipes run -c CONFIG`, with `NOTIFY_SOCKET` pointing at a
/// datagram socket of the harness and stderr (and stdout) going to a log
/// file.
///
/// Dropping it sends SIGTERM, then a second SIGTERM (which cuts the
/// drain), then SIGKILL, each after a bounded wait, and reaps it. When
/// the test is panicking, the log is printed.
#[derive(Debug)]
pub struct Spipes {
    child: Child,
    /// Set once the child is reaped; no signal is sent after that.
    status: Option<ExitStatus>,
    notify: UnixDatagram,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Spipes {
    /// Starts spipes on `config` and waits (at most [`READY_TIMEOUT`])
    /// for `READY=1`; panics with the log if it exits or times out first.
    pub fn start(config: &Path) -> Spipes {
        Spipes::start_with(config, &[])
    }

    /// As [`Spipes::start`], with extra arguments before `run` (such as
    /// `["--log-level", "debug"]`).
    pub fn start_with(config: &Path, args: &[&str]) -> Spipes {
        let mut spipes = Spipes::spawn_with(config, args);
        spipes.wait_ready(READY_TIMEOUT);
        spipes
    }

    /// Spawns spipes on `config` without waiting for readiness: for
    /// start-ups that are meant to fail.
    pub fn spawn(config: &Path) -> Spipes {
        Spipes::spawn_with(config, &[])
    }

    /// As [`Spipes::spawn`], with extra arguments before `run`.
    pub fn spawn_with(config: &Path, args: &[&str]) -> Spipes {
        let dir = tempfile::Builder::new()
            .prefix("spipes-run-")
            .tempdir()
            .expect("create a temp dir");
        let notify_path = dir.path().join("notify.sock");
        let notify =
            UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        let log = dir.path().join("spipes.log");
        let log_file = fs::File::create(&log).expect("create the log file");
        let log_out = log_file.try_clone().expect("clone the log file");

        let child = spipes_command()
            .args(args)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_out)
            .stderr(log_file)
            .spawn()
            .expect("spawn spipes");
        Spipes {
            child,
            status: None,
            notify,
            log,
            dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything spipes wrote to stderr and stdout so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, at most `timeout`, for the next `READY=1` notification (at
    /// start, or after a SIGHUP reload); panics with the log if the
    /// process exits first or the time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "spipes exited ({status}) before READY=1; log:\n{}",
                    self.log()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "spipes sent no READY=1 within {timeout:?}; log:\n{}",
                self.log()
            );
            // Short receive timeouts, so that an exit is noticed soon.
            let slice = left.min(Duration::from_millis(50));
            self.notify
                .set_read_timeout(Some(slice))
                .expect("set notify timeout");
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.lines().any(|l| l == "READY=1") {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// Every notification datagram waiting now, without blocking.
    pub fn notifications(&self) -> Vec<String> {
        self.notify
            .set_nonblocking(true)
            .expect("set notify nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.notify
            .set_nonblocking(false)
            .expect("set notify blocking");
        out
    }

    /// Sends `signal`; panics if the process was already reaped.
    pub fn signal(&mut self, signal: Signal) {
        assert!(
            self.try_wait().is_none(),
            "spipes already exited; log:\n{}",
            self.log()
        );
        send_signal(self.pid(), signal);
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on spipes");
        }
        self.status
    }

    /// Waits, at most `timeout`, for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    /// Sends SIGTERM and waits, at most [`EXIT_TIMEOUT`], for the exit;
    /// panics with the log if it does not come.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::Term);
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "spipes did not exit within {EXIT_TIMEOUT:?} of SIGTERM; \
                 log:\n{}",
                self.log()
            ),
        }
    }

    /// The folder of the notify socket and the log (not the workspace).
    pub fn run_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Spipes {
    fn drop(&mut self) {
        // SIGTERM, a second SIGTERM to cut the drain, then SIGKILL.
        for signal in [Signal::Term, Signal::Term, Signal::Kill] {
            if self.try_wait().is_some() {
                break;
            }
            send_signal(self.pid(), signal);
            self.wait_exit(Duration::from_secs(5));
        }
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        if thread::panicking() {
            eprintln!("--- spipes log ---\n{}--- end ---", self.log());
        }
    }
}

// ---------------------------------------------------------------------
// spiped
// ---------------------------------------------------------------------

/// A running real `spiped -F ...`, stderr going to a log file.
///
/// Ready once its source socket is listening (read from `/proc/net`, so
/// that the probe itself opens no connection). Dropping it kills it with
/// SIGKILL (spiped's SIGTERM waits for connections to end) and reaps it.
#[derive(Debug)]
pub struct Spiped {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Spiped {
    /// Starts `spiped -F ARGS` and waits, at most [`READY_TIMEOUT`], for
    /// the source given with `-s` to listen; panics if spiped is not
    /// installed (call [`require_binary`] first), if `-s` is missing, or
    /// if spiped exits first. With `-F` spiped writes no pidfile.
    pub fn start<I, S>(args: I) -> Spiped
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let source = args
            .iter()
            .position(|a| a == "-s")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.to_str())
            .map(parse_spiped_address)
            .expect("spiped arguments need -s SOURCE");

        let bin = find_binary("spiped").expect("spiped is not installed");
        let dir = tempfile::Builder::new()
            .prefix("spiped-run-")
            .tempdir()
            .expect("create a temp dir");
        let log = dir.path().join("spiped.log");
        let log_file = fs::File::create(&log).expect("create the log file");
        let child = Command::new(bin)
            .arg("-F")
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn spiped");
        let mut spiped = Spiped {
            child,
            log,
            _dir: dir,
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        while !source.is_listening() {
            if let Ok(Some(status)) = spiped.child.try_wait() {
                panic!(
                    "spiped {args:?} exited ({status}) before listening; \
                     log:\n{}",
                    spiped.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "spiped {args:?} not listening on {source} within \
                 {READY_TIMEOUT:?}; log:\n{}",
                spiped.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
        spiped
    }

    /// `spiped -e -s SOURCE -t TARGET -k KEY EXTRA...` (see
    /// [`Spiped::start`]).
    pub fn encrypt(
        source: &Endpoint,
        target: &Endpoint,
        key: &Path,
        extra: &[&str],
    ) -> Spiped {
        Spiped::start(spiped_args("-e", source, target, key, extra))
    }

    /// `spiped -d -s SOURCE -t TARGET -k KEY EXTRA...` (see
    /// [`Spiped::start`]).
    pub fn decrypt(
        source: &Endpoint,
        target: &Endpoint,
        key: &Path,
        extra: &[&str],
    ) -> Spiped {
        Spiped::start(spiped_args("-d", source, target, key, extra))
    }

    /// What spiped wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spiped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.log();
            if !log.is_empty() {
                eprintln!("--- spiped log ---\n{log}--- end ---");
            }
        }
    }
}

/// The argument list of a spiped instance.
fn spiped_args(
    mode: &str,
    source: &Endpoint,
    target: &Endpoint,
    key: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        mode.to_owned(),
        "-s".to_owned(),
        source.spiped(),
        "-t".to_owned(),
        target.spiped(),
        "-k".to_owned(),
        path_str(key).to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Parses spiped's `[ip]:port` or `/path` form.
fn parse_spiped_address(s: &str) -> Endpoint {
    if s.starts_with('/') {
        return Endpoint::Unix(PathBuf::from(s));
    }
    let (ip, port) = s
        .strip_prefix('[')
        .and_then(|r| r.split_once("]:"))
        .unwrap_or_else(|| panic!("the harness takes [ip]:port, not {s}"));
    let ip: std::net::IpAddr = ip.parse().expect("an IP literal");
    Endpoint::Tcp(SocketAddr::new(ip, port.parse().expect("a port")))
}

// ---------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------

/// What a [`Backend`] does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Writes back everything it reads; at end of stream, shuts down
    /// writing.
    Echo,
    /// Reads to end of stream, then replies with the 32-byte SHA-256 of
    /// what it read and closes.
    Sink,
    /// Sends this many pseudo-random bytes and shuts down writing, while
    /// reading (and hashing) to end of stream at the same time.
    Source(u64),
}

/// One finished backend connection.
#[derive(Clone, Debug)]
pub struct Record {
    /// What the backend read.
    pub received: Seen,
    /// What the backend sent.
    pub sent: Seen,
    /// The I/O error that ended it, if any.
    pub error: Option<String>,
}

/// Counters and records shared with the backend's threads.
#[derive(Debug, Default)]
struct BackendShared {
    accepted: AtomicUsize,
    bytes_in: AtomicU64,
    records: Mutex<Vec<Record>>,
    done: Condvar,
    stop: AtomicBool,
}

/// A plaintext server on a thread, one thread per connection, counting
/// what it accepts and recording what each connection carried.
///
/// Dropping it stops the accept loop (a Unix socket file is removed with
/// the workspace or by the drop).
#[derive(Debug)]
pub struct Backend {
    endpoint: Endpoint,
    shared: Arc<BackendShared>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    /// An echo server on an ephemeral `127.0.0.1` port.
    pub fn echo() -> Backend {
        Backend::tcp(Behavior::Echo)
    }

    /// A hashing sink (see [`Behavior::Sink`]) on an ephemeral port.
    pub fn sink() -> Backend {
        Backend::tcp(Behavior::Sink)
    }

    /// A source of `n` random bytes (see [`Behavior::Source`]) on an
    /// ephemeral port.
    pub fn source(n: u64) -> Backend {
        Backend::tcp(Behavior::Source(n))
    }

    /// `behavior` on an ephemeral `127.0.0.1` port.
    pub fn tcp(behavior: Behavior) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local address");
        Backend::run(Endpoint::Tcp(addr), Listener::Tcp(l), behavior)
    }

    /// `behavior` on `listen`: a TCP address (port 0 for an ephemeral
    /// one) or a Unix socket path.
    pub fn start(listen: &Endpoint, behavior: Behavior) -> Backend {
        match listen {
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                let addr = l.local_addr().expect("local address");
                Backend::run(Endpoint::Tcp(addr), Listener::Tcp(l), behavior)
            }
            Endpoint::Unix(path) => {
                let l = UnixListener::bind(path)
                    .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
                Backend::run(listen.clone(), Listener::Unix(l), behavior)
            }
        }
    }

    fn run(
        endpoint: Endpoint,
        listener: Listener,
        behavior: Behavior,
    ) -> Backend {
        let shared = Arc::new(BackendShared::default());
        let s = shared.clone();
        let accept_thread = thread::spawn(move || {
            loop {
                let conn = match listener.accept() {
                    Ok(conn) => conn,
                    Err(_) if s.stop.load(Ordering::SeqCst) => return,
                    Err(_) => continue,
                };
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                thread::spawn(move || serve(conn, behavior, &s));
            }
        });
        Backend {
            endpoint,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// Where it listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes read so far, over all connections, counted as they arrive.
    pub fn bytes_received(&self) -> u64 {
        self.shared.bytes_in.load(Ordering::SeqCst)
    }

    /// The connections that have finished so far, in finishing order.
    pub fn records(&self) -> Vec<Record> {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits, at most `timeout`, until `n` connections have finished, and
    /// returns their records; panics on timeout.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        let mut records = self
            .shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while records.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "backend {}: {} of {n} connections finished within \
                 {timeout:?}",
                self.endpoint,
                records.len()
            );
            records = self
                .shared
                .done
                .wait_timeout(records, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        records.clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees the flag and returns.
        if self.endpoint.connect().is_ok()
            && let Some(t) = self.accept_thread.take()
        {
            let _ = t.join();
        }
        if let Endpoint::Unix(path) = &self.endpoint {
            let _ = fs::remove_file(path);
        }
    }
}

/// A backend's listening socket.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Conn> {
        let conn = match self {
            Listener::Tcp(l) => Conn::Tcp(l.accept()?.0),
            Listener::Unix(l) => Conn::Unix(l.accept()?.0),
        };
        conn.set_timeouts(IO_TIMEOUT)?;
        Ok(conn)
    }
}

/// Serves one backend connection and records it.
fn serve(mut conn: Conn, behavior: Behavior, shared: &BackendShared) {
    let counter = Some(&shared.bytes_in);
    let result = match behavior {
        Behavior::Echo => echo(&mut conn, &shared.bytes_in),
        Behavior::Sink => read_hashed(&mut conn, counter).and_then(|seen| {
            let sent = write_data(&mut conn, &seen.hash)?;
            conn.shutdown(Shutdown::Both)?;
            Ok((seen, sent))
        }),
        Behavior::Source(n) => conn.try_clone().and_then(|mut writer| {
            let sender = thread::spawn(move || {
                let sent = write_random(&mut writer, n)?;
                writer.shutdown_write()?;
                Ok::<Seen, io::Error>(sent)
            });
            let received = read_hashed(&mut conn, counter);
            if received.is_err() {
                let _ = conn.shutdown(Shutdown::Both);
            }
            let sent = sender.join().expect("source thread panicked");
            Ok((received?, sent?))
        }),
    };
    let record = match result {
        Ok((received, sent)) => Record {
            received,
            sent,
            error: None,
        },
        Err(e) => Record {
            received: Seen::of(&[]),
            sent: Seen::of(&[]),
            error: Some(e.to_string()),
        },
    };
    let mut records = shared.records.lock().unwrap_or_else(|e| e.into_inner());
    records.push(record);
    shared.done.notify_all();
}

/// Echoes until end of stream, then shuts down writing.
fn echo(conn: &mut Conn, counter: &AtomicU64) -> io::Result<(Seen, Seen)> {
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        conn.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        if head.len() < Seen::HEAD {
            let keep = n.min(Seen::HEAD - head.len());
            head.extend_from_slice(&buf[..keep]);
        }
        len += n as u64;
    }
    conn.shutdown_write()?;
    let seen = Seen {
        len,
        hash: hasher.finalize().into(),
        head,
    };
    Ok((seen.clone(), seen))
}

/// Whether `path` is a socket file.
pub fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

// ---------------------------------------------------------------------
// Loopback endpoints in bulk and /proc readers
// ---------------------------------------------------------------------

/// `n` distinct free loopback endpoints (see [`free_port`]).
pub fn free_endpoints<const N: usize>() -> [Endpoint; N] {
    std::array::from_fn(|_| Endpoint::free_tcp())
}

/// The socket address of a TCP endpoint.
pub fn tcp_addr(endpoint: &Endpoint) -> SocketAddr {
    match endpoint {
        Endpoint::Tcp(a) => *a,
        Endpoint::Unix(p) => panic!("{} is not a TCP endpoint", p.display()),
    }
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .count()
}

/// Resident set size of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

// ---------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------

/// A running nginx in the foreground (`daemon off`) as one process
/// (`master_process off`), so that stopping it leaves no worker behind.
/// Every file it reads or writes is inside its own workspace.
pub struct Nginx {
    child: Child,
    dir: Workspace,
    endpoint: Endpoint,
}

impl Nginx {
    /// Starts nginx with the whole nginx.conf that `conf` returns for the
    /// workspace (see [`nginx_conf`]), listening on `endpoint`, and waits
    /// (at most [`READY_TIMEOUT`]) for the socket to listen.
    pub fn start(
        bin: &Path,
        endpoint: Endpoint,
        conf: impl FnOnce(&Workspace) -> String,
    ) -> Nginx {
        let dir = Workspace::new();
        let conf = conf(&dir);
        let conf = dir.write_config("nginx.conf", &conf);
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            dir,
            endpoint,
        };
        nginx.wait_listening();
        nginx
    }

    /// Waits for the listening socket, failing at once if nginx exits.
    fn wait_listening(&mut self) {
        let (child, endpoint) = (&mut self.child, &self.endpoint);
        let mut exited = None;
        let listening = wait_until(READY_TIMEOUT, || {
            exited = child.try_wait().expect("try_wait on nginx");
            exited.is_some() || endpoint.is_listening()
        });
        assert!(
            exited.is_none() && listening,
            "nginx on {} did not start within {READY_TIMEOUT:?} (exit: \
             {exited:?}); error log:\n{}",
            self.endpoint,
            self.error_log()
        );
    }

    /// Where nginx listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// What nginx logged so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; SIGKILL if it does not exit.
        if self.child.try_wait().ok().flatten().is_none() {
            send_signal(self.child.id(), Signal::Term);
            if wait_child(&mut self.child, EXIT_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- nginx {} error log ---\n{}--- end ---",
                self.endpoint,
                self.error_log()
            );
        }
    }
}

/// The whole nginx.conf around one `server` block: `main` (extra
/// main-context directives, each ending in a newline, or empty) first,
/// `default_type` for the `http` block, and the pid file, the logs and
/// every temp folder inside `dir`, so nothing outside is written.
pub fn nginx_conf(
    dir: &Workspace,
    main: &str,
    default_type: &str,
    server: &str,
) -> String {
    let d = dir.path().display();
    format!(
        "{main}master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type {default_type};
{server}
}}
"
    )
}
