//! `spipes::config::load` as a user meets it: whole files in, the typed
//! config or the exact messages out.
//!
//! Messages name the temp folder; the tests show it as `$DIR`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use spipes::address::Address;
use spipes::config::{
    Config, DaemonConfig, DialTiming, KeyFile, Mode, PipeConfig, ProxyProtocol,
    Warning, load,
};
use spipes::protocol::{ForwardSecrecy, Key};

/// A temp folder holding a config file and its key files.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// An empty folder with `keys/` in it.
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("keys")).expect("keys dir");
        Setup { dir }
    }

    /// The folder.
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a key file at `name` (relative to the folder) with `mode`.
    fn key(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, contents).expect("write key");
        let permissions = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(&path, permissions).expect("chmod key");
        path
    }

    /// A good key file `keys/NAME.key`: 32 bytes, mode 600.
    fn good_key(&self, name: &str) -> PathBuf {
        let contents = format!("{name:-<32}");
        self.key(&format!("keys/{name}.key"), contents.as_bytes(), 0o600)
    }

    /// Writes `text` as `spipes.toml` and returns its path.
    fn config(&self, text: &str) -> PathBuf {
        let path = self.path().join("spipes.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Shows the temp folder as `$DIR`.
    fn tidy(&self, message: &str) -> String {
        let dir = self.path().display().to_string();
        message.replace(&dir, "$DIR")
    }

    /// Loads `text`, which must fail, and returns the messages.
    fn errors(&self, text: &str) -> Vec<String> {
        match load(&self.config(text)) {
            Ok((config, _)) => panic!("loaded: {config:#?}"),
            Err(e) => e.0.iter().map(|m| self.tidy(m)).collect(),
        }
    }

    /// Loads `text`, which must succeed.
    fn load(&self, text: &str) -> (Config, Vec<String>) {
        match load(&self.config(text)) {
            Ok((config, warnings)) => {
                let warnings =
                    warnings.iter().map(|Warning(w)| self.tidy(w)).collect();
                (config, warnings)
            }
            Err(e) => panic!("errors:\n{}", self.tidy(&e.to_string())),
        }
    }
}

/// A valid pipe table named `name`, with `extra` lines added; its key file
/// is `keys/good.key` (made by [`Setup::good_key`]).
fn pipe(name: &str, source: &str, extra: &str) -> String {
    format!(
        "[pipes.{name}]\nmode = \"encrypt\"\nsource = \"{source}\"\n\
         target = \"example.org:80\"\nkey = \"keys/good.key\"\n{extra}"
    )
}

/// Asserts that `text` fails with exactly `expected` (`$DIR` for the
/// folder); the key file `keys/good.key` exists.
#[track_caller]
fn assert_errors(text: &str, expected: &[&str]) {
    let setup = Setup::new();
    setup.good_key("good");
    assert_eq!(setup.errors(text), expected, "for:\n{text}");
}

/// A TCP address.
fn tcp(host: &str, port: u16) -> Address {
    Address::Tcp {
        host: host.to_owned(),
        port,
    }
}

/// The key file at `path`, with the key derived from its contents.
fn key_file(path: &Path) -> KeyFile {
    let contents = std::fs::read(path).expect("read key");
    KeyFile {
        path: path.to_path_buf(),
        key: Arc::new(Key::from_file_contents(&contents)),
    }
}

#[test]
fn a_missing_config_file_is_reported() {
    let setup = Setup::new();
    let path = setup.path().join("none.toml");
    let e = load(&path).expect_err("no file");
    assert_eq!(
        setup.tidy(&e.to_string()),
        "cannot read config file $DIR/none.toml: No such file or directory \
         (os error 2)"
    );
}

#[test]
fn syntax_errors_give_position_and_tomls_message() {
    assert_errors(
        "[pipes.web]\nmode = \"encrypt\nsource = \"127.0.0.1:1\"\n",
        &[
            "$DIR/spipes.toml:2:16: syntax error: invalid basic string, \
           expected `\"`",
        ],
    );
    assert_errors(
        "[defaults]\ntimeout = 5\ntimeout = 6\n",
        &["$DIR/spipes.toml:3:1: syntax error: duplicate key `timeout`"],
    );
    assert_errors(
        "[pipes.web]\nmode = \"encrypt\"\n[pipes.web]\n",
        &["$DIR/spipes.toml:3:8: syntax error: duplicate key `web`"],
    );
    assert_errors(
        "[pipes.web\nmode = \"encrypt\"\n",
        &["$DIR/spipes.toml:1:11: syntax error: unclosed table, expected `]`"],
    );
}

#[test]
fn unknown_keys_in_a_pipe() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "mdoe = \"encrypt\"\n"),
        &["$DIR/spipes.toml:6:1: pipe web: unknown key `mdoe`"],
    );
    // A table inside a pipe is an unknown key too.
    assert_errors(
        &pipe("web", "127.0.0.1:1", "[pipes.web.extra]\nx = 1\n"),
        &["$DIR/spipes.toml:6:12: pipe web: unknown key `extra`"],
    );
}

#[test]
fn unknown_keys_in_defaults_and_daemon() {
    assert_errors(
        "[defaults]\ntimeout = 5\ntimout = 5\n",
        &["$DIR/spipes.toml:3:1: unknown key `timout` in [defaults]"],
    );
    assert_errors(
        "[defaults]\nbind = \"192.0.2.1\"\n",
        &[
            "$DIR/spipes.toml:2:1: key `bind` cannot go in [defaults]: set \
           it in each [pipes.NAME]",
        ],
    );
    assert_errors(
        "[daemon]\ndrain = 30\n",
        &["$DIR/spipes.toml:2:1: unknown key `drain` in [daemon]"],
    );
    assert_errors(
        "[daemon]\nkeepalive = true\n",
        &[
            "$DIR/spipes.toml:2:1: unknown key `keepalive` in [daemon]; it \
           goes in [defaults] or a pipe",
        ],
    );
}

#[test]
fn unknown_keys_and_tables_at_top_level() {
    assert_errors(
        "timeout = 5\n[pipe.web]\nmode = \"encrypt\"\n",
        &[
            "$DIR/spipes.toml:1:1: unknown key `timeout` at top level; \
             expected [daemon], [defaults] or [pipes.NAME]",
            "$DIR/spipes.toml:2:2: unknown table [pipe]; expected [daemon], \
             [defaults] or [pipes.NAME]",
        ],
    );
}

