//! Per-cgroup CPU: the kernel's own account of each cgroup's CPU (cgroup v2
//! `cpu.stat` `usage_usec`) against what the cgroup's listed processes used
//! over the same long window. The difference is CPU spent by processes the
//! listing does not show: a miner restarted every minute by cron or a
//! watchdog (no single process lives long enough to count), or one hidden
//! from /proc. Such CPU becomes `cgroup_cpu` evidence (activity, like `cpu`)
//! on the cgroup's listed processes. CPU that not even the listed processes'
//! reaped children account for (a process hidden from the listing, or one
//! that escaped its parent) is a host finding about the cgroup.

use super::{Observation, ProcKey, Sensor, SensorError, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, HostSubject, SubjectKind, Weight};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Most cgroups followed at once (a host with more leaves keeps the first).
const MAX_CGROUPS: usize = 4096;

/// A listed process's CPU ticks: its own, and its own plus its reaped children's.
type Ticks = (u64, u64);

struct Sample {
    at: Instant,
    usage_usec: u64,
    /// Per listed process: its own ticks, and its own plus its reaped children's.
    ticks: HashMap<ProcKey, Ticks>,
}

/// The per-cgroup CPU sensor.
pub struct CgroupCpuSensor {
    root: PathBuf,
    window: f64,
    threshold: f64,
    history: HashMap<String, VecDeque<Sample>>,
    up: bool,
}

impl CgroupCpuSensor {
    /// Cgroups under `cgroup_root` (normally /sys/fs/cgroup); CPU not
    /// accounted for by listed processes of at least `threshold` cores
    /// over `window` seconds counts.
    /// On a hybrid (v1 + v2) host the v2 hierarchy is `cgroup_root/unified`.
    pub fn new(cgroup_root: &Path, window: f64, threshold: f64) -> Self {
        let unified = [cgroup_root.to_path_buf(), cgroup_root.join("unified")]
            .into_iter()
            .find(|r| r.join("cgroup.controllers").exists());
        CgroupCpuSensor {
            up: unified.is_some(),
            root: unified.unwrap_or_else(|| cgroup_root.to_path_buf()),
            window: window.max(0.1),
            threshold,
            history: HashMap::new(),
        }
    }
}

/// `usage_usec` from a cgroup v2 `cpu.stat`.
pub fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

