//! The rounding-mode sensor (eBPF): what RandomX hashing does to the CPU.
//!
//! RandomX, the proof of work of Monero (the miner of nearly every server
//! intrusion), changes the SSE rounding mode all the time (CFROUND writes
//! MXCSR.RC); ordinary programs keep round-to-nearest. The kernel saves
//! MXCSR with a task's FPU registers at every context switch and fires the
//! `x86_fpu_regs_deactivated` tracepoint; `bpf/rounding.bpf.c` counts, per
//! thread group, the switches whose saved mode is not the default and the
//! modes seen, in a bounded per-CPU LRU map. Each pass this sensor reads the
//! map: a process caught in two or more non-default modes, at least
//! [`MIN_RATE`] times a second over the pass, is `cpu_algorithm` evidence
//! (`randomx-like`): `likely` alone, `confirmed` with sustained CPU.
//!
//! Renaming, packing, config files, proxies and TLS change nothing here.
//! The program is built by clang at build time (CO-RE: relocated against
//! the running kernel's BTF at load, so no headers and no compiler on the
//! host); it loads where the kernel and capabilities allow (CAP_BPF and
//! CAP_PERFMON, or root) and otherwise the sensor reports itself
//! unavailable while every other sensor carries on. On other architectures
//! (aarch64 keeps its rounding mode in FPCR) it is unavailable rather than
//! guessing.

use super::{Observation, Sensor, SensorError, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, Weight};
use std::collections::HashMap;
use std::time::Instant;

/// The program, compiled by build.rs (empty when clang was missing).
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rounding.bpf.o"));

/// Switches per second, caught in a non-default rounding mode, that count.
/// Ordinary programs: zero. RandomX threads are caught at every switch
/// they make while hashing (3 of 4 modes are not the default).
pub const MIN_RATE: f64 = 1.0;
/// Distinct non-default modes needed (a program that sets one mode for a
/// phase of its work, e.g. interval arithmetic, stays at one).
pub const MIN_MODES: u32 = 2;

/// One thread group's counts, summed over CPUs (the map's value layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rounding {
    /// Switches caught with a non-default rounding mode.
    pub odd: u64,
    /// Bit RC set for each rounding-control value seen.
    pub modes: u64,
}

// SAFETY: plain old data, `repr(C)`, no padding (two u64).
unsafe impl aya::Pod for Rounding {}

/// The rounding-control names, by MXCSR.RC value.
const MODE_NAMES: [&str; 4] = ["nearest", "down", "up", "toward zero"];

/// Non-default modes in a bit set, by name.
pub fn mode_names(modes: u64) -> Vec<String> {
    (1..4)
        .filter(|rc| modes & (1 << rc) != 0)
        .map(|rc| MODE_NAMES[rc].to_string())
        .collect()
}

/// The judgement on one thread group over one pass (`window_seconds`: the
/// time the program was attached in it): `Some` evidence when it is
/// RandomX-like. Pure, for tests.
pub fn judge(before: Rounding, now: Rounding, window_seconds: f64) -> Option<Evidence> {
    let switches = now.odd.saturating_sub(before.odd);
    if window_seconds <= 0.0 || switches == 0 {
        return None;
    }
    let rate = switches as f64 / window_seconds;
    let modes = mode_names(now.modes);
    if rate < MIN_RATE || (modes.len() as u32) < MIN_MODES {
        return None;
    }
    Some(Evidence::heuristic(
        EvidenceKind::CpuAlgorithm {
            algorithm: "randomx-like".into(),
            switches,
            rate_per_second: (rate * 10.0).round() / 10.0,
            window_seconds: (window_seconds * 10.0).round() / 10.0,
            modes,
        },
        Weight::Likely,
    ))
}

/// How long the program is attached: always, or `on` of every `period`
/// (the tracepoint costs a fraction of a microsecond per context switch
/// while attached; RandomX hashing shows at hundreds of switches a second,
/// so a sample finds it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Attached the whole time (`rigwatch scan`, `rigwatch rounding`).
    Always,
    /// Attached `on` out of every `period`.
    Duty {
        on: std::time::Duration,
        period: std::time::Duration,
    },
}

/// Attached time so far: what is done, and since when it is attached now.
#[derive(Default)]
struct Attached {
    done: std::time::Duration,
    since: Option<Instant>,
}

