#!/usr/bin/env bash
# The cockpit demo as a benchmark: end-to-end frame latency (guest present -> output present) and the
# cluster's frame rate, with the IVI drawing normally and with the IVI flooding frames as fast as it
# can (an overloaded IVI must not cost the cluster frames or deadlines). Runs the real demo headless
# (demos/run-cockpit.sh: canopy-display, canopy-vmm, both partitions and their canopy-gpu back-ends).
# Usage: bench/cockpit_bench.sh [--smoke] [BUILD_DIR]   (--smoke: 3 s per scenario instead of 20 s)
# Environment: CANOPY_BENCH_RENDERER (default auto). Writes BUILD_DIR/bench-cockpit.md.
# Every figure in the table must have been measured: a summary line that is missing (a layer that never
# showed a frame, a summary format that changed) fails the benchmark instead of leaving a blank cell.
# There is no same-run reference for the latency yet (issue "CI that tells the truth", point 5: the cost
# of one output refresh with no VM); the report says so, and its figures are absolute.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS=20
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SECS=3; SMOKE=1; shift; fi
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
RENDERER="${CANOPY_BENCH_RENDERER:-auto}"
WORK="$(mktemp -d /tmp/canopy-cockpit-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# The overload manifest: the demo's, with the IVI app flooding (no frame pacing).
sed 's/^app = "canopy-ivi-app"$/app = "canopy-ivi-app"\nargs = ["--flood"]/' "$ROOT/demos/cockpit.toml" >"$WORK/flood.toml"
grep -q -- '--flood' "$WORK/flood.toml" || { echo "cockpit_bench: could not make the flood manifest" >&2; exit 1; }

# field SUMMARY LINE-PREFIX REGEX: the number REGEX's group captures on the first line with that prefix;
# exits the script (status 1) when there is none.
field() {
  local v
  v=$(grep -m1 -F -- "$2" "$1" | sed -nE "s/.*$3.*/\1/p") || true
  if [ -z "$v" ]; then
    echo "cockpit_bench: '$3' not found on the line '$2' of $1: not measured" >&2
    exit 1
  fi
  echo "$v"
}

run() {  # run NAME MANIFEST
  local out="$WORK/$1"
  CANOPY_DEMO_SECONDS=$SECS CANOPY_DEMO_OUTPUT=headless CANOPY_DEMO_RENDERER="$RENDERER" CANOPY_DEMO_MANIFEST="$2" \
    bash "$ROOT/demos/run-cockpit.sh" "$BUILD" "$out" >"$WORK/$1.log" 2>&1 || {
    tail -n 30 "$WORK/$1.log" >&2
    echo "cockpit_bench: the demo failed in scenario $1" >&2
    exit 1
  }
  local s="$out/summary.txt" fps new p50 p99 missed ivi center
  [ -s "$s" ] || { echo "cockpit_bench: the demo wrote no summary in scenario $1" >&2; exit 1; }
  # Each field on its own line: a field that is missing ends the script (set -e on the assignment).
  fps=$(field "$s" "output cluster" ": ([0-9.]+) fps")
  new=$(field "$s" "  layer cluster/0" ": ([0-9.]+) new fps")
  p50=$(field "$s" "  layer cluster/0" "p50 ([0-9.]+) ms")
  p99=$(field "$s" "  layer cluster/0" "p99 ([0-9.]+) ms")
  missed=$(field "$s" "output cluster" "missed deadlines ([0-9]+)")
  ivi=$(field "$s" "vm ivi:" "frames ([0-9]+)")
  center=$(field "$s" "output center" "missed deadlines ([0-9]+)")
  # A cluster that showed no new frame has no latency to report: that is a failed run, not a figure.
  awk -v n="$new" 'BEGIN { exit !(n > 0) }' || { echo "cockpit_bench: scenario $1: the cluster showed no new frame" >&2; exit 1; }
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$fps" "$new" "$p50" "$p99" "$missed" "$ivi" "$center"
  cp "$s" "$WORK/$1.summary"
}

{
  echo "## cockpit demo (bench/cockpit_bench.sh)"
  echo
  echo "- $SECS s per scenario, headless, renderer $RENDERER, $(nproc) cpus; latency: guest present (its flush"
  echo "  reaching canopy-gpu) -> the output's present, per cluster frame shown"
  echo "- reference: none measured in this run yet (to come: the cost of one output refresh with no VM);"
  echo "  the figures are absolute, not ratios"
  if [ $SMOKE -eq 1 ]; then
    echo "- smoke: $SECS s per scenario, cold: these figures say that the demo ran, they are not a measurement"
  fi
  echo
  echo "| scenario | cluster output fps | cluster new fps | cluster latency p50 ms | p99 ms | cluster missed deadlines | IVI frames sent | center missed deadlines |"
  echo "|---|---|---|---|---|---|---|---|"
  run normal "$ROOT/demos/cockpit.toml"
  run ivi-flood "$WORK/flood.toml"
  echo
  for n in normal ivi-flood; do
    echo "### $n: summary"
    echo
    echo '```'
    cat "$WORK/$n.summary"
    echo '```'
    echo
  done
} >"$BUILD/bench-cockpit.md"
cat "$BUILD/bench-cockpit.md"
