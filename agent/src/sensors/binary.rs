//! The binary sensor: hashes and content-scans each process's executable.
//!
//! The file is read through `/proc/PID/exe`, so deleted and memfd binaries
//! are scanned too. It is streamed once (SHA-256 and the content automaton
//! in the same pass), capped at a number of bytes, and the verdict is cached
//! by (device, inode, size, mtime): each binary is read once, however many
//! processes run it.

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::host::process::ProcStatic;
use crate::sensors::ProcKey;
use rigwatch_signatures::{Evidence, Signatures};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::host::exe::Verdict;

type FileKey = (u64, u64, u64, i64);

/// The binary sensor.
pub struct BinarySensor {
    sig: Arc<Signatures>,
    root: PathBuf,
    cap: u64,
    by_file: HashMap<FileKey, Arc<Verdict>>,
    /// Per process, with the fixed part it was computed for (exec replaces it).
    by_proc: HashMap<ProcKey, (Arc<ProcStatic>, Arc<Verdict>)>,
    denied: usize,
    /// Bytes read in total (for benchmarks and metrics).
    pub bytes_read: u64,
    pass_budget: u64,
    /// Content evidence from the memory of processes whose file is packed or unreadable.
    by_mem: HashMap<ProcKey, Vec<Evidence>>,
    /// rigwatch's own executable (device, inode): other rigwatch processes
    /// (a `rigwatch scan` beside the daemon, a second agent) run the same
    /// file, whose protocol classifier carries stratum method names.
    own_exe: Option<(u64, u64)>,
}

impl BinarySensor {
    /// A sensor reading executables under `root` (normally /proc), at most `cap` bytes each.
    pub fn new(sig: Arc<Signatures>, root: &Path, cap: u64) -> Self {
        BinarySensor {
            sig,
            root: root.to_path_buf(),
            cap,
            by_file: HashMap::new(),
            by_proc: HashMap::new(),
            denied: 0,
            bytes_read: 0,
            pass_budget: u64::MAX,
            by_mem: HashMap::new(),
            own_exe: std::fs::metadata(crate::paths::self_exe()).ok().map(|m| (m.dev(), m.ino())),
        }
    }

    /// Caps the bytes of new executables read in one pass; the others are
    /// read in later passes (pacing: no I/O spike when many programs start).
    pub fn with_pass_budget(mut self, bytes: u64) -> Self {
        self.pass_budget = bytes.max(1);
        self
    }

    /// How many distinct binaries have been read.
    pub fn binaries(&self) -> usize {
        self.by_file.len()
    }

    fn verdict_for(&mut self, pid: u32, shown: &str) -> std::io::Result<Arc<Verdict>> {
        let mut f = std::fs::File::open(self.root.join(pid.to_string()).join("exe"))?;
        let m = f.metadata()?;
        let key = (m.dev(), m.ino(), m.size(), m.mtime());
        if let Some(v) = self.by_file.get(&key) {
            return Ok(v.clone());
        }
        if self.own_exe == Some((m.dev(), m.ino())) {
            let own = Arc::new(Verdict {
                sha256: [0; 32],
                truncated: false,
                evidence: Vec::new(),
                packed: false,
                yara_error: None,
            });
            self.by_file.insert(key, own.clone());
            return Ok(own);
        }
        let v = Arc::new(scan_reader(&self.sig, &mut f, self.cap, shown, &mut self.bytes_read)?);
        self.by_file.insert(key, v.clone());
        Ok(v)
    }

    /// The file is packed or unreadable: scan the process's memory instead
    /// (once per process, bounded), and report what it holds.
    fn memory_fallback(&mut self, key: ProcKey, p: &super::Proc, out: &mut Vec<Observation>) {
        if key.pid == std::process::id() {
            return;
        }
        if !self.by_mem.contains_key(&key) {
            let shown = p.fixed.exe.clone().unwrap_or_default();
            let ev = scan_memory(
                &self.sig,
                &self.root,
                key.pid,
                MEMORY_SCAN_CAP.min(self.cap),
                &shown,
                &mut self.bytes_read,
            )
            .unwrap_or_default();
            self.by_mem.insert(key, ev);
        }
        out.extend(self.by_mem[&key].iter().map(|e| Observation::Evidence(key, e.clone())));
    }
}

pub use crate::host::exe::{scan_memory, scan_reader, PackingProbe, MEMORY_SCAN_CAP};

