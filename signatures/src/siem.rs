//! Findings in the formats SIEMs map without custom parsing: OCSF Detection
//! Finding (class 2004, schema 1.5.0, `host` profile) and ECS (Elastic
//! Common Schema 8.x) documents. The agent writes them to a file or syslog,
//! the collector sends them to webhooks and serves them on its export
//! endpoint; both build them here, so the two cannot drift apart.
//!
//! The mapping (README.md has the table): the finding's id is
//! `finding_info.uid` / `event.id`; its severity maps to OCSF `severity_id`
//! (suspicious 3 Medium, likely 4 High, confirmed 5 Critical) and ECS
//! `event.severity` and `event.risk_score` (47, 73, 99: Elastic's medium,
//! high and critical bands); the process (pid, name, command line, executable and
//! its SHA-256, user, working directory, container) is one OCSF evidence
//! artifact and ECS `process.*`/`user.*`/`container.*`; each piece of
//! rigwatch evidence is one more OCSF evidence artifact (`name` = its kind,
//! `data` = its fields, a remote endpoint also as `dst_endpoint`) and ECS
//! `rigwatch.evidence`; the whole finding rides along as OCSF `raw_data`.

use crate::model::{Evidence, Finding, Severity};
use serde_json::{json, Map, Value};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.5.0";
/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// What happened to the finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// It was opened (OCSF activity 1, Create).
    Opened,
    /// Its severity or evidence changed (2, Update).
    Updated,
    /// It ended (3, Close).
    Resolved,
}

impl Activity {
    fn ocsf(self) -> (u64, &'static str) {
        match self {
            Activity::Opened => (1, "Create"),
            Activity::Updated => (2, "Update"),
            Activity::Resolved => (3, "Close"),
        }
    }

    /// `finding_opened`, `finding_updated`, `finding_resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Opened => "finding_opened",
            Activity::Updated => "finding_updated",
            Activity::Resolved => "finding_resolved",
        }
    }
}

/// An event format a SIEM reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCSF Detection Finding (2004).
    Ocsf,
    /// Elastic Common Schema.
    Ecs,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ocsf" => Ok(Format::Ocsf),
            "ecs" => Ok(Format::Ecs),
            other => Err(format!("unknown event format {other:?} (ocsf or ecs)")),
        }
    }
}

/// The finding as one event of `format`.
pub fn event(format: Format, f: &Finding, activity: Activity, time_ms: u64, version: &str) -> Value {
    match format {
        Format::Ocsf => detection_finding(f, activity, time_ms, version),
        Format::Ecs => ecs(f, activity, time_ms, version),
    }
}

fn ocsf_severity(s: Severity) -> (u64, &'static str) {
    match s {
        Severity::Suspicious => (3, "Medium"),
        Severity::Likely => (4, "High"),
        Severity::Confirmed => (5, "Critical"),
    }
}

/// RFC 3339 UTC for unix seconds (Howard Hinnant's civil_from_days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// What the finding is about, in a few words.
pub fn title(f: &Finding) -> String {
    let what = if let Some(s) = &f.subject {
        s.to_string()
    } else if let Some(flow) = &f.flow {
        format!("{} flow {} -> {}", flow.transport, flow.client, flow.server)
    } else {
        format!("{} (pid {})", f.process.comm, f.pid.unwrap_or(f.process.pid))
    };
    format!("{} crypto-mining: {what} on {}", f.severity.as_str(), f.host)
}

/// The remote endpoint an evidence item names (a pool), as (ip, port).
fn remote_of(e: &Evidence) -> Option<(String, u16)> {
    let v = serde_json::to_value(&e.detail).ok()?;
    let r: std::net::SocketAddr = v.get("remote")?.as_str()?.parse().ok()?;
    Some((r.ip().to_string(), r.port()))
}

fn ms(secs: u64) -> u64 {
    secs.saturating_mul(1000)
}

