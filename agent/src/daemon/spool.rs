//! The on-disk spool: every event is appended (one JSON line, fsync'd)
//! before it counts as emitted, and stays until the collector has it. The
//! acknowledged position is kept in a small file replaced atomically. After
//! a crash (kill -9 mid-write) a torn last line is cut off and everything
//! after the acknowledged position is sent again — the collector stores each
//! event id once, so delivery is exactly-once in its store.
//!
//! Bounded: beyond `max_bytes` the oldest segment is dropped (and counted).
//!
//! A full disk loses nothing it can keep: a failed append is cut back off
//! the segment (truncated to its last good offset, or the next append starts
//! a new segment), so no line is ever glued onto a partial one; the event
//! waits in a small bounded backlog in memory and is written before the next
//! one once there is room. Recovery skips a damaged line (salvaging a whole
//! line glued after it) and keeps every good line after it.

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
    /// Appends that failed (a full disk, an I/O error).
    pub write_errors: u64,
    /// Events not yet written because an append failed, oldest first, with
    /// their serialised size (bounded by [`BACKLOG_EVENTS`] and [`BACKLOG_BYTES`]).
    backlog: VecDeque<(u64, EventKind, usize)>,
}

/// Events kept in memory while the spool cannot be written.
pub const BACKLOG_EVENTS: usize = 1024;
/// Bytes of events kept in memory while the spool cannot be written.
pub const BACKLOG_BYTES: usize = 8 * 1024 * 1024;

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
                // a torn last line from a crash mid-write: never fsync'd, never
                // emitted (damaged lines before it stay and are skipped on read)
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
            write_errors: 0,
            backlog: VecDeque::new(),
        })
    }

    /// This installation's agent id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Appends an event (fsync'd before returning) and returns it. Events
    /// kept from earlier failed appends are written first, in order.
    ///
    /// On failure nothing of the line stays in the spool and the event is
    /// kept in the backlog (or counted in `dropped` when that is full) to be
    /// written by a later append.
    pub fn append(&mut self, at: u64, kind: EventKind) -> std::io::Result<Event> {
        while let Some((t, k, n)) = self.backlog.pop_front() {
            if let Err(e) = self.write_event(t, k.clone()) {
                self.backlog.push_front((t, k, n));
                self.keep(at, kind);
                self.write_errors += 1;
                return Err(e);
            }
        }
        match self.write_event(at, kind.clone()) {
            Ok(e) => {
                self.evict()?;
                Ok(e)
            }
            Err(e) => {
                self.keep(at, kind);
                self.write_errors += 1;
                Err(e)
            }
        }
    }

    /// Keeps an event that could not be written for the next append.
    fn keep(&mut self, at: u64, kind: EventKind) {
        let n = serde_json::to_vec(&kind).map(|v| v.len()).unwrap_or(0);
        let used: usize = self.backlog.iter().map(|(_, _, n)| n).sum();
        if self.backlog.len() < BACKLOG_EVENTS && used + n <= BACKLOG_BYTES {
            self.backlog.push_back((at, kind, n));
        } else {
            self.dropped += 1;
        }
    }

    /// Events waiting in memory for room on disk.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn write_event(&mut self, at: u64, kind: EventKind) -> std::io::Result<Event> {
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
            // a file of this name holds no good line: it is one this spool
            // started for `seq` whose append failed (next_seq is past every
            // recovered line), so it is emptied, never appended to
            let f = {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?
            };
            f.set_len(0)?;
            sync_dir(&self.dir);
            if self.segments.back().is_some_and(|s| s.path == path) {
                self.segments.pop_back();
            }
            self.out = Some(f);
            self.segments.push_back(Segment {
                first_seq: seq,
                last_seq: seq - 1,
                path,
                bytes: 0,
            });
        }
        let good = self.segments.back().expect("pushed above").bytes;
        let f = self.out.as_mut().expect("opened above");
        if let Err(e) = f.write_all(&line).and_then(|()| f.sync_data()) {
            // cut the partial line off (the handle appends, so the next line
            // starts at `good`); if even that fails, the next append starts a
            // new segment and recovery skips the damaged tail
            if f.set_len(good).and_then(|()| f.sync_data()).is_err() {
                self.out = None;
            }
            return Err(e);
        }
        let seg = self.segments.back_mut().expect("pushed above");
        seg.bytes += line.len() as u64;
        seg.last_seq = seq;
        self.next_seq += 1;
        Ok(event)
    }

    /// Beyond `max_bytes`, drops the oldest segments (counted in `dropped`).
    fn evict(&mut self) -> std::io::Result<()> {
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            let old = self.segments.pop_front().expect("len > 1");
            self.dropped += old.last_seq.saturating_sub(old.first_seq.max(self.acked + 1)) + 1;
            self.acked = self.acked.max(old.last_seq);
            std::fs::remove_file(&old.path)?;
            self.write_acked()?;
        }
        Ok(())
    }

    /// Up to `max` unacknowledged events, oldest first, with their sequence numbers.
    pub fn pending(&self, max: usize) -> std::io::Result<Vec<(u64, Event)>> {
        let mut out = Vec::new();
        for s in &self.segments {
            if s.last_seq <= self.acked {
                continue;
            }
            for line in BufReader::new(File::open(&s.path)?).split(b'\n') {
                let Some(l) = parse_line(&line?) else { continue };
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

    /// Events waiting for the collector (on disk and in the backlog).
    pub fn queued(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.acked) + self.backlog.len() as u64
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// First and last sequence numbers of a segment's good lines, and the length
/// of its whole lines (a damaged line is skipped, the lines after it kept;
/// only an unterminated tail is left out).
fn scan_segment(path: &Path) -> std::io::Result<(Option<u64>, Option<u64>, u64)> {
    let data = std::fs::read(path)?;
    let (mut first, mut last, mut good) = (None, None, 0u64);
    let mut start = 0usize;
    for (i, &b) in data.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        if let Some(l) = parse_line(&data[start..i]) {
            first = Some(first.map_or(l.seq, |f: u64| f.min(l.seq)));
            last = Some(last.map_or(l.seq, |x: u64| x.max(l.seq)));
        }
        good = (i + 1) as u64;
        start = i + 1;
    }
    Ok((first, last, good))
}

/// One spool line, or the whole line glued after a partial one (a write cut
/// short by an older agent, or by a crash, with the next line appended to it).
fn parse_line(b: &[u8]) -> Option<Line> {
    if let Ok(l) = serde_json::from_slice::<Line>(b) {
        return Some(l);
    }
    const START: &[u8] = b"{\"seq\":";
    let at = b.windows(START.len()).skip(1).rposition(|w| w == START)? + 1;
    serde_json::from_slice::<Line>(&b[at..]).ok()
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

    fn big(n: usize, tag: u64) -> EventKind {
        EventKind::FindingResolved {
            finding_id: format!("{tag}-{}", "y".repeat(n)),
            reason: "test".into(),
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn recovery_skips_a_damaged_line_and_keeps_every_good_line_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        for t in 0..6 {
            s.append(t, EventKind::Heartbeat {}).unwrap();
        }
        drop(s);
        let seg = segments(dir.path()).pop().unwrap();
        let data = std::fs::read(&seg).unwrap();
        let lines: Vec<&[u8]> = data.split_inclusive(|b| *b == b'\n').collect();
        assert_eq!(lines.len(), 6);
        // line 2 damaged in place; line 4 cut short with line 5 glued onto it
        // (what an older agent left after a full disk); line 6 intact
        let mut out = Vec::new();
        out.extend_from_slice(lines[0]);
        out.extend_from_slice(b"{\"seq\":2,\"ev\x00\x00garbage\n");
        out.extend_from_slice(lines[2]);
        out.extend_from_slice(&lines[3][..20]);
        out.extend_from_slice(lines[4]);
        out.extend_from_slice(lines[5]);
        std::fs::write(&seg, &out).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        let seqs = |s: &Spool| s.pending(100).unwrap().iter().map(|(q, _)| *q).collect::<Vec<_>>();
        assert_eq!(seqs(&s), vec![1, 3, 5, 6], "every good line after the damaged ones is kept");
        assert_eq!(std::fs::read(&seg).unwrap(), out, "recovery deletes nothing whole");
        let e = s.append(9, EventKind::Heartbeat {}).unwrap();
        assert!(e.event_id.ends_with(":7"), "{}", e.event_id);
        assert_eq!(seqs(&s), vec![1, 3, 5, 6, 7]);
        s.ack(7).unwrap();
        assert_eq!(s.queued(), 0);
    }

    /// A small tmpfs, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: mounting a tmpfs needs root");
                return None;
            }
            let d = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
                .arg(d.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped: cannot mount a tmpfs here");
                return None;
            }
            Some(Tmpfs(d))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    #[test]
    fn a_full_disk_glues_no_lines_loses_no_events_and_counts_failures() {
        let Some(fs) = Tmpfs::mount("64k") else { return };
        let dir = fs.0.path().join("spool");
        let mut s = Spool::open(&dir, 1 << 30).unwrap();
        // most of the disk taken by something else
        let filler = fs.0.path().join("filler");
        std::fs::write(&filler, vec![0u8; 40 * 1024]).unwrap();
        let mut sent = 0u64;
        let mut failed = 0u64;
        for t in 0..15u64 {
            sent += 1;
            if s.append(t, big(3000, t)).is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0, "the disk never filled");
        assert_eq!(s.write_errors, failed, "every failed append is counted");
        assert_eq!(s.dropped, 0);
        assert!(s.backlog() > 0);
        assert_eq!(s.queued(), sent, "failed appends wait in the backlog");
        // on disk: whole lines only, nothing glued or torn
        for seg in segments(&dir) {
            let data = std::fs::read(&seg).unwrap();
            assert!(data.is_empty() || data.ends_with(b"\n"), "{} ends in a partial line", seg.display());
            for l in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                serde_json::from_slice::<Line>(l).expect("a line glued onto a partial one");
            }
        }
        // room again: the backlog goes out first, in order, then the new event
        std::fs::remove_file(&filler).unwrap();
        sent += 1;
        s.append(99, big(3000, 99)).unwrap();
        assert_eq!(s.backlog(), 0);
        let tags = |s: &Spool| -> Vec<String> {
            s.pending(1000)
                .unwrap()
                .into_iter()
                .map(|(_, e)| match e.kind {
                    EventKind::FindingResolved { finding_id, .. } => finding_id.split('-').next().unwrap().to_string(),
                    _ => panic!(),
                })
                .collect()
        };
        let want: Vec<String> = (0..15u64).chain([99]).map(|t| t.to_string()).collect();
        assert_eq!(tags(&s), want);
        let seqs: Vec<u64> = s.pending(1000).unwrap().iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, (1..=sent).collect::<Vec<_>>(), "no number skipped or reused");
        // a restart keeps every line
        drop(s);
        let s = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(tags(&s), want);
    }
}
