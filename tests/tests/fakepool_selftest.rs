//! The harmless network test tools work: `fakepool` (a fake pool, and a tiny
//! DNS server) and `stratumclient` (a miner's protocol side) complete every
//! dialect's exchange over loopback — plain, split, coalesced, behind a
//! PROXY line, after a NUL keepalive byte, over TLS, and after a DNS lookup —
//! and both refuse any address outside loopback. Network-sensor tests rely
//! on these tools; this proves them first.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POOL: &str = env!("CARGO_BIN_EXE_fakepool");
const CLIENT: &str = env!("CARGO_BIN_EXE_stratumclient");

/// Each dialect and the methods the pool must see from the client.
const DIALECTS: &[(&str, &[&str])] = &[
    ("stratum-v1", &["mining.subscribe", "mining.authorize", "mining.submit"]),
    ("cryptonote", &["login", "submit"]),
    ("ethproxy", &["eth_submitLogin", "eth_getWork", "eth_submitWork"]),
    (
        "ethereumstratum1",
        &[
            "mining.subscribe",
            "mining.extranonce.subscribe",
            "mining.authorize",
            "mining.submit",
        ],
    ),
    (
        "ethereumstratum2",
        &["mining.hello", "mining.subscribe", "mining.authorize", "mining.submit"],
    ),
    ("kawpow", &["mining.subscribe", "mining.authorize", "mining.submit"]),
    ("getwork", &["http POST /", "getwork"]),
];

/// A running fakepool: its bound address and its event lines; killed on drop.
struct Pool {
    child: Child,
    addr: String,
    events: Arc<Mutex<Vec<String>>>,
}

