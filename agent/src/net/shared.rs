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
const MAX_DNS: usize = 16_384;
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

#[derive(Default)]
struct Inner {
    dns: HashMap<IpAddr, (String, Instant)>,
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

    /// Remembers that `ip` answered for pool domain `domain`.
    pub fn learn_dns(&self, ip: IpAddr, domain: &str) {
        let mut g = self.lock();
        if g.dns.len() >= MAX_DNS {
            let now = Instant::now();
            g.dns.retain(|_, (_, t)| now.duration_since(*t) < DNS_MEMORY);
            if g.dns.len() >= MAX_DNS {
                g.dns.clear();
            }
        }
        g.dns.insert(ip, (domain.to_string(), Instant::now()));
    }

    /// The pool domain `ip` was learned for, if still remembered.
    pub fn dns_learned(&self, ip: IpAddr) -> Option<String> {
        let g = self.lock();
        g.dns.get(&ip).filter(|(_, t)| t.elapsed() < DNS_MEMORY).map(|(d, _)| d.clone())
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
