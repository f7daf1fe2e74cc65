#![no_main]
//! `net::tls::client_hello_sni` on arbitrary bytes: must not panic, and a
//! returned name must be a lowercase host name.

use libfuzzer_sys::fuzz_target;
use rigwatch_agent::net::tls;

fuzz_target!(|data: &[u8]| {
    let _ = tls::is_tls_record_start(data);
    if let Ok(Some(name)) = tls::client_hello_sni(data) {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)), "{name:?}");
    }
});
