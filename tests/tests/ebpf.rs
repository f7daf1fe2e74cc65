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
    c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]).arg(prog).args(args);
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
    assert!(evidence_of(f, "process_name").is_empty() && evidence_of(f, "binary_content").is_empty(), "no name or content told it: {f:#}");

    // held down to a tenth of a core and renamed: likely from the hashing alone
    let (_, _, pid) = &sims[3];
    let f = finding_of(&v, *pid).unwrap_or_else(|| panic!("no finding for the throttled RandomX-like process: {v:#}"));
    assert_eq!(f["severity"], "likely", "{f:#}");
    assert_eq!(evidence_of(f, "cpu_algorithm").len(), 1, "{f:#}");
    assert!(evidence_of(f, "cpu").is_empty(), "not busy: {f:#}");

    for (mode, _, pid) in &sims[1..3] {
        if let Some(f) = finding_of(&v, *pid) {
            assert!(evidence_of(f, "cpu_algorithm").is_empty(), "{mode}: rounding as ordinary programs do: {f:#}");
            assert!(f["severity"] != "confirmed" && f["severity"] != "likely", "{mode}: {f:#}");
        }
    }
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
    let warnings: Vec<String> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    let rounding: Vec<&String> = warnings.iter().filter(|w| w.starts_with("rounding: unavailable")).collect();
    assert_eq!(rounding.len(), 1, "said once: {warnings:?}");
    assert!(rounding[0].contains("CAP_BPF"), "says what it needs: {rounding:?}");
    assert!(v["scanned"]["processes"].as_u64().unwrap() > 0, "the other sensors carried on: {v:#}");
}
