//! The process sensor: walks the proc root and samples every process.
//!
//! A process is known by (pid, start time), so a reused pid is a new
//! process. What does not change for a process's life (cmdline, exe, cwd,
//! cgroup, user) is read once; a known process costs one read of `stat`.
//! `cmdline` is never read from a process in state D (uninterruptible): that
//! read can block on the target's memory lock.
//!
//! The hot path: the `stat` file of each known process stays open and is
//! re-read with `pread` (no path lookup, no open/close), and only the fields
//! needed are parsed. An open `stat` file is bound to its process: once the
//! process exits the read fails, so a reused pid is never mistaken for the
//! old process. The parser is checked against procfs's on this host's /proc.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const PF_KTHREAD: u32 = 0x0020_0000;

/// A process's identity: pid and start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcKey {
    /// The key of the process `pid` that started `start_ns` nanoseconds
    /// after boot (as the kernel's `start_boottime` counts, which eBPF
    /// reads), in the clock ticks `/proc/PID/stat` gives.
    pub fn from_boot_ns(pid: u32, start_ns: u64, ticks_per_second: u64) -> ProcKey {
        ProcKey {
            pid,
            start_time: start_ns / (1_000_000_000 / ticks_per_second.clamp(1, 1_000_000_000)),
        }
    }
}

/// What does not change over a process's life, read once.
#[derive(Debug, Clone, Default)]
pub struct ProcStatic {
    /// The comm this was read for: a changed comm means exec (or a rename),
    /// and then the fixed part is read again.
    pub comm: String,
    /// argv; empty for kernel threads and unreadable ones.
    pub argv: Vec<String>,
    /// Whether argv could be read (false for D-state or permission problems).
    pub argv_read: bool,
    /// The exe link target (may end in " (deleted)" or be "/memfd:…").
    pub exe: Option<String>,
    /// The cwd link target.
    pub cwd: Option<String>,
    /// Real uid.
    pub uid: u32,
    /// The user name for uid (or the number).
    pub user: String,
    /// The unified (or first) cgroup path.
    pub cgroup: String,
    /// Problems reading this process (e.g. "exe: permission denied").
    pub problems: Vec<String>,
}

/// One process at one moment.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Identity.
    pub key: ProcKey,
    /// Parent pid.
    pub ppid: u32,
    /// The kernel's short name (15 bytes), settable by the process itself.
    pub comm: String,
    /// State letter (R, S, D, Z, T…).
    pub state: char,
    /// Number of threads.
    pub threads: i64,
    /// Nice value.
    pub nice: i64,
    /// Scheduling policy (0 normal, 3 batch, 5 idle…).
    pub policy: u32,
    /// User + system CPU time in clock ticks.
    pub cpu_ticks: u64,
    /// User + system CPU time of its reaped children, clock ticks (their CPU
    /// counts toward the cgroup's account even though they are gone).
    pub child_ticks: u64,
    /// A kernel thread (PF_KTHREAD).
    pub kernel_thread: bool,
    /// What was read once.
    pub fixed: Arc<ProcStatic>,
}

impl Proc {
    /// A process known from what does not change (a test's, or one built
    /// from an exec event): sleeping, one thread, no CPU used yet.
    pub fn new(key: ProcKey, ppid: u32, fixed: Arc<ProcStatic>) -> Proc {
        Proc {
            key,
            ppid,
            comm: fixed.comm.clone(),
            state: 'S',
            threads: 1,
            nice: 0,
            policy: 0,
            cpu_ticks: 0,
            child_ticks: 0,
            kernel_thread: false,
            fixed,
        }
    }

    /// The command line, argv joined by spaces.
    pub fn cmdline(&self) -> String {
        self.fixed.argv.join(" ")
    }
}

/// All processes at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// Processes by identity.
    pub procs: HashMap<ProcKey, Proc>,
    /// Clock ticks per second (for CPU).
    pub ticks_per_second: u64,
    /// Only some processes (an exec-triggered pass): sensors keep their
    /// caches for processes not in it, and nothing is resolved.
    pub partial: bool,
}

