//! stratumclient: the miner side of the mining protocols, HARMLESS — it
//! mines nothing. It logs in the way real miners do (see
//! shared/reference/stratum.md), waits for the first job, submits one
//! made-up share, idles a bounded time sending the dialect's keepalives,
//! and exits. It is the traffic rigwatch's network-sensor tests watch.
//!
//! It connects only to loopback (127.0.0.0/8, ::1). With RIGWATCH_TEST_NETNS=1
//! (set by tests running inside a network namespace they created) it may also
//! connect to 10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16. Every address it
//! would send to — the --connect address, the --dns server, the address a DNS
//! answer names — is checked; anything else is refused (exit 2) before a
//! single packet is sent. Addresses are literal IPs; it never uses the
//! system resolver.
//!
//! Usage:
//!   stratumclient --dialect D --connect IP:PORT [--tls [--sni NAME]]
//!                 [--split] [--coalesce] [--proxy-line] [--keepalive-nul]
//!                 [--resolve NAME --dns IP:PORT] [--wait-before SECONDS]
//!                 [--hold SECONDS] [--keepalive SECONDS] [--agent STR]
//!                 [--login WALLET] [--dry-run]
//!                 [--socks5 DEST | --socks4a DEST | --http-connect DEST]
//!                 [--busy]   (spin one core while it runs, as a miner's
//!                 hashing would; nothing is computed)
//!                 [--delay SECONDS]   (wait before connecting)
//!                 [--after SECONDS]   (stay, idle, after saying `done`:
//!                 a process whose connection is over)
//!   stratumclient --plain-http --connect IP:PORT [--socks5 DEST | ...]
//!                 [--hold SECONDS]   (the benign control: one `GET /`,
//!                 its answer read, then idle; no mining dialect)
//! Dialects: stratum-v1, cryptonote, ethproxy, ethereumstratum1,
//! ethereumstratum2, kawpow, getwork.
//!
//! Through a proxy: with --socks5, --socks4a or --http-connect the --connect
//! address is a proxy (a fakepool run with --proxy, which is the proxy and
//! the pool in one). The client first asks it for DEST (NAME:PORT, or
//! IP:PORT / [IPv6]:PORT) the way xmrig -x and Tor clients do — SOCKS5
//! greeting (no authentication) and CONNECT; SOCKS4a (SOCKS4 with an IP);
//! HTTP `CONNECT DEST HTTP/1.1` — waits for the grant, then speaks the
//! dialect (or TLS) on the same connection. DEST is only text sent to the
//! proxy: nobody resolves it and nothing connects to it.
//! stdout: `ready PID` once connected (after the TLS handshake with --tls),
//! `done` at the end. Progress and errors go to stderr.
//! Exit: 0 done; 1 protocol or I/O failure; 2 bad usage or refused address.

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest --hold (and --wait-before) honoured, whatever is asked.
const MAX_HOLD: f64 = 120.0;
/// How long the login, first job and share answer may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_MESSAGE: usize = 256 * 1024;
const PROXY_LINE: &[u8] = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 3333\r\n";
const XMR_WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
const ETH_WALLET: &str = "0x9f3ab6c0e1d24f7a8b5c6d7e8f90a1b2c3d4e5f6";
const RVN_WALLET: &str = "RKyH3b4tjjThx7mEqGfqzf3ZGDbzNAFNZ9.rig1";
const BTC_USER: &str = "bc1qfakeminerexampleuser0000000000000000.rig1";

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

