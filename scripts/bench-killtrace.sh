#!/bin/sh
# The kill-trace program's cost (issue 18): kernel BPF statistics
# (run count, total run time) of every rigwatch eBPF program while a
# `rigwatch scan` runs, under 2,000 process exits (a SIGCHLD each: the
# program's common path, one compare) and 200 SIGTERMs sent to daemons that
# are not the sender's children (each one recorded). The exec and rounding
# programs, loaded in the same scan, are the peers. Needs root and bpftool.
set -e
RW=${RW:-target/debug/rigwatch}
old=$(cat /proc/sys/kernel/bpf_stats_enabled)
echo 1 > /proc/sys/kernel/bpf_stats_enabled
trap 'echo $old > /proc/sys/kernel/bpf_stats_enabled' EXIT
$RW scan --json --window 14 --no-capture --no-sockets --no-gpu > /dev/null 2>&1 &
scan=$!
sleep 3
t0=$(date +%s.%N)
for i in $(seq 2000); do /bin/true; done
for i in $(seq 200); do
  p=$(sh -c 'sleep 30 >/dev/null 2>&1 & echo $!')
  kill -TERM "$p"
done
t1=$(date +%s.%N)
echo "load: $(echo "$t1 - $t0" | bc) s"
bpftool prog show | grep -E "name (on_signal|on_exec|fpu_deactivated|on_state) " |
  awk '{for(i=1;i<=NF;i++){if($i=="name")n=$(i+1);if($i=="run_time_ns")t=$(i+1);if($i=="run_cnt")c=$(i+1)}
       printf "%-16s runs %7d  total %8.3f ms  per run %5.0f ns\n", n, c, t/1e6, (c?t/c:0)}'
wait $scan || true
