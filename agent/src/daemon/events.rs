//! Internal events: one struct per thing worth logging and counting.
//!
//! A call site builds the event and calls [`InternalEvent::emit`]; `emit`
//! writes the log line (through `tracing`, as a JSON line on stderr) and
//! updates the event's metric, so a log line and its counter cannot drift
//! apart (vector's `src/internal_events/` is the model).
//!
//! Naming: events are `<Noun><Verb>[Error]`; the `event` field of the log
//! line is the same name in snake_case; counters are
//! `rigwatch_<noun>_<verb>_total`. Label values come from small fixed sets
//! (severity, rule names from the signature set, sensor names).

use super::metrics::{label, main_rule, Metrics};
use rigwatch_signatures::Finding;
use tracing::{error, info, warn};

/// An operational event of the agent.
pub trait InternalEvent {
    /// Logs the event and updates its metric.
    fn emit(self, m: &Metrics);
}

/// A finding opened.
pub struct FindingOpened<'a>(pub &'a Finding);

impl InternalEvent for FindingOpened<'_> {
    fn emit(self, m: &Metrics) {
        let f = self.0;
        m.findings_opened
            .with_label_values(&[&label(&main_rule(f)), f.severity.as_str()])
            .inc();
        info!(event = "finding_opened", finding = %serde_json::to_string(f).unwrap_or_default());
    }
}

/// A finding's severity or evidence changed.
pub struct FindingUpdated<'a>(pub &'a Finding);

impl InternalEvent for FindingUpdated<'_> {
    fn emit(self, m: &Metrics) {
        m.findings_updated.inc();
        info!(event = "finding_updated", finding = %serde_json::to_string(self.0).unwrap_or_default());
    }
}

/// A finding ended.
pub struct FindingResolved<'a> {
    /// Its id.
    pub id: &'a str,
    /// Why it ended.
    pub reason: &'a str,
}

impl InternalEvent for FindingResolved<'_> {
    fn emit(self, m: &Metrics) {
        m.findings_resolved.inc();
        info!(event = "finding_resolved", id = self.id, reason = self.reason);
    }
}

/// A sensor cannot work on this host (said once per sensor; its
/// `rigwatch_sensor_up` says it every pass).
pub struct SensorUnavailable<'a> {
    /// The sensor.
    pub sensor: &'a str,
    /// Why.
    pub why: &'a str,
}

impl InternalEvent for SensorUnavailable<'_> {
    fn emit(self, _m: &Metrics) {
        warn!(event = "sensor_unavailable", sensor = self.sensor, why = self.why);
    }
}

/// A new signature set took effect.
pub struct SignaturesReloaded<'a> {
    /// Its version.
    pub version: &'a str,
    /// Its rule count.
    pub rules: usize,
}

impl InternalEvent for SignaturesReloaded<'_> {
    fn emit(self, m: &Metrics) {
        m.signatures_info.reset();
        m.signatures_info.with_label_values(&[self.version]).set(1);
        m.signatures_rules.set(self.rules as i64);
        m.signatures_reload_ok.set(1);
        info!(event = "signatures_reloaded", version = self.version, rules = self.rules);
    }
}

/// A signature file did not load; the set in force stays.
pub struct SignatureLoadError<'a> {
    /// File, line and what is wrong.
    pub error: &'a str,
    /// The version that stays in force.
    pub kept_version: &'a str,
}

impl InternalEvent for SignatureLoadError<'_> {
    fn emit(self, m: &Metrics) {
        m.signature_load_errors.inc();
        m.signatures_reload_ok.set(0);
        error!(event = "signature_load_error", error = self.error, kept_version = self.kept_version);
    }
}

/// An event could not be written to the spool (a full disk, say).
pub struct SpoolWriteError(pub String);

impl InternalEvent for SpoolWriteError {
    fn emit(self, m: &Metrics) {
        m.spool_write_errors.inc();
        error!(event = "spool_write_error", error = %self.0);
    }
}

/// The active-finding state could not be saved beside the spool.
pub struct StateSaveError(pub String);

impl InternalEvent for StateSaveError {
    fn emit(self, _m: &Metrics) {
        error!(event = "state_save_error", error = %self.0);
    }
}

/// A response action was taken (or logged in dry run).
pub struct ResponseTaken<'a> {
    /// The finding acted on.
    pub finding: &'a str,
    /// What the responder did.
    pub outcome: &'a super::response::Outcome,
}

impl InternalEvent for ResponseTaken<'_> {
    fn emit(self, m: &Metrics) {
        let o = self.outcome;
        m.response_actions
            .with_label_values(&[o.action, if o.dry_run { "true" } else { "false" }])
            .inc();
        warn!(event = "response_taken", finding = self.finding, action = o.action, pid = o.pid, dry_run = o.dry_run,
            quarantined = ?o.quarantined, skipped = ?o.skipped, quarantine_skipped = ?o.quarantine_skipped);
    }
}

/// The /metrics endpoint listens.
pub struct MetricsListening(pub String);

impl InternalEvent for MetricsListening {
    fn emit(self, _m: &Metrics) {
        info!(event = "metrics_listening", url = %self.0);
    }
}

/// Something failed that has no counter of its own (the HTTP server, the
/// signature directory watcher, the shipper's set-up).
pub struct ComponentError<'a> {
    /// Which part (`http`, `watch`, `shipper`).
    pub component: &'a str,
    /// What went wrong.
    pub error: String,
}

impl InternalEvent for ComponentError<'_> {
    fn emit(self, _m: &Metrics) {
        error!(event = "component_error", component = self.component, error = %self.error);
    }
}