fn check(what: &str, ip: IpAddr) {
    if !allowed(ip) {
        eprintln!(
            "stratumclient: refusing {what} {ip}: only loopback (127.0.0.0/8, ::1), or with RIGWATCH_TEST_NETNS=1 \
             10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16"
        );
        std::process::exit(2)
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("stratumclient: {msg}");
    std::process::exit(2)
}

fn parse_addr(flag: &str, s: &str) -> SocketAddr {
    // A literal address only: no name resolution, ever.
    s.parse()
        .unwrap_or_else(|_| usage(&format!("{flag} {s:?} is not an IP:PORT address")))
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
        usage(&format!("{flag} needs a value"));
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

fn say(line: &str) {
    let out = io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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
    /// The method name in the first line (where --split cuts).
    fn first_method(self) -> &'static str {
        match self {
            Dialect::StratumV1 | Dialect::EthStratum1 | Dialect::KawPow => "mining.subscribe",
            Dialect::CryptoNote => "login",
            Dialect::EthProxy => "eth_submitLogin",
            Dialect::EthStratum2 => "mining.hello",
            Dialect::Getwork => "getwork",
        }
    }
    fn default_agent(self) -> &'static str {
        match self {
            Dialect::StratumV1 | Dialect::Getwork => "cpuminer/2.5.1",
            Dialect::CryptoNote => "XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0",
            Dialect::EthProxy => "ethminer-0.18.0",
            Dialect::EthStratum1 => "ethminer-0.18.0",
            Dialect::EthStratum2 => "ethminer-0.19.0",
            Dialect::KawPow => "GMiner/2.09",
        }
    }
    fn default_login(self) -> &'static str {
        match self {
            Dialect::CryptoNote => XMR_WALLET,
            Dialect::EthProxy => ETH_WALLET,
            Dialect::EthStratum1 | Dialect::EthStratum2 => "0x9f3ab6c0e1d24f7a8b5c6d7e8f90a1b2c3d4e5f6.rig1",
            Dialect::KawPow => RVN_WALLET,
            Dialect::StratumV1 | Dialect::Getwork => BTC_USER,
        }
    }
}

/// Which proxy preamble to send before the dialect.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ProxyKind {
    Socks5,
    Socks4a,
    HttpConnect,
}

struct Opts {
    dialect: Dialect,
    target: SocketAddr,
    /// The pool's name (Host headers, hello messages): the --connect
    /// address, the --resolve name, or the destination asked of a proxy.
    host: String,
    /// The pool's port, as `host`.
    port: u16,
    /// Ask the proxy at `target` for (host, port) first.
    proxy: Option<ProxyKind>,
    tls: bool,
    sni: Option<String>,
    split: bool,
    coalesce: bool,
    proxy_line: bool,
    keepalive_nul: bool,
    wait_before: f64,
    hold: f64,
    keepalive: f64,
    agent: String,
    login: String,
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let plain_http = take_flag(&mut args, "--plain-http");
    let dialect = take_value(&mut args, "--dialect").unwrap_or_default();
    let dialect = match Dialect::parse(&dialect) {
        Some(d) => d,
        // the benign control speaks no dialect; getwork's defaults are unused
        None if plain_http && dialect.is_empty() => Dialect::Getwork,
        None => usage("--dialect must be one of stratum-v1 cryptonote ethproxy ethereumstratum1 ethereumstratum2 kawpow getwork"),
    };
    let connect = parse_addr(
        "--connect",
        &take_value(&mut args, "--connect").unwrap_or_else(|| usage("--connect IP:PORT is required")),
    );
    check("to connect to", connect.ip());
    let resolve = take_value(&mut args, "--resolve");
    let dns = take_value(&mut args, "--dns").map(|d| parse_addr("--dns", &d));
    let dry_run = take_flag(&mut args, "--dry-run");
    let delay = seconds(take_value(&mut args, "--delay"), 0.0).min(MAX_HOLD);
    let after = seconds(take_value(&mut args, "--after"), 0.0).min(MAX_HOLD);
    if take_flag(&mut args, "--busy") {
        // the CPU a miner uses, and nothing else: a spin with no result,
        // ended with the process
        std::thread::spawn(|| {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
    }
    let tls = take_flag(&mut args, "--tls");
    let sni = take_value(&mut args, "--sni");
    if sni.is_some() && !tls {
        usage("--sni needs --tls");
    }
    let mut proxied = Vec::new();
    for (flag, kind) in [
        ("--socks5", ProxyKind::Socks5),
        ("--socks4a", ProxyKind::Socks4a),
        ("--http-connect", ProxyKind::HttpConnect),
    ] {
        if let Some(dest) = take_value(&mut args, flag) {
            proxied.push((kind, destination(flag, &dest)));
        }
    }
    if proxied.len() > 1 {
        usage("--socks5, --socks4a and --http-connect: one at a time");
    }
    let proxied = proxied.pop();
    if plain_http && tls {
        usage("--plain-http and --tls: one or the other");
    }
    let mut opts = Opts {
        dialect,
        target: connect,
        host: proxied.as_ref().map_or_else(|| connect.ip().to_string(), |(_, (h, _))| h.clone()),
        port: proxied.as_ref().map_or(connect.port(), |(_, (_, p))| *p),
        proxy: proxied.as_ref().map(|(k, _)| *k),
        tls,
        sni,
        split: take_flag(&mut args, "--split"),
        coalesce: take_flag(&mut args, "--coalesce"),
        proxy_line: take_flag(&mut args, "--proxy-line"),
        keepalive_nul: take_flag(&mut args, "--keepalive-nul"),
        wait_before: seconds(take_value(&mut args, "--wait-before"), 0.0).min(MAX_HOLD),
        hold: seconds(take_value(&mut args, "--hold"), 5.0).min(MAX_HOLD),
        keepalive: seconds(take_value(&mut args, "--keepalive"), 60.0).max(0.05),
        agent: take_value(&mut args, "--agent").unwrap_or_else(|| dialect.default_agent().into()),
        login: take_value(&mut args, "--login").unwrap_or_else(|| dialect.default_login().into()),
    };
    if !args.is_empty() {
        usage(&format!("unknown arguments {args:?}"));
    }

    if resolve.is_some() && opts.proxy.is_some() {
        usage("--resolve and a proxy: the proxy is asked for the name, nothing resolves it");
    }
    if let Some(name) = &resolve {
        let dns = dns.unwrap_or_else(|| usage("--resolve needs --dns IP:PORT"));
        check("to query DNS server", dns.ip());
        let ip = match dns_query(name, dns) {
            Ok(ip) => ip,
            Err(e) => {
                eprintln!("stratumclient: resolving {name} via {dns}: {e}");
                std::process::exit(1)
            }
        };
        eprintln!("stratumclient: resolved {name} {ip}");
        check(&format!("to connect to {name} at"), ip);
        opts.target = SocketAddr::new(ip, connect.port());
        opts.host = name.clone();
    }
    check("to connect to", opts.target.ip());
    if dry_run {
        say(&format!("allowed {}", opts.target));
        return;
    }
    std::thread::sleep(Duration::from_secs_f64(delay));
    let result = if plain_http { run_plain_http(&opts) } else { run(&opts) };
    match result {
        Ok(()) => {
            say("done");
            std::thread::sleep(Duration::from_secs_f64(after));
        }
        Err(e) => {
            eprintln!("stratumclient: {e}");
            std::process::exit(1)
        }
    }
}

// ---------------------------------------------------------------- DNS

/// One A query over UDP to `server`; the first A record's address.
fn dns_query(name: &str, server: SocketAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let mut buf = [0u8; 1500];
    for _attempt in 0..3 {
        sock.send_to(&q, server)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(e),
            };
            if from != server || n < 12 || buf[0..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
                continue;
            }
            return parse_a(&buf[..n]).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no A record in the answer"));
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no DNS answer"))
}

fn skip_name(r: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *r.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + len;
    }
}

fn parse_a(r: &[u8]) -> Option<IpAddr> {
    let qd = u16::from_be_bytes([r[4], r[5]]);
    let an = u16::from_be_bytes([r[6], r[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(r, i)? + 4;
    }
    for _ in 0..an {
        i = skip_name(r, i)?;
        let rtype = u16::from_be_bytes([*r.get(i)?, *r.get(i + 1)?]);
        let rdlen = u16::from_be_bytes([*r.get(i + 8)?, *r.get(i + 9)?]) as usize;
        let data = r.get(i + 10..i + 10 + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            return Some(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])));
        }
        i += 10 + rdlen;
    }
    None
}

