#![no_main]
//! `pcap::read_one` (pcap and pcapng), the link-layer decoding and the flow
//! table on arbitrary capture files: must not panic, and every packet it
//! hands over must lie inside the input.

use libfuzzer_sys::fuzz_target;
use rigwatch_agent::net::classify::parse_ip;
use rigwatch_agent::net::flows::FlowTable;
use rigwatch_agent::pcap::{frame_to_ip, read_one};

fuzz_target!(|data: &[u8]| {
    let mut table = FlowTable::new();
    let mut total = 0usize;
    let _ = read_one(data, &mut |linktype, at, frame| {
        total += frame.len();
        assert!(total <= data.len() * 2 + 64, "more bytes handed over than read");
        table.advance(at.as_millis() as u64);
        if let Some(p) = frame_to_ip(linktype, frame).and_then(parse_ip) {
            table.push(&p);
        }
    });
});
