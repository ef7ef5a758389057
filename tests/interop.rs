//! Interoperability with the real spiped 1.6 (`spiped`, `spipe`): data in
//! both orientations, every forward-secrecy pairing, bulk transfers,
//! half-close, wrong keys and garbage, Unix sockets, several pipes at
//! once.
//!
//! Every test needs `spiped` installed; without it a test prints
//! `skipping: spiped not installed` and passes, unless
//! `SPIPES_REQUIRE_SPIPED=1` makes it fail.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{
    Backend, Behavior, Endpoint, Record, Spiped, Spipes, Transfer, Workspace,
    exchange, exchange_data, expect_closed, half_close, hex, pipe_toml,
    random_bytes, require_binary, sha256, wait_closed,
};

/// One mebibyte.
const MIB: u64 = 1 << 20;

/// How long a refused or failed connection may stay open. Both daemons
/// get a handshake timeout well above this (see [`SLOW_TIMEOUT`]), so a
/// close within it is the refusal itself, not a timeout.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// The handshake timeout given to both ends where a test expects a
/// refusal, in seconds.
const SLOW_TIMEOUT: &str = "30";

/// How long a backend connection may take to finish after its client is
/// done.
const RECORD_WITHIN: Duration = Duration::from_secs(120);

/// Which daemon encrypts and which decrypts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Orientation {
    /// client -> spipes encrypt -> spiped -d -> backend.
    SpipesToSpiped,
    /// client -> spiped -e -> spipes decrypt -> backend.
    SpipedToSpipes,
}

const BOTH: [Orientation; 2] =
    [Orientation::SpipesToSpiped, Orientation::SpipedToSpipes];

/// A client-to-backend path through one spipes and one spiped.
struct Chain {
    /// Where clients connect (plaintext).
    entry: Endpoint,
    /// The plaintext server at the far end.
    backend: Backend,
    spipes: Spipes,
    _spiped: Spiped,
    _ws: Workspace,
}

/// How to build a [`Chain`].
#[derive(Clone, Copy)]
struct ChainSpec<'a> {
    orientation: Orientation,
    behavior: Behavior,
    /// Extra settings of the spipes pipe, as `(name, raw TOML value)`.
    spipes_extra: &'a [(&'a str, &'a str)],
    /// Extra spiped flags.
    spiped_extra: &'a [&'a str],
    /// Unix sockets for the entry, the encrypted hop and the backend.
    unix: bool,
}

impl ChainSpec<'_> {
    fn new(orientation: Orientation, behavior: Behavior) -> ChainSpec<'static> {
        ChainSpec {
            orientation,
            behavior,
            spipes_extra: &[],
            spiped_extra: &[],
            unix: false,
        }
    }
}

/// Builds and starts a [`Chain`]; `None` (the test should return) when
/// spiped is not installed.
fn chain(spec: ChainSpec<'_>) -> Option<Chain> {
    require_binary("spiped")?;
    let ws = Workspace::new();
    let key = ws.write_key("pipe.key");
    let (entry, wire, backend_at) = if spec.unix {
        (
            ws.unix("entry.sock"),
            ws.unix("wire.sock"),
            ws.unix("backend.sock"),
        )
    } else {
        (
            Endpoint::free_tcp(),
            Endpoint::free_tcp(),
            Endpoint::Tcp("127.0.0.1:0".parse().expect("an address")),
        )
    };
    let backend = Backend::start(&backend_at, spec.behavior);

    let (spipes, spiped) = match spec.orientation {
        Orientation::SpipesToSpiped => {
            let spiped = Spiped::decrypt(
                &wire,
                backend.endpoint(),
                &key,
                spec.spiped_extra,
            );
            let toml = pipe_toml(
                "out",
                "encrypt",
                &entry,
                &wire,
                &key,
                spec.spipes_extra,
            );
            let spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
            (spipes, spiped)
        }
        Orientation::SpipedToSpipes => {
            let toml = pipe_toml(
                "in",
                "decrypt",
                &wire,
                backend.endpoint(),
                &key,
                spec.spipes_extra,
            );
            let spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
            let spiped =
                Spiped::encrypt(&entry, &wire, &key, spec.spiped_extra);
            (spipes, spiped)
        }
    };
    Some(Chain {
        entry,
        backend,
        spipes,
        _spiped: spiped,
        _ws: ws,
    })
}

