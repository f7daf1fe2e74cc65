//! The HTTP service: report ingest, query API, `/metrics`, the web page.

pub use crate::app::{App, Session, SESSION_COOKIE};
use crate::store::{now, FindingFilter, Role};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rigwatch_signatures::report::Report;
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

/// The router for an application.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.settings.max_body_bytes;
    Router::new()
        .route("/api/v1/reports", post(post_report).layer(DefaultBodyLimit::max(limit)))
        .route("/api/v1/findings", get(api_findings))
        .route("/api/v1/findings/{host}/{id}", get(api_finding))
        .route("/api/v1/hosts", get(api_hosts))
        .route("/api/v1/campaigns", get(api_campaigns))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::web::routes())
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

async fn post_report(State(app): State<Arc<App>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let m = &app.metrics;
    let Some(token) = bearer(&headers) else {
        m.reports.with_label_values(&["rejected_auth"]).inc();
        return error(StatusCode::UNAUTHORIZED, "missing bearer token (Authorization: Bearer TOKEN)");
    };
    match app.store.token_lookup(token).await {
        Ok(Some((_, Role::Agent))) => {}
        Ok(Some((_, Role::Analyst))) => {
            m.reports.with_label_values(&["rejected_auth"]).inc();
            return error(StatusCode::FORBIDDEN, "an analyst token cannot send reports");
        }
        Ok(None) => {
            m.reports.with_label_values(&["rejected_auth"]).inc();
            return error(StatusCode::UNAUTHORIZED, "unknown or revoked token");
        }
        Err(e) => {
            m.reports.with_label_values(&["error"]).inc();
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"));
        }
    }
    let body = match body {
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
    let report = match Report::from_json(&body) {
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
    match app.store.ingest(report, now()).await {
        Ok(out) => {
            m.reports.with_label_values(&["stored"]).inc();
            m.events_stored.inc_by(out.new_events);
            m.events_duplicate.inc_by(out.duplicate_events);
            m.ingest_seconds.observe(started.elapsed().as_secs_f64());
            if out.findings_changed {
                app.alert_wakeup.notify_one();
            }
            (
                StatusCode::OK,
                Json(json!({ "stored": out.new_events, "duplicates": out.duplicate_events })),
            )
                .into_response()
        }
        Err(e) => {
            m.reports.with_label_values(&["error"]).inc();
            error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
        }
    }
}

/// Checks that a request comes from an analyst: a bearer analyst token or
/// a web session. Returns the analyst's name.
pub async fn analyst(app: &App, headers: &HeaderMap) -> Result<String, Response> {
    if let Some(s) = app.session(headers) {
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
        .into_response()
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

/// Serves until the process ends: HTTP, or HTTPS with rustls when a
/// certificate and key are set; the alert loop runs beside it.
pub async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = app
        .settings
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", app.settings.listen))?;
    tokio::spawn(crate::alert::run(app.clone()));
    tokio::spawn(housekeeping(app.clone()));
    let router = router(app.clone());
    match &app.settings.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| anyhow::anyhow!("TLS certificate {} / key {}: {e}", cert.display(), key.display()))?;
            tracing::info!(%addr, "rigwatch-collector listening (https)");
            axum_server::bind_rustls(addr, tls).serve(router.into_make_service()).await?;
        }
        None => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "rigwatch-collector listening (http)");
            axum::serve(listener, router).await?;
        }
    }
    Ok(())
}

/// Serves plain HTTP on a listener that is already bound (tests, benches),
/// with the alert loop beside it.
pub async fn serve_listener(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    tokio::spawn(crate::alert::run(app.clone()));
    tokio::spawn(housekeeping(app.clone()));
    axum::serve(listener, router(app)).await
}
