//! Fleet state over either database: ingest of agent reports (each event
//! stored once), tokens, hosts, findings with their history, analyst
//! actions, and campaigns. Written once against [`Conn`]; see `db.rs`.

use crate::db::{Backend, Conn, DbError, Job, Row, Value};
use crate::keys::{finding_keys, labels_of};
use rigwatch_signatures::report::{EventKind, Report};
use rigwatch_signatures::Finding;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sends reports.
    Agent,
    /// Reads the web page and query API, acknowledges and suppresses.
    Analyst,
    /// A fleet enrolment token: may only exchange itself, once per host,
    /// for an agent token bound to that host (`POST /api/v1/enrol`).
    Enrol,
}

impl Role {
    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Analyst => "analyst",
            Role::Enrol => "enrol",
        }
    }
    pub(crate) fn parse(s: &str) -> Role {
        match s {
            "analyst" => Role::Analyst,
            "enrol" => Role::Enrol,
            _ => Role::Agent,
        }
    }
}

/// A token as listed (never the secret).
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    /// Its name (one per agent or analyst).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, 0 while valid.
    pub revoked_at: u64,
    /// The host an agent token speaks for; empty until its first report
    /// binds it (or for analyst tokens).
    pub host: String,
    /// Unix seconds the token was bound to its host (at creation with
    /// `--host`, else at its first report); 0 while unbound.
    pub bound_at: u64,
    /// An enrolment token that may enrol a host again (rotating its token).
    pub allow_reenrol: bool,
    /// The enrolment token that made this agent token; empty otherwise.
    pub enrolled_by: String,
    /// Unix seconds of its last rotation; 0 if never rotated.
    pub rotated_at: u64,
    /// Unix seconds until which the secret before that rotation still works.
    pub previous_valid_until: u64,
}

/// What `POST /api/v1/enrol` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrolOutcome {
    /// A new agent token bound to the host: its name and secret (shown
    /// once). `replaced` names the host's earlier tokens, now revoked
    /// (only with an enrolment token that allows re-enrolment).
    Enrolled {
        /// `ENROL_NAME/HOST`.
        name: String,
        /// The agent token's secret.
        secret: String,
        /// Tokens of the host revoked by this re-enrolment.
        replaced: Vec<String>,
    },
    /// The host already has a valid agent token (these) and the enrolment
    /// token does not allow re-enrolment: nothing changed.
    AlreadyEnrolled(Vec<String>),
    /// The enrolment token has as many valid host tokens as it may.
    LimitReached(u64),
    /// The enrolment token was revoked meanwhile.
    Revoked,
}

/// The SHA-256 of a token, as stored. Tokens are 256 random bits, so a
/// plain hash (no salt, no stretching) is enough.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What one report did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    /// Events stored now.
    pub new_events: u64,
    /// Events already stored (a batch delivered again).
    pub duplicate_events: u64,
    /// True when a finding opened, changed or resolved.
    pub findings_changed: bool,
    /// New findings refused: the host has as many unresolved findings as
    /// it may ([`IngestLimits::max_findings_per_host`]).
    pub refused_findings: u64,
    /// Set when the report was refused as a whole and nothing was stored:
    /// its host is not the one its token speaks for.
    pub forbidden: Option<String>,
    /// Fleet learning refused, by reason ([`crate::fleet::Refusal`]).
    pub fleet_refused: BTreeMap<String, u64>,
    /// Fleet indicators hit by a finding for the first time.
    pub fleet_hits: Vec<String>,
    /// The fleet signature set changed (new or returning indicators).
    pub fleet_changed: bool,
    /// The finding transitions this report made, as stored for SIEMs
    /// (webhook and export), in id order.
    #[serde(skip)]
    pub finding_events: Vec<FindingEvent>,
    /// What the agent's reported configuration changed ([`crate::hostconfig`]).
    #[serde(skip)]
    pub config_changes: Vec<crate::hostconfig::ConfigChange>,
}

/// One finding transition as stored for SIEMs: the export endpoint's
/// unit, and what the SIEM webhook sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindingEvent {
    /// Monotonic across the whole database (every replica, every restart):
    /// the export cursor. A transaction takes its ids under a row lock held
    /// until it commits, so ids become visible in order.
    pub id: u64,
    /// Host name.
    pub host: String,
    /// The agent's finding id.
    pub finding_id: String,
    /// `opened`, `updated` or `resolved`.
    pub activity: String,
    /// Unix seconds (the agent's event time, cut to the collector's clock
    /// plus the allowance).
    pub at: u64,
    /// The finding as it stood at this event (JSON of
    /// [`rigwatch_signatures::Finding`]).
    pub finding: String,
}

impl FindingEvent {
    /// The transition as the shared SIEM mapping names it.
    pub fn siem_activity(&self) -> rigwatch_signatures::siem::Activity {
        use rigwatch_signatures::siem::Activity;
        match self.activity.as_str() {
            "opened" => Activity::Opened,
            "resolved" => Activity::Resolved,
            _ => Activity::Updated,
        }
    }
}

/// A transition waiting for its id (given when the report's job ends).
struct PendingEvent {
    finding_id: String,
    activity: &'static str,
    at: u64,
    finding: String,
}

/// What the collector allows one report to do.
#[derive(Clone, Copy, Debug)]
pub struct IngestLimits {
    /// Seconds an event's time may lie ahead of the collector's clock
    /// (agents' clocks drift); later times are cut back to this.
    pub clock_allowance: u64,
    /// Unresolved (open, acknowledged, suppressed) findings one host may have.
    pub max_findings_per_host: u64,
    /// What confirmed findings may teach the fleet.
    pub fleet: crate::fleet::FleetLimits,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            clock_allowance: 300,
            max_findings_per_host: 10_000,
            fleet: crate::fleet::FleetLimits::default(),
        }
    }
}

/// A host as the fleet view shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    /// Host name.
    pub host: String,
    /// The reporting agent's id.
    pub agent_id: String,
    /// rigwatch version.
    pub agent_version: String,
    /// Signature set version.
    pub signatures_version: String,
    /// Sensors as the agent reported them.
    pub sensors: serde_json::Value,
    /// Unix seconds of the first report.
    pub first_seen: u64,
    /// Unix seconds of the last report received.
    pub last_seen: u64,
    /// Reports received.
    pub reports: u64,
    /// No report for longer than the silence threshold: "agent silent".
    pub silent: bool,
    /// Findings open or acknowledged.
    pub active_findings: u64,
    /// Why the agent said it was stopping (`SIGTERM`), when its last report
    /// was its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// A silent host whose configuration changed shortly before it fell
    /// silent ([`SILENT_AFTER_CHANGE_SECONDS`]): what changed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_after_change: Option<String>,
}