/// Asserts that an echo exchange came back byte for byte.
fn assert_echoed(t: &Transfer, what: &str) {
    assert_eq!(
        t.received.len, t.sent.len,
        "{what}: sent {} bytes, {} came back",
        t.sent.len, t.received.len
    );
    assert_eq!(
        t.received.hash,
        t.sent.hash,
        "{what}: the echoed bytes differ (sent {}, received {})",
        hex(&t.sent.hash),
        hex(&t.received.hash)
    );
}

/// Asserts that a client and a [`Behavior::Source`] backend each received
/// exactly what the other sent.
fn assert_crossed(t: &Transfer, r: &Record, what: &str) {
    assert_eq!(r.error, None, "{what}: the backend connection failed");
    assert_eq!(
        (r.received.len, r.received.hash),
        (t.sent.len, t.sent.hash),
        "{what}: the backend did not receive what the client sent"
    );
    assert_eq!(
        (t.received.len, t.received.hash),
        (r.sent.len, r.sent.hash),
        "{what}: the client did not receive what the backend sent"
    );
}

// ---------------------------------------------------------------------
// 1. Data through every pairing of implementations
// ---------------------------------------------------------------------

#[test]
fn spipes_encrypt_to_spiped_decrypt() {
    let spec = ChainSpec::new(Orientation::SpipesToSpiped, Behavior::Echo);
    let Some(c) = chain(spec) else { return };
    let t = exchange(c.entry.connect().expect("connect"), 4 * MIB)
        .expect("exchange");
    assert_echoed(&t, "spipes -> spiped");
    assert_eq!(c.backend.accepted(), 1);
    let r = c.backend.wait_records(1, RECORD_WITHIN);
    assert_eq!(r[0].received.hash, t.sent.hash);
}

#[test]
fn spiped_encrypt_to_spipes_decrypt() {
    let spec = ChainSpec::new(Orientation::SpipedToSpipes, Behavior::Echo);
    let Some(c) = chain(spec) else { return };
    let t = exchange(c.entry.connect().expect("connect"), 4 * MIB)
        .expect("exchange");
    assert_echoed(&t, "spiped -> spipes");
    assert_eq!(c.backend.accepted(), 1);
    let r = c.backend.wait_records(1, RECORD_WITHIN);
    assert_eq!(r[0].received.hash, t.sent.hash);
}

/// Runs `spipe -t TARGET -k KEY` with `input` on stdin and returns its
/// stdout, asserting that it exits 0 within a bound.
fn run_spipe(
    spipe: &Path,
    target: &Endpoint,
    key: &Path,
    input: Vec<u8>,
) -> Vec<u8> {
    let mut child = Command::new(spipe)
        .arg("-t")
        .arg(target.spiped())
        .arg("-k")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spipe");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = thread::spawn(move || {
        stdin.write_all(&input).expect("write to spipe");
        // Dropping stdin closes it: spipe's end of stream.
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).expect("read from spipe");
        out
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = thread::spawn(move || {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out);
        out
    });

    let status = common::wait_child(&mut child, Duration::from_secs(60));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("spipe did not finish within 60 s");
    };
    writer.join().expect("spipe writer panicked");
    let out = reader.join().expect("spipe reader panicked");
    let errors = errors.join().expect("spipe stderr reader panicked");
    assert!(status.success(), "spipe exited {status}: {errors}");
    out
}

#[test]
fn spipe_client_to_spipes_decrypt() {
    let Some(spipe) = require_binary("spipe") else {
        return;
    };
    let ws = Workspace::new();
    let key = ws.write_key("pipe.key");
    let echo = Backend::echo();
    let sink = Backend::sink();
    let echo_at = Endpoint::free_tcp();
    let sink_at = Endpoint::free_tcp();
    let toml =
        pipe_toml("echo", "decrypt", &echo_at, echo.endpoint(), &key, &[])
            + &pipe_toml(
                "sink",
                "decrypt",
                &sink_at,
                sink.endpoint(),
                &key,
                &[],
            );
    let _spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));

    // Echo: what goes in on stdin comes out on stdout.
    let input = random_bytes(3 * MIB as usize + 123);
    let out = run_spipe(&spipe, &echo_at, &key, input.clone());
    assert_eq!(out.len(), input.len(), "spipe echoed a different length");
    assert_eq!(sha256(&out), sha256(&input), "spipe echoed other bytes");

    // Half-close: stdin's end reaches the sink, whose hash comes back.
    let input = random_bytes(200_001);
    let out = run_spipe(&spipe, &sink_at, &key, input.clone());
    assert_eq!(out, sha256(&input), "the sink's reply through spipe");
    assert_eq!((echo.accepted(), sink.accepted()), (1, 1));
}

