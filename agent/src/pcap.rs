//! `rigwatch pcap`: the network classifiers over a capture taken elsewhere
//! (pcap or pcapng), reporting findings per flow in the same JSON shape as
//! `scan` (no pid; the flow's addresses instead), scored by the same detector.

use crate::detector::{Detector, DetectorConfig};
use crate::net::classify::{evidence_of, parse_ip};
use crate::net::flows::FlowTable;
use crate::net::shared::FlowFinding;
use crate::sensors::Observation;
use rigwatch_signatures::{Evidence, Finding, Signatures};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// What reading the captures found.
pub struct PcapReport {
    /// Findings, one per flow, most severe first.
    pub findings: Vec<Finding>,
    /// Packets read.
    pub packets: u64,
    /// Packets that could not be parsed (truncated, other protocols).
    pub skipped: u64,
}

/// The IP packet inside a frame of a link type (pcap LINKTYPE_* numbers).
pub fn frame_to_ip(linktype: u32, data: &[u8]) -> Option<&[u8]> {
    let ip_after =
        |off: usize, ethertype: u16| -> Option<&[u8]> { matches!(ethertype, 0x0800 | 0x86dd).then(|| data.get(off..)).flatten() };
    let be16 = |o: usize| -> Option<u16> { Some(u16::from_be_bytes([*data.get(o)?, *data.get(o + 1)?])) };
    match linktype {
        // Ethernet, with up to two VLAN tags
        1 => {
            let mut off = 12;
            let mut et = be16(off)?;
            while et == 0x8100 || et == 0x88a8 {
                off += 4;
                et = be16(off)?;
            }
            ip_after(off + 2, et)
        }
        // raw IP
        101 | 228 | 229 | 12 | 14 => data.get(0..),
        // Linux cooked v1 (16 bytes) and v2 (20 bytes)
        113 => ip_after(16, be16(14)?),
        276 => ip_after(20, be16(0)?),
        // BSD loopback: 4-byte address family
        0 | 108 => data.get(4..),
        _ => None,
    }
}

/// Reads pcap and pcapng files and classifies every flow.
pub fn read_files(files: &[&Path], sig: Arc<Signatures>, host: &str, now: u64) -> anyhow::Result<PcapReport> {
    let mut table = FlowTable::new();
    let mut by_flow: BTreeMap<(SocketAddr, SocketAddr, bool), Vec<Evidence>> = BTreeMap::new();
    let (mut packets, mut skipped) = (0u64, 0u64);
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let mut handle = |linktype: u32, at: std::time::Duration, data: &[u8]| {
            packets += 1;
            table.advance(at.as_millis() as u64);
            let Some(p) = frame_to_ip(linktype, data).and_then(parse_ip) else {
                skipped += 1;
                return;
            };
            for ev in table.push(&p) {
                for (client, server, tcp, e) in evidence_of(&sig, None, &ev) {
                    let v = by_flow.entry((client, server, tcp)).or_default();
                    if !v.contains(&e) {
                        v.push(e);
                    }
                }
            }
        };
        read_one(&bytes, &mut handle).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    }
    // the same detector as live capture: flows whose process is unknown
    let observations: Vec<Observation> = by_flow
        .into_iter()
        .flat_map(|((client, server, tcp), ev)| {
            ev.into_iter().map(move |evidence| {
                Observation::Flow(FlowFinding {
                    client,
                    server,
                    tcp,
                    evidence,
                    inode: None,
                    attributable: false,
                    tries: 0,
                })
            })
        })
        .collect();
    let mut detector = Detector::new(sig.clone(), DetectorConfig::default(), host);
    let findings = detector.assess_offline(&observations, now);
    Ok(PcapReport {
        findings,
        packets,
        skipped,
    })
}

/// Calls `handle(linktype, timestamp, frame)` for every packet of one pcap
/// or pcapng file (a simple packet block has no timestamp: zero). A file cut short ends quietly after its last whole packet; a file
/// that is neither format is an error.
pub fn read_one(bytes: &[u8], handle: &mut dyn FnMut(u32, std::time::Duration, &[u8])) -> anyhow::Result<()> {
    let magic = bytes.get(0..4).ok_or_else(|| anyhow::anyhow!("not a capture file (too short)"))?;
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = pcap_file::pcapng::PcapNgReader::new(bytes).map_err(|e| anyhow::anyhow!("not a pcapng file: {e}"))?;
        let mut links: Vec<u32> = Vec::new();
        while let Some(block) = r.next_block() {
            let Ok(block) = block else { break };
            use pcap_file::pcapng::Block;
            match block {
                Block::InterfaceDescription(i) => links.push(u32::from(i.linktype)),
                Block::EnhancedPacket(p) => {
                    let lt = links.get(p.interface_id as usize).copied().unwrap_or(1);
                    handle(lt, p.timestamp, &p.data);
                }
                Block::SimplePacket(p) => handle(links.first().copied().unwrap_or(1), std::time::Duration::ZERO, &p.data),
                _ => {}
            }
        }
        Ok(())
    } else {
        let mut r = pcap_file::pcap::PcapReader::new(bytes).map_err(|e| anyhow::anyhow!("not a pcap or pcapng file: {e}"))?;
        let lt = u32::from(r.header().datalink);
        while let Some(p) = r.next_packet() {
            let Ok(p) = p else { break };
            handle(lt, p.timestamp, &p.data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types() {
        let ip = [0x45u8, 0, 0, 20];
        let mut eth = vec![0u8; 12];
        eth.extend([0x08, 0x00]);
        eth.extend(ip);
        assert_eq!(frame_to_ip(1, &eth), Some(&ip[..]));
        let mut vlan = vec![0u8; 12];
        vlan.extend([0x81, 0x00, 0, 5, 0x08, 0x00]);
        vlan.extend(ip);
        assert_eq!(frame_to_ip(1, &vlan), Some(&ip[..]));
        let mut arp = vec![0u8; 12];
        arp.extend([0x08, 0x06, 1, 2]);
        assert_eq!(frame_to_ip(1, &arp), None);
        assert_eq!(frame_to_ip(101, &ip), Some(&ip[..]));
        assert_eq!(frame_to_ip(1, &[0u8; 5]), None, "truncated frames are no panic");
        assert_eq!(frame_to_ip(9999, &ip), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seen = 0;
        assert!(read_one(b"hello world, not a capture", &mut |_, _, _| seen += 1).is_err());
        assert!(read_one(b"", &mut |_, _, _| seen += 1).is_err());
        assert_eq!(seen, 0);
    }
}
