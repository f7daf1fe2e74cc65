//! The configuration as evidence: what the agent tells the collector about
//! the settings it runs with, in every report ([`ConfigState`]). A local
//! administrator who allowlists his own miner, drops a signature override
//! into a signature directory, switches a sensor off or points the agent
//! elsewhere changes one of these digests, and the collector sees it.
//!
//! Computed at start and again after every signature reload (a new local
//! file, a new fleet set). Secrets (the collector token) never enter it.

use super::config::Config;
use rigwatch_signatures::report::{AllowlistState, ConfigState, LocalFile, SignatureSetState};
use rigwatch_signatures::{RuleKind, Signatures};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Most bytes of one local signature file hashed (a larger file is hashed
/// up to here, and its size is mixed in).
const MAX_HASHED_BYTES: u64 = 16 * 1024 * 1024;

/// Where a rule came from, as its `file` says: the bundled set, the fleet
/// set, or a local signature directory.
pub fn is_local(file: &str) -> bool {
    !(file.starts_with("bundled:") || file.starts_with("fleet:"))
}

/// SHA-256 (hex) of the configuration with its secrets blanked, serialised
/// as JSON in the structure's field order (so one version of the agent
/// always gives the same text for the same settings).
pub fn config_digest(cfg: &Config) -> String {
    let mut c = cfg.clone();
    c.collector.token = if c.collector.token.is_empty() {
        String::new()
    } else {
        "(set)".into()
    };
    let text = serde_json::to_string(&c).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The sensors the configuration switches off: every `false` switch of
/// `[sensors]`, by name, sorted.
pub fn sensors_off(cfg: &Config) -> Vec<String> {
    let mut off: Vec<String> = match serde_json::to_value(&cfg.sensors) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().filter(|(_, v)| v.as_bool() == Some(false)).map(|(k, _)| k).collect(),
        _ => Vec::new(),
    };
    off.sort();
    off
}

/// The fleet policy's file in the fleet set (the collector's `[policy]`).
pub const POLICY_FILE: &str = "published/policy.json";

/// Whether the fleet set's policy forbids local allowlists.
pub fn forbids_local_allowlist(fleet: &[(String, String)]) -> bool {
    fleet
        .iter()
        .filter(|(n, _)| n == POLICY_FILE)
        .any(|(_, text)| serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v["local_allowlist"] == "forbid"))
}

/// `sig` without the allow rules of local signature directories when
/// `forbid`; returns the files of the rules it dropped (one per rule).
pub fn apply_policy(sig: Signatures, forbid: bool) -> (Signatures, Vec<String>) {
    let local_allow = |r: &rigwatch_signatures::Rule| r.kind == RuleKind::Allow && r.enabled && is_local(&r.file);
    if !forbid || !sig.rules().iter().any(local_allow) {
        return (sig, Vec::new());
    }
    let (dropped, kept): (Vec<_>, Vec<_>) = sig.rules().iter().cloned().partition(local_allow);
    match Signatures::compile(kept) {
        Ok(s) => (s, dropped.into_iter().map(|r| r.file).collect()),
        // the same rules compiled a moment ago; keep what is in force
        Err(_) => (sig, Vec::new()),
    }
}

/// The allow rules in force in `sig`, with the files of the local allow
/// rules that a policy dropped (`ignored`).
pub fn allowlist(sig: &Signatures, ignored: &[String]) -> AllowlistState {
    let mut h = Sha256::new();
    let mut entries = 0;
    let mut local = 0;
    let mut files = Vec::new();
    let mut allow: Vec<_> = sig.rules().iter().filter(|r| r.kind == RuleKind::Allow && r.enabled).collect();
    allow.sort_by(|a, b| a.id.cmp(&b.id));
    for r in allow {
        entries += 1;
        h.update(format!("{}\0{:?}\0", r.id, r.spec).as_bytes());
        if is_local(&r.file) {
            local += 1;
            files.push(r.file.clone());
        }
    }
    files.extend(ignored.iter().cloned());
    AllowlistState {
        digest: hex::encode(h.finalize()),
        entries,
        local,
        files,
        ignored_by_policy: ignored.len() as u64,
    }
}

/// SHA-256 (hex) of a file's first [`MAX_HASHED_BYTES`].
fn file_sha256(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    f.take(MAX_HASHED_BYTES).read_to_end(&mut buf).ok()?;
    h.update(&buf);
    if len > MAX_HASHED_BYTES {
        h.update(len.to_le_bytes());
    }
    Some(hex::encode(h.finalize()))
}

