//! The other network namespaces: containers, pods, anything a process
//! `unshare`d. A socket belongs to one network namespace, and sock_diag
//! answers only for the namespace its netlink socket was opened in; so a
//! pod's connection, seen by the capture on the host side of its veth, has
//! no owner in the host's namespace. This registry finds the namespaces in
//! use (`/proc/PID/ns/net`), opens one sock_diag socket inside each (from a
//! short-lived thread that `setns`es into it: the socket stays bound to
//! that namespace after the thread is gone) and asks them in turn.
//!
//! Socket inodes are unique across namespaces, so the owner is then found
//! the usual way, from the fd tables, as a host pid.
//!
//! Bounded, since any user may create namespaces (unprivileged user
//! namespaces): at most [`MAX_NAMESPACES`] sockets are kept open, the least
//! recently useful closed first, and a socket is dropped as soon as no
//! process is left in its namespace (an open socket keeps a namespace
//! alive). The list is re-read at most every [`REFRESH`].

use crate::host::sockets::{diag_socket, parse_proc_net, sock_diag_dump_on, sock_diag_lookup_on, DiagSocket, SocketEntry};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Namespaces asked at most (and sock_diag sockets held open at most).
pub const MAX_NAMESPACES: usize = 512;
/// How often the namespace list is re-read.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How often a lookup that found nothing may re-read it.
pub const MISS_REFRESH: Duration = Duration::from_millis(200);

struct Ns {
    socket: Option<DiagSocket>,
    /// A process in it (to open it by).
    pid: u32,
    /// When it last answered a lookup (ordering: most useful first).
    last_hit: u64,
    /// Opening failed (no privilege, or the process left): not retried
    /// until the next refresh finds it again.
    failed: bool,
    /// `setns` is not allowed (no CAP_SYS_ADMIN, or systemd's
    /// RestrictNamespaces): its sockets are read from `/proc/PID/net/*`.
    proc_files: bool,
}

/// The host's other network namespaces, each with its sock_diag socket.
pub struct Netns {
    proc_root: PathBuf,
    /// The namespace this process's sockets answer for (skipped).
    own: u64,
    spaces: HashMap<u64, Ns>,
    refreshed: Option<Instant>,
    tick: u64,
    /// Why the last namespace could not be opened, if one could not.
    pub last_error: Option<String>,
}

/// A network namespace's identity: the inode of `/proc/PID/ns/net`.
pub fn netns_of(proc_root: &Path, pid: u32) -> Option<u64> {
    std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net"))
        .ok()
        .map(|m| m.ino())
}

impl Netns {
    /// Over a live proc root.
    pub fn new(proc_root: &Path) -> Self {
        Netns {
            proc_root: proc_root.to_path_buf(),
            own: std::fs::metadata(crate::paths::own_netns()).map(|m| m.ino()).unwrap_or(0),
            spaces: HashMap::new(),
            refreshed: None,
            tick: 0,
            last_error: None,
        }
    }

    /// Namespaces known besides our own.
    pub fn len(&self) -> usize {
        self.spaces.len()
    }

