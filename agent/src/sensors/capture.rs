//! The capture sensor: one AF_PACKET socket on all interfaces (loopback
//! included) with a classic BPF filter in the kernel, so that only candidate
//! packets reach user space — TCP segments whose payload begins like a JSON
//! line (`{`), a TLS handshake (0x16), an HTTP POST / PROXY line (`P`), an
//! HTTP response (`H`) or a SOCKS4/5 or HTTP CONNECT request, TLS
//! application data in packets below a full segment (record sizes and
//! timing: stratum inside TLS), TCP with payload on the Stratum V2 ports, and DNS —
//! each cut to a bounded snap length — and the headers of SYN and SYN-ACK
//! segments, so the flow table knows who connected to whom instead of
//! guessing it from content the miner writes. Bulk traffic never leaves the
//! kernel.
//!
//! A thread reads the socket and feeds the flow table; what it finds is
//! attributed to the client socket's inode at once (sock_diag exact lookup,
//! while the socket still exists: in the host's network namespace, else in
//! whichever other namespace holds it, a pod's connection being seen on the
//! host side of its veth) and queued; `observe` maps inodes to processes,
//! and a flow whose socket is gone by then to the process that opened it
//! (the connect-trace sensor's table; a ghost when that process has exited).
//! Each other network namespace also gets a socket on its own loopback
//! (pod-local traffic never reaches the host's interfaces), read only when
//! epoll says it has packets. Without CAP_NET_RAW the sensor reports itself
//! unavailable; without CAP_SYS_ADMIN (setns) it sees the host's namespace only.

use super::{Observation, ProcKey, Sensor, SensorError, Snapshot};
use crate::host::netns::Netns;
use crate::host::sockets::{sock_diag_lookup, tcp_listening, InodeOwners};
use crate::net::flows::{Direction, FlowEvent, FlowTable};
use crate::net::shared::{ConnectOwner, FlowFinding, NetShared};
use rigwatch_signatures::{EvidenceKind, Signatures};
use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

/// Bytes of each packet the kernel hands over.
pub const SNAP_LEN: u32 = 4096;
/// How long the capture thread sleeps once the socket's queue is empty.
pub const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// The capture socket's receive buffer (what arrives during one IDLE_POLL).
pub const RCVBUF: i32 = 4 << 20;
/// Bytes kept of a SYN or SYN-ACK: the largest IPv4 and TCP headers.
pub const HANDSHAKE_SNAP: u32 = 120;
const TCP_SYN: u32 = 0x02;
/// Largest IP packet (IPv4 total length; IPv6 payload length + 40) of TLS
/// application data passed up: below a full 1,500-byte Ethernet segment, so
/// bulk transfers never reach user space, above what a job push needs.
pub const TLS_DATA_MAX_IP_LEN: u32 = 1460;
/// Stratum V2 ports (pool, translator proxy, job declaration).
pub const SV2_PORTS: [u16; 3] = [34254, 34255, 34264];

// classic BPF opcodes
const LD_W_ABS: u16 = 0x20;
const LD_B_ABS: u16 = 0x30;
const LD_H_ABS: u16 = 0x28;
const LD_B_IND: u16 = 0x50;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const ALU_RSH_K: u16 = 0x74;
const ALU_AND_K: u16 = 0x54;
const ALU_ADD_X: u16 = 0x0c;
const ALU_ADD_K: u16 = 0x04;
const MISC_TAX: u16 = 0x07;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

