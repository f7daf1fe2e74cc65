//! Ships the spool to the collector: batches of unacknowledged events as a
//! versioned [`Report`], `POST /api/v1/reports` with a bearer token over TLS
//! (a configurable CA), acknowledged in the spool only on a 2xx answer, and
//! retried with exponential backoff (1 s doubling to 60 s) otherwise.
//!
//! A batch the collector will not take for its size or shape (400, 413,
//! 422) is split in halves until the event it chokes on is alone; that one
//! is sent again in ever smaller forms ([`TRIM_BYTES`]: bounded evidence,
//! shortened strings, a `trimmed` evidence item saying so), so every finding
//! reaches the collector in some form. Only when even the smallest form is
//! refused is the batch kept beside the spool and counted
//! (`rigwatch_shipper_rejected_batches_total`). Every step is bounded: at
//! most log2(batch size) splits and [`TRIM_BYTES`]`.len()` forms per event.
//!
//! The collector's other refusals leave the events in the spool: a 429 is
//! waited out for its `Retry-After` (at most [`MAX_RETRY_AFTER`]); a 401 or
//! 403 (a revoked token, or one bound to another host) is logged once,
//! counted every time (`rigwatch_shipper_auth_refused_total`) and retried
//! with a back-off growing to [`MAX_AUTH_BACKOFF`].
//!
//! With a fleet enrolment token instead of a token (`enrol_token_file`),
//! the shipper first exchanges it (`POST /api/v1/enrol` with the host name)
//! for a token bound to this host, saved 0600 as [`HOST_TOKEN_FILE`] in the
//! spool directory and reused at every start; it is never logged.

use super::config::CollectorConfig;
use super::events::{
    BatchRejected, ComponentError, DeliveryFailed, DeliveryRateLimited, DeliveryUnauthorized, EnrolFailed, HostEnrolled, InternalEvent,
    SpoolWriteError,
};
use super::Shared;
use rigwatch_signatures::model::MAX_FINDING_BYTES;
use rigwatch_signatures::report::{AgentInfo, Event, EventKind, Report, REPORT_VERSION};
use std::sync::Arc;
use std::time::Duration;

