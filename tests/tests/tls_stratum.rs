//! Stratum inside TLS (issue 14): a miner that speaks stratum over TLS
//! without a server name, to a pool that pushes jobs at intervals, shows
//! neither the protocol nor a name on the wire. What rigwatch sees is the
//! shape of the session (unasked, similar-sized server records; answered
//! submits and keepalives) and the client's JA4 fingerprint.
//!
//! One run, watched two ways: live (`rigwatch scan`, the capture sensor)
//! and offline (`rigwatch pcap` over a tcpdump capture of the same run).
//! The harmless `stratumclient`, copied into a world-writable directory and
//! spinning one core (`--busy`) as user `nobody`, talks to `fakepool --tls`;
//! beside it, benign long-lived TLS sessions (`tests/scripts/tls_shapes.py`,
//! Python's OpenSSL: request/response calls, database queries, a
//! websocket-like feed from a busy client, message-queue deliveries, a
//! download) must stay below `likely`. The pool listens on a common pool
//! port, so the session's evidence weighs `likely` (a pool-like
//! destination) and the capture file, which has no process and no CPU,
//! still makes a (suspicious) flow finding; on another port the evidence
//! weighs `suspicious` and a flow alone makes none. Needs root (capture) and
//! says SKIP without it.

use rigwatch_e2e::{evidence_of, start_announcing, KillOnDrop};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const POOL: &str = env!("CARGO_BIN_EXE_fakepool");
const CLIENT: &str = env!("CARGO_BIN_EXE_stratumclient");
const SHAPES: [&str; 5] = ["rest", "db", "stream", "mq", "download"];

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", POOL)
}

fn shapes_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tls_shapes.py")
}

/// `prog args` as `nobody`: the miner (and every client) is the adversary.
fn as_nobody(prog: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(prog)
        .args(args);
    c
}

fn finding_of(v: &Value, pid: u32) -> Option<&Value> {
    v["findings"].as_array().unwrap().iter().find(|f| f["pid"] == pid)
}

fn flow_of<'a>(v: &'a Value, client: &str) -> Option<&'a Value> {
    v["findings"].as_array().unwrap().iter().find(|f| f["flow"]["client"] == client)
}

/// The one tls_session evidence of a finding.
fn session(f: &Value) -> &Value {
    match &evidence_of(f, "tls_session")[..] {
        [e] => e,
        other => panic!("one tls_session evidence expected, got {other:?}: {f:#}"),
    }
}

fn assert_stratum_shaped(e: &Value, pool: &str, what: &str) {
    assert_eq!(e["remote"], pool, "{what}: {e:#}");
    assert_eq!(e["weight"], "likely", "{what}: toward a pool port: {e:#}");
    assert!(e.get("server_name").is_none(), "{what}: the miner sent no server name: {e:#}");
    let ja4 = e["ja4"].as_str().unwrap();
    assert!(
        ja4.starts_with("t13i") && ja4.len() == 36,
        "{what}: a TLS 1.3 JA4 without SNI: {ja4}"
    );
    assert!(e["pushes"].as_u64().unwrap() >= 4, "{what}: {e:#}");
    let interval = e["push_interval_seconds"].as_f64().unwrap();
    assert!((2.0..=9.0).contains(&interval), "{what}: jobs every 3 s: {e:#}");
}

