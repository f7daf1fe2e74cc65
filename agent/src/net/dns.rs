//! DNS messages as the network sensor needs them: the names asked for and
//! the A, AAAA and CNAME answers, from a UDP payload or a DNS-over-TCP
//! stream. Parsing is done by `simple-dns`, whose compression pointers
//! must point strictly backwards, so pointer loops cannot happen.
//!
//! Names are lowercased, without the trailing dot, in presentation format:
//! a byte that is not printable ASCII (or a `.`/`\` inside a label) is
//! written as `\DDD` / `\.` / `\\`, so hostile names never carry control
//! characters.

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One DNS message, reduced to what matters for mining detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    /// Transaction id.
    pub id: u16,
    /// True for a response (QR bit set).
    pub response: bool,
    /// Names in the question section.
    pub questions: Vec<String>,
    /// A, AAAA and CNAME records of the answer section, in order; other
    /// record types are skipped.
    pub answers: Vec<DnsAnswer>,
}

/// One A, AAAA or CNAME answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The owner name of the record.
    pub name: String,
    /// The address of an A or AAAA record.
    pub addr: Option<IpAddr>,
    /// The target of a CNAME record.
    pub cname: Option<String>,
    /// Time to live in seconds.
    pub ttl: u32,
}

/// Why a DNS message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// DNS over TCP: the length prefix announces more bytes than are there yet.
    #[error("incomplete DNS message: more bytes needed")]
    Incomplete,
    /// Not a well-formed DNS message.
    #[error("malformed DNS message")]
    Malformed,
}

/// Parse a DNS message carried in one UDP datagram.
///
/// Should the message as a whole fail to parse, it is tried once more with
/// the reserved header bit cleared and the authority and additional sections
/// dropped, so a broken record there does not hide the answers.
///
/// ```
/// use rigwatch_agent::net::dns::{parse, DnsError};
/// // a query for "Pool.example" type A
/// let q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04Pool\x07example\x00\x00\x01\x00\x01";
/// let m = parse(q).unwrap();
/// assert_eq!((m.id, m.response), (0x1234, false));
/// assert_eq!(m.questions, vec!["pool.example".to_string()]);
/// assert_eq!(parse(b"\x00\x01"), Err(DnsError::Malformed));
/// ```
pub fn parse(bytes: &[u8]) -> Result<DnsMessage, DnsError> {
    // Reject impossible section counts before the parser reserves room for
    // them (a 40-byte datagram must not make it allocate for 65535 records).
    let (all_fit, answers_fit) = counts_fit(bytes).ok_or(DnsError::Malformed)?;
    if !answers_fit {
        return Err(DnsError::Malformed);
    }
    let first = if all_fit { Packet::parse(bytes).ok() } else { None };
    match first {
        Some(p) => Ok(convert(&p)),
        None => {
            let mut copy = bytes.to_vec();
            // clear Z, zero NSCOUNT and ARCOUNT (pointers only go backwards,
            // so cutting later sections cannot break earlier names)
            if let Some(b) = copy.get_mut(3) {
                *b &= !0x40;
            }
            for b in copy.iter_mut().take(12).skip(8) {
                *b = 0;
            }
            let p = Packet::parse(&copy).map_err(|_| DnsError::Malformed)?;
            Ok(convert(&p))
        }
    }
}

/// Parse the first DNS message of a DNS-over-TCP stream (2-byte big-endian
/// length prefix, RFC 1035 §4.2.2).
///
/// ```
/// use rigwatch_agent::net::dns::{parse_tcp, DnsError};
/// assert_eq!(parse_tcp(b"\x00"), Err(DnsError::Incomplete));
/// assert_eq!(parse_tcp(b"\x00\x20\x12\x34"), Err(DnsError::Incomplete));
/// ```
pub fn parse_tcp(bytes: &[u8]) -> Result<DnsMessage, DnsError> {
    let [hi, lo, rest @ ..] = bytes else {
        return Err(DnsError::Incomplete);
    };
    let len = u16::from_be_bytes([*hi, *lo]) as usize;
    if len < 12 {
        return Err(DnsError::Malformed);
    }
    let msg = rest.get(..len).ok_or(DnsError::Incomplete)?;
    parse(msg)
}

/// Whether the header's section counts can fit in the message: every
/// question takes at least 5 bytes, every record at least 11. Returns
/// (all four sections fit, questions and answers fit); `None` without a header.
fn counts_fit(bytes: &[u8]) -> Option<(bool, bool)> {
    let count = |i: usize| -> Option<usize> { Some(u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]) as usize) };
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let room = bytes.len().checked_sub(12)?;
    let qa = qd * 5 + an * 11;
    Some((qa + (ns + ar) * 11 <= room, qa <= room))
}

