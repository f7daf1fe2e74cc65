//! Settings: embedded defaults, overridden by a TOML file (`--config`),
//! overridden by command-line flags.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the collector listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9860";
/// Where the SQLite database lives unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./rigwatch-data";

/// The `--config` file. Every field is optional; flags win over the file.
///
/// ```toml
/// listen = "0.0.0.0:9860"
/// data_dir = "/var/lib/rigwatch-collector"
/// database = "postgres://rigwatch@db/rigwatch?sslmode=verify-full"   # default: SQLite in data_dir
/// database_ca_file = "/etc/rigwatch/postgres-ca.pem"  # CA of PostgreSQL's certificate (when the URL names no sslrootcert)
/// alertmanager = "http://127.0.0.1:9093"
/// webhook = "http://127.0.0.1:8080/hooks/rigwatch"
/// siem_webhook = "https://siem.example.com/ingest/rigwatch"  # one POST per finding transition
/// siem_format = "ocsf"           # or "ecs"
/// tls_cert = "/etc/rigwatch/collector.pem"
/// tls_key = "/etc/rigwatch/collector.key"
/// silent_after_seconds = 90      # 3 × the agents' 30 s heartbeat
/// alert_resend_seconds = 60
/// max_body_bytes = 4194304
/// external_url = "https://rigwatch.example.com"
/// event_retention_days = 30      # de-duplication window for event ids
/// clock_allowance_seconds = 300  # how far ahead of the collector an event may be dated
/// max_findings_per_host = 10000  # unresolved findings one host may have
/// reports_per_second = 5         # per agent token (429 + Retry-After beyond)
/// report_burst = 60
/// header_timeout_seconds = 10    # to send a request's headers
/// request_timeout_seconds = 30   # to send its body and be answered
/// max_connections = 1024
/// max_requests_in_flight = 256
/// max_hosts_per_enrolment_token = 10000  # valid host tokens one enrolment token may make
/// fleet_indicator_ttl_days = 30  # a fleet indicator not seen again for this long expires
/// fleet_new_indicators_per_host_per_hour = 20  # more are refused (and counted)
///
/// [policy]
/// local_allowlist = "forbid"     # agents ignore (and report) allow rules from their local signature dirs
/// local_overrides = "forbid"     # a host with local signature files drifts from the policy (alert)
/// required_sensors = ["capture", "exec_events", "gpu"]   # a host that switches one off drifts; ["*"]: all
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Listen address.
    pub listen: Option<String>,
    /// Data directory (SQLite database file).
    pub data_dir: Option<PathBuf>,
    /// A `postgres://` URL, or a SQLite file path.
    pub database: Option<String>,
    /// PEM CA that signs PostgreSQL's certificate (the URL's `sslrootcert` wins).
    pub database_ca_file: Option<PathBuf>,
    /// Alertmanager base URL.
    pub alertmanager: Option<String>,
    /// Generic JSON webhook URL (Slack-compatible `text`).
    pub webhook: Option<String>,
    /// SIEM webhook URL (`http://` or `https://`). Every finding transition
    /// this replica stores (opened — or reopened after it resolved —,
    /// updated when its severity or evidence changed, resolved) is POSTed
    /// to it as one event per request: the body is the event itself, one
    /// JSON object (`Content-Type: application/json`) in `siem_format`, the
    /// same mapping the agent's own SIEM output uses. Sent from a queue
    /// beside ingest, never in its way: 2048 events at most wait; when the
    /// queue is full an event is dropped and counted
    /// (`rigwatch_collector_alert_deliveries_total{receiver="siem",result="dropped"}`).
    /// Each POST has 10 s, follows no redirect, and is tried 3 times
    /// (1 s, then 2 s apart) on a connection error, a timeout, 408, 429 or
    /// 5xx; then counted as `result="error"` and dropped. For delivery that
    /// survives outages and restarts, pull `GET /api/v1/export` instead.
    pub siem_webhook: Option<String>,
    /// The SIEM webhook's event format: `ocsf` (OCSF 1.5.0 Detection
    /// Finding, class 2004; the default) or `ecs` (Elastic Common Schema 8.11).
    pub siem_format: Option<rigwatch_signatures::siem::Format>,
    /// PEM certificate chain for HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// Seconds without a report after which a host is "agent silent".
    pub silent_after_seconds: Option<u64>,
    /// How often active alerts are re-sent.
    pub alert_resend_seconds: Option<u64>,
    /// Largest accepted report body.
    pub max_body_bytes: Option<usize>,
    /// The URL analysts reach the collector at (links in alerts).
    pub external_url: Option<String>,
    /// Days an event id is remembered for de-duplication (default 30).
    pub event_retention_days: Option<u64>,
    /// Seconds an event may be dated ahead of the collector's clock.
    pub clock_allowance_seconds: Option<u64>,
    /// Unresolved findings one host may have.
    pub max_findings_per_host: Option<u64>,
    /// Reports per second one agent token may send (sustained).
    pub reports_per_second: Option<f64>,
    /// Reports one agent token may send at once.
    pub report_burst: Option<u64>,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_seconds: Option<u64>,
    /// Seconds a client has to send a request's body and be answered.
    pub request_timeout_seconds: Option<u64>,
    /// Open connections at most.
    pub max_connections: Option<usize>,
    /// Requests handled at once at most.
    pub max_requests_in_flight: Option<usize>,
    /// Valid agent tokens one enrolment token may have made (hosts enrolled).
    pub max_hosts_per_enrolment_token: Option<u64>,
    /// Days a fleet indicator lives without being seen again in a confirmed finding.
    pub fleet_indicator_ttl_days: Option<u64>,
    /// New fleet indicators one host may teach per hour.
    pub fleet_new_indicators_per_host_per_hour: Option<u64>,
    /// The fleet policy, published to agents inside the signed fleet set.
    pub policy: Option<PolicyConfig>,
}