#[test]
fn spipes_encrypt_to_spipes_decrypt() {
    let ws = Workspace::new();
    let key = ws.write_key("pipe.key");
    let echo = Backend::echo();
    let sink = Backend::sink();
    let (entry_echo, wire_echo) = (Endpoint::free_tcp(), Endpoint::free_tcp());
    let (entry_sink, wire_sink) = (Endpoint::free_tcp(), Endpoint::free_tcp());

    // Two separate daemons: one encrypts, the other decrypts.
    let server =
        pipe_toml("echo", "decrypt", &wire_echo, echo.endpoint(), &key, &[])
            + &pipe_toml(
                "sink",
                "decrypt",
                &wire_sink,
                sink.endpoint(),
                &key,
                &[],
            );
    let client =
        pipe_toml("echo", "encrypt", &entry_echo, &wire_echo, &key, &[])
            + &pipe_toml("sink", "encrypt", &entry_sink, &wire_sink, &key, &[]);
    let _server = Spipes::start(&ws.write_config("server.toml", &server));
    let _client = Spipes::start(&ws.write_config("client.toml", &client));

    let t = exchange(entry_echo.connect().expect("connect"), 4 * MIB)
        .expect("exchange");
    assert_echoed(&t, "spipes -> spipes");

    let payload = random_bytes(MIB as usize + 5);
    let reply = half_close(entry_sink.connect().expect("connect"), &payload)
        .expect("half-close exchange");
    assert_eq!(reply, sha256(&payload), "the sink's reply");
    assert_eq!((echo.accepted(), sink.accepted()), (1, 1));
}

/// Payload sizes around the 1024-byte packet payload and the 1060-byte
/// packet, each on its own connection, in both orientations.
#[test]
fn payload_sizes_around_packet_boundaries() {
    const SIZES: [usize; 11] = [
        0, 1, 1023, 1024, 1025, 1060, 2047, 2048, 2049, 65_543, 1_000_003,
    ];
    for orientation in BOTH {
        let spec = ChainSpec::new(orientation, Behavior::Echo);
        let Some(c) = chain(spec) else { return };
        for size in SIZES {
            let data = random_bytes(size);
            let conn = c.entry.connect().expect("connect");
            let t = exchange_data(conn, data).expect("exchange");
            assert_echoed(&t, &format!("{orientation:?}, {size} bytes"));
        }
        let records = c.backend.wait_records(SIZES.len(), RECORD_WITHIN);
        let mut got: Vec<u64> =
            records.iter().map(|r| r.received.len).collect();
        got.sort_unstable();
        let want: Vec<u64> = SIZES.iter().map(|&s| s as u64).collect();
        assert_eq!(got, want, "{orientation:?}: sizes the backend read");
    }
}

#[test]
fn ipv6_loopback_both_orientations() {
    if require_binary("spiped").is_none() {
        return;
    }
    let Some(_) = common::free_port_v6() else {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    };
    let v6 = || {
        let port = common::free_port_v6().expect("IPv6 loopback");
        Endpoint::Tcp(format!("[::1]:{port}").parse().expect("an address"))
    };
    let ws = Workspace::new();
    let key = ws.write_key("pipe.key");
    let echo = Backend::start(
        &Endpoint::Tcp("[::1]:0".parse().expect("an address")),
        Behavior::Echo,
    );
    let (out_entry, out_wire) = (v6(), v6());
    let (in_entry, in_wire) = (v6(), v6());
    let _d = Spiped::decrypt(&out_wire, echo.endpoint(), &key, &[]);
    let toml = pipe_toml("out", "encrypt", &out_entry, &out_wire, &key, &[])
        + &pipe_toml("in", "decrypt", &in_wire, echo.endpoint(), &key, &[]);
    let _spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
    let _e = Spiped::encrypt(&in_entry, &in_wire, &key, &[]);

    for entry in [&out_entry, &in_entry] {
        let t =
            exchange(entry.connect().expect("connect"), MIB).expect("exchange");
        assert_echoed(&t, &format!("via {entry}"));
    }
    assert_eq!(echo.accepted(), 2);
}

