#!/usr/bin/env python3
"""A webhook receiver for the tests: verifies Standard Webhooks signatures
with Python's own hmac (an implementation independent of amphi's) and
appends one JSON line per request to --out.

    webhook_receiver.py --port P --secret whsec_... --out FILE [--delay S]

--delay makes every answer wait (a slow receiver). Answers 204 when the
signature verifies, 401 when it does not."""

import argparse
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--secret", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--delay", type=float, default=0.0)
args = ap.parse_args()

key = base64.b64decode(args.secret.removeprefix("whsec_"))
lock = threading.Lock()


def verify(msg_id, ts, body, header):
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    ok = False
    for sig in header.split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, want):
            ok = True
    fresh = abs(time.time() - int(ts)) < 300
    return ok and fresh


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        started = time.time()
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        msg_id = self.headers.get("webhook-id", "")
        ts = self.headers.get("webhook-timestamp", "0")
        ok = verify(msg_id, ts, body, self.headers.get("webhook-signature", ""))
        try:
            event = json.loads(body)
            kind, data = event.get("type"), event.get("data")
        except ValueError:
            kind, data = None, None
        if args.delay:
            time.sleep(args.delay)
        with lock, open(args.out, "a") as f:
            f.write(json.dumps({"id": msg_id, "type": kind, "verified": ok,
                                "received_at": started, "data": data}) + "\n")
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *a):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
