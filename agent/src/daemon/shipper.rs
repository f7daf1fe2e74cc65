//! Ships the spool to the collector: batches of unacknowledged events as a
//! versioned [`Report`], `POST /api/v1/reports` with a bearer token over TLS
//! (a configurable CA), acknowledged in the spool only on a 2xx answer, and
//! retried with exponential backoff (1 s doubling to 60 s) otherwise.
//!
//! A batch the collector will not take for its size or shape (400, 413,
//! 422) is split in halves until the event it chokes on is alone; that one
//! is sent again in ever smaller forms ([`TRIM_BYTES`]: bounded evidence,
//! shortened strings, a `trimmed` evidence item saying so), so every finding
//! reaches the collector in some form. Only when even the smallest form is
//! refused is the batch kept beside the spool and counted
//! (`rigwatch_shipper_rejected_batches_total`). Every step is bounded: at
//! most log2(batch size) splits and [`TRIM_BYTES`]`.len()` forms per event.

use super::config::CollectorConfig;
use super::events::{BatchRejected, ComponentError, DeliveryFailed, InternalEvent, SpoolWriteError};
use super::Shared;
use rigwatch_signatures::model::MAX_FINDING_BYTES;
use rigwatch_signatures::report::{AgentInfo, Event, EventKind, Report, REPORT_VERSION};
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

/// The sizes a finding is cut down to, one after the other, when the
/// collector refuses the event alone; every batch is sent with findings
/// within the first (spool lines from an older agent may be larger).
pub const TRIM_BYTES: [usize; 4] = [MAX_FINDING_BYTES, 16 * 1024, 4 * 1024, 1024];

/// Longest reason string of a resolved finding in its smallest form.
const MAX_REASON_BYTES: usize = 256;

/// An event in the form the collector gets at trim level `level` (an index
/// into [`TRIM_BYTES`]): findings bounded, long reasons cut.
pub fn trimmed(mut e: Event, level: usize) -> Event {
    let max = TRIM_BYTES[level.min(TRIM_BYTES.len() - 1)];
    match &mut e.kind {
        EventKind::FindingOpened { finding } | EventKind::FindingUpdated { finding } => {
            finding.bound(max);
        }
        EventKind::FindingResolved { reason, .. } if level > 0 && reason.len() > MAX_REASON_BYTES => {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        _ => {}
    }
    e
}

/// What to send next after a refusal: a narrower batch over the refused
/// range, then a smaller form of a lone event.
#[derive(Debug, Default, PartialEq)]
pub struct Narrowing {
    /// Batches hold at most this many events up to sequence `until`.
    size: Option<(u64, usize)>,
    /// The lone event `seq` is sent at this trim level.
    trim: Option<(u64, usize)>,
}

/// What to do with a batch the collector refused for its size or shape.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Send again, narrower or smaller.
    Retry,
    /// Even the smallest form of a lone event is refused: keep it aside.
    GiveUp,
}

impl Narrowing {
    /// How many of `pending` (first sequence `first`) to send, and at which trim level.
    pub fn plan(&mut self, first: u64, max: usize) -> (usize, usize) {
        let n = match self.size {
            Some((until, n)) if first <= until => n.min(max),
            _ => {
                self.size = None;
                max
            }
        };
        let level = match self.trim {
            Some((seq, level)) if seq == first && n == 1 => level,
            _ => {
                self.trim = None;
                0
            }
        };
        (n, level)
    }

