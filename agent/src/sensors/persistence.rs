//! The persistence sensor: cron entries, systemd units, rc scripts and
//! miner service names under the host root that start a miner, linked to
//! the running process they start; and the host's miner preparation
//! (`vm.nr_hugepages` raised, the msr module writable).
//!
//! An entry counts when the command it runs carries miner signs (the
//! signature set's command-line and name rules) or the unit is named like a
//! miner service. It becomes `Persistence` evidence on each running process
//! whose executable or argv[0] is the entry's command path; an entry with no
//! running process is a host finding about its file.

use super::{Observation, Sensor, SensorError, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, HostSubject, Signatures, SubjectKind, Weight};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Service names used by mining campaigns.
const MINER_SERVICES: &[&str] = &[
    "c3pool_miner",
    "moneroocean_miner",
    "bot",
    "xmrig",
    "sysupdate",
    "networkservice",
    "kinsing",
    "kdevtmpfsi",
];

/// Comments of SSH keys that mining campaigns plant in authorized_keys.
/// "mdrfckr": the Outlaw (Shellbot/Dota) botnet's key, reported by Trend
/// Micro, Juniper and Cado Security since 2018.
const CAMPAIGN_SSH_KEYS: &[(&str, &str)] = &[("mdrfckr", "the Outlaw mining botnet")];

/// Re-read the files every this many passes.
const RESCAN_PASSES: u64 = 30;

/// One persistence entry that starts a miner.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The file (shown as on the host, `/etc/cron.d/x`).
    pub path: String,
    /// The line or directive.
    pub entry: String,
    /// Absolute paths the entry runs (for linking to processes).
    pub commands: Vec<String>,
    /// What the entry contributes.
    pub weight: Weight,
    /// The miner signs in its command (pool URL, wallet, miner name): the
    /// evidence of its host finding when its miner is not running.
    pub signs: Vec<Evidence>,
}

/// The persistence sensor.
pub struct PersistenceSensor {
    sig: Arc<Signatures>,
    host_root: PathBuf,
    pass: u64,
    entries: Vec<Entry>,
    context: Vec<String>,
    notes: Vec<String>,
}

