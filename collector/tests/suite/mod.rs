//! The behaviour every storage backend must show, run against SQLite
//! (tests/sqlite.rs, one test per case) and PostgreSQL (tests/postgres.rs,
//! a real server). Each case gets a fresh, empty store.
#![allow(dead_code)]

use crate::common::*;
use rigwatch_collector::store::{FindingFilter, Role};
use rigwatch_collector::Store;
use rigwatch_signatures::{Evidence, EvidenceKind, Severity, Weight};
use serde_json::Value;
use std::path::Path;

mod config;
pub use config::*;
mod fleet;
pub use fleet::*;
mod siem;
pub use siem::*;

/// Calls `$m!(case)` for every case.
#[macro_export]
macro_rules! for_each_case {
    ($m:ident) => {
        $m!(tokens_are_hashed_and_revocable);
        $m!(bad_reports_get_4xx_and_store_nothing);
        $m!(a_batch_delivered_twice_is_stored_once);
        $m!(finding_lifecycle_and_history);
        $m!(campaigns_group_findings_across_hosts);
        $m!(silent_agents_are_flagged);
        $m!(query_api_filters_and_metrics);
        $m!(web_page_escapes_hostile_names_and_needs_login);
        $m!(analyst_acknowledges_with_a_reason);
        $m!(a_token_speaks_for_its_host_only);
        $m!(event_times_come_from_the_collector_clock);
        $m!(unresolved_findings_per_host_are_capped);
        $m!(reports_are_rate_limited_per_token);
        $m!(revoking_a_token_ends_its_sessions);
        $m!(failed_logins_are_rate_limited);
        $m!(a_rise_in_severity_reopens_a_finding);
        $m!(an_enrolment_token_exchanges_itself_for_host_tokens);
        $m!(a_findings_events_keep_the_agents_order);
        $m!(a_rotated_token_works_through_its_grace_only);
        $m!(fleet_learns_signs_serves_and_revokes);
        $m!(fleet_indicators_expire_and_come_back);
        $m!(fleet_policy_change_is_a_new_set_version);
        $m!(fleet_learning_is_capped_per_host);
        $m!(siem_export_gives_each_finding_event_once);
        $m!(agent_config_history_changes_and_alerts);
    };
}

pub async fn tokens_are_hashed_and_revocable(store: Store, _dir: &Path) {
    let t = store.token_create("node1", Role::Agent).await.unwrap();
    assert!(t.starts_with("rwc_") && t.len() == 68, "{t}");
    assert_eq!(store.token_lookup(&t).await.unwrap(), Some(("node1".into(), Role::Agent)));
    assert_eq!(store.token_lookup("rwc_nope").await.unwrap(), None);
    let e = store.token_create("node1", Role::Agent).await.unwrap_err().to_string();
    assert!(e.contains("exists"), "{e}");
    assert!(store.token_revoke("node1").await.unwrap());
    assert!(!store.token_revoke("node1").await.unwrap(), "revoking twice finds nothing valid");
    assert_eq!(store.token_lookup(&t).await.unwrap(), None);
    let list = store.token_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].revoked_at > 0);
    // A revoked name can be issued again, with a new secret.
    let t2 = store.token_create("node1", Role::Analyst).await.unwrap();
    assert_ne!(t, t2);
    assert_eq!(store.token_lookup(&t2).await.unwrap(), Some(("node1".into(), Role::Analyst)));
    assert_eq!(store.token_lookup(&t).await.unwrap(), None);
    assert!(store.token_create("", Role::Agent).await.is_err());
}

pub async fn bad_reports_get_4xx_and_store_nothing(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.max_body_bytes = 4096).await;
    let good = report(
        "node1",
        "a1",
        vec![opened("a1", 1, 1000, finding("node1", "f1", "xmrig", "pool.example.com", WALLET))],
    );
    let body = serde_json::to_vec(&good).unwrap();

    let (s, j) = c.post_raw(None, body.clone()).await;
    assert_eq!(s, 401, "{j}");
    assert!(j["error"].as_str().unwrap().contains("bearer"), "{j}");
    let (s, _) = c.post_raw(Some("rwc_0000"), body.clone()).await;
    assert_eq!(s, 401);
    let revoked = store.token_create("gone", Role::Agent).await.unwrap();
    store.token_revoke("gone").await.unwrap();
    let (s, j) = c.post_raw(Some(&revoked), body.clone()).await;
    assert_eq!(s, 401);
    assert_eq!(j["error"], "unknown or revoked token");
    let (s, _) = c.post_raw(Some(&c.analyst_token.clone()), body.clone()).await;
    assert_eq!(s, 403, "analyst tokens cannot report");

    let tok = c.agent_token.clone();
    let (s, j) = c.post_raw(Some(&tok), b"{not json".to_vec()).await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().starts_with("malformed JSON"), "{j}");
    let mut v: Value = serde_json::to_value(&good).unwrap();
    v["version"] = 99.into();
    let (s, j) = c.post_raw(Some(&tok), v.to_string().into_bytes()).await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("unknown report version 99"), "{j}");
    let mut v: Value = serde_json::to_value(&good).unwrap();
    v["events"][0]["event_id"] = "".into();
    let (s, j) = c.post_raw(Some(&tok), v.to_string().into_bytes()).await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("event_id"), "{j}");
    let mut v: Value = serde_json::to_value(&good).unwrap();
    v["events"][0]["finding"]["severity"] = "apocalyptic".into();
    let (s, j) = c.post_raw(Some(&tok), v.to_string().into_bytes()).await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().starts_with("invalid report"), "{j}");
    let mut big = good.clone();
    big.agent.signatures_version = "x".repeat(5000);
    let (s, j) = c.post_raw(Some(&tok), serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(s, 413);
    assert!(j["error"].as_str().unwrap().contains("larger than 4096 bytes"), "{j}");
    let (s, _) = c.post_raw(Some(&tok), Vec::new()).await;
    assert_eq!(s, 400);

    // Nothing at all was stored.
    assert!(store.hosts(rigwatch_collector::store::now(), 90).await.unwrap().is_empty());
    assert!(store.findings(&FindingFilter::default()).await.unwrap().is_empty());
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"rejected_auth\"} 4"), "{m}");
    assert!(
        m.contains("rigwatch_collector_reports_total{outcome=\"rejected_invalid\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("rigwatch_collector_reports_total{outcome=\"rejected_too_large\"} 1"),
        "{m}"
    );
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"stored\"} 0"), "{m}");

    // And the good report still goes in.
    let (s, j) = c.post(&good).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["stored"], 1);
    // Odd but well-formed input is stored as data, never a panic.
    let mut odd = finding("\u{0}näme\u{202e}", "\u{1F4A3}/../x", "", "::::", "");
    odd.first_seen = u64::MAX;
    odd.last_seen = u64::MAX;
    odd.evidence.clear();
    let mut r = report(
        "\u{0}näme\u{202e}",
        "a-odd",
        vec![opened("a-odd", 1, u64::MAX, odd), resolved("a-odd", 2, u64::MAX, "nope")],
    );
    r.sent_at = u64::MAX;
    let (s, j) = c.post(&r).await;
    assert_eq!(s, 200, "{j}");
    let (s, list) = c.get("/api/v1/findings?host=%00n%C3%A4me%E2%80%AE").await;
    assert_eq!(s, 200);
    assert_eq!(list[0]["id"], "\u{1F4A3}/../x");
    assert_eq!(list[0]["host"], "\u{FFFD}näme\u{202e}", "NUL is stored as U+FFFD by every backend");
}

