//! Pipe addresses: `host:port`, `1.2.3.4:port`, `[::1]:port`, or an
//! absolute path for a Unix socket.

use std::fmt;
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
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let _ = text;
        unimplemented!("config helper fills this in")
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