impl Pool {
    fn start(args: &[&str]) -> Pool {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Pool {
        let mut cmd = Command::new(POOL);
        cmd.args(args)
            .args(["--max-seconds", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env_remove("RIGWATCH_TEST_NETNS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start fakepool");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).expect("read fakepool stdout");
        let addr = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("fakepool said {first:?}"))
            .trim()
            .to_string();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Pool { child, addr, events }
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    /// Waits (briefly) until every `wanted` event line has been logged.
    fn expect(&self, wanted: &[String], context: &str) {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let ev = self.events.lock().unwrap().clone();
            let missing: Vec<&String> = wanted.iter().filter(|w| !ev.contains(w)).collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > end {
                panic!("{context}: pool never logged {missing:?}; it logged {ev:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs stratumclient to completion (killed after 60 s).
fn client(args: &[&str]) -> Output {
    client_env(args, &[])
}

fn client_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CLIENT);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RIGWATCH_TEST_NETNS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start stratumclient");
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a clean run: exit 0, `ready PID` then `done` on stdout.
fn assert_done(out: &Output, context: &str) {
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        out.status.success() && lines.first().is_some_and(|l| l.starts_with("ready ")) && lines.last() == Some(&"done"),
        "{context}: status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
}

fn got(methods: &[&str]) -> Vec<String> {
    methods.iter().map(|m| format!("got {m}")).collect()
}

/// Every dialect, with `pool_extra` / `client_extra` flags on each side.
fn each_dialect(pool_extra: &[&str], client_extra: &[&str], also: &[&str]) {
    for (dialect, methods) in DIALECTS {
        let mut pargs = vec!["--dialect", dialect, "--listen", "127.0.0.1:0", "--job-interval", "0.3"];
        pargs.extend_from_slice(pool_extra);
        let pool = Pool::start(&pargs);
        let mut cargs = vec!["--dialect", dialect, "--connect", &pool.addr, "--hold", "1"];
        cargs.extend_from_slice(client_extra);
        let context = format!("{dialect} {client_extra:?}");
        assert_done(&client(&cargs), &context);
        let mut wanted = got(methods);
        wanted.extend(also.iter().map(|s| s.to_string()));
        pool.expect(&wanted, &context);
    }
}

#[test]
fn every_dialect_plain() {
    each_dialect(&[], &[], &[]);
}

#[test]
fn every_dialect_split_first_line() {
    each_dialect(&[], &["--split"], &[]);
}

#[test]
fn every_dialect_coalesced_both_sides() {
    each_dialect(&["--coalesce"], &["--coalesce"], &[]);
}

#[test]
fn every_dialect_behind_proxy_line_after_nul_keepalive() {
    each_dialect(&[], &["--proxy-line", "--keepalive-nul"], &["got PROXY", "got nul"]);
}

#[test]
fn tls_with_and_without_sni() {
    let pool = Pool::start(&["--dialect", "cryptonote", "--listen", "127.0.0.1:0", "--tls"]);
    let out = client(&[
        "--dialect",
        "cryptonote",
        "--connect",
        &pool.addr,
        "--tls",
        "--sni",
        "pool.supportxmr.com",
        "--hold",
        "1",
        "--split",
    ]);
    assert_done(&out, "cryptonote tls sni");
    pool.expect(
        &got(&["login", "submit"])
            .into_iter()
            .chain(["tls sni pool.supportxmr.com".to_string()])
            .collect::<Vec<_>>(),
        "tls sni",
    );

    let pool = Pool::start(&["--dialect", "stratum-v1", "--listen", "127.0.0.1:0", "--tls", "--coalesce"]);
    let out = client(&[
        "--dialect",
        "stratum-v1",
        "--connect",
        &pool.addr,
        "--tls",
        "--hold",
        "1",
        "--coalesce",
        "--proxy-line",
        "--keepalive-nul",
    ]);
    assert_done(&out, "stratum-v1 tls no sni");
    pool.expect(
        &[
            "tls sni none",
            "got PROXY",
            "got nul",
            "got mining.subscribe",
            "got mining.authorize",
            "got mining.submit",
        ]
        .map(String::from),
        "tls no sni",
    );
}

#[test]
fn resolve_through_fake_dns_then_connect_to_the_answer() {
    // The pool listens on 127.0.0.2; --connect names 127.0.0.1 and only the
    // DNS answer leads the client to 127.0.0.2.
    let pool = Pool::start(&["--dialect", "cryptonote", "--listen", "127.0.0.2:0"]);
    let dns = Pool::start(&["--dns", "127.0.0.1:0", "--answer", "127.0.0.2"]);
    let connect = format!("127.0.0.1:{}", pool.port());
    let out = client(&[
        "--dialect",
        "cryptonote",
        "--connect",
        &connect,
        "--resolve",
        "pool.supportxmr.com",
        "--dns",
        &dns.addr,
        "--hold",
        "1",
    ]);
    assert_done(&out, "resolve");
    assert!(
        text(&out.stderr).contains("resolved pool.supportxmr.com 127.0.0.2"),
        "{}",
        text(&out.stderr)
    );
    dns.expect(&["got dns pool.supportxmr.com A".to_string()], "dns");
    pool.expect(&got(&["login", "submit"]), "resolve");
}

#[test]
fn keepalives_while_holding() {
    for (dialect, keepalive) in [
        ("cryptonote", "keepalived"),
        ("ethproxy", "eth_submitHashrate"),
        ("ethereumstratum2", "mining.noop"),
    ] {
        let pool = Pool::start(&["--dialect", dialect, "--listen", "127.0.0.1:0"]);
        let out = client(&["--dialect", dialect, "--connect", &pool.addr, "--hold", "1", "--keepalive", "0.3"]);
        assert_done(&out, dialect);
        pool.expect(&got(&[keepalive]), dialect);
    }
    // getwork holds with a long poll.
    let pool = Pool::start(&["--dialect", "getwork", "--listen", "127.0.0.1:0", "--job-interval", "0.2"]);
    assert_done(
        &client(&["--dialect", "getwork", "--connect", &pool.addr, "--hold", "1"]),
        "getwork",
    );
    pool.expect(&["got http GET /LP".to_string()], "getwork long poll");
}

#[test]
fn wait_before_and_once() {
    let pool = Pool::start(&["--dialect", "kawpow", "--listen", "127.0.0.1:0", "--once", "--job-interval", "0.2"]);
    let out = client(&[
        "--dialect",
        "kawpow",
        "--connect",
        &pool.addr,
        "--wait-before",
        "0.5",
        "--hold",
        "1",
        "--agent",
        "GMiner/2.09",
        "--login",
        "RFakeWallet.rig7",
    ]);
    assert_done(&out, "wait-before");
    pool.expect(&got(&["mining.subscribe", "mining.authorize", "mining.submit"]), "wait-before");
    // --once: the pool exits by itself after its one connection.
    let mut pool = pool;
    let end = Instant::now() + Duration::from_secs(10);
    while pool.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "fakepool --once did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pool.events.lock().unwrap().iter().any(|l| l.starts_with("closed ")));
}

#[test]
fn refuses_everything_but_loopback() {
    // --dry-run does every check, then stops before connecting: no packet
    // leaves even if a check were wrong.
    for addr in [
        "8.8.8.8:3333",
        "10.1.2.3:3333",
        "192.168.1.1:3333",
        "172.16.0.1:3333",
        "0.0.0.0:3333",
        "[2001:db8::1]:3333",
    ] {
        let out = client(&["--dialect", "stratum-v1", "--connect", addr, "--dry-run"]);
        assert_eq!(out.status.code(), Some(2), "{addr}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("refusing"), "{addr}: {}", text(&out.stderr));
    }
    // Inside a test namespace the private test ranges are allowed, public ones never.
    let netns = [("RIGWATCH_TEST_NETNS", "1")];
    for addr in ["10.1.2.3:3333", "192.168.7.1:3333", "172.31.0.1:3333"] {
        let out = client_env(&["--dialect", "stratum-v1", "--connect", addr, "--dry-run"], &netns);
        assert!(
            out.status.success() && text(&out.stdout).starts_with("allowed "),
            "{addr}: {}",
            text(&out.stderr)
        );
    }
    for addr in ["8.8.8.8:3333", "172.32.0.1:3333", "100.64.0.1:3333"] {
        let out = client_env(&["--dialect", "stratum-v1", "--connect", addr, "--dry-run"], &netns);
        assert_eq!(out.status.code(), Some(2), "{addr} with netns: {}", text(&out.stderr));
    }
    assert!(client(&["--dialect", "stratum-v1", "--connect", "127.0.0.9:3333", "--dry-run"])
        .status
        .success());
    // A DNS server off loopback is refused before the query.
    let out = client(&[
        "--dialect",
        "cryptonote",
        "--connect",
        "127.0.0.1:3333",
        "--resolve",
        "x.test",
        "--dns",
        "8.8.8.8:53",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // A DNS answer off loopback is refused before connecting (the fake DNS
    // server may answer 10.x only because it runs as if in a namespace).
    let dns = Pool::start_env(&["--dns", "127.0.0.1:0", "--answer", "10.1.2.3"], &netns);
    let out = client(&[
        "--dialect",
        "cryptonote",
        "--connect",
        "127.0.0.1:3333",
        "--resolve",
        "pool.supportxmr.com",
        "--dns",
        &dns.addr,
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("refusing"), "{}", text(&out.stderr));
    // Host names are never resolved by the system resolver.
    let out = client(&["--dialect", "cryptonote", "--connect", "localhost:3333", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));

    // The pool refuses to listen or answer off loopback.
    for args in [
        &["--dialect", "stratum-v1", "--listen", "0.0.0.0:0"][..],
        &["--dialect", "stratum-v1", "--listen", "192.168.1.1:0"][..],
        &["--dns", "127.0.0.1:0", "--answer", "8.8.8.8"][..],
        &["--dns", "0.0.0.0:0", "--answer", "127.0.0.1"][..],
    ] {
        let out = Command::new(POOL).args(args).env_remove("RIGWATCH_TEST_NETNS").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("refusing"), "{args:?}: {}", text(&out.stderr));
    }
}
