#!/usr/bin/env bash
# A three-node cluster on three routed nats-servers (JetStream R3; each node
# on its own server): the space is mixed on A
# (origin) and heard through edges B and C. Measures what the capacity
# model (docs/SCALING.md) needs: NATS egress per edge with 1 and with N
# listeners per edge, each node's CPU per listener-second, and the latency
# of a WebSocket listener on the origin vs on an edge.
#
# Usage: bench/cluster.sh [LISTENERS_PER_EDGE] [SECONDS]   (default 5000 15)
#
#        bench/cluster.sh repair [TRIALS]   (default 20)
# The repair figures (docs/SCALING.md, "Repair"): three nats-servers in a
# cluster (JetStream R3), a speaker (aiortc, --reconnect) publishing through
# one node, a live.ws listener on another, and per trial a fresh origin
# node killed -9 under a live space; prints each origin kill → tone heard
# again time and min/p50/p95/max (tests/cluster.rs,
# an_origins_death_heals_itself_and_listeners_ride_through, with
# AMPHI_HEAL_TRIALS).
#
#        bench/cluster.sh partition [TRIALS] [SECONDS]   (default 20 30)
# The partition figures (docs/SCALING.md, "Partition"): one node in a
# network namespace whose link to the three nats-servers is cut (nft drop)
# for SECONDS per trial, then healed; prints per trial when the cut-off
# origin fenced itself, when another node took the space over and how long
# after the heal the node's view converged, then the double-ownership count
# over every 200 ms sample (target 0) (tests/partition.rs; needs root).
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
export AMPHI_OFFER_RATE_PER_IP=${AMPHI_OFFER_RATE_PER_IP:-100000} AMPHI_OFFER_RATE=${AMPHI_OFFER_RATE:-100000} AMPHI_MAX_RTC_SESSIONS=${AMPHI_MAX_RTC_SESSIONS:-5000}
cd "$(dirname "$0")/.."
if [ "${1:-}" = partition ]; then
  AMPHI_PARTITION_TRIALS=${2:-20} AMPHI_PARTITION_SECS=${3:-30} cargo nextest run --profile bench --test partition --no-capture \
    -E 'test(a_partitioned_origin_fences_itself_and_rejoins_as_an_edge)' 2>&1 |
    grep -E '^(trial|partition|double)|SKIPPED|PASS|FAIL|panicked|left:|right:|Summary'
  exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = repair ]; then
  AMPHI_HEAL_TRIALS=${2:-20} cargo nextest run --profile bench --test cluster --no-capture \
    -E 'test(an_origins_death_heals_itself_and_listeners_ride_through)' 2>&1 |
    grep -E '^(trial|origin kill|reconnected)|PASS|FAIL'
  exit "${PIPESTATUS[0]}"
fi
N=${1:-5000}
SECS=${2:-15}
BIN=${AMPHI_BIN:-target/release/amphi}
[ -x "$BIN" ] || cargo build --release --bin amphi
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ADMIN=bench-admin
# Three nats-servers routed into one cluster: client ports 18422-18424,
# monitoring 18822-18824, routes 18622-18624.
for i in 0 1 2; do
  routes=$(for j in 0 1 2; do [ $j = $i ] || printf 'nats://127.0.0.1:%s,' $((18622 + j)); done)
  "$NATS" -a 127.0.0.1 -p $((18422 + i)) -m $((18822 + i)) -n "s$i" --cluster_name amphi \
    --cluster "nats://127.0.0.1:$((18622 + i))" --routes "${routes%,}" \
    -js -sd "$TMP/js$i" >"$TMP/nats$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$((18822 + i))/healthz" >/dev/null && break; sleep 0.1; done
done
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:18822/jsz | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("meta_cluster",{}).get("leader") else 1)' && break
  sleep 0.2
done
urls() { local first=$1; for k in 0 1 2; do printf 'nats://127.0.0.1:%s' $((18422 + (first + k) % 3)); [ $k = 2 ] || printf ,; done; }

