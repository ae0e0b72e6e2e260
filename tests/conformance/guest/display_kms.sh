#!/bin/sh
# Guest side of the KMS output conformance test (runs as /test.sh under busybox): canopy-display,
# run from the host's root (mounted read-only over 9p), drives the upstream virtio_gpu driver's two
# connectors with --output kms: an atomic mode set, then non-blocking page flips, through libliftoff.
# The host checks what reached canopy-gpu (frames of both modes with the expected pixels).
# Kernel command line: canopy.display_bin=PATH canopy.display_manifest=PATH canopy.display_s=SECONDS
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

bin=""
manifest=""
run_s=5
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.display_bin=*) bin=${arg#canopy.display_bin=} ;;
    canopy.display_manifest=*) manifest=${arg#canopy.display_manifest=} ;;
    canopy.display_s=*) run_s=${arg#canopy.display_s=} ;;
  esac
done
[ -n "$bin" ] && [ -n "$manifest" ] || fail "canopy.display_bin / canopy.display_manifest missing"
wait_for /dev/dri/card0 10 || fail "no /dev/dri/card0 (virtio_gpu did not bind)"

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
# Scratch space for the compositor's sockets; the host's /tmp (where the manifest is) stays visible.
mount -t tmpfs tmpfs /host/run || fail "cannot mount a tmpfs on /host/run"
[ -x "/host$bin" ] || fail "canopy-display missing at $bin"

note "canopy-display --output kms for ${run_s}s"
chroot /host "$bin" "$manifest" --listen /run/display.sock --output kms --background 777777 \
  --run-for-s "$run_s" --quiet >/tmp/display.txt 2>&1
rc=$?
grep -a -E 'kms:|^output|summary' /tmp/display.txt | while read -r l; do note "$l"; done
[ "$rc" -eq 0 ] || { tail -n 20 /tmp/display.txt; fail "canopy-display exited with $rc"; }
grep -q '^output main 1024x768@60 (normal, kms)' /tmp/display.txt || fail "output main did not run on KMS"
grep -q '^output second 800x600@60 (normal, kms)' /tmp/display.txt || fail "output second did not run on KMS"
for o in main second; do
  flips=$(sed -n "s/.*kms: output $o: [0-9]* commits, \([0-9]*\) flips completed.*/\1/p" /tmp/display.txt)
  [ "${flips:-0}" -ge 10 ] || fail "output $o: ${flips:-no} page flips completed (want >= 10)"
done
umount /host/run
for m in dev proc sys; do umount "/host/$m"; done
umount /host
exit 0