pub async fn a_batch_delivered_twice_is_stored_once(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let r = report(
        "node1",
        "a1",
        vec![
            opened("a1", 1, 1000, finding("node1", "f1", "xmrig", "pool.example.com", WALLET)),
            heartbeat("a1", 2, 1000),
        ],
    );
    let (s, j) = c.post(&r).await;
    assert_eq!((s, j["stored"].as_u64(), j["duplicates"].as_u64()), (200, Some(2), Some(0)));
    let (s, j) = c.post(&r).await;
    assert_eq!((s, j["stored"].as_u64(), j["duplicates"].as_u64()), (200, Some(1), Some(1)), "{j}");
    let (_, list) = c.get("/api/v1/findings").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, d) = c.get("/api/v1/findings/node1/f1").await;
    let actions: Vec<&str> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["opened"]);
    assert_eq!(d["finding"]["evidence"].as_array().unwrap().len(), 3, "full evidence kept");
    // The same event id from another agent is another event.
    let other = report(
        "node2",
        "a2",
        vec![opened("a1", 1, 1000, finding("node2", "f1", "xmrig", "pool.example.com", WALLET))],
    );
    let (s, j) = c.post(&other).await;
    assert_eq!((s, j["stored"].as_u64()), (200, Some(1)));
    let (_, hosts) = c.get("/api/v1/hosts").await;
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["host"], "node1");
    assert_eq!(hosts[0]["reports"], 2);
    assert_eq!(hosts[0]["agent_version"], "0.1.0");
    assert_eq!(hosts[0]["signatures_version"], "sig123");
    assert_eq!(hosts[0]["sensors"][1]["name"], "capture");
    assert_eq!(hosts[0]["sensors"][1]["up"], false);
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_events_stored_total 4"), "{m}");
    assert!(m.contains("rigwatch_collector_events_duplicate_total 1"), "{m}");
    // Pruning forgets event ids older than the window, and only those.
    assert_eq!(store.prune_events(1).await.unwrap(), 0);
    assert_eq!(store.prune_events(rigwatch_collector::store::now() + 10).await.unwrap(), 2);
}

pub async fn finding_lifecycle_and_history(store: Store, _dir: &Path) {
    let now = rigwatch_collector::store::now();
    let mut f = finding("node1", "f1", "xmrig", "pool.example.com", WALLET);
    f.severity = Severity::Likely;
    let out = store
        .ingest(report("node1", "a1", vec![opened("a1", 10, 1000, f.clone())]), now)
        .await
        .unwrap();
    assert!(out.findings_changed);
    f.severity = Severity::Confirmed;
    store
        .ingest(report("node1", "a1", vec![updated("a1", 20, 1010, f.clone())]), now)
        .await
        .unwrap();
    let v = store.findings(&FindingFilter::default()).await.unwrap();
    assert_eq!((v[0].severity.as_str(), v[0].state.as_str()), ("confirmed", "open"));
    assert_eq!(v[0].rule, "cmdline.pool-url");
    assert_eq!(v[0].pool, "pool.example.com");
    assert_eq!(v[0].process, "xmrig");
    store
        .ingest(report("node1", "a1", vec![resolved("a1", 30, 1020, "f1")]), now)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(
        (d.view.state.as_str(), d.view.state_reason.as_str()),
        ("resolved", "process exited")
    );
    // A late, older update (sent before the resolve: a lower sequence
    // number; a retried batch) does not reopen it.
    store
        .ingest(report("node1", "a1", vec![updated("a1", 25, 1015, f.clone())]), now)
        .await
        .unwrap();
    assert_eq!(store.finding("node1", "f1").await.unwrap().unwrap().view.state, "resolved");
    // A newer one does.
    store
        .ingest(report("node1", "a1", vec![updated("a1", 40, 1030, f.clone())]), now)
        .await
        .unwrap();
    assert_eq!(store.finding("node1", "f1").await.unwrap().unwrap().view.state, "open");
    assert!(store.set_state("node1", "f1", "acknowledged", "on it", "alice").await.unwrap());
    assert!(!store.set_state("node1", "nope", "acknowledged", "x", "alice").await.unwrap());
    assert!(
        store.set_state("node1", "f1", "resolved", "x", "alice").await.is_err(),
        "analysts cannot fake a resolution"
    );
    // Acknowledged stays acknowledged through updates.
    store
        .ingest(report("node1", "a1", vec![updated("a1", 60, 1040, f.clone())]), now)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(d.view.state, "acknowledged");
    assert_eq!(d.view.last_seen, 1040);
    let actions: Vec<(String, String)> = d.history.iter().map(|h| (h.action.clone(), h.detail.clone())).collect();
    let names: Vec<&str> = actions.iter().map(|a| a.0.as_str()).collect();
    // Order by event time: opened 1000, updated 1010, stale update 1015, resolved 1020, reopened 1030, updated 1040; the analyst's at "now".
    assert_eq!(
        names,
        ["opened", "updated", "updated", "resolved", "reopened", "updated", "acknowledged"]
    );
    assert!(actions[2].1.contains("ignored"), "{actions:?}");
    assert_eq!(actions[6].1, "by alice: on it");
    assert_eq!(d.finding["evidence"][1]["kind"], "wallet");
}

