//! The HTTP service: report ingest, query API, `/metrics`, the web page.

pub use crate::app::{App, Session, SESSION_COOKIE};
use crate::store::{now, FindingFilter, Role};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rigwatch_signatures::model::MAX_FINDING_BYTES;
use rigwatch_signatures::report::{EventKind, Report};
use serde_json::json;

use std::sync::Arc;
use std::time::{Duration, Instant};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A JSON error response: `{"error": "..."}`.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// The router for an application, with the limits every request meets:
/// a time limit on the whole request (body included: a slow body is cut
/// off with 408), a cap on requests handled at once, and a body limit per
/// route (reports: `max_body_bytes`; everything else 64 KiB). Reports are
/// authenticated before their body is read.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.settings.max_body_bytes;
    let timeout = app.settings.request_timeout;
    let in_flight = app.settings.max_requests_in_flight;
    Router::new()
        .route("/api/v1/reports", post(post_report).layer(DefaultBodyLimit::max(limit)))
        .route("/api/v1/enrol", post(post_enrol).layer(DefaultBodyLimit::max(ENROL_BODY_BYTES)))
        .route("/api/v1/findings", get(api_findings))
        .route("/api/v1/findings/{host}/{id}", get(api_finding))
        .route("/api/v1/hosts", get(api_hosts))
        .route("/api/v1/hosts/{host}/config", get(api_host_config))
        .route("/api/v1/policy", get(api_policy))
        .route("/api/v1/campaigns", get(api_campaigns))
        .route("/api/v1/export", get(api_export))
        .route("/api/v1/fleet/signatures", get(fleet_signatures))
        .route("/api/v1/fleet/indicators", get(api_fleet_indicators))
        .route("/api/v1/fleet/indicators/{id}/revoke", post(api_fleet_revoke))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::web::routes())
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(in_flight))
        .with_state(app)
}

