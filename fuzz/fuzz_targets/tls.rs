#![no_main]
//! `net::tls::client_hello` on arbitrary bytes: must not panic, a returned
//! name must be a lowercase host name, and the JA4 fingerprint must have
//! its fixed shape (`t` + 9 characters, `_`, 12 hex, `_`, 12 hex).

use libfuzzer_sys::fuzz_target;
use rigwatch_agent::net::tls;

fuzz_target!(|data: &[u8]| {
    let _ = tls::is_tls_record_start(data);
    if let Ok(hello) = tls::client_hello(data) {
        if let Some(name) = &hello.sni {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)), "{name:?}");
        }
        let j = &hello.ja4;
        assert_eq!(j.len(), 36, "{j}");
        assert!(j.is_ascii() && j.starts_with('t') && &j[10..11] == "_" && &j[23..24] == "_", "{j}");
        assert!(j[11..23].bytes().chain(j[24..].bytes()).all(|b| b.is_ascii_hexdigit()), "{j}");
    }
});
