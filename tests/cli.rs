//! The command line as users meet it: `check` output and exit codes,
//! `keygen`, `--version`, start-up failures, signals, and Unix socket
//! files at start and exit.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    Backend, EXIT_TIMEOUT, Endpoint, READY_TIMEOUT, Signal, Spipes, Workspace,
    exchange, expect_closed, output_within, pipe_toml, spipes_command,
};

/// Bound on one short CLI invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `spipes ARGS` to completion.
fn spipes(args: &[&str]) -> Output {
    output_within(spipes_command().args(args), CLI_TIMEOUT)
}

/// Runs `spipes check -c CONFIG`.
fn check(config: &Path) -> Output {
    output_within(
        spipes_command().arg("check").arg("-c").arg(config),
        CLI_TIMEOUT,
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as a str; test paths are UTF-8.
fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A working pair of pipes in one process: `source` (encrypt) to a Unix
/// socket to a decrypt pipe to an echo backend. Returns the config text
/// and the backend.
fn loop_config(ws: &Workspace, source: &Endpoint) -> (String, Backend) {
    let key = ws.join("loop.key");
    if !key.exists() {
        ws.write_key("loop.key");
    }
    let backend = Backend::echo();
    let wire = ws.unix("loop-wire.sock");
    let toml = pipe_toml("front", "encrypt", source, &wire, &key, &[])
        + &pipe_toml("back", "decrypt", &wire, backend.endpoint(), &key, &[]);
    (toml, backend)
}

/// Asserts that an echo round trip through `entry` works.
fn assert_pipe_works(entry: &Endpoint) {
    let t =
        exchange(entry.connect().expect("connect"), 100_000).expect("exchange");
    assert_eq!(t.received, t.sent, "the echo through {entry}");
}

// ---------------------------------------------------------------------
// check
// ---------------------------------------------------------------------

#[test]
fn check_lists_every_pipe_in_file_order() {
    let ws = Workspace::new();
    let key = ws.write_key("web.key");
    ws.write_key("db.key");
    let toml = "\
[defaults]
timeout = 5

[pipes.web]
mode = \"encrypt\"
source = \"127.0.0.1:9080\"
target = \"[127.0.0.1]:9081\"
key = \"web.key\"

[pipes.database]
mode = \"decrypt\"
source = \"[::1]:5433\"
target = \"/run/postgresql/.s.PGSQL.5432\"
key = \"db.key\"

[pipes.a]
mode = \"decrypt\"
source = \"/run/spipes/a.sock\"
target = \"127.0.0.1:1\"
key = [\"web.key\", \"db.key\"]
";
    let config = ws.write_config("spipes.toml", toml);
    let o = check(&config);
    assert_eq!(stderr(&o), "", "check printed to stderr");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "\
web       encrypt  127.0.0.1:9080 -> 127.0.0.1:9081
database  decrypt  [::1]:5433 -> /run/postgresql/.s.PGSQL.5432
a         decrypt  /run/spipes/a.sock -> 127.0.0.1:1
"
    );
    // The key was only read, never changed.
    assert_eq!(fs::read(&key).expect("read key").len(), 32);
}

/// One encrypt pipe whose key file, `missing.key`, does not exist.
const MISSING_KEY_TOML: &str = "\
[pipes.web]
mode = \"encrypt\"
source = \"127.0.0.1:9080\"
target = \"127.0.0.1:9081\"
key = \"missing.key\"
";

#[test]
fn check_missing_key_file_exits_1_with_the_error() {
    let ws = Workspace::new();
    let config = ws.write_config("spipes.toml", MISSING_KEY_TOML);
    let o = check(&config);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "", "no pipe is listed for a bad config");
    let missing = ws.join("missing.key");
    assert_eq!(
        stderr(&o),
        format!(
            "spipes: {}:5:7: pipe web: key `key`: cannot read key file {}: \
             No such file or directory (os error 2)\n",
            s(&config),
            s(&missing)
        )
    );
}

#[test]
fn check_missing_config_file_exits_1() {
    let ws = Workspace::new();
    let config = ws.join("nowhere.toml");
    let o = check(&config);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        format!(
            "spipes: cannot read config file {}: No such file or directory \
             (os error 2)\n",
            s(&config)
        )
    );
}

