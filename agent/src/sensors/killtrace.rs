//! The kill-trace sensor (eBPF): who kills whom, for the trojan's footprint.
//! Mining trojans kill the miners already on a host before they start their
//! own (`pkill -9 xmrig`, `ps aux | grep … | xargs kill -9`, or from the
//! miner itself); by the next pass the rivals are gone and `/proc` keeps no
//! trace of who did it.
//!
//! `bpf/kill.bpf.c` runs on `signal_generate` and reports each SIGKILL or
//! SIGTERM a user-space process delivers to another process, with both ends
//! (pid, parent, user, start time, comm). A thread here drains the ring
//! buffer into a bounded queue; each pass groups the kills by killer (a
//! `kill`, `pkill`, `killall` or `xargs` counts for the script that ran
//! it) and reports, as a host footprint finding named after the killer:
//!
//! - **rival miners killed**: a target whose comm is a miner's name
//!   (the signatures' name rules);
//! - **a kill burst**: [`BURST_TARGETS`] or more distinct processes killed
//!   within [`BURST_WINDOW`].
//!
//! Each is `suspicious` (an admin's `pkill -f` is his right), held for
//! [`HOLD`] after the last kill, then resolved; the killer and its script,
//! while they run, carry the same evidence, so a miner that kills its
//! rivals is judged with it. Not counted: init (pid 1) and the agent, and a
//! process killing its own children or its siblings (shells, supervisors,
//! `runc kill`, test runners); siblings under pid 1 do count (a daemonized
//! trojan and the daemonized rival it kills are both children of init).
//!
//! What the miner controls: every comm (only matched and shown) and how
//! many signals it sends: the queue, the killers held and the targets named
//! per killer are bounded (oldest first, counted). Unavailable without
//! CAP_BPF + CAP_PERFMON, BTF or clang at build time, like the other eBPF
//! sensors.

use super::{Observation, ProcKey, Sensor, SensorError, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, HostSubject, Signatures, SubjectKind, Weight};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kill.bpf.o"));

/// The event's layout (see `struct kill_event`).
const EVENT_LEN: usize = 8 * 4 + 3 * 8 + 3 * 16;
/// Kills kept between passes (the oldest go first).
pub const MAX_QUEUED: usize = 4096;
/// Killers held at once (the least recent go first).
pub const MAX_KILLERS: usize = 32;
/// Targets remembered per killer.
pub const MAX_TARGETS: usize = 64;
/// Targets named in a finding's evidence.
const NAMED: usize = 6;
/// Distinct processes killed within [`BURST_WINDOW`] that make a burst.
pub const BURST_TARGETS: usize = 5;
/// The window of a burst.
pub const BURST_WINDOW: Duration = Duration::from_secs(10);
/// How long a killer's finding stays after its last kill.
pub const HOLD: Duration = Duration::from_secs(15 * 60);
/// Commands that kill for a script: their kills count for their parent.
const KILL_TOOLS: &[&str] = &["kill", "pkill", "killall", "killall5", "skill", "xargs"];

/// One delivered kill, as the kernel saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kill {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub sig: u32,
    pub target: u32,
    pub target_ppid: u32,
    pub target_uid: u32,
    /// Start times, nanoseconds since boot (as `/proc/PID/stat` counts them).
    pub start_ns: u64,
    pub parent_start_ns: u64,
    pub target_start_ns: u64,
    pub comm: String,
    pub target_comm: String,
    pub parent_comm: String,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decodes one ring-buffer record; `None` when it is not a whole event.
