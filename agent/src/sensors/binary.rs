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
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
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
    /// The file looks packed (UPX, or high entropy with few sections): its
    /// strings are only in the running process's memory.
    pub packed: bool,
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

/// Streams a reader once: SHA-256 and content rules. Pure over the reader.
pub fn scan_reader(sig: &Signatures, r: &mut dyn Read, cap: u64, shown: &str, total: &mut u64) -> std::io::Result<Verdict> {
    let mut hasher = Sha256::new();
    let mut scanner = sig.content_scanner();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = cap;
    let mut truncated = false;
    let mut packing = PackingProbe::default();
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
        packing.feed(&buf[..n]);
        left -= n as u64;
        *total += n as u64;
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    let mut evidence = Vec::new();
    if let Some(rule) = sig.binary_hash(&sha256) {
        if !truncated {
            evidence.push(Evidence::from_rule(
                EvidenceKind::BinaryHash {
                    sha256: hex::encode(sha256),
                    path: shown.to_string(),
                },
                &rule.id,
                rule.severity,
            ));
        }
    }
    for (rule, strings) in scanner.finish() {
        evidence.push(Evidence::from_rule(
            EvidenceKind::BinaryContent {
                strings,
                path: shown.to_string(),
                source: "executable".into(),
            },
            &rule.id,
            rule.severity,
        ));
    }
    let packed = packing.verdict();
    if let Some((packer, entropy)) = &packed {
        evidence.push(Evidence::heuristic(
            EvidenceKind::Packed {
                packer: packer.clone(),
                entropy: (entropy * 100.0).round() / 100.0,
                path: shown.to_string(),
            },
            Weight::Suspicious,
        ));
    }
    Ok(Verdict {
        sha256,
        truncated,
        evidence,
        packed: packed.is_some(),
    })
}

/// Looks for a packed executable while the file streams by: UPX's magic,
/// section names and banner (also when the magic is altered, the others
/// usually stay), or high entropy with few ELF sections.
#[derive(Default)]
pub struct PackingProbe {
    counts: Vec<u64>,
    total: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    end: Vec<u8>,
    upx: Option<&'static str>,
}

impl PackingProbe {
    /// UPX's banner, magic and section names, stored XOR 0x5A so that
    /// rigwatch's own binary does not look packed.
    const MARKS_X: &'static [(&'static [u8], &'static str)] = &[
        (
            &[
                126, 19, 52, 60, 53, 96, 122, 14, 50, 51, 41, 122, 60, 51, 54, 63, 122, 51, 41, 122, 42, 59, 57, 49, 63, 62, 122, 45, 51,
                46, 50, 122, 46, 50, 63, 122, 15, 10, 2,
            ],
            "upx (banner)",
        ),
        (&[15, 10, 2, 123], "upx (magic)"),
        (&[15, 10, 2, 106, 0x5A], "upx (section names)"),
    ];

    fn marks() -> &'static [(Vec<u8>, &'static str)] {
        static M: std::sync::OnceLock<Vec<(Vec<u8>, &'static str)>> = std::sync::OnceLock::new();
        M.get_or_init(|| {
            Self::MARKS_X
                .iter()
                .map(|(m, n)| (m.iter().map(|b| b ^ 0x5A).collect(), *n))
                .collect()
        })
    }

    /// Takes the next chunk of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.counts.is_empty() {
            self.counts = vec![0; 256];
        }
        for &b in chunk {
            self.counts[b as usize] += 1;
        }
        self.total += chunk.len() as u64;
        if self.head.len() < 64 {
            let n = (64 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
        }
        // UPX's marks sit in the first kilobytes (stub, l_info) and at the very
        // end (the pack header): search the first MiB as it streams, the last
        // 64 KiB at the end
        let seen_before = self.total - chunk.len() as u64;
        if self.upx.is_none() && seen_before < Self::HEAD_SEARCH {
            let n = chunk.len().min((Self::HEAD_SEARCH - seen_before) as usize);
            self.upx = Self::search(&mut self.tail, &chunk[..n]);
        }
        if chunk.len() >= Self::END_KEEP {
            self.end.clear();
            self.end.extend_from_slice(&chunk[chunk.len() - Self::END_KEEP..]);
        } else {
            self.end.extend_from_slice(chunk);
            let extra = self.end.len().saturating_sub(Self::END_KEEP);
            self.end.drain(..extra);
        }
    }

    const HEAD_SEARCH: u64 = 1 << 20;
    const END_KEEP: usize = 64 * 1024;

    /// Looks for a mark in `chunk`, joined to the end of the previous one
    /// (`tail`, updated) so that marks split across reads are found.
    fn search(tail: &mut Vec<u8>, chunk: &[u8]) -> Option<&'static str> {
        let marks = Self::marks();
        let find = |hay: &[u8]| {
            hay.iter()
                .enumerate()
                .filter(|(_, &c)| c == b'U' || c == b'$')
                .find_map(|(i, _)| marks.iter().find(|(m, _)| hay[i..].starts_with(m)).map(|(_, n)| *n))
        };
        let mut window = std::mem::take(tail);
        window.extend_from_slice(&chunk[..chunk.len().min(64)]);
        let hit = find(&window).or_else(|| find(chunk));
        *tail = if chunk.len() >= 63 {
            chunk[chunk.len() - 63..].to_vec()
        } else {
            window.truncate(window.len() - chunk.len());
            window.extend_from_slice(chunk);
            window[window.len().saturating_sub(63)..].to_vec()
        };
        hit
    }

    /// Shannon entropy of the bytes seen, bits per byte.
    pub fn entropy(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let t = self.total as f64;
        self.counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / t;
                -p * p.log2()
            })
            .sum()
    }

    /// Section count of a 64- or 32-bit ELF header, if it is one.
    fn elf_sections(&self) -> Option<u16> {
        let h = &self.head;
        if h.len() < 52 || &h[..4] != b"\x7fELF" {
            return None;
        }
        let le = h[5] == 1;
        let at = if h[4] == 2 { 0x3c } else { 0x30 };
        let b = [*h.get(at)?, *h.get(at + 1)?];
        Some(if le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }

    /// `(packer, entropy)` when the file looks packed.
    pub fn verdict(&self) -> Option<(String, f64)> {
        let e = self.entropy();
        if let Some(name) = self.upx.or_else(|| Self::search(&mut Vec::new(), &self.end)) {
            return Some((name.to_string(), e));
        }
        match self.elf_sections() {
            Some(n) if n <= 3 && e >= 7.7 && self.total >= 4096 => Some((format!("unknown (entropy {e:.2}, {n} ELF sections)"), e)),
            _ => None,
        }
    }
}

