#!/usr/bin/env python3
"""A third-party live.ws client: Python's `websockets` with its own
keepalive (by default the library's: a ping every 20 s, the connection
dropped if a pong takes over 20 s; --ping-interval and --ping-timeout make
it stricter). Listens for --seconds, checking that messages arrive gap-free, then
closes with --code and reports, as one JSON line, how many messages and
pings went by and how long the close handshake took and with which code the
server answered."""

import argparse
import asyncio
import json
import struct
import time

import websockets


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--code", type=int, default=1000)
    # None: the library's defaults (20 s and 20 s).
    ap.add_argument("--ping-interval", type=float, default=None)
    ap.add_argument("--ping-timeout", type=float, default=None)
    ap.add_argument("--own-ping-every", type=float, default=7.0)
    a = ap.parse_args()
    out = {"messages": 0, "frames": 0, "gaps": 0, "pongs": 0, "error": None}
    t0 = time.monotonic()
    try:
        keepalive = {}
        if a.ping_interval is not None:
            keepalive["ping_interval"] = a.ping_interval
        if a.ping_timeout is not None:
            keepalive["ping_timeout"] = a.ping_timeout
        async with websockets.connect(a.url, max_size=None, **keepalive) as ws:
            expect = None
            pinger = asyncio.create_task(count_pongs(ws, out, a.own_ping_every))
            while time.monotonic() - t0 < a.seconds:
                try:
                    msg = await asyncio.wait_for(ws.recv(), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if not isinstance(msg, bytes) or len(msg) < 19 or msg[0] != 1:
                    out["error"] = f"unexpected message {msg[:20]!r}"
                    break
                n = msg[1]
                (first,) = struct.unpack(">Q", msg[2:10])
                if expect is not None and first != expect:
                    out["gaps"] += 1
                expect = first + n
                out["messages"] += 1
                out["frames"] += n
            pinger.cancel()
            out["listened_s"] = round(time.monotonic() - t0, 3)
            c0 = time.monotonic()
            await ws.close(code=a.code, reason="done")
            out["close_s"] = round(time.monotonic() - c0, 3)
            rcvd = ws.protocol.close_rcvd
            out["close_code_received"] = rcvd.code if rcvd is not None else None
            out["close_code"] = ws.close_code
    except Exception as e:  # noqa: BLE001 - reported, the test decides
        out["error"] = f"{type(e).__name__}: {e}"
        out["listened_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps(out), flush=True)


async def count_pongs(ws, out, every):
    """Explicit pings on top of the keepalive, each awaited: every one must
    be answered (the keepalive's own pongs are not visible)."""
    while True:
        await asyncio.sleep(every)
        try:
            waiter = await ws.ping(b"amphi-%d" % out["pongs"])
            await asyncio.wait_for(waiter, timeout=5)
        except Exception as e:  # noqa: BLE001
            out["error"] = f"ping not answered: {type(e).__name__}: {e}"
            return
        out["pongs"] += 1


asyncio.run(main())
