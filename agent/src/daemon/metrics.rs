//! Every metric the agent exports, defined in one place. Names follow
//! Prometheus conventions (`promtool check metrics` is clean). Labels carry
//! process details only on the bounded set of active findings.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rigwatch_signatures::{EvidenceKind, Finding, Severity};

/// The agent's metrics.
pub struct Metrics {
    /// The registry /metrics renders.
    pub registry: Registry,
    /// rigwatch_build_info{version}
    pub build_info: IntGaugeVec,
    /// rigwatch_sensor_up{sensor}
    pub sensor_up: IntGaugeVec,
    /// rigwatch_sensor_pass_duration_seconds{sensor}
    pub sensor_duration: GaugeVec,
    /// rigwatch_sensor_errors_total{sensor}
    pub sensor_errors: IntCounterVec,
    /// rigwatch_findings_active{severity}
    pub findings_active: IntGaugeVec,
    /// rigwatch_finding_active{id,severity,rule,comm,pid,namespace,pod}
    pub finding_active: IntGaugeVec,
    /// rigwatch_finding_cpu_cores{id}
    pub finding_cpu: GaugeVec,
    /// rigwatch_finding_gpu_utilization_ratio{id}
    pub finding_gpu: GaugeVec,
    /// rigwatch_finding_evidence{id,kind}
    pub finding_evidence: IntGaugeVec,
    /// rigwatch_findings_opened_total{rule,severity}
    pub findings_opened: IntCounterVec,
    /// rigwatch_findings_resolved_total
    pub findings_resolved: IntCounter,
    /// rigwatch_signatures_info{version}
    pub signatures_info: IntGaugeVec,
    /// rigwatch_signatures_rules
    pub signatures_rules: IntGauge,
    /// rigwatch_signature_load_errors_total
    pub signature_load_errors: IntCounter,
    /// rigwatch_signatures_last_reload_success
    pub signatures_reload_ok: IntGauge,
    /// rigwatch_shipper_queue_events
    pub shipper_queue: IntGauge,
    /// rigwatch_spool_bytes
    pub spool_bytes: IntGauge,
    /// rigwatch_spool_dropped_events_total
    pub spool_dropped: IntCounter,
    /// rigwatch_shipper_delivered_events_total
    pub shipper_delivered: IntCounter,
    /// rigwatch_shipper_delivery_failures_total
    pub shipper_failures: IntCounter,
    /// rigwatch_pass_duration_seconds
    pub pass_duration: Histogram,
    /// rigwatch_processes
    pub processes: IntGauge,
    /// rigwatch_exec_events_total
    pub exec_events: IntCounter,
    /// rigwatch_response_actions_total{action,dry_run}
    pub response_actions: IntCounterVec,
    /// rigwatch_last_pass_timestamp_seconds
    pub last_pass: Gauge,
}

