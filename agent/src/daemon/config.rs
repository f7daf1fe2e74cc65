//! The agent's configuration file (TOML). Every field has a working default,
//! so `rigwatch run` needs no file at all; `rigwatch run --print-config`
//! prints this structure with its defaults. The doc comments below are the
//! user documentation of each field.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    /// How the agent scans.
    pub scan: ScanConfig,
    /// Which sensors run.
    pub sensors: SensorsConfig,
    /// Signature directories (watched; a changed file is reloaded).
    pub signatures: SignaturesConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Shipping to the collector.
    pub collector: CollectorConfig,
    /// What to do about miners (off by default).
    pub response: ResponseConfig,
    /// GPU sensor settings.
    pub gpu: GpuConfig,
    /// Findings as SIEM events (OCSF or ECS) to a file or syslog.
    pub siem: SiemConfig,
}

impl Config {
    /// The engine's settings: the one place the configuration becomes
    /// sensor and detector options (`scan` overlays its flags on a default
    /// `Config` and comes through here too). With `once` (a single pass, no
    /// window) the sensors that need time (sockets, capture) stay off.
    pub fn engine(&self, once: bool) -> crate::engine::EngineConfig {
        let (s, on) = (&self.scan, &self.sensors);
        crate::engine::EngineConfig {
            proc_root: s.proc_root.clone(),
            cpu_window: std::time::Duration::from_secs_f64(s.cpu_window_seconds.max(0.0)),
            detector: crate::detector::DetectorConfig {
                cpu_cores_threshold: s.cpu_threshold_cores,
                long_window_seconds: s.long_window_seconds,
                long_window_cores_threshold: s.long_window_cores_threshold,
                host_root: s.host_root.clone(),
                ..Default::default()
            },
            sensors: crate::sensors::SensorOptions {
                max_binary_bytes: s.max_binary_bytes,
                binary_bytes_per_pass: s.binary_bytes_per_pass,
                binary: on.binary,
                minerconfig: on.minerconfig,
                sockets: on.sockets && !once,
                capture: on.capture && !once,
                gpu: on.gpu,
                nvml_library: self.gpu.nvml_library.clone(),
                gpu_scheduler_cgroups: self.gpu.scheduler_cgroups.clone(),
                gpu_slurm_squeue: self.gpu.slurm_squeue.clone(),
                hidden: on.hidden,
                persistence: on.persistence,
                host_root: s.host_root.clone(),
                cgroup_cpu: on.cgroup_cpu,
                footprint: on.footprint,
                rounding: on.rounding && !once,
                exectrace: on.exec_events && !once,
                rounding_sampling: if on.rounding_sample_seconds <= 0.0 || on.rounding_sample_seconds >= ROUNDING_PERIOD_SECONDS {
                    crate::sensors::rounding::Sampling::Always
                } else {
                    crate::sensors::rounding::Sampling::Duty {
                        on: std::time::Duration::from_secs_f64(on.rounding_sample_seconds),
                        period: std::time::Duration::from_secs_f64(ROUNDING_PERIOD_SECONDS),
                    }
                },
                long_window_seconds: s.long_window_seconds,
                long_window_cores_threshold: s.long_window_cores_threshold,
            },
            sensor_budget: std::time::Duration::from_secs_f64(on.budget_seconds.clamp(0.01, 86400.0)),
        }
    }
}

