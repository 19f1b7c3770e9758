#!/usr/bin/env bash
# Chaos run: a live, recorded space with a speaker and 200 listeners while
# faults are injected; prints what, if anything, was lost.
#   phase 1 (10 s): 20,000 garbage UDP datagrams at the WebRTC port and
#                   1,500 half-open TCP connections, listeners measured
#   phase 2: kill -9 of the node mid-space, restart
#   phase 3: SIGTERM (graceful), restart, end the space
# Usage: bench/chaos.sh
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
export AMPHI_OFFER_RATE_PER_IP=${AMPHI_OFFER_RATE_PER_IP:-100000} AMPHI_OFFER_RATE=${AMPHI_OFFER_RATE:-100000} AMPHI_MAX_RTC_SESSIONS=${AMPHI_MAX_RTC_SESSIONS:-5000}
cd "$(dirname "$0")/.."
BIN=${AMPHI_BIN:-target/release/amphi}
[ -x "$BIN" ] || cargo build --release --bin amphi
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PORT=18500
ADMIN=chaos
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${NODE:-}" ] && kill "$NODE" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
start() {
  AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn "$BIN" serve --http 127.0.0.1:$PORT --data-dir "$TMP/data" 2>>"$TMP/amphi.log" &
  NODE=$!
  for _ in $(seq 100); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.05; done
}
start
T0=$(date +%s.%N)
C=$(curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d '{"title":"chaos"}')
ID=$(echo "$C" | python3 -c 'import json,sys; print(json.load(sys.stdin)["space"]["id"])')
HOST=$(echo "$C" | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["token"])')
curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces/$ID/start -H "Authorization: Bearer $HOST" >/dev/null
speak() { python3 scripts/whip_client.py --url http://127.0.0.1:$PORT/api/v1/spaces/$ID/whip --token "$HOST" --freq 440 --seconds "$1" --loopback-only 2>>"$TMP/whip.log" & PIDS+=($!); }
speak 14
sleep 2

echo "== phase 1: UDP garbage + 1,500 half-open connections while 200 listeners listen" >&2
"$BIN" load --server 127.0.0.1:$PORT --space "$ID" -n 200 --output ws --duration 10 --warmup 1 --json > "$TMP/phase1.json" &
LOAD=$!
python3 - "$PORT" <<'PY' &
import os, socket, sys, time
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20000):
    u.sendto(os.urandom(1 + i % 300), ("127.0.0.1", port))
held = []
for i in range(1500):
    s = socket.create_connection(("127.0.0.1", port)); s.send(b"GET /spa"); held.append(s)
worst = 0
for _ in range(30):
    t = time.time(); c = socket.create_connection(("127.0.0.1", port)); c.send(b"GET /healthz HTTP/1.1\r\n\r\n"); c.recv(100); c.close()
    worst = max(worst, time.time() - t); time.sleep(0.2)
print(f"healthz worst {worst*1000:.0f} ms under attack", file=sys.stderr)
PY
wait $LOAD
python3 -c "import json; r=json.load(open('$TMP/phase1.json')); print(f\"phase 1 listeners: admitted {r['admitted']}, seq gaps {r['ws_seq_gaps']}, stalls >300 ms {r['stalls_over_300ms']}, worst gap {r['max_gap_ms_max']} ms, below 90% real time {r['below_90pct_realtime']}\")"

echo "== phase 2: kill -9 mid-speech, restart" >&2
speak 6
sleep 4
kill -9 $NODE; wait $NODE 2>/dev/null || true
KILLED=$(date +%s.%N)
start
echo "node back after $(python3 -c "print(f'{$(date +%s.%N) - $KILLED:.2f}')") s"
speak 5
sleep 6

echo "== phase 3: SIGTERM, restart, end" >&2
kill -TERM $NODE; wait $NODE 2>/dev/null || true
start
curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces/$ID/end -H "Authorization: Bearer $HOST" >/dev/null
T1=$(date +%s.%N)
sleep 1.5
curl -fs -o "$TMP/rec.opus" http://127.0.0.1:$PORT/spaces/$ID/recording.opus
ffmpeg -v error -i "$TMP/rec.opus" -f f32le -ac 1 -ar 48000 - > "$TMP/rec.f32"
python3 - "$TMP/rec.f32" "$T0" "$T1" <<'PY'
import math, struct, sys
data = open(sys.argv[1], "rb").read()
n = len(data) // 4
pcm = struct.unpack(f"<{n}f", data[: n * 4])
wall = float(sys.argv[3]) - float(sys.argv[2])
def share(b, f=440.0):
    w = 2 * math.pi * f / 48000; c = 2 * math.cos(w); s1 = s2 = 0.0
    for x in b: s1, s2 = x + c * s1 - s2, s1
    p = s1 * s1 + s2 * s2 - c * s1 * s2; e = sum(x * x for x in b)
    return 0 if e < 1e-6 else min(1, 2 * p / (len(b) * e))
tone = sum(1 for i in range(0, n - 4800, 4800) if share(pcm[i:i + 4800]) > 0.5) * 0.1
print(f"recording: {n / 48000:.1f} s long for {wall:.1f} s of wall time; {tone:.1f} s of the speaker's tone")
print("published: ~12 s before the kill -9 phase, ~4 s before the kill, ~5 s after the restart")
PY
