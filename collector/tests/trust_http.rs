//! The collector's front door against hostile clients: a request is
//! authenticated from its headers before its body is read, slow headers and
//! slow bodies are cut off, open connections are capped, and many large
//! unauthenticated bodies leave the collector's memory flat (the real
//! binary, its RSS read from /proc).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rigwatch-collector");

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Sends `head` (request line and headers, no body) and reads what comes
/// back until the server answers or closes, at most `wait`.
fn send_head(addr: &str, head: &str, wait: Duration) -> (String, Duration) {
    let t = Instant::now();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (String::new(), t.elapsed()); // not listening (yet)
    };
    s.set_read_timeout(Some(wait)).unwrap();
    if s.write_all(head.as_bytes()).is_err() {
        return (String::new(), t.elapsed());
    }
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    (String::from_utf8_lossy(&buf[..n]).to_string(), t.elapsed())
}

fn report_head(token: Option<&str>, length: usize) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("POST /api/v1/reports HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |_| {}).await;
    let addr = addr_of(&c.url);
    let analyst = c.analyst_token.clone();
    let answers = tokio::task::spawn_blocking(move || {
        [
            send_head(&addr, &report_head(None, 4_000_000), Duration::from_secs(10)),
            send_head(&addr, &report_head(Some("rwc_guess"), 4_000_000), Duration::from_secs(10)),
            send_head(&addr, &report_head(Some(&analyst), 4_000_000), Duration::from_secs(10)),
        ]
    })
    .await
    .unwrap();
    // Each answered with only the headers sent: the 4 MB body never came.
    for ((text, _), want) in answers.iter().zip(["401", "401", "403"]) {
        assert!(text.starts_with(&format!("HTTP/1.1 {want}")), "want {want}, got {text:?}");
    }
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"rejected_auth\"} 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_agents_still_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |s| {
        s.header_timeout = Duration::from_secs(2);
        s.request_timeout = Duration::from_secs(3);
    })
    .await;
    let addr = addr_of(&c.url);
    let token = c.token_for("n1").await;
    // 40 clients that never finish their headers, one whose body stalls.
    let slow = {
        let addr = addr.clone();
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            let heads: Vec<_> = (0..40)
                .map(|_| {
                    let addr = addr.clone();
                    std::thread::spawn(move || send_head(&addr, "POST /api/v1/reports HTTP/1.1\r\nHost: coll", Duration::from_secs(30)))
                })
                .collect();
            let body = std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(report_head(Some(&token), 1000).as_bytes()).unwrap();
                s.write_all(b"{\"version\":").unwrap();
                let t = Instant::now();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                (String::from_utf8_lossy(&buf[..n]).to_string(), t.elapsed())
            });
            (
                heads.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>(),
                body.join().unwrap(),
            )
        })
    };
    // Meanwhile an agent's report goes through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, j) = c.post(&report("n1", "a1", vec![heartbeat("a1", 1, 1000)])).await;
    assert_eq!(s, 200, "{j}");
    let (heads, (body_answer, body_took)) = slow.await.unwrap();
    for (text, took) in &heads {
        // Closed (or answered 408) once the header deadline passed, well before 30 s.
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text:?}");
        assert!(*took < Duration::from_secs(15), "a slow-header client held on for {took:?}");
    }
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer:?}");
    assert!(body_took < Duration::from_secs(15), "a slow body held on for {body_took:?}");
    let (s, _) = c.post(&report("n1", "a1", vec![heartbeat("a1", 2, 1000)])).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |s| s.max_connections = 4).await;
    let addr = addr_of(&c.url);
    let (held, over) = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let over = send_head(&addr, "GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n", Duration::from_secs(5));
        (held, over)
    })
    .await
    .unwrap();
    assert_eq!(over.0, "", "the fifth connection is closed unanswered");
    drop(held);
    // Once they close, there is room again.
    let t = Instant::now();
    loop {
        match c.client.get(format!("{}/healthz", c.url)).send().await {
            Ok(r) if r.status().as_u16() == 200 => break,
            _ => {}
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no room after the held connections closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unauthenticated_large_bodies_leave_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server(
        std::process::Command::new(BIN)
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while send_head(&addr, "GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n", Duration::from_secs(2))
        .0
        .is_empty()
    {
        assert!(t.elapsed() < Duration::from_secs(20), "collector did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = server.0.id();
    let before = rss_kib(pid);
    // 60 clients at once, each announcing and sending a 4 MiB body.
    let clients: Vec<_> = (0..60)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(report_head(None, 4 << 20).as_bytes()).unwrap();
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..64 {
                    if s.write_all(&chunk).is_err() {
                        break; // the collector closed the connection: it will not read it
                    }
                }
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).to_string()
            })
        })
        .collect();
    let answers: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let after = rss_kib(pid);
    let answered = answers.iter().filter(|a| a.starts_with("HTTP/1.1 401")).count();
    eprintln!("collector RSS {before} KiB before, {after} KiB after 60 × 4 MiB unauthenticated; {answered} answered 401");
    assert!(answered >= 1, "{answers:?}");
    assert!(answers.iter().all(|a| a.is_empty() || a.starts_with("HTTP/1.1 401")), "{answers:?}");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// A finding as an attacker with an agent token would send it: the
