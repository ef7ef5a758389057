//! The configuration: `/etc/spipes.toml` read, checked and turned into
//! typed settings, so that only valid values reach the rest of spipes.
//!
//! `spipes check`, `spipes run` and every reload use [`load`], so a file
//! that passes `check` is a file that `run` accepts.
//!
//! Loading goes in two steps, each reporting every mistake it finds:
//! `raw` walks the TOML tree and checks its shape (which tables, which
//! keys), keeping where each value is; `typed` converts the values (one at
//! a time with `convert`, key files with `keyfile`), checks how they fit
//! together and builds the [`Config`]. Messages are collected in a
//! `Report`, which gives each its `file:line:column`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::address::Address;
use crate::protocol::{ForwardSecrecy, Key};

mod convert;
mod keyfile;
mod raw;
mod typed;

/// Which end of the protocol a pipe is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accepts plaintext, dials the target and encrypts (spiped `-e`).
    Encrypt,
    /// Accepts encrypted connections and dials a plaintext target
    /// (spiped `-d`).
    Decrypt,
}

impl Mode {
    /// The name the config file uses for this mode, `encrypt` or
    /// `decrypt`, so that logs and status output say it the same way.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Encrypt => "encrypt",
            Mode::Decrypt => "decrypt",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which PROXY protocol header an encrypt pipe sends first, inside the
/// encrypted stream, to tell the far end's server who the client is
/// (`proxy_protocol = "v1" | "v2"`).
///
/// Without it the server behind the decrypt end sees every connection
/// come from the decrypt pipe; with it, a server that reads the header
/// (nginx, HAProxy, Postfix...) logs and filters on the real client
/// address. Only encrypt pipes send one: the decrypt end is a plain byte
/// pipe and passes the header on as it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// The human-readable text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header; unlike v1 it can also describe Unix socket
    /// addresses.
    V2,
}

impl ProxyProtocol {
    /// The name the config file uses: `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl std::fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a decrypt pipe dials its target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DialTiming {
    /// Only after the client proved the key (spipes' default).
    #[default]
    AfterProof,
    /// During the handshake, as spiped does (`dial = "early"`).
    Early,
}

/// Process-wide settings from `[daemon]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// How long connections may run on after their pipe is removed or the
    /// daemon stops; `None` means no limit.
    pub drain_timeout: Option<Duration>,
    /// Where the Prometheus metrics endpoint listens (`metrics`), always a
    /// TCP address; `None` (the default) serves no metrics. Off unless
    /// asked for, so that nothing listens that the admin did not name.
    pub metrics: Option<Address>,
    /// The Unix socket that `spipes status` connects to for the running
    /// daemon's state (`control_socket`); `None` when set to `""`, which
    /// turns it off. Always an absolute path; by default
    /// `/run/spipes/control.sock`.
    pub control_socket: Option<PathBuf>,
}

/// A key file a pipe uses, with the key derived from it.
#[derive(Clone)]
pub struct KeyFile {
    /// The path as resolved against the config file's folder.
    pub path: PathBuf,
    /// `SHA256` of the file's contents.
    pub key: Arc<Key>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself never appears: only where it came from.
        f.debug_struct("KeyFile").field("path", &self.path).finish()
    }
}

impl PartialEq for KeyFile {
    fn eq(&self, other: &KeyFile) -> bool {
        self.path == other.path && *self.key == *other.key
    }
}

