//! The host's sockets: sock_diag (netlink) dumps and lookups, the proc
//! root's `net/tcp*` files as the fallback, and which process owns a socket
//! inode (from the fd tables).

use crate::host::process::{ProcKey, Snapshot};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub const TCP_ESTABLISHED: u8 = 1;
/// TCP LISTEN in the kernel's numbering.
pub const TCP_LISTEN: u8 = 10;

/// One socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    /// TCP or UDP.
    pub tcp: bool,
    /// Local endpoint.
    pub local: SocketAddr,
    /// Remote endpoint (unspecified for unconnected UDP and listeners).
    pub remote: SocketAddr,
    /// Kernel state number (1 = established for TCP).
    pub state: u8,
    /// Socket inode.
    pub inode: u64,
    /// Owner uid.
    pub uid: u32,
}

/// Parses `/proc/net/tcp`, `tcp6`, `udp`, `udp6` text. Lines that do not
/// parse are skipped.
pub fn parse_proc_net(text: &str, tcp: bool) -> Vec<SocketEntry> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote)) = (hex_endpoint(f[1]), hex_endpoint(f[2])) else {
            continue;
        };
        let Ok(state) = u8::from_str_radix(f[3], 16) else { continue };
        let (Ok(uid), Ok(inode)) = (f[7].parse(), f[9].parse()) else {
            continue;
        };
        out.push(SocketEntry {
            tcp,
            local,
            remote,
            state,
            inode,
            uid,
        });
    }
    out
}

/// `0100007F:0D05` or the 32-hex-digit IPv6 form, as the kernel prints them
/// (each 32-bit word in host byte order).
fn hex_endpoint(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> { Some(u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?.to_le_bytes()) };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A sock_diag socket: it answers for the network namespace it was
/// opened in (see [`crate::host::netns`] for the others).
pub use netlink_sys::Socket as DiagSocket;

/// A sock_diag socket in this thread's network namespace.
pub fn diag_socket() -> std::io::Result<DiagSocket> {
    diag::open()
}

/// All TCP and UDP sockets of this network namespace through sock_diag.
pub fn sock_diag_dump() -> std::io::Result<Vec<SocketEntry>> {
    sock_diag_dump_on(&mut diag::open()?)
}

/// All TCP and UDP sockets of the namespace `socket` was opened in.
pub fn sock_diag_dump_on(socket: &mut DiagSocket) -> std::io::Result<Vec<SocketEntry>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            diag::query(socket, family, proto, None, diag::StateFlags::all(), &mut out)?;
        }
    }
    Ok(out)
}

/// The socket of one exact TCP/UDP 4-tuple, seen from `local`. For UDP the
/// kernel looks the socket up as it would deliver a datagram from `remote`
/// to `local`, so unconnected sockets (a resolver's `sendto`) are found too.
pub fn sock_diag_lookup(tcp: bool, local: SocketAddr, remote: SocketAddr) -> Option<SocketEntry> {
    sock_diag_lookup_on(&mut diag::open().ok()?, tcp, local, remote).ok()?
}

/// [`sock_diag_lookup`] in the namespace `socket` was opened in; an error
/// when the socket itself failed (not when nothing matched).
pub fn sock_diag_lookup_on(
    socket: &mut DiagSocket,
    tcp: bool,
    local: SocketAddr,
    remote: SocketAddr,
) -> std::io::Result<Option<SocketEntry>> {
    let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let proto = if tcp { libc::IPPROTO_TCP } else { libc::IPPROTO_UDP } as u8;
    let mut out = Vec::new();
    let id = if tcp { (local, remote) } else { (remote, local) };
    diag::query(socket, family, proto, Some(id), diag::StateFlags::all(), &mut out)?;
    Ok(out
        .into_iter()
        .find(|e| e.local.port() == local.port() && (e.remote == remote || (!tcp && e.remote.port() == 0))))
}

