//! End-to-end: miners that hide. The real `rigwatch` binary scans this host
//! while the harmless simulators hide from it — an LD_PRELOAD hider loaded
//! into the scanner's own process, a bind mount over /proc/PID, throttled
//! CPU — and the tests assert severity and evidence per pid.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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

fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("evasion");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts a simulator (copied under `name` when given; `wrap` runs it through e.g. `nice`), waits for `ready PID`.
fn start(bin: &str, copy_as: Option<&str>, wrap: &[&str], args: &[&str]) -> Sim {
    let src = match bin {
        "minersim" => env!("CARGO_BIN_EXE_minersim"),
        _ => env!("CARGO_BIN_EXE_busysim"),
    };
    let (path, dir) = match copy_as {
        Some(name) => {
            let d = tempfile::Builder::new().prefix("rigwatch-sim").tempdir_in(work_dir()).unwrap();
            let p = d.path().join(name);
            std::fs::copy(src, &p).unwrap();
            (p, Some(d))
        }
        None => (PathBuf::from(src), None),
    };
    let mut cmd = match wrap.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(&path);
            c
        }
        None => Command::new(&path),
    };
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
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

/// One test at a time: they measure CPU and share the scanner.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rigwatch(); // built before any simulator starts its clock
    g
}

fn scan_env(window: &str, extra: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let out = Command::new(rigwatch())
        .args([
            "scan",
            "--json",
            "--window",
            window,
            "--no-default-signatures",
            "--no-capture",
            "--no-gpu",
        ])
        .args(extra)
        .envs(env.iter().copied())
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

fn text(e: &Value, key: &str) -> String {
    e[key].as_str().unwrap_or_default().to_string()
}

/// Builds the test-only preload hider (tests/evasion/hider.c) with cc.
fn hider() -> PathBuf {
    let out = work_dir().join("hider.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("evasion/hider.c");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc");
    assert!(st.success(), "cc hider.c");
    out
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

#[test]
fn preload_hider_in_the_scanner_itself_does_not_hide_a_process() {
    let _s = serial();
    let lib = hider();
    let busy = start("busysim", Some("b-hidden"), &[], &["--idle", "60"]);
    let miner = start("minersim", Some("m-hidden"), &[], &["--idle", "60"]);
    let pids = format!("{},{}", busy.pid, miner.pid);
    // the hider works: ls (libc readdir) no longer lists them
    let ls = Command::new("ls")
        .arg("/proc")
        .env("LD_PRELOAD", &lib)
        .env("RIGWATCH_HIDE_PIDS", &pids)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&ls.stdout).to_string();
    assert!(
        !listed.lines().any(|l| l == busy.pid.to_string() || l == miner.pid.to_string()),
        "hider did not hide"
    );
    assert!(listed.lines().any(|l| l == "1"), "hider hides only what it is told");

    // an idle busysim is no finding when nothing hides it
    let (_, plain) = scan_env("1", &[], &[]);
    assert!(finding(&plain, busy.pid).is_none(), "idle busysim alone is nothing");

    // the scanner's own libc readdir is hooked; getdents64 is not
    let (code, v) = scan_env("1", &[], &[("LD_PRELOAD", lib.to_str().unwrap()), ("RIGWATCH_HIDE_PIDS", &pids)]);
    assert_eq!(code, 1);
    let f = must(&v, busy.pid, "busysim hidden by a readdir hook");
    assert_eq!(f["severity"], "suspicious", "a hidden process is at least suspicious: {f}");
    assert!(
        has(&f, "hidden_process", |e| text(e, "how").contains("readdir")
            && text(e, "how").contains("getdents64")),
        "{f}"
    );
    assert_eq!(f["process"]["comm"], "b-hidden");
    let f = must(&v, miner.pid, "minersim hidden by a readdir hook");
    assert_eq!(f["severity"], "confirmed", "hidden + miner content is confirmed: {f}");
    assert!(has(&f, "hidden_process", |e| text(e, "how").contains("readdir")), "{f}");
    assert!(has(&f, "binary_content", |e| e["weight"] == "confirmed"), "{f}");
}

/// Unmounts on drop, whatever the test did.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn bind_mount_over_proc_pid_is_seen() {
    if !is_root() {
        eprintln!("skipped: bind mounts need root");
        return;
    }
    let _s = serial();
    let busy = start("busysim", Some("b-mounted"), &[], &["--idle", "60"]);
    let miner = start("minersim", Some("m-mounted"), &[], &["--idle", "60"]);
    let empty = tempfile::Builder::new().prefix("rigwatch-empty").tempdir_in(work_dir()).unwrap();
    let mut guards = Vec::new();
    for pid in [busy.pid, miner.pid] {
        let target = PathBuf::from(format!("/proc/{pid}"));
        let st = Command::new("mount").arg("--bind").arg(empty.path()).arg(&target).status().unwrap();
        if !st.success() {
            eprintln!("skipped: mount --bind over {} failed here", target.display());
            return;
        }
        guards.push(Unmount(target));
    }
    assert!(
        !Path::new(&format!("/proc/{}/stat", busy.pid)).exists(),
        "the bind mount covers /proc/PID"
    );
    let (code, v) = scan_env("1", &[], &[]);
    drop(guards);
    assert_eq!(code, 1);
    let f = must(&v, busy.pid, "busysim under a bind mount");
    assert_eq!(f["severity"], "suspicious", "{f}");
    assert!(
        has(&f, "hidden_process", |e| text(e, "how")
            .contains(&format!("bind mount over /proc/{}", busy.pid))),
        "{f}"
    );
    assert_eq!(f["process"]["comm"], "b-mounted", "read through a private procfs view");
    let f = must(&v, miner.pid, "minersim under a bind mount");
    assert_eq!(f["severity"], "confirmed", "{f}");
    assert!(has(&f, "hidden_process", |e| text(e, "how").contains("bind mount")), "{f}");
    assert!(
        has(&f, "binary_content", |e| e["weight"] == "confirmed"),
        "content read through the private procfs view: {f}"
    );
}

