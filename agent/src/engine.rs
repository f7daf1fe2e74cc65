//! The engine: one detection pipeline for every command.
//!
//! It owns the process sensor, the registered sensors and the detector. A
//! [`Pass`] samples processes, lets every sensor observe the sample, and has
//! the detector turn the observations into findings: process findings, flow
//! findings and host findings alike. `scan`, `run` and `sniff` differ only
//! in when they call [`Engine::pass`] and where the output goes (a report,
//! `/metrics` and the collector, a live printer); `pcap` feeds captured
//! flows to the same detector ([`Detector::assess_offline`]).
//!
//! Nothing a watched process plants can stall a pass: each sensor runs in
//! its own thread and has a time budget per pass
//! ([`EngineConfig::sensor_budget`]). A sensor over it (blocked on a FIFO,
//! a hung mount, a `/proc` file of a process in state D) is reported down
//! and skipped until its late pass returns; the others carry on.

use crate::detector::{Detector, DetectorConfig};
use crate::sensors::{self, Observation, ProcessSensor, Sensor, SensorError, SensorOptions, Snapshot};
use rigwatch_signatures::{Finding, Signatures};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
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
    /// How long one sensor's part of a pass may take; a sensor over it is
    /// reported down and skipped until its late pass returns.
    pub sensor_budget: Duration,
}

/// How long a sensor's part of a pass may take by default.
pub const DEFAULT_SENSOR_BUDGET: Duration = Duration::from_secs(10);

/// What a sensor's worker thread returns for one pass.
struct Done {
    result: Result<(), SensorError>,
    obs: Vec<Observation>,
    problems: Vec<String>,
    counters: Vec<(&'static str, u64)>,
    seconds: f64,
}

/// One sensor in its own long-lived thread, so that a sensor blocked in a
/// system call (a FIFO, a hung mount, a `/proc` file of a process in state
/// D) costs a pass at most its time budget. A sensor that misses its budget
/// is skipped until its late pass returns (its result is discarded).
struct Worker {
    name: &'static str,
    per_process: bool,
    /// The sensor, locked by its thread for the length of a pass.
    sensor: Arc<Mutex<Box<dyn Sensor>>>,
    /// A signature set for the thread to take before its next pass (the
    /// sensor may be busy or stuck now).
    sig: Arc<Mutex<Option<Arc<Signatures>>>>,
    jobs: Sender<Arc<Snapshot>>,
    done: Receiver<Done>,
    /// A pass that missed its budget has not returned yet.
    late: bool,
    /// Why the sensor's thread ended (it panicked), for good.
    dead: Option<String>,
    counters: Vec<(&'static str, u64)>,
    /// The observations of its last full pass that returned in time, kept
    /// while it is down: a miner that stalls a sensor (a FUSE mount, a
    /// FIFO) must not make that sensor's findings look resolved.
    last: Vec<Observation>,
}

impl Worker {
    fn start(sensor: Box<dyn Sensor>) -> Worker {
        let name = sensor.name();
        let per_process = sensor.per_process();
        let sensor = Arc::new(Mutex::new(sensor));
        let sig: Arc<Mutex<Option<Arc<Signatures>>>> = Arc::default();
        let (jobs, job_rx) = channel::<Arc<Snapshot>>();
        let (done_tx, done) = channel();
        let (s, g) = (sensor.clone(), sig.clone());
        let spawned = std::thread::Builder::new().name(format!("sensor-{name}")).spawn(move || {
            for snap in job_rx {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(sig) = g.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    s.set_signatures(sig);
                }
                let t = Instant::now();
                let mut obs = Vec::new();
                let result = s.observe(&snap, &mut obs);
                let d = Done {
                    result,
                    obs,
                    problems: s.problems(),
                    counters: s.counters(),
                    seconds: t.elapsed().as_secs_f64(),
                };
                drop(s);
                if done_tx.send(d).is_err() {
                    return;
                }
            }
        });
        let dead = spawned.err().map(|e| format!("its thread could not start: {e}"));
        Worker {
            name,
            per_process,
            sensor,
            sig,
            jobs,
            done,
            late: false,
            dead,
            counters: Vec::new(),
            last: Vec::new(),
        }
    }

    /// Runs one pass of the sensor within `budget`: its observations, or
    /// why it has none this pass.
    fn observe(&mut self, snap: &Arc<Snapshot>, budget: Duration) -> Result<Done, String> {
        if let Some(why) = &self.dead {
            return Err(why.clone());
        }
        let over = || format!("over its time budget of {} s; skipped until it finishes", budget.as_secs_f64());
        if self.late {
            match self.done.try_recv() {
                Ok(_) => self.late = false, // the late pass is over: its result is stale
                Err(TryRecvError::Empty) => return Err(over()),
                Err(TryRecvError::Disconnected) => return Err(self.died()),
            }
        }
        if self.jobs.send(snap.clone()).is_err() {
            return Err(self.died());
        }
        match self.done.recv_timeout(budget) {
            Ok(d) => {
                self.counters = d.counters.clone();
                Ok(d)
            }
            Err(RecvTimeoutError::Timeout) => {
                self.late = true;
                Err(over())
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.died()),
        }
    }