impl Attached {
    fn total(&self) -> std::time::Duration {
        self.done + self.since.map(|t| t.elapsed()).unwrap_or_default()
    }
}

type Shared = std::sync::Arc<std::sync::Mutex<aya::Ebpf>>;

fn lock(b: &Shared) -> std::sync::MutexGuard<'_, aya::Ebpf> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn program(bpf: &mut aya::Ebpf) -> Result<&mut aya::programs::BtfTracePoint, String> {
    crate::host::bpf::tp_btf(bpf, "fpu_deactivated")
}

struct Loaded {
    bpf: Shared,
    attached: std::sync::Arc<std::sync::Mutex<Attached>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

impl Loaded {
    fn load(sampling: Sampling) -> Result<Loaded, String> {
        if PROGRAM.is_empty() && !cfg!(target_arch = "x86_64") {
            return Err("the rounding-mode signal is x86_64 only (this CPU keeps its rounding mode elsewhere)".into());
        }
        // attached at once, so that a missing permission shows at once
        let (bpf, link) = crate::host::bpf::load_tp_btf(PROGRAM, "fpu_deactivated", "x86_fpu_regs_deactivated")?;
        let attached = std::sync::Arc::new(std::sync::Mutex::new(Attached {
            done: Default::default(),
            since: Some(Instant::now()),
        }));
        let bpf: Shared = std::sync::Arc::new(std::sync::Mutex::new(bpf));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = match sampling {
            Sampling::Always => None,
            Sampling::Duty { on, period } => {
                let (b, a, st) = (bpf.clone(), attached.clone(), stop.clone());
                std::thread::Builder::new()
                    .name("rw-rounding".into())
                    .spawn(move || sample(b, a, st, link, on, period))
                    .ok()
            }
        };
        Ok(Loaded {
            bpf,
            attached,
            stop,
            sampler,
        })
    }

    /// Seconds attached so far.
    fn attached_seconds(&self) -> f64 {
        self.attached.lock().map(|a| a.total().as_secs_f64()).unwrap_or(0.0)
    }

    /// Every thread group's counts, summed over CPUs.
    fn read(&self) -> Result<HashMap<u32, Rounding>, String> {
        let bpf = lock(&self.bpf);
        let map = bpf.map("rounding").ok_or("no rounding map")?;
        let m: aya::maps::PerCpuHashMap<_, u32, Rounding> = aya::maps::PerCpuHashMap::try_from(map).map_err(|e| format!("{e}"))?;
        let mut out = HashMap::new();
        for item in m.iter() {
            let (tgid, per_cpu) = item.map_err(|e| format!("reading the rounding map: {e}"))?;
            let mut sum = Rounding::default();
            for v in per_cpu.iter() {
                sum.odd += v.odd;
                sum.modes |= v.modes;
            }
            out.insert(tgid, sum);
        }
        Ok(out)
    }

    /// Forgets thread groups that are gone (their pid may come back as
    /// another process).
    fn forget(&mut self, gone: &[u32]) {
        let mut bpf = lock(&self.bpf);
        if let Some(map) = bpf.map_mut("rounding") {
            if let Ok(mut m) = aya::maps::PerCpuHashMap::<_, u32, Rounding>::try_from(map) {
                for tgid in gone {
                    let _ = m.remove(tgid);
                }
            }
        }
    }
}

/// The sampler thread: detach after `on`, attach again at the next period.
fn sample(
    bpf: Shared,
    attached: std::sync::Arc<std::sync::Mutex<Attached>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    first: aya::programs::tp_btf::BtfTracePointLinkId,
    on: std::time::Duration,
    period: std::time::Duration,
) {
    let nap = |d: std::time::Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50).min(until - Instant::now()));
        }
    };
    let mut link = Some(first);
    loop {
        nap(on);
        if let Some(id) = link.take() {
            if let Ok(p) = program(&mut lock(&bpf)) {
                let _ = p.detach(id);
            }
            if let Ok(mut a) = attached.lock() {
                if let Some(t) = a.since.take() {
                    a.done += t.elapsed();
                }
            }
        }
        nap(period.saturating_sub(on));
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(p) = program(&mut lock(&bpf)) {
            if let Ok(id) = p.attach() {
                link = Some(id);
                if let Ok(mut a) = attached.lock() {
                    a.since = Some(Instant::now());
                }
            }
        }
    }
}

