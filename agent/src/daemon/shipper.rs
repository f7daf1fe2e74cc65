//! Ships the spool to the collector: batches of unacknowledged events as a
//! versioned [`Report`], `POST /api/v1/reports` with a bearer token over TLS
//! (a configurable CA), acknowledged in the spool only on a 2xx answer, and
//! retried with exponential backoff (1 s doubling to 60 s) otherwise.

use super::config::CollectorConfig;
use super::events::{BatchRejected, ComponentError, DeliveryFailed, InternalEvent, SpoolWriteError};
use super::Shared;
use rigwatch_signatures::report::{AgentInfo, Report, REPORT_VERSION};
use std::sync::Arc;
use std::time::Duration;

fn client(cfg: &CollectorConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("rigwatch/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("collector CA {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

/// Runs forever.
pub async fn run(cfg: CollectorConfig, shared: Arc<Shared>, host: String) {
    let http = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            ComponentError {
                component: "shipper",
                error: e.to_string(),
            }
            .emit(&shared.metrics);
            return;
        }
    };
    let url = format!("{}/api/v1/reports", cfg.url.trim_end_matches('/'));
    let spool = shared.spool.as_ref().expect("the shipper runs only with a spool");
    let mut backoff = Duration::from_secs(1);
    let mut batch_size = cfg.batch_size.max(1);
    loop {
        let (batch, agent_id) = {
            let s = spool.lock().unwrap_or_else(|e| e.into_inner());
            (s.pending(batch_size), s.agent_id().to_string())
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                SpoolWriteError(e.to_string()).emit(&shared.metrics);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), shared.wake.notified()).await;
            continue;
        }
        let first = batch[0].0;
        let last = batch[batch.len() - 1].0;
        let report = Report {
            version: REPORT_VERSION,
            batch_id: format!("{agent_id}:{first}"),
            agent: AgentInfo {
                agent_id,
                host: host.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                signatures_version: shared.signatures_version.lock().map(|v| v.clone()).unwrap_or_default(),
                sensors: shared.sensors.lock().map(|v| v.clone()).unwrap_or_default(),
            },
            sent_at: crate::scan::unix_now(),
            events: batch.into_iter().map(|(_, e)| e).collect(),
        };
        let n = report.events.len() as u64;
        let res = http.post(&url).bearer_auth(&cfg.token).json(&report).send().await;
        match res {
            Ok(r) if r.status().is_success() => {
                let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.ack(last) {
                    SpoolWriteError(e.to_string()).emit(&shared.metrics);
                }
                shared.metrics.shipper_delivered.inc_by(n);
                shared.metrics.shipper_queue.set(s.queued() as i64);
                shared.metrics.spool_bytes.set(s.bytes() as i64);
                backoff = Duration::from_secs(1);
            }
            // too large: send smaller batches from now on
            Ok(r) if r.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE && batch_size > 1 => {
                batch_size = (batch_size / 2).max(1);
                DeliveryFailed {
                    url: &url,
                    error: format!("batch too large; batches of {batch_size} from now on"),
                    retry_in_s: 0,
                }
                .emit(&shared.metrics);
            }
            // the collector will never take this batch (malformed for it): keep a
            // copy beside the spool, move on, so one bad batch cannot block the rest
            Ok(r) if matches!(r.status().as_u16(), 400 | 413 | 422) => {
                let status = r.status();
                let why = r.text().await.unwrap_or_default();
                let path = cfg.spool_dir.join(format!("rejected-{first}-{last}.json"));
                let _ = super::spool::create_private(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &serde_json::to_vec(&report).unwrap_or_default()));
                BatchRejected {
                    status: status.as_u16(),
                    reason: &why,
                    kept_in: &path,
                }
                .emit(&shared.metrics);
                let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.ack(last) {
                    SpoolWriteError(e.to_string()).emit(&shared.metrics);
                }
                shared.metrics.shipper_queue.set(s.queued() as i64);
            }
            other => {
                let why = match other {
                    Ok(r) => format!("collector answered {}", r.status()),
                    Err(e) => format!("{e}"),
                };
                DeliveryFailed {
                    url: &url,
                    error: why,
                    retry_in_s: backoff.as_secs(),
                }
                .emit(&shared.metrics);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
