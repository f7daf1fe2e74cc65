//! The report an agent sends to the collector (`POST /api/v1/reports`,
//! JSON, bearer token). Versioned: a collector rejects a version it does not
//! know with a 4xx and stores nothing.
//!
//! Delivery is at-least-once (the agent spools and retries), so every event
//! carries an id that is unique per agent; the collector stores each event
//! id once, which makes a batch delivered twice harmless.

use crate::model::Finding;
use serde::{Deserialize, Serialize};

/// The report format version this crate writes and reads.
pub const REPORT_VERSION: u32 = 1;

/// One batch of events from one agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`REPORT_VERSION`] when written by this crate.
    pub version: u32,
    /// Unique per batch (agent id + first sequence number).
    pub batch_id: String,
    /// Who sends it.
    pub agent: AgentInfo,
    /// Unix seconds when the batch was built.
    pub sent_at: u64,
    /// The events, oldest first.
    pub events: Vec<Event>,
}

/// The sending agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    /// A stable id for this agent installation (kept in its spool directory).
    pub agent_id: String,
    /// The host name.
    pub host: String,
    /// rigwatch version.
    pub version: String,
    /// The signature set's version.
    pub signatures_version: String,
    /// Each sensor's state.
    #[serde(default)]
    pub sensors: Vec<SensorStatus>,
    /// The configuration in force, as evidence: a local administrator who
    /// allowlists his miner or switches a sensor off shows up at the
    /// collector. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigState>,
}

/// Longest string of a [`ConfigState`] (a digest, a file name, a URL).
pub const MAX_CONFIG_STRING: usize = 256;
/// Most entries of each list of a [`ConfigState`].
pub const MAX_CONFIG_LIST: usize = 64;

/// The sensors an agent's `[sensors]` section can switch off, by the name
/// a [`ConfigState::sensors_off`] lists them with (the collector's
/// `[policy] required_sensors` is checked against it).
pub const SENSOR_SWITCHES: &[&str] = &[
    "binary",
    "capture",
    "cgroup_cpu",
    "exec_events",
    "footprint",
    "gpu",
    "hidden",
    "minerconfig",
    "persistence",
    "rounding",
    "sockets",
];

/// The effective configuration of an agent, summarised so that a change
/// to it can be seen (and alerted on) at the collector. The agent writes it;
/// the collector treats it as hostile input and bounds it ([`ConfigState::bounded`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigState {
    /// SHA-256 (hex) of the effective agent configuration, serialised
    /// canonically, secrets (the collector token) left out.
    pub digest: String,
    /// The allow rules in force.
    pub allowlist: AllowlistState,
    /// Where the signature set in force comes from.
    pub signatures: SignatureSetState,
    /// Sensors the configuration switches off (sorted).
    pub sensors_off: Vec<String>,
    /// The collector URL the agent ships to.
    pub collector: String,
}

/// The allow rules in force (rules of `kind = "allow"`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AllowlistState {
    /// SHA-256 (hex) over the allow rules in force (id, enabled, what they match).
    pub digest: String,
    /// Allow rules in force, from anywhere (bundled, local, fleet).
    pub entries: u64,
    /// Allow rules from local signature directories.
    pub local: u64,
    /// The local files holding them (sorted).
    pub files: Vec<String>,
    /// Local allow rules dropped because the fleet policy forbids local allowlists.
    pub ignored_by_policy: u64,
}

/// The signature set's sources.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SignatureSetState {
    /// The version of the whole set in force.
    pub version: String,
    /// SHA-256 (hex) of the bundled rule files.
    pub bundled: String,
    /// Local rule and list files (overrides), name and SHA-256, sorted.
    pub local: Vec<LocalFile>,
    /// Local files beyond the [`MAX_CONFIG_LIST`] listed.
    pub local_more: u64,
    /// The fleet set's version (0: none).
    pub fleet: u64,
}

/// A local signature file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LocalFile {
    /// Its path.
    pub name: String,
    /// SHA-256 (hex) of its content.
    pub sha256: String,
}

/// `s` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub fn cap_string(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl ConfigState {
    /// The state with every string and list capped and every list sorted
    /// and deduplicated: what both the agent sends and the collector stores
    /// (a list cut short says how many more there were where it can).
    pub fn bounded(&self) -> ConfigState {
        let cap = |s: &str| cap_string(s, MAX_CONFIG_STRING);
        let list = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|s| cap(s)).collect();
            v.sort();
            v.dedup();
            v.truncate(MAX_CONFIG_LIST);
            v
        };
        let mut local: Vec<LocalFile> = self
            .signatures
            .local
            .iter()
            .map(|f| LocalFile {
                name: cap(&f.name),
                sha256: cap(&f.sha256),
            })
            .collect();
        local.sort();
        local.dedup();
        let more = local.len().saturating_sub(MAX_CONFIG_LIST) as u64;
        local.truncate(MAX_CONFIG_LIST);
        ConfigState {
            digest: cap(&self.digest),
            allowlist: AllowlistState {
                digest: cap(&self.allowlist.digest),
                entries: self.allowlist.entries,
                local: self.allowlist.local,
                files: list(&self.allowlist.files),
                ignored_by_policy: self.allowlist.ignored_by_policy,
            },
            signatures: SignatureSetState {
                version: cap(&self.signatures.version),
                bundled: cap(&self.signatures.bundled),
                local,
                local_more: self.signatures.local_more.saturating_add(more),
                fleet: self.signatures.fleet,
            },
            sensors_off: list(&self.sensors_off),
            collector: cap(&self.collector),
        }
    }
}

