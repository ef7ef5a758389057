//! Pipe addresses: `host:port`, `1.2.3.4:port`, `[::1]:port`, or an
//! absolute path for a Unix socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// Where a pipe listens (its source) or dials (its target).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// A TCP address; `host` is an IP literal (without brackets) or a name.
    Tcp {
        /// An IPv4 or IPv6 literal, or a host name to resolve.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A Unix stream socket at an absolute path.
    Unix(PathBuf),
}

/// Why a string is not an [`Address`]; the text is shown to users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct AddressError(pub String);

impl Address {
    /// Parses the config-file form of an address.
    ///
    /// Accepted: `host:port`, `1.2.3.4:port`, `[1.2.3.4]:port`,
    /// `[::1]:port` (ports 1 to 65535), or an absolute path for a Unix
    /// socket. IP literals are stored in their canonical form without
    /// brackets, so `[127.0.0.1]:80` and `127.0.0.1:80` are equal.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(error(
                "the address is empty: write host:port, or an absolute path \
                 for a Unix socket"
                    .to_owned(),
            ));
        }
        if text.starts_with('/') {
            return parse_unix(text);
        }
        if let Some(rest) = text.strip_prefix('[') {
            return parse_bracketed(text, rest);
        }
        parse_host_port(text)
    }
}

/// Longest Unix socket path: `sun_path` is 108 bytes with the final NUL.
const MAX_UNIX_PATH: usize = 107;

/// Longest host name DNS allows, in characters.
const MAX_HOST_NAME: usize = 253;

/// Wraps a message as an [`AddressError`].
fn error(message: String) -> AddressError {
    AddressError(message)
}

/// An absolute path for a Unix socket; `text` starts with `/`.
fn parse_unix(text: &str) -> Result<Address, AddressError> {
    if text.contains('\0') {
        return Err(error(format!(
            "Unix socket path `{}` contains a NUL byte",
            text.escape_debug()
        )));
    }
    if text.len() > MAX_UNIX_PATH {
        return Err(error(format!(
            "Unix socket path `{text}` is {} bytes long; at most \
             {MAX_UNIX_PATH} fit in a socket address",
            text.len()
        )));
    }
    if text.ends_with('/') {
        return Err(error(format!(
            "Unix socket path `{text}` names a folder: add the socket's \
             file name"
        )));
    }
    Ok(Address::Unix(PathBuf::from(text)))
}

/// `[ip]:port`; `rest` is `text` after the opening bracket.
fn parse_bracketed(text: &str, rest: &str) -> Result<Address, AddressError> {
    let Some((inside, after)) = rest.split_once(']') else {
        return Err(error(format!(
            "missing `]` in `{text}`: write [address]:port"
        )));
    };
    let Ok(ip) = inside.parse::<IpAddr>() else {
        return Err(error(format!(
            "`{inside}` in `{text}` is not an IP address: only IPv4 or IPv6 \
             addresses go in brackets; write a host name as host:port"
        )));
    };
    let port = match after.strip_prefix(':') {
        Some(port) => port,
        None if after.is_empty() => {
            return Err(error(format!(
                "missing port in `{text}`: write [{inside}]:port"
            )));
        }
        None => {
            return Err(error(format!(
                "unexpected `{after}` after `]` in `{text}`: write \
                 [{inside}]:port"
            )));
        }
    };
    let port = parse_port(text, port)?;
    Ok(Address::Tcp {
        host: ip.to_string(),
        port,
    })
}

/// `host:port` or `1.2.3.4:port`, without brackets.
fn parse_host_port(text: &str) -> Result<Address, AddressError> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(missing_port(text));
    };
    if host.contains(':') {
        return Err(bare_ipv6(text, host, port));
    }
    if host.is_empty() {
        return Err(error(format!(
            "missing host in `{text}`: write host:port, such as \
             127.0.0.1{text}"
        )));
    }
    let port = parse_port(text, port)?;
    let host = parse_host(text, host)?;
    Ok(Address::Tcp { host, port })
}

/// The message for an address without any `:`.
fn missing_port(text: &str) -> AddressError {
    if text.contains('/') {
        return error(format!(
            "`{text}` is not an address: write host:port, or an absolute \
             path (starting with /) for a Unix socket"
        ));
    }
    error(format!("missing port in `{text}`: write host:port"))
}

