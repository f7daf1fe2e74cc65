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
/// database = "postgres://rigwatch@db/rigwatch"   # default: SQLite in data_dir
/// alertmanager = "http://127.0.0.1:9093"
/// webhook = "http://127.0.0.1:8080/hooks/rigwatch"
/// tls_cert = "/etc/rigwatch/collector.pem"
/// tls_key = "/etc/rigwatch/collector.key"
/// silent_after_seconds = 90      # 3 × the agents' 30 s heartbeat
/// alert_resend_seconds = 60
/// max_body_bytes = 4194304
/// external_url = "https://rigwatch.example.com"
/// event_retention_days = 30      # de-duplication window for event ids
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
    /// Alertmanager base URL.
    pub alertmanager: Option<String>,
    /// Generic JSON webhook URL (Slack-compatible `text`).
    pub webhook: Option<String>,
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
    /// Alertmanager base URL.
    pub alertmanager: Option<String>,
    /// Webhook URL.
    pub webhook: Option<String>,
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
}

impl Settings {
    /// Settings for a data directory, everything else at its default.
    pub fn with_data_dir(data_dir: &Path) -> Settings {
        Settings {
            listen: DEFAULT_LISTEN.into(),
            data_dir: data_dir.to_path_buf(),
            database: data_dir.join("collector.sqlite3").display().to_string(),
            alertmanager: None,
            webhook: None,
            tls: None,
            silent_after: 90,
            alert_resend: 60,
            max_body_bytes: 4 << 20,
            external_url: format!("http://{DEFAULT_LISTEN}"),
            event_retention_days: 30,
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
        s.alertmanager = pick(flags.alertmanager, file.alertmanager);
        s.webhook = pick(flags.webhook, file.webhook);
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
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        s.external_url = pick(flags.external_url, file.external_url)
            .unwrap_or_else(|| format!("{scheme}://{}", s.listen))
            .trim_end_matches('/')
            .to_string();
        Ok(s)
    }
}
