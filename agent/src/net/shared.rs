//! State the network sensors share: pool addresses learned from DNS
//! answers, the owners of recent TCP connections (recorded by the kernel at
//! connect time), and flow evidence waiting to be attributed to a process.
//! The capture and connect-trace threads write; sensors read.

use rigwatch_signatures::Evidence;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an address from a pool domain's DNS answer stays evidence.
pub const DNS_MEMORY: Duration = Duration::from_secs(3600);
/// Most addresses remembered.
pub const MAX_DNS: usize = 16_384;
/// Most flow findings waiting for attribution.
const MAX_PENDING: usize = 4_096;
/// How long a connection's owner is remembered (a finding is attributed at
/// the next pass or the one after).
pub const CONNECT_MEMORY: Duration = Duration::from_secs(300);
/// Most connection owners remembered.
pub const MAX_CONNECTS: usize = 16_384;

/// The process that opened a TCP connection, as the kernel saw it when the
/// connection was made (the connect-trace sensor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOwner {
    pub pid: u32,
    pub uid: u32,
    /// The process's start, nanoseconds since boot.
    pub start_ns: u64,
    pub comm: String,
    /// The network namespace's inode.
    pub netns: u32,
}

/// Evidence about a flow, waiting to be attributed to the process that owns
/// the client socket.
#[derive(Debug, Clone)]
pub struct FlowFinding {
    /// The client (miner) side.
    pub client: SocketAddr,
    /// The server (pool) side.
    pub server: SocketAddr,
    /// TCP or UDP.
    pub tcp: bool,
    /// What was seen.
    pub evidence: Evidence,
    /// The client socket's inode, when it could be looked up at capture time.
    pub inode: Option<u64>,
    /// The client side is known (not an unsolicited push whose sender only
    /// claims a side): its process may be looked up by the 4-tuple.
    pub attributable: bool,
    /// Passes that could not yet find the socket's process (it may be newer
    /// than the pass's snapshot).
    pub tries: u8,
}

/// A pool address learned from a DNS answer.
struct Learned {
    domain: String,
    /// When the answer was seen.
    at: Instant,
    /// When it was last looked up or learned again (for eviction).
    used: Instant,
}

#[derive(Default)]
struct Inner {
    dns: HashMap<IpAddr, Learned>,
    connects: HashMap<(SocketAddr, SocketAddr), (ConnectOwner, Instant)>,
    connects_evicted: u64,
    pending: Vec<FlowFinding>,
    dropped: u64,
}

/// Makes room in a full table: the entries older than `memory` go, then,
/// if it is still full, the eighth least recently used (never the whole
/// table: a flood cannot make the agent forget everything at once).
fn make_room<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, max: usize, memory: Duration, at: impl Fn(&V) -> (Instant, Instant)) {
    if map.len() < max {
        return;
    }
    let now = Instant::now();
    map.retain(|_, v| now.duration_since(at(v).0) < memory);
    if map.len() >= max {
        let mut used: Vec<Instant> = map.values().map(|v| at(v).1).collect();
        used.sort_unstable();
        let cut = used[used.len() / 8];
        map.retain(|_, v| at(v).1 > cut);
    }
}

/// Shared network state.
#[derive(Default)]
pub struct NetShared {
    inner: Mutex<Inner>,
}

