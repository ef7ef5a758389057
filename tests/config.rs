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
    Config, DaemonConfig, DialTiming, KeyFile, Mode, PipeConfig, Warning, load,
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

[defaults]
max_connections = 10
timeout = 0.5
keepalive = false
forward_secrecy = "off"
resolve_interval = 120

[pipes.web]
mode = "encrypt"
source = "127.0.0.1:9080"
target = "rpi.example.org:9080"
key = "keys/web.key"
bind = "192.0.2.10"

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

[pipes.db]
mode = "decrypt"
source = "/run/spipes/db.sock"
target = "/run/postgresql/.s.PGSQL.5432"
key = "{db}"
dial = "after-proof"
timeout = 1.25
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
    };
    let expected = Config {
        path: setup.path().join("spipes.toml"),
        daemon: DaemonConfig {
            drain_timeout: None,
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
            },
            PipeConfig {
                name: "db".to_owned(),
                mode: Mode::Decrypt,
                source: Address::Unix("/run/spipes/db.sock".into()),
                target: Address::Unix("/run/postgresql/.s.PGSQL.5432".into()),
                keys: vec![key_file(&db)],
                timeout: Duration::from_millis(1250),
                bind: None,
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
    assert_eq!(config.daemon.drain_timeout, Some(Duration::from_secs(30)));
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
}

#[test]
fn the_shipped_examples_load_when_uncommented() {
    let setup = Setup::new();
    for name in ["web", "web-new", "db"] {
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
    let uncommented = uncommented.replace(
        "/etc/spipes/keys/",
        &format!("{}/keys/", setup.path().display()),
    );
    let (config, warnings) = setup.load(&format!("{head}\n{uncommented}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> =
        config.pipes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web", "web-in", "db"]);
}
