//! `spipes connect`, the `spipe` equivalent: standard input and output
//! through an encrypted connection, against the real `spiped -d`, a
//! spipes decrypt pipe, and a hand-driven server that misbehaves on
//! purpose. Everything is on 127.0.0.1 or Unix sockets in temp dirs.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Backend, Behavior, Endpoint, Spiped, Spipes, Workspace, free_port,
    free_port_v6, output_with_stdin, pipe_toml, random_bytes, require_binary,
    sha256, spipes_command,
};

/// The longest one `spipes connect` run may take in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes piped through in the big transfer.
const BIG: usize = 8 * 1024 * 1024;

/// Runs `spipes connect ARGS` with `input` on its standard input (closed
/// once written), and returns what it wrote and how it exited; panics if
/// it runs longer than [`RUN_TIMEOUT`] (it is then killed).
fn run_connect(args: &[&str], input: Vec<u8>) -> Output {
    let mut cmd: Command = spipes_command();
    cmd.arg("connect").args(args);
    output_with_stdin(
        &mut cmd,
        input,
        RUN_TIMEOUT,
        &format!("spipes connect {args:?}"),
    )
}

/// Standard error as text.
fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The address `spipes connect -t` takes for a TCP endpoint.
fn target_of(endpoint: &Endpoint) -> String {
    endpoint.config()
}