// ---------------------------------------------------------------- proxies

/// A proxy destination: `NAME:PORT`, `IP:PORT` or `[IPv6]:PORT`. Only
/// checked for shape; it is text for the proxy, never resolved.
fn destination(flag: &str, s: &str) -> (String, u16) {
    let bad = || -> ! { usage(&format!("{flag} {s:?} is not NAME:PORT")) };
    let (host, port) = s.rsplit_once(':').unwrap_or_else(|| bad());
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p != 0).unwrap_or_else(|| bad());
    let name_ok =
        !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !name_ok && host.parse::<IpAddr>().is_err() {
        bad();
    }
    (host.to_string(), port)
}

/// Reads exactly `n` bytes of the proxy's answer.
fn read_n(mut tcp: &TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    tcp.read_exact(&mut b)?;
    Ok(b)
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, what)
}

/// Asks the proxy on `tcp` for `host:port` and waits for its grant,
/// reading no byte past the proxy's answer.
fn ask_proxy(tcp: &TcpStream, kind: ProxyKind, host: &str, port: u16) -> io::Result<()> {
    let mut w = tcp;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let ip = host.parse::<IpAddr>().ok();
    match kind {
        ProxyKind::Socks5 => {
            w.write_all(&[5, 1, 0])?; // one method: no authentication
            let m = read_n(tcp, 2)?;
            if m != [5, 0] {
                return Err(refused(format!("socks5 proxy chose method {m:02x?}")));
            }
            let mut req = vec![5, 1, 0];
            match ip {
                Some(IpAddr::V4(a)) => {
                    req.push(1);
                    req.extend_from_slice(&a.octets());
                }
                Some(IpAddr::V6(a)) => {
                    req.push(4);
                    req.extend_from_slice(&a.octets());
                }
                None => {
                    req.extend_from_slice(&[3, host.len() as u8]);
                    req.extend_from_slice(host.as_bytes());
                }
            }
            req.extend_from_slice(&port.to_be_bytes());
            w.write_all(&req)?;
            let rep = read_n(tcp, 4)?;
            if rep[0] != 5 || rep[1] != 0 {
                return Err(refused(format!("socks5 proxy refused {host}:{port} ({rep:02x?})")));
            }
            let addr = match rep[3] {
                1 => 4,
                4 => 16,
                3 => read_n(tcp, 1)?[0] as usize,
                t => return Err(refused(format!("socks5 reply address type {t}"))),
            };
            read_n(tcp, addr + 2)?;
        }
        ProxyKind::Socks4a => {
            let mut req = vec![4, 1];
            req.extend_from_slice(&port.to_be_bytes());
            match ip {
                Some(IpAddr::V4(a)) => {
                    req.extend_from_slice(&a.octets());
                    req.extend_from_slice(b"rig\0");
                }
                Some(IpAddr::V6(_)) => usage("--socks4a cannot ask for an IPv6 address"),
                None => {
                    req.extend_from_slice(&[0, 0, 0, 1]);
                    req.extend_from_slice(b"rig\0");
                    req.extend_from_slice(host.as_bytes());
                    req.push(0);
                }
            }
            w.write_all(&req)?;
            let rep = read_n(tcp, 8)?;
            if rep[0] != 0 || rep[1] != 0x5a {
                return Err(refused(format!("socks4 proxy refused {host}:{port} ({rep:02x?})")));
            }
        }
        ProxyKind::HttpConnect => {
            let authority = match ip {
                Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
                _ => format!("{host}:{port}"),
            };
            w.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())?;
            // the answer's head, byte by byte: nothing of the tunnel is consumed
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= 4096 {
                    return Err(refused("HTTP CONNECT answer head too long".into()));
                }
                head.push(read_n(tcp, 1)?[0]);
            }
            let status = String::from_utf8_lossy(&head);
            let status = status.lines().next().unwrap_or("");
            if !matches!(status.split(' ').nth(1), Some(c) if c.starts_with('2')) {
                return Err(refused(format!("HTTP CONNECT {authority}: {status}")));
            }
        }
    }
    eprintln!("stratumclient: proxy granted {host}:{port}");
    Ok(())
}