/// Scanning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    /// Seconds between periodic passes over all processes.
    pub interval_seconds: f64,
    /// CPU is measured over at least this many seconds.
    pub cpu_window_seconds: f64,
    /// Cores a process must use over the window to count as busy.
    pub cpu_threshold_cores: f64,
    /// The proc filesystem to read.
    pub proc_root: PathBuf,
    /// The host's root directory: /etc/ld.so.preload, crontabs, systemd
    /// units, rc scripts and /var/log/pods (pod names) are read under it.
    /// In a container, where the host's / is mounted (e.g. /host/root).
    pub host_root: PathBuf,
    /// The long CPU window: a miner throttled by cpulimit, nice, SCHED_IDLE
    /// or cgroup cpu.max is busy on average over this many seconds.
    pub long_window_seconds: f64,
    /// Cores over the long window that count as busy.
    pub long_window_cores_threshold: f64,
    /// Most bytes of one executable read for hashing and content matching.
    pub max_binary_bytes: u64,
    /// Most bytes of new executables read in one pass (the rest waits for the
    /// next pass), so a host full of new binaries sees no I/O spike.
    pub binary_bytes_per_pass: u64,
    /// Lower the agent's own CPU priority (nice 10).
    pub lower_priority: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            interval_seconds: 10.0,
            cpu_window_seconds: 10.0,
            cpu_threshold_cores: 0.5,
            proc_root: PathBuf::from(crate::paths::PROC),
            host_root: PathBuf::from(crate::paths::ROOT),
            long_window_seconds: 60.0,
            long_window_cores_threshold: 0.15,
            max_binary_bytes: 64 * 1024 * 1024,
            binary_bytes_per_pass: 256 * 1024 * 1024,
            lower_priority: true,
        }
    }
}

/// The rounding-mode program's sampling period, seconds.
pub const ROUNDING_PERIOD_SECONDS: f64 = 10.0;
/// Seconds of each period it is attached, by default.
pub const DEFAULT_ROUNDING_SAMPLE_SECONDS: f64 = 2.0;

/// Sensors on and off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SensorsConfig {
    /// Exec events: from the kernel's proc connector (needs CAP_NET_ADMIN),
    /// and with their argv through eBPF (needs CAP_BPF and CAP_PERFMON), so
    /// that a process gone before the pass is judged too.
    pub exec_events: bool,
    /// Executable hashes and content.
    pub binary: bool,
    /// Miner configuration files.
    pub minerconfig: bool,
    /// Sockets (pool addresses and ports).
    pub sockets: bool,
    /// Packet capture (stratum, TLS SNI, DNS; needs CAP_NET_RAW).
    pub capture: bool,
    /// GPU use (NVML, DRM fdinfo).
    pub gpu: bool,
    /// Processes hidden from the /proc listing, preload hiders, bind mounts.
    pub hidden: bool,
    /// Cron entries, systemd units and rc scripts that start miners.
    pub persistence: bool,
    /// Each cgroup's CPU (cgroup v2) against its listed processes': CPU of
    /// short-lived or hidden processes.
    pub cgroup_cpu: bool,
    /// What a mining trojan does to the host besides mining, as a change
    /// between passes: the firewall of the agent's network namespace
    /// flushed or opened, a security or monitoring agent's unit removed,
    /// masked or stopped, SELinux permissive, AppArmor's profiles unloaded.
    pub footprint: bool,
    /// The floating-point rounding mode a process leaves behind at each
    /// context switch, through eBPF: RandomX hashing whatever the miner is
    /// called (x86_64; needs CAP_BPF and CAP_PERFMON, or root).
    pub rounding: bool,
    /// Seconds of every 10 the rounding-mode program is attached (it adds a
    /// fraction of a microsecond to each context switch while it is; a
    /// RandomX miner is caught hundreds of times a second). 0 or 10: always.
    pub rounding_sample_seconds: f64,
    /// Seconds one sensor's part of a pass may take. A sensor over it (one
    /// blocked reading a FIFO or a hung mount) is reported down and skipped
    /// until its late pass returns, while the others carry on.
    pub budget_seconds: f64,
}

impl SensorsConfig {
    /// Every sensor off (a command that wants one sensor switches it on).
    pub fn none() -> SensorsConfig {
        SensorsConfig {
            exec_events: false,
            binary: false,
            minerconfig: false,
            sockets: false,
            capture: false,
            gpu: false,
            hidden: false,
            persistence: false,
            cgroup_cpu: false,
            footprint: false,
            rounding: false,
            rounding_sample_seconds: DEFAULT_ROUNDING_SAMPLE_SECONDS,
            budget_seconds: crate::engine::DEFAULT_SENSOR_BUDGET.as_secs_f64(),
        }
    }
}