#[test]
fn tables_of_the_wrong_type() {
    assert_errors(
        "daemon = 1\npipes = \"web\"\n",
        &[
            "$DIR/spipes.toml:1:10: key `daemon`: expected a table, found \
             an integer",
            "$DIR/spipes.toml:2:9: key `pipes`: expected a table of pipes, \
             as [pipes.NAME], found a string",
        ],
    );
    assert_errors(
        "[[pipes]]\nmode = \"encrypt\"\n",
        &[
            "$DIR/spipes.toml:1:1: key `pipes`: expected a table of pipes, as \
           [pipes.NAME], found an array",
        ],
    );
    assert_errors(
        "[pipes]\nweb = \"127.0.0.1:1\"\n",
        &[
            "$DIR/spipes.toml:2:7: pipe web: expected a table of settings, as \
           [pipes.NAME], found a string",
        ],
    );
}

#[test]
fn values_of_the_wrong_type() {
    let cases = [
        (
            "timeout = \"5\"",
            "timeout",
            11,
            "a number of seconds, found a string",
        ),
        (
            "timeout = [5]",
            "timeout",
            11,
            "a number of seconds, found an array",
        ),
        (
            "keepalive = 1",
            "keepalive",
            13,
            "true or false, found an integer",
        ),
        (
            "max_connections = 1.5",
            "max_connections",
            19,
            "a whole number of connections (0 for no limit), found a float",
        ),
        (
            "resolve_interval = 1979-05-27",
            "resolve_interval",
            20,
            "a number of seconds, found a date-time",
        ),
        (
            "forward_secrecy = false",
            "forward_secrecy",
            19,
            "\"on\", \"off\" or \"required\", found a boolean",
        ),
        (
            "bind = 3",
            "bind",
            8,
            "an IP address, such as \"192.0.2.10\", found an integer",
        ),
        (
            "dial = {}",
            "dial",
            8,
            "\"early\" or \"after-proof\", found a table",
        ),
    ];
    for (line, key, column, message) in cases {
        assert_errors(
            &pipe("web", "127.0.0.1:1", &format!("{line}\n")),
            &[&format!(
                "$DIR/spipes.toml:6:{column}: pipe web: key `{key}`: \
                 expected {message}"
            )],
        );
    }
    assert_errors(
        "[pipes.web]\nmode = 1\nsource = 2\ntarget = true\nkey = 4\n",
        &[
            "$DIR/spipes.toml:2:8: pipe web: key `mode`: expected \
             \"encrypt\" or \"decrypt\", found an integer",
            "$DIR/spipes.toml:3:10: pipe web: key `source`: expected an \
             address (host:port or /socket/path), found an integer",
            "$DIR/spipes.toml:4:10: pipe web: key `target`: expected an \
             address (host:port or /socket/path), found a boolean",
            "$DIR/spipes.toml:5:7: pipe web: key `key`: expected a key file \
             path, or (decrypt pipes) an array of them, found an integer",
        ],
    );
    assert_errors(
        "[defaults]\ntimeout = \"5s\"\n",
        &[
            "$DIR/spipes.toml:2:11: key `timeout` in [defaults]: expected a \
           number of seconds, found a string",
        ],
    );
}

#[test]
fn each_required_key_is_reported_missing_at_the_header() {
    for key in ["mode", "source", "target", "key"] {
        let full = pipe("db", "127.0.0.1:1", "");
        let text: String = full
            .lines()
            .filter(|line| !line.starts_with(&format!("{key} =")))
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!("[daemon]\ndrain_timeout = 1\n\n{text}");
        assert_errors(
            &text,
            &[&format!(
                "$DIR/spipes.toml:4:1: pipe db: missing key `{key}`"
            )],
        );
    }
}

#[test]
fn an_empty_pipe_misses_every_required_key() {
    assert_errors(
        "[pipes.db]\n# nothing yet\n",
        &[
            "$DIR/spipes.toml:1:1: pipe db: missing key `mode`",
            "$DIR/spipes.toml:1:1: pipe db: missing key `source`",
            "$DIR/spipes.toml:1:1: pipe db: missing key `target`",
            "$DIR/spipes.toml:1:1: pipe db: missing key `key`",
        ],
    );
    // An inline table: the missing key points at its `{`.
    assert_errors(
        "[pipes]\ndb = { mode = \"decrypt\", source = \"/run/a\", \
         target = \"/run/b\" }\n",
        &["$DIR/spipes.toml:2:6: pipe db: missing key `key`"],
    );
}

#[test]
fn bad_addresses() {
    let cases = [
        (
            "source",
            "example.org",
            "missing port in `example.org`: write host:port",
        ),
        (
            "target",
            "::1:80",
            "`::1:80` has more than one `:`: put an IPv6 address in \
             brackets, as [::1]:80",
        ),
        (
            "source",
            "127.0.0.1:0",
            "port 0 in `127.0.0.1:0` is out of range: use 1 to 65535",
        ),
        (
            "target",
            "example.org:99999",
            "port 99999 in `example.org:99999` is out of range: use 1 to \
             65535",
        ),
        (
            "target",
            "example.org:http",
            "invalid port `http` in `example.org:http`: expected a number \
             from 1 to 65535",
        ),
        (
            "source",
            "[localhost]:80",
            "`localhost` in `[localhost]:80` is not an IP address: only IPv4 \
             or IPv6 addresses go in brackets; write a host name as \
             host:port",
        ),
        (
            "target",
            "exa_mple.org:80",
            "invalid host name `exa_mple.org` in `exa_mple.org:80`: `_` is \
             not allowed; use letters, digits, `-` and `.`",
        ),
        (
            "target",
            "run/app.sock",
            "`run/app.sock` is not an address: write host:port, or an \
             absolute path (starting with /) for a Unix socket",
        ),
        (
            "source",
            "",
            "the address is empty: write host:port, or an absolute path for \
             a Unix socket",
        ),
    ];
    for (key, address, message) in cases {
        let text = format!(
            "[pipes.web]\nmode = \"decrypt\"\n{key} = \"{address}\"\n\
             {other} = \"127.0.0.1:1\"\nkey = \"keys/good.key\"\n",
            other = if key == "source" { "target" } else { "source" },
        );
        let column = key.len() + 4;
        assert_errors(
            &text,
            &[&format!(
                "$DIR/spipes.toml:3:{column}: pipe web: key `{key}`: \
                 {message}"
            )],
        );
    }
}

