//! The GPU sensor: which process uses which GPU, how hard and with how much
//! memory, over the window between two passes.
//!
//! - **NVIDIA** through NVML (`nvml-wrapper`), loaded at run time, once, when
//!   the sensor is built (never per pass). The library is, in this order, the
//!   path in `RIGWATCH_NVML_LIBRARY`, the configured path
//!   (`gpu.nvml_library`, [`GpuConfig::nvml_library`]), else
//!   `libnvidia-ml.so.1`. Per GPU: utilisation, memory, power. Per process:
//!   SM utilisation from the driver's process utilisation samples
//!   (`nvmlDeviceGetProcessUtilization`, asked only for the samples newer
//!   than the last one seen, so each pass covers its own window) and memory
//!   from the running compute and graphics processes.
//! - **AMD, Intel and the other DRM drivers** through the DRM client usage
//!   stats in `PROC/PID/fdinfo/FD` of every file descriptor that points into
//!   `/dev/dri/` (or `/dev/accel/`): `drm-driver`, `drm-client-id`,
//!   `drm-pdev`, `drm-engine-<engine>: <ns> ns` (cumulative busy time),
//!   `drm-cycles-`/`drm-total-cycles-<engine>` (xe), `drm-engine-capacity-`,
//!   `drm-memory-`/`drm-resident-`/`drm-total-<region>`. Utilisation is the
//!   busy time an engine gained between two passes over the wall time between
//!   them (divided by the engine class's capacity); a process's utilisation
//!   of a GPU is its busiest engine's, summed over its clients, each client
//!   (driver, device, client id) counted once however many descriptors (dup,
//!   fork) show it. Memory is each region's resident size (else
//!   `drm-memory-`, else `drm-total-`), summed over regions and clients.
//!   NVIDIA's DRM clients are left to NVML. Parsing is a pure function over
//!   text ([`parse_fdinfo`]).
//!
//! **Evidence.** A process gets one [`EvidenceKind::Gpu`] per GPU on which
//! it used at least [`UTIL_THRESHOLD_PERCENT`] (30 %) over the window (GPU
//! memory alone is never evidence: an idle process holding a model in memory
//! is not using the GPU). When the driver cannot sample per-process
//! utilisation (NVML's "not supported"), the GPU's own utilisation stands in
//! for a process that is the only one with memory on it. The first pass only
//! primes the counters: evidence needs a window.
//!
//! **Unscheduled GPU use.** The process's cgroup tells whether it runs inside
//! a scheduler's job: Slurm (`job_<n>` in the path), Kubernetes (`kubepods`),
//! or a cgroup substring from [`GpuConfig::scheduler_cgroups`] (PBS, LSF or
//! HTCondor sites, systemd slices of sanctioned services…). Scheduled GPU use
//! names its scheduler in `scheduler` and weighs `info`: busy alone is
//! nothing. GPU use outside any scheduler job weighs `suspicious`, so
//! sustained unscheduled GPU use is a `suspicious` finding by itself, `likely`
//! with a miner name or flags, `confirmed` with stratum, binary or config
//! evidence (see [`rigwatch_signatures::score`]).
//!
//! **Against the scheduler.** On a Slurm node (`squeue` in `PATH` or
//! [`GpuConfig::slurm_squeue`]) unscheduled use names its user against the
//! jobs that user holds on this node ([`crate::host::slurm`]), in the
//! evidence's `allocation`: none at all (someone with a shell on a GPU node,
//! the administrator's case), or a job whose GPUs sit idle while its owner
//! works outside it (`holds job 4242 (RUNNING, gres/gpu:1; its processes use
//! no GPU) and runs this outside it`). On a Kubernetes node, GPU use inside
//! a pod is scheduled only if the kubelet's device-plugin checkpoint shows a
//! GPU resource allocated to that pod ([`crate::kube::DeviceAllocations`]);
//! otherwise (a privileged pod with `/dev/nvidia*` mounted by hand) it weighs
//! `suspicious` and `allocation` says the pod was allocated no GPU.
//!
//! **No GPU.** Without NVML (no library, no driver) and without a DRM driver
//! (no `drm` in `PROC/devices`), every pass fails with one clear message,
//! which the scan reports once; the agent carries on. With a DRM driver but
//! no NVML the sensor works for DRM (a configured NVML library that fails to
//! load is still reported, in [`Sensor::unreadable`]).

use super::{Observation, ProcKey, Sensor, SensorError, Snapshot};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use rigwatch_signatures::{Evidence, EvidenceKind, Weight};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable naming the NVML library to load.
pub const NVML_LIBRARY_ENV: &str = "RIGWATCH_NVML_LIBRARY";
/// The NVML library loaded when none is named (the driver's soname).
pub const DEFAULT_NVML_LIBRARY: &str = "libnvidia-ml.so.1";
/// Utilisation (percent, over the window) from which a process's GPU use is evidence.
pub const UTIL_THRESHOLD_PERCENT: f64 = 30.0;

/// GPU sensor settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuConfig {
    /// The NVML library (`gpu.nvml_library`); `RIGWATCH_NVML_LIBRARY` overrides it.
    pub nvml_library: Option<PathBuf>,
    /// Cgroup path substrings that mark a scheduler's jobs, beyond the
    /// built-in Slurm (`job_<n>`) and Kubernetes (`kubepods`).
    pub scheduler_cgroups: Vec<String>,
    /// Slurm's `squeue` (`gpu.slurm_squeue`); without it, `squeue` in
    /// `PATH`, else no Slurm. Asked only about unscheduled GPU use.
    pub slurm_squeue: Option<PathBuf>,
    /// The kubelet's device-plugin checkpoint (normally
    /// `/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint` under
    /// the host root): GPU use in a pod it allocated no GPU is not scheduled.
    pub kubelet_checkpoint: Option<PathBuf>,
}

/// Where the NVML library path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    /// `RIGWATCH_NVML_LIBRARY`.
    Env,
    /// The configuration (`gpu.nvml_library`).
    Config,
    /// The driver's usual name.
    Default,
}

/// The NVML library to load: the environment's, else the configured one,
/// else the usual name. An empty environment value counts as unset.
pub fn nvml_library(env: Option<OsString>, configured: Option<&Path>) -> (PathBuf, LibrarySource) {
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return (PathBuf::from(e), LibrarySource::Env);
    }
    if let Some(c) = configured.filter(|c| !c.as_os_str().is_empty()) {
        return (c.to_path_buf(), LibrarySource::Config);
    }
    (PathBuf::from(DEFAULT_NVML_LIBRARY), LibrarySource::Default)
}

/// The scheduler job a cgroup path belongs to, if any: `slurm job_<n>`,
/// `kubernetes`, or `cgroup <substring>` for a configured substring.
pub fn scheduler_of(cgroup: &str, configured: &[String]) -> Option<String> {
    for comp in cgroup.split('/') {
        if let Some(n) = comp.strip_prefix("job_") {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return Some(format!("slurm {comp}"));
            }
        }
    }
    if cgroup.contains("kubepods") {
        return Some("kubernetes".into());
    }
    configured
        .iter()
        .find(|s| !s.is_empty() && cgroup.contains(s.as_str()))
        .map(|s| format!("cgroup {s}"))
}

/// One GPU as the last pass saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuStat {
    /// The label evidence uses (`nvidia0 NVIDIA A100…`, `amdgpu 0000:03:00.0`).
    pub gpu: String,
    /// The driver (`nvidia`, `amdgpu`, `i915`, `xe`…).
    pub driver: String,
    /// The NVIDIA UUID, for NVML GPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The GPU's own utilisation (NVML's last sample period), percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
    /// Memory in use, bytes (NVML: the device's; DRM: its clients' total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Memory installed, bytes (NVML).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Power draw, watts (NVML).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
    /// Processes seen on it.
    pub processes: usize,
}

