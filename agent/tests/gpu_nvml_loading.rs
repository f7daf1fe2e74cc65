//! The GPU sensor loads NVML through its real loading code: from the
//! configured path (`SensorOptions::nvml_library`, via the sensor registry)
//! and from `RIGWATCH_NVML_LIBRARY` (via `GpuSensor::new`). The library is
//! the fake NVML in tests/gpu/fake_nvml.c, compiled here.
//!
//! One test in this binary: it sets an environment variable, which no other
//! thread may be reading meanwhile.

use rigwatch_agent::sensors::gpu::{GpuConfig, GpuSensor, NVML_LIBRARY_ENV};
use rigwatch_agent::sensors::{registry, Observation, ProcessSensor, Sensor, SensorOptions};
use rigwatch_signatures::EvidenceKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fake_nvml(dir: &Path, conf: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gpu/fake_nvml.c");
    let lib = dir.join("libnvidia-ml.so.1");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("cc (gcc) is needed to build the fake NVML");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("fake_nvml.conf"), conf).unwrap();
    lib
}

/// (utilisation, memory) of the GPU evidence about this test process.
fn my_gpu(obs: &[Observation]) -> Option<(f64, u64)> {
    obs.iter().find_map(|o| match o {
        Observation::Evidence(k, e) if k.pid == std::process::id() => match e.detail {
            EvidenceKind::Gpu {
                utilization_percent,
                memory_bytes,
                ..
            } => Some((utilization_percent, memory_bytes)),
            _ => None,
        },
        _ => None,
    })
}

fn two_passes(sensors: &mut [Box<dyn Sensor>]) -> Vec<Observation> {
    let mut procs = ProcessSensor::new(Path::new("/proc"));
    let mut obs = Vec::new();
    for pass in 0..2 {
        if pass == 1 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let snap = procs.sample().unwrap();
        for s in sensors.iter_mut() {
            s.observe(&snap, &mut obs).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    obs
}

#[test]
fn nvml_from_config_then_from_the_environment() {
    std::env::remove_var(NVML_LIBRARY_ENV);
    let me = std::process::id();

    // the configured path, through the registry as scan and the daemon build it
    let a = tempfile::tempdir().unwrap();
    let lib_a = fake_nvml(a.path(), &format!("procs={me}:95:4096\n"));
    let opts = SensorOptions {
        sockets: false,
        capture: false,
        nvml_library: Some(lib_a),
        ..Default::default()
    };
    let sig = Arc::new(rigwatch_signatures::load(&[], true).signatures);
    let mut sensors: Vec<Box<dyn Sensor>> = registry(sig.clone(), Path::new("/proc"), &opts)
        .into_iter()
        .filter(|s| s.name() == "gpu")
        .collect();
    assert_eq!(sensors.len(), 1, "the registry has the GPU sensor");
    assert_eq!(my_gpu(&two_passes(&mut sensors)), Some((95.0, 4 << 30)));
    let off = SensorOptions {
        gpu: false,
        ..opts.clone()
    };
    assert!(
        registry(sig, Path::new("/proc"), &off).iter().all(|s| s.name() != "gpu"),
        "gpu: false leaves it out"
    );

    // RIGWATCH_NVML_LIBRARY, through the sensor's own constructor; it wins over the configured path
    let b = tempfile::tempdir().unwrap();
    let lib_b = fake_nvml(b.path(), &format!("procs={me}:61:1024\n"));
    std::env::set_var(NVML_LIBRARY_ENV, &lib_b);
    let s = GpuSensor::new(
        Path::new("/proc"),
        GpuConfig {
            nvml_library: opts.nvml_library.clone(),
            ..Default::default()
        },
    );
    std::env::remove_var(NVML_LIBRARY_ENV);
    assert!(s.nvml_loaded(), "{:?}", s.nvml_problem());
    let mut sensors: Vec<Box<dyn Sensor>> = vec![Box::new(s)];
    assert_eq!(
        my_gpu(&two_passes(&mut sensors)),
        Some((61.0, 1 << 30)),
        "the environment's library was used"
    );
}
