//! Configuration as evidence: each host's reported configuration is kept
//! as a history of changes, named, counted, shown and alerted on.

use super::{login, page};
use crate::common::*;
use rigwatch_collector::Store;
use rigwatch_signatures::report::{ConfigState, Event, EventKind, LocalFile, Report};
use std::path::Path;

fn with_config(host: &str, agent: &str, seq: u64, cfg: &ConfigState) -> Report {
    let mut r = report(host, agent, vec![heartbeat(agent, seq, 1000 + seq)]);
    r.agent.config = Some(cfg.clone());
    r
}

fn state() -> ConfigState {
    let mut s = ConfigState {
        digest: "c0ffee".repeat(10),
        collector: "https://collector.example:9860".into(),
        ..Default::default()
    };
    s.allowlist.digest = "a1".into();
    s.allowlist.entries = 2;
    s.signatures.fleet = 3;
    s
}

pub async fn agent_config_history_changes_and_alerts(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    // the first report sets the baseline: a row, no change worth an alert
    let s0 = state();
    assert_eq!(c.post(&with_config("n1", "a1", 1, &s0)).await.0, 200);
    let h = store.config_history("n1").await.unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0].changes.is_empty(), "{:?}", h[0].changes);
    // the same state again, or only the fleet set moving: no new row
    assert_eq!(c.post(&with_config("n1", "a1", 2, &s0)).await.0, 200);
    let mut moved = s0.clone();
    moved.signatures.fleet = 4;
    moved.signatures.version = "v4".into();
    assert_eq!(c.post(&with_config("n1", "a1", 3, &moved)).await.0, 200);
    assert_eq!(store.config_history("n1").await.unwrap().len(), 1);
    assert!(store.config_alerts(0).await.unwrap().is_empty());

    // a local allow rule: allowlist and overrides change, both alert
    let mut s1 = moved.clone();
    s1.allowlist.digest = "a2".into();
    s1.allowlist.entries = 3;
    s1.allowlist.local = 1;
    s1.allowlist.files = vec!["/etc/rigwatch/signatures.d/mine.toml".into()];
    s1.signatures.local = vec![LocalFile {
        name: "/etc/rigwatch/signatures.d/mine.toml".into(),
        sha256: "ab".repeat(32),
    }];
    assert_eq!(c.post(&with_config("n1", "a1", 4, &s1)).await.0, 200);
    let h = store.config_history("n1").await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].seq, 2, "newest first");
    let whats: Vec<(&str, bool)> = h[0].changes.iter().map(|c| (c.what.as_str(), c.alert)).collect();
    assert_eq!(whats, [("allowlist", true), ("overrides", true)]);
    assert!(
        h[0].changes[0].after.contains("1 local (/etc/rigwatch/signatures.d/mine.toml)"),
        "{:?}",
        h[0].changes[0]
    );
    assert!(h[0].changes[0].before.contains("0 local"), "{:?}", h[0].changes[0]);
    assert_eq!(store.config_alerts(0).await.unwrap().len(), 1);

    // a sensor switched off, on another host whose first report has one off already
    let mut s2 = s1.clone();
    s2.sensors_off = vec!["capture".into()];
    s2.digest = "d2".into();
    assert_eq!(c.post(&with_config("n1", "a1", 5, &s2)).await.0, 200);
    let h = store.config_history("n1").await.unwrap();
    let whats: Vec<(&str, bool)> = h[0].changes.iter().map(|c| (c.what.as_str(), c.alert)).collect();
    assert_eq!(whats, [("sensors_off", true), ("config", false)]);
    let mut off = state();
    off.sensors_off = vec!["gpu".into()];
    assert_eq!(c.post(&with_config("n2", "a2", 1, &off)).await.0, 200);
    let h2 = store.config_history("n2").await.unwrap();
    assert_eq!(h2[0].changes.len(), 1);
    assert!(h2[0].changes[0].alert && h2[0].changes[0].what == "sensors_off");

    // hostile input: oversize strings and lists are bounded, odd sensor
    // names never reach a metric label
    let mut evil = state();
    evil.digest = "x".repeat(100_000);
    evil.collector = "<script>alert(1)</script>".into();
    evil.sensors_off = (0..1000).map(|i| format!("s{i}\"}} 1\nfake_metric")).collect();
    evil.signatures.local = (0..5000)
        .map(|i| LocalFile {
            name: format!("/etc/rigwatch/signatures.d/{i:05}.toml"),
            sha256: "y".repeat(300),
        })
        .collect();
    assert_eq!(c.post(&with_config("n3", "a3", 1, &evil)).await.0, 200);
    let h3 = store.config_history("n3").await.unwrap();
    let st = &h3[0].state;
    assert!(st.digest.len() <= 256);
    assert_eq!(st.sensors_off, ["invalid"]);
    assert_eq!(st.signatures.local.len(), 64);
    assert_eq!(st.signatures.local_more, 5000 - 64);
    assert!(st.signatures.local.iter().all(|f| f.sha256.len() <= 256));
    // rows per host are capped
    for i in 0..120u64 {
        let mut s = state();
        s.digest = format!("d{i}");
        store.ingest(with_config("n4", "a4", i + 1, &s), 2000 + i).await.unwrap();
    }
    let h4 = store.config_history("n4").await.unwrap();
    assert_eq!(h4.len(), 100);
    assert_eq!(h4[0].seq, 120);

    // metrics: changes by what; sensors off by host and sensor
    let (s, m) = c.text("/metrics").await;
    assert_eq!(s, 200);
    assert!(
        m.contains("rigwatch_collector_agent_config_changes_total{what=\"allowlist\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rigwatch_collector_agent_config_changes_total{what=\"overrides\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rigwatch_collector_agent_config_changes_total{what=\"sensors_off\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("rigwatch_collector_agent_sensors_off{host=\"n1\",sensor=\"capture\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rigwatch_collector_agent_sensors_off{host=\"n2\",sensor=\"gpu\"} 1"),
        "{m}"
    );
    assert!(!m.contains("fake_metric"), "{m}");

    // the host page shows the state and its changes, escaped
    let (_, cookie) = login(&c, &c.analyst_token.clone()).await;
    let cookie = cookie.unwrap();
    let (s, _, html) = page(&c, &cookie, "/hosts/n1").await;
    assert_eq!(s, 200);
    assert!(html.contains("id=\"config-history\""), "{html}");
    assert!(html.contains("/etc/rigwatch/signatures.d/mine.toml"), "{html}");
    assert!(html.contains("allowlist") && html.contains("sensors_off"), "{html}");
    let (s, _, html) = page(&c, &cookie, "/hosts/n3").await;
    assert_eq!(s, 200);
    assert!(
        !html.contains("<script>alert(1)") && html.contains("&lt;script&gt;alert(1)"),
        "{html}"
    );

    // an agent's last word: stopped (by a signal), not merely silent, until it reports again
    let stop = Event {
        event_id: "a1:100".into(),
        at: 1100,
        kind: EventKind::Stopping {
            reason: format!("SIGTERM{}", "<b>".repeat(100)),
        },
    };
    assert_eq!(c.post(&report("n1", "a1", vec![stop])).await.0, 200);
    let stopped = |hosts: Vec<rigwatch_collector::store::HostView>| hosts.into_iter().find(|h| h.host == "n1").unwrap().stopped;
    let why = stopped(store.hosts(rigwatch_collector::store::now(), 90).await.unwrap()).expect("stopped");
    assert!(why.starts_with("SIGTERM") && why.len() <= 128, "{why}");
    let (_, _, html) = page(&c, &cookie, "/hosts/n1").await;
    assert!(html.contains("stopped (SIGTERM&lt;b&gt;"), "{html}");
    assert_eq!(c.post(&report("n1", "a1", vec![heartbeat("a1", 101, 1200)])).await.0, 200);
    assert_eq!(stopped(store.hosts(rigwatch_collector::store::now(), 90).await.unwrap()), None);
}
