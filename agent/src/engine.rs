//! The engine: one detection pipeline for every command.
//!
//! It owns the process sensor, the registered sensors and the detector. A
//! [`Pass`] samples processes, lets every sensor observe the sample, and has
//! the detector turn the observations into findings: process findings, flow
//! findings and host findings alike. `scan`, `run` and `sniff` differ only
//! in when they call [`Engine::pass`] and where the output goes (a report,
//! `/metrics` and the collector, a live printer); `pcap` feeds captured
//! flows to the same detector ([`Detector::assess_offline`]).

use crate::detector::{Detector, DetectorConfig};
use crate::sensors::{self, Observation, ProcessSensor, Sensor, SensorOptions, Snapshot};
use rigwatch_signatures::{Finding, Signatures};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a pass covers.
#[derive(Debug, Clone)]
pub enum Pass {
    /// Every process, every sensor.
    Full,
    /// Only these pids (exec events), only the sensors that look at single
    /// processes; nothing is resolved by it.
    Pids(Vec<u32>),
}

/// How one sensor did in a full pass: typed, so every sink (the scan's
/// warnings, `/metrics`, the collector's sensor list) reads the same thing.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorReport {
    /// The sensor's name.
    pub name: &'static str,
    /// Whether it worked this pass.
    pub up: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// What it could not read (it went on without it).
    pub problems: Vec<String>,
    /// Its counters (`binaries_read`, `capture_packets`…).
    pub counters: Vec<(&'static str, u64)>,
    /// How long its part of the pass took.
    pub seconds: f64,
}

/// What a pass produced.
pub struct PassOutput {
    /// Processes it looked at.
    pub processes: usize,
    /// When the processes were sampled (CPU windows are measured from it).
    pub at: Instant,
    /// Findings of every subject (process, flow, host), most severe first.
    pub findings: Vec<Finding>,
    /// One report per sensor (full passes only; the process sensor first).
    pub reports: Vec<SensorReport>,
    /// The CPU window the findings were measured over, seconds (0 without one).
    pub window_seconds: f64,
    /// How long the pass took.
    pub seconds: f64,
}

/// Everything the engine needs, from the one configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The proc root (normally /proc).
    pub proc_root: PathBuf,
    /// The shortest CPU window: a snapshot becomes the base of CPU
    /// measurement once it is at least this old.
    pub cpu_window: Duration,
    /// Detector settings.
    pub detector: DetectorConfig,
    /// Sensor settings (which sensors, and their options).
    pub sensors: SensorOptions,
}

/// The engine.
pub struct Engine {
    procs: ProcessSensor,
    sensors: Vec<Box<dyn Sensor>>,
    detector: Detector,
    base: Option<Snapshot>,
    cpu_window: Duration,
}

impl Engine {
    /// An engine for `host` with a signature set; starts the sensors (the
    /// capture sensor's thread among them).
    pub fn new(sig: Arc<Signatures>, host: &str, cfg: &EngineConfig) -> Engine {
        Engine {
            procs: ProcessSensor::new(&cfg.proc_root),
            sensors: sensors::registry(sig.clone(), &cfg.proc_root, &cfg.sensors),
            detector: Detector::new(sig, cfg.detector.clone(), host),
            base: None,
            cpu_window: cfg.cpu_window,
        }
    }

    /// The proc root.
    pub fn proc_root(&self) -> &Path {
        self.procs.root()
    }

    /// The names of the registered sensors, in pass order.
    pub fn sensor_names(&self) -> Vec<&'static str> {
        self.sensors.iter().map(|s| s.name()).collect()
    }

    /// Takes a new signature set (hot reload) in the detector and every sensor.
    pub fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.detector.set_signatures(sig.clone());
        for s in self.sensors.iter_mut() {
            s.set_signatures(sig.clone());
        }
    }

    /// Whether a sensor has evidence that should not wait for the next
    /// periodic pass (network evidence).
    pub fn wants_pass(&self) -> bool {
        self.sensors.iter().any(|s| s.wants_pass())
    }

    /// Whether the process `pid` that started at `start_time` still runs.
    pub fn alive(&mut self, pid: u32, start_time: u64) -> bool {
        self.procs.read_one(pid).is_some_and(|p| p.key.start_time == start_time)
    }

    /// One pass. Fails only when the proc root cannot be listed at all; a
    /// failing sensor is reported down in the output and the others go on.
    pub fn pass(&mut self, pass: Pass, now: u64) -> anyhow::Result<PassOutput> {
        let started = Instant::now();
        let (cur, full) = match &pass {
            Pass::Full => (
                self.procs
                    .sample()
                    .map_err(|e| anyhow::anyhow!("cannot list processes in {}: {e}", self.procs.root().display()))?,
                true,
            ),
            Pass::Pids(pids) => (self.procs.sample_pids(pids), false),
        };
        let mut obs: Vec<Observation> = Vec::new();
        let mut reports = Vec::new();
        if full {
            let unreadable = cur.procs.values().filter(|p| !p.kernel_thread && !p.fixed.argv_read).count();
            reports.push(SensorReport {
                name: "process",
                up: true,
                reason: None,
                problems: (unreadable > 0)
                    .then(|| format!("command lines of {unreadable} processes: not readable (permission, or in state D)"))
                    .into_iter()
                    .collect(),
                counters: vec![
                    ("processes", cur.procs.len() as u64),
                    ("processes_cached", self.procs.cached() as u64),
                ],
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        for s in self.sensors.iter_mut().filter(|s| full || s.per_process()) {
            let t = Instant::now();
            let r = s.observe(&cur, &mut obs);
            if full {
                reports.push(SensorReport {
                    name: s.name(),
                    up: r.is_ok(),
                    reason: r.err().map(|e| e.message),
                    problems: s.problems(),
                    counters: s.counters(),
                    seconds: t.elapsed().as_secs_f64(),
                });
            }
        }
        let prev = if full { self.base.as_ref() } else { None };
        let window_seconds = prev.map(|b| cur.at.saturating_duration_since(b.at).as_secs_f64()).unwrap_or(0.0);
        let findings = self.detector.assess(prev, &cur, &obs, now);
        let processes = cur.procs.len();
        let at = cur.at;
        if full
            && self
                .base
                .as_ref()
                .is_none_or(|b| cur.at.saturating_duration_since(b.at) >= self.cpu_window)
        {
            self.base = Some(cur);
        }
        Ok(PassOutput {
            processes,
            at,
            findings,
            reports,
            window_seconds,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