/// The HTTP client for the collector (its CA, no redirects).
pub(super) fn client(cfg: &CollectorConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // a redirect is not followed: it could carry the token (and the
        // findings) to another address, or down to plain http
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rigwatch/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("collector CA {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

/// The sizes a finding is cut down to, one after the other, when the
/// collector refuses the event alone; every batch is sent with findings
/// within the first (spool lines from an older agent may be larger).
pub const TRIM_BYTES: [usize; 4] = [MAX_FINDING_BYTES, 16 * 1024, 4 * 1024, 1024];

/// Longest reason string of a resolved finding in its smallest form.
const MAX_REASON_BYTES: usize = 256;

/// An event in the form the collector gets at trim level `level` (an index
/// into [`TRIM_BYTES`]): findings bounded, long reasons cut.
pub fn trimmed(mut e: Event, level: usize) -> Event {
    let max = TRIM_BYTES[level.min(TRIM_BYTES.len() - 1)];
    match &mut e.kind {
        EventKind::FindingOpened { finding } | EventKind::FindingUpdated { finding } => {
            finding.bound(max);
        }
        EventKind::FindingResolved { reason, .. } if level > 0 && reason.len() > MAX_REASON_BYTES => {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        _ => {}
    }
    e
}

/// What to send next after a refusal: a narrower batch over the refused
/// range, then a smaller form of a lone event.
#[derive(Debug, Default, PartialEq)]
pub struct Narrowing {
    /// Batches hold at most this many events up to sequence `until`.
    size: Option<(u64, usize)>,
    /// The lone event `seq` is sent at this trim level.
    trim: Option<(u64, usize)>,
}

/// What to do with a batch the collector refused for its size or shape.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Send again, narrower or smaller.
    Retry,
    /// Even the smallest form of a lone event is refused: keep it aside.
    GiveUp,
}

impl Narrowing {
    /// How many of `pending` (first sequence `first`) to send, and at which trim level.
    pub fn plan(&mut self, first: u64, max: usize) -> (usize, usize) {
        let n = match self.size {
            Some((until, n)) if first <= until => n.min(max),
            _ => {
                self.size = None;
                max
            }
        };
        let level = match self.trim {
            Some((seq, level)) if seq == first && n == 1 => level,
            _ => {
                self.trim = None;
                0
            }
        };
        (n, level)
    }

    /// The collector refused `len` events `first..=last` sent at trim `level`.
    pub fn refused(&mut self, first: u64, last: u64, len: usize, level: usize) -> Refused {
        if len > 1 {
            self.size = Some((last, len / 2));
            return Refused::Retry;
        }
        if level + 1 < TRIM_BYTES.len() {
            self.trim = Some((first, level + 1));
            return Refused::Retry;
        }
        self.trim = None;
        Refused::GiveUp
    }
}

/// Longest wait a collector's `Retry-After` may impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Longest back-off after the collector refused the token.
pub const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(300);
/// The file in the spool directory that keeps the token from an enrolment.
pub const HOST_TOKEN_FILE: &str = "collector-token";

/// How long to wait after a 429: the collector's `Retry-After` in seconds,
/// at least 1 s and at most [`MAX_RETRY_AFTER`]; `fallback` (bounded the
/// same way) when it is missing or not a number of seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap, fallback: Duration) -> Duration {
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(fallback);
    secs.clamp(Duration::from_secs(1), MAX_RETRY_AFTER)
}

/// The token an enrolment gave this agent, as kept in [`HOST_TOKEN_FILE`].
/// No `Debug`: the token must not reach a log line.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedToken {
    host: String,
    collector: String,
    name: String,
    token: String,
}

/// The saved token, when it was given for this host by this collector.
fn load_saved(dir: &std::path::Path, host: &str, collector: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(dir.join(HOST_TOKEN_FILE))
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    let saved: SavedToken = serde_json::from_str(&text).ok()?;
    (saved.host == host && saved.collector == collector && !saved.token.is_empty()).then_some(saved.token)
}

/// Writes [`HOST_TOKEN_FILE`] (mode 0600, replaced atomically).
fn save(dir: &std::path::Path, saved: &SavedToken) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    let path = dir.join(HOST_TOKEN_FILE);
    let tmp = dir.join(format!("{HOST_TOKEN_FILE}.tmp"));
    // a fresh file, so that its mode is 0600 whatever an old one had
    let _ = std::fs::remove_file(&tmp);
    let mut f = super::spool::create_private(&tmp)?;
    f.write_all(&serde_json::to_vec(saved).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// The first line of the enrolment token file (at most 4 KiB read).
fn read_enrol_token(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(4096).read_to_string(&mut text)?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(std::io::Error::other("empty"));
    }
    Ok(t)
}

/// What one enrolment attempt gave.
enum Enrolment {
    /// The host's own token and its name on the collector.
    Token { name: String, token: String },
    /// Try again after this long; `kind` tells failures apart for logging
    /// (one line per kind in a row); `auth`: the enrolment token was refused.
    Wait {
        why: String,
        after: Duration,
        kind: String,
        auth: bool,
    },
}

/// An error and its causes on one line ("error sending request …: …:
/// invalid peer certificate: UnknownIssuer"), so that a refused
/// certificate or a refused connection says so in the log.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// A collector's answer text, bounded and on one line.
fn reason(text: &str) -> String {
    let one: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect();
    one
}

