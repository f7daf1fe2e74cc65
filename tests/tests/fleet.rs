//! Agent to collector, both real binaries: `rigwatch run` ships what it finds
//! to `rigwatch-collector serve` (SQLite, embedded defaults), and an analyst
//! sees the finding, its evidence and the host through the query API.

use rigwatch_e2e::{free_port, http_get, KillOnDrop as Kill};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

fn get(port: u16, path: &str, token: &str) -> (u16, String) {
    http_get(port, path, Some(token))
}

fn token(collector: &Path, data: &Path, name: &str, analyst: bool) -> String {
    let mut c = Command::new(collector);
    c.args(["token", "create", name, "--data-dir", data.to_str().unwrap()]);
    if analyst {
        c.arg("--analyst");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string()
}

#[test]
fn agent_ships_a_miner_to_the_collector() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (exec events)");
        return;
    }
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let rigwatch = bin("rigwatch", "rigwatch-agent");
    let tmp = tempfile::Builder::new()
        .prefix("rwf")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let data = tmp.path().join("data");
    let agent_token = token(&collector, &data, "node-a", false);
    let analyst = token(&collector, &data, "soc", true);
    let cport = free_port();
    let _c = Kill(
        Command::new(&collector)
            .args([
                "serve",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{cport}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", cport)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "collector did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[scan]\ninterval_seconds = 5\nlower_priority = false\n[sensors]\ncapture = false\n[collector]\nheartbeat_seconds = 2\n",
    )
    .unwrap();
    let _a = Kill(
        Command::new(&rigwatch)
            .env("RIGWATCH_HOSTNAME", "fleet-test-node")
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(["--collector", &format!("http://127.0.0.1:{cport}"), "--token", &agent_token])
            .args(["--spool-dir", tmp.path().join("spool").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    let x = tmp.path().join("xmrig");
    std::fs::copy(env!("CARGO_BIN_EXE_minersim"), &x).unwrap();
    let mut m = Command::new(&x)
        .args(["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", WALLET, "--idle", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(m.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = m.id();
    let _m = Kill(m);
    // the analyst sees the finding with its evidence
    let t = Instant::now();
    let finding = loop {
        let (code, body) = get(cport, "/api/v1/findings?host=fleet-test-node", &analyst);
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let list = v
            .as_array()
            .cloned()
            .or_else(|| v["findings"].as_array().cloned())
            .unwrap_or_default();
        if let Some(f) = list
            .into_iter()
            .find(|f| f["process"] == "xmrig" && f["exe"].as_str().is_some_and(|e| e.ends_with("/xmrig")))
        {
            break f;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "finding never reached the collector: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(finding["severity"], "confirmed", "{finding}");
    assert_eq!(finding["pool"], "supportxmr.com");
    let (code, full) = get(
        cport,
        &format!("/api/v1/findings/fleet-test-node/{}", finding["id"].as_str().unwrap()),
        &analyst,
    );
    assert_eq!(code, 200, "{full}");
    assert!(full.contains(&format!("\"pid\":{pid}")), "{full}");
    assert!(
        full.contains("binary_content") && full.contains(WALLET),
        "evidence travels with the finding: {full}"
    );
    let (code, hosts) = get(cport, "/api/v1/hosts", &analyst);
    assert_eq!(code, 200);
    assert!(hosts.contains("fleet-test-node"), "{hosts}");
    // the agent's token cannot read, and no token is refused
    assert_eq!(get(cport, "/api/v1/findings", &agent_token).0, 403);
    assert_eq!(get(cport, "/api/v1/findings", "nope").0, 401);
}