// ---------------------------------------------------------------- connection

mod trust_any {
    //! Accepts any server certificate: a test tool talking to its own
    //! self-signed fake pool on loopback. Signatures are still checked.
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    #[derive(Debug)]
    pub struct TrustAny(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for TrustAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn open(opts: &Opts) -> io::Result<Conn> {
        let tcp = TcpStream::connect_timeout(&opts.target, Duration::from_secs(5))?;
        tcp.set_nodelay(true)?; // each write its own segment
        if let Some(kind) = opts.proxy {
            ask_proxy(&tcp, kind, &opts.host, opts.port)?;
        }
        if opts.proxy_line {
            (&tcp).write_all(PROXY_LINE)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        if !opts.tls {
            return Ok(Conn::Plain(tcp));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(trust_any::TrustAny(provider)))
            .with_no_client_auth();
        // SNI only when asked, as XMRig does.
        cfg.enable_sni = opts.sni.is_some();
        let name = match &opts.sni {
            Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            None => rustls::pki_types::ServerName::IpAddress(opts.target.ip().into()),
        };
        let cc = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(cc, tcp);
        s.sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Conn::Tls(Box::new(s)))
    }
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).and_then(|_| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|_| s.flush()),
        }
    }
    /// Ok(None) on a read timeout, Ok(Some(0)) at end of stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let r = match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        };
        match r {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
    fn close(&mut self) {
        match self {
            Conn::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
                let _ = s.sock.shutdown(std::net::Shutdown::Both);
            }
            Conn::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

// ---------------------------------------------------------------- the run

fn run(opts: &Opts) -> io::Result<()> {
    let mut conn = Conn::open(opts)?;
    say(&format!("ready {}", std::process::id()));
    if opts.wait_before > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(opts.wait_before));
    }
    if opts.keepalive_nul {
        conn.send(&[0])?;
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut m = Miner::new(opts);
    let first = m.initial();
    for (k, w) in first.iter().enumerate() {
        if k == 0 && opts.split {
            let cut = split_point(w, opts.dialect.first_method());
            conn.send(&w.as_bytes()[..cut])?;
            std::thread::sleep(Duration::from_millis(50));
            conn.send(&w.as_bytes()[cut..])?;
        } else {
            conn.send(w.as_bytes())?;
        }
    }
    conn.tcp().set_read_timeout(Some(Duration::from_millis(100)))?;

    // Login, first job, one share, its answer.
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    while !m.answered {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no share answer within {HANDSHAKE_TIMEOUT:?} ({})", m.progress()),
            ));
        }
        match conn.read(&mut tmp)? {
            None => continue,
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("pool closed the connection ({})", m.progress()),
                ))
            }
            Some(n) => buf.extend_from_slice(&tmp[..n]),
        }
        for msg in messages(&mut buf, opts.dialect == Dialect::Getwork)? {
            for w in m.on_message(&msg) {
                conn.send(w.as_bytes())?;
            }
            if let Some(w) = m.maybe_submit() {
                conn.send(w.as_bytes())?;
            }
        }
    }
    eprintln!("stratumclient: share answered; holding {}s", opts.hold);

    // Idle, answering pings and sending the dialect's keepalives.
    let end = Instant::now() + Duration::from_secs_f64(opts.hold);
    let mut next_keepalive = Instant::now() + Duration::from_secs_f64(opts.keepalive);
    let mut closed = false;
    while Instant::now() < end {
        if opts.dialect == Dialect::Getwork {
            if let Some(w) = m.long_poll() {
                conn.send(w.as_bytes())?;
            }
        } else if Instant::now() >= next_keepalive {
            next_keepalive = Instant::now() + Duration::from_secs_f64(opts.keepalive);
            if let Some(w) = m.keepalive() {
                conn.send(w.as_bytes())?;
            }
        }
        match conn.read(&mut tmp) {
            Ok(None) => continue,
            Ok(Some(0)) | Err(_) => {
                closed = true;
                break;
            }
            Ok(Some(n)) => buf.extend_from_slice(&tmp[..n]),
        }
        for msg in messages(&mut buf, opts.dialect == Dialect::Getwork)? {
            for w in m.on_message(&msg) {
                conn.send(w.as_bytes())?;
            }
        }
    }
    if closed {
        eprintln!("stratumclient: pool closed the connection while holding");
    }
    conn.close();
    Ok(())
}

