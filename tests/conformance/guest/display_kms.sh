#!/bin/sh
# Guest side of the KMS output conformance test (runs as /test.sh under busybox): canopy-display,
# run from the host's root (mounted read-only over 9p), drives the upstream virtio_gpu driver's two
# connectors with --output kms: an atomic mode set, then non-blocking page flips, through libliftoff.
# canopy-display-feed stands in for the VM "ivi" (a full-screen layer of output main, in a colour of its
# own, 0x2080c0, so the host can tell the feed from the background 0x777777), so the compositor also
# tries to put that frame on a plane of its own: the udmabuf the feed sends of its memfd (as canopy-gpu
# does: canopy-display, confined, may not make one), imported into virtio_gpu,
# which Linux 6.12's virtio_gpu refuses (ENODEV: it takes no foreign dma-bufs).
#
# Everything is ordered by events, never by time: canopy-display starts first (pixman: the test is about
# KMS, and loading every Vulkan driver over 9p under TCG takes long on a busy host); the feed starts once
# the compositor's socket exists; the run ends when the compositor's stats show the feed's frames and the
# host's frame log (canopy-gpu's, read over 9p) holds enough frames of the expected pixels on both
# scanouts; then canopyctl asks canopy-display to quit. The only clock is the hang guard.
# Kernel command line: canopy.display_bin=PATH canopy.display_manifest=PATH canopy.frames_log=PATH
#   canopy.crc0=CRC canopy.crc1=CRC (the CRC-32 of a whole frame of the feed's colour on scanout 0 and
#   of the background on scanout 1) canopy.timeout=S (the guest's limit; the guard stays below it)
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

