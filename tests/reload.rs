//! Hot reload: every way a config or key file gets replaced gives exactly
//! one reload, a burst of writes gives one, a bad file is rejected with
//! its position while every pipe keeps serving, reloads under load refuse
//! and corrupt nothing, listeners survive renames, removed pipes drain,
//! keys rotate with the real spiped, and a pipe whose address is taken
//! binds by itself once the address is free.
//!
//! Readiness comes from the daemon's `RELOADING=1` / `READY=1`
//! notifications; the log says what each reload was and did. Where a test
//! must show that nothing more happens, it watches the notifications for
//! a bounded quiet window and then sends SIGHUP as a marker, so that the
//! log before the marker holds every reload there was.

mod common;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Backend, Conn, Endpoint, Signal, Spiped, Spipes, Workspace, exchange,
    expect_closed, hex, os_random, pipe_toml, random_bytes, require_binary,
    sha256, toml_string, wait_until,
};

// ---------------------------------------------------------------------
// Helpers (candidates for tests/common)
// ---------------------------------------------------------------------

/// The longest one reload may take to finish after its trigger: the
/// daemon's 200 ms quiet period plus slack for a loaded machine.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a test watches for a reload that must not come. A second
/// reload from the same change would come one quiet period (200 ms)
/// after the last event; five of them is ample.
const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// How often the bounded polls below look again.
const POLL: Duration = Duration::from_millis(10);

/// One reload-related line of the daemon's log.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// `SIGHUP: reloading`.
    Sighup,
    /// `config or key file changed: reloading`.
    FileChanged,
    /// `reloaded: SUMMARY`.
    Reloaded(String),
    /// `reload rejected, the running config is kept: ERROR` (the first
    /// line of the error).
    Rejected(String),
}

/// `reloaded: A added, R removed, C changed, U unchanged, F failed`.
fn reloaded(
    added: usize,
    removed: usize,
    changed: usize,
    unchanged: usize,
    failed: usize,
) -> Event {
    Event::Reloaded(format!(
        "{added} added, {removed} removed, {changed} changed, \
         {unchanged} unchanged, {failed} failed"
    ))
}

/// The reload events of a log, in order.
fn events(log: &str) -> Vec<Event> {
    const REJECTED: &str = "reload rejected, the running config is kept: ";
    const RELOADED: &str = "reloaded: ";
    log.lines()
        .filter_map(|line| {
            if let Some(i) = line.find(REJECTED) {
                Some(Event::Rejected(line[i + REJECTED.len()..].to_owned()))
            } else if let Some(i) = line.find(RELOADED) {
                Some(Event::Reloaded(line[i + RELOADED.len()..].to_owned()))
            } else if line.ends_with("SIGHUP: reloading") {
                Some(Event::Sighup)
            } else if line.ends_with("config or key file changed: reloading") {
                Some(Event::FileChanged)
            } else {
                None
            }
        })
        .collect()
}

/// A running spipes with a cursor into its notifications and its log, so
/// that each reload is waited for through its `READY=1` and then checked
/// against the log lines it wrote.
struct Daemon {
    spipes: Spipes,
    /// Notifications received but not yet looked at.
    pending: VecDeque<String>,
    /// Log events already checked.
    seen: usize,
}

impl Daemon {
    /// Starts spipes on `config` and waits for its first `READY=1`.
    fn start(config: &Path) -> Daemon {
        let spipes = Spipes::start(config);
        let daemon = Daemon {
            spipes,
            pending: VecDeque::new(),
            seen: 0,
        };
        let at_start = daemon.events();
        assert!(at_start.is_empty(), "reloads at start: {at_start:?}");
        daemon
    }

    fn pid(&self) -> u32 {
        self.spipes.pid()
    }

    fn log(&self) -> String {
        self.spipes.log()
    }

    fn events(&self) -> Vec<Event> {
        events(&self.log())
    }

