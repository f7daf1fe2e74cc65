//! Compiled matchers: one Aho-Corasick automaton for the command-line
//! literals and one for binary content strings, one RegexSet for command-line
//! regexes and one for wallets, hash sets for names, hashes, addresses and
//! ports, and a domain suffix set. Matching cost does not grow with the
//! number of rules.

use crate::model::{Evidence, EvidenceKind};
use crate::rules::{Rule, RuleError, RuleKind, Spec};
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine;
use regex::{Regex, RegexSet};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

/// A compiled signature set. Cheap to share (`Arc`), immutable once built.
#[derive(Debug)]
pub struct Signatures {
    rules: Vec<Rule>,
    names: HashMap<String, Vec<usize>>,
    cmd_ac: Option<AhoCorasick>,
    cmd_ac_rule: Vec<usize>,
    cmd_set: RegexSet,
    cmd_res: Vec<(Regex, usize)>,
    wallet_set: RegexSet,
    wallet_rule: Vec<usize>,
    hashes: HashMap<[u8; 32], usize>,
    content_ac: Option<AhoCorasick>,
    /// Leftmost-first, SIMD-prefiltered: finds where strings occur, fast.
    content_fast: Option<AhoCorasick>,
    /// pattern id -> (rule index, index of the string in the rule)
    content_pat: Vec<(usize, usize)>,
    content_rules: Vec<usize>,
    content_max_len: usize,
    domains: HashMap<String, usize>,
    ips: HashMap<IpAddr, usize>,
    endpoints: HashMap<SocketAddr, usize>,
    ports: HashMap<u16, usize>,
    node_ports: HashMap<u16, usize>,
    methods: HashMap<String, usize>,
    markers: Vec<(String, usize)>,
    allow: Vec<usize>,
    /// The compiled YARA files of the same load, if any.
    yara: Option<crate::yara::YaraSet>,
    /// A short fingerprint of the set, for metrics and reports.
    pub version: String,
}

fn host_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)\b(?:[a-z0-9_-]{1,63}\.)+[a-z][a-z0-9-]{1,62}\b").unwrap())
}
fn base64_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"[A-Za-z0-9+/]{20,}={0,2}").unwrap())
}

