//! spipes under systemd, as the packaged unit runs it: the sd_notify
//! sequence that `Type=notify-reload` depends on (READY=1 with a STATUS=,
//! RELOADING=1 with MONOTONIC_USEC= on SIGHUP and READY=1 again, STOPPING=1
//! on SIGTERM, exit 0), a start without `NOTIFY_SOCKET`, and socket
//! activation through `systemd-socket-activate` with a socket matched to a
//! pipe by its `FileDescriptorName=`.
//!
//! Every test chains an encrypt pipe into a decrypt pipe of the same
//! process in front of an echo backend, and checks the echoed bytes by
//! hash. Ports are ephemeral; readiness comes from a notification or a
//! bounded poll, never from a fixed sleep.

mod common;

use std::fs;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Backend, Conn, EXIT_TIMEOUT, Endpoint, READY_TIMEOUT, Signal, Workspace,
    exchange, find_binary, hex, pipe_toml, send_signal, spipes_bin,
    spipes_command, toml_string, wait_child,
};

/// Bytes sent through the pipes by each check.
const PAYLOAD: u64 = 256 * 1024;

/// How often the bounded polls below look again.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

/// One sd_notify datagram, as its `KEY=VALUE` lines.
#[derive(Clone, Debug)]
struct Message {
    raw: String,
    fields: Vec<(String, String)>,
}

impl Message {
    fn parse(bytes: &[u8]) -> Message {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        let fields = raw
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => panic!("notification line without '=': {raw:?}"),
            })
            .collect();
        Message { raw, fields }
    }

    /// The value of `key`, if the message has it.
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// A datagram socket in a temp dir standing in for systemd's
/// `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(ws: &Workspace) -> NotifySocket {
        let path = ws.join("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        NotifySocket { socket, path }
    }

    /// The next datagram, waiting at most `timeout`; panics (with the
    /// daemon's log) if the daemon exits first or the time runs out.
    fn next(&self, daemon: &mut Daemon, timeout: Duration) -> Message {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Short receive slices, so that an exit is noticed soon.
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification within {timeout:?}; log:\n{}",
                daemon.log()
            );
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(50))))
                .expect("set the notify socket's timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => return Message::parse(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = daemon.try_wait() {
                // A datagram sent just before the exit is still queued.
                self.socket.set_nonblocking(true).expect("nonblocking");
                if let Ok(n) = self.socket.recv(&mut buf) {
                    return Message::parse(&buf[..n]);
                }
                panic!(
                    "spipes exited ({status}) while a notification was \
                     awaited; log:\n{}",
                    daemon.log()
                );
            }
        }
    }

    /// Every datagram queued now, without waiting.
    fn queued(&self) -> Vec<Message> {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(Message::parse(&buf[..n]));
        }
        self.socket.set_nonblocking(false).expect("blocking");
        out
    }
}