    /// The next notification datagram, or `None` once `deadline` passed.
    /// Bounded poll: the harness offers no blocking receive with a
    /// timeout that does not panic.
    fn next_notification(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(n) = self.pending.pop_front() {
                return Some(n);
            }
            if let Some(status) = self.spipes.try_wait() {
                panic!("spipes exited ({status}); log:\n{}", self.log());
            }
            self.pending.extend(self.spipes.notifications());
            if !self.pending.is_empty() {
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the `READY=1` that ends the next reload, checking that a
    /// `RELOADING=1` with `MONOTONIC_USEC=` came first.
    fn wait_reload_done(&mut self) {
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let mut reloading = false;
        loop {
            let Some(n) = self.next_notification(deadline) else {
                panic!(
                    "no reload finished within {RELOAD_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            };
            let lines: Vec<&str> = n.lines().collect();
            if lines.contains(&"RELOADING=1") {
                assert!(
                    lines.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
                    "RELOADING=1 without MONOTONIC_USEC: {n:?}"
                );
                reloading = true;
            }
            if lines.contains(&"READY=1") {
                assert!(reloading, "READY=1 without RELOADING=1 first: {n:?}");
                return;
            }
        }
    }

    /// Waits for the next reload and checks that it was exactly one,
    /// started by `trigger`, with `outcome`.
    fn expect_reload(&mut self, trigger: Event, outcome: Event) {
        self.wait_reload_done();
        let all = self.events();
        let new = &all[self.seen..];
        assert_eq!(
            new,
            [trigger, outcome],
            "unexpected reloads; log:\n{}",
            self.log()
        );
        self.seen = all.len();
    }

    /// Checks that no reload starts within [`QUIET_WINDOW`].
    fn expect_quiet(&mut self) {
        let deadline = Instant::now() + QUIET_WINDOW;
        while let Some(n) = self.next_notification(deadline) {
            let reload =
                n.lines().any(|l| l == "RELOADING=1" || l == "READY=1");
            assert!(!reload, "an extra reload: {n:?}; log:\n{}", self.log());
        }
        let all = self.events();
        assert_eq!(
            &all[self.seen..],
            [] as [Event; 0],
            "an extra reload; log:\n{}",
            self.log()
        );
    }

    /// Sends SIGHUP and expects one reload that changes nothing of the
    /// `pipes` pipes: everything before it in the log is then complete.
    fn marker(&mut self, pipes: usize) {
        self.spipes.signal(Signal::Hup);
        self.expect_reload(Event::Sighup, reloaded(0, 0, 0, pipes, 0));
    }

    /// As [`Daemon::marker`], while the file on disk is bad.
    fn marker_rejected(&mut self, rejected: Event) {
        self.spipes.signal(Signal::Hup);
        self.expect_reload(Event::Sighup, rejected);
    }

    /// Waits, bounded, until the log has a line containing `text`.
    fn wait_log(&self, text: &str, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.log().contains(text)),
            "no log line with {text:?} within {timeout:?}; log:\n{}",
            self.log()
        );
    }
}

/// Writes `text` over `path` in place (truncate, then write).
fn write_in_place(path: &Path, text: &str) {
    fs::write(path, text)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `text` to a temporary file beside `path`, then renames it over
/// `path`, as careful editors and config tools do.
fn write_by_rename(path: &Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text)
        .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| {
        panic!("rename {} to {}: {e}", tmp.display(), path.display())
    });
}

/// One `[pipes.NAME]` table with a list of key files.
fn pipe_keys_toml(
    name: &str,
    mode: &str,
    source: &Endpoint,
    target: &Endpoint,
    keys: &[&Path],
    extra: &[(&str, &str)],
) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| toml_string(k.to_str().expect("UTF-8 path")))
        .collect();
    let mut t = format!(
        "[pipes.{name}]\nmode = {}\nsource = {}\ntarget = {}\nkey = [{}]\n",
        toml_string(mode),
        toml_string(&source.config()),
        toml_string(&target.config()),
        keys.join(", "),
    );
    for (setting, value) in extra {
        t.push_str(&format!("{setting} = {value}\n"));
    }
    t
}

/// `line:column` (from 1, column in characters) of the first `needle` in
/// `text`.
fn position(text: &str, needle: &str) -> String {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    position_at(text, at)
}

/// `line:column` (from 1, column in characters) of byte `at` of `text`.
fn position_at(text: &str, at: usize) -> String {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[start..].chars().count() + 1;
    format!("{line}:{column}")
}

/// The TCP port of an endpoint.
fn port(e: &Endpoint) -> u16 {
    match e {
        Endpoint::Tcp(addr) => addr.port(),
        Endpoint::Unix(path) => panic!("{} is not TCP", path.display()),
    }
}

/// Sends `n` random bytes through `entry` to an echo backend and checks
/// that exactly those bytes came back.
fn transfer(entry: &Endpoint, n: u64) {
    let conn = entry
        .connect()
        .unwrap_or_else(|e| panic!("connect {entry}: {e}"));
    let t = exchange(conn, n)
        .unwrap_or_else(|e| panic!("transfer through {entry}: {e}"));
    assert_eq!(t.sent.len, n);
    assert_eq!(
        (t.received.len, hex(&t.received.hash)),
        (n, hex(&t.sent.hash)),
        "the echo through {entry} differs from what was sent"
    );
}

/// Writes `data` and reads back the echo of exactly that many bytes.
fn echo_round(conn: &mut Conn, data: &[u8]) -> io::Result<Vec<u8>> {
    conn.write_all(data)?;
    conn.flush()?;
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back)?;
    Ok(back)
}

