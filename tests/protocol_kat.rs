//! Known-answer tests of the spiped protocol, from the vectors in
//! `tests/data/spiped-kat.json` (checked against the real spiped 1.6).

use spipes::protocol::dh::{PrivateValue, Y_LEN, Y_ONE};
use spipes::protocol::handshake::{
    Dk2, NONCE_LEN, derive_dk1, derive_dk2, dh_value_mac,
};
use spipes::protocol::{Key, Opener, PACKET_LEN, PacketError, Sealer};

const VECTORS: &str = include_str!("data/spiped-kat.json");

/// Looks up one string value in the flat JSON object of the vectors.
fn field(name: &str) -> &'static str {
    let needle = format!("\"{name}\":");
    let at = VECTORS
        .find(&needle)
        .unwrap_or_else(|| panic!("vector {name} is missing"));
    let rest = VECTORS[at + needle.len()..].trim_start();
    let rest = rest.strip_prefix('"').expect("vector values are strings");
    let end = rest.find('"').expect("vector strings are closed");
    &rest[..end]
}

/// Decodes a vector's hex value.
fn hex(name: &str) -> Vec<u8> {
    let pairs = field(name).as_bytes().chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "{name} has an odd length");
    pairs
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII hex");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect()
}

/// Decodes a vector's hex value of a known length.
fn hex_array<const N: usize>(name: &str) -> [u8; N] {
    hex(name)
        .try_into()
        .unwrap_or_else(|_| panic!("{name} is not {N} bytes"))
}

fn key() -> Key {
    Key::from_file_contents(&hex("key_file"))
}

fn nonces() -> ([u8; NONCE_LEN], [u8; NONCE_LEN]) {
    (hex_array("nonce_client"), hex_array("nonce_server"))
}

fn private(name: &str) -> PrivateValue {
    PrivateValue::from_bytes(&hex_array(name))
}

/// dk2 from the vectors' nonces and the given shared value.
fn dk2_with(y_sc: &[u8; Y_LEN]) -> Dk2 {
    let (nonce_c, nonce_s) = nonces();
    derive_dk2(&key(), &nonce_c, &nonce_s, y_sc)
}

/// dk2 with forward secrecy on: from the vectors' `shared_y_sc`.
fn full_dk2() -> Dk2 {
    dk2_with(&hex_array("shared_y_sc"))
}

/// dk2 with forward secrecy off: `y_SC = 1`.
fn fast_dk2() -> Dk2 {
    dk2_with(&Y_ONE)
}

#[test]
fn key_from_key_file() {
    assert_eq!(key().as_bytes().to_vec(), hex("K"));
}

#[test]
fn dk1_gives_dhmacs() {
    let (nonce_c, nonce_s) = nonces();
    let dk1 = derive_dk1(&key(), &nonce_c, &nonce_s);
    assert_eq!(dk1.dhmac_c().to_vec(), hex("dhmac_client"));
    assert_eq!(dk1.dhmac_s().to_vec(), hex("dhmac_server"));
}

#[test]
fn exponent_rule_is_as_stated() {
    assert_eq!(
        field("dh_exponent_rule"),
        "exponent = 2^258 + big-endian integer of the 32-byte private value"
    );
}

#[test]
fn public_values_from_private_values() {
    let y_c = private("dh_private_client").public_value();
    let y_s = private("dh_private_server").public_value();
    assert_eq!(y_c.to_vec(), hex("y_client"));
    assert_eq!(y_s.to_vec(), hex("y_server"));
}

#[test]
fn public_value_macs() {
    let dhmac_c = hex_array("dhmac_client");
    let dhmac_s = hex_array("dhmac_server");
    let y_c = hex_array("y_client");
    let y_s = hex_array("y_server");
    assert_eq!(dh_value_mac(&dhmac_c, &y_c).to_vec(), hex("y_client_mac"));
    assert_eq!(dh_value_mac(&dhmac_s, &y_s).to_vec(), hex("y_server_mac"));
}

#[test]
fn shared_value_both_ways() {
    let want = hex("shared_y_sc");
    let client = private("dh_private_client");
    let server = private("dh_private_server");
    let from_client = client.shared_value(&hex_array("y_server"));
    let from_server = server.shared_value(&hex_array("y_client"));
    assert_eq!(from_client.to_vec(), want);
    assert_eq!(from_server.to_vec(), want);
}

#[test]
fn dk2_from_shared_value() {
    assert_eq!(full_dk2().as_bytes().to_vec(), hex("dk2"));
}

#[test]
fn fast_dk2_from_y_one() {
    assert_eq!(fast_dk2().as_bytes().to_vec(), hex("fast_dk2"));
}

/// Seals each plaintext in turn with the given keys and checks that the
/// packets are the vectors, then opens the vectors back.
fn check_stream(enc: &[u8; 32], mac: &[u8; 32], names: &[&str]) {
    let mut sealer = Sealer::new(enc, mac);
    let mut opener = Opener::new(enc, mac);

    for name in names {
        let plaintext = hex(&format!("{name}_plaintext"));
        let want = hex(name);
        let mut sealed = Vec::new();
        sealer.seal(&plaintext, &mut sealed);
        assert_eq!(sealed, want, "sealing {name}");

        let packet: &[u8; PACKET_LEN] =
            want.as_slice().try_into().expect("a vector is one packet");
        let mut opened = Vec::new();
        opener.open(packet, &mut opened).expect("the vector opens");
        assert_eq!(opened, plaintext, "opening {name}");
    }
}

#[test]
fn client_packets_0_and_1() {
    let dk2 = full_dk2();
    let names = ["client_packet_0", "client_packet_1"];
    check_stream(dk2.e_c(), dk2.h_c(), &names);
}

#[test]
fn server_packet_0() {
    let dk2 = full_dk2();
    check_stream(dk2.e_s(), dk2.h_s(), &["server_packet_0"]);
}

#[test]
fn fast_client_packet_0() {
    let dk2 = fast_dk2();
    check_stream(dk2.e_c(), dk2.h_c(), &["fast_client_packet_0"]);
}

#[test]
fn packet_1_does_not_open_as_packet_0() {
    let dk2 = full_dk2();
    let mut opener = Opener::new(dk2.e_c(), dk2.h_c());
    let packet = hex_array::<PACKET_LEN>("client_packet_1");
    let r = opener.open(&packet, &mut Vec::new());
    assert_eq!(r, Err(PacketError::BadMac));
}

#[test]
fn directions_do_not_mix() {
    // A client packet does not open with the server's keys.
    let dk2 = full_dk2();
    let mut opener = Opener::new(dk2.e_s(), dk2.h_s());
    let packet = hex_array::<PACKET_LEN>("client_packet_0");
    let r = opener.open(&packet, &mut Vec::new());
    assert_eq!(r, Err(PacketError::BadMac));
}