/// The benign control: one plain `GET /` (through the proxy when asked),
/// its answer read, then idle for --hold. No mining dialect at all.
fn run_plain_http(opts: &Opts) -> io::Result<()> {
    let mut conn = Conn::open(opts)?;
    say(&format!("ready {}", std::process::id()));
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        opts.host
    );
    conn.send(req.as_bytes())?;
    conn.tcp().set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    // the head and as much body as Content-Length says
    loop {
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP answer"));
        }
        match conn.read(&mut tmp)? {
            None => continue,
            Some(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed before answering")),
            Some(n) => buf.extend_from_slice(&tmp[..n]),
        }
        if buf.len() > MAX_MESSAGE {
            return Err(io::Error::other("HTTP answer too long"));
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            eprintln!("stratumclient: {}", head.lines().next().unwrap_or(""));
            break;
        }
    }
    std::thread::sleep(Duration::from_secs_f64(opts.hold));
    conn.close();
    Ok(())
}

/// Where --split cuts the first write: inside the first method name.
fn split_point(w: &str, method: &str) -> usize {
    match w.find(&format!("\"{method}\"")) {
        Some(i) => i + 1 + method.len() / 2,
        None => w.len() / 2,
    }
    .clamp(1, w.len().saturating_sub(1).max(1))
}

