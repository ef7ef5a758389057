//! Fault tests through the real binary: dead, resetting and stalled
//! targets, peers that reset mid-stream, idle peers, handshake floods,
//! descriptor exhaustion, unreadable config and key files, and signals
//! at any moment.
//!
//! In every test a second pair of pipes in the same spipes process
//! (`steady_enc` -> `steady_dec` -> echo backend) carries a paced,
//! hash-checked stream for the whole fault: the test checks that it kept
//! moving during the fault and that what came back equals what was sent.
//!
//! Everything listens on 127.0.0.1 ephemeral ports; every loop is bounded
//! in count and time. Run in release mode:
//! `cargo test --release --test faults`.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Backend, Endpoint, Prng, Seen, Signal, Spipes, Workspace, exchange,
    expect_closed, fd_count, free_endpoints, pipe_toml, read_hashed, rss_kib,
    send_signal, tcp_addr, wait_until,
};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------
// Helpers (candidates for tests/common)
// ---------------------------------------------------------------------

/// How often the bounded polls below look again.
const POLL: Duration = Duration::from_millis(10);

/// User plus system CPU time of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // The fields after the command name, which is in parentheses and
    // may hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("a command name") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime")
        + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// The kernel's clock ticks per second, from `getconf CLK_TCK`.
fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// Makes dropping `stream` send a reset (SO_LINGER 0) instead of a FIN.
fn arm_reset(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
}

/// The `[daemon]` table every test uses: no control socket (so that
/// parallel daemons do not share one) and a short drain.
const DAEMON: &str = "[daemon]\ndrain_timeout = 1\ncontrol_socket = \"\"\n\n";

/// The steady pair: `steady_enc` -> `steady_dec` -> an echo backend.
struct SteadyPair {
    enc: Endpoint,
    dec: Endpoint,
    backend: Backend,
}

impl SteadyPair {
    fn new() -> SteadyPair {
        let [enc, dec] = free_endpoints();
        SteadyPair {
            enc,
            dec,
            backend: Backend::echo(),
        }
    }

    /// The two pipe tables.
    fn toml(&self, key: &Path) -> String {
        pipe_toml("steady_enc", "encrypt", &self.enc, &self.dec, key, &[])
            + &pipe_toml(
                "steady_dec",
                "decrypt",
                &self.dec,
                self.backend.endpoint(),
                key,
                &[],
            )
    }
}

/// The `[daemon]` table, the steady pair, and an encrypt pipe
/// `NAME_enc` on `enc` chained into a decrypt pipe `NAME_dec` on `dec`
/// in front of `echo`, with no connection limit and a `timeout` (in
/// seconds).
fn unlimited_pair_toml(
    pair: &SteadyPair,
    key: &Path,
    name: &str,
    [enc, dec]: [&Endpoint; 2],
    echo: &Backend,
    timeout: &str,
) -> String {
    String::from(DAEMON)
        + &pair.toml(key)
        + &pipe_toml(&format!("{name}_enc"), "encrypt", enc, dec, key, &[])
        + &pipe_toml(
            &format!("{name}_dec"),
            "decrypt",
            dec,
            echo.endpoint(),
            key,
            &[("max_connections", "0"), ("timeout", timeout)],
        )
}

/// A paced, hash-checked stream through the steady pair: a writer sends
/// pseudo-random bytes at about `rate` bytes a second until told to
/// stop, a reader hashes the echo. Stopped and checked by `finish`.
struct Steady {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    writer: Option<thread::JoinHandle<io::Result<Seen>>>,
    reader: Option<thread::JoinHandle<io::Result<Seen>>>,
}

/// The longest a steady writer runs even if nobody stops it.
const STEADY_MAX: Duration = Duration::from_secs(600);

