#![no_main]
//! `net::stratum::classify` on arbitrary bytes: must not panic, and a hit
//! must carry no control characters in the fields it copied from the input.

use libfuzzer_sys::fuzz_target;
use rigwatch_agent::net::stratum;

fuzz_target!(|data: &[u8]| {
    if let Some(hit) = stratum::classify(data) {
        for f in [&hit.agent, &hit.login, &hit.worker].into_iter().flatten() {
            assert!(!f.is_empty() && !f.chars().any(char::is_control), "{hit:?}");
        }
        assert!(!hit.method.is_empty());
    }
    if data.len() >= 2 {
        let _ = stratum::stratum_v2_handshake(data[0] as usize, data[1] as usize * 4, u16::from(data[0]) << 8);
    }
});
