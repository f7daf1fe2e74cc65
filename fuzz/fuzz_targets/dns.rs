#![no_main]
//! `net::dns::parse` and `parse_tcp` on arbitrary bytes: must not panic (nor
//! loop on compression pointers), and names must carry no control characters.

use libfuzzer_sys::fuzz_target;
use rigwatch_agent::net::dns;

fn check(m: &dns::DnsMessage) {
    let names = m.questions.iter().chain(m.answers.iter().map(|a| &a.name)).chain(m.answers.iter().filter_map(|a| a.cname.as_ref()));
    for n in names {
        assert!(!n.chars().any(|c| c.is_control() || c.is_ascii_uppercase()), "{n:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::parse(data) {
        check(&m);
    }
    if let Ok(m) = dns::parse_tcp(data) {
        check(&m);
    }
});
