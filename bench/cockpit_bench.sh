#!/usr/bin/env bash
# The cockpit demo as a benchmark: end-to-end frame latency (guest present -> output present) and the
# cluster's frame rate, with the IVI drawing normally and with the IVI flooding frames as fast as it
# can (an overloaded IVI must not cost the cluster frames or deadlines). Runs the real demo headless
# (demos/run-cockpit.sh: canopy-display, canopy-vmm, both partitions and their canopy-gpu back-ends).
# Usage: bench/cockpit_bench.sh [--smoke] [BUILD_DIR]   (--smoke: 3 s per scenario instead of 20 s)
# Environment: CANOPY_BENCH_RENDERER (default auto). Writes BUILD_DIR/bench-cockpit.md.
# Every figure in the table must have been measured: a summary line that is missing (a layer that never
# showed a frame, a summary format that changed) fails the benchmark instead of leaving a blank cell.
# The same-run reference (issue "CI that tells the truth", point 5): canopy-display alone, the same
# manifest, outputs and renderer, no VM connected, for as long as a scenario. Its figure is the cost of
# one refresh of the cluster output, latch -> compose -> present, taken per composition from its trace
# (the latch event's start to the end of the present that follows it on that output). That is the
# physical floor of the end-to-end latency: a frame that reaches the compositor exactly at the latch
# point still waits one refresh before it is on the output. The report gives
#   ratio cockpit latency p50 / output refresh with no VM p50 (SCENARIO) = X   (and the same for p99)
# and the demo's own refresh cost (with its VMs' frames) beside it; the reference must have composed
# (at least one refresh per second of run) with the same renderer, or the benchmark fails.
# The cost of confinement: the normal scenario again with nothing confined (canopy-vmm run
# --no-confine: partitions, back-ends, compositor), in ROUNDS rounds (3; 1 with --smoke), each a
# confined and an unconfined run, their order alternating between rounds; reported as the median of the
# rounds' ratios with their spread:
#   ratio cockpit latency p50 confined / unconfined = X (spread A..B over N rounds)
#   ratio start to first cluster frame confined / unconfined = X (spread A..B over N rounds)   (from
#   canopy-display's start, which canopy-vmm starts before the VMs, to the first cluster frame on the
#   cluster output)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS=20
SMOKE=0
ROUNDS=3
if [ "${1:-}" = "--smoke" ]; then SECS=3; SMOKE=1; ROUNDS=1; shift; fi
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

# refresh TRACE OUTPUT: "N P50_MS P99_MS" of OUTPUT's refresh cost (latch start -> present end, per
# composition) in the Chrome JSON trace canopy-display wrote (one event per line; percentiles taken as
# the compositor takes its latency percentiles: the sorted window's element at floor(q * N)).
refresh() {
  awk -v out="$2" '
    function num(key,   m) {
      if (!match($0, "\"" key "\":-?[0-9]+")) return -1
      m = substr($0, RSTART, RLENGTH); sub(/^.*:/, "", m); return m + 0
    }
    /"name":"thread_name"/ { if (index($0, "\"args\":{\"name\":\"output " out "\"}")) tid = num("tid"); next }
    tid == "" { next }
    {
      if (num("tid") != tid) next
      dur = num("dur"); if (dur < 0) dur = 0
      if ($0 ~ /"name":"latch"/) { start = num("ts"); open = 1 }
      else if (open && $0 ~ /"name":"present(-planes)?"/) { print num("ts") + dur - start; open = 0 }
    }' "$1" | sort -n | awk '
    { v[NR - 1] = $1 }
    function at(q,   k) { k = int(q * NR); if (k > NR - 1) k = NR - 1; return v[k] / 1000 }
    END { if (NR > 0) printf "%d %.2f %.2f\n", NR, at(0.5), at(0.99) }'
}

