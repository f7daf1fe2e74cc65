//! The exec-trace sensor (eBPF): every exec with its command line, as it
//! happens, so a process that lives for 5 ms is still judged.
//!
//! `bpf/exec.bpf.c` runs on `sched_process_exec` and puts the new program's
//! pid, parent, uid, start time, file and argv (1,023 bytes at most) into a
//! ring buffer; a thread here drains it into a bounded queue. Each pass,
//! the executions whose process is no longer in the listing (it exited
//! before the pass could read `/proc`) are handed to the detector as
//! processes of their own, built from the event, and judged like any other
//! (a pool URL or wallet in the command line, a miner's name, an odd
//! origin): the finding says the process exited before it could be read.
//! Processes still running are left to the listing.
//!
//! What the miner controls: argv (bounded, lossily decoded), comm, the file
//! name; all are only matched, never followed. A flood of execs fills the
//! queue, whose oldest entries go first (counted); the ring buffer itself
//! drops when full (the kernel side never waits). Unavailable without
//! CAP_BPF + CAP_PERFMON, BTF or clang at build time, like the rounding
//! sensor.

use super::{Observation, Proc, ProcKey, Sensor, SensorError, Snapshot};
use crate::host::process::ProcStatic;
use std::collections::HashMap;
use std::sync::Arc;

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exec.bpf.o"));

/// Executions kept between passes (the oldest go first).
pub const MAX_QUEUED: usize = 4096;
const FILE_MAX: usize = 256;
const ARGV_MAX: usize = 1024;
/// The event's layout (see `struct exec_event`).
const EVENT_LEN: usize = 4 * 4 + 8 + 16 + FILE_MAX + ARGV_MAX;

/// One execution, as the kernel saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// Start time, nanoseconds since boot (as `/proc/PID/stat` counts it).
    pub start_ns: u64,
    pub comm: String,
    pub file: String,
    pub argv: Vec<String>,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decodes one ring-buffer record; `None` when it is not a whole event.
pub fn parse(rec: &[u8]) -> Option<Exec> {
    if rec.len() < EVENT_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(rec[o..o + 4].try_into().unwrap());
    let argv_len = (u32_at(12) as usize).min(ARGV_MAX);
    let base = 24 + 16 + FILE_MAX;
    let argv = rec[base..base + argv_len]
        .split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(Exec {
        pid: u32_at(0),
        ppid: u32_at(4),
        uid: u32_at(8),
        start_ns: u64::from_ne_bytes(rec[16..24].try_into().unwrap()),
        comm: cstr(&rec[24..40]),
        file: cstr(&rec[40..40 + FILE_MAX]),
        argv,
    })
}

/// The process an execution was, for the detector, when it is gone.
pub fn ghost(e: &Exec, ticks_per_second: u64, user: String) -> Proc {
    let key = ProcKey::from_boot_ns(e.pid, e.start_ns, ticks_per_second);
    let mut p = Proc::new(
        key,
        e.ppid,
        Arc::new(ProcStatic {
            comm: e.comm.clone(),
            argv: e.argv.clone(),
            argv_read: true,
            exe: Some(e.file.clone()),
            cwd: None,
            uid: e.uid,
            user,
            cgroup: String::new(),
            problems: vec!["exited before it could be read: judged from its exec event (eBPF)".into()],
        }),
    );
    p.state = 'X';
    p
}

struct Running {
    // the queue's reader stops before the program is unloaded
    events: crate::host::bpf::RingQueue<Exec>,
    _bpf: aya::Ebpf,
}

impl Running {
    fn start() -> Result<Running, String> {
        let (mut bpf, _link) = crate::host::bpf::load_tp_btf(PROGRAM, "on_exec", "sched_process_exec")?;
        let events = crate::host::bpf::RingQueue::start(
            &mut bpf,
            "execs",
            "rw-exectrace",
            std::time::Duration::from_millis(20),
            MAX_QUEUED,
            parse,
        )?;
        Ok(Running { events, _bpf: bpf })
    }
}

/// The exec-trace sensor.
pub struct ExecTraceSensor {
    running: Result<Running, String>,
    /// Passes seen: the first is a baseline (a scan reports its last pass),
    /// so executions wait for the second.
    passes: u64,
    users: HashMap<u32, String>,
    ghosts: u64,
}

