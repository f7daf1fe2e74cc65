//! The GPU sensor's DRM side on a proc tree built from the fdinfo fixtures
//! (tests/fixtures/gpu): two passes two seconds apart, engine counters
//! raised in between, then the detector's findings.

use rigwatch_agent::detector::{Detector, DetectorConfig};
use rigwatch_agent::sensors::gpu::{GpuConfig, GpuSensor};
use rigwatch_agent::sensors::{Observation, ProcessSensor, Sensor, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, Severity, Weight};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpu").join(name)).unwrap()
}

/// Sets `drm-<key>:` (an engine's busy ns, or a cycles counter) in fdinfo text.
fn set(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("drm-{key}:");
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                format!("{prefix}\t{value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "{key} in fixture");
    out.join("\n") + "\n"
}

struct Tree {
    root: PathBuf,
}

impl Tree {
    fn process(&self, pid: u32, comm: &str, cgroup: &str) {
        let d = self.root.join(pid.to_string());
        std::fs::create_dir_all(d.join("fd")).unwrap();
        std::fs::create_dir_all(d.join("fdinfo")).unwrap();
        let stat = format!(
            "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 10 0 0 0 100 20 0 0 20 0 1 0 {} 10000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
            5000 + pid
        );
        std::fs::write(d.join("stat"), stat).unwrap();
        std::fs::write(
            d.join("status"),
            format!("Name:\t{comm}\nPid:\t{pid}\nUid:\t1000\t1000\t1000\t1000\n"),
        )
        .unwrap();
        std::fs::write(d.join("cmdline"), format!("{comm}\0--bench\0")).unwrap();
        std::fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        std::os::unix::fs::symlink(format!("/usr/local/bin/{comm}"), d.join("exe")).unwrap();
    }

    /// Descriptor `fd` of `pid` points at `target` and shows `fdinfo`.
    fn fd(&self, pid: u32, fd: u32, target: &str, fdinfo: &str) {
        let d = self.root.join(pid.to_string());
        let link = d.join("fd").join(fd.to_string());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, link).unwrap();
        std::fs::write(d.join("fdinfo").join(fd.to_string()), fdinfo).unwrap();
    }
}

fn gpu_evidence(obs: &[Observation], snap: &Snapshot) -> HashMap<u32, Evidence> {
    obs.iter()
        .filter_map(|o| match o {
            Observation::Evidence(k, e) if e.kind() == "gpu" => {
                assert!(snap.procs.contains_key(k));
                Some((k.pid, e.clone()))
            }
            _ => None,
        })
        .collect()
}

fn util_mem(e: &Evidence) -> (f64, u64, f64, Option<String>, String) {
    match &e.detail {
        EvidenceKind::Gpu {
            gpu,
            utilization_percent,
            memory_bytes,
            window_seconds,
            scheduler,
            ..
        } => (*utilization_percent, *memory_bytes, *window_seconds, scheduler.clone(), gpu.clone()),
        d => panic!("{d:?}"),
    }
}