/// A host that falls silent within this many seconds of a configuration
/// change is called out: the local root who exempts his miner and then
/// stops the agent does both in a few minutes.
pub const SILENT_AFTER_CHANGE_SECONDS: u64 = 900;

/// A finding as lists show it.
#[derive(Clone, Debug, Serialize)]
pub struct FindingView {
    /// Host name (findings are keyed by host and id).
    pub host: String,
    /// The agent's finding id.
    pub id: String,
    /// confirmed, likely or suspicious.
    pub severity: String,
    /// open, acknowledged, suppressed or resolved.
    pub state: String,
    /// Why the state is what it is.
    pub state_reason: String,
    /// Unix seconds of the last state change.
    pub state_changed_at: u64,
    /// The process name (attacker-controlled!).
    pub process: String,
    /// The executable path.
    pub exe: String,
    /// The strongest rule.
    pub rule: String,
    /// The first pool named by the evidence.
    pub pool: String,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds.
    pub last_seen: u64,
}

/// One line of a finding's history.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    /// Unix seconds.
    pub at: u64,
    /// opened, updated, reopened, resolved, acknowledged, suppressed…
    pub action: String,
    /// Details.
    pub detail: String,
}

/// A finding with everything known about it.
#[derive(Clone, Debug, Serialize)]
pub struct FindingDetail {
    /// The summary.
    #[serde(flatten)]
    pub view: FindingView,
    /// The finding as the agent last sent it (evidence included).
    pub finding: serde_json::Value,
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Filters for finding lists; empty fields match everything.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct FindingFilter {
    /// Exact host name.
    pub host: Option<String>,
    /// Exact severity.
    pub severity: Option<String>,
    /// Exact state, or "active" for open + acknowledged.
    pub state: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<u64>,
}

/// Findings on different hosts tied by a shared wallet, pool, binary hash
/// or stratum login.
#[derive(Clone, Debug, Serialize)]
pub struct Campaign {
    /// Stable id (a hash of its first key).
    pub id: String,
    /// The shared keys, `kind` → values.
    pub keys: BTreeMap<String, BTreeSet<String>>,
    /// Distinct hosts.
    pub hosts: Vec<String>,
    /// Its findings.
    pub findings: Vec<FindingView>,
    /// The highest severity among them.
    pub severity: String,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds.
    pub last_seen: u64,
}

/// Counts for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct FleetCounts {
    /// Hosts known.
    pub hosts: u64,
    /// Hosts silent.
    pub silent: u64,
    /// Active findings per severity.
    pub active_by_severity: Vec<(String, u64)>,
}

/// Fleet state over a [`Backend`].
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

const FINDING_COLS: &str = "host, id, severity, state, state_reason, state_changed_at, process, exe, rule, pool, first_seen, last_seen";
const SEVERITY_ORDER: &str = "CASE severity WHEN 'confirmed' THEN 0 WHEN 'likely' THEN 1 ELSE 2 END";

fn finding_view(r: &Row) -> FindingView {
    FindingView {
        host: r[0].text(),
        id: r[1].text(),
        severity: r[2].text(),
        state: r[3].text(),
        state_reason: r[4].text(),
        state_changed_at: r[5].int() as u64,
        process: r[6].text(),
        exe: r[7].text(),
        rule: r[8].text(),
        pool: r[9].text(),
        first_seen: r[10].int() as u64,
        last_seen: r[11].int() as u64,
    }
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "confirmed" => 3,
        "likely" => 2,
        "suspicious" => 1,
        _ => 0,
    }
}