/// Whether a TCP socket of this network namespace listens on `local`'s
/// port (on its address or on every address, either family). The accepting
/// side of a connection has its listener's port.
pub fn tcp_listening(local: SocketAddr) -> bool {
    let mut out = Vec::new();
    if let Ok(mut socket) = diag::open() {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let _ = diag::query(
                &mut socket,
                family,
                libc::IPPROTO_TCP as u8,
                None,
                diag::StateFlags::LISTEN,
                &mut out,
            );
        }
    }
    out.iter().any(|e| {
        e.local.port() == local.port()
            && (e.local.ip().is_unspecified()
                || e.local.ip() == local.ip()
                || matches!(e.local.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped() == Some(match local.ip() { IpAddr::V4(v4) => v4, _ => Ipv4Addr::UNSPECIFIED })))
    })
}

mod diag {
    use super::SocketEntry;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
    pub use netlink_packet_sock_diag::inet::StateFlags;
    use netlink_packet_sock_diag::{
        constants::*,
        inet::{ExtensionFlags, InetRequest, SocketId},
        SockDiagMessage,
    };
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
    use std::net::SocketAddr;

    pub fn open() -> std::io::Result<Socket> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        Ok(socket)
    }

    /// One request on `socket`, read to its end (a dump's DONE, an exact
    /// lookup's one answer or error), so the socket can be used again.
    pub fn query(
        socket: &mut Socket,
        family: u8,
        protocol: u8,
        exact: Option<(SocketAddr, SocketAddr)>,
        states: StateFlags,
        out: &mut Vec<SocketEntry>,
    ) -> std::io::Result<()> {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | if exact.is_none() { NLM_F_DUMP } else { 0 };
        let socket_id = match exact {
            None if family == AF_INET => SocketId::new_v4(),
            None => SocketId::new_v6(),
            Some((l, r)) => SocketId {
                source_port: l.port(),
                destination_port: r.port(),
                source_address: l.ip(),
                destination_address: r.ip(),
                interface_id: 0,
                cookie: [0xff; 8],
            },
        };
        let mut packet = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        socket.send(&buf[..], 0)?;
        let mut rx = vec![0u8; 64 * 1024];
        let tcp = protocol == IPPROTO_TCP;
        loop {
            let size = socket.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < size {
                let msg = match <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..size]) {
                    Ok(m) => m,
                    // the socket may hold the rest: the caller drops it
                    Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "sock_diag: malformed answer")),
                };
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let h = &r.header;
                        out.push(SocketEntry {
                            tcp,
                            local: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
                            remote: SocketAddr::new(h.socket_id.destination_address, h.socket_id.destination_port),
                            state: h.state,
                            inode: h.inode as u64,
                            uid: h.uid,
                        });
                        if exact.is_some() {
                            return Ok(());
                        }
                    }
                    NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(()),
                    _ => {}
                }
                if len == 0 {
                    return Ok(());
                }
                off += len;
            }
        }
    }
}

/// Socket inode → owning process, by walking `/proc/*/fd`.
pub struct InodeOwners {
    root: PathBuf,
    map: HashMap<u64, ProcKey>,
}

impl InodeOwners {
    /// Over a proc root.
    pub fn new(root: &Path) -> Self {
        InodeOwners {
            root: root.to_path_buf(),
            map: HashMap::new(),
        }
    }

    /// Owners of `inodes`; walks the fd tables only when some are unknown.
    pub fn resolve(&mut self, inodes: &HashSet<u64>, snap: &Snapshot) -> HashMap<u64, ProcKey> {
        self.map.retain(|_, k| snap.procs.contains_key(k));
        if inodes.iter().any(|i| !self.map.contains_key(i)) {
            for key in snap.procs.keys() {
                let Ok(rd) = std::fs::read_dir(self.root.join(key.pid.to_string()).join("fd")) else {
                    continue;
                };
                for e in rd.flatten() {
                    let Ok(t) = std::fs::read_link(e.path()) else { continue };
                    let t = t.to_string_lossy();
                    if let Some(n) = t
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|n| n.parse().ok())
                    {
                        if inodes.contains(&n) {
                            self.map.insert(n, *key);
                        }
                    }
                }
            }
        }
        inodes.iter().filter_map(|i| self.map.get(i).map(|k| (*i, *k))).collect()
    }
}