enum Ins {
    Op(u16, u32),
    /// jump if A == k (or A & k for JSET) to label `t`, else to label `f`
    J(u16, u32, &'static str, &'static str),
    Label(&'static str),
}

/// The filter program (offsets relative to the network header: the socket
/// is SOCK_DGRAM, so every interface looks the same). Loopback shows each
/// packet twice, going out and coming in: the outgoing copy on `lo_ifindex`
/// is dropped in the kernel.
pub fn bpf_program(lo_ifindex: u32) -> Vec<libc::sock_filter> {
    use Ins::*;
    let mut p = vec![
        Op(LD_W_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32),
        J(JEQ_K, libc::PACKET_OUTGOING as u32, "outgoing", "ip"),
        Label("outgoing"),
        Op(LD_W_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_IFINDEX) as u32),
        J(JEQ_K, lo_ifindex, "drop", "ip"),
        Label("ip"),
        Op(LD_B_ABS, 0),
        Op(ALU_RSH_K, 4),
        J(JEQ_K, 4, "v4", "not4"),
        Label("not4"),
        J(JEQ_K, 6, "v6", "drop"),
        // IPv4: no fragments past the first, then TCP or UDP
        Label("v4"),
        Op(LD_H_ABS, 6),
        J(JSET_K, 0x1fff, "drop", "v4frag_ok"),
        Label("v4frag_ok"),
        Op(LD_B_ABS, 9),
        J(JEQ_K, 17, "v4udp", "v4nudp"),
        Label("v4nudp"),
        J(JEQ_K, 6, "v4tcp", "drop"),
        Label("v4udp"),
        Op(LDX_B_MSH, 0),
        Op(LD_H_IND, 0),
        J(JEQ_K, 53, "keep", "v4udp_d"),
        Label("v4udp_d"),
        Op(LD_H_IND, 2),
        J(JEQ_K, 53, "keep", "drop"),
        Label("v4tcp"),
        Op(LDX_B_MSH, 0), // X = IP header length
        // SYN and SYN-ACK (headers only): who connected to whom
        Op(LD_B_IND, 13),
        J(JSET_K, TCP_SYN, "handshake", "v4ports"),
        Label("v4ports"),
        Op(LD_H_IND, 0),
    ];
    // TCP on a DNS or Stratum V2 port (either side): keep anything with payload
    for (i, port) in [53u16, SV2_PORTS[0], SV2_PORTS[1], SV2_PORTS[2]].iter().enumerate() {
        let next = ["v4s1", "v4s2", "v4s3", "v4s4"][i];
        p.push(J(JEQ_K, *port as u32, "v4payload_any", next));
        p.push(Label(next));
    }
    p.push(Op(LD_H_IND, 2));
    for (i, port) in [53u16, SV2_PORTS[0], SV2_PORTS[1], SV2_PORTS[2]].iter().enumerate() {
        let next = ["v4d1", "v4d2", "v4d3", "v4d4"][i];
        p.push(J(JEQ_K, *port as u32, "v4payload_any", next));
        p.push(Label(next));
    }
    p.extend([
        // X = IP header + TCP header ((byte 12 & 0xf0) >> 2); A = first payload byte
        Op(LD_B_IND, 12),
        Op(ALU_AND_K, 0xf0),
        Op(ALU_RSH_K, 2),
        Op(ALU_ADD_X, 0),
        Op(MISC_TAX, 0),
        Op(LD_B_IND, 0), // out of the packet (no payload): the filter drops it
        J(JEQ_K, b'{' as u32, "keep", "c2"),
        Label("c2"),
        J(JEQ_K, 0x16, "keep", "c3"),
        Label("c3"),
        J(JEQ_K, b'P' as u32, "keep", "c4"),
        Label("c4"),
        J(JEQ_K, b'H' as u32, "keep", "c5"),
        Label("c5"),
        J(JEQ_K, 0x17, "v4tls", "proxy"),
        Label("v4payload_any"),
        Op(LD_B_IND, 12),
        Op(ALU_AND_K, 0xf0),
        Op(ALU_RSH_K, 2),
        Op(ALU_ADD_X, 0),
        Op(MISC_TAX, 0),
        Op(LD_B_IND, 0),
        Op(RET_K, SNAP_LEN),
        // IPv6 without extension headers: transport at 40
        Label("v6"),
        Op(LD_B_ABS, 6),
        J(JEQ_K, 17, "v6udp", "v6nudp"),
        Label("v6nudp"),
        J(JEQ_K, 6, "v6tcp", "drop"),
        Label("v6udp"),
        Op(LD_H_ABS, 40),
        J(JEQ_K, 53, "keep", "v6udp_d"),
        Label("v6udp_d"),
        Op(LD_H_ABS, 42),
        J(JEQ_K, 53, "keep", "drop"),
        Label("v6tcp"),
        Op(LD_B_ABS, 53),
        J(JSET_K, TCP_SYN, "handshake", "v6ports"),
        Label("v6ports"),
        Op(LD_H_ABS, 40),
    ]);
    for (i, port) in [53u16, SV2_PORTS[0], SV2_PORTS[1], SV2_PORTS[2]].iter().enumerate() {
        let next = ["v6s1", "v6s2", "v6s3", "v6s4"][i];
        p.push(J(JEQ_K, *port as u32, "v6payload_any", next));
        p.push(Label(next));
    }
    p.push(Op(LD_H_ABS, 42));
    for (i, port) in [53u16, SV2_PORTS[0], SV2_PORTS[1], SV2_PORTS[2]].iter().enumerate() {
        let next = ["v6d1", "v6d2", "v6d3", "v6d4"][i];
        p.push(J(JEQ_K, *port as u32, "v6payload_any", next));
        p.push(Label(next));
    }
    p.extend([
        Op(LD_B_ABS, 52),
        Op(ALU_AND_K, 0xf0),
        Op(ALU_RSH_K, 2),
        Op(ALU_ADD_K, 40),
        Op(MISC_TAX, 0),
        Op(LD_B_IND, 0),
        J(JEQ_K, b'{' as u32, "keep", "e2"),
        Label("e2"),
        J(JEQ_K, 0x16, "keep", "e3"),
        Label("e3"),
        J(JEQ_K, b'P' as u32, "keep", "e4"),
        Label("e4"),
        J(JEQ_K, b'H' as u32, "keep", "e5"),
        Label("e5"),
        J(JEQ_K, 0x17, "v6tls", "proxy"),
        Label("v6payload_any"),
        Op(LD_B_ABS, 52),
        Op(ALU_AND_K, 0xf0),
        Op(ALU_RSH_K, 2),
        Op(ALU_ADD_K, 40),
        Op(MISC_TAX, 0),
        Op(LD_B_IND, 0),
        Op(RET_K, SNAP_LEN),
        // A proxy request, so the destination asked for is seen (X is the
        // payload's offset in both families; A its first byte): SOCKS5
        // `05 N M…` / `05 01 00 …` (third byte 0, 1 or 2), SOCKS4 `04 01 …`,
        // HTTP `CO…`. Two bytes each, so bulk data seldom passes.
        Label("proxy"),
        J(JEQ_K, 5, "socks5", "p2"),
        Label("p2"),
        J(JEQ_K, 4, "socks4", "p3"),
        Label("p3"),
        J(JEQ_K, b'C' as u32, "connect", "drop"),
        Label("socks5"),
        Op(LD_B_IND, 2),
        J(JGT_K, 2, "drop", "keep"),
        Label("socks4"),
        Op(LD_B_IND, 1),
        J(JEQ_K, 1, "keep", "drop"),
        Label("connect"),
        Op(LD_B_IND, 1),
        J(JEQ_K, b'O' as u32, "keep", "drop"),
        // TLS application data, small packets only (job pushes, submits):
        // their sizes and timing are what the TLS-stratum classifier reads;
        // bulk transfers (full-size segments, GRO/GSO aggregates) stay in
        // the kernel
        Label("v4tls"),
        Op(LD_H_ABS, 2),
        J(JGT_K, TLS_DATA_MAX_IP_LEN, "drop", "keep"),
        Label("v6tls"),
        Op(LD_H_ABS, 4),
        J(JGT_K, TLS_DATA_MAX_IP_LEN - 40, "drop", "keep"),
        Label("handshake"),
        Op(RET_K, HANDSHAKE_SNAP),
        Label("keep"),
        Op(RET_K, SNAP_LEN),
        Label("drop"),
        Op(RET_K, 0),
    ]);
    assemble(&p)
}

