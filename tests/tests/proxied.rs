//! Stratum through a proxy (issue 14, "Proxied stratum"): a miner told to
//! use a SOCKS4a/5 or HTTP `CONNECT` proxy (`xmrig -x`, Tor, a private relay)
//! asks the proxy for its pool and then speaks plain stratum through the
//! same connection. The harmless `stratumclient` does just that against
//! `fakepool --proxy`, which is the proxy and the pool in one (it connects
//! nowhere; the pool names asked for are never resolved by anyone).
//!
//! Live (`rigwatch scan`, the capture sensor) and offline (`rigwatch pcap`
//! over a tcpdump capture) the session must give stratum evidence whose
//! remote is the destination asked of the proxy and whose method names the
//! proxy, and pool-connection evidence naming the pool domain; a client that
//! asks a proxy for an ordinary web site and speaks HTTP through it gets
//! nothing. The first test proves the simulators themselves and needs no
//! privilege; the others need root (packet capture) and say SKIP without it.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POOL: &str = env!("CARGO_BIN_EXE_fakepool");
const CLIENT: &str = env!("CARGO_BIN_EXE_stratumclient");

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", POOL)
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One capturing test at a time: each capture sees everything on the host.
static ONE: Mutex<()> = Mutex::new(());
fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fakepool: its address and every line it prints; killed on drop.
struct Pool {
    child: Child,
    addr: String,
    events: Arc<Mutex<Vec<String>>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pool {
    /// `fakepool --proxy KIND` with `args` (a dialect, or `--web`) on loopback.
    fn start(proxy: &str, args: &[&str]) -> Pool {
        let mut child = Command::new(POOL)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--proxy",
                proxy,
                "--job-interval",
                "0.5",
                "--max-seconds",
                "90",
            ])
            .args(args)
            .env_remove("RIGWATCH_TEST_NETNS")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fakepool");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("fakepool said {first:?}"))
            .to_string();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                ev.lock().unwrap().push(line);
            }
        });
        Pool { child, addr, events }
    }

    /// A web server behind a proxy whose port is no pool port (an ephemeral
    /// port can be one: 45560, 45700), so that nothing about it is a pool.
    fn web(proxy: &str) -> Pool {
        loop {
            let p = Pool::start(proxy, &["--web"]);
            if !p.addr.ends_with(":45560") && !p.addr.ends_with(":45700") {
                return p;
            }
        }
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    /// Waits (bounded) until the pool has printed `line`.
    fn saw(&self, line: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.events.lock().unwrap().iter().any(|l| l == line) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

/// A stratumclient, unprivileged (`nobody`) when the test runs as root: the
/// miner is the adversary. Killed on drop.
struct Client {
    child: Child,
    pid: u32,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    fn start(args: &[&str]) -> Client {
        let mut cmd = if root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", CLIENT]);
            c
        } else {
            Command::new(CLIENT)
        };
        let mut child = cmd
            .args(args)
            .env_remove("RIGWATCH_TEST_NETNS")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stratumclient");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
        let pid: u32 = first
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("stratumclient {args:?} said {first:?}"));
        assert_eq!(pid, child.id(), "setpriv execs the client in place");
        Client { child, pid }
    }

    /// Waits for the client to finish; its stdout after `ready` and its status.
    fn finish(mut self) -> (String, Option<i32>) {
        let mut rest = String::new();
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut rest);
        let code = self.child.wait().unwrap().code();
        (rest, code)
    }
}

/// Runs stratumclient to the end (no privilege change): status and stdout.
fn client_run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(CLIENT)
        .args(args)
        .env_remove("RIGWATCH_TEST_NETNS")
        .stderr(Stdio::null())
        .output()
        .expect("run stratumclient");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the positive cases run: proxy kind for fakepool, the client's flag,
/// the destination asked, the dialect, the kind name in evidence, the
/// domain the destination matches, the first method the client sends.
struct Case {
    proxy: &'static str,
    flag: &'static str,
    dest: &'static str,
    dialect: &'static str,
    kind: &'static str,
    domain: &'static str,
    method: &'static str,
}

