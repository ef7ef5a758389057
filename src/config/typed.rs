//! Step two: values converted to their types, checked, and assembled
//! into a [`Config`]; key files are read here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::convert::{
    boolean, choice, connections, group, handshakes, non_negative_seconds,
    permissions, positive_seconds, string,
};
use super::raw::{self, Entry, Value};
use super::{
    Address, Config, DaemonConfig, DialTiming, ForwardSecrecy, KeyFile, Mode,
    PipeConfig, ProxyProtocol, Report, Scope, builtin, keyfile, pipe_label,
};

/// The settings `[defaults]` holds and each pipe may override; each
/// field is the [`PipeConfig`] field of the same name.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// `max_connections`.
    max_connections: Option<usize>,
    /// `timeout`.
    timeout: Duration,
    /// `keepalive`.
    keepalive: bool,
    /// `forward_secrecy`.
    forward_secrecy: ForwardSecrecy,
    /// `resolve_interval`.
    resolve_interval: Option<Duration>,
    /// `idle_timeout`.
    idle_timeout: Option<Duration>,
    /// `half_close_timeout`.
    half_close_timeout: Option<Duration>,
    /// `max_handshakes`.
    max_handshakes: Option<usize>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_connections: Some(builtin::MAX_CONNECTIONS),
            timeout: builtin::TIMEOUT,
            keepalive: true,
            forward_secrecy: ForwardSecrecy::On,
            resolve_interval: Some(builtin::RESOLVE_INTERVAL),
            idle_timeout: None,
            half_close_timeout: None,
            max_handshakes: Some(builtin::MAX_HANDSHAKES),
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
    let defaults =
        settings(Settings::default(), &file.defaults, Scope::Defaults, report);
    let pipes = file
        .pipes
        .iter()
        .filter_map(|p| pipe(p, &defaults, folder, report))
        .collect();
    check_sources(&file.pipes, &daemon, report);
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
    // A bad value is reported; what stands in for it does not matter.
    let metrics = raw::find(entries, "metrics")
        .and_then(|e| field(e, Scope::Daemon, report, metrics_address));
    let control_socket = match raw::find(entries, "control_socket") {
        Some(e) => {
            field(e, Scope::Daemon, report, control_socket_path).unwrap_or(None)
        }
        None => Some(PathBuf::from(builtin::CONTROL_SOCKET)),
    };
    DaemonConfig {
        drain_timeout,
        metrics,
        control_socket,
    }
}

/// `metrics`: a TCP address to serve metrics on.
fn metrics_address(value: Value<'_, '_>) -> Result<Address, String> {
    let text = string(value, "a TCP address, such as \"127.0.0.1:9187\"")?;
    match Address::parse(text).map_err(|e| e.0)? {
        Address::Unix(_) => Err("metrics needs a TCP address".to_owned()),
        tcp => Ok(tcp),
    }
}

/// `control_socket`: an absolute path for a Unix socket, or `""` for
/// none.
fn control_socket_path(
    value: Value<'_, '_>,
) -> Result<Option<PathBuf>, String> {
    const WHAT: &str = "an absolute path, such as \
                        \"/run/spipes/control.sock\", or \"\" for none";
    let text = string(value, WHAT)?;
    if text.is_empty() {
        return Ok(None);
    }
    let not_absolute = || format!("expected {WHAT}, found {text:?}");
    if !text.starts_with('/') {
        return Err(not_absolute());
    }
    // The checks a Unix socket source gets: length, NUL, a folder.
    match Address::parse(text).map_err(|e| e.0)? {
        Address::Unix(path) => Ok(Some(path)),
        Address::Tcp { .. } => Err(not_absolute()),
    }
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
                if let Some(v) = field(entry, scope, report, positive_seconds) {
                    out.timeout = v;
                }
            }
            "keepalive" => {
                if let Some(v) = field(entry, scope, report, boolean) {
                    out.keepalive = v;
                }
            }
            "forward_secrecy" => {
                if let Some(v) = field(entry, scope, report, forward_secrecy_of)
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
            "idle_timeout" => {
                if let Some(v) =
                    field(entry, scope, report, non_negative_seconds)
                {
                    out.idle_timeout = v;
                }
            }
            "half_close_timeout" => {
                if let Some(v) =
                    field(entry, scope, report, non_negative_seconds)
                {
                    out.half_close_timeout = v;
                }
            }
            "max_handshakes" => {
                if let Some(v) = field(entry, scope, report, handshakes) {
                    out.max_handshakes = v;
                }
            }
            _ => {}
        }
    }
    out
}

