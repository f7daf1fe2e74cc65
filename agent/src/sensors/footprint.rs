//! The footprint sensor: what a mining trojan does to the host besides
//! mining, seen as a change between two passes. Public-cloud intrusions that
//! end in a miner flush the firewall, stop or remove the cloud provider's
//! security and monitoring agents, and switch SELinux to permissive or
//! unload AppArmor's profiles before they start mining.
//!
//! Each watched thing has a baseline: the first pass records it, a later
//! pass that finds it weakened (rules gone, a DROP policy now ACCEPT, a
//! security unit's file removed, masked or its service stopped, enforcing
//! now permissive) reports a host finding (`footprint` subject) whose
//! evidence says what changed, before → after. The finding stays while the
//! weakening lasts; once the thing is back (or any pass finds nothing
//! weakened) the baseline moves to the present, and the finding resolves.
//! Each piece is `suspicious` alone: a flushed firewall is an admin's right,
//! and the finding asks for a look, not for an alarm.
//!
//! Files locked with `chattr +i` are a state, not a change: an executable or
//! a file named like a miner under `/tmp`, `/var/tmp` or `/dev/shm`, or the
//! executable of a running process, that carries the immutable attribute is
//! a host finding about the file while it does (and `footprint` evidence on
//! the processes it runs as).
//!
//! Everything is read-only and bounded: the ruleset is dumped through a
//! `NETLINK_NETFILTER` socket of the agent's own network namespace (no `nft`
//! or `iptables` is run), with a receive timeout, a deadline and caps on
//! bytes and entries, and iptables-legacy's loaded tables are read beside
//! it ([`crate::host::iptables`]); unit files and LSM state are read under the host root
//! without following links.

use super::{Observation, Sensor, SensorError, Snapshot};
use rigwatch_signatures::{Evidence, EvidenceKind, HostSubject, Signatures, SubjectKind, Weight};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Security and monitoring agents that mining trojans stop or remove, by
/// systemd unit name: the cloud providers' agents first (the Alibaba and
/// Tencent Cloud scripts of the Kinsing, TeamTNT, WatchDog and 8220 gangs
/// uninstall these by name), then host security tools.
pub const SECURITY_UNITS: &[(&str, &str)] = &[
    ("aliyun.service", "Alibaba Cloud assistant (aliyun-service)"),
    ("aegis.service", "Alibaba Cloud Security Center agent (AliYunDun)"),
    ("AliYunDun.service", "Alibaba Cloud Security Center agent"),
    ("AliYunDunMonitor.service", "Alibaba Cloud Security Center monitor"),
    ("cloudmonitor.service", "Alibaba CloudMonitor agent"),
    ("YDService.service", "Tencent Cloud host security (YunJing)"),
    ("YDLive.service", "Tencent Cloud host security (YunJing)"),
    ("stargate.service", "Tencent Cloud monitoring (stargate)"),
    ("barad_agent.service", "Tencent Cloud monitoring (barad_agent)"),
    ("tat_agent.service", "Tencent Cloud automation agent"),
    ("hostguard.service", "Huawei Cloud host security"),
    ("uniagent.service", "Huawei Cloud unified agent"),
    ("amazon-ssm-agent.service", "AWS Systems Manager agent"),
    ("snap.amazon-ssm-agent.amazon-ssm-agent.service", "AWS Systems Manager agent (snap)"),
    ("amazon-cloudwatch-agent.service", "AWS CloudWatch agent"),
    ("google-guest-agent.service", "Google Cloud guest agent"),
    ("google-osconfig-agent.service", "Google Cloud OS Config agent"),
    ("walinuxagent.service", "Azure Linux agent"),
    ("waagent.service", "Azure Linux agent"),
    ("falco.service", "Falco"),
    ("falco-modern-bpf.service", "Falco"),
    ("falco-kmod.service", "Falco"),
    ("falco-bpf.service", "Falco"),
    ("wazuh-agent.service", "Wazuh agent"),
    ("ossec.service", "OSSEC"),
    ("auditd.service", "the Linux audit daemon"),
    ("osqueryd.service", "osquery"),
    ("falcon-sensor.service", "CrowdStrike Falcon sensor"),
    ("mdatp.service", "Microsoft Defender for Endpoint"),
    ("sentinelone.service", "SentinelOne agent"),
    ("cbagentd.service", "Carbon Black agent"),
    ("ds_agent.service", "Trend Micro Deep Security agent"),
    ("elastic-agent.service", "Elastic Agent"),
    ("ElasticEndpoint.service", "Elastic Endpoint"),
    ("rigwatch.service", "rigwatch itself"),
];

/// Where unit files live, under the host root (the first holds masks).
const UNIT_DIRS: &[&str] = &["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"];

/// One weakening: `what` went from `before` to `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What changed, for the on-call admin ("default policy of ip filter INPUT").
    pub what: String,
    /// How it was.
    pub before: String,
    /// How it is now.
    pub after: String,
}

impl Change {
    fn new(what: impl Into<String>, before: impl Into<String>, after: impl Into<String>) -> Change {
        Change {
            what: what.into(),
            before: before.into(),
            after: after.into(),
        }
    }

    fn evidence(&self) -> Evidence {
        Evidence::heuristic(
            EvidenceKind::Footprint {
                what: self.what.clone(),
                before: self.before.clone(),
                after: self.after.clone(),
            },
            Weight::Suspicious,
        )
    }
}

/// A state and the last one found not weakened: the first state seen is
/// the baseline; a state with changes leaves the baseline where it was (so
/// the finding lasts), one without moves it to the present.
#[derive(Debug, Default)]
struct Baseline<S> {
    known: Option<S>,
}

impl<S> Baseline<S> {
    fn step(&mut self, cur: S, diff: impl Fn(&S, &S) -> Vec<Change>) -> Vec<Change> {
        let changes = match &self.known {
            Some(before) => diff(before, &cur),
            None => Vec::new(),
        };
        if changes.is_empty() {
            self.known = Some(cur);
        }
        changes
    }
}

// ---------------------------------------------------------------- firewall

/// A chain of the nftables ruleset (iptables-nft's tables are nftables tables).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainId {
    /// The address family (`NFPROTO_*`: 1 inet, 2 ip, 10 ip6, …).
    pub family: u8,
    /// The table's name.
    pub table: String,
    /// The chain's name.
    pub chain: String,
}

/// What the firewall comparison needs of one chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chain {
    /// The hook of a base chain (`NF_INET_*`: 1 input, 2 forward, 3 output).
    pub hook: Option<u32>,
    /// The default policy of a base chain (`NF_DROP` 0, `NF_ACCEPT` 1).
    pub policy: Option<u32>,
    /// Rules in it.
    pub rules: u64,
}

