//! What may be a secret, taken out before text becomes evidence or a
//! finding's process: URLs lose their userinfo (`user:password@`), query and
//! fragment. Detection reads the raw text; only what is shown and shipped is
//! redacted.

/// A pool URL without what may be a secret: the userinfo (`user:password@`),
/// the query and the fragment. `stratum+tcp://u:p@pool:3333/x?key=1` becomes
/// `stratum+tcp://pool:3333/x`; `u:p@pool:3333` becomes `pool:3333`.
pub fn redact_url(s: &str) -> String {
    let s = s.trim();
    let (scheme, rest) = match s.find("://") {
        Some(i) => s.split_at(i + 3),
        None => ("", s),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}{host}{path}")
}

/// A command line with every URL in it redacted ([`redact_url`]); the rest
/// (and the spacing) is kept. `--url=stratum+tcp://w:pass@pool:3333` becomes
/// `--url=stratum+tcp://pool:3333`.
pub fn redact_cmdline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, word) in s.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match word.find("://") {
            Some(at) => {
                // the URL starts after the last '=' or quote before its scheme
                let start = word[..at].rfind(['=', '"', '\'', ',']).map_or(0, |j| j + 1);
                out.push_str(&word[..start]);
                out.push_str(&redact_url(&word[start..]));
            }
            None => out.push_str(word),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_a_command_line_lose_their_secrets() {
        assert_eq!(
            redact_cmdline("xmrig -o stratum+tcp://w.rig:s3cret@pool.supportxmr.com:3333 --url=https://u:p@x.example/p?token=abc -t 4"),
            "xmrig -o stratum+tcp://pool.supportxmr.com:3333 --url=https://x.example/p -t 4"
        );
        assert_eq!(redact_cmdline("sleep 100"), "sleep 100");
        assert_eq!(redact_cmdline("a  b ://"), "a  b ://");
    }
}
