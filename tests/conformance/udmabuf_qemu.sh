#!/usr/bin/env bash
# Conformance: Canopy's udmabuf paths on a real /dev/udmabuf: core/buffers make_udmabuf (memfd pieces
# -> one dma-buf; canopy_udmabuf_test) and the least-privilege memory path (canopy-gpu's channel output
# sends the compositor a dma-buf of just a frame's pages; canopy_dmabuf_test). No host here has the
# device; Debian's Linux 6.12 guest kernel has it built in, so the test boots that guest and runs the
# GoogleTest binaries inside it from the host's root over 9p (guest/udmabuf.sh). Every case must pass
# there; a skip is a failure.
#
# Usage: udmabuf_qemu.sh PATH/TO/canopy_udmabuf_test [PATH/TO/canopy_dmabuf_test...]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/conformance/lib.sh
. "$HERE/lib.sh"

canopy_begin udmabuf_qemu
[ $# -ge 1 ] || canopy_fail "usage: $0 PATH/TO/canopy_udmabuf_test [MORE TESTS...]"
TEST_BINS=""
for b in "$@"; do
  [ -x "$b" ] || canopy_fail "$b missing or not executable (build its target)"
  TEST_BINS="${TEST_BINS:+$TEST_BINS:}$(cd "$(dirname "$b")" && pwd)/$(basename "$b")"
done
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo

canopy_guest --test "$HERE/guest/udmabuf.sh" netfs 9pnet 9p 9pnet_virtio

qemu_rc=0
CANOPY_QEMU_APPEND="canopy.udmabuf_test=$TEST_BINS" \
  canopy_qemu -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
canopy_guest_timing
verdict_ok=0
canopy_guest_result || verdict_ok=$?
[ "$qemu_rc" -ne 124 ] || canopy_fail "QEMU did not finish within ${CANOPY_QEMU_TIMEOUT:-360}s (guest verdict: $CANOPY_GUEST_VERDICT)"
[ "$verdict_ok" -eq 0 ] || canopy_fail "guest: $CANOPY_GUEST_VERDICT"
[ "$qemu_rc" -eq 0 ] || canopy_fail "QEMU exited with status $qemu_rc"
{ grep -a 'canopy-test: .*\(OK \|PASSED\)' "$CANOPY_WORK/console.log" || true; } | while read -r l; do
  canopy_log "guest: ${l#*canopy-test: }"
done
canopy_pass
