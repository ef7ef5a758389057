//! `Address::parse` on arbitrary text. What parses must print back to a
//! form that parses to the same address, and a Unix path must fit in a
//! socket address.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spipes::address::Address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(address) = Address::parse(text) else {
        return;
    };
    let shown = address.to_string();
    let again = Address::parse(&shown).expect("the printed form parses");
    assert_eq!(again, address, "printing and parsing again changed it");
    match &address {
        Address::Unix(path) => {
            assert!(path.as_os_str().len() <= 107);
            assert!(path.is_absolute());
        }
        Address::Tcp { host, port } => {
            assert!(*port != 0);
            assert!(!host.is_empty());
        }
    }
});
