//! The storage suite (tests/suite) against a real PostgreSQL server that
//! this test starts (Debian's `postgresql` package: initdb into a temp dir,
//! pg_ctl on a free loopback port, stopped at the end), over TLS
//! (`sslmode=verify-full` against a test CA; the server refuses plaintext
//! to the suite's databases). Each case gets a fresh database. Then TLS
//! itself: what each sslmode accepts and refuses, against that server and
//! one with `ssl=off`. Skipped, with a message, only when the server
//! binaries are missing.

mod common;
mod suite;

use rigwatch_collector::{db, Store};
use std::path::Path;

macro_rules! pg_case {
    ($pg:ident, $name:ident) => {{
        let url = $pg.database(stringify!($name));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(db::open(&url).expect("connect to the test PostgreSQL"));
        assert_eq!(store.backend_name(), "postgres");
        suite::$name(store, dir.path()).await;
        eprintln!("postgres: {} ok", stringify!($name));
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_the_whole_suite() {
    let Some(pg) = common::Pg::start() else { return };
    macro_rules! each {
        ($name:ident) => {
            pg_case!(pg, $name)
        };
    }
    for_each_case!(each);
    // Two collectors (replicas) on one database see one fleet.
    let url = pg.database("replicas");
    let a = Store::new(db::open(&url).unwrap());
    let b = Store::new(db::open(&url).unwrap());
    let r = common::report(
        "n1",
        "a1",
        vec![common::opened(
            "a1",
            1,
            1000,
            common::finding("n1", "f1", "xmrig", "p.example.com", common::WALLET),
        )],
    );
    let (x, y) = tokio::join!(a.ingest(r.clone(), 2000), b.ingest(r, 2000));
    assert_eq!(
        x.unwrap().new_events + y.unwrap().new_events,
        1,
        "one replica stores the event, the other sees a duplicate"
    );
    assert_eq!(b.findings(&Default::default()).await.unwrap().len(), 1);
    // The server's own view: every connection of both collectors is TLS.
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let (n, tls) = pg.connections("replicas");
    assert!(
        n >= 16,
        "two collectors hold 4 writer and 4 reader connections each; the server sees {n}"
    );
    assert_eq!(tls, n, "every collector connection is TLS 1.2/1.3");

    // SIEM export ids from two replicas writing at once (each with 4
    // writers): a reader pulling with a cursor while they write sees every
    // finding event exactly once, none skipped by a later commit.
    let writes = |s: Store, replica: u64| async move {
        let mut jobs = Vec::new();
        for i in 0..40u64 {
            let s = s.clone();
            jobs.push(tokio::spawn(async move {
                let host = format!("r{replica}-h{i}");
                let f = common::finding(&host, "f1", "xmrig", "p.example.com", common::WALLET);
                s.ingest(common::report(&host, "a1", vec![common::opened("a1", 1, 1000, f)]), 2000)
                    .await
                    .unwrap();
            }));
        }
        for j in jobs {
            j.await.unwrap();
        }
    };
    let reader = {
        let b = b.clone();
        tokio::spawn(async move {
            let (mut cursor, mut seen) = (0u64, Vec::new());
            let t = std::time::Instant::now();
            while seen.len() < 81 && t.elapsed() < std::time::Duration::from_secs(60) {
                for e in b.finding_events(cursor, 7).await.unwrap() {
                    assert!(e.id > cursor);
                    cursor = e.id;
                    seen.push((e.host, e.id));
                }
            }
            seen
        })
    };
    tokio::join!(writes(a.clone(), 1), writes(b.clone(), 2));
    let seen = reader.await.unwrap();
    let mut hosts: Vec<&str> = seen.iter().map(|(h, _)| h.as_str()).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(seen.len(), 81, "n1's finding and 80 more, each once: {seen:?}");
    assert_eq!(hosts.len(), 81);
}

/// The error opening a backend (an `Arc<dyn Backend>` is not Debug).
fn refused(url: &str, ca: Option<&Path>) -> String {
    match db::open_with(url, ca) {
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn postgres_tls_refuses_what_it_cannot_verify() {
    let Some(pg) = common::Pg::start() else { return };
    let ca = pg.ca_file().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-ca.pem");
    common::TestCa::new("rigwatch test PostgreSQL CA").write(&wrong);
    let db = pg.database("tls");
    let at = format!("PostgreSQL at 127.0.0.1:{}", pg.port);

    // verify-full against a CA that did not sign the server's certificate.
    let e = refused(
        &pg.url("tls", &format!("sslmode=verify-full&sslrootcert={}", wrong.display())),
        None,
    );
    assert!(
        e.contains(&format!("{at}: certificate not trusted (sslrootcert={})", wrong.display())),
        "{e}"
    );
    // require with a CA checks the chain too (as libpq does).
    let e = refused(&pg.url("tls", &format!("sslmode=require&sslrootcert={}", wrong.display())), None);
    assert!(e.contains("certificate not trusted"), "{e}");
    // The CA from the collector's config instead of the URL: same answer.
    let e = refused(&pg.url("tls", ""), Some(&wrong));
    assert!(
        e.contains(&format!("certificate not trusted (sslrootcert={})", wrong.display())),
        "{e}"
    );

    // The right CA, but the server's certificate is for localhost and
    // 127.0.0.1, not db.example.com (reached at 127.0.0.1 via hostaddr).
    let other = format!(
        "postgres://postgres@db.example.com:{}/tls?hostaddr=127.0.0.1&sslrootcert={}",
        pg.port,
        ca.display()
    );
    let e = refused(&format!("{other}&sslmode=verify-full"), None);
    assert!(
        e.contains(&format!(
            "PostgreSQL at db.example.com:{}: certificate not valid for the host name",
            pg.port
        )),
        "{e}"
    );
    // verify-ca checks the chain only: the same server is accepted.
    {
        let _b = db::open(&format!("{other}&sslmode=verify-ca")).expect("verify-ca accepts a good chain for another name");
        let (n, tls) = pg.connections("tls");
        assert!(n >= 8 && tls == n, "verify-ca: {tls} of {n} connections are TLS");
    }

    // Plaintext to a database the server serves only over TLS: refused by
    // the server (the suite passing is proof it used TLS).
    let e = refused(&pg.url("tls", "sslmode=disable"), None);
    assert!(e.contains("no encryption"), "{e}");

    // Each accepted way in is really encrypted, in the server's view.
    for (what, url, ca_file) in [
        ("verify-full", db.clone(), None),
        ("verify-full from database_ca_file", pg.url("tls", ""), Some(ca.as_path())),
        ("require, no CA", pg.url("tls", "sslmode=require"), None),
        ("prefer (the default)", pg.url("tls", ""), None),
    ] {
        let b = db::open_with(&url, ca_file).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (n, tls) = pg.connections("tls");
        assert!(n >= 8 && tls == n, "{what}: {tls} of {n} connections are TLS");
        drop(b);
        wait_closed(&pg, "tls");
    }

    // The collector's own command line, as an operator runs it.
    let collector = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rigwatch-collector"))
            .args(args)
            .env("RIGWATCH_LOG", "info")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plain = pg.url("tls", "");
    let (code, out, err) = collector(&[
        "token",
        "create",
        "a1",
        "--database",
        &plain,
        "--database-ca-file",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(&format!("TLS (sslmode=verify-full, sslrootcert={})", ca.display())) && !err.contains("plaintext"),
        "the flag's CA is used, and verified: {err}"
    );
    let (code, _, err) = collector(&["token", "list", "--database", &plain, "--database-ca-file", wrong.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("certificate not trusted"), "{err}");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!("database = {plain:?}\ndatabase_ca_file = {:?}\n", ca.display().to_string()),
    )
    .unwrap();
    let (code, out, err) = collector(&["token", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("a1"), "{out}");
}

/// Waits (bounded) until a database has no client connections left.
fn wait_closed(pg: &common::Pg, name: &str) {
    for _ in 0..200 {
        if pg.connections(name).0 == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("connections to {name} stayed open");
}

#[test]
fn postgres_tls_required_but_not_offered_is_refused() {
    let Some(pg) = common::Pg::start_plain() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    common::TestCa::new("some CA").write(&ca);
    pg.database("plain");
    let at = format!("PostgreSQL at 127.0.0.1:{}", pg.port);
    let e = refused(&pg.url("plain", "sslmode=require"), None);
    assert!(e.contains(&format!("{at}: server does not support TLS but sslmode=require")), "{e}");
    let e = refused(&pg.url("plain", &format!("sslmode=verify-full&sslrootcert={}", ca.display())), None);
    assert!(e.contains("server does not support TLS but sslmode=verify-full"), "{e}");
    // Naming a CA means verify-full: no silent plaintext either.
    let e = refused(&pg.url("plain", ""), Some(&ca));
    assert!(e.contains("server does not support TLS but sslmode=verify-full"), "{e}");
    // prefer (the default) still connects, in plaintext, as before.
    let b = db::open(&pg.url("plain", "")).expect("prefer falls back to plaintext");
    let (n, tls) = pg.connections("plain");
    assert!(n >= 8 && tls == 0, "prefer without TLS on offer: {tls} of {n} connections are TLS");
    drop(b);
}