impl Sensor for CgroupCpuSensor {
    fn name(&self) -> &'static str {
        "cgroup_cpu"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        if !self.up {
            return Err(SensorError {
                sensor: "cgroup_cpu",
                message: format!("unavailable: no cgroup v2 hierarchy at {}", self.root.display()),
            });
        }
        if snap.partial {
            return Ok(());
        }
        let mut members: HashMap<&str, Vec<(ProcKey, Ticks)>> = HashMap::new();
        for p in snap.procs.values() {
            // the root cgroup's account is the whole machine's
            if p.kernel_thread || p.fixed.cgroup.is_empty() || p.fixed.cgroup == "/" {
                continue;
            }
            if members.len() < MAX_CGROUPS || members.contains_key(p.fixed.cgroup.as_str()) {
                members
                    .entry(p.fixed.cgroup.as_str())
                    .or_default()
                    .push((p.key, (p.cpu_ticks, p.cpu_ticks + p.child_ticks)));
            }
        }
        self.history.retain(|cg, _| members.contains_key(cg.as_str()));
        let usec_per_tick = 1e6 / snap.ticks_per_second.max(1) as f64;
        for (cg, procs) in members {
            let Some(usage) = std::fs::read_to_string(self.root.join(cg.trim_start_matches('/')).join("cpu.stat"))
                .ok()
                .as_deref()
                .and_then(usage_usec)
            else {
                continue;
            };
            let h = self.history.entry(cg.to_string()).or_default();
            // the newest sample at least a window old is the base; older ones go
            while h.len() >= 2 && snap.at.saturating_duration_since(h[1].at).as_secs_f64() >= self.window {
                h.pop_front();
            }
            if let Some(base) = h.front() {
                let secs = snap.at.saturating_duration_since(base.at).as_secs_f64();
                if secs >= self.window && usage >= base.usage_usec {
                    let (mut listed_usec, mut with_children_usec) = (0.0, 0.0);
                    for (k, (own, all)) in &procs {
                        let (own0, all0) = base.ticks.get(k).copied().unwrap_or((0, 0));
                        listed_usec += own.saturating_sub(own0) as f64 * usec_per_tick;
                        with_children_usec += all.saturating_sub(all0) as f64 * usec_per_tick;
                    }
                    let used = (usage - base.usage_usec) as f64;
                    let cores = used / secs / 1e6;
                    let unaccounted = (used - listed_usec).max(0.0) / secs / 1e6;
                    // not even the listed processes' reaped children used it: hidden or escaped processes
                    let unexplained = (used - with_children_usec).max(0.0) / secs / 1e6;
                    if unaccounted >= self.threshold {
                        let round2 = |x: f64| (x * 100.0).round() / 100.0;
                        let detail = EvidenceKind::CgroupCpu {
                            cgroup: cg.to_string(),
                            cores: round2(cores),
                            unaccounted_cores: round2(unaccounted),
                            window_seconds: round2(secs),
                        };
                        for (k, _) in &procs {
                            out.push(Observation::Evidence(*k, Evidence::heuristic(detail.clone(), Weight::Info)));
                        }
                        if unexplained >= self.threshold {
                            // a host finding of its own: a build's short-lived compilers are
                            // reaped by a listed parent, a hidden miner's CPU is nobody's
                            let detail = EvidenceKind::CgroupCpu {
                                cgroup: cg.to_string(),
                                cores: round2(cores),
                                unaccounted_cores: round2(unexplained),
                                window_seconds: round2(secs),
                            };
                            let subject = HostSubject {
                                kind: SubjectKind::Cgroup,
                                name: cg.to_string(),
                            };
                            out.push(Observation::Host(subject, Evidence::heuristic(detail, Weight::Suspicious)));
                        }
                    }
                }
            }
            h.push_back(Sample {
                at: snap.at,
                usage_usec: usage,
                ticks: procs.iter().copied().collect(),
            });
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("cgroups_followed", self.history.len() as u64)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::process::{Proc, ProcStatic};
    use std::sync::Arc;
    use std::time::Duration;

    fn proc(pid: u32, cgroup: &str, ticks: u64) -> Proc {
        let fixed = ProcStatic {
            comm: "x".into(),
            cgroup: cgroup.into(),
            ..Default::default()
        };
        let mut p = Proc::new(ProcKey { pid, start_time: 1 }, 1, Arc::new(fixed));
        p.cpu_ticks = ticks;
        p
    }

    fn snap(at: Instant, procs: Vec<Proc>) -> Snapshot {
        Snapshot {
            at,
            procs: procs.into_iter().map(|p| (p.key, p)).collect(),
            ticks_per_second: 100,
            partial: false,
        }
    }

    #[test]
    fn cpu_of_processes_that_come_and_go_is_seen_per_cgroup() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        for cg in ["system.slice/cron.service", "system.slice/web.service"] {
            std::fs::create_dir_all(root.join(cg)).unwrap();
        }
        let stat = |cg: &str, usec: u64| {
            std::fs::write(
                root.join(cg).join("cpu.stat"),
                format!("usage_usec {usec}\nuser_usec 0\nsystem_usec 0\n"),
            )
            .unwrap()
        };
        let mut s = CgroupCpuSensor::new(root, 60.0, 0.15);
        let t0 = Instant::now();
        // cron: the cron daemon used 0.05 cores itself, while a miner restarted every minute burned 0.45
        // web: one long-lived process that uses all of its cgroup's 0.8 cores itself
        stat("system.slice/cron.service", 1_000_000);
        stat("system.slice/web.service", 5_000_000);
        let mut out = Vec::new();
        s.observe(
            &snap(
                t0,
                vec![
                    proc(10, "/system.slice/cron.service", 5),
                    proc(20, "/system.slice/web.service", 500),
                ],
            ),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty(), "one sample is no window");
        stat("system.slice/cron.service", 1_000_000 + 30_000_000);
        stat("system.slice/web.service", 5_000_000 + 48_000_000);
        let t1 = t0 + Duration::from_secs(60);
        s.observe(
            &snap(
                t1,
                vec![
                    proc(10, "/system.slice/cron.service", 305),
                    proc(20, "/system.slice/web.service", 500 + 4800),
                ],
            ),
            &mut out,
        )
        .unwrap();
        let ev: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Observation::Evidence(k, e) => Some((k.pid, e.clone())),
                _ => None,
            })
            .collect();
        let host: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Observation::Host(s, e) => Some((s.clone(), e.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(ev.len(), 1, "only cron's CPU is unaccounted: {ev:?}");
        assert_eq!(ev[0].0, 10);
        match &ev[0].1.detail {
            EvidenceKind::CgroupCpu {
                cgroup,
                cores,
                unaccounted_cores,
                window_seconds,
            } => {
                assert_eq!(cgroup, "/system.slice/cron.service");
                assert_eq!((*cores, *unaccounted_cores, *window_seconds), (0.5, 0.45, 60.0));
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(ev[0].1.weight, Weight::Info);
        assert_eq!(host.len(), 1, "the cgroup is a host finding: {host:?}");
        assert_eq!(host[0].0.kind, SubjectKind::Cgroup);
        assert_eq!(host[0].0.name, "/system.slice/cron.service");
        assert_eq!(host[0].1.weight, Weight::Suspicious);
        assert!(
            host[0]
                .1
                .summary()
                .contains("/system.slice/cron.service used 0.50 cores over 60s, 0.45 of them"),
            "{}",
            host[0].1.summary()
        );
    }

    #[test]
    fn cpu_of_children_a_listed_process_reaped_is_no_host_finding() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu\n").unwrap();
        std::fs::create_dir_all(root.join("user.slice/build")).unwrap();
        let stat = |usec: u64| std::fs::write(root.join("user.slice/build/cpu.stat"), format!("usage_usec {usec}\n")).unwrap();
        let mut s = CgroupCpuSensor::new(root, 60.0, 0.15);
        let t0 = Instant::now();
        stat(0);
        let mut make = proc(30, "/user.slice/build", 10);
        let mut out = Vec::new();
        s.observe(&snap(t0, vec![make.clone()]), &mut out).unwrap();
        // make used 0.1 s itself; the compilers it started and reaped used 59.9 s
        stat(60_000_000);
        make.cpu_ticks = 20;
        make.child_ticks = 5990;
        s.observe(&snap(t0 + Duration::from_secs(60), vec![make]), &mut out).unwrap();
        assert!(
            out.iter()
                .any(|o| matches!(o, Observation::Evidence(k, e) if k.pid == 30 && e.kind() == "cgroup_cpu")),
            "the CPU is still activity of the cgroup's processes: {out:?}"
        );
        assert!(
            !out.iter().any(|o| matches!(o, Observation::Host(..))),
            "reaped children explain it: {out:?}"
        );
    }

    #[test]
    fn no_cgroup_v2_is_unavailable() {
        let d = tempfile::tempdir().unwrap();
        let mut s = CgroupCpuSensor::new(d.path(), 60.0, 0.15);
        let e = s.observe(&snap(Instant::now(), vec![]), &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("no cgroup v2 hierarchy"), "{e}");
    }
}
