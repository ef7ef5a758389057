//! The operations features end to end, through the binary: `spipes
//! status`, the metrics endpoint, PROXY protocol headers read by the real
//! nginx (behind a spipes decrypt pipe and behind the real `spiped -d`),
//! Unix socket permissions, the idle timeout, and logs that never show a
//! key. Everything listens on 127.0.0.1 or on Unix sockets in temp dirs.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Backend, Endpoint, IO_TIMEOUT, Nginx, Spiped, Spipes, Workspace, exchange,
    expect_closed, free_port, hex, nginx_conf, output_within, pipe_toml,
    require_binary, sha256, spipes_command, toml_string, wait_until,
};

/// The longest a one-shot command (`status`, `connect`) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long counters may take to settle after a transfer ends: the last
/// count is added just after the last write.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------
// Helpers for this file
// ---------------------------------------------------------------------

/// A path as a string.
fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `[daemon]` with `control_socket` and, if given, `metrics`.
fn daemon_toml(control: &Path, metrics: Option<u16>) -> String {
    let mut t = format!(
        "[daemon]\ncontrol_socket = {}\n",
        toml_string(path_str(control))
    );
    if let Some(port) = metrics {
        t.push_str(&format!("metrics = \"127.0.0.1:{port}\"\n"));
    }
    t
}

/// An encrypt pipe `enc` chained into a decrypt pipe `dec` in front of
/// `backend`, sharing `key`, with `extra` settings on the encrypt pipe;
/// returns the TOML and the sources of the encrypt and decrypt pipes.
fn pair_toml(
    key: &Path,
    backend: &Endpoint,
    extra: &[(&str, &str)],
) -> (String, Endpoint, Endpoint) {
    let enc_source = Endpoint::free_tcp();
    let dec_source = Endpoint::free_tcp();
    let toml = format!(
        "{}{}",
        pipe_toml("enc", "encrypt", &enc_source, &dec_source, key, extra),
        pipe_toml("dec", "decrypt", &dec_source, backend, key, &[])
    );
    (toml, enc_source, dec_source)
}

/// Runs `spipes connect` with a key and no input: a client that tries
/// one handshake.
fn connect_once(target: &Endpoint, key: &Path) -> Output {
    let mut cmd = spipes_command();
    cmd.arg("connect")
        .arg("-t")
        .arg(target.config())
        .arg("-k")
        .arg(key);
    output_within(&mut cmd, RUN_TIMEOUT)
}

/// One row of `spipes status`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    state: String,
    mode: String,
    source: String,
    target: String,
    active: u64,
    total: u64,
    up: u64,
    down: u64,
    failures: u64,
    last_error: String,
}

/// Parses the table `spipes status` prints, by pipe name.
fn parse_status(table: &str) -> HashMap<String, Row> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    assert!(
        header.starts_with("PIPE") && header.contains("BYTES UP"),
        "{table}"
    );
    let mut rows = HashMap::new();
    for line in lines {
        if line.starts_with("reloads:") {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 12 && f[4] == "->", "bad row {line:?}");
        let n = |i: usize| -> u64 {
            f[i].parse()
                .unwrap_or_else(|_| panic!("column {i} of {line:?}"))
        };
        rows.insert(
            f[0].to_owned(),
            Row {
                state: f[1].to_owned(),
                mode: f[2].to_owned(),
                source: f[3].to_owned(),
                target: f[5].to_owned(),
                active: n(6),
                total: n(7),
                up: n(8),
                down: n(9),
                failures: n(10),
                last_error: f[11..].join(" "),
            },
        );
    }
    rows
}

/// `spipes status ARGS`.
fn status(args: &[&str]) -> Output {
    let mut cmd = spipes_command();
    cmd.arg("status").args(args);
    output_within(&mut cmd, RUN_TIMEOUT)
}

/// `GET /metrics` over HTTP/1.0; the body.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a reply head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_owned()
}

