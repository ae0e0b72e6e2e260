#!/bin/sh
# Guest side of the KMS output conformance test (runs as /test.sh under busybox): canopy-display,
# run from the host's root (mounted read-only over 9p), drives the upstream virtio_gpu driver's two
# connectors with --output kms: an atomic mode set, then non-blocking page flips, through libliftoff.
# canopy-display-feed stands in for the VM "ivi" (a full-screen layer of output main, the background's
# colour), so the compositor also tries to put that frame on a plane of its own: a udmabuf of the
# feed's memfd imported into virtio_gpu. The host checks what reached canopy-gpu (frames of both modes
# with the expected pixels).
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

feed="$(dirname "$bin")/canopy-display-feed"
[ -x "/host$feed" ] || fail "canopy-display-feed missing at $feed"
chroot /host "$feed" --socket /run/display.sock --vm ivi --size 640x480 --colour 777777 \
  --run-for-s "$((run_s + 5))" >/tmp/feed.txt 2>&1 &
feed_pid=$!
note "canopy-display --output kms for ${run_s}s"
chroot /host "$bin" "$manifest" --listen /run/display.sock --output kms --background 777777 \
  --run-for-s "$run_s" --quiet >/tmp/display.txt 2>&1
rc=$?
kill "$feed_pid" 2>/dev/null
wait "$feed_pid" 2>/dev/null
grep -a -E 'kms:|^output|summary|^vm |layer ivi' /tmp/display.txt | while read -r l; do note "$l"; done
[ "$rc" -eq 0 ] || { tail -n 20 /tmp/display.txt; fail "canopy-display exited with $rc"; }
grep -q '^output main 1024x768@60 (normal, kms)' /tmp/display.txt || fail "output main did not run on KMS"
grep -q '^output second 800x600@60 (normal, kms)' /tmp/display.txt || fail "output second did not run on KMS"
for o in main second; do
  flips=$(sed -n "s/.*kms: output $o: [0-9]* commits, \([0-9]*\) flips completed.*/\1/p" /tmp/display.txt)
  # Page flips work (several completed, each waited for); how many fit in the run depends on how fast
  # TCG and the sanitized back-end are on a loaded CI machine (8 were seen), so no rate is asserted here.
  [ "${flips:-0}" -ge 3 ] || fail "output $o: ${flips:-no} page flips completed (want >= 3)"
done
grep -q '^vm ivi: frames [1-9]' /tmp/display.txt || fail "no frames of the feed (VM ivi) reached the compositor"
# Output main's frames were offered to planes: shown there, or refused (then composed) with a reason.
tried=$(sed -n 's/.*kms: output main: .*; \([0-9]*\) on planes, \([0-9]*\) refused planes.*/\1 \2/p' /tmp/display.txt)
set -- $tried
[ $(( ${1:-0} + ${2:-0} )) -ge 1 ] || fail "output main never offered its frame to a plane"
note "planes on output main: ${1:-0} compositions on planes, ${2:-0} refused"
grep -a -E 'cannot go on a plane|cannot import|no framebuffer' /tmp/display.txt | head -n 2 | while read -r l; do note "$l"; done
umount /host/run
for m in dev proc sys; do umount "/host/$m"; done
umount /host
exit 0
