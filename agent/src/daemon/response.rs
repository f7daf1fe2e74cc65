//! Response (off by default): stop or kill a miner, and quarantine its
//! binary. The miner is the adversary, so:
//!
//! - The process is pinned before anything is done to it: /proc/PID is
//!   opened and its start time checked, a pidfd is opened, and the start
//!   time is read again through the open /proc/PID (which answers only while
//!   that very process exists). The signals go through the pidfd, so a pid
//!   reused in between is never hit. Pid 1, kernel threads and rigwatch
//!   itself are never touched; nor is anything when the proc root is another
//!   pid namespace's; allowlisted processes never become findings at all.
//! - Order: SIGSTOP, then quarantine, then SIGKILL when the action is kill.
//! - Quarantine streams the binary (a fixed 64 KiB buffer) from
//!   /proc/PID/exe of the pinned process, never from a path the miner
//!   controls, hashing as it copies; a binary over `quarantine_max_bytes` or
//!   a directory over `quarantine_quota_bytes` is skipped with a reason (the
//!   process is still stopped or killed). Files are named by their SHA-256
//!   (one copy each), written under a temporary name and renamed, 0400 in a
//!   0700 directory. The copy runs on a worker with a deadline, so a binary
//!   whose reads hang (a FUSE file) cannot stall the agent.
//! - Findings whose only weighty evidence is network evidence are not acted
//!   on unless `act_on_network_only` says so; findings without a process
//!   (flow and host findings) never are.
//!
//! Dry run only logs.

use super::config::{Action, ResponseConfig};
use rigwatch_signatures::{Evidence, EvidenceKind, Finding, Severity, Weight};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The copy buffer: memory use of a quarantine, whatever the binary's size.
const BUF: usize = 64 * 1024;
/// How long the agent waits on a quarantine copy.
const QUARANTINE_DEADLINE: Duration = Duration::from_secs(60);
/// Finding ids remembered as acted on (oldest forgotten first).
const MAX_REMEMBERED: usize = 65_536;
/// Quarantine directory entries looked at when summing its use.
const MAX_DIR_ENTRIES: usize = 100_000;
/// Temporary copies start with this.
const PARTIAL: &str = ".partial-";

/// What was done (or would have been, in dry run).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// "stop" or "kill".
    pub action: &'static str,
    /// The pid.
    pub pid: u32,
    /// Only logged.
    pub dry_run: bool,
    /// Where the binary was quarantined.
    pub quarantined: Option<String>,
    /// Why nothing was done, when nothing was.
    pub skipped: Option<String>,
    /// Why the binary was not quarantined, when quarantine is on (the
    /// process was still stopped or killed).
    pub quarantine_skipped: Option<String>,
}

