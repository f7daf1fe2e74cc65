//! The detector: joins observations per process (pid + start time), adds
//! what the process's own attributes give away (names, command line,
//! executable origin, masquerade, sustained CPU), scores the evidence and
//! applies the allowlist. Sensors observe; only the detector decides.

use crate::sensors::{Observation, Proc, ProcKey, Snapshot};
use crate::sensors::process::cgroup_identity;
use rigwatch_signatures::{Evidence, EvidenceKind, Finding, FlowInfo, Origin, ProcessInfo, Signatures, Weight};
use std::collections::HashMap;
use std::sync::Arc;

/// Detector settings (all have working defaults).
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// Cores a process must use over the window to count as busy.
    pub cpu_cores_threshold: f64,
    /// Directories anyone can write to (executables there are odd).
    pub writable_dirs: Vec<String>,
    /// Dot-directories that ordinary toolchains install into (not odd).
    pub usual_dot_dirs: Vec<String>,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            cpu_cores_threshold: 0.5,
            writable_dirs: ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/", "/var/lock/", "/run/lock/"]
                .map(String::from)
                .to_vec(),
            usual_dot_dirs: [
                ".cargo", ".rustup", ".local", ".pyenv", ".nvm", ".vscode-server", ".cursor-server", ".sdkman",
                ".rbenv", ".gradle", ".m2", ".npm", ".conda", ".deno", ".bun", ".venv", ".git", ".dotnet",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// The detector.
pub struct Detector {
    sig: Arc<Signatures>,
    cfg: DetectorConfig,
    host: String,
    /// Evidence from a process's own attributes, by identity, with the comm it was computed for.
    own: HashMap<ProcKey, (String, Vec<Evidence>)>,
    /// Evidence seen once that stays true for the life of the process (a
    /// stratum session, a pool DNS query, a TLS SNI): sensors report it once.
    sticky: HashMap<ProcKey, Vec<Evidence>>,
}

/// Evidence kinds that are events (seen once) rather than states.
const STICKY: &[&str] = &["stratum", "tls_sni", "dns"];

impl Detector {
    /// A detector for `host` with a signature set.
    pub fn new(sig: Arc<Signatures>, cfg: DetectorConfig, host: &str) -> Self {
        Detector { sig, cfg, host: host.to_string(), own: HashMap::new(), sticky: HashMap::new() }
    }

    /// Takes a new signature set (hot reload).
    pub fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
        self.own.clear();
    }

    /// Assesses every process in `cur` (CPU measured against `prev`) with the
    /// sensors' observations. Returns the findings, most severe first.
    pub fn assess(&mut self, prev: Option<&Snapshot>, cur: &Snapshot, observations: &[Observation], now: u64) -> Vec<Finding> {
        let mut extra: HashMap<ProcKey, Vec<Evidence>> = HashMap::new();
        let mut hashes: HashMap<ProcKey, [u8; 32]> = HashMap::new();
        let mut flows: std::collections::BTreeMap<(String, String, bool), Vec<Evidence>> = Default::default();
        for o in observations {
            match o {
                Observation::Evidence(k, e) if STICKY.contains(&e.kind()) => {
                    let v = self.sticky.entry(*k).or_default();
                    if !v.contains(e) {
                        v.push(e.clone());
                    }
                }
                Observation::Evidence(k, e) => extra.entry(*k).or_default().push(e.clone()),
                Observation::BinarySha256(k, h) => {
                    hashes.insert(*k, *h);
                }
                Observation::Flow(f) => {
                    flows.entry((f.client.to_string(), f.server.to_string(), f.tcp)).or_default().push(f.evidence.clone())
                }
            }
        }
        self.own.retain(|k, _| cur.procs.contains_key(k));
        self.sticky.retain(|k, _| cur.procs.contains_key(k));
        for (k, v) in &self.sticky {
            extra.entry(*k).or_default().extend(v.iter().cloned());
        }
        let window = prev.map(|p| cur.at.saturating_duration_since(p.at).as_secs_f64()).unwrap_or(0.0);
        let mut findings = Vec::new();
        let me = std::process::id();
        for (key, p) in &cur.procs {
            // kernel threads are never miners; rigwatch itself carries protocol strings
            if p.kernel_thread || key.pid == me {
                continue;
            }
            let mut ev = self.own_evidence(p);
            if let Some(cores) = prev.and_then(|pr| cur.cores_since(pr, key)) {
                if cores >= self.cfg.cpu_cores_threshold {
                    ev.push(Evidence::heuristic(
                        EvidenceKind::Cpu { cores: round2(cores), window_seconds: round2(window) },
                        Weight::Info,
                    ));
                }
            }
            if let Some(x) = extra.remove(key) {
                ev.extend(x);
                ev = dedup(ev);
            }
            if ev.is_empty() {
                continue;
            }
            let info = process_info(p);
            if self.sig.allowed(hashes.get(key), &info.exe, &info.user, &info.cgroup).is_some() {
                continue;
            }
            if let Some(f) = Finding::assess(&self.host, info, ev, now) {
                findings.push(f);
            }
        }
        for ((client, server, tcp), ev) in flows {
            let flow = FlowInfo { client, server, transport: if tcp { "tcp" } else { "udp" }.into() };
            findings.extend(Finding::for_flow(&self.host, flow, dedup(ev), now));
        }
        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.process.pid.cmp(&b.process.pid)));
        findings
    }

    fn own_evidence(&mut self, p: &Proc) -> Vec<Evidence> {
        if let Some((comm, ev)) = self.own.get(&p.key) {
            if *comm == p.comm {
                return ev.clone();
            }
        }
        let ev = own_evidence(&self.sig, &self.cfg, p);
        self.own.insert(p.key, (p.comm.clone(), ev.clone()));
        ev
    }
}

