//! `/metrics` passes `promtool check metrics` (Debian's prometheus
//! package); skipped, with a message, when promtool is missing.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |_| {}).await;
    c.post(&report(
        "n1",
        "a1",
        vec![opened("a1", 1, 1000, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    c.post_raw(None, b"{}".to_vec()).await;
    let (s, text) = c.text("/metrics").await;
    assert_eq!(s, 200);
    for name in [
        "rigwatch_collector_hosts 1",
        "rigwatch_collector_hosts_silent 0",
        "rigwatch_collector_findings_active{severity=\"confirmed\"} 1",
        "rigwatch_collector_campaigns 0",
        "rigwatch_collector_reports_total{outcome=\"stored\"} 1",
        "rigwatch_collector_reports_total{outcome=\"rejected_auth\"} 1",
        "rigwatch_collector_events_stored_total 1",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED the lint: promtool not installed (apt-get install prometheus)");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
