//! The hidden-process sensor: processes that exist but that the host's own
//! tools cannot see, and the preload libraries that hide them.
//!
//! - The proc root is listed twice: with the raw `getdents64` system call
//!   (what the process sensor uses: a preload library cannot hook it) and
//!   with libc's `readdir` (what every dynamically linked program on the
//!   host sees, and what a hider in `/etc/ld.so.preload` hooks). A pid in
//!   the first listing and not in the second is hidden from userland.
//! - Pids that answer `kill(pid, 0)` but that `getdents64` does not list
//!   (a kernel rootkit filters getdents) are probed in chunks per pass.
//! - Bind mounts over `/proc/PID` (mountinfo) hide a process's files from
//!   everyone; as root the process is then read through a private procfs
//!   instance (`fsopen("proc")` + `fsmount`, never attached anywhere), which
//!   no bind mount covers, and its executable is content-scanned from there.
//! - A non-empty `/etc/ld.so.preload` (under the host root) and preload
//!   libraries mapped into processes (listed in ld.so.preload, or in the
//!   process's `LD_PRELOAD`, read from `environ` only as root) are `Preload`
//!   evidence.

use super::{Observation, Proc, ProcKey, ProcessSensor, Sensor, SensorError, Snapshot};
use crate::host::exe::scan_reader;
use rigwatch_signatures::{Evidence, EvidenceKind, HostSubject, Signatures, SubjectKind, Weight};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Passes over which the pids in use are probed with `kill(pid, 0)` once
/// (a sweep a minute at the default 10 s interval).
const PROBE_PASSES: u32 = 6;
/// Fewest pids probed per pass.
const PROBE_MIN_CHUNK: u32 = 4096;
/// Pids probed above the highest pid in use (one the kernel hands out next
/// may already be hidden).
const PROBE_MARGIN: u32 = 4096;
/// Most bytes of a hidden process's executable read for content.
const HIDDEN_EXE_CAP: u64 = 64 * 1024 * 1024;
/// Most bytes of `ld.so.preload` read.
const PRELOAD_CAP: u64 = 64 * 1024;
/// Most bytes of a process's `environ` or `maps` read.
const PROC_FILE_CAP: u64 = 16 * 1024 * 1024;

/// At most `cap` bytes of a proc file.
fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)?.take(cap).read_to_end(&mut v)?;
    Ok(v)
}

pub use crate::host::pids::{list_pids, list_pids_libc, parse_dirents, parse_pid};

/// The pids whose `ROOT/PID` directory has something mounted over it,
/// from mountinfo text (field 5 is the mount point, octal-escaped).
pub fn pids_under_mounts(mountinfo: &str, proc_root: &Path) -> Vec<u32> {
    let root = proc_root.to_string_lossy();
    let root = root.trim_end_matches('/');
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some(mp) = line.split(' ').nth(4) else { continue };
        let mp = unescape_octal(mp);
        let Some(rest) = mp.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        if let Some(pid) = parse_pid(rest.as_bytes()) {
            if !out.contains(&pid) {
                out.push(pid);
            }
        }
    }
    out
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Libraries listed in an `ld.so.preload` file (whitespace or colon
/// separated, `#` comments).
pub fn parse_preload_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ':'))
        .filter(|s| !s.is_empty())
        .take(64)
        .map(|s| s.chars().take(4096).collect())
        .collect()
}

/// `LD_PRELOAD` libraries from an `environ` file (NUL-separated).
pub fn ld_preload_from_environ(environ: &[u8]) -> Vec<String> {
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"LD_PRELOAD="))
        .map(|v| parse_preload_list(&String::from_utf8_lossy(v)))
        .unwrap_or_default()
}

/// The mapped file paths of a `maps` file that are among `libs` (by full
/// path, or by file name when the list names a bare file).
pub fn mapped_libraries(maps: &str, libs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let path = path.trim_end_matches(" (deleted)");
        let base = path.rsplit('/').next().unwrap_or(path);
        if libs.iter().any(|l| l == path || (!l.contains('/') && l == base)) && !out.iter().any(|o| o == path) {
            out.push(path.to_string());
        }
    }
    out
}