impl Default for ExecTraceSensor {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecTraceSensor {
    /// Loads, attaches and starts draining (or remembers why it could not).
    pub fn new() -> Self {
        ExecTraceSensor {
            running: Running::start(),
            passes: 0,
            users: HashMap::new(),
            ghosts: 0,
        }
    }

    fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| crate::host::process::user_name(uid))
            .clone()
    }
}

impl Sensor for ExecTraceSensor {
    fn name(&self) -> &'static str {
        "exectrace"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        let r = self.running.as_ref().map_err(|w| SensorError {
            sensor: "exectrace",
            message: format!("unavailable: {w}"),
        })?;
        if snap.partial {
            return Ok(());
        }
        self.passes += 1;
        if self.passes == 1 {
            return Ok(());
        }
        let execs: Vec<Exec> = r.events.drain();
        let alive: std::collections::HashSet<u32> = snap.procs.keys().map(|k| k.pid).collect();
        let me = std::process::id();
        for e in execs {
            // running: the listing reads it; the agent's own children are not miners
            if alive.contains(&e.pid) || e.pid == me {
                continue;
            }
            let user = self.user(e.uid);
            self.ghosts += 1;
            let g = ghost(&e, snap.ticks_per_second, user);
            // said beside whatever else the process shows (alone it is no finding)
            out.push(Observation::Evidence(
                g.key,
                rigwatch_signatures::Evidence::heuristic(
                    rigwatch_signatures::EvidenceKind::ShortLived {
                        how: "judged from its exec event (eBPF: pid, parent, user, file and argv at exec)".into(),
                    },
                    rigwatch_signatures::Weight::Info,
                ),
            ));
            out.push(Observation::Hidden(g));
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        match &self.running {
            Ok(r) => vec![
                ("execs_seen", r.events.seen()),
                ("execs_dropped", r.events.dropped()),
                ("execs_judged_after_exit", self.ghosts),
            ],
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, argv: &[u8], claimed_len: u32) -> Vec<u8> {
        let mut r = vec![0u8; EVENT_LEN];
        r[0..4].copy_from_slice(&pid.to_ne_bytes());
        r[4..8].copy_from_slice(&1u32.to_ne_bytes());
        r[8..12].copy_from_slice(&65534u32.to_ne_bytes());
        r[12..16].copy_from_slice(&claimed_len.to_ne_bytes());
        r[16..24].copy_from_slice(&5_000_000_000u64.to_ne_bytes());
        r[24..29].copy_from_slice(b"xmrig");
        r[40..50].copy_from_slice(b"/tmp/xmrig");
        let base = 24 + 16 + FILE_MAX;
        r[base..base + argv.len()].copy_from_slice(argv);
        r
    }

    #[test]
    fn events_decode_and_hostile_lengths_stay_in_bounds() {
        let argv = b"xmrig\0-o\0stratum+tcp://pool.example:3333\0";
        let e = parse(&record(42, argv, argv.len() as u32)).unwrap();
        assert_eq!(
            (e.pid, e.ppid, e.uid, e.comm.as_str(), e.file.as_str()),
            (42, 1, 65534, "xmrig", "/tmp/xmrig")
        );
        assert_eq!(e.argv, ["xmrig", "-o", "stratum+tcp://pool.example:3333"]);
        // a length beyond the buffer is cut to it; a short record is refused
        assert!(parse(&record(42, argv, u32::MAX)).is_some());
        assert!(parse(&record(42, argv, 7)[..EVENT_LEN - 1]).is_none());
        // invalid UTF-8 is decoded lossily, never refused
        assert_eq!(parse(&record(1, b"a\xff\0b", 4)).unwrap().argv, ["a\u{fffd}", "b"]);
        let g = ghost(&e, 100, "nobody".into());
        assert_eq!((g.key.pid, g.key.start_time, g.state), (42, 500, 'X'));
        assert_eq!(g.cmdline(), "xmrig -o stratum+tcp://pool.example:3333");
        assert!(g.fixed.problems[0].contains("exited before it could be read"));
    }
}
