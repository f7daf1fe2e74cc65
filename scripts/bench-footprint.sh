#!/bin/sh
# The footprint sensor's pass (issue 18): it dumps the whole nftables
# ruleset over netlink and reads iptables-legacy's loaded tables through
# getsockopt every pass. One `rigwatch run` (footprint on, every other
# switchable sensor off, interval 1 s) in a network namespace created here
# holding N rules, as nftables rules, then as iptables-legacy rules;
# rigwatch_sensor_pass_duration_seconds{sensor="footprint"} (the last pass's
# duration) sampled once a second, 12 times. Peers in the same run: `nft list ruleset` and
# `iptables-legacy-save` reading the same rules once. Needs root, nft,
# iptables-legacy, curl.   Usage: scripts/bench-footprint.sh [N] (10000)
set -e
N=${1:-10000}
RW=${RW:-target/release/rigwatch}
[ -x "$RW" ] || cargo build --release -q -p rigwatch-agent --bin rigwatch
ns=rwbench-fp-$$
tmp=$(mktemp -d)
ip netns add $ns
trap 'ip netns del $ns; rm -rf $tmp' EXIT
ip netns exec $ns ip link set lo up
mkdir -p $tmp/host/sys/fs/cgroup
cat > $tmp/agent.toml <<CFG
[scan]
interval_seconds = 1
lower_priority = false
host_root = "$tmp/host"
[sensors]
exec_events = false
binary = false
minerconfig = false
sockets = false
capture = false
gpu = false
hidden = false
persistence = false
cgroup_cpu = false
rounding = false
[collector]
fleet = false
CFG
now() { date +%s%N; }
pass() { # $1: label
  port=$((20000 + $$ % 20000))
  ip netns exec $ns "$RW" run --config $tmp/agent.toml --listen 127.0.0.1:$port >/dev/null 2>&1 &
  agent=$!
  sleep 3
  # the gauge holds the last pass's duration: sampled once a second, 12 times
  i=0; : > $tmp/samples
  while [ $i -lt 12 ]; do
    ip netns exec $ns curl -s 127.0.0.1:$port/metrics |
      awk '/^rigwatch_sensor_pass_duration_seconds\{sensor="footprint"\}/{print $2}' >> $tmp/samples
    sleep 1; i=$((i+1))
  done
  sort -g $tmp/samples | awk -v l="$1" '{v[NR]=$1; s+=$1} END{printf "%-34s footprint pass mean %8.2f ms, median %8.2f ms (%d samples)\n", l, s/NR*1000, v[int((NR+1)/2)]*1000, NR}'
  kill $agent; wait $agent 2>/dev/null || true
}
pass "no rules"
{ echo "add table inet t"; echo "add chain inet t input { type filter hook input priority 0; policy accept; }"
  i=0; while [ $i -lt $N ]; do echo "add rule inet t input tcp dport $((i % 60000 + 1)) counter accept"; i=$((i+1)); done; } > $tmp/rules.nft
ip netns exec $ns nft -f $tmp/rules.nft
t0=$(now); ip netns exec $ns nft list ruleset >/dev/null; t1=$(now)
echo "peer: nft list ruleset ($N rules)        $(( (t1 - t0) / 1000 )) us"
pass "$N nftables rules"
ip netns exec $ns nft flush ruleset
{ echo "*filter"; echo ":INPUT ACCEPT [0:0]"; echo ":FORWARD ACCEPT [0:0]"; echo ":OUTPUT ACCEPT [0:0]"
  i=0; while [ $i -lt $N ]; do echo "-A INPUT -p tcp --dport $((i % 60000 + 1)) -j ACCEPT"; i=$((i+1)); done; echo COMMIT; } > $tmp/rules.ipt
ip netns exec $ns iptables-legacy-restore < $tmp/rules.ipt
t0=$(now); ip netns exec $ns iptables-legacy-save >/dev/null; t1=$(now)
echo "peer: iptables-legacy-save ($N rules)     $(( (t1 - t0) / 1000 )) us"
pass "$N iptables-legacy rules"
