#!/bin/sh
# Guest side of bench/kvm_bench.sh (the outer guest, QEMU TCG with -cpu max and kvm-amd): boots the same
# Linux kernel + initramfs on KVM with canopy-vmm boot and with QEMU -M microvm (both from the host's root
# over 9p), rounds interleaved, and prints per run
#   kvm-bench: vmm=canopy|qemu-microvm round=N total_ms=T init_s=S status=R
# (total: start to the guest's power-off, wall time in this guest; init_s: the inner guest's own uptime
# when its /init ran, from its console; port_writes_per_s: 20000 one-byte port writes from the inner
# guest, each an exit to the VMM).
# Kernel command line: canopy.vmm=PATH canopy.kernel=PATH canopy.l2initrd=PATH canopy.rounds=N
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
vmm="" kernel="" l2="" rounds=1
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.vmm=*) vmm=${arg#canopy.vmm=} ;;
    canopy.kernel=*) kernel=${arg#canopy.kernel=} ;;
    canopy.l2initrd=*) l2=${arg#canopy.l2initrd=} ;;
    canopy.rounds=*) rounds=${arg#canopy.rounds=} ;;
  esac
done
[ -c /dev/kvm ] || fail "no /dev/kvm in the outer guest"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
append="console=ttyS0 panic=-1 quiet canopy.timeout=60 canopy.portloop=20000"
run() {  # run NAME ROUND COMMAND...
  name=$1 round=$2
  shift 2
  t0=$(cut -d' ' -f1 /proc/uptime)
  chroot /host "$@" >/tmp/out.txt 2>&1
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  init=$(sed -n 's/.*canopy-init: up at \([0-9.]*\) s.*/\1/p' /tmp/out.txt | head -n1)
  grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/out.txt || { tail -n 20 /tmp/out.txt; rc=99; }
  exits=$(sed -n 's/.*guest power-off after \([0-9]*\) exits.*/\1/p' /tmp/out.txt | head -n1)
  pps=$(sed -n 's/.*port-write loop: .*, \([0-9]*\) per second.*/\1/p' /tmp/out.txt | head -n1)
  echo "kvm-bench: vmm=$name round=$round total_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }') init_s=${init:-none} exits=${exits:-n/a} port_writes_per_s=${pps:-n/a} status=$rc"
}
r=1
while [ "$r" -le "$rounds" ]; do
  run canopy "$r" "$vmm" boot --kernel "$kernel" --initrd "$l2" --memory 256M --cmdline "$append"
  run qemu-microvm "$r" qemu-system-x86_64 -M microvm,acpi=on,rtc=off -accel kvm -cpu host -m 256 -smp 1 \
    -nodefaults -no-user-config -nographic -no-reboot -serial stdio -kernel "$kernel" -initrd "$l2" -append "$append"
  r=$((r + 1))
done