/// The nftables ruleset of one network namespace, as far as it matters here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ruleset {
    /// Every chain (rules of a chain the chain dump missed are counted too).
    pub chains: BTreeMap<ChainId, Chain>,
    /// Chains and rules beyond the caps were not looked at.
    pub truncated: bool,
}

impl Ruleset {
    /// All rules in all chains.
    pub fn rules(&self) -> u64 {
        self.chains.values().map(|c| c.rules).sum()
    }
}

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// Most chains kept (the rest are counted in `truncated`).
const MAX_CHAINS: usize = 4096;
/// Most bytes one dump reads.
const MAX_DUMP_BYTES: usize = 64 << 20;
/// How long one dump may take in all.
const DUMP_DEADLINE: Duration = Duration::from_secs(2);

fn family_name(f: u8) -> String {
    match f {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        n => format!("family{n}"),
    }
}

fn hook_name(h: u32) -> &'static str {
    match h {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        4 => "postrouting",
        _ => "other",
    }
}

fn policy_name(p: Option<u32>) -> &'static str {
    match p {
        Some(NF_DROP) => "drop",
        Some(NF_ACCEPT) => "accept",
        Some(_) => "other",
        None => "none",
    }
}

fn describe(id: &ChainId) -> String {
    format!("{} {} {}", family_name(id.family), id.table, id.chain)
}

/// What weakened the firewall from `before` to `after`: every rule gone,
/// or a DROP policy of an input, forward or output base chain (ip, ip6,
/// inet) now ACCEPT or its chain gone.
pub fn firewall_changes(before: &Ruleset, after: &Ruleset) -> Vec<Change> {
    let mut v = Vec::new();
    let (b, a) = (before.rules(), after.rules());
    if b > 0 && a == 0 && !after.truncated {
        let mut tables: Vec<String> = before
            .chains
            .iter()
            .filter(|(_, c)| c.rules > 0)
            .map(|(id, _)| format!("{} {}", family_name(id.family), id.table))
            .collect();
        tables.dedup();
        tables.truncate(8);
        let chains = before.chains.values().filter(|c| c.rules > 0).count();
        v.push(Change::new(
            "firewall rules",
            format!(
                "{b} rule{} in {chains} chain{} (tables {})",
                if b == 1 { "" } else { "s" },
                if chains == 1 { "" } else { "s" },
                tables.join(", ")
            ),
            "no rules (flushed)",
        ));
    }
    for (id, c) in &before.chains {
        let filtering = matches!(id.family, 1 | 2 | 10) && matches!(c.hook, Some(1..=3));
        if !filtering || c.policy != Some(NF_DROP) {
            continue;
        }
        let now = match after.chains.get(id) {
            Some(n) if n.policy == Some(NF_DROP) => continue,
            Some(n) => policy_name(n.policy).to_string(),
            None if after.truncated => continue,
            None => "chain deleted (accept)".to_string(),
        };
        v.push(Change::new(
            format!(
                "default policy of {} ({} hook)",
                describe(id),
                hook_name(c.hook.unwrap_or(u32::MAX))
            ),
            "drop",
            now,
        ));
    }
    v
}

const NLMSG_HDR: usize = 16;
const NFGEN_HDR: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NETLINK_NETFILTER: libc::c_int = 12;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink attributes in `b`: (type without flag bits, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, payload))
    })
}

fn attr_str(p: &[u8]) -> String {
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end.min(256)]).into_owned()
}

fn attr_be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// The end of one dump's answers.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// More messages follow.
    More,
    /// `NLMSG_DONE`: the dump is whole.
    Done,
}

/// Adds the chains and rules of one buffer of netlink messages (answers to
/// an nftables chain or rule dump with sequence number `seq`) to `rs`.
/// Pure: the unit tests feed it bytes.
pub fn parse_dump(buf: &[u8], seq: u32, rs: &mut Ruleset) -> Result<Parsed, String> {
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let h = &buf[off..];
        let len = u32::from_ne_bytes(h[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        let mseq = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        if len < NLMSG_HDR || off + len > buf.len() {
            return Err(format!("netlink message of {len} bytes at {off} of {}", buf.len()));
        }
        let body = &h[NLMSG_HDR..len];
        off += align4(len);
        if mseq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => return Ok(Parsed::Done),
            NLMSG_ERROR => {
                let code = body.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0);
                if code == 0 {
                    continue;
                }
                return Err(std::io::Error::from_raw_os_error(-code).to_string());
            }
            _ => {}
        }
        if ty >> 8 != NFNL_SUBSYS_NFTABLES || body.len() < NFGEN_HDR {
            continue;
        }
        let family = body[0];
        let (mut table, mut name, mut hook, mut policy) = (String::new(), String::new(), None, None);
        let msg = ty & 0xff;
        for (at, p) in attrs(&body[NFGEN_HDR..]) {
            match (msg, at) {
                (NFT_MSG_NEWCHAIN, 1) | (NFT_MSG_NEWRULE, 1) => table = attr_str(p),
                (NFT_MSG_NEWCHAIN, 3) | (NFT_MSG_NEWRULE, 2) => name = attr_str(p),
                (NFT_MSG_NEWCHAIN, 4) => hook = attrs(p).find(|(t, _)| *t == 1).and_then(|(_, v)| attr_be32(v)),
                (NFT_MSG_NEWCHAIN, 5) => policy = attr_be32(p),
                _ => {}
            }
        }
        let id = ChainId {
            family,
            table,
            chain: name,
        };
        if !rs.chains.contains_key(&id) && rs.chains.len() >= MAX_CHAINS {
            rs.truncated = true;
            continue;
        }
        let c = rs.chains.entry(id).or_default();
        match msg {
            NFT_MSG_NEWCHAIN => {
                c.hook = hook;
                c.policy = policy;
            }
            NFT_MSG_NEWRULE => c.rules += 1,
            _ => {}
        }
    }
    Ok(Parsed::More)
}