/// A spawned daemon (spipes itself, or systemd-socket-activate that execs
/// into spipes) with its stderr and stdout in a log file.
///
/// Dropping it sends SIGTERM, a second SIGTERM (which cuts the drain)
/// and SIGKILL, each after a bounded wait, and reaps it; when the test is
/// panicking, the log is printed.
struct Daemon {
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdin closed and output to `ws`/`name`.log.
    fn spawn(mut cmd: Command, ws: &Workspace, name: &str) -> Daemon {
        let log = ws.join(&format!("{name}.log"));
        let file = fs::File::create(&log).expect("create the log file");
        let out = file.try_clone().expect("clone the log file");
        let child = cmd
            .current_dir(ws.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Daemon {
            child,
            status: None,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if it has exited (reaping it).
    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Sends `signal`; panics if the process already exited.
    fn signal(&mut self, signal: Signal) {
        if let Some(status) = self.try_wait() {
            panic!("spipes already exited ({status}); log:\n{}", self.log());
        }
        send_signal(self.pid(), signal);
    }

    /// Waits at most [`EXIT_TIMEOUT`] for the exit; panics if it does
    /// not come.
    fn wait_exit(&mut self) -> ExitStatus {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, EXIT_TIMEOUT);
        }
        match self.status {
            Some(status) => status,
            None => panic!(
                "spipes still ran {EXIT_TIMEOUT:?} after SIGTERM; log:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for signal in [Signal::Term, Signal::Term, Signal::Kill] {
            if self.try_wait().is_some() {
                break;
            }
            send_signal(self.pid(), signal);
            if self.status.is_none() {
                self.status =
                    wait_child(&mut self.child, Duration::from_secs(5));
            }
        }
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        if thread::panicking() {
            eprintln!("--- spipes log ---\n{}--- end ---", self.log());
        }
    }
}

/// The chain every test runs: an encrypt pipe named `web` on `entry`,
/// into a decrypt pipe `web-in` on a fresh port, into an echo backend.
struct Chain {
    config: PathBuf,
    entry: Endpoint,
    _backend: Backend,
}

impl Chain {
    fn new(ws: &Workspace, entry: Endpoint) -> Chain {
        let key = ws.write_key("web.key");
        let backend = Backend::echo();
        let middle = Endpoint::free_tcp();
        let control = ws.join("control.sock");
        let toml = format!(
            "[daemon]\ndrain_timeout = 5\ncontrol_socket = {}\n\n{}\n{}",
            toml_string(control.to_str().expect("UTF-8 path")),
            pipe_toml("web", "encrypt", &entry, &middle, &key, &[]),
            pipe_toml(
                "web-in",
                "decrypt",
                &middle,
                backend.endpoint(),
                &key,
                &[]
            ),
        );
        Chain {
            config: ws.write_config("spipes.toml", &toml),
            entry,
            _backend: backend,
        }
    }
}

/// Sends [`PAYLOAD`] random bytes through `conn` and checks that the
/// same bytes came back.
fn assert_echoes(conn: Conn, what: &str) {
    let t = exchange(conn, PAYLOAD)
        .unwrap_or_else(|e| panic!("{what}: exchange failed: {e}"));
    assert_eq!(t.sent.len, PAYLOAD, "{what}: bytes sent");
    assert_eq!(t.received.len, PAYLOAD, "{what}: bytes echoed");
    assert_eq!(
        hex(&t.received.hash),
        hex(&t.sent.hash),
        "{what}: the echoed bytes differ from those sent"
    );
}

/// Connects to `to`; panics with the daemon's log on failure.
fn connect(to: &Endpoint, daemon: &Daemon) -> Conn {
    to.connect().unwrap_or_else(|e| {
        panic!("connect to {to}: {e}; log:\n{}", daemon.log())
    })
}

/// `spipes run` on the chain's config, notifying `notify`.
fn run_notified(
    ws: &Workspace,
    chain: &Chain,
    notify: &NotifySocket,
) -> Daemon {
    let mut cmd = spipes_command();
    cmd.arg("run")
        .arg("-c")
        .arg(&chain.config)
        .env("NOTIFY_SOCKET", &notify.path);
    Daemon::spawn(cmd, ws, "spipes")
}

/// Asserts `m` reports readiness: READY=1 and a non-empty STATUS= that
/// counts both pipes as running.
fn assert_ready(m: &Message, when: &str) {
    assert!(
        m.has("READY", "1"),
        "{when}: expected READY=1, got {:?}",
        m.raw
    );
    let status = m.get("STATUS").unwrap_or_else(|| {
        panic!("{when}: READY=1 without STATUS=: {:?}", m.raw)
    });
    assert!(
        status.contains("2 pipes running"),
        "{when}: STATUS= should count both pipes as running: {:?}",
        m.raw
    );
}

/// Sends SIGTERM: the daemon must send `STOPPING=1` and exit 0.
fn assert_stops_cleanly(daemon: &mut Daemon, notify: &NotifySocket) {
    daemon.signal(Signal::Term);
    let stopping = notify.next(daemon, EXIT_TIMEOUT);
    assert!(
        stopping.has("STOPPING", "1"),
        "after SIGTERM: expected STOPPING=1, got {:?}",
        stopping.raw
    );
    let status = daemon.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; log:\n{}",
        daemon.log()
    );
}

/// Asserts `m` starts a reload (RELOADING=1 with MONOTONIC_USEC=, all
/// digits) and returns the monotonic time.
fn assert_reloading(m: &Message) -> u64 {
    assert!(
        m.has("RELOADING", "1"),
        "after SIGHUP: expected RELOADING=1 first, got {:?}",
        m.raw
    );
    assert!(
        m.get("READY").is_none(),
        "RELOADING=1 and READY=1 in one message: {:?}",
        m.raw
    );
    let usec = m.get("MONOTONIC_USEC").unwrap_or_else(|| {
        panic!(
            "RELOADING=1 without MONOTONIC_USEC= (Type=notify-reload fails \
             such a reload): {:?}",
            m.raw
        )
    });
    assert!(
        !usec.is_empty() && usec.bytes().all(|b| b.is_ascii_digit()),
        "MONOTONIC_USEC= is not decimal digits: {:?}",
        m.raw
    );
    let usec: u64 = usec.parse().expect("MONOTONIC_USEC fits in u64");
    assert!(usec > 0, "MONOTONIC_USEC=0: {:?}", m.raw);
    usec
}

/// The path of the external binary `name` (from Debian package
/// `package`). When it is missing, prints a message and returns `None`, and
/// the test should return at once; with `SPIPES_REQUIRE_SPIPED=1` it
/// panics instead, so that CI fails rather than skips.
fn find_or_skip(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = find_binary(name) {
        return Some(path);
    }
    if std::env::var_os("SPIPES_REQUIRE_SPIPED").is_some_and(|v| v == "1") {
        panic!(
            "{name} is not installed and SPIPES_REQUIRE_SPIPED=1 forbids \
             skipping: install it (Debian: apt-get install {package})"
        );
    }
    eprintln!("skipping: {name} not installed (Debian package {package})");
    None
}

// ---------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------

/// The whole notification sequence, in order, with nothing in between:
/// READY=1 + STATUS= at start; per SIGHUP, RELOADING=1 + MONOTONIC_USEC=
/// then READY=1; STOPPING=1 on SIGTERM, then exit 0 and silence.
#[test]
fn notify_sequence_ready_reload_stopping() {
    let ws = Workspace::new();
    let chain = Chain::new(&ws, Endpoint::free_tcp());
    let notify = NotifySocket::bind(&ws);

    let mut daemon = run_notified(&ws, &chain, &notify);

    let ready = notify.next(&mut daemon, READY_TIMEOUT);
    assert_ready(&ready, "at start");
    assert_echoes(connect(&chain.entry, &daemon), "after start");

    // Two reloads: each is RELOADING=1 then READY=1, and the monotonic
    // times move forward.
    let mut last_usec = 0;
    for round in 1..=2 {
        daemon.signal(Signal::Hup);
        let reloading = notify.next(&mut daemon, READY_TIMEOUT);
        let usec = assert_reloading(&reloading);
        assert!(
            usec > last_usec,
            "reload {round}: MONOTONIC_USEC={usec} is not after {last_usec}"
        );
        last_usec = usec;
        let ready = notify.next(&mut daemon, READY_TIMEOUT);
        assert_ready(&ready, &format!("after reload {round}"));
        assert_echoes(
            connect(&chain.entry, &daemon),
            &format!("after reload {round}"),
        );
    }

    assert_stops_cleanly(&mut daemon, &notify);
    let after: Vec<String> =
        notify.queued().into_iter().map(|m| m.raw).collect();
    assert!(
        after.is_empty(),
        "notifications after STOPPING=1: {after:?}"
    );
}

/// A reload that is rejected still ends in READY=1 (systemd has no way
/// to fail it), and its STATUS= says it was rejected until a good reload
/// clears that; the pipes serve throughout. The file is replaced by
/// rename, which the watcher turns into exactly one reload.
#[test]
fn rejected_reload_shows_in_status() {
    let ws = Workspace::new();
    let chain = Chain::new(&ws, Endpoint::free_tcp());
    let notify = NotifySocket::bind(&ws);
    let good = fs::read_to_string(&chain.config).expect("read the config");

    let mut daemon = run_notified(&ws, &chain, &notify);
    assert_ready(&notify.next(&mut daemon, READY_TIMEOUT), "at start");

    // A key that does not exist: rejected, and said so.
    let replace = |text: &str| {
        let staged = ws.join("spipes.toml.new");
        fs::write(&staged, text).expect("write the staged config");
        fs::rename(&staged, &chain.config).expect("rename over the config");
    };
    replace(&good.replace("drain_timeout", "drain_timeot"));
    assert_reloading(&notify.next(&mut daemon, READY_TIMEOUT));
    let ready = notify.next(&mut daemon, READY_TIMEOUT);
    assert_ready(&ready, "after the rejected reload");
    assert_eq!(
        ready.get("STATUS"),
        Some(
            "2 pipes running, 0 failed, 0 draining, 0 connections; last \
             reload rejected, see the log"
        ),
        "after the rejected reload"
    );
    assert_echoes(connect(&chain.entry, &daemon), "after the rejected reload");

    // The good file again: the note is gone.
    replace(&good);
    assert_reloading(&notify.next(&mut daemon, READY_TIMEOUT));
    let ready = notify.next(&mut daemon, READY_TIMEOUT);
    assert_eq!(
        ready.get("STATUS"),
        Some("2 pipes running, 0 failed, 0 draining, 0 connections"),
        "after the good reload"
    );

    assert_stops_cleanly(&mut daemon, &notify);
}

/// Without `NOTIFY_SOCKET`, spipes serves all the same and stops cleanly.
#[test]
fn runs_without_notify_socket() {
    let ws = Workspace::new();
    let chain = Chain::new(&ws, Endpoint::free_tcp());

    let mut cmd = spipes_command(); // removes NOTIFY_SOCKET
    cmd.arg("run").arg("-c").arg(&chain.config);
    let mut daemon = Daemon::spawn(cmd, &ws, "spipes");

    // Bounded poll: connect until the encrypt pipe accepts.
    let deadline = Instant::now() + READY_TIMEOUT;
    let conn = loop {
        if let Some(status) = daemon.try_wait() {
            panic!("spipes exited ({status}) at start; log:\n{}", daemon.log());
        }
        match chain.entry.connect() {
            Ok(conn) => break conn,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{} not accepting within {READY_TIMEOUT:?}: {e}; log:\n{}",
                chain.entry,
                daemon.log()
            ),
        }
        thread::sleep(POLL);
    };
    assert_echoes(conn, "without NOTIFY_SOCKET");

