//! Proxy preambles: SOCKS4/4a, SOCKS5 and HTTP `CONNECT`. A miner told to
//! use a proxy (`xmrig -x host:port`, Tor, a private relay) first asks the
//! proxy for its pool, then speaks plain stratum through the same
//! connection. These parsers find where each direction's preamble ends, so
//! the classifiers see what follows, and return the destination the client
//! asked for (itself evidence: a pool domain or address).
//!
//! Pure and bounded: bytes in, a verdict out; never panics, whatever the
//! input (the `flows` fuzz target drives them through the flow table).

/// The longest client preamble looked for: a SOCKS5 greeting (2 + 255),
/// username/password sub-negotiation (3 + 255 + 255) and request
/// (4 + 1 + 255 + 2) fit, as do the headers of an HTTP `CONNECT`.
pub const MAX_PREAMBLE: usize = 2048;

/// Which proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SOCKS4, or SOCKS4a (a host name instead of an address).
    Socks4,
    /// SOCKS5 (RFC 1928, with RFC 1929 username/password).
    Socks5,
    /// HTTP `CONNECT host:port`.
    HttpConnect,
}

impl Kind {
    /// The name used in evidence.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Socks4 => "socks4",
            Kind::Socks5 => "socks5",
            Kind::HttpConnect => "http-connect",
        }
    }
}

/// The destination the client asked the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A host name (lowercase) or an IP address, as text.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The verdict on the first bytes of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preamble {
    /// Could still be a preamble: wait for more bytes.
    More,
    /// Not a proxy preamble (or not one this side sends).
    No,
    /// The client's request: the tunnelled stream starts at `len`.
    Client { kind: Kind, len: usize, target: Target },
    /// The proxy's answer granted the request: the stream starts at `len`.
    Granted { len: usize },
    /// The proxy refused: nothing follows.
    Refused,
}

/// A host name as a proxy request carries it: printable, bounded, lowercased.
fn host_name(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > 255 {
        return None;
    }
    let s = std::str::from_utf8(raw).ok()?;
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// The client side's preamble, from the first byte of the flow.
pub fn client(buf: &[u8]) -> Preamble {
    match buf.first() {
        None => Preamble::More,
        Some(4) => socks4_client(buf),
        Some(5) => socks5_client(buf),
        Some(b'C' | b'c') => connect_client(buf),
        Some(_) => Preamble::No,
    }
}

/// The proxy's answer to a `kind` request, from the first byte it sent.
pub fn server(buf: &[u8], kind: Kind) -> Preamble {
    match kind {
        Kind::Socks4 => socks4_server(buf),
        Kind::Socks5 => socks5_server(buf),
        Kind::HttpConnect => connect_server(buf),
    }
}

/// `04 CMD PORT(2) IP(4) USERID 00 [HOST 00]` (HOST when IP is 0.0.0.x, x ≠ 0).
fn socks4_client(buf: &[u8]) -> Preamble {
    if buf.len() < 9 {
        return if buf.len() >= 2 && buf[1] != 1 {
            Preamble::No
        } else {
            Preamble::More
        };
    }
    if buf[1] != 1 {
        return Preamble::No; // only CONNECT tunnels a stream
    }
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let ip = [buf[4], buf[5], buf[6], buf[7]];
    let Some(user_end) = buf[8..].iter().take(256).position(|&b| b == 0).map(|p| 8 + p) else {
        return if buf.len() - 8 < 256 { Preamble::More } else { Preamble::No };
    };
    if ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] != 0 {
        let start = user_end + 1;
        let rest = buf.get(start..).unwrap_or(&[]);
        let Some(end) = rest.iter().take(256).position(|&b| b == 0) else {
            return if rest.len() < 256 { Preamble::More } else { Preamble::No };
        };
        let Some(host) = host_name(&rest[..end]) else { return Preamble::No };
        return Preamble::Client {
            kind: Kind::Socks4,
            len: start + end + 1,
            target: Target { host, port },
        };
    }
    if port == 0 || ip == [0, 0, 0, 0] {
        return Preamble::No;
    }
    Preamble::Client {
        kind: Kind::Socks4,
        len: user_end + 1,
        target: Target {
            host: std::net::Ipv4Addr::from(ip).to_string(),
            port,
        },
    }
}