/// The inode of the socket listening on `127.0.0.1:port` (or any IPv4
/// address), from `/proc/net/tcp`.
fn listening_inode(port: u16) -> Option<String> {
    let table =
        fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let suffix = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A")
            .then(|| f[9].to_owned())
    })
}

/// The socket inodes among the open file descriptors of `pid`.
fn socket_inodes(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|entry| {
            let link = fs::read_link(entry.ok()?.path()).ok()?;
            let link = link.to_str()?;
            let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect()
}

/// Read system calls the process made so far (`syscr` of
/// `/proc/PID/io`).
fn read_syscalls(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/io");
    let io = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscr in {path}: {io}"))
}

/// Client threads that keep making hash-checked connections through one
/// entry, counting every outcome, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    corrupted: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What a [`Load`] did, once stopped.
#[derive(Debug)]
struct LoadResult {
    ok: u64,
    failed: u64,
    corrupted: u64,
    bytes: u64,
    errors: Vec<String>,
}

impl Load {
    /// Starts `threads` clients; each connection carries a random size
    /// between 1 and `max_bytes`.
    fn start(entry: &Endpoint, threads: usize, max_bytes: u64) -> Load {
        let mut load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            corrupted: Arc::default(),
            bytes: Arc::default(),
            errors: Arc::default(),
            threads: Vec::new(),
        };
        for _ in 0..threads {
            let entry = entry.clone();
            let stop = load.stop.clone();
            let ok = load.ok.clone();
            let failed = load.failed.clone();
            let corrupted = load.corrupted.clone();
            let bytes = load.bytes.clone();
            let errors = load.errors.clone();
            load.threads.push(thread::spawn(move || {
                let mut prng = common::Prng::new();
                while !stop.load(Ordering::SeqCst) {
                    let n = 1 + prng.next_u64() % max_bytes;
                    let result = entry.connect().and_then(|c| exchange(c, n));
                    let problem = match result {
                        Ok(t) if t.received == t.sent && t.sent.len == n => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            bytes.fetch_add(n, Ordering::SeqCst);
                            None
                        }
                        Ok(t) => {
                            corrupted.fetch_add(1, Ordering::SeqCst);
                            Some(format!(
                                "corrupted: sent {} bytes {}, got {} bytes {}",
                                t.sent.len,
                                hex(&t.sent.hash),
                                t.received.len,
                                hex(&t.received.hash)
                            ))
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            Some(format!("{n} bytes: {e}"))
                        }
                    };
                    if let Some(p) = problem {
                        let mut errors =
                            errors.lock().unwrap_or_else(|e| e.into_inner());
                        if errors.len() < 10 {
                            errors.push(p);
                        }
                    }
                }
            }));
        }
        load
    }

    /// Connections that went through so far.
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits, bounded, until `more` connections beyond `from` went
    /// through.
    fn wait_ok(&self, from: u64, more: u64) {
        assert!(
            wait_until(Duration::from_secs(60), || self.ok() >= from + more),
            "the clients made only {} connections, {} failed: {:?}",
            self.ok() - from,
            self.failed.load(Ordering::SeqCst),
            self.errors.lock().unwrap_or_else(|e| e.into_inner())
        );
    }

    fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("client thread panicked");
        }
        LoadResult {
            ok: self.ok.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            corrupted: self.corrupted.load(Ordering::SeqCst),
            bytes: self.bytes.load(Ordering::SeqCst),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

// ---------------------------------------------------------------------
// The usual setup: an encrypt pipe in front of a decrypt pipe in one
// daemon, ending at one of two echo backends.
// ---------------------------------------------------------------------

/// client -> `enc` (encrypt) -> `dec` (decrypt) -> backend `a` or `b`.
struct Pair {
    ws: Workspace,
    key: PathBuf,
    /// Where clients connect.
    enc: Endpoint,
    /// The encrypted hop.
    dec: Endpoint,
    a: Backend,
    b: Backend,
}

impl Pair {
    fn new() -> Pair {
        Pair::with_key_at("k.key")
    }

    /// As [`Pair::new`], with the key file at `name` in the workspace
    /// (which may be in a subfolder).
    fn with_key_at(name: &str) -> Pair {
        let ws = Workspace::new();
        if let Some(parent) = Path::new(name).parent() {
            fs::create_dir_all(ws.join(&parent.to_string_lossy()))
                .expect("create the key folder");
        }
        let key = ws.write_key(name);
        Pair {
            ws,
            key,
            enc: Endpoint::free_tcp(),
            dec: Endpoint::free_tcp(),
            a: Backend::echo(),
            b: Backend::echo(),
        }
    }

    /// The config, with `dec` pointing at `target`, and `header` (such as
    /// a `[daemon]` table or a comment) first.
    fn config(&self, header: &str, target: &Endpoint) -> String {
        format!(
            "{header}{}\n{}",
            pipe_toml("enc", "encrypt", &self.enc, &self.dec, &self.key, &[]),
            pipe_toml("dec", "decrypt", &self.dec, target, &self.key, &[]),
        )
    }

    /// The config with `dec` pointing at backend `a`.
    fn config_a(&self) -> String {
        self.config("", self.a.endpoint())
    }

    /// The config with `dec` pointing at backend `b`.
    fn config_b(&self) -> String {
        self.config("", self.b.endpoint())
    }

    /// A transfer through both pipes; checks that it reached backend
    /// `a` (when `to_a`) or `b`, and nothing else.
    fn transfer_to(&self, to_a: bool) {
        let (a, b) = (self.a.accepted(), self.b.accepted());
        transfer(&self.enc, 256 * 1024);
        let expect = if to_a { (a + 1, b) } else { (a, b + 1) };
        assert_eq!(
            (self.a.accepted(), self.b.accepted()),
            expect,
            "connections accepted by backends a and b"
        );
    }
}

// ---------------------------------------------------------------------
// 1. Each trigger gives exactly one reload
// ---------------------------------------------------------------------

#[test]
fn sighup_gives_one_reload() {
    let p = Pair::new();
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let mut d = Daemon::start(&config);
    p.transfer_to(true);

    d.spipes.signal(Signal::Hup);
    d.expect_reload(Event::Sighup, reloaded(0, 0, 0, 2, 0));
    d.expect_quiet();
    d.marker(2);
    p.transfer_to(true);
}

/// Starts on the config with backend `a`, lets `change` switch the file
/// to backend `b` its own way, and expects exactly one file-triggered
/// reload that changes the `dec` pipe.
fn one_reload_for(change: impl FnOnce(&Pair, &Path)) {
    let p = Pair::new();
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let mut d = Daemon::start(&config);
    p.transfer_to(true);

    change(&p, &config);
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 1, 0));
    d.expect_quiet();
    d.marker(2);
    p.transfer_to(false);
}

