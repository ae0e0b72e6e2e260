#!/usr/bin/env bash
# virtio-rng conformance: QEMU 10's vhost-user-rng-pci front-end + Linux 6.12's virtio_rng driver
# against canopy-vhost-rng.
#
# Usage: tests/conformance/rng_qemu.sh PATH/TO/canopy-vhost-rng
#
# The back-end runs with --pattern (every request is filled with the text "canopy-rng:"); the guest
# (guest/rng.sh) checks that virtio_rng binds, VIRTIO_F_VERSION_1 is negotiated, hw_random uses
# virtio_rng, and that /dev/hwrng returns only pattern bytes. The test passes when the guest
# reports PASS and the back-end exits 0 after QEMU disconnects.
# Exit status: 0 pass, 1 fail, 77 skipped (QEMU not installed).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/conformance/lib.sh
. "$HERE/lib.sh"

BACKEND=${1:-}
canopy_begin rng_qemu
[ -n "$BACKEND" ] || canopy_fail "usage: $0 PATH/TO/canopy-vhost-rng"
[ -x "$BACKEND" ] || canopy_fail "back-end $BACKEND missing or not executable (build target canopy-vhost-rng)"
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo

canopy_guest --test "$HERE/guest/rng.sh" virtio-rng

SOCK="$CANOPY_WORK/rng.sock"
canopy_start backend "$BACKEND" --socket-path "$SOCK" --pattern
canopy_wait_socket "$SOCK" 60 backend

qemu_rc=0
canopy_qemu -chardev "socket,id=c,path=$SOCK" -device vhost-user-rng-pci,chardev=c || qemu_rc=$?
canopy_check_guest_run "$qemu_rc"  # the back-end must notice the disconnect and exit 0 by itself
canopy_pass