# reference: canopy-display with the demo's manifest, outputs and renderer (the arguments
# demos/run-cockpit.sh gives it) and no VM, for SECS; sets REF_N / REF_P50 / REF_P99 (the cluster
# output's refresh cost) and REF_RENDERER, or ends the script.
reference() {
  local dir="$WORK/reference" r
  mkdir -p "$dir"
  "$BUILD/bin/canopy-display" "$ROOT/demos/cockpit.toml" --listen "$dir/display.sock" --control "$dir/display.ctl" \
    --output headless --renderer "$RENDERER" --run-for-s "$SECS" --snapshot-dir "$dir" \
    --summary "$dir/summary.txt" --trace "$dir/trace.json" >"$WORK/reference.log" 2>&1 || {
    tail -n 30 "$WORK/reference.log" >&2
    echo "cockpit_bench: the reference (canopy-display with no VM) failed" >&2
    exit 1
  }
  [ -s "$dir/summary.txt" ] || { echo "cockpit_bench: the reference wrote no summary" >&2; exit 1; }
  [ -s "$dir/trace.json" ] || { echo "cockpit_bench: the reference wrote no trace" >&2; exit 1; }
  if grep -q '^vm ' "$dir/summary.txt"; then
    echo "cockpit_bench: a VM connected to the reference canopy-display (it must run alone)" >&2
    exit 1
  fi
  REF_RENDERER=$(field "$dir/summary.txt" "canopy-display summary" "renderer ([a-z0-9_-]+)")
  r=$(refresh "$dir/trace.json" cluster)
  read -r REF_N REF_P50 REF_P99 <<<"${r:-0 - -}"
  # A reference that barely composed is no reference.
  awk -v n="$REF_N" -v s="$SECS" 'BEGIN { exit !(n >= s) }' || {
    echo "cockpit_bench: the reference composed the cluster output $REF_N times in $SECS s: not measured" >&2
    exit 1
  }
  cp "$dir/summary.txt" "$WORK/reference.summary"
}

# ratio NAME A B: "ratio NAME = A/B" (two decimals), or "ratio NAME: not measured" when B is not > 0.
ratio() {
  awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {
    if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "ratio %s = %.2f\n", n, a / b
    else printf "ratio %s: not measured (%s / %s)\n", n, a, b }'
}

# spread_ratio NAME A1/B1 A2/B2 ...: "ratio NAME = M (spread LO..HI over N rounds)", M the median of
# the rounds' Ai/Bi (the lower middle one for an even N), or "not measured" when a Bi is not > 0.
spread_ratio() {
  local name="$1"
  shift
  printf '%s\n' "$@" | awk -F/ -v n="$name" '
    { if ($1 !~ /^[0-9.]+$/ || $2 !~ /^[0-9.]+$/ || $2 + 0 <= 0) bad = 1; else r[NR] = $1 / $2 }
    END {
      if (bad || NR == 0) { printf "ratio %s: not measured\n", n; exit }
      for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
      if (NR == 1) printf "ratio %s = %.2f (one round: no spread)\n", n, r[1]
      else printf "ratio %s = %.2f (spread %.2f..%.2f over %d rounds)\n", n, r[int((NR + 1) / 2)], r[1], r[NR], NR
    }'
}

run() {  # run NAME MANIFEST [UNCONFINED]
  local out="$WORK/$1"
  CANOPY_DEMO_UNCONFINED=${3:-0} CANOPY_DEMO_SECONDS=$SECS CANOPY_DEMO_OUTPUT=headless CANOPY_DEMO_RENDERER="$RENDERER" CANOPY_DEMO_MANIFEST="$2" \
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
  first=$(field "$s" "  layer cluster/0" "first frame at ([0-9.]+) ms")
  # A cluster that showed no new frame has no latency to report: that is a failed run, not a figure.
  awk -v n="$new" 'BEGIN { exit !(n > 0) }' || { echo "cockpit_bench: scenario $1: the cluster showed no new frame" >&2; exit 1; }
  # The reference is only one if it composed with the renderer this scenario used.
  renderer=$(field "$s" "canopy-display summary" "renderer ([a-z0-9_-]+)")
  [ "$renderer" = "$REF_RENDERER" ] || {
    echo "cockpit_bench: scenario $1 composed with $renderer, the reference with $REF_RENDERER" >&2
    exit 1
  }
  # The demo's own cluster refresh cost (with the VMs' frames), beside the reference's.
  demo_refresh=$(refresh "$out/trace.json" cluster)
  [ -n "$demo_refresh" ] || { echo "cockpit_bench: scenario $1: no cluster refresh in the demo's trace" >&2; exit 1; }
  read -r _ dr50 dr99 <<<"$demo_refresh"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$fps" "$new" "$p50" "$p99" "$missed" "$ivi" \
    "$center" "$dr50" "$dr99" "$first"
  case "$1" in
    *-round*) ;;  # the confinement rounds: their own ratios below
    *)
      ratio "cockpit latency p50 / output refresh with no VM p50 ($1)" "$p50" "$REF_P50" >>"$WORK/ratios"
      ratio "cockpit latency p99 / output refresh with no VM p99 ($1)" "$p99" "$REF_P99" >>"$WORK/ratios"
      ;;
  esac
  # The ducking as the sink heard it (a real-time figure, reported here rather than checked in tests):
  # how long after the chime's onset the music was down 20 dB, and after its end back.
  if grep -q '^audio: through no PipeWire' "$s"; then
    echo "ducking at the sink ($1): not measured (no PipeWire)" >>"$WORK/ducking"
  else
    duck=$(sed -n 's/^audio: ducking at the sink .*: \(chime=1 .*\)$/\1/p' "$s")
    [ -n "$duck" ] || { echo "cockpit_bench: scenario $1: no ducking figures at the sink in the summary" >&2; exit 1; }
    echo "ducking at the sink ($1, target: within the 40 ms ramp): $duck" >>"$WORK/ducking"
  fi
  cp "$s" "$WORK/$1.summary"
  echo "$p50 $p99" >"$WORK/$1.latency"
  echo "$first" >"$WORK/$1.first"
}

