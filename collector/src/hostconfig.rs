//! Configuration as evidence: each agent reports the configuration it runs
//! with ([`ConfigState`]: digests of its settings, allowlist and signature
//! set, the sensors it switches off, its collector). The collector keeps
//! its history per host (a row only when it differs from the host's last,
//! at most [`MAX_ROWS_PER_HOST`] rows), names what changed, and alerts when
//! a host's allowlist or local signature overrides change, when a sensor is
//! switched off or when the agent is pointed at another collector: the
//! local root who allowlists his own miner is seen from outside the host.
//!
//! The fleet's `[policy]` ([`Policy`]) is held against each host's last
//! reported state: a host whose local allow rules still count although the
//! policy forbids them, that loads local signature files the policy
//! forbids, or that switches off a sensor the policy requires, drifts
//! ([`drift`]); the alert loop fires `RigwatchAgentPolicyDrift` for as long
//! as it does.
//!
//! The state comes from the agent, so it is hostile input: it is bounded
//! ([`ConfigState::bounded`]) and sensor names are checked before anything
//! is stored.

use crate::db::{Conn, DbError, Value};
use crate::store::Store;
use rigwatch_signatures::report::ConfigState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Rows of configuration history kept per host (the oldest go first).
pub const MAX_ROWS_PER_HOST: i64 = 100;
/// How long a configuration change alert fires (it then resolves by itself).
pub const ALERT_SECONDS: u64 = 3600;
/// What a change can be about: the metric's `what` label values.
pub const WHATS: &[&str] = &["allowlist", "overrides", "sensors_off", "config", "collector", "bundled"];
/// Most items named in one change's text.
const NAMED: usize = 5;

/// One thing that changed between two reported states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// One of [`WHATS`].
    pub what: String,
    /// Whether it alerts.
    pub alert: bool,
    /// The state before, in words.
    pub before: String,
    /// The state after, in words.
    pub after: String,
}

/// One row of a host's configuration history.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigRecord {
    /// The host.
    pub host: String,
    /// 1 for the host's first report, then one more per change.
    pub seq: u64,
    /// Unix seconds (the collector's clock).
    pub at: u64,
    /// The state reported.
    pub state: ConfigState,
    /// What changed against the previous row (for the first row: what was
    /// worth an alert already).
    pub changes: Vec<ConfigChange>,
}

/// A sensor name as the collector will label a metric with it: lowercase
/// ASCII letters, digits and `_`, at most 32 bytes; anything else is
/// shown as `invalid`.
fn sensor_name(s: &str) -> String {
    let ok = !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        s.to_string()
    } else {
        "invalid".into()
    }
}

/// The state as the collector stores it: bounded, sensor names checked.
pub fn sanitized(s: &ConfigState) -> ConfigState {
    let mut s = s.clone();
    s.sensors_off = s.sensors_off.iter().map(|n| sensor_name(n)).collect();
    s.bounded()
}

/// What a row is compared on: everything but the fleet set's version and
/// the whole set's version (they move with every indicator the fleet learns).
fn comparable(s: &ConfigState) -> ConfigState {
    let mut s = s.clone();
    s.signatures.fleet = 0;
    s.signatures.version.clear();
    s
}

fn names(v: &[String]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let mut out = v.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > NAMED {
        out.push_str(&format!(" (+{} more)", v.len() - NAMED));
    }
    out
}

fn allowlist_words(s: &ConfigState) -> String {
    let a = &s.allowlist;
    let mut w = format!("{} allow rules, {} local", a.entries, a.local);
    if !a.files.is_empty() {
        w.push_str(&format!(" ({})", names(&a.files)));
    }
    if a.ignored_by_policy > 0 {
        w.push_str(&format!(", {} ignored by policy", a.ignored_by_policy));
    }
    w
}

fn short(d: &str) -> String {
    d.chars().take(12).collect()
}

/// The fleet policy (`[policy]` of the collector's configuration) that each
/// host's reported configuration is held to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Agents ignore local allow rules (the policy travels in the fleet set).
    pub forbid_local_allowlist: bool,
    /// Local signature files are drift.
    pub forbid_local_overrides: bool,
    /// Sensors that must stay on (`"*"`: all).
    pub required_sensors: Vec<String>,
}

/// The `policy` label values of a drift.
pub const POLICY_RULES: &[&str] = &["local_allowlist", "local_overrides", "required_sensors"];

