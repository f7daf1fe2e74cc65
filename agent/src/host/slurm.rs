//! Slurm's jobs on this node, as `squeue` lists them: which users hold
//! which jobs, in which state, with which generic resources (GPUs).
//!
//! The GPU sensor asks only when a process uses a GPU outside any
//! scheduler job, to say whose use it is against what that user holds
//! ("alice holds job 4242, RUNNING, gres/gpu:1, whose processes use no
//! GPU"). `squeue` runs with a time limit, its output is capped, and the
//! answer is kept for [`REFRESH`]: a slow or hung controller never stalls a
//! pass, and a busy GPU host does not ask it every pass.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `squeue` may run.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answer is kept.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Most bytes of `squeue` output read.
pub const MAX_OUTPUT: usize = 1 << 20;
/// Most jobs kept.
pub const MAX_JOBS: usize = 10_000;
/// Longest field kept.
const MAX_FIELD: usize = 128;
/// The `squeue` output format: id, user, uid, state, generic resources.
pub const FORMAT: &str = "%i|%u|%U|%T|%b";

/// One job on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Job id (`4242`, `4242_7` for an array task).
    pub id: String,
    /// Owner's user name.
    pub user: String,
    /// Owner's uid, when squeue gave a number.
    pub uid: Option<u32>,
    /// `RUNNING`, `PENDING`, `SUSPENDED`…
    pub state: String,
    /// Generic resources per node (`gres/gpu:1`), `N/A` when none.
    pub gres: String,
}

impl Job {
    /// The job asks for GPUs.
    pub fn has_gpus(&self) -> bool {
        self.gres.contains("gpu")
    }

    /// `job 4242 (RUNNING, gres/gpu:1)`.
    pub fn describe(&self) -> String {
        format!("job {} ({}, {})", self.id, self.state, self.gres)
    }
}

/// Parses `squeue --noheader --format='%i|%u|%U|%T|%b'` output. Lines that
/// do not have five fields are skipped; fields are clipped; at most
/// [`MAX_JOBS`] jobs.
pub fn parse(text: &str) -> Vec<Job> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().splitn(5, '|').map(str::trim).collect();
            let [id, user, uid, state, gres] = f[..] else { return None };
            if id.is_empty() || user.is_empty() {
                return None;
            }
            Some(Job {
                id: clip(id),
                user: clip(user),
                uid: uid.parse().ok(),
                state: clip(state),
                gres: clip(if gres.is_empty() { "N/A" } else { gres }),
            })
        })
        .take(MAX_JOBS)
        .collect()
}

fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(MAX_FIELD).collect()
}

/// The node's jobs, from `squeue`, cached.
pub struct SlurmJobs {
    squeue: PathBuf,
    node: String,
    last: Option<(Instant, Result<Vec<Job>, String>)>,
}

impl SlurmJobs {
    /// Jobs on `node` from the `squeue` program at `squeue`.
    pub fn new(squeue: PathBuf, node: String) -> Self {
        SlurmJobs { squeue, node, last: None }
    }

