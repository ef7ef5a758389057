//! PROXY protocol headers (HAProxy's v1 text and v2 binary forms), which
//! an `encrypt` pipe with `proxy_protocol` writes as the first plaintext
//! bytes, so that a backend behind the decrypt end sees the real client.
//! The encoding is `ppp`'s.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};

use crate::config::ProxyProtocol;

/// The header for a connection from `peer` to `local`; `None` addresses
/// (a Unix socket source) give v1's `UNKNOWN` or v2's `LOCAL` form, which
/// tell the backend to use the connection's own addresses.
pub fn header(
    kind: ProxyProtocol,
    addresses: Option<(SocketAddr, SocketAddr)>,
) -> Vec<u8> {
    match kind {
        ProxyProtocol::V1 => {
            let addresses = match addresses {
                Some(pair) => ppp::v1::Addresses::from(pair),
                None => ppp::v1::Addresses::Unknown,
            };
            addresses.to_string().into_bytes()
        }
        ProxyProtocol::V2 => v2(addresses),
    }
}

fn v2(addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let built = match addresses {
        Some(pair) => Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            pair,
        )
        .build(),
        None => Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build(),
    };
    // Building writes into a Vec, which cannot fail; should it ever, the
    // LOCAL form's fixed 16 bytes say "use the connection's addresses".
    built.unwrap_or_else(|_| {
        let mut fixed = ppp::v2::PROTOCOL_PREFIX.to_vec();
        fixed.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        fixed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((a.parse().expect("addr"), b.parse().expect("addr")))
    }

    #[test]
    fn v1_names_both_ends() {
        let h =
            header(ProxyProtocol::V1, pair("192.0.2.7:4321", "127.0.0.1:80"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 80\r\n");
        let h = header(ProxyProtocol::V1, pair("[::1]:5", "[::2]:6"));
        assert_eq!(h, b"PROXY TCP6 ::1 ::2 5 6\r\n");
        assert_eq!(header(ProxyProtocol::V1, None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_is_binary_with_addresses() {
        let h =
            header(ProxyProtocol::V2, pair("192.0.2.7:4321", "127.0.0.1:80"));
        let mut want = ppp::v2::PROTOCOL_PREFIX.to_vec();
        // Version 2, PROXY; TCP over IPv4; 12 address bytes.
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1]);
        want.extend_from_slice(&[0x10, 0xe1, 0x00, 0x50]);
        assert_eq!(h, want);

        let local = header(ProxyProtocol::V2, None);
        assert_eq!(&local[12..], &[0x20, 0x00, 0x00, 0x00]);
    }
}
