//! The connect-trace sensor (eBPF): who opened each TCP connection, recorded
//! by the kernel when it was opened, so a flow is attributed to its process
//! even when the connection lasted 50 ms or its process has exited, and in
//! any network namespace.
//!
//! `bpf/connect.bpf.c` runs on `inet_sock_set_state`: at SYN_SENT it keeps
//! the connecting task (pid, start time, uid, comm) per socket in a bounded
//! LRU map; at ESTABLISHED it sends the 4-tuple, the owner and the network
//! namespace through a ring buffer. A thread here drains it into the table
//! the network sensors share ([`NetShared::learn_connect`], bounded, five
//! minutes); the capture sensor consults it for a flow whose socket it can
//! no longer find. The sensor itself adds no observations.
//!
//! What the miner controls: the tuple (any, but only matched against what
//! the capture saw on the wire) and comm (only shown). A flood of connects
//! evicts the oldest owners (counted): the flow is then still reported, as
//! a flow without a process. Unavailable without CAP_BPF + CAP_PERFMON, BTF
//! or clang at build time, like the other eBPF sensors.

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::net::shared::{ConnectOwner, NetShared};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connect.bpf.o"));

/// The event's layout (see `struct conn_event`).
const EVENT_LEN: usize = 4 + 4 + 8 + 4 + 2 * 4 + 16 + 16 + 16;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// One connection, as the kernel saw it: client, server and owner.
pub type Connect = (SocketAddr, SocketAddr, ConnectOwner);

/// An IPv6 address that is an IPv4 one in disguise (a dual-stack socket
/// connecting to IPv4) is the IPv4 address the wire carries.
fn unmapped(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

/// Decodes one ring-buffer record; `None` when it is not a whole event of a
/// known family.
pub fn parse(rec: &[u8]) -> Option<Connect> {
    if rec.len() < EVENT_LEN {
        return None;
    }
    let u16_at = |o: usize| u16::from_ne_bytes(rec[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_ne_bytes(rec[o..o + 4].try_into().unwrap());
    let addr16 = |o: usize| -> [u8; 16] { rec[o..o + 16].try_into().unwrap() };
    let (src, dst) = match u16_at(20) {
        AF_INET => (
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&rec[28..32]).unwrap())),
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&rec[44..48]).unwrap())),
        ),
        AF_INET6 => (unmapped(Ipv6Addr::from(addr16(28))), unmapped(Ipv6Addr::from(addr16(44)))),
        _ => return None,
    };
    let comm = &rec[60..76];
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    Some((
        SocketAddr::new(src, u16_at(22)),
        SocketAddr::new(dst, u16_at(24)),
        ConnectOwner {
            pid: u32_at(0),
            uid: u32_at(4),
            start_ns: u64::from_ne_bytes(rec[8..16].try_into().unwrap()),
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
            netns: u32_at(16),
        },
    ))
}

struct Running {
    // the reader stops before the program is unloaded
    _reader: crate::host::bpf::RingReader,
    _bpf: aya::Ebpf,
    seen: Arc<AtomicU64>,
}

impl Running {
    fn start(shared: Arc<NetShared>) -> Result<Running, String> {
        let (mut bpf, _link) = crate::host::bpf::load_tp_btf(PROGRAM, "on_state", "inet_sock_set_state")?;
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let reader = crate::host::bpf::RingReader::start(
            &mut bpf,
            "connects",
            "rw-connecttrace",
            std::time::Duration::from_millis(10),
            move |rec| {
                let Some((client, server, owner)) = parse(rec) else { return };
                s.fetch_add(1, Ordering::Relaxed);
                shared.learn_connect(client, server, owner);
            },
        )?;
        Ok(Running {
            _reader: reader,
            _bpf: bpf,
            seen,
        })
    }
}

/// The connect-trace sensor.
pub struct ConnectTraceSensor {
    running: Result<Running, String>,
    shared: Arc<NetShared>,
}

impl ConnectTraceSensor {
    /// Loads, attaches and starts draining into `shared` (or remembers why
    /// it could not).
    pub fn start(shared: Arc<NetShared>) -> Self {
        ConnectTraceSensor {
            running: Running::start(shared.clone()),
            shared,
        }
    }
}

impl Sensor for ConnectTraceSensor {
    fn name(&self) -> &'static str {
        "connecttrace"
    }

    fn observe(&mut self, _snap: &Snapshot, _out: &mut Vec<Observation>) -> Result<(), SensorError> {
        self.running.as_ref().map(|_| ()).map_err(|w| SensorError {
            sensor: "connecttrace",
            message: format!("unavailable: {w}"),
        })
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        match &self.running {
            Ok(r) => vec![
                ("connects_seen", r.seen.load(Ordering::Relaxed)),
                ("connects_forgotten", self.shared.connects_len().1),
            ],
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(family: u16, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
        let mut r = vec![0u8; EVENT_LEN];
        r[0..4].copy_from_slice(&4242u32.to_ne_bytes());
        r[4..8].copy_from_slice(&65534u32.to_ne_bytes());
        r[8..16].copy_from_slice(&7_000_000_000u64.to_ne_bytes());
        r[16..20].copy_from_slice(&4026531840u32.to_ne_bytes());
        r[20..22].copy_from_slice(&family.to_ne_bytes());
        r[22..24].copy_from_slice(&40123u16.to_ne_bytes());
        r[24..26].copy_from_slice(&3333u16.to_ne_bytes());
        r[28..44].copy_from_slice(&src);
        r[44..60].copy_from_slice(&dst);
        r[60..65].copy_from_slice(b"xmrig");
        r
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn events_decode_for_both_families_and_mapped_addresses_are_ipv4() {
        let (c, s, o) = parse(&record(AF_INET, v4([10, 0, 0, 2]), v4([192, 0, 2, 7]))).unwrap();
        assert_eq!((c.to_string(), s.to_string()), ("10.0.0.2:40123".into(), "192.0.2.7:3333".into()));
        assert_eq!(
            o,
            ConnectOwner {
                pid: 4242,
                uid: 65534,
                start_ns: 7_000_000_000,
                comm: "xmrig".into(),
                netns: 4026531840
            }
        );
        let mapped = |a: [u8; 4]| Ipv4Addr::from(a).to_ipv6_mapped().octets();
        let (c, s, _) = parse(&record(AF_INET6, mapped([127, 0, 0, 1]), mapped([127, 0, 0, 1]))).unwrap();
        assert_eq!((c.to_string(), s.to_string()), ("127.0.0.1:40123".into(), "127.0.0.1:3333".into()));
        let (c, _, _) = parse(&record(AF_INET6, Ipv6Addr::LOCALHOST.octets(), Ipv6Addr::LOCALHOST.octets())).unwrap();
        assert_eq!(c.to_string(), "[::1]:40123");
        // an unknown family or a short record is refused, never guessed
        assert!(parse(&record(1, [0; 16], [0; 16])).is_none());
        assert!(parse(&record(AF_INET, [0; 16], [0; 16])[..EVENT_LEN - 1]).is_none());
    }
}
