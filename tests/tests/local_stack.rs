//! Local mining stacks (issue 14): a miner that mines through P2Pool or solo
//! has its upstream on the same host — P2Pool on its sidechain peer port, a
//! monerod with its RPC and ZMQ publisher — so the processes that listen on
//! those ports, and the process connected to one of them on loopback, carry
//! the evidence (`signatures/rules/node-ports.toml`, the socket sensor).
//!
//! Harmless stand-ins only: small Python socket programs run as `nobody` that
//! listen on 127.0.0.1 (and one that connects there), never a real node or
//! miner. The real `rigwatch scan --json` must report the P2Pool listener
//! (a `suspicious` finding alone), the client of the local ZMQ publisher, and
//! a busy monerod-like listener (`suspicious` with its CPU); an idle
//! monerod-like listener and a listener on an unrelated port get nothing.
//! Needs root (to run the stand-ins as `nobody` and read their fd tables);
//! says SKIP and returns otherwise.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

/// Listens on 127.0.0.1:PORT (0: any), prints `ready PORT`, then idles or
/// burns one core ("burn") for at most 60 seconds.
const LISTENER: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("ready", s.getsockname()[1], flush=True)
held, end = [], time.time() + 60
s.settimeout(0.2)
while time.time() < end:
    if sys.argv[2] != "burn":
        try:
            held.append(s.accept()[0])
        except OSError:
            pass
"#;

/// Connects to 127.0.0.1:PORT, prints `ready`, holds the connection.
const CLIENT: &str = r#"
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("ready", c.getsockname()[1], flush=True)
time.sleep(60)
"#;

fn rigwatch() -> std::path::PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_fakepool"))
}

/// Runs a Python script as `nobody`; returns it once it said `ready PORT`.
fn as_nobody(script: &str, args: &[&str]) -> (rigwatch_e2e::KillOnDrop, u16) {
    let mut child = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", PYTHON, "-c", script])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("stand-in {args:?} said {line:?}"));
    (rigwatch_e2e::KillOnDrop(child), port)
}

fn finding(v: &Value, pid: u32) -> Option<&Value> {
    v["findings"].as_array().unwrap().iter().find(|f| f["pid"] == pid)
}

fn pool_connections(f: &Value) -> Vec<&Value> {
    rigwatch_e2e::evidence_of(f, "pool_connection")
}

#[test]
fn a_local_p2pool_and_monerod_are_evidence_on_the_processes_that_run_them() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new(PYTHON).exists() {
        eprintln!("SKIP: needs root (stand-ins run as nobody) and {PYTHON}");
        return;
    }
    // a real node on this host would be in the way (and is not ours to touch)
    for port in [37889, 18081, 18083, 18089] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("SKIP: 127.0.0.1:{port} is taken here");
            return;
        }
    }
    let rigwatch = rigwatch(); // built before the stand-ins start their bounded hold
    let (p2pool, _) = as_nobody(LISTENER, &["37889", "idle"]);
    let (zmq, _) = as_nobody(LISTENER, &["18083", "idle"]);
    let (miner, _) = as_nobody(CLIENT, &["18083"]);
    let (monerod, _) = as_nobody(LISTENER, &["18081", "idle"]);
    let (busy_monerod, _) = as_nobody(LISTENER, &["18089", "burn"]);
    let (web, web_port) = as_nobody(LISTENER, &["0", "idle"]);
    let out = Command::new(&rigwatch)
        .args([
            "scan",
            "--json",
            "--window",
            "3",
            "--cpu-threshold",
            "0.3",
            "--no-capture",
            "--no-gpu",
            "--no-default-signatures",
        ])
        .output()
        .unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let all = || serde_json::to_string_pretty(&v["findings"]).unwrap();
    let pid = |k: &rigwatch_e2e::KillOnDrop| k.0.id();

    // P2Pool's peer port: likely weight, alone a suspicious finding; once
    let f = finding(&v, pid(&p2pool)).unwrap_or_else(|| panic!("no finding for the P2Pool listener: {}", all()));
    assert_eq!(f["severity"], "suspicious", "{f}");
    let e = pool_connections(f);
    assert_eq!(e.len(), 1, "one listener, one item: {f}");
    assert_eq!(e[0]["reason"], "listens on 127.0.0.1:37889 (P2Pool sidechain peer port)", "{f}");
    assert_eq!(e[0]["remote"], "127.0.0.1:37889");
    assert_eq!(e[0]["rule"], "node.p2pool");
    assert_eq!(e[0]["weight"], "likely");

    // the miner fed by the local ZMQ publisher, and the publisher itself
    let f = finding(&v, pid(&miner)).unwrap_or_else(|| panic!("no finding for the local ZMQ client: {}", all()));
    assert_eq!(f["severity"], "suspicious", "{f}");
    let e = pool_connections(f);
    assert_eq!(e.len(), 1, "{f}");
    assert_eq!(e[0]["remote"], "127.0.0.1:18083");
    assert_eq!(e[0]["reason"], "local monerod ZMQ publisher port (P2Pool's feed)");
    assert_eq!(e[0]["rule"], "node.monerod-zmq-pub");
    let f = finding(&v, pid(&zmq)).unwrap_or_else(|| panic!("no finding for the ZMQ publisher: {}", all()));
    let e = pool_connections(f);
    assert_eq!(e.len(), 1, "the listener, not the connection it accepted: {f}");
    assert!(e[0]["reason"].as_str().unwrap().starts_with("listens on 127.0.0.1:18083"), "{f}");

    // a monerod RPC listener: nothing while idle, suspicious with sustained CPU
    assert!(finding(&v, pid(&monerod)).is_none(), "an idle node is no finding: {}", all());
    let f = finding(&v, pid(&busy_monerod)).unwrap_or_else(|| panic!("no finding for the busy RPC listener: {}", all()));
    assert_eq!(f["severity"], "suspicious", "a node with CPU is worth a look, no more: {f}");
    let e = pool_connections(f);
    assert_eq!(e[0]["reason"], "listens on 127.0.0.1:18089 (monerod RPC port)", "{f}");
    assert_eq!(e[0]["weight"], "suspicious");
    assert!(!rigwatch_e2e::evidence_of(f, "cpu").is_empty(), "{f}");

    // a listener on an unrelated port
    assert!(
        finding(&v, pid(&web)).is_none(),
        "a listener on {web_port} is no finding: {}",
        all()
    );
    assert!(
        !all().contains(&format!("127.0.0.1:{web_port}")),
        "nothing names the unrelated port"
    );
}
