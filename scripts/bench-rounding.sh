#!/usr/bin/env bash
# The eBPF rounding-mode sensor (issue 15), two figures (run as root, x86_64):
#  1. what busy benign programs look like to it: `rigwatch rounding` watches
#     while each runs (a compiler loop, xz -9, openssl speed, numpy matrix
#     products, a JVM and a Python float loop, PostgreSQL under pgbench);
#     beside them the harmless RandomX-like simulator (busysim --rounding
#     cycle). Every process caught away from round-to-nearest is printed.
#  3. the exec sensor's cost: execs per second (posix_spawn of /bin/true,
#     waited for) with and without `rigwatch scan` holding both programs.
#  2. its cost in the kernel: context switches per second with and without
#     the program attached, in one run — `perf bench sched pipe` (the
#     common path: default mode, a load, a mask, a compare) and a pipe
#     ping-pong whose two processes round upward (every switch takes the
#     slow path: a per-CPU map lookup and update).
#  4. connect attribution: loopback TCP connections per second with and
#     without `rigwatch scan` (capture + the connect program), and each
#     program's own time per run (kernel.bpf_stats_enabled).
# SECS (default 8) per workload; COST_ONLY=1 runs only 2-4, CONNECT_ONLY=1
# only 4; N round trips, EN execs, CN connections. Needs gcc, xz, openssl, perf, java, python3
# (numpy is installed into a throwaway venv) and PostgreSQL's binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
cargo build -q --release -p rigwatch-agent -p rigwatch-e2e --bin rigwatch --bin busysim
RW=$PWD/target/release/rigwatch
SIM=$PWD/target/release/busysim
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
chmod 755 "$W"

watch() { # NAME COMMAND...: the command runs for SECS while rigwatch watches
  local name=$1; shift
  "$RW" rounding --seconds "$SECS" --json > "$W/out" || true
  echo "== $name"
  python3 - "$W/out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not rows: print("   no process left round-to-nearest")
for r in rows:
    print(f"   pid {r['pid']:>7} {r['comm']:<16} {r['switches']:>8} switches {r['rate_per_second']:>9.1f}/s  modes {','.join(r['modes']) or '-':<22} randomx-like: {'YES' if r['randomx_like'] else 'no'}")
PY
}
bg() { ( timeout "$((SECS + 1))" "$@" >/dev/null 2>&1 || true ) & }

if [ "${COST_ONLY:-0}" != 1 ] && [ "${CONNECT_ONLY:-0}" != 1 ]; then
echo "# 1. busy programs, $SECS s each"
bg bash -c 'while :; do gcc -O2 -c tests/evasion/hider.c -o /dev/null; done'; sleep 0.3; watch "gcc -O2 in a loop"; wait
bg bash -c 'head -c 400M /dev/urandom | xz -9 -T1 > /dev/null'; sleep 0.3; watch "xz -9"; wait
bg openssl speed -seconds 2 -evp aes-256-gcm sha256 ecdsap256; sleep 0.3; watch "openssl speed"; wait
python3 -m venv "$W/venv" >/dev/null && "$W/venv/bin/pip" -q install numpy >/dev/null
bg "$W/venv/bin/python" -c 'import numpy as np
a = np.random.rand(700, 700)
while True: a = (a @ a) / 700.0'; sleep 0.3; watch "numpy matrix products (OpenBLAS)"; wait
cat > "$W/Bench.java" <<'J'
public class Bench { public static void main(String[] a) { double s = 0; for (long i = 1; ; i++) { s += Math.sin(i) * Math.sqrt(i) / Math.log(i + 1); if (i % 100000000 == 0) System.out.println(s); } } }
J
bg java "$W/Bench.java"; sleep 0.3; watch "java (JIT, float loop)"; wait
bg python3 -c 'import math, statistics, fractions
while True: statistics.fmean(math.sin(i) * math.sqrt(i) for i in range(200000)); fractions.Fraction(3, 7) ** 50'
sleep 0.3; watch "python3 float loop"; wait
PG=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
install -d -o postgres "$W/pg"
su postgres -s /bin/sh -c "$PG/initdb -D $W/pg/data -A trust >/dev/null && $PG/pg_ctl -D $W/pg/data -o '-k $W/pg -p 5499 -c listen_addresses=' -l $W/pg/log start >/dev/null && $PG/pgbench -h $W/pg -p 5499 -i -s 5 postgres >/dev/null 2>&1"
bg su postgres -s /bin/sh -c "$PG/pgbench -h $W/pg -p 5499 -c 4 -T $SECS postgres"; sleep 0.3; watch "PostgreSQL under pgbench -c 4"; wait
su postgres -s /bin/sh -c "$PG/pg_ctl -D $W/pg/data stop -m fast >/dev/null"
cp "$SIM" "$W/sim"
bg "$W/sim" --rounding cycle --burn "$SECS"; sleep 0.3; watch "busysim --rounding cycle (RandomX-like)"; wait
fi

