//! spipes against the real spiped, side by side, on 127.0.0.1.
//!
//! `cargo bench --bench compare` starts the release `spipes` binary and
//! `/usr/bin/spiped`, each as an encrypt end and a decrypt end in separate
//! processes (so the CPU and memory of each end can be read from
//! `/proc/PID`), in front of a backend that runs in this process, and drives
//! both with the same load generator. Rounds alternate between the two, and
//! each metric is the median of its rounds. One table goes to standard
//! output; progress and errors go to standard error.
//!
//! The backend looks at the first byte of each connection: `S` makes it a
//! sink (it replies `R`, counts what follows up to end of stream and
//! replies with the count as 8 bytes), anything else an echo (it echoes
//! that byte and everything after it). Throughput runs open every
//! connection and wait for its `R` before the clock and the CPU counters
//! start, so connection set-up (spiped's listen backlog of 10 overflows
//! under 16 simultaneous connects) is not counted as data time.
//!
//! Knobs, all optional:
//! - `SPIPES_BENCH_ROUNDS` (default 3): rounds per compared metric.
//! - `SPIPES_BENCH_SCALE` (default 1): multiplies byte counts and
//!   iteration counts, e.g. `0.1` for a quick smoke run.
//! - `SPIPES_BENCH_DECRYPT_TOML`: lines added to every spipes decrypt
//!   pipe, e.g. `dial = "early"`.
//! - `SPIPES_BENCH_BIN`: another spipes binary to run instead of the one
//!   cargo built (a build of a changed copy, for before/after numbers).
//! - arguments after `--`: only the named sections, out of `throughput`,
//!   `handshake`, `burst`, `latency`, `floor`, `rss`, `pipes1000`,
//!   `conns10k`.
//!
//! The `floor` section runs no spipes: it puts spiped beside a zero-work
//! stand-in for a pair (see [`floor_child`]), to show what the
//! latency-bound targets leave room for on this machine.
//!
//! Every wait is bounded and every loop is bounded in count and in time;
//! everything listens on and connects to 127.0.0.1 only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{
    Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream,
};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::time::timeout;

/// The longest a daemon may take to listen or send `READY=1`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one connect, or one short read, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one throughput run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The file-descriptor limit the bench asks for (for 10,000 connections,
/// each end holds two sockets per connection).
const NOFILE_WANTED: u64 = 65536;
/// Bytes per write of the throughput load generator.
const WRITE_CHUNK: usize = 256 * 1024;

/// When the bench started, for progress lines.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[compare {:6.1}s] {}",
            START.elapsed().as_secs_f64(),
            format!($($arg)*)
        )
    };
}

// ---------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------

/// Counts and sizes, after `SPIPES_BENCH_SCALE`.
struct Plan {
    rounds: usize,
    sections: BTreeSet<String>,
    /// Plaintext bytes per throughput round, by concurrency.
    tput: Vec<(usize, u64)>,
    hs_fs_on: usize,
    hs_fs_off: usize,
    burst: usize,
    rtt_warmup: usize,
    rtt_iters: usize,
    idle_conns: usize,
    many_pipes: usize,
    big_conns: usize,
    big_pipes: usize,
}

const SECTIONS: &[&str] = &[
    "throughput",
    "handshake",
    "burst",
    "latency",
    "floor",
    "rss",
    "pipes1000",
    "conns10k",
];

impl Plan {
    fn from_env() -> Result<Plan> {
        let rounds = env_num("SPIPES_BENCH_ROUNDS", 3.0)? as usize;
        let scale = env_num("SPIPES_BENCH_SCALE", 1.0)?;
        ensure!(rounds >= 1, "SPIPES_BENCH_ROUNDS must be at least 1");
        ensure!(scale > 0.0, "SPIPES_BENCH_SCALE must be more than 0");
        let n = |v: f64| ((v * scale).round() as usize).max(1);
        let mib = |v: f64| ((v * scale * 1048576.0) as u64).max(1 << 20);

        // cargo passes --bench; anything else not starting with '-' names
        // a section.
        let mut sections: BTreeSet<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        for s in &sections {
            ensure!(
                SECTIONS.contains(&s.as_str()),
                "unknown section {s:?}; known: {SECTIONS:?}"
            );
        }
        if sections.is_empty() {
            sections = SECTIONS.iter().map(|s| s.to_string()).collect();
        }
        Ok(Plan {
            rounds,
            sections,
            tput: vec![(1, mib(256.0)), (4, mib(128.0)), (16, mib(128.0))],
            hs_fs_on: n(600.0),
            hs_fs_off: n(2000.0),
            burst: 64,
            rtt_warmup: n(200.0),
            rtt_iters: n(2000.0),
            idle_conns: n(1000.0),
            many_pipes: n(1000.0),
            big_conns: n(10000.0),
            big_pipes: 50,
        })
    }

    fn wants(&self, section: &str) -> bool {
        self.sections.contains(section)
    }
}

fn env_num(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

// ---------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------

/// Clock ticks per second, for /proc/PID/stat.
static CLK_TCK: LazyLock<f64> = LazyLock::new(|| {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
});

/// User plus system CPU seconds of process `pid`, all threads, so far.
fn cpu_secs(pid: u32) -> Result<f64> {
    let (user, system) = cpu_parts(pid)?;
    Ok(user + system)
}

/// User and system CPU seconds of process `pid`, all threads, so far.
fn cpu_parts(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?
        .1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14, stime field 15.
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok((utime / *CLK_TCK, stime / *CLK_TCK))
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Listening TCP sockets on 127.0.0.1: port to socket inode.
fn listening_inodes() -> Result<BTreeMap<u16, u64>> {
    let table = fs::read_to_string("/proc/net/tcp")?;
    let mut out = BTreeMap::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((ip, port)) = f[1].split_once(':') else {
            continue;
        };
        if ip != "0100007F" {
            continue;
        }
        out.insert(u16::from_str_radix(port, 16)?, f[9].parse()?);
    }
    Ok(out)
}

/// The socket inodes among process `pid`'s open files.
fn socket_fds(pid: u32) -> Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(link) = fs::read_link(entry?.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            out.insert(inode.parse()?);
        }
    }
    Ok(out)
}

/// The kernel's count of connections dropped because a listen queue was
/// full (TcpExt ListenOverflows), system-wide: spiped listens with a
/// backlog of 10, which a burst of clients overflows.
fn listen_overflows() -> u64 {
    let Ok(text) = fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let rows: Vec<&str> =
        text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = rows[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Raises this process's open-file limit (children inherit it), with
/// prlimit(1), since the crate has no libc binding of its own; needs
/// root or CAP_SYS_RESOURCE to go above the hard limit. Returns the soft
/// limit in force afterwards.
fn raise_nofile() -> u64 {
    let pid = std::process::id().to_string();
    let arg = format!("--nofile={NOFILE_WANTED}:{NOFILE_WANTED}");
    let raised = Command::new("prlimit")
        .args(["--pid", &pid, &arg])
        .stdin(Stdio::null())
        .status();
    let why = match raised {
        Ok(s) if s.success() => return nofile_soft(),
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    progress!(
        "cannot raise RLIMIT_NOFILE to {NOFILE_WANTED} with prlimit ({why}); \
         conns10k spreads its pipes over more processes"
    );
    nofile_soft()
}

fn nofile_soft() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------

/// Which program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Spiped,
    Spipes,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Spiped => "spiped",
            Impl::Spipes => "spipes",
        }
    }
}

/// The order of the two programs in round `r`: alternating, so that
/// neither always runs first.
fn order(r: usize) -> [Impl; 2] {
    if r.is_multiple_of(2) {
        [Impl::Spiped, Impl::Spipes]
    } else {
        [Impl::Spipes, Impl::Spiped]
    }
}

/// Log lines from a daemon's stderr, with when each arrived.
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// One daemon process; killed (SIGKILL) and reaped on drop.
struct Daemon {
    label: String,
    child: Child,
    log: Log,
    notify: Option<UnixDatagram>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Spawns `cmd` with stderr captured; with `notify`, a
    /// `NOTIFY_SOCKET` datagram socket of ours in its environment.
    fn spawn(label: &str, mut cmd: Command, notify: bool) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("compare-run-").tempdir()?;
        let socket = if notify {
            let path = dir.path().join("notify.sock");
            let socket = UnixDatagram::bind(&path)?;
            cmd.env("NOTIFY_SOCKET", &path);
            Some(socket)
        } else {
            None
        };
        let mut child = cmd
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {label}: {cmd:?}"))?;