const CASES: &[Case] = &[
    Case {
        proxy: "socks5",
        flag: "--socks5",
        dest: "pool.supportxmr.com:3333",
        dialect: "cryptonote",
        kind: "socks5",
        domain: "supportxmr.com",
        method: "login",
    },
    Case {
        proxy: "connect",
        flag: "--http-connect",
        dest: "xmr-eu1.nanopool.org:14433",
        dialect: "stratum-v1",
        kind: "http-connect",
        domain: "nanopool.org",
        method: "mining.subscribe",
    },
    Case {
        proxy: "socks4",
        flag: "--socks4a",
        dest: "rvn.2miners.com:6060",
        dialect: "kawpow",
        kind: "socks4",
        domain: "2miners.com",
        method: "mining.subscribe",
    },
];

/// The negative cases: an ordinary web site asked of a proxy, plain HTTP.
const BENIGN: &[(&str, &str, &str)] = &[
    ("socks5", "--socks5", "www.example.org:80"),
    ("connect", "--http-connect", "downloads.example.net:443"),
];

fn evidence<'a>(f: &'a Value, kind: &str) -> Vec<&'a Value> {
    rigwatch_e2e::evidence_of(f, kind)
}

/// The proxied-stratum evidence a finding must carry for `c` through the
/// proxy at `proxy_addr`, at `confirmed`.
fn assert_proxied(f: &Value, c: &Case, proxy_addr: &str) {
    let what = format!("{} through {} ({proxy_addr}): {f:#}", c.dialect, c.kind);
    assert_eq!(f["severity"], "confirmed", "a stratum session confirms, proxy or not: {what}");
    let s = evidence(f, "stratum");
    assert!(!s.is_empty(), "stratum evidence: {what}");
    let through = format!("(through the {} proxy {proxy_addr})", c.kind);
    let tunnelled: Vec<&&Value> = s.iter().filter(|e| e["remote"] == c.dest).collect();
    assert!(
        !tunnelled.is_empty(),
        "the stratum evidence names the destination asked of the proxy, not the proxy: {what}"
    );
    for e in &s {
        assert_eq!(e["remote"], c.dest, "every stratum item of the flow is the tunnelled pool: {what}");
        let m = e["method"].as_str().unwrap();
        assert!(m.ends_with(&through), "method {m:?} names the proxy: {what}");
    }
    assert!(
        tunnelled
            .iter()
            .any(|e| e["method"].as_str().unwrap() == format!("{} {through}", c.method) && e["weight"] == "confirmed"),
        "the client's first message, through the proxy, confirmed: {what}"
    );
    let pc = evidence(f, "pool_connection");
    let asked = format!("asked of the {} proxy {proxy_addr}", c.kind);
    assert!(
        pc.iter().any(|e| e["remote"] == c.dest
            && e["domain"] == c.domain
            && e["reason"] == asked
            && e["rule"] == "pool.domains"
            && e["weight"] == "likely"),
        "the destination asked of the proxy is a pool domain: {what}"
    );
}

/// No finding anywhere in `v` mentions the proxy at `addr`.
fn assert_nothing_about(v: &Value, addr: &str, what: &str) {
    for f in v["findings"].as_array().unwrap() {
        let text = f.to_string();
        assert!(
            !text.contains(&format!(" proxy {addr}")) && f["flow"]["server"] != addr,
            "{what}: nothing about the proxy {addr}: {f:#}"
        );
    }
}