/// Complete messages off the front of `buf`: JSON lines, or for getwork the
/// JSON bodies of HTTP responses. Unparseable lines are skipped.
fn messages(buf: &mut Vec<u8>, http: bool) -> io::Result<Vec<Value>> {
    let mut out = Vec::new();
    if http {
        loop {
            let skip = buf.iter().take_while(|b| b.is_ascii_whitespace() || **b == 0).count();
            buf.drain(..skip);
            let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let length = head
                .split("\r\n")
                .filter_map(|h| h.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < head_end + 4 + length {
                break;
            }
            let body: Vec<u8> = buf.drain(..head_end + 4 + length).skip(head_end + 4).collect();
            let status = head.lines().next().unwrap_or("");
            static SHOWN: std::sync::Once = std::sync::Once::new();
            SHOWN.call_once(|| {
                for h in head.split("\r\n").skip(1) {
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("x-long-polling") || k.eq_ignore_ascii_case("x-stratum") {
                            eprintln!("stratumclient: pool header {k}:{v}");
                        }
                    }
                }
            });
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => out.push(v),
                Err(_) => eprintln!("stratumclient: HTTP {status}: body is not JSON"),
            }
        }
    } else {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw);
            let line = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) => out.push(v),
                Err(_) => eprintln!("stratumclient: skipping a line that is not JSON"),
            }
        }
    }
    if buf.len() > MAX_MESSAGE {
        return Err(io::Error::other("pool message too long"));
    }
    Ok(out)
}

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The miner side of one dialect: what to send, and when.
struct Miner<'a> {
    o: &'a Opts,
    rpcid: String,
    job: Option<String>,
    ntime: String,
    header: String,
    data: String,
    authorized: bool,
    submitted: bool,
    answered: bool,
    submit_id: u64,
    next_id: u64,
    lp_outstanding: bool,
}

impl<'a> Miner<'a> {
    fn new(o: &'a Opts) -> Self {
        Miner {
            o,
            rpcid: String::new(),
            job: None,
            ntime: "6553f100".into(),
            header: String::new(),
            data: String::new(),
            authorized: false,
            submitted: false,
            answered: false,
            submit_id: 4,
            next_id: 10,
            lp_outstanding: false,
        }
    }

    fn progress(&self) -> String {
        format!(
            "authorized={} job={} submitted={}",
            self.authorized,
            self.job.is_some(),
            self.submitted
        )
    }

    fn login(&self) -> String {
        js(&self.o.login)
    }

    fn http_post(&self, body: &str) -> String {
        format!(
            "POST / HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Basic {}\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: {}\r\nX-Mining-Extensions: longpoll\r\n\r\n{body}",
            self.o.host,
            self.o.port,
            base64(format!("{}:x", self.o.login).as_bytes()),
            body.len(),
            self.o.agent
        )
    }

    /// The opening writes (one write with --coalesce).
    fn initial(&mut self) -> Vec<String> {
        let a = js(&self.o.agent);
        let l = self.login();
        let lines: Vec<String> = match self.o.dialect {
            Dialect::StratumV1 => {
                let mut v = vec![format!("{{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [{a}]}}\n")];
                if self.o.coalesce {
                    v.push(format!("{{\"id\": 2, \"method\": \"mining.authorize\", \"params\": [{l}, \"x\"]}}\n"));
                    v.push("{\"id\": 3, \"method\": \"mining.extranonce.subscribe\", \"params\": []}\n".into());
                }
                v
            }
            Dialect::CryptoNote => vec![format!(
                "{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":{l},\"pass\":\"x\",\"agent\":{a},\"rigid\":\"\",\"algo\":[\"rx/0\"]}}}}\n"
            )],
            Dialect::EthProxy => {
                let mut v = vec![format!("{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"eth_submitLogin\",\"params\":[{l},\"x\"],\"worker\":\"rig1\"}}\n")];
                if self.o.coalesce {
                    v.push(Self::eth_getwork());
                }
                v
            }
            Dialect::EthStratum1 => {
                let mut v = vec![format!("{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[{a},\"EthereumStratum/1.0.0\"]}}\n")];
                if self.o.coalesce {
                    v.extend(self.es1_after_subscribe());
                }
                v
            }
            Dialect::EthStratum2 => {
                let mut v = vec![format!(
                    "{{\"id\":1,\"method\":\"mining.hello\",\"params\":{{\"agent\":{a},\"host\":{},\"port\":\"{:x}\",\"proto\":\"EthereumStratum/2.0.0\"}}}}\n",
                    js(&self.o.host),
                    self.o.port
                )];
                if self.o.coalesce {
                    v.push("{\"id\":2,\"method\":\"mining.subscribe\",\"params\":[]}\n".into());
                    v.push(format!("{{\"id\":3,\"method\":\"mining.authorize\",\"params\":[{l},\"x\"]}}\n"));
                }
                v
            }
            Dialect::KawPow => {
                let mut v = vec![format!(
                    "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[{a},null,{},\"{}\"]}}\n",
                    js(&self.o.host),
                    self.o.port
                )];
                if self.o.coalesce {
                    v.push(format!("{{\"id\":2,\"method\":\"mining.authorize\",\"params\":[{l},\"x\"]}}\n"));
                }
                v
            }
            Dialect::Getwork => vec![self.http_post("{\"method\": \"getwork\", \"params\": [], \"id\":0}\r\n")],
        };
        if self.o.coalesce {
            vec![lines.concat()]
        } else {
            lines
        }
    }