#[test]
fn two_passes_over_a_proc_tree() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tree {
        root: dir.path().to_path_buf(),
    };
    std::fs::write(t.root.join("devices"), "Character devices:\n  1 mem\n226 drm\n").unwrap();
    let (i915, amd, amd_old, xe) = (
        fixture("i915.fdinfo"),
        fixture("amdgpu.fdinfo"),
        fixture("amdgpu-legacy.fdinfo"),
        fixture("xe.fdinfo"),
    );
    let user = "/user.slice/user-1000.slice/session-4.scope";
    // 3001: a GPU miner's name, on Intel, one client seen through two descriptors (dup)
    t.process(3001, "t-rex", user);
    t.fd(3001, 3, "/dev/dri/renderD128", &i915);
    t.fd(3001, 4, "/dev/dri/renderD128", &i915);
    t.fd(3001, 5, "/etc/passwd", &fixture("regular-file.fdinfo"));
    // 3002: busy AMD GPU inside a Slurm job
    t.process(3002, "train", "/system.slice/slurmstepd.scope/job_4711/step_0/user/task_0");
    t.fd(3002, 7, "/dev/dri/renderD129", &amd_old);
    // 3003: busy AMD GPU, no scheduler
    t.process(3003, "gpu-burn", user);
    t.fd(3003, 9, "/dev/dri/renderD128", &amd);
    // 3004: a desktop program, barely using the GPU
    t.process(3004, "firefox", user);
    t.fd(
        3004,
        20,
        "/dev/dri/card0",
        &amd_old.replace("drm-client-id:\t5", "drm-client-id:\t6"),
    );
    // 3005: busy Intel xe GPU in a configured scheduler's cgroup
    t.process(3005, "python3", "/ml-batch.slice/run-17.scope");
    t.fd(3005, 3, "/dev/dri/renderD130", &xe);
    // 3006: DRM fdinfo text behind a descriptor that is not a GPU device: not read
    t.process(3006, "cat", user);
    t.fd(
        3006,
        3,
        "/tmp/copy-of-fdinfo",
        &i915.replace("drm-client-id:\t7", "drm-client-id:\t99"),
    );
    // 3007: opens the GPU between the passes
    t.process(3007, "late", user);

    let cfg = GpuConfig {
        nvml_library: Some("/nonexistent/libnvidia-ml.so.1".into()),
        scheduler_cgroups: vec!["ml-batch.slice".into()],
        ..Default::default()
    };
    let mut gpu = GpuSensor::with_env(&t.root, cfg, None);
    assert!(!gpu.nvml_loaded());
    let mut procs = ProcessSensor::new(&t.root);
    let first = procs.sample().unwrap();
    assert_eq!(first.procs.len(), 7);
    let mut obs = Vec::new();
    gpu.observe(&first, &mut obs).expect("DRM keeps the sensor up without NVML");
    assert!(obs.is_empty(), "the first pass only primes the counters: {obs:?}");
    assert_eq!(gpu.gpus().len(), 4, "{:?}", gpu.gpus());

    // two seconds of work
    let render = 25_662_044_495u64;
    let i915b = set(&i915, "engine-render", &format!("{} ns", render + 1_600_000_000));
    t.fd(3001, 3, "/dev/dri/renderD128", &i915b);
    t.fd(3001, 4, "/dev/dri/renderD128", &i915b);
    t.fd(
        3002,
        7,
        "/dev/dri/renderD129",
        &set(&amd_old, "engine-gfx", &format!("{} ns", 9_017_645_412u64 + 1_800_000_000)),
    );
    t.fd(
        3003,
        9,
        "/dev/dri/renderD128",
        &set(&amd, "engine-compute", &format!("{} ns", 81_234_567_890u64 + 1_400_000_000)),
    );
    t.fd(
        3004,
        20,
        "/dev/dri/card0",
        &set(&amd_old, "engine-gfx", &format!("{} ns", 9_017_645_412u64 + 100_000_000)).replace("drm-client-id:\t5", "drm-client-id:\t6"),
    );
    let xeb = set(&set(&xe, "cycles-rcs", "628257900"), "total-cycles-rcs", "8655183225");
    t.fd(3005, 3, "/dev/dri/renderD130", &xeb);
    t.fd(
        3006,
        3,
        "/tmp/copy-of-fdinfo",
        &set(&i915, "engine-render", &format!("{} ns", render + 1_900_000_000)),
    );
    t.fd(
        3007,
        3,
        "/dev/dri/renderD128",
        &set(&i915, "engine-render", &format!("{} ns", render * 2)).replace("drm-client-id:\t7", "drm-client-id:\t8"),
    );

    let mut second = procs.sample().unwrap();
    second.at = first.at + Duration::from_secs(2);
    let mut obs = Vec::new();
    gpu.observe(&second, &mut obs).unwrap();
    let ev = gpu_evidence(&obs, &second);
    let mut pids: Vec<u32> = ev.keys().copied().collect();
    pids.sort();
    assert_eq!(
        pids,
        vec![3001, 3002, 3003, 3005],
        "5 % (3004), no GPU device (3006) and first sight (3007) are no evidence"
    );

    let (u, m, w, s, g) = util_mem(&ev[&3001]);
    assert_eq!(
        (u, w, s, g.as_str()),
        (80.0, 2.0, None, "i915 0000:00:02.0"),
        "one client through two descriptors counts once"
    );
    assert_eq!(m, 10_240 * 1024);
    assert_eq!(ev[&3001].weight, Weight::Suspicious);
    let (u, m, _, s, g) = util_mem(&ev[&3002]);
    assert_eq!(
        (u, m, s.as_deref(), g.as_str()),
        (90.0, (1_167_440 + 10_100) * 1024, Some("slurm job_4711"), "amdgpu 0000:03:00.0")
    );
    assert_eq!(ev[&3002].weight, Weight::Info);
    let (u, m, _, s, _) = util_mem(&ev[&3003]);
    assert_eq!((u, m, s), (70.0, (4_194_304 + 6152) * 1024, None));
    let (u, _, _, s, g) = util_mem(&ev[&3005]);
    assert_eq!(
        (u, s.as_deref(), g.as_str()),
        (60.0, Some("cgroup ml-batch.slice"), "xe 0000:00:02.0")
    );
    assert_eq!(ev[&3005].weight, Weight::Info);
    let firefox = gpu.uses().iter().find(|u| u.key.pid == 3004).unwrap();
    assert_eq!(firefox.utilization_percent, Some(5.0));
    let late = gpu.uses().iter().find(|u| u.key.pid == 3007).unwrap();
    assert_eq!(late.utilization_percent, None, "a client first seen in this pass has no window yet");

    // what the detector makes of it
    let l = rigwatch_signatures::load(&[], true);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let mut det = Detector::new(Arc::new(l.signatures), DetectorConfig::default(), "gpuhost");
    let findings = det.assess(Some(&first), &second, &obs, 1);
    let sev: HashMap<u32, Severity> = findings.iter().map(|f| (f.process.pid, f.severity)).collect();
    assert_eq!(sev.get(&3001), Some(&Severity::Likely), "GPU miner name + GPU use: {findings:#?}");
    assert_eq!(sev.get(&3003), Some(&Severity::Suspicious), "unscheduled GPU use alone");
    assert_eq!(sev.get(&3002), None, "a busy Slurm job is not a finding");
    assert_eq!(sev.get(&3005), None, "nor a job of a configured scheduler");
    assert_eq!(sev.get(&3004), None);
    let f = findings.iter().find(|f| f.process.pid == 3003).unwrap();
    let g = f.gpu.as_ref().unwrap();
    assert_eq!((g.gpu.as_str(), g.utilization_percent), ("amdgpu 0000:0c:00.0", 70.0));
    let j = serde_json::to_value(f).unwrap();
    assert_eq!(j["gpu"]["utilization_percent"], 70.0);
    assert_eq!(j["evidence"][0]["kind"], "gpu");
    assert_eq!(j["evidence"][0]["weight"], "suspicious");
    assert!(j["evidence"][0].get("scheduler").is_none());

    // the client goes away: no stale evidence
    std::fs::remove_file(t.root.join("3003/fd/9")).unwrap();
    let mut third = procs.sample().unwrap();
    third.at = second.at + Duration::from_secs(2);
    let mut obs = Vec::new();
    gpu.observe(&third, &mut obs).unwrap();
    assert!(!gpu_evidence(&obs, &third).contains_key(&3003));
}

#[cfg(unix)]
#[test]
fn unreadable_descriptors_are_counted() {
    // as root every directory is readable: nothing to check
    if nix::unistd::geteuid().is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = Tree {
        root: dir.path().to_path_buf(),
    };
    std::fs::write(t.root.join("devices"), "226 drm\n").unwrap();
    t.process(4001, "x", "/");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.root.join("4001/fd"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut gpu = GpuSensor::with_env(&t.root, GpuConfig::default(), Some("/nonexistent/libnvidia-ml.so.1".into()));
    let snap = ProcessSensor::new(&t.root).sample().unwrap();
    gpu.observe(&snap, &mut Vec::new()).unwrap();
    assert!(
        gpu.problems().iter().any(|n| n.contains("1 processes: permission denied")),
        "{:?}",
        gpu.problems()
    );
}
