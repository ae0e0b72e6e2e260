#!/usr/bin/env bash
# Runs every Canopy benchmark binary in BUILD_DIR/bin and writes a report (BUILD_DIR/bench-report.md)
# with the raw results and the ratios against references measured in the same run.
# Usage: bench/report.sh [--smoke] [--results FILE] [BUILD_DIR]
#   --smoke: a few iterations each, for CI. Its ratios come from single short runs: they say that the
#            benchmark and its reference ran, not how fast anything is, so the report prints them as
#            "smoke: not a measurement" instead of a number.
#   --results FILE: one line per benchmark, "pass NAME" or "fail NAME REASON" (scripts/test-results.py).
# Also runs bench/gpu_guest_bench.sh (a Linux guest under QEMU) unless CANOPY_BENCH_GUEST=0, and
# bench/cockpit_bench.sh (the cockpit demo end to end) unless CANOPY_BENCH_COCKPIT=0, and
# bench/snd_bench.sh (canopy-snd's latency, a soak, a Linux guest against QEMU's virtio-sound) unless
# CANOPY_BENCH_SND=0. A script turned off that way is recorded as a skip, never as a pass.
#
# Fails loudly (exit status 1, each reason printed and in FILE): a binary or script that fails; a ratio
# "not measured" (its benchmark or its reference did not run) or one that is nan / inf / empty; a run
# that reported an error (Google Benchmark's "ERROR OCCURRED"); a script whose report says a reference
# was unavailable. The one exception is documented hardware: bench/virgl_bench.sh's comparison with
# QEMU's virgl devices needs a DRM render node, and where there is none its ratios read
# "unavailable: no DRM render node ..." — shown as not a result, not a failure.
set -euo pipefail
SMOKE=0
RESULTS_FILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --results)
      [ $# -ge 2 ] || { echo "bench: --results needs a file" >&2; exit 2; }
      RESULTS_FILE=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "usage: bench/report.sh [--smoke] [--results FILE] [BUILD_DIR]" >&2; exit 2 ;;
    *) break ;;
  esac
