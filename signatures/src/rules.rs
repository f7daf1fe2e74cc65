//! The rule format (RULES.md): parsing and validating rule files.
//!
//! Parsing is pure: a file's text and a way to read its list files go in,
//! rules or errors naming file and line come out. Loading from disk and the
//! embedded bundled set are in `load`.

use crate::import;
use crate::model::Weight;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use toml::Spanned;

/// A rule-file error: which file, which line, what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct RuleError {
    /// The file (or `bundled:NAME`).
    pub path: String,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The kinds of rule.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum RuleKind {
    ProcessName,
    Cmdline,
    Wallet,
    BinaryHash,
    BinaryContent,
    PoolDomain,
    PoolAddress,
    PoolPort,
    NodePort,
    Stratum,
    Allow,
}

impl RuleKind {
    /// The snake_case name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::ProcessName => "process_name",
            RuleKind::Cmdline => "cmdline",
            RuleKind::Wallet => "wallet",
            RuleKind::BinaryHash => "binary_hash",
            RuleKind::BinaryContent => "binary_content",
            RuleKind::PoolDomain => "pool_domain",
            RuleKind::PoolAddress => "pool_address",
            RuleKind::PoolPort => "pool_port",
            RuleKind::NodePort => "node_port",
            RuleKind::Stratum => "stratum",
            RuleKind::Allow => "allow",
        }
    }
}

/// Examples a rule must hit and must miss.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    /// Each must match the rule.
    #[serde(default)]
    pub hit: Vec<String>,
    /// None may match the rule.
    #[serde(default)]
    pub miss: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    meta: Option<Meta>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// A rule file's `[meta]` table.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Where the indicators came from.
    #[serde(default)]
    pub source: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    kind: RuleKind,
    severity: Weight,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    examples: Option<Examples>,
    names: Option<Vec<String>>,
    literals: Option<Vec<String>>,
    regexes: Option<Vec<String>>,
    regex: Option<String>,
    coin: Option<String>,
    sha256: Option<Vec<String>>,
    strings: Option<Vec<String>>,
    min_matches: Option<usize>,
    domains: Option<Vec<String>>,
    lists: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    ports: Option<Vec<u16>>,
    dialect: Option<String>,
    methods: Option<Vec<String>>,
    markers: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    users: Option<Vec<String>>,
    cgroups: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// What a rule matches, by kind.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Spec {
    ProcessName {
        names: Vec<String>,
    },
    Cmdline {
        literals: Vec<String>,
        regexes: Vec<String>,
    },
    Wallet {
        coin: String,
        regex: String,
    },
    BinaryHash {
        sha256: Vec<[u8; 32]>,
    },
    BinaryContent {
        strings: Vec<String>,
        min_matches: usize,
    },
    PoolDomain {
        domains: Vec<String>,
    },
    PoolAddress {
        ips: Vec<IpAddr>,
        endpoints: Vec<SocketAddr>,
    },
    PoolPort {
        ports: Vec<u16>,
    },
    /// Local ports a mining node or stack listens on (P2Pool, monerod, bitcoind).
    NodePort {
        ports: Vec<u16>,
    },
    Stratum {
        dialect: String,
        methods: Vec<String>,
        markers: Vec<String>,
    },
    Allow {
        sha256: Vec<[u8; 32]>,
        paths: Vec<String>,
        users: Vec<String>,
        cgroups: Vec<String>,
    },
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Unique id.
    pub id: String,
    /// The kind.
    pub kind: RuleKind,
    /// What a match contributes to the severity.
    pub severity: Weight,
    /// What the rule is about.
    pub description: String,
    /// Tags (`pool_url`).
    pub tags: Vec<String>,
    /// False: the rule is disabled (and disables a bundled rule of the same id).
    pub enabled: bool,
    /// What it matches.
    pub spec: Spec,
    /// Its examples.
    pub examples: Examples,
    /// The file it came from.
    pub file: String,
    /// The line of its `id`.
    pub line: usize,
}

impl Rule {
    /// Whether the rule carries a tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
    /// How many entries (names, literals, domains…) the rule holds.
    pub fn entries(&self) -> usize {
        match &self.spec {
            Spec::ProcessName { names } => names.len(),
            Spec::Cmdline { literals, regexes } => literals.len() + regexes.len(),
            Spec::Wallet { .. } => 1,
            Spec::BinaryHash { sha256 } => sha256.len(),
            Spec::BinaryContent { strings, .. } => strings.len(),
            Spec::PoolDomain { domains } => domains.len(),
            Spec::PoolAddress { ips, endpoints } => ips.len() + endpoints.len(),
            Spec::PoolPort { ports } | Spec::NodePort { ports } => ports.len(),
            Spec::Stratum { methods, markers, .. } => methods.len() + markers.len(),
            Spec::Allow {
                sha256,
                paths,
                users,
                cgroups,
            } => sha256.len() + paths.len() + users.len() + cgroups.len(),
        }
    }
}