fn assemble(p: &[Ins]) -> Vec<libc::sock_filter> {
    let mut at = std::collections::HashMap::new();
    let mut n = 0usize;
    for i in p {
        match i {
            Ins::Label(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for i in p {
        match i {
            Ins::Label(_) => {}
            Ins::Op(code, k) => out.push(libc::sock_filter {
                code: *code,
                jt: 0,
                jf: 0,
                k: *k,
            }),
            Ins::J(code, k, t, f) => {
                let here = out.len() + 1;
                let off = |l: &str| -> u8 {
                    let target = *at.get(l).unwrap_or_else(|| panic!("BPF label {l}"));
                    u8::try_from(target - here).expect("BPF jump fits")
                };
                out.push(libc::sock_filter {
                    code: *code,
                    jt: off(t),
                    jf: off(f),
                    k: *k,
                });
            }
        }
    }
    out
}

/// Opens the filtered capture socket (needs CAP_NET_RAW). The filter is
/// attached before the socket is bound, so no unfiltered packet is queued.
pub fn open_socket() -> std::io::Result<OwnedFd> {
    open_socket_on(false, Some(RCVBUF))
}

/// The capture socket on every interface, or on loopback only (`lo_only`:
/// inside another network namespace, whose veth traffic the host's socket
/// sees already); a receive buffer of `rcvbuf` bytes, or the default.
fn open_socket_on(lo_only: bool, rcvbuf: Option<i32>) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2)/setsockopt(2)/bind(2) calls with valid,
    // correctly sized arguments; the fd is owned on success.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let lo = nix::net::if_::if_nametoindex("lo").unwrap_or(1);
        let prog = bpf_program(lo);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut _,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        // a larger queue (root may exceed rmem_max); the default otherwise
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            let Some(size) = rcvbuf else { break };
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            ) == 0
            {
                break;
            }
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        if lo_only {
            sll.sll_ifindex = lo as i32;
        }
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Packets the kernel passed to the socket and dropped for it so far
/// (PACKET_STATISTICS; reading resets the kernel's counters).
pub fn socket_stats(fd: &OwnedFd) -> Option<(u32, u32)> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as u32;
    // SAFETY: getsockopt into a correctly sized struct.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some((st.tp_packets, st.tp_drops))
}

