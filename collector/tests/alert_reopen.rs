//! A suppressed `suspicious` finding that the agent raises to `confirmed`
//! is reopened and alerted again: in a real Alertmanager (skipped, with a
//! message, when it is not installed) and on the webhook.

mod common;

use common::*;
use rigwatch_signatures::Severity;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_then_confirmed_is_reopened_and_alerted() {
    let Some(am) = Alertmanager::start() else { return };
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
    })
    .await;
    let am_alerts = async || -> Vec<Value> {
        reqwest::get(format!("{}/api/v2/alerts", am.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let firing_hooks = |sev: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["status"] == "firing" && m["finding_id"] == "f1" && m["severity"] == sev)
            .count()
    };

    let mut f = finding("node1", "f1", "python3", "pool.example.com", WALLET);
    f.severity = Severity::Suspicious;
    let (s, _) = c.post(&report("node1", "a1", vec![opened("a1", 1, 1000, f.clone())])).await;
    assert_eq!(s, 200);
    wait_for("the suspicious alert", 20, async || (firing_hooks("suspicious") == 1).then_some(())).await;
    assert!(c
        .app
        .store
        .set_state("node1", "f1", "suppressed", "a data science job", "alice")
        .await
        .unwrap());
    c.app.alert_wakeup.notify_one();
    wait_for("the resolved webhook after suppression", 20, async || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|m| m["status"] == "resolved" && m["finding_id"] == "f1")
            .then_some(())
    })
    .await;

    // The agent raises it to confirmed.
    f.severity = Severity::Confirmed;
    let (s, _) = c.post(&report("node1", "a1", vec![updated("a1", 2, 1010, f)])).await;
    assert_eq!(s, 200);
    let d = c.app.store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(d.view.state, "open");
    assert!(d.history.iter().any(|h| h.action == "reopened"), "{:?}", d.history);
    wait_for("a fresh confirmed webhook", 20, async || {
        (firing_hooks("confirmed") == 1).then_some(())
    })
    .await;
    let alert = wait_for("the confirmed alert in Alertmanager", 20, async || {
        am_alerts()
            .await
            .into_iter()
            .find(|a| a["labels"]["finding_id"] == "f1" && a["labels"]["severity"] == "confirmed" && a["status"]["state"] == "active")
    })
    .await;
    assert_eq!(alert["labels"]["host"], "node1");
}
