//! fakepool: a HARMLESS fake mining pool for rigwatch's network tests.
//!
//! It hands out made-up jobs, accepts every made-up share and mines nothing.
//! It only listens on loopback (127.0.0.0/8, ::1); with RIGWATCH_TEST_NETNS=1
//! (set by tests running inside a network namespace they created) it may also
//! listen on the private test ranges 10/8, 172.16/12 and 192.168/16. Anything
//! else is refused. It exits by itself after --max-seconds (default 600).
//!
//! Usage:
//!   fakepool --dialect D --listen ADDR [--tls] [--once] [--coalesce]
//!            [--proxy socks5|socks4|connect]
//!            [--job-interval SECONDS] [--max-seconds SECONDS]
//!   fakepool --web --listen ADDR [--proxy KIND] [--once]  (the benign
//!            control: a plain web server answering every HTTP request
//!            with a short `200 OK` page; no pool dialect)
//!   fakepool --dns ADDR --answer IPV4 [--once] [--max-seconds SECONDS]
//!   fakepool --push-to ADDR [--delay SECONDS] [--hold SECONDS]  (attacker:
//!            connects, waits, sends an unsolicited pool push to the
//!            listener, holds the connection open)
//!   fakepool --forge-dns NAME --to ADDR --answer IPV4   (attacker: one DNS
//!            answer that answers no query, sent to ADDR)
//!
//! Dialects: stratum-v1, cryptonote, ethproxy, ethereumstratum1,
//! ethereumstratum2, kawpow, getwork (see shared/reference/stratum.md).
//!
//! With --proxy it is the proxy and the pool in one: on each connection it
//! first reads the client's proxy request — SOCKS5 (greeting offering no
//! authentication or username/password, then CONNECT to a name, IPv4 or
//! IPv6 address), SOCKS4/4a (CONNECT to an address or a name), or HTTP
//! `CONNECT host:port` — grants it, and then serves the dialect (or TLS)
//! itself on the same connection. It NEVER connects anywhere: the
//! destination asked for is only printed. Each preamble is read exactly
//! (no byte of the tunnel consumed) and bounded (a name ≤ 255 bytes, an
//! HTTP head ≤ 4 KiB, 5 s to send it); anything else drops the connection.
//!
//! stdout, one event a line (flushed):
//!   listening ADDR          the bound address (first line; use port 0)
//!   accepted PEER           a connection
//!   proxy KIND TARGET       the destination asked of the proxy (--proxy;
//!                           KIND socks5, socks4, socks4a or connect)
//!   tls sni NAME|none       after a TLS handshake (--tls)
//!   got PROXY               a PROXY protocol line before the first message
//!   got nul                 NUL bytes (keepalive probes) skipped
//!   got METHOD              each client request, by its JSON method name
//!   got result              a client line with no method (an answer, e.g. pong)
//!   got junk                a line that is not JSON
//!   got http VERB PATH      an HTTP request (getwork, --web)
//!   got dns NAME TYPE       a DNS query (--dns)
//!   connected PEER          connected (--push-to; first line)
//!   pushed PEER             the unsolicited push was sent (--push-to)
//!   forged NAME             the forged answer was sent (--forge-dns)
//!   closed PEER             the connection ended
//! Errors go to stderr.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_SECONDS: f64 = 600.0;
/// Longest client line / HTTP request accepted before the connection is dropped.
const MAX_MESSAGE: usize = 64 * 1024;

// ---------------------------------------------------------------- safety

/// Loopback always; the private test ranges only inside a test's namespace.
fn allowed(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        return true;
    }
    if std::env::var("RIGWATCH_TEST_NETNS").as_deref() == Ok("1") {
        if let IpAddr::V4(v4) = ip {
            let o = v4.octets();
            return o[0] == 10 || (o[0] == 192 && o[1] == 168) || (o[0] == 172 && (16..=31).contains(&o[1]));
        }
    }
    false
}

fn refuse(what: &str, ip: IpAddr) -> ! {
    eprintln!(
        "fakepool: refusing {what} {ip}: only loopback (127.0.0.0/8, ::1), or with RIGWATCH_TEST_NETNS=1 \
         10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16"
    );
    std::process::exit(2)
}

fn parse_addr(s: &str) -> SocketAddr {
    // A literal address only: no name resolution, ever.
    s.parse().unwrap_or_else(|_| {
        eprintln!("fakepool: {s:?} is not an IP:PORT address");
        std::process::exit(2)
    })
}

// ---------------------------------------------------------------- output

