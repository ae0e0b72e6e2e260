#!/usr/bin/env bash
# 3D frame rate a Linux guest gets: kmscube, then glmark2-es2-drm, through Mesa's virgl driver (Linux 6.12
# under QEMU 10 TCG) against each of these devices in the same run, rounds interleaved:
#
#   canopy-virgl          canopy-gpu --renderer=virgl (virglrenderer: a GPU's render node or llvmpipe)
#                         through vhost-user-gpu-pci
#   qemu-vhost-user-virgl QEMU's reference back-end /usr/lib/qemu/vhost-user-gpu --virgl, same front-end
#   qemu-virtio-gpu-gl    QEMU's in-process -device virtio-gpu-gl-pci (-display egl-headless)
#
# QEMU's two virgl devices need a DRM render node (gbm / EGL on a GPU): where there is none (CI, these
# machines) they are reported as unavailable with the reason, and only canopy-gpu's numbers stand; their
# ratio lines then read "unavailable: no DRM render node ..." (bench/report.sh shows them as no result,
# the one documented exception to "a reference that did not run fails"). Where a render node exists,
# a reference that cannot run (QEMU's back-end not installed) or a ratio that cannot be computed fails.
# Reported per device (median over rounds): kmscube's own frames per second (the guest's last "Rendered"
# line), glmark2's score over GLMARK2_BENCHMARKS (each one's FPS in the raw lines), and frames that
# reached canopy-gpu's output. Ratios: canopy against each QEMU device measured.
#
# Usage: bench/virgl_bench.sh [--smoke] [BUILD_DIR]
#   writes BUILD_DIR/bench-virgl.md; --smoke: one round of 60 frames (CI), otherwise CANOPY_BENCH_ROUNDS
#   (3) rounds of CANOPY_BENCH_FRAMES (300) frames.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
BUILD=$(cd "${1:-build}" && pwd)
# shellcheck source=../tests/conformance/lib.sh
. "$HERE/../tests/conformance/lib.sh"

if [ $SMOKE -eq 1 ]; then ROUNDS=1 FRAMES=60 SECONDS_EACH=2; else
  ROUNDS=${CANOPY_BENCH_ROUNDS:-3} FRAMES=${CANOPY_BENCH_FRAMES:-300} SECONDS_EACH=${CANOPY_BENCH_GLMARK2_SECONDS:-5}
fi
# glmark2's scenes that say something about a virgl pipe: geometry upload, texturing, a heavy fragment
# shader, and buffer updates (map and subdata), each for SECONDS_EACH seconds.
GLMARK2_BENCHMARKS="build:use-vbo=true,texture:texture-filter=linear,shading:shading=phong,buffer:update-method=map,buffer:update-method=subdata"
GLMARK2_SPECS=$(echo "$GLMARK2_BENCHMARKS" | tr ',' '\n' | sed "s/\$/:duration=$SECONDS_EACH/" | paste -sd, -)
REFERENCE=${CANOPY_REFERENCE_GPU:-/usr/lib/qemu/vhost-user-gpu}
REPORT="$BUILD/bench-virgl.md"
RESULTS="$BUILD/bench-virgl.txt"

canopy_begin virgl_bench
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip kmscube glmark2-es2-drm
[ -x "$BUILD/bin/canopy-gpu" ] || canopy_fail "$BUILD/bin/canopy-gpu missing (build the project first)"
canopy_guest --test "$HERE/../tests/conformance/guest/virgl.sh" virtio-gpu netfs 9pnet 9p 9pnet_virtio

devices=(canopy-virgl)
declare -A unavailable=()
if ! compgen -G '/dev/dri/renderD*' >/dev/null; then
  unavailable[qemu-vhost-user-virgl]="no DRM render node (its virglrenderer needs gbm on one)"
  unavailable[qemu-virtio-gpu-gl]="no DRM render node (-display egl-headless needs one; QEMU refuses the device without a GL display)"
else
  # A render node is there, so both references must run: a missing back-end is a failure, not a footnote.
  [ -x "$REFERENCE" ] || canopy_fail "QEMU's reference back-end $REFERENCE is not installed (qemu-system-gui; scripts/install-deps.sh)"
  devices+=(qemu-vhost-user-virgl qemu-virtio-gpu-gl)
fi