/// One process's use of one GPU over the last window.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessGpuUse {
    /// The process.
    pub key: ProcKey,
    /// The GPU's label.
    pub gpu: String,
    /// Utilisation over the window, percent; `None` when it could not be measured.
    pub utilization_percent: Option<f64>,
    /// GPU memory held, bytes.
    pub memory_bytes: u64,
}

/// Busy counters of one engine class of a DRM client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineCounters {
    /// Cumulative busy time, ns (`drm-engine-<name>`).
    pub busy_ns: Option<u64>,
    /// Cumulative busy cycles (`drm-cycles-<name>`).
    pub cycles: Option<u64>,
    /// Cumulative total cycles (`drm-total-cycles-<name>`).
    pub total_cycles: Option<u64>,
    /// Engines in the class (`drm-engine-capacity-<name>`); 1 when absent.
    pub capacity: u64,
}

/// Memory of one region of a DRM client, bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionMemory {
    /// `drm-total-<region>`.
    pub total: Option<u64>,
    /// `drm-resident-<region>`.
    pub resident: Option<u64>,
    /// `drm-memory-<region>` (the older form, resident memory).
    pub memory: Option<u64>,
}

impl RegionMemory {
    /// The bytes this region counts for: resident, else `drm-memory-`, else total.
    pub fn bytes(&self) -> u64 {
        self.resident.or(self.memory).or(self.total).unwrap_or(0)
    }
}

/// One DRM client, as one fdinfo file shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrmClient {
    /// `drm-driver`.
    pub driver: String,
    /// `drm-client-id`: unique per open of the device, shared by dup'd and inherited fds.
    pub client_id: u64,
    /// `drm-pdev`, the PCI address (absent on some platform devices).
    pub pdev: Option<String>,
    /// Engines by name.
    pub engines: BTreeMap<String, EngineCounters>,
    /// Memory regions by name.
    pub memory: BTreeMap<String, RegionMemory>,
}

impl DrmClient {
    /// Memory held in all regions, bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.values().map(RegionMemory::bytes).sum()
    }

    /// The GPU's label: driver and PCI address.
    pub fn gpu(&self) -> String {
        match &self.pdev {
            Some(p) => format!("{} {p}", self.driver),
            None => self.driver.clone(),
        }
    }

    fn key(&self) -> ClientKey {
        (self.driver.clone(), self.pdev.clone(), self.client_id)
    }
}

type ClientKey = (String, Option<String>, u64);

/// A value with an optional unit: bytes, `KiB`, `MiB`, `GiB` (memory) or `ns`.
fn parse_quantity(v: &str) -> Option<u64> {
    let mut it = v.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let mul = match it.next() {
        None | Some("ns") | Some("B") => 1,
        Some("KiB") | Some("kB") => 1 << 10,
        Some("MiB") => 1 << 20,
        Some("GiB") => 1 << 30,
        Some(_) => return None,
    };
    n.checked_mul(mul)
}

/// Parses one `fdinfo` file. `None` when it is not a DRM client (no
/// `drm-driver` or `drm-client-id`). Unknown keys are ignored.
pub fn parse_fdinfo(text: &str) -> Option<DrmClient> {
    let mut c = DrmClient::default();
    let mut id = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        let Some(k) = k.strip_prefix("drm-") else { continue };
        if k == "driver" {
            c.driver = v.to_string();
        } else if k == "client-id" {
            id = v.parse::<u64>().ok();
        } else if k == "pdev" {
            c.pdev = Some(v.to_string());
        } else if let Some(e) = k.strip_prefix("engine-capacity-") {
            if let Ok(n) = v.parse::<u64>() {
                c.engines.entry(e.to_string()).or_default().capacity = n;
            }
        } else if let Some(e) = k.strip_prefix("engine-") {
            if let Some(n) = v.strip_suffix("ns").and_then(|n| n.trim().parse::<u64>().ok()) {
                c.engines.entry(e.to_string()).or_default().busy_ns = Some(n);
            }
        } else if let Some(e) = k.strip_prefix("total-cycles-") {
            if let Ok(n) = v.parse::<u64>() {
                c.engines.entry(e.to_string()).or_default().total_cycles = Some(n);
            }
        } else if let Some(e) = k.strip_prefix("cycles-") {
            if let Ok(n) = v.parse::<u64>() {
                c.engines.entry(e.to_string()).or_default().cycles = Some(n);
            }
        } else if let Some(r) = k.strip_prefix("total-") {
            if let Some(n) = parse_quantity(v) {
                c.memory.entry(r.to_string()).or_default().total = Some(n);
            }
        } else if let Some(r) = k.strip_prefix("resident-") {
            if let Some(n) = parse_quantity(v) {
                c.memory.entry(r.to_string()).or_default().resident = Some(n);
            }
        } else if let Some(r) = k.strip_prefix("memory-") {
            if let Some(n) = parse_quantity(v) {
                c.memory.entry(r.to_string()).or_default().memory = Some(n);
            }
        }
    }
    c.client_id = id?;
    if c.driver.is_empty() {
        return None;
    }
    for e in c.engines.values_mut() {
        e.capacity = e.capacity.max(1);
    }
    Some(c)
}

/// Busy fraction per engine of one client between two readings `wall_ns`
/// apart (0..=1 per engine, capacity taken into account).
pub fn engine_busy(prev: &DrmClient, cur: &DrmClient, wall_ns: u64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, c) in &cur.engines {
        let Some(p) = prev.engines.get(name) else { continue };
        let cap = c.capacity.max(1) as f64;
        let frac = match (c.busy_ns, p.busy_ns, c.cycles, p.cycles, c.total_cycles, p.total_cycles) {
            (Some(b1), Some(b0), ..) if wall_ns > 0 => b1.saturating_sub(b0) as f64 / wall_ns as f64 / cap,
            (_, _, Some(c1), Some(c0), Some(t1), Some(t0)) if t1 > t0 => c1.saturating_sub(c0) as f64 / (t1 - t0) as f64 / cap,
            _ => continue,
        };
        out.insert(name.clone(), frac.clamp(0.0, 1.0));
    }
    out
}

/// A process's utilisation of one GPU, percent, from the (prev, cur)
/// readings of its clients on it: the busiest engine, summed over clients.
/// `None` when no client has comparable engine counters in both readings.
pub fn drm_utilization(pairs: &[(&DrmClient, &DrmClient)], wall_ns: u64) -> Option<f64> {
    let mut per_engine: BTreeMap<String, f64> = BTreeMap::new();
    for (prev, cur) in pairs {
        for (e, f) in engine_busy(prev, cur, wall_ns) {
            *per_engine.entry(e).or_default() += f;
        }
    }
    per_engine.values().copied().reduce(f64::max).map(|f| f.min(1.0) * 100.0)
}

/// Whether the kernel has a DRM driver: a `drm` character device in `PROC/devices`.
/// A proc root without that file (a fixture tree) is assumed to have one.
pub fn drm_loaded(proc_root: &Path) -> bool {
    match std::fs::read_to_string(proc_root.join("devices")) {
        Ok(t) => t.lines().any(|l| l.split_whitespace().nth(1) == Some("drm")),
        Err(_) => true,
    }
}