impl NetShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that `ip` answered for pool domain `domain`. Beyond
    /// [`MAX_DNS`] addresses the expired ones go, then the least recently
    /// used eighth (never the whole table: a flood of answers cannot make
    /// the agent forget the pool a miner is using).
    pub fn learn_dns(&self, ip: IpAddr, domain: &str) {
        let mut g = self.lock();
        let now = Instant::now();
        if !g.dns.contains_key(&ip) {
            make_room(&mut g.dns, MAX_DNS, DNS_MEMORY, |l| (l.at, l.used));
        }
        g.dns.insert(
            ip,
            Learned {
                domain: domain.to_string(),
                at: now,
                used: now,
            },
        );
    }

    /// The pool domain `ip` was learned for, if still remembered.
    pub fn dns_learned(&self, ip: IpAddr) -> Option<String> {
        let mut g = self.lock();
        let l = g.dns.get_mut(&ip).filter(|l| l.at.elapsed() < DNS_MEMORY)?;
        l.used = Instant::now();
        Some(l.domain.clone())
    }

    /// Addresses remembered now.
    pub fn dns_len(&self) -> usize {
        self.lock().dns.len()
    }

    /// Remembers who opened the TCP connection `client` → `server`
    /// (bounded like the DNS table; a connection opened again replaces it).
    pub fn learn_connect(&self, client: SocketAddr, server: SocketAddr, owner: ConnectOwner) {
        let mut g = self.lock();
        let key = (client, server);
        if !g.connects.contains_key(&key) {
            let before = g.connects.len();
            make_room(&mut g.connects, MAX_CONNECTS, CONNECT_MEMORY, |(_, at)| (*at, *at));
            g.connects_evicted += (before - g.connects.len()) as u64;
        }
        g.connects.insert(key, (owner, Instant::now()));
    }

    /// Who opened `client` → `server`, if it is still remembered.
    pub fn connect_owner(&self, client: SocketAddr, server: SocketAddr) -> Option<ConnectOwner> {
        let g = self.lock();
        let (o, at) = g.connects.get(&(client, server))?;
        (at.elapsed() < CONNECT_MEMORY).then(|| o.clone())
    }

    /// Connection owners remembered now, and forgotten to make room so far.
    pub fn connects_len(&self) -> (usize, u64) {
        let g = self.lock();
        (g.connects.len(), g.connects_evicted)
    }

    /// Queues flow evidence (bounded; the oldest is dropped beyond the bound).
    pub fn push(&self, f: FlowFinding) {
        let mut g = self.lock();
        if g.pending.len() >= MAX_PENDING {
            g.pending.remove(0);
            g.dropped += 1;
        }
        g.pending.push(f);
    }

    /// Whether flow evidence is waiting.
    pub fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Takes the queued flow evidence.
    pub fn drain(&self) -> Vec<FlowFinding> {
        std::mem::take(&mut self.lock().pending)
    }

    /// Flow findings dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_addresses_evict_the_least_recently_used_never_all() {
        let sh = NetShared::default();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        sh.learn_dns(ip(0), "supportxmr.com");
        for i in 1..MAX_DNS as u32 {
            sh.learn_dns(ip(i), "flood.example");
        }
        // the miner's pool is in use; a flood of answers follows
        assert_eq!(sh.dns_learned(ip(0)).as_deref(), Some("supportxmr.com"));
        for i in MAX_DNS as u32..(MAX_DNS as u32 * 2) {
            sh.learn_dns(ip(i), "flood.example");
            assert!(sh.dns_len() <= MAX_DNS);
            assert!(sh.dns_len() >= MAX_DNS * 7 / 8, "never cleared");
            if i % 1000 == 0 {
                assert!(sh.dns_learned(ip(0)).is_some(), "the address in use stays");
            }
        }
        assert_eq!(sh.dns_learned(ip(0)).as_deref(), Some("supportxmr.com"));
        assert!(sh.dns_learned(ip(1)).is_none(), "an unused old one went");
    }

    #[test]
    fn connection_owners_are_bounded_and_a_flood_never_clears_them() {
        let sh = NetShared::default();
        let owner = |pid: u32| ConnectOwner {
            pid,
            uid: 65534,
            start_ns: 1,
            comm: "x".into(),
            netns: 4026531840,
        };
        let pool: SocketAddr = "192.0.2.7:3333".parse().unwrap();
        let addr = |i: u32| SocketAddr::new(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 40000);
        for i in 0..(MAX_CONNECTS as u32 * 2) {
            sh.learn_connect(addr(i), pool, owner(i));
            let (n, _) = sh.connects_len();
            assert!(
                n <= MAX_CONNECTS && (i < MAX_CONNECTS as u32 || n >= MAX_CONNECTS * 7 / 8),
                "{i}: {n}"
            );
        }
        let last = MAX_CONNECTS as u32 * 2 - 1;
        assert_eq!(sh.connect_owner(addr(last), pool), Some(owner(last)), "the newest stays");
        assert_eq!(sh.connect_owner(addr(0), pool), None, "the oldest went");
        assert_eq!(sh.connect_owner(pool, addr(last)), None, "the direction is part of the key");
        assert!(sh.connects_len().1 >= MAX_CONNECTS as u64, "forgotten ones are counted");
    }
}