#[test]
fn config_rewritten_in_place_gives_one_reload() {
    one_reload_for(|p, config| write_in_place(config, &p.config_b()));
}

#[test]
fn config_renamed_over_gives_one_reload() {
    one_reload_for(|p, config| write_by_rename(config, &p.config_b()));
}

#[test]
fn config_deleted_and_recreated_gives_one_reload() {
    one_reload_for(|p, config| {
        fs::remove_file(config).expect("delete the config");
        write_in_place(config, &p.config_b());
    });
}

/// Publishes `text` as a new ConfigMap version `version`, the way the
/// kubelet does: a new timestamped folder, a `..data_tmp` link to it
/// renamed over `..data`, then the old folder removed.
fn configmap_update(dir: &Path, old: &str, version: &str, text: &str) {
    let new = dir.join(version);
    fs::create_dir(&new).expect("create the new version folder");
    fs::write(new.join("spipes.toml"), text).expect("write the new version");
    let tmp = dir.join("..data_tmp");
    symlink(version, &tmp).expect("link ..data_tmp");
    fs::rename(&tmp, dir.join("..data"))
        .expect("rename ..data_tmp over ..data");
    fs::remove_dir_all(dir.join(old)).expect("remove the old version");
}

#[test]
fn configmap_symlink_swap_gives_one_reload_each_time() {
    let p = Pair::new();
    let dir = p.ws.join("configmap");
    fs::create_dir(&dir).expect("create the ConfigMap folder");
    fs::create_dir(dir.join("..2026_01")).expect("create ..2026_01");
    fs::write(dir.join("..2026_01/spipes.toml"), p.config_a())
        .expect("write version 1");
    symlink("..2026_01", dir.join("..data")).expect("link ..data");
    let config = dir.join("spipes.toml");
    symlink("..data/spipes.toml", &config).expect("link spipes.toml");

    let mut d = Daemon::start(&config);
    p.transfer_to(true);

    configmap_update(&dir, "..2026_01", "..2026_02", &p.config_b());
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 1, 0));
    d.expect_quiet();
    d.marker(2);
    p.transfer_to(false);

    // Once more, now that the old version's folder is gone.
    configmap_update(&dir, "..2026_02", "..2026_03", &p.config_a());
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 1, 0));
    d.expect_quiet();
    d.marker(2);
    p.transfer_to(true);
}

#[test]
fn key_file_change_gives_one_reload() {
    // The key sits in its own folder, which the daemon must watch too.
    let p = Pair::with_key_at("keys/k.key");
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let mut d = Daemon::start(&config);
    p.transfer_to(true);

    // Both pipes use the key, so both change; had only one of them taken
    // the new key, the transfer after the reload would fail its handshake.
    write_in_place(&p.key, &hex(&os_random(32)));
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 2, 0, 0));
    d.expect_quiet();
    d.marker(2);
    p.transfer_to(true);
}

