//! The analysts' web page: server-rendered HTML (maud escapes every
//! interpolated value; process names and everything else from a host are
//! attacker-controlled), no JavaScript at all, and a Content-Security-Policy
//! that forbids scripts outright. Login with an analyst token; a session
//! cookie (HttpOnly, SameSite=Strict) and a per-session form token.

use crate::app::{App, SESSION_COOKIE};
use crate::format::{pct, rfc3339};
use crate::store::{now, Campaign, FindingFilter, FindingView, Role};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};
use std::sync::Arc;

const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}header{background:#1f2933;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}header a{color:#fff}main{padding:16px}table{border-collapse:collapse;width:100%;margin-bottom:16px}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f4f6}.confirmed{color:#b91c1c;font-weight:bold}.likely{color:#c2410c;font-weight:bold}.suspicious{color:#a16207}.silent{color:#b91c1c;font-weight:bold}code{font-size:12px;word-break:break-all}.card{display:inline-block;border:1px solid #ddd;padding:8px 16px;margin:0 8px 16px 0;border-radius:4px}.card b{font-size:22px;display:block}form.inline{display:inline-block;margin-right:16px}";

/// The web page's routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/hosts/{host}", get(host_page))
        .route("/findings/{host}/{id}", get(finding_page))
        .route("/findings/{host}/{id}/state", post(set_state))
        .route("/campaigns/{id}", get(campaign_page))
        .route("/fleet", get(fleet_page))
        .route("/fleet/indicators/{id}/revoke", post(fleet_revoke))
}