/// A netlink socket of the agent's network namespace, closed on drop.
struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> std::io::Result<Netlink> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let s = Netlink(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 500_000,
        };
        // SAFETY: setsockopt reads size_of::<timeval>() bytes of tv, which lives for the call.
        unsafe {
            libc::setsockopt(
                s.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(s)
    }

    /// The inode of the socket's network namespace (`SIOCGSKNETNS`), which
    /// names it as `ip netns identify` and `/proc/PID/ns/net` do.
    fn netns_inode(&self) -> Option<u64> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::fs::MetadataExt;
        const SIOCGSKNETNS: libc::c_ulong = 0x894C;
        // SAFETY: the ioctl takes no argument and returns a new fd or -1.
        let ns = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCGSKNETNS as _) };
        if ns < 0 {
            return None;
        }
        // SAFETY: ns is a fresh descriptor nobody else owns.
        let f = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) });
        f.metadata().ok().map(|m| m.ino())
    }

    /// Dumps one nftables object kind into `rs`.
    fn dump(&self, msg: u16, seq: u32, rs: &mut Ruleset, deadline: Instant) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let mut req = [0u8; NLMSG_HDR + NFGEN_HDR];
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nfgenmsg: family unspec (every family), version 0, res_id 0
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: req and addr live for the call; their lengths are passed.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                req.as_ptr() as *const libc::c_void,
                req.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            if Instant::now() > deadline {
                return Err("netlink dump took over 2 s".into());
            }
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("netlink receive: {e}"));
            }
            let n = n as usize;
            total += n;
            if parse_dump(&buf[..n], seq, rs)? == Parsed::Done {
                return Ok(());
            }
            if total > MAX_DUMP_BYTES {
                rs.truncated = true;
                return Ok(());
            }
        }
    }
}

/// The ruleset of the agent's network namespace and that namespace's inode.
pub fn read_ruleset() -> Result<(Ruleset, Option<u64>), String> {
    let s = Netlink::open().map_err(|e| format!("netlink netfilter socket: {e}"))?;
    let deadline = Instant::now() + DUMP_DEADLINE;
    let mut rs = Ruleset::default();
    s.dump(NFT_MSG_GETCHAIN, 1, &mut rs, deadline)?;
    s.dump(NFT_MSG_GETRULE, 2, &mut rs, deadline)?;
    Ok((rs, s.netns_inode()))
}

// ------------------------------------------------------------------ units

/// What is known of one security unit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitState {
    /// Its unit file, as on the host (`/lib/systemd/system/falco.service`).
    pub file: Option<String>,
    /// Masked: linked to /dev/null.
    pub masked: bool,
    /// Its service runs (systemd keeps `/run/systemd/units/invocation:NAME` while it does).
    pub active: bool,
    /// Enabled: linked from a `*.wants` directory of `/etc/systemd/system`.
    pub enabled: bool,
}

/// `*.wants` directories looked into at most.
const MAX_WANTS_DIRS: usize = 256;
/// Entries of one unit directory looked at for units named like miners.
const MAX_UNIT_ENTRIES: usize = 4096;
/// Units named like miners followed at most.
pub const MAX_MINER_UNITS: usize = 32;

/// The units enabled under `root`: linked from a `*.wants` directory of
/// `/etc/systemd/system` (links are listed, not followed), read once per
/// pass; [`MAX_WANTS_DIRS`] directories of [`MAX_UNIT_ENTRIES`] entries,
/// 4 × [`MAX_UNIT_ENTRIES`] names in all, at most.
pub fn enabled_units(root: &Path) -> HashSet<String> {
    let Ok(dirs) = std::fs::read_dir(root.join("etc/systemd/system")) else {
        return HashSet::new();
    };
    dirs.flatten()
        .take(MAX_UNIT_ENTRIES)
        .filter(|d| d.file_name().to_string_lossy().ends_with(".wants"))
        .take(MAX_WANTS_DIRS)
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|rd| rd.flatten().take(MAX_UNIT_ENTRIES))
        .take(MAX_UNIT_ENTRIES * 4)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Services under `root`'s unit directories named like miners (the
/// signature set's name rules on the name before `.service` or `@`), a
/// rival's `xmrig.service` that a trojan disables; `(names, truncated)`.
pub fn miner_units(root: &Path, sig: &Signatures) -> (Vec<String>, bool) {
    let mut out: Vec<String> = Vec::new();
    let mut truncated = false;
    for dir in UNIT_DIRS {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
        for (i, e) in rd.flatten().enumerate() {
            if i >= MAX_UNIT_ENTRIES {
                truncated = true;
                break;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".service") else { continue };
            let stem = stem.split('@').next().unwrap_or(stem);
            if stem.is_empty() || out.contains(&name) || SECURITY_UNITS.iter().any(|(u, _)| *u == name) {
                continue;
            }
            if !sig.match_names(&[("unit name", stem)]).is_empty() {
                if out.len() >= MAX_MINER_UNITS {
                    truncated = true;
                    continue;
                }
                out.push(name);
            }
        }
    }
    (out, truncated)
}

/// How the unit `name` stands under `root`; links are read, never followed.
/// (A pass reading many units lists the enabled ones once: [`unit_state_in`].)
pub fn unit_state(root: &Path, name: &str) -> UnitState {
    unit_state_in(root, name, &enabled_units(root))
}

/// [`unit_state`], with the host's [`enabled_units`] already read.
pub fn unit_state_in(root: &Path, name: &str, enabled: &HashSet<String>) -> UnitState {
    let mut st = UnitState::default();
    for dir in UNIT_DIRS {
        let p = root.join(dir).join(name);
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.file_type().is_symlink() && std::fs::read_link(&p).is_ok_and(|t| t == Path::new("/dev/null")) {
            st.masked = true;
        } else if st.file.is_none() {
            st.file = Some(format!("/{dir}/{name}"));
        }
    }
    st.active = std::fs::symlink_metadata(root.join("run/systemd/units").join(format!("invocation:{name}"))).is_ok();
    st.enabled = enabled.contains(name);
    st
}

/// What weakened the unit `name` (`what`: its description) from `b` to `a`.
pub fn unit_changes(name: &str, what: &str, b: &UnitState, a: &UnitState) -> Vec<Change> {
    let mut v = Vec::new();
    let label = format!("{name} ({what})");
    if let (Some(f), None) = (&b.file, &a.file) {
        v.push(Change::new(format!("unit file of {label}"), format!("{f} present"), "removed"));
    }
    if !b.masked && a.masked {
        v.push(Change::new(format!("unit {label}"), "not masked", "masked (linked to /dev/null)"));
    }
    if b.active && !a.active {
        v.push(Change::new(format!("service {label}"), "active", "not running"));
    }
    if b.enabled && !a.enabled && a.file.is_some() {
        v.push(Change::new(format!("unit {label}"), "enabled", "disabled"));
    }
    v
}

// --------------------------------------------------------- immutable files

/// World-writable directories miners are dropped into, under the host root.
const STAGING_DIRS: &[&str] = &["tmp", "var/tmp", "dev/shm"];
/// Most directory entries looked at under them in one pass.
const MAX_WALK_ENTRIES: usize = 20_000;
/// How deep the walk goes below each.
const MAX_WALK_DEPTH: usize = 4;
/// Most files whose attributes are read in one pass (candidates and executables).
const MAX_ATTR_CHECKS: usize = 4096;
/// Most immutable files reported.
const MAX_LOCKED: usize = 64;