declare -A PID
k=0
for n in a:18501 b:18502 c:18503; do
  name=${n%%:*}; port=${n##*:}
  AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn "$BIN" serve --http 127.0.0.1:$port --data-dir "$TMP/$name" \
    --nats "$(urls $k)" --node-id "$name" 2>>"$TMP/amphi.log" &
  k=$((k + 1))
  PIDS+=($!); PID[$name]=$!
done
for port in 18501 18502 18503; do
  for _ in $(seq 100); do curl -fs http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
done
c=$(curl -fs -X POST http://127.0.0.1:18501/api/v1/spaces -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d '{"title":"bench","record":false}')
SPACE=$(echo "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["space"]["id"])')
HOST=$(echo "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["token"])')
curl -fs -X POST "http://127.0.0.1:18501/api/v1/spaces/$SPACE/start" -H "Authorization: Bearer $HOST" >/dev/null
python3 scripts/whip_client.py --url "http://127.0.0.1:18501/api/v1/spaces/$SPACE/whip" --token "$HOST" \
  --freq 440 --seconds 600 --loopback-only 2>>"$TMP/whip.log" &
PIDS+=($!)
sleep 3

# Bytes the servers sent to their clients (the nodes), routes between the
# servers not counted.
nats_out() {
  local t=0 b i
  for i in 0 1 2; do
    b=$(curl -fs "http://127.0.0.1:$((18822 + i))/connz?limit=1024" |
      python3 -c 'import json,sys; print(sum(c["out_bytes"] for c in json.load(sys.stdin).get("connections") or []))')
    t=$((t + b))
  done
  echo "$t"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rate() { # seconds → NATS egress bytes/s over that window (wall-clock timed)
  local b0 b1 t0 t1; t0=$(date +%s%N); b0=$(nats_out); sleep "$1"; b1=$(nats_out); t1=$(date +%s%N)
  echo $(( (b1 - b0) * 1000000000 / (t1 - t0) ))
}

echo "== 1 WebSocket listener on each edge; latency of 20 on the origin vs 20 on an edge" >&2
"$BIN" load --server 127.0.0.1:18502 --space "$SPACE" -n 1 --output ws --duration $((SECS + 40)) >/dev/null 2>&1 &
PIDS+=($!)
"$BIN" load --server 127.0.0.1:18503 --space "$SPACE" -n 1 --output ws --duration $((SECS + 40)) >/dev/null 2>&1 &
PIDS+=($!)
sleep 3
"$BIN" load --server 127.0.0.1:18501 --space "$SPACE" -n 20 --output ws --duration 8 --warmup 2 --json >"$TMP/a-ws-idle.json" 2>/dev/null &
L1=$!
"$BIN" load --server 127.0.0.1:18502 --space "$SPACE" -n 20 --output ws --duration 8 --warmup 2 --json >"$TMP/b-ws-idle.json" 2>/dev/null &
L2=$!
wait $L1 $L2 || true
ONE=$(rate 5)

echo "== $N listeners on each edge (Ogg), 1 WebSocket listener on the origin" >&2
TK=$(getconf CLK_TCK)
a0=$(cpu_ticks "${PID[a]}"); b0=$(cpu_ticks "${PID[b]}"); c0=$(cpu_ticks "${PID[c]}")
"$BIN" load --server 127.0.0.1:18502 --space "$SPACE" -n "$N" --ramp 2 --duration "$SECS" --warmup 2 --pid "${PID[b]}" --json >"$TMP/b.json" 2>/dev/null &
LB=$!
"$BIN" load --server 127.0.0.1:18503 --space "$SPACE" -n "$N" --ramp 2 --duration "$SECS" --warmup 2 --pid "${PID[c]}" --json >"$TMP/c.json" 2>/dev/null &
LC=$!
"$BIN" load --server 127.0.0.1:18501 --space "$SPACE" -n 20 --output ws --duration "$SECS" --warmup 2 --json >"$TMP/a-ws.json" 2>/dev/null &
LA=$!
"$BIN" load --server 127.0.0.1:18502 --space "$SPACE" -n 20 --output ws --duration "$SECS" --warmup 2 --json >"$TMP/b-ws.json" 2>/dev/null &
LW=$!
sleep 5
MANY=$(rate 5)
AUDIENCE=$(curl -fs "http://127.0.0.1:18501/api/v1/spaces/$SPACE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["listener_count"])')
wait $LB $LC $LA $LW || true
a1=$(cpu_ticks "${PID[a]}"); b1=$(cpu_ticks "${PID[b]}"); c1=$(cpu_ticks "${PID[c]}")
FRAMES=$(curl -fs "http://127.0.0.1:18502/metrics" | awk '$1=="amphi_bus_frames_received_total"{print $2}')

python3 - "$TMP" "$ONE" "$MANY" "$N" "$SECS" "$TK" "$a0" "$a1" "$b0" "$b1" "$c0" "$c1" "$AUDIENCE" "$FRAMES" <<'PY'
import json, sys
tmp, one, many, n, secs, tk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
a0, a1, b0, b1, c0, c1 = map(int, sys.argv[7:13])
audience, frames = sys.argv[13], sys.argv[14]
load = lambda f: json.load(open(f"{tmp}/{f}"))
b, c, a, bw = load("b.json"), load("c.json"), load("a-ws.json"), load("b-ws.json")
ai, bi = load("a-ws-idle.json"), load("b-ws-idle.json")
span = secs + 2
cpu = lambda t0, t1: (t1 - t0) / tk
print(f"NATS egress, 2 edges:          {one:>8} B/s with 1 listener each, {many:>8} B/s with {n} each (x{many/one:.2f})")
print(f"per edge:                      {one/2:>8.0f} B/s = {one*8/2/1000:.1f} kbit/s ({frames} frames received by B)")
print(f"audience on the origin's view: {audience} (expected {2*n + 42}, counted once a second)")
print(f"CPU over the run (s):          origin {cpu(a0,a1):.2f}, edge B {cpu(b0,b1):.2f}, edge C {cpu(c0,c1):.2f}")
keys = ("admitted", "refused", "first_byte_ms_p99", "realtime_ratio_p50", "max_gap_ms_max",
        "stalls_over_300ms", "server_cpu_us_per_listener_sec", "server_rss_delta_bytes_per_listener")
for name, r in (("edge B Ogg", b), ("edge C Ogg", c)):
    print(f"{name}: {json.dumps({k: r.get(k) for k in keys})}")
lat = ("latency_ms_p50", "latency_ms_p99", "ws_seq_gaps")
print(f"light load, 20 WebSocket listeners on the origin: {json.dumps({k: ai.get(k) for k in lat})}")
print(f"light load, 20 WebSocket listeners on edge B:     {json.dumps({k: bi.get(k) for k in lat})}")
print(f"under load, 20 WebSocket listeners on the origin: {json.dumps({k: a.get(k) for k in lat})}")
print(f"under load, 20 WebSocket listeners on edge B:     {json.dumps({k: bw.get(k) for k in lat})}")
PY
