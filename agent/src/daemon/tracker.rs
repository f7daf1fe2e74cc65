//! Finding lifecycle: each pass's findings become opened, updated and
//! resolved events. CPU and GPU figures change every pass and are not an
//! update by themselves; a new kind of evidence or a new severity is.

use rigwatch_signatures::Finding;
use std::collections::{BTreeSet, HashMap};

/// A change to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new finding.
    Opened(Finding),
    /// Severity or evidence changed.
    Updated(Finding),
    /// The finding ended.
    Resolved {
        /// Its id.
        id: String,
        /// Why.
        reason: String,
        /// The finding as it last was (for the SIEM's closing event).
        last: Box<Finding>,
    },
}

/// Active findings by id.
#[derive(Default)]
pub struct Tracker {
    active: HashMap<String, Finding>,
}

fn shape(f: &Finding) -> (rigwatch_signatures::Severity, BTreeSet<(String, Option<String>)>) {
    let ev = f
        .evidence
        .iter()
        .filter(|e| !matches!(e.kind(), "cpu" | "gpu"))
        .map(|e| (e.kind().to_string(), e.rule.clone()))
        .collect();
    (f.severity, ev)
}

impl Tracker {
    /// Restores the active set saved by [`Tracker::save`] (so a restarted
    /// agent does not open again what it had already reported).
    pub fn load(path: &std::path::Path) -> Tracker {
        let active = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Finding>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.id.clone(), f))
            .collect();
        Tracker { active }
    }

    /// Saves the active set atomically (write, fsync, rename).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = super::spool::create_private(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.active.values().collect::<Vec<_>>())?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Resolves the findings whose process has exited (cheap: one check per
    /// active finding); used between full passes.
    pub fn resolve_exited(&mut self, alive: &mut dyn FnMut(u32, u64) -> bool) -> Vec<Change> {
        let gone: Vec<String> = self
            .active
            .values()
            .filter(|f| f.pid.is_some_and(|pid| !alive(pid, f.process.start_time)))
            .map(|f| f.id.clone())
            .collect();
        gone.into_iter()
            .filter_map(|id| {
                let last = Box::new(self.active.remove(&id)?);
                Some(Change::Resolved {
                    id,
                    reason: "process exited".into(),
                    last,
                })
            })
            .collect()
    }

    /// Active findings.
    pub fn active(&self) -> Vec<&Finding> {
        self.active.values().collect()
    }

    /// Takes a pass's findings. `alive(pid, start_time)` says whether a
    /// process still exists (to tell "exited" from "evidence gone").
    /// With `partial` (an exec-triggered pass over a few processes), nothing is resolved.
    pub fn update(&mut self, findings: Vec<Finding>, alive: &mut dyn FnMut(u32, u64) -> bool, now: u64, partial: bool) -> Vec<Change> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for mut f in findings {
            seen.insert(f.id.clone());
            match self.active.get(&f.id) {
                None => {
                    f.first_seen = now;
                    f.last_seen = now;
                    out.push(Change::Opened(f.clone()));
                    self.active.insert(f.id.clone(), f);
                }
                Some(old) => {
                    f.first_seen = old.first_seen;
                    f.last_seen = now;
                    if shape(old) != shape(&f) {
                        out.push(Change::Updated(f.clone()));
                    }
                    self.active.insert(f.id.clone(), f);
                }
            }
        }
        if partial {
            return out;
        }
        let gone: Vec<String> = self
            .active
            .iter()
            // a flow's evidence is remembered by the detector (detector::FLOW_MEMORY): not
            // reported any more, it is over
            .filter(|(id, _)| !seen.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let f = self.active.remove(&id).expect("listed above");
            let reason = match f.pid {
                Some(pid) if !alive(pid, f.process.start_time) => "process exited",
                Some(_) => "evidence gone",
                None if f.subject.is_some() => "no longer seen on the host",
                None => "flow not seen again",
            };
            out.push(Change::Resolved {
                id,
                reason: reason.into(),
                last: Box::new(f),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::{Evidence, EvidenceKind, ProcessInfo, Weight};

    fn finding(pid: u32, cores: f64, extra: bool) -> Finding {
        let mut ev = vec![
            Evidence::heuristic(
                EvidenceKind::ProcessName {
                    name: "xmrig".into(),
                    field: "comm".into(),
                },
                Weight::Likely,
            ),
            Evidence::heuristic(
                EvidenceKind::Cpu {
                    cores,
                    window_seconds: 10.0,
                },
                Weight::Info,
            ),
        ];
        if extra {
            ev.push(Evidence::heuristic(
                EvidenceKind::Stratum {
                    dialect: "cryptonote".into(),
                    method: "login".into(),
                    agent: None,
                    login: None,
                    worker: None,
                    remote: "x".into(),
                },
                Weight::Confirmed,
            ));
        }
        Finding::assess(
            "h",
            ProcessInfo {
                pid,
                start_time: 7,
                ..Default::default()
            },
            ev,
            1,
        )
        .unwrap()
    }

    #[test]
    fn open_update_resolve() {
        let mut t = Tracker::default();
        let c = t.update(vec![finding(10, 1.0, false)], &mut |_, _| true, 100, false);
        assert!(matches!(&c[..], [Change::Opened(f)] if f.first_seen == 100));
        // CPU changes alone are no update
        assert!(t.update(vec![finding(10, 1.7, false)], &mut |_, _| true, 110, false).is_empty());
        let c = t.update(vec![finding(10, 1.7, true)], &mut |_, _| true, 120, false);
        assert!(matches!(&c[..], [Change::Updated(f)] if f.severity == rigwatch_signatures::Severity::Confirmed && f.first_seen == 100));
        let c = t.update(vec![], &mut |_, _| false, 130, false);
        let want = finding(10, 0.0, false).id;
        assert!(
            matches!(&c[..], [Change::Resolved { id, reason, last }] if *id == want && reason == "process exited" && last.id == want),
            "{c:?}"
        );
        t.update(vec![finding(11, 1.0, false)], &mut |_, _| true, 140, false);
        let c = t.update(vec![], &mut |_, _| true, 150, false);
        assert!(matches!(&c[..], [Change::Resolved { reason, .. }] if reason == "evidence gone"));
        assert!(t.active().is_empty());
    }
}