/// Candidates under the staging directories: executables, and files whose
/// name the signature set's name rules match. Links are not followed, other
/// file systems (a mount below /tmp) are not entered; `(files, truncated)`.
pub fn staging_candidates(root: &Path, sig: &Signatures) -> (Vec<PathBuf>, bool) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (mut out, mut seen, mut truncated) = (Vec::new(), 0usize, false);
    for dir in STAGING_DIRS {
        let top = root.join(dir);
        let Ok(m) = std::fs::symlink_metadata(&top) else { continue };
        if !m.is_dir() {
            continue;
        }
        let dev = m.dev();
        let mut stack = vec![(top, 0usize)];
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                seen += 1;
                if seen > MAX_WALK_ENTRIES || out.len() >= MAX_ATTR_CHECKS {
                    return (out, true);
                }
                // DirEntry::metadata is lstat: a link is a link
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    if depth < MAX_WALK_DEPTH && m.dev() == dev {
                        stack.push((e.path(), depth + 1));
                    } else if depth >= MAX_WALK_DEPTH {
                        truncated = true;
                    }
                } else if m.is_file() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if m.permissions().mode() & 0o111 != 0 || !sig.match_names(&[("file name", name.as_str())]).is_empty() {
                        out.push(e.path());
                    }
                }
            }
        }
    }
    (out, truncated)
}

/// The evidence of a locked file.
fn locked_change(shown: &str, how: &str, was_mutable: bool) -> Change {
    Change::new(
        format!("attributes of {how} {shown}"),
        if was_mutable {
            "mutable at an earlier pass"
        } else {
            "immutable when first seen"
        },
        "immutable (chattr +i: not even root can change, rename or delete it until chattr -i)",
    )
}

// -------------------------------------------------------------------- LSM

/// SELinux and AppArmor as the kernel shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LsmState {
    /// `/sys/fs/selinux/enforce`: enforcing or not; none without SELinux.
    pub selinux_enforcing: Option<bool>,
    /// Lines of `/sys/kernel/security/apparmor/profiles`; none without AppArmor.
    pub apparmor_profiles: Option<u64>,
}

/// Most bytes of the AppArmor profile list read.
const MAX_PROFILES_BYTES: u64 = 4 << 20;

