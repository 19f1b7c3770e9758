#!/usr/bin/env bash
# Listeners over TLS: amphi serving TLS itself (the fan-out seals each page
# per listener) against amphi's own plaintext, Icecast 2.4 serving TLS, and
# nginx terminating TLS in front of plaintext amphi (what users do today),
# each with N listeners of live.opus (100 ms pages), measured with
# `amphi load` (over TLS where the server speaks it) in the same run.
#
# Usage: bench/tls.sh [LISTENERS] [SECONDS] [RAMP_SECONDS]
# Listeners arrive over RAMP_SECONDS (default 10: the "10,000 TLS listeners
# within 10 s" scenario); 0 makes it a storm, which amphi's handshake
# admission (--tls-handshake-rate, 4,000/s) sheds rather than queues.
# PEERS=0 runs amphi only (plaintext and TLS), for quick A/B runs; the
# node's flags can be given as AMPHI_* variables (e.g.
# AMPHI_TLS_HANDSHAKE_NICE=0).
set -euo pipefail
# A load generator joins from one address: lift the per-network join and
# per-space hand buckets (they are proven by tests/hand_flood.rs).
export AMPHI_JOIN_RATE_PER_IP=${AMPHI_JOIN_RATE_PER_IP:-100000} AMPHI_HAND_RATE_PER_SPACE=${AMPHI_HAND_RATE_PER_SPACE:-100000}
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-2000}
SECS=${2:-15}
RAMP=${3:-10}
BIN=${AMPHI_BIN:-target/release/amphi}
[ -x "$BIN" ] || cargo build --release --bin amphi
TMP=$(mktemp -d)
chmod 755 "$TMP"
ulimit -n "$(ulimit -Hn)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ADMIN=bench-admin

