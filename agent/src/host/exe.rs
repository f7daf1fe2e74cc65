//! Scanning executables and process memory: one streaming read that hashes
//! (SHA-256) and matches the content signatures, the packing probe, and the
//! capped read of a process's readable memory. With YARA rules loaded, the
//! bytes of that same read (already capped) are kept and given to yara-x
//! once the read is done; a scan that times out is noted in the verdict.

use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

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
    /// Why the YARA rules could not judge the file (a scan timeout).
    pub yara_error: Option<String>,
}

/// Streams a reader once: SHA-256 and content rules. Pure over the reader.
pub fn scan_reader(sig: &Signatures, r: &mut dyn Read, cap: u64, shown: &str, total: &mut u64) -> std::io::Result<Verdict> {
    let mut hasher = Sha256::new();
    let mut scanner = sig.content_scanner();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = cap;
    let mut truncated = false;
    let mut packing = PackingProbe::default();
    // the same bytes for YARA, when rules are loaded (bounded by `cap`)
    let mut kept: Option<Vec<u8>> = sig.yara().map(|_| Vec::new());
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
        if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&buf[..n]);
        }
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
                yara: None,
            },
            &rule.id,
            rule.severity,
        ));
    }
    let mut yara_error = None;
    if let (Some(y), Some(bytes)) = (sig.yara(), kept) {
        match y.scan(&bytes, shown, "executable") {
            Ok(ev) => evidence.extend(ev),
            Err(e) => yara_error = Some(e.to_string()),
        }
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
        yara_error,
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
/// proc root), at most `cap` bytes, for the content signatures and the YARA
/// rules (given the mappings read, one after the other, as one buffer).
/// Special mappings ([vvar], [vsyscall], [vdso]) and device files are skipped.
pub fn scan_memory(sig: &Signatures, proc_root: &Path, pid: u32, cap: u64, shown: &str, total: &mut u64) -> std::io::Result<Vec<Evidence>> {
    use std::os::unix::fs::FileExt;
    let dir = proc_root.join(pid.to_string());
    let maps = std::fs::read_to_string(dir.join("maps"))?;
    let mem = std::fs::File::open(dir.join("mem"))?;
    let mut scanner = sig.content_scanner();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = cap;
    let mut kept: Option<Vec<u8>> = sig.yara().map(|_| Vec::new());
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
                    if let Some(k) = kept.as_mut() {
                        k.extend_from_slice(&buf[..n]);
                    }
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
    let mut evidence: Vec<Evidence> = scanner
        .finish()
        .into_iter()
        .map(|(rule, strings)| {
            Evidence::from_rule(
                EvidenceKind::BinaryContent {
                    strings,
                    path: shown.to_string(),
                    source: "memory".into(),
                    yara: None,
                },
                &rule.id,
                rule.severity,
            )
        })
        .collect();
    if let (Some(y), Some(bytes)) = (sig.yara(), kept) {
        // a timeout leaves what the content rules found
        evidence.extend(y.scan(&bytes, shown, "memory").unwrap_or_default());
    }
    Ok(evidence)
}