bin=""
manifest=""
frames_log=""
crc0=""
crc1=""
limit=60
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.display_bin=*) bin=${arg#canopy.display_bin=} ;;
    canopy.display_manifest=*) manifest=${arg#canopy.display_manifest=} ;;
    canopy.frames_log=*) frames_log=${arg#canopy.frames_log=} ;;
    canopy.crc0=*) crc0=${arg#canopy.crc0=} ;;
    canopy.crc1=*) crc1=${arg#canopy.crc1=} ;;
    canopy.timeout=*) limit=${arg#canopy.timeout=} ;;
  esac
done
[ -n "$bin" ] && [ -n "$manifest" ] && [ -n "$frames_log" ] && [ -n "$crc0" ] && [ -n "$crc1" ] ||
  fail "canopy.display_bin / display_manifest / frames_log / crc0 / crc1 missing"
guard=$((limit - 20))  # the hang guard: leaves time to report before /init's own limit
[ "$guard" -ge 30 ] || fail "canopy.timeout=$limit is too short for the hang guard"
wait_for /dev/dri/card0 60 || fail "no /dev/dri/card0 (virtio_gpu did not bind)"

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
# Scratch space for the compositor's sockets; the host's /tmp (where the manifest and frame log are)
# stays visible.
mount -t tmpfs tmpfs /host/run || fail "cannot mount a tmpfs on /host/run"
dir=$(dirname "$bin")
feed="$dir/canopy-display-feed"
ctl="$dir/canopyctl"
for p in "$bin" "$feed" "$ctl"; do [ -x "/host$p" ] || fail "$p missing"; done

# The programs may be ASan builds (conformance runs the ASan tree): ASan's quarantine of freed memory
# grows to 256 MiB per process by default, and the feed's and the compositor's together overran the
# guest's RAM on a slow run (the OOM killer took the feed). A small quarantine bounds that.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16"

start=$(cut -d. -f1 /proc/uptime)
elapsed() { echo $(($(cut -d. -f1 /proc/uptime) - start)); }

note "canopy-display --output kms (hang guard ${guard}s)"
chroot /host "$bin" "$manifest" --listen /run/display.sock --control /run/display.ctl --output kms \
  --renderer pixman --background 777777 --run-for-s "$guard" --quiet >/tmp/display.txt 2>&1 &
display_pid=$!
while [ ! -S /host/run/display.sock ] || [ ! -S /host/run/display.ctl ]; do
  kill -0 "$display_pid" 2>/dev/null || { tail -n 20 /tmp/display.txt; fail "canopy-display exited before listening"; }
  [ "$(elapsed)" -lt "$guard" ] || fail "canopy-display made no sockets in ${guard}s"
  usleep 50000
done
note "canopy-display listening after $(elapsed)s; starting the feed"
# 10 frames a second: the compositor shows about one a second under TCG, and a 60 fps feed (which
# catches up in bursts after a stall) only takes the guest's one CPU from it.
chroot /host "$feed" --socket /run/display.sock --vm ivi --size 640x480 --colour 2080c0 --fps 10 \
  --run-for-s "$guard" >/tmp/feed.txt 2>&1 &
feed_pid=$!

# good SCANOUT WxH CRC: frames of that scanout in the host's frame log whose every pixel is as expected.
good() { grep -c "^frame $1 .* $2 XR24 .* crc $3\$" "/host$frames_log" 2>/dev/null || true; }
# The frames of VM ivi the compositor received (its stats line counts them, connected or not).
feed_frames() {
  chroot /host "$ctl" --socket /run/display.ctl stats 2>/dev/null |
    sed -n 's/^vm ivi connected=[01] frames=\([0-9]*\) .*/\1/p'
}
show_failure() {
  tail -n 20 /tmp/display.txt
  note "feed's output:"
  tail -n 20 /tmp/feed.txt
  if kill -0 "$feed_pid" 2>/dev/null; then note "feed still running"; else
    frc=0
    wait "$feed_pid" || frc=$?
    note "feed exited with $frc"
  fi
  dmesg | grep -a -i -E 'out of memory|killed process' | while read -r l; do note "dmesg: $l"; done
}
while :; do
  g0=$(good 0 1024x768 "$crc0")
  g1=$(good 1 800x600 "$crc1")
  # The compositor's stats only once the host has the frames: canopyctl is an exec over 9p that takes
  # seconds of the guest's one CPU under TCG (measured 1.3-6.8 s at load 8), which the compositor needs.
  if [ "${g0:-0}" -ge 10 ] && [ "${g1:-0}" -ge 10 ]; then
    fed=$(feed_frames)
    [ "${fed:-0}" -ge 10 ] && break
  fi
  kill -0 "$display_pid" 2>/dev/null || { show_failure; fail "canopy-display exited early (host frames $g0/$g1)"; }
  # The feed runs until the end (its --run-for-s is the guard): it exiting first is a failure now.
  kill -0 "$feed_pid" 2>/dev/null || {
    fed=$(feed_frames)
    show_failure
    fail "the feed exited early (feed frames at the compositor ${fed:-none}, host frames $g0/$g1)"
  }
  if [ "$(elapsed)" -ge "$guard" ]; then
    fed=$(feed_frames)
    show_failure
    fail "after ${guard}s: ${fed:-no} frames of the feed reached the compositor, host frames of the feed $g0 on main and of the background $g1 on second (want 10 each)"
  fi
  sleep 1
done
note "after $(elapsed)s: ${fed} feed frames at the compositor, host frames $g0 (feed) and $g1 (background)"
chroot /host "$ctl" --socket /run/display.ctl quit >/dev/null || { show_failure; fail "canopyctl quit failed"; }
rc=0
wait "$display_pid" || rc=$?
kill "$feed_pid" 2>/dev/null
wait "$feed_pid" 2>/dev/null
grep -a -E 'kms:|^output|summary|^vm |layer ivi' /tmp/display.txt | while read -r l; do note "$l"; done
[ "$rc" -eq 0 ] || { show_failure; fail "canopy-display exited with $rc"; }
grep -q '^output main 1024x768@60 (normal, kms)' /tmp/display.txt || fail "output main did not run on KMS"
grep -q '^output second 800x600@60 (normal, kms)' /tmp/display.txt || fail "output second did not run on KMS"
for o in main second; do
  flips=$(sed -n "s/.*kms: output $o: [0-9]* commits, \([0-9]*\) flips completed.*/\1/p" /tmp/display.txt)
  # Ten frames of each output reached the host, so page flips completed (each waited for).
  [ "${flips:-0}" -ge 1 ] || fail "output $o: ${flips:-no} page flips completed"
done
grep -q '^vm ivi: frames [1-9]' /tmp/display.txt || fail "no frames of the feed (VM ivi) reached the compositor"
# Output main's frames were offered to a plane: the feed sent a udmabuf of its memory (as canopy-gpu
# does; confined, canopy-display may not make one), and virtio_gpu refused to import it (ENODEV): plane
# offload itself needs a board (docs/conformance.md).
grep -a -E 'cannot go on a plane|cannot import|no framebuffer' /tmp/display.txt | head -n 2 | while read -r l; do note "$l"; done
grep -a -q 'a frame cannot go on a plane' /tmp/display.txt && fail "the feed's frames reached canopy-display as no udmabuf"
grep -a -q 'kms: output main: /dev/dri/card0 cannot import guest memory (dma-buf): No such device' /tmp/display.txt ||
  fail "virtio_gpu was not offered the feed's udmabuf, or refused it otherwise than with ENODEV"
umount /host/run
for m in dev proc sys; do umount "/host/$m"; done
umount /host
exit 0
