//! iptables-legacy's tables (the kernel's x_tables, which `nft` does not
//! show), read-only: the chains of each table the agent's network
//! namespace has loaded, with their rule counts and the default policies
//! of the built-in chains, through the same `getsockopt` calls
//! `iptables-legacy-save` makes (`IPT_SO_GET_INFO`, `IPT_SO_GET_ENTRIES`;
//! CAP_NET_ADMIN). No program is run, and only tables already listed in
//! `/proc/self/net/ip{,6}_tables_names` are asked for, so asking loads no
//! kernel module.
//!
//! The entries are parsed with bounds checked at every step ([`parse`] is
//! pure and unit-tested); a table over [`MAX_TABLE_BYTES`] is skipped and
//! said.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Largest table read (bytes of entries).
pub const MAX_TABLE_BYTES: usize = 16 << 20;
/// Most tables of one family looked at.
const MAX_TABLES: usize = 16;
/// Most entries of one table walked.
const MAX_ENTRIES: usize = 200_000;
const SO_GET_INFO: libc::c_int = 64;
const SO_GET_ENTRIES: libc::c_int = 65;
const TABLE_NAME: usize = 32;
/// `struct ipt_getinfo` (and `ip6t_getinfo`).
const GETINFO_LEN: usize = 84;
/// `struct ipt_get_entries` before its entries (8-aligned).
const GET_ENTRIES_HDR: usize = 40;
/// `struct xt_entry_target`'s user part before its data.
const TARGET_HDR: usize = 32;
const NF_HOOKS: usize = 5;

/// Where the fields of one family's entries are.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// `NFPROTO_*` (2 ip, 10 ip6), as the nftables chains are keyed.
    pub nfproto: u8,
    af: libc::c_int,
    level: libc::c_int,
    /// The file of `/proc/self/net` listing the loaded tables.
    names: &'static str,
    /// `sizeof(struct ipt_entry)` / `ip6t_entry`.
    entry: usize,
    /// Offset of `target_offset` (`next_offset` follows it).
    target_offset_at: usize,
}

/// IPv4 (`iptables-legacy`).
pub const V4: Family = Family {
    nfproto: 2,
    af: libc::AF_INET,
    level: libc::IPPROTO_IP,
    names: "ip_tables_names",
    entry: 112,
    target_offset_at: 88,
};
/// IPv6 (`ip6tables-legacy`).
pub const V6: Family = Family {
    nfproto: 10,
    af: libc::AF_INET6,
    level: libc::IPPROTO_IPV6,
    names: "ip6_tables_names",
    entry: 168,
    target_offset_at: 140,
};

/// One chain of a legacy table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyChain {
    /// The table (`filter`).
    pub table: String,
    /// The chain (`INPUT`, or a user chain's name).
    pub chain: String,
    /// The hook of a built-in chain (`NF_INET_*`).
    pub hook: Option<u32>,
    /// The built-in chain's policy (`NF_DROP` 0, `NF_ACCEPT` 1).
    pub policy: Option<u32>,
    /// Rules in it.
    pub rules: u64,
}

const BUILTIN: [&str; NF_HOOKS] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).chars().take(64).collect()
}