/// Parses `/sys/fs/selinux/enforce`.
pub fn parse_enforce(b: &[u8]) -> Option<bool> {
    match String::from_utf8_lossy(b).trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// Counts the profiles in `/sys/kernel/security/apparmor/profiles`.
pub fn parse_profiles(b: &[u8]) -> u64 {
    b.split(|&c| c == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count() as u64
}

/// How SELinux and AppArmor stand under `root`.
pub fn lsm_state(root: &Path) -> LsmState {
    let read = |rel: &str, cap| crate::host::safefile::read_host_file(root, Path::new(rel), cap).ok();
    LsmState {
        selinux_enforcing: read("sys/fs/selinux/enforce", 16).and_then(|b| parse_enforce(&b)),
        apparmor_profiles: read("sys/kernel/security/apparmor/profiles", MAX_PROFILES_BYTES).map(|b| parse_profiles(&b)),
    }
}

/// SELinux from enforcing to permissive; AppArmor from some profiles to none.
pub fn selinux_changes(b: &LsmState, a: &LsmState) -> Vec<Change> {
    match (b.selinux_enforcing, a.selinux_enforcing) {
        (Some(true), Some(false)) => vec![Change::new("SELinux mode", "enforcing", "permissive (setenforce 0)")],
        _ => Vec::new(),
    }
}

/// AppArmor from some profiles loaded to none.
pub fn apparmor_changes(b: &LsmState, a: &LsmState) -> Vec<Change> {
    match (b.apparmor_profiles, a.apparmor_profiles) {
        (Some(n), Some(0)) if n > 0 => vec![Change::new(
            "AppArmor profiles",
            format!("{n} loaded"),
            "none loaded (profiles unloaded)",
        )],
        _ => Vec::new(),
    }
}

// ----------------------------------------------------------------- sensor

/// The footprint sensor.
pub struct FootprintSensor {
    sig: Arc<Signatures>,
    proc_root: PathBuf,
    host_root: PathBuf,
    /// Files seen without the immutable flag (bounded), to say "before".
    mutable: HashSet<String>,
    locked: u64,
    firewall: Baseline<Ruleset>,
    units: Vec<Baseline<UnitState>>,
    /// Units named like miners, by name (at most [`MAX_MINER_UNITS`]).
    miner_units: BTreeMap<String, Baseline<UnitState>>,
    selinux: Baseline<LsmState>,
    apparmor: Baseline<LsmState>,
    notes: Vec<String>,
    rules: u64,
    chains: u64,
    units_present: u64,
    findings: u64,
}

impl FootprintSensor {
    /// A sensor reading unit files, staging directories and LSM state
    /// under `host_root`, running executables through `proc_root`, and the
    /// firewall of its own network namespace.
    pub fn new(sig: Arc<Signatures>, proc_root: &Path, host_root: PathBuf) -> Self {
        FootprintSensor {
            sig,
            proc_root: proc_root.to_path_buf(),
            host_root,
            mutable: HashSet::new(),
            locked: 0,
            firewall: Baseline::default(),
            units: SECURITY_UNITS.iter().map(|_| Baseline::default()).collect(),
            miner_units: BTreeMap::new(),
            selinux: Baseline::default(),
            apparmor: Baseline::default(),
            notes: Vec::new(),
            rules: 0,
            chains: 0,
            units_present: 0,
            findings: 0,
        }
    }

    /// Immutable staging files and running executables.
    fn immutable_files(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) {
        let root = self.host_root.clone();
        let (files, truncated) = staging_candidates(&root, &self.sig);
        if truncated {
            self.notes.push(format!(
                "immutable files: over {MAX_WALK_ENTRIES} entries or {MAX_WALK_DEPTH} levels under /tmp, /var/tmp, /dev/shm: the rest not looked at"
            ));
        }
        // (shown path, what it is) → the processes it runs as
        let mut locked: BTreeMap<String, (&'static str, Vec<super::ProcKey>)> = BTreeMap::new();
        let mut checks = 0usize;
        let mut check = |shown: String, path: &Path, me: &mut Self| -> Option<String> {
            checks += 1;
            if checks > MAX_ATTR_CHECKS {
                return None;
            }
            if crate::host::safefile::immutable(path) {
                Some(shown)
            } else {
                if me.mutable.len() < 100_000 {
                    me.mutable.insert(shown);
                }
                None
            }
        };
        for f in files {
            let shown = format!("/{}", f.strip_prefix(&root).unwrap_or(&f).display()).replace("//", "/");
            if let Some(s) = check(shown, &f, self) {
                locked.entry(s).or_insert(("file", Vec::new()));
            }
        }
        // each executable once, through the first process that runs it
        // (its own root: a container's /usr/bin is not the host's)
        let mut exes: BTreeMap<&str, Vec<&super::Proc>> = BTreeMap::new();
        for p in snap.procs.values().filter(|p| !p.kernel_thread) {
            let Some(exe) = p.fixed.exe.as_deref() else { continue };
            if exe.starts_with('/') && !exe.ends_with(" (deleted)") && exes.len() < MAX_ATTR_CHECKS {
                exes.entry(exe).or_default().push(p);
            }
        }
        for (exe, procs) in exes {
            let path = self
                .proc_root
                .join(procs[0].key.pid.to_string())
                .join("root")
                .join(exe.trim_start_matches('/'));
            if let Some(s) = check(exe.to_string(), &path, self) {
                let slot = locked.entry(s).or_insert(("executable", Vec::new()));
                slot.1.extend(procs.iter().map(|p| p.key));
            }
        }
        self.locked = locked.len() as u64;
        if locked.len() > MAX_LOCKED {
            self.notes
                .push(format!("immutable files: {} found, {MAX_LOCKED} reported", locked.len()));
        }
        for (shown, (how, procs)) in locked.into_iter().take(MAX_LOCKED) {
            let c = locked_change(&shown, how, self.mutable.contains(&shown));
            out.extend(procs.iter().map(|k| Observation::Evidence(*k, c.evidence())));
            // named by its path alone, as persistence subjects are, so the
            // allowlist's `paths` speak for it
            self.emit(shown, vec![c], out);
        }
    }

    fn emit(&mut self, name: String, changes: Vec<Change>, out: &mut Vec<Observation>) {
        if changes.is_empty() {
            return;
        }
        self.findings += 1;
        let subject = HostSubject {
            kind: SubjectKind::Footprint,
            name,
        };
        out.extend(changes.iter().map(|c| Observation::Host(subject.clone(), c.evidence())));
    }
}

impl Sensor for FootprintSensor {
    fn name(&self) -> &'static str {
        "footprint"
    }

    fn observe(&mut self, snap: &Snapshot, out: &mut Vec<Observation>) -> Result<(), SensorError> {
        self.notes.clear();
        self.findings = 0;
        match read_ruleset() {
            Ok((mut rs, ns)) => {
                // iptables-legacy's tables beside nftables' (a host, or a
                // trojan, may use either)
                for fam in [crate::host::iptables::V4, crate::host::iptables::V6] {
                    let (chains, notes) = crate::host::iptables::read(fam);
                    self.notes.extend(notes);
                    for c in chains {
                        let id = ChainId {
                            family: fam.nfproto,
                            table: format!("{} (iptables-legacy)", c.table),
                            chain: c.chain,
                        };
                        let chain = Chain {
                            hook: c.hook,
                            policy: c.policy,
                            rules: c.rules,
                        };
                        rs.chains.insert(id, chain);
                    }
                }
                self.rules = rs.rules();
                self.chains = rs.chains.len() as u64;
                if rs.truncated {
                    self.notes.push(format!(
                        "firewall: the ruleset is over the caps ({MAX_CHAINS} chains, {} MiB): only part was compared",
                        MAX_DUMP_BYTES >> 20
                    ));
                }
                let changes = self.firewall.step(rs, firewall_changes);
                let name = ns.map(|i| format!("firewall netns:{i}")).unwrap_or_else(|| "firewall".into());
                self.emit(name, changes, out);
            }
            Err(e) => self.notes.push(format!("firewall not compared: {e}")),
        }
        let root = self.host_root.clone();
        let enabled = enabled_units(&root);
        self.units_present = 0;
        for (i, (name, what)) in SECURITY_UNITS.iter().enumerate() {
            let st = unit_state_in(&root, name, &enabled);
            if st.file.is_some() || st.active {
                self.units_present += 1;
            }
            let changes = self.units[i].step(st, |b, a| unit_changes(name, what, b, a));
            self.emit(format!("unit {name}"), changes, out);
        }
        // a rival miner's service disabled, stopped or removed: the ones
        // found now and the ones followed since (a removed file is not found)
        let (found, truncated) = miner_units(&root, &self.sig);
        if truncated {
            self.notes.push(format!(
                "miner units: over {MAX_MINER_UNITS} units named like miners or {MAX_UNIT_ENTRIES} entries in a unit directory: the rest not followed"
            ));
        }
        for name in found {
            if self.miner_units.len() < MAX_MINER_UNITS {
                self.miner_units.entry(name).or_default();
            }
        }
        let mut miner_changes = Vec::new();
        for (name, baseline) in self.miner_units.iter_mut() {
            let st = unit_state_in(&root, name, &enabled);
            let changes = baseline.step(st, |b, a| unit_changes(name, "named like a miner: a rival's?", b, a));
            miner_changes.push((format!("unit {name}"), changes));
        }
        for (name, changes) in miner_changes {
            self.emit(name, changes, out);
        }
        let lsm = lsm_state(&root);
        let c = self.selinux.step(lsm.clone(), selinux_changes);
        self.emit("selinux".into(), c, out);
        let c = self.apparmor.step(lsm, apparmor_changes);
        self.emit("apparmor".into(), c, out);
        self.immutable_files(snap, out);
        Ok(())
    }

    fn set_signatures(&mut self, sig: Arc<Signatures>) {
        self.sig = sig;
    }

    fn problems(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("firewall_rules", self.rules),
            ("firewall_chains", self.chains),
            ("security_units", self.units_present),
            ("footprints", self.findings),
            ("immutable_files", self.locked),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(family: u8, table: &str, name: &str, hook: Option<u32>, policy: Option<u32>, rules: u64) -> (ChainId, Chain) {
        (
            ChainId {
                family,
                table: table.into(),
                chain: name.into(),
            },
            Chain { hook, policy, rules },
        )
    }

    fn ruleset(chains: Vec<(ChainId, Chain)>) -> Ruleset {
        Ruleset {
            chains: chains.into_iter().collect(),
            truncated: false,
        }
    }

    #[test]
    fn flushed_rules_are_a_change_and_a_kept_ruleset_is_none() {
        let before = ruleset(vec![
            chain(2, "filter", "INPUT", Some(1), Some(NF_ACCEPT), 3),
            chain(1, "t", "c", None, None, 1),
        ]);
        assert!(firewall_changes(&before, &before).is_empty());
        let flushed = ruleset(vec![chain(2, "filter", "INPUT", Some(1), Some(NF_ACCEPT), 0)]);
        let c = firewall_changes(&before, &flushed);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].what, "firewall rules");
        assert_eq!(c[0].before, "4 rules in 2 chains (tables inet t, ip filter)");
        assert_eq!(c[0].after, "no rules (flushed)");
        // an empty ruleset staying empty, or one rule fewer, is nothing
        assert!(firewall_changes(&flushed, &flushed).is_empty());
        let fewer = ruleset(vec![chain(2, "filter", "INPUT", Some(1), Some(NF_ACCEPT), 2)]);
        assert!(firewall_changes(&before, &fewer).is_empty());
    }

    #[test]
    fn drop_policy_opened_or_its_chain_deleted() {
        let before = ruleset(vec![
            chain(2, "filter", "INPUT", Some(1), Some(NF_DROP), 0),
            chain(10, "filter", "FORWARD", Some(2), Some(NF_DROP), 0),
            chain(2, "nat", "PREROUTING", Some(0), Some(NF_DROP), 0),
        ]);
        let after = ruleset(vec![
            chain(2, "filter", "INPUT", Some(1), Some(NF_ACCEPT), 0),
            chain(2, "nat", "PREROUTING", Some(0), Some(NF_ACCEPT), 0),
        ]);
        let c = firewall_changes(&before, &after);
        assert_eq!(
            c,
            vec![
                Change::new("default policy of ip filter INPUT (input hook)", "drop", "accept"),
                Change::new(
                    "default policy of ip6 filter FORWARD (forward hook)",
                    "drop",
                    "chain deleted (accept)"
                ),
            ],
            "prerouting is no filtering hook"
        );
        assert!(firewall_changes(&after, &before).is_empty(), "closing is no footprint");
    }

    #[test]
    fn the_baseline_holds_while_weakened_and_moves_once_restored() {
        let on = ruleset(vec![chain(1, "t", "input", Some(1), Some(NF_DROP), 1)]);
        let off = ruleset(vec![]);
        let mut b = Baseline::default();
        assert!(b.step(on.clone(), firewall_changes).is_empty(), "the first pass is the baseline");
        assert_eq!(b.step(off.clone(), firewall_changes).len(), 2);
        assert_eq!(b.step(off.clone(), firewall_changes).len(), 2, "it lasts");
        assert!(b.step(on.clone(), firewall_changes).is_empty(), "restored");
        // a ruleset that starts empty has nothing to lose
        let mut b = Baseline::default();
        assert!(b.step(off.clone(), firewall_changes).is_empty());
        assert!(b.step(off, firewall_changes).is_empty());
    }

    fn nlmsg(ty: u16, seq: u32, family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, p) in attrs {
            body.extend(((4 + p.len()) as u16).to_ne_bytes());
            body.extend(t.to_ne_bytes());
            body.extend(p);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend(((16 + body.len()) as u32).to_ne_bytes());
        m.extend(ty.to_ne_bytes());
        m.extend(2u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(body);
        m
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn parses_chain_and_rule_dumps() {
        let mut hook = Vec::new();
        hook.extend(8u16.to_ne_bytes());
        hook.extend(1u16.to_ne_bytes());
        hook.extend(1u32.to_be_bytes());
        let mut buf = nlmsg(
            (10 << 8) | NFT_MSG_NEWCHAIN,
            1,
            1,
            &[
                (1, cstr("fw")),
                (3, cstr("input")),
                (4 | 0x8000, hook),
                (5, NF_DROP.to_be_bytes().to_vec()),
            ],
        );
        buf.extend(nlmsg((10 << 8) | NFT_MSG_NEWCHAIN, 9, 1, &[(1, cstr("other")), (3, cstr("x"))]));
        let mut rs = Ruleset::default();
        assert_eq!(parse_dump(&buf, 1, &mut rs), Ok(Parsed::More));
        let done = nlmsg(NLMSG_DONE, 1, 0, &[]);
        let mut rules = nlmsg((10 << 8) | NFT_MSG_NEWRULE, 1, 1, &[(1, cstr("fw")), (2, cstr("input"))]);
        rules.extend(nlmsg((10 << 8) | NFT_MSG_NEWRULE, 1, 1, &[(1, cstr("fw")), (2, cstr("input"))]));
        rules.extend(done);
        assert_eq!(parse_dump(&rules, 1, &mut rs), Ok(Parsed::Done));
        assert_eq!(rs.chains.len(), 1, "another sequence's message is not ours: {rs:?}");
        let (id, c) = rs.chains.iter().next().unwrap();
        assert_eq!((id.family, id.table.as_str(), id.chain.as_str()), (1, "fw", "input"));
        assert_eq!(
            c,
            &Chain {
                hook: Some(1),
                policy: Some(NF_DROP),
                rules: 2
            }
        );
        // an error answer, a truncated message
        let mut err = nlmsg(NLMSG_ERROR, 1, 0, &[]);
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_dump(&err, 1, &mut rs).unwrap_err().contains("not permitted"));
        assert!(parse_dump(&buf[..30], 1, &mut rs).is_err());
        // garbage attributes never panic
        let mut junk = nlmsg((10 << 8) | NFT_MSG_NEWCHAIN, 1, 2, &[(4, vec![0xff; 3]), (5, vec![1])]);
        junk.extend([0xff; 7]);
        let _ = parse_dump(&junk, 1, &mut Ruleset::default());
    }

    #[test]
    fn the_chain_cap_holds() {
        let mut rs = Ruleset::default();
        for i in 0..MAX_CHAINS + 10 {
            let m = nlmsg((10 << 8) | NFT_MSG_NEWRULE, 1, 1, &[(1, cstr("t")), (2, cstr(&format!("c{i}")))]);
            parse_dump(&m, 1, &mut rs).unwrap();
        }
        assert_eq!(rs.chains.len(), MAX_CHAINS);
        assert!(rs.truncated);
        let before = ruleset(vec![chain(1, "t", "c", None, None, 5)]);
        assert!(firewall_changes(
            &before,
            &Ruleset {
                truncated: true,
                ..Default::default()
            }
        )
        .is_empty());
    }

    #[test]
    fn units_removed_masked_or_stopped() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let name = "falco.service";
        assert_eq!(unit_state(r, name), UnitState::default());
        std::fs::create_dir_all(r.join("lib/systemd/system")).unwrap();
        std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
        std::fs::create_dir_all(r.join("run/systemd/units")).unwrap();
        std::fs::write(r.join("lib/systemd/system").join(name), "[Service]\n").unwrap();
        std::os::unix::fs::symlink("../../invocation-id", r.join("run/systemd/units/invocation:falco.service")).unwrap();
        let on = unit_state(r, name);
        assert_eq!(
            on,
            UnitState {
                file: Some("/lib/systemd/system/falco.service".into()),
                masked: false,
                active: true,
                enabled: false,
            }
        );
        std::fs::remove_file(r.join("run/systemd/units/invocation:falco.service")).unwrap();
        std::os::unix::fs::symlink("/dev/null", r.join("etc/systemd/system").join(name)).unwrap();
        let off = unit_state(r, name);
        assert!(off.masked && !off.active && off.file.is_some(), "{off:?}");
        let c = unit_changes(name, "Falco", &on, &off);
        assert_eq!(
            c,
            vec![
                Change::new("unit falco.service (Falco)", "not masked", "masked (linked to /dev/null)"),
                Change::new("service falco.service (Falco)", "active", "not running"),
            ]
        );
        std::fs::remove_file(r.join("lib/systemd/system").join(name)).unwrap();
        let gone = unit_state(r, name);
        assert_eq!(
            unit_changes(name, "Falco", &on, &gone)[0],
            Change::new(
                "unit file of falco.service (Falco)",
                "/lib/systemd/system/falco.service present",
                "removed"
            )
        );
        assert!(
            unit_changes(name, "Falco", &UnitState::default(), &on).is_empty(),
            "installing is none"
        );
    }

    #[test]
    fn selinux_permissive_and_apparmor_unloaded() {
        assert_eq!(parse_enforce(b"1"), Some(true));
        assert_eq!(parse_enforce(b"0\n"), Some(false));
        assert_eq!(parse_enforce(b"x"), None);
        assert_eq!(parse_profiles(b"/usr/bin/man (enforce)\nlsb_release (enforce)\n"), 2);
        assert_eq!(parse_profiles(b""), 0);
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(lsm_state(r), LsmState::default(), "neither here");
        let w = |rel: &str, t: &str| {
            std::fs::create_dir_all(r.join(rel).parent().unwrap()).unwrap();
            std::fs::write(r.join(rel), t).unwrap();
        };
        w("sys/fs/selinux/enforce", "1");
        w("sys/kernel/security/apparmor/profiles", "a (enforce)\nb (complain)\n");
        let on = lsm_state(r);
        assert_eq!(
            on,
            LsmState {
                selinux_enforcing: Some(true),
                apparmor_profiles: Some(2)
            }
        );
        w("sys/fs/selinux/enforce", "0");
        w("sys/kernel/security/apparmor/profiles", "");
        let off = lsm_state(r);
        assert_eq!(
            selinux_changes(&on, &off),
            vec![Change::new("SELinux mode", "enforcing", "permissive (setenforce 0)")]
        );
        assert_eq!(
            apparmor_changes(&on, &off),
            vec![Change::new("AppArmor profiles", "2 loaded", "none loaded (profiles unloaded)")]
        );
        assert!(selinux_changes(&off, &on).is_empty() && apparmor_changes(&off, &on).is_empty());
    }

    /// One pass over an empty process table: the host observations whose
    /// subject name `keep` accepts.
    fn host_pass(s: &mut FootprintSensor, keep: impl Fn(&str) -> bool) -> Vec<(HostSubject, Evidence)> {
        let snap = Snapshot {
            at: Instant::now(),
            procs: Default::default(),
            ticks_per_second: 100,
            partial: false,
        };
        let mut out = Vec::new();
        s.observe(&snap, &mut out).unwrap();
        out.into_iter()
            .filter_map(|o| match o {
                Observation::Host(sub, e) if keep(&sub.name) => Some((sub, e)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_sensor_reports_host_findings_that_resolve() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let w = |rel: &str, t: &str| {
            std::fs::create_dir_all(r.join(rel).parent().unwrap()).unwrap();
            std::fs::write(r.join(rel), t).unwrap();
        };
        w("sys/fs/selinux/enforce", "1");
        w("usr/lib/systemd/system/aegis.service", "[Service]\n");
        let sig = Arc::new(rigwatch_signatures::load(&[], true).signatures);
        let mut s = FootprintSensor::new(sig, Path::new("/nonexistent-proc"), r.to_path_buf());
        let pass = |s: &mut FootprintSensor| host_pass(s, |name| name != "firewall" && !name.starts_with("firewall "));
        assert!(pass(&mut s).is_empty(), "the first pass is the baseline");
        w("sys/fs/selinux/enforce", "0");
        std::fs::remove_file(r.join("usr/lib/systemd/system/aegis.service")).unwrap();
        let found = pass(&mut s);
        assert_eq!(found.len(), 2, "{found:?}");
        for (sub, e) in &found {
            assert_eq!(sub.kind, SubjectKind::Footprint);
            assert_eq!(e.weight, Weight::Suspicious);
            assert_eq!(
                rigwatch_signatures::score_host(std::slice::from_ref(e)),
                Some(rigwatch_signatures::Severity::Suspicious)
            );
        }
        let names: Vec<&str> = found.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, ["unit aegis.service", "selinux"]);
        assert_eq!(
            found[0].1.summary(),
            "unit file of aegis.service (Alibaba Cloud Security Center agent (AliYunDun)): /usr/lib/systemd/system/aegis.service present → removed"
        );
        w("sys/fs/selinux/enforce", "1");
        w("usr/lib/systemd/system/aegis.service", "[Service]\n");
        assert!(pass(&mut s).is_empty(), "restored: resolved");
    }

    #[test]
    fn a_rival_miners_unit_disabled_stopped_or_removed_is_a_footprint() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let sig = Arc::new(rigwatch_signatures::load(&[], true).signatures);
        for dir in [
            "etc/systemd/system/multi-user.target.wants",
            "lib/systemd/system",
            "run/systemd/units",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        // a rival's miner, installed, enabled and running; a site service and a template
        for unit in ["xmrig.service", "nginx.service", "xmrig-proxy@.service", "xmrig.timer"] {
            std::fs::write(r.join("lib/systemd/system").join(unit), "[Service]\n").unwrap();
        }
        let wants = r.join("etc/systemd/system/multi-user.target.wants/xmrig.service");
        std::os::unix::fs::symlink("/lib/systemd/system/xmrig.service", &wants).unwrap();
        let running = r.join("run/systemd/units/invocation:xmrig.service");
        std::os::unix::fs::symlink("0123", &running).unwrap();
        let (mut names, truncated) = miner_units(r, &sig);
        names.sort();
        assert_eq!(
            (names, truncated),
            (vec!["xmrig-proxy@.service".to_string(), "xmrig.service".to_string()], false)
        );
        let on = unit_state(r, "xmrig.service");
        assert!(on.enabled && on.active && on.file.is_some(), "{on:?}");

        let mut s = FootprintSensor::new(sig, Path::new("/nonexistent-proc"), r.to_path_buf());
        let units = |s: &mut FootprintSensor| {
            host_pass(s, |name| name.starts_with("unit "))
                .into_iter()
                .map(|(sub, e)| (sub.name, e.summary(), e.weight))
                .collect::<Vec<_>>()
        };
        assert!(units(&mut s).is_empty(), "the first pass is the baseline");
        // the trojan: systemctl disable --now xmrig
        std::fs::remove_file(&wants).unwrap();
        std::fs::remove_file(&running).unwrap();
        let got = units(&mut s);
        let summaries: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(
            summaries,
            [
                "service xmrig.service (named like a miner: a rival's?): active → not running",
                "unit xmrig.service (named like a miner: a rival's?): enabled → disabled",
            ]
        );
        assert!(got.iter().all(|g| g.0 == "unit xmrig.service" && g.2 == Weight::Suspicious));
        // and then removed: still followed, still said
        std::fs::remove_file(r.join("lib/systemd/system/xmrig.service")).unwrap();
        let got = units(&mut s);
        assert!(
            got.iter()
                .any(|g| g.1.contains("/lib/systemd/system/xmrig.service present → removed")),
            "{got:?}"
        );
        // put back: resolved
        std::fs::write(r.join("lib/systemd/system/xmrig.service"), "[Service]\n").unwrap();
        std::os::unix::fs::symlink("/lib/systemd/system/xmrig.service", &wants).unwrap();
        std::os::unix::fs::symlink("0123", &running).unwrap();
        assert!(units(&mut s).is_empty());
    }

    #[test]
    fn miner_units_are_capped() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("etc/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..(MAX_MINER_UNITS + 10) {
            std::fs::write(dir.join(format!("xmrig@{i}.service")), "").unwrap();
        }
        let sig = rigwatch_signatures::load(&[], true).signatures;
        let (names, truncated) = miner_units(d.path(), &sig);
        assert_eq!((names.len(), truncated), (MAX_MINER_UNITS, true));
    }

    /// Runs `chattr -i` on drop, so a failed test leaves nothing locked.
    struct Unlock(PathBuf);

    impl Drop for Unlock {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }

    fn chattr(flag: &str, p: &Path) -> bool {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn immutable_staging_files_are_found_and_resolve() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let dir = r.join("tmp/.x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(r.join("dev/shm")).unwrap();
        let exe = dir.join("kswapd0");
        std::fs::write(&exe, b"\x7fELF").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("xmrig"), b"not executable, named like a miner").unwrap();
        std::fs::write(dir.join("notes.txt"), b"plain").unwrap();
        std::os::unix::fs::symlink("/usr/bin/env", r.join("dev/shm/env")).unwrap();
        let sig = Arc::new(rigwatch_signatures::load(&[], true).signatures);
        let (mut files, truncated) = staging_candidates(r, &sig);
        files.sort();
        assert!(!truncated);
        assert_eq!(files, vec![exe.clone(), dir.join("xmrig")], "executables and miner names, no links");

        let mut s = FootprintSensor::new(sig, Path::new("/nonexistent-proc"), r.to_path_buf());
        let snap = Snapshot {
            at: Instant::now(),
            procs: Default::default(),
            ticks_per_second: 100,
            partial: false,
        };
        let mut pass = || {
            let mut out = Vec::new();
            s.observe(&snap, &mut out).unwrap();
            out.into_iter()
                .filter_map(|o| match o {
                    Observation::Host(sub, e) if sub.name.starts_with('/') => Some((sub.name, e)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(pass().is_empty());
        let _unlock = Unlock(exe.clone());
        if !chattr("+i", &exe) {
            eprintln!(
                "chattr +i is not possible here ({}): the immutable check is not exercised",
                r.display()
            );
            return;
        }
        let found = pass();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "/tmp/.x/kswapd0");
        assert_eq!(found[0].1.weight, Weight::Suspicious);
        assert_eq!(
            found[0].1.summary(),
            "attributes of file /tmp/.x/kswapd0: mutable at an earlier pass → immutable (chattr +i: not even root can change, rename or delete it until chattr -i)"
        );
        assert!(chattr("-i", &exe));
        assert!(pass().is_empty(), "chattr -i: resolved");
    }

    #[test]
    fn an_immutable_running_executable_is_evidence_on_its_process() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("kswapd0");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let _unlock = Unlock(exe.clone());
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        struct Reap<'a>(&'a mut std::process::Child);
        impl Drop for Reap<'_> {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let pid = child.id();
        let _reap = Reap(&mut child);
        if !chattr("+i", &exe) {
            eprintln!("chattr +i is not possible here: the running-executable check is not exercised");
            return;
        }
        let snap = crate::host::process::ProcessSensor::new(Path::new("/proc")).sample_pids(&[pid]);
        let key = snap.procs.keys().find(|k| k.pid == pid).copied().expect("the child is sampled");
        let empty = tempfile::tempdir().unwrap();
        let sig = Arc::new(rigwatch_signatures::load(&[], true).signatures);
        let mut s = FootprintSensor::new(sig, Path::new("/proc"), empty.path().to_path_buf());
        let mut out = Vec::new();
        s.observe(&snap, &mut out).unwrap();
        let shown = exe.display().to_string();
        let on_proc: Vec<&Evidence> = out
            .iter()
            .filter_map(|o| match o {
                Observation::Evidence(k, e) if *k == key => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(on_proc.len(), 1, "{out:?}");
        assert_eq!(
            on_proc[0].summary(),
            format!("attributes of executable {shown}: immutable when first seen → immutable (chattr +i: not even root can change, rename or delete it until chattr -i)")
        );
        assert!(
            out.iter().any(|o| matches!(o, Observation::Host(sub, _) if sub.name == shown)),
            "and a host finding naming the file: {out:?}"
        );
        assert!(chattr("-i", &exe));
        let mut out = Vec::new();
        s.observe(&snap, &mut out).unwrap();
        assert!(
            !out.iter()
                .any(|o| matches!(o, Observation::Evidence(..)) || matches!(o, Observation::Host(sub, _) if sub.name == shown)),
            "chattr -i: gone: {out:?}"
        );
    }
}