/// A private procfs instance (`fsopen` + `fsmount`, attached nowhere): no
/// bind mount over `/proc/PID` covers it. Needs CAP_SYS_ADMIN.
fn private_procfs() -> std::io::Result<OwnedFd> {
    let name = CString::new("proc").unwrap();
    // SAFETY: plain system calls with valid arguments; fds are owned below.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, name.as_ptr(), 1 /* FSOPEN_CLOEXEC */);
        if fs < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fs = OwnedFd::from_raw_fd(fs as i32);
        // FSCONFIG_CMD_CREATE = 6
        if libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), 6, 0usize, 0usize, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let m = libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 1 /* FSMOUNT_CLOEXEC */, 0);
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(m as i32))
    }
}

fn exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The hidden-process and preload sensor.
pub struct HiddenSensor {
    sig: Arc<Signatures>,
    root: PathBuf,
    host_root: PathBuf,
    pass: u64,
    cursor: u32,
    alt: Option<(OwnedFd, ProcessSensor)>,
    alt_error: Option<String>,
    /// Preload evidence per process, computed once.
    preload: HashMap<ProcKey, Vec<Evidence>>,
    /// Content evidence of hidden processes' executables, by identity.
    hidden_exe: HashMap<ProcKey, Vec<Evidence>>,
    notes: Vec<String>,
    found: u64,
    /// Ids found to be threads (not thread-group leaders), not re-read every pass.
    threads: HashSet<u32>,
}

impl HiddenSensor {
    /// A sensor over the proc root `root`, reading host files (ld.so.preload) under `host_root`.
    pub fn new(sig: Arc<Signatures>, root: &Path, host_root: PathBuf) -> Self {
        HiddenSensor {
            sig,
            root: root.to_path_buf(),
            host_root,
            pass: 0,
            cursor: 1,
            alt: None,
            alt_error: None,
            preload: HashMap::new(),
            hidden_exe: HashMap::new(),
            notes: Vec::new(),
            found: 0,
            threads: HashSet::new(),
        }
    }

    fn live_proc_root(&self) -> bool {
        self.root.join("self").exists()
    }

