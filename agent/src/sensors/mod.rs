//! Sensors observe; they never decide. Each sensor lives in its own file
//! behind [`Sensor`], and is registered in one place ([`registry`]).
//!
//! The process sensor is the root of every pass: it produces the
//! [`Snapshot`] that the other sensors look at (which executable to hash,
//! which config file to read). Their observations go to the detector; the
//! [`crate::engine`] runs the pass.
//!
//! Adding a sensor: a file here implementing [`Sensor`], and one line in
//! [`registry`] (with its switch in [`SensorOptions`]).

pub mod binary;
pub mod capture;
pub mod cgroupcpu;
pub mod connecttrace;
pub mod execevents;
pub mod exectrace;
pub mod footprint;
pub mod gpu;
pub mod hidden;
pub mod killtrace;
pub mod minerconfig;
pub mod persistence;
pub mod rounding;

pub mod sockets;

use rigwatch_signatures::{Evidence, Signatures};
use std::sync::Arc;

pub use crate::host::process::{Proc, ProcKey, ProcessSensor, Snapshot};

/// What a sensor reports about one process.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A piece of evidence about the process.
    Evidence(ProcKey, Evidence),
    /// The SHA-256 of the process's executable (for the allowlist).
    BinarySha256(ProcKey, [u8; 32]),
    /// Network evidence whose process could not be found (the flow ended,
    /// or its socket lives in another network namespace).
    Flow(crate::net::shared::FlowFinding),
    /// A process the listing could not read (its /proc files are covered,
    /// e.g. by a bind mount), read another way by the hidden sensor.
    Hidden(Proc),
    /// Evidence about the host itself rather than a process: a persistence
    /// entry whose miner is not running, a preload library, a hidden kernel
    /// module, a cgroup's unaccounted CPU. Evidence for the same subject
    /// joins into one host finding.
    Host(rigwatch_signatures::HostSubject, Evidence),
}