/// The chains of table `table` from its `ipt_getinfo` (`info`) and its
/// entries (`entries`, `size` bytes). Pure.
pub fn parse(fam: Family, table: &str, info: &[u8], entries: &[u8]) -> Result<Vec<LegacyChain>, String> {
    if info.len() < GETINFO_LEN {
        return Err(format!("{table}: short table info ({} bytes)", info.len()));
    }
    let valid = u32_at(info, 32).unwrap_or(0);
    let hook_entry: Vec<u32> = (0..NF_HOOKS).map(|h| u32_at(info, 36 + 4 * h).unwrap_or(0)).collect();
    let underflow: Vec<u32> = (0..NF_HOOKS).map(|h| u32_at(info, 56 + 4 * h).unwrap_or(0)).collect();
    // walk the entries: (offset, target name, target data)
    let mut walked: Vec<(usize, String, &[u8])> = Vec::new();
    let mut off = 0usize;
    while off < entries.len() {
        if walked.len() >= MAX_ENTRIES {
            return Err(format!("{table}: over {MAX_ENTRIES} entries"));
        }
        let e = &entries[off..];
        let (Some(t_off), Some(next)) = (u16_at(e, fam.target_offset_at), u16_at(e, fam.target_offset_at + 2)) else {
            return Err(format!("{table}: entry at {off} cut short"));
        };
        let (t_off, next) = (t_off as usize, next as usize);
        if t_off < fam.entry || next < t_off + TARGET_HDR || next > e.len() {
            return Err(format!("{table}: entry at {off} has offsets {t_off}/{next} of {}", e.len()));
        }
        let target = &e[t_off..next];
        let name = cstr(&target[2..TARGET_HDR - 1]);
        walked.push((off, name, &target[TARGET_HDR..]));
        off += next;
    }
    let verdict = |data: &[u8]| data.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
    let mut out = Vec::new();
    for h in 0..NF_HOOKS {
        if valid & (1 << h) == 0 {
            continue;
        }
        let (start, under) = (hook_entry[h] as usize, underflow[h] as usize);
        let rules = walked.iter().filter(|(o, _, _)| *o >= start && *o < under).count() as u64;
        let policy = walked
            .iter()
            .find(|(o, _, _)| *o == under)
            .filter(|(_, name, _)| name.is_empty())
            .and_then(|(_, _, data)| verdict(data))
            // a standard verdict is -NF_x - 1
            .and_then(|v| (v < 0).then(|| (-v - 1) as u32));
        out.push(LegacyChain {
            table: table.into(),
            chain: BUILTIN[h].into(),
            hook: Some(h as u32),
            policy,
            rules,
        });
    }
    // user chains: an ERROR entry names each; the last one ends the table
    let heads: Vec<(usize, String)> = walked
        .iter()
        .enumerate()
        .filter(|(_, (_, name, _))| name == "ERROR")
        .map(|(i, (_, _, data))| (i, cstr(&data[..data.len().min(30)])))
        .collect();
    for (k, (i, chain)) in heads.iter().enumerate() {
        if chain == "ERROR" {
            continue;
        }
        let end = heads.get(k + 1).map(|h| h.0).unwrap_or(walked.len());
        // the entries between its head and the next, less the tail RETURN
        let rules = end.saturating_sub(i + 1).saturating_sub(1) as u64;
        out.push(LegacyChain {
            table: table.into(),
            chain: chain.clone(),
            hook: None,
            policy: None,
            rules,
        });
    }
    Ok(out)
}