impl Signatures {
    /// Compiles rules (already de-duplicated by id; disabled rules are skipped).
    pub fn compile(rules: Vec<Rule>) -> Result<Signatures, RuleError> {
        let rules: Vec<Rule> = rules.into_iter().filter(|r| r.enabled).collect();
        let mut names: HashMap<String, Vec<usize>> = HashMap::new();
        let (mut cmd_lits, mut cmd_ac_rule) = (Vec::new(), Vec::new());
        let (mut cmd_pats, mut cmd_res) = (Vec::new(), Vec::new());
        let (mut wallet_pats, mut wallet_rule) = (Vec::new(), Vec::new());
        let mut hashes = HashMap::new();
        let (mut content_lits, mut content_pat, mut content_rules) = (Vec::new(), Vec::new(), Vec::new());
        let mut domains = HashMap::new();
        let (mut ips, mut endpoints, mut ports) = (HashMap::new(), HashMap::new(), HashMap::new());
        let mut node_ports = HashMap::new();
        let (mut methods, mut markers, mut allow) = (HashMap::new(), Vec::new(), Vec::new());
        let err = |r: &Rule, m: String| RuleError {
            path: r.file.clone(),
            line: r.line,
            message: m,
        };
        for (i, r) in rules.iter().enumerate() {
            match &r.spec {
                Spec::ProcessName { names: n } => n.iter().for_each(|n| names.entry(n.clone()).or_default().push(i)),
                Spec::Cmdline { literals, regexes } => {
                    for l in literals {
                        cmd_lits.push(l.clone());
                        cmd_ac_rule.push(i);
                    }
                    for re in regexes {
                        let rx = Regex::new(re).map_err(|e| err(r, e.to_string()))?;
                        cmd_pats.push(re.clone());
                        cmd_res.push((rx, i));
                    }
                }
                Spec::Wallet { regex, .. } => {
                    wallet_pats.push(format!("^(?:{regex})$"));
                    wallet_rule.push(i);
                }
                Spec::BinaryHash { sha256 } => sha256.iter().for_each(|h| {
                    hashes.insert(*h, i);
                }),
                Spec::BinaryContent { strings, .. } => {
                    content_rules.push(i);
                    for (j, s) in strings.iter().enumerate() {
                        content_lits.push(s.clone());
                        content_pat.push((i, j));
                    }
                }
                Spec::PoolDomain { domains: d } => d.iter().for_each(|d| {
                    domains.insert(d.clone(), i);
                }),
                Spec::PoolAddress { ips: a, endpoints: e } => {
                    a.iter().for_each(|a| {
                        ips.insert(*a, i);
                    });
                    e.iter().for_each(|e| {
                        endpoints.insert(*e, i);
                    });
                }
                Spec::PoolPort { ports: p } => p.iter().for_each(|p| {
                    ports.insert(*p, i);
                }),
                Spec::NodePort { ports: p } => p.iter().for_each(|p| {
                    node_ports.insert(*p, i);
                }),
                Spec::Stratum {
                    methods: m, markers: k, ..
                } => {
                    m.iter().for_each(|m| {
                        methods.insert(m.clone(), i);
                    });
                    k.iter().for_each(|k| markers.push((k.clone(), i)));
                }
                Spec::Allow { .. } => allow.push(i),
            }
        }
        let build = |pats: &[String], ci: bool| -> Option<AhoCorasick> {
            if pats.is_empty() {
                return None;
            }
            AhoCorasick::builder()
                .ascii_case_insensitive(ci)
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(pats)
                .ok()
        };
        let content_max_len = content_lits.iter().map(|s| s.len()).max().unwrap_or(0);
        let version = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for r in &rules {
                h.update(format!("{r:?}").as_bytes());
            }
            hex::encode(&h.finalize()[..6])
        };
        let lower: Vec<String> = cmd_lits.iter().map(|l| l.to_lowercase()).collect();
        Ok(Signatures {
            names,
            cmd_ac: build(&lower, true),
            cmd_ac_rule,
            cmd_set: RegexSet::new(&cmd_pats).map_err(|e| RuleError {
                path: "cmdline".into(),
                line: 0,
                message: e.to_string(),
            })?,
            cmd_res,
            wallet_set: RegexSet::new(&wallet_pats).map_err(|e| RuleError {
                path: "wallet".into(),
                line: 0,
                message: e.to_string(),
            })?,
            wallet_rule,
            hashes,
            content_ac: build(&content_lits, false),
            content_fast: if content_lits.is_empty() {
                None
            } else {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&content_lits)
                    .ok()
            },
            content_pat,
            content_rules,
            content_max_len,
            domains,
            ips,
            endpoints,
            ports,
            node_ports,
            methods,
            markers,
            allow,
            yara: None,
            version,
            rules,
        })
    }

    /// Adds the YARA rules compiled in the same load; the version then
    /// fingerprints them too.
    pub fn with_yara(mut self, yara: Option<crate::yara::YaraSet>) -> Self {
        if let Some(y) = &yara {
            use sha2::{Digest, Sha256};
            let h = Sha256::digest(format!("{}\0{}", self.version, y.digest).as_bytes());
            self.version = hex::encode(&h[..6]);
        }
        self.yara = yara;
        self
    }

    /// The YARA rules, when any were loaded.
    pub fn yara(&self) -> Option<&crate::yara::YaraSet> {
        self.yara.as_ref()
    }

    /// All enabled rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The enabled rule `id`.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    fn ev(&self, i: usize, detail: EvidenceKind) -> Evidence {
        let r = &self.rules[i];
        Evidence::from_rule(detail, &r.id, r.severity)
    }

    /// Miner names among `(field, name)` candidates (comm, exe basename, argv0 basename).
    pub fn match_names(&self, candidates: &[(&str, &str)]) -> Vec<Evidence> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (field, name) in candidates {
            if name.is_empty() {
                continue;
            }
            if let Some(rs) = self.names.get(&name.to_lowercase()) {
                for &i in rs {
                    if seen.insert(i) {
                        out.push(self.ev(
                            i,
                            EvidenceKind::ProcessName {
                                name: name.to_string(),
                                field: field.to_string(),
                            },
                        ));
                    }
                }
            }
        }
        out
    }

    /// Everything a command line gives away: miner flags and pool URLs
    /// (cmdline rules), pool domains, wallets, also inside base64 tokens.
    pub fn scan_cmdline(&self, cmdline: &str) -> Vec<Evidence> {
        let mut out = Vec::new();
        self.scan_text(cmdline, false, &mut out);
        for m in base64_re().find_iter(cmdline) {
            if let Some(decoded) = decode_base64(m.as_str()) {
                self.scan_text(&decoded, true, &mut out);
            }
        }
        out
    }

    fn scan_text(&self, text: &str, base64: bool, out: &mut Vec<Evidence>) {
        let mut hit = HashSet::new();
        if let Some(ac) = &self.cmd_ac {
            for m in ac.find_overlapping_iter(text) {
                let i = self.cmd_ac_rule[m.pattern().as_usize()];
                if hit.insert(i) {
                    let matched = text[m.start()..m.end()].to_string();
                    let pool_url = self.rules[i].has_tag("pool_url");
                    out.push(self.ev(i, EvidenceKind::CommandLine { matched, base64, pool_url }));
                }
            }
        }
        for k in self.cmd_set.matches(text).iter() {
            let (re, i) = &self.cmd_res[k];
            if hit.insert(*i) {
                let matched = re.find(text).map(|m| m.as_str().trim().to_string()).unwrap_or_default();
                let pool_url = self.rules[*i].has_tag("pool_url");
                out.push(self.ev(
                    *i,
                    EvidenceKind::CommandLine {
                        matched: clip(&crate::redact::redact_cmdline(&matched)),
                        base64,
                        pool_url,
                    },
                ));
            }
        }
        let mut domains = HashSet::new();
        for m in host_re().find_iter(text) {
            if let Some((domain, i)) = self.pool_domain(m.as_str()) {
                if domains.insert(domain.clone()) {
                    let source = if base64 { "cmdline (base64)" } else { "cmdline" };
                    out.push(self.ev(
                        i,
                        EvidenceKind::PoolDomain {
                            domain,
                            source: source.into(),
                        },
                    ));
                }
            }
        }
        out.extend(self.wallets_in(text, if base64 { "cmdline (base64)" } else { "cmdline" }));
    }

    /// Wallet addresses among the tokens of `text` (split at anything not
    /// alphanumeric, so `WALLET.worker` and `WALLET+diff` are found).
    pub fn wallets_in(&self, text: &str, source: &str) -> Vec<Evidence> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for tok in text.split(|c: char| !c.is_ascii_alphanumeric()) {
            if tok.len() < 26 || tok.len() > 120 || !seen.insert(tok) {
                continue;
            }
            if let Some(k) = self.wallet_set.matches(tok).iter().next() {
                let i = self.wallet_rule[k];
                let Spec::Wallet { coin, .. } = &self.rules[i].spec else { continue };
                if !plausible_wallet(coin, tok) {
                    continue;
                }
                out.push(self.ev(
                    i,
                    EvidenceKind::Wallet {
                        coin: coin.clone(),
                        address: tok.to_string(),
                        source: source.to_string(),
                    },
                ));
            }
        }
        out
    }

    /// The pool-domain rule for a DNS name (suffix match at label boundaries):
    /// the matched domain and the rule index.
    pub fn pool_domain(&self, host: &str) -> Option<(String, usize)> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut rest = host.as_str();
        loop {
            if let Some(&i) = self.domains.get(rest) {
                return Some((rest.to_string(), i));
            }
            match rest.find('.') {
                Some(p) => rest = &rest[p + 1..],
                None => return None,
            }
        }
    }

    /// The rule (by index) for a binary's SHA-256.
    pub fn binary_hash(&self, sha256: &[u8; 32]) -> Option<&Rule> {
        self.hashes.get(sha256).map(|&i| &self.rules[i])
    }

    /// A streaming scanner for binary content rules.
    pub fn content_scanner(&self) -> ContentScanner<'_> {
        ContentScanner {
            sig: self,
            found: vec![false; self.content_pat.len()],
            tail: Vec::new(),
        }
    }

    /// The pool-address rule for a remote endpoint (exact endpoint, then IP).
    pub fn pool_address(&self, remote: &SocketAddr) -> Option<&Rule> {
        self.endpoints
            .get(remote)
            .or_else(|| self.ips.get(&remote.ip()))
            .map(|&i| &self.rules[i])
    }

    /// The pool-port rule for a remote port.
    pub fn pool_port(&self, port: u16) -> Option<&Rule> {
        self.ports.get(&port).map(|&i| &self.rules[i])
    }

    /// The `node_port` rule for a local port a mining node or stack
    /// listens on (P2Pool's peer port, monerod's RPC…): its description
    /// names the service.
    pub fn node_port(&self, port: u16) -> Option<&Rule> {
        self.node_ports.get(&port).map(|&i| &self.rules[i])
    }

    /// The stratum rule for a JSON-RPC method name (case-insensitive).
    pub fn stratum_method(&self, method: &str) -> Option<&Rule> {
        self.methods.get(&method.to_ascii_lowercase()).map(|&i| &self.rules[i])
    }

    /// The stratum rule whose protocol marker appears in `text`.
    pub fn stratum_marker(&self, text: &str) -> Option<&Rule> {
        self.markers
            .iter()
            .find(|(m, _)| text.contains(m.as_str()))
            .map(|(_, i)| &self.rules[*i])
    }

    /// Whether any allow rule names binary hashes (else hashes need not travel).
    pub fn has_hash_allowlist(&self) -> bool {
        self.allow
            .iter()
            .any(|&i| matches!(&self.rules[i].spec, Spec::Allow { sha256, .. } if !sha256.is_empty()))
    }

    /// The allow rule that covers a process, if any.
    pub fn allowed(&self, sha256: Option<&[u8; 32]>, exe: &str, user: &str, cgroup: &str) -> Option<&Rule> {
        self.allow.iter().map(|&i| &self.rules[i]).find(|r| {
            let Spec::Allow {
                sha256: hs,
                paths,
                users,
                cgroups,
            } = &r.spec
            else {
                return false;
            };
            sha256.is_some_and(|h| hs.contains(h))
                || paths
                    .iter()
                    .any(|p| if p.ends_with('/') { exe.starts_with(p.as_str()) } else { exe == p })
                || users.iter().any(|u| u == user)
                || cgroups.iter().any(|c| !cgroup.is_empty() && cgroup.contains(c.as_str()))
        })
    }

    /// Checks every rule's examples against the compiled matchers; each
    /// failure names the rule's file and line.
    pub fn check_examples(&self) -> Vec<RuleError> {
        let mut errs = Vec::new();
        for r in &self.rules {
            for (want, list) in [(true, &r.examples.hit), (false, &r.examples.miss)] {
                for ex in list {
                    let got = self.example_matches(r, ex);
                    if got != want {
                        errs.push(RuleError {
                            path: r.file.clone(),
                            line: r.line,
                            message: format!(
                                "rule {}: example {:?} {}",
                                r.id,
                                clip(ex),
                                if want {
                                    "should match but does not"
                                } else {
                                    "should not match but does"
                                }
                            ),
                        });
                    }
                }
            }
        }
        errs
    }

    /// Whether one example string matches rule `r` through the compiled set.
    pub fn example_matches(&self, r: &Rule, ex: &str) -> bool {
        let by_rule = |evs: Vec<Evidence>| evs.iter().any(|e| e.rule.as_deref() == Some(r.id.as_str()));
        match r.kind {
            RuleKind::ProcessName => by_rule(self.match_names(&[("comm", ex)])),
            RuleKind::Cmdline => by_rule(self.scan_cmdline(ex)),
            RuleKind::Wallet => by_rule(self.wallets_in(ex, "example")),
            RuleKind::BinaryHash => {
                let mut h = [0u8; 32];
                hex::decode_to_slice(ex.trim(), &mut h).is_ok() && self.binary_hash(&h).is_some_and(|x| x.id == r.id)
            }
            RuleKind::BinaryContent => {
                let mut s = self.content_scanner();
                s.feed(ex.as_bytes());
                s.finish().iter().any(|(rule, _)| rule.id == r.id)
            }
            RuleKind::PoolDomain => self.pool_domain(ex).is_some_and(|(_, i)| self.rules[i].id == r.id),
            RuleKind::PoolAddress => {
                let addr = match crate::import::parse_address(ex) {
                    Ok(crate::import::Address::Ip(ip)) => SocketAddr::new(ip, 0),
                    Ok(crate::import::Address::Endpoint(e)) => e,
                    Err(_) => return false,
                };
                self.pool_address(&addr).is_some_and(|x| x.id == r.id)
            }
            RuleKind::PoolPort => ex.trim().parse().ok().and_then(|p| self.pool_port(p)).is_some_and(|x| x.id == r.id),
            RuleKind::NodePort => ex.trim().parse().ok().and_then(|p| self.node_port(p)).is_some_and(|x| x.id == r.id),
            RuleKind::Stratum => {
                let method = serde_json::from_str::<serde_json::Value>(ex)
                    .ok()
                    .and_then(|v| v.get("method").and_then(|m| m.as_str()).map(str::to_string));
                method.and_then(|m| self.stratum_method(&m)).is_some_and(|x| x.id == r.id)
                    || self.stratum_marker(ex).is_some_and(|x| x.id == r.id)
            }
            RuleKind::Allow => {
                let (k, v) = ex.split_once(':').unwrap_or(("", ""));
                let mut h = [0u8; 32];
                let hash = (k == "sha256" && hex::decode_to_slice(v, &mut h).is_ok()).then_some(&h);
                let exe = if k == "path" { v } else { "" };
                let user = if k == "user" { v } else { "" };
                let cg = if k == "cgroup" { v } else { "" };
                self.allowed(hash, exe, user, cg).is_some_and(|x| x.id == r.id)
            }
        }
    }
}