#[test]
fn bad_pipe_names() {
    for (header, name) in [
        ("[pipes.\"we b\"]", "we b"),
        ("[pipes.\"\"]", "\"\""),
        ("[pipes.\"a\\nb\"]", "a\\nb"),
        ("[pipes.\"wëb\"]", "wëb"),
        ("[pipes.\"a/b\"]", "a/b"),
    ] {
        let text = pipe("x", "127.0.0.1:1", "").replace("[pipes.x]", header);
        assert_errors(
            &text,
            &[&format!(
                "$DIR/spipes.toml:1:8: invalid pipe name `{name}`: use only \
                 letters, digits, `-`, `_` and `.`"
            )],
        );
    }
    let setup = Setup::new();
    setup.good_key("good");
    // A `.` splits a bare TOML key: a name with one needs quotes.
    let (config, _) =
        setup.load(&pipe("\"Web_2.example-a\"", "127.0.0.1:1", ""));
    assert_eq!(config.pipes[0].name, "Web_2.example-a");
}

#[test]
fn bad_choices() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "").replace("\"encrypt\"", "\"encrpyt\""),
        &[
            "$DIR/spipes.toml:2:8: pipe web: key `mode`: expected \"encrypt\" \
           or \"decrypt\", found \"encrpyt\"",
        ],
    );
    assert_errors(
        "[defaults]\nforward_secrecy = \"yes\"\n",
        &[
            "$DIR/spipes.toml:2:19: key `forward_secrecy` in [defaults]: \
           expected \"on\", \"off\" or \"required\", found \"yes\"",
        ],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "dial = \"late\"\n")
            .replace("\"encrypt\"", "\"decrypt\""),
        &[
            "$DIR/spipes.toml:6:8: pipe web: key `dial`: expected \"early\" or \
           \"after-proof\", found \"late\"",
        ],
    );
}

#[test]
fn dial_is_only_for_decrypt_pipes() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "dial = \"early\"\n"),
        &[
            "$DIR/spipes.toml:6:8: pipe web: key `dial`: only decrypt pipes \
           have this setting; an encrypt pipe dials as soon as it accepts a \
           connection",
        ],
    );
}

#[test]
fn bad_timeouts() {
    for value in ["0", "0.0", "-1", "-0.5"] {
        assert_errors(
            &pipe("web", "127.0.0.1:1", &format!("timeout = {value}\n")),
            &[&format!(
                "$DIR/spipes.toml:6:11: pipe web: key `timeout`: expected a \
                 number of seconds more than 0, found {value}"
            )],
        );
    }
    assert_errors(
        "[defaults]\nresolve_interval = -60\nmax_connections = -1\n",
        &[
            "$DIR/spipes.toml:2:20: key `resolve_interval` in [defaults]: \
             expected a number of seconds (0 or more), found -60",
            "$DIR/spipes.toml:3:19: key `max_connections` in [defaults]: \
             expected a whole number of connections (0 for no limit), found \
             -1",
        ],
    );
    assert_errors(
        "[daemon]\ndrain_timeout = -30\n",
        &[
            "$DIR/spipes.toml:2:17: key `drain_timeout` in [daemon]: expected \
           a number of seconds (0 or more), found -30",
        ],
    );
}

#[test]
fn bad_bind() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "bind = \"example.org\"\n"),
        &[
            "$DIR/spipes.toml:6:8: pipe web: key `bind`: expected an IP \
           address, such as \"192.0.2.10\", found \"example.org\"",
        ],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "bind = \"192.0.2.1\"\n")
            .replace("example.org:80", "/run/app.sock"),
        &["$DIR/spipes.toml:6:8: pipe web: key `bind`: the target \
           /run/app.sock is a Unix socket; `bind` applies only to TCP \
           targets"],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "bind = \"192.0.2.1\"\n")
            .replace("example.org:80", "[2001:db8::1]:80"),
        &[
            "$DIR/spipes.toml:6:8: pipe web: key `bind`: 192.0.2.1 and the \
           target [2001:db8::1]:80 are not the same IP version",
        ],
    );
}

#[test]
fn duplicate_sources() {
    let text = [
        pipe("a", "127.0.0.1:9080", ""),
        pipe("b", "[127.0.0.1]:9080", ""),
        pipe("c", "/run/c.sock", ""),
        pipe("d", "/run/c.sock", ""),
        pipe("e", "Host.Example.org:80", ""),
        pipe("f", "host.example.org:80", ""),
        pipe("g", "[::1]:80", ""),
        pipe("h", "[0::1]:80", ""),
        // Same host, other port: fine.
        pipe("i", "127.0.0.1:9081", ""),
    ]
    .join("\n");
    assert_errors(
        &text,
        &[
            "$DIR/spipes.toml:9:10: pipe b: key `source`: 127.0.0.1:9080 is \
             already the source of pipe a",
            "$DIR/spipes.toml:21:10: pipe d: key `source`: /run/c.sock is \
             already the source of pipe c",
            "$DIR/spipes.toml:33:10: pipe f: key `source`: \
             host.example.org:80 is already the source of pipe e",
            "$DIR/spipes.toml:45:10: pipe h: key `source`: [::1]:80 is \
             already the source of pipe g",
        ],
    );
}

#[test]
fn key_files_that_cannot_be_read() {
    let setup = Setup::new();
    std::fs::create_dir(setup.path().join("keys/folder.key")).expect("dir");
    std::os::unix::fs::symlink(
        setup.path().join("keys/gone"),
        setup.path().join("keys/dangling.key"),
    )
    .expect("symlink");
    setup.key("keys/empty.key", b"", 0o600);
    let text = "[pipes.web]\nmode = \"decrypt\"\nsource = \"/run/a\"\n\
                target = \"/run/b\"\nkey = [\"keys/missing.key\", \
                \"keys/folder.key\", \"keys/dangling.key\", \
                \"keys/empty.key\", \"\", 7]\n";
    assert_eq!(
        setup.errors(text),
        [
            "$DIR/spipes.toml:5:8: pipe web: key `key`: cannot read key file \
             $DIR/keys/missing.key: No such file or directory (os error 2)",
            "$DIR/spipes.toml:5:28: pipe web: key `key`: cannot read key \
             file $DIR/keys/folder.key: it is a folder",
            "$DIR/spipes.toml:5:47: pipe web: key `key`: cannot read key \
             file $DIR/keys/dangling.key: No such file or directory (os \
             error 2)",
            "$DIR/spipes.toml:5:68: pipe web: key `key`: key file \
             $DIR/keys/empty.key is empty",
            "$DIR/spipes.toml:5:86: pipe web: key `key`: the key file path \
             is empty",
            "$DIR/spipes.toml:5:90: pipe web: key `key`: expected a key file \
             path, found an integer",
        ]
    );
}

#[test]
fn key_files_must_be_regular_files() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "").replace("keys/good.key", "/dev/null"),
        &[
            "$DIR/spipes.toml:5:7: pipe web: key `key`: cannot read key file \
           /dev/null: not a regular file",
        ],
    );
}

