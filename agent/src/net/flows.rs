//! Flow tracking: per flow, only the first bytes of each direction are
//! kept (bounded memory, bounded number of flows) and classified — stratum
//! dialects, TLS ClientHello SNI, Stratum V2 handshake sizes — and UDP/TCP
//! DNS messages are parsed. A SOCKS4/5 or HTTP `CONNECT` preamble is
//! skipped (its destination reported), so what is tunnelled through a
//! proxy is classified like a direct stream. Pure: packets in, events out;
//! the live capture and `rigwatch pcap` both feed it.

use super::proxy::{self, Preamble};
use super::tls_session::{self, Shape};
use super::{dns, stratum, tls};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Bytes kept per direction of a flow.
pub const MAX_BYTES_PER_DIRECTION: usize = 4096;
/// Flows tracked at once; the least recently seen is dropped beyond this.
pub const MAX_FLOWS: usize = 4096;
/// DNS queries remembered while their answer is awaited.
pub const MAX_DNS_QUERIES: usize = 4096;
/// How long an answer may take to count, milliseconds.
pub const DNS_ANSWER_WITHIN_MS: u64 = 10_000;

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
    /// A TLS session whose record sizes and timing look like stratum
    /// (see [`tls_session`]); reported once per flow.
    TlsSession {
        client: SocketAddr,
        server: SocketAddr,
        sni: Option<String>,
        ja4: String,
        shape: Shape,
    },
    /// Stratum V2 handshake sizes (a weak signal).
    StratumV2 { client: SocketAddr, server: SocketAddr },
    /// The client asked a proxy (`server`) for a destination.
    Proxy {
        client: SocketAddr,
        server: SocketAddr,
        kind: proxy::Kind,
        target: proxy::Target,
    },
}

/// How the client (the miner) of a flow was told from the server (the pool).
///
/// The miner controls the content: a pool push sent to a listener would
/// make the listener look like a miner if the receiver of a push were
/// believed to be the client. So the handshake decides when it was seen,
/// and a message whose role contradicts it is [`Direction::Unsolicited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the TCP handshake (SYN / SYN-ACK): who connected to whom, and
    /// the message came from the side its role says (client messages from
    /// the connecting side, pool pushes from the accepting side).
    Handshake,
    /// From the content alone (the flow began before the capture): the
    /// sender of client messages, the receiver of pool pushes. The capture
    /// turns an inferred receiver that is a listening port into
    /// [`Direction::Unsolicited`].
    Inferred,
    /// The role contradicts the handshake (a pool push sent by the
    /// connecting side toward a listener, a client login sent by the
    /// accepting side): never evidence about a process, at most a
    /// suspicious flow. `client` is the connecting side.
    Unsolicited,
}

impl Direction {
    /// The name used in evidence and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Handshake => "handshake",
            Direction::Inferred => "inferred",
            Direction::Unsolicited => "unsolicited",
        }
    }
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
    /// How the client was told from the server.
    pub direction: Direction,
    /// Tunnelled through a proxy (`server` is the proxy): its kind and
    /// the destination the client asked it for.
    pub via: Option<(proxy::Kind, proxy::Target)>,
}

#[derive(Default)]
struct HalfFlow {
    buf: Vec<u8>,
    next_seq: Option<u32>,
    done: bool,
    first_len: Option<usize>,
    /// Where the stream proper starts in `buf` (after a proxy preamble);
    /// `None` while that is not known yet.
    skip: Option<usize>,
}

/// Whether a flow goes through a proxy, decided by its first payload.
#[derive(Debug, Clone, PartialEq)]
enum Proxied {
    /// No payload yet, or the first direction's preamble is incomplete.
    Unknown { first_dir: Option<usize> },
    /// Not a proxy preamble: both directions are classified from byte 0.
    Direct,
    /// Direction `client_dir` asked a proxy for `target`.
    Via {
        client_dir: usize,
        kind: proxy::Kind,
        target: proxy::Target,
    },
}