fn too_many(secs: u64, msg: &str) -> Response {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, msg);
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// `POST /api/v1/reports`. The token is checked (and the token's rate)
/// from the headers alone; only then is the body read, up to the route's
/// limit. A refused request's body is never read: the connection is closed
/// after the answer.
async fn post_report(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    let m = &app.metrics;
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let Some(token) = bearer(headers) else {
        m.reports.with_label_values(&["rejected_auth"]).inc();
        return error(StatusCode::UNAUTHORIZED, "missing bearer token (Authorization: Bearer TOKEN)");
    };
    let token_name = match app.store.token_lookup(token).await {
        Ok(Some((name, Role::Agent))) => name,
        Ok(Some((_, Role::Analyst))) => {
            m.reports.with_label_values(&["rejected_auth"]).inc();
            return error(StatusCode::FORBIDDEN, "an analyst token cannot send reports");
        }
        Ok(Some((_, Role::Enrol))) => {
            m.reports.with_label_values(&["rejected_auth"]).inc();
            return error(
                StatusCode::FORBIDDEN,
                "an enrolment token cannot send reports; exchange it for a host token (POST /api/v1/enrol)",
            );
        }
        Ok(None) => {
            m.reports.with_label_values(&["rejected_auth"]).inc();
            return error(StatusCode::UNAUTHORIZED, "unknown or revoked token");
        }
        Err(e) => {
            m.reports.with_label_values(&["error"]).inc();
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"));
        }
    };
    if let Err(secs) = app.report_limiter.take(&token_name) {
        m.reports.with_label_values(&["rejected_rate"]).inc();
        return too_many(secs, "too many reports for this token; retry after the given seconds");
    }
    let body = match Bytes::from_request(Request::from_parts(parts, body), &app).await {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            m.reports.with_label_values(&["rejected_too_large"]).inc();
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "report body larger than {} bytes; send smaller batches",
                    app.settings.max_body_bytes
                ),
            );
        }
        Err(e) => {
            m.reports.with_label_values(&["rejected_invalid"]).inc();
            return error(e.status(), format!("cannot read the body: {}", e.body_text()));
        }
    };
    let mut report = match Report::from_json(&body) {
        Ok(r) => r,
        Err(msg) => {
            m.reports.with_label_values(&["rejected_invalid"]).inc();
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    if report.agent.host.len() > 253 || report.agent.agent_id.len() > 256 {
        m.reports.with_label_values(&["rejected_invalid"]).inc();
        return error(StatusCode::BAD_REQUEST, "agent.host or agent.agent_id too long");
    }
    // CPU work on up to max_body_bytes of hostile JSON: off the async workers
    let Ok((report, trimmed)) = tokio::task::spawn_blocking(move || {
        let n = bound_findings(&mut report);
        (report, n)
    })
    .await
    else {
        m.reports.with_label_values(&["error"]).inc();
        return error(StatusCode::INTERNAL_SERVER_ERROR, "checking the report's findings failed");
    };
    if trimmed > 0 {
        tracing::warn!(
            token = %token_name.escape_debug(),
            host = %report.agent.host.escape_debug(),
            trimmed,
            "findings over {MAX_FINDING_BYTES} bytes trimmed as the agent would have"
        );
    }
    match app.store.ingest_as(&token_name, report, now(), app.settings.ingest).await {
        Ok(out) if out.forbidden.is_some() => {
            m.reports.with_label_values(&["rejected_host"]).inc();
            error(StatusCode::FORBIDDEN, out.forbidden.unwrap_or_default())
        }
        Ok(mut out) => {
            m.reports.with_label_values(&["stored"]).inc();
            m.events_stored.inc_by(out.new_events);
            m.events_duplicate.inc_by(out.duplicate_events);
            m.findings_refused.inc_by(out.refused_findings);
            m.findings_trimmed.inc_by(trimmed);
            m.ingest_seconds.observe(started.elapsed().as_secs_f64());
            for (reason, n) in &out.fleet_refused {
                m.fleet_learning_refused.with_label_values(&[reason]).inc_by(*n);
            }
            for id in &out.fleet_hits {
                m.fleet_indicator_hits.with_label_values(&[id]).inc();
            }
            for ch in &out.config_changes {
                m.agent_config_changes.with_label_values(&[&ch.what]).inc();
            }
            if out.findings_changed || out.config_changes.iter().any(|c| c.alert) {
                app.alert_wakeup.notify_one();
            }
            crate::siem::enqueue(&app, std::mem::take(&mut out.finding_events));
            if out.fleet_changed {
                app.fleet_changed();
            }
            (
                StatusCode::OK,
                Json(json!({
                    "stored": out.new_events,
                    "duplicates": out.duplicate_events,
                    "refused_findings": out.refused_findings,
                })),
            )
                .into_response()
        }
        Err(e) => {
            m.reports.with_label_values(&["error"]).inc();
            error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
        }
    }
}

/// Cuts every finding a report opens or updates to the agent's own cap
/// ([`MAX_FINDING_BYTES`], with a `trimmed` evidence item saying so), before
/// anything is stored: an agent's token is no licence to store a 4 MB
/// command line or ten thousand evidence items. Severity, id, host and
/// subject are kept. Returns how many findings were cut.
pub fn bound_findings(report: &mut Report) -> u64 {
    let mut n = 0;
    for e in &mut report.events {
        if let EventKind::FindingOpened { finding } | EventKind::FindingUpdated { finding } = &mut e.kind {
            n += u64::from(finding.bound(MAX_FINDING_BYTES));
        }
    }
    n
}

/// Largest enrolment request body: `{"host": "..."}`.
const ENROL_BODY_BYTES: usize = 4096;

/// The body of `POST /api/v1/enrol`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    host: String,
}

