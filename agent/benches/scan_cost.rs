//! Scan cost per process with many idle processes: the first scan (every
//! process read in full, every executable hashed) and the steady state
//! (known processes: one read of `stat` each), in CPU time of this process.
//!
//! Run: `cargo bench -p rigwatch-agent --bench scan_cost` (as root for 10,000
//! processes; set RIGWATCH_BENCH_COUNTS=1000,10000 to choose).

use rigwatch_agent::daemon::config::{Config, SensorsConfig};
use rigwatch_agent::engine::{Engine, Pass};
use rigwatch_agent::sensors::ProcessSensor;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

fn cpu_seconds() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let counts: Vec<usize> = std::env::var("RIGWATCH_BENCH_COUNTS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let sig = Arc::new(rigwatch_signatures::load(&[], true).signatures);
    println!("| idle processes | processes seen | first scan: CPU per process | steady state: CPU per process (whole pipeline) | process sensor alone | floor: list /proc + pread each stat | steady state: wall per pass | peak RSS of the bench process |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &counts {
        let mut kids: Vec<Child> = Vec::with_capacity(n);
        for _ in 0..n {
            match Command::new("sleep").arg("600").stdin(Stdio::null()).stdout(Stdio::null()).spawn() {
                Ok(c) => kids.push(c),
                Err(e) => {
                    eprintln!("could only start {} idle processes: {e}", kids.len());
                    break;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        // the per-process pipeline this table measures, through the engine every
        // command uses: the binary and miner-config sensors (the others look at
        // the host, the network or the GPU, not at each process)
        let mut cfg = Config {
            sensors: SensorsConfig {
                binary: true,
                minerconfig: true,
                ..SensorsConfig::none()
            },
            ..Config::default()
        };
        cfg.scan.binary_bytes_per_pass = u64::MAX;
        let mut engine = Engine::new(sig.clone(), "bench", &cfg.engine(false));
        // first scan: full read of every process, every executable, every config candidate
        let c0 = cpu_seconds();
        let seen = engine.pass(Pass::Full, 0).unwrap().processes;
        let first_cpu = cpu_seconds() - c0;
        // steady state: the same processes again, a number of passes
        let passes = 10;
        let c1 = cpu_seconds();
        let w1 = Instant::now();
        for _ in 0..passes {
            std::hint::black_box(engine.pass(Pass::Full, 0).unwrap());
        }
        let steady_cpu = (cpu_seconds() - c1) / passes as f64;
        let steady_wall = w1.elapsed().as_secs_f64() / passes as f64;
        let mut procs = ProcessSensor::new(Path::new("/proc"));
        procs.sample().unwrap();
        let c2 = cpu_seconds();
        for _ in 0..passes {
            std::hint::black_box(procs.sample().unwrap());
        }
        let sample_cpu = (cpu_seconds() - c2) / passes as f64;
        // the floor: list /proc and pread every held stat file, no parsing at all
        use std::os::unix::fs::FileExt;
        let files: Vec<std::fs::File> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|e| std::fs::File::open(e.path().join("stat")).ok())
            .collect();
        let mut buf = [0u8; 1024];
        let c3 = cpu_seconds();
        for _ in 0..passes {
            let listed = std::fs::read_dir("/proc").unwrap().count();
            std::hint::black_box(listed);
            for f in &files {
                std::hint::black_box(f.read_at(&mut buf, 0).ok());
            }
        }
        let floor_cpu = (cpu_seconds() - c3) / passes as f64;
        drop(files);
        println!(
            "| {n} | {seen} | {:.1} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.1} ms | {:.1} MiB |",
            first_cpu / seen as f64 * 1e6,
            steady_cpu / seen as f64 * 1e6,
            sample_cpu / seen as f64 * 1e6,
            floor_cpu / seen as f64 * 1e6,
            steady_wall * 1e3,
            vm_hwm_kib() as f64 / 1024.0
        );
        for k in kids.iter_mut() {
            let _ = k.kill();
        }
        for k in kids.iter_mut() {
            let _ = k.wait();
        }
    }
}