fn page(title: &str, who: Option<&str>, body: Markup) -> Response {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · rigwatch" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href="/" { b { "rigwatch" } }
                    @if let Some(who) = who {
                        a href="/" { "Fleet" }
                        a href="/fleet" { "Fleet indicators" }
                        span style="flex:1" {}
                        span { "signed in as " (who) }
                        form.inline method="post" action="/logout" { button type="submit" { "Log out" } }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    html_response(StatusCode::OK, m)
}

fn html_response(status: StatusCode, m: Markup) -> Response {
    let mut r = (status, m.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error_page(status: StatusCode, who: Option<&str>, msg: &str) -> Response {
    let mut r = page(
        status.canonical_reason().unwrap_or("Error"),
        who,
        html! { p { (msg) } p { a href="/" { "Back to the fleet" } } },
    );
    *r.status_mut() = status;
    r
}

fn sev(s: &str) -> Markup {
    html! { span class=(s) { (s) } }
}

fn when(t: u64) -> String {
    if t == 0 {
        "-".into()
    } else {
        rfc3339(t)
    }
}

fn finding_link(f: &FindingView) -> String {
    format!("/findings/{}/{}", pct(&f.host), pct(&f.id))
}

fn findings_table(list: &[FindingView]) -> Markup {
    html! {
        @if list.is_empty() { p { "None." } } @else {
            table {
                tr { th { "severity" } th { "state" } th { "host" } th { "subject" } th { "rule" } th { "pool" } th { "last seen" } }
                @for f in list {
                    tr {
                        td { (sev(&f.severity)) }
                        td { (f.state) }
                        td { a href={ "/hosts/" (pct(&f.host)) } { (f.host) } }
                        td { a.finding href=(finding_link(f)) { code { (f.process) } } }
                        td { (f.rule) }
                        td { (f.pool) }
                        td { (when(f.last_seen)) }
                    }
                }
            }
        }
    }
}

fn campaigns_table(list: &[Campaign]) -> Markup {
    html! {
        @if list.is_empty() { p { "None." } } @else {
            table {
                tr { th { "campaign" } th { "severity" } th { "hosts" } th { "shared" } th { "last seen" } }
                @for c in list {
                    tr {
                        td { a href={ "/campaigns/" (pct(&c.id)) } { (c.id) } }
                        td { (sev(&c.severity)) }
                        td { (c.hosts.len()) }
                        td { @for (k, vs) in &c.keys { @for v in vs { (k) " " code { (v) } br; } } }
                        td { (when(c.last_seen)) }
                    }
                }
            }
        }
    }
}

async fn who(app: &App, headers: &HeaderMap) -> Result<String, Response> {
    match app.session(headers).await {
        Some(s) => Ok(s.name),
        None => Err(Redirect::to("/login").into_response()),
    }
}

async fn overview(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let name = match who(&app, &headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let t = now();
    let hosts = app.store.hosts(t, app.settings.silent_after).await;
    let active = app
        .store
        .findings(&FindingFilter {
            state: Some("active".into()),
            limit: Some(500),
            ..Default::default()
        })
        .await;
    let campaigns = app.store.campaigns().await;
    let (Ok(hosts), Ok(active), Ok(campaigns)) = (hosts, active, campaigns) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&name), "the database is not answering");
    };
    let silent = hosts.iter().filter(|h| h.silent).count();
    let body = html! {
        div.card { b { (hosts.len()) } "hosts" }
        div.card { b class=@if silent > 0 { "silent" } { (silent) } "agents silent" }
        div.card { b { (active.len()) } "active findings" }
        div.card { b { (campaigns.len()) } "campaigns" }
        h2 { "Campaigns" }
        (campaigns_table(&campaigns))
        h2 { "Active findings" }
        (findings_table(&active))
        h2 { "Hosts" }
        table {
            tr { th { "host" } th { "status" } th { "active findings" } th { "agent" } th { "signatures" } th { "last seen" } }
            @for h in &hosts {
                tr {
                    td { a.host href={ "/hosts/" (pct(&h.host)) } { (h.host) } }
                    td { @if let Some(why) = &h.stopped { span.silent { "stopped (" (why) ")" } } @else if h.silent { span.silent { "agent silent" } } @else { "reporting" }
                        @if h.silent_after_change.is_some() { span.silent { " right after a config change" } } }
                    td { (h.active_findings) }
                    td { (h.agent_version) }
                    td { code { (h.signatures_version) } }
                    td { (when(h.last_seen)) }
                }
            }
        }
    };
    page("Fleet", Some(&name), body)
}

/// A host's configuration as its agent reported it: the latest state,
/// then every change, newest first (changes that alert are marked).
fn config_table(rows: &[crate::hostconfig::ConfigRecord], policy: &crate::hostconfig::Policy) -> Markup {
    let Some(latest) = rows.first() else {
        return html! { p { "The agent has not reported its configuration (an agent older than this collector)." } };
    };
    let s = &latest.state;
    let drift = crate::hostconfig::drift(policy, s);
    html! {
        @if !drift.is_empty() {
            table #policy-drift {
                tr { th { "fleet policy" } th { "how this host departs from it" } }
                @for (rule, detail) in &drift {
                    tr { td { span.silent { (rule) } } td { (detail) } }
                }
            }
        }
        table #config {
            tr { th { "configuration digest" } td { code { (s.digest) } } }
            tr { th { "allow rules" } td { (s.allowlist.entries) " (" (s.allowlist.local) " local" @if s.allowlist.ignored_by_policy > 0 { ", " (s.allowlist.ignored_by_policy) " ignored by policy" } ")" } }
            tr { th { "local allowlist files" } td { @for f in &s.allowlist.files { code { (f) } " " } } }
            tr { th { "local signature files" } td { @for f in &s.signatures.local { code { (f.name) } " " } @if s.signatures.local_more > 0 { "+" (s.signatures.local_more) " more" } } }
            tr { th { "sensors off" } td { @if s.sensors_off.is_empty() { "none" } @else { @for x in &s.sensors_off { span.silent { (x) } " " } } } }
            tr { th { "collector" } td { code { (s.collector) } } }
        }
        h3 { "Changes" }
        table #config-history {
            tr { th { "when" } th { "what" } th { "before" } th { "after" } }
            @for r in rows {
                @if r.changes.is_empty() {
                    tr { td { (when(r.at)) } td { "baseline" } td { } td { "first report" } }
                }
                @for c in &r.changes {
                    tr {
                        td { (when(r.at)) }
                        td { @if c.alert { span.silent { (c.what) } } @else { (c.what) } }
                        td { (c.before) }
                        td { (c.after) }
                    }
                }
            }
        }
    }
}

