//! The miner-config sensor: finds pools and wallets in miner configuration
//! files — the file given with `-c`/`--config`, `config.json` beside the
//! executable and in the cwd, and the owner's `~/.xmrig.json` and
//! `~/.config/xmrig.json`. Files are read through `/proc/PID/root`, so a
//! miner in a container is read in its own filesystem.
//!
//! What a config file gives is bounded and cleaned before it becomes
//! evidence: at most [`MAX_POOLS`] pools and [`MAX_WALLETS`] wallets per
//! file, strings of at most [`MAX_STRING_BYTES`], and pool URLs without their
//! userinfo (`user:password@`), query or fragment ([`redact_url`]), so a
//! config that points at a database cannot put its password in a finding.
//! What was left out is said in a `trimmed` evidence item.

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::host::process::ProcStatic;
use crate::sensors::{Proc, ProcKey};
use rigwatch_signatures::redact::redact_url;
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Pools listed per config file.
pub const MAX_POOLS: usize = 16;
/// Wallets listed per config file.
pub const MAX_WALLETS: usize = 16;
/// Longest path, pool or wallet string in the evidence.
pub const MAX_STRING_BYTES: usize = 256;

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
            out.extend(assess_config(&self.sig, &path.display().to_string(), &bytes));
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

/// Evidence from one config file's bytes: none when it is no miner config,
/// else its `miner_config` item, and a `trimmed` item when pools or wallets
/// were left out for the caps. Accepts JSON (XMRig and most miners) and,
/// failing that, scans the text (xmr-stak's `pools.txt` is JSON without braces).
pub fn assess_config(sig: &Signatures, path: &str, bytes: &[u8]) -> Vec<Evidence> {
    use sha2::Digest;
    let sha256: [u8; 32] = sha2::Sha256::digest(bytes).into();
    // a file the fleet (or a local rule) knows by its hash, whatever it says
    let known = sig.binary_hash(&sha256);
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
    let mut pools: Vec<String> = pools.iter().map(|p| redact_url(p)).collect();
    // known pools first, so a file padded with made-up ones cannot push them out
    pools.sort_by_cached_key(|p| (sig.pool_domain(&pool_host(p)).is_none(), p.clone()));
    pools.dedup();
    wallets.sort();
    wallets.dedup();
    keys.sort();
    keys.dedup();
    if pools.is_empty() && keys.is_empty() && known.is_none() {
        return Vec::new();
    }
    let weight = if !pools.is_empty() && !wallets.is_empty() {
        Weight::Confirmed
    } else {
        Weight::Likely
    };
    let (more_pools, more_wallets) = (pools.len().saturating_sub(MAX_POOLS), wallets.len().saturating_sub(MAX_WALLETS));
    pools.truncate(MAX_POOLS);
    wallets.truncate(MAX_WALLETS);
    let pools: Vec<String> = pools.iter().map(|p| clip(p)).collect();
    let wallets: Vec<String> = wallets.iter().map(|w| clip(w)).collect();
    let path = clip(path);
    let mut out = Vec::new();
    if more_pools + more_wallets > 0 {
        out.push(Evidence::heuristic(
            EvidenceKind::Trimmed {
                note: format!(
                    "miner config {path}: {more_pools} more pools and {more_wallets} more wallets not listed (at most {MAX_POOLS} and {MAX_WALLETS} per file)"
                ),
                original_bytes: bytes.len() as u64,
                dropped_evidence: 0,
                cut_fields: (more_pools + more_wallets) as u64,
            },
            Weight::Info,
        ));
    }
    let detail = EvidenceKind::MinerConfig {
        path,
        pools,
        wallets,
        keys,
        sha256: Some(hex::encode(sha256)),
    };
    out.insert(
        0,
        match known {
            Some(rule) if rule.severity.max(weight) == rule.severity => Evidence::from_rule(detail, &rule.id, rule.severity),
            _ => Evidence::heuristic(detail, weight),
        },
    );
    out
}

/// The host of a pool URL or host:port.
fn pool_host(p: &str) -> String {
    let rest = p.split_once("://").map_or(p, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h.to_string(),
        _ => authority.to_string(),
    }
}