impl Policy {
    /// The policy a `[policy]` section asks for; errors say what is wrong.
    pub fn from_config(p: &crate::config::PolicyConfig) -> anyhow::Result<Policy> {
        let forbid = |key: &str, v: &Option<String>| match v.as_deref() {
            None | Some("allow") => Ok(false),
            Some("forbid") => Ok(true),
            Some(other) => Err(anyhow::anyhow!("[policy] {key} must be \"allow\" or \"forbid\", not {other:?}")),
        };
        let known = rigwatch_signatures::report::SENSOR_SWITCHES;
        let required = p.required_sensors.clone().unwrap_or_default();
        if let Some(bad) = required.iter().find(|s| *s != "*" && !known.contains(&s.as_str())) {
            anyhow::bail!(
                "[policy] required_sensors: no sensor is called {bad:?}; there are {} (or \"*\" for all)",
                known.join(", ")
            );
        }
        Ok(Policy {
            forbid_local_allowlist: forbid("local_allowlist", &p.local_allowlist)?,
            forbid_local_overrides: forbid("local_overrides", &p.local_overrides)?,
            required_sensors: required,
        })
    }

    /// Whether the policy asks anything that [`drift`] checks.
    pub fn checks_anything(&self) -> bool {
        self.forbid_local_allowlist || self.forbid_local_overrides || !self.required_sensors.is_empty()
    }
}

/// Where a host's configuration departs from the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The host.
    pub host: String,
    /// One of [`POLICY_RULES`].
    pub policy: String,
    /// What departs, in words.
    pub detail: String,
    /// When the host reported the state that drifts (Unix seconds).
    pub since: u64,
}

/// How `s`, a host's last reported state, departs from `p`:
/// `(policy rule, detail)` pairs.
pub fn drift(p: &Policy, s: &ConfigState) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if p.forbid_local_allowlist && s.allowlist.local > 0 {
        out.push((
            "local_allowlist",
            format!(
                "{} local allow rules in force although the policy forbids them ({}); the agent has not applied the fleet policy",
                s.allowlist.local,
                names(&s.allowlist.files)
            ),
        ));
    }
    let local = s.signatures.local.len() as u64 + s.signatures.local_more;
    if p.forbid_local_overrides && local > 0 {
        let files: Vec<String> = s.signatures.local.iter().map(|f| f.name.clone()).collect();
        out.push((
            "local_overrides",
            format!("{local} local signature files although the policy forbids them: {}", names(&files)),
        ));
    }
    let all = p.required_sensors.iter().any(|r| r == "*");
    let off: Vec<String> = s
        .sensors_off
        .iter()
        .filter(|o| all || p.required_sensors.contains(o))
        .cloned()
        .collect();
    if !off.is_empty() {
        out.push(("required_sensors", format!("required sensors switched off: {}", names(&off))));
    }
    out
}

/// Every host's drift from `p`, by host (from each host's last row).
pub fn drifts(p: &Policy, latest: &[ConfigRecord]) -> Vec<Drift> {
    latest
        .iter()
        .flat_map(|r| {
            drift(p, &r.state).into_iter().map(|(policy, detail)| Drift {
                host: r.host.clone(),
                policy: policy.into(),
                detail,
                since: r.at,
            })
        })
        .collect()
}

/// What changed from `prev` to `new` (`prev` None: the host's first
/// report, which sets the baseline and alerts only for a sensor already off
/// or local allow rules already present).
pub fn diff(prev: Option<&ConfigState>, new: &ConfigState) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    let change = |what: &str, alert: bool, before: String, after: String| ConfigChange {
        what: what.into(),
        alert,
        before,
        after,
    };
    let Some(p) = prev else {
        if new.allowlist.local > 0 || new.allowlist.ignored_by_policy > 0 {
            out.push(change("allowlist", true, "first report".into(), allowlist_words(new)));
        }
        if !new.sensors_off.is_empty() {
            out.push(change(
                "sensors_off",
                true,
                "first report".into(),
                format!("off: {}", names(&new.sensors_off)),
            ));
        }
        return out;
    };
    if p.allowlist != new.allowlist {
        out.push(change("allowlist", true, allowlist_words(p), allowlist_words(new)));
    }
    if p.signatures.local != new.signatures.local || p.signatures.local_more != new.signatures.local_more {
        let before: BTreeMap<&str, &str> = p.signatures.local.iter().map(|f| (f.name.as_str(), f.sha256.as_str())).collect();
        let after: BTreeMap<&str, &str> = new.signatures.local.iter().map(|f| (f.name.as_str(), f.sha256.as_str())).collect();
        let mut words = Vec::new();
        let pick = |f: &dyn Fn(&str) -> bool, keys: &BTreeMap<&str, &str>| -> Vec<String> {
            keys.keys().filter(|k| f(k)).map(|k| k.to_string()).collect()
        };
        let added = pick(&|k| !before.contains_key(k), &after);
        let removed = pick(&|k| !after.contains_key(k), &before);
        let changed = pick(&|k| before.get(k).is_some_and(|h| after.get(k) != Some(h)), &after);
        for (label, v) in [("added", added), ("changed", changed), ("removed", removed)] {
            if !v.is_empty() {
                words.push(format!("{label} {}", names(&v)));
            }
        }
        if words.is_empty() {
            words.push(format!("{} more files", new.signatures.local_more));
        }
        out.push(change(
            "overrides",
            true,
            format!(
                "{} local signature files",
                p.signatures.local.len() as u64 + p.signatures.local_more
            ),
            words.join("; "),
        ));
    }
    if p.sensors_off != new.sensors_off {
        let was: BTreeSet<&String> = p.sensors_off.iter().collect();
        let switched_off = new.sensors_off.iter().any(|s| !was.contains(s));
        out.push(change(
            "sensors_off",
            switched_off,
            format!("off: {}", names(&p.sensors_off)),
            format!("off: {}", names(&new.sensors_off)),
        ));
    }
    if p.collector != new.collector {
        out.push(change("collector", true, p.collector.clone(), new.collector.clone()));
    }
    if p.digest != new.digest {
        out.push(change("config", false, short(&p.digest), short(&new.digest)));
    }
    if p.signatures.bundled != new.signatures.bundled {
        out.push(change(
            "bundled",
            false,
            short(&p.signatures.bundled),
            short(&new.signatures.bundled),
        ));
    }
    out
}

