//! Ingest benchmark: many simulated agents POST reports over loopback to an
//! in-process collector; reports/s and latency percentiles, for SQLite and
//! for PostgreSQL (a throwaway server from Debian's package, as in the
//! tests).
//!
//! `cargo bench -p rigwatch-collector --bench ingest`
//! Environment: BENCH_AGENTS (default 500 concurrent agents), BENCH_SECONDS
//! (default 10 measured seconds, after 2 s of warm-up), BENCH_BACKENDS
//! (default "sqlite,postgres"), BENCH_RATES (default "0,2000": 0 is as
//! fast as the agents can send, a number paces all agents together to that
//! many reports/s, an open loop for latency below saturation).
//!
//! Each report is one agent's batch: a heartbeat plus one finding event
//! (opened the first time, then updated with new evidence), full
//! evidence, about 1.5 KB of JSON — every report writes the host row, one
//! event row, the finding, its campaign keys and a history line.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use rigwatch_collector::config::Settings;
use rigwatch_collector::store::Role;
use rigwatch_collector::{db, App, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn bench(name: &str, store: Store, agents: usize, seconds: u64, rate: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Vec::new();
    for i in 0..agents {
        tokens.push(store.token_create(&format!("agent-{i}"), Role::Agent).await.unwrap());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = Settings::with_data_dir(dir.path());
    settings.listen = addr.to_string();
    // Throughput, not the per-token rate limit, is measured here.
    settings.reports_per_second = 1e6;
    settings.report_burst = 1_000_000;
    let app = App::new(store, settings);
    let server = tokio::spawn(rigwatch_collector::serve_listener(app.clone(), listener));
    let url = format!("http://{addr}/api/v1/reports");
    let client = reqwest::Client::builder().pool_max_idle_per_host(agents).build().unwrap();

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (client, url, measuring, stop) = (client.clone(), url.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let host = format!("node-{i:05}");
            let agent = format!("agent-{i}");
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut seq = 0u64;
            // Paced: each agent sends every agents/rate seconds, starting at a
            // random offset (an open loop at `rate` reports/s in all).
            let period = (rate > 0).then(|| Duration::from_secs_f64(agents as f64 / rate as f64));
            let mut next = Instant::now() + period.map(|p| p.mul_f64((i as f64 * 0.618_034) % 1.0)).unwrap_or_default();
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                seq += 2;
                let mut f = finding(&host, "f1", "kworker/0:2", &format!("pool{}.example.com", i % 50), WALLET);
                f.last_seen = 1000 + seq;
                f.cpu_cores = Some(1.0 + (seq % 10) as f64 / 10.0);
                let ev = if seq == 2 {
                    opened(&agent, seq, 1000 + seq, f)
                } else {
                    updated(&agent, seq, 1000 + seq, f)
                };
                let r = report(&host, &agent, vec![heartbeat(&agent, seq + 1, 1000 + seq), ev]);
                let body = serde_json::to_vec(&r).unwrap();
                let t = Instant::now();
                let ok = match client.post(&url).bearer_auth(&token).body(body).send().await {
                    Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {name} | {agents} | {} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {errors} |",
        if rate > 0 {
            format!("paced, {rate}/s")
        } else {
            "as fast as possible".into()
        },
        all.len(),
        all.len() as f64 / elapsed,
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*all.last().unwrap_or(&Duration::ZERO)),
    );
    let hosts = app.store.hosts(rigwatch_collector::store::now(), 90).await.unwrap();
    assert_eq!(hosts.len(), agents, "every agent's host stored");
    server.abort();
}

fn main() {
    let agents = env("BENCH_AGENTS", 500) as usize;
    let seconds = env("BENCH_SECONDS", 10);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "0,2000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    println!("| backend | agents | load | reports | reports/s | p50 | p99 | max | errors |");
    println!("|:---|---:|:---|---:|---:|---:|---:|---:|---:|");
    for b in backends.split(',') {
        match b.trim() {
            "sqlite" => {
                for &rate in &rates {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Store::new(db::open(&dir.path().join("bench.sqlite3").display().to_string()).unwrap());
                    rt.block_on(bench("SQLite (WAL, batched writer)", store, agents, seconds, rate));
                }
            }
            "postgres" => {
                let Some(pg) = Pg::start() else { continue };
                let url = pg.database("bench");
                // The test helper starts the server with fsync off; measure with
                // fsync on and synchronous_commit off, the same durability as
                // SQLite's WAL with synchronous=NORMAL (a power cut may lose the
                // last commits, never corrupts).
                std::thread::spawn({
                    let url = url.clone();
                    move || {
                        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                        for q in [
                            "ALTER SYSTEM SET fsync = on",
                            "ALTER SYSTEM SET synchronous_commit = off",
                            "SELECT pg_reload_conf()",
                        ] {
                            c.batch_execute(q).unwrap();
                        }
                    }
                })
                .join()
                .unwrap();
                for (i, &rate) in rates.iter().enumerate() {
                    let url = if i == 0 { url.clone() } else { pg.database(&format!("bench{i}")) };
                    let store = Store::new(db::open(&url).unwrap());
                    rt.block_on(bench("PostgreSQL 15 (4 writers)", store, agents, seconds, rate));
                }
                drop(pg);
            }
            other => eprintln!("unknown backend {other:?}"),
        }
    }
}
