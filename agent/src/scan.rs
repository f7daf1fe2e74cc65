//! `rigwatch scan`: a one-shot scan of this host.
//!
//! Two process samples a window apart give CPU use (cores over the window,
//! never the lifetime average); the binary and config sensors work during the
//! window, so it is not wasted. Then the detector scores what it saw.

use crate::detector::{Detector, DetectorConfig};
use crate::sensors::{self, ProcessSensor, SensorOptions};
use rigwatch_signatures::{Finding, Signatures};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to scan and how.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// The proc root (normally /proc).
    pub proc_root: PathBuf,
    /// The CPU sampling window.
    pub window: Duration,
    /// Detector settings.
    pub detector: DetectorConfig,
    /// Sensor settings.
    pub sensors: SensorOptions,
}

/// What the scan looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Scanned {
    /// Processes seen (kernel threads included).
    pub processes: usize,
    /// Distinct executables read.
    pub binaries: usize,
    /// Bytes of executables read.
    pub binary_bytes: u64,
    /// The CPU window in seconds.
    pub window_seconds: f64,
    /// The signature set's version and rule count.
    pub signatures_version: String,
    /// Rules loaded.
    pub rules: usize,
    /// Packets that passed the capture filter during the window.
    pub capture_packets: u64,
    /// Network evidence items the capture produced.
    pub capture_findings: u64,
}

/// The result of a scan: `{"host": ..., "findings": [...]}` and context.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    /// This host's name.
    pub host: String,
    /// Findings, most severe first.
    pub findings: Vec<Finding>,
    /// What was looked at.
    pub scanned: Scanned,
    /// What could not be read or loaded (the scan went on without it).
    pub warnings: Vec<String>,
}

/// This host's name: `RIGWATCH_HOSTNAME` when set (in a Kubernetes
/// DaemonSet, the node name from the downward API), else the system's.
pub fn host_name() -> String {
    std::env::var("RIGWATCH_HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs one scan. `progress` is called with short status lines.
pub fn scan(opts: &ScanOptions, sig: Arc<Signatures>, progress: &dyn Fn(&str)) -> anyhow::Result<ScanReport> {
    let host = host_name();
    let mut procs = ProcessSensor::new(&opts.proc_root);
    let first = procs
        .sample()
        .map_err(|e| anyhow::anyhow!("cannot list processes in {}: {e}", opts.proc_root.display()))?;
    let started = Instant::now();
    progress(&format!(
        "{} processes; reading executables and configs while sampling CPU for {:.0}s…",
        first.procs.len(),
        opts.window.as_secs_f64()
    ));
    let mut sensors = sensors::registry(sig.clone(), &opts.proc_root, &opts.sensors);
    let mut observations = Vec::new();
    let mut warnings = Vec::new();
    // the first pass warms the caches; what it observes counts too (network
    // evidence is taken from the capture queue only once)
    for s in sensors.iter_mut() {
        if let Err(e) = s.observe(&first, &mut observations) {
            warnings.push(e.to_string());
        }
    }
    if let Some(left) = opts.window.checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let second = procs.sample()?;
    for s in sensors.iter_mut() {
        match s.observe(&second, &mut observations) {
            // said once (the first pass already said it)
            Err(e) if warnings.contains(&e.to_string()) => {}
            Err(e) => warnings.push(e.to_string()),
            Ok(()) => {}
        }
        warnings.extend(s.unreadable());
    }
    let unreadable_cmdlines = second.procs.values().filter(|p| !p.kernel_thread && !p.fixed.argv_read).count();
    if unreadable_cmdlines > 0 {
        warnings.push(format!(
            "command lines of {unreadable_cmdlines} processes: not readable (permission, or in state D)"
        ));
    }
    let mut detector = Detector::new(sig.clone(), opts.detector.clone(), &host);
    let findings = detector.assess(Some(&first), &second, &observations, unix_now());
    let counters: Vec<(&str, u64)> = sensors.iter().flat_map(|s| s.counters()).collect();
    let get = |n: &str| counters.iter().filter(|(k, _)| *k == n).map(|(_, v)| *v).sum::<u64>();
    Ok(ScanReport {
        host,
        findings,
        scanned: Scanned {
            processes: second.procs.len(),
            binaries: get("binaries_read") as usize,
            binary_bytes: get("binary_bytes_read"),
            capture_packets: get("capture_packets"),
            capture_findings: get("capture_findings"),
            window_seconds: (second.at - first.at).as_secs_f64(),
            signatures_version: sig.version.clone(),
            rules: sig.rules().len(),
        },
        warnings,
    })
}