/// A change row in words, for a host that fell silent `secs` after it:
/// "2 min after its configuration changed: allowlist 0 allow rules, 0 local → 1 allow rules, 1 local".
pub fn change_words(changes: &[ConfigChange], secs: u64) -> String {
    let when = if secs < 120 {
        format!("{secs} s")
    } else {
        format!("{} min", secs / 60)
    };
    let what: Vec<String> = changes
        .iter()
        .take(NAMED)
        .map(|c| format!("{} {} → {}", c.what, c.before, c.after))
        .collect();
    format!("{when} after its configuration changed: {}", what.join("; "))
}

/// Stores `state` for `host` when it differs from the host's last row
/// (inside the report's transaction); returns the changes it made.
pub(crate) fn record_tx(c: &mut dyn Conn, host: &str, state: &ConfigState, received: u64) -> Result<Vec<ConfigChange>, DbError> {
    let state = sanitized(state);
    let last = c.query(
        "SELECT seq, state FROM host_config WHERE host = $1 ORDER BY seq DESC LIMIT 1",
        &[host.into()],
    )?;
    let (seq, prev) = match last.first() {
        Some(r) => (r[0].int(), serde_json::from_str::<ConfigState>(&r[1].text()).ok()),
        None => (0, None),
    };
    if let Some(p) = &prev {
        if comparable(p) == comparable(&state) {
            return Ok(Vec::new());
        }
    }
    let changes = diff(prev.as_ref(), &state);
    let first = seq == 0;
    if !first && changes.is_empty() {
        return Ok(Vec::new());
    }
    let alert = changes.iter().any(|c| c.alert);
    c.exec(
        "INSERT INTO host_config (host, seq, at, state, changes, alert) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            host.into(),
            Value::Int(seq + 1),
            received.into(),
            serde_json::to_string(&state).unwrap_or_default().into(),
            serde_json::to_string(&changes).unwrap_or_default().into(),
            Value::Int(alert as i64),
        ],
    )?;
    c.exec(
        "DELETE FROM host_config WHERE host = $1 AND seq <= $2",
        &[host.into(), Value::Int(seq + 1 - MAX_ROWS_PER_HOST)],
    )?;
    Ok(changes)
}

fn record(r: &[Value]) -> ConfigRecord {
    ConfigRecord {
        host: r[0].text(),
        seq: r[1].int() as u64,
        at: r[2].int() as u64,
        state: serde_json::from_str(&r[3].text()).unwrap_or_default(),
        changes: serde_json::from_str(&r[4].text()).unwrap_or_default(),
    }
}

const COLS: &str = "host, seq, at, state, changes";

impl Store {
    /// A host's configuration history, newest first.
    pub async fn config_history(&self, host: &str) -> Result<Vec<ConfigRecord>, DbError> {
        let host = host.to_string();
        self.run(false, move |c| {
            Ok(c.query(
                &format!("SELECT {COLS} FROM host_config WHERE host = $1 ORDER BY seq DESC"),
                &[host.as_str().into()],
            )?
            .iter()
            .map(|r| record(r))
            .collect())
        })
        .await
    }

