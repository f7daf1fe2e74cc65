//! The eBPF rounding-mode sensor (issue 15), loaded into this kernel: what
//! RandomX hashing does to the CPU, whatever the miner is called.
//!
//! `busysim --rounding cycle` burns a core with SSE float work and changes
//! the rounding mode at every step, as RandomX's CFROUND does; its benign
//! peers burn the same way and are switched out as often, one never leaving
//! round-to-nearest (`nearest`), one setting "toward zero" once for all its
//! work (`fixed`, as interval arithmetic might). All run as `nobody`. The
//! first must be `confirmed` by `cpu_algorithm` evidence beside its CPU,
//! a second one renamed `kworker/1:2H` and held to a tenth of a core
//! `likely` by the same evidence alone;
//! the peers must get no `cpu_algorithm` evidence at all. Unprivileged, the
//! sensor says it is unavailable and why, and the scan carries on.

use rigwatch_e2e::{evidence_of, start_announcing};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUSYSIM: &str = env!("CARGO_BIN_EXE_busysim");

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", BUSYSIM)
}

fn as_nobody(prog: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(prog)
        .args(args);
    c
}

/// One test at a time: the simulators need the CPU they burn.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn finding_of(v: &Value, pid: u32) -> Option<&Value> {
    v["findings"].as_array().unwrap().iter().find(|f| f["pid"] == pid)
}

#[test]
fn randomx_like_rounding_is_confirmed_and_its_benign_peers_are_not() {
    if !nix::unistd::geteuid().is_root() || !cfg!(target_arch = "x86_64") {
        eprintln!("SKIP: needs root on x86_64 (loading eBPF)");
        return;
    }
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "this kernel has BTF: the sensor's CO-RE program must load here"
    );
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let rigwatch = rigwatch();
    let mut sims = Vec::new();
    for mode in ["cycle", "nearest", "fixed", "cycle"] {
        // the peers at a lower priority (switched out as often or more), so
        // that on two cores the RandomX-like one keeps its core; the last,
        // renamed, holds itself to 10 % of a core (not busy: no CPU evidence)
        let nice = if mode == "cycle" { "0" } else { "10" };
        let mut args = vec!["--rounding", mode, "--burn", "12", "--nice", nice];
        if sims.len() == 3 {
            args.extend(["--duty", "10", "--rename", "kworker/1:2H"]);
        }
        let (k, ready, _) = start_announcing(as_nobody(Path::new(BUSYSIM), &args), "ready ");
        sims.push((mode, k, ready.parse::<u32>().unwrap()));
    }
    let scan = rigwatch_e2e::scan_start(&rigwatch, "6");
    let v = rigwatch_e2e::scan_end(scan);
    let warnings = v["warnings"].to_string();
    assert!(!warnings.contains("rounding"), "the sensor loaded: {warnings}");

    let (_, _, pid) = &sims[0];
    let f = finding_of(&v, *pid).unwrap_or_else(|| panic!("no finding for the RandomX-like process: {v:#}"));
    assert_eq!(f["severity"], "confirmed", "{f:#}");
    assert_eq!(f["process"]["user"], "nobody");
    let e = match &evidence_of(f, "cpu_algorithm")[..] {
        [e] => *e,
        other => panic!("one cpu_algorithm evidence: {other:?}"),
    };
    assert_eq!(e["algorithm"], "randomx-like", "{e:#}");
    assert_eq!(e["weight"], "likely", "{e:#}");
    assert!(e["rate_per_second"].as_f64().unwrap() >= 1.0, "{e:#}");
    assert!(e["modes"].as_array().unwrap().len() >= 2, "{e:#}");
    assert!(!evidence_of(f, "cpu").is_empty(), "busy too: {f:#}");
    assert!(
        evidence_of(f, "process_name").is_empty() && evidence_of(f, "binary_content").is_empty(),
        "no name or content told it: {f:#}"
    );

    // held down to a tenth of a core and renamed: likely from the hashing alone
    let (_, _, pid) = &sims[3];
    let f = finding_of(&v, *pid).unwrap_or_else(|| panic!("no finding for the throttled RandomX-like process: {v:#}"));
    assert_eq!(f["severity"], "likely", "{f:#}");
    assert_eq!(evidence_of(f, "cpu_algorithm").len(), 1, "{f:#}");
    assert!(evidence_of(f, "cpu").is_empty(), "not busy: {f:#}");

    for (mode, _, pid) in &sims[1..3] {
        if let Some(f) = finding_of(&v, *pid) {
            assert!(
                evidence_of(f, "cpu_algorithm").is_empty(),
                "{mode}: rounding as ordinary programs do: {f:#}"
            );
            assert!(f["severity"] != "confirmed" && f["severity"] != "likely", "{mode}: {f:#}");
        }
    }
}