/// A bounded set of finding ids.
#[derive(Default)]
struct Remembered {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Remembered {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > MAX_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Acts on findings at most once each.
pub struct Responder {
    cfg: ResponseConfig,
    proc_root: PathBuf,
    done: Remembered,
    /// Network-only findings already logged as not acted on.
    held: Remembered,
    /// Binaries already quarantined, by file identity: not read again.
    known: Arc<Mutex<HashMap<FileId, String>>>,
    /// A quarantine copy that missed its deadline and still runs.
    stuck: Option<std::thread::JoinHandle<()>>,
}

/// Evidence seen on the network, which a process can be framed with.
fn is_network(e: &Evidence) -> bool {
    match &e.detail {
        EvidenceKind::Stratum { .. } | EvidenceKind::PoolConnection { .. } | EvidenceKind::Dns { .. } | EvidenceKind::TlsSni { .. } => true,
        EvidenceKind::Wallet { source, .. } => source.starts_with("stratum"),
        _ => false,
    }
}

/// True when nothing but network evidence accuses the process: every piece
/// of evidence that carries weight was seen on the network. CPU or GPU use
/// (context, weight info) says a process is busy, not that it mines, so a
/// busy service tricked into a pool lookup is still network-only.
pub fn network_only(f: &Finding) -> bool {
    !f.evidence.iter().any(|e| e.weight > Weight::Info && !is_network(e))
}

fn errno(e: nix::errno::Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// A process held by a pidfd, and its /proc/PID directory.
struct Pinned {
    pidfd: OwnedFd,
    dir: File,
}

fn read_stat(dir: &File) -> Option<crate::host::process::StatFields> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        "stat",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let mut f = unsafe { File::from_raw_fd(fd) };
    let mut buf = Vec::with_capacity(1024);
    Read::by_ref(&mut f).take(64 * 1024).read_to_end(&mut buf).ok()?;
    crate::host::process::parse_stat(&buf)
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, String> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: libc::c_int) -> std::io::Result<()> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the process with `pid` that started at `start_time`, or says why not.
fn pin(proc_root: &Path, pid: u32, start_time: u64) -> Result<Pinned, String> {
    if pid <= 1 || pid == std::process::id() {
        return Err("protected process".into());
    }
    // pids under the proc root must be ours: a pidfd is opened in our namespace
    let self_pid = std::fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|l| l.to_str()?.parse::<u32>().ok());
    if self_pid != Some(std::process::id()) {
        return Err("the proc root is another pid namespace's: its pids cannot be signalled".into());
    }
    let dir = nix::fcntl::open(
        &proc_root.join(pid.to_string()),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|_| "process gone".to_string())?;
    let dir = unsafe { File::from_raw_fd(dir) };
    let check = |dir: &File| -> Result<(), String> {
        match read_stat(dir) {
            None => Err("process gone".into()),
            Some(s) if s.starttime != start_time => Err("pid reused by another process".into()),
            Some(s) if s.flags & 0x0020_0000 != 0 => Err("kernel thread".into()),
            Some(_) => Ok(()),
        }
    };
    check(&dir)?;
    let pidfd = pidfd_open(pid).map_err(|e| format!("process gone ({e})"))?;
    // /proc/PID, once open, answers only while its process lives: the same
    // start time through it now means the pid never changed hands between the
    // two checks, so the pidfd holds the process the finding is about
    check(&dir)?;
    Ok(Pinned { pidfd, dir })
}

impl Responder {
    /// A responder with a policy.
    pub fn new(cfg: ResponseConfig, proc_root: &Path) -> Self {
        Responder {
            cfg,
            proc_root: proc_root.to_path_buf(),
            done: Remembered::default(),
            held: Remembered::default(),
            known: Arc::default(),
            stuck: None,
        }
    }

    fn action_for(&self, s: Severity) -> Action {
        match s {
            Severity::Confirmed => self.cfg.confirmed,
            Severity::Likely => self.cfg.likely,
            Severity::Suspicious => self.cfg.suspicious,
        }
    }

    /// Acts on a finding if the policy says so. Returns what happened.
    pub fn act(&mut self, f: &Finding) -> Option<Outcome> {
        let action = self.action_for(f.severity);
        let pid = f.pid?;
        if action == Action::None || f.subject.is_some() || self.done.contains(&f.id) {
            return None;
        }
        let name = if action == Action::Kill { "kill" } else { "stop" };
        let mut out = Outcome {
            action: name,
            pid,
            dry_run: self.cfg.dry_run,
            quarantined: None,
            skipped: None,
            quarantine_skipped: None,
        };
        if !self.cfg.act_on_network_only && network_only(f) {
            // not done: more evidence may come; said once
            if self.held.contains(&f.id) {
                return None;
            }
            self.held.insert(&f.id);
            out.skipped = Some("only network evidence (act_on_network_only is off)".into());
            return Some(out);
        }
        self.done.insert(&f.id);
        let p = match pin(&self.proc_root, pid, f.process.start_time) {
            Ok(p) => p,
            Err(why) => {
                out.skipped = Some(why);
                return Some(out);
            }
        };
        if self.cfg.dry_run {
            return Some(out);
        }
        if let Err(e) = pidfd_send_signal(&p.pidfd, libc::SIGSTOP) {
            out.skipped = Some(format!("signal failed: {e}"));
            return Some(out);
        }
        if self.cfg.quarantine {
            match self.quarantine(p.dir) {
                Ok(path) => out.quarantined = Some(path),
                Err(why) => out.quarantine_skipped = Some(why),
            }
        }
        if action == Action::Kill {
            if let Err(e) = pidfd_send_signal(&p.pidfd, libc::SIGKILL) {
                out.skipped = Some(format!("stopped, but SIGKILL failed: {e}"));
            }
        }
        Some(out)
    }