/// A parsed rule file.
#[derive(Clone, Debug, Default)]
pub struct RuleFile {
    /// Its `[meta]`.
    pub meta: Meta,
    /// Its rules, in file order.
    pub rules: Vec<Rule>,
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parses one rule file. `read_list` reads a list file named relative to this
/// one. Every error found is returned, not just the first.
pub fn parse_file(path: &str, text: &str, read_list: &dyn Fn(&str) -> Result<String, String>) -> Result<RuleFile, Vec<RuleError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
        vec![RuleError {
            path: path.into(),
            line,
            message: e.message().trim().to_string(),
        }]
    })?;
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for r in raw.rule {
        let line = line_of(text, r.id.span().start);
        let mut err = |m: String| {
            errors.push(RuleError {
                path: path.into(),
                line,
                message: m,
            })
        };
        if let Some(first) = seen.insert(r.id.get_ref().clone(), line) {
            err(format!("duplicate rule id {:?} (first on line {first})", r.id.get_ref()));
            continue;
        }
        match validate(r, path, line, read_list) {
            Ok(rule) => rules.push(rule),
            Err(msgs) => msgs.into_iter().for_each(&mut err),
        }
    }
    if errors.is_empty() {
        Ok(RuleFile {
            meta: raw.meta.unwrap_or_default(),
            rules,
        })
    } else {
        Err(errors)
    }
}

