#!/usr/bin/env bash
# What a Linux guest sees of its GPU: the upstream virtio_gpu driver (Linux 6.12 under QEMU 10 TCG)
# page-flipping and updating its cursor through KMS (bench/guest/drm_bench.cc, run inside the guest),
# against each of these devices in the same run, rounds interleaved so drift hits all of them alike:
#
#   canopy            canopy-gpu through vhost-user-gpu-pci, frames also mirrored to QEMU's display
#                     socket (the default when QEMU is the VMM)
#   canopy-direct     canopy-gpu --no-frontend-display: frames to Canopy's scanout output only (how the
#                     compositor consumes them)
#   qemu-vhost-user   QEMU's reference back-end /usr/lib/qemu/vhost-user-gpu (package qemu-system-gui)
#                     through the same vhost-user-gpu-pci
#   qemu-builtin      QEMU's in-process -device virtio-gpu-pci
#   canopy-unconfined canopy-gpu --no-sandbox: the cost of its confinement (Landlock, the seccomp
#                     allowlist) is the ratio canopy / canopy-unconfined, with its spread over rounds
#
# Every device shows one 1024x768 scanout. Reported per device (median over rounds): page-flip rate and
# flip latency, cursor image round trip (a fenced upload the guest waits for), cursor move (guest-side
# cost: the driver does not wait for moves). Ratios: canopy against each QEMU device.
#
# Usage: bench/gpu_guest_bench.sh [--smoke] [BUILD_DIR]
#   writes BUILD_DIR/bench-gpu-guest.md; --smoke: one short round (CI), otherwise
#   CANOPY_BENCH_ROUNDS (3) rounds of CANOPY_BENCH_FLIP_S (6) seconds and 300 cursor updates.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
BUILD=$(cd "${1:-build}" && pwd)
# shellcheck source=../tests/conformance/lib.sh
. "$HERE/../tests/conformance/lib.sh"

if [ $SMOKE -eq 1 ]; then
  ROUNDS=1 FLIP_S=1 CURSOR_ROUNDS=20
else
  ROUNDS=${CANOPY_BENCH_ROUNDS:-3} FLIP_S=${CANOPY_BENCH_FLIP_S:-6} CURSOR_ROUNDS=300
fi
REFERENCE=${CANOPY_REFERENCE_GPU:-/usr/lib/qemu/vhost-user-gpu}
REPORT="$BUILD/bench-gpu-guest.md"
RESULTS="$BUILD/bench-gpu-guest.txt"

canopy_begin gpu_guest_bench
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip
for b in canopy-gpu canopy-drm-bench; do
  [ -x "$BUILD/bin/$b" ] || canopy_fail "$BUILD/bin/$b missing (build the project first)"
done
canopy_guest --test "$HERE/guest/gpu.sh" virtio-gpu netfs 9pnet 9p 9pnet_virtio

devices=(canopy canopy-direct qemu-vhost-user qemu-builtin canopy-unconfined)
# The references must run: without QEMU's back-end the comparison this benchmark exists for is gone.
[ -x "$REFERENCE" ] ||
  canopy_fail "QEMU's reference back-end $REFERENCE is not installed (qemu-system-gui; scripts/install-deps.sh)"

: >"$RESULTS"
# run_one DEVICE ROUND: boot the guest against DEVICE and append its result lines to $RESULTS.
run_one() {
  local dev=$1 round=$2 name="$1.$2" sock="$CANOPY_WORK/$1.$2.sock" qemu_rc=0
  local -a gpu_args
  case "$dev" in
    canopy) canopy_start "$name" "$BUILD/bin/canopy-gpu" --socket-path "$sock" --mode 1024x768 ;;
    canopy-direct) canopy_start "$name" "$BUILD/bin/canopy-gpu" --socket-path "$sock" --mode 1024x768 --no-frontend-display ;;
    canopy-unconfined) canopy_start "$name" "$BUILD/bin/canopy-gpu" --socket-path "$sock" --mode 1024x768 --no-sandbox ;;
    qemu-vhost-user) canopy_start "$name" "$REFERENCE" --socket-path "$sock" ;;
  esac
  if [ "$dev" = qemu-builtin ]; then
    gpu_args=(-device virtio-gpu-pci,xres=1024,yres=768)
  else
    canopy_wait_socket "$sock" 10 "$name"
    gpu_args=(-chardev "socket,id=gpu,path=$sock" -device vhost-user-gpu-pci,chardev=gpu,xres=1024,yres=768)
  fi
  CANOPY_QEMU_APPEND="canopy.drm_bench=$BUILD/bin/canopy-drm-bench canopy.bench_s=$FLIP_S canopy.cursor_rounds=$CURSOR_ROUNDS" \
    canopy_qemu "${gpu_args[@]}" -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
  cp "$CANOPY_WORK/console.log" "$CANOPY_WORK/console.$name.log"
  case "$dev" in
    canopy*) canopy_check_guest_run "$qemu_rc" "$name" ;;
    *)
      canopy_guest_result || canopy_fail "$name: guest: $CANOPY_GUEST_VERDICT"
      [ "$qemu_rc" -eq 0 ] || canopy_fail "$name: QEMU exited with status $qemu_rc"
      ;;
  esac
  grep -a -o 'canopy-drm-bench: .*' "$CANOPY_WORK/console.log" | tr -d '\r' | sed "s/^canopy-drm-bench: /$dev $round /" >>"$RESULTS"
  canopy_log "$name: $(grep "^$dev $round flip " "$RESULTS" | cut -d' ' -f4-)"
}

for round in $(seq 1 "$ROUNDS"); do
  for dev in "${devices[@]}"; do run_one "$dev" "$round"; done