    /// Quarantines the executable of the pinned process on a worker, waiting
    /// at most `QUARANTINE_DEADLINE`; one late worker at a time.
    fn quarantine(&mut self, proc_dir: File) -> Result<String, String> {
        if let Some(h) = self.stuck.take() {
            if !h.is_finished() {
                self.stuck = Some(h);
                return Err("an earlier quarantine copy is still running past its deadline".into());
            }
            let _ = h.join();
        }
        let q = Quarantine {
            dir: self.cfg.quarantine_dir.clone(),
            max_bytes: self.cfg.quarantine_max_bytes,
            quota_bytes: self.cfg.quarantine_quota_bytes,
        };
        let known = self.known.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::Builder::new()
            .name("quarantine".into())
            .spawn(move || {
                let r = open_exe(&proc_dir).and_then(|exe| q.store(exe, &known)).map(|s| s.path);
                let _ = tx.send(r);
            })
            .map_err(|e| format!("no worker: {e}"))?;
        match rx.recv_timeout(QUARANTINE_DEADLINE) {
            Ok(r) => {
                let _ = h.join();
                r
            }
            Err(_) => {
                self.stuck = Some(h);
                Err(format!("the copy took over {}s; left running", QUARANTINE_DEADLINE.as_secs()))
            }
        }
    }
}

/// Opens the executable of the process whose /proc/PID is `proc_dir`: the
/// kernel's link to the running file (deleted and memfd binaries too), not a
/// path lookup the miner could redirect.
fn open_exe(proc_dir: &File) -> Result<File, String> {
    let fd = nix::fcntl::openat(
        Some(proc_dir.as_raw_fd()),
        "exe",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open the executable: {}", errno(e)))?;
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A file's identity: the same inode, unchanged since it was quarantined.
#[derive(Hash, PartialEq, Eq, Clone, Copy, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_id(st: &nix::sys::stat::FileStat) -> FileId {
    FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        ctime: (st.st_ctime, st.st_ctime_nsec),
    }
}

/// Where and how much to quarantine.
struct Quarantine {
    dir: PathBuf,
    max_bytes: u64,
    quota_bytes: u64,
}

/// A binary in quarantine (the hash and dedup flag are for the tests; the
/// path names the hash).
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
struct Stored {
    path: String,
    sha256: String,
    /// Already there: nothing new was kept.
    dedup: bool,
}

/// Removes a temporary copy unless it was renamed into place.
struct Partial<'a> {
    dir: &'a File,
    name: String,
    keep: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = nix::unistd::unlinkat(
                Some(self.dir.as_raw_fd()),
                self.name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

impl Quarantine {
    /// Opens the quarantine directory (made 0700, ours, not a symlink), and
    /// removes copies a crash left behind.
    fn open_dir(&self) -> Result<File, String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let fd = nix::fcntl::open(
            &self.dir,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {}", self.dir.display(), errno(e)))?;
        let dir = unsafe { File::from_raw_fd(fd) };
        let st = nix::sys::stat::fstat(dir.as_raw_fd()).map_err(errno)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            return Err(format!("{} is not owned by the agent's user", self.dir.display()));
        }
        nix::sys::stat::fchmod(dir.as_raw_fd(), nix::sys::stat::Mode::from_bits_truncate(0o700)).map_err(errno)?;
        Ok(dir)
    }

    /// Bytes the directory holds on disk (blocks, so sparse copies count
    /// what they take), removing leftover temporary copies.
    fn usage(&self, dir: &File) -> Result<u64, String> {
        let rd = std::fs::read_dir(crate::paths::own_fd(dir.as_raw_fd()))
            .or_else(|_| std::fs::read_dir(&self.dir))
            .map_err(|e| e.to_string())?;
        let mut total = 0u64;
        for (n, ent) in rd.flatten().enumerate() {
            if n >= MAX_DIR_ENTRIES {
                return Ok(u64::MAX);
            }
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(PARTIAL) {
                let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
                continue;
            }
            if let Ok(st) = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                total = total.saturating_add(st.st_blocks as u64 * 512);
            }
        }
        Ok(total)
    }