    /// True when no other namespace is known.
    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }

    /// Re-reads which namespaces are in use (at most every [`REFRESH`],
    /// unless `force`): new ones are added, those no process holds any
    /// more are dropped with their sockets.
    pub fn refresh(&mut self, force: bool) {
        if !force && self.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        self.refreshed = Some(Instant::now());
        let Ok(rd) = std::fs::read_dir(&self.proc_root) else { return };
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ino) = netns_of(&self.proc_root, pid) {
                if ino != self.own {
                    seen.entry(ino).or_insert(pid);
                }
            }
        }
        self.spaces.retain(|ino, _| seen.contains_key(ino));
        for (ino, pid) in seen {
            if let Some(ns) = self.spaces.get_mut(&ino) {
                ns.pid = pid;
                ns.failed = false;
            } else if self.spaces.len() < MAX_NAMESPACES {
                self.spaces.insert(
                    ino,
                    Ns {
                        socket: None,
                        pid,
                        last_hit: 0,
                        failed: false,
                        proc_files: false,
                    },
                );
            }
        }
    }

    /// The namespaces in the order to ask them: the most recently useful first.
    fn order(&self) -> Vec<u64> {
        let mut v: Vec<(u64, u64)> = self
            .spaces
            .iter()
            .filter(|(_, n)| !n.failed)
            .map(|(i, n)| (n.last_hit, *i))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, i)| i).collect()
    }

    /// Runs `f` on namespace `ino`'s socket, opening it first if needed; a
    /// socket that fails is dropped (reopened next time). `None` when the
    /// namespace cannot be entered (see [`Netns::proc_sockets`]).
    fn with_socket<T>(&mut self, ino: u64, f: impl FnOnce(&mut DiagSocket) -> std::io::Result<T>) -> Option<T> {
        let ns = self.spaces.get_mut(&ino)?;
        if ns.proc_files {
            return None;
        }
        if ns.socket.is_none() {
            match in_namespace(&self.proc_root, ns.pid, ino, diag_socket) {
                Ok(s) => ns.socket = Some(s),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    ns.proc_files = true;
                    self.last_error = Some(format!(
                        "entering network namespaces needs CAP_SYS_ADMIN ({e}): their sockets are read from /proc/PID/net"
                    ));
                    return None;
                }
                Err(e) => {
                    ns.failed = true;
                    self.last_error = Some(format!("network namespace of pid {}: {e}", ns.pid));
                    return None;
                }
            }
        }
        let socket = ns.socket.as_mut()?;
        match f(socket) {
            Ok(v) => Some(v),
            Err(_) => {
                ns.socket = None;
                None
            }
        }
    }

    /// The socket of a 4-tuple in whichever other namespace holds it, and
    /// that namespace. A namespace born since the last refresh (a pod that
    /// just started, whose first connection this is) is looked for too: on
    /// a miss the list is re-read, at most every [`MISS_REFRESH`].
    pub fn lookup(&mut self, tcp: bool, local: SocketAddr, remote: SocketAddr) -> Option<(SocketEntry, u64)> {
        self.refresh(false);
        let mut tried = std::collections::HashSet::new();
        for round in 0..2 {
            if round == 1 {
                if self.refreshed.is_some_and(|t| t.elapsed() < MISS_REFRESH) {
                    break;
                }
                self.refresh(true);
            }
            for ino in self.order() {
                if !tried.insert(ino) {
                    continue;
                }
                let found = match self.with_socket(ino, |s| sock_diag_lookup_on(s, tcp, local, remote)) {
                    Some(found) => found,
                    None => self.proc_sockets(ino, tcp).into_iter().find(|e| same_tuple(e, local, remote)),
                };
                if let Some(e) = found {
                    self.tick += 1;
                    if let Some(ns) = self.spaces.get_mut(&ino) {
                        ns.last_hit = self.tick;
                    }
                    return Some((e, ino));
                }
            }
        }
        None
    }

    /// The socket of a 4-tuple in namespace `ino`.
    pub fn lookup_in(&mut self, ino: u64, tcp: bool, local: SocketAddr, remote: SocketAddr) -> Option<SocketEntry> {
        match self.with_socket(ino, |s| sock_diag_lookup_on(s, tcp, local, remote)) {
            Some(found) => found,
            None => self.proc_sockets(ino, tcp).into_iter().find(|e| same_tuple(e, local, remote)),
        }
    }

    /// Without the privilege to enter a namespace: its TCP or UDP sockets
    /// from `/proc/PID/net/*` of a process in it (the kernel shows each
    /// process its own namespace's sockets there).
    fn proc_sockets(&self, ino: u64, tcp: bool) -> Vec<SocketEntry> {
        let Some(ns) = self.spaces.get(&ino).filter(|n| n.proc_files) else {
            return Vec::new();
        };
        let dir = self.proc_root.join(ns.pid.to_string()).join("net");
        let files: [&str; 2] = if tcp { ["tcp", "tcp6"] } else { ["udp", "udp6"] };
        let mut out = Vec::new();
        for f in files {
            // bounded: a namespace's socket table, read as the kernel writes it
            let mut t = Vec::new();
            if let Ok(file) = std::fs::File::open(dir.join(f)) {
                use std::io::Read;
                if file.take(16 << 20).read_to_end(&mut t).is_ok() {
                    out.extend(parse_proc_net(&String::from_utf8_lossy(&t), tcp));
                }
            }
        }
        // the process may have moved: only if it is still in that namespace
        if netns_of(&self.proc_root, ns.pid) != Some(ino) {
            return Vec::new();
        }
        out
    }

    /// The other namespaces in use now (re-read at most every [`REFRESH`]).
    pub fn namespaces(&mut self) -> Vec<u64> {
        self.refresh(false);
        self.spaces.keys().copied().collect()
    }

    /// Runs `f` on a thread inside namespace `ino` (e.g. to open a socket
    /// there: it stays in that namespace).
    pub fn run_in<T: Send>(&self, ino: u64, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
        let ns = self
            .spaces
            .get(&ino)
            .ok_or_else(|| std::io::Error::other("the namespace is gone"))?;
        in_namespace(&self.proc_root, ns.pid, ino, f)
    }

    /// Every socket of every other namespace, with its namespace.
    pub fn dump_all(&mut self) -> Vec<(SocketEntry, u64)> {
        self.refresh(false);
        let mut out = Vec::new();
        for ino in self.order() {
            match self.with_socket(ino, sock_diag_dump_on) {
                Some(v) => out.extend(v.into_iter().map(|e| (e, ino))),
                None => {
                    for tcp in [true, false] {
                        out.extend(self.proc_sockets(ino, tcp).into_iter().map(|e| (e, ino)));
                    }
                }
            }
        }
        out
    }
}