// ---------------------------------------------------------------------
// 2. A burst of writes gives one reload
// ---------------------------------------------------------------------

#[test]
fn burst_of_twenty_writes_gives_one_reload() {
    let p = Pair::new();
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let mut d = Daemon::start(&config);
    p.transfer_to(true);

    // Twenty different files, flipping the target; the last one points
    // at backend b.
    for i in 0..20 {
        let target = if i % 2 == 1 {
            p.b.endpoint()
        } else {
            p.a.endpoint()
        };
        let text = p.config(&format!("# write {i}\n"), target);
        write_in_place(&config, &text);
    }
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 1, 0));
    d.expect_quiet();
    d.marker(2);
    p.transfer_to(false);
}

// ---------------------------------------------------------------------
// 3. A bad file is rejected and changes nothing
// ---------------------------------------------------------------------

#[test]
fn bad_files_are_rejected_with_their_position_and_pipes_keep_serving() {
    let p = Pair::new();
    let good = p.config_a();
    let config = p.ws.write_config("spipes.toml", &good);
    let path = config.display().to_string();
    let mut d = Daemon::start(&config);
    p.transfer_to(true);

    let enc_table = pipe_toml("enc", "encrypt", &p.enc, &p.dec, &p.key, &[]);

    // A syntax error: a bare word where a string belongs.
    let syntax = good.replace("mode = \"decrypt\"", "mode = decrypt");
    let syntax_error = format!(
        "{path}:{}: syntax error: string values must be quoted, expected \
         literal string",
        position(&syntax, "decrypt\n")
    );

    // An unknown key in the decrypt pipe.
    let unknown = format!("{good}colour = \"blue\"\n");
    let unknown_error = format!(
        "{path}:{}: pipe dec: unknown key `colour`",
        position(&unknown, "colour")
    );

    // A key file that does not exist.
    let missing_key = p.ws.join("missing.key");
    let missing = format!(
        "{enc_table}\n{}",
        pipe_toml("dec", "decrypt", &p.dec, p.a.endpoint(), &missing_key, &[])
    );
    let missing_error = format!(
        "{path}:{}: pipe dec: key `key`: cannot read key file {}: No such \
         file or directory (os error 2)",
        position(&missing, &toml_string(missing_key.to_str().expect("UTF-8"))),
        missing_key.display()
    );

    // Two pipes on one source; the second one's `source` is reported.
    let twin =
        pipe_toml("dec2", "decrypt", &p.dec, p.b.endpoint(), &p.key, &[]);
    let duplicate = format!("{good}\n{twin}");
    let twin_source = duplicate
        .rfind("source = ")
        .map(|at| at + "source = ".len())
        .expect("the twin's source");
    let duplicate_error = format!(
        "{path}:{}: pipe dec2: key `source`: {} is already the source of \
         pipe dec",
        position_at(&duplicate, twin_source),
        p.dec.config()
    );

    for (what, text, expected) in [
        ("syntax error", &syntax, &syntax_error),
        ("unknown key", &unknown, &unknown_error),
        ("missing key file", &missing, &missing_error),
        ("duplicate source", &duplicate, &duplicate_error),
    ] {
        write_by_rename(&config, text);
        d.expect_reload(Event::FileChanged, Event::Rejected(expected.clone()));
        eprintln!("{what}: rejected as {expected}");
        p.transfer_to(true);
    }

    // SIGHUP on the same bad file rejects it the same way.
    d.spipes.signal(Signal::Hup);
    d.expect_reload(Event::Sighup, Event::Rejected(duplicate_error));
    d.expect_quiet();
    p.transfer_to(true);

    // Back to the first file: nothing changes, since it never stopped
    // being the running config.
    write_by_rename(&config, &good);
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 0, 2, 0));
    d.marker(2);
    p.transfer_to(true);
}

/// With a bad file on disk and SIGHUP sent at once, the file is rejected
/// once: the watcher, seeing the same bad content afterwards, must not
/// try it again. (Should the SIGHUP be handled only after the watcher's
/// quiet period, both reload legitimately; that order is accepted.)
#[test]
fn bad_file_with_immediate_sighup_is_rejected_once() {
    let p = Pair::new();
    let good = p.config_a();
    let config = p.ws.write_config("spipes.toml", &good);
    let mut d = Daemon::start(&config);

    let bad = format!("{good}colour = \"blue\"\n");
    let error = format!(
        "{}:{}: pipe dec: unknown key `colour`",
        config.display(),
        position(&bad, "colour")
    );
    write_by_rename(&config, &bad);
    d.spipes.signal(Signal::Hup);
    d.wait_reload_done();

    // Let whatever else would follow come within the quiet window.
    let deadline = Instant::now() + QUIET_WINDOW;
    while d.next_notification(deadline).is_some() {}
    let all = d.events();
    let new = all[d.seen..].to_vec();
    d.seen = all.len();
    let rejected = Event::Rejected(error);
    let sighup_first = [Event::Sighup, rejected.clone()];
    let watcher_first = [
        Event::FileChanged,
        rejected.clone(),
        Event::Sighup,
        rejected.clone(),
    ];
    assert!(
        new == sighup_first || new == watcher_first,
        "expected one rejection for one SIGHUP (or the watcher's, then \
         SIGHUP's), got {new:?}"
    );
    d.marker_rejected(rejected);
    p.transfer_to(true);
}

