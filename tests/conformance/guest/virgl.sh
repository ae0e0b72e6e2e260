#!/bin/sh
# Guest side of the virgl conformance test (runs as /test.sh under busybox): the upstream virtio_gpu
# driver and Mesa's virgl driver (the host's, over 9p) against canopy-gpu --renderer=virgl behind QEMU's
# vhost-user-gpu-pci:
#   1. the driver binds with VIRTIO_GPU_F_VIRGL negotiated and finds the two capsets (virgl, virgl2);
#   2. kmscube renders canopy.kmscube_frames frames through Mesa's virgl driver (its GL renderer string
#      must say virgl: a fallback to software rendering in the guest is a failure) and page-flips them.
# The host checks what reached canopy-gpu's scanout output.
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh
frames=$(cmdline_arg canopy.kmscube_frames 60)
dev=$(virtio_device 16 virtio_gpu) || exit 1
features=$(cat "$dev/features")
note "features $features"
[ "$(echo "$features" | cut -c1)" = 1 ] || fail "VIRTIO_GPU_F_VIRGL not negotiated ($features)"
dmesg | grep -a -E '\[drm\] (features|number of cap sets|cap set)' | while read -r l; do note "dmesg: ${l#*] }"; done
dmesg | grep -q -a '+virgl' || fail "virtio_gpu did not report +virgl"
dmesg | grep -q -a 'number of cap sets: 2' || fail "virtio_gpu did not find the two capsets"
wait_for /dev/dri/card0 60 || fail "no /dev/dri/card0"

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
mount -t tmpfs tmpfs /host/run || fail "cannot mount a tmpfs on /host/run"
[ -x /host/usr/bin/kmscube ] || fail "kmscube missing on the host (scripts/install-deps.sh installs it)"
t0=$(cut -d' ' -f1 /proc/uptime)
chroot /host env HOME=/run XDG_CACHE_HOME=/run kmscube -D /dev/dri/card0 -c "$frames" >/tmp/kmscube.txt 2>&1
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
grep -a -E 'renderer|version:|Rendered' /tmp/kmscube.txt | while read -r l; do note "kmscube: $l"; done
note "kmscube exited $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
[ "$rc" -eq 0 ] || { tail -n 5 /tmp/kmscube.txt; fail "kmscube exited $rc"; }
grep -q 'renderer: "virgl' /tmp/kmscube.txt || fail "kmscube did not render through virgl: $(grep renderer /tmp/kmscube.txt)"

# canopy.glmark2=SPEC[,SPEC...] (bench/virgl_bench.sh): glmark2-es2-drm runs those benchmarks after
# kmscube; its per-benchmark FPS and score go to the console. glmark2 2023.01 skips making its window when
# the size asked for equals the display mode (or with --fullscreen) and then stops with "glwindow has never
# been initialized": it is asked for 800x600 on the 1024x768 mode (it still draws the mode's size). Its
# default EGL config has alpha (ARGB8888), which virtio_gpu's primary plane refuses (SETCRTC: EINVAL,
# nothing shown): --visual-config a=0 asks for XRGB8888.
glmark=$(cmdline_arg canopy.glmark2 "")
if [ -n "$glmark" ]; then
  [ -x /host/usr/bin/glmark2-es2-drm ] || fail "glmark2-es2-drm missing on the host (scripts/install-deps.sh installs it)"
  set --
  for spec in $(echo "$glmark" | tr ',' ' '); do set -- "$@" -b "$spec"; done
  chroot /host env HOME=/run XDG_CACHE_HOME=/run glmark2-es2-drm -s 800x600 --visual-config a=0 "$@" >/tmp/glmark2.txt 2>&1
  rc=$?
  grep -a -E 'GL_RENDERER|Surface|FPS:|Score:|Error' /tmp/glmark2.txt | head -n 40 | while read -r l; do note "glmark2: $l"; done
  [ "$rc" -eq 0 ] || { tail -n 5 /tmp/glmark2.txt; dmesg | tail -n 15; fail "glmark2-es2-drm exited $rc"; }
  grep -q 'GL_RENDERER: *virgl' /tmp/glmark2.txt || fail "glmark2 did not render through virgl"
  grep -q 'glmark2 Score:' /tmp/glmark2.txt || fail "glmark2 printed no score"
  ! grep -q 'Error' /tmp/glmark2.txt || fail "glmark2: $(grep -m1 Error /tmp/glmark2.txt)"
fi