impl Store {
    /// A store over an opened backend.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// "sqlite" or "postgres".
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub(crate) async fn run<T: Send + 'static>(
        &self,
        write: bool,
        f: impl FnMut(&mut dyn Conn) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (job, rx) = Job::new(f);
        if write {
            self.backend.write(job);
        } else {
            self.backend.read(job);
        }
        let any = rx.await.map_err(|_| DbError::Other("the database dropped the job".into()))??;
        any.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| DbError::Other("internal: job result type".into()))
    }

    // ------------------------------------------------------------ tokens

    /// Creates a token and returns its secret (shown once). Fails when a
    /// valid token of that name exists; a revoked one is replaced.
    pub async fn token_create(&self, name: &str, role: Role) -> Result<String, DbError> {
        self.token_create_for(name, role, None).await
    }

    /// Creates a token bound to a host (agent tokens only): reports from any
    /// other host are refused. Without a host, an agent token binds to the
    /// host of its first report.
    pub async fn token_create_for(&self, name: &str, role: Role, host: Option<&str>) -> Result<String, DbError> {
        let host = host.unwrap_or("").to_string();
        if role != Role::Agent && !host.is_empty() {
            return Err(DbError::Other("only agent tokens are bound to a host".into()));
        }
        if host.len() > 253 {
            return Err(DbError::Other("a host name is at most 253 bytes".into()));
        }
        check_token_name(name)?;
        let secret = new_secret()?;
        let row = TokenRow {
            name: name.to_string(),
            role,
            hash: token_hash(&secret),
            host,
            allow_reenrol: false,
            enrolled_by: String::new(),
        };
        let at = now();
        self.run(true, move |c| insert_token(c, &row, at)).await?;
        Ok(secret)
    }

    /// Creates a fleet enrolment token (one secret for every node of a
    /// fleet, e.g. one Kubernetes Secret): it can do nothing but enrol
    /// hosts. With `allow_reenrol`, enrolling a host that already has a
    /// valid agent token revokes that token and issues a new one (for
    /// nodes rebuilt under the same name); without it, that is refused
    /// (409), so a leaked enrolment secret cannot take over an enrolled
    /// host's identity.
    pub async fn token_create_enrol(&self, name: &str, allow_reenrol: bool) -> Result<String, DbError> {
        check_token_name(name)?;
        let secret = new_secret()?;
        let row = TokenRow {
            name: name.to_string(),
            role: Role::Enrol,
            hash: token_hash(&secret),
            host: String::new(),
            allow_reenrol,
            enrolled_by: String::new(),
        };
        let at = now();
        self.run(true, move |c| insert_token(c, &row, at)).await?;
        Ok(secret)
    }

    /// Exchanges the enrolment token named `enrol` for a new agent token
    /// bound to `host`, named `ENROL/HOST`. A host that already has a valid
    /// agent token (however made) is refused unless the enrolment token
    /// allows re-enrolment; then its tokens are revoked in the same
    /// transaction. At most `max_hosts` valid tokens per enrolment token.
    pub async fn enrol(&self, enrol: &str, host: &str, max_hosts: u64) -> Result<EnrolOutcome, DbError> {
        if host.is_empty() || host.len() > 253 {
            return Err(DbError::Other("a host name is 1 to 253 bytes".into()));
        }
        let secret = new_secret()?;
        let (enrol, host, hash, at) = (enrol.to_string(), host.to_string(), token_hash(&secret), now().max(1));
        let outcome = self
            .run(true, move |c| {
                let rows = c.query(
                    "SELECT allow_reenrol FROM tokens WHERE name = $1 AND role = 'enrol' AND revoked_at = 0",
                    &[enrol.as_str().into()],
                )?;
                let Some(allow) = rows.first().map(|r| r[0].int() != 0) else {
                    return Ok(EnrolOutcome::Revoked);
                };
                let existing: Vec<String> = c
                    .query(
                        "SELECT name FROM tokens WHERE role = 'agent' AND revoked_at = 0 AND host = $1 ORDER BY name",
                        &[host.as_str().into()],
                    )?
                    .iter()
                    .map(|r| r[0].text())
                    .collect();
                if !existing.is_empty() && !allow {
                    return Ok(EnrolOutcome::AlreadyEnrolled(existing));
                }
                let name = format!("{enrol}/{host}");
                // a valid token of that name for another host (made by hand)
                let taken = c.query(
                    "SELECT name FROM tokens WHERE name = $1 AND revoked_at = 0 AND host <> $2",
                    &[name.as_str().into(), host.as_str().into()],
                )?;
                if !taken.is_empty() {
                    return Ok(EnrolOutcome::AlreadyEnrolled(vec![name]));
                }
                let mine = c.query(
                    "SELECT COUNT(*) FROM tokens WHERE enrolled_by = $1 AND role = 'agent' AND revoked_at = 0 AND name <> $2",
                    &[enrol.as_str().into(), name.as_str().into()],
                )?;
                if mine.first().map(|r| r[0].int()).unwrap_or(0) as u64 >= max_hosts {
                    return Ok(EnrolOutcome::LimitReached(max_hosts));
                }
                if !existing.is_empty() {
                    c.exec(
                        "UPDATE tokens SET revoked_at = $2 WHERE role = 'agent' AND revoked_at = 0 AND host = $1",
                        &[host.as_str().into(), at.into()],
                    )?;
                }
                let row = TokenRow {
                    name: name.clone(),
                    role: Role::Agent,
                    hash: hash.clone(),
                    host: host.clone(),
                    allow_reenrol: false,
                    enrolled_by: enrol.clone(),
                };
                insert_token(c, &row, at)?;
                Ok(EnrolOutcome::Enrolled {
                    name,
                    secret: String::new(),
                    replaced: existing,
                })
            })
            .await?;
        Ok(match outcome {
            EnrolOutcome::Enrolled { name, replaced, .. } => EnrolOutcome::Enrolled { name, secret, replaced },
            other => other,
        })
    }

    /// Every token, valid or revoked.
    pub async fn token_list(&self) -> Result<Vec<TokenInfo>, DbError> {
        self.run(false, |c| {
            Ok(c.query(
                "SELECT name, role, created_at, revoked_at, host, bound_at, allow_reenrol, enrolled_by, rotated_at, prev_until \
                 FROM tokens ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| TokenInfo {
                name: r[0].text(),
                role: Role::parse(&r[1].text()),
                created_at: r[2].int() as u64,
                revoked_at: r[3].int() as u64,
                host: r[4].text(),
                bound_at: r[5].int() as u64,
                allow_reenrol: r[6].int() != 0,
                enrolled_by: r[7].text(),
                rotated_at: r[8].int() as u64,
                previous_valid_until: r[9].int() as u64,
            })
            .collect())
        })
        .await
    }

    /// Revokes a token; false when no valid token has that name.
    pub async fn token_revoke(&self, name: &str) -> Result<bool, DbError> {
        let (name, at) = (name.to_string(), now().max(1));
        self.run(true, move |c| {
            Ok(c.exec(
                "UPDATE tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at = 0",
                &[name.as_str().into(), at.into()],
            )? == 1)
        })
        .await
    }

    /// Rotates a token without downtime: a new secret for the same name,
    /// role and host binding, while the old secret keeps working for
    /// `grace` seconds (time to roll the new one out to its agent or
    /// analyst); after that, or at once with a grace of 0, only the new
    /// one is valid. Rotating again ends the previous grace. `None` when no
    /// valid token has that name. Enrolment tokens rotate the same way.
    pub async fn token_rotate(&self, name: &str, grace: u64) -> Result<Option<String>, DbError> {
        let secret = new_secret()?;
        let (name, hash, at) = (name.to_string(), token_hash(&secret), now().max(1));
        let until = at.saturating_add(grace).min(i64::MAX as u64);
        let done = self
            .run(true, move |c| {
                Ok(c.exec(
                    "UPDATE tokens SET prev_hash = hash, prev_until = $3, hash = $2, rotated_at = $4 \
                     WHERE name = $1 AND revoked_at = 0",
                    &[name.as_str().into(), hash.as_str().into(), until.into(), at.into()],
                )? == 1)
            })
            .await?;
        Ok(done.then_some(secret))
    }

    /// The valid token with this secret: its name and role.
    pub async fn token_lookup(&self, secret: &str) -> Result<Option<(String, Role)>, DbError> {
        self.token_by_hash(&token_hash(secret)).await
    }

    /// The valid token with this [`token_hash`]: its name and role.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<(String, Role)>, DbError> {
        let hash = hash.to_string();
        let at = now();
        self.run(false, move |c| {
            // The current secret, or the one before a rotation during its grace.
            let rows = c.query(
                "SELECT name, role FROM tokens WHERE revoked_at = 0 AND (hash = $1 OR (prev_hash = $1 AND prev_until > $2))",
                &[hash.as_str().into(), at.into()],
            )?;
            Ok(rows.first().map(|r| (r[0].text(), Role::parse(&r[1].text()))))
        })
        .await
    }

    // ------------------------------------------------------------ ingest

    /// Stores a checked report with the default limits and no token check
    /// (trusted callers: tests, tools). Agents' reports go through
    /// [`Store::ingest_as`].
    pub async fn ingest(&self, report: Report, received: u64) -> Result<IngestOutcome, DbError> {
        let report = Arc::new(report);
        self.run(true, move |c| ingest_tx(c, None, &report, received, IngestLimits::default()))
            .await
    }

    /// Stores a report sent with the agent token named `token`: refused as a
    /// whole (`forbidden`, nothing stored) when the report's host is not the
    /// token's; an unbound token is bound to this host now. Then host state
    /// and each event not seen before. `received` is the collector's clock:
    /// hosts' last seen, and the ceiling (plus `limits.clock_allowance`) on
    /// every time the report carries.
    pub async fn ingest_as(&self, token: &str, report: Report, received: u64, limits: IngestLimits) -> Result<IngestOutcome, DbError> {
        let report = Arc::new(report);
        let token = token.to_string();
        self.run(true, move |c| ingest_tx(c, Some(&token), &report, received, limits)).await
    }

    // ----------------------------------------------------------- queries

    /// Every host; `silent_after` seconds without a report marks it silent.
    pub async fn hosts(&self, now: u64, silent_after: u64) -> Result<Vec<HostView>, DbError> {
        self.run(false, move |c| {
            let rows = c.query(
                "SELECT h.host, h.agent_id, h.agent_version, h.signatures_version, h.sensors, h.first_seen, \
                 h.last_seen, h.reports, (SELECT COUNT(*) FROM findings f WHERE f.host = h.host \
                 AND f.state IN ('open', 'acknowledged')), h.stopped_at, h.stop_reason, \
                 (SELECT c.at FROM host_config c WHERE c.host = h.host AND c.seq > 1 ORDER BY c.seq DESC LIMIT 1), \
                 (SELECT c.changes FROM host_config c WHERE c.host = h.host AND c.seq > 1 ORDER BY c.seq DESC LIMIT 1) \
                 FROM hosts h ORDER BY h.host",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    let last_seen = r[6].int() as u64;
                    let silent = now.saturating_sub(last_seen) > silent_after;
                    // the last change (not the first report), when it came shortly before the silence
                    let changed_at = r[11].int() as u64;
                    let silent_after_change =
                        (silent && changed_at > 0 && last_seen.saturating_sub(changed_at) <= SILENT_AFTER_CHANGE_SECONDS).then(|| {
                            let changes: Vec<crate::hostconfig::ConfigChange> = serde_json::from_str(&r[12].text()).unwrap_or_default();
                            crate::hostconfig::change_words(&changes, last_seen.saturating_sub(changed_at))
                        });
                    HostView {
                        host: r[0].text(),
                        agent_id: r[1].text(),
                        agent_version: r[2].text(),
                        signatures_version: r[3].text(),
                        sensors: serde_json::from_str(&r[4].text()).unwrap_or(serde_json::Value::Null),
                        first_seen: r[5].int() as u64,
                        last_seen,
                        reports: r[7].int() as u64,
                        silent,
                        active_findings: r[8].int() as u64,
                        stopped: (r[9].int() > 0).then(|| r[10].text()),
                        silent_after_change,
                    }
                })
                .collect())
        })
        .await
    }

    /// Findings matching a filter, most severe and most recent first.
    pub async fn findings(&self, filter: &FindingFilter) -> Result<Vec<FindingView>, DbError> {
        let filter = filter.clone();
        self.run(false, move |c| {
            let mut sql = format!("SELECT {FINDING_COLS} FROM findings WHERE 1 = 1");
            let mut params: Vec<Value> = Vec::new();
            for (col, v) in [("host", &filter.host), ("severity", &filter.severity)] {
                if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                    params.push(v.into());
                    sql.push_str(&format!(" AND {col} = ${}", params.len()));
                }
            }
            match filter.state.as_deref().filter(|v| !v.is_empty()) {
                Some("active") => sql.push_str(" AND state IN ('open', 'acknowledged')"),
                Some(s) => {
                    params.push(s.into());
                    sql.push_str(&format!(" AND state = ${}", params.len()));
                }
                None => {}
            }
            params.push(Value::Int(filter.limit.unwrap_or(1000).min(100_000) as i64));
            sql.push_str(&format!(
                " ORDER BY {SEVERITY_ORDER}, last_seen DESC, host, id LIMIT ${}",
                params.len()
            ));
            Ok(c.query(&sql, &params)?.iter().map(finding_view).collect())
        })
        .await
    }

    /// One finding with its evidence and history.
    pub async fn finding(&self, host: &str, id: &str) -> Result<Option<FindingDetail>, DbError> {
        let (host, id) = (host.to_string(), id.to_string());
        self.run(false, move |c| {
            let p: [Value; 2] = [host.as_str().into(), id.as_str().into()];
            let rows = c.query(
                &format!("SELECT {FINDING_COLS}, finding FROM findings WHERE host = $1 AND id = $2"),
                &p,
            )?;
            let Some(r) = rows.first() else { return Ok(None) };
            let history = c
                .query(
                    "SELECT at, action, detail FROM history WHERE host = $1 AND finding_id = $2 ORDER BY at, seq",
                    &p,
                )?
                .iter()
                .map(|h| HistoryEntry {
                    at: h[0].int() as u64,
                    action: h[1].text(),
                    detail: h[2].text(),
                })
                .collect();
            Ok(Some(FindingDetail {
                view: finding_view(r),
                finding: serde_json::from_str(&r[12].text()).unwrap_or(serde_json::Value::Null),
                history,
            }))
        })
        .await
    }

    /// An analyst acknowledges, suppresses or reopens a finding. False when
    /// there is no such finding.
    pub async fn set_state(&self, host: &str, id: &str, state: &str, reason: &str, actor: &str) -> Result<bool, DbError> {
        if !matches!(state, "acknowledged" | "suppressed" | "open") {
            return Err(DbError::Other(format!(
                "unknown state {state:?} (acknowledged, suppressed or open)"
            )));
        }
        let (host, id, state, reason, actor, at) = (
            host.to_string(),
            id.to_string(),
            state.to_string(),
            reason.to_string(),
            actor.to_string(),
            now(),
        );
        let seq = format!(
            "analyst:{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        self.run(true, move |c| {
            let n = c.exec(
                "UPDATE findings SET state = $3, state_reason = $4, state_changed_at = $5 WHERE host = $1 AND id = $2",
                &[
                    host.as_str().into(),
                    id.as_str().into(),
                    state.as_str().into(),
                    reason.as_str().into(),
                    at.into(),
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            c.exec(
                "INSERT INTO history (host, finding_id, at, seq, action, detail) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    host.as_str().into(),
                    id.as_str().into(),
                    at.into(),
                    seq.as_str().into(),
                    state.as_str().into(),
                    format!("by {actor}: {reason}").into(),
                ],
            )?;
            Ok(true)
        })
        .await
    }

    /// Forgets event ids received before `before` (unix seconds): the
    /// idempotency window. A batch re-delivered after that would be applied
    /// again, so keep it longer than an agent's spool can hold (default 30 days).
    /// The SIEM export's finding events received before then go too.
    pub async fn prune_events(&self, before: u64) -> Result<u64, DbError> {
        self.run(true, move |c| {
            c.exec("DELETE FROM finding_events WHERE received_at < $1", &[before.into()])?;
            c.exec("DELETE FROM events WHERE received_at < $1", &[before.into()])
        })
        .await
    }

    /// Finding events (SIEM export) with an id above `after`, oldest first,
    /// at most `limit`.
    pub async fn finding_events(&self, after: u64, limit: u64) -> Result<Vec<FindingEvent>, DbError> {
        self.run(false, move |c| {
            Ok(c.query(
                "SELECT id, host, finding_id, activity, at, finding FROM finding_events WHERE id > $1 ORDER BY id LIMIT $2",
                &[after.min(i64::MAX as u64).into(), limit.min(i64::MAX as u64).into()],
            )?
            .iter()
            .map(|r| FindingEvent {
                id: r[0].int() as u64,
                host: r[1].text(),
                finding_id: r[2].text(),
                activity: r[3].text(),
                at: r[4].int() as u64,
                finding: r[5].text(),
            })
            .collect())
        })
        .await
    }

    /// Findings that ended (resolved or suppressed) at or after `since`.
    pub async fn ended_since(&self, since: u64) -> Result<Vec<FindingView>, DbError> {
        self.run(false, move |c| {
            Ok(c.query(
                &format!("SELECT {FINDING_COLS} FROM findings WHERE state IN ('resolved', 'suppressed') AND state_changed_at >= $1"),
                &[since.into()],
            )?
            .iter()
            .map(finding_view)
            .collect())
        })
        .await
    }

    /// Counts for metrics.
    pub async fn counts(&self, now: u64, silent_after: u64) -> Result<FleetCounts, DbError> {
        let cutoff = now.saturating_sub(silent_after) as i64;
        self.run(false, move |c| {
            let h = c.query(
                "SELECT (SELECT COUNT(*) FROM hosts), (SELECT COUNT(*) FROM hosts WHERE last_seen < $1)",
                &[Value::Int(cutoff)],
            )?;
            let by = c.query(
                "SELECT severity, COUNT(*) FROM findings WHERE state IN ('open', 'acknowledged') GROUP BY severity",
                &[],
            )?;
            Ok(FleetCounts {
                hosts: h.first().map(|r| r[0].int() as u64).unwrap_or(0),
                silent: h.first().map(|r| r[1].int() as u64).unwrap_or(0),
                active_by_severity: by.iter().map(|r| (r[0].text(), r[1].int() as u64)).collect(),
            })
        })
        .await
    }

    /// Campaigns: findings (not suppressed) on two or more hosts joined by
    /// shared keys, transitively (wallet on A and B, pool on B and C: one
    /// campaign of three).
    pub async fn campaigns(&self) -> Result<Vec<Campaign>, DbError> {
        self.run(false, |c| {
            let keys = c.query(
                "SELECT k.host, k.finding_id, k.kind, k.value FROM finding_keys k \
                 JOIN findings f ON f.host = k.host AND f.id = k.finding_id \
                 WHERE f.state <> 'suppressed' AND (k.kind, k.value) IN \
                 (SELECT kind, value FROM finding_keys GROUP BY kind, value HAVING COUNT(DISTINCT host) >= 2) \
                 ORDER BY k.kind, k.value, k.host, k.finding_id",
                &[],
            )?;
            let findings = c.query(&format!("SELECT {FINDING_COLS} FROM findings WHERE state <> 'suppressed'"), &[])?;
            Ok(group_campaigns(&keys, &findings))
        })
        .await
    }
}