pub use crate::net::classify::{evidence_of, parse_ip};

/// Counters the capture thread keeps.
#[derive(Default)]
pub struct CaptureCounters {
    /// Packets that passed the kernel filter.
    pub packets: AtomicU64,
    /// Flow evidence produced.
    pub findings: AtomicU64,
    /// Flush requests (from `observe`) and the last one the thread answered
    /// by finding the socket queue empty.
    flush_req: AtomicU64,
    flush_done: AtomicU64,
}

/// The capture sensor.
pub struct CaptureSensor {
    sig: Arc<RwLock<Arc<Signatures>>>,
    shared: Arc<NetShared>,
    owners: InodeOwners,
    proc_root: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Why it cannot run, once known.
    pub unavailable: Option<String>,
    counters: Arc<CaptureCounters>,
    resolvers: HashSet<&'static str>,
}

impl CaptureSensor {
    /// Starts capturing at once (a thread); unavailable without CAP_NET_RAW.
    pub fn start(sig: Arc<Signatures>, root: &std::path::Path, shared: Arc<NetShared>) -> Self {
        let sig = Arc::new(RwLock::new(sig));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(CaptureCounters::default());
        let mut s = CaptureSensor {
            sig: sig.clone(),
            shared: shared.clone(),
            owners: InodeOwners::new(root),
            proc_root: root.to_path_buf(),
            stop: stop.clone(),
            thread: None,
            unavailable: None,
            counters: counters.clone(),
            resolvers: ["systemd-resolve", "dnsmasq", "unbound", "named", "nscd", "coredns", "resolved"]
                .into_iter()
                .collect(),
        };
        // sockets of containers and pods are asked in their own namespaces
        let netns = crate::paths::is_live_proc(root).then(|| Netns::new(root));
        match open_socket() {
            Ok(fd) => {
                s.thread = std::thread::Builder::new()
                    .name("rw-capture".into())
                    .spawn(move || capture_loop(fd, sig, shared, stop, counters, netns))
                    .ok();
            }
            Err(e) => {
                s.unavailable = Some(if e.raw_os_error() == Some(libc::EPERM) {
                    "packet capture needs CAP_NET_RAW (run as root or grant the capability); socket and process sensors carry on".into()
                } else {
                    format!("packet capture unavailable: {e}")
                });
            }
        }
        s
    }

