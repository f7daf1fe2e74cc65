//! Fleet immunity (issue 16), on every backend: what a confirmed finding
//! teaches, what a hostile agent cannot teach, the signed set agents fetch
//! (ETag / 304, the signature), hits, revocation (API and web page),
//! expiry, the per-host rate of new indicators, and the metrics.

use super::{login, page};
use crate::common::*;
use rigwatch_collector::fleet::{indicator_id, FleetLimits};
use rigwatch_collector::Store;
use rigwatch_signatures::{Evidence, EvidenceKind, Finding, Severity, Weight};
use serde_json::Value;
use std::path::Path;

/// A fetch of the signed set: status, ETag, body (JSON or Null).
async fn fetch(c: &Collector, token: &str, inm: Option<&str>, held: Option<u64>) -> (u16, String, Value) {
    let mut rq = c.client.get(format!("{}/api/v1/fleet/signatures", c.url)).bearer_auth(token);
    if let Some(v) = inm {
        rq = rq.header("if-none-match", v);
    }
    if let Some(v) = held {
        rq = rq.header("x-rigwatch-fleet-version", v.to_string());
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r.headers().get("etag").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let text = r.text().await.unwrap();
    if status == 304 {
        assert!(text.is_empty(), "a 304 has no body: {text:?}");
    }
    (status, etag, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Checks the signature against the returned key; returns the payload.
fn verified(body: &Value) -> Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = body["payload"].as_str().unwrap();
    let sig = b64.decode(body["signature"].as_str().unwrap()).unwrap();
    let key = b64.decode(body["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(key.len(), 32, "a raw ed25519 public key");
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key);
    pk.verify(payload.as_bytes(), &sig).expect("the signature verifies");
    let mut forged = payload.as_bytes().to_vec();
    forged[payload.len() / 2] ^= 1;
    assert!(pk.verify(&forged, &sig).is_err(), "a changed payload fails");
    let p: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(p["version"], body["version"]);
    p
}

/// The rules of the payload's `fleet/indicators.toml`, parsed as agents do.
fn fleet_rules(p: &Value) -> Vec<rigwatch_signatures::Rule> {
    let f = p["files"].as_array().unwrap();
    assert_eq!(f[0]["name"], "fleet/indicators.toml");
    let text = f[0]["text"].as_str().unwrap();
    rigwatch_signatures::rules::parse_file("fleet/indicators.toml", text, &|_| Err("no lists".into()))
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
        .rules
}

fn with_evidence(host: &str, id: &str, severity: Severity, evidence: Vec<Evidence>) -> Finding {
    let mut f = finding(host, id, "xmrig", "p.example.com", WALLET);
    f.severity = severity;
    f.evidence = evidence;
    f
}

fn stratum(login: &str, remote: &str) -> Evidence {
    Evidence::heuristic(
        EvidenceKind::Stratum {
            dialect: "xmrig".into(),
            method: "login".into(),
            agent: None,
            login: Some(login.into()),
            worker: None,
            remote: remote.into(),
        },
        Weight::Confirmed,
    )
}

/// A stratum login a hostile agent sends: valid as a login, hostile to TOML.
const HOSTILE_LOGIN: &str = "acct1\"'''[[rule]]id='evil'#\"\"\"";

async fn metrics(c: &Collector) -> String {
    c.text("/metrics").await.1
}

pub async fn fleet_learns_signs_serves_and_revokes(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let t1 = c.token_for("n1").await;
    // Nothing learned yet: version 1, an empty (but valid) rule file.
    let (s, etag, body) = fetch(&c, &t1, None, Some(0)).await;
    assert_eq!((s, etag.as_str()), (200, "\"1\""), "{body}");
    let p = verified(&body);
    assert!(fleet_rules(&p).is_empty());
    assert_eq!(fetch(&c, &t1, Some("\"1\""), Some(1)).await.0, 304);
    // Only agent tokens fetch.
    assert_eq!(fetch(&c, &c.analyst_token, None, None).await.0, 403);
    assert_eq!(fetch(&c, "rwc_nope", None, None).await.0, 401);

    // A confirmed finding (pool URL + wallet on the command line) teaches its wallet and pool.
    let (s, _) = c
        .post(&report(
            "n1",
            "a1",
            vec![opened("a1", 1, 1000, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
        ))
        .await;
    assert_eq!(s, 200);
    let (s, etag, body) = fetch(&c, &t1, Some("\"1\""), Some(1)).await;
    assert_eq!((s, etag.as_str()), (200, "\"2\""));
    let p = verified(&body);
    let rules = fleet_rules(&p);
    let wallet_id = indicator_id("wallet", WALLET);
    let pool_id = indicator_id("pool_domain", "p.example.com");
    let mut ids: Vec<String> = rules.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut want = vec![format!("fleet.{wallet_id}"), format!("fleet.{pool_id}")];
    want.sort();
    assert_eq!(ids, want);
    let w = rules.iter().find(|r| r.id == format!("fleet.{wallet_id}")).unwrap();
    assert_eq!(w.severity, Weight::Confirmed);
    assert_eq!(w.description, "fleet: taught by n1/f1");
    assert_eq!(
        w.spec,
        rigwatch_signatures::rules::Spec::Wallet {
            coin: "monero".into(),
            regex: WALLET.into()
        }
    );
    assert_eq!(fetch(&c, &t1, Some("\"2\""), Some(2)).await.0, 304);

    // A forged report: "confirmed", with only weak evidence whose weights it inflated.
    let forged = with_evidence(
        "n2",
        "f2",
        Severity::Confirmed,
        vec![
            Evidence::heuristic(
                EvidenceKind::Cpu {
                    cores: 8.0,
                    window_seconds: 30.0,
                },
                Weight::Confirmed,
            ),
            Evidence::heuristic(
                EvidenceKind::ProcessName {
                    name: "github.com".into(),
                    field: "comm".into(),
                },
                Weight::Confirmed,
            ),
        ],
    );
    c.post(&report("n2", "a2", vec![opened("a2", 1, 1000, forged)])).await;
    // A finding that matched a fleet rule counts a hit and teaches nothing
    // (even with a stratum session of its own).
    let hit = with_evidence(
        "n3",
        "f3",
        Severity::Confirmed,
        vec![
            Evidence::from_rule(
                EvidenceKind::Wallet {
                    coin: "monero".into(),
                    address: WALLET.into(),
                    source: "cmdline".into(),
                },
                &format!("fleet.{wallet_id}"),
                Weight::Confirmed,
            ),
            stratum("acct7f3e9a21bc", "185.199.108.7:14444"),
        ],
    );
    c.post(&report("n3", "a3", vec![opened("a3", 1, 1000, hit.clone())])).await;
    c.post(&report("n3", "a3", vec![updated("a3", 2, 1001, hit)])).await;
    let (s, list) = c.get("/api/v1/fleet/indicators").await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "the forged and the fleet-matching findings taught nothing: {list:?}");
    let w = list.iter().find(|i| i["id"] == wallet_id.as_str()).unwrap();
    assert_eq!(w["kind"], "wallet");
    assert_eq!(w["value"], WALLET);
    assert_eq!(w["taught_by"], serde_json::json!({"host": "n1", "finding": "f1"}));
    assert_eq!(w["state"], "live");
    assert_eq!(w["hits"], 1, "one finding, counted once however often it is reported");
    assert_eq!(w["expires"].as_u64().unwrap(), w["last_seen"].as_u64().unwrap() + 30 * 86400);
    assert_eq!(fetch(&c, &t1, Some("\"2\""), None).await.0, 304, "nothing changed the set");
    let m = metrics(&c).await;
    for line in [
        "rigwatch_collector_fleet_version 2",
        "rigwatch_collector_fleet_indicators{kind=\"wallet\",state=\"live\"} 1",
        "rigwatch_collector_fleet_indicators{kind=\"pool_domain\",state=\"live\"} 1",
        "rigwatch_collector_fleet_learning_refused_total{reason=\"not_confirmed\"} 1",
        "rigwatch_collector_fleet_learning_refused_total{reason=\"fleet_evidence\"} 2",
        "rigwatch_collector_agent_fleet_version{host=\"n1\"} 2",
        "rigwatch_collector_fleet_fetches_total{status=\"304\"} 3",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    assert!(m.contains(&format!(
        "rigwatch_collector_fleet_indicator_hits_total{{indicator=\"{wallet_id}\"}} 1"
    )));

    // Revocation through the API: analysts only; the indicator leaves the set.
    let revoke = |token: String, id: String| {
        c.client
            .post(format!("{}/api/v1/fleet/indicators/{id}/revoke", c.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(revoke(t1.clone(), wallet_id.clone()).await.unwrap().status().as_u16(), 403);
    assert_eq!(
        revoke(c.analyst_token.clone(), wallet_id.clone()).await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        revoke(c.analyst_token.clone(), wallet_id.clone()).await.unwrap().status().as_u16(),
        404
    );
    let (s, etag, body) = fetch(&c, &t1, Some("\"2\""), None).await;
    assert_eq!((s, etag.as_str()), (200, "\"3\""));
    let rules = fleet_rules(&verified(&body));
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id, format!("fleet.{pool_id}"));
    let (_, list) = c.get("/api/v1/fleet/indicators").await;
    let w = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == wallet_id.as_str())
        .unwrap()
        .clone();
    assert_eq!((w["state"].as_str(), w["revoked_by"].as_str()), (Some("revoked"), Some("alice")));
    // Seeing a revoked indicator again does not bring it back.
    c.post(&report(
        "n1",
        "a1",
        vec![updated("a1", 2, 1002, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    assert_eq!(store.fleet_version().await.unwrap(), 3);

    // The web page: listed with its origin, hits and a Revoke button guarded by the form token.
    let (_, cookie) = login(&c, &c.analyst_token.clone()).await;
    let cookie = cookie.unwrap();
    let (s, _, html) = page(&c, &cookie, "/fleet").await;
    assert_eq!(s, 200);
    assert!(html.contains(&format!("id=\"revoke-{pool_id}\"")), "{html}");
    assert!(!html.contains(&format!("id=\"revoke-{wallet_id}\"")), "a revoked one has no button");
    assert!(html.contains("href=\"/findings/n1/f1\""), "{html}");
    assert!(html.contains("revoked"));
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let post = |csrf: String| {
        c.client
            .post(format!("{}/fleet/indicators/{pool_id}/revoke", c.url))
            .header("cookie", cookie.clone())
            .form(&[("csrf", csrf)])
            .send()
    };
    assert_eq!(post("forged".into()).await.unwrap().status().as_u16(), 403);
    assert_eq!(store.fleet_version().await.unwrap(), 3, "a forged form changes nothing");
    let r = post(csrf).await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(store.fleet_version().await.unwrap(), 4);
    // Without a session, the page sends to the login.
    assert_eq!(c.text("/fleet").await.0, 303);
    // Hit records are pruned with old event ids (one: n3's finding).
    assert_eq!(store.fleet_prune_hits(rigwatch_collector::store::now() + 1).await.unwrap(), 1);
}

pub async fn fleet_indicators_expire_and_come_back(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.ingest.fleet.ttl_days = 7).await;
    c.post(&report(
        "n1",
        "a1",
        vec![opened("a1", 1, 1000, finding("n1", "f1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    let limits = FleetLimits {
        ttl_days: 7,
        ..Default::default()
    };
    let now = rigwatch_collector::store::now();
    assert_eq!(store.fleet_expire(now + 86400, limits).await.unwrap(), 0);
    let v = store.fleet_version().await.unwrap();
    assert_eq!(store.fleet_expire(now + 8 * 86400, limits).await.unwrap(), 2);
    assert_eq!(store.fleet_version().await.unwrap(), v + 1, "expiry changes the set");
    let snap = store.fleet_snapshot(limits).await.unwrap();
    assert!(snap.indicators.is_empty());
    let list = store.fleet_indicators(limits).await.unwrap();
    assert!(list.iter().all(|i| i.state == "expired"), "{list:?}");
    // Seen again in a confirmed finding: live again (its first teacher kept).
    c.post(&report(
        "n2",
        "a2",
        vec![opened("a2", 1, 1000, finding("n2", "g1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    assert_eq!(store.fleet_version().await.unwrap(), v + 2);
    let list = store.fleet_indicators(limits).await.unwrap();
    assert!(list.iter().all(|i| i.state == "live" && i.taught_by.host == "n1"), "{list:?}");
}

pub async fn fleet_learning_is_capped_per_host(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |s| s.ingest.fleet.per_host_per_hour = 3).await;
    // A host that "confirms" a miner with many wallets and pools.
    let wallets: Vec<String> = (0..6).map(|i| format!("{}{i}", &WALLET[..90])).collect();
    let f = with_evidence(
        "n1",
        "f1",
        Severity::Confirmed,
        vec![
            Evidence::heuristic(
                EvidenceKind::MinerConfig {
                    path: "/tmp/config.json".into(),
                    pools: vec!["a.pool.example:3333".into(), "b.pool.example:3333".into()],
                    wallets: wallets.clone(),
                    keys: vec![],
                    sha256: None,
                },
                Weight::Likely,
            ),
            stratum(HOSTILE_LOGIN, "185.199.108.7:14444"),
        ],
    );
    let (s, _) = c.post(&report("n1", "a1", vec![opened("a1", 1, 1000, f)])).await;
    assert_eq!(s, 200);
    let list = store.fleet_indicators(FleetLimits::default()).await.unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let m = metrics(&c).await;
    assert!(
        m.contains("rigwatch_collector_fleet_learning_refused_total{reason=\"rate_limited\"} 7"),
        "6 wallets + 2 pools + 1 address - 3 stored\n{m}"
    );
    // Another host has its own allowance.
    c.post(&report(
        "n2",
        "a2",
        vec![opened("a2", 1, 1000, finding("n2", "f1", "xmrig", "p.example.com", WALLET))],
    ))
    .await;
    assert_eq!(store.fleet_indicators(FleetLimits::default()).await.unwrap().len(), 5);
    // A hostile login (quotes, a TOML table header, ''') from a host with allowance left.
    let f = with_evidence("n3", "f1", Severity::Confirmed, vec![stratum(HOSTILE_LOGIN, "185.199.108.7:14444")]);
    c.post(&report("n3", "a3", vec![opened("a3", 1, 1000, f)])).await;
    let list = store.fleet_indicators(FleetLimits::default()).await.unwrap();
    assert_eq!(list.len(), 7, "{list:?}");
    assert!(list.iter().any(|i| i.kind == "cmdline" && i.value == HOSTILE_LOGIN), "{list:?}");
    // What is served parses, one rule per indicator, whatever the values.
    let t = c.token_for("n1").await;
    let (s, _, body) = fetch(&c, &t, None, None).await;
    assert_eq!(s, 200);
    let rules = fleet_rules(&verified(&body));
    assert_eq!(rules.len(), 7);
    assert!(rules.iter().all(|r| r.id.starts_with("fleet.")), "no injected rule");
    assert!(rules.iter().any(|r| r.spec
        == rigwatch_signatures::rules::Spec::Cmdline {
            literals: vec![HOSTILE_LOGIN.into()],
            regexes: vec![]
        }));
}

/// A policy switched on (or off) while agents hold the set reaches them as
/// a new version, not a 304; the same policy again changes nothing.
pub async fn fleet_policy_change_is_a_new_set_version(store: Store, _dir: &Path) {
    let v = store.fleet_version().await.unwrap();
    assert!(store.fleet_policy(false).await.unwrap(), "first record");
    assert_eq!(store.fleet_version().await.unwrap(), v, "recording the default changes no set");
    assert!(!store.fleet_policy(false).await.unwrap());
    assert!(store.fleet_policy(true).await.unwrap());
    assert_eq!(store.fleet_version().await.unwrap(), v + 1, "forbid: a new set");
    assert!(!store.fleet_policy(true).await.unwrap());
    assert_eq!(store.fleet_version().await.unwrap(), v + 1, "the same policy again: nothing");
    assert!(store.fleet_policy(false).await.unwrap());
    assert_eq!(store.fleet_version().await.unwrap(), v + 2, "allowed again: a new set");
}
