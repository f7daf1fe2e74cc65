//! The storage suite (tests/suite) against SQLite, one test per case.

mod common;
mod suite;

macro_rules! sqlite_case {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            suite::$name(common::sqlite_store(dir.path()), dir.path()).await;
        }
    };
}

for_each_case!(sqlite_case);
