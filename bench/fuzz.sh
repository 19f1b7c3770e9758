#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (libFuzzer + AddressSanitizer, with
# overflow checks and debug assertions on) for a given time each and prints
# executions, executions per second, coverage and crashes per target.
# Works on the stable toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# -Zsanitizer); installs cargo-fuzz if missing.
#
# Usage: bench/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_JOBS=N        targets run N at a time (default 1; the machine has 2 cores)
#   FUZZ_KEEP_GOING=1  libFuzzer fork mode: record a crash and keep fuzzing
#                      (to measure a target past a known bug)
# Logs: target/fuzz-logs/<target>.log; crashes: fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
shift || true
JOBS=${FUZZ_JOBS:-1}
EXTRA=()
[ "${FUZZ_KEEP_GOING:-0}" = 1 ] && EXTRA=(-fork=1 -ignore_crashes=1)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)
# -O: optimised; -a: keep overflow checks and debug assertions, so integer
# overflow on hostile input is a crash here, as it is in a debug build.
cargo fuzz build -O -a >/dev/null 2>&1 || cargo fuzz build -O -a
logs=../target/fuzz-logs
mkdir -p "$logs"

run_one() {
  local t=$1 log=$logs/$1.log work
  mkdir -p "corpus/$t"
  # Fuzz into a scratch corpus so the committed seeds stay small.
  work=$(mktemp -d)
  if cargo fuzz run -O -a "$t" "$work" "corpus/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 ${EXTRA[@]+"${EXTRA[@]}"} >"$log" 2>&1; then
    echo ok >"$log.status"
  else
    echo CRASH >"$log.status"
  fi
  rm -rf "$work"
}

running=0
for t in "${TARGETS[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

printf '%-18s %-6s %14s %10s %7s %7s\n' target result executions exec/s cov ft
for t in "${TARGETS[@]}"; do
  log=$logs/$t.log
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  if [ -z "$runs" ]; then # fork mode: last "#N: ... exec/s N" line
    runs=$(grep -oE '^#[0-9]+:' "$log" | tail -1 | tr -d '#:' || true)
    rate=$(( ${runs:-0} / SECS ))
  fi
  crashes=$(grep -oE 'oom/timeout/crash: [0-9/]+' "$log" | tail -1 || true)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  printf '%-18s %-6s %14s %10s %7s %7s\n' "$t" "$(cat "$log.status")" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}"
  if [ "$(cat "$log.status")" = CRASH ]; then
    { grep -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)|Test unit written to' "$log" || true; } | head -4 | sed 's/^/    /'
  fi
  if [ -n "$crashes" ]; then
    echo "    fork mode, $crashes"
    { grep -E 'panicked at' "$log" || true; } | sort | uniq -c | head -4 | sed 's/^/    /'
  fi
done