/// strongest evidence of [`finding`], then `extra` more items.
fn padded(host: &str, id: &str, cmdline_bytes: usize, extra: usize) -> rigwatch_signatures::Finding {
    use rigwatch_signatures::{Evidence, EvidenceKind, Weight};
    let mut f = finding(host, id, "xmrig", "pool.example.com", WALLET);
    if cmdline_bytes > 0 {
        f.process.cmdline = format!("xmrig -o stratum+tcp://pool.example.com:3333 {}", "A".repeat(cmdline_bytes));
    }
    f.evidence.extend((0..extra).map(|i| {
        Evidence::from_rule(
            EvidenceKind::CommandLine {
                matched: format!("stratum+tcp://pool{i}.example.net:3333"),
                base64: false,
                pool_url: true,
            },
            "cmdline.pool-url",
            Weight::Suspicious,
        )
    }));
    f
}

/// The finding as the collector stored it (the API's `finding`).
async fn stored(c: &Collector, host: &str, id: &str) -> serde_json::Value {
    let (s, j) = c.get(&format!("/api/v1/findings/{host}/{id}")).await;
    assert_eq!(s, 200, "{host}/{id}: {j}");
    j["finding"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_findings_are_stored_trimmed_to_the_agents_cap() {
    use rigwatch_signatures::model::MAX_FINDING_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |_| {}).await;
    let long = padded("big-1", "long-cmdline", 1 << 20, 0);
    let many = padded("big-1", "many-evidence", 0, 10_000);
    let normal = finding("big-1", "normal", "kswapd0", "pool.example.com", WALLET);
    let r = report(
        "big-1",
        "a1",
        vec![
            opened("a1", 1, 1000, long.clone()),
            opened("a1", 2, 1000, many.clone()),
            opened("a1", 3, 1000, normal.clone()),
        ],
    );
    let body = serde_json::to_vec(&r).unwrap();
    eprintln!("report body: {} bytes", body.len());
    assert!(body.len() > 2 << 20 && body.len() < c.app.settings.max_body_bytes, "{}", body.len());
    let (s, j) = c.post(&r).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["stored"], 3, "{j}");

    for (sent, what) in [(&long, "a 1 MiB command line"), (&many, "10,000 evidence items")] {
        let f = stored(&c, "big-1", &sent.id).await;
        let n = serde_json::to_vec(&f).unwrap().len();
        eprintln!("{what}: sent {} bytes, stored {n}", serde_json::to_vec(sent).unwrap().len());
        assert!(n <= MAX_FINDING_BYTES, "{what}: stored {n} bytes");
        assert_eq!(f["severity"], "confirmed", "{what}: severity unchanged");
        assert_eq!((f["id"].as_str(), f["host"].as_str()), (Some(sent.id.as_str()), Some("big-1")));
        let ev = f["evidence"].as_array().unwrap();
        let notes: Vec<_> = ev.iter().filter(|e| e["kind"] == "trimmed").collect();
        assert_eq!(notes.len(), 1, "{what}: one trimmed note in {ev:?}");
        assert!(
            notes[0]["note"].as_str().unwrap_or("").starts_with("trimmed to fit 65536 bytes"),
            "{what}: {}",
            notes[0]
        );
        assert!(notes[0]["original_bytes"].as_u64().unwrap() > 1_000_000, "{}", notes[0]);
        assert_eq!(ev[0]["rule"], "cmdline.pool-url", "{what}: the strongest evidence stays first");
        assert!(ev.iter().any(|e| e["rule"] == "wallet.monero"), "{what}: the wallet stays");
        // what the analyst sees says the same
        let (_, view) = c.get(&format!("/api/v1/findings/big-1/{}", sent.id)).await;
        assert_eq!(view["severity"], "confirmed");
    }
    let cmdline = stored(&c, "big-1", "long-cmdline").await["process"]["cmdline"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cmdline.starts_with("xmrig -o stratum+tcp://pool.example.com:3333 AAAA") && cmdline.ends_with('…'));
    assert!(cmdline.len() < 8192, "{} bytes", cmdline.len());
    let kept = stored(&c, "big-1", "many-evidence").await["evidence"].as_array().unwrap().len();
    assert!(kept < 1000, "{kept} evidence items kept");

    // The finding within the cap is stored exactly as sent.
    let whole: rigwatch_signatures::Finding = serde_json::from_value(stored(&c, "big-1", "normal").await).unwrap();
    assert_eq!(whole, normal);
    assert!(!whole.evidence.iter().any(|e| e.kind() == "trimmed"));

    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_findings_trimmed_total 2"), "{m}");
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"stored\"} 1"), "{m}");

    // An update as large is trimmed as well; the note is not doubled.
    let (s, j) = c
        .post(&report(
            "big-1",
            "a1",
            vec![updated("a1", 4, 1001, padded("big-1", "normal", 1 << 20, 5_000))],
        ))
        .await;
    assert_eq!(s, 200, "{j}");
    let f = stored(&c, "big-1", "normal").await;
    assert!(serde_json::to_vec(&f).unwrap().len() <= MAX_FINDING_BYTES);
    assert_eq!(
        f["evidence"].as_array().unwrap().iter().filter(|e| e["kind"] == "trimmed").count(),
        1
    );
    let (_, m) = c.text("/metrics").await;
    assert!(m.contains("rigwatch_collector_findings_trimmed_total 3"), "{m}");
}

