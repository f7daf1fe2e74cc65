//! The miner is the adversary: nothing it plants can stall a pass.
//!
//! - A FIFO (and a link to a root-only file) where the persistence sensor
//!   looks, planted by the user `nobody` in their own home: `rigwatch scan`
//!   finishes and `rigwatch run` keeps passing, the persistence sensor up.
//! - A sensor blocked in the kernel (a FUSE mount whose server never
//!   answers, over a directory the persistence sensor lists): the sensor is
//!   reported down over its time budget, every other sensor and the pass
//!   loop go on (`/healthz` 200), and once the mount goes away it is up again.
//! - Under systemd (`NOTIFY_SOCKET`), the agent says `READY=1` and pings
//!   `WATCHDOG=1` after its passes.

use rigwatch_e2e::{free_port, http_get, wait_for, KillOnDrop};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_busysim"))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A host root in /tmp with a home owned by `nobody` (whose real home is
/// /nonexistent): what a user can write on a real host.
fn host_with_a_home(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home/victim");
    std::fs::create_dir_all(&home).unwrap();
    let ok = Command::new("chown").arg("nobody:nogroup").arg(&home).status().unwrap();
    assert!(ok.success());
    (tmp, home)
}

/// Runs `script` as `nobody` in `dir`, to its end.
fn as_nobody(dir: &Path, script: &str) {
    let out = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "sh", "-ec"])
        .arg(format!("cd '{}' && {script}", dir.display()))
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "as nobody: {}", String::from_utf8_lossy(&out.stderr));
}

/// The miner unit `nobody` keeps in their home, so that the persistence
/// sensor has a finding to show it read the home at all.
fn miner_unit() -> String {
    format!("printf '[Service]\\nExecStart=/home/victim/.x/xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u {WALLET}\\n' > .config/systemd/user/update.service")
}

/// `rigwatch scan --json` on `host_root`, killed (and failed) after `limit`.
fn scan(host_root: &Path, limit: Duration) -> Value {
    let bin = rigwatch(); // built first: the clock is the scan's
    let started = Instant::now();
    let mut c = Command::new(bin)
        .args([
            "scan",
            "--json",
            "--window",
            "1",
            "--no-capture",
            "--no-sockets",
            "--no-gpu",
            "--host-root",
        ])
        .arg(host_root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while c.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = c.kill();
            panic!("the scan is stalled");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.wait_with_output().unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "{:?}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}"))
}

fn persistence_finding(v: &Value) -> Option<&Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"]["kind"] == "persistence" && f["subject"]["name"] == "/home/victim/.config/systemd/user/update.service")
}

/// `rigwatch run` on `host_root` with a pass a second, each sensor's
/// budget `budget` seconds.
fn run_agent(host_root: &Path, dir: &Path, budget: f64, env: &[(&str, &Path)]) -> (KillOnDrop, u16) {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 1\nlower_priority = false\n[sensors]\ncapture = false\nsockets = false\ngpu = false\nexec_events = false\nbudget_seconds = {budget}\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut c = Command::new(rigwatch());
    c.args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--host-root"])
        .arg(host_root)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let agent = KillOnDrop(c.spawn().unwrap());
    wait_for(30, "the agent's /healthz", || {
        (http_get(port, "/healthz", None).0 == 200).then_some(())
    });
    (agent, port)
}