#[test]
fn the_example_message_for_a_missing_key_file() {
    let setup = Setup::new();
    let text = "[pipes.web]\nmode = \"encrypt\"\nsource = \"127.0.0.1:1\"\n\
                target = \"example.org:1\"\nkey = \"keys/web.key\"\n";
    assert_eq!(
        setup.errors(text),
        [
            "$DIR/spipes.toml:5:7: pipe web: key `key`: cannot read key file \
          $DIR/keys/web.key: No such file or directory (os error 2)"
        ]
    );
}

#[test]
fn key_arrays() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "").replace(
            "\"keys/good.key\"",
            "[\"keys/good.key\", \"keys/good.key\"]",
        ),
        &[
            "$DIR/spipes.toml:5:7: pipe web: key `key`: an encrypt pipe uses \
           exactly one key",
        ],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "")
            .replace("\"encrypt\"", "\"decrypt\"")
            .replace("\"keys/good.key\"", "[]"),
        &[
            "$DIR/spipes.toml:5:7: pipe web: key `key`: expected at least one \
           key file, found an empty array",
        ],
    );
    // One key in an array is fine for an encrypt pipe.
    let setup = Setup::new();
    let good = setup.good_key("good");
    let text = pipe("web", "127.0.0.1:1", "")
        .replace("\"keys/good.key\"", "[\"keys/good.key\"]");
    let (config, warnings) = setup.load(&text);
    assert_eq!(config.pipes[0].keys, [key_file(&good)]);
    assert!(warnings.is_empty());
}

#[test]
fn every_error_in_a_file_is_reported_in_file_order() {
    let text = "\
[daemon]
drain_timeout = \"long\"

[defaults]
timeout = 0
colour = \"blue\"

[pipes.web]
mdoe = \"encrypt\"
source = \"127.0.0.1:9080\"
target = \"example.org\"
key = \"keys/good.key\"

[pipes.db]
mode = \"decrypt\"
source = \"127.0.0.1:9080\"
target = \"/run/postgresql/.s.PGSQL.5432\"
key = [\"keys/good.key\", \"keys/old.key\"]
timeout = -1
";
    assert_errors(
        text,
        &[
            "$DIR/spipes.toml:2:17: key `drain_timeout` in [daemon]: \
             expected a number of seconds, found a string",
            "$DIR/spipes.toml:5:11: key `timeout` in [defaults]: expected a \
             number of seconds more than 0, found 0",
            "$DIR/spipes.toml:6:1: unknown key `colour` in [defaults]",
            "$DIR/spipes.toml:8:1: pipe web: missing key `mode`",
            "$DIR/spipes.toml:9:1: pipe web: unknown key `mdoe`",
            "$DIR/spipes.toml:11:10: pipe web: key `target`: missing port in \
             `example.org`: write host:port",
            "$DIR/spipes.toml:16:10: pipe db: key `source`: 127.0.0.1:9080 \
             is already the source of pipe web",
            "$DIR/spipes.toml:18:25: pipe db: key `key`: cannot read key \
             file $DIR/keys/old.key: No such file or directory (os error 2)",
            "$DIR/spipes.toml:19:11: pipe db: key `timeout`: expected a \
             number of seconds more than 0, found -1",
        ],
    );
}

#[test]
fn weak_key_files_warn_but_load() {
    let setup = Setup::new();
    setup.key("keys/short.key", b"hunter2", 0o600);
    setup.key("keys/open.key", &[b'k'; 64], 0o644);
    setup.key("keys/both.key", b"hunter3", 0o640);
    let text = format!(
        "{}\n{}",
        pipe("a", "127.0.0.1:1", "").replace("good", "short"),
        pipe("b", "127.0.0.1:2", "")
            .replace("encrypt", "decrypt")
            .replace(
                "\"keys/good.key\"",
                "[\"keys/open.key\", \"keys/both.key\"]"
            ),
    );
    let (config, warnings) = setup.load(&text);
    assert_eq!(config.pipes.len(), 2);
    assert_eq!(
        warnings,
        [
            "$DIR/spipes.toml:5:7: pipe a: key `key`: key file \
             $DIR/keys/short.key is only 7 bytes; use at least 32 random \
             bytes (spipes keygen)",
            "$DIR/spipes.toml:11:8: pipe b: key `key`: key file \
             $DIR/keys/open.key is readable by group or others (mode 0644); \
             chmod 600 it",
            "$DIR/spipes.toml:11:25: pipe b: key `key`: key file \
             $DIR/keys/both.key is only 7 bytes; use at least 32 random \
             bytes (spipes keygen)",
            "$DIR/spipes.toml:11:25: pipe b: key `key`: key file \
             $DIR/keys/both.key is readable by group or others (mode 0640); \
             chmod 600 it",
        ]
    );
    for warning in &warnings {
        assert!(!warning.contains("hunter"), "key bytes in {warning}");
    }
}

#[test]
fn a_good_file_gives_exactly_the_typed_values() {
    let setup = Setup::new();
    let web = setup.good_key("web");
    let new = setup.good_key("new");
    let old = setup.good_key("old");
    std::fs::create_dir(setup.path().join("abs")).expect("dir");
    let db = setup.key("abs/db.key", &[9u8; 48], 0o400);
    let text = format!(
        r#"# spipes test config
[daemon]
drain_timeout = 0
metrics = "127.0.0.1:9187"
control_socket = "/run/spipes/ctl.sock"

[defaults]
max_connections = 10
timeout = 0.5
keepalive = false
forward_secrecy = "off"
resolve_interval = 120
idle_timeout = 300
half_close_timeout = 10
max_handshakes = 16

[pipes.web]
mode = "encrypt"
source = "127.0.0.1:9080"
target = "rpi.example.org:9080"
key = "keys/web.key"
bind = "192.0.2.10"
proxy_protocol = "v2"

[pipes.ssh-in]
mode = "decrypt"
source = "[::]:8022"
target = "[::1]:22"
key = ["keys/new.key", "keys/old.key"]
dial = "early"
max_connections = 0
timeout = 2
keepalive = true
forward_secrecy = "required"
resolve_interval = 0
bind = "2001:db8::10"
idle_timeout = 0
half_close_timeout = 2.5
max_handshakes = 0

[pipes.db]
mode = "decrypt"
source = "/run/spipes/db.sock"
target = "/run/postgresql/.s.PGSQL.5432"
key = "{db}"
dial = "after-proof"
timeout = 1.25
source_mode = "0660"
source_group = "root"
"#,
        db = db.display()
    );
    let (config, warnings) = setup.load(&text);
    assert!(warnings.is_empty(), "{warnings:?}");

    let inherited = PipeConfig {
        name: "web".to_owned(),
        mode: Mode::Encrypt,
        source: tcp("127.0.0.1", 9080),
        target: tcp("rpi.example.org", 9080),
        keys: vec![key_file(&web)],
        max_connections: Some(10),
        timeout: Duration::from_millis(500),
        keepalive: false,
        forward_secrecy: ForwardSecrecy::Off,
        resolve_interval: Some(Duration::from_secs(120)),
        bind: Some("192.0.2.10".parse::<IpAddr>().expect("ip")),
        dial: DialTiming::AfterProof,
        proxy_protocol: Some(ProxyProtocol::V2),
        source_mode: None,
        source_group: None,
        idle_timeout: Some(Duration::from_secs(300)),
        half_close_timeout: Some(Duration::from_secs(10)),
        max_handshakes: Some(16),
    };
    let expected = Config {
        path: setup.path().join("spipes.toml"),
        daemon: DaemonConfig {
            drain_timeout: None,
            metrics: Some(tcp("127.0.0.1", 9187)),
            control_socket: Some("/run/spipes/ctl.sock".into()),
        },
        pipes: vec![
            inherited.clone(),
            PipeConfig {
                name: "ssh-in".to_owned(),
                mode: Mode::Decrypt,
                source: tcp("::", 8022),
                target: tcp("::1", 22),
                keys: vec![key_file(&new), key_file(&old)],
                max_connections: None,
                timeout: Duration::from_secs(2),
                keepalive: true,
                forward_secrecy: ForwardSecrecy::Required,
                resolve_interval: None,
                bind: Some("2001:db8::10".parse().expect("ip")),
                dial: DialTiming::Early,
                proxy_protocol: None,
                source_mode: None,
                source_group: None,
                idle_timeout: None,
                half_close_timeout: Some(Duration::from_millis(2500)),
                max_handshakes: None,
            },
            PipeConfig {
                name: "db".to_owned(),
                mode: Mode::Decrypt,
                source: Address::Unix("/run/spipes/db.sock".into()),
                target: Address::Unix("/run/postgresql/.s.PGSQL.5432".into()),
                keys: vec![key_file(&db)],
                timeout: Duration::from_millis(1250),
                bind: None,
                proxy_protocol: None,
                source_mode: Some(0o660),
                source_group: Some(0),
                ..inherited
            },
        ],
    };
    assert_eq!(config, expected);

    // Relative key paths resolve against the config file's folder, and K
    // is SHA256 of the file.
    assert_eq!(
        config.pipes[0].keys[0].path,
        setup.path().join("keys/web.key")
    );
    let contents = std::fs::read(&web).expect("read");
    let sha: [u8; 32] = sha2::Sha256::digest(&contents).into();
    assert_eq!(config.pipes[0].keys[0].key.as_bytes(), &sha);
}

#[test]
fn builtin_defaults_apply_when_nothing_is_set() {
    let setup = Setup::new();
    let good = setup.good_key("good");
    let (config, warnings) = setup.load(&pipe("web", "127.0.0.1:1", ""));
    assert!(warnings.is_empty());
    assert_eq!(
        config.daemon,
        DaemonConfig {
            drain_timeout: Some(Duration::from_secs(30)),
            metrics: None,
            control_socket: Some("/run/spipes/control.sock".into()),
        }
    );
    assert_eq!(
        config.pipes,
        [PipeConfig {
            name: "web".to_owned(),
            mode: Mode::Encrypt,
            source: tcp("127.0.0.1", 1),
            target: tcp("example.org", 80),
            keys: vec![key_file(&good)],
            max_connections: Some(100),
            timeout: Duration::from_secs(5),
            keepalive: true,
            forward_secrecy: ForwardSecrecy::On,
            resolve_interval: Some(Duration::from_secs(60)),
            bind: None,
            dial: DialTiming::AfterProof,
            proxy_protocol: None,
            source_mode: None,
            source_group: None,
            idle_timeout: None,
            half_close_timeout: None,
            max_handshakes: Some(64),
        }]
    );
}

/// The shipped example config.
fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/spipes.toml")
}