impl Steady {
    /// Connects to `enc` and starts the stream; returns once the first
    /// bytes came back, so the connection is established.
    fn start(enc: &Endpoint, rate: u64) -> Steady {
        let conn = enc.connect().expect("connect the steady stream");
        let mut writer_conn = conn.try_clone().expect("clone the conn");
        let mut reader_conn = conn;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));

        let stop_w = stop.clone();
        let writer = thread::spawn(move || {
            const CHUNK: usize = 4096;
            let mut prng = Prng::new();
            let mut hasher = Sha256::new();
            let mut buf = [0u8; CHUNK];
            let mut sent = 0u64;
            let start = Instant::now();
            let per_chunk =
                Duration::from_secs_f64(CHUNK as f64 / rate.max(1) as f64);
            let mut next = start;
            while !stop_w.load(Ordering::SeqCst) && start.elapsed() < STEADY_MAX
            {
                prng.fill(&mut buf);
                writer_conn.write_all(&buf)?;
                hasher.update(buf);
                sent += CHUNK as u64;
                // Pacing: this is a rate, not a wait for an event.
                next += per_chunk;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            writer_conn.shutdown_write()?;
            Ok(Seen {
                len: sent,
                hash: hasher.finalize().into(),
                head: Vec::new(),
            })
        });

        let received_r = received.clone();
        let reader = thread::spawn(move || {
            read_hashed(&mut reader_conn, Some(&received_r)).map(|mut s| {
                s.head.clear();
                s
            })
        });
        let steady = Steady {
            stop,
            received,
            writer: Some(writer),
            reader: Some(reader),
        };
        steady.wait_moved(0, Duration::from_secs(20));
        steady
    }

    /// Bytes echoed back so far.
    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Asserts that more than `mark` bytes come back within `within`.
    fn wait_moved(&self, mark: u64, within: Duration) {
        assert!(
            wait_until(within, || self.received() > mark),
            "the steady stream stopped moving at {mark} bytes"
        );
    }

    /// Stops the writer, waits for the whole echo and checks it.
    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .writer
            .take()
            .expect("writer")
            .join()
            .expect("steady writer panicked")
            .expect("steady stream: write failed");
        let received = self
            .reader
            .take()
            .expect("reader")
            .join()
            .expect("steady reader panicked")
            .expect("steady stream: read failed");
        assert!(sent.len > 0, "the steady stream sent nothing");
        assert_eq!(received.len, sent.len, "steady stream: length");
        assert_eq!(received.hash, sent.hash, "steady stream: hash");
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP server on a thread that does something to each connection it
/// accepts; stopped (and its connections dropped) on drop.
struct Target {
    endpoint: Endpoint,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Target {
    /// Runs `handle` on each accepted connection, on the accept thread;
    /// what it returns is kept open until the target is dropped.
    fn start<F>(mut handle: F) -> Target
    where
        F: FnMut(TcpStream) -> Option<TcpStream> + Send + 'static,
    {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = Endpoint::Tcp(listener.local_addr().expect("address"));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            let mut kept = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        stream.set_nonblocking(false).expect("blocking");
                        kept.extend(handle(stream));
                    }
                    // Bounded poll: the loop ends when the flag is set.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(POLL)
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        Target {
            endpoint,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Accepts and resets at once.
    fn resetter() -> Target {
        Target::start(|s| {
            arm_reset(&s);
            drop(s);
            None
        })
    }

    /// Accepts and never reads.
    fn black_hole() -> Target {
        Target::start(Some)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits, at most `within`, until the daemon's descriptor count is at
/// most `bound`; panics with the count and the log otherwise.
fn wait_fds_at_most(spipes: &Spipes, bound: usize, within: Duration) {
    let pid = spipes.pid();
    if !wait_until(within, || fd_count(pid) <= bound) {
        panic!(
            "spipes still has {} descriptors after {within:?} (bound \
             {bound}); log tail:\n{}",
            fd_count(pid),
            tail(&spipes.log(), 40)
        );
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `n` random bytes through `endpoint` and checks the echo.
fn round_trip(endpoint: &Endpoint, n: u64) {
    let conn = endpoint.connect().expect("connect");
    let t = exchange(conn, n).expect("round trip");
    assert_eq!(t.received.len, n, "round trip: length");
    assert_eq!(t.received.hash, t.sent.hash, "round trip: hash");
}

/// Asserts that the daemon is still running.
fn assert_alive(spipes: &mut Spipes) {
    if let Some(status) = spipes.try_wait() {
        panic!("spipes exited ({status}); log:\n{}", spipes.log());
    }
}

// ---------------------------------------------------------------------
// 1. Targets that refuse, reset or stall
// ---------------------------------------------------------------------

/// A target with nothing listening, a target that resets at once, and
/// both behind a decrypt pipe: the client is closed promptly each time.
/// A target that accepts and never reads: the client can write only
/// until the buffers fill, and the daemon's memory stays bounded.
#[test]
fn dead_resetting_and_stalled_targets() {
    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let [
        refuse,
        chain,
        chain_dec,
        reset,
        rchain,
        rchain_dec,
        hole,
        hole_dec,
    ] = free_endpoints();
    let [dead] = free_endpoints();
    let resetter = Target::resetter();
    let black_hole = Target::black_hole();

    let mut toml = String::from(DAEMON) + &pair.toml(&key);
    let pipes = [
        ("refuse", "encrypt", &refuse, &dead),
        ("chain", "encrypt", &chain, &chain_dec),
        ("chain_dec", "decrypt", &chain_dec, &dead),
        ("reset", "encrypt", &reset, &resetter.endpoint),
        ("rchain", "encrypt", &rchain, &rchain_dec),
        ("rchain_dec", "decrypt", &rchain_dec, &resetter.endpoint),
        ("hole", "encrypt", &hole, &hole_dec),
        ("hole_dec", "decrypt", &hole_dec, &black_hole.endpoint),
    ];
    for (name, mode, source, target) in pipes {
        toml += &pipe_toml(name, mode, source, target, &key, &[]);
    }
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);
    let steady = Steady::start(&pair.enc, 1 << 20);

    // Refused and reset targets: closed promptly, five times each.
    for (what, source) in [
        ("nothing listening", &refuse),
        ("nothing listening behind a decrypt pipe", &chain),
        ("target resets", &reset),
        ("target resets behind a decrypt pipe", &rchain),
    ] {
        for _ in 0..5 {
            let mark = steady.received();
            let mut conn = source.connect().expect("connect");
            // The write may already fail; the close is what counts.
            let _ = conn.write_all(b"hello");
            let started = Instant::now();
            let closed = expect_closed(&mut conn, Duration::from_secs(5));
            assert!(
                closed.received.is_empty(),
                "{what}: got bytes from a dead target"
            );
            eprintln!("{what}: closed after {:?}", started.elapsed());
            steady.wait_moved(mark, Duration::from_secs(10));
        }
    }
    assert!(
        resetter.accepted() >= 10,
        "the resetting target was dialled"
    );

    // A target that never reads: push up to 512 MiB within a bounded
    // time; the writes must stall, and memory stay bounded.
    let pid = spipes.pid();
    let rss_before = rss_kib(pid);
    let mark = steady.received();
    let conn = hole.connect().expect("connect");
    conn.set_timeouts(Duration::from_secs(3)).expect("timeouts");
    let mut writer = conn.try_clone().expect("clone");
    let pushed = thread::spawn(move || {
        let chunk = vec![0x5au8; 256 * 1024];
        let mut written = 0u64;
        let started = Instant::now();
        let limit = 512u64 << 20;
        while written < limit && started.elapsed() < Duration::from_secs(60) {
            match writer.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return (written, true);
                }
                Err(e) => panic!("write to the stalled pipe failed: {e}"),
            }
        }
        (written, false)
    })
    .join()
    .expect("writer panicked");
    let (written, stalled) = pushed;
    let rss_after = rss_kib(pid);
    eprintln!(
        "stalled target: {} MiB written before the writes blocked; RSS \
         {rss_before} -> {rss_after} KiB",
        written >> 20
    );
    assert!(stalled, "512 MiB went into a target that never reads");
    assert!(written < 256 << 20, "{written} bytes buffered somewhere");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB: unbounded buffering"
    );
    assert_eq!(black_hole.accepted(), 1);
    steady.wait_moved(mark, Duration::from_secs(10));
    drop(conn);

    assert_alive(&mut spipes);
    steady.finish();
}

// ---------------------------------------------------------------------
// 2. Peers that reset mid-stream
// ---------------------------------------------------------------------

/// 2,000 connections whose peers reset mid-stream (SO_LINGER 0, then
/// close), racing a backend that resets or closes at a random moment,
/// and raw peers that reset the encrypted side mid-handshake or
/// mid-packet: the daemon stays up, still serves, and its descriptor
/// count returns to the baseline.
#[test]
fn resets_mid_stream_leak_nothing() {
    const CONNECTIONS: usize = 2_000;
    const THREADS: usize = 8;

    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let [r_enc, r_dec] = free_endpoints();

    // The backend reads a random amount, then resets or closes.
    let backend_rng = Arc::new(Mutex::new(Prng::new()));
    let backend = Target::start(move |stream| {
        let (want, reset) = {
            let mut rng = backend_rng.lock().expect("rng");
            let v = rng.next_u64();
            ((v % 65_536) as usize, v >> 32 & 1 == 1)
        };
        thread::spawn(move || {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0;
            while got < want {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got += n;
                        let _ = stream.write_all(&buf[..n.min(512)]);
                    }
                }
            }
            if reset {
                arm_reset(&stream);
            }
        });
        None
    });