    fn eth_getwork() -> String {
        "{\"id\":5,\"jsonrpc\":\"2.0\",\"method\":\"eth_getWork\",\"params\":[]}\n".into()
    }

    fn es1_after_subscribe(&self) -> Vec<String> {
        vec![
            "{\"id\":2,\"method\":\"mining.extranonce.subscribe\",\"params\":[]}\n".into(),
            format!("{{\"id\":3,\"method\":\"mining.authorize\",\"params\":[{},\"x\"]}}\n", self.login()),
        ]
    }

    /// Reacts to one pool message; returns the writes to make.
    fn on_message(&mut self, v: &Value) -> Vec<String> {
        let d = self.o.dialect;
        let method = v.get("method").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let id = v.get("id").and_then(Value::as_u64);
        let result = v.get("result").unwrap_or(&Value::Null);
        let params = v.get("params").unwrap_or(&Value::Null);
        let s = |x: &Value| x.as_str().unwrap_or("").to_string();
        let mut out = Vec::new();
        if let Some(m) = method.as_deref() {
            match m {
                "mining.notify" => {
                    self.job = Some(s(&params[0]));
                    match d {
                        Dialect::StratumV1 => self.ntime = s(&params[7]),
                        Dialect::KawPow => self.header = s(&params[1]),
                        _ => {}
                    }
                }
                "job" => self.job = Some(s(&params["job_id"])),
                "mining.ping" => {
                    let id = js_value(v.get("id"));
                    out.push(if d == Dialect::StratumV1 {
                        format!("{{\"id\": {id}, \"result\": \"pong\", \"error\": null}}\n")
                    } else {
                        format!("{{\"id\":{id},\"result\":\"pong\",\"error\":null}}\n")
                    });
                }
                _ => {} // set_difficulty, set_target, mining.set, ...
            }
            return out;
        }
        if id == Some(self.submit_id) && self.submitted {
            if !v.get("error").unwrap_or(&Value::Null).is_null() {
                eprintln!("stratumclient: share rejected: {}", v["error"]);
            }
            self.answered = true;
            if d == Dialect::Getwork {
                self.lp_outstanding = false;
            }
            return out;
        }
        match (d, id) {
            (Dialect::StratumV1, Some(1)) if !self.o.coalesce => out.push(format!(
                "{{\"id\": 2, \"method\": \"mining.authorize\", \"params\": [{}, \"x\"]}}\n",
                self.login()
            )),
            (Dialect::StratumV1 | Dialect::KawPow, Some(2)) => self.authorized = result.as_bool() == Some(true),
            (Dialect::CryptoNote, Some(1)) => {
                self.rpcid = s(&result["id"]);
                if let Some(j) = result["job"]["job_id"].as_str() {
                    self.job = Some(j.to_string());
                }
                self.authorized = result["status"] == "OK";
            }
            (Dialect::EthProxy, _) if result.is_array() => {
                self.job = Some(s(&result[0]));
                self.header = s(&result[0]);
                self.lp_outstanding = false;
            }
            (Dialect::EthProxy, Some(1)) => {
                self.authorized = result.as_bool() == Some(true);
                if !self.o.coalesce {
                    out.push(Self::eth_getwork());
                }
            }
            (Dialect::EthStratum1, Some(1)) if !self.o.coalesce => out.extend(self.es1_after_subscribe()),
            (Dialect::EthStratum1, Some(3)) => self.authorized = result.as_bool() == Some(true),
            (Dialect::EthStratum2, Some(1)) if !self.o.coalesce => {
                out.push("{\"id\":2,\"method\":\"mining.subscribe\",\"params\":[]}\n".into())
            }
            (Dialect::EthStratum2, Some(2)) if !self.o.coalesce => out.push(format!(
                "{{\"id\":3,\"method\":\"mining.authorize\",\"params\":[{},\"x\"]}}\n",
                self.login()
            )),
            (Dialect::EthStratum2, Some(3)) => self.authorized = !result.is_null(),
            (Dialect::KawPow, Some(1)) if !self.o.coalesce => out.push(format!(
                "{{\"id\":2,\"method\":\"mining.authorize\",\"params\":[{},\"x\"]}}\n",
                self.login()
            )),
            (Dialect::Getwork, _) => {
                if let Some(data) = result["data"].as_str() {
                    self.data = data.to_string();
                    self.job = Some(data.get(..16).unwrap_or(data).to_string());
                    self.authorized = true;
                }
                self.lp_outstanding = false;
            }
            _ => {}
        }
        out
    }

