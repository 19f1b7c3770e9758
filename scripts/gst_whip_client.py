#!/usr/bin/python3
"""A WHIP publisher built on GStreamer's webrtcbin (Debian's packages).

webrtcbin up to GStreamer 1.22 (Debian 12's) makes its DTLS certificate
with OpenSSL as RSA-2048 and signs its CertificateVerify with
RSASSA-PKCS1-v1_5: the peer amphi's tests otherwise lack. Publishes a sine
tone (audiotestsrc → opusenc → rtpopuspay) to a WHIP endpoint (RFC 9725):
POSTs the complete offer with a bearer token, applies the 201 answer,
streams for the given time, then DELETEs the session resource. Prints the
peer connection's states and the DTLS certificate's key type on stderr.

Exit codes: 0 done, 2 the server refused (status and body printed),
3 the connection never came up, 4 GStreamer error, 5 --require-rsa and the
certificate is not RSA.
"""
import argparse
import base64
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="WHIP endpoint URL")
    p.add_argument("--token", required=True, help="bearer token")
    p.add_argument("--freq", type=float, default=440.0, help="tone frequency in Hz")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to publish")
    p.add_argument("--require-rsa", action="store_true", help="exit 5 unless our DTLS certificate is RSA")
    p.add_argument("--verbose", action="store_true", help="print the offer and the answer")
    p.add_argument("--connect-timeout", type=float, default=15.0, help="seconds to wait for 'connected'")
    return p.parse_args()


args = parse_args()
Gst.init(None)
log = lambda *a: print("gst-whip:", *a, file=sys.stderr, flush=True)  # noqa: E731

pipeline = Gst.parse_launch(
    f"audiotestsrc is-live=true wave=sine freq={args.freq} volume=0.5 ! audioconvert ! audioresample "
    "! audio/x-raw,rate=48000,channels=1 ! opusenc frame-size=20 ! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 "
    "! webrtcbin name=w bundle-policy=max-bundle"
)
webrtc = pipeline.get_by_name("w")
loop = GLib.MainLoop()
state = {"exit": 0, "location": None, "connected_at": None, "started": time.monotonic()}


def finish(code):
    state["exit"] = code
    loop.quit()


def post_offer():
    local = webrtc.get_property("local-description")
    if local is None:
        log("no local description to send")
        return finish(4)
    sdp = local.sdp.as_text()
    if args.verbose:
        log("offer:\n" + sdp)
    req = urllib.request.Request(
        args.url,
        data=sdp.encode(),
        method="POST",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {args.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            answer = res.read().decode()
            loc = res.headers.get("Location")
            state["location"] = urllib.parse.urljoin(args.url, loc) if loc else None
    except urllib.error.HTTPError as e:
        log(f"WHIP refused: {e.code} {e.read().decode(errors='replace')}")
        return finish(2)
    except OSError as e:
        log(f"WHIP POST failed: {e}")
        return finish(2)
    if args.verbose:
        log("answer:\n" + answer)
    _, msg = GstSdp.SDPMessage.new_from_text(answer)
    desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
    webrtc.emit("set-remote-description", desc, None)
    log("answer applied")


def on_gathering(element, _pspec):
    if element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE and state.get("offered") and not state.get("posted"):
        state["posted"] = True
        GLib.idle_add(lambda: post_offer() and False)


def on_offer_created(promise, _element, _data):
    promise.wait()
    reply = promise.get_reply()
    offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
    if offer is None:
        log(f"no offer: {reply.to_string() if reply is not None else 'no reply'}")
        return GLib.idle_add(lambda: finish(4) and False)
    webrtc.emit("set-local-description", offer, None)
    state["offered"] = True
    # Non-trickle WHIP: wait for every candidate (or give up after 3 s).
    GLib.timeout_add(3000, lambda: on_gathering_timeout() and False)
    on_gathering(webrtc, None)


def on_gathering_timeout():
    if not state.get("posted"):
        state["posted"] = True
        post_offer()


def on_negotiation_needed(element):
    promise = Gst.Promise.new_with_change_func(on_offer_created, element, None)
    element.emit("create-offer", None, promise)


def on_connection_state(element, _pspec):
    s = element.get_property("connection-state")
    log(f"connection state {s.value_nick}")
    if s == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and state["connected_at"] is None:
        state["connected_at"] = time.monotonic()
        log(f"connected after {state['connected_at'] - state['started']:.2f} s")
        kind = certificate_kind()
        log(f"DTLS certificate: {kind}")
        if args.require_rsa and kind != "RSA":
            return finish(5)
        GLib.timeout_add(int(args.seconds * 1000), lambda: finish(0) and False)
    elif s == GstWebRTC.WebRTCPeerConnectionState.FAILED:
        finish(3)


def certificate_kind():
    """The key type of our DTLS certificate: "RSA" when its DER names
    rsaEncryption (1.2.840.113549.1.1.1), "EC" for id-ecPublicKey."""
    transceiver = webrtc.emit("get-transceiver", 0)
    transport = transceiver.get_property("sender").get_property("transport")
    pem = transport.get_property("certificate") or ""
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    der = base64.b64decode(body) if body else b""
    if bytes.fromhex("2a864886f70d010101") in der:
        return "RSA"
    if bytes.fromhex("2a8648ce3d0201") in der:
        return "EC"
    return "unknown"


def on_bus(_bus, message):
    if message.type == Gst.MessageType.ERROR:
        err, dbg = message.parse_error()
        log(f"error: {err} {dbg}")
        finish(4)
    return True


def connect_timeout():
    if state["connected_at"] is None:
        log("never connected")
        finish(3)


webrtc.connect("on-negotiation-needed", on_negotiation_needed)
webrtc.connect("notify::ice-gathering-state", on_gathering)
webrtc.connect("notify::connection-state", on_connection_state)
bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message", on_bus)
GLib.timeout_add(int(args.connect_timeout * 1000), lambda: connect_timeout() and False)
# The transceiver (made when rtpopuspay was linked) carries audio out only.
for i in range(8):
    t = webrtc.emit("get-transceiver", i)
    if t is None:
        break
    t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
pipeline.set_state(Gst.State.PLAYING)
loop.run()
pipeline.set_state(Gst.State.NULL)
if state["location"]:
    try:
        urllib.request.urlopen(
            urllib.request.Request(state["location"], method="DELETE", headers={"Authorization": f"Bearer {args.token}"}),
            timeout=5,
        ).read()
    except Exception as e:  # the session may be gone already
        log(f"DELETE: {e}")
sys.exit(state["exit"])