/// The DRM clients a process holds, deduplicated by (driver, device, client id).
pub fn read_drm_clients(proc_root: &Path, pid: u32) -> std::io::Result<Vec<DrmClient>> {
    let dir = proc_root.join(pid.to_string());
    let mut out: Vec<DrmClient> = Vec::new();
    for entry in std::fs::read_dir(dir.join("fd"))? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let t = target.as_os_str().as_encoded_bytes();
        if !(t.starts_with(b"/dev/dri/") || t.starts_with(b"/dev/accel/")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join("fdinfo").join(entry.file_name())) else {
            continue;
        };
        if let Some(c) = parse_fdinfo(&text) {
            // NVIDIA's DRM clients carry no usage stats; NVML covers them
            if c.driver.starts_with("nvidia") {
                continue;
            }
            if !out.iter().any(|o| o.key() == c.key()) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

struct NvDevice {
    index: u32,
    label: String,
    uuid: Option<String>,
    /// Newest process utilisation sample seen (µs), carried between passes.
    last_seen: Option<u64>,
    process_util: bool,
}

struct NvmlState {
    nvml: Nvml,
    devices: Vec<NvDevice>,
}

/// Why NVML could not be used, in words.
fn describe_nvml_error(path: &Path, source: LibrarySource, e: &NvmlError) -> String {
    let from = match source {
        LibrarySource::Env => format!(" (from {NVML_LIBRARY_ENV})"),
        LibrarySource::Config => " (from gpu.nvml_library)".to_string(),
        LibrarySource::Default => String::new(),
    };
    let p = path.display();
    match e {
        NvmlError::LibloadingError(_) if source == LibrarySource::Default => format!("no NVIDIA driver ({p} not found)"),
        NvmlError::LibloadingError(le) => format!("NVML library {p}{from} could not be loaded: {le}"),
        NvmlError::DriverNotLoaded => format!("NVIDIA driver not loaded (NVML library {p}{from} is there)"),
        NvmlError::NoPermission => format!("no permission to talk to the NVIDIA driver (NVML library {p}{from})"),
        NvmlError::FailedToLoadSymbol(s) => format!("NVML library {p}{from} is not NVML: {s}"),
        other => format!("NVML library {p}{from}: {other}"),
    }
}

fn init_nvml(cfg: &GpuConfig, env: Option<OsString>) -> (Result<NvmlState, String>, LibrarySource) {
    let (path, source) = nvml_library(env, cfg.nvml_library.as_deref());
    let nvml = match Nvml::builder().lib_path(path.as_os_str()).init() {
        Ok(n) => n,
        Err(e) => return (Err(describe_nvml_error(&path, source, &e)), source),
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => return (Err(describe_nvml_error(&path, source, &e)), source),
    };
    let mut devices = Vec::new();
    for index in 0..count {
        let Ok(d) = nvml.device_by_index(index) else { continue };
        let name = d.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        devices.push(NvDevice {
            index,
            label: format!("nvidia{index} {name}"),
            uuid: d.uuid().ok(),
            last_seen: None,
            process_util: true,
        });
    }
    (Ok(NvmlState { nvml, devices }), source)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// NVML's view of one process on one GPU: pid, GPU label, utilisation since the last pass, memory.
type NvmlUse = (u32, String, Option<f64>, u64);

impl NvmlState {
    /// One pass over every NVIDIA GPU: per-GPU figures and per-pid use.
    fn pass(&mut self, problems: &mut Vec<String>) -> (Vec<GpuStat>, Vec<NvmlUse>) {
        let mut stats = Vec::new();
        let mut uses = Vec::new();
        for dev in &mut self.devices {
            let d = match self.nvml.device_by_index(dev.index) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{}: {e}", dev.label));
                    continue;
                }
            };
            let util = d.utilization_rates().ok().map(|u| u.gpu as f64);
            let mem = d.memory_info().ok();
            let power = d.power_usage().ok().map(|mw| mw as f64 / 1000.0);
            // memory by pid: a process with both contexts is listed twice, with the same memory
            let mut procs: BTreeMap<u32, u64> = BTreeMap::new();
            for list in [d.running_compute_processes(), d.running_graphics_processes()] {
                match list {
                    Ok(l) => {
                        for p in l {
                            let m = match p.used_gpu_memory {
                                nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
                            };
                            let e = procs.entry(p.pid).or_default();
                            *e = (*e).max(m);
                        }
                    }
                    Err(e) => problems.push(format!("{}: running processes: {e}", dev.label)),
                }
            }
            let samples = if dev.process_util {
                match d.process_utilization_stats(dev.last_seen) {
                    Ok(s) => Some(s),
                    Err(NvmlError::NotFound) => Some(Vec::new()),
                    Err(NvmlError::NotSupported) => {
                        dev.process_util = false;
                        None
                    }
                    Err(e) => {
                        problems.push(format!("{}: process utilisation: {e}", dev.label));
                        None
                    }
                }
            } else {
                None
            };
            let mut per_pid: BTreeMap<u32, Option<f64>> = procs.keys().map(|p| (*p, None)).collect();
            match &samples {
                Some(s) => {
                    let mut sums: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
                    for x in s {
                        let e = sums.entry(x.pid).or_default();
                        e.0 += x.sm_util as f64;
                        e.1 += 1;
                    }
                    for v in per_pid.values_mut() {
                        *v = Some(0.0);
                    }
                    for (pid, (sum, n)) in sums {
                        per_pid.insert(pid, Some(sum / n as f64));
                    }
                    let newest = s.iter().map(|x| x.timestamp).max();
                    dev.last_seen = Some(newest.unwrap_or_else(now_us).max(dev.last_seen.unwrap_or(0)));
                }
                None if procs.len() == 1 => {
                    // no per-process samples: the only process on the GPU gets its utilisation
                    if let Some(v) = per_pid.values_mut().next() {
                        *v = util;
                    }
                }
                None => {}
            }
            stats.push(GpuStat {
                gpu: dev.label.clone(),
                driver: "nvidia".into(),
                uuid: dev.uuid.clone(),
                utilization_percent: util,
                memory_used_bytes: mem.as_ref().map(|m| m.used),
                memory_total_bytes: mem.as_ref().map(|m| m.total),
                power_watts: power,
                processes: per_pid.len(),
            });
            for (pid, u) in per_pid {
                uses.push((pid, dev.label.clone(), u, procs.get(&pid).copied().unwrap_or(0)));
            }
        }
        (stats, uses)
    }
}

/// The GPU sensor.
pub struct GpuSensor {
    root: PathBuf,
    cfg: GpuConfig,
    nvml: Option<NvmlState>,
    /// Why NVML is not in use, and whether it was asked for by name.
    nvml_problem: Option<(String, bool)>,
    drm_prev: HashMap<(ProcKey, ClientKey), DrmClient>,
    last_pass: Option<Instant>,
    gpus: Vec<GpuStat>,
    uses: Vec<ProcessGpuUse>,
    denied: usize,
    problems: Vec<String>,
    /// The last pass found neither NVML nor a DRM driver.
    unavailable: bool,
    /// Slurm's jobs on this node, when this is a Slurm node.
    slurm: Option<crate::host::slurm::SlurmJobs>,
    /// The kubelet's device allocations, when the config names the file.
    kube: Option<crate::kube::Checkpoint>,
}

impl GpuSensor {
    /// A sensor over the proc root `root`; loads NVML now (once), from
    /// `RIGWATCH_NVML_LIBRARY`, the configured path, or the usual name.
    pub fn new(root: &Path, cfg: GpuConfig) -> Self {
        Self::with_env(root, cfg, std::env::var_os(NVML_LIBRARY_ENV))
    }

    /// As [`GpuSensor::new`], with the value of `RIGWATCH_NVML_LIBRARY` given.
    pub fn with_env(root: &Path, cfg: GpuConfig, env: Option<OsString>) -> Self {
        let (nvml, source) = init_nvml(&cfg, env);
        let cfg_slurm = cfg.slurm_squeue.clone();
        let cfg_kube = cfg.kubelet_checkpoint.clone();
        let (nvml, nvml_problem) = match nvml {
            Ok(n) => (Some(n), None),
            Err(why) => (None, Some((why, source != LibrarySource::Default))),
        };
        GpuSensor {
            root: root.to_path_buf(),
            cfg,
            nvml,
            nvml_problem,
            drm_prev: HashMap::new(),
            last_pass: None,
            gpus: Vec::new(),
            uses: Vec::new(),
            denied: 0,
            problems: Vec::new(),
            unavailable: false,
            slurm: match &cfg_slurm {
                Some(p) => Some(crate::host::slurm::SlurmJobs::new(p.clone(), crate::host::slurm::short_hostname())),
                None => crate::host::slurm::SlurmJobs::from_path(),
            },
            kube: cfg_kube.map(crate::kube::Checkpoint::new),
        }
    }

    /// Whether NVML was loaded and initialised.
    pub fn nvml_loaded(&self) -> bool {
        self.nvml.is_some()
    }

    /// Why NVML is not in use, if it is not.
    pub fn nvml_problem(&self) -> Option<&str> {
        self.nvml_problem.as_ref().map(|(s, _)| s.as_str())
    }

    /// The GPUs the last pass saw (NVML GPUs with their own figures; DRM GPUs with their clients').
    pub fn gpus(&self) -> &[GpuStat] {
        &self.gpus
    }

    /// Every process's GPU use over the last window (also those below the threshold).
    pub fn uses(&self) -> &[ProcessGpuUse] {
        &self.uses
    }

    fn drm_pass(&mut self, snap: &Snapshot, wall: Option<Duration>) -> Vec<ProcessGpuUse> {
        let wall_ns = wall.map(|w| w.as_nanos() as u64).unwrap_or(0);
        let mut cur: HashMap<(ProcKey, ClientKey), DrmClient> = HashMap::new();
        let mut uses = Vec::new();
        for (key, p) in &snap.procs {
            if p.kernel_thread {
                continue;
            }
            let clients = match read_drm_clients(&self.root, key.pid) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    self.denied += 1;
                    continue;
                }
                Err(_) => continue,
            };
            if clients.is_empty() {
                continue;
            }
            let mut by_gpu: BTreeMap<String, Vec<&DrmClient>> = BTreeMap::new();
            for c in &clients {
                by_gpu.entry(c.gpu()).or_default().push(c);
            }
            for (gpu, cs) in by_gpu {
                let pairs: Vec<(&DrmClient, &DrmClient)> = cs
                    .iter()
                    .filter_map(|c| self.drm_prev.get(&(*key, c.key())).map(|p| (p, *c)))
                    .collect();
                let util = if wall_ns > 0 { drm_utilization(&pairs, wall_ns) } else { None };
                let memory_bytes = cs.iter().map(|c| c.memory_bytes()).sum();
                uses.push(ProcessGpuUse {
                    key: *key,
                    gpu,
                    utilization_percent: util,
                    memory_bytes,
                });
            }
            for c in clients {
                cur.insert((*key, c.key()), c);
            }
        }
        self.drm_prev = cur;
        uses
    }
}