#[test]
fn a_process_that_lives_for_milliseconds_is_judged_from_its_exec_event() {
    if !nix::unistd::geteuid().is_root() || !cfg!(target_arch = "x86_64") {
        eprintln!("SKIP: needs root on x86_64 (loading eBPF)");
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let rigwatch = rigwatch();
    // /bin/true under an ordinary name: it exits at once, whatever it is told
    let dir = tempfile::Builder::new().prefix("rigwatch-exec-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = dir.path().join("updater");
    std::fs::copy("/bin/true", &bin).unwrap();
    let scan = rigwatch_e2e::scan_start(&rigwatch, "5");
    // the programs are attached once the scan holds their links
    wait_for_links(&scan, 3);
    let wallet = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
    let t = std::time::Instant::now();
    let mut miner = as_nobody(&bin, &["-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", wallet])
        .spawn()
        .unwrap();
    let miner_pid = miner.id();
    assert!(miner.wait().unwrap().success());
    let lived = t.elapsed();
    let mut benign = as_nobody(&bin, &["--quiet", "/var/lib/dpkg"]).spawn().unwrap();
    let benign_pid = benign.id();
    assert!(benign.wait().unwrap().success());
    let v = rigwatch_e2e::scan_end(scan);
    eprintln!("the short-lived process lived {lived:?} (setpriv and the exec included)");

    let f = finding_of(&v, miner_pid).unwrap_or_else(|| panic!("no finding for the short-lived process {miner_pid}: {v:#}"));
    assert_eq!(f["severity"], "confirmed", "pool URL and wallet on its command line: {f:#}");
    assert_eq!(f["process"]["user"], "nobody", "{f:#}");
    assert_eq!(f["process"]["exe"], bin.to_str().unwrap(), "{f:#}");
    assert!(
        f["process"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("stratum+tcp://pool.supportxmr.com:3333"),
        "{f:#}"
    );
    assert_eq!(evidence_of(f, "short_lived").len(), 1, "it says how it was seen: {f:#}");
    assert!(!evidence_of(f, "wallet").is_empty(), "{f:#}");
    assert!(finding_of(&v, benign_pid).is_none(), "an ordinary short-lived process: {v:#}");
}

/// A pool connection that lasts about 50 ms (login, job, one share, 50 ms
/// held) from a process with nothing on its command line: by the pass its
/// socket is closed, and one client has exited too. The kernel recorded who
/// opened each connection (inet_sock_set_state), so the stratum session is
/// the process's evidence: the one still running by its listing, the one
/// gone as a process judged from its exec and connect events. Without the
/// connect trace both would be flows without a process.
#[test]
fn a_50_ms_pool_connection_is_attributed_after_its_socket_is_gone() {
    if !nix::unistd::geteuid().is_root() || !cfg!(target_arch = "x86_64") {
        eprintln!("SKIP: needs root on x86_64 (loading eBPF)");
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut pool = Command::new(env!("CARGO_BIN_EXE_fakepool"));
    pool.args(["--dialect", "cryptonote", "--listen", "127.0.0.1:0", "--max-seconds", "60"]);
    let (_pool, addr, _) = start_announcing(pool, "listening ");
    let scan = rigwatch_e2e::scan_start(&rigwatch(), "5");
    wait_for_links(&scan, 3);
    let client = |after: &str| {
        let prog = Path::new(env!("CARGO_BIN_EXE_stratumclient"));
        let args = [
            "--dialect",
            "cryptonote",
            "--connect",
            addr.as_str(),
            "--hold",
            "0.05",
            "--after",
            after,
        ];
        let (c, ready, log) = start_announcing(as_nobody(prog, &args), "ready ");
        let pid: u32 = ready.parse().unwrap();
        rigwatch_e2e::wait_for(10, "the client's done", || {
            log.lock().unwrap().iter().any(|l| l == "done").then_some(())
        });
        (c, pid)
    };
    let (_stays, stays) = client("30");
    let (mut gone, gone_pid) = client("0");
    assert!(gone.0.wait().unwrap().success());
    let v = rigwatch_e2e::scan_end(scan);

    for (pid, what) in [(stays, "still running"), (gone_pid, "exited")] {
        let f = finding_of(&v, pid).unwrap_or_else(|| panic!("{what}: no finding for the client {pid}: {v:#}"));
        assert_eq!(f["severity"], "confirmed", "{what}: a stratum login on the wire: {f:#}");
        assert_eq!(f["process"]["user"], "nobody", "{f:#}");
        let s = evidence_of(f, "stratum");
        assert!(
            s.iter().any(|e| e["remote"] == addr.as_str() && e["dialect"] == "cryptonote"),
            "{what}: the session is the process's evidence: {f:#}"
        );
    }
    let f = finding_of(&v, gone_pid).unwrap();
    assert_eq!(f["process"]["comm"], "stratumclient", "{f:#}");
    assert!(
        f["process"]["cmdline"].as_str().unwrap().contains("--hold 0.05"),
        "its exec event gave its command line: {f:#}"
    );
    assert!(
        !v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| (f["pid"].is_null() || f["pid"] == 0) && f.to_string().contains(addr.as_str())),
        "no flow without a process is left: {v:#}"
    );
}

/// Waits until the scan holds `n` eBPF links (its programs are attached).
fn wait_for_links(scan: &std::process::Child, n: usize) {
    let fds = format!("/proc/{}/fd", scan.id());
    rigwatch_e2e::wait_for(20, "the scan's eBPF links", || {
        let links = std::fs::read_dir(&fds)
            .ok()?
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf_link"))
            .count();
        (links >= n).then_some(())
    });
}

#[test]
fn unprivileged_the_sensor_says_it_is_unavailable_and_the_scan_carries_on() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root to run the scan as nobody");
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let out = as_nobody(&rigwatch(), &["scan", "--json", "--window", "1", "--no-default-signatures"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let warnings: Vec<String> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    for sensor in ["rounding", "exectrace", "connecttrace"] {
        let said: Vec<&String> = warnings
            .iter()
            .filter(|w| w.starts_with(&format!("{sensor}: unavailable")))
            .collect();
        assert_eq!(said.len(), 1, "{sensor}: said once: {warnings:?}");
        assert!(
            said[0].contains("CAP_BPF") && said[0].chars().count() < 800,
            "says what it needs, briefly: {said:?}"
        );
    }
    assert!(
        v["scanned"]["processes"].as_u64().unwrap() > 0,
        "the other sensors carried on: {v:#}"
    );
}
