#!/usr/bin/env bash
# Many small spaces on one node: each space has one speaker talking in
# bursts (a real WebRTC client, str0m, sending a libopus tone: 2–6 s of
# talk, 1–4 s of pause) and LISTENERS listeners on live.opus; then
# OVERLAP_SPACES spaces where two speakers overlap half the time. All made
# and measured by `amphi load --speakers` against a fresh release node per
# row; the node's CPU and RSS are read from /proc.
#
# Usage: bench/spaces.sh [COUNTS] [SECONDS]
#   COUNTS   space counts to try, one fresh node each (default "1000")
#   SECONDS  measured seconds per run (default 30)
# Env: LISTENERS (5), OVERLAP_SPACES (100; 0 skips), RECORD (0: spaces are
# created with recording off), AMPHI_BIN (target/release/amphi),
# LABEL (a name for the code under test, printed in the table), NICE (0:
# the node and the load generator run at this niceness; on a shared machine
# -10 keeps other work from starving the node's one mixer thread),
# SERVE_ARGS (more `amphi serve` flags, e.g. "--ogg-page-ms 200").
# Prints one JSON line per run (the per-space lines dropped) and a table.
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
export AMPHI_OFFER_RATE_PER_IP=${AMPHI_OFFER_RATE_PER_IP:-100000} AMPHI_OFFER_RATE=${AMPHI_OFFER_RATE:-100000} AMPHI_MAX_RTC_SESSIONS=${AMPHI_MAX_RTC_SESSIONS:-5000}
cd "$(dirname "$0")/.."
COUNTS=${1:-1000}
SECS=${2:-30}
LISTENERS=${LISTENERS:-5}
OVERLAP_SPACES=${OVERLAP_SPACES:-100}
RECORD=${RECORD:-0}
NICE=${NICE:-0}
LABEL=${LABEL:-$(git rev-parse --short HEAD 2>/dev/null || echo amphi)}
BIN=${AMPHI_BIN:-target/release/amphi}
[ -x "$BIN" ] || cargo build --release --bin amphi
TMP=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ADMIN=bench-admin-token
PORT=18280
RECARGS=()
[ "$RECORD" = 1 ] || RECARGS=(--no-record)

# run NAME SPEAKERS SPACES TALK: one fresh node, one `amphi load` run.
run() {
  local name=$1 speakers=$2 spaces=$3 talk=$4
  # Spaces come up over RAMP s (20 per second), then 5 s of warm-up.
  local ramp=$(( spaces / 20 + 1 ))
  AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn nice -n "$NICE" "$BIN" serve --http 127.0.0.1:$PORT \
    --data-dir "$TMP/$name" ${SERVE_ARGS:-} 2>"$TMP/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  echo "== $name: $spaces spaces, $speakers speakers ($talk), $LISTENERS listeners each, ramp ${ramp}s, ${SECS}s measured" >&2
  nice -n "$NICE" "$BIN" load --server 127.0.0.1:$PORT --admin-token "$ADMIN" \
    --speakers "$speakers" --spaces "$spaces" --talk "$talk" \
    --listeners-per-space "$LISTENERS" --sources 64 "${RECARGS[@]}" \
    --ramp "$ramp" --warmup 5 --duration $(( SECS + 5 )) --pid "$pid" --json \
    | head -1 | python3 -c 'import json,sys; r=json.load(sys.stdin); r.pop("per_space"); print(json.dumps(r))' \
    | tee "$TMP/$name.json"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sleep 2
}

ROWS=()
for n in $COUNTS; do
  run "bursts-$n" "$n" "$n" bursts
  ROWS+=("bursts-$n")
done
if [ "$OVERLAP_SPACES" -gt 0 ]; then
  run "overlap-$OVERLAP_SPACES" $(( OVERLAP_SPACES * 2 )) "$OVERLAP_SPACES" overlap
  ROWS+=("overlap-$OVERLAP_SPACES")
fi

python3 - "$TMP" "$LABEL" "${ROWS[@]}" <<'PY'
import json, os, sys
d, label, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
mode = lambda k: k.split('mode=')[1].strip('}').strip('"')
print(f"\n{'code':10} {'run':14} {'live':>5} {'spk ok':>7} {'lst':>6} {'<90%':>5} {'rt min':>7} {'tone':>6} {'cores':>6} {'%/space':>8} {'us/tick':>8} {'prog rt':>8} {'us/frame':>9} {'KB/space':>9}  modes")
for name in rows:
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        print(f"{label:10} {name:14} (no result)")
        continue
    r = json.loads(open(p).read())
    f = lambda v, fmt: (fmt.format(v) if v is not None else "-")
    print(f"{label:10} {name:14} {r['spaces_live']:>5} {r['speakers_connected']:>7} {r['listeners_admitted']:>6} {r['below_90pct_realtime']:>5} "
          f"{r['realtime_ratio_min']:>7.3f} {str(r['probed_tone_ok'])+'/'+str(r['probed_spaces']):>6} {f(r['server_cpu_cores'],'{:.2f}'):>6} "
          f"{f(r['server_cpu_pct_per_space'],'{:.3f}'):>8} {f(r['server_cpu_us_per_space_tick'],'{:.1f}'):>8} "
          f"{f(r.get('program_frames_ratio'),'{:.3f}'):>8} {f(r.get('server_cpu_us_per_space_frame'),'{:.1f}'):>9} {f(r['server_rss_kb_per_space'],'{:.0f}'):>9}  "
          + " ".join(mode(k) + f"={v:.0f}" for k, v in r.get('server_counters', {}).items() if 'mode=' in k))
PY
