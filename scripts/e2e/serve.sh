# Sourced by the scripts/e2e-* checks that drive third-party clients: starts
# `amphi serve` ($AMPHI_BIN, default target/debug/amphi) on a free loopback
# port with a fresh data directory and a random admin token, waits for
# /healthz, and stops it (by PID) on exit. Sets BASE, ADMIN, OUT, TMP and
# SERVER; the server's log is $OUT/$1-server.log.
NAME=$1
BIN=${AMPHI_BIN:-target/debug/amphi}
if [ ! -x "$BIN" ]; then
  echo "$NAME: no server binary at $BIN (build it: cargo build --bin amphi, or set AMPHI_BIN)" >&2
  exit 2
fi
[ -x /usr/bin/chromium ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
if [ ! -f scripts/e2e/node_modules/hls.js/package.json ] || [ ! -f scripts/e2e/node_modules/playwright-core/package.json ]; then
  echo "== installing playwright-core and hls.js (no browser download)"
  (cd scripts/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

OUT=target/e2e
mkdir -p "$OUT"
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADMIN=e2e-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
BASE="http://127.0.0.1:$PORT"
LOG="$OUT/$NAME-server.log"

AMPHI_ADMIN_TOKEN=$ADMIN "$BIN" serve --http 127.0.0.1:"$PORT" --data-dir "$TMP/data" >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

up=0
for _ in $(seq 100); do
  if curl -fs "$BASE/healthz" >/dev/null; then up=1; break; fi
  kill -0 "$SERVER" 2>/dev/null || break
  sleep 0.1
done
if [ "$up" != 1 ]; then
  echo "$NAME: the server did not come up on 127.0.0.1:$PORT; its log:" >&2
  tail -n 30 "$LOG" >&2
  exit 1
fi
export BASE ADMIN OUT