/// An idle daemon must not keep reading its files: reading them is not a
/// change, so nothing should wake the watcher.
#[test]
fn idle_daemon_does_not_keep_rereading_its_files() {
    let p = Pair::new();
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let d = Daemon::start(&config);

    let window = Duration::from_secs(2);
    let before = read_syscalls(d.pid());
    thread::sleep(window);
    let after = read_syscalls(d.pid());
    assert!(
        after - before <= 2,
        "an idle spipes made {} read system calls in {window:?}",
        after - before
    );
}

// ---------------------------------------------------------------------
// 4. Reloads under load
// ---------------------------------------------------------------------

#[test]
fn fifty_reloads_under_load_refuse_and_corrupt_nothing() {
    const REWRITES: usize = 50;
    const CLIENTS: usize = 4;

    let ws = Workspace::new();
    let key_a = ws.write_key("a.key");
    let key_b = ws.write_key("b.key");
    let enc = Endpoint::free_tcp();
    let dec = Endpoint::free_tcp();
    let backend_a = Backend::echo();
    let backend_b = Backend::echo();

    // Version `i`: the encrypt side alternates key and limit, the
    // decrypt side (which knows both keys) alternates its target.
    let version = |i: usize| {
        let odd = i % 2 == 1;
        let key = if odd { &key_b } else { &key_a };
        let limit = if odd { "100" } else { "4" };
        let target = if odd { &backend_b } else { &backend_a };
        format!(
            "# version {i}\n{}\n{}",
            pipe_toml(
                "enc",
                "encrypt",
                &enc,
                &dec,
                key,
                &[("max_connections", limit)]
            ),
            pipe_keys_toml(
                "dec",
                "decrypt",
                &dec,
                target.endpoint(),
                &[&key_a, &key_b],
                &[]
            ),
        )
    };
    let config = ws.write_config("spipes.toml", &version(0));
    let mut d = Daemon::start(&config);

    let started = Instant::now();
    let load = Load::start(&enc, CLIENTS, 512 * 1024);
    load.wait_ok(0, CLIENTS as u64);
    for i in 1..=REWRITES {
        write_by_rename(&config, &version(i));
        d.expect_reload(Event::FileChanged, reloaded(0, 0, 2, 0, 0));
    }
    // Some more connections on the last version, then stop.
    load.wait_ok(load.ok(), 2 * CLIENTS as u64);
    let result = load.finish();
    eprintln!(
        "{REWRITES} reloads under load in {:?}: {} connections, {} MiB, \
         {} failed, {} corrupted (backend a {}, b {})",
        started.elapsed(),
        result.ok,
        result.bytes >> 20,
        result.failed,
        result.corrupted,
        backend_a.accepted(),
        backend_b.accepted()
    );
    assert_eq!(
        (result.failed, result.corrupted),
        (0, 0),
        "failed and corrupted connections; first errors: {:?}",
        result.errors
    );
    assert!(
        backend_a.accepted() > 0 && backend_b.accepted() > 0,
        "both targets should have served: a {}, b {}",
        backend_a.accepted(),
        backend_b.accepted()
    );
    d.marker(2);
}

// ---------------------------------------------------------------------
// 5. Listeners are kept by address
// ---------------------------------------------------------------------

