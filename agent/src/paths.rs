//! Where the agent reads the host: the one place that names `/proc`, `/sys`
//! and `/` (node_exporter's `collector/paths.go` is the model). Every other
//! module takes these roots from the configuration, so tests point them at
//! fixture trees; a test (`no_host_path_literals_outside_paths`) keeps it so.

use std::path::{Path, PathBuf};

/// The live host's proc filesystem.
pub const PROC: &str = "/proc";
/// The live host's root directory.
pub const ROOT: &str = "/";
/// The bundled configuration's signature directory.
pub const SIGNATURE_DIR: &str = "/etc/rigwatch/signatures.d";

/// This process's own executable, through the live proc filesystem.
pub fn self_exe() -> PathBuf {
    Path::new(PROC).join("self/exe")
}

/// The network namespace of the calling thread (setns moves threads, not
/// processes, so `self` would name the main thread's).
pub fn own_netns() -> PathBuf {
    Path::new(PROC).join("thread-self/ns/net")
}

/// A path through one of this process's open file descriptors (a private
/// procfs mount held only as an fd).
pub fn own_fd(fd: i32) -> PathBuf {
    Path::new(PROC).join("self/fd").join(fd.to_string())
}

/// The x_tables (iptables-legacy) tables loaded in this process's network
/// namespace, by family file (`ip_tables_names`, `ip6_tables_names`).
pub fn own_net(file: &str) -> PathBuf {
    Path::new(PROC).join("self/net").join(file)
}

/// Whether `root` is the live host's proc filesystem, whatever it is called
/// (`/proc`, `/host/proc` bind-mounted from the host in a container, a
/// symlink): it is when its `self` names this very process. Netlink answers
/// (sock_diag) describe the live host, so they are right only then.
pub fn is_live_proc(root: &Path) -> bool {
    std::fs::read_link(root.join("self"))
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_proc_is_recognised_and_a_fixture_is_not() {
        assert!(is_live_proc(Path::new(PROC)));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_live_proc(d.path()));
        std::os::unix::fs::symlink("12345678", d.path().join("self")).unwrap();
        assert!(!is_live_proc(d.path()), "a fixture's self is not us");
    }

    /// No `/proc`, `/sys` or `/etc` literal in the agent's code outside this
    /// module (tests excepted): every host path comes from a configured root.
    #[test]
    fn no_host_path_literals_outside_paths() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") || p.ends_with("paths.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // the code before the file's test module
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for (i, line) in code.lines().enumerate() {
                    let l = line.trim_start();
                    if l.starts_with("//") {
                        continue;
                    }
                    if ["\"/proc\"", "\"/proc/", "\"/sys\"", "\"/sys/", "\"/etc/"]
                        .iter()
                        .any(|lit| l.contains(lit))
                    {
                        bad.push(format!("{}:{}: {}", p.strip_prefix(&src).unwrap().display(), i + 1, l));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "host path literals outside paths.rs:\n{}", bad.join("\n"));
    }
}
