//! Alerting against a real Alertmanager (Debian's prometheus-alertmanager,
//! started here on a free loopback port with a temp config and storage)
//! and a real HTTP webhook receiver on loopback.

mod common;

use common::*;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn am_alerts(am: &str) -> Vec<Value> {
    let r = reqwest::get(format!("{am}/api/v2/alerts")).await.unwrap();
    assert!(r.status().is_success());
    r.json::<Vec<Value>>().await.unwrap()
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn counter(metrics: &str, line_prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_resend_and_resolve_in_alertmanager_and_webhook() {
    let Some(am) = Alertmanager::start() else { return };

    // The webhook receiver: records every JSON body posted to it.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hl.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hl, hook).await });

    let dir = tempfile::tempdir().unwrap();
    let am_url = am.url.clone();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |s| {
        s.alertmanager = Some(am_url);
        s.webhook = Some(hook_url);
        s.alert_resend = 1;
        s.silent_after = 3;
    })
    .await;

    let f = finding("node1", "f1", "xmrig", "pool.example.com", WALLET);
    let (s, _) = c.post(&report("node1", "a1", vec![opened("a1", 1, 1000, f)])).await;
    assert_eq!(s, 200);

    let alert = wait_for("the finding alert in Alertmanager", 20, async || {
        am_alerts(&am.url)
            .await
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "RigwatchMinerFinding")
    })
    .await;
    let l = &alert["labels"];
    assert_eq!(l["host"], "node1");
    assert_eq!(l["severity"], "confirmed");
    assert_eq!(l["rule"], "cmdline.pool-url");
    assert_eq!(l["process"], "xmrig");
    assert_eq!(l["pool"], "pool.example.com");
    assert_eq!(l["finding_id"], "f1");
    assert_eq!(alert["status"]["state"], "active");
    assert!(alert["generatorURL"].as_str().unwrap().ends_with("/findings/node1/f1"));

    // Re-sent while active.
    let before = counter(
        &c.text("/metrics").await.1,
        "rigwatch_collector_alert_deliveries_total{receiver=\"alertmanager\",result=\"ok\"}",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = counter(
        &c.text("/metrics").await.1,
        "rigwatch_collector_alert_deliveries_total{receiver=\"alertmanager\",result=\"ok\"}",
    );
    assert!(after >= before + 2, "re-sent while active: {before} → {after}");

    let firing = wait_for("the firing webhook", 10, async || {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["status"] == "firing" && m["finding_id"] == "f1")
            .cloned()
    })
    .await;
    assert_eq!(firing["host"], "node1");
    let text = firing["text"].as_str().unwrap();
    assert!(
        text.contains("confirmed") && text.contains("node1") && text.contains("xmrig") && text.contains("pool.example.com"),
        "{text}"
    );

    // Resolve it: Alertmanager sees endsAt pass, the webhook gets "resolved".
    let (s, _) = c.post(&report("node1", "a1", vec![resolved("a1", 2, 1010, "f1")])).await;
    assert_eq!(s, 200);
    wait_for("the alert to resolve in Alertmanager", 20, async || {
        let now = rigwatch_collector::format::rfc3339(rigwatch_collector::store::now());
        let still = am_alerts(&am.url).await.into_iter().any(|a| {
            a["labels"]["finding_id"] == "f1" && a["status"]["state"] == "active" && a["endsAt"].as_str().unwrap_or("") > now.as_str()
        });
        (!still).then_some(())
    })
    .await;
    let done = wait_for("the resolved webhook", 10, async || {
        received.lock().unwrap().iter().find(|m| m["status"] == "resolved").cloned()
    })
    .await;
    assert_eq!(done["finding_id"], "f1");
    assert_eq!(done["state"], "resolved");
    assert_eq!(
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["status"] == "firing" && m["finding_id"] == "f1")
            .count(),
        1,
        "one message per transition"
    );

    // A host whose agent goes quiet raises "agent silent".
    let (s, _) = c.post(&report("quiet", "aq", vec![heartbeat("aq", 1, 1000)])).await;
    assert_eq!(s, 200);
    let silent = wait_for("the agent-silent alert", 20, async || {
        am_alerts(&am.url)
            .await
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "RigwatchAgentSilent" && a["labels"]["host"] == "quiet")
    })
    .await;
    assert_eq!(silent["labels"]["severity"], "warning");
    let m = wait_for("the agent-silent webhook", 10, async || {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["alertname"] == "RigwatchAgentSilent" && m["host"] == "quiet")
            .cloned()
    })
    .await;
    assert_eq!(m["status"], "firing");
    assert!(m["text"].as_str().unwrap().contains("quiet"));
    assert_eq!(silent["status"]["state"], "active");
}
