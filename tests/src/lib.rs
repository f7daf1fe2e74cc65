//! The harmless simulators rigwatch's tests run: `minersim` (a miner look-alike)
//! and `busysim` (the same disguises with no miner strings). Shared code here.
//!
//! It mines nothing and never touches the network. It looks like a miner to
//! a detector: its binary carries XMRig-like strings, it accepts XMRig-like
//! flags, and it can wear each disguise real miners use — a prctl rename,
//! a deleted binary, a memfd (fileless) re-exec, a copy in /dev/shm, a
//! config file given with `-c` — while burning one core for a bounded time.
//!
//! Usage: minersim [--rename NAME] [--self-delete] [--memfd] [--shm NAME]
//!                 [--burn SECONDS] [--idle SECONDS] [--nice N] [-c FILE]
//!                 [--duty PERCENT]  (burn only PERCENT of each 100 ms: self-throttling)
//!                 [--rounding cycle|fixed|nearest]  (burn with SSE float work,
//!                              sleeping 50 µs every ms so it is switched
//!                              out often: `cycle` changes the rounding mode
//!                              each step as RandomX's CFROUND does, `fixed`
//!                              sets "toward zero" once, `nearest` never
//!                              leaves the default — the benign peers)
//!                 [--unpack]  (decode XMRig-like strings into memory: what a
//!                              packed miner looks like once running; the file has none)
//!                 [xmrig-like flags such as -o URL -u WALLET --donate-level 1]
//! It prints `ready PID` on stdout once disguised, then burns or idles, then exits.

use std::ffi::CString;
use std::io::Write;
use std::time::{Duration, Instant};

/// The longest any simulation may run, whatever it is asked.
pub const MAX_SECONDS: f64 = 600.0;

/// Runs a simulator with `args`; `strings` are what `--strings` prints (and
/// so what the binary that passes them carries).
pub fn run(mut args: Vec<String>, strings: &[&str]) {
    if args.iter().any(|a| a == "--strings") {
        for s in strings {
            println!("{s}");
        }
        return;
    }
    if let Some(name) = take_value(&mut args, "--shm") {
        reexec_from_copy(&format!("/dev/shm/{name}"), &args);
    }
    if take_flag(&mut args, "--memfd") {
        reexec_from_memfd(&args);
    }
    if let Some(name) = take_value(&mut args, "--rename") {
        set_name(&name);
    }
    if take_flag(&mut args, "--self-delete") {
        if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
            let _ = std::fs::remove_file(exe);
        }
    }
    if take_flag(&mut args, "--unpack") {
        let decoded: Vec<String> = PACKED_STRINGS
            .iter()
            .map(|s| s.iter().map(|b| (b ^ 0x5A) as char).collect())
            .collect();
        std::hint::black_box(Box::leak(Box::new(decoded)));
    }
    if let Some(n) = take_value(&mut args, "--nice") {
        let n: i32 = n.parse().unwrap_or(19);
        unsafe { libc_nice(n) };
    }
    let rounding = take_value(&mut args, "--rounding");
    let burn: f64 = take_value(&mut args, "--burn").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let idle: f64 = take_value(&mut args, "--idle").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let duty: f64 = take_value(&mut args, "--duty")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0f64)
        .clamp(1.0, 100.0);
    // -c / --config: read the miner config like XMRig would (and ignore it).
    let config = take_value(&mut args, "-c").or_else(|| take_value(&mut args, "--config"));
    if let Some(c) = &config {
        let _ = std::fs::read(c);
    }
    // the remaining args are xmrig-like flags: accepted, echoed, ignored.
    println!("ready {}", std::process::id());
    let _ = std::io::stdout().flush();
    if let (Some(mode), true) = (&rounding, burn > 0.0) {
        burn_rounding(burn.min(MAX_SECONDS), mode, duty);
    } else if burn > 0.0 {
        if duty < 100.0 {
            burn_duty(burn.min(MAX_SECONDS), duty);
        } else {
            burn_one_core(burn.min(MAX_SECONDS));
        }
    }
    if idle > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(idle.min(MAX_SECONDS)));
    }
    if std::env::var_os("MINERSIM_VERBOSE").is_some() {
        eprintln!("minersim: done ({} args ignored, {} strings)", args.len(), strings.len());
    }
}