impl Default for SensorsConfig {
    fn default() -> Self {
        SensorsConfig {
            exec_events: true,
            binary: true,
            minerconfig: true,
            sockets: true,
            capture: true,
            gpu: true,
            hidden: true,
            persistence: true,
            cgroup_cpu: true,
            footprint: true,
            rounding: true,
            rounding_sample_seconds: DEFAULT_ROUNDING_SAMPLE_SECONDS,
            budget_seconds: crate::engine::DEFAULT_SENSOR_BUDGET.as_secs_f64(),
        }
    }
}

/// Signatures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignaturesConfig {
    /// Directories of extra rule files (*.toml), on top of the bundled set.
    pub dirs: Vec<PathBuf>,
}

impl Default for SignaturesConfig {
    fn default() -> Self {
        SignaturesConfig {
            dirs: vec![PathBuf::from(crate::paths::SIGNATURE_DIR)],
        }
    }
}

/// Prometheus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the /metrics endpoint (default port 9861).
    pub listen: String,
    /// Most `rigwatch_finding_active` series (one per active finding).
    pub max_finding_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9861".into(),
            max_finding_series: 100,
        }
    }
}

/// The collector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Base URL (e.g. https://collector.example:9860); empty: findings stay local.
    pub url: String,
    /// Bearer token (from `rigwatch-collector token create`).
    pub token: String,
    /// A file holding a fleet enrolment token (`rigwatch-collector token
    /// create NAME --enrol`; e.g. one Kubernetes Secret for every node).
    /// Used only when `token` is empty: on start, unless a token of its own
    /// is saved in `spool_dir` (`collector-token`, mode 0600), the agent
    /// exchanges it for a token bound to its host name, saves that and
    /// ships with it. The enrolment token itself can do nothing else.
    pub enrol_token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the collector's TLS
    /// (e.g. the collector's own self-signed certificate).
    pub ca_file: Option<PathBuf>,
    /// Ship over plain `http://` to a collector on another host. Off: such a
    /// URL stops the agent at start (the token, the enrolment token and
    /// every finding would cross the network readable and alterable), unless
    /// the collector is on this host (127.0.0.0/8, ::1, `localhost`).
    /// `--allow-insecure-http` sets it too.
    pub allow_insecure_http: bool,
    /// Where events wait until the collector has them.
    pub spool_dir: PathBuf,
    /// Most bytes the spool may hold; beyond it the oldest events are dropped (and counted).
    pub spool_max_bytes: u64,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: f64,
    /// Most events in one batch.
    pub batch_size: usize,
    /// Fetch the collector's fleet signature set (indicators its confirmed
    /// findings taught, and the signature files an operator published) and
    /// load it beside the local signatures, hot.
    pub fleet: bool,
    /// Seconds between fetches of the fleet set (a conditional GET: an
    /// unchanged set costs one 304).
    pub fleet_poll_seconds: f64,
    /// The collector's fleet-signing public key (`rigwatch-collector fleet
    /// key`, base64). Set: a fleet set that is unsigned or wrongly signed is
    /// refused. Empty: the set is trusted as the TLS connection is.
    pub fleet_public_key: String,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            url: String::new(),
            token: String::new(),
            enrol_token_file: None,
            ca_file: None,
            allow_insecure_http: false,
            spool_dir: PathBuf::from("/var/lib/rigwatch/spool"),
            spool_max_bytes: 256 * 1024 * 1024,
            heartbeat_seconds: 30.0,
            batch_size: 500,
            fleet: true,
            fleet_poll_seconds: 10.0,
            fleet_public_key: String::new(),
        }
    }
}

/// How the agent reaches its collector, as [`CollectorConfig::transport`] judges the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// No collector: nothing is shipped.
    None,
    /// HTTPS.
    Https,
    /// Plain HTTP to this host (loopback): nothing crosses a network.
    Loopback,
    /// Plain HTTP across a network, allowed by `allow_insecure_http`.
    InsecureHttp,
}

