//! End-to-end network detection: the real `rigwatch scan` captures while the
//! harmless `stratumclient` talks to the test's own `fakepool` on loopback
//! (and across a veth pair into a network namespace the test creates).
//! Needs root (AF_PACKET capture, port 53, namespaces); each test says SKIP
//! and returns when it cannot run here.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_fakepool"))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One test at a time: each scan captures everything on the host.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Proc {
    child: Child,
    first: String,
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a program and reads its first stdout line.
fn start(mut cmd: Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start test program");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    Proc {
        child,
        first: first.trim().to_string(),
    }
}

fn pool(dialect: &str, listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fakepool"));
    c.args([
        "--dialect",
        dialect,
        "--listen",
        listen,
        "--job-interval",
        "0.5",
        "--max-seconds",
        "60",
    ])
    .args(extra);
    let p = start(c);
    let addr = p
        .first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("fakepool said {:?}", p.first))
        .to_string();
    (p, addr)
}

fn client(dialect: &str, addr: &str, extra: &[&str]) -> (Proc, u32) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stratumclient"));
    c.args(["--dialect", dialect, "--connect", addr]).args(extra);
    let p = start(c);
    let pid = p.child.id();
    assert!(p.first.starts_with("ready"), "stratumclient said {:?}", p.first);
    (p, pid)
}

fn scan_start(window: &str) -> Child {
    rigwatch_e2e::scan_start(&rigwatch(), window)
}

fn scan_end(c: Child) -> Value {
    rigwatch_e2e::scan_end(c)
}

fn finding(v: &Value, pid: u32) -> Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pid"] == pid)
        .unwrap_or_else(|| {
            panic!(
                "no finding for pid {pid}: {}",
                serde_json::to_string_pretty(&v["findings"]).unwrap()
            )
        })
        .clone()
}

fn evidence<'a>(f: &'a Value, kind: &str) -> Vec<&'a Value> {
    rigwatch_e2e::evidence_of(f, kind)
}