/// `[policy]`: what every agent must hold to, whatever its local root
/// configures. Published inside the signed fleet set (agents with
/// `collector.fleet` on take it at their next fetch).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `"forbid"`: agents drop the allow rules of their local signature
    /// directories (only bundled and fleet allow rules count) and report
    /// the ones they dropped. `"allow"` (the default): local allow rules count.
    pub local_allowlist: Option<String>,
    /// `"forbid"`: a host whose agent loads local signature files (rules,
    /// lists or YARA of its local signature directories) drifts from the
    /// policy: `RigwatchAgentPolicyDrift` fires while it does. The agent
    /// still loads them. `"allow"` (the default): they are history only.
    pub local_overrides: Option<String>,
    /// Sensors every agent must keep on (names as `[sensors]` spells them,
    /// or `"*"` for all): a host whose configuration switches one off
    /// drifts from the policy while it does.
    pub required_sensors: Option<Vec<String>>,
}

impl FileConfig {
    /// Reads and parses a config file; errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Resolved settings the server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Listen address.
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL or SQLite path.
    pub database: String,
    /// PEM CA for PostgreSQL's certificate.
    pub database_ca_file: Option<PathBuf>,
    /// Alertmanager base URL.
    pub alertmanager: Option<String>,
    /// Webhook URL.
    pub webhook: Option<String>,
    /// SIEM webhook URL ([`FileConfig::siem_webhook`]).
    pub siem_webhook: Option<String>,
    /// The SIEM webhook's event format.
    pub siem_format: rigwatch_signatures::siem::Format,
    /// HTTPS certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Silence threshold, seconds.
    pub silent_after: u64,
    /// Alert re-send interval, seconds.
    pub alert_resend: u64,
    /// Largest report body, bytes.
    pub max_body_bytes: usize,
    /// Base URL for links.
    pub external_url: String,
    /// Days event ids are kept for de-duplication.
    pub event_retention_days: u64,
    /// What one report may do (clock allowance, findings per host).
    pub ingest: crate::store::IngestLimits,
    /// Sustained reports per second per agent token.
    pub reports_per_second: f64,
    /// Burst of reports per agent token.
    pub report_burst: u64,
    /// Time to send the headers.
    pub header_timeout: std::time::Duration,
    /// Time to send the body and be answered.
    pub request_timeout: std::time::Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Requests handled at once at most.
    pub max_requests_in_flight: usize,
    /// Failed logins one client address may make per minute.
    pub login_failures_per_minute: u64,
    /// Valid agent tokens one enrolment token may have made.
    pub max_hosts_per_enrolment_token: u64,
    /// `[policy]`: what every agent's configuration is held to.
    pub policy: crate::hostconfig::Policy,
}