// ---------------------------------------------------------------------
// 2. Forward secrecy pairings
// ---------------------------------------------------------------------

/// spipes' `forward_secrecy` values.
const SPIPES_FS: [&str; 3] = ["on", "off", "required"];

/// spiped's modes: none, `-f` (off) and `-g` (required).
const SPIPED_FS: [(&str, &[&str]); 3] =
    [("on", &[]), ("off", &["-f"]), ("required", &["-g"])];

/// Whether a pairing must carry data: only `required` against `off`
/// fails.
fn pairing_works(spipes: &str, spiped: &str) -> bool {
    !matches!((spipes, spiped), ("required", "off") | ("off", "required"))
}

/// Every pairing in one orientation, in one spipes process with one pipe
/// per pairing. Failures are collected and reported together.
fn forward_secrecy_matrix(orientation: Orientation) {
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let key = ws.write_key("pipe.key");

    struct Case {
        spipes_fs: &'static str,
        spiped_fs: &'static str,
        entry: Endpoint,
        backend: Backend,
    }
    let mut cases = Vec::new();
    let mut toml = String::new();
    let mut spiped_later = Vec::new();
    let mut spipeds = Vec::new();
    for spipes_fs in SPIPES_FS {
        for (spiped_fs, flags) in SPIPED_FS {
            let name = format!("fs_{spipes_fs}_{spiped_fs}");
            let backend = Backend::echo();
            let (entry, wire) = (Endpoint::free_tcp(), Endpoint::free_tcp());
            let mut spiped_args: Vec<&str> = flags.to_vec();
            spiped_args.extend(["-o", SLOW_TIMEOUT]);
            let fs_value = common::toml_string(spipes_fs);
            let extra = [
                ("forward_secrecy", fs_value.as_str()),
                ("timeout", SLOW_TIMEOUT),
            ];
            match orientation {
                Orientation::SpipesToSpiped => {
                    spipeds.push(Spiped::decrypt(
                        &wire,
                        backend.endpoint(),
                        &key,
                        &spiped_args,
                    ));
                    toml += &pipe_toml(
                        &name, "encrypt", &entry, &wire, &key, &extra,
                    );
                }
                Orientation::SpipedToSpipes => {
                    toml += &pipe_toml(
                        &name,
                        "decrypt",
                        &wire,
                        backend.endpoint(),
                        &key,
                        &extra,
                    );
                    let args: Vec<String> =
                        spiped_args.iter().map(|s| s.to_string()).collect();
                    spiped_later.push((entry.clone(), wire, args));
                }
            }
            cases.push(Case {
                spipes_fs,
                spiped_fs,
                entry,
                backend,
            });
        }
    }
    let spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
    for (entry, wire, args) in &spiped_later {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spipeds.push(Spiped::encrypt(entry, wire, &key, &args));
    }

    let mut failures = Vec::new();
    for case in &cases {
        let what = format!(
            "{orientation:?}: spipes forward_secrecy={} with spiped {}",
            case.spipes_fs, case.spiped_fs
        );
        if pairing_works(case.spipes_fs, case.spiped_fs) {
            let conn = case.entry.connect().expect("connect");
            match exchange(conn, 256 * 1024) {
                Ok(t) if t.received == t.sent => {}
                Ok(t) => failures.push(format!(
                    "{what}: must work, but sent {} bytes and got {} back \
                     (hashes {} / {})",
                    t.sent.len,
                    t.received.len,
                    hex(&t.sent.hash),
                    hex(&t.received.hash)
                )),
                Err(e) => failures.push(format!("{what}: must work, but {e}")),
            }
            continue;
        }

        // Must be refused: the connection closes and no byte reaches the
        // backend.
        let mut conn = case.entry.connect().expect("connect");
        let _ = conn.write_all(&random_bytes(4096));
        match wait_closed(&mut conn, CLOSE_WITHIN) {
            Ok(closed) if closed.received.is_empty() => {}
            Ok(closed) => failures.push(format!(
                "{what}: must be refused, but the client received {} bytes",
                closed.received.len()
            )),
            Err(received) => failures.push(format!(
                "{what}: must be refused, but the connection was still open \
                 after {CLOSE_WITHIN:?} ({} bytes received)",
                received.len()
            )),
        }
        drop(conn);
        let bytes = case.backend.bytes_received();
        if bytes != 0 {
            failures.push(format!(
                "{what}: must be refused, but the backend received {bytes} \
                 bytes"
            ));
        }
        // spipes decrypts and refuses on its own before dialling; spiped
        // -d dials its target during the handshake, so only the bytes
        // count there.
        let spipes_refuses = case.spipes_fs == "required";
        if orientation == Orientation::SpipedToSpipes && spipes_refuses {
            let accepted = case.backend.accepted();
            if accepted != 0 {
                failures.push(format!(
                    "{what}: spipes refused the client, yet dialled the \
                     backend {accepted} times"
                ));
            }
        }
    }
    let log = spipes.log();
    assert!(
        failures.is_empty(),
        "{} pairing(s) wrong:\n{}\nspipes log:\n{log}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn forward_secrecy_pairings_spipes_encrypts() {
    forward_secrecy_matrix(Orientation::SpipesToSpiped);
}

#[test]
fn forward_secrecy_pairings_spiped_encrypts() {
    forward_secrecy_matrix(Orientation::SpipedToSpipes);
}

// ---------------------------------------------------------------------
// 3. Bulk data both ways at once
// ---------------------------------------------------------------------

/// 64 MiB each way at the same time, checked by SHA-256 on both ends.
fn bulk_both_ways(orientation: Orientation) {
    const BULK: u64 = 64 * MIB;
    let spec = ChainSpec::new(orientation, Behavior::Source(BULK));
    let Some(c) = chain(spec) else { return };
    let t =
        exchange(c.entry.connect().expect("connect"), BULK).expect("exchange");
    let r = c.backend.wait_records(1, RECORD_WITHIN);
    assert_eq!(t.sent.len, BULK);
    assert_eq!(r[0].sent.len, BULK);
    assert_crossed(&t, &r[0], &format!("{orientation:?}, 64 MiB each way"));
    assert_eq!(c.backend.accepted(), 1);
}

#[test]
fn bulk_64_mib_each_way_spipes_encrypts() {
    bulk_both_ways(Orientation::SpipesToSpiped);
}

#[test]
fn bulk_64_mib_each_way_spiped_encrypts() {
    bulk_both_ways(Orientation::SpipedToSpipes);
}

// ---------------------------------------------------------------------
// 4. Half-close
// ---------------------------------------------------------------------

/// The client sends, shuts down writing, and still reads the sink's whole
/// reply; an empty payload too.
fn half_close_through(orientation: Orientation) {
    let spec = ChainSpec::new(orientation, Behavior::Sink);
    let Some(c) = chain(spec) else { return };
    for size in [0, 1, 1024, 777_777] {
        let payload = random_bytes(size);
        let reply = half_close(c.entry.connect().expect("connect"), &payload)
            .unwrap_or_else(|e| panic!("{orientation:?}, {size} bytes: {e}"));
        assert_eq!(
            hex(&reply),
            hex(&sha256(&payload)),
            "{orientation:?}, {size} bytes: the sink's reply"
        );
    }
    assert_eq!(c.backend.accepted(), 4);
}

#[test]
fn half_close_spipes_encrypts() {
    half_close_through(Orientation::SpipesToSpiped);
}

#[test]
fn half_close_spiped_encrypts() {
    half_close_through(Orientation::SpipedToSpipes);
}

/// The other direction: the backend sends a little and shuts down its
/// write half first; the client reads to that end, and only then sends
/// its own data, which must still reach the backend whole.
fn backend_closes_first(orientation: Orientation) {
    let spec = ChainSpec::new(orientation, Behavior::Source(1000));
    let Some(c) = chain(spec) else { return };
    let mut conn = c.entry.connect().expect("connect");
    let mut greeting = Vec::new();
    conn.read_to_end(&mut greeting)
        .expect("read to the backend's end");
    assert_eq!(greeting.len(), 1000, "{orientation:?}: the greeting");

    let payload = random_bytes(MIB as usize + 3);
    conn.write_all(&payload)
        .expect("write after the peer's end");
    conn.shutdown_write().expect("shutdown write");
    let r = c.backend.wait_records(1, RECORD_WITHIN);
    assert_eq!(r[0].error, None, "{orientation:?}: backend error");
    assert_eq!(r[0].sent.hash, sha256(&greeting), "{orientation:?}");
    assert_eq!(r[0].received.len, payload.len() as u64, "{orientation:?}");
    assert_eq!(r[0].received.hash, sha256(&payload), "{orientation:?}");
}

#[test]
fn backend_half_closes_first_spipes_encrypts() {
    backend_closes_first(Orientation::SpipesToSpiped);
}

#[test]
fn backend_half_closes_first_spiped_encrypts() {
    backend_closes_first(Orientation::SpipedToSpipes);
}

// ---------------------------------------------------------------------
// 5. Wrong keys and garbage
// ---------------------------------------------------------------------

/// A spipes decrypt pipe (with a long handshake timeout) in front of an
/// echo backend, and a spiped -e with the right key in front of it.
struct Guarded {
    wire: Endpoint,
    good_entry: Endpoint,
    key: PathBuf,
    backend: Backend,
    spipes: Spipes,
    _good: Spiped,
    ws: Workspace,
}

fn guarded() -> Option<Guarded> {
    require_binary("spiped")?;
    let ws = Workspace::new();
    let key = ws.write_key("pipe.key");
    let backend = Backend::echo();
    let wire = Endpoint::free_tcp();
    let toml = pipe_toml(
        "guarded",
        "decrypt",
        &wire,
        backend.endpoint(),
        &key,
        &[("timeout", SLOW_TIMEOUT)],
    );
    let spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
    let good_entry = Endpoint::free_tcp();
    let good = Spiped::encrypt(&good_entry, &wire, &key, &[]);
    Some(Guarded {
        wire,
        good_entry,
        key,
        backend,
        spipes,
        _good: good,
        ws,
    })
}

impl Guarded {
    /// A good client still gets through, and is the backend's only
    /// connection.
    fn assert_still_serves(&self) {
        let conn = self.good_entry.connect().expect("connect");
        let t = exchange(conn, 100_000).expect("exchange");
        assert_echoed(&t, "the good client afterwards");
        assert_eq!(
            self.backend.accepted(),
            1,
            "the backend must see the good client only"
        );
    }
}

#[test]
fn wrong_key_is_refused_before_dialling() {
    let Some(g) = guarded() else { return };
    let other_key = g.ws.write_key("other.key");
    assert_ne!(std::fs::read(&other_key).ok(), std::fs::read(&g.key).ok());
    let bad_entry = Endpoint::free_tcp();
    let _bad = Spiped::encrypt(&bad_entry, &g.wire, &other_key, &[]);

    for attempt in 0..3 {
        let mut conn = bad_entry.connect().expect("connect");
        let _ = conn.write_all(&random_bytes(10_000));
        let closed = expect_closed(&mut conn, CLOSE_WITHIN);
        assert!(
            closed.received.is_empty(),
            "attempt {attempt}: a client with the wrong key received {} \
             bytes",
            closed.received.len()
        );
    }
    assert_eq!(
        g.backend.accepted(),
        0,
        "a client with the wrong key made spipes dial the backend"
    );
    assert!(
        g.spipes.log().contains("handshake failed"),
        "the wrong key is not logged; log:\n{}",
        g.spipes.log()
    );
    g.assert_still_serves();
}

#[test]
fn garbage_is_refused_before_dialling() {
    let Some(g) = guarded() else { return };

    // A client that sends a nonce and part of a DH message, then waits:
    // it has proven nothing, so spipes must not dial while it waits.
    let mut held = g.wire.connect().expect("connect");
    held.write_all(&random_bytes(32 + 100)).expect("write");

    // 320 bytes: exactly a nonce and a DH message; 64 KiB: far more.
    for size in [320, 65_536] {
        let mut conn = g.wire.connect().expect("connect");
        conn.write_all(&random_bytes(size)).expect("write garbage");
        let closed = expect_closed(&mut conn, CLOSE_WITHIN);
        assert!(
            closed.received.len() <= 32,
            "{size} garbage bytes: spipes sent {} bytes, more than its nonce",
            closed.received.len()
        );
    }
    // Too short for a handshake, then end of stream; and nothing at all.
    for size in [100, 0] {
        let mut conn = g.wire.connect().expect("connect");
        conn.write_all(&random_bytes(size)).expect("write garbage");
        conn.shutdown_write().expect("shutdown write");
        let closed = expect_closed(&mut conn, CLOSE_WITHIN);
        assert!(
            closed.received.len() <= 32,
            "{size} bytes then EOF: spipes sent {} bytes",
            closed.received.len()
        );
    }
    assert_eq!(
        g.backend.accepted(),
        0,
        "garbage made spipes dial the backend"
    );
    assert_eq!(g.backend.bytes_received(), 0);
    // The good client connects after the held one, so a dial for the held
    // one would have reached the backend first and be counted here.
    g.assert_still_serves();

    held.shutdown_write().expect("shutdown write");
    let closed = expect_closed(&mut held, CLOSE_WITHIN);
    assert!(closed.received.len() <= 32, "the held client got data");
    assert_eq!(
        g.backend.accepted(),
        1,
        "the held client reached the backend"
    );
}

#[test]
fn decrypt_pipe_accepts_each_of_its_keys() {
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let old = ws.write_key("old.key");
    let new = ws.write_key("new.key");
    let other = ws.write_key("other.key");
    let backend = Backend::echo();
    let wire = Endpoint::free_tcp();
    let keys = format!(
        "[{}, {}]",
        common::toml_string("old.key"),
        common::toml_string("new.key")
    );
    // Keys relative to the config's folder, given as an array.
    let toml = format!(
        "[pipes.rotating]\nmode = \"decrypt\"\nsource = {}\ntarget = {}\n\
         key = {keys}\ntimeout = {SLOW_TIMEOUT}\n",
        common::toml_string(&wire.config()),
        common::toml_string(&backend.endpoint().config()),
    );
    let _spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));

    let mut entries = Vec::new();
    let mut spipeds = Vec::new();
    for key in [&old, &new, &other] {
        let entry = Endpoint::free_tcp();
        spipeds.push(Spiped::encrypt(&entry, &wire, key, &[]));
        entries.push(entry);
    }
    for (entry, name) in entries[..2].iter().zip(["old", "new"]) {
        let t = exchange(entry.connect().expect("connect"), 50_000)
            .expect("exchange");
        assert_echoed(&t, &format!("with the {name} key"));
    }
    let mut conn = entries[2].connect().expect("connect");
    let _ = conn.write_all(b"hello");
    let closed = expect_closed(&mut conn, CLOSE_WITHIN);
    assert!(closed.received.is_empty(), "a third key got data back");
    assert_eq!(backend.accepted(), 2, "only the two listed keys get in");
}

