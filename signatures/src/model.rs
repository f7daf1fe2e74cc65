//! The shared vocabulary: what a finding says and how its evidence is scored.
//!
//! Agent and collector both speak these types; the JSON they serialise to is
//! the contract with scripts (`rigwatch scan --json`) and with the collector.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// How sure a finding is. Ordered: `Suspicious < Likely < Confirmed`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Behaviour worth a look.
    Suspicious,
    /// Strong signs, one step short.
    Likely,
    /// A miner, beyond reasonable doubt.
    Confirmed,
}

impl Severity {
    /// The lowercase name used in JSON, metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Suspicious => "suspicious",
            Severity::Likely => "likely",
            Severity::Confirmed => "confirmed",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one piece of evidence contributes to a finding's severity
/// (see RULES.md, "Severity contribution").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    /// Context only; never raises a finding.
    Info,
    /// Odd origin or behaviour: suspicious together with sustained CPU/GPU use.
    Suspicious,
    /// Strong sign: likely with sustained use or another strong sign.
    Likely,
    /// Confirms a miner on its own.
    Confirmed,
}

impl Weight {
    /// The lowercase name used in rule files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Weight::Info => "info",
            Weight::Suspicious => "suspicious",
            Weight::Likely => "likely",
            Weight::Confirmed => "confirmed",
        }
    }
}

/// How an executable's origin looks odd.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The file was deleted after the process started.
    Deleted,
    /// Fileless: run from a memfd.
    Memfd,
    /// A world-writable directory such as /tmp, /var/tmp or /dev/shm.
    WritableDir,
    /// A hidden (dot) directory.
    DotDir,
}

impl Origin {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Deleted => "deleted",
            Origin::Memfd => "memfd",
            Origin::WritableDir => "writable_dir",
            Origin::DotDir => "dot_dir",
        }
    }
}

/// One piece of evidence, with the rule that produced it (if any) and its
/// contribution to the severity. Serialised flat: `{"kind": "...", ...}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Evidence {
    /// What was seen.
    #[serde(flatten)]
    pub detail: EvidenceKind,
    /// The signature rule that matched, for rule-based evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// For a rule of the fleet set (`fleet.…`), what taught it: `fleet:
    /// taught by HOST/FINDING` (a confirmed finding on another host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taught_by: Option<String>,
    /// What this evidence contributes to the severity.
    pub weight: Weight,
}

impl Evidence {
    /// Evidence produced by a rule.
    pub fn from_rule(detail: EvidenceKind, rule: &str, weight: Weight) -> Self {
        Evidence {
            detail,
            rule: Some(rule.to_string()),
            taught_by: None,
            weight,
        }
    }
    /// Evidence produced by a built-in heuristic.
    pub fn heuristic(detail: EvidenceKind, weight: Weight) -> Self {
        Evidence {
            detail,
            rule: None,
            taught_by: None,
            weight,
        }
    }
    /// The evidence kind's name, as in JSON.
    pub fn kind(&self) -> &'static str {
        self.detail.kind()
    }
    /// A one-line human summary for tables and alerts.
    pub fn summary(&self) -> String {
        self.detail.summary()
    }
}

