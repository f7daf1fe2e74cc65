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
    /// rigwatch_sensor_stat{sensor,stat}: every counter a sensor keeps
    pub sensor_stat: IntGaugeVec,
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
    /// rigwatch_findings_updated_total
    pub findings_updated: IntCounter,
    /// rigwatch_spool_write_errors_total
    pub spool_write_errors: IntCounter,
    /// rigwatch_shipper_rejected_batches_total
    pub shipper_rejected: IntCounter,
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
    /// rigwatch_shipper_auth_refused_total
    pub shipper_auth_refused: IntCounter,
    /// rigwatch_siem_events_total{sink,outcome}
    pub siem_events: IntCounterVec,
    /// rigwatch_fleet_set_version
    pub fleet_version: IntGauge,
    /// rigwatch_fleet_fetches_total{outcome}
    pub fleet_fetches: IntCounterVec,
    /// rigwatch_shipper_rate_limited_total
    pub shipper_rate_limited: IntCounter,
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
            sensor_stat: reg!(igv(
                "rigwatch_sensor_stat",
                "A sensor's own counters after its last pass (binaries_read, capture_packets, persistence_entries, …).",
                &["sensor", "stat"]
            )),
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
            findings_updated: reg!(
                IntCounter::new("rigwatch_findings_updated_total", "Findings whose severity or evidence changed.").unwrap()
            ),
            spool_write_errors: reg!(IntCounter::new(
                "rigwatch_spool_write_errors_total",
                "Events that could not be written to the spool (full disk, I/O error)."
            )
            .unwrap()),
            shipper_rejected: reg!(IntCounter::new(
                "rigwatch_shipper_rejected_batches_total",
                "Batches the collector will never take (400/413/422), kept beside the spool."
            )
            .unwrap()),
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
            siem_events: reg!(icv(
                "rigwatch_siem_events_total",
                "SIEM events (OCSF or ECS) the agent wrote itself, by sink (file, syslog) and outcome (written, failed).",
                &["sink", "outcome"]
            )),
            fleet_version: reg!(IntGauge::new(
                "rigwatch_fleet_set_version",
                "The version of the collector's fleet signature set in force (0: none yet)."
            )
            .unwrap()),
            fleet_fetches: reg!(icv(
                "rigwatch_fleet_fetches_total",
                "Fetches of the collector's fleet signature set, by outcome (updated, not_modified, refused, error).",
                &["outcome"]
            )),
            shipper_auth_refused: reg!(IntCounter::new(
                "rigwatch_shipper_auth_refused_total",
                "Deliveries and enrolments the collector refused for the token (401, 403); the events stay in the spool."
            )
            .unwrap()),
            shipper_rate_limited: reg!(IntCounter::new(
                "rigwatch_shipper_rate_limited_total",
                "Deliveries the collector asked to retry later (429 with Retry-After)."
            )
            .unwrap()),
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
        let _ = m.registry.register(Box::new(SelfCollector::new()));
        m
    }

    /// Takes one sensor's report of a full pass: up, duration, errors, counters.
    pub fn observe_sensor(&self, r: &crate::engine::SensorReport) {
        self.sensor_up.with_label_values(&[r.name]).set(r.up as i64);
        self.sensor_duration.with_label_values(&[r.name]).set(r.seconds);
        if !r.up {
            self.sensor_errors.with_label_values(&[r.name]).inc();
        }
        for (stat, v) in &r.counters {
            self.sensor_stat
                .with_label_values(&[r.name, stat])
                .set(i64::try_from(*v).unwrap_or(i64::MAX));
        }
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
            let comm = match (&f.subject, &f.flow) {
                (Some(s), _) => format!("({})", s.kind.as_str()),
                (None, Some(_)) => "(flow)".to_string(),
                (None, None) => label(&f.process.comm),
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

/// The agent's own CPU and memory, as the standard `process_*` metrics.
/// prometheus' own process collector counts CPU in whole seconds (an agent
/// that uses 0.1 % of a core reads 0 for many minutes); this one counts ticks.
struct SelfCollector {
    cpu: prometheus::Counter,
    rss: IntGauge,
    vsz: IntGauge,
    fds: IntGauge,
    threads: IntGauge,
    descs: Vec<prometheus::core::Desc>,
}

impl SelfCollector {
    fn new() -> SelfCollector {
        use prometheus::core::Collector;
        let cpu = prometheus::Counter::new("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.").unwrap();
        let rss = IntGauge::new("process_resident_memory_bytes", "Resident memory size in bytes.").unwrap();
        let vsz = IntGauge::new("process_virtual_memory_bytes", "Virtual memory size in bytes.").unwrap();
        let fds = IntGauge::new("process_open_fds", "Number of open file descriptors.").unwrap();
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process.").unwrap();
        let descs = [cpu.desc(), rss.desc(), vsz.desc(), fds.desc(), threads.desc()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        SelfCollector {
            cpu,
            rss,
            vsz,
            fds,
            threads,
            descs,
        }
    }
}

impl prometheus::core::Collector for SelfCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Ok(me) = procfs::process::Process::myself() {
            if let Ok(stat) = me.stat() {
                let secs = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second().max(1) as f64;
                let before = self.cpu.get();
                if secs > before {
                    self.cpu.inc_by(secs - before);
                }
                self.rss.set((stat.rss * procfs::page_size()) as i64);
                self.vsz.set(stat.vsize as i64);
                self.threads.set(stat.num_threads);
            }
            if let Ok(n) = me.fd_count() {
                self.fds.set(n as i64);
            }
        }
        [
            self.cpu.collect(),
            self.rss.collect(),
            self.vsz.collect(),
            self.fds.collect(),
            self.threads.collect(),
        ]
        .concat()
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