/// A host name an enrolment may bind a token to: 1 to 253 bytes, no
/// control characters or white space.
fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && !h.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// `POST /api/v1/enrol` with an enrolment token (`token create --enrol`)
/// and `{"host": "H"}`: a new agent token bound to H, named
/// `ENROL_NAME/H`, answered once (201 `{"token", "name", "host"}`). A host
/// that already has a valid agent token gets 409 and nothing changes,
/// unless the enrolment token was made with `--allow-reenrol`: then the
/// host's tokens are revoked and a new one issued (logged as a warning and
/// counted as `reenrolled`). As for reports, the token and its rate are
/// checked before the body is read.
async fn post_enrol(State(app): State<Arc<App>>, request: Request) -> Response {
    let m = &app.metrics;
    let count = |o: &str| m.enrolments.with_label_values(&[o]).inc();
    let (parts, body) = request.into_parts();
    let Some(token) = bearer(&parts.headers) else {
        count("rejected_auth");
        return error(StatusCode::UNAUTHORIZED, "missing bearer token (Authorization: Bearer TOKEN)");
    };
    let enrol_name = match app.store.token_lookup(token).await {
        Ok(Some((name, Role::Enrol))) => name,
        Ok(Some(_)) => {
            count("rejected_auth");
            return error(
                StatusCode::FORBIDDEN,
                "only an enrolment token (token create --enrol) can enrol a host",
            );
        }
        Ok(None) => {
            count("rejected_auth");
            return error(StatusCode::UNAUTHORIZED, "unknown or revoked token");
        }
        Err(e) => {
            count("error");
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"));
        }
    };
    if let Err(secs) = app.report_limiter.take(&enrol_name) {
        count("rejected_rate");
        return too_many(secs, "too many enrolments for this token; retry after the given seconds");
    }
    let body = match Bytes::from_request(Request::from_parts(parts, body), &app).await {
        Ok(b) => b,
        Err(e) => {
            count("rejected_invalid");
            return error(e.status(), format!("cannot read the body: {}", e.body_text()));
        }
    };
    let host = match serde_json::from_slice::<EnrolRequest>(&body) {
        Ok(r) if valid_host(&r.host) => r.host,
        Ok(_) => {
            count("rejected_invalid");
            return error(
                StatusCode::BAD_REQUEST,
                "host must be 1 to 253 bytes without control characters or white space",
            );
        }
        Err(e) => {
            count("rejected_invalid");
            return error(StatusCode::BAD_REQUEST, format!("expected {{\"host\": \"...\"}}: {e}"));
        }
    };
    use crate::store::EnrolOutcome;
    match app
        .store
        .enrol(&enrol_name, &host, app.settings.max_hosts_per_enrolment_token)
        .await
    {
        Ok(EnrolOutcome::Enrolled { name, secret, replaced }) => {
            if replaced.is_empty() {
                count("enrolled");
                tracing::info!(enrolment_token = %enrol_name, host = %host.escape_debug(), token = %name.escape_debug(), "host enrolled");
            } else {
                count("reenrolled");
                tracing::warn!(
                    enrolment_token = %enrol_name,
                    host = %host.escape_debug(),
                    token = %name.escape_debug(),
                    revoked = ?replaced,
                    "host enrolled again: its earlier tokens are revoked"
                );
            }
            (
                StatusCode::CREATED,
                Json(json!({ "token": secret, "name": name, "host": host, "replaced": replaced })),
            )
                .into_response()
        }
        Ok(EnrolOutcome::AlreadyEnrolled(names)) => {
            count("conflict");
            tracing::warn!(enrolment_token = %enrol_name, host = %host.escape_debug(), "enrolment refused: the host already has a token");
            error(
                StatusCode::CONFLICT,
                format!(
                    "host {host:?} is already enrolled (token {}); revoke that token first, \
                     or use an enrolment token made with --allow-reenrol",
                    names.join(", ")
                ),
            )
        }
        Ok(EnrolOutcome::LimitReached(n)) => {
            count("limit");
            error(
                StatusCode::FORBIDDEN,
                format!("this enrolment token has enrolled {n} hosts, its limit (max_hosts_per_enrolment_token)"),
            )
        }
        Ok(EnrolOutcome::Revoked) => {
            count("rejected_auth");
            error(StatusCode::UNAUTHORIZED, "unknown or revoked token")
        }
        Err(e) => {
            count("error");
            error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
        }
    }
}

/// Checks that a request comes from an analyst: a bearer analyst token or
/// a web session. Returns the analyst's name.
pub async fn analyst(app: &App, headers: &HeaderMap) -> Result<String, Response> {
    if let Some(s) = app.session(headers).await {
        return Ok(s.name);
    }
    let Some(token) = bearer(headers) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "log in or send an analyst token (Authorization: Bearer TOKEN)",
        ));
    };
    match app.store.token_lookup(token).await {
        Ok(Some((name, Role::Analyst))) => Ok(name),
        Ok(Some((_, Role::Enrol))) => Err(error(StatusCode::FORBIDDEN, "an enrolment token cannot read fleet data")),
        Ok(Some(_)) => Err(error(StatusCode::FORBIDDEN, "an agent token cannot read fleet data")),
        Ok(None) => Err(error(StatusCode::UNAUTHORIZED, "unknown or revoked token")),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))),
    }
}