/// Caps a label value: at most 64 characters, control characters dropped.
pub fn label(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

impl Metrics {
    /// Registers everything (and the process collector: the agent's own CPU and memory).
    pub fn new() -> Metrics {
        let r = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                r.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        let igv = |n: &str, h: &str, l: &[&str]| IntGaugeVec::new(Opts::new(n, h), l).unwrap();
        let gv = |n: &str, h: &str, l: &[&str]| GaugeVec::new(Opts::new(n, h), l).unwrap();
        let icv = |n: &str, h: &str, l: &[&str]| IntCounterVec::new(Opts::new(n, h), l).unwrap();
        let m = Metrics {
            build_info: reg!(igv("rigwatch_build_info", "rigwatch agent build information.", &["version"])),
            sensor_up: reg!(igv(
                "rigwatch_sensor_up",
                "Whether a sensor works on this host (1) or not (0).",
                &["sensor"]
            )),
            sensor_duration: reg!(gv(
                "rigwatch_sensor_pass_duration_seconds",
                "Duration of the sensor's last pass.",
                &["sensor"]
            )),
            sensor_errors: reg!(icv("rigwatch_sensor_errors_total", "Passes in which a sensor failed.", &["sensor"])),
            findings_active: reg!(igv("rigwatch_findings_active", "Active findings by severity.", &["severity"])),
            finding_active: reg!(igv(
                "rigwatch_finding_active",
                "One series per active finding (bounded), value 1.",
                &["id", "severity", "rule", "comm", "pid", "namespace", "pod"]
            )),
            finding_cpu: reg!(gv(
                "rigwatch_finding_cpu_cores",
                "Cores used by the process of an active finding.",
                &["id"]
            )),
            finding_gpu: reg!(gv(
                "rigwatch_finding_gpu_utilization_ratio",
                "GPU utilisation of the process of an active finding.",
                &["id"]
            )),
            finding_evidence: reg!(igv(
                "rigwatch_finding_evidence",
                "Pieces of evidence of each kind (stratum, pool_connection, dns, tls_sni, binary_content, …) behind an active finding.",
                &["id", "kind"]
            )),
            findings_opened: reg!(icv(
                "rigwatch_findings_opened_total",
                "Findings opened, by rule and severity.",
                &["rule", "severity"]
            )),
            findings_resolved: reg!(IntCounter::new("rigwatch_findings_resolved_total", "Findings resolved.").unwrap()),
            signatures_info: reg!(igv("rigwatch_signatures_info", "The signature set in force.", &["version"])),
            signatures_rules: reg!(IntGauge::new("rigwatch_signatures_rules", "Rules in force.").unwrap()),
            signature_load_errors: reg!(
                IntCounter::new("rigwatch_signature_load_errors_total", "Signature files that failed to load.").unwrap()
            ),
            signatures_reload_ok: reg!(IntGauge::new(
                "rigwatch_signatures_last_reload_success",
                "Whether the last signature reload succeeded."
            )
            .unwrap()),
            shipper_queue: reg!(IntGauge::new("rigwatch_shipper_queue_events", "Events waiting for the collector.").unwrap()),
            spool_bytes: reg!(IntGauge::new("rigwatch_spool_bytes", "Bytes in the on-disk spool.").unwrap()),
            spool_dropped: reg!(
                IntCounter::new("rigwatch_spool_dropped_events_total", "Events dropped because the spool was full.").unwrap()
            ),
            shipper_delivered: reg!(IntCounter::new("rigwatch_shipper_delivered_events_total", "Events the collector accepted.").unwrap()),
            shipper_failures: reg!(
                IntCounter::new("rigwatch_shipper_delivery_failures_total", "Failed deliveries to the collector.").unwrap()
            ),
            pass_duration: reg!(Histogram::with_opts(
                HistogramOpts::new("rigwatch_pass_duration_seconds", "Duration of a detection pass.")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
            )
            .unwrap()),
            processes: reg!(IntGauge::new("rigwatch_processes", "Processes seen in the last pass.").unwrap()),
            exec_events: reg!(IntCounter::new("rigwatch_exec_events_total", "Exec events from the kernel's proc connector.").unwrap()),
            response_actions: reg!(icv(
                "rigwatch_response_actions_total",
                "Response actions taken (or logged in dry run).",
                &["action", "dry_run"]
            )),
            last_pass: reg!(Gauge::new("rigwatch_last_pass_timestamp_seconds", "Unix time of the last detection pass.").unwrap()),
            registry: r,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for s in [Severity::Confirmed, Severity::Likely, Severity::Suspicious] {
            m.findings_active.with_label_values(&[s.as_str()]).set(0);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// Sets the active-finding series from the current findings (most severe first).
    pub fn set_findings(&self, findings: &[&Finding], cap: usize) {
        self.finding_active.reset();
        self.finding_cpu.reset();
        self.finding_gpu.reset();
        self.finding_evidence.reset();
        for s in [Severity::Confirmed, Severity::Likely, Severity::Suspicious] {
            let n = findings.iter().filter(|f| f.severity == s).count();
            self.findings_active.with_label_values(&[s.as_str()]).set(n as i64);
        }
        let mut sorted: Vec<&&Finding> = findings.iter().collect();
        sorted.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        for f in sorted.into_iter().take(cap) {
            let rule = main_rule(f);
            let pid = f.pid.map(|p| p.to_string()).unwrap_or_default();
            let comm = if f.flow.is_some() {
                "(flow)".to_string()
            } else {
                label(&f.process.comm)
            };
            self.finding_active
                .with_label_values(&[
                    &f.id,
                    f.severity.as_str(),
                    &label(&rule),
                    &comm,
                    &pid,
                    &label(f.process.namespace.as_deref().unwrap_or("")),
                    &label(f.process.pod.as_deref().unwrap_or("")),
                ])
                .set(1);
            let mut kinds: std::collections::BTreeMap<&str, i64> = Default::default();
            for e in &f.evidence {
                *kinds.entry(e.kind()).or_default() += 1;
            }
            for (kind, n) in kinds {
                self.finding_evidence.with_label_values(&[&f.id, kind]).set(n);
            }
            if let Some(c) = f.cpu_cores {
                self.finding_cpu.with_label_values(&[&f.id]).set(c);
            }
            if let Some(g) = f.evidence.iter().find_map(|e| match e.detail {
                EvidenceKind::Gpu { utilization_percent, .. } => Some(utilization_percent / 100.0),
                _ => None,
            }) {
                self.finding_gpu.with_label_values(&[&f.id]).set(g);
            }
        }
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The rule that best names a finding: its strongest rule-based evidence, else its strongest kind.
pub fn main_rule(f: &Finding) -> String {
    f.evidence
        .iter()
        .find_map(|e| e.rule.clone())
        .or_else(|| f.evidence.first().map(|e| e.kind().to_string()))
        .unwrap_or_default()
}