impl Sensor for BinarySensor {
    fn name(&self) -> &'static str {
        "binary"
    }

    fn per_process(&self) -> bool {
        true
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        self.denied = 0;
        if !snap.partial {
            self.by_proc.retain(|k, _| snap.procs.contains_key(k));
            self.by_mem.retain(|k, _| snap.procs.contains_key(k));
        }
        let pass_start = self.bytes_read;
        for (key, p) in &snap.procs {
            if p.kernel_thread {
                continue;
            }
            let v = match self.by_proc.get(key) {
                Some((fixed, v)) if Arc::ptr_eq(fixed, &p.fixed) => v.clone(),
                _ if self.bytes_read - pass_start >= self.pass_budget => continue,
                _ => {
                    let shown = p.fixed.exe.clone().unwrap_or_default();
                    match self.verdict_for(key.pid, &shown) {
                        Ok(v) => {
                            self.by_proc.insert(*key, (p.fixed.clone(), v.clone()));
                            v
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            self.denied += 1;
                            self.memory_fallback(*key, p, out);
                            continue;
                        }
                        Err(_) => {
                            self.memory_fallback(*key, p, out);
                            continue;
                        }
                    }
                }
            };
            if v.packed {
                self.memory_fallback(*key, p, out);
            }
            // every process's hash: the allowlist matches on it, and a
            // finding carries it (what a collector teaches the fleet)
            out.push(Observation::BinarySha256(*key, v.sha256));
            out.extend(v.evidence.iter().map(|e| Observation::Evidence(*key, e.clone())));
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.denied > 0 {
            out.push(format!(
                "executables of {} processes: permission denied (run as root or with CAP_SYS_PTRACE)",
                self.denied
            ));
        }
        let mut yara = self.by_file.values().filter_map(|v| v.yara_error.as_ref());
        if let Some(why) = yara.next() {
            out.push(format!("{} executables not judged by the YARA rules: {why}", 1 + yara.count()));
        }
        out
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("binaries_read", self.by_file.len() as u64),
            ("binary_bytes_read", self.bytes_read),
            (
                "binary_yara_errors",
                self.by_file.values().filter(|v| v.yara_error.is_some()).count() as u64,
            ),
        ]
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
        self.by_file.clear();
        self.by_proc.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::EvidenceKind;

    fn probe(data: &[u8], chunk: usize) -> Option<(String, f64)> {
        let mut p = PackingProbe::default();
        for c in data.chunks(chunk) {
            p.feed(c);
        }
        p.verdict()
    }

    fn elf(sections: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x3c..0x3e].copy_from_slice(&sections.to_le_bytes());
        h
    }

    #[test]
    fn rigwatch_own_executable_is_not_a_miner() {
        // this test binary links the stratum classifier: its strings match content rules
        let sig = Arc::new(rigwatch_signatures::load::load(&[], true).signatures);
        let mut f = std::fs::File::open("/proc/self/exe").unwrap();
        let v = scan_reader(&sig, &mut f, u64::MAX, "self", &mut 0).unwrap();
        assert!(!v.evidence.is_empty(), "the classifier's strings are in the binary");
        // another process running the same file (a second rigwatch) is not flagged
        let mut s = BinarySensor::new(sig, Path::new("/proc"), u64::MAX);
        assert!(s.verdict_for(std::process::id(), "self").unwrap().evidence.is_empty());
    }

    #[test]
    fn upx_marks_even_split_across_reads() {
        let mut f = elf(0);
        f.extend(std::iter::repeat_n(b'a', 5000));
        let mut m = f.clone();
        // built at run time, so this test binary holds no mark of its own
        let u = std::hint::black_box(b'T') + 1;
        m.extend([u, b'P', b'X', b'!']);
        assert_eq!(probe(&m, 4096).unwrap().0, "upx (magic)");
        // magic altered, banner left: still UPX; the banner straddles a read boundary
        let mut b = f.clone();
        b.extend_from_slice(&[0x24u8, b'I', b'n', b'f', b'o', b':']);
        b.extend_from_slice(b" This file is packed with the ");
        b.extend_from_slice(&[u, b'P', b'X']);
        for chunk in [7, 4096, 5070] {
            assert_eq!(probe(&b, chunk).unwrap().0, "upx (banner)", "chunk {chunk}");
        }
        assert!(probe(&f, 4096).is_none(), "plain, low-entropy ELF is not packed");
    }

    #[test]
    fn high_entropy_with_few_sections_is_packed() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut packed = elf(0);
        packed.extend(&noise);
        let (packer, e) = probe(&packed, 65536).unwrap();
        assert!(packer.starts_with("unknown") && e > 7.7, "{packer} {e}");
        let mut many = elf(29);
        many.extend(&noise);
        assert!(
            probe(&many, 65536).is_none(),
            "a normal section table: compressed data, not a packer"
        );
        assert!(probe(&noise, 65536).is_none(), "not an ELF");
    }

    #[test]
    fn this_binary_does_not_look_packed_and_memory_holds_strings() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(probe(&me, 1 << 20).is_none(), "rigwatch's own marks are stored encoded");
        let sig = rigwatch_signatures::load::load(&[], true).signatures;
        let mut n = 0;
        let ev = scan_memory(&sig, Path::new("/proc"), std::process::id(), 1 << 30, "self", &mut n).unwrap();
        assert!(n > 0);
        // the test binary's memory holds the decoded signature set: content rules match there
        assert!(
            ev.iter()
                .any(|e| matches!(&e.detail, EvidenceKind::BinaryContent { source, .. } if source == "memory")),
            "{ev:?}"
        );
    }
}