impl Snapshot {
    /// Cores used by a process between an earlier snapshot and this one.
    pub fn cores_since(&self, earlier: &Snapshot, key: &ProcKey) -> Option<f64> {
        let now = self.procs.get(key)?;
        let then = earlier.procs.get(key)?;
        let dt = self.at.checked_duration_since(earlier.at)?.as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let ticks = now.cpu_ticks.saturating_sub(then.cpu_ticks) as f64;
        Some(ticks / self.ticks_per_second as f64 / dt)
    }
}

/// The fields of `/proc/PID/stat` the sensor uses.
#[derive(Debug, Clone, PartialEq)]
pub struct StatFields {
    /// comm (lossy UTF-8).
    pub comm: String,
    /// State letter.
    pub state: char,
    /// Parent pid.
    pub ppid: i64,
    /// Kernel flags (PF_*).
    pub flags: u64,
    /// User time, ticks.
    pub utime: u64,
    /// System time, ticks.
    pub stime: u64,
    /// User + system time of reaped children, ticks.
    pub child_ticks: u64,
    /// Nice.
    pub nice: i64,
    /// Threads.
    pub threads: i64,
    /// Start time, ticks after boot.
    pub starttime: u64,
    /// Scheduling policy.
    pub policy: u32,
}

/// Parses the fields rigwatch needs from a `stat` line. comm may hold any
/// byte but NUL, spaces and parentheses included: it ends at the last `)`.
pub fn parse_stat(buf: &[u8]) -> Option<StatFields> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = String::from_utf8_lossy(&buf[open + 1..close]).into_owned();
    let rest = buf.get(close + 2..)?;
    let mut f = rest.split(|&b| b == b' ' || b == b'\n');
    let mut nth = |n: usize| -> Option<&[u8]> { f.nth(n) };
    let num = |b: &[u8]| -> Option<i64> { std::str::from_utf8(b).ok()?.parse().ok() };
    let state = *nth(0)?.first()? as char; // field 3
    let ppid = num(nth(0)?)?; // 4
    let flags = num(nth(4)?)? as u64; // 9
    let utime = num(nth(4)?)? as u64; // 14
    let stime = num(nth(0)?)? as u64; // 15
    let cutime = num(nth(0)?)?.max(0) as u64; // 16
    let cstime = num(nth(0)?)?.max(0) as u64; // 17
    let nice = num(nth(1)?)?; // 19
    let threads = num(nth(0)?)?; // 20
    let starttime = num(nth(1)?)? as u64; // 22
    let policy = nth(18).and_then(num).unwrap_or(0) as u32; // 41
    Some(StatFields {
        comm,
        state,
        ppid,
        flags,
        utime,
        stime,
        child_ticks: cutime + cstime,
        nice,
        threads,
        starttime,
        policy,
    })
}

struct Entry {
    key: ProcKey,
    stat: Option<std::fs::File>,
}

/// The process sensor.
pub struct ProcessSensor {
    root: PathBuf,
    known: HashMap<ProcKey, Arc<ProcStatic>>,
    open: HashMap<u32, Entry>,
    max_open: usize,
    users: HashMap<u32, String>,
    buf: Vec<u8>,
    path: PathBuf,
    ticks: u64,
}

impl ProcessSensor {
    /// A sensor over `root` (normally /proc; a fixture tree in tests).
    pub fn new(root: &Path) -> Self {
        ProcessSensor {
            root: root.to_path_buf(),
            known: HashMap::new(),
            open: HashMap::new(),
            max_open: open_file_budget(),
            users: HashMap::new(),
            buf: vec![0; 1024],
            path: PathBuf::new(),
            ticks: procfs::ticks_per_second().max(1),
        }
    }

    /// The proc root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many processes have their fixed part cached.
    pub fn cached(&self) -> usize {
        self.known.len()
    }

    /// Takes a snapshot of every process. Processes that vanish while being
    /// read are skipped. Fails only when the root itself cannot be listed.
    pub fn sample(&mut self) -> std::io::Result<Snapshot> {
        let mut procs = HashMap::with_capacity(self.known.len() + 16);
        // raw getdents64, not libc readdir: a preload hider cannot filter it
        for pid in crate::host::pids::list_pids(&self.root)? {
            if let Some(p) = self.read_one(pid) {
                procs.insert(p.key, p);
            }
        }
        self.known.retain(|k, _| procs.contains_key(k));
        self.open.retain(|pid, e| procs.contains_key(&e.key) && e.key.pid == *pid);
        Ok(Snapshot {
            at: Instant::now(),
            procs,
            ticks_per_second: self.ticks,
            partial: false,
        })
    }

