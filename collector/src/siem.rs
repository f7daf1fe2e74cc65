//! Findings out to SIEMs: a webhook that gets every finding transition as
//! it is stored, and the export endpoint a SIEM pulls with a cursor.
//!
//! Both speak the formats the agent writes (OCSF 1.5.0 Detection Finding,
//! ECS 8.11), built by the one mapping in
//! [`rigwatch_signatures::siem`]; nothing here maps a field.
//!
//! Each transition (a finding opened, updated with a new severity or new
//! evidence, resolved) is one row of the `finding_events` table, written in
//! the same transaction as the finding, with the finding as it stood then
//! and an id from a counter in the database: the export cursor. The webhook
//! is best effort (a bounded queue beside ingest; a full queue drops and
//! counts); the export is the reliable path: a SIEM that keeps its last
//! cursor gets every event exactly once, across collector restarts and
//! replicas, as long as it pulls within `event_retention_days`.

use crate::app::App;
use crate::store::FindingEvent;
use rigwatch_signatures::siem::{event, Format};
use rigwatch_signatures::Finding;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events waiting for the SIEM webhook at most; more are dropped (and counted).
pub const QUEUE: usize = 2048;
/// Export events per request unless `limit` says otherwise.
pub const EXPORT_DEFAULT_LIMIT: u64 = 1000;
/// Export events per request at most.
pub const EXPORT_MAX_LIMIT: u64 = 10_000;
/// An export response stops growing past this many bytes (at least one
/// event is always sent); the cursor header says where it stopped.
pub const EXPORT_MAX_BYTES: usize = 16 << 20;

/// The product version events name.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A stored finding event in `format`; `None` when its stored finding does
/// not parse (never written by this collector; logged).
pub fn render(format: Format, e: &FindingEvent) -> Option<Value> {
    match serde_json::from_str::<Finding>(&e.finding) {
        Ok(f) => Some(event(format, &f, e.siem_activity(), e.at.saturating_mul(1000), VERSION)),
        Err(err) => {
            tracing::warn!(id = e.id, host = %e.host.escape_debug(), "finding event does not parse: {err}");
            None
        }
    }
}

/// The queue between ingest and the SIEM webhook sender.
pub struct Queue {
    tx: tokio::sync::mpsc::Sender<FindingEvent>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<FindingEvent>>>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

/// Hands a report's finding events to the webhook sender without waiting;
/// nothing when no SIEM webhook is set. A full queue drops (counted).
pub fn enqueue(app: &App, events: Vec<FindingEvent>) {
    if app.settings.siem_webhook.is_none() {
        return;
    }
    for e in events {
        if app.siem.tx.try_send(e).is_err() {
            app.metrics.alerts_sent.with_label_values(&["siem", "dropped"]).inc();
        }
    }
}

/// The webhook sender; runs until the process ends (returns at once when
/// no SIEM webhook is set).
pub async fn run(app: Arc<App>) {
    let Some(url) = app.settings.siem_webhook.clone() else { return };
    let Some(mut rx) = app.siem.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    while let Some(e) = rx.recv().await {
        let Some(body) = render(app.settings.siem_format, &e) else {
            app.metrics.alerts_sent.with_label_values(&["siem", "error"]).inc();
            continue;
        };
        let result = send(&client, &url, &body).await;
        app.metrics.alerts_sent.with_label_values(&["siem", result]).inc();
    }
}

/// One POST, tried up to 3 times on errors worth retrying: "ok" or "error".
async fn send(client: &reqwest::Client, url: &str, body: &Value) -> &'static str {
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(attempt)).await;
        }
        match client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return "ok",
            Ok(r) => {
                let s = r.status();
                tracing::warn!("siem webhook {url}: HTTP {s}");
                if !(s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429) {
                    return "error";
                }
            }
            Err(e) => tracing::warn!("siem webhook {url}: {e}"),
        }
    }
    "error"
}