    /// Rows that alert, stored at or after `since`, oldest first.
    pub async fn config_alerts(&self, since: u64) -> Result<Vec<ConfigRecord>, DbError> {
        self.run(false, move |c| {
            Ok(c.query(
                &format!("SELECT {COLS} FROM host_config WHERE alert = 1 AND at >= $1 ORDER BY at, host, seq"),
                &[since.into()],
            )?
            .iter()
            .map(|r| record(r))
            .collect())
        })
        .await
    }

    /// Each host's last reported state, by host.
    pub async fn config_latest(&self) -> Result<Vec<ConfigRecord>, DbError> {
        self.run(false, move |c| {
            Ok(c.query(
                &format!(
                    "SELECT {COLS} FROM host_config h WHERE seq = (SELECT MAX(seq) FROM host_config l WHERE l.host = h.host) \
                     ORDER BY host"
                ),
                &[],
            )?
            .iter()
            .map(|r| record(r))
            .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::report::LocalFile;

    fn base() -> ConfigState {
        ConfigState {
            digest: "aaaa".into(),
            collector: "https://c:9860".into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_report_is_the_baseline_unless_already_suspect() {
        assert!(diff(None, &base()).is_empty());
        let mut s = base();
        s.sensors_off = vec!["capture".into()];
        s.allowlist.local = 1;
        s.allowlist.files = vec!["/etc/rigwatch/signatures.d/ours.toml".into()];
        let d = diff(None, &s);
        assert_eq!(d.iter().map(|c| c.what.as_str()).collect::<Vec<_>>(), ["allowlist", "sensors_off"]);
        assert!(d.iter().all(|c| c.alert));
        assert!(d[0].after.contains("ours.toml"), "{:?}", d[0]);
    }

    #[test]
    fn changes_are_named_and_only_some_alert() {
        let a = base();
        let mut b = base();
        b.signatures.local = vec![LocalFile {
            name: "/etc/rigwatch/signatures.d/x.toml".into(),
            sha256: "11".into(),
        }];
        b.sensors_off = vec!["gpu".into()];
        b.digest = "bbbb".into();
        let d = diff(Some(&a), &b);
        let whats: Vec<_> = d.iter().map(|c| (c.what.as_str(), c.alert)).collect();
        assert_eq!(whats, [("overrides", true), ("sensors_off", true), ("config", false)]);
        assert!(d[0].after.contains("added /etc/rigwatch/signatures.d/x.toml"), "{:?}", d[0]);
        // a sensor switched back on is history, not an alert
        let d = diff(Some(&b), &a);
        assert!(d.iter().any(|c| c.what == "sensors_off" && !c.alert));
        // the fleet set moving is not a change
        let mut c = b.clone();
        c.signatures.fleet = 9;
        c.signatures.version = "v9".into();
        assert_eq!(comparable(&b), comparable(&c));
    }

    #[test]
    fn drift_from_the_policy_is_named() {
        let mut s = base();
        let none = Policy::default();
        s.sensors_off = vec!["capture".into(), "gpu".into()];
        s.allowlist.local = 2;
        s.allowlist.files = vec!["/etc/rigwatch/signatures.d/mine.toml".into()];
        s.signatures.local = vec![LocalFile {
            name: "/etc/rigwatch/signatures.d/mine.toml".into(),
            sha256: "11".into(),
        }];
        assert!(drift(&none, &s).is_empty(), "no policy, no drift");
        let p = Policy {
            forbid_local_allowlist: true,
            forbid_local_overrides: true,
            required_sensors: vec!["gpu".into(), "rounding".into()],
        };
        let d = drift(&p, &s);
        assert_eq!(
            d.iter().map(|d| d.0).collect::<Vec<_>>(),
            ["local_allowlist", "local_overrides", "required_sensors"]
        );
        assert!(d[0].1.contains("2 local allow rules") && d[0].1.contains("mine.toml"), "{d:?}");
        assert!(d[1].1.contains("1 local signature files") && d[1].1.contains("mine.toml"), "{d:?}");
        assert_eq!(d[2].1, "required sensors switched off: gpu", "capture is not required");
        let all = Policy {
            required_sensors: vec!["*".into()],
            ..Default::default()
        };
        assert_eq!(drift(&all, &s)[0].1, "required sensors switched off: capture, gpu");
        // the allow rules dropped by the policy are not drift
        s.allowlist.local = 0;
        s.allowlist.ignored_by_policy = 2;
        assert!(drift(&p, &s).iter().all(|d| d.0 != "local_allowlist"));
    }

    #[test]
    fn hostile_sensor_names_become_invalid() {
        let mut s = base();
        s.sensors_off = vec!["capture".into(), "x\"} 1\nevil".into(), "A".repeat(40)];
        assert_eq!(sanitized(&s).sensors_off, ["capture", "invalid"]);
    }
}