/// Drops the keys whose value is null or an empty string (OCSF forbids
/// nothing of the kind, but a SIEM's field map is cleaner without them).
fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
                .map(|(k, v)| (k, prune(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        other => other,
    }
}

/// The finding as an OCSF Detection Finding.
pub fn detection_finding(f: &Finding, activity: Activity, time_ms: u64, version: &str) -> Value {
    let (activity_id, activity_name) = activity.ocsf();
    let (severity_id, severity) = ocsf_severity(f.severity);
    let rule = f.evidence.iter().find_map(|e| e.rule.clone());
    let mut evidences = Vec::new();
    if f.pid.is_some() || f.process.pid != 0 {
        let p = &f.process;
        let file = (!p.exe.is_empty()).then(|| {
            json!({
                "name": p.exe.rsplit('/').next().unwrap_or(&p.exe),
                "path": p.exe,
                "type_id": 1,
                "hashes": p.sha256.as_ref().map(|h| vec![json!({"algorithm_id": 3, "algorithm": "SHA-256", "value": h})]),
            })
        });
        let mut artifact = json!({
            "name": "process",
            "process": {
                "pid": f.pid.unwrap_or(p.pid),
                "name": p.comm,
                "cmd_line": p.cmdline,
                "file": file,
                "working_directory": p.cwd,
                "created_time": null,
                "user": {"name": p.user, "uid": p.uid.to_string()},
            },
        });
        if let Some(c) = &p.container_id {
            artifact["container"] = json!({"uid": c, "name": p.pod.clone().unwrap_or_else(|| c.clone())});
        }
        evidences.push(artifact);
    }
    if let Some(flow) = &f.flow {
        let ep = |s: &str| {
            s.parse::<std::net::SocketAddr>()
                .map(|a| json!({"ip": a.ip().to_string(), "port": a.port()}))
                .unwrap_or_else(|_| json!({"name": s}))
        };
        evidences.push(json!({"name": "flow", "src_endpoint": ep(&flow.client), "dst_endpoint": ep(&flow.server)}));
    }
    for e in &f.evidence {
        let mut data = serde_json::to_value(e).unwrap_or(Value::Null);
        if let Some(m) = data.as_object_mut() {
            m.insert("summary".into(), e.summary().into());
        }
        let mut artifact = json!({"name": e.kind(), "data": data});
        if let Some((ip, port)) = remote_of(e) {
            artifact["dst_endpoint"] = json!({"ip": ip, "port": port});
        }
        evidences.push(artifact);
    }
    prune(json!({
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 2004 * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity_name}"),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": if activity == Activity::Resolved { 4 } else { 1 },
        "status": if activity == Activity::Resolved { "Resolved" } else { "New" },
        "time": time_ms,
        "message": title(f),
        "metadata": {
            "version": OCSF_VERSION,
            "profiles": ["host"],
            "uid": format!("{}:{}:{}", f.host, f.id, time_ms),
            "log_name": "findings",
            "product": {"name": "rigwatch", "vendor_name": "rigwatch", "version": version},
        },
        "finding_info": {
            "uid": f.id,
            "title": title(f),
            "desc": f.evidence.iter().map(|e| e.summary()).collect::<Vec<_>>().join("; "),
            "first_seen_time": ms(f.first_seen),
            "last_seen_time": ms(f.last_seen),
            "types": ["Cryptomining"],
            "analytic": rule.as_ref().map(|r| json!({"uid": r, "name": r, "type_id": 1, "type": "Rule"}))
                .unwrap_or_else(|| json!({"name": "rigwatch evidence score", "type_id": 99, "type": "Other"})),
        },
        "device": {"hostname": f.host, "name": f.host, "type_id": 1, "type": "Server"},
        "evidences": evidences,
        "raw_data": serde_json::to_string(f).unwrap_or_default(),
    }))
}