#[test]
fn usage_errors_exit_2() {
    // (arguments, what clap says first)
    let cases: [(&[&str], &str); 5] = [
        (
            &["check", "--bogus"],
            "error: unexpected argument '--bogus' found",
        ),
        (&[], "One daemon for many spiped-compatible encrypted pipes"),
        (
            &["frobnicate"],
            "error: unrecognized subcommand 'frobnicate'",
        ),
        (
            &["keygen"],
            "error: the following required arguments were not provided:",
        ),
        (
            &["run", "-c"],
            "error: a value is required for '--config <CONFIG>' but none \
             was supplied",
        ),
    ];
    for (args, first) in cases {
        let o = spipes(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "spipes {args:?}: stderr {}",
            stderr(&o)
        );
        assert_eq!(stdout(&o), "", "spipes {args:?}: usage goes to stderr");
        assert!(
            stderr(&o).starts_with(first),
            "spipes {args:?}: want {first:?} first, got:\n{}",
            stderr(&o)
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let o = spipes(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        format!("spipes {}\n", env!("CARGO_PKG_VERSION"))
    );
}

// ---------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn keygen_writes_32_random_bytes_mode_0600() {
    let ws = Workspace::new();
    let (a, b) = (ws.join("a.key"), ws.join("b.key"));
    for path in [&a, &b] {
        let o = spipes(&["keygen", s(path)]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        assert_eq!((stdout(&o), stderr(&o)), (String::new(), String::new()));
        assert_eq!(fs::read(path).expect("read key").len(), 32);
        assert_eq!(mode_of(path), 0o600, "{}", path.display());
    }
    assert_ne!(fs::read(&a).ok(), fs::read(&b).ok(), "two keys are equal");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let ws = Workspace::new();
    let path = ws.write_file("existing.key", b"precious");
    let o = spipes(&["keygen", s(&path)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "spipes: {} exists; pass --force to replace it: File exists \
             (os error 17)\n",
            s(&path)
        )
    );
    assert_eq!(fs::read(&path).expect("read"), b"precious");
}

#[test]
fn keygen_force_overwrites_and_tightens_the_mode() {
    let ws = Workspace::new();
    let path = ws.write_file("existing.key", b"old key");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let o = spipes(&["keygen", s(&path), "--force"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let new = fs::read(&path).expect("read");
    assert_eq!(new.len(), 32);
    assert_ne!(&new[..], b"old key");
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn keygen_into_a_missing_folder_fails() {
    let ws = Workspace::new();
    let path = ws.join("no/such/dir/k.key");
    let o = spipes(&["keygen", s(&path)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "spipes: cannot write {}: No such file or directory (os error \
             2)\n",
            s(&path)
        )
    );
    assert!(!path.exists());
}

// ---------------------------------------------------------------------
// run: start-up failures
// ---------------------------------------------------------------------

/// Runs a spipes that must fail to start: exit 1, no READY=1. Returns its
/// log.
fn failed_start(config: &Path) -> String {
    let mut spipes = Spipes::spawn(config);
    let status = spipes.wait_exit(READY_TIMEOUT);
    let log = spipes.log();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "spipes should exit 1; log:\n{log}"
    );
    let notes = spipes.notifications();
    assert!(
        !notes.iter().any(|n| n.lines().any(|l| l == "READY=1")),
        "a failed start sent READY=1: {notes:?}"
    );
    log
}

#[test]
fn bind_failure_names_the_pipe_and_address() {
    let ws = Workspace::new();
    let key = ws.write_key("k.key");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_at = Endpoint::Tcp(taken.local_addr().expect("address"));
    let toml = pipe_toml(
        "web",
        "encrypt",
        &taken_at,
        &Endpoint::free_tcp(),
        &key,
        &[],
    );
    let log = failed_start(&ws.write_config("spipes.toml", &toml));
    let want = format!(
        "spipes: pipe web: bind {taken_at}: Address already in use (os error \
         98)\n"
    );
    assert!(log.ends_with(&want), "want {want:?} at the end of:\n{log}");
    // The test's listener is untouched.
    assert!(taken_at.is_listening());
}

#[test]
fn regular_file_at_the_socket_path_is_not_unlinked() {
    let ws = Workspace::new();
    let key = ws.write_key("k.key");
    let path = ws.write_file("data.sock", b"not a socket");
    let toml = pipe_toml(
        "sock",
        "encrypt",
        &Endpoint::Unix(path.clone()),
        &Endpoint::free_tcp(),
        &key,
        &[],
    );
    let log = failed_start(&ws.write_config("spipes.toml", &toml));
    let want = format!(
        "spipes: pipe sock: bind {}: the path exists and is not a socket\n",
        s(&path)
    );
    assert!(log.ends_with(&want), "want {want:?} at the end of:\n{log}");
    assert_eq!(fs::read(&path).expect("read"), b"not a socket");
}

#[test]
fn live_unix_socket_is_not_taken_over() {
    let ws = Workspace::new();
    let key = ws.write_key("k.key");
    let path = ws.join("live.sock");
    let live = UnixListener::bind(&path).expect("bind");
    let toml = pipe_toml(
        "sock",
        "encrypt",
        &Endpoint::Unix(path.clone()),
        &Endpoint::free_tcp(),
        &key,
        &[],
    );
    let log = failed_start(&ws.write_config("spipes.toml", &toml));
    let want = format!(
        "spipes: pipe sock: bind {}: a live socket is already listening \
         there\n",
        s(&path)
    );
    assert!(log.ends_with(&want), "want {want:?} at the end of:\n{log}");
    // Still ours: a client reaches our listener.
    let _client = Endpoint::Unix(path.clone()).connect().expect("connect");
    live.accept().expect("our listener still accepts");
}

#[test]
fn failed_start_removes_the_socket_files_it_created() {
    let ws = Workspace::new();
    let key = ws.write_key("k.key");
    let first = ws.unix("first.sock");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_at = Endpoint::Tcp(taken.local_addr().expect("address"));
    let target = Endpoint::free_tcp();
    let toml = pipe_toml("first", "encrypt", &first, &target, &key, &[])
        + &pipe_toml("second", "encrypt", &taken_at, &target, &key, &[]);
    let log = failed_start(&ws.write_config("spipes.toml", &toml));
    assert!(log.contains("pipe second: bind"), "log:\n{log}");
    let Endpoint::Unix(first) = first else {
        unreachable!()
    };
    assert!(
        !first.exists(),
        "{} was left behind by a failed start",
        first.display()
    );
}

#[test]
fn run_with_a_bad_config_prints_what_check_prints() {
    let ws = Workspace::new();
    let config = ws.write_config("spipes.toml", MISSING_KEY_TOML);
    let checked = check(&config);
    assert_eq!(checked.status.code(), Some(1));
    let log = failed_start(&config);
    assert_eq!(log, stderr(&checked), "run and check disagree");
}

// ---------------------------------------------------------------------
// run: Unix socket files and signals
// ---------------------------------------------------------------------

/// `run` stops on `signal` with exit 0 and removes its socket files.
fn stops_cleanly_on(signal: Signal) {
    let ws = Workspace::new();
    let source = ws.unix("front.sock");
    let (toml, backend) = loop_config(&ws, &source);
    let mut spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
    let Endpoint::Unix(path) = &source else {
        unreachable!()
    };
    assert!(common::is_socket(path), "no socket at {}", path.display());
    assert_pipe_works(&source);

    spipes.signal(signal);
    let status = spipes.wait_exit(EXIT_TIMEOUT);
    let log = spipes.log();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{signal:?}: spipes should exit 0; log:\n{log}"
    );
    for name in ["front.sock", "loop-wire.sock"] {
        assert!(
            !ws.join(name).exists(),
            "{signal:?}: {name} was left behind; log:\n{log}"
        );
    }
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn sigterm_exits_0_and_removes_unix_socket_files() {
    stops_cleanly_on(Signal::Term);
}

#[test]
fn sigint_exits_0_and_removes_unix_socket_files() {
    stops_cleanly_on(Signal::Int);
}

#[test]
fn leftover_unix_socket_file_is_replaced() {
    let ws = Workspace::new();
    let source = ws.unix("front.sock");
    let Endpoint::Unix(path) = &source else {
        unreachable!()
    };
    // A socket file whose process is gone: bound, then closed without
    // unlinking.
    drop(UnixListener::bind(path).expect("bind"));
    assert!(common::is_socket(path));
    assert!(source.connect().is_err(), "nobody should listen there yet");

    let (toml, backend) = loop_config(&ws, &source);
    let _spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
    assert_pipe_works(&source);
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn sigterm_closes_listeners_at_once_and_drains_connections() {
    let ws = Workspace::new();
    let source = Endpoint::free_tcp();
    let (toml, backend) = loop_config(&ws, &source);
    let mut spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));

    // A connection open across the SIGTERM.
    let mut conn = source.connect().expect("connect");
    conn.write_all(b"before").expect("write");
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).expect("echo before SIGTERM");
    assert_eq!(&buf, b"before");

    spipes.signal(Signal::Term);
    assert!(
        source.wait_listening(false, Duration::from_secs(10)),
        "the listener still accepts after SIGTERM; log:\n{}",
        spipes.log()
    );
    assert!(
        source.connect().is_err(),
        "a new client got in after SIGTERM"
    );
    // The open connection still carries data both ways...
    conn.write_all(b"during").expect("write while draining");
    conn.read_exact(&mut buf).expect("echo while draining");
    assert_eq!(&buf, b"during");
    assert!(spipes.try_wait().is_none(), "spipes quit while draining");

    // ...and the daemon exits once it ends.
    conn.shutdown_write().expect("shutdown write");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("read to end");
    assert!(rest.is_empty());
    let status = spipes.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", spipes.log());
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn drain_timeout_cuts_connections_left_open() {
    let ws = Workspace::new();
    let source = Endpoint::free_tcp();
    let (pipes, _backend) = loop_config(&ws, &source);
    let toml = format!("[daemon]\ndrain_timeout = 1\n\n{pipes}");
    let mut spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));

    let mut conn = source.connect().expect("connect");
    conn.write_all(b"x").expect("write");
    let mut one = [0u8; 1];
    conn.read_exact(&mut one).expect("echo");

    spipes.signal(Signal::Term);
    let status = spipes.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "spipes should exit 0 after its 1 s drain; log:\n{}",
        spipes.log()
    );
    // The idle connection was cut, not left hanging.
    expect_closed(&mut conn, Duration::from_secs(5));
}

#[test]
fn sighup_reload_adds_a_pipe_and_keeps_the_old_one() {
    let ws = Workspace::new();
    let first = Endpoint::free_tcp();
    let (toml, backend) = loop_config(&ws, &first);
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start(&config);
    assert_pipe_works(&first);

    let second = Endpoint::free_tcp();
    let key = ws.join("loop.key");
    let wire = ws.unix("loop-wire.sock");
    let added = pipe_toml("second", "encrypt", &second, &wire, &key, &[]);
    ws.write_config("spipes.toml", &format!("{toml}{added}"));
    spipes.signal(Signal::Hup);
    spipes.wait_ready(READY_TIMEOUT);
    assert!(second.is_listening(), "log:\n{}", spipes.log());
    assert_pipe_works(&second);
    assert_pipe_works(&first);
    assert_eq!(backend.accepted(), 3);
}
