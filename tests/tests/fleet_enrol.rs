//! A fleet on one secret, and a collector that pushes back; both real
//! binaries (`rigwatch run`, `rigwatch-collector serve` on SQLite):
//!
//! - two agents with different host names enrol with one fleet enrolment
//!   token (`token create --enrol`), each gets a token bound to its host and
//!   reports; a restart reuses the saved token; a third agent claiming an
//!   enrolled host's name with the same secret is refused (409) and the
//!   host's own agent keeps reporting;
//! - a token refused (403: bound to another host) keeps the events in the
//!   spool, logs one error, counts every refusal; and a collector rate limit
//!   (429 + Retry-After) is waited out: every event arrives, none lost.

use rigwatch_e2e::{collector_token, free_port, http_get, serve_collector, wait_for, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rwe")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// `rigwatch-collector token create ARGS... --data-dir DATA`: the secret.
fn token(collector: &Path, data: &Path, args: &[&str]) -> String {
    let out = Command::new(collector)
        .args(["token", "create"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string()
}

/// A light agent config: heartbeats every `beat` s, the heavy sensors off.
fn agent_config(dir: &Path, name: &str, collector_section: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[scan]\ninterval_seconds = 5\nlower_priority = false\n\
             [sensors]\nexec_events = false\ncapture = false\nsockets = false\ngpu = false\nbinary = false\n\
             [collector]\n{collector_section}\n"
        ),
    )
    .unwrap();
    p
}

struct Agent {
    _p: Kill,
    metrics_port: u16,
    log: PathBuf,
}

/// `rigwatch run` as host `host`, its stderr (JSON log lines) into a file.
fn agent(dir: &Path, host: &str, config: &Path, spool: &Path, extra: &[&str]) -> Agent {
    let metrics_port = free_port();
    let log = dir.join(format!("{host}-{metrics_port}.log"));
    let p = Command::new(bin("rigwatch", "rigwatch-agent"))
        .env("RIGWATCH_HOSTNAME", host)
        .env_remove("RIGWATCH_TOKEN")
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--spool-dir", spool.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Agent {
        _p: Kill(p),
        metrics_port,
        log,
    }
}

/// A sample's value from a Prometheus exposition (`name` with its labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn scrape(port: u16) -> String {
    http_get(port, "/metrics", None).1
}