/// The finding as an ECS document.
pub fn ecs(f: &Finding, activity: Activity, time_ms: u64, version: &str) -> Value {
    let p = &f.process;
    let severity = match f.severity {
        Severity::Suspicious => 47,
        Severity::Likely => 73,
        Severity::Confirmed => 99,
    };
    let remote = f.evidence.iter().find_map(remote_of).or_else(|| {
        f.flow
            .as_ref()
            .and_then(|fl| fl.server.parse::<std::net::SocketAddr>().ok())
            .map(|a| (a.ip().to_string(), a.port()))
    });
    let rule = f.evidence.iter().find_map(|e| e.rule.clone());
    let secs = time_ms / 1000;
    let ts = format!("{}.{:03}Z", rfc3339(secs).trim_end_matches('Z'), time_ms % 1000);
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), ts.into());
    doc.insert("ecs".into(), json!({"version": ECS_VERSION}));
    doc.insert("message".into(), title(f).into());
    doc.insert(
        "event".into(),
        json!({
            "kind": "alert",
            "category": if f.subject.is_some() { vec!["host", "intrusion_detection"] } else { vec!["process", "intrusion_detection"] },
            "type": match activity { Activity::Opened => vec!["info", "start"], Activity::Updated => vec!["info", "change"], Activity::Resolved => vec!["info", "end"] },
            "action": activity.as_str(),
            "id": f.id,
            "severity": severity,
            "risk_score": severity,
            "module": "rigwatch",
            "dataset": "rigwatch.finding",
            "start": rfc3339(f.first_seen),
        }),
    );
    doc.insert(
        "observer".into(),
        json!({"vendor": "rigwatch", "product": "rigwatch", "type": "agent", "version": version}),
    );
    doc.insert("host".into(), json!({"name": f.host, "hostname": f.host}));
    if f.pid.is_some() || p.pid != 0 {
        doc.insert(
            "process".into(),
            json!({
                "pid": f.pid.unwrap_or(p.pid),
                "parent": {"pid": p.ppid},
                "name": p.comm,
                "command_line": p.cmdline,
                "executable": p.exe,
                "working_directory": p.cwd,
                "hash": p.sha256.as_ref().map(|h| json!({"sha256": h})),
            }),
        );
        doc.insert("user".into(), json!({"name": p.user, "id": p.uid.to_string()}));
        if let Some(c) = &p.container_id {
            doc.insert("container".into(), json!({"id": c}));
        }
        if p.namespace.is_some() || p.pod.is_some() {
            doc.insert(
                "orchestrator".into(),
                json!({"type": "kubernetes", "namespace": p.namespace, "resource": {"type": "pod", "name": p.pod}}),
            );
        }
    }
    if let Some((ip, port)) = remote {
        doc.insert("destination".into(), json!({"ip": ip, "port": port}));
    }
    if let Some(r) = rule {
        doc.insert("rule".into(), json!({"id": r, "name": r}));
    }
    doc.insert(
        "rigwatch".into(),
        json!({
            "severity": f.severity.as_str(),
            "subject": f.subject,
            "flow": f.flow,
            "cpu_cores": f.cpu_cores,
            "evidence": f.evidence,
            "first_seen": f.first_seen,
            "last_seen": f.last_seen,
        }),
    );
    prune(Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EvidenceKind, ProcessInfo, Weight};

    fn finding() -> Finding {
        Finding {
            id: "33b6b6bfe3b640d5".into(),
            severity: Severity::Confirmed,
            host: "node-a".into(),
            pid: Some(4242),
            process: ProcessInfo {
                pid: 4242,
                comm: "xmrig".into(),
                exe: "/tmp/.x/xmrig".into(),
                cmdline: "xmrig -o stratum+tcp://pool.example:3333".into(),
                user: "nobody".into(),
                uid: 65534,
                sha256: Some("ab".repeat(32)),
                ..Default::default()
            },
            evidence: vec![Evidence::from_rule(
                EvidenceKind::PoolConnection {
                    remote: "192.0.2.7:3333".into(),
                    reason: "pool port 3333".into(),
                    domain: None,
                },
                "pool.ports",
                Weight::Likely,
            )],
            flow: None,
            subject: None,
            cpu_cores: Some(1.0),
            gpu: None,
            first_seen: 1_796_000_000,
            last_seen: 1_796_000_010,
        }
    }

    #[test]
    fn the_ocsf_event_carries_the_finding_process_and_evidence() {
        let v = detection_finding(&finding(), Activity::Opened, 1_796_000_010_123, "0.1.0");
        assert_eq!((v["class_uid"].as_u64(), v["type_uid"].as_u64()), (Some(2004), Some(200401)));
        assert_eq!((v["severity_id"].as_u64(), v["status_id"].as_u64()), (Some(5), Some(1)));
        assert_eq!(v["finding_info"]["uid"], "33b6b6bfe3b640d5");
        assert_eq!(v["finding_info"]["first_seen_time"], 1_796_000_000_000u64);
        let p = &v["evidences"][0]["process"];
        assert_eq!(
            (p["pid"].as_u64(), p["file"]["hashes"][0]["value"].as_str()),
            (Some(4242), Some("ab".repeat(32).as_str()))
        );
        assert_eq!(v["evidences"][1]["dst_endpoint"], json!({"ip": "192.0.2.7", "port": 3333}));
        assert_eq!(v["evidences"][1]["data"]["rule"], "pool.ports");
        let r = detection_finding(&finding(), Activity::Resolved, 1, "0.1.0");
        assert_eq!((r["type_uid"].as_u64(), r["status"].as_str()), (Some(200403), Some("Resolved")));
        // nothing null or empty is sent
        assert!(!v.to_string().contains("null") && !v.to_string().contains("\"\""), "{v}");
    }

    #[test]
    fn the_ecs_document_maps_the_same_finding() {
        let v = ecs(&finding(), Activity::Updated, 1_796_000_010_123, "0.1.0");
        assert_eq!(v["@timestamp"], "2026-11-30T00:53:30.123Z");
        assert_eq!(
            (v["event"]["kind"].as_str(), v["event"]["severity"].as_u64()),
            (Some("alert"), Some(99))
        );
        assert_eq!(v["event"]["action"], "finding_updated");
        assert_eq!(v["process"]["hash"]["sha256"], "ab".repeat(32));
        assert_eq!(
            (v["destination"]["ip"].as_str(), v["destination"]["port"].as_u64()),
            (Some("192.0.2.7"), Some(3333))
        );
        assert_eq!(v["user"]["id"], "65534");
        assert_eq!(v["rule"]["id"], "pool.ports");
    }
}
