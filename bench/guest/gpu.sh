#!/bin/sh
# Guest side of bench/gpu_guest_bench.sh (runs as /test.sh under busybox): waits for the virtio-gpu
# driver's /dev/dri/card0, mounts the host's root read-only over 9p and runs the host-built
# canopy-drm-bench there (path in canopy.drm_bench=, flip seconds in canopy.bench_s=, cursor rounds
# in canopy.cursor_rounds=). Its result lines go to the console for the host to collect.
# shellcheck disable=SC1091 # installed in the initramfs from tests/conformance/guest/canopy-guest.sh
. /lib/canopy/guest.sh

bench=""
bench_s=5
rounds=300
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.drm_bench=*) bench=${arg#canopy.drm_bench=} ;;
    canopy.bench_s=*) bench_s=${arg#canopy.bench_s=} ;;
    canopy.cursor_rounds=*) rounds=${arg#canopy.cursor_rounds=} ;;
  esac
done
[ -n "$bench" ] || fail "no canopy.drm_bench= on the kernel command line"
wait_for /dev/dri/card0 10 || fail "no /dev/dri/card0 (virtio_gpu did not bind)"

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
# Not /tmp: the host's /tmp stays visible (a checkout, and so the bench binary, may live there).
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
[ -x "/host$bench" ] || fail "$bench missing on the host (build target canopy-drm-bench)"
chroot /host "$bench" --seconds "$bench_s" --cursor-rounds "$rounds" >/tmp/bench.txt 2>&1
rc=$?
while read -r l; do note "$l"; done </tmp/bench.txt
[ "$rc" -eq 0 ] || fail "canopy-drm-bench exited with $rc"
for m in dev proc sys; do umount "/host/$m"; done
umount /host
exit 0
