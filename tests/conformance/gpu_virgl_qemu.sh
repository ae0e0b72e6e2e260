#!/usr/bin/env bash
# Conformance, 3D: a Linux 6.12 guest's virtio_gpu driver and Mesa's virgl driver run kmscube against
# canopy-gpu --renderer=virgl (virglrenderer on llvmpipe here) through QEMU 10's vhost-user-gpu-pci,
# which passes VIRTIO_GPU_F_VIRGL to the guest without a GL display of its own (-nographic). The guest
# (guest/virgl.sh) checks the feature and capsets and that kmscube's GL renderer is virgl; here we check
# what reached canopy-gpu's scanout output: kmscube's frames (1024x768, read back from the 3D resources
# and counted as copies) with the cube moving between them. The frame log waits for acquire points as the
# compositor does, so each 3D frame left canopy-gpu at the flush and was read back once virglrenderer's
# fence had signalled: its log line says which point it waited for ("acquire N").
#
# Usage: gpu_virgl_qemu.sh PATH/TO/canopy-gpu
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BACKEND=${1:-}
canopy_begin gpu_virgl_qemu
[ -n "$BACKEND" ] || canopy_fail "usage: $0 PATH/TO/canopy-gpu"
[ -x "$BACKEND" ] || canopy_fail "back-end $BACKEND missing or not executable (build target canopy-gpu)"
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip kmscube
FRAMES=${CANOPY_KMSCUBE_FRAMES:-60}

canopy_guest --test "$HERE/guest/virgl.sh" virtio-gpu netfs 9pnet 9p 9pnet_virtio
SOCK="$CANOPY_WORK/gpu.sock"
LOG="$CANOPY_WORK/frames.log"
canopy_start backend "$BACKEND" --socket-path "$SOCK" --renderer=virgl --mode 1024x768 --frame-log "$LOG"
canopy_wait_socket "$SOCK" 60 backend

qemu_rc=0
CANOPY_QEMU_TIMEOUT=${CANOPY_QEMU_TIMEOUT:-240} CANOPY_GUEST_TIMEOUT=${CANOPY_GUEST_TIMEOUT:-200} \
  CANOPY_QEMU_MEMORY=1024M CANOPY_QEMU_APPEND="canopy.kmscube_frames=$FRAMES ${CANOPY_VIRGL_APPEND:-}" \
  canopy_qemu -chardev "socket,id=gpu,path=$SOCK" -device vhost-user-gpu-pci,chardev=gpu \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
grep -a 'canopy-test:' "$CANOPY_WORK/console.log" | while read -r l; do canopy_log "guest: ${l#*canopy-test: }"; done
canopy_check_guest_run "$qemu_rc"

# kmscube's buffers are GBM buffers: 3D resources it page-flips between. Their frames are the ones
# whose resource is not fbcon's; each is read back whole (1024 x 768 x 4 bytes copied).
fbcon=$(awk '/^scanout 0 on 1024x768/ { print $NF; exit }' "$LOG")
total=$(grep -c '^frame 0 ' "$LOG" || true)
kms=$(awk -v fb="$fbcon" '/^scanout 0 on 1024x768/ { res = $NF } /^frame 0 .* 1024x768 XR24 .* copied 3145728 / { if (res != fb) print $NF }' "$LOG")
n=$(echo "$kms" | grep -c . || true)
fenced=$(awk -v fb="$fbcon" '/^scanout 0 on 1024x768/ { res = $NF } /^frame 0 .* copied 3145728 acquire [0-9]+ / { if (res != fb) n++ } END { print n + 0 }' "$LOG")
distinct=$(echo "$kms" | sort -u | grep -c . || true)
canopy_log "canopy-gpu: $total frame(s) in all; kmscube's: $n, $distinct different pictures, $fenced with an acquire point (fbcon's resource $fbcon)"
[ "$n" -ge $((FRAMES / 2)) ] || canopy_fail "only $n of kmscube's $FRAMES frames reached the output"
[ "$fenced" -eq "$n" ] || canopy_fail "only $fenced of kmscube's $n frames waited for an acquire point"
[ "$distinct" -ge 10 ] || canopy_fail "kmscube's frames show only $distinct different pictures (the cube should turn)"
canopy_pass