    let fs_off = [("forward_secrecy", "\"off\"")];
    let toml = String::from(DAEMON)
        + &pair.toml(&key)
        + &pipe_toml("r_enc", "encrypt", &r_enc, &r_dec, &key, &fs_off)
        + &pipe_toml(
            "r_dec",
            "decrypt",
            &r_dec,
            &backend.endpoint,
            &key,
            &fs_off,
        );
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);
    let steady = Steady::start(&pair.enc, 1 << 20);
    let pid = spipes.pid();
    let baseline = fd_count(pid);

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(240);
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (done, failures) = (done.clone(), failures.clone());
            let (plain, wire) = (tcp_addr(&r_enc), tcp_addr(&r_dec));
            thread::spawn(move || {
                let mut rng = Prng::new();
                for _ in 0..CONNECTIONS / THREADS {
                    if Instant::now() > deadline {
                        break;
                    }
                    if let Err(e) = one_reset(&mut rng, plain, wire) {
                        failures.lock().expect("lock").push(e.to_string());
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // The steady stream keeps moving while the resets run.
    let mut mark = steady.received();
    while workers.iter().any(|w| !w.is_finished()) {
        steady.wait_moved(mark, Duration::from_secs(10));
        mark = steady.received();
        thread::sleep(Duration::from_millis(200));
    }
    for w in workers {
        w.join().expect("worker panicked");
    }
    let failures = failures.lock().expect("lock").clone();
    assert_eq!(done.load(Ordering::SeqCst), CONNECTIONS, "all ran in time");
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connects failed, first: {:?}",
        failures.len(),
        failures.first()
    );

    // Many resets came after the handshake, with data reaching the
    // backend.
    eprintln!("the backend accepted {} connections", backend.accepted());
    assert!(backend.accepted() > CONNECTIONS / 10, "few got established");

    assert_alive(&mut spipes);
    wait_fds_at_most(&spipes, baseline, Duration::from_secs(30));
    eprintln!(
        "descriptors back to {} (baseline {baseline})",
        fd_count(pid)
    );
    round_trip(&pair.enc, 1 << 20);
    steady.finish();
}

/// One connection that ends in a reset. Only a failed connect is an
/// error: everything after it may fail, since the other side races.
fn one_reset(
    rng: &mut Prng,
    plain: SocketAddr,
    wire: SocketAddr,
) -> io::Result<()> {
    let v = rng.next_u64();
    let len = (v >> 8) as usize % (64 * 1024) + 1;
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    match v % 3 {
        // A plaintext client writes, maybe reads a little, then resets.
        0 => {
            let mut s = TcpStream::connect(plain)?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = s.write_all(&data);
            if v >> 40 & 1 == 1 {
                let _ = s.read(&mut [0u8; 4096]);
            }
            arm_reset(&s);
        }
        // A raw peer on the encrypted side sends part of a handshake or
        // garbage, then resets.
        1 => {
            let mut s = TcpStream::connect(wire)?;
            let _ = s.write_all(&data[..len % 1500]);
            arm_reset(&s);
        }
        // A plaintext client writes, half-closes and reads until the
        // backend's reset or close, then closes normally.
        _ => {
            let mut s = TcpStream::connect(plain)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(&data);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------
// 3. Idle peers
// ---------------------------------------------------------------------

/// 1,000 peers connect to a decrypt pipe (no connection limit, timeout
/// 1 s) and send nothing: a real client still gets through at once, and
/// after the timeout the peers are freed.
#[test]
fn idle_peers_do_not_lock_out_clients() {
    const PEERS: usize = 1_000;

    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let [idle_enc, idle_dec] = free_endpoints();
    let echo = Backend::echo();
    let toml = unlimited_pair_toml(
        &pair,
        &key,
        "idle",
        [&idle_enc, &idle_dec],
        &echo,
        "1",
    );
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);
    let steady = Steady::start(&pair.enc, 1 << 20);
    let pid = spipes.pid();
    let baseline = fd_count(pid);

    let mark = steady.received();
    let started = Instant::now();
    let peers: Vec<TcpStream> = (0..PEERS)
        .map(|_| {
            TcpStream::connect(tcp_addr(&idle_dec)).expect("connect a peer")
        })
        .collect();
    eprintln!("{PEERS} idle peers connected in {:?}", started.elapsed());

    // A real client, through the encrypt pipe, while the peers sit there.
    let started = Instant::now();
    round_trip(&idle_enc, 64 * 1024);
    let took = started.elapsed();
    eprintln!("a real client got through in {took:?}");
    assert!(took < Duration::from_secs(5), "the client waited {took:?}");
    steady.wait_moved(mark, Duration::from_secs(10));

    // After the timeout every peer is closed: each sees the server's
    // nonce, then the end.
    wait_fds_at_most(&spipes, baseline + 8, Duration::from_secs(15));
    for mut peer in peers {
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        match peer.read_to_end(&mut got) {
            Ok(_) => assert_eq!(got.len(), 32, "the server's nonce, then EOF"),
            Err(e) => assert_eq!(
                e.kind(),
                io::ErrorKind::ConnectionReset,
                "peer not closed: {e}"
            ),
        }
    }
    let log = spipes.log();
    assert!(
        log.contains("dial plus handshake timed out"),
        "{}",
        tail(&log, 20)
    );

    assert_alive(&mut spipes);
    steady.finish();
}

/// An encrypt pipe with `max_handshakes = 1` whose first connection
/// meets a server that accepts and then says nothing: a second
/// connection gets through while the first still waits, because a permit
/// is taken only once the server has proved the key, for the
/// exponentiation alone.
#[test]
fn stalled_server_does_not_hold_the_handshake_permit() {
    let ws = Workspace::new();
    let key = ws.write_key("key");
    let echo = Backend::echo();
    let [enc, dec] = free_endpoints();

    // In front of the decrypt pipe: hold the first connection silent,
    // forward the second.
    let front = TcpListener::bind("127.0.0.1:0").expect("bind the front");
    let front_end = Endpoint::Tcp(front.local_addr().expect("address"));
    let dec_addr = tcp_addr(&dec);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let relay = thread::spawn(move || {
        let mut incoming = front.incoming();
        let held = incoming.next().expect("one").expect("accept the first");
        held_tx.send(held).expect("hand over the held connection");
        let conn = incoming.next().expect("two").expect("accept the second");
        forward(conn, TcpStream::connect(dec_addr).expect("dial decrypt"));
    });

    let extra = [("max_handshakes", "1"), ("timeout", "60")];
    let toml = String::from("[daemon]\ncontrol_socket = \"\"\n\n")
        + &pipe_toml("enc", "encrypt", &enc, &front_end, &key, &extra)
        + &pipe_toml("dec", "decrypt", &dec, echo.endpoint(), &key, &[]);
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);

    // The first client's handshake stalls at the server's nonce.
    let _first = enc.connect().expect("connect the first client");
    let mut held = held_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("spipes dialled for the first client");
    let mut nonce = [0u8; 32];
    held.read_exact(&mut nonce).expect("the client's nonce");

    // The second gets through, hash for hash.
    let t = exchange(enc.connect().expect("connect"), 256 * 1024)
        .expect("the second client's transfer");
    assert_eq!(t.received.hash, t.sent.hash, "echoed bytes differ");
    relay.join().expect("relay thread");

    // The first is still waiting, not timed out: nothing more has come
    // and the connection is open.
    held.set_nonblocking(true).expect("nonblocking");
    let mut more = [0u8; 1];
    let e = held
        .read(&mut more)
        .expect_err("the stalled dial sent more");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
    assert_alive(&mut spipes);
}

/// Copies both ways between `a` and `b` until each side ends, passing
/// each end on as a shutdown of writing.
fn forward(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    let up = copy(a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    let down = copy(b, a);
    up.join().expect("copy up");
    down.join().expect("copy down");
}

// ---------------------------------------------------------------------
// 4. Handshake flood
// ---------------------------------------------------------------------

/// 200 concurrent clients with the right key hammer a decrypt pipe
/// (forward secrecy on, `max_handshakes = 4`) while an established
/// connection on the other pipe moves 16 MiB each way: it completes and
/// its hash checks out.
///
/// The flood clients send `y = 1` (forward secrecy off on their side) so
/// that the test process does no exponentiations of its own; the daemon
/// still does its two per handshake.
#[test]
fn handshake_flood_does_not_starve_established_connections() {
    const CLIENTS: usize = 200;
    const FLOOD_MAX: Duration = Duration::from_secs(120);

    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let [flood] = free_endpoints();
    let sink = Backend::sink();
    let toml = String::from(DAEMON)
        + &pair.toml(&key)
        + &pipe_toml(
            "flood",
            "decrypt",
            &flood,
            sink.endpoint(),
            &key,
            &[
                ("forward_secrecy", "\"on\""),
                ("max_handshakes", "4"),
                ("max_connections", "0"),
                ("timeout", "30"),
            ],
        );
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);
    let steady = Steady::start(&pair.enc, 1 << 20);

    // An established connection: one byte there and back first.
    let mut bulk = pair.enc.connect().expect("connect");
    bulk.write_all(b"x").expect("write");
    let mut one = [0u8; 1];
    bulk.read_exact(&mut one).expect("echo of the first byte");

    // The flood, on a runtime of its own.
    let key_file = fs::read(&key).expect("read the key");
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let flood_thread = {
        let (stop, handshakes, errors) =
            (stop.clone(), handshakes.clone(), errors.clone());
        let target = tcp_addr(&flood);
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let key = Arc::new(spipes::protocol::Key::from_file_contents(
                    &key_file,
                ));
                let started = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..CLIENTS {
                    let (stop, handshakes, errors, key) = (
                        stop.clone(),
                        handshakes.clone(),
                        errors.clone(),
                        key.clone(),
                    );
                    tasks.spawn(async move {
                        while !stop.load(Ordering::SeqCst)
                            && started.elapsed() < FLOOD_MAX
                        {
                            let attempt = tokio::time::timeout(
                                Duration::from_secs(20),
                                flood_handshake(target, &key),
                            )
                            .await;
                            match attempt {
                                Ok(Ok(())) => {
                                    handshakes.fetch_add(1, Ordering::SeqCst)
                                }
                                _ => errors.fetch_add(1, Ordering::SeqCst),
                            };
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
        })
    };

    // Let the flood build up, then move the stream through it.
    assert!(
        wait_until(Duration::from_secs(30), || handshakes
            .load(Ordering::SeqCst)
            >= 20),
        "the flood made no handshakes; log:\n{}",
        tail(&spipes.log(), 20)
    );
    let mark = steady.received();
    let started = Instant::now();
    let flooded_before = handshakes.load(Ordering::SeqCst);
    let t = exchange(bulk, 16 << 20).expect("the bulk transfer");
    let took = started.elapsed();
    let flooded = handshakes.load(Ordering::SeqCst) - flooded_before;
    eprintln!(
        "16 MiB each way in {took:?} while {flooded} flood handshakes \
         completed ({} errors)",
        errors.load(Ordering::SeqCst)
    );
    assert_eq!(t.received.len, 16 << 20, "bulk: length");
    assert_eq!(t.received.hash, t.sent.hash, "bulk: hash");
    assert!(
        took < Duration::from_secs(60),
        "the bulk transfer took {took:?}"
    );
    steady.wait_moved(mark, Duration::from_secs(10));

    stop.store(true, Ordering::SeqCst);
    flood_thread.join().expect("flood thread panicked");
    assert_alive(&mut spipes);
    steady.finish();
}

/// One flood client: connect, handshake with `y = 1`, send one packet,
/// close.
async fn flood_handshake(
    target: SocketAddr,
    key: &spipes::protocol::Key,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(target).await?;
    let mut keys = spipes::protocol::client_handshake(
        &mut s,
        key,
        spipes::protocol::ForwardSecrecy::Off,
    )
    .await
    .map_err(io::Error::other)?;
    let mut packet = Vec::new();
    keys.sealer.seal(b"flood", &mut packet);
    s.write_all(&packet).await?;
    s.shutdown().await
}

// ---------------------------------------------------------------------
// 5. Descriptor exhaustion
// ---------------------------------------------------------------------

/// spipes under `nofile = 64`: connections until accept fails; the
/// daemon stays up, does not spin (under 0.5 s of CPU over 3 s of
/// exhaustion), and serves new clients once the connections close.
///
/// The limit is set on the running daemon with `prlimit --pid`, since
/// the shared harness starts the binary itself; the accept loop sees the
/// same EMFILE either way.
#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    const LIMIT: usize = 64;

    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let [ex_enc, ex_dec] = free_endpoints();
    let echo = Backend::echo();
    let toml =
        unlimited_pair_toml(&pair, &key, "ex", [&ex_enc, &ex_dec], &echo, "60");
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);
    // A slow stream, so that its own CPU cost stays well below the bound.
    let steady = Steady::start(&pair.enc, 256 * 1024);
    let pid = spipes.pid();

    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={LIMIT}:{LIMIT}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
    let baseline = fd_count(pid);
    eprintln!("{baseline} descriptors open at the start");
    assert!(baseline < LIMIT - 8, "too many descriptors to start with");

    // Connect until the daemon is out of descriptors, then a few more
    // that wait in the backlog.
    let mut peers = Vec::new();
    while fd_count(pid) < LIMIT && peers.len() < 4 * LIMIT {
        peers.push(TcpStream::connect(tcp_addr(&ex_dec)).expect("connect"));
        wait_until(Duration::from_millis(200), || {
            fd_count(pid) >= (baseline + peers.len()).min(LIMIT)
        });
    }
    for _ in 0..16 {
        peers.push(TcpStream::connect(tcp_addr(&ex_dec)).expect("connect"));
    }
    assert!(
        wait_until(Duration::from_secs(10), || spipes
            .log()
            .contains("accept failed; backing off")),
        "no accept failure logged with {} descriptors; log:\n{}",
        fd_count(pid),
        tail(&spipes.log(), 20)
    );

    // Three seconds of exhaustion: a measurement window, not a wait.
    let mark = steady.received();
    let cpu_before = cpu_time(pid);
    thread::sleep(Duration::from_secs(3));
    let used = cpu_time(pid).saturating_sub(cpu_before);
    eprintln!("CPU time over 3 s of exhaustion: {used:?}");
    assert!(
        used < Duration::from_millis(500),
        "spinning: {used:?} of CPU"
    );
    assert_alive(&mut spipes);
    steady.wait_moved(mark, Duration::from_secs(10));

    // Close every connection: new clients are served again.
    drop(peers);
    wait_fds_at_most(&spipes, baseline + 4, Duration::from_secs(20));
    let started = Instant::now();
    round_trip(&ex_enc, 256 * 1024);
    eprintln!("served again after {:?}", started.elapsed());
    assert_alive(&mut spipes);
    steady.finish();
}

// ---------------------------------------------------------------------
// 6. Config or key file gone while running
// ---------------------------------------------------------------------

/// The index just after the last line of `log` that contains `what`.
fn after_last(log: &str, what: &str) -> Option<usize> {
    log.rfind(what).map(|i| i + what.len())
}

/// Sends SIGHUP and waits until the log shows that reload's outcome:
/// `reload rejected` (when `accepted` is false) or `reloaded:` after the
/// last `SIGHUP: reloading`.
///
/// Drains the notify socket meanwhile, as systemd would: the daemon's
/// notifications block once its queue is full (see
/// `sigterm_after_sighup_storm_with_a_slow_notify_reader`).
fn sighup_expect(spipes: &mut Spipes, accepted: bool) {
    spipes.notifications();
    let before = spipes.log().matches("SIGHUP: reloading").count();
    spipes.signal(Signal::Hup);
    let want = if accepted {
        "reloaded: "
    } else {
        "reload rejected"
    };
    let seen = wait_until(Duration::from_secs(20), || {
        spipes.notifications();
        let log = spipes.log();
        if log.matches("SIGHUP: reloading").count() <= before {
            return false;
        }
        let at = after_last(&log, "SIGHUP: reloading").expect("a SIGHUP line");
        log[at..].contains(want)
    });
    assert!(
        seen,
        "no `{want}` after SIGHUP; log:\n{}",
        tail(&spipes.log(), 30)
    );
}

/// Replaces `path` (a file) with an empty folder.
fn replace_with_folder(path: &Path) {
    fs::remove_file(path).expect("remove the file");
    fs::create_dir(path).expect("make a folder in its place");
}

/// Deleting the config or a key file, or putting a folder in its place,
/// then SIGHUP: the reload is rejected and the daemon serves on with
/// what it loaded; a good file and SIGHUP apply again.
#[test]
fn vanished_files_reject_the_reload_and_keep_serving() {
    let ws = Workspace::new();
    let key = ws.write_key("key");
    let key_bytes = fs::read(&key).expect("read the key");
    let pair = SteadyPair::new();
    let [extra] = free_endpoints();
    let good = String::from(DAEMON) + &pair.toml(&key);
    let config = ws.write_config("spipes.toml", &good);
    let mut spipes = Spipes::start(&config);
    let steady = Steady::start(&pair.enc, 1 << 20);

    // Writes the config through a rename, so no reader sees half of it.
    let write_config = |text: &str| {
        let staging = ws.write_config("spipes.toml.new", text);
        fs::rename(staging, &config).expect("rename the config into place");
    };

    for (what, break_it) in [
        ("config deleted", 0),
        ("config replaced with a folder", 1),
        ("key file deleted", 2),
        ("key file replaced with a folder", 3),
    ] {
        let mark = steady.received();
        match break_it {
            0 => fs::remove_file(&config).expect("delete the config"),
            1 => {
                if config.is_file() {
                    fs::remove_file(&config).expect("delete the config");
                }
                fs::create_dir(&config).expect("a folder for the config");
            }
            2 => fs::remove_file(&key).expect("delete the key"),
            _ => replace_with_folder(&key),
        }
        sighup_expect(&mut spipes, false);
        let log = spipes.log();
        let at = log.rfind("reload rejected").expect("a rejection");
        let line = log[at..].lines().next().unwrap_or_default();
        eprintln!("{what}: {line}");
        // Still serving with the loaded config, old and new connections.
        steady.wait_moved(mark, Duration::from_secs(10));
        round_trip(&pair.enc, 256 * 1024);
        assert_alive(&mut spipes);

        // Restore, and for the config also add a pipe, so that applying
        // it shows.
        if break_it == 1 {
            fs::remove_dir(&config).expect("remove the folder");
        }
        if break_it == 3 {
            fs::remove_dir(&key).expect("remove the folder");
        }
        if break_it >= 2 {
            let staging = ws.write_file("key.new", &key_bytes);
            fs::set_permissions(
                &staging,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod");
            fs::rename(staging, &key).expect("restore the key");
            write_config(&good);
        } else {
            let with_extra = good.clone()
                + &pipe_toml(
                    &format!("extra{break_it}"),
                    "encrypt",
                    &extra,
                    &pair.dec,
                    &key,
                    &[],
                );
            write_config(&with_extra);
        }
        sighup_expect(&mut spipes, true);
        if break_it < 2 {
            assert!(
                extra.wait_listening(true, Duration::from_secs(10)),
                "{what}: the restored config's new pipe does not listen"
            );
            round_trip(&extra, 64 * 1024);
            // Back to the plain config for the next round.
            write_config(&good);
            sighup_expect(&mut spipes, true);
            assert!(extra.wait_listening(false, Duration::from_secs(10)));
        }
        round_trip(&pair.enc, 64 * 1024);
    }

    assert!(spipes.log().contains("reload rejected"));
    assert_alive(&mut spipes);
    steady.finish();
}

// ---------------------------------------------------------------------
// 7. Signals at any moment
// ---------------------------------------------------------------------

/// The signals a process catches now (`SigCgt` of /proc/PID/status), as
/// a bit mask: bit `n - 1` for signal `n`.
fn caught_signals(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Waits, busily and at most 5 s, until `pid` catches SIGHUP: the first
/// moment a process can take one. Before that it is still in `execve`,
/// the dynamic loader or the Rust runtime's set-up before `main`, where
/// no program can handle a signal; that window is the parent's to cover
/// (systemd sends no SIGHUP before the start).
fn wait_catches_sighup(pid: u32) -> bool {
    const SIGHUP_BIT: u64 = 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if caught_signals(pid) & SIGHUP_BIT != 0 {
            return true;
        }
        // A tight poll: the point is to signal as early as possible.
        thread::yield_now();
    }
    false
}

/// 50 times: start, SIGHUP at once (before READY, before the async
/// runtime and its handlers exist: as soon as the process catches it),
/// then SIGTERM (in a quarter of the runs microseconds later, from one
/// shell): each run must exit 0 within a bound, never killed by the
/// default action of SIGHUP or SIGTERM.
#[test]
fn sighup_then_sigterm_at_start_exits_cleanly() {
    const RUNS: usize = 50;

    let ws = Workspace::new();
    let key = ws.write_key("key");
    let echo = Backend::echo();
    let mut rng = Prng::new();
    let mut failures = Vec::new();

    for run in 0..RUNS {
        let [source] = free_endpoints();
        let toml = String::from(DAEMON)
            + &pipe_toml("p", "encrypt", &source, echo.endpoint(), &key, &[]);
        let config = ws.write_config(&format!("spipes-{run}.toml"), &toml);
        // For a quarter of the runs, a shell that is already running
        // sends both signals microseconds apart, so that the SIGTERM
        // lands in the middle of start-up too.
        let signaller = (run % 4 == 0).then(|| {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "read pid && kill -s HUP $pid && kill -s TERM $pid",
                ])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("run sh")
        });
        let mut spipes = Spipes::spawn(&config);
        assert!(
            wait_catches_sighup(spipes.pid()),
            "run {run}: SIGHUP never caught"
        );
        // Now, or up to 20 ms later: before, during or after start-up.
        let delay = Duration::from_micros(rng.next_u64() % 20_000);
        if run % 2 == 1 {
            thread::sleep(delay);
        }
        if let Some(mut sh) = signaller {
            let mut stdin = sh.stdin.take().expect("sh stdin");
            writeln!(stdin, "{}", spipes.pid()).expect("write to sh");
            drop(stdin);
            assert!(sh.wait().expect("wait for sh").success(), "kill failed");
        } else {
            send_signal(spipes.pid(), Signal::Hup);
            if run % 4 == 3 {
                thread::sleep(delay);
            }
            if spipes.try_wait().is_none() {
                send_signal(spipes.pid(), Signal::Term);
            }
        }
        match spipes.wait_exit(Duration::from_secs(10)) {
            Some(status) if status.success() => {}
            Some(status) => failures.push(format!(
                "run {run}: {status}; log:\n{}",
                tail(&spipes.log(), 10)
            )),
            None => failures.push(format!(
                "run {run}: still running 10 s after SIGTERM; log:\n{}",
                tail(&spipes.log(), 10)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs did not exit 0:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// 100 SIGHUPs during a transfer: the transfer completes, its hash
/// checks out, and the daemon still serves.
#[test]
fn sighup_storm_during_a_transfer() {
    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let config = ws.write_config(
        "spipes.toml",
        &(String::from(DAEMON) + &pair.toml(&key)),
    );
    let mut spipes = Spipes::start_with(&config, &["--log-level", "info"]);
    let steady = Steady::start(&pair.enc, 1 << 20);

    let bulk = pair.enc.connect().expect("connect");
    let transfer = thread::spawn(move || exchange(bulk, 128 << 20));
    let mark = steady.received();
    for _ in 0..100 {
        spipes.signal(Signal::Hup);
        // Read the notifications as systemd would (see the next test).
        spipes.notifications();
    }
    assert!(
        !transfer.is_finished(),
        "the transfer ended before the storm did; make it longer"
    );
    let t = transfer
        .join()
        .expect("transfer panicked")
        .expect("the transfer survived the storm");
    assert_eq!(t.received.len, 128 << 20);
    assert_eq!(t.received.hash, t.sent.hash, "bulk: hash");
    steady.wait_moved(mark, Duration::from_secs(10));

    // Every SIGHUP was taken as a reload, none as a reason to exit. Some
    // may have merged while a reload ran, so count at least one.
    assert!(wait_until(Duration::from_secs(20), || {
        spipes.notifications();
        spipes.log().matches("reloaded: ").count() >= 1
    }));
    spipes.notifications();
    assert!(!spipes.log().contains("reload rejected"));
    assert_alive(&mut spipes);
    round_trip(&pair.enc, 1 << 20);
    steady.finish();
    assert!(spipes.stop().success(), "exit status after the storm");
}

/// 100 SIGHUPs while nobody reads the notify socket (a busy or stuck
/// supervisor): the daemon must still stop on SIGTERM, exit 0, and keep
/// serving until then. A notification that cannot be queued must not
/// block the daemon's control loop.
#[test]
fn sigterm_after_sighup_storm_with_a_slow_notify_reader() {
    let ws = Workspace::new();
    let key = ws.write_key("key");
    let pair = SteadyPair::new();
    let config = ws.write_config(
        "spipes.toml",
        &(String::from(DAEMON) + &pair.toml(&key)),
    );
    let mut spipes = Spipes::start(&config);
    let steady = Steady::start(&pair.enc, 1 << 20);

    let mark = steady.received();
    for _ in 0..100 {
        spipes.signal(Signal::Hup);
    }
    steady.wait_moved(mark, Duration::from_secs(10));
    round_trip(&pair.enc, 1 << 20);
    steady.finish();

    let reloads = spipes.log().matches("SIGHUP: reloading").count();
    spipes.signal(Signal::Term);
    let status = spipes.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM after the storm: {status:?} ({reloads} reloads logged, the \
         last one never finished?); log tail:\n{}",
        tail(&spipes.log(), 10)
    );
}