fn group_campaigns(keys: &[Row], findings: &[Row]) -> Vec<Campaign> {
    // Union-find over findings, joined through each shared key.
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let mut by_key: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for r in keys {
        let node = (r[0].text(), r[1].text());
        let n = index.len();
        let i = *index.entry(node).or_insert_with(|| {
            parent.push(n);
            n
        });
        by_key.entry((r[2].text(), r[3].text())).or_default().push(i);
    }
    for members in by_key.values() {
        for w in members.windows(2) {
            let (a, b) = (find(&mut parent, w[0]), find(&mut parent, w[1]));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let views: HashMap<(String, String), FindingView> = findings
        .iter()
        .map(finding_view)
        .map(|v| ((v.host.clone(), v.id.clone()), v))
        .collect();
    let mut groups: BTreeMap<usize, Campaign> = BTreeMap::new();
    for ((kind, value), members) in &by_key {
        let root = find(&mut parent, members[0]);
        let c = groups.entry(root).or_insert_with(|| Campaign {
            id: hex::encode(&Sha256::digest(format!("{kind}:{value}").as_bytes())[..6]),
            keys: BTreeMap::new(),
            hosts: Vec::new(),
            findings: Vec::new(),
            severity: String::new(),
            first_seen: u64::MAX,
            last_seen: 0,
        });
        c.keys.entry(kind.clone()).or_default().insert(value.clone());
    }
    let mut nodes: Vec<(&(String, String), &usize)> = index.iter().collect();
    nodes.sort();
    for (node, &i) in nodes {
        let root = find(&mut parent, i);
        let (Some(c), Some(v)) = (groups.get_mut(&root), views.get(node)) else {
            continue;
        };
        if !c.hosts.contains(&v.host) {
            c.hosts.push(v.host.clone());
        }
        if severity_rank(&v.severity) > severity_rank(&c.severity) {
            c.severity = v.severity.clone();
        }
        c.first_seen = c.first_seen.min(v.first_seen);
        c.last_seen = c.last_seen.max(v.last_seen);
        c.findings.push(v.clone());
    }
    let mut out: Vec<Campaign> = groups.into_values().filter(|c| c.hosts.len() >= 2).collect();
    for c in &mut out {
        c.hosts.sort();
    }
    out.sort_by(|a, b| b.hosts.len().cmp(&a.hosts.len()).then(a.id.cmp(&b.id)));
    out
}

/// A token row to store.
struct TokenRow {
    name: String,
    role: Role,
    hash: String,
    host: String,
    allow_reenrol: bool,
    enrolled_by: String,
}

fn check_token_name(name: &str) -> Result<(), DbError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(DbError::Other("a token name must be 1 to 128 printable characters".into()));
    }
    Ok(())
}