/// The message for an IPv6 address written without brackets.
fn bare_ipv6(text: &str, host: &str, port: &str) -> AddressError {
    let hint = if host.parse::<Ipv6Addr>().is_ok() && !port.is_empty() {
        format!("[{host}]:{port}")
    } else if text.parse::<Ipv6Addr>().is_ok() {
        format!("[{text}]:port")
    } else {
        "[address]:port, such as [::1]:80".to_owned()
    };
    error(format!(
        "`{text}` has more than one `:`: put an IPv6 address in brackets, \
         as {hint}"
    ))
}

/// A TCP port from 1 to 65535; `text` is the whole address, for messages.
fn parse_port(text: &str, port: &str) -> Result<u16, AddressError> {
    if port.is_empty() {
        return Err(error(format!(
            "missing port in `{text}`: write a port number after the `:`"
        )));
    }
    let out_of_range = || {
        error(format!(
            "port {port} in `{text}` is out of range: use 1 to 65535"
        ))
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(format!(
            "invalid port `{port}` in `{text}`: expected a number from 1 to \
             65535"
        )));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(out_of_range()),
        Ok(port) => Ok(port),
    }
}

/// An IPv4 literal (made canonical) or a host name; `text` is the whole
/// address, for messages.
fn parse_host(text: &str, host: &str) -> Result<String, AddressError> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // A resolver would read `1.2.3` or `010.0.0.1` in surprising ways.
        return Err(error(format!(
            "`{host}` in `{text}` is not a valid IPv4 address"
        )));
    }
    check_host_name(text, host)?;
    Ok(host.to_owned())
}

/// Checks a DNS host name: letters, digits, `-` and `.`, no empty labels
/// (one final `.` is allowed), at most 253 characters.
fn check_host_name(text: &str, host: &str) -> Result<(), AddressError> {
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(error(format!(
            "invalid host name `{host}` in `{text}`: {} is not allowed; use \
             letters, digits, `-` and `.`",
            describe_char(bad)
        )));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return Err(error(format!(
            "invalid host name `{host}` in `{text}`: empty label (`..`, or a \
             leading `.`)"
        )));
    }
    if host.len() > MAX_HOST_NAME {
        return Err(error(format!(
            "host name in `{text}` is {} characters long; at most \
             {MAX_HOST_NAME} are allowed",
            host.len()
        )));
    }
    Ok(())
}

