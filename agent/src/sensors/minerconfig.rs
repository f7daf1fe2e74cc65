//! The miner-config sensor: finds pools and wallets in miner configuration
//! files — the file given with `-c`/`--config`, `config.json` beside the
//! executable and in the cwd, and the owner's `~/.xmrig.json` and
//! `~/.config/xmrig.json`. Files are read through `/proc/PID/root`, so a
//! miner in a container is read in its own filesystem.

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::host::process::ProcStatic;
use crate::sensors::{Proc, ProcKey};
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Keys that only miner configs have (XMRig, xmr-stak, cpuminer, SRBMiner…).
const MINER_KEYS: &[&str] = &[
    "donate-level",
    "donate-over-proxy",
    "randomx",
    "pool_list",
    "wallet_address",
    "pool_address",
    "cpu_threads_conf",
    "rig-id",
    "nicehash",
    "max-threads-hint",
    "huge-pages-jit",
    "1gb-pages",
    "wrmsr",
];

/// The miner-config sensor.
pub struct MinerConfigSensor {
    sig: Arc<Signatures>,
    root: PathBuf,
    /// Per process, with the fixed part it was computed for (exec replaces it).
    done: HashMap<ProcKey, (Arc<ProcStatic>, Vec<Evidence>)>,
}

impl MinerConfigSensor {
    /// A sensor over `root` (normally /proc).
    pub fn new(sig: Arc<Signatures>, root: &Path) -> Self {
        MinerConfigSensor {
            sig,
            root: root.to_path_buf(),
            done: HashMap::new(),
        }
    }

    fn check(&self, p: &Proc) -> Vec<Evidence> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for path in candidates(p) {
            if !seen.insert(path.clone()) {
                continue;
            }
            // inside the process's own root, as its uid: never the host's path,
            // never through a link, never blocking on a FIFO
            let root = self.root.join(p.key.pid.to_string()).join("root");
            let Ok(bytes) = crate::host::safefile::read_in_root(&root, &path, MAX_CONFIG_BYTES, p.fixed.uid) else {
                continue;
            };
            if let Some(e) = assess_config(&self.sig, &path.display().to_string(), &bytes) {
                out.push(e);
            }
        }
        out
    }
}

/// Candidate config paths for a process (absolute, in its own filesystem).
pub fn candidates(p: &Proc) -> Vec<PathBuf> {
    let f = &p.fixed;
    let cwd = f.cwd.as_deref().map(PathBuf::from);
    let mut out = Vec::new();
    let argv = &f.argv;
    for (i, a) in argv.iter().enumerate() {
        let given = if a == "-c" || a == "--config" {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_string)
        };
        if let Some(g) = given {
            let g = PathBuf::from(g);
            out.push(if g.is_absolute() {
                g
            } else {
                cwd.clone().unwrap_or_default().join(g)
            });
        }
    }
    if let Some(exe) = &f.exe {
        let exe = exe.trim_end_matches(" (deleted)");
        if exe.starts_with('/') {
            if let Some(dir) = Path::new(exe).parent() {
                out.push(dir.join("config.json"));
            }
        }
    }
    if let Some(c) = &cwd {
        out.push(c.join("config.json"));
    }
    if let Some(home) = home_of(f.uid) {
        out.push(home.join(".xmrig.json"));
        out.push(home.join(".config/xmrig.json"));
    }
    out
}

fn home_of(uid: u32) -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// Evidence from one config file's bytes, or `None` when it is no miner config.
/// Accepts JSON (XMRig and most miners) and, failing that, scans the text
/// (xmr-stak's `pools.txt` is JSON without braces).
pub fn assess_config(sig: &Signatures, path: &str, bytes: &[u8]) -> Option<Evidence> {
    let text = String::from_utf8_lossy(bytes);
    let mut pools = Vec::new();
    let mut wallets = Vec::new();
    let mut keys = Vec::new();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => walk(&v, &mut pools, &mut wallets, &mut keys, sig),
        Err(_) => {
            for k in MINER_KEYS {
                if text.contains(&format!("\"{k}\"")) {
                    keys.push(k.to_string());
                }
            }
            for e in sig.scan_cmdline(&text) {
                match e.detail {
                    EvidenceKind::Wallet { address, .. } => wallets.push(address),
                    EvidenceKind::PoolDomain { domain, .. } => pools.push(domain),
                    EvidenceKind::CommandLine {
                        matched, pool_url: true, ..
                    } => pools.push(matched),
                    _ => {}
                }
            }
        }
    }
    pools.sort();
    pools.dedup();
    wallets.sort();
    wallets.dedup();
    keys.sort();
    keys.dedup();
    if pools.is_empty() && keys.is_empty() {
        return None;
    }
    let weight = if !pools.is_empty() && !wallets.is_empty() {
        Weight::Confirmed
    } else {
        Weight::Likely
    };
    Some(Evidence::heuristic(
        EvidenceKind::MinerConfig {
            path: path.to_string(),
            pools,
            wallets,
            keys,
        },
        weight,
    ))
}

fn walk(v: &serde_json::Value, pools: &mut Vec<String>, wallets: &mut Vec<String>, keys: &mut Vec<String>, sig: &Signatures) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                let kl = k.to_ascii_lowercase();
                if MINER_KEYS.contains(&kl.as_str()) {
                    keys.push(kl.clone());
                }
                if let Some(s) = val.as_str() {
                    if matches!(kl.as_str(), "url" | "pool" | "pool_address" | "host" | "server") && looks_like_pool(s) {
                        pools.push(s.to_string());
                    }
                    if matches!(kl.as_str(), "user" | "wallet" | "wallet_address" | "login" | "pass" | "address") {
                        for e in sig.wallets_in(s, "config") {
                            if let EvidenceKind::Wallet { address, .. } = e.detail {
                                wallets.push(address);
                            }
                        }
                    }
                }
                walk(val, pools, wallets, keys, sig);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, pools, wallets, keys, sig)),
        _ => {}
    }
}

/// A pool URL or host:port (not a file path or a plain word).
fn looks_like_pool(s: &str) -> bool {
    s.contains("://") || s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

impl Sensor for MinerConfigSensor {
    fn name(&self) -> &'static str {
        "minerconfig"
    }

    fn per_process(&self) -> bool {
        true
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        if !snap.partial {
            self.done.retain(|k, _| snap.procs.contains_key(k));
        }
        for (key, p) in &snap.procs {
            if p.kernel_thread {
                continue;
            }
            let fresh = self.done.get(key).is_some_and(|(f, _)| Arc::ptr_eq(f, &p.fixed));
            if !fresh {
                let found = self.check(p);
                self.done.insert(*key, (p.fixed.clone(), found));
            }
            out.extend(self.done[key].1.iter().map(|e| Observation::Evidence(*key, e.clone())));
        }
        Ok(())
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
        self.done.clear();
    }
}