fn hosts(cport: u16, analyst: &str) -> Vec<Value> {
    let (code, body) = http_get(cport, "/api/v1/hosts", Some(analyst));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn reports_of(cport: u16, analyst: &str, host: &str) -> u64 {
    hosts(cport, analyst)
        .iter()
        .find(|h| h["host"] == host)
        .and_then(|h| h["reports"].as_u64())
        .unwrap_or(0)
}

#[test]
fn two_agents_enrol_with_one_fleet_token() {
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let tmp = tmpdir();
    let d = tmp.path();
    let data = d.join("data");
    let fleet = token(&collector, &data, &["k8s", "--enrol"]);
    let analyst = collector_token(&collector, &data, "soc", true);
    let (_c, cport) = serve_collector(&collector, &data);
    let url = format!("http://127.0.0.1:{cport}");
    // one secret file for the whole fleet (a mounted Kubernetes Secret)
    let secret = d.join("enrol-token");
    std::fs::write(&secret, format!("{fleet}\n")).unwrap();
    // node-1 is told by flag, node-2 by its config file
    let cfg1 = agent_config(d, "node-1", &format!("url = \"{url}\"\nheartbeat_seconds = 1"));
    let cfg2 = agent_config(
        d,
        "node-2",
        &format!(
            "url = \"{url}\"\nheartbeat_seconds = 1\nenrol_token_file = \"{}\"",
            secret.display()
        ),
    );
    let (spool1, spool2) = (d.join("spool-1"), d.join("spool-2"));
    let a1 = agent(d, "node-1", &cfg1, &spool1, &["--enrol-token-file", secret.to_str().unwrap()]);
    let a2 = agent(d, "node-2", &cfg2, &spool2, &[]);
    wait_for(30, "both enrolled agents report", || {
        (reports_of(cport, &analyst, "node-1") >= 2 && reports_of(cport, &analyst, "node-2") >= 2).then_some(())
    });

    // Each got a token of its own, bound to its host, saved 0600, never logged.
    let list = Command::new(&collector)
        .args(["token", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    for (name, host) in [("k8s/node-1", "node-1"), ("k8s/node-2", "node-2")] {
        let line = list
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in\n{list}"));
        assert!(line.contains(" agent ") && line.contains(host) && line.contains("valid"), "{line}");
    }
    assert!(list.lines().any(|l| l.starts_with("k8s ") && l.contains(" enrol ")), "{list}");
    let mut own = Vec::new();
    for (spool, a) in [(&spool1, &a1), (&spool2, &a2)] {
        use std::os::unix::fs::PermissionsExt;
        let p = spool.join("collector-token");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let saved: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let t = saved["token"].as_str().unwrap().to_string();
        assert!(t.starts_with("rwc_") && t != fleet, "a token of its own");
        let log = std::fs::read_to_string(&a.log).unwrap();
        assert!(log.contains("\"event\":\"host_enrolled\""), "{log}");
        assert!(!log.contains(&t) && !log.contains(&fleet), "no secret in the log: {log}");
        own.push(t);
    }
    assert_ne!(own[0], own[1]);
    // The fleet secret itself cannot read fleet data; node-1's token cannot speak for node-2.
    assert_eq!(http_get(cport, "/api/v1/findings", Some(&fleet)).0, 403);
    assert_eq!(http_get(cport, "/api/v1/hosts", Some(&own[0])).0, 403);

    // A restart reuses the saved token: no second enrolment.
    drop(a1);
    let before = reports_of(cport, &analyst, "node-1");
    let a1 = agent(d, "node-1", &cfg1, &spool1, &["--enrol-token-file", secret.to_str().unwrap()]);
    wait_for(20, "node-1 reports again after a restart", || {
        (reports_of(cport, &analyst, "node-1") >= before + 2).then_some(())
    });
    let log = std::fs::read_to_string(&a1.log).unwrap();
    assert!(!log.contains("host_enrolled"), "{log}");

    // Someone else with the fleet secret claims node-1's name: refused, once.
    let thief = agent(
        d,
        "node-1",
        &cfg1,
        &d.join("spool-thief"),
        &["--enrol-token-file", secret.to_str().unwrap()],
    );
    let m = wait_for(20, "the collector refuses the second node-1", || {
        let m = http_get(cport, "/metrics", None).1;
        (metric(&m, "rigwatch_collector_enrolments_total{outcome=\"conflict\"}") == Some(1.0)).then_some(m)
    });
    assert_eq!(
        metric(&m, "rigwatch_collector_enrolments_total{outcome=\"enrolled\"}"),
        Some(2.0),
        "{m}"
    );
    let log = wait_for(10, "the thief logs its refusal", || {
        let log = std::fs::read_to_string(&thief.log).unwrap();
        log.contains("enrol_failed").then_some(log)
    });
    assert!(log.contains("already enrolled") && log.contains("409"), "{log}");
    assert!(!d.join("spool-thief/collector-token").exists());
    let before = reports_of(cport, &analyst, "node-1");
    wait_for(20, "node-1's own agent still reports", || {
        (reports_of(cport, &analyst, "node-1") >= before + 2).then_some(())
    });
    let t = scrape(thief.metrics_port);
    assert_eq!(metric(&t, "rigwatch_shipper_delivered_events_total"), Some(0.0), "{t}");
    assert_eq!(log.matches("enrol_failed").count(), 1, "logged once: {log}");
    drop(a2);
}

#[test]
fn refused_and_rate_limited_deliveries_lose_no_event() {
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let tmp = tmpdir();
    let d = tmp.path();
    let data = d.join("data");
    let wrong = token(&collector, &data, &["elsewhere", "--host", "other-host"]);
    let right = token(&collector, &data, &["rl-node", "--host", "rl-node"]);
    let analyst = collector_token(&collector, &data, "soc", true);
    // at most one report per second per token, no burst
    let ccfg = d.join("collector.toml");
    std::fs::write(&ccfg, "reports_per_second = 1\nreport_burst = 1\n").unwrap();
    let cport = free_port();
    let _c = Kill(
        Command::new(&collector)
            .args(["serve", "--config", ccfg.to_str().unwrap(), "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{cport}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(20, "collector /healthz", || {
        (http_get(cport, "/healthz", None).0 == 200).then_some(())
    });
    let url = format!("http://127.0.0.1:{cport}");
    let cfg = agent_config(d, "rl", &format!("url = \"{url}\"\nheartbeat_seconds = 1\nbatch_size = 1"));
    let spool = d.join("spool");

    // A token bound to another host: 403, events kept, one error line.
    let a = agent(d, "rl-node", &cfg, &spool, &["--token", &wrong]);
    let m = wait_for(30, "two refusals counted", || {
        let m = scrape(a.metrics_port);
        (metric(&m, "rigwatch_shipper_auth_refused_total").unwrap_or(0.0) >= 2.0).then_some(m)
    });
    let queued = metric(&m, "rigwatch_shipper_queue_events").unwrap_or(0.0);
    assert_eq!(metric(&m, "rigwatch_shipper_delivered_events_total"), Some(0.0), "{m}");
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert_eq!(log.matches("\"event\":\"delivery_unauthorized\"").count(), 1, "{log}");
    assert!(log.contains("other-host"), "the collector's reason is in the line: {log}");
    drop(a);
    assert!(queued >= 3.0, "heartbeats wait in the spool: {queued}");

    // The right token, one event per report at one report a second: the
    // backlog meets 429s, waits them out, and all of it arrives.
    let cfg = agent_config(d, "rl-b", &format!("url = \"{url}\"\nheartbeat_seconds = 3\nbatch_size = 1"));
    let a = agent(d, "rl-node", &cfg, &spool, &["--token", &right]);
    let (m, c) = wait_for(90, "the backlog drained through the rate limit", || {
        let m = scrape(a.metrics_port);
        let delivered = metric(&m, "rigwatch_shipper_delivered_events_total").unwrap_or(0.0);
        if !(delivered > queued
            && metric(&m, "rigwatch_shipper_queue_events") == Some(0.0)
            && metric(&m, "rigwatch_shipper_rate_limited_total").unwrap_or(0.0) >= 2.0)
        {
            return None;
        }
        // a quiet moment: nothing delivered while the collector was read
        let c = http_get(cport, "/metrics", None).1;
        let again = scrape(a.metrics_port);
        (metric(&again, "rigwatch_shipper_delivered_events_total") == Some(delivered)).then_some((m, c))
    });
    let delivered = metric(&m, "rigwatch_shipper_delivered_events_total").unwrap();
    assert_eq!(metric(&m, "rigwatch_spool_dropped_events_total"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "rigwatch_shipper_rejected_batches_total"), Some(0.0), "{m}");
    assert!(
        metric(&c, "rigwatch_collector_reports_total{outcome=\"rejected_rate\"}").unwrap_or(0.0) >= 2.0,
        "{c}"
    );
    assert!(
        metric(&c, "rigwatch_collector_reports_total{outcome=\"rejected_host\"}").unwrap_or(0.0) >= 2.0,
        "{c}"
    );
    // every event the agent ever spooled is stored once: the 403 phase's
    // and the backlog's, nothing twice, nothing left behind
    let stored = metric(&c, "rigwatch_collector_events_stored_total").unwrap();
    assert_eq!(stored, delivered, "{c}");
    assert_eq!(metric(&c, "rigwatch_collector_events_duplicate_total"), Some(0.0), "{c}");
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.contains("\"event\":\"delivery_rate_limited\""), "{log}");
    drop(a);
    assert_eq!(reports_of(cport, &analyst, "rl-node") as f64, delivered, "one event per report");
    assert!(hosts(cport, &analyst).iter().all(|h| h["host"] != "other-host"));
}