/// One pipe, fully validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PipeConfig {
    /// The table name under `[pipes]`.
    pub name: String,
    /// Encrypt or decrypt.
    pub mode: Mode,
    /// Where to listen.
    pub source: Address,
    /// Where to dial.
    pub target: Address,
    /// One key for encrypt pipes; one or more for decrypt pipes, tried in
    /// order during the handshake.
    pub keys: Vec<KeyFile>,
    /// Most connections at once; `None` means no limit.
    pub max_connections: Option<usize>,
    /// Bound on dialling plus handshake.
    pub timeout: Duration,
    /// SO_KEEPALIVE on both sockets.
    pub keepalive: bool,
    /// Forward secrecy mode.
    pub forward_secrecy: ForwardSecrecy,
    /// How often a target host name is resolved again; `None`: once.
    pub resolve_interval: Option<Duration>,
    /// Local address for outgoing connections.
    pub bind: Option<IpAddr>,
    /// When a decrypt pipe dials.
    pub dial: DialTiming,
    /// The PROXY protocol header an encrypt pipe sends before any data,
    /// so that the server behind the far end learns the real client
    /// address; `None` (the default) sends none. Always `None` for
    /// decrypt pipes, which pass a header on untouched.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Permission bits (at most `0o777`) to give a Unix socket source
    /// once it is bound, so that chosen local users may connect; `None`
    /// leaves them as the umask made them. Always `None` for TCP sources.
    pub source_mode: Option<u32>,
    /// The group (a gid, resolved from a name when the file is loaded, so
    /// that a wrong name is a config error rather than a failure at bind
    /// time) to give a Unix socket source once it is bound; `None` leaves
    /// the daemon's group. Always `None` for TCP sources.
    pub source_group: Option<u32>,
    /// How long a connection may go with no data moving either way
    /// before it is closed, so that dead peers do not hold a connection
    /// slot forever; `None` means never.
    pub idle_timeout: Option<Duration>,
    /// Once one direction of a connection has ended, how long the other
    /// may go on, counted again from each byte it moves, so that a peer
    /// that half-closed and vanished does not hold the connection open;
    /// `None` means no limit.
    pub half_close_timeout: Option<Duration>,
    /// Most handshakes in progress at once on this pipe; more wait. A cap
    /// that keeps a flood of handshakes, each costing Diffie-Hellman
    /// work, from starving established connections of CPU; `None` means
    /// no limit (default 64).
    pub max_handshakes: Option<usize>,
}

/// The whole validated file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// Every pipe, in file order.
    pub pipes: Vec<PipeConfig>,
}

/// Something wrong with the file that does not stop it loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning(pub String);

/// Every error found in a file; `Display` prints one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Reads, parses and validates the config at `path` and every key file it
/// names.
pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(vec![format!(
            "cannot read config file {}: {e}",
            path.display()
        )])
    })?;
    load_str(path, &text)
}

/// Just `[daemon] control_socket` of the file at `path`, read without
/// validating anything else, for `spipes status` when the whole file does
/// not load (a reload may have been rejected, or the key files may be
/// readable only by the daemon). `None` if the file is not TOML at all;
/// otherwise the socket, or `Some(None)` when it is off (`""`).
pub fn control_socket_only(path: &Path) -> Option<Option<PathBuf>> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let value = table
        .get("daemon")
        .and_then(|d| d.get("control_socket"))
        .and_then(|v| v.as_str());
    Some(match value {
        Some("") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from(builtin::CONTROL_SOCKET)),
    })
}

/// Validates `text` as the contents of the config file at `path`, which
/// is not read: messages name `path`, and relative key file paths resolve
/// against its folder. Key files are read as [`load`] reads them.
///
/// For callers that already hold the text, such as fuzz targets.
pub fn load_str(
    path: &Path,
    text: &str,
) -> Result<(Config, Vec<Warning>), ConfigError> {
    let mut report = Report::new(path, text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            report_syntax_error(&mut report, e);
        }
        return Err(ConfigError(report.finish().0));
    }

    let raw = raw::walk(root.get_ref(), &mut report);
    let folder = path.parent().unwrap_or(Path::new(""));
    let config = typed::build(path, folder, &raw, &mut report);
    let (errors, warnings) = report.finish();
    if errors.is_empty() {
        Ok((config, warnings))
    } else {
        Err(ConfigError(errors))
    }
}