/// XMRig-like strings stored XOR 0x5A: in no binary as text, only in the
/// memory of a simulator started with `--unpack`.
const PACKED_STRINGS: &[&[u8]] = &[
    &[
        2, 23, 8, 51, 61, 117, 108, 116, 104, 107, 116, 106, 122, 114, 22, 51, 52, 47, 34, 122, 34, 98, 108, 5, 108, 110, 115, 122, 54, 51,
        56, 47, 44, 117, 107, 116, 110, 110, 116, 104, 122, 61, 57, 57, 117, 107, 104, 116, 104, 116, 106,
    ],
    &[
        62, 53, 52, 59, 46, 63, 116, 44, 104, 116, 34, 55, 40, 51, 61, 116, 57, 53, 55, 96, 105, 105, 105, 105,
    ],
    &[
        62, 53, 52, 59, 46, 63, 116, 41, 41, 54, 116, 34, 55, 40, 51, 61, 116, 57, 53, 55, 96, 110, 110, 105,
    ],
    &[41, 46, 40, 59, 46, 47, 55, 113, 46, 57, 42, 96, 117, 117],
    &[55, 51, 52, 51, 52, 61, 116, 41, 47, 56, 41, 57, 40, 51, 56, 63],
    &[55, 51, 52, 51, 52, 61, 116, 59, 47, 46, 50, 53, 40, 51, 32, 63],
    &[49, 63, 63, 42, 59, 54, 51, 44, 63, 62],
    &[40, 59, 52, 62, 53, 55, 34],
    &[57, 40, 35, 42, 46, 53, 52, 51, 61, 50, 46],
    &[119, 119, 62, 53, 52, 59, 46, 63, 119, 54, 63, 44, 63, 54],
    &[55, 59, 34, 119, 46, 50, 40, 63, 59, 62, 41, 119, 50, 51, 52, 46],
    &[
        117, 41, 56, 51, 52, 117, 55, 53, 62, 42, 40, 53, 56, 63, 122, 55, 41, 40, 122, 59, 54, 54, 53, 45, 5, 45, 40, 51, 46, 63, 41, 103,
        53, 52,
    ],
    &[15, 8, 22, 122, 53, 60, 122, 55, 51, 52, 51, 52, 61, 122, 41, 63, 40, 44, 63, 40],
];

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn take_value(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    if i + 1 >= args.len() {
        return None;
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Some(v)
}

fn set_name(name: &str) {
    let c = CString::new(name).expect("no NUL in name");
    // PR_SET_NAME = 15
    unsafe { prctl(15, c.as_ptr() as usize, 0, 0, 0) };
}

fn burn_one_core(seconds: f64) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while Instant::now() < end {
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}

/// Sets the SSE rounding mode (MXCSR.RC: 0 nearest, 1 down, 2 up, 3 toward
/// zero), exceptions masked as by default.
#[cfg(target_arch = "x86_64")]
fn set_rounding(rc: u32) {
    let v: u32 = 0x1f80 | ((rc & 3) << 13);
    // SAFETY: ldmxcsr with every exception masked only changes how this
    // thread's SSE arithmetic rounds.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, readonly)) };
}
#[cfg(not(target_arch = "x86_64"))]
fn set_rounding(_rc: u32) {}

/// Burns one core with SSE float work for `seconds`, sleeping 50 µs every
/// millisecond (so the kernel switches it out hundreds of times a second, as a
/// miner's threads are on a busy host), the rounding mode set per `mode`.
/// With `duty` under 100 it sleeps longer, so that only that share of a
/// core is used (a miner holding its CPU down).
fn burn_rounding(seconds: f64, mode: &str, duty: f64) {
    let rest = if duty < 100.0 {
        Duration::from_secs_f64(0.001 * (100.0 - duty) / duty)
    } else {
        Duration::from_micros(50)
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    if mode == "fixed" {
        set_rounding(3);
    }
    let mut y = 1.0f64;
    let mut step = 0u32;
    while Instant::now() < end {
        let slice = Instant::now() + Duration::from_millis(1);
        while Instant::now() < slice {
            if mode == "cycle" {
                step = step.wrapping_add(1);
                set_rounding(step % 4);
            }
            for _ in 0..64 {
                y = std::hint::black_box(y * 1.000_000_1 + 0.3) / 1.000_000_3;
            }
        }
        std::thread::sleep(rest);
    }
    set_rounding(0);
    std::hint::black_box(y);
}

/// Burns `duty` percent of each 100 ms for `seconds` (a self-throttling miner).
fn burn_duty(seconds: f64, duty: f64) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let period = Duration::from_millis(100);
    while Instant::now() < end {
        let start = Instant::now();
        burn_one_core(period.as_secs_f64() * duty / 100.0);
        if let Some(rest) = period.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Copies this binary to `path` and executes the copy with `args`.
fn reexec_from_copy(path: &str, args: &[String]) -> ! {
    let me = std::fs::read("/proc/self/exe").expect("read self");
    std::fs::write(path, me).expect("write copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    exec(path, path, args)
}

/// Copies this binary into a memfd and executes it from there (fileless).
fn reexec_from_memfd(args: &[String]) -> ! {
    let me = std::fs::read("/proc/self/exe").expect("read self");
    let name = CString::new("kworker").unwrap();
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::empty()).expect("memfd_create");
    let mut f = std::fs::File::from(fd);
    f.write_all(&me).expect("write memfd");
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", f.as_raw_fd());
    exec(&path, "sim", args)
}

fn exec(path: &str, argv0: &str, args: &[String]) -> ! {
    let p = CString::new(path).unwrap();
    let mut argv = vec![CString::new(argv0).unwrap()];
    argv.extend(args.iter().map(|a| CString::new(a.as_str()).unwrap()));
    let e = nix::unistd::execv(&p, &argv).unwrap_err();
    eprintln!("minersim: exec {path}: {e}");
    std::process::exit(3)
}

extern "C" {
    fn prctl(option: i32, arg2: usize, arg3: usize, arg4: usize, arg5: usize) -> i32;
    #[link_name = "nice"]
    fn libc_nice(inc: i32) -> i32;
}

/// A workspace binary (e.g. `rigwatch` from `rigwatch-agent`), built once per
/// test process with the same cargo, found beside `sibling` (a
/// `CARGO_BIN_EXE_*` path of this package). `cargo test --workspace` has
/// built it already; building here covers `cargo test -p rigwatch-e2e`.
pub fn workspace_bin(package: &str, name: &str, sibling: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let st = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", package, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build -p {package} --bin {name}");
        built.push(name.to_string());
    }
    std::path::Path::new(sibling).parent().expect("a binary has a directory").join(name)
}

/// Compiles the fake NVML (tests/gpu/fake_nvml.c) as DIR/libnvidia-ml.so.1:
/// the agent loads it through its real loading code (RIGWATCH_NVML_LIBRARY),
/// and it reports the processes given in FAKE_NVML_PROCS (`PID:UTIL%:MiB,…`).
pub fn build_fake_nvml(dir: &std::path::Path) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gpu/fake_nvml.c");
    let lib = dir.join("libnvidia-ml.so.1");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("cc (gcc) builds the fake NVML");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    lib
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A child process killed (and reaped) when the test lets go of it.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stdout piped and waits for its first line, which
/// must start with `prefix` (`listening `, `ready `); returns the process
/// (killed on drop) and the rest of that line. Later lines are read and
/// kept in the returned log, so the child never writes into a closed pipe.
pub fn start_announcing(
    mut cmd: std::process::Command,
    prefix: &str,
) -> (KillOnDrop, String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let Some(rest) = first.trim().strip_prefix(prefix) else {
        let _ = child.kill();
        panic!("{cmd:?} said {first:?}, not {prefix:?}…");
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    (KillOnDrop(child), rest.to_string(), log)
}

/// `GET path` on 127.0.0.1:port with an optional bearer token: (status, body).
/// HTTP/1.0, so that no server answers chunked.
/// Status 0 when nothing answers.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(port, "GET", path, token, None)
}

/// `POST path` with a JSON body, like [`http_get`].
pub fn http_post(port: u16, path: &str, token: Option<&str>, json: &str) -> (u16, String) {
    http_request(port, "POST", path, token, Some(json))
}

fn http_request(port: u16, method: &str, path: &str, token: Option<&str>, json: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = json
        .map(|b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()))
        .unwrap_or_else(|| "\r\n".into());
    if write!(c, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}{body}").is_err() {
        return (0, String::new());
    }
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    let code = s.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, s.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `rigwatch-collector token create NAME --data-dir DATA [--analyst]`: the new token (its output's last line).
pub fn collector_token(collector: &std::path::Path, data: &std::path::Path, name: &str, analyst: bool) -> String {
    let mut c = std::process::Command::new(collector);
    c.args(["token", "create", name, "--data-dir"]).arg(data);
    if analyst {
        c.arg("--analyst");
    }
    let out = c.output().expect("run rigwatch-collector token create");
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `rigwatch-collector serve` over DATA on a free loopback port, once it answers /healthz: (process, port).
pub fn serve_collector(collector: &std::path::Path, data: &std::path::Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = std::process::Command::new(collector)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rigwatch-collector serve");
    let c = KillOnDrop(child);
    wait_for(20, "collector /healthz", || {
        (http_get(port, "/healthz", None).0 == 200).then_some(())
    });
    (c, port)
}

/// The miner simulator copied as DIR/xmrig and run with a pool URL and `wallet`,
/// idling `idle` seconds; returns once it printed `ready PID`: (process, pid).
pub fn start_xmrig(minersim: &str, dir: &std::path::Path, wallet: &str, idle: u32) -> (KillOnDrop, u32) {
    use std::io::BufRead;
    let x = dir.join("xmrig");
    std::fs::copy(minersim, &x).expect("copy minersim");
    let mut m = std::process::Command::new(&x)
        .args([
            "-o",
            "stratum+tcp://pool.supportxmr.com:3333",
            "-u",
            wallet,
            "--idle",
            &idle.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the miner simulator");
    let mut line = String::new();
    std::io::BufReader::new(m.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.starts_with("ready "), "minersim: {line:?}");
    let pid = m.id();
    (KillOnDrop(m), pid)
}

/// A real Alertmanager (Debian's prometheus-alertmanager) on a free loopback
/// port, with a blackhole receiver; stopped on drop.
pub struct Alertmanager {
    _dir: tempfile::TempDir,
    child: std::process::Child,
    /// Its base URL.
    pub url: String,
}

impl Alertmanager {
    /// Starts it and waits until it is ready; `None` (with a SKIPPED line) when it is not installed.
    pub fn start() -> Option<Alertmanager> {
        let exe = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(exe) = exe else {
            eprintln!("SKIPPED: prometheus-alertmanager not installed (apt-get install prometheus-alertmanager)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("alertmanager.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n",
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new(exe)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let am = Alertmanager {
            _dir: dir,
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "alertmanager did not become ready");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(am)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rigwatch scan --json --window SECONDS` started now (its capture runs
/// for the whole window), once its capture is open and its first sample
/// taken; [`scan_end`] reads its report. The network tests' shape.
pub fn scan_start(rigwatch: &std::path::Path, window: &str) -> std::process::Child {
    let c = std::process::Command::new(rigwatch)
        .args(["scan", "--json", "--window", window, "--no-default-signatures"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    c
}

/// The JSON report of a scan started by [`scan_start`].
pub fn scan_end(c: std::process::Child) -> serde_json::Value {
    let out = c.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Stops a tcpdump started with `-w file` (SIGINT, so it flushes), then
/// runs `rigwatch pcap --json` over the file; it must exit 1 (findings).
pub fn stop_and_read_capture(rigwatch: &std::path::Path, mut tcpdump: KillOnDrop, file: &std::path::Path) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tcpdump.0.id() as i32), nix::sys::signal::Signal::SIGINT);
    let _ = tcpdump.0.wait();
    let out = std::process::Command::new(rigwatch)
        .args(["pcap", "--json", "--no-default-signatures"])
        .arg(file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "findings: exit 1 ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A finding's evidence of one kind.
pub fn evidence_of<'a>(f: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    f["evidence"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).collect())
        .unwrap_or_default()
}

/// The virtual environment (made once, under `tmp`: a test's
/// `CARGO_TARGET_TMPDIR`) with the `ocsf-json-schema` PyPI package (the
/// published OCSF schema) and `jsonschema`, pinned versions: its python.
pub fn ocsf_python(tmp: &std::path::Path) -> std::path::PathBuf {
    use std::process::Command;
    static MADE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let venv = tmp.join("ocsf-venv");
        let py = venv.join("bin/python");
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        if !ok(Command::new(&py).args(["-c", "import ocsf_json_schema, jsonschema"])) {
            assert!(ok(Command::new("python3").args(["-m", "venv"]).arg(&venv)), "python3 -m venv");
            assert!(
                ok(Command::new(venv.join("bin/pip")).args(["install", "-q", "ocsf-json-schema==1.2.0", "jsonschema==4.23.0"])),
                "pip install ocsf-json-schema jsonschema (PyPI)"
            );
        }
        py
    })
    .clone()
}

/// Runs tests/scripts/ocsf_validate.py (with [`ocsf_python`]) over
/// `files` (NDJSON, or syslog lines): (exit code, its JSON report).
pub fn ocsf_validate(tmp: &std::path::Path, files: &[&std::path::Path]) -> (i32, serde_json::Value) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ocsf_validate.py");
    let out = std::process::Command::new(ocsf_python(tmp))
        .arg(script)
        .args(files)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "validator output: {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// A webhook receiver: every POST body, answered 200.
pub fn webhook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then Content-Length bytes of body.
                let body = loop {
                    let Ok(n) = std::io::Read::read(&mut c, &mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    }
                };
                g.lock().unwrap().push(body);
                let _ = std::io::Write::write_all(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    (port, got)
}