/// An error that stops one sensor's pass, never the agent.
#[derive(Debug, thiserror::Error)]
#[error("{sensor}: {message}")]
pub struct SensorError {
    /// The sensor's name.
    pub sensor: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A sensor: one pass over the current snapshot adds observations.
pub trait Sensor: Send {
    /// A short, stable name (`binary`, `minerconfig`…), used in logs and metrics.
    fn name(&self) -> &'static str;
    /// One pass. Problems with single processes are counted, not returned;
    /// an `Err` means the sensor could not work at all this pass.
    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError>;
    /// What this sensor could not read in its last pass, for the user
    /// (e.g. "executables of 12 processes: permission denied"). Findings are
    /// never problems: they are observations.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// Counters for reports and metrics, e.g. `("binaries_read", 42)`; each
    /// is exported as `rigwatch_sensor_count{sensor,counter}`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Whether the sensor has something new that should not wait for the
    /// next periodic pass (the capture sensor's network evidence).
    fn wants_pass(&self) -> bool {
        false
    }
    /// Whether the sensor looks at single processes and so takes part in the
    /// partial passes that follow exec events.
    fn per_process(&self) -> bool {
        false
    }
    /// Takes a new signature set (hot reload).
    fn set_signatures(&mut self, _sig: Arc<Signatures>) {}
}

/// Options the sensors share.
#[derive(Debug, Clone)]
pub struct SensorOptions {
    /// Most bytes of an executable read for hashing and content matching.
    pub max_binary_bytes: u64,
    /// Most bytes of new executables read in one pass (the rest waits).
    pub binary_bytes_per_pass: u64,
    /// Hash and content-scan executables.
    pub binary: bool,
    /// Read miner configuration files named by processes.
    pub minerconfig: bool,
    /// Watch sockets (sock_diag or the proc root's net files).
    pub sockets: bool,
    /// Capture packets (AF_PACKET; needs CAP_NET_RAW).
    pub capture: bool,
    /// Watch GPUs (NVML, DRM fdinfo).
    pub gpu: bool,
    /// The NVML library (`gpu.nvml_library`); `RIGWATCH_NVML_LIBRARY` overrides it.
    pub nvml_library: Option<std::path::PathBuf>,
    /// Cgroup substrings that mark scheduler jobs, beyond Slurm and Kubernetes (`gpu.scheduler_cgroups`).
    pub gpu_scheduler_cgroups: Vec<String>,
    /// Slurm's `squeue` (`gpu.slurm_squeue`); `None`: `squeue` in `PATH`, if any.
    pub gpu_slurm_squeue: Option<std::path::PathBuf>,
    /// Look for hidden processes and preload libraries.
    pub hidden: bool,
    /// The host's root directory (where /etc/ld.so.preload, crontabs and systemd units are read).
    pub host_root: std::path::PathBuf,
    /// Look for persistence entries (cron, systemd, rc) that start miners.
    pub persistence: bool,
    /// Compare each cgroup's CPU (cgroup v2 cpu.stat) with its listed processes'.
    pub cgroup_cpu: bool,
    /// Report what a mining trojan does to the host between passes: the
    /// firewall flushed, security agents stopped, SELinux/AppArmor off.
    pub footprint: bool,
    /// The floating-point rounding mode of hashing, through eBPF (x86_64;
    /// needs CAP_BPF and CAP_PERFMON, or root).
    pub rounding: bool,
    /// Every exec with its argv through eBPF (`sched_process_exec`), so that
    /// processes gone before the pass are judged too.
    pub exectrace: bool,
    /// How long the rounding-mode program stays attached.
    pub rounding_sampling: rounding::Sampling,
    /// The long CPU window, seconds (per-cgroup CPU is measured over it).
    pub long_window_seconds: f64,
    /// Cores over the long window that count.
    pub long_window_cores_threshold: f64,
}

impl Default for SensorOptions {
    fn default() -> Self {
        SensorOptions {
            max_binary_bytes: 64 * 1024 * 1024,
            binary_bytes_per_pass: u64::MAX,
            binary: true,
            minerconfig: true,
            sockets: true,
            capture: true,
            gpu: true,
            nvml_library: None,
            gpu_scheduler_cgroups: Vec::new(),
            gpu_slurm_squeue: None,
            hidden: true,
            host_root: "/".into(),
            persistence: true,
            cgroup_cpu: true,
            footprint: true,
            rounding: true,
            rounding_sampling: rounding::Sampling::Always,
            exectrace: true,
            long_window_seconds: 60.0,
            long_window_cores_threshold: 0.15,
        }
    }
}

/// The registration list: every sensor, in the order a pass runs them.
/// The capture sensor starts its thread here.
pub fn registry(sig: Arc<Signatures>, proc_root: &std::path::Path, opts: &SensorOptions) -> Vec<Box<dyn Sensor>> {
    let shared = Arc::new(crate::net::shared::NetShared::default());
    let mut v: Vec<Box<dyn Sensor>> = Vec::new();
    if opts.binary {
        v.push(Box::new(
            binary::BinarySensor::new(sig.clone(), proc_root, opts.max_binary_bytes).with_pass_budget(opts.binary_bytes_per_pass),
        ));
    }
    if opts.minerconfig {
        v.push(Box::new(minerconfig::MinerConfigSensor::new(sig.clone(), proc_root)));
    }
    if opts.hidden {
        v.push(Box::new(hidden::HiddenSensor::new(sig.clone(), proc_root, opts.host_root.clone())));
    }
    if opts.persistence {
        v.push(Box::new(persistence::PersistenceSensor::new(sig.clone(), opts.host_root.clone())));
    }
    if opts.footprint {
        v.push(Box::new(footprint::FootprintSensor::new(
            sig.clone(),
            proc_root,
            opts.host_root.clone(),
        )));
        // who killed whom: rival miners killed, kill bursts (eBPF)
        v.push(Box::new(killtrace::KillTraceSensor::new(sig.clone())));
    }
    if opts.capture {
        v.push(Box::new(capture::CaptureSensor::start(sig.clone(), proc_root, shared.clone())));
        // who opened each connection, for the flows whose socket is gone by the pass
        v.push(Box::new(connecttrace::ConnectTraceSensor::start(shared.clone())));
    }
    if opts.sockets {
        v.push(Box::new(sockets::SocketSensor::new(sig, proc_root, shared)));
    }
    if opts.gpu {
        let cfg = gpu::GpuConfig {
            nvml_library: opts.nvml_library.clone(),
            scheduler_cgroups: opts.gpu_scheduler_cgroups.clone(),
            slurm_squeue: opts.gpu_slurm_squeue.clone(),
            kubelet_checkpoint: Some(opts.host_root.join("var/lib/kubelet/device-plugins/kubelet_internal_checkpoint")),
        };
        v.push(Box::new(gpu::GpuSensor::new(proc_root, cfg)));
    }
    if opts.exectrace {
        v.push(Box::new(exectrace::ExecTraceSensor::new()));
    }
    if opts.rounding {
        v.push(Box::new(rounding::RoundingSensor::new(opts.rounding_sampling)));
    }
    if opts.cgroup_cpu {
        v.push(Box::new(cgroupcpu::CgroupCpuSensor::new(
            &opts.host_root.join("sys/fs/cgroup"),
            opts.long_window_seconds,
            opts.long_window_cores_threshold,
        )));
    }
    v
}

#[cfg(test)]
mod tests {
    /// Sensors depend on the host layer, `net/` and the signatures crate,
    /// never on each other: no sensor file names a sibling sensor module.
    #[test]
    fn sensors_never_import_each_other() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sensors");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(String::from))
            .filter(|n| n != "mod")
            .collect();
        let mut bad = Vec::new();
        for n in &names {
            let text = std::fs::read_to_string(dir.join(format!("{n}.rs"))).unwrap();
            for other in names.iter().filter(|o| *o != n) {
                for pat in [format!("super::{other}::"), format!("sensors::{other}::")] {
                    if text.contains(&pat) {
                        bad.push(format!("{n}.rs uses {pat}"));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "{bad:?}");
    }
}