impl PersistenceSensor {
    /// A sensor reading persistence files under `host_root` (normally `/`).
    pub fn new(sig: Arc<Signatures>, host_root: PathBuf) -> Self {
        PersistenceSensor {
            sig,
            host_root,
            pass: 0,
            entries: Vec::new(),
            context: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Every miner-starting entry under the host root.
    pub fn scan_host(&self) -> Vec<Entry> {
        let r = &self.host_root;
        // (file, kind, the user who can write it: their files are read as them, links not followed)
        let mut files: Vec<(PathBuf, Kind, Option<u32>)> = vec![
            (r.join("etc/crontab"), Kind::Cron, None),
            (r.join("etc/rc.local"), Kind::Script, None),
        ];
        for (dir, kind, user) in [
            ("etc/cron.d", Kind::Cron, None),
            ("var/spool/cron/crontabs", Kind::Cron, None),
            ("var/spool/cron", Kind::Cron, None),
            ("etc/cron.hourly", Kind::Script, None),
            ("etc/cron.daily", Kind::Script, None),
            ("etc/init.d", Kind::Script, None),
            ("etc/systemd/system", Kind::Unit, None),
            ("usr/lib/systemd/system", Kind::Unit, None),
            ("lib/systemd/system", Kind::Unit, None),
            ("root/.config/systemd/user", Kind::Unit, Some(0)),
        ] {
            files.extend(list_files(&r.join(dir)).into_iter().map(|p| (p, kind, user)));
        }
        for (home, uid) in homes(r) {
            files.extend(
                list_files(&home.join(".config/systemd/user"))
                    .into_iter()
                    .map(|p| (p, Kind::Unit, Some(uid))),
            );
        }
        let mut out = Vec::new();
        for (file, kind, user) in files {
            let Ok(text) = read_file(r, &file, user) else { continue };
            let text = String::from_utf8_lossy(&text);
            let shown = format!("/{}", file.strip_prefix(r).unwrap_or(&file).display()).replace("//", "/");
            let locked = immutable(&file);
            out.extend(assess_file(&self.sig, &shown, kind, &text).into_iter().map(|mut e| {
                if locked {
                    e.entry.push_str(" [file is immutable: chattr +i]");
                }
                e
            }));
        }
        out
    }

    /// Files a campaign locks with `chattr +i` or plants a key in: crontabs,
    /// ld.so.preload, authorized_keys (root's and every home's).
    fn locked_files(&self) -> Vec<String> {
        let r = &self.host_root;
        let mut files = vec![
            (r.join("etc/crontab"), None),
            (r.join("etc/ld.so.preload"), None),
            (r.join("root/.ssh/authorized_keys"), Some(0)),
        ];
        for dir in ["etc/cron.d", "var/spool/cron/crontabs", "var/spool/cron"] {
            files.extend(list_files(&r.join(dir)).into_iter().map(|f| (f, None)));
        }
        for (home, uid) in homes(r) {
            files.push((home.join(".ssh/authorized_keys"), Some(uid)));
        }
        let mut v = Vec::new();
        for (f, user) in files {
            let shown = format!("/{}", f.strip_prefix(r).unwrap_or(&f).display()).replace("//", "/");
            if immutable(&f) {
                v.push(format!(
                    "{shown} is immutable (chattr +i), as mining campaigns lock their crontabs and keys"
                ));
            }
            if f.ends_with(".ssh/authorized_keys") {
                let text = read_file(r, &f, user).unwrap_or_default();
                for line in String::from_utf8_lossy(&text).lines().filter(|l| !l.trim_start().starts_with('#')) {
                    let comment = line.split_whitespace().last().unwrap_or("");
                    if let Some((_, who)) = CAMPAIGN_SSH_KEYS.iter().find(|(c, _)| comment.eq_ignore_ascii_case(c)) {
                        v.push(format!("{shown} holds the SSH key \"{comment}\" of {who}"));
                    }
                }
            }
        }
        v
    }

    fn host_context(&self) -> Vec<String> {
        let mut v = Vec::new();
        let r = &self.host_root;
        if let Some(n) = std::fs::read_to_string(r.join("proc/sys/vm/nr_hugepages"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
        {
            v.push(format!("vm.nr_hugepages is {n} (miners raise it for RandomX)"));
        }
        v.extend(self.locked_files());
        if let Ok(s) = std::fs::read_to_string(r.join("sys/module/msr/parameters/allow_writes")) {
            if matches!(s.trim(), "on" | "Y" | "1") {
                v.push("the msr module allows writes (modprobe msr allow_writes=on, as XMRig does)".into());
            }
        }
        v
    }
}

/// The kind of a persistence file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A crontab (system crontabs carry a user field).
    Cron,
    /// A systemd unit.
    Unit,
    /// A shell script (rc.local, init.d, cron.daily).
    Script,
}

pub use crate::host::safefile::immutable;

/// Most bytes of one persistence file read (the rest is not looked at).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a persistence file under the host root `root` without following
/// the planter's tricks: a file a user can write (`user`: their uid) is read
/// only if it is no link and that user could read it; a FIFO or device in
/// place of any file is refused without blocking; at most
/// [`MAX_FILE_BYTES`].
fn read_file(root: &Path, file: &Path, user: Option<u32>) -> std::io::Result<Vec<u8>> {
    let rel = file.strip_prefix(root).unwrap_or(file);
    match user {
        Some(uid) => crate::host::safefile::read_in_root(root, rel, MAX_FILE_BYTES, uid),
        None => crate::host::safefile::read_host_file(root, rel, MAX_FILE_BYTES),
    }
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    // not `is_file()` through links: the read decides (a link is refused where a user plants it)
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .take(100_000)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v.truncate(2000);
    v
}

/// The home directories under `root/home` and their owners.
fn homes(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(root.join("home")) else {
        return Vec::new();
    };
    rd.flatten()
        .take(100_000)
        .filter_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            m.is_dir().then(|| (e.path(), m.uid()))
        })
        .take(1000)
        .collect()
}

/// The command part of a line: a cron line without its schedule (and user,
/// in system crontabs), a unit's Exec*= value, a script line as it is.
fn command_of(kind: Kind, line: &str, system_cron: bool) -> Option<String> {
    let l = line.trim();
    if l.is_empty() || l.starts_with('#') {
        return None;
    }
    match kind {
        Kind::Cron => {
            if l.contains('=') && !l.contains(' ') {
                return None; // VAR=value
            }
            let mut f = l.split_whitespace();
            let skip = if l.starts_with('@') { 1 } else { 5 } + usize::from(system_cron);
            let rest: Vec<&str> = f.by_ref().skip(skip).collect();
            (!rest.is_empty()).then(|| rest.join(" "))
        }
        Kind::Unit => {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .starts_with("Exec")
                .then(|| v.trim().trim_start_matches(['-', '@', '+', '!']).to_string())
        }
        Kind::Script => Some(l.to_string()),
    }
}

/// The miner-starting entries of one file (pure: for fixtures and tests).
pub fn assess_file(sig: &Signatures, shown: &str, kind: Kind, text: &str) -> Vec<Entry> {
    let system_cron = kind == Kind::Cron && !shown.contains("/var/spool/");
    let stem = shown
        .rsplit('/')
        .next()
        .unwrap_or(shown)
        .trim_end_matches(".service")
        .trim_end_matches(".timer");
    let service_named = kind != Kind::Cron && MINER_SERVICES.contains(&stem);
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(cmd) = command_of(kind, line, system_cron) else { continue };
        let commands: Vec<String> = cmd
            .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|' || c == '\'' || c == '"')
            .filter(|t| t.starts_with('/') && t.len() > 1)
            .map(String::from)
            .collect();
        let names: Vec<(&str, &str)> = commands
            .iter()
            .map(|c| ("persistence", c.rsplit('/').next().unwrap_or(c)))
            .collect();
        let mut ev = sig.scan_cmdline(&cmd);
        ev.extend(sig.match_names(&names));
        let strong = ev.iter().map(|e| e.weight).max();
        let weight = match rigwatch_signatures::score(&ev) {
            Some(rigwatch_signatures::Severity::Confirmed) => Weight::Confirmed,
            _ if strong >= Some(Weight::Likely) || service_named => Weight::Likely,
            _ => continue,
        };
        let entry: String = line.trim().chars().take(300).collect();
        ev.truncate(16);
        out.push(Entry {
            path: shown.to_string(),
            entry,
            commands,
            weight,
            signs: ev,
        });
    }
    out
}