#[test]
fn stratum_inside_tls_without_sni_is_seen_live_and_offline_and_benign_tls_stays_below_likely() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root for packet capture");
        return;
    }
    let rigwatch = rigwatch(); // built before anything starts its bounded hold
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "a self-signed certificate for the benign server");

    // the miner runs from a world-writable place, as droppers put it
    let odd = tempfile::Builder::new().prefix("rigwatch-tls-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(odd.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let miner_bin = odd.path().join("syshelper");
    std::fs::copy(CLIENT, &miner_bin).unwrap();

    // the pool on a common pool port (the bundled pool_port list): a
    // pool-like destination, so the session's evidence weighs likely and a
    // capture file, which has no process to add CPU, still makes a finding
    let listen = [14433u16, 14444, 10343, 20535, 5556, 3357]
        .iter()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", **p)).is_ok())
        .map(|p| format!("127.0.0.1:{p}"))
        .expect("a free pool port on loopback");
    let mut pool = Command::new(POOL);
    pool.args(["--dialect", "cryptonote", "--listen", &listen, "--tls"])
        .args(["--job-interval", "3", "--max-seconds", "120"])
        .env_remove("RIGWATCH_TEST_NETNS");
    let (_pool, pool_addr, pool_log) = start_announcing(pool, "listening ");
    let mut shapes = Command::new("python3");
    shapes
        .arg(shapes_script())
        .args(["serve", "--cert"])
        .arg(&crt)
        .arg("--key")
        .arg(&key);
    let (_shapes, shapes_addr, _) = start_announcing(shapes, "listening ");
    let port = |a: &str| a.rsplit(':').next().unwrap().to_string();

    let pcap = dir.path().join("tls.pcap");
    let tcpdump = Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-w", pcap.to_str().unwrap()])
        .arg(format!("tcp port {} or tcp port {}", port(&pool_addr), port(&shapes_addr)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(KillOnDrop);

    // the clients start (and the busy ones spin) before the scan's first
    // look at the processes, and connect after its capture began
    let miner = {
        let c = as_nobody(
            &miner_bin,
            &[
                "--dialect",
                "cryptonote",
                "--connect",
                &pool_addr,
                "--tls",
                "--hold",
                "40",
                "--keepalive",
                "5",
                "--busy",
                "--delay",
                "3",
            ],
        );
        std::thread::spawn(move || start_announcing(c, "ready "))
    };
    let mut pending = Vec::new();
    for shape in SHAPES {
        let mut args = vec![
            "--connect",
            shapes_addr.as_str(),
            "--shape",
            shape,
            "--seconds",
            "30",
            "--delay",
            "3",
        ];
        // the feed is the shape most like a pool's: its client is busy too
        if shape == "stream" {
            args.push("--busy");
        }
        let mut c = as_nobody(Path::new("/usr/bin/python3"), &[]);
        c.arg(shapes_script()).arg("client").args(&args);
        pending.push((shape, std::thread::spawn(move || start_announcing(c, "ready "))));
    }
    std::thread::sleep(Duration::from_millis(500));
    let scan = rigwatch_e2e::scan_start(&rigwatch, "24");
    let (miner, miner_ready, _) = miner.join().unwrap();
    let miner_pid: u32 = miner_ready.parse().unwrap();
    let mut benign = Vec::new();
    for (shape, t) in pending {
        let (k, ready, _) = t.join().unwrap();
        let (pid, local) = ready.split_once(' ').unwrap();
        benign.push((shape, k, pid.parse::<u32>().unwrap(), format!("127.0.0.1:{local}")));
    }
    let v = rigwatch_e2e::scan_end(scan);
    assert!(
        pool_log.lock().unwrap().iter().any(|l| l == "tls sni none"),
        "the miner sent no SNI: {:?}",
        pool_log.lock().unwrap()
    );

    // live: the miner's own finding, likely (stratum-shaped TLS, busy, odd origin)
    let f = finding_of(&v, miner_pid).unwrap_or_else(|| panic!("no finding for the TLS miner: {v:#}"));
    assert_eq!(f["process"]["user"], "nobody", "{f:#}");
    assert_eq!(f["severity"], "likely", "{f:#}");
    assert_stratum_shaped(session(f), &pool_addr, "live");
    assert!(
        !evidence_of(f, "executable_origin").is_empty() && !evidence_of(f, "cpu").is_empty(),
        "{f:#}"
    );
    assert!(evidence_of(f, "stratum").is_empty(), "the protocol itself is encrypted: {f:#}");

    let mut table = vec![format!("{:<9} {:<12} {}", "shape", "live", "tls_session")];
    for (shape, _, pid, _) in &benign {
        let f = finding_of(&v, *pid);
        let sev = f.map_or("none", |f| f["severity"].as_str().unwrap());
        assert!(
            sev == "none" || sev == "suspicious",
            "benign {shape} TLS must stay below likely: {f:#?}"
        );
        let shaped = f.is_some_and(|f| !evidence_of(f, "tls_session").is_empty());
        table.push(format!("{shape:<9} {sev:<12} {shaped}"));
        if *shape != "stream" {
            assert!(!shaped, "{shape}: nothing like a pool's pushes: {f:#?}");
        }
    }
    eprintln!("{}", table.join("\n"));

    // offline: the same run in the capture file
    let Some(td) = tcpdump else {
        eprintln!("SKIP (offline half): no tcpdump");
        return;
    };
    let locals: Vec<(&str, String)> = benign.iter().map(|(s, _, _, l)| (*s, l.clone())).collect();
    drop(miner);
    drop(benign);
    let p = rigwatch_e2e::stop_and_read_capture(&rigwatch, td, &pcap);
    let flows: Vec<&Value> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["flow"]["server"] == pool_addr.as_str())
        .collect();
    assert_eq!(flows.len(), 1, "one finding for the miner's flow: {p:#}");
    assert_eq!(
        flows[0]["severity"], "suspicious",
        "likely evidence alone, no process: {:#}",
        flows[0]
    );
    assert_stratum_shaped(session(flows[0]), &pool_addr, "offline");
    for (shape, local) in &locals {
        if let Some(f) = flow_of(&p, local) {
            assert_eq!(*shape, "stream", "offline, {shape}: nothing: {f:#}");
            assert_eq!(f["severity"], "suspicious", "{f:#}");
        }
    }
}
