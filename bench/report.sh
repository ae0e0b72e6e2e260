#!/usr/bin/env bash
# Runs every Canopy benchmark binary in BUILD_DIR/bin and writes a report (BUILD_DIR/bench-report.md)
# with the raw results and the ratios against references measured in the same run.
# Usage: bench/report.sh [--smoke] [BUILD_DIR]   (--smoke: a few iterations each, for CI)
# Also runs bench/gpu_guest_bench.sh (a Linux guest under QEMU) unless CANOPY_BENCH_GUEST=0, and
# bench/cockpit_bench.sh (the cockpit demo end to end) unless CANOPY_BENCH_COCKPIT=0, and
# bench/snd_bench.sh (canopy-snd's latency, a soak, a Linux guest against QEMU's virtio-sound) unless
# CANOPY_BENCH_SND=0.
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
# script_bench NAME SCRIPT REPORT_MD: run a benchmark script (with --smoke when this run is), append
# the Markdown it writes to the report; on failure show its log's tail.
script_bench() {
  local name=$1 script=$2 md=$3 log="$BUILD/bench-$1.log"
  local -a sargs=()
  [ $SMOKE -eq 1 ] && sargs+=(--smoke)
  echo "bench: $name"
  if bash "$(dirname "$0")/$script" "${sargs[@]}" "$BUILD" >"$log" 2>&1; then
    cat "$md" >>"$REPORT"
  else
    tail -n 40 "$log"
    echo "bench: $name failed (log: $log)" >&2
    rc=1
  fi
}
# The Linux guest's view: page flips and cursor round trips against canopy-gpu and QEMU's own GPUs
# (boots QEMU four times: ~30 s with --smoke, a few minutes in full). CANOPY_BENCH_GUEST=0 skips it.
if [ "${CANOPY_BENCH_GUEST:-1}" = 1 ]; then
  script_bench gpu-guest gpu_guest_bench.sh "$BUILD/bench-gpu-guest.md"
fi
# 3D: kmscube through Mesa's virgl driver against canopy-gpu --renderer=virgl (and QEMU's own virgl devices
# where a DRM render node lets them run): ~20 s with --smoke. CANOPY_BENCH_VIRGL=0 skips it.
if [ "${CANOPY_BENCH_VIRGL:-1}" = 1 ]; then
  script_bench virgl virgl_bench.sh "$BUILD/bench-virgl.md"
fi
# The cockpit demo end to end: latency from guest present to output present, and the cluster's frame
# rate with the IVI flooding (two demo runs: ~10 s with --smoke, ~45 s in full). CANOPY_BENCH_COCKPIT=0
# skips it.
if [ "${CANOPY_BENCH_COCKPIT:-1}" = 1 ]; then
  script_bench cockpit cockpit_bench.sh "$BUILD/bench-cockpit.md"
  grep -E '^\| (normal|ivi-flood) ' "$BUILD/bench-cockpit.md" 2>/dev/null || true
fi
# canopy-snd: guest write -> heard latency for 2.5 / 5 / 10 ms periods, a soak, and a Linux guest's aplay
# against canopy-snd and QEMU's built-in virtio-sound (~40 s with --smoke, a few minutes in full).
# CANOPY_BENCH_SND=0 skips it.
if [ "${CANOPY_BENCH_SND:-1}" = 1 ]; then
  script_bench snd snd_bench.sh "$BUILD/bench-snd.md"
fi
# canopy-vmm's KVM backend beside QEMU -M microvm under nested KVM (~1 min with --smoke).
# CANOPY_BENCH_KVM=0 skips it.
if [ "${CANOPY_BENCH_KVM:-1}" = 1 ]; then
  script_bench kvm kvm_bench.sh "$BUILD/bench-kvm.md"
fi
echo "bench: report written to $REPORT"
grep -h '^ratio ' "$REPORT" || true
exit $rc
