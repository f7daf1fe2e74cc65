//! Alerting: Alertmanager's v2 API and a generic JSON webhook.
//!
//! Every `alert_resend` seconds (and at once when a report changes a
//! finding) the loop posts every active finding to Alertmanager with an
//! `endsAt` a few intervals ahead, so an alert stays firing while re-sent
//! and expires by itself if the collector dies; findings that ended
//! recently are posted with `endsAt` = when they ended, which resolves
//! them. The state comes from the database, so replicas may all send:
//! Alertmanager deduplicates by labels. Silent agents alert too.
//!
//! A host whose configuration departs from the fleet's `[policy]`
//! ([`crate::hostconfig::drift`]) fires `RigwatchAgentPolicyDrift`, one alert
//! per host and policy rule, for as long as it does.
//!
//! The webhook gets one message per transition (firing, resolved) that this
//! replica observes, with a Slack-compatible `text`: findings, silent
//! agents, policy drift, and each configuration change that alerts
//! (reported after this replica started).

use crate::app::App;
use crate::format::{pct, rfc3339};
use crate::hostconfig::{ConfigChange, ConfigRecord, Drift};
use crate::store::{now, FindingFilter, FindingView, HostView};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The alertname of a miner finding.
pub const ALERT_FINDING: &str = "RigwatchMinerFinding";
/// The alertname of a host whose agent stopped reporting.
pub const ALERT_SILENT: &str = "RigwatchAgentSilent";
/// The alertname of a change to an agent's allowlist, signature overrides,
/// sensors or collector ([`crate::hostconfig`]).
pub const ALERT_CONFIG: &str = "RigwatchAgentConfigChanged";
/// The alertname of a host whose configuration departs from the fleet policy.
pub const ALERT_DRIFT: &str = "RigwatchAgentPolicyDrift";

fn drift_alert(app: &App, d: &Drift, ends_at: u64) -> Value {
    json!({
        "labels": { "alertname": ALERT_DRIFT, "host": d.host, "policy": d.policy, "severity": "warning" },
        "annotations": {
            "summary": format!("rigwatch agent on {} departs from the fleet policy: {}", d.host, d.policy),
            "description": d.detail,
        },
        "startsAt": rfc3339(d.since),
        "endsAt": rfc3339(ends_at),
        "generatorURL": format!("{}/hosts/{}", app.settings.external_url, pct(&d.host)),
    })
}

fn drift_message(app: &App, d: &Drift, status: &str) -> Value {
    let text = match status {
        "firing" => format!(
            "[firing] rigwatch agent on {} departs from the fleet policy ({}): {} {}/hosts/{}",
            slack_escape(&d.host),
            d.policy,
            slack_escape(&d.detail),
            app.settings.external_url,
            pct(&d.host)
        ),
        _ => format!(
            "[resolved] rigwatch agent on {} holds to the fleet policy again ({})",
            slack_escape(&d.host),
            d.policy
        ),
    };
    json!({ "text": text, "status": status, "alertname": ALERT_DRIFT, "host": d.host, "policy": d.policy, "detail": d.detail })
}

/// The webhook message for one configuration change row that alerts.
fn config_message(app: &App, r: &ConfigRecord) -> Value {
    let changes: Vec<&ConfigChange> = r.changes.iter().filter(|c| c.alert).collect();
    let words: Vec<String> = changes
        .iter()
        .map(|c| format!("{}: {} → {}", c.what, slack_escape(&c.before), slack_escape(&c.after)))
        .collect();
    json!({
        "text": format!(
            "[firing] rigwatch agent configuration on {} changed: {} {}/hosts/{}",
            slack_escape(&r.host),
            words.join("; "),
            app.settings.external_url,
            pct(&r.host)
        ),
        "status": "firing",
        "alertname": ALERT_CONFIG,
        "host": r.host,
        "changes": changes,
    })
}

