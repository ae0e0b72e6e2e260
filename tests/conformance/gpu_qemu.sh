#!/usr/bin/env bash
# Conformance: the upstream Linux virtio_gpu driver (Linux 6.12 under QEMU 10 TCG) against
# canopy-gpu through QEMU's vhost-user-gpu-pci with two scanouts of different modes. The guest
# (guest/gpu.sh) checks the driver, the connectors and their EDID modes, then runs modetest (mode set
# with a known pattern on both scanouts, hardware cursor, page flips). Here we check what reached
# canopy-gpu's scanout output: frames of the right size whose pixels have the checksum of modetest's
# "plain" pattern (every byte 0x77), page flips, and cursor updates with an image.
#
# Usage: gpu_qemu.sh PATH/TO/canopy-gpu
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BACKEND=${1:-}
canopy_begin gpu_qemu
[ -n "$BACKEND" ] || canopy_fail "usage: $0 PATH/TO/canopy-gpu"
[ -x "$BACKEND" ] || canopy_fail "back-end $BACKEND missing or not executable (build target canopy-gpu)"
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo modetest gzip od

canopy_guest --test "$HERE/guest/gpu.sh" virtio-gpu netfs 9pnet 9p 9pnet_virtio

SOCK="$CANOPY_WORK/gpu.sock"
FRAMES="$CANOPY_WORK/frames.log"
canopy_start backend "$BACKEND" --socket-path "$SOCK" --scanouts 2 --mode 1024x768 --scanout-mode 1:800x600 \
  --frame-log "$FRAMES"
canopy_wait_socket "$SOCK" 10 backend

qemu_rc=0
CANOPY_QEMU_APPEND="canopy.gpu_modes=1024x768,800x600 canopy.gpu_flip_s=${CANOPY_GPU_FLIP_S:-6}" \
  canopy_qemu -chardev "socket,id=gpu,path=$SOCK" -device vhost-user-gpu-pci,chardev=gpu,max_outputs=2 \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
canopy_check_guest_run "$qemu_rc"
grep -q 'front-end display connected' "$CANOPY_WORK/backend.log" ||
  canopy_fail "QEMU's display socket (GPU_SET_SOCKET) was not accepted"

# CRC-32 of N bytes of 0x77 (gzip's trailer holds the IEEE CRC-32 of its input).
plain_crc() {
  head -c "$1" /dev/zero | tr '\000' '\167' | gzip -c | tail -c 8 | od -An -tx4 -N4 | tr -d ' \n'
}
check_scanout() {  # check_scanout SCANOUT W H
  local s=$1 w=$2 h=$3 crc frames good
  crc=$(plain_crc $((w * h * 4)))
  grep -q "^scanout $s on ${w}x${h} " "$FRAMES" || canopy_fail "scanout $s was not set to ${w}x${h}"
  frames=$(grep -c "^frame $s .* ${w}x${h} XR24 " "$FRAMES" || true)
  good=$(grep -c "^frame $s .* ${w}x${h} XR24 .* crc $crc\$" "$FRAMES" || true)
  canopy_log "scanout $s: $frames frame(s) of ${w}x${h}, $good with the plain pattern's checksum $crc"
  [ "$good" -ge 10 ] || canopy_fail "scanout $s: only $good full frame(s) with the guest's pixels (want >= 10 page flips)"
}
check_scanout 0 1024 768
check_scanout 1 800 600
images=$(grep -c '^cursor [01] show .* image' "$FRAMES" || true)
moves=$(grep -c '^cursor [01] show ' "$FRAMES" || true)
canopy_log "cursor: $images image update(s), $moves visible update(s) in all"
[ "$images" -ge 1 ] || canopy_fail "no cursor image reached the output"
[ "$moves" -gt "$images" ] || canopy_fail "the cursor never moved"
grep -a 'freq:' "$CANOPY_WORK/console.log" | tail -n 2 | while read -r l; do canopy_log "guest ${l#*canopy-test: }"; done
canopy_pass