/// Most bytes of a process's memory read for content.
pub const MEMORY_SCAN_CAP: u64 = 64 * 1024 * 1024;

/// Scans a process's readable memory mappings (`maps` + `mem` under the
/// proc root), at most `cap` bytes, for the content signatures. Special
/// mappings ([vvar], [vsyscall], [vdso]) and device files are skipped.
pub fn scan_memory(sig: &Signatures, proc_root: &Path, pid: u32, cap: u64, shown: &str, total: &mut u64) -> std::io::Result<Vec<Evidence>> {
    use std::os::unix::fs::FileExt;
    let dir = proc_root.join(pid.to_string());
    let maps = std::fs::read_to_string(dir.join("maps"))?;
    let mem = std::fs::File::open(dir.join("mem"))?;
    let mut scanner = sig.content_scanner();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = cap;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = line.splitn(6, ' ').nth(5).map(str::trim).unwrap_or("");
        if !perms.starts_with('r') || path.starts_with("[v") || path.starts_with("/dev/") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(mut a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        while a < b && left > 0 {
            let want = (b - a).min(buf.len() as u64).min(left) as usize;
            match mem.read_at(&mut buf[..want], a) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    scanner.feed(&buf[..n]);
                    a += n as u64;
                    left -= n as u64;
                    *total += n as u64;
                }
            }
        }
        if left == 0 {
            break;
        }
    }
    Ok(scanner
        .finish()
        .into_iter()
        .map(|(rule, strings)| {
            Evidence::from_rule(
                EvidenceKind::BinaryContent {
                    strings,
                    path: shown.to_string(),
                    source: "memory".into(),
                },
                &rule.id,
                rule.severity,
            )
        })
        .collect())
}

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
            if want_hash {
                out.push(Observation::BinarySha256(*key, v.sha256));
            }
            out.extend(v.evidence.iter().map(|e| Observation::Evidence(*key, e.clone())));
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        if self.denied > 0 {
            vec![format!(
                "executables of {} processes: permission denied (run as root or with CAP_SYS_PTRACE)",
                self.denied
            )]
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

#[cfg(test)]
mod tests {
    use super::*;

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
