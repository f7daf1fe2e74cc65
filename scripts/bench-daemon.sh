#!/usr/bin/env bash
# Agent daemon costs next to Debian's prometheus-process-exporter watching the
# same processes (every process, grouped by name), in one run (as root):
#  - CPU (% of one core) and RSS of each, over 60 s, with 1,000 and 10,000
#    extra idle processes, rigwatch at its default 10 s interval and
#    process-exporter scraped every 10 s (it works when scraped);
#  - /metrics scrape time of rigwatch (mean of 50 scrapes);
#  - exec-to-finding latency: a miner simulator started while the agent runs,
#    until it shows on /metrics (10 runs).
set -euo pipefail
cargo build -q --release -p rigwatch-agent -p rigwatch-e2e
RW=$PWD/target/release/rigwatch
SIM=$PWD/target/release/minersim
DUR=${DUR:-60}
HZ=$(getconf CLK_TCK)
WALLET=44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
cat > "$tmp/pe.yml" <<'YML'
process_names:
  - name: "{{.Comm}}"
    cmdline:
    - '.+'
YML
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
hwm() { awk '/VmHWM/ {print $2}' /proc/$1/status; }

echo "| idle processes | agent | CPU (% of a core) | peak RSS |"
echo "|---:|:---|---:|---:|"
for N in ${COUNTS:-1000 10000}; do
  pids=()
  for _ in $(seq $N); do sleep 600 & pids+=($!); done
  sleep 2
  $RW run --listen 127.0.0.1:19861 --spool-dir "$tmp/spool" --signatures "$tmp/none" 2>/dev/null &
  RWP=$!
  prometheus-process-exporter -config.path "$tmp/pe.yml" -web.listen-address 127.0.0.1:19256 >/dev/null 2>&1 &
  PEP=$!
  sleep 12   # both past their first, full pass
  r0=$(ticks $RWP); p0=$(ticks $PEP); t0=$(date +%s.%N)
  end=$(( $(date +%s) + DUR ))
  while [ "$(date +%s)" -lt "$end" ]; do curl -s -o /dev/null 127.0.0.1:19256/metrics; sleep 10; done
  r1=$(ticks $RWP); p1=$(ticks $PEP); t1=$(date +%s.%N)
  python3 - "$N" "$r0" "$r1" "$p0" "$p1" "$t0" "$t1" "$HZ" "$(hwm $RWP)" "$(hwm $PEP)" <<'PY'
import sys
n, r0, r1, p0, p1, t0, t1, hz, rh, ph = sys.argv[1:]
dt = float(t1) - float(t0); hz = float(hz)
print(f"| {n} | rigwatch run (10 s interval) | {(float(r1)-float(r0))/hz/dt*100:.2f} % | {int(rh)/1024:.1f} MiB |")
print(f"| {n} | prometheus-process-exporter (scraped every 10 s) | {(float(p1)-float(p0))/hz/dt*100:.2f} % | {int(ph)/1024:.1f} MiB |")
PY
  # each sensor's last pass, as the agent itself reports it
  curl -s 127.0.0.1:19861/metrics | awk -v n="$N" '/^rigwatch_sensor_pass_duration_seconds\{/ {
    match($0, /sensor="[^"]*"/); s = substr($0, RSTART+8, RLENGTH-9); printf "%s", "";
    sensors = sensors sprintf("| %s | %s | %.2f ms |\n", n, s, $2 * 1000) } END { printf "%s", sensors > "/dev/stderr" }' 2>>"$tmp/sensors.md"
  kill $RWP $PEP; wait $RWP $PEP 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
done
echo
echo "| idle processes | sensor | last pass |"
echo "|---:|:---|---:|"
cat "$tmp/sensors.md"

# scrape time and exec-to-finding latency
$RW run --listen 127.0.0.1:19861 --spool-dir "$tmp/spool" --signatures "$tmp/none" 2>/dev/null &
RWP=$!
sleep 3
python3 - "$SIM" "$WALLET" <<'PY'
import subprocess, sys, time, urllib.request, shutil, tempfile, os
sim, wallet = sys.argv[1:]
def scrape():
    return urllib.request.urlopen("http://127.0.0.1:19861/metrics").read().decode()
ts = []
for _ in range(50):
    t = time.perf_counter(); scrape(); ts.append(time.perf_counter() - t)
print(f"/metrics scrape: mean {sum(ts)/len(ts)*1000:.2f} ms, max {max(ts)*1000:.2f} ms (50 scrapes)")
d = tempfile.mkdtemp(); x = os.path.join(d, "xmrig"); shutil.copy(sim, x)
lat = []
for _ in range(10):
    t = time.perf_counter()
    p = subprocess.Popen([x, "-o", "stratum+tcp://pool.supportxmr.com:3333", "-u", wallet, "--idle", "30"], stdout=subprocess.DEVNULL)
    while f'pid="{p.pid}"' not in scrape():
        time.sleep(0.01)
    lat.append(time.perf_counter() - t)
    p.kill(); p.wait()
lat.sort()
print(f"exec -> finding on /metrics: median {lat[5]*1000:.0f} ms, max {lat[-1]*1000:.0f} ms (10 runs)")
PY