    /// Packets that passed the kernel filter so far.
    pub fn packets(&self) -> u64 {
        self.counters.packets.load(Ordering::Relaxed)
    }
}

impl Drop for CaptureSensor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one packet without blocking: its length (at most the buffer's)
/// and where it came from; `None` when the queue is empty.
fn read_packet(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, libc::sockaddr_ll)> {
    // SAFETY: recvfrom into a buffer we own, with a correctly sized sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    let flags = libc::MSG_TRUNC | libc::MSG_DONTWAIT;
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            flags,
            &mut sll as *mut _ as *mut libc::sockaddr,
            &mut alen,
        )
    };
    (n > 0).then(|| ((n as usize).min(buf.len()), sll))
}

/// Packets read from one namespace's socket per wakeup at most (the host's
/// socket is never starved by a busy pod).
const NS_BURST: usize = 256;

/// Captures inside other network namespaces (containers, pods): one socket
/// on each one's loopback, where pod-local traffic (a miner and its proxy
/// sidecar) never reaches the host's interfaces. Opened from a thread in
/// the namespace; read only when epoll says a socket has packets, so idle
/// namespaces cost nothing per wakeup. At most [`crate::host::netns::MAX_NAMESPACES`].
struct NsCaptures {
    epoll: nix::sys::epoll::Epoll,
    socks: std::collections::HashMap<u64, OwnedFd>,
    /// Namespaces whose socket could not be opened (not retried while they last).
    failed: HashSet<u64>,
    refreshed: Option<std::time::Instant>,
}

