//! The server side of the handshake against a fuzzed client:
//! `server_handshake_start`, then `ProvenClient::finish` on success.
//!
//! Input: a flags byte, a seed for the read/write piece sizes, then
//! either raw bytes for the whole client side, or (smart mode) the
//! client's nonce and DH value, which the harness MACs correctly with
//! the server's nonce so that the checks after the MAC run. In smart
//! mode the outcome is predicted exactly, and on success the session
//! keys must interoperate with the ones the harness derives.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use spipes::protocol::dh::{self, Y_LEN};
use spipes::protocol::handshake::{
    DH_MESSAGE_LEN, HandshakeError, NONCE_LEN, derive_dk1, derive_dk2,
    dh_value_mac,
};
use spipes::protocol::{
    ForwardSecrecy, Key, Opener, Sealer, SessionKeys, server_handshake_start,
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
    // 0 to 3 keys: none at all must fail with a bad MAC.
    let key_count = usize::from((flags >> 3) & 3);
    let keys: Vec<Arc<Key>> = KEY_FILES[..key_count.min(KEY_FILES.len())]
        .iter()
        .map(|k| Arc::new(Key::from_file_contents(k)))
        .collect();

    if !smart {
        let mut stream = FuzzStream::new(input.rest(), Script::Raw, seed);
        RUNTIME.block_on(async {
            if let Ok(proven) =
                server_handshake_start(&mut stream, &keys, fs).await
            {
                // Random bytes almost never carry a right MAC; if they
                // do, the rest of the handshake must run cleanly.
                proven.finish(&mut stream).await.expect("finish");
            }
        });
        assert!(stream.written.len() <= NONCE_LEN + DH_MESSAGE_LEN);
        return;
    }

    // Smart mode: which key the client uses (3 is never one of ours).
    let peer_index = usize::from((flags >> 5) & 3);
    let peer_key_file: &[u8] =
        KEY_FILES.get(peer_index).copied().unwrap_or(b"other");
    let flip = (
        usize::from(input.byte()),
        if flags & 0x80 != 0 { input.byte() } else { 0 },
    );
    let nonce_c: [u8; NONCE_LEN] = input.array();
    let peer_y = PeerY::pick(&mut input);
    let y_c = peer_y.value();
    let trailer = input.rest();
    let message = trailer.clone();
    let script = Script::Smart {
        role: PeerRole::Client,
        key: Key::from_file_contents(peer_key_file),
        nonce: nonce_c,
        y: Box::new(y_c),
        flip,
        trailer,
        done: false,
    };
    let mut stream = FuzzStream::new(nonce_c.to_vec(), script, seed);

    let (started, finished) = RUNTIME.block_on(async {
        match server_handshake_start(&mut stream, &keys, fs).await {
            Ok(proven) => {
                let index = proven.key_index();
                let keys = proven.finish(&mut stream).await.expect("finish");
                (Ok(index), Some(keys))
            }
            Err(e) => (Err(e), None),
        }
    });

    // The outcome, predicted from the inputs alone.
    let mac_ok = flip.1 == 0 && peer_index < key_count;
    let expect_ok = mac_ok
        && dh::is_below_prime(&y_c)
        && !(fs == ForwardSecrecy::Required && dh::is_one(&y_c));
    match (&started, mac_ok) {
        (Ok(index), _) => {
            assert!(expect_ok, "handshake accepted a bad client");
            assert_eq!(*index, peer_index, "the key that matched");
        }
        (Err(HandshakeError::BadMac), false) => {}
        (Err(HandshakeError::BadValue), true) => {
            assert!(!dh::is_below_prime(&y_c));
        }
        (Err(HandshakeError::ForwardSecrecyRefused), true) => {
            assert!(fs == ForwardSecrecy::Required && dh::is_one(&y_c));
        }
        (Err(e), _) => panic!("unexpected outcome {e:?} (mac ok: {mac_ok})"),
    }

    let Some(mut server_keys) = finished else {
        // Nothing that depends on a key was sent.
        assert_eq!(stream.written.len(), NONCE_LEN);
        return;
    };

    // The server sent its nonce and a correctly MACed y_S.
    assert_eq!(stream.written.len(), NONCE_LEN + DH_MESSAGE_LEN);
    let nonce_s: [u8; NONCE_LEN] =
        stream.written[..NONCE_LEN].try_into().expect("32");
    let y_s: [u8; Y_LEN] = stream.written[NONCE_LEN..NONCE_LEN + Y_LEN]
        .try_into()
        .expect("256");
    let mac = &stream.written[NONCE_LEN + Y_LEN..];
    let peer_key = Key::from_file_contents(peer_key_file);
    let dk1 = derive_dk1(&peer_key, &nonce_c, &nonce_s);
    assert_eq!(mac, dh_value_mac(dk1.dhmac_s(), &y_s), "server's DH MAC");
    if fs == ForwardSecrecy::Off {
        assert!(dh::is_one(&y_s), "forward secrecy off sends y = 1");
    } else {
        assert!(dh::is_below_prime(&y_s) && !dh::is_one(&y_s));
    }

    // Where the harness can know y_SC, the keys must interoperate.
    if let Some(y_sc) = peer_y.shared(&y_s, fs == ForwardSecrecy::Off) {
        let dk2 = derive_dk2(&peer_key, &nonce_c, &nonce_s, &y_sc);
        let mut client_keys = SessionKeys {
            sealer: Sealer::new(dk2.e_c(), dk2.h_c()),
            opener: Opener::new(dk2.e_s(), dk2.h_s()),
        };
        stream::check_interop(&mut client_keys, &mut server_keys, &message);
    }
});
