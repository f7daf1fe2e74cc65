//! Findings as SIEM events from the agent itself (`[siem]`): each change
//! (opened, updated, resolved) as one OCSF Detection Finding or ECS document
//! (`rigwatch_signatures::siem`, the same mapping the collector uses),
//! appended to an NDJSON file and/or sent to syslog as RFC 5424.
//!
//! The events carry what the miner controls (names, command lines) only as
//! JSON strings: control characters are escaped, so a command line cannot
//! start a second line or a forged syslog header. The file is rotated at
//! `file_max_bytes` (one old file kept); a syslog datagram too large for
//! the transport is sent again with the finding cut down (its `trimmed`
//! note says so). Nothing here blocks: the unix socket is non-blocking and
//! a send that fails is counted (`rigwatch_siem_events_total{outcome}`).

use super::config::SiemConfig;
use super::metrics::Metrics;
use rigwatch_signatures::siem::{event, Activity, Format};
use rigwatch_signatures::{Finding, Severity};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Sizes a syslog message's finding is cut down to, one after the other,
/// when the transport refuses it (UDP: 64 KiB at most, usually less).
const SYSLOG_TRIM: [usize; 3] = [16 * 1024, 4 * 1024, 1024];

enum Syslog {
    Unix(std::os::unix::net::UnixDatagram, PathBuf),
    Udp(std::net::UdpSocket, std::net::SocketAddr),
}

/// The SIEM sink.
pub struct SiemSink {
    format: Format,
    file: Option<(PathBuf, std::fs::File, u64)>,
    max_bytes: u64,
    syslog: Option<Syslog>,
    host: String,
    said: Option<String>,
}

