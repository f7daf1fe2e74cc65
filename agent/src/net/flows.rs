//! Flow tracking: per flow, only the first bytes of each direction are
//! kept (bounded memory, bounded number of flows) and classified — stratum
//! dialects, TLS ClientHello SNI, Stratum V2 handshake sizes — and UDP/TCP
//! DNS messages are parsed. Pure: packets in, events out; the live capture
//! and `rigwatch pcap` both feed it.

use super::{dns, stratum, tls};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Bytes kept per direction of a flow.
pub const MAX_BYTES_PER_DIRECTION: usize = 4096;
/// Flows tracked at once; the least recently seen is dropped beyond this.
pub const MAX_FLOWS: usize = 4096;

/// One transport-layer packet (already parsed out of its frame).
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Source endpoint.
    pub src: SocketAddr,
    /// Destination endpoint.
    pub dst: SocketAddr,
    /// TCP (true) or UDP.
    pub tcp: bool,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// TCP SYN flag set (the sender is the client).
    pub syn: bool,
    /// TCP SYN+ACK (the sender is the server).
    pub syn_ack: bool,
    /// Transport payload.
    pub payload: &'a [u8],
}

/// What the flow tracker saw. `client` is the side that opened the flow
/// (the miner), `server` the other (the pool).
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// A mining protocol.
    Stratum {
        client: SocketAddr,
        server: SocketAddr,
        hit: StratumSeen,
    },
    /// A TLS ClientHello with a server name.
    TlsSni {
        client: SocketAddr,
        server: SocketAddr,
        name: String,
    },
    /// A DNS message (query or answer); `client` asked, `server` answered.
    Dns {
        client: SocketAddr,
        server: SocketAddr,
        questions: Vec<String>,
        answers: Vec<(String, std::net::IpAddr)>,
    },
    /// Stratum V2 handshake sizes (a weak signal).
    StratumV2 { client: SocketAddr, server: SocketAddr },
}

/// The owned form of a stratum classification.
#[derive(Debug, Clone, PartialEq)]
pub struct StratumSeen {
    /// Dialect name.
    pub dialect: String,
    /// Method that gave it away.
    pub method: String,
    /// Miner agent string.
    pub agent: Option<String>,
    /// Login / wallet.
    pub login: Option<String>,
    /// Worker name.
    pub worker: Option<String>,
    /// Seen in what the client sent (true) or what the pool sent.
    pub from_client: bool,
}

#[derive(Default)]
struct Direction {
    buf: Vec<u8>,
    next_seq: Option<u32>,
    done: bool,
    first_len: Option<usize>,
}

struct Flow {
    /// a→b is the direction of the key's first endpoint.
    a: SocketAddr,
    b: SocketAddr,
    /// Which endpoint opened the flow, when known (SYN seen or inferred).
    client_is_a: Option<bool>,
    dirs: [Direction; 2],
    reported_stratum: bool,
    reported_sni: bool,
    reported_v2: bool,
    last: u64,
}

/// The flow table.
pub struct FlowTable {
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
    tick: u64,
    /// Packets pushed.
    pub packets: u64,
    /// Payload bytes looked at.
    pub bytes: u64,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::new()
    }
}