    /// The one made-up share, once logged in with a job.
    fn maybe_submit(&mut self) -> Option<String> {
        if self.submitted || !self.authorized {
            return None;
        }
        let job = js(self.job.as_deref()?);
        let l = self.login();
        let fake_hash = "00000000c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
        self.submitted = true;
        Some(match self.o.dialect {
            Dialect::StratumV1 => {
                format!(
                    "{{\"method\": \"mining.submit\", \"params\": [{l}, {job}, \"00000000\", {}, \"c0ffee00\"], \"id\":4}}\n",
                    js(&self.ntime)
                )
            }
            Dialect::CryptoNote => {
                self.submit_id = 2;
                format!(
                    "{{\"id\":2,\"jsonrpc\":\"2.0\",\"method\":\"submit\",\"params\":{{\"id\":{},\"job_id\":{job},\"nonce\":\"c0ffee00\",\"result\":\"{fake_hash}\"}}}}\n",
                    js(&self.rpcid)
                )
            }
            Dialect::EthProxy => {
                self.submit_id = 40;
                format!(
                    "{{\"id\":40,\"jsonrpc\":\"2.0\",\"method\":\"eth_submitWork\",\"params\":[\"0x00000000c0ffee00\",{},\"0x{fake_hash}\"]}}\n",
                    js(&self.header)
                )
            }
            Dialect::EthStratum1 => format!("{{\"id\":4,\"method\":\"mining.submit\",\"params\":[{l},{job},\"c0ffee000000\"]}}\n"),
            Dialect::EthStratum2 => format!("{{\"id\":4,\"method\":\"mining.submit\",\"params\":[{job},\"c0ffee000000\",\"rig1\"]}}\n"),
            Dialect::KawPow => format!(
                "{{\"id\":4,\"method\":\"mining.submit\",\"params\":[{l},{job},\"0x00000000c0ffee00\",{},\"0x{fake_hash}\"]}}\n",
                js(&format!("0x{}", self.header.trim_start_matches("0x")))
            ),
            Dialect::Getwork => {
                self.submit_id = 1;
                self.http_post(&format!(
                    "{{\"method\": \"getwork\", \"params\": [{}], \"id\":1}}\r\n",
                    js(&self.data)
                ))
            }
        })
    }

    /// The dialect's idle keepalive, where it has one.
    fn keepalive(&mut self) -> Option<String> {
        self.next_id += 1;
        let n = self.next_id;
        match self.o.dialect {
            Dialect::CryptoNote => {
                Some(format!("{{\"id\":{n},\"jsonrpc\":\"2.0\",\"method\":\"keepalived\",\"params\":{{\"id\":{}}}}}\n", js(&self.rpcid)))
            }
            Dialect::EthProxy => Some(
                "{\"id\":9,\"jsonrpc\":\"2.0\",\"method\":\"eth_submitHashrate\",\"params\":[\"0x00000000000000000000000000000000000000000000000000000000004c4b40\",\"0x5c1a7e3f9d2b8a4c6e0f1d3b5a7c9e2f4d6b8a0c1e3f5d7b9a2c4e6f8d0b1a3c\"]}\n"
                    .into(),
            ),
            Dialect::EthStratum2 => Some(format!("{{\"id\":{n},\"method\":\"mining.noop\"}}\n")),
            _ => None,
        }
    }

    /// getwork while holding: one outstanding long-poll request at a time.
    fn long_poll(&mut self) -> Option<String> {
        if self.lp_outstanding {
            return None;
        }
        self.lp_outstanding = true;
        Some(format!(
            "GET /LP HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Basic {}\r\nAccept: */*\r\nUser-Agent: {}\r\nX-Mining-Extensions: longpoll\r\n\r\n",
            self.o.host,
            self.o.port,
            base64(format!("{}:x", self.o.login).as_bytes()),
            self.o.agent
        ))
    }
}

fn js_value(v: Option<&Value>) -> String {
    serde_json::to_string(v.unwrap_or(&Value::Null)).unwrap_or_else(|_| "null".into())
}
