//! End-to-end: `rigwatch scan` with the fake NVML (tests/gpu/fake_nvml.c,
//! compiled here) loaded through RIGWATCH_NVML_LIBRARY, reporting the
//! harmless simulators as busy on a GPU. No GPU, driver or miner is involved.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const GIB: u64 = 1 << 30;

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_minersim"))
}

/// Not /tmp: a world-writable directory would be evidence by itself.
fn work_dir(prefix: &str) -> tempfile::TempDir {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu");
    std::fs::create_dir_all(&d).unwrap();
    tempfile::Builder::new().prefix(prefix).tempdir_in(d).unwrap()
}

fn fake_nvml(dir: &Path) -> PathBuf {
    rigwatch_e2e::build_fake_nvml(dir)
}

/// A running simulator, killed on drop.
struct Sim {
    child: Child,
    pid: u32,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin` (copied into `dir` as `name` when given), idling; waits for `ready PID`.
/// rigwatch is built first, so that a slow build cannot outlast the simulator.
fn start(bin: &str, copy_as: Option<(&Path, &str)>) -> Sim {
    rigwatch();
    let src = match bin {
        "minersim" => env!("CARGO_BIN_EXE_minersim"),
        _ => env!("CARGO_BIN_EXE_busysim"),
    };
    let path = match copy_as {
        Some((dir, name)) => {
            let p = dir.join(name);
            std::fs::copy(src, &p).unwrap();
            p
        }
        None => PathBuf::from(src),
    };
    let mut child = Command::new(&path)
        .args(["--idle", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    Sim { child, pid }
}

/// `rigwatch scan` with a 1 s window (no capture, no sockets: only what the test is about).
fn scan(env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut cmd = Command::new(rigwatch());
    cmd.args(["scan", "--window", "1", "--no-capture", "--no-sockets", "--no-default-signatures"])
        .args(extra);
    cmd.env_remove("RIGWATCH_NVML_LIBRARY").env_remove("FAKE_NVML_PROCS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run rigwatch scan")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scan JSON: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn finding(v: &Value, pid: u32) -> Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not reported: {}", serde_json::to_string_pretty(&v["findings"]).unwrap()))
        .clone()
}

fn gpu_evidence(f: &Value) -> Value {
    f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "gpu")
        .unwrap_or_else(|| panic!("no GPU evidence: {f}"))
        .clone()
}

/// Whether this test itself runs inside a scheduler's job (then its
/// simulators' GPU use is scheduled, not unscheduled).
fn inside_a_scheduler_job() -> bool {
    let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cg.contains("kubepods")
        || cg.split('/').any(|c| {
            c.strip_prefix("job_")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[test]
fn gpu_use_raises_findings_by_what_else_is_known() {
    if inside_a_scheduler_job() {
        eprintln!("skipped: this test runs inside a Slurm/Kubernetes job, so its GPU use is scheduled");
        return;
    }
    let dir = work_dir("rigwatch-gpu");
    let lib = fake_nvml(dir.path());
    // a process with no other evidence, one named like a GPU miner, and the miner simulator
    let plain = start("busysim", None);
    let named = start("busysim", Some((dir.path(), "t-rex")));
    let miner = start("minersim", None);
    let quiet = start("busysim", None);
    let procs = format!(
        "{}:95:4096,{}:90:6144,{}:99:2048:g,{}:12:512",
        plain.pid, named.pid, miner.pid, quiet.pid
    );
    let out = scan(
        &[("RIGWATCH_NVML_LIBRARY", lib.to_str().unwrap()), ("FAKE_NVML_PROCS", &procs)],
        &["--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "findings: exit 1; stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| !w.as_str().unwrap().starts_with("gpu")),
        "the sensor works with the fake NVML: {}",
        v["warnings"]
    );

    // unscheduled GPU use alone: suspicious
    let f = finding(&v, plain.pid);
    assert_eq!(f["severity"], "suspicious", "{f}");
    let g = gpu_evidence(&f);
    assert_eq!(g["gpu"], "nvidia0 Fake NVIDIA GPU 0");
    assert_eq!(g["utilization_percent"], 95.0);
    assert_eq!(g["memory_bytes"], 4 * GIB);
    assert_eq!(g["weight"], "suspicious");
    assert!(g.get("scheduler").is_none(), "outside any scheduler job: {g}");
    let w = g["window_seconds"].as_f64().unwrap();
    assert!((0.9..5.0).contains(&w), "window {w}");
    assert_eq!(f["gpu"]["utilization_percent"], 95.0);
    assert_eq!(f["gpu"]["memory_bytes"], 4 * GIB);
    // nothing but the GPU use (a checkout under /tmp adds a writable-dir origin, which changes nothing here)
    let others: Vec<&Value> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "gpu" && e["kind"] != "executable_origin")
        .collect();
    assert!(others.is_empty(), "nothing but the GPU use: {f}");

    // + a GPU miner's name: likely
    let f = finding(&v, named.pid);
    assert_eq!(f["severity"], "likely", "{f}");
    assert_eq!(f["process"]["comm"], "t-rex");
    assert!(f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "process_name" && e["name"] == "t-rex"));
    let g = gpu_evidence(&f);
    assert_eq!(
        (g["utilization_percent"].as_f64(), g["memory_bytes"].as_u64()),
        (Some(90.0), Some(6 * GIB))
    );

    // + a miner binary: confirmed (a graphics process: memory from the graphics list)
    let f = finding(&v, miner.pid);
    assert!(
        f["process"]["exe"].as_str().unwrap().ends_with("/minersim"),
        "the simulator is alive and readable: {f}"
    );
    assert_eq!(f["severity"], "confirmed", "{f}");
    assert!(f["evidence"].as_array().unwrap().iter().any(|e| e["kind"] == "binary_content"));
    let g = gpu_evidence(&f);
    assert_eq!(
        (g["utilization_percent"].as_f64(), g["memory_bytes"].as_u64()),
        (Some(99.0), Some(2 * GIB))
    );

    // 12 % is no sustained use
    assert!(
        v["findings"].as_array().unwrap().iter().all(|f| f["pid"] != quiet.pid),
        "{}",
        v["findings"]
    );
}

#[test]
fn table_shows_gpu_use() {
    if inside_a_scheduler_job() {
        return;
    }
    let dir = work_dir("rigwatch-gpu-table");
    let lib = fake_nvml(dir.path());
    let sim = start("busysim", None);
    let procs = format!("{}:87:3072", sim.pid);
    let out = scan(
        &[("RIGWATCH_NVML_LIBRARY", lib.to_str().unwrap()), ("FAKE_NVML_PROCS", &procs)],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().find(|l| l.starts_with("SEVERITY")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        header.contains(" CPU") && header.contains(" GPU") && header.find("GPU") < header.find("EXECUTABLE"),
        "{header}"
    );
    let row = text
        .lines()
        .find(|l| l.contains(&format!(" {} ", sim.pid)) && l.starts_with("suspicious"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains(" 87% "), "{row}");
    // the window is the time between the sensor's two NVML samples: 1 s or more on a loaded machine
    let line = text
        .lines()
        .find(|l| l.contains("gpu                GPU nvidia0 Fake NVIDIA GPU 0: 87% util, 3072 MiB over "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.trim_start().starts_with("suspicious gpu"), "{line}");
    assert!(line.ends_with("s, outside any scheduler job"), "{line}");
}

#[test]
fn no_nvml_library_is_a_warning_not_an_error() {
    let dir = work_dir("rigwatch-gpu-none");
    let missing = dir.path().join("no-such-libnvidia-ml.so.1");
    let out = scan(&[("RIGWATCH_NVML_LIBRARY", missing.to_str().unwrap())], &["--json"]);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "the scan carries on: {code:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let warnings: Vec<&str> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    let gpu: Vec<&&str> = warnings.iter().filter(|w| w.starts_with("gpu")).collect();
    assert_eq!(gpu.len(), 1, "said once: {warnings:?}");
    let named = format!(
        "NVML library {} (from RIGWATCH_NVML_LIBRARY) could not be loaded",
        missing.display()
    );
    assert!(gpu[0].contains(&named), "{}", gpu[0]);
    let drm = std::fs::read_to_string("/proc/devices")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("drm"));
    if !drm {
        assert!(
            gpu[0].starts_with("gpu: unavailable: ") && gpu[0].contains("no DRM GPU driver"),
            "{}",
            gpu[0]
        );
    }

    // the usual library name, where there is no NVIDIA driver (as on the test machines)
    let out = scan(&[], &["--json"]);
    let v = json(&out);
    let warnings: Vec<&str> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    let ldconfig = Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let nvidia_here = ldconfig.contains("libnvidia-ml.so.1");
    if !drm && !nvidia_here {
        assert!(
            warnings.contains(
                &"gpu: unavailable: no NVIDIA driver (libnvidia-ml.so.1 not found); no DRM GPU driver (no drm device in /proc/devices)"
            ),
            "{warnings:?}"
        );
    }
}

#[test]
fn no_gpu_leaves_the_sensor_out() {
    let dir = work_dir("rigwatch-gpu-off");
    let lib = fake_nvml(dir.path());
    let sim = start("busysim", None);
    let procs = format!("{}:95:4096", sim.pid);
    let env = [
        ("RIGWATCH_NVML_LIBRARY", lib.to_str().unwrap()),
        ("FAKE_NVML_PROCS", procs.as_str()),
    ];
    let v = json(&scan(&env, &["--json", "--no-gpu"]));
    assert!(
        v["findings"].as_array().unwrap().iter().all(|f| f["pid"] != sim.pid),
        "{}",
        v["findings"]
    );
    let missing = [("RIGWATCH_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1")];
    let v = json(&scan(&missing, &["--json", "--no-gpu"]));
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| !w.as_str().unwrap().starts_with("gpu")),
        "{}",
        v["warnings"]
    );
}

/// Starts busysim as `uid` (an unprivileged user, as a GPU user on a
/// cluster node would be), idling; waits for `ready PID`.
fn start_as(uid: u32) -> Sim {
    rigwatch();
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            env!("CARGO_BIN_EXE_busysim"),
            "--idle",
            "600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line (is the target dir readable by uid {uid}?): {line:?}"));
    Sim { child, pid }
}

/// A Slurm node (a `squeue` fixture in PATH): GPU use outside any job
/// names its user against what that user holds here — a RUNNING job whose
/// GPUs idle, or no job at all.
#[test]
fn gpu_use_outside_a_users_slurm_job_names_the_user_and_the_job() {
    if inside_a_scheduler_job() {
        return;
    }
    let dir = work_dir("rigwatch-slurm");
    let lib = fake_nvml(dir.path());
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let squeue = bin.join("squeue");
    std::fs::write(
        &squeue,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nprintf '4242|nobody|65534|RUNNING|gres/gpu:1\\n4243|nobody|65534|PENDING|gres/gpu:4\\n'\n",
            dir.path().join("calls").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&squeue, std::fs::Permissions::from_mode(0o755)).unwrap();
    let holder = start_as(65534);
    let stranger = start_as(65533);
    let procs = format!("{}:97:8192,{}:88:4096", holder.pid, stranger.pid);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = scan(
        &[
            ("RIGWATCH_NVML_LIBRARY", lib.to_str().unwrap()),
            ("FAKE_NVML_PROCS", &procs),
            ("PATH", &path),
        ],
        &["--json"],
    );
    assert_eq!(out.status.code(), Some(1), "stderr {}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);

    let f = finding(&v, holder.pid);
    assert_eq!(f["severity"], "suspicious", "{f}");
    assert_eq!(f["process"]["uid"], 65534);
    let g = gpu_evidence(&f);
    assert_eq!(g["weight"], "suspicious");
    assert_eq!(
        g["allocation"],
        "user nobody (uid 65534) holds job 4242 (RUNNING, gres/gpu:1; its processes use no GPU), \
         job 4243 (PENDING, gres/gpu:4) on this node and runs this outside them",
        "{g}"
    );

    let g = gpu_evidence(&finding(&v, stranger.pid));
    let who = g["allocation"].as_str().unwrap_or_else(|| panic!("{g}"));
    assert!(
        who.ends_with("uid 65533 holds no Slurm job on this node") || who.ends_with("(uid 65533) holds no Slurm job on this node"),
        "a user with no job: {who}"
    );

    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "squeue asked once per scan: {calls}");
    assert!(calls.contains("--nodelist ") && calls.contains("%i|%u|%U|%T|%b"), "{calls}");
}
