//! The binary sensor: hashes and content-scans each process's executable.
//!
//! The file is read through `/proc/PID/exe`, so deleted and memfd binaries
//! are scanned too. It is streamed once (SHA-256 and the content automaton
//! in the same pass), capped at a number of bytes, and the verdict is cached
//! by (device, inode, size, mtime): each binary is read once, however many
//! processes run it.

use super::{Observation, Sensor, SensorError, Snapshot};
use crate::sensors::process::ProcStatic;
use crate::sensors::ProcKey;
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What is known of one binary file.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// SHA-256 of the bytes read (the whole file unless capped).
    pub sha256: [u8; 32],
    /// Whether the cap cut the read short.
    pub truncated: bool,
    /// Evidence from hash and content rules.
    pub evidence: Vec<Evidence>,
}

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
        let v = Arc::new(scan_reader(&self.sig, &mut f, self.cap, shown, &mut self.bytes_read)?);
        self.by_file.insert(key, v.clone());
        Ok(v)
    }
}

/// Streams a reader once: SHA-256 and content rules. Pure over the reader.
pub fn scan_reader(sig: &Signatures, r: &mut dyn Read, cap: u64, shown: &str, total: &mut u64) -> std::io::Result<Verdict> {
    let mut hasher = Sha256::new();
    let mut scanner = sig.content_scanner();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = cap;
    let mut truncated = false;
    loop {
        let want = buf.len().min(left as usize);
        if want == 0 {
            let mut probe = [0u8; 1];
            truncated = r.read(&mut probe)? > 0;
            break;
        }
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        scanner.feed(&buf[..n]);
        left -= n as u64;
        *total += n as u64;
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    let mut evidence = Vec::new();
    if let Some(rule) = sig.binary_hash(&sha256) {
        if !truncated {
            evidence.push(Evidence::from_rule(
                EvidenceKind::BinaryHash { sha256: hex::encode(sha256), path: shown.to_string() },
                &rule.id,
                rule.severity,
            ));
        }
    }
    for (rule, strings) in scanner.finish() {
        evidence.push(Evidence::from_rule(
            EvidenceKind::BinaryContent { strings, path: shown.to_string(), source: "executable".into() },
            &rule.id,
            rule.severity,
        ));
    }
    Ok(Verdict { sha256, truncated, evidence })
}

impl Sensor for BinarySensor {
    fn name(&self) -> &'static str {
        "binary"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        self.denied = 0;
        self.by_proc.retain(|k, _| snap.procs.contains_key(k));
        let want_hash = self.sig.has_hash_allowlist();
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
                            continue;
                        }
                        Err(_) => continue,
                    }
                }
            };
            if want_hash {
                out.push(Observation::BinarySha256(*key, v.sha256));
            }
            out.extend(v.evidence.iter().map(|e| Observation::Evidence(*key, e.clone())));
        }
        Ok(())
    }

    fn unreadable(&self) -> Vec<String> {
        if self.denied > 0 {
            vec![format!("executables of {} processes: permission denied (run as root or with CAP_SYS_PTRACE)", self.denied)]
        } else {
            Vec::new()
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("binaries_read", self.by_file.len() as u64), ("binary_bytes_read", self.bytes_read)]
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
        self.by_file.clear();
        self.by_proc.clear();
    }
}
