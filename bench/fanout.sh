#!/usr/bin/env bash
# Fan-out at the kernel's floor: amphi, a bare send loop and Icecast 2.4,
# each serving N listeners of a 32 kbit/s Opus program in 100 ms pages,
# measured with `amphi load` in the same run on this machine.
#
# Usage: bench/fanout.sh [LISTENERS] [SECONDS]
# Prints one JSON line per server and a summary table.
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-2000}
SECS=${2:-15}
BIN=${AMPHI_BIN:-target/release/amphi}
BARE=${BARE_BIN:-target/release/examples/bare_fanout}
[ -x "$BIN" ] || cargo build --release --bin amphi
[ -x "$BARE" ] || cargo build --release -p amphi-load --example bare_fanout
TMP=$(mktemp -d)
chmod 755 "$TMP"
ulimit -n "$(ulimit -Hn)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ADMIN=bench-admin
PORT=18080

AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn "$BIN" serve --http 127.0.0.1:$PORT --data-dir "$TMP/amphi" 2>"$TMP/amphi.log" &
PIDS+=($!); AMPHI_PID=$!
for _ in $(seq 50); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
CREATE=$(curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d '{"title":"bench","record":false}')
ID=$(echo "$CREATE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["space"]["id"])')
HOST=$(echo "$CREATE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["token"])')
curl -fs -X POST http://127.0.0.1:$PORT/api/v1/spaces/$ID/start -H "Authorization: Bearer $HOST" >/dev/null
python3 scripts/whip_client.py --url http://127.0.0.1:$PORT/api/v1/spaces/$ID/whip --token "$HOST" --freq 440 --seconds $((SECS * 4 + 60)) --loopback-only 2>"$TMP/whip.log" &
PIDS+=($!)
sleep 3

echo "== amphi ($N listeners, live.opus, 100 ms pages)" >&2
"$BIN" load --server 127.0.0.1:$PORT --space "$ID" -n "$N" --duration "$SECS" --warmup 3 --pid $AMPHI_PID --json | tee "$TMP/amphi.json"
PAGE=$(curl -s --max-time 1 http://127.0.0.1:$PORT/spaces/$ID/live.opus | wc -c || true)

"$BARE" 127.0.0.1:18090 400 2>/dev/null &
PIDS+=($!); BARE_PID=$!
sleep 0.5
echo "== bare send loop ($N listeners)" >&2
"$BIN" load --server 127.0.0.1:18090 --space bare --path /bare.opus -n "$N" --duration "$SECS" --warmup 3 --pid $BARE_PID --json | tee "$TMP/bare.json"

if command -v icecast2 >/dev/null && command -v ffmpeg >/dev/null; then
  start_icecast 18100
  echo "== icecast 2.4 ($N listeners)" >&2
  "$BIN" load --server 127.0.0.1:18100 --space ice --path /amphi.opus -n "$N" --duration "$SECS" --warmup 3 --pid $ICE_PID --json | tee "$TMP/ice.json" || true
fi

python3 - "$TMP" <<'PY'
import json, os, sys
d = sys.argv[1]
print(f"\n{'server':10} {'admitted':>9} {'<90% rt':>8} {'fb p99 ms':>10} {'gap max':>8} {'cpu us/l-s':>11} {'cores':>6} {'rss MB':>7}")
for name in ["amphi", "bare", "ice"]:
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        continue
    r = json.loads(open(p).read().strip().splitlines()[0])
    f = lambda v, fmt: (fmt.format(v) if v is not None else "-")
    print(f"{name:10} {r['admitted']:>9} {r['below_90pct_realtime']:>8} {r['first_byte_ms_p99']:>10.1f} {r['max_gap_ms_max']:>8} "
          f"{f(r['server_cpu_us_per_listener_sec'], '{:.1f}'):>11} {f(r['server_cpu_cores'], '{:.2f}'):>6} {f(r['server_rss_mb'], '{:.1f}'):>7}")
PY
