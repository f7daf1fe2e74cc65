//! The miner is the adversary, against response: a miner whose binary is a
//! 1 GiB sparse file (cheap to make, costly to read into memory) is stopped
//! or killed, and its binary is either skipped with a reason (over the size
//! cap) or streamed into quarantine, while the agent's memory stays small and
//! it keeps scanning. The miner is the harmless simulator, run as `nobody`.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
const GIB: u64 = 1024 * 1024 * 1024;

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_busysim"))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One agent at a time (each watches the whole host).
static ONE: Mutex<()> = Mutex::new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A copy of busysim named `xmrig`, grown to a 1 GiB sparse file, run as
/// `nobody` with a pool URL and a wallet on its command line (a confirmed
/// finding from host evidence alone).
fn sparse_miner(dir: &Path) -> (rigwatch_e2e::KillOnDrop, PathBuf) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = dir.join("miner");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = d.join("xmrig");
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &bin).unwrap();
    std::fs::OpenOptions::new().write(true).open(&bin).unwrap().set_len(GIB).unwrap();
    let md = std::fs::metadata(&bin).unwrap();
    assert_eq!(md.len(), GIB);
    assert!(md.blocks() * 512 < 256 * 1024 * 1024, "sparse: {} blocks", md.blocks());
    let child = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(&bin)
        .args(["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", WALLET, "--idle", "600"])
        .current_dir(&d)
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut c = rigwatch_e2e::KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(c.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "a 1 GiB sparse copy of busysim still runs: {line:?}");
    (c, bin)
}

struct Agent {
    child: rigwatch_e2e::KillOnDrop,
    log: Arc<Mutex<Vec<String>>>,
    metrics: String,
}

fn start_agent(cfg: &Path) -> Agent {
    let port = free_port();
    let mut child = Command::new(rigwatch())
        .args(["run", "--config", cfg.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
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
    Agent {
        child: rigwatch_e2e::KillOnDrop(child),
        log,
        metrics: format!("127.0.0.1:{port}"),
    }
}

fn scrape(a: &Agent) -> String {
    let Ok(mut c) = TcpStream::connect(&a.metrics) else {
        return String::new();
    };
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The agent's peak resident memory, in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

fn response_line(a: &Agent, pid: u32, timeout: Duration) -> Value {
    let t = Instant::now();
    loop {
        let found = a
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("\"event\":\"response_taken\"") && l.contains(&format!("\"pid\":{pid}")))
            .cloned();
        if let Some(l) = found {
            return serde_json::from_str(&l).unwrap();
        }
        assert!(
            t.elapsed() < timeout,
            "no response to pid {pid} (exe {:?}, cmdline {:?}): {:?}",
            std::fs::read_link(format!("/proc/{pid}/exe")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
            a.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().trim().chars().next().unwrap()
}

/// The agent keeps making passes after it responded.
fn keeps_passing(a: &mut Agent) {
    let t = Instant::now();
    let first = metric(&scrape(a), "rigwatch_last_pass_timestamp_seconds");
    loop {
        assert!(
            a.child.0.try_wait().unwrap().is_none(),
            "the agent died: {:?}",
            a.log.lock().unwrap()
        );
        let now = metric(&scrape(a), "rigwatch_last_pass_timestamp_seconds");
        if now > first {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no pass after the response ({first} → {now})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn config(tmp: &Path, action: &str, q: &Path, max: u64) -> PathBuf {
    let cfg = tmp.join(format!("agent-{action}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 2\nlower_priority = false\n[sensors]\ncapture = false\n\
             [response]\nconfirmed = \"{action}\"\nquarantine = true\nquarantine_dir = {:?}\n\
             quarantine_max_bytes = {max}\nquarantine_quota_bytes = {}\n",
            q.to_str().unwrap(),
            4 * GIB
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn a_1_gib_sparse_miner_is_stopped_over_the_cap_and_killed_and_streamed_under_it() {
    if !root() {
        eprintln!("SKIP: needs root (to run the miner as nobody and to signal it)");
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    rigwatch(); // built before any miner runs: a build can take minutes
    let tmp = tempfile::Builder::new().prefix("rwq").tempdir_in("/tmp").unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // 1. the default cap (256 MiB): the binary is skipped with a reason, the miner still stopped
    let q1 = tmp.path().join("q1");
    let (mut miner, _) = sparse_miner(tmp.path());
    let pid = miner.0.id();
    let mut agent = start_agent(&config(tmp.path(), "stop", &q1, 256 * 1024 * 1024));
    let v = response_line(&agent, pid, Duration::from_secs(60));
    assert_eq!(v["action"], "stop", "{v}");
    assert_eq!(v["skipped"], "None", "{v}");
    let why = v["quarantine_skipped"].as_str().unwrap_or_default();
    assert!(why.contains("quarantine_max_bytes") && why.contains(&GIB.to_string()), "{v}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(pid), 'T', "the miner is stopped");
    let kept: Vec<_> = std::fs::read_dir(&q1).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(kept.is_empty(), "nothing quarantined: {kept:?}");
    keeps_passing(&mut agent);
    let hwm = vm_hwm(agent.child.0.id());
    eprintln!("agent VmHWM with the binary over the cap: {} MiB", hwm >> 20);
    assert!(hwm < 200 << 20, "agent peak RSS {} MiB", hwm >> 20);
    drop(agent);
    let _ = miner.0.kill();
    let _ = miner.0.wait();

    // 2. a cap over 1 GiB: the binary is streamed into quarantine, the miner killed
    let q2 = tmp.path().join("q2");
    let (mut miner, bin) = sparse_miner(tmp.path());
    let pid = miner.0.id();
    let mut agent = start_agent(&config(tmp.path(), "kill", &q2, 2 * GIB));
    let v = response_line(&agent, pid, Duration::from_secs(120));
    assert_eq!(v["action"], "kill", "{v}");
    assert_eq!(v["skipped"], "None", "{v}");
    assert_eq!(v["quarantine_skipped"], "None", "{v}");
    use std::os::unix::process::ExitStatusExt;
    let st = miner.0.wait().unwrap();
    assert_eq!(st.signal(), Some(9), "the miner is killed: {st:?}");
    keeps_passing(&mut agent);
    let hwm = vm_hwm(agent.child.0.id());
    eprintln!("agent VmHWM after streaming a 1 GiB binary: {} MiB", hwm >> 20);
    assert!(hwm < 200 << 20, "agent peak RSS {} MiB: the copy is not streamed", hwm >> 20);
    let want = sha256sum(&bin);
    let kept: Vec<_> = std::fs::read_dir(&q2).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let path = kept[0].path();
    assert_eq!(
        v["quarantined"].as_str().unwrap_or_default(),
        format!("Some({:?})", path.to_str().unwrap()),
        "{v}"
    );
    assert_eq!(kept[0].file_name().to_str().unwrap(), format!("{want}.bin"), "named by its SHA-256");
    assert_eq!(sha256sum(&path), want, "the same bytes");
    let md = kept[0].metadata().unwrap();
    assert_eq!(md.len(), GIB);
    assert_eq!(md.permissions().mode() & 0o777, 0o400);
    assert!(
        md.blocks() * 512 < 256 * 1024 * 1024,
        "the copy stays sparse: {} blocks",
        md.blocks()
    );
    assert_eq!(std::fs::metadata(&q2).unwrap().permissions().mode() & 0o777, 0o700);
}