/// What a YARA match adds to [`EvidenceKind::BinaryContent`]: the rule's
/// file and its metadata (the rule is the evidence's `rule`,
/// `yara:NAMESPACE.RULE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct YaraMatch {
    /// The rule file (a path, `bundled:NAME` or `fleet:NAME`).
    pub file: String,
    /// The rule's `meta:` section, values as text (capped).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One variant per evidence kind in DESIGN.md.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EvidenceKind {
    /// A miner or campaign name, in comm, exe or argv[0].
    ProcessName { name: String, field: String },
    /// Something in the command line: a pool URL, a miner flag (maybe inside base64).
    CommandLine { matched: String, base64: bool, pool_url: bool },
    /// A wallet address in the command line, a pool login or a miner config.
    Wallet { coin: String, address: String, source: String },
    /// The executable's SHA-256 is a known miner.
    BinaryHash { sha256: String, path: String },
    /// A kernel module hidden from the module list (a rootkit's habit).
    KernelModule { name: String, how: String },
    /// Strings of a miner inside the executable (or its memory).
    BinaryContent {
        strings: Vec<String>,
        path: String,
        source: String,
        /// For a YARA rule's match: its file and metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        yara: Option<YaraMatch>,
    },
    /// The executable runs from an odd place.
    ExecutableOrigin { origin: Origin, path: String },
    /// The process pretends to be something else.
    Masquerade {
        reason: String,
        comm: String,
        exe: String,
        argv0: String,
    },
    /// Sustained CPU use over a window.
    Cpu { cores: f64, window_seconds: f64 },
    /// Sustained GPU use over a window.
    Gpu {
        gpu: String,
        utilization_percent: f64,
        memory_bytes: u64,
        window_seconds: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler: Option<String>,
        /// Outside any scheduler job: whose use it is against what that user
        /// holds (`user alice (uid 1001) holds job 4242 (RUNNING, gres/gpu:1;
        /// its processes use no GPU) and runs this outside it`), or the pod
        /// that was allocated no GPU.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allocation: Option<String>,
    },
    /// A connection to a pool: known address, pool port, or an address a pool name resolved to;
    /// or a local mining stack: a connection to a mining node's port on loopback, or a socket
    /// listening on one (then `remote` is the listening address and `reason` starts with
    /// `listens on `).
    PoolConnection {
        remote: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// A DNS query or answer for a pool domain.
    Dns { name: String, answers: Vec<String> },
    /// A TLS ClientHello naming a pool domain.
    TlsSni { server_name: String, remote: String },
    /// A connection through a proxy that hides where it goes (a Tor SOCKS
    /// port): `target` is what the client asked the proxy for.
    Proxy { protocol: String, proxy: String, target: String },
    /// The process exited before a pass could read it: what is known of it
    /// comes from its exec event (`how`), not from `/proc`.
    ShortLived { how: String },
    /// What the process's computation does to the CPU, seen by the kernel:
    /// `randomx-like` when the floating-point rounding mode it leaves in
    /// MXCSR keeps changing across context switches (RandomX's CFROUND).
    CpuAlgorithm {
        algorithm: String,
        /// Context switches caught with a non-default rounding mode.
        switches: u64,
        /// Those per second over the window.
        rate_per_second: f64,
        window_seconds: f64,
        /// The non-default rounding modes seen.
        modes: Vec<String>,
    },
    /// A TLS session whose record sizes and timing look like stratum inside
    /// TLS: the server pushing similar-sized records unasked, at intervals,
    /// over a long-lived, low-volume session (the content is never seen).
    TlsSession {
        remote: String,
        /// The server name asked for; none is itself a sign (common miners send none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_name: Option<String>,
        /// The client's JA4 fingerprint, for the analyst.
        ja4: String,
        /// Server records sent unasked (job pushes).
        pushes: u64,
        /// Their sizes, smallest and largest (bytes, TLS framing included).
        push_bytes: [u64; 2],
        /// Mean seconds between pushes.
        push_interval_seconds: f64,
        /// Records the client sent (logins, submits, keepalives).
        client_records: u64,
        /// Seconds from the ClientHello to the last push.
        seconds: f64,
    },
    /// The mining protocol itself, seen on the wire.
    Stratum {
        dialect: String,
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        login: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        remote: String,
    },
    /// A process hidden from the /proc listing.
    HiddenProcess { how: String },
    /// A preload library (ld.so.preload, LD_PRELOAD, mapped into the process).
    Preload { library: String, source: String },
    /// A persistence entry (cron, systemd, rc, authorized_keys).
    Persistence { path: String, entry: String },
    /// A miner configuration file with pools or wallets.
    MinerConfig {
        path: String,
        pools: Vec<String>,
        wallets: Vec<String>,
        keys: Vec<String>,
        /// The file's SHA-256 (hex): what a collector teaches the fleet
        /// when the finding is confirmed (the same file renamed, its pool
        /// behind a proxy, on the next host).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// A known pool domain in the command line or a config.
    PoolDomain { domain: String, source: String },
    /// CPU held down on purpose: SIGSTOP/SIGCONT cycling, nice, SCHED_IDLE/BATCH.
    Throttled { how: String },
    /// The executable is packed (UPX magic or section names, high entropy with few sections).
    Packed { packer: String, entropy: f64, path: String },
    /// The process's cgroup used CPU (the kernel's account) that its listed
    /// processes did not: short-lived or hidden processes in it.
    CgroupCpu {
        cgroup: String,
        cores: f64,
        unaccounted_cores: f64,
        window_seconds: f64,
    },
    /// A change to the host's defences between two passes, as a mining
    /// trojan makes them: `what` changed from `before` to `after`.
    Footprint { what: String, before: String, after: String },
    /// Something was cut to stay within a cap, so a reader knows the
    /// finding is not whole: the finding itself to fit its size cap (see
    /// [`Finding::bound`]; its note starts with [`TRIM_NOTE_PREFIX`]), or a
    /// sensor's list (a miner config's pools and wallets).
    Trimmed {
        note: String,
        /// The size before trimming (the finding's JSON, the file read).
        original_bytes: u64,
        /// Evidence items dropped (the weakest).
        dropped_evidence: u64,
        /// Strings shortened and list items dropped.
        cut_fields: u64,
    },
}

impl EvidenceKind {
    /// The snake_case kind name used in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            EvidenceKind::ProcessName { .. } => "process_name",
            EvidenceKind::CommandLine { .. } => "command_line",
            EvidenceKind::Wallet { .. } => "wallet",
            EvidenceKind::BinaryHash { .. } => "binary_hash",
            EvidenceKind::BinaryContent { .. } => "binary_content",
            EvidenceKind::ExecutableOrigin { .. } => "executable_origin",
            EvidenceKind::Masquerade { .. } => "masquerade",
            EvidenceKind::Cpu { .. } => "cpu",
            EvidenceKind::Gpu { .. } => "gpu",
            EvidenceKind::PoolConnection { .. } => "pool_connection",
            EvidenceKind::Dns { .. } => "dns",
            EvidenceKind::TlsSni { .. } => "tls_sni",
            EvidenceKind::Stratum { .. } => "stratum",
            EvidenceKind::HiddenProcess { .. } => "hidden_process",
            EvidenceKind::Preload { .. } => "preload",
            EvidenceKind::Persistence { .. } => "persistence",
            EvidenceKind::MinerConfig { .. } => "miner_config",
            EvidenceKind::PoolDomain { .. } => "pool_domain",
            EvidenceKind::Throttled { .. } => "throttled",
            EvidenceKind::Packed { .. } => "packed",
            EvidenceKind::CgroupCpu { .. } => "cgroup_cpu",
            EvidenceKind::KernelModule { .. } => "kernel_module",
            EvidenceKind::Trimmed { .. } => "trimmed",
            EvidenceKind::Proxy { .. } => "proxy",
            EvidenceKind::TlsSession { .. } => "tls_session",
            EvidenceKind::CpuAlgorithm { .. } => "cpu_algorithm",
            EvidenceKind::ShortLived { .. } => "short_lived",
            EvidenceKind::Footprint { .. } => "footprint",
        }
    }

    /// A one-line human summary.
    pub fn summary(&self) -> String {
        use EvidenceKind::*;
        match self {
            ProcessName { name, field } => format!("miner name {name:?} in {field}"),
            CommandLine { matched, base64, .. } => {
                format!("command line has {matched:?}{}", if *base64 { " (base64)" } else { "" })
            }
            Wallet { coin, address, source } => format!("{coin} wallet {} in {source}", short(address)),
            BinaryHash { sha256, .. } => format!("binary sha256 {} is a known miner", short(sha256)),
            BinaryContent {
                strings,
                source,
                yara: Some(y),
                ..
            } => format!("{source} matches a YARA rule of {}: {}", y.file, strings.join(", ")),
            BinaryContent { strings, source, .. } => {
                format!("{source} holds miner strings {}", strings.join(", "))
            }
            ExecutableOrigin { origin, path } => format!("runs from a {} location: {path}", origin.as_str()),
            Masquerade { reason, .. } => format!("masquerade: {reason}"),
            Cpu { cores, window_seconds } => format!("{cores:.2} cores over {window_seconds:.0}s"),
            Gpu {
                gpu,
                utilization_percent,
                memory_bytes,
                window_seconds,
                scheduler,
                allocation,
            } => format!(
                "GPU {gpu}: {utilization_percent:.0}% util, {} MiB over {window_seconds:.0}s, {}{}",
                memory_bytes / (1024 * 1024),
                match scheduler {
                    Some(s) => format!("in {s}"),
                    None => "outside any scheduler job".into(),
                },
                allocation.as_deref().map(|a| format!("; {a}")).unwrap_or_default()
            ),
            PoolConnection { reason, .. } if reason.starts_with("listens on ") => reason.clone(),
            PoolConnection { remote, reason, .. } => format!("connection to {remote} ({reason})"),
            Dns { name, .. } => format!("DNS for pool {name}"),
            TlsSni { server_name, .. } => format!("TLS SNI {server_name}"),
            Stratum {
                dialect, method, remote, ..
            } => format!("stratum {dialect} {method} with {remote}"),
            HiddenProcess { how } => format!("hidden process: {how}"),
            KernelModule { name, how } => format!("kernel module {name}: {how}"),
            Preload { library, source } => format!("preload {library} ({source})"),
            Persistence { path, entry } => format!("persistence {path}: {entry}"),
            MinerConfig { path, pools, .. } => format!("miner config {path} pools {}", pools.join(", ")),
            PoolDomain { domain, source } => format!("pool domain {domain} in {source}"),
            Throttled { how } => format!("throttled: {how}"),
            Packed { packer, entropy, path } => format!("packed executable ({packer}, entropy {entropy:.2}): {path}"),
            CgroupCpu {
                cgroup,
                cores,
                unaccounted_cores,
                window_seconds,
            } => format!(
                "cgroup {cgroup} used {cores:.2} cores over {window_seconds:.0}s, {unaccounted_cores:.2} of them by processes not in the listing (short-lived or hidden)"
            ),
            Trimmed { note, .. } => note.clone(),
            Proxy { protocol, proxy, target } => format!("{protocol} through {proxy} to {target}"),
            ShortLived { how } => format!("exited before it could be read: {how}"),
            Footprint { what, before, after } => format!("{what}: {before} → {after}"),
            CpuAlgorithm {
                algorithm,
                switches,
                rate_per_second,
                window_seconds,
                modes,
            } => format!(
                "{algorithm} hashing: {switches} context switches over {window_seconds:.0}s ({rate_per_second:.1}/s) caught the rounding mode away from the default ({})",
                modes.join(", ")
            ),
            TlsSession {
                remote,
                server_name,
                ja4,
                pushes,
                push_bytes,
                push_interval_seconds,
                client_records,
                seconds,
            } => format!(
                "TLS to {remote} ({}) shaped like stratum: {pushes} unasked server records of {}–{} bytes every {push_interval_seconds:.0}s, {client_records} client records, over {seconds:.0}s; JA4 {ja4}",
                server_name.as_deref().map_or("no server name".to_string(), |n| format!("server name {n}")),
                push_bytes[0],
                push_bytes[1]
            ),
        }
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 20 {
        let head: String = s.chars().take(12).collect();
        format!("{head}…")
    } else {
        s.to_string()
    }
}