impl Settings {
    /// Settings for a data directory, everything else at its default.
    pub fn with_data_dir(data_dir: &Path) -> Settings {
        Settings {
            listen: DEFAULT_LISTEN.into(),
            data_dir: data_dir.to_path_buf(),
            database: data_dir.join("collector.sqlite3").display().to_string(),
            database_ca_file: None,
            alertmanager: None,
            webhook: None,
            siem_webhook: None,
            siem_format: rigwatch_signatures::siem::Format::Ocsf,
            tls: None,
            silent_after: 90,
            alert_resend: 60,
            max_body_bytes: 4 << 20,
            external_url: format!("http://{DEFAULT_LISTEN}"),
            event_retention_days: 30,
            ingest: crate::store::IngestLimits::default(),
            reports_per_second: 5.0,
            report_burst: 60,
            header_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(30),
            max_connections: 1024,
            max_requests_in_flight: 256,
            login_failures_per_minute: 10,
            max_hosts_per_enrolment_token: 10_000,
            policy: crate::hostconfig::Policy::default(),
        }
    }

    /// Merges a file config (may be default) under explicit overrides.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> anyhow::Result<Settings> {
        let pick = |a: Option<String>, b: Option<String>| a.or(b);
        let data_dir = flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut s = Settings::with_data_dir(&data_dir);
        s.listen = pick(flags.listen, file.listen).unwrap_or(s.listen);
        if let Some(db) = pick(flags.database, file.database) {
            s.database = db;
        }
        s.database_ca_file = flags.database_ca_file.or(file.database_ca_file);
        s.alertmanager = pick(flags.alertmanager, file.alertmanager);
        s.webhook = pick(flags.webhook, file.webhook);
        s.siem_webhook = pick(flags.siem_webhook, file.siem_webhook);
        if let Some(u) = &s.siem_webhook {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                anyhow::bail!("siem_webhook must be an http:// or https:// URL, not {u:?}");
            }
        }
        s.siem_format = flags.siem_format.or(file.siem_format).unwrap_or(s.siem_format);
        let cert = flags.tls_cert.or(file.tls_cert);
        let key = flags.tls_key.or(file.tls_key);
        s.tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("HTTPS needs both --tls-cert and --tls-key"),
        };
        s.silent_after = flags
            .silent_after_seconds
            .or(file.silent_after_seconds)
            .unwrap_or(s.silent_after)
            .max(1);
        s.alert_resend = flags
            .alert_resend_seconds
            .or(file.alert_resend_seconds)
            .unwrap_or(s.alert_resend)
            .max(1);
        s.event_retention_days = flags
            .event_retention_days
            .or(file.event_retention_days)
            .unwrap_or(s.event_retention_days)
            .max(1);
        s.max_body_bytes = flags.max_body_bytes.or(file.max_body_bytes).unwrap_or(s.max_body_bytes);
        if let Some(v) = flags.clock_allowance_seconds.or(file.clock_allowance_seconds) {
            s.ingest.clock_allowance = v.min(86400);
        }
        if let Some(v) = flags.max_findings_per_host.or(file.max_findings_per_host) {
            s.ingest.max_findings_per_host = v.max(1);
        }
        if let Some(v) = flags.reports_per_second.or(file.reports_per_second) {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("reports_per_second must be above 0");
            }
            s.reports_per_second = v;
        }
        if let Some(p) = flags.policy.or(file.policy) {
            s.policy = crate::hostconfig::Policy::from_config(&p)?;
        }
        s.report_burst = flags.report_burst.or(file.report_burst).unwrap_or(s.report_burst).max(1);
        let secs =
            |a: Option<u64>, b: Option<u64>, d: std::time::Duration| a.or(b).map(|v| std::time::Duration::from_secs(v.max(1))).unwrap_or(d);
        s.header_timeout = secs(flags.header_timeout_seconds, file.header_timeout_seconds, s.header_timeout);
        s.request_timeout = secs(flags.request_timeout_seconds, file.request_timeout_seconds, s.request_timeout);
        s.max_connections = flags.max_connections.or(file.max_connections).unwrap_or(s.max_connections).max(1);
        s.max_requests_in_flight = flags
            .max_requests_in_flight
            .or(file.max_requests_in_flight)
            .unwrap_or(s.max_requests_in_flight)
            .max(1);
        s.max_hosts_per_enrolment_token = flags
            .max_hosts_per_enrolment_token
            .or(file.max_hosts_per_enrolment_token)
            .unwrap_or(s.max_hosts_per_enrolment_token)
            .max(1);
        if let Some(v) = flags.fleet_indicator_ttl_days.or(file.fleet_indicator_ttl_days) {
            s.ingest.fleet.ttl_days = v.clamp(1, 3650);
        }
        if let Some(v) = flags
            .fleet_new_indicators_per_host_per_hour
            .or(file.fleet_new_indicators_per_host_per_hour)
        {
            s.ingest.fleet.per_host_per_hour = v;
        }
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        s.external_url = pick(flags.external_url, file.external_url)
            .unwrap_or_else(|| format!("{scheme}://{}", s.listen))
            .trim_end_matches('/')
            .to_string();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::siem::Format;

    #[test]
    fn policy_forbids_local_allowlists_or_says_what_is_wrong() {
        let file: FileConfig = toml::from_str("[policy]\nlocal_allowlist = \"forbid\"\n").unwrap();
        assert!(
            Settings::resolve(file, FileConfig::default())
                .unwrap()
                .policy
                .forbid_local_allowlist
        );
        let file: FileConfig = toml::from_str("[policy]\nlocal_allowlist = \"allow\"\n").unwrap();
        assert!(
            !Settings::resolve(file, FileConfig::default())
                .unwrap()
                .policy
                .forbid_local_allowlist
        );
        assert!(
            !Settings::resolve(FileConfig::default(), FileConfig::default())
                .unwrap()
                .policy
                .forbid_local_allowlist
        );
        let file: FileConfig = toml::from_str("[policy]\nlocal_allowlist = \"maybe\"\n").unwrap();
        let e = Settings::resolve(file, FileConfig::default()).unwrap_err().to_string();
        assert!(e.contains("\"allow\" or \"forbid\""), "{e}");
        assert!(toml::from_str::<FileConfig>("[policy]\nsurprise = 1\n").is_err());
    }

    #[test]
    fn policy_requires_sensors_by_name_and_forbids_overrides() {
        let file: FileConfig =
            toml::from_str("[policy]\nlocal_overrides = \"forbid\"\nrequired_sensors = [\"capture\", \"gpu\"]\n").unwrap();
        let p = Settings::resolve(file, FileConfig::default()).unwrap().policy;
        assert!(p.forbid_local_overrides && !p.forbid_local_allowlist);
        assert_eq!(p.required_sensors, ["capture", "gpu"]);
        let file: FileConfig = toml::from_str("[policy]\nrequired_sensors = [\"*\"]\n").unwrap();
        assert_eq!(
            Settings::resolve(file, FileConfig::default()).unwrap().policy.required_sensors,
            ["*"]
        );
        // a typo is an error naming the sensors there are, not a policy that never matches
        let file: FileConfig = toml::from_str("[policy]\nrequired_sensors = [\"captur\"]\n").unwrap();
        let e = Settings::resolve(file, FileConfig::default()).unwrap_err().to_string();
        assert!(e.contains("\"captur\"") && e.contains("exec_events"), "{e}");
        let file: FileConfig = toml::from_str("[policy]\nlocal_overrides = \"no\"\n").unwrap();
        let e = Settings::resolve(file, FileConfig::default()).unwrap_err().to_string();
        assert!(e.contains("local_overrides"), "{e}");
    }

    #[test]
    fn siem_keys_from_the_file_and_flags() {
        let file: FileConfig = toml::from_str("siem_webhook = \"https://siem.example.com/in\"\nsiem_format = \"ecs\"\n").unwrap();
        let s = Settings::resolve(file.clone(), FileConfig::default()).unwrap();
        assert_eq!(s.siem_webhook.as_deref(), Some("https://siem.example.com/in"));
        assert_eq!(s.siem_format, Format::Ecs);
        let flags = FileConfig {
            siem_format: Some(Format::Ocsf),
            ..Default::default()
        };
        assert_eq!(Settings::resolve(file, flags).unwrap().siem_format, Format::Ocsf, "flags win");
        assert_eq!(
            Settings::resolve(FileConfig::default(), FileConfig::default()).unwrap().siem_format,
            Format::Ocsf
        );
        assert!(toml::from_str::<FileConfig>("siem_format = \"cef\"").is_err());
        let bad: FileConfig = toml::from_str("siem_webhook = \"ftp://x\"").unwrap();
        assert!(Settings::resolve(bad, FileConfig::default()).is_err());
    }
}