async fn host_page(State(app): State<Arc<App>>, headers: HeaderMap, Path(host): Path<String>) -> Response {
    let name = match who(&app, &headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let hosts = app.store.hosts(now(), app.settings.silent_after).await;
    let findings = app
        .store
        .findings(&FindingFilter {
            host: Some(host.clone()),
            ..Default::default()
        })
        .await;
    let config = app.store.config_history(&host).await;
    let (Ok(hosts), Ok(findings), Ok(config)) = (hosts, findings, config) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&name), "the database is not answering");
    };
    let Some(h) = hosts.into_iter().find(|h| h.host == host) else {
        return error_page(StatusCode::NOT_FOUND, Some(&name), "no such host");
    };
    let sensors: Vec<serde_json::Value> = h.sensors.as_array().cloned().unwrap_or_default();
    let body = html! {
        table {
            tr { th { "status" } td { @if let Some(why) = &h.stopped { span.silent { "stopped (" (why) ")" } } @else if h.silent { span.silent { "agent silent" } } @else { "reporting" }
                @if let Some(words) = &h.silent_after_change { " " span.silent.after-change { "— " (words) } } } }
            tr { th { "agent id" } td { code { (h.agent_id) } } }
            tr { th { "agent version" } td { (h.agent_version) } }
            tr { th { "signatures" } td { code { (h.signatures_version) } } }
            tr { th { "first seen" } td { (when(h.first_seen)) } }
            tr { th { "last seen" } td { (when(h.last_seen)) } }
            tr { th { "reports" } td { (h.reports) } }
        }
        h2 { "Sensors" }
        table {
            tr { th { "sensor" } th { "up" } th { "message" } }
            @for s in &sensors {
                tr {
                    td { (s["name"].as_str().unwrap_or("")) }
                    td { (if s["up"].as_bool().unwrap_or(false) { "up" } else { "down" }) }
                    td { (s["message"].as_str().unwrap_or("")) }
                }
            }
        }
        h2 { "Findings" }
        (findings_table(&findings))
        h2 { "Configuration" }
        (config_table(&config, &app.settings.policy))
    };
    page(&format!("Host {host}"), Some(&name), body)
}

async fn finding_page(State(app): State<Arc<App>>, headers: HeaderMap, Path((host, id)): Path<(String, String)>) -> Response {
    let Some(session) = app.session(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let name = session.name.clone();
    let d = match app.store.finding(&host, &id).await {
        Ok(Some(d)) => d,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, Some(&name), "no such finding"),
        Err(_) => return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&name), "the database is not answering"),
    };
    let f = &d.view;
    let p = &d.finding["process"];
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let evidence: Vec<(String, String, String, String)> = d.finding["evidence"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let summary = serde_json::from_value::<rigwatch_signatures::Evidence>(e.clone())
                        .map(|ev| ev.summary())
                        .unwrap_or_else(|_| e.to_string());
                    (s(&e["weight"]), s(&e["kind"]), s(&e["rule"]), summary)
                })
                .collect()
        })
        .unwrap_or_default();
    let action = format!("/findings/{}/{}/state", pct(&f.host), pct(&f.id));
    let body = html! {
        p { (sev(&f.severity)) " on " a href={ "/hosts/" (pct(&f.host)) } { (f.host) } " — state " b id="state" { (f.state) }
            @if !f.state_reason.is_empty() { " (" (f.state_reason) ")" } }
        @if let Some(subject) = d.finding["subject"].as_object() {
            h2 { "On the host" }
            table id="subject" {
                tr { th { "what" } td { (s(&subject["kind"])) } }
                tr { th { "which" } td { code id="subject-name" { (s(&subject["name"])) } } }
                tr { th { "first seen" } td { (when(f.first_seen)) } }
                tr { th { "last seen" } td { (when(f.last_seen)) } }
            }
        } @else if let Some(flow) = d.finding["flow"].as_object() {
            h2 { "Flow (no process found)" }
            table id="flow" {
                tr { th { "client" } td { code { (s(&flow["client"])) } } }
                tr { th { "server" } td { code { (s(&flow["server"])) } } }
                tr { th { "transport" } td { (s(&flow["transport"])) } }
                tr { th { "first seen" } td { (when(f.first_seen)) } }
                tr { th { "last seen" } td { (when(f.last_seen)) } }
            }
        } @else {
        h2 { "Process" }
        table {
            tr { th { "name" } td { code id="process" { (s(&p["comm"])) } } }
            tr { th { "pid" } td { (s(&p["pid"])) } }
            tr { th { "user" } td { (s(&p["user"])) } }
            tr { th { "executable" } td { code { (s(&p["exe"])) } } }
            tr { th { "command line" } td { code { (s(&p["cmdline"])) } } }
            tr { th { "cgroup" } td { code { (s(&p["cgroup"])) } } }
            @if p["pod"].is_string() {
                tr { th { "pod" } td { code id="pod" { (s(&p["namespace"])) "/" (s(&p["pod"])) } } }
            }
            tr { th { "first seen" } td { (when(f.first_seen)) } }
            tr { th { "last seen" } td { (when(f.last_seen)) } }
        }
        }
        h2 { "Evidence" }
        table id="evidence" {
            tr { th { "weight" } th { "kind" } th { "rule" } th { "what" } }
            @for (w, k, r, sum) in &evidence {
                tr { td { (w) } td { (k) } td { (r) } td { (sum) } }
            }
        }
        h2 { "Act" }
        @for (state, label) in [("acknowledged", "Acknowledge"), ("suppressed", "Suppress"), ("open", "Reopen")] {
            form.inline method="post" action=(action) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="state" value=(state);
                input type="text" name="reason" placeholder="reason" required maxlength="500";
                button type="submit" id={ "btn-" (state) } { (label) }
            }
        }
        h2 { "History" }
        table id="history" {
            tr { th { "when" } th { "what" } th { "detail" } }
            @for h in &d.history { tr { td { (when(h.at)) } td { (h.action) } td { (h.detail) } } }
        }
        h2 { "Raw finding" }
        pre { code { (serde_json::to_string_pretty(&d.finding).unwrap_or_default()) } }
    };
    page(&format!("Finding {}", f.id), Some(&name), body)
}