/// Whether `host` (a URL's host) is this host's loopback: 127.0.0.0/8,
/// ::1 (also as ::ffff:127.x.y.z) or `localhost`. No name is resolved: a
/// name that merely resolves to a loopback address does not count.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
        Ok(std::net::IpAddr::V6(a)) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost."),
    }
}

impl CollectorConfig {
    /// Judges `url` before anything is sent to it (enrolment included):
    /// `https://` is fine; `http://` only to this host's loopback or with
    /// `allow_insecure_http`. The error names the URL and the two ways out.
    pub fn transport(&self) -> anyhow::Result<Transport> {
        if self.url.is_empty() {
            return Ok(Transport::None);
        }
        let u = reqwest::Url::parse(&self.url).map_err(|e| anyhow::anyhow!("collector URL {:?}: {e}", self.url))?;
        match u.scheme() {
            "https" => Ok(Transport::Https),
            "http" if is_loopback(&u) => Ok(Transport::Loopback),
            "http" if self.allow_insecure_http => Ok(Transport::InsecureHttp),
            "http" => anyhow::bail!(
                "refusing the collector {}: plain http:// would carry the token and every finding across the \
                 network readable and alterable. Use https:// (with collector.ca_file = the PEM of the CA that \
                 signed the collector's certificate, or the certificate itself when it is self-signed), or, on a \
                 network you trust, pass --allow-insecure-http (collector.allow_insecure_http = true)",
                self.url
            ),
            other => anyhow::bail!("collector URL {}: scheme {other}:// is neither https:// nor http://", self.url),
        }
    }
}

/// What to do to a process at each severity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing.
    None,
    /// SIGSTOP: frozen, kept for forensics.
    Stop,
    /// SIGKILL.
    Kill,
}

/// Response policy (off by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseConfig {
    /// Only log what would be done.
    pub dry_run: bool,
    /// Action for confirmed findings.
    pub confirmed: Action,
    /// Action for likely findings.
    pub likely: Action,
    /// Action for suspicious findings.
    pub suspicious: Action,
    /// Copy the binary of a process that is acted on into `quarantine_dir`
    /// (root-only, exec bit stripped).
    pub quarantine: bool,
    /// Where quarantined binaries go.
    pub quarantine_dir: PathBuf,
    /// Binaries larger than this are not quarantined (the process is still
    /// stopped or killed); the copy streams, so memory use does not grow with it.
    pub quarantine_max_bytes: u64,
    /// Disk the quarantine directory may use in all; past it, a binary is
    /// not quarantined (the process is still stopped or killed).
    pub quarantine_quota_bytes: u64,
    /// Also act on findings whose only weighty evidence is seen on the
    /// network (stratum, pool address, DNS, TLS SNI, a stratum login): off, as
    /// traffic can be made to look like it comes from a process that is not a miner.
    pub act_on_network_only: bool,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            dry_run: false,
            confirmed: Action::None,
            likely: Action::None,
            suspicious: Action::None,
            quarantine: false,
            quarantine_dir: PathBuf::from("/var/lib/rigwatch/quarantine"),
            quarantine_max_bytes: 256 * 1024 * 1024,
            quarantine_quota_bytes: 1024 * 1024 * 1024,
            act_on_network_only: false,
        }
    }
}

/// Findings as SIEM events, written by the agent itself (with or without a
/// collector): each finding opened, updated or resolved is one event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SiemConfig {
    /// `ocsf` (OCSF 1.5.0 Detection Finding, class 2004) or `ecs` (Elastic
    /// Common Schema 8.11).
    pub format: rigwatch_signatures::siem::Format,
    /// Append events as NDJSON to this file (created 0640). Beyond
    /// `file_max_bytes` it is renamed to FILE.1 (replacing the previous
    /// one) and a new one is started.
    pub file: Option<PathBuf>,
    /// The file's size before it is rotated.
    pub file_max_bytes: u64,
    /// Send events to syslog as RFC 5424 messages (facility auth, MSGID the
    /// change, the event's JSON as the message): `unix:/dev/log` (the local
    /// syslog daemon or journald) or `udp:HOST:PORT` (a literal IP). Empty: off.
    pub syslog: String,
}