fn key(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

fn is_dns_port(p: u16) -> bool {
    p == 53 || p == 5353
}

impl FlowTable {
    /// An empty table.
    pub fn new() -> Self {
        FlowTable {
            flows: HashMap::new(),
            tick: 0,
            packets: 0,
            bytes: 0,
        }
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes one packet; returns what it revealed.
    pub fn push(&mut self, p: &Packet) -> Vec<FlowEvent> {
        self.packets += 1;
        self.bytes += p.payload.len() as u64;
        self.tick += 1;
        let mut out = Vec::new();
        if !p.tcp || is_dns_port(p.src.port()) || is_dns_port(p.dst.port()) {
            if is_dns_port(p.src.port()) || is_dns_port(p.dst.port()) {
                let msg = if p.tcp { dns::parse_tcp(p.payload) } else { dns::parse(p.payload) };
                if let Ok(m) = msg {
                    let (client, server) = if m.response { (p.dst, p.src) } else { (p.src, p.dst) };
                    let answers = m.answers.iter().filter_map(|a| a.addr.map(|ip| (a.name.clone(), ip))).collect();
                    out.push(FlowEvent::Dns {
                        client,
                        server,
                        questions: m.questions.clone(),
                        answers,
                    });
                }
            }
            return out;
        }
        let k = key(p.src, p.dst);
        if !self.flows.contains_key(&k) {
            if p.payload.is_empty() && !p.syn {
                return out;
            }
            if self.flows.len() >= MAX_FLOWS {
                self.evict();
            }
            self.flows.insert(
                k,
                Flow {
                    a: k.0,
                    b: k.1,
                    client_is_a: None,
                    dirs: Default::default(),
                    reported_stratum: false,
                    reported_sni: false,
                    reported_v2: false,
                    last: 0,
                },
            );
        }
        let tick = self.tick;
        let f = self.flows.get_mut(&k).expect("inserted above");
        f.last = tick;
        let from_a = p.src == f.a;
        if p.syn && !p.syn_ack {
            f.client_is_a = Some(from_a);
        } else if p.syn_ack {
            f.client_is_a = Some(!from_a);
        }
        if p.payload.is_empty() {
            return out;
        }
        let d = &mut f.dirs[if from_a { 0 } else { 1 }];
        if d.first_len.is_none() {
            d.first_len = Some(p.payload.len());
        }
        if d.done {
            return out;
        }
        // Reassemble in order; a gap (a segment the capture filter dropped, or
        // loss) starts a fresh buffer, since the next line starts a segment.
        match d.next_seq {
            Some(n) if p.seq == n => d.buf.extend_from_slice(p.payload),
            Some(n) if seq_before(p.seq, n) => return out, // retransmission
            _ => {
                d.buf.clear();
                d.buf.extend_from_slice(p.payload);
            }
        }
        d.next_seq = Some(p.seq.wrapping_add(p.payload.len() as u32));
        if d.buf.len() > MAX_BYTES_PER_DIRECTION {
            d.buf.truncate(MAX_BYTES_PER_DIRECTION);
            d.done = true;
        }
        let buf = d.buf.clone();
        // the sender is taken as the client until a SYN says otherwise
        let (client, server) = match f.client_is_a {
            Some(true) => (f.a, f.b),
            Some(false) => (f.b, f.a),
            None => (p.src, p.dst),
        };
        if !f.reported_sni && tls::is_tls_record_start(&buf) {
            if let Ok(Some(name)) = tls::client_hello_sni(&buf) {
                f.reported_sni = true;
                // a ClientHello is sent by the client
                out.push(FlowEvent::TlsSni { client, server, name });
            }
            return out;
        }
        if !f.reported_stratum {
            if let Some(hit) = stratum::classify(&buf) {
                f.reported_stratum = true;
                let (c, s) = match f.client_is_a {
                    Some(_) => (client, server),
                    None if hit.from_client => (p.src, p.dst),
                    None => (p.dst, p.src),
                };
                if f.client_is_a.is_none() {
                    f.client_is_a = Some(c == f.a);
                }
                out.push(FlowEvent::Stratum {
                    client: c,
                    server: s,
                    hit: StratumSeen {
                        dialect: hit.dialect.to_string(),
                        method: hit.method,
                        agent: hit.agent,
                        login: hit.login,
                        worker: hit.worker,
                        from_client: hit.from_client,
                    },
                });
            }
        }
        if !f.reported_v2 {
            if let (Some(x), Some(y)) = (f.dirs[0].first_len, f.dirs[1].first_len) {
                let a_client = f.client_is_a.unwrap_or(true);
                let (cl, sl) = if a_client { (x, y) } else { (y, x) };
                let server_port = if a_client { f.b.port() } else { f.a.port() };
                if stratum::stratum_v2_handshake(cl, sl, server_port) {
                    f.reported_v2 = true;
                    let (c, s) = if a_client { (f.a, f.b) } else { (f.b, f.a) };
                    out.push(FlowEvent::StratumV2 { client: c, server: s });
                }
            }
        }
        out
    }

    fn evict(&mut self) {
        // drop the oldest eighth at once, so eviction is rare
        let mut ages: Vec<u64> = self.flows.values().map(|f| f.last).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 8];
        self.flows.retain(|_, f| f.last > cut);
    }
}

fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt<'a>(src: &str, dst: &str, seq: u32, payload: &'a [u8]) -> Packet<'a> {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            tcp: true,
            seq,
            syn: false,
            syn_ack: false,
            payload,
        }
    }

    #[test]
    fn split_line_is_reassembled() {
        let mut t = FlowTable::new();
        let a = br#"{"id":1,"jsonrpc":"2.0","method":"lo"#;
        let b = br#"gin","params":{"login":"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A","pass":"x","agent":"XMRig/6.21.0"}}
"#;
        assert!(t.push(&pkt("10.0.0.2:40000", "10.0.0.1:3333", 100, a)).is_empty());
        let ev = t.push(&pkt("10.0.0.2:40000", "10.0.0.1:3333", 100 + a.len() as u32, b));
        match &ev[..] {
            [FlowEvent::Stratum { client, server, hit }] => {
                assert_eq!(client.to_string(), "10.0.0.2:40000");
                assert_eq!(server.port(), 3333);
                assert_eq!(hit.dialect, "cryptonote");
                assert!(hit.agent.as_deref().unwrap().starts_with("XMRig/"));
            }
            other => panic!("{other:?}"),
        }
        // reported once per flow
        assert!(t.push(&pkt("10.0.0.2:40000", "10.0.0.1:3333", 9999, b)).is_empty());
    }

    #[test]
    fn pool_push_marks_the_other_side_as_client() {
        let mut t = FlowTable::new();
        let push = b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"j\",\"00\",\"01\",\"02\",[],\"20000000\",\"1d00ffff\",\"5f5e1000\",true]}\n";
        let ev = t.push(&pkt("10.0.0.1:3333", "10.0.0.2:40000", 7, push));
        match &ev[..] {
            [FlowEvent::Stratum { client, hit, .. }] => {
                assert_eq!(client.to_string(), "10.0.0.2:40000");
                assert!(!hit.from_client);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stratum_v2_handshake_sizes_on_its_port() {
        let mut t = FlowTable::new();
        let mut syn = pkt("10.0.0.2:40001", "10.0.0.1:34254", 0, b"");
        syn.syn = true;
        assert!(t.push(&syn).is_empty());
        let hello = [0x5au8; 64];
        assert!(t.push(&pkt("10.0.0.2:40001", "10.0.0.1:34254", 1, &hello)).is_empty());
        let answer = [0xa5u8; 234];
        match &t.push(&pkt("10.0.0.1:34254", "10.0.0.2:40001", 1, &answer))[..] {
            [FlowEvent::StratumV2 { client, server }] => {
                assert_eq!(client.to_string(), "10.0.0.2:40001");
                assert_eq!(server.port(), 34254);
            }
            other => panic!("{other:?}"),
        }
        // other sizes on an ordinary port are nothing
        let mut t = FlowTable::new();
        t.push(&pkt("10.0.0.2:40002", "10.0.0.1:443", 1, &[0x5au8; 100]));
        assert!(t.push(&pkt("10.0.0.1:443", "10.0.0.2:40002", 1, &[0xa5u8; 234])).is_empty());
    }

    #[test]
    fn bounded_flows_and_bytes() {
        let mut t = FlowTable::new();
        let junk = vec![b'x'; 1000];
        for i in 0..(MAX_FLOWS as u32 + 500) {
            let src = format!("10.1.{}.{}:{}", i / 250 % 250, i % 250, 1024 + i % 60000);
            for s in 0..10 {
                t.push(&pkt(&src, "10.0.0.1:80", s * 1000, &junk));
            }
        }
        assert!(t.len() <= MAX_FLOWS);
        assert!(t
            .flows
            .values()
            .all(|f| f.dirs.iter().all(|d| d.buf.len() <= MAX_BYTES_PER_DIRECTION)));
    }
}
