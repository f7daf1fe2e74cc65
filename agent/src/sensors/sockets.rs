//! The socket sensor: TCP and UDP sockets (IPv4 and IPv6) through netlink
//! sock_diag, falling back to the proc root's `net/tcp*` and `net/udp*`
//! files; socket inode → process by walking `/proc/PID/fd` only for sockets
//! not yet known (the map stays warm between passes).
//!
//! Evidence: established outbound connections to known pool addresses, to
//! pool ports (weak alone), and to addresses learned from DNS answers for
//! pool domains (the capture sensor fills that cache).
//!
//! Local mining stacks: a miner's upstream need not be a pool on the
//! Internet. P2Pool, a local monerod or bitcoind feed it on this host, so a
//! process that *listens* on a `node_port` (P2Pool's sidechain peer port,
//! monerod's RPC, ZMQ, P2P…) and a process connected to such a port on
//! loopback (the miner, or P2Pool itself, using the local node) get
//! `pool_connection` evidence weighted by the rule. The ports are data
//! (`signatures/rules/node-ports.toml`); stratum to 127.0.0.1 is the
//! capture sensor's, on the wire.

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::host::netns::Netns;
use crate::net::shared::NetShared;
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TCP ESTABLISHED in the kernel's numbering.
pub use crate::host::sockets::{parse_proc_net, sock_diag_dump, sock_diag_lookup, InodeOwners, SocketEntry, TCP_ESTABLISHED, TCP_LISTEN};

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

    /// What a TCP socket listening on `local` says: a `node_port` rule's
    /// evidence (the service the port belongs to), if any.
    pub fn assess_listener(&self, local: SocketAddr) -> Option<Evidence> {
        let r = self.sig.node_port(local.port())?;
        Some(Evidence::from_rule(
            EvidenceKind::PoolConnection {
                remote: local.to_string(),
                reason: format!("listens on {local} ({})", r.description),
                domain: None,
            },
            &r.id,
            r.severity,
        ))
    }

    /// What a connection to `remote` on this host (loopback) says about its
    /// client: a local mining node as its upstream. A node port on another
    /// host is a node's ordinary gossip or a wallet's RPC, and says nothing.
    pub fn assess_local_upstream(&self, remote: SocketAddr) -> Option<Evidence> {
        if !is_loopback(remote.ip()) {
            return None;
        }
        let r = self.sig.node_port(remote.port())?;
        Some(Evidence::from_rule(
            EvidenceKind::PoolConnection {
                remote: remote.to_string(),
                reason: format!("local {}", r.description),
                domain: None,
            },
            &r.id,
            r.severity,
        ))
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
                taught_by: None,
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

/// 127.0.0.0/8, ::1, and 127.x as an IPv4-mapped IPv6 address.
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
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
        let mut listens = Vec::new();
        for s in &socks {
            if s.tcp && s.state == TCP_LISTEN {
                if let Some(ev) = (s.inode != 0).then(|| self.assess_listener(s.local)).flatten() {
                    listens.push((s, ev));
                }
                continue;
            }
            let connected = if s.tcp {
                s.state == TCP_ESTABLISHED
            } else {
                !s.remote.ip().is_unspecified() && s.remote.port() != 0
            };
            if !connected || s.inode == 0 {
                continue;
            }
            // the client side of a connection: the remote port is the service
            if let Some(ev) = self.assess_remote(s.remote).or_else(|| self.assess_local_upstream(s.remote)) {
                hits.push((s, ev));
            }
        }
        if hits.is_empty() && listens.is_empty() {
            self.unowned.clear();
            return Ok(());
        }
        let inodes: HashSet<u64> = hits.iter().chain(listens.iter()).map(|(s, _)| s.inode).collect();
        let owners = self.owners.resolve(&inodes, snap);
        // a listener says the same on 0.0.0.0 and [::], and in each of a
        // server's SO_REUSEPORT sockets: once per process and port. One with
        // no listed owner is left alone (no connection, no flow to report).
        let mut said = HashSet::new();
        for (s, ev) in listens {
            if let Some(k) = owners.get(&s.inode) {
                if said.insert((*k, s.local.port())) {
                    out.push(Observation::Evidence(*k, ev));
                }
            }
        }
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
                    attributable: false,
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

    fn bundled() -> Arc<Signatures> {
        Arc::new(rigwatch_signatures::load::load(&[], true).signatures)
    }

    fn said(ev: &Evidence) -> (String, String, Weight, Option<String>) {
        match &ev.detail {
            EvidenceKind::PoolConnection { remote, reason, .. } => (remote.clone(), reason.clone(), ev.weight, ev.rule.clone()),
            other => panic!("not a pool connection: {other:?}"),
        }
    }

    #[test]
    fn node_port_listeners_and_loopback_upstreams_weigh_by_their_rule() {
        let s = SocketSensor::new(bundled(), Path::new("/nonexistent"), Arc::new(NetShared::default()));
        let l = |a: &str| s.assess_listener(a.parse().unwrap()).map(|e| said(&e));
        let u = |a: &str| s.assess_local_upstream(a.parse().unwrap()).map(|e| said(&e));
        assert_eq!(
            l("0.0.0.0:37889"),
            Some((
                "0.0.0.0:37889".into(),
                "listens on 0.0.0.0:37889 (P2Pool sidechain peer port)".into(),
                Weight::Likely,
                Some("node.p2pool".into())
            ))
        );
        assert_eq!(l("[::]:37888").unwrap().3.as_deref(), Some("node.p2pool"), "mini");
        assert_eq!(l("0.0.0.0:37890").unwrap().3.as_deref(), Some("node.p2pool"), "nano");
        assert_eq!(
            l("127.0.0.1:18083").unwrap().2,
            Weight::Likely,
            "monerod's ZMQ publisher is P2Pool's feed"
        );
        let rpc = l("127.0.0.1:18081").unwrap();
        assert_eq!((rpc.2, rpc.3.as_deref()), (Weight::Suspicious, Some("node.monerod-rpc")));
        assert_eq!(l("0.0.0.0:18080").unwrap().2, Weight::Info, "also Spark History Server's port");
        assert_eq!(l("0.0.0.0:8333").unwrap().2, Weight::Info);
        assert_eq!(l("0.0.0.0:8332").unwrap().2, Weight::Suspicious);
        // ordinary services, and a pool port (P2Pool's stratum 3333 is the capture's, on the wire)
        for benign in ["0.0.0.0:22", "0.0.0.0:8080", "[::]:443", "0.0.0.0:3333", "0.0.0.0:37891"] {
            assert_eq!(l(benign), None, "{benign}");
        }
        assert_eq!(
            u("127.0.0.1:18081"),
            Some((
                "127.0.0.1:18081".into(),
                "local monerod RPC port".into(),
                Weight::Suspicious,
                Some("node.monerod-rpc".into())
            ))
        );
        assert_eq!(u("[::1]:18083").unwrap().2, Weight::Likely);
        assert_eq!(u("127.0.0.53:37889").unwrap().3.as_deref(), Some("node.p2pool"), "all of 127/8");
        assert_eq!(
            u("[::ffff:127.0.0.1]:18081").unwrap().3.as_deref(),
            Some("node.monerod-rpc"),
            "v4-mapped"
        );
        // a node port elsewhere: a node's gossip, a wallet's remote node
        for other in ["203.0.113.9:18081", "[2001:db8::1]:37889", "10.0.0.1:8332"] {
            assert_eq!(u(other), None, "{other}");
        }
        assert_eq!(u("127.0.0.1:5432"), None);
    }

    #[test]
    fn a_node_listening_alone_is_at_most_suspicious() {
        use rigwatch_signatures::{score, Severity};
        let s = SocketSensor::new(bundled(), Path::new("/nonexistent"), Arc::new(NetShared::default()));
        let l = |p: u16| s.assess_listener(SocketAddr::from(([0, 0, 0, 0], p))).unwrap();
        let cpu = Evidence::heuristic(
            EvidenceKind::Cpu {
                cores: 2.0,
                window_seconds: 60.0,
            },
            Weight::Info,
        );
        // monerod (P2P, RPC, ZMQ-RPC) with no CPU: no finding, the evidence is kept
        assert_eq!(score(&[l(18080), l(18081), l(18082)]), None);
        assert_eq!(score(&[l(18080), l(18081), cpu.clone()]), Some(Severity::Suspicious));
        assert_eq!(score(&[l(8333), l(8332)]), None, "bitcoind alike");
        // P2Pool alone: suspicious; with sustained CPU, likely
        assert_eq!(score(&[l(37889)]), Some(Severity::Suspicious));
        assert_eq!(
            score(&[l(37889), l(18083)]),
            Some(Severity::Suspicious),
            "one kind, however many ports"
        );
        assert_eq!(score(&[l(37889), cpu]), Some(Severity::Likely));
    }

    /// A fixture proc root: `net/tcp`, `net/tcp6` and the fd links that own their inodes.
    #[test]
    fn listeners_and_local_upstreams_land_on_their_owners_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("net")).unwrap();
        let line = |n: usize, local: &str, remote: &str, st: &str, inode: u64| {
            format!("  {n}: {local} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1\n")
        };
        let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let tcp = [
            head.to_string(),
            line(0, "00000000:9401", "00000000:0000", "0A", 5001), // 0.0.0.0:37889 listen, pid 100
            line(1, "00000000:1F90", "00000000:0000", "0A", 5003), // 0.0.0.0:8080 listen, pid 200
            line(2, "0100007F:9C40", "0100007F:46A1", "01", 5004), // 127.0.0.1:40000 -> :18081, pid 300
            line(3, "0500000A:9C41", "097100CB:46A1", "01", 5005), // 10.0.0.5 -> 203.0.113.9:18081, pid 300
            line(4, "0100007F:46A1", "00000000:0000", "0A", 5006), // 127.0.0.1:18081 listen, pid 400
            line(5, "0100007F:46A1", "0100007F:9C40", "01", 5008), // its accepted side, pid 400
            line(6, "00000000:9400", "00000000:0000", "0A", 5007), // 0.0.0.0:37888 listen, no owner
        ]
        .concat();
        std::fs::write(root.join("net/tcp"), tcp).unwrap();
        let tcp6 = [
            head.to_string(),
            line(
                0,
                "00000000000000000000000000000000:9401",
                "00000000000000000000000000000000:0000",
                "0A",
                5002,
            ), // [::]:37889, pid 100
        ]
        .concat();
        std::fs::write(root.join("net/tcp6"), tcp6).unwrap();
        let owns = |pid: u32, inodes: &[u64]| {
            let fd = root.join(pid.to_string()).join("fd");
            std::fs::create_dir_all(&fd).unwrap();
            for (i, n) in inodes.iter().enumerate() {
                std::os::unix::fs::symlink(format!("socket:[{n}]"), fd.join((i + 3).to_string())).unwrap();
            }
        };
        owns(100, &[5001, 5002]);
        owns(200, &[5003]);
        owns(300, &[5004, 5005]);
        owns(400, &[5006, 5008]);
        let proc = |pid: u32| {
            let fixed = crate::host::process::ProcStatic {
                comm: "x".into(),
                ..Default::default()
            };
            crate::host::process::Proc::new(crate::host::process::ProcKey { pid, start_time: 1 }, 1, std::sync::Arc::new(fixed))
        };
        let snap = Snapshot {
            at: std::time::Instant::now(),
            procs: [100, 200, 300, 400].into_iter().map(|p| (proc(p).key, proc(p))).collect(),
            ticks_per_second: 100,
            partial: false,
        };
        let mut s = SocketSensor::new(bundled(), root, Arc::new(NetShared::default()));
        assert!(s.fallback, "a fixture root reads the proc files");
        let mut out = Vec::new();
        s.observe(&snap, &mut out).unwrap();
        let mut got: Vec<(u32, String, String, Weight)> = out
            .iter()
            .map(|o| match o {
                Observation::Evidence(k, e) => {
                    let (remote, reason, w, _) = said(e);
                    (k.pid, remote, reason, w)
                }
                other => panic!("only evidence here, got {other:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    100,
                    "0.0.0.0:37889".into(),
                    "listens on 0.0.0.0:37889 (P2Pool sidechain peer port)".into(),
                    Weight::Likely
                ),
                (300, "127.0.0.1:18081".into(), "local monerod RPC port".into(), Weight::Suspicious),
                (
                    400,
                    "127.0.0.1:18081".into(),
                    "listens on 127.0.0.1:18081 (monerod RPC port)".into(),
                    Weight::Suspicious
                ),
            ],
            "P2Pool once for v4 and v6; the miner on the local RPC, not on the remote one; monerod; nothing for 8080 or the accepted side"
        );
        assert!(
            s.problems().is_empty(),
            "an ownerless listener is no hidden connection: {:?}",
            s.problems()
        );
        // the second pass says the same, and still makes no flow of the ownerless listener
        let mut again = Vec::new();
        s.observe(&snap, &mut again).unwrap();
        assert_eq!(again.len(), 3);
        assert!(!again.iter().any(|o| matches!(o, Observation::Flow(_))));
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