/// One alert per host and kind of change (the latest of them), firing for
/// [`crate::hostconfig::ALERT_SECONDS`] after the change was reported.
fn config_alerts(app: &App, rows: &[ConfigRecord]) -> Vec<Value> {
    let mut latest: BTreeMap<(&str, &str), (u64, &ConfigChange)> = BTreeMap::new();
    for r in rows {
        for c in r.changes.iter().filter(|c| c.alert) {
            latest.insert((r.host.as_str(), c.what.as_str()), (r.at, c));
        }
    }
    latest
        .into_iter()
        .map(|((host, what), (at, c))| {
            json!({
                "labels": { "alertname": ALERT_CONFIG, "host": host, "change": what, "severity": "warning" },
                "annotations": {
                    "summary": format!("rigwatch agent configuration on {host} changed: {what}"),
                    "description": format!("{what}: before: {}; after: {}", c.before, c.after),
                    "before": c.before,
                    "after": c.after,
                },
                "startsAt": rfc3339(at),
                "endsAt": rfc3339(at + crate::hostconfig::ALERT_SECONDS),
                "generatorURL": format!("{}/hosts/{}", app.settings.external_url, pct(host)),
            })
        })
        .collect()
}

fn finding_alert(app: &App, f: &FindingView, ends_at: u64) -> Value {
    json!({
        "labels": {
            "alertname": ALERT_FINDING,
            "host": f.host,
            "severity": f.severity,
            "rule": f.rule,
            "process": f.process,
            "pool": f.pool,
            "finding_id": f.id,
        },
        "annotations": {
            "summary": format!("{} miner finding on {}: {}", f.severity, f.host, subject_words(&f.process)),
            "description": format!("rule {}, pool {}, executable {}, state {}", f.rule, f.pool, f.exe, f.state),
        },
        "startsAt": rfc3339(f.first_seen.min(now())),
        "endsAt": rfc3339(ends_at),
        "generatorURL": format!("{}/findings/{}/{}", app.settings.external_url, pct(&f.host), pct(&f.id)),
    })
}

fn silent_alert(app: &App, h: &HostView, ends_at: u64) -> Value {
    let (host, last_seen, stopped) = (h.host.as_str(), h.last_seen, h.stopped.as_deref());
    let description = match stopped {
        Some(why) => format!(
            "the agent said it was stopping ({why}) at {}: someone stopped it (threshold {} s)",
            rfc3339(last_seen),
            app.settings.silent_after
        ),
        None => format!(
            "no report since {} (threshold {} s); a miner may have killed the agent",
            rfc3339(last_seen),
            app.settings.silent_after
        ),
    };
    // silent right after a configuration change: the change is named, and it is critical
    let (description, severity, after_change) = match &h.silent_after_change {
        Some(words) => (format!("{description}; {words}"), "critical", "true"),
        None => (description, "warning", "false"),
    };
    json!({
        "labels": { "alertname": ALERT_SILENT, "host": host, "severity": severity, "after_config_change": after_change },
        "annotations": {
            "summary": format!("rigwatch agent on {host} stopped reporting"),
            "description": description,
        },
        "startsAt": rfc3339(last_seen + app.settings.silent_after),
        "endsAt": rfc3339(ends_at),
        "generatorURL": format!("{}/hosts/{}", app.settings.external_url, pct(host)),
    })
}

/// "process NAME", or the subject as it is for flow and host findings
/// ("flow 1.2.3.4:3333", "persistence /etc/cron.d/x").
fn subject_words(label: &str) -> String {
    const NOT_PROCESSES: &[&str] = &["flow ", "persistence ", "preload ", "kernel_module ", "cgroup "];
    if NOT_PROCESSES.iter().any(|p| label.starts_with(p)) {
        label.to_string()
    } else {
        format!("process {label}")
    }
}

