#!/usr/bin/env bash
# Conformance, nested KVM: canopy-vmm's KVM backend boots an unmodified Linux 6.12 guest. QEMU 10 under
# TCG with -cpu max runs the outer guest, where kvm-amd gives a /dev/kvm (recipes: AMD SVM is emulated by
# TCG); there canopy-vmm boot (from the host's root over 9p) starts the same Debian kernel with a busybox
# initramfs (guest/kvm_l2_hello.sh as its test) — direct boot, ACPI tables, COM1 — and the inner guest's
# /init output, its verdict and its ACPI power-off must come back (guest/kvm_nested.sh checks them).
#
# A second inner guest has a virtio-rng device: virtio-mmio described in the ACPI DSDT, bridged by
# canopy-vmm to canopy-vhost-rng (ioeventfd kicks, call eventfds to interrupts), checked by guest/rng.sh.
# A third has canopy-gpu: the upstream virtio_gpu driver with blob resources and context init, whose
# guest-memory blob scanouts (canopy-guest-blob) must reach canopy-gpu's output with zero bytes copied.
# A fourth has canopy-snd (its timer-paced host, recording to WAV): aplay's 1 kHz tone in the inner
# guest must reach that sink whole.
# A fifth has canopy-gpu with virglrenderer and venus: canopy-vmm maps its host-visible region into the
# inner guest (vhost-user SHMEM), where canopy-guest-hostmem maps venus host blobs through the upstream
# driver (RESOURCE_MAP_BLOB), writes them and reads them back.
#
# And the KVM child taken over: tests/interference/sandbox_probe.cc preloaded into canopy-vmm boot tries,
# once the child is confined, what it must not do (guest/kvm_nested.sh, case "probe").
#
# Usage: kvm_nested_qemu.sh VMM VHOST-RNG GPU SND SND-WAV GUEST-BLOB GUEST-HOSTMEM PROBE (the paths of
#        canopy-vmm, canopy-vhost-rng, canopy-gpu, canopy-snd, canopy-snd-wav, canopy-guest-blob,
#        canopy-guest-hostmem and the sandbox probe library)
#        CANOPY_NESTED_CASES="venus" (any of plain probe rng gpu snd venus run) runs only those inner guests.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

canopy_begin kvm_nested_qemu
[ $# -eq 8 ] || canopy_fail "usage: $0 VMM VHOST-RNG GPU SND SND-WAV GUEST-BLOB GUEST-HOSTMEM PROBE"
abs=()
for p in "$@"; do
  [ -x "$p" ] || canopy_fail "$p missing or not executable (build it first)"
  abs+=("$(cd "$(dirname "$p")" && pwd)/$(basename "$p")")
done
# shellcheck disable=SC2034 # all of them go to the outer guest through nested.env (${!v} below)
VMM=${abs[0]} RNG=${abs[1]} GPU=${abs[2]} SND=${abs[3]} WAVTOOL=${abs[4]} BLOB=${abs[5]} HOSTMEM=${abs[6]} PROBE=${abs[7]}
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip

# The inner guest's initramfs first (its path goes on the outer guest's command line), then the outer's.
L2=$("$HERE/build-initramfs.sh" --test "$HERE/guest/kvm_l2_hello.sh") || canopy_fail "L2 initramfs build failed"
canopy_log "L2 initramfs $L2"
L2RNG=$("$HERE/build-initramfs.sh" --test "$HERE/guest/rng.sh" virtio_mmio virtio-rng) ||
  canopy_fail "L2 initramfs (rng) build failed"
canopy_log "L2 initramfs with virtio-rng $L2RNG"
L2GPU=$("$HERE/build-initramfs.sh" --test "$HERE/guest/kvm_l2_gpu.sh" --file "$BLOB:/bin/canopy-guest-blob" \
  virtio_mmio virtio-gpu) || canopy_fail "L2 initramfs (gpu) build failed"
canopy_log "L2 initramfs with virtio-gpu $L2GPU"
# The tone aplay plays in the inner guest: 1 kHz, -6 dBFS, exactly 1 s, S16 stereo 48 kHz.
"$WAVTOOL" tone "$CANOPY_WORK/tone.wav" --hz 1000 --ms 1000 --level-db -6
L2SND=$("$HERE/build-initramfs.sh" --test "$HERE/guest/kvm_l2_snd.sh" --file "$CANOPY_WORK/tone.wav:/tone.wav" \
  --bin "$(command -v aplay)" --tree /usr/share/alsa:/usr/share/alsa virtio_mmio virtio_snd) ||
  canopy_fail "L2 initramfs (snd) build failed"
canopy_log "L2 initramfs with virtio-snd and aplay $L2SND"
L2VENUS=$("$HERE/build-initramfs.sh" --test "$HERE/guest/kvm_l2_hostmem.sh" \
  --file "$HOSTMEM:/bin/canopy-guest-hostmem" virtio_mmio virtio-gpu) || canopy_fail "L2 initramfs (host blobs) build failed"
canopy_log "L2 initramfs with virtio-gpu for host blobs $L2VENUS"
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
# What the outer guest needs, as host paths (it reads this file over 9p).
# shellcheck disable=SC2034 # read through ${!v}
KERNEL=$CANOPY_VMLINUZ MANIFEST=$CANOPY_WORK/kvm.toml
# CANOPY_NESTED_CASES picks inner guests for a quicker loop while developing (default: all of them).
CASES=${CANOPY_NESTED_CASES:-plain probe rng gpu snd venus run}
for v in VMM KERNEL L2 L2RNG RNG MANIFEST GPU L2GPU SND L2SND WAVTOOL L2VENUS PROBE CASES; do
  printf "%s='%s'\n" "$v" "${!v}"
done >"$CANOPY_WORK/nested.env"
chmod -R a+rX "$CANOPY_WORK"

qemu_rc=0
CANOPY_QEMU_TIMEOUT=${CANOPY_QEMU_TIMEOUT:-480} CANOPY_GUEST_TIMEOUT=${CANOPY_GUEST_TIMEOUT:-440} \
  CANOPY_QEMU_MEMORY=1536M CANOPY_QEMU_APPEND="canopy.env=$CANOPY_WORK/nested.env" \
  canopy_qemu -cpu max -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
grep -a 'canopy-test:' "$CANOPY_WORK/console.log" | while read -r l; do canopy_log "guest: ${l#*canopy-test: }"; done
canopy_guest_timing
canopy_guest_result || canopy_fail "guest: $CANOPY_GUEST_VERDICT"
[ "$qemu_rc" -eq 0 ] || canopy_fail "QEMU exited with status $qemu_rc"
canopy_pass
