//! The SIEM webhook (issue 17): each finding transition POSTed as one event
//! in the configured format; a receiver that fails is retried, then
//! counted; ingest never waits for it.

mod common;

use common::*;
use rigwatch_signatures::siem::Format;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A receiver on loopback answering `status` to every POST, recording the bodies.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/siem",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/siem", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counter(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_is_posted_as_one_ecs_event() {
    let (url, got) = receiver(200).await;
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |s| {
        s.siem_webhook = Some(url);
        s.siem_format = Format::Ecs;
    })
    .await;
    let f = finding("n1", "f1", "xmrig", "p.example.com", WALLET);
    c.post(&report("n1", "a1", vec![opened("a1", 1, 1000, f.clone())])).await;
    // Same content again: no event.
    c.post(&report("n1", "a1", vec![updated("a1", 2, 1001, f)])).await;
    c.post(&report("n1", "a1", vec![resolved("a1", 3, 1002, "f1")])).await;
    wait_until("two events at the SIEM", 10, || got.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    let actions: Vec<&str> = got.iter().map(|v| v["event"]["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["finding_opened", "finding_resolved"], "{got:#?}");
    assert_eq!(got[0]["event"]["id"], "f1");
    assert_eq!(got[0]["ecs"]["version"], rigwatch_signatures::siem::ECS_VERSION);
    assert_eq!(got[0]["host"]["hostname"], "n1", "{:#}", got[0]);
    let (_, m) = c.text("/metrics").await;
    assert_eq!(
        counter(&m, "rigwatch_collector_alert_deliveries_total{receiver=\"siem\",result=\"ok\"}"),
        2,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_siem_is_retried_then_counted_and_never_blocks_ingest() {
    let (url, got) = receiver(503).await;
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |s| s.siem_webhook = Some(url)).await;
    let t = Instant::now();
    let (s, _) = c
        .post(&report(
            "n1",
            "a1",
            vec![opened("a1", 1, 1000, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
        ))
        .await;
    assert_eq!(s, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "ingest did not wait for the SIEM");
    wait_until("three tries", 10, || got.lock().unwrap().len() >= 3).await;
    assert_eq!(got.lock().unwrap()[0]["class_uid"], 2004, "OCSF by default");
    let mut errors = 0;
    for _ in 0..50 {
        let (_, m) = c.text("/metrics").await;
        errors = counter(&m, "rigwatch_collector_alert_deliveries_total{receiver=\"siem\",result=\"error\"}");
        if errors > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(errors, 1);
    assert_eq!(got.lock().unwrap().len(), 3, "3 tries, no more");
}
