//! The miner is the adversary: attacks on the agent itself, each run as the
//! attacker would (an unprivileged user, `nobody`), each asserting that the
//! agent keeps working and that nothing secret leaves the host.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_busysim"))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts `script` as `nobody` in `dir` (a shell that sets up the attack, then
/// execs a copy of busysim named `exe`); returns once it runs the simulator.
fn as_nobody(dir: &std::path::Path, script: &str, exe: &str) -> rigwatch_e2e::KillOnDrop {
    let bin = dir.join(exe);
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &bin).unwrap();
    let child = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "sh", "-c"])
        .arg(format!("cd '{}' && {script} && exec ./{exe} --idle 60", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let (c, line) = first_line(child);
    assert!(line.starts_with("ready"), "busysim as nobody: {line:?}");
    c
}

/// Waits for the first line `child` prints; it is killed when dropped.
fn first_line(child: std::process::Child) -> (rigwatch_e2e::KillOnDrop, String) {
    let mut c = rigwatch_e2e::KillOnDrop(child);
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(c.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (c, line)
}

fn attack_dir(tmp: &std::path::Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

#[test]
fn a_fifo_named_config_json_cannot_stall_the_scan_and_a_symlink_cannot_leak_a_secret() {
    if !root() {
        eprintln!("SKIP: needs root (to run the attacker as nobody and read its files)");
        return;
    }
    let rw = rigwatch();
    let tmp = tempfile::Builder::new().prefix("rwa").tempdir_in("/tmp").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // a root-only secret on the host
    let secret = tmp.path().join("db.json");
    std::fs::write(
        &secret,
        r#"{"pools": [{"url": "postgres://admin:hunter2@db.internal:5432/prod", "user": "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"}]}"#,
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fifo_dir = attack_dir(tmp.path(), "fifo");
    let link_dir = attack_dir(tmp.path(), "link");
    let _a = as_nobody(&fifo_dir, "mkfifo config.json", "svc-a");
    let _b = as_nobody(&link_dir, &format!("ln -s '{}' config.json", secret.display()), "svc-b");

    let started = Instant::now();
    let mut scan = Command::new(&rw)
        .args(["scan", "--json", "--window", "1", "--no-capture", "--no-sockets", "--no-gpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if scan.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = scan.kill();
            panic!("the scan is stalled by a FIFO named config.json");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = scan.wait_with_output().unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "{:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["findings"].is_array(), "{text}");
    assert!(!text.contains("hunter2"), "a root-only file behind a symlink leaked: {text}");
    assert!(!text.contains("db.internal"), "{text}");
}

/// Runs a copy of `fakepool` as `nobody` with `args` (an attacker's tool);
/// returns once it printed its first line.
fn fakepool_as_nobody(dir: &std::path::Path, args: &[&str]) -> (rigwatch_e2e::KillOnDrop, String) {
    let bin = dir.join("fakepool");
    if !bin.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_fakepool"), &bin).unwrap();
    }
    let child = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(&bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    first_line(child)
}

/// A root-owned listener on `addr` that accepts and holds every connection
/// (an innocent service: sshd, nginx…), in this test process.
fn innocent_listener(addr: &str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind(addr).unwrap();
    let at = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    at
}

fn scan_with_capture(window: &str) -> std::process::Child {
    Command::new(rigwatch())
        .args(["scan", "--json", "--window", window, "--no-gpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn scan_json(c: std::process::Child) -> serde_json::Value {
    let out = c.wait_with_output().unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "{:?}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}"))
}

#[test]
fn a_pool_push_sent_to_a_listener_never_makes_the_listener_a_miner() {
    if !root() {
        eprintln!("SKIP: needs root (packet capture, and the attacker as nobody)");
        return;
    }
    rigwatch(); // built before anything starts
    let tmp = tempfile::Builder::new().prefix("rwp").tempdir_in("/tmp").unwrap();
    let dir = attack_dir(tmp.path(), "push");
    let listener = innocent_listener("127.0.0.1:0");
    let to = listener.to_string();
    // one connection made before the agent looks (no handshake seen: the
    // direction is inferred, and the receiver is a listening port) ...
    let (_early, l) = fakepool_as_nobody(&dir, &["--push-to", &to, "--delay", "4", "--hold", "25"]);
    assert!(l.starts_with("connected"), "{l:?}");
    let scan = scan_with_capture("6");
    std::thread::sleep(Duration::from_secs(2));
    // ... and one made while it watches (the handshake is seen)
    let (_late, l) = fakepool_as_nobody(&dir, &["--push-to", &to, "--hold", "20"]);
    assert!(l.starts_with("connected"), "{l:?}");
    let v = scan_json(scan);
    let me = std::process::id();
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings.iter().all(|f| f["pid"] != me),
        "the listener was made a miner by what it received: {v:#}"
    );
    // both pushes were seen, and are at most suspicious flow evidence (alone,
    // no finding): nothing names a process, nothing is likely or confirmed
    assert!(
        v["scanned"]["capture_findings"].as_u64().unwrap() >= 2,
        "the pushes were not seen: {v:#}"
    );
    let port = format!(":{}", listener.port());
    for f in findings {
        let about = f["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["remote"].as_str().is_some_and(|r| r.ends_with(&port)));
        assert!(!about || (f["severity"] == "suspicious" && f["pid"].is_null()), "{f:#}");
    }
}

#[test]
fn a_forged_dns_answer_cannot_make_a_pool_of_an_innocent_address() {
    if !root() {
        eprintln!("SKIP: needs root (packet capture, and the attacker as nobody)");
        return;
    }
    rigwatch();
    let tmp = tempfile::Builder::new().prefix("rwd").tempdir_in("/tmp").unwrap();
    let dir = attack_dir(tmp.path(), "dns");
    // an innocent service on 127.0.0.77, and an innocent busy client of it
    let service = innocent_listener("127.0.0.77:0");
    let scan = scan_with_capture("6");
    std::thread::sleep(Duration::from_secs(2));
    // the attacker: an answer to a question nobody asked, mapping a pool to it
    let (_f, l) = fakepool_as_nobody(
        &dir,
        &[
            "--forge-dns",
            "pool.supportxmr.com",
            "--to",
            "127.0.0.1:53",
            "--answer",
            "127.0.0.77",
        ],
    );
    assert!(l.starts_with("forged"), "{l:?}");
    let client = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.77/{}; end=$((SECONDS+5)); while [ $SECONDS -lt $end ]; do :; done",
            service.port()
        ))
        .spawn()
        .unwrap();
    let innocent = client.id();
    let _c = rigwatch_e2e::KillOnDrop(client);
    let v = scan_json(scan);
    let findings = v["findings"].as_array().unwrap();
    let text = v.to_string();
    assert!(
        findings.iter().all(|f| f["pid"] != innocent),
        "an innocent client of a forged pool address has a finding: {v:#}"
    );
    assert!(!text.contains("pool_connection"), "the forged address was learned: {v:#}");
    assert!(!text.contains("127.0.0.77\"]"), "a forged answer became DNS evidence: {v:#}");
}
