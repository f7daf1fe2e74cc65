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
}
