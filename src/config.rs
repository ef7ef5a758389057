//! The configuration: `/etc/spipes.toml` read, checked and turned into
//! typed settings, so that only valid values reach the rest of spipes.
//!
//! `spipes check`, `spipes run` and every reload use [`load`], so a file
//! that passes `check` is a file that `run` accepts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::address::Address;
use crate::protocol::{ForwardSecrecy, Key};

/// Which end of the protocol a pipe is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accepts plaintext, dials the target and encrypts (spiped `-e`).
    Encrypt,
    /// Accepts encrypted connections and dials a plaintext target
    /// (spiped `-d`).
    Decrypt,
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

/// The built-in values of the settings `[defaults]` may change.
mod builtin {
    use std::time::Duration;

    /// `[daemon] drain_timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `max_connections` (spiped `-n`).
    pub const MAX_CONNECTIONS: usize = 100;
    /// `timeout` (spiped `-o`).
    pub const TIMEOUT: Duration = Duration::from_secs(5);
    /// `resolve_interval` (spiped `-r`).
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
}

/// Keys of `[daemon]`.
const DAEMON_KEYS: &[&str] = &["drain_timeout"];

/// Keys that `[defaults]` sets and each pipe may override.
const SHARED_KEYS: &[&str] = &[
    "max_connections",
    "timeout",
    "keepalive",
    "forward_secrecy",
    "resolve_interval",
];

/// Keys that only a pipe's own table may set.
const PIPE_ONLY_KEYS: &[&str] =
    &["mode", "source", "target", "key", "bind", "dial"];

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

/// Step one: the TOML tree checked for its shape (which tables, which
/// keys) but not yet for its values.
mod raw {
    use toml::Spanned;
    use toml::de::{DeString, DeTable, DeValue};

    use super::{
        DAEMON_KEYS, PIPE_ONLY_KEYS, Report, SHARED_KEYS, Scope, kind_of,
    };

    /// A value as written, with where it is.
    #[derive(Clone, Copy)]
    pub struct Value<'t, 'i> {
        /// The parsed value.
        pub de: &'t DeValue<'i>,
        /// Its text in the file, for messages that quote it.
        pub text: &'t str,
        /// Byte offset of its start.
        pub at: usize,
    }

    impl<'t, 'i> Value<'t, 'i> {
        /// Wraps a value from the tree; `source` is the whole file.
        pub fn new(
            spanned: &'t Spanned<DeValue<'i>>,
            source: &'t str,
        ) -> Value<'t, 'i> {
            let span = spanned.span();
            Value {
                de: spanned.get_ref(),
                text: source.get(span.clone()).unwrap_or(""),
                at: span.start,
            }
        }
    }

    /// One known `key = value` of a table.
    #[derive(Clone, Copy)]
    pub struct Entry<'t, 'i> {
        /// The key, one of the known names.
        pub key: &'t str,
        /// The value.
        pub value: Value<'t, 'i>,
    }

    /// One `[pipes.NAME]` table.
    pub struct Pipe<'t, 'i> {
        /// The name as written.
        pub name: &'t str,
        /// Byte offset of the name.
        pub name_at: usize,
        /// Byte offset of the table's header, where missing keys are
        /// reported.
        pub header_at: usize,
        /// Its known keys, in file order.
        pub entries: Vec<Entry<'t, 'i>>,
    }

    impl<'t, 'i> Pipe<'t, 'i> {
        /// The entry for `key`, if the table has it.
        pub fn get(&self, key: &str) -> Option<Entry<'t, 'i>> {
            find(&self.entries, key)
        }
    }

    /// The whole file, shape-checked.
    #[derive(Default)]
    pub struct File<'t, 'i> {
        /// The known keys of `[daemon]`.
        pub daemon: Vec<Entry<'t, 'i>>,
        /// The known keys of `[defaults]`.
        pub defaults: Vec<Entry<'t, 'i>>,
        /// Every pipe, in file order.
        pub pipes: Vec<Pipe<'t, 'i>>,
    }