fn say(line: &str) {
    let out = io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------- args

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn take_value(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    if i + 1 >= args.len() {
        eprintln!("fakepool: {flag} needs a value");
        std::process::exit(2)
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Some(v)
}

fn seconds(v: Option<String>, default: f64) -> f64 {
    v.and_then(|s| s.parse::<f64>().ok())
        .filter(|x| x.is_finite() && *x >= 0.0)
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dialect {
    StratumV1,
    CryptoNote,
    EthProxy,
    EthStratum1,
    EthStratum2,
    KawPow,
    Getwork,
}

impl Dialect {
    fn parse(s: &str) -> Option<Dialect> {
        Some(match s {
            "stratum-v1" | "stratum" => Dialect::StratumV1,
            "cryptonote" | "xmrig" => Dialect::CryptoNote,
            "ethproxy" => Dialect::EthProxy,
            "ethereumstratum1" => Dialect::EthStratum1,
            "ethereumstratum2" => Dialect::EthStratum2,
            "kawpow" => Dialect::KawPow,
            "getwork" => Dialect::Getwork,
            _ => return None,
        })
    }
}

/// Which proxy protocol the fake pool speaks first (--proxy).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ProxyKind {
    Socks5,
    Socks4,
    Connect,
}

struct Config {
    dialect: Dialect,
    /// Be a proxy first (and grant every request).
    proxy: Option<ProxyKind>,
    /// A plain web server instead of a pool (the benign control).
    web: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    coalesce: bool,
    job_interval: Duration,
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let max_seconds = seconds(take_value(&mut args, "--max-seconds"), MAX_SECONDS).min(MAX_SECONDS);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(max_seconds));
        eprintln!("fakepool: --max-seconds reached, exiting");
        std::process::exit(0)
    });
    let once = take_flag(&mut args, "--once");

    if let Some(to) = take_value(&mut args, "--push-to") {
        let delay = seconds(take_value(&mut args, "--delay"), 0.0);
        let hold = seconds(take_value(&mut args, "--hold"), 30.0);
        push_to(parse_addr(&to), delay, hold);
        return;
    }
    if let Some(name) = take_value(&mut args, "--forge-dns") {
        let to = parse_addr(&take_value(&mut args, "--to").unwrap_or_else(|| "127.0.0.1:53".into()));
        let answer: Ipv4Addr = take_value(&mut args, "--answer")
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::LOCALHOST);
        for ip in [to.ip(), IpAddr::V4(answer)] {
            if !allowed(ip) {
                refuse("forging toward", ip);
            }
        }
        forge_dns(&name, to, answer);
        return;
    }
    if let Some(dns) = take_value(&mut args, "--dns") {
        let answer = take_value(&mut args, "--answer").unwrap_or_else(|| "127.0.0.1".into());
        let answer: Ipv4Addr = answer.parse().unwrap_or_else(|_| {
            eprintln!("fakepool: --answer must be an IPv4 address");
            std::process::exit(2)
        });
        let addr = parse_addr(&dns);
        if !allowed(addr.ip()) {
            refuse("listening on", addr.ip());
        }
        if !allowed(IpAddr::V4(answer)) {
            refuse("answering with", IpAddr::V4(answer));
        }
        dns_server(addr, answer, once);
        return;
    }

    let web = take_flag(&mut args, "--web");
    let proxy = take_value(&mut args, "--proxy").map(|k| match k.as_str() {
        "socks5" => ProxyKind::Socks5,
        "socks4" | "socks4a" => ProxyKind::Socks4,
        "connect" | "http-connect" => ProxyKind::Connect,
        _ => {
            eprintln!("fakepool: --proxy must be one of socks5 socks4 connect");
            std::process::exit(2)
        }
    });
    let dialect = take_value(&mut args, "--dialect").unwrap_or_default();
    let dialect = match Dialect::parse(&dialect) {
        Some(d) if !web => Some(d),
        // the web server's requests go through the HTTP reader getwork uses
        None if web && dialect.is_empty() => Some(Dialect::Getwork),
        _ => None,
    };
    let Some(dialect) = dialect else {
        eprintln!(
            "fakepool: --dialect must be one of stratum-v1 cryptonote ethproxy ethereumstratum1 \
             ethereumstratum2 kawpow getwork (or use --dns ADDR --answer IP)"
        );
        std::process::exit(2)
    };
    let listen = parse_addr(&take_value(&mut args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into()));
    if !allowed(listen.ip()) {
        refuse("listening on", listen.ip());
    }
    let tls = take_flag(&mut args, "--tls").then(tls_config);
    let cfg = Arc::new(Config {
        dialect,
        proxy,
        web,
        tls,
        coalesce: take_flag(&mut args, "--coalesce"),
        job_interval: Duration::from_secs_f64(seconds(take_value(&mut args, "--job-interval"), 3.0).max(0.05)),
    });
    if !args.is_empty() {
        eprintln!("fakepool: ignoring unknown arguments {args:?}");
    }

    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("fakepool: bind {listen}: {e}");
        std::process::exit(1)
    });
    say(&format!("listening {}", listener.local_addr().expect("local addr")));
    for tcp in listener.incoming() {
        let tcp = match tcp {
            Ok(t) => t,
            Err(e) => {
                eprintln!("fakepool: accept: {e}");
                continue;
            }
        };
        let cfg = cfg.clone();
        let worker = std::thread::spawn(move || {
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            say(&format!("accepted {peer}"));
            if let Err(e) = serve(tcp, &cfg) {
                eprintln!("fakepool: {peer}: {e}");
            }
            say(&format!("closed {peer}"));
        });
        if once {
            let _ = worker.join();
            return;
        }
    }
}