fn check_filter(f: &FindingFilter) -> Result<(), String> {
    if let Some(s) = f.severity.as_deref().filter(|s| !s.is_empty()) {
        if !matches!(s, "confirmed" | "likely" | "suspicious") {
            return Err(format!("unknown severity {s:?} (confirmed, likely, suspicious)"));
        }
    }
    if let Some(s) = f.state.as_deref().filter(|s| !s.is_empty()) {
        if !matches!(s, "open" | "acknowledged" | "suppressed" | "resolved" | "active") {
            return Err(format!("unknown state {s:?} (open, acknowledged, suppressed, resolved, active)"));
        }
    }
    Ok(())
}

fn db_error(e: crate::db::DbError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
}

async fn api_findings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    filter: Result<Query<FindingFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    let Ok(Query(filter)) = filter else {
        return error(StatusCode::BAD_REQUEST, "bad query: filters are host, severity, state, limit");
    };
    if let Err(msg) = check_filter(&filter) {
        return error(StatusCode::BAD_REQUEST, msg);
    }
    match app.store.findings(&filter).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => db_error(e),
    }
}

/// The query of `GET /api/v1/export`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    format: Option<String>,
    cursor: Option<u64>,
    limit: Option<u64>,
}

/// `GET /api/v1/export?format=ocsf|ecs&cursor=N&limit=M` (analyst token or
/// session; an agent or enrolment token gets 403, none 401): the finding
/// events stored after cursor `N` (default 0: from the oldest kept),
/// oldest first, as NDJSON (`application/x-ndjson`): one event per line,
/// in `format` (`ocsf`, the default: OCSF 1.5.0 Detection Finding, class
/// 2004; `ecs`: Elastic Common Schema 8.11), the same mapping as the
/// agent's SIEM output and the SIEM webhook. At most `M` events (default
/// 1000, at most 10000; the body also stops after 16 MiB). The response's
/// `X-Rigwatch-Cursor` header is the cursor to send next: the id of the
/// last event in the body, or `N` again (and an empty body) when nothing is
/// new. A full page means more may wait: pull again at once.
///
/// A finding event is a transition the collector stored: opened (or
/// reopened after it resolved; OCSF activity Create), updated when its
/// severity or evidence changed (Update), resolved (Close). Each carries
/// the finding as it stood at that event (stored with it), dated by the
/// agent's event time. Analysts' acknowledgements and suppressions are not
/// events here. Cursors are ids in the database, monotonic across
/// restarts and replicas, so a SIEM that keeps the last cursor gets each
/// event exactly once; events older than `event_retention_days` are pruned.
async fn api_export(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use crate::siem::{render, EXPORT_DEFAULT_LIMIT, EXPORT_MAX_BYTES, EXPORT_MAX_LIMIT};
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad query: parameters are format (ocsf, ecs), cursor (a number), limit (a number)",
        );
    };
    let format = match q.format.as_deref().unwrap_or("ocsf").parse::<rigwatch_signatures::siem::Format>() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let cursor = q.cursor.unwrap_or(0);
    let limit = q.limit.unwrap_or(EXPORT_DEFAULT_LIMIT).clamp(1, EXPORT_MAX_LIMIT);
    let events = match app.store.finding_events(cursor, limit).await {
        Ok(v) => v,
        Err(e) => return db_error(e),
    };
    let mut body = Vec::new();
    let mut next = cursor;
    for e in &events {
        if body.len() >= EXPORT_MAX_BYTES {
            break;
        }
        if let Some(v) = render(format, e) {
            if serde_json::to_writer(&mut body, &v).is_ok() {
                body.push(b'\n');
            }
        }
        next = e.id;
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::HeaderName::from_static("x-rigwatch-cursor"), next.to_string()),
        ],
        body,
    )
        .into_response()
}

async fn api_finding(State(app): State<Arc<App>>, headers: HeaderMap, Path((host, id)): Path<(String, String)>) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    match app.store.finding(&host, &id).await {
        Ok(Some(f)) => Json(f).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such finding"),
        Err(e) => db_error(e),
    }
}

#[derive(serde::Deserialize)]
struct HostFilter {
    silent: Option<bool>,
}