    fn died(&mut self) -> String {
        let why = "stopped: its thread ended (a panic; see the log)".to_string();
        self.dead = Some(why.clone());
        why
    }
}

/// The engine.
pub struct Engine {
    procs: ProcessSensor,
    sensors: Vec<Worker>,
    detector: Detector,
    base: Option<Arc<Snapshot>>,
    cpu_window: Duration,
    budget: Duration,
}

impl Engine {
    /// An engine for `host` with a signature set; starts the sensors (the
    /// capture sensor's thread among them).
    pub fn new(sig: Arc<Signatures>, host: &str, cfg: &EngineConfig) -> Engine {
        let sensors = sensors::registry(sig.clone(), &cfg.proc_root, &cfg.sensors);
        Engine::with_sensors(sig, host, cfg, sensors)
    }

    /// An engine running these sensors (in this order) rather than the
    /// registry's; `cfg.sensors` is not looked at.
    pub fn with_sensors(sig: Arc<Signatures>, host: &str, cfg: &EngineConfig, sensors: Vec<Box<dyn Sensor>>) -> Engine {
        Engine {
            procs: ProcessSensor::new(&cfg.proc_root),
            sensors: sensors.into_iter().map(Worker::start).collect(),
            detector: Detector::new(sig, cfg.detector.clone(), host),
            base: None,
            cpu_window: cfg.cpu_window,
            budget: cfg.sensor_budget,
        }
    }

    /// The proc root.
    pub fn proc_root(&self) -> &Path {
        self.procs.root()
    }

    /// The names of the registered sensors, in pass order.
    pub fn sensor_names(&self) -> Vec<&'static str> {
        self.sensors.iter().map(|s| s.name).collect()
    }

