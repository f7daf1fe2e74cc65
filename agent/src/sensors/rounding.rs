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
    (1..4).filter(|rc| modes & (1 << rc) != 0).map(|rc| MODE_NAMES[rc].to_string()).collect()
}

/// The judgement on one thread group over one pass: `Some` evidence when
/// it is RandomX-like. Pure, for tests.
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

struct Loaded {
    bpf: aya::Ebpf,
}

impl Loaded {
    fn load() -> Result<Loaded, String> {
        if PROGRAM.is_empty() {
            return Err(if cfg!(target_arch = "x86_64") {
                "built without its eBPF program (clang was not found at build time)".into()
            } else {
                "the rounding-mode signal is x86_64 only (this CPU keeps its rounding mode elsewhere)".into()
            });
        }
        let mut bpf = aya::Ebpf::load(PROGRAM).map_err(|e| unavailable("loading the eBPF object", &e))?;
        let btf = aya::Btf::from_sys_fs().map_err(|e| format!("the kernel's BTF (/sys/kernel/btf/vmlinux): {e}"))?;
        let prog: &mut aya::programs::BtfTracePoint = bpf
            .program_mut("fpu_deactivated")
            .ok_or("the eBPF object has no fpu_deactivated program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load("x86_fpu_regs_deactivated", &btf)
            .map_err(|e| unavailable("loading the tracepoint program", &e))?;
        prog.attach().map_err(|e| unavailable("attaching the tracepoint program", &e))?;
        Ok(Loaded { bpf })
    }

    /// Every thread group's counts, summed over CPUs.
    fn read(&self) -> Result<HashMap<u32, Rounding>, String> {
        let map = self.bpf.map("rounding").ok_or("no rounding map")?;
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
        if let Some(map) = self.bpf.map_mut("rounding") {
            if let Ok(mut m) = aya::maps::PerCpuHashMap::<_, u32, Rounding>::try_from(map) {
                for tgid in gone {
                    let _ = m.remove(tgid);
                }
            }
        }
    }
}

/// What went wrong, with the error's causes (the kernel's errno is in
/// them), and what is needed when it is a matter of permission.
fn unavailable(what: &str, e: &dyn std::error::Error) -> String {
    let mut msg = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    if msg.contains("Operation not permitted") || msg.contains("Permission denied") {
        msg.push_str(" (needs CAP_BPF and CAP_PERFMON, or root)");
    }
    msg
}

/// The rounding-mode sensor.
pub struct RoundingSensor {
    loaded: Result<Loaded, String>,
    last: HashMap<u32, Rounding>,
    last_at: Option<Instant>,
    caught: u64,
}

impl Default for RoundingSensor {
    fn default() -> Self {
        Self::new()
    }
}

impl RoundingSensor {
    /// Loads and attaches the program (or remembers why it could not).
    pub fn new() -> Self {
        RoundingSensor {
            loaded: Loaded::load(),
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
        let now = Instant::now();
        let counts = loaded.read().map_err(|message| SensorError {
            sensor: "rounding",
            message,
        })?;
        let window = self.last_at.map(|t| now.duration_since(t).as_secs_f64());
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
        vec![
            ("rounding_tracked", self.last.len() as u64),
            ("rounding_caught", self.caught),
        ]
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