impl Sensor for PersistenceSensor {
    fn name(&self) -> &'static str {
        "persistence"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        if self.pass.is_multiple_of(RESCAN_PASSES) {
            self.entries = self.scan_host();
            self.context = self.host_context();
        }
        self.pass += 1;
        self.notes.clear();
        let mut linked = vec![false; self.entries.len()];
        for p in snap.procs.values().filter(|p| !p.kernel_thread) {
            let exe = p.fixed.exe.as_deref().unwrap_or("").trim_end_matches(" (deleted)");
            let argv0 = p.fixed.argv.first().map(String::as_str).unwrap_or("");
            for (i, e) in self.entries.iter().enumerate() {
                if e.commands.iter().any(|c| c == exe || c == argv0) {
                    linked[i] = true;
                    out.push(Observation::Evidence(
                        p.key,
                        Evidence::heuristic(
                            EvidenceKind::Persistence {
                                path: e.path.clone(),
                                entry: e.entry.clone(),
                            },
                            e.weight,
                        ),
                    ));
                }
            }
        }
        // an entry whose miner is not running now is a finding about the host
        for (e, l) in self.entries.iter().zip(linked) {
            if !l {
                let subject = HostSubject {
                    kind: SubjectKind::Persistence,
                    name: e.path.clone(),
                };
                let detail = EvidenceKind::Persistence {
                    path: e.path.clone(),
                    entry: e.entry.clone(),
                };
                out.push(Observation::Host(subject.clone(), Evidence::heuristic(detail, e.weight)));
                out.extend(e.signs.iter().map(|x| Observation::Host(subject.clone(), x.clone())));
            }
        }
        self.notes.extend(self.context.iter().map(|c| format!("host: {c}")));
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("persistence_entries", self.entries.len() as u64)]
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
        self.pass = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signatures {
        rigwatch_signatures::load::load(&[], true).signatures
    }

    #[test]
    fn fixture_host_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/host");
        let s = PersistenceSensor::new(Arc::new(sig()), root);
        let entries = s.scan_host();
        let find = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("{p} not found in {entries:#?}"))
        };
        let cron = find("/etc/cron.d/apache-update");
        assert!(cron.commands.contains(&"/var/tmp/.x/kswapd0".to_string()));
        assert_eq!(cron.weight, Weight::Confirmed, "pool URL + wallet in the entry");
        let unit = find("/etc/systemd/system/c3pool_miner.service");
        assert!(unit.commands.contains(&"/root/c3pool/xmrig".to_string()));
        assert!(unit.weight >= Weight::Likely);
        find("/var/spool/cron/crontabs/www-data");
        find("/etc/rc.local");
        assert!(
            !entries
                .iter()
                .any(|e| e.path.contains("logrotate") || e.path.contains("ssh.service")),
            "benign entries stay out: {entries:#?}"
        );
        let ctx = s.host_context();
        assert!(ctx.iter().any(|c| c.contains("nr_hugepages is 1280")), "{ctx:?}");
        assert!(ctx.iter().any(|c| c.contains("msr")), "{ctx:?}");
    }

    #[test]
    fn campaign_keys_and_locked_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("root/.ssh")).unwrap();
        std::fs::create_dir_all(r.join("home/bob/.ssh")).unwrap();
        std::fs::create_dir_all(r.join("var/spool/cron/crontabs")).unwrap();
        std::fs::write(
            r.join("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenign alice@laptop\nssh-rsa AAAAB3NzaC1yc2EAAAABJQAAAQEArkx mdrfckr\n",
        )
        .unwrap();
        std::fs::write(
            r.join("home/bob/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBob bob@desk\n",
        )
        .unwrap();
        let tab = r.join("var/spool/cron/crontabs/root");
        std::fs::write(&tab, "*/10 * * * * /var/tmp/.x/kswapd0 -o stratum+tcp://pool.supportxmr.com:3333\n").unwrap();
        // chattr +i needs CAP_LINUX_IMMUTABLE and a filesystem with attributes (ext4, xfs, btrfs, tmpfs ≥ 6.0)
        let locked = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&tab)
            .status()
            .is_ok_and(|s| s.success());
        let s = PersistenceSensor::new(Arc::new(sig()), r.to_path_buf());
        let ctx = s.host_context();
        let entries = s.scan_host();
        if locked {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&tab).status();
        }
        assert!(
            ctx.iter()
                .any(|c| c == "/root/.ssh/authorized_keys holds the SSH key \"mdrfckr\" of the Outlaw mining botnet"),
            "{ctx:?}"
        );
        assert!(!ctx.iter().any(|c| c.contains("/home/bob")), "a benign key is nothing: {ctx:?}");
        let e = entries.iter().find(|e| e.path == "/var/spool/cron/crontabs/root").unwrap();
        if locked {
            assert!(
                ctx.iter()
                    .any(|c| c.starts_with("/var/spool/cron/crontabs/root is immutable (chattr +i)")),
                "{ctx:?}"
            );
            assert!(e.entry.ends_with("[file is immutable: chattr +i]"), "{e:?}");
        } else {
            eprintln!("chattr +i is not possible here: the immutable check is not exercised");
            assert!(!e.entry.contains("immutable"));
        }
    }

    /// Runs `f` in a thread; a planted FIFO that blocked it would hang the
    /// test, so it gives up after a minute and says so.
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("blocked on a planted file")
    }

    #[test]
    fn planted_fifos_and_links_in_a_home_are_not_read() {
        use nix::sys::stat::Mode;
        let d = tempfile::tempdir().unwrap();
        let r = d.path().to_path_buf();
        let units = r.join("home/bob/.config/systemd/user");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::create_dir_all(r.join("home/bob/.ssh")).unwrap();
        std::fs::create_dir_all(r.join("etc/cron.d")).unwrap();
        let miner = "[Service]\nExecStart=/home/bob/.x/xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A\n";
        std::fs::write(units.join("real.service"), miner).unwrap();
        // FIFOs where a unit, a crontab and authorized_keys should be
        for f in [
            units.join("fifo.service"),
            r.join("home/bob/.ssh/authorized_keys"),
            r.join("etc/cron.d/fifo"),
        ] {
            nix::unistd::mkfifo(&f, Mode::from_bits_truncate(0o666)).unwrap();
        }
        // a link to a file outside the user's reach, and a unit that is a link
        std::fs::create_dir_all(r.join("root")).unwrap();
        std::fs::write(r.join("root/secret.service"), miner.replace("xmrig", "secret-miner")).unwrap();
        std::os::unix::fs::symlink("/root/secret.service", units.join("link.service")).unwrap();
        std::os::unix::fs::symlink(r.join("root/secret.service"), units.join("abs.service")).unwrap();

        let s = PersistenceSensor::new(Arc::new(sig()), r.clone());
        let (entries, ctx) = within_a_minute(move || (s.scan_host(), s.host_context()));
        assert!(
            entries.iter().any(|e| e.path == "/home/bob/.config/systemd/user/real.service"),
            "the regular unit is read: {entries:#?}"
        );
        assert!(
            !entries
                .iter()
                .any(|e| e.path.contains("link") || e.path.contains("abs") || e.entry.contains("secret-miner")),
            "a link is not followed: {entries:#?}"
        );
        assert!(!ctx.iter().any(|c| c.contains("authorized_keys")), "{ctx:?}");
    }

    #[test]
    fn cron_and_unit_lines() {
        assert_eq!(
            command_of(Kind::Cron, "*/5 * * * * root /opt/x -o a", true).as_deref(),
            Some("/opt/x -o a")
        );
        assert_eq!(command_of(Kind::Cron, "@reboot /opt/x", false).as_deref(), Some("/opt/x"));
        assert_eq!(command_of(Kind::Cron, "SHELL=/bin/sh", true), None);
        assert_eq!(
            command_of(Kind::Unit, "ExecStart=-/usr/bin/x --y", false).as_deref(),
            Some("/usr/bin/x --y")
        );
        assert_eq!(command_of(Kind::Unit, "Description=x", false), None);
    }
}
