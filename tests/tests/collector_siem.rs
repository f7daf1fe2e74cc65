//! The collector's SIEM outputs (issue 17), real binaries: `rigwatch-collector
//! serve` with `--siem-webhook` pointing at a receiver this test runs on
//! 127.0.0.1, fed reports POSTed with an agent token as an agent sends
//! them. (a) The finding reaches the webhook as an OCSF 1.5.0 Detection
//! Finding that the published schema (`ocsf-json-schema` from PyPI, the
//! validator of tests/siem.rs) accepts. (b) `GET /api/v1/export` with a
//! cursor gives each finding event once across a collector restart on the
//! same data directory.

use rigwatch_e2e::{collector_token, free_port, http_get, http_post, wait_for, KillOnDrop as Kill};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn collector_bin() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-collector", "rigwatch-collector", env!("CARGO_BIN_EXE_minersim"))
}

/// `rigwatch-collector serve` over DATA with extra flags, once it answers.
fn serve(collector: &Path, data: &Path, extra: &[&str]) -> (Kill, u16) {
    let port = free_port();
    let child = Command::new(collector)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rigwatch-collector serve");
    let c = Kill(child);
    wait_for(20, "collector /healthz", || {
        (http_get(port, "/healthz", None).0 == 200).then_some(())
    });
    (c, port)
}

/// A finding as the agent sends it: xmrig with a pool URL and a wallet.
fn finding(host: &str, id: &str, pool: &str, with_wallet: bool) -> Value {
    let mut evidence = vec![json!({"kind": "command_line", "matched": format!("stratum+tcp://{pool}:3333"),
        "base64": false, "pool_url": true, "rule": "cmdline.pool-url", "weight": "likely"})];
    if with_wallet {
        evidence.push(json!({"kind": "wallet", "coin": "monero", "address": WALLET, "source": "cmdline",
            "rule": "wallet.monero", "weight": "likely"}));
    }
    json!({
        "id": id, "severity": if with_wallet { "confirmed" } else { "likely" }, "host": host, "pid": 4242,
        "process": {"pid": 4242, "ppid": 1, "start_time": 777, "comm": "xmrig", "exe": "/tmp/xmrig",
            "cmdline": format!("xmrig -o stratum+tcp://{pool}:3333 -u {WALLET}"), "user": "www-data",
            "uid": 33, "cwd": "/", "cgroup": "/"},
        "evidence": evidence, "first_seen": 1_700_000_000u64, "last_seen": 1_700_000_000u64,
    })
}

/// A report of `events` ((seq, kind, payload)) from agent `a1` on `host`.
fn report(host: &str, events: &[(u64, &str, Value)]) -> String {
    let events: Vec<Value> = events
        .iter()
        .map(|(seq, kind, payload)| {
            let mut e = json!({"event_id": format!("a1:{seq}"), "at": 1_700_000_000u64 + seq, "type": kind});
            for (k, v) in payload.as_object().unwrap() {
                e[k] = v.clone();
            }
            e
        })
        .collect();
    json!({
        "version": 1, "batch_id": format!("a1:{}", events[0]["event_id"]), "sent_at": 1_700_000_000u64,
        "agent": {"agent_id": "a1", "host": host, "version": "0.1.0", "signatures_version": "s1", "sensors": []},
        "events": events,
    })
    .to_string()
}

fn post(port: u16, token: &str, body: &str) {
    let (s, b) = http_post(port, "/api/v1/reports", Some(token), body);
    assert_eq!(s, 200, "report refused: {b}");
}

/// `GET /api/v1/export?cursor=N` (OCSF): the events and the next cursor.
fn export(port: u16, token: &str, cursor: u64) -> (Vec<Value>, u64) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET /api/v1/export?format=ocsf&cursor={cursor} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let (head, body) = s.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{s}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-ndjson"), "{head}");
    let next = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-rigwatch-cursor:")
                .map(|v| v.trim().parse::<u64>().unwrap())
        })
        .expect("an X-Rigwatch-Cursor header");
    (body.lines().map(|l| serde_json::from_str(l).unwrap()).collect(), next)
}

/// (finding uid, OCSF activity_id).
fn key(v: &Value) -> (String, u64) {
    (
        v["finding_info"]["uid"].as_str().unwrap().to_string(),
        v["activity_id"].as_u64().unwrap(),
    )
}

