//! The storage seam: one [`Backend`] trait, two implementations (SQLite and
//! PostgreSQL), and one [`Conn`] trait that all queries are written against.
//!
//! Why this shape: both databases run the *same* SQL text (the schema and
//! every statement use only what SQLite and PostgreSQL share: `$N`
//! parameters, `BIGINT`/`TEXT`, `ON CONFLICT`), and the fleet logic in
//! `store.rs` is written once over [`Conn`]. Each backend only owns how a
//! connection is opened, where a job runs (a writer thread that batches
//! SQLite transactions, a pool of PostgreSQL connections) and how rows come
//! back. The same test suite runs against both.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

mod pg_tls;

/// A database error, with the backend's message.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// Something else (a closed queue, a conflict the logic detected).
    #[error("{0}")]
    Other(String),
}

fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// Text as stored: NUL, which PostgreSQL's TEXT cannot hold, becomes U+FFFD
/// in both backends (parameters for writes and for lookups alike), so both
/// store and find exactly the same strings.
fn clean(t: &str) -> std::borrow::Cow<'_, str> {
    if t.contains('\0') {
        std::borrow::Cow::Owned(t.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// A text as either backend stores it (and so as it reads back).
pub fn stored_text(t: &str) -> String {
    clean(t).into_owned()
}

impl DbError {
    /// True for errors worth retrying the whole transaction (PostgreSQL
    /// deadlock or serialization failure between concurrent writers).
    fn retryable(&self) -> bool {
        match self {
            DbError::Postgres(e) => matches!(e.code().map(|c| c.code()), Some("40P01") | Some("40001") | Some("23505")),
            _ => false,
        }
    }
}

/// A column or parameter value. Only integers and text cross the seam.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL (only ever read, never bound).
    Null,
    /// BIGINT.
    Int(i64),
    /// TEXT.
    Text(String),
}

impl Value {
    /// The integer, or 0.
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(i) => *i,
            Value::Text(t) => t.parse().unwrap_or(0),
            Value::Null => 0,
        }
    }
    /// The text, or "".
    pub fn text(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            Value::Int(i) => i.to_string(),
            Value::Null => String::new(),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v.min(i64::MAX as u64) as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

/// A result row.
pub type Row = Vec<Value>;

/// One open transaction on either database.
pub trait Conn {
    /// Runs a statement; returns the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
}

/// The schema, valid SQL for both SQLite and PostgreSQL.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL DEFAULT 0,
    host TEXT NOT NULL DEFAULT '',
    bound_at BIGINT NOT NULL DEFAULT 0,
    allow_reenrol BIGINT NOT NULL DEFAULT 0,
    enrolled_by TEXT NOT NULL DEFAULT '',
    prev_hash TEXT NOT NULL DEFAULT '',
    prev_until BIGINT NOT NULL DEFAULT 0,
    rotated_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    agent_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    host TEXT NOT NULL,
    at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, event_id)
);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    signatures_version TEXT NOT NULL,
    sensors TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    reports BIGINT NOT NULL,
    stopped_at BIGINT NOT NULL DEFAULT 0,
    stop_reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS findings (
    host TEXT NOT NULL,
    id TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    state_changed_at BIGINT NOT NULL,
    process TEXT NOT NULL,
    exe TEXT NOT NULL,
    rule TEXT NOT NULL,
    pool TEXT NOT NULL,
    finding TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    agent_key TEXT NOT NULL DEFAULT '',
    agent_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (host, id)
);
CREATE INDEX IF NOT EXISTS findings_state ON findings (state);
CREATE INDEX IF NOT EXISTS findings_host_state ON findings (host, state);
CREATE TABLE IF NOT EXISTS history (
    host TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    seq TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (host, finding_id, seq)
);
CREATE TABLE IF NOT EXISTS finding_keys (
    host TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (host, finding_id, kind, value)
);
CREATE INDEX IF NOT EXISTS finding_keys_value ON finding_keys (kind, value);
CREATE TABLE IF NOT EXISTS fleet_indicators (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    coin TEXT NOT NULL,
    taught_host TEXT NOT NULL,
    taught_finding TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    hits BIGINT NOT NULL DEFAULT 0,
    revoked_at BIGINT NOT NULL DEFAULT 0,
    revoked_by TEXT NOT NULL DEFAULT '',
    expired_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS fleet_indicators_teacher ON fleet_indicators (taught_host, first_seen);
CREATE TABLE IF NOT EXISTS fleet_hits (
    indicator TEXT NOT NULL,
    host TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (indicator, host, finding_id)
);
CREATE TABLE IF NOT EXISTS fleet_files (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_meta (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO fleet_meta (name, value) VALUES ('version', 1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS finding_events (
    id BIGINT PRIMARY KEY,
    host TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    activity TEXT NOT NULL,
    at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    finding TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS finding_events_received ON finding_events (received_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('finding_events', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS host_config (
    host TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    state TEXT NOT NULL,
    changes TEXT NOT NULL,
    alert BIGINT NOT NULL,
    PRIMARY KEY (host, seq)
);
CREATE INDEX IF NOT EXISTS host_config_alert ON host_config (alert, at);
"#;

/// Columns added after the first release: `(table, column, definition)`,
/// added to an existing database when missing (both backends).
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("tokens", "host", "TEXT NOT NULL DEFAULT ''"),
    ("tokens", "bound_at", "BIGINT NOT NULL DEFAULT 0"),
    ("tokens", "allow_reenrol", "BIGINT NOT NULL DEFAULT 0"),
    ("tokens", "enrolled_by", "TEXT NOT NULL DEFAULT ''"),
    ("tokens", "prev_hash", "TEXT NOT NULL DEFAULT ''"),
    ("tokens", "prev_until", "BIGINT NOT NULL DEFAULT 0"),
    ("tokens", "rotated_at", "BIGINT NOT NULL DEFAULT 0"),
    ("findings", "agent_key", "TEXT NOT NULL DEFAULT ''"),
    ("findings", "agent_seq", "BIGINT NOT NULL DEFAULT 0"),
    ("hosts", "stopped_at", "BIGINT NOT NULL DEFAULT 0"),
    ("hosts", "stop_reason", "TEXT NOT NULL DEFAULT ''"),
];

/// A job's type-erased result.
pub type JobResult = Result<Box<dyn Any + Send>, DbError>;
type JobFn = dyn FnMut(&mut dyn Conn) -> JobResult + Send;

/// A unit of work with its result, type-erased so that one queue serves
/// every kind of job. `run` may be called again after a retryable error.
pub struct Job {
    run: Box<JobFn>,
    reply: tokio::sync::oneshot::Sender<JobResult>,
}

/// Runs a job's closure; a panic inside it (a bug, never input) fails that
/// job instead of killing the writer thread that serves every job.
fn run_guarded(run: &mut JobFn, c: &mut dyn Conn) -> JobResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(c)))
        .unwrap_or_else(|_| Err(DbError::Other("internal error while storing (see the log)".into())))
}

impl Job {
    /// Wraps a closure; the receiver yields its result after commit.
    pub fn new<T: Send + 'static>(
        mut f: impl FnMut(&mut dyn Conn) -> Result<T, DbError> + Send + 'static,
    ) -> (Job, tokio::sync::oneshot::Receiver<JobResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            run: Box::new(move |c| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>)),
            reply: tx,
        };
        (job, rx)
    }
}