/// `forward_secrecy = "on" | "off" | "required"`.
fn forward_secrecy_of(value: Value<'_, '_>) -> Result<ForwardSecrecy, String> {
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

/// `proxy_protocol = "v1" | "v2"`.
fn proxy_protocol_of(value: Value<'_, '_>) -> Result<ProxyProtocol, String> {
    choice(
        value,
        &[("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)],
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
    let [mode, source, target, key] =
        ["mode", "source", "target", "key"].map(|k| required(raw, k, report));

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
    let proxy_protocol =
        optional(raw, "proxy_protocol", scope, report, proxy_protocol_of);
    if let (Some(Mode::Decrypt), Some(Some(_))) = (mode, proxy_protocol) {
        check_proxy_protocol(raw, scope, report);
    }
    let source_mode = optional(raw, "source_mode", scope, report, permissions);
    let source_group = optional(raw, "source_group", scope, report, group);
    let socket_keys = [
        ("source_mode", matches!(source_mode, Some(Some(_)))),
        ("source_group", matches!(source_group, Some(Some(_)))),
    ];
    for (key, set) in socket_keys {
        if let (true, Some(source)) = (set, &source) {
            check_unix_source(raw, key, source, scope, report);
        }
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
        proxy_protocol: proxy_protocol.flatten(),
        source_mode: source_mode.flatten(),
        source_group: source_group.flatten(),
        idle_timeout: settings.idle_timeout,
        half_close_timeout: settings.half_close_timeout,
        max_handshakes: settings.max_handshakes,
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
        report
            .error(raw.header_at, format!("pipe {name}: missing key `{key}`"));
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

/// `proxy_protocol` means nothing to a decrypt pipe: the header an
/// encrypt pipe sent arrives inside the stream and goes on to the target
/// as data.
fn check_proxy_protocol<'t>(
    raw: &raw::Pipe<'t, '_>,
    scope: Scope<'t>,
    report: &mut Report<'t>,
) {
    if let Some(entry) = raw.get("proxy_protocol") {
        report.error(
            entry.value.at,
            scope.key(
                "proxy_protocol",
                "proxy_protocol applies to encrypt pipes: the decrypt end \
                 passes the header on untouched",
            ),
        );
    }
}

/// `key` (`source_mode` or `source_group`) sets what a socket file has,
/// so it needs a Unix socket source.
fn check_unix_source<'t>(
    raw: &raw::Pipe<'t, '_>,
    key: &str,
    source: &Address,
    scope: Scope<'t>,
    report: &mut Report<'t>,
) {
    if let (Address::Tcp { .. }, Some(entry)) = (source, raw.get(key)) {
        report.error(
            entry.value.at,
            scope.key(key, format!("{key} applies to Unix socket sources")),
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

/// Reports a source that an earlier pipe already listens on, or that
/// the daemon's metrics endpoint or control socket uses.
fn check_sources<'t>(
    pipes: &[raw::Pipe<'t, '_>],
    daemon: &DaemonConfig,
    report: &mut Report<'t>,
) {
    let mut taken: HashMap<Address, &str> = HashMap::new();
    if let Some(metrics) = &daemon.metrics {
        taken.insert(same_place(metrics), "the [daemon] metrics address");
    }
    if let Some(path) = &daemon.control_socket {
        taken
            .insert(Address::Unix(path.clone()), "the [daemon] control socket");
    }
    let mut seen: HashMap<Address, &str> = HashMap::new();
    for pipe in pipes {
        let Some(entry) = pipe.get("source") else {
            continue;
        };
        let Ok(source) = address(entry.value) else {
            continue;
        };
        let place = same_place(&source);
        let problem = if let Some(what) = taken.get(&place) {
            format!("{source} is already {what}")
        } else if let Some(first) = seen.get(&place) {
            format!("{source} is already the source of pipe {first}")
        } else {
            seen.insert(place, pipe.name);
            continue;
        };
        report.error(
            entry.value.at,
            Scope::Pipe(pipe.name).key("source", problem),
        );
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