/// Escapes text for Slack's mrkdwn.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The webhook body for a finding transition.
pub fn webhook_body(app: &App, f: &FindingView, status: &str) -> Value {
    let url = format!("{}/findings/{}/{}", app.settings.external_url, pct(&f.host), pct(&f.id));
    let text = format!(
        "[{}] {} miner finding on {}: {} (rule {}, pool {}) {}",
        status,
        f.severity,
        slack_escape(&f.host),
        slack_escape(&subject_words(&f.process)),
        slack_escape(&f.rule),
        slack_escape(if f.pool.is_empty() { "-" } else { &f.pool }),
        url
    );
    json!({
        "text": text,
        "status": status,
        "host": f.host,
        "finding_id": f.id,
        "severity": f.severity,
        "process": f.process,
        "rule": f.rule,
        "pool": f.pool,
        "state": f.state,
        "url": url,
    })
}

/// The loop; runs until the process ends.
pub async fn run(app: Arc<App>) {
    if app.settings.alertmanager.is_none() && app.settings.webhook.is_none() {
        return;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut state = LoopState {
        started: now(),
        ..Default::default()
    };
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(app.settings.alert_resend)) => {}
                _ = app.alert_wakeup.notified() => {}
            }
        }
        first = false;
        if let Err(e) = tick(&app, &client, &mut state).await {
            tracing::warn!("alerting: {e}");
        }
    }
}

/// What the loop remembers between ticks: what it last saw firing, for the
/// webhook's transitions and to resolve at Alertmanager what ended.
#[derive(Default)]
struct LoopState {
    /// When this replica's loop started: configuration changes reported
    /// before are not sent to the webhook again.
    started: u64,
    firing: BTreeMap<(String, String), FindingView>,
    silent: BTreeMap<String, HostView>,
    /// Policy drift by (host, policy rule).
    drift: BTreeMap<(String, String), Drift>,
    /// Configuration rows sent to the webhook: (host, seq) → when stored.
    config_sent: BTreeMap<(String, u64), u64>,
}

