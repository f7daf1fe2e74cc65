//! Findings out to SIEMs: the export endpoint's cursor (monotonic, each
//! event once, limit, format) and its auth, on every backend.

use crate::common::*;
use rigwatch_collector::Store;
use serde_json::Value;
use std::path::Path;

/// GET the export with a bearer token (or none): status, cursor header,
/// content type, the NDJSON lines parsed.
async fn export(c: &Collector, token: Option<&str>, query: &str) -> (u16, u64, String, Vec<Value>) {
    let mut rq = c.client.get(format!("{}/api/v1/export?{query}", c.url));
    if let Some(t) = token {
        rq = rq.bearer_auth(t);
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    let cursor = r
        .headers()
        .get("x-rigwatch-cursor")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.text().await.unwrap();
    let lines = if status == 200 {
        body.lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect()
    } else {
        Vec::new()
    };
    (status, cursor, ctype, lines)
}

/// (finding uid, activity) of an OCSF event.
fn ocsf_key(v: &Value) -> (String, u64) {
    (
        v["finding_info"]["uid"].as_str().unwrap_or("").to_string(),
        v["activity_id"].as_u64().unwrap_or(0),
    )
}

pub async fn siem_export_gives_each_finding_event_once(store: Store, dir: &Path) {
    let c = Collector::start(store.clone(), dir, |_| {}).await;
    let analyst = c.analyst_token.clone();
    let a = Some(analyst.as_str());

    // Auth: none 401, an agent token 403, bad parameters 400.
    assert_eq!(export(&c, None, "").await.0, 401);
    assert_eq!(export(&c, Some(&c.agent_token), "").await.0, 403);
    assert_eq!(export(&c, a, "format=cef").await.0, 400);
    assert_eq!(export(&c, a, "cursor=-1").await.0, 400);

    // Nothing yet: an empty body and the same cursor.
    let (s, cur, ctype, lines) = export(&c, a, "").await;
    assert_eq!((s, cur, lines.len()), (200, 0, 0));
    assert_eq!(ctype, "application/x-ndjson");

    let f1 = finding("n1", "f1", "xmrig", "p.example.com", WALLET);
    let f2 = finding("n2", "f2", "xmrig", "q.example.com", WALLET);
    c.post(&report("n1", "a1", vec![opened("a1", 1, 1000, f1.clone())])).await;
    c.post(&report("n2", "a2", vec![opened("a2", 1, 1000, f2.clone())])).await;
    // The same content again: no event. New evidence: an update.
    c.post(&report("n1", "a1", vec![updated("a1", 2, 1001, f1.clone())])).await;
    let mut f1b = f1.clone();
    f1b.evidence.truncate(1);
    c.post(&report("n1", "a1", vec![updated("a1", 3, 1002, f1b.clone())])).await;
    // A batch delivered twice is one event.
    let res = report("n1", "a1", vec![resolved("a1", 4, 1003, "f1")]);
    c.post(&res).await;
    c.post(&res).await;

    // limit=2: two at a time, oldest first, cursor strictly rising.
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let (s, next, _, lines) = export(&c, a, &format!("cursor={cursor}&limit=2")).await;
        assert_eq!(s, 200);
        assert!(lines.len() <= 2);
        if lines.is_empty() {
            assert_eq!(next, cursor, "nothing new: the same cursor");
            break;
        }
        assert!(next > cursor, "the cursor rises: {cursor} -> {next}");
        cursor = next;
        seen.extend(lines);
    }
    let keys: Vec<_> = seen.iter().map(ocsf_key).collect();
    assert_eq!(
        keys,
        vec![("f1".into(), 1), ("f2".into(), 1), ("f1".into(), 2), ("f1".into(), 3)],
        "opened, opened, updated (evidence changed), resolved; each once"
    );
    for v in &seen {
        assert_eq!(v["class_uid"], 2004, "{v}");
        assert_eq!(v["metadata"]["version"], rigwatch_signatures::siem::OCSF_VERSION);
    }
    // The update carries the finding as it stood then: one evidence item
    // more than the process artifact; the opening carried them all.
    let artifacts = |v: &Value| v["evidences"].as_array().map(|a| a.len()).unwrap_or(0);
    assert!(artifacts(&seen[0]) > artifacts(&seen[2]), "{} vs {}", seen[0], seen[2]);

    // Pulled again from the end: nothing. A new event: exactly it.
    assert_eq!(export(&c, a, &format!("cursor={cursor}")).await.3.len(), 0);
    c.post(&report("n2", "a2", vec![resolved("a2", 2, 1004, "f2")])).await;
    let (_, next, _, lines) = export(&c, a, &format!("cursor={cursor}")).await;
    assert_eq!(lines.iter().map(ocsf_key).collect::<Vec<_>>(), vec![("f2".to_string(), 3)]);
    assert!(next > cursor);

    // ECS: the same events, as ECS documents.
    let (_, ecs_next, _, ecs) = export(&c, a, "format=ecs&cursor=0").await;
    assert_eq!(ecs_next, next);
    assert_eq!(ecs.len(), 5);
    assert_eq!(ecs[0]["event"]["id"], "f1", "{}", ecs[0]);
    assert_eq!(ecs[0]["ecs"]["version"], rigwatch_signatures::siem::ECS_VERSION);
    assert_eq!(ecs[0]["event"]["action"], "finding_opened");
    assert_eq!(ecs[4]["event"]["action"], "finding_resolved");

    // limit is capped, not refused; the store's ids are the cursor.
    assert_eq!(export(&c, a, "limit=0").await.3.len(), 1);
    assert_eq!(export(&c, a, "limit=99999999").await.3.len(), 5);
    let ids: Vec<u64> = store.finding_events(0, 100).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(*ids.last().unwrap(), next);
}
