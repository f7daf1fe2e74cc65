//! Agent to collector, both real binaries: `rigwatch run` ships what it finds
//! to `rigwatch-collector serve` (SQLite, embedded defaults), and an analyst
//! sees the finding, its evidence and the host through the query API.

use rigwatch_e2e::{collector_token, free_port, http_get, serve_collector, start_xmrig, KillOnDrop as Kill};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

fn get(port: u16, path: &str, token: &str) -> (u16, String) {
    http_get(port, path, Some(token))
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
    let agent_token = collector_token(&collector, &data, "node-a", false);
    let analyst = collector_token(&collector, &data, "soc", true);
    let (_c, cport) = serve_collector(&collector, &data);
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
    let (_m, pid) = start_xmrig(env!("CARGO_BIN_EXE_minersim"), tmp.path(), WALLET, 60);
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