/// Whose unscheduled GPU use it is, against the Slurm jobs that user holds
/// on this node; `busy_jobs` are the jobs whose processes use a GPU now.
pub fn allocation(jobs: &[crate::host::slurm::Job], uid: u32, busy_jobs: &[&str]) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let who = match &name {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let mine: Vec<&crate::host::slurm::Job> = jobs
        .iter()
        .filter(|j| j.uid == Some(uid) || (j.uid.is_none() && name.as_deref() == Some(j.user.as_str())))
        .collect();
    if mine.is_empty() {
        return format!("{who} holds no Slurm job on this node");
    }
    let held: Vec<String> = mine
        .iter()
        .take(4)
        .map(|j| {
            let idle = j.has_gpus() && j.state == "RUNNING" && !busy_jobs.contains(&j.id.as_str());
            match idle {
                true => format!("job {} ({}, {}; its processes use no GPU)", j.id, j.state, j.gres),
                false => j.describe(),
            }
        })
        .collect();
    let more = if mine.len() > 4 {
        format!(" and {} more", mine.len() - 4)
    } else {
        String::new()
    };
    format!(
        "{who} holds {}{more} on this node and runs this outside {}",
        held.join(", "),
        if mine.len() == 1 { "it" } else { "them" }
    )
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

impl Sensor for GpuSensor {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        let window = self
            .last_pass
            .and_then(|t| snap.at.checked_duration_since(t))
            .filter(|d| !d.is_zero());
        self.last_pass = Some(snap.at);
        self.denied = 0;
        self.problems.clear();
        let drm = drm_loaded(&self.root);
        self.unavailable = self.nvml.is_none() && !drm;
        if self.unavailable {
            let nvml = self.nvml_problem.as_ref().map(|(s, _)| s.as_str()).unwrap_or("no NVIDIA driver");
            return Err(SensorError {
                sensor: "gpu",
                message: format!(
                    "unavailable: {nvml}; no DRM GPU driver (no drm device in {})",
                    self.root.join("devices").display()
                ),
            });
        }
        let mut gpus = Vec::new();
        let mut uses = Vec::new();
        if let Some(nv) = &mut self.nvml {
            let (stats, per_pid) = nv.pass(&mut self.problems);
            gpus.extend(stats);
            let by_pid: HashMap<u32, ProcKey> = snap
                .procs
                .iter()
                .filter(|(_, p)| !p.kernel_thread)
                .map(|(k, _)| (k.pid, *k))
                .collect();
            let mut missing = 0;
            for (pid, gpu, util, mem) in per_pid {
                match by_pid.get(&pid) {
                    Some(k) => uses.push(ProcessGpuUse {
                        key: *k,
                        gpu,
                        utilization_percent: util,
                        memory_bytes: mem,
                    }),
                    None => missing += 1,
                }
            }
            if missing > 0 {
                self.problems.push(format!(
                    "{missing} GPU processes reported by NVML are not in {} (exited, or another pid namespace)",
                    self.root.display()
                ));
            }
        }
        if drm {
            let d = self.drm_pass(snap, window);
            let mut per_gpu: BTreeMap<String, (String, u64, usize)> = BTreeMap::new();
            for u in &d {
                let e = per_gpu.entry(u.gpu.clone()).or_default();
                e.0 = u.gpu.split(' ').next().unwrap_or("").to_string();
                e.1 += u.memory_bytes;
                e.2 += 1;
            }
            gpus.extend(per_gpu.into_iter().map(|(gpu, (driver, mem, n))| GpuStat {
                gpu,
                driver,
                uuid: None,
                utilization_percent: None,
                memory_used_bytes: Some(mem),
                memory_total_bytes: None,
                power_watts: None,
                processes: n,
            }));
            uses.extend(d);
        }
        self.gpus = gpus;
        self.uses = if window.is_some() { uses } else { Vec::new() };
        let Some(window) = window else { return Ok(()) };
        let window_seconds = round(window.as_secs_f64(), 2);
        let busy: Vec<(&ProcessGpuUse, f64, &super::Proc, Option<String>)> = self
            .uses
            .iter()
            .filter_map(|u| {
                let util = u.utilization_percent.filter(|&x| x >= UTIL_THRESHOLD_PERCENT)?;
                let p = snap.procs.get(&u.key)?;
                Some((u, util, p, scheduler_of(&p.fixed.cgroup, &self.cfg.scheduler_cgroups)))
            })
            .collect();
        // Slurm jobs whose processes use a GPU this pass
        let busy_jobs: Vec<&str> = busy
            .iter()
            .filter_map(|(_, _, _, s)| s.as_deref()?.strip_prefix("slurm job_"))
            .collect();
        for (u, util, p, scheduler) in busy.iter().cloned() {
            let mut allocation = match (&scheduler, &mut self.slurm) {
                (None, Some(slurm)) => match slurm.jobs(snap.at) {
                    Ok(jobs) => Some(allocation(jobs, p.fixed.uid, &busy_jobs)),
                    Err(e) => {
                        self.problems.push(format!("Slurm: {e}"));
                        None
                    }
                },
                _ => None,
            };
            let mut weight = if scheduler.is_some() { Weight::Info } else { Weight::Suspicious };
            // in a pod: scheduled only if the kubelet gave the pod a GPU
            let pod = crate::host::process::cgroup_identity(&p.fixed.cgroup).1;
            if let (Some("kubernetes"), Some(pod), Some(ck)) = (scheduler.as_deref(), pod, &mut self.kube) {
                match ck.get() {
                    Some(Ok(a)) => {
                        if let Some(why) = crate::kube::pod_gpu_allocation(a, &pod) {
                            allocation = Some(why);
                            weight = Weight::Suspicious;
                        }
                    }
                    Some(Err(e)) => self.problems.push(format!("Kubernetes: {e}")),
                    None => {}
                }
            }
            out.push(Observation::Evidence(
                u.key,
                Evidence::heuristic(
                    EvidenceKind::Gpu {
                        gpu: u.gpu.clone(),
                        utilization_percent: round(util, 1),
                        memory_bytes: u.memory_bytes,
                        window_seconds,
                        scheduler,
                        allocation,
                    },
                    weight,
                ),
            ));
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.unavailable {
            // the pass's error said it all
            return v;
        }
        if let Some((why, true)) = &self.nvml_problem {
            v.push(format!("gpu: {why}"));
        }
        if self.denied > 0 {
            v.push(format!(
                "GPU clients (DRM fdinfo) of {} processes: permission denied (run as root or with CAP_SYS_PTRACE)",
                self.denied
            ));
        }
        v.extend(self.problems.iter().map(|p| format!("gpu: {p}")));
        v
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("gpus", self.gpus.len() as u64), ("gpu_processes", self.uses.len() as u64)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::process::{Proc, ProcStatic};
    use rigwatch_signatures::{score, Origin, Severity};
    use std::sync::Arc;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpu").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    const KIB: u64 = 1024;

    #[test]
    fn parses_amdgpu() {
        let c = parse_fdinfo(&fixture("amdgpu.fdinfo")).expect("a DRM client");
        assert_eq!(c.driver, "amdgpu");
        assert_eq!(c.client_id, 21);
        assert_eq!(c.pdev.as_deref(), Some("0000:0c:00.0"));
        assert_eq!(c.gpu(), "amdgpu 0000:0c:00.0");
        assert_eq!(c.engines["compute"].busy_ns, Some(81_234_567_890));
        assert_eq!(c.engines["gfx"].busy_ns, Some(20_530_040));
        assert_eq!(c.engines["enc_1"].busy_ns, Some(0));
        assert_eq!(c.engines["compute"].capacity, 1);
        // resident per region, not resident + drm-memory + total
        assert_eq!(c.memory["vram"].bytes(), 4_194_304 * KIB);
        assert_eq!(
            c.memory["gtt"].memory,
            Some(6152 * KIB),
            "\"drm-memory-gtt: \\t\" with amdgpu's space"
        );
        assert_eq!(c.memory_bytes(), (4_194_304 + 6152) * KIB);
        assert!(!c.memory.contains_key("visible-vram"), "amd-* keys are not DRM keys");
    }

    #[test]
    fn parses_amdgpu_legacy_memory_keys() {
        let c = parse_fdinfo(&fixture("amdgpu-legacy.fdinfo")).unwrap();
        assert_eq!((c.client_id, c.pdev.as_deref()), (5, Some("0000:03:00.0")));
        assert_eq!(c.memory_bytes(), (1_167_440 + 10_100) * KIB);
        assert_eq!(c.engines["gfx"].busy_ns, Some(9_017_645_412));
    }

    #[test]
    fn parses_i915() {
        let c = parse_fdinfo(&fixture("i915.fdinfo")).unwrap();
        assert_eq!((c.driver.as_str(), c.client_id), ("i915", 7));
        assert_eq!(c.engines["render"].busy_ns, Some(25_662_044_495));
        assert_eq!(c.engines["video"].capacity, 2);
        assert_eq!(c.engines["video-enhance"].busy_ns, Some(0));
        assert!(!c.engines.contains_key("capacity-video"));
        assert_eq!(c.memory["system0"].bytes(), 10_240 * KIB);
        assert_eq!(c.memory["stolen-system0"].bytes(), 0);
        assert_eq!(c.memory_bytes(), 10_240 * KIB);
    }

    #[test]
    fn parses_xe_cycles() {
        let c = parse_fdinfo(&fixture("xe.fdinfo")).unwrap();
        assert_eq!((c.driver.as_str(), c.client_id), ("xe", 43));
        let rcs = &c.engines["rcs"];
        assert_eq!(
            (rcs.cycles, rcs.total_cycles, rcs.busy_ns),
            (Some(28_257_900), Some(7_655_183_225), None)
        );
        assert_eq!(c.engines["ccs"].capacity, 4);
        assert!(
            !c.memory.contains_key("cycles-rcs"),
            "drm-total-cycles- is an engine key, not a region"
        );
        assert_eq!(c.memory_bytes(), (192 + 23_992) * KIB);
    }

    #[test]
    fn other_descriptors_are_not_clients() {
        assert_eq!(parse_fdinfo(&fixture("regular-file.fdinfo")), None);
        assert_eq!(parse_fdinfo(&fixture("signalfd.fdinfo")), None);
        assert_eq!(parse_fdinfo("drm-driver:\ti915\n"), None, "no client id");
        assert_eq!(parse_fdinfo(""), None);
        assert_eq!(parse_quantity("12 MiB"), Some(12 << 20));
        assert_eq!(parse_quantity("7"), Some(7));
        assert_eq!(parse_quantity("7 furlongs"), None);
    }

    fn client(engines: &[(&str, u64)], capacity: &[(&str, u64)]) -> DrmClient {
        let mut t = String::from("drm-driver:\tamdgpu\ndrm-client-id:\t1\ndrm-pdev:\t0000:03:00.0\n");
        for (e, ns) in engines {
            t.push_str(&format!("drm-engine-{e}:\t{ns} ns\n"));
        }
        for (e, n) in capacity {
            t.push_str(&format!("drm-engine-capacity-{e}:\t{n}\n"));
        }
        parse_fdinfo(&t).unwrap()
    }

    #[test]
    fn utilisation_is_busy_delta_over_wall_delta() {
        let wall = 2_000_000_000;
        let a = client(&[("gfx", 1_000), ("compute", 5_000_000_000)], &[]);
        let b = client(&[("gfx", 200_001_000), ("compute", 6_500_000_000)], &[]);
        // compute: 1.5 s busy in 2 s; gfx 0.2 s: the busiest engine counts
        assert_eq!(drm_utilization(&[(&a, &b)], wall), Some(75.0));
        let busy = engine_busy(&a, &b, wall);
        assert!((busy["gfx"] - 0.1).abs() < 1e-9);
        // the same counters read twice: idle
        assert_eq!(drm_utilization(&[(&b, &b)], wall), Some(0.0));
        // a counter that went backwards (a new client behind a reused id) is idle, not negative
        assert_eq!(drm_utilization(&[(&b, &a)], wall), Some(0.0));
        // two clients of one process on one GPU add up, capped at 100 %
        assert_eq!(drm_utilization(&[(&a, &b), (&a, &b)], wall), Some(100.0));
        // no comparable counters: unknown, not zero
        assert_eq!(drm_utilization(&[], wall), None);
        let none = client(&[], &[]);
        assert_eq!(drm_utilization(&[(&none, &none)], wall), None);
        // an engine class of 2 engines busy 2 s in 2 s is half used
        let v0 = client(&[("video", 0)], &[("video", 2)]);
        let v1 = client(&[("video", 2_000_000_000)], &[("video", 2)]);
        assert_eq!(drm_utilization(&[(&v0, &v1)], wall), Some(50.0));
    }

    #[test]
    fn xe_utilisation_from_cycles() {
        let a = parse_fdinfo(&fixture("xe.fdinfo")).unwrap();
        let b = parse_fdinfo(
            &fixture("xe.fdinfo")
                .replace("drm-cycles-rcs:\t28257900", "drm-cycles-rcs:\t628257900")
                .replace("drm-total-cycles-rcs:\t7655183225", "drm-total-cycles-rcs:\t8655183225"),
        )
        .unwrap();
        // 600 M busy cycles of 1000 M: 60 %, whatever the wall time
        let u = drm_utilization(&[(&a, &b)], 1).unwrap();
        assert!((u - 60.0).abs() < 1e-9, "{u}");
    }

    #[test]
    fn schedulers_from_cgroups() {
        let none: Vec<String> = Vec::new();
        assert_eq!(
            scheduler_of("/system.slice/slurmstepd.scope/job_123/step_0/user/task_0", &none).as_deref(),
            Some("slurm job_123")
        );
        assert_eq!(
            scheduler_of("/slurm/uid_1000/job_77/step_batch", &none).as_deref(),
            Some("slurm job_77")
        );
        assert_eq!(
            scheduler_of(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-ab.scope",
                &none
            )
            .as_deref(),
            Some("kubernetes")
        );
        assert_eq!(scheduler_of("/", &none), None);
        assert_eq!(scheduler_of("/user.slice/user-1000.slice/session-3.scope", &none), None);
        assert_eq!(scheduler_of("/system.slice/job_runner.service", &none), None, "job_ needs a number");
        assert_eq!(scheduler_of("/home/job_12abc", &none), None);
        let pbs = vec!["pbs_jobs.service".to_string(), String::new()];
        assert_eq!(
            scheduler_of("/pbs_jobs.service/jobid/42.server", &pbs).as_deref(),
            Some("cgroup pbs_jobs.service")
        );
        assert_eq!(scheduler_of("/user.slice", &pbs), None, "an empty entry matches nothing");
    }

    #[test]
    fn library_path_order() {
        let cfg = Path::new("/opt/nvidia/libnvidia-ml.so.1");
        assert_eq!(
            nvml_library(Some("/env/libnvidia-ml.so.1".into()), Some(cfg)),
            (PathBuf::from("/env/libnvidia-ml.so.1"), LibrarySource::Env)
        );
        assert_eq!(nvml_library(None, Some(cfg)), (cfg.to_path_buf(), LibrarySource::Config));
        assert_eq!(nvml_library(Some("".into()), Some(cfg)), (cfg.to_path_buf(), LibrarySource::Config));
        assert_eq!(
            nvml_library(None, None),
            (PathBuf::from("libnvidia-ml.so.1"), LibrarySource::Default)
        );
    }

    // ---- the fake NVML (tests/gpu/fake_nvml.c), loaded through the real code ----

    /// Compiles the fake NVML into a fresh directory, as `libnvidia-ml.so.1`.
    fn fake_nvml(conf: &str) -> (tempfile::TempDir, PathBuf) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gpu/fake_nvml.c");
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libnvidia-ml.so.1");
        let out = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("cc (gcc) is needed to build the fake NVML");
        assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.path().join("fake_nvml.conf"), conf).unwrap();
        (dir, lib)
    }

    /// Reads one of the fake library's counters from the copy the sensor loaded.
    fn fake_counter<T: Copy>(lib: &Path, name: &str) -> T {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(lib.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        unsafe {
            let h = libc::dlopen(p.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            assert!(!h.is_null(), "the fake NVML is not loaded");
            let s = libc::dlsym(h, n.as_ptr()) as *const T;
            assert!(!s.is_null(), "{name}");
            let v = *s;
            libc::dlclose(h);
            v
        }
    }

    /// A proc root with no DRM driver (so only NVML is looked at).
    fn root_without_drm() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("devices"), "Character devices:\n  1 mem\n  4 tty\n 10 misc\n").unwrap();
        d
    }

    fn proc(pid: u32, comm: &str, cgroup: &str) -> Proc {
        let key = ProcKey {
            pid,
            start_time: 1000 + pid as u64,
        };
        Proc::new(
            key,
            1,
            Arc::new(ProcStatic {
                comm: comm.into(),
                argv: vec![comm.into()],
                argv_read: true,
                exe: Some(format!("/usr/bin/{comm}")),
                cgroup: cgroup.into(),
                user: "root".into(),
                ..Default::default()
            }),
        )
    }

    fn snap(at: Instant, procs: &[Proc]) -> Snapshot {
        Snapshot {
            at,
            procs: procs.iter().map(|p| (p.key, p.clone())).collect(),
            ticks_per_second: 100,
            partial: false,
        }
    }

    fn gpu_evidence(out: &[Observation]) -> HashMap<u32, Evidence> {
        out.iter()
            .filter_map(|o| match o {
                Observation::Evidence(k, e) if e.kind() == "gpu" => Some((k.pid, e.clone())),
                _ => None,
            })
            .collect()
    }

    /// A `squeue` that prints `jobs` (and logs its calls to `calls`).
    fn fake_squeue(dir: &Path, jobs: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("squeue");
        std::fs::write(&p, format!("#!/bin/sh\necho \"$@\" >> {}/calls\nprintf '{jobs}'\n", dir.display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn allocation_of(e: &Evidence) -> Option<String> {
        match &e.detail {
            EvidenceKind::Gpu { allocation, .. } => allocation.clone(),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn unscheduled_gpu_use_is_named_against_the_users_slurm_jobs() {
        let (_d, lib) = fake_nvml("procs=4242:95:4096,4444:80:2048\n");
        let root = root_without_drm();
        let sq = tempfile::tempdir().unwrap();
        // root holds job 77 (its process trains on the GPU) and job 78, whose GPUs idle
        let cfg = GpuConfig {
            nvml_library: Some(lib),
            slurm_squeue: Some(fake_squeue(
                sq.path(),
                "77|root|0|RUNNING|gres/gpu:1\\n78|root|0|RUNNING|gres/gpu:2\\n79|alice|1000|PENDING|gres/gpu:1\\n",
            )),
            ..Default::default()
        };
        let mut s = GpuSensor::with_env(root.path(), cfg, None);
        let procs = [
            proc(4242, "busysim", "/user.slice/user-0.slice/session-2.scope"),
            proc(4444, "train", "/system.slice/slurmstepd.scope/job_77/step_0/user/task_0"),
        ];
        let t0 = Instant::now();
        let mut out = Vec::new();
        s.observe(&snap(t0, &procs), &mut out).unwrap();
        s.observe(&snap(t0 + Duration::from_secs(2), &procs), &mut out).unwrap();
        let ev = gpu_evidence(&out);
        let a = allocation_of(&ev[&4242]).expect("unscheduled use is named");
        let who = format!(
            "{} (uid 0)",
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0))
                .unwrap()
                .map_or("uid 0".into(), |u| format!("user {}", u.name))
        );
        assert_eq!(
            a,
            format!(
                "{who} holds job 77 (RUNNING, gres/gpu:1), job 78 (RUNNING, gres/gpu:2; its processes use no GPU) on this node and runs this outside them"
            )
        );
        assert_eq!(ev[&4242].weight, Weight::Suspicious);
        assert!(
            ev[&4242].summary().ends_with(&format!("outside any scheduler job; {a}")),
            "{}",
            ev[&4242].summary()
        );
        assert_eq!(allocation_of(&ev[&4444]), None, "use inside a job is not questioned");
        let calls = std::fs::read_to_string(sq.path().join("calls")).unwrap();
        assert_eq!(
            calls.lines().count(),
            1,
            "asked once, and only when unscheduled use was seen: {calls}"
        );
    }

    #[test]
    fn gpu_use_in_a_pod_the_kubelet_gave_no_gpu_is_not_scheduled() {
        let (_d, lib) = fake_nvml("procs=4242:95:4096,4444:80:2048\n");
        let root = root_without_drm();
        let kd = tempfile::tempdir().unwrap();
        let ck = kd.path().join("kubelet_internal_checkpoint");
        std::fs::write(
            &ck,
            r#"{"Data":{"PodDeviceEntries":[{"PodUID":"1b2c3d4e-1111-2222-3333-444455556666","ContainerName":"train","ResourceName":"nvidia.com/gpu","DeviceIDs":{"0":["GPU-fa4e0000-0000-4000-8000-000000000000"]},"AllocResp":""}],"RegisteredDevices":{"nvidia.com/gpu":["GPU-fa4e0000-0000-4000-8000-000000000000"]}},"Checksum":1}"#,
        )
        .unwrap();
        let cfg = GpuConfig {
            nvml_library: Some(lib),
            kubelet_checkpoint: Some(ck),
            ..Default::default()
        };
        let mut s = GpuSensor::with_env(root.path(), cfg, None);
        let pod = |uid: &str| {
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                uid.replace('-', "_"),
                "0123456789abcdef".repeat(4)
            )
        };
        let procs = [
            proc(4242, "kworker", &pod("aaaaaaaa-1111-2222-3333-444455556666")),
            proc(4444, "train", &pod("1b2c3d4e-1111-2222-3333-444455556666")),
        ];
        let t0 = Instant::now();
        let mut out = Vec::new();
        s.observe(&snap(t0, &procs), &mut out).unwrap();
        s.observe(&snap(t0 + Duration::from_secs(2), &procs), &mut out).unwrap();
        let ev = gpu_evidence(&out);
        assert_eq!(ev[&4444].weight, Weight::Info, "allocated a GPU: scheduled");
        assert_eq!(allocation_of(&ev[&4444]), None);
        assert_eq!(ev[&4242].weight, Weight::Suspicious, "a pod with no GPU allocated");
        assert_eq!(
            allocation_of(&ev[&4242]).as_deref(),
            Some("pod aaaaaaaa-1111-2222-3333-444455556666 was allocated no nvidia.com/gpu by the kubelet")
        );
        assert!(
            ev[&4242].summary().contains("in kubernetes; pod aaaaaaaa"),
            "{}",
            ev[&4242].summary()
        );
    }

    #[test]
    fn a_user_with_no_job_and_a_broken_squeue() {
        let jobs = [crate::host::slurm::Job {
            id: "9".into(),
            user: "alice".into(),
            uid: Some(4_000_001),
            state: "RUNNING".into(),
            gres: "gres/gpu:1".into(),
        }];
        assert_eq!(allocation(&jobs, 4_000_002, &[]), "uid 4000002 holds no Slurm job on this node");
        assert_eq!(
            allocation(&jobs, 4_000_001, &["9"]),
            "uid 4000001 holds job 9 (RUNNING, gres/gpu:1) on this node and runs this outside it"
        );
        // squeue fails: the evidence stands without allocation, the problem is said
        let (_d, lib) = fake_nvml("procs=4242:95:4096\n");
        let root = root_without_drm();
        let cfg = GpuConfig {
            nvml_library: Some(lib),
            slurm_squeue: Some("/nonexistent/squeue".into()),
            ..Default::default()
        };
        let mut s = GpuSensor::with_env(root.path(), cfg, None);
        let procs = [proc(4242, "busysim", "/user.slice")];
        let t0 = Instant::now();
        let mut out = Vec::new();
        s.observe(&snap(t0, &procs), &mut out).unwrap();
        s.observe(&snap(t0 + Duration::from_secs(2), &procs), &mut out).unwrap();
        assert_eq!(allocation_of(&gpu_evidence(&out)[&4242]), None);
        assert!(
            s.problems().iter().any(|p| p.contains("Slurm: /nonexistent/squeue")),
            "{:?}",
            s.problems()
        );
    }

    #[test]
    fn nvml_from_the_configured_path_per_process_use_and_scheduler() {
        let (_d, lib) = fake_nvml("procs=4242:95:4096,4343:10:512,4444:80:2048:g\n");
        let root = root_without_drm();
        let cfg = GpuConfig {
            nvml_library: Some(lib.clone()),
            ..Default::default()
        };
        let mut s = GpuSensor::with_env(root.path(), cfg, None);
        assert!(s.nvml_loaded(), "{:?}", s.nvml_problem());
        assert_eq!(fake_counter::<i32>(&lib, "fake_nvml_init_calls"), 1);
        let procs = [
            proc(4242, "busysim", "/user.slice/user-1000.slice/session-2.scope"),
            proc(4343, "python3", "/"),
            proc(4444, "train", "/system.slice/slurmstepd.scope/job_77/step_0/user/task_0"),
        ];
        let t0 = Instant::now();
        let mut out = Vec::new();
        s.observe(&snap(t0, &procs), &mut out).unwrap();
        assert!(out.is_empty(), "the first pass only primes: {out:?}");
        assert_eq!(
            fake_counter::<u64>(&lib, "fake_nvml_last_seen"),
            0,
            "the first query asks for every buffered sample"
        );
        // per-GPU figures
        let g = &s.gpus()[0];
        assert_eq!(g.gpu, "nvidia0 Fake NVIDIA GPU 0");
        assert_eq!(g.uuid.as_deref(), Some("GPU-fa4e0000-0000-4000-8000-000000000000"));
        assert_eq!(g.utilization_percent, Some(95.0));
        assert_eq!(g.memory_used_bytes, Some((4096 + 512 + 2048) << 20));
        assert_eq!(g.memory_total_bytes, Some(24 << 30));
        assert_eq!(g.power_watts, Some(187.0));
        assert_eq!(g.processes, 3, "compute and graphics processes");

        std::thread::sleep(Duration::from_millis(5));
        let first_seen = now_us();
        s.observe(&snap(t0 + Duration::from_secs(2), &procs), &mut out).unwrap();
        let last_seen: u64 = fake_counter(&lib, "fake_nvml_last_seen");
        assert!(
            last_seen > 0 && last_seen < first_seen,
            "the second query carries the first one's newest timestamp ({last_seen})"
        );
        s.observe(&snap(t0 + Duration::from_secs(4), &procs), &mut Vec::new()).unwrap();
        assert!(
            fake_counter::<u64>(&lib, "fake_nvml_last_seen") > last_seen,
            "and the third the second's"
        );
        assert_eq!(
            fake_counter::<i32>(&lib, "fake_nvml_init_calls"),
            1,
            "NVML is initialised once, not per pass"
        );

        let ev = gpu_evidence(&out);
        assert_eq!(ev.len(), 2, "10 % is below the threshold: {ev:?}");
        let e = &ev[&4242];
        assert_eq!(
            e.detail,
            EvidenceKind::Gpu {
                gpu: "nvidia0 Fake NVIDIA GPU 0".into(),
                utilization_percent: 95.0,
                memory_bytes: 4 << 30,
                window_seconds: 2.0,
                scheduler: None,
                allocation: None
            }
        );
        assert_eq!(e.weight, Weight::Suspicious, "GPU use outside any scheduler job");
        assert!(e.summary().contains("outside any scheduler job"), "{}", e.summary());
        let e = &ev[&4444];
        match &e.detail {
            EvidenceKind::Gpu {
                utilization_percent,
                memory_bytes,
                scheduler,
                ..
            } => {
                assert_eq!((*utilization_percent, *memory_bytes), (80.0, 2 << 30), "a graphics process");
                assert_eq!(scheduler.as_deref(), Some("slurm job_77"));
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(e.weight, Weight::Info, "GPU use inside a Slurm job is context only");
        let low = s
            .uses()
            .iter()
            .find(|u| u.key.pid == 4343)
            .expect("below-threshold use is still recorded");
        assert_eq!((low.utilization_percent, low.memory_bytes), (Some(10.0), 512 << 20));
        assert_eq!(s.counters(), vec![("gpus", 1), ("gpu_processes", 3)]);
        assert!(s.problems().is_empty(), "{:?}", s.problems());

        // severities (DESIGN.md): the GPU evidence is activity
        let unscheduled = ev[&4242].clone();
        let scheduled = ev[&4444].clone();
        let h = |d, w| Evidence::heuristic(d, w);
        let name = h(
            EvidenceKind::ProcessName {
                name: "t-rex".into(),
                field: "comm".into(),
            },
            Weight::Likely,
        );
        let origin = h(
            EvidenceKind::ExecutableOrigin {
                origin: Origin::Deleted,
                path: "/tmp/x".into(),
            },
            Weight::Suspicious,
        );
        let content = h(
            EvidenceKind::BinaryContent {
                strings: vec!["T-Rex NVIDIA GPU miner".into()],
                path: "/x".into(),
                source: "executable".into(),
                yara: None,
            },
            Weight::Confirmed,
        );
        assert_eq!(
            score(std::slice::from_ref(&unscheduled)),
            Some(Severity::Suspicious),
            "unscheduled GPU use alone"
        );
        assert_eq!(
            score(std::slice::from_ref(&scheduled)),
            None,
            "a scheduled GPU job alone is nothing"
        );
        assert_eq!(score(&[scheduled.clone(), origin]), Some(Severity::Suspicious), "GPU + odd origin");
        assert_eq!(
            score(&[scheduled.clone(), name.clone()]),
            Some(Severity::Likely),
            "GPU + miner name"
        );
        assert_eq!(score(&[unscheduled.clone(), name]), Some(Severity::Likely));
        assert_eq!(score(&[scheduled, content]), Some(Severity::Confirmed), "GPU + miner binary");
        let f = rigwatch_signatures::Finding::assess("h", Default::default(), vec![unscheduled], 0).unwrap();
        let g = f.gpu.expect("the finding carries its GPU use");
        assert_eq!((g.utilization_percent, g.memory_bytes, g.gpus), (95.0, 4 << 30, 1));
    }

    #[test]
    fn nvml_environment_variable_comes_first() {
        let (_d, lib) = fake_nvml("procs=\n");
        let root = root_without_drm();
        let broken = GpuConfig {
            nvml_library: Some("/nonexistent/libnvidia-ml.so.1".into()),
            ..Default::default()
        };
        let s = GpuSensor::with_env(root.path(), broken, Some(lib.clone().into_os_string()));
        assert!(s.nvml_loaded(), "{:?}", s.nvml_problem());
        let good = GpuConfig {
            nvml_library: Some(lib),
            ..Default::default()
        };
        let mut s = GpuSensor::with_env(root.path(), good, Some("/nonexistent/env/libnvidia-ml.so.1".into()));
        assert!(!s.nvml_loaded());
        let why = s.nvml_problem().unwrap().to_string();
        assert!(
            why.contains("/nonexistent/env/libnvidia-ml.so.1") && why.contains("RIGWATCH_NVML_LIBRARY"),
            "{why}"
        );
        let e = s.observe(&snap(Instant::now(), &[]), &mut Vec::new()).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "gpu: unavailable: NVML library /nonexistent/env/libnvidia-ml.so.1 (from RIGWATCH_NVML_LIBRARY) could not be loaded"
            ),
            "{e}"
        );
        assert!(e.contains("no DRM GPU driver"), "{e}");
    }

    #[test]
    fn without_process_samples_the_only_process_gets_the_gpu_utilisation() {
        let (d, lib) = fake_nvml("process_util=unsupported\ndevice_util=88\nprocs=4242:0:3072\n");
        let root = root_without_drm();
        let mut s = GpuSensor::with_env(
            root.path(),
            GpuConfig {
                nvml_library: Some(lib),
                ..Default::default()
            },
            None,
        );
        let procs = [proc(4242, "busysim", "/"), proc(4343, "idle", "/")];
        let t0 = Instant::now();
        let mut out = Vec::new();
        s.observe(&snap(t0, &procs), &mut out).unwrap();
        s.observe(&snap(t0 + Duration::from_secs(3), &procs), &mut out).unwrap();
        let ev = gpu_evidence(&out);
        match &ev[&4242].detail {
            EvidenceKind::Gpu {
                utilization_percent,
                memory_bytes,
                window_seconds,
                ..
            } => {
                assert_eq!((*utilization_percent, *memory_bytes, *window_seconds), (88.0, 3 << 30, 3.0))
            }
            d => panic!("{d:?}"),
        }
        // two processes share the GPU: no one can be blamed for its utilisation
        std::fs::write(
            d.path().join("fake_nvml.conf"),
            "process_util=unsupported\ndevice_util=88\nprocs=4242:0:3072,4343:0:1024\n",
        )
        .unwrap();
        let mut out = Vec::new();
        s.observe(&snap(t0 + Duration::from_secs(6), &procs), &mut out).unwrap();
        assert!(gpu_evidence(&out).is_empty(), "{out:?}");
        assert!(s.uses().iter().all(|u| u.utilization_percent.is_none()));
    }

    #[test]
    fn driver_not_loaded_is_said_clearly() {
        let (_d, lib) = fake_nvml("init=driver_not_loaded\n");
        let root = root_without_drm();
        let mut s = GpuSensor::with_env(
            root.path(),
            GpuConfig {
                nvml_library: Some(lib.clone()),
                ..Default::default()
            },
            None,
        );
        assert!(!s.nvml_loaded());
        let e = s.observe(&snap(Instant::now(), &[]), &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("NVIDIA driver not loaded") && e.contains(lib.to_str().unwrap()), "{e}");
        assert!(s.problems().is_empty(), "said once, by the error: {:?}", s.problems());
    }

    #[test]
    fn no_library_and_no_drm_is_unavailable() {
        let root = root_without_drm();
        let mut s = GpuSensor::with_env(root.path(), GpuConfig::default(), None);
        if s.nvml_loaded() {
            eprintln!("this host has NVML; the no-driver message is not checked");
            return;
        }
        assert_eq!(s.nvml_problem(), Some("no NVIDIA driver (libnvidia-ml.so.1 not found)"));
        let p = snap(Instant::now(), &[proc(4242, "x", "/")]);
        let e = s.observe(&p, &mut Vec::new()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "gpu: unavailable: no NVIDIA driver (libnvidia-ml.so.1 not found); no DRM GPU driver (no drm device in {})",
                root.path().join("devices").display()
            )
        );
        // the same words every pass, so a scan says it once
        assert_eq!(s.observe(&p, &mut Vec::new()).unwrap_err().to_string(), e);
    }

    #[test]
    fn a_drm_driver_keeps_the_sensor_up_without_nvml() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("devices"), "Character devices:\n  1 mem\n226 drm\n").unwrap();
        let cfg = GpuConfig {
            nvml_library: Some("/nonexistent/libnvidia-ml.so.1".into()),
            ..Default::default()
        };
        let mut s = GpuSensor::with_env(root.path(), cfg, None);
        let p = snap(Instant::now(), &[proc(4242, "x", "/")]);
        s.observe(&p, &mut Vec::new()).expect("up for DRM");
        let notes = s.problems();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("/nonexistent/libnvidia-ml.so.1 (from gpu.nvml_library)")),
            "a configured NVML that fails is still said: {notes:?}"
        );
        assert!(drm_loaded(Path::new("/nonexistent-proc")), "a fixture tree without devices");
    }
}