#[derive(serde::Deserialize)]
struct StateForm {
    csrf: String,
    state: String,
    reason: String,
}

async fn set_state(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((host, id)): Path<(String, String)>,
    form: Result<Form<StateForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(session) = app.session(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let Ok(Form(form)) = form else {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&session.name),
            "the form needs state, reason and csrf",
        );
    };
    if form.csrf != session.csrf {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(&session.name),
            "stale form: reload the page and try again",
        );
    }
    let reason = form.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&session.name),
            "a reason (1 to 500 characters) is required",
        );
    }
    if !matches!(form.state.as_str(), "acknowledged" | "suppressed" | "open") {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&session.name),
            "state must be acknowledged, suppressed or open",
        );
    }
    match app.store.set_state(&host, &id, &form.state, reason, &session.name).await {
        Ok(true) => {
            app.alert_wakeup.notify_one();
            Redirect::to(&format!("/findings/{}/{}", pct(&host), pct(&id))).into_response()
        }
        Ok(false) => error_page(StatusCode::NOT_FOUND, Some(&session.name), "no such finding"),
        Err(e) => error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&session.name), &format!("database: {e}")),
    }
}

async fn campaign_page(State(app): State<Arc<App>>, headers: HeaderMap, Path(cid): Path<String>) -> Response {
    let name = match who(&app, &headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let Ok(campaigns) = app.store.campaigns().await else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&name), "the database is not answering");
    };
    let Some(c) = campaigns.into_iter().find(|c| c.id == cid) else {
        return error_page(StatusCode::NOT_FOUND, Some(&name), "no such campaign (it may have been suppressed)");
    };
    let body = html! {
        p { (sev(&c.severity)) " on " (c.hosts.len()) " hosts, first seen " (when(c.first_seen)) ", last seen " (when(c.last_seen)) }
        h2 { "Shared" }
        table { @for (k, vs) in &c.keys { @for v in vs { tr { th { (k) } td { code { (v) } } } } } }
        h2 { "Hosts" }
        p { @for h in &c.hosts { a href={ "/hosts/" (pct(h)) } { (h) } " " } }
        h2 { "Findings" }
        (findings_table(&c.findings))
    };
    page(&format!("Campaign {}", c.id), Some(&name), body)
}