/// Whether the exposition `body` has exactly the sample `line`.
fn has_sample(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

/// A GET through `via`; returns the client socket's own address as
/// `ip:port` and the reply body, after checking the status is 200.
fn get_through(via: &Endpoint) -> (String, String) {
    let Endpoint::Tcp(addr) = via else {
        panic!("TCP only");
    };
    let mut s = TcpStream::connect_timeout(addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let me = s.local_addr().expect("local address");
    s.write_all(b"GET / HTTP/1.0\r\nHost: proxy-test\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a reply head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{reply}");
    (format!("{}:{}", me.ip(), me.port()), body.to_owned())
}

/// The bytes of spipes' log file, whatever they are (a leaked raw key
/// need not be UTF-8).
fn log_bytes(spipes: &Spipes) -> Vec<u8> {
    fs::read(spipes.run_dir().join("spipes.log")).expect("read the log")
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A group other than ours, for `source_group`: `(name, gid)`; our own
/// when the system has no other.
fn some_group() -> (String, u32) {
    let ours = fs::metadata("/proc/self").expect("stat /proc/self").gid();
    let groups = fs::read_to_string("/etc/group").unwrap_or_default();
    let parsed: Vec<(String, u32)> = groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_owned();
            let gid = f.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .collect();
    parsed
        .iter()
        .find(|(_, gid)| *gid != ours)
        .or_else(|| parsed.first())
        .cloned()
        .unwrap_or_else(|| ("root".to_owned(), 0))
}

// ---------------------------------------------------------------------
// spipes status
// ---------------------------------------------------------------------

/// After a rejected reload the file has errors, but `spipes status -c`
/// still finds the daemon's socket in it, and says the file is broken.
#[test]
fn status_reaches_the_daemon_when_the_config_has_errors() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::sink();
    let control = ws.join("ctl.sock");
    let (pipes, _, _) = pair_toml(&key, backend.endpoint(), &[]);
    let good = format!("{}{pipes}", daemon_toml(&control, None));
    let config = ws.write_config("spipes.toml", &good);
    let _spipes = Spipes::start(&config);

    fs::write(&config, good.replace("[daemon]", "[daemon]\nbogus = 1"))
        .expect("break the config");
    let output = status(&["-c", path_str(&config)]);
    assert!(output.status.success(), "{output:?}");
    let rows = parse_status(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(rows.len(), 2, "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "warning: the config does not load ({}:2:1: unknown key \
             `bogus` in [daemon]); asking the control socket {}",
            config.display(),
            control.display()
        )
    );
}

#[test]
fn status_lists_pipes_and_counts_bytes() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::sink();
    let control = ws.join("ctl.sock");
    let (pipes, enc_source, dec_source) =
        pair_toml(&key, backend.endpoint(), &[]);
    let config = ws.write_config(
        "spipes.toml",
        &format!("{}{pipes}", daemon_toml(&control, None)),
    );
    let _spipes = Spipes::start(&config);

    // Before any traffic: both running, nothing counted.
    let output = status(&["-c", path_str(&config)]);
    assert!(output.status.success(), "{output:?}");
    let rows = parse_status(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows["enc"].total, 0);

    let n: u64 = 1024 * 1024 + 123;
    let conn = enc_source.connect().expect("connect to enc");
    let transfer = exchange(conn, n).expect("the transfer");
    assert_eq!(transfer.received.head, transfer.sent.hash, "hash reply");
    let reply = transfer.received.len;
    assert_eq!(reply, 32);

    let want_enc = Row {
        state: "running".to_owned(),
        mode: "encrypt".to_owned(),
        source: enc_source.config(),
        target: dec_source.config(),
        active: 0,
        total: 1,
        up: n,
        down: reply,
        failures: 0,
        last_error: "-".to_owned(),
    };
    let want_dec = Row {
        mode: "decrypt".to_owned(),
        source: dec_source.config(),
        target: backend.endpoint().config(),
        ..want_enc.clone()
    };
    let mut last = String::new();
    let settled = wait_until(SETTLE, || {
        let output = status(&["--socket", path_str(&control)]);
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        let rows = parse_status(&last);
        rows.get("enc") == Some(&want_enc) && rows.get("dec") == Some(&want_dec)
    });
    assert!(settled, "status never showed the transfer:\n{last}");
    assert!(last.ends_with("reloads: 0 applied, 0 rejected\n"), "{last}");

    // No daemon at that socket.
    let nope = ws.join("nope.sock");
    let output = status(&["--socket", path_str(&nope)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.starts_with("spipes: spipes is not running (no answer at "),
        "{err}"
    );
    assert!(err.contains(path_str(&nope)), "{err}");
}

// ---------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------

#[test]
fn metrics_count_connections_bytes_reloads_and_bad_keys() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let wrong = ws.write_key("wrong");
    let backend = Backend::sink();
    let port = free_port();
    let (pipes, enc_source, dec_source) =
        pair_toml(&key, backend.endpoint(), &[]);
    let config = ws.write_config(
        "spipes.toml",
        &format!("{}{pipes}", daemon_toml(&ws.join("ctl.sock"), Some(port))),
    );
    let _spipes = Spipes::start(&config);

    let n: u64 = 500_000;
    let transfer = exchange(enc_source.connect().expect("connect"), n)
        .expect("the transfer");
    assert_eq!(transfer.received.head, transfer.sent.hash);

    // A client with the wrong key, straight at the decrypt pipe.
    let output = connect_once(&dec_source, &wrong);
    assert_eq!(output.status.code(), Some(1), "{output:?}");

    let want = [
        "spipes_connections_total{pipe=\"enc\"} 1".to_owned(),
        "spipes_connections_total{pipe=\"dec\"} 2".to_owned(),
        format!("spipes_bytes_total{{pipe=\"enc\",direction=\"up\"}} {n}"),
        "spipes_bytes_total{pipe=\"enc\",direction=\"down\"} 32".to_owned(),
        format!("spipes_bytes_total{{pipe=\"dec\",direction=\"up\"}} {n}"),
        "spipes_bytes_total{pipe=\"dec\",direction=\"down\"} 32".to_owned(),
        "spipes_reloads_total{result=\"ok\"} 0".to_owned(),
        "spipes_reloads_total{result=\"rejected\"} 0".to_owned(),
        "spipes_pipes{state=\"running\"} 2".to_owned(),
        "spipes_handshake_failures_total{pipe=\"dec\",reason=\"bad_mac\"} 1"
            .to_owned(),
        "spipes_handshake_failures_total{pipe=\"enc\",reason=\"bad_mac\"} 0"
            .to_owned(),
        "spipes_active_connections{pipe=\"enc\"} 0".to_owned(),
    ];
    let mut body = String::new();
    let settled = wait_until(SETTLE, || {
        body = scrape(port);
        want.iter().all(|w| has_sample(&body, w))
    });
    let missing: Vec<&String> =
        want.iter().filter(|w| !has_sample(&body, w)).collect();
    assert!(settled, "missing samples {missing:#?} in:\n{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
}

// ---------------------------------------------------------------------
// PROXY protocol, read by the real nginx
// ---------------------------------------------------------------------

#[test]
fn proxy_protocol_reaches_nginx_through_spipes_and_spiped() {
    let Some(nginx_bin) = require_binary("nginx") else {
        return;
    };
    if require_binary("spiped").is_none() {
        return;
    }
    let ws = Workspace::new();
    let key = ws.write_key("k");

    let web = Endpoint::free_tcp();
    let server = format!(
        "server {{
    listen {web} proxy_protocol;
    location / {{
        return 200 \"$proxy_protocol_addr:$proxy_protocol_port\";
    }}
}}"
    );
    // As root (`user root;`), so nginx may read what it is given.
    let _nginx = Nginx::start(&nginx_bin, web.clone(), |dir| {
        nginx_conf(dir, "user root;\n", "text/plain", &server)
    });

    // The decrypt end: a spipes pipe, or the real spiped.
    let dec_spipes = Endpoint::free_tcp();
    let dec_spiped = Endpoint::free_tcp();
    let _spiped = Spiped::decrypt(&dec_spiped, &web, &key, &[]);

    let mut toml = format!(
        "[daemon]\ncontrol_socket = \"\"\n{}",
        pipe_toml("dec", "decrypt", &dec_spipes, &web, &key, &[])
    );
    let mut fronts = Vec::new();
    for (decrypt_end, dec) in [("spipes", &dec_spipes), ("spiped", &dec_spiped)]
    {
        for version in ["v1", "v2"] {
            let source = Endpoint::free_tcp();
            let name = format!("enc-{version}-{decrypt_end}");
            let value = toml_string(version);
            let extra = [("proxy_protocol", value.as_str())];
            toml.push_str(&pipe_toml(
                &name, "encrypt", &source, dec, &key, &extra,
            ));
            fronts.push((name, source));
        }
    }
    let config = ws.write_config("spipes.toml", &toml);
    let _spipes = Spipes::start(&config);

    for (name, source) in &fronts {
        let (me, body) = get_through(source);
        assert!(me.starts_with("127.0.0.1:"), "{me}");
        assert_eq!(body, me, "{name}: nginx saw another client address");
    }
}