    /// Takes a new signature set (hot reload) in the detector now, and in
    /// every sensor before its next pass.
    pub fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.detector.set_signatures(sig.clone());
        for s in &self.sensors {
            *s.sig.lock().unwrap_or_else(|e| e.into_inner()) = Some(sig.clone());
        }
    }

    /// Whether a sensor has evidence that should not wait for the next
    /// periodic pass (network evidence). A sensor busy in a pass is not
    /// waited for.
    pub fn wants_pass(&self) -> bool {
        self.sensors.iter().any(|s| s.sensor.try_lock().is_ok_and(|s| s.wants_pass()))
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
        let cur = Arc::new(cur);
        for s in self.sensors.iter_mut().filter(|s| full || s.per_process) {
            let t = Instant::now();
            let report = match s.observe(&cur, self.budget) {
                Ok(mut d) => {
                    if full {
                        s.last = d.obs.clone();
                    }
                    obs.append(&mut d.obs);
                    SensorReport {
                        name: s.name,
                        up: d.result.is_ok(),
                        reason: d.result.err().map(|e| e.message),
                        problems: d.problems,
                        counters: d.counters,
                        seconds: d.seconds,
                    }
                }
                Err(reason) => SensorReport {
                    name: s.name,
                    up: false,
                    reason: Some(if full && !s.last.is_empty() {
                        obs.extend(s.last.iter().cloned());
                        format!("{reason}; its last pass's findings are kept")
                    } else {
                        reason
                    }),
                    problems: Vec::new(),
                    counters: s.counters.clone(),
                    seconds: t.elapsed().as_secs_f64(),
                },
            };
            if full {
                reports.push(report);
            }
        }
        let prev = if full { self.base.as_deref() } else { None };
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

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::{Evidence, EvidenceKind, HostSubject, SubjectKind, Weight};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A sensor that reports one host observation per pass, sleeping first
    /// for as many milliseconds as `sleep_ms` says at the time.
    struct Slow {
        name: &'static str,
        sleep_ms: Arc<AtomicU32>,
        passes: Arc<AtomicU32>,
    }

    impl Sensor for Slow {
        fn name(&self) -> &'static str {
            self.name
        }
        fn observe(&mut self, _snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
            std::thread::sleep(Duration::from_millis(self.sleep_ms.load(Ordering::SeqCst).into()));
            let n = self.passes.fetch_add(1, Ordering::SeqCst);
            let subject = HostSubject {
                kind: SubjectKind::Persistence,
                name: format!("/{}/{n}", self.name),
            };
            let ev = Evidence::heuristic(
                EvidenceKind::Persistence {
                    path: subject.name.clone(),
                    entry: "x".into(),
                },
                Weight::Likely,
            );
            out.push(Observation::Host(subject, ev));
            Ok(())
        }
        fn counters(&self) -> Vec<(&'static str, u64)> {
            vec![("passes", self.passes.load(Ordering::SeqCst).into())]
        }
    }

    fn slow(name: &'static str, ms: u32) -> (Box<dyn Sensor>, Arc<AtomicU32>, Arc<AtomicU32>) {
        let (sleep_ms, passes) = (Arc::new(AtomicU32::new(ms)), Arc::new(AtomicU32::new(0)));
        let s = Slow {
            name,
            sleep_ms: sleep_ms.clone(),
            passes: passes.clone(),
        };
        (Box::new(s), sleep_ms, passes)
    }

    /// An engine over these sensors with a 300 ms budget.
    fn engine_300ms(sensors: Vec<Box<dyn Sensor>>) -> Engine {
        test_engine(sensors, Duration::from_millis(300))
    }

    /// An engine over these sensors with `budget`, no rules but the built-in ones.
    fn test_engine(sensors: Vec<Box<dyn Sensor>>, budget: Duration) -> Engine {
        let sig = Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let cfg = EngineConfig {
            proc_root: "/proc".into(),
            cpu_window: Duration::ZERO,
            detector: DetectorConfig::default(),
            sensors: SensorOptions::default(),
            sensor_budget: budget,
        };
        Engine::with_sensors(sig, "test", &cfg, sensors)
    }

    fn observed(out: &PassOutput, sensor: &str) -> bool {
        out.findings.iter().any(|f| format!("{f:?}").contains(&format!("/{sensor}/")))
    }

    #[test]
    fn a_sensor_over_its_budget_is_skipped_until_it_returns() {
        let (stuck, stuck_ms, stuck_passes) = slow("stuck", 3000);
        let (fine, _, fine_passes) = slow("fine", 0);
        let mut e = engine_300ms(vec![stuck, fine]);
        let report = |out: &PassOutput, name: &str| out.reports.iter().find(|r| r.name == name).unwrap().clone();

        let t = Instant::now();
        let out = e.pass(Pass::Full, 0).unwrap();
        let took = t.elapsed();
        assert!(took < Duration::from_millis(2500), "the pass waited for the stuck sensor: {took:?}");
        let r = report(&out, "stuck");
        assert!(!r.up);
        assert_eq!(
            r.reason.as_deref(),
            Some("over its time budget of 0.3 s; skipped until it finishes")
        );
        assert!(report(&out, "fine").up);
        assert!(observed(&out, "fine"), "the other sensor's observations are there");
        assert!(!observed(&out, "stuck"));

        // while its late pass runs, it is skipped: no second pass is queued behind it
        stuck_ms.store(0, Ordering::SeqCst);
        let out = e.pass(Pass::Full, 0).unwrap();
        assert!(!report(&out, "stuck").up);
        assert!(observed(&out, "fine"));
        assert_eq!(fine_passes.load(Ordering::SeqCst), 2);

        // once the late pass is over, the sensor is up again (its late result discarded)
        let deadline = Instant::now() + Duration::from_secs(30);
        while stuck_passes.load(Ordering::SeqCst) < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50)); // its result is sent after the count
        let out = e.pass(Pass::Full, 0).unwrap();
        let r = report(&out, "stuck");
        assert!(r.up, "{r:?}");
        assert_eq!(r.reason, None);
        assert_eq!(r.counters, vec![("passes", 2)], "one late pass, one fresh");
        assert!(observed(&out, "stuck"));
        assert!(
            out.findings.iter().all(|f| !format!("{f:?}").contains("/stuck/0")),
            "the late result is discarded"
        );
    }

    #[test]
    fn a_stalled_sensor_keeps_its_last_findings() {
        let (flaky, flaky_ms, _) = slow("flaky", 0);
        let mut e = engine_300ms(vec![flaky]);
        let out = e.pass(Pass::Full, 0).unwrap();
        assert!(out.findings.iter().any(|f| format!("{f:?}").contains("/flaky/0")));
        // the miner stalls it (a FUSE mount, a FIFO): its finding must not look resolved
        flaky_ms.store(3000, Ordering::SeqCst);
        let out = e.pass(Pass::Full, 0).unwrap();
        let r = out.reports.iter().find(|r| r.name == "flaky").unwrap();
        assert!(!r.up);
        assert!(r.reason.as_deref().unwrap().ends_with("its last pass's findings are kept"), "{r:?}");
        assert!(
            out.findings.iter().any(|f| format!("{f:?}").contains("/flaky/0")),
            "the stalled sensor's last finding is still there"
        );
    }

    #[test]
    fn signatures_and_wants_pass_reach_a_sensor_in_its_thread() {
        struct Wants(Arc<AtomicU32>);
        impl Sensor for Wants {
            fn name(&self) -> &'static str {
                "wants"
            }
            fn observe(&mut self, _: &Snapshot, _: &mut Vec<Observation>) -> Result<(), SensorError> {
                Ok(())
            }
            fn wants_pass(&self) -> bool {
                true
            }
            fn set_signatures(&mut self, _sig: Arc<Signatures>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let sig = Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let reloads = Arc::new(AtomicU32::new(0));
        let mut e = test_engine(vec![Box::new(Wants(reloads.clone()))], DEFAULT_SENSOR_BUDGET);
        assert!(e.wants_pass());
        e.set_signatures(sig);
        let out = e.pass(Pass::Full, 0).unwrap();
        assert!(out.reports.iter().any(|r| r.name == "wants" && r.up));
        assert_eq!(reloads.load(Ordering::SeqCst), 1, "taken before the pass");
    }
}