// ---------------------------------------------------------------- TLS

fn tls_config() -> Arc<rustls::ServerConfig> {
    let names = vec!["pool.supportxmr.com".to_string(), "localhost".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("tls certificate");
    Arc::new(cfg)
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
    /// Each call is its own write (its own TCP segment, NODELAY is set).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).and_then(|_| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|_| s.flush()),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
    fn close(&mut self) {
        if let Conn::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
    }
}

/// Reads a PROXY protocol line off the raw socket before a TLS handshake
/// (a balancer sends it in plaintext ahead of the client's ClientHello).
fn skip_raw_proxy_line(tcp: &TcpStream) -> io::Result<()> {
    let mut peek = [0u8; 128];
    loop {
        let n = tcp.peek(&mut peek)?;
        if n == 0 || peek[0] != b'P' {
            return Ok(());
        }
        if n >= 6 && &peek[..6] != b"PROXY " {
            return Ok(());
        }
        if let Some(end) = peek[..n].windows(2).position(|w| w == b"\r\n") {
            let mut line = vec![0u8; end + 2];
            (&*tcp).read_exact(&mut line)?;
            say("got PROXY");
            return Ok(());
        }
        if n == peek.len() {
            return Ok(()); // no CRLF within 128 bytes: not a PROXY v1 line
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- serving

fn serve(tcp: TcpStream, cfg: &Config) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    if let Some(kind) = cfg.proxy {
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let (name, target) = proxy_handshake(&tcp, kind)?;
        say(&format!("proxy {name} {target}"));
    }
    let mut conn = match &cfg.tls {
        None => Conn::Plain(tcp),
        Some(tls) => {
            skip_raw_proxy_line(&tcp)?;
            let sc = rustls::ServerConnection::new(tls.clone()).map_err(io::Error::other)?;
            let mut s = rustls::StreamOwned::new(sc, tcp);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            say(&format!("tls sni {}", s.conn.server_name().unwrap_or("none")));
            Conn::Tls(Box::new(s))
        }
    };
    conn.tcp().set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut pool = Pool::new(cfg);
    let mut buf: Vec<u8> = Vec::new();
    let mut start = true;
    let mut tmp = [0u8; 8192];
    let result = loop {
        if let Some(push) = pool.tick() {
            if let Err(e) = conn.send(&push) {
                break Err(e);
            }
        }
        match conn.read(&mut tmp) {
            Ok(0) => break Ok(()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => break Err(e),
        }
        if start && !strip_preamble(&mut buf, &mut start) {
            continue;
        }
        let writes = if cfg.web {
            web(&mut buf)
        } else if cfg.dialect == Dialect::Getwork {
            pool.http(&mut buf)
        } else {
            pool.lines(&mut buf)
        };
        let writes = match writes {
            Ok(w) => w,
            Err(e) => break Err(e),
        };
        let mut failed = None;
        for w in writes {
            if let Err(e) = conn.send(&w) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    conn.close();
    match result {
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => Ok(()),
        r => r,
    }
}

// ---------------------------------------------------------------- proxy

/// Reads exactly `n` bytes.
fn read_n(mut tcp: &TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    tcp.read_exact(&mut b)?;
    Ok(b)
}

/// Reads up to and including a NUL byte, at most `max` bytes before it.
fn read_nul(tcp: &TcpStream, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let b = read_n(tcp, 1)?[0];
        if b == 0 {
            return Ok(out);
        }
        if out.len() >= max {
            return Err(io::Error::other("proxy request field too long"));
        }
        out.push(b);
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("proxy request: {what}"))
}

/// A host name as text: printable, bounded.
fn name(raw: &[u8]) -> io::Result<String> {
    if raw.is_empty()
        || raw.len() > 255
        || !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(bad("not a host name"));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// Reads the client's proxy request and grants it, consuming exactly the
/// preamble. Returns the protocol's name and the destination asked for
/// (printed only: nothing connects to it).
fn proxy_handshake(tcp: &TcpStream, kind: ProxyKind) -> io::Result<(&'static str, String)> {
    let mut w = tcp;
    match kind {
        ProxyKind::Socks5 => {
            let g = read_n(tcp, 2)?;
            if g[0] != 5 || g[1] == 0 {
                return Err(bad("not a SOCKS5 greeting"));
            }
            let methods = read_n(tcp, g[1] as usize)?;
            if methods.contains(&0) {
                w.write_all(&[5, 0])?;
            } else if methods.contains(&2) {
                // RFC 1929: any username and password will do
                w.write_all(&[5, 2])?;
                let v = read_n(tcp, 2)?;
                if v[0] != 1 {
                    return Err(bad("not a username/password sub-negotiation"));
                }
                read_n(tcp, v[1] as usize)?;
                let plen = read_n(tcp, 1)?[0];
                read_n(tcp, plen as usize)?;
                w.write_all(&[1, 0])?;
            } else {
                w.write_all(&[5, 0xff])?;
                return Err(bad("no acceptable SOCKS5 method"));
            }
            let r = read_n(tcp, 4)?;
            if r[0] != 5 || r[2] != 0 {
                return Err(bad("not a SOCKS5 request"));
            }
            let host = match r[3] {
                1 => {
                    let a = read_n(tcp, 4)?;
                    Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
                }
                4 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&read_n(tcp, 16)?);
                    format!("[{}]", std::net::Ipv6Addr::from(o))
                }
                3 => {
                    let len = read_n(tcp, 1)?[0];
                    name(&read_n(tcp, len as usize)?)?
                }
                _ => return Err(bad("SOCKS5 address type")),
            };
            let p = read_n(tcp, 2)?;
            let port = u16::from_be_bytes([p[0], p[1]]);
            if r[1] != 1 {
                w.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0])?; // command not supported
                return Err(bad("only CONNECT is served"));
            }
            // granted; the bound address is made up (nothing was connected)
            w.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])?;
            Ok(("socks5", format!("{host}:{port}")))
        }
        ProxyKind::Socks4 => {
            let r = read_n(tcp, 8)?;
            if r[0] != 4 {
                return Err(bad("not a SOCKS4 request"));
            }
            let port = u16::from_be_bytes([r[2], r[3]]);
            read_nul(tcp, 255)?; // the user id
            let (kind, host) = if r[4..7] == [0, 0, 0] && r[7] != 0 {
                ("socks4a", name(&read_nul(tcp, 255)?)?)
            } else {
                ("socks4", Ipv4Addr::new(r[4], r[5], r[6], r[7]).to_string())
            };
            if r[1] != 1 {
                w.write_all(&[0, 0x5b, 0, 0, 0, 0, 0, 0])?;
                return Err(bad("only CONNECT is served"));
            }
            w.write_all(&[0, 0x5a, 0, 0, 0, 0, 0, 0])?;
            Ok((kind, format!("{host}:{port}")))
        }
        ProxyKind::Connect => {
            // the head, byte by byte: nothing of the tunnel is consumed
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= 4096 {
                    return Err(bad("HTTP head too long"));
                }
                head.push(read_n(tcp, 1)?[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let line = head.lines().next().unwrap_or("");
            let mut parts = line.split(' ');
            let (Some(verb), Some(authority), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("not an HTTP request line"));
            };
            if !verb.eq_ignore_ascii_case("CONNECT") || !version.starts_with("HTTP/1.") {
                w.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?;
                return Err(bad("not a CONNECT request"));
            }
            let Some((host, port)) = authority.rsplit_once(':') else {
                return Err(bad("CONNECT without a port"));
            };
            let port: u16 = port.parse().map_err(|_| bad("CONNECT port"))?;
            let host = name(host.trim_start_matches('[').trim_end_matches(']').as_bytes())?;
            w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            Ok(("connect", format!("{host}:{port}")))
        }
    }
}

// ---------------------------------------------------------------- web

/// The benign control (--web): every complete HTTP request in `buf` gets a
/// short plain-text page.
fn web(buf: &mut Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head);
        let mut parts = head.lines().next().unwrap_or("").split(' ');
        let (verb, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        say(&format!("got http {verb} {path}"));
        let body = "<!doctype html><title>Example</title><p>Nothing to see here.</p>\n";
        out.push(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nServer: nginx\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
    }
    if buf.len() > MAX_MESSAGE {
        return Err(io::Error::other("HTTP header too long"));
    }
    Ok(out)
}

/// At the start of a connection: drops NUL bytes and one PROXY line.
/// Returns false while more bytes are needed to decide.
fn strip_preamble(buf: &mut Vec<u8>, start: &mut bool) -> bool {
    loop {
        let nuls = buf.iter().take_while(|&&b| b == 0).count();
        if nuls > 0 {
            buf.drain(..nuls);
            say("got nul");
        }
        if buf.is_empty() {
            return false;
        }
        let p = b"PROXY ";
        let k = buf.len().min(p.len());
        if buf[..k] == p[..k] {
            match buf.windows(2).position(|w| w == b"\r\n") {
                Some(end) => {
                    buf.drain(..end + 2);
                    say("got PROXY");
                    continue;
                }
                None if buf.len() < 108 => return false,
                None => {}
            }
        }
        *start = false;
        return true;
    }
}

// ---------------------------------------------------------------- made-up work

struct Fake(u64);

impl Fake {
    fn hex(&mut self, chars: usize) -> String {
        let mut s = String::with_capacity(chars);
        while s.len() < chars {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            s.push_str(&format!("{:016x}", self.0));
        }
        s.truncate(chars);
        s
    }
}

fn js(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// One connection's pool side: answers requests, pushes jobs.
struct Pool<'a> {
    cfg: &'a Config,
    fake: Fake,
    job: u64,
    height: u64,
    pushing: bool,
    next_push: Instant,
}

impl<'a> Pool<'a> {
    fn new(cfg: &'a Config) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Pool {
            cfg,
            fake: Fake(seed | 1),
            job: 0,
            height: 3_100_000,
            pushing: false,
            next_push: Instant::now(),
        }
    }

    fn start_pushing(&mut self) {
        self.pushing = true;
        self.next_push = Instant::now() + self.cfg.job_interval;
    }

    fn next_job(&mut self) -> String {
        self.job += 1;
        self.height += 1;
        format!("{:08x}", 0x4a00_0000u64 + self.job)
    }

    /// A periodic job push once the client has logged in.
    fn tick(&mut self) -> Option<Vec<u8>> {
        if !self.pushing || Instant::now() < self.next_push || self.cfg.dialect == Dialect::Getwork {
            return None;
        }
        self.next_push = Instant::now() + self.cfg.job_interval;
        Some(self.job_push().into_bytes())
    }

    /// The dialect's "new job" message(s), each ending in '\n'.
    fn job_push(&mut self) -> String {
        let job = self.next_job();
        match self.cfg.dialect {
            Dialect::StratumV1 => format!(
                "{{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"{job}\",\"{}\",\"{}\",\"{}\",[\"{}\"],\"20000000\",\"1703a30c\",\"{:08x}\",true]}}\n",
                self.fake.hex(64),
                format_args!("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20{}", self.fake.hex(16)),
                format_args!("ffffffff01{}1976a914{}88ac00000000", self.fake.hex(16), self.fake.hex(40)),
                self.fake.hex(64),
                1_700_000_000 + self.job
            ),
            Dialect::CryptoNote => format!("{{\"jsonrpc\":\"2.0\",\"method\":\"job\",\"params\":{}}}\n", self.xmr_job(&job)),
            Dialect::EthProxy => format!("{{\"id\":0,\"jsonrpc\":\"2.0\",\"result\":{}}}\n", self.eth_work()),
            Dialect::EthStratum1 => format!(
                "{{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"{job}\",\"{}\",\"{}\",true]}}\n",
                self.fake.hex(64),
                self.fake.hex(64)
            ),
            Dialect::EthStratum2 => format!(
                "{{\"method\":\"mining.notify\",\"params\":[\"{job}\",\"{:x}\",\"{}\",\"0\"]}}\n",
                self.height,
                self.fake.hex(64)
            ),
            Dialect::KawPow => format!(
                "{{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"{job}\",\"{}\",\"{}\",\"00000000ffff0000000000000000000000000000000000000000000000000000\",true,{},\"1b00f968\"]}}\n",
                self.fake.hex(64),
                self.fake.hex(64),
                self.height
            ),
            Dialect::Getwork => String::new(),
        }
    }

    fn xmr_job(&mut self, job: &str) -> String {
        format!(
            "{{\"blob\":\"1010{}\",\"job_id\":\"{job}\",\"target\":\"b88d0600\",\"algo\":\"rx/0\",\"height\":{},\"seed_hash\":\"{}\"}}",
            self.fake.hex(148),
            self.height,
            self.fake.hex(64)
        )
    }

    fn eth_work(&mut self) -> String {
        format!(
            "[\"0x{}\",\"0x{}\",\"0x00000000ffff0000000000000000000000000000000000000000000000000000\"]",
            self.fake.hex(64),
            self.fake.hex(64)
        )
    }

    /// Splits complete lines off `buf` and answers each.
    fn lines(&mut self, buf: &mut Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=nl).collect();
            let nuls = raw.iter().take_while(|&&b| b == 0).count();
            if nuls > 0 {
                say("got nul");
            }
            let text = String::from_utf8_lossy(&raw[nuls..]);
            let line = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
            if line.is_empty() {
                continue;
            }
            if line.starts_with("PROXY ") {
                say("got PROXY");
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                say("got junk");
                continue;
            };
            let Some(method) = v.get("method").and_then(|m| m.as_str()) else {
                say("got result");
                continue;
            };
            say(&format!("got {method}"));
            let id = js(v.get("id").unwrap_or(&serde_json::Value::Null));
            out.extend(self.answer(method, &id));
        }
        if buf.len() > MAX_MESSAGE {
            return Err(io::Error::other("client line too long"));
        }
        Ok(out)
    }

    /// The answer to one request: a list of writes.
    fn answer(&mut self, method: &str, id: &str) -> Vec<Vec<u8>> {
        let d = self.cfg.dialect;
        let ok_v1 = format!("{{\"id\":{id},\"result\":true,\"error\":null}}\n");
        let mut writes: Vec<String> = Vec::new();
        match (d, method.to_ascii_lowercase().as_str()) {
            (Dialect::StratumV1, "mining.subscribe") => {
                writes.push(format!(
                    "{{\"id\":{id},\"result\":[[[\"mining.set_difficulty\",\"1\"],[\"mining.notify\",\"1\"]],\"08000002\",4],\"error\":null}}\n"
                ));
                writes.push("{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[1]}\n".into());
                writes.push(self.job_push());
                self.start_pushing();
            }
            (Dialect::StratumV1, "mining.configure") => writes.push(format!(
                "{{\"id\":{id},\"result\":{{\"version-rolling\":true,\"version-rolling.mask\":\"1fffe000\"}},\"error\":null}}\n"
            )),
            (Dialect::StratumV1 | Dialect::EthStratum1 | Dialect::KawPow, "mining.authorize" | "mining.extranonce.subscribe" | "mining.submit" | "mining.suggest_difficulty") => {
                writes.push(ok_v1)
            }
            (Dialect::CryptoNote, "login") => {
                let job = self.next_job();
                let rpcid = self.fake.hex(32);
                writes.push(format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":null,\"result\":{{\"id\":\"{rpcid}\",\"job\":{},\"extensions\":[\"algo\",\"nicehash\",\"keepalive\"],\"status\":\"OK\"}}}}\n",
                    self.xmr_job(&job)
                ));
                self.start_pushing();
            }
            (Dialect::CryptoNote, "getjob") => {
                let job = self.next_job();
                writes.push(format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":null,\"result\":{}}}\n", self.xmr_job(&job)));
            }
            (Dialect::CryptoNote, "submit") => {
                writes.push(format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":null,\"result\":{{\"status\":\"OK\"}}}}\n"))
            }
            (Dialect::CryptoNote, "keepalived") => {
                writes.push(format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":null,\"result\":{{\"status\":\"KEEPALIVED\"}}}}\n"))
            }
            (Dialect::EthProxy, "eth_submitlogin") => {
                writes.push(format!("{{\"id\":{id},\"jsonrpc\":\"2.0\",\"result\":true}}\n"));
                writes.push(self.job_push());
                self.start_pushing();
            }
            (Dialect::EthProxy, "eth_getwork") => {
                writes.push(format!("{{\"id\":{id},\"jsonrpc\":\"2.0\",\"result\":{}}}\n", self.eth_work()))
            }
            (Dialect::EthProxy, "eth_submitwork" | "eth_submithashrate") => {
                writes.push(format!("{{\"id\":{id},\"jsonrpc\":\"2.0\",\"result\":true}}\n"))
            }
            (Dialect::EthStratum1, "mining.subscribe") => {
                writes.push(format!(
                    "{{\"id\":{id},\"result\":[[\"mining.notify\",\"ae6812eb4cd7735a302a8a9dd95cf71f\",\"EthereumStratum/1.0.0\"],\"080c\"],\"error\":null}}\n"
                ));
                writes.push("{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[0.5]}\n".into());
                writes.push(self.job_push());
                self.start_pushing();
            }
            (Dialect::EthStratum2, "mining.hello") => writes.push(format!(
                "{{\"id\":{id},\"result\":{{\"proto\":\"EthereumStratum/2.0.0\",\"encoding\":\"plain\",\"resume\":1,\"timeout\":30,\"maxerrors\":5,\"node\":\"fakepool/1.0\"}}}}\n"
            )),
            (Dialect::EthStratum2, "mining.subscribe") => {
                writes.push(format!("{{\"id\":{id},\"result\":\"s-{}\"}}\n", self.fake.hex(8)))
            }
            (Dialect::EthStratum2, "mining.authorize") => {
                writes.push(format!("{{\"id\":{id},\"result\":\"{}\"}}\n", self.fake.hex(8)));
                writes.push(format!(
                    "{{\"method\":\"mining.set\",\"params\":{{\"epoch\":\"dc\",\"target\":\"0112e0be826d694b2e62d01511f12a6061fbaec8bc02357593e70e52ba\",\"algo\":\"ethash\",\"extranonce\":\"{}\"}}}}\n",
                    self.fake.hex(4)
                ));
                writes.push(self.job_push());
                self.start_pushing();
            }
            (Dialect::EthStratum2, "mining.submit" | "mining.noop") => writes.push(format!("{{\"id\":{id},\"result\":true}}\n")),
            (Dialect::KawPow, "mining.subscribe") => {
                writes.push(format!("{{\"id\":{id},\"result\":[null,\"{}\"],\"error\":null}}\n", self.fake.hex(4)));
                writes.push(
                    "{\"id\":null,\"method\":\"mining.set_target\",\"params\":[\"00000000ffff0000000000000000000000000000000000000000000000000000\"]}\n"
                        .into(),
                );
                writes.push(self.job_push());
                self.start_pushing();
            }
            (Dialect::CryptoNote | Dialect::EthProxy, _) => writes.push(format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{{\"code\":-1,\"message\":\"Unsupported method\"}}}}\n"
            )),
            _ => writes.push(format!("{{\"id\":{id},\"result\":null,\"error\":[20,\"Unsupported method\",null]}}\n")),
        }
        if self.cfg.coalesce && writes.len() > 1 {
            vec![writes.concat().into_bytes()]
        } else {
            writes.into_iter().map(String::into_bytes).collect()
        }
    }

    /// getwork over HTTP/1.1: answers each complete request in `buf`.
    fn http(&mut self, buf: &mut Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        loop {
            let mut st = true;
            if !strip_preamble(buf, &mut st) {
                break; // (NULs between requests are skipped too)
            }
            let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > MAX_MESSAGE {
                    return Err(io::Error::other("HTTP header too long"));
                }
                break;
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let request = lines.next().unwrap_or("");
            let mut parts = request.split(' ');
            let verb = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut length = 0usize;
            for h in lines {
                if let Some((k, v)) = h.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            if length > MAX_MESSAGE {
                return Err(io::Error::other("HTTP body too long"));
            }
            if buf.len() < head_end + 4 + length {
                break;
            }
            let body: Vec<u8> = buf.drain(..head_end + 4 + length).skip(head_end + 4).collect();
            say(&format!("got http {verb} {path}"));
            let (status, json) = if verb == "POST" {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => {
                        let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("").to_string();
                        say(&format!("got {method}"));
                        let id = js(v.get("id").unwrap_or(&serde_json::Value::Null));
                        let has_params = v.get("params").and_then(|p| p.as_array()).is_some_and(|p| !p.is_empty());
                        match method.as_str() {
                            "getwork" if has_params => ("200 OK", format!("{{\"result\":true,\"error\":null,\"id\":{id}}}")),
                            "getwork" => ("200 OK", format!("{{\"result\":{},\"error\":null,\"id\":{id}}}", self.getwork_result())),
                            "getblocktemplate" => ("200 OK", format!(
                                "{{\"result\":{{\"version\":536870912,\"previousblockhash\":\"{}\",\"transactions\":[],\"coinbasevalue\":312500000,\"target\":\"00000000ffff0000000000000000000000000000000000000000000000000000\",\"mintime\":1700000000,\"curtime\":1700000600,\"bits\":\"1d00ffff\",\"height\":{}}},\"error\":null,\"id\":{id}}}",
                                self.fake.hex(64),
                                self.height
                            )),
                            _ => ("200 OK", format!("{{\"result\":null,\"error\":{{\"code\":-32601,\"message\":\"Method not found\"}},\"id\":{id}}}")),
                        }
                    }
                    Err(_) => (
                        "400 Bad Request",
                        "{\"result\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"},\"id\":null}".to_string(),
                    ),
                }
            } else if verb == "GET" && path.starts_with("/LP") {
                // Long poll: hold the request, then hand out new work.
                std::thread::sleep(self.cfg.job_interval);
                (
                    "200 OK",
                    format!("{{\"result\":{},\"error\":null,\"id\":0}}", self.getwork_result()),
                )
            } else {
                (
                    "404 Not Found",
                    "{\"result\":null,\"error\":{\"code\":-1,\"message\":\"not found\"},\"id\":null}".to_string(),
                )
            };
            let body = format!("{json}\n");
            out.push(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Long-Polling: /LP\r\nX-Roll-NTime: Y\r\nX-Stratum: stratum+tcp://127.0.0.1:3333\r\nServer: fakepool/1.0\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            );
        }
        Ok(out)
    }

    fn getwork_result(&mut self) -> String {
        self.job += 1;
        format!(
            "{{\"midstate\":\"{}\",\"data\":\"00000002{}000000800000000000000000000000000000000000000000000000000000000000000000000000000000000080020000\",\"hash1\":\"00000000000000000000000000000000000000000000000000000000000000000000008000000000000000000000000000000000000000000000000000010000\",\"target\":\"0000000000000000000000000000000000000000000000000000ffff00000000\"}}",
            self.fake.hex(64),
            self.fake.hex(144)
        )
    }
}