fn getsockopt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, buf: &mut [u8]) -> Result<(), std::io::Error> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes; the kernel writes at most len.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The legacy tables of `fam` in the agent's network namespace. `Ok` with
/// no chains when none is loaded; per-table problems in the notes.
pub fn read(fam: Family) -> (Vec<LegacyChain>, Vec<String>) {
    let (mut chains, mut notes) = (Vec::new(), Vec::new());
    let names = std::fs::read_to_string(crate::paths::own_net(fam.names)).unwrap_or_default();
    let tables: Vec<&str> = names
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() < TABLE_NAME)
        .take(MAX_TABLES)
        .collect();
    if tables.is_empty() {
        return (chains, notes);
    }
    // SAFETY: a plain socket(2) call; the fd is owned below.
    let raw = unsafe { libc::socket(fam.af, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if raw < 0 {
        notes.push(format!("iptables-legacy: socket: {}", std::io::Error::last_os_error()));
        return (chains, notes);
    }
    // SAFETY: raw is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for table in tables {
        let mut info = [0u8; GETINFO_LEN];
        info[..table.len()].copy_from_slice(table.as_bytes());
        if let Err(e) = getsockopt(&fd, fam.level, SO_GET_INFO, &mut info) {
            notes.push(format!("iptables-legacy table {table}: {e}"));
            continue;
        }
        let size = u32_at(&info, 80).unwrap_or(0) as usize;
        if size > MAX_TABLE_BYTES {
            notes.push(format!(
                "iptables-legacy table {table}: {size} bytes, over {MAX_TABLE_BYTES}: not compared"
            ));
            continue;
        }
        let mut buf = vec![0u8; GET_ENTRIES_HDR + size];
        buf[..table.len()].copy_from_slice(table.as_bytes());
        buf[32..36].copy_from_slice(&(size as u32).to_ne_bytes());
        // the table may change between the two calls: EAGAIN, said and skipped
        if let Err(e) = getsockopt(&fd, fam.level, SO_GET_ENTRIES, &mut buf) {
            notes.push(format!("iptables-legacy table {table}: {e}"));
            continue;
        }
        match parse(fam, table, &info, &buf[GET_ENTRIES_HDR..]) {
            Ok(c) => chains.extend(c),
            Err(e) => notes.push(format!("iptables-legacy: {e}")),
        }
    }
    (chains, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One IPv4 entry with a standard target (`verdict`) or an ERROR
    /// target naming `error`.
    fn entry(verdict: Option<i32>, error: Option<&str>) -> Vec<u8> {
        let fam = V4;
        let data_len = if error.is_some() { 32 } else { 8 };
        let next = fam.entry + TARGET_HDR + data_len;
        let mut e = vec![0u8; next];
        e[fam.target_offset_at..fam.target_offset_at + 2].copy_from_slice(&(fam.entry as u16).to_ne_bytes());
        e[fam.target_offset_at + 2..fam.target_offset_at + 4].copy_from_slice(&(next as u16).to_ne_bytes());
        let t = fam.entry;
        e[t..t + 2].copy_from_slice(&((TARGET_HDR + data_len) as u16).to_ne_bytes());
        if let Some(name) = error {
            e[t + 2..t + 7].copy_from_slice(b"ERROR");
            e[t + TARGET_HDR..t + TARGET_HDR + name.len()].copy_from_slice(name.as_bytes());
        }
        if let Some(v) = verdict {
            e[t + TARGET_HDR..t + TARGET_HDR + 4].copy_from_slice(&v.to_ne_bytes());
        }
        e
    }

    /// filter: INPUT (policy DROP, one rule), FORWARD and OUTPUT (ACCEPT),
    /// a user chain FOO with one rule.
    fn filter_table() -> (Vec<u8>, Vec<u8>) {
        let mut entries = Vec::new();
        let mut offs = Vec::new();
        let mut push = |e: Vec<u8>, entries: &mut Vec<u8>| {
            offs.push(entries.len() as u32);
            entries.extend(e);
        };
        push(entry(Some(-2), None), &mut entries); // INPUT rule: ACCEPT
        push(entry(Some(-1), None), &mut entries); // INPUT policy DROP
        push(entry(Some(-2), None), &mut entries); // FORWARD policy ACCEPT
        push(entry(Some(-2), None), &mut entries); // OUTPUT policy ACCEPT
        push(entry(None, Some("FOO")), &mut entries); // FOO head
        push(entry(Some(-5), None), &mut entries); // FOO rule (RETURN)
        push(entry(Some(-5), None), &mut entries); // FOO tail
        push(entry(None, Some("ERROR")), &mut entries); // end
        let mut info = vec![0u8; GETINFO_LEN];
        info[..6].copy_from_slice(b"filter");
        info[32..36].copy_from_slice(&0b1110u32.to_ne_bytes());
        let (hook_entry, underflow) = ([0, offs[0], offs[2], offs[3], 0], [0, offs[1], offs[2], offs[3], 0]);
        for h in 0..5 {
            info[36 + 4 * h..40 + 4 * h].copy_from_slice(&hook_entry[h].to_ne_bytes());
            info[56 + 4 * h..60 + 4 * h].copy_from_slice(&underflow[h].to_ne_bytes());
        }
        info[80..84].copy_from_slice(&(entries.len() as u32).to_ne_bytes());
        (info, entries)
    }

    #[test]
    fn builtin_policies_rules_and_user_chains() {
        let (info, entries) = filter_table();
        let c = parse(V4, "filter", &info, &entries).unwrap();
        let got: Vec<(&str, Option<u32>, Option<u32>, u64)> = c.iter().map(|c| (c.chain.as_str(), c.hook, c.policy, c.rules)).collect();
        assert_eq!(
            got,
            [
                ("INPUT", Some(1), Some(0), 1),
                ("FORWARD", Some(2), Some(1), 0),
                ("OUTPUT", Some(3), Some(1), 0),
                ("FOO", None, None, 1),
            ]
        );
    }

    #[test]
    fn hostile_or_cut_entries_are_errors_not_panics() {
        let (info, entries) = filter_table();
        assert!(parse(V4, "filter", &info[..40], &entries).is_err());
        for cut in [1, 50, 100, 113, entries.len() - 1] {
            let _ = parse(V4, "filter", &info, &entries[..cut]);
        }
        // next_offset 0 would loop forever; past the end would read beyond
        let mut bad = entries.clone();
        bad[V4.target_offset_at + 2..V4.target_offset_at + 4].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse(V4, "filter", &info, &bad).is_err());
        let mut bad = entries.clone();
        bad[V4.target_offset_at + 2..V4.target_offset_at + 4].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(parse(V4, "filter", &info, &bad).is_err());
        // random bytes: never a panic
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut b = entries.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            let _ = parse(V4, "filter", &info, &b);
        }
    }
}
