#!/usr/bin/env bash
# Runs every rigwatch test on a fresh machine: installs what the tests need
# (Debian packages), then builds and runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v xz >/dev/null || need+=(xz-utils)
command -v cc >/dev/null || need+=(gcc)
command -v python3 >/dev/null || need+=(python3)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v ip >/dev/null || need+=(iproute2)
# footprint tests: rules in a network namespace the test creates (nft)
command -v nft >/dev/null || need+=(nftables)
# and iptables-legacy's tables beside them
command -v iptables-legacy >/dev/null || need+=(iptables)
command -v promtool >/dev/null || need+=(prometheus)
# collector tests: a real PostgreSQL, Alertmanager and headless Chromium; openssl + curl for HTTPS
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
# packaging tests: systemd-analyze and systemd-sysusers, dpkg-deb, setpriv, objcopy (dbgsym)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
command -v objcopy >/dev/null || need+=(binutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# the eBPF programs (agent/bpf/*.bpf.c) are compiled by clang against libbpf's headers
command -v clang >/dev/null || need+=(clang)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -e /usr/include/linux/types.h ] || need+=(linux-libc-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# the Debian packages are built with cargo-deb (packaging test)
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast
