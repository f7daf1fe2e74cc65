//! `rigwatch-collector`: serve, and manage tokens.

use clap::{Parser, Subcommand};
use rigwatch_collector::config::{FileConfig, Settings, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use rigwatch_collector::store::Role;
use rigwatch_collector::{db, App, Store};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rigwatch-collector",
    version,
    about = "The rigwatch collector: fleet ingest, alerting, campaigns, web page."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Default)]
struct Common {
    /// Data directory (the SQLite database lives here).
    #[arg(long, global = true, help = format!("Data directory (SQLite database inside) [default: {DEFAULT_DATA_DIR}]"))]
    data_dir: Option<PathBuf>,
    /// Database: a postgres://user@host:port/db URL, or a SQLite file path
    /// [default: DATA_DIR/collector.sqlite3].
    #[arg(long, global = true)]
    database: Option<String>,
    /// PEM CA that signs PostgreSQL's certificate, for sslmode=verify-full
    /// (or verify-ca) when the URL names no sslrootcert. Naming a CA
    /// without an sslmode means verify-full.
    #[arg(long, global = true)]
    database_ca_file: Option<PathBuf>,
    /// TOML config file; flags override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the report API, query API, /metrics and the web page.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, help = format!("Address to listen on [default: {DEFAULT_LISTEN}]"))]
        listen: Option<String>,
        /// Alertmanager base URL (alerts go to URL/api/v2/alerts).
        #[arg(long)]
        alertmanager: Option<String>,
        /// Generic JSON webhook URL (Slack-compatible `text`).
        #[arg(long)]
        webhook: Option<String>,
        /// SIEM webhook URL: each finding transition is POSTed to it as one
        /// event (JSON body) in --siem-format.
        #[arg(long)]
        siem_webhook: Option<String>,
        /// The SIEM webhook's format: ocsf (OCSF 1.5.0 Detection Finding) or
        /// ecs (Elastic Common Schema) [default: ocsf].
        #[arg(long)]
        siem_format: Option<rigwatch_signatures::siem::Format>,
        /// PEM certificate chain: serve HTTPS (with --tls-key).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// Seconds without a report before a host is "agent silent" [default: 90].
        #[arg(long)]
        silent_after: Option<u64>,
        /// Seconds between re-sends of active alerts [default: 60].
        #[arg(long)]
        alert_resend: Option<u64>,
        /// URL analysts reach this collector at (links in alerts).
        #[arg(long)]
        external_url: Option<String>,
    },
    /// Manage agent and analyst tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The fleet signature set's signing key.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Publish rule files to every agent with the fleet signature set.
    Signatures {
        #[command(subcommand)]
        cmd: SignaturesCmd,
    },
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Print the base64 ed25519 public key agents verify the fleet set
    /// with (their `fleet_public_key`); the key is made on first use.
    Key {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum SignaturesCmd {
    /// Validate DIR's *.toml rule files (and the lists they name) and make
    /// them the published set, replacing the previous one. Any bad file:
    /// FILE:LINE errors, nothing published, exit 2.
    Publish {
        /// The directory of rule files.
        #[arg(required_unless_present = "clear")]
        dir: Option<PathBuf>,
        /// Remove the published files instead.
        #[arg(long, conflicts_with = "dir")]
        clear: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; the secret is printed once, as the last line.
    Create {
        /// A name for the agent (or analyst) that will use it.
        name: String,
        /// An analyst token (web page and query API) instead of an agent token.
        #[arg(long)]
        analyst: bool,
        /// The host this agent token speaks for: reports naming any other
        /// host are refused (403). Without it, the token is bound to the
        /// host of its first report.
        #[arg(long, conflicts_with = "analyst")]
        host: Option<String>,
        /// A fleet enrolment token (one secret for every node, e.g. one
        /// Kubernetes Secret): it can only exchange itself for a new agent
        /// token per host (`rigwatch run --enrol-token-file`), named
        /// NAME/HOST. It cannot report or read anything.
        #[arg(long, conflicts_with_all = ["analyst", "host"])]
        enrol: bool,
        /// With --enrol: a host that already has a token may enrol again;
        /// its old tokens are revoked (nodes rebuilt under the same name).
        /// Without it, enrolling an enrolled host is refused (409), so a
        /// leaked enrolment secret cannot take over an enrolled host.
        #[arg(long, requires = "enrol")]
        allow_reenrol: bool,
        #[command(flatten)]
        common: Common,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Rotate a token without downtime: print a new secret for the same
    /// name, role and host; the old secret keeps working for --grace, time
    /// to put the new one in the agent's config (or the analyst's hands).
    /// Rotating again ends the previous grace. Revoke to stop both at once.
    Rotate {
        /// The token's name.
        name: String,
        /// How long the old secret stays valid, in seconds (0: not at all).
        #[arg(long, default_value_t = 86_400)]
        grace: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a token by name.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

fn settings(common: &Common, flags: FileConfig) -> anyhow::Result<Settings> {
    let file = match &common.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        data_dir: common.data_dir.clone(),
        database: common.database.clone(),
        database_ca_file: common.database_ca_file.clone(),
        ..flags
    };
    Settings::resolve(file, flags)
}

fn open(s: &Settings) -> anyhow::Result<Store> {
    if !s.database.starts_with("postgres://") && !s.database.starts_with("postgresql://") {
        std::fs::create_dir_all(&s.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", s.data_dir.display()))?;
    }
    let backend =
        db::open_with(&s.database, s.database_ca_file.as_deref()).map_err(|e| anyhow::anyhow!("database {}: {e}", redact(&s.database)))?;
    Ok(Store::new(backend))
}

/// Hides a password in a database URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => match url[a + 3..b].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..a + 3], &url[b..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            common,
            listen,
            alertmanager,
            webhook,
            siem_webhook,
            siem_format,
            tls_cert,
            tls_key,
            silent_after,
            alert_resend,
            external_url,
        } => {
            let s = settings(
                &common,
                FileConfig {
                    listen,
                    alertmanager,
                    webhook,
                    siem_webhook,
                    siem_format,
                    tls_cert,
                    tls_key,
                    silent_after_seconds: silent_after,
                    alert_resend_seconds: alert_resend,
                    external_url,
                    ..Default::default()
                },
            )?;
            let store = open(&s)?;
            eprintln!(
                "rigwatch-collector: {} database {}, listening on {}{}",
                store.backend_name(),
                redact(&s.database),
                s.listen,
                if s.tls.is_some() { " (https)" } else { "" }
            );
            rigwatch_collector::serve(App::new(store, s)).await
        }
        Cmd::Fleet {
            cmd: FleetCmd::Key { common },
        } => {
            let s = settings(&common, FileConfig::default())?;
            let key = rigwatch_collector::fleet::SigningKey::load_or_create(&s.data_dir)?;
            println!("{}", key.public_base64());
            Ok(())
        }
        Cmd::Signatures {
            cmd: SignaturesCmd::Publish { dir, clear, common },
        } => {
            let s = settings(&common, FileConfig::default())?;
            let files = match (dir, clear) {
                (_, true) => Vec::new(),
                (Some(dir), false) => match rigwatch_collector::fleet::read_publish_dir(&dir) {
                    Ok(f) => f,
                    Err(errors) => {
                        for e in &errors {
                            eprintln!("{e}");
                        }
                        anyhow::bail!("{} error(s); nothing was published", errors.len())
                    }
                },
                (None, false) => anyhow::bail!("name a directory, or --clear"),
            };
            let store = open(&s)?;
            let n = files.len();
            let version = store.fleet_publish(files).await?;
            if n == 0 {
                println!("cleared the published files; fleet set version {version}");
            } else {
                println!("published {n} files; fleet set version {version}");
            }
            Ok(())
        }
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Create {
                name,
                analyst,
                host,
                enrol,
                allow_reenrol,
                common,
            } => {
                let s = settings(&common, FileConfig::default())?;
                let store = open(&s)?;
                let role = if analyst {
                    Role::Analyst
                } else if enrol {
                    Role::Enrol
                } else {
                    Role::Agent
                };
                let secret = if enrol {
                    store.token_create_enrol(&name, allow_reenrol).await?
                } else {
                    store.token_create_for(&name, role, host.as_deref()).await?
                };
                let bound = match (&host, role) {
                    (Some(h), _) => format!(" for host {h:?}"),
                    (None, Role::Agent) => " (bound to the host of its first report)".to_string(),
                    (None, Role::Analyst) => String::new(),
                    (None, Role::Enrol) if allow_reenrol => {
                        " (enrols hosts as NAME/HOST; an enrolled host may enrol again, revoking its old token)".to_string()
                    }
                    (None, Role::Enrol) => " (enrols hosts as NAME/HOST; an enrolled host is refused)".to_string(),
                };
                println!(
                    "created {} token {name:?}{bound} in {}; it is shown only once:",
                    role.as_str(),
                    redact(&s.database)
                );
                println!("{secret}");
                Ok(())
            }
            TokenCmd::List { common } => {
                let s = settings(&common, FileConfig::default())?;
                let store = open(&s)?;
                println!("{:<32} {:<8} {:<22} {:<32} STATUS", "NAME", "ROLE", "CREATED", "HOST");
                for t in store.token_list().await? {
                    let now = rigwatch_collector::store::now();
                    let status = if t.revoked_at == 0 && t.previous_valid_until > now {
                        format!(
                            "valid (rotated; old secret until {})",
                            rigwatch_collector::format::rfc3339(t.previous_valid_until)
                        )
                    } else if t.revoked_at == 0 {
                        "valid".to_string()
                    } else {
                        format!("revoked {}", rigwatch_collector::format::rfc3339(t.revoked_at))
                    };
                    let host = match (t.role, t.host.is_empty()) {
                        (Role::Analyst, _) => "-".to_string(),
                        (Role::Enrol, _) if t.allow_reenrol => "(enrols; re-enrol allowed)".to_string(),
                        (Role::Enrol, _) => "(enrols)".to_string(),
                        (Role::Agent, true) => "(first report)".to_string(),
                        (Role::Agent, false) => t.host.escape_debug().to_string(),
                    };
                    println!(
                        "{:<32} {:<8} {:<22} {host:<32} {status}",
                        t.name,
                        t.role.as_str(),
                        rigwatch_collector::format::rfc3339(t.created_at)
                    );
                }
                Ok(())
            }
            TokenCmd::Rotate { name, grace, common } => {
                let s = settings(&common, FileConfig::default())?;
                let store = open(&s)?;
                let Some(secret) = store.token_rotate(&name, grace).await? else {
                    anyhow::bail!("no valid token named {name:?}")
                };
                let old = if grace == 0 {
                    "the old secret no longer works".to_string()
                } else {
                    format!(
                        "the old secret works until {}",
                        rigwatch_collector::format::rfc3339(rigwatch_collector::store::now().saturating_add(grace))
                    )
                };
                println!(
                    "rotated token {name:?} in {}; {old}; the new one is shown only once:",
                    redact(&s.database)
                );
                println!("{secret}");
                Ok(())
            }
            TokenCmd::Revoke { name, common } => {
                let s = settings(&common, FileConfig::default())?;
                let store = open(&s)?;
                if store.token_revoke(&name).await? {
                    println!("revoked token {name:?}");
                    Ok(())
                } else {
                    anyhow::bail!("no valid token named {name:?}")
                }
            }
        },
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RIGWATCH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rigwatch-collector: {e:#}");
            ExitCode::from(2)
        }
    }
}
