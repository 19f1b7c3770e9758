#!/usr/bin/env python3
"""A WHIP publisher built on aiortc, an independent WebRTC implementation.

Publishes a sine tone as Opus to a WHIP endpoint (RFC 9725): POSTs the
complete (non-trickle) offer with a bearer token, applies the 201 answer,
streams for the given time, then DELETEs the session resource.

Exit codes: 0 done, 2 the server refused (status and body printed),
3 the connection never came up.

With --reconnect the client rides through the death of the node that
mixes the space (its origin): every 250 ms it GETs its WHIP resource
through the node it was given (any node forwards it to the space's owner);
a 404 (the session is gone: another node took the space over) or a 503
(the owner does not answer) makes it close the peer connection and POST a
new offer to the same endpoint, with backoff (250 ms doubling to 2 s),
until the space ends or --seconds have passed. Each reconnection is
printed as `reconnected after S s` (from the first failed check).
"""
import argparse
import asyncio
import fractions
import math
import re
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
    p.add_argument("--hiss", type=float, default=0.0, help="add hiss (white noise through a one-pole low-pass) of this peak amplitude, 0..1")
    p.add_argument("--right-freq", type=float, help="send stereo: --freq on the left channel, this tone on the right")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to publish")
    p.add_argument("--loopback-only", action="store_true", help="offer only 127.0.0.1 candidates")
    p.add_argument("--ice-from-link", action="store_true", help="ask OPTIONS on the WHIP URL for ICE servers (Link rel=ice-server, RFC 9725) and gather with them (TURN over TCP included)")
    p.add_argument("--ice-url-prefix", default="", help="with --ice-from-link, keep only the ICE servers whose URL starts with this (e.g. turns:)")
    p.add_argument("--require-relay", action="store_true", help="exit 4 unless the selected candidate pair is relayed through TURN")
    p.add_argument("--reconnect", action="store_true", help="when the WHIP session is gone (origin died), POST a new offer with backoff until --seconds have passed")
    p.add_argument("--return-out", help="offer sendrecv and write the audio the server returns (the other speakers) to this file as mono s16le 48 kHz")
    p.add_argument("--schedule", help="when the tone sounds, as START-END seconds after --epoch, comma-separated (e.g. 0-8,10-12); silence (zeros, still sent) otherwise")
    p.add_argument("--epoch", type=float, help="UNIX time the --schedule counts from (default: the first frame sent)")
    p.add_argument("--speech", help="instead of the tone, this raw mono s16le 48 kHz file (e.g. espeak-ng's voice through sox), once, then silence (still sent)")
    p.add_argument("--speech-at", type=float, default=0.0, help="when --speech starts, in seconds after --epoch (default: the first frame sent)")
    p.add_argument("--honor-fmtp", action="store_true", help="encode as the answer's Opus fmtp asks (stereo=0: mono; maxaveragebitrate), as browsers do; aiortc alone always sends 96 kbit/s stereo")
    return p.parse_args()


args = parse_args()

if args.loopback_only:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

import av  # noqa: E402
from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

RATE = 48000
SAMPLES = 960


# What the answer's Opus fmtp asked for (filled in before the encoder is
# made, with --honor-fmtp).
FMTP = {}


def honor_fmtp():
    from aiortc.codecs import opus as aiortc_opus

    original = aiortc_opus.OpusEncoder.__init__

    def init(self):
        original(self)
        if not FMTP:
            return
        layout = "mono" if FMTP.get("stereo") == "0" else "stereo"
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = int(FMTP.get("maxaveragebitrate", 96000))
        self.codec.format = "s16"
        self.codec.layout = layout
        self.codec.options = {"application": "voip"}
        self.codec.sample_rate = RATE
        self.codec.time_base = fractions.Fraction(1, RATE)
        self.resampler = av.AudioResampler(format="s16", layout=layout, rate=RATE, frame_size=SAMPLES)

    aiortc_opus.OpusEncoder.__init__ = init


def parse_fmtp(sdp):
    pts = re.findall(r"a=rtpmap:(\d+) opus/48000", sdp, re.I)
    for pt in pts:
        m = re.search(r"a=fmtp:" + pt + r" ([^\r\n]*)", sdp)
        if m:
            return dict(kv.split("=", 1) for kv in m.group(1).split(";") if "=" in kv)
    return {}