/// Adds one error from toml's parser, tidied: "duplicate key" names the
/// key, and an empty "expected nothing" is dropped.
fn report_syntax_error(report: &mut Report<'_>, e: &toml::de::Error) {
    let span = e.span();
    let mut message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .replace(", expected nothing", "");
    if message == "duplicate key" {
        let key = span.clone().and_then(|s| report.text.get(s));
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            message = format!("duplicate key `{key}`");
        }
    }
    let message = format!("syntax error: {message}");
    match span {
        Some(span) => report.error(span.start, message),
        None => report.error_without_position(message),
    }
}

/// The built-in values of settings the file may leave out or change.
///
/// Public so that code which must act without a loaded config (such as
/// `spipes status` when the file cannot be read) uses the same defaults.
pub mod builtin {
    use std::time::Duration;

    /// `[daemon] drain_timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `max_connections` (spiped `-n`).
    pub const MAX_CONNECTIONS: usize = 100;
    /// `timeout` (spiped `-o`).
    pub const TIMEOUT: Duration = Duration::from_secs(5);
    /// `resolve_interval` (spiped `-r`).
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
    /// `max_handshakes`.
    pub const MAX_HANDSHAKES: usize = 64;
    /// `[daemon] control_socket`.
    pub const CONTROL_SOCKET: &str = "/run/spipes/control.sock";
}

/// Keys of `[daemon]`.
const DAEMON_KEYS: &[&str] = &["drain_timeout", "metrics", "control_socket"];

/// Keys that `[defaults]` sets and each pipe may override.
const SHARED_KEYS: &[&str] = &[
    "max_connections",
    "timeout",
    "keepalive",
    "forward_secrecy",
    "resolve_interval",
    "idle_timeout",
    "half_close_timeout",
    "max_handshakes",
];

/// Keys that only a pipe's own table may set.
const PIPE_ONLY_KEYS: &[&str] = &[
    "mode",
    "source",
    "target",
    "key",
    "bind",
    "dial",
    "proxy_protocol",
    "source_mode",
    "source_group",
];

/// Collects errors and warnings with the byte offset each is about, and
/// turns them into `file:line:column: message` lines in file order.
struct Report<'a> {
    /// The config file, as given to [`load`].
    path: &'a Path,
    /// Its whole text.
    text: &'a str,
    /// Errors, each with its offset (`None`: no position).
    errors: Vec<(Option<usize>, String)>,
    /// Warnings, each with its offset.
    warnings: Vec<(usize, String)>,
}

impl<'a> Report<'a> {
    /// An empty report about `text`, the contents of `path`.
    fn new(path: &'a Path, text: &'a str) -> Report<'a> {
        Report {
            path,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error about the byte at `offset`.
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.push((Some(offset), message.into()));
    }

    /// Records an error that has no place in the file.
    fn error_without_position(&mut self, message: impl Into<String>) {
        self.errors.push((None, message.into()));
    }

    /// Records a warning about the byte at `offset`.
    fn warn(&mut self, offset: usize, message: impl Into<String>) {
        self.warnings.push((offset, message.into()));
    }

    /// How many errors so far: a step compares counts to learn whether
    /// it found any.
    fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The finished lines: errors and warnings, each in file order, with
    /// repeats dropped.
    fn finish(mut self) -> (Vec<String>, Vec<Warning>) {
        let lines = Lines::new(self.text);
        let place = |offset: Option<usize>| match offset {
            Some(offset) => lines.position(self.path, offset),
            None => self.path.display().to_string(),
        };
        self.errors.sort_by_key(|(offset, _)| *offset);
        self.warnings.sort_by_key(|(offset, _)| *offset);

        let mut seen = std::collections::HashSet::new();
        let mut errors = Vec::new();
        for (offset, message) in &self.errors {
            let line = format!("{}: {}", place(*offset), one_line(message));
            if seen.insert(line.clone()) {
                errors.push(line);
            }
        }
        let warnings = self
            .warnings
            .iter()
            .map(|(offset, message)| {
                Warning(format!(
                    "{}: {}",
                    place(Some(*offset)),
                    one_line(message)
                ))
            })
            .collect();
        (errors, warnings)
    }
}