# A test CA and a leaf for localhost (P-256, as a CA would issue).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$TMP/key.pem" -out "$TMP/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$TMP/ext"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 2 -extfile "$TMP/ext" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/both.pem"
chmod 644 "$TMP"/*.pem

# start_amphi PORT NAME [extra flags...]: a node with a live space and a
# speaker; sets ID and the PID variable NAME_PID.
start_amphi() {
  local port=$1 name=$2; shift 2
  local scheme=http; [[ "$*" == *--tls-cert* ]] && scheme=https
  AMPHI_ADMIN_TOKEN=$ADMIN AMPHI_LOG=warn "$BIN" serve --http 127.0.0.1:$port --data-dir "$TMP/$name" "$@" 2>"$TMP/$name.log" &
  local pid=$!; PIDS+=($pid); eval "${name}_PID=$pid"
  for _ in $(seq 50); do curl -fs --cacert "$TMP/ca.pem" $scheme://localhost:$port/healthz >/dev/null && break; sleep 0.1; done
  local create
  create=$(curl -fs --cacert "$TMP/ca.pem" -X POST $scheme://localhost:$port/api/v1/spaces -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d '{"title":"bench","record":false}')
  ID=$(echo "$create" | python3 -c 'import json,sys; print(json.load(sys.stdin)["space"]["id"])')
  local host
  host=$(echo "$create" | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["token"])')
  curl -fs --cacert "$TMP/ca.pem" -X POST $scheme://localhost:$port/api/v1/spaces/$ID/start -H "Authorization: Bearer $host" >/dev/null
  SSL_CERT_FILE="$TMP/ca.pem" python3 scripts/whip_client.py --url $scheme://localhost:$port/api/v1/spaces/$ID/whip --token "$host" \
    --freq 440 --seconds $((SECS * 6 + 90)) --loopback-only 2>"$TMP/$name-whip.log" &
  PIDS+=($!)
  sleep 3
}

# early NAME PORT SPACE [load flags...]: one listener that is there before
# the crowd arrives and stays through the arrival and the measured window;
# its longest gap is the "early listener" figure (the crowd's own gaps are
# measured after the ramp and the warm-up only).
early() {
  local name=$1 port=$2 space=$3; shift 3
  "$BIN" load --server 127.0.0.1:$port --space "$space" -n 1 --duration "$(echo "$RAMP + $SECS + 4" | bc)" --warmup 1 "$@" \
    --json > "$TMP/$name-early.json" 2>/dev/null &
  EARLY_PID=$!
  sleep 2
}

start_amphi 18200 plain
PLAIN_ID=$ID
echo "== amphi plaintext ($N listeners)" >&2
early plain 18200 "$PLAIN_ID"
"$BIN" load --server 127.0.0.1:18200 --space "$PLAIN_ID" -n "$N" --ramp "$RAMP" --duration "$SECS" --warmup 3 --pid "$plain_PID" --json | tee "$TMP/plain.json"
wait "$EARLY_PID" || true

start_amphi 18201 tls --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
echo "== amphi TLS ($N listeners)" >&2
early tls 18201 "$ID" --tls-ca "$TMP/ca.pem"
"$BIN" load --server 127.0.0.1:18201 --space "$ID" -n "$N" --ramp "$RAMP" --duration "$SECS" --warmup 3 --pid "$tls_PID" \
  --tls-ca "$TMP/ca.pem" --json | tee "$TMP/tls.json"
wait "$EARLY_PID" || true
kill "$tls_PID" 2>/dev/null || true

PEERS=${PEERS:-1}
if [ "$PEERS" = 1 ] && command -v nginx >/dev/null; then
  mkdir -p "$TMP/nginx"
  cat > "$TMP/nginx/nginx.conf" <<NGX
worker_processes auto;
worker_rlimit_nofile 40000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 30000; }
http {
  access_log off;
  proxy_buffering off;
  server {
    # The same accept backlog as amphi's (capped by somaxconn): nginx's
    # default of 511 drops connections in a fast arrival.
    listen 127.0.0.1:18202 ssl backlog=65535;
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    location / { proxy_pass http://127.0.0.1:18200; proxy_http_version 1.1; proxy_read_timeout 1h; }
  }
}
NGX
  nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' 2>"$TMP/nginx.log" &
  PIDS+=($!)
  for _ in $(seq 30); do [ -s "$TMP/nginx/nginx.pid" ] && break; sleep 0.1; done
  sleep 0.5
  # The master and its workers (a worker's command line does not name
  # the configuration, so they are found as the master's children).
  NGINX_MASTER=$(cat "$TMP/nginx/nginx.pid")
  NGINX_PIDS=$( (echo "$NGINX_MASTER"; pgrep -P "$NGINX_MASTER") | tr '\n' ',' | sed 's/,$//')
  echo "nginx processes measured: $NGINX_PIDS" >&2
  echo "== nginx TLS in front of plaintext amphi ($N listeners; CPU of nginx + amphi)" >&2
  "$BIN" load --server 127.0.0.1:18202 --space "$PLAIN_ID" -n "$N" --ramp "$RAMP" --duration "$SECS" --warmup 3 \
    --pid "$plain_PID" --extra-pids "$NGINX_PIDS" --tls-ca "$TMP/ca.pem" --json | tee "$TMP/nginx.json" || true
fi

if [ "$PEERS" = 1 ] && command -v icecast2 >/dev/null && command -v ffmpeg >/dev/null; then
  start_icecast 18203 18204 "$TMP/both.pem"
  echo "== icecast 2.4 TLS ($N listeners)" >&2
  "$BIN" load --server 127.0.0.1:18204 --space ice --path /amphi.opus -n "$N" --ramp "$RAMP" --duration "$SECS" --warmup 3 --pid $ICE_PID \
    --tls-ca "$TMP/ca.pem" --json | tee "$TMP/ice.json" || true
fi

python3 - "$TMP" <<'PY'
import json, os, sys
d = sys.argv[1]
print(f"\n{'server':22} {'admitted':>9} {'<90% rt':>8} {'fb p99 ms':>10} {'gap max':>8} {'cpu us/l-s':>11} {'cores':>6} {'rss MB':>7} {'early gap':>9}")
rows = {}
def early(name):
    p = os.path.join(d, name + "-early.json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        return "-"
    r = json.loads(open(p).read().strip().splitlines()[0])
    return f"{r['max_gap_ms_max']}" if r["admitted"] == 1 else "refused"
for name, label in [("plain", "amphi plaintext"), ("tls", "amphi TLS"), ("nginx", "nginx TLS + amphi"), ("ice", "icecast TLS")]:
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        continue
    r = json.loads(open(p).read().strip().splitlines()[0])
    rows[name] = r
    f = lambda v, fmt: (fmt.format(v) if v is not None else "-")
    print(f"{label:22} {r['admitted']:>9} {r['below_90pct_realtime']:>8} {r['first_byte_ms_p99']:>10.1f} {r['max_gap_ms_max']:>8} "
          f"{f(r['server_cpu_us_per_listener_sec'], '{:.1f}'):>11} {f(r['server_cpu_cores'], '{:.2f}'):>6} {f(r['server_rss_mb'], '{:.1f}'):>7} {early(name):>9}")
if "plain" in rows and "tls" in rows:
    a, b = rows["plain"]["server_cpu_us_per_listener_sec"], rows["tls"]["server_cpu_us_per_listener_sec"]
    if a and b:
        print(f"\nTLS / plaintext CPU per listener-second: {b / a:.2f}x")
print("CPU per listener-second is server CPU over the measured window divided by the listeners")
print("actually served (admitted) and the seconds measured: a server that admitted fewer is")
print("compared per listener it served. 'early gap': one listener there before the arrival.")
for name in ["plain", "tls"]:
    p = os.path.join(d, name + "-early.json")
    if os.path.exists(p) and os.path.getsize(p) > 0:
        print(f"early listener ({name}):", open(p).read().strip().splitlines()[0])
PY