/// The local signature files (`*.toml` rule files and `*.txt` lists) of
/// `dirs`, with their SHA-256.
pub fn local_files(dirs: &[std::path::PathBuf]) -> Vec<LocalFile> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if !p
                .extension()
                .is_some_and(|x| matches!(x.to_str(), Some("toml" | "txt" | "yar" | "yara")))
                || !p.is_file()
            {
                continue;
            }
            out.push(LocalFile {
                name: p.display().to_string(),
                sha256: file_sha256(&p).unwrap_or_else(|| "unreadable".into()),
            });
        }
    }
    out.sort();
    out
}

/// SHA-256 (hex) of the bundled rule files.
fn bundled_digest() -> String {
    let mut h = Sha256::new();
    for (name, text) in rigwatch_signatures::load::bundled() {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The whole state for the reports, bounded as the collector will store it.
pub fn state(cfg: &Config, sig: &Signatures, fleet_version: u64, ignored_by_policy: &[String]) -> ConfigState {
    ConfigState {
        digest: config_digest(cfg),
        allowlist: allowlist(sig, ignored_by_policy),
        signatures: SignatureSetState {
            version: sig.version.clone(),
            bundled: bundled_digest(),
            local: local_files(&cfg.signatures.dirs),
            local_more: 0,
            fleet: fleet_version,
        },
        sensors_off: sensors_off(cfg),
        collector: rigwatch_signatures::redact::redact_url(&cfg.collector.url),
    }
    .bounded()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_and_switches_show() {
        let mut a = Config::default();
        let mut b = Config::default();
        a.collector.token = "secret-one".into();
        b.collector.token = "secret-two".into();
        assert_eq!(config_digest(&a), config_digest(&b), "the token is not part of the digest");
        assert!(sensors_off(&a).is_empty());
        b.sensors.capture = false;
        b.sensors.rounding = false;
        assert_ne!(config_digest(&a), config_digest(&b));
        assert_eq!(sensors_off(&b), vec!["capture".to_string(), "rounding".to_string()]);
    }

    #[test]
    fn every_sensor_switch_is_known_to_the_collector() {
        // the collector checks `[policy] required_sensors` against this list
        let mut all = Config::default();
        let m = serde_json::to_value(&all.sensors).unwrap();
        for (k, v) in m.as_object().unwrap() {
            if v.is_boolean() {
                all.sensors = serde_json::from_value(serde_json::json!({ k.as_str(): false })).unwrap();
                assert_eq!(sensors_off(&all), [k.clone()]);
                assert!(rigwatch_signatures::report::SENSOR_SWITCHES.contains(&k.as_str()), "{k} missing");
            }
        }
        let n = m.as_object().unwrap().values().filter(|v| v.is_boolean()).count();
        assert_eq!(n, rigwatch_signatures::report::SENSOR_SWITCHES.len());
    }

    #[test]
    fn local_allow_rules_are_counted_with_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let sig = rigwatch_signatures::load(&[dir.path().to_path_buf()], true).signatures;
        let before = allowlist(&sig, &[]);
        assert_eq!(before.local, 0);
        let f = dir.path().join("ours.toml");
        std::fs::write(
            &f,
            "[[rule]]\nid = \"site.allow-ours\"\nkind = \"allow\"\nseverity = \"info\"\n\
             paths = [\"/opt/ours/bin\"]\nexamples = { hit = [\"path:/opt/ours/bin\"] }\n",
        )
        .unwrap();
        let l = rigwatch_signatures::load(&[dir.path().to_path_buf()], true);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let after = allowlist(&l.signatures, &[]);
        assert_eq!(after.local, 1);
        assert_eq!(after.entries, before.entries + 1);
        assert_eq!(after.files, vec![f.display().to_string()]);
        assert_ne!(after.digest, before.digest);
        // a policy that forbids local allowlists drops it, and says which
        let fleet = vec![(POLICY_FILE.to_string(), r#"{"local_allowlist":"forbid"}"#.to_string())];
        assert!(forbids_local_allowlist(&fleet));
        assert!(!forbids_local_allowlist(&[]));
        let (kept, dropped) = apply_policy(l.signatures, true);
        assert_eq!(dropped, vec![f.display().to_string()]);
        let forced = allowlist(&kept, &dropped);
        assert_eq!((forced.local, forced.ignored_by_policy, forced.entries), (0, 1, before.entries));
        assert_eq!(forced.files, vec![f.display().to_string()]);
        let files = local_files(&[dir.path().to_path_buf()]);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].sha256.len(), 64);
        // a YARA file dropped beside it is an override too (it can add or
        // change what matches); other files are not
        std::fs::write(dir.path().join("site.yar"), "rule r { condition: false }\n").unwrap();
        std::fs::write(dir.path().join("notes.md"), "x").unwrap();
        let files = local_files(&[dir.path().to_path_buf()]);
        assert_eq!(files.len(), 2, "{files:?}");
    }
}
