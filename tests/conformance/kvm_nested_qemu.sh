#!/usr/bin/env bash
# Conformance, nested KVM: canopy-vmm's KVM backend boots an unmodified Linux 6.12 guest. QEMU 10 under
# TCG with -cpu max runs the outer guest, where kvm-amd gives a /dev/kvm (recipes: AMD SVM is emulated by
# TCG); there canopy-vmm boot (from the host's root over 9p) starts the same Debian kernel with a busybox
# initramfs (guest/kvm_l2_hello.sh as its test) — direct boot, ACPI tables, COM1 — and the inner guest's
# /init output, its verdict and its ACPI power-off must come back (guest/kvm_nested.sh checks them).
#
# A second inner guest has a virtio-rng device: virtio-mmio described in the ACPI DSDT, bridged by
# canopy-vmm to canopy-vhost-rng (ioeventfd kicks, call eventfds to interrupts), checked by guest/rng.sh.
#
# Usage: kvm_nested_qemu.sh PATH/TO/canopy-vmm PATH/TO/canopy-vhost-rng
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

VMM=${1:-}
RNG=${2:-}
canopy_begin kvm_nested_qemu
[ -n "$VMM" ] && [ -x "$VMM" ] && [ -n "$RNG" ] && [ -x "$RNG" ] ||
  canopy_fail "usage: $0 PATH/TO/canopy-vmm PATH/TO/canopy-vhost-rng"
VMM=$(cd "$(dirname "$VMM")" && pwd)/$(basename "$VMM")
RNG=$(cd "$(dirname "$RNG")" && pwd)/$(basename "$RNG")
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip

# The inner guest's initramfs first (its path goes on the outer guest's command line), then the outer's.
L2=$("$HERE/build-initramfs.sh" --test "$HERE/guest/kvm_l2_hello.sh") || canopy_fail "L2 initramfs build failed"
canopy_log "L2 initramfs $L2"
L2RNG=$("$HERE/build-initramfs.sh" --test "$HERE/guest/rng.sh" virtio_mmio virtio-rng) ||
  canopy_fail "L2 initramfs (rng) build failed"
canopy_log "L2 initramfs with virtio-rng $L2RNG"
canopy_guest --test "$HERE/guest/kvm_nested.sh" kvm-amd netfs 9pnet 9p 9pnet_virtio

# The same rng guest again, from a manifest through `canopy-vmm run`: backend = "auto" picks KVM where
# /dev/kvm is (here, in the outer guest), and [[vm.device]] gives it the virtio-rng back-end.
cat >"$CANOPY_WORK/kvm.toml" <<TOML
version = 1

[[vm]]
name = "linux"
backend = "auto"
memory = "256M"
restart = "never"
kernel = "$CANOPY_VMLINUZ"
initrd = "$L2RNG"
cmdline = "console=ttyS0 panic=-1 quiet canopy.timeout=60"
app = "canopy-partition-rng"

[[vm.device]]
type = "rng"
backend = "$RNG"
args = ["--pattern"]
TOML
chmod -R a+rX "$CANOPY_WORK"

qemu_rc=0
CANOPY_QEMU_TIMEOUT=${CANOPY_QEMU_TIMEOUT:-240} CANOPY_GUEST_TIMEOUT=${CANOPY_GUEST_TIMEOUT:-200} \
  CANOPY_QEMU_APPEND="canopy.vmm=$VMM canopy.kernel=$CANOPY_VMLINUZ canopy.l2initrd=$L2 canopy.l2rng=$L2RNG canopy.rng=$RNG canopy.manifest=$CANOPY_WORK/kvm.toml" \
  canopy_qemu -cpu max -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
grep -a 'canopy-test:' "$CANOPY_WORK/console.log" | while read -r l; do canopy_log "guest: ${l#*canopy-test: }"; done
canopy_guest_timing
canopy_guest_result || canopy_fail "guest: $CANOPY_GUEST_VERDICT"
[ "$qemu_rc" -eq 0 ] || canopy_fail "QEMU exited with status $qemu_rc"
canopy_pass
