#!/usr/bin/env bash
# Conformance: canopy-display's KMS output (libdrm atomic + libliftoff) inside a Linux 6.12 guest,
# on the upstream virtio_gpu driver with two outputs (QEMU's vhost-user-gpu-pci, max_outputs=2, with
# canopy-gpu behind it). The guest (guest/display_kms.sh) runs canopy-display from the host's root
# with --output kms and a manifest of two displays; it checks that both ran on KMS and page-flipped.
# canopy-display-feed stands in for VM "ivi", full screen on output main in a colour of its own, so
# the compositor offers that frame to a plane of its own (the udmabuf the feed sends, imported into
# virtio_gpu); the guest checks that it was offered and logs whether it was taken or refused and why.
# Here we check what reached canopy-gpu's scanouts: output main must show the feed (0x2080c0, X byte
# 0xff: every pixel c0 80 20 ff in memory), composed or on a plane, whichever way it went; output second
# only the background (0x777777: every pixel 77 77 77 ff), never the feed. virtio-gpu has a primary and a cursor plane per CRTC and Linux 6.12's virtio_gpu does
# not import foreign dma-bufs, so plane offload itself is refused here (docs/display.md).
#
# Usage: display_kms_qemu.sh PATH/TO/canopy-display PATH/TO/canopy-gpu PATH/TO/canopy-display-feed
# (the feed must lie beside canopy-display: the guest runs it from there)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

DISPLAY_BIN=${1:-}
BACKEND=${2:-}
FEED=${3:-}
canopy_begin display_kms_qemu
[ -n "$DISPLAY_BIN" ] && [ -n "$BACKEND" ] && [ -n "$FEED" ] ||
  canopy_fail "usage: $0 PATH/TO/canopy-display PATH/TO/canopy-gpu PATH/TO/canopy-display-feed"
for b in "$DISPLAY_BIN" "$BACKEND" "$FEED"; do [ -x "$b" ] || canopy_fail "$b missing or not executable"; done
[ "$(dirname "$FEED")" -ef "$(dirname "$DISPLAY_BIN")" ] || canopy_fail "canopy-display-feed must lie beside canopy-display"
[ -x "$(dirname "$DISPLAY_BIN")/canopyctl" ] || canopy_fail "canopyctl must lie beside canopy-display (the guest asks it for stats)"
DISPLAY_BIN=$(cd "$(dirname "$DISPLAY_BIN")" && pwd)/$(basename "$DISPLAY_BIN")
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip od

canopy_guest --test "$HERE/guest/display_kms.sh" virtio-gpu netfs 9pnet 9p 9pnet_virtio

# Two displays: main shows VM ivi (the feed) full screen, second shows only the background.
cat >"$CANOPY_WORK/kms.toml" <<'TOML'
version = 1

[[vm]]
name = "ivi"
backend = "partition"
memory = "64M"
app = "canopy-ivi-app"

[vm.gpu]
scanouts = [{ width = 640, height = 480 }]

[[display]]
name = "main"
width = 1024
height = 768
output = "kms"

[[display]]
name = "second"
width = 800
height = 600
output = "kms"

[[layout]]
display = "main"
vm = "ivi"
x = 0
y = 0
width = 1024
height = 768
TOML
chmod -R a+rX "$CANOPY_WORK"

canopy_start_gpu2 "$BACKEND"

# The guest runs until the frames below have reached canopy-gpu's frame log (it reads it over 9p), so
# the only time limits are hang guards: about 10x what a busy 2-core machine needs (idle: ~20 s).
crc0=$(canopy_pixel_crc c08020ff $((1024 * 768 * 4)))
crc1=$(canopy_pixel_crc 777777ff $((800 * 600 * 4)))
CANOPY_GUEST_TIMEOUT=${CANOPY_GUEST_TIMEOUT:-300}
CANOPY_QEMU_TIMEOUT=${CANOPY_QEMU_TIMEOUT:-360}
# Room for two ASan programs (canopy-display and the feed) beside the initramfs; the guest also bounds
# ASan's quarantine, which an OOM kill of the feed showed to be the main consumer on a slow run.
CANOPY_QEMU_MEMORY=${CANOPY_QEMU_MEMORY:-1024M}
qemu_rc=0
# vt.global_cursor_default=0: no blinking fbcon cursor, which otherwise flushes both scanouts (5 MB
# copied and CRC'd by canopy-gpu) several times a second until canopy-display takes them, taking CPU
# from the guest and the host exactly while canopy-display starts.
CANOPY_QEMU_APPEND="vt.global_cursor_default=0 canopy.display_bin=$DISPLAY_BIN canopy.display_manifest=$CANOPY_WORK/kms.toml canopy.frames_log=$CANOPY_FRAMES canopy.crc0=$crc0 canopy.crc1=$crc1" \
  canopy_qemu_gpu2 || qemu_rc=$?
canopy_check_guest_run "$qemu_rc"

canopy_check_frames 0 1024 768 c08020ff "the feed's colour (VM ivi reached output main)"
canopy_check_frames 1 800 600 777777ff "the compositor's background"
feed_crc=$(canopy_pixel_crc c08020ff $((800 * 600 * 4)))
if grep -q "^frame 1 .* 800x600 XR24 .* crc $feed_crc\$" "$CANOPY_FRAMES"; then
  canopy_fail "the feed's colour reached output second, which has no layer of VM ivi"
fi
{ grep -a 'canopy-test: .*kms: output' "$CANOPY_WORK/console.log" || true; } | while read -r l; do
  canopy_log "guest: ${l#*info: }"
done
canopy_pass
