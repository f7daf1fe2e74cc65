//! Importers for public indicator list formats: plain domain lists, hosts
//! files, Adblock-style `||domain^` lines, and `ip` / `ip:port` lists
//! (maltrail style). Pure functions over text.

use std::net::{IpAddr, SocketAddr};

/// An address entry: a bare IP (any port) or an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// Any port on this address.
    Ip(IpAddr),
    /// This address and port.
    Endpoint(SocketAddr),
}

/// The entry on a list line: comments (`#`) and trailing words dropped.
pub fn list_entry(line: &str) -> Option<&str> {
    let line = line.split('#').next().unwrap_or("").trim();
    let first = line.split_whitespace().next()?;
    Some(first)
}

/// Lowercases a domain and strips a trailing dot and a leading `*.`;
/// `None` when it is not a plausible DNS name.
pub fn normalise_domain(d: &str) -> Option<String> {
    let d = d.trim().trim_end_matches('.').trim_start_matches("*.").to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        && d.parse::<IpAddr>().is_err();
    ok.then_some(d)
}

/// Domains from a plain list, a hosts file or an Adblock-style list.
/// Errors name the line.
pub fn domains(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('!') {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // hosts file: "0.0.0.0 name [name...]"
        let names: Vec<&str> = if first.parse::<IpAddr>().is_ok() {
            words.collect()
        } else if let Some(rest) = first.strip_prefix("||") {
            vec![rest.trim_end_matches('^')]
        } else {
            vec![first]
        };
        for name in names {
            if matches!(name, "localhost" | "localhost.localdomain" | "broadcasthost" | "local") {
                continue;
            }
            match normalise_domain(name) {
                Some(d) => out.push(d),
                None => return Err(format!("line {}: {name:?} is not a domain name", n + 1)),
            }
        }
    }
    Ok(out)
}

/// Parses `ip`, `ip:port` or `[ipv6]:port`.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Address::Ip(ip));
    }
    s.parse::<SocketAddr>()
        .map(Address::Endpoint)
        .map_err(|_| format!("{s:?} is not an ip, ip:port or [ipv6]:port"))
}

/// Addresses from an `ip:port` list. Errors name the line.
pub fn addresses(text: &str) -> Result<Vec<Address>, String> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if let Some(e) = list_entry(l) {
            out.push(parse_address(e).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_plain_and_adblock() {
        let t = "# CoinBlocker\n0.0.0.0 pool.example.com\n127.0.0.1 a.example.org b.example.org\n\
                 ||c.example.net^\nplain.example.io # note\n\n0.0.0.0 localhost\n";
        assert_eq!(
            domains(t).unwrap(),
            vec![
                "pool.example.com",
                "a.example.org",
                "b.example.org",
                "c.example.net",
                "plain.example.io"
            ]
        );
    }
    #[test]
    fn bad_domain_names_its_line() {
        let e = domains("ok.example.com\nnot a domain!\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }
    #[test]
    fn addresses_in_every_form() {
        let t = "192.0.2.1\n192.0.2.2:3333 # pool\n[2001:db8::1]:4444\n";
        assert_eq!(addresses(t).unwrap().len(), 3);
        assert!(addresses("192.0.2.300:1\n").unwrap_err().starts_with("line 1:"));
    }
}