: >"$RESULTS"
run_one() {  # run_one DEVICE ROUND
  local dev=$1 round=$2 name="$1.$2" sock="$CANOPY_WORK/$1.$2.sock" log="$CANOPY_WORK/$1.$2.frames" qemu_rc=0
  local -a gpu_args
  case "$dev" in
    canopy-virgl) canopy_start "$name" "$BUILD/bin/canopy-gpu" --socket-path "$sock" --renderer=virgl --mode 1024x768 \
      --no-frontend-display --frame-log "$log" ;;
    qemu-vhost-user-virgl) canopy_start "$name" "$REFERENCE" --virgl --socket-path "$sock" ;;
  esac
  case "$dev" in
    # shellcheck disable=SC2054 # commas belong to QEMU's option syntax
    qemu-virtio-gpu-gl) gpu_args=(-device virtio-gpu-gl-pci,xres=1024,yres=768 -display egl-headless) ;;
    *)
      canopy_wait_socket "$sock" 10 "$name"
      gpu_args=(-chardev "socket,id=gpu,path=$sock" -device vhost-user-gpu-pci,chardev=gpu,xres=1024,yres=768)
      ;;
  esac
  CANOPY_QEMU_MEMORY=1024M CANOPY_QEMU_TIMEOUT=300 CANOPY_GUEST_TIMEOUT=280 \
    CANOPY_QEMU_APPEND="canopy.kmscube_frames=$FRAMES canopy.glmark2=$GLMARK2_SPECS" \
    canopy_qemu "${gpu_args[@]}" -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
  cp "$CANOPY_WORK/console.log" "$CANOPY_WORK/console.$name.log"
  case "$dev" in
    canopy-*) canopy_check_guest_run "$qemu_rc" "$name" ;;
    *)
      canopy_guest_result || canopy_fail "$name: guest: $CANOPY_GUEST_VERDICT"
      [ "$qemu_rc" -eq 0 ] || canopy_fail "$name: QEMU exited with status $qemu_rc"
      ;;
  esac
  local fps shown=-  # frames at canopy-gpu's output: only canopy-gpu logs them
  fps=$(grep -a -o 'Rendered [0-9]* frames in [0-9.]* sec ([0-9.]* fps)' "$CANOPY_WORK/console.log" | tail -n1 |
    sed -E 's/.*\(([0-9.]*) fps\)/\1/')
  [ -n "$fps" ] || canopy_fail "$name: kmscube reported no frame rate"
  local score scenes
  score=$(grep -a -o 'glmark2 Score: [0-9]*' "$CANOPY_WORK/console.log" | tail -n1 | awk '{ print $NF }')
  [ -n "$score" ] || canopy_fail "$name: glmark2 reported no score"
  # Each scene's FPS, in GLMARK2_BENCHMARKS' order.
  scenes=$(grep -a -o '] [^ ]*: FPS: [0-9]*' "$CANOPY_WORK/console.log" | awk '{ print $NF }' | paste -sd/ -)
  if [ "$dev" = canopy-virgl ]; then
    [ -s "$log" ] || canopy_fail "$name: canopy-gpu wrote no frame log $log"
    shown=$(grep -c '^frame 0 .* 1024x768 ' "$log" || true)
  fi
  echo "$dev $round fps=$fps glmark2=$score shown=$shown glmark2_scene_fps=$scenes" >>"$RESULTS"
  canopy_log "$name: kmscube $fps fps, glmark2 score $score, $shown frame(s) at the output"
}

for round in $(seq 1 "$ROUNDS"); do
  for dev in "${devices[@]}"; do run_one "$dev" "$round"; done
done

median() {  # median DEVICE KEY
  awk -v d="$1" -v key="$2" '$1 == d { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) v[n++] = kv[2] } }
    END { if (n == 0) { print "nan"; exit }
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      print (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2 }' "$RESULTS"
}
# The ratios, computed (and checked) before the report is written: a median or ratio that is not a
# number fails the benchmark here instead of printing "nan".
ratio_lines=()
for ref in "${devices[@]}"; do
  [ "$ref" = canopy-virgl ] && continue
  for key in fps glmark2; do
    a=$(median canopy-virgl "$key") b=$(median "$ref" "$key")
    v=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) exit 1; printf "%.2f", a / b }') ||
      canopy_fail "ratio $key canopy-virgl / $ref cannot be computed (canopy-virgl: $a, $ref: $b)"
    if [ $SMOKE -eq 1 ]; then
      ratio_lines+=("ratio $key canopy-virgl / $ref: smoke: not a measurement (one round of $FRAMES frames)")
    else
      ratio_lines+=("ratio $key canopy-virgl / $ref = $v  (higher is better)")
    fi
  done
done
for ref in "${!unavailable[@]}"; do
  for key in fps glmark2; do
    ratio_lines+=("ratio $key canopy-virgl / $ref: unavailable: ${unavailable[$ref]} (not a result)")
  done
done
for key in fps glmark2; do
  m=$(median canopy-virgl "$key")
  [[ "$m" =~ ^[0-9.]+$ ]] || canopy_fail "canopy-virgl: no $key measured (median: $m)"
done
{
  echo "## 3D: kmscube in a Linux guest through Mesa's virgl driver (bench/virgl_bench.sh)"
  echo
  echo "- $(date -u +%Y-%m-%dT%H:%MZ), QEMU $("${CANOPY_QEMU:-qemu-system-x86_64}" --version | head -n1 | awk '{print $4}') TCG," \
    "guest Linux $CANOPY_KVER, 1024x768, $ROUNDS round(s) of $FRAMES frames per device$([ $SMOKE -eq 1 ] && echo ', smoke')"
  echo
  echo "glmark2-es2-drm $(dpkg-query -W -f '${Version}' glmark2-es2-drm 2>/dev/null) scenes, ${SECONDS_EACH} s each:" \
    "$GLMARK2_BENCHMARKS (800x600 asked, the 1024x768 mode drawn, XRGB8888)"
  echo
  echo "| device | kmscube fps (median) | glmark2 score (median) | frames at canopy-gpu's output (fbcon's included) |"
  echo "|---|---|---|---|"
  for dev in "${devices[@]}"; do echo "| $dev | $(median "$dev" fps) | $(median "$dev" glmark2) | $(median "$dev" shown) |"; done
  for dev in "${!unavailable[@]}"; do echo "| $dev | unavailable: ${unavailable[$dev]} (not a result) | | |"; done
  echo
  if [ ${#unavailable[@]} -gt 0 ]; then
    echo "No comparison with QEMU's virgl devices in this run: they need a DRM render node (this machine has"
    echo "none). canopy-virgl's figures above stand alone; they are not compared with anything."
    echo
  fi
  echo '```'
  for l in "${ratio_lines[@]}"; do echo "$l"; done
  echo '```'
  echo
  echo '```'
  cat "$RESULTS"
  echo '```'
} >"$REPORT"
cat "$REPORT" >&2
canopy_pass