    /// Streams `src` into the quarantine: hashed while copied, holes kept as
    /// holes, at most `max_bytes`, within the quota, named by its SHA-256.
    fn store(&self, mut src: File, known: &Mutex<HashMap<FileId, String>>) -> Result<Stored, String> {
        use sha2::{Digest, Sha256};
        let st = nix::sys::stat::fstat(src.as_raw_fd()).map_err(errno)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err("the executable is not a regular file".into());
        }
        let size = st.st_size.max(0) as u64;
        if size > self.max_bytes {
            return Err(format!("binary is {size} bytes, over quarantine_max_bytes ({})", self.max_bytes));
        }
        let dir = self.open_dir()?;
        let id = file_id(&st);
        if let Some(name) = known.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            if nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
                return Ok(Stored {
                    path: self.dir.join(name).display().to_string(),
                    sha256: name.trim_end_matches(".bin").to_string(),
                    dedup: true,
                });
            }
        }
        let used = self.usage(&dir)?;
        if used >= self.quota_bytes {
            return Err(format!(
                "the quarantine holds {used} bytes, at quarantine_quota_bytes ({})",
                self.quota_bytes
            ));
        }
        let mut rnd = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut rnd))
            .map_err(|e| e.to_string())?;
        let mut partial = Partial {
            dir: &dir,
            name: format!("{PARTIAL}{}", hex::encode(rnd)),
            keep: false,
        };
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            partial.name.as_str(),
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_EXCL
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| format!("cannot create a copy: {}", errno(e)))?;
        let mut dst = unsafe { File::from_raw_fd(fd) };
        static ZERO: [u8; BUF] = [0; BUF];
        let mut buf = vec![0u8; BUF];
        let mut hash = Sha256::new();
        let (mut total, mut written) = (0u64, 0u64);
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the executable: {e}")),
            };
            total += n as u64;
            if total > self.max_bytes {
                return Err(format!("binary grew past quarantine_max_bytes ({}) while copied", self.max_bytes));
            }
            let chunk = &buf[..n];
            hash.update(chunk);
            if chunk == &ZERO[..n] {
                dst.seek(SeekFrom::Current(n as i64)).map_err(|e| e.to_string())?;
                continue;
            }
            written += n as u64;
            if used.saturating_add(written) > self.quota_bytes {
                return Err(format!(
                    "copying would pass quarantine_quota_bytes ({}; {used} bytes in use)",
                    self.quota_bytes
                ));
            }
            dst.write_all(chunk).map_err(|e| format!("writing the copy: {e}"))?;
        }
        dst.set_len(total).map_err(|e| e.to_string())?;
        nix::sys::stat::fchmod(dst.as_raw_fd(), nix::sys::stat::Mode::from_bits_truncate(0o400)).map_err(errno)?;
        dst.sync_all().map_err(|e| e.to_string())?;
        drop(dst);
        let sha256 = hex::encode(hash.finalize());
        let name = format!("{sha256}.bin");
        let dedup = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
        if !dedup {
            nix::fcntl::renameat(Some(dir.as_raw_fd()), partial.name.as_str(), Some(dir.as_raw_fd()), name.as_str())
                .map_err(|e| format!("cannot rename the copy: {}", errno(e)))?;
            partial.keep = true;
            let _ = dir.sync_all();
        }
        let mut k = known.lock().unwrap_or_else(|e| e.into_inner());
        if k.len() >= 1024 {
            k.clear();
        }
        k.insert(id, name.clone());
        Ok(Stored {
            path: self.dir.join(name).display().to_string(),
            sha256,
            dedup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::ProcessInfo;

    fn finding(pid: u32, evidence: Vec<Evidence>) -> Finding {
        Finding::assess(
            "h",
            ProcessInfo {
                pid,
                start_time: 7,
                ..Default::default()
            },
            evidence,
            0,
        )
        .expect("a finding")
    }

    fn stratum() -> Evidence {
        Evidence::heuristic(
            EvidenceKind::Stratum {
                dialect: "cryptonote".into(),
                method: "login".into(),
                agent: None,
                login: None,
                worker: None,
                remote: "203.0.113.9:3333".into(),
            },
            Weight::Confirmed,
        )
    }

    fn cpu() -> Evidence {
        Evidence::heuristic(
            EvidenceKind::Cpu {
                cores: 1.0,
                window_seconds: 10.0,
            },
            Weight::Info,
        )
    }

    fn kill_all() -> ResponseConfig {
        ResponseConfig {
            confirmed: Action::Kill,
            likely: Action::Kill,
            suspicious: Action::Kill,
            ..Default::default()
        }
    }

    #[test]
    fn network_only_findings_are_not_acted_on_unless_asked() {
        let dns = Evidence::heuristic(
            EvidenceKind::Dns {
                name: "pool.supportxmr.com".into(),
                answers: vec![],
            },
            Weight::Likely,
        );
        let login_wallet = Evidence::heuristic(
            EvidenceKind::Wallet {
                coin: "xmr".into(),
                address: "44AFFq".into(),
                source: "stratum login".into(),
            },
            Weight::Likely,
        );
        // a busy process that a miner made look up a pool, or that carried stratum
        let framed = finding(4242, vec![dns.clone(), cpu()]);
        assert_eq!(framed.severity, Severity::Likely);
        assert!(network_only(&framed));
        let wire = finding(4242, vec![stratum(), login_wallet, cpu()]);
        assert!(network_only(&wire));
        let name = Evidence::heuristic(
            EvidenceKind::ProcessName {
                name: "xmrig".into(),
                field: "comm".into(),
            },
            Weight::Likely,
        );
        let host = finding(4242, vec![stratum(), name]);
        assert!(!network_only(&host), "a miner name is host evidence");

        // a pid that is surely not running: acting on it would say "process gone"
        let mut r = Responder::new(kill_all(), Path::new("/proc"));
        let o = r.act(&wire).expect("logged once");
        assert!(o.skipped.as_deref().unwrap().contains("network"), "{o:?}");
        assert!(r.act(&wire).is_none(), "said once");
        let o = r.act(&host).expect("host evidence: acted on");
        assert!(!o.skipped.as_deref().unwrap_or("").contains("network"), "{o:?}");

        let mut r = Responder::new(
            ResponseConfig {
                act_on_network_only: true,
                ..kill_all()
            },
            Path::new("/proc"),
        );
        let o = r.act(&framed).unwrap();
        assert!(!o.skipped.as_deref().unwrap_or("").contains("network"), "{o:?}");
    }

    #[test]
    fn no_process_no_action_and_protected_processes_are_left_alone() {
        let mut r = Responder::new(kill_all(), Path::new("/proc"));
        let mut f = finding(4242, vec![stratum()]);
        f.pid = None;
        assert!(r.act(&f).is_none());
        let name = Evidence::heuristic(
            EvidenceKind::ProcessName {
                name: "xmrig".into(),
                field: "comm".into(),
            },
            Weight::Likely,
        );
        for pid in [1, std::process::id()] {
            let f = finding(pid, vec![stratum(), name.clone()]);
            let o = r.act(&f).unwrap();
            assert_eq!(o.skipped.as_deref(), Some("protected process"));
        }
        // a live process with another start time than the finding's: a reused pid
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let f = finding(child.id(), vec![stratum(), name.clone()]);
        let o = r.act(&f).unwrap();
        assert_eq!(o.skipped.as_deref(), Some("pid reused by another process"));
        assert!(child.try_wait().unwrap().is_none(), "not touched");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn stop_then_kill_through_the_pidfd() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let stat = std::fs::read(format!("/proc/{}/stat", child.id())).unwrap();
        let start = crate::host::process::parse_stat(&stat).unwrap().starttime;
        let name = Evidence::heuristic(
            EvidenceKind::ProcessName {
                name: "xmrig".into(),
                field: "comm".into(),
            },
            Weight::Likely,
        );
        let mut f = finding(child.id(), vec![stratum(), name]);
        f.process.start_time = start;
        let mut r = Responder::new(kill_all(), Path::new("/proc"));
        let o = r.act(&f).unwrap();
        assert_eq!((o.action, o.skipped.as_deref()), ("kill", None), "{o:?}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(r.act(&f).is_none(), "once per finding");
    }

    fn q(dir: &Path, max: u64, quota: u64) -> Quarantine {
        Quarantine {
            dir: dir.join("q"),
            max_bytes: max,
            quota_bytes: quota,
        }
    }

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> File {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        File::open(p).unwrap()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn noise(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
    }

    #[test]
    fn quarantine_streams_hashes_and_keeps_one_copy_per_hash() {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let qq = q(tmp.path(), 1 << 20, 1 << 30);
        let known = Mutex::default();
        // data, a hole, data: bigger than the buffer
        let mut body = noise(100_000, 3);
        body.resize(body.len() + 3 * BUF, 0);
        body.extend(noise(5_000, 9));
        let want = hex::encode(Sha256::digest(&body));
        let a = qq.store(file_with(tmp.path(), "a", &body), &known).unwrap();
        assert_eq!(a.sha256, want);
        assert!(!a.dedup);
        assert_eq!(std::fs::read(&a.path).unwrap(), body);
        let md = std::fs::metadata(&a.path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o400);
        assert!(md.blocks() * 512 < body.len() as u64, "the hole stays a hole");
        assert_eq!(std::fs::metadata(&qq.dir).unwrap().permissions().mode() & 0o777, 0o700);
        // the same file again (known by identity), and a copy of it (by hash)
        let again = qq.store(File::open(tmp.path().join("a")).unwrap(), &known).unwrap();
        assert!(again.dedup);
        let b = qq.store(file_with(tmp.path(), "b", &body), &known).unwrap();
        assert!(b.dedup);
        assert_eq!(b.path, a.path);
        assert_eq!(entries(&qq.dir), vec![format!("{want}.bin")], "one copy, no leftovers");
    }

    #[test]
    fn quarantine_skips_over_the_size_cap_and_the_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let known = Mutex::default();
        let qq = q(tmp.path(), 64 * 1024, 96 * 1024);
        let e = qq
            .store(file_with(tmp.path(), "big", &noise(64 * 1024 + 1, 1)), &known)
            .unwrap_err();
        assert!(e.contains("quarantine_max_bytes"), "{e}");
        qq.store(file_with(tmp.path(), "one", &noise(60 * 1024, 2)), &known).unwrap();
        let e = qq.store(file_with(tmp.path(), "two", &noise(60 * 1024, 5)), &known).unwrap_err();
        assert!(e.contains("quarantine_quota_bytes"), "{e}");
        assert_eq!(entries(&qq.dir).len(), 1, "the partial copy is gone: {:?}", entries(&qq.dir));
        // a full quarantine refuses before reading
        let full = q(tmp.path(), 64 * 1024, 1);
        let e = full.store(file_with(tmp.path(), "three", &noise(10, 7)), &known).unwrap_err();
        assert!(e.contains("quarantine_quota_bytes"), "{e}");
        // a crash's leftover is removed and not counted
        std::fs::write(qq.dir.join(format!("{PARTIAL}dead")), noise(60 * 1024, 8)).unwrap();
        let e = qq.store(file_with(tmp.path(), "four", &noise(20 * 1024, 4)), &known);
        assert!(e.is_ok(), "{e:?}");
        assert!(!entries(&qq.dir).iter().any(|n| n.starts_with(PARTIAL)));
    }
}
