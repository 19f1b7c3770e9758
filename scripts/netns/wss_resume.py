#!/usr/bin/env python3
"""A wss:// live.ws listener whose connection is cut by the network, then
resumes with ?from_seq= and checks that no frame is missing.

    wss_resume.py --url wss://HOST:PORT/spaces/ID/live.ws --ca CA.pem
                  [--before 3] [--cut 2] [--after 3] [--nft]

Reads `--before` seconds, then cuts the connection: with --nft it drops
every TCP segment to and from the node's port in this network namespace
(nft, so run it inside the test's namespace) for `--cut` seconds, notices
the stall, abandons the socket and lifts the block; without --nft it resets
the socket. Then reconnects with from_seq = last + 1 and reads `--after`
seconds. Exits 0 only if every message's first_seq follows the previous one
across the cut (docs/live-ws.md), and prints the figures.
"""
import argparse
import base64
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.parse

p = argparse.ArgumentParser()
p.add_argument("--url", required=True)
p.add_argument("--ca", required=True)
p.add_argument("--before", type=float, default=3.0)
p.add_argument("--cut", type=float, default=2.0)
p.add_argument("--after", type=float, default=3.0)
p.add_argument("--nft", action="store_true")
args = p.parse_args()
u = urllib.parse.urlsplit(args.url)
ctx = ssl.create_default_context(cafile=args.ca)


class Ws:
    def __init__(self, query):
        raw = socket.create_connection((u.hostname, u.port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname=u.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + ("?" + query if query else "")
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"no upgrade: {head[:80]!r}")

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def need(self, n):
        while len(self.buf) < n:
            self.fill()

    def message(self):
        """The next binary message's payload (control frames skipped)."""
        while True:
            self.need(2)
            op, ln = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            off = 2
            if ln == 126:
                self.need(4)
                ln, off = struct.unpack(">H", self.buf[2:4])[0], 4
            elif ln == 127:
                self.need(10)
                ln, off = struct.unpack(">Q", self.buf[2:10])[0], 10
            self.need(off + ln)
            payload, self.buf = self.buf[off : off + ln], self.buf[off + ln :]
            if op == 8:
                raise ConnectionError("close frame")
            if op == 2:
                return payload


def nft(*rule):
    subprocess.run(["nft", *rule], check=True)


def read(ws, seconds, expect, stats):
    """Reads messages for `seconds`; checks each first_seq; returns the next expected seq."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        m = ws.message()
        if len(m) < 19 or m[0] != 1:
            sys.exit(f"malformed message of {len(m)} bytes")
        n, first = m[1], struct.unpack(">Q", m[2:10])[0]
        if expect is not None and first != expect:
            stats["gaps"].append((expect, first))
        expect = first + n
        stats["frames"] += n
    return expect


stats = {"frames": 0, "gaps": []}
ws = Ws("")
nxt = read(ws, args.before, None, stats)
before = stats["frames"]
cut_at = time.monotonic()
if args.nft:
    nft("add", "table", "inet", "amphi_cut")
    nft("add", "chain", "inet", "amphi_cut", "out", "{ type filter hook output priority 0; policy accept; }")
    nft("add", "chain", "inet", "amphi_cut", "in", "{ type filter hook input priority 0; policy accept; }")
    nft("add", "rule", "inet", "amphi_cut", "out", "tcp", "dport", str(u.port), "counter", "drop")
    nft("add", "rule", "inet", "amphi_cut", "in", "tcp", "sport", str(u.port), "counter", "drop")
    try:
        # The listener notices the stall as a browser does (no message for 1 s).
        ws.sock.settimeout(1.0)
        stalled = None
        try:
            while True:
                m = ws.message()
                nxt = struct.unpack(">Q", m[2:10])[0] + m[1]  # whatever was in flight
                stats["frames"] += m[1]
        except (socket.timeout, TimeoutError, ssl.SSLError, ConnectionError) as e:
            stalled = time.monotonic() - cut_at
            print(f"stall noticed after {stalled:.2f} s ({type(e).__name__})")
        ws.sock.close()
        time.sleep(max(0.0, args.cut - (time.monotonic() - cut_at)))
    finally:
        out = subprocess.run(["nft", "list", "table", "inet", "amphi_cut"], capture_output=True, text=True).stdout
        nft("delete", "table", "inet", "amphi_cut")
    dropped = sum(int(x) for x in __import__("re").findall(r"packets (\d+)", out))
    print(f"network cut for {time.monotonic() - cut_at:.2f} s: {dropped} segments dropped")
else:
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.sock.close()
    time.sleep(args.cut)
ws = Ws(f"from_seq={nxt}")
t0 = time.monotonic()
m = ws.message()
first = struct.unpack(">Q", m[2:10])[0]
print(f"resumed from_seq={nxt}: first message starts at {first} ({time.monotonic() - t0:.3f} s after the upgrade)")
if first != nxt:
    stats["gaps"].append((nxt, first))
stats["frames"] += m[1]
read(ws, args.after, first + m[1], stats)
print(f"frames: {before} before the cut, {stats['frames'] - before} after it; gaps: {stats['gaps'] or 'none'}")
sys.exit(1 if stats["gaps"] or stats["frames"] - before < 100 else 0)
