#!/usr/bin/env python3
"""Benign long-lived TLS sessions, for the TLS-stratum classifier's false
positive tests (issue 14). Real TLS (Python's ssl module: OpenSSL), on
loopback only; the traffic is made up, shaped like the workloads that keep
TLS sessions open for long:

  rest      HTTP/1.1 keep-alive, HTTP/2 or gRPC unary calls: a request
            every second, its answer at once
  db        database queries (PostgreSQL/MySQL over TLS): a query, a result
            and a completion message
  stream    a websocket feed or a gRPC server stream: the server pushes
            similar-sized messages every 2 s unasked; the client pings
  mq        message-queue deliveries (AMQP/MQTT): messages of any size at
            irregular intervals, each acknowledged, and heartbeats
  download  a package download: 20 MB at once, then idle

Usage:
  tls_shapes.py serve --cert PEM --key PEM [--listen 127.0.0.1:0]
      prints `listening ADDR`; serves every connection by the shape its
      client names in its first line; exits after 300 s
  tls_shapes.py client --connect ADDR --shape SHAPE --seconds N [--busy] [--delay S]
      prints `ready PID LOCALPORT` once connected, `done` at the end; with --busy it
      also spins one core (a busy client is the hard case)
"""
import argparse
import os
import random
import socket
import ssl
import sys
import threading
import time

LOOPBACK = ("127.", "::1")


def say(line):
    print(line, flush=True)


def send(s, n, tag=b"x"):
    s.sendall((tag * n)[:n])


def serve_conn(conn):
    try:
        shape = b""
        while not shape.endswith(b"\n"):
            b = conn.recv(1)
            if not b:
                return
            shape += b
        shape = shape.strip().decode()
        if shape == "stream":
            conn.settimeout(0.05)
            nxt = time.monotonic() + 2
            while True:
                try:
                    if conn.recv(4096) == b"":
                        return
                    send(conn, 60, b"p")  # pong
                except socket.timeout:
                    pass
                if time.monotonic() >= nxt:
                    send(conn, 320 + random.randint(-10, 10), b"m")
                    nxt += 2
        elif shape == "mq":
            conn.settimeout(0.05)
            nxt, beat = time.monotonic() + 1, time.monotonic() + 10
            while True:
                try:
                    if conn.recv(4096) == b"":
                        return
                except socket.timeout:
                    pass
                now = time.monotonic()
                if now >= nxt:
                    send(conn, random.randint(150, 1300), b"d")
                    nxt = now + random.uniform(1.5, 3.0)
                if now >= beat:
                    send(conn, 8, b"h")
                    beat = now + 10
        elif shape == "download":
            conn.recv(4096)
            for _ in range(20 * 64):
                send(conn, 16384, b"z")
            while conn.recv(4096):
                pass
        else:  # rest, db: answer each request
            while True:
                req = conn.recv(4096)
                if not req:
                    return
                if shape == "db":
                    send(conn, 500, b"r")
                    send(conn, 50, b"c")
                else:
                    send(conn, 800, b"a")
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def serve(a):
    host, port = a.listen.rsplit(":", 1)
    if not host.startswith(LOOPBACK):
        sys.exit("tls_shapes: loopback only")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ls = socket.create_server((host, int(port)))
    say("listening %s:%d" % ls.getsockname()[:2])
    threading.Timer(300, lambda: os._exit(0)).start()
    while True:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            t = ctx.wrap_socket(c, server_side=True)
        except (OSError, ssl.SSLError):
            c.close()
            continue
        threading.Thread(target=serve_conn, args=(t,), daemon=True).start()


def spin():
    while True:
        pass


def client(a):
    host, port = a.connect.rsplit(":", 1)
    if not host.startswith(LOOPBACK):
        sys.exit("tls_shapes: loopback only")
    if a.busy:
        threading.Thread(target=spin, daemon=True).start()
    time.sleep(a.delay)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, int(port)))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname="service.internal.example")
    say("ready %d %d" % (os.getpid(), s.getsockname()[1]))
    s.sendall(a.shape.encode() + b"\n")
    end = time.monotonic() + a.seconds
    s.settimeout(0.05)
    ping = time.monotonic() + 5
    while time.monotonic() < end:
        if a.shape == "rest":
            send(s, 300, b"q")
            s.settimeout(5)
            s.recv(4096)
            time.sleep(1)
        elif a.shape == "db":
            send(s, 200, b"s")
            s.settimeout(5)
            got = 0
            while got < 550:
                got += len(s.recv(4096))
            time.sleep(0.7)
        elif a.shape == "download":
            send(s, 100, b"g")
            s.settimeout(10)
            got = 0
            while got < 20 * 64 * 16384:
                got += len(s.recv(65536))
            time.sleep(max(0, end - time.monotonic()))
        else:  # stream, mq: read what comes; pings or acks
            try:
                if s.recv(65536) and a.shape == "mq":
                    time.sleep(0.2)
                    send(s, 60, b"k")
            except socket.timeout:
                pass
            if a.shape == "stream" and time.monotonic() >= ping:
                send(s, 60, b"i")
                ping += 5
    s.close()
    say("done")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--cert", required=True)
    sv.add_argument("--key", required=True)
    sv.add_argument("--listen", default="127.0.0.1:0")
    cl = sub.add_parser("client")
    cl.add_argument("--connect", required=True)
    cl.add_argument("--shape", required=True, choices=["rest", "db", "stream", "mq", "download"])
    cl.add_argument("--seconds", type=float, default=20)
    cl.add_argument("--busy", action="store_true")
    cl.add_argument("--delay", type=float, default=0, help="seconds to wait before connecting")
    a = p.parse_args()
    serve(a) if a.cmd == "serve" else client(a)


if __name__ == "__main__":
    main()
