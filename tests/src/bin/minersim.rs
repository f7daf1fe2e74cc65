//! minersim: a HARMLESS miner simulator. It mines nothing and never touches
//! the network; its binary carries XMRig-like strings so content signatures
//! see it. See the crate docs (src/lib.rs) for the disguises.

/// Strings found in XMRig-family binaries (see shared/reference/miners-on-hosts.md),
/// kept in this binary so content signatures can see them. Printed by --strings.
static MINER_STRINGS: &[&str] = &[
    "XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0",
    "donate.v2.xmrig.com:3333",
    "donate.ssl.xmrig.com:443",
    "stratum+tcp://",
    "stratum+ssl://",
    "mining.subscribe",
    "mining.authorize",
    "keepalived",
    "randomx",
    "cryptonight",
    "rx/0",
    "--donate-level",
    "max-threads-hint",
    "/sbin/modprobe msr allow_writes=on",
    "URL of mining server",
    "--randomx-1gb-pages",
];

fn main() {
    rigwatch_e2e::run(std::env::args().skip(1).collect(), MINER_STRINGS);
}