/// A host's configuration history as its agent reported it, newest first
/// ([`crate::hostconfig`]).
async fn api_host_config(State(app): State<Arc<App>>, headers: HeaderMap, Path(host): Path<String>) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    match app.store.config_history(&host).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => db_error(e),
    }
}

/// The fleet policy and every host's drift from it:
/// `{"policy": {...}, "drift": [{"host", "policy", "detail", "since"}]}`.
async fn api_policy(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    match app.store.config_latest().await {
        Ok(latest) => Json(json!({
            "policy": app.settings.policy,
            "drift": crate::hostconfig::drifts(&app.settings.policy, &latest),
        }))
        .into_response(),
        Err(e) => db_error(e),
    }
}

async fn api_hosts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<HostFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    let Ok(Query(q)) = q else {
        return error(StatusCode::BAD_REQUEST, "bad query: the filter is silent=true|false");
    };
    match app.store.hosts(now(), app.settings.silent_after).await {
        Ok(mut v) => {
            if let Some(s) = q.silent {
                v.retain(|h| h.silent == s);
            }
            Json(v).into_response()
        }
        Err(e) => db_error(e),
    }
}

#[derive(serde::Deserialize)]
struct CampaignFilter {
    host: Option<String>,
    min_hosts: Option<usize>,
}

