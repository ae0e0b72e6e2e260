#!/bin/sh
# Guest side of bench/snd_bench.sh (runs as /test.sh under busybox): the upstream snd_virtio driver plays
# the host's tone file with aplay (20 ms periods, 80 ms buffer) from the host's root over 9p, and prints
#   snd-bench: aplay_ms=N status=S
# (the time aplay took, open to close: a device that holds the end of a stream back makes it longer).
# Kernel command line: canopy.tone=PATH
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
tone=""
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in canopy.tone=*) tone=${arg#canopy.tone=} ;; esac
done
wait_for /dev/snd/pcmC0D0p 15 || fail "no playback PCM device"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m"; done
t0=$(cut -d' ' -f1 /proc/uptime)
chroot /host aplay -q -D hw:0,0 --period-time=20000 --buffer-time=80000 "$tone" >/tmp/aplay.txt 2>&1
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')
echo "snd-bench: aplay_ms=$ms status=$rc"
[ "$rc" -eq 0 ] || { cat /tmp/aplay.txt; fail "aplay failed"; }