pub fn parse(rec: &[u8]) -> Option<Kill> {
    if rec.len() < EVENT_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(rec[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_ne_bytes(rec[o..o + 8].try_into().unwrap());
    Some(Kill {
        pid: u32_at(0),
        ppid: u32_at(4),
        uid: u32_at(8),
        sig: u32_at(12),
        target: u32_at(16),
        target_ppid: u32_at(20),
        target_uid: u32_at(24),
        start_ns: u64_at(32),
        parent_start_ns: u64_at(40),
        target_start_ns: u64_at(48),
        comm: cstr(&rec[56..72]),
        target_comm: cstr(&rec[72..88]),
        parent_comm: cstr(&rec[88..104]),
    })
}

fn signal_name(sig: u32) -> &'static str {
    match sig {
        9 => "SIGKILL",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Who a kill counts for: the killer, or the script that ran a kill tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct KillerKey {
    pid: u32,
    start_ns: u64,
}

/// A killer's kills, as held between passes.
#[derive(Debug, Clone)]
struct Killer {
    comm: String,
    /// The processes that sent the signals (the killer itself, or its kill tools).
    senders: BTreeSet<(u32, u64)>,
    uid: u32,
    /// (pid, start) → (comm, uid, signal, when)
    targets: BTreeMap<(u32, u64), (String, u32, u32, Instant)>,
    /// Targets beyond [`MAX_TARGETS`].
    more: u64,
    /// Targets named like miners (by the signatures in force when killed).
    miners: BTreeSet<(u32, u64)>,
    /// Whether [`BURST_TARGETS`] fell within [`BURST_WINDOW`] at some point.
    burst: bool,
    last: Instant,
}

/// What [`judge`] keeps of a kill; `None` when it does not count.
fn counted(k: &Kill, me: u32) -> Option<KillerKey> {
    if k.pid <= 1 || k.pid == me || k.target == me {
        return None;
    }
    let tool = KILL_TOOLS.contains(&k.comm.as_str());
    let key = if tool && k.ppid > 1 {
        KillerKey {
            pid: k.ppid,
            start_ns: k.parent_start_ns,
        }
    } else {
        KillerKey {
            pid: k.pid,
            start_ns: k.start_ns,
        }
    };
    // its own children, its siblings, or (for a tool) its script's children
    let own = k.target_ppid == k.pid || k.target_ppid == key.pid || (k.target_ppid == k.ppid && k.ppid > 1);
    (!own).then_some(key)
}

/// The held killers, updated by new kills.
#[derive(Debug, Default)]
pub struct Kills {
    killers: BTreeMap<KillerKey, Killer>,
    /// Kills ignored (init, the agent, own children and siblings).
    pub ignored: u64,
    /// Killers or targets forgotten to the caps.
    pub forgotten: u64,
}

impl Kills {
    /// Takes one kill seen at `at`; `miner` says whether its target's comm
    /// is a miner's name.
    pub fn add(&mut self, k: &Kill, at: Instant, me: u32, miner: bool) {
        let Some(key) = counted(k, me) else {
            self.ignored += 1;
            return;
        };
        if !self.killers.contains_key(&key) && self.killers.len() >= MAX_KILLERS {
            if let Some(oldest) = self.killers.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| *k) {
                self.killers.remove(&oldest);
                self.forgotten += 1;
            }
        }
        let tool = key.pid != k.pid;
        let e = self.killers.entry(key).or_insert_with(|| Killer {
            comm: if tool { k.parent_comm.clone() } else { k.comm.clone() },
            senders: BTreeSet::new(),
            uid: k.uid,
            targets: BTreeMap::new(),
            more: 0,
            miners: BTreeSet::new(),
            burst: false,
            last: at,
        });
        e.last = at;
        if e.senders.len() < MAX_TARGETS {
            e.senders.insert((k.pid, k.start_ns));
        }
        let t = (k.target, k.target_start_ns);
        if e.targets.contains_key(&t) {
            return;
        }
        if e.targets.len() >= MAX_TARGETS {
            e.more += 1;
            self.forgotten += 1;
            return;
        }
        e.targets.insert(t, (k.target_comm.clone(), k.target_uid, k.sig, at));
        if miner {
            e.miners.insert(t);
        }
        let recent = e.targets.values().filter(|v| at.duration_since(v.3) <= BURST_WINDOW).count();
        if recent >= BURST_TARGETS {
            e.burst = true;
        }
    }

    /// Forgets killers whose last kill is older than [`HOLD`] at `now`.
    pub fn expire(&mut self, now: Instant) {
        self.killers.retain(|_, v| now.duration_since(v.last) < HOLD);
    }

    /// The findings of the held killers: (subject name, evidence, the
    /// processes that carry it while they run: killer and senders).
    pub fn findings(&self) -> Vec<(String, Evidence, Vec<(u32, u64)>)> {
        let mut out = Vec::new();
        for (key, k) in &self.killers {
            if k.miners.is_empty() && !k.burst {
                continue;
            }
            let name = format!("kills by {} (pid {})", k.comm, key.pid);
            let mut shown: Vec<String> = k
                .targets
                .iter()
                .filter(|(t, _)| k.miners.contains(t))
                .chain(k.targets.iter().filter(|(t, _)| !k.miners.contains(t)))
                .take(NAMED)
                .map(|((pid, _), (comm, uid, _, _))| format!("{comm} (pid {pid}, uid {uid})"))
                .collect();
            let total = k.targets.len() as u64 + k.more;
            if total > shown.len() as u64 {
                shown.push(format!("+{} more", total - shown.len() as u64));
            }
            let sigs: BTreeSet<&str> = k.targets.values().map(|v| signal_name(v.2)).collect();
            let mut after = format!(
                "{total} killed with {} by uid {}",
                sigs.into_iter().collect::<Vec<_>>().join("/"),
                k.uid
            );
            if !k.miners.is_empty() {
                after.push_str(&format!(", {} named like miners (rivals)", k.miners.len()));
            }
            if k.burst {
                after.push_str(&format!(", {BURST_TARGETS}+ within {} s", BURST_WINDOW.as_secs()));
            }
            let what = if k.miners.is_empty() {
                format!("a kill burst by {} (pid {})", k.comm, key.pid)
            } else {
                format!("rival miners killed by {} (pid {})", k.comm, key.pid)
            };
            let ev = Evidence::heuristic(
                EvidenceKind::Footprint {
                    what,
                    before: format!("running: {}", shown.join(", ")),
                    after,
                },
                Weight::Suspicious,
            );
            let mut carriers: Vec<(u32, u64)> = vec![(key.pid, key.start_ns)];
            carriers.extend(k.senders.iter().copied());
            out.push((name, ev, carriers));
        }
        out
    }
}

struct Running {
    // the queue's reader stops before the program is unloaded
    events: crate::host::bpf::RingQueue<(Instant, Kill)>,
    _bpf: aya::Ebpf,
}

impl Running {
    fn start() -> Result<Running, String> {
        let (mut bpf, _link) = crate::host::bpf::load_tp_btf(PROGRAM, "on_signal", "signal_generate")?;
        let events = crate::host::bpf::RingQueue::start(&mut bpf, "kills", "rw-killtrace", Duration::from_millis(50), MAX_QUEUED, |rec| {
            parse(rec).map(|k| (Instant::now(), k))
        })?;
        Ok(Running { events, _bpf: bpf })
    }
}

/// The kill-trace sensor.
pub struct KillTraceSensor {
    sig: Arc<Signatures>,
    running: Result<Running, String>,
    kills: Kills,
    findings: u64,
}

impl KillTraceSensor {
    /// Loads, attaches and starts draining (or remembers why it could not).
    pub fn new(sig: Arc<Signatures>) -> Self {
        KillTraceSensor {
            sig,
            running: Running::start(),
            kills: Kills::default(),
            findings: 0,
        }
    }
}

impl Sensor for KillTraceSensor {
    fn name(&self) -> &'static str {
        "killtrace"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        let r = self.running.as_ref().map_err(|w| SensorError {
            sensor: "killtrace",
            message: format!("unavailable: {w}"),
        })?;
        if snap.partial {
            return Ok(());
        }
        let new: Vec<(Instant, Kill)> = r.events.drain();
        let me = std::process::id();
        for (at, k) in &new {
            let miner = !self.sig.match_names(&[("comm", k.target_comm.as_str())]).is_empty();
            self.kills.add(k, *at, me, miner);
        }
        self.kills.expire(Instant::now());
        let found = self.kills.findings();
        self.findings = found.len() as u64;
        for (name, ev, carriers) in found {
            for (pid, start_ns) in carriers {
                let key = ProcKey::from_boot_ns(pid, start_ns, snap.ticks_per_second);
                if snap.procs.contains_key(&key) {
                    out.push(Observation::Evidence(key, ev.clone()));
                }
            }
            let subject = HostSubject {
                kind: SubjectKind::Footprint,
                name,
            };
            out.push(Observation::Host(subject, ev));
        }
        Ok(())
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        match &self.running {
            Ok(r) => vec![
                ("kills_seen", r.events.seen()),
                ("kills_dropped", r.events.dropped()),
                ("kills_ignored", self.kills.ignored),
                ("killers_forgotten", self.kills.forgotten),
                ("killers_reported", self.findings),
            ],
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(pid: u32, ppid: u32, comm: &str, target: u32, target_ppid: u32, target_comm: &str) -> Kill {
        Kill {
            pid,
            ppid,
            uid: 65534,
            sig: 9,
            target,
            target_ppid,
            target_uid: 65534,
            start_ns: pid as u64 * 1000,
            parent_start_ns: ppid as u64 * 1000,
            target_start_ns: target as u64 * 1000,
            comm: comm.into(),
            target_comm: target_comm.into(),
            parent_comm: "sh".into(),
        }
    }

    fn record(k: &Kill) -> Vec<u8> {
        let mut r = vec![0u8; EVENT_LEN];
        for (o, v) in [
            (0, k.pid),
            (4, k.ppid),
            (8, k.uid),
            (12, k.sig),
            (16, k.target),
            (20, k.target_ppid),
            (24, k.target_uid),
        ] {
            r[o..o + 4].copy_from_slice(&v.to_ne_bytes());
        }
        for (o, v) in [(32, k.start_ns), (40, k.parent_start_ns), (48, k.target_start_ns)] {
            r[o..o + 8].copy_from_slice(&v.to_ne_bytes());
        }
        for (o, s) in [(56, &k.comm), (72, &k.target_comm), (88, &k.parent_comm)] {
            r[o..o + s.len().min(16)].copy_from_slice(&s.as_bytes()[..s.len().min(16)]);
        }
        r
    }

    #[test]
    fn events_decode_and_short_records_are_refused() {
        let k = kill(300, 200, "pkill", 77, 1, "xmrig");
        let r = record(&k);
        assert_eq!(parse(&r).unwrap(), k);
        assert!(parse(&r[..EVENT_LEN - 1]).is_none());
        // a comm of 16 bytes with no NUL stays inside its field
        let mut k2 = k.clone();
        k2.comm = "abcdefghijklmnop".into();
        assert_eq!(parse(&record(&k2)).unwrap().comm, "abcdefghijklmnop");
    }

    #[test]
    fn a_script_killing_rival_miners_is_one_finding_named_after_the_script() {
        let mut ks = Kills::default();
        let t0 = Instant::now();
        // sh (pid 200) runs pkill twice, then kills with its builtin
        ks.add(&kill(300, 200, "pkill", 77, 1, "xmrig"), t0, 9999, true);
        ks.add(&kill(301, 200, "pkill", 78, 1, "kdevtmpfsi"), t0, 9999, true);
        ks.add(&kill(200, 100, "sh", 79, 1, "sleep"), t0, 9999, false);
        let f = ks.findings();
        assert_eq!(f.len(), 1, "{f:?}");
        let (name, ev, carriers) = &f[0];
        assert_eq!(name, "kills by sh (pid 200)");
        assert_eq!(ev.weight, Weight::Suspicious);
        let EvidenceKind::Footprint { what, before, after } = &ev.detail else {
            panic!("{ev:?}")
        };
        assert_eq!(what, "rival miners killed by sh (pid 200)");
        assert!(before.starts_with("running: xmrig (pid 77"), "{before}");
        assert!(
            before.contains("kdevtmpfsi (pid 78") && before.contains("sleep (pid 79"),
            "{before}"
        );
        assert!(
            after.starts_with("3 killed with SIGKILL by uid 65534, 2 named like miners"),
            "{after}"
        );
        assert!(!after.contains("within"), "three is no burst: {after}");
        // the script and each pkill carry it while they run
        assert!(
            carriers.contains(&(200, 200_000)) && carriers.contains(&(300, 300_000)),
            "{carriers:?}"
        );
    }

    #[test]
    fn a_burst_counts_without_miner_names_and_a_slow_trickle_does_not() {
        let t0 = Instant::now();
        let mut burst = Kills::default();
        for i in 0..BURST_TARGETS as u32 {
            burst.add(
                &kill(500, 1, "trojan", 600 + i, 1, "worker"),
                t0 + Duration::from_millis(i as u64 * 100),
                9999,
                false,
            );
        }
        let f = burst.findings();
        assert_eq!(f.len(), 1, "{f:?}");
        let EvidenceKind::Footprint { what, after, .. } = &f[0].1.detail else {
            panic!()
        };
        assert_eq!(what, "a kill burst by trojan (pid 500)");
        assert!(after.contains("5 killed") && after.contains("5+ within 10 s"), "{after}");

        let mut slow = Kills::default();
        for i in 0..BURST_TARGETS as u32 {
            slow.add(
                &kill(500, 1, "trojan", 600 + i, 1, "worker"),
                t0 + BURST_WINDOW * (i + 1) * 2,
                9999,
                false,
            );
        }
        assert!(slow.findings().is_empty());
    }

    #[test]
    fn own_children_siblings_init_and_the_agent_do_not_count() {
        let t0 = Instant::now();
        let mut ks = Kills::default();
        for i in 0..10 {
            // a shell killing its jobs; pkill run by a script killing the script's children
            ks.add(&kill(200, 100, "bash", 700 + i, 200, "xmrig"), t0, 9999, true);
            ks.add(&kill(300, 200, "pkill", 800 + i, 200, "xmrig"), t0, 9999, true);
            // runc kill: the target is a child of runc's own parent (the shim)
            ks.add(&kill(400, 350, "runc", 900 + i, 350, "worker"), t0, 9999, false);
            // systemd stopping services; the agent stopping its own helpers
            ks.add(&kill(1, 0, "systemd", 1000 + i, 1, "xmrig"), t0, 9999, true);
            ks.add(&kill(9999, 1, "rigwatch", 1100 + i, 1, "worker"), t0, 9999, false);
        }
        assert!(ks.findings().is_empty(), "{:?}", ks.findings());
        assert_eq!(ks.ignored, 50);
        // two daemons under init are siblings, and that does count
        ks.add(&kill(500, 1, "kinsing", 77, 1, "xmrig"), t0, 9999, true);
        assert_eq!(ks.findings().len(), 1);
    }

    #[test]
    fn held_until_the_hold_runs_out_and_bounded_against_a_flood() {
        let t0 = Instant::now();
        let mut ks = Kills::default();
        ks.add(&kill(500, 1, "kinsing", 77, 1, "xmrig"), t0, 9999, true);
        ks.expire(t0 + HOLD - Duration::from_secs(1));
        assert_eq!(ks.findings().len(), 1);
        ks.expire(t0 + HOLD);
        assert!(ks.findings().is_empty());

        // a flood of killers and targets stays within the caps, counted
        for p in 0..(MAX_KILLERS as u32 * 2) {
            for t in 0..(MAX_TARGETS as u32 + 10) {
                ks.add(&kill(2000 + p, 1, "x", 100_000 + p * 1000 + t, 1, "w"), t0, 9999, false);
            }
        }
        assert_eq!(ks.killers.len(), MAX_KILLERS);
        assert!(ks.killers.values().all(|k| k.targets.len() <= MAX_TARGETS));
        assert!(ks.forgotten >= MAX_KILLERS as u64, "{}", ks.forgotten);
        let f = ks.findings();
        let EvidenceKind::Footprint { before, after, .. } = &f[0].1.detail else {
            panic!()
        };
        assert!(before.contains("+68 more"), "{before}");
        assert!(after.starts_with("74 killed"), "{after}");
    }
}