#[test]
fn every_dialect_is_seen_on_the_wire_and_confirmed() {
    if !root() {
        eprintln!("SKIP: needs root for packet capture");
        return;
    }
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
    let scan = scan_start("7");
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("stratum-v1", &[], &["stratum-v1"]),
        ("stratum-v1", &["--split"], &["stratum-v1"]),
        ("stratum-v1", &["--coalesce", "--proxy-line"], &["stratum-v1"]),
        ("cryptonote", &["--keepalive-nul"], &["cryptonote"]),
        ("cryptonote", &["--split"], &["cryptonote"]),
        ("ethproxy", &[], &["ethproxy"]),
        ("ethereumstratum1", &[], &["ethereumstratum/1.0.0"]),
        ("ethereumstratum2", &[], &["ethereumstratum/2.0.0"]),
        ("kawpow", &[], &["kawpow", "stratum-v1"]),
        ("getwork", &[], &["getwork"]),
    ];
    let mut running = Vec::new();
    for (dialect, flags, want) in cases {
        let (p, addr) = pool(dialect, "127.0.0.1:0", &[]);
        let mut args = vec!["--hold", "10", "--login", WALLET];
        args.extend_from_slice(flags);
        let (c, pid) = client(dialect, &addr, &args);
        running.push((p, c, pid, *dialect, *flags, *want));
    }
    let v = scan_end(scan);
    for (_p, _c, pid, dialect, flags, want) in &running {
        let f = finding(&v, *pid);
        assert_eq!(f["severity"], "confirmed", "{dialect} {flags:?}: a stratum session confirms: {f}");
        let s = evidence(&f, "stratum");
        assert!(!s.is_empty(), "{dialect} {flags:?}: stratum evidence: {f}");
        assert!(
            want.iter().any(|w| s[0]["dialect"] == *w),
            "{dialect} {flags:?}: dialect {} not in {want:?}",
            s[0]["dialect"]
        );
        assert!(s[0]["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(f["process"]["comm"], "stratumclient");
    }
    // the XMRig-style login carries the wallet and the agent string
    let (.., pid, _, _, _) = &running[3];
    let f = finding(&v, *pid);
    let s = evidence(&f, "stratum");
    assert!(s.iter().any(|e| e["login"] == WALLET), "{f}");
    assert!(
        s.iter().any(|e| e["agent"].as_str().is_some_and(|a| a.starts_with("XMRig/"))),
        "{f}"
    );
    assert!(evidence(&f, "wallet").iter().any(|e| e["coin"] == "monero"));
}

#[test]
fn a_miner_connected_before_the_agent_started_is_seen_from_the_pool_side() {
    if !root() {
        eprintln!("SKIP: needs root for packet capture");
        return;
    }
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
    let (_p, addr) = pool("cryptonote", "127.0.0.1:0", &[]);
    let (_c, pid) = client("cryptonote", &addr, &["--hold", "12", "--login", WALLET]);
    std::thread::sleep(Duration::from_millis(1500)); // login long done
    let v = scan_end(scan_start("4"));
    let f = finding(&v, pid);
    assert_eq!(f["severity"], "confirmed");
    let s = evidence(&f, "stratum");
    assert_eq!(s[0]["dialect"], "cryptonote", "{f}");
    assert_ne!(s[0]["method"], "login", "the login was before the capture: {f}");
}

#[test]
fn tls_sni_dns_and_dns_learned_addresses() {
    if !root() {
        eprintln!("SKIP: needs root for packet capture and port 53");
        return;
    }
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
                // the pool listens on 127.0.0.2; the fake resolver answers pool.supportxmr.com with it
    let (_p, addr) = pool("cryptonote", "127.0.0.2:0", &["--tls"]);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let mut d = Command::new(env!("CARGO_BIN_EXE_fakepool"));
    d.args(["--dns", "127.0.0.153:53", "--answer", "127.0.0.2"]);
    let dns = start(d);
    assert!(dns.first.starts_with("listening"), "fake DNS: {:?}", dns.first);
    let scan = scan_start("5");
    let target = format!("127.0.0.1:{port}");
    let (_c, pid) = client(
        "cryptonote",
        &target,
        &[
            "--resolve",
            "pool.supportxmr.com",
            "--dns",
            "127.0.0.153:53",
            "--tls",
            "--sni",
            "pool.supportxmr.com",
            "--hold",
            "8",
        ],
    );
    let v = scan_end(scan);
    let f = finding(&v, pid);
    let sni = evidence(&f, "tls_sni");
    assert_eq!(sni.len(), 1, "{f}");
    assert_eq!(sni[0]["server_name"], "pool.supportxmr.com");
    assert_eq!(sni[0]["remote"], format!("127.0.0.2:{port}"));
    // the DNS exchange is seen; it lands on the process when its short-lived
    // UDP socket still exists at lookup time, else on a flow finding
    let all = v["findings"].as_array().unwrap();
    let q: Vec<&Value> = all
        .iter()
        .flat_map(|x| x["evidence"].as_array().unwrap().iter())
        .filter(|e| e["kind"] == "dns")
        .collect();
    assert!(
        q.iter()
            .any(|e| e["name"] == "pool.supportxmr.com" && e["answers"][0] == "127.0.0.2"),
        "{v}"
    );
    let pc = evidence(&f, "pool_connection");
    assert!(
        pc.iter()
            .any(|e| e["domain"] == "supportxmr.com" && e["remote"] == format!("127.0.0.2:{port}")),
        "a connection to a DNS-learned pool address: {f}"
    );
    assert_eq!(
        f["severity"], "likely",
        "pool name in DNS and SNI and a connection to it, no CPU: likely ({f})"
    );
    assert!(evidence(&f, "stratum").is_empty(), "TLS hides the protocol");
}

/// A network namespace the test creates, joined to the host by a veth pair
/// (`10.231.N.1/30` on the host, `.2` inside); removed on drop.
struct Veth {
    ns: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Veth {
    /// `None` (after saying SKIP) where namespaces cannot be made here.
    fn new(n: u8) -> Option<Veth> {
        if !root() || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("SKIP: needs root and iproute2");
            return None;
        }
        let id = std::process::id();
        let v = Veth {
            ns: format!("rwtest{id}x{n}"),
            host_if: format!("rwh{}x{n}", id % 10000),
            host_ip: format!("10.231.{n}.1"),
            ns_ip: format!("10.231.{n}.2"),
        };
        let sh = |args: &[&str]| Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false);
        let ok = sh(&["netns", "add", &v.ns])
            && sh(&["link", "add", &v.host_if, "type", "veth", "peer", "name", "rwns0", "netns", &v.ns])
            && sh(&["addr", "add", &format!("{}/30", v.host_ip), "dev", &v.host_if])
            && sh(&["link", "set", &v.host_if, "up"])
            && sh(&["-n", &v.ns, "addr", "add", &format!("{}/30", v.ns_ip), "dev", "rwns0"])
            && sh(&["-n", &v.ns, "link", "set", "rwns0", "up"])
            && sh(&["-n", &v.ns, "link", "set", "lo", "up"]);
        if !ok {
            eprintln!("SKIP: cannot create a network namespace here");
            return None;
        }
        Some(v)
    }

    /// `ip netns exec NS` with the simulators' test-network permission.
    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.env("RIGWATCH_TEST_NETNS", "1").args(["netns", "exec", &self.ns]);
        c
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn across_a_veth_pair_into_a_network_namespace() {
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
    let Some(v) = Veth::new(7) else { return };
    let mut c = v.exec();
    c.args([
        env!("CARGO_BIN_EXE_fakepool"),
        "--dialect",
        "stratum-v1",
        "--listen",
        &format!("{}:3333", v.ns_ip),
        "--job-interval",
        "0.5",
        "--max-seconds",
        "60",
    ]);
    let p = start(c);
    assert!(p.first.starts_with("listening"), "{:?}", p.first);
    let scan = scan_start("5");
    let mut cc = Command::new(env!("CARGO_BIN_EXE_stratumclient"));
    cc.env("RIGWATCH_TEST_NETNS", "1")
        .args(["--dialect", "stratum-v1", "--connect", &format!("{}:3333", v.ns_ip), "--hold", "8"]);
    let c = start(cc);
    let pid = c.child.id();
    let out = scan_end(scan);
    let f = finding(&out, pid);
    assert_eq!(f["severity"], "confirmed", "{f}");
    let s = evidence(&f, "stratum");
    assert_eq!(s[0]["remote"], format!("{}:3333", v.ns_ip));
    assert!(
        evidence(&f, "pool_connection").iter().any(|e| e["reason"] == "pool port 3333"),
        "pool port is weak evidence alongside: {f}"
    );
}

/// The miner in a pod: its own network, pid and mount namespaces, reaching
/// its pool (on the host) across a veth pair. The capture sees the login on
/// the host side; the socket is only in the pod's namespace, and the finding
/// must still land on the miner's host pid, with the stratum evidence.
#[test]
fn a_miner_in_its_own_namespaces_is_attributed_to_its_host_pid() {
    let _one = one();
    rigwatch();
    let Some(v) = Veth::new(8) else { return };
    let (_pool, addr) = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fakepool"));
        c.env("RIGWATCH_TEST_NETNS", "1").args([
            "--dialect",
            "cryptonote",
            "--listen",
            &format!("{}:3333", v.host_ip),
            "--job-interval",
            "0.5",
            "--max-seconds",
            "60",
        ]);
        let p = start(c);
        let a = p
            .first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("fakepool said {:?}", p.first))
            .to_string();
        (p, a)
    };
    let scan = scan_start("6");
    let mut cc = v.exec();
    cc.args([
        "unshare",
        "--pid",
        "--mount",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_stratumclient"),
    ])
    .args(["--dialect", "cryptonote", "--connect", &addr, "--hold", "10", "--login", WALLET]);
    let c = start(cc);
    assert!(c.first.starts_with("ready"), "stratumclient said {:?}", c.first);
    // its pid inside the pod is 1; on the host, it is the process running
    // stratumclient in the pod's network namespace
    let host_pid = pid_in_netns(&v, "stratumclient");
    assert_ne!(host_pid, 1);
    let out = scan_end(scan);
    let f = finding(&out, host_pid);
    assert_eq!(f["severity"], "confirmed", "{f}");
    let s = evidence(&f, "stratum");
    assert!(!s.is_empty(), "the stratum evidence is the miner's, not a pid-less flow: {f}");
    assert_eq!(s[0]["remote"], addr);
    assert_eq!(s[0]["login"], WALLET);
    // and no pid-less flow finding for the same session
    let flows: Vec<&Value> = out["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pid"] == 0 || f["pid"].is_null())
        .filter(|f| f.to_string().contains(&addr))
        .collect();
    assert!(flows.is_empty(), "{flows:?}");
}

