//! SIEM events (issue 17): findings as OCSF Detection Findings (class 2004),
//! validated against the published OCSF schema as the `ocsf-json-schema`
//! PyPI package ships it (with `jsonschema`, in a virtual environment this
//! test makes under the target directory), not against checks written here.
//!
//! The agent alone (no collector): `rigwatch run` with `[siem]` writes each
//! finding opened and resolved to an NDJSON file and to syslog (a unix
//! datagram socket this test listens on, as /dev/log would be), as RFC 5424
//! lines whose message is the event.

use rigwatch_e2e::{free_port, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// The virtual environment with the schema package and the validator
/// library ([`rigwatch_e2e::ocsf_python`], under this package's target tmp dir).
pub fn ocsf_python() -> PathBuf {
    rigwatch_e2e::ocsf_python(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Runs the validator over `files`: (exit code, its report).
pub fn validate(files: &[&Path]) -> (i32, Value) {
    rigwatch_e2e::ocsf_validate(Path::new(env!("CARGO_TARGET_TMPDIR")), files)
}

#[test]
fn the_agent_writes_valid_ocsf_findings_to_a_file_and_syslog() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (the agent's exec events)");
        return;
    }
    let rigwatch = rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_minersim"));
    let tmp = tempfile::Builder::new().prefix("rwsiem").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let events = tmp.path().join("events.ndjson");
    let sock = tmp.path().join("log");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 2\nlower_priority = false\n[sensors]\ncapture = false\nsockets = false\ngpu = false\n\
             [siem]\nformat = \"ocsf\"\nfile = \"{}\"\nsyslog = \"unix:{}\"\n",
            events.display(),
            sock.display()
        ),
    )
    .unwrap();
    let _agent = Kill(
        Command::new(&rigwatch)
            .env("RIGWATCH_HOSTNAME", "siem-node")
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (mut miner, pid) = rigwatch_e2e::start_xmrig(env!("CARGO_BIN_EXE_minersim"), tmp.path(), WALLET, 60);

    let mut syslog = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = |syslog: &mut Vec<String>| {
        while let Ok(n) = rx.recv(&mut buf) {
            syslog.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    rigwatch_e2e::wait_for(30, "the miner's finding opened in syslog", || {
        read(&mut syslog);
        syslog
            .iter()
            .any(|l| l.contains(" finding_opened ") && l.contains(&format!("\"pid\":{pid}")))
            .then_some(())
    });
    let _ = miner.0.kill();
    let _ = miner.0.wait();
    rigwatch_e2e::wait_for(30, "its finding resolved in syslog", || {
        read(&mut syslog);
        syslog
            .iter()
            .any(|l| l.contains(" finding_resolved ") && l.contains(&format!("\"pid\":{pid}")))
            .then_some(())
    });

    // RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID - BOM MSG; auth facility
    let opened = syslog
        .iter()
        .find(|l| l.contains(" finding_opened ") && l.contains(&format!("\"pid\":{pid}")))
        .unwrap();
    assert!(opened.starts_with("<34>1 ") && opened.contains(" siem-node rigwatch "), "{opened}");
    let log = tmp.path().join("syslog.txt");
    std::fs::write(&log, syslog.join("\n")).unwrap();

    // the file has the same events, one per line
    let text = std::fs::read_to_string(&events).unwrap();
    let mine: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["evidences"][0]["process"]["pid"] == pid)
        .collect();
    let activities: Vec<u64> = mine.iter().filter_map(|v| v["activity_id"].as_u64()).collect();
    assert!(
        activities.first() == Some(&1) && activities.last() == Some(&3),
        "opened, then closed: {activities:?}"
    );
    let first = &mine[0];
    assert_eq!(
        (first["class_uid"].as_u64(), first["severity_id"].as_u64()),
        (Some(2004), Some(5)),
        "{first:#}"
    );
    assert_eq!(first["device"]["hostname"], "siem-node");
    assert!(
        first["evidences"][0]["process"]["cmd_line"].as_str().unwrap().contains(WALLET),
        "{first:#}"
    );
    assert!(
        first["evidences"].as_array().unwrap().iter().any(|e| e["name"] == "wallet"),
        "each piece of evidence is an artifact: {first:#}"
    );

    // every event, from both sinks, is a valid OCSF 1.5.0 Detection Finding
    let (code, report) = validate(&[&events, &log]);
    assert_eq!(code, 0, "{report:#}");
    assert!(report["valid"].as_u64().unwrap() >= 4, "{report:#}");

    // and the validator can fail: an event missing a required field, with one the schema does not have
    let mut bad = first.clone();
    bad.as_object_mut().unwrap().remove("finding_info");
    bad["rigwatch_extra"] = Value::from(1);
    let bad_file = tmp.path().join("bad.ndjson");
    std::fs::write(&bad_file, format!("{bad}\n")).unwrap();
    let (code, report) = validate(&[&bad_file]);
    assert_eq!(code, 1, "{report:#}");
    let errors = report["invalid"][0]["errors"].to_string();
    assert!(errors.contains("finding_info") && errors.contains("rigwatch_extra"), "{errors}");
}
