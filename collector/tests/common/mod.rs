//! Shared test helpers: reports as agents send them, an in-process
//! collector on a loopback port, and real servers (PostgreSQL,
//! Alertmanager) started from Debian's packages.
#![allow(dead_code)]

use rigwatch_collector::config::Settings;
use rigwatch_collector::store::Role;
use rigwatch_collector::{db, App, Store};
use rigwatch_signatures::report::{AgentInfo, Event, EventKind, Report, SensorStatus, REPORT_VERSION};
use rigwatch_signatures::{Evidence, EvidenceKind, Finding, ProcessInfo, Severity, Weight};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A process name an attacker would choose.
pub const HOSTILE: &str = "<script>alert(1)</script>\"'&kworker";

pub const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// A confirmed XMRig-like finding: pool + wallet on the command line.
pub fn finding(host: &str, id: &str, comm: &str, pool: &str, wallet: &str) -> Finding {
    // Built from JSON, as it arrives: new optional fields in Finding do not break it.
    let process = ProcessInfo {
        pid: 4242,
        ppid: 1,
        start_time: 777,
        comm: comm.into(),
        exe: "/dev/shm/.x/kworker (deleted)".into(),
        cmdline: format!("{comm} -o stratum+tcp://{pool}:3333 -u {wallet}"),
        user: "www-data".into(),
        uid: 33,
        cwd: "/".into(),
        cgroup: "/".into(),
        ..Default::default()
    };
    let evidence = vec![
        Evidence::from_rule(
            EvidenceKind::CommandLine {
                matched: format!("stratum+tcp://{pool}:3333"),
                base64: false,
                pool_url: true,
            },
            "cmdline.pool-url",
            Weight::Likely,
        ),
        Evidence::from_rule(
            EvidenceKind::Wallet {
                coin: "monero".into(),
                address: wallet.into(),
                source: "cmdline".into(),
            },
            "wallet.monero",
            Weight::Likely,
        ),
        Evidence::heuristic(
            EvidenceKind::Cpu {
                cores: 1.9,
                window_seconds: 5.0,
            },
            Weight::Info,
        ),
    ];
    serde_json::from_value(serde_json::json!({
        "id": id,
        "severity": Severity::Confirmed,
        "host": host,
        "pid": 4242,
        "process": process,
        "evidence": evidence,
        "cpu_cores": 1.9,
        "first_seen": 1000,
        "last_seen": 1000,
    }))
    .expect("a finding")
}

/// A report from an agent, with the given events.
pub fn report(host: &str, agent: &str, events: Vec<Event>) -> Report {
    Report {
        version: REPORT_VERSION,
        batch_id: format!("{agent}:{}", events.first().map(|e| e.event_id.clone()).unwrap_or_default()),
        agent: AgentInfo {
            agent_id: agent.into(),
            host: host.into(),
            version: "0.1.0".into(),
            signatures_version: "sig123".into(),
            sensors: vec![
                SensorStatus {
                    name: "process".into(),
                    up: true,
                    message: None,
                },
                SensorStatus {
                    name: "capture".into(),
                    up: false,
                    message: Some("no CAP_NET_RAW".into()),
                },
            ],
            config: None,
        },
        sent_at: 1000,
        events,
    }
}