fn validate(r: RawRule, path: &str, line: usize, read_list: &dyn Fn(&str) -> Result<String, String>) -> Result<Rule, Vec<String>> {
    let mut errs = Vec::new();
    let id = r.id.into_inner();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    {
        errs.push(format!("rule id {id:?} must be non-empty and use only a-z 0-9 . _ -"));
    }
    // Fields that belong to each kind; anything else set is an error.
    let allowed: &[&str] = match r.kind {
        RuleKind::ProcessName => &["names"],
        RuleKind::Cmdline => &["literals", "regexes"],
        RuleKind::Wallet => &["coin", "regex"],
        RuleKind::BinaryHash => &["sha256"],
        RuleKind::BinaryContent => &["strings", "min_matches"],
        RuleKind::PoolDomain => &["domains", "lists"],
        RuleKind::PoolAddress => &["addresses", "lists"],
        RuleKind::PoolPort | RuleKind::NodePort => &["ports"],
        RuleKind::Stratum => &["dialect", "methods", "markers"],
        RuleKind::Allow => &["sha256", "paths", "users", "cgroups"],
    };
    let present = [
        ("names", r.names.is_some()),
        ("literals", r.literals.is_some()),
        ("regexes", r.regexes.is_some()),
        ("regex", r.regex.is_some()),
        ("coin", r.coin.is_some()),
        ("sha256", r.sha256.is_some()),
        ("strings", r.strings.is_some()),
        ("min_matches", r.min_matches.is_some()),
        ("domains", r.domains.is_some()),
        ("lists", r.lists.is_some()),
        ("addresses", r.addresses.is_some()),
        ("ports", r.ports.is_some()),
        ("dialect", r.dialect.is_some()),
        ("methods", r.methods.is_some()),
        ("markers", r.markers.is_some()),
        ("paths", r.paths.is_some()),
        ("users", r.users.is_some()),
        ("cgroups", r.cgroups.is_some()),
    ];
    for (field, set) in present {
        if set && !allowed.contains(&field) {
            errs.push(format!(
                "field `{field}` does not belong to a {} rule (it takes: {})",
                r.kind.as_str(),
                allowed.join(", ")
            ));
        }
    }
    for t in &r.tags {
        if t != "pool_url" {
            errs.push(format!("unknown tag {t:?} (known: pool_url)"));
        }
    }
    let lists = r.lists.clone().unwrap_or_default();
    let lists_text = |what: &str, errs: &mut Vec<String>| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for l in &lists {
            match read_list(l) {
                Ok(t) => out.push((l.clone(), t)),
                Err(e) => errs.push(format!("cannot read {what} list {l:?}: {e}")),
            }
        }
        out
    };
    let spec = match r.kind {
        RuleKind::ProcessName => Spec::ProcessName {
            names: r.names.unwrap_or_default().into_iter().map(|n| n.to_lowercase()).collect(),
        },
        RuleKind::Cmdline => {
            let regexes = r.regexes.unwrap_or_default();
            for re in &regexes {
                if let Err(e) = regex::Regex::new(re) {
                    errs.push(format!("bad regex {re:?}: {}", one_line(&e.to_string())));
                }
            }
            let literals = r.literals.unwrap_or_default();
            if literals.iter().any(|l| l.trim().is_empty()) {
                errs.push("empty literal".into());
            }
            Spec::Cmdline { literals, regexes }
        }
        RuleKind::Wallet => {
            let regex = r.regex.unwrap_or_default();
            if let Err(e) = regex::Regex::new(&regex) {
                errs.push(format!("bad regex {regex:?}: {}", one_line(&e.to_string())));
            }
            if regex.is_empty() {
                errs.push("a wallet rule needs `regex`".into());
            }
            Spec::Wallet {
                coin: r.coin.unwrap_or_else(|| "unknown".into()),
                regex,
            }
        }
        RuleKind::BinaryHash => Spec::BinaryHash {
            sha256: parse_hashes(r.sha256.unwrap_or_default(), &mut errs),
        },
        RuleKind::BinaryContent => {
            let strings = r.strings.unwrap_or_default();
            let min = r.min_matches.unwrap_or(strings.len());
            if min == 0 || min > strings.len() {
                errs.push(format!(
                    "min_matches {min} must be between 1 and the number of strings ({})",
                    strings.len()
                ));
            }
            if strings.iter().any(|s| s.len() < 4) {
                errs.push("content strings must be at least 4 bytes".into());
            }
            Spec::BinaryContent { strings, min_matches: min }
        }
        RuleKind::PoolDomain => {
            let mut domains: Vec<String> = r.domains.unwrap_or_default();
            for (name, text) in lists_text("domain", &mut errs) {
                match import::domains(&text) {
                    Ok(d) => domains.extend(d),
                    Err(e) => errs.push(format!("in list {name}: {e}")),
                }
            }
            let mut out = Vec::with_capacity(domains.len());
            for d in domains {
                match import::normalise_domain(&d) {
                    Some(d) => out.push(d),
                    None => errs.push(format!("{d:?} is not a domain name")),
                }
            }
            Spec::PoolDomain { domains: out }
        }
        RuleKind::PoolAddress => {
            let mut ips = Vec::new();
            let mut endpoints = Vec::new();
            let mut add = |s: &str, errs: &mut Vec<String>| match import::parse_address(s) {
                Ok(import::Address::Ip(ip)) => ips.push(ip),
                Ok(import::Address::Endpoint(e)) => endpoints.push(e),
                Err(e) => errs.push(e),
            };
            for a in r.addresses.clone().unwrap_or_default() {
                add(&a, &mut errs);
            }
            for (name, text) in lists_text("address", &mut errs) {
                for (n, l) in text.lines().enumerate() {
                    if let Some(entry) = import::list_entry(l) {
                        let mut e2 = Vec::new();
                        add(entry, &mut e2);
                        errs.extend(e2.into_iter().map(|e| format!("{name}:{}: {e}", n + 1)));
                    }
                }
            }
            Spec::PoolAddress { ips, endpoints }
        }
        RuleKind::PoolPort => Spec::PoolPort {
            ports: checked_ports(r.ports.unwrap_or_default(), &mut errs),
        },
        RuleKind::NodePort => Spec::NodePort {
            ports: checked_ports(r.ports.unwrap_or_default(), &mut errs),
        },
        RuleKind::Stratum => Spec::Stratum {
            dialect: r.dialect.unwrap_or_else(|| "unknown".into()),
            methods: r.methods.unwrap_or_default().into_iter().map(|m| m.to_lowercase()).collect(),
            markers: r.markers.unwrap_or_default(),
        },
        RuleKind::Allow => Spec::Allow {
            sha256: parse_hashes(r.sha256.unwrap_or_default(), &mut errs),
            paths: r.paths.unwrap_or_default(),
            users: r.users.unwrap_or_default(),
            cgroups: r.cgroups.unwrap_or_default(),
        },
    };
    let rule = Rule {
        id,
        kind: r.kind,
        severity: r.severity,
        description: r.description,
        tags: r.tags,
        enabled: r.enabled,
        spec,
        examples: r.examples.unwrap_or_default(),
        file: path.to_string(),
        line,
    };
    if rule.enabled && rule.entries() == 0 {
        errs.push(format!("a {} rule with nothing to match", rule.kind.as_str()));
    }
    if rule.enabled && rule.kind != RuleKind::Allow && rule.examples.hit.is_empty() {
        errs.push("`examples.hit` needs at least one example that the rule must match".into());
    }
    if errs.is_empty() {
        Ok(rule)
    } else {
        Err(errs)
    }
}

fn parse_hashes(v: Vec<String>, errs: &mut Vec<String>) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for h in v {
        let mut b = [0u8; 32];
        match hex::decode_to_slice(h.trim(), &mut b) {
            Ok(()) => out.push(b),
            Err(_) => errs.push(format!("{h:?} is not a SHA-256 (64 hex digits)")),
        }
    }
    out
}

/// Port 0 is no port (nothing listens or connects there); a port listed
/// twice in one rule is a slip worth pointing at.
fn checked_ports(v: Vec<u16>, errs: &mut Vec<String>) -> Vec<u16> {
    let mut seen = std::collections::HashSet::new();
    for p in &v {
        if *p == 0 {
            errs.push("port 0 is not a port".into());
        } else if !seen.insert(*p) {
            errs.push(format!("port {p} is listed twice"));
        }
    }
    v
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