async fn enrol_once(http: &reqwest::Client, url: &str, file: &std::path::Path, host: &str, backoff: Duration) -> Enrolment {
    let secret = match read_enrol_token(file) {
        Ok(t) => t,
        Err(e) => {
            return Enrolment::Wait {
                why: format!("enrolment token file {}: {e}", file.display()),
                after: backoff,
                kind: "file".into(),
                auth: false,
            }
        }
    };
    let res = http
        .post(url)
        .bearer_auth(&secret)
        .json(&serde_json::json!({ "host": host }))
        .send()
        .await;
    let r = match res {
        Ok(r) => r,
        Err(e) => {
            return Enrolment::Wait {
                why: with_causes(&e),
                after: backoff,
                kind: "network".into(),
                auth: false,
            }
        }
    };
    let status = r.status().as_u16();
    if status == 429 {
        let after = retry_after(r.headers(), backoff);
        return Enrolment::Wait {
            why: "the collector asks to enrol later (429)".into(),
            after,
            kind: "429".into(),
            auth: false,
        };
    }
    let text = r.text().await.unwrap_or_default();
    let said = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|j| j["error"].as_str().map(reason))
        .unwrap_or_else(|| reason(&text));
    match status {
        200 | 201 => {
            let j: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let token = j["token"].as_str().unwrap_or("").to_string();
            let name = j["name"].as_str().map(reason).unwrap_or_default();
            if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Enrolment::Wait {
                    why: "the collector's enrolment answer holds no usable token".into(),
                    after: backoff,
                    kind: "answer".into(),
                    auth: false,
                };
            }
            Enrolment::Token { name, token }
        }
        409 => Enrolment::Wait {
            why: format!("the collector will not enrol host {host:?} again (409: {said})"),
            after: MAX_AUTH_BACKOFF,
            kind: "409".into(),
            auth: false,
        },
        401 | 403 => Enrolment::Wait {
            why: format!("the collector refuses the enrolment token ({status}: {said})"),
            after: backoff,
            kind: status.to_string(),
            auth: true,
        },
        _ => Enrolment::Wait {
            why: format!("collector answered {status}: {said}"),
            after: backoff,
            kind: status.to_string(),
            auth: false,
        },
    }
}

/// The token to ship with: `token` when set; else the one an enrolment
/// saved for this host; else a new one from enrolment (retried until it
/// succeeds, each kind of failure logged once in a row). `None` when
/// neither a token nor an enrolment token file is configured.
async fn host_token(cfg: &CollectorConfig, http: &reqwest::Client, shared: &Shared, host: &str) -> Option<String> {
    if !cfg.token.is_empty() {
        return Some(cfg.token.clone());
    }
    let file = cfg.enrol_token_file.as_ref()?;
    let base = cfg.url.trim_end_matches('/');
    if let Some(t) = load_saved(&cfg.spool_dir, host, base) {
        return Some(t);
    }
    let url = format!("{base}/api/v1/enrol");
    let mut backoff = Duration::from_secs(1);
    let mut logged: Option<String> = None;
    loop {
        match enrol_once(http, &url, file, host, backoff).await {
            Enrolment::Token { name, token } => {
                let saved = SavedToken {
                    host: host.to_string(),
                    collector: base.to_string(),
                    name,
                    token,
                };
                match save(&cfg.spool_dir, &saved) {
                    Ok(path) => HostEnrolled {
                        host,
                        name: &saved.name,
                        saved_in: &path,
                    }
                    .emit(&shared.metrics),
                    Err(e) => SpoolWriteError(format!(
                        "enrolled as {:?} but cannot save its token in {}: {e}; it is used until the agent stops",
                        saved.name,
                        cfg.spool_dir.display()
                    ))
                    .emit(&shared.metrics),
                }
                return Some(saved.token);
            }
            Enrolment::Wait { why, after, kind, auth } => {
                EnrolFailed {
                    url: &url,
                    error: why,
                    retry_in_s: after.as_secs(),
                    auth,
                    log: logged.as_deref() != Some(kind.as_str()),
                }
                .emit(&shared.metrics);
                logged = Some(kind);
                tokio::time::sleep(after).await;
                backoff = (backoff * 2).min(MAX_AUTH_BACKOFF);
            }
        }
    }
}