/// 256 random bits, as `rwc_` and 64 hex digits.
fn new_secret() -> Result<String, DbError> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(|e| DbError::Other(format!("no randomness: {e}")))?;
    Ok(format!("rwc_{}", hex::encode(raw)))
}

/// Stores a token: a new name, or one whose earlier token was revoked
/// (a valid one of that name is an error). `bound_at` is `at` when the
/// row names a host.
fn insert_token(c: &mut dyn Conn, t: &TokenRow, at: u64) -> Result<(), DbError> {
    let bound_at = if t.host.is_empty() { 0 } else { at };
    let params = [
        t.name.as_str().into(),
        t.role.as_str().into(),
        t.hash.as_str().into(),
        at.into(),
        t.host.as_str().into(),
        bound_at.into(),
        (t.allow_reenrol as i64).into(),
        t.enrolled_by.as_str().into(),
    ];
    let existing = c.query("SELECT revoked_at FROM tokens WHERE name = $1", &[t.name.as_str().into()])?;
    match existing.first() {
        Some(r) if r[0].int() == 0 => Err(DbError::Other(format!("a token named {:?} exists; revoke it first", t.name))),
        Some(_) => {
            c.exec(
                "UPDATE tokens SET role = $2, hash = $3, created_at = $4, revoked_at = 0, host = $5, bound_at = $6, \
                 allow_reenrol = $7, enrolled_by = $8, prev_hash = '', prev_until = 0, rotated_at = 0 WHERE name = $1",
                &params,
            )?;
            Ok(())
        }
        None => {
            c.exec(
                "INSERT INTO tokens (name, role, hash, created_at, revoked_at, host, bound_at, allow_reenrol, enrolled_by) \
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8)",
                &params,
            )?;
            Ok(())
        }
    }
}

