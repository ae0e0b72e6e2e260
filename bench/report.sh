#!/usr/bin/env bash
# Runs every Canopy benchmark binary in BUILD_DIR/bin and writes a report (BUILD_DIR/bench-report.md)
# with the raw results and the ratios against references measured in the same run.
# Usage: bench/report.sh [--smoke] [BUILD_DIR]   (--smoke: a few iterations each, for CI)
# Also runs bench/gpu_guest_bench.sh (a Linux guest under QEMU) unless CANOPY_BENCH_GUEST=0, and
# bench/cockpit_bench.sh (the cockpit demo end to end) unless CANOPY_BENCH_COCKPIT=0.
set -euo pipefail
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
BUILD="${1:-build}"
REPORT="$BUILD/bench-report.md"
shopt -s nullglob
benches=("$BUILD"/bin/canopy_bench_*)
if [ ${#benches[@]} -eq 0 ]; then echo "bench: no benchmark binaries in $BUILD/bin" >&2; exit 1; fi
args=()
[ $SMOKE -eq 1 ] && args+=(--benchmark_min_time=0.01)
{
  echo "# Canopy benchmark report"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), host: $(uname -r), cpus: $(nproc), mode: $([ $SMOKE -eq 1 ] && echo smoke || echo full)"
  echo
} >"$REPORT"
rc=0
for b in "${benches[@]}"; do
  name=$(basename "$b")
  echo "bench: $name"
  out=$("$b" "${args[@]}" 2>&1) || { echo "$out"; echo "bench: $name failed" >&2; rc=1; continue; }
  echo "$out" | grep -E '^(BM_|ratio )' || true
  {
    echo "## $name"
    echo
    echo '```'
    echo "$out" | grep -vE '^\*\*\*WARNING' || true
    echo '```'
    echo
  } >>"$REPORT"
done
# The Linux guest's view: page flips and cursor round trips against canopy-gpu and QEMU's own GPUs
# (boots QEMU four times: ~30 s with --smoke, a few minutes in full). CANOPY_BENCH_GUEST=0 skips it.
if [ "${CANOPY_BENCH_GUEST:-1}" = 1 ]; then
  echo "bench: gpu_guest_bench"
  guest_args=()
  [ $SMOKE -eq 1 ] && guest_args+=(--smoke)
  if bash "$(dirname "$0")/gpu_guest_bench.sh" "${guest_args[@]}" "$BUILD" >"$BUILD/bench-gpu-guest.log" 2>&1; then
    cat "$BUILD/bench-gpu-guest.md" >>"$REPORT"
  else
    tail -n 40 "$BUILD/bench-gpu-guest.log"
    echo "bench: gpu_guest_bench failed (log: $BUILD/bench-gpu-guest.log)" >&2
    rc=1
  fi
fi
# The cockpit demo end to end: latency from guest present to output present, and the cluster's frame
# rate with the IVI flooding (two demo runs: ~10 s with --smoke, ~45 s in full). CANOPY_BENCH_COCKPIT=0
# skips it.
if [ "${CANOPY_BENCH_COCKPIT:-1}" = 1 ]; then
  echo "bench: cockpit_bench"
  cockpit_args=()
  [ $SMOKE -eq 1 ] && cockpit_args+=(--smoke)
  if bash "$(dirname "$0")/cockpit_bench.sh" "${cockpit_args[@]}" "$BUILD" >"$BUILD/bench-cockpit.log" 2>&1; then
    cat "$BUILD/bench-cockpit.md" >>"$REPORT"
    grep -E '^\| (normal|ivi-flood) ' "$BUILD/bench-cockpit.md" || true
  else
    tail -n 40 "$BUILD/bench-cockpit.log"
    echo "bench: cockpit_bench failed (log: $BUILD/bench-cockpit.log)" >&2
    rc=1
  fi
fi
echo "bench: report written to $REPORT"
grep -h '^ratio ' "$REPORT" || true
exit $rc