/// Where each line of a text starts, to turn offsets into positions.
struct Lines<'a> {
    /// The text.
    text: &'a str,
    /// Byte offset of the start of each line; the first is 0.
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    /// Indexes `text`.
    fn new(text: &'a str) -> Lines<'a> {
        let breaks = text.match_indices('\n').map(|(i, _)| i + 1);
        let starts = std::iter::once(0).chain(breaks).collect();
        Lines { text, starts }
    }

    /// `path:line:column` of `offset` (clamped to the text), both from 1,
    /// the column counted in characters.
    fn position(&self, path: &Path, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts.get(line.wrapping_sub(1)).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        format!("{}:{line}:{column}", path.display())
    }
}

/// `message` with control characters (such as a newline inside a quoted
/// TOML key) escaped, so that every message stays on one line.
fn one_line(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_owned();
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// How a pipe's name appears in messages: an empty one as `""`.
fn pipe_label(name: &str) -> &str {
    if name.is_empty() { "\"\"" } else { name }
}

/// Where in the file a key sits, for the start of a message.
#[derive(Clone, Copy, Debug)]
enum Scope<'t> {
    /// The top level, outside any table.
    Top,
    /// `[daemon]`.
    Daemon,
    /// `[defaults]`.
    Defaults,
    /// `[pipes.NAME]`.
    Pipe(&'t str),
}

impl Scope<'_> {
    /// The message for a key this scope does not know.
    fn unknown_key(self, key: &str, is_table: bool) -> String {
        const TOP: &str = "expected [daemon], [defaults] or [pipes.NAME]";
        match self {
            Scope::Top if is_table => format!("unknown table [{key}]; {TOP}"),
            Scope::Top => format!("unknown key `{key}` at top level; {TOP}"),
            Scope::Daemon if SHARED_KEYS.contains(&key) => format!(
                "unknown key `{key}` in [daemon]; it goes in [defaults] or \
                 a pipe"
            ),
            Scope::Daemon => format!("unknown key `{key}` in [daemon]"),
            Scope::Defaults if PIPE_ONLY_KEYS.contains(&key) => format!(
                "key `{key}` cannot go in [defaults]: set it in each \
                 [pipes.NAME]"
            ),
            Scope::Defaults => format!("unknown key `{key}` in [defaults]"),
            Scope::Pipe(name) => {
                format!("pipe {}: unknown key `{key}`", pipe_label(name))
            }
        }
    }

    /// A message about the value of `key`.
    fn key(self, key: &str, message: impl std::fmt::Display) -> String {
        match self {
            Scope::Top => format!("key `{key}`: {message}"),
            Scope::Daemon => format!("key `{key}` in [daemon]: {message}"),
            Scope::Defaults => {
                format!("key `{key}` in [defaults]: {message}")
            }
            Scope::Pipe(name) => {
                format!("pipe {}: key `{key}`: {message}", pipe_label(name))
            }
        }
    }
}