    /// The entry for `key` in `entries`, if there is one.
    pub fn find<'t, 'i>(
        entries: &[Entry<'t, 'i>],
        key: &str,
    ) -> Option<Entry<'t, 'i>> {
        entries.iter().find(|e| e.key == key).copied()
    }

    /// A table's keys and values in file order (the map may sort them).
    fn in_file_order<'t, 'i>(
        table: &'t DeTable<'i>,
    ) -> Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        entries
    }

    /// Walks the document, reporting unknown tables and keys.
    pub fn walk<'t, 'i>(
        root: &'t DeTable<'i>,
        report: &mut Report<'t>,
    ) -> File<'t, 'i> {
        let mut file = File::default();
        for (key, value) in in_file_order(root) {
            let name: &'t str = key.get_ref();
            let table = || expect_table(name, value);
            match name {
                "daemon" => match table() {
                    Ok(t) => {
                        file.daemon =
                            known(t, Scope::Daemon, DAEMON_KEYS, report);
                    }
                    Err((at, message)) => report.error(at, message),
                },
                "defaults" => match table() {
                    Ok(t) => {
                        file.defaults =
                            known(t, Scope::Defaults, SHARED_KEYS, report);
                    }
                    Err((at, message)) => report.error(at, message),
                },
                "pipes" => match table() {
                    Ok(t) => file.pipes = pipes(t, report),
                    Err((at, message)) => report.error(at, message),
                },
                _ => {
                    let is_table = matches!(value.get_ref(), DeValue::Table(_));
                    let message = Scope::Top.unknown_key(name, is_table);
                    report.error(key.span().start, message);
                }
            }
        }
        file
    }

    /// The table under a top-level key, or an error (offset, message).
    fn expect_table<'t, 'i>(
        name: &str,
        value: &'t Spanned<DeValue<'i>>,
    ) -> Result<&'t DeTable<'i>, (usize, String)> {
        match value.get_ref() {
            DeValue::Table(table) => Ok(table),
            other => {
                let what = if name == "pipes" {
                    "expected a table of pipes, as [pipes.NAME]"
                } else {
                    "expected a table"
                };
                Err((
                    value.span().start,
                    Scope::Top
                        .key(name, format!("{what}, found {}", kind_of(other))),
                ))
            }
        }
    }

    /// The entries of `table` whose keys are in `allowed`; others are
    /// reported as unknown.
    fn known<'t, 'i>(
        table: &'t DeTable<'i>,
        scope: Scope<'t>,
        allowed: &[&str],
        report: &mut Report<'t>,
    ) -> Vec<Entry<'t, 'i>> {
        let mut entries = Vec::new();
        for (key, value) in in_file_order(table) {
            let name: &'t str = key.get_ref();
            if allowed.contains(&name) {
                let value = Value::new(value, report.text);
                entries.push(Entry { key: name, value });
            } else {
                let is_table = matches!(value.get_ref(), DeValue::Table(_));
                report
                    .error(key.span().start, scope.unknown_key(name, is_table));
            }
        }
        entries
    }

    /// Every table under `[pipes]`.
    fn pipes<'t, 'i>(
        table: &'t DeTable<'i>,
        report: &mut Report<'t>,
    ) -> Vec<Pipe<'t, 'i>> {
        let allowed: Vec<&str> =
            PIPE_ONLY_KEYS.iter().chain(SHARED_KEYS).copied().collect();
        let mut pipes = Vec::new();
        for (key, value) in in_file_order(table) {
            let name: &'t str = key.get_ref();
            let DeValue::Table(settings) = value.get_ref() else {
                let message = format!(
                    "pipe {}: expected a table of settings, as \
                     [pipes.NAME], found {}",
                    super::pipe_label(name),
                    kind_of(value.get_ref())
                );
                report.error(value.span().start, message);
                continue;
            };
            let entries = known(settings, Scope::Pipe(name), &allowed, report);
            pipes.push(Pipe {
                name,
                name_at: key.span().start,
                header_at: value.span().start,
                entries,
            });
        }
        pipes
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

/// Step two: values converted to their types, checked, and assembled
/// into a [`Config`]; key files are read here.
mod typed {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::path::Path;
    use std::time::Duration;

    use toml::de::DeValue;

    use super::convert::{
        boolean, choice, connections, non_negative_seconds, positive_seconds,
        string,
    };
    use super::raw::{self, Entry, Value};
    use super::{
        Address, Config, DaemonConfig, DialTiming, ForwardSecrecy, KeyFile,
        Mode, PipeConfig, Report, Scope, builtin, keyfile, pipe_label,
    };

    /// The settings `[defaults]` holds and each pipe may override.
    #[derive(Clone, Copy, Debug)]
    struct Settings {
        max_connections: Option<usize>,
        timeout: Duration,
        keepalive: bool,
        forward_secrecy: ForwardSecrecy,
        resolve_interval: Option<Duration>,
    }

    impl Default for Settings {
        fn default() -> Settings {
            Settings {
                max_connections: Some(builtin::MAX_CONNECTIONS),
                timeout: builtin::TIMEOUT,
                keepalive: true,
                forward_secrecy: ForwardSecrecy::On,
                resolve_interval: Some(builtin::RESOLVE_INTERVAL),
            }
        }
    }

    /// Converts one entry with `convert`, reporting a failure under
    /// `scope` at the value.
    fn field<'t, T>(
        entry: Entry<'t, '_>,
        scope: Scope<'t>,
        report: &mut Report<'t>,
        convert: impl FnOnce(Value<'t, '_>) -> Result<T, String>,
    ) -> Option<T> {
        match convert(entry.value) {
            Ok(value) => Some(value),
            Err(message) => {
                report.error(entry.value.at, scope.key(entry.key, message));
                None
            }
        }
    }

    /// Builds the whole config from the shape-checked file.
    pub fn build<'t>(
        path: &Path,
        folder: &Path,
        file: &raw::File<'t, '_>,
        report: &mut Report<'t>,
    ) -> Config {
        let daemon = daemon(&file.daemon, report);
        let defaults = settings(
            Settings::default(),
            &file.defaults,
            Scope::Defaults,
            report,
        );
        let pipes = file
            .pipes
            .iter()
            .filter_map(|p| pipe(p, &defaults, folder, report))
            .collect();
        check_sources(&file.pipes, report);
        Config {
            path: path.to_path_buf(),
            daemon,
            pipes,
        }
    }

    /// `[daemon]`.
    fn daemon<'t>(
        entries: &[Entry<'t, '_>],
        report: &mut Report<'t>,
    ) -> DaemonConfig {
        let drain_timeout = match raw::find(entries, "drain_timeout") {
            Some(e) => field(e, Scope::Daemon, report, non_negative_seconds)
                .unwrap_or(Some(builtin::DRAIN_TIMEOUT)),
            None => Some(builtin::DRAIN_TIMEOUT),
        };
        DaemonConfig { drain_timeout }
    }

    /// `base` with the shared keys found in `entries` applied; a bad
    /// value is reported and leaves the base value.
    fn settings<'t>(
        base: Settings,
        entries: &[Entry<'t, '_>],
        scope: Scope<'t>,
        report: &mut Report<'t>,
    ) -> Settings {
        let mut out = base;
        for &entry in entries {
            match entry.key {
                "max_connections" => {
                    if let Some(v) = field(entry, scope, report, connections) {
                        out.max_connections = v;
                    }
                }
                "timeout" => {
                    if let Some(v) =
                        field(entry, scope, report, positive_seconds)
                    {
                        out.timeout = v;
                    }
                }
                "keepalive" => {
                    if let Some(v) = field(entry, scope, report, boolean) {
                        out.keepalive = v;
                    }
                }
                "forward_secrecy" => {
                    if let Some(v) =
                        field(entry, scope, report, forward_secrecy_of)
                    {
                        out.forward_secrecy = v;
                    }
                }
                "resolve_interval" => {
                    if let Some(v) =
                        field(entry, scope, report, non_negative_seconds)
                    {
                        out.resolve_interval = v;
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// `forward_secrecy = "on" | "off" | "required"`.
    fn forward_secrecy_of(
        value: Value<'_, '_>,
    ) -> Result<ForwardSecrecy, String> {
        choice(
            value,
            &[
                ("on", ForwardSecrecy::On),
                ("off", ForwardSecrecy::Off),
                ("required", ForwardSecrecy::Required),
            ],
        )
    }

    /// `mode = "encrypt" | "decrypt"`.
    fn mode_of(value: Value<'_, '_>) -> Result<Mode, String> {
        choice(
            value,
            &[("encrypt", Mode::Encrypt), ("decrypt", Mode::Decrypt)],
        )
    }

    /// `dial = "early" | "after-proof"`.
    fn dial_of(value: Value<'_, '_>) -> Result<DialTiming, String> {
        choice(
            value,
            &[
                ("early", DialTiming::Early),
                ("after-proof", DialTiming::AfterProof),
            ],
        )
    }

    /// A source or target address.
    fn address(value: Value<'_, '_>) -> Result<Address, String> {
        let text = string(value, "an address (host:port or /socket/path)")?;
        Address::parse(text).map_err(|e| e.0)
    }

    /// `bind`: an IP address literal.
    fn ip(value: Value<'_, '_>) -> Result<IpAddr, String> {
        let text = string(value, "an IP address, such as \"192.0.2.10\"")?;
        text.parse().map_err(|_| {
            format!(
                "expected an IP address, such as \"192.0.2.10\", found {:?}",
                text
            )
        })
    }

    /// Whether `name` is a valid pipe name.
    fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    }

    /// Validates one pipe; `None` if anything in it is wrong (and
    /// reported).
    fn pipe<'t>(
        raw: &raw::Pipe<'t, '_>,
        defaults: &Settings,
        folder: &Path,
        report: &mut Report<'t>,
    ) -> Option<PipeConfig> {
        let before = report.error_count();
        let scope = Scope::Pipe(raw.name);
        check_name(raw, report);
        let [mode, source, target, key] = ["mode", "source", "target", "key"]
            .map(|k| required(raw, k, report));

        let mode = mode.and_then(|e| field(e, scope, report, mode_of));
        let source = source.and_then(|e| field(e, scope, report, address));
        let target = target.and_then(|e| field(e, scope, report, address));
        let keys = key.and_then(|e| keys(e, mode, folder, scope, report));
        let settings = settings(*defaults, &raw.entries, scope, report);
        let bind = optional(raw, "bind", scope, report, ip);
        let dial = optional(raw, "dial", scope, report, dial_of);
        if let (Some(Some(bind)), Some(target)) = (bind, &target) {
            check_bind(raw, bind, target, scope, report);
        }
        if let (Some(mode), Some(Some(_))) = (mode, dial) {
            check_dial(raw, mode, scope, report);
        }

        if report.error_count() > before {
            return None;
        }
        Some(PipeConfig {
            name: raw.name.to_owned(),
            mode: mode?,
            source: source?,
            target: target?,
            keys: keys?,
            max_connections: settings.max_connections,
            timeout: settings.timeout,
            keepalive: settings.keepalive,
            forward_secrecy: settings.forward_secrecy,
            resolve_interval: settings.resolve_interval,
            bind: bind.flatten(),
            dial: dial.flatten().unwrap_or_default(),
        })
    }

    /// Reports a pipe name that is not letters, digits, `-`, `_`, `.`.
    fn check_name(raw: &raw::Pipe<'_, '_>, report: &mut Report<'_>) {
        if !valid_name(raw.name) {
            report.error(
                raw.name_at,
                format!(
                    "invalid pipe name `{}`: use only letters, digits, `-`, \
                     `_` and `.`",
                    pipe_label(raw.name)
                ),
            );
        }
    }

    /// The entry for `key`; reported at the pipe's header when missing.
    fn required<'t, 'i>(
        raw: &raw::Pipe<'t, 'i>,
        key: &str,
        report: &mut Report<'t>,
    ) -> Option<Entry<'t, 'i>> {
        let entry = raw.get(key);
        if entry.is_none() {
            let name = pipe_label(raw.name);
            report.error(
                raw.header_at,
                format!("pipe {name}: missing key `{key}`"),
            );
        }
        entry
    }

    /// `dial` means nothing to an encrypt pipe, which dials as soon as it
    /// accepts.
    fn check_dial<'t>(
        raw: &raw::Pipe<'t, '_>,
        mode: Mode,
        scope: Scope<'t>,
        report: &mut Report<'t>,
    ) {
        if let (Mode::Encrypt, Some(entry)) = (mode, raw.get("dial")) {
            report.error(
                entry.value.at,
                scope.key(
                    "dial",
                    "only decrypt pipes have this setting; an encrypt pipe \
                     dials as soon as it accepts a connection",
                ),
            );
        }
    }

    /// An optional key: `Some(None)` when absent, `None` when bad.
    fn optional<'t, T>(
        raw: &raw::Pipe<'t, '_>,
        key: &str,
        scope: Scope<'t>,
        report: &mut Report<'t>,
        convert: impl FnOnce(Value<'t, '_>) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match raw.get(key) {
            None => Some(None),
            Some(entry) => field(entry, scope, report, convert).map(Some),
        }
    }

    /// `bind` must suit the target: TCP, and the same IP version as a
    /// literal target address.
    fn check_bind<'t>(
        raw: &raw::Pipe<'t, '_>,
        bind: IpAddr,
        target: &Address,
        scope: Scope<'t>,
        report: &mut Report<'t>,
    ) {
        let Some(entry) = raw.get("bind") else {
            return;
        };
        let problem = match target {
            Address::Unix(_) => Some(format!(
                "the target {target} is a Unix socket; `bind` applies only \
                 to TCP targets"
            )),
            Address::Tcp { host, .. } => match host.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() != bind.is_ipv4() => Some(format!(
                    "{bind} and the target {target} are not the same IP \
                     version"
                )),
                _ => None,
            },
        };
        if let Some(problem) = problem {
            report.error(entry.value.at, scope.key("bind", problem));
        }
    }

    /// `key`: one path, or for decrypt pipes a non-empty array of paths;
    /// each file is read. `mode` is `None` when it is missing or bad.
    fn keys<'t>(
        entry: Entry<'t, '_>,
        mode: Option<Mode>,
        folder: &Path,
        scope: Scope<'t>,
        report: &mut Report<'t>,
    ) -> Option<Vec<KeyFile>> {
        let before = report.error_count();
        let in_array = matches!(entry.value.de, DeValue::Array(_));
        let mut keys = Vec::new();
        for value in key_values(entry, mode, scope, report) {
            let path = field(Entry { key: "key", value }, scope, report, |v| {
                key_path(v, in_array)
            });
            let Some(path) = path else { continue };
            match keyfile::read(&folder.join(path)) {
                Ok((key, warnings)) => {
                    for warning in warnings {
                        report.warn(value.at, scope.key("key", warning));
                    }
                    keys.push(key);
                }
                Err(message) => {
                    report.error(value.at, scope.key("key", message));
                }
            }
        }
        (report.error_count() == before).then_some(keys)
    }

    /// The values of `key`: the one value, or the items of an array,
    /// whose length is checked against the mode.
    fn key_values<'t, 'i>(
        entry: Entry<'t, 'i>,
        mode: Option<Mode>,
        scope: Scope<'t>,
        report: &mut Report<'t>,
    ) -> Vec<Value<'t, 'i>> {
        let DeValue::Array(items) = entry.value.de else {
            return vec![entry.value];
        };
        let problem = match items.len() {
            0 => Some("expected at least one key file, found an empty array"),
            1 => None,
            _ if mode == Some(Mode::Encrypt) => {
                Some("an encrypt pipe uses exactly one key")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            report.error(entry.value.at, scope.key("key", problem));
        }
        items.iter().map(|i| Value::new(i, report.text)).collect()
    }

    /// One key file path; `in_array` tells which message fits a wrong
    /// type.
    fn key_path<'t>(
        value: Value<'t, '_>,
        in_array: bool,
    ) -> Result<&'t str, String> {
        let expected = if in_array {
            "a key file path"
        } else {
            "a key file path, or (decrypt pipes) an array of them"
        };
        let path = string(value, expected)?;
        if path.is_empty() {
            return Err("the key file path is empty".to_owned());
        }
        Ok(path)
    }

    /// Reports a source that an earlier pipe already listens on.
    fn check_sources<'t>(pipes: &[raw::Pipe<'t, '_>], report: &mut Report<'t>) {
        let mut seen: HashMap<Address, &str> = HashMap::new();
        for pipe in pipes {
            let Some(entry) = pipe.get("source") else {
                continue;
            };
            let Ok(source) = address(entry.value) else {
                continue;
            };
            match seen.get(&same_place(&source)) {
                Some(first) => report.error(
                    entry.value.at,
                    Scope::Pipe(pipe.name).key(
                        "source",
                        format!(
                            "{source} is already the source of pipe {first}"
                        ),
                    ),
                ),
                None => {
                    seen.insert(same_place(&source), pipe.name);
                }
            }
        }
    }

    /// An address in a form where two spellings of one place are equal
    /// (host names are not case-sensitive).
    fn same_place(address: &Address) -> Address {
        match address {
            Address::Tcp { host, port } => Address::Tcp {
                host: host.to_ascii_lowercase(),
                port: *port,
            },
            Address::Unix(path) => Address::Unix(path.clone()),
        }
    }
}