#[test]
fn throttled_miners_are_busy_over_the_long_window() {
    let _s = serial();
    // self-throttled to 30 % of a core, disguised as a kernel thread
    let duty = start(
        "busysim",
        Some("b-duty"),
        &[],
        &["--rename", "kworker/0:3", "--duty", "30", "--burn", "30"],
    );
    // nice 19 and self-throttled to 35 %
    let niced = start(
        "busysim",
        Some("b-nice"),
        &["nice", "-n", "19"],
        &["--rename", "kworker/1:3", "--duty", "35", "--burn", "30"],
    );
    // SCHED_IDLE (runs only when nothing else wants the CPU) and self-throttled to 35 %
    let idle = start(
        "busysim",
        Some("b-idle"),
        &["chrt", "--idle", "0"],
        &["--rename", "kworker/2:3", "--duty", "35", "--burn", "30"],
    );
    // the short window's 0.5-core threshold does not see them
    let (_, short) = scan_env("3", &["--no-sockets"], &[]);
    for s in [&duty, &niced, &idle] {
        assert!(
            finding(&short, s.pid).is_none_or(|f| !has(f, "cpu", |_| true)),
            "below the short threshold: {short}"
        );
    }
    // the long window (here as long as the scan's window) does; its threshold
    // is lowered from 0.15 cores so that a loaded test machine does not starve the check
    let before = [cpu_ticks(duty.pid), cpu_ticks(niced.pid), cpu_ticks(idle.pid)];
    let t = std::time::Instant::now();
    let (_, v) = scan_env("3", &["--no-sockets", "--long-window", "3", "--long-window-threshold", "0.05"], &[]);
    let secs = t.elapsed().as_secs_f64();
    for (i, (s, what)) in [(&duty, "duty 30"), (&niced, "nice 19, duty 35"), (&idle, "SCHED_IDLE, duty 35")]
        .into_iter()
        .enumerate()
    {
        // what the kernel gave it: a loaded test machine can starve a nice-19 process
        let got = (cpu_ticks(s.pid) - before[i]) as f64 / 100.0 / secs;
        if got < 0.1 {
            eprintln!("{what}: got only {got:.2} cores from the kernel on this loaded machine; not asserted");
            continue;
        }
        let f = must(&v, s.pid, what);
        assert_eq!(f["severity"], "suspicious", "masquerade + CPU over the long window: {f}");
        assert!(has(&f, "masquerade", |_| true));
        assert!(
            has(&f, "cpu", |e| {
                let c = e["cores"].as_f64().unwrap();
                (0.05..0.5).contains(&c) && e["window_seconds"].as_f64().unwrap() >= 3.0
            }),
            "{what}: {f}"
        );
        if i > 0 {
            let how = ["", "nice 19", "SCHED_IDLE"][i];
            assert!(
                has(&f, "throttled", |e| text(e, "how").contains(how) && e["weight"] == "info"),
                "{f}"
            );
        }
    }
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// Copies `src` to `dir/name` with UPX's banner and magic appended (the
/// program still runs; its file now looks packed).
fn marked_copy(src: &str, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut bytes = std::fs::read(src).unwrap();
    // built at run time: this test binary itself holds no UPX mark
    let u = std::hint::black_box(b'T') + 1;
    bytes.extend_from_slice(b"\0$Info: This file is packed with the ");
    bytes.extend_from_slice(&[u, b'P', b'X', b' ']);
    bytes.extend_from_slice(b"executable packer $\n\0");
    bytes.extend_from_slice(&[u, b'P', b'X', b'!']);
    std::fs::write(&p, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn spawn_ready(path: &Path, args: &[&str]) -> (Child, u32) {
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    (child, pid)
}

#[test]
fn packed_binaries_are_read_from_memory() {
    let _s = serial();
    let dir = tempfile::Builder::new().prefix("rigwatch-packed").tempdir_in(work_dir()).unwrap();
    // a "packed" busysim: UPX marks in the file, miner strings only in memory once it runs (--unpack)
    let marked = marked_copy(env!("CARGO_BIN_EXE_busysim"), dir.path(), "svc");
    let (mut c1, p1) = spawn_ready(&marked, &["--unpack", "--idle", "60"]);
    // a real UPX-packed minersim, when upx is installed (Debian upx-ucl)
    let upx = Command::new("upx")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut real = None;
    if upx {
        let packed = dir.path().join("packed-sim");
        let st = Command::new("upx")
            .args(["-q", "-1", "-o"])
            .arg(&packed)
            .arg(env!("CARGO_BIN_EXE_minersim"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "upx packs minersim");
        real = Some(spawn_ready(&packed, &["--idle", "60"]));
    } else {
        eprintln!("upx not installed: the real-UPX case is skipped (scripts/test.sh installs upx-ucl)");
    }
    let (code, v) = scan_env("1", &["--no-sockets"], &[]);
    let _ = c1.kill();
    let _ = c1.wait();
    assert_eq!(code, 1);
    let f = must(&v, p1, "packed busysim");
    assert_eq!(f["severity"], "confirmed", "miner strings in memory confirm: {f}");
    assert!(
        has(&f, "packed", |e| text(e, "packer").starts_with("upx")
            && e["weight"] == "suspicious"),
        "{f}"
    );
    assert!(
        has(&f, "binary_content", |e| e["source"] == "memory" && e["weight"] == "confirmed"),
        "{f}"
    );
    assert!(
        !has(&f, "binary_content", |e| e["source"] == "executable"),
        "the file itself holds no miner strings: {f}"
    );
    if let Some((mut c, pid)) = real {
        let _ = c.kill();
        let _ = c.wait();
        let f = must(&v, pid, "UPX-packed minersim");
        assert_eq!(f["severity"], "confirmed", "{f}");
        assert!(has(&f, "packed", |e| text(e, "packer").starts_with("upx")), "{f}");
        assert!(
            has(&f, "binary_content", |e| e["source"] == "memory" && e["weight"] == "confirmed"),
            "{f}"
        );
    }
}

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

#[test]
fn persistence_entries_are_linked_to_the_process_they_start() {
    let _s = serial();
    // a host root: a cron entry starting a busysim copy with a pool and wallet,
    // a miner-named unit whose binary is not running, and the fixture's host context
    let host = tempfile::Builder::new().prefix("rigwatch-host").tempdir_in(work_dir()).unwrap();
    let bin_dir = tempfile::Builder::new().prefix("rigwatch-persist").tempdir_in(work_dir()).unwrap();
    let exe = bin_dir.path().join("svc-helper");
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &exe).unwrap();
    std::fs::create_dir_all(host.path().join("etc/cron.d")).unwrap();
    std::fs::create_dir_all(host.path().join("etc/systemd/system")).unwrap();
    let line = format!(
        "@reboot root {} -o stratum+tcp://pool.supportxmr.com:3333 -u {WALLET} --idle 60",
        exe.display()
    );
    std::fs::write(host.path().join("etc/cron.d/svc-helper"), format!("{line}\n")).unwrap();
    std::fs::write(
        host.path().join("etc/cron.d/benign"),
        format!("0 3 * * * root {} --idle 1\n", exe.display()),
    )
    .unwrap();
    std::fs::write(
        host.path().join("etc/systemd/system/moneroocean_miner.service"),
        "[Service]\nExecStart=/root/moneroocean/xmrig --config=/root/moneroocean/config.json\n",
    )
    .unwrap();
    // started as cron would start it: the miner flags are on its command line too, so
    // run it bare (the flags live only in the entry) to show the link carries the evidence
    let (mut child, pid) = spawn_ready(&exe, &["--idle", "60"]);
    let (code, v) = scan_env("1", &["--no-sockets", "--host-root", host.path().to_str().unwrap()], &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 1);
    let f = must(&v, pid, "process started by a miner cron entry");
    assert_eq!(f["severity"], "confirmed", "pool + wallet in the entry that starts it: {f}");
    assert!(
        has(&f, "persistence", |e| text(e, "path") == "/etc/cron.d/svc-helper"
            && text(e, "entry") == line
            && e["weight"] == "confirmed"),
        "{f}"
    );
    assert!(
        !has(&f, "persistence", |e| text(e, "path") == "/etc/cron.d/benign"),
        "an entry with no miner signs is no evidence: {f}"
    );
    // the unit whose miner is not running is a finding about the host
    let unit = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"]["name"] == "/etc/systemd/system/moneroocean_miner.service")
        .unwrap_or_else(|| panic!("no host finding for the miner unit: {v}"));
    assert_eq!(unit["subject"]["kind"], "persistence");
    assert_eq!(unit["severity"], "likely", "a miner-named unit running xmrig: {unit}");
    assert!(
        has(unit, "persistence", |e| text(e, "entry").contains("/root/moneroocean/xmrig")
            && e["weight"] == "likely"),
        "{unit}"
    );
}

#[test]
fn a_miner_in_a_private_mount_namespace_is_read_through_its_root() {
    if !is_root() {
        eprintln!("SKIP: needs root (unshare --mount)");
        return;
    }
    let _s = serial();
    // a container's view: a tmpfs over DIR that only the miner's mount namespace has,
    // holding its config; the command line names nothing but `-c DIR/config.json`
    let dir = tempfile::Builder::new().prefix("rigwatch-ctr").tempdir_in(work_dir()).unwrap();
    let d = dir.path().display().to_string();
    let cfg = format!(r#"{{"pools": [{{"url": "127.0.0.1:3333", "user": "{WALLET}", "pass": "x"}}], "donate-level": 1}}"#);
    // the image's file, copied into the namespace's tmpfs, then gone from the host
    let image = dir.path().with_extension("json");
    std::fs::write(&image, cfg).unwrap();
    let script = format!(
        "mount -t tmpfs rwctr '{d}' && cp '{}' '{d}/config.json' && exec \"$0\" \"$@\"",
        image.display()
    );
    let sim = start(
        "busysim",
        Some("node"),
        &["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", &script],
        &["-c", &format!("{d}/config.json"), "--idle", "30"],
    );
    std::fs::remove_file(&image).unwrap();
    assert!(
        !dir.path().join("config.json").exists(),
        "the config exists only inside the miner's mount namespace"
    );
    let (_, v) = scan_env("1", &["--no-sockets"], &[]);
    let f = must(&v, sim.pid, "busysim with a config only its namespace sees");
    assert_eq!(f["severity"], "confirmed", "{f}");
    assert!(
        has(&f, "miner_config", |e| e["path"] == format!("{d}/config.json")
            && e["pools"][0] == "127.0.0.1:3333"
            && e["wallets"][0] == WALLET),
        "{f}"
    );
}

#[test]
fn a_base64_one_liner_speaks_for_the_miner_it_starts() {
    let _s = serial();
    let dir = tempfile::Builder::new().prefix("rigwatch-b64").tempdir_in(work_dir()).unwrap();
    let node = dir.path().join("node");
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &node).unwrap();
    // the miner itself runs with a bare command line; the pool and wallet are
    // only in the parent shell's base64 one-liner (as a comment of the script)
    let script = format!(
        "exec {} --idle 30 # stratum+tcp://pool.supportxmr.com:3333 {WALLET}\n",
        node.display()
    );
    let b64 = base64_encode(script.as_bytes());
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!("echo {b64} | base64 -d | sh"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid: u32 = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    let (_, v) = scan_env("1", &["--no-sockets"], &[]);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = sh.wait();
    let f = must(&v, pid, "the miner started by a base64 one-liner");
    assert_eq!(f["process"]["cmdline"], format!("{} --idle 30", node.display()), "{f}");
    let from = format!("base64 command line of ancestor sh pid {}", sh.id());
    assert!(has(&f, "wallet", |e| e["address"] == WALLET && e["source"] == from), "{f}");
    assert!(
        has(&f, "pool_domain", |e| e["domain"] == "supportxmr.com" && e["source"] == from),
        "{f}"
    );
    assert!(
        has(&f, "command_line", |e| e["base64"] == true
            && text(e, "matched").ends_with(&format!("(in the {from})"))),
        "{f}"
    );
    assert!(
        f["severity"] == "likely" || f["severity"] == "confirmed",
        "pool and wallet behind the process that started it: {f}"
    );
}

/// Standard base64 with padding (the test's own, so the test needs no crate).
fn base64_encode(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