/// At most [`MAX_STRING_BYTES`] of `s` (on a char boundary, ending in `…` when cut).
fn clip(s: &str) -> String {
    if s.len() <= MAX_STRING_BYTES {
        return s.to_string();
    }
    let mut end = MAX_STRING_BYTES - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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
                        // a wallet as the URL's user name is a wallet, not a secret
                        if let Some((user, _)) = s
                            .split_once("://")
                            .map_or(s, |(_, r)| r)
                            .split('/')
                            .next()
                            .and_then(|a| a.rsplit_once('@'))
                        {
                            for e in sig.wallets_in(user, "config") {
                                if let EvidenceKind::Wallet { address, .. } = e.detail {
                                    wallets.push(address);
                                }
                            }
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

    fn sig() -> Signatures {
        rigwatch_signatures::load::load(&[], true).signatures
    }

    fn config(e: &[Evidence]) -> (String, Vec<String>, Vec<String>) {
        match &e[0].detail {
            EvidenceKind::MinerConfig { path, pools, wallets, .. } => (path.clone(), pools.clone(), wallets.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_config_the_fleet_knows_by_hash_is_evidence_whatever_it_says() {
        use sha2::Digest;
        // pools behind a bare proxy address, keys renamed: nothing a parser knows
        let text = br#"{"upstream":[{"addr":"10.9.8.7:8080","acct":"x"}],"threads":4}"#;
        assert!(assess_config(&sig(), "/srv/app/config.json", text).is_empty());
        let sha = hex::encode(sha2::Sha256::digest(text));
        let fleet = format!(
            "[meta]\nsource = \"fleet\"\n[[rule]]\nid = \"fleet.cfg1\"\nkind = \"binary_hash\"\nseverity = \"likely\"\n\
             description = \"fleet: taught by node-a/f1\"\nsha256 = [\"{sha}\"]\n[rule.examples]\nhit = [\"{sha}\"]\n"
        );
        let loaded = rigwatch_signatures::load::load_with(&[], true, &[("fleet-indicators.toml".into(), fleet)]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let ev = assess_config(&loaded.signatures, "/srv/app/config.json", text);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].rule.as_deref(), Some("fleet.cfg1"));
        assert_eq!(ev[0].weight, Weight::Likely);
        match &ev[0].detail {
            EvidenceKind::MinerConfig { sha256, pools, .. } => {
                assert_eq!(sha256.as_deref(), Some(sha.as_str()));
                assert!(pools.is_empty());
            }
            d => panic!("{d:?}"),
        }
        // any miner config carries its hash, for the collector to teach
        let ev = assess_config(&sig(), "/c.json", br#"{"pools":[{"url":"pool.supportxmr.com:3333"}]}"#);
        assert!(matches!(&ev[0].detail, EvidenceKind::MinerConfig { sha256: Some(h), .. } if h.len() == 64));
    }

    #[test]
    fn urls_lose_their_userinfo_query_and_fragment() {
        for (given, want) in [
            ("stratum+tcp://pool.supportxmr.com:3333", "stratum+tcp://pool.supportxmr.com:3333"),
            (
                "stratum+tcp://worker:s3cret@pool.supportxmr.com:3333",
                "stratum+tcp://pool.supportxmr.com:3333",
            ),
            (
                "postgres://admin:hunter2@db.internal:5432/app?sslpassword=x#y",
                "postgres://db.internal:5432/app",
            ),
            ("https://pool.example/api?token=abc", "https://pool.example/api"),
            ("user:pw@pool.example:3333", "pool.example:3333"),
            ("a@b:c@pool.example:3333/p#frag", "pool.example:3333/p"),
            ("pool.example:3333", "pool.example:3333"),
        ] {
            assert_eq!(redact_url(given), want, "{given}");
        }
    }

    #[test]
    fn no_secret_from_a_config_reaches_the_evidence() {
        let text = format!(
            r#"{{"pools":[{{"url":"stratum+tcp://{WALLET}.rig1:hunter2@pool.supportxmr.com:3333?key=topsecret","user":"{WALLET}"}}],
                "db":{{"url":"postgres://admin:pa55word@db.internal:5432/app?sslmode=require"}},"donate-level":1}}"#
        );
        let ev = assess_config(&sig(), "/home/u/config.json", text.as_bytes());
        let json = serde_json::to_string(&ev).unwrap();
        for secret in ["hunter2", "topsecret", "pa55word", "admin", "rig1", "sslmode"] {
            assert!(!json.contains(secret), "{secret} leaked: {json}");
        }
        let (_, pools, wallets) = config(&ev);
        assert_eq!(
            pools,
            vec!["stratum+tcp://pool.supportxmr.com:3333", "postgres://db.internal:5432/app"],
            "known pools first"
        );
        assert_eq!(wallets, vec![WALLET.to_string()]);
        assert_eq!(ev[0].weight, Weight::Confirmed);
        assert_eq!(ev.len(), 1, "nothing left out: no trimmed note");
    }

    #[test]
    fn pools_wallets_and_strings_are_capped_and_the_rest_is_said() {
        // a padded config: 400 made-up pools with long names, the real one last,
        // and 40 wallets
        let mut pools: Vec<String> = (0..400)
            .map(|i| format!(r#"{{"url":"stratum+tcp://p{i:03}{}.example:3333"}}"#, "a".repeat(600)))
            .collect();
        pools.push(r#"{"url":"stratum+tcp://zzz.supportxmr.com:3333"}"#.into());
        let b58 = |i: usize| "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz".chars().nth(i).unwrap();
        let wallets: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"user":"{}{}{}"}}"#, &WALLET[..93], b58(i / 8), b58(i % 8)))
            .collect();
        let text = format!(r#"{{"pools":[{},{}],"randomx":{{}}}}"#, pools.join(","), wallets.join(","));
        let long_path = format!("/home/u/{}/config.json", "d".repeat(1000));
        let ev = assess_config(&sig(), &long_path, text.as_bytes());
        let (path, pools, wallets) = config(&ev);
        assert_eq!(pools.len(), MAX_POOLS);
        assert_eq!(pools[0], "stratum+tcp://zzz.supportxmr.com:3333", "the known pool is kept");
        assert_eq!(wallets.len(), MAX_WALLETS, "{wallets:?}");
        assert!(pools.iter().chain(&wallets).chain([&path]).all(|s| s.len() <= MAX_STRING_BYTES));
        assert!(path.ends_with('…') && path.starts_with("/home/u/ddd"));
        let note = &ev[1];
        assert_eq!(note.weight, Weight::Info);
        let EvidenceKind::Trimmed {
            cut_fields,
            original_bytes,
            ..
        } = &note.detail
        else {
            panic!("{:?}", note.kind())
        };
        assert_eq!(*cut_fields, (401 - MAX_POOLS + 40 - MAX_WALLETS) as u64);
        assert_eq!(*original_bytes, text.len() as u64);
        assert!(note.summary().contains("385 more pools and 24 more wallets"), "{}", note.summary());
        assert!(serde_json::to_vec(&ev).unwrap().len() < 8 * 1024);
    }
}
