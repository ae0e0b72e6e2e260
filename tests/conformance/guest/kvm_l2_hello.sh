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