/// Traffic that never leaves a pod: the miner and its pool (or a proxy
/// sidecar) on the pod's own loopback. Only a capture inside the pod's
/// namespace sees it.
#[test]
fn pod_local_traffic_on_the_namespaces_own_loopback() {
    let _one = one();
    rigwatch();
    let Some(v) = Veth::new(9) else { return };
    let mut pc = v.exec();
    pc.args([
        env!("CARGO_BIN_EXE_fakepool"),
        "--dialect",
        "stratum-v1",
        "--listen",
        "127.0.0.1:3333",
        "--job-interval",
        "0.5",
        "--max-seconds",
        "60",
    ]);
    let p = start(pc);
    assert!(p.first.starts_with("listening"), "{:?}", p.first);
    let scan = scan_start("6");
    // the capture opens the namespace's socket when it next looks (every 2 s)
    std::thread::sleep(Duration::from_millis(2500));
    let mut cc = v.exec();
    cc.args(["unshare", "--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_stratumclient")])
        .args(["--dialect", "stratum-v1", "--connect", "127.0.0.1:3333", "--hold", "8"]);
    let c = start(cc);
    assert!(c.first.starts_with("ready"), "stratumclient said {:?}", c.first);
    let host_pid = pid_in_netns(&v, "stratumclient");
    let out = scan_end(scan);
    let f = finding(&out, host_pid);
    assert_eq!(f["severity"], "confirmed", "{f}");
    let s = evidence(&f, "stratum");
    assert!(!s.is_empty(), "{f}");
    assert_eq!(s[0]["remote"], "127.0.0.1:3333");
    assert_eq!(s[0]["dialect"], "stratum-v1");
}