    /// A partial snapshot of just these pids (the ones exec events named).
    pub fn sample_pids(&mut self, pids: &[u32]) -> Snapshot {
        let procs = pids.iter().filter_map(|&pid| self.read_one(pid)).map(|p| (p.key, p)).collect();
        Snapshot {
            at: Instant::now(),
            procs,
            ticks_per_second: self.ticks,
            partial: true,
        }
    }

    /// Reads one process by pid (used by the listing and by exec events).
    pub fn read_one(&mut self, pid: u32) -> Option<Proc> {
        let held = self.open.get(&pid).and_then(|e| {
            let f = e.stat.as_ref()?;
            let n = f.read_at(&mut self.buf, 0).ok().filter(|&n| n > 0 && n < self.buf.len())?;
            parse_stat(&self.buf[..n]).filter(|s| s.starttime == e.key.start_time)
        });
        let stat = match held {
            Some(s) => s,
            None => {
                self.open.remove(&pid);
                self.path.clear();
                self.path.push(&self.root);
                self.path.push(itoa(pid));
                self.path.push("stat");
                let mut f = std::fs::File::open(&self.path).ok()?;
                let mut v = Vec::with_capacity(512);
                (&mut f).take(64 * 1024).read_to_end(&mut v).ok()?;
                let s = parse_stat(&v)?;
                let keep = self.open.len() < self.max_open;
                self.open.insert(
                    pid,
                    Entry {
                        key: ProcKey {
                            pid,
                            start_time: s.starttime,
                        },
                        stat: keep.then_some(f),
                    },
                );
                s
            }
        };
        let key = ProcKey {
            pid,
            start_time: stat.starttime,
        };
        let kernel_thread = stat.flags & PF_KTHREAD as u64 != 0;
        let fixed = match self.known.get(&key) {
            Some(f) if (f.argv_read || kernel_thread || stat.state == 'D') && f.comm == stat.comm => f.clone(),
            _ => {
                let f = Arc::new(self.read_fixed(pid, &stat.comm, stat.state, kernel_thread));
                self.known.insert(key, f.clone());
                f
            }
        };
        Some(Proc {
            key,
            ppid: stat.ppid.max(0) as u32,
            comm: stat.comm,
            state: stat.state,
            threads: stat.threads,
            nice: stat.nice,
            policy: stat.policy,
            cpu_ticks: stat.utime + stat.stime,
            child_ticks: stat.child_ticks,
            kernel_thread,
            fixed,
        })
    }

    fn read_fixed(&mut self, pid: u32, comm: &str, state: char, kernel_thread: bool) -> ProcStatic {
        let dir = self.root.join(itoa(pid));
        let mut f = ProcStatic {
            comm: comm.to_string(),
            ..Default::default()
        };
        if kernel_thread {
            f.argv_read = true;
            f.user = "root".into();
            return f;
        }
        if state != 'D' {
            match read_capped(&dir.join("cmdline"), 128 * 1024) {
                Ok(bytes) => {
                    f.argv = bytes
                        .split(|&b| b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    f.argv_read = true;
                }
                Err(e) => f.problems.push(format!("cmdline: {}", short_err(&e))),
            }
        }
        match std::fs::read_link(dir.join("exe")) {
            Ok(p) => f.exe = Some(p.to_string_lossy().into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => f.problems.push(format!("exe: {}", short_err(&e))),
        }
        f.cwd = std::fs::read_link(dir.join("cwd")).ok().map(|p| p.to_string_lossy().into_owned());
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            f.uid = parse_status_uid(&status).unwrap_or(0);
        }
        f.user = self.user_name(f.uid);
        if let Ok(cg) = std::fs::read_to_string(dir.join("cgroup")) {
            f.cgroup = unified_cgroup(&cg);
        }
        f
    }

    fn user_name(&mut self, uid: u32) -> String {
        self.users.entry(uid).or_insert_with(|| user_name(uid)).clone()
    }
}

/// The user name of `uid` (the number when it has none).
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// How many `stat` files may stay open: the soft open-file limit is raised
/// to the hard one, and a quarter of it (at most 65,536) goes to the sensor.
fn open_file_budget() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let target = hard.min(1 << 20);
    let soft = if soft < target && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    };
    ((soft / 4) as usize).min(65_536)
}

