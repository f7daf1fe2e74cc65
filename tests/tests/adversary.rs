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
    let mut c = rigwatch_e2e::KillOnDrop(child);
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(c.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "busysim as nobody: {line:?}");
    c
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