/// Scores a process's evidence into a severity (RULES.md, "Severity contribution").
/// `None` means no finding: for example a busy compiler with only CPU evidence.
pub fn score(evidence: &[Evidence]) -> Option<Severity> {
    if evidence.iter().any(|e| e.weight == Weight::Confirmed) {
        return Some(Severity::Confirmed);
    }
    let pool = evidence.iter().any(|e| match &e.detail {
        EvidenceKind::CommandLine { pool_url, .. } => *pool_url,
        EvidenceKind::PoolDomain { .. } => true,
        EvidenceKind::MinerConfig { pools, .. } => !pools.is_empty(),
        _ => false,
    });
    let wallet = evidence.iter().any(|e| match &e.detail {
        EvidenceKind::Wallet { .. } => true,
        EvidenceKind::MinerConfig { wallets, .. } => !wallets.is_empty(),
        _ => false,
    });
    if pool && wallet {
        return Some(Severity::Confirmed);
    }
    // what the hashing does to the CPU cannot be renamed, packed or
    // proxied: likely alone, confirmed with the CPU it burns (issue 15)
    let hashing = evidence
        .iter()
        .any(|e| matches!(e.detail, EvidenceKind::CpuAlgorithm { .. }) && e.weight >= Weight::Likely);
    let active = evidence.iter().any(|e| {
        matches!(
            e.detail,
            EvidenceKind::Cpu { .. } | EvidenceKind::Gpu { .. } | EvidenceKind::CgroupCpu { .. }
        )
    });
    if hashing {
        return Some(if active { Severity::Confirmed } else { Severity::Likely });
    }
    let strong: BTreeSet<&str> = evidence.iter().filter(|e| e.weight == Weight::Likely).map(|e| e.kind()).collect();
    if !strong.is_empty() && (active || strong.len() >= 2) {
        return Some(Severity::Likely);
    }
    if !strong.is_empty() {
        return Some(Severity::Suspicious);
    }
    let odd = evidence.iter().any(|e| e.weight == Weight::Suspicious);
    // stratum-shaped TLS from a busy process that runs from an odd place
    // (the issue 14 rule): two independent oddities beside the CPU
    let odd_kinds: BTreeSet<&str> = evidence
        .iter()
        .filter(|e| e.weight == Weight::Suspicious)
        .map(|e| e.kind())
        .collect();
    // likewise a busy, odd process on a host whose defences were just
    // weakened (a trojan's footprint: firewall flushed, agents stopped; issue 18)
    if active && (odd_kinds.contains("tls_session") || odd_kinds.contains("footprint")) && odd_kinds.len() >= 2 {
        return Some(Severity::Likely);
    }
    let hidden = evidence.iter().any(|e| matches!(e.detail, EvidenceKind::HiddenProcess { .. }));
    if (odd && active) || hidden {
        return Some(Severity::Suspicious);
    }
    None
}