/// Checks (and on first use, makes) the binding of an agent token to the
/// report's host. `Some(reason)` when the report must be refused.
fn bind_token(c: &mut dyn Conn, token: &str, host: &str, received: u64) -> Result<Option<String>, DbError> {
    let rows = c.query(
        "SELECT host FROM tokens WHERE name = $1 AND revoked_at = 0 AND role = 'agent'",
        &[token.into()],
    )?;
    let Some(bound) = rows.first().map(|r| r[0].text()) else {
        return Ok(Some("the token was revoked".into()));
    };
    if bound.is_empty() {
        // First use: bind it to this host (only if still unbound: a
        // concurrent first report may have won; then compare with that).
        c.exec(
            "UPDATE tokens SET host = $2, bound_at = $3 WHERE name = $1 AND host = ''",
            &[token.into(), host.into(), received.into()],
        )?;
        let now_bound = c
            .query("SELECT host FROM tokens WHERE name = $1", &[token.into()])?
            .first()
            .map(|r| r[0].text())
            .unwrap_or_default();
        if now_bound == crate::db::stored_text(host) {
            return Ok(None);
        }
        return Ok(Some(format!("this token speaks for host {now_bound:?} only")));
    }
    if bound == crate::db::stored_text(host) {
        Ok(None)
    } else {
        Ok(Some(format!("this token speaks for host {bound:?} only")))
    }
}

/// The key an event id is remembered under: the agent's id within its host,
/// so that one host's agent cannot claim (and so suppress) another's events.
fn event_key(host: &str, agent_id: &str) -> String {
    format!("{}:{host}:{agent_id}", host.len())
}