/// Where jobs run. Two implementations: [`Sqlite`] and [`Postgres`].
pub trait Backend: Send + Sync {
    /// Queues a job that writes; it runs inside a transaction and its reply
    /// is sent after that transaction commits.
    fn write(&self, job: Job);
    /// Runs a job that only reads.
    fn read(&self, job: Job);
    /// "sqlite" or "postgres".
    fn name(&self) -> &'static str;
}

// ---------------------------------------------------------------- SQLite

struct SqliteConn<'a>(&'a rusqlite::Connection);

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(clean(t).into_owned()),
    }
}

/// Binds `$N` by name: SQLite numbers named parameters in order of first
/// appearance, so `SET a = $2 WHERE b = $1` must not be bound by position.
fn bind(st: &mut rusqlite::Statement<'_>, params: &[Value]) -> Result<(), DbError> {
    for (i, v) in params.iter().enumerate() {
        if let Some(idx) = st.parameter_index(&format!("${}", i + 1))? {
            st.raw_bind_parameter(idx, to_sql(v))?;
        }
    }
    Ok(())
}

impl Conn for SqliteConn<'_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let mut st = self.0.prepare_cached(sql)?;
        bind(&mut st, params)?;
        Ok(st.raw_execute()? as u64)
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut st = self.0.prepare_cached(sql)?;
        let cols = st.column_count();
        bind(&mut st, params)?;
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(cols);
            for i in 0..cols {
                row.push(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
                    rusqlite::types::ValueRef::Real(f) => Value::Int(f as i64),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(row);
        }
        Ok(out)
    }
}

