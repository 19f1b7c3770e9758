#!/usr/bin/env bash
# Join storm, overload shedding and WebSocket latency against one amphi
# node with a speaker publishing, each measured with `amphi load`.
#
# Usage: bench/scenarios.sh [storm|overload|latency|all]
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
export AMPHI_OFFER_RATE_PER_IP=${AMPHI_OFFER_RATE_PER_IP:-100000} AMPHI_OFFER_RATE=${AMPHI_OFFER_RATE:-100000} AMPHI_MAX_RTC_SESSIONS=${AMPHI_MAX_RTC_SESSIONS:-5000}
cd "$(dirname "$0")/.."
WHAT=${1:-all}
BIN=${AMPHI_BIN:-target/release/amphi}
[ -x "$BIN" ] || cargo build --release --bin amphi
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ADMIN=bench-admin

start_node() { # port, extra args...
  local port=$1; shift
  AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn "$BIN" serve --http 127.0.0.1:$port --data-dir "$TMP/d$port" "$@" 2>>"$TMP/amphi.log" &
  PIDS+=($!); NODE_PID=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
  local c; c=$(curl -fs -X POST http://127.0.0.1:$port/api/v1/spaces -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d '{"title":"bench","record":false}')
  SPACE=$(echo "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["space"]["id"])')
  local host; host=$(echo "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["token"])')
  curl -fs -X POST http://127.0.0.1:$port/api/v1/spaces/$SPACE/start -H "Authorization: Bearer $host" >/dev/null
  python3 scripts/whip_client.py --url http://127.0.0.1:$port/api/v1/spaces/$SPACE/whip --token "$host" --freq 440 --seconds 600 --loopback-only 2>>"$TMP/whip.log" &
  PIDS+=($!)
  sleep 3
}

if [ "$WHAT" = storm ] || [ "$WHAT" = all ]; then
  start_node 18200
  echo "== join storm: 1 early listener, then 10,000 arriving within 1 s" >&2
  "$BIN" load --server 127.0.0.1:18200 --space "$SPACE" -n 1 --duration 14 --warmup 2 --json > "$TMP/early.json" &
  EARLY=$!
  sleep 2
  "$BIN" load --server 127.0.0.1:18200 --space "$SPACE" -n 10000 --ramp 1 --duration 8 --warmup 1 --pid "$NODE_PID" --json
  wait $EARLY
  echo "early listener:" >&2; cat "$TMP/early.json"
fi

if [ "$WHAT" = overload ] || [ "$WHAT" = all ]; then
  start_node 18300 --max-listeners 4001
  echo "== overload: --max-listeners 4001, 1 early listener, 6,000 arriving" >&2
  "$BIN" load --server 127.0.0.1:18300 --space "$SPACE" -n 1 --duration 14 --warmup 2 --json > "$TMP/early2.json" &
  EARLY=$!
  sleep 2
  "$BIN" load --server 127.0.0.1:18300 --space "$SPACE" -n 6000 --ramp 1 --duration 8 --warmup 1 --pid "$NODE_PID" --json
  wait $EARLY
  echo "early listener:" >&2; cat "$TMP/early2.json"
fi

if [ "$WHAT" = latency ] || [ "$WHAT" = all ]; then
  start_node 18400
  echo "== latency: 10,000 WebSocket listeners, capture → receive" >&2
  "$BIN" load --server 127.0.0.1:18400 --space "$SPACE" -n "${WS_LISTENERS:-10000}" --output ws --ramp 2 --duration 10 --warmup 2 --pid "$NODE_PID" --json
fi
