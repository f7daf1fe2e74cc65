//! Why the agent is being stopped, said in its last event: beside the
//! signal, its own systemd unit masked or disabled since it started
//! (`systemctl mask --now`, `disable --now`), and its package being removed
//! or upgraded (the Debian package's `prerm` writes [`MARKER`] before it
//! stops the service). A collector then shows "stopped (SIGTERM: unit
//! masked)" rather than a bare "stopped".
//!
//! All of it is written by the host's root, who may be the one mining: the
//! words only add to what the collector shows. The host is stopped and goes
//! silent whatever they say; no alert is lowered by them. The marker is
//! believed only if root owns it, it is a plain file (read through
//! [`crate::host::safefile`]: inside the host root, the file no link,
//! never blocking) written after this agent started, and only its first
//! printable line, [`MAX_MARKER`] bytes at most, is read.

use crate::sensors::footprint::unit_state;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The file the package's `prerm` writes (under the host root).
pub const MARKER: &str = "run/rigwatch/stopping";
/// Bytes of the marker read at most.
pub const MAX_MARKER: usize = 96;
/// The unit the agent assumes when it does not run under systemd.
const DEFAULT_UNIT: &str = "rigwatch.service";

/// What the agent knew of its own unit when it started.
#[derive(Debug, Clone)]
pub struct StopContext {
    root: PathBuf,
    unit: String,
    started: SystemTime,
    enabled_at_start: bool,
    masked_at_start: bool,
}

/// The systemd service the process at `proc_root/self` runs in (from its
/// cgroup path), or [`DEFAULT_UNIT`].
pub fn own_unit(proc_root: &Path) -> String {
    let text = std::fs::read_to_string(proc_root.join("self/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|last| {
            last.ends_with(".service") && last.len() <= 128 && last.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| DEFAULT_UNIT.into())
}

/// The package marker's first line, if it is root's, a plain file and
/// written after `since`.
pub fn package_marker(root: &Path, since: SystemTime) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // inside the host root, the file itself no link, a regular file, never blocking
    let (buf, m) = crate::host::safefile::read_in_root_meta(root, Path::new(MARKER), MAX_MARKER as u64, 0).ok()?;
    if m.uid() != 0 || m.modified().ok()? < since {
        return None;
    }
    let line: String = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    let line = line.trim().to_string();
    (!line.is_empty()).then_some(line)
}

impl StopContext {
    /// The agent's unit and how it stood as the agent started.
    pub fn new(host_root: &Path, proc_root: &Path) -> StopContext {
        let unit = own_unit(proc_root);
        let st = unit_state(host_root, &unit);
        StopContext {
            enabled_at_start: st.enabled,
            masked_at_start: st.masked,
            root: host_root.to_path_buf(),
            unit,
            started: SystemTime::now(),
        }
    }

    /// The stop reason for `signal`: "SIGTERM", or "SIGTERM: unit
    /// rigwatch.service masked, package removed".
    pub fn reason(&self, signal: &str) -> String {
        let mut why = Vec::new();
        let st = unit_state(&self.root, &self.unit);
        if !self.masked_at_start && st.masked {
            why.push(format!("unit {} masked", self.unit));
        }
        if self.enabled_at_start && !st.enabled {
            why.push(format!("unit {} disabled", self.unit));
        }
        if let Some(p) = package_marker(&self.root, self.started) {
            why.push(p);
        }
        if why.is_empty() {
            signal.to_string()
        } else {
            format!("{signal}: {}", why.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn host() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
        std::fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
        std::fs::create_dir_all(root.join("run/rigwatch")).unwrap();
        std::fs::write(root.join("lib/systemd/system/rigwatch.service"), "[Service]\n").unwrap();
        symlink(
            "/lib/systemd/system/rigwatch.service",
            root.join("etc/systemd/system/multi-user.target.wants/rigwatch.service"),
        )
        .unwrap();
        (d, root)
    }

    fn ctx(root: &Path) -> StopContext {
        StopContext {
            root: root.to_path_buf(),
            unit: "rigwatch.service".into(),
            started: SystemTime::now() - std::time::Duration::from_secs(5),
            enabled_at_start: unit_state(root, "rigwatch.service").enabled,
            masked_at_start: false,
        }
    }

    #[test]
    fn own_unit_comes_from_the_cgroup() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("self")).unwrap();
        std::fs::write(d.path().join("self/cgroup"), "0::/system.slice/rigwatch.service\n").unwrap();
        assert_eq!(own_unit(d.path()), "rigwatch.service");
        std::fs::write(d.path().join("self/cgroup"), "0::/system.slice/rw@node-1.service\n").unwrap();
        assert_eq!(own_unit(d.path()), "rw@node-1.service");
        std::fs::write(d.path().join("self/cgroup"), "0::/user.slice/session-3.scope\n").unwrap();
        assert_eq!(own_unit(d.path()), DEFAULT_UNIT);
        std::fs::write(d.path().join("self/cgroup"), "0::/x/evil$(id).service\n").unwrap();
        assert_eq!(own_unit(d.path()), DEFAULT_UNIT, "odd bytes are not a unit name");
    }

    #[test]
    fn masked_disabled_and_removed_are_said() {
        let (_d, root) = host();
        let c = ctx(&root);
        assert!(c.enabled_at_start);
        assert_eq!(c.reason("SIGTERM"), "SIGTERM");
        // systemctl mask --now; disable
        symlink("/dev/null", root.join("etc/systemd/system/rigwatch.service")).unwrap();
        std::fs::remove_file(root.join("etc/systemd/system/multi-user.target.wants/rigwatch.service")).unwrap();
        assert_eq!(
            c.reason("SIGTERM"),
            "SIGTERM: unit rigwatch.service masked, unit rigwatch.service disabled"
        );
        // the package's prerm
        std::fs::write(root.join(MARKER), "package removed\x1b[31m\nsecond line\n").unwrap();
        assert!(c.reason("SIGINT").ends_with(", package removed[31m"), "{}", c.reason("SIGINT"));
    }

    #[test]
    fn a_marker_that_is_old_linked_long_or_not_roots_is_not_believed() {
        let (_d, root) = host();
        let c = ctx(&root);
        let m = root.join(MARKER);
        // written before the agent started: an earlier upgrade's
        std::fs::write(&m, "package upgrade to 0.1.1\n").unwrap();
        let before = SystemTime::now() - std::time::Duration::from_secs(60);
        let f = std::fs::File::options().write(true).open(&m).unwrap();
        f.set_modified(before).unwrap();
        assert_eq!(c.reason("SIGTERM"), "SIGTERM");
        // a link, to anything
        std::fs::remove_file(&m).unwrap();
        let target = root.join("elsewhere");
        std::fs::write(&target, "package removed\n").unwrap();
        symlink(&target, &m).unwrap();
        assert_eq!(package_marker(&root, c.started), None);
        // a FIFO is not read (nothing blocks)
        std::fs::remove_file(&m).unwrap();
        nix::unistd::mkfifo(&m, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(package_marker(&root, c.started), None);
        // long: cut
        std::fs::remove_file(&m).unwrap();
        std::fs::write(&m, "x".repeat(10_000)).unwrap();
        assert_eq!(package_marker(&root, c.started).unwrap().len(), MAX_MARKER);
        // someone else's
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&m, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert_eq!(package_marker(&root, c.started), None);
        }
    }
}
