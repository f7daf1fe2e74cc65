//! The on-disk spool: every event is appended (one JSON line, fsync'd)
//! before it counts as emitted, and stays until the collector has it. The
//! acknowledged position is kept in a small file replaced atomically. After
//! a crash (kill -9 mid-write) a torn last line is cut off and everything
//! after the acknowledged position is sent again — the collector stores each
//! event id once, so delivery is exactly-once in its store.
//!
//! Bounded: beyond `max_bytes` the oldest segment is dropped (and counted).

use rigwatch_signatures::report::{Event, EventKind};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    event: Event,
}

struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
}

/// The spool.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    agent_id: String,
    segments: VecDeque<Segment>,
    next_seq: u64,
    acked: u64,
    out: Option<File>,
    /// Events dropped because the spool was full.
    pub dropped: u64,
}

/// Creates (or truncates) a file only its owner can read: spool segments,
/// state and rejected batches hold full command lines (mode 0600 whatever
/// the umask).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Spool {
    /// Opens (or creates) a spool directory and recovers its state.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        // only the agent reads its spool (mode 0700 whatever the umask)
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let id_path = dir.join("agent_id");
        let agent_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let mut b = [0u8; 16];
                File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))?;
                let id = hex::encode(b);
                create_private(&id_path)?.write_all(id.as_bytes())?;
                sync_dir(dir);
                id
            }
        };
        let acked = std::fs::read_to_string(dir.join("acked"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut next_seq = acked + 1;
        for path in names {
            let (first, last, good_bytes) = scan_segment(&path)?;
            let len = std::fs::metadata(&path)?.len();
            if good_bytes < len {
                // a torn line from a crash mid-write: never fsync'd, never emitted
                OpenOptions::new().write(true).open(&path)?.set_len(good_bytes)?;
            }
            match (first, last) {
                (Some(f), Some(l)) if l > acked => {
                    next_seq = next_seq.max(l + 1);
                    segments.push_back(Segment {
                        first_seq: f,
                        last_seq: l,
                        path,
                        bytes: good_bytes,
                    });
                }
                (_, Some(l)) => {
                    next_seq = next_seq.max(l + 1);
                    std::fs::remove_file(&path)?;
                }
                _ => std::fs::remove_file(&path)?,
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            agent_id,
            segments,
            next_seq,
            acked,
            out: None,
            dropped: 0,
        })
    }

    /// This installation's agent id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Appends an event (fsync'd before returning) and returns it.
    pub fn append(&mut self, at: u64, kind: EventKind) -> std::io::Result<Event> {
        let seq = self.next_seq;
        let event = Event {
            event_id: format!("{}:{seq}", self.agent_id),
            at,
            kind,
        };
        let mut line = serde_json::to_vec(&Line { seq, event: event.clone() })?;
        line.push(b'\n');
        let roll = self.segments.back().is_none_or(|s| s.bytes + line.len() as u64 > SEGMENT_BYTES) || self.out.is_none();
        if roll {
            let path = self.dir.join(format!("{seq:020}.jsonl"));
            let f = {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?
            };
            sync_dir(&self.dir);
            self.out = Some(f);
            self.segments.push_back(Segment {
                first_seq: seq,
                last_seq: seq - 1,
                path,
                bytes: 0,
            });
        }
        let f = self.out.as_mut().expect("opened above");
        f.write_all(&line)?;
        f.sync_data()?;
        let seg = self.segments.back_mut().expect("pushed above");
        seg.bytes += line.len() as u64;
        seg.last_seq = seq;
        self.next_seq += 1;
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            let old = self.segments.pop_front().expect("len > 1");
            self.dropped += old.last_seq.saturating_sub(old.first_seq.max(self.acked + 1)) + 1;
            self.acked = self.acked.max(old.last_seq);
            std::fs::remove_file(&old.path)?;
            self.write_acked()?;
        }
        Ok(event)
    }

    /// Up to `max` unacknowledged events, oldest first, with their sequence numbers.
    pub fn pending(&self, max: usize) -> std::io::Result<Vec<(u64, Event)>> {
        let mut out = Vec::new();
        for s in &self.segments {
            if s.last_seq <= self.acked {
                continue;
            }
            for line in BufReader::new(File::open(&s.path)?).lines() {
                let Ok(l) = serde_json::from_str::<Line>(&line?) else { continue };
                if l.seq > self.acked {
                    out.push((l.seq, l.event));
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Marks everything up to `seq` as delivered; fully delivered segments go.
    pub fn ack(&mut self, seq: u64) -> std::io::Result<()> {
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        self.write_acked()?;
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last_seq <= self.acked) {
            let s = self.segments.pop_front().expect("checked");
            std::fs::remove_file(&s.path)?;
        }
        Ok(())
    }

    fn write_acked(&self) -> std::io::Result<()> {
        let tmp = self.dir.join("acked.tmp");
        let mut f = create_private(&tmp)?;
        f.write_all(self.acked.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("acked"))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Events waiting for the collector.
    pub fn queued(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.acked)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// First and last sequence numbers of a segment and the length of its whole lines.
fn scan_segment(path: &Path) -> std::io::Result<(Option<u64>, Option<u64>, u64)> {
    let data = std::fs::read(path)?;
    let (mut first, mut last, mut good) = (None, None, 0u64);
    let mut start = 0usize;
    for (i, &b) in data.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        match serde_json::from_slice::<Line>(&data[start..i]) {
            Ok(l) => {
                first.get_or_insert(l.seq);
                last = Some(l.seq);
                good = (i + 1) as u64;
            }
            Err(_) => break,
        }
        start = i + 1;
    }
    Ok((first, last, good))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_ack_and_recover_after_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        let id = s.agent_id().to_string();
        for t in 0..5 {
            s.append(t, EventKind::Heartbeat {}).unwrap();
        }
        assert_eq!(s.queued(), 5);
        let p = s.pending(3).unwrap();
        assert_eq!(p.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(p[0].1.event_id, format!("{id}:1"));
        s.ack(3).unwrap();
        assert_eq!(s.queued(), 2);
        drop(s);
        // a crash mid-write leaves half a line
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"seq\":6,\"event\":{\"event_").unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.agent_id(), id, "the agent id survives restarts");
        assert_eq!(s.pending(100).unwrap().iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![4, 5]);
        let e = s.append(9, EventKind::Heartbeat {}).unwrap();
        assert_eq!(
            e.event_id,
            format!("{id}:6"),
            "the torn line's number is reused: it was never emitted"
        );
        assert_eq!(s.pending(100).unwrap().len(), 3);
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        // the default umask of most services: files 0644, directories 0755
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let mut s = Spool::open(&spool, 1 << 30).unwrap();
        s.append(1, EventKind::Heartbeat {}).unwrap();
        let last = s.pending(10).unwrap().last().unwrap().0;
        s.ack(last).unwrap();
        nix::sys::stat::umask(old);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool), 0o700);
        for e in std::fs::read_dir(&spool).unwrap().flatten() {
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        }
    }

    #[test]
    fn bounded_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), SEGMENT_BYTES + 1000).unwrap();
        let big = "x".repeat(4000);
        for t in 0..3000u64 {
            s.append(
                t,
                EventKind::FindingResolved {
                    finding_id: big.clone(),
                    reason: "test".into(),
                },
            )
            .unwrap();
        }
        assert!(s.bytes() <= SEGMENT_BYTES + 1000 + 5000, "{}", s.bytes());
        assert!(s.dropped > 0);
        let p = s.pending(10_000).unwrap();
        assert_eq!(p.last().unwrap().0, 3000, "the newest events are kept");
        assert_eq!(p.len() as u64 + s.dropped, 3000);
    }
}