fn validate(dir: &Path, name: &str, events: &[Value]) {
    let file = dir.join(name);
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let (code, report) = rigwatch_e2e::ocsf_validate(Path::new(env!("CARGO_TARGET_TMPDIR")), &[&file]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["valid"].as_u64(), Some(events.len() as u64), "{report:#}");
}

#[test]
fn collector_sends_findings_to_a_siem_and_exports_each_event_once() {
    let collector = collector_bin();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let agent = collector_token(&collector, &data, "node-a", false);
    let soc = collector_token(&collector, &data, "soc", true);
    let (hook_port, got) = rigwatch_e2e::webhook_receiver();
    let hook = format!("http://127.0.0.1:{hook_port}/siem");
    let flags = ["--siem-webhook", hook.as_str(), "--siem-format", "ocsf"];
    let (c, port) = serve(&collector, &data, &flags);

    // (a) a finding opened reaches the webhook as a valid OCSF Detection Finding.
    post(
        port,
        &agent,
        &report(
            "node-a",
            &[(
                1,
                "finding_opened",
                json!({"finding": finding("node-a", "f1", "pool.example.com", true)}),
            )],
        ),
    );
    let first: Value = wait_for(20, "the finding at the SIEM webhook", || {
        got.lock()
            .unwrap()
            .first()
            .map(|b| serde_json::from_str(b).expect("the body is one JSON event"))
    });
    assert_eq!(key(&first), ("f1".to_string(), 1), "{first:#}");
    assert_eq!(
        (first["class_uid"].as_u64(), first["severity_id"].as_u64()),
        (Some(2004), Some(5)),
        "{first:#}"
    );
    assert_eq!(first["device"]["hostname"], "node-a");
    assert!(
        first["evidences"].as_array().unwrap().iter().any(|e| e["name"] == "wallet"),
        "{first:#}"
    );
    validate(tmp.path(), "webhook.ndjson", &[first]);

    // (b) the export, pulled with a cursor.
    let (events, c1) = export(port, &soc, 0);
    assert_eq!(events.iter().map(key).collect::<Vec<_>>(), vec![("f1".to_string(), 1)]);
    assert!(c1 > 0);
    // Its evidence changes (the wallet is gone, severity falls): an update.
    post(
        port,
        &agent,
        &report(
            "node-a",
            &[(
                2,
                "finding_updated",
                json!({"finding": finding("node-a", "f1", "pool.example.com", false)}),
            )],
        ),
    );
    let (events, c2) = export(port, &soc, c1);
    assert_eq!(events.iter().map(key).collect::<Vec<_>>(), vec![("f1".to_string(), 2)]);
    assert!(c2 > c1);
    wait_for(20, "the update at the webhook too", || {
        (got.lock().unwrap().len() >= 2).then_some(())
    });

    // Restart on the same data directory: the saved cursor has nothing new.
    drop(c);
    let (_c, port) = serve(&collector, &data, &flags);
    let (events, same) = export(port, &soc, c2);
    assert!(events.is_empty(), "nothing repeats after a restart: {events:?}");
    assert_eq!(same, c2);
    // New events after the restart appear once, after the old ones.
    post(
        port,
        &agent,
        &report(
            "node-a",
            &[
                (3, "finding_resolved", json!({"finding_id": "f1", "reason": "process exited"})),
                (
                    4,
                    "finding_opened",
                    json!({"finding": finding("node-a", "f2", "other.example.com", true)}),
                ),
            ],
        ),
    );
    let (events, c3) = export(port, &soc, c2);
    assert_eq!(
        events.iter().map(key).collect::<Vec<_>>(),
        vec![("f1".to_string(), 3), ("f2".to_string(), 1)]
    );
    assert!(c3 > c2);
    assert!(export(port, &soc, c3).0.is_empty());
    // From the start: every event once, in order, each a valid OCSF event.
    let (all, end) = export(port, &soc, 0);
    assert_eq!(end, c3);
    assert_eq!(
        all.iter().map(key).collect::<Vec<_>>(),
        vec![
            ("f1".to_string(), 1),
            ("f1".to_string(), 2),
            ("f1".to_string(), 3),
            ("f2".to_string(), 1)
        ]
    );
    validate(tmp.path(), "export.ndjson", &all);
    // The restarted collector's webhook sent the new ones too.
    wait_for(20, "the post-restart events at the webhook", || {
        (got.lock().unwrap().len() >= 4).then_some(())
    });
    let hooked: Vec<Value> = got.lock().unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect();
    assert_eq!(hooked.iter().map(key).collect::<Vec<_>>(), all.iter().map(key).collect::<Vec<_>>());
}