/// Posts `body` on a raw connection (the collector may answer and close
/// before the body is all sent); returns the answer's first bytes.
fn post_body(addr: &str, token: &str, body: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let head = report_head(Some(token), body.len());
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        for chunk in body.chunks(64 * 1024) {
            if w.write_all(chunk).is_err() {
                break; // answered and closed: the rest is never read
            }
        }
    });
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let _ = writer.join();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_reports_over_the_body_limit_get_413_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |_| {}).await;
    let token = c.token_for("huge-1").await;
    let r = report(
        "huge-1",
        "a1",
        vec![
            heartbeat("a1", 1, 1000),
            opened("a1", 2, 1000, padded("huge-1", "absurd", 2 << 20, 40_000)),
            opened("a1", 3, 1000, finding("huge-1", "small", "xmrig", "pool.example.com", WALLET)),
        ],
    );
    let body = serde_json::to_vec(&r).unwrap();
    let limit = c.app.settings.max_body_bytes;
    assert!(body.len() > limit, "{} bytes is over the limit of {limit}", body.len());
    let addr = addr_of(&c.url);
    let answer = tokio::task::spawn_blocking(move || post_body(&addr, &token, body)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    let (_, m) = c.text("/metrics").await;
    assert!(
        m.contains("rigwatch_collector_reports_total{outcome=\"rejected_too_large\"} 1"),
        "{m}"
    );
    assert!(m.contains("rigwatch_collector_reports_total{outcome=\"stored\"} 0"), "{m}");
    assert!(m.contains("rigwatch_collector_events_stored_total 0"), "{m}");
    // Nothing of it was stored: not the host, not either finding.
    let (s, hosts) = c.get("/api/v1/hosts").await;
    assert_eq!((s, hosts), (200, serde_json::json!([])));
    let (s, list) = c.get("/api/v1/findings?host=huge-1").await;
    assert_eq!((s, list), (200, serde_json::json!([])));
    let (s, _) = c.get("/api/v1/findings/huge-1/small").await;
    assert_eq!(s, 404);
}
