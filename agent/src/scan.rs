//! `rigwatch scan`: a one-shot scan of this host.
//!
//! Two engine passes a window apart give CPU use (cores over the window,
//! never the lifetime average); the binary and config sensors work in the
//! first, so the window is not wasted. The second pass's findings, process,
//! flow and host alike, are the report.

use crate::engine::{Engine, EngineConfig, Pass};
use rigwatch_signatures::{Finding, Signatures};
use serde::Serialize;
use std::sync::Arc;

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
    /// Rules loaded (YARA rules included).
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
/// The CPU window is `opts.cpu_window`.
pub fn scan(opts: &EngineConfig, sig: Arc<Signatures>, progress: &dyn Fn(&str)) -> anyhow::Result<ScanReport> {
    let host = host_name();
    let mut engine = Engine::new(sig.clone(), &host, opts);
    // the first pass warms the caches and starts the CPU window
    let first = engine.pass(Pass::Full, unix_now())?;
    progress(&format!(
        "{} processes and their executables read; sampling CPU for {:.0}s…",
        first.processes,
        opts.cpu_window.as_secs_f64()
    ));
    // the window runs from the first sample, not from the end of the first pass
    if let Some(left) = opts.cpu_window.checked_sub(first.at.elapsed()) {
        std::thread::sleep(left);
    }
    let second = engine.pass(Pass::Full, unix_now())?;
    let mut warnings = Vec::new();
    for r in first.reports.iter().chain(&second.reports) {
        // said once (the first pass already said it)
        for w in r
            .reason
            .iter()
            .map(|why| format!("{}: {why}", r.name))
            .chain(r.problems.iter().cloned())
        {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    // network evidence seen in the first pass stays with the detector
    // (a process's for its life, a flow's for a while), so the second pass has it all
    let findings = second.findings;
    let get = |n: &str| {
        second
            .reports
            .iter()
            .flat_map(|r| r.counters.iter())
            .filter(|(k, _)| *k == n)
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    Ok(ScanReport {
        host,
        findings,
        scanned: Scanned {
            processes: second.processes,
            binaries: get("binaries_read") as usize,
            binary_bytes: get("binary_bytes_read"),
            capture_packets: get("capture_packets"),
            capture_findings: get("capture_findings"),
            window_seconds: second.window_seconds,
            signatures_version: sig.version.clone(),
            rules: sig.rules().len() + sig.yara().map_or(0, |y| y.rules().len()),
        },
        warnings,
    })
}
