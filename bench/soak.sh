#!/usr/bin/env bash
# Soak: one live space for a long time under a steady mixed load, sampling
# the node's RSS, descriptors and CPU; shows both flat after warm-up.
#   - a speaker (aiortc tone, WHIP), for the whole run
#   - 3,000 listeners (amphi load, half live.opus, half live.ws)
#   - 300 events clients, 10 of them replaced every second (leave + join)
#   - joins, hands raised and lowered, reactions: a few a second
# Every SAMPLE seconds one line: elapsed s, RSS KiB, fds, threads, CPU %.
# At the end: RSS and fds after warm-up (min, max, first and last quarter)
# and the verdict. The live HLS keeps the whole space as its DVR window (up
# to 2 h, about 8 KB a segment), so RSS grows that much by design.
# Usage: bench/soak.sh [minutes, default 30]
#   AMPHI_BIN   binary to run (default target/release/amphi, built if missing)
#   LISTENERS / EVENTS / WARMUP_S / SAMPLE / PORT  override the defaults
#   SOAK_LOG    where the samples go (default bench/last-soak.log)
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
export AMPHI_OFFER_RATE_PER_IP=${AMPHI_OFFER_RATE_PER_IP:-100000} AMPHI_OFFER_RATE=${AMPHI_OFFER_RATE:-100000} AMPHI_MAX_RTC_SESSIONS=${AMPHI_MAX_RTC_SESSIONS:-5000}
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
DUR=$((MINUTES * 60))
LISTENERS=${LISTENERS:-3000}
EVENTS=${EVENTS:-300}
WARMUP_S=${WARMUP_S:-120}
SAMPLE=${SAMPLE:-10}
PORT=${PORT:-18700}
LOG=${SOAK_LOG:-bench/last-soak.log}
BIN=${AMPHI_BIN:-target/release/amphi}
[ -x "$BIN" ] || cargo build --release --bin amphi
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
ADMIN=soak
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${NODE:-}" ] && kill "$NODE" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn "$BIN" serve --http 127.0.0.1:$PORT --data-dir "$TMP/data" \
  --command-rate 100 2>>"$TMP/amphi.log" &
NODE=$!
for _ in $(seq 200); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.05; done
C=$(curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces -H "Authorization: Bearer $ADMIN" \
  -H 'Content-Type: application/json' -d '{"title":"soak"}')
ID=$(echo "$C" | python3 -c 'import json,sys; print(json.load(sys.stdin)["space"]["id"])')
HOST=$(echo "$C" | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["token"])')
curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces/$ID/start -H "Authorization: Bearer $HOST" >/dev/null

python3 scripts/whip_client.py --url http://127.0.0.1:$PORT/api/v1/spaces/$ID/whip --token "$HOST" \
  --freq 440 --seconds $((DUR + 30)) --loopback-only 2>>"$TMP/whip.log" &
PIDS+=($!)
sleep 3
"$BIN" load --server 127.0.0.1:$PORT --space "$ID" -n "$LISTENERS" --output mixed --ramp 20 \
  --duration "$DUR" --warmup 1 --json >"$TMP/load.json" 2>>"$TMP/load.log" &
LOAD=$!
PIDS+=($LOAD)

