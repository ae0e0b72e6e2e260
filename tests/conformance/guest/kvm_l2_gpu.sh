#!/bin/sh
# Inner (L2) guest of the nested KVM test with a virtio-gpu device: canopy-vmm describes it as a
# virtio-mmio device in ACPI and bridges it to canopy-gpu. Checks that the upstream virtio_gpu driver
# binds with VIRTIO_GPU_F_RESOURCE_BLOB and VIRTIO_GPU_F_CONTEXT_INIT negotiated (the features QEMU's
# vhost-user-gpu-pci withholds), then runs /bin/canopy-guest-blob (guest-programs/blob_scanout.c): two
# guest-memory blob resources scanned out with SET_SCANOUT_BLOB and page-flipped; it prints the pixels'
# checksums, which the outer guest compares with what reached canopy-gpu's scanout output.
# Kernel command line: canopy.flips=N (default 20).
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
flips=$(cmdline_arg canopy.flips 20)
dev=$(virtio_device 16 virtio_gpu) || exit 1
# One character per feature bit, bit 0 first: EDID 1, RESOURCE_UUID 2, RESOURCE_BLOB 3, CONTEXT_INIT 4.
features=$(cat "$dev/features")
note "virtio-gpu $(basename "$dev") on $(basename "$(readlink -f "$dev/..")") features $features"
[ "$(echo "$features" | cut -c4)" = 1 ] || fail "VIRTIO_GPU_F_RESOURCE_BLOB not negotiated ($features)"
[ "$(echo "$features" | cut -c5)" = 1 ] || fail "VIRTIO_GPU_F_CONTEXT_INIT not negotiated ($features)"
[ "$(echo "$features" | cut -c33)" = 1 ] || fail "VIRTIO_F_VERSION_1 not negotiated"
dmesg | grep -a 'features:' | while read -r l; do note "dmesg: ${l#*] }"; done
dmesg | grep -q -a '+resource_blob' || fail "virtio_gpu did not report +resource_blob"
dmesg | grep -q -a '+context_init' || fail "virtio_gpu did not report +context_init"
wait_for /dev/dri/card0 60 || fail "no /dev/dri/card0"
/bin/canopy-guest-blob --flips "$flips" >/tmp/blob.txt 2>&1
rc=$?
while read -r l; do note "$l"; done </tmp/blob.txt
[ "$rc" -eq 0 ] || fail "canopy-guest-blob exited $rc: $(grep FAIL /tmp/blob.txt | head -n1)"
