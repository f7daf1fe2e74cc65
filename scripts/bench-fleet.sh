#!/usr/bin/env bash
# The collector's cost of serving the fleet signature set (issue 16):
# 10,000 agents polling every 10 s is ~1,000 conditional GETs a second,
# nearly all answered 304. A release collector on 127.0.0.1 (SQLite, the
# bundled rules published so a 200 carries a real set), a Python asyncio
# load generator at a fixed request rate over keep-alive connections, and
# the collector's CPU seconds per second from /proc/PID/stat. Phases, one
# run, same collector:
#   floor   GET /healthz              (no auth, no database: the HTTP floor)
#   304     GET /api/v1/fleet/signatures with If-None-Match = current ETag
#   mix     the same, 1 in 100 without it (a 200 with the signed body)
#
#   scripts/bench-fleet.sh [SECONDS_PER_PHASE] [REQUESTS_PER_SECOND] [TOKENS]
#
# Defaults: 20 s, 1000/s, 200 agent tokens (each bound to its own host;
# requests rotate over them: the database lookup per request is the same
# whatever the number of tokens). Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
RATE=${2:-1000}
TOKENS=${3:-200}
CONNS=${CONNS:-100}

cargo build --release -p rigwatch-collector >&2
BIN=$PWD/target/release/rigwatch-collector
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
data=$work/data

echo "making $TOKENS agent tokens..." >&2
for i in $(seq 1 "$TOKENS"); do
    "$BIN" token create "bench-$i" --host "bench-host-$i" --data-dir "$data" 2>/dev/null | tail -n 1
done >"$work/tokens"
"$BIN" signatures publish signatures/rules --data-dir "$data" >&2

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RIGWATCH_LOG=warn "$BIN" serve --data-dir "$data" --listen "127.0.0.1:$port" 2>"$work/serve.log" &
pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

python3 - "$port" "$pid" "$work/tokens" "$SECS" "$RATE" "$CONNS" <<'PY'
import asyncio, os, sys, time, json

port, pid, tokens_file, secs, rate, conns = sys.argv[1:7]
port, pid, secs, rate, conns = int(port), int(pid), float(secs), float(rate), int(conns)
tokens = [l.strip() for l in open(tokens_file) if l.strip()]
tick = os.sysconf("SC_CLK_TCK")

def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick  # utime + stime

def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) / 1024
    return 0.0

async def read_response(r):
    line = await r.readline()
    status = int(line.split()[1])
    length = 0
    while True:
        h = await r.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        if k.lower() == "content-length":
            length = int(v.strip())
        if k.lower() == "etag":
            etag = v.strip()
    if length:
        await r.readexactly(length)
    return status, length

async def first_etag():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /api/v1/fleet/signatures HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens[0]}\r\n\r\n".encode())
    await w.drain()
    line = await r.readline()
    etag = None
    length = 0
    while True:
        h = await r.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode().partition(":")
        if k.lower() == "etag":
            etag = v.strip()
        if k.lower() == "content-length":
            length = int(v.strip())
    body = await r.readexactly(length)
    w.close()
    return etag, length

async def phase(name, make_request):
    lat, statuses, sizes = [], {}, 0
    interval = conns / rate
    start = time.monotonic() + 0.2
    end = start + secs

    async def conn(i):
        nonlocal sizes
        r, w = await asyncio.open_connection("127.0.0.1", port)
        k = 0
        while True:
            t = start + (i / conns) * interval + k * interval
            if t >= end:
                break
            now = time.monotonic()
            if t > now:
                await asyncio.sleep(t - now)
            req = make_request(i, k)
            t0 = time.monotonic()
            w.write(req)
            await w.drain()
            status, n = await read_response(r)
            lat.append(time.monotonic() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            sizes += n
            k += 1
        w.close()

    await asyncio.sleep(max(0, start - time.monotonic()))
    c0, w0 = cpu(), time.monotonic()
    await asyncio.gather(*(conn(i) for i in range(conns)))
    c1, w1 = cpu(), time.monotonic()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    wall = w1 - w0
    print(f"| {name} | {len(lat)/wall:.0f} | {(c1-c0)/wall:.3f} | {(c1-c0)/len(lat)*1e6:.0f} | "
          f"{q(0.5):.2f} | {q(0.9):.2f} | {q(0.99):.2f} | {lat[-1]*1000:.1f} | "
          f"{', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} | {rss():.0f} |", flush=True)

async def main():
    etag, size = await first_etag()
    print(f"current ETag {etag}, full body {size} bytes, {len(tokens)} tokens, {conns} connections, "
          f"{rate:.0f} requests/s for {secs:.0f} s per phase", flush=True)
    print("| phase | requests/s done | collector CPU s/s | CPU µs/request | p50 ms | p90 ms | p99 ms | max ms | statuses | RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    await phase("floor: /healthz", lambda i, k: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    def fleet(every):
        def make(i, k):
            t = tokens[(i * 7919 + k) % len(tokens)]
            held = etag.strip('"')
            inm = "" if every and (i + k * conns) % every == 0 else f"If-None-Match: {etag}\r\n"
            return (f"GET /api/v1/fleet/signatures HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n"
                    f"X-Rigwatch-Fleet-Version: {held}\r\n{inm}\r\n").encode()
        return make
    await phase("fleet: all 304", fleet(0))
    await phase("fleet: 99 % 304, 1 % 200", fleet(100))

asyncio.run(main())
PY