/// `00 5A PORT(2) IP(4)`: granted; `00 5B..5D …`: refused.
fn socks4_server(buf: &[u8]) -> Preamble {
    match buf {
        [] | [0] => Preamble::More,
        [0, 0x5a, ..] if buf.len() >= 8 => Preamble::Granted { len: 8 },
        [0, 0x5a, ..] => Preamble::More,
        [0, 0x5b..=0x5d, ..] => Preamble::Refused,
        _ => Preamble::No,
    }
}

/// Greeting `05 N METHODS…`, then optionally RFC 1929 `01 ULEN USER PLEN
/// PASS`, then the request `05 01 00 ATYP ADDR PORT(2)`.
fn socks5_client(buf: &[u8]) -> Preamble {
    let Some(&n) = buf.get(1) else { return Preamble::More };
    if n == 0 {
        return Preamble::No;
    }
    // `05 01 00 ATYP…` is the request itself: what came before it was not
    // seen (the live filter drops the username/password step, and the
    // table restarts the stream at the gap). A greeting `05 01 00` is
    // followed by `05`, never by an address type.
    if n == 1 && buf.get(2) == Some(&0) && matches!(buf.get(3), Some(1 | 3 | 4)) {
        return socks5_request(buf, 0);
    }
    let mut at = 2 + n as usize;
    match buf.get(2..at) {
        None => return Preamble::More,
        // method numbers above 0x09 are unassigned or private: not SOCKS
        Some(methods) if methods.iter().any(|&m| m > 0x09 && m < 0x80) => return Preamble::No,
        Some(_) => {}
    }
    // RFC 1929 sub-negotiation (version 1) when the client offered it
    if buf.get(at) == Some(&1) && buf[2..2 + n as usize].contains(&2) {
        let Some(&ulen) = buf.get(at + 1) else { return Preamble::More };
        let Some(&plen) = buf.get(at + 2 + ulen as usize) else {
            return Preamble::More;
        };
        at += 3 + ulen as usize + plen as usize;
    }
    if buf.get(at..at + 4).is_none() {
        return if buf.len() > at && buf[at] != 5 {
            Preamble::No
        } else {
            Preamble::More
        };
    }
    socks5_request(buf, at)
}

/// The request `05 01 00 ATYP ADDR PORT(2)` at `at`.
fn socks5_request(buf: &[u8], at: usize) -> Preamble {
    let Some(req) = buf.get(at..at + 4) else { return Preamble::More };
    if req[0] != 5 || req[1] != 1 || req[2] != 0 {
        return Preamble::No; // not a CONNECT request
    }
    let addr = at + 4;
    let (host, end) = match req[3] {
        1 => match buf.get(addr..addr + 4) {
            Some(b) => (std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(), addr + 4),
            None => return Preamble::More,
        },
        4 => match buf.get(addr..addr + 16) {
            Some(b) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                (std::net::Ipv6Addr::from(o).to_string(), addr + 16)
            }
            None => return Preamble::More,
        },
        3 => {
            let Some(&len) = buf.get(addr) else { return Preamble::More };
            let Some(name) = buf.get(addr + 1..addr + 1 + len as usize) else {
                return Preamble::More;
            };
            let Some(host) = host_name(name) else { return Preamble::No };
            (host, addr + 1 + len as usize)
        }
        _ => return Preamble::No,
    };
    let Some(p) = buf.get(end..end + 2) else { return Preamble::More };
    Preamble::Client {
        kind: Kind::Socks5,
        len: end + 2,
        target: Target {
            host,
            port: u16::from_be_bytes([p[0], p[1]]),
        },
    }
}