/// A pod's 50 ms pool session: by the pass its socket is closed (in the
/// pod's namespace), so neither a lookup there nor the fd listing finds it;
/// the kernel recorded the connecting process at connect time (eBPF,
/// `inet_sock_set_state`), and the session lands on the miner's host pid.
#[test]
fn a_pods_50_ms_pool_session_lands_on_its_host_pid() {
    let _one = one();
    rigwatch();
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIP: the connect program is built for x86_64");
        return;
    }
    let Some(v) = Veth::new(10) else { return };
    let mut pc = Command::new(env!("CARGO_BIN_EXE_fakepool"));
    pc.env("RIGWATCH_TEST_NETNS", "1").args([
        "--dialect",
        "cryptonote",
        "--listen",
        &format!("{}:0", v.host_ip),
        "--max-seconds",
        "60",
    ]);
    let p = start(pc);
    let addr = p
        .first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("fakepool said {:?}", p.first))
        .to_string();
    let scan = scan_start("5");
    let mut cc = v.exec();
    cc.args(["unshare", "--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_stratumclient")])
        .args(["--dialect", "cryptonote", "--connect", &addr, "--hold", "0.05", "--after", "20"]);
    let c = start(cc);
    assert!(c.first.starts_with("ready"), "stratumclient said {:?}", c.first);
    let host_pid = pid_in_netns(&v, "stratumclient");
    let out = scan_end(scan);
    let f = finding(&out, host_pid);
    assert_eq!(f["severity"], "confirmed", "{f}");
    let s = evidence(&f, "stratum");
    assert!(
        s.iter().any(|e| e["remote"] == addr.as_str() && e["dialect"] == "cryptonote"),
        "the closed session is the pod process's evidence: {f}"
    );
    let flows = out["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| (f["pid"] == 0 || f["pid"].is_null()) && f.to_string().contains(&addr))
        .count();
    assert_eq!(flows, 0, "no pid-less flow for it: {out}");
}

/// The host pid of the process named `comm` in the test's network namespace.
fn pid_in_netns(v: &Veth, comm: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(format!("/run/netns/{}", v.ns)).map(|m| m.ino()).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let n = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()).ok();
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            n == Some(ns) && c.trim() == comm
        })
        .unwrap_or_else(|| panic!("no {comm} in namespace {}", v.ns))
}

#[test]
fn offline_pcap_from_tcpdump() {
    if !root() || Command::new("tcpdump").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and tcpdump");
        return;
    }
    let _one = one();
    rigwatch(); // built before anything starts its bounded hold
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lo.pcap");
    let (_p, addr) = pool("stratum-v1", "127.0.0.1:0", &[]);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let mut td = Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-w", file.to_str().unwrap(), "tcp", "port", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let (mut c, _) = client("stratum-v1", &addr, &["--split", "--hold", "1"]);
    let _ = c.child.wait();
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(td.id() as i32), nix::sys::signal::Signal::SIGINT);
    let _ = td.wait();
    let out = Command::new(rigwatch())
        .args(["pcap", "--json", "--no-default-signatures", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v["findings"][0];
    assert_eq!(f["severity"], "confirmed", "{v}");
    assert!(f["pid"].is_null());
    assert_eq!(f["flow"]["server"], addr);
    let s = evidence(f, "stratum");
    assert_eq!(s[0]["dialect"], "stratum-v1");
    assert_eq!(
        s[0]["method"], "mining.subscribe",
        "offline, the split first line is reassembled: {f}"
    );
    // a truncated capture still gives what it holds; garbage is a clear error
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let out = Command::new(rigwatch())
        .args(["pcap", "--json", "--no-default-signatures", cut.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(1) || out.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture file at all").unwrap();
    let out = Command::new(rigwatch()).args(["pcap", junk.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.pcap"));
}
