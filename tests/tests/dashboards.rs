//! The Grafana dashboards and the Prometheus alerting rules against real
//! data: a live agent and collector, scraped by a real Prometheus (Debian's
//! `prometheus`), while a simulated miner runs — a miner look-alike whose GPU
//! use the fake NVML reports, and a stratum client talking to the fake pool
//! on loopback. Every panel's every query must return data, every template
//! variable must have values, and the miner alert must fire.

use rigwatch_e2e::{
    build_fake_nvml, collector_token, free_port, http_get, serve_collector, start_xmrig, wait_for, workspace_bin, KillOnDrop,
};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn bin(package: &str, name: &str) -> PathBuf {
    workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

/// Percent-encodes a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads lines from a child's stdout until one starts with `prefix`; returns the rest of it.
fn line_starting(out: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended before printing {prefix:?}");
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
}

fn spawn_piped(c: &mut Command) -> (Child, BufReader<ChildStdout>) {
    let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// A Prometheus instant query: the result array, or why there is none.
fn query(port: u16, expr: &str) -> Result<Vec<Value>, String> {
    let (code, body) = http_get(port, &format!("/api/v1/query?query={}", enc(expr)), None);
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    match v["data"]["resultType"].as_str() {
        Some("scalar") | Some("string") => Ok(vec![v["data"]["result"].clone()]),
        _ => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
    }
}

/// The dashboard's variables as Grafana would fill them in.
fn substitute(expr: &str, host: &str) -> String {
    expr.replace("${host}", host)
        .replace("$host", host)
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", "1h")
}

#[test]
fn every_panel_and_alert_has_data_from_a_live_agent_and_collector() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (packet capture, exec events)");
        return;
    }
    let rigwatch = bin("rigwatch-agent", "rigwatch");
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let tmp = tempfile::Builder::new()
        .prefix("rwdash")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = tmp.path();

    // the collector, and a token for the agent
    let data = dir.join("data");
    let token = collector_token(&collector, &data, "dash-node", false);
    let (_collector, cport) = serve_collector(&collector, &data);

    // the GPU miner look-alike, named xmrig, with pool and wallet flags
    let (_miner, miner_pid) = start_xmrig(env!("CARGO_BIN_EXE_minersim"), dir, WALLET, 240);
    let nvml = build_fake_nvml(dir);

    // the agent: fake NVML reports the miner on the GPU; it ships to the collector
    let mport = free_port();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        "[scan]\ninterval_seconds = 2\ncpu_window_seconds = 2\nlower_priority = false\n[collector]\nheartbeat_seconds = 2\n",
    )
    .unwrap();
    let _agent = KillOnDrop(
        Command::new(&rigwatch)
            .env("RIGWATCH_HOSTNAME", "dash-node")
            .env("RIGWATCH_NVML_LIBRARY", &nvml)
            .env("FAKE_NVML_PROCS", format!("{}:93:4096", miner_pid))
            .args(["run", "--config", cfg.to_str().unwrap(), "--listen", &format!("127.0.0.1:{mport}")])
            .args(["--collector", &format!("http://127.0.0.1:{cport}"), "--token", &token])
            .args(["--spool-dir", dir.join("spool").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(30, "agent /metrics", || {
        let (code, body) = http_get(mport, "/metrics", None);
        (code == 200 && body.contains("rigwatch_sensor_up{sensor=\"capture\"} 1")).then_some(())
    });

    // a stratum session on loopback, which the capture sensor sees on the wire
    let (p, mut pout) = spawn_piped(Command::new(env!("CARGO_BIN_EXE_fakepool")).args([
        "--dialect",
        "cryptonote",
        "--listen",
        "127.0.0.1:0",
        "--max-seconds",
        "240",
    ]));
    let _pool = KillOnDrop(p);
    let pool_addr = line_starting(&mut pout, "listening");
    let (s, mut sout) = spawn_piped(Command::new(env!("CARGO_BIN_EXE_stratumclient")).args([
        "--dialect",
        "cryptonote",
        "--connect",
        &pool_addr,
        "--login",
        WALLET,
        "--hold",
        "200",
    ]));
    let _client = KillOnDrop(s);
    line_starting(&mut sout, "ready");

    // Prometheus scrapes both every second and evaluates the shipped rules
    let pport = free_port();
    let prom_cfg = dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  \
             - job_name: rigwatch-agent\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n  \
             - job_name: rigwatch-collector\n    static_configs:\n      - targets: ['127.0.0.1:{cport}']\n",
            rules = repo().join("packaging/prometheus/rigwatch-rules.yml").display()
        ),
    )
    .unwrap();
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)"),
    );
    let host = format!("127.0.0.1:{mport}");
    // the miner's finding with GPU use, the stratum session, and the collector's view of them
    for (what, expr) in [
        (
            "GPU use of a confirmed finding",
            "rigwatch_finding_gpu_utilization_ratio > 0.9".to_string(),
        ),
        ("stratum on the wire", "rigwatch_finding_evidence{kind=\"stratum\"}".to_string()),
        (
            "two confirmed findings",
            "rigwatch_findings_active{severity=\"confirmed\"} >= 2".to_string(),
        ),
        (
            "findings at the collector",
            "rigwatch_collector_findings_active{severity=\"confirmed\"} >= 2".to_string(),
        ),
        (
            "the agent's fleet set version at the collector",
            "rigwatch_collector_agent_fleet_version".to_string(),
        ),
        (
            "a minute of samples for rate()",
            format!("count_over_time(up{{instance=\"{host}\"}}[1m]) > 15"),
        ),
    ] {
        wait_for(120, what, || query(pport, &expr).ok().filter(|r| !r.is_empty()).map(|_| ()));
    }

    // every panel, every query
    let mut checked = 0;
    let mut empty = Vec::new();
    for name in ["rigwatch-fleet.json", "rigwatch-host.json"] {
        let path = repo().join("packaging/grafana").join(name);
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(d["uid"].is_string() && d["title"].is_string(), "{name}");
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                let def = v["definition"].as_str().unwrap();
                let (metric, label) = def
                    .strip_prefix("label_values(")
                    .and_then(|s| s.strip_suffix(')'))
                    .and_then(|s| s.split_once(", "))
                    .unwrap_or_else(|| panic!("{name}: variable query {def}"));
                let (_, body) = http_get(pport, &format!("/api/v1/label/{label}/values?match[]={}", enc(metric)), None);
                assert!(
                    body.contains(&format!("\"{host}\"")),
                    "{name}: variable {} has no {host}: {body}",
                    v["name"]
                );
            }
        }
        let mut ids = std::collections::HashSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{name}: duplicate panel id {}", p["id"]);
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: {}", p["title"]);
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {} has no query", p["title"]);
            for t in targets {
                let expr = substitute(t["expr"].as_str().unwrap(), &host);
                checked += 1;
                match query(pport, &expr) {
                    Ok(r) if !r.is_empty() => {}
                    Ok(_) => empty.push(format!("{name}: {:?}: no data from {expr}", p["title"])),
                    Err(e) => empty.push(format!("{name}: {:?}: {e} in {expr}", p["title"])),
                }
            }
        }
    }
    assert!(empty.is_empty(), "{} of {checked} queries fail:\n{}", empty.len(), empty.join("\n"));
    assert!(checked >= 20, "only {checked} queries");

    // the shipped rule fires for the miner, with the process and finding in its labels
    let alert = wait_for(30, "RigwatchMinerConfirmed firing", || {
        let (_, body) = http_get(pport, "/api/v1/alerts", None);
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "RigwatchMinerConfirmed" && a["labels"]["comm"] == "xmrig" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(alert["labels"]["severity"], "confirmed", "{alert}");
    assert_eq!(alert["labels"]["pid"], miner_pid.to_string(), "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("xmrig (pid {})", miner_pid)),
        "{alert}"
    );
}