/// SQLite in WAL mode: one writer thread that commits queued jobs in
/// batches (one transaction, one savepoint per job), and a few reader
/// connections.
pub struct Sqlite {
    writer: Mutex<mpsc::Sender<Job>>,
    readers: Arc<Vec<Mutex<rusqlite::Connection>>>,
    next: AtomicUsize,
}

fn sqlite_open(path: &Path) -> Result<rusqlite::Connection, DbError> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

impl Sqlite {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path, max_batch: usize) -> Result<Sqlite, DbError> {
        let mut w = sqlite_open(path)?;
        // The columns first (an old database's tables lack them), then the schema.
        for (table, col, def) in ADDED_COLUMNS {
            let exists: bool = w
                .prepare(&format!("PRAGMA table_info({table})"))?
                .query_map([], |r| r.get::<_, String>(1))?
                .flatten()
                .collect::<Vec<_>>()
                .iter()
                .any(|c| c == col);
            let table_exists: bool = w
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)?;
            if table_exists && !exists {
                w.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {def}"))?;
            }
        }
        w.execute_batch(SCHEMA)?;
        let readers = (0..4).map(|_| sqlite_open(path).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || sqlite_writer(&mut w, rx, max_batch.max(1)))
            .map_err(|e| DbError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(Sqlite {
            writer: Mutex::new(tx),
            readers: Arc::new(readers),
            next: AtomicUsize::new(0),
        })
    }
}

fn sqlite_writer(conn: &mut rusqlite::Connection, rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let mut tx = conn.transaction()?;
            for job in batch.iter_mut() {
                let sp = tx.savepoint()?;
                let r = run_guarded(&mut *job.run, &mut SqliteConn(&sp));
                if r.is_ok() {
                    sp.commit()?;
                } // else: dropping the savepoint rolls it back
                results.push(r);
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                for (job, r) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(DbError::Other(format!("sqlite commit failed: {msg}"))));
                }
            }
        }
    }
}

impl Backend for Sqlite {
    fn write(&self, job: Job) {
        let tx = self.writer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            let _ = job.reply.send(Err(DbError::Other("the database writer has stopped".into())));
        }
    }
    fn read(&self, mut job: Job) {
        let readers = self.readers.clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let n = readers.len();
            let guard = (0..n)
                .find_map(|i| readers[(start + i) % n].try_lock().ok())
                .unwrap_or_else(|| readers[start % n].lock().unwrap_or_else(|p| p.into_inner()));
            let r = (|| {
                let tx = guard.unchecked_transaction()?;
                let r = run_guarded(&mut *job.run, &mut SqliteConn(&tx));
                drop(tx);
                r
            })();
            let _ = job.reply.send(r);
        });
    }
    fn name(&self) -> &'static str {
        "sqlite"
    }
}

// ------------------------------------------------------------ PostgreSQL

