//! What ties findings on different hosts together (campaign keys) and what
//! an alert is labelled with, both read from a finding's evidence.

use rigwatch_signatures::{EvidenceKind, Finding};

/// Normalises a pool to its host name: no scheme, no user, no port, no
/// path, lowercase. `stratum+tcp://Pool.Example:3333/x` → `pool.example`.
pub fn pool_host(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    let s = s.rsplit_once('@').map(|(_, r)| r).unwrap_or(s);
    let s = s.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(rest) = s.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
        s
    } else {
        s.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        None
    } else {
        Some(host)
    }
}

/// The campaign keys of a finding: `(kind, value)` with kind one of
/// `wallet`, `pool`, `binary_sha256`, `stratum_login`.
pub fn finding_keys(f: &Finding) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut add = |k: &'static str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty() && v.len() <= 512) {
            if !out.iter().any(|(k2, v2)| *k2 == k && *v2 == v) {
                out.push((k, v));
            }
        }
    };
    for e in &f.evidence {
        match &e.detail {
            EvidenceKind::Wallet { address, .. } => add("wallet", Some(address.trim().to_string())),
            EvidenceKind::BinaryHash { sha256, .. } => add("binary_sha256", Some(sha256.trim().to_ascii_lowercase())),
            EvidenceKind::MinerConfig { pools, wallets, .. } => {
                for p in pools {
                    add("pool", pool_host(p));
                }
                for w in wallets {
                    add("wallet", Some(w.trim().to_string()));
                }
            }
            EvidenceKind::CommandLine {
                matched, pool_url: true, ..
            } => add("pool", pool_host(matched)),
            EvidenceKind::PoolDomain { domain, .. } => add("pool", pool_host(domain)),
            EvidenceKind::PoolConnection { remote, domain, .. } => add("pool", pool_host(domain.as_deref().unwrap_or(remote))),
            EvidenceKind::Dns { name, .. } => add("pool", pool_host(name)),
            EvidenceKind::TlsSni { server_name, .. } => add("pool", pool_host(server_name)),
            EvidenceKind::Stratum { login, remote, .. } => {
                add("stratum_login", login.as_ref().map(|l| l.trim().to_string()));
                add("pool", pool_host(remote));
            }
            _ => {}
        }
    }
    // A pool URL that is only a scheme ("stratum+tcp://") names no pool.
    out.retain(|(k, v)| !(*k == "pool" && !v.contains('.') && !v.contains(':')));
    out
}

/// The labels a finding's alert carries besides host and severity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Labels {
    /// The process name (comm, else the executable's file name).
    pub process: String,
    /// The rule of the strongest rule-based evidence, else its kind.
    pub rule: String,
    /// The first pool named by the evidence.
    pub pool: String,
}

/// Labels for a finding.
pub fn labels_of(f: &Finding) -> Labels {
    // the process's name, the flow's server, or the host subject ("persistence /etc/cron.d/x")
    let process = f.subject_label();
    let rule = f
        .evidence
        .iter()
        .find_map(|e| e.rule.clone())
        .or_else(|| f.evidence.first().map(|e| e.kind().to_string()))
        .unwrap_or_default();
    let pool = finding_keys(f)
        .into_iter()
        .find(|(k, _)| *k == "pool")
        .map(|(_, v)| v)
        .unwrap_or_default();
    Labels { process, rule, pool }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_normalise_to_host() {
        assert_eq!(pool_host("stratum+tcp://Pool.Example:3333/x").as_deref(), Some("pool.example"));
        assert_eq!(
            pool_host("gulf.moneroocean.stream:10128").as_deref(),
            Some("gulf.moneroocean.stream")
        );
        assert_eq!(pool_host("stratum+ssl://user@xmr.pool.tld").as_deref(), Some("xmr.pool.tld"));
        assert_eq!(pool_host("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(pool_host("stratum+tcp://"), None);
        assert_eq!(pool_host("pool.example:443:junk").as_deref(), Some("pool.example"));
    }

    fn ev(detail: EvidenceKind) -> rigwatch_signatures::Evidence {
        rigwatch_signatures::Evidence::heuristic(detail, rigwatch_signatures::Weight::Likely)
    }

    #[test]
    fn keys_and_labels_come_from_evidence() {
        let f: Finding = serde_json::from_value(serde_json::json!({
            "id": "f", "severity": "confirmed", "host": "h", "first_seen": 1, "last_seen": 1,
            "process": {"pid": 1, "ppid": 0, "start_time": 1, "comm": "kworker", "exe": "/tmp/k", "cmdline": "",
                        "user": "root", "uid": 0, "cwd": "/", "cgroup": "/"},
            "evidence": [
                serde_json::to_value(ev(EvidenceKind::CommandLine { matched: "stratum+tcp://".into(), base64: false, pool_url: true })).unwrap(),
                serde_json::to_value(ev(EvidenceKind::TlsSni { server_name: "XMR.Pool.Example".into(), remote: "1.2.3.4:443".into() })).unwrap(),
                serde_json::to_value(ev(EvidenceKind::MinerConfig { path: "/c.json".into(), pools: vec!["xmr.pool.example:443".into()], wallets: vec!["4abc".into()], keys: vec![], sha256: None })).unwrap(),
                serde_json::to_value(ev(EvidenceKind::BinaryHash { sha256: "AB".repeat(32), path: "/tmp/k".into() })).unwrap(),
                serde_json::to_value(ev(EvidenceKind::Stratum { dialect: "s1".into(), method: "login".into(), agent: None, login: Some("w.1".into()), worker: None, remote: "1.2.3.4:3333".into() })).unwrap(),
            ],
        }))
        .unwrap();
        let keys = finding_keys(&f);
        assert_eq!(
            keys,
            vec![
                ("pool", "xmr.pool.example".to_string()),
                ("wallet", "4abc".to_string()),
                ("binary_sha256", "ab".repeat(32)),
                ("stratum_login", "w.1".to_string()),
                ("pool", "1.2.3.4".to_string()),
            ]
        );
        let l = labels_of(&f);
        assert_eq!(
            (l.process.as_str(), l.rule.as_str(), l.pool.as_str()),
            ("kworker", "command_line", "xmr.pool.example")
        );
    }
}