#[test]
fn the_simulators_speak_each_proxy_preamble() {
    // each kind: granted, then the whole dialect exchange on the same connection
    for c in CASES {
        let pool = Pool::start(c.proxy, &["--dialect", c.dialect, "--once"]);
        let (code, out) = client_run(&["--dialect", c.dialect, "--connect", &pool.addr, c.flag, c.dest, "--hold", "0"]);
        assert_eq!(code, Some(0), "{} {}: {out}", c.flag, c.dest);
        assert!(out.ends_with("done\n"), "{out}");
        let name = if c.flag == "--socks4a" { "socks4a" } else { c.proxy };
        assert!(pool.saw(&format!("proxy {name} {}", c.dest)), "{:?}", pool.events());
        assert!(pool.saw(&format!("got {}", c.method)), "{:?}", pool.events());
        let ev = pool.events();
        let at = |l: &str| ev.iter().position(|e| e.starts_with(l)).unwrap();
        assert!(at("proxy ") < at("got "), "the preamble comes first: {ev:?}");
    }
    // addresses instead of names, and TLS inside the tunnel
    for (proxy, flag, dest, shown) in [
        ("socks5", "--socks5", "[2001:db8::7]:3333", "proxy socks5 [2001:db8::7]:3333"),
        ("socks4", "--socks4a", "192.0.2.7:3333", "proxy socks4 192.0.2.7:3333"),
        ("connect", "--http-connect", "198.51.100.7:443", "proxy connect 198.51.100.7:443"),
    ] {
        let pool = Pool::start(proxy, &["--dialect", "cryptonote", "--tls", "--once"]);
        let (code, out) = client_run(&[
            "--dialect",
            "cryptonote",
            "--connect",
            &pool.addr,
            flag,
            dest,
            "--tls",
            "--hold",
            "0",
        ]);
        assert_eq!(code, Some(0), "{flag} {dest} --tls: {out}");
        assert!(pool.saw(shown), "{:?}", pool.events());
        assert!(pool.saw("tls sni none") && pool.saw("got login"), "{:?}", pool.events());
    }
    // the benign control: a web page through the proxy
    let web = Pool::web("socks5");
    let (code, _) = client_run(&[
        "--plain-http",
        "--connect",
        &web.addr,
        "--socks5",
        "www.example.org:80",
        "--hold",
        "0",
    ]);
    assert_eq!(code, Some(0));
    assert!(
        web.saw("proxy socks5 www.example.org:80") && web.saw("got http GET /"),
        "{:?}",
        web.events()
    );

    // the wrong protocol for the proxy: refused, the client fails
    let pool = Pool::start("socks5", &["--dialect", "cryptonote"]);
    let (code, _) = client_run(&[
        "--dialect",
        "cryptonote",
        "--connect",
        &pool.addr,
        "--http-connect",
        "pool.supportxmr.com:443",
    ]);
    assert_eq!(code, Some(1), "a SOCKS5 proxy does not grant an HTTP CONNECT");
    assert!(!pool.events().iter().any(|l| l.starts_with("proxy ") || l.starts_with("got ")));
    // bounded: an endless CONNECT head is dropped unanswered
    let conn = Pool::start("connect", &["--dialect", "cryptonote"]);
    let mut s = std::net::TcpStream::connect(&conn.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = b"CONNECT ".to_vec();
    head.resize(head.len() + 5000, b'a');
    let _ = s.write_all(&head); // may fail once the pool has closed
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty(), "nothing granted: {:?}", String::from_utf8_lossy(&answer));
    assert!(!conn.events().iter().any(|l| l.starts_with("proxy ")));
    // usage: one proxy at a time, a NAME:PORT destination
    for bad in [
        &["--socks5", "pool.supportxmr.com"][..],
        &["--socks5", "pool.supportxmr.com:0"],
        &["--http-connect", "bad name:80"],
        &["--socks5", "a.example:1", "--http-connect", "b.example:2"],
    ] {
        let mut args = vec!["--dialect", "cryptonote", "--connect", "127.0.0.1:9", "--dry-run"];
        args.extend_from_slice(bad);
        assert_eq!(client_run(&args).0, Some(2), "{bad:?}");
    }
    // the --connect address is still checked; the destination is only text
    let (code, _) = client_run(&[
        "--dialect",
        "cryptonote",
        "--connect",
        "192.0.2.1:1080",
        "--socks5",
        "pool.supportxmr.com:3333",
        "--dry-run",
    ]);
    assert_eq!(code, Some(2), "a proxy outside loopback is refused");
    let (code, out) = client_run(&[
        "--dialect",
        "cryptonote",
        "--connect",
        "127.0.0.1:1080",
        "--socks5",
        "pool.supportxmr.com:3333",
        "--dry-run",
    ]);
    assert_eq!((code, out.as_str()), (Some(0), "allowed 127.0.0.1:1080\n"));
}

fn scan_start(window: &str) -> Child {
    rigwatch_e2e::scan_start(&rigwatch(), window)
}

fn scan_end(c: Child) -> Value {
    rigwatch_e2e::scan_end(c)
}

fn finding_of(v: &Value, pid: u32) -> Option<&Value> {
    v["findings"].as_array().unwrap().iter().find(|f| f["pid"] == pid)
}