fn ingest_tx(c: &mut dyn Conn, token: Option<&str>, r: &Report, received: u64, limits: IngestLimits) -> Result<IngestOutcome, DbError> {
    let host = r.agent.host.as_str();
    if let Some(token) = token {
        if let Some(why) = bind_token(c, token, host, received)? {
            return Ok(IngestOutcome {
                forbidden: Some(why),
                ..Default::default()
            });
        }
    }
    // Times come from the collector's clock: nothing the agent says may lie
    // further ahead than the allowance (an event dated 2^64-1 would make
    // every genuine update after it look stale).
    let ceiling = received.saturating_add(limits.clock_allowance).min(i64::MAX as u64);
    let sensors = serde_json::to_string(&r.agent.sensors).unwrap_or_else(|_| "[]".into());
    c.exec(
        "INSERT INTO hosts (host, agent_id, agent_version, signatures_version, sensors, first_seen, last_seen, reports) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, 1) ON CONFLICT (host) DO UPDATE SET agent_id = excluded.agent_id, \
         agent_version = excluded.agent_version, signatures_version = excluded.signatures_version, \
         sensors = excluded.sensors, last_seen = excluded.last_seen, reports = hosts.reports + 1, \
         stopped_at = 0, stop_reason = ''",
        &[
            host.into(),
            r.agent.agent_id.as_str().into(),
            r.agent.version.as_str().into(),
            r.agent.signatures_version.as_str().into(),
            sensors.into(),
            received.into(),
        ],
    )?;
    let mut out = IngestOutcome::default();
    if let Some(state) = &r.agent.config {
        out.config_changes = crate::hostconfig::record_tx(c, host, state, received)?;
    }
    let key = event_key(host, &r.agent.agent_id);
    // Unresolved findings on this host, counted once when first needed.
    let mut unresolved: Option<u64> = None;
    let mut pending: Vec<PendingEvent> = Vec::new();
    for ev in &r.events {
        if let EventKind::Stopping { reason } = &ev.kind {
            // the agent's last word: the host is stopped, not merely silent
            // (until its next report)
            let reason = rigwatch_signatures::report::cap_string(reason, 128);
            c.exec(
                "UPDATE hosts SET stopped_at = $2, stop_reason = $3 WHERE host = $1",
                &[host.into(), received.into(), reason.into()],
            )?;
            out.new_events += 1;
            continue;
        }
        if matches!(ev.kind, EventKind::Heartbeat {}) {
            // Heartbeats only move last_seen (done above); storing them
            // would grow the events table by the fleet size every interval.
            out.new_events += 1;
            continue;
        }
        let at = ev.at.min(ceiling);
        let fresh = c.exec(
            "INSERT INTO events (agent_id, event_id, host, at, received_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (agent_id, event_id) DO NOTHING",
            &[
                key.as_str().into(),
                ev.event_id.as_str().into(),
                host.into(),
                at.into(),
                received.into(),
            ],
        )?;
        if fresh == 0 {
            out.duplicate_events += 1;
            continue;
        }
        out.new_events += 1;
        let seq = format!("{}:{}", r.agent.agent_id, ev.event_id);
        let order = Order::of(&r.agent.agent_id, &ev.event_id, at);
        match &ev.kind {
            EventKind::FindingOpened { finding } | EventKind::FindingUpdated { finding } => {
                let exists = !c
                    .query(
                        "SELECT 1 FROM findings WHERE host = $1 AND id = $2",
                        &[host.into(), finding.id.as_str().into()],
                    )?
                    .is_empty();
                if !exists {
                    let n = match unresolved {
                        Some(n) => n,
                        None => c
                            .query(
                                "SELECT COUNT(*) FROM findings WHERE host = $1 AND state <> 'resolved'",
                                &[host.into()],
                            )?
                            .first()
                            .map(|r| r[0].int() as u64)
                            .unwrap_or(0),
                    };
                    if n >= limits.max_findings_per_host {
                        unresolved = Some(n);
                        out.refused_findings += 1;
                        continue;
                    }
                    unresolved = Some(n + 1);
                }
                if apply_finding(c, host, finding, &order, ceiling, received, &seq, &mut pending)? {
                    out.findings_changed = true;
                    let learned = crate::fleet::learn_tx(c, host, finding, received, limits.fleet)?;
                    for r in learned.refused {
                        *out.fleet_refused.entry(r.as_str().to_string()).or_insert(0) += 1;
                    }
                    out.fleet_hits.extend(learned.hits);
                    out.fleet_changed |= learned.changed;
                }
            }
            EventKind::FindingResolved { finding_id, reason } => {
                let p: [Value; 2] = [host.into(), finding_id.as_str().into()];
                let cur = c.query(
                    "SELECT state, updated_at, agent_key, agent_seq, finding FROM findings WHERE host = $1 AND id = $2",
                    &p,
                )?;
                let Some(cur) = cur.first() else { continue };
                if order.is_before(&cur[2].text(), cur[3].int(), cur[1].int()) {
                    continue; // a late, stale event: the finding has moved on
                }
                c.exec(
                    "UPDATE findings SET state = 'resolved', state_reason = $3, state_changed_at = $4, updated_at = $5, \
                     agent_key = $6, agent_seq = $7 WHERE host = $1 AND id = $2",
                    &[
                        host.into(),
                        finding_id.as_str().into(),
                        reason.as_str().into(),
                        received.into(),
                        at.into(),
                        order.agent.as_str().into(),
                        order.seq_value().into(),
                    ],
                )?;
                if let Some(n) = unresolved.as_mut() {
                    if cur[0].text() != "resolved" {
                        *n = n.saturating_sub(1);
                    }
                }
                history(c, host, finding_id, at, &seq, "resolved", reason)?;
                if cur[0].text() != "resolved" {
                    pending.push(PendingEvent {
                        finding_id: finding_id.clone(),
                        activity: "resolved",
                        at,
                        finding: cur[4].text(),
                    });
                }
                out.findings_changed = true;
            }
            EventKind::Heartbeat {} | EventKind::Stopping { .. } => {}
        }
    }
    out.finding_events = record_finding_events(c, host, pending, received)?;
    Ok(out)
}

/// Stores a report's finding transitions for SIEMs, numbered from the
/// `finding_events` counter. The counter's row stays locked until this
/// transaction commits (PostgreSQL: other writers and replicas wait on it;
/// SQLite has one writer), so a reader that sees id N sees every id below
/// it that will ever exist: a cursor never skips a late commit.
fn record_finding_events(c: &mut dyn Conn, host: &str, pending: Vec<PendingEvent>, received: u64) -> Result<Vec<FindingEvent>, DbError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let n = pending.len() as i64;
    c.exec(
        "UPDATE counters SET value = value + $1 WHERE name = 'finding_events'",
        &[Value::Int(n)],
    )?;
    let last = c
        .query("SELECT value FROM counters WHERE name = 'finding_events'", &[])?
        .first()
        .map(|r| r[0].int())
        .ok_or_else(|| DbError::Other("the finding_events counter is missing".into()))?;
    let mut out = Vec::with_capacity(pending.len());
    for (i, p) in pending.into_iter().enumerate() {
        let id = last - n + 1 + i as i64;
        c.exec(
            "INSERT INTO finding_events (id, host, finding_id, activity, at, received_at, finding) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                Value::Int(id),
                host.into(),
                p.finding_id.as_str().into(),
                p.activity.into(),
                p.at.into(),
                received.into(),
                p.finding.as_str().into(),
            ],
        )?;
        out.push(FindingEvent {
            id: id as u64,
            host: crate::db::stored_text(host),
            finding_id: crate::db::stored_text(&p.finding_id),
            activity: p.activity.to_string(),
            at: p.at.min(i64::MAX as u64),
            finding: crate::db::stored_text(&p.finding),
        });
    }
    Ok(out)
}