/// "a string", "an integer", ...: what a value is, for messages.
fn kind_of(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as `t.toml`; it must name no key files.
    fn load_text(text: &str) -> Result<Config, Vec<String>> {
        load_str(Path::new("t.toml"), text)
            .map(|(config, _)| config)
            .map_err(|e| e.0)
    }

    /// The drain timeout that `drain_timeout = {value}` gives.
    fn drain(value: &str) -> Result<Option<Duration>, Vec<String>> {
        load_text(&format!("[daemon]\ndrain_timeout = {value}\n"))
            .map(|c| c.daemon.drain_timeout)
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a\nbé = 1\n";
        let lines = Lines::new(text);
        let at = |offset| lines.position(Path::new("f"), offset);
        assert_eq!(at(0), "f:1:1");
        assert_eq!(at(1), "f:1:2");
        assert_eq!(at(2), "f:2:1");
        // `é` is two bytes but one column.
        assert_eq!(at(5), "f:2:3");
        assert_eq!(at(text.len()), "f:3:1");
        assert_eq!(at(text.len() + 10), "f:3:1");
        assert_eq!(Lines::new("").position(Path::new("f"), 0), "f:1:1");
    }

    #[test]
    fn report_sorts_into_file_order_and_drops_repeats() {
        let mut report = Report::new(Path::new("f"), "x\ny\n");
        report.error(2, "second");
        report.error(0, "first");
        report.error(2, "second");
        report.error_without_position("whole file");
        report.warn(2, "w2");
        report.warn(0, "w1");
        let (errors, warnings) = report.finish();
        assert_eq!(errors, ["f: whole file", "f:1:1: first", "f:2:1: second"]);
        assert_eq!(
            warnings,
            [Warning("f:1:1: w1".into()), Warning("f:2:1: w2".into())]
        );
    }

    #[test]
    fn durations_take_every_toml_number_form() {
        let secs = |s: f64| Ok(Some(Duration::from_secs_f64(s)));
        assert_eq!(drain("30"), secs(30.0));
        assert_eq!(drain("1_000"), secs(1000.0));
        assert_eq!(drain("0x10"), secs(16.0));
        assert_eq!(drain("0o10"), secs(8.0));
        assert_eq!(drain("+2"), secs(2.0));
        assert_eq!(drain("0.25"), secs(0.25));
        assert_eq!(drain("1e2"), secs(100.0));
        assert_eq!(drain("0"), Ok(None));
        assert_eq!(drain("0.0"), Ok(None));
        assert_eq!(drain("-0.0"), Ok(None));
    }

    #[test]
    fn durations_reject_negative_and_odd_numbers() {
        let expected = |value: &str| {
            Err(vec![format!(
                "t.toml:2:17: key `drain_timeout` in [daemon]: expected a \
                 number of seconds (0 or more), found {value}"
            )])
        };
        assert_eq!(drain("-1"), expected("-1"));
        assert_eq!(drain("-0.5"), expected("-0.5"));
        assert_eq!(drain("nan"), expected("nan"));
        for value in ["inf", "1e10", "1_000_000_001"] {
            assert_eq!(
                drain(value),
                Err(vec![format!(
                    "t.toml:2:17: key `drain_timeout` in [daemon]: {value} \
                     seconds is too long; at most 1000000000 (about 31 years)"
                )])
            );
        }
        assert_eq!(drain("1e9"), Ok(Some(Duration::from_secs(1_000_000_000))));
        assert_eq!(
            drain("true"),
            Err(vec![
                "t.toml:2:17: key `drain_timeout` in [daemon]: expected a \
                 number of seconds, found a boolean"
                    .to_owned()
            ])
        );
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config = load_text("").expect("loads");
        assert_eq!(
            config,
            Config {
                path: "t.toml".into(),
                daemon: DaemonConfig {
                    drain_timeout: Some(Duration::from_secs(30)),
                    metrics: None,
                    control_socket: Some(PathBuf::from(
                        builtin::CONTROL_SOCKET
                    )),
                },
                pipes: Vec::new(),
            }
        );
    }

    #[test]
    fn daemon_keys_misplaced_get_a_hint() {
        assert_eq!(
            load_text("[daemon]\ntimeout = 5\n"),
            Err(vec![
                "t.toml:2:1: unknown key `timeout` in [daemon]; it goes in \
                 [defaults] or a pipe"
                    .to_owned()
            ])
        );
    }

    #[test]
    fn syntax_errors_are_all_reported_and_stop_validation() {
        let text = "[daemon]\nbogus = 1\na = tru\nb = \"open\n";
        assert_eq!(
            load_text(text),
            Err(vec![
                "t.toml:3:5: syntax error: invalid boolean, expected `true`"
                    .to_owned(),
                "t.toml:4:10: syntax error: invalid basic string, expected \
                 `\"`"
                    .to_owned(),
            ])
        );
    }

    #[test]
    fn expected_nothing_is_dropped_from_toml_messages() {
        assert_eq!(
            load_text("[daemon]\ndrain_timeout = 1.5.3\n"),
            Err(vec!["t.toml:2:20: syntax error: invalid float".to_owned()])
        );
    }
}