/// Prepared statements of one connection, by SQL text (a prepare is a
/// round trip; the statements are a small fixed set).
type StmtCache = std::collections::HashMap<String, postgres::Statement>;

struct PgConn<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    cache: &'a mut StmtCache,
}

impl PgConn<'_, '_> {
    fn stmt(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.cache.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl Conn for PgConn<'_, '_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let p = pg_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = p.iter().map(|b| b.as_ref()).collect();
        let st = self.stmt(sql)?;
        Ok(self.tx.execute(&st, &refs)?)
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        use postgres::types::Type;
        let p = pg_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = p.iter().map(|b| b.as_ref()).collect();
        let st = self.stmt(sql)?;
        let rows = self.tx.query(&st, &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, c) in r.columns().iter().enumerate() {
                let v = match *c.type_() {
                    Type::INT8 => r.get::<_, Option<i64>>(i).map(Value::Int),
                    Type::INT4 => r.get::<_, Option<i32>>(i).map(|v| Value::Int(v as i64)),
                    Type::INT2 => r.get::<_, Option<i16>>(i).map(|v| Value::Int(v as i64)),
                    Type::BOOL => r.get::<_, Option<bool>>(i).map(|v| Value::Int(v as i64)),
                    _ => r.get::<_, Option<String>>(i).map(Value::Text),
                };
                row.push(v.unwrap_or(Value::Null));
            }
            out.push(row);
        }
        Ok(out)
    }
}

fn pg_params(params: &[Value]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
            match v {
                Value::Int(i) => Box::new(*i),
                Value::Text(t) => Box::new(clean(t).into_owned()),
                Value::Null => Box::new(Option::<String>::None),
            }
        })
        .collect()
}

/// PostgreSQL: a few writer threads sharing one queue (each commits what
/// is queued in one transaction, retried on deadlock), and a pool of
/// reader connections. Any number
/// of collector replicas may share the database.
pub struct Postgres {
    writer: Mutex<mpsc::Sender<Job>>,
    readers: Arc<Vec<Mutex<(postgres::Client, StmtCache)>>>,
    next: AtomicUsize,
}

impl Postgres {
    /// Connects (`postgres://user@host:port/db`, with libpq's `sslmode`
    /// and `sslrootcert`; `ca_file` is the CA when the URL names none) and
    /// creates the schema.
    pub fn open(url: &str, ca_file: Option<&Path>, writers: usize, max_batch: usize) -> Result<Postgres, DbError> {
        let target = pg_tls::Target::parse(url, ca_file)?;
        // The blocking client runs its own small runtime: connect from a
        // plain thread, never from inside the caller's async context.
        std::thread::spawn(move || Postgres::open_here(&target, writers, max_batch.max(1)))
            .join()
            .map_err(|_| DbError::Other("the PostgreSQL connect thread panicked".into()))?
    }

    fn open_here(target: &pg_tls::Target, writers: usize, max_batch: usize) -> Result<Postgres, DbError> {
        let connect = || target.connect();
        let mut first = connect()?;
        target.log_protection(&mut first);
        // Several replicas may start at once: serialise schema creation.
        let mut tx = first.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(4242)", &[])?;
        for (table, col, def) in ADDED_COLUMNS {
            tx.batch_execute(&format!("ALTER TABLE IF EXISTS {table} ADD COLUMN IF NOT EXISTS {col} {def}"))?;
        }
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        let readers = (0..4)
            .map(|_| connect().map(|c| Mutex::new((c, StmtCache::new()))))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..writers.max(1) {
            let mut client = if i == 0 {
                std::mem::replace(&mut first, connect()?)
            } else {
                connect()?
            };
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pg-writer-{i}"))
                .spawn(move || {
                    let mut cache = StmtCache::new();
                    loop {
                        let batch = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            let Ok(first) = rx.recv() else { break };
                            let mut batch = vec![first];
                            while batch.len() < max_batch {
                                match rx.try_recv() {
                                    Ok(j) => batch.push(j),
                                    Err(_) => break,
                                }
                            }
                            batch
                        };
                        pg_run_batch(&mut client, &mut cache, batch);
                    }
                })
                .map_err(|e| DbError::Other(format!("cannot start a writer thread: {e}")))?;
        }
        Ok(Postgres {
            writer: Mutex::new(tx),
            readers: Arc::new(readers),
            next: AtomicUsize::new(0),
        })
    }
}

