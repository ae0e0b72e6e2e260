#!/usr/bin/env bash
# Conformance: the upstream Linux virtio_gpu driver (Linux 6.12 under QEMU 10 TCG) against
# canopy-gpu through QEMU's vhost-user-gpu-pci with two scanouts of different modes. The guest
# (guest/gpu.sh) checks the driver, the connectors and their EDID modes, then runs modetest (mode set
# with a known pattern on both scanouts, hardware cursor, page flips until canopy-gpu's frame log holds
# what the checks need, read over 9p: events, not a time). Here we check what reached
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

canopy_start_gpu2 "$BACKEND"

# The guest flips until canopy-gpu's frame log (read over 9p) holds what the checks below need.
crcs="$(canopy_pixel_crc 77777777 $((1024 * 768 * 4))),$(canopy_pixel_crc 77777777 $((800 * 600 * 4)))"
qemu_rc=0
CANOPY_QEMU_APPEND="canopy.gpu_modes=1024x768,800x600 canopy.frames_log=$CANOPY_FRAMES canopy.crcs=$crcs" \
  canopy_qemu_gpu2 || qemu_rc=$?
canopy_check_guest_run "$qemu_rc"
grep -q 'front-end display connected' "$CANOPY_WORK/backend.log" ||
  canopy_fail "QEMU's display socket (GPU_SET_SOCKET) was not accepted"

for s in 0:1024x768 1:800x600; do
  grep -q "^scanout ${s%%:*} on ${s#*:} " "$CANOPY_FRAMES" || canopy_fail "scanout ${s%%:*} was not set to ${s#*:}"
done
# modetest's "plain" pattern: every byte 0x77.
canopy_check_frames 0 1024 768 77777777 "the plain pattern"
canopy_check_frames 1 800 600 77777777 "the plain pattern"
images=$(grep -c '^cursor [01] show .* image' "$CANOPY_FRAMES" || true)
moves=$(grep -c '^cursor [01] show ' "$CANOPY_FRAMES" || true)
canopy_log "cursor: $images image update(s), $moves visible update(s) in all"
[ "$images" -ge 1 ] || canopy_fail "no cursor image reached the output"
[ "$moves" -gt "$images" ] || canopy_fail "the cursor never moved"
grep -a 'freq:' "$CANOPY_WORK/console.log" | tail -n 2 | while read -r l; do canopy_log "guest ${l#*canopy-test: }"; done
canopy_pass