    daemon.signal(Signal::Term);
    let status = daemon.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; log:\n{}",
        daemon.log()
    );
}

/// Socket activation: systemd-socket-activate listens on one port and,
/// at the first connection, execs spipes with that socket named `web`.
/// The `web` pipe's own source is another port, which stays unbound: the
/// pipe serves through the passed socket, matched by name.
#[test]
fn socket_activation_by_fd_name() {
    let Some(activate) = find_or_skip("systemd-socket-activate", "systemd")
    else {
        return;
    };
    let ws = Workspace::new();
    // The address in the config; nothing may ever listen there.
    let configured = Endpoint::free_tcp();
    let chain = Chain::new(&ws, configured.clone());
    let passed = Endpoint::free_tcp();
    let notify = NotifySocket::bind(&ws);

    let mut cmd = Command::new(activate);
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .arg("-l")
        .arg(passed.config())
        .arg("--fdname=web")
        .arg("-E")
        .arg(format!(
            "NOTIFY_SOCKET={}",
            notify.path.to_str().expect("UTF-8 path")
        ))
        .arg("--")
        .arg(spipes_bin())
        .arg("run")
        .arg("-c")
        .arg(&chain.config);
    let mut daemon = Daemon::spawn(cmd, &ws, "activate");

    // systemd-socket-activate binds, then waits for a connection before
    // it execs spipes.
    let deadline = Instant::now() + READY_TIMEOUT;
    while !passed.is_listening() {
        if let Some(status) = daemon.try_wait() {
            panic!(
                "systemd-socket-activate exited ({status}); log:\n{}",
                daemon.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate not listening on {passed} within \
             {READY_TIMEOUT:?}; log:\n{}",
            daemon.log()
        );
        thread::sleep(POLL);
    }
    let first = connect(&passed, &daemon);

    let ready = notify.next(&mut daemon, READY_TIMEOUT);
    assert_ready(&ready, "socket-activated start");
    // The same process, now spipes itself.
    let exe = fs::read_link(format!("/proc/{}/exe", daemon.pid()))
        .expect("read /proc/PID/exe");
    let spipes = fs::canonicalize(spipes_bin()).expect("canonical path");
    assert_eq!(exe, spipes, "the activated process is not spipes");

    assert_echoes(first, "the connection that activated spipes");
    assert_echoes(connect(&passed, &daemon), "a later connection");
    assert!(
        !configured.is_listening(),
        "the web pipe bound its configured source {configured} instead of \
         using the passed socket; log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        !log.contains("no pipe uses this passed socket"),
        "the passed socket was left unused; log:\n{log}"
    );

    assert_stops_cleanly(&mut daemon, &notify);
}