/// Scores the evidence of a host finding (a persistence entry, a preload
/// library, a hidden module, a cgroup): what a process would score, and at
/// least the strongest single weight, since a host subject has no CPU of its
/// own to add (a cron line with a pool URL and a wallet is `confirmed`, a
/// lone preload library `suspicious`). Info alone is no finding.
pub fn score_host(evidence: &[Evidence]) -> Option<Severity> {
    let strongest = match evidence.iter().map(|e| e.weight).max()? {
        Weight::Info => None,
        Weight::Suspicious => Some(Severity::Suspicious),
        Weight::Likely => Some(Severity::Likely),
        Weight::Confirmed => Some(Severity::Confirmed),
    };
    score(evidence).max(strongest)
}

/// What a host finding is about, when it is not a process or a flow.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A cron entry, systemd unit or rc script that starts a miner.
    Persistence,
    /// A library every program loads (`/etc/ld.so.preload`).
    Preload,
    /// A kernel module hidden from `/proc/modules`.
    KernelModule,
    /// A cgroup whose CPU its listed processes do not account for.
    Cgroup,
    /// What a mining trojan does to the host besides mining: the firewall
    /// flushed, a security agent stopped, SELinux or AppArmor turned off.
    Footprint,
}

impl SubjectKind {
    /// The snake_case name used in JSON, metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Persistence => "persistence",
            SubjectKind::Preload => "preload",
            SubjectKind::KernelModule => "kernel_module",
            SubjectKind::Cgroup => "cgroup",
            SubjectKind::Footprint => "footprint",
        }
    }
}

/// The subject of a host finding: a file, a module or a cgroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostSubject {
    /// What kind of thing it is.
    pub kind: SubjectKind,
    /// Which one: the file's path on the host, the module's name, the cgroup's path.
    pub name: String,
}

impl fmt::Display for HostSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// What the agent knows of a process, as a finding reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Start time in clock ticks after boot: with pid, the process's identity.
    pub start_time: u64,
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
    pub user: String,
    pub uid: u32,
    pub cwd: String,
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The Kubernetes namespace of the process's pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Kubernetes pod's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// The SHA-256 of its executable (hex), when the binary sensor read it:
    /// what a collector teaches the fleet when the finding is confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The dropper one-liner of its nearest shell ancestor (`sh -c 'curl … |
    /// bash'`, redacted: [`crate::oneliner`]), when there is one: what a
    /// collector teaches the fleet (as its SHA-256) when the finding is confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_oneliner: Option<String>,
}

/// A miner (or a suspect) on a host, with every piece of evidence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Finding {
    /// Stable id: the same process on the same host always has the same id.
    pub id: String,
    /// The scored severity.
    pub severity: Severity,
    /// The host name.
    pub host: String,
    /// The process id (absent for findings from offline captures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// What the process is.
    pub process: ProcessInfo,
    /// All evidence, strongest first.
    pub evidence: Vec<Evidence>,
    /// The flow, for network findings with no process (offline captures,
    /// flows whose socket could not be found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowInfo>,
    /// What a host finding is about (a persistence file, a preload library,
    /// a hidden kernel module, a cgroup); absent for process and flow findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<HostSubject>,
    /// Cores used over the last window, if measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// GPU use over the last window, from the GPU evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuUse>,
    /// Unix seconds when first and last seen.
    pub first_seen: u64,
    /// Unix seconds when last seen.
    pub last_seen: u64,
}