// ---------------------------------------------------------------------
// Unix socket permissions
// ---------------------------------------------------------------------

#[test]
fn unix_source_gets_its_mode_and_group() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let (group_name, gid) = some_group();
    let by_name = ws.unix("by-name.sock");
    let by_gid = ws.unix("by-gid.sock");
    let nowhere = Endpoint::free_tcp();
    let name_value = toml_string(&group_name);
    let gid_value = toml_string(&gid.to_string());
    let config = ws.write_config(
        "spipes.toml",
        &format!(
            "[daemon]\ncontrol_socket = \"\"\n{}{}",
            pipe_toml(
                "by-name",
                "encrypt",
                &by_name,
                &nowhere,
                &key,
                &[("source_mode", "\"0660\""), ("source_group", &name_value)],
            ),
            pipe_toml(
                "by-gid",
                "encrypt",
                &by_gid,
                &nowhere,
                &key,
                &[("source_mode", "\"0606\""), ("source_group", &gid_value)],
            ),
        ),
    );
    let _spipes = Spipes::start(&config);

    for (endpoint, mode) in [(&by_name, 0o660), (&by_gid, 0o606)] {
        let Endpoint::Unix(path) = endpoint else {
            unreachable!("Unix endpoints")
        };
        let meta = fs::symlink_metadata(path).expect("the socket exists");
        assert!(common::is_socket(path), "{} is a socket", path.display());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            mode,
            "{}: mode {:o}",
            path.display(),
            meta.permissions().mode()
        );
        assert_eq!(meta.gid(), gid, "{}: group", path.display());
    }
    // No staging file was left beside them.
    let left: Vec<PathBuf> = fs::read_dir(ws.path())
        .expect("list the workspace")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".new"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------