fn with_hash(mut f: rigwatch_signatures::Finding, sha: &str) -> rigwatch_signatures::Finding {
    f.evidence.push(Evidence::from_rule(
        EvidenceKind::BinaryHash {
            sha256: sha.into(),
            path: "/tmp/x".into(),
        },
        "hash.xmrig",
        Weight::Confirmed,
    ));
    f
}

pub async fn campaigns_group_findings_across_hosts(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let other_wallet = "48edfHu7V9Z84YzzMa6fUueoELZ9ZRXq9VetWzYGzKt52XU5xvqgzYnDK9URnRoJMk1j8nLwEVsaSWJ4fhdUyZijBGUicoD";
    let post = |host: &'static str, f: rigwatch_signatures::Finding| {
        let agent = format!("agent-{host}");
        report(host, &agent.clone(), vec![opened(&agent, 1, 1000, f)])
    };
    // h1 and h2 share a wallet; h3 shares h2's pool with another wallet: one campaign of three.
    for (h, r) in [
        ("h1", post("h1", finding("h1", "a", "xmrig", "pool-a.example.com", WALLET))),
        ("h2", post("h2", finding("h2", "b", "kworker", "pool-b.example.com", WALLET))),
        ("h3", post("h3", finding("h3", "c", "sshd", "POOL-B.example.com", other_wallet))),
        (
            "h4",
            post("h4", finding("h4", "d", "lonely", "pool-z.example.com", "4lonelywallet")),
        ),
        // h5 and h6 share only a binary hash.
        (
            "h5",
            post(
                "h5",
                with_hash(finding("h5", "e", "m1", "p5.example.com", "w5"), "ab".repeat(32).as_str()),
            ),
        ),
        (
            "h6",
            post(
                "h6",
                with_hash(finding("h6", "f", "m2", "p6.example.com", "w6"), "AB".repeat(32).as_str()),
            ),
        ),
    ] {
        let (s, j) = c.post(&r).await;
        assert_eq!(s, 200, "{h}: {j}");
    }
    // h7 and h8 share a stratum login.
    for h in ["h7", "h8"] {
        let mut f = finding(h, "g", "miner", &format!("{h}.pool.example"), &format!("{h}-wallet"));
        f.evidence = vec![Evidence::heuristic(
            EvidenceKind::Stratum {
                dialect: "stratum1".into(),
                method: "login".into(),
                agent: Some("XMRig/6.21".into()),
                login: Some("worker.shared-login".into()),
                worker: None,
                remote: format!("10.0.0.{}:3333", &h[1..]),
            },
            Weight::Confirmed,
        )];
        let agent = format!("agent-{h}");
        let (s, _) = c.post(&report(h, &agent.clone(), vec![opened(&agent, 1, 1000, f)])).await;
        assert_eq!(s, 200);
    }
    let (s, camps) = c.get("/api/v1/campaigns").await;
    assert_eq!(s, 200);
    let camps = camps.as_array().unwrap();
    let hosts: Vec<Vec<&str>> = camps
        .iter()
        .map(|c| c["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect())
        .collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    assert_eq!(hosts[0], ["h1", "h2", "h3"]);
    assert!(hosts.contains(&vec!["h5", "h6"]));
    assert!(hosts.contains(&vec!["h7", "h8"]));
    let big = &camps[0];
    assert_eq!(big["keys"]["wallet"].as_array().unwrap(), &vec![Value::from(WALLET)]);
    assert_eq!(big["keys"]["pool"].as_array().unwrap(), &vec![Value::from("pool-b.example.com")]);
    assert_eq!(big["findings"].as_array().unwrap().len(), 3);
    assert_eq!(big["severity"], "confirmed");
    let hashes = camps.iter().find(|c| c["hosts"][0] == "h5").unwrap();
    assert_eq!(hashes["keys"]["binary_sha256"][0], "ab".repeat(32));
    let logins = camps.iter().find(|c| c["hosts"][0] == "h7").unwrap();
    assert_eq!(logins["keys"]["stratum_login"][0], "worker.shared-login");
    let (_, filtered) = c.get("/api/v1/campaigns?host=h6").await;
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    // Suppressing h3's finding (a known workload) splits it out.
    assert!(store.set_state("h3", "c", "suppressed", "lab box", "alice").await.unwrap());
    let (_, camps) = c.get("/api/v1/campaigns?min_hosts=3").await;
    assert_eq!(camps.as_array().unwrap().len(), 0);
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_campaigns 3"), "{m}");
}

pub async fn silent_agents_are_flagged(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.silent_after = 1).await;
    let (s, _) = c.post(&report("quiet", "aq", vec![heartbeat("aq", 1, 1000)])).await;
    assert_eq!(s, 200);
    let (_, h) = c.get("/api/v1/hosts").await;
    assert_eq!(h[0]["silent"], false);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let (_, h) = c.get("/api/v1/hosts?silent=true").await;
    assert_eq!(h.as_array().unwrap().len(), 1);
    assert_eq!(h[0]["host"], "quiet");
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_hosts_silent 1"), "{m}");
    assert!(m.contains("rigwatch_collector_hosts 1"), "{m}");
    // It reports again: no longer silent.
    c.post(&report("quiet", "aq", vec![heartbeat("aq", 2, 1003)])).await;
    let (_, h) = c.get("/api/v1/hosts?silent=true").await;
    assert_eq!(h.as_array().unwrap().len(), 0);
}