impl Finding {
    /// Builds a finding from a process and its evidence, or `None` when the
    /// evidence does not add up to one. Evidence is sorted strongest first.
    pub fn assess(host: &str, process: ProcessInfo, mut evidence: Vec<Evidence>, now: u64) -> Option<Finding> {
        let severity = score(&evidence)?;
        evidence.sort_by_key(|e| std::cmp::Reverse(e.weight));
        let cpu_cores = evidence.iter().find_map(|e| match e.detail {
            EvidenceKind::Cpu { cores, .. } => Some(cores),
            _ => None,
        });
        let gpu = GpuUse::from_evidence(&evidence);
        Some(Finding {
            id: finding_id(host, process.pid, process.start_time),
            severity,
            host: host.to_string(),
            pid: Some(process.pid),
            process,
            evidence,
            flow: None,
            subject: None,
            cpu_cores,
            gpu,
            first_seen: now,
            last_seen: now,
        })
    }
}

/// A process's GPU use over the last window, summed up from its GPU evidence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GpuUse {
    /// The GPU (the busiest one's label when several).
    pub gpu: String,
    /// Utilisation over the window, percent (the busiest GPU's).
    pub utilization_percent: f64,
    /// GPU memory held, bytes (all GPUs).
    pub memory_bytes: u64,
    /// GPUs used.
    pub gpus: usize,
}

impl GpuUse {
    /// The GPU use the evidence shows, if it has GPU evidence.
    pub fn from_evidence(evidence: &[Evidence]) -> Option<GpuUse> {
        let mut out: Option<GpuUse> = None;
        for e in evidence {
            let EvidenceKind::Gpu {
                gpu,
                utilization_percent,
                memory_bytes,
                ..
            } = &e.detail
            else {
                continue;
            };
            match &mut out {
                None => {
                    out = Some(GpuUse {
                        gpu: gpu.clone(),
                        utilization_percent: *utilization_percent,
                        memory_bytes: *memory_bytes,
                        gpus: 1,
                    })
                }
                Some(u) => {
                    if *utilization_percent > u.utilization_percent {
                        u.gpu = gpu.clone();
                        u.utilization_percent = *utilization_percent;
                    }
                    u.memory_bytes += memory_bytes;
                    u.gpus += 1;
                }
            }
        }
        out
    }
}

/// A network flow, from the miner's side.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FlowInfo {
    /// The client (miner) endpoint.
    pub client: String,
    /// The server (pool) endpoint.
    pub server: String,
    /// "tcp" or "udp".
    pub transport: String,
}

impl Finding {
    /// A finding about a flow with no known process.
    pub fn for_flow(host: &str, flow: FlowInfo, evidence: Vec<Evidence>, now: u64) -> Option<Finding> {
        let key = format!("{host}\0{}\0{}\0{}", flow.client, flow.server, flow.transport);
        Some(Self::without_process(
            host,
            &key,
            score(&evidence)?,
            evidence,
            Some(flow),
            None,
            now,
        ))
    }

    /// A finding about the host itself (see [`HostSubject`]), scored by
    /// [`score_host`]. Its id is stable for the same subject on the same host.
    pub fn for_host(host: &str, subject: HostSubject, evidence: Vec<Evidence>, now: u64) -> Option<Finding> {
        let key = format!("{host}\0host\0{}\0{}", subject.kind.as_str(), subject.name);
        Some(Self::without_process(
            host,
            &key,
            score_host(&evidence)?,
            evidence,
            None,
            Some(subject),
            now,
        ))
    }

    /// A flow or host finding: its id is a hash of `key`, its evidence sorted strongest first.
    fn without_process(
        host: &str,
        key: &str,
        severity: Severity,
        mut evidence: Vec<Evidence>,
        flow: Option<FlowInfo>,
        subject: Option<HostSubject>,
        now: u64,
    ) -> Finding {
        use sha2::{Digest, Sha256};
        evidence.sort_by_key(|e| std::cmp::Reverse(e.weight));
        Finding {
            id: hex::encode(&Sha256::digest(key.as_bytes())[..8]),
            severity,
            host: host.to_string(),
            pid: None,
            process: ProcessInfo::default(),
            evidence,
            flow,
            subject,
            cpu_cores: None,
            gpu: None,
            first_seen: now,
            last_seen: now,
        }
    }

    /// A short name of what the finding is about: the process's name, the
    /// flow's server, or the host subject.
    pub fn subject_label(&self) -> String {
        if let Some(s) = &self.subject {
            s.to_string()
        } else if let Some(flow) = &self.flow {
            format!("flow {}", flow.server)
        } else if !self.process.comm.is_empty() {
            self.process.comm.clone()
        } else {
            self.process.exe.rsplit('/').next().unwrap_or("").to_string()
        }
    }
}

/// The most a finding's JSON may take when it leaves the agent.
pub const MAX_FINDING_BYTES: usize = 64 * 1024;

