//! Loading the agent's eBPF programs (`bpf/*.bpf.c`, built by build.rs):
//! BTF-typed tracepoint programs, relocated (CO-RE) against the running
//! kernel's BTF and attached, with errors a user can act on.

/// Loads `object`, then its program `program` for the BTF tracepoint
/// `tracepoint`, and attaches it. The error says what failed, with the
/// kernel's reason, and what is needed when it is a matter of privilege.
pub fn load_tp_btf(
    object: &[u8],
    program: &str,
    tracepoint: &str,
) -> Result<(aya::Ebpf, aya::programs::tp_btf::BtfTracePointLinkId), String> {
    if object.is_empty() {
        return Err(if cfg!(target_arch = "x86_64") {
            "built without its eBPF program (clang was not found at build time)".into()
        } else {
            "its eBPF program is built for x86_64 only".into()
        });
    }
    let mut bpf = aya::Ebpf::load(object).map_err(|e| describe("loading the eBPF object", &e))?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("the kernel's BTF (/sys/kernel/btf/vmlinux): {e}"))?;
    let prog = tp_btf(&mut bpf, program)?;
    prog.load(tracepoint, &btf)
        .map_err(|e| describe(&format!("loading {program}"), &e))?;
    let link = prog
        .attach()
        .map_err(|e| describe(&format!("attaching {program} to {tracepoint}"), &e))?;
    Ok((bpf, link))
}

/// A loaded object's ring buffer `map`, drained by a thread of its own
/// (`name`) that hands each record to `each` and sleeps `idle` when the
/// buffer is empty; the thread stops when the reader is dropped.
pub struct RingReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RingReader {
    /// Takes `map` out of `bpf` and starts draining it.
    pub fn start(
        bpf: &mut aya::Ebpf,
        map: &str,
        name: &str,
        idle: std::time::Duration,
        mut each: impl FnMut(&[u8]) + Send + 'static,
    ) -> Result<RingReader, String> {
        use std::sync::atomic::Ordering;
        let m = bpf.take_map(map).ok_or_else(|| format!("no {map} ring buffer"))?;
        let mut ring = aya::maps::RingBuf::try_from(m).map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let mut any = false;
                    while let Some(rec) = ring.next() {
                        any = true;
                        each(&rec);
                    }
                    if !any {
                        std::thread::sleep(idle);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(RingReader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A ring buffer drained into a bounded queue of decoded events: what
/// the miner can flood is held to `cap` (the oldest go first, counted).
pub struct RingQueue<T> {
    // the reader stops before the queue goes
    _reader: RingReader,
    queue: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<T>>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<T: Send + 'static> RingQueue<T> {
    /// Drains `map` of `bpf` (see [`RingReader::start`]), keeping what
    /// `parse` decodes, at most `cap` events.
    pub fn start(
        bpf: &mut aya::Ebpf,
        map: &str,
        name: &str,
        idle: std::time::Duration,
        cap: usize,
        parse: impl Fn(&[u8]) -> Option<T> + Send + 'static,
    ) -> Result<RingQueue<T>, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let queue = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let (dropped, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (q, d, s) = (queue.clone(), dropped.clone(), seen.clone());
        let reader = RingReader::start(bpf, map, name, idle, move |rec| {
            let Some(e) = parse(rec) else { return };
            s.fetch_add(1, Ordering::Relaxed);
            let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= cap {
                q.pop_front();
                d.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(e);
        })?;
        Ok(RingQueue {
            _reader: reader,
            queue,
            dropped,
            seen,
        })
    }

    /// The events queued since the last drain, oldest first.
    pub fn drain(&self) -> Vec<T> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }

    /// Events decoded so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Events dropped to the cap so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The BTF tracepoint program `name` of a loaded object.
pub fn tp_btf<'a>(bpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::programs::BtfTracePoint, String> {
    bpf.program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no {name} program"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}

/// Most characters of an error kept (a verifier log runs to pages: its
/// start names the call, its end the reason).
const MAX_ERROR: usize = 600;

/// `what: error: cause: …`, shortened, with what is needed when the kernel
/// refused for lack of privilege (EPERM; EACCES without a verifier log).
pub fn describe(what: &str, e: &dyn std::error::Error) -> String {
    let mut msg = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    let privilege = msg.contains("Operation not permitted") || (msg.contains("Permission denied") && !msg.contains("Verifier output"));
    if msg.chars().count() > MAX_ERROR {
        let chars: Vec<char> = msg.chars().collect();
        let head: String = chars[..200].iter().collect();
        let tail: String = chars[chars.len() - 380..].iter().collect();
        msg = format!("{head} … {tail}");
    }
    if privilege {
        msg.push_str(" (needs CAP_BPF and CAP_PERFMON, or root)");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_short_and_say_what_is_needed() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(describe("loading", &eperm).ends_with("(needs CAP_BPF and CAP_PERFMON, or root)"));
        let log = std::io::Error::other(format!(
            "Verifier output: {}R2 min value is negative: Permission denied",
            "0: insn\n".repeat(500)
        ));
        let d = describe("loading on_exec", &log);
        assert!(
            d.chars().count() < 700 && d.starts_with("loading on_exec: Verifier output") && d.contains("R2 min value is negative"),
            "{d}"
        );
        assert!(!d.contains("needs CAP_BPF"), "a verifier rejection is no privilege problem: {d}");
    }
}