        // Drain stderr in a thread, so a chatty daemon never blocks; the
        // thread ends at end of stream, when the daemon dies.
        let log: Log = Arc::default();
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push((Instant::now(), line));
            }
        });
        Ok(Daemon {
            label: label.to_owned(),
            child,
            log,
            notify: socket,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        for (_, line) in log.iter() {
            let _ = writeln!(s, "  {line}");
        }
        s
    }

    /// Fails with the log if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.label,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Waits for the next `READY=1` on the notify socket and returns when
    /// it arrived.
    fn wait_ready(&mut self, within: Duration) -> Result<Instant> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            self.check_alive()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: no READY=1 within {within:?}; log:\n{}",
                    self.label,
                    self.log_text()
                );
            }
            let notify = self.notify.as_ref().expect("spawned with notify");
            notify.set_read_timeout(Some(left.min(ms(50))))?;
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.lines().any(|l| l == "READY=1") {
                        return Ok(Instant::now());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until 127.0.0.1:`port` is listening (spiped has no readiness
    /// signal), read from /proc/net/tcp rather than by connecting.
    fn wait_listening(&mut self, port: u16, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            if listening_inodes()?.contains_key(&port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: not listening on {port} within {within:?}",
                    self.label
                );
            }
            std::thread::sleep(ms(5));
        }
    }

    /// Waits for a log line containing `needle` that arrived at or after
    /// `since`; returns when it arrived and the line.
    fn wait_log(
        &mut self,
        needle: &str,
        since: Instant,
        within: Duration,
    ) -> Result<(Instant, String)> {
        let deadline = Instant::now() + within;
        loop {
            {
                let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                let hit = log
                    .iter()
                    .find(|(at, line)| *at >= since && line.contains(needle));
                if let Some((at, line)) = hit {
                    return Ok((*at, line.clone()));
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "{}: no log line with {needle:?} within {within:?}; \
                     log:\n{}",
                    self.label,
                    self.log_text()
                );
            }
            std::thread::sleep(ms(1));
        }
    }

    fn cpu(&self) -> Result<f64> {
        cpu_secs(self.pid())
    }

    fn rss(&self) -> Result<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` distinct ephemeral 127.0.0.1 ports: all bound at once (so the
/// kernel cannot hand out one twice), then released for daemons to bind.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A workspace: a temp dir with a key file.
struct Workspace {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Workspace {
    fn new() -> Result<Workspace> {
        let dir = tempfile::Builder::new().prefix("compare-").tempdir()?;
        let key = dir.path().join("bench.key");
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow!("getrandom: {e}"))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)?
            .write_all(&bytes)?;
        Ok(Workspace { dir, key })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One spipes pipe table; a decrypt pipe gets `SPIPES_BENCH_DECRYPT_TOML`
/// (TOML lines, e.g. `dial = "early"`) appended, for experiments.
fn pipe_toml(
    name: &str,
    mode: &str,
    source: u16,
    target: u16,
    key: &Path,
) -> String {
    let extra = match mode {
        "decrypt" => std::env::var("SPIPES_BENCH_DECRYPT_TOML")
            .map(|v| v + "\n")
            .unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "[pipes.{name}]\nmode = \"{mode}\"\nsource = \"127.0.0.1:{source}\"\n\
         target = \"127.0.0.1:{target}\"\nkey = \"{}\"\n{extra}\n",
        key.display()
    )
}

/// The head of every spipes config here: no control socket, no
/// connection cap, forward secrecy as asked.
fn spipes_head(fs_on: bool) -> String {
    format!(
        "[daemon]\ncontrol_socket = \"\"\ndrain_timeout = 1\n\n\
         [defaults]\nmax_connections = 0\nforward_secrecy = \"{}\"\n\n",
        if fs_on { "on" } else { "off" }
    )
}

/// The spipes binary: the one cargo built for this bench, or
/// `SPIPES_BENCH_BIN` (to compare a build of a changed copy).
fn spipes_bin() -> PathBuf {
    std::env::var_os("SPIPES_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_spipes")))
}

/// Starts `spipes run -c CONFIG` and waits for READY=1.
fn start_spipes(label: &str, config: &Path) -> Result<(Daemon, Duration)> {
    let mut cmd = Command::new(spipes_bin());
    cmd.args(["--log-level", "info", "run", "-c"]).arg(config);
    let t0 = Instant::now();
    let mut d = Daemon::spawn(label, cmd, true)?;
    let ready = d.wait_ready(READY_TIMEOUT)?;
    Ok((d, ready - t0))
}

/// Starts `spiped -F MODE -s SOURCE -t TARGET -k KEY -n 0` and waits for
/// its source to listen.
fn start_spiped(
    label: &str,
    mode: &str,
    source: u16,
    target: u16,
    key: &Path,
    fs_on: bool,
) -> Result<Daemon> {
    let mut cmd = Command::new("spiped");
    cmd.args(["-F", mode, "-n", "0", "-o", "5"])
        .arg("-s")
        .arg(format!("[127.0.0.1]:{source}"))
        .arg("-t")
        .arg(format!("[127.0.0.1]:{target}"))
        .arg("-k")
        .arg(key);
    if !fs_on {
        cmd.arg("-f");
    }
    let mut d = Daemon::spawn(label, cmd, false)?;
    d.wait_listening(source, READY_TIMEOUT)?;
    Ok(d)
}

/// An encrypt end and a decrypt end in front of the backend; clients
/// connect to `entry`.
struct Pair {
    enc: Daemon,
    dec: Daemon,
    entry: SocketAddr,
}

impl Pair {
    fn start(
        which: Impl,
        ws: &Workspace,
        backend: u16,
        fs_on: bool,
        tag: &str,
    ) -> Result<Pair> {
        let ports = free_ports(2)?;
        let (e, d) = (ports[0], ports[1]);
        let fs = if fs_on { "fs-on" } else { "fs-off" };
        let label = |end: &str| format!("{} {end} ({fs}, {tag})", which.name());
        let (enc, dec) = match which {
            Impl::Spiped => {
                let dec = start_spiped(
                    &label("-d"),
                    "-d",
                    d,
                    backend,
                    &ws.key,
                    fs_on,
                )?;
                let enc =
                    start_spiped(&label("-e"), "-e", e, d, &ws.key, fs_on)?;
                (enc, dec)
            }
            Impl::Spipes => {
                let write = |end: &str, mode: &str, s: u16, t: u16| {
                    let path = ws.path(&format!("{tag}-{fs}-{end}.toml"));
                    let text = spipes_head(fs_on)
                        + &pipe_toml(end, mode, s, t, &ws.key);
                    fs::write(&path, text).map(|()| path)
                };
                let dec_cfg = write("dec", "decrypt", d, backend)?;
                let enc_cfg = write("enc", "encrypt", e, d)?;
                let (dec, _) = start_spipes(&label("decrypt"), &dec_cfg)?;
                let (enc, _) = start_spipes(&label("encrypt"), &enc_cfg)?;
                (enc, dec)
            }
        };
        Ok(Pair {
            enc,
            dec,
            entry: local(e),
        })
    }

    fn cpu(&self) -> Result<(f64, f64)> {
        Ok((self.enc.cpu()?, self.dec.cpu()?))
    }

    /// (user, system) CPU seconds of each end.
    fn cpu_parts(&self) -> Result<[(f64, f64); 2]> {
        Ok([cpu_parts(self.enc.pid())?, cpu_parts(self.dec.pid())?])
    }

    fn check_alive(&mut self) -> Result<()> {
        self.enc.check_alive()?;
        self.dec.check_alive()
    }
}

// ---------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------

/// Binds a 127.0.0.1 listener with a deep backlog (a 10,000-connection
/// burst arrives at one backend port).
fn bind_backlog(port: u16) -> Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(local(port))?;
    Ok(socket.listen(4096)?)
}

/// Starts the sink/echo backend on the runtime; returns its port.
fn start_backend(rt: &Runtime) -> Result<u16> {
    let listener = rt.block_on(async { bind_backlog(0) })?;
    let port = listener.local_addr()?.port();
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_backend(stream));
                }
                // Out of descriptors, say: back off and go on.
                Err(_) => tokio::time::sleep(ms(10)).await,
            }
        }
    });
    Ok(port)
}

async fn serve_backend(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut first = [0u8; 1];
    if !matches!(s.read(&mut first).await, Ok(1)) {
        return;
    }
    if first[0] == b'S' {
        // Sink: say ready, count to end of stream, reply with the count.
        if s.write_all(b"R").await.is_err() {
            return;
        }
        let mut buf = vec![0u8; WRITE_CHUNK];
        let mut n: u64 = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(_) => return,
            }
        }
        let _ = s.write_all(&n.to_be_bytes()).await;
        let _ = s.shutdown().await;
        return;
    }

    // Echo, with a small buffer: 10,000 of these may be open at once.
    if s.write_all(&first).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 2048];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => {
                let _ = s.shutdown().await;
                return;
            }
            Ok(k) => {
                if s.write_all(&buf[..k]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------
// Load generators
// ---------------------------------------------------------------------

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect {addr}: timed out"))?
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects, sends `E`, reads the echoed `E`: a full handshake and one
/// round trip through both ends. Returns the open stream.
async fn echo_once(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = connect(addr).await?;
    s.write_all(b"E").await?;
    let mut b = [0u8; 1];
    timeout(IO_TIMEOUT, s.read_exact(&mut b))
        .await
        .map_err(|_| anyhow!("echo: no reply within {IO_TIMEOUT:?}"))??;
    ensure!(b[0] == b'E', "echo: got {:?}", b[0]);
    Ok(s)
}

/// Data for the throughput writers; contents do not change the cost.
static DATA: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..WRITE_CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
});

/// Opens a sink connection through `addr` and waits until the backend
/// is reached (its `R`), so that both ends have finished the handshake.
async fn open_sink(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = connect(addr).await?;
    s.write_all(b"S").await?;
    let mut r = [0u8; 1];
    timeout(IO_TIMEOUT, s.read_exact(&mut r))
        .await
        .map_err(|_| anyhow!("sink: no R within {IO_TIMEOUT:?}"))??;
    ensure!(r[0] == b'R', "sink: got {:?}", r[0]);
    Ok(s)
}

/// Sends `bytes` into an open sink connection and waits for its count.
async fn push(mut s: TcpStream, bytes: u64) -> Result<()> {
    let mut left = bytes;
    while left > 0 {
        let k = left.min(WRITE_CHUNK as u64) as usize;
        s.write_all(&DATA[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).await?;
    let got = u64::from_be_bytes(ack);
    ensure!(got == bytes, "sink counted {got} bytes of {bytes}");
    Ok(())
}

/// Opens `conns` connections, then (once `before` has run: a CPU
/// snapshot) moves `total` bytes over them at once; the seconds the data
/// took.
fn throughput(
    rt: &Runtime,
    addr: SocketAddr,
    conns: usize,
    total: u64,
    before: impl FnOnce() -> Result<()>,
) -> Result<f64> {
    let per = total / conns as u64;
    rt.block_on(async {
        let opening: Vec<_> =
            (0..conns).map(|_| tokio::spawn(open_sink(addr))).collect();
        let mut open = Vec::new();
        for t in opening {
            open.push(timeout(RUN_TIMEOUT, t).await???);
        }
        before()?;
        let t0 = Instant::now();
        let tasks: Vec<_> = open
            .into_iter()
            .map(|s| tokio::spawn(push(s, per)))
            .collect();
        let all = async {
            for t in tasks {
                t.await??;
            }
            Ok::<(), anyhow::Error>(())
        };
        timeout(RUN_TIMEOUT, all)
            .await
            .map_err(|_| anyhow!("throughput run over {RUN_TIMEOUT:?}"))??;
        Ok(t0.elapsed().as_secs_f64())
    })
}

/// Outcome of a handshake-rate run.
struct Rate {
    ok: usize,
    failed: usize,
    secs: f64,
    first_error: Option<String>,
}

/// `total` connect-echo-close cycles, `clients` at a time.
fn handshakes(
    rt: &Runtime,
    addr: SocketAddr,
    total: usize,
    clients: usize,
) -> Result<Rate> {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let secs = rt.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (next, ok, errors) =
                    (next.clone(), ok.clone(), errors.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < total
                        && Instant::now() < deadline
                    {
                        match echo_once(addr).await {
                            Ok(s) => {
                                drop(s);
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("{e:#}")),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        t0.elapsed().as_secs_f64()
    });
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Rate {
        ok: ok.load(Ordering::Relaxed),
        failed: errors.len(),
        secs,
        first_error: errors.first().cloned(),
    })
}

/// Outcomes of clients that each connect and get one echoed byte, then
/// hold their connection open until all have reported.
struct Held {
    /// Connect plus first byte, of those that succeeded.
    times: Vec<Duration>,
    /// Failures, as text.
    errors: Vec<String>,
    /// From the first connect until every client had reported.
    secs: f64,
    /// VmRSS, KiB, of the given processes with every connection open.
    rss: Vec<u64>,
}

/// `n` clients at once (client `i` to `addrs[i % len]`), each connect +
/// one echoed byte; the connections stay open until every client has
/// reported, and `pids`' RSS is read at that moment.
fn hold_many(
    rt: &Runtime,
    addrs: &[SocketAddr],
    n: usize,
    pids: &[u32],
) -> Result<Held> {
    rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(n.min(1024)));
        let (release, held) = tokio::sync::watch::channel(false);
        let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let addr = addrs[i % addrs.len()];
                let barrier = barrier.clone();
                let mut held = held.clone();
                let report = report.clone();
                tokio::spawn(async move {
                    // The first 1024 start together; the rest right after.
                    if i < 1024 {
                        barrier.wait().await;
                    }
                    let t = Instant::now();
                    let r = timeout(RUN_TIMEOUT, echo_once(addr))
                        .await
                        .map_err(|_| anyhow!("timed out"))
                        .and_then(|r| r);
                    let took = t.elapsed();
                    match r {
                        Ok(stream) => {
                            let _ = report.send(Ok(took));
                            // Hold the connection until all have reported.
                            let _ = timeout(RUN_TIMEOUT, held.wait_for(|v| *v))
                                .await;
                            drop(stream);
                        }
                        Err(e) => {
                            let _ = report.send(Err(format!("{e:#}")));
                        }
                    }
                })
            })
            .collect();
        drop(report);

        // Collect one report per client, within the time limit.
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT + IO_TIMEOUT;
        let mut out = Held {
            times: Vec::new(),
            errors: Vec::new(),
            secs: 0.0,
            rss: Vec::new(),
        };
        while out.times.len() + out.errors.len() < n {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(Ok(t))) => out.times.push(t),
                Ok(Some(Err(e))) => out.errors.push(e),
                Ok(None) => break,
                Err(_) => {
                    out.errors.push("no report before the deadline".into());
                    break;
                }
            }
        }
        out.secs = t0.elapsed().as_secs_f64();
        out.rss = pids.iter().map(|&p| rss_kib(p).unwrap_or(0)).collect();
        let _ = release.send(true);
        for t in tasks {
            if let Err(e) = t.await {
                out.errors.push(format!("client task: {e}"));
            }
        }
        Ok(out)
    })
}

/// One connection, `warmup` then `iters` one-byte round trips back to
/// back; the latencies of the measured ones, in µs, sorted.
///
/// Back to back on purpose: spreading the two kinds of round trip over
/// alternating blocks was tried, and every switch lets the idle daemons'
/// CPUs sleep, which in this VM adds tens of µs per hop and measures
/// wake-ups rather than the pipe.
fn ping_pong(
    addr: SocketAddr,
    warmup: usize,
    iters: usize,
) -> Result<Vec<f64>> {
    let mut s = StdStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut b = [0u8; 1];
    let mut out = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        s.write_all(b"E")?;
        s.read_exact(&mut b)?;
        if i >= warmup {
            out.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1);
    sorted[i]
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Opens `n` connections to `addr`, `parallel` at a time, each with one
/// echoed byte, and returns them open.
fn open_many(
    rt: &Runtime,
    addrs: &[SocketAddr],
    n: usize,
    parallel: usize,
) -> Result<(Vec<TcpStream>, usize, Option<String>)> {
    rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let addrs = Arc::new(addrs.to_vec());
        let deadline = Instant::now() + RUN_TIMEOUT;
        let tasks: Vec<_> = (0..parallel)
            .map(|_| {
                let (next, addrs) = (next.clone(), addrs.clone());
                tokio::spawn(async move {
                    let mut open = Vec::new();
                    let mut errors = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n || Instant::now() >= deadline {
                            break;
                        }
                        match echo_once(addrs[i % addrs.len()]).await {
                            Ok(s) => open.push(s),
                            Err(e) => errors.push(format!("{e:#}")),
                        }
                    }
                    (open, errors)
                })
            })
            .collect();
        let mut open = Vec::new();
        let mut failed = 0;
        let mut first = None;
        for t in tasks {
            let (o, e) = t.await?;
            open.extend(o);
            failed += e.len();
            if first.is_none() {
                first = e.into_iter().next();
            }
        }
        Ok((open, failed, first))
    })
}

// ---------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------

/// Which way is better, and the target on the ratio spipes/spiped.
#[derive(Clone, Copy)]
enum Goal {
    /// Higher is better; spipes/spiped at least this.
    HigherAtLeast(f64),
    /// Lower is better; spipes/spiped at most this.
    LowerAtMost(f64),
    /// Higher is better, no target.
    Higher,
    /// Lower is better, no target.
    Lower,
    /// Neither; for context.
    Info,
}

struct Row {
    metric: String,
    spiped: Option<f64>,
    spipes: Option<f64>,
    /// Decimals to print.
    prec: usize,
    goal: Goal,
    /// Overrides the ratio cell (absolute targets, n/a rows).
    note: Option<String>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(
        &mut self,
        metric: &str,
        spiped: Option<f64>,
        spipes: Option<f64>,
        prec: usize,
        goal: Goal,
    ) {
        self.rows.push(Row {
            metric: metric.to_owned(),
            spiped,
            spipes,
            prec,
            goal,
            note: None,
        });
    }

    fn add_note(
        &mut self,
        metric: &str,
        spiped: Option<f64>,
        spipes: Option<f64>,
        prec: usize,
        note: String,
    ) {
        self.rows.push(Row {
            metric: metric.to_owned(),
            spiped,
            spipes,
            prec,
            goal: Goal::Info,
            note: Some(note),
        });
    }

    fn render(&self) -> String {
        let cell = |v: Option<f64>, prec: usize| match v {
            Some(v) if v.is_finite() => format!("{v:.prec$}"),
            Some(_) => "error".to_owned(),
            None => "n/a".to_owned(),
        };
        let mut lines = vec![
            "| metric | spiped | spipes | ratio spipes/spiped |".to_owned(),
            "| --- | ---: | ---: | --- |".to_owned(),
        ];
        for r in &self.rows {
            let ratio = match (&r.note, r.spiped, r.spipes) {
                (Some(n), _, _) => n.clone(),
                (None, Some(a), Some(b)) if a > 0.0 && a.is_finite() => {
                    let x = b / a;
                    match r.goal {
                        Goal::HigherAtLeast(t) => format!(
                            "{x:.2}x (higher is better; target >= {t}x: {})",
                            if x >= t { "met" } else { "MISSED" }
                        ),
                        Goal::LowerAtMost(t) => format!(
                            "{x:.2}x (lower is better; target <= {t}x: {})",
                            if x <= t { "met" } else { "MISSED" }
                        ),
                        Goal::Higher => format!("{x:.2}x (higher is better)"),
                        Goal::Lower => format!("{x:.2}x (lower is better)"),
                        Goal::Info => format!("{x:.2}x"),
                    }
                }
                _ => "n/a".to_owned(),
            };
            lines.push(format!(
                "| {} | {} | {} | {ratio} |",
                r.metric,
                cell(r.spiped, r.prec),
                cell(r.spipes, r.prec)
            ));
        }
        lines.join("\n") + "\n"
    }
}

/// Per-program samples of one metric across rounds.
#[derive(Default)]
struct Samples(BTreeMap<(&'static str, String), Vec<f64>>);

impl Samples {
    fn push(&mut self, which: Impl, metric: &str, v: f64) {
        self.0
            .entry((which.name(), metric.to_owned()))
            .or_default()
            .push(v);
    }

    fn median(&self, which: Impl, metric: &str) -> Option<f64> {
        self.0
            .get(&(which.name(), metric.to_owned()))
            .map(|v| median(v))
    }

    fn both(&self, metric: &str) -> (Option<f64>, Option<f64>) {
        (
            self.median(Impl::Spiped, metric),
            self.median(Impl::Spipes, metric),
        )
    }
}

// ---------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------

struct Bench {
    rt: Runtime,
    plan: Plan,
    ws: Workspace,
    backend: u16,
    table: Table,
    errors: Vec<String>,
}

impl Bench {
    /// Runs `f`, turning a failure into a recorded error.
    fn attempt<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Bench) -> Result<T>,
    ) -> Option<T> {
        match f(self) {
            Ok(v) => Some(v),
            Err(e) => {
                progress!("ERROR in {what}: {e:#}");
                self.errors.push(format!("{what}: {e:#}"));
                None
            }
        }
    }

    fn pairs(&self, fs_on: bool, tag: &str) -> Result<[Pair; 2]> {
        Ok([
            Pair::start(Impl::Spiped, &self.ws, self.backend, fs_on, tag)?,
            Pair::start(Impl::Spipes, &self.ws, self.backend, fs_on, tag)?,
        ])
    }

    /// Throughput at 1, 4 and 16 connections, with CPU per GB at each
    /// end.
    fn throughput(&mut self) -> Result<()> {
        let mut pairs = self.pairs(true, "tput")?;
        let mut s = Samples::default();
        let plan = self.plan.tput.clone();
        for r in 0..self.plan.rounds {
            for which in order(r) {
                let pair = &mut pairs[which as usize];
                for &(conns, bytes) in &plan {
                    pair.check_alive()?;
                    let mut start = [(0.0, 0.0); 2];
                    let secs =
                        throughput(&self.rt, pair.entry, conns, bytes, || {
                            start = pair.cpu_parts()?;
                            Ok(())
                        })?;
                    let end = pair.cpu_parts()?;
                    let (e0, d0) =
                        (start[0].0 + start[0].1, start[1].0 + start[1].1);
                    let user_share = |i: usize| {
                        let u = end[i].0 - start[i].0;
                        let t = u + end[i].1 - start[i].1;
                        if t > 0.0 { 100.0 * u / t } else { f64::NAN }
                    };
                    let (e1, d1) = (end[0].0 + end[0].1, end[1].0 + end[1].1);
                    let moved = (bytes / conns as u64 * conns as u64) as f64;
                    let mbs = moved / 1e6 / secs;
                    let gb = moved / 1e9;
                    let (ce, cd) = ((e1 - e0) / gb, (d1 - d0) / gb);
                    progress!(
                        "round {r} {} {conns} conn: {mbs:.0} MB/s, CPU-s/GB \
                         enc {ce:.2} dec {cd:.2} (user {:.0}% / {:.0}%) \
                         (load {})",
                        which.name(),
                        user_share(0),
                        user_share(1),
                        loadavg()
                    );
                    s.push(which, &format!("mbs{conns}"), mbs);
                    s.push(which, &format!("ce{conns}"), ce);
                    s.push(which, &format!("cd{conns}"), cd);
                }
            }
        }
        for &(conns, bytes) in &plan {
            let c = if conns == 1 { "conn" } else { "conns" };
            let mib = bytes >> 20;
            let (a, b) = s.both(&format!("mbs{conns}"));
            let goal = if conns == 1 {
                Goal::HigherAtLeast(3.0)
            } else {
                Goal::Higher
            };
            self.table.add(
                &format!("throughput, {conns} {c} ({mib} MiB per round), MB/s"),
                a,
                b,
                0,
                goal,
            );
            for (key, end) in [("ce", "encrypt"), ("cd", "decrypt")] {
                let (a, b) = s.both(&format!("{key}{conns}"));
                self.table.add(
                    &format!("CPU-s per GB, {end} end, {conns} {c}"),
                    a,
                    b,
                    2,
                    Goal::LowerAtMost(0.4),
                );
            }
        }
        Ok(())
    }

    /// Handshakes per second, forward secrecy on and off, 1 and 16
    /// clients, with CPU per handshake at each end.
    fn handshake(&mut self) -> Result<()> {
        for fs_on in [true, false] {
            let mut pairs = self.pairs(fs_on, "hs")?;
            let total = if fs_on {
                self.plan.hs_fs_on
            } else {
                self.plan.hs_fs_off
            };
            let fs = if fs_on { "on" } else { "off" };
            let mut s = Samples::default();
            for r in 0..self.plan.rounds {
                for which in order(r) {
                    let pair = &mut pairs[which as usize];
                    for clients in [1, 16] {
                        pair.check_alive()?;
                        let (e0, d0) = pair.cpu()?;
                        let o0 = listen_overflows();
                        let rate =
                            handshakes(&self.rt, pair.entry, total, clients)?;
                        let (e1, d1) = pair.cpu()?;
                        let per_s = rate.ok as f64 / rate.secs;
                        let n = rate.ok.max(1) as f64;
                        progress!(
                            "round {r} {} FS {fs}, {clients} clients: \
                             {per_s:.0}/s ({} ok, {} failed), CPU ms/hs enc \
                             {:.2} dec {:.2}, listen overflows {} (load {})",
                            which.name(),
                            rate.ok,
                            rate.failed,
                            (e1 - e0) * 1e3 / n,
                            (d1 - d0) * 1e3 / n,
                            listen_overflows() - o0,
                            loadavg()
                        );
                        if let Some(e) = &rate.first_error {
                            progress!("  first failure: {e}");
                            self.errors.push(format!(
                                "handshakes {} FS {fs} {clients} clients: {} \
                                 failed, first: {e}",
                                which.name(),
                                rate.failed
                            ));
                        }
                        s.push(which, &format!("rate{clients}"), per_s);
                        s.push(
                            which,
                            &format!("ce{clients}"),
                            (e1 - e0) * 1e3 / n,
                        );
                        s.push(
                            which,
                            &format!("cd{clients}"),
                            (d1 - d0) * 1e3 / n,
                        );
                    }
                }
            }
            let target = if fs_on { 1.5 } else { 2.0 };
            for clients in [1, 16] {
                let c = if clients == 1 { "client" } else { "clients" };
                let (a, b) = s.both(&format!("rate{clients}"));
                self.table.add(
                    &format!(
                        "handshakes/s, FS {fs}, {clients} {c} ({total} per \
                         round)"
                    ),
                    a,
                    b,
                    0,
                    Goal::HigherAtLeast(target),
                );
            }
            for (key, end) in [("ce", "encrypt"), ("cd", "decrypt")] {
                let (a, b) = s.both(&format!("{key}16"));
                self.table.add(
                    &format!("CPU ms per handshake, {end} end, FS {fs}"),
                    a,
                    b,
                    2,
                    Goal::Lower,
                );
            }
        }
        Ok(())
    }

    /// The slowest connect plus first byte of a simultaneous burst.
    fn burst(&mut self) -> Result<()> {
        let mut pairs = self.pairs(true, "burst")?;
        let mut s = Samples::default();
        let n = self.plan.burst;
        let mut failures = [0usize; 2];
        for r in 0..self.plan.rounds {
            for which in order(r) {
                let pair = &mut pairs[which as usize];
                pair.check_alive()?;
                let o0 = listen_overflows();
                let held = hold_many(&self.rt, &[pair.entry], n, &[])?;
                let overflows = listen_overflows() - o0;
                let slowest = held
                    .times
                    .iter()
                    .max()
                    .map_or(f64::NAN, |t| t.as_secs_f64() * 1000.0);
                let failed = held.errors.len();
                for e in &held.errors {
                    progress!("  burst client failed: {e}");
                }
                progress!(
                    "round {r} {} burst of {n}: slowest {slowest:.1} ms, \
                     {failed} failed, listen overflows {overflows}",
                    which.name()
                );
                failures[which as usize] += failed;
                s.push(which, "slowest", slowest);
                // Let the closed connections wind down between rounds.
                std::thread::sleep(ms(200));
            }
        }
        let (a, b) = s.both("slowest");
        let note = match b {
            Some(b) => format!(
                "{:.2}x (lower is better; target: spipes < 100 ms: {})",
                b / a.unwrap_or(f64::NAN),
                if b < 100.0 { "met" } else { "MISSED" }
            ),
            None => "n/a".into(),
        };
        self.table.add_note(
            &format!("slowest connect + first byte, burst of {n} (FS on), ms"),
            a,
            b,
            1,
            note,
        );
        if failures != [0, 0] {
            self.errors.push(format!(
                "burst failures: spiped {}, spipes {}",
                failures[0], failures[1]
            ));
        }
        Ok(())
    }

    /// One-byte ping-pong through the pipe and against the backend.
    fn latency(&mut self) -> Result<()> {
        let mut pairs = self.pairs(true, "rtt")?;
        let mut s = Samples::default();
        let (warm, iters) = (self.plan.rtt_warmup, self.plan.rtt_iters);
        let direct = local(self.backend);
        // Round trips are short and noisy on a shared box: at least five
        // rounds, alternating as everywhere.
        let rounds = self.plan.rounds.max(5);
        let (mut direct50, mut direct99) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            for which in order(r) {
                let pair = &mut pairs[which as usize];
                pair.check_alive()?;
                let d = ping_pong(direct, warm, iters)?;
                let p = ping_pong(pair.entry, warm, iters)?;
                let (d50, d99) = (percentile(&d, 50.0), percentile(&d, 99.0));
                let (p50, p99) = (percentile(&p, 50.0), percentile(&p, 99.0));
                progress!(
                    "round {r} {} RTT µs: direct p50 {d50:.0} p99 {d99:.0}, \
                     pipe p50 {p50:.0} p99 {p99:.0}",
                    which.name()
                );
                s.push(which, "d50", d50);
                s.push(which, "d99", d99);
                s.push(which, "p50", p50);
                s.push(which, "p99", p99);
                direct50.push(d50);
                direct99.push(d99);
            }
        }

        // The direct path is the same for both programs, and on this VM
        // its p50 jumps between ~20 and ~70 µs from one round to the next
        // (where the threads land), so "added" takes one baseline, the
        // median over every round of both, rather than each round's own.
        let (base50, base99) = (median(&direct50), median(&direct99));
        for which in [Impl::Spiped, Impl::Spipes] {
            let (p50, p99) = (s.median(which, "p50"), s.median(which, "p99"));
            if let (Some(p50), Some(p99)) = (p50, p99) {
                s.push(which, "a50", p50 - base50);
                s.push(which, "a99", p99 - base99);
            }
        }
        let rows = [
            ("d50", "RTT p50 direct to backend, µs", Goal::Info),
            ("d99", "RTT p99 direct to backend, µs", Goal::Info),
            ("p50", "RTT p50 through the pipe, µs", Goal::Lower),
            ("p99", "RTT p99 through the pipe, µs", Goal::Lower),
        ];
        for (key, metric, goal) in rows {
            let (a, b) = s.both(key);
            self.table.add(
                &format!(
                    "{metric} ({iters} round trips, median of {rounds} rounds)"
                ),
                a,
                b,
                0,
                goal,
            );
        }
        let (a, b) = s.both("a50");
        self.table.add(
            &format!(
                "added RTT p50: pipe p50 - {base50:.0} µs (direct p50, median \
                 of all {} rounds), µs",
                direct50.len()
            ),
            a,
            b,
            0,
            Goal::LowerAtMost(0.75),
        );
        let (a, b) = s.both("a99");
        self.table.add(
            &format!(
                "added RTT p99: pipe p99 - {base99:.0} µs (direct p99, median \
                 of all rounds), µs"
            ),
            a,
            b,
            0,
            Goal::Lower,
        );
        Ok(())
    }

    /// spiped beside the zero-work floor (see [`floor_child`]) on the two
    /// latency-bound metrics: handshakes/s with one client, FS off, and
    /// added RTT p50. The floor's figures go in the spipes column, and
    /// each row's note says what fraction of the target a pair that does
    /// nothing at all reaches.
    fn floor(&mut self) -> Result<()> {
        let mut floor = FloorPair::start(self.backend)?;
        let (ws, backend) = (&self.ws, self.backend);
        let mut off = Pair::start(Impl::Spiped, ws, backend, false, "floor")?;
        // The latency section's round trips go through FS-on pairs; so do
        // these, to compare with it (after the handshake FS changes
        // nothing).
        let mut on = Pair::start(Impl::Spiped, ws, backend, true, "floor")?;
        let (a, b) = self.floor_handshakes(&mut floor, &mut off)?;
        self.table.add_note(
            &format!(
                "floor: handshakes/s, FS off, 1 client ({} per round) — \
                 zero-work stand-in in the spipes column",
                self.plan.hs_fs_off
            ),
            a,
            b,
            0,
            floor_note(a, b, "reaches", "of spiped's rate", ">= 2x"),
        );
        let (p, added, base) = self.floor_rtt(&mut floor, &mut on)?;
        self.table.add(
            "floor: RTT p50 through the pipe (FS on for spiped) — zero-work \
             stand-in in the spipes column, µs",
            p.0,
            p.1,
            0,
            Goal::Info,
        );
        self.table.add_note(
            &format!(
                "floor: added RTT p50, pipe p50 - {base:.0} µs (direct p50, \
                 median of all rounds) — zero-work stand-in in the spipes \
                 column, µs"
            ),
            added.0,
            added.1,
            0,
            floor_note(added.0, added.1, "adds", "of spiped's", "<= 0.75x"),
        );
        Ok(())
    }

    /// Handshakes/s, FS off, one client, spiped against the floor; the
    /// medians, spiped's first.
    fn floor_handshakes(
        &mut self,
        floor: &mut FloorPair,
        spiped: &mut Pair,
    ) -> Result<(Option<f64>, Option<f64>)> {
        let total = self.plan.hs_fs_off;
        // Indexed by `Impl as usize`: the spipes slot is the floor's.
        let entries = [spiped.entry, floor.entry];
        let mut s = Samples::default();
        for r in 0..self.plan.rounds {
            for which in order(r) {
                spiped.check_alive()?;
                floor.check_alive()?;
                let rate =
                    handshakes(&self.rt, entries[which as usize], total, 1)?;
                let per_s = rate.ok as f64 / rate.secs;
                progress!(
                    "round {r} {} FS off, 1 client: {per_s:.0}/s ({} ok, {} \
                     failed) (load {})",
                    floor_name(which),
                    rate.ok,
                    rate.failed,
                    loadavg()
                );
                if let Some(e) = &rate.first_error {
                    progress!("  first failure: {e}");
                    self.errors.push(format!(
                        "floor handshakes {}: {} failed, first: {e}",
                        floor_name(which),
                        rate.failed
                    ));
                }
                s.push(which, "rate", per_s);
            }
        }
        Ok(s.both("rate"))
    }

    /// RTT p50 through spiped and through the floor, as in
    /// [`Bench::latency`]: the medians of each one's p50, the same less
    /// the median direct p50 of every round, and that baseline.
    fn floor_rtt(
        &mut self,
        floor: &mut FloorPair,
        spiped: &mut Pair,
    ) -> Result<(Both, Both, f64)> {
        let (warm, iters) = (self.plan.rtt_warmup, self.plan.rtt_iters);
        let direct = local(self.backend);
        let entries = [spiped.entry, floor.entry];
        let mut s = Samples::default();
        let mut direct50 = Vec::new();
        for r in 0..self.plan.rounds.max(5) {
            for which in order(r) {
                spiped.check_alive()?;
                floor.check_alive()?;
                let d = ping_pong(direct, warm, iters)?;
                let p = ping_pong(entries[which as usize], warm, iters)?;
                let (d50, p50) = (percentile(&d, 50.0), percentile(&p, 50.0));
                progress!(
                    "round {r} {} RTT µs: direct p50 {d50:.0}, pipe p50 \
                     {p50:.0}",
                    floor_name(which)
                );
                s.push(which, "p50", p50);
                direct50.push(d50);
            }
        }
        let base = median(&direct50);
        let p = s.both("p50");
        let added = (p.0.map(|v| v - base), p.1.map(|v| v - base));
        Ok((p, added, base))
    }

    /// Base RSS with one pipe, and RSS per idle connection, on fresh
    /// daemons of each program.
    fn rss(&mut self) -> Result<()> {
        let n = self.plan.idle_conns;
        let mut s = Samples::default();
        for which in [Impl::Spiped, Impl::Spipes] {
            let mut pair =
                Pair::start(which, &self.ws, self.backend, true, "rss")?;
            std::thread::sleep(ms(300));
            let (e0, d0) = (pair.enc.rss()?, pair.dec.rss()?);
            let (open, failed, first) =
                open_many(&self.rt, &[pair.entry], n, 16)?;
            if let Some(e) = first {
                self.errors.push(format!(
                    "rss {}: {failed} of {n} connections failed, first: {e}",
                    which.name()
                ));
            }
            // Give the relays time to go idle (spipes frees its buffers
            // once a read would block).
            std::thread::sleep(ms(500));
            pair.check_alive()?;
            let (e1, d1) = (pair.enc.rss()?, pair.dec.rss()?);
            let k = open.len().max(1) as f64;
            let (pe, pd) =
                ((e1 as f64 - e0 as f64) / k, (d1 as f64 - d0 as f64) / k);
            progress!(
                "{}: base RSS enc {e0} KiB dec {d0} KiB; with {} idle \
                 connections enc {e1} KiB dec {d1} KiB: {pe:.1} / {pd:.1} \
                 KiB each",
                which.name(),
                open.len()
            );
            s.push(which, "be", e0 as f64 / 1024.0);
            s.push(which, "bd", d0 as f64 / 1024.0);
            s.push(which, "pe", pe);
            s.push(which, "pd", pd);
            self.rt.block_on(async { drop(open) });
        }
        for (key, end) in [("be", "encrypt"), ("bd", "decrypt")] {
            let (a, b) = s.both(key);
            let note = match b {
                Some(b) => format!(
                    "{:.2}x (lower is better; target: spipes <= 8 MiB: {})",
                    b / a.unwrap_or(f64::NAN),
                    if b <= 8.0 { "met" } else { "MISSED" }
                ),
                None => "n/a".into(),
            };
            self.table.add_note(
                &format!("base RSS, one pipe, {end} end, MiB"),
                a,
                b,
                1,
                note,
            );
        }
        for (key, end) in [("pe", "encrypt"), ("pd", "decrypt")] {
            let (a, b) = s.both(key);
            self.table.add(
                &format!("RSS per idle connection ({n} open), {end} end, KiB"),
                a,
                b,
                1,
                Goal::LowerAtMost(0.5),
            );
        }
        Ok(())
    }

    /// 1,000 decrypt pipes: start-up, and a reload that changes one.
    fn pipes1000(&mut self) -> Result<()> {
        let n = self.plan.many_pipes;
        let mut ports = free_ports(n + 1)?;
        let other_backend = ports.pop().expect("n + 1 ports");

        let config = self.ws.path("pipes1000.toml");
        let write = |changed: Option<usize>| -> Result<()> {
            let mut text = spipes_head(true);
            for (i, &port) in ports.iter().enumerate() {
                let target = if changed == Some(i) {
                    other_backend
                } else {
                    self.backend
                };
                text += &pipe_toml(
                    &format!("p{i:04}"),
                    "decrypt",
                    port,
                    target,
                    &self.ws.key,
                );
            }
            // Replace atomically, as an editor or a config tool would.
            let tmp = config.with_extension("toml.new");
            fs::write(&tmp, text)?;
            fs::rename(&tmp, &config)?;
            Ok(())
        };
        write(None)?;

        progress!("starting spipes with {n} decrypt pipes");
        let (mut d, startup) = start_spipes("spipes (1000 pipes)", &config)?;
        let rss = d.rss()?;
        let before = listening_inodes()?;
        let fds = socket_fds(d.pid())?;
        let mine: Vec<(u16, u64)> = ports
            .iter()
            .map(|p| {
                let inode = *before.get(p).ok_or_else(|| {
                    anyhow!("port {p} of the config is not listening")
                })?;
                ensure!(fds.contains(&inode), "port {p} is not spipes' socket");
                Ok((*p, inode))
            })
            .collect::<Result<_>>()?;

        // Change one pipe's target, then SIGHUP at once (before the file
        // watcher's 200 ms quiet period would reload it anyway).
        let changed = n / 2;
        write(Some(changed))?;
        let t0 = Instant::now();
        let hup = Command::new("kill")
            .args(["-s", "HUP", &d.pid().to_string()])
            .status()?;
        ensure!(hup.success(), "kill -s HUP failed");
        let (logged, line) = d.wait_log("reloaded:", t0, ms(30_000))?;
        let ready = d.wait_ready(ms(30_000))?;
        let to_log = (logged - t0).as_secs_f64() * 1000.0;
        let to_ready = (ready - t0).as_secs_f64() * 1000.0;
        let summary = line
            .split_once("reloaded:")
            .map(|(_, s)| s.trim().to_owned())
            .unwrap_or_default();
        let want =
            format!("0 added, 0 removed, 1 changed, {} unchanged", n - 1);
        if !summary.starts_with(&want) {
            self.errors.push(format!(
                "1000-pipe reload summary {summary:?}, want {want:?}"
            ));
        }

        // Every listener, including the changed pipe's, must be the same
        // socket as before.
        let after = listening_inodes()?;
        let fds = socket_fds(d.pid())?;
        let kept = mine
            .iter()
            .filter(|(p, inode)| {
                after.get(p) == Some(inode) && fds.contains(inode)
            })
            .count();
        let others_kept = mine
            .iter()
            .enumerate()
            .filter(|(i, (p, inode))| {
                *i != changed
                    && after.get(p) == Some(inode)
                    && fds.contains(inode)
            })
            .count();
        progress!(
            "{n} pipes: READY=1 after {:.0} ms, RSS {} KiB; SIGHUP -> \
             'reloaded:' {to_log:.1} ms, -> READY=1 {to_ready:.1} ms \
             ({summary}); listeners kept {kept}/{n}",
            startup.as_secs_f64() * 1000.0,
            rss
        );
        d.check_alive()?;
        drop(d);

        let na = || "n/a (spiped has no multi-pipe config)".to_owned();
        self.table.add_note(
            &format!("{n}-pipe config: spawn to READY=1, ms"),
            None,
            Some(startup.as_secs_f64() * 1000.0),
            0,
            na(),
        );
        self.table.add_note(
            &format!("{n}-pipe config: RSS after start, MiB"),
            None,
            Some(rss as f64 / 1024.0),
            1,
            na(),
        );
        let verdict = if to_log < 100.0 { "met" } else { "MISSED" };
        self.table.add_note(
            &format!("{n}-pipe config, one pipe changed: SIGHUP to 'reloaded:' log line, ms"),
            None,
            Some(to_log),
            1,
            format!("n/a (target: < 100 ms: {verdict})"),
        );
        self.table.add_note(
            &format!(
                "{n}-pipe config, one pipe changed: SIGHUP to READY=1, ms"
            ),
            None,
            Some(to_ready),
            1,
            na(),
        );
        let verdict = if others_kept == n - 1 {
            "met"
        } else {
            "MISSED"
        };
        self.table.add_note(
            &format!(
                "{n}-pipe reload: other listeners with the same socket \
                 (of {})",
                n - 1
            ),
            None,
            Some(others_kept as f64),
            0,
            format!("n/a (target: all {}: {verdict})", n - 1),
        );
        Ok(())
    }

    /// 10,000 connections at once across 50 pipe pairs, spipes only.
    ///
    /// Each end holds two sockets per connection, so one process can hold
    /// at most (RLIMIT_NOFILE - 200) / 2 connections; where the hard
    /// limit cannot be raised that far, the 50 pipes of each end are
    /// spread over as few processes as fit. The backend runs in a child
    /// process, since this process already holds the 10,000 clients.
    fn conns10k(&mut self) -> Result<()> {
        let (n, pipes) = (self.plan.big_conns, self.plan.big_pipes);
        let limit = nofile_soft();
        ensure!(
            limit >= n as u64 + 500,
            "RLIMIT_NOFILE is {limit}: the clients alone need {}",
            n + 500
        );
        let per_process = (limit.saturating_sub(200) / 2) as usize;
        let procs = n.div_ceil(per_process.max(1)).clamp(1, pipes);

        let backend = SelfChild::backend()?;
        let ports = free_ports(2 * pipes)?;
        let (enc_ports, dec_ports) = ports.split_at(pipes);
        // Forward secrecy off: this measures holding connections, not
        // Diffie-Hellman speed (10,000 exchanges would take ~25 CPU-s).
        let mut enc_cfg = vec![spipes_head(false); procs];
        let mut dec_cfg = vec![spipes_head(false); procs];
        for i in 0..pipes {
            enc_cfg[i % procs] += &pipe_toml(
                &format!("e{i:02}"),
                "encrypt",
                enc_ports[i],
                dec_ports[i],
                &self.ws.key,
            );
            dec_cfg[i % procs] += &pipe_toml(
                &format!("d{i:02}"),
                "decrypt",
                dec_ports[i],
                backend.port,
                &self.ws.key,
            );
        }
        let mut daemons = Vec::new();
        for (k, (e, d)) in enc_cfg.iter().zip(&dec_cfg).enumerate() {
            let (ep, dp) = (
                self.ws.path(&format!("10k-enc{k}.toml")),
                self.ws.path(&format!("10k-dec{k}.toml")),
            );
            fs::write(&ep, e)?;
            fs::write(&dp, d)?;
            let dec = start_spipes(&format!("spipes decrypt {k} (10k)"), &dp)?;
            let enc = start_spipes(&format!("spipes encrypt {k} (10k)"), &ep)?;
            daemons.push((enc.0, dec.0));
        }
        let pids: Vec<u32> = daemons
            .iter()
            .flat_map(|(e, d)| [e.pid(), d.pid()])
            .collect();
        let rss0: Vec<u64> =
            pids.iter().map(|&p| rss_kib(p)).collect::<Result<_>>()?;

        progress!(
            "opening {n} connections across {pipes} pipes at once \
             ({procs} spipes process(es) per end; RLIMIT_NOFILE {limit})"
        );
        let addrs: Vec<SocketAddr> =
            enc_ports.iter().map(|&p| local(p)).collect();
        let held = hold_many(&self.rt, &addrs, n, &pids)?;
        let served = held.times.len();
        let failed = held.errors.len();
        let first = held.errors.first().cloned();
        let secs = held.secs;
        for (e, d) in &mut daemons {
            e.check_alive()?;
            d.check_alive()?;
        }
        // RSS added per connection, per end, over all its processes.
        let added = |end: usize| -> f64 {
            let sum: i64 = (0..procs)
                .map(|k| {
                    held.rss[2 * k + end] as i64 - rss0[2 * k + end] as i64
                })
                .sum();
            sum as f64 / n as f64
        };
        let (pe, pd) = (added(0), added(1));
        progress!(
            "{served} of {n} served, {failed} failed, in {secs:.2} s; RSS \
             added per connection: encrypt end {pe:.1} KiB, decrypt end \
             {pd:.1} KiB"
        );
        if let Some(e) = &first {
            progress!("  first failure: {e}");
            self.errors
                .push(format!("10k: {failed} failed, first: {e}"));
        }
        drop(daemons);
        drop(backend);

        let na = "n/a (would need 100 spiped processes)";
        let verdict = if served == n && failed == 0 {
            "met"
        } else {
            "MISSED"
        };
        let split = if procs == 1 {
            "one spipes process per end".to_owned()
        } else {
            format!(
                "{procs} spipes processes per end, as RLIMIT_NOFILE \
                 {limit} allows {per_process} connections per process"
            )
        };
        self.table.add_note(
            &format!(
                "{n} connections at once across {pipes} pipes (FS off; \
                 {split}): served"
            ),
            None,
            Some(served as f64),
            0,
            format!("{na}; target: all {n}, 0 failures: {verdict}"),
        );
        self.table.add_note(
            &format!("{n} connections: failures"),
            None,
            Some(failed as f64),
            0,
            na.into(),
        );
        self.table.add_note(
            &format!("{n} connections: time until all served, s"),
            None,
            Some(secs),
            2,
            na.into(),
        );
        self.table.add_note(
            &format!(
                "{n} connections: RSS added per connection, encrypt end, KiB"
            ),
            None,
            Some(pe),
            1,
            format!("{na}; decrypt end {pd:.1} KiB"),
        );
        Ok(())
    }
}

/// One figure per slot, spiped's first (as [`Samples::both`] gives).
type Both = (Option<f64>, Option<f64>);

/// The floor section's name for a slot: spipes' slot holds the floor.
fn floor_name(which: Impl) -> &'static str {
    match which {
        Impl::Spiped => "spiped",
        Impl::Spipes => "floor",
    }
}

/// The note on a floor row: floor/spiped, what the floor does with it,
/// and what the target asks of spipes.
fn floor_note(
    spiped: Option<f64>,
    floor: Option<f64>,
    verb: &str,
    of: &str,
    target: &str,
) -> String {
    match (spiped, floor) {
        (Some(a), Some(b)) if a > 0.0 && a.is_finite() && b.is_finite() => {
            let x = b / a;
            format!(
                "{x:.2}x: a zero-work pair {verb} {x:.2}x {of}; the target \
                 asks spipes for {target}"
            )
        }
        _ => "n/a".to_owned(),
    }
}

/// The zero-work floor: a `d` child in front of the backend, an `e`
/// child in front of it; clients connect to `entry`.
struct FloorPair {
    enc: SelfChild,
    dec: SelfChild,
    entry: SocketAddr,
}

impl FloorPair {
    /// Starts the `d` child, then the `e` child pointing at it.
    fn start(backend: u16) -> Result<FloorPair> {
        let dec = SelfChild::floor("d", backend)?;
        let enc = SelfChild::floor("e", dec.port)?;
        let entry = local(enc.port);
        Ok(FloorPair { enc, dec, entry })
    }

    /// Fails if either child has exited.
    fn check_alive(&mut self) -> Result<()> {
        self.enc.check_alive()?;
        self.dec.check_alive()
    }
}

/// A child process of this bench binary that serves on a port it prints
/// as one line: the echo/sink backend (with [`BACKEND_CHILD`]), for tests
/// where this process's descriptors are all needed for clients, or one
/// end of the zero-work floor (with [`FLOOR_CHILD`]). It exits when its
/// standard input closes, so it cannot outlive the bench.
struct SelfChild {
    child: Child,
    port: u16,
    label: String,
}

/// The argument that makes this binary a backend child.
const BACKEND_CHILD: &str = "--compare-backend-child";

impl SelfChild {
    /// Starts the backend child.
    fn backend() -> Result<SelfChild> {
        SelfChild::start("the backend child", &[BACKEND_CHILD])
    }

    /// Starts one end of the floor, `role` `e` or `d`, forwarding to
    /// 127.0.0.1:`dst`.
    fn floor(role: &str, dst: u16) -> Result<SelfChild> {
        let label = format!("floor {role} child");
        SelfChild::start(&label, &[FLOOR_CHILD, role, &dst.to_string()])
    }

    /// Runs this binary with `args` and waits for the port it prints.
    fn start(label: &str, args: &[&str]) -> Result<SelfChild> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // The child prints its port as one line; read it with a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{label} printed no port");
            }
        };
        let port = line.trim().parse().with_context(|| {
            let _ = child.kill();
            format!("{label} said {line:?}")
        })?;
        let label = label.to_owned();
        Ok(SelfChild { child, port, label })
    }

    /// Fails if the process has exited (its errors went to our stderr).
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.label);
        }
        Ok(())
    }
}

impl Drop for SelfChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if wait_exit(&mut self.child, ms(2000)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits at most `within` for `child` to exit.
fn wait_exit(
    child: &mut Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(ms(10));
    }
}

/// The backend child's whole life: serve on an ephemeral port, print it,
/// exit when standard input closes.
fn backend_child() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let port = start_backend(&rt)?;
    println!("{port}");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

// ---------------------------------------------------------------------
// The zero-work floor
// ---------------------------------------------------------------------

/// The argument that makes this binary one end of the zero-work floor:
/// `--compare-floor-child e|d DST_PORT`.
const FLOOR_CHILD: &str = "--compare-floor-child";

/// Bytes of a nonce in spiped's handshake.
const FLOOR_NONCE: usize = 32;
/// Bytes of a DH message in spiped's handshake: `y` (256) and its MAC.
const FLOOR_DH: usize = 288;
/// The most the floor's relay reads at once: one packet's worth.
const FLOOR_PACKET: usize = 1060;

/// The most reads the floor's drain at close may take.
const FLOOR_DRAIN_READS: usize = 64;

/// Which end of the floor pair a floor child plays.
#[derive(Clone, Copy)]
enum FloorRole {
    /// Faces clients; dials the `d` end and speaks first.
    Encrypt,
    /// Faces the `e` end; dials the backend.
    Decrypt,
}

/// A floor child's whole life: listen on an ephemeral port, print it,
/// serve one connection at a time, exit when standard input closes.
///
/// The floor stands in for an encrypt/decrypt pair with no work at all:
/// std only, blocking sockets, one thread, `TCP_NODELAY`, one connection
/// at a time, handled inline. Per connection it does the least a spiped
/// pair's message pattern needs, with no crypto (see [`floor_conn`]), then
/// a relay scripted for one client doing request/response (see
/// [`floor_relay`]). That is strictly less work than any real forwarder,
/// which must also carry the other direction at the same time, encrypt
/// and MAC, and serve other connections meanwhile: it is a floor, not a
/// design. An I/O error ends the child with a nonzero status, which the
/// bench sees as a failed connect and an exited child.
fn floor_child() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == FLOOR_CHILD).unwrap_or(0);
    let (role, dst) = match args.get(at + 1..at + 3) {
        Some([r, p]) if r == "e" || r == "d" => {
            let role = if r == "e" {
                FloorRole::Encrypt
            } else {
                FloorRole::Decrypt
            };
            (role, p.parse::<u16>().with_context(|| format!("port {p}"))?)
        }
        _ => bail!("usage: {FLOOR_CHILD} e|d DST_PORT"),
    };
    let listener = StdListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;

    // The main thread blocks in accept, so a second one watches stdin.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    loop {
        let (client, _) = listener.accept()?;
        floor_conn(role, client, local(dst))
            .with_context(|| format!("floor child forwarding to {dst}"))?;
    }
}

/// One connection through a floor end: spiped's handshake messages as
/// zeros, then [`floor_relay`].
///
/// `e` dials `d`, then writes 32 and reads 32 (nonces), writes 288 and
/// reads 288 (DH messages). `d` writes its 32, dials the backend, reads
/// 32, reads 288 and writes 288. spiped's decrypt end dials its target at
/// accept, alongside the handshake (`proto_conn_create`), so `d` dials
/// while `e` is busy with the nonce rather than after the handshake,
/// which would add a step spiped does not have.
fn floor_conn(
    role: FloorRole,
    mut client: StdStream,
    dst: SocketAddr,
) -> Result<()> {
    floor_socket(&client)?;
    let zeros = [0u8; FLOOR_DH];
    let mut buf = [0u8; FLOOR_DH];
    let mut target = match role {
        FloorRole::Encrypt => {
            let mut t = floor_dial(dst)?;
            t.write_all(&zeros[..FLOOR_NONCE])?;
            t.read_exact(&mut buf[..FLOOR_NONCE])?;
            t.write_all(&zeros)?;
            t.read_exact(&mut buf)?;
            t
        }
        FloorRole::Decrypt => {
            client.write_all(&zeros[..FLOOR_NONCE])?;
            let t = floor_dial(dst)?;
            client.read_exact(&mut buf[..FLOOR_NONCE])?;
            client.read_exact(&mut buf)?;
            client.write_all(&zeros)?;
            t
        }
    };
    floor_relay(&mut client, &mut target)
}

/// Sets `TCP_NODELAY` (as both daemons do) and I/O timeouts, so a stuck
/// peer cannot hold a floor child forever.
fn floor_socket(s: &StdStream) -> Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(())
}

/// Connects to `addr` for a floor end.
fn floor_dial(addr: SocketAddr) -> Result<StdStream> {
    let s = StdStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    floor_socket(&s)?;
    Ok(s)
}

/// The relay, scripted for one client doing request/response: read up to
/// a packet from the client side (end of stream stops), write it all to
/// the target side, read up to a packet back (end of stream stops), write
/// it all to the client. This carries [`echo_once`] (one byte each way,
/// then close) and [`ping_pong`] (one-byte round trips), and only those.
/// Then the target side gets end of stream and is read to its end.
fn floor_relay(client: &mut StdStream, target: &mut StdStream) -> Result<()> {
    let mut buf = [0u8; FLOOR_PACKET];
    loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        target.write_all(&buf[..n])?;
        let n = target.read(&mut buf)?;
        if n == 0 {
            break;
        }
        client.write_all(&buf[..n])?;
    }
    target.shutdown(Shutdown::Write)?;
    for _ in 0..FLOOR_DRAIN_READS {
        if target.read(&mut buf)? == 0 {
            return Ok(());
        }
    }
    bail!("the target sent more than expected after end of stream")
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let spiped = Command::new("spiped")
        .arg("-v")
        .output()
        .map(|o| {
            let mut v = o.stdout;
            v.extend(o.stderr);
            String::from_utf8_lossy(&v).trim().to_owned()
        })
        .unwrap_or_else(|_| "?".into());
    format!("{nproc} CPUs, {model}, Linux {kernel}, {spiped}")
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == BACKEND_CHILD) {
        return backend_child();
    }
    if std::env::args().any(|a| a == FLOOR_CHILD) {
        return floor_child();
    }
    LazyLock::force(&START);
    let plan = Plan::from_env()?;
    let nofile = raise_nofile();
    let load_start = loadavg();
    progress!(
        "{}; spipes {}; nofile {nofile}; load average {load_start}; \
         rounds {}; sections {:?}",
        machine(),
        spipes_bin().display(),
        plan.rounds,
        plan.sections
    );
    let spiped_ok = Command::new("spiped").arg("-v").output().is_ok();
    ensure!(
        spiped_ok,
        "spiped is not installed (Debian: apt-get install spiped)"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let backend = start_backend(&rt)?;
    let mut bench = Bench {
        rt,
        plan,
        ws: Workspace::new()?,
        backend,
        table: Table::default(),
        errors: Vec::new(),
    };

    type Section = fn(&mut Bench) -> Result<()>;
    let sections: [(&str, Section); 8] = [
        ("throughput", Bench::throughput),
        ("handshake", Bench::handshake),
        ("burst", Bench::burst),
        ("latency", Bench::latency),
        ("floor", Bench::floor),
        ("rss", Bench::rss),
        ("pipes1000", Bench::pipes1000),
        ("conns10k", Bench::conns10k),
    ];
    for (name, run) in sections {
        if bench.plan.wants(name) {
            progress!("== {name} (load {})", loadavg());
            bench.attempt(name, run);
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nspipes vs spiped, 127.0.0.1, median of {} rounds",
        bench.plan.rounds
    );
    let _ = writeln!(out, "machine: {}", machine());
    let _ = writeln!(
        out,
        "load average: {load_start} at start, {} at end",
        loadavg()
    );
    let _ = writeln!(
        out,
        "MB = 10^6 bytes, GB = 10^9 bytes; FS = forward secrecy\n"
    );
    out += &bench.table.render();
    if !bench.errors.is_empty() {
        let _ = writeln!(out, "\nerrors:");
        for e in &bench.errors {
            let _ = writeln!(out, "- {e}");
        }
    }
    print!("{out}");
    progress!("done");
    ensure!(
        bench.errors.is_empty(),
        "{} errors, listed above",
        bench.errors.len()
    );
    Ok(())
}
