#!/bin/sh
# Guest side of conformance_udmabuf_qemu (runs as /test.sh under busybox): runs the host's GoogleTest
# binaries (canopy_udmabuf_test, canopy_dmabuf_test; from the host's root over read-only 9p) inside the
# Linux 6.12 guest, whose kernel has /dev/udmabuf built in (the host has no udmabuf). Every case must
# pass; a skip fails.
# Kernel command line: canopy.udmabuf_test=PATH[:PATH...] (the test binaries, paths on the host)
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

bin=""
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in canopy.udmabuf_test=*) bin=${arg#canopy.udmabuf_test=} ;; esac
done
[ -n "$bin" ] || fail "canopy.udmabuf_test missing"
bins=$(echo "$bin" | tr ':' ' ')
[ -c /dev/udmabuf ] || fail "no /dev/udmabuf in the guest (the kernel should have it built in)"

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
# No tmpfs over the host's /tmp: the build tree (and so the test binaries) may lie there. The tests'
# sockets go to a tmpfs on the host's /run (TMPDIR).
mount -t tmpfs tmpfs /host/run || fail "cannot mount a tmpfs on /host/run"
for b in $bins; do
  [ -x "/host$b" ] || fail "$(basename "$b") missing at $b"
done
for b in $bins; do
  name=$(basename "$b")
  note "running $b"
  rc=0
  chroot /host env CANOPY_NO_SKIP=1 TMPDIR=/run "$b" >"/tmp/$name.txt" 2>&1 || rc=$?
  while read -r l; do note "$l"; done <"/tmp/$name.txt"
  [ "$rc" -eq 0 ] || fail "$name exited with $rc"
  grep -q '^\[  SKIPPED \]' "/tmp/$name.txt" && fail "$name skipped a case"
  grep -q '^\[  PASSED  \] [1-9][0-9]* test' "/tmp/$name.txt" || fail "$name passed no test"
done
exit 0
