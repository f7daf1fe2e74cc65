//! The socket sensor: TCP and UDP sockets (IPv4 and IPv6) through netlink
//! sock_diag, falling back to the proc root's `net/tcp*` and `net/udp*`
//! files; socket inode → process by walking `/proc/PID/fd` only for sockets
//! not yet known (the map stays warm between passes).
//!
//! Evidence: established outbound connections to known pool addresses, to
//! pool ports (weak alone), and to addresses learned from DNS answers for
//! pool domains (the capture sensor fills that cache).

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::host::netns::Netns;
use crate::net::shared::NetShared;
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TCP ESTABLISHED in the kernel's numbering.
pub use crate::host::sockets::{parse_proc_net, sock_diag_dump, sock_diag_lookup, InodeOwners, SocketEntry, TCP_ESTABLISHED};

/// The socket sensor.
pub struct SocketSensor {
    sig: Arc<Signatures>,
    root: PathBuf,
    owners: InodeOwners,
    shared: Arc<NetShared>,
    /// True once sock_diag failed and the proc files are used.
    pub fallback: bool,
    /// Pool connections whose socket no listed process holds, by inode:
    /// passes seen so. Two passes in a row make a flow finding.
    unowned: HashMap<u64, u8>,
    notes: Vec<String>,
    /// The other network namespaces (containers, pods), on a live proc root.
    netns: Option<Netns>,
}

impl SocketSensor {
    /// Over a proc root; `shared` carries DNS-learned pool addresses.
    pub fn new(sig: Arc<Signatures>, root: &Path, shared: Arc<NetShared>) -> Self {
        SocketSensor {
            sig,
            root: root.to_path_buf(),
            owners: InodeOwners::new(root),
            shared,
            fallback: !crate::paths::is_live_proc(root),
            unowned: HashMap::new(),
            notes: Vec::new(),
            netns: crate::paths::is_live_proc(root).then(|| Netns::new(root)),
        }
    }

    fn list(&mut self) -> Result<Vec<SocketEntry>, SensorError> {
        if !self.fallback {
            match sock_diag_dump() {
                Ok(mut v) => {
                    // and every other namespace's (containers, pods)
                    if let Some(n) = self.netns.as_mut() {
                        v.extend(n.dump_all().into_iter().map(|(e, _)| e));
                    }
                    return Ok(v);
                }
                Err(_) => self.fallback = true,
            }
        }
        let mut out = Vec::new();
        for (f, tcp) in [("tcp", true), ("tcp6", true), ("udp", false), ("udp6", false)] {
            if let Ok(t) = std::fs::read_to_string(self.root.join("net").join(f)) {
                out.extend(parse_proc_net(&t, tcp));
            }
        }
        Ok(out)
    }

    /// What a connection to `remote` says, if anything.
    pub fn assess_remote(&self, remote: SocketAddr) -> Option<Evidence> {
        if let Some(domain) = self.shared.dns_learned(remote.ip()) {
            let rule = self.sig.pool_domain(&domain).map(|(_, i)| self.sig.rules()[i].id.clone());
            return Some(Evidence {
                detail: EvidenceKind::PoolConnection {
                    remote: remote.to_string(),
                    reason: format!("address of pool domain {domain} (DNS answer)"),
                    domain: Some(domain),
                },
                rule,
                weight: Weight::Likely,
            });
        }
        if let Some(r) = self.sig.pool_address(&remote) {
            return Some(Evidence::from_rule(
                EvidenceKind::PoolConnection {
                    remote: remote.to_string(),
                    reason: "known pool address".into(),
                    domain: None,
                },
                &r.id,
                r.severity,
            ));
        }
        self.sig.pool_port(remote.port()).map(|r| {
            Evidence::from_rule(
                EvidenceKind::PoolConnection {
                    remote: remote.to_string(),
                    reason: format!("pool port {}", remote.port()),
                    domain: None,
                },
                &r.id,
                r.severity,
            )
        })
    }
}