fn metric(port: u16, series: &str) -> Option<f64> {
    let (code, body) = http_get(port, "/metrics", None);
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn passes(port: u16) -> f64 {
    metric(port, "rigwatch_pass_duration_seconds_count").unwrap_or(0.0)
}

/// Passes keep completing, `/healthz` stays 200.
fn keeps_passing(port: u16) {
    let before = passes(port);
    wait_for(30, "three more passes", || (passes(port) >= before + 3.0).then_some(()));
    let (code, body) = http_get(port, "/healthz", None);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_fifo_and_a_link_planted_where_persistence_looks_cannot_stall_scan_or_run() {
    if !root() {
        eprintln!("SKIP: needs root (to run the attacker as nobody)");
        return;
    }
    let (tmp, home) = host_with_a_home("rwstall");
    // nobody: a FIFO in place of a unit and of authorized_keys, a unit that
    // links to root's /etc/shadow, and a real miner unit
    as_nobody(
        &home,
        &format!(
            "mkdir -p .config/systemd/user .ssh && mkfifo .config/systemd/user/fifo.service .ssh/authorized_keys && ln -s /etc/shadow .config/systemd/user/shadow.service && {}",
            miner_unit()
        ),
    );
    // and where only root writes, a FIFO too (a root-owned directory is no excuse to block)
    std::fs::create_dir_all(tmp.path().join("etc/cron.d")).unwrap();
    nix::unistd::mkfifo(
        &tmp.path().join("etc/cron.d/0fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();

    let v = scan(tmp.path(), Duration::from_secs(120));
    let f = persistence_finding(&v).unwrap_or_else(|| panic!("the miner unit in the home is a finding: {v:#}"));
    assert!(f.to_string().contains("pool.supportxmr.com"), "{f}");
    let text = v.to_string();
    assert!(!text.contains("shadow.service") && !text.contains("fifo.service"), "{text}");
    assert!(
        !v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap_or("").starts_with("persistence:")),
        "the persistence sensor was not down: {:#}",
        v["warnings"]
    );

    let (_agent, port) = run_agent(tmp.path(), tmp.path(), 10.0, &[]);
    keeps_passing(port);
    assert_eq!(metric(port, "rigwatch_sensor_up{sensor=\"persistence\"}"), Some(1.0));
}

/// An unprivileged user mounts a FUSE file system (`fusermount`) whose server
/// never answers over a directory the persistence sensor lists: every
/// lookup in it waits in the kernel. The test mounts it as root (no
/// fusermount here) with an open `/dev/fuse` it never reads.
struct DeadFuse {
    at: PathBuf,
    dev: Option<std::fs::File>,
}

impl DeadFuse {
    fn mount(at: &Path) -> Result<DeadFuse, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| format!("/dev/fuse: {e}"))?;
        let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
        let (src, target, fstype) = (c(b"rwstall"), c(at.as_os_str().as_bytes()), c(b"fuse"));
        let data = c(format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd()).as_bytes());
        // SAFETY: NUL-terminated strings that live for the call.
        let r = unsafe {
            nix::libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                nix::libc::MS_NOSUID | nix::libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!("mount fuse: {}", std::io::Error::last_os_error()));
        }
        Ok(DeadFuse {
            at: at.to_path_buf(),
            dev: Some(dev),
        })
    }

    /// Closing the device aborts the connection: every waiter gets ENOTCONN.
    fn abort(&mut self) {
        self.dev = None;
    }
}

impl Drop for DeadFuse {
    fn drop(&mut self) {
        self.abort();
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(self.at.as_os_str())).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { nix::libc::umount2(c.as_ptr(), nix::libc::MNT_DETACH) };
    }
}

#[test]
fn a_sensor_blocked_in_the_kernel_is_skipped_over_its_budget_and_the_agent_keeps_passing() {
    if !root() {
        eprintln!("SKIP: needs root (to mount FUSE and run the attacker as nobody)");
        return;
    }
    let (tmp, home) = host_with_a_home("rwfuse");
    as_nobody(&home, &format!("mkdir -p .config/systemd/user && {}", miner_unit()));
    let mut fuse = match DeadFuse::mount(&home.join(".config")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("SKIP: no FUSE here ({e})");
            return;
        }
    };
    // nothing in this test touches the mount from here on but the agent

    // the scan finishes (its budget is 60 s a sensor) and says why persistence is missing
    let v = scan(tmp.path(), Duration::from_secs(120));
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("persistence: over its time budget of 60 s; skipped until it finishes"),
        "{warnings}"
    );
    assert!(v["findings"].is_array());

    // the agent: persistence down over its budget, the others up, passes go on
    let (_agent, port) = run_agent(tmp.path(), tmp.path(), 2.0, &[]);
    wait_for(30, "persistence reported down", || {
        (metric(port, "rigwatch_sensor_up{sensor=\"persistence\"}") == Some(0.0)).then_some(())
    });
    keeps_passing(port);
    assert_eq!(
        metric(port, "rigwatch_sensor_up{sensor=\"persistence\"}"),
        Some(0.0),
        "skipped while blocked"
    );
    for s in ["process", "binary", "hidden"] {
        assert_eq!(metric(port, &format!("rigwatch_sensor_up{{sensor=\"{s}\"}}")), Some(1.0), "{s}");
    }

    // the mount goes away (the server dies): the late pass returns, the sensor is up again
    fuse.abort();
    wait_for(30, "persistence up again", || {
        (metric(port, "rigwatch_sensor_up{sensor=\"persistence\"}") == Some(1.0)).then_some(())
    });
    keeps_passing(port);
    drop(fuse);
}

#[test]
fn under_systemd_the_agent_says_ready_and_pings_the_watchdog_after_passes() {
    let tmp = tempfile::Builder::new().prefix("rwnotify").tempdir_in("/tmp").unwrap();
    let sock_path = tmp.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let host = tmp.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let (_agent, port) = run_agent(&host, tmp.path(), 10.0, &[("NOTIFY_SOCKET", &sock_path)]);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got[0], "READY=1", "{got:?}");
    assert!(passes(port) >= 3.0);
    // the packaged unit waits for READY=1 and restarts the agent when the pings stop
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/rigwatch.service")).unwrap();
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")), "{unit}");
}