    fn pid_max(&self) -> u32 {
        std::fs::read_to_string(self.root.join("sys/kernel/pid_max"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768)
            .clamp(2, 1 << 22)
    }

    /// Reads a process through the private procfs instance.
    fn read_private(&mut self, pid: u32) -> Option<Proc> {
        if self.alt.is_none() && self.alt_error.is_none() {
            match private_procfs() {
                Ok(fd) => {
                    let root = crate::paths::own_fd(fd.as_raw_fd());
                    let ps = ProcessSensor::new(&root);
                    self.alt = Some((fd, ps));
                }
                Err(e) => self.alt_error = Some(format!("private procfs: {e}")),
            }
        }
        let (_, ps) = self.alt.as_mut()?;
        ps.read_one(pid)
    }

    fn preload_evidence(&mut self, p: &Proc, global: &[String], root_user: bool) -> Vec<Evidence> {
        if let Some(e) = self.preload.get(&p.key) {
            return e.clone();
        }
        let dir = self.root.join(p.key.pid.to_string());
        let env_libs = if root_user {
            read_capped(&dir.join("environ"), PROC_FILE_CAP)
                .map(|b| ld_preload_from_environ(&b))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut ev = Vec::new();
        if !global.is_empty() || !env_libs.is_empty() {
            let all: Vec<String> = global.iter().chain(env_libs.iter()).cloned().collect();
            if let Ok(maps) = read_capped(&dir.join("maps"), PROC_FILE_CAP).map(|b| String::from_utf8_lossy(&b).into_owned()) {
                for lib in mapped_libraries(&maps, &all) {
                    let base = lib.rsplit('/').next().unwrap_or(&lib).to_string();
                    let in_global = global.iter().any(|g| *g == lib || *g == base);
                    let (source, weight) = if in_global {
                        ("ld.so.preload of the host, mapped into the process", Weight::Suspicious)
                    } else {
                        ("LD_PRELOAD, mapped into the process", Weight::Info)
                    };
                    ev.push(Evidence::heuristic(
                        EvidenceKind::Preload {
                            library: lib,
                            source: source.into(),
                        },
                        weight,
                    ));
                }
            }
        }
        self.preload.insert(p.key, ev.clone());
        ev
    }
}

/// The libraries the host's `ld.so.preload` (under `host_root`) lists: a
/// regular file only, capped, its links followed only inside the host root;
/// a FIFO in its place does not stall the pass.
pub fn global_preload(host_root: &Path) -> Vec<String> {
    crate::host::safefile::read_host_file(host_root, Path::new("etc/ld.so.preload"), PRELOAD_CAP)
        .map(|t| parse_preload_list(&String::from_utf8_lossy(&t)))
        .unwrap_or_default()
}

/// Loadable modules (those with `/sys/module/NAME/initstate`) that
/// `/proc/modules` does not list: a rootkit that unlinks itself from the
/// module list but keeps its sysfs object. Both are read under `host_root`.
pub fn hidden_modules(host_root: &Path) -> Vec<String> {
    let Ok(listed) = std::fs::read_to_string(host_root.join("proc/modules")) else {
        return Vec::new();
    };
    let listed: std::collections::HashSet<&str> = listed.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let Ok(rd) = std::fs::read_dir(host_root.join("sys/module")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join("initstate").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|m| !listed.contains(m.as_str()))
        .take(256)
        .collect();
    out.sort();
    out
}

impl Sensor for HiddenSensor {
    fn name(&self) -> &'static str {
        "hidden"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        self.pass += 1;
        self.notes.clear();
        let err = |m: String| SensorError {
            sensor: "hidden",
            message: m,
        };
        let raw: HashSet<u32> = list_pids(&self.root)
            .map_err(|e| err(format!("getdents64 {}: {e}", self.root.display())))?
            .into_iter()
            .collect();
        let mut hidden: Vec<(u32, String)> = Vec::new();

        // 1. userland hiding: getdents64 lists it, libc readdir does not
        if let Ok(libc_list) = list_pids_libc(&self.root) {
            let seen: HashSet<u32> = libc_list.into_iter().collect();
            for &pid in raw.difference(&seen) {
                if self.root.join(pid.to_string()).exists() {
                    hidden.push((
                        pid,
                        "missing from libc readdir of /proc (a preload library hooks readdir); getdents64 lists it".into(),
                    ));
                }
            }
        }

        if self.live_proc_root() {
            // 2. bind mounts over /proc/PID
            let canon = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
            if let Ok(mi) = std::fs::read_to_string(self.root.join("self/mountinfo")) {
                for pid in pids_under_mounts(&mi, &canon) {
                    if exists(pid) {
                        hidden.push((pid, format!("bind mount over {}/{pid} (mountinfo)", canon.display())));
                    }
                }
            }
            // 3. pids that exist but getdents64 does not list (kernel-level hiding), a chunk per pass
            // pids in use lie below the highest one handed out since the last
            // wrap: the highest listed pid or the kernel's last pid, whichever is higher
            let last = std::fs::read_to_string(self.root.join("sys/kernel/ns_last_pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(0);
            let top = raw
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                .max(last)
                .saturating_add(PROBE_MARGIN)
                .min(self.pid_max());
            let start = self.cursor.clamp(1, top);
            // the first pass (a whole scan) probes every pid in use; later ones a share each
            let chunk = if self.pass <= 1 {
                top
            } else {
                (top / PROBE_PASSES).max(PROBE_MIN_CHUNK)
            };
            let end = start.saturating_add(chunk).min(top);
            self.cursor = if end >= top { 1 } else { end };
            if self.pass.is_multiple_of(30) {
                self.threads.clear(); // ids are reused: a thread's id may become a process's
            }
            let mut candidates = Vec::new();
            for pid in start..end {
                if !raw.contains(&pid) && !self.threads.contains(&pid) && exists(pid) {
                    candidates.push(pid);
                }
            }
            if !candidates.is_empty() {
                // listed again: a process that started during the probe is no candidate
                let again: HashSet<u32> = list_pids(&self.root).map(|v| v.into_iter().collect()).unwrap_or_default();
                for pid in candidates {
                    if again.contains(&pid) || hidden.iter().any(|(h, _)| *h == pid) {
                        continue;
                    }
                    // threads answer kill() too: only thread-group leaders are processes
                    let status = std::fs::read_to_string(self.root.join(pid.to_string()).join("status")).ok();
                    match status.as_deref().and_then(tgid) {
                        Some(t) if t == pid => hidden.push((
                            pid,
                            "answers kill(pid, 0) and /proc/PID is reachable, but getdents64 of /proc does not list it".into(),
                        )),
                        Some(_) => {
                            self.threads.insert(pid);
                        }
                        None => {}
                    }
                }
            }
        }

        for (pid, how) in hidden {
            self.found += 1;
            let ev = Evidence::heuristic(EvidenceKind::HiddenProcess { how }, Weight::Suspicious);
            if let Some(k) = snap.procs.keys().find(|k| k.pid == pid) {
                out.push(Observation::Evidence(*k, ev));
                continue;
            }
            // not in the snapshot (its /proc files are covered): read it privately
            let p = match self.read_private(pid) {
                Some(p) => p,
                None => Proc {
                    key: ProcKey { pid, start_time: 0 },
                    ppid: 0,
                    comm: String::new(),
                    state: '?',
                    threads: 0,
                    nice: 0,
                    policy: 0,
                    cpu_ticks: 0,
                    child_ticks: 0,
                    kernel_thread: false,
                    fixed: Arc::new(Default::default()),
                },
            };
            let key = p.key;
            if key.start_time != 0 && !self.hidden_exe.contains_key(&key) {
                let mut content = Vec::new();
                if let Some((fd, _)) = &self.alt {
                    let exe = crate::paths::own_fd(fd.as_raw_fd()).join(format!("{pid}/exe"));
                    if let Ok(mut f) = std::fs::File::open(&exe) {
                        let shown = p.fixed.exe.clone().unwrap_or_default();
                        let mut n = 0;
                        if let Ok(v) = scan_reader(&self.sig, &mut f, HIDDEN_EXE_CAP, &shown, &mut n) {
                            content = v.evidence;
                        }
                    }
                }
                self.hidden_exe.insert(key, content);
            }
            out.push(Observation::Hidden(p));
            out.push(Observation::Evidence(key, ev));
            for e in self.hidden_exe.get(&key).cloned().unwrap_or_default() {
                out.push(Observation::Evidence(key, e));
            }
        }
        self.hidden_exe.retain(|k, _| exists(k.pid));

        // 4. preload libraries
        let global = global_preload(&self.host_root);
        for lib in &global {
            // loaded into every program: a finding about the host, whatever maps it now
            let subject = HostSubject {
                kind: SubjectKind::Preload,
                name: lib.clone(),
            };
            let detail = EvidenceKind::Preload {
                library: lib.clone(),
                source: "ld.so.preload of the host (loaded into every program)".into(),
            };
            out.push(Observation::Host(subject, Evidence::heuristic(detail, Weight::Suspicious)));
        }
        // 5. kernel modules unlinked from /proc/modules but still in sysfs
        for m in hidden_modules(&self.host_root) {
            let subject = HostSubject {
                kind: SubjectKind::KernelModule,
                name: m.clone(),
            };
            let detail = EvidenceKind::KernelModule {
                name: m,
                how: "in /sys/module but not in /proc/modules (a rootkit hides itself this way)".into(),
            };
            out.push(Observation::Host(subject, Evidence::heuristic(detail, Weight::Suspicious)));
        }
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        self.preload.retain(|k, _| snap.procs.contains_key(k));
        let procs: Vec<&Proc> = snap.procs.values().filter(|p| !p.kernel_thread).collect();
        for p in procs {
            for e in self.preload_evidence(p, &global, root_user) {
                out.push(Observation::Evidence(p.key, e));
            }
        }
        if let Some(e) = &self.alt_error {
            if self.found > 0 {
                self.notes.push(format!("hidden processes could not be read: {e}"));
            }
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("hidden_processes", self.found)]
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
        self.hidden_exe.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_unlinked_from_proc_modules_but_in_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(
            r.join("proc/modules"),
            "msr 16384 0 - Live 0x0000000000000000\next4 999424 1 - Live 0x0\n",
        )
        .unwrap();
        for (m, loadable) in [
            ("msr", true),
            ("ext4", true),
            ("diamorphine", true),
            ("kernel", false),
            ("printk", false),
        ] {
            std::fs::create_dir_all(r.join("sys/module").join(m)).unwrap();
            if loadable {
                std::fs::write(r.join("sys/module").join(m).join("initstate"), "live\n").unwrap();
            }
        }
        assert_eq!(hidden_modules(r), vec!["diamorphine".to_string()]);
        // no /proc/modules to compare with (a container, a kernel without modules): nothing
        std::fs::remove_file(r.join("proc/modules")).unwrap();
        assert!(hidden_modules(r).is_empty());
    }

    #[test]
    fn ld_so_preload_is_read_safely() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("host");
        std::fs::create_dir_all(r.join("etc")).unwrap();
        let f = r.join("etc/ld.so.preload");
        std::fs::write(&f, "/usr/local/lib/libprocesshider.so\n").unwrap();
        assert_eq!(global_preload(&r), vec!["/usr/local/lib/libprocesshider.so"]);
        // a FIFO in its place: nothing, at once (a blocking open would hang here)
        std::fs::remove_file(&f).unwrap();
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = r.clone();
        std::thread::spawn(move || tx.send(global_preload(&r2)));
        let got = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("blocked on a FIFO");
        assert!(got.is_empty());
        // a link is followed inside the host root only
        std::fs::remove_file(&f).unwrap();
        std::fs::write(d.path().join("outside"), "/tmp/outside.so\n").unwrap();
        std::fs::write(r.join("etc/inside"), "/tmp/inside.so\n").unwrap();
        std::os::unix::fs::symlink("/etc/inside", &f).unwrap();
        assert_eq!(global_preload(&r), vec!["/tmp/inside.so"]);
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink("../../outside", &f).unwrap();
        assert!(global_preload(&r).is_empty());
    }

    #[test]
    fn getdents_agrees_with_read_dir_here() {
        let ours: HashSet<u32> = list_pids(Path::new("/proc")).unwrap().into_iter().collect();
        assert!(ours.contains(&std::process::id()));
        let libc: HashSet<u32> = list_pids_libc(Path::new("/proc")).unwrap().into_iter().collect();
        assert!(libc.contains(&std::process::id()));
        // a fixture directory lists too
        let d = tempfile::tempdir().unwrap();
        for n in ["1", "22", "x", "333"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        let mut v = list_pids(d.path()).unwrap();
        v.sort();
        assert_eq!(v, vec![1, 22, 333]);
    }

    #[test]
    fn mountinfo_over_pid_dirs() {
        let mi = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
                  300 22 8:1 /tmp/empty /proc/4242 rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                  301 22 8:1 /tmp/x /proc/sys/fs/binfmt_misc rw - autofs x rw\n\
                  302 1 8:1 /a /srv/proc/77 rw - ext4 /dev/sda1 rw\n";
        assert_eq!(pids_under_mounts(mi, Path::new("/proc")), vec![4242]);
        assert_eq!(pids_under_mounts(mi, Path::new("/srv/proc/")), vec![77]);
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
    }

    #[test]
    fn preload_lists_environ_and_maps() {
        assert_eq!(
            parse_preload_list("# hider\n/usr/local/lib/libprocesshider.so\n/lib/x.so:/lib/y.so\n"),
            vec!["/usr/local/lib/libprocesshider.so", "/lib/x.so", "/lib/y.so"]
        );
        assert_eq!(
            ld_preload_from_environ(b"HOME=/root\0LD_PRELOAD=/tmp/h.so libz.so\0X=1\0"),
            vec!["/tmp/h.so", "libz.so"]
        );
        assert!(ld_preload_from_environ(b"HOME=/root\0").is_empty());
        let maps = "7f00-7f01 r-xp 00000000 08:01 1234 /tmp/h.so\n\
                    7f01-7f02 r--p 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libz.so\n\
                    7f02-7f03 rw-p 00000000 00:00 0 \n\
                    7f03-7f04 r-xp 00000000 08:01 1234 /tmp/h.so\n";
        assert_eq!(
            mapped_libraries(maps, &["/tmp/h.so".into(), "libz.so".into()]),
            vec!["/tmp/h.so", "/usr/lib/x86_64-linux-gnu/libz.so"]
        );
        assert!(mapped_libraries(maps, &["/lib/other.so".into()]).is_empty());
    }

    #[test]
    fn dirent_parser_stops_on_garbage() {
        let mut buf = vec![0u8; 24];
        buf[16] = 24;
        buf[19..21].copy_from_slice(b"42");
        let mut names = Vec::new();
        parse_dirents(&buf, |n| names.push(n.to_vec()));
        assert_eq!(names, vec![b"42".to_vec()]);
        let mut bad = buf.clone();
        bad[16] = 200;
        let mut n = 0;
        parse_dirents(&bad, |_| n += 1);
        assert_eq!(n, 0);
    }
}