fn itoa(n: u32) -> String {
    n.to_string()
}

fn short_err(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::NotFound => "gone".into(),
        _ => e.to_string(),
    }
}

/// Reads at most `cap` bytes of a file.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(path)?.take(cap).read_to_end(&mut v)?;
    Ok(v)
}

/// The real uid from /proc/PID/status text.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
}

/// The cgroup v2 path (hierarchy 0), else the first v1 path, from /proc/PID/cgroup text.
pub fn unified_cgroup(text: &str) -> String {
    let mut first = None;
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (h, _c, p) = (parts.next(), parts.next(), parts.next());
        if let (Some(h), Some(p)) = (h, p) {
            if h == "0" {
                return p.to_string();
            }
            if first.is_none() && p != "/" {
                first = Some(p.to_string());
            }
        }
    }
    first.unwrap_or_default()
}

/// Container id, Kubernetes pod uid and systemd unit from a cgroup path.
pub fn cgroup_identity(cgroup: &str) -> (Option<String>, Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    let mut unit = None;
    for comp in cgroup.split('/') {
        let c = comp.trim_end_matches(".scope").trim_end_matches(".slice");
        // docker-<64hex>.scope, cri-containerd-<64hex>.scope, crio-<64hex>.scope, or a bare <64hex>
        let tail = c.rsplit('-').next().unwrap_or(c);
        if tail.len() == 64 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
            container = Some(tail.to_string());
        }
        if let Some(i) = c.rfind("pod") {
            let id = c[i + 3..].replace('_', "-");
            if id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                pod = Some(id);
            }
        }
        if comp.ends_with(".service") {
            unit = Some(comp.to_string());
        }
    }
    (container, pod, unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_preferred() {
        let t = "12:cpu,cpuacct:/user.slice\n0::/system.slice/cron.service\n";
        assert_eq!(unified_cgroup(t), "/system.slice/cron.service");
        assert_eq!(cgroup_identity("/system.slice/cron.service").2.as_deref(), Some("cron.service"));
    }
    #[test]
    fn kubernetes_and_docker_ids() {
        let k = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_1111_2222_3333_444455556666.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        let (c, p, _) = cgroup_identity(k);
        assert_eq!(
            c.as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(p.as_deref(), Some("1b2c3d4e-1111-2222-3333-444455556666"));
        let d = "/docker/fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        assert!(cgroup_identity(d).0.is_some());
        assert_eq!(cgroup_identity("/user.slice/user-1000.slice/session-3.scope"), (None, None, None));
    }
    #[test]
    fn stat_parser_agrees_with_procfs_on_this_host() {
        use procfs::FromRead;
        let mut n = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(buf) = std::fs::read(e.path().join("stat")) else { continue };
            let ours = parse_stat(&buf).expect("parses");
            let theirs = procfs::process::Stat::from_read(&buf[..]).unwrap();
            assert_eq!(ours.comm, theirs.comm);
            assert_eq!(ours.state, theirs.state);
            assert_eq!(ours.ppid, theirs.ppid as i64);
            assert_eq!(ours.flags, theirs.flags as u64);
            assert_eq!((ours.utime, ours.stime), (theirs.utime, theirs.stime));
            assert_eq!((ours.nice, ours.threads), (theirs.nice, theirs.num_threads));
            assert_eq!(ours.starttime, theirs.starttime);
            assert_eq!(Some(ours.policy), theirs.policy);
            n += 1;
        }
        assert!(n > 3);
    }

    #[test]
    fn stat_parser_takes_hostile_comms_and_rejects_garbage() {
        let line = b"42 (a) (b) x\n ) S 1 42 42 0 -1 4194560 1 0 0 0 7 3 0 0 20 5 2 0 999 1 1 1 1 1 1 1 1 1 1 1 1 1 17 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a) (b) x\n ");
        assert_eq!(
            (s.state, s.ppid, s.utime, s.stime, s.nice, s.threads, s.starttime),
            ('S', 1, 7, 3, 5, 2, 999)
        );
        for bad in [&b""[..], b"42 (x", b"42 x) S", b"42 (x) S 1"] {
            assert!(parse_stat(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn uid_from_status() {
        assert_eq!(parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"), Some(1000));
    }
}