pub fn opened(agent: &str, seq: u64, at: u64, f: Finding) -> Event {
    Event {
        event_id: format!("{agent}:{seq}"),
        at,
        kind: EventKind::FindingOpened { finding: f },
    }
}
pub fn updated(agent: &str, seq: u64, at: u64, f: Finding) -> Event {
    Event {
        event_id: format!("{agent}:{seq}"),
        at,
        kind: EventKind::FindingUpdated { finding: f },
    }
}
pub fn resolved(agent: &str, seq: u64, at: u64, id: &str) -> Event {
    Event {
        event_id: format!("{agent}:{seq}"),
        at,
        kind: EventKind::FindingResolved {
            finding_id: id.into(),
            reason: "process exited".into(),
        },
    }
}
pub fn heartbeat(agent: &str, seq: u64, at: u64) -> Event {
    Event {
        event_id: format!("{agent}:{seq}"),
        at,
        kind: EventKind::Heartbeat {},
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A SQLite store in a fresh directory.
pub fn sqlite_store(dir: &Path) -> Store {
    Store::new(db::open(&dir.join("collector.sqlite3").display().to_string()).unwrap())
}

/// An in-process collector on a loopback port, with one agent token and
/// one analyst token.
pub struct Collector {
    pub url: String,
    pub app: Arc<App>,
    pub agent_token: String,
    pub analyst_token: String,
    pub client: reqwest::Client,
    /// One agent token per host (tokens speak for one host each), made on
    /// first use by [`Collector::post`].
    host_tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Collector {
    pub async fn start(store: Store, dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = Settings::with_data_dir(dir);
        settings.listen = addr.to_string();
        settings.external_url = format!("http://{addr}");
        tweak(&mut settings);
        let agent_token = store.token_create("agent-1", Role::Agent).await.unwrap();
        let analyst_token = store.token_create("alice", Role::Analyst).await.unwrap();
        let app = App::new(store, settings);
        tokio::spawn(rigwatch_collector::serve_listener(app.clone(), listener));
        Collector {
            url: format!("http://{addr}"),
            app,
            agent_token,
            analyst_token,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            host_tokens: Default::default(),
        }
    }

    /// The agent token for a host (created, bound to it, on first use).
    pub async fn token_for(&self, host: &str) -> String {
        if let Some(t) = self.host_tokens.lock().unwrap().get(host) {
            return t.clone();
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host.hash(&mut h);
        let t = self
            .app
            .store
            .token_create_for(&format!("agent-{:016x}", h.finish()), Role::Agent, Some(host))
            .await
            .unwrap();
        self.host_tokens.lock().unwrap().insert(host.to_string(), t.clone());
        t
    }

    /// Posts a body as a report with a token; returns status and JSON.
    pub async fn post_raw(&self, token: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut rq = self.client.post(format!("{}/api/v1/reports", self.url)).body(body);
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Posts a report with its host's own agent token.
    pub async fn post(&self, r: &Report) -> (u16, serde_json::Value) {
        let token = self.token_for(&r.agent.host).await;
        self.post_raw(Some(&token), serde_json::to_vec(r).unwrap()).await
    }

    /// GET with the analyst token; returns status and JSON.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.analyst_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

// ------------------------------------------------------------ PostgreSQL

/// A throwaway PostgreSQL server from Debian's package: initdb into a temp
/// dir, pg_ctl start on a free loopback port, stopped on drop.
///
/// [`Pg::start`] serves TLS (`ssl=on`, a certificate for `localhost` and
/// `127.0.0.1` signed by a test CA) and its `pg_hba.conf` accepts only
/// TLS connections to every database but the harness's own `postgres`:
/// a collector that connected in plaintext would be refused, so the suite
/// passing proves it ran over TLS. [`Pg::start_plain`] has `ssl=off`.
pub struct Pg {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// The test CA's certificate (PEM), for `sslrootcert`; None with ssl=off.
    ca_file: Option<PathBuf>,
}

/// A test certificate authority (rcgen, ECDSA P-256).
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// DER as PEM.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", self.cert.der())
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.cert_pem()).unwrap();
    }

    /// A server certificate for these names (DNS names or IP addresses),
    /// signed by this CA: (certificate PEM, private key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("server"));
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (pem("CERTIFICATE", cert.der()), pem("PRIVATE KEY", &key.serialize_der()))
    }
}

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

impl Pg {
    /// A server with TLS (see [`Pg`]). None (with a message) when
    /// PostgreSQL's server binaries are missing.
    pub fn start() -> Option<Pg> {
        Pg::start_with(true)
    }

    /// A server with `ssl=off`.
    pub fn start_plain() -> Option<Pg> {
        Pg::start_with(false)
    }

    fn start_with(tls: bool) -> Option<Pg> {
        let Some(bin) = pg_bin() else {
            eprintln!("SKIPPED: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("rigwatch-pg").tempdir().unwrap();
        let data = dir.path().join("data");
        // The server's certificate, from a CA made for this server.
        let ca_file = tls.then(|| {
            let ca = TestCa::new("rigwatch test PostgreSQL CA");
            let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
            let tls_dir = dir.path().join("tls");
            std::fs::create_dir(&tls_dir).unwrap();
            std::fs::write(tls_dir.join("server.crt"), cert).unwrap();
            std::fs::write(tls_dir.join("server.key"), key).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tls_dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
            ca.write(&tls_dir.join("ca.crt"));
            tls_dir.join("ca.crt")
        });
        let root = nix_is_root();
        if root {
            // initdb refuses to run as root: run the server as `postgres`.
            let ok = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the PostgreSQL temp dir to postgres failed");
        }
        let port = free_port();
        let pg = Pg {
            _dir: dir,
            data: data.clone(),
            bin,
            port,
            as_postgres: root,
            ca_file,
        };
        let out = pg
            .cmd("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let sock = pg._dir.path().display().to_string();
        let mut opts =
            format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300");
        if tls {
            let t = pg._dir.path().join("tls");
            opts += &format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                t.join("server.crt").display(),
                t.join("server.key").display()
            );
            // TLS only, but for the harness's own plaintext admin connection.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhost postgres postgres 127.0.0.1/32 trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        } else {
            opts += " -c ssl=off";
        }
        let out = pg
            .cmd("pg_ctl")
            .args(["-D", &data.display().to_string(), "-o", &opts, "-w", "-t", "60", "-l"])
            .arg(pg._dir.path().join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(pg._dir.path().join("log")).unwrap_or_default()
        );
        Some(pg)
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// A fresh, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let (port, n) = (self.port, name.to_string());
        std::thread::spawn(move || {
            let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n}")).unwrap();
            c.batch_execute(&format!("CREATE DATABASE {n}")).unwrap();
        })
        .join()
        .unwrap();
        match &self.ca_file {
            Some(ca) => self.url(name, &format!("sslmode=verify-full&sslrootcert={}", ca.display())),
            None => self.url(name, ""),
        }
    }

    /// The URL of a database on this server, with these query parameters.
    pub fn url(&self, name: &str, params: &str) -> String {
        let q = if params.is_empty() { String::new() } else { format!("?{params}") };
        format!("postgres://postgres@127.0.0.1:{}/{name}{q}", self.port)
    }

    /// The test CA's certificate file (None with ssl=off).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The server's view of the client connections to a database: how
    /// many, and how many of them are TLS (pg_stat_ssl).
    pub fn connections(&self, name: &str) -> (i64, i64) {
        let (port, n) = (self.port, name.to_string());
        std::thread::spawn(move || {
            let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            let r = c
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE s.ssl AND s.version LIKE 'TLSv1._') \
                     FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
                     WHERE a.datname = $1 AND a.backend_type = 'client backend'",
                    &[&n],
                )
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, i64>(1))
        })
        .join()
        .unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["-D", &self.data.display().to_string(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn nix_is_root() -> bool {
    // Our real uid, from /proc/self/status (no libc call needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------- Alertmanager

/// A real Alertmanager (Debian's prometheus-alertmanager) on a loopback
/// port with a temp config and storage; killed on drop.
#[allow(unused_imports)]
pub use rigwatch_e2e::Alertmanager;