async fn api_campaigns(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<CampaignFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    let Ok(Query(q)) = q else {
        return error(StatusCode::BAD_REQUEST, "bad query: filters are host, min_hosts");
    };
    match app.store.campaigns().await {
        Ok(mut v) => {
            if let Some(h) = q.host.filter(|h| !h.is_empty()) {
                v.retain(|c| c.hosts.contains(&h));
            }
            if let Some(n) = q.min_hosts {
                v.retain(|c| c.hosts.len() >= n);
            }
            Json(v).into_response()
        }
        Err(e) => db_error(e),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let t = now();
    if let Ok(c) = app.store.counts(t, app.settings.silent_after).await {
        app.metrics.hosts.set(c.hosts as i64);
        app.metrics.hosts_silent.set(c.silent as i64);
        for s in ["confirmed", "likely", "suspicious"] {
            let n = c.active_by_severity.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0);
            app.metrics.findings_active.with_label_values(&[s]).set(n as i64);
        }
    }
    if let Ok(c) = app.store.campaigns().await {
        app.metrics.campaigns.set(c.len() as i64);
    }
    if let Ok(counts) = app.store.fleet_counts().await {
        for k in crate::fleet::KINDS {
            for s in ["live", "revoked", "expired"] {
                let n = counts.iter().find(|(k2, s2, _)| k2 == k && s2 == s).map(|c| c.2).unwrap_or(0);
                app.metrics.fleet_indicators.with_label_values(&[k, s]).set(n as i64);
            }
        }
    }
    if let Ok(v) = app.store.fleet_version().await {
        app.metrics.fleet_version.set(v as i64);
    }
    if let Ok(latest) = app.store.config_latest().await {
        app.metrics.agent_sensors_off.reset();
        for r in &latest {
            for s in &r.state.sensors_off {
                app.metrics.agent_sensors_off.with_label_values(&[&r.host, s]).set(1);
            }
        }
        app.metrics.agent_policy_drift.reset();
        for d in crate::hostconfig::drifts(&app.settings.policy, &latest) {
            app.metrics.agent_policy_drift.with_label_values(&[&d.host, &d.policy]).set(1);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
        .into_response()
}

/// Expires fleet indicators not seen for their TTL, once a minute.
async fn fleet_expiry(app: Arc<App>) {
    loop {
        match app.store.fleet_expire(now(), app.settings.ingest.fleet).await {
            Ok(n) if n > 0 => tracing::info!(
                expired = n,
                "fleet indicators expired (not seen for {} days)",
                app.settings.ingest.fleet.ttl_days
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("expiring fleet indicators: {e}"),
        }
        let before = now().saturating_sub(app.settings.event_retention_days * 86400);
        if let Err(e) = app.store.fleet_prune_hits(before).await {
            tracing::warn!("pruning fleet hits: {e}");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// How long a served fleet set's version is trusted before the database
/// is asked again (the set changes rarely; agents poll often).
const FLEET_RECHECK: Duration = Duration::from_secs(1);

/// The signed fleet set (cached; rebuilt when the database's version moved).
/// The fleet policy's file inside the fleet set (`published/policy.json`):
/// agents read it, their rule loader does not (it is no `*.toml`).
pub const POLICY_FILE: &str = "policy.json";

async fn fleet_current(app: &App) -> Result<crate::app::FleetCache, Response> {
    if let Some(c) = app.fleet_cache.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        if c.checked.elapsed() < FLEET_RECHECK {
            return Ok(c);
        }
    }
    let version = app.store.fleet_version().await.map_err(db_error)?;
    let cached = app.fleet_cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(mut c) = cached.filter(|c| c.version == version) {
        c.checked = Instant::now();
        *app.fleet_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        return Ok(c);
    }
    let key = app
        .fleet_key()
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("fleet signing key: {e:#}")))?;
    let mut snap = app.store.fleet_snapshot(app.settings.ingest.fleet).await.map_err(db_error)?;
    if app.settings.policy.forbid_local_allowlist {
        // the policy travels signed, as one more file of the set
        snap.files
            .push((POLICY_FILE.into(), json!({ "local_allowlist": "forbid" }).to_string()));
    }
    let issued = now();
    let body = tokio::task::spawn_blocking(move || {
        let body = crate::fleet::signed_body(&snap, issued, &key);
        (snap.version, body)
    })
    .await
    .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "signing the fleet set failed"))?;
    let c = crate::app::FleetCache {
        version: body.0,
        body: Bytes::from(body.1),
        checked: Instant::now(),
    };
    *app.fleet_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
    Ok(c)
}

/// `GET /api/v1/fleet/signatures` with an agent token: the signed fleet
/// set, or 304 when `If-None-Match` names the current version.
async fn fleet_signatures(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(token) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "missing bearer token (Authorization: Bearer TOKEN)");
    };
    let host = match app.store.agent_for_token(token).await {
        Ok(Some((_, Role::Agent, host))) => host,
        Ok(Some(_)) => return error(StatusCode::FORBIDDEN, "only an agent token fetches the fleet signature set"),
        Ok(None) => return error(StatusCode::UNAUTHORIZED, "unknown or revoked token"),
        Err(e) => return db_error(e),
    };
    let current = match fleet_current(&app).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let etag = format!("\"{}\"", current.version);
    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::trim);
    let held = headers
        .get("x-rigwatch-fleet-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| inm.and_then(|v| v.trim_start_matches("W/").trim_matches('"').parse::<u64>().ok()));
    if let Some(v) = held {
        app.metrics
            .agent_fleet_version
            .with_label_values(&[&host])
            .set(v.min(i64::MAX as u64) as i64);
    }
    let etag_value = header::HeaderValue::from_str(&etag).unwrap_or(header::HeaderValue::from_static("\"0\""));
    if inm.is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag)) {
        app.metrics.fleet_fetches.with_label_values(&["304"]).inc();
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    app.metrics.fleet_fetches.with_label_values(&["200"]).inc();
    (
        StatusCode::OK,
        [
            (header::ETAG, etag_value),
            (header::CONTENT_TYPE, header::HeaderValue::from_static("application/json")),
            (header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache")),
        ],
        current.body,
    )
        .into_response()
}

/// `GET /api/v1/fleet/indicators` (analyst): every indicator, with its origin and state.
async fn api_fleet_indicators(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = analyst(&app, &headers).await {
        return r;
    }
    match app.store.fleet_indicators(app.settings.ingest.fleet).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => db_error(e),
    }
}

/// `POST /api/v1/fleet/indicators/{id}/revoke` with an analyst bearer
/// token (the web page's session posts its own form, with its form
/// token): the indicator leaves the signed set at once.
async fn api_fleet_revoke(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    // A bearer token only: a browser's cookie alone must not revoke (no form token here).
    let Some(token) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send an analyst token (Authorization: Bearer TOKEN); the web page revokes with its own form",
        );
    };
    let name = match app.store.token_lookup(token).await {
        Ok(Some((name, Role::Analyst))) => name,
        Ok(Some(_)) => return error(StatusCode::FORBIDDEN, "only an analyst token may revoke fleet indicators"),
        Ok(None) => return error(StatusCode::UNAUTHORIZED, "unknown or revoked token"),
        Err(e) => return db_error(e),
    };
    match app.store.fleet_revoke(&id, &name, now()).await {
        Ok(true) => {
            app.fleet_changed();
            tracing::info!(indicator = %id.escape_debug(), analyst = %name, "fleet indicator revoked");
            Json(json!({ "revoked": id, "by": name })).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "no such live indicator (unknown, or revoked already)"),
        Err(e) => db_error(e),
    }
}