// Idle timeout
// ---------------------------------------------------------------------

#[test]
fn idle_timeout_closes_silent_connections_only() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let backend = Backend::echo();
    let (pipes, enc_source, _) =
        pair_toml(&key, backend.endpoint(), &[("idle_timeout", "1")]);
    let config = ws.write_config(
        "spipes.toml",
        &format!("[daemon]\ncontrol_socket = \"\"\n{pipes}"),
    );
    let _spipes = Spipes::start(&config);

    // The active connection: a byte every 200 ms for 3 s, each echoed.
    let active_source = enc_source.clone();
    let active = thread::spawn(move || {
        let mut conn = active_source.connect().expect("connect");
        let mut byte = [0u8; 1];
        for i in 0..15u8 {
            conn.write_all(&[i]).expect("the active connection writes");
            conn.read_exact(&mut byte).expect("the echo comes back");
            assert_eq!(byte[0], i);
            thread::sleep(Duration::from_millis(200));
        }
        conn.write_all(b"!").expect("still open after 3 s");
        conn.read_exact(&mut byte).expect("still echoing after 3 s");
        conn.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("a clean end");
        assert!(rest.is_empty());
    });

    // The silent one: connected, never sends.
    let started = Instant::now();
    let mut silent = enc_source.connect().expect("connect");
    let closed = expect_closed(&mut silent, Duration::from_secs(10));
    let took = started.elapsed();
    assert!(closed.received.is_empty());
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    active.join().expect("the active connection was not closed");
}