/// Names a character for a message: visible ones quoted, others escaped.
fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_control() || c.is_whitespace() => {
            format!("`{}`", c.escape_debug())
        }
        '`' => "'`'".to_owned(),
        c => format!("`{c}`"),
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error text for `text`, which must not parse.
    fn err(text: &str) -> String {
        match Address::parse(text) {
            Ok(a) => panic!("{text} parsed as {a:?}"),
            Err(e) => e.0,
        }
    }

    /// A TCP address.
    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("example.org:9080", tcp("example.org", 9080)),
            ("rpi-2.example.org.:1", tcp("rpi-2.example.org.", 1)),
            ("localhost:65535", tcp("localhost", 65535)),
            ("127.0.0.1:80", tcp("127.0.0.1", 80)),
            ("[127.0.0.1]:80", tcp("127.0.0.1", 80)),
            ("[::1]:80", tcp("::1", 80)),
            ("[0:0:0:0:0:0:0:1]:80", tcp("::1", 80)),
            ("[2001:DB8::a]:443", tcp("2001:db8::a", 443)),
            (
                "/run/spipes/web.sock",
                Address::Unix("/run/spipes/web.sock".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Address::parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn displays_what_it_parsed() {
        for text in ["example.org:1", "10.0.0.1:22", "[::1]:80", "/tmp/s"] {
            let address = Address::parse(text).expect(text);
            assert_eq!(address.to_string(), text);
        }
        let bracketed = Address::parse("[10.0.0.1]:22").expect("parses");
        assert_eq!(bracketed.to_string(), "10.0.0.1:22");
    }

    #[test]
    fn missing_port() {
        assert_eq!(
            err("example.org"),
            "missing port in `example.org`: write host:port"
        );
        assert_eq!(
            err("example.org:"),
            "missing port in `example.org:`: write a port number after the \
             `:`"
        );
        assert_eq!(err("[::1]"), "missing port in `[::1]`: write [::1]:port");
    }

    #[test]
    fn missing_host() {
        assert_eq!(
            err(":80"),
            "missing host in `:80`: write host:port, such as 127.0.0.1:80"
        );
    }

    #[test]
    fn bad_ports() {
        assert_eq!(
            err("example.org:0"),
            "port 0 in `example.org:0` is out of range: use 1 to 65535"
        );
        assert_eq!(
            err("example.org:65536"),
            "port 65536 in `example.org:65536` is out of range: use 1 to \
             65535"
        );
        assert_eq!(
            err("example.org:http"),
            "invalid port `http` in `example.org:http`: expected a number \
             from 1 to 65535"
        );
        assert_eq!(
            err("[::1]:-1"),
            "invalid port `-1` in `[::1]:-1`: expected a number from 1 to \
             65535"
        );
    }

    #[test]
    fn bare_ipv6_asks_for_brackets() {
        assert_eq!(
            err("::1:80"),
            "`::1:80` has more than one `:`: put an IPv6 address in \
             brackets, as [::1]:80"
        );
        assert_eq!(
            err("fe80::1"),
            "`fe80::1` has more than one `:`: put an IPv6 address in \
             brackets, as [fe80::1]:port"
        );
        assert_eq!(
            err("a:b:c"),
            "`a:b:c` has more than one `:`: put an IPv6 address in \
             brackets, as [address]:port, such as [::1]:80"
        );
    }

    #[test]
    fn brackets_hold_only_ip_addresses() {
        assert_eq!(
            err("[example.org]:80"),
            "`example.org` in `[example.org]:80` is not an IP address: only \
             IPv4 or IPv6 addresses go in brackets; write a host name as \
             host:port"
        );
        assert_eq!(
            err("[::1:80"),
            "missing `]` in `[::1:80`: write [address]:port"
        );
        assert_eq!(
            err("[::1]80"),
            "unexpected `80` after `]` in `[::1]80`: write [::1]:port"
        );
    }

    #[test]
    fn bad_host_names() {
        assert_eq!(
            err("exa mple.org:80"),
            "invalid host name `exa mple.org` in `exa mple.org:80`: a space \
             is not allowed; use letters, digits, `-` and `.`"
        );
        assert_eq!(
            err("under_score:80"),
            "invalid host name `under_score` in `under_score:80`: `_` is not \
             allowed; use letters, digits, `-` and `.`"
        );
        assert_eq!(
            err("a..b:80"),
            "invalid host name `a..b` in `a..b:80`: empty label (`..`, or a \
             leading `.`)"
        );
        assert_eq!(
            err("1.2.3:80"),
            "`1.2.3` in `1.2.3:80` is not a valid IPv4 address"
        );
        assert_eq!(
            err("010.0.0.1:80"),
            "`010.0.0.1` in `010.0.0.1:80` is not a valid IPv4 address"
        );
        let long = format!("{}orgx", "a.".repeat(125));
        assert_eq!(long.len(), 254);
        assert_eq!(
            err(&format!("{long}:80")),
            format!(
                "host name in `{long}:80` is 254 characters long; at most \
                 253 are allowed"
            )
        );
        let longest = format!("{}org", "a.".repeat(125));
        assert_eq!(longest.len(), 253);
        assert!(Address::parse(&format!("{longest}:80")).is_ok());
    }

    #[test]
    fn unix_paths() {
        assert_eq!(
            err("run/web.sock"),
            "`run/web.sock` is not an address: write host:port, or an \
             absolute path (starting with /) for a Unix socket"
        );
        assert_eq!(
            err("/run/spipes/"),
            "Unix socket path `/run/spipes/` names a folder: add the \
             socket's file name"
        );
        let long = format!("/{}", "s".repeat(107));
        assert_eq!(
            err(&long),
            format!(
                "Unix socket path `{long}` is 108 bytes long; at most 107 \
                 fit in a socket address"
            )
        );
        assert!(Address::parse(&long[..107]).is_ok());
    }

    #[test]
    fn empty() {
        assert_eq!(
            err(""),
            "the address is empty: write host:port, or an absolute path for \
             a Unix socket"
        );
    }
}