/// Conversions of single TOML values to Rust types; each error message is
/// the part after "key `name`: ".
mod convert {
    use std::time::Duration;

    use toml::de::DeValue;

    use super::kind_of;
    use super::raw::Value;

    /// The longest duration accepted, in seconds.
    const MAX_SECONDS: f64 = 1e9;

    /// `"expected {what}, found {kind}"`.
    fn mismatch(what: &str, value: Value<'_, '_>) -> String {
        format!("expected {what}, found {}", kind_of(value.de))
    }

    /// A string value; `what` describes what was expected.
    pub fn string<'t>(
        value: Value<'t, '_>,
        what: &str,
    ) -> Result<&'t str, String> {
        match value.de {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(mismatch(what, value)),
        }
    }

    /// `true` or `false`.
    pub fn boolean(value: Value<'_, '_>) -> Result<bool, String> {
        match value.de {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(mismatch("true or false", value)),
        }
    }

    /// One of a fixed set of strings.
    pub fn choice<T: Copy>(
        value: Value<'_, '_>,
        options: &[(&str, T)],
    ) -> Result<T, String> {
        let names: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        let text = string(value, &expected)?;
        options
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("expected {expected}, found {text:?}"))
    }

    /// A number as written, integer or float, as `f64`.
    fn number(value: Value<'_, '_>) -> Option<f64> {
        match value.de {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse().ok(),
            _ => None,
        }
    }

    /// A number of seconds, at least 0; `what` is the expected value in
    /// the message for a negative one.
    fn seconds(value: Value<'_, '_>, what: &str) -> Result<Duration, String> {
        let Some(secs) = number(value) else {
            return Err(mismatch("a number of seconds", value));
        };
        if secs.is_nan() || secs < 0.0 {
            return Err(format!("expected {what}, found {}", value.text));
        }
        if secs > MAX_SECONDS {
            // Far beyond any real use, and safe to add to an `Instant`.
            return Err(format!(
                "{} seconds is too long; at most {MAX_SECONDS} (about 31 \
                 years)",
                value.text
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// A duration of at least 0 seconds, where 0 means `None` (no limit,
    /// or never).
    pub fn non_negative_seconds(
        value: Value<'_, '_>,
    ) -> Result<Option<Duration>, String> {
        let d = seconds(value, "a number of seconds (0 or more)")?;
        Ok((!d.is_zero()).then_some(d))
    }

    /// A duration of more than 0 seconds.
    pub fn positive_seconds(value: Value<'_, '_>) -> Result<Duration, String> {
        const WHAT: &str = "a number of seconds more than 0";
        match seconds(value, WHAT)? {
            d if d.is_zero() => {
                Err(format!("expected {WHAT}, found {}", value.text))
            }
            d => Ok(d),
        }
    }

    /// `max_connections`: a whole number, 0 meaning no limit.
    pub fn connections(value: Value<'_, '_>) -> Result<Option<usize>, String> {
        let what = "a whole number of connections (0 for no limit)";
        let DeValue::Integer(i) = value.de else {
            return Err(mismatch(what, value));
        };
        match usize::from_str_radix(i.as_str(), i.radix()) {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(format!("expected {what}, found {}", value.text)),
        }
    }
}

/// Reading one key file and deriving its key.
mod keyfile {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Arc;

    use zeroize::Zeroizing;

    use super::{Key, KeyFile};

    /// Key files shorter than this draw a warning: `SHA256` of fewer
    /// random bytes holds less than 256 bits of secret.
    const MIN_LEN: usize = 32;

    /// Most bytes reserved before reading a key file.
    const PREALLOCATE_MAX: usize = 1 << 20;

    /// Reads the key file at `path` (already resolved) and derives its
    /// key; returns the key with warning texts, or an error text. No
    /// message ever holds the file's bytes.
    pub fn read(path: &Path) -> Result<(KeyFile, Vec<String>), String> {
        let shown = path.display();
        let cannot = |e: &dyn std::fmt::Display| {
            format!("cannot read key file {shown}: {e}")
        };
        // stat before open: opening a FIFO would block.
        let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
        if meta.is_dir() {
            return Err(cannot(&"it is a folder"));
        }
        if !meta.is_file() {
            return Err(cannot(&"not a regular file"));
        }
        let mut file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
        let meta = file.metadata().map_err(|e| cannot(&e))?;
        if !meta.is_file() {
            return Err(cannot(&"not a regular file"));
        }

        // Room for the whole file up front, so that growing the buffer
        // leaves no copies of key bytes behind in freed memory (up to a
        // size no real key file reaches, so a wrong path cannot make
        // this allocate gigabytes).
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        let capacity = len.min(PREALLOCATE_MAX) + 1;
        let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
        file.read_to_end(&mut bytes).map_err(|e| cannot(&e))?;
        if bytes.is_empty() {
            return Err(format!("key file {shown} is empty"));
        }

        let mut warnings = Vec::new();
        if bytes.len() < MIN_LEN {
            warnings.push(format!(
                "key file {shown} is only {} bytes; use at least {MIN_LEN} \
                 random bytes (spipes keygen)",
                bytes.len()
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "key file {shown} is readable by group or others (mode \
                 {mode:04o}); chmod 600 it"
            ));
        }

        let key = Arc::new(Key::from_file_contents(&bytes));
        let key_file = KeyFile {
            path: path.to_path_buf(),
            key,
        };
        Ok((key_file, warnings))
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