impl Sensor for SocketSensor {
    fn name(&self) -> &'static str {
        "sockets"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        let socks = self.list()?;
        self.notes.clear();
        let mut hits = Vec::new();
        for s in &socks {
            let connected = if s.tcp {
                s.state == TCP_ESTABLISHED
            } else {
                !s.remote.ip().is_unspecified() && s.remote.port() != 0
            };
            if !connected || s.inode == 0 {
                continue;
            }
            // the client side of a connection: the remote port is the service
            if let Some(ev) = self.assess_remote(s.remote) {
                hits.push((s, ev));
            }
        }
        if hits.is_empty() {
            self.unowned.clear();
            return Ok(());
        }
        let inodes: HashSet<u64> = hits.iter().map(|(s, _)| s.inode).collect();
        let owners = self.owners.resolve(&inodes, snap);
        let mut unowned = HashMap::new();
        for (s, ev) in hits {
            if let Some(k) = owners.get(&s.inode) {
                out.push(Observation::Evidence(*k, ev));
                continue;
            }
            if snap.partial {
                continue;
            }
            // no listed process holds it: a process hidden from the listing
            // (or one that exits right now: hence two passes in a row)
            let passes = self.unowned.get(&s.inode).copied().unwrap_or(0) + 1;
            unowned.insert(s.inode, passes);
            if passes >= 2 {
                self.notes.push(format!(
                    "sockets: a connection {} -> {} (uid {}, inode {}) belongs to no process in the /proc listing: its owner may be hidden",
                    s.local, s.remote, s.uid, s.inode
                ));
                out.push(Observation::Flow(crate::net::shared::FlowFinding {
                    client: s.local,
                    server: s.remote,
                    tcp: s.tcp,
                    evidence: ev,
                    inode: Some(s.inode),
                    tries: u8::MAX,
                }));
            }
        }
        if !snap.partial {
            self.unowned = unowned;
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_v4_and_v6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0D05 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1\n\
   1: garbage\n";
        let s = parse_proc_net(v4, true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].local.to_string(), "127.0.0.1:3333");
        assert_eq!(s[0].remote.to_string(), "127.0.0.1:40000");
        assert_eq!((s[0].state, s[0].uid, s[0].inode), (1, 1000, 123456));
        let v6 = "header\n   0: 00000000000000000000000001000000:0D05 00000000000000000000000001000000:9C41 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let s = parse_proc_net(v6, true);
        assert_eq!(s[0].local.to_string(), "[::1]:3333");
        assert_eq!(s[0].inode, 777);
    }

    #[test]
    fn a_pool_connection_no_listed_process_holds_is_a_flow_finding() {
        use crate::sensors::Snapshot;
        let sig = Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        // a loopback "pool" on a pool port (the first one free here)
        let Some(l) = [14444u16, 3333, 5555, 7777, 45700]
            .into_iter()
            .find_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        else {
            panic!("no pool port free on 127.0.0.1");
        };
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_srv, _) = l.accept().unwrap();
        // a listing without the owner: as if a rootkit hid this test process
        let snap = Snapshot {
            at: std::time::Instant::now(),
            procs: Default::default(),
            ticks_per_second: 100,
            partial: false,
        };
        let mut s = SocketSensor::new(sig, Path::new("/proc"), Arc::new(NetShared::default()));
        let mut out = Vec::new();
        s.observe(&snap, &mut out).unwrap();
        let flows = |out: &[Observation]| -> Vec<crate::net::shared::FlowFinding> {
            out.iter()
                .filter_map(|o| match o {
                    Observation::Flow(f) if f.client == c.local_addr().unwrap() => Some(f.clone()),
                    _ => None,
                })
                .collect()
        };
        assert!(flows(&out).is_empty(), "one pass could be a process exiting");
        s.observe(&snap, &mut out).unwrap();
        let f = flows(&out);
        assert_eq!(f.len(), 1, "the second pass reports it");
        assert_eq!(f[0].server, l.local_addr().unwrap());
        assert!(matches!(&f[0].evidence.detail, EvidenceKind::PoolConnection { reason, .. } if reason.starts_with("pool port")));
        assert!(
            s.problems()
                .iter()
                .any(|n| n.contains("belongs to no process in the /proc listing")),
            "{:?}",
            s.problems()
        );
    }

    #[test]
    fn sock_diag_sees_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_srv, _) = l.accept().unwrap();
        let all = sock_diag_dump().expect("sock_diag works here");
        let mine = all
            .iter()
            .find(|e| e.local == c.local_addr().unwrap())
            .expect("client socket listed");
        assert_eq!(mine.remote, l.local_addr().unwrap());
        assert_eq!(mine.state, TCP_ESTABLISHED);
        let one = sock_diag_lookup(true, c.local_addr().unwrap(), l.local_addr().unwrap()).expect("exact lookup");
        assert_eq!(one.inode, mine.inode);
        // the proc files agree
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert!(parse_proc_net(&text, true).iter().any(|e| e.inode == mine.inode));
    }
}