fn convert(p: &Packet<'_>) -> DnsMessage {
    let questions = p.questions.iter().map(|q| name_to_string(&q.qname)).collect();
    let answers = p
        .answers
        .iter()
        .filter_map(|rr| {
            let (addr, cname) = match &rr.rdata {
                RData::A(a) => (Some(IpAddr::V4(Ipv4Addr::from(a.address))), None),
                RData::AAAA(a) => (Some(IpAddr::V6(Ipv6Addr::from(a.address))), None),
                RData::CNAME(c) => (None, Some(name_to_string(&c.0))),
                _ => return None,
            };
            Some(DnsAnswer {
                name: name_to_string(&rr.name),
                addr,
                cname,
                ttl: rr.ttl,
            })
        })
        .collect();
    DnsMessage {
        id: p.id(),
        response: p.has_flags(PacketFlag::RESPONSE),
        questions,
        answers,
    }
}

/// Lowercased presentation form without the trailing dot; the root is "".
fn name_to_string(n: &Name<'_>) -> String {
    let mut s = String::new();
    for (i, label) in n.as_bytes().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for &b in label {
            match b {
                b'.' => s.push_str("\\."),
                b'\\' => s.push_str("\\\\"),
                0x21..=0x7e => s.push(b.to_ascii_lowercase() as char),
                _ => {
                    s.push('\\');
                    s.push_str(&format!("{b:03}"));
                }
            }
        }
    }
    s
}