/// Whether a socket is the one of `local` → `remote` (IPv4 sockets show
/// as IPv4-mapped in the IPv6 table).
fn same_tuple(e: &SocketEntry, local: SocketAddr, remote: SocketAddr) -> bool {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    canon(e.local) == canon(local) && canon(e.remote) == canon(remote)
}

/// Runs `f` inside the network namespace of `pid`, checking that it is
/// still namespace `ino` (the pid may have exited and been reused).
fn in_namespace<T: Send>(proc_root: &Path, pid: u32, ino: u64, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
    let file = std::fs::File::open(proc_root.join(pid.to_string()).join("ns/net"))?;
    if file.metadata()?.ino() != ino {
        return Err(std::io::Error::other("the process moved to another namespace"));
    }
    // setns changes only the calling thread's namespace: do it in a thread
    // of its own, which ends right after.
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the privilege to enter it, a namespace's sockets come from
    /// the proc files of a process in it: here, this test's own listener.
    #[test]
    fn proc_files_serve_when_namespaces_cannot_be_entered() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut n = Netns::new(Path::new("/proc"));
        // pretend our own namespace is another one we may not enter
        n.spaces.insert(
            n.own,
            Ns {
                socket: None,
                pid: std::process::id(),
                last_hit: 0,
                failed: false,
                proc_files: true,
            },
        );
        n.refreshed = Some(Instant::now());
        let (e, ino) = n
            .lookup(true, c.local_addr().unwrap(), l.local_addr().unwrap())
            .expect("found in the proc files");
        assert_eq!((e.local, e.remote, ino), (c.local_addr().unwrap(), l.local_addr().unwrap(), n.own));
        assert!(e.inode != 0);
        assert!(n.dump_all().iter().any(|(s, _)| s.local == l.local_addr().unwrap()));
    }

    #[test]
    fn our_own_namespace_is_skipped() {
        let mut n = Netns::new(Path::new("/proc"));
        n.refresh(true);
        let me = netns_of(Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(me, n.own);
        assert!(!n.spaces.contains_key(&me));
        assert!(n.len() <= MAX_NAMESPACES);
    }
}