/// `05 METHOD`, then `01 STATUS` after username/password, then the reply
/// `05 REP 00 ATYP ADDR PORT(2)` (REP 0 granted).
fn socks5_server(buf: &[u8]) -> Preamble {
    let Some(m) = buf.get(..2) else { return Preamble::More };
    if m[0] != 5 {
        return Preamble::No;
    }
    if m[1] == 0xff {
        return Preamble::Refused; // no acceptable method
    }
    let mut at = 2;
    if m[1] == 0 && buf.get(2) == Some(&0) {
        // `05 00 00 …` is the reply itself: the two-byte method choice
        // before it was not seen (the live capture's filter drops it)
        at = 0;
    } else if m[1] == 2 {
        let Some(st) = buf.get(2..4) else { return Preamble::More };
        if st[0] != 1 {
            return Preamble::No;
        }
        if st[1] != 0 {
            return Preamble::Refused;
        }
        at = 4;
    }
    let Some(rep) = buf.get(at..at + 4) else { return Preamble::More };
    if rep[0] != 5 {
        return Preamble::No;
    }
    if rep[1] != 0 {
        return Preamble::Refused;
    }
    let len = match rep[3] {
        1 => 4,
        4 => 16,
        3 => match buf.get(at + 4) {
            Some(&l) => 1 + l as usize,
            None => return Preamble::More,
        },
        _ => return Preamble::No,
    };
    let end = at + 4 + len + 2;
    if buf.len() < end {
        return Preamble::More;
    }
    Preamble::Granted { len: end }
}

/// The end of an HTTP head (`\r\n\r\n`), within [`MAX_PREAMBLE`].
fn head_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_PREAMBLE)];
    window.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `CONNECT host:port HTTP/1.x` and headers up to the blank line.
fn connect_client(buf: &[u8]) -> Preamble {
    const VERB: &[u8] = b"CONNECT ";
    let n = buf.len().min(VERB.len());
    if !buf[..n].eq_ignore_ascii_case(&VERB[..n]) {
        return Preamble::No;
    }
    let Some(line_end) = buf.iter().take(MAX_PREAMBLE).position(|&b| b == b'\n') else {
        return if buf.len() < MAX_PREAMBLE { Preamble::More } else { Preamble::No };
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(_), Some(authority), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Preamble::No;
    };
    if !version.starts_with("HTTP/1.") {
        return Preamble::No;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => return Preamble::No,
    };
    let (Some(host), Ok(port)) = (host_name(host.as_bytes()), port.parse::<u16>()) else {
        return Preamble::No;
    };
    match head_end(buf) {
        Some(len) => Preamble::Client {
            kind: Kind::HttpConnect,
            len,
            target: Target { host, port },
        },
        None if buf.len() < MAX_PREAMBLE => Preamble::More,
        None => Preamble::No,
    }
}