async fn fleet_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(session) = app.session(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let name = session.name.clone();
    let (Ok(list), Ok(version)) = (
        app.store.fleet_indicators(app.settings.ingest.fleet).await,
        app.store.fleet_version().await,
    ) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&name), "the database is not answering");
    };
    let live = list.iter().filter(|i| i.state == "live").count();
    let body = html! {
        div.card { b id="fleet-version" { (version) } "set version" }
        div.card { b { (live) } "live indicators" }
        p { "What one host confirmed, every agent fetches (signed). Indicators expire "
            (app.settings.ingest.fleet.ttl_days) " days after they were last seen in a confirmed finding." }
        @if list.is_empty() { p { "None yet." } } @else {
            table id="indicators" {
                tr { th { "id" } th { "kind" } th { "value" } th { "taught by" } th { "hits" } th { "last seen" } th { "expires" } th { "state" } th {} }
                @for i in &list {
                    tr id={ "ind-" (i.id) } {
                        td { code { (i.id) } }
                        td { (i.kind) }
                        td { code { (i.value) } }
                        td { a href={ "/findings/" (pct(&i.taught_by.host)) "/" (pct(&i.taught_by.finding)) } {
                            (i.taught_by.host) "/" (i.taught_by.finding) } }
                        td { (i.hits) }
                        td { (when(i.last_seen)) }
                        td { (when(i.expires)) }
                        td.state { (i.state) @if i.state == "revoked" { " by " (i.revoked_by) " " (when(i.revoked_at)) } }
                        td { @if i.state != "revoked" {
                            form.inline method="post" action={ "/fleet/indicators/" (pct(&i.id)) "/revoke" } {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" id={ "revoke-" (i.id) } { "Revoke" }
                            }
                        } }
                    }
                }
            }
        }
    };
    page("Fleet indicators", Some(&name), body)
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn fleet_revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(session) = app.session(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let Ok(Form(form)) = form else {
        return error_page(StatusCode::BAD_REQUEST, Some(&session.name), "the form needs csrf");
    };
    if form.csrf != session.csrf {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(&session.name),
            "stale form: reload the page and try again",
        );
    }
    match app.store.fleet_revoke(&id, &session.name, now()).await {
        Ok(true) => {
            app.fleet_changed();
            tracing::info!(indicator = %id.escape_debug(), analyst = %session.name, "fleet indicator revoked");
            Redirect::to("/fleet").into_response()
        }
        Ok(false) => error_page(
            StatusCode::NOT_FOUND,
            Some(&session.name),
            "no such live indicator (unknown, or revoked already)",
        ),
        Err(e) => error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&session.name), &format!("database: {e}")),
    }
}

async fn login_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.session(&headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, msg: Option<&str>) -> Response {
    let body = html! {
        @if let Some(m) = msg { p.silent { (m) } }
        form method="post" action="/login" {
            label { "Analyst token " input id="token" type="password" name="token" autocomplete="current-password" required size="70"; }
            " "
            button id="login" type="submit" { "Log in" }
        }
        p { "Create one with " code { "rigwatch-collector token create NAME --analyst" } "." }
    };
    let mut r = page("Log in", None, body);
    *r.status_mut() = status;
    r
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// The client's address, when the server recorded it (else one shared key).
fn client_ip(ext: &axum::http::Extensions) -> String {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn too_many_logins(secs: u64) -> Response {
    let mut r = login_form(
        StatusCode::TOO_MANY_REQUESTS,
        Some("too many failed logins from this address; wait and try again"),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

async fn login(
    State(app): State<Arc<App>>,
    ext: axum::http::Extensions,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // Failed logins are limited per client address: guessing is refused
    // before the token is even looked up.
    let ip = client_ip(&ext);
    if let Some(secs) = app.login_limiter.exhausted(&ip) {
        return too_many_logins(secs);
    }
    let Ok(Form(form)) = form else {
        return login_form(StatusCode::BAD_REQUEST, Some("the form needs a token"));
    };
    let token = form.token.trim();
    let found = app.store.token_lookup(token).await;
    if found.is_ok() && !matches!(found, Ok(Some((_, Role::Analyst)))) {
        if let Err(secs) = app.login_limiter.take(&ip) {
            return too_many_logins(secs);
        }
    }
    match found {
        Ok(Some((name, Role::Analyst))) => {
            let id = app.new_session(&name, token);
            let secure = if app.settings.tls.is_some() { "; Secure" } else { "" };
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Some(_)) => login_form(StatusCode::FORBIDDEN, Some("that is an agent token; log in with an analyst token")),
        Ok(None) => login_form(StatusCode::UNAUTHORIZED, Some("unknown or revoked token")),
        Err(_) => login_form(StatusCode::SERVICE_UNAVAILABLE, Some("the database is not answering")),
    }
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.end_session(&headers);
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("rigwatch_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}
