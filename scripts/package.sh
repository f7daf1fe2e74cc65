#!/usr/bin/env bash
# Builds the Debian packages into target/debian/:
#   rigwatch_VERSION_ARCH.deb            the agent, its unit, /etc/rigwatch/agent.toml
#   rigwatch-collector_VERSION_ARCH.deb  the collector, its unit, /etc/rigwatch/collector.toml
# plus -dbgsym packages with the debug symbols. Installs cargo-deb if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
cargo deb --locked -p rigwatch-agent --dbgsym "$@"
cargo deb --locked -p rigwatch-collector --dbgsym "$@"
ls -l target/debian/