reference
: >"$WORK/ratios"
: >"$WORK/ducking"

{
  echo "## cockpit demo (bench/cockpit_bench.sh)"
  echo
  echo "- $SECS s per scenario, headless, renderer $RENDERER, $(nproc) cpus; latency: guest present (its flush"
  echo "  reaching canopy-gpu) -> the output's present, per cluster frame shown"
  echo "- reference, same run: canopy-display alone (same manifest, outputs and renderer, no VM) for $SECS s;"
  echo "  the cost of one refresh of the cluster output (latch -> compose -> present, from its trace), the"
  echo "  floor of the end-to-end latency: $REF_N refreshes, p50 $REF_P50 ms, p99 $REF_P99 ms, renderer $REF_RENDERER"
  if [ $SMOKE -eq 1 ]; then
    echo "- smoke: $SECS s per scenario, cold: these figures say that the demo ran, they are not a measurement"
  fi
  echo
  echo "| scenario | cluster output fps | cluster new fps | cluster latency p50 ms | p99 ms | cluster missed deadlines | IVI frames sent | center missed deadlines | cluster refresh p50 ms | p99 ms | start to first cluster frame ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  echo "| no VM (reference) | | | | | | | | $REF_P50 | $REF_P99 | |"
  run normal "$ROOT/demos/cockpit.toml"
  run ivi-flood "$WORK/flood.toml"
  run unconfined "$ROOT/demos/cockpit.toml" 1
  # Round 1 is normal then unconfined; the next rounds alternate which runs first.
  confined=(normal) unconfined=(unconfined)
  for ((r = 2; r <= ROUNDS; r++)); do
    if ((r % 2 == 0)); then
      run "unconfined-round$r" "$ROOT/demos/cockpit.toml" 1
      run "normal-round$r" "$ROOT/demos/cockpit.toml"
    else
      run "normal-round$r" "$ROOT/demos/cockpit.toml"
      run "unconfined-round$r" "$ROOT/demos/cockpit.toml" 1
    fi
    confined+=("normal-round$r") unconfined+=("unconfined-round$r")
  done
  echo
  lat=() first=()
  for i in "${!confined[@]}"; do
    read -r c50 _ <"$WORK/${confined[$i]}.latency"
    read -r u50 _ <"$WORK/${unconfined[$i]}.latency"
    lat+=("$c50/$u50")
    first+=("$(cat "$WORK/${confined[$i]}.first")/$(cat "$WORK/${unconfined[$i]}.first")")
  done
  spread_ratio "cockpit latency p50 confined / unconfined (normal)" "${lat[@]}" >>"$WORK/ratios"
  spread_ratio "start to first cluster frame confined / unconfined (normal)" "${first[@]}" >>"$WORK/ratios"
  cat "$WORK/ratios"
  echo
  cat "$WORK/ducking"
  echo
  for n in reference normal ivi-flood unconfined "${confined[@]:1}" "${unconfined[@]:1}"; do
    echo "### $n: summary"
    echo
    echo '```'
    cat "$WORK/$n.summary"
    echo '```'
    echo
  done
} >"$BUILD/bench-cockpit.md"
cat "$BUILD/bench-cockpit.md"
if grep -q 'not measured' "$WORK/ratios"; then
  echo "cockpit_bench: a ratio was not measured" >&2
  exit 1
fi