#[test]
fn renamed_pipe_keeps_its_listener_and_moved_pipe_frees_the_old_address() {
    let p = Pair::new();
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let mut d = Daemon::start(&config);
    let enc_port = port(&p.enc);
    let inode = listening_inode(enc_port).expect("enc listens");
    assert!(
        socket_inodes(d.pid()).contains(&inode),
        "the listener on {} is not spipes' socket",
        p.enc
    );

    // A connection that stays open across the rename, and clients
    // connecting in a tight loop meanwhile.
    let mut open = p.enc.connect().expect("connect before the rename");
    let first = random_bytes(64 * 1024);
    let back = echo_round(&mut open, &first).expect("echo before the rename");
    assert_eq!(sha256(&back), sha256(&first));
    let load = Load::start(&p.enc, 2, 8 * 1024);
    load.wait_ok(0, 2);

    let renamed = p.config_a().replace("[pipes.enc]", "[pipes.enc-renamed]");
    write_by_rename(&config, &renamed);
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 1, 0));
    load.wait_ok(load.ok(), 10);
    let result = load.finish();
    eprintln!("{} connections during the rename", result.ok);
    assert_eq!(
        (result.failed, result.corrupted),
        (0, 0),
        "connections failed during the rename: {:?}",
        result.errors
    );
    assert_eq!(
        listening_inode(enc_port).as_ref(),
        Some(&inode),
        "the rename replaced the listening socket"
    );

    let second = random_bytes(64 * 1024);
    let back = echo_round(&mut open, &second).expect("echo after the rename");
    assert_eq!(sha256(&back), sha256(&second));
    open.shutdown_write().expect("shut down writing");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).expect("read to the end");
    assert!(rest.is_empty(), "{} stray bytes", rest.len());
    p.transfer_to(true);

    // Moving the pipe to a new source frees the old one.
    let moved_to = Endpoint::free_tcp();
    let moved = renamed.replace(
        &format!("source = {}", toml_string(&p.enc.config())),
        &format!("source = {}", toml_string(&moved_to.config())),
    );
    write_by_rename(&config, &moved);
    d.expect_reload(Event::FileChanged, reloaded(1, 1, 0, 1, 0));
    transfer(&moved_to, 64 * 1024);
    let mut last_error = None;
    let freed =
        wait_until(Duration::from_secs(10), || {
            match TcpListener::bind(("127.0.0.1", enc_port)) {
                Ok(_) => true,
                Err(e) => {
                    last_error = Some(e);
                    false
                }
            }
        });
    assert!(freed, "{} still taken: {last_error:?}", p.enc);
    d.marker(2);
}

// ---------------------------------------------------------------------
// 6. A removed pipe drains
// ---------------------------------------------------------------------

