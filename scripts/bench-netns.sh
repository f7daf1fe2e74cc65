#!/usr/bin/env bash
# The capture thread's cost with many network namespaces (pods), run as root:
#  1. idle (no traffic) and under connection churn on the host's loopback,
#     with no other namespace, then with N namespaces (default 200), each
#     with a process in it (so the capture opens a socket on its loopback
#     and keeps a sock_diag socket for lookups);
#  2. the same churn inside one of those namespaces (pod-local packets, read
#     through that namespace's own socket).
# Every connection's SYN and SYN-ACK pass the kernel filter, so churn is the
# per-packet path. Figures: % of one core of the rw-capture thread.
set -euo pipefail
N=${N:-200}
SECS=${SECS:-15}
cargo build -q --release -p rigwatch-agent
RW=$(pwd)/target/release/rigwatch
cleanup() {
  for i in $(seq 0 $((N - 1))); do ip netns del rwb$i 2>/dev/null || true; done
  pkill -f "rwbench-sleeper" 2>/dev/null || true
}
trap cleanup EXIT

cat > /tmp/rwbench-churn.py <<'PY'
import socket, sys, threading, time
secs = float(sys.argv[1])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", 0)); l.listen(1024)
port = l.getsockname()[1]
def serve():
    while True:
        c, _ = l.accept(); c.close()
threading.Thread(target=serve, daemon=True).start()
n, end = 0, time.time() + secs
while time.time() < end:
    c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"); c.close(); n += 1
print(f"{n / secs:.0f}")
PY

# measure LABEL CMD...: the capture thread's CPU while CMD runs (or SECS idle)
measure() {
  local label=$1; shift
  "$RW" sniff --seconds $((SECS * 2 + 10)) --json >/dev/null 2>&1 &
  local pid=$!
  sleep 3 # capture open, namespaces found (every 2 s)
  local ct
  ct=$(grep -l rw-capture /proc/$pid/task/*/comm | head -1 | xargs dirname)
  local hz k0 k1 t0 t1 rate
  hz=$(getconf CLK_TCK)
  k0=$(awk '{print $14+$15}' "$ct/stat"); t0=$(date +%s.%N)
  if [ $# -gt 0 ]; then rate=$("$@"); else sleep "$SECS"; rate=0; fi
  k1=$(awk '{print $14+$15}' "$ct/stat"); t1=$(date +%s.%N)
  local socks
  socks=$(ls -l /proc/$pid/fd 2>/dev/null | grep -c socket || true)
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  python3 -c "import sys; k0,k1,t0,t1,hz=map(float,sys.argv[1:6]); print(f'{sys.argv[6]:<48} capture thread {(k1-k0)/hz/(t1-t0)*100:6.2f} % of a core; {sys.argv[7]:>6} conn/s; {sys.argv[8]} sockets open')" \
    "$k0" "$k1" "$t0" "$t1" "$hz" "$label" "$rate" "$socks"
}

measure "idle, no other namespace"
measure "churn on the host's lo, no other namespace" python3 /tmp/rwbench-churn.py "$SECS"
for i in $(seq 0 $((N - 1))); do
  ip netns add rwb$i
  ip -n rwb$i link set lo up
  ip netns exec rwb$i bash -c 'exec -a rwbench-sleeper sleep 600' &
done
sleep 1
measure "idle, $N namespaces" 
measure "churn on the host's lo, $N namespaces" python3 /tmp/rwbench-churn.py "$SECS"
measure "churn inside one of $N namespaces (pod-local)" ip netns exec rwb0 python3 /tmp/rwbench-churn.py "$SECS"