#[test]
fn live_stratum_through_socks_and_http_connect_proxies() {
    if !root() {
        eprintln!("SKIP: needs root for packet capture");
        return;
    }
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
    let pools: Vec<Pool> = CASES.iter().map(|c| Pool::start(c.proxy, &["--dialect", c.dialect])).collect();
    let webs: Vec<Pool> = BENIGN.iter().map(|(p, ..)| Pool::web(p)).collect();
    let scan = scan_start("7");
    let mut clients = Vec::new();
    for (c, p) in CASES.iter().zip(&pools) {
        clients.push(Client::start(&[
            "--dialect",
            c.dialect,
            "--connect",
            &p.addr,
            c.flag,
            c.dest,
            "--hold",
            "9",
        ]));
    }
    let mut benign = Vec::new();
    for ((_, flag, dest), w) in BENIGN.iter().zip(&webs) {
        benign.push(Client::start(&["--plain-http", "--connect", &w.addr, flag, dest, "--hold", "9"]));
    }
    let v = scan_end(scan);
    for ((c, p), cl) in CASES.iter().zip(&pools).zip(&clients) {
        assert!(p.saw(&format!("got {}", c.method)), "{:?}", p.events());
        let f = finding_of(&v, cl.pid).unwrap_or_else(|| panic!("no finding for the client through {}: {v:#}", c.kind));
        assert_eq!(f["process"]["comm"], "stratumclient", "{f:#}");
        assert_eq!(f["process"]["user"], "nobody", "{f:#}");
        assert_proxied(f, c, &p.addr);
    }
    for (((_, _, dest), w), cl) in BENIGN.iter().zip(&webs).zip(&benign) {
        let what = format!("plain HTTP to {dest} through the proxy {}", w.addr);
        assert!(w.saw("got http GET /"), "{what}: the request went through: {:?}", w.events());
        if let Some(f) = finding_of(&v, cl.pid) {
            panic!("{what}: no finding on the client: {f:#}");
        }
        assert_nothing_about(&v, &w.addr, &what);
    }
    drop(benign);
    for cl in clients {
        let (out, code) = cl.finish();
        assert_eq!((out.as_str(), code), ("done\n", Some(0)), "every client completed its exchange");
    }
}

#[test]
fn pcap_stratum_through_socks_and_http_connect_proxies() {
    if !root() || Command::new("tcpdump").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and tcpdump");
        return;
    }
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxied.pcap");
    let pools: Vec<Pool> = CASES.iter().map(|c| Pool::start(c.proxy, &["--dialect", c.dialect])).collect();
    let webs: Vec<Pool> = BENIGN.iter().map(|(p, ..)| Pool::web(p)).collect();
    let filter: Vec<String> = pools.iter().chain(&webs).map(|p| format!("tcp port {}", p.port())).collect();
    let td = rigwatch_e2e::KillOnDrop(
        Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-w", file.to_str().unwrap()])
            .arg(filter.join(" or "))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mut clients = Vec::new();
    for (c, p) in CASES.iter().zip(&pools) {
        clients.push(Client::start(&[
            "--dialect",
            c.dialect,
            "--connect",
            &p.addr,
            c.flag,
            c.dest,
            "--hold",
            "1",
        ]));
    }
    for ((_, flag, dest), w) in BENIGN.iter().zip(&webs) {
        clients.push(Client::start(&["--plain-http", "--connect", &w.addr, flag, dest, "--hold", "1"]));
    }
    for cl in clients {
        let (out, code) = cl.finish();
        assert_eq!((out.as_str(), code), ("done\n", Some(0)));
    }
    let v = rigwatch_e2e::stop_and_read_capture(&rigwatch(), td, &file);
    let all = v["findings"].as_array().unwrap();
    for (c, p) in CASES.iter().zip(&pools) {
        let flows: Vec<&Value> = all.iter().filter(|f| f["flow"]["server"] == p.addr).collect();
        assert_eq!(flows.len(), 1, "one finding for the flow through {}: {v:#}", c.kind);
        let f = flows[0];
        assert!(f["pid"].is_null(), "a capture has no processes: {f:#}");
        assert_eq!(f["flow"]["transport"], "tcp");
        assert_proxied(f, c, &p.addr);
    }
    for ((_, _, dest), w) in BENIGN.iter().zip(&webs) {
        assert!(w.saw("got http GET /"));
        assert_nothing_about(&v, &w.addr, &format!("offline, plain HTTP to {dest} through the proxy {}", w.addr));
    }
    assert_eq!(all.len(), CASES.len(), "nothing else in the capture: {v:#}");
}