/// A syslog HOSTNAME: printable ASCII without spaces, at most 255 (RFC 5424 6.2.4).
fn header_host(h: &str) -> String {
    let s: String = h.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn open_file(path: &PathBuf) -> std::io::Result<(std::fs::File, u64)> {
    let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

impl SiemSink {
    /// Opens what `cfg` names; `None` when it names nothing. Errors (a file
    /// that cannot be created, a bad syslog address) stop the agent at start.
    pub fn open(cfg: &SiemConfig, host: &str) -> anyhow::Result<Option<SiemSink>> {
        if cfg.file.is_none() && cfg.syslog.is_empty() {
            return Ok(None);
        }
        let file = match &cfg.file {
            Some(p) => {
                let (f, len) = open_file(p).map_err(|e| anyhow::anyhow!("siem.file {}: {e}", p.display()))?;
                Some((p.clone(), f, len))
            }
            None => None,
        };
        let syslog = match cfg.syslog.split_once(':') {
            None if cfg.syslog.is_empty() => None,
            Some(("unix", path)) => {
                let s = std::os::unix::net::UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                Some(Syslog::Unix(s, PathBuf::from(path)))
            }
            Some(("udp", addr)) => {
                let to: std::net::SocketAddr = addr
                    .parse()
                    .map_err(|e| anyhow::anyhow!("siem.syslog {:?}: {e} (udp:IP:PORT, a literal address)", cfg.syslog))?;
                let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = std::net::UdpSocket::bind(bind)?;
                s.set_nonblocking(true)?;
                Some(Syslog::Udp(s, to))
            }
            _ => anyhow::bail!("siem.syslog {:?}: use unix:/dev/log or udp:IP:PORT", cfg.syslog),
        };
        Ok(Some(SiemSink {
            format: cfg.format,
            file,
            max_bytes: cfg.file_max_bytes.max(4096),
            syslog,
            host: header_host(host),
            said: None,
        }))
    }

    /// Writes one change.
    pub fn send(&mut self, f: &Finding, activity: Activity, now_ms: u64, m: &Metrics) {
        let version = env!("CARGO_PKG_VERSION");
        let line = event(self.format, f, activity, now_ms, version).to_string();
        if self.file.is_some() {
            let r = self.write_file(&line);
            self.count(m, "file", r);
        }
        if self.syslog.is_some() {
            let mut r = self.send_syslog(f, activity, now_ms, &line);
            for max in SYSLOG_TRIM {
                if !matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE)) {
                    break;
                }
                let small = f.clone().bounded(max);
                r = self.send_syslog(
                    f,
                    activity,
                    now_ms,
                    &event(self.format, &small, activity, now_ms, version).to_string(),
                );
            }
            self.count(m, "syslog", r);
        }
    }

    fn count(&mut self, m: &Metrics, sink: &'static str, r: std::io::Result<()>) {
        match r {
            Ok(()) => m.siem_events.with_label_values(&[sink, "written"]).inc(),
            Err(e) => {
                m.siem_events.with_label_values(&[sink, "failed"]).inc();
                let why = format!("{sink}: {e}");
                if self.said.as_deref() != Some(why.as_str()) {
                    tracing::error!(event = "siem_write_error", error = why.as_str(), "a SIEM event was not written");
                    self.said = Some(why);
                }
            }
        }
    }

    fn write_file(&mut self, line: &str) -> std::io::Result<()> {
        let (path, file, len) = self.file.as_mut().expect("checked");
        if *len > 0 && *len + line.len() as u64 + 1 > self.max_bytes {
            let mut old = path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&*path, old)?;
            let (f, l) = open_file(path)?;
            *file = f;
            *len = l;
        }
        file.write_all(format!("{line}\n").as_bytes())?;
        *len += line.len() as u64 + 1;
        Ok(())
    }

    fn send_syslog(&self, f: &Finding, activity: Activity, now_ms: u64, json: &str) -> std::io::Result<()> {
        // facility auth (4); severity by what happened
        let severity = match (activity, f.severity) {
            (Activity::Resolved, _) => 5,
            (_, Severity::Confirmed) => 2,
            (_, Severity::Likely) => 3,
            (_, Severity::Suspicious) => 4,
        };
        let ts = rigwatch_signatures::siem::rfc3339(now_ms / 1000).replace('Z', &format!(".{:03}Z", now_ms % 1000));
        let msg = format!(
            "<{}>1 {ts} {} rigwatch {} {} - \u{feff}{json}",
            4 * 8 + severity,
            self.host,
            std::process::id(),
            activity.as_str()
        );
        let sent = match self.syslog.as_ref().expect("checked") {
            Syslog::Unix(s, path) => s.send_to(msg.as_bytes(), path)?,
            Syslog::Udp(s, to) => s.send_to(msg.as_bytes(), to)?,
        };
        if sent < msg.len() {
            return Err(std::io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigwatch_signatures::{Evidence, EvidenceKind, ProcessInfo, Weight};

    fn finding(cmdline: &str) -> Finding {
        Finding {
            id: "f1".into(),
            severity: Severity::Confirmed,
            host: "node a\n<13>1 forged".into(),
            pid: Some(7),
            process: ProcessInfo {
                pid: 7,
                comm: "xmrig".into(),
                cmdline: cmdline.into(),
                ..Default::default()
            },
            evidence: vec![Evidence::heuristic(EvidenceKind::ShortLived { how: "x".into() }, Weight::Info)],
            flow: None,
            subject: None,
            cpu_cores: None,
            gpu: None,
            first_seen: 1,
            last_seen: 2,
        }
    }

    #[test]
    fn syslog_lines_are_rfc5424_and_hostile_text_stays_inside_the_json() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("log");
        let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
        let file = dir.path().join("events.ndjson");
        let cfg = SiemConfig {
            file: Some(file.clone()),
            file_max_bytes: 4096,
            syslog: format!("unix:{}", sock.display()),
            ..Default::default()
        };
        let mut s = SiemSink::open(&cfg, "node a\n<13>1 forged").unwrap().unwrap();
        let m = Metrics::new();
        let evil = "xmrig\n<34>1 2026-01-01T00:00:00Z host su - - forged\r\u{0}";
        s.send(&finding(evil), Activity::Opened, 1_796_000_000_123, &m);
        let mut buf = vec![0u8; 70_000];
        let n = rx.recv(&mut buf).unwrap();
        let msg = String::from_utf8(buf[..n].to_vec()).unwrap();
        assert!(
            msg.starts_with("<34>1 2026-11-30T00:53:20.123Z nodea<13>1forged rigwatch "),
            "{msg}"
        );
        assert!(msg.contains(" finding_opened - \u{feff}{"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "one line, whatever the command line holds: {msg:?}");
        let json: serde_json::Value = serde_json::from_str(msg.split('\u{feff}').nth(1).unwrap()).unwrap();
        assert_eq!(json["class_uid"], 2004);
        assert_eq!(json["evidences"][0]["process"]["cmd_line"], evil);
        // the file: one line per event, rotated past its size, one old file kept
        for _ in 0..6 {
            s.send(&finding(&"x".repeat(300)), Activity::Updated, 1, &m);
        }
        let lines = std::fs::read_to_string(&file).unwrap();
        assert!(lines.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        assert!(std::fs::metadata(&file).unwrap().len() <= 4096);
        assert!(dir.path().join("events.ndjson.1").exists(), "rotated");
        assert_eq!(m.siem_events.with_label_values(&["syslog", "written"]).get(), 7);
        // bad addresses are refused at start
        for bad in ["tcp:1.2.3.4:514", "udp:collector.example:514", "dev/log"] {
            let cfg = SiemConfig {
                syslog: bad.into(),
                ..Default::default()
            };
            assert!(SiemSink::open(&cfg, "h").is_err(), "{bad}");
        }
    }
}