fn history(c: &mut dyn Conn, host: &str, id: &str, at: u64, seq: &str, action: &str, detail: &str) -> Result<(), DbError> {
    c.exec(
        "INSERT INTO history (host, finding_id, at, seq, action, detail) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[host.into(), id.into(), at.into(), seq.into(), action.into(), detail.into()],
    )?;
    Ok(())
}

/// Where an event stands among its finding's events. Event ids are
/// `AGENT:SEQ`, numbered by the agent's spool in the order things
/// happened: two events from the same agent run are ordered by that number,
/// whatever their clocks say (a host whose clock jumps, or events clamped
/// to the collector's ceiling, keep their order). Across agent runs (a new
/// agent id: the spool was wiped or the agent reinstalled), or for ids not
/// of that form, the clamped times decide.
struct Order {
    agent: String,
    seq: Option<u64>,
    at: u64,
}

impl Order {
    fn of(agent_id: &str, event_id: &str, at: u64) -> Order {
        let seq = event_id
            .rsplit_once(':')
            .filter(|(a, _)| *a == agent_id)
            .and_then(|(_, n)| n.parse::<u64>().ok())
            .filter(|n| *n > 0 && *n <= i64::MAX as u64);
        Order {
            agent: if seq.is_some() { agent_id.to_string() } else { String::new() },
            seq,
            at,
        }
    }

    /// The stored value of `agent_seq` (0: none).
    fn seq_value(&self) -> u64 {
        self.seq.unwrap_or(0)
    }

    /// True when the stored state (written by `agent`'s event `seq`, dated
    /// `at`) is newer than this event.
    fn is_before(&self, agent: &str, seq: i64, at: i64) -> bool {
        match self.seq {
            Some(mine) if seq > 0 && agent == self.agent => (mine as i64) < seq,
            _ => at > Value::from(self.at).int(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_finding(
    c: &mut dyn Conn,
    host: &str,
    f: &Finding,
    order: &Order,
    ceiling: u64,
    received: u64,
    seq: &str,
    pending: &mut Vec<PendingEvent>,
) -> Result<bool, DbError> {
    let id = f.id.as_str();
    let at = order.at;
    let cur = c.query(
        "SELECT state, state_reason, state_changed_at, updated_at, severity, agent_key, agent_seq, finding FROM findings \
         WHERE host = $1 AND id = $2",
        &[host.into(), id.into()],
    )?;
    let new_severity = f.severity.as_str();
    let mut detail = format!("{} with {} evidence", f.severity, f.evidence.len());
    let (state, reason, changed_at, action) = match cur.first() {
        None => ("open".to_string(), String::new(), received, "opened"),
        Some(r) if order.is_before(&r[5].text(), r[6].int(), r[3].int()) => {
            // Stale: newer content is stored already. Keep it in the history only.
            history(c, host, id, at, seq, "updated", "older than the stored state; ignored")?;
            return Ok(false);
        }
        Some(r) if r[0].text() == "resolved" => ("open".to_string(), String::new(), received, "reopened"),
        // A rise in severity undoes an analyst's acknowledgement or
        // suppression: what they judged is no longer what the host shows.
        Some(r)
            if matches!(r[0].text().as_str(), "acknowledged" | "suppressed")
                && severity_rank(new_severity) > severity_rank(&r[4].text()) =>
        {
            detail = format!(
                "severity rose from {} to {new_severity} while {} ({}); {detail}",
                r[4].text(),
                r[0].text(),
                r[1].text()
            );
            ("open".to_string(), format!("severity rose to {new_severity}"), received, "reopened")
        }
        Some(r) => (r[0].text(), r[1].text(), r[2].int() as u64, "updated"),
    };
    let labels = labels_of(f);
    let json = serde_json::to_string(f).unwrap_or_else(|_| "{}".into());
    // What a SIEM hears: opened (or reopened after it resolved), updated
    // when severity or evidence changed; not a repeat of the same content.
    let siem = match (action, cur.first()) {
        ("opened", _) => Some("opened"),
        ("reopened", Some(r)) if r[0].text() == "resolved" => Some("opened"),
        ("reopened", _) => Some("updated"),
        (_, Some(r)) => {
            let old: serde_json::Value = serde_json::from_str(&r[7].text()).unwrap_or_default();
            let new = serde_json::to_value(f).unwrap_or_default();
            (old.get("severity") != new.get("severity") || old.get("evidence") != new.get("evidence")).then_some("updated")
        }
        _ => None,
    };
    if let Some(activity) = siem {
        pending.push(PendingEvent {
            finding_id: id.to_string(),
            activity,
            at,
            finding: json.clone(),
        });
    }
    c.exec(
        "INSERT INTO findings (host, id, severity, state, state_reason, state_changed_at, process, exe, rule, pool, \
         finding, first_seen, last_seen, updated_at, agent_key, agent_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (host, id) DO UPDATE SET severity = excluded.severity, state = excluded.state, \
         state_reason = excluded.state_reason, state_changed_at = excluded.state_changed_at, process = excluded.process, \
         exe = excluded.exe, rule = excluded.rule, pool = excluded.pool, finding = excluded.finding, \
         last_seen = excluded.last_seen, updated_at = excluded.updated_at, agent_key = excluded.agent_key, \
         agent_seq = excluded.agent_seq",
        &[
            host.into(),
            id.into(),
            f.severity.as_str().into(),
            state.into(),
            reason.into(),
            changed_at.into(),
            labels.process.into(),
            f.process.exe.as_str().into(),
            labels.rule.into(),
            labels.pool.into(),
            json.into(),
            f.first_seen.min(ceiling).into(),
            f.last_seen.min(ceiling).max(at).into(),
            at.into(),
            order.agent.as_str().into(),
            order.seq_value().into(),
        ],
    )?;
    c.exec(
        "DELETE FROM finding_keys WHERE host = $1 AND finding_id = $2",
        &[host.into(), id.into()],
    )?;
    for (kind, value) in finding_keys(f) {
        c.exec(
            "INSERT INTO finding_keys (host, finding_id, kind, value) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[host.into(), id.into(), kind.into(), value.into()],
        )?;
    }
    history(c, host, id, at, seq, action, &detail)?;
    Ok(true)
}