done
BUILD="${1:-build}"
REPORT="$BUILD/bench-report.md"
if [ -n "$RESULTS_FILE" ]; then mkdir -p "$(dirname "$RESULTS_FILE")"; : >"$RESULTS_FILE"; fi
rc=0
FAILURES=()
# result pass|fail|skip NAME [REASON]: one line for the tally; a fail fails this run, a skip is listed
# (and fails the whole test run under CANOPY_NO_SKIP=1, through the tally).
result() {
  local st=$1 name=$2 reason=${3:-}
  [ -z "$RESULTS_FILE" ] || echo "$st $name${reason:+ $reason}" >>"$RESULTS_FILE"
  if [ "$st" != pass ]; then
    [ "$st" = skip ] || rc=1
    FAILURES+=("$st $name: $reason")
    echo "bench: $st $name: $reason" >&2
  fi
}
shopt -s nullglob
benches=("$BUILD"/bin/canopy_bench_*)
if [ ${#benches[@]} -eq 0 ]; then
  result fail binaries "no benchmark binaries in $BUILD/bin"
  exit 1
fi
args=()
[ $SMOKE -eq 1 ] && args+=(--benchmark_min_time=0.01)
{
  echo "# Canopy benchmark report"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), host: $(uname -r), cpus: $(nproc), mode: $([ $SMOKE -eq 1 ] && echo smoke || echo full)"
  if [ $SMOKE -eq 1 ]; then
    echo "- smoke: every benchmark ran a few short iterations, cold. The times below say that each benchmark"
    echo "  and its reference ran, nothing about speed; ratios read \"smoke: not a measurement\"."
  fi
  echo
} >"$REPORT"

# bad_ratios TEXT: the ratio lines of TEXT that are not a result (not measured, nan, inf, empty,
# unavailable), except the documented virgl render-node case. Prints them; status 0 when there are some.
bad_ratios() {
  grep -E '^ratio ' <<<"$1" |
    grep -vE '^ratio .*: unavailable: no DRM render node' |
    grep -iE 'not measured|unavailable|failed|= *$|= *(-?nan|-?inf|n/a|-)( |$)|: *$'
}
# smoke_ratios: in smoke mode, ratio lines with a number become "smoke: not a measurement".
smoke_ratios() {
  if [ $SMOKE -eq 1 ]; then
    sed -E 's/^(ratio [^=]*[^= ]) *= *[-+0-9.eE]+.*$/\1: smoke: not a measurement (one short cold run)/'
  else
    cat
  fi
}

for b in "${benches[@]}"; do
  name=$(basename "$b")
  echo "bench: $name"
  status=0
  out=$("$b" "${args[@]}" 2>&1) || status=$?
  out=$(smoke_ratios <<<"$out")
  {
    echo "## $name"
    echo
    echo '```'
    echo "$out" | grep -vE '^\*\*\*WARNING' || true
    echo '```'
    echo
  } >>"$REPORT"
  if [ $status -ne 0 ]; then
    echo "$out"
    result fail "$name" "exited with status $status"
    continue
  fi
  echo "$out" | grep -E '^(BM_|ratio )' || true
  if grep -q 'ERROR OCCURRED' <<<"$out"; then
    result fail "$name" "a benchmark reported an error: $(grep -m1 -o 'ERROR OCCURRED.*' <<<"$out")"
    continue
  fi
  if bad=$(bad_ratios "$out"); then
    result fail "$name" "ratio not computed: $(head -n1 <<<"$bad")$([ "$(wc -l <<<"$bad")" -gt 1 ] && echo " (and $(($(wc -l <<<"$bad") - 1)) more)")"
    continue
  fi
  result pass "$name"
done
# script_bench NAME SCRIPT REPORT_MD: run a benchmark script (with --smoke when this run is), append
# the Markdown it writes to the report; on failure show its log's tail. A report whose ratios were not
# computed fails, as does one that is missing.
script_bench() {
  local name=$1 script=$2 md=$3 log="$BUILD/bench-$1.log" status=0 bad
  local -a sargs=()
  [ $SMOKE -eq 1 ] && sargs+=(--smoke)
  echo "bench: $name"
  rm -f "$md"
  bash "$(dirname "$0")/$script" "${sargs[@]}" "$BUILD" >"$log" 2>&1 || status=$?
  if [ $status -ne 0 ]; then
    tail -n 40 "$log"
    if [ $status -eq 77 ]; then
      result skip "$name" "$script skipped: a tool it needs is missing (log: $log); a skipped benchmark is no result"
    else
      result fail "$name" "$script exited with status $status (log: $log)"
    fi
    [ ! -s "$md" ] || smoke_ratios <"$md" >>"$REPORT"
    return 0
  fi
  if [ ! -s "$md" ]; then
    result fail "$name" "$script passed but wrote no report $md (log: $log)"
    return 0
  fi
  smoke_ratios <"$md" >>"$REPORT"
  if bad=$(bad_ratios "$(cat "$md")"); then
    result fail "$name" "ratio not computed: $(head -n1 <<<"$bad")"
    return 0
  fi
  result pass "$name"
}
# not_run NAME VARIABLE: a script turned off by its environment variable: a skip, never a pass.
not_run() {
  echo -e "## $1\n\nnot run: $2=0\n" >>"$REPORT"
  result skip "$1" "turned off by $2=0"
}
# The Linux guest's view: page flips and cursor round trips against canopy-gpu and QEMU's own GPUs
# (boots QEMU four times: ~30 s with --smoke, a few minutes in full). CANOPY_BENCH_GUEST=0 skips it.
if [ "${CANOPY_BENCH_GUEST:-1}" = 1 ]; then
  script_bench gpu-guest gpu_guest_bench.sh "$BUILD/bench-gpu-guest.md"
else
  not_run gpu-guest CANOPY_BENCH_GUEST
fi
# 3D: kmscube through Mesa's virgl driver against canopy-gpu --renderer=virgl (and QEMU's own virgl devices
# where a DRM render node lets them run): ~20 s with --smoke. CANOPY_BENCH_VIRGL=0 skips it.
if [ "${CANOPY_BENCH_VIRGL:-1}" = 1 ]; then
  script_bench virgl virgl_bench.sh "$BUILD/bench-virgl.md"
else
  not_run virgl CANOPY_BENCH_VIRGL
fi
# The cockpit demo end to end: latency from guest present to output present, and the cluster's frame
# rate with the IVI flooding (two demo runs: ~10 s with --smoke, ~45 s in full). CANOPY_BENCH_COCKPIT=0
# skips it.
if [ "${CANOPY_BENCH_COCKPIT:-1}" = 1 ]; then
  script_bench cockpit cockpit_bench.sh "$BUILD/bench-cockpit.md"
  grep -E '^\| (normal|ivi-flood) ' "$BUILD/bench-cockpit.md" 2>/dev/null || true
else
  not_run cockpit CANOPY_BENCH_COCKPIT
fi
# canopy-snd: guest write -> heard latency for 2.5 / 5 / 10 ms periods, a soak, and a Linux guest's aplay
# against canopy-snd and QEMU's built-in virtio-sound (~40 s with --smoke, a few minutes in full).
# CANOPY_BENCH_SND=0 skips it.
if [ "${CANOPY_BENCH_SND:-1}" = 1 ]; then
  script_bench snd snd_bench.sh "$BUILD/bench-snd.md"
else
  not_run snd CANOPY_BENCH_SND
fi
# canopy-vmm's KVM backend beside QEMU -M microvm under nested KVM (~1 min with --smoke).
# CANOPY_BENCH_KVM=0 skips it.
if [ "${CANOPY_BENCH_KVM:-1}" = 1 ]; then
  script_bench kvm kvm_bench.sh "$BUILD/bench-kvm.md"
else
  not_run kvm CANOPY_BENCH_KVM
fi
echo "bench: report written to $REPORT"
grep -h '^ratio ' "$REPORT" || true
if [ ${#FAILURES[@]} -ne 0 ]; then
  {
    echo
    echo "## FAILED or skipped"
    echo
    for f in "${FAILURES[@]}"; do echo "- $f"; done
  } >>"$REPORT"
  echo "bench: failed or skipped (${#FAILURES[@]}):" >&2
  for f in "${FAILURES[@]}"; do echo "  $f" >&2; done
fi
exit $rc
