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
        .ingest(report("node1", "a1", vec![opened("a1", 1, 1000, f.clone())]), now)
        .await
        .unwrap();
    assert!(out.findings_changed);
    f.severity = Severity::Confirmed;
    store
        .ingest(report("node1", "a1", vec![updated("a1", 2, 1010, f.clone())]), now)
        .await
        .unwrap();
    let v = store.findings(&FindingFilter::default()).await.unwrap();
    assert_eq!((v[0].severity.as_str(), v[0].state.as_str()), ("confirmed", "open"));
    assert_eq!(v[0].rule, "cmdline.pool-url");
    assert_eq!(v[0].pool, "pool.example.com");
    assert_eq!(v[0].process, "xmrig");
    store
        .ingest(report("node1", "a1", vec![resolved("a1", 3, 1020, "f1")]), now)
        .await
        .unwrap();
    let d = store.finding("node1", "f1").await.unwrap().unwrap();
    assert_eq!(
        (d.view.state.as_str(), d.view.state_reason.as_str()),
        ("resolved", "process exited")
    );
    // A late, older update does not reopen it.
    store
        .ingest(report("node1", "a1", vec![updated("a1", 4, 1015, f.clone())]), now)
        .await
        .unwrap();
    assert_eq!(store.finding("node1", "f1").await.unwrap().unwrap().view.state, "resolved");
    // A newer one does.
    store
        .ingest(report("node1", "a1", vec![updated("a1", 5, 1030, f.clone())]), now)
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
        .ingest(report("node1", "a1", vec![updated("a1", 6, 1040, f.clone())]), now)
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

async fn page(c: &Collector, cookie: &str, path: &str) -> (u16, String, String) {
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