/// DNS messages for tests (here and in the flow table's).
#[cfg(test)]
pub(crate) mod tests_support {
    /// Encode a name without compression.
    pub fn name(n: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in n.split('.').filter(|l| !l.is_empty()) {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    pub fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
        [id, flags, qd, an, ns, ar].iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    pub fn rr(owner: &[u8], typ: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut v = owner.to_vec();
        v.extend_from_slice(&typ.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        v.extend_from_slice(rdata);
        v
    }

    /// An A query for `qname` with `id`, and the answer giving `ip`.
    pub fn query_and_answer(id: u16, qname: &str, ip: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
        let mut q = header(id, 0x0100, 1, 0, 0, 0);
        q.extend_from_slice(&name(qname));
        q.extend_from_slice(&[0, 1, 0, 1]);
        let mut a = header(id, 0x8180, 1, 1, 0, 0);
        a.extend_from_slice(&q[12..]);
        a.extend_from_slice(&rr(&[0xc0, 12], 1, 60, &ip));
        (q, a)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    /// The response a resolver gives for pool.supportxmr.com: a CNAME to a
    /// load balancer name and two A records, names compressed.
    fn pool_response() -> Vec<u8> {
        let mut m = header(0xbeef, 0x8180, 1, 4, 0, 1);
        m.extend_from_slice(&name("Pool.SupportXMR.com")); // offset 12
        m.extend_from_slice(&[0, 1, 0, 1]);
        // CNAME pool.supportxmr.com -> lb.supportxmr.com (compressed: "lb" + ptr to "supportxmr.com" at 17)
        m.extend_from_slice(&rr(&[0xc0, 12], 5, 300, &[2, b'l', b'b', 0xc0, 17]));
        let lb = (m.len() - 5) as u8; // offset of the "lb" label in the CNAME rdata
        m.extend_from_slice(&rr(&[0xc0, lb], 1, 60, &[141, 94, 96, 144]));
        m.extend_from_slice(&rr(&[0xc0, lb], 1, 60, &[141, 94, 96, 71]));
        // an MX answer is skipped
        m.extend_from_slice(&rr(&[0xc0, 12], 15, 60, &[0, 10, 0xc0, lb]));
        // EDNS OPT in the additional section
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn response_with_cname_chain_and_compression() {
        let m = parse(&pool_response()).unwrap();
        assert_eq!(m.id, 0xbeef);
        assert!(m.response);
        assert_eq!(m.questions, vec!["pool.supportxmr.com"]);
        assert_eq!(m.answers.len(), 3);
        assert_eq!(
            m.answers[0],
            DnsAnswer {
                name: "pool.supportxmr.com".into(),
                addr: None,
                cname: Some("lb.supportxmr.com".into()),
                ttl: 300
            }
        );
        assert_eq!(
            m.answers[1],
            DnsAnswer {
                name: "lb.supportxmr.com".into(),
                addr: Some("141.94.96.144".parse().unwrap()),
                cname: None,
                ttl: 60
            }
        );
        assert_eq!(m.answers[2].addr, Some("141.94.96.71".parse().unwrap()));
    }

    #[test]
    fn aaaa_answer() {
        let mut m = header(7, 0x8180, 1, 1, 0, 0);
        m.extend_from_slice(&name("xmr.2miners.com."));
        m.extend_from_slice(&[0, 28, 0, 1]);
        let v6: Ipv6Addr = "2a01:4f8:c2c:1d1e::1".parse().unwrap();
        m.extend_from_slice(&rr(&[0xc0, 12], 28, 120, &v6.octets()));
        let m = parse(&m).unwrap();
        assert_eq!(m.questions, vec!["xmr.2miners.com"]);
        assert_eq!(
            m.answers,
            vec![DnsAnswer {
                name: "xmr.2miners.com".into(),
                addr: Some(IpAddr::V6(v6)),
                cname: None,
                ttl: 120
            }]
        );
    }

    #[test]
    fn query_is_not_a_response() {
        let mut q = header(0x1234, 0x0100, 1, 0, 0, 0);
        q.extend_from_slice(&name("gulf.moneroocean.stream"));
        q.extend_from_slice(&[0, 1, 0, 1]);
        let m = parse(&q).unwrap();
        assert!(!m.response);
        assert_eq!(m.questions, vec!["gulf.moneroocean.stream"]);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_rejected() {
        // the question name points at itself
        let mut m = header(1, 0x8180, 1, 0, 0, 0);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(DnsError::Malformed));
        // two labels pointing at each other
        let mut m = header(1, 0x8180, 1, 0, 0, 0);
        m.extend_from_slice(&[1, b'a', 0xc0, 16, 1, b'b', 0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(DnsError::Malformed));
        // a pointer past the end
        let mut m = header(1, 0x8180, 1, 0, 0, 0);
        m.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(DnsError::Malformed));
    }

    #[test]
    fn hostile_label_bytes_are_escaped() {
        let mut m = header(1, 0x0100, 1, 0, 0, 0);
        m.extend_from_slice(&[5, b'E', 0x1b, b'.', b'\\', 0x00, 3, b'c', b'o', b'm', 0, 0, 1, 0, 1]);
        let m = parse(&m).unwrap();
        assert_eq!(m.questions, vec!["e\\027\\.\\\\\\000.com"]);
        assert!(!m.questions[0].chars().any(char::is_control));
    }

    #[test]
    fn broken_additional_section_does_not_hide_answers() {
        let mut m = pool_response();
        // claim five additional records where there is one
        m[11] = 5;
        let p = parse(&m).unwrap();
        assert_eq!(p.answers.len(), 3);
    }

    #[test]
    fn impossible_counts_are_rejected_before_parsing() {
        let mut m = header(1, 0x8180, 0xffff, 0xffff, 0xffff, 0xffff);
        m.extend_from_slice(&[0; 28]);
        assert_eq!(parse(&m), Err(DnsError::Malformed));
        // answers that fit, an additional count that cannot
        let mut m = pool_response();
        m[10] = 0xff;
        m[11] = 0xff;
        assert_eq!(parse(&m).unwrap().answers.len(), 3);
    }

    #[test]
    fn short_and_truncated_messages() {
        assert_eq!(parse(b""), Err(DnsError::Malformed));
        assert_eq!(parse(&[0; 11]), Err(DnsError::Malformed));
        let full = pool_response();
        // cut inside the answers
        assert_eq!(parse(&full[..40]), Err(DnsError::Malformed));
        for i in 0..full.len() {
            let _ = parse(&full[..i]);
        }
    }

    #[test]
    fn dns_over_tcp() {
        let msg = pool_response();
        let mut s = (msg.len() as u16).to_be_bytes().to_vec();
        s.extend_from_slice(&msg);
        let m = parse_tcp(&s).unwrap();
        assert_eq!(m.id, 0xbeef);
        assert_eq!(m.answers.len(), 3);
        // a second message behind it is ignored
        let mut two = s.clone();
        two.extend_from_slice(&s);
        assert_eq!(parse_tcp(&two).unwrap(), m);
        // split across segments
        assert_eq!(parse_tcp(&s[..1]), Err(DnsError::Incomplete));
        assert_eq!(parse_tcp(&s[..s.len() - 1]), Err(DnsError::Incomplete));
        assert_eq!(parse_tcp(b"\x00\x03abc"), Err(DnsError::Malformed));
    }
}