/// The rounding-mode sensor.
pub struct RoundingSensor {
    loaded: Result<Loaded, String>,
    last: HashMap<u32, Rounding>,
    /// Attached seconds at the last pass.
    last_at: Option<f64>,
    caught: u64,
}

impl RoundingSensor {
    /// Loads and attaches the program (or remembers why it could not).
    pub fn new(sampling: Sampling) -> Self {
        RoundingSensor {
            loaded: Loaded::load(sampling),
            last: HashMap::new(),
            last_at: None,
            caught: 0,
        }
    }

    /// Every thread group's counts since the program was attached (the
    /// `rigwatch rounding` command's view).
    pub fn counts(&self) -> Result<HashMap<u32, Rounding>, String> {
        self.loaded.as_ref().map_err(Clone::clone)?.read()
    }

    /// Why the sensor is not working, if it is not.
    pub fn unavailable(&self) -> Option<&str> {
        self.loaded.as_ref().err().map(String::as_str)
    }
}

impl Sensor for RoundingSensor {
    fn name(&self) -> &'static str {
        "rounding"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        let loaded = self.loaded.as_mut().map_err(|why| SensorError {
            sensor: "rounding",
            message: format!("unavailable: {why}"),
        })?;
        // rates over the time the program was attached, not wall time
        let now = loaded.attached_seconds();
        let counts = loaded.read().map_err(|message| SensorError {
            sensor: "rounding",
            message,
        })?;
        let window = self.last_at.map(|t| now - t).filter(|w| *w > 0.0);
        let by_pid: HashMap<u32, &super::ProcKey> = snap.procs.keys().map(|k| (k.pid, k)).collect();
        if let Some(w) = window {
            for (tgid, c) in &counts {
                let Some(key) = by_pid.get(tgid) else { continue };
                if let Some(e) = judge(self.last.get(tgid).copied().unwrap_or_default(), *c, w) {
                    self.caught += 1;
                    out.push(Observation::Evidence(**key, e));
                }
            }
        }
        if !snap.partial {
            let gone: Vec<u32> = counts.keys().filter(|t| !by_pid.contains_key(t)).copied().collect();
            loaded.forget(&gone);
        }
        self.last = counts;
        self.last_at = Some(now);
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("rounding_tracked", self.last.len() as u64), ("rounding_caught", self.caught)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(odd: u64, modes: &[u64]) -> Rounding {
        Rounding {
            odd,
            modes: modes.iter().map(|m| 1 << m).sum(),
        }
    }

    #[test]
    fn randomx_like_needs_a_rate_and_several_modes() {
        let e = judge(r(100, &[1, 2]), r(1_100, &[1, 2, 3]), 10.0).expect("randomx-like");
        assert_eq!(e.weight, Weight::Likely);
        match e.detail {
            EvidenceKind::CpuAlgorithm {
                algorithm,
                switches,
                rate_per_second,
                modes,
                ..
            } => {
                assert_eq!((algorithm.as_str(), switches, rate_per_second), ("randomx-like", 1_000, 100.0));
                assert_eq!(modes, ["down", "up", "toward zero"]);
            }
            other => panic!("{other:?}"),
        }
        // one mode set for a phase of work: not hashing
        assert!(judge(r(0, &[]), r(5_000, &[3]), 10.0).is_none());
        // modes seen long ago, nothing this window
        assert!(judge(r(500, &[1, 2]), r(500, &[1, 2]), 10.0).is_none());
        // too rare
        assert!(judge(r(0, &[]), r(5, &[1, 2]), 10.0).is_none());
        // a counter that went back (pid reuse after the map forgot it): no underflow
        assert!(judge(r(900, &[1, 2]), r(10, &[1, 2]), 10.0).is_none());
        assert!(judge(r(0, &[]), r(10, &[1, 2]), 0.0).is_none());
    }

    #[test]
    fn the_program_is_built_for_x86_64() {
        // build.rs compiles it whenever clang is there (test.sh installs it)
        if cfg!(target_arch = "x86_64") && std::process::Command::new("clang").arg("--version").output().is_ok() {
            assert!(PROGRAM.starts_with(b"\x7fELF"), "an eBPF ELF object");
        }
    }
}
