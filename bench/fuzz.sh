#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (libFuzzer + AddressSanitizer) for a
# given time each and prints executions, coverage and crashes per target.
# Works on the stable toolchain through RUSTC_BOOTSTRAP (cargo-fuzz needs
# -Zsanitizer); installs cargo-fuzz if missing.
#
# Usage: bench/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)
cargo fuzz build -O >/dev/null 2>&1 || cargo fuzz build -O
mkdir -p ../target/fuzz-logs
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log=../target/fuzz-logs/$t.log
  # Fuzz into a scratch corpus so the committed seeds stay small.
  work=$(mktemp -d)
  status=ok
  cargo fuzz run -O "$t" "$work" "corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 >"$log" 2>&1 || status=CRASH
  rm -rf "$work"
  runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
  printf '%-18s %-6s runs=%-12s cov=%-6s ft=%-6s secs=%s\n' "$t" "$status" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$SECS"
done