/// A path as a string argument.
fn arg(path: &std::path::Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

#[test]
fn eight_mib_through_real_spiped() {
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::sink();
    let source = Endpoint::free_tcp();
    let _spiped = Spiped::decrypt(&source, backend.endpoint(), &key, &[]);

    let data = random_bytes(BIG);
    let target = target_of(&source);
    let output = run_connect(&["-t", &target, "-k", arg(&key)], data.clone());
    assert!(
        output.status.success(),
        "spipes connect failed: {}",
        stderr_of(&output)
    );
    // The sink answers after our end of stream: half-close worked.
    assert_eq!(output.stdout, sha256(&data), "the reply is the data's hash");
    let records = backend.wait_records(1, RUN_TIMEOUT);
    assert_eq!(records[0].received.len, BIG as u64);
    assert_eq!(records[0].received.hash, sha256(&data));
}

#[test]
fn echo_through_real_spiped_with_forward_secrecy_off() {
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::echo();
    let source = Endpoint::free_tcp();
    let _spiped = Spiped::decrypt(&source, backend.endpoint(), &key, &["-f"]);

    // "on" and "off" both interoperate with a fast server.
    for fs in ["on", "off"] {
        let data = random_bytes(100_000);
        let target = target_of(&source);
        let args = ["-t", &target, "-k", arg(&key), "--forward-secrecy", fs];
        let output = run_connect(&args, data.clone());
        assert!(output.status.success(), "{fs}: {}", stderr_of(&output));
        assert!(output.stdout == data, "{fs}: the echo differs");
    }
}

#[test]
fn wrong_key_fails_and_nothing_reaches_the_backend() {
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let wrong = ws.write_key("wrong");
    let backend = Backend::sink();
    let source = Endpoint::free_tcp();
    let spiped = Spiped::decrypt(&source, backend.endpoint(), &key, &[]);

    let target = target_of(&source);
    let output =
        run_connect(&["-t", &target, "-k", arg(&wrong)], b"secret".to_vec());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let want = format!(
        "spipes: handshake with {target} failed: peer closed the connection \
         during the handshake (a wrong key, or the server requires forward \
         secrecy and it is off here)\n"
    );
    assert_eq!(stderr_of(&output), want);
    assert!(output.stdout.is_empty());
    // spiped dials its target during the handshake, so the backend may
    // see a connection, but never a byte.
    assert_eq!(backend.bytes_received(), 0, "spiped log:\n{}", spiped.log());
}

/// One `spipes connect --forward-secrecy FS` to a real `spiped -d` run
/// with `spiped_flags` in front of a sink, which must exit 1. Returns
/// the target, the output, and the sink and spiped (still running);
/// `None` if spiped is not installed.
fn refused_by_spiped(
    spiped_flags: &[&str],
    forward_secrecy: &str,
) -> Option<(String, Output, Backend, Spiped)> {
    require_binary("spiped")?;
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::sink();
    let source = Endpoint::free_tcp();
    let spiped =
        Spiped::decrypt(&source, backend.endpoint(), &key, spiped_flags);

    let target = target_of(&source);
    let args = [
        "-t",
        &target,
        "-k",
        arg(&key),
        "--forward-secrecy",
        forward_secrecy,
    ];
    let output = run_connect(&args, b"never sent".to_vec());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    Some((target, output, backend, spiped))
}

#[test]
fn forward_secrecy_required_refuses_a_fast_spiped() {
    let Some((target, output, backend, _spiped)) =
        refused_by_spiped(&["-f"], "required")
    else {
        return;
    };
    assert_eq!(
        stderr_of(&output),
        format!(
            "spipes: handshake with {target} failed: peer has forward \
             secrecy off, and it is required\n"
        )
    );
    assert!(output.stdout.is_empty());
    assert_eq!(backend.bytes_received(), 0);
}

#[test]
fn forward_secrecy_off_is_refused_by_spiped_g() {
    let Some((target, output, backend, _spiped)) =
        refused_by_spiped(&["-g"], "off")
    else {
        return;
    };
    let err = stderr_of(&output);
    assert!(
        err.starts_with(&format!("spipes: handshake with {target} failed: ")),
        "{err}"
    );
    assert_eq!(backend.bytes_received(), 0);
}

#[test]
fn through_a_spipes_decrypt_pipe_on_a_unix_socket() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::sink();
    let source = ws.unix("dec.sock");
    let config = ws.write_config(
        "spipes.toml",
        &format!(
            "[daemon]\ncontrol_socket = \"\"\n{}",
            pipe_toml("dec", "decrypt", &source, backend.endpoint(), &key, &[])
        ),
    );
    let _spipes = Spipes::start(&config);

    let data = random_bytes(3 * 1024 * 1024 + 5);
    let output = run_connect(
        &["-t", &source.config(), "-k", arg(&key), "--timeout", "2.5"],
        data.clone(),
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(output.stdout, sha256(&data));
}

#[test]
fn through_a_spipes_decrypt_pipe_on_ipv6() {
    let Some(port) = free_port_v6() else {
        eprintln!("skipping: no IPv6 loopback");
        return;
    };
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::echo();
    let source = Endpoint::Tcp(format!("[::1]:{port}").parse().expect("addr"));
    let config = ws.write_config(
        "spipes.toml",
        &format!(
            "[daemon]\ncontrol_socket = \"\"\n{}",
            pipe_toml("dec", "decrypt", &source, backend.endpoint(), &key, &[])
        ),
    );
    let _spipes = Spipes::start(&config);

    let target = format!("[::1]:{port}");
    let data = random_bytes(10_000);
    let output = run_connect(&["-t", &target, "-k", arg(&key)], data.clone());
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(output.stdout == data, "the echo differs");
}

#[test]
fn empty_input_gets_the_whole_reply() {
    // The backend speaks first and at length; our end of input comes at
    // once and must not cut the reply short.
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::tcp(Behavior::Source(2 * 1024 * 1024));
    let source = Endpoint::free_tcp();
    let config = ws.write_config(
        "spipes.toml",
        &format!(
            "[daemon]\ncontrol_socket = \"\"\n{}",
            pipe_toml("dec", "decrypt", &source, backend.endpoint(), &key, &[])
        ),
    );
    let _spipes = Spipes::start(&config);

    let target = target_of(&source);
    let output = run_connect(&["-t", &target, "-k", arg(&key)], Vec::new());
    assert!(output.status.success(), "{}", stderr_of(&output));
    let records = backend.wait_records(1, RUN_TIMEOUT);
    assert_eq!(output.stdout.len() as u64, records[0].sent.len);
    assert_eq!(sha256(&output.stdout), records[0].sent.hash);
    assert_eq!(records[0].received.len, 0);
}

#[test]
fn cannot_reach_a_closed_port_or_a_missing_socket() {
    let ws = Workspace::new();
    let key = ws.write_key("k");

    let target = format!("127.0.0.1:{}", free_port());
    let output = run_connect(&["-t", &target, "-k", arg(&key)], Vec::new());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!(
            "spipes: cannot reach {target}: Connection refused (os error \
             111)\n"
        )
    );

    let path = ws.join("nobody.sock");
    let target = arg(&path);
    let output = run_connect(&["-t", target, "-k", arg(&key)], Vec::new());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!(
            "spipes: cannot reach {target}: No such file or directory (os \
             error 2)\n"
        )
    );
}