/// Settles what the buffers now say about a proxy preamble; the client's
/// request, once, when it completes.
fn settle_proxy(f: &mut Flow) -> Option<(usize, proxy::Kind, proxy::Target)> {
    let waiting = |d: &HalfFlow| !d.done && d.buf.len() < proxy::MAX_PREAMBLE;
    let mut asked = None;
    if let Proxied::Unknown { first_dir: Some(cd) } = f.proxied {
        match proxy::client(&f.dirs[cd].buf) {
            Preamble::More if waiting(&f.dirs[cd]) => {}
            Preamble::Client { kind, len, target } => {
                f.dirs[cd].skip = Some(len);
                f.proxied = Proxied::Via {
                    client_dir: cd,
                    kind,
                    target: target.clone(),
                };
                asked = Some((cd, kind, target));
            }
            _ => {
                f.proxied = Proxied::Direct;
                f.dirs[0].skip = Some(0);
                f.dirs[1].skip = Some(0);
            }
        }
    }
    if let Proxied::Via { client_dir, kind, .. } = f.proxied {
        let sd = &mut f.dirs[1 - client_dir];
        if sd.skip.is_none() && !sd.buf.is_empty() {
            match proxy::server(&sd.buf, kind) {
                Preamble::More if waiting(sd) => {}
                Preamble::Granted { len } => sd.skip = Some(len),
                // refused: nothing is tunnelled
                Preamble::Refused => {
                    sd.skip = Some(sd.buf.len());
                    sd.done = true;
                }
                _ => sd.skip = Some(0),
            }
        }
    }
    asked
}

struct Flow {
    /// a→b is the direction of the key's first endpoint.
    a: SocketAddr,
    b: SocketAddr,
    /// Which endpoint opened the flow, when the handshake was seen.
    client_is_a: Option<bool>,
    dirs: [HalfFlow; 2],
    reported_stratum: bool,
    reported_sni: bool,
    reported_v2: bool,
    proxied: Proxied,
    last: u64,
    /// A TLS session, once its ClientHello was read: which direction is
    /// the client's, where each direction's records end (retransmissions
    /// are not counted twice), and its running shape.
    tls: Option<Box<TlsTrack>>,
}

struct TlsTrack {
    client_dir: usize,
    ends: [Option<u32>; 2],
    session: tls_session::Session,
}

/// A DNS query awaiting its answer: (zone, transport, asker, resolver, id).
type QueryKey = (u64, bool, SocketAddr, SocketAddr, u16);

/// The flow table.
pub struct FlowTable {
    /// By (zone, lower endpoint, higher endpoint): a zone is a network
    /// namespace captured on its own (0: the host's), whose addresses may
    /// repeat another's (every namespace has its 127.0.0.1).
    flows: HashMap<(u64, SocketAddr, SocketAddr), Flow>,
    /// Outgoing DNS queries → when they were seen (ms on the table's clock).
    queries: HashMap<QueryKey, u64>,
    /// The table's clock (ms), advanced by the caller from packet times.
    now_ms: u64,
    /// DNS answers that matched no query seen (forged or unasked), ignored.
    pub dns_unsolicited: u64,
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
            queries: HashMap::new(),
            now_ms: 0,
            dns_unsolicited: 0,
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

    /// Advances the table's clock (milliseconds, any origin: the capture's
    /// monotonic clock, a capture file's timestamps). It never goes back.
    pub fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// A DNS message: a query is remembered and reported (its asker asked);
    /// an answer counts only if it answers a query seen from the address and
    /// port it is sent to, to the address and port it comes from, with the
    /// same id and question, within [`DNS_ANSWER_WITHIN_MS`]. Anyone can send
    /// a datagram that looks like an answer; only the resolver that was
    /// asked can answer the question.
    fn dns(&mut self, zone: u64, p: &Packet) -> Option<FlowEvent> {
        let m = if p.tcp { dns::parse_tcp(p.payload) } else { dns::parse(p.payload) }.ok()?;
        if !m.response {
            if self.queries.len() >= MAX_DNS_QUERIES {
                let now = self.now_ms;
                self.queries.retain(|_, t| now.saturating_sub(*t) <= DNS_ANSWER_WITHIN_MS);
                if self.queries.len() >= MAX_DNS_QUERIES {
                    // the oldest half goes: a flood of queries costs only its own
                    let mut ages: Vec<u64> = self.queries.values().copied().collect();
                    ages.sort_unstable();
                    let cut = ages[ages.len() / 2];
                    self.queries.retain(|_, t| *t > cut);
                }
            }
            self.queries.insert((zone, p.tcp, p.src, p.dst, m.id), self.now_ms);
            return Some(FlowEvent::Dns {
                client: p.src,
                server: p.dst,
                questions: m.questions,
                answers: Vec::new(),
            });
        }
        let asked = self.queries.remove(&(zone, p.tcp, p.dst, p.src, m.id));
        if asked.is_none_or(|t| self.now_ms.saturating_sub(t) > DNS_ANSWER_WITHIN_MS) {
            self.dns_unsolicited += 1;
            return None;
        }
        let answers = m.answers.iter().filter_map(|a| a.addr.map(|ip| (a.name.clone(), ip))).collect();
        Some(FlowEvent::Dns {
            client: p.dst,
            server: p.src,
            questions: m.questions,
            answers,
        })
    }