    /// `squeue` found in `PATH` (`None` on a host without Slurm), for this
    /// host's short name.
    pub fn from_path() -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        let squeue = std::env::split_paths(&path).map(|d| d.join("squeue")).find(|p| is_executable(p))?;
        Some(Self::new(squeue, short_hostname()))
    }

    /// The jobs on this node, asked again when the last answer is older
    /// than [`REFRESH`]. An error says why the list is unknown.
    pub fn jobs(&mut self, now: Instant) -> &Result<Vec<Job>, String> {
        let fresh = self
            .last
            .as_ref()
            .is_some_and(|(at, _)| now.checked_duration_since(*at).is_some_and(|d| d < REFRESH));
        if !fresh {
            let r = run(&self.squeue, &self.node).map(|t| parse(&t));
            self.last = Some((now, r));
        }
        &self.last.as_ref().expect("just set").1
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// This host's name up to the first dot (Slurm's usual node name).
pub fn short_hostname() -> String {
    let h = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    h.split('.').next().unwrap_or("").to_string()
}

/// Runs squeue for `node`, at most [`TIMEOUT`], reading at most [`MAX_OUTPUT`] bytes.
fn run(squeue: &Path, node: &str) -> Result<String, String> {
    let mut child = Command::new(squeue)
        .args(["--noheader", "--all", "--format", FORMAT, "--nodelist", node])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", squeue.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(MAX_OUTPUT as u64).read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer within {}s", squeue.display(), TIMEOUT.as_secs()));
            }
        }
    };
    // the child has exited; a grandchild holding the pipe open must not hold us
    let out = if reader.is_finished() || {
        std::thread::sleep(Duration::from_millis(100));
        reader.is_finished()
    } {
        reader.join().unwrap_or_default()
    } else {
        return Err(format!("{}: output still open after it exited", squeue.display()));
    };
    if !status.success() {
        return Err(format!("{} failed ({status})", squeue.display()));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_jobs_and_junk_is_skipped() {
        let jobs = parse("4242|alice|1001|RUNNING|gres/gpu:1\n\nbroken line\n4243_7|bob|x|PENDING|\n|nobody|1|RUNNING|N/A\n");
        assert_eq!(
            jobs,
            vec![
                Job {
                    id: "4242".into(),
                    user: "alice".into(),
                    uid: Some(1001),
                    state: "RUNNING".into(),
                    gres: "gres/gpu:1".into()
                },
                Job {
                    id: "4243_7".into(),
                    user: "bob".into(),
                    uid: None,
                    state: "PENDING".into(),
                    gres: "N/A".into()
                },
            ]
        );
        assert!(jobs[0].has_gpus() && !jobs[1].has_gpus());
        assert_eq!(jobs[0].describe(), "job 4242 (RUNNING, gres/gpu:1)");
    }

    #[test]
    fn fields_are_clipped_and_cleaned() {
        let long = "a".repeat(10_000);
        let jobs = parse(&format!("1|{long}|5|RUN\u{1b}[2JNING|gpu\n"));
        assert_eq!(jobs[0].user.len(), MAX_FIELD);
        assert_eq!(jobs[0].state, "RUN[2JNING");
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("squeue");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn squeue_is_asked_once_per_refresh_with_the_node_name() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("calls");
        let sq = script(
            d.path(),
            &format!("echo \"$@\" >> {}\necho '7|carol|1002|RUNNING|gres/gpu:2'", log.display()),
        );
        let mut s = SlurmJobs::new(sq, "gpu01".into());
        let t = Instant::now();
        assert_eq!(s.jobs(t).as_ref().unwrap()[0].user, "carol");
        assert_eq!(s.jobs(t + Duration::from_secs(5)).as_ref().unwrap().len(), 1);
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls.lines().count(), 1, "{calls}");
        assert!(calls.contains("--nodelist gpu01") && calls.contains(FORMAT), "{calls}");
        s.jobs(t + REFRESH + Duration::from_secs(1)).as_ref().unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_hung_or_failing_squeue_is_an_error_not_a_stall() {
        let d = tempfile::tempdir().unwrap();
        let mut hung = SlurmJobs::new(script(d.path(), "exec sleep 60"), "n".into());
        let t = Instant::now();
        let e = hung.jobs(t).clone().unwrap_err();
        assert!(e.contains("did not answer within 3s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let d2 = tempfile::tempdir().unwrap();
        let mut failing = SlurmJobs::new(script(d2.path(), "echo 'slurm_load_jobs error' >&2; exit 1"), "n".into());
        assert!(failing.jobs(Instant::now()).clone().unwrap_err().contains("failed"));
        // a child that leaves a grandchild holding stdout does not hold the pass
        let d3 = tempfile::tempdir().unwrap();
        let mut forked = SlurmJobs::new(script(d3.path(), "sleep 60 &\necho '1|a|1|RUNNING|N/A'"), "n".into());
        let t = Instant::now();
        let _ = forked.jobs(t);
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