#[test]
fn early_dial_decrypt_carries_data() {
    let mut spec = ChainSpec::new(Orientation::SpipedToSpipes, Behavior::Sink);
    spec.spipes_extra = &[("dial", "\"early\"")];
    let Some(c) = chain(spec) else { return };
    let payload = random_bytes(300_000);
    let reply = half_close(c.entry.connect().expect("connect"), &payload)
        .expect("half-close exchange");
    assert_eq!(reply, sha256(&payload), "the sink's reply");
    assert_eq!(c.backend.accepted(), 1);
    drop(c.spipes);
}

// ---------------------------------------------------------------------
// 6. Unix sockets at both ends
// ---------------------------------------------------------------------

fn unix_sockets(orientation: Orientation) {
    for behavior in [Behavior::Echo, Behavior::Sink] {
        let mut spec = ChainSpec::new(orientation, behavior);
        spec.unix = true;
        let Some(c) = chain(spec) else { return };
        assert!(matches!(c.entry, Endpoint::Unix(_)));
        assert!(matches!(c.backend.endpoint(), Endpoint::Unix(_)));
        match behavior {
            Behavior::Echo => {
                let t = exchange(c.entry.connect().expect("connect"), 2 * MIB)
                    .expect("exchange");
                assert_echoed(&t, &format!("{orientation:?} over Unix"));
            }
            _ => {
                let payload = random_bytes(500_000);
                let reply =
                    half_close(c.entry.connect().expect("connect"), &payload)
                        .expect("half-close exchange");
                assert_eq!(reply, sha256(&payload), "{orientation:?}");
            }
        }
        assert_eq!(c.backend.accepted(), 1);
    }
}

