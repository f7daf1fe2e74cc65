//! `rigwatch run`: the agent that runs on every server.
//!
//! One detection thread runs passes (periodically, and 250 ms after a
//! process execs), turns findings into opened/updated/resolved events,
//! writes them to the spool, updates the metrics and applies the response
//! policy. A small tokio runtime serves /metrics and ships the spool to the
//! collector. Signature directories are watched and reloaded; a bad file
//! keeps the previous set in force.

pub mod config;
pub mod configstate;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod response;
pub mod sdnotify;
pub mod shipper;
pub mod siem;
pub mod spool;
pub mod stopping;
pub mod tracker;

use crate::engine::{Engine, Pass};
use crate::scan::{host_name, unix_now};
use crate::sensors;
use config::Config;
use events::*;
use metrics::Metrics;
use rigwatch_signatures::report::{ConfigState, EventKind, SensorStatus};
use rigwatch_signatures::{Finding, Signatures};
use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracker::{Change, Tracker};

/// Delay between an exec event and the pass that checks it (lets the new
/// program set up its argv and open its config).
const EXEC_SETTLE: Duration = Duration::from_millis(250);
/// How often the loop checks for network evidence waiting for a pass.
const NETWORK_POLL: Duration = Duration::from_millis(500);

enum Msg {
    Exec(u32),
    /// A signature directory changed.
    Reload,
    /// A new fleet set from the collector (in `Shared::fleet`).
    Fleet,
}

/// State the detection thread shares with the HTTP server and the shipper.
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    /// The spool, when a collector is configured.
    pub spool: Option<Mutex<spool::Spool>>,
    /// Sensor status for the reports.
    pub sensors: Mutex<Vec<SensorStatus>>,
    /// The signature set version in force.
    pub signatures_version: Mutex<String>,
    /// The configuration as evidence ([`configstate`]), for the reports.
    pub config: Mutex<Option<ConfigState>>,
    /// The token the shipper uses, once it has one (enrolment may take a while).
    pub collector_token: Mutex<Option<String>>,
    /// The fleet signature set last taken from the collector.
    pub fleet: Mutex<fleet::FleetSet>,
    /// Wakes the shipper.
    pub wake: tokio::sync::Notify,
}

/// Loads signatures from the bundled set, `dirs` and the fleet set. Strict:
/// any error and the caller keeps what it had.
/// A fleet policy that forbids local allowlists drops their allow rules
/// (the files of those dropped come third).
fn load(dirs: &[PathBuf], fleet: &fleet::FleetSet) -> (Arc<Signatures>, Vec<String>, Vec<String>) {
    let l = rigwatch_signatures::load_with(dirs, true, &fleet.files);
    let errors = l.errors.iter().map(|e| e.to_string()).collect();
    let (sig, ignored) = configstate::apply_policy(l.signatures, configstate::forbids_local_allowlist(&fleet.files));
    (Arc::new(sig), errors, ignored)
}