#[test]
fn handshake_is_bounded_by_the_timeout() {
    // The kernel completes the TCP handshake from the backlog, but nobody
    // ever answers.
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = silent.local_addr().expect("addr").to_string();

    let started = Instant::now();
    let output = run_connect(
        &["-t", &target, "-k", arg(&key), "--timeout", "0.5"],
        Vec::new(),
    );
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!(
            "spipes: handshake with {target} failed: not finished within \
             0.5 s\n"
        )
    );
    assert!(took >= Duration::from_millis(450), "gave up after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn bad_arguments_are_one_clear_line() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let empty = ws.write_file("empty", b"");
    let missing = ws.join("missing");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["-t", "example.org", "-k", arg(&key)],
            "spipes: invalid target example.org: missing port in \
             `example.org`: write host:port\n"
                .to_owned(),
        ),
        (
            vec!["-t", "127.0.0.1:9", "-k", arg(&missing)],
            format!(
                "spipes: cannot read key file {}: No such file or directory \
                 (os error 2)\n",
                missing.display()
            ),
        ),
        (
            vec!["-t", "127.0.0.1:9", "-k", arg(&empty)],
            format!("spipes: key file {} is empty\n", empty.display()),
        ),
        (
            vec!["-t", "127.0.0.1:9", "-k", arg(&key), "--timeout", "0"],
            "spipes: --timeout must be more than 0 seconds, not 0\n".to_owned(),
        ),
    ];
    for (args, want) in cases {
        let output = run_connect(&args, Vec::new());
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr_of(&output), want, "{args:?}");
    }
}

/// What the hand-driven server sends after a good handshake.
#[derive(Clone, Copy)]
enum Misbehave {
    /// One good packet, then half of another, then end of stream.
    Truncate,
    /// One good packet, then 1060 bytes of garbage.
    Garbage,
}

/// Runs one server-side handshake with `key` on a thread, then does
/// `what`; returns the address to dial.
fn misbehaving_server(key: &[u8], what: Misbehave) -> String {
    use tokio::io::AsyncWriteExt;

    let key = Arc::new(spipes::protocol::Key::from_file_contents(key));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("listener");
            let (mut s, _) = listener.accept().await.expect("accept");
            let keys = [key];
            let fs = spipes::protocol::ForwardSecrecy::On;
            let proven =
                spipes::protocol::server_handshake_start(&mut s, &keys, fs)
                    .await
                    .expect("client proves the key");
            let mut session = proven.finish(&mut s).await.expect("finish");
            let mut out = Vec::new();
            session.sealer.seal(b"hello", &mut out);
            match what {
                Misbehave::Truncate => {
                    let mut next = Vec::new();
                    session.sealer.seal(b"world", &mut next);
                    out.extend_from_slice(&next[..next.len() / 2]);
                }
                Misbehave::Garbage => out.extend_from_slice(&[0x5a; 1060]),
            }
            s.write_all(&out).await.expect("write");
            s.shutdown().await.expect("shutdown");
            // Wait for the client to go before dropping the socket.
            let mut sink = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
        });
    });
    addr
}

#[test]
fn a_stream_cut_mid_packet_is_an_error() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let bytes = std::fs::read(&key).expect("read key");
    let target = misbehaving_server(&bytes, Misbehave::Truncate);
    let output = run_connect(&["-t", &target, "-k", arg(&key)], Vec::new());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "spipes: the stream from {target} ended in the middle of a \
             packet: the reply may be cut short\n"
        )
    );
    assert_eq!(output.stdout, b"hello");
}

#[test]
fn a_forged_packet_is_an_error() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let bytes = std::fs::read(&key).expect("read key");
    let target = misbehaving_server(&bytes, Misbehave::Garbage);
    let output = run_connect(&["-t", &target, "-k", arg(&key)], Vec::new());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "spipes: bad packet from {target}: packet authentication \
             failed\n"
        )
    );
}
