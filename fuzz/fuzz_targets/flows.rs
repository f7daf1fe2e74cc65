#![no_main]
//! `net::flows::FlowTable` on packet sequences the attacker writes: a few
//! endpoints (so flows collide and both directions occur), TCP flags, gaps in
//! sequence numbers, DNS on port 53, the clock moving. Must not panic, must
//! stay bounded, and must never believe what it was not shown:
//! - a DNS answer is reported only for a query seen from the address it
//!   goes to, to the address it comes from;
//! - a stratum hit names as client the side the last handshake packet of
//!   its flow says connected (whatever the content claims), and is
//!   "inferred" only when no handshake packet was seen.

use libfuzzer_sys::fuzz_target;
use rigwatch_agent::net::flows::{Direction, FlowEvent, FlowTable, Packet, MAX_FLOWS};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

const ENDPOINTS: [&str; 6] = [
    "10.0.0.1:3333",
    "10.0.0.2:40000",
    "10.0.0.3:53",
    "10.0.0.2:40001",
    "[fd00::1]:443",
    "[fd00::2]:53",
];

fuzz_target!(|data: &[u8]| {
    let eps: Vec<SocketAddr> = ENDPOINTS.iter().map(|s| s.parse().unwrap()).collect();
    let mut t = FlowTable::new();
    let mut queried: HashSet<(SocketAddr, SocketAddr)> = HashSet::new();
    // the model: who connected, per flow, from the handshake packets
    let mut client_of: HashMap<(SocketAddr, SocketAddr), SocketAddr> = HashMap::new();
    let pair = |a: SocketAddr, b: SocketAddr| if a <= b { (a, b) } else { (b, a) };
    let mut rest = data;
    let mut clock = 0u64;
    // each packet: flags, src, dst, seq (2 bytes), clock step, length, payload
    while rest.len() >= 7 {
        let (h, tail) = rest.split_at(7);
        let len = (h[6] as usize).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let (src, dst) = (eps[h[1] as usize % eps.len()], eps[h[2] as usize % eps.len()]);
        if src == dst || src.is_ipv4() != dst.is_ipv4() {
            continue;
        }
        let p = Packet {
            src,
            dst,
            tcp: h[0] & 1 == 0,
            seq: u16::from_be_bytes([h[3], h[4]]) as u32,
            syn: h[0] & 6 == 2,
            syn_ack: h[0] & 6 == 4,
            payload,
        };
        clock += h[5] as u64 * 100;
        t.advance(clock);
        if p.tcp && p.src.port() != 53 && p.dst.port() != 53 {
            if p.syn {
                client_of.insert(pair(p.src, p.dst), p.src);
            } else if p.syn_ack {
                client_of.insert(pair(p.src, p.dst), p.dst);
            }
        }
        for ev in t.push(&p) {
            match ev {
                FlowEvent::Dns { client, server, .. } => {
                    if client == p.src {
                        queried.insert((client, server));
                    } else {
                        assert!(queried.contains(&(client, server)), "an answer to no query: {client} <- {server}");
                    }
                }
                FlowEvent::Stratum { client, server, hit } => match client_of.get(&pair(client, server)) {
                    Some(c) => {
                        assert_ne!(hit.direction, Direction::Inferred);
                        assert_eq!(client, *c, "the handshake's client");
                    }
                    None => assert_eq!(hit.direction, Direction::Inferred),
                },
                _ => {}
            }
        }
        assert!(t.len() <= MAX_FLOWS);
    }
});