/// Prunes old event ids once an hour.
async fn housekeeping(app: Arc<App>) {
    loop {
        let before = now().saturating_sub(app.settings.event_retention_days * 86400);
        match app.store.prune_events(before).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "forgot event ids older than {} days", app.settings.event_retention_days),
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning events: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Caps open connections: a connection over the cap is closed at once;
/// each admitted one holds a permit until it closes.
#[derive(Clone)]
struct ConnectionLimit<A> {
    inner: A,
    permits: Arc<tokio::sync::Semaphore>,
}

/// A stream holding its connection permit.
struct Permitted<S> {
    inner: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Permitted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Permitted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<A, I, S> axum_server::accept::Accept<I, S> for ConnectionLimit<A>
where
    A: axum_server::accept::Accept<I, S> + Clone + Send + 'static,
    A::Future: Send,
    A::Stream: Send,
    A::Service: Send,
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Permitted<A::Stream>;
    type Service = A::Service;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let permit = self.permits.clone().try_acquire_owned();
        let inner = self.inner.clone();
        Box::pin(async move {
            let Ok(permit) = permit else {
                return Err(std::io::Error::other("too many connections"));
            };
            let (s, svc) = inner.accept(stream, service).await?;
            Ok((Permitted { inner: s, _permit: permit }, svc))
        })
    }
}

/// The HTTP/1 settings every listener gets: a deadline for a request's
/// headers (a slow-header client is cut off), no HTTP/2 (agents and
/// browsers speak HTTP/1.1 here).
fn configure<A>(server: &mut axum_server::Server<A>, app: &App) {
    let builder = server.http_builder();
    let fresh = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    *builder = std::mem::replace(builder, fresh).http1_only();
    let mut h1 = builder.http1();
    h1.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(app.settings.header_timeout)
        .max_buf_size(64 * 1024);
}

/// Serves until the process ends: HTTP, or HTTPS with rustls when a
/// certificate and key are set; the alert loop runs beside it.
pub async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    // A signing key that exists but cannot be used stops the start here, clearly.
    app.fleet_key()?;
    let addr: std::net::SocketAddr = app
        .settings
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", app.settings.listen))?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    match &app.settings.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| anyhow::anyhow!("TLS certificate {} / key {}: {e}", cert.display(), key.display()))?;
            tracing::info!(%addr, "rigwatch-collector listening (https)");
            run_server(app, listener, Some(tls)).await?;
        }
        None => {
            tracing::info!(%addr, "rigwatch-collector listening (http)");
            run_server(app, listener, None).await?;
        }
    }
    Ok(())
}

async fn run_server(
    app: Arc<App>,
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> std::io::Result<()> {
    tokio::spawn(crate::alert::run(app.clone()));
    tokio::spawn(crate::siem::run(app.clone()));
    tokio::spawn(housekeeping(app.clone()));
    tokio::spawn(fleet_expiry(app.clone()));
    // a policy changed while the collector was down reaches agents as a new set version
    match app.store.fleet_policy(app.settings.policy.forbid_local_allowlist).await {
        Ok(true) => tracing::info!(
            forbid_local_allowlist = app.settings.policy.forbid_local_allowlist,
            "fleet policy changed: new fleet set version"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!("recording the fleet policy: {e}"),
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(app.settings.max_connections));
    let service = router(app.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let limit = ConnectionLimit {
        inner: axum_server::accept::DefaultAcceptor,
        permits,
    };
    match tls {
        Some(tls) => {
            let mut server =
                axum_server::from_tcp_rustls(listener, tls).map(|a| a.handshake_timeout(app.settings.header_timeout).acceptor(limit));
            configure(&mut server, &app);
            server.serve(service).await
        }
        None => {
            let mut server = axum_server::from_tcp(listener).acceptor(limit);
            configure(&mut server, &app);
            server.serve(service).await
        }
    }
}

/// Serves plain HTTP on a listener that is already bound (tests, benches),
/// with the alert loop beside it and the same limits as [`serve`].
pub async fn serve_listener(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    run_server(app, listener, None).await
}
