//! Response (off by default): stop or kill a miner, and quarantine its
//! binary. The process is re-identified by pid AND start time right before
//! the signal, so a reused pid is never hit; pid 1, kernel threads and
//! rigwatch itself are never touched; allowlisted processes never become
//! findings in the first place. Dry run only logs.

use super::config::{Action, ResponseConfig};
use rigwatch_signatures::{Finding, Severity};
use std::collections::HashSet;
use std::path::Path;

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
}

/// Acts on findings at most once each.
pub struct Responder {
    cfg: ResponseConfig,
    proc_root: std::path::PathBuf,
    done: HashSet<String>,
}

impl Responder {
    /// A responder with a policy.
    pub fn new(cfg: ResponseConfig, proc_root: &Path) -> Self {
        Responder {
            cfg,
            proc_root: proc_root.to_path_buf(),
            done: HashSet::new(),
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
        if action == Action::None || self.done.contains(&f.id) {
            return None;
        }
        self.done.insert(f.id.clone());
        let name = if action == Action::Kill { "kill" } else { "stop" };
        let mut out = Outcome {
            action: name,
            pid,
            dry_run: self.cfg.dry_run,
            quarantined: None,
            skipped: None,
        };
        // re-identify: same pid, same start time, not a kernel thread, not us, not init
        let stat = std::fs::read(self.proc_root.join(pid.to_string()).join("stat")).ok();
        let now = stat.as_deref().and_then(crate::host::process::parse_stat);
        let why_not = match &now {
            None => Some("process gone".to_string()),
            Some(s) if s.starttime != f.process.start_time => Some("pid reused by another process".into()),
            Some(s) if s.flags & 0x0020_0000 != 0 => Some("kernel thread".into()),
            Some(_) if pid <= 1 || pid == std::process::id() => Some("protected process".into()),
            Some(_) => None,
        };
        if let Some(w) = why_not {
            out.skipped = Some(w);
            return Some(out);
        }
        if self.cfg.dry_run {
            return Some(out);
        }
        if self.cfg.quarantine {
            out.quarantined = self
                .quarantine(pid)
                .map_err(|e| out.skipped = Some(format!("quarantine failed: {e}")))
                .ok();
        }
        let sig = if action == Action::Kill {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGSTOP
        };
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
            out.skipped = Some(format!("signal failed: {e}"));
        }
        Some(out)
    }

    /// Copies the process's executable (through /proc/PID/exe, so deleted and
    /// memfd binaries too) into the root-only quarantine directory, named by
    /// its SHA-256, readable by root only and not executable.
    fn quarantine(&self, pid: u32) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = &self.cfg.quarantine_dir;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let bytes = std::fs::read(self.proc_root.join(pid.to_string()).join("exe"))?;
        let name = format!("{}.bin", hex::encode(Sha256::digest(&bytes)));
        let dst = dir.join(&name);
        std::fs::write(&dst, &bytes)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o400))?;
        Ok(dst.display().to_string())
    }
}
