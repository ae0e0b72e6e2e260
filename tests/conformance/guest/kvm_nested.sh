#!/bin/sh
# Guest side of the nested KVM test (runs as /test.sh in the outer guest, QEMU TCG with -cpu max): with
# kvm-amd loaded (AMD SVM is emulated by TCG) /dev/kvm exists; canopy-vmm, from the host's root over 9p,
# boots the same Linux kernel with the L2 initramfs on KVM and prints that guest's serial console. The L2
# guest reports its own verdict there and powers off through ACPI S5; canopy-vmm must exit 0.
# A second inner guest gets a virtio-rng device over virtio-mmio (described in ACPI, LNRO0005) bridged to
# canopy-vhost-rng: its own test (guest/rng.sh) checks that virtio_rng binds and reads the back-end's bytes.
# Kernel command line: canopy.vmm=PATH canopy.kernel=PATH canopy.l2initrd=PATH canopy.l2rng=PATH
# canopy.rng=PATH canopy.manifest=PATH (host paths). Last, canopy-vmm run starts that rng guest from a
# manifest with backend = "auto" (KVM here).
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
vmm="" kernel="" l2="" l2rng="" rng="" manifest=""
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.vmm=*) vmm=${arg#canopy.vmm=} ;;
    canopy.kernel=*) kernel=${arg#canopy.kernel=} ;;
    canopy.l2initrd=*) l2=${arg#canopy.l2initrd=} ;;
    canopy.l2rng=*) l2rng=${arg#canopy.l2rng=} ;;
    canopy.rng=*) rng=${arg#canopy.rng=} ;;
    canopy.manifest=*) manifest=${arg#canopy.manifest=} ;;
  esac
done
[ -n "$vmm" ] && [ -n "$kernel" ] && [ -n "$l2" ] && [ -n "$l2rng" ] && [ -n "$rng" ] ||
  fail "canopy.vmm / canopy.kernel / canopy.l2initrd / canopy.l2rng / canopy.rng missing"
[ -c /dev/kvm ] || fail "no /dev/kvm in the outer guest (kvm-amd did not load: is the CPU -cpu max?)"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
# boot_l2 LABEL INITRD [DEVICE-ARGS...]: canopy-vmm boot of the inner guest; its console lines are shown,
# its verdict must be PASS and canopy-vmm's exit status 0 (the guest powered off).
boot_l2() {
  label=$1 initrd=$2
  shift 2
  note "canopy-vmm boot on KVM ($label)"
  t0=$(cut -d' ' -f1 /proc/uptime)
  chroot /host "$vmm" boot --kernel "$kernel" --initrd "$initrd" --memory 256M "$@" \
    --cmdline "console=ttyS0 panic=-1 quiet canopy.timeout=60" >/tmp/l2.txt 2>&1
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  grep -a -E 'canopy-|CANOPY-TEST-RESULT|kvm:' /tmp/l2.txt | while read -r l; do note "L2 $label: $l"; done
  note "canopy-vmm boot ($label) exited $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
  grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/l2.txt || { tail -n 30 /tmp/l2.txt; fail "the L2 guest ($label) did not pass"; }
  [ "$rc" -eq 0 ] || fail "canopy-vmm boot ($label) exited $rc (0 = the guest powered off)"
}
boot_l2 plain "$l2"
boot_l2 "virtio-rng over vhost-user" "$l2rng" --device "rng=$rng,--pattern"

[ -n "$manifest" ] || fail "canopy.manifest missing"
note "canopy-vmm run $manifest (backend auto)"
chroot /host "$vmm" run "$manifest" >/tmp/run.txt 2>&1 &
pid=$!
n=0
while ! grep -q 'CANOPY-TEST-RESULT' /tmp/run.txt && [ "$n" -lt 1200 ] && kill -0 "$pid" 2>/dev/null; do
  usleep 100000
  n=$((n + 1))
done
sleep 1
kill -TERM "$pid" 2>/dev/null
wait "$pid"
grep -a -E 'vm linux|CANOPY-TEST-RESULT|all VMs' /tmp/run.txt | while read -r l; do note "run: $l"; done
grep -q 'vm linux: started on KVM' /tmp/run.txt || { tail -n 20 /tmp/run.txt; fail "backend auto did not start the VM on KVM"; }
grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/run.txt || { tail -n 30 /tmp/run.txt; fail "the manifest's KVM guest did not pass"; }