/// A batch did not reach the collector; it is retried.
pub struct DeliveryFailed<'a> {
    /// The collector's URL.
    pub url: &'a str,
    /// Why.
    pub error: String,
    /// Seconds until the retry.
    pub retry_in_s: u64,
}

impl InternalEvent for DeliveryFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.shipper_failures.inc();
        warn!(event = "delivery_failed", url = self.url, error = %self.error, retry_in_s = self.retry_in_s);
    }
}

/// The collector will never take a batch (400/413/422): it is kept beside
/// the spool and skipped.
pub struct BatchRejected<'a> {
    /// The collector's status code.
    pub status: u16,
    /// What the collector said.
    pub reason: &'a str,
    /// Where the batch is kept.
    pub kept_in: &'a std::path::Path,
}

impl InternalEvent for BatchRejected<'_> {
    fn emit(self, m: &Metrics) {
        m.shipper_failures.inc();
        m.shipper_rejected.inc();
        error!(event = "batch_rejected", status = self.status, reason = self.reason, kept_in = %self.kept_in.display());
    }
}

/// The collector refused the token (401 or 403): the events stay in the
/// spool and the shipper backs off. Counted every time; logged only when
/// `log` (the first refusal in a row), so a revoked token is one error line,
/// not one per retry.
pub struct DeliveryUnauthorized<'a> {
    /// The collector's URL.
    pub url: &'a str,
    /// The collector's status code.
    pub status: u16,
    /// What the collector said.
    pub reason: &'a str,
    /// Seconds until the retry.
    pub retry_in_s: u64,
    /// Write the log line.
    pub log: bool,
}

impl InternalEvent for DeliveryUnauthorized<'_> {
    fn emit(self, m: &Metrics) {
        m.shipper_failures.inc();
        m.shipper_auth_refused.inc();
        if self.log {
            error!(
                event = "delivery_unauthorized",
                url = self.url,
                status = self.status,
                reason = self.reason,
                retry_in_s = self.retry_in_s,
                "the collector refuses this agent's token; events are kept in the spool until it is accepted"
            );
        }
    }
}

/// The collector asked the shipper to wait (429 with Retry-After); nothing
/// is dropped or acknowledged.
pub struct DeliveryRateLimited<'a> {
    /// The collector's URL.
    pub url: &'a str,
    /// Seconds until the retry (the collector's Retry-After, bounded).
    pub retry_in_s: u64,
}

impl InternalEvent for DeliveryRateLimited<'_> {
    fn emit(self, m: &Metrics) {
        m.shipper_rate_limited.inc();
        info!(event = "delivery_rate_limited", url = self.url, retry_in_s = self.retry_in_s);
    }
}

/// The agent exchanged the fleet enrolment token for a token of its own,
/// bound to its host (the token itself is never logged).
pub struct HostEnrolled<'a> {
    /// The host name it is bound to.
    pub host: &'a str,
    /// The token's name on the collector.
    pub name: &'a str,
    /// Where it is kept (mode 0600).
    pub saved_in: &'a std::path::Path,
}

impl InternalEvent for HostEnrolled<'_> {
    fn emit(self, _m: &Metrics) {
        info!(event = "host_enrolled", host = self.host, name = self.name, saved_in = %self.saved_in.display());
    }
}

/// Enrolment failed; it is retried. Logged only when `log` (the first
/// failure of a kind in a row).
pub struct EnrolFailed<'a> {
    /// The collector's enrolment URL.
    pub url: &'a str,
    /// Why.
    pub error: String,
    /// Seconds until the retry.
    pub retry_in_s: u64,
    /// The collector refused the enrolment token (401, 403).
    pub auth: bool,
    /// Write the log line.
    pub log: bool,
}

impl InternalEvent for EnrolFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.shipper_failures.inc();
        if self.auth {
            m.shipper_auth_refused.inc();
        }
        if self.log {
            error!(event = "enrol_failed", url = self.url, error = %self.error, retry_in_s = self.retry_in_s);
        }
    }
}

/// Sets up the JSON log lines on stderr (`RIGWATCH_LOG` filters, default `info`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RIGWATCH_LOG").unwrap_or_else(|_| "info".into()))
        .try_init();
}

/// A fleet signature set from the collector was taken (it loads with the
/// next reload).
pub struct FleetSetReceived<'a> {
    /// The collector's URL.
    pub url: &'a str,
    /// Its version.
    pub version: u64,
    /// Its files.
    pub files: usize,
    /// Whether its signature was checked against `fleet_public_key`.
    pub verified: bool,
}

impl InternalEvent for FleetSetReceived<'_> {
    fn emit(self, m: &Metrics) {
        m.fleet_fetches.with_label_values(&["updated"]).inc();
        info!(
            event = "fleet_set_received",
            url = self.url,
            version = self.version,
            files = self.files,
            verified = self.verified
        );
    }
}

/// A fleet signature set was refused (unsigned, wrongly signed, older than
/// the one held, malformed) or could not be fetched; the set in force stays.
pub struct FleetSetRefused<'a> {
    /// The collector's URL.
    pub url: &'a str,
    /// Why.
    pub why: &'a str,
    /// `refused` (the set) or `error` (the fetch).
    pub outcome: &'static str,
    /// Write the log line (once per reason in a row).
    pub log: bool,
}

impl InternalEvent for FleetSetRefused<'_> {
    fn emit(self, m: &Metrics) {
        m.fleet_fetches.with_label_values(&[self.outcome]).inc();
        if self.log {
            warn!(
                event = "fleet_set_refused",
                url = self.url,
                outcome = self.outcome,
                why = self.why,
                "the fleet signature set in force stays"
            );
        }
    }
}