if [ "${CONNECT_ONLY:-0}" != 1 ]; then
echo
echo "# 2. kernel cost per context switch"
cat > "$W/pp.c" <<'C'
#include <fenv.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]); int up = argc > 2;
    int a[2], b[2]; char c = 0; pipe(a); pipe(b);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    if (fork() == 0) { if (up) fesetround(FE_UPWARD); for (long i = 0; i < n; i++) { read(a[0], &c, 1); write(b[1], &c, 1); } _exit(0); }
    if (up) fesetround(FE_UPWARD);
    volatile double x = 1.0;
    for (long i = 0; i < n; i++) { write(a[1], &c, 1); read(b[0], &c, 1); x = x * 1.0000001; }
    wait(NULL); clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%.0f\n", 2.0 * n / s);
    return 0;
}
C
gcc -O2 -o "$W/pp" "$W/pp.c" -lm
N=${N:-400000}
rate() { taskset -c 0 "$W/pp" "$N" ${1:-}; }
perf_rate() { taskset -c 0 perf bench sched pipe -l "$N" 2>/dev/null | awk '/ops\/sec/ {print 2*$1}'; }
run() { # label: five alternations without / with the program attached (medians)
  local off=() on=()
  for i in 1 2 3 4 5; do
    off+=("$($2)")
    "$RW" rounding --seconds 3600 --json >/dev/null & local p=$!
    sleep 1.5; on+=("$($2)"); kill $p; wait $p 2>/dev/null || true
  done
  python3 -c "import statistics as s,sys; o=[float(x) for x in sys.argv[2:7]]; w=[float(x) for x in sys.argv[7:12]]; print(f'{sys.argv[1]:<52} without: {s.median(o):>9,.0f} switches/s  with: {s.median(w):>9,.0f} switches/s  ({(s.median(w)/s.median(o)-1)*100:+.1f} %)')" "$1" "${off[@]}" "${on[@]}"
}
run "perf bench sched pipe (default rounding: common path)" perf_rate
run "pipe ping-pong, one CPU, default rounding" rate
run "pipe ping-pong, one CPU, both round upward (slow path)" "rate up"

echo
echo "# 3. exec events: execs per second with and without the exec program"
cat > "$W/ex.c" <<'C'
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/wait.h>
extern char **environ;
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char *args[] = {"/bin/true", "-o", "stratum+tcp://pool.example:3333", NULL};
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) { pid_t p; posix_spawn(&p, "/bin/true", NULL, NULL, args, environ); waitpid(p, NULL, 0); }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.0f\n", n / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
    return 0;
}
C
gcc -O2 -o "$W/ex" "$W/ex.c"
EN=${EN:-6000}
off=(); on=()
for i in 1 2 3; do
  off+=("$("$W/ex" "$EN")")
  "$RW" scan --window 60 --no-capture --no-sockets --no-gpu --json >/dev/null 2>&1 & p=$!
  for _ in $(seq 100); do [ "$(ls -l /proc/$p/fd 2>/dev/null | grep -c bpf_link)" -ge 2 ] && break; sleep 0.1; done
  on+=("$("$W/ex" "$EN")"); kill $p; wait $p 2>/dev/null || true
done
python3 -c "import statistics as s,sys; o=[float(x) for x in sys.argv[1:4]]; w=[float(x) for x in sys.argv[4:7]]; print(f'spawn+exec+wait of /bin/true: without {s.median(o):,.0f} execs/s, with the exec program (argv copied to the ring buffer) {s.median(w):,.0f} execs/s ({(s.median(w)/s.median(o)-1)*100:+.1f} %)')" "${off[@]}" "${on[@]}"

fi

echo
echo "# 4. connect attribution: TCP connections per second (loopback connect, accept, close)"
echo "#    with and without rigwatch scan (capture and the connect program), and what"
echo "#    each eBPF program costs per run (kernel.bpf_stats_enabled, the prog fd's fdinfo)"
cat > "$W/cn.c" <<'C'
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int lfd;
static void *acceptor(void *x) { (void)x; for (;;) { int c = accept(lfd, 0, 0); if (c >= 0) close(c); } return 0; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a; int one = 1;
    lfd = socket(AF_INET, SOCK_STREAM, 0); setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    bind(lfd, (void *)&a, sizeof a); listen(lfd, 4096); getsockname(lfd, (void *)&a, &al);
    pthread_t t; pthread_create(&t, 0, acceptor, 0);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) { int s = socket(AF_INET, SOCK_STREAM, 0); if (connect(s, (void *)&a, sizeof a)) { perror("connect"); return 1; } close(s); }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.0f\n", n / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
    return 0;
}
C
gcc -O2 -pthread -o "$W/cn" "$W/cn.c"
CN=${CN:-20000}
sysctl -qw net.ipv4.tcp_tw_reuse=1
stats_before=$(sysctl -n kernel.bpf_stats_enabled); sysctl -qw kernel.bpf_stats_enabled=1
off=(); on=()
for i in 1 2 3; do
  off+=("$("$W/cn" "$CN")")
  "$RW" scan --window 60 --no-sockets --no-gpu --json >/dev/null 2>&1 & p=$!
  for _ in $(seq 100); do [ "$(ls -l /proc/$p/fd 2>/dev/null | grep -c bpf_link)" -ge 3 ] && break; sleep 0.1; done
  on+=("$("$W/cn" "$CN")")
  if [ "$i" = 3 ]; then
    for f in /proc/$p/fdinfo/*; do grep -q '^prog_id' "$f" 2>/dev/null || continue
      awk '/^prog_id/ {id=$2} /^run_time_ns/ {t=$2} /^run_cnt/ {c=$2} END {if (c > 0) printf "   bpf prog %s: %d runs, %.0f ns per run\n", id, c, t / c}' "$f"; done
  fi
  kill $p; wait $p 2>/dev/null || true
done
sysctl -qw kernel.bpf_stats_enabled="$stats_before"
python3 -c "import statistics as s,sys; o=[float(x) for x in sys.argv[1:4]]; w=[float(x) for x in sys.argv[4:7]]; print(f'loopback connect+accept+close: without {s.median(o):,.0f} connections/s, with rigwatch scan (capture + connect program) {s.median(w):,.0f}/s ({(s.median(w)/s.median(o)-1)*100:+.1f} %)')" "${off[@]}" "${on[@]}"