def schedule(text):
    spans = []
    for part in (text or "").split(","):
        if part.strip():
            a, b = part.split("-")
            spans.append((float(a), float(b)))
    return spans


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, freq, amplitude):
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.n = 0
        self.hiss_state = 0.0
        self.start = None
        self.spans = schedule(args.schedule)
        self.speech = None
        if args.speech:
            self.speech = np.fromfile(args.speech, dtype="<i2")
            self.speech_from = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        target = self.start + self.n / RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.speech is not None:
            if self.speech_from is None:
                lead = (time.time() - args.epoch) if args.epoch else 0.0
                self.speech_from = int(round((args.speech_at - lead) * RATE))
            at = self.n - self.speech_from
            pcm = np.zeros(SAMPLES, dtype=np.int16)
            lo, hi = max(at, 0), min(at + SAMPLES, len(self.speech))
            if hi > lo:
                pcm[lo - at:hi - at] = self.speech[lo:hi]
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self.n
            frame.time_base = fractions.Fraction(1, RATE)
            self.n += SAMPLES
            return frame
        t = (np.arange(SAMPLES) + self.n) / RATE
        amplitude = self.amplitude
        if self.spans:
            since = time.time() - args.epoch if args.epoch else self.n / RATE
            amplitude = amplitude if any(a <= since < b for a, b in self.spans) else 0.0
        wave = amplitude * np.sin(2 * math.pi * self.freq * t)
        if args.hiss > 0:
            white = np.random.default_rng(self.n).uniform(-1.0, 1.0, SAMPLES)
            hiss = np.empty(SAMPLES)
            y = self.hiss_state
            for i in range(SAMPLES):
                y = 0.9 * y + 0.1 * white[i]
                hiss[i] = y
            self.hiss_state = y
            wave = wave + args.hiss * 4.0 * hiss
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        if args.right_freq:
            right = (amplitude * 32767 * np.sin(2 * math.pi * args.right_freq * t)).astype(np.int16)
            stereo = np.empty(2 * SAMPLES, dtype=np.int16)
            stereo[0::2], stereo[1::2] = pcm, right
            frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
        else:
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
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def split_links(value):
    """Splits one Link header value at commas outside <...> and quotes."""
    parts, cur, in_url, in_quote = [], "", False, False
    for ch in value:
        if ch == "<" and not in_quote:
            in_url = True
        elif ch == ">" and not in_quote:
            in_url = False
        elif ch == '"' and not in_url:
            in_quote = not in_quote
        if ch == "," and not in_url and not in_quote:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def ice_servers_from_links(values):
    """RTCIceServer entries from Link headers with rel="ice-server"."""
    servers = []
    for value in values:
        for part in split_links(value):
            m = re.search(r"<([^>]*)>", part)
            if not m:
                continue
            params = {}
            for p in part[part.index(">") + 1 :].split(";"):
                kv = re.match(r'^\s*([A-Za-z-]+)\s*=\s*"?([^"]*)"?\s*$', p)
                if kv:
                    params[kv.group(1).lower()] = kv.group(2)
            if params.get("rel") != "ice-server":
                continue
            servers.append(
                RTCIceServer(urls=m.group(1), username=params.get("username"), credential=params.get("credential"))
            )
    return servers


async def selected_pair(pc):
    """(local candidate type, remote address) of the ICE pair in use."""
    try:
        for t in pc.getTransceivers():
            conn = t.sender.transport.transport._connection  # aioice's, no public accessor
            pair = conn._nominated.get(1)
            if pair is not None:
                return pair.local_candidate.type, f"{pair.remote_candidate.host}:{pair.remote_candidate.port}"
    except AttributeError:
        pass
    return None, None


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


async def publish_once(servers, deadline_conn=10):
    """POSTs one offer; returns (pc, location, recorders) or an exit code."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers)) if servers else RTCPeerConnection()
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
    if args.honor_fmtp:
        FMTP.update(parse_fmtp(body))
        print(f"answer fmtp: {FMTP}", file=sys.stderr, flush=True)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    deadline = time.monotonic() + deadline_conn
    while pc.connectionState != "connected":
        if time.monotonic() > deadline or pc.connectionState == "failed":
            print(f"connection did not come up: {pc.connectionState}", file=sys.stderr)
            await pc.close()
            return 3
        await asyncio.sleep(0.05)
    kind, remote = await selected_pair(pc)
    print(f"connected: local candidate {kind} -> {remote}", file=sys.stderr, flush=True)
    if args.require_relay and kind != "relay":
        print(f"the selected pair is not relayed ({kind})", file=sys.stderr)
        await pc.close()
        return 4
    return pc, location, recorders


def space_ended():
    """Whether the space has ended (asked of the node the client was given)."""
    space_url = args.url.rsplit("/whip", 1)[0]
    status, _, body = http("GET", space_url)
    return status == 200 and '"state":"ended"' in body.replace(" ", "")


async def main():
    servers = []
    if args.ice_from_link:
        status, headers, body = await asyncio.to_thread(http, "OPTIONS", args.url)
        servers = ice_servers_from_links(headers.get_all("Link") or [])
        servers = [s for s in servers if s.urls.startswith(args.ice_url_prefix)]
        print(f"OPTIONS {status}: {len(servers)} ICE server(s): {[s.urls for s in servers]}", file=sys.stderr)
        if not servers:
            print("no ICE servers in the OPTIONS answer", file=sys.stderr)
            return 2
    r = await publish_once(servers)
    if isinstance(r, int):
        return r
    pc, location, recorders = r
    end = time.monotonic() + args.seconds
    if not args.reconnect:
        await asyncio.sleep(args.seconds)
    while args.reconnect and time.monotonic() < end:
        await asyncio.sleep(0.25)
        status, _, _ = await asyncio.to_thread(http, "GET", location)
        if status not in (404, 503):
            continue
        lost_at = time.monotonic()
        print(f"WHIP session gone ({status}); reconnecting", file=sys.stderr, flush=True)
        await pc.close()
        for rec in recorders:
            rec.cancel()
        backoff = 0.25
        while time.monotonic() < end:
            if await asyncio.to_thread(space_ended):
                print("the space ended", file=sys.stderr, flush=True)
                return 0
            r = await publish_once(servers, deadline_conn=5)
            if not isinstance(r, int):
                pc, location, recorders = r
                print(f"reconnected after {time.monotonic() - lost_at:.2f} s", file=sys.stderr, flush=True)
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        else:
            return 3
    await asyncio.to_thread(http, "DELETE", location)
    await pc.close()
    for rec in recorders:
        rec.cancel()
    return 0


if args.honor_fmtp:
    honor_fmtp()
sys.exit(asyncio.run(main()))