/// Streams bytes through the content automaton; matches that straddle two
/// chunks are found (the last bytes of each chunk are searched again with
/// the start of the next).
pub struct ContentScanner<'a> {
    sig: &'a Signatures,
    found: Vec<bool>,
    tail: Vec<u8>,
}

impl ContentScanner<'_> {
    /// Scans the next chunk.
    ///
    /// A fast non-overlapping search finds where any string occurs; around
    /// each hit an overlapping search finds every string that overlaps it
    /// (a string inside another, or two that share bytes). With leftmost
    /// semantics every occurrence the fast search skips overlaps one it
    /// reported, so the windows catch them all.
    pub fn feed(&mut self, chunk: &[u8]) {
        let (Some(ac), Some(fast)) = (&self.sig.content_ac, &self.sig.content_fast) else {
            return;
        };
        let keep = self.sig.content_max_len.saturating_sub(1);
        if !self.tail.is_empty() {
            let mut seam = std::mem::take(&mut self.tail);
            seam.extend_from_slice(&chunk[..chunk.len().min(keep)]);
            for m in ac.find_overlapping_iter(&seam[..]) {
                self.found[m.pattern().as_usize()] = true;
            }
        }
        // merge the windows around hits, then search each merged window once
        let mut window: Option<(usize, usize)> = None;
        let scan = |w: (usize, usize), found: &mut Vec<bool>| {
            for o in ac.find_overlapping_iter(&chunk[w.0..w.1]) {
                found[o.pattern().as_usize()] = true;
            }
        };
        for m in fast.find_iter(chunk) {
            let (s, e) = (m.start().saturating_sub(keep), (m.end() + keep).min(chunk.len()));
            window = match window {
                Some((ws, we)) if s <= we => Some((ws, we.max(e))),
                Some(w) => {
                    scan(w, &mut self.found);
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some(w) = window {
            scan(w, &mut self.found);
        }
        let start = chunk.len().saturating_sub(keep);
        self.tail.clear();
        self.tail.extend_from_slice(&chunk[start..]);
    }

    /// The content rules whose `min_matches` were reached, with the strings found.
    pub fn finish(&self) -> Vec<(&Rule, Vec<String>)> {
        let mut out = Vec::new();
        for &i in &self.sig.content_rules {
            let r = &self.sig.rules[i];
            let Spec::BinaryContent { strings, min_matches } = &r.spec else {
                continue;
            };
            let hits: Vec<String> = self
                .sig
                .content_pat
                .iter()
                .enumerate()
                .filter(|(p, (ri, _))| *ri == i && self.found[*p])
                .map(|(_, (_, j))| strings[*j].clone())
                .collect();
            if hits.len() >= *min_matches {
                out.push((r, hits));
            }
        }
        out
    }
}

fn plausible_wallet(coin: &str, tok: &str) -> bool {
    match coin {
        // Legacy Bitcoin addresses carry a checksum: random base58 tokens fail it.
        "bitcoin" if tok.starts_with('1') || tok.starts_with('3') => bs58::decode(tok).with_check(None).into_vec().is_ok(),
        _ => true,
    }
}

fn decode_base64(tok: &str) -> Option<String> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let trimmed = tok.trim_end_matches('=');
    // base64 of text has a length that is not 1 mod 4
    let usable = &trimmed[..trimmed.len() - if trimmed.len() % 4 == 1 { 1 } else { 0 }];
    let bytes = engine.decode(usable).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    (printable * 10 >= text.chars().count() * 9).then_some(text)
}

fn clip(s: &str) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// The binary content rules as YARA source: same strings, `N of them`.
pub fn to_yara(rules: &[Rule]) -> String {
    let mut out = String::from("// generated by `rigwatch signatures export-yara`\n");
    for r in rules {
        let Spec::BinaryContent { strings, min_matches } = &r.spec else {
            continue;
        };
        let name: String = r.id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        out.push_str(&format!(
            "rule {name}\n{{\n  meta:\n    description = {:?}\n  strings:\n",
            r.description
        ));
        for (i, s) in strings.iter().enumerate() {
            let hex: Vec<String> = s.bytes().map(|b| format!("{b:02X}")).collect();
            out.push_str(&format!("    $s{i} = {{ {} }}\n", hex.join(" ")));
        }
        out.push_str(&format!("  condition:\n    {min_matches} of them\n}}\n\n"));
    }
    out
}
