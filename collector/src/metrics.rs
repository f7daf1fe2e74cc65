//! `/metrics`: every metric name in one place. Fleet gauges are read from
//! the database at scrape time (so every replica reports the same fleet);
//! counters are this replica's.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The collector's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reports by outcome: stored, rejected_auth, rejected_host (another
    /// host's token), rejected_rate (429), rejected_invalid, rejected_too_large, error.
    pub reports: IntCounterVec,
    /// New findings refused: their host had as many unresolved findings as allowed.
    pub findings_refused: IntCounter,
    /// Findings (opened or updated) in stored reports that were over the
    /// agent's size cap and were cut to it before they were stored.
    pub findings_trimmed: IntCounter,
    /// Events stored (first delivery).
    pub events_stored: IntCounter,
    /// Events received again and ignored.
    pub events_duplicate: IntCounter,
    /// Time to check and store one report.
    pub ingest_seconds: Histogram,
    /// Alert deliveries by receiver and result.
    pub alerts_sent: IntCounterVec,
    /// Hosts known.
    pub hosts: IntGauge,
    /// Hosts silent.
    pub hosts_silent: IntGauge,
    /// Active (open or acknowledged) findings by severity.
    pub findings_active: IntGaugeVec,
    /// Campaigns (findings on ≥ 2 hosts sharing a key).
    pub campaigns: IntGauge,
    /// Enrolment requests by outcome: enrolled, reenrolled (a host's
    /// tokens rotated), conflict (409), limit, rejected_auth, rejected_rate,
    /// rejected_invalid, error.
    pub enrolments: IntCounterVec,
    /// Fleet indicators by kind and state (live, revoked, expired).
    pub fleet_indicators: IntGaugeVec,
    /// The fleet signature set's version.
    pub fleet_version: IntGauge,
    /// The set version each agent last said it holds, by host.
    pub agent_fleet_version: IntGaugeVec,
    /// Findings that matched a fleet indicator, by indicator id.
    pub fleet_indicator_hits: IntCounterVec,
    /// Fetches of the fleet set, by status (200, 304).
    pub fleet_fetches: IntCounterVec,
    /// Indicators (or findings) refused by learning, by reason.
    pub fleet_learning_refused: IntCounterVec,
    /// Changes of agents' reported configuration, by what changed.
    pub agent_config_changes: IntCounterVec,
    /// 1 for each sensor an agent's configuration switches off, by host and sensor.
    pub agent_sensors_off: IntGaugeVec,
    /// 1 for each way a host's last reported configuration departs from the fleet policy.
    pub agent_policy_drift: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reports = IntCounterVec::new(
            Opts::new("rigwatch_collector_reports_total", "Agent reports received, by outcome."),
            &["outcome"],
        )
        .expect("metric");
        let events_stored =
            IntCounter::new("rigwatch_collector_events_stored_total", "Report events stored (first delivery).").expect("metric");
        let events_duplicate = IntCounter::new(
            "rigwatch_collector_events_duplicate_total",
            "Report events received again and ignored.",
        )
        .expect("metric");
        let findings_refused = IntCounter::new(
            "rigwatch_collector_findings_refused_total",
            "New findings refused because their host had as many unresolved findings as allowed.",
        )
        .expect("metric");
        let findings_trimmed = IntCounter::new(
            "rigwatch_collector_findings_trimmed_total",
            "Findings in stored reports cut to the agent's 64 KiB size cap before they were stored.",
        )
        .expect("metric");
        let ingest_seconds = Histogram::with_opts(
            HistogramOpts::new("rigwatch_collector_ingest_duration_seconds", "Time to check and store one report.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )
        .expect("metric");
        let alerts_sent = IntCounterVec::new(
            Opts::new(
                "rigwatch_collector_alert_deliveries_total",
                "Alert deliveries, by receiver and result.",
            ),
            &["receiver", "result"],
        )
        .expect("metric");
        let hosts = IntGauge::new("rigwatch_collector_hosts", "Hosts that have reported.").expect("metric");
        let hosts_silent = IntGauge::new("rigwatch_collector_hosts_silent", "Hosts whose agent stopped reporting.").expect("metric");
        let findings_active = IntGaugeVec::new(
            Opts::new("rigwatch_collector_findings_active", "Open or acknowledged findings, by severity."),
            &["severity"],
        )
        .expect("metric");
        let campaigns = IntGauge::new(
            "rigwatch_collector_campaigns",
            "Groups of findings on two or more hosts sharing a key.",
        )
        .expect("metric");
        let enrolments = IntCounterVec::new(
            Opts::new(
                "rigwatch_collector_enrolments_total",
                "Host enrolments with a fleet enrolment token, by outcome.",
            ),
            &["outcome"],
        )
        .expect("metric");
        let fleet_indicators = IntGaugeVec::new(
            Opts::new(
                "rigwatch_collector_fleet_indicators",
                "Fleet indicators, by kind and state (live, revoked, expired).",
            ),
            &["kind", "state"],
        )
        .expect("metric");
        let fleet_version = IntGauge::new("rigwatch_collector_fleet_version", "The version of the fleet signature set.").expect("metric");
        let agent_fleet_version = IntGaugeVec::new(
            Opts::new(
                "rigwatch_collector_agent_fleet_version",
                "The fleet signature set version each agent said it holds at its last fetch.",
            ),
            &["host"],
        )
        .expect("metric");
        let fleet_indicator_hits = IntCounterVec::new(
            Opts::new(
                "rigwatch_collector_fleet_indicator_hits_total",
                "Findings reported by agents that matched a fleet indicator (once per finding).",
            ),
            &["indicator"],
        )
        .expect("metric");
        let fleet_fetches = IntCounterVec::new(
            Opts::new(
                "rigwatch_collector_fleet_fetches_total",
                "Fetches of the fleet signature set, by status.",
            ),
            &["status"],
        )
        .expect("metric");
        let fleet_learning_refused = IntCounterVec::new(
            Opts::new(
                "rigwatch_collector_fleet_learning_refused_total",
                "Findings or indicators that taught the fleet nothing, by reason.",
            ),
            &["reason"],
        )
        .expect("metric");
        let agent_config_changes = IntCounterVec::new(
            Opts::new(
                "rigwatch_collector_agent_config_changes_total",
                "Changes of agents' reported configuration (allowlist, overrides, sensors_off, config, collector, bundled).",
            ),
            &["what"],
        )
        .expect("metric");
        let agent_sensors_off = IntGaugeVec::new(
            Opts::new(
                "rigwatch_collector_agent_sensors_off",
                "1 for each sensor an agent's configuration switches off, as it last reported.",
            ),
            &["host", "sensor"],
        )
        .expect("metric");
        let agent_policy_drift = IntGaugeVec::new(
            Opts::new(
                "rigwatch_collector_agent_policy_drift",
                "1 for each way a host's last reported configuration departs from the fleet policy \
                 (policy: local_allowlist, local_overrides, required_sensors).",
            ),
            &["host", "policy"],
        )
        .expect("metric");
        for w in crate::hostconfig::WHATS {
            agent_config_changes.with_label_values(&[w]);
        }
        for c in [
            Box::new(agent_config_changes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(agent_sensors_off.clone()),
            Box::new(agent_policy_drift.clone()),
            Box::new(enrolments.clone()),
            Box::new(fleet_indicators.clone()),
            Box::new(fleet_version.clone()),
            Box::new(agent_fleet_version.clone()),
            Box::new(fleet_indicator_hits.clone()),
            Box::new(fleet_fetches.clone()),
            Box::new(fleet_learning_refused.clone()),
            Box::new(reports.clone()),
            Box::new(findings_refused.clone()),
            Box::new(findings_trimmed.clone()),
            Box::new(events_stored.clone()),
            Box::new(events_duplicate.clone()),
            Box::new(ingest_seconds.clone()),
            Box::new(alerts_sent.clone()),
            Box::new(hosts.clone()),
            Box::new(hosts_silent.clone()),
            Box::new(findings_active.clone()),
            Box::new(campaigns.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        for o in [
            "stored",
            "rejected_auth",
            "rejected_host",
            "rejected_rate",
            "rejected_invalid",
            "rejected_too_large",
            "error",
        ] {
            reports.with_label_values(&[o]);
        }
        for o in [
            "enrolled",
            "reenrolled",
            "conflict",
            "limit",
            "rejected_auth",
            "rejected_rate",
            "rejected_invalid",
            "error",
        ] {
            enrolments.with_label_values(&[o]);
        }
        for s in ["confirmed", "likely", "suspicious"] {
            findings_active.with_label_values(&[s]);
        }
        for s in ["200", "304"] {
            fleet_fetches.with_label_values(&[s]);
        }
        for r in crate::fleet::Refusal::ALL {
            fleet_learning_refused.with_label_values(&[r.as_str()]);
        }
        for k in crate::fleet::KINDS {
            for s in ["live", "revoked", "expired"] {
                fleet_indicators.with_label_values(&[k, s]);
            }
        }
        Metrics {
            registry,
            reports,
            findings_refused,
            findings_trimmed,
            events_stored,
            events_duplicate,
            ingest_seconds,
            alerts_sent,
            hosts,
            hosts_silent,
            findings_active,
            campaigns,
            enrolments,
            fleet_indicators,
            fleet_version,
            agent_fleet_version,
            fleet_indicator_hits,
            fleet_fetches,
            fleet_learning_refused,
            agent_config_changes,
            agent_sensors_off,
            agent_policy_drift,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