#[test]
fn unix_sockets_spipes_encrypts() {
    unix_sockets(Orientation::SpipesToSpiped);
}

#[test]
fn unix_sockets_spiped_encrypts() {
    unix_sockets(Orientation::SpipedToSpipes);
}

// ---------------------------------------------------------------------
// 7. Several pipes in one process at once
// ---------------------------------------------------------------------

#[test]
fn several_pipes_carry_their_own_streams_concurrently() {
    if require_binary("spiped").is_none() {
        return;
    }
    const EACH: u64 = 8 * MIB;
    // Generous handshake timeouts: this test is about isolation under
    // load, and an unoptimised build is slow under load.
    const SLOW: [(&str, &str); 1] = [("timeout", SLOW_TIMEOUT)];
    const SLOW_SPIPED: [&str; 2] = ["-o", SLOW_TIMEOUT];
    let ws = Workspace::new();
    let mut toml = String::new();
    let mut spipeds = Vec::new();
    let mut later = Vec::new();
    // (entry, backend) per path; each backend sends its own random bytes.
    let mut paths: Vec<(Endpoint, Backend)> = Vec::new();

    for i in 0..2 {
        // spipes encrypt -> spiped -d -> backend.
        let key = ws.write_key(&format!("out{i}.key"));
        let backend = Backend::source(EACH);
        let (entry, wire) = (Endpoint::free_tcp(), Endpoint::free_tcp());
        spipeds.push(Spiped::decrypt(
            &wire,
            backend.endpoint(),
            &key,
            &SLOW_SPIPED,
        ));
        toml += &pipe_toml(
            &format!("out{i}"),
            "encrypt",
            &entry,
            &wire,
            &key,
            &SLOW,
        );
        paths.push((entry, backend));
    }
    for i in 0..2 {
        // spiped -e -> spipes decrypt -> backend.
        let key = ws.write_key(&format!("in{i}.key"));
        let backend = Backend::source(EACH);
        let (entry, wire) = (Endpoint::free_tcp(), Endpoint::free_tcp());
        toml += &pipe_toml(
            &format!("in{i}"),
            "decrypt",
            &wire,
            backend.endpoint(),
            &key,
            &SLOW,
        );
        later.push((entry.clone(), wire, key));
        paths.push((entry, backend));
    }
    {
        // spipes encrypt -> spipes decrypt (same process) -> backend, over
        // a Unix socket.
        let key = ws.write_key("loop.key");
        let backend = Backend::source(EACH);
        let entry = Endpoint::free_tcp();
        let wire = ws.unix("loop.sock");
        toml += &pipe_toml("loop_out", "encrypt", &entry, &wire, &key, &SLOW);
        toml += &pipe_toml(
            "loop_in",
            "decrypt",
            &wire,
            backend.endpoint(),
            &key,
            &SLOW,
        );
        paths.push((entry, backend));
    }
    let _spipes = Spipes::start(&ws.write_config("spipes.toml", &toml));
    for (entry, wire, key) in &later {
        spipeds.push(Spiped::encrypt(entry, wire, key, &SLOW_SPIPED));
    }

    let clients: Vec<_> = paths
        .iter()
        .map(|(entry, _)| {
            let conn = entry.connect().expect("connect");
            thread::spawn(move || exchange(conn, EACH))
        })
        .collect();
    let transfers: Vec<Transfer> = clients
        .into_iter()
        .map(|c| c.join().expect("client panicked").expect("exchange"))
        .collect();

    for (i, ((entry, backend), t)) in paths.iter().zip(&transfers).enumerate() {
        let r = backend.wait_records(1, RECORD_WITHIN);
        assert_eq!(backend.accepted(), 1, "path {i} ({entry})");
        assert_crossed(t, &r[0], &format!("path {i} ({entry})"));
    }
    // The streams are distinct, so no path could have been cross-wired.
    let mut hashes: Vec<_> = transfers.iter().map(|t| t.sent.hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), transfers.len());
}
