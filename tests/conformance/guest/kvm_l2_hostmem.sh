#!/bin/sh
# Inner (L2) guest of the nested KVM test with a virtio-gpu device whose back-end is canopy-gpu with the
# virgl renderer and venus: canopy-vmm maps canopy-gpu's host-visible region into this guest (vhost-user
# SHMEM), so the upstream virtio_gpu driver must report it (+host_visible) next to +virgl, +resource_blob
# and +context_init. Then /bin/canopy-guest-hostmem (guest-programs/host_blob.c) creates venus host
# blobs, maps them (RESOURCE_MAP_BLOB: canopy-gpu has canopy-vmm map virglrenderer's memory into the
# region), writes a pattern into each and reads every one back, for several rounds (unmap and reuse).
# Kernel command line: canopy.rounds=N (default 3).
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
rounds=$(cmdline_arg canopy.rounds 3)
dev=$(virtio_device 16 virtio_gpu) || exit 1
note "virtio-gpu $(basename "$dev") features $(cat "$dev/features")"
dmesg | grep -a 'features:' | while read -r l; do note "dmesg: ${l#*] }"; done
for f in virgl resource_blob host_visible context_init; do
  dmesg | grep -q -a "+$f" || fail "virtio_gpu did not report +$f"
done
wait_for /dev/dri/renderD128 60 || fail "no /dev/dri/renderD128 (3D not enabled?)"
/bin/canopy-guest-hostmem --rounds "$rounds" >/tmp/hostmem.txt 2>&1
rc=$?
while read -r l; do note "$l"; done </tmp/hostmem.txt
[ "$rc" -eq 0 ] || fail "canopy-guest-hostmem exited $rc: $(grep FAIL /tmp/hostmem.txt | head -n1)"