#[test]
fn removed_pipe_drains_then_cuts_after_the_timeout() {
    let p = Pair::new();
    let header = "[daemon]\ndrain_timeout = 2\n\n";
    let with_enc = p.config(header, p.a.endpoint());
    let without_enc = format!(
        "{header}{}",
        pipe_toml("dec", "decrypt", &p.dec, p.a.endpoint(), &p.key, &[])
    );
    let config = p.ws.write_config("spipes.toml", &with_enc);
    let mut d = Daemon::start(&config);

    // A transfer that finishes within the drain timeout: it keeps
    // flowing after the removal and completes.
    let mut conn = p.enc.connect().expect("connect");
    let mut sent = Vec::new();
    let mut received = Vec::new();
    let chunk = random_bytes(64 * 1024);
    received.extend(echo_round(&mut conn, &chunk).expect("echo before"));
    sent.extend_from_slice(&chunk);

    write_by_rename(&config, &without_enc);
    d.expect_reload(Event::FileChanged, reloaded(0, 1, 0, 1, 0));
    assert!(
        p.enc.wait_listening(false, Duration::from_secs(10)),
        "the removed pipe still listens on {}",
        p.enc
    );
    assert!(
        p.enc.connect().is_err(),
        "a new client reached a removed pipe"
    );
    for _ in 0..4 {
        let chunk = random_bytes(64 * 1024);
        received.extend(echo_round(&mut conn, &chunk).expect("echo after"));
        sent.extend_from_slice(&chunk);
    }
    conn.shutdown_write().expect("shut down writing");
    conn.read_to_end(&mut received).expect("read to the end");
    assert_eq!(
        (received.len(), hex(&sha256(&received))),
        (sent.len(), hex(&sha256(&sent))),
        "the draining transfer differs"
    );
    d.wait_log("draining connections", Duration::from_secs(10));

    // A transfer that runs longer than the drain timeout is cut.
    write_by_rename(&config, &with_enc);
    d.expect_reload(Event::FileChanged, reloaded(1, 0, 0, 1, 0));
    let mut conn = p.enc.connect().expect("connect again");
    let chunk = random_bytes(16 * 1024);
    let back = echo_round(&mut conn, &chunk).expect("echo before");
    assert_eq!(sha256(&back), sha256(&chunk));

    let removed_at = Instant::now();
    write_by_rename(&config, &without_enc);
    d.expect_reload(Event::FileChanged, reloaded(0, 1, 0, 1, 0));
    let chunk = random_bytes(16 * 1024);
    let back = echo_round(&mut conn, &chunk).expect("echo after the removal");
    assert_eq!(sha256(&back), sha256(&chunk));

    // Keep writing slowly; the reader below sees the end.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = conn.try_clone().expect("clone the connection");
    let writer_stop = stop.clone();
    let writer = thread::spawn(move || {
        // Bounded: 60 s of writes at most.
        for _ in 0..1200 {
            if writer_stop.load(Ordering::SeqCst)
                || writer.write_all(&[0x55; 512]).is_err()
            {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let closed = expect_closed(&mut conn, Duration::from_secs(30));
    let lasted = removed_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread panicked");
    eprintln!(
        "cut {lasted:?} after the removal, {} bytes echoed while draining, \
         end: {:?}",
        closed.received.len(),
        closed.error
    );
    assert!(
        lasted >= Duration::from_secs(2),
        "cut after {lasted:?}, before the 2 s drain timeout"
    );
    assert!(
        !closed.received.is_empty(),
        "nothing flowed between the removal and the cut"
    );
    d.wait_log(
        "drain timeout reached; closing the remaining connections",
        Duration::from_secs(10),
    );
    d.marker(1);
}

// ---------------------------------------------------------------------
// 7. Key rotation with the real spiped
// ---------------------------------------------------------------------

/// Sends a little through `entry` and expects the connection to be closed
/// without a reply (the handshake behind it failed).
fn expect_refused(entry: &Endpoint) {
    let mut conn = entry.connect().expect("connect to spiped");
    let _ = conn.write_all(b"hello");
    let closed = expect_closed(&mut conn, Duration::from_secs(20));
    assert!(
        closed.received.is_empty(),
        "{} bytes came back through a wrong key",
        closed.received.len()
    );
}

#[test]
fn key_rotation_with_real_spiped_clients() {
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let old_key = ws.write_key("old.key");
    let new_key = ws.write_key("new.key");
    let dec = Endpoint::free_tcp();
    let backend = Backend::echo();
    let old_entry = Endpoint::free_tcp();
    let new_entry = Endpoint::free_tcp();
    let _old = Spiped::encrypt(&old_entry, &dec, &old_key, &[]);
    let _new = Spiped::encrypt(&new_entry, &dec, &new_key, &[]);

    let with_keys = |keys: &[&Path]| {
        pipe_keys_toml("dec", "decrypt", &dec, backend.endpoint(), keys, &[])
    };
    let config = ws.write_config("spipes.toml", &with_keys(&[&old_key]));
    let mut d = Daemon::start(&config);

    // Before: only the old key.
    transfer(&old_entry, 256 * 1024);
    expect_refused(&new_entry);
    assert_eq!(backend.accepted(), 1, "a wrong key reached the backend");

    // During: both keys, the new one first.
    write_by_rename(&config, &with_keys(&[&new_key, &old_key]));
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 0, 0));
    transfer(&old_entry, 256 * 1024);
    transfer(&new_entry, 256 * 1024);

    // After: only the new key.
    write_by_rename(&config, &with_keys(&[&new_key]));
    d.expect_reload(Event::FileChanged, reloaded(0, 0, 1, 0, 0));
    transfer(&new_entry, 256 * 1024);
    expect_refused(&old_entry);
    assert_eq!(backend.accepted(), 4, "a wrong key reached the backend");
    d.marker(1);
}

// ---------------------------------------------------------------------
// 8. An added pipe whose address is taken binds once it is free
// ---------------------------------------------------------------------

#[test]
fn added_pipe_on_a_taken_address_binds_once_freed() {
    let p = Pair::new();
    let config = p.ws.write_config("spipes.toml", &p.config_a());
    let mut d = Daemon::start(&config);

    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind a squatter");
    let taken = Endpoint::Tcp(squatter.local_addr().expect("local address"));
    let fresh = Endpoint::free_tcp();
    let more = format!(
        "{}\n{}\n{}",
        p.config_a(),
        pipe_toml("fresh", "encrypt", &fresh, &p.dec, &p.key, &[]),
        pipe_toml("late", "encrypt", &taken, &p.dec, &p.key, &[]),
    );
    write_by_rename(&config, &more);
    d.expect_reload(Event::FileChanged, reloaded(1, 0, 0, 2, 1));

    // Everything else applied.
    transfer(&fresh, 64 * 1024);
    p.transfer_to(true);

    // Let one retry fail too, then free the address.
    let bind_failures = || d.log().matches("bind failed; will retry").count();
    assert!(
        wait_until(Duration::from_secs(15), || bind_failures() >= 2),
        "no retry within 15 s; log:\n{}",
        d.log()
    );
    drop(squatter);

    // The next retry comes at most 2 s later; poll by connecting.
    let deadline = Instant::now() + Duration::from_secs(40);
    let conn = loop {
        match taken.connect() {
            Ok(conn) => break conn,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{taken} not bound 40 s after it was freed ({e}); log:\n{}",
                    d.log()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let t = exchange(conn, 64 * 1024).expect("transfer through the late pipe");
    assert_eq!(t.received, t.sent, "the late pipe corrupted the echo");
    d.marker(4);
}