    /// Takes one packet of the host's namespace; returns what it revealed.
    pub fn push(&mut self, p: &Packet) -> Vec<FlowEvent> {
        self.push_in(0, p)
    }

    /// Takes one packet captured in `zone` (a network namespace's own
    /// capture; 0 for the host's); flows of different zones never mix.
    /// One table serves every zone, so its bounds hold for all of them.
    pub fn push_in(&mut self, zone: u64, p: &Packet) -> Vec<FlowEvent> {
        self.packets += 1;
        self.bytes += p.payload.len() as u64;
        self.tick += 1;
        let mut out = Vec::new();
        if !p.tcp || is_dns_port(p.src.port()) || is_dns_port(p.dst.port()) {
            if is_dns_port(p.src.port()) || is_dns_port(p.dst.port()) {
                out.extend(self.dns(zone, p));
            }
            return out;
        }
        let (lo, hi) = key(p.src, p.dst);
        let k = (zone, lo, hi);
        if !self.flows.contains_key(&k) {
            if p.payload.is_empty() && !p.syn && !p.syn_ack {
                return out;
            }
            if self.flows.len() >= MAX_FLOWS {
                self.evict();
            }
            self.flows.insert(
                k,
                Flow {
                    a: lo,
                    b: hi,
                    client_is_a: None,
                    dirs: Default::default(),
                    reported_stratum: false,
                    reported_sni: false,
                    reported_v2: false,
                    proxied: Proxied::Unknown { first_dir: None },
                    last: 0,
                    tls: None,
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
        let di = if from_a { 0 } else { 1 };
        // whether the sender opened the flow, when the handshake says
        let sender_is_client = f.client_is_a.map(|ca| ca == from_a);
        if f.proxied == (Proxied::Unknown { first_dir: None }) {
            // the first payload decides which side may be a proxy's client;
            // the accepting side speaking first is no proxy client
            f.proxied = if sender_is_client == Some(false) {
                f.dirs[0].skip = Some(0);
                f.dirs[1].skip = Some(0);
                Proxied::Direct
            } else {
                Proxied::Unknown { first_dir: Some(di) }
            };
        }
        // TLS application data (record type 23): sizes and timing only
        if let (Some(t), [0x17, 0x03, ..]) = (f.tls.as_deref_mut(), p.payload) {
            let end = p.seq.wrapping_add(p.payload.len() as u32);
            if t.ends[di].is_none_or(|e| seq_before(e, end)) {
                t.ends[di] = Some(end);
                if let Some(shape) = t.session.record(di == t.client_dir, p.payload.len(), self.now_ms) {
                    let (c, s) = if di == t.client_dir { (p.src, p.dst) } else { (p.dst, p.src) };
                    out.push(FlowEvent::TlsSession {
                        client: c,
                        server: s,
                        sni: t.session.sni.clone(),
                        ja4: t.session.ja4.clone(),
                        shape,
                    });
                }
            }
            return out;
        }
        let d = &mut f.dirs[di];
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
                if !d.buf.is_empty() && d.skip.is_some() {
                    d.skip = Some(0); // past the preamble: the new buffer is the stream
                }
                d.buf.clear();
                d.buf.extend_from_slice(p.payload);
            }
        }
        d.next_seq = Some(p.seq.wrapping_add(p.payload.len() as u32));
        if d.buf.len() > MAX_BYTES_PER_DIRECTION {
            d.buf.truncate(MAX_BYTES_PER_DIRECTION);
            d.done = true;
        }
        if let Some((cd, kind, target)) = settle_proxy(f) {
            let (c, s) = if (cd == 0) == (p.src == f.a) {
                (p.src, p.dst)
            } else {
                (p.dst, p.src)
            };
            out.push(FlowEvent::Proxy {
                client: c,
                server: s,
                kind,
                target,
            });
        }
        let d = &f.dirs[di];
        let Some(skip) = d.skip else { return out };
        if skip >= d.buf.len() {
            return out;
        }
        let buf = d.buf[skip..].to_vec();
        let via = match &f.proxied {
            Proxied::Via { kind, target, .. } => Some((*kind, target.clone())),
            _ => None,
        };
        if !f.reported_sni && tls::is_tls_record_start(&buf) {
            if let Ok(hello) = tls::client_hello(&buf) {
                f.reported_sni = true;
                // a ClientHello is sent by the client; one sent by the
                // accepting side is nobody's evidence
                if sender_is_client != Some(false) {
                    if let Some(name) = hello.sni.clone() {
                        out.push(FlowEvent::TlsSni {
                            client: p.src,
                            server: p.dst,
                            name,
                        });
                    }
                    f.tls = Some(Box::new(TlsTrack {
                        client_dir: di,
                        ends: [None; 2],
                        session: tls_session::Session::new(hello.sni, hello.ja4, self.now_ms),
                    }));
                }
            }
            return out;
        }
        if !f.reported_stratum {
            if let Some(hit) = stratum::classify(&buf) {
                f.reported_stratum = true;
                let (c, s, direction) = match (sender_is_client, hit.from_client) {
                    (Some(true), true) => (p.src, p.dst, Direction::Handshake),
                    (Some(false), false) => (p.dst, p.src, Direction::Handshake),
                    (Some(true), false) => (p.src, p.dst, Direction::Unsolicited),
                    (Some(false), true) => (p.dst, p.src, Direction::Unsolicited),
                    (None, true) => (p.src, p.dst, Direction::Inferred),
                    (None, false) => (p.dst, p.src, Direction::Inferred),
                };
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
                        direction,
                        via,
                    },
                });
            }
        }
        // the Stratum V2 sizes are a weak signal: only with the handshake seen
        if let (false, Some(a_client)) = (f.reported_v2, f.client_is_a) {
            if let (Some(x), Some(y)) = (f.dirs[0].first_len, f.dirs[1].first_len) {
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
                assert_eq!(hit.direction, Direction::Inferred);
            }
            other => panic!("{other:?}"),
        }
    }

    fn syn(src: &str, dst: &str) -> Packet<'static> {
        Packet {
            syn: true,
            ..pkt(src, dst, 0, b"")
        }
    }

    const PUSH: &[u8] = b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"j\",\"00\",\"01\",\"02\",[],\"20000000\",\"1d00ffff\",\"5f5e1000\",true]}\n";

    fn stratum(ev: &[FlowEvent]) -> (SocketAddr, SocketAddr, &StratumSeen) {
        match ev {
            [FlowEvent::Stratum { client, server, hit }] => (*client, *server, hit),
            other => panic!("{other:?}"),
        }
    }

    const LOGIN: &[u8] = b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0\"}}\n";

    /// Sends `parts` in order on one side of a flow, each its own segment.
    fn send(t: &mut FlowTable, src: &str, dst: &str, seq: &mut u32, data: &[u8]) -> Vec<FlowEvent> {
        let ev = t.push(&pkt(src, dst, *seq, data));
        *seq = seq.wrapping_add(data.len() as u32);
        ev
    }

    #[test]
    fn stratum_through_a_socks5_proxy_is_classified_and_its_destination_reported() {
        let (m, px) = ("127.0.0.1:40000", "127.0.0.1:1080");
        let mut t = FlowTable::new();
        t.push(&syn(m, px));
        let (mut cs, mut ss) = (1u32, 1u32);
        // greeting, method choice, request, reply: one segment each
        assert!(send(&mut t, m, px, &mut cs, &[5, 1, 0]).is_empty());
        assert!(send(&mut t, px, m, &mut ss, &[5, 0]).is_empty());
        let mut req = vec![5, 1, 0, 3, 16];
        req.extend_from_slice(b"pool.example.com");
        req.extend_from_slice(&3333u16.to_be_bytes());
        let ev = send(&mut t, m, px, &mut cs, &req);
        match &ev[..] {
            [FlowEvent::Proxy {
                client,
                server,
                kind,
                target,
            }] => {
                assert_eq!((client.port(), server.port()), (40000, 1080));
                assert_eq!((*kind, target.to_string().as_str()), (proxy::Kind::Socks5, "pool.example.com:3333"));
            }
            other => panic!("{other:?}"),
        }
        assert!(send(&mut t, px, m, &mut ss, &[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).is_empty());
        let ev = send(&mut t, m, px, &mut cs, LOGIN);
        let (client, server, hit) = stratum(&ev);
        assert_eq!((client.port(), server.port(), hit.direction), (40000, 1080, Direction::Handshake));
        assert_eq!(hit.dialect, "cryptonote");
        let (kind, target) = hit.via.clone().expect("through the proxy");
        assert_eq!((kind, target.port), (proxy::Kind::Socks5, 3333));
    }

    /// Live, the kernel filter drops the username/password step: the
    /// request follows a gap in the client's stream.
    #[test]
    fn a_socks5_request_after_an_unseen_password_step() {
        let (m, px) = ("127.0.0.1:40002", "127.0.0.1:1080");
        let mut t = FlowTable::new();
        t.push(&syn(m, px));
        let mut cs = 1u32;
        assert!(send(&mut t, m, px, &mut cs, &[5, 2, 0, 2]).is_empty());
        cs += 9; // `01 04 user 02 pw` never reached user space
        let mut req = vec![5, 1, 0, 3, 16];
        req.extend_from_slice(b"pool.example.com");
        req.extend_from_slice(&3333u16.to_be_bytes());
        let ev = send(&mut t, m, px, &mut cs, &req);
        assert!(
            matches!(&ev[..], [FlowEvent::Proxy { target, .. }] if target.to_string() == "pool.example.com:3333"),
            "{ev:?}"
        );
        let ev = send(&mut t, m, px, &mut cs, LOGIN);
        let (_, _, hit) = stratum(&ev);
        assert!(hit.via.is_some(), "{hit:?}");
    }

    #[test]
    fn a_pipelined_http_connect_and_a_pool_push_after_the_proxys_answer() {
        let (m, px) = ("10.0.0.2:40000", "10.0.0.9:8080");
        let mut t = FlowTable::new();
        let first = b"CONNECT 203.0.113.7:14444 HTTP/1.1\r\nHost: 203.0.113.7:14444\r\n\r\n".to_vec();
        let (mut cs, mut ss) = (1u32, 1u32);
        // no handshake seen; request and nothing else yet
        let ev = send(&mut t, m, px, &mut cs, &first);
        assert!(
            matches!(&ev[..], [FlowEvent::Proxy { target, .. }] if target.to_string() == "203.0.113.7:14444"),
            "{ev:?}"
        );
        let mut answer = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
        answer.extend_from_slice(PUSH);
        let ev = send(&mut t, px, m, &mut ss, &answer);
        let (client, server, hit) = stratum(&ev);
        assert_eq!(
            (client.to_string().as_str(), server.port()),
            (m, 8080),
            "the receiver of the push is the client"
        );
        assert!(!hit.from_client && hit.via.is_some());
    }

    #[test]
    fn a_refused_proxy_request_and_an_ordinary_stream_are_left_alone() {
        let (m, px) = ("127.0.0.1:40001", "127.0.0.1:1080");
        let mut t = FlowTable::new();
        let (mut cs, mut ss) = (1u32, 1u32);
        let mut req = vec![4, 1, 0x0d, 0x05, 0, 0, 0, 1, 0];
        req.extend_from_slice(b"pool.example.com\0");
        assert_eq!(send(&mut t, m, px, &mut cs, &req).len(), 1);
        // refused, then the "proxy" sends what looks like a push: not the pool's
        let mut no = vec![0, 0x5b, 0, 0, 0, 0, 0, 0];
        no.extend_from_slice(PUSH);
        assert!(send(&mut t, px, m, &mut ss, &no).is_empty());
        // an ordinary stratum flow still classifies from byte 0
        let mut t = FlowTable::new();
        let mut s = 1u32;
        let ev = send(&mut t, m, "127.0.0.1:3333", &mut s, LOGIN);
        let (_, _, hit) = stratum(&ev);
        assert!(hit.via.is_none());
    }

    #[test]
    fn a_push_sent_toward_a_listener_is_unsolicited_and_names_the_sender() {
        // the attacker (40000) connects to sshd (22) and sends a pool push
        let mut t = FlowTable::new();
        assert!(t.push(&syn("127.0.0.1:40000", "127.0.0.1:22")).is_empty());
        let ev = t.push(&pkt("127.0.0.1:40000", "127.0.0.1:22", 1, PUSH));
        let (client, server, hit) = stratum(&ev);
        assert_eq!(hit.direction, Direction::Unsolicited);
        assert_eq!(client.port(), 40000, "the connecting side");
        assert_eq!(server.port(), 22);
        // seen from the SYN-ACK only: the same
        let mut t = FlowTable::new();
        let mut sa = syn("127.0.0.1:22", "127.0.0.1:40001");
        sa.syn = false;
        sa.syn_ack = true;
        t.push(&sa);
        let ev = t.push(&pkt("127.0.0.1:40001", "127.0.0.1:22", 1, PUSH));
        assert_eq!(stratum(&ev).2.direction, Direction::Unsolicited);
    }

    #[test]
    fn a_push_from_the_accepting_side_names_the_connecting_side() {
        let mut t = FlowTable::new();
        t.push(&syn("10.0.0.2:40000", "10.0.0.1:3333"));
        let ev = t.push(&pkt("10.0.0.1:3333", "10.0.0.2:40000", 1, PUSH));
        let (client, server, hit) = stratum(&ev);
        assert_eq!((client.port(), server.port()), (40000, 3333));
        assert_eq!(hit.direction, Direction::Handshake);
    }

    #[test]
    fn a_login_sent_by_the_accepting_side_is_unsolicited() {
        // a listener the attacker runs sends a login to whoever connects
        let login = br#"{"id":1,"method":"login","params":{"login":"x","pass":"x","agent":"XMRig/6.21.0"}}
"#;
        let mut t = FlowTable::new();
        t.push(&syn("10.0.0.2:40000", "10.0.0.1:8080"));
        let ev = t.push(&pkt("10.0.0.1:8080", "10.0.0.2:40000", 1, login));
        let (client, _, hit) = stratum(&ev);
        assert_eq!(hit.direction, Direction::Unsolicited);
        assert_eq!(client.port(), 40000, "the connecting side, which sent nothing");
    }

    #[test]
    fn a_client_hello_from_the_accepting_side_is_nobodys_evidence() {
        let hello = crate::net::tls::tests_support::client_hello("pool.supportxmr.com");
        let mut t = FlowTable::new();
        t.push(&syn("10.0.0.2:40000", "10.0.0.1:443"));
        assert!(t.push(&pkt("10.0.0.1:443", "10.0.0.2:40000", 1, &hello)).is_empty());
        let mut t = FlowTable::new();
        t.push(&syn("10.0.0.2:40000", "10.0.0.1:443"));
        match &t.push(&pkt("10.0.0.2:40000", "10.0.0.1:443", 1, &hello))[..] {
            [FlowEvent::TlsSni { client, name, .. }] => {
                assert_eq!(client.port(), 40000);
                assert_eq!(name, "pool.supportxmr.com");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A TLS 1.3 application-data record of `n` bytes in all.
    fn app(n: usize) -> Vec<u8> {
        let mut r = vec![0x17, 0x03, 0x03];
        r.extend_from_slice(&((n - 5) as u16).to_be_bytes());
        r.resize(n, 0xa5);
        r
    }

    #[test]
    fn stratum_shaped_tls_is_reported_once_with_its_fingerprint() {
        let hello = crate::net::tls::tests_support::record(&crate::net::tls::tests_support::hello_msg(None));
        let (m, pool) = ("10.0.0.2:40000", "10.0.0.1:443");
        let mut t = FlowTable::new();
        t.push(&syn(m, pool));
        let (mut cs, mut ss) = (1u32, 1u32);
        assert!(send(&mut t, m, pool, &mut cs, &hello).is_empty(), "no SNI: no SNI event");
        let mut events = Vec::new();
        let mut at = |t: &mut FlowTable, ms: u64, from_miner: bool, n: usize, cs: &mut u32, ss: &mut u32| {
            t.advance(ms);
            let ev = if from_miner {
                send(t, m, pool, cs, &app(n))
            } else {
                send(t, pool, m, ss, &app(n))
            };
            events.extend(ev);
        };
        at(&mut t, 100, true, 250, &mut cs, &mut ss); // login
        at(&mut t, 130, false, 420, &mut cs, &mut ss); // its answer, the first job
        for i in 1..=6u64 {
            at(&mut t, i * 5_000, false, 352, &mut cs, &mut ss); // a job, unasked
            at(&mut t, i * 5_000 + 2_500, true, 190, &mut cs, &mut ss); // a submit
            at(&mut t, i * 5_000 + 2_530, false, 90, &mut cs, &mut ss); // accepted
        }
        // a retransmitted job is not a second push
        t.advance(40_000);
        let _ = t.push(&pkt(pool, m, ss - 90, &app(90)));
        match &events[..] {
            [FlowEvent::TlsSession {
                client,
                server,
                sni,
                ja4,
                shape,
            }] => {
                assert_eq!((client.to_string().as_str(), server.to_string().as_str()), (m, pool));
                assert_eq!(*sni, None);
                assert!(ja4.starts_with("t12i0100"), "{ja4}");
                assert_eq!((shape.pushes, shape.push_bytes, shape.push_interval_ms), (4, [352, 352], 5_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_records_without_a_client_hello_seen_are_not_judged() {
        // a session already running when the capture started: no hello, no
        // fingerprint, nothing claimed
        let (m, pool) = ("10.0.0.2:40000", "10.0.0.1:443");
        let mut t = FlowTable::new();
        let (mut cs, mut ss) = (1u32, 1u32);
        for i in 1..=20u64 {
            t.advance(i * 5_000);
            assert!(send(&mut t, pool, m, &mut ss, &app(352)).is_empty());
            t.advance(i * 5_000 + 2_500);
            assert!(send(&mut t, m, pool, &mut cs, &app(190)).is_empty());
            assert!(send(&mut t, pool, m, &mut ss, &app(90)).is_empty());
        }
    }

    fn udp<'a>(src: &str, dst: &str, payload: &'a [u8]) -> Packet<'a> {
        Packet {
            tcp: false,
            ..pkt(src, dst, 0, payload)
        }
    }

    #[test]
    fn a_dns_answer_counts_only_for_a_query_seen() {
        let (q, a) = crate::net::dns::tests_support::query_and_answer(0x4242, "pool.supportxmr.com", [127, 0, 0, 77]);
        // forged: no query was seen
        let mut t = FlowTable::new();
        assert!(t.push(&udp("127.0.0.1:53", "127.0.0.1:41000", &a)).is_empty());
        assert_eq!(t.dns_unsolicited, 1);
        // asked from another port, or of another resolver: still forged
        t.push(&udp("127.0.0.1:41001", "127.0.0.53:53", &q));
        assert!(t.push(&udp("127.0.0.53:53", "127.0.0.1:41000", &a)).is_empty());
        assert!(t.push(&udp("127.0.0.1:53", "127.0.0.1:41001", &a)).is_empty());
        // the real answer, within the time
        match &t.push(&udp("127.0.0.53:53", "127.0.0.1:41001", &a))[..] {
            [FlowEvent::Dns { client, answers, .. }] => {
                assert_eq!(client.port(), 41001);
                assert_eq!(answers[0].1.to_string(), "127.0.0.77");
            }
            other => panic!("{other:?}"),
        }
        // answered once: a replay is forged
        assert!(t.push(&udp("127.0.0.53:53", "127.0.0.1:41001", &a)).is_empty());
        // too late
        t.push(&udp("127.0.0.1:41002", "127.0.0.53:53", &q));
        t.advance(DNS_ANSWER_WITHIN_MS + 1);
        assert!(t.push(&udp("127.0.0.53:53", "127.0.0.1:41002", &a)).is_empty());
        assert_eq!(t.dns_unsolicited, 5);
    }

    #[test]
    fn remembered_queries_are_bounded() {
        let (q, _) = crate::net::dns::tests_support::query_and_answer(1, "example.com", [127, 0, 0, 1]);
        let mut t = FlowTable::new();
        for i in 0..(MAX_DNS_QUERIES as u32 * 3) {
            let src = format!("10.{}.{}.{}:4000", i >> 16 & 255, i >> 8 & 255, i & 255);
            t.push(&udp(&src, "10.0.0.53:53", &q));
            assert!(t.queries.len() <= MAX_DNS_QUERIES);
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
        // the right sizes without the handshake: nothing (a weak signal)
        let mut t = FlowTable::new();
        t.push(&pkt("10.0.0.2:40003", "10.0.0.1:34254", 1, &[0x5au8; 64]));
        assert!(t.push(&pkt("10.0.0.1:34254", "10.0.0.2:40003", 1, &[0xa5u8; 234])).is_empty());
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