# Events clients with churn, joins, hands and reactions.
python3 - "$PORT" "$ID" "$EVENTS" "$DUR" <<'PY' 2>>"$TMP/clients.log" &
import asyncio, json, random, sys, time, urllib.request
import websockets
port, space, n, dur = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = f"http://127.0.0.1:{port}/api/v1/spaces/{space}"
def post(path, token=None, body=None, method="POST"):
    req = urllib.request.Request(base + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    except Exception:
        return None
def join(name):
    r = post("/join", body={"name": name})
    return r["token"] if r else None
async def client(i, life):
    # One participant's visit: join, follow the events, maybe a hand and
    # a reaction, lower the hand, leave; the room's state stays steady.
    loop = asyncio.get_running_loop()
    token = await loop.run_in_executor(None, join, f"soak {i}")
    if token is None:
        await asyncio.sleep(1)
        return
    url = f"ws://127.0.0.1:{port}/api/v1/spaces/{space}/events"
    try:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            if i % 5 == 0:
                await loop.run_in_executor(None, post, "/hand", token)
            end = time.time() + life
            reacted = False
            while time.time() < end:
                try:
                    await asyncio.wait_for(ws.recv(), timeout=max(0.1, end - time.time()))
                except asyncio.TimeoutError:
                    pass
                if not reacted and i % 3 == 0:
                    reacted = True
                    await loop.run_in_executor(None, post, "/reactions", token, {"emoji": "\U0001F44F"})
            if i % 5 == 0:
                await loop.run_in_executor(None, lambda: post("/hand", token, None, "DELETE"))
    except Exception:
        pass
async def main():
    stop = time.time() + dur
    tasks = set()
    i = 0
    while time.time() < stop:
        # Keep n clients; each lives ~n/10 s, so ~10 leave and join a second.
        while len(tasks) < n:
            i += 1
            t = asyncio.create_task(client(i, random.uniform(0.5, 1.5) * n / 10))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    for t in list(tasks):
        t.cancel()
asyncio.run(main())
PY
PIDS+=($!)

echo "# soak: ${MINUTES} min, ${LISTENERS} listeners, ${EVENTS} events clients (churn ~10/s), binary $BIN" | tee "$LOG"
echo "# elapsed_s rss_kib fds threads cpu_pct" | tee -a "$LOG"
HZ=$(getconf CLK_TCK)
START=$(date +%s)
prev_ticks=0
prev_t=$START
while :; do
  now=$(date +%s)
  el=$((now - START))
  [ "$el" -gt "$DUR" ] && break
  kill -0 "$NODE" 2>/dev/null || { echo "node died" | tee -a "$LOG"; exit 1; }
  rss=$(awk '/VmRSS/ {print $2}' /proc/$NODE/status)
  fds=$(ls /proc/$NODE/fd | wc -l)
  thr=$(awk '/Threads/ {print $2}' /proc/$NODE/status)
  ticks=$(awk '{print $14 + $15}' /proc/$NODE/stat)
  cpu=0
  [ "$now" -gt "$prev_t" ] && cpu=$(( (ticks - prev_ticks) * 100 / HZ / (now - prev_t) ))
  prev_ticks=$ticks
  prev_t=$now
  echo "$el $rss $fds $thr $cpu" | tee -a "$LOG"
  sleep "$SAMPLE"
done

# The load generator reports once its run is over.
for _ in $(seq 120); do kill -0 "$LOAD" 2>/dev/null || break; sleep 1; done
python3 - "$LOG" "$WARMUP_S" "$TMP/load.json" <<'PY' | tee -a "$LOG"
import json, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l[0].isdigit()]
warm = [r for r in rows if r[0] >= int(sys.argv[2])]
if not warm:
    sys.exit("no samples after the warm-up")
rss = [r[1] for r in warm]
fds = [r[2] for r in warm]
first, last = warm[0], warm[-1]
q = max(1, len(warm) // 4)
early, late = sum(rss[:q]) / q, sum(rss[-q:]) / q
minutes = max(1e-9, (last[0] - first[0]) / 60)
print(f"after warm-up ({len(warm)} samples over {minutes:.1f} min): RSS min {min(rss)} max {max(rss)} KiB; "
      f"first quarter mean {early:.0f}, last quarter mean {late:.0f} KiB ({100 * (late - early) / early:+.1f} %, "
      f"{(last[1] - first[1]) / minutes:+.0f} KiB/min); fds min {min(fds)} max {max(fds)} first {first[2]} last {last[2]}")
try:
    r = json.load(open(sys.argv[3]))
    print(f"listeners: admitted {r.get('admitted')}, seq gaps {r.get('ws_seq_gaps')}, stalls >300 ms {r.get('stalls_over_300ms')}, below 90% real time {r.get('below_90pct_realtime')}")
except Exception as e:
    print(f"listeners: no report ({e})")
flat = abs(late - early) < 0.05 * early and (max(fds) - min(fds)) < 0.05 * max(fds) + 50
print("verdict:", "flat (RSS within 5 % quarter to quarter, fds within 5 %)" if flat else "NOT flat")
PY
