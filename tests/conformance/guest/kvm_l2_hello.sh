#!/bin/sh
# The inner (L2) guest of the nested KVM test: a Linux guest booted by canopy-vmm on KVM inside the
# outer QEMU guest. Its /init (build-initramfs.sh) runs this and reports the verdict on the serial
# console, which canopy-vmm prints; the outer guest looks for it.
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
note "L2 /init runs: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU(s), $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB"
grep -q hypervisor /proc/cpuinfo || fail "no hypervisor flag in the L2 guest's CPUID"
[ -d /sys/firmware/acpi/tables ] || fail "no ACPI tables in the L2 guest"
note "ACPI tables: $(ls /sys/firmware/acpi/tables | tr '\n' ' ')"
# canopy.portloop=N (bench/kvm_bench.sh): N one-byte writes to consecutive I/O ports from 0x1000 (through
# /dev/port), each a VM exit to the VMM; reports how many per second.
n=0
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in canopy.portloop=*) n=${arg#canopy.portloop=} ;; esac
done
if [ "$n" -gt 0 ]; then
  t0=$(cut -d' ' -f1 /proc/uptime)
  dd if=/dev/zero of=/dev/port bs=1 count="$n" seek=4096 2>/dev/null || fail "port writes through /dev/port failed"
  t1=$(cut -d' ' -f1 /proc/uptime)
  note "port-write loop: $n writes in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f s, %d per second", b - a, (b > a) ? '"$n"' / (b - a) : 0 }')"
fi