/// How the note of a finding cut to its size cap starts.
pub const TRIM_NOTE_PREFIX: &str = "trimmed to fit ";

/// Room kept for the `trimmed` evidence item a bounded finding gains.
const TRIM_NOTE_BYTES: usize = 400;

impl Finding {
    /// The finding cut down to at most `max_bytes` of JSON; see [`Finding::bound`].
    pub fn bounded(mut self, max_bytes: usize) -> Finding {
        self.bound(max_bytes);
        self
    }

    /// Cuts the finding down to at most `max_bytes` of JSON, and says so in
    /// its evidence: long strings in the process and the evidence are
    /// shortened and long lists cut (in rounds, each tighter, down to 64
    /// bytes and 4 items), then the weakest evidence items are dropped, then
    /// what is left is cut to 32 bytes and 1 item; one `trimmed` evidence item
    /// (weight info) tells what was cut and how large the finding was. The
    /// id, host, severity and subject are never touched, nor the strongest
    /// evidence item's presence, so the smallest form can exceed a tiny cap.
    /// Trimming again (a smaller cap) adds to the same note. Returns whether
    /// anything was cut.
    pub fn bound(&mut self, max_bytes: usize) -> bool {
        let len = |v: &serde_json::Value| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
        let Ok(mut v) = serde_json::to_value(&*self) else { return false };
        if len(&v) <= max_bytes {
            return false;
        }
        // an earlier note of this kind is folded into this one
        let mut before = (len(&v) as u64, 0u64, 0u64);
        if let Some(serde_json::Value::Array(ev)) = v.get_mut("evidence") {
            ev.retain(|e| {
                let Ok(Evidence {
                    detail:
                        EvidenceKind::Trimmed {
                            note,
                            original_bytes,
                            dropped_evidence,
                            cut_fields,
                        },
                    ..
                }) = serde_json::from_value::<Evidence>(e.clone())
                else {
                    return true;
                };
                if !note.starts_with(TRIM_NOTE_PREFIX) {
                    return true;
                }
                before = (original_bytes, dropped_evidence, cut_fields);
                false
            });
        }
        let (original_bytes, mut dropped, mut cut) = before;
        let budget = max_bytes.saturating_sub(TRIM_NOTE_BYTES);
        let shrink_all = |v: &mut serde_json::Value, max_str: usize, max_list: usize| {
            let mut n = 0;
            for key in ["process", "evidence", "gpu", "flow"] {
                if let Some(x) = v.get_mut(key) {
                    // the evidence list itself is cut below, weakest first
                    n += shrink(x, max_str, max_list, key == "evidence");
                }
            }
            n
        };
        // strings and lists first, while a pool URL or a path still reads whole
        for (max_str, max_list) in [(4096, 64), (1024, 16), (256, 8), (64, 4)] {
            if len(&v) <= budget {
                break;
            }
            cut += shrink_all(&mut v, max_str, max_list);
        }
        // then the weakest evidence (evidence is sorted strongest first);
        // each item is measured once, so thousands of items (a hostile
        // report at the collector) cost one pass, not one pass per item
        let mut total = len(&v);
        if total > budget {
            if let Some(serde_json::Value::Array(ev)) = v.get_mut("evidence") {
                let sizes: Vec<usize> = ev.iter().map(len).collect();
                while total > budget && ev.len() > 1 {
                    ev.pop();
                    // the item and the comma before it
                    total = total.saturating_sub(sizes[ev.len()] + 1);
                    dropped += 1;
                }
            }
        }
        // last, what is left cut to the bone
        if len(&v) > budget {
            cut += shrink_all(&mut v, 32, 1);
        }
        let Ok(mut f) = serde_json::from_value::<Finding>(v) else {
            return false;
        };
        f.evidence.push(Evidence::heuristic(
            EvidenceKind::Trimmed {
                note: format!(
                    "{TRIM_NOTE_PREFIX}{max_bytes} bytes (was {original_bytes}): {dropped} evidence items dropped, {cut} strings or list items cut"
                ),
                original_bytes,
                dropped_evidence: dropped,
                cut_fields: cut,
            },
            Weight::Info,
        ));
        *self = f;
        true
    }
}

/// Shortens strings longer than `max_str` bytes (on a char boundary, ending
/// in `…`; the kind, weight, origin and rule names are never cut) and lists longer than `max_list` items inside `v`; `top` spares
/// `v`'s own length when it is a list. Returns how many were cut.
fn shrink(v: &mut serde_json::Value, max_str: usize, max_list: usize, top: bool) -> u64 {
    use serde_json::Value;
    match v {
        Value::String(s) if s.len() > max_str => {
            let mut end = max_str;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
            1
        }
        Value::Array(a) => {
            let mut n = 0;
            if !top && a.len() > max_list {
                n += (a.len() - max_list) as u64;
                a.truncate(max_list);
            }
            n + a.iter_mut().map(|x| shrink(x, max_str, max_list, false)).sum::<u64>()
        }
        // names from fixed sets (the evidence kind, weights, enums) and rule names stay whole
        Value::Object(m) => m
            .iter_mut()
            .filter(|(k, _)| !matches!(k.as_str(), "kind" | "weight" | "origin" | "rule"))
            .map(|(_, x)| shrink(x, max_str, max_list, false))
            .sum(),
        _ => 0,
    }
}

