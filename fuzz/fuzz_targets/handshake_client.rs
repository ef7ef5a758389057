//! The client side of the handshake against a fuzzed server:
//! `client_handshake`.
//!
//! Input: a flags byte, a seed for the read/write piece sizes, then
//! either raw bytes for the whole server side, or (smart mode) the
//! server's nonce and DH value, which the harness MACs correctly with
//! the client's nonce. In smart mode the outcome is predicted exactly,
//! and on success the session keys must interoperate with the ones the
//! harness derives.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spipes::protocol::dh::{self, Y_LEN};
use spipes::protocol::handshake::{
    DH_MESSAGE_LEN, HandshakeError, NONCE_LEN, derive_dk1, derive_dk2,
    dh_value_mac,
};
use spipes::protocol::{
    ForwardSecrecy, Key, Opener, Sealer, SessionKeys, client_handshake,
};

#[path = "stream/mod.rs"]
mod stream;

use stream::{
    FuzzStream, Input, KEY_FILES, PeerRole, PeerY, RUNTIME, Script, mode,
};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let seed = u64::from_le_bytes(input.array());
    let fs = mode(flags);
    let smart = flags & 4 != 0;
    let key = Key::from_file_contents(KEY_FILES[0]);

    if !smart {
        let mut stream = FuzzStream::new(input.rest(), Script::Raw, seed);
        let result = RUNTIME.block_on(client_handshake(&mut stream, &key, fs));
        // Random bytes almost never carry a right MAC.
        if result.is_ok() {
            assert_eq!(stream.written.len(), NONCE_LEN + DH_MESSAGE_LEN);
        }
        assert!(stream.written.len() <= NONCE_LEN + DH_MESSAGE_LEN);
        return;
    }

    // Smart mode: the server uses our key, or (bit 3) another one.
    let right_key = flags & 8 == 0;
    let peer_key_file: &[u8] = if right_key {
        KEY_FILES[0]
    } else {
        KEY_FILES[1]
    };
    let flip = (
        usize::from(input.byte()),
        if flags & 0x80 != 0 { input.byte() } else { 0 },
    );
    let nonce_s: [u8; NONCE_LEN] = input.array();
    let peer_y = PeerY::pick(&mut input);
    let y_s = peer_y.value();
    let trailer = input.rest();
    let message = trailer.clone();
    let script = Script::Smart {
        role: PeerRole::Server,
        key: Key::from_file_contents(peer_key_file),
        nonce: nonce_s,
        y: Box::new(y_s),
        flip,
        trailer,
        done: false,
    };
    let mut stream = FuzzStream::new(nonce_s.to_vec(), script, seed);
    let result = RUNTIME.block_on(client_handshake(&mut stream, &key, fs));

    // The client always sends its nonce and a correctly MACed y_C.
    assert_eq!(stream.written.len(), NONCE_LEN + DH_MESSAGE_LEN);
    let nonce_c: [u8; NONCE_LEN] =
        stream.written[..NONCE_LEN].try_into().expect("32");
    let y_c: [u8; Y_LEN] = stream.written[NONCE_LEN..NONCE_LEN + Y_LEN]
        .try_into()
        .expect("256");
    let mac = &stream.written[NONCE_LEN + Y_LEN..];
    let dk1 = derive_dk1(&key, &nonce_c, &nonce_s);
    assert_eq!(mac, dh_value_mac(dk1.dhmac_c(), &y_c), "client's DH MAC");
    if fs == ForwardSecrecy::Off {
        assert!(dh::is_one(&y_c), "forward secrecy off sends y = 1");
    } else {
        assert!(dh::is_below_prime(&y_c) && !dh::is_one(&y_c));
    }

    // The outcome, predicted from the inputs alone.
    let mac_ok = flip.1 == 0 && right_key;
    let expect_ok = mac_ok
        && dh::is_below_prime(&y_s)
        && !(fs == ForwardSecrecy::Required && dh::is_one(&y_s));
    let mut client_keys = match (result, mac_ok) {
        (Ok(keys), _) => {
            assert!(expect_ok, "handshake accepted a bad server");
            keys
        }
        (Err(HandshakeError::BadMac), false) => return,
        (Err(HandshakeError::BadValue), true) => {
            assert!(!dh::is_below_prime(&y_s));
            return;
        }
        (Err(HandshakeError::ForwardSecrecyRefused), true) => {
            assert!(fs == ForwardSecrecy::Required && dh::is_one(&y_s));
            return;
        }
        (Err(e), _) => panic!("unexpected outcome {e:?} (mac ok: {mac_ok})"),
    };

    // Where the harness can know y_SC, the keys must interoperate.
    if let Some(y_sc) = peer_y.shared(&y_c, fs == ForwardSecrecy::Off) {
        let dk2 = derive_dk2(&key, &nonce_c, &nonce_s, &y_sc);
        let mut server_keys = SessionKeys {
            sealer: Sealer::new(dk2.e_s(), dk2.h_s()),
            opener: Opener::new(dk2.e_c(), dk2.h_c()),
        };
        stream::check_interop(&mut client_keys, &mut server_keys, &message);
    }
});
