//! State the network sensors share: pool addresses learned from DNS
//! answers, the latest socket table, and flow evidence waiting to be
//! attributed to a process. The capture thread writes; sensors read.

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
    pending: Vec<FlowFinding>,
    dropped: u64,
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
        if g.dns.len() >= MAX_DNS && !g.dns.contains_key(&ip) {
            g.dns.retain(|_, l| now.duration_since(l.at) < DNS_MEMORY);
            if g.dns.len() >= MAX_DNS {
                let mut used: Vec<Instant> = g.dns.values().map(|l| l.used).collect();
                used.sort_unstable();
                let cut = used[used.len() / 8];
                g.dns.retain(|_, l| l.used > cut);
            }
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
}