/// The stable id of a process's finding: a hash of host, pid and start time,
/// so a reused pid never shares an id with an earlier process.
pub fn finding_id(host: &str, pid: u32, start_time: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(host.as_bytes());
    h.update([0]);
    h.update(pid.to_le_bytes());
    h.update(start_time.to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(detail: EvidenceKind, w: Weight) -> Evidence {
        Evidence::heuristic(detail, w)
    }
    fn cpu() -> Evidence {
        ev(
            EvidenceKind::Cpu {
                cores: 1.0,
                window_seconds: 5.0,
            },
            Weight::Info,
        )
    }
    fn name() -> Evidence {
        ev(
            EvidenceKind::ProcessName {
                name: "xmrig".into(),
                field: "comm".into(),
            },
            Weight::Likely,
        )
    }
    fn origin() -> Evidence {
        ev(
            EvidenceKind::ExecutableOrigin {
                origin: Origin::Deleted,
                path: "/tmp/x".into(),
            },
            Weight::Suspicious,
        )
    }

    #[test]
    fn busy_alone_is_nothing() {
        assert_eq!(score(&[cpu()]), None);
    }
    #[test]
    fn odd_origin_needs_activity() {
        assert_eq!(score(&[origin()]), None);
        assert_eq!(score(&[origin(), cpu()]), Some(Severity::Suspicious));
        // CPU its cgroup spent in processes the listing does not show is activity too
        let cg = ev(
            EvidenceKind::CgroupCpu {
                cgroup: "/system.slice/cron.service".into(),
                cores: 0.5,
                unaccounted_cores: 0.45,
                window_seconds: 60.0,
            },
            Weight::Info,
        );
        assert_eq!(score(std::slice::from_ref(&cg)), None, "busy alone is nothing");
        assert_eq!(score(&[origin(), cg]), Some(Severity::Suspicious));
    }
    #[test]
    fn randomx_like_hashing_is_likely_alone_and_confirmed_with_cpu() {
        let h = ev(
            EvidenceKind::CpuAlgorithm {
                algorithm: "randomx-like".into(),
                switches: 900,
                rate_per_second: 90.0,
                window_seconds: 10.0,
                modes: vec!["down".into(), "up".into(), "toward zero".into()],
            },
            Weight::Likely,
        );
        assert_eq!(score(std::slice::from_ref(&h)), Some(Severity::Likely));
        assert_eq!(score(&[h.clone(), cpu()]), Some(Severity::Confirmed));
        assert!(h.detail.summary().contains("90.0/s") && h.detail.summary().contains("toward zero"));
        assert_eq!(h.kind(), "cpu_algorithm");
    }
    #[test]
    fn stratum_shaped_tls_needs_cpu_and_an_odd_origin_to_be_likely() {
        let tls = |w| {
            ev(
                EvidenceKind::TlsSession {
                    remote: "203.0.113.7:443".into(),
                    server_name: None,
                    ja4: "t13i181000_e8a523a41297_ef7df7f74e48".into(),
                    pushes: 6,
                    push_bytes: [340, 362],
                    push_interval_seconds: 31.0,
                    client_records: 4,
                    seconds: 190.0,
                },
                w,
            )
        };
        let s = tls(Weight::Suspicious);
        assert_eq!(score(std::slice::from_ref(&s)), None, "alone: kept as evidence");
        assert_eq!(score(&[s.clone(), cpu()]), Some(Severity::Suspicious), "a busy streaming client");
        assert_eq!(score(&[s.clone(), origin()]), None, "an idle one from /tmp");
        assert_eq!(score(&[s.clone(), origin(), cpu()]), Some(Severity::Likely));
        // to a pool-like destination the item weighs likely: with CPU, likely
        let l = tls(Weight::Likely);
        assert_eq!(score(std::slice::from_ref(&l)), Some(Severity::Suspicious));
        assert_eq!(score(&[l.clone(), cpu()]), Some(Severity::Likely));
        assert!(l.detail.summary().contains("no server name") && l.detail.summary().contains("JA4 t13i"));
        // two ordinary oddities with CPU stay suspicious (the rule is TLS's own)
        let masq = ev(
            EvidenceKind::Masquerade {
                reason: "kernel thread name".into(),
                comm: "kworker/0:1".into(),
                exe: "/tmp/x".into(),
                argv0: "kworker/0:1".into(),
            },
            Weight::Suspicious,
        );
        assert_eq!(score(&[masq, origin(), cpu()]), Some(Severity::Suspicious));
    }
    #[test]
    fn strong_sign_needs_activity_or_a_second_kind() {
        assert_eq!(score(&[name()]), Some(Severity::Suspicious));
        assert_eq!(score(&[name(), cpu()]), Some(Severity::Likely));
        let flag = ev(
            EvidenceKind::CommandLine {
                matched: "--donate-level".into(),
                base64: false,
                pool_url: false,
            },
            Weight::Likely,
        );
        assert_eq!(score(&[name(), flag]), Some(Severity::Likely));
    }
    #[test]
    fn pool_and_wallet_confirm() {
        let url = ev(
            EvidenceKind::CommandLine {
                matched: "stratum+tcp://".into(),
                base64: false,
                pool_url: true,
            },
            Weight::Likely,
        );
        let w = ev(
            EvidenceKind::Wallet {
                coin: "monero".into(),
                address: "4...".into(),
                source: "cmdline".into(),
            },
            Weight::Likely,
        );
        assert_eq!(score(std::slice::from_ref(&url)), Some(Severity::Suspicious));
        assert_eq!(score(&[url, w]), Some(Severity::Confirmed));
    }
    #[test]
    fn evidence_serialises_flat_with_kind() {
        let j = serde_json::to_value(name()).unwrap();
        assert_eq!(j["kind"], "process_name");
        assert_eq!(j["name"], "xmrig");
        assert_eq!(j["weight"], "likely");
        let back: Evidence = serde_json::from_value(j).unwrap();
        assert_eq!(back, name());
    }
    #[test]
    fn ids_differ_by_start_time() {
        assert_ne!(finding_id("h", 10, 1), finding_id("h", 10, 2));
        assert_eq!(finding_id("h", 10, 1), finding_id("h", 10, 1));
    }

    #[test]
    fn host_findings_score_their_strongest_evidence_and_keep_their_id() {
        let preload = ev(
            EvidenceKind::Preload {
                library: "/lib/x.so".into(),
                source: "ld.so.preload".into(),
            },
            Weight::Suspicious,
        );
        assert_eq!(score(std::slice::from_ref(&preload)), None, "a process needs activity for that");
        assert_eq!(
            score_host(std::slice::from_ref(&preload)),
            Some(Severity::Suspicious),
            "a host subject does not"
        );
        assert_eq!(score_host(&[cpu()]), None, "info alone is nothing");
        assert_eq!(score_host(&[name()]), Some(Severity::Likely));
        let subject = HostSubject {
            kind: SubjectKind::Preload,
            name: "/lib/x.so".into(),
        };
        let a = Finding::for_host("h", subject.clone(), vec![preload.clone()], 1).unwrap();
        let b = Finding::for_host("h", subject.clone(), vec![preload, name()], 2).unwrap();
        assert_eq!(a.id, b.id, "the same subject on the same host");
        assert_eq!(b.severity, Severity::Likely);
        assert_eq!(b.evidence[0].weight, Weight::Likely, "strongest first");
        assert_ne!(a.id, Finding::for_host("other", subject, vec![cpu(), name()], 1).unwrap().id);
        assert_eq!(a.subject_label(), "preload /lib/x.so");
        assert!(a.pid.is_none() && a.flow.is_none());
    }

    #[test]
    fn bound_cuts_an_oversized_finding_and_says_so() {
        let config = |i: usize| {
            ev(
                EvidenceKind::MinerConfig {
                    path: format!("/home/u/c{i}.json"),
                    pools: (0..500)
                        .map(|j| format!("stratum+tcp://pool{j}.example:3333/{}", "p".repeat(900)))
                        .collect(),
                    wallets: vec!["4".repeat(95)],
                    keys: vec!["donate-level".into()],
                    sha256: None,
                },
                Weight::Confirmed,
            )
        };
        let process = ProcessInfo {
            pid: 7,
            comm: "xmrig".into(),
            cmdline: format!("xmrig {}", "--config x.json ".repeat(20_000)),
            ..Default::default()
        };
        let mut evidence: Vec<Evidence> = (0..5).map(config).collect();
        evidence.push(cpu());
        let f = Finding::assess("h", process, evidence, 1).unwrap();
        let big = serde_json::to_vec(&f).unwrap().len();
        assert!(big > 2_000_000, "{big}");
        let small = f.clone().bounded(MAX_FINDING_BYTES);
        let n = serde_json::to_vec(&small).unwrap().len();
        assert!(n <= MAX_FINDING_BYTES, "{n}");
        assert_eq!((small.id.as_str(), small.severity, small.pid), (f.id.as_str(), f.severity, f.pid));
        assert_eq!(small.evidence[0].kind(), "miner_config", "the strongest evidence stays");
        let note = small.evidence.last().unwrap();
        let EvidenceKind::Trimmed { original_bytes, .. } = &note.detail else {
            panic!("no trimmed note: {:?}", note.kind())
        };
        assert_eq!(*original_bytes, big as u64);
        assert_eq!(note.weight, Weight::Info);
        assert!(note.summary().starts_with("trimmed to fit 65536 bytes"), "{}", note.summary());
        assert!(small.process.cmdline.ends_with('…') && small.process.cmdline.starts_with("xmrig --config"));
        // it still reads back as a finding, and trimming further folds into one note
        let back: Finding = serde_json::from_slice(&serde_json::to_vec(&small).unwrap()).unwrap();
        let tiny = back.bounded(1200);
        assert!(serde_json::to_vec(&tiny).unwrap().len() <= 1200, "{:?}", tiny);
        let notes: Vec<_> = tiny.evidence.iter().filter(|e| e.kind() == "trimmed").collect();
        assert_eq!(notes.len(), 1);
        let EvidenceKind::Trimmed {
            original_bytes,
            dropped_evidence,
            ..
        } = &notes[0].detail
        else {
            unreachable!()
        };
        assert_eq!(*original_bytes, big as u64, "the first size is kept");
        assert!(*dropped_evidence >= 1);
        assert_eq!(tiny.evidence[0].kind(), "miner_config");
        // a finding under the cap is left alone
        let mut whole = Finding::assess("h", ProcessInfo::default(), vec![name(), cpu()], 1).unwrap();
        let copy = whole.clone();
        assert!(!whole.bound(MAX_FINDING_BYTES));
        assert_eq!(whole, copy);
    }
}
