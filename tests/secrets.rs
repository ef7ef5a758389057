//! No key material in the daemon's output, even at `--log-level trace`,
//! while a wrong-key client is refused, a good transfer runs and a
//! forward-secrecy refusal happens.
//!
//! Searched for, in every 8-byte window so that a partial leak shows
//! too: the key files' bytes raw, in lower and upper hex and as a Rust
//! `Debug` list of decimals (`[12, 34, ...]`), and the same for
//! `K = SHA256(key file)`.
//!
//! `SPIPES_SHOW_LOG=1` prints the whole trace log, to see what was searched.

mod common;

use std::time::Duration;

use common::{
    Backend, Spipes, Workspace, exchange, expect_closed, hex, pipe_toml, sha256,
};

/// Bytes in each searched window.
const WINDOW: usize = 8;

/// Every form of every `WINDOW`-byte window of `secret` to search for.
fn forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (at, w) in secret.windows(WINDOW).enumerate() {
        let lower = hex(w);
        let decimal = w
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        out.push((format!("raw bytes at {at}"), w.to_vec()));
        out.push((format!("lower hex at {at}"), lower.clone().into_bytes()));
        out.push((
            format!("upper hex at {at}"),
            lower.to_uppercase().into_bytes(),
        ));
        out.push((format!("decimal list at {at}"), decimal.into_bytes()));
    }
    out
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn trace_logs_hold_no_key_material() {
    let ws = Workspace::new();
    let key = ws.write_key("key");
    let wrong = ws.write_key("wrong");
    let echo = Backend::echo();
    let mut ports = Vec::new();
    for _ in 0..5 {
        ports.push(common::Endpoint::free_tcp());
    }
    let [good, dec, bad, fs_off, dec_required] =
        <[common::Endpoint; 5]>::try_from(ports).expect("five endpoints");
    let toml = String::from("[daemon]\ncontrol_socket = \"\"\n\n")
        + &pipe_toml("good", "encrypt", &good, &dec, &key, &[])
        + &pipe_toml("dec", "decrypt", &dec, echo.endpoint(), &key, &[])
        + &pipe_toml("bad", "encrypt", &bad, &dec, &wrong, &[])
        + &pipe_toml(
            "fs_off",
            "encrypt",
            &fs_off,
            &dec_required,
            &key,
            &[("forward_secrecy", "\"off\"")],
        )
        + &pipe_toml(
            "dec_required",
            "decrypt",
            &dec_required,
            echo.endpoint(),
            &key,
            &[("forward_secrecy", "\"required\"")],
        );
    let config = ws.write_config("spipes.toml", &toml);
    let mut spipes = Spipes::start_with(&config, &["--log-level", "trace"]);

    // A wrong-key client: refused, closed.
    let mut conn = bad.connect().expect("connect");
    let closed = expect_closed(&mut conn, Duration::from_secs(10));
    assert!(closed.received.is_empty());

    // A good transfer.
    let t = exchange(good.connect().expect("connect"), 1 << 20)
        .expect("good transfer");
    assert_eq!(t.received.hash, t.sent.hash, "good transfer: hash");

    // A forward-secrecy refusal.
    let mut conn = fs_off.connect().expect("connect");
    let closed = expect_closed(&mut conn, Duration::from_secs(10));
    assert!(closed.received.is_empty());

    assert!(spipes.stop().success());
    let log = std::fs::read(spipes.run_dir().join("spipes.log"))
        .expect("read the log");
    let text = String::from_utf8_lossy(&log);
    if std::env::var_os("SPIPES_SHOW_LOG").is_some() {
        eprintln!("{text}");
    }
    assert!(
        text.contains("TRACE") || text.contains("trace"),
        "not a trace-level log"
    );
    assert!(
        text.contains("handshake failed"),
        "the refusals were logged"
    );
    assert!(
        text.contains("forward secrecy"),
        "the forward-secrecy refusal was logged"
    );

    let mut secrets = Vec::new();
    for path in [&key, &wrong] {
        let bytes = std::fs::read(path).expect("read a key file");
        let k = sha256(&bytes);
        secrets.push((format!("key file {}", path.display()), bytes));
        secrets.push((format!("K of {}", path.display()), k.to_vec()));
    }
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (form, needle) in forms(secret) {
            if contains(&log, &needle) {
                leaks.push(format!("{what}: {form}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "key material in the trace log ({} bytes):\n{}",
        log.len(),
        leaks.join("\n")
    );
    eprintln!(
        "searched {} bytes of trace log for {} secrets: clean",
        log.len(),
        secrets.len()
    );
}
