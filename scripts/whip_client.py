#!/usr/bin/env python3
"""A WHIP publisher built on aiortc, an independent WebRTC implementation.

Publishes a sine tone as Opus to a WHIP endpoint (RFC 9725): POSTs the
complete (non-trickle) offer with a bearer token, applies the 201 answer,
streams for the given time, then DELETEs the session resource.

Exit codes: 0 done, 2 the server refused (status and body printed),
3 the connection never came up.
"""
import argparse
import asyncio
import fractions
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="WHIP endpoint URL")
    p.add_argument("--token", required=True, help="bearer token")
    p.add_argument("--freq", type=float, default=440.0, help="tone frequency in Hz")
    p.add_argument("--amplitude", type=float, default=0.5, help="0..1")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to publish")
    p.add_argument("--loopback-only", action="store_true", help="offer only 127.0.0.1 candidates")
    p.add_argument("--return-out", help="offer sendrecv and write the audio the server returns (the other speakers) to this file as mono s16le 48 kHz")
    return p.parse_args()


args = parse_args()

if args.loopback_only:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

import av  # noqa: E402
from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

RATE = 48000
SAMPLES = 960


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, freq, amplitude):
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.n = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        target = self.start + self.n / RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(SAMPLES) + self.n) / RATE
        pcm = (self.amplitude * 32767 * np.sin(2 * math.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.n
        frame.time_base = fractions.Fraction(1, RATE)
        self.n += SAMPLES
        return frame


def http(method, url, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", "Bearer " + args.token)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def record_return(track, path):
    with open(path, "wb") as out:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            pcm = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if pcm.shape[0] == 1 and channels > 1:
                pcm = pcm.reshape(-1, channels).mean(axis=1)
            out.write(pcm.astype(np.int16).tobytes())
            out.flush()


async def main():
    pc = RTCPeerConnection()
    direction = "sendrecv" if args.return_out else "sendonly"
    pc.addTransceiver(ToneTrack(args.freq, args.amplitude), direction=direction)
    recorders = []
    if args.return_out:
        pc.on("track", lambda track: recorders.append(asyncio.ensure_future(record_return(track, args.return_out))))
    await pc.setLocalDescription(await pc.createOffer())
    while pc.iceGatheringState != "complete":
        await asyncio.sleep(0.05)
    status, headers, body = await asyncio.to_thread(
        http, "POST", args.url, pc.localDescription.sdp.encode(), "application/sdp"
    )
    if status != 201:
        print(f"WHIP refused: {status} {body}", file=sys.stderr)
        await pc.close()
        return 2
    location = urllib.parse.urljoin(args.url, headers.get("Location") or headers.get("location"))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    deadline = time.monotonic() + 10
    while pc.connectionState != "connected":
        if time.monotonic() > deadline or pc.connectionState == "failed":
            print(f"connection did not come up: {pc.connectionState}", file=sys.stderr)
            await pc.close()
            return 3
        await asyncio.sleep(0.05)
    await asyncio.sleep(args.seconds)
    await asyncio.to_thread(http, "DELETE", location)
    await pc.close()
    for r in recorders:
        r.cancel()
    return 0


sys.exit(asyncio.run(main()))
