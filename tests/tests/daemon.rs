//! The agent daemon end to end: `rigwatch run` with a test receiver standing
//! in for the collector (a plain HTTP server that stores each event id once),
//! the harmless simulators started after the daemon, hot reload, the spool
//! across a receiver outage and a kill -9, response, and the /metrics
//! exposition (golden file, promtool).

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_minersim"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The collector stand-in: stores each event id once, counts deliveries.
#[derive(Default)]
struct Store {
    events: HashMap<String, Value>,
    deliveries: HashMap<String, usize>,
    batches: usize,
    bad_auth: usize,
}

struct Receiver {
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, store: Arc<Mutex<Store>>) -> Receiver {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (store.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => handle(c, &s2),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver {
            store,
            stop,
            port,
            thread: Some(thread),
        }
    }
    fn stop(mut self) -> (u16, Arc<Mutex<Store>>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.port, self.store.clone())
    }
}

fn handle(mut c: TcpStream, store: &Mutex<Store>) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut len = 0usize;
    let mut auth = String::new();
    let mut method = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if method.is_empty() {
            method = l.split(' ').next().unwrap_or_default().to_string();
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            auth = l["authorization:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0u8; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    if method == "GET" {
        // the agent's fleet set poll (collector.fleet is on by default): this receiver has none
        let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut s = store.lock().unwrap();
    if auth != "Bearer test-token" {
        s.bad_auth += 1;
        let _ = c.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["version"], 1);
    s.batches += 1;
    for e in v["events"].as_array().unwrap() {
        let id = e["event_id"].as_str().unwrap().to_string();
        *s.deliveries.entry(id.clone()).or_default() += 1;
        s.events.entry(id).or_insert_with(|| e.clone());
    }
    drop(s);
    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

struct Agent {
    child: Child,
    metrics: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(config: &Path, metrics_port: u16, collector_port: u16, spool: &Path) -> Agent {
    let mut child = Command::new(rigwatch())
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--collector",
            &format!("http://127.0.0.1:{collector_port}"),
            "--token",
            "test-token",
        ])
        .args(["--spool-dir", spool.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (l2, err) = (log.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    let metrics = format!("127.0.0.1:{metrics_port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(&metrics).is_err() {
        assert!(Instant::now() < deadline, "agent never listened: {:?}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    Agent { child, metrics, log }
}

fn scrape(a: &Agent) -> String {
    let mut c = TcpStream::connect(&a.metrics).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

fn sim(bin: &str, name: &str, args: &[&str], dir: &Path) -> Child {
    let src = if bin == "minersim" {
        env!("CARGO_BIN_EXE_minersim")
    } else {
        env!("CARGO_BIN_EXE_busysim")
    };
    let p = dir.join(name);
    std::fs::copy(src, &p).unwrap();
    let mut c = Command::new(&p)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"));
    c
}

fn events_of(store: &Mutex<Store>, ty: &str) -> Vec<Value> {
    store.lock().unwrap().events.values().filter(|e| e["type"] == ty).cloned().collect()
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One daemon test at a time (each watches the whole host).
static ONE: Mutex<()> = Mutex::new(());

#[test]
fn daemon_detects_ships_reloads_and_survives_outages_and_kill_9() {
    if !root() {
        eprintln!("SKIP: needs root (exec events need CAP_NET_ADMIN)");
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix("rwd")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let sigdir = tmp.path().join("sig.d");
    std::fs::create_dir(&sigdir).unwrap();
    let spool = tmp.path().join("spool");
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 30\ncpu_threshold_cores = 0.05\nlower_priority = false\n[sensors]\ncapture = false\n\
             [signatures]\ndirs = [{:?}]\n[collector]\nheartbeat_seconds = 2\n",
            sigdir.to_str().unwrap()
        ),
    )
    .unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let rport = free_port();
    let recv = Receiver::start(rport, store.clone());
    let mport = free_port();
    let agent = start_agent(&cfg, mport, rport, &spool);
    std::thread::sleep(Duration::from_millis(500));

    // a miner started after the daemon: found through its exec event, long before the 30 s pass
    let mut miner = sim(
        "minersim",
        "xmrig",
        &["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", WALLET, "--idle", "60"],
        tmp.path(),
    );
    let pid = miner.id();
    let took = wait_for("the miner on /metrics", Duration::from_secs(5), || {
        scrape(&agent).lines().any(|l| {
            l.starts_with("rigwatch_finding_active{") && l.contains(&format!("pid=\"{pid}\"")) && l.contains("severity=\"confirmed\"")
        })
    });
    eprintln!("exec → /metrics: {took:?}");
    assert!(took < Duration::from_secs(3), "exec-to-finding took {took:?}");
    wait_for("finding_opened at the receiver", Duration::from_secs(10), || {
        events_of(&store, "finding_opened").iter().any(|e| e["finding"]["pid"] == pid)
    });
    let opened = events_of(&store, "finding_opened")
        .into_iter()
        .find(|e| e["finding"]["pid"] == pid)
        .unwrap();
    assert_eq!(opened["finding"]["severity"], "confirmed");
    let fid = opened["finding"]["id"].as_str().unwrap().to_string();
    assert!(
        !events_of(&store, "heartbeat").is_empty() || {
            std::thread::sleep(Duration::from_secs(3));
            !events_of(&store, "heartbeat").is_empty()
        }
    );

    // hot reload: a good file adds a rule, a bad file is reported and changes nothing
    let rules_before = metric(&scrape(&agent), "rigwatch_signatures_rules");
    std::fs::write(
        sigdir.join("10-site.toml"),
        "[[rule]]\nid = \"site.zzminer\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames = [\"zzminer\"]\nexamples = { hit = [\"zzminer\"] }\n",
    )
    .unwrap();
    wait_for("the reload", Duration::from_secs(10), || {
        metric(&scrape(&agent), "rigwatch_signatures_rules") == rules_before + 1.0
    });
    let mut zz = sim("busysim", "zzminer", &["--idle", "60"], tmp.path());
    let zpid = zz.id();
    wait_for("the new rule's finding", Duration::from_secs(5), || {
        scrape(&agent)
            .lines()
            .any(|l| l.contains(&format!("pid=\"{zpid}\"")) && l.contains("rule=\"site.zzminer\""))
    });
    std::fs::write(
        sigdir.join("20-broken.toml"),
        "[[rule]]\nid = \"x\"\nkind = \"process_name\"\nseverity = \"sure\"\n",
    )
    .unwrap();
    wait_for("the load error metric", Duration::from_secs(10), || {
        metric(&scrape(&agent), "rigwatch_signature_load_errors_total") >= 1.0
    });
    let m = scrape(&agent);
    assert_eq!(metric(&m, "rigwatch_signatures_last_reload_success"), 0.0);
    assert_eq!(
        metric(&m, "rigwatch_signatures_rules"),
        rules_before + 1.0,
        "the previous set stays in force"
    );
    assert!(agent
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("\"event\":\"signature_load_error\"") && l.contains("20-broken.toml")));
    std::fs::remove_file(sigdir.join("20-broken.toml")).unwrap();

    // collector outage: the miner exits while the receiver is down
    let (port, store) = recv.stop();
    let _ = miner.kill();
    let _ = miner.wait();
    // the exit is seen at the next pass; trigger one with an exec
    let _ = Command::new("true").status();
    wait_for("the resolve in the spool", Duration::from_secs(10), || {
        metric(&scrape(&agent), "rigwatch_shipper_queue_events") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(metric(&scrape(&agent), "rigwatch_shipper_delivery_failures_total") >= 1.0);
    let recv = Receiver::start(port, store.clone());
    // the shipper's backoff doubles up to 60 s during the outage
    wait_for("the resolve delivered after the outage", Duration::from_secs(75), || {
        events_of(&store, "finding_resolved")
            .iter()
            .any(|e| e["finding_id"] == fid.as_str())
    });
    let resolved = events_of(&store, "finding_resolved")
        .into_iter()
        .find(|e| e["finding_id"] == fid.as_str())
        .unwrap();
    assert_eq!(resolved["reason"], "process exited");

    // kill -9 of the agent with events in flight, then a restart on the same spool
    let mut miner2 = sim(
        "minersim",
        "xmrig",
        &["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", WALLET, "--idle", "60"],
        tmp.path(),
    );
    std::thread::sleep(Duration::from_millis(400));
    let mut agent = agent;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = agent.child.wait();
    drop(agent);
    let agent = start_agent(&cfg, mport, rport, &spool);
    wait_for("miner2 delivered", Duration::from_secs(20), || {
        events_of(&store, "finding_opened")
            .iter()
            .any(|e| e["finding"]["pid"] == miner2.id())
    });
    let _ = miner2.kill();
    let _ = miner2.wait();
    let _ = zz.kill();
    let _ = zz.wait();
    let _ = Command::new("true").status();
    std::thread::sleep(Duration::from_secs(3));
    drop(agent);
    let (_, store) = recv.stop();
    let s = store.lock().unwrap();
    // nothing lost: the event numbers of this agent have no gap
    let mut seqs: Vec<u64> = s.events.keys().map(|k| k.rsplit(':').next().unwrap().parse().unwrap()).collect();
    seqs.sort();
    let max = *seqs.last().unwrap();
    assert_eq!(seqs, (1..=max).collect::<Vec<_>>(), "every event delivered, none missing");
    // each opened finding is stored once, whatever was delivered twice
    let opened_ids: Vec<&str> = s
        .events
        .values()
        .filter(|e| e["type"] == "finding_opened")
        .map(|e| e["finding"]["id"].as_str().unwrap())
        .collect();
    let mut uniq = opened_ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), opened_ids.len(), "a finding is opened once in the store");
    assert_eq!(s.bad_auth, 0);
    eprintln!(
        "batches {}, events {}, redelivered {}",
        s.batches,
        s.events.len(),
        s.deliveries.values().filter(|&&n| n > 1).count()
    );
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn response_dry_run_then_for_real() {
    if !root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix("rwr")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    for (dry, want_state) in [(true, None), (false, Some('T'))] {
        let cfg = tmp.path().join("agent.toml");
        let q = tmp.path().join("quarantine");
        std::fs::write(
            &cfg,
            format!(
                "[scan]\ninterval_seconds = 30\nlower_priority = false\n[sensors]\ncapture = false\n[response]\ndry_run = {dry}\nconfirmed = \"stop\"\nquarantine = true\nquarantine_dir = {:?}\n",
                q.to_str().unwrap()
            ),
        )
        .unwrap();
        let mut child = Command::new(rigwatch())
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .for_each(|l| l2.lock().unwrap().push(l))
        });
        std::thread::sleep(Duration::from_millis(700));
        let mut miner = sim(
            "minersim",
            "xmrig",
            &["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", WALLET, "--idle", "30"],
            tmp.path(),
        );
        let pid = miner.id();
        wait_for("the response log line", Duration::from_secs(20), || {
            log.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("\"event\":\"response_taken\"") && l.contains(&format!("\"pid\":{pid}")))
        });
        let line = log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("\"event\":\"response_taken\"") && l.contains(&format!("\"pid\":{pid}")))
            .unwrap()
            .clone();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["action"], "stop");
        assert_eq!(v["dry_run"], dry);
        std::thread::sleep(Duration::from_millis(200));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().trim().chars().next().unwrap();
        match want_state {
            None => assert_ne!(state, 'T', "dry run leaves the miner running"),
            Some(s) => {
                assert_eq!(state, s, "the miner is stopped");
                let q: Vec<_> = std::fs::read_dir(&q).unwrap().flatten().collect();
                assert_eq!(q.len(), 1, "its binary is quarantined");
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(q[0].metadata().unwrap().permissions().mode() & 0o777, 0o400, "not executable");
            }
        }
        let _ = miner.kill();
        let _ = miner.wait();
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn metrics_exposition_golden_and_promtool_clean() {
    let out = Command::new(rigwatch())
        .env("RIGWATCH_HOSTNAME", "fixture-host")
        .args(["run", "--once", "--proc-root", fixtures().join("proc").to_str().unwrap()])
        .args(["--host-root", fixtures().join("host").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // the finding series are deterministic on the fixture tree; timings are not
    let stable: String = text
        .lines()
        .filter(|l| {
            let n = l.trim_start_matches("# HELP ").trim_start_matches("# TYPE ");
            n.starts_with("rigwatch_finding") || n.starts_with("rigwatch_processes")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let golden = fixtures().join("metrics.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &stable).unwrap();
    }
    assert_eq!(
        stable,
        std::fs::read_to_string(&golden).unwrap(),
        "exposition differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        golden.display()
    );
    // a finding in a Kubernetes pod carries its namespace and pod
    assert!(
        stable.lines().any(|l| l.starts_with("rigwatch_finding_active{")
            && l.contains("pid=\"1006\"")
            && l.contains("namespace=\"crypto\"")
            && l.contains("pod=\"kswapd-7d9f\"")),
        "{stable}"
    );
    // the hostile comm (quotes, braces, escape code, invalid UTF-8) is one well-formed series
    assert!(stable
        .lines()
        .any(|l| l.contains("pid=\"1011\"") && l.starts_with("rigwatch_finding_active{") && l.ends_with("} 1")));
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let o = p.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "promtool check metrics:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Err(e) => panic!("promtool is needed for this test (Debian package prometheus): {e}"),
    }
}