async fn tick(app: &App, client: &reqwest::Client, st: &mut LoopState) -> anyhow::Result<()> {
    let LoopState {
        started,
        firing,
        silent,
        drift,
        config_sent,
    } = st;
    let t = now();
    let resend = app.settings.alert_resend;
    let active = app
        .store
        .findings(&FindingFilter {
            state: Some("active".into()),
            limit: Some(100_000),
            ..Default::default()
        })
        .await?;
    let ended = app.store.ended_since(t.saturating_sub((resend * 3).max(300))).await?;
    let hosts = app.store.hosts(t, app.settings.silent_after).await?;
    let config_rows = app
        .store
        .config_alerts(t.saturating_sub(crate::hostconfig::ALERT_SECONDS))
        .await
        .unwrap_or_default();
    let now_drift: BTreeMap<(String, String), Drift> = if app.settings.policy.checks_anything() {
        let latest = app.store.config_latest().await?;
        crate::hostconfig::drifts(&app.settings.policy, &latest)
            .into_iter()
            .map(|d| ((d.host.clone(), d.policy.clone()), d))
            .collect()
    } else {
        BTreeMap::new()
    };

    if let Some(am) = &app.settings.alertmanager {
        let mut alerts: Vec<Value> = Vec::new();
        for f in &active {
            alerts.push(finding_alert(app, f, t + resend * 4));
        }
        for f in &ended {
            alerts.push(finding_alert(app, f, f.state_changed_at.min(t)));
        }
        alerts.extend(config_alerts(app, &config_rows));
        for d in now_drift.values() {
            alerts.push(drift_alert(app, d, t + resend * 4));
        }
        for (k, d) in drift.iter() {
            if !now_drift.contains_key(k) {
                alerts.push(drift_alert(app, d, t));
            }
        }
        for h in &hosts {
            if h.silent {
                // the labels it went silent with, until it reports again
                alerts.push(silent_alert(app, silent.get(&h.host).unwrap_or(h), t + resend * 4));
            } else if let Some(was) = silent.get(&h.host) {
                alerts.push(silent_alert(app, was, t));
            }
        }
        if !alerts.is_empty() {
            let url = format!("{}/api/v2/alerts", am.trim_end_matches('/'));
            let result = match client.post(&url).json(&alerts).send().await {
                Ok(r) if r.status().is_success() => "ok",
                Ok(r) => {
                    tracing::warn!("alertmanager {url}: HTTP {}", r.status());
                    "error"
                }
                Err(e) => {
                    tracing::warn!("alertmanager {url}: {e}");
                    "error"
                }
            };
            app.metrics
                .alerts_sent
                .with_label_values(&["alertmanager", result])
                .inc_by(alerts.len() as u64);
        }
    }
    let now_silent = hosts
        .iter()
        .filter(|h| h.silent)
        .map(|h| (h.host.clone(), silent.get(&h.host).unwrap_or(h).clone()))
        .collect();
    let prev_silent = std::mem::replace(silent, now_silent);

    let now_firing: BTreeMap<(String, String), FindingView> = active.into_iter().map(|f| ((f.host.clone(), f.id.clone()), f)).collect();
    if let Some(hook) = &app.settings.webhook {
        let mut messages = Vec::new();
        for (k, f) in &now_firing {
            // New, or reopened while firing (an acknowledged finding whose
            // severity rose): a fresh alert.
            let fresh = match firing.get(k) {
                None => true,
                Some(old) => f.state == "open" && old.state_changed_at != f.state_changed_at,
            };
            if fresh {
                messages.push(webhook_body(app, f, "firing"));
            }
        }
        for (k, f) in firing.iter() {
            if !now_firing.contains_key(k) {
                let ended_view = ended.iter().find(|e| e.host == k.0 && e.id == k.1).unwrap_or(f);
                messages.push(webhook_body(app, ended_view, "resolved"));
            }
        }
        for (h, v) in silent.iter().filter(|(h, _)| !prev_silent.contains_key(*h)) {
            let after = v
                .silent_after_change
                .as_deref()
                .map(|w| format!(", {}", slack_escape(w)))
                .unwrap_or_default();
            messages.push(json!({
                "text": format!("[firing] rigwatch agent on {} stopped reporting{after} {}/hosts/{}", slack_escape(h), app.settings.external_url, pct(h)),
                "status": "firing", "alertname": ALERT_SILENT, "host": h,
            }));
        }
        for h in prev_silent.keys().filter(|h| !silent.contains_key(*h)) {
            messages.push(json!({
                "text": format!("[resolved] rigwatch agent on {} reports again", slack_escape(h)),
                "status": "resolved", "alertname": ALERT_SILENT, "host": h,
            }));
        }
        for (k, d) in &now_drift {
            if !drift.contains_key(k) {
                messages.push(drift_message(app, d, "firing"));
            }
        }
        for (k, d) in drift.iter() {
            if !now_drift.contains_key(k) {
                messages.push(drift_message(app, d, "resolved"));
            }
        }
        for r in &config_rows {
            let key = (r.host.clone(), r.seq);
            if r.at >= *started && !config_sent.contains_key(&key) {
                messages.push(config_message(app, r));
                config_sent.insert(key, r.at);
            }
        }
        // what config_alerts no longer returns cannot come back
        let horizon = t.saturating_sub(crate::hostconfig::ALERT_SECONDS);
        config_sent.retain(|_, at| *at >= horizon);
        for m in messages {
            let result = match client.post(hook).json(&m).send().await {
                Ok(r) if r.status().is_success() => "ok",
                _ => "error",
            };
            app.metrics.alerts_sent.with_label_values(&["webhook", result]).inc();
        }
    }
    *firing = now_firing;
    *drift = now_drift;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_right() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn pct_encodes_segments() {
        assert_eq!(pct("a b/<c>"), "a%20b%2F%3Cc%3E");
    }
}