/// Runs forever.
pub async fn run(cfg: CollectorConfig, shared: Arc<Shared>, host: String) {
    let http = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            ComponentError {
                component: "shipper",
                error: e.to_string(),
            }
            .emit(&shared.metrics);
            return;
        }
    };
    let url = format!("{}/api/v1/reports", cfg.url.trim_end_matches('/'));
    let spool = shared.spool.as_ref().expect("the shipper runs only with a spool");
    let Some(token) = host_token(&cfg, &http, &shared, &host).await else {
        ComponentError {
            component: "shipper",
            error: "no collector token: set collector.token or collector.enrol_token_file".into(),
        }
        .emit(&shared.metrics);
        return;
    };
    *shared.collector_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
    let mut backoff = Duration::from_secs(1);
    let mut auth_backoff = Duration::from_secs(5);
    let mut auth_refused = false;
    let batch_size = cfg.batch_size.max(1);
    let mut narrow = Narrowing::default();
    loop {
        let (batch, agent_id) = {
            let s = spool.lock().unwrap_or_else(|e| e.into_inner());
            (s.pending(batch_size), s.agent_id().to_string())
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                SpoolWriteError(e.to_string()).emit(&shared.metrics);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), shared.wake.notified()).await;
            continue;
        }
        let first = batch[0].0;
        let (n, level) = narrow.plan(first, batch.len());
        batch.truncate(n);
        let last = batch[batch.len() - 1].0;
        let report = Report {
            version: REPORT_VERSION,
            batch_id: format!("{agent_id}:{first}"),
            agent: AgentInfo {
                agent_id,
                host: host.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                signatures_version: shared.signatures_version.lock().map(|v| v.clone()).unwrap_or_default(),
                sensors: shared.sensors.lock().map(|v| v.clone()).unwrap_or_default(),
                config: shared.config.lock().map(|v| v.clone()).unwrap_or_default(),
            },
            sent_at: crate::scan::unix_now(),
            events: batch.into_iter().map(|(_, e)| trimmed(e, level)).collect(),
        };
        let n = report.events.len() as u64;
        let res = http.post(&url).bearer_auth(&token).json(&report).send().await;
        match res {
            Ok(r) if r.status().is_success() => {
                auth_refused = false;
                auth_backoff = Duration::from_secs(5);
                let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.ack(last) {
                    SpoolWriteError(e.to_string()).emit(&shared.metrics);
                }
                shared.metrics.shipper_delivered.inc_by(n);
                shared.metrics.shipper_queue.set(s.queued() as i64);
                shared.metrics.spool_bytes.set(s.bytes() as i64);
                backoff = Duration::from_secs(1);
            }
            // rate limited: wait as told, then send the same batch again
            Ok(r) if r.status().as_u16() == 429 => {
                let wait = retry_after(r.headers(), backoff);
                DeliveryRateLimited {
                    url: &url,
                    retry_in_s: wait.as_secs(),
                }
                .emit(&shared.metrics);
                tokio::time::sleep(wait).await;
            }
            // the token is revoked or speaks for another host: keep every
            // event, say so once, try again now and then (an operator may
            // re-issue the token server-side)
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                let status = r.status().as_u16();
                let why = reason(&r.text().await.unwrap_or_default());
                DeliveryUnauthorized {
                    url: &url,
                    status,
                    reason: &why,
                    retry_in_s: auth_backoff.as_secs(),
                    log: !auth_refused,
                }
                .emit(&shared.metrics);
                auth_refused = true;
                tokio::time::sleep(auth_backoff).await;
                auth_backoff = (auth_backoff * 2).min(MAX_AUTH_BACKOFF);
            }
            // too large or malformed for the collector: narrower batches over
            // this range, then smaller forms of the event it chokes on
            Ok(r) if matches!(r.status().as_u16(), 400 | 413 | 422) => {
                let status = r.status();
                let why = r.text().await.unwrap_or_default();
                if narrow.refused(first, last, report.events.len(), level) == Refused::Retry {
                    DeliveryFailed {
                        url: &url,
                        error: format!(
                            "collector refused {n} events ({status}: {}); sending {}",
                            why.trim(),
                            if n > 1 { "smaller batches" } else { "a trimmed form" }
                        ),
                        retry_in_s: 0,
                    }
                    .emit(&shared.metrics);
                    continue;
                }
                // not even the smallest form: keep a copy beside the spool,
                // move on, so one bad event cannot block the rest
                let path = cfg.spool_dir.join(format!("rejected-{first}-{last}.json"));
                let _ = super::spool::create_private(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &serde_json::to_vec(&report).unwrap_or_default()));
                BatchRejected {
                    status: status.as_u16(),
                    reason: &why,
                    kept_in: &path,
                }
                .emit(&shared.metrics);
                let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.ack(last) {
                    SpoolWriteError(e.to_string()).emit(&shared.metrics);
                }
                shared.metrics.shipper_queue.set(s.queued() as i64);
            }
            other => {
                let why = match other {
                    Ok(r) => format!("collector answered {}", r.status()),
                    Err(e) => with_causes(&e),
                };
                DeliveryFailed {
                    url: &url,
                    error: why,
                    retry_in_s: backoff.as_secs(),
                }
                .emit(&shared.metrics);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector answering every request with a redirect to another
    /// listener: the agent's client must not follow it (the token and the
    /// findings would go wherever the answer points).
    #[test]
    fn redirects_are_not_followed() {
        use std::io::{Read, Write};
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let target = elsewhere.local_addr().unwrap();
        let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/reports", collector.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut c, _) = collector.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let answer = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{target}/steal\r\nContent-Length: 0\r\n\r\n");
            c.write_all(answer.as_bytes()).unwrap();
        });
        let http = client(&CollectorConfig::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async { http.post(&url).bearer_auth("rwc_secret").body("{}").send().await.unwrap().status() });
        server.join().unwrap();
        assert_eq!(status.as_u16(), 307, "the redirect is the answer, not followed");
        assert!(elsewhere.accept().is_err(), "nothing reached the redirect's target");
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            m
        };
        let fb = Duration::from_secs(4);
        assert_eq!(retry_after(&h("7"), fb), Duration::from_secs(7));
        assert_eq!(retry_after(&h(" 2 "), fb), Duration::from_secs(2));
        assert_eq!(retry_after(&h("0"), fb), Duration::from_secs(1), "never a tight loop");
        assert_eq!(retry_after(&h("86400"), fb), MAX_RETRY_AFTER, "bounded");
        assert_eq!(retry_after(&h("18446744073709551615"), fb), MAX_RETRY_AFTER);
        assert_eq!(retry_after(&h("Wed, 21 Oct 2015 07:28:00 GMT"), fb), fb);
        assert_eq!(retry_after(&h("-3"), fb), fb);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), fb), fb);
        assert_eq!(
            retry_after(&reqwest::header::HeaderMap::new(), Duration::ZERO),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_enrolled_token_is_saved_private_and_only_for_its_host() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(load_saved(d, "h1", "https://c").is_none());
        // an old file with loose permissions is replaced, not reused
        std::fs::write(d.join(HOST_TOKEN_FILE), "junk").unwrap();
        std::fs::set_permissions(d.join(HOST_TOKEN_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_saved(d, "h1", "https://c").is_none(), "junk is not a token");
        let saved = SavedToken {
            host: "h1".into(),
            collector: "https://c".into(),
            name: "k8s/h1".into(),
            token: "rwc_secret".into(),
        };
        let p = save(d, &saved).unwrap();
        assert_eq!(p, d.join(HOST_TOKEN_FILE));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!d.join(format!("{HOST_TOKEN_FILE}.tmp")).exists());
        assert_eq!(load_saved(d, "h1", "https://c").as_deref(), Some("rwc_secret"));
        assert!(load_saved(d, "h2", "https://c").is_none(), "another host name enrols anew");
        assert!(load_saved(d, "h1", "https://other").is_none(), "another collector too");
    }

    #[test]
    fn the_enrolment_token_file_is_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  rwc_abc  \nsecond line\n").unwrap();
        assert_eq!(read_enrol_token(&p).unwrap(), "rwc_abc");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_enrol_token(&p).is_err());
        std::fs::write(&p, "x".repeat(100_000)).unwrap();
        assert_eq!(read_enrol_token(&p).unwrap().len(), 4096);
        assert!(read_enrol_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn refusals_split_down_to_one_then_trim_then_give_up() {
        let mut n = Narrowing::default();
        // 8 events 1..=8, the collector chokes on event 3
        let bad = 3;
        let mut sent = Vec::new();
        let mut given_up = Vec::new();
        let mut next = 1u64;
        for _ in 0..100 {
            if next > 8 {
                break;
            }
            let (k, level) = n.plan(next, (9 - next) as usize);
            let last = next + k as u64 - 1;
            sent.push((next, last, level));
            let refused = (next..=last).contains(&bad) && (k > 1 || level < 3);
            if refused {
                if n.refused(next, last, k, level) == Refused::GiveUp {
                    given_up.push(next);
                    next = last + 1;
                }
            } else {
                next = last + 1;
            }
        }
        assert!(next > 8, "never loops forever: {sent:?}");
        assert!(given_up.is_empty(), "the smallest form went through: {sent:?}");
        assert_eq!(
            sent,
            vec![
                (1, 8, 0), // refused
                (1, 4, 0), // refused
                (1, 2, 0), // delivered
                (3, 4, 0), // refused
                (3, 3, 0), // refused alone: trimmed forms follow
                (3, 3, 1),
                (3, 3, 2),
                (3, 3, 3), // delivered
                (4, 4, 0), // the narrowed range ends at 4
                (5, 8, 0), // full batches again
            ]
        );
        // a lone event refused at every level is given up after the last one
        let mut n = Narrowing::default();
        let mut tries = 0;
        loop {
            let (k, level) = n.plan(5, 1);
            tries += 1;
            if n.refused(5, 5, k, level) == Refused::GiveUp {
                break;
            }
            assert!(tries < 10);
        }
        assert_eq!(tries, TRIM_BYTES.len());
        assert_eq!(n.plan(6, 10), (10, 0), "the next event starts afresh");
    }

    #[test]
    fn trimmed_forms_shrink_and_say_so() {
        use rigwatch_signatures::{Evidence, EvidenceKind, Finding, ProcessInfo, Weight};
        let ev = Evidence::heuristic(
            EvidenceKind::MinerConfig {
                path: "/c.json".into(),
                pools: (0..16).map(|i| format!("pool{i}.example:3333/{}", "x".repeat(200))).collect(),
                wallets: vec![],
                keys: vec!["donate-level".into()],
                sha256: None,
            },
            Weight::Likely,
        );
        let process = ProcessInfo {
            cmdline: "xmrig ".repeat(2000),
            ..Default::default()
        };
        let f = Finding::assess("h", process, vec![ev; 8], 1).unwrap();
        let e = Event {
            event_id: "a:1".into(),
            at: 1,
            kind: EventKind::FindingOpened { finding: f },
        };
        let size = |e: &Event| serde_json::to_vec(e).unwrap().len();
        let mut prev = size(&e);
        for level in 1..TRIM_BYTES.len() {
            let t = trimmed(e.clone(), level);
            let n = size(&t);
            assert!(n < prev, "level {level}: {n} >= {prev}");
            prev = n;
            let EventKind::FindingOpened { finding } = &t.kind else { panic!() };
            assert_eq!(finding.evidence.last().unwrap().kind(), "trimmed");
            assert_eq!(finding.evidence[0].kind(), "miner_config");
        }
        assert!(prev <= 1024 + 200, "the smallest form: {prev} bytes");
    }
}
