//! End-to-end: the real `rigwatch` binary scans this host while the harmless
//! simulators run in each disguise; assert severity and evidence per pid.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_minersim"))
}

/// A running simulator, killed on drop.
struct Sim {
    child: Child,
    pid: u32,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin` (copied to `dir/name` first when given) with args, waits for `ready PID`.
fn start(bin: &str, copy_as: Option<&str>, args: &[&str], cwd: Option<&Path>) -> Sim {
    let src = match bin {
        "minersim" => env!("CARGO_BIN_EXE_minersim"),
        _ => env!("CARGO_BIN_EXE_busysim"),
    };
    let (path, dir) = match copy_as {
        Some(name) => {
            let d = tempfile::Builder::new().prefix("rigwatch-sim").tempdir_in(home_dir()).unwrap();
            let p = d.path().join(name);
            std::fs::copy(src, &p).unwrap();
            (p, Some(d))
        }
        None => (PathBuf::from(src), None),
    };
    let mut cmd = Command::new(&path);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    if let Some(c) = cwd {
        cmd.current_dir(c);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid: u32 = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    Sim { child, pid, _dir: dir }
}

/// Not /tmp: a writable dir there would be evidence by itself.
fn home_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sims");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tests that start busy processes run one at a time, so each burner gets
/// a fair share of this machine's cores during the CPU window.
static BUSY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn busy() -> std::sync::MutexGuard<'static, ()> {
    BUSY.lock().unwrap_or_else(|e| e.into_inner())
}

fn scan(window: &str, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(rigwatch())
        .args([
            "scan",
            "--json",
            "--window",
            window,
            "--cpu-threshold",
            "0.05",
            "--no-default-signatures",
        ])
        .args(extra)
        .output()
        .expect("run rigwatch scan");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scan JSON: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn finding(v: &Value, pid: u32) -> Option<&Value> {
    v["findings"].as_array().unwrap().iter().find(|f| f["pid"] == pid)
}

fn must(v: &Value, pid: u32, what: &str) -> Value {
    finding(v, pid)
        .unwrap_or_else(|| {
            panic!(
                "{what} (pid {pid}) not reported: {}",
                serde_json::to_string_pretty(&v["findings"]).unwrap()
            )
        })
        .clone()
}

fn has(f: &Value, kind: &str, pred: impl Fn(&Value) -> bool) -> bool {
    f["evidence"].as_array().unwrap().iter().any(|e| e["kind"] == kind && pred(e))
}

fn any(_: &Value) -> bool {
    true
}

#[test]
fn miner_simulator_in_every_disguise() {
    let _busy = busy();
    rigwatch(); // built before the simulators start their bounded burn
    let pool = "stratum+tcp://pool.supportxmr.com:3333";
    let plain = start(
        "minersim",
        Some("xmrig"),
        &["-o", pool, "-u", WALLET, "-p", "x", "--donate-level", "1", "--burn", "20"],
        None,
    );
    let renamed = start("minersim", Some("sim1"), &["--rename", "kworker/0:2", "--burn", "20"], None);
    let deleted = start("minersim", Some("sim2"), &["--self-delete", "--burn", "20"], None);
    let memfd = start("minersim", None, &["--memfd", "--burn", "20"], None);
    // busysim: the same disguises without miner strings in the binary
    let b_renamed = start("busysim", Some("b1"), &["--rename", "kworker/1:1", "--burn", "20"], None);
    let b_deleted = start("busysim", Some("b2"), &["--self-delete", "--burn", "20"], None);
    let b_memfd = start("busysim", None, &["--memfd", "--burn", "20"], None);
    let b_shm = start("busysim", None, &["--shm", "rigwatch-test-sysd", "--burn", "20"], None);
    let b_named = start("busysim", Some("xmrig"), &["--burn", "20"], None);
    let (code, v) = scan("3", &[]);
    let _ = std::fs::remove_file("/dev/shm/rigwatch-test-sysd");
    assert_eq!(code, 1, "exit status 1 when something is found");
    assert!(v["host"].is_string());

    let f = must(&v, plain.pid, "xmrig with pool and wallet");
    assert_eq!(f["severity"], "confirmed");
    assert!(has(&f, "command_line", |e| e["pool_url"] == true));
    assert!(has(&f, "wallet", |e| e["coin"] == "monero" && e["address"] == WALLET));
    assert!(has(&f, "binary_content", |e| e["weight"] == "confirmed"));
    assert!(has(&f, "process_name", |e| e["name"] == "xmrig"));
    assert!(has(&f, "cpu", |e| e["cores"].as_f64().unwrap() > 0.1));
    assert_eq!(f["process"]["comm"], "xmrig");
    assert!(f["id"].as_str().unwrap().len() >= 16);

    let f = must(&v, renamed.pid, "renamed minersim");
    assert_eq!(f["severity"], "confirmed");
    assert_eq!(f["process"]["comm"], "kworker/0:2");
    assert!(has(&f, "masquerade", any));
    assert!(has(&f, "binary_content", any), "content is read whatever the name");

    let f = must(&v, deleted.pid, "deleted minersim");
    assert_eq!(f["severity"], "confirmed");
    assert!(has(&f, "executable_origin", |e| e["origin"] == "deleted"));
    assert!(
        has(&f, "binary_content", any),
        "a deleted binary is still read through /proc/PID/exe"
    );

    let f = must(&v, memfd.pid, "fileless minersim");
    assert_eq!(f["severity"], "confirmed");
    assert!(has(&f, "executable_origin", |e| e["origin"] == "memfd"));
    assert!(has(&f, "binary_content", any), "a memfd binary is read through /proc/PID/exe");

    for (sim, origin_or_masq) in [
        (&b_renamed, "masquerade"),
        (&b_deleted, "deleted"),
        (&b_memfd, "memfd"),
        (&b_shm, "writable_dir"),
    ] {
        let f = must(&v, sim.pid, origin_or_masq);
        assert_eq!(
            f["severity"], "suspicious",
            "{origin_or_masq}: odd origin + CPU is suspicious, no more"
        );
        assert!(has(&f, "cpu", any));
        if origin_or_masq == "masquerade" {
            assert!(has(&f, "masquerade", any));
        } else {
            assert!(has(&f, "executable_origin", |e| e["origin"] == origin_or_masq), "{f}");
        }
        assert!(!has(&f, "binary_content", any));
    }

    let f = must(&v, b_named.pid, "busy process named xmrig");
    assert_eq!(f["severity"], "likely", "miner name + sustained CPU is likely");
    assert!(has(&f, "process_name", |e| e["name"] == "xmrig"));
}

#[test]
fn config_only_miners() {
    let _busy = busy();
    rigwatch(); // built before the simulators start their bounded burn
    let dir = tempfile::Builder::new().prefix("rigwatch-cfg").tempdir_in(home_dir()).unwrap();
    let cfg = format!(
        r#"{{"autosave": true, "donate-level": 1, "cpu": {{"enabled": true}},
           "pools": [{{"url": "127.0.0.1:3333", "user": "{WALLET}", "pass": "x", "keepalive": true}}]}}"#
    );
    std::fs::write(dir.path().join("miner.json"), &cfg).unwrap();
    // config given with -c, command line otherwise bare
    let with_c = start(
        "busysim",
        None,
        &["-c", dir.path().join("miner.json").to_str().unwrap(), "--idle", "20"],
        None,
    );
    // config.json beside the executable, no flags at all: the classic `./kswapd0`
    let beside = tempfile::Builder::new().prefix("rigwatch-cfg2").tempdir_in(home_dir()).unwrap();
    std::fs::write(beside.path().join("config.json"), &cfg).unwrap();
    let exe = beside.path().join("kswapd0");
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &exe).unwrap();
    let mut child = Command::new(&exe)
        .args(["--idle", "20"])
        .current_dir(beside.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let beside_pid = child.id();
    let (_, v) = scan("3", &[]);
    let _ = child.kill();
    let _ = child.wait();

    let f = must(&v, with_c.pid, "-c config");
    assert_eq!(f["severity"], "confirmed", "pool + wallet in a miner config is confirmed");
    assert!(has(&f, "miner_config", |e| e["pools"][0] == "127.0.0.1:3333"
        && e["wallets"][0] == WALLET
        && e["path"].as_str().unwrap().ends_with("miner.json")));
    let f = must(&v, beside_pid, "config beside the exe");
    assert_eq!(f["severity"], "confirmed");
    assert!(has(&f, "miner_config", |e| e["path"].as_str().unwrap().ends_with("/config.json")));
    assert!(has(&f, "process_name", |e| e["name"] == "kswapd0"));
}

#[test]
fn benign_busy_programs_stay_below_likely() {
    let _busy = busy();
    rigwatch(); // built before the simulators start their bounded burn
    let work = tempfile::Builder::new().prefix("rigwatch-benign").tempdir_in(home_dir()).unwrap();
    // 8 MiB of incompressible data for xz -9
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 88172645463325252;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(work.path().join("data.bin"), &data).unwrap();
    let mut src = String::from("#include <stdio.h>\n");
    for i in 0..3000 {
        src.push_str(&format!(
            "static int f{i}(int x) {{ int s = 0; for (int j = 0; j < x; j++) s += j * {i} % 7; return s; }}\n"
        ));
    }
    src.push_str("int main(void) { return f1(3); }\n");
    std::fs::write(work.path().join("big.c"), src).unwrap();
    let mut progs = vec![
        Command::new("xz")
            .args(["-9", "-k", "-T1", "-f", "data.bin"])
            .current_dir(work.path())
            .spawn()
            .expect("xz"),
        Command::new("python3")
            .args([
                "-c",
                "import time\nend=time.time()+8\nn=0\nwhile time.time()<end:\n  n+=sum(i*i for i in range(1000))",
            ])
            .spawn()
            .expect("python3"),
    ];
    if let Ok(c) = Command::new("cc")
        .args(["-O2", "-c", "big.c", "-o", "big.o"])
        .current_dir(work.path())
        .spawn()
    {
        progs.push(c);
    }
    let pids: Vec<u32> = progs.iter().map(|c| c.id()).collect();
    let (_, v) = scan("3", &[]);
    for p in progs.iter_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    for f in v["findings"].as_array().unwrap() {
        let sev = f["severity"].as_str().unwrap();
        assert!(
            sev == "suspicious" || !pids.contains(&(f["pid"].as_u64().unwrap() as u32)),
            "benign program reached {sev}: {f}"
        );
    }
    // nothing on this host but the test's own processes reaches likely
    for f in v["findings"].as_array().unwrap() {
        let cmdline = f["process"]["cmdline"].as_str().unwrap();
        let ours = cmdline.contains("--burn") || cmdline.contains("--idle");
        assert!(
            f["severity"] == "suspicious" || ours,
            "unexpected {} finding on this host: {f}",
            f["severity"]
        );
    }
}

#[test]
fn fixture_tree_json_and_exit_codes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/proc");
    let host = root.with_file_name("host");
    let (code, v) = scan("0", &["--proc-root", root.to_str().unwrap(), "--host-root", host.to_str().unwrap()]);
    assert_eq!(code, 1);
    // a process in a Kubernetes pod is named by its pod, from the kubelet's /var/log/pods
    let k = must(&v, 1006, "kswapd0 in a pod");
    assert_eq!(k["process"]["pod_uid"], "7f0c2e1a-5b1d-4c3e-9a8b-0123456789ab", "{k}");
    assert_eq!(
        (k["process"]["namespace"].as_str(), k["process"]["pod"].as_str()),
        (Some("crypto"), Some("kswapd-7d9f")),
        "{k}"
    );
    let f = must(&v, 1001, "fixture xmrig");
    assert_eq!(f["severity"], "confirmed");
    for key in ["id", "severity", "pid", "evidence"] {
        assert!(!f[key].is_null(), "finding has {key}");
    }
    for key in ["comm", "exe", "cmdline", "user"] {
        assert!(f["process"][key].is_string(), "process has {key}");
    }
    // hostile names come out as valid JSON strings
    let out = Command::new(rigwatch())
        .args([
            "scan",
            "--proc-root",
            root.to_str().unwrap(),
            "--window",
            "0",
            "--no-default-signatures",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("confirmed") && table.contains("xmrig"), "{table}");
    assert!(!table.contains('\x1b'), "no raw escape codes from process names in the table");
    // min-severity filters; a missing proc root is an error (2)
    let (code, v) = scan("0", &["--proc-root", root.to_str().unwrap(), "--min-severity", "confirmed"]);
    assert_eq!(code, 1);
    assert!(v["findings"].as_array().unwrap().iter().all(|f| f["severity"] == "confirmed"));
    let out = Command::new(rigwatch())
        .args(["scan", "--proc-root", "/nonexistent-rigwatch", "--window", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-rigwatch"));
}