#[test]
fn half_close_timeout_cuts_an_abandoned_half_only() {
    // A backend that reads to the client's end of stream, then for its
    // connection number 0 goes silent and holds the connection, and for
    // number 1 trickles a byte every 200 ms for 2 s and then closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = Endpoint::Tcp(listener.local_addr().expect("address"));
    thread::spawn(move || {
        for n in 0..2 {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = conn.read_to_end(&mut sink);
                if n == 0 {
                    thread::sleep(Duration::from_secs(10));
                    return;
                }
                for _ in 0..10 {
                    if conn.write_all(b".").is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });

    let ws = Workspace::new();
    let key = ws.write_key("k");
    let (pipes, enc_source, _) =
        pair_toml(&key, &backend, &[("half_close_timeout", "1")]);
    let config = ws.write_config(
        "spipes.toml",
        &format!("[daemon]\ncontrol_socket = \"\"\n{pipes}"),
    );
    let _spipes = Spipes::start(&config);

    // Abandoned: after the client's half-close nothing moves, so the
    // connection is cut about 1 s later, long before the backend's 10 s.
    let mut abandoned = enc_source.connect().expect("connect");
    abandoned.write_all(b"request").expect("write");
    abandoned.shutdown(Shutdown::Write).expect("half-close");
    let started = Instant::now();
    let closed = expect_closed(&mut abandoned, Duration::from_secs(8));
    let took = started.elapsed();
    assert!(closed.received.is_empty());
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // Trickling: each byte extends the limit, so all ten arrive and the
    // end is the backend's clean close.
    let mut trickle = enc_source.connect().expect("connect");
    trickle.write_all(b"request").expect("write");
    trickle.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = Vec::new();
    trickle.read_to_end(&mut reply).expect("a clean end");
    assert_eq!(reply, b"..........");
}

// ---------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------

#[test]
fn trace_logs_never_show_a_key() {
    let ws = Workspace::new();
    let key = ws.write_key("k");
    let wrong = ws.write_key("wrong");
    let backend = Backend::sink();
    let (pipes, enc_source, dec_source) =
        pair_toml(&key, backend.endpoint(), &[]);
    let config = ws.write_config(
        "spipes.toml",
        &format!("[daemon]\ncontrol_socket = \"\"\n{pipes}"),
    );
    let mut spipes = Spipes::start_with(&config, &["--log-level", "trace"]);

    let transfer = exchange(enc_source.connect().expect("connect"), 200_000)
        .expect("the transfer");
    assert_eq!(transfer.received.head, transfer.sent.hash);
    let output = connect_once(&dec_source, &wrong);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let warned = wait_until(SETTLE, || {
        String::from_utf8_lossy(&log_bytes(&spipes))
            .contains("handshake failed")
    });
    assert!(warned, "no handshake warning; log:\n{}", spipes.log());
    assert!(spipes.stop().success());

    let log = log_bytes(&spipes);
    let text = String::from_utf8_lossy(&log);
    let warn_line = text.lines().find(|l| {
        l.contains("WARN")
            && l.contains("handshake failed")
            && l.contains("pipe=dec")
    });
    assert!(warn_line.is_some(), "no warn line with pipe=dec:\n{text}");
    // The filter took: the connections' own debug events are there.
    assert!(
        text.lines()
            .any(|l| l.contains("DEBUG") && l.contains("accepted")),
        "no debug lines at --log-level trace:\n{text}"
    );

    // Neither key file nor K = SHA256(file), raw or in hex of either
    // case, whole or any 8 bytes of it.
    for file in [&key, &wrong] {
        let bytes = fs::read(file).expect("read the key");
        let k = sha256(&bytes);
        for secret in [bytes.as_slice(), k.as_slice()] {
            for part in secret.windows(8).chain([secret]) {
                assert!(!contains(&log, part), "raw key bytes in the log");
                let lower = hex(part);
                let upper = lower.to_uppercase();
                assert!(
                    !contains(&log, lower.as_bytes()),
                    "hex key in the log"
                );
                assert!(
                    !contains(&log, upper.as_bytes()),
                    "HEX key in the log"
                );
            }
        }
    }
}