/// Runs the agent until killed. With `once`, runs a single pass (no CPU
/// window, no network, no shipping), prints the /metrics exposition and returns.
pub fn run(cfg: Config, once: bool) -> anyhow::Result<()> {
    if cfg.scan.lower_priority && !once {
        // SAFETY: setpriority on our own process.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    }
    let host = host_name();
    let (mut sig, errors, _) = load(&cfg.signatures.dirs, &Default::default());
    let spool = if cfg.collector.url.is_empty() || once {
        None
    } else {
        Some(Mutex::new(
            spool::Spool::open(&cfg.collector.spool_dir, cfg.collector.spool_max_bytes)
                .map_err(|e| anyhow::anyhow!("spool {}: {e}", cfg.collector.spool_dir.display()))?,
        ))
    };
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        spool,
        sensors: Mutex::new(Vec::new()),
        signatures_version: Mutex::new(sig.version.clone()),
        config: Mutex::new(Some(configstate::state(&cfg, &sig, 0, &[]))),
        collector_token: Mutex::new(None),
        fleet: Mutex::new(fleet::FleetSet::default()),
        wake: tokio::sync::Notify::new(),
    });
    let m = &shared.metrics;
    m.signatures_info.with_label_values(&[&sig.version]).set(1);
    m.signatures_rules.set(sig.rules().len() as i64);
    m.signatures_reload_ok.set(errors.is_empty() as i64);
    for e in &errors {
        SignatureLoadError {
            error: e,
            kept_version: &sig.version,
        }
        .emit(m);
    }

    let (tx, rx) = channel::<Msg>();
    let mut exec_up = None;
    if cfg.sensors.exec_events && !once {
        exec_up = Some(match sensors::execevents::open() {
            Ok(fd) => {
                let (ptx, prx) = channel::<u32>();
                std::thread::spawn(move || sensors::execevents::run(fd, ptx));
                let tx2 = tx.clone();
                std::thread::spawn(move || {
                    for pid in prx {
                        if tx2.send(Msg::Exec(pid)).is_err() {
                            return;
                        }
                    }
                });
                None
            }
            Err(e) => Some(format!("exec events unavailable ({e}); the periodic pass still runs")),
        });
    }
    let _watcher = if once {
        None
    } else {
        watch(&cfg.signatures.dirs, tx.clone(), &shared.metrics)
    };
    // the runtime lives as long as this function (the agent)
    let _runtime = if once {
        None
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&cfg.metrics.listen))
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.metrics.listen))?;
        MetricsListening(format!("http://{}/metrics", listener.local_addr()?)).emit(m);
        let s2 = shared.clone();
        // three missed passes, and never less than a minute
        let stale_after = Duration::from_secs_f64((cfg.scan.interval_seconds * 3.0).max(60.0));
        rt.spawn(serve(listener, s2, stale_after));
        let stop = stopping::StopContext::new(&cfg.scan.host_root, &cfg.scan.proc_root);
        rt.spawn(stop_on_signal(shared.clone(), stop));
        if shared.spool.is_some() {
            rt.spawn(shipper::run(cfg.collector.clone(), shared.clone(), host.clone()));
            if cfg.collector.fleet {
                rt.spawn(fleet::run(cfg.collector.clone(), shared.clone(), tx.clone()));
            }
        }
        Some(rt)
    };

    let mut engine = Engine::new(sig.clone(), &host, &cfg.engine(once));
    // systemd (Type=notify): ready now, then a watchdog ping after each full pass
    let mut notify_failed = false;
    let mut sd_notify = |state: &str| {
        if let (Err(e), false) = (sdnotify::notify(state), notify_failed) {
            notify_failed = true;
            ComponentError {
                component: "sd_notify",
                error: e.to_string(),
            }
            .emit(m);
        }
    };
    if !once {
        sd_notify("READY=1");
    }
    // with a spool, the active set survives restarts next to it
    let file = shared.spool.as_ref().map(|_| cfg.collector.spool_dir.join("active.json"));
    let mut sinks = Sinks {
        siem: if once { None } else { siem::SiemSink::open(&cfg.siem, &host)? },
        tracker: file.as_deref().map(Tracker::load).unwrap_or_default(),
        file,
        responder: response::Responder::new(cfg.response.clone(), &cfg.scan.proc_root),
        max_series: cfg.metrics.max_finding_series,
    };
    let interval = Duration::from_secs_f64(cfg.scan.interval_seconds.max(0.1));
    let heartbeat = Duration::from_secs_f64(cfg.collector.heartbeat_seconds.max(1.0));
    let mut said_unavailable = std::collections::HashSet::new();
    let mut next_pass = Instant::now();
    let mut next_beat = Instant::now();
    let mut last_full = Instant::now();
    // exec events: the new pids get a partial pass of their own (cost: the
    // new processes only), EXEC_SETTLE after the first of a burst
    let mut exec_pids: Vec<u32> = Vec::new();
    let mut exec_due: Option<Instant> = None;
    loop {
        let now_i = Instant::now();
        let poll = now_i + NETWORK_POLL;
        let due = next_pass.min(next_beat).min(exec_due.unwrap_or(poll)).min(poll);
        match rx.recv_timeout(due.saturating_duration_since(now_i)) {
            Ok(Msg::Exec(pid)) => {
                m.exec_events.inc();
                if exec_pids.len() < 4096 && !exec_pids.contains(&pid) {
                    exec_pids.push(pid);
                }
                exec_due = exec_due.or(Some(Instant::now() + EXEC_SETTLE));
                continue;
            }
            Ok(msg @ (Msg::Reload | Msg::Fleet)) => {
                if matches!(msg, Msg::Reload) {
                    std::thread::sleep(Duration::from_millis(300)); // let the editor finish writing
                }
                while rx.try_recv().is_ok() {}
                let fleet_set = shared.fleet.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (new, errors, ignored) = load(&cfg.signatures.dirs, &fleet_set);
                if errors.is_empty() {
                    m.fleet_version.set(fleet_set.version as i64);
                }
                if errors.is_empty() {
                    // a local file may change without changing the rules (a
                    // comment, a rule of its own shadowed): still evidence
                    let state = Some(configstate::state(&cfg, &new, fleet_set.version, &ignored));
                    let changed = std::mem::replace(&mut *shared.config.lock().unwrap_or_else(|e| e.into_inner()), state.clone()) != state;
                    if changed {
                        // a heartbeat now carries it to the collector
                        emit(&shared, unix_now(), EventKind::Heartbeat {});
                    }
                }
                if errors.is_empty() && new.version == sig.version {
                    continue;
                }
                if errors.is_empty() {
                    *shared.signatures_version.lock().unwrap_or_else(|e| e.into_inner()) = new.version.clone();
                    sig = new;
                    engine.set_signatures(sig.clone());
                    SignaturesReloaded {
                        version: &sig.version,
                        rules: sig.rules().len(),
                    }
                    .emit(m);
                    next_pass = Instant::now();
                } else {
                    for e in &errors {
                        SignatureLoadError {
                            error: e,
                            kept_version: &sig.version,
                        }
                        .emit(m);
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {}
        }
        let now = unix_now();
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + heartbeat;
            emit(&shared, now, EventKind::Heartbeat {});
        }
        // network evidence waiting is worth a full pass now (at most one a second)
        let network = last_full.elapsed() >= NETWORK_POLL * 2 && engine.wants_pass();
        let full = Instant::now() >= next_pass || network;
        if !full && exec_due.is_some_and(|d| Instant::now() >= d) {
            exec_due = None;
            let out = engine.pass(Pass::Pids(std::mem::take(&mut exec_pids)), now)?;
            sinks.take(out.findings, true, &mut engine, &shared, now);
            m.pass_duration.observe(out.seconds);
            continue;
        }
        if !full {
            continue;
        }
        next_pass = Instant::now() + interval;
        last_full = Instant::now();
        exec_pids.clear();
        exec_due = None;
        let out = engine.pass(Pass::Full, now)?;
        let mut status = Vec::new();
        if let Some(up) = &exec_up {
            status.push(SensorStatus {
                name: "exec_events".into(),
                up: up.is_none(),
                message: up.clone(),
            });
            m.sensor_up.with_label_values(&["exec_events"]).set(up.is_none() as i64);
        }
        for r in &out.reports {
            m.observe_sensor(r);
            if let (Some(why), true) = (&r.reason, !r.up) {
                if said_unavailable.insert(r.name) {
                    SensorUnavailable { sensor: r.name, why }.emit(m);
                }
            }
            status.push(SensorStatus {
                name: r.name.into(),
                up: r.up,
                message: r.reason.clone(),
            });
        }
        status.sort_by_key(|s| s.name != "process");
        *shared.sensors.lock().unwrap_or_else(|e| e.into_inner()) = status;
        sinks.take(out.findings, false, &mut engine, &shared, now);
        m.processes.set(out.processes as i64);
        m.pass_duration.observe(out.seconds);
        m.last_pass.set(now as f64);
        if !once {
            sd_notify("WATCHDOG=1");
        }
        if once {
            std::io::Write::write_all(&mut std::io::stdout(), &m.render())?;
            return Ok(());
        }
    }
}

/// Where a pass's findings go: the tracker turns them into opened, updated
/// and resolved events, which are logged and counted, answered by the
/// response, written to the spool (then the shipper) before the tracker's
/// state is saved (a crash in between repeats an event, harmless, rather
/// than losing one); then the finding metrics.
struct Sinks {
    tracker: Tracker,
    /// Findings as SIEM events (`[siem]`), when configured.
    siem: Option<siem::SiemSink>,
    /// Where the active set is saved (beside the spool).
    file: Option<PathBuf>,
    responder: response::Responder,
    max_series: usize,
}

impl Sinks {
    /// Takes a pass's findings. A partial pass (exec events) resolves only
    /// the findings whose process has exited.
    fn take(&mut self, findings: Vec<Finding>, partial: bool, engine: &mut Engine, shared: &Shared, now: u64) {
        let mut alive = |pid, start| engine.alive(pid, start);
        let mut changes = self.tracker.update(findings, &mut alive, now, partial);
        if partial {
            changes.extend(self.tracker.resolve_exited(&mut alive));
        }
        let save = !changes.is_empty();
        apply(changes, shared, &mut self.responder, self.siem.as_mut(), now);
        if let (Some(path), true) = (&self.file, save) {
            if let Err(e) = self.tracker.save(path) {
                StateSaveError(e.to_string()).emit(&shared.metrics);
            }
        }
        shared.metrics.set_findings(&self.tracker.active(), self.max_series);
    }
}

/// Logs, counts, responds to and spools each change.
fn apply(changes: Vec<Change>, shared: &Shared, responder: &mut response::Responder, mut siem: Option<&mut siem::SiemSink>, now: u64) {
    let m = &shared.metrics;
    for change in changes {
        if let Some(s) = siem.as_deref_mut() {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(now * 1000);
            match &change {
                Change::Opened(f) => s.send(f, rigwatch_signatures::siem::Activity::Opened, now_ms, m),
                Change::Updated(f) => s.send(f, rigwatch_signatures::siem::Activity::Updated, now_ms, m),
                Change::Resolved { last, .. } => s.send(last, rigwatch_signatures::siem::Activity::Resolved, now_ms, m),
            }
        }
        match change {
            Change::Opened(f) => {
                FindingOpened(&f).emit(m);
                respond(responder, &f, m);
                emit(shared, now, EventKind::FindingOpened { finding: f });
            }
            Change::Updated(f) => {
                FindingUpdated(&f).emit(m);
                respond(responder, &f, m);
                emit(shared, now, EventKind::FindingUpdated { finding: f });
            }
            Change::Resolved { id, reason, .. } => {
                FindingResolved { id: &id, reason: &reason }.emit(m);
                emit(shared, now, EventKind::FindingResolved { finding_id: id, reason });
            }
        }
    }
}

fn respond(r: &mut response::Responder, f: &rigwatch_signatures::Finding, m: &Metrics) {
    if let Some(o) = r.act(f) {
        ResponseTaken {
            finding: &f.id,
            outcome: &o,
        }
        .emit(m);
    }
}

/// Writes an event to the spool (when shipping) and wakes the shipper.
fn emit(shared: &Shared, at: u64, kind: EventKind) {
    let Some(sp) = &shared.spool else { return };
    let mut s = sp.lock().unwrap_or_else(|e| e.into_inner());
    let dropped_before = s.dropped;
    if let Err(e) = s.append(at, kind) {
        SpoolWriteError(e.to_string()).emit(&shared.metrics);
    }
    shared.metrics.spool_dropped.inc_by(s.dropped - dropped_before);
    shared.metrics.shipper_queue.set(s.queued() as i64);
    shared.metrics.spool_bytes.set(s.bytes() as i64);
    drop(s);
    shared.wake.notify_one();
}

/// How long the agent waits, on SIGTERM or SIGINT, for its last event to
/// reach the collector.
const STOP_DELIVERY: Duration = Duration::from_secs(3);

/// On SIGTERM or SIGINT: a last event (`Stopping`) to the collector, so
/// that someone stopping the agent is told apart from an agent gone
/// silent, with what else it can tell of why ([`stopping`]: its unit
/// masked or disabled, its package removed); waits at most
/// [`STOP_DELIVERY`] for its delivery, then exits.
async fn stop_on_signal(shared: Arc<Shared>, stop: stopping::StopContext) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    let reason = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    emit(
        &shared,
        unix_now(),
        EventKind::Stopping {
            reason: stop.reason(reason),
        },
    );
    let deadline = Instant::now() + STOP_DELIVERY;
    while let Some(sp) = &shared.spool {
        let queued = sp.lock().unwrap_or_else(|e| e.into_inner()).queued();
        if queued == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::process::exit(0);
}

/// Watches the signature directories; any change asks for a reload.
fn watch(dirs: &[PathBuf], tx: Sender<Msg>, m: &Metrics) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let tx = Mutex::new(tx);
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            // reading the files (our own reload) raises access events: ignore those
            let change = matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
            );
            if change
                && ev.paths.iter().any(|p| {
                    p.extension()
                        .is_some_and(|e| e == "toml" || e == "txt" || e == "yar" || e == "yara")
                })
            {
                let _ = tx.lock().map(|t| t.send(Msg::Reload));
            }
        }
    })
    .ok()?;
    for d in dirs {
        if d.is_dir() {
            if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
                ComponentError {
                    component: "watch",
                    error: format!("{}: {e}", d.display()),
                }
                .emit(m);
            }
        }
    }
    Some(w)
}

/// Serves `/metrics` and `/healthz`. `/healthz` answers 503 once the last
/// full pass is older than `stale_after` (a stuck sensor or a stalled
/// detection thread), so a liveness probe restarts the agent.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, stale_after: Duration) {
    use axum::{routing::get, Router};
    let s = shared.clone();
    let h = shared.clone();
    let started = unix_now();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let s = s.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        s.metrics.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let h = h.clone();
                async move {
                    let last = (h.metrics.last_pass.get() as u64).max(started);
                    let age = unix_now().saturating_sub(last);
                    if age > stale_after.as_secs() {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("stale: the last full pass was {age} s ago\n"),
                        )
                    } else {
                        (axum::http::StatusCode::OK, "ok\n".to_string())
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        ComponentError {
            component: "http",
            error: e.to_string(),
        }
        .emit(&shared.metrics);
    }
}
