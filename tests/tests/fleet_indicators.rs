//! Fleet immunity end to end (issue 16): what one host confirms, every agent
//! knows. Two real agents and a real collector (SQLite).
//!
//! Host B (its own pid namespace, so it sees only its own processes) runs a
//! harmless simulator (`busysim`: no miner strings) copied into a temporary
//! directory under an ordinary name, with nothing on its command line but
//! `--burn`: busy, from an odd origin, `suspicious`. Host A (the host's pid
//! namespace) then sees the same binary run as `xmrig` with a pool URL and a
//! wallet: `confirmed`. The collector learns the binary's SHA-256 from A's
//! finding, signs a new fleet set, B fetches it (checking the signature
//! with the collector's public key) and B's process becomes `confirmed` with
//! evidence naming A's finding. An analyst revokes the indicator; B's fleet
//! evidence goes and its finding falls back.

use rigwatch_e2e::{collector_token, free_port, http_get, http_post, serve_collector, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_busysim"))
}

fn list(port: u16, path: &str, token: &str) -> Vec<Value> {
    let (code, body) = http_get(port, path, Some(token));
    assert_eq!(code, 200, "{path}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    v.as_array()
        .cloned()
        .or_else(|| v["findings"].as_array().cloned())
        .or_else(|| v["indicators"].as_array().cloned())
        .unwrap_or_default()
}

/// The full finding of `host` whose executable is `exe`, if the collector has it.
fn finding_for(port: u16, analyst: &str, host: &str, exe: &Path) -> Option<Value> {
    let f = list(port, &format!("/api/v1/findings?host={host}"), analyst)
        .into_iter()
        .find(|f| f["exe"].as_str() == exe.to_str())?;
    let (code, full) = http_get(port, &format!("/api/v1/findings/{host}/{}", f["id"].as_str()?), Some(analyst));
    assert_eq!(code, 200, "{full}");
    Some(serde_json::from_str(&full).unwrap())
}

/// The evidence items of a full finding (wherever the view nests them).
fn evidence(full: &Value) -> Vec<Value> {
    full["evidence"]
        .as_array()
        .or_else(|| full["finding"]["evidence"].as_array())
        .cloned()
        .unwrap_or_default()
}

fn severity(full: &Value) -> String {
    full["severity"]
        .as_str()
        .or_else(|| full["finding"]["severity"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn fleet_evidence(full: &Value) -> Vec<Value> {
    evidence(full)
        .into_iter()
        .filter(|e| e["rule"].as_str().is_some_and(|r| r.starts_with("fleet.")))
        .collect()
}

/// The agents' pass interval and fleet poll, seconds: short for the test;
/// `FLEET_DEFAULTS=1` runs with the packaged defaults (10 and 10) for the
/// figure in BENCHMARKS.md.
fn intervals() -> (f64, f64) {
    if std::env::var("FLEET_DEFAULTS").is_ok_and(|v| v == "1") {
        (10.0, 10.0)
    } else {
        (2.0, 1.0)
    }
}

fn agent(rigwatch: &Path, dir: &Path, name: &str, cport: u16, token: &str, key: &str) -> Command {
    let cfg = dir.join(format!("{name}.toml"));
    let (interval, poll) = intervals();
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = {interval}\nlower_priority = false\n[sensors]\ncapture = false\nsockets = false\ngpu = false\n\
             [collector]\nheartbeat_seconds = 2\nfleet_poll_seconds = {poll}\nfleet_public_key = \"{key}\"\n"
        ),
    )
    .unwrap();
    let mut c = Command::new(rigwatch);
    c.env("RIGWATCH_HOSTNAME", name)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--collector", &format!("http://127.0.0.1:{cport}"), "--token", token])
        .arg("--spool-dir")
        .arg(dir.join(format!("spool-{name}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn what_one_host_confirms_every_agent_knows_and_a_revocation_takes_back() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (a pid namespace per host, exec events)");
        return;
    }
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let rigwatch = bin("rigwatch", "rigwatch-agent");
    let tmp = tempfile::Builder::new().prefix("rwfi").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let token_a = collector_token(&collector, &data, "node-a", false);
    let token_b = collector_token(&collector, &data, "node-b", false);
    let analyst = collector_token(&collector, &data, "soc", true);
    let out = Command::new(&collector)
        .args(["fleet", "key", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "fleet key: {}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(key.len(), 44, "a base64 ed25519 public key: {key:?}");
    let (_c, cport) = serve_collector(&collector, &data);

    // the same harmless binary, twice: B's under an ordinary name with nothing on its command line
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let (miner_a, miner_b) = (dir_a.join("xmrig"), dir_b.join("syshelper"));
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &miner_a).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &miner_b).unwrap();

    // host B: its own pid namespace holding its agent and its process
    let b_agent = agent(&rigwatch, tmp.path(), "node-b", cport, &token_b, &key);
    // busy (a miner hashes): with its odd origin, a suspicious finding of its own
    let mut script = format!("'{}' --burn 240 >/dev/null & exec", miner_b.display());
    for a in std::iter::once(b_agent.get_program()).chain(b_agent.get_args()) {
        script.push_str(&format!(" '{}'", a.to_string_lossy()));
    }
    let _b = Kill(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", &script])
            .env("RIGWATCH_HOSTNAME", "node-b")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _a = Kill(agent(&rigwatch, tmp.path(), "node-a", cport, &token_a, &key).spawn().unwrap());

    // before: B's process is at most suspicious (an odd origin), with no fleet evidence
    let before = rigwatch_e2e::wait_for(30, "node-b's finding about its process", || {
        finding_for(cport, &analyst, "node-b", &miner_b)
    });
    assert_eq!(severity(&before), "suspicious", "{before:#}");
    assert!(fleet_evidence(&before).is_empty(), "{before:#}");

    // host A confirms the same binary, run as a miner
    let t0 = Instant::now();
    let _m = Kill(
        Command::new(&miner_a)
            .args(["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", WALLET, "--idle", "300"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    let a_finding = loop {
        if let Some(f) = finding_for(cport, &analyst, "node-a", &miner_a).filter(|f| severity(f) == "confirmed") {
            break f;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "node-a's confirmed finding about {}: {:#?}",
            miner_a.display(),
            list(cport, "/api/v1/findings?host=node-a", &analyst)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let a_id = a_finding["id"]
        .as_str()
        .or_else(|| a_finding["finding"]["id"].as_str())
        .unwrap()
        .to_string();
    let after = rigwatch_e2e::wait_for(60, "node-b's finding confirmed by the fleet", || {
        finding_for(cport, &analyst, "node-b", &miner_b).filter(|f| severity(f) == "confirmed")
    });
    let took = t0.elapsed();
    eprintln!(
        "FIGURE: A's miner started -> B's finding confirmed at the collector: {took:.1?} (pass interval and fleet poll {:?} s)",
        intervals()
    );
    let fleet = fleet_evidence(&after);
    assert_eq!(fleet.len(), 1, "{after:#}");
    assert_eq!(fleet[0]["kind"], "binary_hash", "{after:#}");
    assert_eq!(fleet[0]["weight"], "confirmed", "{after:#}");
    let taught = fleet[0]["taught_by"].as_str().unwrap_or_default();
    assert!(
        taught.contains(&format!("node-a/{a_id}")),
        "the evidence names A's finding ({a_id}): {taught:?}"
    );

    // the analyst sees the indicator with its origin, and revokes it
    let indicators = list(cport, "/api/v1/fleet/indicators", &analyst);
    let sha = after["process"]["sha256"]
        .as_str()
        .or_else(|| after["finding"]["process"]["sha256"].as_str())
        .unwrap_or_default()
        .to_string();
    let ind = indicators
        .iter()
        .find(|i| i["value"] == sha.as_str() && !sha.is_empty())
        .unwrap_or_else(|| panic!("the binary's indicator ({sha}) is listed: {indicators:#?}"));
    assert_eq!(ind["taught_by"]["host"], "node-a", "{ind:#}");
    assert_eq!(ind["taught_by"]["finding"], a_id.as_str(), "{ind:#}");
    let id = ind["id"].as_str().unwrap();
    let (code, body) = http_post(cport, &format!("/api/v1/fleet/indicators/{id}/revoke"), Some(&analyst), "{}");
    assert!(code == 200 || code == 204, "revoke: {code} {body}");
    let back = rigwatch_e2e::wait_for(30, "node-b's fleet evidence gone after the revocation", || {
        finding_for(cport, &analyst, "node-b", &miner_b).filter(|f| fleet_evidence(f).is_empty())
    });
    assert_ne!(severity(&back), "confirmed", "{back:#}");
    // an agent's token cannot revoke
    assert_eq!(
        http_post(cport, &format!("/api/v1/fleet/indicators/{id}/revoke"), Some(&token_a), "{}").0,
        403
    );
}