#[test]
fn the_shipped_config_loads_with_zero_pipes() {
    let (config, warnings) = load(&shipped()).expect("shipped config loads");
    assert!(config.pipes.is_empty());
    assert!(warnings.is_empty());
    assert_eq!(config.daemon.drain_timeout, Some(Duration::from_secs(30)));
    // What the file says is what the built-in defaults are.
    let (builtin, _) = Setup::new().load("");
    assert_eq!(config.daemon, builtin.daemon);
}

#[test]
fn the_shipped_examples_load_when_uncommented() {
    let setup = Setup::new();
    for name in ["web", "web-new", "db", "front", "cache"] {
        setup.good_key(name);
    }
    let text = std::fs::read_to_string(shipped()).expect("read shipped");
    let (head, examples) =
        text.split_once("# Examples").expect("an examples section");
    let uncommented: String = examples
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.starts_with('[') || line.contains(" = "))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut uncommented = uncommented.replace(
        "/etc/spipes/keys/",
        &format!("{}/keys/", setup.path().display()),
    );
    // Debian always has www-data; elsewhere, a group that exists.
    if nix::unistd::Group::from_name("www-data")
        .ok()
        .flatten()
        .is_none()
    {
        uncommented = uncommented.replace("\"www-data\"", "\"root\"");
    }
    let (config, warnings) = setup.load(&format!("{head}\n{uncommented}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> =
        config.pipes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web", "web-in", "db", "front", "cache"]);
    let (front, cache) = (&config.pipes[3], &config.pipes[4]);
    assert_eq!(front.proxy_protocol, Some(ProxyProtocol::V1));
    assert_eq!(front.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(cache.source_mode, Some(0o660));
    assert!(cache.source_group.is_some());
}

/// A pipe with `extra` lines listening on a Unix socket.
fn unix_pipe(extra: &str) -> String {
    pipe("sock", "/run/spipes/t.sock", extra)
}

/// Loads `text`, which must succeed without warnings, and returns its
/// only pipe (`keys/good.key` exists).
#[track_caller]
fn only_pipe(text: &str) -> PipeConfig {
    let setup = Setup::new();
    setup.good_key("good");
    let (mut config, warnings) = setup.load(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.pipes.len(), 1);
    config.pipes.remove(0)
}

/// Loads `text`, which must succeed, and returns its `[daemon]`.
#[track_caller]
fn daemon_of(text: &str) -> DaemonConfig {
    Setup::new().load(text).0.daemon
}

#[test]
fn mode_and_proxy_protocol_print_as_the_file_spells_them() {
    assert_eq!(Mode::Encrypt.as_str(), "encrypt");
    assert_eq!(Mode::Decrypt.as_str(), "decrypt");
    assert_eq!(Mode::Encrypt.to_string(), "encrypt");
    assert_eq!(format!("{:>8}|", Mode::Decrypt), "decrypt|");
    assert_eq!(ProxyProtocol::V1.as_str(), "v1");
    assert_eq!(ProxyProtocol::V2.as_str(), "v2");
    assert_eq!(ProxyProtocol::V1.to_string(), "v1");
    assert_eq!(ProxyProtocol::V2.to_string(), "v2");
}

#[test]
fn proxy_protocol_values() {
    for (value, expected) in
        [("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)]
    {
        let text = pipe(
            "web",
            "127.0.0.1:1",
            &format!("proxy_protocol = \"{value}\"\n"),
        );
        assert_eq!(only_pipe(&text).proxy_protocol, Some(expected));
    }
    // On a Unix socket source too: v2 can describe such clients.
    let text = unix_pipe("proxy_protocol = \"v2\"\n");
    assert_eq!(only_pipe(&text).proxy_protocol, Some(ProxyProtocol::V2));
    assert_eq!(
        only_pipe(&pipe("web", "127.0.0.1:1", "")).proxy_protocol,
        None
    );
}

#[test]
fn proxy_protocol_errors() {
    assert_errors(
        &pipe("web", "127.0.0.1:1", "proxy_protocol = \"v1\"\n")
            .replace("\"encrypt\"", "\"decrypt\""),
        &["$DIR/spipes.toml:6:18: pipe web: key `proxy_protocol`: \
           proxy_protocol applies to encrypt pipes: the decrypt end passes \
           the header on untouched"],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "proxy_protocol = \"V1\"\n"),
        &[
            "$DIR/spipes.toml:6:18: pipe web: key `proxy_protocol`: expected \
           \"v1\" or \"v2\", found \"V1\"",
        ],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "proxy_protocol = 2\n"),
        &[
            "$DIR/spipes.toml:6:18: pipe web: key `proxy_protocol`: expected \
           \"v1\" or \"v2\", found an integer",
        ],
    );
    // A bad value on a decrypt pipe is reported once, as a bad value.
    assert_errors(
        &pipe("web", "127.0.0.1:1", "proxy_protocol = true\n")
            .replace("\"encrypt\"", "\"decrypt\""),
        &[
            "$DIR/spipes.toml:6:18: pipe web: key `proxy_protocol`: expected \
           \"v1\" or \"v2\", found a boolean",
        ],
    );
    assert_errors(
        "[defaults]\nproxy_protocol = \"v1\"\n",
        &["$DIR/spipes.toml:2:1: key `proxy_protocol` cannot go in \
           [defaults]: set it in each [pipes.NAME]"],
    );
    assert_errors(
        "[daemon]\nproxy_protocol = \"v1\"\n",
        &["$DIR/spipes.toml:2:1: unknown key `proxy_protocol` in [daemon]"],
    );
}

#[test]
fn source_mode_values() {
    for (value, expected) in [
        ("0660", 0o660),
        ("660", 0o660),
        ("0777", 0o777),
        ("777", 0o777),
        ("0600", 0o600),
        ("000", 0),
    ] {
        let text = unix_pipe(&format!("source_mode = \"{value}\"\n"));
        assert_eq!(only_pipe(&text).source_mode, Some(expected), "{value}");
    }
    assert_eq!(only_pipe(&unix_pipe("")).source_mode, None);
}

#[test]
fn source_mode_errors() {
    for value in ["0968", "66", "00660", "rw-rw----", "0o660", "", " 660"] {
        assert_errors(
            &unix_pipe(&format!("source_mode = \"{value}\"\n")),
            &[&format!(
                "$DIR/spipes.toml:6:15: pipe sock: key `source_mode`: \
                 expected 3 or 4 octal digits, such as \"0660\", found \
                 \"{value}\""
            )],
        );
    }
    for value in ["1777", "4755", "7777"] {
        assert_errors(
            &unix_pipe(&format!("source_mode = \"{value}\"\n")),
            &[&format!(
                "$DIR/spipes.toml:6:15: pipe sock: key `source_mode`: \
                 \"{value}\" sets more than the permission bits: at most \
                 \"0777\""
            )],
        );
    }
    for (value, kind) in [("0o660", "an integer"), ("660", "an integer")] {
        assert_errors(
            &unix_pipe(&format!("source_mode = {value}\n")),
            &[&format!(
                "$DIR/spipes.toml:6:15: pipe sock: key `source_mode`: \
                 expected octal digits in quotes, such as \"0660\", found \
                 {kind}"
            )],
        );
    }
    assert_errors(
        &pipe("web", "127.0.0.1:1", "source_mode = \"0660\"\n"),
        &[
            "$DIR/spipes.toml:6:15: pipe web: key `source_mode`: source_mode \
           applies to Unix socket sources",
        ],
    );
    assert_errors(
        "[defaults]\nsource_mode = \"0660\"\n",
        &[
            "$DIR/spipes.toml:2:1: key `source_mode` cannot go in [defaults]: \
           set it in each [pipes.NAME]",
        ],
    );
}

#[test]
fn source_group_values() {
    for (value, expected) in [
        ("\"root\"", 0),
        ("\"0\"", 0),
        ("\"4242\"", 4242),
        ("33", 33),
        ("0", 0),
        ("0x10", 16),
        ("4294967294", u32::MAX - 1),
    ] {
        let text = unix_pipe(&format!("source_group = {value}\n"));
        assert_eq!(only_pipe(&text).source_group, Some(expected), "{value}");
    }
    assert_eq!(only_pipe(&unix_pipe("")).source_group, None);
    // Mode and group together, as the example has them.
    let text = unix_pipe("source_mode = \"0660\"\nsource_group = \"root\"\n");
    let sock = only_pipe(&text);
    assert_eq!(
        (sock.source_mode, sock.source_group),
        (Some(0o660), Some(0))
    );
}

#[test]
fn source_group_errors() {
    assert_errors(
        &unix_pipe("source_group = \"nosuch\"\n"),
        &[
            "$DIR/spipes.toml:6:16: pipe sock: key `source_group`: no group \
           `nosuch` on this system",
        ],
    );
    assert_errors(
        &unix_pipe("source_group = \"\"\n"),
        &[
            "$DIR/spipes.toml:6:16: pipe sock: key `source_group`: the group \
           name is empty",
        ],
    );
    for value in ["-1", "4294967295", "\"4294967295\"", "\"99999999999\""] {
        assert_errors(
            &unix_pipe(&format!("source_group = {value}\n")),
            &[&format!(
                "$DIR/spipes.toml:6:16: pipe sock: key `source_group`: \
                 expected a group name or a gid from 0 to 4294967294, found \
                 {value}"
            )],
        );
    }
    assert_errors(
        &unix_pipe("source_group = [\"root\"]\n"),
        &[
            "$DIR/spipes.toml:6:16: pipe sock: key `source_group`: expected a \
           group name or numeric gid, found an array",
        ],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "source_group = \"root\"\n"),
        &["$DIR/spipes.toml:6:16: pipe web: key `source_group`: \
           source_group applies to Unix socket sources"],
    );
    // Both on a TCP source: one message each.
    assert_errors(
        &pipe(
            "web",
            "[::1]:1",
            "source_mode = \"600\"\nsource_group = 0\n",
        ),
        &[
            "$DIR/spipes.toml:6:15: pipe web: key `source_mode`: source_mode \
             applies to Unix socket sources",
            "$DIR/spipes.toml:7:16: pipe web: key `source_group`: \
             source_group applies to Unix socket sources",
        ],
    );
    assert_errors(
        "[defaults]\nsource_group = \"root\"\n",
        &["$DIR/spipes.toml:2:1: key `source_group` cannot go in \
           [defaults]: set it in each [pipes.NAME]"],
    );
}

#[test]
fn idle_and_half_close_timeouts_inherit_and_override() {
    let pipes = |defaults: &str, extra: &str| {
        let text = format!(
            "[defaults]\n{defaults}\n{}",
            pipe("web", "127.0.0.1:1", extra)
        );
        let p = only_pipe(&text);
        (p.idle_timeout, p.half_close_timeout)
    };
    let secs = |s: f64| Some(Duration::from_secs_f64(s));
    assert_eq!(pipes("", ""), (None, None));
    assert_eq!(
        pipes("idle_timeout = 60\nhalf_close_timeout = 0.5", ""),
        (secs(60.0), secs(0.5))
    );
    assert_eq!(
        pipes(
            "idle_timeout = 60\nhalf_close_timeout = 5",
            "idle_timeout = 0\nhalf_close_timeout = 7\n"
        ),
        (None, secs(7.0))
    );
    assert_eq!(
        pipes("", "idle_timeout = 1e3\nhalf_close_timeout = 0.0\n"),
        (secs(1000.0), None)
    );
}

#[test]
fn idle_and_half_close_timeout_errors() {
    for key in ["idle_timeout", "half_close_timeout"] {
        let column = key.len() + 4;
        assert_errors(
            &pipe("web", "127.0.0.1:1", &format!("{key} = -1\n")),
            &[&format!(
                "$DIR/spipes.toml:6:{column}: pipe web: key `{key}`: \
                 expected a number of seconds (0 or more), found -1"
            )],
        );
        assert_errors(
            &format!("[defaults]\n{key} = \"30s\"\n"),
            &[&format!(
                "$DIR/spipes.toml:2:{column}: key `{key}` in [defaults]: \
                 expected a number of seconds, found a string"
            )],
        );
        assert_errors(
            &format!("[defaults]\n{key} = 2e9\n"),
            &[&format!(
                "$DIR/spipes.toml:2:{column}: key `{key}` in [defaults]: 2e9 \
                 seconds is too long; at most 1000000000 (about 31 years)"
            )],
        );
        assert_errors(
            &format!("[daemon]\n{key} = 30\n"),
            &[&format!(
                "$DIR/spipes.toml:2:1: unknown key `{key}` in [daemon]; it \
                 goes in [defaults] or a pipe"
            )],
        );
    }
}

#[test]
fn max_handshakes_values() {
    let handshakes = |defaults: &str, extra: &str| {
        let text = format!(
            "[defaults]\n{defaults}\n{}",
            pipe("web", "127.0.0.1:1", extra)
        );
        only_pipe(&text).max_handshakes
    };
    assert_eq!(handshakes("", ""), Some(64));
    assert_eq!(handshakes("max_handshakes = 8", ""), Some(8));
    assert_eq!(handshakes("max_handshakes = 0", ""), None);
    assert_eq!(
        handshakes("max_handshakes = 0", "max_handshakes = 0x20\n"),
        Some(32)
    );
    assert_eq!(
        handshakes("max_handshakes = 8", "max_handshakes = 0\n"),
        None
    );
}

#[test]
fn max_handshakes_errors() {
    for (value, found) in
        [("-1", "-1"), ("1.5", "a float"), ("\"64\"", "a string")]
    {
        let shown = if found == value {
            format!("found {value}")
        } else {
            format!("found {found}")
        };
        assert_errors(
            &pipe("web", "127.0.0.1:1", &format!("max_handshakes = {value}\n")),
            &[&format!(
                "$DIR/spipes.toml:6:18: pipe web: key `max_handshakes`: \
                 expected a whole number of handshakes (0 for no limit), \
                 {shown}"
            )],
        );
    }
    assert_errors(
        "[defaults]\nmax_handshakes = -64\n",
        &[
            "$DIR/spipes.toml:2:18: key `max_handshakes` in [defaults]: \
           expected a whole number of handshakes (0 for no limit), found -64",
        ],
    );
    // Per pipe, so not in [daemon].
    assert_errors(
        "[daemon]\nmax_handshakes = 64\n",
        &[
            "$DIR/spipes.toml:2:1: unknown key `max_handshakes` in [daemon]; it \
           goes in [defaults] or a pipe",
        ],
    );
}

#[test]
fn metrics_values() {
    assert_eq!(daemon_of("").metrics, None);
    let metrics = |value: &str| {
        daemon_of(&format!("[daemon]\nmetrics = \"{value}\"\n")).metrics
    };
    assert_eq!(metrics("127.0.0.1:9187"), Some(tcp("127.0.0.1", 9187)));
    assert_eq!(metrics("[::1]:9187"), Some(tcp("::1", 9187)));
    assert_eq!(metrics("localhost:9187"), Some(tcp("localhost", 9187)));
}

#[test]
fn metrics_errors() {
    assert_errors(
        "[daemon]\nmetrics = \"/run/spipes/metrics.sock\"\n",
        &[
            "$DIR/spipes.toml:2:11: key `metrics` in [daemon]: metrics needs a \
           TCP address",
        ],
    );
    assert_errors(
        "[daemon]\nmetrics = 9187\n",
        &[
            "$DIR/spipes.toml:2:11: key `metrics` in [daemon]: expected a TCP \
           address, such as \"127.0.0.1:9187\", found an integer",
        ],
    );
    assert_errors(
        "[daemon]\nmetrics = \"127.0.0.1\"\n",
        &[
            "$DIR/spipes.toml:2:11: key `metrics` in [daemon]: missing port in \
           `127.0.0.1`: write host:port",
        ],
    );
    assert_errors(
        "[daemon]\nmetrics = \"127.0.0.1:0\"\n",
        &[
            "$DIR/spipes.toml:2:11: key `metrics` in [daemon]: port 0 in \
           `127.0.0.1:0` is out of range: use 1 to 65535",
        ],
    );
    assert_errors(
        "[defaults]\nmetrics = \"127.0.0.1:9187\"\n",
        &["$DIR/spipes.toml:2:1: unknown key `metrics` in [defaults]"],
    );
    assert_errors(
        &pipe("web", "127.0.0.1:1", "metrics = \"127.0.0.1:9187\"\n"),
        &["$DIR/spipes.toml:6:1: pipe web: unknown key `metrics`"],
    );
    // A pipe cannot listen where the metrics are served.
    assert_errors(
        &format!(
            "[daemon]\nmetrics = \"LocalHost:9187\"\n\n{}",
            pipe("web", "localhost:9187", "")
        ),
        &[
            "$DIR/spipes.toml:6:10: pipe web: key `source`: localhost:9187 is \
           already the [daemon] metrics address",
        ],
    );
}

#[test]
fn control_socket_values() {
    let control = |value: &str| {
        daemon_of(&format!("[daemon]\ncontrol_socket = {value}\n"))
            .control_socket
    };
    assert_eq!(
        daemon_of("").control_socket,
        Some(PathBuf::from("/run/spipes/control.sock"))
    );
    assert_eq!(
        spipes::config::builtin::CONTROL_SOCKET,
        "/run/spipes/control.sock"
    );
    assert_eq!(control("\"\""), None);
    assert_eq!(
        control("\"/tmp/s.sock\""),
        Some(PathBuf::from("/tmp/s.sock"))
    );
}

#[test]
fn control_socket_errors() {
    for value in ["run/spipes/control.sock", "./control.sock", "127.0.0.1:1"] {
        assert_errors(
            &format!("[daemon]\ncontrol_socket = \"{value}\"\n"),
            &[&format!(
                "$DIR/spipes.toml:2:18: key `control_socket` in [daemon]: \
                 expected an absolute path, such as \
                 \"/run/spipes/control.sock\", or \"\" for none, found \
                 \"{value}\""
            )],
        );
    }
    assert_errors(
        "[daemon]\ncontrol_socket = false\n",
        &[
            "$DIR/spipes.toml:2:18: key `control_socket` in [daemon]: expected \
           an absolute path, such as \"/run/spipes/control.sock\", or \"\" \
           for none, found a boolean",
        ],
    );
    assert_errors(
        "[daemon]\ncontrol_socket = \"/run/spipes/\"\n",
        &[
            "$DIR/spipes.toml:2:18: key `control_socket` in [daemon]: Unix \
           socket path `/run/spipes/` names a folder: add the socket's file \
           name",
        ],
    );
    let long = format!("/{}", "s".repeat(107));
    assert_errors(
        &format!("[daemon]\ncontrol_socket = \"{long}\"\n"),
        &[&format!(
            "$DIR/spipes.toml:2:18: key `control_socket` in [daemon]: Unix \
             socket path `{long}` is 108 bytes long; at most 107 fit in a \
             socket address"
        )],
    );
    assert_errors(
        "[defaults]\ncontrol_socket = \"\"\n",
        &["$DIR/spipes.toml:2:1: unknown key `control_socket` in [defaults]"],
    );
    // A pipe cannot listen on the control socket, set or by default.
    assert_errors(
        &format!(
            "[daemon]\ncontrol_socket = \"/run/c.sock\"\n\n{}",
            pipe("c", "/run/c.sock", "")
        ),
        &[
            "$DIR/spipes.toml:6:10: pipe c: key `source`: /run/c.sock is \
           already the [daemon] control socket",
        ],
    );
    assert_errors(
        &pipe("c", "/run/spipes/control.sock", ""),
        &["$DIR/spipes.toml:3:10: pipe c: key `source`: \
           /run/spipes/control.sock is already the [daemon] control socket"],
    );
    // Turned off, the path is free.
    let text = format!(
        "[daemon]\ncontrol_socket = \"\"\n\n{}",
        pipe("c", "/run/spipes/control.sock", "")
    );
    assert_eq!(
        only_pipe(&text).source,
        Address::Unix("/run/spipes/control.sock".into())
    );
}

#[test]
fn every_new_key_error_is_reported_at_once() {
    let text = format!(
        "[daemon]\nmetrics = \"/run/m.sock\"\ncontrol_socket = \"rel.sock\"\n\
         max_handshakes = 1\n\n[defaults]\nidle_timeout = -1\n\
         max_handshakes = 1.0\n\n{}",
        pipe(
            "web",
            "127.0.0.1:1",
            "proxy_protocol = \"v3\"\nsource_mode = \"0660\"\n\
             source_group = \"nosuch\"\nhalf_close_timeout = true\n"
        )
    );
    assert_errors(
        &text,
        &[
            "$DIR/spipes.toml:2:11: key `metrics` in [daemon]: metrics needs \
             a TCP address",
            "$DIR/spipes.toml:3:18: key `control_socket` in [daemon]: \
             expected an absolute path, such as \
             \"/run/spipes/control.sock\", or \"\" for none, found \
             \"rel.sock\"",
            "$DIR/spipes.toml:4:1: unknown key `max_handshakes` in [daemon]; \
             it goes in [defaults] or a pipe",
            "$DIR/spipes.toml:7:16: key `idle_timeout` in [defaults]: \
             expected a number of seconds (0 or more), found -1",
            "$DIR/spipes.toml:8:18: key `max_handshakes` in [defaults]: \
             expected a whole number of handshakes (0 for no limit), found \
             a float",
            "$DIR/spipes.toml:15:18: pipe web: key `proxy_protocol`: \
             expected \"v1\" or \"v2\", found \"v3\"",
            "$DIR/spipes.toml:16:15: pipe web: key `source_mode`: \
             source_mode applies to Unix socket sources",
            "$DIR/spipes.toml:17:16: pipe web: key `source_group`: no group \
             `nosuch` on this system",
            "$DIR/spipes.toml:18:22: pipe web: key `half_close_timeout`: \
             expected a number of seconds, found a boolean",
        ],
    );
}