pub async fn query_api_filters_and_metrics(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let mut weak = finding("n2", "w1", "python3", "p.example.com", WALLET);
    weak.severity = Severity::Suspicious;
    c.post(&report(
        "n1",
        "a1",
        vec![opened("a1", 1, 1000, finding("n1", "x1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    c.post(&report(
        "n1",
        "a1",
        vec![opened("a1", 2, 1000, finding("n1", "x2", "xmrig2", "q.example.com", "w2"))],
    ))
    .await;
    c.post(&report("n2", "a2", vec![opened("a2", 1, 1000, weak)])).await;
    c.post(&report("n1", "a1", vec![resolved("a1", 3, 1001, "x2")])).await;
    let count = |j: &Value| j.as_array().map(|a| a.len()).unwrap_or(usize::MAX);
    assert_eq!(count(&c.get("/api/v1/findings").await.1), 3);
    assert_eq!(count(&c.get("/api/v1/findings?host=n1").await.1), 2);
    assert_eq!(count(&c.get("/api/v1/findings?severity=suspicious").await.1), 1);
    assert_eq!(count(&c.get("/api/v1/findings?state=resolved").await.1), 1);
    assert_eq!(count(&c.get("/api/v1/findings?state=active").await.1), 2);
    assert_eq!(count(&c.get("/api/v1/findings?host=n1&state=open&severity=confirmed").await.1), 1);
    assert_eq!(count(&c.get("/api/v1/findings?limit=1").await.1), 1);
    let (s, j) = c.get("/api/v1/findings?severity=apocalyptic").await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("unknown severity"));
    let (s, _) = c.get("/api/v1/findings?limit=-3").await;
    assert_eq!(s, 400);
    let (s, _) = c.get("/api/v1/findings/n1/nope").await;
    assert_eq!(s, 404);
    // Query API needs an analyst.
    let r = c.client.get(format!("{}/api/v1/findings", c.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .client
        .get(format!("{}/api/v1/hosts", c.url))
        .bearer_auth(&c.agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (s, m) = c.text("/metrics").await;
    assert_eq!(s, 200);
    assert!(m.contains("rigwatch_collector_findings_active{severity=\"confirmed\"} 1"), "{m}");
    assert!(m.contains("rigwatch_collector_findings_active{severity=\"suspicious\"} 1"), "{m}");
    assert!(m.contains("rigwatch_collector_findings_active{severity=\"likely\"} 0"), "{m}");
    assert!(m.contains("rigwatch_collector_hosts 2"), "{m}");
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"stored\"} 4"), "{m}");
    assert!(m.contains("rigwatch_collector_ingest_duration_seconds_count 4"), "{m}");
}

/// Logs in through the form; returns the `Cookie` header value.
pub async fn login(c: &Collector, token: &str) -> (u16, Option<String>) {
    let r = c
        .client
        .post(format!("{}/login", c.url))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    (r.status().as_u16(), cookie)
}

pub async fn page(c: &Collector, cookie: &str, path: &str) -> (u16, String, String) {
    let r = c
        .client
        .get(format!("{}{path}", c.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let csp = r
        .headers()
        .get("content-security-policy")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), csp, r.text().await.unwrap())
}

pub async fn web_page_escapes_hostile_names_and_needs_login(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let host = "evil<b>host";
    let mut f = finding(host, "h0", HOSTILE, "pool.example.com", WALLET);
    f.process.cmdline = format!("{HOSTILE} --url <img src=x onerror=alert(2)>");
    let (s, _) = c.post(&report(host, "ae", vec![opened("ae", 1, 1000, f)])).await;
    assert_eq!(s, 200);

    // Not logged in: every page sends to the login form.
    for p in ["/", "/hosts/x", "/findings/x/y", "/campaigns/z"] {
        let r = c.client.get(format!("{}{p}", c.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "{p}");
        assert_eq!(r.headers()["location"], "/login");
    }
    assert_eq!(login(&c, "rwc_wrong").await, (401, None));
    assert_eq!(login(&c, &c.agent_token.clone()).await.0, 403);
    let (s, cookie) = login(&c, &c.analyst_token.clone()).await;
    assert_eq!(s, 303);
    let cookie = cookie.unwrap();
    assert!(cookie.starts_with("rigwatch_session="));

    let (s, csp, html) = page(&c, &cookie, "/").await;
    assert_eq!(s, 200);
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!html.contains("<script>alert(1)"), "unescaped process name on the overview");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;kworker"), "{html}");
    assert!(html.contains("evil&lt;b&gt;host"));
    assert!(html.contains("/findings/evil%3Cb%3Ehost/h0"), "links percent-encode host names");
    let (s, _, html) = page(&c, &cookie, "/findings/evil%3Cb%3Ehost/h0").await;
    assert_eq!(s, 200);
    assert!(!html.contains("<script>") && !html.contains("<img"), "{html}");
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("wallet.monero"), "evidence is shown");
    let (s, _, html) = page(&c, &cookie, "/hosts/evil%3Cb%3Ehost").await;
    assert_eq!(s, 200);
    assert!(html.contains("no CAP_NET_RAW") && !html.contains("<script>"));
    let (s, _, _) = page(&c, &cookie, "/hosts/nobody").await;
    assert_eq!(s, 404);
    // Logging out ends the session.
    let r = c
        .client
        .post(format!("{}/logout", c.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let r = c.client.get(format!("{}/", c.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
}

pub async fn analyst_acknowledges_with_a_reason(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    c.post(&report(
        "n1",
        "a1",
        vec![opened("a1", 1, 1000, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    let (_, cookie) = login(&c, &c.analyst_token.clone()).await;
    let cookie = cookie.unwrap();
    let (_, _, html) = page(&c, &cookie, "/findings/n1/f1").await;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let post = |form: Vec<(&'static str, String)>| {
        c.client
            .post(format!("{}/findings/n1/f1/state", c.url))
            .header("cookie", cookie.clone())
            .form(&form)
            .send()
    };
    let r = post(vec![
        ("csrf", "forged".into()),
        ("state", "suppressed".into()),
        ("reason", "x".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = post(vec![
        ("csrf", csrf.clone()),
        ("state", "acknowledged".into()),
        ("reason", "  ".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = post(vec![("csrf", csrf.clone()), ("state", "deleted".into()), ("reason", "x".into())])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = post(vec![
        ("csrf", csrf.clone()),
        ("state", "acknowledged".into()),
        ("reason", "paging the owner".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let d = store.finding("n1", "f1").await.unwrap().unwrap();
    assert_eq!(d.view.state, "acknowledged");
    assert_eq!(d.view.state_reason, "paging the owner");
    assert_eq!(d.history.last().unwrap().detail, "by alice: paging the owner");
    let r = post(vec![
        ("csrf", csrf),
        ("state", "suppressed".into()),
        ("reason", "benchmark box".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let (_, j) = c.get("/api/v1/findings?state=suppressed").await;
    assert_eq!(j.as_array().unwrap().len(), 1);
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_findings_active{severity=\"confirmed\"} 0"), "{m}");
}

/// The state and agent id the store holds for a finding and its host.
async fn state_of(store: &Store, host: &str, id: &str) -> String {
    store.finding(host, id).await.unwrap().map(|d| d.view.state).unwrap_or_default()
}

pub async fn a_token_speaks_for_its_host_only(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    // A's token names its host at creation; B's binds on its first report.
    let tok_a = store.token_create_for("node-a", Role::Agent, Some("host-a")).await.unwrap();
    let tok_b = store.token_create("node-b", Role::Agent).await.unwrap();
    let list = store.token_list().await.unwrap();
    let b = list.iter().find(|t| t.name == "node-b").unwrap();
    assert_eq!((b.host.as_str(), b.bound_at), ("", 0), "unbound until its first report");
    let body = |r: &rigwatch_signatures::report::Report| serde_json::to_vec(r).unwrap();
    let b_open = report(
        "host-b",
        "agent-b",
        vec![opened(
            "agent-b",
            1,
            1000,
            finding("host-b", "fb", "xmrig", "p.example.com", WALLET),
        )],
    );
    let (s, j) = c.post_raw(Some(&tok_b), body(&b_open)).await;
    assert_eq!(s, 200, "{j}");
    let b = store.token_list().await.unwrap().into_iter().find(|t| t.name == "node-b").unwrap();
    assert_eq!(b.host, "host-b", "bound to the host of its first report");
    assert!(b.bound_at > 0);

    // The attack: A's token sends a resolve for B's finding, as B's agent.
    let forged = report("host-b", "agent-b", vec![resolved("agent-b", 2, 2000, "fb")]);
    let (s, j) = c.post_raw(Some(&tok_a), body(&forged)).await;
    assert_eq!(s, 403, "{j}");
    assert!(j["error"].as_str().unwrap().contains("host-a"), "{j}");
    let mut forged_id = forged.clone();
    forged_id.agent.agent_id = "attacker".into();
    let (s, _) = c.post_raw(Some(&tok_a), body(&forged_id)).await;
    assert_eq!(s, 403);
    // B's own token, now bound, cannot speak for A either.
    let a_open = report(
        "host-a",
        "agent-a",
        vec![opened(
            "agent-a",
            1,
            1000,
            finding("host-a", "fa", "xmrig", "p.example.com", WALLET),
        )],
    );
    let (s, _) = c.post_raw(Some(&tok_b), body(&a_open)).await;
    assert_eq!(s, 403);
    assert_eq!(state_of(&store, "host-b", "fb").await, "open", "B's finding still open");
    assert!(store.finding("host-a", "fa").await.unwrap().is_none(), "nothing stored");
    let hosts = store.hosts(rigwatch_collector::store::now(), 90).await.unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!((hosts[0].host.as_str(), hosts[0].agent_id.as_str()), ("host-b", "agent-b"));
    assert_eq!(hosts[0].reports, 1, "refused reports do not count");

    // A's token still speaks for A. Claiming B's agent id and event ids
    // there does not make B's own later events duplicates.
    let (s, _) = c.post_raw(Some(&tok_a), body(&a_open)).await;
    assert_eq!(s, 200);
    let squat = report(
        "host-a",
        "agent-b",
        vec![opened(
            "agent-b",
            2,
            1500,
            finding("host-a", "fa2", "xmrig", "p.example.com", WALLET),
        )],
    );
    let (s, j) = c.post_raw(Some(&tok_a), body(&squat)).await;
    assert_eq!((s, j["stored"].as_u64()), (200, Some(1)), "{j}");
    let genuine = report("host-b", "agent-b", vec![resolved("agent-b", 2, 2000, "fb")]);
    let (s, j) = c.post_raw(Some(&tok_b), body(&genuine)).await;
    assert_eq!((s, j["stored"].as_u64(), j["duplicates"].as_u64()), (200, Some(1), Some(0)), "{j}");
    assert_eq!(state_of(&store, "host-b", "fb").await, "resolved", "B's own resolve applies");
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"rejected_host\"} 3"), "{m}");
}

pub async fn event_times_come_from_the_collector_clock(store: Store, dir: &Path) {
    let r0 = 1_700_000_000u64;
    let mut f = finding("node1", "f1", "xmrig", "p.example.com", WALLET);
    f.severity = Severity::Likely;
    f.first_seen = u64::MAX;
    f.last_seen = u64::MAX;
    // Dated 2^64-1: stored at the receive time plus the allowance (300 s).
    store
        .ingest(report("node1", "a1", vec![opened("a1", 1, u64::MAX, f.clone())]), r0)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(d.view.last_seen, r0 + 300);
    assert_eq!(d.view.first_seen, r0 + 300);
    assert_eq!(d.history[0].at, r0 + 300);
    // A genuine update once the allowance has passed is applied, not
    // ignored as older than the pinned one.
    f.severity = Severity::Confirmed;
    f.first_seen = r0;
    f.last_seen = r0 + 301;
    store
        .ingest(report("node1", "a1", vec![updated("a1", 2, r0 + 301, f.clone())]), r0 + 301)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(d.view.severity, "confirmed", "{:?}", d.history);
    assert_eq!(d.view.last_seen, r0 + 301);
    store
        .ingest(report("node1", "a1", vec![resolved("a1", 3, r0 + 400, "f1")]), r0 + 400)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "node1", "f1").await, "resolved");
    // Over HTTP, on the collector's real clock.
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let before = rigwatch_collector::store::now();
    let (s, _) = c
        .post(&report(
            "node2",
            "a2",
            vec![opened("a2", 1, u64::MAX, finding("node2", "g1", "xmrig", "p.example.com", WALLET))],
        ))
        .await;
    assert_eq!(s, 200);
    let after = rigwatch_collector::store::now();
    let d = store.finding("node2", "g1").await.unwrap().unwrap();
    assert!(
        d.view.last_seen >= before + 300 && d.view.last_seen <= after + 300,
        "{}",
        d.view.last_seen
    );
    assert!(store.prune_events(after + 1).await.unwrap() >= 1, "its event is dated by receipt");
}

pub async fn unresolved_findings_per_host_are_capped(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.ingest.max_findings_per_host = 3).await;
    let flood: Vec<_> = (1..=5)
        .map(|i| opened("a1", i, 1000, finding("n1", &format!("junk{i}"), "x", "p.example.com", WALLET)))
        .collect();
    let (s, j) = c.post(&report("n1", "a1", flood)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["refused_findings"], 2, "{j}");
    let count = |h: &'static str| {
        let store = store.clone();
        async move {
            store
                .findings(&FindingFilter {
                    host: Some(h.into()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(count("n1").await, 3);
    // Updates to stored findings still apply; another host is untouched.
    let (s, _) = c
        .post(&report(
            "n2",
            "a2",
            vec![opened("a2", 1, 1000, finding("n2", "real", "xmrig", "p.example.com", WALLET))],
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(count("n2").await, 1);
    // Resolving one makes room for one more.
    let (_, j) = c
        .post(&report(
            "n1",
            "a1",
            vec![
                resolved("a1", 6, 1001, "junk1"),
                opened("a1", 7, 1002, finding("n1", "real", "xmrig", "p.example.com", WALLET)),
                opened("a1", 8, 1002, finding("n1", "more", "xmrig", "p.example.com", WALLET)),
            ],
        ))
        .await;
    assert_eq!(j["refused_findings"], 1, "{j}");
    assert_eq!(state_of(&store, "n1", "real").await, "open");
    assert!(store.finding("n1", "more").await.unwrap().is_none());
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_findings_refused_total 3"), "{m}");
}

pub async fn reports_are_rate_limited_per_token(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| {
        s.reports_per_second = 1.0;
        s.report_burst = 3;
    })
    .await;
    let hb = |i: u64| report("n1", "a1", vec![heartbeat("a1", i, 1000)]);
    for i in 0..3 {
        let (s, j) = c.post(&hb(i)).await;
        assert_eq!(s, 200, "{i}: {j}");
    }
    let token = c.token_for("n1").await;
    let r = c
        .client
        .post(format!("{}/api/v1/reports", c.url))
        .bearer_auth(&token)
        .body(serde_json::to_vec(&hb(9)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Another token is not held back by this one.
    let (s, _) = c.post(&report("n2", "a2", vec![heartbeat("a2", 1, 1000)])).await;
    assert_eq!(s, 200);
    // After Retry-After, this one gets through again.
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let (s, j) = c.post(&hb(10)).await;
    assert_eq!(s, 200, "{j}");
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"rejected_rate\"} 1"), "{m}");
    let hosts = store.hosts(rigwatch_collector::store::now(), 90).await.unwrap();
    assert_eq!(hosts[0].reports, 4, "the refused report stored nothing");
}

pub async fn revoking_a_token_ends_its_sessions(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    c.post(&report(
        "n1",
        "a1",
        vec![opened("a1", 1, 1000, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    let bob = store.token_create("bob", Role::Analyst).await.unwrap();
    let (_, cookie) = login(&c, &bob).await;
    let cookie = cookie.unwrap();
    let (s, _, html) = page(&c, &cookie, "/findings/n1/f1").await;
    assert_eq!(s, 200);
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = c
        .client
        .get(format!("{}/api/v1/findings", c.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the session reads the API");

    assert!(store.token_revoke("bob").await.unwrap());
    // At once, with no logout: every page, the API and the form refuse.
    let r = c.client.get(format!("{}/", c.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = c
        .client
        .get(format!("{}/api/v1/findings", c.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .client
        .post(format!("{}/findings/n1/f1/state", c.url))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("state", "suppressed"), ("reason", "hide it")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    assert_eq!(state_of(&store, "n1", "f1").await, "open", "the revoked session changed nothing");
    // A new token under the same name does not revive the old session.
    let bob2 = store.token_create("bob", Role::Analyst).await.unwrap();
    let r = c.client.get(format!("{}/", c.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let (s, cookie2) = login(&c, &bob2).await;
    assert_eq!(s, 303);
    let (s, _, _) = page(&c, &cookie2.unwrap(), "/").await;
    assert_eq!(s, 200);
}

pub async fn failed_logins_are_rate_limited(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.login_failures_per_minute = 3).await;
    for _ in 0..3 {
        assert_eq!(login(&c, "rwc_guess").await, (401, None));
    }
    let r = c
        .client
        .post(format!("{}/login", c.url))
        .form(&[("token", "rwc_guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    // While limited, even a right guess is not looked at.
    assert_eq!(login(&c, &c.analyst_token.clone()).await.0, 429);
    // A logged-in session is not affected, and bearer tokens still work.
    let (s, _) = c.get("/api/v1/hosts").await;
    assert_eq!(s, 200);
}

pub async fn a_rise_in_severity_reopens_a_finding(store: Store, _dir: &Path) {
    let now = rigwatch_collector::store::now();
    let mut f = finding("n1", "f1", "python3", "p.example.com", WALLET);
    f.severity = Severity::Suspicious;
    store
        .ingest(report("n1", "a1", vec![opened("a1", 1, 1000, f.clone())]), now)
        .await
        .unwrap();
    assert!(store
        .set_state("n1", "f1", "suppressed", "a data science job", "alice")
        .await
        .unwrap());
    // The same severity again: stays suppressed.
    store
        .ingest(report("n1", "a1", vec![updated("a1", 2, 1010, f.clone())]), now)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "n1", "f1").await, "suppressed");
    // Raised to confirmed: reopened, with a history line that says why.
    f.severity = Severity::Confirmed;
    let out = store
        .ingest(report("n1", "a1", vec![updated("a1", 3, 1020, f.clone())]), now)
        .await
        .unwrap();
    assert!(out.findings_changed);
    let d = store.finding("n1", "f1").await.unwrap().unwrap();
    assert_eq!((d.view.state.as_str(), d.view.severity.as_str()), ("open", "confirmed"));
    assert_eq!(d.view.state_reason, "severity rose to confirmed");
    let last = d.history.iter().find(|h| h.action == "reopened").expect("a reopened line");
    assert!(
        last.detail
            .contains("from suspicious to confirmed while suppressed (a data science job)"),
        "{}",
        last.detail
    );
    // Acknowledged likely → confirmed reopens too; a fall does not.
    let mut g = finding("n1", "g1", "xmrig", "p.example.com", WALLET);
    g.severity = Severity::Likely;
    store
        .ingest(report("n1", "a1", vec![opened("a1", 4, 1000, g.clone())]), now)
        .await
        .unwrap();
    assert!(store.set_state("n1", "g1", "acknowledged", "on it", "alice").await.unwrap());
    g.severity = Severity::Suspicious;
    store
        .ingest(report("n1", "a1", vec![updated("a1", 5, 1010, g.clone())]), now)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "n1", "g1").await, "acknowledged");
    g.severity = Severity::Confirmed;
    store
        .ingest(report("n1", "a1", vec![updated("a1", 6, 1020, g.clone())]), now)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "n1", "g1").await, "open");
}

/// `POST /api/v1/enrol` with a token; status and JSON.
async fn enrol(c: &Collector, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut rq = c
        .client
        .post(format!("{}/api/v1/enrol", c.url))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        rq = rq.bearer_auth(t);
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn an_enrolment_token_exchanges_itself_for_host_tokens(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.max_hosts_per_enrolment_token = 3).await;
    let fleet = store.token_create_enrol("k8s", false).await.unwrap();
    let rebuild = store.token_create_enrol("k8s-rebuild", true).await.unwrap();
    assert_eq!(store.token_lookup(&fleet).await.unwrap(), Some(("k8s".into(), Role::Enrol)));
    let host_body = |h: &str| serde_json::json!({ "host": h }).to_string();
    let open_on = |h: &str| {
        let body = report(
            h,
            &format!("agent-{h}"),
            vec![opened(
                &format!("agent-{h}"),
                1,
                1000,
                finding(h, &format!("f-{h}"), "xmrig", "p.example.com", WALLET),
            )],
        );
        serde_json::to_vec(&body).unwrap()
    };

    // The enrolment token gets a token bound to the host it names.
    let (s, j) = enrol(&c, Some(&fleet), &host_body("node-1")).await;
    assert_eq!(s, 201, "{j}");
    assert_eq!(
        (j["name"].as_str(), j["host"].as_str()),
        (Some("k8s/node-1"), Some("node-1")),
        "{j}"
    );
    let t1 = j["token"].as_str().unwrap().to_string();
    assert!(t1.starts_with("rwc_") && t1.len() == 68 && t1 != fleet, "{t1}");
    let listed = store.token_list().await.unwrap();
    let row = listed.iter().find(|t| t.name == "k8s/node-1").unwrap();
    assert_eq!(
        (row.role, row.host.as_str(), row.enrolled_by.as_str()),
        (Role::Agent, "node-1", "k8s")
    );
    assert!(row.bound_at > 0);
    let (s, j) = c.post_raw(Some(&t1), open_on("node-1")).await;
    assert_eq!(s, 200, "{j}");
    let (s, j) = c.post_raw(Some(&t1), open_on("node-2")).await;
    assert_eq!(s, 403, "a host token speaks for its host only: {j}");
    assert!(store.finding("node-2", "f-node-2").await.unwrap().is_none());

    // The enrolment token itself can neither report nor read.
    let (s, j) = c.post_raw(Some(&fleet), open_on("node-9")).await;
    assert_eq!(s, 403, "{j}");
    assert!(j["error"].as_str().unwrap().contains("enrol"), "{j}");
    assert!(store.finding("node-9", "f-node-9").await.unwrap().is_none());
    for path in [
        "/api/v1/findings",
        "/api/v1/hosts",
        "/api/v1/campaigns",
        "/api/v1/findings/node-1/f-node-1",
    ] {
        let r = c.client.get(format!("{}{path}", c.url)).bearer_auth(&fleet).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    let (status, cookie) = login(&c, &fleet).await;
    assert!(cookie.is_none(), "no web session for an enrolment token ({status})");
    // Only an enrolment token enrols.
    assert_eq!(enrol(&c, Some(&t1), &host_body("node-5")).await.0, 403);
    assert_eq!(enrol(&c, Some(&c.analyst_token.clone()), &host_body("node-5")).await.0, 403);
    assert_eq!(enrol(&c, None, &host_body("node-5")).await.0, 401);
    assert_eq!(enrol(&c, Some("rwc_0000"), &host_body("node-5")).await.0, 401);
    for bad in ["{}", "{\"host\": \"\"}", "{\"host\": \"a b\"}", "{\"host\": \"a\\nb\"}", "not json"] {
        let (s, j) = enrol(&c, Some(&fleet), bad).await;
        assert_eq!(s, 400, "{bad}: {j}");
    }
    let long = format!("{{\"host\": \"{}\"}}", "h".repeat(254));
    assert_eq!(enrol(&c, Some(&fleet), &long).await.0, 400);

    // Enrolling an enrolled host again: refused, the host keeps its token.
    let (s, j) = enrol(&c, Some(&fleet), &host_body("node-1")).await;
    assert_eq!(s, 409, "{j}");
    assert!(j["error"].as_str().unwrap().contains("--allow-reenrol"), "{j}");
    let bump = report("node-1", "agent-node-1", vec![heartbeat("agent-node-1", 2, 1000)]);
    let (s, _) = c.post_raw(Some(&t1), serde_json::to_vec(&bump).unwrap()).await;
    assert_eq!(s, 200, "the host's token still works");
    // The same for a host whose token was made by hand.
    let by_hand = store.token_create_for("node-3-hand", Role::Agent, Some("node-3")).await.unwrap();
    assert_eq!(enrol(&c, Some(&fleet), &host_body("node-3")).await.0, 409);
    assert_eq!(c.post_raw(Some(&by_hand), open_on("node-3")).await.0, 200);

    // With --allow-reenrol: the host's old tokens are revoked, a new one issued.
    let (s, j) = enrol(&c, Some(&rebuild), &host_body("node-1")).await;
    assert_eq!(s, 201, "{j}");
    assert_eq!(j["name"], "k8s-rebuild/node-1");
    assert_eq!(j["replaced"], serde_json::json!(["k8s/node-1"]));
    let t1b = j["token"].as_str().unwrap().to_string();
    let bump = report("node-1", "agent-node-1", vec![heartbeat("agent-node-1", 3, 1000)]);
    assert_eq!(
        c.post_raw(Some(&t1), serde_json::to_vec(&bump).unwrap()).await.0,
        401,
        "the old token is revoked"
    );
    assert_eq!(c.post_raw(Some(&t1b), serde_json::to_vec(&bump).unwrap()).await.0, 200);
    // and again: the same name is rotated.
    let (s, j) = enrol(&c, Some(&rebuild), &host_body("node-1")).await;
    assert_eq!((s, j["replaced"].clone()), (201, serde_json::json!(["k8s-rebuild/node-1"])), "{j}");
    assert_eq!(c.post_raw(Some(&t1b), serde_json::to_vec(&bump).unwrap()).await.0, 401);

    // At most max_hosts_per_enrolment_token valid tokens per enrolment token
    // (k8s/node-1 was revoked by the re-enrolment above).
    for h in ["node-4", "node-5", "node-6"] {
        assert_eq!(enrol(&c, Some(&fleet), &host_body(h)).await.0, 201, "{h}");
    }
    let (s, j) = enrol(&c, Some(&fleet), &host_body("node-7")).await;
    assert_eq!(s, 403, "{j}");
    assert!(j["error"].as_str().unwrap().contains("limit"), "{j}");
    // Revoked: enrols nothing.
    assert!(store.token_revoke("k8s").await.unwrap());
    assert_eq!(enrol(&c, Some(&fleet), &host_body("node-8")).await.0, 401);
    let (_, m) = c.text("/metrics").await;
    for line in [
        "rigwatch_collector_enrolments_total{outcome=\"enrolled\"} 4",
        "rigwatch_collector_enrolments_total{outcome=\"reenrolled\"} 2",
        "rigwatch_collector_enrolments_total{outcome=\"conflict\"} 2",
        "rigwatch_collector_enrolments_total{outcome=\"limit\"} 1",
        "rigwatch_collector_reports_total{outcome=\"rejected_auth\"} 3",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    let hosts: Vec<String> = store
        .hosts(rigwatch_collector::store::now(), 90)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.host)
        .collect();
    assert_eq!(hosts, vec!["node-1".to_string(), "node-3".to_string()]);
}

pub async fn a_findings_events_keep_the_agents_order(store: Store, _dir: &Path) {
    let r0 = 1_700_000_000u64;
    let history =
        |d: &rigwatch_collector::store::FindingDetail| d.history.iter().map(|h| format!("{} {}", h.action, h.detail)).collect::<Vec<_>>();
    let mut f = finding("node1", "f1", "xmrig", "p.example.com", WALLET);
    f.severity = Severity::Likely;
    // The host's clock runs 100 s ahead, then NTP steps it back: the
    // resolve (event 20) is dated before the opening (event 10) but follows it.
    store
        .ingest(report("node1", "a1", vec![opened("a1", 10, r0 + 100, f.clone())]), r0)
        .await
        .unwrap();
    store
        .ingest(report("node1", "a1", vec![resolved("a1", 20, r0 + 5, "f1")]), r0 + 5)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(d.view.state, "resolved", "{:?}", history(&d));
    // A retried batch arrives late: event 40 (confirmed) first, then event
    // 30 (likely), whose clock reads later. The agent's order wins.
    f.severity = Severity::Confirmed;
    store
        .ingest(report("node1", "a1", vec![updated("a1", 40, r0 + 10, f.clone())]), r0 + 20)
        .await
        .unwrap();
    f.severity = Severity::Likely;
    store
        .ingest(report("node1", "a1", vec![updated("a1", 30, r0 + 200, f.clone())]), r0 + 21)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(
        (d.view.state.as_str(), d.view.severity.as_str()),
        ("open", "confirmed"),
        "{:?}",
        history(&d)
    );
    assert!(
        history(&d).iter().any(|h| h.contains("older than the stored state; ignored")),
        "{:?}",
        history(&d)
    );
    // A late resolve from before the confirmation is ignored, whatever its date.
    store
        .ingest(report("node1", "a1", vec![resolved("a1", 35, r0 + 300, "f1")]), r0 + 22)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "node1", "f1").await, "open");
    // A new agent run (another agent id: its numbers start again at 1):
    // the times decide between runs.
    store
        .ingest(report("node1", "a2", vec![resolved("a2", 1, r0 + 1, "f1")]), r0 + 30)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "node1", "f1").await, "open", "dated before the stored state");
    store
        .ingest(report("node1", "a2", vec![resolved("a2", 2, r0 + 400, "f1")]), r0 + 400)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "node1", "f1").await, "resolved");
    // An event id that is not the reporting agent's own `AGENT:SEQ` gets
    // no sequence number: a huge one cannot pin the finding.
    f.severity = Severity::Confirmed;
    let forged = rigwatch_signatures::report::Event {
        event_id: format!("a2:{}", u64::MAX),
        ..updated("a2", 1, r0 + 500, f.clone())
    };
    store.ingest(report("node1", "a2", vec![forged]), r0 + 500).await.unwrap();
    assert_eq!(state_of(&store, "node1", "f1").await, "open", "applied by time");
    store
        .ingest(report("node1", "a2", vec![resolved("a2", 3, r0 + 600, "f1")]), r0 + 600)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "node1", "f1").await, "resolved", "and not pinned");
}

pub async fn a_rotated_token_works_through_its_grace_only(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let old = store.token_create_for("node-a", Role::Agent, Some("host-a")).await.unwrap();
    let body = |host: &str, seq: u64| {
        serde_json::to_vec(&report(
            host,
            "agent-a",
            vec![opened(
                "agent-a",
                seq,
                1000,
                finding(host, &format!("f{seq}"), "xmrig", "p.example.com", WALLET),
            )],
        ))
        .unwrap()
    };
    assert!(store.token_rotate("nobody-has-this", 60).await.unwrap().is_none());
    let new = store.token_rotate("node-a", 3600).await.unwrap().unwrap();
    assert_ne!(new, old);
    // Both secrets work during the grace, for the same host only.
    assert_eq!(c.post_raw(Some(&old), body("host-a", 1)).await.0, 200);
    assert_eq!(c.post_raw(Some(&new), body("host-a", 2)).await.0, 200);
    assert_eq!(c.post_raw(Some(&new), body("host-b", 3)).await.0, 403, "the binding is kept");
    let t = store.token_list().await.unwrap().into_iter().find(|t| t.name == "node-a").unwrap();
    assert!(t.rotated_at > 0 && t.previous_valid_until > t.rotated_at, "{t:?}");
    // Rotating again with no grace: only the newest secret works.
    let newest = store.token_rotate("node-a", 0).await.unwrap().unwrap();
    assert_eq!(c.post_raw(Some(&old), body("host-a", 4)).await.0, 401);
    assert_eq!(c.post_raw(Some(&new), body("host-a", 5)).await.0, 401);
    assert_eq!(c.post_raw(Some(&newest), body("host-a", 6)).await.0, 200);
    // Revoking ends the token, whichever secret.
    assert!(store.token_revoke("node-a").await.unwrap());
    assert_eq!(c.post_raw(Some(&newest), body("host-a", 7)).await.0, 401);
    assert!(store.token_lookup(&newest).await.unwrap().is_none());
}
