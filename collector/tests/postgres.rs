//! The storage suite (tests/suite) against a real PostgreSQL server that
//! this test starts (Debian's `postgresql` package: initdb into a temp dir,
//! pg_ctl on a free loopback port, stopped at the end). Each case gets a
//! fresh database. Skipped, with a message, only when the server binaries
//! are missing.

mod common;
mod suite;

use rigwatch_collector::{db, Store};

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
}