impl NsCaptures {
    fn new() -> Option<Self> {
        Some(NsCaptures {
            epoll: nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).ok()?,
            socks: Default::default(),
            failed: HashSet::new(),
            refreshed: None,
        })
    }

    /// Follows namespaces as they come and go (at most every REFRESH).
    fn refresh(&mut self, netns: &mut Netns) {
        if self.refreshed.is_some_and(|t| t.elapsed() < crate::host::netns::REFRESH) {
            return;
        }
        self.refreshed = Some(std::time::Instant::now());
        let live: HashSet<u64> = netns.namespaces().into_iter().collect();
        let gone: Vec<u64> = self.socks.keys().filter(|i| !live.contains(i)).copied().collect();
        for ino in gone {
            if let Some(fd) = self.socks.remove(&ino) {
                let _ = self.epoll.delete(&fd);
            }
        }
        self.failed.retain(|i| live.contains(i));
        for ino in live {
            if self.socks.contains_key(&ino) || self.failed.contains(&ino) || self.socks.len() >= crate::host::netns::MAX_NAMESPACES {
                continue;
            }
            let fd = netns.run_in(ino, || open_socket_on(true, None));
            let ev = nix::sys::epoll::EpollEvent::new(nix::sys::epoll::EpollFlags::EPOLLIN, ino);
            match fd {
                Ok(fd) if self.epoll.add(&fd, ev).is_ok() => {
                    self.socks.insert(ino, fd);
                }
                _ => {
                    self.failed.insert(ino);
                }
            }
        }
    }

    /// The namespaces with packets waiting.
    fn ready(&self) -> Vec<u64> {
        let mut events = [nix::sys::epoll::EpollEvent::empty(); 64];
        match self.epoll.wait(&mut events, 0u8) {
            Ok(n) => events[..n].iter().map(|e| e.data()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// What the capture thread holds.
struct Capturing {
    table: FlowTable,
    sig: Arc<RwLock<Arc<Signatures>>>,
    shared: Arc<NetShared>,
    counters: Arc<CaptureCounters>,
    netns: Option<Netns>,
    started: std::time::Instant,
}

impl Capturing {
    /// One packet of `zone` (0: the host's namespace, else the namespace
    /// whose own socket captured it): into the flow table, and what it
    /// reveals attributed to the client's socket while it still exists.
    fn handle(&mut self, zone: u64, packet: &[u8]) {
        self.counters.packets.fetch_add(1, Ordering::Relaxed);
        let Some(p) = parse_ip(packet) else { return };
        self.table.advance(self.started.elapsed().as_millis() as u64);
        let mut events = self.table.push_in(zone, &p);
        if events.is_empty() {
            return;
        }
        let sig = self.sig.read().map(|g| g.clone()).unwrap_or_else(|e| e.into_inner().clone());
        for ev in events.iter_mut() {
            if zone == 0 {
                unsolicited_if_listener(ev);
            }
            let attributable = !matches!(ev, FlowEvent::Stratum { hit, .. } if hit.direction == Direction::Unsolicited);
            for (client, server, tcp, e) in evidence_of(&sig, Some(&self.shared), ev) {
                let inode = if !attributable {
                    None
                } else if zone == 0 {
                    // the host's namespace first, then the others (a pod's
                    // traffic seen on the host side of its veth)
                    sock_diag_lookup(tcp, client, server)
                        .or_else(|| self.netns.as_mut().and_then(|n| n.lookup(tcp, client, server)).map(|(s, _)| s))
                } else {
                    self.netns.as_mut().and_then(|n| n.lookup_in(zone, tcp, client, server))
                }
                .map(|s| s.inode)
                .filter(|&i| i != 0);
                self.counters.findings.fetch_add(1, Ordering::Relaxed);
                self.shared.push(FlowFinding {
                    client,
                    server,
                    tcp,
                    evidence: e,
                    inode,
                    attributable,
                    tries: 0,
                });
            }
        }
    }
}

fn capture_loop(
    fd: OwnedFd,
    sig: Arc<RwLock<Arc<Signatures>>>,
    shared: Arc<NetShared>,
    stop: Arc<AtomicBool>,
    counters: Arc<CaptureCounters>,
    netns: Option<Netns>,
) {
    let lo = nix::net::if_::if_nametoindex("lo").unwrap_or(1) as i32;
    let mut ns_caps = netns.as_ref().and_then(|_| NsCaptures::new());
    let mut c = Capturing {
        table: FlowTable::new(),
        sig,
        shared,
        counters,
        netns,
        started: std::time::Instant::now(),
    };
    let mut buf = vec![0u8; SNAP_LEN as usize + 64];
    while !stop.load(Ordering::Relaxed) {
        // never blocks: the queue is drained, then the thread sleeps
        let Some((len, sll)) = read_packet(&fd, &mut buf) else {
            // and each namespace's own socket that has something
            if let (Some(nc), Some(n)) = (ns_caps.as_mut(), c.netns.as_mut()) {
                nc.refresh(n);
                for ino in nc.ready() {
                    let Some(nfd) = nc.socks.get(&ino) else { continue };
                    for _ in 0..NS_BURST {
                        let Some((len, _)) = read_packet(nfd, &mut buf) else { break };
                        c.handle(ino, &buf[..len]);
                    }
                }
            }
            // the queue is empty: everything asked for so far has been read
            c.counters
                .flush_done
                .store(c.counters.flush_req.load(Ordering::Acquire), Ordering::Release);
            // sleeping rather than waking for each packet: a busy host's
            // handshakes cost one wakeup per IDLE_POLL, not one per packet
            // (the socket's buffer holds what arrives meanwhile); a flush
            // waits at most this long
            std::thread::sleep(IDLE_POLL);
            continue;
        };
        // loopback shows each packet twice (outgoing and incoming): keep one
        if sll.sll_ifindex == lo && sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        c.handle(0, &buf[..len]);
    }
}

/// The process that opened a connection and exited before the pass, as the
/// kernel saw it at connect time (its exec event, when there was one, says
/// more and is preferred by the detector).
fn connect_ghost(key: ProcKey, o: &ConnectOwner) -> crate::host::process::Proc {
    let mut p = crate::host::process::Proc::new(
        key,
        0,
        Arc::new(crate::host::process::ProcStatic {
            comm: o.comm.clone(),
            uid: o.uid,
            user: crate::host::process::user_name(o.uid),
            problems: vec![format!(
                "exited before it could be read: its connection was attributed at connect time (eBPF; network namespace {})",
                o.netns
            )],
            ..Default::default()
        }),
    );
    p.state = 'X';
    p
}

/// A pool push whose direction was inferred (the handshake was not seen)
/// names its receiver as the miner; a receiver on a listening port is the
/// accepting side of the connection, so the push was sent to a listener:
/// unsolicited, and the sender is the connecting side.
fn unsolicited_if_listener(ev: &mut FlowEvent) {
    if let FlowEvent::Stratum { client, server, hit } = ev {
        if hit.direction == Direction::Inferred && !hit.from_client && tcp_listening(*client) {
            hit.direction = Direction::Unsolicited;
            std::mem::swap(client, server);
        }
    }
}

impl Sensor for CaptureSensor {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        if let Some(why) = &self.unavailable {
            return Err(SensorError {
                sensor: "capture",
                message: why.clone(),
            });
        }
        // let the thread read what the kernel has queued before taking its findings
        let want = self.counters.flush_req.fetch_add(1, Ordering::AcqRel) + 1;
        let asked = std::time::Instant::now();
        while self.counters.flush_done.load(Ordering::Acquire) < want && asked.elapsed() < std::time::Duration::from_secs(1) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let pending = self.shared.drain();
        let inodes: HashSet<u64> = pending.iter().filter_map(|f| f.inode).collect();
        let owners = self.owners.resolve(&inodes, snap);
        for f in pending {
            // the socket's holder now, else whoever opened the connection (the
            // kernel said at connect time: the socket may be closed since)
            let opened = f.attributable.then(|| self.shared.connect_owner(f.client, f.server)).flatten();
            let by_connect = opened
                .as_ref()
                .map(|o| ProcKey::from_boot_ns(o.pid, o.start_ns, snap.ticks_per_second));
            let owner = f
                .inode
                .and_then(|i| owners.get(&i).copied())
                .or(by_connect.filter(|k| snap.procs.contains_key(k)));
            match owner {
                // DNS asked by a local resolver says nothing about the resolver itself
                Some(k)
                    if !(matches!(f.evidence.detail, EvidenceKind::Dns { .. })
                        && snap.procs.get(&k).is_some_and(|p| self.resolvers.contains(p.comm.as_str()))) =>
                {
                    out.push(Observation::Evidence(k, f.evidence))
                }
                Some(_) => {}
                // the owner may be newer than this pass's snapshot: try again
                // next pass (the opener only while its pid exists: a scan has
                // no next pass for a process that is gone)
                None if f.tries < 1
                    && match &opened {
                        Some(o) => self.proc_root.join(o.pid.to_string()).exists(),
                        None => f.inode.is_some(),
                    } =>
                {
                    self.shared.push(FlowFinding { tries: f.tries + 1, ..f })
                }
                // the process that opened it has exited: judged as it was
                None => match (opened, by_connect) {
                    (Some(o), Some(k)) => {
                        out.push(Observation::Hidden(connect_ghost(k, &o)));
                        out.push(Observation::Evidence(k, f.evidence));
                    }
                    _ => out.push(Observation::Flow(f)),
                },
            }
        }
        Ok(())
    }

    fn wants_pass(&self) -> bool {
        self.shared.has_pending()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("capture_packets", self.packets()),
            ("capture_findings", self.counters.findings.load(Ordering::Relaxed)),
        ]
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        if let Ok(mut g) = self.sig.write() {
            *g = sig;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_assembles_within_limits() {
        let p = bpf_program(1);
        assert!(p.len() < 4096);
        assert_eq!(p.last().unwrap().code, RET_K);
        assert_eq!(p.last().unwrap().k, 0);
        // every jump lands inside the program
        for (i, ins) in p.iter().enumerate() {
            assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < p.len() + 1);
        }
    }
}