/// `HTTP/1.x 2xx …` and headers up to the blank line.
fn connect_server(buf: &[u8]) -> Preamble {
    const V: &[u8] = b"HTTP/1.";
    let n = buf.len().min(V.len());
    if buf[..n] != V[..n] {
        return Preamble::No;
    }
    let Some(status) = buf.get(9..12) else { return Preamble::More };
    if status[0] != b'2' {
        return Preamble::Refused;
    }
    match head_end(buf) {
        Some(len) => Preamble::Granted { len },
        None if buf.len() < MAX_PREAMBLE => Preamble::More,
        None => Preamble::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(p: Preamble) -> (Kind, usize, String) {
        match p {
            Preamble::Client { kind, len, target } => (kind, len, target.to_string()),
            other => panic!("not a client preamble: {other:?}"),
        }
    }

    #[test]
    fn socks5_with_a_domain_and_with_a_password() {
        let mut b = vec![5, 1, 0, 5, 1, 0, 3, 16];
        b.extend_from_slice(b"pool.example.com");
        b.extend_from_slice(&3333u16.to_be_bytes());
        let len = b.len();
        b.extend_from_slice(b"{\"id\":1}");
        assert_eq!(target(client(&b)), (Kind::Socks5, len, "pool.example.com:3333".into()));
        // byte by byte: More until the port is in
        for cut in 0..len {
            assert_eq!(client(&b[..cut]), Preamble::More, "at {cut}");
        }
        // username/password offered and used
        let mut a = vec![5, 2, 0, 2, 1, 4];
        a.extend_from_slice(b"user");
        a.push(2);
        a.extend_from_slice(b"pw");
        a.extend_from_slice(&[5, 1, 0, 1, 10, 0, 0, 7]);
        a.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(target(client(&a)), (Kind::Socks5, a.len(), "10.0.0.7:443".into()));
        // the request alone (the steps before it unseen)
        let bare = &a[a.len() - 10..];
        assert_eq!(target(client(bare)), (Kind::Socks5, 10, "10.0.0.7:443".into()));
        // the proxy's answers
        assert_eq!(
            server(&[5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0], Kind::Socks5),
            Preamble::Granted { len: 12 }
        );
        assert_eq!(
            server(&[5, 2, 1, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0, b'{'], Kind::Socks5),
            Preamble::Granted { len: 14 }
        );
        assert_eq!(server(&[5, 0, 5, 5, 0, 1], Kind::Socks5), Preamble::Refused);
        assert_eq!(server(&[5, 0xff], Kind::Socks5), Preamble::Refused);
        assert_eq!(server(&[5, 0, 5, 0], Kind::Socks5), Preamble::More);
        // the method choice unseen: the reply alone
        assert_eq!(
            server(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0, b'{'], Kind::Socks5),
            Preamble::Granted { len: 10 }
        );
    }

    #[test]
    fn socks4_and_4a() {
        let mut b = vec![4, 1];
        b.extend_from_slice(&3333u16.to_be_bytes());
        b.extend_from_slice(&[10, 1, 2, 3]);
        b.extend_from_slice(b"me\0");
        assert_eq!(target(client(&b)), (Kind::Socks4, b.len(), "10.1.2.3:3333".into()));
        let mut a = vec![4, 1, 0x0d, 0x05, 0, 0, 0, 1, 0];
        a.extend_from_slice(b"Pool.Example.COM\0");
        assert_eq!(target(client(&a)), (Kind::Socks4, a.len(), "pool.example.com:3333".into()));
        assert_eq!(client(&a[..a.len() - 1]), Preamble::More);
        assert_eq!(server(&[0, 0x5a, 0, 0, 0, 0, 0, 0], Kind::Socks4), Preamble::Granted { len: 8 });
        assert_eq!(server(&[0, 0x5b, 0, 0, 0, 0, 0, 0], Kind::Socks4), Preamble::Refused);
    }

    #[test]
    fn http_connect() {
        let b = b"CONNECT pool.example.com:14444 HTTP/1.1\r\nHost: pool.example.com:14444\r\n\r\n{\"method\":";
        let (k, len, t) = target(client(b));
        assert_eq!((k, t.as_str()), (Kind::HttpConnect, "pool.example.com:14444"));
        assert_eq!(&b[len..], b"{\"method\":");
        assert_eq!(client(b"CONNECT pool.exa"), Preamble::More);
        assert_eq!(
            client(b"CONNECT [2001:db8::1]:3333 HTTP/1.1\r\n\r\n"),
            client(b"CONNECT [2001:db8::1]:3333 HTTP/1.1\r\n\r\n")
        );
        assert!(matches!(
            client(b"CONNECT [2001:db8::1]:3333 HTTP/1.1\r\n\r\n"),
            Preamble::Client { .. }
        ));
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n{\"id\":1";
        assert_eq!(server(ok, Kind::HttpConnect), Preamble::Granted { len: ok.len() - 7 });
        assert_eq!(server(b"HTTP/1.1 407 Proxy Auth", Kind::HttpConnect), Preamble::Refused);
    }

    #[test]
    fn ordinary_streams_are_not_preambles() {
        for b in [
            &b"{\"id\":1,\"method\":\"login\"}"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"CONNECTION: nope\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            &[5, 1, 0x42, 5, 1, 0, 1],
            &[4, 2, 0, 80, 1, 2, 3, 4, 0],
        ] {
            assert_eq!(client(b), Preamble::No, "{b:?}");
        }
        // junk never panics and never waits past the cap
        let junk = vec![5u8; MAX_PREAMBLE * 2];
        assert_ne!(client(&junk), Preamble::More);
        let mut c = b"CONNECT a:1 HTTP/1.1\r\n".to_vec();
        c.resize(MAX_PREAMBLE + 10, b'x');
        assert_eq!(client(&c), Preamble::No);
    }
}