    /// The collector refused `len` events `first..=last` sent at trim `level`.
    pub fn refused(&mut self, first: u64, last: u64, len: usize, level: usize) -> Refused {
        if len > 1 {
            self.size = Some((last, len / 2));
            return Refused::Retry;
        }
        if level + 1 < TRIM_BYTES.len() {
            self.trim = Some((first, level + 1));
            return Refused::Retry;
        }
        self.trim = None;
        Refused::GiveUp
    }
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
    let batch_size = cfg.batch_size.max(1);
    let mut narrow = Narrowing::default();
    loop {
        let (batch, agent_id) = {
            let s = spool.lock().unwrap_or_else(|e| e.into_inner());
            (s.pending(batch_size), s.agent_id().to_string())
        };
        let mut batch = match batch {
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
        let (n, level) = narrow.plan(first, batch.len());
        batch.truncate(n);
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
            events: batch.into_iter().map(|(_, e)| trimmed(e, level)).collect(),
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
            // too large or malformed for the collector: narrower batches over
            // this range, then smaller forms of the event it chokes on
            Ok(r) if matches!(r.status().as_u16(), 400 | 413 | 422) => {
                let status = r.status();
                let why = r.text().await.unwrap_or_default();
                if narrow.refused(first, last, report.events.len(), level) == Refused::Retry {
                    DeliveryFailed {
                        url: &url,
                        error: format!(
                            "collector refused {n} events ({status}: {}); sending {}",
                            why.trim(),
                            if n > 1 { "smaller batches" } else { "a trimmed form" }
                        ),
                        retry_in_s: 0,
                    }
                    .emit(&shared.metrics);
                    continue;
                }
                // not even the smallest form: keep a copy beside the spool,
                // move on, so one bad event cannot block the rest
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_split_down_to_one_then_trim_then_give_up() {
        let mut n = Narrowing::default();
        // 8 events 1..=8, the collector chokes on event 3
        let bad = 3;
        let mut sent = Vec::new();
        let mut given_up = Vec::new();
        let mut next = 1u64;
        for _ in 0..100 {
            if next > 8 {
                break;
            }
            let (k, level) = n.plan(next, (9 - next) as usize);
            let last = next + k as u64 - 1;
            sent.push((next, last, level));
            let refused = (next..=last).contains(&bad) && (k > 1 || level < 3);
            if refused {
                if n.refused(next, last, k, level) == Refused::GiveUp {
                    given_up.push(next);
                    next = last + 1;
                }
            } else {
                next = last + 1;
            }
        }
        assert!(next > 8, "never loops forever: {sent:?}");
        assert!(given_up.is_empty(), "the smallest form went through: {sent:?}");
        assert_eq!(
            sent,
            vec![
                (1, 8, 0), // refused
                (1, 4, 0), // refused
                (1, 2, 0), // delivered
                (3, 4, 0), // refused
                (3, 3, 0), // refused alone: trimmed forms follow
                (3, 3, 1),
                (3, 3, 2),
                (3, 3, 3), // delivered
                (4, 4, 0), // the narrowed range ends at 4
                (5, 8, 0), // full batches again
            ]
        );
        // a lone event refused at every level is given up after the last one
        let mut n = Narrowing::default();
        let mut tries = 0;
        loop {
            let (k, level) = n.plan(5, 1);
            tries += 1;
            if n.refused(5, 5, k, level) == Refused::GiveUp {
                break;
            }
            assert!(tries < 10);
        }
        assert_eq!(tries, TRIM_BYTES.len());
        assert_eq!(n.plan(6, 10), (10, 0), "the next event starts afresh");
    }

    #[test]
    fn trimmed_forms_shrink_and_say_so() {
        use rigwatch_signatures::{Evidence, EvidenceKind, Finding, ProcessInfo, Weight};
        let ev = Evidence::heuristic(
            EvidenceKind::MinerConfig {
                path: "/c.json".into(),
                pools: (0..16).map(|i| format!("pool{i}.example:3333/{}", "x".repeat(200))).collect(),
                wallets: vec![],
                keys: vec!["donate-level".into()],
            },
            Weight::Likely,
        );
        let process = ProcessInfo {
            cmdline: "xmrig ".repeat(2000),
            ..Default::default()
        };
        let f = Finding::assess("h", process, vec![ev; 8], 1).unwrap();
        let e = Event {
            event_id: "a:1".into(),
            at: 1,
            kind: EventKind::FindingOpened { finding: f },
        };
        let size = |e: &Event| serde_json::to_vec(e).unwrap().len();
        let mut prev = size(&e);
        for level in 1..TRIM_BYTES.len() {
            let t = trimmed(e.clone(), level);
            let n = size(&t);
            assert!(n < prev, "level {level}: {n} >= {prev}");
            prev = n;
            let EventKind::FindingOpened { finding } = &t.kind else { panic!() };
            assert_eq!(finding.evidence.last().unwrap().kind(), "trimmed");
            assert_eq!(finding.evidence[0].kind(), "miner_config");
        }
        assert!(prev <= 1024 + 200, "the smallest form: {prev} bytes");
    }
}