done

# Every run must have driven the same size, or the comparison means nothing. (The refresh rates in
# the EDIDs differ, QEMU's says 75 Hz, ours 60 Hz, but virtio-gpu has no vblank to pace flips.)
modes=$(awk '$3 == "setup" { for (i = 4; i <= NF; i++) if ($i ~ /^mode=/) { sub(/@.*/, "", $i); print $i } }' "$RESULTS" | sort -u)
[ "$(echo "$modes" | wc -l)" -eq 1 ] || canopy_fail "the devices gave the guest different modes: $(echo "$modes" | tr '\n' ' ')"

# median DEVICE KIND KEY: the median over rounds of KEY=value in DEVICE's KIND lines.
median() {
  awk -v d="$1" -v k="$2" -v key="$3" '$1 == d && $3 == k {
      for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) v[n++] = kv[2] } }
    END { if (n == 0) { print "nan"; exit }
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      print (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2 }' "$RESULTS"
}
# ratio A B: A / B to two places; status 1 (nothing printed) when either is not a number or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) exit 1; printf "%.2f", a / b }'; }

# Every device must have measured everything the table shows: a missing figure fails here.
for dev in "${devices[@]}"; do
  for m in "flip rate_hz" "flip median_us" "flip p99_us" "cursor-image median_us" "cursor-image p99_us" "cursor-move median_us"; do
    # shellcheck disable=SC2086 # KIND KEY
    v=$(median "$dev" $m)
    [[ "$v" =~ ^[0-9.]+$ ]] || canopy_fail "$dev: no $m measured (median: $v)"
  done
done
# The ratios, computed and checked before the report is written (a ratio that cannot be computed fails).
ratio_lines=()
add_ratio() {  # add_ratio LABEL A B BETTER
  local v
  v=$(ratio "$2" "$3") || canopy_fail "ratio $1 cannot be computed ($2 / $3)"
  if [ $SMOKE -eq 1 ]; then
    ratio_lines+=("ratio $1: smoke: not a measurement (one short round)")
  else
    ratio_lines+=("ratio $1 = $v  ($4 is better)")
  fi
}
# per_round DEVICE KIND KEY: KEY's value in DEVICE's KIND line of each round, in round order.
per_round() {
  awk -v d="$1" -v k="$2" -v key="$3" '$1 == d && $3 == k {
      for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) print $2, kv[2] } }' "$RESULTS" | sort -n | cut -d' ' -f2
}
# The cost of confinement, same run: confined / unconfined per round, the median and the spread.
add_confinement() {  # add_confinement LABEL KIND KEY BETTER
  local v spread
  v=$(ratio "$(median canopy "$2" "$3")" "$(median canopy-unconfined "$2" "$3")") ||
    canopy_fail "ratio $1 cannot be computed"
  spread=$(paste <(per_round canopy "$2" "$3") <(per_round canopy-unconfined "$2" "$3") |
    awk '$2 > 0 { r = $1 / $2; if (n == 0 || r < lo) lo = r; if (n == 0 || r > hi) hi = r; n++ }
      END { if (n) printf "%.2f..%.2f over %d round(s)", lo, hi, n }')
  if [ $SMOKE -eq 1 ]; then
    ratio_lines+=("ratio $1: smoke: not a measurement (one short round)")
  else
    ratio_lines+=("ratio $1 = $v  (1.00 is free; $4 is better; per round $spread)")
  fi
}
add_confinement "guest flip rate canopy confined / unconfined" flip rate_hz higher
add_confinement "guest cursor image round trip canopy confined / unconfined" cursor-image median_us lower
for ref in "${devices[@]}"; do
  case "$ref" in qemu-*) ;; *) continue ;; esac
  for ours in canopy canopy-direct; do
    add_ratio "guest flip rate $ours / $ref" "$(median "$ours" flip rate_hz)" "$(median "$ref" flip rate_hz)" higher
    add_ratio "guest cursor image round trip $ours / $ref" "$(median "$ours" cursor-image median_us)" \
      "$(median "$ref" cursor-image median_us)" lower
  done
done

{
  echo "## Linux guest page flips and cursor (bench/gpu_guest_bench.sh)"
  echo
  echo "- $(date -u +%Y-%m-%dT%H:%MZ), QEMU $("${CANOPY_QEMU:-qemu-system-x86_64}" --version | head -n1 | awk '{print $4}') TCG," \
    "guest Linux $CANOPY_KVER, $(echo "$modes" | sed 's/mode=//'), $ROUNDS round(s) of ${FLIP_S} s flipping" \
    "and $CURSOR_ROUNDS cursor updates per device$([ $SMOKE -eq 1 ] && echo ', smoke')"
  echo
  echo "| device | flips/s | flip latency median (us) | flip p99 (us) | cursor image round trip median (us) | cursor image p99 (us) | cursor move (us, guest only) |"
  echo "|---|---|---|---|---|---|---|"
  for dev in "${devices[@]}"; do
    echo "| $dev | $(median "$dev" flip rate_hz) | $(median "$dev" flip median_us) | $(median "$dev" flip p99_us)" \
      "| $(median "$dev" cursor-image median_us) | $(median "$dev" cursor-image p99_us) | $(median "$dev" cursor-move median_us) |"
  done
  echo
  echo '```'
  for l in "${ratio_lines[@]}"; do echo "$l"; done
  echo '```'
  echo
  echo "Raw results (device round measurement ...):"
  echo
  echo '```'
  cat "$RESULTS"
  echo '```'
} >"$REPORT"
cat "$REPORT" >&2
canopy_pass