/// Runs queued jobs in one transaction (one commit for many reports); if
/// any job fails, runs each on its own so one bad job fails alone.
fn pg_run_batch(client: &mut postgres::Client, cache: &mut StmtCache, mut batch: Vec<Job>) {
    if batch.len() > 1 {
        for attempt in 1..=5u64 {
            let r = (|| -> Result<Vec<Box<dyn Any + Send>>, DbError> {
                let mut tx = client.transaction()?;
                let mut out = Vec::with_capacity(batch.len());
                for job in batch.iter_mut() {
                    out.push(run_guarded(&mut *job.run, &mut PgConn { tx: &mut tx, cache })?);
                }
                tx.commit()?;
                Ok(out)
            })();
            match r {
                Ok(results) => {
                    for (job, v) in batch.into_iter().zip(results) {
                        let _ = job.reply.send(Ok(v));
                    }
                    return;
                }
                Err(e) if e.retryable() => std::thread::sleep(Duration::from_millis(2 * attempt)),
                Err(_) => break,
            }
        }
    }
    for mut job in batch {
        let r = pg_run(client, cache, &mut job);
        let _ = job.reply.send(r);
    }
}

fn pg_run(client: &mut postgres::Client, cache: &mut StmtCache, job: &mut Job) -> Result<Box<dyn Any + Send>, DbError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = (|| -> Result<Box<dyn Any + Send>, DbError> {
            let mut tx = client.transaction()?;
            let v = run_guarded(&mut *job.run, &mut PgConn { tx: &mut tx, cache })?;
            tx.commit()?;
            Ok(v)
        })();
        match r {
            Err(e) if e.retryable() && attempt < 5 => std::thread::sleep(Duration::from_millis(5 * attempt)),
            r => return r,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing a blocking client blocks: never do it on an async thread.
        let readers = std::mem::replace(&mut self.readers, Arc::new(Vec::new()));
        let _ = std::thread::spawn(move || drop(readers));
    }
}

impl Backend for Postgres {
    fn write(&self, job: Job) {
        let tx = self.writer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            let _ = job.reply.send(Err(DbError::Other("the database writers have stopped".into())));
        }
    }
    fn read(&self, mut job: Job) {
        let readers = self.readers.clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let n = readers.len();
            let mut guard = (0..n)
                .find_map(|i| readers[(start + i) % n].try_lock().ok())
                .unwrap_or_else(|| readers[start % n].lock().unwrap_or_else(|p| p.into_inner()));
            let (client, cache) = &mut *guard;
            let r = (|| {
                let mut tx = client.build_transaction().read_only(true).start()?;
                let r = run_guarded(&mut *job.run, &mut PgConn { tx: &mut tx, cache });
                tx.commit()?;
                r
            })();
            let _ = job.reply.send(r);
        });
    }
    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// Opens the backend a `--database` value names: `postgres://…` or
/// `postgresql://…` for PostgreSQL, otherwise a SQLite file path
/// (`sqlite://PATH` or a bare path).
pub fn open(database: &str) -> Result<Arc<dyn Backend>, DbError> {
    open_with(database, None)
}

/// [`open`], with the CA that signs PostgreSQL's certificate when the URL
/// names no `sslrootcert` (`database_ca_file`).
pub fn open_with(database: &str, ca_file: Option<&Path>) -> Result<Arc<dyn Backend>, DbError> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        Ok(Arc::new(Postgres::open(database, ca_file, 4, 64)?))
    } else {
        let path = database.strip_prefix("sqlite://").unwrap_or(database);
        Ok(Arc::new(Sqlite::open(Path::new(path), 512)?))
    }
}