/// Whether a sensor works on that host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorStatus {
    /// Sensor name (process, binary, capture, gpu…).
    pub name: String,
    /// True when it works.
    pub up: bool,
    /// Why not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One event: a finding opened, updated or resolved, or a heartbeat.
/// (No `deny_unknown_fields` here: serde cannot combine it with `flatten`.)
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique per agent: `"{agent_id}:{seq}"`. The collector stores it once.
    pub event_id: String,
    /// Unix seconds when it happened.
    pub at: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A new finding.
    FindingOpened {
        /// The finding as it stands.
        finding: Finding,
    },
    /// A finding gained evidence or changed severity.
    FindingUpdated {
        /// The finding as it stands.
        finding: Finding,
    },
    /// A finding ended: the process exited or its evidence is gone.
    FindingResolved {
        /// The finding's id.
        finding_id: String,
        /// Why (`process exited`, `evidence gone`, `allowlisted`).
        reason: String,
    },
    /// The agent is alive (sent at least every heartbeat interval).
    Heartbeat {},
    /// The agent is stopping (its last event, sent on SIGTERM or SIGINT
    /// where it can be): a collector shows the host as stopped rather than
    /// merely silent.
    Stopping {
        /// Why (`SIGTERM`).
        reason: String,
    },
}

impl Report {
    /// Parses and checks a report body: the version must be known and the
    /// batch must not be empty of meaning (ids present).
    pub fn from_json(body: &[u8]) -> Result<Report, String> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
        match v.get("version").and_then(|x| x.as_u64()) {
            Some(n) if n == REPORT_VERSION as u64 => {}
            Some(n) => {
                return Err(format!(
                    "unknown report version {n} (this collector reads version {REPORT_VERSION})"
                ))
            }
            None => return Err("missing report version".into()),
        }
        let r: Report = serde_json::from_value(v).map_err(|e| format!("invalid report: {e}"))?;
        if r.agent.host.is_empty() || r.agent.agent_id.is_empty() {
            return Err("agent.host and agent.agent_id must not be empty".into());
        }
        if r.events.iter().any(|e| e.event_id.is_empty()) {
            return Err("every event needs an event_id".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            version: REPORT_VERSION,
            batch_id: "a1:7".into(),
            agent: AgentInfo {
                agent_id: "a1".into(),
                host: "node1".into(),
                version: "0.1.0".into(),
                signatures_version: "abc".into(),
                sensors: vec![SensorStatus {
                    name: "capture".into(),
                    up: false,
                    message: Some("no CAP_NET_RAW".into()),
                }],
                config: None,
            },
            sent_at: 10,
            events: vec![
                Event {
                    event_id: "a1:7".into(),
                    at: 9,
                    kind: EventKind::Heartbeat {},
                },
                Event {
                    event_id: "a1:8".into(),
                    at: 9,
                    kind: EventKind::FindingResolved {
                        finding_id: "f".into(),
                        reason: "process exited".into(),
                    },
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let r = sample();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["events"][0]["type"], "heartbeat");
        assert_eq!(j["events"][1]["type"], "finding_resolved");
        assert_eq!(j["events"][1]["finding_id"], "f");
        assert_eq!(Report::from_json(j.to_string().as_bytes()).unwrap(), r);
    }

    #[test]
    fn bad_reports_say_why() {
        assert!(Report::from_json(b"{not json").unwrap_err().contains("malformed JSON"));
        assert!(Report::from_json(br#"{"version": 99}"#)
            .unwrap_err()
            .contains("unknown report version 99"));
        assert!(Report::from_json(br#"{"events": []}"#)
            .unwrap_err()
            .contains("missing report version"));
        let mut j = serde_json::to_value(sample()).unwrap();
        j["surprise"] = serde_json::json!(1);
        assert!(Report::from_json(j.to_string().as_bytes()).unwrap_err().contains("invalid report"));
    }

    #[test]
    fn config_state_travels_and_is_bounded() {
        let mut r = sample();
        let j = serde_json::to_value(&r).unwrap();
        assert!(j["agent"].get("config").is_none(), "absent when unknown: older collectors read it");
        r.agent.config = Some(ConfigState {
            digest: "d".repeat(10_000),
            sensors_off: (0..200).map(|i| format!("s{i:03}")).rev().collect(),
            signatures: SignatureSetState {
                local: (0..100)
                    .map(|i| LocalFile {
                        name: format!("/etc/rigwatch/signatures.d/{i:03}.toml"),
                        sha256: "ab".into(),
                    })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        });
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(Report::from_json(j.as_bytes()).unwrap(), r);
        let b = r.agent.config.unwrap().bounded();
        assert!(b.digest.len() <= MAX_CONFIG_STRING && b.digest.ends_with('…'));
        assert_eq!(b.sensors_off.len(), MAX_CONFIG_LIST);
        assert_eq!(b.sensors_off[0], "s000", "sorted");
        assert_eq!(b.signatures.local.len(), MAX_CONFIG_LIST);
        assert_eq!(b.signatures.local_more, 36);
        assert_eq!(b.bounded(), b, "bounding is idempotent");
        assert_eq!(cap_string("ééé", 4), "…");
    }
}