impl Default for SiemConfig {
    fn default() -> Self {
        SiemConfig {
            format: rigwatch_signatures::siem::Format::Ocsf,
            file: None,
            file_max_bytes: 64 * 1024 * 1024,
            syslog: String::new(),
        }
    }
}

/// GPU sensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// Path of libnvidia-ml.so. The RIGWATCH_NVML_LIBRARY environment
    /// variable wins over it; without either, the usual libnvidia-ml.so.1.
    pub nvml_library: Option<PathBuf>,
    /// Cgroup path substrings of your own schedulers' jobs: GPU use inside
    /// them is scheduled (Slurm `job_N` and Kubernetes `kubepods` are known).
    pub scheduler_cgroups: Vec<String>,
    /// Slurm's `squeue`, asked (at most every 30 s, 3 s at most) which jobs
    /// the user of unscheduled GPU use holds on this node. Without it,
    /// `squeue` in `PATH`; a host without Slurm skips the question.
    pub slurm_squeue: Option<PathBuf>,
}

impl Config {
    /// Reads a config file; errors name the file and line.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| rigwatch_signatures::rules::line_of(&text, s.start)).unwrap_or(0);
            anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_errors_name_the_line() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[scan]\ninterval_seconds = 5\n\n[response]\nconfirmed = \"explode\"\n").unwrap();
        let e = Config::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml:5"), "{e}");
        std::fs::write(&p, "[scan]\nintervl = 5\n").unwrap();
        assert!(Config::from_file(&p).unwrap_err().to_string().contains("intervl"));
        std::fs::write(
            &p,
            "[scan]\ninterval_seconds = 2\n[response]\nconfirmed = \"kill\"\ndry_run = true\n",
        )
        .unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.scan.interval_seconds, 2.0);
        assert_eq!(c.response.confirmed, Action::Kill);
        assert_eq!(c.metrics.listen, "127.0.0.1:9861", "unset fields keep their defaults");
    }

    fn judge(url: &str, allow: bool) -> Result<Transport, String> {
        let c = CollectorConfig {
            url: url.into(),
            allow_insecure_http: allow,
            ..Default::default()
        };
        c.transport().map_err(|e| e.to_string())
    }

    #[test]
    fn config_refuses_plain_http_across_a_network() {
        assert_eq!(judge("", false), Ok(Transport::None));
        for url in [
            "https://collector.example:9860",
            "HTTPS://10.0.0.5:9860/",
            "https://[2001:db8::1]:9860",
        ] {
            assert_eq!(judge(url, false), Ok(Transport::Https), "{url}");
        }
        for url in [
            "http://127.0.0.1:9860",
            "http://127.8.9.10:9860/",
            "http://[::1]:9860",
            "http://[::ffff:127.0.0.1]:9860",
            "http://localhost:9860",
            "http://LocalHost:9860",
        ] {
            assert_eq!(judge(url, false), Ok(Transport::Loopback), "{url}");
        }
        for url in [
            "http://192.0.2.1:9860",
            "http://collector.example:9860",
            "http://[2001:db8::1]:9860",
            "http://0.0.0.0:9860",
            "http://localhost.evil.example:9860",
            "http://127.0.0.1.nip.io:9860",
            "http://[::ffff:192.0.2.1]:9860",
        ] {
            let e = judge(url, false).unwrap_err();
            assert!(
                e.contains(url) && e.contains("https://") && e.contains("ca_file") && e.contains("--allow-insecure-http"),
                "{url}: {e}"
            );
            assert_eq!(judge(url, true), Ok(Transport::InsecureHttp), "{url}");
        }
        assert!(judge("ftp://192.0.2.1/", true).unwrap_err().contains("ftp://"));
        assert!(judge("192.0.2.1:9860", true).is_err(), "no scheme");
        assert!(judge("not a url", false).is_err());
        // the config key
        let c: Config = toml::from_str("[collector]\nurl = \"http://192.0.2.1:9860\"\nallow_insecure_http = true\n").unwrap();
        assert_eq!(c.collector.transport().unwrap(), Transport::InsecureHttp);
    }
}