// ---------------------------------------------------------------- DNS

/// A tiny UDP DNS server: every A query gets `answer` (TTL 60); other types
/// get an empty NOERROR answer.
fn dns_server(addr: SocketAddr, answer: Ipv4Addr, once: bool) {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| {
        eprintln!("fakepool: bind udp {addr}: {e}");
        std::process::exit(1)
    });
    say(&format!("listening {}", sock.local_addr().expect("local addr")));
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("fakepool: dns recv: {e}");
                continue;
            }
        };
        if !allowed(peer.ip()) {
            continue; // answer nobody outside the allowed ranges
        }
        let Some((name, qtype, reply)) = dns_reply(&buf[..n], answer) else {
            say("got junk");
            continue;
        };
        say(&format!(
            "got dns {name} {}",
            if qtype == 1 { "A".to_string() } else { qtype.to_string() }
        ));
        if let Err(e) = sock.send_to(&reply, peer) {
            eprintln!("fakepool: dns send: {e}");
        }
        if once {
            return;
        }
    }
}

/// The attacker's push: connects to `to` (a listener someone else owns) and
/// sends one pool job as if the listener were a miner, then holds the
/// connection open so that its socket exists while the agent looks.
fn push_to(to: SocketAddr, delay: f64, hold: f64) {
    if !allowed(to.ip()) {
        refuse("pushing to", to.ip());
    }
    let mut s = TcpStream::connect(to).unwrap_or_else(|e| {
        eprintln!("fakepool: connect {to}: {e}");
        std::process::exit(1)
    });
    say(&format!("connected {to}"));
    std::thread::sleep(Duration::from_secs_f64(delay));
    let job = "{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"bf\",\"4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000\",\"01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008\",\"072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000\",[],\"00000002\",\"1c2ac4af\",\"504e86b9\",true]}\n";
    if let Err(e) = s.write_all(job.as_bytes()) {
        eprintln!("fakepool: push: {e}");
        std::process::exit(1)
    }
    say(&format!("pushed {to}"));
    std::thread::sleep(Duration::from_secs_f64(hold));
}

/// The attacker's DNS answer: a response for `name` giving `answer`, to a
/// query nobody asked, sent to `to`.
fn forge_dns(name: &str, to: SocketAddr, answer: Ipv4Addr) {
    let mut q = vec![0x13, 0x37, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let Some((_, _, reply)) = dns_reply(&q, answer) else {
        eprintln!("fakepool: cannot forge an answer for {name}");
        std::process::exit(2)
    };
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
    sock.send_to(&reply, to).expect("send the forged answer");
    say(&format!("forged {name}"));
}

/// Parses one query; returns (name, qtype, response bytes).
fn dns_reply(q: &[u8], answer: Ipv4Addr) -> Option<(String, u16, Vec<u8>)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).into_owned());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let _qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    let qend = i + 4;
    let a = qtype == 1;
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[0..2]); // id
    r.push(0x80 | 0x04 | (q[2] & 0x01)); // QR, AA, RD copied
    r.push(0x80); // RA, NOERROR
    r.extend_from_slice(&[0, 1, 0, a as u8, 0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    if a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&answer.octets());
    }
    Some((labels.join("."), qtype, r))
}