/// Drops repeated evidence (the same flow seen by two sensors, a line seen twice).
pub fn dedup(ev: Vec<Evidence>) -> Vec<Evidence> {
    let mut out: Vec<Evidence> = Vec::with_capacity(ev.len());
    for e in ev {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The finding's view of a process.
pub fn process_info(p: &Proc) -> ProcessInfo {
    let f = &p.fixed;
    let (container_id, pod_uid, systemd_unit) = cgroup_identity(&f.cgroup);
    ProcessInfo {
        pid: p.key.pid,
        ppid: p.ppid,
        start_time: p.key.start_time,
        comm: p.comm.clone(),
        exe: f.exe.clone().unwrap_or_default(),
        cmdline: p.cmdline(),
        user: f.user.clone(),
        uid: f.uid,
        cwd: f.cwd.clone().unwrap_or_default(),
        cgroup: f.cgroup.clone(),
        container_id,
        pod_uid,
        systemd_unit,
    }
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Evidence from the process's own attributes: names, command line, origin, masquerade.
pub fn own_evidence(sig: &Signatures, cfg: &DetectorConfig, p: &Proc) -> Vec<Evidence> {
    let f = &p.fixed;
    let exe = f.exe.as_deref().unwrap_or("");
    let exe_clean = exe.trim_end_matches(" (deleted)");
    let argv0 = f.argv.first().map(String::as_str).unwrap_or("");
    let mut ev = sig.match_names(&[("comm", &p.comm), ("exe", basename(exe_clean)), ("argv0", basename(argv0))]);
    ev.extend(sig.scan_cmdline(&p.cmdline()));
    if let Some(o) = origin(cfg, exe) {
        ev.push(Evidence::heuristic(EvidenceKind::ExecutableOrigin { origin: o, path: exe.to_string() }, Weight::Suspicious));
    }
    if let Some(reason) = masquerade(p) {
        ev.push(Evidence::heuristic(
            EvidenceKind::Masquerade { reason, comm: p.comm.clone(), exe: exe.to_string(), argv0: argv0.to_string() },
            Weight::Suspicious,
        ));
    }
    ev
}

/// How an executable path's origin is odd, if it is.
pub fn origin(cfg: &DetectorConfig, exe: &str) -> Option<Origin> {
    if exe.is_empty() {
        return None;
    }
    if exe.starts_with("/memfd:") {
        return Some(Origin::Memfd);
    }
    if exe.ends_with(" (deleted)") {
        return Some(Origin::Deleted);
    }
    if cfg.writable_dirs.iter().any(|d| exe.starts_with(d.as_str())) {
        return Some(Origin::WritableDir);
    }
    let dir = exe.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    if let Ok(m) = std::fs::metadata(if dir.is_empty() { "/" } else { dir }) {
        use std::os::unix::fs::PermissionsExt;
        // world-writable without the sticky bit's protection is odd wherever it is
        if m.permissions().mode() & 0o002 != 0 {
            return Some(Origin::WritableDir);
        }
    }
    let dotted = dir.split('/').any(|c| c.starts_with('.') && c != "." && c != ".." && !cfg.usual_dot_dirs.iter().any(|u| u == c));
    dotted.then_some(Origin::DotDir)
}

const KERNEL_THREAD_PREFIXES: &[&str] = &[
    "kworker", "ksoftirqd", "kswapd", "kthreadd", "migration/", "rcu_", "watchdog", "kcompactd", "khugepaged",
    "kdevtmpfs", "jbd2/", "irq/", "kblockd", "kauditd", "khungtaskd", "oom_reaper", "writeback", "kintegrityd",
    "cpuhp/", "idle_inject", "ext4-rsv", "xfs", "scsi_", "netns", "mm_percpu_wq", "kthrotld",
];

/// Why a process looks like it pretends to be something else, if it does.
pub fn masquerade(p: &Proc) -> Option<String> {
    if p.kernel_thread {
        return None;
    }
    let f = &p.fixed;
    let comm = p.comm.as_str();
    let argv0 = f.argv.first().map(String::as_str).unwrap_or("");
    let kthread_like = |n: &str| {
        let n = n.trim_start_matches('[');
        KERNEL_THREAD_PREFIXES.iter().any(|k| n.starts_with(k))
    };
    if kthread_like(comm) || (argv0.starts_with('[') && argv0.ends_with(']')) {
        return Some(format!(
            "user-space process named like a kernel thread ({:?}, ppid {}, has {})",
            if argv0.starts_with('[') { argv0 } else { comm },
            p.ppid,
            if f.exe.is_some() { "an executable" } else { "a command line" }
        ));
    }
    let exe = f.exe.as_deref()?.trim_end_matches(" (deleted)");
    if exe.starts_with("/memfd:") {
        return None;
    }
    let prefix15 = |s: &str| -> String { s.chars().take(15).collect() };
    let exe_base = prefix15(basename(exe));
    let argv_base = prefix15(basename(argv0));
    if !comm.is_empty() && comm != exe_base && comm != argv_base && !argv0.is_empty() {
        return Some(format!("comm {comm:?} is neither the executable {exe_base:?} nor argv[0] {argv_base:?}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let c = DetectorConfig::default();
        assert_eq!(origin(&c, "/memfd:x (deleted)"), Some(Origin::Memfd));
        assert_eq!(origin(&c, "/usr/bin/x (deleted)"), Some(Origin::Deleted));
        assert_eq!(origin(&c, "/dev/shm/x"), Some(Origin::WritableDir));
        assert_eq!(origin(&c, "/home/u/.configrc/a/kswapd0"), Some(Origin::DotDir));
        assert_eq!(origin(&c, "/root/.cargo/bin/cargo"), None);
        assert_eq!(origin(&c, "/usr/bin/bash"), None);
    }
}
