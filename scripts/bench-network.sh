#!/usr/bin/env bash
# Network sensor costs (run as root; needs iperf3):
#  1. the agent's CPU while iperf3 pushes TCP over loopback for 30 s, next to
#     iperf3 alone (throughput with and without the agent);
#  2. stratum login → finding latency, 20 logins, through `rigwatch sniff`;
#  3. connection churn: the capture thread's CPU while a client opens and
#     closes TCP connections to a local listener as fast as it can (every
#     SYN and SYN-ACK passes the kernel filter), next to the rate alone.
#  4. small TLS records (issue 14): the capture thread's CPU while a TLS
#     client makes request/response calls (300-byte request, 800-byte
#     answer: every record passes the filter for the TLS-stratum
#     classifier) as fast as it can, next to the rate alone and to tcpdump
#     capturing the same records.
# CHURN_ONLY=1 runs only 3, TLS_ONLY=1 only 4 (no iperf3 needed).
set -euo pipefail
cargo build -q --release -p rigwatch-agent
RW=target/release/rigwatch
SECS=${SECS:-30}
ticks=$(getconf CLK_TCK)
cpu_of() { awk '{print $14+$15}' /proc/$1/stat; }

churn() {
python3 - "$RW" "$SECS" "$ticks" <<'PY'
import glob, socket, subprocess, sys, threading, time
rw, secs, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", 0)); l.listen(1024)
port = l.getsockname()[1]
def serve():
    while True:
        c, _ = l.accept(); c.close()
threading.Thread(target=serve, daemon=True).start()
def rate(seconds):
    n, end = 0, time.time() + seconds
    while time.time() < end:
        c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"); c.close(); n += 1
    return n / seconds
alone = rate(secs)
sn = subprocess.Popen([rw, "sniff", "--seconds", str(int(secs) + 10), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.5)
ct = next(d for d in glob.glob(f"/proc/{sn.pid}/task/*") if open(d + "/comm").read().strip() == "rw-capture")
tick = lambda: sum(map(int, open(ct + "/stat").read().rsplit(")", 1)[1].split()[11:13]))
k0, t0 = tick(), time.time()
with_ = rate(secs)
k1, t1 = tick(), time.time()
sn.kill()
# the peer: tcpdump capturing the same handshake packets (its own kernel filter)
td = subprocess.Popen(["tcpdump", "-i", "any", "-n", "-q", "-w", "/dev/null", "tcp[tcpflags] & tcp-syn != 0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.5)
tt = lambda: sum(map(int, open(f"/proc/{td.pid}/stat").read().rsplit(")", 1)[1].split()[11:13]))
d0, s0 = tt(), time.time()
with_td = rate(secs)
d1, s1 = tt(), time.time()
td.kill()
print(f"connection churn: {alone:.0f} connections/s alone, {with_:.0f}/s while rigwatch sniff captures; capture thread CPU {(k1-k0)/hz/(t1-t0)*100:.2f} % of one core")
print(f"peer: tcpdump capturing the SYNs to /dev/null: {with_td:.0f} connections/s, tcpdump CPU {(d1-d0)/hz/(s1-s0)*100:.2f} % of one core")
PY
}
tls_records() {
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -days 1 \
    -keyout /tmp/rw-bench-key.pem -out /tmp/rw-bench-cert.pem 2>/dev/null
python3 - "$RW" "$SECS" "$ticks" <<'PY'
import glob, socket, ssl, subprocess, sys, threading, time
rw, secs, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sc.load_cert_chain("/tmp/rw-bench-cert.pem", "/tmp/rw-bench-key.pem")
l = socket.create_server(("127.0.0.1", 0)); port = l.getsockname()[1]
def serve():
    while True:
        c, _ = l.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        def one(t):
            try:
                while t.recv(4096): t.sendall(b"a" * 800)
            except OSError: pass
        threading.Thread(target=one, args=(sc.wrap_socket(c, server_side=True),), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
cc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cc.check_hostname = False; cc.verify_mode = ssl.CERT_NONE
def rate(seconds):
    r = socket.create_connection(("127.0.0.1", port)); r.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = cc.wrap_socket(r); n, end = 0, time.time() + seconds
    while time.time() < end:
        s.sendall(b"q" * 300); got = 0
        while got < 800: got += len(s.recv(4096))
        n += 1
    s.close(); return n / seconds
alone = rate(secs)
sn = subprocess.Popen([rw, "sniff", "--seconds", str(int(secs) + 10), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.5)
ct = next(d for d in glob.glob(f"/proc/{sn.pid}/task/*") if open(d + "/comm").read().strip() == "rw-capture")
tick = lambda p: sum(map(int, open(p).read().rsplit(")", 1)[1].split()[11:13]))
k0, t0 = tick(ct + "/stat"), time.time()
with_ = rate(secs)
k1, t1 = tick(ct + "/stat"), time.time()
sn.kill()
td = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-q", "-w", "/dev/null", f"tcp port {port} and tcp[((tcp[12]&0xf0)>>2)] = 0x17"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.5)
d0, s0 = tick(f"/proc/{td.pid}/stat"), time.time()
with_td = rate(secs)
d1, s1 = tick(f"/proc/{td.pid}/stat"), time.time()
td.kill()
print(f"small TLS records: {alone:.0f} calls/s alone ({2*alone:.0f} records/s), {with_:.0f} calls/s while rigwatch sniff captures; capture thread CPU {(k1-k0)/hz/(t1-t0)*100:.2f} % of one core")
print(f"peer: tcpdump capturing the same application-data records to /dev/null: {with_td:.0f} calls/s, tcpdump CPU {(d1-d0)/hz/(s1-s0)*100:.2f} % of one core")
PY
}
if [ "${CHURN_ONLY:-0}" = 1 ]; then churn; exit 0; fi
if [ "${TLS_ONLY:-0}" = 1 ]; then tls_records; exit 0; fi

iperf3 -s -1 -B 127.0.0.1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
alone=$(iperf3 -c 127.0.0.1 -p 5299 -t $SECS -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')

$RW sniff --seconds $((SECS + 10)) --json > /tmp/rw-sniff.out 2>/dev/null &
RWPID=$!
sleep 1
iperf3 -s -1 -B 127.0.0.1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
CT=$(grep -l rw-capture /proc/$RWPID/task/*/comm | head -1 | xargs dirname)
cap_of() { awk '{print $14+$15}' $CT/stat; }
c0=$(cpu_of $RWPID); k0=$(cap_of); t0=$(date +%s.%N)
with=$(iperf3 -c 127.0.0.1 -p 5299 -t $SECS -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
c1=$(cpu_of $RWPID); k1=$(cap_of); t1=$(date +%s.%N)
kill $RWPID 2>/dev/null || true
python3 - "$alone" "$with" "$c0" "$c1" "$k0" "$k1" "$t0" "$t1" "$ticks" <<'PY'
import sys
alone, with_, c0, c1, k0, k1, t0, t1, hz = map(float, sys.argv[1:])
dt = t1 - t0
print(f"iperf3 alone: {alone:.1f} Gbit/s; with rigwatch sniff capturing: {with_:.1f} Gbit/s")
print(f"capture thread CPU during iperf3: {(k1-k0)/hz/dt*100:.2f} % of one core; whole sniff process (also re-reads the process table every 200 ms): {(c1-c0)/hz/dt*100:.2f} %")
PY

# login -> finding latency
python3 - "$RW" <<'PY'
import json, socket, subprocess, sys, threading, time
rw = sys.argv[1]
sn = subprocess.Popen([rw, "sniff", "--json", "--seconds", "40", "--no-default-signatures"], stdout=subprocess.PIPE, text=True)
time.sleep(1.5)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64)
port = l.getsockname()[1]
threading.Thread(target=lambda: [l.accept() for _ in range(64)], daemon=True).start()
lat = []
for i in range(20):
    c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = time.time()
    c.sendall(b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"x%d","pass":"x","agent":"XMRig/6.21.0"}}\n' % i)
    while True:
        line = sn.stdout.readline()
        if '"stratum"' in line:
            lat.append(time.time() - t); break
    c.close()
sn.kill()
lat.sort()
print(f"stratum login -> finding (rigwatch sniff, 20 logins): median {lat[10]*1000:.0f} ms, max {lat[-1]*1000:.0f} ms")
PY
churn
tls_records
